//! Reading the files root acts on: hook.env and the files it names (docker
//! config, CA bundles). Whoever can write one of them controls what root
//! does — which file becomes a Secret, which server gets root's token — so
//! they are trusted only under the rule sudo and sshd's StrictModes apply:
//! a regular file owned by root (or whoever runs us), not writable by group
//! or others, reached only through directories that are just as safe, except
//! a root-owned sticky directory such as /tmp (the rule systemd uses for
//! safe path transitions). Symlinks are followed, but each directory holding
//! one must pass the same test, and in a sticky world-writable directory
//! (such as /tmp) only a link owned by root or by the directory's owner is
//! followed — the kernel's `fs.protected_symlinks` rule, without which any
//! user could point root at a root-only file. Reads never block on a FIFO or
//! device and are capped in size.

use std::collections::VecDeque;
use std::ffi::OsString;
use std::fs::{File, Metadata};
use std::io::Read;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Component, Path, PathBuf};

use thiserror::Error;

/// The largest file read (hook.env, docker config, CA bundle).
pub const MAX_BYTES: u64 = 1 << 20;

/// Symlinks followed before giving up (Linux's own limit).
const MAX_LINKS: usize = 40;

/// Why a file is not trusted (or cannot be read). Messages name the path
/// and the fix.
#[derive(Debug, Error)]
pub enum TrustError {
    #[error("{path}: expected an absolute path")]
    NotAbsolute { path: PathBuf },
    #[error("{path}: cannot read it: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: too many levels of symbolic links")]
    Loop { path: PathBuf },
    #[error("{path}: not a directory")]
    NotDirectory { path: PathBuf },
    #[error("{path}: is a {kind}, not a regular file")]
    NotRegular { path: PathBuf, kind: &'static str },
    #[error("{path}: owned by {}, not root; as root run: chown root {path}", user_name(*.uid))]
    Owner { path: PathBuf, uid: u32 },
    #[error("{path}: writable by {who} (mode {mode:04o}); as root run: chmod go-w {path}")]
    Writable {
        path: PathBuf,
        who: &'static str,
        mode: u32,
    },
    #[error("{path}: larger than {max} bytes; this is not the file it should be")]
    TooBig { path: PathBuf, max: u64 },
    #[error(
        "{link}: a symbolic link owned by {owner} in {dir}, a sticky directory everyone may write to; \
         root follows such a link only when root or the directory's owner made it (the kernel's \
         fs.protected_symlinks rule): name the real file instead"
    )]
    ForeignSymlink {
        link: PathBuf,
        owner: String,
        dir: PathBuf,
    },
}

/// Reads `path` as text if it is trusted.
pub fn read_to_string(path: &Path) -> Result<String, TrustError> {
    let bytes = read(path)?;
    String::from_utf8(bytes).map_err(|_| TrustError::Io {
        path: path.to_owned(),
        source: std::io::Error::new(std::io::ErrorKind::InvalidData, "not UTF-8 text"),
    })
}

/// Reads `path` if it and every directory on its way are trusted.
pub fn read(path: &Path) -> Result<Vec<u8>, TrustError> {
    let absolute = std::path::absolute(path).map_err(|source| TrustError::Io {
        path: path.to_owned(),
        source,
    })?;
    let resolved = resolve(&absolute)?;
    let io = |source| TrustError::Io {
        path: path.to_owned(),
        source,
    };
    // O_NONBLOCK: opening a FIFO must not wait for a writer.
    let file = File::options()
        .read(true)
        .custom_flags(libc_flags())
        .open(&resolved)
        .map_err(io)?;
    let meta = file.metadata().map_err(io)?;
    check_file(path, &meta)?;
    if meta.len() > MAX_BYTES {
        return Err(TrustError::TooBig {
            path: path.to_owned(),
            max: MAX_BYTES,
        });
    }
    let mut bytes = Vec::new();
    file.take(MAX_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(io)?;
    if bytes.len() as u64 > MAX_BYTES {
        return Err(TrustError::TooBig {
            path: path.to_owned(),
            max: MAX_BYTES,
        });
    }
    Ok(bytes)
}

/// Checks that `path` is a directory root trusts (itself and every
/// directory on its way); returns its link-free path.
pub fn directory(path: &Path) -> Result<PathBuf, TrustError> {
    let absolute = std::path::absolute(path).map_err(|source| TrustError::Io {
        path: path.to_owned(),
        source,
    })?;
    let resolved = resolve(&absolute)?;
    let meta = std::fs::symlink_metadata(&resolved).map_err(|source| TrustError::Io {
        path: path.to_owned(),
        source,
    })?;
    if !meta.is_dir() {
        return Err(TrustError::NotDirectory {
            path: path.to_owned(),
        });
    }
    check_dir(&resolved, &meta)?;
    Ok(resolved)
}

fn libc_flags() -> i32 {
    use nix::fcntl::OFlag;
    (OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK | OFlag::O_NOCTTY | OFlag::O_CLOEXEC).bits()
}

/// Walks `path` from `/`, following symlinks, checking every directory
/// entered (and so every directory holding a link); returns the final,
/// link-free path of the file.
fn resolve(path: &Path) -> Result<PathBuf, TrustError> {
    if !path.is_absolute() {
        return Err(TrustError::NotAbsolute {
            path: path.to_owned(),
        });
    }
    let io = |source| TrustError::Io {
        path: path.to_owned(),
        source,
    };
    let mut pending: VecDeque<OsString> = names(path);
    let mut here = PathBuf::from("/");
    let mut here_meta = std::fs::symlink_metadata(&here).map_err(io)?;
    check_dir(&here, &here_meta)?;
    let root_meta = here_meta.clone();
    let mut links = 0;
    while let Some(name) = pending.pop_front() {
        if name == ".." {
            here.pop();
            here_meta = std::fs::symlink_metadata(&here).map_err(io)?;
            continue;
        }
        let next = here.join(&name);
        let meta = std::fs::symlink_metadata(&next).map_err(io)?;
        if meta.file_type().is_symlink() {
            if !may_follow(meta.uid(), here_meta.uid(), here_meta.mode()) {
                return Err(TrustError::ForeignSymlink {
                    link: next,
                    owner: user_name(meta.uid()),
                    dir: here,
                });
            }
            links += 1;
            if links > MAX_LINKS {
                return Err(TrustError::Loop {
                    path: path.to_owned(),
                });
            }
            let target = std::fs::read_link(&next).map_err(io)?;
            if target.is_absolute() {
                here = PathBuf::from("/");
                here_meta = root_meta.clone();
            }
            for n in names(&target).into_iter().rev() {
                pending.push_front(n);
            }
        } else if pending.is_empty() {
            return Ok(next);
        } else {
            check_dir(&next, &meta)?;
            here = next;
            here_meta = meta;
        }
    }
    Ok(here)
}

/// The kernel's `fs.protected_symlinks` rule, for root: in a sticky
/// directory everyone may write to, a symlink is followed only when it is
/// owned by whoever follows it (root, or whoever runs us) or by the
/// directory's owner. Anywhere else the directory's own check suffices.
fn may_follow(link_uid: u32, dir_uid: u32, dir_mode: u32) -> bool {
    let sticky_world_writable = dir_mode & 0o1002 == 0o1002;
    !sticky_world_writable || trusted_owner(link_uid) || link_uid == dir_uid
}

/// `uid 1001 (alice)`, or just the uid when passwd does not know it.
fn user_name(uid: u32) -> String {
    match nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid)) {
        Ok(Some(u)) => format!("uid {uid} ({})", u.name),
        _ => format!("uid {uid}"),
    }
}

/// The normal components of a path (`.` dropped, `..` kept as a name).
fn names(path: &Path) -> VecDeque<OsString> {
    path.components()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(n.to_owned()),
            Component::ParentDir => Some("..".into()),
            _ => None,
        })
        .collect()
}

/// Owners whose files we trust: root, and whoever runs us (the same when
/// run as root, which is how the hook runs).
fn trusted_owner(uid: u32) -> bool {
    uid == 0 || uid == nix::unistd::geteuid().as_raw()
}

fn check_dir(dir: &Path, meta: &Metadata) -> Result<(), TrustError> {
    if !meta.is_dir() {
        return Err(TrustError::NotRegular {
            path: dir.to_owned(),
            kind: "non-directory in the middle of the path",
        });
    }
    let sticky_root = meta.uid() == 0 && meta.mode() & 0o1000 != 0;
    if !trusted_owner(meta.uid()) {
        return Err(TrustError::Owner {
            path: dir.to_owned(),
            uid: meta.uid(),
        });
    }
    if !sticky_root {
        check_writable(dir, meta.mode())?;
    }
    Ok(())
}

fn check_file(path: &Path, meta: &Metadata) -> Result<(), TrustError> {
    let ft = meta.file_type();
    let kind = if ft.is_dir() {
        "directory"
    } else if ft.is_fifo() {
        "FIFO"
    } else if ft.is_socket() {
        "socket"
    } else if ft.is_block_device() || ft.is_char_device() {
        "device"
    } else {
        ""
    };
    if !kind.is_empty() {
        return Err(TrustError::NotRegular {
            path: path.to_owned(),
            kind,
        });
    }
    if !trusted_owner(meta.uid()) {
        return Err(TrustError::Owner {
            path: path.to_owned(),
            uid: meta.uid(),
        });
    }
    check_writable(path, meta.mode())
}

fn check_writable(path: &Path, mode: u32) -> Result<(), TrustError> {
    let who = match (mode & 0o020 != 0, mode & 0o002 != 0) {
        (false, false) => return Ok(()),
        (true, false) => "its group",
        (false, true) => "everyone",
        (true, true) => "its group and everyone",
    };
    Err(TrustError::Writable {
        path: path.to_owned(),
        who,
        mode: mode & 0o7777,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("ood-trusted-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o755)).unwrap();
        d
    }

    fn chmod(p: &Path, mode: u32) {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    #[test]
    fn a_safe_file_is_read() {
        let d = dir("safe");
        let f = d.join("hook.env");
        std::fs::write(&f, "A=1\n").unwrap();
        chmod(&f, 0o600);
        assert_eq!(read_to_string(&f).unwrap(), "A=1\n");
    }

    #[test]
    fn writable_by_others_is_refused_naming_the_fix() {
        let d = dir("writable");
        let f = d.join("hook.env");
        std::fs::write(&f, "A=1\n").unwrap();
        chmod(&f, 0o666);
        let msg = read(&f).unwrap_err().to_string();
        assert!(msg.contains("writable by its group and everyone") && msg.contains("chmod go-w"));
        chmod(&f, 0o644);
        chmod(&d, 0o775);
        let msg = read(&f).unwrap_err().to_string();
        assert!(
            msg.contains(&d.display().to_string()) && msg.contains("its group"),
            "{msg}"
        );
    }

    #[test]
    fn fifo_and_directory_are_refused_without_blocking() {
        let d = dir("fifo");
        let f = d.join("hook.env");
        nix::unistd::mkfifo(&f, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        assert!(read(&f).unwrap_err().to_string().contains("FIFO"));
        assert!(read(&d).unwrap_err().to_string().contains("directory"));
    }

    #[test]
    fn symlinks_are_followed_through_safe_directories_only() {
        let d = dir("links");
        let real = d.join("real.env");
        std::fs::write(&real, "A=1\n").unwrap();
        let unsafe_dir = d.join("open");
        std::fs::create_dir(&unsafe_dir).unwrap();
        chmod(&unsafe_dir, 0o777);
        let link = unsafe_dir.join("hook.env");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        let msg = read(&link).unwrap_err().to_string();
        assert!(msg.contains("open") && msg.contains("everyone"), "{msg}");
        let ok_link = d.join("hook.env");
        std::os::unix::fs::symlink("real.env", &ok_link).unwrap();
        assert_eq!(read_to_string(&ok_link).unwrap(), "A=1\n");
        let looped = d.join("loop");
        std::os::unix::fs::symlink("loop", &looped).unwrap();
        assert!(
            read(&looped)
                .unwrap_err()
                .to_string()
                .contains("symbolic links")
        );
    }

    #[test]
    fn in_a_sticky_world_writable_directory_only_trusted_links_are_followed() {
        // As root, or whoever runs the tests: their own links are followed.
        let me = nix::unistd::geteuid().as_raw();
        assert!(may_follow(me, 0, 0o41777));
        assert!(may_follow(0, 0, 0o41777));
        // Another user's link in /tmp: not followed; in a directory only
        // its owner may write to (or not sticky, or not world-writable:
        // those are refused or allowed by the directory's own check).
        let other = if me == 4242 { 4343 } else { 4242 };
        assert!(!may_follow(other, 0, 0o41777));
        assert!(!may_follow(other, 0, 0o1777));
        assert!(may_follow(other, other, 0o41777));
        assert!(may_follow(other, 0, 0o40755));
        assert!(may_follow(other, 0, 0o41755));
        assert!(may_follow(other, 0, 0o40777));
    }

    #[test]
    fn oversized_files_are_refused() {
        let d = dir("big");
        let f = d.join("hook.env");
        std::fs::write(&f, vec![b'#'; MAX_BYTES as usize + 1]).unwrap();
        assert!(read(&f).unwrap_err().to_string().contains("larger than"));
    }

    #[test]
    fn relative_paths_are_resolved_from_the_working_directory() {
        assert!(matches!(
            resolve(Path::new("hook.env")),
            Err(TrustError::NotAbsolute { .. })
        ));
        assert!(read(Path::new("Cargo.toml")).is_ok() || nix::unistd::geteuid().as_raw() != 0);
    }
}
