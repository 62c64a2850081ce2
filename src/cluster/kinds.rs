//! The kinds of object this program writes, as one typed table: each kind's
//! API group, version and resource (plural), whether site templates may
//! hold it, whether pruning may delete it, and the rule its names follow.
//! Every API path is built here, so no other module juggles strings.

use crate::site::names::dns1123_subdomain_problem;

/// A kind of Kubernetes object this program may write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    Namespace,
    NetworkPolicy,
    Role,
    RoleBinding,
    Secret,
    ServiceAccount,
    ConfigMap,
    ResourceQuota,
    LimitRange,
    PersistentVolumeClaim,
}

/// One row of the table.
struct Info {
    name: &'static str,
    /// "" for the core group.
    group: &'static str,
    version: &'static str,
    plural: &'static str,
}

impl Kind {
    /// Every kind, in the table's order.
    pub const ALL: [Kind; 10] = [
        Kind::Namespace,
        Kind::NetworkPolicy,
        Kind::Role,
        Kind::RoleBinding,
        Kind::Secret,
        Kind::ServiceAccount,
        Kind::ConfigMap,
        Kind::ResourceQuota,
        Kind::LimitRange,
        Kind::PersistentVolumeClaim,
    ];

    fn info(self) -> Info {
        let (name, group, plural) = match self {
            Self::Namespace => ("Namespace", "", "namespaces"),
            Self::NetworkPolicy => ("NetworkPolicy", "networking.k8s.io", "networkpolicies"),
            Self::Role => ("Role", "rbac.authorization.k8s.io", "roles"),
            Self::RoleBinding => ("RoleBinding", "rbac.authorization.k8s.io", "rolebindings"),
            Self::Secret => ("Secret", "", "secrets"),
            Self::ServiceAccount => ("ServiceAccount", "", "serviceaccounts"),
            Self::ConfigMap => ("ConfigMap", "", "configmaps"),
            Self::ResourceQuota => ("ResourceQuota", "", "resourcequotas"),
            Self::LimitRange => ("LimitRange", "", "limitranges"),
            Self::PersistentVolumeClaim => ("PersistentVolumeClaim", "", "persistentvolumeclaims"),
        };
        Info {
            name,
            group,
            version: "v1",
            plural,
        }
    }

    /// The `kind` field, e.g. `RoleBinding`.
    pub fn name(self) -> &'static str {
        self.info().name
    }

    /// The API group, "" for the core group (e.g. in access reviews).
    pub fn group(self) -> &'static str {
        self.info().group
    }

    /// The resource name in API paths and RBAC rules, e.g. `rolebindings`.
    pub fn plural(self) -> &'static str {
        self.info().plural
    }

    /// The `apiVersion` field, e.g. `rbac.authorization.k8s.io/v1`.
    pub fn api_version(self) -> String {
        let i = self.info();
        match i.group {
            "" => i.version.to_owned(),
            g => format!("{g}/{}", i.version),
        }
    }

    /// The kind a manifest names, if it is in the table.
    pub fn from_manifest(api_version: &str, kind: &str) -> Option<Kind> {
        Self::ALL
            .into_iter()
            .find(|k| k.name() == kind && k.api_version() == api_version)
    }

    /// The kind called `kind` (any API version), if it is in the table.
    pub fn from_name(kind: &str) -> Option<Kind> {
        Self::ALL.into_iter().find(|k| k.name() == kind)
    }

    /// May site templates hold this kind? Every namespaced kind in the
    /// table (the namespace itself is the hook's).
    pub fn in_templates(self) -> bool {
        self != Self::Namespace
    }

    /// May pruning delete objects of this kind? Not the namespace, and not
    /// PersistentVolumeClaims: their data would go with them.
    pub fn prunable(self) -> bool {
        !matches!(self, Self::Namespace | Self::PersistentVolumeClaim)
    }

    /// The kinds pruning lists in a user's namespace.
    pub fn prunable_kinds() -> impl Iterator<Item = Kind> {
        Self::ALL.into_iter().filter(|k| k.prunable())
    }

    /// The collection path: `/api/v1/namespaces/NS/secrets`, or
    /// `/api/v1/namespaces` for namespaces themselves.
    pub fn collection_path(self, namespace: &str) -> String {
        let i = self.info();
        let root = match i.group {
            "" => format!("/api/{}", i.version),
            g => format!("/apis/{g}/{}", i.version),
        };
        match self {
            Self::Namespace => format!("{root}/namespaces"),
            _ => format!("{root}/namespaces/{namespace}/{}", i.plural),
        }
    }

    /// The path of one object.
    pub fn object_path(self, namespace: &str, name: &str) -> String {
        format!("{}/{name}", self.collection_path(namespace))
    }

    /// Why `name` cannot name an object of this kind, or `None`. RBAC
    /// objects take any path segment; the rest are DNS-1123 subdomains.
    /// Either way the name is safe inside an API path.
    pub fn name_problem(self, name: &str) -> Option<&'static str> {
        match self {
            Self::Role | Self::RoleBinding => path_segment_problem(name),
            _ => dns1123_subdomain_problem(name),
        }
    }
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Why `name` is not a valid RBAC object name (a "path segment name"), or
/// `None`. Stricter than the API server in one way: only printable ASCII
/// without URL metacharacters, since the name goes into a request path.
fn path_segment_problem(name: &str) -> Option<&'static str> {
    if name.is_empty() {
        return Some("it is empty");
    }
    if name.len() > 253 {
        return Some("it is longer than 253 characters");
    }
    if name == "." || name == ".." {
        return Some("it may not be '.' or '..'");
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_' | '@' | ':'))
    {
        return Some("it may contain only letters, digits and '-', '.', '_', '@', ':'");
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths() {
        assert_eq!(
            Kind::RoleBinding.object_path("alice", "x"),
            "/apis/rbac.authorization.k8s.io/v1/namespaces/alice/rolebindings/x"
        );
        assert_eq!(
            Kind::ResourceQuota.collection_path("alice"),
            "/api/v1/namespaces/alice/resourcequotas"
        );
        assert_eq!(
            Kind::Namespace.object_path("", "alice"),
            "/api/v1/namespaces/alice"
        );
    }

    #[test]
    fn manifests_map_to_kinds() {
        assert_eq!(
            Kind::from_manifest("networking.k8s.io/v1", "NetworkPolicy"),
            Some(Kind::NetworkPolicy)
        );
        assert_eq!(Kind::from_manifest("v1", "NetworkPolicy"), None);
        assert_eq!(
            Kind::from_manifest("v1", "LimitRange"),
            Some(Kind::LimitRange)
        );
        for k in Kind::ALL {
            assert_eq!(Kind::from_manifest(&k.api_version(), k.name()), Some(k));
        }
    }

    #[test]
    fn names() {
        assert!(Kind::ConfigMap.name_problem("site-config").is_none());
        assert!(Kind::ConfigMap.name_problem("a_b").is_some());
        assert!(Kind::RoleBinding.name_problem("a_b-ood-user").is_none());
        assert!(Kind::RoleBinding.name_problem("a/b").is_some());
        assert!(Kind::Role.name_problem("..").is_some());
        assert!(Kind::Secret.name_problem("x?y").is_some());
    }

    #[test]
    fn persistent_volume_claims_are_never_pruned() {
        assert!(!Kind::PersistentVolumeClaim.prunable());
        assert!(!Kind::Namespace.prunable());
        assert_eq!(Kind::prunable_kinds().count(), 8);
    }
}
