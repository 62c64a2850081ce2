//! End-to-end with running pods (issue 26): the local cluster's real node
//! (tests/cluster/node) runs users' jobs as the dashboard's Kubernetes
//! adapter submits them, created with the users' own OIDC tokens after a
//! login made by the built hook: they run as the user, the NetworkPolicy the
//! hook made is enforced between users and lets the web node in, the pull
//! secret pulls from the local registry, the job-pod-reaper's binding lets
//! its ServiceAccount reap, and `reap` keeps a namespace while a pod runs.
//!
//! Every test needs a Ready node (NODE_NAME), the workload image
//! (TEST_IMAGE) and the web node's CIDR (WEB_NODE_CIDR; its network
//! namespace WEB_NODE_NETNS, or the test host itself when the env file has
//! none). tests/external-run runs them against any cluster with a Ready
//! schedulable node (tests/cluster/external finds it; the caller names the
//! image and the CIDR), users acting by impersonation there as no test IdP
//! exists; the tests in `local` need the local cluster's own registry
//! (REGISTRY, PRIVATE_IMAGE) and are not run there.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::{cluster, linux_user, scratch, text};
use serde_json::{Value, json};

const REPO: &str = env!("CARGO_MANIFEST_DIR");
/// Every wait for the node (a pod to run, a policy to take effect) ends by
/// this much, far beyond what it takes here (seconds).
const PATIENCE: Duration = Duration::from_secs(180);
/// The port the jobs' web servers (busybox httpd) listen on.
const PORT: u16 = 8080;

/// A hook.env for this cluster whose NetworkPolicy lets in `allow_cidr`
/// (without a test IdP, in external mode, the IdP keys are left out).
fn hook_env(dir: &Path, allow_cidr: &str, extra: &str) -> PathBuf {
    let c = cluster();
    let path = dir.join(format!("hook-{}.env", std::process::id()));
    let idp = if c.external() {
        String::new()
    } else {
        format!(
            "IDP_ISSUER_URL=\"{}\"\nCLIENT_ID=\"{}\"\nCLIENT_SECRET=\"{}\"\n",
            c.var("OIDC_ISSUER"),
            c.var("OIDC_CLIENT_ID"),
            c.var("OIDC_CLIENT_SECRET"),
        )
    };
    let text = format!("NETWORK_POLICY_ALLOW_CIDR=\"{allow_cidr}\"\n{idp}{extra}");
    std::fs::write(&path, text).expect("write hook.env");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    path
}

/// The hook as OnDemand runs it at `user`'s login; panics on failure.
fn login(user: &str, hook_env: &Path) {
    let out = cluster()
        .hook()
        .args(["--user", user, "--hook-env"])
        .arg(hook_env)
        .output()
        .expect("run hook");
    assert!(out.status.success(), "hook for {user}:\n{}", text(&out));
}

/// kubectl as `user` in `ns` with the user's own token, fresh from the IdP
/// (its tokens live seconds), `stdin` as its input; in external mode (no
/// test IdP) by impersonation, as the user with the group every
/// authenticated user has.
fn as_user(user: &str, ns: &str, args: &[&str], stdin: &str) -> Output {
    let c = cluster();
    if c.external() {
        return common::pipe(
            Command::new(c.var("KUBECTL"))
                .args(["--kubeconfig", c.var("KUBECONFIG_ADMIN")])
                .args(["--as", user, "--as-group", "system:authenticated"])
                .arg(format!("--namespace={ns}"))
                .args(args),
            stdin.as_bytes(),
        );
    }
    static CALLS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = scratch(&format!("node-{user}-{n}"));
    let kc = dir.join("kubeconfig");
    c.token_kubeconfig(&kc, user, &c.login(user).access);
    let out = common::pipe(
        Command::new(c.var("KUBECTL"))
            .arg(format!("--kubeconfig={}", kc.display()))
            .arg(format!("--namespace={ns}"))
            .args(args),
        stdin.as_bytes(),
    );
    let _ = std::fs::remove_dir_all(&dir);
    out
}

/// `kubectl create -f -` of `manifest` as `user`; panics on failure.
fn create_as(user: &str, ns: &str, manifest: &str) {
    let out = as_user(user, ns, &["create", "-f", "-"], manifest);
    assert!(
        out.status.success(),
        "{user} creating in {ns}: {}",
        text(&out)
    );
}

/// `user`'s uid, gid and groups (the passwd and group databases).
fn ids(user: &str) -> (u32, u32, Vec<u32>) {
    let (uid, gid, _) = linux_user(user);
    let out = Command::new("id").args(["-G", user]).output().unwrap();
    let mut groups: Vec<u32> = String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .map(|g| g.parse().unwrap())
        .collect();
    groups.sort_unstable();
    groups.dedup();
    (uid, gid, groups)
}

/// What a job pod is: its name, the user's ids, its image and shell command.
struct Job<'a> {
    name: &'a str,
    user: &'a str,
    image: &'a str,
    pull_policy: &'a str,
    script: &'a str,
    lifetime: &'a str,
}

impl<'a> Job<'a> {
    fn new(name: &'a str, user: &'a str, script: &'a str) -> Self {
        Job {
            name,
            user,
            image: cluster().var("TEST_IMAGE"),
            pull_policy: "IfNotPresent",
            script,
            lifetime: "01h00m00s",
        }
    }

    /// The pod as the dashboard's Kubernetes adapter submits it (ood_core's
    /// pod.yml.erb: the user's runAsUser/runAsGroup/supplementalGroups/
    /// fsGroup, runAsNonRoot, the lifetime annotation, its labels), with a
    /// scratch directory (emptyDir) at /work, with its uid overridden.
    fn pod_with_uid(&self, uid: u32) -> String {
        let (_, gid, groups) = ids(self.user);
        let groups: Vec<String> = groups.iter().map(u32::to_string).collect();
        let (name, image, policy, lifetime) =
            (self.name, self.image, self.pull_policy, self.lifetime);
        let script = serde_json::to_string(self.script).unwrap();
        format!(
            "apiVersion: v1
kind: Pod
metadata:
  name: {name}
  labels:
    job: {name}
    app.kubernetes.io/name: {name}
    app.kubernetes.io/managed-by: open-ondemand
  annotations:
    pod.kubernetes.io/lifetime: {lifetime}
spec:
  restartPolicy: Never
  automountServiceAccountToken: false
  securityContext:
    runAsUser: {uid}
    runAsGroup: {gid}
    runAsNonRoot: true
    supplementalGroups: [{groups}]
    fsGroup: {gid}
  containers:
  - name: job
    image: {image}
    imagePullPolicy: {policy}
    command: [/bin/sh, -c, {script}]
    ports:
    - containerPort: {PORT}
    volumeMounts:
    - {{name: work, mountPath: /work}}
    securityContext:
      allowPrivilegeEscalation: false
      capabilities: {{drop: [ALL]}}
      privileged: false
  volumes:
  - {{name: work, emptyDir: {{}}}}
",
            groups = groups.join(", ")
        )
    }

    fn pod(&self) -> String {
        self.pod_with_uid(ids(self.user).0)
    }
}

/// A job serving `body` over HTTP on PORT (busybox httpd), as its user.
fn web_job(name: &str, user: &str, body: &str) -> String {
    let script = format!("id; echo {body} > /work/index.html; exec httpd -f -p {PORT} -h /work");
    Job::new(name, user, &script).pod()
}

/// The NodePort Service the adapter makes for an interactive app.
fn node_port_service(job: &str) -> String {
    format!(
        "apiVersion: v1
kind: Service
metadata:
  name: {job}-service
  labels: {{job: {job}, app.kubernetes.io/managed-by: open-ondemand}}
spec:
  type: NodePort
  selector: {{job: {job}}}
  ports:
  - {{protocol: TCP, port: 80, targetPort: {PORT}}}
"
    )
}

/// The pod as the admin sees it (None: gone).
fn pod_json(ns: &str, pod: &str) -> Option<Value> {
    cluster().get_json(&["pod", "-n", ns, pod])
}

/// Waits until the pod's phase is one of `phases`; returns the pod.
fn until_phase(ns: &str, pod: &str, phases: &[&str]) -> Value {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let p = pod_json(ns, pod).unwrap_or_else(|| panic!("pod {ns}/{pod} is gone"));
        let phase = p["status"]["phase"].as_str().unwrap_or("");
        if phases.contains(&phase) {
            return p;
        }
        assert!(
            phase != "Failed" && Instant::now() < deadline,
            "pod {ns}/{pod} is {phase}, not {phases:?}, after {PATIENCE:?}: {}",
            p["status"]
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// Waits until `check` holds (bounded by PATIENCE); panics with `what`.
fn until(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !check() {
        assert!(Instant::now() < deadline, "{what}: not after {PATIENCE:?}");
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// The pod's log as `user` sees it (`kubectl logs`, the user's token).
fn logs_as(user: &str, ns: &str, pod: &str) -> String {
    let out = as_user(user, ns, &["logs", pod], "");
    assert!(
        out.status.success(),
        "{user}: kubectl logs {pod}: {}",
        text(&out)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn pod_ip(ns: &str, pod: &str) -> String {
    until_phase(ns, pod, &["Running"])["status"]["podIP"]
        .as_str()
        .expect("podIP")
        .to_owned()
}

/// Whether the pod `from` (in `ns`) fetches `url` (a TCP connection, 3 s at
/// most): its own busybox wget, run in it by the admin (kubectl exec).
fn pod_fetches(ns: &str, from: &str, url: &str, body: &str) -> bool {
    let out = cluster().kubectl_as(
        cluster().var("KUBECONFIG_ADMIN"),
        &[
            "exec",
            "-n",
            ns,
            from,
            "--",
            "/bin/busybox",
            "timeout",
            "3",
            "/bin/wget",
            "-q",
            "-O",
            "-",
            url,
        ],
    );
    out.status.success() && String::from_utf8_lossy(&out.stdout).contains(body)
}

/// Whether the web node (its own network namespace WEB_NODE_NETNS, or the
/// test host itself when there is none; its connections come from
/// WEB_NODE_CIDR) fetches `url` (curl, 3 s at most).
fn web_node_fetches(url: &str, body: &str) -> bool {
    let curl = ["curl", "-s", "--max-time", "3", url];
    let out = match cluster().var_opt("WEB_NODE_NETNS") {
        Some(netns) => Command::new("nsenter")
            .arg(format!("--net={netns}"))
            .args(curl)
            .output()
            .expect("nsenter curl"),
        None => Command::new(curl[0])
            .args(&curl[1..])
            .output()
            .expect("curl"),
    };
    out.status.success() && String::from_utf8_lossy(&out.stdout).contains(body)
}

/// The documents of a shipped manifest under hooks/.
fn manifest(name: &str) -> Vec<Value> {
    let text = std::fs::read_to_string(Path::new(REPO).join("hooks").join(name)).unwrap();
    serde_saphyr::from_multiple(&text).unwrap()
}

fn admin_apply(objects: &[Value]) {
    let c = cluster();
    for o in objects {
        let out = common::pipe(
            Command::new(c.var("KUBECTL"))
                .args(["--kubeconfig", c.var("KUBECONFIG_ADMIN")])
                .args(["apply", "--server-side", "--force-conflicts", "-f", "-"]),
            o.to_string().as_bytes(),
        );
        assert!(out.status.success(), "apply {o}: {}", text(&out));
    }
}

/// Objects a test makes outside its namespaces (cluster-wide, or in
/// `ondemand`): in external mode, those of `objects` (what `kubectl get`
/// takes) that do not exist yet are deleted when this is dropped, so that
/// `tests/cluster/external --cleanup` leaves the cluster as it found it. On
/// the local cluster they stay: tests running beside this one use them.
struct Leftovers(Vec<Vec<String>>);

impl Leftovers {
    fn of(objects: &[&[&str]]) -> Self {
        let c = cluster();
        if !c.external() {
            return Leftovers(Vec::new());
        }
        Leftovers(
            objects
                .iter()
                .filter(|o| c.get_json(o).is_none())
                .map(|o| o.iter().map(|a| (*a).to_owned()).collect())
                .collect(),
        )
    }
}

impl Drop for Leftovers {
    fn drop(&mut self) {
        let c = cluster();
        for o in &self.0 {
            let mut args = vec!["delete", "--ignore-not-found", "--wait=false"];
            args.extend(o.iter().map(String::as_str));
            let out = c.kubectl_as(c.var("KUBECONFIG_ADMIN"), &args);
            if !out.status.success() {
                eprintln!("leaving {o:?}: {}", text(&out));
            }
        }
    }
}

/// The shipped uid/gid admission policy, bound to `ns` alone (the other
/// tests see the cluster as `up` made it). Returns what to delete after.
fn uid_gid_policy_in(ns: &str, prefix: &str) -> (String, String) {
    let docs = manifest("uid-gid-policy.yaml");
    let (policy, binding, settings) = (&docs[0], &docs[1], &docs[2]);
    let mut params = settings.clone();
    let params_name = format!("{prefix}pod-policy");
    params["metadata"]["name"] = json!(params_name);
    let mut narrowed = binding.clone();
    let binding_name = format!("{prefix}uid-gid");
    narrowed["metadata"]["name"] = json!(binding_name);
    narrowed["spec"]["paramRef"]["name"] = json!(params_name);
    narrowed["spec"]["matchResources"]["namespaceSelector"]["matchExpressions"] =
        json!([{"key": "kubernetes.io/metadata.name", "operator": "In", "values": [ns]}]);
    admin_apply(&[policy.clone(), params, narrowed]);
    (binding_name, params_name)
}

/// A user's first job right after login: the adapter's pod, created with
/// the user's own token, runs on the node as the user (its `id` in its log,
/// read with `kubectl logs` as the user); the same pod with another uid is
/// refused by the admission policy, saying why.
#[test]
fn the_first_job_after_login_runs_as_the_user() {
    let c = cluster();
    let dir = scratch("node-first");
    let prefix = common::prefix("nodefirst");
    let user = "alice";
    let (uid, gid, _) = ids(user);
    let ns = format!("{prefix}{user}");
    let env = hook_env(
        &dir,
        c.var("WEB_NODE_CIDR"),
        &format!(
            "NAMESPACE_PREFIX={prefix}\nK8S_CREDENTIALS=none\nPUBLISH_UID_GID=true\nPUBLISH_GROUPS=true\n"
        ),
    );
    login(user, &env);
    let _policy = Leftovers::of(&[&["validatingadmissionpolicy", "ood-uid-gid"]]);
    let (binding, params) = uid_gid_policy_in(&ns, &prefix);
    let job = Job::new("first-job", user, "id; sleep 3600");
    common::until_uid_gid_policy_refuses(&ns, |name| {
        as_user(
            user,
            &ns,
            &["create", "-f", "-"],
            &Job::new(name, user, "id").pod_with_uid(0),
        )
    });

    // Another user's uid, the pod otherwise the same: refused at admission.
    let other = as_user(
        user,
        &ns,
        &["create", "-f", "-"],
        &job.pod_with_uid(uid + 1),
    );
    assert!(
        !other.status.success(),
        "a pod as uid {} was admitted",
        uid + 1
    );
    let why = String::from_utf8_lossy(&other.stderr);
    assert!(
        why.contains("ood-uid-gid") && why.contains(&format!("runAsUser {uid}")),
        "{why}"
    );
    // The user's own: admitted, scheduled on the node, running as the user.
    create_as(user, &ns, &job.pod());
    let pod = until_phase(&ns, "first-job", &["Running"]);
    // On a Ready node (the local cluster's one node: NODE_NAME).
    let node = pod["spec"]["nodeName"].as_str().expect("nodeName");
    if !c.external() {
        assert_eq!(node, c.var("NODE_NAME"));
    }
    let conditions =
        c.get_json(&["node", node]).expect("the pod's node")["status"]["conditions"].clone();
    assert!(
        conditions
            .as_array()
            .expect("conditions")
            .iter()
            .any(|k| k["type"] == "Ready" && k["status"] == "True"),
        "node {node}: {conditions}"
    );
    let want = format!("uid={uid}({user}) gid={gid}");
    let want_bare = format!("uid={uid} gid={gid}");
    let mut log = String::new();
    until("the job's `id` in its log", || {
        log = logs_as(user, &ns, "first-job");
        log.contains(&want) || log.contains(&want_bare)
    });
    assert!(!log.contains("uid=0"), "{log}");

    c.admin(&["delete", "validatingadmissionpolicybinding", &binding]);
    c.admin(&["-n", "ondemand", "delete", "configmap", &params]);
    c.admin(&["delete", "namespace", &ns, "--wait=false"]);
}

/// Isolation in effect: the NetworkPolicy the hook made keeps alice's pod
/// from bob's job and lets bob's own pod and the web node (its address in
/// NETWORK_POLICY_ALLOW_CIDR) in, directly and through the adapter's
/// NodePort Service; each refusal is shown to be the policy's (deleted, the
/// same connection succeeds) and each admission to be the allow-list's
/// (the web node left out, it is refused).
#[test]
fn network_policy_isolates_users_and_lets_the_web_node_in() {
    let c = cluster();
    let dir = scratch("node-isolation");
    let prefix = common::prefix("nodeiso");
    let base = format!("NAMESPACE_PREFIX={prefix}\nK8S_CREDENTIALS=none\n");
    let with_web = hook_env(&dir, c.var("WEB_NODE_CIDR"), &base);
    let (alice, bob) = (format!("{prefix}alice"), format!("{prefix}bob"));
    login("alice", &with_web);
    login("bob", &with_web);
    create_as("alice", &alice, &web_job("alice-web", "alice", "alice-ok"));
    create_as("alice", &alice, &node_port_service("alice-web"));
    create_as(
        "alice",
        &alice,
        &Job::new("alice-cli", "alice", "sleep 3600").pod(),
    );
    create_as("bob", &bob, &web_job("bob-web", "bob", "bob-ok"));
    create_as("bob", &bob, &Job::new("bob-cli", "bob", "sleep 3600").pod());
    let alice_url = format!("http://{}:{PORT}/", pod_ip(&alice, "alice-web"));
    let bob_url = format!("http://{}:{PORT}/", pod_ip(&bob, "bob-web"));
    until_phase(&alice, "alice-cli", &["Running"]);
    until_phase(&bob, "bob-cli", &["Running"]);
    let svc = c
        .get_json(&["service", "-n", &alice, "alice-web-service"])
        .unwrap();
    let node_port = svc["spec"]["ports"][0]["nodePort"]
        .as_u64()
        .expect("nodePort");
    let host_ip = pod_json(&alice, "alice-web").unwrap()["status"]["hostIP"]
        .as_str()
        .unwrap()
        .to_owned();
    let node_port_url = format!("http://{host_ip}:{node_port}/");

    // Bob's own pod reaches his job; alice's does not.
    until("bob's second pod reaching bob's job", || {
        pod_fetches(&bob, "bob-cli", &bob_url, "bob-ok")
    });
    until("alice's pod refused by bob's NetworkPolicy", || {
        !pod_fetches(&alice, "alice-cli", &bob_url, "bob-ok")
    });
    // The web node reaches alice's job, directly and by its NodePort.
    until("the web node reaching alice's job", || {
        web_node_fetches(&alice_url, "alice-ok")
    });
    until("the web node reaching alice's job by its NodePort", || {
        web_node_fetches(&node_port_url, "alice-ok")
    });

    // The other way: bob's policy deleted, alice's pod gets through.
    c.admin(&[
        "delete",
        "networkpolicy",
        "-n",
        &bob,
        "deny-from-other-namespaces",
    ]);
    until(
        "alice's pod reaching bob's job once his policy is gone",
        || pod_fetches(&alice, "alice-cli", &bob_url, "bob-ok"),
    );
    // Bob logs in again with the web node left out of the allow-list: his
    // policy is back; alice's pod and the web node are refused, his own
    // pod still gets in.
    let without_web = hook_env(&scratch("node-isolation-2"), "192.0.2.1/32", &base);
    login("bob", &without_web);
    until("alice's pod refused again by bob's policy", || {
        !pod_fetches(&alice, "alice-cli", &bob_url, "bob-ok")
    });
    until(
        "the web node refused by bob's policy without its CIDR",
        || !web_node_fetches(&bob_url, "bob-ok"),
    );
    assert!(pod_fetches(&bob, "bob-cli", &bob_url, "bob-ok"));
    // ... and with it (bob's login with the web node's CIDR), let in.
    login("bob", &with_web);
    until("the web node let in by bob's policy with its CIDR", || {
        web_node_fetches(&bob_url, "bob-ok")
    });
    // Alice's policy deleted and made again without the web node: the web
    // node is refused direct access to her job, then let in once more.
    login("alice", &without_web);
    until(
        "the web node refused by alice's policy without its CIDR",
        || !web_node_fetches(&alice_url, "alice-ok"),
    );
    c.admin(&[
        "delete",
        "networkpolicy",
        "-n",
        &alice,
        "deny-from-other-namespaces",
    ]);
    until(
        "the web node reaching alice's job once her policy is gone",
        || web_node_fetches(&alice_url, "alice-ok"),
    );

    for ns in [&alice, &bob] {
        c.admin(&["delete", "namespace", ns, "--wait=false"]);
    }
}

/// The tests that need the local cluster's own image registry (REGISTRY,
/// PRIVATE_IMAGE: tests/cluster/node/up); tests/external-run does not run
/// them.
mod local {
    use super::*;

    /// The pull secret: with IMAGE_PULL_SECRET (from a root-only docker
    /// config.json holding the registry's credentials) the user's pod pulls the
    /// image only the local registry serves, through the Secret the hook put on
    /// `default`, and runs; without it the pull is refused and the pod's
    /// status says it was for want of credentials.
    #[test]
    fn the_pull_secret_pulls_the_private_image() {
        let c = cluster();
        let dir = scratch("node-pull");
        let prefix = common::prefix("nodepull");
        let base = format!("NAMESPACE_PREFIX={prefix}\nK8S_CREDENTIALS=none\n");
        let config = dir.join("registry.json");
        let auth = base64(&format!(
            "{}:{}",
            c.var("REGISTRY_USER"),
            c.var("REGISTRY_PASSWORD")
        ));
        std::fs::write(
            &config,
            json!({"auths": {c.var("REGISTRY"): {"auth": auth}}}).to_string(),
        )
        .unwrap();
        std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o600)).unwrap();
        let with = hook_env(
            &dir,
            c.var("WEB_NODE_CIDR"),
            &format!(
                "{base}IMAGE_PULL_SECRET=registry-pull\nREGISTRY_DOCKER_CONFIG_JSON={}\n",
                config.display()
            ),
        );
        let without = hook_env(&scratch("node-pull-2"), c.var("WEB_NODE_CIDR"), &base);
        let (alice, bob) = (format!("{prefix}alice"), format!("{prefix}bob"));
        login("bob", &without);
        login("alice", &with);
        let sa = c
            .get_json(&["serviceaccount", "-n", &alice, "default"])
            .unwrap();
        assert_eq!(sa["imagePullSecrets"], json!([{"name": "registry-pull"}]));

        // Without the secret first (Always: never an image already pulled).
        let mut job = Job::new("private", "bob", "id; sleep 3600");
        job.image = c.var("PRIVATE_IMAGE");
        job.pull_policy = "Always";
        create_as("bob", &bob, &job.pod());
        let mut waiting = Value::Null;
        until("bob's pull refused", || {
            let p = pod_json(&bob, "private").unwrap();
            waiting = p["status"]["containerStatuses"][0]["state"]["waiting"].clone();
            matches!(
                waiting["reason"].as_str(),
                Some("ErrImagePull" | "ImagePullBackOff")
            )
        });
        let status = pod_json(&bob, "private").unwrap()["status"].to_string();
        assert!(
            [
                "no basic auth credentials",
                "401",
                "nauthorized",
                "authorization failed"
            ]
            .iter()
            .any(|w| status.contains(w)),
            "bob's pull was refused for another reason: {status}"
        );
        assert_ne!(
            pod_json(&bob, "private").unwrap()["status"]["phase"],
            "Running"
        );

        job.user = "alice";
        create_as("alice", &alice, &job.pod());
        until_phase(&alice, "private", &["Running"]);
        let (uid, _, _) = ids("alice");
        until("alice's private job's `id` in its log", || {
            logs_as("alice", &alice, "private").contains(&format!("uid={uid}"))
        });

        for ns in [&alice, &bob] {
            c.admin(&["delete", "namespace", ns, "--wait=false"]);
        }
    }

    fn base64(s: &str) -> String {
        let out = common::pipe(Command::new("base64").arg("-w0"), s.as_bytes());
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    }
}

/// kubectl as the job-pod-reaper's ServiceAccount (the admin impersonating
/// it), as the reaper acts.
fn as_reaper(args: &[&str]) -> Output {
    let mut full = vec![
        "--as=system:serviceaccount:job-pod-reaper:job-pod-reaper",
        "--as-group=system:serviceaccounts",
        "--as-group=system:serviceaccounts:job-pod-reaper",
        "--as-group=system:authenticated",
    ];
    full.extend_from_slice(args);
    cluster().kubectl_as(cluster().var("KUBECONFIG_ADMIN"), &full)
}

/// The objects of an expired job (its pod with a lifetime of seconds, now
/// past, running; its Service, Secret and ConfigMap), made by `user`.
fn expired_job(user: &str, ns: &str) {
    let mut job = Job::new("expired", user, "id; sleep 3600");
    job.lifetime = "00h00m02s";
    create_as(user, ns, &job.pod());
    create_as(user, ns, &node_port_service("expired"));
    create_as(
        user,
        ns,
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: expired-configmap, labels: {job: expired}}\ndata: {a: b}\n",
    );
    create_as(
        user,
        ns,
        "apiVersion: v1\nkind: Secret\nmetadata: {name: expired-secret, labels: {job: expired}}\nstringData: {password: x}\n",
    );
    let pod = until_phase(ns, "expired", &["Running"]);
    assert!(pod["metadata"]["creationTimestamp"].is_string());
    std::thread::sleep(Duration::from_secs(3)); // past its lifetime
}

const REAPED: [&str; 4] = [
    "pod/expired",
    "service/expired-service",
    "secret/expired-secret",
    "configmap/expired-configmap",
];

/// The job-pod-reaper's binding: its ServiceAccount lists and deletes the
/// user's expired pod and its Service, Secret and ConfigMap in a namespace
/// whose login had USE_JOB_POD_REAPER=true; in a namespace made without it,
/// and in any other namespace, it is refused.
#[test]
fn the_job_pod_reaper_binding_lets_its_account_reap_the_users_namespace_only() {
    let c = cluster();
    let dir = scratch("node-jpr");
    let prefix = common::prefix("nodejpr");
    let base = format!("NAMESPACE_PREFIX={prefix}\nK8S_CREDENTIALS=none\n");
    let with = hook_env(
        &dir,
        c.var("WEB_NODE_CIDR"),
        &format!("{base}USE_JOB_POD_REAPER=true\n"),
    );
    let without = hook_env(&scratch("node-jpr-2"), c.var("WEB_NODE_CIDR"), &base);
    let (alice, bob) = (format!("{prefix}alice"), format!("{prefix}bob"));
    login("alice", &with);
    login("bob", &without);
    expired_job("alice", &alice);
    expired_job("bob", &bob);

    // Refused without the binding (bob's) and elsewhere (ondemand's).
    for (ns, what) in [
        (&bob, "pod/expired"),
        (&"ondemand".to_owned(), "configmap/kube-root-ca.crt"),
    ] {
        let out = as_reaper(&["auth", "can-i", "delete", what, "-n", ns]);
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            "no",
            "{ns}: {}",
            text(&out)
        );
    }
    for what in REAPED {
        let out = as_reaper(&["delete", "-n", &bob, what, "--wait=false"]);
        assert!(!out.status.success(), "the reaper deleted {what} in {bob}");
        assert!(
            text(&out).contains("Forbidden") || text(&out).contains("forbidden"),
            "{}",
            text(&out)
        );
    }
    assert_eq!(
        pod_json(&bob, "expired").unwrap()["status"]["phase"],
        "Running"
    );

    // Allowed with it: the reaper finds the expired pod and deletes its job.
    let out = as_reaper(&[
        "get",
        "pods",
        "-n",
        &alice,
        "-l",
        "app.kubernetes.io/managed-by=open-ondemand",
        "-o",
        "json",
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let listed: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        listed["items"][0]["metadata"]["annotations"]["pod.kubernetes.io/lifetime"],
        "00h00m02s"
    );
    for what in REAPED {
        let out = as_reaper(&["delete", "-n", &alice, what, "--wait=false"]);
        assert!(
            out.status.success(),
            "the reaper deleting {what} in {alice}: {}",
            text(&out)
        );
    }
    until("alice's expired pod gone", || {
        pod_json(&alice, "expired").is_none()
    });
    for what in &REAPED[1..] {
        assert!(
            c.get_json(&["-n", &alice, what]).is_none(),
            "{what} still there"
        );
    }

    for ns in [&alice, &bob] {
        c.admin(&["delete", "namespace", ns, "--wait=false"]);
    }
}

/// `reap` as root, with the shipped CronJob's account.
fn reap(hook_env: &Path) -> Output {
    let kubeconfig = common::reaper_kubeconfig(&scratch("node-reaper"));
    cluster()
        .hook()
        .env("KUBECONFIG", kubeconfig)
        .arg("reap")
        .arg("--hook-env")
        .arg(hook_env)
        .output()
        .expect("run reap")
}

/// Deleted: gone, or being deleted.
fn deleted(ns: &str) -> bool {
    cluster()
        .get_json(&["namespace", ns])
        .is_none_or(|n| !n["metadata"]["deletionTimestamp"].is_null())
}

/// `reap`: idle namespaces (no login for 40 days) are kept while a job
/// runs on the node; once it has ended (deleted, or Succeeded) they go.
#[test]
fn reap_keeps_an_idle_namespace_while_its_pod_runs() {
    let c = cluster();
    let _reaper = Leftovers::of(&[
        &["clusterrole", "ondemand-reap"],
        &["clusterrolebinding", "ood-reaper"],
        &["serviceaccount", "-n", "ondemand", "ood-reaper"],
    ]);
    let dir = scratch("node-reap");
    let prefix = common::prefix("nodereap");
    let env = hook_env(
        &dir,
        c.var("WEB_NODE_CIDR"),
        &format!("NAMESPACE_PREFIX={prefix}\nK8S_CREDENTIALS=none\nREAP_IDLE_DAYS=30\n"),
    );
    let users = ["nd-reap-del", "nd-reap-done"];
    let long_ago = (std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        - 40 * 86_400)
        .to_string();
    let ns = |u: &str| format!("{prefix}{u}");
    for u in users {
        linux_user(u);
        login(u, &env);
        // A job as the adapter submits it (made by the admin: no IdP user
        // of that name); it ends with success once /work/stop exists.
        let job = Job::new("job", u, "id; until [ -d /work/stop ]; do sleep 1; done");
        let out = common::pipe(
            Command::new(c.var("KUBECTL")).args([
                "--kubeconfig",
                c.var("KUBECONFIG_ADMIN"),
                "-n",
                &ns(u),
                "create",
                "-f",
                "-",
            ]),
            job.pod().as_bytes(),
        );
        assert!(out.status.success(), "{}", text(&out));
        until_phase(&ns(u), "job", &["Running"]);
        c.admin(&[
            "annotate",
            "--overwrite",
            "namespace",
            &ns(u),
            &format!("openondemand.org/last-hook-execution={long_ago}"),
        ]);
    }
    let out = reap(&env);
    assert!(out.status.success(), "{}", text(&out));
    for u in users {
        assert!(
            !deleted(&ns(u)),
            "{} reaped while its job runs: {}",
            ns(u),
            text(&out)
        );
    }

    // One job deleted, the other ends by itself (Succeeded).
    c.admin(&[
        "delete",
        "pod",
        "-n",
        &ns(users[0]),
        "job",
        "--grace-period=1",
        "--wait=true",
    ]);
    c.admin(&[
        "exec",
        "-n",
        &ns(users[1]),
        "job",
        "--",
        "/bin/mkdir",
        "/work/stop",
    ]);
    until_phase(&ns(users[1]), "job", &["Succeeded"]);
    let out = reap(&env);
    assert!(out.status.success(), "{}", text(&out));
    for u in users {
        assert!(
            deleted(&ns(u)),
            "{} kept after its job ended: {}",
            ns(u),
            text(&out)
        );
    }
}
