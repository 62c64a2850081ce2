//! A user's existing `~/.kube/config` text + the hook's entries -> the new
//! text (`kubeconfig::merge`). The entries vary with the input's length:
//! user only, user + cluster + context, or cluster + context.
//! Checks: the output parses back to exactly the merged tree (nothing is
//! lost or changed in emitting, strings stay strings); every entry and key
//! the hook does not own survives unchanged and in order; our entries are
//! what we asked for; merging again changes nothing; errors never quote the
//! file (it holds tokens) and fit one line.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ood_k8s_bootstrap::credentials::kubeconfig::merge::{
    self, ClusterEntry, ContextEntry, Desired, UserEntry,
};
use ood_k8s_bootstrap_fuzz::*;
use serde_json::{Map, Value, json};

fn desired(variant: usize) -> Desired {
    let user = Some(UserEntry {
        name: "oidc-alice".into(),
        user: json!({"token": "eyJ.tok.sig", "as-user-extra": {"k": ["v"]}}),
    });
    let cluster = Some(ClusterEntry {
        name: "open-ondemand".into(),
        server: "https://k8s.example:6443".into(),
        certificate_authority: Some("/etc/pki/k8s-ca.crt".into()),
    });
    let context = Some(ContextEntry {
        name: "open-ondemand".into(),
        cluster: "open-ondemand".into(),
        user: "oidc-alice".into(),
        namespace: "user-alice".into(),
    });
    match variant {
        0 => Desired {
            user,
            ..Default::default()
        },
        1 => Desired {
            user,
            cluster,
            context,
        },
        _ => Desired {
            user: None,
            cluster,
            context,
        },
    }
}

fuzz_target!(|data: &[u8]| {
    let Some(existing) = text(data) else { return };
    let want = desired(data.len() % 3);
    let merged = merge::merge(existing, &want);

    let before = match merge::parse(existing) {
        Ok(root) => root,
        Err(e) => {
            assert!(merged.is_err(), "merge accepted what parse refused");
            no_leak(&e.to_string(), existing);
            return;
        }
    };
    let mut root = before.clone();
    if let Err(e) = merge::apply(&mut root, &want) {
        assert!(merged.is_err());
        no_leak(&e.to_string(), existing);
        return;
    }
    let out = merged.expect("apply succeeded, so merge must");
    let reparsed = merge::parse(&out).expect("our own output parses");
    assert_eq!(reparsed, root, "emitting changed the tree:\n{out}");

    foreign_kept(&before, &reparsed, &want);
    ours_written(&reparsed, &want);
    let again = merge::merge(&out, &want).expect("merging our output again");
    assert_eq!(again, out, "merge is not idempotent");
});

fn no_leak(msg: &str, existing: &str) {
    assert!(is_one_line(msg), "{msg:?}");
    assert!(
        !quotes_stretch_of(msg, existing, 24),
        "error quotes the file: {msg}"
    );
}

/// Entries not named like ours, and top-level keys we do not own, are the
/// same before and after, in the same order.
fn foreign_kept(before: &Map<String, Value>, after: &Map<String, Value>, want: &Desired) {
    let ours = |list: &str| -> Option<&str> {
        match list {
            "users" => want.user.as_ref().map(|u| u.name.as_str()),
            "clusters" => want.cluster.as_ref().map(|c| c.name.as_str()),
            _ => want.context.as_ref().map(|c| c.name.as_str()),
        }
    };
    for list in ["users", "clusters", "contexts"] {
        let foreign = |root: &Map<String, Value>| -> Vec<Value> {
            root.get(list)
                .and_then(Value::as_array)
                .map(|items| {
                    items
                        .iter()
                        .filter(|i| ours(list).is_none_or(|n| i.get("name") != Some(&json!(n))))
                        .cloned()
                        .collect()
                })
                .unwrap_or_default()
        };
        assert_eq!(foreign(before), foreign(after), "foreign {list} changed");
    }
    for (k, v) in before {
        let owned = ["users", "clusters", "contexts", "current-context"].contains(&k.as_str());
        let defaulted = ["apiVersion", "kind", "preferences"].contains(&k.as_str()) && v.is_null();
        if !owned && !defaulted {
            assert_eq!(after.get(k), Some(v), "top-level {k} changed");
        }
    }
    if let Some(Value::String(cc)) = before.get("current-context")
        && !cc.is_empty()
    {
        assert_eq!(
            after["current-context"],
            json!(cc),
            "current-context changed"
        );
    }
}

fn ours_written(after: &Map<String, Value>, want: &Desired) {
    let last = |list: &str, name: &str| -> Value {
        after[list]
            .as_array()
            .and_then(|items| items.iter().rev().find(|i| i["name"] == json!(name)))
            .cloned()
            .unwrap_or(Value::Null)
    };
    if let Some(u) = &want.user {
        assert_eq!(last("users", &u.name)["user"], u.user);
    }
    if let Some(c) = &want.cluster {
        let body = &last("clusters", &c.name)["cluster"];
        assert_eq!(body["server"], json!(c.server));
        assert_eq!(
            body["certificate-authority"],
            json!(c.certificate_authority)
        );
        assert!(body.get("certificate-authority-data").is_none());
    }
    if let Some(c) = &want.context {
        let body = &last("contexts", &c.name)["context"];
        assert_eq!(body["cluster"], json!(c.cluster));
        assert_eq!(body["user"], json!(c.user));
        assert_eq!(body["namespace"], json!(c.namespace));
    }
}
