//! `/etc/ood/config/hook.env`: reading the file sites already have and
//! turning it into validated [`Settings`].
//!
//! The syntax is `envfile.rs`; what each key means and how its value is
//! checked is the key table in `keys.rs`. This module runs the table over a
//! file, then checks what spans keys and reads the files keys name —
//! everything before the cluster or any file is touched, every error naming
//! the key and the line.

pub mod clusters;
pub mod envfile;
pub mod keys;
pub mod site;
pub mod template_dir;

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;
use thiserror::Error;

use crate::cluster::templates::{TemplateError, TemplateSet};
use crate::secret::Secret;
use crate::site::account::GroupNames;
use crate::site::names::{ObjectName, truncate};
use crate::site::trusted::{self, TrustError};

use envfile::EnvFile;
use keys::{Draft, KEYS};

/// The system log's socket.
pub const DEFAULT_SYSLOG_SOCKET: &str = "/dev/log";
/// Where a cluster's overrides of hook.env are (`HOOK_ENV_D`).
pub const DEFAULT_HOOK_ENV_D: &str = "/etc/ood/config/hook.env.d";
/// The user's kubeconfig in `~/.kube` unless a cluster's `config_file` says
/// otherwise.
pub const DEFAULT_KUBECONFIG_FILE: &str = "config";

/// Where run records go (`LOG_TARGET`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogTarget {
    #[default]
    Syslog,
    Stderr,
    None,
}

/// Run records and metrics (`LOG_TARGET`, `SYSLOG_SOCKET`, `METRICS_FILE`,
/// `LAST_RUN_DIR`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogSettings {
    pub target: LogTarget,
    pub socket: PathBuf,
    pub metrics_file: Option<PathBuf>,
    pub last_run_dir: Option<PathBuf>,
    /// `HEAL_MAX_PER_RUN`: the most users one `heal` pass works on.
    pub heal_max_per_run: usize,
}

/// Where OnDemand keeps the hook's configuration.
pub const DEFAULT_HOOK_ENV: &str = "/etc/ood/config/hook.env";

/// What is wrong with the hook.env file. Each variant names the file, and
/// where it can, the key and line, and says what to do.
#[derive(Debug, Error)]
pub enum SettingsError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}:{line}: cannot parse this line (expected KEY=VALUE, shell-style)")]
    Syntax { path: PathBuf, line: usize },
    #[error(
        "{path}:{line}: this line is read as part of a quoted value above it, so {key} would not be set; \
         check the quotes above (a backslash just before a closing ' is the usual cause)"
    )]
    Swallowed {
        path: PathBuf,
        line: usize,
        key: String,
    },
    #[error("{path}:{line}: {key}={value:?}: {why}")]
    Invalid {
        path: PathBuf,
        line: usize,
        key: &'static str,
        value: String,
        why: String,
    },
    #[error("{0}; the hook runs as root and trusts only files root controls")]
    Untrusted(#[from] TrustError),
    #[error(
        "{path}:{line}: {key}: {source}; the hook runs as root and trusts only files root controls"
    )]
    UntrustedNamed {
        path: PathBuf,
        line: usize,
        key: &'static str,
        source: TrustError,
    },
    #[error("{path}: {key} is not set: {why}")]
    Missing {
        path: PathBuf,
        key: &'static str,
        why: &'static str,
    },
    #[error("{path}:{line}: SITE_TEMPLATES_DIR={dir:?}: {why}")]
    TemplateDir {
        path: PathBuf,
        line: usize,
        dir: PathBuf,
        why: String,
    },
    #[error("site template {0}")]
    Template(#[from] TemplateError),
    #[error("{path}: CLUSTERS_D={dir:?}: {why}")]
    ClustersDir {
        path: PathBuf,
        dir: PathBuf,
        why: String,
    },
    #[error(
        "{path}: CLUSTERS_D={dir:?}: no file there is a Kubernetes cluster (v2.job.adapter: \"kubernetes\"), so a login would bootstrap nothing"
    )]
    NoClusters { path: PathBuf, dir: PathBuf },
    #[error("clusters.d {0}")]
    Cluster(#[from] clusters::ClusterFileError),
    #[error(
        "{path}:{line}: {key} cannot differ per cluster (one value serves the whole web node); set it in hook.env"
    )]
    NotPerCluster {
        path: PathBuf,
        line: usize,
        key: String,
    },
    #[error(
        "{path}:{line}: {key}={value:?} contradicts {says}; the dashboard uses the cluster file's value, so remove {key} from {path} or make the two agree"
    )]
    Contradiction {
        path: PathBuf,
        line: usize,
        key: &'static str,
        value: String,
        /// `clusters.d/gpu.yml (job.username_prefix: "g-")`.
        says: String,
    },
    #[error(
        "clusters {a} and {b} would both be reached through root's same kubeconfig and context; set ROOT_KUBECONFIG or ROOT_CONTEXT for {b} in {file}"
    )]
    SameRoot { a: String, b: String, file: PathBuf },
    #[error(
        "clusters {a} and {b} would write different {what} entries named {name:?} into the same ~/.kube/{file}; give one its own name or its own config_file"
    )]
    SameEntry {
        a: String,
        b: String,
        what: &'static str,
        name: String,
        file: String,
    },
    #[error(
        "{a} and {b}: both clusters are named {name:?} in users' kubeconfigs (job.cluster; ood_core's default is \"open-ondemand\") but use different credential broker token sets (issuer, client or audience); the broker tells clusters apart by that name, so one would be served the other's token: give one of them its own job.cluster"
    )]
    SameBrokerName {
        a: PathBuf,
        b: PathBuf,
        name: String,
    },
}

/// The image pull secret to create in each namespace.
#[derive(Clone, PartialEq, Eq)]
pub struct ImagePull {
    pub secret_name: ObjectName,
    /// Content of `REGISTRY_DOCKER_CONFIG_JSON`, checked to be a docker
    /// config with an `auths` object.
    pub docker_config_json: Secret,
    pub source: PathBuf,
}

impl fmt::Debug for ImagePull {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ImagePull")
            .field("secret_name", &self.secret_name)
            .field("source", &self.source)
            .finish_non_exhaustive()
    }
}

/// Whom the job-pod-reaper RoleBinding names (its Helm release can rename them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobPodReaper {
    pub cluster_role: ObjectName,
    pub service_account: ObjectName,
    pub namespace: ObjectName,
}

/// A Pod Security Admission level.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PsaLevel {
    Privileged,
    Baseline,
    Restricted,
}

impl PsaLevel {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Privileged => "privileged",
            Self::Baseline => "baseline",
            Self::Restricted => "restricted",
        }
    }
}

/// Pod Security Admission labels for the namespace; all off by default.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodSecurity {
    pub enforce: Option<PsaLevel>,
    pub audit: Option<PsaLevel>,
    pub warn: Option<PsaLevel>,
    /// `latest` or `v1.N`; applied to every mode that is set.
    pub version: Option<String>,
}

/// Which of the user's ids the namespace publishes as annotations.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Publish {
    /// `PUBLISH_UID_GID`: openondemand.org/uid and /gid.
    pub uid_gid: bool,
    /// `PUBLISH_GROUPS`: openondemand.org/supplemental-gids too.
    pub groups: bool,
}

/// How the user's kubeconfig entry carries credentials.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CredentialMode {
    /// The old hooks' `auth-provider: oidc` entry, field for field.
    #[default]
    AuthProvider,
    /// The access token as a plain bearer token; no secret at all.
    Token,
    /// This binary as a kubectl exec credential plugin with a per-user
    /// token cache; no client secret in the user's home.
    Exec,
    /// This binary as a kubectl exec plugin asking the root credential
    /// broker, which keeps the tokens root-only and refreshes them.
    Broker,
    /// Do not touch the user's kubeconfig (cluster side only).
    None,
}

impl CredentialMode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::AuthProvider => "auth-provider",
            Self::Token => "token",
            Self::Exec => "exec",
            Self::Broker => "broker",
            Self::None => "none",
        }
    }
}

/// OIDC client settings written into the kubeconfig.
#[derive(Debug, Clone, Default)]
pub struct Oidc {
    /// `IDP_ISSUER_URL`, with the shipped example's token-endpoint mistake
    /// corrected.
    pub issuer_url: Option<String>,
    pub client_id: Option<String>,
    pub client_secret: Option<Secret>,
    /// `IDP_CA_FILE`: CA bundle the exec plugin trusts the issuer with (for
    /// an IdP whose certificate is not from a system-trusted CA).
    pub ca_file: Option<PathBuf>,
    /// The content of `IDP_CA_FILE`, read (as root, trusted) at load time:
    /// auth-provider mode embeds it so kubectl's refresh trusts the IdP.
    pub ca_pem: Option<Vec<u8>>,
}

/// RFC 8693 token exchange at login (`exchange.rs`): the portal client
/// trades the portal's access token for one meant for Kubernetes.
#[derive(Debug, Clone)]
pub struct ExchangeSettings {
    /// `IDP_ISSUER_URL`: discovery finds the token endpoint there.
    pub issuer: String,
    /// `CLIENT_ID`/`CLIENT_SECRET`: the portal client, which the portal's
    /// tokens belong to.
    pub client_id: String,
    pub client_secret: Secret,
    /// `K8S_TOKEN_EXCHANGE_AUDIENCE`: the Kubernetes client id.
    pub audience: String,
    /// `K8S_TOKEN_EXCHANGE_SCOPE`: scopes to ask for, space separated.
    pub scope: Option<String>,
    /// PEM CA bundle for the issuer (`IDP_CA_FILE`).
    pub ca_pem: Option<Vec<u8>>,
}

/// What goes into the user's `~/.kube/config`.
#[derive(Debug, Clone)]
pub struct KubeconfigSettings {
    pub credentials: CredentialMode,
    /// `K8S_CLUSTER_NAME`: the dashboard's cluster entry name.
    pub cluster_name: String,
    /// `K8S_CONTEXT_NAME`: defaults to the cluster name, as the dashboard does.
    pub context_name: String,
    /// `K8S_SERVER`: when set, cluster and context entries are written too.
    pub server: Option<String>,
    /// `K8S_CA_FILE`: CA bundle for `K8S_SERVER`.
    pub ca_file: Option<PathBuf>,
    /// `K8S_EXEC_CLIENT_ID`: client the exec plugin refreshes with (no
    /// secret); defaults to `CLIENT_ID`.
    pub exec_client_id: Option<String>,
    /// `K8S_EXEC_COMMAND`: path of this binary as users' kubectl runs it.
    pub exec_command: Option<PathBuf>,
    /// The file in the user's `~/.kube` (`config` unless the cluster's
    /// clusters.d `config_file` names another).
    pub file: String,
}

/// The credential broker (`K8S_CREDENTIALS=broker`, `ood-k8s-bootstrap broker`).
#[derive(Debug, Clone)]
pub struct BrokerSettings {
    /// `BROKER_SOCKET`: the Unix socket users' kubectl asks.
    pub socket: PathBuf,
    /// `BROKER_STATE_DIR`: the root-only token sets, one file per uid.
    pub state_dir: PathBuf,
    /// `BROKER_IDP_TIMEOUT_SECONDS`: bound on one refresh at the IdP.
    pub idp_timeout: Duration,
    /// `BROKER_MAX_CONNECTIONS`: connections served at once.
    pub max_connections: usize,
    /// `BROKER_REQUESTS_PER_MINUTE`: per-uid rate.
    pub requests_per_minute: u32,
    /// `BROKER_MAX_SESSION_HOURS`: a stored login's longest life.
    pub max_session_hours: u32,
}

/// Who gets the cluster (`ALLOWED_GROUPS`, `DENIED_GROUPS`): Unix group
/// names.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GroupGate {
    pub allowed: Vec<String>,
    pub denied: Vec<String>,
}

/// Why a user does not get a gated cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GateRefusal {
    /// The user's groups say no: the cluster is skipped for them.
    NotFor(String),
    /// A group of the user has no name NSS could give, so whether the gate
    /// lets them in cannot be told: refused (fail closed), as an error.
    Undecided(String),
}

impl GroupGate {
    /// Why a user in `groups` does not get the cluster, if they do not. A
    /// denial matches names ignoring case and a domain (SSSD's
    /// `group@DOMAIN`, winbind's `DOMAIN\group`); an admission only the
    /// exact name. A group without a name refuses whatever could depend on
    /// it.
    pub fn refuses(&self, groups: &GroupNames) -> Option<GateRefusal> {
        let denied = self.denied.iter().find_map(|g| {
            groups
                .names
                .iter()
                .find(|n| same_group_denied(n, g))
                .map(|n| (n, g))
        });
        if let Some((name, g)) = denied {
            return Some(GateRefusal::NotFor(if name == g {
                format!("member of {g} (DENIED_GROUPS)")
            } else {
                format!("member of {name}, which DENIED_GROUPS names as {g}")
            }));
        }
        let allowed =
            self.allowed.is_empty() || self.allowed.iter().any(|g| groups.names.contains(g));
        if let (false, Some((gid, why))) =
            (self.denied.is_empty() && allowed, groups.unnamed.first())
        {
            let key = if self.denied.is_empty() {
                "ALLOWED_GROUPS"
            } else {
                "DENIED_GROUPS"
            };
            return Some(GateRefusal::Undecided(format!(
                "group {gid} of the user has no name ({why}), so {key} cannot be checked: \
                 refused until the group database (NSS: sssd, LDAP) names it"
            )));
        }
        if !allowed {
            return Some(GateRefusal::NotFor(format!(
                "not a member of {} (ALLOWED_GROUPS)",
                self.allowed.join(", ")
            )));
        }
        None
    }

    pub fn is_open(&self) -> bool {
        self.allowed.is_empty() && self.denied.is_empty()
    }
}

/// Whether the user's group `name` (as NSS reports it) is the `configured`
/// denied group: equal ignoring case and a domain part, so that no spelling
/// of a denied group lets its members in.
fn same_group_denied(name: &str, configured: &str) -> bool {
    fn bare(n: &str) -> String {
        let n = n.rsplit_once('\\').map_or(n, |(_, g)| g);
        n.split_once('@').map_or(n, |(g, _)| g).to_lowercase()
    }
    name == configured || bare(name) == bare(configured)
}

/// Several clusters (`CLUSTERS_D`, `HOOK_ENV_D`).
#[derive(Debug, Clone, Default)]
pub struct ClusterSources {
    /// The dashboard's clusters.d; none: one cluster, from hook.env alone.
    pub dir: Option<PathBuf>,
    /// Per-cluster overrides: `<cluster id>.env` here.
    pub overrides: PathBuf,
}

/// Root's credentials for the cluster (`ROOT_KUBECONFIG`, `ROOT_CONTEXT`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RootSettings {
    /// The kubeconfig file; None: `KUBECONFIG`, then `~/.kube/config`.
    pub kubeconfig: Option<PathBuf>,
    /// The context in it; None: its current context.
    pub context: Option<String>,
}

/// `reap` (the `REAP_*` keys).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReapSettings {
    /// `REAP_IDLE_DAYS`: idle this long = reaped; None = never by age.
    pub idle_days: Option<u32>,
    /// `REAP_DEPARTED`: reap the namespaces of logins gone from passwd.
    pub departed: bool,
    /// `REAP_MAX_PER_RUN`: more than this qualifying = delete none.
    pub max_per_run: usize,
}

/// Everything hook.env says, validated.
#[derive(Debug, Clone)]
pub struct Settings {
    /// `K8S_USERNAME_PREFIX`: kubeconfig user entry = prefix + username.
    pub username_prefix: String,
    /// `NAMESPACE_PREFIX`: namespace = prefix + username.
    pub namespace_prefix: String,
    /// `NETWORK_POLICY_ALLOW_CIDR`: one or more CIDRs (comma or space
    /// separated) allowed to reach the user's pods.
    pub allow_cidrs: Vec<IpNet>,
    /// `OIDC_USERNAME_PREFIX`: prefix of the RoleBinding's User subject, for
    /// API servers run with `--oidc-username-prefix`.
    pub user_subject_prefix: String,
    pub image_pull: Option<ImagePull>,
    pub job_pod_reaper: Option<JobPodReaper>,
    pub pod_security: PodSecurity,
    pub publish: Publish,
    /// `SITE_TEMPLATES_DIR`, read and checked (empty when unset).
    pub templates: TemplateSet,
    /// `PRUNE`: delete objects of ours no longer wanted.
    pub prune: bool,
    /// `HOOK_TIMEOUT_SECONDS`: bound on the whole run.
    pub timeout: Duration,
    /// `FAST_FAIL_SECONDS`: longest window of failing at once after the API
    /// server was unreachable; zero = off.
    pub fast_fail: Duration,
    pub oidc: Oidc,
    /// Set when `K8S_TOKEN_EXCHANGE_AUDIENCE` is.
    pub exchange: Option<ExchangeSettings>,
    pub kubeconfig: KubeconfigSettings,
    pub broker: BrokerSettings,
    pub reap: ReapSettings,
    pub log: LogSettings,
    pub root: RootSettings,
    pub groups: GroupGate,
    pub clusters: ClusterSources,
    /// The clusters.d id these settings are for (several clusters); none:
    /// hook.env alone.
    pub cluster_id: Option<String>,
    /// Things worth an admin's attention that do not stop the run.
    pub warnings: Vec<String>,
}

impl Settings {
    /// The cluster as lines and run records name it: its clusters.d id, or
    /// (hook.env alone) the kubeconfig's cluster name.
    pub fn cluster_label(&self) -> &str {
        self.cluster_id
            .as_deref()
            .unwrap_or(&self.kubeconfig.cluster_name)
    }

    /// Does computing a user's objects need their uid/gid (passwd entry)?
    pub fn needs_ids(&self) -> bool {
        self.publish.uid_gid || self.templates.uses_ids()
    }

    /// Reads and validates a hook.env file.
    pub fn load(path: &Path) -> Result<Self, SettingsError> {
        Self::parse(path, &read_hook_env(path)?)
    }

    /// Validates hook.env text; `path` is used for messages (file paths
    /// inside are absolute). The files it names are read as root trusts
    /// files.
    pub fn parse(path: &Path, text: &str) -> Result<Self, SettingsError> {
        Self::parse_with(path, text, &Trusted)
    }

    /// [`Settings::parse`] with the files hook.env names read through
    /// `files`: given a stand-in (fuzzing, tests), checking is pure.
    pub fn parse_with(
        path: &Path,
        text: &str,
        files: &dyn NamedFiles,
    ) -> Result<Self, SettingsError> {
        let file = EnvFile::parse(path, text)?;
        let warnings = unknown_keys(&file)?;
        Self::from_env(&file, files, warnings)
    }

    /// Validates keys already read (hook.env, or hook.env with a cluster's
    /// overrides laid over it: each error names the file its key came from).
    pub fn from_env(
        file: &EnvFile,
        files: &dyn NamedFiles,
        mut warnings: Vec<String>,
    ) -> Result<Self, SettingsError> {
        let mut draft = Draft::default();
        for key in KEYS {
            let (value, line) = file.get(key.name).unwrap_or((key.default, 0));
            (key.parse)(value, &mut draft)
                .map_err(|why| invalid(file, key.name, line, value, why))?;
            for note in draft.notes.drain(..) {
                let path = file.path_of(key.name).display();
                warnings.push(format!("{path}:{line}: {}: {note}", key.name));
            }
        }
        Checked { file, draft, files }.finish(warnings)
    }
}

/// hook.env's text, read as root trusts files.
fn read_hook_env(path: &Path) -> Result<String, SettingsError> {
    trusted::read_to_string(path).map_err(|e| match e {
        TrustError::Io { path, source } => SettingsError::Read { path, source },
        other => SettingsError::Untrusted(other),
    })
}

/// Where the files hook.env names are read. [`Trusted`] is the file system
/// under `crate::site::trusted`'s rules; fuzz targets and tests give a stand-in.
pub trait NamedFiles {
    /// A file's content, if root may trust it.
    fn read(&self, path: &Path) -> Result<Vec<u8>, TrustError>;
    /// Whether others than its owner may read the file (a warning for
    /// files holding secrets).
    fn readable_by_others(&self, path: &Path) -> bool;
    /// The template files of `SITE_TEMPLATES_DIR` as (path, text), in order.
    fn templates(&self, dir: &Path) -> Result<Vec<(String, String)>, String>;
}

/// The real file system, read as root trusts files.
pub struct Trusted;

impl NamedFiles for Trusted {
    fn read(&self, path: &Path) -> Result<Vec<u8>, TrustError> {
        trusted::read(path)
    }

    fn readable_by_others(&self, path: &Path) -> bool {
        use std::os::unix::fs::PermissionsExt;
        std::fs::metadata(path).is_ok_and(|m| m.permissions().mode() & 0o077 != 0)
    }

    fn templates(&self, dir: &Path) -> Result<Vec<(String, String)>, String> {
        template_dir::read(dir)
    }
}

/// Warnings for keys the table does not know (with a suggestion), errors for
/// keys that are refused outright.
pub fn unknown_keys(file: &EnvFile) -> Result<Vec<String>, SettingsError> {
    let mut warnings = Vec::new();
    for (name, entry) in &file.entries {
        if keys::find(name).is_some() || keys::pattern(name).is_some() {
            continue;
        }
        if let Some((key, why)) = keys::REFUSED.iter().find(|(k, _)| k == name) {
            return Err(invalid(
                file,
                key,
                entry.line,
                &entry.value,
                (*why).to_owned(),
            ));
        }
        let hint = match keys::closest(name) {
            Some(k) => format!("did you mean {k}?"),
            None => "`ood-k8s-bootstrap config --example` lists the keys this hook reads".into(),
        };
        warnings.push(format!(
            "{}:{}: unknown key {name} is ignored ({hint})",
            file.path.display(),
            entry.line
        ));
    }
    Ok(warnings)
}

fn invalid(
    file: &EnvFile,
    key: &'static str,
    line: usize,
    value: &str,
    why: String,
) -> SettingsError {
    SettingsError::Invalid {
        path: file.path_of(key).to_owned(),
        line,
        key,
        value: truncate(value, 80),
        // A key's parser may quote (part of) the value.
        why: crate::oneline::clean(&why, 400),
    }
}

/// The per-key values, ready for the checks that span keys.
struct Checked<'a> {
    file: &'a EnvFile,
    draft: Draft,
    files: &'a dyn NamedFiles,
}

impl Checked<'_> {
    fn missing(&self, key: &'static str, why: &'static str) -> SettingsError {
        SettingsError::Missing {
            path: self.file.path.clone(),
            key,
            why,
        }
    }

    fn invalid(&self, key: &'static str, value: &str, why: String) -> SettingsError {
        let line = self.file.get(key).map_or(0, |(_, l)| l);
        invalid(self.file, key, line, value, why)
    }

    fn finish(self, mut warnings: Vec<String>) -> Result<Settings, SettingsError> {
        if self.draft.allow_cidrs.is_empty() {
            return Err(self.missing(
                "NETWORK_POLICY_ALLOW_CIDR",
                "set it to the address (CIDR) of the OnDemand web node(s), e.g. 192.0.2.10/32, so the portal can reach users' pods",
            ));
        }
        if self.draft.credentials == CredentialMode::Exec
            && self.draft.username_prefix.starts_with('.')
        {
            return Err(self.invalid(
                "K8S_USERNAME_PREFIX",
                &self.draft.username_prefix,
                "with K8S_CREDENTIALS=exec the token cache file is named after the user entry, \
                 so the prefix may not start with '.'"
                    .into(),
            ));
        }
        let image_pull = self.image_pull(&mut warnings)?;
        self.check_trusted("K8S_CA_FILE", self.draft.k8s_ca_file.as_deref())?;
        // Root's kubeconfig decides what runs as root (an exec: user's
        // command): checked here, before anything reads it.
        self.check_trusted("ROOT_KUBECONFIG", self.draft.root_kubeconfig.as_deref())?;
        let idp_ca_pem = self.check_trusted("IDP_CA_FILE", self.draft.idp_ca_file.as_deref())?;
        let exchange = self.exchange(idp_ca_pem.clone())?;
        if self.draft.publish_groups && !self.draft.publish_uid_gid {
            return Err(self.invalid(
                "PUBLISH_GROUPS",
                "true",
                "needs PUBLISH_UID_GID=true as well".into(),
            ));
        }
        let templates = self.templates()?;
        let d = self.draft;
        let job_pod_reaper = match (
            d.use_job_pod_reaper,
            d.reaper_cluster_role,
            d.reaper_service_account,
            d.reaper_namespace,
        ) {
            (true, Some(cluster_role), Some(service_account), Some(namespace)) => {
                Some(JobPodReaper {
                    cluster_role,
                    service_account,
                    namespace,
                })
            }
            _ => None,
        };
        let credentials = d.credentials;
        if credentials == CredentialMode::Broker && d.client_secret.is_none() {
            warnings.push(format!(
                "{}: CLIENT_SECRET is not set: with K8S_CREDENTIALS=broker the broker refreshes \
                 users' tokens as a public client, which a portal's (confidential) client is not",
                self.file.path.display()
            ));
        }
        if matches!(
            credentials,
            CredentialMode::AuthProvider | CredentialMode::Exec | CredentialMode::Broker
        ) {
            for (key, set) in [
                ("IDP_ISSUER_URL", d.issuer_url.is_some()),
                ("CLIENT_ID", d.client_id.is_some()),
            ] {
                if !set {
                    warnings.push(format!(
                        "{}: {key} is not set, but K8S_CREDENTIALS={} needs it to refresh tokens",
                        self.file.path.display(),
                        credentials.as_str()
                    ));
                }
            }
        }
        Ok(Settings {
            username_prefix: d.username_prefix,
            namespace_prefix: d.namespace_prefix,
            allow_cidrs: d.allow_cidrs,
            user_subject_prefix: d.user_subject_prefix,
            image_pull,
            job_pod_reaper,
            pod_security: d.pod_security,
            publish: Publish {
                uid_gid: d.publish_uid_gid,
                groups: d.publish_groups,
            },
            templates,
            prune: d.prune,
            timeout: d.timeout,
            fast_fail: d.fast_fail,
            oidc: Oidc {
                issuer_url: d.issuer_url,
                client_id: d.client_id,
                client_secret: d.client_secret,
                ca_file: d.idp_ca_file,
                ca_pem: idp_ca_pem,
            },
            exchange,
            kubeconfig: KubeconfigSettings {
                credentials,
                context_name: d.context_name.unwrap_or_else(|| d.cluster_name.clone()),
                cluster_name: d.cluster_name,
                server: d.server,
                ca_file: d.k8s_ca_file,
                exec_client_id: d.exec_client_id,
                exec_command: d.exec_command,
                file: DEFAULT_KUBECONFIG_FILE.into(),
            },
            broker: BrokerSettings {
                socket: d.broker_socket,
                state_dir: d.broker_state_dir,
                idp_timeout: d.broker_idp_timeout,
                max_connections: d.broker_max_connections,
                requests_per_minute: d.broker_requests_per_minute,
                max_session_hours: d.broker_max_session_hours,
            },
            reap: ReapSettings {
                idle_days: d.reap_idle_days,
                departed: d.reap_departed,
                max_per_run: d.reap_max_per_run,
            },
            root: RootSettings {
                kubeconfig: d.root_kubeconfig,
                context: d.root_context,
            },
            groups: GroupGate {
                allowed: d.allowed_groups,
                denied: d.denied_groups,
            },
            clusters: ClusterSources {
                dir: d.clusters_d,
                overrides: d.hook_env_d,
            },
            cluster_id: None,
            log: LogSettings {
                target: d.log_target,
                socket: d.syslog_socket,
                metrics_file: d.metrics_file,
                last_run_dir: d.last_run_dir,
                heal_max_per_run: d.heal_max_per_run,
            },
            warnings,
        })
    }

    /// The token exchange, if asked for: it needs the issuer and the portal
    /// client with its secret.
    fn exchange(&self, ca_pem: Option<Vec<u8>>) -> Result<Option<ExchangeSettings>, SettingsError> {
        let d = &self.draft;
        let Some(audience) = d.exchange_audience.clone() else {
            return Ok(None);
        };
        const WHY: &str = "K8S_TOKEN_EXCHANGE_AUDIENCE is set: the exchange is made at the issuer as the portal client";
        let issuer = d
            .issuer_url
            .clone()
            .ok_or_else(|| self.missing("IDP_ISSUER_URL", WHY))?;
        let client_id = d
            .client_id
            .clone()
            .ok_or_else(|| self.missing("CLIENT_ID", WHY))?;
        let client_secret = d
            .client_secret
            .clone()
            .ok_or_else(|| self.missing("CLIENT_SECRET", WHY))?;
        Ok(Some(ExchangeSettings {
            issuer,
            client_id,
            client_secret,
            audience,
            scope: d.exchange_scope.clone(),
            ca_pem,
        }))
    }

    /// The site templates, read and checked now (with the `SITE_*` values).
    fn templates(&self) -> Result<TemplateSet, SettingsError> {
        let Some(dir) = &self.draft.site_templates_dir else {
            return Ok(TemplateSet::default());
        };
        let files = self
            .files
            .templates(dir)
            .map_err(|why| SettingsError::TemplateDir {
                path: self.file.path_of("SITE_TEMPLATES_DIR").to_owned(),
                line: self.file.get("SITE_TEMPLATES_DIR").map_or(0, |(_, l)| l),
                dir: dir.clone(),
                why,
            })?;
        let site: BTreeMap<String, String> = self
            .file
            .entries
            .iter()
            .filter(|(name, _)| keys::pattern(name).is_some())
            .map(|(name, e)| (name.clone(), e.value.clone()))
            .collect();
        Ok(TemplateSet::parse(&files, &site)?)
    }

    /// The pull secret: name and docker config, read now.
    fn image_pull(&self, warnings: &mut Vec<String>) -> Result<Option<ImagePull>, SettingsError> {
        let Some(secret_name) = self.draft.image_pull_secret.clone() else {
            return Ok(None);
        };
        let Some(file) = self.draft.registry_docker_config_json.clone() else {
            return Err(self.missing(
                "REGISTRY_DOCKER_CONFIG_JSON",
                "IMAGE_PULL_SECRET is set, so this must name the registry's docker config.json",
            ));
        };
        let (json, warning) = read_docker_config(self.files, &file).map_err(|why| {
            self.invalid("REGISTRY_DOCKER_CONFIG_JSON", &file.to_string_lossy(), why)
        })?;
        warnings.extend(warning);
        Ok(Some(ImagePull {
            secret_name,
            docker_config_json: json,
            source: file,
        }))
    }

    /// A file root reads because `key` names it must be one root controls;
    /// returns its content.
    fn check_trusted(
        &self,
        key: &'static str,
        path: Option<&Path>,
    ) -> Result<Option<Vec<u8>>, SettingsError> {
        let Some(path) = path else {
            return Ok(None);
        };
        self.files
            .read(path)
            .map(Some)
            .map_err(|source| SettingsError::UntrustedNamed {
                path: self.file.path_of(key).to_owned(),
                line: self.file.get(key).map_or(0, |(_, l)| l),
                key,
                source,
            })
    }
}

/// Reads a docker config.json, checking it is JSON with an `auths` object.
/// Returns the content and a warning if others can read the file.
fn read_docker_config(
    files: &dyn NamedFiles,
    path: &Path,
) -> Result<(Secret, Option<String>), String> {
    if !path.is_absolute() {
        return Err("expected an absolute path".into());
    }
    let bytes = files.read(path).map_err(|e| match e {
        TrustError::Io { source, .. } => format!("cannot read the file: {source}"),
        other => format!("{other}; the hook runs as root and trusts only files root controls"),
    })?;
    let text = String::from_utf8(bytes).map_err(|_| "cannot read the file: not UTF-8 text")?;
    if let Some(why) = docker_config_problem(&text) {
        return Err(why);
    }
    let warning = files.readable_by_others(path).then(|| {
        format!(
            "REGISTRY_DOCKER_CONFIG_JSON: {} holds registry credentials but is readable by others; chmod 600 it",
            path.display()
        )
    });
    Ok((Secret::new(text), warning))
}

/// What is wrong with a docker config.json's text, if anything: it must be
/// JSON with a non-empty `auths` object. Never quotes the content (it holds
/// registry credentials).
pub fn docker_config_problem(text: &str) -> Option<String> {
    let json: serde_json::Value = match serde_json::from_str(text) {
        Ok(v) => v,
        Err(e) => return Some(format!("the file is not valid JSON (line {})", e.line())),
    };
    match json.get("auths") {
        Some(serde_json::Value::Object(auths)) if !auths.is_empty() => None,
        Some(serde_json::Value::Object(_)) => Some("its \"auths\" object is empty".into()),
        _ => Some("the file has no \"auths\" object; expected a docker config.json".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: &str = "/etc/ood/config/hook.env";

    fn parse(text: &str) -> Result<Settings, SettingsError> {
        Settings::parse(Path::new(P), text)
    }

    fn err(text: &str) -> String {
        parse(text).expect_err("should fail").to_string()
    }

    fn gate(allowed: &[&str], denied: &[&str]) -> GroupGate {
        GroupGate {
            allowed: allowed.iter().map(|g| g.to_string()).collect(),
            denied: denied.iter().map(|g| g.to_string()).collect(),
        }
    }

    fn member_of(names: &[&str], unnamed: &[u32]) -> GroupNames {
        GroupNames {
            names: names.iter().map(|g| g.to_string()).collect(),
            unnamed: unnamed
                .iter()
                .map(|g| (*g, "no entry".to_owned()))
                .collect(),
        }
    }

    /// Issue 25 (12): a denied user is denied however NSS spells the group
    /// (SSSD's `Group@DOMAIN`, winbind's `DOMAIN\group`, another case),
    /// and a group without a name refuses rather than lets in (fail closed).
    #[test]
    fn the_group_gate_fails_closed() {
        let refused = |g: &GroupGate, m: &GroupNames| match g.refuses(m) {
            Some(GateRefusal::NotFor(why)) => format!("not for: {why}"),
            Some(GateRefusal::Undecided(why)) => format!("undecided: {why}"),
            None => "let in".to_owned(),
        };
        let deny = gate(&[], &["students"]);
        for spelling in [
            "students",
            "Students@AD.EXAMPLE",
            "AD\\students",
            "STUDENTS",
        ] {
            assert!(
                refused(&deny, &member_of(&["users", spelling], &[]))
                    .starts_with("not for: member of"),
                "{spelling}"
            );
        }
        let deny_qualified = gate(&[], &["students@ad.example"]);
        assert!(refused(&deny_qualified, &member_of(&["students"], &[])).starts_with("not for"));
        assert_eq!(
            refused(&deny, &member_of(&["users", "staff"], &[])),
            "let in"
        );
        // A gid without a name could be the denied group: refused, naming it.
        let why = refused(&deny, &member_of(&["users"], &[5005]));
        assert!(
            why.starts_with("undecided: group 5005") && why.contains("DENIED_GROUPS"),
            "{why}"
        );
        // Admission is by the exact name only; an unnamed gid cannot admit.
        let allow = gate(&["gpu"], &[]);
        assert_eq!(refused(&allow, &member_of(&["gpu"], &[5005])), "let in");
        assert!(
            refused(&allow, &member_of(&["GPU@AD"], &[]))
                .starts_with("not for: not a member of gpu")
        );
        let why = refused(&allow, &member_of(&["users"], &[5005]));
        assert!(
            why.starts_with("undecided: group 5005") && why.contains("ALLOWED_GROUPS"),
            "{why}"
        );
        // Denial wins over admission.
        let both = gate(&["gpu"], &["banned"]);
        assert!(
            refused(&both, &member_of(&["gpu", "Banned"], &[]))
                .starts_with("not for: member of Banned")
        );
        assert!(refused(&both, &member_of(&["gpu"], &[7])).starts_with("undecided"));
    }

    #[test]
    fn the_shipped_example_parses_with_old_meanings() {
        let s = parse(
            "# /etc/ood/config/hook.env\nK8S_USERNAME_PREFIX=\"\"\nNAMESPACE_PREFIX=\"\"\n\
             NETWORK_POLICY_ALLOW_CIDR=\"127.0.0.1/32\"\n\
             IDP_ISSUER_URL=\"https://idp.example.com/auth/realms/main/protocol/openid-connect/token\"\n\
             CLIENT_ID=\"changeme\"\nCLIENT_SECRET=\"changeme\"\nIMAGE_PULL_SECRET=\"\"\n\
             REGISTRY_DOCKER_CONFIG_JSON=\"/some/path/to/docker/config.json\"\nUSE_JOB_POD_REAPER=false\n",
        )
        .unwrap();
        assert_eq!(
            s.allow_cidrs,
            vec!["127.0.0.1/32".parse::<IpNet>().unwrap()]
        );
        assert!(s.image_pull.is_none() && s.job_pod_reaper.is_none());
        assert_eq!(
            s.oidc.issuer_url.as_deref(),
            Some("https://idp.example.com/auth/realms/main")
        );
        assert_eq!(s.kubeconfig.credentials, CredentialMode::AuthProvider);
        assert_eq!(s.kubeconfig.cluster_name, "open-ondemand");
        assert_eq!(s.kubeconfig.context_name, "open-ondemand");
        assert_eq!(s.timeout, Duration::from_secs(10));
        assert!(
            s.warnings.iter().any(|w| w.contains("not an issuer URL")),
            "{:?}",
            s.warnings
        );
    }

    #[test]
    fn shell_syntax_sites_have() {
        let s = parse(
            "export NAMESPACE_PREFIX='user-'\r\n  # comment\r\n\r\nexport NETWORK_POLICY_ALLOW_CIDR=\"10.0.0.0/8, 192.0.2.7\"\r\nK8S_USERNAME_PREFIX=prod-\r\n",
        )
        .unwrap();
        assert_eq!(s.namespace_prefix, "user-");
        assert_eq!(s.username_prefix, "prod-");
        assert_eq!(s.allow_cidrs.len(), 2);
        assert_eq!(s.allow_cidrs[1].to_string(), "192.0.2.7/32");
    }

    #[test]
    fn bad_cidr_names_key_and_line() {
        let msg = err("# x\nNETWORK_POLICY_ALLOW_CIDR=10.0.0.300/8\n");
        assert!(
            msg.contains("hook.env:2") && msg.contains("NETWORK_POLICY_ALLOW_CIDR"),
            "{msg}"
        );
        let msg = err("NETWORK_POLICY_ALLOW_CIDR=10.1.2.3/8\n");
        assert!(msg.contains("did you mean 10.0.0.0/8"), "{msg}");
    }

    #[test]
    fn broker_max_session_hours_is_checked() {
        let base = "NETWORK_POLICY_ALLOW_CIDR=10.0.0.0/8\n";
        assert_eq!(parse(base).unwrap().broker.max_session_hours, 24);
        let s = parse(&format!("{base}BROKER_MAX_SESSION_HOURS=1\n")).unwrap();
        assert_eq!(s.broker.max_session_hours, 1);
        for bad in ["0", "721", "1.5", "-1", "x"] {
            let msg = err(&format!("{base}BROKER_MAX_SESSION_HOURS={bad}\n"));
            assert!(
                msg.contains("hook.env:2")
                    && msg.contains("BROKER_MAX_SESSION_HOURS")
                    && msg.contains("from 1 to 720"),
                "{msg}"
            );
        }
    }

    #[test]
    fn missing_cidr_is_an_error() {
        let msg = err("NAMESPACE_PREFIX=user-\n");
        assert!(
            msg.contains("NETWORK_POLICY_ALLOW_CIDR is not set"),
            "{msg}"
        );
    }

    #[test]
    fn non_boolean_is_an_error() {
        let msg = err("NETWORK_POLICY_ALLOW_CIDR=10.0.0.0/8\nUSE_JOB_POD_REAPER=True\n");
        assert!(msg.contains(":2: USE_JOB_POD_REAPER=\"True\""), "{msg}");
    }

    #[test]
    fn psp_true_points_at_the_replacement() {
        let msg = err("NETWORK_POLICY_ALLOW_CIDR=10.0.0.0/8\nUSE_POD_SECURITY_POLICY=true\n");
        assert!(msg.contains("POD_SECURITY_ENFORCE"), "{msg}");
        assert!(
            parse("NETWORK_POLICY_ALLOW_CIDR=10.0.0.0/8\nUSE_POD_SECURITY_POLICY=false\n").is_ok()
        );
    }

    #[test]
    fn unknown_keys_warn_with_line() {
        let s = parse("NETWORK_POLICY_ALLOW_CIDR=10.0.0.0/8\n\nNAMESPACE_PREFX=x\n").unwrap();
        assert!(
            s.warnings
                .iter()
                .any(|w| w.contains(":3: unknown key NAMESPACE_PREFX")),
            "{:?}",
            s.warnings
        );
    }

    #[test]
    fn docker_config_checks() {
        let dir = std::env::temp_dir().join(format!("ood-settings-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let good = dir.join("good.json");
        std::fs::write(&good, r#"{"auths":{"r.example":{"auth":"dTpw"}}}"#).unwrap();
        let noauths = dir.join("noauths.json");
        std::fs::write(&noauths, r#"{"credHelpers":{}}"#).unwrap();
        let base = "NETWORK_POLICY_ALLOW_CIDR=10.0.0.0/8\nIMAGE_PULL_SECRET=regcred\n";

        let s = parse(&format!(
            "{base}REGISTRY_DOCKER_CONFIG_JSON={}\n",
            good.display()
        ))
        .unwrap();
        let ip = s.image_pull.unwrap();
        assert_eq!(ip.secret_name.as_str(), "regcred");
        assert!(ip.docker_config_json.expose().contains("auths"));

        let msg = err(&format!(
            "{base}REGISTRY_DOCKER_CONFIG_JSON={}\n",
            noauths.display()
        ));
        assert!(
            msg.contains("REGISTRY_DOCKER_CONFIG_JSON") && msg.contains("auths"),
            "{msg}"
        );
        let msg = err(&format!(
            "{base}REGISTRY_DOCKER_CONFIG_JSON={}/missing.json\n",
            dir.display()
        ));
        assert!(msg.contains("cannot read"), "{msg}");
        let msg = err(base);
        assert!(
            msg.contains("REGISTRY_DOCKER_CONFIG_JSON is not set"),
            "{msg}"
        );
        let msg = err(
            "NETWORK_POLICY_ALLOW_CIDR=10.0.0.0/8\nIMAGE_PULL_SECRET=Reg_Cred\nREGISTRY_DOCKER_CONFIG_JSON=/x\n",
        );
        assert!(msg.contains("IMAGE_PULL_SECRET"), "{msg}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn new_keys_and_defaults() {
        let s = parse(
            "NETWORK_POLICY_ALLOW_CIDR=10.0.0.0/8\nUSE_JOB_POD_REAPER=true\nJOB_POD_REAPER_NAMESPACE=reaper\n\
             POD_SECURITY_ENFORCE=restricted\nPOD_SECURITY_VERSION=v1.33\nHOOK_TIMEOUT_SECONDS=4\nOIDC_USERNAME_PREFIX=oidc:\n",
        );
        // ':' is fine in the subject prefix (`oidc:`), not in the others.
        assert_eq!(s.unwrap().user_subject_prefix, "oidc:");
        assert!(
            err("NETWORK_POLICY_ALLOW_CIDR=10.0.0.0/8\nK8S_USERNAME_PREFIX=a:b\n")
                .contains("K8S_USERNAME_PREFIX")
        );
        let s = parse(
            "NETWORK_POLICY_ALLOW_CIDR=10.0.0.0/8\nUSE_JOB_POD_REAPER=true\nJOB_POD_REAPER_NAMESPACE=reaper\n\
             POD_SECURITY_ENFORCE=restricted\nPOD_SECURITY_VERSION=v1.33\nHOOK_TIMEOUT_SECONDS=4\nOIDC_USERNAME_PREFIX=oidc-\n",
        )
        .unwrap();
        let r = s.job_pod_reaper.unwrap();
        assert_eq!(
            (r.cluster_role.as_str(), r.namespace.as_str()),
            ("job-pod-reaper", "reaper")
        );
        assert_eq!(s.pod_security.enforce, Some(PsaLevel::Restricted));
        assert_eq!(s.timeout, Duration::from_secs(4));
        assert_eq!(s.user_subject_prefix, "oidc-");
        assert!(
            err("NETWORK_POLICY_ALLOW_CIDR=10.0.0.0/8\nPOD_SECURITY_ENFORCE=strict\n")
                .contains("POD_SECURITY_ENFORCE")
        );
        assert!(
            err("NETWORK_POLICY_ALLOW_CIDR=10.0.0.0/8\nHOOK_TIMEOUT_SECONDS=0\n")
                .contains("HOOK_TIMEOUT_SECONDS")
        );
        assert!(
            err("NETWORK_POLICY_ALLOW_CIDR=10.0.0.0/8\nNAMESPACE_PREFIX=User-\n")
                .contains("NAMESPACE_PREFIX")
        );
    }

    #[test]
    fn shipped_example_documents_every_key_and_parses_cleanly() {
        let example = include_str!("../../../hooks/hook.env.example");
        let s = parse(example).unwrap();
        assert!(
            !s.warnings.iter().any(|w| w.contains("unknown key")),
            "{:?}",
            s.warnings
        );
    }

    #[test]
    fn site_values_and_templates() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("ood-settings-tpl-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let file = dir.join("quota.yaml");
        std::fs::write(
            &file,
            "apiVersion: v1\nkind: ResourceQuota\nmetadata: {name: quota}\nspec: {hard: {cpu: \"${SITE_CPU}\"}}\n",
        )
        .unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
        let base = format!(
            "NETWORK_POLICY_ALLOW_CIDR=10.0.0.0/8\nSITE_TEMPLATES_DIR={}\n",
            dir.display()
        );
        let s = parse(&format!("{base}SITE_CPU=4\nPRUNE=true\n")).unwrap();
        assert!(
            !s.warnings.iter().any(|w| w.contains("SITE_")),
            "{:?}",
            s.warnings
        );
        assert!(!s.templates.is_empty() && s.prune && !s.needs_ids());
        let msg = err(&base);
        assert!(
            msg.contains("quota.yaml:4") && msg.contains("SITE_CPU is not set"),
            "{msg}"
        );
        let msg = err("NETWORK_POLICY_ALLOW_CIDR=10.0.0.0/8\nSITE_TEMPLATES_DIR=/nonexistent/t\n");
        assert!(msg.contains(":2: SITE_TEMPLATES_DIR"), "{msg}");
        let msg = err("NETWORK_POLICY_ALLOW_CIDR=10.0.0.0/8\nPUBLISH_GROUPS=true\n");
        assert!(msg.contains("PUBLISH_UID_GID"), "{msg}");
        let s = parse("NETWORK_POLICY_ALLOW_CIDR=10.0.0.0/8\nPUBLISH_UID_GID=true\n").unwrap();
        assert!(s.needs_ids());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn syntax_error_names_line() {
        let msg = err("NETWORK_POLICY_ALLOW_CIDR=10.0.0.0/8\nthis is not a pair\n");
        assert!(msg.contains("hook.env:2"), "{msg}");
    }

    /// Found writing the invariants of fuzz/fuzz_targets/hook_env.rs:
    /// values that were accepted but make objects the API server refuses,
    /// or a run that fails after the cluster side is done.
    #[test]
    fn fuzz_found_values_are_refused_up_front() {
        let base = "NETWORK_POLICY_ALLOW_CIDR=10.0.0.0/8\n";
        for cidrs in ["','", "' , '"] {
            let msg = err(&format!("NETWORK_POLICY_ALLOW_CIDR={cidrs}\n"));
            assert!(
                msg.contains(":1: NETWORK_POLICY_ALLOW_CIDR") && msg.contains("no CIDR"),
                "{msg}"
            );
        }
        let s = parse("NETWORK_POLICY_ALLOW_CIDR=\"10.0.0.0/8\n192.0.2.1\"\n").unwrap();
        assert_eq!(s.allow_cidrs.len(), 2);
        let long = format!("{base}POD_SECURITY_VERSION=v1.{}\n", "0".repeat(61));
        assert!(err(&long).contains(":2: POD_SECURITY_VERSION"));
        assert!(parse(&format!("{base}POD_SECURITY_VERSION=v1.100\n")).is_ok());
        let msg = err(&format!(
            "{base}USE_JOB_POD_REAPER=true\nJOB_POD_REAPER_NAMESPACE=a.b\n"
        ));
        assert!(
            msg.contains(":3: JOB_POD_REAPER_NAMESPACE") && msg.contains("not a namespace name"),
            "{msg}"
        );
        let msg = err(&format!(
            "{base}K8S_CREDENTIALS=exec\nK8S_USERNAME_PREFIX=.k8s-\n"
        ));
        assert!(
            msg.contains(":3: K8S_USERNAME_PREFIX") && msg.contains("may not start with '.'"),
            "{msg}"
        );
        assert!(parse(&format!("{base}K8S_USERNAME_PREFIX=.k8s-\n")).is_ok());
        let msg = err(&format!("{base}K8S_USERNAME_PREFIX={}\n", "p".repeat(101)));
        assert!(msg.contains("at most 100 bytes"), "{msg}");
    }

    /// Control characters in a URL or path were accepted and quoted raw in
    /// warnings and errors (one syslog line each); a CIDR part with one was
    /// quoted raw in the error, and `https:///` became the server `https:`
    /// (found by fuzz/fuzz_targets/hook_env.rs).
    #[test]
    fn urls_and_paths_with_control_characters_are_refused() {
        for (key, value) in [
            (
                "IDP_ISSUER_URL",
                "https://idp/a\nb/protocol/openid-connect/token",
            ),
            ("K8S_SERVER", "https://k8s\u{1b}[2J:6443"),
            ("K8S_CA_FILE", "/etc/pki/ca\n.pem"),
            ("PRUNE", "tr\u{1}ue"),
            ("K8S_SERVER", "https:///"),
            ("IDP_ISSUER_URL", "https://"),
        ] {
            let msg = err(&format!(
                "NETWORK_POLICY_ALLOW_CIDR=10.0.0.0/8\n{key}=\"{value}\"\n"
            ));
            assert!(
                msg.contains(&format!(":2: {key}")) && !msg.chars().any(char::is_control),
                "{msg:?}"
            );
        }
        let msg = err("NETWORK_POLICY_ALLOW_CIDR=\"10.0.0.0/8,2001:\u{1}\0db8::/64\"\n");
        assert!(
            msg.contains("not a CIDR") && !msg.chars().any(char::is_control),
            "{msg:?}"
        );
    }

    #[test]
    fn a_swallowed_line_is_an_error_naming_it() {
        let msg = err("NETWORK_POLICY_ALLOW_CIDR=10.0.0.0/8\nA='x\\'\nPRUNE='true\\'\n");
        assert!(
            msg.contains("hook.env:3") && msg.contains("PRUNE would not be set"),
            "{msg}"
        );
    }

    /// Files hook.env names, without a file system: `/etc/*.json` is a
    /// docker config, `/etc/*.pem` a CA bundle, `/etc/templates` holds one
    /// template, nothing else exists.
    struct StandIn;

    impl NamedFiles for StandIn {
        fn read(&self, path: &Path) -> Result<Vec<u8>, TrustError> {
            let ext = path.extension().and_then(|e| e.to_str());
            match (path.starts_with("/etc"), ext) {
                (true, Some("json")) => Ok(br#"{"auths":{"r.example":{}}}"#.to_vec()),
                (true, Some("pem")) => Ok(b"-----BEGIN CERTIFICATE-----\n".to_vec()),
                _ => Err(TrustError::Io {
                    path: path.to_owned(),
                    source: std::io::ErrorKind::NotFound.into(),
                }),
            }
        }
        fn readable_by_others(&self, path: &Path) -> bool {
            path.to_string_lossy().contains("public")
        }
        fn templates(&self, dir: &Path) -> Result<Vec<(String, String)>, String> {
            match dir == Path::new("/etc/templates") {
                true => Ok(vec![(
                    "/etc/templates/quota.yaml".into(),
                    "apiVersion: v1\nkind: ResourceQuota\nmetadata: {name: q}\nspec: {hard: {cpu: \"${SITE_CPU}\"}}\n".into(),
                )]),
                false => Err(format!("{}: cannot read it", dir.display())),
            }
        }
    }

    #[test]
    fn a_stand_in_for_the_named_files() {
        let s = Settings::parse_with(
            Path::new(P),
            "NETWORK_POLICY_ALLOW_CIDR=10.0.0.0/8\nIMAGE_PULL_SECRET=reg\n\
             REGISTRY_DOCKER_CONFIG_JSON=/etc/public.json\nSITE_TEMPLATES_DIR=/etc/templates\nSITE_CPU=2\n",
            &StandIn,
        )
        .unwrap();
        assert!(s.image_pull.is_some() && s.templates.len() == 1);
        assert!(s.warnings.iter().any(|w| w.contains("readable by others")));
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            /// Arbitrary text never panics; an error names the file and is
            /// one line.
            #[test]
            fn arbitrary_text_is_settings_or_one_line_error(text in "\\PC*|(?s).{0,200}") {
                if let Err(e) = Settings::parse_with(Path::new(P), &text, &StandIn) {
                    let msg = e.to_string();
                    prop_assert!(msg.contains(P), "{}", msg);
                    prop_assert!(!msg.chars().any(char::is_control), "{:?}", msg);
                }
            }

            /// Known keys with plausible and odd values: settings whose
            /// names the API server accepts, or an error naming the key.
            #[test]
            fn known_keys_with_odd_values(
                values in proptest::collection::vec(
                    (proptest::sample::select(KEYS.iter().map(|k| k.name).collect::<Vec<_>>()), "[ -~]{0,70}"),
                    0..10,
                ),
            ) {
                let mut text = String::from("NETWORK_POLICY_ALLOW_CIDR=10.0.0.0/8\n");
                for (key, value) in &values {
                    text.push_str(&format!("{key}='{}'\n", value.replace('\'', "")));
                }
                match Settings::parse_with(Path::new(P), &text, &StandIn) {
                    Ok(s) => {
                        prop_assert!(!s.allow_cidrs.is_empty());
                        if let Some(v) = &s.pod_security.version {
                            prop_assert!(v.len() <= 63, "label value {:?}", v);
                        }
                        if let Some(r) = &s.job_pod_reaper {
                            prop_assert!(crate::site::names::dns1123_label_problem(r.namespace.as_str()).is_none());
                        }
                        for w in &s.warnings {
                            prop_assert!(!w.chars().any(char::is_control), "{:?}", w);
                        }
                    }
                    Err(e) => {
                        let msg = e.to_string();
                        let names_key = values.iter().any(|(k, _)| msg.contains(k));
                        let syntax = matches!(e, SettingsError::Syntax { line, .. } if line >= 2);
                        prop_assert!(names_key || syntax, "{}", msg);
                        prop_assert!(!msg.chars().any(char::is_control), "{:?}", msg);
                    }
                }
            }
        }
    }
}
