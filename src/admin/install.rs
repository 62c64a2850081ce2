//! `ood-k8s-bootstrap install`: the cluster-wide prerequisites (namespace
//! and ServiceAccount `ondemand`, its ClusterRole and binding, `ood-user`,
//! `ood-initializer`, and opt-in parts) embedded in the binary and
//! server-side-applied with an admin's kubeconfig, so a site needs neither
//! a checkout nor a URL of the right version.
//!
//! Each opt-in part is one more embedded manifest behind one flag
//! ([`Part`]); adding an option means adding a variant, a file under
//! `hooks/` and a flag in `cli.rs`.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::Value;
use thiserror::Error;

use crate::PROG;
use crate::cluster::apply::{Applied, ApplyError, Change, Cluster, Connect, Manifest, Mode};
use crate::exit::Exit;
use crate::run::{fail, runtime};

/// A piece of the prerequisites; [`Part::Base`] and [`Part::Apf`] always, the rest by flag.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    /// `hooks/ondemand.yaml`: what every site needs.
    Base,
    /// `hooks/ondemand-apf.yaml`, always: the FlowSchema and priority level
    /// that keep logins' share of the API server in a storm.
    Apf,
    /// `--job-pod-reaper`: the ClusterRole the reaper RoleBinding names.
    JobPodReaper,
    /// `--self-renew`: `create` on the `ondemand` ServiceAccount's own
    /// token, for `root-token`.
    SelfRenew,
    /// `--prune`: list and delete in users' namespaces, for `PRUNE=true`.
    Prune,
    /// `--uid-gid-policy`: the ValidatingAdmissionPolicy that pods run as
    /// their user, for `PUBLISH_UID_GID=true`.
    UidGidPolicy,
    /// `--reap`: list and delete OnDemand namespaces, for `reap`.
    Reap,
}

impl Part {
    /// The manifest's file name under `hooks/` and its text.
    pub fn manifest(self) -> (&'static str, &'static str) {
        match self {
            Self::Base => ("ondemand.yaml", include_str!("../../hooks/ondemand.yaml")),
            Self::Apf => (
                "ondemand-apf.yaml",
                include_str!("../../hooks/ondemand-apf.yaml"),
            ),
            Self::JobPodReaper => (
                "job-pod-reaper.yaml",
                include_str!("../../hooks/job-pod-reaper.yaml"),
            ),
            Self::SelfRenew => (
                "self-renew.yaml",
                include_str!("../../hooks/self-renew.yaml"),
            ),
            Self::Prune => (
                "ondemand-prune.yaml",
                include_str!("../../hooks/ondemand-prune.yaml"),
            ),
            Self::Reap => (
                "ondemand-reap.yaml",
                include_str!("../../hooks/ondemand-reap.yaml"),
            ),
            Self::UidGidPolicy => (
                "uid-gid-policy.yaml",
                include_str!("../../hooks/uid-gid-policy.yaml"),
            ),
        }
    }
}

/// The FlowSchema (and priority level) of hooks/ondemand-apf.yaml.
pub const FLOW_SCHEMA: &str = "ondemand";

/// What the admin asked for.
#[derive(Debug, Clone)]
pub struct Options {
    pub kubeconfig: Option<PathBuf>,
    /// The context of `kubeconfig` to use (none: its current one).
    pub context: Option<String>,
    pub parts: Vec<Part>,
    pub dry_run: bool,
    pub print: bool,
    pub timeout: Duration,
}

#[derive(Debug, Error)]
pub enum InstallError {
    #[error("embedded manifest {file}: {why} (a bug in this build)")]
    Manifest { file: &'static str, why: String },
    #[error(
        "the API server {server} rejected the credentials of {kubeconfig} (401 Unauthorized); install needs a cluster admin's kubeconfig (--kubeconfig PATH)"
    )]
    Unauthorized { server: String, kubeconfig: String },
    #[error(
        "{kubeconfig} may not write {object}: {message} — install needs a cluster admin's kubeconfig (--kubeconfig PATH), not the ondemand ServiceAccount's"
    )]
    Forbidden {
        kubeconfig: String,
        object: String,
        message: String,
    },
    #[error("{0}")]
    Apply(ApplyError),
}

impl InstallError {
    pub fn exit(&self) -> Exit {
        match self {
            Self::Manifest { .. } => Exit::Software,
            Self::Unauthorized { .. } | Self::Forbidden { .. } => Exit::NoPerm,
            Self::Apply(e) => e.exit(),
        }
    }

    fn from_apply(e: ApplyError, kubeconfig: &str) -> Self {
        match e {
            ApplyError::Unauthorized { server, .. } => Self::Unauthorized {
                server,
                kubeconfig: kubeconfig.into(),
            },
            ApplyError::Forbidden {
                object, message, ..
            } => Self::Forbidden {
                kubeconfig: kubeconfig.into(),
                object,
                message,
            },
            other => Self::Apply(other),
        }
    }
}

/// The selected manifests as one YAML stream (comments kept), for `--print`.
pub fn yaml(parts: &[Part]) -> String {
    let mut out = String::new();
    for part in parts {
        let (file, text) = part.manifest();
        out.push_str(&format!("# --- hooks/{file}\n"));
        out.push_str(text);
        if !text.ends_with('\n') {
            out.push('\n');
        }
    }
    out
}

/// The objects of the selected manifests, in order, ready to apply.
pub fn targets(parts: &[Part]) -> Result<Vec<Manifest>, InstallError> {
    let mut out = Vec::new();
    for part in parts {
        let (file, text) = part.manifest();
        let docs: Vec<Value> =
            serde_saphyr::from_multiple(text).map_err(|e| InstallError::Manifest {
                file,
                why: e.to_string(),
            })?;
        for doc in docs.into_iter().filter(|d| !d.is_null()) {
            out.push(target(doc).map_err(|why| InstallError::Manifest { file, why })?);
        }
    }
    Ok(out)
}

/// Where one manifest object lives in the API. Only the kinds the
/// prerequisites use are known.
fn target(doc: Value) -> Result<Manifest, String> {
    let field = |p: &str| doc.pointer(p).and_then(Value::as_str).map(str::to_owned);
    let kind = field("/kind").ok_or("an object without kind")?;
    let name = field("/metadata/name").ok_or(format!("a {kind} without a name"))?;
    let namespace = field("/metadata/namespace");
    let rbac = "/apis/rbac.authorization.k8s.io/v1";
    let flowcontrol = "/apis/flowcontrol.apiserver.k8s.io/v1";
    let (collection, namespaced) = match kind.as_str() {
        "Namespace" => ("/api/v1/namespaces".to_owned(), false),
        "FlowSchema" => (format!("{flowcontrol}/flowschemas"), false),
        "PriorityLevelConfiguration" => {
            (format!("{flowcontrol}/prioritylevelconfigurations"), false)
        }
        "ConfigMap" => ("/api/v1/{ns}/configmaps".to_owned(), true),
        "ServiceAccount" => ("/api/v1/{ns}/serviceaccounts".to_owned(), true),
        "ClusterRole" => (format!("{rbac}/clusterroles"), false),
        "ClusterRoleBinding" => (format!("{rbac}/clusterrolebindings"), false),
        "Role" => (format!("{rbac}/{{ns}}/roles"), true),
        "RoleBinding" => (format!("{rbac}/{{ns}}/rolebindings"), true),
        "ValidatingAdmissionPolicy" => (
            "/apis/admissionregistration.k8s.io/v1/validatingadmissionpolicies".to_owned(),
            false,
        ),
        "ValidatingAdmissionPolicyBinding" => (
            "/apis/admissionregistration.k8s.io/v1/validatingadmissionpolicybindings".to_owned(),
            false,
        ),
        other => return Err(format!("kind {other} is not known to install")),
    };
    let path = match (&namespace, namespaced) {
        (Some(ns), true) => collection.replace("{ns}", &format!("namespaces/{ns}")),
        (None, false) => collection,
        (None, true) => return Err(format!("{kind}/{name} has no namespace")),
        (Some(_), false) => return Err(format!("{kind}/{name} is cluster-scoped")),
    };
    Ok(Manifest {
        path: format!("{path}/{name}"),
        describe: format!("{kind}/{name}"),
        namespace,
        // A ConfigMap holds the site's settings (the pod policy's maximum
        // lifetime): shipped with a default, then the site's to change.
        create_only: kind == "ConfigMap",
        body: doc,
    })
}

/// Runs `install`; every failure is already printed.
/// `install --cluster ID`: the admin kubeconfig's context for that
/// cluster of CLUSTERS_D (hook.env at `hook_env`); errors are printed.
pub fn cluster_context(hook_env: &Path, admin: Option<&Path>, id: &str) -> Result<String, Exit> {
    let clusters = crate::run::load_clusters(hook_env, Some(id))?;
    let Some(server) = clusters.first().and_then(|s| s.kubeconfig.server.clone()) else {
        return Err(fail(
            Exit::Config,
            format!(
                "--cluster {id}: its clusters.d file has no job.server.endpoint, so which API server it is cannot be told"
            ),
        ));
    };
    let context = context_for(admin, id, &server).map_err(|e| fail(Exit::Usage, e))?;
    eprintln!(
        "{PROG}: install: cluster {id}: context {context} of the admin kubeconfig ({server})"
    );
    Ok(context)
}

/// The context of the admin kubeconfig (`path`, or kubectl's default)
/// whose cluster is `server`: `install --cluster ID` on the cluster's API
/// server, not wherever the current context happens to lead.
pub fn context_for(path: Option<&Path>, id: &str, server: &str) -> Result<String, String> {
    let config = match path {
        Some(p) => kube::config::Kubeconfig::read_from(p),
        None => kube::config::Kubeconfig::read(),
    }
    .map_err(|e| format!("--cluster {id}: cannot read the admin kubeconfig: {e}"))?;
    let same = |url: &str| url.trim_end_matches('/') == server.trim_end_matches('/');
    let clusters: Vec<&str> = config
        .clusters
        .iter()
        .filter(|c| {
            c.cluster
                .as_ref()
                .and_then(|c| c.server.as_deref())
                .is_some_and(same)
        })
        .map(|c| c.name.as_str())
        .collect();
    config
        .contexts
        .iter()
        .find(|c| c.context.as_ref().is_some_and(|x| clusters.contains(&x.cluster.as_str())))
        .map(|c| c.name.clone())
        .ok_or_else(|| {
            format!(
                "--cluster {id}: no context of the admin kubeconfig leads to {server} (the cluster's \
                 job.server.endpoint); add one, or pass that cluster's admin kubeconfig with --kubeconfig"
            )
        })
}

pub fn main(opts: &Options) -> Exit {
    if opts.print {
        print!("{}", yaml(&opts.parts));
        return Exit::Ok;
    }
    let started = Instant::now();
    let targets = match targets(&opts.parts) {
        Ok(t) => t,
        Err(e) => return fail(e.exit(), e),
    };
    let kubeconfig = opts.kubeconfig.as_deref().map_or_else(
        || "the default kubeconfig (KUBECONFIG or ~/.kube/config)".to_owned(),
        |p: &Path| p.display().to_string(),
    );
    let Ok(rt) = runtime() else {
        return Exit::Software;
    };
    let mode = if opts.dry_run {
        Mode::DryRun
    } else {
        Mode::Apply
    };
    let deadline = started + opts.timeout;
    let result = rt.block_on(async {
        let how = Connect {
            kubeconfig: opts.kubeconfig.clone(),
            context: opts.context.clone(),
            ..Connect::default()
        };
        let work = async {
            let cluster = Cluster::connect_with(&how, opts.timeout).await?;
            eprintln!(
                "{PROG}: install: applying {} objects to {}{}",
                targets.len(),
                cluster.server(),
                if opts.dry_run { " (dry run)" } else { "" }
            );
            cluster
                .apply_manifests("install", &targets, mode, deadline)
                .await
        };
        match tokio::time::timeout_at(deadline.into(), work).await {
            Ok(r) => r,
            Err(_) => Err(ApplyError::Deadline {
                user: "install".into(),
                server: kubeconfig.clone(),
                secs: opts.timeout.as_secs_f64(),
                last: "no answer".into(),
            }),
        }
    });
    let applied = match result {
        Ok(a) => a,
        Err(e) => {
            let e = InstallError::from_apply(e, &kubeconfig);
            return fail(e.exit(), e);
        }
    };
    print!("{}", report(&applied, opts.dry_run));
    eprintln!(
        "{PROG}: install: {}{} ({} ms)",
        if opts.dry_run {
            "dry run: would be "
        } else {
            ""
        },
        counts(&applied),
        started.elapsed().as_millis()
    );
    Exit::Ok
}

/// One line per object: `created    ClusterRole/ood-user`.
pub fn report(applied: &[Applied], dry_run: bool) -> String {
    applied
        .iter()
        .map(|a| {
            let word = match (a.change, dry_run) {
                (Change::Created, false) => "created",
                (Change::Changed, false) => "changed",
                (Change::Created, true) => "would create",
                (Change::Changed, true) => "would change",
                (Change::Unchanged, _) => "unchanged",
                (Change::Deleted, _) => "deleted",
            };
            format!("{word:<12} {}\n", a.object)
        })
        .collect()
}

/// `2 created, 0 changed, 5 unchanged`.
pub fn counts(applied: &[Applied]) -> String {
    let n = |c| applied.iter().filter(|a| a.change == c).count();
    format!(
        "{} created, {} changed, {} unchanged",
        n(Change::Created),
        n(Change::Changed),
        n(Change::Unchanged)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_manifest_has_the_prerequisites_in_order() {
        let t = targets(&[Part::Base]).unwrap();
        let names: Vec<&str> = t.iter().map(|t| t.describe.as_str()).collect();
        assert_eq!(
            names,
            [
                "Namespace/ondemand",
                "ServiceAccount/ondemand",
                "ClusterRole/ondemand",
                "ClusterRoleBinding/ondemand",
                "ClusterRole/ood-initializer",
                "ClusterRole/ood-user",
            ]
        );
        assert_eq!(t[0].path, "/api/v1/namespaces/ondemand");
        assert_eq!(
            t[1].path,
            "/api/v1/namespaces/ondemand/serviceaccounts/ondemand"
        );
        assert_eq!(
            t[5].path,
            "/apis/rbac.authorization.k8s.io/v1/clusterroles/ood-user"
        );
    }

    #[test]
    fn self_renew_is_narrow() {
        let t = targets(&[Part::SelfRenew]).unwrap();
        assert_eq!(t.len(), 2);
        let rules = &t[0].body["rules"];
        assert_eq!(
            rules,
            &serde_json::json!([{
                "apiGroups": [""],
                "resources": ["serviceaccounts/token"],
                "resourceNames": ["ondemand"],
                "verbs": ["create"]
            }])
        );
        assert_eq!(
            t[1].path,
            "/apis/rbac.authorization.k8s.io/v1/namespaces/ondemand/rolebindings/ondemand-self-renew"
        );
    }

    #[test]
    fn issue_11s_manifests_are_parts_too() {
        let t = targets(&[Part::Prune, Part::UidGidPolicy, Part::Apf, Part::Reap]).unwrap();
        let names: Vec<&str> = t.iter().map(|t| t.describe.as_str()).collect();
        assert_eq!(
            names,
            [
                "ClusterRole/ondemand-prune",
                "ClusterRoleBinding/ondemand-prune",
                "ValidatingAdmissionPolicy/ood-uid-gid",
                "ValidatingAdmissionPolicyBinding/ood-uid-gid",
                "ConfigMap/ood-pod-policy",
                "PriorityLevelConfiguration/ondemand",
                "FlowSchema/ondemand",
                "ClusterRole/ondemand-reap",
                "ClusterRoleBinding/ondemand-reap",
            ]
        );
        // The site's setting is created once, then the site's.
        let created_only: Vec<&str> = t
            .iter()
            .filter(|m| m.create_only)
            .map(|m| m.describe.as_str())
            .collect();
        assert_eq!(created_only, ["ConfigMap/ood-pod-policy"]);
    }

    #[test]
    fn reaper_role_and_print() {
        let t = targets(&[Part::JobPodReaper]).unwrap();
        assert_eq!(t.len(), 1);
        assert_eq!(t[0].describe, "ClusterRole/job-pod-reaper");
        let y = yaml(&[Part::Base, Part::SelfRenew]);
        assert!(y.contains("# --- hooks/ondemand.yaml") && y.contains("ondemand-self-renew"));
        assert!(!y.contains("job-pod-reaper\n  namespace"));
    }

    #[test]
    fn unknown_kinds_and_scope_mistakes_are_refused() {
        let doc = |s: &str| serde_saphyr::from_str::<Value>(s).unwrap();
        assert!(target(doc("kind: Pod\nmetadata: {name: x, namespace: ns1}")).is_err());
        assert!(target(doc("kind: Role\nmetadata: {name: x}")).is_err());
        assert!(
            target(doc(
                "kind: ClusterRole\nmetadata: {name: x, namespace: ns1}"
            ))
            .is_err()
        );
        let vap = target(doc("kind: ValidatingAdmissionPolicy\nmetadata: {name: p}")).unwrap();
        assert_eq!(
            vap.path,
            "/apis/admissionregistration.k8s.io/v1/validatingadmissionpolicies/p"
        );
    }

    #[test]
    fn report_lines() {
        let a = vec![
            Applied {
                object: "Namespace/ondemand".into(),
                change: Change::Created,
            },
            Applied {
                object: "ClusterRole/ood-user".into(),
                change: Change::Unchanged,
            },
        ];
        assert_eq!(
            report(&a, true),
            "would create Namespace/ondemand\nunchanged    ClusterRole/ood-user\n"
        );
        assert_eq!(counts(&a), "1 created, 0 changed, 1 unchanged");
    }
}
