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

use crate::site::settings::DEFAULT_HOOK_ENV;

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
                  RoleBindings, the default ServiceAccount (created when missing), optional \
                  job-pod-reaper binding, image pull secret and site templates (by server-side \
                  apply, optionally pruning what is no longer wanted), and the OIDC user entry in \
                  the user's ~/.kube/config.\n\n\
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

/// Which of the clusters of `CLUSTERS_D` a command works on.
#[derive(Debug, Args, Clone, Default)]
pub struct ClusterChoice {
    /// With CLUSTERS_D: only the cluster of this clusters.d id (file name
    /// without .yml); default: every Kubernetes cluster there.
    #[arg(long, value_name = "ID")]
    pub cluster: Option<String>,
}

#[derive(Debug, Args)]
pub struct HookArgs {
    /// The OnDemand user to bootstrap.
    #[arg(long, value_name = "USERNAME")]
    pub user: Option<String>,

    /// Ask the API server what would change (server-side dry run); change
    /// nothing, write no kubeconfig. Whose the namespace is is checked as in
    /// a real run: another login's namespace is refused (exit 77).
    #[arg(long)]
    pub dry_run: bool,

    /// Only the cluster side; leave the user's kubeconfig alone.
    #[arg(long)]
    pub cluster_only: bool,

    #[command(flatten)]
    pub choice: ClusterChoice,

    #[command(flatten)]
    pub common: Common,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Print the objects that would be applied for a user, as YAML, without
    /// touching any cluster (secrets are redacted). Without a cluster it
    /// cannot tell whether the namespace belongs to another login (the
    /// dashboard maps `.` and `@` to `-`): `--dry-run` checks that.
    Render {
        #[arg(long, value_name = "USERNAME")]
        user: String,
        /// Unix time for the last-hook-execution annotation (default: now).
        #[arg(long, value_name = "SECONDS")]
        time: Option<u64>,
        #[command(flatten)]
        choice: ClusterChoice,
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
    /// hook.env's client when it is about to expire. A stored set is served
    /// only while passwd maps the caller's uid to the login that stored it,
    /// and is deleted otherwise, when the IdP refuses its refresh, when its
    /// refresh token expires, and BROKER_MAX_SESSION_HOURS after that login.
    /// Normally started by ood-k8s-bootstrap-broker.socket; logs one line
    /// per event on stderr, refusals at most once per uid and minute with a
    /// count (-v: every request).
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
        choice: ClusterChoice,
        #[command(flatten)]
        common: Common,
    },
    /// Delete the OnDemand namespaces of idle and departed users.
    ///
    /// Looks at every namespace labelled app.kubernetes.io/name=open-ondemand
    /// with hook.env's NAMESPACE_PREFIX (no other is ever touched) and
    /// deletes, with everything in it, one whose user has not logged in for
    /// REAP_IDLE_DAYS and runs no pod, and, with REAP_DEPARTED=true, one
    /// whose owner login is gone from passwd or has another uid (and that
    /// login's stored broker tokens). Namespaces holding
    /// PersistentVolumeClaims are kept unless --include-pvcs. If more than
    /// REAP_MAX_PER_RUN qualify, none is deleted (exit 75): a broken NSS
    /// must not wipe a cluster. Each deletion is guarded by the version it
    /// was judged at, so a user logging in meanwhile keeps the namespace.
    /// Prints one line per deletion and a summary; needs `install --reap`.
    /// Run daily by ood-k8s-bootstrap-reap.timer or hooks/reap-cronjob.yaml.
    Reap(ReapArgs),
    /// Make the cluster sides that logins left pending, now that the
    /// cluster answers again (one pass; run every minute by
    /// ood-k8s-bootstrap-heal.timer).
    ///
    /// A login whose API server was unreachable, too slow, throttling or
    /// answering 5xx (or whose namespace was still being deleted) goes on
    /// without its namespace and RoleBindings; the hook notes it in
    /// LAST_RUN_DIR/.pending. Each such side is applied as the login would
    /// have (same objects and login time, owner check, group gate), the
    /// longest-pending first, at most HEAL_MAX_PER_RUN users per pass. A
    /// refusal (another login's namespace, bad configuration, a group gate,
    /// an unknown user) is never noted nor retried; a later login replaces
    /// the note. One line per user. Exit 0 when nothing is left pending, 75
    /// when some users still are (the cluster still down, or a pass already
    /// running), 78 on a configuration error.
    Heal(HealArgs),
    /// Set up a cluster for OnDemand: server-side-apply the cluster-wide
    /// prerequisites with a cluster admin's kubeconfig.
    ///
    /// Applies, from manifests built into this binary: namespace and
    /// ServiceAccount `ondemand` (root's identity on the web nodes), its
    /// ClusterRole and ClusterRoleBinding, and the ClusterRoles `ood-user`
    /// and `ood-initializer` the hook binds per user, and the FlowSchema and
    /// PriorityLevelConfiguration `ondemand` that keep logins' share of the
    /// API server in a login storm. Opt-in parts add more.
    /// Idempotent: a second run reports every object unchanged. Prints one
    /// line per object (created, changed, unchanged).
    Install(InstallArgs),
    /// Diagnose this web node's setup: one line per check, with the fix.
    ///
    /// Checks hook.env and the files it names, root's kubeconfig and token
    /// (whose, expiry, next renewal), the API server and its version, every
    /// permission a hook run needs (asked of the API server), the
    /// ClusterRoles and the job-pod-reaper's objects, the login-storm
    /// FlowSchema (which classifies root's requests), the IdP's OIDC
    /// discovery; with --user and a token, what the API server sees for
    /// that user; with --clusters-d, the dashboard's cluster config. Exit
    /// status 0 when nothing failed (warnings do not fail), 1 when a check
    /// failed; which findings fail and which warn is listed below.
    #[command(after_long_help = crate::admin::doctor::findings::help())]
    Doctor(DoctorArgs),
    /// Renew root's ServiceAccount token in its kubeconfig (TokenRequest
    /// API), atomically, keeping every other byte of the file.
    ///
    /// Asks for a new token of the ServiceAccount that root's current
    /// token belongs to, with the current token (which needs `install
    /// --self-renew`), and writes it in place of the old one: a new 0600
    /// file beside it, fsynced and renamed over it. Symlinks and files not
    /// owned by root are refused. Run by the systemd timer
    /// ood-k8s-bootstrap-root-token.timer.
    RootToken(RootTokenArgs),
}

#[derive(Debug, Args)]
pub struct InstallArgs {
    /// A cluster admin's kubeconfig (default: KUBECONFIG, then ~/.kube/config).
    #[arg(long, value_name = "PATH")]
    pub kubeconfig: Option<PathBuf>,

    /// Report what would be created, changed or left unchanged (server-side
    /// dry run); change nothing.
    #[arg(long)]
    pub dry_run: bool,

    /// Print the manifests as YAML and exit; no cluster needed.
    #[arg(long, conflicts_with_all = ["dry_run", "kubeconfig"])]
    pub print: bool,

    /// Also the `job-pod-reaper` ClusterRole that USE_JOB_POD_REAPER=true
    /// binds in each user namespace (the reaper itself comes from its Helm
    /// chart).
    #[arg(long)]
    pub job_pod_reaper: bool,

    /// Also let the `ondemand` ServiceAccount renew its own token (only
    /// `create` on serviceaccounts/token for itself, in namespace
    /// `ondemand`), for `ood-k8s-bootstrap root-token` and its timer.
    #[arg(long)]
    pub self_renew: bool,

    /// Also let the `ondemand` ServiceAccount list and delete what the hook
    /// made in users' namespaces (for PRUNE=true, `reconcile --prune`).
    #[arg(long)]
    pub prune: bool,

    /// Also the ValidatingAdmissionPolicy that admits pods in OnDemand
    /// namespaces only as their user, in their groups and with a bounded
    /// pod.kubernetes.io/lifetime (for PUBLISH_UID_GID=true); its maximum,
    /// the ConfigMap ondemand/ood-pod-policy, is created only if missing.
    #[arg(long)]
    pub uid_gid_policy: bool,

    /// Also let the `ondemand` ServiceAccount list and delete OnDemand
    /// namespaces and see their pods and claims (for `reap`).
    #[arg(long)]
    pub reap: bool,

    /// Give up after this many seconds.
    #[arg(long, value_name = "SECONDS", default_value_t = 30)]
    pub timeout: u64,

    /// hook.env, read with --cluster: the cluster's API server
    /// (job.server.endpoint) picks the admin kubeconfig's context for it.
    #[arg(long, value_name = "PATH", default_value = DEFAULT_HOOK_ENV)]
    pub hook_env: PathBuf,

    #[command(flatten)]
    pub choice: ClusterChoice,
}

#[derive(Debug, Args)]
pub struct HealArgs {
    /// List each pending cluster side and why it is pending (one line
    /// each); touch nothing, ask no API server.
    #[arg(long)]
    pub dry_run: bool,

    #[command(flatten)]
    pub choice: ClusterChoice,

    #[command(flatten)]
    pub common: Common,
}

#[derive(Debug, Args)]
pub struct ReapArgs {
    /// List each namespace that would be deleted, and each kept one that
    /// qualified by age or departure, with the reason; delete nothing.
    #[arg(long)]
    pub dry_run: bool,

    /// Also delete namespaces holding PersistentVolumeClaims (their data
    /// goes with them).
    #[arg(long)]
    pub include_pvcs: bool,

    /// This run's cap instead of REAP_MAX_PER_RUN (after checking that so
    /// many users really left).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub max_per_run: Option<u32>,

    #[command(flatten)]
    pub choice: ClusterChoice,

    #[command(flatten)]
    pub common: Common,
}

impl InstallArgs {
    /// The manifests the flags select, base first.
    pub fn parts(&self) -> Vec<crate::admin::install::Part> {
        use crate::admin::install::Part;
        let mut parts = vec![Part::Base, Part::Apf];
        if self.job_pod_reaper {
            parts.push(Part::JobPodReaper);
        }
        if self.self_renew {
            parts.push(Part::SelfRenew);
        }
        if self.prune {
            parts.push(Part::Prune);
        }
        if self.uid_gid_policy {
            parts.push(Part::UidGidPolicy);
        }
        if self.reap {
            parts.push(Part::Reap);
        }
        parts
    }
}

/// How `doctor` prints its findings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    /// One line per check: ✓, ⚠ or ✗, what was found, the fix.
    Text,
    /// One JSON object: {"ok": bool, "checks": [{check, status, detail, fix}]}.
    Json,
}

#[derive(Debug, Args)]
pub struct DoctorArgs {
    /// Also check this user: the token the API server sees (with
    /// OOD_OIDC_ACCESS_TOKEN or --token-file), the user's namespace and
    /// objects, and their kubeconfig entry.
    #[arg(long, value_name = "USERNAME")]
    pub user: Option<String>,

    /// File holding the user's access token (instead of
    /// OOD_OIDC_ACCESS_TOKEN); keep it root-only.
    #[arg(long, value_name = "FILE", requires = "user")]
    pub token_file: Option<PathBuf>,

    /// The dashboard's cluster configs (e.g. /etc/ood/config/clusters.d):
    /// compare the Kubernetes cluster's username_prefix, namespace_prefix,
    /// cluster, context and auth with hook.env.
    #[arg(long, value_name = "DIR")]
    pub clusters_d: Option<PathBuf>,

    /// Root's kubeconfig (default: KUBECONFIG, then ~/.kube/config).
    #[arg(long, value_name = "PATH")]
    pub kubeconfig: Option<PathBuf>,

    /// Output format.
    #[arg(long, value_enum, default_value_t = Output::Text)]
    pub output: Output,

    #[command(flatten)]
    pub choice: ClusterChoice,

    #[command(flatten)]
    pub common: Common,
}

#[derive(Debug, Args)]
pub struct RootTokenArgs {
    /// Root's kubeconfig to renew the token in (default: the first file of
    /// KUBECONFIG that defines the current context's user, then
    /// ~/.kube/config).
    #[arg(long, value_name = "PATH")]
    pub kubeconfig: Option<PathBuf>,

    /// Mint the token with this kubeconfig's credentials (a cluster
    /// admin's) instead of root's current token: for the first renewal
    /// without `install --self-renew`, or after the token expired.
    #[arg(long, value_name = "ADMIN_KUBECONFIG")]
    pub using: Option<PathBuf>,

    /// The ServiceAccount to mint the token for, as NAMESPACE/NAME
    /// (default: the one root's current token belongs to). With --using it
    /// also gives a user entry without a token its first one: set up root's
    /// kubeconfig with `kubectl config set-cluster/set-context/use-context`,
    /// then `root-token --using ADMIN_KUBECONFIG --service-account ondemand/ondemand`.
    #[arg(long, value_name = "NAMESPACE/NAME", value_parser = parse_service_account)]
    pub service_account: Option<(String, String)>,

    /// Lifetime of the new token: a number with s, m, h or d (at least
    /// 10m; the API server may cap it).
    #[arg(long, value_name = "DURATION", default_value = "48h", value_parser = parse_duration)]
    pub duration: std::time::Duration,

    /// Give up after this many seconds.
    #[arg(long, value_name = "SECONDS", default_value_t = 30)]
    pub timeout: u64,

    /// The hook configuration, read only for where the run's record goes
    /// (LOG_TARGET, SYSLOG_SOCKET, METRICS_FILE); if it does not load, the
    /// record goes to the system log and the renewal goes on.
    #[arg(long, value_name = "PATH", default_value = DEFAULT_HOOK_ENV)]
    pub hook_env: PathBuf,

    #[command(flatten)]
    pub choice: ClusterChoice,
}

/// `ondemand/ondemand` → (namespace, name), both DNS labels.
pub fn parse_service_account(s: &str) -> Result<(String, String), String> {
    let (ns, name) = s
        .split_once('/')
        .ok_or_else(|| format!("{s:?}: expected NAMESPACE/NAME, e.g. ondemand/ondemand"))?;
    for part in [ns, name] {
        if let Some(why) = crate::site::names::dns1123_label_problem(part) {
            return Err(format!("{s:?}: {part:?}: {why}"));
        }
    }
    Ok((ns.to_owned(), name.to_owned()))
}

/// `90s`, `30m`, `48h`, `2d` → a duration of at least 10 minutes (the
/// TokenRequest API's minimum).
pub fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (n, unit) = s.split_at(split);
    let n: u64 = n
        .parse()
        .map_err(|_| format!("{s:?}: expected a number with s, m, h or d, e.g. 48h"))?;
    let secs = match unit {
        "s" => n,
        "m" => n.saturating_mul(60),
        "h" | "" => n.saturating_mul(3600),
        "d" => n.saturating_mul(86_400),
        _ => return Err(format!("{s:?}: the unit must be s, m, h or d")),
    };
    if secs < 600 {
        return Err(format!("{s:?}: at least 10m (the API server's minimum)"));
    }
    Ok(std::time::Duration::from_secs(secs))
}

/// The hidden subcommand that writes the man pages and completions
/// (`docs.rs`).
pub const GENERATE_DOCS: &str = "generate-docs";

/// Commands kept out of `--help`, dispatched before clap parses anything.
#[derive(Debug, PartialEq, Eq)]
pub enum Hidden {
    /// The privilege-dropped kubeconfig writer (`kubeconfig::as_user`).
    WriteKubeconfig,
    /// The kubectl exec credential plugin (`credential --issuer ...`).
    Credential,
    /// Man pages and completions for packaging (`generate-docs --out-dir DIR`).
    GenerateDocs,
    /// The credential broker's exec plugin (`broker-credential --socket ...`).
    BrokerCredential,
}

/// Which hidden command argv asks for. `credential` and `generate-docs`
/// count only when an option follows, so the old call form `PROG USER
/// /path` stays a hook run for users with those names.
pub fn hidden_command(args: &[OsString]) -> Option<Hidden> {
    let arg = |n: usize| args.get(n).and_then(|a| a.to_str());
    let option_follows = arg(2).is_some_and(|a| a.starts_with("--"));
    match arg(1)? {
        crate::credentials::kubeconfig::as_user::CHILD_ARG => Some(Hidden::WriteKubeconfig),
        "credential" if option_follows => Some(Hidden::Credential),
        GENERATE_DOCS if option_follows => Some(Hidden::GenerateDocs),
        crate::credentials::broker::plugin::SUBCOMMAND if option_follows => {
            Some(Hidden::BrokerCredential)
        }
        _ => None,
    }
}

/// Parses argv, accepting the old scripts' `USERNAME HOOK_ENV` form.
pub fn parse() -> Cli {
    parse_from(std::env::args_os())
}

/// [`parse`] of the given argv; prints help or a usage error and exits.
pub fn parse_from(args: impl IntoIterator<Item = OsString>) -> Cli {
    match try_parse_from(args) {
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

/// Parses argv (the old form too) without printing or exiting: the pure
/// part of [`parse_from`].
pub fn try_parse_from(args: impl IntoIterator<Item = OsString>) -> Result<Cli, clap::Error> {
    let args: Vec<OsString> = args.into_iter().collect();
    match legacy_form(&args) {
        Some(legacy) => Ok(legacy),
        None => Cli::try_parse_from(args),
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
            choice: ClusterChoice::default(),
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
    fn the_command_line_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }

    #[test]
    fn setup_subcommands() {
        let c = cli(&["install", "--self-renew", "--dry-run"]);
        let Some(Command::Install(a)) = c.command else {
            panic!("not install")
        };
        assert_eq!(
            a.parts(),
            [
                crate::admin::install::Part::Base,
                crate::admin::install::Part::Apf,
                crate::admin::install::Part::SelfRenew
            ]
        );
        let c = cli(&["doctor", "--user", "alice", "--output", "json"]);
        assert!(matches!(c.command, Some(Command::Doctor(ref d)) if d.output == Output::Json));
        let c = cli(&["root-token", "--duration", "90m"]);
        assert!(
            matches!(c.command, Some(Command::RootToken(ref r)) if r.duration.as_secs() == 5400)
        );
    }

    #[test]
    fn service_accounts() {
        assert_eq!(
            parse_service_account("ondemand/ondemand").unwrap(),
            ("ondemand".to_owned(), "ondemand".to_owned())
        );
        assert!(parse_service_account("ondemand").is_err());
        assert!(parse_service_account("On/x").is_err());
        assert!(parse_service_account("a/b/c").is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("48h").unwrap().as_secs(), 172_800);
        assert_eq!(parse_duration("2d").unwrap().as_secs(), 172_800);
        assert_eq!(parse_duration("600s").unwrap().as_secs(), 600);
        assert!(parse_duration("5m").unwrap_err().contains("10m"));
        assert!(parse_duration("1w").is_err());
        assert!(parse_duration("h").is_err());
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

    #[test]
    fn errors_are_returned_not_exited() {
        let r = try_parse_from(["ood-k8s-bootstrap", "--no-such-flag"].map(OsString::from));
        assert_eq!(
            r.unwrap_err().kind(),
            clap::error::ErrorKind::UnknownArgument
        );
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            /// The old scripts' form keeps both words exactly.
            #[test]
            fn legacy_form_keeps_both_words(
                user in "[a-zA-Z0-9_@][a-zA-Z0-9._@-]{0,30}",
                path in "[a-z0-9._/][a-z0-9._-]{0,10}/[a-z0-9./_-]{0,30}",
            ) {
                let c = try_parse_from(["ood-k8s-bootstrap", &user, &path].map(OsString::from)).unwrap();
                prop_assert_eq!(c.hook.user.as_deref(), Some(user.as_str()));
                prop_assert_eq!(c.hook.common.hook_env, PathBuf::from(&path));
            }

            /// Any argv is parsed or refused, never a panic or an exit.
            #[test]
            fn arbitrary_argv_never_panics(args in proptest::collection::vec(
                "(?s).{0,16}|--[a-z-]{1,12}|render|reconcile|root-token|--max-age|--service-account|[0-9]{1,3}[smh]",
                0..6,
            )) {
                let argv: Vec<OsString> = std::iter::once("ood-k8s-bootstrap".to_owned()).chain(args).map(OsString::from).collect();
                let _ = hidden_command(&argv);
                if let Err(e) = try_parse_from(argv) {
                    let _ = e.render().to_string();
                }
            }
        }
    }
}
