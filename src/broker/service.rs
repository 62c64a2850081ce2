//! `ood-k8s-bootstrap broker`: the service. Accepts connections on the
//! socket, learns each caller's uid from the kernel (`SO_PEERCRED`), reads
//! one bounded request line, and answers with that uid's token — refreshed
//! first when it is about to expire, one refresh at a time per uid — or an
//! error for the user. Everything is bounded: connections at once, request
//! size, time to read and to write, requests per uid and minute, and the
//! IdP's time. One log line per event on stderr (journald), never a token.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::unistd::Uid;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::Semaphore;

use super::idp::Idp;
use super::limits::{PerUid, RateLimit};
use super::listen::{self, Origin};
use super::protocol::{self, ErrorCode, MAX_REQUEST, Response};
use super::store::{Replaced, Store, StoreError};
use super::tokenset::{RefreshError, TokenSet};
use crate::exit::Exit;
use crate::run::{PROG, fail, load_settings, unix_now};

/// Time a client has to send its request line.
const READ_TIMEOUT: Duration = Duration::from_secs(5);
/// Time a client has to take the answer.
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// Time in-flight requests get at shutdown.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(15);

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

/// The service's shared state.
struct Broker {
    store: Store,
    idp: Idp,
    rate: Mutex<RateLimit>,
    /// Connections open per uid.
    open: Mutex<PerUid>,
    /// One refresh at a time per uid.
    refreshing: Mutex<HashMap<u32, Arc<tokio::sync::Mutex<()>>>>,
    verbose: bool,
}

/// Runs the service until SIGTERM or SIGINT.
pub fn main(hook_env: &Path, verbose: u8) -> Exit {
    if !Uid::effective().is_root() {
        return fail(
            Exit::NoPerm,
            "the credential broker must run as root (it reads users' stored tokens and hook.env's client secret)",
        );
    }
    let settings = match load_settings(hook_env) {
        Ok(s) => s,
        Err(exit) => return exit,
    };
    let b = &settings.broker;
    let idp = match Idp::new(&settings.oidc, b.idp_timeout) {
        Ok(i) => i,
        Err(e) => return fail(Exit::Config, format!("{}: {e}", hook_env.display())),
    };
    let store = match Store::open(&b.state_dir) {
        Ok(s) => s,
        Err(e) => return fail(Exit::CantCreate, format!("BROKER_STATE_DIR {e}")),
    };
    let (listener, origin) = match listen::listen(&b.socket) {
        Ok(l) => l,
        Err(e) => return fail(Exit::Unavailable, e),
    };
    let broker = Arc::new(Broker {
        store,
        idp,
        rate: Mutex::new(RateLimit::new(b.requests_per_minute)),
        open: Mutex::new(PerUid::new(b.max_connections)),
        refreshing: Mutex::new(HashMap::new()),
        verbose: verbose > 0,
    });
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
    log(format_args!(
        "started ({at}; tokens in {}; refreshing as {} at {}; at most {max} connections)",
        broker.store.path().display(),
        broker.idp.client_id,
        broker.idp.issuer
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
    Exit::Ok
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
fn busy(mut stream: UnixStream, uid: u32, why: String, slots: &Slots) {
    let Ok(permit) = slots.refuse.clone().try_acquire_owned() else {
        log(format_args!("uid {uid}: closed at once: busy ({why})"));
        return;
    };
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
        log(format_args!("uid {uid}: refused: busy ({why})"));
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
    if broker.verbose || what.notable {
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
    match token(broker, uid).await {
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
async fn token(broker: &Arc<Broker>, uid: u32) -> Result<(TokenSet, Served), Refusal> {
    let set = read(broker, uid).await?;
    if set.fresh(unix_now()) {
        return Ok((set, Served::Stored));
    }
    let lock = user_lock(broker, uid);
    let _guard = lock.lock().await;
    // Whoever held the lock before us may have refreshed it.
    let set = read(broker, uid).await?;
    if set.fresh(unix_now()) {
        return Ok((set, Served::Stored));
    }
    refresh(broker, set).await
}

/// Reads are small and not fsynced: done in place.
async fn read(broker: &Broker, uid: u32) -> Result<TokenSet, Refusal> {
    match broker.store.read(uid) {
        Ok(Some(set)) => Ok(set),
        Ok(None) => Err(Refusal::NoCredentials),
        Err(e) => Err(Refusal::Store(e)),
    }
}

fn user_lock(broker: &Broker, uid: u32) -> Arc<tokio::sync::Mutex<()>> {
    let Ok(mut map) = broker.refreshing.lock() else {
        return Arc::new(tokio::sync::Mutex::new(()));
    };
    if map.len() >= 4096 {
        map.retain(|_, l| Arc::strong_count(l) > 1);
    }
    map.entry(uid).or_default().clone()
}

/// Refreshes `set` at the IdP and stores the result.
async fn refresh(broker: &Arc<Broker>, set: TokenSet) -> Result<(TokenSet, Served), Refusal> {
    let keep_or = |set: TokenSet, refusal: Refusal| {
        if set.usable(unix_now()) {
            Ok((set, Served::Unrenewed))
        } else {
            Err(refusal)
        }
    };
    if let Some(why) = &set.ended {
        let why = format!("the IdP refused the refresh: {why}");
        return keep_or(set, Refusal::SessionEnded(why));
    }
    let Some(used) = set.refresh_token.clone() else {
        return keep_or(
            set,
            Refusal::SessionEnded(
                "your login left no refresh token for Kubernetes, so the token could not be renewed"
                    .into(),
            ),
        );
    };
    if let Err(why) = broker.idp.accepts(&set.refresh) {
        return keep_or(set, Refusal::SessionEnded(why));
    }
    let started = Instant::now();
    let answer = broker.idp.refresh(&set.refresh, &used).await;
    let took = started.elapsed();
    let fresh = match answer.and_then(|a| set.refreshed(&a, unix_now())) {
        Ok(fresh) => fresh,
        Err(RefreshError::Refused(why)) => {
            // Remember, so the IdP is not asked again until the next login.
            log(format_args!(
                "uid {}: the IdP refused the refresh ({why}); the session is over until the next login",
                set.uid
            ));
            let _ = store_if(broker, &used, &set.ended(&why)).await;
            return keep_or(
                set,
                Refusal::SessionEnded(format!("the IdP refused the refresh: {why}")),
            );
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
    match store_if(broker, &used, &fresh).await? {
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
async fn store_if(broker: &Arc<Broker>, used: &str, new: &TokenSet) -> Result<Replaced, Refusal> {
    let (broker, used, new) = (broker.clone(), used.to_owned(), new.clone());
    tokio::task::spawn_blocking(move || broker.store.replace_if(Some(&used), &new))
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
