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

/// The forms of the user's home directory a `config_file` may start with:
/// ood_core reads clusters.d as plain YAML (no ERB, SPEC §13) and hands
/// `config_file` to kubectl inside a command string `sh -c` runs, so the
/// shell expands `$HOME` to the user's home (the PUN's, from passwd, which
/// is where the hook writes).
const HOME_FORMS: &[&str] = &["$HOME", "${HOME}"];

/// The `config_file` form that works for every user, for messages.
pub const WORKING_FORM: &str = "$HOME/.kube/NAME";

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
        "{path}: job.{field} {snippet:?} holds ERB, which the dashboard does not evaluate (it reads clusters.d as plain YAML, so kubectl would get the text as it is): write the value itself"
    )]
    Erb {
        path: PathBuf,
        field: String,
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

impl JobFields {
    /// The fields with their names under `job.`, for messages.
    fn named(&self) -> [(&'static str, Option<&str>); 8] {
        [
            ("cluster", self.cluster.as_deref()),
            ("context", self.context.as_deref()),
            ("config_file", self.config_file.as_deref()),
            ("username_prefix", self.username_prefix.as_deref()),
            ("namespace_prefix", self.namespace_prefix.as_deref()),
            ("server.endpoint", self.endpoint.as_deref()),
            ("server.cert_authority_file", self.ca_file.as_deref()),
            ("auth.type", self.auth_type.as_deref()),
        ]
    }
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
/// (another adapter, or a v1 file). Only the Kubernetes job fields the
/// hook reads are checked: ERB or anything else in other adapters' files,
/// or in fields the hook does not read, is the dashboard's business. A
/// file that is not YAML at all and names no Kubernetes adapter is skipped
/// with a warning (the dashboard cannot read it either).
pub fn parse(
    path: &Path,
    text: &str,
    warnings: &mut Vec<String>,
) -> Result<Option<ClusterFile>, ClusterFileError> {
    let path = &shown(path);
    let job = match read_job(text) {
        Ok(job) => job,
        Err(why) if !text.contains("kubernetes") => {
            warnings.push(format!(
                "{}: skipped: not valid YAML as the dashboard reads it ({why}), and it names no kubernetes adapter",
                path.display()
            ));
            return Ok(None);
        }
        Err(why) => {
            return Err(ClusterFileError::Yaml {
                path: path.to_owned(),
                why,
            });
        }
    };
    let Some(job) = job else {
        return Ok(None);
    };
    let id = id_of(path)?;
    let kubeconfig_file = config_file(path, job.config_file.as_deref())?;
    check_erb(path, &job)?;
    Ok(Some(ClusterFile {
        id,
        path: path.to_owned(),
        decides: decides(&job),
        kubeconfig_file,
    }))
}

/// The file's path as messages show it: control and invisible format
/// characters in a file name (U+202E, U+2028, …) become `?`, so no name in
/// clusters.d can make a log line read other than it is.
fn shown(path: &Path) -> PathBuf {
    path.to_string_lossy()
        .chars()
        .map(|c| {
            if c.is_control() || crate::oneline::is_format(c) {
                '?'
            } else {
                c
            }
        })
        .collect::<String>()
        .into()
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
    kubeconfig_file(value).map_err(|why| ClusterFileError::ConfigFile {
        path: path.to_owned(),
        value: crate::oneline::clean(value, 120),
        why,
    })
}

/// A set `config_file` as a file name in the user's `~/.kube`, or why the
/// dashboard and the hook cannot both use it per user (`doctor` says the
/// same).
pub fn kubeconfig_file(value: &str) -> Result<String, String> {
    if value.contains("<%") {
        return Err(format!(
            "ERB is not evaluated by the dashboard (it reads clusters.d as plain YAML, and kubectl \
             run through sh -c would fail: \"sh: cannot open %=\"); write {WORKING_FORM}"
        ));
    }
    if value.starts_with('~') {
        return Err(format!(
            "ood_core does not expand '~' (the dashboard would use a relative path); write {WORKING_FORM}"
        ));
    }
    let Some(rest) = HOME_FORMS.iter().find_map(|f| value.strip_prefix(f)) else {
        return Err(format!(
            "a fixed path would be one file for every user; the hook writes each user's \
             kubeconfig in their own ~/.kube, so write {WORKING_FORM}"
        ));
    };
    let Some(name) = rest.strip_prefix("/.kube/") else {
        return Err(format!(
            "the hook writes users' kubeconfigs only in ~/.kube: write {WORKING_FORM}"
        ));
    };
    if is_kubeconfig_name(name) {
        Ok(name.to_owned())
    } else {
        Err(
            "the file name in ~/.kube must be letters, digits, '.', '_' and '-', not starting \
             with '.', not ending in .lock, and not \"cache\""
                .into(),
        )
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

/// Refuses ERB in the job fields the hook reads (`config_file` has its
/// own message): the dashboard would use the text as it is.
fn check_erb(path: &Path, job: &JobFields) -> Result<(), ClusterFileError> {
    match job
        .named()
        .into_iter()
        .find(|(_, v)| v.is_some_and(|v| v.contains("<%")))
    {
        Some((field, Some(v))) => Err(ClusterFileError::Erb {
            path: path.to_owned(),
            field: field.to_owned(),
            snippet: crate::oneline::clean(v, 60),
        }),
        _ => Ok(()),
    }
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
            &mut Vec::new(),
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
    config_file: "$HOME/.kube/gpu"
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
            ("$HOME/gpu.conf", "only in ~/.kube"),
            ("$HOME/.kube/../x", "file name in ~/.kube"),
            ("$HOME/.kube/cache", "file name in ~/.kube"),
            ("${HOME}/.kube/config.lock", "file name in ~/.kube"),
            ("$HOMER/.kube/x", "only in ~/.kube"),
            ("$HOME/.kube/x;id", "file name in ~/.kube"),
        ] {
            let text =
                format!("v2:\n  job:\n    adapter: kubernetes\n    config_file: \"{value}\"\n");
            let e = file("c.yml", &text).unwrap_err().to_string();
            assert!(
                e.contains("clusters.d/c.yml") && e.contains(says),
                "{value}: {e}"
            );
        }
    }

    /// ood_core runs `kubectl --kubeconfig=CONFIG_FILE …` through `sh -c`
    /// without evaluating ERB: `$HOME` is the form that works per user.
    #[test]
    fn the_home_forms_the_dashboards_shell_expands_are_accepted() {
        for (value, name) in [
            ("$HOME/.kube/prod", "prod"),
            ("${HOME}/.kube/prod", "prod"),
            ("$HOME/.kube/config", "config"),
        ] {
            let text =
                format!("v2:\n  job:\n    adapter: kubernetes\n    config_file: \"{value}\"\n");
            assert_eq!(
                file("p.yml", &text).unwrap().unwrap().kubeconfig_file,
                name,
                "{value}"
            );
        }
    }

    #[test]
    fn erb_in_config_file_is_refused_naming_the_form_that_works() {
        for value in [
            "<%= Dir.home %>/.kube/gpu",
            "<%= ENV['HOME'] %>/.kube/gpu",
            "$HOME/.kube/<%= x %>",
        ] {
            let text =
                format!("v2:\n  job:\n    adapter: kubernetes\n    config_file: \"{value}\"\n");
            let e = file("gpu.yml", &text).unwrap_err().to_string();
            assert!(
                e.contains("clusters.d/gpu.yml")
                    && e.contains("job.config_file")
                    && e.contains("ERB")
                    && e.contains("$HOME/.kube/NAME"),
                "{value}: {e}"
            );
        }
    }

    #[test]
    fn erb_the_hook_does_not_read_is_left_to_the_dashboard() {
        let slurm = "v2:\n  metadata:\n    title: \"<%= 'Owens' %>\"\n  login:\n    host: \"<%= `hostname` %>\"\n  job:\n    adapter: slurm\n    cluster: \"<%= c %>\"\n";
        assert_eq!(file("owens.yml", slurm), Ok(None));
        let k8s = "v2:\n  metadata:\n    title: \"<%= 'K' %>\"\n  job:\n    adapter: kubernetes\n    bin: \"<%= b %>\"\n";
        assert_eq!(
            file("k.yml", k8s).unwrap().unwrap().kubeconfig_file,
            "config"
        );
        // ERB lines that leave no YAML: the dashboard cannot read the file
        // either; it names no kubernetes adapter, so it is skipped.
        let broken = "v2:\n  job:\n    adapter: slurm\n<% if x %>\n  - a: [\n<% end %>\n";
        let mut warnings = Vec::new();
        let p = Path::new("/etc/ood/config/clusters.d/b.yml");
        assert_eq!(parse(p, broken, &mut warnings), Ok(None));
        assert!(
            warnings.len() == 1 && warnings[0].contains("b.yml: skipped"),
            "{warnings:?}"
        );
    }

    #[test]
    fn erb_the_hook_reads_bad_yaml_and_bad_ids_are_named() {
        let erb = "v2:\n  job:\n    adapter: kubernetes\n    cluster: \"<%= `hostname` %>\"\n";
        let e = file("e.yml", erb).unwrap_err().to_string();
        assert!(e.contains("e.yml: job.cluster") && e.contains("ERB"), "{e}");
        let e = file("y.yml", "v2: [\n  adapter: kubernetes\n")
            .unwrap_err()
            .to_string();
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

    /// Nothing of a clusters.d file name or value may make a log line read
    /// other than it is (U+202E reverses what follows, U+2028 breaks lines).
    #[test]
    fn format_characters_in_names_and_values_do_not_reach_messages() {
        let clean = |e: &str| {
            !e.chars()
                .any(|c| c.is_control() || crate::oneline::is_format(c))
        };
        let k8s = "v2:\n  job:\n    adapter: kubernetes\n";
        let e = file("gpu\u{202E}lmy.yml", k8s).unwrap_err().to_string();
        assert!(e.contains("gpu?lmy") && clean(&e), "{e:?}");
        for value in ["$HOME/.kube/a\u{2028}b", "~/\u{202E}x", "<%= \u{2066}x %>"] {
            let text = format!("{k8s}    config_file: \"{value}\"\n");
            let e = file("c.yml", &text).unwrap_err().to_string();
            assert!(clean(&e), "{value:?}: {e:?}");
        }
        let erb = format!("{k8s}    cluster: \"<%= \u{202E}x %>\"\n");
        let e = file("e.yml", &erb).unwrap_err().to_string();
        assert!(clean(&e), "{e:?}");
        let mut warnings = Vec::new();
        let p = Path::new("/etc/ood/config/clusters.d/\u{2028}b.yml");
        assert_eq!(parse(p, "v2: [\n", &mut warnings), Ok(None));
        assert!(warnings.iter().all(|w| clean(w)), "{warnings:?}");
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
