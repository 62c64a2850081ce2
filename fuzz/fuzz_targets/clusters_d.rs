//! The dashboard's cluster config (`/etc/ood/config/clusters.d/*.yml`) ->
//! `doctor::dashboard::parse`, as `doctor --clusters-d` reads it.
//! Checks: no panic, no unbounded work; a Kubernetes cluster has a name;
//! an error is one line.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use ood_k8s_bootstrap::admin::doctor::dashboard::parse;
use ood_k8s_bootstrap_fuzz::*;

fuzz_target!(|data: &[u8]| {
    let Some(text) = text(data) else { return };
    match parse(Path::new("/etc/ood/config/clusters.d/k8s.yml"), text) {
        Ok(Some(c)) => assert!(!c.cluster.is_empty() || text.contains("cluster")),
        Ok(None) => {}
        Err(e) => assert!(!e.contains('\n'), "{e:?}"),
    }
});
