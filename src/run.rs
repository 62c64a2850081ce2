//! The steps every command shares: load and validate hook.env, report a
//! failure as one stderr line with its exit status, start the async runtime,
//! set up logging, and record the run ([`Run`]: its record sent, the
//! metrics counted). Kept apart so `main` stays a dispatcher.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::PROG;
use crate::exit::Exit;
use crate::record::{Command, Record, Sink};
use crate::site::names::Username;
use crate::site::settings::site::Site;
use crate::site::settings::{Settings, SettingsError};

/// Prints an error the way nginx_stage will log it: one line, prefixed.
pub fn fail(exit: Exit, msg: impl std::fmt::Display) -> Exit {
    let line = msg.to_string();
    eprintln!("{PROG}: error: {line}");
    note_error(&line);
    exit
}

/// How long reading hook.env and the files it names may take; the run's own
/// deadline (`HOOK_TIMEOUT_SECONDS`) is not known before the file is read.
pub const CONFIG_READ_LIMIT: Duration = Duration::from_secs(5);

/// Reads and validates hook.env and, with `CLUSTERS_D`, the cluster files
/// and their overrides (`settings::site`), printing the warnings. The
/// reading is bounded: a file on a hung network file system fails the run
/// (75) rather than hanging the login.
pub fn load_site(hook_env: &std::path::Path) -> Result<Site, Exit> {
    let site = bounded(hook_env, Site::load)?;
    for w in &site.warnings {
        eprintln!("{PROG}: warning: {w}");
    }
    Ok(site)
}

/// The clusters `--cluster` names (all when none), from hook.env.
pub fn load_clusters(
    hook_env: &std::path::Path,
    cluster: Option<&str>,
) -> Result<Vec<Settings>, Exit> {
    let site = load_site(hook_env)?;
    let chosen = site.select(cluster).map_err(|e| fail(Exit::Usage, e))?;
    Ok(chosen.into_iter().cloned().collect())
}

/// Runs `read` on hook.env in a thread, for at most [`CONFIG_READ_LIMIT`].
fn bounded<T: Send + 'static>(
    hook_env: &std::path::Path,
    read: fn(&std::path::Path) -> Result<T, SettingsError>,
) -> Result<T, Exit> {
    let (tx, rx) = std::sync::mpsc::channel();
    let path = hook_env.to_owned();
    std::thread::spawn(move || {
        let _ = tx.send(read(&path));
    });
    match rx.recv_timeout(CONFIG_READ_LIMIT) {
        Ok(result) => result.map_err(|e| fail(Exit::Config, e)),
        Err(_) => Err(fail(
            Exit::TempFail,
            format!(
                "{}: reading it (or a file it names) took longer than {}s; is a network file system hung?",
                hook_env.display(),
                CONFIG_READ_LIMIT.as_secs()
            ),
        )),
    }
}

/// The single-threaded async runtime the API calls run on.
pub fn runtime() -> Result<tokio::runtime::Runtime, Exit> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| {
            fail(
                Exit::Software,
                format!("cannot start the async runtime: {e}"),
            )
        })
}

/// Logging to stderr: warnings by default, more with each `-v`.
pub fn init_logging(verbose: u8) {
    let level = match verbose {
        0 | 1 => "warn",
        2 => "ood_k8s_bootstrap=debug",
        _ => "ood_k8s_bootstrap=trace,kube=debug",
    };
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(tracing_subscriber::EnvFilter::new(level))
        .try_init();
}

/// The last error line [`fail`] printed, for the record.
static LAST_ERROR: Mutex<Option<String>> = Mutex::new(None);

/// Remembers `line` as the run's error (called by [`fail`]).
fn note_error(line: &str) {
    if let Ok(mut e) = LAST_ERROR.lock() {
        *e = Some(line.to_owned());
    }
}

fn take_error() -> Option<String> {
    LAST_ERROR.lock().ok().and_then(|mut e| e.take())
}

/// A run being recorded: filled in as the run learns things, sent when it
/// ends.
pub struct Run {
    started: Instant,
    pub record: Record,
    pub sink: Sink,
    /// The validated login whose run this is ([`Run::user`]): the only
    /// name that reaches the record and the last-run file.
    login: Option<Username>,
    /// What the login left to `heal` (none: a dry run, or nothing known).
    outcome: Option<crate::record::Outcome>,
}

impl Run {
    pub fn start(command: Command) -> Self {
        let _ = take_error();
        Self {
            started: Instant::now(),
            record: Record::new(command),
            sink: Sink::of(None),
            login: None,
            outcome: None,
        }
    }

    /// The run is `user`'s, a validated login: it goes into the record
    /// and names the last-run file. (A name that did not validate never
    /// gets here: only the error line shows it.)
    pub fn user(&mut self, user: &Username) {
        self.record.user = Some(user.to_string());
        self.login = Some(user.clone());
    }

    /// What the login did per cluster: the clusters it worked on, and the
    /// cluster sides it left pending (named in the record, noted for
    /// `heal`).
    pub fn outcome(&mut self, outcome: crate::record::Outcome) {
        if !outcome.pending.is_empty() {
            let names: Vec<&str> = outcome.pending.iter().map(|s| s.cluster.as_str()).collect();
            self.record.extra.push(("pending", names.join(",")));
        }
        self.outcome = Some(outcome);
    }

    /// What hook.env says about logging, and the credential mode.
    pub fn configured(&mut self, settings: &Settings) {
        self.sink = Sink::of(Some(settings));
        self.record.mode = Some(settings.kubeconfig.credentials.as_str().to_owned());
    }

    /// Sends the record (and updates the metrics) for a run ending with
    /// `exit`.
    pub fn finish(mut self, exit: Exit) -> Record {
        self.record.exit = exit as u8;
        self.record.duration_ms = self.started.elapsed().as_millis() as u64;
        let noted = take_error();
        if exit != Exit::Ok && self.record.error.is_none() {
            self.record.error = noted;
        }
        self.record.send(&self.sink);
        if let Some(path) = &self.sink.metrics {
            crate::metrics::count_run(path, &self.record);
        }
        if let (Command::Hook, Some(dir), Some(user)) =
            (self.record.command, &self.sink.last_run, &self.login)
            && let Err(e) = crate::record::save_last(dir, user, &self.record, self.outcome.as_ref())
        {
            eprintln!("{PROG}: warning: LAST_RUN_DIR {}: {e}", dir.display());
        }
        self.record
    }
}
