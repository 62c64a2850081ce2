//! hook.env text -> `Settings` (the files it names come from a stand-in),
//! and from accepted settings the objects and kubeconfig entry a run makes.
//! Checks: accepted settings only produce names, labels and a kubeconfig
//! the API server and kubectl accept; errors name the file (hook.env, or
//! the template at fault) and fit one line; no warning quotes the client
//! secret.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use ood_k8s_bootstrap::cluster::desired::{self, Object};
use ood_k8s_bootstrap::cluster::kinds::Kind;
use ood_k8s_bootstrap::credentials::kubeconfig::entry::{self, Who};
use ood_k8s_bootstrap::credentials::kubeconfig::{Login, merge};
use ood_k8s_bootstrap::secret::Secret;
use ood_k8s_bootstrap::site::account::Ids;
use ood_k8s_bootstrap::site::names::{Namespace, Username};
use ood_k8s_bootstrap::site::settings::{
    NamedFiles, Settings, SettingsError, docker_config_problem,
};
use ood_k8s_bootstrap::site::trusted::TrustError;
use ood_k8s_bootstrap_fuzz::*;

const PATH: &str = "/etc/ood/config/hook.env";
const DOCKER_CONFIG: &str = r#"{"auths":{"registry.example":{"auth":"dXNlcjpwYXNz"}}}"#;
const TEMPLATE: &str = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: site-${SITE_NAME}\n\
    data:\n  user: ${USER}\n  where: \"${SITE_WHERE}\"\n---\napiVersion: v1\nkind: ResourceQuota\n\
    metadata: {name: quota}\nspec: {hard: {cpu: \"${SITE_CPU}\"}}\n";

/// Stand-in file system: `/etc/ood/config/*.json` is a good docker config
/// (readable by others if the name has "public"), `/etc/pki/*` a CA bundle,
/// `/text/REST` a file holding REST, `/etc/templates` a directory with a
/// template using SITE_NAME, SITE_WHERE and SITE_CPU; nothing else exists.
struct StandIn;

impl NamedFiles for StandIn {
    fn read(&self, path: &Path) -> Result<Vec<u8>, TrustError> {
        let p = path.to_string_lossy();
        if let Some(rest) = p.strip_prefix("/text/") {
            Ok(rest.as_bytes().to_vec())
        } else if p.starts_with("/etc/ood/config/") && p.ends_with(".json") {
            Ok(DOCKER_CONFIG.as_bytes().to_vec())
        } else if p.starts_with("/etc/pki/") {
            Ok(b"-----BEGIN CERTIFICATE-----\n".to_vec())
        } else {
            Err(TrustError::Io {
                path: path.to_owned(),
                source: std::io::ErrorKind::NotFound.into(),
            })
        }
    }

    fn readable_by_others(&self, path: &Path) -> bool {
        path.to_string_lossy().contains("public")
    }

    fn templates(&self, dir: &Path) -> Result<Vec<(String, String)>, String> {
        match dir == Path::new("/etc/templates") {
            true => Ok(vec![("/etc/templates/site.yaml".into(), TEMPLATE.into())]),
            false => Err(format!("{}: cannot read it", dir.display())),
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some(text) = text(data) else { return };
    match Settings::parse_with(Path::new(PATH), text, &StandIn) {
        Ok(s) => {
            accepted(&s);
            secret_not_in_warnings(&s, text);
        }
        Err(e) => {
            let msg = e.to_string();
            // A template's mistake names the template, the file at fault.
            let file = match &e {
                SettingsError::Template(t) => t.file.as_str(),
                _ => PATH,
            };
            assert!(msg.contains(file), "error does not name the file: {msg}");
            assert!(is_one_line(&msg), "error is not one line: {msg:?}");
        }
    }
});

fn accepted(s: &Settings) {
    assert!(
        !s.allow_cidrs.is_empty(),
        "no CIDR, yet the key is required"
    );
    for net in &s.allow_cidrs {
        assert_eq!(net.trunc(), *net, "host bits set in {net}");
    }
    let p = &s.username_prefix;
    assert!(!p.contains(['/', ':']) && !p.chars().any(char::is_whitespace) && p.len() <= 100);
    let p = &s.user_subject_prefix;
    assert!(!p.contains('/') && !p.chars().any(|c| c.is_whitespace() || c.is_control()));
    let secs = s.timeout.as_secs();
    assert!((1..=600).contains(&secs), "timeout {secs}");
    if let Some(p) = &s.image_pull {
        assert!(is_dns1123_subdomain(p.secret_name.as_str()));
        assert_eq!(docker_config_problem(p.docker_config_json.expose()), None);
    }
    if let Some(r) = &s.job_pod_reaper {
        assert!(is_path_segment_name(r.cluster_role.as_str()));
        assert!(is_dns1123_subdomain(r.service_account.as_str()));
        assert!(
            is_dns1123_label(r.namespace.as_str()),
            "reaper namespace {:?} cannot be a namespace",
            r.namespace.as_str()
        );
    }
    if let Some(server) = &s.kubeconfig.server {
        let host = server.strip_prefix("https://").expect("an https:// URL");
        assert!(!host.is_empty() && !host.starts_with('/'), "{server:?}");
        assert!(is_one_line(server) && !server.contains(' '));
    }
    if let Some(issuer) = &s.oidc.issuer_url {
        assert!(is_one_line(issuer) && !issuer.contains(' '), "{issuer:?}");
    }
    assert!(s.broker.socket.is_absolute() && s.broker.socket.as_os_str().len() <= 100);
    for name in [&s.kubeconfig.cluster_name, &s.kubeconfig.context_name] {
        assert!(!name.is_empty() && !name.chars().any(|c| c.is_whitespace() || c.is_control()));
    }
    for w in &s.warnings {
        assert!(is_one_line(w), "warning is not one line: {w:?}");
    }
    for user in ["alice", "first.last", "alice@example.org"] {
        let user = Username::parse(user).expect("a valid username");
        if let Ok(ns) = Namespace::for_user(&s.namespace_prefix, &user) {
            objects_are_valid(s, &user, &ns);
            kubeconfig_entry_is_valid(s, &user, &ns);
        }
    }
}

/// The client secret (when the file has it only as that value) is in no
/// warning.
fn secret_not_in_warnings(s: &Settings, text: &str) {
    let Some(secret) = s.oidc.client_secret.as_ref().map(|x| x.expose()) else {
        return;
    };
    if secret.len() >= 8 && text.matches(secret).count() == 1 {
        for w in &s.warnings {
            assert!(
                !w.contains(secret),
                "a warning quotes the client secret: {w}"
            );
        }
    }
}

fn objects_are_valid(s: &Settings, user: &Username, ns: &Namespace) {
    let ids = Ids {
        uid: 1000,
        gid: 1000,
        groups: Some(vec![1000, 4000]),
    };
    let state = match desired::desired_state(s, user, ns, Some(&ids), 1_700_000_000) {
        Ok(state) => state,
        Err(e) => {
            // Only a site template can make a user's objects fail.
            assert!(!s.templates.is_empty(), "{e}");
            assert!(is_one_line(&e.to_string()), "{e}");
            return;
        }
    };
    for obj in &state.objects {
        let name = obj.name();
        let ok = match obj.kind() {
            Kind::Namespace => is_dns1123_label(name),
            Kind::Role | Kind::RoleBinding => is_path_segment_name(name),
            _ => is_dns1123_subdomain(name),
        };
        assert!(ok, "{} is not a valid name", obj.describe());
        let meta = obj.meta();
        for (k, v) in meta.labels.iter().flatten() {
            assert!(is_qualified_name(k), "label key {k:?}");
            assert!(
                is_label_value(v),
                "label {k}={v:?} is not a valid label value"
            );
        }
        for k in meta.annotations.iter().flatten().map(|(k, _)| k) {
            assert!(is_qualified_name(k), "annotation key {k:?}");
        }
        if !matches!(obj, Object::Site(_)) {
            assert!(!meta.labels.iter().flatten().any(|(k, _)| k == "job"));
        }
        if let Object::RoleBinding(rb) = obj {
            for subject in rb.subjects.iter().flatten() {
                if let Some(n) = &subject.namespace {
                    assert!(is_dns1123_label(n), "subject namespace {n:?}");
                }
            }
        }
    }
    let yaml = ood_k8s_bootstrap::cluster::render::to_yaml(&state.objects).expect("objects render");
    if let Some(p) = &s.image_pull {
        let json = p.docker_config_json.expose();
        assert!(
            !quotes_stretch_of(&yaml, json, 16),
            "render shows the docker config"
        );
    }
}

/// A fresh login's kubeconfig entry, merged into an empty file, is a
/// kubeconfig with our user entry (and context) in it.
fn kubeconfig_entry_is_valid(s: &Settings, user: &Username, ns: &Namespace) {
    // header {"alg":"RS256"}, payload {"exp":4000000000,"aud":"ood"}
    let jwt = "eyJhbGciOiJSUzI1NiJ9.eyJleHAiOjQwMDAwMDAwMDAsImF1ZCI6Im9vZCJ9.c2ln";
    let login = Login {
        access_token: Some(Secret::new(jwt)),
        refresh_token: Some(Secret::new("refresh")),
        id_token: None,
    };
    let who = Who {
        user,
        uid: 1000,
        home: Path::new("/home/u"),
    };
    let exe = Path::new("/usr/bin/ood-k8s-bootstrap");
    let Ok(plan) = entry::plan(s, &who, ns, &login, exe, 1_700_000_000) else {
        // Only a missing key the mode needs may refuse a good token.
        return;
    };
    let out = merge::merge("", &plan.desired).expect("merging into an empty file");
    let root = merge::parse(&out).expect("our own output parses");
    let name = entry::entry_name(s, user);
    let users = root["users"].as_array().expect("users list");
    if plan.desired.user.is_some() {
        assert!(users.iter().any(|u| u["name"] == name.as_str()));
    }
    if let Some(ctx) = &plan.desired.context {
        assert_eq!(root["current-context"], ctx.name.as_str());
    }
    if let Some((path, _)) = &plan.cache {
        assert!(path.starts_with("/home/u/.kube/cache/ood-k8s-bootstrap/"));
        let file = path.file_name().expect("file name").to_string_lossy();
        assert!(ood_k8s_bootstrap::credentials::kubeconfig::write::is_cache_file_name(&file));
    }
}
