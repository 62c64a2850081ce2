//! Pure: one file of the dashboard's `clusters.d`, read as ood_core's
//! Kubernetes adapter reads it (SPEC §8), turned into the hook.env values
//! it decides. The dashboard's files are the source of truth for names the
//! dashboard computes (cluster, context, prefixes, server, kubeconfig file),
//! so a hook.env that says otherwise is refused, naming both files.
//! [`read_job`] is the one reader of these files: the hook's [`parse`]
//! checks what it reads strictly, `doctor` reports on it.

use std::path::{Path, PathBuf};

use serde_json::Value;
use thiserror::Error;

/// ood_core's cluster name when `job.cluster` is unset (and, for OIDC, its
/// context name).
pub const DEFAULT_CLUSTER: &str = "open-ondemand";
/// ood_core's `job.auth.type` when unset: credentials come from elsewhere.
pub const DEFAULT_AUTH: &str = "managed";

/// The ERB forms of the user's home directory sites write in `config_file`
/// (clusters.d files are ERB templates, evaluated as the user).
const HOME_FORMS: &[&str] = &[
    "<%= Dir.home %>",
    "<%= ENV['HOME'] %>",
    "<%= ENV[\"HOME\"] %>",
    "<%= ENV.fetch('HOME') %>",
];

/// One Kubernetes cluster of clusters.d.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterFile {
    /// The file name without `.yml`/`.yaml`: the dashboard's cluster id.
    pub id: String,
    pub path: PathBuf,
    /// The hook.env keys the file decides, with their values.
    pub decides: Vec<Decided>,
    /// The kubeconfig file in the user's `~/.kube` (`job.config_file`).
    pub kubeconfig_file: String,
}

/// A hook.env key's value as the cluster file decides it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decided {
    pub key: &'static str,
    pub value: String,
    /// Where in the file: `job.cluster`, or `job.cluster unset (ood_core's
    /// default)`.
    pub from: String,
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum ClusterFileError {
    #[error(
        "{path}: the file name {name:?} is not a usable cluster id (letters, digits, '.', '_' and '-', not starting with '.')"
    )]
    Id { path: PathBuf, name: String },
    #[error("{path}: it is not valid YAML as the dashboard reads it ({why})")]
    Yaml { path: PathBuf, why: String },
    #[error(
        "{path}:{line}: ERB the hook cannot evaluate ({snippet}); only the home directory (`<%= Dir.home %>`) in job.config_file is understood"
    )]
    Erb {
        path: PathBuf,
        line: usize,
        snippet: String,
    },
    #[error("{path}: job.config_file {value:?}: {why}")]
    ConfigFile {
        path: PathBuf,
        value: String,
        why: String,
    },
}

/// A Kubernetes cluster file's `v2.job`: the fields the hook and `doctor`
/// look at, unset or as the strings Ruby would make of their scalars.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JobFields {
    pub cluster: Option<String>,
    pub context: Option<String>,
    pub config_file: Option<String>,
    pub username_prefix: Option<String>,
    pub namespace_prefix: Option<String>,
    /// `server.endpoint`.
    pub endpoint: Option<String>,
    /// `server.cert_authority_file`.
    pub ca_file: Option<String>,
    /// `auth.type`.
    pub auth_type: Option<String>,
}

/// Reads a clusters.d file's YAML: `None` when it is not a Kubernetes
/// cluster (another adapter, or a v1 file). The error is the parser's
/// first words, with no text of the file in it.
pub fn read_job(text: &str) -> Result<Option<JobFields>, String> {
    let doc: Value = serde_saphyr::from_str(text)
        .map_err(|e| crate::oneline::clean(&first_words(&e.to_string()), 200))?;
    let Some(job) = doc.pointer("/v2/job") else {
        return Ok(None);
    };
    let field = |pointer: &str| scalar(job, pointer);
    if field("/adapter")?.as_deref() != Some("kubernetes") {
        return Ok(None);
    }
    Ok(Some(JobFields {
        cluster: field("/cluster")?,
        context: field("/context")?,
        config_file: field("/config_file")?,
        username_prefix: field("/username_prefix")?,
        namespace_prefix: field("/namespace_prefix")?,
        endpoint: field("/server/endpoint")?,
        ca_file: field("/server/cert_authority_file")?,
        auth_type: field("/auth/type")?,
    }))
}

/// The scalar at `pointer` in `job` as the Ruby side would see it as a
/// string; `None` when unset or null; an error for a list or a map.
fn scalar(job: &Value, pointer: &str) -> Result<Option<String>, String> {
    match job.pointer(pointer) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(Value::Number(n)) => Ok(Some(n.to_string())),
        Some(Value::Bool(b)) => Ok(Some(b.to_string())),
        Some(_) => Err(format!(
            "job{} is a list or a map, not a single value",
            pointer.replace('/', ".")
        )),
    }
}

/// The cluster id of a clusters.d file name, if it is a cluster file.
fn id_of(path: &Path) -> Result<String, ClusterFileError> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let stem = name
        .strip_suffix(".yml")
        .or_else(|| name.strip_suffix(".yaml"))
        .unwrap_or(&name);
    let ok = !stem.is_empty()
        && !stem.starts_with('.')
        && stem.len() <= 100
        && stem
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if ok {
        Ok(stem.to_owned())
    } else {
        Err(ClusterFileError::Id {
            path: path.to_owned(),
            name: stem.to_owned(),
        })
    }
}

/// Reads one clusters.d file: `None` when it is not a Kubernetes cluster
/// (another adapter, or a v1 file).
pub fn parse(path: &Path, text: &str) -> Result<Option<ClusterFile>, ClusterFileError> {
    check_erb(path, text)?;
    let job = read_job(text).map_err(|why| ClusterFileError::Yaml {
        path: path.to_owned(),
        why,
    })?;
    let Some(job) = job else {
        return Ok(None);
    };
    let id = id_of(path)?;
    let kubeconfig_file = config_file(path, job.config_file.as_deref())?;
    Ok(Some(ClusterFile {
        id,
        path: path.to_owned(),
        decides: decides(&job),
        kubeconfig_file,
    }))
}

/// The values the file decides, defaults included (an unset prefix is the
/// empty prefix to the dashboard, so a hook.env prefix would contradict it).
fn decides(job: &JobFields) -> Vec<Decided> {
    let given = |key, field: &str, v: &Option<String>, default: Option<&str>| match (v, default) {
        (Some(v), _) => Some(Decided {
            key,
            value: v.clone(),
            from: format!("job.{field}"),
        }),
        (None, Some(d)) => Some(Decided {
            key,
            value: d.to_owned(),
            from: format!("job.{field} unset (ood_core's default {d:?})"),
        }),
        (None, None) => None,
    };
    // ood_core's default auth is `managed` (credentials from elsewhere):
    // only for oidc does the dashboard write a context, named after the
    // cluster unless `job.context` says otherwise.
    let oidc = job.auth_type.as_deref() == Some("oidc");
    let cluster = job
        .cluster
        .clone()
        .unwrap_or_else(|| DEFAULT_CLUSTER.into());
    [
        given(
            "K8S_CLUSTER_NAME",
            "cluster",
            &job.cluster,
            Some(DEFAULT_CLUSTER),
        ),
        given(
            "K8S_CONTEXT_NAME",
            "context",
            &job.context,
            oidc.then_some(cluster.as_str()),
        ),
        given(
            "K8S_USERNAME_PREFIX",
            "username_prefix",
            &job.username_prefix,
            Some(""),
        ),
        given(
            "NAMESPACE_PREFIX",
            "namespace_prefix",
            &job.namespace_prefix,
            Some(""),
        ),
        given("K8S_SERVER", "server.endpoint", &job.endpoint, None),
        given(
            "K8S_CA_FILE",
            "server.cert_authority_file",
            &job.ca_file,
            None,
        ),
    ]
    .into_iter()
    .flatten()
    .collect()
}

/// `job.config_file` as a file name in `~/.kube`: unset is `config`.
fn config_file(path: &Path, value: Option<&str>) -> Result<String, ClusterFileError> {
    let Some(value) = value else {
        return Ok(crate::site::settings::DEFAULT_KUBECONFIG_FILE.into());
    };
    let bad = |why: &str| ClusterFileError::ConfigFile {
        path: path.to_owned(),
        value: crate::oneline::clean(value, 120),
        why: why.to_owned(),
    };
    if value.starts_with('~') {
        return Err(bad(
            "ood_core does not expand '~' (the dashboard would use a relative path); \
             write <%= Dir.home %>/.kube/NAME",
        ));
    }
    let Some(rest) = HOME_FORMS.iter().find_map(|f| value.strip_prefix(f)) else {
        return Err(bad(
            "a fixed path would be one file for every user; the hook writes each user's \
             kubeconfig in their own ~/.kube, so write <%= Dir.home %>/.kube/NAME",
        ));
    };
    let Some(name) = rest.strip_prefix("/.kube/") else {
        return Err(bad(
            "the hook writes users' kubeconfigs only in ~/.kube: write <%= Dir.home %>/.kube/NAME",
        ));
    };
    if is_kubeconfig_name(name) {
        Ok(name.to_owned())
    } else {
        Err(bad(
            "the file name in ~/.kube must be letters, digits, '.', '_' and '-', not starting \
             with '.', not ending in .lock, and not \"cache\"",
        ))
    }
}

/// A kubeconfig file name in `~/.kube` a cluster may name (and the writer
/// child, which gets it through a pipe, accepts): a plain name, not hidden,
/// not a lock, not the `cache` directory.
pub fn is_kubeconfig_name(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with('.')
        && !name.ends_with(".lock")
        && name != "cache"
        && name.len() <= 200
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

/// Refuses ERB other than the home directory forms.
fn check_erb(path: &Path, text: &str) -> Result<(), ClusterFileError> {
    let mut at = 0;
    while let Some(i) = text[at..].find("<%") {
        let start = at + i;
        match HOME_FORMS.iter().find(|f| text[start..].starts_with(**f)) {
            Some(f) => at = start + f.len(),
            None => {
                let end = text[start..]
                    .find("%>")
                    .map_or(text.len(), |e| start + e + 2)
                    .min(start + 60);
                let mut cut = end;
                while !text.is_char_boundary(cut) {
                    cut -= 1;
                }
                return Err(ClusterFileError::Erb {
                    path: path.to_owned(),
                    line: text[..start].matches('\n').count() + 1,
                    snippet: crate::oneline::clean(&text[start..cut], 60),
                });
            }
        }
    }
    Ok(())
}

/// The parser's message without any quoted text from the file.
fn first_words(e: &str) -> String {
    e.split(['"', '\'', '`'])
        .next()
        .unwrap_or("")
        .trim()
        .to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(name: &str, text: &str) -> Result<Option<ClusterFile>, ClusterFileError> {
        parse(
            Path::new(&format!("/etc/ood/config/clusters.d/{name}")),
            text,
        )
    }

    fn value<'a>(c: &'a ClusterFile, key: &str) -> Option<&'a str> {
        c.decides
            .iter()
            .find(|d| d.key == key)
            .map(|d| d.value.as_str())
    }

    const GPU: &str = r#"---
v2:
  metadata:
    title: "GPU"
  job:
    adapter: "kubernetes"
    cluster: "gpu"
    config_file: "<%= Dir.home %>/.kube/gpu"
    username_prefix: "gpu-"
    namespace_prefix: "g-"
    server:
      endpoint: "https://gpu.example.org:6443"
      cert_authority_file: "/etc/pki/gpu-ca.crt"
    auth:
      type: "oidc"
"#;

    #[test]
    fn a_kubernetes_cluster_decides_names_prefixes_server_and_file() {
        let c = file("gpu.yml", GPU).unwrap().unwrap();
        assert_eq!(c.id, "gpu");
        assert_eq!(c.kubeconfig_file, "gpu");
        assert_eq!(value(&c, "K8S_CLUSTER_NAME"), Some("gpu"));
        assert_eq!(
            value(&c, "K8S_CONTEXT_NAME"),
            Some("gpu"),
            "oidc: context = cluster"
        );
        assert_eq!(value(&c, "K8S_USERNAME_PREFIX"), Some("gpu-"));
        assert_eq!(value(&c, "NAMESPACE_PREFIX"), Some("g-"));
        assert_eq!(
            value(&c, "K8S_SERVER"),
            Some("https://gpu.example.org:6443")
        );
        assert_eq!(value(&c, "K8S_CA_FILE"), Some("/etc/pki/gpu-ca.crt"));
        assert_eq!(
            value(&c, "K8S_CREDENTIALS"),
            None,
            "hook.env says what credentials"
        );
    }

    #[test]
    fn unset_fields_are_ood_cores_defaults() {
        let c = file("k8s.yaml", "v2:\n  job:\n    adapter: kubernetes\n")
            .unwrap()
            .unwrap();
        assert_eq!(c.id, "k8s");
        assert_eq!(c.kubeconfig_file, "config");
        assert_eq!(value(&c, "K8S_CLUSTER_NAME"), Some("open-ondemand"));
        assert_eq!(
            value(&c, "K8S_CONTEXT_NAME"),
            None,
            "managed auth: no context"
        );
        assert_eq!(value(&c, "K8S_USERNAME_PREFIX"), Some(""));
        assert_eq!(value(&c, "K8S_SERVER"), None);
        let oidc = "v2:\n  job:\n    adapter: kubernetes\n    auth:\n      type: oidc\n";
        let c = file("o.yml", oidc).unwrap().unwrap();
        assert_eq!(value(&c, "K8S_CONTEXT_NAME"), Some("open-ondemand"));
    }

    #[test]
    fn other_adapters_and_v1_files_are_not_clusters_to_bootstrap() {
        let slurm = "v2:\n  metadata:\n    title: Owens\n  job:\n    adapter: slurm\n";
        assert_eq!(file("owens.yml", slurm), Ok(None));
        assert_eq!(file("old.yml", "v1:\n  title: x\n"), Ok(None));
        assert_eq!(file("login.yml", "v2:\n  login:\n    host: x\n"), Ok(None));
    }

    #[test]
    fn config_files_the_hook_cannot_write_per_user_are_refused() {
        for (value, says) in [
            ("~/.kube/gpu", "does not expand '~'"),
            ("/etc/kube/shared", "one file for every user"),
            ("<%= Dir.home %>/gpu.conf", "only in ~/.kube"),
            ("<%= Dir.home %>/.kube/../x", "file name in ~/.kube"),
            ("<%= Dir.home %>/.kube/cache", "file name in ~/.kube"),
            (
                "<%= ENV['HOME'] %>/.kube/config.lock",
                "file name in ~/.kube",
            ),
        ] {
            let text =
                format!("v2:\n  job:\n    adapter: kubernetes\n    config_file: \"{value}\"\n");
            let e = file("c.yml", &text).unwrap_err().to_string();
            assert!(
                e.contains("clusters.d/c.yml") && e.contains(says),
                "{value}: {e}"
            );
        }
        let text = "v2:\n  job:\n    adapter: kubernetes\n    config_file: \"<%= ENV['HOME'] %>/.kube/prod\"\n";
        assert_eq!(
            file("p.yml", text).unwrap().unwrap().kubeconfig_file,
            "prod"
        );
    }

    #[test]
    fn other_erb_bad_yaml_and_bad_ids_are_named() {
        let erb = "v2:\n  job:\n    adapter: kubernetes\n    cluster: \"<%= `hostname` %>\"\n";
        let e = file("e.yml", erb).unwrap_err().to_string();
        assert!(e.contains("e.yml:4") && e.contains("ERB"), "{e}");
        let e = file("y.yml", "v2: [\n").unwrap_err().to_string();
        assert!(e.contains("y.yml") && e.contains("not valid YAML"), "{e}");
        let e = file("a b.yml", "v2:\n  job:\n    adapter: kubernetes\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("not a usable cluster id"), "{e}");
        let typed = "v2:\n  job:\n    adapter: kubernetes\n    cluster: [1, 2]\n";
        let e = file("t.yml", typed).unwrap_err().to_string();
        assert!(
            e.contains("t.yml") && e.contains("job.cluster is a list"),
            "{e}"
        );
    }

    #[test]
    fn scalars_are_read_as_the_dashboard_would_print_them() {
        let text = "v2:\n  job:\n    adapter: kubernetes\n    cluster: 7\n    context: ~\n";
        let job = read_job(text).unwrap().unwrap();
        assert_eq!(job.cluster.as_deref(), Some("7"));
        assert_eq!(job.context, None);
        let decided = file("s.yml", text).unwrap().unwrap().decides;
        assert!(
            decided
                .iter()
                .any(|d| d.key == "K8S_CLUSTER_NAME" && d.value == "7"),
            "{decided:?}"
        );
        assert_eq!(read_job("v2:\n  job:\n    adapter: slurm\n"), Ok(None));
        assert_eq!(read_job("v1:\n  title: old\n"), Ok(None));
    }
}
