//! Applying a [`DesiredState`] to the cluster: server-side apply under one
//! field manager, the namespace first and the rest concurrently, retried on
//! transient failures inside the run's deadline; with pruning on, the
//! objects of ours no longer wanted are then deleted (which ones is decided
//! by the pure `prune` module).
//!
//! This is the only module that talks to the API server. In a returning
//! user's run it reads the namespace (whose it is, before anything is
//! written) and sends one request per object (the ServiceAccount's pull
//! secret list is read, and written only when our entry is missing, so pull
//! secrets others added are kept) plus, when pruning, one list per prunable
//! kind and one delete per object pruned, and turns every failure into an
//! [`ApplyError`] that says what failed, for which user, and what to do.

use std::time::{Duration, Instant};

use http::{Method, Request, StatusCode, header};
use http_body_util::BodyExt;
use kube::client::Body;
use serde_json::Value;
use thiserror::Error;

pub use crate::cluster::desired::FIELD_MANAGER;
use crate::cluster::desired::{
    DEFAULT_SERVICE_ACCOUNT, DesiredState, LAST_HOOK_ANNOTATION, Object,
};
use crate::cluster::kinds::Kind;
use crate::cluster::owner;
use crate::cluster::prune::{self, Found};
use crate::exit::Exit;
use crate::oneline::error_chain;

/// What a run did (or, in a dry run, would do) to one object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    Created,
    Changed,
    Unchanged,
    /// Pruned: ours, no longer wanted.
    Deleted,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    /// `Kind/name`.
    pub object: String,
    pub change: Change,
}

/// One object of `install`'s manifests: where it lives in the API and the
/// body to apply. (The hook's own objects are typed [`Object`]s.)
#[derive(Debug, Clone, PartialEq)]
pub struct Manifest {
    /// API path of the object itself, without query.
    pub path: String,
    /// `Kind/name`, for reports and errors.
    pub describe: String,
    pub namespace: Option<String>,
    pub body: Value,
    /// Created if missing, never changed after: the site's own settings
    /// (a ConfigMap an admin edits), which a later install must keep.
    pub create_only: bool,
}

#[derive(Debug, Error)]
pub enum ApplyError {
    #[error(
        "cannot load root's kubeconfig ({detail}); set ROOT_KUBECONFIG (and ROOT_CONTEXT) in hook.env or KUBECONFIG, or create ~/.kube/config for the ondemand ServiceAccount"
    )]
    Kubeconfig { detail: String },
    /// Root's kubeconfig is not a file root controls: whoever can write it
    /// picks the command its `exec:` user runs, as root.
    #[error(
        "{what}: {source}; root's kubeconfig decides what runs as root (an exec: user's command), \
         so the hook trusts only a kubeconfig root controls"
    )]
    Untrusted {
        /// `ROOT_KUBECONFIG`, `KUBECONFIG`, or root's `~/.kube/config`.
        what: String,
        source: crate::site::trusted::TrustError,
    },
    #[error("user {user}: the Kubernetes API server {server} is unreachable: {detail}")]
    Unreachable {
        user: String,
        server: String,
        detail: String,
    },
    #[error(
        "user {user}: the API server {server} rejected our credentials (401 Unauthorized); \
         the ondemand ServiceAccount token in root's kubeconfig has probably expired — issue a new one with `kubectl create token ondemand -n ondemand`"
    )]
    Unauthorized { user: String, server: String },
    #[error("user {user}: not allowed to write {object}: {message} — {hint}")]
    Forbidden {
        user: String,
        object: String,
        message: String,
        hint: &'static str,
    },
    #[error(
        "user {user}: namespace {namespace} is being deleted (probably by the namespace reaper); log in again once it is gone"
    )]
    Terminating { user: String, namespace: String },
    #[error("user {user}: {object}: the API server {server} answered, but {detail}")]
    TooLarge {
        user: String,
        server: String,
        object: String,
        detail: String,
    },
    /// The namespace belongs to another login (`owner.rs`).
    #[error("user {user}: {collision}")]
    Collision {
        user: String,
        collision: Box<crate::cluster::owner::Collision>,
    },
    #[error("user {user}: the API server refused {object}: {message}{hint}")]
    Invalid {
        user: String,
        object: String,
        message: String,
        hint: &'static str,
    },
    #[error("user {user}: {object}: the API server answered {status}: {message}")]
    Server {
        user: String,
        object: String,
        status: u16,
        message: String,
    },
    #[error(
        "user {user}: gave up after {secs:.1}s (HOOK_TIMEOUT_SECONDS) waiting for the API server {server}: {last}"
    )]
    Deadline {
        user: String,
        server: String,
        secs: f64,
        last: String,
    },
    #[error(
        "user {user}: {last}; the API server {server} asked to retry in {wait}s (Retry-After), \
         but only {left:.1}s of HOOK_TIMEOUT_SECONDS remain — not waiting; try again later"
    )]
    RetryTooLate {
        user: String,
        server: String,
        last: String,
        wait: u64,
        left: f64,
    },
}

impl ApplyError {
    pub fn exit(&self) -> Exit {
        match self {
            Self::Kubeconfig { .. } | Self::Untrusted { .. } => Exit::Config,
            Self::Unreachable { .. } | Self::TooLarge { .. } => Exit::Unavailable,
            Self::Unauthorized { .. } | Self::Forbidden { .. } | Self::Collision { .. } => {
                Exit::NoPerm
            }
            Self::Terminating { .. }
            | Self::Server { .. }
            | Self::Deadline { .. }
            | Self::RetryTooLate { .. } => Exit::TempFail,
            Self::Invalid { .. } => Exit::DataErr,
        }
    }

    /// Whether the failure passes by itself (the API server unreachable,
    /// too slow, throttled, answering 5xx; the namespace still being
    /// deleted), so that trying again later can succeed with no one's fix:
    /// what `heal` retries. A refusal (a collision, a denial, bad
    /// configuration, an invalid object) does not.
    pub fn passes(&self) -> bool {
        match self {
            Self::Unreachable { .. }
            | Self::Deadline { .. }
            | Self::RetryTooLate { .. }
            | Self::Terminating { .. } => true,
            Self::Server { status, .. } => *status == 429 || (500..600).contains(status),
            Self::Kubeconfig { .. }
            | Self::Untrusted { .. }
            | Self::Unauthorized { .. }
            | Self::Forbidden { .. }
            | Self::TooLarge { .. }
            | Self::Collision { .. }
            | Self::Invalid { .. } => false,
        }
    }

    /// For a failure to reach the API server at all, what went wrong,
    /// without the user's name (for the fast-fail memory, `outage.rs`).
    pub fn outage_detail(&self) -> Option<String> {
        match self {
            Self::Unreachable { detail, .. } => Some(format!("is unreachable: {detail}")),
            Self::Deadline { secs, last, .. } => {
                Some(format!("did not answer within {secs:.1}s: {last}"))
            }
            _ => None,
        }
    }
}

/// Whether to change the cluster or only ask what would change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Apply,
    DryRun,
}

/// The largest answer read from the API server. The largest object etcd
/// stores is 1.5 MiB and lists are read in pages of [`LIST_PAGE`], so this
/// is far above any real answer; the body is read incrementally and
/// dropped once past it, so memory stays bounded whatever the other end
/// sends.
pub const MAX_ANSWER: usize = 4 << 20;

/// Items per page when listing namespaces (`reconcile --all`).
const LIST_PAGE: usize = 500;

/// Bound on one [`Cluster::request`] (the admin commands' single requests).
const REQUEST_LIMIT: Duration = Duration::from_secs(30);

/// Which credentials [`Cluster::connect_with`] uses.
#[derive(Debug, Default, Clone)]
pub struct Connect {
    /// This kubeconfig file instead of `KUBECONFIG` / `~/.kube/config`.
    pub kubeconfig: Option<std::path::PathBuf>,
    /// This bearer token instead of the kubeconfig's credentials.
    pub bearer: Option<crate::secret::Secret>,
    /// This context instead of the kubeconfig's current one.
    pub context: Option<String>,
    /// Root's own kubeconfig (hook.env's, or kubectl's defaults): refused
    /// unless root controls it, before anything in it is used
    /// ([`check_root_kubeconfig`]). Off for a file the admin names on the
    /// command line (`install --kubeconfig`).
    pub trust_check: bool,
}

impl Connect {
    /// Root's own credentials, as hook.env names them (`ROOT_KUBECONFIG`,
    /// `ROOT_CONTEXT`; kubectl's defaults where unset).
    pub fn root(root: &crate::site::settings::RootSettings) -> Self {
        Self {
            kubeconfig: root.kubeconfig.clone(),
            bearer: None,
            context: root.context.clone(),
            trust_check: true,
        }
    }
}

/// The files kubectl reads without `--kubeconfig`: every path in
/// `KUBECONFIG`, else `~/.kube/config` (home from `HOME`, then passwd).
pub fn default_kubeconfig_files() -> Vec<std::path::PathBuf> {
    use std::path::PathBuf;
    if let Some(list) = std::env::var_os("KUBECONFIG").filter(|v| !v.is_empty()) {
        return std::env::split_paths(&list)
            .filter(|p| !p.as_os_str().is_empty())
            .collect();
    }
    let home = std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .map(PathBuf::from)
        .or_else(|| {
            nix::unistd::User::from_uid(nix::unistd::geteuid())
                .ok()
                .flatten()
                .map(|u| u.dir)
        })
        .unwrap_or_else(|| PathBuf::from("/root"));
    vec![home.join(".kube/config")]
}

/// Refuses root's kubeconfig unless root controls it (the StrictModes rule
/// of `crate::site::trusted`, as for every file hook.env names): the file
/// `kubeconfig` (hook.env's `ROOT_KUBECONFIG`) or, unset, each file of
/// `KUBECONFIG` or root's `~/.kube/config` that exists (a missing one is
/// kubectl's own error, or in a pod the ServiceAccount's credentials).
/// Nothing in the files is used: no `exec:` command runs.
pub fn check_root_kubeconfig(kubeconfig: Option<&std::path::Path>) -> Result<(), ApplyError> {
    let (what, files) = match kubeconfig {
        Some(path) => ("ROOT_KUBECONFIG", vec![path.to_owned()]),
        None if std::env::var_os("KUBECONFIG").is_some_and(|v| !v.is_empty()) => (
            "KUBECONFIG (root's kubeconfig; ROOT_KUBECONFIG is not set)",
            default_kubeconfig_files(),
        ),
        None => (
            "root's default kubeconfig (ROOT_KUBECONFIG and KUBECONFIG are not set)",
            default_kubeconfig_files(),
        ),
    };
    for file in files {
        match crate::site::trusted::read(&file) {
            // A file that is missing or cannot be read is kubeconfig
            // loading's own error (or, in a pod, none).
            Ok(_) | Err(crate::site::trusted::TrustError::Io { .. }) => {}
            Err(source) => {
                return Err(ApplyError::Untrusted {
                    what: what.to_owned(),
                    source,
                });
            }
        }
    }
    Ok(())
}

/// A status and JSON body (Null when the body is not JSON).
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub body: Value,
    /// The UID of the FlowSchema that classified the request
    /// (`X-Kubernetes-PF-FlowSchema-UID`; none with API Priority and
    /// Fairness off).
    pub flow_schema: Option<String>,
}

impl Reply {
    /// The API server's `message`, on one line.
    pub fn message(&self) -> String {
        one_line(
            self.body
                .get("message")
                .and_then(Value::as_str)
                .unwrap_or("(no message)"),
        )
    }
}

/// A connection to the API server, made from root's kubeconfig.
#[derive(Clone)]
pub struct Cluster {
    client: kube::Client,
    server: String,
}

impl Cluster {
    /// Loads root's kubeconfig (`ROOT_KUBECONFIG` and `ROOT_CONTEXT`, else
    /// `KUBECONFIG` or `~/.kube/config` and its current context) without
    /// any discovery request. The client speaks HTTP/2 when the API server
    /// offers it (it does), so the concurrent writes share one TLS
    /// connection.
    pub async fn connect(
        root: &crate::site::settings::RootSettings,
        timeout: Duration,
    ) -> Result<Self, ApplyError> {
        Self::connect_with(&Connect::root(root), timeout).await
    }

    /// Like [`Cluster::connect`], with another kubeconfig file and/or a
    /// bearer token in place of the kubeconfig's credentials (`doctor`
    /// asks the API server about a user's token this way).
    pub async fn connect_with(how: &Connect, timeout: Duration) -> Result<Self, ApplyError> {
        use kube::client::ConfigExt;

        if how.trust_check {
            check_root_kubeconfig(how.kubeconfig.as_deref())?;
        }
        let kubeconfig_error = |detail: String| ApplyError::Kubeconfig { detail };
        let options = kube::config::KubeConfigOptions {
            context: how.context.clone(),
            ..Default::default()
        };
        let mut config = match &how.kubeconfig {
            None => match kube::Config::from_kubeconfig(&options).await {
                Ok(config) => config,
                // No kubeconfig, in a pod (reap's CronJob): the pod's own
                // ServiceAccount.
                Err(e) if std::env::var_os("KUBERNETES_SERVICE_HOST").is_some() => {
                    kube::Config::incluster().map_err(|pod| {
                        kubeconfig_error(format!("{e}; and as a pod's ServiceAccount: {pod}"))
                    })?
                }
                Err(e) => return Err(kubeconfig_error(e.to_string())),
            },
            Some(path) => {
                let file = kube::config::Kubeconfig::read_from(path)
                    .map_err(|e| kubeconfig_error(format!("{}: {e}", path.display())))?;
                kube::Config::from_custom_kubeconfig(file, &options)
                    .await
                    .map_err(|e| kubeconfig_error(format!("{}: {e}", path.display())))?
            }
        };
        if let Some(token) = &how.bearer {
            // Neither the kubeconfig's token nor its client certificate.
            config.auth_info = kube::config::AuthInfo::default();
            let mut value = http::HeaderValue::from_str(&format!("Bearer {}", token.expose()))
                .map_err(|_| {
                    kubeconfig_error("the token is not a valid HTTP header value".into())
                })?;
            value.set_sensitive(true);
            config.headers.push((header::AUTHORIZATION, value));
        }
        let server = config
            .cluster_url
            .to_string()
            .trim_end_matches('/')
            .to_owned();
        let bad = |e: kube::Error| ApplyError::Kubeconfig {
            detail: e.to_string(),
        };

        let mut http = hyper_util::client::legacy::connect::HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(config.rustls_client_config().map_err(bad)?)
            .https_or_http()
            .enable_http1()
            .enable_http2()
            .wrap_connector(http);
        let connector = TimedConnector {
            inner: https,
            limit: connect_limit(timeout),
        };
        let hyper =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .timer(hyper_util::rt::TokioTimer::new())
                .pool_timer(hyper_util::rt::TokioTimer::new())
                .build(connector);
        // Retries are ours (inside the run's deadline), not the client's.
        let service = tower::ServiceBuilder::new()
            .layer(config.base_uri_layer())
            .option_layer(config.auth_layer().map_err(bad)?)
            .layer(config.extra_headers_layer().map_err(bad)?)
            .map_err(tower::BoxError::from)
            .service(hyper);
        let client = kube::Client::new(service, config.default_namespace.clone());
        Ok(Self { client, server })
    }

    /// The API server's URL, from root's kubeconfig.
    pub fn server(&self) -> &str {
        &self.server
    }

    /// Sends one request and reads its whole answer before `deadline`.
    async fn exchange(&self, request: Request<Body>, deadline: Instant) -> Result<Answer, NoReply> {
        let deadline = tokio::time::Instant::from_std(deadline);
        let response = match tokio::time::timeout_at(deadline, self.client.send(request)).await {
            Ok(Ok(response)) => response,
            Ok(Err(e)) => return Err(NoReply::Unanswered(error_chain(&e))),
            Err(_) => return Err(NoReply::Unanswered("no answer before the deadline".into())),
        };
        let (status, version) = (response.status(), response.version());
        let retry_after = retry_after(response.headers());
        let flow_schema = response
            .headers()
            .get(FLOW_SCHEMA_HEADER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let limited = http_body_util::Limited::new(response.into_body(), MAX_ANSWER);
        let bytes = match tokio::time::timeout_at(deadline, limited.collect()).await {
            Ok(Ok(body)) => body.to_bytes(),
            Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => {
                return Err(NoReply::TooLarge(format!(
                    "the {status} answer is larger than {} MiB, far more than any real one; \
                     stopped reading it (is something between us and the API server misbehaving?)",
                    MAX_ANSWER >> 20
                )));
            }
            Ok(Err(e)) => {
                return Err(NoReply::Cut(format!(
                    "the {status} response was cut off: {}",
                    error_chain(&*e)
                )));
            }
            Err(_) => {
                return Err(NoReply::Cut(format!(
                    "the {status} response was not complete before the deadline"
                )));
            }
        };
        Ok(Answer {
            status,
            version,
            retry_after,
            flow_schema,
            body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        })
    }

    /// One request with a JSON body (or none), answered with whatever
    /// status came back: the caller interprets 401/403/404. Only a failure
    /// to talk to the server is an error (its one-line cause).
    pub async fn request(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Reply, String> {
        let mut builder = Request::builder()
            .method(method)
            .uri(path)
            .header(header::ACCEPT, "application/json");
        let body = match body {
            Some(v) => {
                builder = builder.header(header::CONTENT_TYPE, "application/json");
                Body::from(serde_json::to_vec(v).unwrap_or_default())
            }
            None => Body::empty(),
        };
        let request = builder.body(body).map_err(|e| e.to_string())?;
        let deadline = Instant::now() + REQUEST_LIMIT;
        let answer = self
            .exchange(request, deadline)
            .await
            .map_err(NoReply::into_detail)?;
        Ok(Reply {
            status: answer.status.as_u16(),
            body: answer.body,
            flow_schema: answer.flow_schema,
        })
    }

    /// Server-side-applies `manifests` one after another, in order (a
    /// namespace before what lives in it), reporting for each whether it
    /// was created, changed or left unchanged; bookkeeping alone (taking
    /// over fields another manager applied) is no change. `who` names the
    /// run in errors. A dry run reports the same without changing anything.
    pub async fn apply_manifests(
        &self,
        who: &str,
        manifests: &[Manifest],
        mode: Mode,
        deadline: Instant,
    ) -> Result<Vec<Applied>, ApplyError> {
        let ctx = Ctx {
            cluster: self,
            user: who,
            deadline,
            namespace: "",
        };
        let dry_run = mode == Mode::DryRun;
        // Namespaces a dry run would create: nothing inside them can be
        // dry-run, it would all be created.
        let mut new_namespaces: Vec<&str> = Vec::new();
        let mut report = Vec::new();
        for m in manifests {
            let target = Target {
                path: m.path.clone(),
                what: m.describe.clone(),
                namespace: m.namespace.clone().unwrap_or_default(),
            };
            let in_new = m
                .namespace
                .as_deref()
                .is_some_and(|ns| new_namespaces.contains(&ns));
            let before = if in_new {
                None
            } else {
                ctx.read_target(&target).await?
            };
            let change = match &before {
                None if in_new => Change::Created,
                Some(_) if m.create_only => Change::Unchanged,
                _ => {
                    let after = ctx
                        .write(&target, Write::Apply(m.body.clone()), dry_run)
                        .await?;
                    match &before {
                        None => Change::Created,
                        Some(b) if comparable(b) == comparable(&after.body) => Change::Unchanged,
                        Some(_) => Change::Changed,
                    }
                }
            };
            if let Some(name) = m.path.strip_prefix("/api/v1/namespaces/")
                && dry_run
                && change == Change::Created
                && !name.contains('/')
            {
                new_namespaces.push(name);
            }
            report.push(Applied {
                object: m.describe.clone(),
                change,
            });
        }
        Ok(report)
    }

    /// Namespaces matching a label selector (for `reconcile`); needs `list`
    /// on namespaces, which the `ondemand` ClusterRole does not grant. Read
    /// in pages of [`LIST_PAGE`], so that no answer approaches
    /// [`MAX_ANSWER`] however many users a site has.
    pub async fn list_namespaces(
        &self,
        selector: &str,
        deadline: Instant,
    ) -> Result<Vec<Value>, ApplyError> {
        let selector = query_encode(selector);
        let mut items = Vec::new();
        let mut next = String::new();
        loop {
            let cont = if next.is_empty() {
                String::new()
            } else {
                format!("&continue={}", query_encode(&next))
            };
            let page = self
                .namespace_page(
                    &format!("/api/v1/namespaces?labelSelector={selector}&limit={LIST_PAGE}{cont}"),
                    deadline,
                )
                .await?;
            items.extend(
                page.get("items")
                    .and_then(Value::as_array)
                    .cloned()
                    .unwrap_or_default(),
            );
            next = page
                .pointer("/metadata/continue")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned();
            if next.is_empty() {
                return Ok(items);
            }
        }
    }

    /// One page of [`Cluster::list_namespaces`].
    async fn namespace_page(&self, uri: &str, deadline: Instant) -> Result<Value, ApplyError> {
        let unreachable = |detail: String| ApplyError::Unreachable {
            user: "(all)".into(),
            server: self.server.clone(),
            detail,
        };
        let request = Request::builder()
            .uri(uri)
            .header(header::ACCEPT, "application/json")
            .body(Body::empty())
            .map_err(|e| unreachable(e.to_string()))?;
        let Answer { status, body, .. } = match self.exchange(request, deadline).await {
            Ok(answer) => answer,
            Err(NoReply::TooLarge(detail)) => {
                return Err(ApplyError::TooLarge {
                    user: "(all)".into(),
                    server: self.server.clone(),
                    object: "namespaces".into(),
                    detail,
                });
            }
            Err(e) => return Err(unreachable(e.into_detail())),
        };
        let message = one_line(
            body.get("message")
                .and_then(Value::as_str)
                .unwrap_or("(no message)"),
        );
        match status.as_u16() {
            200 => Ok(body),
            401 => Err(ApplyError::Unauthorized {
                user: "(all)".into(),
                server: self.server.clone(),
            }),
            403 => Err(ApplyError::Forbidden {
                user: "(all)".into(),
                object: "namespaces".into(),
                message,
                hint: "use an account that may list namespaces",
            }),
            code => Err(ApplyError::Server {
                user: "(all)".into(),
                object: "namespaces".into(),
                status: code,
                message,
            }),
        }
    }

    /// Applies `state` for `user`: checks whose the namespace is
    /// ([`Cluster::check_owner`]), then [`Cluster::apply_checked`].
    pub async fn apply(
        &self,
        user: &str,
        state: &DesiredState,
        mode: Mode,
        deadline: Instant,
    ) -> Result<Vec<Applied>, ApplyError> {
        let owner = self.check_owner(user, state, deadline).await?;
        self.apply_checked(user, state, owner, mode, deadline).await
    }

    /// Whose the namespace is, before anything is written: it is created
    /// with its owner record, or it is `state`'s login's, or it has no
    /// record and nothing in it names another login (`owner.rs`). A
    /// namespace of another login is an error ([`ApplyError::Collision`]).
    /// One read, plus a list of its RoleBindings for a namespace without a
    /// record.
    pub async fn check_owner(
        &self,
        user: &str,
        state: &DesiredState,
        deadline: Instant,
    ) -> Result<Owner, ApplyError> {
        let ctx = Ctx {
            cluster: self,
            user,
            deadline,
            namespace: state.namespace.as_str(),
        };
        ctx.check_owner(state).await
    }

    /// Applies `state` for `user` once [`Cluster::check_owner`] allowed it:
    /// the Namespace first (everything else lives in it), then the rest
    /// concurrently — and, when `state.prune` is set, in the same round the
    /// lists of our objects in the namespace, then the deletion of those no
    /// longer wanted. `deadline` bounds retries.
    pub async fn apply_checked(
        &self,
        user: &str,
        state: &DesiredState,
        owner: Owner,
        mode: Mode,
        deadline: Instant,
    ) -> Result<Vec<Applied>, ApplyError> {
        let ctx = Ctx {
            cluster: self,
            user,
            deadline,
            namespace: state.namespace.as_str(),
        };
        let Some((ns_obj, rest)) = state.objects.split_first() else {
            return Ok(Vec::new());
        };
        if mode == Mode::DryRun {
            return ctx.dry_run(state, ns_obj, rest).await;
        }

        let (ns, owner) = ctx.write_namespace(state, ns_obj, owner).await?;
        if ns
            .body
            .pointer("/metadata/deletionTimestamp")
            .is_some_and(|v| !v.is_null())
        {
            return Err(ApplyError::Terminating {
                user: user.into(),
                namespace: state.namespace.to_string(),
            });
        }
        let fresh = ns.status == StatusCode::CREATED;
        let before = owner.before.as_ref();
        let ns_change = match before {
            None => Change::Created,
            Some(b) if comparable(b) == comparable(&ns.body) => Change::Unchanged,
            Some(_) => Change::Changed,
        };
        // A write that changes nothing keeps the object's resourceVersion;
        // a change gets a newer one than any before it (etcd revisions only
        // grow). So the namespace's new version, written just before the
        // rest, is the line between the two — unless the namespace was not
        // written at all (a second run within the same second: its
        // annotation has one-second resolution), when the line is the
        // cluster's current revision, read before the rest is written.
        let watermark = match before.and_then(resource_version) {
            Some(b) if resource_version(&ns.body) == Some(b) => ctx.revision().await?,
            _ => resource_version(&ns.body),
        };
        let mut report = vec![Applied {
            object: ns_obj.describe(),
            change: ns_change,
        }];

        // One concurrent round (with the prune lists; a namespace created
        // just now holds nothing to prune), then the RoleBindings to Roles
        // made in that round.
        let (first, then): (Vec<&Object>, Vec<&Object>) =
            rest.iter().partition(|o| !o.binds_a_role());
        let (mut results, found) = futures::join!(
            futures::future::join_all(first.iter().map(|o| ctx.write_object(o))),
            ctx.list_ours(state.prune && !fresh),
        );
        if !then.is_empty() {
            results
                .extend(futures::future::join_all(then.iter().map(|o| ctx.write_object(o))).await);
        }
        for (obj, result) in first.iter().chain(&then).zip(results) {
            let resp = result?;
            let change = if resp.status == StatusCode::CREATED {
                Change::Created
            } else if resp.status == StatusCode::CONFLICT {
                Change::Unchanged // there already: left alone
            } else {
                match (resource_version(&resp.body), watermark) {
                    (Some(rv), Some(w)) if rv <= w => Change::Unchanged,
                    _ => Change::Changed,
                }
            };
            report.push(Applied {
                object: obj.describe(),
                change,
            });
        }
        merge(
            &mut report,
            ctx.prune(&state.objects, &found?, false).await?,
        );
        Ok(report)
    }
}

/// `obj`'s line in a dry run that cannot ask the API server: created if
/// it was not there (`before`), else `existing`.
fn planned(obj: &Object, before: &Option<Value>, existing: Change) -> Applied {
    Applied {
        object: obj.describe(),
        change: if before.is_some() {
            existing
        } else {
            Change::Created
        },
    }
}

/// Adds what pruning did to `report`: an object already listed (the
/// `default` ServiceAccount whose pruned pull secret reference was dropped)
/// takes the later change instead of being listed twice.
fn merge(report: &mut Vec<Applied>, pruned: Vec<Applied>) {
    for p in pruned {
        match report.iter_mut().find(|a| a.object == p.object) {
            Some(a) => a.change = p.change,
            None => report.push(p),
        }
    }
}

/// A namespace [`Cluster::check_owner`] found this login may have.
#[derive(Debug, Clone, PartialEq)]
pub struct Owner {
    decision: owner::Decision,
    /// The namespace as it was read (`None`: it did not exist).
    before: Option<Value>,
}

impl Owner {
    /// What to tell the admin that does not stop the run: a recorded uid
    /// that passwd no longer gives the login.
    pub fn warning(&self, namespace: &str, login: &str) -> Option<String> {
        let (owner::Decision::Owned(e) | owner::Decision::Claim(e)) = &self.decision else {
            return None;
        };
        e.uid_changed.as_ref().map(|(old, new)| {
            format!(
                "namespace {namespace} was recorded for login {login} with uid {old}; passwd now gives uid {new}, \
                 which is recorded instead (the login is the same Kubernetes user)"
            )
        })
    }

    /// For `doctor --user`: whose the namespace is, in a sentence.
    pub fn describe(&self, namespace: &str, login: &str) -> String {
        match &self.decision {
            owner::Decision::Create => format!(
                "namespace {namespace} does not exist yet; the next login creates it with {login} as its owner"
            ),
            owner::Decision::Claim(_) => format!(
                "namespace {namespace} has no owner record and nothing in it names another login; the next login records {login} as its owner"
            ),
            owner::Decision::Owned(e) => format!(
                "namespace {namespace} belongs to {login} (uid {})",
                e.recorded_uid.as_deref().unwrap_or("not recorded")
            ),
            owner::Decision::NeedBindings | owner::Decision::Refuse(_) => {
                format!("namespace {namespace}: owner not decided")
            }
        }
    }

    /// `claimed` when a namespace without an owner record became this
    /// login's, `created` for a new one, else `None`.
    pub fn event(&self) -> Option<&'static str> {
        match self.decision {
            owner::Decision::Create => Some("created"),
            owner::Decision::Claim(_) => Some("claimed"),
            _ => None,
        }
    }
}

/// What a request is about: where it goes and how errors name it.
pub struct Target {
    path: String,
    /// `Kind/name`, or `kinds in NAMESPACE` for a list.
    what: String,
    namespace: String,
}

impl Target {
    pub fn of(obj: &Object) -> Self {
        let meta = obj.meta();
        let name = meta.name.as_deref().unwrap_or_default();
        let namespace = meta.namespace.as_deref().unwrap_or(name).to_owned();
        Self {
            path: obj.kind().object_path(&namespace, name),
            what: obj.describe(),
            namespace,
        }
    }

    pub fn named(kind: Kind, namespace: &str, name: &str) -> Self {
        Self {
            path: kind.object_path(namespace, name),
            what: format!("{kind}/{name}"),
            namespace: namespace.to_owned(),
        }
    }

    pub fn collection(kind: Kind, namespace: &str) -> Self {
        Self {
            path: kind.collection_path(namespace),
            what: format!("{} in {namespace}", kind.plural()),
            namespace: namespace.to_owned(),
        }
    }
}

/// How an object is written (or read).
#[derive(Debug, Clone, PartialEq)]
enum Write {
    /// Server-side apply of this body, forced: we own these fields.
    Apply(Value),
    /// A JSON patch (RFC 6902).
    JsonPatch(Value),
    Get,
    /// List the collection with this label selector (pruning).
    List(String),
    /// List the whole collection (the owner check's RoleBindings).
    Inspect,
    /// List at most one item: the answer's resourceVersion is the cluster's
    /// current revision.
    Revision,
    /// Create (POST to the collection): fails with 409 if it exists.
    Create(Value),
    /// Delete, only if the object still has this uid.
    Delete(String),
}

impl Write {
    fn is_prune(&self) -> bool {
        matches!(self, Self::List(_) | Self::Delete(_))
    }
}

struct Response {
    status: StatusCode,
    body: Value,
}

/// The answer header naming the FlowSchema (by UID) that classified a
/// request under API Priority and Fairness.
const FLOW_SCHEMA_HEADER: &str = "x-kubernetes-pf-flowschema-uid";

/// A complete answer from the API server.
struct Answer {
    status: StatusCode,
    version: http::Version,
    /// The `Retry-After` header, in whole seconds as the API server sends it.
    retry_after: Option<Duration>,
    /// The `X-Kubernetes-PF-FlowSchema-UID` header.
    flow_schema: Option<String>,
    /// The JSON body (Null if not JSON).
    body: Value,
}

/// Why a request got no complete answer.
enum NoReply {
    /// Nothing came back: refused, reset, TLS failure, GOAWAY, or silence
    /// until the deadline.
    Unanswered(String),
    /// The status line came, the body did not (cut off or too slow).
    Cut(String),
    /// The body is larger than [`MAX_ANSWER`]: final, not retried.
    TooLarge(String),
}

impl NoReply {
    fn into_detail(self) -> String {
        match self {
            Self::Unanswered(d) | Self::Cut(d) | Self::TooLarge(d) => d,
        }
    }
}

/// A request that failed.
pub enum Failure {
    /// The answer is final: retrying cannot change it.
    Final(ApplyError),
    /// Worth another try while the deadline allows.
    Transient(Transient),
}

pub struct Transient {
    /// Whether the server answered at all (this try or, once in
    /// [`Ctx::write`]'s loop, any earlier one); decides 69 or 75.
    pub answered: bool,
    /// `Kind/name: what happened`, for the error line.
    pub reason: String,
    pub retry_after: Option<Duration>,
}

/// What to do after a transient failure.
#[derive(Debug, PartialEq, Eq)]
enum Next {
    /// Try again after this pause.
    RetryIn(Duration),
    /// The server asked for a pause (`Retry-After`) that outlasts the
    /// deadline: fail now rather than wait for nothing.
    TooLate(Duration),
    /// No time left for another try.
    GiveUp,
}

/// The pause before the next try is our `backoff` or the server's
/// `Retry-After`, whichever is longer, if it ends before the deadline.
fn next_step(retry_after: Option<Duration>, backoff: Duration, left: Duration) -> Next {
    match retry_after {
        Some(wait) if wait >= left => Next::TooLate(wait),
        _ => match retry_after.unwrap_or_default().max(backoff) {
            pause if pause >= left => Next::GiveUp,
            pause => Next::RetryIn(pause),
        },
    }
}

/// The `Retry-After` of a response, if it holds delay-seconds (the only
/// form the API server sends; an HTTP date is ignored).
fn retry_after(headers: &http::HeaderMap) -> Option<Duration> {
    let value = headers.get(header::RETRY_AFTER)?.to_str().ok()?;
    value.trim().parse().ok().map(Duration::from_secs)
}

/// How long connecting (TCP and TLS handshake) may take before the attempt
/// is abandoned and retried on a new connection: a third of the run's
/// deadline, between 1 and 5 seconds.
fn connect_limit(timeout: Duration) -> Duration {
    (timeout / 3).clamp(Duration::from_secs(1), Duration::from_secs(5))
}

/// A connector that gives up on a connection (TCP connect or TLS handshake)
/// after `limit`, so one stalled connection does not eat the whole deadline.
#[derive(Clone)]
struct TimedConnector<C> {
    inner: C,
    limit: Duration,
}

type Connecting<T> =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<T, tower::BoxError>> + Send>>;

impl<C> tower::Service<http::Uri> for TimedConnector<C>
where
    C: tower::Service<http::Uri>,
    C::Future: Send + 'static,
    C::Error: Into<tower::BoxError>,
{
    type Response = C::Response;
    type Error = tower::BoxError;
    type Future = Connecting<C::Response>;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, uri: http::Uri) -> Self::Future {
        let (connecting, limit) = (self.inner.call(uri), self.limit);
        Box::pin(async move {
            match tokio::time::timeout(limit, connecting).await {
                Ok(result) => result.map_err(Into::into),
                Err(_) => Err(format!(
                    "no connection within {:.1}s (TCP connect or TLS handshake stalled)",
                    limit.as_secs_f64()
                )
                .into()),
            }
        })
    }
}

struct Ctx<'a> {
    cluster: &'a Cluster,
    user: &'a str,
    deadline: Instant,
    /// The user's namespace.
    namespace: &'a str,
}

impl Ctx<'_> {
    /// [`Cluster::check_owner`]: the namespace read, and for one without an
    /// owner record its RoleBindings listed (a 403 there means root may not
    /// look, which refuses the claim).
    async fn check_owner(&self, state: &DesiredState) -> Result<Owner, ApplyError> {
        let ns = Target::named(Kind::Namespace, "", self.namespace);
        let existing = self.read_target(&ns).await?;
        let decide = |bindings: Option<Option<&[Value]>>| {
            owner::decide(&state.owner, self.namespace, existing.as_ref(), bindings)
        };
        let mut decision = decide(None);
        if decision == owner::Decision::NeedBindings {
            let listed = match self
                .write(
                    &Target::collection(Kind::RoleBinding, self.namespace),
                    Write::Inspect,
                    false,
                )
                .await
            {
                Ok(r) => Some(
                    r.body
                        .get("items")
                        .and_then(Value::as_array)
                        .cloned()
                        .unwrap_or_default(),
                ),
                Err(ApplyError::Forbidden { .. }) => None,
                Err(e) => return Err(e),
            };
            decision = decide(Some(listed.as_deref()));
        }
        match decision {
            owner::Decision::Refuse(collision) => Err(ApplyError::Collision {
                user: self.user.into(),
                collision: Box::new(collision),
            }),
            decision => Ok(Owner {
                decision,
                before: existing,
            }),
        }
    }

    /// Writes the Namespace as `decision` allows: created (POST, so that of
    /// two logins creating it at once only one can), or applied — for a
    /// claim, only if nobody changed it since it was read. When either
    /// finds it changed meanwhile (409), whose it is is decided again, once.
    /// Returns the answer and the decision it was written under.
    async fn write_namespace(
        &self,
        state: &DesiredState,
        ns_obj: &Object,
        mut owner: Owner,
    ) -> Result<(Response, Owner), ApplyError> {
        let desired = ns_obj.to_json();
        let mut tries = 0;
        loop {
            let result = match &owner.decision {
                owner::Decision::Create => {
                    // POSTed to the collection, named as the namespace.
                    let collection = Target {
                        path: Kind::Namespace.collection_path(""),
                        ..Target::of(ns_obj)
                    };
                    self.write(&collection, Write::Create(desired.clone()), false)
                        .await
                }
                d => {
                    let body = owner::namespace_body(&desired, d, state.login);
                    self.write(&Target::of(ns_obj), Write::Apply(body), false)
                        .await
                }
            };
            match result {
                Err(ApplyError::Server { status: 409, .. }) if tries == 0 => {
                    tries += 1;
                    owner = self.check_owner(state).await?;
                }
                Err(e) => return Err(e),
                Ok(r) => return Ok((r, owner)),
            }
        }
    }

    /// The cluster's current revision: the resourceVersion of a list of at
    /// most one ConfigMap in the namespace (the `ondemand` account may list
    /// them: `ood-user` does).
    async fn revision(&self) -> Result<Option<u64>, ApplyError> {
        let target = Target::collection(Kind::ConfigMap, self.namespace);
        let list = self.write(&target, Write::Revision, false).await?;
        Ok(resource_version(&list.body))
    }

    async fn apply_object(&self, obj: &Object, dry_run: bool) -> Result<Response, ApplyError> {
        self.write(&Target::of(obj), Write::Apply(obj.to_json()), dry_run)
            .await
    }

    /// One object in a normal run.
    async fn write_object(&self, obj: &Object) -> Result<Response, ApplyError> {
        match obj {
            Object::ServiceAccount(sa) if sa.image_pull_secrets.is_none() => {
                self.create_if_missing(obj).await
            }
            Object::ServiceAccount(_) => self.add_pull_secret(obj, false).await,
            _ => self.apply_object(obj, false).await,
        }
    }

    /// Creates `obj` (POST) unless it exists: one request either way, and
    /// nothing of an existing object is read, taken over or changed. An
    /// existing one answers [`StatusCode::CONFLICT`] (left alone).
    async fn create_if_missing(&self, obj: &Object) -> Result<Response, ApplyError> {
        let collection = Target {
            path: obj.kind().collection_path(self.namespace),
            ..Target::of(obj)
        };
        match self
            .write(&collection, Write::Create(obj.to_json()), false)
            .await
        {
            Err(ApplyError::Server { status: 409, .. }) => Ok(Response {
                status: StatusCode::CONFLICT,
                body: Value::Null,
            }),
            other => other,
        }
    }

    /// Adds our pull secret to the `default` ServiceAccount's
    /// `imagePullSecrets`, keeping every entry others put there.
    ///
    /// That list is atomic under server-side apply and has no merge key for
    /// strategic merge patches, so either would replace it wholesale (the old
    /// hook's `kubectl patch` did). Instead [`Ctx::guarded_edit`] appends it
    /// only if missing. If the ServiceAccount does not exist yet (the
    /// controller creates it moments after the namespace), apply creates it.
    async fn add_pull_secret(&self, obj: &Object, dry_run: bool) -> Result<Response, ApplyError> {
        let Object::ServiceAccount(sa) = obj else {
            return self.apply_object(obj, dry_run).await;
        };
        let ours = sa
            .image_pull_secrets
            .iter()
            .flatten()
            .map(|r| r.name.clone())
            .next()
            .unwrap_or_default();
        let edit = |current: &Value| {
            let list = current.get("imagePullSecrets").and_then(Value::as_array);
            let present = list.is_some_and(|l| {
                l.iter()
                    .any(|e| e.get("name").and_then(Value::as_str) == Some(ours.as_str()))
            });
            match (present, list) {
                (true, _) => vec![],
                (false, Some(_)) => vec![
                    serde_json::json!({"op": "add", "path": "/imagePullSecrets/-", "value": {"name": ours}}),
                ],
                (false, None) => vec![
                    serde_json::json!({"op": "add", "path": "/imagePullSecrets", "value": [{"name": ours}]}),
                ],
            }
        };
        match self.guarded_edit(&Target::of(obj), &edit, dry_run).await? {
            Some((response, _)) => Ok(response),
            None => self.apply_object(obj, dry_run).await,
        }
    }

    /// Removes pruned pull secrets from the `default` ServiceAccount's
    /// `imagePullSecrets`, leaving every other entry. True if it changed.
    async fn drop_pull_secrets(&self, names: &[&str], dry_run: bool) -> Result<bool, ApplyError> {
        let edit = |current: &Value| {
            let list = current
                .get("imagePullSecrets")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            // Highest index first, so earlier removals do not shift later ones.
            list.iter()
                .enumerate()
                .rev()
                .filter(|(_, e)| {
                    e.get("name")
                        .and_then(Value::as_str)
                        .is_some_and(|n| names.contains(&n))
                })
                .map(|(i, _)| serde_json::json!({"op": "remove", "path": format!("/imagePullSecrets/{i}")}))
                .collect()
        };
        let target = Target::named(
            Kind::ServiceAccount,
            self.namespace,
            DEFAULT_SERVICE_ACCOUNT,
        );
        Ok(self
            .guarded_edit(&target, &edit, dry_run)
            .await?
            .is_some_and(|(_, changed)| changed))
    }

    /// Reads the object at `target` and, if `edit` returns operations for
    /// it, sends them as a JSON patch guarded by the resourceVersion read.
    /// A failed guard (422) or a conflict (409) means someone wrote in
    /// between — overlapping runs do: read again, unless nothing changed
    /// (then the refusal is real). `None` if the object does not exist;
    /// else the last answer and whether a patch was sent.
    async fn guarded_edit(
        &self,
        target: &Target,
        edit: &dyn Fn(&Value) -> Vec<Value>,
        dry_run: bool,
    ) -> Result<Option<(Response, bool)>, ApplyError> {
        loop {
            let current = match self.write(target, Write::Get, false).await {
                Ok(r) => r,
                Err(ApplyError::Server { status: 404, .. }) => return Ok(None),
                Err(e) => return Err(e),
            };
            let ops = edit(&current.body);
            if ops.is_empty() {
                return Ok(Some((current, false)));
            }
            let rv = current
                .body
                .pointer("/metadata/resourceVersion")
                .cloned()
                .unwrap_or(Value::Null);
            let mut patch = vec![
                serde_json::json!({"op": "test", "path": "/metadata/resourceVersion", "value": rv}),
            ];
            patch.extend(ops);
            match self
                .write(target, Write::JsonPatch(Value::Array(patch)), dry_run)
                .await
            {
                Err(e @ (ApplyError::Invalid { .. } | ApplyError::Server { status: 409, .. })) => {
                    let now_rv = match self.write(target, Write::Get, false).await {
                        Ok(r) => r
                            .body
                            .pointer("/metadata/resourceVersion")
                            .cloned()
                            .unwrap_or(Value::Null),
                        Err(_) => Value::Null,
                    };
                    if now_rv == rv || Instant::now() >= self.deadline {
                        return Err(e);
                    }
                }
                Err(e) => return Err(e),
                Ok(r) => return Ok(Some((r, true))),
            }
        }
    }

    /// Our objects of every prunable kind in the namespace (one list request
    /// per kind, concurrently); nothing when `wanted` is false.
    async fn list_ours(&self, wanted: bool) -> Result<Vec<Found>, ApplyError> {
        if !wanted {
            return Ok(Vec::new());
        }
        let kinds: Vec<Kind> = Kind::prunable_kinds().collect();
        let targets: Vec<Target> = kinds
            .iter()
            .map(|k| Target::collection(*k, self.namespace))
            .collect();
        let lists = futures::future::join_all(
            targets
                .iter()
                .map(|t| self.write(t, Write::List(prune::selector()), false)),
        )
        .await;
        let mut found = Vec::new();
        for (kind, list) in kinds.into_iter().zip(lists) {
            let list = list?;
            let items = list.body.get("items").and_then(Value::as_array);
            found.extend(
                items
                    .into_iter()
                    .flatten()
                    .filter_map(|item| Found::from_item(kind, item)),
            );
        }
        Ok(found)
    }

    /// Deletes (or, in a dry run, would delete) what [`prune::plan`] picks
    /// from `found`, and drops pruned pull secrets from the `default`
    /// ServiceAccount.
    async fn prune(
        &self,
        desired: &[Object],
        found: &[Found],
        dry_run: bool,
    ) -> Result<Vec<Applied>, ApplyError> {
        let victims = prune::plan(desired, found);
        if victims.is_empty() {
            return Ok(Vec::new());
        }
        let secrets: Vec<&str> = victims
            .iter()
            .filter(|f| f.kind == Kind::Secret)
            .map(|f| f.name.as_str())
            .collect();
        let drop_refs = async {
            if secrets.is_empty() {
                Ok(false)
            } else {
                self.drop_pull_secrets(&secrets, dry_run).await
            }
        };
        let (deleted, refs_changed) = futures::join!(
            futures::future::join_all(victims.iter().map(|f| self.delete(f, dry_run))),
            drop_refs,
        );
        let mut report = Vec::new();
        if refs_changed? {
            report.push(Applied {
                object: format!("{}/{DEFAULT_SERVICE_ACCOUNT}", Kind::ServiceAccount),
                change: Change::Changed,
            });
        }
        for (f, gone) in victims.iter().zip(deleted) {
            if gone? {
                report.push(Applied {
                    object: f.describe(),
                    change: Change::Deleted,
                });
            }
        }
        Ok(report)
    }

    /// Deletes one object if it is still the one listed; false if it was
    /// gone or replaced meanwhile.
    async fn delete(&self, f: &Found, dry_run: bool) -> Result<bool, ApplyError> {
        let target = Target::named(f.kind, self.namespace, &f.name);
        match self
            .write(&target, Write::Delete(f.uid.clone()), dry_run)
            .await
        {
            Ok(_) => Ok(true),
            Err(ApplyError::Server {
                status: 404 | 409, ..
            }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    async fn dry_run(
        &self,
        state: &DesiredState,
        ns_obj: &Object,
        rest: &[Object],
    ) -> Result<Vec<Applied>, ApplyError> {
        let mut report = Vec::new();
        let before = self.read(ns_obj).await?;
        let ns_exists = before.is_some();
        report.push(match before {
            Some(b) if !state.login => self.dry_run_kept_namespace(ns_obj, b).await?,
            _ => self.dry_run_one(ns_obj).await?,
        });
        if !ns_exists {
            // Nothing can be dry-run inside a namespace that does not exist.
            report.extend(rest.iter().map(|o| Applied {
                object: o.describe(),
                change: Change::Created,
            }));
            return Ok(report);
        }
        let (results, found) = futures::join!(
            futures::future::join_all(rest.iter().map(|o| self.dry_run_one(o))),
            self.list_ours(state.prune),
        );
        for r in results {
            report.push(r?);
        }
        merge(
            &mut report,
            self.prune(&state.objects, &found?, true).await?,
        );
        Ok(report)
    }

    /// The namespace in a dry run that is no login: with the last-hook
    /// annotation it has (`before`), as the real run would write it.
    async fn dry_run_kept_namespace(
        &self,
        ns_obj: &Object,
        before: Value,
    ) -> Result<Applied, ApplyError> {
        let mut body = ns_obj.to_json();
        let kept = before
            .pointer("/metadata/annotations")
            .and_then(|a| a.get(LAST_HOOK_ANNOTATION))
            .and_then(Value::as_str);
        owner::keep_last_hook(&mut body, kept);
        let after = self
            .write(&Target::of(ns_obj), Write::Apply(body), true)
            .await?;
        Ok(Applied {
            object: ns_obj.describe(),
            change: if comparable(&before) == comparable(&after.body) {
                Change::Unchanged
            } else {
                Change::Changed
            },
        })
    }

    async fn dry_run_one(&self, obj: &Object) -> Result<Applied, ApplyError> {
        let before = self.read(obj).await?;
        if let Object::ServiceAccount(sa) = obj
            && sa.image_pull_secrets.is_none()
        {
            // Created if missing, else left alone.
            return Ok(planned(obj, &before, Change::Unchanged));
        }
        let after = match obj {
            Object::ServiceAccount(_) => self.add_pull_secret(obj, true).await,
            _ => self.apply_object(obj, true).await,
        };
        let after = match after {
            Ok(a) => a,
            // The Role it binds is not there yet (the real run makes it
            // first), so the API server cannot check the binding now.
            Err(ApplyError::Server { status: 404, .. }) if obj.binds_a_role() => {
                return Ok(planned(obj, &before, Change::Changed));
            }
            Err(e) => return Err(e),
        };
        let change = match before {
            None => Change::Created,
            Some(b) if comparable(&b) == comparable(&after.body) => Change::Unchanged,
            Some(_) => Change::Changed,
        };
        Ok(Applied {
            object: obj.describe(),
            change,
        })
    }

    async fn read(&self, obj: &Object) -> Result<Option<Value>, ApplyError> {
        self.read_target(&Target::of(obj)).await
    }

    async fn read_target(&self, target: &Target) -> Result<Option<Value>, ApplyError> {
        match self.write(target, Write::Get, false).await {
            Ok(r) => Ok(Some(r.body)),
            Err(ApplyError::Server { status: 404, .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Sends one request, retrying transient failures until the deadline:
    /// after a growing pause, or as long as the server's `Retry-After` asks
    /// if that still ends before the deadline (if not, it fails at once).
    async fn write(
        &self,
        target: &Target,
        how: Write,
        dry_run: bool,
    ) -> Result<Response, ApplyError> {
        let started = Instant::now();
        let mut backoff = Duration::from_millis(50);
        let mut earlier: Option<String> = None;
        let mut answered = false;
        loop {
            let mut transient = match self.send(target, how.clone(), dry_run).await {
                Ok(response) => return Ok(response),
                Err(Failure::Final(e)) => return Err(e),
                Err(Failure::Transient(t)) => t,
            };
            answered |= transient.answered;
            transient.answered = answered;
            let left = self.deadline.saturating_duration_since(Instant::now());
            match next_step(transient.retry_after, backoff, left) {
                Next::RetryIn(pause) => {
                    tracing::debug!(object = %target.what, reason = %transient.reason, "retrying in {pause:?}");
                    earlier = Some(transient.reason);
                    tokio::time::sleep(pause).await;
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                }
                Next::TooLate(wait) => {
                    return Err(ApplyError::RetryTooLate {
                        user: self.user.into(),
                        server: self.cluster.server.clone(),
                        last: transient.reason,
                        wait: wait.as_secs(),
                        left: left.as_secs_f64(),
                    });
                }
                Next::GiveUp => {
                    // The last try is often just cut by the deadline; an
                    // earlier, different failure says more.
                    if let Some(e) = earlier.filter(|e| *e != transient.reason) {
                        transient.reason = format!("{}; before that: {e}", transient.reason);
                    }
                    return Err(self.gave_up(transient, started.elapsed()));
                }
            }
        }
    }

    /// The error for a transient failure that outlasted the deadline: a
    /// server that never answered any try is unreachable (69); one that
    /// answered, but only with temporary errors or cut-off answers, is a
    /// temporary failure (75).
    fn gave_up(&self, last: Transient, tried: Duration) -> ApplyError {
        let secs = tried.as_secs_f64();
        if last.answered {
            ApplyError::Deadline {
                user: self.user.into(),
                server: self.cluster.server.clone(),
                secs,
                last: last.reason,
            }
        } else {
            self.unreachable(format!("{} (tried for {secs:.1}s)", last.reason))
        }
    }

    async fn send(&self, target: &Target, how: Write, dry_run: bool) -> Result<Response, Failure> {
        let path = &target.path;
        let dry = if dry_run { "&dryRun=All" } else { "" };
        let prune = how.is_prune();
        let (method, uri, content_type, body) = match how {
            Write::Get => (Method::GET, path.clone(), None, Vec::new()),
            Write::List(selector) => (
                Method::GET,
                format!("{path}?labelSelector={}", query_encode(&selector)),
                None,
                Vec::new(),
            ),
            Write::Inspect => (Method::GET, path.clone(), None, Vec::new()),
            Write::Revision => (Method::GET, format!("{path}?limit=1"), None, Vec::new()),
            Write::Create(body) => (
                Method::POST,
                format!("{path}?fieldManager={FIELD_MANAGER}{dry}"),
                Some("application/json"),
                serde_json::to_vec(&body).unwrap_or_default(),
            ),
            // fieldValidation=Ignore: for an apply the API server would
            // otherwise parse the body a second time, as strict YAML, only
            // to find duplicate keys, which a serialised JSON map cannot
            // hold (fields its schema lacks are refused either way).
            Write::Apply(body) => (
                Method::PATCH,
                format!(
                    "{path}?fieldManager={FIELD_MANAGER}&force=true&fieldValidation=Ignore{dry}"
                ),
                Some("application/apply-patch+yaml"),
                serde_json::to_vec(&body).unwrap_or_default(),
            ),
            Write::JsonPatch(patch) => (
                Method::PATCH,
                format!("{path}?fieldManager={FIELD_MANAGER}{dry}"),
                Some("application/json-patch+json"),
                serde_json::to_vec(&patch).unwrap_or_default(),
            ),
            // With a body the API server takes every option from it and
            // ignores the query (dryRun there would be lost: the object
            // really deleted); the query copy is for the audit log.
            Write::Delete(uid) => {
                let mut options = serde_json::json!({
                    "apiVersion": "v1",
                    "kind": "DeleteOptions",
                    "preconditions": {"uid": uid},
                    "propagationPolicy": "Background",
                });
                if dry_run {
                    options["dryRun"] = serde_json::json!(["All"]);
                }
                (
                    Method::DELETE,
                    format!("{path}?propagationPolicy=Background{dry}"),
                    Some("application/json"),
                    serde_json::to_vec(&options).unwrap_or_default(),
                )
            }
        };
        let mut builder = Request::builder()
            .method(method)
            .uri(uri)
            .header(header::ACCEPT, "application/json");
        if let Some(ct) = content_type {
            builder = builder.header(header::CONTENT_TYPE, ct);
        }
        let request = builder
            .body(Body::from(body))
            .map_err(|e| Failure::Final(self.unreachable(e.to_string())))?;
        tracing::trace!(object = %target.what, dry_run, "request");

        let reply = match self.cluster.exchange(request, self.deadline).await {
            Ok(reply) => reply,
            Err(NoReply::TooLarge(detail)) => {
                return Err(Failure::Final(ApplyError::TooLarge {
                    user: self.user.into(),
                    server: self.cluster.server.clone(),
                    object: target.what.clone(),
                    detail,
                }));
            }
            Err(no_reply) => {
                return Err(Failure::Transient(Transient {
                    answered: matches!(no_reply, NoReply::Cut(_)),
                    reason: format!("{}: {}", target.what, no_reply.into_detail()),
                    retry_after: None,
                }));
            }
        };
        tracing::trace!(object = %target.what, status = ?reply.status, version = ?reply.version, "response");
        if reply.status.is_success() {
            return Ok(Response {
                status: reply.status,
                body: reply.body,
            });
        }
        Err(classify(
            self.user,
            &self.cluster.server,
            target,
            prune,
            reply.status.as_u16(),
            &reply.body,
            reply.retry_after,
        ))
    }

    fn unreachable(&self, detail: String) -> ApplyError {
        ApplyError::Unreachable {
            user: self.user.into(),
            server: self.cluster.server.clone(),
            detail,
        }
    }
}

/// Turns an API server's error answer for `user`'s request about `target`
/// into an error a site admin can act on, or a transient one worth
/// retrying (throttling, 5xx during an upgrade). The body is whatever came
/// back (a Status, or anything a proxy sends): read as untrusted JSON.
pub fn classify(
    user: &str,
    server: &str,
    target: &Target,
    prune: bool,
    status: u16,
    body: &Value,
    retry_after: Option<Duration>,
) -> Failure {
    let message = one_line(
        body.get("message")
            .and_then(Value::as_str)
            .unwrap_or("(no message)"),
    );
    let causes = body
        .pointer("/details/causes")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let has_cause = |t: &str| {
        causes
            .iter()
            .any(|c| c.get("reason").and_then(Value::as_str) == Some(t))
    };
    let user = user.to_owned();
    let object = target.what.clone();
    Failure::Final(match status {
        code @ (429 | 500 | 502 | 503 | 504) => {
            let throttled = if code == 429 { " (throttled)" } else { "" };
            return Failure::Transient(Transient {
                answered: true,
                reason: format!("{object}: the API server answered {code}{throttled}: {message}"),
                retry_after,
            });
        }
        401 => ApplyError::Unauthorized {
            user,
            server: server.to_owned(),
        },
        403 if has_cause("NamespaceTerminating") || message.contains("being terminated") => {
            ApplyError::Terminating {
                user,
                namespace: target.namespace.clone(),
            }
        }
        403 => {
            let hint = if prune {
                "pruning (PRUNE=true, reconcile --prune) needs list and delete on the kinds the hook writes: \
                 apply hooks/ondemand-prune.yaml (ood-k8s-bootstrap install --prune)"
            } else if message.contains("attempting to grant RBAC permissions not currently held") {
                "the ondemand account can only bind or define roles whose permissions it holds itself; \
                 check the role in hook.env or the site template, or extend the `ondemand` ClusterRole (hooks/ondemand.yaml)"
            } else {
                "grant it in the `ondemand` ClusterRole (hooks/ondemand.yaml)"
            };
            ApplyError::Forbidden {
                user,
                object,
                message,
                hint,
            }
        }
        422 => {
            let hint = if message.contains("roleRef") {
                " — roleRef cannot be changed: an older binding of that name points at another ClusterRole; \
                 delete it (kubectl delete rolebinding -n NAMESPACE NAME) and run again"
            } else if message.contains("field is immutable") {
                " — the existing object has an immutable field (e.g. Secret type) set differently; delete it and run again"
            } else {
                ""
            };
            ApplyError::Invalid {
                user,
                object,
                message,
                hint,
            }
        }
        code => ApplyError::Server {
            user,
            object,
            status: code,
            message,
        },
    })
}

/// `s` percent-encoded for a query parameter (unreserved characters kept).
fn query_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                char::from(b).to_string()
            }
            other => format!("%{other:02X}"),
        })
        .collect()
}

/// An API server message (or a proxy's, or anything at all) fit for one
/// syslog line: no control characters, whitespace collapsed, at most 400
/// characters.
fn one_line(message: &str) -> String {
    crate::oneline::clean(message, 400)
}

/// The object's resourceVersion as a number (etcd's revision).
fn resource_version(v: &Value) -> Option<u64> {
    v.pointer("/metadata/resourceVersion")?
        .as_str()?
        .parse()
        .ok()
}

/// The parts of an object that mean something, for dry-run comparison.
fn comparable(v: &Value) -> Value {
    let mut v = v.clone();
    if let Some(meta) = v.get_mut("metadata").and_then(Value::as_object_mut) {
        for k in [
            "resourceVersion",
            "managedFields",
            "generation",
            "creationTimestamp",
            "uid",
        ] {
            meta.remove(k);
        }
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn comparable_ignores_bookkeeping() {
        let a = json!({"metadata": {"name": "x", "resourceVersion": "5", "managedFields": []}, "spec": 1});
        let b = json!({"metadata": {"name": "x", "resourceVersion": "9"}, "spec": 1});
        assert_eq!(comparable(&a), comparable(&b));
        let c = json!({"metadata": {"name": "x"}, "spec": 2});
        assert_ne!(comparable(&a), comparable(&c));
    }

    #[test]
    fn retry_after_is_honoured_only_inside_the_deadline() {
        let (ms, s) = (Duration::from_millis, Duration::from_secs);
        assert_eq!(next_step(None, ms(50), s(3)), Next::RetryIn(ms(50)));
        assert_eq!(next_step(Some(s(1)), ms(50), s(3)), Next::RetryIn(s(1)));
        assert_eq!(next_step(Some(s(0)), ms(400), s(3)), Next::RetryIn(ms(400)));
        assert_eq!(next_step(Some(s(30)), ms(50), s(3)), Next::TooLate(s(30)));
        assert_eq!(next_step(Some(s(1)), ms(50), ms(900)), Next::TooLate(s(1)));
        assert_eq!(next_step(None, s(1), ms(900)), Next::GiveUp);
    }

    #[test]
    fn retry_after_header_parses_delay_seconds_only() {
        let parse = |v: &str| {
            let mut h = http::HeaderMap::new();
            h.insert(header::RETRY_AFTER, v.parse().unwrap());
            retry_after(&h)
        };
        assert_eq!(parse("1"), Some(Duration::from_secs(1)));
        assert_eq!(parse(" 30 "), Some(Duration::from_secs(30)));
        assert_eq!(parse("Wed, 21 Oct 2015 07:28:00 GMT"), None);
        assert_eq!(parse("-1"), None);
        assert_eq!(retry_after(&http::HeaderMap::new()), None);
    }

    #[test]
    fn connecting_gets_a_third_of_the_deadline_within_bounds() {
        let s = Duration::from_secs;
        assert_eq!(connect_limit(s(3)), s(1));
        assert_eq!(connect_limit(s(1)), s(1));
        assert_eq!(connect_limit(s(12)), s(4));
        assert_eq!(connect_limit(s(60)), s(5));
    }

    #[test]
    fn resource_version_parses() {
        assert_eq!(
            resource_version(&json!({"metadata": {"resourceVersion": "42"}})),
            Some(42)
        );
        assert_eq!(resource_version(&json!({"metadata": {}})), None);
    }

    #[test]
    fn error_answers_name_user_and_object_on_one_line() {
        let target = Target::named(Kind::RoleBinding, "user-alice", "alice-ood-user");
        let body = json!({"kind": "Status", "message": "roleRef: Invalid\nvalue\u{1b}[31m", "details": {"causes": []}});
        let Failure::Final(e) = classify("alice", "https://k8s", &target, false, 422, &body, None)
        else {
            panic!("422 is final");
        };
        let msg = e.to_string();
        assert!(
            msg.contains("user alice") && msg.contains("RoleBinding/alice-ood-user"),
            "{msg}"
        );
        assert!(
            msg.contains("roleRef: Invalid value [31m")
                && msg.contains("roleRef cannot be changed"),
            "{msg}"
        );
        assert_eq!(e.exit(), Exit::DataErr);
        let Failure::Transient(t) = classify(
            "alice",
            "https://k8s",
            &target,
            false,
            429,
            &json!("<html>"),
            Some(Duration::from_secs(2)),
        ) else {
            panic!("429 is transient");
        };
        assert!(
            t.reason.contains("429 (throttled): (no message)")
                && t.retry_after == Some(Duration::from_secs(2))
        );
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            /// Whatever an API server (or a proxy in front of it) answers,
            /// a final error is one bounded line naming the user, with the
            /// exit status SPEC §7 gives; 429 and 5xx are retried.
            #[test]
            fn error_answers_become_one_line(
                status in 400u16..600,
                message in "(?s).{0,800}",
                cause in "NamespaceTerminating|[A-Za-z]{0,12}",
                as_status in any::<bool>(),
                prune in any::<bool>(),
            ) {
                let body = if as_status {
                    json!({"kind": "Status", "message": message, "details": {"causes": [{"reason": cause}]}})
                } else {
                    json!(message)
                };
                let target = Target::named(Kind::Secret, "user-alice", "pull");
                match classify("alice", "https://k8s", &target, prune, status, &body, None) {
                    Failure::Final(e) => {
                        let msg = e.to_string();
                        prop_assert!(!msg.chars().any(char::is_control), "{:?}", msg);
                        prop_assert!(msg.contains("alice") && msg.chars().count() < 1200);
                        let exit = match status {
                            401 | 403 if !matches!(e, ApplyError::Terminating { .. }) => Exit::NoPerm,
                            422 => Exit::DataErr,
                            _ => Exit::TempFail,
                        };
                        prop_assert_eq!(e.exit(), exit);
                    }
                    Failure::Transient(t) => {
                        prop_assert!(matches!(status, 429 | 500 | 502 | 503 | 504));
                        prop_assert!(!t.reason.chars().any(char::is_control) && t.answered);
                    }
                }
            }
        }
    }
}
