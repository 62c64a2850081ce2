//! The command line: what OnDemand, admins and scripts type.
//!
//! nginx_stage runs `ood-k8s-bootstrap --user USERNAME`; wrappers written for
//! the old scripts run `ood-k8s-bootstrap USERNAME /etc/ood/config/hook.env`,
//! which is accepted too.

use std::ffi::OsString;
use std::path::PathBuf;

#[cfg(test)]
use clap::CommandFactory;
use clap::{Args, Parser, Subcommand};

use crate::settings::DEFAULT_HOOK_ENV;

/// The Kubernetes API version the binary was built for (k8s-openapi's
/// `v1_*` feature in Cargo.toml, read by build.rs).
pub const K8S_API_VERSION: &str = env!("OOD_K8S_API_VERSION");

/// What `--version` prints after the name: version, git commit (build.rs)
/// and Kubernetes API version.
pub const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("OOD_GIT_COMMIT"),
    ", Kubernetes API ",
    env!("OOD_K8S_API_VERSION"),
    ")"
);

#[derive(Debug, Parser)]
#[command(
    name = "ood-k8s-bootstrap",
    version = VERSION,
    about = "Bootstraps an Open OnDemand user's Kubernetes namespace, RBAC and kubeconfig",
    long_about = "Bootstraps an Open OnDemand user's Kubernetes tenancy: namespace, network policy, \
                  RoleBindings, optional job-pod-reaper binding and image pull secret (by server-side \
                  apply), and the OIDC user entry in the user's ~/.kube/config.\n\n\
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
        #[command(flatten)]
        common: Common,
    },
}

/// Commands kept out of `--help`, dispatched before clap parses anything.
#[derive(Debug, PartialEq, Eq)]
pub enum Hidden {
    /// The privilege-dropped kubeconfig writer (`kubeconfig::as_user`).
    WriteKubeconfig,
    /// The kubectl exec credential plugin (`credential --issuer ...`).
    Credential,
    /// Man pages and completions for packaging (`generate-docs --out-dir DIR`).
    GenerateDocs,
}

/// Which hidden command argv asks for. `credential` and `generate-docs`
/// count only when an option follows, so the old call form `PROG USER
/// /path` stays a hook run for users with those names.
pub fn hidden_command(args: &[OsString]) -> Option<Hidden> {
    let arg = |n: usize| args.get(n).and_then(|a| a.to_str());
    let option_follows = arg(2).is_some_and(|a| a.starts_with("--"));
    match arg(1)? {
        crate::kubeconfig::as_user::CHILD_ARG => Some(Hidden::WriteKubeconfig),
        "credential" if option_follows => Some(Hidden::Credential),
        crate::docs::SUBCOMMAND if option_follows => Some(Hidden::GenerateDocs),
        _ => None,
    }
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

    fn hidden(args: &[&str]) -> Option<Hidden> {
        let argv: Vec<OsString> = std::iter::once("ood-k8s-bootstrap")
            .chain(args.iter().copied())
            .map(OsString::from)
            .collect();
        hidden_command(&argv)
    }

    #[test]
    fn hidden_commands_need_an_option() {
        assert_eq!(
            hidden(&["generate-docs", "--out-dir", "/tmp/d"]),
            Some(Hidden::GenerateDocs)
        );
        assert_eq!(
            hidden(&["credential", "--issuer", "https://x"]),
            Some(Hidden::Credential)
        );
        assert_eq!(
            hidden(&["__write-kubeconfig"]),
            Some(Hidden::WriteKubeconfig)
        );
        assert_eq!(hidden(&["--user", "alice"]), None);
        assert_eq!(hidden(&[]), None);
    }

    #[test]
    fn legacy_form_wins_for_users_named_like_hidden_commands() {
        for name in ["generate-docs", "credential"] {
            assert_eq!(hidden(&[name, "/etc/ood/config/hook.env"]), None);
            let c = cli(&[name, "/etc/ood/config/hook.env"]);
            assert_eq!(c.hook.user.as_deref(), Some(name));
            assert!(c.command.is_none());
        }
    }

    #[test]
    fn generate_docs_is_not_in_help() {
        let help = Cli::command().render_long_help().to_string();
        assert!(!help.contains("generate-docs"), "{help}");
        assert!(help.contains("render"), "{help}");
    }

    #[test]
    fn version_names_commit_and_kubernetes() {
        assert!(VERSION.starts_with(env!("CARGO_PKG_VERSION")));
        assert!(VERSION.contains("(commit "), "{VERSION}");
        assert!(VERSION.ends_with(&format!("Kubernetes API {K8S_API_VERSION})")));
    }

    /// build.rs derives the version from k8s-openapi; its own macros,
    /// which expand only for the enabled feature, must agree. (Another
    /// feature or k8s-openapi release: `seen` is then possibly unassigned
    /// and this fails to compile until a line is added here.)
    #[test]
    #[allow(clippy::needless_late_init)] // one of the macros assigns
    fn kubernetes_version_matches_k8s_openapi_feature() {
        let seen: &str;
        k8s_openapi::k8s_if_1_33! { seen = "1.33"; }
        k8s_openapi::k8s_if_1_34! { seen = "1.34"; }
        k8s_openapi::k8s_if_1_35! { seen = "1.35"; }
        k8s_openapi::k8s_if_1_36! { seen = "1.36"; }
        k8s_openapi::k8s_if_1_37! { seen = "1.37"; }
        assert_eq!(seen, K8S_API_VERSION);
    }

    #[test]
    fn render_subcommand() {
        let c = cli(&["render", "--user", "bob", "--hook-env", "/tmp/h.env"]);
        assert!(matches!(c.command, Some(Command::Render { ref user, .. }) if user == "bob"));
    }
}
