//! The command line: what OnDemand, admins and scripts type.
//!
//! nginx_stage runs `ood-k8s-bootstrap --user USERNAME`; wrappers written for
//! the old scripts run `ood-k8s-bootstrap USERNAME /etc/ood/config/hook.env`,
//! which is accepted too.

use std::ffi::OsString;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::settings::DEFAULT_HOOK_ENV;

#[derive(Debug, Parser)]
#[command(
    name = "ood-k8s-bootstrap",
    version,
    about = "Bootstraps an Open OnDemand user's Kubernetes namespace, RBAC and kubeconfig",
    long_about = "Bootstraps an Open OnDemand user's Kubernetes tenancy: namespace, network policy, \
                  RoleBindings, optional job-pod-reaper binding, image pull secret and site \
                  templates (by server-side apply, optionally pruning what is no longer wanted), \
                  and the OIDC user entry in the user's ~/.kube/config.\n\n\
                  Run as OnDemand's pun_pre_hook_root_cmd: `ood-k8s-bootstrap --user alice`.",
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,

    #[command(flatten)]
    pub hook: HookArgs,
}

#[derive(Debug, Args)]
pub struct Common {
    /// The hook configuration file.
    #[arg(long, value_name = "PATH", default_value = DEFAULT_HOOK_ENV)]
    pub hook_env: PathBuf,

    /// More detail on stderr (-v: each object, -vv: each request).
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,
}

#[derive(Debug, Args)]
pub struct HookArgs {
    /// The OnDemand user to bootstrap.
    #[arg(long, value_name = "USERNAME")]
    pub user: Option<String>,

    /// Ask the API server what would change (server-side dry run); change
    /// nothing, write no kubeconfig.
    #[arg(long)]
    pub dry_run: bool,

    /// Only the cluster side; leave the user's kubeconfig alone.
    #[arg(long)]
    pub cluster_only: bool,

    #[command(flatten)]
    pub common: Common,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Print the objects that would be applied for a user, as YAML, without
    /// touching any cluster (secrets are redacted).
    Render {
        #[arg(long, value_name = "USERNAME")]
        user: String,
        /// Unix time for the last-hook-execution annotation (default: now).
        #[arg(long, value_name = "SECONDS")]
        time: Option<u64>,
        #[command(flatten)]
        common: Common,
    },
    /// Check hook.env (exit 78 naming key and line if it is wrong), or print
    /// a commented example with every key.
    Config {
        /// Print the example hook.env, every key with its meaning and
        /// default, instead of checking a file.
        #[arg(long)]
        example: bool,
        #[command(flatten)]
        common: Common,
    },
    /// Run the credential broker of K8S_CREDENTIALS=broker (foreground, root).
    ///
    /// Answers each user's kubectl with that user's own token over
    /// BROKER_SOCKET (or the socket systemd passes), refreshing it with
    /// hook.env's client when it is about to expire. Normally started by
    /// ood-k8s-bootstrap-broker.socket; logs one line per event on stderr
    /// (-v: every request).
    Broker {
        #[command(flatten)]
        common: Common,
    },
    /// Re-bootstrap many users' cluster side in one process (no kubeconfig
    /// changes): after a hook.env change, or to repair drift.
    Reconcile {
        /// File with one username per line (`-` for stdin).
        #[arg(
            long,
            value_name = "FILE",
            required_unless_present = "all",
            conflicts_with = "all"
        )]
        users: Option<PathBuf>,
        /// Every user whose namespace carries the OnDemand label (needs
        /// `list` on namespaces, e.g. an admin's kubeconfig).
        #[arg(long)]
        all: bool,
        /// How many users are worked on at once.
        #[arg(long, value_name = "N", default_value_t = 32)]
        concurrency: usize,
        /// Report what would change; change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Also delete objects this hook made that are no longer wanted (as
        /// PRUNE=true does; needs the grant in hooks/ondemand-prune.yaml).
        #[arg(long)]
        prune: bool,
        #[command(flatten)]
        common: Common,
    },
}

/// Parses argv, accepting the old scripts' `USERNAME HOOK_ENV` form.
pub fn parse() -> Cli {
    parse_from(std::env::args_os())
}

pub fn parse_from(args: impl IntoIterator<Item = OsString>) -> Cli {
    let args: Vec<OsString> = args.into_iter().collect();
    if let Some(legacy) = legacy_form(&args) {
        return legacy;
    }
    match Cli::try_parse_from(args) {
        Ok(cli) => cli,
        // Help and --version go to stdout with status 0; real usage errors
        // exit 64 (EX_USAGE) rather than clap's 2.
        Err(e) if !e.use_stderr() => e.exit(),
        Err(e) => {
            let _ = e.print();
            std::process::exit(crate::exit::Exit::Usage as i32)
        }
    }
}

/// `PROG USERNAME /path/to/hook.env`: two bare words, the second a path.
fn legacy_form(args: &[OsString]) -> Option<Cli> {
    let [_, user, hook_env] = args else {
        return None;
    };
    let user = user.to_str()?;
    let hook_env = hook_env.to_str()?;
    if user.starts_with('-') || hook_env.starts_with('-') || !hook_env.contains('/') {
        return None;
    }
    Some(Cli {
        command: None,
        hook: HookArgs {
            user: Some(user.to_owned()),
            dry_run: false,
            cluster_only: false,
            common: Common {
                hook_env: PathBuf::from(hook_env),
                verbose: 0,
            },
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cli(args: &[&str]) -> Cli {
        parse_from(
            std::iter::once("ood-k8s-bootstrap")
                .chain(args.iter().copied())
                .map(OsString::from),
        )
    }

    #[test]
    fn ood_form() {
        let c = cli(&["--user", "alice"]);
        assert_eq!(c.hook.user.as_deref(), Some("alice"));
        assert_eq!(c.hook.common.hook_env, PathBuf::from(DEFAULT_HOOK_ENV));
        assert!(c.command.is_none());
    }

    #[test]
    fn legacy_form_is_accepted() {
        let c = cli(&["alice", "/etc/ood/config/hook.env"]);
        assert_eq!(c.hook.user.as_deref(), Some("alice"));
        assert_eq!(
            c.hook.common.hook_env,
            PathBuf::from("/etc/ood/config/hook.env")
        );
    }

    #[test]
    fn broker_subcommand_and_a_user_named_broker() {
        let c = cli(&["broker", "--hook-env", "/tmp/h.env"]);
        assert!(matches!(c.command, Some(Command::Broker { .. })));
        let c = cli(&["broker", "/etc/ood/config/hook.env"]);
        assert_eq!(c.hook.user.as_deref(), Some("broker"));
    }

    #[test]
    fn render_subcommand() {
        let c = cli(&["render", "--user", "bob", "--hook-env", "/tmp/h.env"]);
        assert!(matches!(c.command, Some(Command::Render { ref user, .. }) if user == "bob"));
    }
}
