//! The steps every command shares: load and validate hook.env, report a
//! failure as one stderr line with its exit status, start the async runtime,
//! read the clock, set up logging. Kept apart so `main` stays a dispatcher.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::exit::Exit;
use crate::site::settings::site::Site;
use crate::site::settings::{Settings, SettingsError};

/// The program's name, as it prefixes every stderr line.
pub const PROG: &str = "ood-k8s-bootstrap";

/// Prints an error the way nginx_stage will log it: one line, prefixed.
pub fn fail(exit: Exit, msg: impl std::fmt::Display) -> Exit {
    let line = msg.to_string();
    eprintln!("{PROG}: error: {line}");
    crate::record::note_error(&line);
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

pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
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
