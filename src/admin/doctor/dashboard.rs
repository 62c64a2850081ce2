//! The dashboard's side: a cluster config from
//! `/etc/ood/config/clusters.d/*.yml` as ood_core's Kubernetes adapter reads
//! it (SPEC §8), with its defaults, so `doctor` can compare it with
//! hook.env. Pure: text in, [`DashboardCluster`] out; the reading itself is
//! the hook's (`site::settings::clusters::read_job`).

use std::path::Path;

use super::facts::DashboardCluster;
use crate::site::settings::clusters::{DEFAULT_AUTH, DEFAULT_CLUSTER, read_job};

/// The Kubernetes job settings of one cluster config, with ood_core's
/// defaults; `Ok(None)` for a cluster of another adapter.
pub fn parse(file: &Path, text: &str) -> Result<Option<DashboardCluster>, String> {
    let Some(job) = read_job(text)? else {
        return Ok(None);
    };
    Ok(Some(DashboardCluster {
        file: file.to_owned(),
        username_prefix: job.username_prefix.unwrap_or_default(),
        namespace_prefix: job.namespace_prefix.unwrap_or_default(),
        context: job.context,
        cluster: job.cluster.unwrap_or_else(|| DEFAULT_CLUSTER.into()),
        auth_type: job.auth_type.unwrap_or_else(|| DEFAULT_AUTH.into()),
        config_file: job.config_file,
    }))
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
