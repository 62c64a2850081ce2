//! The desired cluster state for one user: plain data in (settings, user,
//! ids, time), Kubernetes objects out — the hook's own and the site
//! templates'. No I/O, so every name, label and subject other tools depend
//! on is unit-tested here without a cluster.
//!
//! Names and shapes follow the old OnDemand hook scripts (and so what the
//! dashboard and the reapers expect); see SPEC.md §4.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{
    LocalObjectReference, Namespace as NamespaceObj, Secret, ServiceAccount,
};
use k8s_openapi::api::networking::v1::{
    IPBlock, NetworkPolicy, NetworkPolicyIngressRule, NetworkPolicyPeer, NetworkPolicySpec,
};
use k8s_openapi::api::rbac::v1::{RoleBinding, RoleRef, Subject};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};

use thiserror::Error;

use crate::cluster::kinds::Kind;
use crate::cluster::templates::{SiteObject, TemplateError, UserValues, first_duplicate};
use crate::site::account::Ids;
use crate::site::names::{Namespace, Username};
use crate::site::settings::Settings;

/// Label the reapers select OnDemand namespaces by.
pub const NAME_LABEL: &str = "app.kubernetes.io/name";
pub const NAME_LABEL_VALUE: &str = "open-ondemand";
/// Annotation the namespace reaper reads (decimal Unix seconds).
pub const LAST_HOOK_ANNOTATION: &str = "openondemand.org/last-hook-execution";
/// Annotations recording whose namespace this is, the login and its uid
/// (the name mapping loses `.` and `@`, so two logins can map to one
/// namespace: `owner.rs`); `reconcile` finds the users again by the login.
pub const USER_ANNOTATION: &str = "openondemand.org/user";
pub const UID_ANNOTATION: &str = "openondemand.org/uid";
/// With the uid, the annotations publishing the user's numeric identity,
/// which the shipped ValidatingAdmissionPolicy (hooks/uid-gid-policy.yaml)
/// checks pods against (it needs both uid and gid).
pub const GID_ANNOTATION: &str = "openondemand.org/gid";
/// Comma-separated, sorted, the primary gid included.
pub const GROUPS_ANNOTATION: &str = "openondemand.org/supplemental-gids";
/// Label marking what this program manages (never `job`: the job-pod-reaper
/// reaps objects with that label). The dashboard labels its pods
/// `open-ondemand`, so selectors on either value never meet. Pruning only
/// ever deletes objects carrying it *and* written by [`FIELD_MANAGER`].
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
pub const MANAGED_BY_VALUE: &str = "ood-k8s-bootstrap";
/// The field manager every write is made under.
pub const FIELD_MANAGER: &str = "ood-k8s-bootstrap";
pub const NETWORK_POLICY_NAME: &str = "deny-from-other-namespaces";
pub const USER_CLUSTER_ROLE: &str = "ood-user";
pub const INITIALIZER_CLUSTER_ROLE: &str = "ood-initializer";
pub const DEFAULT_SERVICE_ACCOUNT: &str = "default";
const RBAC_GROUP: &str = "rbac.authorization.k8s.io";

/// One object to apply. The variants keep the typed k8s-openapi objects so
/// the apply layer can use typed `Api`s.
#[derive(Debug, Clone, PartialEq)]
pub enum Object {
    Namespace(NamespaceObj),
    NetworkPolicy(NetworkPolicy),
    RoleBinding(RoleBinding),
    Secret(Secret),
    /// The `default` ServiceAccount: made to exist in every run (the
    /// controller-manager makes it only when it gets round to it, and a
    /// pod cannot be created in the namespace until then), and with a pull
    /// secret configured, our `imagePullSecrets` reference — nothing else
    /// of it is ours.
    ServiceAccount(ServiceAccount),
    /// An object from a site template.
    Site(SiteObject),
}

impl Object {
    pub fn kind(&self) -> Kind {
        match self {
            Self::Namespace(_) => Kind::Namespace,
            Self::NetworkPolicy(_) => Kind::NetworkPolicy,
            Self::RoleBinding(_) => Kind::RoleBinding,
            Self::Secret(_) => Kind::Secret,
            Self::ServiceAccount(_) => Kind::ServiceAccount,
            Self::Site(o) => o.kind,
        }
    }

    pub fn meta(&self) -> &ObjectMeta {
        match self {
            Self::Namespace(o) => &o.metadata,
            Self::NetworkPolicy(o) => &o.metadata,
            Self::RoleBinding(o) => &o.metadata,
            Self::Secret(o) => &o.metadata,
            Self::ServiceAccount(o) => &o.metadata,
            Self::Site(o) => &o.meta,
        }
    }

    pub fn name(&self) -> &str {
        self.meta().name.as_deref().unwrap_or_default()
    }

    /// Is this a RoleBinding to a (namespaced) Role? The API server checks
    /// a binding against the Role it names, so that Role must exist first.
    pub fn binds_a_role(&self) -> bool {
        matches!(self, Self::Site(o) if o.kind == Kind::RoleBinding
            && o.body.get("roleRef").and_then(|r| r.get("kind")).and_then(|k| k.as_str()) == Some("Role"))
    }

    /// `Kind/name`, for reports and errors.
    pub fn describe(&self) -> String {
        format!("{}/{}", self.kind(), self.name())
    }

    /// The JSON body as sent to the API server.
    pub fn to_json(&self) -> serde_json::Value {
        let v = match self {
            Self::Namespace(o) => serde_json::to_value(o),
            Self::NetworkPolicy(o) => serde_json::to_value(o),
            Self::RoleBinding(o) => serde_json::to_value(o),
            Self::Secret(o) => serde_json::to_value(o),
            Self::ServiceAccount(o) => serde_json::to_value(o),
            Self::Site(o) => return o.to_json(),
        };
        // Serialising plain k8s-openapi structs cannot fail.
        v.unwrap_or(serde_json::Value::Null)
    }
}

/// The login asking for the namespace (`owner::decide` checks the
/// namespace's owner record against it before any write).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claimant {
    /// The login, as OnDemand passes it.
    pub login: String,
    /// Its uid in passwd, when known (`reconcile` runs for names that need
    /// not exist on this node).
    pub uid: Option<u32>,
    /// The RBAC subject the hook binds `ood-user` to (prefix + login).
    pub subject: String,
}

/// Everything to apply for `user`, the namespace first.
#[derive(Debug, Clone, PartialEq)]
pub struct DesiredState {
    pub namespace: Namespace,
    /// The login the namespace is for, as its owner record says it
    /// (`owner::decide` checks it against the namespace before any write).
    pub owner: Claimant,
    /// `objects[0]` is the Namespace; the rest live in it.
    pub objects: Vec<Object>,
    /// Whether objects of ours in the namespace that are not in `objects`
    /// are to be deleted (`PRUNE=true`, `reconcile --prune`).
    pub prune: bool,
    /// Whether applying this is a login, the only activity: a login sets
    /// [`LAST_HOOK_ANNOTATION`] (reap's idle clock) to now; anything else
    /// (`reconcile`) keeps the value the namespace has, and only a namespace
    /// it creates gets now. True unless the caller says otherwise.
    pub login: bool,
}

/// Why the objects for a user cannot be computed (before any change).
#[derive(Debug, Error)]
pub enum DesiredError {
    #[error(transparent)]
    Template(#[from] TemplateError),
    #[error(
        "user {0}: the uid/gid are needed (PUBLISH_UID_GID, PUBLISH_GROUPS or a template's ${{UID}}/${{GID}}) but were not looked up"
    )]
    NoIds(String),
}

impl DesiredError {
    pub fn exit(&self) -> crate::exit::Exit {
        match self {
            Self::Template(_) => crate::exit::Exit::Config,
            Self::NoIds(_) => crate::exit::Exit::Software,
        }
    }
}

/// Computes the objects for `user` at time `now_unix` (seconds). `ids` are
/// needed when [`Settings::needs_ids`] says so.
pub fn desired_state(
    settings: &Settings,
    user: &Username,
    namespace: &Namespace,
    ids: Option<&Ids>,
    now_unix: u64,
) -> Result<DesiredState, DesiredError> {
    let ns = namespace.as_str();
    if settings.needs_ids() && ids.is_none() {
        return Err(DesiredError::NoIds(user.to_string()));
    }
    let mut objects = vec![Object::Namespace(namespace_object(
        settings, user, namespace, ids, now_unix,
    ))];
    objects.push(Object::NetworkPolicy(network_policy(settings, ns)));
    objects.push(Object::RoleBinding(role_binding(
        ns,
        format!("{user}-{USER_CLUSTER_ROLE}"),
        USER_CLUSTER_ROLE,
        Subject {
            kind: "User".into(),
            api_group: Some(RBAC_GROUP.into()),
            name: format!("{}{user}", settings.user_subject_prefix),
            namespace: None,
        },
    )));
    objects.push(Object::RoleBinding(role_binding(
        ns,
        format!("{user}-{INITIALIZER_CLUSTER_ROLE}"),
        INITIALIZER_CLUSTER_ROLE,
        Subject {
            kind: "ServiceAccount".into(),
            api_group: None,
            name: DEFAULT_SERVICE_ACCOUNT.into(),
            namespace: Some(ns.into()),
        },
    )));
    if let Some(reaper) = &settings.job_pod_reaper {
        objects.push(Object::RoleBinding(role_binding(
            ns,
            format!("{user}-job-pod-reaper-rolebinding"),
            reaper.cluster_role.as_str(),
            Subject {
                kind: "ServiceAccount".into(),
                api_group: None,
                name: reaper.service_account.to_string(),
                namespace: Some(reaper.namespace.to_string()),
            },
        )));
    }
    if let Some(pull) = &settings.image_pull {
        let name = pull.secret_name.to_string();
        objects.push(Object::Secret(Secret {
            metadata: meta(ns, &name),
            type_: Some("kubernetes.io/dockerconfigjson".into()),
            data: Some(BTreeMap::from([(
                ".dockerconfigjson".to_owned(),
                ByteString(pull.docker_config_json.expose().as_bytes().to_vec()),
            )])),
            ..Default::default()
        }));
    }
    // The `default` ServiceAccount exists when the run ends, so the user's
    // first pod is admitted at once. Only the pull secret's reference is
    // ours: other fields and the account itself belong to the cluster.
    // `imagePullSecrets` is an atomic list, so the apply layer merges in
    // the entries others added; without a pull secret it only creates the
    // account if it is missing.
    objects.push(Object::ServiceAccount(ServiceAccount {
        metadata: ObjectMeta {
            name: Some(DEFAULT_SERVICE_ACCOUNT.into()),
            namespace: Some(ns.into()),
            ..Default::default()
        },
        image_pull_secrets: settings.image_pull.as_ref().map(|pull| {
            vec![LocalObjectReference {
                name: pull.secret_name.to_string(),
            }]
        }),
        ..Default::default()
    }));
    let mut site = settings.templates.instantiate(&UserValues {
        user,
        namespace,
        k8s_username: format!("{}{user}", settings.user_subject_prefix),
        ids,
    })?;
    check_site_names(settings, user, &site)?;
    for o in &mut site {
        o.meta
            .labels
            .get_or_insert_with(BTreeMap::new)
            .insert(MANAGED_BY_LABEL.to_owned(), MANAGED_BY_VALUE.to_owned());
    }
    objects.extend(site.into_iter().map(Object::Site));
    Ok(DesiredState {
        namespace: namespace.clone(),
        owner: Claimant {
            login: user.to_string(),
            uid: ids.map(|i| i.uid),
            subject: format!("{}{user}", settings.user_subject_prefix),
        },
        objects,
        prune: settings.prune,
        login: true,
    })
}

/// The names of the hook's own objects (whether switched on or not): a
/// template may not take them, nor two templates one name.
fn check_site_names(
    settings: &Settings,
    user: &Username,
    site: &[SiteObject],
) -> Result<(), TemplateError> {
    let mut reserved = vec![
        (Kind::NetworkPolicy, NETWORK_POLICY_NAME.to_owned()),
        (Kind::RoleBinding, format!("{user}-{USER_CLUSTER_ROLE}")),
        (
            Kind::RoleBinding,
            format!("{user}-{INITIALIZER_CLUSTER_ROLE}"),
        ),
        (
            Kind::RoleBinding,
            format!("{user}-job-pod-reaper-rolebinding"),
        ),
        (Kind::ServiceAccount, DEFAULT_SERVICE_ACCOUNT.to_owned()),
    ];
    if let Some(pull) = &settings.image_pull {
        reserved.push((Kind::Secret, pull.secret_name.to_string()));
    }
    for o in site {
        let name = o.meta.name.clone().unwrap_or_default();
        if reserved.contains(&(o.kind, name.clone())) {
            return Err(o.error(format!(
                "for user {user}: {}/{name} is one of the hook's own objects; give it another name",
                o.kind
            )));
        }
    }
    match first_duplicate(site) {
        Some(o) => Err(o.error(format!(
            "for user {user}: {}/{} is made by another template too",
            o.kind,
            o.meta.name.clone().unwrap_or_default()
        ))),
        None => Ok(()),
    }
}

fn namespace_object(
    settings: &Settings,
    user: &Username,
    namespace: &Namespace,
    ids: Option<&Ids>,
    now_unix: u64,
) -> NamespaceObj {
    let mut labels = BTreeMap::from([(NAME_LABEL.to_owned(), NAME_LABEL_VALUE.to_owned())]);
    let psa = &settings.pod_security;
    for (mode, level) in [
        ("enforce", psa.enforce),
        ("audit", psa.audit),
        ("warn", psa.warn),
    ] {
        if let Some(level) = level {
            labels.insert(
                format!("pod-security.kubernetes.io/{mode}"),
                level.as_str().to_owned(),
            );
            if let Some(version) = &psa.version {
                labels.insert(
                    format!("pod-security.kubernetes.io/{mode}-version"),
                    version.clone(),
                );
            }
        }
    }
    let mut annotations = BTreeMap::from([
        (LAST_HOOK_ANNOTATION.to_owned(), now_unix.to_string()),
        (USER_ANNOTATION.to_owned(), user.to_string()),
    ]);
    // The owner record: the login (above) and its uid, whenever known.
    if let Some(ids) = ids {
        annotations.insert(UID_ANNOTATION.to_owned(), ids.uid.to_string());
    }
    if let Some(ids) = ids.filter(|_| settings.publish.uid_gid) {
        annotations.insert(GID_ANNOTATION.to_owned(), ids.gid.to_string());
        if let Some(groups) = ids.groups.as_ref().filter(|_| settings.publish.groups) {
            let list: Vec<String> = groups.iter().map(u32::to_string).collect();
            annotations.insert(GROUPS_ANNOTATION.to_owned(), list.join(","));
        }
    }
    NamespaceObj {
        metadata: ObjectMeta {
            name: Some(namespace.to_string()),
            labels: Some(labels),
            annotations: Some(annotations),
            ..Default::default()
        },
        ..Default::default()
    }
}

fn network_policy(settings: &Settings, ns: &str) -> NetworkPolicy {
    let mut from = vec![NetworkPolicyPeer {
        pod_selector: Some(LabelSelector::default()),
        ..Default::default()
    }];
    from.extend(settings.allow_cidrs.iter().map(|cidr| NetworkPolicyPeer {
        ip_block: Some(IPBlock {
            cidr: cidr.to_string(),
            except: None,
        }),
        ..Default::default()
    }));
    NetworkPolicy {
        metadata: meta(ns, NETWORK_POLICY_NAME),
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(LabelSelector::default()),
            ingress: Some(vec![NetworkPolicyIngressRule {
                from: Some(from),
                ports: None,
            }]),
            policy_types: Some(vec!["Ingress".into()]),
            ..Default::default()
        }),
    }
}

fn role_binding(ns: &str, name: String, cluster_role: &str, subject: Subject) -> RoleBinding {
    RoleBinding {
        metadata: meta(ns, &name),
        role_ref: RoleRef {
            api_group: Some(RBAC_GROUP.into()),
            kind: "ClusterRole".into(),
            name: cluster_role.into(),
        },
        subjects: Some(vec![subject]),
    }
}

fn meta(ns: &str, name: &str) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.to_owned()),
        namespace: Some(ns.to_owned()),
        labels: Some(BTreeMap::from([(
            MANAGED_BY_LABEL.to_owned(),
            MANAGED_BY_VALUE.to_owned(),
        )])),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn settings(extra: &str) -> Settings {
        Settings::parse(
            Path::new("/hook.env"),
            &format!("NETWORK_POLICY_ALLOW_CIDR=10.1.0.0/16\n{extra}"),
        )
        .unwrap()
    }

    fn state(extra: &str, user: &str) -> DesiredState {
        let s = settings(extra);
        let u = Username::parse(user).unwrap();
        let ns = Namespace::for_user(&s.namespace_prefix, &u).unwrap();
        desired_state(&s, &u, &ns, None, 1_700_000_000).unwrap()
    }

    #[test]
    fn basic_objects_match_the_old_hook() {
        let d = state("NAMESPACE_PREFIX=user-\n", "first.last");
        assert_eq!(d.namespace.as_str(), "user-first-last");
        let names: Vec<_> = d.objects.iter().map(Object::describe).collect();
        assert_eq!(
            names,
            [
                "Namespace/user-first-last",
                "NetworkPolicy/deny-from-other-namespaces",
                "RoleBinding/first.last-ood-user",
                "RoleBinding/first.last-ood-initializer",
                "ServiceAccount/default",
            ]
        );
        let ns = d.objects[0].to_json();
        assert_eq!(
            ns["metadata"]["labels"]["app.kubernetes.io/name"],
            "open-ondemand"
        );
        assert_eq!(
            ns["metadata"]["annotations"]["openondemand.org/last-hook-execution"],
            "1700000000"
        );
        assert_eq!(
            ns["metadata"]["annotations"]["openondemand.org/user"],
            "first.last"
        );
        let user_rb = d.objects[2].to_json();
        assert_eq!(user_rb["roleRef"]["name"], "ood-user");
        assert_eq!(user_rb["subjects"][0]["kind"], "User");
        assert_eq!(user_rb["subjects"][0]["name"], "first.last");
        let init_rb = d.objects[3].to_json();
        assert_eq!(init_rb["subjects"][0]["kind"], "ServiceAccount");
        assert_eq!(init_rb["subjects"][0]["name"], "default");
        assert_eq!(init_rb["subjects"][0]["namespace"], "user-first-last");
    }

    #[test]
    fn network_policy_allows_same_namespace_and_cidrs() {
        let d = state(
            "NETWORK_POLICY_ALLOW_CIDR=10.1.0.0/16,192.0.2.1/32\n",
            "alice",
        );
        let np = d.objects[1].to_json();
        assert_eq!(np["spec"]["podSelector"], serde_json::json!({}));
        let from = &np["spec"]["ingress"][0]["from"];
        assert_eq!(from[0], serde_json::json!({"podSelector": {}}));
        assert_eq!(from[1]["ipBlock"]["cidr"], "10.1.0.0/16");
        assert_eq!(from[2]["ipBlock"]["cidr"], "192.0.2.1/32");
    }

    #[test]
    fn nothing_carries_a_job_label() {
        let d = state(
            "USE_JOB_POD_REAPER=true\nPOD_SECURITY_ENFORCE=baseline\n",
            "alice",
        );
        for o in &d.objects {
            let labels = o.meta().labels.clone().unwrap_or_default();
            assert!(!labels.contains_key("job"), "{}", o.describe());
        }
    }

    #[test]
    fn reaper_binding_and_subject_prefix() {
        let d = state(
            "USE_JOB_POD_REAPER=true\nJOB_POD_REAPER_NAMESPACE=reapers\nOIDC_USERNAME_PREFIX=oidc-\n",
            "alice",
        );
        let rb = d
            .objects
            .iter()
            .find(|o| o.name() == "alice-job-pod-reaper-rolebinding")
            .unwrap()
            .to_json();
        assert_eq!(rb["roleRef"]["name"], "job-pod-reaper");
        assert_eq!(rb["subjects"][0]["name"], "job-pod-reaper");
        assert_eq!(rb["subjects"][0]["namespace"], "reapers");
        assert_eq!(d.objects[2].to_json()["subjects"][0]["name"], "oidc-alice");
    }

    #[test]
    fn pod_security_labels_only_when_set() {
        let d = state("", "alice");
        let labels = d.objects[0].meta().labels.clone().unwrap();
        assert_eq!(labels.len(), 1);
        let d = state(
            "POD_SECURITY_ENFORCE=restricted\nPOD_SECURITY_VERSION=latest\nPOD_SECURITY_WARN=restricted\n",
            "alice",
        );
        let labels = d.objects[0].meta().labels.clone().unwrap();
        assert_eq!(labels["pod-security.kubernetes.io/enforce"], "restricted");
        assert_eq!(
            labels["pod-security.kubernetes.io/enforce-version"],
            "latest"
        );
        assert_eq!(labels["pod-security.kubernetes.io/warn"], "restricted");
        assert!(!labels.contains_key("pod-security.kubernetes.io/audit"));
    }

    #[test]
    fn pull_secret_and_service_account_reference() {
        let dir = std::env::temp_dir().join(format!("ood-desired-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let cfg = dir.join("config.json");
        std::fs::write(&cfg, r#"{"auths":{"r.example":{"auth":"dTpw"}}}"#).unwrap();
        let d = state(
            &format!(
                "IMAGE_PULL_SECRET=regcred\nREGISTRY_DOCKER_CONFIG_JSON={}\n",
                cfg.display()
            ),
            "alice",
        );
        let secret = d
            .objects
            .iter()
            .find(|o| o.kind() == Kind::Secret)
            .unwrap()
            .to_json();
        assert_eq!(secret["type"], "kubernetes.io/dockerconfigjson");
        assert!(secret["data"][".dockerconfigjson"].is_string());
        let sa = d
            .objects
            .iter()
            .find(|o| o.kind() == Kind::ServiceAccount)
            .unwrap()
            .to_json();
        assert_eq!(sa["metadata"]["name"], "default");
        assert_eq!(
            sa["imagePullSecrets"],
            serde_json::json!([{"name": "regcred"}])
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_default_service_account_is_always_there_and_only_references_are_ours() {
        let d = state("", "alice");
        let sa: Vec<_> = d
            .objects
            .iter()
            .filter(|o| o.kind() == Kind::ServiceAccount)
            .map(Object::to_json)
            .collect();
        assert_eq!(sa.len(), 1);
        assert_eq!(sa[0]["metadata"]["name"], "default");
        assert_eq!(sa[0]["metadata"]["namespace"], d.namespace.as_str());
        assert!(sa[0].get("imagePullSecrets").is_none(), "{}", sa[0]);
        assert!(sa[0]["metadata"].get("labels").is_none(), "{}", sa[0]);
    }

    fn with_templates(text: &str, extra: &str) -> Settings {
        let mut s = settings(extra);
        s.templates = crate::cluster::templates::TemplateSet::parse(
            &[("/t/site.yaml".into(), text.into())],
            &Default::default(),
        )
        .unwrap();
        s
    }

    #[test]
    fn site_objects_follow_the_hooks_own_and_carry_our_label() {
        let s = with_templates(
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: site, labels: {a: b}}\n",
            "",
        );
        let u = Username::parse("alice").unwrap();
        let ns = Namespace::for_user("", &u).unwrap();
        let d = desired_state(&s, &u, &ns, None, 1).unwrap();
        let last = d.objects.last().unwrap();
        assert_eq!(last.describe(), "ConfigMap/site");
        let labels = last.meta().labels.clone().unwrap();
        assert_eq!(labels["a"], "b");
        assert_eq!(labels[MANAGED_BY_LABEL], MANAGED_BY_VALUE);
    }

    #[test]
    fn site_objects_may_not_take_the_hooks_names() {
        let u = Username::parse("alice").unwrap();
        let ns = Namespace::for_user("", &u).unwrap();
        for text in [
            "apiVersion: rbac.authorization.k8s.io/v1\nkind: RoleBinding\nmetadata: {name: \"${USER}-job-pod-reaper-rolebinding\"}\n",
            "apiVersion: v1\nkind: ServiceAccount\nmetadata: {name: default}\n",
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: a}\n---\napiVersion: v1\nkind: ConfigMap\nmetadata: {name: a}\n",
        ] {
            let e = desired_state(&with_templates(text, ""), &u, &ns, None, 1)
                .unwrap_err()
                .to_string();
            assert!(
                e.starts_with("/t/site.yaml:") && e.contains("user alice"),
                "{e}"
            );
        }
    }

    #[test]
    fn ids_are_published_only_when_asked_and_needed_when_used() {
        let u = Username::parse("alice").unwrap();
        let ns = Namespace::for_user("", &u).unwrap();
        let ids = Ids {
            uid: 1001,
            gid: 1002,
            groups: Some(vec![1002, 3000]),
        };
        let ann = |s: &Settings| {
            desired_state(s, &u, &ns, Some(&ids), 1).unwrap().objects[0]
                .meta()
                .annotations
                .clone()
                .unwrap()
        };
        // The uid is the owner record, always there; the gid is published
        // only when asked for, and the admission policy needs both.
        let a = ann(&settings(""));
        assert_eq!(a[UID_ANNOTATION], "1001");
        assert!(!a.contains_key(GID_ANNOTATION));
        let a = ann(&settings("PUBLISH_UID_GID=true\n"));
        assert_eq!(
            (a[UID_ANNOTATION].as_str(), a[GID_ANNOTATION].as_str()),
            ("1001", "1002")
        );
        assert!(!a.contains_key(GROUPS_ANNOTATION));
        let a = ann(&settings("PUBLISH_UID_GID=true\nPUBLISH_GROUPS=true\n"));
        assert_eq!(a[GROUPS_ANNOTATION], "1002,3000");
        // Needed but not given: refused before anything.
        let e = desired_state(&settings("PUBLISH_UID_GID=true\n"), &u, &ns, None, 1);
        assert!(matches!(e, Err(DesiredError::NoIds(_))));
    }

    #[test]
    fn same_input_same_output() {
        assert_eq!(state("", "alice"), state("", "alice"));
    }
}
