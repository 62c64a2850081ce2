//! End-to-end tests of the credential broker (`K8S_CREDENTIALS=broker`):
//! the real binary as OnDemand's hook (root, tokens from a real login of
//! the confidential portal client at the local Dex), the real broker as a
//! separate process on a socket of its own (own socket or systemd-style
//! socket activation), real Linux users and real kubectl run as them
//! against the local cluster (`tests/cluster/up`).
//!
//! Each test starts its own broker (socket and token store in scratch
//! directories), and uses Dex users no other test here uses at the same
//! time: dave (the long session), alice and bob (isolation), carol.smith
//! (session ended), erin (a burst at expiry), frank (the IdP's outage): Dex
//! keeps one refresh token per user and client, so a new login ends the
//! refresh token of the one before. Tests that only need *a* valid token store alice's for
//! Linux users of their own (`brk-*`).

mod common;

use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine;
use common::{Tokens, bin, cluster, files_under, linux_user, prefix, scratch, text};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::Value;

/// kubectl and the cluster CA where every user can read them.
fn shared() -> &'static (PathBuf, PathBuf) {
    static SHARED: OnceLock<(PathBuf, PathBuf)> = OnceLock::new();
    SHARED.get_or_init(|| {
        let dir = PathBuf::from(format!("/tmp/ood-e2e-brk-bin-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::set_permissions(&dir, PermissionsExt::from_mode(0o755)).unwrap();
        let kubectl = dir.join("kubectl");
        std::fs::copy(cluster().var("KUBECTL"), &kubectl).unwrap();
        std::fs::set_permissions(&kubectl, PermissionsExt::from_mode(0o755)).unwrap();
        let ca = dir.join("ca.crt");
        std::fs::copy(cluster().var("K8S_CA_FILE"), &ca).unwrap();
        std::fs::set_permissions(&ca, PermissionsExt::from_mode(0o644)).unwrap();
        (kubectl, ca)
    })
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A broker started by the test, with its own hook.env, socket and store.
struct Broker {
    tag: String,
    env: PathBuf,
    socket: PathBuf,
    state: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

impl Broker {
    /// Writes the hook.env (root-only scratch dir; the socket's directory
    /// is made by the broker itself) and starts the broker.
    fn start(tag: &str, extra: &str) -> Self {
        let dir = scratch(tag);
        let sock_dir = PathBuf::from(format!("/tmp/ood-e2e-{tag}-sock-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&sock_dir);
        let socket = sock_dir.join("broker.sock");
        let state = dir.join("tokens");
        let c = cluster();
        let env = c.hook_env(
            &dir,
            &format!(
                "IDP_CA_FILE=\"{}\"\nNAMESPACE_PREFIX=\"{p}\"\nK8S_USERNAME_PREFIX=\"{tag}-\"\n\
                 K8S_CLUSTER_NAME=\"{tag}\"\nK8S_SERVER=\"{}\"\nK8S_CA_FILE=\"{}\"\n\
                 K8S_CREDENTIALS=broker\nBROKER_SOCKET=\"{}\"\nBROKER_STATE_DIR=\"{}\"\n{extra}",
                c.var("OIDC_CA_FILE"),
                c.var("K8S_SERVER"),
                shared().1.display(),
                socket.display(),
                state.display(),
                p = prefix(tag),
            ),
        );
        std::fs::set_permissions(&env, PermissionsExt::from_mode(0o600)).unwrap();
        let mut b = Self {
            tag: tag.to_owned(),
            env,
            socket,
            state,
            log: dir.join("broker.log"),
            child: None,
        };
        b.spawn(None);
        b
    }

    /// Starts the broker process: on its own socket, or (with `activate`)
    /// behind systemd-socket-activate, which binds the socket and passes
    /// it as fd 3 with LISTEN_FDS/LISTEN_PID, as systemd does.
    fn spawn(&mut self, activate: Option<&str>) {
        let log = File::options()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let mut cmd = match activate {
            None => Command::new(bin()),
            Some(tool) => {
                std::fs::create_dir_all(self.socket.parent().unwrap()).unwrap();
                std::fs::set_permissions(
                    self.socket.parent().unwrap(),
                    PermissionsExt::from_mode(0o755),
                )
                .unwrap();
                let mut c = Command::new(tool);
                c.arg("-l").arg(&self.socket).arg(bin());
                c
            }
        };
        cmd.arg("broker")
            .arg("--hook-env")
            .arg(&self.env)
            .arg("-v")
            .env_clear()
            .env("PATH", "/usr/local/bin:/usr/bin:/bin")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        let starts = self.log_text().matches("started (").count();
        self.child = Some(cmd.spawn().expect("start the broker"));
        let t = Instant::now();
        // Ready when it says so. Socket-activated, it starts on the first
        // connection (as with systemd), so one is made.
        let mut probed = false;
        while self.log_text().matches("started (").count() == starts {
            if activate.is_some() && !probed && self.socket.exists() {
                probed = UnixStream::connect(&self.socket).is_ok();
            }
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("the broker exited with {status}: {}", self.log_text());
            }
            assert!(
                t.elapsed() < Duration::from_secs(10),
                "the broker did not listen on {} within 10 s: {}",
                self.socket.display(),
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        if activate.is_some() {
            // SocketMode=0666 in the .socket unit; the tool has no such option.
            std::fs::set_permissions(&self.socket, PermissionsExt::from_mode(0o666)).unwrap();
        }
    }

    /// Sends `signal` and waits (bounded) for the broker to exit.
    fn stop(&mut self, signal: Signal) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let _ = kill(Pid::from_raw(child.id() as i32), signal);
        let t = Instant::now();
        while child.try_wait().unwrap().is_none() {
            assert!(
                t.elapsed() < Duration::from_secs(20),
                "the broker did not stop on {signal}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| c.try_wait().unwrap().is_none())
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The stored set of `uid`, as JSON.
    fn stored(&self, uid: u32) -> Value {
        let path = self.state.join(format!("{uid}.json"));
        serde_json::from_slice(&std::fs::read(&path).unwrap_or_else(|e| {
            panic!("{}: {e}", path.display());
        }))
        .unwrap()
    }

    /// Changes `uid`'s stored set in place, as root (the file keeps its
    /// owner and mode 600): how a test makes a set old or due.
    fn edit_stored(&self, uid: u32, edit: impl FnOnce(&mut Value)) {
        let mut set = self.stored(uid);
        edit(&mut set);
        let path = self.state.join(format!("{uid}.json"));
        std::fs::write(&path, serde_json::to_vec_pretty(&set).unwrap()).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().mode() & 0o777, 0o600);
    }

    /// The hook, as OnDemand runs it, with the login's tokens.
    fn hook(&self, user: &str, tokens: Option<&Tokens>) -> Output {
        let mut cmd = cluster().hook();
        cmd.arg("--user").arg(user).arg("--hook-env").arg(&self.env);
        if let Some(t) = tokens {
            cmd.env("OOD_OIDC_ACCESS_TOKEN", &t.access)
                .env("OOD_OIDC_REFRESH_TOKEN", &t.refresh);
        }
        cmd.output().expect("run the hook")
    }

    /// One raw protocol exchange, as root (uid 0 has no tokens).
    fn raw(&self, request: &[u8]) -> Value {
        let mut s = UnixStream::connect(&self.socket).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let _ = s.write_all(request);
        let mut answer = String::new();
        s.read_to_string(&mut answer).expect("read the answer");
        serde_json::from_str(answer.trim_end()).unwrap_or_else(|e| panic!("{answer:?}: {e}"))
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = kill(Pid::from_raw(c.id() as i32), Signal::SIGKILL);
            let _ = c.wait();
        }
        let _ = std::fs::remove_dir_all(self.socket.parent().unwrap());
    }
}

/// `user`'s command line in a clean environment, as that user.
fn as_user(user: &str, program: &Path, args: &[&str]) -> Output {
    let home = linux_user(user).2;
    Command::new("runuser")
        .args(["-u", user, "--", "env", "-i"])
        .arg(format!("HOME={}", home.display()))
        .arg("PATH=/usr/bin:/bin")
        .arg(program)
        .args(args)
        .current_dir("/")
        .output()
        .expect("runuser")
}

fn kubectl(user: &str, args: &[&str]) -> Output {
    as_user(user, &shared().0, args)
}

/// The plugin exactly as the kubeconfig entry runs it.
fn plugin(user: &str, b: &Broker) -> Output {
    let cfg = config(&linux_user(user).2);
    let exec = entry(&cfg, &format!("{}-{user}", b.tag))["user"]["exec"].clone();
    let args: Vec<&str> = exec["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    as_user(user, Path::new(exec["command"].as_str().unwrap()), &args)
}

fn config(home: &Path) -> Value {
    let text = std::fs::read_to_string(home.join(".kube/config")).expect("read kubeconfig");
    serde_saphyr::from_str(&text).expect("kubeconfig parses")
}

fn entry(cfg: &Value, name: &str) -> Value {
    cfg["users"]
        .as_array()
        .and_then(|a| a.iter().find(|e| e["name"].as_str() == Some(name)))
        .unwrap_or_else(|| panic!("no user entry {name}"))
        .clone()
}

/// `kubectl get pods` in the user's namespace works; kube-system is
/// forbidden (the token is the user's own).
fn assert_kubectl_scoped(user: &str, tag: &str) {
    let own = kubectl(user, &["--context", tag, "get", "pods"]);
    assert!(own.status.success(), "kubectl as {user}: {}", text(&own));
    let other = kubectl(
        user,
        &["--context", tag, "get", "pods", "-n", "kube-system"],
    );
    assert!(
        String::from_utf8_lossy(&other.stderr).contains("Forbidden"),
        "kubectl as {user} in kube-system: {}",
        text(&other)
    );
}

/// The JWT payload's claims (no signature check).
fn claims(jwt: &str) -> Value {
    let payload = jwt.split('.').nth(1).expect("a JWT");
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .expect("base64url");
    serde_json::from_slice(&bytes).expect("JSON claims")
}

fn token_of(out: &Output) -> String {
    assert!(out.status.success(), "plugin: {}", text(out));
    let v: Value = serde_json::from_slice(&out.stdout).expect("ExecCredential JSON");
    assert_eq!(v["apiVersion"], "client.authentication.k8s.io/v1");
    assert_eq!(v["kind"], "ExecCredential");
    assert!(v["status"]["expirationTimestamp"].is_string(), "{v}");
    v["status"]["token"].as_str().unwrap().to_owned()
}

fn assert_absent_from_home(home: &Path, secrets: &[(&str, &str)]) {
    let files = files_under(home);
    assert!(!files.is_empty(), "nothing under {}", home.display());
    for f in files {
        let data = String::from_utf8_lossy(&std::fs::read(&f).unwrap_or_default()).into_owned();
        for (what, s) in secrets {
            assert!(!data.contains(s), "{what} is in {}", f.display());
        }
    }
}

fn fresh_home(user: &str) -> (u32, PathBuf) {
    let (uid, _, home) = linux_user(user);
    // Other test files leave credentials of other modes here.
    let _ = std::fs::remove_dir_all(home.join(".kube"));
    (uid, home)
}

fn ttl() -> u64 {
    let ttl = cluster().var("OIDC_TOKEN_TTL");
    ttl.strip_suffix('s')
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("OIDC_TOKEN_TTL {ttl:?}: expected seconds like 20s"))
}

/// Milliseconds of the broker's log lines that contain `what`.
fn log_ms(log: &str, what: &str) -> Vec<u64> {
    log.lines()
        .filter(|l| l.contains(what))
        .filter_map(|l| {
            let (_, rest) = l.rsplit_once(" (")?;
            rest.strip_suffix(" ms)")?.parse().ok()
        })
        .collect()
}

fn median(mut v: Vec<u64>) -> u64 {
    v.sort_unstable();
    v.get(v.len() / 2).copied().unwrap_or(0)
}

/// (1) and (2): a portal login (confidential client), the hook as OnDemand
/// runs it; the user's kubectl works, still works after twice the token
/// lifetime because the broker refreshed with the portal's client (the
/// stored refresh token rotated), and the home holds neither the client
/// secret nor any refresh token.
#[test]
fn kubectl_works_for_the_whole_session_and_home_holds_no_secret() {
    let user = "dave";
    let (uid, home) = fresh_home(user);
    let b = Broker::start("brksess", "");
    let tokens = cluster().login(user);
    let login_exp = claims(&tokens.access)["exp"].as_u64().unwrap();
    let out = b.hook(user, Some(&tokens));
    assert!(out.status.success(), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("tokens stored for the credential broker"),
        "{err}"
    );
    assert!(!err.contains(&tokens.access) && !err.contains(&tokens.refresh));

    // Stored root-only, for this uid, with the login's refresh token.
    let file = b.state.join(format!("{uid}.json"));
    let meta = std::fs::metadata(&file).unwrap();
    assert_eq!((meta.uid(), meta.mode() & 0o777), (0, 0o600));
    assert_eq!(std::fs::metadata(&b.state).unwrap().mode() & 0o777, 0o700);
    let set = b.stored(uid);
    assert_eq!(set["uid"], uid);
    assert_eq!(set["refresh_token"], tokens.refresh.as_str());
    assert_eq!(set["refresh"]["client_id"], cluster().var("OIDC_CLIENT_ID"));
    assert!(
        !set.to_string()
            .contains(cluster().var("OIDC_CLIENT_SECRET"))
    );

    // The entry: an exec plugin naming the socket, nothing secret.
    let e = entry(&config(&home), "brksess-dave");
    let exec = &e["user"]["exec"];
    assert_eq!(exec["apiVersion"], "client.authentication.k8s.io/v1");
    assert_eq!(exec["interactiveMode"], "Never");
    assert_eq!(exec["args"][0], "broker-credential");
    assert!(
        exec["args"]
            .to_string()
            .contains(&*b.socket.to_string_lossy())
    );
    assert!(!e.to_string().contains(&tokens.access));

    assert_kubectl_scoped(user, "brksess");
    // The user-perceived latency of a stored token: the plugin process.
    let mut plugin_ms = Vec::new();
    for _ in 0..10 {
        let t = Instant::now();
        token_of(&plugin(user, &b));
        plugin_ms.push(t.elapsed().as_millis() as u64);
    }

    // Keep using kubectl until twice the token lifetime has passed.
    let until = login_exp + ttl() + 5;
    let mut runs = 0;
    while now() < until {
        // About ten uses over the window (twice the lifetime), whatever it is.
        std::thread::sleep(Duration::from_secs((2 * ttl() + 5) / 10));
        let out = kubectl(user, &["--context", "brksess", "get", "pods"]);
        assert!(
            out.status.success(),
            "kubectl as {user}, {} s after login: {}\nbroker log:\n{}",
            now() + ttl() - login_exp,
            text(&out),
            b.log_text()
        );
        runs += 1;
    }
    assert!(runs >= 5, "only {runs} kubectl runs");
    assert_kubectl_scoped(user, "brksess");

    // It was the broker's refresh that kept it working, more than once,
    // and the IdP rotated the refresh token, which was stored.
    let set = b.stored(uid);
    assert_eq!(set["source"], "refresh");
    assert!(set["expiry"].as_u64().unwrap() > login_exp + ttl() / 2);
    let rotated = set["refresh_token"].as_str().unwrap().to_owned();
    assert_ne!(rotated, tokens.refresh, "the refresh token did not rotate");
    let log = b.log_text();
    let refreshes = log_ms(&log, "refreshed at the IdP");
    assert!(refreshes.len() >= 2, "refreshes: {refreshes:?}\n{log}");
    assert!(
        !log.contains(&tokens.access) && !log.contains(&rotated) && !log.contains(&tokens.refresh)
    );

    // (2) Nothing secret in the home directory.
    assert_absent_from_home(
        &home,
        &[
            (
                "the portal's client secret",
                cluster().var("OIDC_CLIENT_SECRET"),
            ),
            ("the login's refresh token", &tokens.refresh),
            ("the current refresh token", &rotated),
        ],
    );

    let served = log_ms(&log, "served (stored");
    eprintln!(
        "figures: broker answer (stored token) median {} ms over {} requests; plugin as the user \
         (runuser + exec + request) median {} ms; refresh at the IdP (Dex, through the broker) \
         median {} ms over {} refreshes",
        median(served.clone()),
        served.len(),
        median(plugin_ms),
        median(refreshes.clone()),
        refreshes.len()
    );
}

/// (3) Each user gets their own token, whoever else is logged in; a user
/// without stored tokens gets none. An admin's run without tokens leaves
/// the stored set alone.
#[test]
fn another_user_gets_only_their_own_token() {
    let b = Broker::start("brkiso", "");
    let mut uids = Vec::new();
    for user in ["alice", "bob"] {
        let (uid, _) = fresh_home(user);
        uids.push(uid);
        let out = b.hook(user, Some(&cluster().login(user)));
        assert!(out.status.success(), "{}", text(&out));
    }
    let alice_token = b.stored(uids[0])["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    let bob_token = token_of(&plugin("bob", &b));
    assert_ne!(bob_token, alice_token);
    assert_eq!(claims(&bob_token)["preferred_username"], "bob");
    let alice = token_of(&plugin("alice", &b));
    assert_eq!(alice, alice_token);
    assert_eq!(claims(&alice)["preferred_username"], "alice");
    assert_kubectl_scoped("bob", "brkiso");
    assert_kubectl_scoped("alice", "brkiso");

    // A real user with no stored tokens, with bob's kubeconfig entry
    // copied: still nothing (the broker goes by uid, not by the entry).
    let nobody = "brk-nobody";
    let (_, home) = fresh_home(nobody);
    let out = b.hook(nobody, None);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        !b.state
            .join(format!("{}.json", linux_user(nobody).0))
            .exists()
    );
    let bob_cfg = std::fs::read_to_string(linux_user("bob").2.join(".kube/config")).unwrap();
    let cfg_path = home.join(".kube/config");
    std::fs::create_dir_all(cfg_path.parent().unwrap()).unwrap();
    std::fs::write(&cfg_path, bob_cfg).unwrap();
    let (uid, gid, _) = linux_user(nobody);
    for p in [cfg_path.parent().unwrap(), &cfg_path] {
        std::os::unix::fs::chown(p, Some(uid), Some(gid)).unwrap();
    }
    let out = kubectl(nobody, &["--context", "brkiso", "get", "pods"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no Kubernetes credentials stored for you")
            && err.contains("log in to OnDemand"),
        "{}",
        text(&out)
    );
    assert!(!err.contains(&bob_token) && !err.contains(&alice_token));

    // An admin re-bootstrapping alice (no tokens) leaves her set alone.
    let file = b.state.join(format!("{}.json", uids[0]));
    let before = std::fs::read(&file).unwrap();
    let out = b.hook("alice", None);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(std::fs::read(&file).unwrap(), before);
}

/// (4) Broker down: kubectl fails at once with a message naming it, both
/// when the socket is gone (stopped cleanly) and when it is stale (killed).
#[test]
fn broker_down_is_a_clear_quick_error() {
    let user = "brk-down";
    fresh_home(user);
    let mut b = Broker::start("brkdown", "");
    let out = b.hook(user, Some(&cluster().login("alice")));
    assert!(out.status.success(), "{}", text(&out));
    token_of(&plugin(user, &b));

    for (signal, left) in [(Signal::SIGKILL, true), (Signal::SIGTERM, false)] {
        if !b.running() {
            b.spawn(None); // replaces the stale socket
            token_of(&plugin(user, &b));
        }
        b.stop(signal);
        assert_eq!(b.socket.exists(), left, "socket after {signal}");
        let t = Instant::now();
        let out = kubectl(user, &["--context", "brkdown", "get", "pods"]);
        let took = t.elapsed();
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("the credential broker is not running")
                && err.contains(&*b.socket.to_string_lossy())
                && err.contains("ask your administrator"),
            "after {signal}: {}",
            text(&out)
        );
        assert!(took < Duration::from_secs(10), "kubectl took {took:?}");
    }
}

/// (5) The IdP refuses the refresh (the session's refresh token was used
/// elsewhere and rotated away, as a portal refreshing its own session
/// would): "session ended, log in again", and the stored set is deleted,
/// so the IdP is not asked again and nothing is left to serve; a new login
/// recovers. (The stored access token is made due for a refresh by
/// editing its expiry in the root-only store, rather than waiting for it.)
/// carol.smith's home, and her one Dex refresh token, are shared by the
/// tests that use her.
static CAROL: std::sync::Mutex<()> = std::sync::Mutex::new(());

#[test]
fn a_refused_refresh_says_log_in_again() {
    let _carol = CAROL.lock().unwrap_or_else(|e| e.into_inner());
    let user = "carol.smith";
    let (uid, _) = fresh_home(user);
    let b = Broker::start("brkend", "");
    let tokens = cluster().login(user);
    let out = b.hook(user, Some(&tokens));
    assert!(out.status.success(), "{}", text(&out));
    assert_kubectl_scoped(user, "brkend");

    // Someone else refreshes the same refresh token: Dex rotates it.
    refresh_elsewhere(&tokens.refresh);
    b.edit_stored(uid, |set| set["expiry"] = now().into());

    let file = b.state.join(format!("{uid}.json"));
    for (round, says) in [
        (
            0,
            "your OnDemand session has ended (the IdP refused the refresh",
        ),
        (1, "no Kubernetes credentials stored for you"),
    ] {
        let t = Instant::now();
        let out = kubectl(user, &["--context", "brkend", "get", "pods"]);
        assert!(!out.status.success(), "round {round}: {}", text(&out));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains(says) && err.contains("log in to OnDemand"),
            "round {round}: {}\nbroker log:\n{}",
            text(&out),
            b.log_text()
        );
        assert!(t.elapsed() < Duration::from_secs(15));
        assert!(!file.exists(), "round {round}: the refused set was kept");
    }
    // The IdP was asked once; the set is gone.
    let log = b.log_text();
    assert_eq!(
        log.matches("deleted the stored token set of \"carol.smith\": the IdP refused the refresh")
            .count(),
        1,
        "{log}"
    );

    // Logging in again stores a new session.
    let out = b.hook(user, Some(&cluster().login(user)));
    assert!(out.status.success(), "{}", text(&out));
    assert_kubectl_scoped(user, "brkend");
}

/// A refresh of `refresh_token` with the portal's client, as the portal
/// would do it for its own session.
fn refresh_elsewhere(refresh_token: &str) {
    let c = cluster();
    let form = format!(
        "grant_type=refresh_token&refresh_token={refresh_token}&client_id={}&client_secret={}",
        c.var("OIDC_CLIENT_ID"),
        c.var("OIDC_CLIENT_SECRET")
    );
    let out = c.dex_token_request(&form, true);
    assert!(out.status.success(), "refresh elsewhere: {}", text(&out));
}

/// (6) Limits: connections at once, request size, idle clients, malformed
/// and forged requests, per-uid rate — each refused with its code, and the
/// broker stays up.
#[test]
fn limits_refuse_and_the_broker_stays_up() {
    let mut b = Broker::start(
        "brklim",
        "BROKER_MAX_CONNECTIONS=2\nBROKER_REQUESTS_PER_MINUTE=8\n",
    );
    let code = |v: &Value| v["error"]["code"].as_str().unwrap_or("").to_owned();

    // Two idle connections fill the broker; a third is told "busy" at once.
    let idle: Vec<UnixStream> = (0..2)
        .map(|_| UnixStream::connect(&b.socket).unwrap())
        .collect();
    std::thread::sleep(Duration::from_millis(200));
    let t = Instant::now();
    assert_eq!(code(&b.raw(b"{\"v\":1}\n")), "busy");
    // Told before the idle ones time out (5 s), not after a slot freed.
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    // The idle ones are answered "timeout" and closed after 5 s.
    for mut s in idle {
        let mut answer = String::new();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.read_to_string(&mut answer).unwrap();
        assert!(answer.contains("\"timeout\""), "{answer}");
    }
    assert!(
        t.elapsed() < Duration::from_secs(5) + common::MARGIN,
        "{:?}",
        t.elapsed()
    );

    // An oversized request: refused, connection closed.
    let mut s = UnixStream::connect(&b.socket).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let _ = s.write_all(&vec![b'a'; 64 * 1024]);
    let _ = s.shutdown(std::net::Shutdown::Write);
    let mut answer = String::new();
    let _ = s.read_to_string(&mut answer);
    assert!(answer.contains("\"too_large\""), "{answer:?}");

    // Forged, malformed and future requests.
    assert_eq!(code(&b.raw(b"{\"v\":1,\"uid\":1000}\n")), "bad_request");
    assert_eq!(code(&b.raw(b"GET / HTTP/1.0\r\n\r\n")), "bad_request");
    assert_eq!(code(&b.raw(b"{\"v\":2}\n")), "unsupported_version");

    // Still up and answering; then the per-uid rate (bursts of 2).
    assert_eq!(code(&b.raw(b"{\"v\":1}\n")), "no_credentials");
    let codes: Vec<String> = (0..4).map(|_| code(&b.raw(b"{\"v\":1}\n"))).collect();
    assert!(codes.iter().any(|c| c == "rate_limited"), "{codes:?}");
    assert!(b.running(), "the broker died: {}", b.log_text());
    // All were root's (uid 0) within a minute: its first refusal is
    // logged, the others counted; the count is logged at shutdown.
    b.stop(Signal::SIGTERM);
    let log = b.log_text();
    let lines: Vec<&str> = log.lines().filter(|l| l.contains("uid 0: ")).collect();
    assert_eq!(lines.len(), 2, "{log}");
    assert!(lines[0].contains("refused: busy"), "{log}");
    assert!(
        lines[1].ends_with("uid 0: 11 more refusals not logged since its last line"),
        "{log}"
    );
}

/// One user holding connections open cannot keep others out: a uid may
/// hold an eighth of BROKER_MAX_CONNECTIONS (at least 2).
#[test]
fn one_user_cannot_take_every_connection() {
    let user = "brk-fair";
    fresh_home(user);
    let b = Broker::start("brkfair", "BROKER_MAX_CONNECTIONS=16\n");
    let out = b.hook(user, Some(&cluster().login("alice")));
    assert!(out.status.success(), "{}", text(&out));
    let _idle: Vec<UnixStream> = (0..2)
        .map(|_| UnixStream::connect(&b.socket).unwrap())
        .collect();
    std::thread::sleep(Duration::from_millis(200));
    let v = b.raw(b"{\"v\":1}\n");
    assert_eq!(v["error"]["code"], "busy", "{v}");
    // Root is at its cap; the user is served.
    token_of(&plugin(user, &b));
    assert!(
        b.log_text()
            .contains("uid 0: refused: busy (this uid has 2 connections open)"),
        "{}",
        b.log_text()
    );
}

/// Socket activation as systemd does it (LISTEN_FDS/LISTEN_PID, fd 3),
/// here by systemd-socket-activate; and the hook's refusal of an unsafe
/// token store.
#[test]
fn socket_activation_and_an_unsafe_store() {
    let user = "brk-act";
    fresh_home(user);
    let mut b = Broker::start("brkact", "");
    b.stop(Signal::SIGTERM);
    b.spawn(Some("systemd-socket-activate"));
    let out = b.hook(user, Some(&cluster().login("alice")));
    assert!(out.status.success(), "{}", text(&out));
    let token = token_of(&plugin(user, &b));
    assert_eq!(claims(&token)["preferred_username"], "alice");
    assert!(
        b.log_text().contains("socket-activated"),
        "{}",
        b.log_text()
    );
    // the activated broker stops cleanly too, leaving the socket to systemd
    b.stop(Signal::SIGTERM);
    assert!(b.socket.exists());

    // A token store that is a symlink: the hook refuses it, changes nothing.
    let real = b.state.with_extension("real");
    std::fs::create_dir_all(&real).unwrap();
    let _ = std::fs::remove_dir_all(&b.state);
    std::os::unix::fs::symlink(&real, &b.state).unwrap();
    let before = std::fs::read(linux_user(user).2.join(".kube/config")).unwrap();
    let out = b.hook(user, Some(&cluster().login("alice")));
    assert_eq!(out.status.code(), Some(73), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("symbolic link") && err.contains("BROKER_STATE_DIR"),
        "{err}"
    );
    assert_eq!(std::fs::read_dir(&real).unwrap().count(), 0);
    assert_eq!(
        std::fs::read(linux_user(user).2.join(".kube/config")).unwrap(),
        before
    );
}

/// The whole promise on Keycloak, which most sites run: a login through the
/// confidential portal client, the hook as OnDemand runs it with a token
/// exchange for the `kubernetes` audience and `K8S_CREDENTIALS=broker`. The
/// user's kubectl works, still works after twice the access-token lifetime
/// (the broker refreshed the exchange's refresh token as the portal
/// client), every token kubectl gets carries the Kubernetes audience, and
/// the home holds neither the client secret nor any refresh token.
#[test]
fn keycloak_exchange_and_broker_last_the_whole_session() {
    let _carol = CAROL.lock().unwrap_or_else(|e| e.into_inner());
    let c = cluster();
    let user = "carol.smith";
    let (uid, home) = fresh_home(user);
    let audience = c.var("KEYCLOAK_K8S_AUDIENCE");
    let b = Broker::start(
        "brkkc",
        &format!(
            "IDP_ISSUER_URL=\"{}\"\nIDP_CA_FILE=\"{}\"\nCLIENT_ID=\"{}\"\nCLIENT_SECRET=\"{}\"\n\
             K8S_TOKEN_EXCHANGE_AUDIENCE=\"{audience}\"\nK8S_TOKEN_EXCHANGE_SCOPE=\"{}\"\n",
            c.var("KEYCLOAK_ISSUER"),
            c.var("KEYCLOAK_CA_FILE"),
            c.var("KEYCLOAK_PORTAL_CLIENT_ID"),
            c.var("KEYCLOAK_PORTAL_CLIENT_SECRET"),
            c.var("KEYCLOAK_K8S_AUDIENCE_SCOPE"),
        ),
    );
    let tokens = c.keycloak_login(user);
    assert!(
        !common::audiences(&common::jwt_claims(&tokens.access))
            .iter()
            .any(|a| a == audience),
        "the portal's own token should not be for Kubernetes"
    );
    let out = b.hook(user, Some(&tokens));
    assert!(out.status.success(), "{}", text(&out));
    let set = b.stored(uid);
    let exchanged = set["refresh_token"]
        .as_str()
        .expect("a refresh token from the exchange")
        .to_owned();
    assert_ne!(
        exchanged, tokens.refresh,
        "the login's refresh token was stored, not the exchange's"
    );
    assert_kubectl_scoped(user, "brkkc");

    let ttl: u64 = c
        .var("KEYCLOAK_TOKEN_TTL")
        .parse()
        .expect("KEYCLOAK_TOKEN_TTL seconds");
    let until = now() + 2 * ttl + 5;
    let mut tokens_seen = std::collections::BTreeSet::new();
    while now() < until {
        std::thread::sleep(Duration::from_secs(ttl / 3));
        let token = token_of(&plugin(user, &b));
        let aud = common::audiences(&common::jwt_claims(&token));
        assert!(
            aud.iter().any(|a| a == audience),
            "token for {aud:?}, not {audience}"
        );
        tokens_seen.insert(token);
        let out = kubectl(user, &["--context", "brkkc", "get", "pods"]);
        assert!(
            out.status.success(),
            "kubectl as {user}: {}\nbroker log:\n{}",
            text(&out),
            b.log_text()
        );
    }
    assert!(tokens_seen.len() >= 2, "the broker never refreshed");
    assert_eq!(b.stored(uid)["source"], "refresh");
    assert_absent_from_home(
        &home,
        &[
            (
                "the portal's client secret",
                c.var("KEYCLOAK_PORTAL_CLIENT_SECRET"),
            ),
            ("the login's refresh token", &tokens.refresh),
            ("the exchange's refresh token", &exchanged),
            (
                "the current refresh token",
                b.stored(uid)["refresh_token"].as_str().unwrap(),
            ),
        ],
    );
}

/// The user of a test of its own: deleted from passwd if a run before
/// left it there.
fn userdel(user: &str) {
    let _ = Command::new("userdel").arg(user).output();
}

/// Issue 16 (2): a uid reused by another login. brk-reuse-a logs in (its
/// set is stored); the site deletes brk-reuse-a and gives its uid (and
/// home) to brk-reuse-b. B's exec plugin, through the broker, does not get
/// A's token: the session has ended, and A's set is deleted.
#[test]
fn a_reused_uid_does_not_get_the_old_owners_token() {
    let (a, b_name) = ("brk-reuse-a", "brk-reuse-b");
    // A fresh A each run: the home B inherited goes with B.
    userdel(b_name);
    let _ = Command::new("userdel").args(["-r", a]).output();
    let _ = std::fs::remove_dir_all(format!("/home/{a}"));
    let (uid, home) = fresh_home(a);
    let logs = scratch("brkreuse-log");
    let syslog = common::SyslogListener::bind(&logs, "log.sock");
    let b = Broker::start(
        "brkreuse",
        &format!("SYSLOG_SOCKET={}\n", syslog.path.display()),
    );
    let tokens = cluster().login("alice");
    let out = b.hook(a, Some(&tokens));
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(b.stored(uid)["user"], a);
    let token = token_of(&plugin(a, &b));

    // The site deletes A and gives A's uid and home to B.
    let out = Command::new("userdel").arg(a).output().unwrap();
    assert!(out.status.success(), "userdel {a}: {}", text(&out));
    let out = Command::new("useradd")
        .args(["-o", "-u", &uid.to_string(), "-M", "-s", "/bin/bash", "-d"])
        .arg(&home)
        .arg(b_name)
        .output()
        .unwrap();
    assert!(out.status.success(), "useradd {b_name}: {}", text(&out));
    let out = plugin_as(b_name, &b);
    userdel(b_name);
    let _ = std::fs::remove_dir_all(&home);
    assert!(
        !out.status.success(),
        "B got a token (the old owner's)\nbroker log:\n{}",
        b.log_text()
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("your OnDemand session has ended")
            && err.contains("another login with your uid")
            && err.contains("log in to OnDemand again"),
        "{}",
        text(&out)
    );
    assert!(!String::from_utf8_lossy(&out.stdout).contains(&token));
    assert!(!b.state.join(format!("{uid}.json")).exists());
    let log = b.log_text();
    assert!(
        log.contains(&format!(
            "uid {uid}: deleted the stored token set of \"{a}\": stored for login \"{a}\" but uid {uid} is now \"{b_name}\" in passwd"
        )),
        "{log}"
    );
    assert!(!log.contains(&token));
    // The refusal's record (issue 18): the uid and what ended the session.
    let refusals: Vec<_> = syslog
        .received()
        .iter()
        .filter_map(|d| common::rfc5424_fields(d))
        .filter(|r| r["command"] == "broker-refusal")
        .collect();
    assert_eq!(refusals.len(), 1, "{refusals:?}");
    assert_eq!(refusals[0]["uid"], uid.to_string());
    assert!(
        refusals[0]["error"].contains("session ended"),
        "{refusals:?}"
    );
    assert!(!format!("{refusals:?}").contains(&token));
}

/// The exec plugin as the broker entry runs it, for a user whose
/// kubeconfig is someone else's (the same home).
fn plugin_as(user: &str, b: &Broker) -> Output {
    let timeout = "20";
    as_user(
        user,
        &bin(),
        &[
            "broker-credential",
            "--socket",
            &b.socket.to_string_lossy(),
            "--cluster",
            &b.tag,
            "--timeout",
            timeout,
        ],
    )
}

/// Issue 16 (2): a set older than BROKER_MAX_SESSION_HOURS since its login
/// is refused and deleted (its login time is moved back in the root-only
/// store, as if the login had been that long ago). A refresh within the
/// bound (the access token made due) keeps the login time, so the bound
/// still counts from the login. The Dex login is carol.smith's, whose
/// refresh token no test beside this one replaces (CAROL).
#[test]
fn a_session_older_than_the_maximum_ends() {
    let _carol = CAROL.lock().unwrap_or_else(|e| e.into_inner());
    let user = "brk-old";
    let (uid, _) = fresh_home(user);
    let b = Broker::start("brkold", "BROKER_MAX_SESSION_HOURS=2\n");
    let out = b.hook(user, Some(&cluster().login("carol.smith")));
    assert!(out.status.success(), "{}", text(&out));
    let stored_at = b.stored(uid)["stored_at"].as_u64().expect("stored_at");
    assert!(stored_at.abs_diff(now()) < 60, "{stored_at}");
    // Within the bound: served, also by a refresh, which keeps the login
    // time.
    let login_at = now() - 2 * 3600 + 120;
    let used = b.stored(uid)["refresh_token"].clone();
    b.edit_stored(uid, |s| {
        s["stored_at"] = login_at.into();
        s["expiry"] = now().into();
    });
    token_of(&plugin(user, &b));
    let set = b.stored(uid);
    assert_eq!(set["source"], "refresh", "the due token was not refreshed");
    assert_ne!(
        set["refresh_token"], used,
        "the due token was not refreshed"
    );
    assert_eq!(
        set["stored_at"], login_at,
        "the refresh moved the login time"
    );
    b.edit_stored(uid, |s| s["stored_at"] = (now() - 2 * 3600 - 1).into());
    let out = plugin(user, &b);
    assert!(!out.status.success(), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("your OnDemand session has ended (it is over 2 h since your login)")
            && err.contains("log in to OnDemand again"),
        "{}",
        text(&out)
    );
    assert!(!b.state.join(format!("{uid}.json")).exists());
    assert!(
        b.log_text().contains(
            "deleted the stored token set of \"brk-old\": older than BROKER_MAX_SESSION_HOURS=2"
        ),
        "{}",
        b.log_text()
    );
    // A new login starts a new session.
    let out = b.hook(user, Some(&cluster().login("carol.smith")));
    assert!(out.status.success(), "{}", text(&out));
    token_of(&plugin(user, &b));
}

/// Issue 16 (2): a login whose tokens the broker could not read back is
/// refused when the hook would store them, clearly, with nothing stored,
/// no kubeconfig entry and, without a token exchange, the cluster
/// untouched: the namespace, asked of the API server, does not exist (and
/// the same login with tokens of a normal size makes it, so the check
/// looked at the right name). (An ID token of 128 KiB and a refresh token
/// of 128 KiB, the most an environment variable holds each, as a portal
/// passes them: over the 256 KiB a set may be.)
#[test]
fn tokens_too_large_to_store_are_refused_at_login() {
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let user = "brk-big";
    let (uid, home) = fresh_home(user);
    let b = Broker::start("brkbig", "");
    let login = cluster().login("alice");
    let claims = serde_json::json!({"exp": now() + 300, "groups": "g".repeat(98_000)});
    let id = format!(
        "{}.{}.c2ln",
        URL_SAFE_NO_PAD.encode(br#"{"alg":"RS256"}"#),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    );
    assert!(id.len() > 130_000 && id.len() < 131_050, "{}", id.len());
    let mut cmd = cluster().hook();
    cmd.arg("--user")
        .arg(user)
        .arg("--hook-env")
        .arg(&b.env)
        .env("OOD_OIDC_ACCESS_TOKEN", &login.access)
        .env("OOD_OIDC_REFRESH_TOKEN", "r".repeat(131_040))
        .env("OOD_OIDC_ID_TOKEN", &id);
    let out = cmd.output().unwrap();
    assert_eq!(out.status.code(), Some(65), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("kubeconfig of user {user} left unchanged"))
            && err.contains("more than the 262144 the broker stores"),
        "{err}"
    );
    assert!(!err.contains(&login.access));
    assert!(!b.state.join(format!("{uid}.json")).exists());
    assert!(!home.join(".kube/config").exists());
    // Refused before anything was changed, on the cluster too.
    let ns = format!("{}{user}", prefix("brkbig"));
    assert!(
        cluster().get_json(&["namespace", &ns]).is_none(),
        "a refused login made namespace {ns}:\n{}",
        text(&out)
    );
    let out = b.hook(user, Some(&login));
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        cluster().get_json(&["namespace", &ns]).is_some(),
        "{ns} not made by the login with normal tokens:\n{}",
        text(&out)
    );
}

/// Issue 16 (2): one user cannot drown the broker's log. 200 refused
/// requests of one uid (root, without tokens) in a few seconds give one
/// log line, and the count of the others, at shutdown. Issue 25 (9): the
/// metric counts all 200 (the log folds lines; the metric must not), the
/// last ones written at shutdown.
#[test]
fn a_flood_of_refusals_is_one_log_line_with_a_count() {
    let metrics_file = scratch("brkflood-m").join("ood.prom");
    let mut b = Broker::start(
        "brkflood",
        &format!("METRICS_FILE={}\n", metrics_file.display()),
    );
    for _ in 0..200 {
        assert!(b.raw(b"{\"v\":1}\n")["error"]["code"].is_string());
    }
    b.stop(Signal::SIGTERM);
    let metrics = std::fs::read_to_string(&metrics_file).unwrap_or_default();
    assert!(
        metrics.contains("\nood_k8s_bootstrap_broker_refusals_total 200\n"),
        "{metrics}\n{}",
        b.log_text()
    );
    let log = b.log_text();
    let lines: Vec<&str> = log.lines().filter(|l| l.contains("uid 0: ")).collect();
    assert_eq!(lines.len(), 2, "{log}");
    assert!(lines[0].contains("refused: NoCredentials"), "{log}");
    assert!(
        lines[1].ends_with("uid 0: 199 more refusals not logged since its last line"),
        "{log}"
    );
}

/// Issue 25 (3): a FIFO at METRICS_FILE (its directory is node-exporter's
/// account's) and refusals of several uids do not stop a valid user being
/// served: counting never holds a thread a request needs (the refusals'
/// metric updates blocked on the FIFO and took the broker's whole
/// blocking pool). The broker warns about the file, and stays up.
#[test]
fn a_fifo_metrics_file_and_many_refusals_do_not_stop_a_valid_user() {
    let user = "brk-mfifo";
    fresh_home(user);
    let refused: Vec<String> = (1..=6).map(|n| format!("brk-mfifo-r{n}")).collect();
    for r in &refused {
        linux_user(r);
    }
    let metrics_file = scratch("brkmfifo-m").join("ood.prom");
    let mut b = Broker::start(
        "brkmfifo",
        &format!("METRICS_FILE={}\n", metrics_file.display()),
    );
    let out = b.hook(user, Some(&cluster().login("alice")));
    assert!(out.status.success(), "{}", text(&out));
    let _ = std::fs::remove_file(&metrics_file);
    nix::unistd::mkfifo(
        &metrics_file,
        nix::sys::stat::Mode::from_bits_truncate(0o644),
    )
    .unwrap();
    // Each uid refused (no stored set), twice.
    let calls: Vec<_> = refused
        .iter()
        .chain(refused.iter())
        .map(|r| {
            let (r, socket, tag) = (r.clone(), b.socket.clone(), b.tag.clone());
            std::thread::spawn(move || {
                as_user(
                    &r,
                    &bin(),
                    &[
                        "broker-credential",
                        "--socket",
                        &socket.to_string_lossy(),
                        "--cluster",
                        &tag,
                    ],
                )
            })
        })
        .collect();
    for call in calls {
        let out = call.join().unwrap();
        assert!(!out.status.success(), "{}", text(&out));
    }
    for round in 0..3 {
        let out = plugin(user, &b);
        assert!(
            out.status.success(),
            "round {round}: {}\nbroker log:\n{}",
            text(&out),
            b.log_text()
        );
    }
    assert!(b.running(), "{}", b.log_text());
    let log = b.log_text();
    assert!(
        log.contains(&format!("warning: METRICS_FILE {}", metrics_file.display())),
        "{log}"
    );
    b.stop(Signal::SIGTERM);
}

/// The shipped units, started as shipped: the socket unit's ExecStartPre
/// makes the directory, its ListenStream= (the path a hook.env without
/// BROKER_SOCKET uses) is where the service's ExecStart= answers, with the
/// socket's SocketMode=, so a user's kubectl gets that user's token through
/// it. Values come from the unit files; only the binary's path and hook.env
/// are the test's (and systemd-socket-activate stands in for systemd, which
/// sets SocketMode= itself).
#[test]
fn the_shipped_broker_units_serve_a_user_on_the_default_socket() {
    let user = "brk-units";
    fresh_home(user);
    let listen = common::unit_values("ood-k8s-bootstrap-broker.socket", "ListenStream");
    assert_eq!(listen.len(), 1, "{listen:?}");
    let socket = PathBuf::from(&listen[0]);
    // The default hook.env names the same socket.
    let example = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("hooks/hook.env.example"),
    )
    .unwrap();
    assert!(
        example.contains(&format!("BROKER_SOCKET=\"{}\"", socket.display())),
        "ListenStream={} is not the default BROKER_SOCKET",
        socket.display()
    );
    let mode = common::unit_values("ood-k8s-bootstrap-broker.socket", "SocketMode");
    let mode = u32::from_str_radix(&mode[0], 8).unwrap();
    assert_eq!(mode & 0o006, 0o006, "users must be able to connect");
    // ExecStartPre, as written (its own path and arguments).
    for pre in common::unit_values("ood-k8s-bootstrap-broker.socket", "ExecStartPre") {
        let argv: Vec<&str> = pre.split_whitespace().collect();
        let out = Command::new(argv[0]).args(&argv[1..]).output().unwrap();
        assert!(out.status.success(), "{pre}: {}", text(&out));
    }
    let dir_mode = common::unit_values("ood-k8s-bootstrap-broker.socket", "DirectoryMode");
    let meta = std::fs::metadata(socket.parent().unwrap()).unwrap();
    assert_eq!(
        format!("{:04o}", meta.permissions().mode() & 0o7777),
        dir_mode[0]
    );

    // The broker, as the service's ExecStart= says, on that socket.
    let mut b = Broker::start("brkunits", "");
    b.stop(Signal::SIGTERM);
    // The same hook.env without BROKER_SOCKET: the default.
    let text_env = std::fs::read_to_string(&b.env).unwrap();
    let defaulted: String = text_env
        .lines()
        .filter(|l| !l.starts_with("BROKER_SOCKET="))
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(&b.env, defaulted).unwrap();
    b.socket = socket.clone();
    let exec = common::unit_values("ood-k8s-bootstrap-broker.service", "ExecStart");
    let argv: Vec<&str> = exec[0].split_whitespace().collect();
    assert_eq!(
        argv[1..],
        ["broker", "--hook-env", "/etc/ood/config/hook.env"],
        "{exec:?}"
    );
    let _ = std::fs::remove_file(&socket);
    b.spawn(Some("systemd-socket-activate"));
    std::fs::set_permissions(&socket, PermissionsExt::from_mode(mode)).unwrap();
    let out = b.hook(user, Some(&cluster().login("alice")));
    assert!(out.status.success(), "{}", text(&out));
    let token = token_of(&plugin(user, &b));
    assert_eq!(claims(&token)["preferred_username"], "alice");
    b.stop(Signal::SIGTERM);
    let _ = std::fs::remove_file(&socket);
}

/// Tokens the broker refreshed, by its log.
fn refreshes(b: &Broker) -> usize {
    b.log_text().matches("refreshed at the IdP").count()
}

/// Several kubectl calls at the moment the token is due: the broker asks
/// Dex (which rotates refresh tokens) once, every call succeeds with the
/// one new token, and the session goes on — the next refresh works too.
/// "Once" is counted at the IdP: the stored set's token endpoint is Dex's
/// own behind a pass-through proxy of the test's, which counts the refresh
/// requests Dex answered.
#[test]
fn a_burst_at_expiry_refreshes_once_and_the_session_survives() {
    let user = "erin";
    let (uid, _) = fresh_home(user);
    // Its records (issue 18): a log and a metrics file of the test's own.
    let logs = scratch("brkburst-log");
    let log = common::SyslogListener::bind(&logs, "log.sock");
    let metrics_file = logs.join("ood.prom");
    let b = Broker::start(
        "brkburst",
        &format!(
            "SYSLOG_SOCKET={}\nMETRICS_FILE={}\n",
            log.path.display(),
            metrics_file.display()
        ),
    );
    // Dex keeps one refresh token per user and client: a login of its own.
    let out = b.hook(user, Some(&cluster().login("erin")));
    assert!(out.status.success(), "{}", text(&out));
    // Dex's token endpoint (the set leaves it to discovery), through the
    // proxy.
    let endpoint = format!("{}/token", cluster().var("OIDC_ISSUER"));
    let idp = common::CountingProxy::start(&logs, &endpoint);
    b.edit_stored(uid, |set| {
        set["refresh"]["token_endpoint"] = idp.via(&endpoint).into();
    });
    let idp_refreshes = || idp.answered("POST", "/token", 200);
    for round in 0..2 {
        let before = refreshes(&b);
        let at_idp = idp_refreshes();
        let used = b.stored(uid)["refresh_token"].as_str().unwrap().to_owned();
        b.edit_stored(uid, |set| set["expiry"] = now().into());
        let calls: Vec<_> = (0..6)
            .map(|_| {
                std::thread::spawn(move || kubectl(user, &["--context", "brkburst", "get", "pods"]))
            })
            .collect();
        for call in calls {
            let out = call.join().unwrap();
            assert!(
                out.status.success(),
                "round {round}: {}\nbroker log:\n{}",
                text(&out),
                b.log_text()
            );
        }
        assert_eq!(
            idp_refreshes() - at_idp,
            1,
            "round {round}: the IdP answered not one refresh for the burst\n{}",
            b.log_text()
        );
        assert_eq!(
            refreshes(&b) - before,
            1,
            "round {round}: one refresh for the burst\n{}",
            b.log_text()
        );
        let set = b.stored(uid);
        assert_eq!(set["source"], "refresh");
        assert_ne!(
            set["refresh_token"],
            used.as_str(),
            "round {round}: not rotated"
        );
        assert!(set["expiry"].as_u64().unwrap() > now());
    }
    // One record per refresh, with the login and no token; and counted.
    let records: Vec<_> = log
        .received()
        .iter()
        .filter_map(|d| common::rfc5424_fields(d))
        .filter(|r| r["command"] == "broker-refresh")
        .collect();
    assert_eq!(records.len(), 2, "{records:?}");
    for r in &records {
        assert_eq!(
            (r["user"].as_str(), r["exit"].as_str()),
            ("erin", "0"),
            "{r:?}"
        );
        assert_eq!(r["uid"], uid.to_string());
    }
    let set = b.stored(uid);
    for secret in ["access_token", "refresh_token"] {
        let value = set[secret].as_str().unwrap();
        assert!(
            !format!("{records:?}").contains(value),
            "{secret} in a record"
        );
    }
    // The metrics file is written by a blocking task after the answer.
    let want = "ood_k8s_bootstrap_broker_refreshes_total{result=\"ok\"} 2";
    let deadline = Instant::now() + Duration::from_secs(10);
    while !std::fs::read_to_string(&metrics_file)
        .unwrap_or_default()
        .contains(want)
    {
        assert!(
            Instant::now() < deadline,
            "no {want:?} in {}",
            metrics_file.display()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A refresh while the IdP hangs is bounded by BROKER_IDP_TIMEOUT_SECONDS,
/// and while it is down fails at once; either way kubectl shows the user
/// what happened, and the session outlives the outage: once the IdP
/// answers again the next call refreshes with the kept refresh token.
#[test]
fn a_refresh_while_the_idp_hangs_or_is_down_is_bounded_and_survived() {
    let user = "frank";
    let (uid, _) = fresh_home(user);
    let b = Broker::start("brkidp", "BROKER_IDP_TIMEOUT_SECONDS=2\n");
    // Dex keeps one refresh token per user and client: a login of its own.
    let out = b.hook(user, Some(&cluster().login("frank")));
    assert!(out.status.success(), "{}", text(&out));
    let endpoint = b.stored(uid)["refresh"]["token_endpoint"].clone();

    // An IdP that takes connections and never answers.
    let hung = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let hung_port = hung.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let held: Vec<_> = hung.incoming().collect();
        drop(held);
    });
    // An IdP that is not there: a port nothing listens on.
    let down_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    // Bounded by BROKER_IDP_TIMEOUT_SECONDS (2 s) plus a margin for a busy
    // machine; how quick is the benchmark's to say.
    let under = 2 + common::MARGIN.as_secs();
    for (what, port, at_least) in [("hangs", hung_port, 2), ("is down", down_port, 0)] {
        b.edit_stored(uid, |set| {
            set["expiry"] = now().into();
            set["refresh"]["token_endpoint"] = format!("https://127.0.0.1:{port}/token").into();
        });
        // The plugin as kubectl runs it (kubectl itself runs it once per
        // discovery attempt), timed; then kubectl, for what the user sees.
        let t = Instant::now();
        let out = plugin(user, &b);
        let took = t.elapsed();
        assert!(!out.status.success(), "the IdP {what}: {}", text(&out));
        assert!(
            took >= Duration::from_secs(at_least) && took < Duration::from_secs(under),
            "the IdP {what}: the plugin took {took:?}"
        );
        let plugin_err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(
            plugin_err.contains("the identity provider could not renew your Kubernetes token"),
            "the IdP {what}: {plugin_err}"
        );
        if port == hung_port {
            assert!(
                plugin_err.contains("timed out") || plugin_err.contains("no answer within 2 s"),
                "{plugin_err}"
            );
            continue;
        }
        let out = kubectl(user, &["--context", "brkidp", "get", "pods"]);
        assert!(!out.status.success(), "the IdP {what}: {}", text(&out));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("the identity provider could not renew your Kubernetes token")
                && err.contains("try again in a minute"),
            "the IdP {what}: {err}"
        );
    }
    // Back: the stored session still refreshes.
    let before = refreshes(&b);
    b.edit_stored(uid, |set| set["refresh"]["token_endpoint"] = endpoint);
    let out = kubectl(user, &["--context", "brkidp", "get", "pods"]);
    assert!(out.status.success(), "{}\n{}", text(&out), b.log_text());
    assert_eq!(refreshes(&b) - before, 1, "{}", b.log_text());
}

/// Issue 18 (1): `reap` with REAP_DEPARTED=true deletes a departed login's
/// namespace and, with it, the broker's stored token set for that login's
/// old uid; another login's namespace and set stay.
#[test]
fn reap_deletes_a_departed_logins_namespace_and_stored_tokens() {
    let (gone, stays) = ("brk-reap-gone", "brk-reap-stays");
    let _ = Command::new("userdel").args(["-r", gone]).output();
    let (gone_uid, _) = fresh_home(gone);
    let (stays_uid, _) = fresh_home(stays);
    let c = cluster();
    let reaper = common::reaper_kubeconfig(&scratch("brkreap-reaper"));
    let b = Broker::start("brkreap", "REAP_DEPARTED=true\n");
    let tokens = c.login("alice");
    for user in [gone, stays] {
        let out = b.hook(user, Some(&tokens));
        assert!(out.status.success(), "{}", text(&out));
    }
    let set = |uid: u32| b.state.join(format!("{uid}.json"));
    assert!(set(gone_uid).exists() && set(stays_uid).exists());

    let out = Command::new("userdel").args(["-r", gone]).output().unwrap();
    assert!(out.status.success(), "userdel: {}", text(&out));
    let out = c
        .hook()
        .env("KUBECONFIG", &reaper)
        .arg("reap")
        .arg("--hook-env")
        .arg(&b.env)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let said = String::from_utf8_lossy(&out.stdout);
    let ns = |u: &str| format!("{}{u}", prefix("brkreap"));
    for want in [
        format!(
            "deleted      {}: departed: {gone} is no longer in passwd",
            ns(gone)
        ),
        format!("deleted      stored token set of uid {gone_uid} ({gone})"),
    ] {
        assert!(said.contains(&want), "no {want:?} in:\n{}", text(&out));
    }
    assert!(!set(gone_uid).exists(), "the departed login's set is kept");
    assert!(set(stays_uid).exists(), "the other login's set is gone");
    let gone_ns = c.get_json(&["namespace", &ns(gone)]);
    assert!(
        gone_ns.is_none_or(|n| !n["metadata"]["deletionTimestamp"].is_null()),
        "{}",
        text(&out)
    );
    let stays_ns = c.get_json(&["namespace", &ns(stays)]).expect("kept");
    assert!(stays_ns["metadata"]["deletionTimestamp"].is_null());
}

/// Issue 25 (promises): the broker raises its soft open-files limit to
/// what BROKER_MAX_CONNECTIONS needs (the connections plus its headroom of
/// 256), up to the hard limit, which it leaves alone. Started with a soft
/// limit of 1024, as a unit without `LimitNOFILE` would have it.
#[test]
fn the_broker_raises_its_open_files_limit_to_what_its_connections_need() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
    assert!(
        hard >= 3256,
        "this test needs a hard limit of 3256, not {hard}"
    );
    // Inherited by the broker; this process's own soft limit comes back
    // at once.
    setrlimit(Resource::RLIMIT_NOFILE, 1024, hard).unwrap();
    let b =
        std::panic::catch_unwind(|| Broker::start("brknofile", "BROKER_MAX_CONNECTIONS=3000\n"));
    setrlimit(Resource::RLIMIT_NOFILE, soft, hard).unwrap();
    let b = b.unwrap();
    let pid = b.child.as_ref().unwrap().id();
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap_or_else(|| panic!("{limits}"));
    let fields: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(
        fields[3..5],
        ["3256".to_owned(), hard.to_string()],
        "{line}"
    );
    assert!(
        !b.log_text().contains("raise LimitNOFILE"),
        "{}",
        b.log_text()
    );
}
