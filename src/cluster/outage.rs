//! Failing fast while the API server is down. Every login runs the hook, and
//! nginx_stage waits for it: when the cluster is unreachable, each login
//! would wait out the whole deadline. After a run finds the server
//! unreachable, this remembers it (root-only, under `/run`), and runs in
//! the following window fail at once with the same message — after a quick
//! connection probe, so recovery is picked up by the very next run. The
//! window starts at 5 s and doubles with each failed run, up to
//! `FAST_FAIL_SECONDS`. A state file that is corrupt, foreign-owned or
//! readable by others is ignored, never trusted.

use std::fs::File;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::exit::Exit;

/// Where the memory lives: tmpfs, root-only files, gone at reboot.
pub const STATE_DIR: &str = "/run/ood-k8s-bootstrap";

/// How long the quick probe inside the window may take.
const PROBE_TIMEOUT: Duration = Duration::from_millis(300);

/// The largest state file read.
const MAX_STATE_BYTES: u64 = 4096;

/// The longest failure detail remembered, in characters (`…` added when
/// cut).
const MAX_DETAIL: usize = 300;

/// What is remembered about one API server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    pub server: String,
    /// Unix ms of the first failed run of this outage.
    pub since_ms: u64,
    /// Failed runs so far.
    pub failures: u32,
    /// Unix ms until which runs fail at once.
    pub until_ms: u64,
    /// The failure, without any user's name: "is unreachable: …".
    pub detail: String,
    /// The exit status the failure had (69 or 75).
    pub exit: u8,
}

/// The first window. Being inside a window costs a run little (the probe
/// notices recovery at once), so it need not be tiny.
const FIRST_WINDOW: Duration = Duration::from_secs(5);

/// The window after `failures` failed runs: 5 s, 10 s, 20 s, … up to `max`.
pub fn window(failures: u32, max: Duration) -> Duration {
    let exp = failures.saturating_sub(1).min(20);
    (FIRST_WINDOW * (1u32 << exp)).min(max)
}

impl Record {
    /// The record after one more failed run at `now_ms`.
    pub fn failed(
        previous: Option<Record>,
        server: &str,
        now_ms: u64,
        detail: &str,
        exit: Exit,
        max: Duration,
    ) -> Record {
        let (since_ms, failures) = match previous {
            Some(r) if r.server == server => (r.since_ms, r.failures.saturating_add(1)),
            _ => (now_ms, 1),
        };
        let window_ms = u64::try_from(window(failures, max).as_millis()).unwrap_or(u64::MAX);
        Record {
            server: server.to_owned(),
            since_ms,
            failures,
            until_ms: now_ms.saturating_add(window_ms),
            detail: crate::oneline::clean(detail, MAX_DETAIL),
            exit: exit as u8,
        }
    }

    /// Parses a state file's text, refusing anything implausible for
    /// `server` at `now_ms` (a window longer than `max` cannot be ours).
    pub fn parse(text: &str, server: &str, now_ms: u64, max: Duration) -> Option<Record> {
        let r: Record = serde_json::from_str(text).ok()?;
        let max_ms = u64::try_from(max.as_millis()).ok()?;
        let plausible = r.server == server
            && r.failures >= 1
            && r.since_ms <= now_ms
            && r.until_ms <= now_ms.saturating_add(max_ms)
            && matches!(r.exit, 69 | 75)
            && r.detail.chars().count() <= MAX_DETAIL + 1
            && !r.detail.chars().any(char::is_control);
        plausible.then_some(r)
    }

    /// Whether runs at `now_ms` should fail at once (before the probe).
    pub fn in_window(&self, now_ms: u64) -> bool {
        now_ms < self.until_ms
    }

    pub fn exit(&self) -> Exit {
        if self.exit == Exit::TempFail as u8 {
            Exit::TempFail
        } else {
            Exit::Unavailable
        }
    }

    /// The one-line error for `user`, naming the outage and the window.
    pub fn message(&self, user: &str, now_ms: u64) -> String {
        let left = self.until_ms.saturating_sub(now_ms).div_ceil(1000);
        let ago = now_ms.saturating_sub(self.since_ms) / 1000;
        format!(
            "user {user}: the Kubernetes API server {} {} ({} failed run{} in the last {ago}s); \
             not waiting for it again for {left}s (FAST_FAIL_SECONDS in hook.env)",
            self.server,
            self.detail,
            self.failures,
            if self.failures == 1 { "" } else { "s" },
        )
    }
}

/// The memory of one API server's outages, in a directory.
pub struct Memory {
    dir: PathBuf,
    server: String,
    max: Duration,
}

impl Memory {
    /// `max` zero turns fast failing off.
    pub fn new(dir: &Path, server: &str, max: Duration) -> Self {
        Self {
            dir: dir.to_owned(),
            server: server.to_owned(),
            max,
        }
    }

    fn path(&self) -> PathBuf {
        let name: String = self
            .server
            .trim_start_matches("https://")
            .trim_start_matches("http://")
            .chars()
            .map(|c| match c {
                'a'..='z' | 'A'..='Z' | '0'..='9' | '.' | '-' => c,
                _ => '_',
            })
            .take(120)
            .collect();
        self.dir.join(format!("outage-{name}.json"))
    }

    /// The remembered outage, if runs should fail at once now: inside the
    /// window and the server still refusing a quick connection.
    pub fn current(&self, now_ms: u64) -> Option<Record> {
        if self.max.is_zero() {
            return None;
        }
        let record = self.load(now_ms)?;
        (record.in_window(now_ms) && !probe(&self.server)).then_some(record)
    }

    /// Remembers a failed run.
    pub fn failed(&self, now_ms: u64, detail: &str, exit: Exit) {
        if self.max.is_zero() {
            return;
        }
        let previous = self.load(now_ms);
        let record = Record::failed(previous, &self.server, now_ms, detail, exit, self.max);
        if let Err(e) = self.store(&record) {
            tracing::debug!("cannot remember the outage in {}: {e}", self.dir.display());
        }
    }

    /// Forgets the outage after a run reached the server.
    pub fn recovered(&self) {
        let path = self.path();
        if std::fs::symlink_metadata(&path).is_ok() {
            let _ = std::fs::remove_file(path);
        }
    }

    /// Reads the record, ignoring a file that is not safely ours.
    fn load(&self, now_ms: u64) -> Option<Record> {
        if !safe_dir(&self.dir) {
            return None;
        }
        let file = File::options()
            .read(true)
            .custom_flags(nofollow_nonblock())
            .open(self.path())
            .ok()?;
        let meta = file.metadata().ok()?;
        let ours = meta.is_file()
            && meta.uid() == nix::unistd::geteuid().as_raw()
            && meta.mode() & 0o077 == 0
            && meta.len() <= MAX_STATE_BYTES;
        if !ours {
            return None;
        }
        let mut text = String::new();
        file.take(MAX_STATE_BYTES).read_to_string(&mut text).ok()?;
        Record::parse(&text, &self.server, now_ms, self.max)
    }

    /// Writes the record root-only: a fresh file renamed into place.
    fn store(&self, record: &Record) -> std::io::Result<()> {
        if std::fs::symlink_metadata(&self.dir).is_err() {
            // Another cluster's thread may make it at the same moment;
            // whoever made it, it is checked next.
            match std::fs::DirBuilder::new().mode(0o700).create(&self.dir) {
                Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => return Err(e),
                _ => {}
            }
        }
        if !safe_dir(&self.dir) {
            return Err(std::io::Error::other("directory writable by others"));
        }
        // Unique per writer: the clusters of one login store from threads
        // of one process at once (and may share a directory).
        static WRITES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = WRITES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let tmp = self
            .dir
            .join(format!(".outage.{}.{n}.tmp", std::process::id()));
        let _ = std::fs::remove_file(&tmp);
        let mut file = File::options()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(nofollow_nonblock())
            .open(&tmp)?;
        file.write_all(serde_json::to_string(record)?.as_bytes())?;
        drop(file);
        std::fs::rename(&tmp, self.path())
    }
}

use std::os::unix::fs::DirBuilderExt;

fn nofollow_nonblock() -> i32 {
    use nix::fcntl::OFlag;
    (OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC).bits()
}

/// A real directory, ours, that no one else can write to. (It may be
/// readable: the credential broker's socket lives in it too, and the
/// records themselves are 0600.)
fn safe_dir(dir: &Path) -> bool {
    std::fs::symlink_metadata(dir).is_ok_and(|m| {
        m.is_dir() && m.uid() == nix::unistd::geteuid().as_raw() && m.mode() & 0o022 == 0
    })
}

/// Whether a TCP connection to the server's address opens within
/// [`PROBE_TIMEOUT`] (name resolution included, in a thread of its own so a
/// hung resolver cannot hold the run).
fn probe(server: &str) -> bool {
    let Some(addr) = host_port(server) else {
        return true;
    };
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let up = addr
            .to_socket_addrs()
            .ok()
            .and_then(|mut addrs| addrs.next())
            .is_some_and(|a: SocketAddr| TcpStream::connect_timeout(&a, PROBE_TIMEOUT).is_ok());
        let _ = tx.send(up);
    });
    rx.recv_timeout(PROBE_TIMEOUT * 2).unwrap_or(false)
}

/// `host:port` of an http(s) URL, with the scheme's default port.
fn host_port(server: &str) -> Option<String> {
    let uri: http::Uri = server.parse().ok()?;
    let host = uri.host()?;
    let port = uri
        .port_u16()
        .unwrap_or(if uri.scheme_str() == Some("http") {
            80
        } else {
            443
        });
    Some(if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    const MAX: Duration = Duration::from_secs(30);
    const S: &str = "https://127.0.0.1:1";

    #[test]
    fn window_doubles_up_to_the_maximum() {
        let w: Vec<u64> = (1..=5).map(|n| window(n, MAX).as_secs()).collect();
        assert_eq!(w, vec![5, 10, 20, 30, 30]);
        assert_eq!(window(u32::MAX, MAX), MAX);
    }

    #[test]
    fn failures_accumulate_for_the_same_server_only() {
        let r1 = Record::failed(
            None,
            S,
            1000,
            "is unreachable: refused",
            Exit::Unavailable,
            MAX,
        );
        assert_eq!((r1.failures, r1.until_ms), (1, 6000));
        let r2 = Record::failed(Some(r1.clone()), S, 7000, "x", Exit::Unavailable, MAX);
        assert_eq!((r2.failures, r2.since_ms, r2.until_ms), (2, 1000, 17000));
        let other = Record::failed(Some(r2), "https://other", 9000, "x", Exit::TempFail, MAX);
        assert_eq!((other.failures, other.since_ms), (1, 9000));
    }

    #[test]
    fn implausible_records_are_ignored() {
        let r = Record::failed(None, S, 1000, "is unreachable", Exit::Unavailable, MAX);
        let text = serde_json::to_string(&r).unwrap();
        assert_eq!(Record::parse(&text, S, 1500, MAX), Some(r.clone()));
        assert_eq!(Record::parse(&text, "https://other", 1500, MAX), None);
        assert_eq!(Record::parse("{garbage", S, 1500, MAX), None);
        let far = Record {
            until_ms: 10_000_000,
            ..r.clone()
        };
        let text = serde_json::to_string(&far).unwrap();
        assert_eq!(Record::parse(&text, S, 1500, MAX), None);
        let odd_exit = Record {
            exit: 0,
            ..r.clone()
        };
        let text = serde_json::to_string(&odd_exit).unwrap();
        assert_eq!(Record::parse(&text, S, 1500, MAX), None);
        let escape = Record {
            detail: "is unreachable \u{1b}[2J".into(),
            ..r
        };
        let text = serde_json::to_string(&escape).unwrap();
        assert_eq!(Record::parse(&text, S, 1500, MAX), None);
    }

    #[test]
    fn a_long_multibyte_detail_is_read_back() {
        let r = Record::failed(None, S, 1000, &"é".repeat(400), Exit::Unavailable, MAX);
        let text = serde_json::to_string(&r).unwrap();
        assert_eq!(Record::parse(&text, S, 1500, MAX), Some(r));
    }

    #[test]
    fn a_detail_with_control_characters_is_stored_as_one_line() {
        let r = Record::failed(
            None,
            S,
            1000,
            "is\r\nunreachable\u{1b}[2J",
            Exit::Unavailable,
            MAX,
        );
        assert_eq!(r.detail, "is unreachable [2J");
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            /// Whatever the state file holds, a record is read only if it is
            /// plausible, and its message is one line.
            #[test]
            fn state_files_are_plausible_or_ignored(
                server in prop_oneof![Just(S.to_owned()), "[ -~]{0,12}"],
                since in 0u64..3000, until in 0u64..40_000, failures in 0u32..4,
                detail in "(?s).{0,80}", exit in proptest::sample::select(vec![69u8, 75, 0]),
                now in 0u64..3000,
            ) {
                let text = serde_json::json!({"server": server, "since_ms": since, "failures": failures,
                    "until_ms": until, "detail": detail, "exit": exit}).to_string();
                if let Some(r) = Record::parse(&text, S, now, MAX) {
                    prop_assert!(r.server == S && r.since_ms <= now && matches!(r.exit, 69 | 75));
                    let m = r.message("alice", now);
                    prop_assert!(!m.chars().any(char::is_control), "{:?}", m);
                    let next = Record::failed(Some(r), S, now, &detail, Exit::Unavailable, MAX);
                    prop_assert!(next.failures >= 2 && !next.detail.chars().any(char::is_control));
                }
            }
        }
    }

    #[test]
    fn message_names_server_count_and_window() {
        let r = Record::failed(
            None,
            S,
            1000,
            "is unreachable: refused",
            Exit::Unavailable,
            MAX,
        );
        let m = r.message("alice", 1500);
        assert!(m.contains("user alice") && m.contains(S) && m.contains("refused"));
        assert!(m.contains("1 failed run ") && m.contains("for 5s"), "{m}");
    }

    #[test]
    fn host_port_defaults() {
        assert_eq!(
            host_port("https://k8s.example:6443").as_deref(),
            Some("k8s.example:6443")
        );
        assert_eq!(
            host_port("https://k8s.example").as_deref(),
            Some("k8s.example:443")
        );
        assert_eq!(
            host_port("https://[::1]:6443").as_deref(),
            Some("[::1]:6443")
        );
    }

    #[test]
    fn memory_round_trip_and_distrust() {
        let dir = std::env::temp_dir().join(format!("ood-outage-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let m = Memory::new(&dir, S, MAX);
        m.failed(1000, "is unreachable: refused", Exit::Unavailable);
        let mode = std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
        assert_eq!(m.load(1500).map(|r| r.failures), Some(1));
        // Port 1 refuses: inside the window, runs fail at once.
        assert!(m.current(1500).is_some());
        assert!(
            m.current(6500).is_none(),
            "window over: probe with a real run"
        );
        std::fs::set_permissions(m.path(), std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(m.load(1500).is_none(), "readable by others: not trusted");
        std::fs::write(m.path(), "not json").unwrap();
        std::fs::set_permissions(m.path(), std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(m.load(1500).is_none());
        m.recovered();
        assert!(std::fs::symlink_metadata(m.path()).is_err());
        let off = Memory::new(&dir, S, Duration::ZERO);
        off.failed(1000, "x", Exit::Unavailable);
        assert!(off.current(1001).is_none());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// Two clusters' threads of one login remember their outages at the
    /// same moment, many times over: every write succeeds and each file
    /// holds its own server's record (a temp file name shared by the
    /// process's threads let one thread delete or rename the other's).
    #[test]
    fn two_threads_storing_at_once_keep_both_records_intact() {
        let dir = std::env::temp_dir().join(format!("ood-outage-race-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let servers = ["https://127.0.0.1:1", "https://127.0.0.2:1"];
        let barrier = std::sync::Barrier::new(servers.len());
        // Failures are collected, not panicked on: a thread that stopped
        // would leave the other waiting at the barrier.
        let failures: Vec<String> = std::thread::scope(|scope| {
            let threads: Vec<_> = servers
                .iter()
                .map(|&server| {
                    let (dir, barrier) = (&dir, &barrier);
                    scope.spawn(move || {
                        let m = Memory::new(dir, server, MAX);
                        let mut failures = Vec::new();
                        for i in 0..300u64 {
                            let record = Record::failed(
                                None,
                                server,
                                1000 + i,
                                "is unreachable: refused",
                                Exit::Unavailable,
                                MAX,
                            );
                            barrier.wait();
                            let stored = m.store(&record);
                            barrier.wait();
                            match (stored, m.load(1000 + i)) {
                                (Ok(()), Some(r)) if r == record => {}
                                (stored, read) => failures.push(format!(
                                    "{server}, round {i}: {stored:?}, read {read:?}"
                                )),
                            }
                        }
                        failures
                    })
                })
                .collect();
            threads
                .into_iter()
                .flat_map(|t| t.join().unwrap_or_default())
                .collect()
        });
        assert!(
            failures.is_empty(),
            "{} failures: {:?}",
            failures.len(),
            &failures[..failures.len().min(3)]
        );
        let left: Vec<_> = std::fs::read_dir(&dir).unwrap().flatten().collect();
        assert_eq!(left.len(), servers.len(), "no temp file left: {left:?}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
