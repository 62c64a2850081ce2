//! End-to-end: logins that heal (issue 27). Logins during an outage of the
//! real API server (root's kubeconfig pointing at a port that refuses, or
//! at one that accepts and never answers) leave their cluster side pending
//! in LAST_RUN_DIR/.pending; one `heal` pass once the cluster answers makes
//! every one of them exactly as the login would have (the objects, the
//! login's time), and a second pass asks the API server nothing (its audit
//! log). Refusals are never noted, a later login ends the pending state, a
//! pass against a still-silent cluster ends within its deadline, and
//! HEAL_MAX_PER_RUN bounds a pass. Each test owns its Linux users,
//! namespace prefix and LAST_RUN_DIR.

mod common;

use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{cluster, linux_user, scratch, text};
use serde_json::Value;

/// The cluster as records name it: hook.env's K8S_CLUSTER_NAME (its
/// default here).
const CLUSTER: &str = "open-ondemand";

/// HOOK_TIMEOUT_SECONDS for every run here.
const DEADLINE: Duration = Duration::from_secs(3);

/// One test's site: its own hook.env, namespace prefix and LAST_RUN_DIR.
struct Site {
    dir: PathBuf,
    prefix: String,
    hook_env: PathBuf,
    last_run: PathBuf,
}

impl Site {
    fn new(tag: &str, extra: &str) -> Site {
        let dir = scratch(&format!("heal-{tag}"));
        let prefix = common::prefix(tag);
        let last_run = dir.join("last-run");
        let hook_env = cluster().hook_env(
            &dir,
            &format!(
                "NAMESPACE_PREFIX={prefix}\nHOOK_TIMEOUT_SECONDS={}\nLAST_RUN_DIR={}\nLOG_TARGET=stderr\n{extra}",
                DEADLINE.as_secs(),
                last_run.display()
            ),
        );
        Site {
            dir,
            prefix,
            hook_env,
            last_run,
        }
    }

    fn namespace(&self, user: &str) -> String {
        format!("{}{user}", self.prefix)
    }

    /// The hook for `user`, as OnDemand runs it, with root's kubeconfig
    /// `kubeconfig`.
    fn login(&self, user: &str, kubeconfig: &Path) -> Output {
        linux_user(user);
        cluster()
            .hook()
            .env("KUBECONFIG", kubeconfig)
            .args(["--user", user, "--hook-env"])
            .arg(&self.hook_env)
            .output()
            .expect("run the hook")
    }

    /// One heal pass (as the timer's unit runs it: `heal`, root's
    /// KUBECONFIG), with `args`.
    fn heal(&self, kubeconfig: &Path, args: &[&str]) -> (Output, Duration) {
        let started = Instant::now();
        let out = Command::new(common::bin())
            .env_clear()
            .env("PATH", "/usr/local/bin:/usr/bin:/bin")
            .env("KUBECONFIG", kubeconfig)
            .arg("heal")
            .args(args)
            .arg("--hook-env")
            .arg(&self.hook_env)
            .stdin(Stdio::null())
            .output()
            .expect("run heal");
        (out, started.elapsed())
    }

    /// `user`'s pending note, if any.
    fn note(&self, user: &str) -> Option<Value> {
        let path = self.last_run.join(".pending").join(user);
        let text = std::fs::read_to_string(&path).ok()?;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "{}", path.display());
        Some(serde_json::from_str(&text).expect("a note is JSON"))
    }

    /// `user`'s last-run file.
    fn last_run(&self, user: &str) -> String {
        std::fs::read_to_string(self.last_run.join(user)).expect("a last-run file")
    }
}

/// Root's kubeconfig (the `ondemand` token) with its server replaced.
fn kubeconfig_to(dir: &Path, name: &str, server: &str) -> PathBuf {
    let c = cluster();
    let original = std::fs::read_to_string(c.var("KUBECONFIG_ONDEMAND")).expect("kubeconfig");
    assert!(original.contains(c.var("K8S_SERVER")));
    let path = dir.join(name);
    std::fs::write(&path, original.replace(c.var("K8S_SERVER"), server)).expect("write");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    path
}

/// A kubeconfig whose API server refuses connections (a loopback port
/// nothing listens on).
fn refusing(dir: &Path) -> PathBuf {
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    kubeconfig_to(
        dir,
        "refusing.kubeconfig",
        &format!("https://127.0.0.1:{port}"),
    )
}

/// A kubeconfig whose API server accepts connections and never answers
/// (the listener is kept open, nothing reads it).
fn silent(dir: &Path) -> (PathBuf, TcpListener) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("a port");
    let port = listener.local_addr().expect("addr").port();
    let kc = kubeconfig_to(
        dir,
        "silent.kubeconfig",
        &format!("https://127.0.0.1:{port}"),
    );
    (kc, listener)
}

/// The real API server, as root's kubeconfig reaches it.
fn answering() -> PathBuf {
    PathBuf::from(cluster().var("KUBECONFIG_ONDEMAND"))
}

/// Requests the `ondemand` account made about namespaces of `prefix`
/// (any verb), from the API server's audit log, once it has settled.
fn requests(prefix: &str) -> usize {
    common::audit_settled();
    let log = std::fs::read_to_string(cluster().var("AUDIT_LOG")).expect("audit log");
    log.lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|e| e["user"]["username"] == "system:serviceaccount:ondemand:ondemand")
        .filter(|e| {
            e["requestURI"]
                .as_str()
                .is_some_and(|u| u.contains(&format!("/namespaces/{prefix}")) || u.contains(prefix))
        })
        .count()
}

fn namespace(ns: &str) -> Option<Value> {
    cluster().get_json(&["namespace", ns])
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Logins while the API server refuses connections leave their cluster
/// side pending (the second one fails at once: the fast-fail memory);
/// one pass after it answers again makes every one of them with the
/// login's own time, records it, and a second pass asks nothing.
#[test]
fn logins_during_an_outage_are_healed_by_one_pass_and_the_next_asks_nothing() {
    let site = Site::new("heal-outage", "METRICS_FILE=METRICS\n");
    // METRICS_FILE must be absolute: written in place now that dir is known.
    let metrics = site.dir.join("ood.prom");
    let env = std::fs::read_to_string(&site.hook_env).unwrap();
    std::fs::write(
        &site.hook_env,
        env.replace(
            "METRICS_FILE=METRICS",
            &format!("METRICS_FILE={}", metrics.display()),
        ),
    )
    .unwrap();
    let down = refusing(&site.dir);
    let users = ["heal-ann", "heal-ben", "heal-cy"];
    let before = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    for user in users {
        let out = site.login(user, &down);
        assert_eq!(out.status.code(), Some(69), "{}", text(&out));
        let note = site.note(user).expect("the login is noted as pending");
        let side = &note["sides"][0];
        assert_eq!(side["cluster"], CLUSTER, "{note}");
        assert!(side["login"].as_u64().unwrap() >= before, "{note}");
        assert!(
            side["error"].as_str().unwrap().contains("unreachable")
                || side["error"]
                    .as_str()
                    .unwrap()
                    .contains("not waiting for it again"),
            "{note}"
        );
        assert!(
            site.last_run(user)
                .contains(&format!("pending=\"{}\"", CLUSTER)),
            "{}",
            site.last_run(user)
        );
        assert!(namespace(&site.namespace(user)).is_none());
    }
    let logins: Vec<u64> = users
        .iter()
        .map(|u| site.note(u).unwrap()["sides"][0]["login"].as_u64().unwrap())
        .collect();

    // A pass while still down: nothing made, all still pending (75).
    let (out, _) = site.heal(&down, &[]);
    assert_eq!(out.status.code(), Some(75), "{}", text(&out));
    assert!(
        stderr(&out).contains("0 healed, 3 still pending, 0 refused"),
        "{}",
        text(&out)
    );

    // The dry run lists them and touches nothing.
    let (out, _) = site.heal(&answering(), &["--dry-run"]);
    assert_eq!(out.status.code(), Some(75), "{}", text(&out));
    for user in users {
        assert!(
            stderr(&out).contains(&format!("heal: {user}: ")),
            "{}",
            text(&out)
        );
        assert!(namespace(&site.namespace(user)).is_none());
    }

    // The cluster answers: one pass makes all three.
    let (out, _) = site.heal(&answering(), &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let err = stderr(&out);
    assert!(
        err.contains("3 healed, 0 still pending, 0 refused"),
        "{err}"
    );
    for (user, login) in users.iter().zip(&logins) {
        let ns = namespace(&site.namespace(user)).expect("healed: the namespace is there");
        assert_eq!(
            ns["metadata"]["annotations"]["openondemand.org/last-hook-execution"],
            login.to_string(),
            "the login's own time: {ns}"
        );
        assert_eq!(
            ns["metadata"]["annotations"]["openondemand.org/user"],
            *user
        );
        let rb = cluster()
            .get_json(&["rolebindings", "-n", &site.namespace(user)])
            .unwrap();
        assert!(!rb["items"].as_array().unwrap().is_empty(), "{rb}");
        assert!(site.note(user).is_none(), "{user}'s note is gone");
        let last = site.last_run(user);
        assert!(
            last.lines().nth(1).is_some_and(|l| l.contains("command=\"heal\"")
                && l.contains("outcome=\"healed\"")),
            "{last}"
        );
        // Its record (LOG_TARGET=stderr here, the system log on a site).
        assert!(
            err.lines().any(|l| l.contains("record: command=\"heal\"")
                && l.contains(&format!("user=\"{user}\""))
                && l.contains("outcome=\"healed\"")),
            "{err}"
        );
    }
    let prom = std::fs::read_to_string(&metrics).expect("metrics");
    assert!(
        prom.contains("ood_k8s_bootstrap_heals_total{outcome=\"healed\"} 3"),
        "{prom}"
    );
    assert!(
        prom.contains("ood_k8s_bootstrap_heal_pending_users 0"),
        "{prom}"
    );
    assert!(
        prom.contains("ood_k8s_bootstrap_heals_total{outcome=\"pending\"} 3"),
        "{prom}"
    );

    // The next pass: nothing pending, no request.
    let asked = requests(&site.prefix);
    let (out, _) = site.heal(&answering(), &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(
        requests(&site.prefix),
        asked,
        "a pass with nothing pending asked the API server"
    );
}

/// A refusal needs a person: a login refused because the namespace is
/// another login's is not noted, heal has nothing to do, and the other
/// login's namespace stays as it is.
#[test]
fn a_collision_refused_login_stays_refused_and_the_owner_keeps_the_namespace() {
    let site = Site::new("heal-coll", "");
    // heal.dan's namespace (the dashboard maps '.' to '-') is heal-dan's too.
    linux_user("heal.dan");
    let out = site.login("heal.dan", &answering());
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let ns = site.namespace("heal-dan");
    let before = namespace(&ns).unwrap();
    let out = site.login("heal-dan", &answering());
    assert_eq!(out.status.code(), Some(77), "{}", text(&out));
    assert!(
        site.note("heal-dan").is_none(),
        "a refusal was noted as pending"
    );
    let (out, _) = site.heal(&answering(), &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let after = namespace(&ns).unwrap();
    assert_eq!(
        before["metadata"]["annotations"], after["metadata"]["annotations"],
        "the owner's namespace was touched"
    );
    assert_eq!(
        after["metadata"]["annotations"]["openondemand.org/user"],
        "heal.dan"
    );
}

/// A login that succeeds after a pending one ends the pending state: heal
/// then has nothing of that user's to do.
#[test]
fn a_later_successful_login_ends_the_pending_state() {
    let site = Site::new("heal-later", "");
    let down = refusing(&site.dir);
    let out = site.login("heal-eve", &down);
    assert_eq!(out.status.code(), Some(69), "{}", text(&out));
    assert!(site.note("heal-eve").is_some());
    let out = site.login("heal-eve", &answering());
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        site.note("heal-eve").is_none(),
        "the successful login kept the note"
    );
    let asked = requests(&site.prefix);
    let (out, _) = site.heal(&answering(), &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(!stderr(&out).contains("heal-eve"), "{}", text(&out));
    assert_eq!(requests(&site.prefix), asked);
}

/// A pass while the API server accepts connections and never answers ends
/// within the deadline (not a deadline per user), and leaves every user
/// pending with the try counted.
#[test]
fn a_pass_while_the_cluster_is_still_silent_ends_within_the_deadline() {
    let site = Site::new("heal-silent", "FAST_FAIL_SECONDS=0\n");
    let (silent, _listener) = silent(&site.dir);
    let users = ["heal-fay", "heal-gus", "heal-hal", "heal-ida"];
    for user in users {
        let out = site.login(user, &silent);
        assert_eq!(out.status.code(), Some(69), "{}", text(&out));
        assert!(site.note(user).is_some(), "{}", text(&out));
    }
    let (out, took) = site.heal(&silent, &[]);
    assert_eq!(out.status.code(), Some(75), "{}", text(&out));
    assert!(
        took <= DEADLINE + common::MARGIN,
        "took {took:?} with a {DEADLINE:?} deadline: {}",
        text(&out)
    );
    for user in users {
        assert_eq!(site.note(user).unwrap()["sides"][0]["tries"], 1, "{user}");
    }
}

/// HEAL_MAX_PER_RUN bounds a pass, the longest-pending first; the rest
/// are healed by the next.
#[test]
fn heal_max_per_run_bounds_a_pass() {
    let site = Site::new("heal-max", "HEAL_MAX_PER_RUN=2\n");
    let down = refusing(&site.dir);
    let users = ["heal-jo", "heal-kim", "heal-lu"];
    for user in users {
        let out = site.login(user, &down);
        assert_eq!(out.status.code(), Some(69), "{}", text(&out));
        // Distinct note times: the order of the pass is the notes' order.
        std::thread::sleep(Duration::from_millis(20));
    }
    let (out, _) = site.heal(&answering(), &[]);
    assert_eq!(out.status.code(), Some(75), "{}", text(&out));
    assert!(
        stderr(&out).contains("2 healed, 0 still pending, 0 refused, 1 users left for the next pass (HEAL_MAX_PER_RUN=2)"),
        "{}",
        text(&out)
    );
    assert!(namespace(&site.namespace("heal-jo")).is_some());
    assert!(namespace(&site.namespace("heal-kim")).is_some());
    assert!(namespace(&site.namespace("heal-lu")).is_none());
    let (out, _) = site.heal(&answering(), &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(namespace(&site.namespace("heal-lu")).is_some());
}

/// The shipped unit runs `heal` as this test does, every minute.
#[test]
fn the_shipped_timer_runs_heal_every_minute() {
    let exec = common::unit_values("ood-k8s-bootstrap-heal.service", "ExecStart");
    assert_eq!(exec, ["/usr/bin/ood-k8s-bootstrap heal"], "{exec:?}");
    let calendar = common::unit_values("ood-k8s-bootstrap-heal.timer", "OnCalendar");
    assert_eq!(calendar, ["*-*-* *:*:00"], "{calendar:?}");
    let env = common::unit_values("ood-k8s-bootstrap-heal.service", "Environment");
    assert_eq!(env, ["KUBECONFIG=/root/.kube/config"], "{env:?}");
}

/// A namespace `reap` deleted is not healed back for a login from before
/// the deletion: reap drops the note (only a new login brings it back).
#[test]
fn a_namespace_reap_deleted_is_not_healed_back() {
    let site = Site::new("heal-reap", "REAP_IDLE_DAYS=30\n");
    let user = "heal-mo";
    let ns = site.namespace(user);
    let out = site.login(user, &answering());
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let long_ago = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        - 40 * 86_400;
    cluster().admin(&[
        "annotate",
        "--overwrite",
        "namespace",
        &ns,
        &format!("openondemand.org/last-hook-execution={long_ago}"),
    ]);
    let out = site.login(user, &refusing(&site.dir));
    assert_eq!(out.status.code(), Some(69), "{}", text(&out));
    assert!(site.note(user).is_some(), "{}", text(&out));

    let reaper = common::reaper_kubeconfig(&site.dir);
    let out = cluster()
        .hook()
        .env("KUBECONFIG", reaper)
        .arg("reap")
        .arg("--hook-env")
        .arg(&site.hook_env)
        .output()
        .expect("run reap");
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        namespace(&ns).is_none_or(|n| !n["metadata"]["deletionTimestamp"].is_null()),
        "not reaped: {}",
        text(&out)
    );
    assert!(
        site.note(user).is_none(),
        "reap kept the note: {}",
        text(&out)
    );
    let (out, _) = site.heal(&answering(), &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(!stderr(&out).contains(user), "{}", text(&out));
}
