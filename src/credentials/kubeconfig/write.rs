//! The file work, done as the user (never as root): find `~/.kube` without
//! following symlinks, take the locks, merge, write beside and rename over.
//!
//! Every path below the home directory is opened relative to a directory
//! descriptor with `O_NOFOLLOW`, so a symlink planted at `~/.kube`,
//! `~/.kube/config` or in the token cache is refused, never followed.
//!
//! Locking policy:
//! 1. `flock` on `~/.kube/config` itself (created empty if missing, which
//!    kubectl reads as an empty config) serialises copies of this hook,
//!    including on other web nodes over NFS. After the lock is taken the
//!    path is checked to still name the locked inode (a previous holder may
//!    have renamed a new file over it); if not, it is locked again.
//! 2. kubectl's own `~/.kube/config.lock` (created `O_EXCL`, removed after)
//!    is then taken too, so kubectl never interleaves with us. kubectl's
//!    lock has no stale recovery; ours does: a lock file that names a dead
//!    process of this program on this host is stale at once; any other lock
//!    file that stays the very same file (inode and mtime) for
//!    [`STALE_AFTER`] while we wait is stale (kubectl holds its lock for
//!    milliseconds). A stale lock is removed and taken over. Only one copy
//!    of the hook can be in this step (step 1), so two copies never take
//!    over the same lock. The whole wait is bounded; past it the run fails
//!    with a temporary error.
//! 3. The new content goes to a temporary file beside the config (created
//!    `O_EXCL`, 0600), is fsynced, renamed over `config`, and the directory
//!    fsynced: a crash leaves the old or the new file, never a mix.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::fcntl::{AtFlags, Flock, FlockArg, OFlag, openat, renameat};
use nix::sys::stat::{FileStat, Mode, SFlag, fchmod, fstat, fstatat, mkdirat};
use nix::unistd::{Pid, Uid, UnlinkatFlags, fsync, unlinkat};
use serde::{Deserialize, Serialize};

use super::merge::{self, Desired, MergeError};
use crate::credentials::cache::{CACHE_DIR, Cache};

/// A foreign lock file unchanged this long is stale.
pub const STALE_AFTER: Duration = Duration::from_secs(3);
/// Largest kubeconfig we read (a real one is kilobytes).
const MAX_CONFIG: u64 = 16 << 20;
const TMP_MARK: &str = ".ood-k8s-bootstrap.";

/// What the privilege-dropped child is asked to do for one kubeconfig file
/// (a list of them, one per file, is sent as JSON on its stdin; holds
/// tokens, so it never goes to argv, env or logs).
#[derive(Serialize, Deserialize, PartialEq)]
pub struct Job {
    pub user: String,
    pub uid: u32,
    pub gid: u32,
    pub home: PathBuf,
    pub lock_wait_ms: u64,
    /// The kubeconfig's name in `~/.kube` (`config`, or a cluster's
    /// `config_file`).
    pub file: String,
    /// The entries of every cluster whose kubeconfig this file is: one
    /// locked write for all of them.
    pub desired: Vec<Desired>,
    /// Exec mode: the token cache files (names under
    /// `~/.kube/cache/ood-k8s-bootstrap/`) and their content.
    pub cache: Vec<(String, Cache)>,
}

impl Job {
    /// The kubeconfig's path.
    pub fn path(&self) -> PathBuf {
        self.home.join(".kube").join(&self.file)
    }
}

impl Job {
    /// Parses the jobs the child reads on its stdin, one per file (anyone
    /// may start the child and send anything: it runs as the sender's own
    /// uid); none is not a job list.
    pub fn list_from_json(bytes: &[u8]) -> Option<Vec<Self>> {
        serde_json::from_slice::<Vec<Self>>(bytes)
            .ok()
            .filter(|jobs| !jobs.is_empty())
    }
}

/// Largest answer the parent reads from the writer child.
pub const MAX_REPLY: u64 = 64 << 10;
/// At most this many warnings of the child are passed on, each at most
/// [`MAX_TEXT`] characters.
const MAX_WARNINGS: usize = 8;
const MAX_TEXT: usize = 400;

/// The child's answer for one job (a list of them, in the jobs' order, is
/// JSON on its stdout).
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
pub enum Reply {
    Done {
        path: PathBuf,
        changed: bool,
        warnings: Vec<String>,
    },
    Failed(Failure),
}

impl Reply {
    /// Parses the child's answers, one per job of `jobs`; `None` unless
    /// there is exactly one each. The child runs as the user, who may be
    /// able to tamper with it (ptrace), and root logs parts of it: every
    /// text is made one short line, and at most [`MAX_WARNINGS`] warnings
    /// are kept.
    pub fn from_child(bytes: &[u8], jobs: usize) -> Option<Vec<Self>> {
        let replies: Vec<Self> = serde_json::from_slice(bytes).ok()?;
        (replies.len() == jobs).then(|| replies.into_iter().map(Self::sanitised).collect())
    }

    fn sanitised(self) -> Self {
        let line = |s: &str| crate::oneline::clean(s, MAX_TEXT);
        let path = |p: &Path| PathBuf::from(line(&p.to_string_lossy()));
        match self {
            Reply::Done {
                path: p,
                changed,
                warnings,
            } => Reply::Done {
                path: path(&p),
                changed,
                warnings: warnings
                    .iter()
                    .take(MAX_WARNINGS)
                    .map(|w| line(w))
                    .collect(),
            },
            Reply::Failed(f) => Reply::Failed(Failure {
                kind: f.kind,
                path: path(&f.path),
                why: line(&f.why),
            }),
        }
    }
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub enum FailKind {
    /// Symlink, wrong owner, group/other-writable: refused.
    Unsafe,
    /// An I/O error.
    Io,
    /// The existing file does not parse: left alone.
    Parse,
    /// A lock did not come free in time.
    LockTimeout,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Failure {
    pub kind: FailKind,
    pub path: PathBuf,
    pub why: String,
}

impl Failure {
    pub fn new(kind: FailKind, path: &Path, why: impl Into<String>) -> Self {
        Self {
            kind,
            path: path.to_owned(),
            why: why.into(),
        }
    }
    fn io(path: &Path, what: &str, e: impl std::fmt::Display) -> Self {
        Self::new(FailKind::Io, path, format!("{what}: {e}"))
    }
}

/// Runs a job as the current (already unprivileged) user.
pub fn run(job: &Job) -> Reply {
    match run_inner(job) {
        Ok(r) => r,
        Err(f) => Reply::Failed(f),
    }
}

fn run_inner(job: &Job) -> Result<Reply, Failure> {
    let uid = Uid::from_raw(job.uid);
    let deadline = Instant::now() + Duration::from_millis(job.lock_wait_ms);
    let mut warnings = Vec::new();
    let kube_path = job.home.join(".kube");
    let config_path = job.path();
    if !crate::site::settings::clusters::is_kubeconfig_name(&job.file) {
        return Err(Failure::new(
            FailKind::Unsafe,
            &config_path,
            "not a kubeconfig file name the hook writes",
        ));
    }

    let home = nix::fcntl::open(
        &job.home,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| Failure::io(&job.home, "cannot open the home directory", e))?;
    let kube = open_dir(&home, ".kube", &kube_path, uid, Create::Keep)?;

    // Step 1: our own lock, on the config file itself.
    let config = lock_file(&kube, &job.file, &config_path, uid, deadline)?;
    // Step 2: kubectl's lock.
    let lock_name = format!("{}.lock", job.file);
    let _kubectl_lock =
        KubectlLock::acquire(&kube, &kube_path, &lock_name, deadline, &mut warnings)?;
    remove_leftover_temps(&kube, &job.file);

    // The token cache first: the entry that points at it comes after.
    for (name, cache) in &job.cache {
        write_cache(&kube, &kube_path, uid, name, cache, deadline)?;
    }

    let st = fstat(config.as_fd()).map_err(|e| Failure::io(&config_path, "cannot stat", e))?;
    if st.st_size as u64 > MAX_CONFIG {
        return Err(Failure::new(
            FailKind::Parse,
            &config_path,
            format!("it is larger than {MAX_CONFIG} bytes; left unchanged"),
        ));
    }
    let mut old = Vec::new();
    (&*config)
        .read_to_end(&mut old)
        .map_err(|e| Failure::io(&config_path, "cannot read", e))?;
    let old = String::from_utf8(old).map_err(|_| {
        Failure::new(
            FailKind::Parse,
            &config_path,
            "it is not UTF-8 text, so it is not a kubeconfig; left unchanged (move it away to let the hook write a new one)",
        )
    })?;
    let new = merge::merge_all(&old, &job.desired).map_err(|e| match e {
        MergeError::Emit(_) => Failure::io(&config_path, "cannot produce the new content", e),
        e => Failure::new(
            FailKind::Parse,
            &config_path,
            format!("{e}; left unchanged (fix or move it away, then log in again)"),
        ),
    })?;

    let mode_ok = st.st_mode & 0o7777 == 0o600;
    let changed = new != old || !mode_ok;
    if new != old {
        write_atomic(&kube, &kube_path, &job.file, new.as_bytes())?;
    } else if !mode_ok {
        fchmod(config.as_fd(), Mode::from_bits_truncate(0o600))
            .map_err(|e| Failure::io(&config_path, "cannot chmod 600", e))?;
    }
    Ok(Reply::Done {
        path: config_path,
        changed,
        warnings,
    })
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Create {
    /// Create 0700 when missing; keep the mode of an existing directory.
    Keep,
    /// Create 0700 when missing; make an existing one 0700.
    Private,
}

/// Opens `name` under `parent` as a directory without following a
/// symlink, creating it 0700 when missing; refuses one not owned by `uid`
/// or writable by group or others.
pub fn open_dir(
    parent: &OwnedFd,
    name: &str,
    full: &Path,
    uid: Uid,
    create: Create,
) -> Result<OwnedFd, Failure> {
    let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    let fd = match openat(parent, name, flags, Mode::empty()) {
        Ok(fd) => fd,
        Err(Errno::ENOENT) => {
            match mkdirat(parent, name, Mode::from_bits_truncate(0o700)) {
                Ok(()) | Err(Errno::EEXIST) => {}
                Err(e) => return Err(Failure::io(full, "cannot create the directory", e)),
            }
            openat(parent, name, flags, Mode::empty())
                .map_err(|e| not_followed(parent, name, full, e, "directory"))?
        }
        Err(e) => return Err(not_followed(parent, name, full, e, "directory")),
    };
    let st = fstat(fd.as_fd()).map_err(|e| Failure::io(full, "cannot stat", e))?;
    check_owner(&st, full, uid)?;
    if create == Create::Private && st.st_mode & 0o777 != 0o700 {
        fchmod(fd.as_fd(), Mode::from_bits_truncate(0o700))
            .map_err(|e| Failure::io(full, "cannot chmod 700", e))?;
    } else if st.st_mode & 0o022 != 0 {
        return Err(Failure::new(
            FailKind::Unsafe,
            full,
            format!(
                "it is writable by group or others (mode {:o}), so another user could swap files in it; nothing written (run chmod go-w on it)",
                st.st_mode & 0o777
            ),
        ));
    }
    Ok(fd)
}

fn check_owner(st: &FileStat, full: &Path, uid: Uid) -> Result<(), Failure> {
    if st.st_uid != uid.as_raw() {
        return Err(Failure::new(
            FailKind::Unsafe,
            full,
            format!(
                "it is owned by uid {}, not by the user (uid {uid}); nothing written",
                st.st_uid
            ),
        ));
    }
    Ok(())
}

/// The error for an `openat(O_NOFOLLOW)` that failed: a symlink is named
/// as such.
fn not_followed(parent: &OwnedFd, name: &str, full: &Path, e: Errno, kind: &str) -> Failure {
    let lst = fstatat(parent, name, AtFlags::AT_SYMLINK_NOFOLLOW);
    let is_link = matches!(&lst, Ok(st) if SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == SFlag::S_IFLNK);
    if e == Errno::ELOOP || is_link {
        Failure::new(
            FailKind::Unsafe,
            full,
            "it is a symbolic link; symlinks are never followed here, nothing written (replace it with a real file or directory)",
        )
    } else if e == Errno::ENOTDIR || e == Errno::EISDIR {
        Failure::new(
            FailKind::Unsafe,
            full,
            format!("it is not a {kind}; nothing written"),
        )
    } else {
        Failure::io(full, &format!("cannot open the {kind}"), e)
    }
}

fn is_regular(st: &FileStat) -> bool {
    SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == SFlag::S_IFREG
}

/// Opens (creating if missing) and `flock`s a regular file under `dir`,
/// retrying until the path names the locked inode.
pub fn lock_file(
    dir: &OwnedFd,
    name: &str,
    full: &Path,
    uid: Uid,
    deadline: Instant,
) -> Result<Flock<File>, Failure> {
    loop {
        let open = |flags: OFlag| {
            openat(
                dir,
                name,
                flags | OFlag::O_CREAT | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC | OFlag::O_NONBLOCK,
                Mode::from_bits_truncate(0o600),
            )
        };
        let fd = match open(OFlag::O_RDWR) {
            Err(Errno::EACCES) => open(OFlag::O_RDONLY),
            r => r,
        }
        .map_err(|e| not_followed(dir, name, full, e, "regular file"))?;
        let st = fstat(fd.as_fd()).map_err(|e| Failure::io(full, "cannot stat", e))?;
        if !is_regular(&st) {
            return Err(Failure::new(
                FailKind::Unsafe,
                full,
                "it is not a regular file; nothing written",
            ));
        }
        check_owner(&st, full, uid)?;
        let mut file = File::from(fd);
        let locked = loop {
            match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
                Ok(l) => break l,
                Err((f, Errno::EWOULDBLOCK | Errno::EINTR)) => {
                    if Instant::now() >= deadline {
                        return Err(Failure::new(
                            FailKind::LockTimeout,
                            full,
                            "another copy of the hook (or the user's kubectl credential plugin) kept it locked; try again",
                        ));
                    }
                    file = f;
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err((_, e)) => return Err(Failure::io(full, "cannot lock", e)),
            }
        };
        // The path may now name a newer file renamed over the one we locked.
        match fstatat(dir, name, AtFlags::AT_SYMLINK_NOFOLLOW) {
            Ok(now) if now.st_ino == st.st_ino && now.st_dev == st.st_dev => return Ok(locked),
            Ok(_) | Err(Errno::ENOENT) => continue,
            Err(e) => return Err(Failure::io(full, "cannot stat", e)),
        }
    }
}

/// kubectl's `<file>.lock`, removed on drop.
pub struct KubectlLock<'a> {
    dir: &'a OwnedFd,
    name: String,
}

impl<'a> KubectlLock<'a> {
    pub fn acquire(
        dir: &'a OwnedFd,
        dir_path: &Path,
        name: &str,
        deadline: Instant,
        warnings: &mut Vec<String>,
    ) -> Result<Self, Failure> {
        let full = dir_path.join(name);
        let mut seen: Option<((u64, i64, i64), Instant)> = None;
        loop {
            match openat(
                dir,
                name,
                OFlag::O_WRONLY
                    | OFlag::O_CREAT
                    | OFlag::O_EXCL
                    | OFlag::O_NOFOLLOW
                    | OFlag::O_CLOEXEC,
                Mode::from_bits_truncate(0o600),
            ) {
                Ok(fd) => {
                    let mut f = File::from(fd);
                    // Best effort: lets a later run see this holder died.
                    let _ = writeln!(f, "{}", lock_line(std::process::id(), &hostname()));
                    return Ok(Self {
                        dir,
                        name: name.to_owned(),
                    });
                }
                Err(Errno::EEXIST) => {}
                Err(e) => return Err(Failure::io(&full, "cannot create the lock file", e)),
            }
            let st = match fstatat(dir, name, AtFlags::AT_SYMLINK_NOFOLLOW) {
                Ok(st) => st,
                Err(Errno::ENOENT) => continue,
                Err(e) => return Err(Failure::io(&full, "cannot stat the lock file", e)),
            };
            let id = (st.st_ino, st.st_mtime, st.st_mtime_nsec);
            let now = Instant::now();
            let since = match seen {
                Some((old, t)) if old == id => t,
                _ => {
                    seen = Some((id, now));
                    now
                }
            };
            let dead_holder = holder_is_dead(dir, name);
            if dead_holder || now.duration_since(since) >= STALE_AFTER {
                // Remove only if it is still the file we judged stale.
                if let Ok(again) = fstatat(dir, name, AtFlags::AT_SYMLINK_NOFOLLOW)
                    && (again.st_ino, again.st_mtime, again.st_mtime_nsec) == id
                {
                    let _ = unlinkat(dir, name, UnlinkatFlags::NoRemoveDir);
                    warnings.push(format!(
                        "removed a stale lock file {} ({})",
                        full.display(),
                        if dead_holder {
                            "its holder, an earlier run of this hook, is gone"
                        } else {
                            "it did not change while we waited"
                        }
                    ));
                }
                seen = None;
                continue;
            }
            if now >= deadline {
                return Err(Failure::new(
                    FailKind::LockTimeout,
                    &full,
                    "kubectl's lock file is held (by kubectl or another program); nothing written, try again",
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for KubectlLock<'_> {
    fn drop(&mut self) {
        let _ = unlinkat(self.dir, self.name.as_str(), UnlinkatFlags::NoRemoveDir);
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}

const LOCK_MARK: &str = "ood-k8s-bootstrap pid=";

/// What this program writes into kubectl's lock file while it holds it.
pub fn lock_line(pid: u32, host: &str) -> String {
    format!("{LOCK_MARK}{pid} host={host}")
}

/// The holder a lock file's text names, if this program wrote it: its pid
/// (always > 0) and host. The file is in the user's directory: anything
/// may be in it.
pub fn lock_holder(text: &str) -> Option<(i32, &str)> {
    let (pid, host) = text.trim().strip_prefix(LOCK_MARK)?.split_once(" host=")?;
    let pid = pid.parse::<i32>().ok().filter(|p| *p > 0)?;
    Some((pid, host))
}

/// True when the lock file was written by this program on this host, and
/// that process no longer exists.
fn holder_is_dead(dir: &OwnedFd, name: &str) -> bool {
    let Ok(fd) = openat(
        dir,
        name,
        OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC | OFlag::O_NONBLOCK,
        Mode::empty(),
    ) else {
        return false;
    };
    let mut text = String::new();
    if File::from(fd).take(256).read_to_string(&mut text).is_err() {
        return false;
    }
    let Some((pid, host)) = lock_holder(&text) else {
        return false;
    };
    if host != hostname() || pid as u32 == std::process::id() {
        return false;
    }
    nix::sys::signal::kill(Pid::from_raw(pid), None) == Err(Errno::ESRCH)
}

/// Temporary files of killed runs (only ours, by name) are removed while
/// the locks are held.
fn remove_leftover_temps(dir: &OwnedFd, file: &str) {
    use std::os::fd::AsRawFd;
    let Ok(entries) = std::fs::read_dir(format!("/proc/self/fd/{}", dir.as_raw_fd())) else {
        return;
    };
    let mine = format!(".{file}{TMP_MARK}");
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(name) = name.to_str() else { continue };
        // Only this file's: another kubeconfig in the directory may be
        // being written by another writer (it holds that file's lock).
        if name.starts_with(&mine) && name.ends_with(".tmp") {
            let _ = unlinkat(dir, name, UnlinkatFlags::NoRemoveDir);
        }
    }
}

/// Writes `name` under `dir` atomically: a new 0600 file beside it,
/// fsynced, renamed over it, the directory fsynced.
pub fn write_atomic(
    dir: &OwnedFd,
    dir_path: &Path,
    name: &str,
    data: &[u8],
) -> Result<(), Failure> {
    let full = dir_path.join(name);
    let tmp = format!(".{name}{TMP_MARK}{}.tmp", std::process::id());
    let create = || {
        openat(
            dir,
            tmp.as_str(),
            OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::from_bits_truncate(0o600),
        )
    };
    let fd = match create() {
        Err(Errno::EEXIST) => {
            // A leftover of a killed process that had our pid.
            let _ = unlinkat(dir, tmp.as_str(), UnlinkatFlags::NoRemoveDir);
            create()
        }
        r => r,
    }
    .map_err(|e| Failure::io(&full, "cannot create a temporary file beside it", e))?;
    let result = (|| {
        fchmod(fd.as_fd(), Mode::from_bits_truncate(0o600)).map_err(std::io::Error::from)?;
        let mut f = File::from(fd);
        f.write_all(data)?;
        f.sync_all()?;
        drop(f);
        renameat(dir, tmp.as_str(), dir, name).map_err(std::io::Error::from)?;
        fsync(dir.as_fd()).map_err(std::io::Error::from)
    })();
    result.map_err(|e| {
        let _ = unlinkat(dir, tmp.as_str(), UnlinkatFlags::NoRemoveDir);
        Failure::io(&full, "cannot write", e)
    })
}

/// Opens `~/.kube/cache/ood-k8s-bootstrap` (0700), creating it.
pub fn open_cache_dir(
    kube: &OwnedFd,
    kube_path: &Path,
    uid: Uid,
) -> Result<(OwnedFd, PathBuf), Failure> {
    let cache_path = kube_path.join("cache");
    let cache = open_dir(kube, "cache", &cache_path, uid, Create::Keep)?;
    let ours_path = cache_path.join(CACHE_DIR.trim_start_matches("cache/"));
    let ours = open_dir(
        &cache,
        CACHE_DIR.trim_start_matches("cache/"),
        &ours_path,
        uid,
        Create::Private,
    )?;
    Ok((ours, ours_path))
}

/// A token cache file name the job may give: one plain `*.json` name in
/// the cache directory.
pub fn is_cache_file_name(name: &str) -> bool {
    !name.contains('/') && !name.starts_with('.') && name.ends_with(".json")
}

/// Writes the exec plugin's token cache under its refresh lock.
fn write_cache(
    kube: &OwnedFd,
    kube_path: &Path,
    uid: Uid,
    name: &str,
    cache: &Cache,
    deadline: Instant,
) -> Result<(), Failure> {
    let (dir, dir_path) = open_cache_dir(kube, kube_path, uid)?;
    if !is_cache_file_name(name) {
        return Err(Failure::new(FailKind::Io, &dir_path, "bad cache file name"));
    }
    let lock_name = format!("{}.lock", name.trim_end_matches(".json"));
    let _lock = lock_file(&dir, &lock_name, &dir_path.join(&lock_name), uid, deadline)?;
    let json = serde_json::to_vec_pretty(cache)
        .map_err(|e| Failure::io(&dir_path.join(name), "cannot serialise", e))?;
    write_atomic(&dir, &dir_path, name, &json)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::credentials::kubeconfig::merge::UserEntry;
    use serde_json::json;
    use std::os::unix::fs::PermissionsExt;

    fn tmp_home(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("kc-write-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn job(home: &Path) -> Job {
        Job {
            user: "me".into(),
            uid: Uid::current().as_raw(),
            gid: nix::unistd::Gid::current().as_raw(),
            home: home.to_owned(),
            lock_wait_ms: 2000,
            file: "config".into(),
            desired: vec![Desired {
                user: Some(UserEntry {
                    name: "me".into(),
                    user: json!({"token": "t"}),
                }),
                ..Default::default()
            }],
            cache: Vec::new(),
        }
    }

    fn failed(r: Reply) -> Failure {
        match r {
            Reply::Failed(f) => f,
            other => panic!("expected failure, got {other:?}"),
        }
    }

    #[test]
    fn creates_dir_and_file_private() {
        let home = tmp_home("create");
        let r = run(&job(&home));
        assert!(matches!(r, Reply::Done { changed: true, .. }), "{r:?}");
        let m = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(m(&home.join(".kube")), 0o700);
        assert_eq!(m(&home.join(".kube/config")), 0o600);
        assert!(!home.join(".kube/config.lock").exists());
        // second run: same bytes
        assert!(matches!(
            run(&job(&home)),
            Reply::Done { changed: false, .. }
        ));
        // a 0644 file is made 0600
        std::fs::set_permissions(home.join(".kube/config"), PermissionsExt::from_mode(0o644))
            .unwrap();
        assert!(matches!(
            run(&job(&home)),
            Reply::Done { changed: true, .. }
        ));
        assert_eq!(m(&home.join(".kube/config")), 0o600);
        std::fs::remove_dir_all(&home).unwrap();
    }

    #[test]
    fn symlinks_refused() {
        let home = tmp_home("sym");
        let target = home.join("target");
        std::fs::write(&target, "precious").unwrap();
        std::fs::create_dir(home.join(".kube")).unwrap();
        std::os::unix::fs::symlink(&target, home.join(".kube/config")).unwrap();
        let f = failed(run(&job(&home)));
        assert_eq!(f.kind, FailKind::Unsafe);
        assert!(f.why.contains("symbolic link"), "{f:?}");
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "precious");

        std::fs::remove_dir_all(home.join(".kube")).unwrap();
        std::fs::create_dir(home.join("elsewhere")).unwrap();
        std::os::unix::fs::symlink(home.join("elsewhere"), home.join(".kube")).unwrap();
        let f = failed(run(&job(&home)));
        assert_eq!(f.kind, FailKind::Unsafe, "{f:?}");
        assert!(
            std::fs::read_dir(home.join("elsewhere"))
                .unwrap()
                .next()
                .is_none()
        );
        std::fs::remove_dir_all(&home).unwrap();
    }

    #[test]
    fn writable_kube_dir_refused() {
        let home = tmp_home("gw");
        std::fs::create_dir(home.join(".kube")).unwrap();
        std::fs::set_permissions(home.join(".kube"), PermissionsExt::from_mode(0o777)).unwrap();
        let f = failed(run(&job(&home)));
        assert_eq!(f.kind, FailKind::Unsafe);
        assert!(f.why.contains("writable"), "{f:?}");
        std::fs::remove_dir_all(&home).unwrap();
    }

    #[test]
    fn unparsable_file_left_alone() {
        let home = tmp_home("bad");
        std::fs::create_dir(home.join(".kube")).unwrap();
        std::fs::write(home.join(".kube/config"), "users: [ {").unwrap();
        let f = failed(run(&job(&home)));
        assert_eq!(f.kind, FailKind::Parse);
        assert_eq!(
            std::fs::read_to_string(home.join(".kube/config")).unwrap(),
            "users: [ {"
        );
        assert!(!home.join(".kube/config.lock").exists());
        std::fs::remove_dir_all(&home).unwrap();
    }

    #[test]
    fn stale_locks_are_taken_over() {
        let home = tmp_home("stale");
        std::fs::create_dir(home.join(".kube")).unwrap();
        // a dead earlier run of ours: immediate
        std::fs::write(
            home.join(".kube/config.lock"),
            format!("ood-k8s-bootstrap pid=999999 host={}\n", hostname()),
        )
        .unwrap();
        let t = Instant::now();
        let r = run(&job(&home));
        assert!(
            matches!(&r, Reply::Done { warnings, .. } if warnings.len() == 1),
            "{r:?}"
        );
        assert!(t.elapsed() < Duration::from_secs(1));
        // kubectl's empty lock: after STALE_AFTER
        std::fs::write(home.join(".kube/config.lock"), "").unwrap();
        let mut j = job(&home);
        j.lock_wait_ms = 10_000;
        let t = Instant::now();
        assert!(matches!(run(&j), Reply::Done { .. }));
        assert!(t.elapsed() >= STALE_AFTER);
        assert!(!home.join(".kube/config.lock").exists());
        // a lock kept fresh by its holder: bounded wait, then a temporary error
        std::fs::write(home.join(".kube/config.lock"), "").unwrap();
        let mut j = job(&home);
        j.lock_wait_ms = 500;
        let f = failed(run(&j));
        assert_eq!(f.kind, FailKind::LockTimeout);
        std::fs::remove_dir_all(&home).unwrap();
    }

    #[test]
    fn exec_cache_written_private() {
        let home = tmp_home("cache");
        let mut j = job(&home);
        j.cache = vec![(
            "me.json".into(),
            Cache {
                issuer: "https://idp".into(),
                client_id: "c".into(),
                token: "tok".into(),
                expiry: 5,
                obtained: 0,
                refresh_token: Some("r".into()),
            },
        )];
        assert!(matches!(run(&j), Reply::Done { .. }));
        let dir = home.join(".kube/cache/ood-k8s-bootstrap");
        let m = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(m(&dir), 0o700);
        assert_eq!(m(&dir.join("me.json")), 0o600);
        let c: Cache =
            serde_json::from_slice(&std::fs::read(dir.join("me.json")).unwrap()).unwrap();
        assert_eq!(c.token, "tok");
        std::fs::remove_dir_all(&home).unwrap();
    }

    #[test]
    fn the_fuzz_seeds_are_a_job_list_and_one_reply_each() {
        let seed = |name: &str| {
            std::fs::read(
                Path::new(env!("CARGO_MANIFEST_DIR"))
                    .join("fuzz/corpus/writer_pipe")
                    .join(name),
            )
            .unwrap()
        };
        let jobs = Job::list_from_json(&seed("jobs.json")).expect("jobs.json is a job list");
        assert_eq!(
            jobs.iter().map(|j| j.file.as_str()).collect::<Vec<_>>(),
            ["config", "gpu"]
        );
        assert!(Job::list_from_json(b"[]").is_none());
        for name in ["reply-done.json", "reply-failed.json"] {
            assert!(Reply::from_child(&seed(name), 1).is_some(), "{name}");
            assert!(Reply::from_child(&seed(name), 2).is_none(), "{name}");
        }
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;
        use std::path::Component;

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(64))]

            /// The holder line we write is read back; any other text gives
            /// a positive pid or nothing.
            #[test]
            fn lock_holder_reads_what_we_write(
                pid in 1..=i32::MAX,
                host in "[a-z0-9.-]{0,20}",
                junk in "(?s).{0,80}",
            ) {
                let line = lock_line(pid as u32, &host);
                prop_assert_eq!(lock_holder(&line), Some((pid, host.as_str())));
                let with_newline = format!("{line}\n");
                prop_assert_eq!(lock_holder(&with_newline), Some((pid, host.as_str())));
                if let Some((p, _)) = lock_holder(&junk) {
                    prop_assert!(p > 0);
                }
            }

            /// Whatever the child sends, root gets short one-line texts and
            /// a bounded number of warnings.
            #[test]
            fn replies_are_sanitised(
                warnings in proptest::collection::vec("(?s).{0,500}", 0..12),
                why in "(?s).{0,600}",
                path in "(?s).{0,600}",
            ) {
                let fits = |t: &str| !t.chars().any(char::is_control) && t.chars().count() <= MAX_TEXT + 1;
                let done = serde_json::to_vec(&[Reply::Done { path: PathBuf::from(&path), changed: true, warnings }]).unwrap();
                prop_assert!(Reply::from_child(&done, 2).is_none());
                let replies = Reply::from_child(&done, 1);
                let Some([Reply::Done { path: p, warnings: w, .. }]) = replies.as_deref() else {
                    return Err(TestCaseError::fail("a Done reply"));
                };
                prop_assert!(w.len() <= MAX_WARNINGS);
                prop_assert!(w.iter().all(|t| fits(t)) && fits(&p.to_string_lossy()));
                let failed = serde_json::to_vec(&[Reply::Failed(Failure::new(FailKind::Io, Path::new(&path), why))]).unwrap();
                let replies = Reply::from_child(&failed, 1);
                let Some([Reply::Failed(f)]) = replies.as_deref() else {
                    return Err(TestCaseError::fail("a Failed reply"));
                };
                prop_assert!(fits(&f.why) && fits(&f.path.to_string_lossy()));
            }

            /// An accepted cache file name is one plain name: it cannot
            /// leave the cache directory.
            #[test]
            fn cache_names_stay_in_the_directory(name in "[a-z./-]{0,12}(\\.json)?") {
                if is_cache_file_name(&name) {
                    let parts: Vec<_> = Path::new(&name).components().collect();
                    prop_assert!(matches!(parts[..], [Component::Normal(_)]), "{:?}", name);
                }
            }
        }
    }
}
