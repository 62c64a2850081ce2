//! The dashboard's side: a cluster config from
//! `/etc/ood/config/clusters.d/*.yml` as ood_core's Kubernetes adapter reads
//! it (SPEC §8), with its defaults, so `doctor` can compare it with
//! hook.env. Pure: text in, [`DashboardCluster`] out.

use std::path::Path;

use serde_json::Value;

use super::facts::DashboardCluster;

pub use crate::site::settings::clusters::DEFAULT_CLUSTER;

/// The Kubernetes job settings of one cluster config; `Ok(None)` for a
/// cluster of another adapter.
pub fn parse(file: &Path, text: &str) -> Result<Option<DashboardCluster>, String> {
    let doc: Value = serde_saphyr::from_str(text).map_err(|e| {
        // The parser's first line only; never echo file content.
        e.to_string()
            .lines()
            .next()
            .unwrap_or("not YAML")
            .chars()
            .take(160)
            .collect::<String>()
    })?;
    let Some(job) = doc.pointer("/v2/job") else {
        return Ok(None);
    };
    if string(job.get("adapter")).as_deref() != Some("kubernetes") {
        return Ok(None);
    }
    let cluster = string(job.get("cluster")).unwrap_or_else(|| DEFAULT_CLUSTER.into());
    Ok(Some(DashboardCluster {
        file: file.to_owned(),
        username_prefix: string(job.get("username_prefix")).unwrap_or_default(),
        namespace_prefix: string(job.get("namespace_prefix")).unwrap_or_default(),
        context: string(job.get("context")),
        cluster,
        auth_type: string(job.pointer("/auth/type")).unwrap_or_else(|| "managed".into()),
        config_file: string(job.get("config_file")),
    }))
}

/// A scalar as the Ruby side would see it as a string.
fn string(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_documented_example() {
        let text = r#"---
v2:
  metadata:
    title: "My K8s Cluster"
  job:
    adapter: "kubernetes"
    config_file: "~/.kube/config"
    cluster: "ood-prod"
    context: "ood-prod"
    bin: "/usr/bin/kubectl"
    username_prefix: "prod-"
    namespace_prefix: "user-"
    auth:
      type: "oidc"
"#;
        let c = parse(Path::new("/c/k8s.yml"), text).unwrap().unwrap();
        assert_eq!(c.username_prefix, "prod-");
        assert_eq!(c.namespace_prefix, "user-");
        assert_eq!(c.cluster, "ood-prod");
        assert_eq!(c.context.as_deref(), Some("ood-prod"));
        assert_eq!(c.auth_type, "oidc");
        assert_eq!(c.config_file.as_deref(), Some("~/.kube/config"));
    }

    #[test]
    fn defaults_and_other_adapters() {
        let c = parse(
            Path::new("/c/a.yml"),
            "v2:\n  job:\n    adapter: kubernetes\n",
        )
        .unwrap()
        .unwrap();
        assert_eq!(c.cluster, DEFAULT_CLUSTER);
        assert_eq!(c.username_prefix, "");
        assert_eq!(c.auth_type, "managed");
        assert_eq!(c.context, None);
        assert_eq!(
            parse(Path::new("/c/s.yml"), "v2:\n  job:\n    adapter: slurm\n").unwrap(),
            None
        );
        assert!(parse(Path::new("/c/bad.yml"), "v2: [unclosed").is_err());
    }
}
