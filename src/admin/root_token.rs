//! `ood-k8s-bootstrap root-token`: keeps root's ServiceAccount token fresh.
//!
//! Since Kubernetes 1.24 ServiceAccount tokens expire; OnDemand's docs have
//! the admin renew root's by a cron job around `kubectl create token`. This
//! asks the TokenRequest API for a new token of the ServiceAccount root's
//! current token belongs to (authenticated by that token, which needs
//! `install --self-renew`, or by `--using` an admin's kubeconfig), checks
//! that the new token authenticates as that ServiceAccount, and writes it
//! over the old one in the file that holds it: locked, a new 0600 file
//! beside it, fsynced and renamed, every other byte kept
//! ([`crate::admin::root_kubeconfig::replace_token`]). The systemd timer in
//! `packaging/systemd/` runs it every [`RENEW_EVERY`].

use std::io::Read;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use http::Method;
use nix::fcntl::OFlag;
use nix::sys::stat::{Mode, fstat};
use nix::unistd::geteuid;
use serde_json::{Value, json};
use thiserror::Error;

use crate::PROG;
use crate::admin::root_kubeconfig::{self, Credential, RootKubeconfigError};
use crate::clock::unix_now;
use crate::cluster::apply::{Cluster, Connect};
use crate::credentials::kubeconfig::write::{self, Failure, KubectlLock};
use crate::exit::Exit;
use crate::run::{fail, runtime};
use crate::secret::Secret;

/// How often the packaged timer renews (its `OnCalendar=` every 6 hours).
pub const RENEW_EVERY: Duration = Duration::from_secs(6 * 3600);
/// The packaged timer's unit name.
pub const TIMER: &str = "ood-k8s-bootstrap-root-token.timer";

/// What the admin (or the timer) asked for.
#[derive(Debug, Clone)]
pub struct Options {
    pub kubeconfig: Option<PathBuf>,
    /// The context of root's kubeconfig (hook.env's ROOT_CONTEXT); None:
    /// its current context.
    pub context: Option<String>,
    pub using: Option<PathBuf>,
    /// (namespace, name): mint for this account rather than the current
    /// token's (and give an entry without a token its first one).
    pub service_account: Option<(String, String)>,
    pub duration: Duration,
    pub timeout: Duration,
}

#[derive(Debug, Error)]
pub enum RootTokenError {
    #[error("{0}")]
    Kubeconfig(#[from] RootKubeconfigError),
    #[error(
        "{file}: user {user:?} holds {what}, not a ServiceAccount token; root-token only renews ServiceAccount tokens"
    )]
    NotToken {
        file: PathBuf,
        user: String,
        what: String,
    },
    #[error(
        "{file}: the token of user {user:?} is not a ServiceAccount token{subject}; give root a token of the `ondemand` ServiceAccount"
    )]
    NotServiceAccount {
        file: PathBuf,
        user: String,
        subject: String,
    },
    #[error("cannot read the token file {path}: {why}")]
    TokenFile { path: PathBuf, why: String },
    #[error(
        "the API server {server} rejected {by} (401 Unauthorized): it has expired or was revoked; \
         renew once with a cluster admin's kubeconfig: ood-k8s-bootstrap root-token --using ADMIN_KUBECONFIG"
    )]
    Rejected { server: String, by: String },
    #[error(
        "{by} may not create tokens for ServiceAccount {namespace}/{name} (403): run `ood-k8s-bootstrap install --self-renew` \
         with a cluster admin's kubeconfig once (or renew with --using ADMIN_KUBECONFIG)"
    )]
    Forbidden {
        by: String,
        namespace: String,
        name: String,
    },
    #[error(
        "ServiceAccount {namespace}/{name} does not exist (404): run `ood-k8s-bootstrap install` with a cluster admin's kubeconfig, \
         then mint root's first token with `ood-k8s-bootstrap root-token --using ADMIN_KUBECONFIG`"
    )]
    NoServiceAccount { namespace: String, name: String },
    #[error("cannot set up a connection from the kubeconfig: {detail}")]
    Connect { detail: String },
    #[error("the API server {server} is unreachable: {detail}")]
    Unreachable { server: String, detail: String },
    #[error("the API server {server} answered the TokenRequest with {status}: {message}")]
    Server {
        server: String,
        status: u16,
        message: String,
    },
    #[error(
        "the new token does not authenticate as ServiceAccount {namespace}/{name} ({got}); nothing written"
    )]
    Verify {
        namespace: String,
        name: String,
        got: String,
    },
    #[error("{}: {}", .0.path.display(), .0.why)]
    Write(Failure),
    #[error(
        "root's kubeconfig has no token yet to ask for a new one with; mint the first with a cluster admin's kubeconfig: --using ADMIN_KUBECONFIG"
    )]
    NoTokenYet,
    #[error("gave up after {secs}s (--timeout)")]
    Deadline { secs: u64 },
}

impl RootTokenError {
    pub fn exit(&self) -> Exit {
        match self {
            Self::Kubeconfig(RootKubeconfigError::Read { .. }) | Self::TokenFile { .. } => {
                Exit::NoInput
            }
            Self::Kubeconfig(_)
            | Self::NotToken { .. }
            | Self::NotServiceAccount { .. }
            | Self::NoServiceAccount { .. }
            | Self::NoTokenYet
            | Self::Connect { .. } => Exit::Config,
            Self::Rejected { .. } | Self::Forbidden { .. } => Exit::NoPerm,
            Self::Unreachable { .. } => Exit::Unavailable,
            Self::Server { .. } | Self::Deadline { .. } => Exit::TempFail,
            Self::Verify { .. } => Exit::Software,
            Self::Write(f) if f.kind == write::FailKind::Unsafe => Exit::NoPerm,
            Self::Write(_) => Exit::CantCreate,
        }
    }
}

/// Where the new token goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Place {
    /// Over the old `token:` value in this kubeconfig file, byte-exact.
    Inline(PathBuf),
    /// Into the file a `tokenFile:` entry names.
    TokenFile(PathBuf),
    /// A user entry without a token yet, in this kubeconfig file: the
    /// entry is set (the file is re-emitted by kubectl's rules).
    NewEntry(PathBuf),
}

/// Root's current credentials, as found by kubectl's rules.
pub struct Current {
    pub context: String,
    pub user: String,
    pub place: Place,
    /// The token to replace; None for a first token.
    pub token: Option<Secret>,
    /// (namespace, name) of the ServiceAccount.
    pub account: (String, String),
    pub expiry: Option<u64>,
}

impl Current {
    /// The kubeconfig file the entry is in (or the token file).
    pub fn file(&self) -> &Path {
        match &self.place {
            Place::Inline(p) | Place::TokenFile(p) | Place::NewEntry(p) => p,
        }
    }
}

/// Finds root's current token and whose it is (no network). With
/// `account`, an entry without a token is accepted (it gets its first).
pub fn current(
    explicit: Option<&Path>,
    context: Option<&str>,
    account: Option<&(String, String)>,
) -> Result<Current, RootTokenError> {
    let paths = root_kubeconfig::candidate_files(explicit);
    let files = root_kubeconfig::load(&paths, explicit.is_some())?;
    let (context_file, context, user) = root_kubeconfig::current_user(&files, context)?;
    let resolved = match root_kubeconfig::resolve(&files, Some(&context)) {
        Ok(r) => Some(r),
        Err(RootKubeconfigError::NoUser { .. }) if account.is_some() => None,
        Err(e) => return Err(e.into()),
    };
    let (place, token) = match resolved.map(|r| (r.file, r.credential)) {
        Some((file, Credential::Token(t))) => (Place::Inline(file), Some(t)),
        Some((_, Credential::TokenFile(p))) => {
            let t = read_token_file(&p)?;
            (Place::TokenFile(p), Some(t))
        }
        Some((file, Credential::Other("no credentials at all"))) if account.is_some() => {
            (Place::NewEntry(file), None)
        }
        None => (Place::NewEntry(context_file), None),
        Some((file, Credential::Other(what))) => {
            return Err(RootTokenError::NotToken {
                file,
                user,
                what: what.to_owned(),
            });
        }
    };
    let claims = token
        .as_ref()
        .and_then(|t| crate::credentials::tokens::payload(t.expose(), "root's token").ok());
    let account = match (account, &claims) {
        (Some(a), _) => a.clone(),
        (None, Some(c)) => root_kubeconfig::service_account(c).ok_or_else(|| {
            RootTokenError::NotServiceAccount {
                file: place_file(&place),
                user: user.clone(),
                subject: c
                    .get("sub")
                    .and_then(Value::as_str)
                    .map(|s| format!(" (subject {s:?})"))
                    .unwrap_or_default(),
            }
        })?,
        (None, None) => {
            return Err(RootTokenError::NotServiceAccount {
                file: place_file(&place),
                user,
                subject: " (not a JWT)".into(),
            });
        }
    };
    let expiry = claims
        .as_ref()
        .and_then(|c| c.get("exp"))
        .and_then(Value::as_u64);
    Ok(Current {
        context,
        user,
        place,
        token,
        account,
        expiry,
    })
}

fn place_file(place: &Place) -> PathBuf {
    match place {
        Place::Inline(p) | Place::TokenFile(p) | Place::NewEntry(p) => p.clone(),
    }
}

fn read_token_file(path: &Path) -> Result<Secret, RootTokenError> {
    let mut text = String::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(1 << 20).read_to_string(&mut text))
        .map_err(|e| RootTokenError::TokenFile {
            path: path.to_owned(),
            why: e.to_string(),
        })?;
    Ok(Secret::new(text.trim()))
}

/// Runs `root-token`; every failure is already printed.
/// [`main`] for each chosen cluster (`--cluster`; with CLUSTERS_D every
/// cluster's root kubeconfig, as the timer runs it), leaving a record of
/// each run where hook.env's LOG_TARGET says (the system log when hook.env
/// does not load). An explicit `--kubeconfig` is one run, whatever hook.env
/// says.
pub fn recorded_main(opts: &Options, hook_env: &Path, cluster: Option<&str>) -> Exit {
    let site = crate::site::settings::site::Site::load(hook_env).ok();
    let chosen = match (&site, cluster) {
        (Some(site), _) => match site.select(cluster) {
            Ok(c) => c,
            Err(e) => return fail(Exit::Usage, e),
        },
        (None, Some(id)) => {
            return fail(
                Exit::Config,
                format!(
                    "--cluster {id}: {} does not load (`ood-k8s-bootstrap config` says why)",
                    hook_env.display()
                ),
            );
        }
        (None, None) => Vec::new(),
    };
    if chosen.is_empty() || opts.kubeconfig.is_some() {
        return recorded_one(opts, chosen.first().copied());
    }
    let mut exit = Exit::Ok;
    for settings in chosen {
        if let Some(id) = &settings.cluster_id {
            eprintln!("{PROG}: root-token: cluster {id}:");
        }
        // hook.env's (or the cluster's) ROOT_KUBECONFIG and ROOT_CONTEXT.
        let mut opts = opts.clone();
        opts.kubeconfig = settings.root.kubeconfig.clone();
        opts.context = settings.root.context.clone();
        exit = exit.worst(recorded_one(&opts, Some(settings)));
    }
    exit
}

fn recorded_one(opts: &Options, settings: Option<&crate::site::settings::Settings>) -> Exit {
    let mut recorded = crate::run::Run::start(crate::record::Command::RootToken);
    if let Some(settings) = settings {
        recorded.configured(settings);
        recorded.record.mode = None;
        recorded.record.cluster = settings.cluster_id.clone();
    }
    let exit = main(opts);
    recorded.finish(exit);
    exit
}

pub fn main(opts: &Options) -> Exit {
    let started = Instant::now();
    let cur = match current(
        opts.kubeconfig.as_deref(),
        opts.context.as_deref(),
        opts.service_account.as_ref(),
    ) {
        Ok(c) => c,
        Err(e) => return fail(e.exit(), e),
    };
    let Ok(rt) = runtime() else {
        return Exit::Software;
    };
    let (ns, name) = cur.account.clone();
    eprintln!(
        "{PROG}: root-token: {} ServiceAccount {ns}/{name}'s token in {} (user {}){}",
        if cur.token.is_some() {
            "renewing"
        } else {
            "writing the first"
        },
        cur.file().display(),
        cur.user,
        opts.using
            .as_ref()
            .map(|u| format!(", minted with {}", u.display()))
            .unwrap_or_default()
    );
    let minted = rt.block_on(async {
        match tokio::time::timeout(opts.timeout, mint(opts, &cur)).await {
            Ok(r) => r,
            Err(_) => Err(RootTokenError::Deadline {
                secs: opts.timeout.as_secs(),
            }),
        }
    });
    drop(rt);
    let (token, expiry) = match minted {
        Ok(t) => t,
        Err(e) => return fail(e.exit(), e),
    };
    let deadline = started + opts.timeout;
    let written = match &cur.place {
        Place::TokenFile(p) => write_token_file(p, &token, deadline),
        Place::Inline(p) | Place::NewEntry(p) => write_kubeconfig(p, &cur, &token, deadline),
    };
    if let Err(e) = written {
        return fail(e.exit(), e);
    }
    let now = unix_now();
    eprintln!(
        "{PROG}: root-token: wrote a new token for {ns}/{name}, valid until {} (in {}) ({} ms)",
        crate::clock::rfc3339(expiry),
        human(expiry.saturating_sub(now)),
        started.elapsed().as_millis()
    );
    Exit::Ok
}

/// Asks for the new token and checks it authenticates as the account.
async fn mint(opts: &Options, cur: &Current) -> Result<(Secret, u64), RootTokenError> {
    let (ns, name) = &cur.account;
    // Only root's token is used (as a bearer): nothing in the file runs.
    let root = Connect {
        kubeconfig: opts.kubeconfig.clone(),
        bearer: None,
        context: opts.context.clone(),
        trust_check: false,
    };
    let how = match &opts.using {
        Some(admin) => Connect {
            kubeconfig: Some(admin.clone()),
            ..Connect::default()
        },
        None => Connect {
            bearer: Some(cur.token.clone().ok_or(RootTokenError::NoTokenYet)?),
            ..root.clone()
        },
    };
    let by = opts.using.as_ref().map_or_else(
        || "root's token".to_owned(),
        |p| format!("the credentials of {}", p.display()),
    );
    let cluster = Cluster::connect_with(&how, opts.timeout).await?;
    let body = json!({
        "apiVersion": "authentication.k8s.io/v1",
        "kind": "TokenRequest",
        "spec": {"expirationSeconds": opts.duration.as_secs()}
    });
    let path = format!("/api/v1/namespaces/{ns}/serviceaccounts/{name}/token");
    let reply = cluster
        .request(Method::POST, &path, Some(&body))
        .await
        .map_err(|detail| RootTokenError::Unreachable {
            server: cluster.server().to_owned(),
            detail,
        })?;
    let token = match reply.status {
        200 | 201 => reply
            .body
            .pointer("/status/token")
            .and_then(Value::as_str)
            .map(Secret::new),
        401 => {
            return Err(RootTokenError::Rejected {
                server: cluster.server().to_owned(),
                by,
            });
        }
        403 => {
            return Err(RootTokenError::Forbidden {
                by,
                namespace: ns.clone(),
                name: name.clone(),
            });
        }
        404 => {
            return Err(RootTokenError::NoServiceAccount {
                namespace: ns.clone(),
                name: name.clone(),
            });
        }
        _ => None,
    };
    let Some(token) = token else {
        return Err(RootTokenError::Server {
            server: cluster.server().to_owned(),
            status: reply.status,
            message: reply.message(),
        });
    };
    let expiry = crate::credentials::tokens::claims(token.expose(), "the new token")
        .ok()
        .and_then(|c| c.exp)
        .unwrap_or_else(|| unix_now() + opts.duration.as_secs());

    // The new token, on root's own connection settings, must be the account.
    let check = Connect {
        bearer: Some(token.clone()),
        ..root
    };
    let got = match who_am_i(&Cluster::connect_with(&check, opts.timeout).await?).await {
        Ok(u) => u,
        Err(e) => e,
    };
    if got != format!("system:serviceaccount:{ns}:{name}") {
        return Err(RootTokenError::Verify {
            namespace: ns.clone(),
            name: name.clone(),
            got,
        });
    }
    Ok((token, expiry))
}

impl From<crate::cluster::apply::ApplyError> for RootTokenError {
    fn from(e: crate::cluster::apply::ApplyError) -> Self {
        match e {
            crate::cluster::apply::ApplyError::Kubeconfig { detail } => Self::Connect { detail },
            other => Self::Unreachable {
                server: "(root's kubeconfig)".into(),
                detail: other.to_string(),
            },
        }
    }
}

/// The username the API server sees (SelfSubjectReview), or why not.
pub async fn who_am_i(cluster: &Cluster) -> Result<String, String> {
    let body = json!({"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"});
    let reply = cluster
        .request(
            Method::POST,
            "/apis/authentication.k8s.io/v1/selfsubjectreviews",
            Some(&body),
        )
        .await?;
    match reply.status {
        200 | 201 => reply
            .body
            .pointer("/status/userInfo/username")
            .and_then(Value::as_str)
            .map(str::to_owned)
            .ok_or_else(|| "no username in the SelfSubjectReview".into()),
        401 => Err("rejected: 401 Unauthorized".into()),
        s => Err(format!(
            "SelfSubjectReview answered {s}: {}",
            reply.message()
        )),
    }
}

/// The directory holding `path`, opened; refused unless root's own and not
/// writable by group or others (another user could swap the file).
fn open_parent(path: &Path) -> Result<(std::os::fd::OwnedFd, PathBuf, String), RootTokenError> {
    let unsafe_ =
        |why: String| RootTokenError::Write(Failure::new(write::FailKind::Unsafe, path, why));
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| unsafe_("not a file name".into()))?
        .to_owned();
    let dir_path = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
        _ => PathBuf::from("."),
    };
    let dir = nix::fcntl::open(
        &dir_path,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| unsafe_(format!("cannot open its directory: {e}")))?;
    let st = fstat(dir.as_fd()).map_err(|e| unsafe_(format!("cannot stat its directory: {e}")))?;
    if st.st_uid != geteuid().as_raw() || st.st_mode & 0o022 != 0 {
        return Err(unsafe_(format!(
            "its directory {} is owned by uid {} with mode {:o}; it must be root's and not writable by others; nothing written",
            dir_path.display(),
            st.st_uid,
            st.st_mode & 0o777
        )));
    }
    Ok((dir, dir_path, name))
}

/// Replaces the token in the kubeconfig file `path` (or gives the entry its
/// first), under flock and kubectl's lock, through a new file renamed over
/// the old one.
fn write_kubeconfig(
    path: &Path,
    cur: &Current,
    new: &Secret,
    deadline: Instant,
) -> Result<(), RootTokenError> {
    let (dir, dir_path, name) = open_parent(path)?;
    let locked =
        write::lock_file(&dir, &name, path, geteuid(), deadline).map_err(RootTokenError::Write)?;
    let mut warnings = Vec::new();
    let _kubectl = KubectlLock::acquire(
        &dir,
        &dir_path,
        &format!("{name}.lock"),
        deadline,
        &mut warnings,
    )
    .map_err(RootTokenError::Write)?;
    for w in warnings {
        eprintln!("{PROG}: warning: {w}");
    }
    let mut text = String::new();
    (&*locked)
        .take(16 << 20)
        .read_to_string(&mut text)
        .map_err(|e| {
            RootTokenError::Write(Failure::new(
                write::FailKind::Io,
                path,
                format!("cannot read: {e}"),
            ))
        })?;
    let edited = match &cur.token {
        Some(old) => {
            root_kubeconfig::replace_token(path, &text, &cur.user, old.expose(), new.expose())?
        }
        None => first_token(path, &text, &cur.user, new)?,
    };
    write::write_atomic(&dir, &dir_path, &name, edited.as_bytes()).map_err(RootTokenError::Write)
}

/// `text` with user entry `user` holding just `token` (created if missing).
fn first_token(
    path: &Path,
    text: &str,
    user: &str,
    token: &Secret,
) -> Result<String, RootTokenError> {
    use crate::credentials::kubeconfig::merge::{Desired, UserEntry, merge};
    let desired = Desired {
        user: Some(UserEntry {
            name: user.to_owned(),
            user: json!({"token": token.expose()}),
        }),
        cluster: None,
        context: None,
    };
    merge(text, &desired).map_err(|e| {
        RootTokenError::Kubeconfig(RootKubeconfigError::Parse {
            path: path.to_owned(),
            why: e.to_string(),
        })
    })
}

/// Writes the token file a `tokenFile:` entry names.
fn write_token_file(path: &Path, new: &Secret, deadline: Instant) -> Result<(), RootTokenError> {
    let (dir, dir_path, name) = open_parent(path)?;
    let _locked =
        write::lock_file(&dir, &name, path, geteuid(), deadline).map_err(RootTokenError::Write)?;
    write::write_atomic(
        &dir,
        &dir_path,
        &name,
        format!("{}\n", new.expose()).as_bytes(),
    )
    .map_err(RootTokenError::Write)
}

/// `47h 59m`, `12m`, `30s`.
pub fn human(secs: u64) -> String {
    match secs {
        0..60 => format!("{secs}s"),
        60..3600 => format!("{}m", secs / 60),
        _ => format!("{}h {}m", secs / 3600, secs % 3600 / 60),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_timer_renews_as_often_as_doctor_assumes() {
        let timer = include_str!("../../packaging/systemd/ood-k8s-bootstrap-root-token.timer");
        assert!(timer.contains("OnCalendar=*-*-* 00/6:00:00"), "{timer}");
        assert_eq!(RENEW_EVERY, Duration::from_secs(6 * 3600));
        let service = include_str!("../../packaging/systemd/ood-k8s-bootstrap-root-token.service");
        assert!(service.contains("ExecStart=/usr/bin/ood-k8s-bootstrap root-token --duration 48h"));
        // A 48 h token renewed every 6 h never gets near expiry.
        assert!(crate::cli::parse_duration("48h").unwrap() > RENEW_EVERY * 4);
    }

    #[test]
    fn human_durations() {
        assert_eq!(human(30), "30s");
        assert_eq!(human(720), "12m");
        assert_eq!(human(172_740), "47h 59m");
    }
}
