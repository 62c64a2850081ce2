//! Every hook.env key, defined once: name, meaning, default, the form of its
//! value and the small function that parses it. The parser, the shipped
//! example (`hooks/hook.env.example`, `config --example`) and the
//! hook.env(5) man page are all derived from [`KEYS`], so they cannot drift
//! (a test compares the shipped example with [`example`]). Adding a key is
//! one entry here plus its field in [`Draft`].

use std::path::PathBuf;
use std::time::Duration;

use ipnet::IpNet;

use super::{CredentialMode, PodSecurity, PsaLevel};
use crate::secret::Secret;
use crate::site::names::{ObjectName, dns1123_label_problem};

/// Which part of the example file a key is listed in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Section {
    /// Keys the old bash hooks read; their meaning is unchanged.
    OldHooks,
    /// Keys this program added; their defaults keep the old behaviour.
    New,
}

impl Section {
    fn title(self) -> &'static str {
        match self {
            Self::OldHooks => "keys of the old hooks (same meaning)",
            Self::New => "new keys (defaults keep the old behaviour)",
        }
    }
}

/// One hook.env key.
pub struct Key {
    pub name: &'static str,
    pub section: Section,
    /// May be set for one cluster in `HOOK_ENV_D/<cluster id>.env` (otherwise
    /// only in hook.env: one value for the whole web node).
    pub per_cluster: bool,
    /// What it means, for admins: the example's comment and the man page.
    pub doc: &'static str,
    /// The form of the value (`true|false`, `CIDR[,CIDR...]`, ...).
    pub value: &'static str,
    /// Used when the key is unset or empty; parsed like a given value.
    pub default: &'static str,
    /// The value the shipped example shows.
    pub example: &'static str,
    /// Checks a (trimmed, non-default or default) value and records it.
    pub parse: fn(&str, &mut Draft) -> Result<(), String>,
}

/// Settings as the per-key parsers fill them in; `Settings::parse` then
/// checks what spans keys and reads the files they name.
#[derive(Debug, Default)]
pub struct Draft {
    pub username_prefix: String,
    pub namespace_prefix: String,
    pub allow_cidrs: Vec<IpNet>,
    pub issuer_url: Option<String>,
    pub idp_ca_file: Option<PathBuf>,
    pub client_id: Option<String>,
    pub client_secret: Option<Secret>,
    pub image_pull_secret: Option<ObjectName>,
    pub registry_docker_config_json: Option<PathBuf>,
    pub use_job_pod_reaper: bool,
    pub user_subject_prefix: String,
    pub reaper_cluster_role: Option<ObjectName>,
    pub reaper_service_account: Option<ObjectName>,
    pub reaper_namespace: Option<ObjectName>,
    pub pod_security: PodSecurity,
    pub timeout: Duration,
    pub fast_fail: Duration,
    pub credentials: CredentialMode,
    pub cluster_name: String,
    pub context_name: Option<String>,
    pub server: Option<String>,
    pub k8s_ca_file: Option<PathBuf>,
    pub exec_client_id: Option<String>,
    pub exec_command: Option<PathBuf>,
    pub exchange_audience: Option<String>,
    pub exchange_scope: Option<String>,
    pub site_templates_dir: Option<PathBuf>,
    pub publish_uid_gid: bool,
    pub publish_groups: bool,
    pub prune: bool,
    pub broker_socket: PathBuf,
    pub broker_state_dir: PathBuf,
    pub broker_idp_timeout: Duration,
    pub broker_max_connections: usize,
    pub broker_requests_per_minute: u32,
    pub broker_max_session_hours: u32,
    pub reap_idle_days: Option<u32>,
    pub reap_departed: bool,
    pub reap_max_per_run: usize,
    pub log_target: super::LogTarget,
    pub syslog_socket: PathBuf,
    pub metrics_file: Option<PathBuf>,
    pub last_run_dir: Option<PathBuf>,
    pub heal_max_per_run: usize,
    pub root_kubeconfig: Option<PathBuf>,
    pub root_context: Option<String>,
    pub clusters_d: Option<PathBuf>,
    pub hook_env_d: PathBuf,
    pub allowed_groups: Vec<String>,
    pub denied_groups: Vec<String>,
    /// Remarks about the value just parsed (not errors); the caller adds
    /// file, line and key.
    pub notes: Vec<String>,
}

/// Keys that are refused with a reason, though not documented.
pub const REFUSED: &[(&str, &str)] = &[(
    "K8S_TOKEN_EXCHANGE_CLIENT_ID",
    "not a key: the token exchange is made as the portal client (CLIENT_ID, CLIENT_SECRET); \
     set K8S_TOKEN_EXCHANGE_AUDIENCE to the Kubernetes client id instead",
)];

/// A family of keys recognised by prefix rather than listed one by one.
pub struct Pattern {
    pub prefix: &'static str,
    pub doc: &'static str,
    /// An example key of the family and its value, shown commented out.
    pub example: (&'static str, &'static str),
}

/// The key families: their keys are never "unknown".
pub const PATTERNS: &[Pattern] = &[Pattern {
    prefix: crate::cluster::templates::SITE_PREFIX,
    doc: "Site values for the templates in SITE_TEMPLATES_DIR: any key starting with SITE_ \
          (other than SITE_TEMPLATES_DIR) is one, and a template's ${SITE_NAME} is replaced by \
          the value of SITE_NAME. A template naming one that is not set is refused.",
    example: ("SITE_QUOTA_CPU", "16"),
}];

/// The key family `name` belongs to, if any (known keys excluded).
pub fn pattern(name: &str) -> Option<&'static Pattern> {
    if find(name).is_some() {
        return None;
    }
    PATTERNS
        .iter()
        .find(|p| name.len() > p.prefix.len() && name.starts_with(p.prefix))
}

/// The keys, in the order of the shipped example.
pub const KEYS: &[Key] = &[
    Key {
        name: "K8S_USERNAME_PREFIX",
        section: Section::OldHooks,
        per_cluster: true,
        doc: "Prefix of the user entry's name in ~/.kube/config (no hyphen is added); \
              must equal `username_prefix` in the cluster's clusters.d file. In exec mode it \
              may not start with '.' (the token cache file is named after the entry).",
        value: "text without whitespace, '/' or ':', at most 100 bytes",
        default: "",
        example: "",
        parse: |v, d| prefix(v).map(|p| d.username_prefix = p),
    },
    Key {
        name: "NAMESPACE_PREFIX",
        section: Section::OldHooks,
        per_cluster: true,
        doc: "Namespace = NAMESPACE_PREFIX + username, with \".\" and \"@\" turned into \"-\", \
              exactly as the dashboard computes it; must equal `namespace_prefix`.",
        value: "lower-case letters, digits and '-', starting with a letter or digit",
        default: "",
        example: "",
        parse: |v, d| {
            let p = prefix(v)?;
            if !p.is_empty()
                && let Some(why) = dns1123_label_problem(&format!("{p}x"))
            {
                return Err(format!("namespaces would be invalid: {why}"));
            }
            d.namespace_prefix = p;
            Ok(())
        },
    },
    Key {
        name: "NETWORK_POLICY_ALLOW_CIDR",
        section: Section::OldHooks,
        per_cluster: true,
        doc: "Required. CIDR(s) besides the namespace's own pods allowed to reach the user's \
              pods: the OnDemand web node(s). Several may be given, separated by commas or \
              spaces (e.g. \"192.0.2.10/32, 192.0.2.11/32\").",
        value: "CIDR[,CIDR...]",
        default: "",
        example: "127.0.0.1/32",
        parse: |v, d| cidrs(v).map(|c| d.allow_cidrs = c),
    },
    Key {
        name: "IDP_ISSUER_URL",
        section: Section::OldHooks,
        per_cluster: true,
        doc: "OIDC issuer written into the kubeconfig. (The example OnDemand shipped put a \
              Keycloak token endpoint here; that suffix is stripped with a warning.)",
        value: "https:// URL",
        default: "",
        example: "https://idp.example.com/auth/realms/main",
        parse: |v, d| {
            if v.is_empty() {
                return Ok(());
            }
            let (url, note) = issuer_url(v)?;
            d.notes.extend(note);
            d.issuer_url = Some(url);
            Ok(())
        },
    },
    Key {
        name: "IDP_CA_FILE",
        section: Section::New,
        per_cluster: true,
        doc: "CA bundle for the issuer's HTTPS certificate, if not a system-trusted CA \
              (exec mode: the plugin refreshes tokens there, so it must be readable by users; \
              broker mode: the broker refreshes tokens there).",
        value: "absolute path",
        default: "",
        example: "",
        parse: |v, d| abs_path(v).map(|p| d.idp_ca_file = p),
    },
    Key {
        name: "CLIENT_ID",
        section: Section::OldHooks,
        per_cluster: true,
        doc: "OIDC client written into the kubeconfig.",
        value: "text",
        default: "",
        example: "changeme",
        parse: |v, d| {
            d.client_id = non_empty(v);
            Ok(())
        },
    },
    Key {
        name: "CLIENT_SECRET",
        section: Section::OldHooks,
        per_cluster: true,
        doc: "Only written into users' kubeconfigs in K8S_CREDENTIALS=auth-provider mode \
              (where every user can read it, as with the old hook). In broker mode the \
              credential broker (root) refreshes users' tokens with it; it never leaves root.",
        value: "text (secret)",
        default: "",
        example: "changeme",
        parse: |v, d| {
            d.client_secret = non_empty(v).map(Secret::new);
            Ok(())
        },
    },
    Key {
        name: "IMAGE_PULL_SECRET",
        section: Section::OldHooks,
        per_cluster: true,
        doc: "Name of an image pull Secret to create in each namespace; empty = off.",
        value: "Kubernetes object name",
        default: "",
        example: "",
        parse: |v, d| object_name("IMAGE_PULL_SECRET", v).map(|n| d.image_pull_secret = n),
    },
    Key {
        name: "REGISTRY_DOCKER_CONFIG_JSON",
        section: Section::OldHooks,
        per_cluster: true,
        doc: "Root-only docker config.json ({\"auths\": {...}}) the pull Secret is made from; \
              read only when IMAGE_PULL_SECRET is set.",
        value: "absolute path",
        default: "",
        example: "/etc/ood/config/image-registry.json",
        parse: |v, d| abs_path(v).map(|p| d.registry_docker_config_json = p),
    },
    Key {
        name: "USE_JOB_POD_REAPER",
        section: Section::OldHooks,
        per_cluster: true,
        doc: "\"true\" adds the RoleBinding job-pod-reaper needs to delete expired pods.",
        value: "true|false",
        default: "false",
        example: "false",
        parse: |v, d| boolean(v).map(|b| d.use_job_pod_reaper = b),
    },
    Key {
        name: "USE_POD_SECURITY_POLICY",
        section: Section::OldHooks,
        per_cluster: false,
        doc: "PodSecurityPolicy was removed in Kubernetes 1.25: \"true\" is refused. Use the \
              POD_SECURITY_* keys instead.",
        value: "false",
        default: "false",
        example: "false",
        parse: |v, _| match v {
            "false" => Ok(()),
            "true" => Err("PodSecurityPolicy was removed in Kubernetes 1.25; set \
                           POD_SECURITY_ENFORCE=restricted (Pod Security Admission) instead and \
                           remove this key"
                .into()),
            _ => Err("expected false (PodSecurityPolicy no longer exists)".into()),
        },
    },
    Key {
        name: "OIDC_USERNAME_PREFIX",
        section: Section::New,
        per_cluster: true,
        doc: "Prefix of the RoleBinding's User subject, for API servers started with \
              --oidc-username-prefix (e.g. \"oidc:\"). Default: none (the plain username).",
        value: "text without whitespace or '/'",
        default: "",
        example: "",
        parse: |v, d| {
            // ':' is allowed here: `oidc:` is the usual API server prefix.
            prefix(&v.replace(':', "")).map(|_| d.user_subject_prefix = v.to_owned())
        },
    },
    Key {
        name: "JOB_POD_REAPER_CLUSTER_ROLE",
        section: Section::New,
        per_cluster: true,
        doc: "ClusterRole of job-pod-reaper (its Helm release can rename it).",
        value: "Kubernetes object name",
        default: "job-pod-reaper",
        example: "job-pod-reaper",
        parse: |v, d| {
            object_name("JOB_POD_REAPER_CLUSTER_ROLE", v).map(|n| d.reaper_cluster_role = n)
        },
    },
    Key {
        name: "JOB_POD_REAPER_SERVICE_ACCOUNT",
        section: Section::New,
        per_cluster: true,
        doc: "ServiceAccount job-pod-reaper runs as.",
        value: "Kubernetes object name",
        default: "job-pod-reaper",
        example: "job-pod-reaper",
        parse: |v, d| {
            object_name("JOB_POD_REAPER_SERVICE_ACCOUNT", v).map(|n| d.reaper_service_account = n)
        },
    },
    Key {
        name: "JOB_POD_REAPER_NAMESPACE",
        section: Section::New,
        per_cluster: true,
        doc: "Namespace of job-pod-reaper's ServiceAccount.",
        value: "namespace name",
        default: "job-pod-reaper",
        example: "job-pod-reaper",
        parse: |v, d| namespace_name("JOB_POD_REAPER_NAMESPACE", v).map(|n| d.reaper_namespace = n),
    },
    Key {
        name: "POD_SECURITY_ENFORCE",
        section: Section::New,
        per_cluster: true,
        doc: "Pod Security Admission `enforce` label on each user namespace; empty = no label.",
        value: "privileged|baseline|restricted",
        default: "",
        example: "",
        parse: |v, d| psa_level(v).map(|l| d.pod_security.enforce = l),
    },
    Key {
        name: "POD_SECURITY_AUDIT",
        section: Section::New,
        per_cluster: true,
        doc: "Pod Security Admission `audit` label; empty = no label.",
        value: "privileged|baseline|restricted",
        default: "",
        example: "",
        parse: |v, d| psa_level(v).map(|l| d.pod_security.audit = l),
    },
    Key {
        name: "POD_SECURITY_WARN",
        section: Section::New,
        per_cluster: true,
        doc: "Pod Security Admission `warn` label; empty = no label.",
        value: "privileged|baseline|restricted",
        default: "",
        example: "",
        parse: |v, d| psa_level(v).map(|l| d.pod_security.warn = l),
    },
    Key {
        name: "POD_SECURITY_VERSION",
        section: Section::New,
        per_cluster: true,
        doc: "Pins the Pod Security policy version for every POD_SECURITY_* mode that is set.",
        value: "latest|v1.N",
        default: "",
        example: "",
        parse: |v, d| psa_version(v).map(|p| d.pod_security.version = p),
    },
    Key {
        name: "HOOK_TIMEOUT_SECONDS",
        section: Section::New,
        per_cluster: true,
        doc: "Upper bound on one whole run, in seconds (nginx_stage itself waits forever).",
        value: "1-600",
        default: "10",
        example: "10",
        parse: |v, d| match v.parse::<u64>() {
            Ok(n @ 1..=600) => {
                d.timeout = Duration::from_secs(n);
                Ok(())
            }
            _ => Err("expected a whole number of seconds from 1 to 600".into()),
        },
    },
    Key {
        name: "FAST_FAIL_SECONDS",
        section: Section::New,
        per_cluster: true,
        doc: "After a run found the API server unreachable, runs fail at once (after a quick \
              connection probe, so recovery is noticed at once) instead of waiting out \
              HOOK_TIMEOUT_SECONDS; the window starts at 5 s and doubles with each failed run \
              up to this many seconds. 0 turns it off. Remembered root-only in \
              /run/ood-k8s-bootstrap.",
        value: "0-3600",
        default: "30",
        example: "30",
        parse: |v, d| match v.parse::<u64>() {
            Ok(n @ 0..=3600) => {
                d.fast_fail = Duration::from_secs(n);
                Ok(())
            }
            _ => Err("expected a whole number of seconds from 0 to 3600".into()),
        },
    },
    Key {
        name: "K8S_CREDENTIALS",
        section: Section::New,
        per_cluster: true,
        doc: "How the user's kubeconfig entry carries credentials: auth-provider = the old \
              hook's `auth-provider: oidc` entry (the client secret is readable by the user); \
              token = the portal's access token as a bearer token, no secret, until it \
              expires; exec = this binary as a kubectl exec credential plugin with a per-user \
              token cache, refreshed as a public client (K8S_EXEC_CLIENT_ID) only; broker = \
              this binary as an exec plugin asking the root credential broker \
              (`ood-k8s-bootstrap broker`, BROKER_* keys), which keeps the tokens root-only \
              and refreshes them with CLIENT_ID/CLIENT_SECRET for the whole session; none = \
              leave users' kubeconfigs alone (cluster side only).",
        value: "auth-provider|token|exec|broker|none",
        default: "auth-provider",
        example: "auth-provider",
        parse: |v, d| {
            d.credentials = match v {
                "auth-provider" => CredentialMode::AuthProvider,
                "token" => CredentialMode::Token,
                "exec" => CredentialMode::Exec,
                "broker" => CredentialMode::Broker,
                "none" => CredentialMode::None,
                _ => return Err("expected auth-provider, token, exec, broker or none".into()),
            };
            Ok(())
        },
    },
    Key {
        name: "K8S_CLUSTER_NAME",
        section: Section::New,
        per_cluster: true,
        doc: "Name of the cluster entry, as the dashboard writes it (its `cluster`).",
        value: "kubeconfig entry name",
        default: "open-ondemand",
        example: "open-ondemand",
        parse: |v, d| kube_name(v).map(|n| d.cluster_name = n),
    },
    Key {
        name: "K8S_CONTEXT_NAME",
        section: Section::New,
        per_cluster: true,
        doc: "Name of the context entry; default: K8S_CLUSTER_NAME, as the dashboard does.",
        value: "kubeconfig entry name",
        default: "",
        example: "",
        parse: |v, d| kube_name(v).map(|n| d.context_name = non_empty(&n)),
    },
    Key {
        name: "K8S_SERVER",
        section: Section::New,
        per_cluster: true,
        doc: "The API server's URL. When set, the cluster and context entries are written too, \
              so users' kubectl works before the dashboard ever starts; an existing \
              current-context is never changed.",
        value: "https:// URL",
        default: "",
        example: "",
        parse: |v, d| {
            if v.is_empty() {
                return Ok(());
            }
            if !v.starts_with("https://") {
                return Err("expected the API server's https:// URL".into());
            }
            url_shape(v)?;
            d.server = Some(v.trim_end_matches('/').to_owned());
            Ok(())
        },
    },
    Key {
        name: "K8S_CA_FILE",
        section: Section::New,
        per_cluster: true,
        doc: "CA bundle for K8S_SERVER.",
        value: "absolute path",
        default: "",
        example: "",
        parse: |v, d| abs_path(v).map(|p| d.k8s_ca_file = p),
    },
    Key {
        name: "K8S_EXEC_CLIENT_ID",
        section: Section::New,
        per_cluster: true,
        doc: "exec mode: the (public) client the plugin refreshes tokens with; default CLIENT_ID.",
        value: "text",
        default: "",
        example: "",
        parse: |v, d| {
            d.exec_client_id = non_empty(v);
            Ok(())
        },
    },
    Key {
        name: "K8S_EXEC_COMMAND",
        section: Section::New,
        per_cluster: true,
        doc: "exec and broker modes: the path users' kubectl runs this binary from.",
        value: "absolute path",
        default: "",
        example: "/usr/bin/ood-k8s-bootstrap",
        parse: |v, d| abs_path(v).map(|p| d.exec_command = p),
    },
    Key {
        name: "K8S_TOKEN_EXCHANGE_AUDIENCE",
        section: Section::New,
        per_cluster: true,
        doc: "When set, the hook trades the portal's access token at the issuer (RFC 8693 \
              token exchange, as the portal client: CLIENT_ID, CLIENT_SECRET) for tokens meant \
              for this audience — the Kubernetes client id — asking for a refresh token where \
              the IdP allows it, and uses those instead of the portal's. Keycloak: enable \
              \"Standard token exchange\" on the portal client. Empty = no exchange.",
        value: "client id",
        default: "",
        example: "",
        parse: |v, d| {
            d.exchange_audience = non_empty(v);
            Ok(())
        },
    },
    Key {
        name: "K8S_TOKEN_EXCHANGE_SCOPE",
        section: Section::New,
        per_cluster: true,
        doc: "Scopes the exchange asks for, space separated (e.g. an optional client scope \
              holding the audience mapper for the Kubernetes client).",
        value: "scope [scope...]",
        default: "",
        example: "",
        parse: |v, d| {
            d.exchange_scope = non_empty(v);
            Ok(())
        },
    },
    Key {
        name: "SITE_TEMPLATES_DIR",
        section: Section::New,
        per_cluster: true,
        doc: "Directory of site templates: each *.yaml (or *.yml) file holds objects applied \
              to every user's namespace with the hook's own (e.g. a ResourceQuota and a \
              LimitRange), with ${USER}, ${NAMESPACE}, ${UID}, ${GID}, ${K8S_USERNAME} (the \
              username as the API server sees it) and ${SITE_...} replaced; $$ is a literal $. \
              Allowed kinds: ResourceQuota, LimitRange, NetworkPolicy, Role, RoleBinding, \
              ServiceAccount, ConfigMap, Secret, PersistentVolumeClaim. The directory and its \
              files must be owned by root and not writable by others. Checked before \
              anything is changed; errors name file and line. Empty = none.",
        value: "absolute path",
        default: "",
        example: "",
        parse: |v, d| abs_path(v).map(|p| d.site_templates_dir = p),
    },
    Key {
        name: "PUBLISH_UID_GID",
        section: Section::New,
        per_cluster: true,
        doc: "\"true\" annotates each namespace with the user's uid and gid from the passwd \
              database (openondemand.org/uid, openondemand.org/gid), which \
              hooks/uid-gid-policy.yaml checks every pod against. Users cannot change their \
              Namespace object.",
        value: "true|false",
        default: "false",
        example: "false",
        parse: |v, d| boolean(v).map(|b| d.publish_uid_gid = b),
    },
    Key {
        name: "PUBLISH_GROUPS",
        section: Section::New,
        per_cluster: true,
        doc: "\"true\" also publishes every group of the user (getgrouplist) as \
              openondemand.org/supplemental-gids, so pods may use them as supplementalGroups \
              and fsGroup. Needs PUBLISH_UID_GID=true.",
        value: "true|false",
        default: "false",
        example: "false",
        parse: |v, d| boolean(v).map(|b| d.publish_groups = b),
    },
    Key {
        name: "PRUNE",
        section: Section::New,
        per_cluster: true,
        doc: "\"true\" deletes objects this hook made in the user's namespace that are no \
              longer wanted: the reaper RoleBinding after USE_JOB_POD_REAPER=false, the pull \
              Secret (and its ServiceAccount reference) after IMAGE_PULL_SECRET is emptied, the \
              objects of a removed template. Only objects labelled \
              app.kubernetes.io/managed-by=ood-k8s-bootstrap and written by this program are \
              touched; PersistentVolumeClaims never. Needs the grant in \
              hooks/ondemand-prune.yaml.",
        value: "true|false",
        default: "false",
        example: "false",
        parse: |v, d| boolean(v).map(|b| d.prune = b),
    },
    Key {
        name: "BROKER_SOCKET",
        section: Section::New,
        per_cluster: false,
        doc: "broker mode: the credential broker's Unix socket. The hook writes it into users' \
              kubeconfigs; `ood-k8s-bootstrap broker` binds it unless systemd passes the socket \
              (ood-k8s-bootstrap-broker.socket, whose ListenStream= must name the same path).",
        value: "absolute path",
        default: "/run/ood-k8s-bootstrap/broker.sock",
        example: "/run/ood-k8s-bootstrap/broker.sock",
        parse: |v, d| {
            let p = abs_path(v)?.ok_or("expected an absolute path")?;
            if p.as_os_str().len() > 100 {
                return Err("a Unix socket path may be at most 100 bytes long".into());
            }
            d.broker_socket = p;
            Ok(())
        },
    },
    Key {
        name: "BROKER_STATE_DIR",
        section: Section::New,
        per_cluster: false,
        doc: "broker mode: where the hook stores each user's tokens for the broker, one \
              root-only file per uid (the directory is created mode 700).",
        value: "absolute path",
        default: "/var/lib/ood-k8s-bootstrap/tokens",
        example: "/var/lib/ood-k8s-bootstrap/tokens",
        parse: |v, d| {
            d.broker_state_dir = abs_path(v)?.ok_or("expected an absolute path")?;
            Ok(())
        },
    },
    Key {
        name: "BROKER_IDP_TIMEOUT_SECONDS",
        section: Section::New,
        per_cluster: false,
        doc: "broker mode: longest wait for the IdP when the broker refreshes a user's tokens.",
        value: "1-120",
        default: "10",
        example: "10",
        parse: |v, d| match v.parse::<u64>() {
            Ok(n @ 1..=120) => {
                d.broker_idp_timeout = Duration::from_secs(n);
                Ok(())
            }
            _ => Err("expected a whole number of seconds from 1 to 120".into()),
        },
    },
    Key {
        name: "BROKER_MAX_SESSION_HOURS",
        section: Section::New,
        per_cluster: false,
        doc: "broker mode: hours a stored login lasts. The broker deletes a user's stored tokens \
              this long after the login that stored them (and sooner when the IdP refuses the \
              refresh, the refresh token expires, or the uid no longer belongs to that login in \
              passwd); the user then logs in to OnDemand again.",
        value: "1-720",
        default: "24",
        example: "24",
        parse: |v, d| match v.parse::<u32>() {
            Ok(n @ 1..=720) => {
                d.broker_max_session_hours = n;
                Ok(())
            }
            _ => Err("expected a whole number of hours from 1 to 720".into()),
        },
    },
    Key {
        name: "BROKER_MAX_CONNECTIONS",
        section: Section::New,
        per_cluster: false,
        doc: "broker mode: connections the broker serves at once, of which one user (uid) \
              may hold an eighth (at least 2); more are answered \"busy\" at once.",
        value: "1-10000",
        default: "64",
        example: "64",
        parse: |v, d| match v.parse::<usize>() {
            Ok(n @ 1..=MAX_BROKER_CONNECTIONS) => {
                d.broker_max_connections = n;
                Ok(())
            }
            _ => Err("expected a whole number from 1 to 10000".into()),
        },
    },
    Key {
        name: "BROKER_REQUESTS_PER_MINUTE",
        section: Section::New,
        per_cluster: false,
        doc: "broker mode: requests the broker answers per user (uid) and minute, with bursts \
              of a quarter of that; more are refused until the user slows down. kubectl asks \
              once per command and caches the token until it expires.",
        value: "1-100000",
        default: "240",
        example: "240",
        parse: |v, d| match v.parse::<u32>() {
            Ok(n @ 1..=100_000) => {
                d.broker_requests_per_minute = n;
                Ok(())
            }
            _ => Err("expected a whole number from 1 to 100000".into()),
        },
    },
    Key {
        name: "REAP_IDLE_DAYS",
        section: Section::New,
        per_cluster: true,
        doc: "`reap`: delete an OnDemand namespace whose user has not logged in for this many               days (its openondemand.org/last-hook-execution annotation) and that runs no pod               (every pod Succeeded or Failed). Empty: never by age.",
        value: "1-36500 or empty",
        default: "",
        example: "",
        parse: |v, d| {
            if v.is_empty() {
                d.reap_idle_days = None;
                return Ok(());
            }
            match v.parse::<u32>() {
                Ok(n @ 1..=36_500) => {
                    d.reap_idle_days = Some(n);
                    Ok(())
                }
                _ => Err("expected a whole number of days from 1 to 36500, or nothing".into()),
            }
        },
    },
    Key {
        name: "REAP_DEPARTED",
        section: Section::New,
        per_cluster: true,
        doc: "`reap`: \"true\" also deletes the namespace of a login that is no longer in passwd               (NSS), or whose uid is no longer the one recorded on the namespace, and the               broker's stored tokens of such logins. Only namespaces with the hook's owner               record (openondemand.org/user and openondemand.org/uid) are judged.",
        value: "true|false",
        default: "false",
        example: "false",
        parse: |v, d| boolean(v).map(|b| d.reap_departed = b),
    },
    Key {
        name: "REAP_MAX_PER_RUN",
        section: Section::New,
        per_cluster: true,
        doc: "`reap`: the most namespaces one run deletes. If more qualify (a broken NSS makes \
              every user look departed), it deletes none, says how many and why, and exits 75.",
        value: "1-100000",
        default: "50",
        example: "50",
        parse: |v, d| match v.parse::<usize>() {
            Ok(n @ 1..=100_000) => {
                d.reap_max_per_run = n;
                Ok(())
            }
            _ => Err("expected a whole number from 1 to 100000".into()),
        },
    },
    Key {
        name: "ROOT_KUBECONFIG",
        section: Section::New,
        per_cluster: true,
        doc: "Root's kubeconfig for this cluster (the ondemand ServiceAccount's token), used by \
              the hook, reconcile, reap, doctor and root-token. Empty: as kubectl finds it \
              (KUBECONFIG, then ~/.kube/config). Like every file named here it must be \
              root's and closed to others (its exec: user would run as root).",
        value: "absolute path, or empty",
        default: "",
        example: "",
        parse: |v, d| {
            d.root_kubeconfig = abs_path(v)?;
            Ok(())
        },
    },
    Key {
        name: "ROOT_CONTEXT",
        section: Section::New,
        per_cluster: true,
        doc: "The context of root's kubeconfig to use for this cluster. Empty: the file's \
              current context.",
        value: "context name, or empty",
        default: "",
        example: "",
        parse: |v, d| {
            if v.chars().any(|c| c.is_control() || c.is_whitespace()) {
                return Err("a context name has no spaces or control characters".into());
            }
            d.root_context = non_empty(v);
            Ok(())
        },
    },
    Key {
        name: "CLUSTERS_D",
        section: Section::New,
        per_cluster: false,
        doc: "The dashboard's cluster directory (e.g. /etc/ood/config/clusters.d): every \
              `v2.job.adapter: \"kubernetes\"` file there is a cluster each login bootstraps, \
              all at once. Its id is the file name without .yml/.yaml; its `job.cluster`, \
              `job.context`, `job.config_file`, `job.username_prefix`, `job.namespace_prefix`, \
              `job.server.endpoint`, `job.server.cert_authority_file` and `job.auth.type` win \
              over hook.env (with ood_core's defaults where unset), and a hook.env key contradicting one is an error naming both \
              files. Empty: one cluster, configured by hook.env alone.",
        value: "absolute path, or empty",
        default: "",
        example: "",
        parse: |v, d| {
            d.clusters_d = abs_path(v)?;
            Ok(())
        },
    },
    Key {
        name: "HOOK_ENV_D",
        section: Section::New,
        per_cluster: false,
        doc: "Per-cluster overrides of hook.env (with CLUSTERS_D): the file `<cluster id>.env` \
              here, in hook.env's syntax and under the same trust rules, sets the keys that \
              differ for that cluster (root's kubeconfig and context, credential mode, exchange \
              audience, templates, network policy, reaper, pull secret, groups...). Only keys \
              marked \"per cluster\" may be set there. A missing file means no overrides.",
        value: "absolute path",
        default: super::DEFAULT_HOOK_ENV_D,
        example: super::DEFAULT_HOOK_ENV_D,
        parse: |v, d| {
            d.hook_env_d = abs_path(v)?.ok_or("expected an absolute path")?;
            Ok(())
        },
    },
    Key {
        name: "ALLOWED_GROUPS",
        section: Section::New,
        per_cluster: true,
        doc: "Unix groups (names, as NSS reports the user's groups) whose members get this \
              cluster; a login in none of them gets nothing there (one line says so) and \
              nothing of theirs there is touched. Empty: everyone.",
        value: "GROUP[,GROUP...], or empty",
        default: "",
        example: "",
        parse: |v, d| groups(v).map(|g| d.allowed_groups = g),
    },
    Key {
        name: "DENIED_GROUPS",
        section: Section::New,
        per_cluster: true,
        doc: "Unix groups whose members never get this cluster, even when in ALLOWED_GROUPS: \
              matched ignoring case and a domain part (SSSD's group@DOMAIN, DOMAIN\\group); \
              a user with a group NSS cannot name is refused (fail closed). reconcile applies \
              both keys as a login does.",
        value: "GROUP[,GROUP...], or empty",
        default: "",
        example: "",
        parse: |v, d| groups(v).map(|g| d.denied_groups = g),
    },
    Key {
        name: "LOG_TARGET",
        section: Section::New,
        per_cluster: false,
        doc: "Where every run of the hook, reconcile, reap, heal and root-token, and every broker \
              refresh or refusal, leaves one record (user, namespace, cluster, counts, credential \
              mode, duration, exit status, the error line; never a token): \"syslog\" (identifier \
              ood-k8s-bootstrap, journald's own protocol where journald owns SYSLOG_SOCKET, else \
              RFC 5424), \"stderr\" or \"none\". A missing or full log socket never fails or \
              slows a login.",
        value: "syslog|stderr|none",
        default: "syslog",
        example: "syslog",
        parse: |v, d| {
            d.log_target = match v {
                "syslog" => super::LogTarget::Syslog,
                "stderr" => super::LogTarget::Stderr,
                "none" => super::LogTarget::None,
                _ => return Err("expected syslog, stderr or none".into()),
            };
            Ok(())
        },
    },
    Key {
        name: "SYSLOG_SOCKET",
        section: Section::New,
        per_cluster: false,
        doc: "The system log's socket for LOG_TARGET=syslog.",
        value: "absolute path",
        default: super::DEFAULT_SYSLOG_SOCKET,
        example: super::DEFAULT_SYSLOG_SOCKET,
        parse: |v, d| {
            d.syslog_socket = abs_path(v)?.ok_or("expected an absolute path")?;
            Ok(())
        },
    },
    Key {
        name: "METRICS_FILE",
        section: Section::New,
        per_cluster: false,
        doc: "Prometheus metrics in node-exporter's textfile format, updated by every run \
              (runs by command and exit status, durations, objects changed, last success, \
              broker refreshes and refusals, reap deletions, heals and pending logins), e.g. \
              /var/lib/node_exporter/textfile_collector/ood_k8s_bootstrap.prom. Empty: off.",
        value: "absolute path ending in .prom, or empty",
        default: "",
        example: "",
        parse: |v, d| {
            d.metrics_file = abs_path(v)?;
            if d.metrics_file
                .as_ref()
                .is_some_and(|p| p.extension().is_none_or(|e| e != "prom"))
            {
                return Err("node-exporter reads only files ending in .prom".into());
            }
            Ok(())
        },
    },
    Key {
        name: "LAST_RUN_DIR",
        section: Section::New,
        per_cluster: false,
        doc: "Where the hook keeps each user's last run's record (root-only, one file per \
              user), which `doctor --user` shows, and notes the logins whose cluster side \
              failed for a reason that passes (`.pending/`), which `heal` makes once the \
              cluster answers. Empty: not kept, and nothing is healed.",
        value: "absolute path, or empty",
        default: "/var/lib/ood-k8s-bootstrap/last-run",
        example: "/var/lib/ood-k8s-bootstrap/last-run",
        parse: |v, d| {
            d.last_run_dir = abs_path(v)?;
            Ok(())
        },
    },
    Key {
        name: "HEAL_MAX_PER_RUN",
        section: Section::New,
        per_cluster: false,
        doc: "`heal`: the most users one pass works on (the logins pending longest first); \
              the rest wait for the next pass (ood-k8s-bootstrap-heal.timer runs one a minute).",
        value: "1-100000",
        default: "200",
        example: "200",
        parse: |v, d| match v.parse::<usize>() {
            Ok(n @ 1..=100_000) => {
                d.heal_max_per_run = n;
                Ok(())
            }
            _ => Err("expected a whole number from 1 to 100000".into()),
        },
    },
];

/// Largest `BROKER_MAX_CONNECTIONS`; the broker's systemd unit's
/// `LimitNOFILE` covers it (a test keeps the two in step).
pub const MAX_BROKER_CONNECTIONS: usize = 10_000;

/// The key named `name`, if it is one.
pub fn find(name: &str) -> Option<&'static Key> {
    KEYS.iter().find(|k| k.name == name)
}

/// The known key most like a misspelt `name`, for the unknown-key warning.
pub fn closest(name: &str) -> Option<&'static str> {
    KEYS.iter()
        .map(|k| (strsim::jaro_winkler(name, k.name), k.name))
        .filter(|(score, _)| *score > 0.85)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, n)| n)
}

fn non_empty(v: &str) -> Option<String> {
    (!v.is_empty()).then(|| v.to_owned())
}

/// Longest prefix: with a 128-character username and `.json`, a cache file
/// name stays under the 255 bytes a file name may have.
const MAX_PREFIX: usize = 100;

fn prefix(v: &str) -> Result<String, String> {
    if v.chars()
        .any(|c| c.is_whitespace() || c.is_control() || c == '/' || c == ':')
    {
        return Err("a prefix may not contain whitespace, '/' or ':'".into());
    }
    if v.len() > MAX_PREFIX {
        return Err(format!("a prefix may be at most {MAX_PREFIX} bytes long"));
    }
    Ok(v.to_owned())
}

/// A list of Unix group names, separated by commas or spaces.
fn groups(v: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    for g in v.split([',', ' ', '\t']).filter(|g| !g.is_empty()) {
        if g.len() > 256 || g.chars().any(|c| c.is_control() || c == ':' || c == '/') {
            return Err(format!(
                "{:?} is not a group name",
                crate::oneline::clean(g, 40)
            ));
        }
        out.push(g.to_owned());
    }
    Ok(out)
}

fn boolean(v: &str) -> Result<bool, String> {
    match v {
        "true" => Ok(true),
        "false" => Ok(false),
        _ => Err(
            "expected true or false (lower case: the old hooks treated anything but \
                  \"true\" as false)"
                .into(),
        ),
    }
}

fn abs_path(v: &str) -> Result<Option<PathBuf>, String> {
    match v {
        "" => Ok(None),
        v if v.chars().any(char::is_control) => {
            Err("a path may not contain control characters (a newline?)".into())
        }
        v if v.starts_with('/') => Ok(Some(PathBuf::from(v))),
        _ => Err("expected an absolute path".into()),
    }
}

fn object_name(key: &'static str, v: &str) -> Result<Option<ObjectName>, String> {
    if v.is_empty() {
        return Ok(None);
    }
    ObjectName::parse(key, v).map(Some).map_err(|e| match e {
        crate::site::names::NameError::BadObjectName { why, .. } => why.to_owned(),
        other => other.to_string(),
    })
}

/// A namespace's name: an object name that is also a DNS-1123 label.
fn namespace_name(key: &'static str, v: &str) -> Result<Option<ObjectName>, String> {
    let name = object_name(key, v)?;
    match name
        .as_ref()
        .and_then(|n| dns1123_label_problem(n.as_str()))
    {
        Some(why) => Err(format!("not a namespace name: {why}")),
        None => Ok(name),
    }
}

fn kube_name(v: &str) -> Result<String, String> {
    if v.chars()
        .any(|c| c.is_whitespace() || c.is_control() || crate::oneline::is_format(c))
    {
        return Err(
            "a kubeconfig entry name may not contain whitespace, control or invisible format characters"
                .into(),
        );
    }
    Ok(v.to_owned())
}

fn psa_level(v: &str) -> Result<Option<PsaLevel>, String> {
    Ok(Some(match v {
        "" => return Ok(None),
        "privileged" => PsaLevel::Privileged,
        "baseline" => PsaLevel::Baseline,
        "restricted" => PsaLevel::Restricted,
        _ => return Err("expected privileged, baseline or restricted".into()),
    }))
}

/// `latest` or `v1.N`; N has at most three digits (the value is a label
/// value, which the API server refuses past 63 characters).
fn psa_version(v: &str) -> Result<Option<String>, String> {
    let ok = v == "latest"
        || v.strip_prefix("v1.")
            .is_some_and(|n| (1..=3).contains(&n.len()) && n.chars().all(|c| c.is_ascii_digit()));
    match v {
        "" => Ok(None),
        _ if ok => Ok(Some(v.to_owned())),
        _ => Err("expected latest or v1.N, e.g. v1.33".into()),
    }
}

/// One or more CIDRs, duplicates dropped; a value with separators only
/// (`","`) is refused rather than taken as none.
fn cidrs(v: &str) -> Result<Vec<IpNet>, String> {
    let mut out = Vec::new();
    for part in v
        .split(|c: char| c == ',' || c.is_whitespace())
        .filter(|p| !p.is_empty())
    {
        let net = parse_cidr(part).map_err(|why| format!("{part}: {why}"))?;
        if !out.contains(&net) {
            out.push(net);
        }
    }
    if out.is_empty() && !v.is_empty() {
        return Err(
            "no CIDR in it; give the address (CIDR) of the OnDemand web node(s), e.g. 192.0.2.10/32"
                .into(),
        );
    }
    Ok(out)
}

/// A CIDR with its host bits clear (the API server refuses `10.0.0.5/24`).
/// A bare address means that one host.
fn parse_cidr(s: &str) -> Result<IpNet, String> {
    let net: IpNet = match s.parse() {
        Ok(n) => n,
        Err(_) => match s.parse::<std::net::IpAddr>() {
            Ok(addr) => IpNet::from(addr),
            Err(_) => {
                return Err("not a CIDR (expected e.g. 192.0.2.10/32 or 2001:db8::/64)".into());
            }
        },
    };
    if net.trunc() != net {
        return Err(format!("host bits are set; did you mean {}?", net.trunc()));
    }
    Ok(net)
}

/// A URL goes into users' kubeconfigs and log lines as it is: a host after
/// the scheme, no spaces or control characters (a quoted value may hold a
/// newline).
fn url_shape(v: &str) -> Result<(), String> {
    if v.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("a URL may not contain spaces or control characters".into());
    }
    let after_scheme = v.split_once("://").map_or("", |(_, rest)| rest);
    if after_scheme.is_empty() || after_scheme.starts_with('/') {
        return Err("the URL has no host".into());
    }
    Ok(())
}

/// Validates `IDP_ISSUER_URL`. The example OnDemand shipped holds a Keycloak
/// *token endpoint*, on which OIDC discovery (and so kubectl's refresh)
/// fails; that suffix is removed, with a note.
fn issuer_url(v: &str) -> Result<(String, Option<String>), String> {
    if !v.starts_with("https://") && !v.starts_with("http://") {
        return Err("expected the issuer's https:// URL".into());
    }
    url_shape(v)?;
    for suffix in [
        "/protocol/openid-connect/token",
        "/.well-known/openid-configuration",
    ] {
        if let Some(base) = v.trim_end_matches('/').strip_suffix(suffix) {
            let note =
                format!("{v} is not an issuer URL; using {base} (fix hook.env to silence this)");
            return Ok((base.to_owned(), Some(note)));
        }
    }
    Ok((v.to_owned(), None))
}

const EXAMPLE_HEADER: &str = "\
# /etc/ood/config/hook.env — configuration of ood-k8s-bootstrap, Open OnDemand's
# Kubernetes pre-hook. Shell-style KEY=VALUE lines (\"export\", quotes, comments
# and CRLF line ends are fine). The keys of the old bash hooks keep their
# meaning, so an existing hook.env works unchanged. Unknown keys are warned
# about; malformed values stop the run (naming key and line) before anything
# is changed. Keep it root-only (chmod 600): it may hold the client secret.
# Check a file with:  ood-k8s-bootstrap config --hook-env FILE
#
# Generated by `ood-k8s-bootstrap config --example`; `man 5
# ood-k8s-bootstrap-hook.env` describes every key.
";

/// The example hook.env: every key with its meaning and example value.
pub fn example() -> String {
    let mut out = String::from(EXAMPLE_HEADER);
    for section in [Section::OldHooks, Section::New] {
        let title = section.title();
        out.push_str(&format!(
            "\n# ---- {title} {}\n",
            "-".repeat(70 - title.len())
        ));
        for key in KEYS.iter().filter(|k| k.section == section) {
            out.push('\n');
            for line in wrap(&comment_doc(key), 76) {
                out.push_str(&format!("# {line}\n"));
            }
            out.push_str(&format!("{}=\"{}\"\n", key.name, key.example));
        }
    }
    for pattern in PATTERNS {
        let title = format!("{}* keys", pattern.prefix);
        out.push_str(&format!(
            "\n# ---- {title} {}\n\n",
            "-".repeat(70 - title.len())
        ));
        for line in wrap(pattern.doc, 76) {
            out.push_str(&format!("# {line}\n"));
        }
        let (name, value) = pattern.example;
        out.push_str(&format!("#{name}=\"{value}\"\n"));
    }
    out
}

/// A key's comment in the example: its meaning, form and default.
fn comment_doc(key: &Key) -> String {
    let default = match key.default {
        "" => "empty".to_owned(),
        d => d.to_owned(),
    };
    let scope = if key.per_cluster { "; per cluster" } else { "" };
    format!("{} [{}; default: {default}{scope}]", key.doc, key.value)
}

/// Greedy word wrap.
fn wrap(text: &str, width: usize) -> Vec<String> {
    let mut lines = Vec::new();
    let mut line = String::new();
    for word in text.split_whitespace() {
        if !line.is_empty() && line.len() + 1 + word.len() > width {
            lines.push(std::mem::take(&mut line));
        }
        if !line.is_empty() {
            line.push(' ');
        }
        line.push_str(word);
    }
    if !line.is_empty() {
        lines.push(line);
    }
    lines
}

/// The hook.env(5) man page, in roff.
pub fn man_page(version: &str) -> String {
    let mut out = format!(
        ".TH OOD-K8S-BOOTSTRAP-HOOK.ENV 5 \"\" \"ood-k8s-bootstrap {version}\" \"File Formats\"\n\
         .SH NAME\nhook.env \\- configuration of ood\\-k8s\\-bootstrap, Open OnDemand's Kubernetes pre\\-hook\n\
         .SH SYNOPSIS\n/etc/ood/config/hook.env\n\
         .SH DESCRIPTION\nA shell\\-style KEY=VALUE file: comments, blank lines, quotes, \
         \\fBexport KEY=...\\fR and CRLF line ends are accepted; the last assignment of a key \
         wins; an empty value is the same as an unset key. The keys of OnDemand's old bash hooks \
         keep their meaning. Unknown keys are warned about; a malformed value stops the run with \
         exit status 78, naming the file, line and key, before anything is changed. The file may \
         hold the OIDC client secret: keep it owned by root, mode 0600.\n\
         .PP\n\\fBood\\-k8s\\-bootstrap config \\-\\-example\\fR prints a commented example.\n"
    );
    for section in [Section::OldHooks, Section::New] {
        out.push_str(&format!(
            ".SH \"{}\"\n",
            roff(&section.title().to_uppercase())
        ));
        for key in KEYS.iter().filter(|k| k.section == section) {
            let default = match key.default {
                "" => "empty".to_owned(),
                d => format!("\\fB{}\\fR", roff(d)),
            };
            let scope = if key.per_cluster {
                " May be set per cluster (HOOK_ENV_D)."
            } else {
                ""
            };
            out.push_str(&format!(
                ".TP\n\\fB{}\\fR=\\fI{}\\fR\n{}\nDefault: {default}.{scope}\n",
                roff(key.name),
                roff(key.value),
                roff(key.doc),
            ));
        }
    }
    for pattern in PATTERNS {
        out.push_str(&format!(
            ".SH \"{}* KEYS\"\n.TP\n\\fB{}\\fR\\fINAME\\fR=\\fItext\\fR\n{}\n",
            roff(pattern.prefix),
            roff(pattern.prefix),
            roff(pattern.doc),
        ));
    }
    out.push_str(".SH SEE ALSO\n\\fBood\\-k8s\\-bootstrap\\fR(1)\n");
    out
}

/// Escapes text for roff: backslashes, hyphens, and a leading dot or quote.
fn roff(s: &str) -> String {
    let s = s.replace('\\', "\\e").replace('-', "\\-");
    match s.chars().next() {
        Some('.' | '\'') => format!("\\&{s}"),
        _ => s,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_example_is_the_generated_one() {
        let shipped = include_str!("../../../hooks/hook.env.example");
        assert!(
            shipped == example(),
            "hooks/hook.env.example differs from the key table; regenerate it with \
             `cargo run -- config --example > hooks/hook.env.example`"
        );
    }

    #[test]
    fn every_key_is_documented_once_everywhere() {
        let example = example();
        let man = man_page("test");
        for (i, key) in KEYS.iter().enumerate() {
            assert_eq!(
                KEYS.iter().position(|k| k.name == key.name),
                Some(i),
                "{} twice",
                key.name
            );
            assert_eq!(
                example.matches(&format!("\n{}=", key.name)).count(),
                1,
                "{}",
                key.name
            );
            assert!(
                man.contains(&roff(key.name)),
                "{} not in man page",
                key.name
            );
            assert!(!key.doc.is_empty() && !key.value.is_empty(), "{}", key.name);
        }
    }

    #[test]
    fn every_default_and_example_value_parses() {
        for key in KEYS {
            let mut d = Draft::default();
            (key.parse)(key.default, &mut d)
                .unwrap_or_else(|e| panic!("{} default: {e}", key.name));
            (key.parse)(key.example, &mut d)
                .unwrap_or_else(|e| panic!("{} example: {e}", key.name));
        }
    }

    #[test]
    fn key_families_are_documented_and_recognised() {
        let example = example();
        let man = man_page("test");
        for p in PATTERNS {
            assert!(
                example.contains(&format!("#{}=", p.example.0)),
                "{}",
                p.prefix
            );
            assert!(man.contains(&roff(p.prefix)), "{}", p.prefix);
            assert!(pattern(p.example.0).is_some());
        }
        assert!(pattern("SITE_TEMPLATES_DIR").is_none());
        assert!(pattern("SITE_").is_none());
        assert!(pattern("NAMESPACE_PREFIX").is_none());
    }

    #[test]
    fn misspelt_keys_get_a_suggestion() {
        assert_eq!(closest("NAMESPACE_PREFX"), Some("NAMESPACE_PREFIX"));
        assert_eq!(closest("FOO"), None);
    }

    #[test]
    fn wrap_keeps_words_and_width() {
        let lines = wrap("aaa bbb ccc ddd", 7);
        assert_eq!(lines, vec!["aaa bbb", "ccc ddd"]);
    }

    #[test]
    fn roff_escapes() {
        assert_eq!(roff(".x-y\\"), "\\&.x\\-y\\e");
    }
}
