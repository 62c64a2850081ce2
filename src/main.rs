//! ood-k8s-bootstrap: Open OnDemand's PUN pre-hook for Kubernetes.
//!
//! `main` is the thin shell around the library: parse the command line and
//! hand over to the command. See README.md for the module map.

use std::process::ExitCode;

use ood_k8s_bootstrap::cli::{self, Command};
use ood_k8s_bootstrap::run::{init_logging, unix_now};
use ood_k8s_bootstrap::{broker, config, credential, hook, kubeconfig, reconcile, render};

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
        (Some(broker::plugin::SUBCOMMAND), Some(next)) if next.starts_with("--") => {
            return broker::plugin::main(broker::plugin::PluginArgs::from_env());
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
        Some(Command::Config { example, common }) => {
            init_logging(common.verbose);
            config::main(example, &common.hook_env).into()
        }
        Some(Command::Broker { common }) => {
            init_logging(common.verbose);
            broker::service::main(&common.hook_env, common.verbose).into()
        }
        Some(Command::Reconcile {
            users,
            all: _,
            concurrency,
            dry_run,
            prune,
            common,
        }) => {
            init_logging(common.verbose);
            // clap makes --users and --all exclusive, one of them required.
            let source = match &users {
                Some(path) => reconcile::Source::List(path),
                None => reconcile::Source::Labelled,
            };
            let options = reconcile::Options {
                concurrency,
                dry_run,
                prune,
            };
            reconcile::main(source, &common.hook_env, options).into()
        }
        None => {
            init_logging(cli.hook.common.verbose);
            hook::run_hook(&cli.hook).into()
        }
    }
}
