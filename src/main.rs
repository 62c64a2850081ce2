//! ood-k8s-bootstrap: Open OnDemand's PUN pre-hook for Kubernetes.
//!
//! `main` is the thin shell around the library: parse the command line and
//! hand over to the command. See README.md for the module map.

use std::process::ExitCode;

use clap::Parser;
use ood_k8s_bootstrap::cli::{self, Command, Hidden};
use ood_k8s_bootstrap::run::{init_logging, unix_now};
use ood_k8s_bootstrap::{config, credential, docs, hook, kubeconfig, reconcile, render};

fn main() -> ExitCode {
    // Hidden commands, before any runtime or thread exists.
    let args: Vec<_> = std::env::args_os().collect();
    match cli::hidden_command(&args) {
        Some(Hidden::WriteKubeconfig) => return kubeconfig::child_main(),
        Some(Hidden::Credential) => {
            return credential::main(credential::CredentialArgs::from_env());
        }
        Some(Hidden::GenerateDocs) => {
            return docs::main(&docs::GenerateArgs::parse_from(args.iter().skip(1))).into();
        }
        None => {}
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
            hook::run_hook(&cli.hook).into()
        }
    }
}
