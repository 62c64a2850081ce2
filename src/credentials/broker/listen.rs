//! Where the broker listens: the socket systemd passes (socket activation:
//! `LISTEN_PID` = our pid, `LISTEN_FDS` = 1, the socket on fd 3), else
//! `BROKER_SOCKET` bound by us. Binding refuses a path that is something
//! other than a stale socket of root's, and a directory root does not
//! control; the directory is made reachable (0755) and the socket
//! connectable by every user (0666): who asks is told by `SO_PEERCRED`,
//! not by file modes.

use std::os::fd::{AsFd, FromRawFd, OwnedFd};
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

use nix::fcntl::{FcntlArg, FdFlag, fcntl};
use nix::sys::socket::{SockType, UnixAddr, getsockname, getsockopt, sockopt};
use nix::sys::stat::{SFlag, fstat};

use crate::site::trusted;

/// The first descriptor systemd passes.
const SD_LISTEN_FDS_START: i32 = 3;

/// How the listening socket was obtained.
#[derive(Debug)]
pub enum Origin {
    /// Passed by systemd; its path as the socket reports it.
    Activated(Option<PathBuf>),
    /// Bound by us; removed again on shutdown.
    Bound(PathBuf),
}

/// The listening socket, or why there is none.
pub fn listen(socket: &Path) -> Result<(UnixListener, Origin), String> {
    if let Some(listener) = from_systemd()? {
        let path = getsockname::<UnixAddr>(std::os::fd::AsRawFd::as_raw_fd(&listener))
            .ok()
            .and_then(|a| a.path().map(Path::to_owned));
        return Ok((listener, Origin::Activated(path)));
    }
    bind(socket).map(|l| (l, Origin::Bound(socket.to_owned())))
}

/// The socket passed by systemd, if we were socket-activated.
fn from_systemd() -> Result<Option<UnixListener>, String> {
    let pid = std::env::var("LISTEN_PID").ok();
    let fds = std::env::var("LISTEN_FDS").ok();
    let (Some(pid), Some(fds)) = (pid, fds) else {
        return Ok(None);
    };
    if pid.trim() != std::process::id().to_string() {
        return Ok(None);
    }
    if fds.trim() != "1" {
        return Err(format!(
            "systemd passed LISTEN_FDS={fds}; the broker takes exactly one socket (one ListenStream= in ood-k8s-bootstrap-broker.socket)"
        ));
    }
    // SAFETY: systemd hands us fd 3 for our own use; nothing else in this
    // process has touched or owns it, and it is taken over exactly once.
    let fd = unsafe { OwnedFd::from_raw_fd(SD_LISTEN_FDS_START) };
    check_listening_unix(&fd)?;
    fcntl(fd.as_fd(), FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC))
        .map_err(|e| format!("fd 3 from systemd: {e}"))?;
    Ok(Some(UnixListener::from(fd)))
}

fn check_listening_unix(fd: &OwnedFd) -> Result<(), String> {
    let bad = |what: &str| {
        format!(
            "fd 3 from systemd is not {what}; ood-k8s-bootstrap-broker.socket must have ListenStream=/path (a Unix stream socket)"
        )
    };
    let st = fstat(fd.as_fd()).map_err(|e| format!("fd 3 from systemd: {e}"))?;
    if SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT != SFlag::S_IFSOCK {
        return Err(bad("a socket"));
    }
    match getsockopt(fd, sockopt::SockType) {
        Ok(SockType::Stream) => {}
        _ => return Err(bad("a stream socket")),
    }
    if !getsockopt(fd, sockopt::AcceptConn).unwrap_or(false) {
        return Err(bad("a listening socket"));
    }
    if getsockname::<UnixAddr>(std::os::fd::AsRawFd::as_raw_fd(fd)).is_err() {
        return Err(bad("a Unix socket"));
    }
    Ok(())
}

/// Binds `socket` ourselves.
fn bind(socket: &Path) -> Result<UnixListener, String> {
    let (Some(dir), true) = (socket.parent(), socket.is_absolute()) else {
        return Err(format!(
            "BROKER_SOCKET {}: expected an absolute path",
            socket.display()
        ));
    };
    if std::fs::symlink_metadata(dir).is_err() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    }
    let real_dir = trusted::directory(dir).map_err(|e| {
        format!(
            "BROKER_SOCKET {}: its directory: {e}; refusing to start",
            socket.display()
        )
    })?;
    reachable(&real_dir)?;
    let socket = real_dir.join(socket.file_name().unwrap_or_default());
    clear_stale(&socket)?;
    let listener = UnixListener::bind(&socket)
        .map_err(|e| format!("cannot bind {}: {e}", socket.display()))?;
    std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o666))
        .map_err(|e| format!("cannot chmod 666 {}: {e}", socket.display()))?;
    Ok(listener)
}

/// Users must be able to reach the socket: the directory gets r-x for all
/// (it may have been made 0700 by an older version of the hook).
fn reachable(dir: &Path) -> Result<(), String> {
    let meta = std::fs::metadata(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    if meta.mode() & 0o055 != 0o055 {
        let mode = (meta.mode() & 0o7777) | 0o055;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode))
            .map_err(|e| format!("cannot make {} reachable by users: {e}", dir.display()))?;
        eprintln!(
            "{} broker: made {} mode {mode:o} so users can reach the socket",
            crate::PROG,
            dir.display()
        );
    }
    Ok(())
}

/// An old socket of ours is removed (unless a broker still answers on
/// it); anything else at the path stops the start.
fn clear_stale(socket: &Path) -> Result<(), String> {
    let meta = match std::fs::symlink_metadata(socket) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(format!("{}: {e}", socket.display())),
    };
    if !meta.file_type().is_socket() || meta.uid() != nix::unistd::geteuid().as_raw() {
        return Err(format!(
            "{} exists and is not a socket of root's (it is uid {}, mode {:o}); refusing to start: remove it if it is not needed",
            socket.display(),
            meta.uid(),
            meta.mode() & 0o7777
        ));
    }
    if UnixStream::connect(socket).is_ok() {
        return Err(format!(
            "another broker already answers on {}; refusing to start a second one",
            socket.display()
        ));
    }
    std::fs::remove_file(socket)
        .map_err(|e| format!("cannot remove the stale {}: {e}", socket.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("ood-listen-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn binds_reachable_and_refuses_what_is_not_a_stale_socket() {
        let d = dir("bind");
        let sock = d.join("run/broker.sock");
        let l = bind(&sock).unwrap();
        let m = |p: &Path| std::fs::metadata(p).unwrap().mode() & 0o777;
        assert_eq!((m(&d.join("run")), m(&sock)), (0o755, 0o666));
        // a second broker is refused while the first listens
        assert!(bind(&sock).unwrap_err().contains("already answers"));
        drop(l);
        // a stale socket is replaced
        bind(&sock).unwrap();
        // a regular file is not
        std::fs::remove_file(&sock).unwrap();
        std::fs::write(&sock, "x").unwrap();
        assert!(bind(&sock).unwrap_err().contains("not a socket"));
        // nor a symlink to a socket
        std::fs::remove_file(&sock).unwrap();
        let other = d.join("run/other.sock");
        drop(bind(&other).unwrap());
        std::os::unix::fs::symlink(&other, &sock).unwrap();
        assert!(bind(&sock).unwrap_err().contains("not a socket"));
        // a 0700 directory is opened up for users
        std::fs::remove_file(&sock).unwrap();
        std::fs::set_permissions(d.join("run"), std::fs::Permissions::from_mode(0o700)).unwrap();
        bind(&sock).unwrap();
        assert_eq!(m(&d.join("run")), 0o755);
        // a directory others may write to is refused
        std::fs::set_permissions(d.join("run"), std::fs::Permissions::from_mode(0o777)).unwrap();
        assert!(bind(&sock).unwrap_err().contains("refusing to start"));
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn without_systemd_nothing_is_activated() {
        // LISTEN_PID is not ours in the test process.
        assert!(from_systemd().unwrap().is_none());
    }
}
