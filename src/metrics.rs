//! Prometheus metrics in node-exporter's textfile format at `METRICS_FILE`:
//! every run adds to counters kept in the file itself. Many hooks run at
//! once, so each update holds an exclusive lock (a `.lock` file beside it)
//! while it reads the file, adds, and replaces it atomically (a new file
//! renamed over the old): no increment is lost, and node-exporter never
//! reads half a file. A failure to update is reported on stderr and never
//! fails the run.
//!
//! The text is parsed and written by pure functions ([`parse`],
//! [`Metrics::render`]); the families are defined once in [`FAMILIES`].

use std::collections::BTreeMap;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use crate::PROG;
use crate::record::{Command, Record};

/// Upper bounds of the duration histogram's buckets, seconds.
const BUCKETS: [f64; 9] = [0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

/// Every metric family: name, type, help.
pub const FAMILIES: &[(&str, &str, &str)] = &[
    (
        "ood_k8s_bootstrap_runs_total",
        "counter",
        "Runs of the hook, reconcile, reap and root-token, by command and exit status.",
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
];

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

/// Adds `record` to the metrics file at `path`; problems go to stderr.
pub fn count_run(path: &Path, record: &Record) {
    count_times(path, record, 1);
}

/// Adds `record` `times` times (refusals the log rate limit folded into
/// one record).
pub fn count_times(path: &Path, record: &Record, times: usize) {
    let now = crate::clock::unix_now();
    let counted = update(path, |m| {
        for _ in 0..times {
            m.count(record, now);
        }
    });
    if let Err(e) = counted {
        eprintln!("{PROG}: warning: METRICS_FILE {}: {e}", path.display());
    }
}

/// Locked read-modify-replace of the metrics file.
fn update(path: &Path, change: impl FnOnce(&mut Metrics)) -> std::io::Result<()> {
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| std::io::Error::other("not a file path"))?;
    let dir = path.parent().unwrap_or(Path::new("/"));
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_CLOEXEC)
        .open(dir.join(format!(".{name}.lock")))?;
    let _held = nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, e)| std::io::Error::from(e))?;
    let mut metrics = match std::fs::read_to_string(path) {
        Ok(text) => parse(&text),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Metrics::default(),
        Err(e) => return Err(e),
    };
    change(&mut metrics);
    // node-exporter reads it as another user.
    crate::record::replace_file(path, metrics.render().as_bytes(), 0o644, true)
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

    #[test]
    fn garbage_and_other_families_are_dropped() {
        let m = parse(
            "# junk\nnode_load1 3\nood_k8s_bootstrap_runs_total{command=\"hook\",exit=\"0\"} NaN\nood_k8s_bootstrap_runs_total{broken 1\n",
        );
        assert_eq!(m, Metrics::default());
    }
}
