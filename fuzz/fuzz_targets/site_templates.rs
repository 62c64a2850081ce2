//! A site template file (`SITE_TEMPLATES_DIR/*.yaml`) -> `TemplateSet::parse`
//! with fixed `SITE_*` values, then one user's objects
//! (`TemplateSet::instantiate`).
//! Checks: errors name the file and line; every object a template makes
//! is of an allowed kind, in the user's namespace, named as the API server
//! requires, labels and annotations included; placeholders never add YAML
//! structure (a value with YAML in it stays a string).
#![no_main]

use std::collections::BTreeMap;

use libfuzzer_sys::fuzz_target;
use ood_k8s_bootstrap::cluster::kinds::Kind;
use ood_k8s_bootstrap::cluster::templates::{TemplateSet, UserValues};
use ood_k8s_bootstrap::site::account::Ids;
use ood_k8s_bootstrap::site::names::{Namespace, Username};
use ood_k8s_bootstrap_fuzz::*;

const FILE: &str = "/etc/ood/templates/site.yaml";

fuzz_target!(|data: &[u8]| {
    let Some(text) = text(data) else { return };
    let site: BTreeMap<String, String> = [
        ("SITE_CPU", "4"),
        ("SITE_NAME", "team-a"),
        ("SITE_YAML", "{a: [b]}\nkind: Secret"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    let set = match TemplateSet::parse(&[(FILE.to_owned(), text.to_owned())], &site) {
        Ok(set) => set,
        Err(e) => {
            assert_eq!(e.file, FILE);
            // YAML counts a lone CR as a line break too.
            let breaks = text.matches(['\n', '\r']).count();
            assert!(e.line >= 1 && e.line <= breaks + 1, "{e}");
            return;
        }
    };
    let user = Username::parse("first.last").expect("a username");
    let namespace = Namespace::for_user("user-", &user).expect("a namespace");
    let ids = Ids {
        uid: 1000,
        gid: 100,
        groups: None,
    };
    let values = UserValues {
        user: &user,
        namespace: &namespace,
        k8s_username: "oidc:first.last".into(),
        ids: Some(&ids),
    };
    let Ok(objects) = set.instantiate(&values) else {
        return;
    };
    assert_eq!(objects.len(), set.len());
    for o in &objects {
        assert_ne!(o.kind, Kind::Namespace);
        assert_eq!(o.meta.namespace.as_deref(), Some(namespace.as_str()));
        let name = o.meta.name.as_deref().unwrap_or_default();
        let ok = match o.kind {
            Kind::Role | Kind::RoleBinding => is_path_segment_name(name),
            _ => is_dns1123_subdomain(name),
        };
        assert!(ok, "{}/{name:?} is not a valid name", o.kind);
        let json = o.to_json();
        assert_eq!(json["kind"], o.kind.name());
        assert_eq!(json["metadata"]["namespace"], namespace.as_str());
    }
});
