//! Pruning, the pure part: given the objects a run wants and the objects of
//! ours listed in the user's namespace, which to delete. An object is ours
//! only if it carries our label *and* our field manager wrote it, so an
//! object someone else made — even one copying our label — is never
//! touched. Nothing here talks to the cluster (that is `apply`).

use std::collections::BTreeSet;

use serde_json::Value;

use crate::cluster::desired::{FIELD_MANAGER, MANAGED_BY_LABEL, MANAGED_BY_VALUE, Object};
use crate::cluster::kinds::Kind;

/// The label selector pruning lists with.
pub fn selector() -> String {
    format!("{MANAGED_BY_LABEL}={MANAGED_BY_VALUE}")
}

/// An object found in the namespace, as much as pruning needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    pub kind: Kind,
    pub name: String,
    /// Deleted only if still this very object (a delete precondition).
    pub uid: String,
    ours: bool,
    deleting: bool,
}

impl Found {
    /// Reads one item of a list answer; `None` if it has no name or uid.
    pub fn from_item(kind: Kind, item: &Value) -> Option<Self> {
        let meta = item.get("metadata")?;
        let name = meta.get("name")?.as_str()?.to_owned();
        let uid = meta.get("uid")?.as_str()?.to_owned();
        let labelled = meta
            .pointer(&format!("/labels/{}", MANAGED_BY_LABEL.replace('/', "~1")))
            .and_then(Value::as_str)
            == Some(MANAGED_BY_VALUE);
        let written_by_us = meta
            .get("managedFields")
            .and_then(Value::as_array)
            .is_some_and(|entries| {
                entries
                    .iter()
                    .any(|e| e.get("manager").and_then(Value::as_str) == Some(FIELD_MANAGER))
            });
        let deleting = meta.get("deletionTimestamp").is_some_and(|v| !v.is_null());
        Some(Self {
            kind,
            name,
            uid,
            ours: labelled && written_by_us,
            deleting,
        })
    }

    /// `Kind/name`, for reports.
    pub fn describe(&self) -> String {
        format!("{}/{}", self.kind, self.name)
    }
}

/// The objects to delete: ours, of a prunable kind, not being deleted
/// already, and not wanted by `desired`.
pub fn plan<'a>(desired: &[Object], found: &'a [Found]) -> Vec<&'a Found> {
    let wanted: BTreeSet<(Kind, &str)> = desired.iter().map(|o| (o.kind(), o.name())).collect();
    found
        .iter()
        .filter(|f| f.ours && !f.deleting && f.kind.prunable())
        .filter(|f| !wanted.contains(&(f.kind, f.name.as_str())))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::site::names::{Namespace, Username};
    use crate::site::settings::Settings;
    use serde_json::json;
    use std::path::Path;

    fn item(name: &str, labelled: bool, manager: &str) -> Value {
        let labels = if labelled {
            json!({"app.kubernetes.io/managed-by": "ood-k8s-bootstrap"})
        } else {
            json!({})
        };
        json!({"metadata": {"name": name, "uid": format!("uid-{name}"), "labels": labels,
               "managedFields": [{"manager": manager, "operation": "Apply"}]}})
    }

    fn desired() -> Vec<Object> {
        let s = Settings::parse(Path::new("/h"), "NETWORK_POLICY_ALLOW_CIDR=10.0.0.0/8\n").unwrap();
        let u = Username::parse("alice").unwrap();
        let ns = Namespace::for_user("", &u).unwrap();
        crate::cluster::desired::desired_state(&s, &u, &ns, None, 1)
            .unwrap()
            .objects
    }

    #[test]
    fn deletes_only_unwanted_objects_of_ours() {
        let found: Vec<Found> = [
            (
                Kind::RoleBinding,
                item("alice-ood-user", true, FIELD_MANAGER),
            ),
            (
                Kind::RoleBinding,
                item("alice-job-pod-reaper-rolebinding", true, FIELD_MANAGER),
            ),
            (Kind::Secret, item("regcred", true, FIELD_MANAGER)),
            // Someone copied our label; their manager wrote it.
            (Kind::ConfigMap, item("copied", true, "kubectl-create")),
            // Ours by manager, but the label was removed: left alone.
            (Kind::ConfigMap, item("unlabelled", false, FIELD_MANAGER)),
            (
                Kind::PersistentVolumeClaim,
                item("data", true, FIELD_MANAGER),
            ),
        ]
        .iter()
        .map(|(k, v)| Found::from_item(*k, v).unwrap())
        .collect();
        let victims: Vec<String> = plan(&desired(), &found)
            .iter()
            .map(|f| f.describe())
            .collect();
        assert_eq!(
            victims,
            [
                "RoleBinding/alice-job-pod-reaper-rolebinding",
                "Secret/regcred"
            ]
        );
    }

    #[test]
    fn objects_being_deleted_are_skipped() {
        let mut v = item("old", true, FIELD_MANAGER);
        v["metadata"]["deletionTimestamp"] = json!("2024-01-01T00:00:00Z");
        let found = vec![Found::from_item(Kind::ConfigMap, &v).unwrap()];
        assert!(plan(&desired(), &found).is_empty());
        assert!(Found::from_item(Kind::ConfigMap, &json!({"metadata": {"name": "x"}})).is_none());
    }
}
