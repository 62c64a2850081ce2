//! A record of every run: nginx_stage throws a successful hook's output
//! away, so each run of the hook, `reconcile`, `reap` and `root-token`, and
//! each broker refresh or refusal, leaves one structured record in the
//! system log (and, with `METRICS_FILE`, in the metrics; for the hook, in
//! the user's last-run file that `doctor --user` shows).
//!
//! Formatting is pure ([`Record::rfc5424`], [`Record::journal`]); sending
//! is one non-blocking datagram whose failure is ignored: a missing or full
//! log socket never fails or slows a login. A record holds names, counts,
//! times and the error line — never a token or secret.

use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};

use crate::cluster::apply::{Applied, Change};
use crate::site::names::Username;
use crate::site::settings::{LogTarget, Settings};

/// The syslog identifier (`journalctl -t ood-k8s-bootstrap`).
pub const IDENTIFIER: &str = crate::PROG;

/// RFC 5424 structured-data id (`name@PEN`; 32473 is the number RFC 5612
/// reserves for documentation and examples).
const SD_ID: &str = "run@32473";

/// What ran.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Hook,
    Reconcile,
    Reap,
    RootToken,
    BrokerRefresh,
    BrokerRefusal,
    Heal,
}

impl Command {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Hook => "hook",
            Self::Reconcile => "reconcile",
            Self::Reap => "reap",
            Self::RootToken => "root-token",
            Self::BrokerRefresh => "broker-refresh",
            Self::BrokerRefusal => "broker-refusal",
            Self::Heal => "heal",
        }
    }
}

/// Objects by what happened to them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub created: usize,
    pub changed: usize,
    pub unchanged: usize,
    pub deleted: usize,
}

impl Counts {
    pub fn of(applied: &[Applied]) -> Self {
        let n = |c| applied.iter().filter(|a| a.change == c).count();
        Self {
            created: n(Change::Created),
            changed: n(Change::Changed),
            unchanged: n(Change::Unchanged),
            deleted: n(Change::Deleted),
        }
    }

    pub fn add(&mut self, other: Counts) {
        self.created += other.created;
        self.changed += other.changed;
        self.unchanged += other.unchanged;
        self.deleted += other.deleted;
    }
}

/// Where records go, from hook.env (defaults without one).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sink {
    pub target: LogTarget,
    pub socket: PathBuf,
    pub metrics: Option<PathBuf>,
    /// `LAST_RUN_DIR`: each user's last hook run.
    pub last_run: Option<PathBuf>,
}

impl Sink {
    pub fn of(settings: Option<&Settings>) -> Self {
        match settings {
            Some(s) => Self {
                target: s.log.target,
                socket: s.log.socket.clone(),
                metrics: s.log.metrics_file.clone(),
                last_run: s.log.last_run_dir.clone(),
            },
            None => Self {
                target: LogTarget::Syslog,
                socket: PathBuf::from(crate::site::settings::DEFAULT_SYSLOG_SOCKET),
                metrics: None,
                last_run: None,
            },
        }
    }
}

/// One record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub command: Command,
    pub user: Option<String>,
    pub namespace: Option<String>,
    /// The API server's URL.
    pub cluster: Option<String>,
    pub counts: Counts,
    /// `K8S_CREDENTIALS`.
    pub mode: Option<String>,
    pub duration_ms: u64,
    pub exit: u8,
    /// The error line, on failure.
    pub error: Option<String>,
    /// Anything else worth a field (`reap`: reason; broker: uid).
    pub extra: Vec<(&'static str, String)>,
}

impl Record {
    pub fn new(command: Command) -> Self {
        Self {
            command,
            user: None,
            namespace: None,
            cluster: None,
            counts: Counts::default(),
            mode: None,
            duration_ms: 0,
            exit: 0,
            error: None,
            extra: Vec::new(),
        }
    }

    /// The fields, in order, as (name, value); absent ones left out.
    pub fn fields(&self) -> Vec<(&'static str, String)> {
        let mut f = vec![("command", self.command.as_str().to_owned())];
        let opt = |f: &mut Vec<_>, k, v: &Option<String>| {
            if let Some(v) = v {
                f.push((k, v.clone()));
            }
        };
        opt(&mut f, "user", &self.user);
        opt(&mut f, "namespace", &self.namespace);
        opt(&mut f, "cluster", &self.cluster);
        let c = self.counts;
        for (k, v) in [
            ("created", c.created),
            ("changed", c.changed),
            ("unchanged", c.unchanged),
            ("deleted", c.deleted),
        ] {
            f.push((k, v.to_string()));
        }
        opt(&mut f, "mode", &self.mode);
        f.push(("duration_ms", self.duration_ms.to_string()));
        f.push(("exit", self.exit.to_string()));
        opt(&mut f, "error", &self.error);
        f.extend(self.extra.iter().cloned());
        f
    }

    /// The human part: the error line, or what happened.
    pub fn message(&self) -> String {
        if let Some(e) = &self.error {
            return format!("{}: exit {}: {e}", self.command.as_str(), self.exit);
        }
        let c = self.counts;
        let who = self
            .user
            .as_deref()
            .map(|u| format!(" {u}"))
            .unwrap_or_default();
        format!(
            "{}{who}: {} created, {} changed, {} unchanged, {} deleted ({} ms)",
            self.command.as_str(),
            c.created,
            c.changed,
            c.unchanged,
            c.deleted,
            self.duration_ms
        )
    }

    /// Severity: info, or err on failure (RFC 5424 numbers).
    fn severity(&self) -> u8 {
        if self.exit == 0 { 6 } else { 3 }
    }

    /// An RFC 5424 message (facility authpriv: logins), `time` in RFC 3339.
    pub fn rfc5424(&self, time: &str, host: &str, pid: u32) -> String {
        let pri = 10 * 8 + self.severity();
        let params: String = self
            .fields()
            .iter()
            .map(|(k, v)| format!(" {k}=\"{}\"", sd_escape(v)))
            .collect();
        format!(
            "<{pri}>1 {time} {host} {IDENTIFIER} {pid} - [{SD_ID}{params}] {}",
            one_line(&self.message())
        )
    }

    /// A datagram of journald's native protocol: `KEY=value` lines, each
    /// field as `OOD_<NAME>`, so `journalctl -t ood-k8s-bootstrap
    /// OOD_USER=alice` finds a user's runs.
    pub fn journal(&self) -> Vec<u8> {
        let mut out = format!(
            "SYSLOG_IDENTIFIER={IDENTIFIER}\nPRIORITY={}\nSYSLOG_FACILITY=10\nMESSAGE={}\n",
            self.severity(),
            one_line(&self.message())
        );
        for (k, v) in self.fields() {
            out.push_str(&format!("OOD_{}={}\n", k.to_uppercase(), one_line(&v)));
        }
        out.into_bytes()
    }

    /// Sends the record where `sink` says, without blocking; failures are
    /// ignored (the run's outcome is already decided and printed).
    pub fn send(&self, sink: &Sink) {
        match sink.target {
            LogTarget::None => {}
            LogTarget::Stderr => eprintln!("{IDENTIFIER}: record: {}", self.logfmt()),
            LogTarget::Syslog => {
                let (socket, bytes) = match journald_socket(&sink.socket) {
                    Some(journal) => (journal, self.journal()),
                    None => (
                        sink.socket.clone(),
                        self.rfc5424(&now_rfc3339(), &hostname(), std::process::id())
                            .into_bytes(),
                    ),
                };
                let _ = send_datagram(&socket, &bytes);
            }
        }
    }

    /// `key="value" …`, for stderr.
    pub fn logfmt(&self) -> String {
        self.fields()
            .iter()
            .map(|(k, v)| format!("{k}=\"{}\"", sd_escape(&one_line(v))))
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// RFC 5424 PARAM-VALUE escaping: `"`, `\` and `]`.
fn sd_escape(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for ch in one_line(v).chars() {
        if matches!(ch, '"' | '\\' | ']') {
            out.push('\\');
        }
        out.push(ch);
    }
    out
}

fn one_line(v: &str) -> String {
    v.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

/// Where journald owns the syslog socket (`/dev/log` a link to
/// `…/journal/dev-log`), its native socket beside it: journald does not
/// parse RFC 5424, and its own protocol keeps every field.
fn journald_socket(syslog: &Path) -> Option<PathBuf> {
    let target = std::fs::read_link(syslog).ok()?;
    let target = if target.is_absolute() {
        target
    } else {
        syslog.parent()?.join(target)
    };
    if target.file_name()? != "dev-log" {
        return None;
    }
    let native = target.parent()?.join("socket");
    std::fs::symlink_metadata(&native).ok().map(|_| native)
}

fn send_datagram(socket: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let s = UnixDatagram::unbound()?;
    s.set_nonblocking(true)?;
    s.send_to(bytes, socket).map(|_| ())
}

fn hostname() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .filter(|h| !h.is_empty() && h.is_ascii() && !h.contains(' '))
        .unwrap_or_else(|| "-".into())
}

fn now_rfc3339() -> String {
    crate::clock::rfc3339(crate::clock::unix_now())
}

/// `DIR/NAME`, the last-run file of login `name`, only when `name` is one
/// plain path component (no `/`, not `.` or `..`, no leading dot): what
/// [`Username`] guarantees, checked again here, where a name becomes a
/// path root writes.
fn last_run_path(dir: &Path, name: &str) -> std::io::Result<PathBuf> {
    let mut parts = Path::new(name).components();
    let plain = matches!(
        (parts.next(), parts.next()),
        (Some(std::path::Component::Normal(n)), None) if n == name
    );
    if !plain || name.starts_with('.') || name.contains('/') {
        return Err(std::io::Error::other(format!(
            "{name:?} is not a plain file name; no last-run file kept for it"
        )));
    }
    Ok(dir.join(name))
}

/// What a login left to `heal`: the clusters it worked on, and those of
/// them whose cluster side is still to be made (`pending.rs`).
#[derive(Debug, Clone, Default)]
pub struct Outcome {
    pub covered: Vec<String>,
    pub pending: Vec<crate::pending::Side>,
}

/// Keeps `record` as `user`'s last run: `DIR/USER`, root-only, replaced
/// atomically, and (with `outcome`) the user's pending note updated to
/// match, both under the directory's lock. Only a validated login reaches
/// here, and its name is checked once more to be a single plain file name.
pub fn save_last(
    dir: &Path,
    user: &Username,
    record: &Record,
    outcome: Option<&Outcome>,
) -> std::io::Result<()> {
    let path = last_run_path(dir, user.as_str())?;
    crate::pending::own_dir(dir)?;
    let line = format!("time=\"{}\" {}\n", now_rfc3339(), record.logfmt());
    let notes = crate::pending::Notes::new(dir);
    notes.locked(|| {
        // Not synced: a record lost in a crash costs nothing, a login's
        // fsync would cost every login.
        crate::replace::replace_file(&path, line.as_bytes(), 0o600, false)?;
        let Some(outcome) = outcome else {
            return Ok(());
        };
        // A corrupt note is replaced by what this login knows.
        let note = notes.load(user).unwrap_or_default();
        let merged = note
            .clone()
            .merged(&outcome.covered, outcome.pending.clone());
        if merged != note {
            notes.store(user, &merged)?;
        }
        Ok(())
    })
}

/// The most lines a last-run file keeps: the login's record, then what
/// `heal` did since.
const MAX_LAST_LINES: usize = 20;

/// Adds `record` (a heal's) below `user`'s last run, keeping the login's
/// line and the newest others. Call inside `Notes::locked`.
pub fn append_last(dir: &Path, user: &Username, record: &Record) -> std::io::Result<()> {
    let path = last_run_path(dir, user.as_str())?;
    let old = read_last_text(&path)?.unwrap_or_default();
    let mut lines: Vec<&str> = old.lines().filter(|l| !l.trim().is_empty()).collect();
    if lines.len() >= MAX_LAST_LINES {
        let cut = lines.len() + 1 - MAX_LAST_LINES;
        lines.drain(1..=cut);
    }
    let new = format!("time=\"{}\" {}", now_rfc3339(), record.logfmt());
    lines.push(&new);
    crate::replace::replace_file(
        &path,
        format!("{}\n", lines.join("\n")).as_bytes(),
        0o600,
        false,
    )
}

/// `user`'s last hook run (and what heal did since), as kept in `dir`
/// (for `doctor --user`): one line per record.
pub fn read_last(dir: &Path, user: &str) -> Result<Option<String>, String> {
    let path = last_run_path(dir, user).map_err(|e| e.to_string())?;
    let text = read_last_text(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(text.map(|t| {
        t.lines()
            .map(one_line)
            .filter(|l| !l.trim().is_empty())
            .collect::<Vec<_>>()
            .join("\n")
    }))
}

/// A last-run file's text (none when there is none), not followed through
/// a link, at most 64 KiB.
fn read_last_text(path: &Path) -> std::io::Result<Option<String>> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_NONBLOCK | nix::libc::O_CLOEXEC)
        .open(path);
    let file = match file {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    if !file.metadata()?.is_file() {
        return Err(std::io::Error::other("not a regular file"));
    }
    let mut text = String::new();
    file.take(64 * 1024).read_to_string(&mut text)?;
    Ok(Some(text))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> Record {
        Record {
            command: Command::Hook,
            user: Some("alice".into()),
            namespace: Some("ood-alice".into()),
            cluster: Some("https://k8s:6443".into()),
            counts: Counts {
                created: 1,
                changed: 0,
                unchanged: 5,
                deleted: 0,
            },
            mode: Some("token".into()),
            duration_ms: 26,
            exit: 0,
            error: None,
            extra: vec![],
        }
    }

    #[test]
    fn rfc5424_has_every_field_escaped() {
        let mut r = record();
        r.exit = 69;
        r.error = Some("the \"server\" [x] is \\ down\nsecond line".into());
        let m = r.rfc5424("2026-12-06T07:00:00.000Z", "web1", 42);
        assert!(m.starts_with("<83>1 2026-12-06T07:00:00.000Z web1 ood-k8s-bootstrap 42 - [run@32473 command=\"hook\" user=\"alice\" namespace=\"ood-alice\""), "{m}");
        assert!(m.contains(" created=\"1\" changed=\"0\" unchanged=\"5\" deleted=\"0\" mode=\"token\" duration_ms=\"26\" exit=\"69\""), "{m}");
        assert!(
            m.contains(r#"error="the \"server\" [x\] is \\ down second line"]"#),
            "{m}"
        );
        assert!(!m.contains('\n'));
        assert!(record().rfc5424("t", "h", 1).starts_with("<86>1 "));
    }

    #[test]
    fn journal_fields_are_one_per_line() {
        let j = String::from_utf8(record().journal()).unwrap();
        assert!(
            j.starts_with("SYSLOG_IDENTIFIER=ood-k8s-bootstrap\nPRIORITY=6\n"),
            "{j}"
        );
        assert!(
            j.contains("\nOOD_USER=alice\n") && j.contains("\nOOD_EXIT=0\n"),
            "{j}"
        );
        assert!(
            j.contains(
                "MESSAGE=hook alice: 1 created, 0 changed, 5 unchanged, 0 deleted (26 ms)\n"
            ),
            "{j}"
        );
    }

    /// Issue 25 (1): a name that is not one plain file name never
    /// becomes a path beside or outside the directory.
    #[test]
    fn last_run_path_takes_only_a_plain_file_name() {
        let dir = Path::new("/var/lib/ood/last-run");
        assert_eq!(last_run_path(dir, "alice").unwrap(), dir.join("alice"));
        assert!(last_run_path(dir, "carol.smith@ad").is_ok());
        for bad in [
            "",
            ".",
            "..",
            "../x",
            "/abs/path",
            "a/b",
            "a/",
            ".hidden",
            "./a",
        ] {
            let e = last_run_path(dir, bad).expect_err(bad);
            assert!(
                e.to_string().contains("not a plain file name"),
                "{bad}: {e}"
            );
        }
    }

    #[test]
    fn counts_of_applied_objects() {
        let a = |change| Applied {
            object: "x".into(),
            change,
        };
        let c = Counts::of(&[
            a(Change::Created),
            a(Change::Unchanged),
            a(Change::Unchanged),
        ]);
        assert_eq!((c.created, c.unchanged, c.changed, c.deleted), (1, 2, 0, 0));
    }
}
