//! ood-k8s-bootstrap: Open OnDemand's PUN pre-hook for Kubernetes.
//!
//! `main` is the thin shell around the library: parse the command line and
//! hand over to the command. See README.md for the module map.

use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use ood_k8s_bootstrap::admin::{config, doctor, heal, install, reap, reconcile, root_token};
use ood_k8s_bootstrap::cli::{self, Command, Hidden};
use ood_k8s_bootstrap::clock::unix_now;
use ood_k8s_bootstrap::cluster::render;
use ood_k8s_bootstrap::credentials::{broker, credential, kubeconfig};
use ood_k8s_bootstrap::run::init_logging;
use ood_k8s_bootstrap::{docs, hook};

fn main() -> ExitCode {
    // Hidden commands, before any runtime or thread exists.
    let args: Vec<_> = std::env::args_os().collect();
    match cli::hidden_command(&args) {
        Some(Hidden::WriteKubeconfig) => return kubeconfig::child_main(),
        Some(Hidden::Credential) => {
            return credential::main(credential::CredentialArgs::from_env());
        }
        Some(Hidden::BrokerCredential) => {
            return broker::plugin::main(broker::plugin::PluginArgs::from_env());
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
        Some(Command::Render {
            user,
            time,
            choice,
            common,
        }) => {
            init_logging(common.verbose);
            render::main(
                &user,
                &common.hook_env,
                choice.cluster.as_deref(),
                time.unwrap_or_else(unix_now),
            )
            .into()
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
            choice,
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
            reconcile::main(source, &common.hook_env, choice.cluster.as_deref(), options).into()
        }
        Some(Command::Reap(args)) => {
            init_logging(args.common.verbose);
            reap::main(
                &args.common.hook_env,
                args.choice.cluster.as_deref(),
                &reap::Options {
                    dry_run: args.dry_run,
                    include_pvcs: args.include_pvcs,
                    max_per_run: args.max_per_run.map(|n| n as usize),
                    verbose: args.common.verbose,
                },
            )
            .into()
        }
        Some(Command::Heal(args)) => {
            init_logging(args.common.verbose);
            heal::main(
                &args.common.hook_env,
                args.choice.cluster.as_deref(),
                heal::Options {
                    dry_run: args.dry_run,
                    verbose: args.common.verbose,
                },
            )
            .into()
        }
        Some(Command::Install(args)) => {
            init_logging(0);
            let context = match &args.choice.cluster {
                None => None,
                Some(id) => {
                    match install::cluster_context(&args.hook_env, args.kubeconfig.as_deref(), id) {
                        Ok(context) => Some(context),
                        Err(exit) => return exit.into(),
                    }
                }
            };
            install::main(&install::Options {
                kubeconfig: args.kubeconfig.clone(),
                context,
                parts: args.parts(),
                dry_run: args.dry_run,
                print: args.print,
                timeout: Duration::from_secs(args.timeout),
            })
            .into()
        }
        Some(Command::Doctor(args)) => {
            init_logging(args.common.verbose);
            doctor::main(&args).into()
        }
        Some(Command::RootToken(args)) => {
            init_logging(0);
            root_token::recorded_main(
                &root_token::Options {
                    kubeconfig: args.kubeconfig,
                    context: None,
                    using: args.using,
                    service_account: args.service_account,
                    duration: args.duration,
                    timeout: Duration::from_secs(args.timeout),
                },
                &args.hook_env,
                args.choice.cluster.as_deref(),
            )
            .into()
        }
        None => {
            init_logging(cli.hook.common.verbose);
            hook::run_hook(&cli.hook).into()
        }
    }
}
