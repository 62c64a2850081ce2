//! ood-k8s-bootstrap: Open OnDemand's PUN pre-hook for Kubernetes.
//!
//! `main` is the thin shell around the pure core: parse the command line,
//! validate everything (hook.env, the username, the passwd entry) before
//! any change, then apply the desired objects to the cluster and write the
//! user's kubeconfig, and turn the outcome into one stderr line and a
//! sysexits status. See README.md for the module map.

mod account;
mod apply;
mod cli;
mod credential;
mod desired;
mod exit;
mod kubeconfig;
mod names;
mod reconcile;
mod render;
mod secret;
mod settings;
mod tokens;

use std::process::ExitCode;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use crate::account::Account;
use crate::apply::{Applied, Change, Cluster, Mode};
use crate::cli::{Command, HookArgs};
use crate::exit::Exit;
use crate::names::{Namespace, Username};
use crate::settings::Settings;

const PROG: &str = "ood-k8s-bootstrap";

fn main() -> ExitCode {
    // Hidden subcommands, before any runtime or thread exists. (`credential
    // --issuer ...` as kubectl runs it; `credential /path` would be the old
    // call form for a user named "credential".)
    let arg = |n| {
        std::env::args_os()
            .nth(n)
            .and_then(|a| a.into_string().ok())
    };
    match (arg(1).as_deref(), arg(2)) {
        (Some(kubeconfig::as_user::CHILD_ARG), _) => return kubeconfig::child_main(),
        (Some("credential"), Some(next)) if next.starts_with("--") => {
            return credential::main(credential::CredentialArgs::from_env());
        }
        _ => {}
    }
    let cli = cli::parse();
    // One TLS crypto provider for kube and reqwest alike.
    let _ = rustls::crypto::ring::default_provider().install_default();
    match cli.command {
        Some(Command::Render { user, time, common }) => {
            init_logging(common.verbose);
            render::main(&user, &common.hook_env, time.unwrap_or_else(unix_now)).into()
        }
        Some(Command::Reconcile {
            users,
            all: _,
            concurrency,
            dry_run,
            common,
        }) => {
            init_logging(common.verbose);
            // clap makes --users and --all exclusive, one of them required.
            let source = match &users {
                Some(path) => reconcile::Source::List(path),
                None => reconcile::Source::Labelled,
            };
            reconcile::main(source, &common.hook_env, concurrency, dry_run).into()
        }
        None => {
            init_logging(cli.hook.common.verbose);
            run_hook(&cli.hook).into()
        }
    }
}

/// Prints an error the way nginx_stage will log it: one line, prefixed.
pub(crate) fn fail(exit: Exit, msg: impl std::fmt::Display) -> Exit {
    eprintln!("{PROG}: error: {msg}");
    exit
}

/// Reads and validates hook.env, printing its warnings.
pub(crate) fn load_settings(hook_env: &std::path::Path) -> Result<Settings, Exit> {
    let settings = Settings::load(hook_env).map_err(|e| fail(Exit::Config, e))?;
    for w in &settings.warnings {
        eprintln!("{PROG}: warning: {w}");
    }
    Ok(settings)
}

/// Validates the inputs shared by the per-user subcommands.
pub(crate) fn load(
    user: &str,
    hook_env: &std::path::Path,
) -> Result<(Settings, Username, Namespace), Exit> {
    let settings = load_settings(hook_env)?;
    let user = Username::parse(user).map_err(|e| fail(Exit::NoUser, e))?;
    let namespace = Namespace::for_user(&settings.namespace_prefix, &user)
        .map_err(|e| fail(Exit::DataErr, e))?;
    Ok((settings, user, namespace))
}

/// The single-threaded async runtime the API calls run on.
pub(crate) fn runtime() -> Result<tokio::runtime::Runtime, Exit> {
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

fn run_hook(args: &HookArgs) -> Exit {
    let started = Instant::now();
    let Some(user) = args.user.as_deref() else {
        return fail(
            Exit::Usage,
            "no user given; usage: ood-k8s-bootstrap --user USERNAME (see --help)",
        );
    };
    let (settings, user, namespace) = match load(user, &args.common.hook_env) {
        Ok(v) => v,
        Err(exit) => return exit,
    };
    let account = match Account::lookup(&user) {
        Ok(a) => a,
        Err(e) => return fail(e.exit(), e),
    };
    let login = kubeconfig::Login::from_env();
    let mode = if args.dry_run {
        Mode::DryRun
    } else {
        Mode::Apply
    };
    let deadline = started + settings.timeout;
    let state = desired::desired_state(&settings, &user, &namespace, unix_now());
    // Everything about the kubeconfig that can be refused is refused now,
    // before any change.
    let prepared = if args.dry_run || args.cluster_only {
        None
    } else {
        match kubeconfig::prepare(&settings, &user, &account, &namespace, &login) {
            Ok(p) => Some(p),
            Err(e) => return fail(e.exit(), e),
        }
    };
    drop(login);
    // The kubeconfig is written (by a child running as the user) while the
    // cluster side is applied: the two are independent.
    let writer = prepared.map(|p| std::thread::spawn(move || p.execute()));

    let runtime = match runtime() {
        Ok(rt) => rt,
        Err(exit) => return exit,
    };
    let applied = runtime.block_on(async {
        let work = async {
            let cluster = Cluster::connect(settings.timeout).await?;
            cluster.apply(user.as_str(), &state, mode, deadline).await
        };
        match tokio::time::timeout_at(deadline.into(), work).await {
            Ok(result) => result,
            Err(_) => Err(apply::ApplyError::Deadline {
                user: user.to_string(),
                server: "(root's kubeconfig)".into(),
                secs: settings.timeout.as_secs_f64(),
                last: "no answer".into(),
            }),
        }
    });
    drop(runtime);
    let kube = writer.map(|w| {
        w.join().unwrap_or_else(|_| {
            Err(kubeconfig::KubeconfigError::Writer {
                user: user.to_string(),
                why: "the writer thread panicked".into(),
            })
        })
    });
    let applied = match applied {
        Ok(a) => a,
        Err(e) => {
            if let Some(Err(k)) = &kube {
                eprintln!("{PROG}: error: {k}");
            }
            return fail(e.exit(), e);
        }
    };
    let kube = match kube.transpose() {
        Ok(k) => k,
        Err(e) => {
            eprintln!(
                "{PROG}: {}",
                summary(&user, &namespace, &applied, args.dry_run)
            );
            return fail(e.exit(), e);
        }
    };

    let mut line = summary(&user, &namespace, &applied, args.dry_run);
    if let Some(k) = kube {
        line.push_str(&match k {
            kubeconfig::Outcome::Written(p) => format!("; kubeconfig {} updated", p.display()),
            kubeconfig::Outcome::Unchanged(p) => format!("; kubeconfig {} unchanged", p.display()),
            kubeconfig::Outcome::NoTokens => {
                "; no OIDC tokens in the environment, kubeconfig credentials left as they are"
                    .into()
            }
            kubeconfig::Outcome::Disabled => String::new(),
        });
    }
    line.push_str(&format!(" ({} ms)", started.elapsed().as_millis()));
    eprintln!("{PROG}: {line}");
    if args.common.verbose > 0 {
        for a in &applied {
            eprintln!("  {:<10} {}", change_word(a.change, args.dry_run), a.object);
        }
    }
    Exit::Ok
}

fn change_word(c: Change, dry_run: bool) -> &'static str {
    match (c, dry_run) {
        (Change::Created, false) => "created",
        (Change::Changed, false) => "changed",
        (Change::Created, true) => "would create",
        (Change::Changed, true) => "would change",
        (Change::Unchanged, _) => "unchanged",
    }
}

/// `alice: namespace alice: 1 created, 1 changed, 3 unchanged`.
fn summary(user: &Username, ns: &Namespace, applied: &[Applied], dry_run: bool) -> String {
    let count = |c| applied.iter().filter(|a| a.change == c).count();
    let verb = if dry_run { "dry run: would be " } else { "" };
    format!(
        "{user}: namespace {ns}: {verb}{} created, {} changed, {} unchanged",
        count(Change::Created),
        count(Change::Changed),
        count(Change::Unchanged)
    )
}

pub(crate) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn init_logging(verbose: u8) {
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
