//! The I/O edge of `doctor`: reads files, asks the API server and the IdP,
//! and records every answer (or why there was none) as [`Facts`]. Nothing
//! is changed anywhere: the only writes are server-side dry runs.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use http::Method;
use serde_json::{Value, json};

use super::checks::{bound_roles, needed_access};
use super::dashboard;
use super::facts::*;
use crate::admin::root_kubeconfig::{self, Credential};
use crate::admin::root_token::{self, TIMER};
use crate::cli::DoctorArgs;
use crate::cluster::apply::{Cluster, Connect};
use crate::secret::Secret;
use crate::site::names::{Namespace, Username};
use crate::site::settings::Settings;
use crate::site::settings::envfile::EnvFile;

/// Bound on each request.
const CALL: Duration = Duration::from_secs(5);

/// Gathers everything `args` asks about, at Unix time `now`.
/// `settings` is hook.env as the hook reads it for one cluster (or why it
/// does not load).
pub async fn gather(args: &DoctorArgs, now: u64, settings: Result<Settings, String>) -> Facts {
    let mut hook_env = hook_env(&args.common.hook_env, settings);
    // Root's credentials: --kubeconfig, else hook.env's ROOT_KUBECONFIG and
    // ROOT_CONTEXT, else kubectl's defaults.
    let root_settings = match (&args.kubeconfig, hook_env.settings.as_ref()) {
        (Some(k), _) => crate::site::settings::RootSettings {
            kubeconfig: Some(k.clone()),
            context: None,
        },
        (None, Ok(s)) => s.root.clone(),
        (None, Err(_)) => crate::site::settings::RootSettings::default(),
    };
    let root = root(&root_settings);
    // Root's kubeconfig holds the token: checked like hook.env's files.
    if let Ok(r) = &root {
        hook_env.files.push(FileFact {
            key: "root's kubeconfig",
            path: r.file.clone(),
            meta: file_meta(&r.file),
            secret: true,
            executable: false,
        });
    }
    let settings = hook_env.settings.as_ref().ok();
    let user_ns = args
        .user
        .as_deref()
        .and_then(|u| user_namespace(u, settings).ok());
    let root_account = root.as_ref().ok().and_then(|r| r.account.clone());
    let connect = Connect::root(&root_settings);
    let cluster = Cluster::connect_with(&connect, CALL)
        .await
        .map_err(|e| e.to_string());
    let (cluster_facts, issuer, user, dashboard) = futures::join!(
        async {
            match &cluster {
                Ok(c) => {
                    Ok(cluster_facts(c, settings, user_ns.as_deref(), root_account.as_ref()).await)
                }
                Err(e) => Err(e.clone()),
            }
        },
        issuer(&hook_env),
        async {
            match &args.user {
                Some(u) => Some(
                    user(
                        args,
                        &root_settings,
                        u,
                        settings,
                        cluster.as_ref().ok(),
                        now,
                    )
                    .await,
                ),
                None => None,
            }
        },
        async {
            // With CLUSTERS_D, each cluster's section compares hook.env with
            // that cluster's own file (unless --clusters-d names others).
            match (
                &args.clusters_d,
                settings.and_then(|s| s.clusters.dir.as_ref().zip(s.cluster_id.as_deref())),
            ) {
                (Some(dir), _) => Some(dashboard_facts(dir, None)),
                (None, Some((dir, id))) => Some(dashboard_facts(dir, Some(id))),
                (None, None) => None,
            }
        },
    );
    let pending = settings
        .and_then(|s| s.log.last_run_dir.as_deref())
        .map(|dir| pending_facts(dir, now));
    Facts {
        now,
        hook_env,
        root,
        cluster: cluster_facts,
        issuer,
        user,
        dashboard,
        timer: timer(),
        pending,
    }
}

/// How many logins this node noted as pending, and for how long.
fn pending_facts(dir: &Path, now: u64) -> Result<PendingFacts, String> {
    let notes = crate::pending::Notes::new(dir);
    let users = notes
        .users()
        .map_err(|e| format!("{}: {e}", dir.display()))?;
    let mut facts = PendingFacts {
        users: users.len(),
        stale: 0,
        longest: 0,
    };
    for user in &users {
        let Some(oldest) = notes.load(user).ok().and_then(|n| n.oldest()) else {
            continue;
        };
        let age = now.saturating_sub(oldest);
        facts.longest = facts.longest.max(age);
        if age > PENDING_WARN_SECS {
            facts.stale += 1;
        }
    }
    Ok(facts)
}

fn hook_env(path: &Path, settings: Result<Settings, String>) -> HookEnvFacts {
    let raw_issuer = std::fs::read_to_string(path)
        .ok()
        .and_then(|t| EnvFile::parse(path, &t).ok())
        .and_then(|e| e.get("IDP_ISSUER_URL").map(|(v, _)| v.to_owned()));
    let mut files = Vec::new();
    let mut add = |key, path: &Path, secret, executable| {
        files.push(FileFact {
            key,
            path: path.to_owned(),
            meta: file_meta(path),
            secret,
            executable,
        });
    };
    let s = settings.as_ref().ok();
    add(
        "hook.env",
        path,
        s.is_some_and(|s| s.oidc.client_secret.is_some()),
        false,
    );
    if let Some(s) = s {
        if let Some(p) = crate::site::settings::site::overrides_file(s).filter(|p| p.exists()) {
            add("the cluster's hook.env.d overrides", &p, false, false);
        }
        if let Some(p) = &s.image_pull {
            add("REGISTRY_DOCKER_CONFIG_JSON", &p.source, true, false);
        }
        if let Some(p) = &s.oidc.ca_file {
            add("IDP_CA_FILE", p, false, false);
        }
        if let Some(p) = &s.kubeconfig.ca_file {
            add("K8S_CA_FILE", p, false, false);
        }
        if let Some(p) = &s.kubeconfig.exec_command {
            add("K8S_EXEC_COMMAND", p, false, true);
        }
    }
    HookEnvFacts {
        path: path.to_owned(),
        settings,
        raw_issuer,
        files,
    }
}

fn file_meta(path: &Path) -> Result<FileMeta, String> {
    let link = std::fs::symlink_metadata(path).map_err(|e| e.to_string())?;
    let symlink = link.file_type().is_symlink();
    let m = if symlink {
        std::fs::metadata(path).map_err(|e| format!("a symbolic link that leads nowhere: {e}"))?
    } else {
        link
    };
    Ok(FileMeta {
        uid: m.uid(),
        mode: m.mode(),
        symlink,
        regular: m.file_type().is_file(),
    })
}

fn root(how: &crate::site::settings::RootSettings) -> Result<RootFacts, String> {
    let explicit = how.kubeconfig.as_deref();
    // Refused as the hook refuses it, before anything in it is used.
    crate::cluster::apply::check_root_kubeconfig(explicit).map_err(|e| e.to_string())?;
    let paths = root_kubeconfig::candidate_files(explicit);
    let files = root_kubeconfig::load(&paths, explicit.is_some()).map_err(|e| e.to_string())?;
    let r = root_kubeconfig::resolve(&files, how.context.as_deref()).map_err(|e| e.to_string())?;
    let token = match &r.credential {
        Credential::Token(t) => Some(t.clone()),
        Credential::TokenFile(p) => std::fs::read_to_string(p)
            .ok()
            .map(|t| Secret::new(t.trim())),
        Credential::Other(_) => None,
    };
    let claims =
        token.and_then(|t| crate::credentials::tokens::payload(t.expose(), "root's token").ok());
    let credential = match &r.credential {
        Credential::Token(_) => "a token".to_owned(),
        Credential::TokenFile(p) => format!("a token in {}", p.display()),
        Credential::Other(what) => (*what).to_owned(),
    };
    Ok(RootFacts {
        file: r.file,
        context: r.context,
        user: r.user,
        credential,
        account: claims.as_ref().and_then(root_kubeconfig::service_account),
        expiry: claims
            .as_ref()
            .and_then(|c| c.get("exp"))
            .and_then(Value::as_u64),
    })
}

fn user_namespace(user: &str, settings: Option<&Settings>) -> Result<String, String> {
    let s = settings.ok_or("hook.env does not load")?;
    let u = Username::parse(user).map_err(|e| e.to_string())?;
    Namespace::for_user(&s.namespace_prefix, &u)
        .map(|n| n.as_str().to_owned())
        .map_err(|e| e.to_string())
}

/// One request, bounded; the answer's status and body, or why none.
async fn call(
    c: &Cluster,
    method: Method,
    path: &str,
    body: Option<&Value>,
) -> Result<crate::cluster::apply::Reply, String> {
    match tokio::time::timeout(CALL, c.request(method, path, body)).await {
        Ok(r) => r,
        Err(_) => Err(format!("no answer within {}s", CALL.as_secs())),
    }
}

async fn status(c: &Cluster, path: &str) -> Result<u16, String> {
    call(c, Method::GET, path, None).await.map(|r| r.status)
}

async fn cluster_facts(
    c: &Cluster,
    settings: Option<&Settings>,
    user_ns: Option<&str>,
    account: Option<&(String, String)>,
) -> ClusterFacts {
    let version = call(c, Method::GET, "/version", None)
        .await
        .and_then(|r| match r.status {
            200 => r
                .body
                .get("gitVersion")
                .and_then(Value::as_str)
                .map(str::to_owned)
                .ok_or_else(|| "no gitVersion".into()),
            s => Err(format!("/version answered {s}: {}", r.message())),
        });
    if version.is_err() {
        return ClusterFacts {
            server: c.server().to_owned(),
            version,
            whoami: root_token::who_am_i(c).await,
            access: Vec::new(),
            binds: Vec::new(),
            reaper: Vec::new(),
            self_renew: None,
            flow: Err("the API server did not answer".into()),
        };
    }
    // Bindings are dry-run in a namespace that exists: the user's, root's
    // own, or `default`.
    let probe_ns = match user_ns {
        Some(ns) if status(c, &format!("/api/v1/namespaces/{ns}")).await == Ok(200) => {
            ns.to_owned()
        }
        _ => account.map_or_else(|| "default".to_owned(), |(ns, _)| ns.clone()),
    };
    let access = needed_access(settings, user_ns.unwrap_or(""));
    let self_renew = account.map(|(ns, name)| Access {
        verb: "create",
        group: "",
        resource: "serviceaccounts/token",
        namespace: ns.clone(),
        name: Some(name.clone()),
        allowed: Ok(false),
    });
    let reaper_paths: Vec<(String, String)> = settings
        .and_then(|s| s.job_pod_reaper.as_ref())
        .map(|r| {
            let (ns, sa) = (r.namespace.as_str(), r.service_account.as_str());
            vec![
                (
                    format!("Namespace {ns}"),
                    format!("/api/v1/namespaces/{ns}"),
                ),
                (
                    format!("ServiceAccount {ns}/{sa}"),
                    format!("/api/v1/namespaces/{ns}/serviceaccounts/{sa}"),
                ),
            ]
        })
        .unwrap_or_default();
    let (whoami, access, binds, reaper, self_renew, flow) = futures::join!(
        root_token::who_am_i(c),
        futures::future::join_all(access.into_iter().map(|a| review(c, a))),
        futures::future::join_all(
            bound_roles(settings)
                .into_iter()
                .map(|r| bind(c, r, &probe_ns))
        ),
        futures::future::join_all(reaper_paths.into_iter().map(|(describe, path)| async move {
            ObjectFact {
                describe,
                status: status(c, &path).await,
            }
        })),
        async {
            match self_renew {
                Some(a) => Some(review(c, a).await),
                None => None,
            }
        },
        flow_schema(c),
    );
    ClusterFacts {
        server: c.server().to_owned(),
        version,
        whoami,
        access,
        binds,
        reaper,
        self_renew,
        flow,
    }
}

/// Reads FlowSchema `ondemand`; the answer's header says which FlowSchema
/// classified this very request of root's account.
async fn flow_schema(c: &Cluster) -> Result<FlowFact, String> {
    let path = format!(
        "/apis/flowcontrol.apiserver.k8s.io/v1/flowschemas/{}",
        crate::admin::install::FLOW_SCHEMA
    );
    let r = call(c, Method::GET, &path, None).await?;
    Ok(FlowFact {
        status: r.status,
        uid: r
            .body
            .pointer("/metadata/uid")
            .and_then(Value::as_str)
            .filter(|_| r.status == 200)
            .map(str::to_owned),
        classified_by: r.flow_schema,
    })
}

/// Asks a SelfSubjectAccessReview and records the answer in `a`.
async fn review(c: &Cluster, mut a: Access) -> Access {
    let (resource, sub) = a.resource.split_once('/').unwrap_or((a.resource, ""));
    let body = json!({
        "apiVersion": "authorization.k8s.io/v1",
        "kind": "SelfSubjectAccessReview",
        "spec": {"resourceAttributes": {
            "verb": a.verb, "group": a.group, "resource": resource, "subresource": sub,
            "namespace": a.namespace, "name": a.name.clone().unwrap_or_default()
        }}
    });
    a.allowed = call(
        c,
        Method::POST,
        "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews",
        Some(&body),
    )
    .await
    .and_then(|r| match r.status {
        200 | 201 => Ok(r
            .body
            .pointer("/status/allowed")
            .and_then(Value::as_bool)
            .unwrap_or(false)),
        s => Err(format!("answered {s}: {}", r.message())),
    });
    a
}

/// Reads ClusterRole `role` and dry-runs a RoleBinding to it in `ns`.
async fn bind(c: &Cluster, role: String, ns: &str) -> BindFact {
    let get = status(
        c,
        &format!("/apis/rbac.authorization.k8s.io/v1/clusterroles/{role}"),
    )
    .await;
    let body = json!({
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": {"generateName": "ood-k8s-bootstrap-doctor-", "namespace": ns},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
        "subjects": [{"kind": "User", "apiGroup": "rbac.authorization.k8s.io", "name": "ood-k8s-bootstrap-doctor"}]
    });
    let path = format!(
        "/apis/rbac.authorization.k8s.io/v1/namespaces/{ns}/rolebindings?dryRun=All&fieldManager={}",
        crate::cluster::apply::FIELD_MANAGER
    );
    let may_bind = Access {
        verb: "bind",
        group: "rbac.authorization.k8s.io",
        resource: "clusterroles",
        namespace: String::new(),
        name: Some(role.clone()),
        allowed: Ok(false),
    };
    let (bind, may_bind) = futures::join!(
        call(c, Method::POST, &path, Some(&body)),
        review(c, may_bind)
    );
    BindFact {
        role,
        get,
        bind: bind.map(|r| (r.status, r.message())),
        may_bind: may_bind.allowed,
    }
}

async fn issuer(h: &HookEnvFacts) -> Option<IssuerFacts> {
    let settings = h.settings.as_ref().ok()?;
    let effective = settings.oidc.issuer_url.clone()?;
    let configured = h.raw_issuer.clone().unwrap_or_else(|| effective.clone());
    let exchange_audience = settings.exchange.as_ref().map(|e| e.audience.clone());
    let http = match crate::credentials::idp::client(
        settings.oidc.ca_pem.as_deref().map(|p| ("IDP_CA_FILE", p)),
        CALL,
        CALL,
    ) {
        Ok(c) => c,
        Err(e) => {
            return Some(IssuerFacts {
                configured,
                effective,
                discovery: Err(e),
                issuer_of_endpoint: None,
                exchange_audience,
            });
        }
    };
    let discovery = crate::credentials::idp::discover(&http, &effective).await;
    let mut issuer_of_endpoint = None;
    if discovery.is_err() {
        let mut url = configured.trim_end_matches('/').to_owned();
        for _ in 0..3 {
            let Some((parent, _)) = url.rsplit_once('/') else {
                break;
            };
            if parent.ends_with('/') || !parent.contains("://") {
                break;
            }
            url = parent.to_owned();
            if let Ok(d) = crate::credentials::idp::discover(&http, &url).await
                && d.token_endpoint.as_deref() == Some(configured.as_str())
            {
                issuer_of_endpoint = Some(d);
                break;
            }
        }
    }
    Some(IssuerFacts {
        configured,
        effective,
        discovery,
        issuer_of_endpoint,
        exchange_audience,
    })
}

async fn user(
    args: &DoctorArgs,
    root_settings: &crate::site::settings::RootSettings,
    user: &str,
    settings: Option<&Settings>,
    root: Option<&Cluster>,
    now: u64,
) -> UserFacts {
    let namespace = user_namespace(user, settings);
    let (token_source, token) = user_token(args);
    let claims = token.as_ref().map(|t| {
        t.as_ref().map_err(Clone::clone).and_then(|t| {
            crate::credentials::tokens::payload(t.expose(), "the user's token")
                .map_err(|e| e.to_string())
        })
    });
    // With a token exchange, the API server sees the exchanged token.
    let (exchange, token) = match (settings.and_then(|s| s.exchange.clone()), token) {
        (Some(x), Some(Ok(t))) => match exchanged(x, user, t).await {
            Ok(t) => (Some(Ok(())), Some(Ok(t))),
            Err(e) => (Some(Err(e)), None),
        },
        (_, token) => (None, token),
    };
    let review = match &token {
        Some(Ok(t)) => {
            let how = Connect {
                bearer: Some(t.clone()),
                ..Connect::root(root_settings)
            };
            Some(match Cluster::connect_with(&how, CALL).await {
                Ok(c) => root_token::who_am_i(&c).await,
                Err(e) => Err(e.to_string()),
            })
        }
        _ => None,
    };
    let (objects, owner) = match (settings, &namespace, root) {
        (Some(s), Ok(_), Some(c)) => (
            user_objects(c, s, user, now).await,
            user_owner(c, s, user, now).await,
        ),
        _ => (Vec::new(), None),
    };
    UserFacts {
        user: user.to_owned(),
        namespace,
        token_source,
        claims,
        exchange,
        review,
        objects,
        owner,
        kubeconfig: settings
            .ok_or_else(|| "hook.env does not load".to_owned())
            .and_then(|s| user_kubeconfig(user, s)),
        last_run: match settings.and_then(|s| s.log.last_run_dir.as_deref()) {
            Some(dir) if crate::site::names::Username::parse(user).is_ok() => {
                crate::record::read_last(dir, user)
            }
            _ => Ok(None),
        },
        pending: match (
            settings.and_then(|s| s.log.last_run_dir.as_deref()),
            crate::site::names::Username::parse(user),
        ) {
            (Some(dir), Ok(login)) => crate::pending::Notes::new(dir)
                .load(&login)
                .map_err(|e| e.to_string()),
            _ => Ok(Default::default()),
        },
    }
}

/// The user's token exchanged as the hook would (`exchange.rs`, blocking,
/// so on the blocking pool).
async fn exchanged(
    x: crate::site::settings::ExchangeSettings,
    user: &str,
    token: Secret,
) -> Result<Secret, (String, String)> {
    let user = user.to_owned();
    let login = crate::credentials::kubeconfig::Login {
        access_token: Some(token),
        refresh_token: None,
        id_token: None,
    };
    let deadline = std::time::Instant::now() + CALL * 2;
    let got = tokio::task::spawn_blocking(move || {
        crate::credentials::exchange::exchange(&x, &user, &login, deadline)
    })
    .await
    .map_err(|e| (e.to_string(), String::new()))?
    .map_err(exchange_failure)?;
    got.access_token.ok_or_else(|| {
        (
            "the token exchange answered without an access token".to_owned(),
            String::new(),
        )
    })
}

/// An exchange failure as doctor tells it: what happened, and the fix.
fn exchange_failure(e: crate::credentials::exchange::ExchangeError) -> (String, String) {
    use crate::credentials::exchange::ExchangeError as E;
    match e {
        E::Refused {
            issuer,
            audience,
            refusal,
            hint,
            ..
        } => (
            format!(
                "the IdP {issuer} refused to exchange the token for audience {audience}: {refusal}"
            ),
            hint.to_owned(),
        ),
        E::Unreachable { issuer, detail, .. } => (
            format!("cannot reach the IdP {issuer} for the token exchange: {detail}"),
            "check IDP_ISSUER_URL and IDP_CA_FILE in hook.env".to_owned(),
        ),
        E::BadAnswer { issuer, detail, .. } => (
            format!("the IdP {issuer} gave an unusable token exchange answer: {detail}"),
            String::new(),
        ),
    }
}

fn user_token(args: &DoctorArgs) -> (Option<String>, Option<Result<Secret, String>>) {
    if let Some(f) = &args.token_file {
        let t = std::fs::read_to_string(f)
            .map(|t| Secret::new(t.trim()))
            .map_err(|e| format!("cannot read {}: {e}", f.display()));
        return (Some(f.display().to_string()), Some(t));
    }
    match std::env::var("OOD_OIDC_ACCESS_TOKEN")
        .ok()
        .filter(|t| !t.is_empty())
    {
        Some(t) => (
            Some("OOD_OIDC_ACCESS_TOKEN".into()),
            Some(Ok(Secret::new(t))),
        ),
        None => (None, None),
    }
}

/// Whose the user's namespace is, asked as the hook asks (`owner.rs`).
async fn user_owner(
    c: &Cluster,
    s: &Settings,
    user: &str,
    now: u64,
) -> Option<Result<String, String>> {
    let u = Username::parse(user).ok()?;
    let ns = Namespace::for_user(&s.namespace_prefix, &u).ok()?;
    let ids = crate::site::account::Account::lookup(&u)
        .and_then(|a| a.ids(&u, s.publish.groups))
        .ok();
    let state = crate::cluster::desired::desired_state(s, &u, &ns, ids.as_ref(), now).ok()?;
    let deadline = std::time::Instant::now() + CALL;
    Some(
        c.check_owner(user, &state, deadline)
            .await
            .map(|o| o.describe(ns.as_str(), user))
            .map_err(|e| e.to_string()),
    )
}

async fn user_objects(c: &Cluster, s: &Settings, user: &str, now: u64) -> Vec<ObjectFact> {
    let Ok(u) = Username::parse(user) else {
        return Vec::new();
    };
    let Ok(ns) = Namespace::for_user(&s.namespace_prefix, &u) else {
        return Vec::new();
    };
    let ids = crate::site::account::Account::lookup(&u)
        .and_then(|a| a.ids(&u, s.publish.groups))
        .ok();
    let Ok(state) = crate::cluster::desired::desired_state(s, &u, &ns, ids.as_ref(), now) else {
        return Vec::new();
    };
    let objects: Vec<(String, String)> = state
        .objects
        .iter()
        .map(|o| {
            let name = o.meta().name.as_deref().unwrap_or_default();
            let in_ns = o.meta().namespace.as_deref().unwrap_or(name);
            (o.describe(), o.kind().object_path(in_ns, name))
        })
        .collect();
    futures::future::join_all(objects.into_iter().map(|(describe, path)| async move {
        ObjectFact {
            describe,
            status: status(c, &path).await,
        }
    }))
    .await
}

/// The user's kubeconfig as it is, read without following a symlink and
/// only when the user owns it (root reads nothing a user could redirect).
fn user_kubeconfig(user: &str, s: &Settings) -> Result<UserKubeconfig, String> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let u = Username::parse(user).map_err(|e| e.to_string())?;
    let account = crate::site::account::Account::lookup(&u).map_err(|e| e.to_string())?;
    let path = account.home.join(".kube/config");
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_NONBLOCK)
        .open(&path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let meta = file.metadata().map_err(|e| e.to_string())?;
    if meta.uid() != account.uid.as_raw() || !meta.file_type().is_file() {
        return Err(format!(
            "{} is not a regular file owned by {user}",
            path.display()
        ));
    }
    let mut text = String::new();
    file.take(16 << 20)
        .read_to_string(&mut text)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let tree = crate::credentials::kubeconfig::merge::parse(&text)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    let find = |list: &str, name: &str, body: &str| -> Option<Value> {
        tree.get(list)?
            .as_array()?
            .iter()
            .find(|e| e.get("name").and_then(Value::as_str) == Some(name))?
            .get(body)
            .cloned()
    };
    let entry = find("users", &format!("{}{user}", s.username_prefix), "user").map(|b| {
        [
            "auth-provider",
            "exec",
            "token",
            "tokenFile",
            "client-certificate",
        ]
        .iter()
        .find(|k| b.get(**k).is_some_and(|v| !v.is_null()))
        .map_or("no credentials", |k| k)
        .to_owned()
    });
    let context = find("contexts", &s.kubeconfig.context_name, "context").map(|c| {
        let f = |k: &str| {
            c.get(k)
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned()
        };
        (f("cluster"), f("user"), f("namespace"))
    });
    Ok(UserKubeconfig {
        path,
        entry,
        context,
    })
}

/// The Kubernetes cluster files of `dir` (only the one of cluster id `only`
/// when given).
fn dashboard_facts(dir: &Path, only: Option<&str>) -> DashboardFacts {
    let mut clusters = Vec::new();
    let mut unreadable = Vec::new();
    let mut paths: Vec<PathBuf> = match std::fs::read_dir(dir) {
        Ok(rd) => rd
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "yml" || x == "yaml"))
            .filter(|p| only.is_none_or(|id| p.file_stem().is_some_and(|s| s == id)))
            .collect(),
        Err(e) => {
            unreadable.push((dir.to_owned(), e.to_string()));
            Vec::new()
        }
    };
    paths.sort();
    let mut erb = Vec::new();
    for p in paths {
        let text = std::fs::read_to_string(&p).map_err(|e| e.to_string());
        if text.as_ref().is_ok_and(|t| t.contains("<%")) {
            erb.push(p.clone());
        }
        match text.and_then(|t| dashboard::parse(&p, &t)) {
            Ok(Some(c)) => clusters.push(c),
            Ok(None) => {}
            Err(e) => unreadable.push((p, e)),
        }
    }
    DashboardFacts {
        dir: dir.to_owned(),
        clusters,
        unreadable,
        erb,
    }
}

/// The renewal timer's state, from systemd when it runs this machine.
fn timer() -> Timer {
    if !Path::new("/run/systemd/system").is_dir() {
        return Timer::NoSystemd;
    }
    let out = std::process::Command::new("systemctl")
        .args([
            "show",
            TIMER,
            "--property=LoadState,ActiveState,NextElapseUSecRealtime",
        ])
        .stdin(std::process::Stdio::null())
        .output();
    let Some(out) = out.ok().filter(|o| o.status.success()) else {
        return Timer::NoSystemd;
    };
    let text = String::from_utf8_lossy(&out.stdout);
    let get = |k: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(k)?.strip_prefix('='))
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .map(str::to_owned)
    };
    if get("LoadState").as_deref() != Some("loaded") {
        return Timer::NotInstalled;
    }
    Timer::State {
        active: get("ActiveState").as_deref() == Some("active"),
        next: get("NextElapseUSecRealtime"),
    }
}
