//! Everything `doctor` looks at, as plain data. `gather` fills it in (the
//! I/O); `checks` judges it (pure), so every verdict and fix text is unit
//! tested without a cluster. A failed lookup is a fact too (`Err(why)`).

use std::path::PathBuf;

use serde_json::{Map, Value};

use crate::site::settings::Settings;

/// A file hook.env names (or hook.env itself), as `lstat` saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileFact {
    /// The key naming it (`hook.env` for the file itself).
    pub key: &'static str,
    pub path: PathBuf,
    pub meta: Result<FileMeta, String>,
    /// Holds a secret: must not be readable by others.
    pub secret: bool,
    /// Run by users (K8S_EXEC_COMMAND): must be executable.
    pub executable: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileMeta {
    pub uid: u32,
    pub mode: u32,
    pub symlink: bool,
    pub regular: bool,
}

/// hook.env and what it names.
#[derive(Debug, Clone)]
pub struct HookEnvFacts {
    pub path: PathBuf,
    pub settings: Result<Settings, String>,
    /// `IDP_ISSUER_URL` as written (settings may have corrected it).
    pub raw_issuer: Option<String>,
    pub files: Vec<FileFact>,
}

/// Root's kubeconfig and the token in it (never the token itself).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RootFacts {
    pub file: PathBuf,
    pub context: String,
    pub user: String,
    /// `a token`, `a client certificate`, ...
    pub credential: String,
    /// (namespace, name) of the ServiceAccount the token belongs to.
    pub account: Option<(String, String)>,
    pub expiry: Option<u64>,
}

/// One SelfSubjectAccessReview: may root do `verb` on `resource`?
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Access {
    pub verb: &'static str,
    /// API group (empty for the core group).
    pub group: &'static str,
    /// `resource` or `resource/subresource`.
    pub resource: &'static str,
    pub namespace: String,
    pub name: Option<String>,
    pub allowed: Result<bool, String>,
}

impl Access {
    /// `patch networkpolicies.networking.k8s.io in alice`.
    pub fn describe(&self) -> String {
        let res = if self.group.is_empty() {
            self.resource.to_owned()
        } else {
            format!("{}.{}", self.resource, self.group)
        };
        let name = self
            .name
            .as_deref()
            .map(|n| format!(" {n}"))
            .unwrap_or_default();
        let ns = if self.namespace.is_empty() {
            String::new()
        } else {
            format!(" in namespace {}", self.namespace)
        };
        format!("{} {res}{name}{ns}", self.verb)
    }
}

/// Can root bind ClusterRole `role` in a RoleBinding (a dry-run create,
/// exactly what a hook run does), does it exist, and does root hold `bind`
/// on it (the fast path for first logins).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BindFact {
    pub role: String,
    /// Status of GET clusterroles/ROLE (403 without `get` on it).
    pub get: Result<u16, String>,
    /// Status and message of the dry-run RoleBinding create.
    pub bind: Result<(u16, String), String>,
    /// Does root hold the `bind` verb on the role (SelfSubjectAccessReview)?
    /// Without it the API server proves each new binding against root's
    /// own rights, which also proves the role exists, but slowly.
    pub may_bind: Result<bool, String>,
}

/// A GET of one object: its status (200, 404, ...) or why no answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectFact {
    pub describe: String,
    pub status: Result<u16, String>,
}

/// What the API server says to root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterFacts {
    pub server: String,
    /// `gitVersion`, or why the server did not answer.
    pub version: Result<String, String>,
    /// The username root's credentials authenticate as.
    pub whoami: Result<String, String>,
    pub access: Vec<Access>,
    pub binds: Vec<BindFact>,
    /// With the reaper enabled: its namespace and ServiceAccount.
    pub reaper: Vec<ObjectFact>,
    /// May root's account renew its own token (install --self-renew)?
    pub self_renew: Option<Access>,
    /// Login storms: the `ondemand` FlowSchema and what classified root's
    /// own request for it.
    pub flow: Result<FlowFact, String>,
}

/// A GET of FlowSchema `ondemand` (hooks/ondemand-apf.yaml) as root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlowFact {
    /// 200, 404, 403, ...
    pub status: u16,
    /// Its UID, when it was read.
    pub uid: Option<String>,
    /// The UID the API server named in that answer's
    /// `X-Kubernetes-PF-FlowSchema-UID` (none: API Priority and Fairness
    /// is off).
    pub classified_by: Option<String>,
}

/// An OIDC discovery document's interesting part.
pub use crate::credentials::idp::Discovery;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuerFacts {
    /// As written in hook.env.
    pub configured: String,
    /// What the hook uses (settings' correction of a token endpoint).
    pub effective: String,
    pub discovery: Result<Discovery, String>,
    /// When discovery failed: a parent URL whose discovery document lists
    /// `configured` as its token endpoint.
    pub issuer_of_endpoint: Option<Discovery>,
    /// `K8S_TOKEN_EXCHANGE_AUDIENCE`, when a token exchange is configured.
    pub exchange_audience: Option<String>,
}

/// The user's kubeconfig as it is now (only what doctor reports).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserKubeconfig {
    pub path: PathBuf,
    /// `auth-provider`, `token`, `exec`, ... of the hook's user entry.
    pub entry: Option<String>,
    /// (cluster, user, namespace) of the dashboard's context entry.
    pub context: Option<(String, String, String)>,
}

/// `--user`: the user as the API server and the cluster see them.
#[derive(Debug, Clone, PartialEq)]
pub struct UserFacts {
    pub user: String,
    pub namespace: Result<String, String>,
    /// Where the token came from, or None without one.
    pub token_source: Option<String>,
    pub claims: Option<Result<Map<String, Value>, String>>,
    /// With a token exchange configured: whether the IdP exchanged the
    /// token (the review then uses the exchanged one, as the hook would).
    /// A failure is (what happened, the fix).
    pub exchange: Option<Result<(), (String, String)>>,
    /// SelfSubjectReview with the user's token.
    pub review: Option<Result<String, String>>,
    pub objects: Vec<ObjectFact>,
    /// Whose the namespace is, as the hook would find it (`owner.rs`): the
    /// answer, or why this login would be refused. None without a cluster.
    pub owner: Option<Result<String, String>>,
    pub kubeconfig: Result<UserKubeconfig, String>,
    /// The user's last hook run as kept in `LAST_RUN_DIR` (`key="value"`
    /// fields); None when none is kept, or `LAST_RUN_DIR` is empty.
    pub last_run: Result<Option<String>, String>,
    /// The user's pending cluster sides (`heal`), empty when none.
    pub pending: Result<crate::pending::Note, String>,
}

/// One Kubernetes cluster of the dashboard (`clusters.d/*.yml`,
/// `v2.job.adapter: kubernetes`), with ood_core's defaults filled in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DashboardCluster {
    pub file: PathBuf,
    pub username_prefix: String,
    pub namespace_prefix: String,
    pub cluster: String,
    pub context: Option<String>,
    pub auth_type: String,
    pub config_file: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DashboardFacts {
    pub dir: PathBuf,
    pub clusters: Vec<DashboardCluster>,
    /// Files that could not be read or parsed.
    pub unreadable: Vec<(PathBuf, String)>,
    /// Files holding ERB (`<%`), which ood_core does not evaluate in
    /// clusters.d (any adapter's).
    pub erb: Vec<PathBuf>,
}

/// The renewal timer as systemd reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Timer {
    /// No systemd here.
    NoSystemd,
    /// systemd does not know the timer (not installed).
    NotInstalled,
    /// The timer's state; `next` is systemd's own rendering of the next run.
    State { active: bool, next: Option<String> },
}

/// Everything gathered, at time `now`.
#[derive(Debug, Clone)]
pub struct Facts {
    pub now: u64,
    pub hook_env: HookEnvFacts,
    pub root: Result<RootFacts, String>,
    /// Err: no connection could even be set up (the kubeconfig).
    pub cluster: Result<ClusterFacts, String>,
    pub issuer: Option<IssuerFacts>,
    pub user: Option<UserFacts>,
    pub dashboard: Option<DashboardFacts>,
    pub timer: Timer,
    /// The logins this node noted as pending (`heal`); None without
    /// `LAST_RUN_DIR` (or hook.env).
    pub pending: Option<Result<PendingFacts, String>>,
}

/// The logins whose cluster side is still to be made (`pending.rs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PendingFacts {
    pub users: usize,
    /// Of them, those pending longer than [`PENDING_WARN_SECS`].
    pub stale: usize,
    /// How long the longest has been pending, seconds.
    pub longest: u64,
}

/// A login pending longer than this warns: the heal timer runs every
/// minute, so a few minutes means the cluster is still down or nothing
/// heals.
pub const PENDING_WARN_SECS: u64 = 300;
