//! The site's whole configuration: hook.env alone (one cluster, as the old
//! hooks had it) or, with `CLUSTERS_D`, one [`Settings`] per Kubernetes
//! cluster of the dashboard's clusters.d — hook.env, then the cluster's
//! `HOOK_ENV_D/<id>.env` overrides, then what the cluster file decides. A
//! contradiction between the layers is refused here, naming both files,
//! before anything is touched.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use super::clusters::{self, ClusterFile};
use super::envfile::EnvFile;
use super::keys::{self, Draft};
use super::{NamedFiles, Settings, SettingsError, Trusted, unknown_keys};
use crate::site::trusted::TrustError;

/// Every cluster a login bootstraps.
#[derive(Debug)]
pub struct Site {
    /// One per cluster, in clusters.d's order; exactly one (with no
    /// `cluster_id`) without `CLUSTERS_D`.
    pub clusters: Vec<Settings>,
    /// Warnings from reading the files (each once).
    pub warnings: Vec<String>,
}

impl Site {
    /// Reads hook.env and, with `CLUSTERS_D`, the cluster files and their
    /// overrides.
    pub fn load(path: &Path) -> Result<Self, SettingsError> {
        Self::parse_with(path, &super::read_hook_env(path)?, &Trusted)
    }

    /// [`Site::load`] on hook.env's text, other files through `files`.
    pub fn parse_with(
        path: &Path,
        text: &str,
        files: &dyn NamedFiles,
    ) -> Result<Self, SettingsError> {
        let base = EnvFile::parse(path, text)?;
        let mut warnings = unknown_keys(&base)?;
        let sources = site_keys(&base)?;
        let Some(dir) = sources.clusters_d else {
            let mut settings = Settings::from_env(&base, files, Vec::new())?;
            warnings.append(&mut settings.warnings);
            return Ok(Self {
                clusters: vec![settings],
                warnings,
            });
        };
        let mut clusters = Vec::new();
        let mut paths = Vec::new();
        for (file, text) in files
            .templates(&dir)
            .map_err(|why| SettingsError::ClustersDir {
                path: path.to_owned(),
                dir: dir.clone(),
                why,
            })?
        {
            let Some(cluster) = clusters::parse(Path::new(&file), &text, &mut warnings)? else {
                continue;
            };
            let layered = layer(&base, &cluster, &sources.hook_env_d, files, &mut warnings)?;
            let mut settings = Settings::from_env(&layered, files, Vec::new())?;
            warnings.append(&mut settings.warnings);
            settings.cluster_id = Some(cluster.id.clone());
            settings.kubeconfig.file = cluster.kubeconfig_file.clone();
            clusters.push(settings);
            paths.push(cluster.path);
        }
        if clusters.is_empty() {
            return Err(SettingsError::NoClusters {
                path: path.to_owned(),
                dir,
            });
        }
        check_apart(&clusters, &sources.hook_env_d)?;
        check_broker_names(&clusters, &paths)?;
        assign_broker_sets(&mut clusters);
        let mut seen = BTreeSet::new();
        warnings.retain(|w| seen.insert(w.clone()));
        Ok(Self { clusters, warnings })
    }

    /// The clusters named (all when `id` is none); an unknown id is an
    /// error listing the known ones.
    pub fn select(&self, id: Option<&str>) -> Result<Vec<&Settings>, String> {
        let Some(id) = id else {
            return Ok(self.clusters.iter().collect());
        };
        let found: Vec<_> = self
            .clusters
            .iter()
            .filter(|s| s.cluster_id.as_deref() == Some(id))
            .collect();
        if found.is_empty() {
            let known: Vec<_> = self
                .clusters
                .iter()
                .filter_map(|s| s.cluster_id.as_deref())
                .collect();
            return Err(if known.is_empty() {
                format!(
                    "--cluster {id}: CLUSTERS_D is not set, so there is one cluster, configured by hook.env alone; leave --cluster out"
                )
            } else {
                format!(
                    "--cluster {id}: no Kubernetes cluster of that id in CLUSTERS_D (known: {})",
                    known.join(", ")
                )
            });
        }
        Ok(found)
    }
}

/// `CLUSTERS_D` and `HOOK_ENV_D`, parsed by their key table entries.
fn site_keys(file: &EnvFile) -> Result<Draft, SettingsError> {
    let mut draft = Draft::default();
    for key in keys::KEYS
        .iter()
        .filter(|k| matches!(k.name, "CLUSTERS_D" | "HOOK_ENV_D"))
    {
        let (value, line) = file.get(key.name).unwrap_or((key.default, 0));
        (key.parse)(value, &mut draft)
            .map_err(|why| super::invalid(file, key.name, line, value, why))?;
    }
    Ok(draft)
}

/// hook.env with the cluster's overrides laid over it, then the values the
/// cluster file decides (a different explicit value is refused).
fn layer(
    base: &EnvFile,
    cluster: &ClusterFile,
    overrides_dir: &Path,
    files: &dyn NamedFiles,
    warnings: &mut Vec<String>,
) -> Result<EnvFile, SettingsError> {
    let mut layered = EnvFile {
        path: base.path.clone(),
        entries: base.entries.clone(),
    };
    let overrides = overrides_dir.join(format!("{}.env", cluster.id));
    if let Some(text) = read_optional(files, &overrides)? {
        let file = EnvFile::parse(&overrides, &text)?;
        warnings.extend(unknown_keys(&file)?);
        for (name, entry) in &file.entries {
            if keys::find(name).is_some_and(|k| !k.per_cluster) {
                return Err(SettingsError::NotPerCluster {
                    path: overrides.clone(),
                    line: entry.line,
                    key: name.clone(),
                });
            }
            layered.overlay(name, &entry.value, entry.line, &overrides);
        }
    }
    for d in &cluster.decides {
        if let Some((value, line)) = layered.get(d.key)
            && value != d.value
        {
            return Err(SettingsError::Contradiction {
                path: layered.path_of(d.key).to_owned(),
                line,
                key: d.key,
                value: value.to_owned(),
                says: format!("{} ({}: {:?})", cluster.path.display(), d.from, d.value),
            });
        }
        layered.overlay(d.key, &d.value, 0, &cluster.path);
    }
    Ok(layered)
}

/// A file that may be missing (a cluster without overrides).
fn read_optional(files: &dyn NamedFiles, path: &Path) -> Result<Option<String>, SettingsError> {
    match files.read(path) {
        Ok(bytes) => String::from_utf8(bytes)
            .map(Some)
            .map_err(|_| SettingsError::Syntax {
                path: path.to_owned(),
                line: 0,
            }),
        Err(TrustError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
            Ok(None)
        }
        Err(e) => Err(SettingsError::Untrusted(e)),
    }
}

/// Two clusters must not reach the same API server through the same root
/// credentials, nor write the same kubeconfig entry names into one file.
fn check_apart(clusters: &[Settings], overrides: &Path) -> Result<(), SettingsError> {
    for (i, a) in clusters.iter().enumerate() {
        for b in &clusters[i + 1..] {
            let (ida, idb) = (id(a), id(b));
            if a.root == b.root {
                return Err(SettingsError::SameRoot {
                    a: ida.into(),
                    b: idb.into(),
                    file: overrides.join(format!("{idb}.env")),
                });
            }
            let same_file = a.kubeconfig.file == b.kubeconfig.file;
            let clash = [
                (
                    "cluster",
                    &a.kubeconfig.cluster_name,
                    &b.kubeconfig.cluster_name,
                ),
                (
                    "context",
                    &a.kubeconfig.context_name,
                    &b.kubeconfig.context_name,
                ),
            ]
            .into_iter()
            .find(|(_, x, y)| same_file && x == y && a.kubeconfig.server.is_some());
            if let Some((what, name, _)) = clash {
                return Err(SettingsError::SameEntry {
                    a: ida.into(),
                    b: idb.into(),
                    what,
                    name: name.clone(),
                    file: a.kubeconfig.file.clone(),
                });
            }
            if same_file
                && a.username_prefix == b.username_prefix
                && credentials(a) != credentials(b)
            {
                return Err(SettingsError::SameEntry {
                    a: ida.into(),
                    b: idb.into(),
                    what: "user",
                    name: format!("{}USERNAME", a.username_prefix),
                    file: a.kubeconfig.file.clone(),
                });
            }
        }
    }
    Ok(())
}

/// The credential broker's plugin names the kubeconfig cluster its token is
/// for, and the broker serves the token set of the first cluster of that
/// name: two clusters in broker mode of one name (two files leaving
/// `job.cluster` unset are both `open-ondemand`) must then share their
/// issuer, client and audience, or one would be served the other's token.
fn check_broker_names(clusters: &[Settings], paths: &[PathBuf]) -> Result<(), SettingsError> {
    let brokered = clusters
        .iter()
        .zip(paths)
        .filter(|(s, _)| s.kubeconfig.credentials == super::CredentialMode::Broker);
    let brokered: Vec<_> = brokered.collect();
    for (i, (a, pa)) in brokered.iter().enumerate() {
        if let Some((_, pb)) = brokered[i + 1..].iter().find(|(b, _)| {
            b.kubeconfig.cluster_name == a.kubeconfig.cluster_name
                && credentials(a) != credentials(b)
        }) {
            return Err(SettingsError::SameBrokerName {
                a: (*pa).clone(),
                b: (*pb).clone(),
                name: a.kubeconfig.cluster_name.clone(),
            });
        }
    }
    Ok(())
}

/// The credential broker keeps one token set per user for each issuer,
/// client and audience the clusters in broker mode use: the first such
/// cluster's sets stay in `BROKER_STATE_DIR` itself (as with one cluster),
/// every other combination gets a directory of its own there
/// (`set-<hash>`), which the hook stores into and the broker serves from
/// (it tells the clusters apart by the kubeconfig cluster name its plugin
/// sends).
fn assign_broker_sets(clusters: &mut [Settings]) {
    let mut first = None;
    for s in clusters
        .iter_mut()
        .filter(|s| s.kubeconfig.credentials == super::CredentialMode::Broker)
    {
        let key = credentials(s);
        match &first {
            None => first = Some(key),
            Some(f) if *f == key => {}
            Some(_) => {
                let dir = format!("set-{:016x}", fnv1a(&format!("{key:?}")));
                s.broker.state_dir = s.broker.state_dir.join(dir);
            }
        }
    }
}

/// A stable 64-bit hash (FNV-1a) for directory names.
fn fnv1a(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

fn id(s: &Settings) -> &str {
    s.cluster_id.as_deref().unwrap_or("")
}

/// What a user entry holds: two clusters sharing one entry must agree.
fn credentials(s: &Settings) -> (String, Option<String>, Option<String>, Option<String>) {
    (
        s.kubeconfig.credentials.as_str().to_owned(),
        s.oidc.issuer_url.clone(),
        s.oidc.client_id.clone(),
        s.exchange.as_ref().map(|x| x.audience.clone()),
    )
}

/// A cluster's overrides file (for messages and doctor).
pub fn overrides_file(settings: &Settings) -> Option<PathBuf> {
    settings
        .cluster_id
        .as_ref()
        .map(|id| settings.clusters.overrides.join(format!("{id}.env")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    /// Files in memory; a directory lists the `.yml` files under it.
    struct Files(BTreeMap<&'static str, String>);

    impl NamedFiles for Files {
        fn read(&self, path: &Path) -> Result<Vec<u8>, TrustError> {
            let key = path.to_str().unwrap_or("");
            self.0
                .get(key)
                .map(|t| t.clone().into_bytes())
                .ok_or(TrustError::Io {
                    path: path.to_owned(),
                    source: std::io::ErrorKind::NotFound.into(),
                })
        }
        fn readable_by_others(&self, _: &Path) -> bool {
            false
        }
        fn templates(&self, dir: &Path) -> Result<Vec<(String, String)>, String> {
            Ok(self
                .0
                .iter()
                .filter(|(p, _)| Path::new(p).parent() == Some(dir) && p.ends_with(".yml"))
                .map(|(p, t)| (p.to_string(), t.clone()))
                .collect())
        }
    }

    const HOOK_ENV: &str = "NETWORK_POLICY_ALLOW_CIDR=10.0.0.0/8\n\
                            CLUSTERS_D=/etc/ood/config/clusters.d\n\
                            IDP_ISSUER_URL=https://idp.example.org\nCLIENT_ID=ood\n";

    fn cluster(name: &str, prefix: &str, file: &str) -> String {
        format!(
            "v2:\n  job:\n    adapter: kubernetes\n    cluster: {name}\n    username_prefix: \"{prefix}\"\n    \
             namespace_prefix: \"{prefix}\"\n    config_file: \"$HOME/.kube/{file}\"\n    \
             server:\n      endpoint: https://{name}.example.org:6443\n"
        )
    }

    fn files(extra: &[(&'static str, &str)]) -> Files {
        let mut f = BTreeMap::from([
            (
                "/etc/ood/config/clusters.d/cpu.yml",
                cluster("cpu", "c-", "config"),
            ),
            (
                "/etc/ood/config/clusters.d/gpu.yml",
                cluster("gpu", "g-", "gpu"),
            ),
            (
                "/etc/ood/config/clusters.d/slurm.yml",
                "v2:\n  job:\n    adapter: slurm\n".into(),
            ),
            (
                "/etc/ood/config/hook.env.d/gpu.env",
                "ROOT_CONTEXT=gpu-admin\nALLOWED_GROUPS=gpu-users\nIMAGE_PULL_SECRET=\n".into(),
            ),
        ]);
        for (k, v) in extra {
            f.insert(k, v.to_string());
        }
        Files(f)
    }

    fn site(hook_env: &str, files: &Files) -> Result<Site, SettingsError> {
        Site::parse_with(Path::new("/etc/ood/config/hook.env"), hook_env, files)
    }

    #[test]
    fn without_clusters_d_there_is_one_cluster_from_hook_env() {
        let s = site("NETWORK_POLICY_ALLOW_CIDR=10.0.0.0/8\n", &files(&[])).unwrap();
        assert_eq!(s.clusters.len(), 1);
        assert_eq!(s.clusters[0].cluster_id, None);
        assert_eq!(s.clusters[0].kubeconfig.file, "config");
        assert!(
            s.select(Some("gpu"))
                .unwrap_err()
                .contains("CLUSTERS_D is not set")
        );
    }

    #[test]
    fn each_kubernetes_cluster_gets_hook_env_its_overrides_and_its_files_values() {
        let s = site(HOOK_ENV, &files(&[])).unwrap();
        let ids: Vec<_> = s.clusters.iter().map(|c| c.cluster_id.as_deref()).collect();
        assert_eq!(ids, [Some("cpu"), Some("gpu")], "slurm is not bootstrapped");
        let (cpu, gpu) = (&s.clusters[0], &s.clusters[1]);
        assert_eq!(
            (cpu.username_prefix.as_str(), gpu.username_prefix.as_str()),
            ("c-", "g-")
        );
        assert_eq!(
            (cpu.namespace_prefix.as_str(), gpu.namespace_prefix.as_str()),
            ("c-", "g-")
        );
        assert_eq!(gpu.kubeconfig.file, "gpu");
        assert_eq!(gpu.kubeconfig.context_name, "gpu");
        assert_eq!(
            gpu.kubeconfig.server.as_deref(),
            Some("https://gpu.example.org:6443")
        );
        assert_eq!(gpu.root.context.as_deref(), Some("gpu-admin"));
        assert_eq!(cpu.root.context, None);
        assert_eq!(gpu.groups.allowed, ["gpu-users"]);
        assert!(cpu.groups.is_open());
        assert_eq!(
            gpu.oidc.client_id.as_deref(),
            Some("ood"),
            "hook.env applies to all"
        );
        assert_eq!(s.select(Some("gpu")).unwrap().len(), 1);
        assert!(
            s.select(Some("tpu"))
                .unwrap_err()
                .contains("known: cpu, gpu")
        );
    }

    #[test]
    fn hook_env_contradicting_a_cluster_file_is_refused_naming_both() {
        let text = format!("{HOOK_ENV}K8S_USERNAME_PREFIX=oidc:\n");
        let e = site(&text, &files(&[])).unwrap_err().to_string();
        assert!(
            e.contains("/etc/ood/config/hook.env:5: K8S_USERNAME_PREFIX=\"oidc:\"")
                && e.contains("clusters.d/cpu.yml (job.username_prefix: \"c-\")"),
            "{e}"
        );
        let over = [(
            "/etc/ood/config/hook.env.d/gpu.env",
            "ROOT_CONTEXT=x\nNAMESPACE_PREFIX=z-\n",
        )];
        let e = site(HOOK_ENV, &files(&over)).unwrap_err().to_string();
        assert!(
            e.contains("hook.env.d/gpu.env:2: NAMESPACE_PREFIX") && e.contains("gpu.yml"),
            "{e}"
        );
        // Agreeing is fine.
        let text = format!("{HOOK_ENV}K8S_USERNAME_PREFIX=c-\n");
        let only_cpu = [("/etc/ood/config/clusters.d/gpu.yml", "v2: {}\n")];
        assert!(site(&text, &files(&only_cpu)).is_ok());
    }

    #[test]
    fn overrides_may_set_only_per_cluster_keys_and_errors_name_their_file() {
        let over = [(
            "/etc/ood/config/hook.env.d/gpu.env",
            "ROOT_CONTEXT=x\nMETRICS_FILE=/x.prom\n",
        )];
        let e = site(HOOK_ENV, &files(&over)).unwrap_err().to_string();
        assert!(
            e.contains("gpu.env:2: METRICS_FILE cannot differ per cluster"),
            "{e}"
        );
        let over = [(
            "/etc/ood/config/hook.env.d/gpu.env",
            "ROOT_CONTEXT=x\nPRUNE=yes\n",
        )];
        let e = site(HOOK_ENV, &files(&over)).unwrap_err().to_string();
        assert!(e.contains("hook.env.d/gpu.env:2: PRUNE=\"yes\""), "{e}");
    }

    #[test]
    fn clusters_sharing_roots_credentials_or_entry_names_are_refused() {
        let over = [("/etc/ood/config/hook.env.d/gpu.env", "")];
        let e = site(HOOK_ENV, &files(&over)).unwrap_err().to_string();
        assert!(
            e.contains("clusters cpu and gpu") && e.contains("hook.env.d/gpu.env"),
            "{e}"
        );
        let twin = cluster("cpu", "g-", "config");
        let same = [("/etc/ood/config/clusters.d/gpu.yml", twin.as_str())];
        let e = site(HOOK_ENV, &files(&same)).unwrap_err().to_string();
        assert!(e.contains("cluster entries named \"cpu\""), "{e}");
        let none = "NETWORK_POLICY_ALLOW_CIDR=10.0.0.0/8\nCLUSTERS_D=/etc/empty\n";
        let e = site(none, &files(&[])).unwrap_err().to_string();
        assert!(e.contains("no file there is a Kubernetes cluster"), "{e}");
    }

    #[test]
    fn broker_mode_clusters_get_a_token_store_per_issuer_client_and_audience() {
        let text = format!("{HOOK_ENV}K8S_CREDENTIALS=broker\nBROKER_STATE_DIR=/var/lib/t\n");
        let same = site(&text, &files(&[])).unwrap();
        let dirs: Vec<_> = same
            .clusters
            .iter()
            .map(|c| c.broker.state_dir.clone())
            .collect();
        assert_eq!(
            dirs,
            [PathBuf::from("/var/lib/t"), PathBuf::from("/var/lib/t")]
        );
        let over = [(
            "/etc/ood/config/hook.env.d/gpu.env",
            "ROOT_CONTEXT=x\nK8S_TOKEN_EXCHANGE_AUDIENCE=kubernetes\nCLIENT_SECRET=s\n",
        )];
        let apart = site(&text, &files(&over)).unwrap();
        let (cpu, gpu) = (
            &apart.clusters[0].broker.state_dir,
            &apart.clusters[1].broker.state_dir,
        );
        assert_eq!(
            cpu,
            &PathBuf::from("/var/lib/t"),
            "the first keeps the directory"
        );
        assert!(
            gpu.to_string_lossy().starts_with("/var/lib/t/set-"),
            "{}",
            gpu.display()
        );
        let again = site(&text, &files(&over)).unwrap();
        assert_eq!(
            &again.clusters[1].broker.state_dir, gpu,
            "the same on every run"
        );
    }

    #[test]
    fn broker_clusters_of_one_name_with_different_token_sets_are_refused_naming_both_files() {
        let unnamed = |prefix: &str, file: &str| {
            format!(
                "v2:\n  job:\n    adapter: kubernetes\n    username_prefix: \"{prefix}\"\n    \
                 namespace_prefix: \"{prefix}\"\n    config_file: \"$HOME/.kube/{file}\"\n"
            )
        };
        let (cpu, gpu) = (unnamed("c-", "config"), unnamed("g-", "gpu"));
        let text = format!("{HOOK_ENV}K8S_CREDENTIALS=broker\nBROKER_STATE_DIR=/var/lib/t\n");
        let own_audience =
            "ROOT_CONTEXT=x\nK8S_TOKEN_EXCHANGE_AUDIENCE=kubernetes\nCLIENT_SECRET=s\n";
        let mut both = vec![
            ("/etc/ood/config/clusters.d/cpu.yml", cpu.as_str()),
            ("/etc/ood/config/clusters.d/gpu.yml", gpu.as_str()),
        ];
        assert!(
            site(&text, &files(&both)).is_ok(),
            "one name, one token set: the broker serves either"
        );
        both.push(("/etc/ood/config/hook.env.d/gpu.env", own_audience));
        let e = site(&text, &files(&both)).unwrap_err().to_string();
        assert!(
            e.contains("/etc/ood/config/clusters.d/cpu.yml and /etc/ood/config/clusters.d/gpu.yml")
                && e.contains("named \"open-ondemand\"")
                && e.contains("its own job.cluster"),
            "{e}"
        );
        // Not in broker mode: nothing is served by name.
        let token = format!("{HOOK_ENV}K8S_CREDENTIALS=token\n");
        assert!(site(&token, &files(&both)).is_ok());
        // Named apart: each gets its own set.
        let named = format!("{gpu}    cluster: gpu\n");
        both[1].1 = named.as_str();
        let s = site(&text, &files(&both)).unwrap();
        assert_ne!(
            s.clusters[0].broker.state_dir,
            s.clusters[1].broker.state_dir
        );
    }

    /// A cluster name the plugin sends and the broker logs: format
    /// characters (U+202E, U+2028, zero-width) are refused where the site
    /// configures it, and the error shows them escaped.
    #[test]
    fn cluster_names_with_format_characters_are_refused_escaped() {
        for c in ['\u{202E}', '\u{2028}', '\u{200B}'] {
            let text = format!("v2:\n  job:\n    adapter: kubernetes\n    cluster: \"gpu{c}x\"\n");
            let f = [("/etc/ood/config/clusters.d/gpu.yml", text.as_str())];
            let e = site(HOOK_ENV, &files(&f)).unwrap_err().to_string();
            assert!(
                e.contains("clusters.d/gpu.yml")
                    && e.contains("K8S_CLUSTER_NAME")
                    && !e
                        .chars()
                        .any(|c| c.is_control() || crate::oneline::is_format(c)),
                "{c:?}: {e:?}"
            );
        }
    }
}
