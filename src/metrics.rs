//! Prometheus metrics in node-exporter's textfile format at `METRICS_FILE`:
//! every run adds to counters kept in the file itself. Many hooks run at
//! once, so each update holds an exclusive lock (a `.lock` file beside it)
//! while it reads the file, adds, and replaces it atomically (a new file
//! renamed over the old): no increment is lost, and node-exporter never
//! reads half a file. A failure to update is reported on stderr and never
//! fails the run, nor holds it: the lock is waited for a bounded time, and
//! the files are not followed through links nor read unless they are
//! small regular files of ours. The broker counts in memory and writes
//! from a thread of its own ([`Background`]).
//!
//! The text is parsed and written by pure functions ([`parse`],
//! [`Metrics::render`]); the families are defined once in [`FAMILIES`].

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, mpsc};
use std::time::{Duration, Instant};

use nix::fcntl::{Flock, FlockArg};

use crate::PROG;
use crate::record::{Command, Record};

/// Upper bounds of the duration histogram's buckets, seconds.
const BUCKETS: [f64; 9] = [0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

/// Every metric family: name, type, help.
pub const FAMILIES: &[(&str, &str, &str)] = &[
    (
        "ood_k8s_bootstrap_runs_total",
        "counter",
        "Runs of the hook, reconcile, reap, heal and root-token, by command and exit status.",
    ),
    (
        "ood_k8s_bootstrap_run_duration_seconds",
        "histogram",
        "How long runs took, by command.",
    ),
    (
        "ood_k8s_bootstrap_objects_total",
        "counter",
        "Kubernetes objects the runs created, changed or deleted, by command and change.",
    ),
    (
        "ood_k8s_bootstrap_last_success_timestamp_seconds",
        "gauge",
        "When a run of the command last succeeded, Unix time.",
    ),
    (
        "ood_k8s_bootstrap_broker_refreshes_total",
        "counter",
        "Token refreshes the credential broker made at the IdP, by result.",
    ),
    (
        "ood_k8s_bootstrap_broker_refusals_total",
        "counter",
        "Requests the credential broker refused.",
    ),
    (
        "ood_k8s_bootstrap_reap_deletions_total",
        "counter",
        "Namespaces reap deleted, by reason.",
    ),
    (
        "ood_k8s_bootstrap_heals_total",
        "counter",
        "Pending cluster sides heal worked on, by outcome (healed, pending: still failing, refused: needs a person).",
    ),
    (
        "ood_k8s_bootstrap_heal_pending_users",
        "gauge",
        "Users whose login left a cluster side pending, after the last heal pass.",
    ),
];

fn is_gauge(name: &str) -> bool {
    FAMILIES
        .iter()
        .any(|(family, kind, _)| *kind == "gauge" && name == *family)
}

/// Samples by (metric name, labels as written).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Metrics {
    samples: BTreeMap<(String, String), f64>,
}

/// Reads the samples of our families from the file's text; anything else
/// (comments, lines of other families, garbage) is dropped.
pub fn parse(text: &str) -> Metrics {
    let mut m = Metrics::default();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let Ok(value) = value.parse::<f64>() else {
            continue;
        };
        let (name, labels) = match series.split_once('{') {
            Some((n, rest)) => match rest.strip_suffix('}') {
                Some(l) => (n, l),
                None => continue,
            },
            None => (series, ""),
        };
        if FAMILIES.iter().any(|(f, _, _)| name.starts_with(f)) && value.is_finite() {
            m.samples
                .insert((name.to_owned(), labels.to_owned()), value);
        }
    }
    m
}

impl Metrics {
    pub fn add(&mut self, name: &str, labels: &str, by: f64) {
        *self
            .samples
            .entry((name.to_owned(), labels.to_owned()))
            .or_insert(0.0) += by;
    }

    pub fn set(&mut self, name: &str, labels: &str, value: f64) {
        self.samples
            .insert((name.to_owned(), labels.to_owned()), value);
    }

    pub fn get(&self, name: &str, labels: &str) -> f64 {
        self.samples
            .get(&(name.to_owned(), labels.to_owned()))
            .copied()
            .unwrap_or(0.0)
    }

    pub fn is_empty(&self) -> bool {
        self.samples.is_empty()
    }

    /// Adds `delta`'s counts to these (its gauges replace theirs).
    pub fn merge(&mut self, delta: &Metrics) {
        for ((name, labels), value) in &delta.samples {
            if is_gauge(name) {
                self.set(name, labels, *value);
            } else {
                self.add(name, labels, *value);
            }
        }
    }

    /// Adds one run described by `record` at Unix time `now`.
    pub fn count(&mut self, r: &Record, now: u64) {
        let cmd = r.command.as_str();
        match r.command {
            Command::BrokerRefresh => {
                let result = if r.exit == 0 { "ok" } else { "failed" };
                self.add(
                    "ood_k8s_bootstrap_broker_refreshes_total",
                    &format!("result=\"{result}\""),
                    1.0,
                );
                return;
            }
            Command::BrokerRefusal => {
                self.add("ood_k8s_bootstrap_broker_refusals_total", "", 1.0);
                return;
            }
            _ => {}
        }
        self.add(
            "ood_k8s_bootstrap_runs_total",
            &format!("command=\"{cmd}\",exit=\"{}\"", r.exit),
            1.0,
        );
        let secs = r.duration_ms as f64 / 1000.0;
        let h = "ood_k8s_bootstrap_run_duration_seconds";
        // Every bucket is written (0 too), so the histogram is complete.
        for le in BUCKETS {
            let within = if secs <= le { 1.0 } else { 0.0 };
            self.add(
                &format!("{h}_bucket"),
                &format!("command=\"{cmd}\",le=\"{le}\""),
                within,
            );
        }
        self.add(
            &format!("{h}_bucket"),
            &format!("command=\"{cmd}\",le=\"+Inf\""),
            1.0,
        );
        self.add(&format!("{h}_sum"), &format!("command=\"{cmd}\""), secs);
        self.add(&format!("{h}_count"), &format!("command=\"{cmd}\""), 1.0);
        for (change, n) in [
            ("created", r.counts.created),
            ("changed", r.counts.changed),
            ("deleted", r.counts.deleted),
        ] {
            self.add(
                "ood_k8s_bootstrap_objects_total",
                &format!("command=\"{cmd}\",change=\"{change}\""),
                n as f64,
            );
        }
        if r.exit == 0 {
            self.set(
                "ood_k8s_bootstrap_last_success_timestamp_seconds",
                &format!("command=\"{cmd}\""),
                now as f64,
            );
        }
        if r.command == Command::Heal {
            for (k, v) in &r.extra {
                let n: f64 = v.parse().unwrap_or(0.0);
                if let Some(outcome) = k.strip_prefix("heals_") {
                    self.add(
                        "ood_k8s_bootstrap_heals_total",
                        &format!("outcome=\"{outcome}\""),
                        n,
                    );
                } else if *k == "pending_users" {
                    self.set("ood_k8s_bootstrap_heal_pending_users", "", n);
                }
            }
        }
        if r.command == Command::Reap {
            for (k, v) in &r.extra {
                if let Some(reason) = k.strip_prefix("deleted_") {
                    let n: f64 = v.parse().unwrap_or(0.0);
                    self.add(
                        "ood_k8s_bootstrap_reap_deletions_total",
                        &format!("reason=\"{reason}\""),
                        n,
                    );
                }
            }
        }
    }

    /// The textfile: each family's HELP and TYPE, then its samples.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for (family, kind, help) in FAMILIES {
            let samples: Vec<_> = self
                .samples
                .iter()
                .filter(|((n, _), _)| {
                    n == family || (*kind == "histogram" && n.starts_with(&format!("{family}_")))
                })
                .collect();
            if samples.is_empty() {
                continue;
            }
            out.push_str(&format!("# HELP {family} {help}\n# TYPE {family} {kind}\n"));
            for ((name, labels), value) in samples {
                if labels.is_empty() {
                    out.push_str(&format!("{name} {value}\n"));
                } else {
                    out.push_str(&format!("{name}{{{labels}}} {value}\n"));
                }
            }
        }
        out
    }
}

/// Longest metrics file read: ours is a few kB, a bigger one is not ours.
const MAX_FILE: u64 = 1 << 20;
/// How long an update waits for another's lock while no other update
/// finishes meanwhile: a holder making no progress is not waited for.
const LOCK_STALL: Duration = Duration::from_secs(1);
/// How long an update waits for the lock at most, however busy the file.
const LOCK_MOST: Duration = Duration::from_secs(3);
/// How often a waiting update tries the lock again.
const LOCK_POLL: Duration = Duration::from_millis(5);

/// Adds `record` to the metrics file at `path`; problems go to stderr
/// (one line) and never hold the run longer than [`LOCK_MOST`].
pub fn count_run(path: &Path, record: &Record) {
    let now = crate::clock::unix_now();
    if let Err(e) = update(path, |m| m.count(record, now)) {
        warn(path, &e, "this run is not counted");
    }
}

fn warn(path: &Path, e: &std::io::Error, lost: &str) {
    eprintln!(
        "{PROG}: warning: METRICS_FILE {}: {e}; {lost}",
        path.display()
    );
}

/// Locked read-modify-replace of the metrics file. Neither file is
/// followed through a link, nor read unless it is a regular file of
/// root's (or ours) of at most [`MAX_FILE`] bytes, and the lock is waited
/// for a bounded time: whoever owns the directory (node-exporter's
/// account) cannot make an update hang, read a device, or lock us out for
/// long.
fn update(path: &Path, change: impl FnOnce(&mut Metrics)) -> std::io::Result<()> {
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| std::io::Error::other("not a file path"))?;
    let dir = path.parent().unwrap_or(Path::new("/"));
    let lock_name = format!(".{name}.lock");
    let lock = open_checked(&dir.join(&lock_name), true)
        .map_err(|e| std::io::Error::new(e.kind(), format!("its lock file {lock_name}: {e}")))?;
    let _held = lock_within(lock, path)?;
    let mut metrics = match open_checked(path, false) {
        Ok(file) => parse(&read_capped(file)?),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Metrics::default(),
        Err(e) => return Err(e),
    };
    change(&mut metrics);
    // node-exporter reads it as another user.
    crate::replace::replace_file(path, metrics.render().as_bytes(), 0o644, true)
}

/// Opens `path` (the lock file: `create`d, for writing) without following
/// a link or blocking on a FIFO, and keeps it only when it is a regular
/// file owned by root or us, of at most [`MAX_FILE`] bytes.
fn open_checked(path: &Path, create: bool) -> std::io::Result<File> {
    use std::os::unix::fs::MetadataExt;
    let mut options = std::fs::OpenOptions::new();
    if create {
        options.create(true).truncate(false).write(true).mode(0o600);
    } else {
        options.read(true);
    }
    let file = options
        .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_NONBLOCK | nix::libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| match e.raw_os_error() {
            Some(nix::libc::ELOOP) => std::io::Error::other("a symbolic link, not followed"),
            Some(nix::libc::ENXIO) => std::io::Error::other("a FIFO or socket, not a regular file"),
            _ => e,
        })?;
    let meta = file.metadata()?;
    let me = nix::unistd::geteuid().as_raw();
    let problem = if !meta.is_file() {
        "not a regular file (a FIFO, device or directory)".to_owned()
    } else if meta.uid() != 0 && meta.uid() != me {
        format!("owned by uid {}, not by root", meta.uid())
    } else if meta.len() > MAX_FILE {
        format!(
            "{} bytes, more than a metrics file of ours ({MAX_FILE})",
            meta.len()
        )
    } else {
        return Ok(file);
    };
    Err(std::io::Error::other(problem))
}

/// The file's text, refused past [`MAX_FILE`] (it may grow after the
/// check).
fn read_capped(file: File) -> std::io::Result<String> {
    let mut text = String::new();
    file.take(MAX_FILE + 1).read_to_string(&mut text)?;
    if text.len() as u64 > MAX_FILE {
        return Err(std::io::Error::other(format!(
            "more than a metrics file of ours ({MAX_FILE} bytes)"
        )));
    }
    Ok(text)
}

/// Takes the exclusive lock on `lock`, waiting while other updates of
/// `path` go on (each replaces the file), but not past [`LOCK_STALL`]
/// without one, nor past [`LOCK_MOST`] in all.
fn lock_within(lock: File, path: &Path) -> std::io::Result<Flock<File>> {
    let started = Instant::now();
    let (mut seen, mut progressed) = (replaced(path), started);
    let mut lock = lock;
    loop {
        match Flock::lock(lock, FlockArg::LockExclusiveNonblock) {
            Ok(held) => return Ok(held),
            Err((file, nix::errno::Errno::EWOULDBLOCK)) => lock = file,
            Err((_, e)) => return Err(e.into()),
        }
        let now = Instant::now();
        let id = replaced(path);
        if id != seen {
            (seen, progressed) = (id, now);
        }
        if now - progressed >= LOCK_STALL || now - started >= LOCK_MOST {
            return Err(std::io::Error::other(format!(
                "another process held its lock for {:.1} s",
                (now - started).as_secs_f64()
            )));
        }
        std::thread::sleep(LOCK_POLL);
    }
}

/// Which version of the file is there (each update renames a new one over
/// it), to tell a busy lock from a stuck one.
fn replaced(path: &Path) -> Option<(u64, i64, i64)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::symlink_metadata(path)
        .ok()
        .map(|m| (m.ino(), m.ctime(), m.ctime_nsec()))
}

/// The metrics of a long-running process (the broker): each count is
/// added in memory at once, and a thread of its own writes them to the
/// file in batches. No request waits for the file, a slow or hostile file
/// holds no thread a request needs, and a count the file could not take
/// is kept for the next write — every one reaches the file once it works,
/// and what is pending is written at [`Background::stop`].
pub struct Background {
    shared: Arc<Shared>,
    done: Mutex<mpsc::Receiver<()>>,
}

#[derive(Default)]
struct Shared {
    queue: Mutex<Queue>,
    wake: Condvar,
}

#[derive(Default)]
struct Queue {
    pending: Metrics,
    stop: bool,
}

/// A failed write is tried again this long after (or at stop).
const RETRY: Duration = Duration::from_secs(5);
/// At most one warning about a failing file this often.
const WARN_EVERY: Duration = Duration::from_secs(60);

impl Background {
    /// Starts the writer of `path`.
    pub fn start(path: PathBuf) -> std::io::Result<Self> {
        let shared = Arc::new(Shared::default());
        let (tx, done) = mpsc::channel();
        let theirs = shared.clone();
        std::thread::Builder::new()
            .name("metrics".into())
            .spawn(move || {
                write_loop(&path, &theirs);
                let _ = tx.send(());
            })?;
        Ok(Self {
            shared,
            done: Mutex::new(done),
        })
    }

    /// Counts `record` (written soon, by the writer).
    pub fn add(&self, record: &Record) {
        let now = crate::clock::unix_now();
        if let Ok(mut q) = self.shared.queue.lock() {
            q.pending.count(record, now);
        }
        self.shared.wake.notify_one();
    }

    /// Writes what is pending and ends the writer, waiting for it at most
    /// `within`; false if it did not end in time.
    pub fn stop(&self, within: Duration) -> bool {
        if let Ok(mut q) = self.shared.queue.lock() {
            q.stop = true;
        }
        self.shared.wake.notify_one();
        self.done
            .lock()
            .is_ok_and(|done| done.recv_timeout(within).is_ok())
    }
}

/// The writer: waits for counts, writes them; on failure keeps them for
/// the next try ([`RETRY`] later), warning at most every [`WARN_EVERY`].
fn write_loop(path: &Path, shared: &Shared) {
    let mut warned: Option<Instant> = None;
    loop {
        let Some((batch, stop)) = next_batch(shared) else {
            return;
        };
        if batch.is_empty() {
            return; // stopped, nothing pending
        }
        let Err(e) = update(path, |m| m.merge(&batch)) else {
            if stop {
                return;
            }
            continue;
        };
        if stop {
            return warn(path, &e, "counts since the last write are lost at shutdown");
        }
        if warned.is_none_or(|at| at.elapsed() >= WARN_EVERY) {
            warn(path, &e, "counts are kept in memory and tried again");
            warned = Some(Instant::now());
        }
        if !keep_and_wait(shared, batch) {
            return;
        }
    }
}

/// The pending counts once there are some (or at stop), and whether to
/// stop after writing them; None if the queue's lock is poisoned.
fn next_batch(shared: &Shared) -> Option<(Metrics, bool)> {
    let queue = shared.queue.lock().ok()?;
    let mut queue = shared
        .wake
        .wait_while(queue, |q| q.pending.is_empty() && !q.stop)
        .ok()?;
    Some((std::mem::take(&mut queue.pending), queue.stop))
}

/// Puts an unwritten `batch` back before what came after it, and waits
/// [`RETRY`] or until stop; false if the queue's lock is poisoned.
fn keep_and_wait(shared: &Shared, batch: Metrics) -> bool {
    let Ok(mut queue) = shared.queue.lock() else {
        return false;
    };
    let newer = std::mem::replace(&mut queue.pending, batch);
    queue.pending.merge(&newer);
    shared
        .wake
        .wait_timeout_while(queue, RETRY, |q| !q.stop)
        .is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::Counts;

    fn run(command: Command, exit: u8, ms: u64) -> Record {
        let mut r = Record::new(command);
        r.exit = exit;
        r.duration_ms = ms;
        r.counts = Counts {
            created: 2,
            changed: 1,
            unchanged: 3,
            deleted: 0,
        };
        r
    }

    #[test]
    fn counts_round_trip_through_the_text() {
        let mut m = Metrics::default();
        m.count(&run(Command::Hook, 0, 30), 1000);
        m.count(&run(Command::Hook, 69, 3000), 1001);
        let text = m.render();
        let back = parse(&text);
        assert_eq!(back, m);
        let runs = "ood_k8s_bootstrap_runs_total";
        assert_eq!(back.get(runs, "command=\"hook\",exit=\"0\""), 1.0);
        assert_eq!(back.get(runs, "command=\"hook\",exit=\"69\""), 1.0);
        let b = "ood_k8s_bootstrap_run_duration_seconds_bucket";
        assert_eq!(back.get(b, "command=\"hook\",le=\"0.05\""), 1.0);
        assert_eq!(back.get(b, "command=\"hook\",le=\"5\""), 2.0);
        assert_eq!(back.get(b, "command=\"hook\",le=\"+Inf\""), 2.0);
        assert_eq!(
            back.get(
                "ood_k8s_bootstrap_last_success_timestamp_seconds",
                "command=\"hook\""
            ),
            1000.0
        );
        assert_eq!(
            back.get(
                "ood_k8s_bootstrap_objects_total",
                "command=\"hook\",change=\"created\""
            ),
            4.0
        );
        assert!(text.contains("# TYPE ood_k8s_bootstrap_run_duration_seconds histogram\n"));
        assert!(
            text.contains(
                "ood_k8s_bootstrap_run_duration_seconds_bucket{command=\"hook\",le=\"0.025\"} 0\n"
            ),
            "{text}"
        );
    }

    #[test]
    fn broker_and_reap_counters() {
        let mut m = Metrics::default();
        m.count(&run(Command::BrokerRefresh, 0, 1), 1);
        m.count(&run(Command::BrokerRefusal, 1, 1), 1);
        let mut reap = run(Command::Reap, 0, 1);
        reap.extra = vec![
            ("deleted_idle", "2".into()),
            ("deleted_departed", "1".into()),
        ];
        m.count(&reap, 1);
        assert_eq!(
            m.get("ood_k8s_bootstrap_broker_refreshes_total", "result=\"ok\""),
            1.0
        );
        assert_eq!(m.get("ood_k8s_bootstrap_broker_refusals_total", ""), 1.0);
        assert_eq!(
            m.get("ood_k8s_bootstrap_reap_deletions_total", "reason=\"idle\""),
            2.0
        );
        assert_eq!(
            m.get(
                "ood_k8s_bootstrap_runs_total",
                "command=\"broker-refresh\",exit=\"0\""
            ),
            0.0
        );
    }

    fn scratch(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("ood-metrics-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn refusals(path: &Path) -> f64 {
        parse(&std::fs::read_to_string(path).unwrap())
            .get("ood_k8s_bootstrap_broker_refusals_total", "")
    }

    /// Issue 25 (3): a FIFO, a link or an oversized file at METRICS_FILE
    /// is refused at once (never read, never followed, never replaced).
    #[test]
    fn a_fifo_a_link_or_a_huge_file_is_refused_at_once() {
        let d = scratch("refuse");
        let fifo = d.join("fifo.prom");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let target = d.join("target");
        std::fs::write(&target, "kept\n").unwrap();
        let link = d.join("link.prom");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        let huge = d.join("huge.prom");
        std::fs::write(&huge, vec![b'#'; MAX_FILE as usize + 1]).unwrap();
        let t = Instant::now();
        for (path, why) in [
            (&fifo, "not a regular file"),
            (&link, "a symbolic link, not followed"),
            (&huge, "more than a metrics file of ours"),
        ] {
            let e =
                update(path, |m| m.add("ood_k8s_bootstrap_runs_total", "", 1.0)).expect_err(why);
            assert!(e.to_string().contains(why), "{}: {e}", path.display());
        }
        assert!(t.elapsed() < Duration::from_secs(30));
        assert!(
            std::fs::symlink_metadata(&link)
                .unwrap()
                .file_type()
                .is_symlink()
        );
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "kept\n");
    }

    /// Issue 25 (3): a lock nobody releases is waited for about
    /// [`LOCK_STALL`], not forever; one released in time is taken.
    #[test]
    fn a_lock_held_forever_is_given_up_on() {
        let d = scratch("lock");
        let path = d.join("ood.prom");
        let lock = open_checked(&d.join(".ood.prom.lock"), true).unwrap();
        let held = Flock::lock(lock, FlockArg::LockExclusive).unwrap();
        let t = Instant::now();
        let e = update(&path, |_| {}).expect_err("locked");
        assert!(e.to_string().contains("held its lock"), "{e}");
        assert!(t.elapsed() >= LOCK_STALL && t.elapsed() < LOCK_MOST + Duration::from_secs(30));
        let releaser = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(200));
            drop(held);
        });
        update(&path, |m| {
            m.add("ood_k8s_bootstrap_broker_refusals_total", "", 1.0)
        })
        .unwrap();
        releaser.join().unwrap();
        assert_eq!(refusals(&path), 1.0);
    }

    /// Issue 25 (9): every count given to the writer reaches the file,
    /// what is pending at stop too; counts the file could not take are
    /// kept until it can.
    #[test]
    fn the_background_writer_loses_no_count() {
        let d = scratch("background");
        let path = d.join("ood.prom");
        let w = Background::start(path.clone()).unwrap();
        let refusal = run(Command::BrokerRefusal, 1, 0);
        for _ in 0..7 {
            w.add(&refusal);
        }
        assert!(w.stop(Duration::from_secs(30)));
        assert_eq!(refusals(&path), 7.0);

        // A FIFO in its place: the counts wait in memory; once the file
        // is back, all of them are written (at stop at the latest).
        std::fs::remove_file(&path).unwrap();
        nix::unistd::mkfifo(&path, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let w = Background::start(path.clone()).unwrap();
        for _ in 0..3 {
            w.add(&refusal);
        }
        std::thread::sleep(Duration::from_millis(300));
        std::fs::remove_file(&path).unwrap();
        w.add(&refusal);
        assert!(w.stop(Duration::from_secs(30)));
        assert_eq!(refusals(&path), 4.0);
    }

    #[test]
    fn merge_adds_counters_and_takes_gauges() {
        let mut file = Metrics::default();
        file.count(&run(Command::Hook, 0, 30), 1000);
        let mut delta = Metrics::default();
        delta.count(&run(Command::Hook, 0, 30), 2000);
        file.merge(&delta);
        assert_eq!(
            file.get(
                "ood_k8s_bootstrap_runs_total",
                "command=\"hook\",exit=\"0\""
            ),
            2.0
        );
        assert_eq!(
            file.get(
                "ood_k8s_bootstrap_last_success_timestamp_seconds",
                "command=\"hook\""
            ),
            2000.0
        );
    }

    #[test]
    fn garbage_and_other_families_are_dropped() {
        let m = parse(
            "# junk\nnode_load1 3\nood_k8s_bootstrap_runs_total{command=\"hook\",exit=\"0\"} NaN\nood_k8s_bootstrap_runs_total{broken 1\n",
        );
        assert_eq!(m, Metrics::default());
    }
}
