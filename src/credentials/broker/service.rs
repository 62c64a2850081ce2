//! `ood-k8s-bootstrap broker`: the service. Accepts connections on the
//! socket, learns each caller's uid from the kernel (`SO_PEERCRED`), reads
//! one bounded request line, and answers with that uid's token — refreshed
//! first when it is about to expire, one refresh at a time per uid — or an
//! error for the user. Everything is bounded: connections at once, request
//! size, time to read and to write, requests per uid and minute, and the
//! IdP's time. Each stored set is judged before use ([`super::session`]):
//! served to the login that stored it, or deleted. One log line per event
//! on stderr (journald), never a token; refusals at most one line per uid
//! and minute, with a count.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::unistd::Uid;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::Semaphore;

use super::idp::Idp;
use super::limits::{LogLimit, PerUid, RateLimit};
use super::listen::{self, Origin};
use super::protocol::{self, ErrorCode, MAX_REQUEST, Response};
use super::session::{self, End, Lookup, Verdict};
use super::store::{Found, Replaced, Store, StoreError};
use super::tokenset::{RefreshError, TokenSet};
use crate::PROG;
use crate::clock::unix_now;
use crate::exit::Exit;
use crate::record::{Command, Record, Sink};
use crate::run::{fail, load_site};
use crate::site::settings::{CredentialMode, Settings};

/// Time a client has to send its request line.
const READ_TIMEOUT: Duration = Duration::from_secs(5);
/// Time a client has to take the answer.
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// Time in-flight requests get at shutdown.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(15);
/// One log line per uid and this long about its refusals.
const LOG_EVERY: Duration = Duration::from_secs(60);
/// Descriptors beyond the connections: the "busy" slots (at most 64), the
/// IdP's connections, the store's files, the log.
pub const FD_HEADROOM: usize = 64 + 192;

/// One log line.
fn log(line: std::fmt::Arguments<'_>) {
    eprintln!("{PROG} broker: {line}");
}

/// Why a request got no token. Each turns into a protocol error with a
/// message for the user; details for the admin go to the log.
#[derive(Debug)]
enum Refusal {
    NoCredentials,
    SessionEnded(String),
    IdpUnavailable(String),
    Misconfigured(String),
    /// The set was deleted: this session is over.
    Ended(End),
    /// Passwd could not be read to tell whose the set is.
    Account(String),
    Store(StoreError),
}

impl Refusal {
    fn response(&self, uid: u32) -> Response {
        let (code, message) = match self {
            Self::NoCredentials => (
                ErrorCode::NoCredentials,
                format!(
                    "no Kubernetes credentials stored for you (uid {uid}) on this host: log in to OnDemand"
                ),
            ),
            Self::SessionEnded(why) => (
                ErrorCode::SessionEnded,
                format!("your OnDemand session has ended ({why}): log in to OnDemand again"),
            ),
            Self::IdpUnavailable(why) => (
                ErrorCode::IdpUnavailable,
                format!(
                    "the identity provider could not renew your Kubernetes token ({why}): try again in a minute; if this persists, ask your administrator"
                ),
            ),
            Self::Misconfigured(why) => (
                ErrorCode::BrokerMisconfigured,
                format!(
                    "the credential broker cannot renew tokens ({why}): ask your administrator"
                ),
            ),
            Self::Ended(end) => (ErrorCode::SessionEnded, end.message()),
            Self::Account(_) => (
                ErrorCode::Internal,
                format!(
                    "the credential broker cannot look up your account (uid {uid}): try again; if this persists, ask your administrator"
                ),
            ),
            Self::Store(_) => (
                ErrorCode::Internal,
                "the credential broker cannot read its token store: ask your administrator".into(),
            ),
        };
        Response::error(code, message)
    }
}

/// How a token was found.
#[derive(Debug, Clone, Copy)]
enum Served {
    Stored,
    Refreshed(Duration),
    /// Still valid, though it could not be refreshed now.
    Unrenewed,
}

/// One token store and the IdP client that refreshes its sets: one per
/// issuer, client and audience of the clusters in broker mode
/// (`settings::site` gives each its directory).
struct SetStore {
    store: Store,
    idp: Idp,
    /// The kubeconfig cluster names whose tokens these are (what the
    /// plugin sends); the first store also answers requests naming none.
    clusters: Vec<String>,
}

/// Held while a uid's set in one store is refreshed.
type UserLock = Arc<tokio::sync::Mutex<()>>;

/// The service's shared state.
struct Broker {
    sets: Vec<SetStore>,
    rate: Mutex<RateLimit>,
    /// Connections open per uid.
    open: Mutex<PerUid>,
    /// One refresh at a time per uid and store.
    refreshing: Mutex<HashMap<(usize, u32), UserLock>>,
    /// Log lines about refusals, per uid.
    log_limit: Mutex<LogLimit>,
    /// `BROKER_MAX_SESSION_HOURS`.
    max_session_hours: u32,
    verbose: bool,
    /// Where refresh and refusal records go (`LOG_TARGET`).
    sink: Sink,
    /// Their counts (`METRICS_FILE`), written by a thread of their own.
    metrics: Option<crate::metrics::Background>,
}

impl Broker {
    /// The store of the tokens for kubeconfig cluster `cluster` (the first
    /// store when it names none or one this broker does not know).
    fn set_for(&self, cluster: Option<&str>) -> usize {
        cluster
            .and_then(|c| {
                self.sets
                    .iter()
                    .position(|s| s.clusters.iter().any(|n| n == c))
            })
            .unwrap_or(0)
    }

    /// Logs a refusal of `uid`, unless one was logged this last minute
    /// (then it is counted, and the next line says how many were not).
    fn log_refusal(&self, uid: u32, line: std::fmt::Arguments<'_>) {
        let admitted = self
            .log_limit
            .lock()
            .map_or(Some(0), |mut l| l.admit(uid, Instant::now()));
        match admitted {
            Some(0) => log(format_args!("uid {uid}: {line}")),
            Some(n) => log(format_args!(
                "uid {uid}: {line} [and {n} more refusals of this uid not logged since its last line]"
            )),
            None => {}
        }
        let r = refusal_record(uid, &line.to_string(), admitted.map(|n| n + 1));
        // The log folds lines; the metric counts every refusal, now.
        self.count(&r);
        if admitted.is_some() {
            r.send(&self.sink);
        }
    }

    /// Sends `r` to the log and counts it.
    fn record(&self, r: &Record) {
        r.send(&self.sink);
        self.count(r);
    }

    /// Adds `r` to the metrics (in memory: a thread of their own writes
    /// the file).
    fn count(&self, r: &Record) {
        if let Some(m) = &self.metrics {
            m.add(r);
        }
    }
}

/// The record of a refusal of `uid`: `refusals` is how many refusals of
/// it the record stands for in the log (the ones not logged since its
/// last line and this one); the metrics count each refusal once.
fn refusal_record(uid: u32, line: &str, refusals: Option<u64>) -> Record {
    let mut r = Record::new(Command::BrokerRefusal);
    r.exit = 1;
    r.error = Some(line.to_owned());
    r.extra = vec![("uid", uid.to_string())];
    if let Some(n) = refusals {
        r.extra.push(("refusals", n.to_string()));
    }
    r
}

/// How long the metrics' last write may take at shutdown.
const METRICS_FLUSH: Duration = Duration::from_secs(5);

/// Runs the service until SIGTERM or SIGINT.
pub fn main(hook_env: &Path, verbose: u8) -> Exit {
    if !Uid::effective().is_root() {
        return fail(
            Exit::NoPerm,
            "the credential broker must run as root (it reads users' stored tokens and hook.env's client secret)",
        );
    }
    // The broker's own keys are one per web node; with several clusters,
    // each issuer, client and audience in broker mode has its own store.
    let site = match load_site(hook_env) {
        Ok(site) => site,
        Err(exit) => return exit,
    };
    let brokered: Vec<&Settings> = site
        .clusters
        .iter()
        .filter(|s| s.kubeconfig.credentials == CredentialMode::Broker)
        .collect();
    let Some(settings) = brokered.first().copied().or(site.clusters.first()) else {
        return Exit::Ok;
    };
    let b = &settings.broker;
    let mut sets: Vec<SetStore> = Vec::new();
    for s in brokered.iter().copied().chain(std::iter::once(settings)) {
        let name = s.kubeconfig.cluster_name.clone();
        if let Some(known) = sets
            .iter_mut()
            .find(|k| k.store.path() == s.broker.state_dir)
        {
            if !known.clusters.contains(&name) {
                known.clusters.push(name);
            }
            continue;
        }
        let idp = match Idp::new(&s.oidc, b.idp_timeout) {
            Ok(i) => i,
            Err(e) => return fail(Exit::Config, format!("{}: {e}", hook_env.display())),
        };
        let store = match Store::open(&s.broker.state_dir) {
            Ok(s) => s,
            Err(e) => return fail(Exit::CantCreate, format!("BROKER_STATE_DIR {e}")),
        };
        sets.push(SetStore {
            store,
            idp,
            clusters: vec![name],
        });
    }
    let (listener, origin) = match listen::listen(&b.socket) {
        Ok(l) => l,
        Err(e) => return fail(Exit::Unavailable, e),
    };
    let broker = Arc::new(Broker {
        sets,
        rate: Mutex::new(RateLimit::new(b.requests_per_minute)),
        open: Mutex::new(PerUid::new(b.max_connections)),
        refreshing: Mutex::new(HashMap::new()),
        log_limit: Mutex::new(LogLimit::new(LOG_EVERY)),
        max_session_hours: b.max_session_hours,
        verbose: verbose > 0,
        sink: Sink::of(Some(settings)),
        metrics: metrics_writer(settings),
    });
    files_for(b.max_connections);
    // A few blocking threads for the token store's fsyncs, no more.
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .max_blocking_threads(4)
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            return fail(
                Exit::Software,
                format!("cannot start the async runtime: {e}"),
            );
        }
    };
    let max = b.max_connections;
    let exit = rt.block_on(async {
        if let Err(e) = listener.set_nonblocking(true) {
            return fail(Exit::Software, format!("cannot use the socket: {e}"));
        }
        let listener = match UnixListener::from_std(listener) {
            Ok(l) => l,
            Err(e) => return fail(Exit::Software, format!("cannot use the socket: {e}")),
        };
        announce(&origin, &settings.broker.socket, &broker, max);
        serve(listener, broker.clone(), max).await
    });
    if let Origin::Bound(path) = &origin {
        let _ = std::fs::remove_file(path);
    }
    log(format_args!("stopped"));
    exit
}

fn announce(origin: &Origin, configured: &Path, broker: &Broker, max: usize) {
    let at = match origin {
        Origin::Bound(p) => format!("bound {}", p.display()),
        Origin::Activated(p) => {
            let p = p.as_deref().unwrap_or(Path::new("?"));
            if p != configured {
                log(format_args!(
                    "warning: systemd's socket is {}, but BROKER_SOCKET (written into users' kubeconfigs) is {}",
                    p.display(),
                    configured.display()
                ));
            }
            format!("socket-activated on {}", p.display())
        }
    };
    let sets: Vec<String> = broker
        .sets
        .iter()
        .map(|s| {
            format!(
                "tokens in {}, refreshed as {} at {}",
                s.store.path().display(),
                s.idp.client_id,
                s.idp.issuer
            )
        })
        .collect();
    log(format_args!(
        "started ({at}; {}; at most {max} connections)",
        sets.join("; ")
    ));
}

/// The accept loop.
async fn serve(listener: UnixListener, broker: Arc<Broker>, max: usize) -> Exit {
    let slots = Slots {
        serve: Arc::new(Semaphore::new(max)),
        refuse: Arc::new(Semaphore::new(max.clamp(8, 64))),
        max,
    };
    let (mut term, mut int) = match (
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()),
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt()),
    ) {
        (Ok(t), Ok(i)) => (t, i),
        _ => return fail(Exit::Software, "cannot handle SIGTERM/SIGINT"),
    };
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => admit(stream, &broker, &slots),
                Err(e) => {
                    // EMFILE and the like: back off instead of spinning.
                    log(format_args!("accept failed: {e}"));
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
    }
    log(format_args!("stopping: waiting for requests in flight"));
    let all = u32::try_from(max).unwrap_or(u32::MAX);
    let _ = tokio::time::timeout(DRAIN_TIMEOUT, slots.serve.acquire_many(all)).await;
    let unlogged = broker
        .log_limit
        .lock()
        .map(|mut l| l.unlogged())
        .unwrap_or_default();
    for (uid, n) in unlogged {
        let line = format!("{n} more refusals not logged since its last line");
        log(format_args!("uid {uid}: {line}"));
        // Already counted in the metrics: only the log gets it.
        refusal_record(uid, &line, Some(n)).send(&broker.sink);
    }
    if let Some(m) = &broker.metrics
        && !m.stop(METRICS_FLUSH)
    {
        log(format_args!(
            "warning: METRICS_FILE: the last counts were not written within {} s",
            METRICS_FLUSH.as_secs()
        ));
    }
    Exit::Ok
}

/// The metrics writer for `METRICS_FILE`, if set (a warning if its
/// thread cannot start: the broker serves without metrics).
fn metrics_writer(settings: &Settings) -> Option<crate::metrics::Background> {
    let path = settings.log.metrics_file.clone()?;
    crate::metrics::Background::start(path.clone())
        .map_err(|e| {
            log(format_args!(
                "warning: METRICS_FILE {}: cannot start its writer ({e}); not counting",
                path.display()
            ))
        })
        .ok()
}

/// Raises the soft limit on open files to what `max` connections need
/// (systemd's `LimitNOFILE` is the hard one), or warns.
fn files_for(max: usize) {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let need = (max + FD_HEADROOM) as u64;
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else {
        return;
    };
    if soft >= need {
        return;
    }
    let _ = setrlimit(Resource::RLIMIT_NOFILE, need.min(hard), hard);
    if need > hard {
        log(format_args!(
            "warning: BROKER_MAX_CONNECTIONS={max} needs {need} open files, but the limit is {hard}: raise LimitNOFILE in ood-k8s-bootstrap-broker.service"
        ));
    }
}

/// The connection slots: those served, and a few more for the quick
/// "busy" answers to connections over the limits.
struct Slots {
    serve: Arc<Semaphore>,
    refuse: Arc<Semaphore>,
    max: usize,
}

/// Serves a new connection in a task of its own if it is within the
/// limits (connections at once, overall and per uid); else answers it
/// "busy" in a short task of its own, or, past even those, closes it.
fn admit(stream: UnixStream, broker: &Arc<Broker>, slots: &Slots) {
    let uid = match stream.peer_cred() {
        Ok(c) => c.uid(),
        Err(e) => {
            log(format_args!("cannot tell who connected ({e}); closed"));
            return;
        }
    };
    let Ok(permit) = slots.serve.clone().try_acquire_owned() else {
        return busy(
            stream,
            uid,
            format!("{} connections at once", slots.max),
            slots,
            broker,
        );
    };
    let cap = match broker.open.lock() {
        Ok(mut open) => (!open.open(uid)).then(|| open.cap()),
        Err(_) => None,
    };
    if let Some(cap) = cap {
        return busy(
            stream,
            uid,
            format!("this uid has {cap} connections open"),
            slots,
            broker,
        );
    }
    let broker = broker.clone();
    tokio::spawn(async move {
        connection(stream, uid, &broker).await;
        if let Ok(mut open) = broker.open.lock() {
            open.close(uid);
        }
        drop(permit);
    });
}

/// Over a connection limit: the request is read (closing a Unix socket
/// with unread data resets it, and the client would see no answer), then
/// "busy", each within a second.
fn busy(mut stream: UnixStream, uid: u32, why: String, slots: &Slots, broker: &Arc<Broker>) {
    let Ok(permit) = slots.refuse.clone().try_acquire_owned() else {
        broker.log_refusal(uid, format_args!("closed at once: busy ({why})"));
        return;
    };
    let broker = broker.clone();
    tokio::spawn(async move {
        let _ = tokio::time::timeout(Duration::from_secs(1), read_line(&mut stream)).await;
        let resp = Response::error(
            ErrorCode::Busy,
            "the credential broker is busy: try again in a moment",
        );
        let _ = tokio::time::timeout(Duration::from_secs(1), async {
            stream.write_all(&resp.to_line()).await?;
            stream.shutdown().await
        })
        .await;
        broker.log_refusal(uid, format_args!("refused: busy ({why})"));
        drop(permit);
    });
}

/// One connection: one request, one answer.
async fn connection(mut stream: UnixStream, uid: u32, broker: &Arc<Broker>) {
    let started = Instant::now();
    let (resp, what) = match tokio::time::timeout(READ_TIMEOUT, read_line(&mut stream)).await {
        Err(_) => (
            Response::error(
                ErrorCode::Timeout,
                format!("no request within {} s", READ_TIMEOUT.as_secs()),
            ),
            Logged::notable("refused: no request in time".into()),
        ),
        Ok(Err(Line::TooLarge)) => (
            Response::error(
                ErrorCode::TooLarge,
                format!("the request is longer than {MAX_REQUEST} bytes"),
            ),
            Logged::notable(format!("refused: request longer than {MAX_REQUEST} bytes")),
        ),
        Ok(Err(Line::Io(e))) => {
            log(format_args!("uid {uid}: connection failed: {e}"));
            return;
        }
        // Connected and left without a word (a probe): nothing to answer.
        Ok(Ok(line)) if line.is_empty() => return,
        Ok(Ok(line)) => request(broker, uid, &line).await,
    };
    let line = resp.to_line();
    let wrote = tokio::time::timeout(WRITE_TIMEOUT, async {
        stream.write_all(&line).await?;
        stream.shutdown().await
    })
    .await;
    let ms = started.elapsed().as_millis();
    let outcome = match wrote {
        Ok(Ok(())) => "",
        Ok(Err(_)) => " (the client left before the answer)",
        Err(_) => " (the client did not take the answer in time)",
    };
    if resp.error.is_some() {
        broker.log_refusal(uid, format_args!("{} ({ms} ms){outcome}", what.text));
    } else if broker.verbose || what.notable {
        log(format_args!("uid {uid}: {} ({ms} ms){outcome}", what.text));
    }
    if resp.error.is_some_and(|e| e.code == ErrorCode::TooLarge) {
        // Take (and drop) what the client still sends, briefly, so that it
        // reads the answer rather than a reset.
        let _ = tokio::time::timeout(Duration::from_secs(1), drain(&mut stream)).await;
    }
}

/// A request's log line, and whether it is logged without -v (everything
/// but a token served from the store is).
struct Logged {
    text: String,
    notable: bool,
}

impl Logged {
    fn notable(text: String) -> Self {
        Self {
            text,
            notable: true,
        }
    }
}

/// A parsed request's answer and its log text.
async fn request(broker: &Arc<Broker>, uid: u32, line: &[u8]) -> (Response, Logged) {
    let req = match protocol::parse_request(line) {
        Ok(r) => r,
        Err(e) => {
            return (
                Response::error(e.code(), e.to_string()),
                Logged::notable(format!("refused: bad request: {e}")),
            );
        }
    };
    let cluster = req.cluster.as_deref().unwrap_or("-");
    let allowed = broker
        .rate
        .lock()
        .map(|mut r| {
            if r.allow(uid, Instant::now()) {
                Ok(())
            } else {
                Err(r.retry_after(uid))
            }
        })
        .unwrap_or(Ok(()));
    if let Err(after) = allowed {
        return (
            Response::error(
                ErrorCode::RateLimited,
                format!(
                    "too many requests for Kubernetes credentials: try again in {} s",
                    after.as_secs()
                ),
            ),
            Logged::notable(format!("cluster {cluster}: refused: over the rate limit")),
        );
    }
    match token(broker, broker.set_for(req.cluster.as_deref()), uid).await {
        Ok((set, served)) => {
            let left = set.expiry.saturating_sub(unix_now());
            let how = match served {
                Served::Stored => "stored".to_owned(),
                Served::Refreshed(d) => format!("refreshed at the IdP in {} ms", d.as_millis()),
                Served::Unrenewed => "still valid, not renewed".to_owned(),
            };
            (
                Response::credential(set.exec_credential()),
                Logged {
                    text: format!(
                        "cluster {cluster}: token for {} served ({how}; valid {left} s)",
                        set.user
                    ),
                    notable: !matches!(served, Served::Stored),
                },
            )
        }
        Err(refusal) => {
            let detail = match &refusal {
                Refusal::Store(e) => format!("store: {e}"),
                Refusal::Account(why) => format!("cannot tell whose the set is: {why}"),
                Refusal::Ended(why) => format!("session ended: {why}"),
                other => format!("{other:?}"),
            };
            (
                refusal.response(uid),
                Logged::notable(format!("cluster {cluster}: refused: {detail}")),
            )
        }
    }
}

/// The uid's token: the stored one while fresh, else refreshed.
/// `at`: the store of the cluster asked about.
async fn token(broker: &Arc<Broker>, at: usize, uid: u32) -> Result<(TokenSet, Served), Refusal> {
    let set = read(broker, at, uid).await?;
    if set.fresh(unix_now()) {
        return Ok((set, Served::Stored));
    }
    let lock = user_lock(broker, at, uid);
    let _guard = lock.lock().await;
    // Whoever held the lock before us may have refreshed it.
    let set = read(broker, at, uid).await?;
    if set.fresh(unix_now()) {
        return Ok((set, Served::Stored));
    }
    refresh(broker, at, set).await
}

/// The uid's set, if it is still to be served: judged against passwd and
/// the session's bounds, and deleted if not. (Reads are small and not
/// fsynced: done in place.)
async fn read(broker: &Arc<Broker>, at: usize, uid: u32) -> Result<TokenSet, Refusal> {
    let found = match broker.sets[at].store.find(uid) {
        Ok(Some(found)) => found,
        Ok(None) => return Err(Refusal::NoCredentials),
        Err(e) => return Err(Refusal::Store(e)),
    };
    let set = match &found {
        Found::Outdated(v) => return Err(end(broker, at, uid, &found, End::Outdated(*v)).await),
        Found::Set(set) => set,
    };
    let lookup = passwd(uid, &set.user).await;
    match session::decide(set, uid, &lookup, unix_now(), broker.max_session_hours) {
        Verdict::Serve => Ok((**set).clone()),
        Verdict::Unsure(why) => Err(Refusal::Account(why)),
        Verdict::Delete(why) => Err(end(broker, at, uid, &found, why).await),
    }
}

/// What passwd (NSS) says of `uid` and `login`; off the async threads (an
/// NSS module may ask a directory server).
async fn passwd(uid: u32, login: &str) -> Lookup {
    use nix::unistd::User;
    let login = login.to_owned();
    let asked = tokio::task::spawn_blocking(move || {
        let uid_name = User::from_uid(Uid::from_raw(uid))?.map(|u| u.name);
        let login_uid = User::from_name(&login)?.map(|u| u.uid.as_raw());
        Ok::<_, nix::Error>(Lookup::Found {
            uid_name,
            login_uid,
        })
    })
    .await;
    match asked {
        Ok(Ok(lookup)) => lookup,
        Ok(Err(e)) => Lookup::Failed(format!("passwd lookup: {e}")),
        Err(e) => Lookup::Failed(format!("passwd lookup: {e}")),
    }
}

/// Deletes the set `found` of `uid` (unless a new login replaced it
/// meanwhile) and logs why; the refusal that ends the session.
async fn end(broker: &Arc<Broker>, at: usize, uid: u32, found: &Found, why: End) -> Refusal {
    let (b, judged) = (broker.clone(), found.clone());
    let removed =
        tokio::task::spawn_blocking(move || b.sets[at].store.remove_if(uid, &judged)).await;
    let login = match found {
        Found::Set(s) => format!("{:?}", s.user),
        Found::Outdated(_) => "an unknown login".to_owned(),
    };
    match removed {
        Ok(Ok(true)) => log(format_args!(
            "uid {uid}: deleted the stored token set of {login}: {why}"
        )),
        Ok(Ok(false)) => {}
        Ok(Err(e)) => log(format_args!(
            "uid {uid}: error: cannot delete the stored token set of {login} ({why}): {e}"
        )),
        Err(e) => log(format_args!("uid {uid}: error: deleting the set: {e}")),
    }
    Refusal::Ended(why)
}

fn user_lock(broker: &Broker, at: usize, uid: u32) -> UserLock {
    let Ok(mut map) = broker.refreshing.lock() else {
        return Arc::new(tokio::sync::Mutex::new(()));
    };
    if map.len() >= 4096 {
        map.retain(|_, l| Arc::strong_count(l) > 1);
    }
    map.entry((at, uid)).or_default().clone()
}

/// Refreshes `set` at the IdP and stores the result.
async fn refresh(
    broker: &Arc<Broker>,
    at: usize,
    set: TokenSet,
) -> Result<(TokenSet, Served), Refusal> {
    let idp = &broker.sets[at].idp;
    let keep_or = |set: TokenSet, refusal: Refusal| {
        if set.usable(unix_now()) {
            Ok((set, Served::Unrenewed))
        } else {
            Err(refusal)
        }
    };
    let Some(used) = set.refresh_token.clone() else {
        return keep_or(
            set,
            Refusal::SessionEnded(
                "your login left no refresh token for Kubernetes, so the token could not be renewed"
                    .into(),
            ),
        );
    };
    if let Err(why) = idp.accepts(&set.refresh) {
        return keep_or(set, Refusal::SessionEnded(why));
    }
    let started = Instant::now();
    let answer = idp.refresh(&set.refresh, &used).await;
    let took = started.elapsed();
    let mut r = Record::new(Command::BrokerRefresh);
    r.user = Some(set.user.clone());
    r.duration_ms = took.as_millis() as u64;
    r.extra = vec![("uid", set.uid.to_string())];
    if let Err(e) = &answer {
        r.exit = 1;
        r.error = Some(e.to_string());
    }
    broker.record(&r);
    let fresh = match answer.and_then(|a| set.refreshed(&a, unix_now())) {
        Ok(fresh) => fresh,
        Err(RefreshError::Refused(why)) => {
            // The session is over: the IdP is not asked again.
            let uid = set.uid;
            return Err(end(
                broker,
                at,
                uid,
                &Found::Set(Box::new(set)),
                End::Refused(why),
            )
            .await);
        }
        Err(RefreshError::Misconfigured(why)) => {
            log(format_args!(
                "uid {}: error: the IdP refused the broker: {why}; check CLIENT_ID/CLIENT_SECRET/IDP_ISSUER_URL in hook.env",
                set.uid
            ));
            return keep_or(set, Refusal::Misconfigured(why));
        }
        Err(RefreshError::Unavailable(why)) => {
            return keep_or(set, Refusal::IdpUnavailable(why));
        }
    };
    if let Err(e) = fresh.encode() {
        let uid = set.uid;
        return Err(end(
            broker,
            at,
            uid,
            &Found::Set(Box::new(set)),
            End::TooLarge(e.0),
        )
        .await);
    }
    match store_if(broker, at, &used, &fresh).await? {
        Replaced::Stored => Ok((fresh, Served::Refreshed(took))),
        // A new login was stored meanwhile: its tokens win.
        Replaced::Superseded(Some(newer)) if newer.usable(unix_now()) => {
            Ok((*newer, Served::Stored))
        }
        Replaced::Superseded(_) => Ok((fresh, Served::Refreshed(took))),
    }
}

/// Stores `new` unless the set changed since the refresh token `used` was
/// read, off the async threads (it fsyncs).
async fn store_if(
    broker: &Arc<Broker>,
    at: usize,
    used: &str,
    new: &TokenSet,
) -> Result<Replaced, Refusal> {
    let (broker, used, new) = (broker.clone(), used.to_owned(), new.clone());
    tokio::task::spawn_blocking(move || broker.sets[at].store.replace_if(Some(&used), &new))
        .await
        .map_err(|e| {
            Refusal::Store(StoreError {
                path: PathBuf::from("(token store)"),
                why: e.to_string(),
            })
        })?
        .map_err(Refusal::Store)
}

/// Reads and drops input until the end of the stream, at most 1 MiB.
async fn drain(stream: &mut UnixStream) {
    let mut buf = [0u8; 4096];
    let mut total = 0;
    while total < (1 << 20) {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => total += n,
        }
    }
}

/// Why no request line was read.
enum Line {
    TooLarge,
    Io(std::io::Error),
}

/// Reads up to a newline (or the end of the stream), at most
/// [`MAX_REQUEST`] bytes.
async fn read_line(stream: &mut UnixStream) -> Result<Vec<u8>, Line> {
    let mut buf = Vec::with_capacity(256);
    let mut chunk = [0u8; 1024];
    loop {
        let n = stream.read(&mut chunk).await.map_err(Line::Io)?;
        if n == 0 {
            return Ok(buf);
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = buf.iter().position(|&b| b == b'\n') {
            if end >= MAX_REQUEST {
                return Err(Line::TooLarge);
            }
            buf.truncate(end);
            return Ok(buf);
        }
        if buf.len() >= MAX_REQUEST {
            return Err(Line::TooLarge);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::site::settings::keys::{self, MAX_BROKER_CONNECTIONS};

    /// Issue 25 (9): the log folds a uid's refusals into one line a
    /// minute; the metric counts each of them, the folded ones too, and
    /// has them all once the broker stops.
    #[test]
    fn every_refusal_is_counted_though_the_log_folds_them() {
        let d = std::env::temp_dir().join(format!("ood-brk-refusals-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        let path = d.join("ood.prom");
        let mut sink = Sink::of(None);
        sink.target = crate::site::settings::LogTarget::None;
        let broker = Broker {
            sets: Vec::new(),
            rate: Mutex::new(RateLimit::new(60)),
            open: Mutex::new(PerUid::new(16)),
            refreshing: Mutex::new(HashMap::new()),
            log_limit: Mutex::new(LogLimit::new(LOG_EVERY)),
            max_session_hours: 12,
            verbose: false,
            sink,
            metrics: Some(crate::metrics::Background::start(path.clone()).unwrap()),
        };
        for uid in [7, 7, 7, 7, 7, 8, 8, 8] {
            broker.log_refusal(uid, format_args!("refused: NoCredentials"));
        }
        assert!(
            broker
                .metrics
                .as_ref()
                .unwrap()
                .stop(Duration::from_secs(30))
        );
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(
            text.contains("\nood_k8s_bootstrap_broker_refusals_total 8\n"),
            "{text}"
        );
    }

    /// The shipped unit's LimitNOFILE covers the largest
    /// BROKER_MAX_CONNECTIONS the key accepts, with the headroom.
    #[test]
    fn the_units_file_limit_covers_the_keys_maximum() {
        let unit = include_str!("../../../packaging/systemd/ood-k8s-bootstrap-broker.service");
        let limit: usize = unit
            .lines()
            .find_map(|l| l.strip_prefix("LimitNOFILE="))
            .expect("LimitNOFILE= in the broker's unit")
            .trim()
            .parse()
            .expect("a number");
        assert!(
            limit >= MAX_BROKER_CONNECTIONS + FD_HEADROOM,
            "LimitNOFILE={limit} < {MAX_BROKER_CONNECTIONS} + {FD_HEADROOM}"
        );
        let key = keys::find("BROKER_MAX_CONNECTIONS").unwrap();
        assert_eq!(key.value, format!("1-{MAX_BROKER_CONNECTIONS}"));
        let mut d = keys::Draft::default();
        assert!((key.parse)(&MAX_BROKER_CONNECTIONS.to_string(), &mut d).is_ok());
        assert!((key.parse)(&(MAX_BROKER_CONNECTIONS + 1).to_string(), &mut d).is_err());
    }
}
