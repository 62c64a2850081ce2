//! `/etc/ood/config/hook.env`: reading the file sites already have and
//! turning it into validated [`Settings`].
//!
//! The old hooks `source`d this file in bash, so it is shell-style: comments,
//! blank lines, quotes, `export KEY=...`, and CRLF endings from Windows
//! editors. Every key keeps its old meaning; new keys default to the old
//! behaviour. Everything is checked here, before the cluster or any file is
//! touched, and every error names the key and the line.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;
use thiserror::Error;

use crate::names::{NameError, ObjectName, dns1123_label_problem, truncate};
use crate::secret::Secret;

/// Where OnDemand keeps the hook's configuration.
pub const DEFAULT_HOOK_ENV: &str = "/etc/ood/config/hook.env";

/// Default bound on one whole run (nginx_stage waits forever for the hook).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// Every key this program understands, with a one-line meaning (used for the
/// unknown-key warning's suggestion and kept in the same order as
/// `hooks/hook.env.example`).
pub const KNOWN_KEYS: &[&str] = &[
    "K8S_USERNAME_PREFIX",
    "NAMESPACE_PREFIX",
    "NETWORK_POLICY_ALLOW_CIDR",
    "IDP_ISSUER_URL",
    "IDP_CA_FILE",
    "CLIENT_ID",
    "CLIENT_SECRET",
    "IMAGE_PULL_SECRET",
    "REGISTRY_DOCKER_CONFIG_JSON",
    "USE_JOB_POD_REAPER",
    "USE_POD_SECURITY_POLICY",
    "OIDC_USERNAME_PREFIX",
    "JOB_POD_REAPER_CLUSTER_ROLE",
    "JOB_POD_REAPER_SERVICE_ACCOUNT",
    "JOB_POD_REAPER_NAMESPACE",
    "POD_SECURITY_ENFORCE",
    "POD_SECURITY_AUDIT",
    "POD_SECURITY_WARN",
    "POD_SECURITY_VERSION",
    "HOOK_TIMEOUT_SECONDS",
    "K8S_CREDENTIALS",
    "K8S_CLUSTER_NAME",
    "K8S_CONTEXT_NAME",
    "K8S_SERVER",
    "K8S_CA_FILE",
    "K8S_EXEC_CLIENT_ID",
    "K8S_EXEC_COMMAND",
];

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
    #[error("{path}:{line}: {key}={value:?}: {why}")]
    Invalid {
        path: PathBuf,
        line: usize,
        key: &'static str,
        value: String,
        why: String,
    },
    #[error("{path}: {key} is not set: {why}")]
    Missing {
        path: PathBuf,
        key: &'static str,
        why: &'static str,
    },
}

/// A key's value and the line it was (last) set on.
#[derive(Debug, Clone)]
struct Entry {
    value: String,
    line: usize,
}

/// The raw file: key → last value, as a shell's `source` would leave it.
#[derive(Debug)]
struct RawEnv {
    path: PathBuf,
    entries: BTreeMap<String, Entry>,
}

impl RawEnv {
    fn parse(path: &Path, text: &str) -> Result<Self, SettingsError> {
        // dotenvy does not treat "\r\n" as a line end; sites have CRLF files.
        let text = text.replace("\r\n", "\n");
        let mut entries = BTreeMap::new();
        for item in dotenvy::from_read_iter(text.as_bytes()) {
            match item {
                Ok((key, value)) => {
                    let line = definition_line(&text, &key).unwrap_or(0);
                    entries.insert(key, Entry { value, line });
                }
                Err(dotenvy::Error::LineParse(bad, _)) => {
                    let line = text
                        .lines()
                        .position(|l| {
                            !bad.is_empty() && l.contains(bad.lines().next().unwrap_or(&bad))
                        })
                        .map_or(0, |i| i + 1);
                    return Err(SettingsError::Syntax {
                        path: path.to_owned(),
                        line,
                    });
                }
                Err(_) => {
                    return Err(SettingsError::Syntax {
                        path: path.to_owned(),
                        line: 0,
                    });
                }
            }
        }
        Ok(Self {
            path: path.to_owned(),
            entries,
        })
    }

    /// The value of `key`; unset and empty are the same, as in the old bash.
    fn get(&self, key: &'static str) -> Option<(&str, usize)> {
        self.entries
            .get(key)
            .filter(|e| !e.value.trim().is_empty())
            .map(|e| (e.value.trim(), e.line))
    }

    fn invalid(
        &self,
        key: &'static str,
        line: usize,
        value: &str,
        why: impl Into<String>,
    ) -> SettingsError {
        SettingsError::Invalid {
            path: self.path.clone(),
            line,
            key,
            value: truncate(value, 80),
            why: why.into(),
        }
    }

    fn missing(&self, key: &'static str, why: &'static str) -> SettingsError {
        SettingsError::Missing {
            path: self.path.clone(),
            key,
            why,
        }
    }

    fn object_name(&self, key: &'static str, default: &str) -> Result<ObjectName, SettingsError> {
        let (value, line) = self.get(key).unwrap_or((default, 0));
        ObjectName::parse(key, value).map_err(|e| match e {
            NameError::BadObjectName { why, .. } => self.invalid(key, line, value, why),
            other => self.invalid(key, line, value, other.to_string()),
        })
    }

    fn bool(&self, key: &'static str) -> Result<bool, SettingsError> {
        match self.get(key) {
            None | Some(("false", _)) => Ok(false),
            Some(("true", _)) => Ok(true),
            Some((v, line)) => Err(self.invalid(
                key,
                line,
                v,
                "expected true or false (lower case: the old hooks treated anything but \"true\" as false)",
            )),
        }
    }
}

/// The last line that sets `key` (what a shell would end up with).
fn definition_line(text: &str, key: &str) -> Option<usize> {
    text.lines()
        .enumerate()
        .filter(|(_, l)| {
            let l = l.trim_start();
            let l = l
                .strip_prefix("export")
                .filter(|r| r.starts_with([' ', '\t']))
                .map_or(l, str::trim_start);
            l.strip_prefix(key)
                .is_some_and(|r| r.trim_start().starts_with('='))
        })
        .map(|(i, _)| i + 1)
        .last()
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
    /// Do not touch the user's kubeconfig (cluster side only).
    None,
}

impl CredentialMode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::AuthProvider => "auth-provider",
            Self::Token => "token",
            Self::Exec => "exec",
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
    /// `HOOK_TIMEOUT_SECONDS`: bound on the whole run.
    pub timeout: Duration,
    pub oidc: Oidc,
    pub kubeconfig: KubeconfigSettings,
    /// Things worth an admin's attention that do not stop the run.
    pub warnings: Vec<String>,
}

impl Settings {
    /// Reads and validates a hook.env file.
    pub fn load(path: &Path) -> Result<Self, SettingsError> {
        let text = std::fs::read_to_string(path).map_err(|source| SettingsError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(path, &text)
    }

    /// Validates hook.env text; `path` is used for messages and to resolve
    /// nothing else (file paths inside are absolute).
    pub fn parse(path: &Path, text: &str) -> Result<Self, SettingsError> {
        let env = RawEnv::parse(path, text)?;
        let mut warnings = Vec::new();

        for (key, entry) in &env.entries {
            if !KNOWN_KEYS.contains(&key.as_str()) {
                warnings.push(format!(
                    "{}:{}: unknown key {key} is ignored (see hooks/hook.env.example for the keys this hook reads)",
                    path.display(),
                    entry.line
                ));
            }
        }

        let prefix = |key: &'static str| -> Result<String, SettingsError> {
            let Some((v, line)) = env.get(key) else {
                return Ok(String::new());
            };
            if v.chars()
                .any(|c| c.is_whitespace() || c.is_control() || c == '/' || c == ':')
            {
                return Err(env.invalid(
                    key,
                    line,
                    v,
                    "a prefix may not contain whitespace, '/' or ':'",
                ));
            }
            Ok(v.to_owned())
        };
        let username_prefix = prefix("K8S_USERNAME_PREFIX")?;
        let user_subject_prefix = prefix("OIDC_USERNAME_PREFIX")?;
        let namespace_prefix = prefix("NAMESPACE_PREFIX")?;
        if let Some((v, line)) = env.get("NAMESPACE_PREFIX") {
            // The prefix must be able to start a DNS-1123 label.
            if let Some(why) = dns1123_label_problem(&format!("{v}x")) {
                return Err(env.invalid(
                    "NAMESPACE_PREFIX",
                    line,
                    v,
                    format!("namespaces would be invalid: {why}"),
                ));
            }
        }

        let allow_cidrs = match env.get("NETWORK_POLICY_ALLOW_CIDR") {
            None => {
                return Err(env.missing(
                    "NETWORK_POLICY_ALLOW_CIDR",
                    "set it to the address (CIDR) of the OnDemand web node(s), e.g. 192.0.2.10/32, so the portal can reach users' pods",
                ));
            }
            Some((v, line)) => {
                let mut cidrs = Vec::new();
                for part in v.split([',', ' ', '\t']).filter(|p| !p.is_empty()) {
                    let net = parse_cidr(part)
                        .map_err(|why| env.invalid("NETWORK_POLICY_ALLOW_CIDR", line, part, why))?;
                    if !cidrs.contains(&net) {
                        cidrs.push(net);
                    }
                }
                cidrs
            }
        };

        let image_pull = match env.get("IMAGE_PULL_SECRET") {
            None => None,
            Some(_) => {
                let secret_name = env.object_name("IMAGE_PULL_SECRET", "")?;
                let Some((file, line)) = env.get("REGISTRY_DOCKER_CONFIG_JSON") else {
                    return Err(env.missing(
                        "REGISTRY_DOCKER_CONFIG_JSON",
                        "IMAGE_PULL_SECRET is set, so this must name the registry's docker config.json",
                    ));
                };
                let (json, warning) = read_docker_config(Path::new(file))
                    .map_err(|why| env.invalid("REGISTRY_DOCKER_CONFIG_JSON", line, file, why))?;
                warnings.extend(warning);
                Some(ImagePull {
                    secret_name,
                    docker_config_json: json,
                    source: PathBuf::from(file),
                })
            }
        };

        let job_pod_reaper = if env.bool("USE_JOB_POD_REAPER")? {
            Some(JobPodReaper {
                cluster_role: env.object_name("JOB_POD_REAPER_CLUSTER_ROLE", "job-pod-reaper")?,
                service_account: env
                    .object_name("JOB_POD_REAPER_SERVICE_ACCOUNT", "job-pod-reaper")?,
                namespace: env.object_name("JOB_POD_REAPER_NAMESPACE", "job-pod-reaper")?,
            })
        } else {
            None
        };

        if let Some((v, line)) = env.get("USE_POD_SECURITY_POLICY") {
            match v {
                "false" => {}
                "true" => {
                    return Err(env.invalid(
                        "USE_POD_SECURITY_POLICY",
                        line,
                        v,
                        "PodSecurityPolicy was removed in Kubernetes 1.25; set POD_SECURITY_ENFORCE=restricted \
                         (Pod Security Admission) instead and remove this key",
                    ));
                }
                _ => {
                    return Err(env.invalid(
                        "USE_POD_SECURITY_POLICY",
                        line,
                        v,
                        "expected false (PodSecurityPolicy no longer exists)",
                    ));
                }
            }
        }

        let level = |key: &'static str| -> Result<Option<PsaLevel>, SettingsError> {
            Ok(match env.get(key) {
                None => None,
                Some(("privileged", _)) => Some(PsaLevel::Privileged),
                Some(("baseline", _)) => Some(PsaLevel::Baseline),
                Some(("restricted", _)) => Some(PsaLevel::Restricted),
                Some((v, line)) => {
                    return Err(env.invalid(
                        key,
                        line,
                        v,
                        "expected privileged, baseline or restricted",
                    ));
                }
            })
        };
        let pod_security = PodSecurity {
            enforce: level("POD_SECURITY_ENFORCE")?,
            audit: level("POD_SECURITY_AUDIT")?,
            warn: level("POD_SECURITY_WARN")?,
            version: match env.get("POD_SECURITY_VERSION") {
                None => None,
                Some((v, line)) => {
                    let ok = v == "latest"
                        || v.strip_prefix("v1.").is_some_and(|n| {
                            !n.is_empty() && n.chars().all(|c| c.is_ascii_digit())
                        });
                    if !ok {
                        return Err(env.invalid(
                            "POD_SECURITY_VERSION",
                            line,
                            v,
                            "expected latest or v1.N, e.g. v1.33",
                        ));
                    }
                    Some(v.to_owned())
                }
            },
        };

        let timeout = match env.get("HOOK_TIMEOUT_SECONDS") {
            None => DEFAULT_TIMEOUT,
            Some((v, line)) => match v.parse::<u64>() {
                Ok(n @ 1..=600) => Duration::from_secs(n),
                _ => {
                    return Err(env.invalid(
                        "HOOK_TIMEOUT_SECONDS",
                        line,
                        v,
                        "expected a whole number of seconds from 1 to 600",
                    ));
                }
            },
        };

        let issuer_url = match env.get("IDP_ISSUER_URL") {
            None => None,
            Some((v, line)) => {
                let (url, warning) =
                    issuer_url(v).map_err(|why| env.invalid("IDP_ISSUER_URL", line, v, why))?;
                warnings.extend(
                    warning.map(|w| format!("{}:{line}: IDP_ISSUER_URL: {w}", path.display())),
                );
                Some(url)
            }
        };

        let credentials = match env.get("K8S_CREDENTIALS") {
            None | Some(("auth-provider", _)) => CredentialMode::AuthProvider,
            Some(("token", _)) => CredentialMode::Token,
            Some(("exec", _)) => CredentialMode::Exec,
            Some(("none", _)) => CredentialMode::None,
            Some((v, line)) => {
                return Err(env.invalid(
                    "K8S_CREDENTIALS",
                    line,
                    v,
                    "expected auth-provider, token, exec or none",
                ));
            }
        };
        let kube_name = |key: &'static str, default: &str| -> Result<String, SettingsError> {
            let (v, line) = env.get(key).unwrap_or((default, 0));
            if v.chars().any(|c| c.is_whitespace() || c.is_control()) {
                return Err(env.invalid(
                    key,
                    line,
                    v,
                    "a kubeconfig entry name may not contain whitespace",
                ));
            }
            Ok(v.to_owned())
        };
        let cluster_name = kube_name("K8S_CLUSTER_NAME", "open-ondemand")?;
        let context_name = kube_name("K8S_CONTEXT_NAME", &cluster_name)?;
        let server = match env.get("K8S_SERVER") {
            None => None,
            Some((v, line)) => {
                if !v.starts_with("https://") {
                    return Err(env.invalid(
                        "K8S_SERVER",
                        line,
                        v,
                        "expected the API server's https:// URL",
                    ));
                }
                Some(v.trim_end_matches('/').to_owned())
            }
        };
        let abs_path = |key: &'static str| -> Result<Option<PathBuf>, SettingsError> {
            match env.get(key) {
                None => Ok(None),
                Some((v, line)) if !v.starts_with('/') => {
                    Err(env.invalid(key, line, v, "expected an absolute path"))
                }
                Some((v, _)) => Ok(Some(PathBuf::from(v))),
            }
        };
        let oidc = Oidc {
            issuer_url,
            client_id: env.get("CLIENT_ID").map(|(v, _)| v.to_owned()),
            client_secret: env.get("CLIENT_SECRET").map(|(v, _)| Secret::new(v)),
            ca_file: abs_path("IDP_CA_FILE")?,
        };
        let ca_file = abs_path("K8S_CA_FILE")?;
        if let (Some(ca), Some(line)) = (&ca_file, env.get("K8S_CA_FILE").map(|(_, l)| l))
            && let Err(e) = std::fs::metadata(ca)
        {
            return Err(env.invalid(
                "K8S_CA_FILE",
                line,
                &ca.to_string_lossy(),
                format!("cannot read it: {e}"),
            ));
        }
        if let Some((v, line)) = env.get("K8S_TOKEN_EXCHANGE_CLIENT_ID") {
            return Err(env.invalid(
                "K8S_TOKEN_EXCHANGE_CLIENT_ID",
                line,
                v,
                "RFC 8693 token exchange is not supported yet; for exec mode give a public client in \
                 K8S_EXEC_CLIENT_ID that the IdP lets request the API server's audience",
            ));
        }
        let kubeconfig = KubeconfigSettings {
            credentials,
            cluster_name,
            context_name,
            server,
            ca_file,
            exec_client_id: env.get("K8S_EXEC_CLIENT_ID").map(|(v, _)| v.to_owned()),
            exec_command: abs_path("K8S_EXEC_COMMAND")?,
        };
        if credentials == CredentialMode::AuthProvider || credentials == CredentialMode::Exec {
            for key in ["IDP_ISSUER_URL", "CLIENT_ID"] {
                if env.get(key).is_none() {
                    warnings.push(format!(
                        "{}: {key} is not set, but K8S_CREDENTIALS={} needs it to refresh tokens",
                        path.display(),
                        credentials.as_str()
                    ));
                }
            }
        }

        Ok(Self {
            username_prefix,
            namespace_prefix,
            allow_cidrs,
            user_subject_prefix,
            image_pull,
            job_pod_reaper,
            pod_security,
            timeout,
            oidc,
            kubeconfig,
            warnings,
        })
    }
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

/// Reads a docker config.json, checking it is JSON with an `auths` object.
/// Returns the content and a warning if others can read the file.
fn read_docker_config(path: &Path) -> Result<(Secret, Option<String>), String> {
    if !path.is_absolute() {
        return Err("expected an absolute path".into());
    }
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read the file: {e}"))?;
    let json: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| format!("the file is not valid JSON (line {})", e.line()))?;
    match json.get("auths") {
        Some(serde_json::Value::Object(auths)) if !auths.is_empty() => {}
        Some(serde_json::Value::Object(_)) => return Err("its \"auths\" object is empty".into()),
        _ => return Err("the file has no \"auths\" object; expected a docker config.json".into()),
    }
    let mut warning = None;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if let Ok(meta) = std::fs::metadata(path)
            && meta.permissions().mode() & 0o077 != 0
        {
            warning = Some(format!(
                "REGISTRY_DOCKER_CONFIG_JSON: {} holds registry credentials but is readable by others; chmod 600 it",
                path.display()
            ));
        }
    }
    Ok((Secret::new(text), warning))
}

/// Validates `IDP_ISSUER_URL`. The example OnDemand shipped holds a Keycloak
/// *token endpoint*, on which OIDC discovery (and so kubectl's refresh)
/// fails; that suffix is removed, with a warning.
fn issuer_url(v: &str) -> Result<(String, Option<String>), String> {
    if !v.starts_with("https://") && !v.starts_with("http://") {
        return Err("expected the issuer's https:// URL".into());
    }
    for suffix in [
        "/protocol/openid-connect/token",
        "/.well-known/openid-configuration",
    ] {
        if let Some(base) = v.trim_end_matches('/').strip_suffix(suffix) {
            return Ok((
                base.to_owned(),
                Some(format!(
                    "{v} is not an issuer URL; using {base} (fix hook.env to silence this)"
                )),
            ));
        }
    }
    Ok((v.to_owned(), None))
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
        assert_eq!(s.timeout, DEFAULT_TIMEOUT);
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
        // ':' is refused in prefixes
        assert!(s.is_err());
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
        let example = include_str!("../hooks/hook.env.example");
        for key in KNOWN_KEYS {
            assert!(
                example.contains(&format!("\n{key}=")),
                "{key} is not in hooks/hook.env.example"
            );
        }
        let s = parse(example).unwrap();
        assert!(
            !s.warnings.iter().any(|w| w.contains("unknown key")),
            "{:?}",
            s.warnings
        );
    }

    #[test]
    fn syntax_error_names_line() {
        let msg = err("NETWORK_POLICY_ALLOW_CIDR=10.0.0.0/8\nthis is not a pair\n");
        assert!(msg.contains("hook.env:2"), "{msg}");
    }
}
