//! Whose namespace it is. The dashboard maps `.` and `@` in a login to `-`,
//! so `carol.smith` and `carol-smith` get the same namespace; without a
//! record of its owner the second login would be bound into the first one's
//! namespace (their pods, their uid, their home). The namespace records its
//! owner when the hook creates it (annotations `openondemand.org/user` and
//! `openondemand.org/uid`), and a login whose namespace belongs to another
//! login is refused before anything is written.
//!
//! Pure: the apply layer reads the namespace (and, for a namespace with no
//! record, its RoleBindings) and asks [`decide`] what to do.

use serde_json::Value;

use crate::cluster::desired::{
    Claimant, LAST_HOOK_ANNOTATION, NAME_LABEL, NAME_LABEL_VALUE, UID_ANNOTATION, USER_ANNOTATION,
};

/// What to do with the namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// It does not exist: create it, owner record included.
    Create,
    /// It is this login's.
    Owned(Existing),
    /// It has no owner record and nothing in it names another login: it
    /// becomes this login's, provided nobody changed it since it was read.
    Claim(Existing),
    /// It has no owner record: its RoleBindings must be read to decide.
    NeedBindings,
    Refuse(Collision),
}

/// What was read of an existing namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Existing {
    pub resource_version: String,
    /// The recorded uid, kept when the claimant's is not known.
    pub recorded_uid: Option<String>,
    /// Recorded under another uid than the claimant's (the site renumbered
    /// the login, or gave it to someone new): the record is updated, and
    /// the run warns.
    pub uid_changed: Option<(String, u32)>,
    /// Its last-hook annotation, kept by what is not a login.
    pub last_hook: Option<String>,
}

/// Why a login may not have the namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Collision {
    pub namespace: String,
    pub login: String,
    pub owner: Owner,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Owner {
    /// The namespace's owner record names another login.
    Recorded { login: String, uid: String },
    /// No record, and a `*-ood-user` RoleBinding binds another user.
    Bound { binding: String, subject: String },
    /// No record and not an OnDemand namespace (no
    /// `app.kubernetes.io/name=open-ondemand` label): someone else's.
    Foreign,
    /// No record, and root may not list the RoleBindings to check.
    Unverifiable,
}

impl std::fmt::Display for Collision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (ns, login) = (&self.namespace, &self.login);
        let record = format!(
            "kubectl annotate namespace {ns} {USER_ANNOTATION}={login} {UID_ANNOTATION}=UID --overwrite"
        );
        match &self.owner {
            Owner::Recorded { login: owner, uid } => write!(
                f,
                "namespace {ns} belongs to login {owner} (uid {uid}), not {login}: the dashboard maps both \
                 logins to this namespace, so {login} cannot use Kubernetes until the site renames one of \
                 them (or an admin deletes the namespace); nothing was changed"
            ),
            Owner::Bound { binding, subject } => write!(
                f,
                "namespace {ns} has no owner record and its RoleBinding {binding} binds user {subject}, \
                 not {login}: the dashboard maps both logins to this namespace, so {login} cannot use \
                 Kubernetes until the site renames one of them; if {login} is the rightful owner, an \
                 admin removes that binding or records the owner ({record}); nothing was changed"
            ),
            Owner::Foreign => write!(
                f,
                "namespace {ns} exists but is no OnDemand namespace (no {NAME_LABEL}={NAME_LABEL_VALUE} \
                 label, no owner record): refusing to take it over for {login}; check NAMESPACE_PREFIX, \
                 or an admin records the owner ({record}); nothing was changed"
            ),
            Owner::Unverifiable => write!(
                f,
                "namespace {ns} has no owner record, and root may not list its RoleBindings to check that \
                 no other login uses it: re-apply the cluster prerequisites (ood-k8s-bootstrap install, or \
                 hooks/ondemand.yaml: list on rolebindings), or record the owner ({record}); nothing was changed"
            ),
        }
    }
}

/// Decides for `who`, given the namespace as read (`None`: it does not
/// exist) and, once asked for ([`Decision::NeedBindings`]), its
/// RoleBindings (`Some(None)`: root may not list them).
pub fn decide(
    who: &Claimant,
    namespace: &str,
    existing: Option<&Value>,
    bindings: Option<Option<&[Value]>>,
) -> Decision {
    let Some(ns) = existing else {
        return Decision::Create;
    };
    let annotation = |key: &str| {
        ns.pointer("/metadata/annotations")
            .and_then(|a| a.get(key))
            .and_then(Value::as_str)
            .map(str::to_owned)
    };
    let refuse = |owner| {
        Decision::Refuse(Collision {
            namespace: namespace.to_owned(),
            login: who.login.clone(),
            owner,
        })
    };
    let recorded_uid = annotation(UID_ANNOTATION);
    let existing = Existing {
        resource_version: ns
            .pointer("/metadata/resourceVersion")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned(),
        uid_changed: match (&recorded_uid, who.uid) {
            (Some(old), Some(new)) if *old != new.to_string() => Some((old.clone(), new)),
            _ => None,
        },
        recorded_uid: recorded_uid.clone(),
        last_hook: annotation(LAST_HOOK_ANNOTATION),
    };
    // A record is the login and the uid together: earlier versions wrote
    // the login alone (for `reconcile`), whoever logged in last.
    if let (Some(login), Some(uid)) = (annotation(USER_ANNOTATION), &recorded_uid) {
        return if login == who.login {
            Decision::Owned(existing)
        } else {
            refuse(Owner::Recorded {
                login,
                uid: uid.clone(),
            })
        };
    }
    let labelled = ns
        .pointer("/metadata/labels")
        .and_then(|l| l.get(NAME_LABEL))
        .and_then(Value::as_str)
        == Some(NAME_LABEL_VALUE);
    if !labelled {
        return refuse(Owner::Foreign);
    }
    match bindings {
        None => Decision::NeedBindings,
        Some(None) => refuse(Owner::Unverifiable),
        Some(Some(list)) => match foreign_user_binding(who, list) {
            Some((binding, subject)) => refuse(Owner::Bound { binding, subject }),
            None => Decision::Claim(existing),
        },
    }
}

/// The first `ood-user` binding (by role, or by the old scripts' name
/// `<login>-ood-user`) with a User subject other than `who`'s.
fn foreign_user_binding(who: &Claimant, bindings: &[Value]) -> Option<(String, String)> {
    bindings.iter().find_map(|b| {
        let name = b.pointer("/metadata/name").and_then(Value::as_str)?;
        let role = b.pointer("/roleRef/name").and_then(Value::as_str);
        if role != Some(crate::cluster::desired::USER_CLUSTER_ROLE) && !name.ends_with("-ood-user")
        {
            return None;
        }
        b.get("subjects")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter(|s| s.get("kind").and_then(Value::as_str) == Some("User"))
            .filter_map(|s| s.get("name").and_then(Value::as_str))
            .find(|s| *s != who.subject)
            .map(|s| (name.to_owned(), s.to_owned()))
    })
}

/// The namespace body to write for `decision`: the desired one, with the
/// owner record completed from the existing one where the claimant's uid
/// is not known (server-side apply would otherwise drop the recorded uid),
/// and, for a claim, the resourceVersion read as a precondition. Unless
/// it is a `login`, the last-hook annotation is the one read (sent, as
/// leaving it out would drop it), on condition that nobody changed the
/// namespace since: a login meanwhile is not undone.
pub fn namespace_body(desired: &Value, decision: &Decision, login: bool) -> Value {
    let mut body = desired.clone();
    let (Decision::Owned(e) | Decision::Claim(e)) = decision else {
        return body;
    };
    if !login {
        keep_last_hook(&mut body, e.last_hook.as_deref());
    }
    let has_uid = body
        .pointer("/metadata/annotations")
        .and_then(|a| a.get(UID_ANNOTATION))
        .is_some();
    if let (false, Some(uid), Some(annotations)) = (
        has_uid,
        &e.recorded_uid,
        body.pointer_mut("/metadata/annotations")
            .and_then(Value::as_object_mut),
    ) {
        annotations.insert(UID_ANNOTATION.to_owned(), Value::String(uid.clone()));
    }
    let conditional = matches!(decision, Decision::Claim(_)) || !login;
    if let (true, Some(meta)) = (
        conditional,
        body.get_mut("metadata").and_then(Value::as_object_mut),
    ) {
        meta.insert(
            "resourceVersion".to_owned(),
            Value::String(e.resource_version.clone()),
        );
    }
    body
}

/// `body`'s last-hook annotation made `existing` (the value read), or left
/// out where the namespace has none: not a login, so not activity.
pub fn keep_last_hook(body: &mut Value, existing: Option<&str>) {
    let Some(annotations) = body
        .pointer_mut("/metadata/annotations")
        .and_then(Value::as_object_mut)
    else {
        return;
    };
    match existing {
        Some(v) => annotations.insert(LAST_HOOK_ANNOTATION.to_owned(), Value::String(v.into())),
        None => annotations.remove(LAST_HOOK_ANNOTATION),
    };
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn carol(login: &str, uid: Option<u32>) -> Claimant {
        Claimant {
            login: login.into(),
            uid,
            subject: login.into(),
        }
    }

    fn ns(annotations: Value, labelled: bool) -> Value {
        let labels = if labelled {
            json!({NAME_LABEL: NAME_LABEL_VALUE})
        } else {
            json!({})
        };
        json!({"metadata": {"name": "carol-smith", "resourceVersion": "42",
                            "labels": labels, "annotations": annotations}})
    }

    fn binding(name: &str, subject: &str) -> Value {
        json!({"metadata": {"name": name},
               "roleRef": {"kind": "ClusterRole", "name": "ood-user"},
               "subjects": [{"kind": "User", "name": subject}]})
    }

    fn decide_for(who: &Claimant, ns: &Value, bindings: Option<Option<&[Value]>>) -> Decision {
        decide(who, "carol-smith", Some(ns), bindings)
    }

    #[test]
    fn a_missing_namespace_is_created() {
        assert_eq!(
            decide(&carol("carol.smith", Some(1)), "x", None, None),
            Decision::Create
        );
    }

    #[test]
    fn the_recorded_owner_gets_it_and_another_login_is_refused() {
        let n = ns(
            json!({USER_ANNOTATION: "carol.smith", UID_ANNOTATION: "1003"}),
            true,
        );
        assert!(matches!(
            decide_for(&carol("carol.smith", Some(1003)), &n, None),
            Decision::Owned(Existing {
                uid_changed: None,
                ..
            })
        ));
        let Decision::Refuse(c) = decide_for(&carol("carol-smith", Some(1004)), &n, None) else {
            panic!("not refused");
        };
        assert_eq!(
            c.owner,
            Owner::Recorded {
                login: "carol.smith".into(),
                uid: "1003".into()
            }
        );
        let msg = c.to_string();
        for part in [
            "carol-smith",
            "carol.smith",
            "uid 1003",
            "renames",
            "nothing was changed",
        ] {
            assert!(msg.contains(part), "{msg}");
        }
        assert!(!msg.contains('\n'));
    }

    #[test]
    fn a_renumbered_owner_keeps_it_and_is_told() {
        let n = ns(
            json!({USER_ANNOTATION: "carol.smith", UID_ANNOTATION: "1003"}),
            true,
        );
        let Decision::Owned(e) = decide_for(&carol("carol.smith", Some(2000)), &n, None) else {
            panic!("not owned");
        };
        assert_eq!(e.uid_changed, Some(("1003".into(), 2000)));
    }

    #[test]
    fn without_a_record_the_bindings_decide() {
        // Earlier versions recorded the login alone: not a record.
        for annotations in [json!({}), json!({USER_ANNOTATION: "carol-smith"})] {
            let n = ns(annotations, true);
            let me = carol("carol.smith", Some(1003));
            assert_eq!(decide_for(&me, &n, None), Decision::NeedBindings);
            let mut initializer = binding("carol.smith-ood-initializer", "x");
            initializer["roleRef"]["name"] = json!("ood-initializer");
            let mine = [binding("carol.smith-ood-user", "carol.smith"), initializer];
            assert!(matches!(
                decide_for(&me, &n, Some(Some(&mine))),
                Decision::Claim(_)
            ));
            assert!(matches!(
                decide_for(&me, &n, Some(Some(&[]))),
                Decision::Claim(_)
            ));
            let theirs = [
                mine[0].clone(),
                binding("carol-smith-ood-user", "carol-smith"),
            ];
            let Decision::Refuse(c) = decide_for(&me, &n, Some(Some(&theirs))) else {
                panic!("not refused");
            };
            assert_eq!(
                c.owner,
                Owner::Bound {
                    binding: "carol-smith-ood-user".into(),
                    subject: "carol-smith".into()
                }
            );
            assert_eq!(
                decide_for(&me, &n, Some(None)),
                Decision::Refuse(Collision {
                    namespace: "carol-smith".into(),
                    login: "carol.smith".into(),
                    owner: Owner::Unverifiable
                })
            );
        }
    }

    #[test]
    fn an_old_scripts_binding_counts_by_its_name_too() {
        let n = ns(json!({}), true);
        let mut b = binding("bob-ood-user", "bob");
        b["roleRef"]["name"] = json!("site-renamed-role");
        assert!(matches!(
            decide_for(&carol("carol.smith", None), &n, Some(Some(&[b]))),
            Decision::Refuse(_)
        ));
    }

    #[test]
    fn an_unlabelled_namespace_without_record_is_not_taken() {
        let n = ns(json!({}), false);
        let Decision::Refuse(c) = decide_for(&carol("kube-system", Some(5)), &n, Some(Some(&[])))
        else {
            panic!("not refused");
        };
        assert_eq!(c.owner, Owner::Foreign);
    }

    #[test]
    fn the_body_keeps_a_recorded_uid_and_a_claim_is_conditional() {
        let desired = json!({"metadata": {"name": "carol-smith",
                                          "annotations": {USER_ANNOTATION: "carol.smith"}}});
        let e = Existing {
            resource_version: "42".into(),
            recorded_uid: Some("1003".into()),
            uid_changed: None,
            last_hook: None,
        };
        let owned = namespace_body(&desired, &Decision::Owned(e.clone()), true);
        assert_eq!(owned["metadata"]["annotations"][UID_ANNOTATION], "1003");
        assert!(owned["metadata"].get("resourceVersion").is_none());
        let claim = namespace_body(&desired, &Decision::Claim(e), true);
        assert_eq!(claim["metadata"]["resourceVersion"], "42");
        assert_eq!(namespace_body(&desired, &Decision::Create, true), desired);
    }

    /// Issue 25 (6): only a login is activity. What is not a login sends
    /// the idle clock it read (leaving the field out would make server-side
    /// apply drop it), conditional on the version read, so a login
    /// meanwhile is not undone; a namespace it creates gets now.
    #[test]
    fn what_is_not_a_login_keeps_the_idle_clock() {
        let desired = json!({"metadata": {"name": "carol-smith", "annotations": {
            USER_ANNOTATION: "carol.smith", LAST_HOOK_ANNOTATION: "1800000000"}}});
        let n = ns(
            json!({USER_ANNOTATION: "carol.smith", UID_ANNOTATION: "1003",
                   LAST_HOOK_ANNOTATION: "1700000000"}),
            true,
        );
        let decision = decide_for(&carol("carol.smith", Some(1003)), &n, None);
        assert!(
            matches!(&decision, Decision::Owned(e) if e.last_hook.as_deref() == Some("1700000000"))
        );
        let kept = namespace_body(&desired, &decision, false);
        assert_eq!(
            kept["metadata"]["annotations"][LAST_HOOK_ANNOTATION],
            "1700000000"
        );
        assert!(kept["metadata"]["resourceVersion"].is_string());
        let login = namespace_body(&desired, &decision, true);
        assert_eq!(
            login["metadata"]["annotations"][LAST_HOOK_ANNOTATION],
            "1800000000"
        );
        assert!(login["metadata"].get("resourceVersion").is_none());
        // None read: none written (its age stays unknown to reap).
        let bare = ns(
            json!({USER_ANNOTATION: "carol.smith", UID_ANNOTATION: "1003"}),
            true,
        );
        let decision = decide_for(&carol("carol.smith", Some(1003)), &bare, None);
        let body = namespace_body(&desired, &decision, false);
        assert!(
            body["metadata"]["annotations"]
                .get(LAST_HOOK_ANNOTATION)
                .is_none()
        );
        // Created now: now.
        assert_eq!(namespace_body(&desired, &Decision::Create, false), desired);
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            /// Whatever the namespace and bindings hold, a recorded owner
            /// is never handed to another login, and a claim is only made
            /// when no ood-user binding names anyone else.
            #[test]
            fn never_another_logins_namespace(
                owner in "[a-z.@-]{1,8}", login in "[a-z.@-]{1,8}",
                uid in proptest::option::of(0u32..5), subjects in proptest::collection::vec("[a-z.@-]{1,8}", 0..4),
                labelled in any::<bool>(), recorded in any::<bool>(),
            ) {
                let who = carol(&login, uid);
                let annotations = if recorded {
                    json!({USER_ANNOTATION: owner, UID_ANNOTATION: "7"})
                } else {
                    json!({})
                };
                let n = ns(annotations, labelled);
                let list: Vec<Value> = subjects.iter().enumerate()
                    .map(|(i, s)| binding(&format!("b{i}-ood-user"), s)).collect();
                match decide_for(&who, &n, Some(Some(&list))) {
                    Decision::Owned(_) => prop_assert!(recorded && owner == login),
                    Decision::Claim(_) => prop_assert!(!recorded && labelled && subjects.iter().all(|s| *s == login)),
                    Decision::Refuse(c) => prop_assert!(!c.to_string().contains('\n')),
                    d => prop_assert!(false, "{d:?}"),
                }
            }
        }
    }
}
