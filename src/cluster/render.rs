//! `ood-k8s-bootstrap render --user alice`: the desired objects as YAML,
//! computed exactly as a real run would (site templates included), without
//! touching any cluster.
//! Secret data is redacted, so the output is safe to paste into a ticket.

use std::path::Path;

use serde_json::Value;

use crate::cluster::desired::{self, Object};
use crate::cluster::kinds::Kind;
use crate::exit::Exit;
use crate::site::account::Account;
use crate::site::names::{Namespace, Username};
use crate::site::settings::Settings;

/// Renders `user`'s objects for each chosen cluster (`--cluster`; every
/// cluster of CLUSTERS_D by default), each headed by a comment naming it.
pub fn main(user: &str, hook_env: &Path, cluster: Option<&str>, now_unix: u64) -> Exit {
    let clusters = match crate::run::load_clusters(hook_env, cluster) {
        Ok(c) => c,
        Err(exit) => return exit,
    };
    let user = match crate::site::names::Username::parse(user) {
        Ok(u) => u,
        Err(e) => return crate::fail(Exit::NoUser, e),
    };
    for settings in &clusters {
        if let Some(id) = &settings.cluster_id {
            println!("# cluster {id}");
        }
        let exit = render_one(settings, &user, now_unix);
        if exit != Exit::Ok {
            return exit;
        }
    }
    Exit::Ok
}

fn render_one(settings: &Settings, user: &Username, now_unix: u64) -> Exit {
    let namespace = match Namespace::for_user(&settings.namespace_prefix, user) {
        Ok(ns) => ns,
        Err(e) => return crate::fail(Exit::DataErr, e),
    };
    let user = user.clone();
    let ids = if settings.needs_ids() {
        match Account::lookup(&user).and_then(|a| a.ids(&user, settings.publish.groups)) {
            Ok(ids) => Some(ids),
            Err(e) => return crate::fail(e.exit(), e),
        }
    } else {
        None
    };
    let state = match desired::desired_state(settings, &user, &namespace, ids.as_ref(), now_unix) {
        Ok(s) => s,
        Err(e) => return crate::fail(e.exit(), e),
    };
    match to_yaml(&state.objects) {
        Ok(text) => {
            print!("{text}");
            Exit::Ok
        }
        Err(e) => {
            eprintln!("ood-k8s-bootstrap: error: cannot render YAML: {e}");
            Exit::Software
        }
    }
}

/// The objects as a multi-document YAML stream, secrets redacted.
pub fn to_yaml(objects: &[Object]) -> Result<String, serde_saphyr::ser::Error> {
    let mut out = String::new();
    for obj in objects {
        let mut v = obj.to_json();
        if obj.kind() == Kind::Secret {
            for (field, what) in [("data", "base64 characters"), ("stringData", "characters")] {
                if let Some(Value::Object(data)) = v.get_mut(field) {
                    for value in data.values_mut() {
                        let len = value.as_str().map_or(0, str::len);
                        *value = Value::String(format!("<redacted: {len} {what}>"));
                    }
                }
            }
        }
        out.push_str("---\n");
        out.push_str(&serde_saphyr::to_string(&v)?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::site::names::{Namespace, Username};
    use crate::site::settings::Settings;

    #[test]
    fn renders_every_object_and_redacts_secrets() {
        let dir = std::env::temp_dir().join(format!("ood-render-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let cfg = dir.join("config.json");
        std::fs::write(&cfg, r#"{"auths":{"r.example":{"auth":"c2VjcmV0OnB3"}}}"#).unwrap();
        let text = format!(
            "NETWORK_POLICY_ALLOW_CIDR=10.0.0.0/8\nIMAGE_PULL_SECRET=regcred\nREGISTRY_DOCKER_CONFIG_JSON={}\n",
            cfg.display()
        );
        let s = Settings::parse(Path::new("/hook.env"), &text).unwrap();
        let u = Username::parse("alice").unwrap();
        let ns = Namespace::for_user("", &u).unwrap();
        let yaml = to_yaml(
            &desired::desired_state(&s, &u, &ns, None, 1)
                .unwrap()
                .objects,
        )
        .unwrap();
        assert_eq!(yaml.matches("---\n").count(), 6, "{yaml}");
        assert!(yaml.contains("kind: NetworkPolicy"));
        assert!(yaml.contains("redacted"));
        assert!(!yaml.contains("eyJhdXRocy"), "{yaml}"); // base64 of {"auths
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
