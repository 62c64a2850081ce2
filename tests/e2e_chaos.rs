//! End-to-end under faults: the built binary runs as OnDemand runs it, but
//! reaches the real local API server through the fault-injecting proxy of
//! `tests/chaos` (refused and reset connections, stalled handshakes,
//! throttling, 5xx, stalls, GOAWAY). For every fault the run ends within its
//! deadline with the exit status and one-line message SPEC §7 calls for and
//! no secret in its output; a transient fault is retried and the run
//! succeeds; and afterwards a clean run converges to exactly the objects a
//! clean user has. The fault × outcome table is in tests/chaos/README.md.

mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use common::{Tokens, cluster, linux_user, scratch, text};
use serde_json::{Value, json};

/// The deadline every run here gets (HOOK_TIMEOUT_SECONDS).
const DEADLINE: Duration = Duration::from_secs(3);
/// The slack the issue allows past it.
const SLACK: Duration = Duration::from_secs(1);

// ---- the proxy ------------------------------------------------------------

/// The proxy binary, built (once, cached) by tests/chaos/build.
fn proxy_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/chaos/build");
        let out = Command::new(&script)
            .output()
            .expect("run tests/chaos/build");
        assert!(
            out.status.success(),
            "tests/chaos/build failed:\n{}",
            text(&out)
        );
        PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
    })
}

/// A running proxy in front of the real API server, with a root-only
/// kubeconfig that reaches the cluster through it (the `ondemand` token).
struct Proxy {
    child: Child,
    url: String,
    events: PathBuf,
    kubeconfig: PathBuf,
}

impl Proxy {
    fn start(dir: &Path, plan: Value) -> Proxy {
        let c = cluster();
        let ca = PathBuf::from(c.var("K8S_CA_FILE"));
        let events = dir.join("proxy-events.jsonl");
        let log = std::fs::File::create(dir.join("proxy.log")).expect("proxy log");
        let mut child = Command::new(proxy_bin())
            .arg("-upstream")
            .arg(c.var("K8S_SERVER"))
            .arg("-ca")
            .arg(&ca)
            .arg("-ca-key")
            .arg(ca.with_file_name("ca.key"))
            .arg("-plan")
            .arg(plan.to_string())
            .arg("-events")
            .arg(&events)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .expect("start the chaos proxy");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("proxy stdout"))
            .read_line(&mut line)
            .expect("read the proxy's address");
        let addr = line
            .strip_prefix("listening ")
            .unwrap_or_else(|| {
                panic!(
                    "chaos proxy did not start ({line:?}): {}",
                    std::fs::read_to_string(dir.join("proxy.log")).unwrap_or_default()
                )
            })
            .trim();
        let url = format!("https://{addr}");
        let original =
            std::fs::read_to_string(c.var("KUBECONFIG_ONDEMAND")).expect("ondemand kubeconfig");
        assert!(original.contains(c.var("K8S_SERVER")));
        let kubeconfig = dir.join("via-proxy.kubeconfig");
        std::fs::write(&kubeconfig, original.replace(c.var("K8S_SERVER"), &url))
            .expect("write kubeconfig");
        std::fs::set_permissions(&kubeconfig, std::fs::Permissions::from_mode(0o600))
            .expect("chmod kubeconfig");
        Proxy {
            child,
            url,
            events,
            kubeconfig,
        }
    }

    /// Every request the proxy saw, in order.
    fn requests(&self) -> Vec<Value> {
        self.events("request")
    }

    fn events(&self, kind: &str) -> Vec<Value> {
        std::fs::read_to_string(&self.events)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str::<Value>(l).expect("event json"))
            .filter(|e| e["kind"] == kind)
            .collect()
    }

    /// The number of requests or connections that got `fault`.
    fn injected(&self, fault: &str) -> usize {
        let all = [self.events("conn"), self.events("request")].concat();
        all.iter().filter(|e| e["fault"] == fault).count()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---- runs -----------------------------------------------------------------

/// One test's setting: its own namespace prefix, hook.env and tokens.
struct Case {
    dir: PathBuf,
    prefix: String,
    hook_env: PathBuf,
    tokens: Tokens,
}

impl Case {
    fn new(tag: &str) -> Case {
        let c = cluster();
        let dir = scratch(&format!("chaos-{tag}"));
        let prefix = common::prefix(tag);
        let registry = dir.join("registry.json");
        std::fs::write(
            &registry,
            r#"{"auths":{"registry.example":{"auth":"dTpw"}}}"#,
        )
        .expect("registry file");
        std::fs::set_permissions(&registry, std::fs::Permissions::from_mode(0o600))
            .expect("chmod registry file");
        let hook_env = c.hook_env(
            &dir,
            &format!(
                "NAMESPACE_PREFIX={prefix}\nHOOK_TIMEOUT_SECONDS={}\nUSE_JOB_POD_REAPER=true\n\
                 FAST_FAIL_SECONDS=0\nIMAGE_PULL_SECRET=regcred\nREGISTRY_DOCKER_CONFIG_JSON={}\n",
                DEADLINE.as_secs(),
                registry.display()
            ),
        );
        linux_user("alice");
        Case {
            dir,
            prefix,
            hook_env,
            tokens: c.login("alice"),
        }
    }

    fn namespace(&self) -> String {
        format!("{}alice", self.prefix)
    }

    /// The hook for alice, as OnDemand runs it, with portal tokens, through
    /// `kubeconfig`.
    fn run(&self, kubeconfig: &Path) -> Run {
        let started = Instant::now();
        let out = cluster()
            .hook()
            .env("KUBECONFIG", kubeconfig)
            .env("OOD_OIDC_ACCESS_TOKEN", &self.tokens.access)
            .env("OOD_OIDC_REFRESH_TOKEN", &self.tokens.refresh)
            .args(["--user", "alice", "--hook-env"])
            .arg(&self.hook_env)
            .output()
            .expect("run the hook");
        Run {
            out,
            took: started.elapsed(),
        }
    }

    /// A clean run straight to the API server, which must converge to
    /// exactly what a clean user has.
    fn converges(&self) {
        let run = self.run(Path::new(cluster().var("KUBECONFIG_ONDEMAND")));
        run.succeeded(self);
        assert_eq!(
            objects(&self.namespace(), "alice"),
            *reference(),
            "after the fault, a clean run did not converge to a clean user's objects"
        );
    }

    /// Every secret the run could leak.
    fn secrets(&self) -> Vec<String> {
        let c = cluster();
        let ondemand = std::fs::read_to_string(c.var("KUBECONFIG_ONDEMAND")).unwrap();
        let token = ondemand
            .lines()
            .find_map(|l| l.trim().strip_prefix("token: "))
            .expect("ondemand token")
            .to_owned();
        vec![
            token,
            self.tokens.access.clone(),
            self.tokens.refresh.clone(),
            self.tokens.id.clone(),
            c.var("OIDC_CLIENT_SECRET").to_owned(),
        ]
    }
}

struct Run {
    out: Output,
    took: Duration,
}

impl Run {
    fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.out.stderr).into_owned()
    }

    /// The checks every run gets: within the deadline (plus the common
    /// margin for a busy machine), one stderr line, no secret anywhere in
    /// the output.
    fn bounded_one_line_no_secrets(&self, case: &Case) {
        eprintln!(
            "{:?} after {:?}: {}",
            self.out.status.code(),
            self.took,
            self.stderr()
        );
        assert!(
            self.took <= DEADLINE + common::MARGIN,
            "took {:?} with a {DEADLINE:?} deadline\n{}",
            self.took,
            text(&self.out)
        );
        let stderr = self.stderr();
        assert_eq!(stderr.lines().count(), 1, "not one line:\n{stderr}");
        let all = format!("{stderr}{}", String::from_utf8_lossy(&self.out.stdout));
        for secret in case.secrets() {
            assert!(!all.contains(&secret), "a secret leaked into:\n{all}");
        }
    }

    fn failed(&self, case: &Case, status: i32, words: &[&str]) {
        self.bounded_one_line_no_secrets(case);
        assert_eq!(self.out.status.code(), Some(status), "{}", text(&self.out));
        let stderr = self.stderr();
        assert!(
            stderr.starts_with("ood-k8s-bootstrap: error: user alice: "),
            "{stderr}"
        );
        for w in words {
            assert!(stderr.contains(w), "{w:?} missing from:\n{stderr}");
        }
    }

    fn succeeded(&self, case: &Case) {
        assert_eq!(self.out.status.code(), Some(0), "{}", text(&self.out));
        self.bounded_one_line_no_secrets(case);
    }
}

// ---- what a converged user has ----------------------------------------------

/// The objects of `ns` that the hook manages, without bookkeeping
/// (uids, versions, timestamps, field managers) and with the namespace and
/// user names replaced, so two users' objects compare equal.
fn objects(ns: &str, user: &str) -> BTreeMap<String, Value> {
    let c = cluster();
    let mut items = vec![c.get_json(&["namespace", ns]).expect("namespace")];
    let list = c
        .get_json(&[
            "networkpolicies,rolebindings,secrets,serviceaccounts",
            "-n",
            ns,
        ])
        .expect("list");
    items.extend(list["items"].as_array().cloned().unwrap_or_default());
    items
        .into_iter()
        .map(|mut item| {
            let meta = item["metadata"].as_object_mut().expect("metadata");
            for key in [
                "uid",
                "resourceVersion",
                "creationTimestamp",
                "managedFields",
                "generation",
                "namespace",
            ] {
                meta.remove(key);
            }
            if let Some(a) = meta.get_mut("annotations").and_then(Value::as_object_mut) {
                a.remove("openondemand.org/last-hook-execution");
            }
            item.as_object_mut().expect("object").remove("status");
            let text = item.to_string().replace(ns, "NS").replace(user, "USER");
            let item: Value = serde_json::from_str(&text).expect("json");
            let key = format!("{}/{}", item["kind"], item["metadata"]["name"]);
            (key, item)
        })
        .collect()
}

/// A clean user's objects: alice under a prefix of its own, bootstrapped
/// with no proxy in the way.
fn reference() -> &'static BTreeMap<String, Value> {
    static REFERENCE: OnceLock<BTreeMap<String, Value>> = OnceLock::new();
    REFERENCE.get_or_init(|| {
        let case = Case::new("chref");
        let run = case.run(Path::new(cluster().var("KUBECONFIG_ONDEMAND")));
        assert_eq!(run.out.status.code(), Some(0), "{}", text(&run.out));
        let objects = objects(&case.namespace(), "alice");
        for kind in ["Namespace", "NetworkPolicy", "RoleBinding", "Secret"] {
            assert!(
                objects
                    .keys()
                    .any(|k| k.starts_with(&format!("\"{kind}\""))),
                "{kind} missing from the reference: {objects:?}"
            );
        }
        objects
    })
}

// ---- persistent faults: the run fails within its deadline, clearly ---------

/// Runs alice's hook through a proxy that applies `rule` to every request
/// or connection, checks the failure, then that a clean run converges.
fn persistent(tag: &str, rule: Value, status: i32, words: &[&str]) -> Proxy {
    let case = Case::new(tag);
    let proxy = Proxy::start(&case.dir, json!({ "rules": [rule] }));
    let run = case.run(&proxy.kubeconfig);
    run.failed(&case, status, words);
    assert!(
        run.stderr().contains(&proxy.url),
        "the message does not name the server:\n{}",
        run.stderr()
    );
    case.converges();
    proxy
}

/// A run's requests — the concurrent writes included — share one
/// connection, multiplexed over HTTP/2: the proxy in between sees exactly
/// one connection per run, every request on it, each as HTTP/2. (Five
/// connections of HTTP/2 would not pass.)
#[test]
fn a_run_uses_one_http2_connection() {
    let case = Case::new("ch-h2");
    let proxy = Proxy::start(&case.dir, json!({ "rules": [] }));
    // A fresh user, then a returning one: a new process each time.
    for _ in 0..2 {
        let before = proxy.events("request").len();
        let conns_before = proxy.events("conn").len();
        case.run(&proxy.kubeconfig).succeeded(&case);
        let conns: Vec<Value> = proxy.events("conn").split_off(conns_before);
        assert_eq!(conns.len(), 1, "connections: {conns:?}");
        let requests: Vec<Value> = proxy.events("request").split_off(before);
        assert!(requests.len() >= 5, "{requests:?}");
        for r in &requests {
            assert_eq!(r["conn"], conns[0]["conn"], "{r}");
            assert_eq!(r["proto"], "HTTP/2.0", "{r}");
        }
    }
}

/// Login storms: every request of a hook run is classified by the
/// FlowSchema `ondemand` (hooks/ondemand-apf.yaml, which the local cluster
/// has as a site's would), as the API server says in each answer's
/// `X-Kubernetes-PF-FlowSchema-UID` header — not by the built-in
/// `service-accounts` schema shared with every other workload.
#[test]
fn the_hooks_requests_are_classified_by_the_ondemand_flow_schema() {
    let case = Case::new("ch-apf");
    let proxy = Proxy::start(&case.dir, json!({ "rules": [] }));
    let schema = cluster()
        .get_json(&["flowschema", "ondemand"])
        .expect("FlowSchema ondemand (tests/cluster/up applies hooks/ondemand-apf.yaml)");
    let uid = schema["metadata"]["uid"].as_str().expect("its uid");
    case.run(&proxy.kubeconfig).succeeded(&case);
    let answers = proxy.events("answer");
    assert!(answers.len() >= 5, "{answers:?}");
    for a in &answers {
        assert_eq!(a["flow_schema"], uid, "{a}");
    }
}

/// An answer far larger than any real one (64 MiB, streamed) is not read
/// whole: the run stops at the cap with a clear, final error (no retries),
/// well within the deadline, and its memory stays bounded; a clean run
/// then converges.
#[test]
fn an_oversized_answer_is_cut_off_with_bounded_memory() {
    let case = Case::new("ch-huge");
    let proxy = Proxy::start(
        &case.dir,
        json!({"rules": [{"fault": "huge_body", "size_mb": 64}]}),
    );
    let rss = case.dir.join("rss");
    let started = Instant::now();
    let out = Command::new("/usr/bin/time")
        .env_clear()
        .env("PATH", "/usr/local/bin:/usr/bin:/bin")
        .env("KUBECONFIG", &proxy.kubeconfig)
        .args(["-f", "%M", "-o"])
        .arg(&rss)
        .arg(common::bin())
        .args(["--user", "alice", "--hook-env"])
        .arg(&case.hook_env)
        .stdin(Stdio::null())
        .output()
        .expect("run the hook under /usr/bin/time");
    let run = Run {
        out,
        took: started.elapsed(),
    };
    run.failed(
        &case,
        69,
        &["answered, but", "larger than 4 MiB", "stopped reading"],
    );
    assert_eq!(proxy.injected("huge_body"), 1, "retried");
    let max_rss_kib: u64 = std::fs::read_to_string(&rss)
        .unwrap()
        .lines()
        .last()
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(
        max_rss_kib < 48 * 1024,
        "peak RSS {max_rss_kib} KiB: the 64 MiB answer was read into memory"
    );
    case.converges();
}

#[test]
fn refused_connections_fail_as_unreachable() {
    let p = persistent(
        "ch-refuse",
        json!({"fault": "refuse"}),
        69,
        &["unreachable", "tried for"],
    );
    assert!(p.injected("refuse") > 1, "not retried");
}

#[test]
fn stalled_tls_handshakes_fail_as_unreachable() {
    let p = persistent(
        "ch-tlsstall",
        json!({"fault": "tls_stall"}),
        69,
        &["unreachable", "TLS handshake stalled"],
    );
    // Each stalled connection is given up after 1 s and another tried.
    assert!(p.injected("tls_stall") >= 2, "not retried");
}

#[test]
fn resets_before_the_answer_fail_as_unreachable() {
    let p = persistent(
        "ch-resetreq",
        json!({"fault": "reset_request"}),
        69,
        &["unreachable", "Namespace/"],
    );
    assert!(p.injected("reset_request") > 1, "not retried");
}

#[test]
fn goaway_before_any_request_fails_as_unreachable() {
    let p = persistent(
        "ch-goawaynow",
        json!({"fault": "goaway_now"}),
        69,
        &["unreachable"],
    );
    assert!(p.injected("goaway_now") > 1, "not retried");
}

#[test]
fn headers_delayed_past_the_deadline_fail_as_unreachable() {
    persistent(
        "ch-slowhead",
        json!({"fault": "delay_headers", "delay_ms": 30000}),
        69,
        &["unreachable", "no answer before the deadline"],
    );
}

#[test]
fn resets_mid_response_are_a_temporary_failure() {
    let p = persistent(
        "ch-resetresp",
        json!({"fault": "reset_response"}),
        75,
        &["gave up after", "cut off"],
    );
    assert!(p.injected("reset_response") > 1, "not retried");
}

#[test]
fn aborted_streams_are_a_temporary_failure() {
    persistent(
        "ch-abort",
        json!({"fault": "abort_stream"}),
        75,
        &["gave up after", "cut off"],
    );
}

#[test]
fn body_delayed_past_the_deadline_is_a_temporary_failure() {
    persistent(
        "ch-slowbody",
        json!({"fault": "delay_body", "delay_ms": 30000}),
        75,
        &["gave up after", "not complete before the deadline"],
    );
}

#[test]
fn throttling_is_a_temporary_failure() {
    let p = persistent(
        "ch-429",
        json!({"fault": "status", "status": 429}),
        75,
        &["gave up after", "429 (throttled)"],
    );
    assert!(p.injected("status") > 1, "not retried");
}

#[test]
fn status_500_is_a_temporary_failure() {
    persistent(
        "ch-500",
        json!({"fault": "status", "status": 500}),
        75,
        &["gave up after", "answered 500"],
    );
}

#[test]
fn status_503_is_a_temporary_failure() {
    persistent(
        "ch-503",
        json!({"fault": "status", "status": 503}),
        75,
        &["gave up after", "answered 503"],
    );
}

#[test]
fn status_504_is_a_temporary_failure() {
    persistent(
        "ch-504",
        json!({"fault": "status", "status": 504}),
        75,
        &["gave up after", "answered 504"],
    );
}

#[test]
fn retry_after_is_honoured_until_the_deadline() {
    let p = persistent(
        "ch-429ra",
        json!({"fault": "status", "status": 429, "retry_after": "1"}),
        75,
        &["429 (throttled)"],
    );
    let times: Vec<i64> = p
        .requests()
        .iter()
        .map(|e| e["t_ms"].as_i64().expect("t_ms"))
        .collect();
    assert!(
        (2..=4).contains(&times.len()),
        "{} tries in 3 s with Retry-After: 1",
        times.len()
    );
    for pair in times.windows(2) {
        assert!(
            pair[1] - pair[0] >= 950,
            "retried before Retry-After: {times:?}"
        );
    }
}

#[test]
fn retry_after_beyond_the_deadline_fails_at_once() {
    let case = Case::new("ch-429late");
    let proxy = Proxy::start(
        &case.dir,
        json!({"rules": [{"fault": "status", "status": 429, "retry_after": "30"}]}),
    );
    let run = case.run(&proxy.kubeconfig);
    run.failed(&case, 75, &["Retry-After", "30s", "not waiting"]);
    assert!(
        run.took < DEADLINE,
        "waited out the deadline: {:?}",
        run.took
    );
    assert_eq!(proxy.requests().len(), 1, "retried anyway");
    case.converges();
}

// ---- faults inside the deadline: retried, and the run succeeds -------------

/// Runs alice's hook through a proxy with `rules`, checks that it
/// succeeded although the proxy injected `fault`, then that it converged.
fn transient(tag: &str, rules: Value, fault: &str) -> Proxy {
    let case = Case::new(tag);
    let proxy = Proxy::start(&case.dir, json!({ "seed": 7, "rules": rules }));
    let run = case.run(&proxy.kubeconfig);
    run.succeeded(&case);
    assert!(proxy.injected(fault) > 0, "the proxy injected no {fault}");
    assert_eq!(
        objects(&case.namespace(), "alice"),
        *reference(),
        "the run succeeded but its objects differ from a clean user's"
    );
    case.converges();
    proxy
}

#[test]
fn a_first_503_is_retried() {
    transient(
        "ch-t503",
        json!([{"fault": "status", "status": 503, "first": 1}]),
        "status",
    );
}

#[test]
fn a_share_of_5xx_is_retried() {
    transient(
        "ch-tshare",
        json!([
            {"fault": "status", "status": 500, "share": 0.15},
            {"fault": "status", "status": 504, "share": 0.15}
        ]),
        "status",
    );
}

#[test]
fn a_429_with_retry_after_is_waited_for_and_retried() {
    let p = transient(
        "ch-t429",
        json!([{"fault": "status", "status": 429, "retry_after": "1", "first": 1}]),
        "status",
    );
    // The first request (the namespace) and its retry, a second apart.
    let reqs = p.requests();
    assert_eq!(reqs[0]["fault"], "status");
    assert_eq!(reqs[1]["path"], reqs[0]["path"]);
    let gap = reqs[1]["t_ms"].as_i64().unwrap() - reqs[0]["t_ms"].as_i64().unwrap();
    assert!(gap >= 950, "retried {gap} ms after Retry-After: 1");
}

#[test]
fn a_refused_connection_is_retried() {
    transient(
        "ch-trefuse",
        json!([{"fault": "refuse", "first": 1}]),
        "refuse",
    );
}

#[test]
fn a_stalled_handshake_is_abandoned_and_retried() {
    transient(
        "ch-tstall",
        json!([{"fault": "tls_stall", "first": 1}]),
        "tls_stall",
    );
}

#[test]
fn a_goaway_before_any_request_is_retried() {
    transient(
        "ch-tgoaway",
        json!([{"fault": "goaway_now", "first": 1}]),
        "goaway_now",
    );
}

#[test]
fn a_graceful_goaway_after_every_response_is_survived() {
    let p = transient("ch-tgoawayall", json!([{"fault": "goaway"}]), "goaway");
    assert!(
        p.events("conn").len() > 1,
        "the connection was never replaced"
    );
}

#[test]
fn a_reset_before_the_answer_is_retried() {
    transient(
        "ch-tresetreq",
        json!([{"fault": "reset_request", "first": 1}]),
        "reset_request",
    );
}

#[test]
fn a_reset_mid_response_is_retried() {
    // The namespace is created, but its answer is lost: the retry finds it.
    transient(
        "ch-tresetresp",
        json!([{"fault": "reset_response", "first": 1}]),
        "reset_response",
    );
}

#[test]
fn a_lost_answer_to_the_pull_secret_patch_is_retried() {
    // The JSON patch adding our pull secret to the `default` ServiceAccount
    // is applied but its answer lost; the retry's resourceVersion test then
    // fails, and the hook must see its entry is there rather than fail or
    // add it twice.
    transient(
        "ch-tpatch",
        json!([{"fault": "abort_stream", "method": "PATCH", "path": "/serviceaccounts/default$", "first": 1}]),
        "abort_stream",
    );
}

#[test]
fn headers_delayed_within_the_deadline_are_waited_for() {
    transient(
        "ch-tslow",
        json!([{"fault": "delay_headers", "delay_ms": 1000, "first": 1}]),
        "delay_headers",
    );
}

// ---- reconcile: per-user failures, the rest done ----------------------------

#[test]
fn reconcile_through_faults_reports_each_failing_user_and_does_the_rest() {
    let c = cluster();
    let case = Case::new("ch-rc");
    let users: Vec<String> = (0..12).map(|i| format!("chaosrc{i:02}")).collect();
    let list = case.dir.join("users.txt");
    std::fs::write(&list, users.join("\n")).unwrap();
    let reconcile = |kubeconfig: &Path, list: &Path| {
        let started = Instant::now();
        let out = c
            .hook()
            .env("KUBECONFIG", kubeconfig)
            .arg("reconcile")
            .arg("--hook-env")
            .arg(&case.hook_env)
            .arg("--users")
            .arg(list)
            .args(["--concurrency", "8"])
            .output()
            .unwrap();
        (out, started.elapsed())
    };
    // A reference user, reconciled cleanly.
    let ref_list = case.dir.join("ref.txt");
    std::fs::write(&ref_list, "chaosrcref\n").unwrap();
    let (out, _) = reconcile(Path::new(c.var("KUBECONFIG_ONDEMAND")), &ref_list);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let clean = objects(&format!("{}chaosrcref", case.prefix), "chaosrcref");
    let ns = |user: &str| format!("{}{user}", case.prefix);
    let matches_reference = |user: &str| objects(&ns(user), user) == clean;

    // Three users fail persistently, each in its own way; a fifth of every
    // other request fails once and is retried.
    let only = |user: &str| format!("^/api(s/[^/]+)?/v1/namespaces/{}(/|$)", ns(user));
    let proxy = Proxy::start(
        &case.dir,
        json!({"seed": 42, "rules": [
            {"fault": "status", "status": 503, "path": only("chaosrc03")},
            {"fault": "abort_stream", "path": only("chaosrc07")},
            {"fault": "delay_headers", "delay_ms": 30000, "path": only("chaosrc09")},
            {"fault": "status", "status": 503, "share": 0.2}
        ]}),
    );
    let (out, took) = reconcile(&proxy.kubeconfig, &list);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        took <= 2 * DEADLINE + SLACK,
        "took {took:?} with a {DEADLINE:?} deadline per user"
    );
    assert!(stderr.contains("reconciled 9 of 12 users"), "{stderr}");
    assert!(stderr.contains("3 failed"), "{stderr}");
    let failure = |user: &str| {
        stderr
            .lines()
            .find(|l| l.trim_start().starts_with(&format!("failed: {user}: ")))
            .unwrap_or_else(|| panic!("no failure line for {user}:\n{stderr}"))
            .to_owned()
    };
    assert!(failure("chaosrc03").contains("503"), "{stderr}");
    assert!(failure("chaosrc07").contains("cut off"), "{stderr}");
    assert!(
        failure("chaosrc09").contains("no answer before the deadline"),
        "{stderr}"
    );
    assert!(
        proxy.injected("status") > 3,
        "no transient faults were injected"
    );
    let token = std::fs::read_to_string(c.var("KUBECONFIG_ONDEMAND")).unwrap();
    let token = token
        .lines()
        .find_map(|l| l.trim().strip_prefix("token: "))
        .unwrap();
    assert!(!stderr.contains(token), "the ondemand token leaked");
    for user in &users {
        let failed = ["chaosrc03", "chaosrc07", "chaosrc09"].contains(&user.as_str());
        if !failed {
            assert!(matches_reference(user), "{user} was not done");
        }
    }

    // A clean reconcile afterwards repairs the three.
    let (out, _) = reconcile(Path::new(c.var("KUBECONFIG_ONDEMAND")), &list);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    for user in &users {
        assert!(matches_reference(user), "{user} did not converge");
    }
}

// ---- reap racing a login --------------------------------------------------

/// Issue 25 (a promise no test exercised): a login between reap's judging
/// and its deleting keeps the namespace. The proxy holds reap's DELETE of
/// the idle namespace for 4 s; meanwhile the user logs in (straight to the
/// API server), which changes the namespace; the held DELETE, conditional
/// on the version reap judged, is refused (409) and the namespace kept.
#[test]
fn a_login_between_reaps_judging_and_deleting_keeps_the_namespace() {
    let c = cluster();
    let dir = scratch("chaos-reap-race");
    let prefix = common::prefix("reaprace");
    linux_user("lc-racer");
    let env = c.hook_env(
        &dir,
        &format!("NAMESPACE_PREFIX={prefix}\nK8S_CREDENTIALS=none\nREAP_IDLE_DAYS=30\n"),
    );
    let ns = format!("{prefix}lc-racer");
    let login = || {
        c.hook()
            .args(["--user", "lc-racer", "--cluster-only", "--hook-env"])
            .arg(&env)
            .output()
            .unwrap()
    };
    let out = login();
    assert!(out.status.success(), "{}", text(&out));
    c.admin(&[
        "annotate",
        "--overwrite",
        "namespace",
        &ns,
        "openondemand.org/last-hook-execution=1000000000",
    ]);
    let proxy = Proxy::start(
        &dir,
        json!({"rules": [{"fault": "delay_headers", "delay_ms": 4000, "method": "DELETE",
                          "path": format!("^/api/v1/namespaces/{ns}$")}]}),
    );
    let reaper = std::fs::read_to_string(common::reaper_kubeconfig(&dir)).unwrap();
    let via_proxy = dir.join("reaper-via-proxy.kubeconfig");
    std::fs::write(&via_proxy, reaper.replace(c.var("K8S_SERVER"), &proxy.url)).unwrap();
    std::fs::set_permissions(&via_proxy, std::fs::Permissions::from_mode(0o600)).unwrap();
    let reap = c
        .hook()
        .env("KUBECONFIG", &via_proxy)
        .args(["reap", "--hook-env"])
        .arg(&env)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Judged and held: the DELETE has reached the proxy.
    let until = Instant::now() + Duration::from_secs(20);
    while !proxy
        .requests()
        .iter()
        .any(|r| r["method"] == "DELETE" && r["fault"] == "delay_headers")
    {
        assert!(Instant::now() < until, "reap sent no DELETE");
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = login();
    assert!(out.status.success(), "{}", text(&out));
    let out = reap.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout)
            .contains(&format!("kept         {ns}: changed since it was judged")),
        "{}",
        text(&out)
    );
    let live = c.get_json(&["namespace", &ns]).expect("the namespace");
    assert!(live["metadata"]["deletionTimestamp"].is_null(), "{live}");
}

// ---- the kubeconfig side's owner wait --------------------------------------

/// Issue 25 (a promise no test exercised): the kubeconfig side waits for
/// the namespace's owner check at most a second (a third of
/// HOOK_TIMEOUT_SECONDS if shorter), then writes the user's fresh tokens;
/// the cluster side fails on its own. The proxy holds every answer to the
/// owner check (the GET of the Namespace) past the deadline. A writer that
/// waited for the owner check would start only once the deadline had
/// passed, with no time left to write.
#[test]
fn an_unanswered_owner_check_does_not_cost_the_user_their_fresh_tokens() {
    let c = cluster();
    let user = "ch-ownerwait";
    let (_, _, home) = linux_user(user);
    let dir = scratch("chaos-ownerwait");
    let prefix = common::prefix("chowait");
    let ns = format!("{prefix}{user}");
    let hook_env = c.hook_env(
        &dir,
        &format!(
            "NAMESPACE_PREFIX={prefix}\nHOOK_TIMEOUT_SECONDS={}\nFAST_FAIL_SECONDS=0\n",
            DEADLINE.as_secs()
        ),
    );
    let config = home.join(".kube/config");
    let _ = std::fs::remove_file(&config);
    let login = |tokens: &Tokens, kubeconfig: &Path| {
        let started = Instant::now();
        let out = c
            .hook()
            .env("KUBECONFIG", kubeconfig)
            .env("OOD_OIDC_ACCESS_TOKEN", &tokens.access)
            .env("OOD_OIDC_REFRESH_TOKEN", &tokens.refresh)
            .args(["--user", user, "--hook-env"])
            .arg(&hook_env)
            .output()
            .expect("run the hook");
        (out, started.elapsed())
    };

    // A first login, straight to the API server: the namespace is made
    // and the kubeconfig holds the first tokens.
    let first = c.login("frank");
    let (out, _) = login(&first, Path::new(c.var("KUBECONFIG_ONDEMAND")));
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let written = std::fs::read_to_string(&config).expect("the user's kubeconfig");
    assert!(written.contains(&first.refresh), "{}", text(&out));

    // The next login brings fresh tokens; its owner check goes unanswered.
    let fresh = c.login("frank");
    assert_ne!(fresh.access, first.access);
    assert_ne!(fresh.refresh, first.refresh);
    let proxy = Proxy::start(
        &dir,
        json!({"rules": [{"fault": "delay_headers", "delay_ms": 30000, "method": "GET",
                          "path": format!("^/api/v1/namespaces/{ns}$")}]}),
    );
    let (out, took) = login(&fresh, &proxy.kubeconfig);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    eprintln!("{:?} after {took:?}: {stderr}", out.status.code());
    assert!(
        took <= DEADLINE + common::MARGIN,
        "took {took:?} with a {DEADLINE:?} deadline\n{}",
        text(&out)
    );
    assert!(
        proxy.injected("delay_headers") >= 1,
        "the owner check was not held"
    );
    // The cluster side failed on its own, and says the user's side was
    // written.
    assert_eq!(out.status.code(), Some(69), "{}", text(&out));
    assert_eq!(stderr.lines().count(), 1, "not one line:\n{stderr}");
    for words in [
        format!("ood-k8s-bootstrap: error: user {user}: "),
        "no answer before the deadline".to_owned(),
        format!("the user's side: kubeconfig {} updated", config.display()),
    ] {
        assert!(stderr.contains(&words), "{words:?} missing from:\n{stderr}");
    }
    // The fresh tokens are in the user's file, the old ones gone.
    let written = std::fs::read_to_string(&config).expect("the user's kubeconfig");
    assert!(
        written.contains(&fresh.access) && written.contains(&fresh.refresh),
        "the fresh tokens were not written"
    );
    assert!(
        !written.contains(&first.access) && !written.contains(&first.refresh),
        "the old tokens are still there"
    );
    // Nothing of the cluster side was done: the held GET was the first
    // request, and nothing else reached the namespace.
    let after: Vec<Value> = proxy
        .requests()
        .into_iter()
        .filter(|r| r["method"] != "GET")
        .collect();
    assert!(after.is_empty(), "wrote past the owner check: {after:?}");
    for secret in [&fresh.access, &fresh.refresh, &first.access, &first.refresh] {
        assert!(!stderr.contains(secret.as_str()), "a token leaked");
    }
}
