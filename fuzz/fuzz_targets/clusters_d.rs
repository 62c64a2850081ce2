//! The dashboard's cluster config (`/etc/ood/config/clusters.d/*.yml`) ->
//! `doctor::dashboard::parse`, as `doctor --clusters-d` reads it, and
//! `settings::clusters::parse`, as the hook reads it with CLUSTERS_D.
//! Checks: no panic, no unbounded work; a Kubernetes cluster has a name
//! and a kubeconfig file name in ~/.kube; an error is one line.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use ood_k8s_bootstrap::admin::doctor::dashboard::parse;
use ood_k8s_bootstrap::site::settings::clusters;
use ood_k8s_bootstrap_fuzz::*;

fuzz_target!(|data: &[u8]| {
    let Some(text) = text(data) else { return };
    match parse(Path::new("/etc/ood/config/clusters.d/k8s.yml"), text) {
        Ok(Some(c)) => assert!(!c.cluster.is_empty() || text.contains("cluster")),
        Ok(None) => {}
        Err(e) => assert!(!e.contains('\n'), "{e:?}"),
    }
    let mut warnings = Vec::new();
    match clusters::parse(
        Path::new("/etc/ood/config/clusters.d/k8s.yml"),
        text,
        &mut warnings,
    ) {
        Ok(Some(c)) => {
            assert_eq!(c.id, "k8s");
            assert!(!c.kubeconfig_file.is_empty() && !c.kubeconfig_file.contains('/'));
            assert!(c.decides.iter().any(|d| d.key == "K8S_CLUSTER_NAME"));
        }
        Ok(None) => {}
        Err(e) => assert!(!e.to_string().contains('\n'), "{e:?}"),
    }
    assert!(warnings.iter().all(|w| !w.contains('\n')), "{warnings:?}");
});
