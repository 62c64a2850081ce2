//! End-to-end: the built binary against the real local kube-apiserver and
//! Dex (tests/cluster/up), run as OnDemand runs it — as root with the
//! `ondemand` ServiceAccount's kubeconfig, never the admin's.

mod common;

use std::io::Read;
use std::net::TcpListener;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{cluster, linux_user, ondemand_writes, scratch, text};
use serde_json::Value;

/// Runs the hook for `user` with `hook_env`, returning the output.
fn hook(user: &str, hook_env: &std::path::Path, extra: &[&str]) -> std::process::Output {
    cluster()
        .hook()
        .args(["--user", user, "--hook-env"])
        .arg(hook_env)
        .args(extra)
        .output()
        .expect("run hook")
}

fn assert_ok(out: &std::process::Output) {
    assert!(out.status.success(), "hook failed:\n{}", text(out));
}

fn rv(v: &Value) -> String {
    v["metadata"]["resourceVersion"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

// ---- the cluster under test (issue 2) ---------------------------------

#[test]
fn ondemand_account_has_only_what_the_hook_needs() {
    let c = cluster();
    let can = |args: &[&str]| {
        let mut full = vec!["auth", "can-i"];
        full.extend_from_slice(args);
        String::from_utf8_lossy(&c.kubectl_as(c.var("KUBECONFIG_ONDEMAND"), &full).stdout)
            .trim()
            .to_owned()
    };
    assert_eq!(can(&["delete", "namespaces"]), "no");
    assert_eq!(can(&["list", "namespaces"]), "no");
    assert_eq!(can(&["delete", "rolebindings", "-n", "default"]), "no");
    // list, to check whose a namespace without an owner record is.
    assert_eq!(can(&["list", "rolebindings", "-n", "default"]), "yes");
    assert_eq!(can(&["list", "roles", "-n", "default"]), "no");
    assert_eq!(
        can(&[
            "create",
            "serviceaccounts",
            "--subresource=token",
            "-n",
            "default"
        ]),
        "no"
    );
    assert_eq!(can(&["patch", "namespaces"]), "yes");
    // `bind` on exactly the hook's roles (fast first logins), no others.
    assert_eq!(can(&["bind", "clusterroles/ood-user", "-n", "x"]), "yes");
    assert_eq!(
        can(&["bind", "clusterroles/ood-initializer", "-n", "x"]),
        "yes"
    );
    assert_eq!(
        can(&["bind", "clusterroles/cluster-admin", "-n", "x"]),
        "no"
    );
    assert_eq!(can(&["bind", "clusterroles/admin", "-n", "x"]), "no");
    assert_eq!(can(&["escalate", "clusterroles/ood-user"]), "no");
    // ... and `get` on them only, so doctor can tell that they exist.
    assert_eq!(can(&["get", "clusterroles/ood-user"]), "yes");
    assert_eq!(can(&["get", "clusterroles/cluster-admin"]), "no");
    assert_eq!(can(&["list", "clusterroles"]), "no");
}

// ---- the cluster side (issue 3) ---------------------------------------

#[test]
fn new_user_gets_every_object_and_rbac_works() {
    let c = cluster();
    let dir = scratch("every-object");
    let reg = dir.join("registry.json");
    std::fs::write(&reg, r#"{"auths":{"registry.example":{"auth":"dTpw"}}}"#).unwrap();
    let env = c.hook_env(
        &dir,
        &format!(
            "NAMESPACE_PREFIX=\"{p}\"\nUSE_JOB_POD_REAPER=true\nIMAGE_PULL_SECRET=regcred\nREGISTRY_DOCKER_CONFIG_JSON={}\nK8S_CREDENTIALS=none\n",
            reg.display(),
            p = common::prefix("every")
        ),
    );
    let carol_ns = format!("{}carol-smith", common::prefix("every"));
    let bob_ns = format!("{}bob", common::prefix("every"));
    linux_user("carol.smith");
    linux_user("bob");
    let before = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let out = hook("carol.smith", &env, &[]);
    assert_ok(&out);
    assert_ok(&hook("bob", &env, &[]));

    let ns = c
        .get_json(&["namespace", &carol_ns])
        .expect("namespace created");
    assert_eq!(
        ns["metadata"]["labels"]["app.kubernetes.io/name"],
        "open-ondemand"
    );
    let stamp: u64 = ns["metadata"]["annotations"]["openondemand.org/last-hook-execution"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        stamp >= before && stamp <= before + 60,
        "annotation {stamp} vs {before}"
    );

    let np = c
        .get_json(&[
            "networkpolicy",
            "-n",
            &carol_ns,
            "deny-from-other-namespaces",
        ])
        .unwrap();
    assert_eq!(np["spec"]["podSelector"], serde_json::json!({}));
    assert_eq!(
        np["spec"]["ingress"][0]["from"][0]["podSelector"],
        serde_json::json!({})
    );
    assert_eq!(
        np["spec"]["ingress"][0]["from"][1]["ipBlock"]["cidr"],
        "127.0.0.1/32"
    );

    let rb = |name: &str| {
        c.get_json(&["rolebinding", "-n", &carol_ns, name])
            .expect(name)
    };
    let user_rb = rb("carol.smith-ood-user");
    assert_eq!(user_rb["roleRef"]["kind"], "ClusterRole");
    assert_eq!(user_rb["roleRef"]["name"], "ood-user");
    assert_eq!(
        user_rb["subjects"],
        serde_json::json!([{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "carol.smith"}])
    );
    let init_rb = rb("carol.smith-ood-initializer");
    assert_eq!(init_rb["roleRef"]["name"], "ood-initializer");
    assert_eq!(
        init_rb["subjects"],
        serde_json::json!([{"kind": "ServiceAccount", "name": "default", "namespace": &carol_ns}])
    );
    let reaper_rb = rb("carol.smith-job-pod-reaper-rolebinding");
    assert_eq!(reaper_rb["roleRef"]["name"], "job-pod-reaper");
    assert_eq!(
        reaper_rb["subjects"],
        serde_json::json!([{"kind": "ServiceAccount", "name": "job-pod-reaper", "namespace": "job-pod-reaper"}])
    );

    let secret = c.get_json(&["secret", "-n", &carol_ns, "regcred"]).unwrap();
    assert_eq!(secret["type"], "kubernetes.io/dockerconfigjson");
    assert!(secret["data"][".dockerconfigjson"].is_string());
    let sa = c
        .get_json(&["serviceaccount", "-n", &carol_ns, "default"])
        .unwrap();
    assert_eq!(
        sa["imagePullSecrets"],
        serde_json::json!([{"name": "regcred"}])
    );

    // Nothing we made carries a `job` label.
    for kind in ["networkpolicy", "rolebinding", "secret"] {
        let list = c.get_json(&[kind, "-n", &carol_ns]).unwrap();
        for item in list["items"].as_array().unwrap() {
            assert!(item["metadata"]["labels"].get("job").is_none(), "{item}");
        }
    }

    // The user (with their own OIDC token from the test IdP, or by
    // impersonation on an existing cluster) may create a pod in their
    // namespace, and nowhere else.
    let pod = |ns: &str| {
        c.kubectl_user(
            "carol.smith",
            &[
                "run",
                "probe",
                "-n",
                ns,
                "--image=registry.example/none",
                "--restart=Never",
            ],
        )
    };
    let mine = pod(&carol_ns);
    assert!(mine.status.success(), "{}", text(&mine));
    let theirs = pod(&bob_ns);
    assert!(!theirs.status.success());
    assert!(
        String::from_utf8_lossy(&theirs.stderr).contains("forbidden"),
        "{}",
        text(&theirs)
    );
    // Users cannot write their Namespace object (pod-security labels).
    let relabel = c.kubectl_user(
        "carol.smith",
        &[
            "label",
            "namespace",
            &carol_ns,
            "pod-security.kubernetes.io/enforce=privileged",
        ],
    );
    assert!(!relabel.status.success(), "{}", text(&relabel));
}

#[test]
fn second_run_changes_only_the_annotation() {
    let c = cluster();
    let dir = scratch("second-run");
    let second_ns = format!("{}alice", common::prefix("second"));
    let env = c.hook_env(
        &dir,
        &format!(
            "NAMESPACE_PREFIX={}\nUSE_JOB_POD_REAPER=true\nK8S_CREDENTIALS=none\n",
            common::prefix("second")
        ),
    );
    linux_user("alice");
    assert_ok(&hook("alice", &env, &[]));
    let kinds = ["networkpolicy", "rolebinding", "serviceaccount"];
    let snapshot = || -> Vec<(String, String)> {
        kinds
            .iter()
            .flat_map(|k| {
                let list = c.get_json(&[k, "-n", &second_ns]).unwrap();
                list["items"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|i| (format!("{k}/{}", i["metadata"]["name"]), rv(i)))
                    .collect::<Vec<_>>()
            })
            .collect()
    };
    let first = snapshot();
    let ns1 = c.get_json(&["namespace", &second_ns]).unwrap();
    // A later second, so that the annotation (one-second resolution, as
    // the namespace reaper reads it) changes; the same second is
    // `a_rerun_in_the_same_second_reports_everything_unchanged`.
    wait_for_next_second();
    let out = hook("alice", &env, &["-v"]);
    assert_ok(&out);
    assert_eq!(
        snapshot(),
        first,
        "objects other than the namespace were rewritten"
    );
    let ns2 = c.get_json(&["namespace", &second_ns]).unwrap();
    let mut a = ns1["metadata"].clone();
    let mut b = ns2["metadata"].clone();
    for m in [&mut a, &mut b] {
        let o = m.as_object_mut().unwrap();
        o.remove("resourceVersion");
        o.remove("managedFields");
        o["annotations"]
            .as_object_mut()
            .unwrap()
            .remove("openondemand.org/last-hook-execution");
    }
    assert_eq!(a, b, "the namespace changed beyond its annotation");
    assert_ne!(
        ns1["metadata"]["annotations"]["openondemand.org/last-hook-execution"],
        ns2["metadata"]["annotations"]["openondemand.org/last-hook-execution"]
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("0 created, 1 changed, 5 unchanged"),
        "{stderr}"
    );
}

/// Two runs within one second, the first changing objects: the second
/// changes nothing (the namespace's annotation has whole seconds, so not
/// even the namespace), and its summary says so; it used to say that every
/// object the first run wrote had changed. Both the first runs after a
/// create (which take the namespace over from the create's bookkeeping)
/// and a run that writes nothing at all are checked.
#[test]
fn a_rerun_in_the_same_second_reports_everything_unchanged() {
    let c = cluster();
    let dir = scratch("same-second");
    linux_user("alice");
    let env = |prefix: &str, reaper: bool| {
        let dir = dir.join(format!("{prefix}{reaper}"));
        std::fs::create_dir_all(&dir).unwrap();
        c.hook_env(
            &dir,
            &format!(
                "NAMESPACE_PREFIX={prefix}\nUSE_JOB_POD_REAPER={reaper}\nK8S_CREDENTIALS=none\n"
            ),
        )
    };
    let unchanged = |out: &std::process::Output| {
        assert_ok(out);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("0 created, 0 changed, "), "{stderr}");
    };
    // Runs must fall in one second: a run takes tens of milliseconds, so
    // start right after a second begins; try again (in a new namespace) if
    // the machine stalls across the boundary.
    for attempt in 0..5 {
        let prefix = common::prefix(&format!("same{attempt}"));
        let (without, with) = (env(&prefix, false), env(&prefix, true));
        wait_for_next_second();
        let started = unix_secs();
        assert_ok(&hook("alice", &without, &[]));
        let takeover = hook("alice", &without, &["-v"]);
        let same = unix_secs() == started;
        // In a later second: the reaper binding is added; then, within
        // that second, a run that writes nothing.
        wait_for_next_second();
        let started = unix_secs();
        let added = hook("alice", &with, &["-v"]);
        let rerun = hook("alice", &with, &["-v"]);
        if !same || unix_secs() != started {
            continue;
        }
        unchanged(&takeover);
        assert_ok(&added);
        assert!(
            String::from_utf8_lossy(&added.stderr).contains(": 1 created, 1 changed, "),
            "{}",
            text(&added)
        );
        unchanged(&rerun);
        return;
    }
    panic!("five tries, and no two runs fell in one second");
}

fn unix_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Sleeps until just after the next whole second.
fn wait_for_next_second() {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    std::thread::sleep(
        Duration::from_nanos(u64::from(1_000_000_000 - now.subsec_nanos()))
            + Duration::from_millis(5),
    );
}

/// Objects made the old way — `kubectl apply` of the templated manifests,
/// the pull secret through `kubectl create --dry-run | kubectl apply`, and
/// `kubectl patch` of the ServiceAccount — converge on our first run, and a
/// pull secret someone else added to the ServiceAccount survives.
#[test]
fn converges_on_objects_from_the_kubectl_scripts() {
    let c = cluster();
    let dir = scratch("converge");
    let reg = dir.join("registry.json");
    std::fs::write(&reg, r#"{"auths":{"registry.example":{"auth":"dTpw"}}}"#).unwrap();
    let ns_owned = format!("{}bob", common::prefix("legacy"));
    let ns = ns_owned.as_str();
    let od = c.var("KUBECONFIG_ONDEMAND");
    let kubectl = |args: &[&str], stdin: Option<&str>| {
        let out = match stdin {
            None => c.kubectl_as(od, args),
            Some(input) => common::pipe(
                Command::new(c.var("KUBECTL"))
                    .arg("--kubeconfig")
                    .arg(od)
                    .args(args),
                input.as_bytes(),
            ),
        };
        assert!(out.status.success(), "kubectl {args:?}: {}", text(&out));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let manifests = format!(
        "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {ns}\n  labels:\n    app.kubernetes.io/name: open-ondemand\n  annotations:\n    openondemand.org/last-hook-execution: \"1\"\n---\n\
         kind: NetworkPolicy\napiVersion: networking.k8s.io/v1\nmetadata:\n  namespace: {ns}\n  name: deny-from-other-namespaces\nspec:\n  podSelector:\n    matchLabels:\n  ingress:\n  - from:\n    - podSelector: {{}}\n    - ipBlock:\n        cidr: 10.9.9.9/32\n---\n\
         apiVersion: rbac.authorization.k8s.io/v1\nkind: RoleBinding\nmetadata:\n  namespace: {ns}\n  name: bob-ood-initializer\nroleRef:\n  apiGroup: rbac.authorization.k8s.io\n  kind: ClusterRole\n  name: ood-initializer\nsubjects:\n  - kind: ServiceAccount\n    name: default\n    namespace: {ns}\n---\n\
         apiVersion: rbac.authorization.k8s.io/v1\nkind: RoleBinding\nmetadata:\n  namespace: {ns}\n  name: bob-ood-user\nroleRef:\n  apiGroup: rbac.authorization.k8s.io\n  kind: ClusterRole\n  name: ood-user\nsubjects:\n  - kind: User\n    name: bob\n    namespace: {ns}\n"
    );
    kubectl(&["apply", "-f", "-"], Some(&manifests));
    let secret = kubectl(
        &[
            "create",
            "secret",
            "generic",
            "regcred",
            &format!("--from-file=.dockerconfigjson={}", reg.display()),
            "--type=kubernetes.io/dockerconfigjson",
            "-n",
            ns,
            "-o",
            "yaml",
            "--dry-run=client",
        ],
        None,
    );
    kubectl(&["apply", "-f", "-"], Some(&secret));
    // Wait for the controller to create `default`, as the old script did implicitly.
    let deadline = Instant::now() + Duration::from_secs(20);
    while c
        .get_json(&["serviceaccount", "-n", ns, "default"])
        .is_none()
    {
        assert!(
            Instant::now() < deadline,
            "default ServiceAccount never appeared"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    kubectl(
        &[
            "patch",
            "serviceaccount",
            "default",
            "-n",
            ns,
            "-p",
            r#"{"imagePullSecrets": [{"name": "regcred"}]}"#,
        ],
        None,
    );
    // Someone else's pull secret, added after the old hook ran.
    c.admin(&[
        "patch",
        "serviceaccount",
        "default",
        "-n",
        ns,
        "-p",
        r#"{"imagePullSecrets": [{"name": "site-mirror"}]}"#,
    ]);

    linux_user("bob");
    let env = c.hook_env(
        &dir,
        &format!(
            "NAMESPACE_PREFIX={p}\nNETWORK_POLICY_ALLOW_CIDR=192.0.2.0/24\nIMAGE_PULL_SECRET=regcred\nREGISTRY_DOCKER_CONFIG_JSON={}\nK8S_CREDENTIALS=none\n",
            reg.display(),
            p = common::prefix("legacy")
        ),
    );
    assert_ok(&hook("bob", &env, &[]));

    let np = c
        .get_json(&["networkpolicy", "-n", ns, "deny-from-other-namespaces"])
        .unwrap();
    let from = np["spec"]["ingress"][0]["from"].as_array().unwrap();
    assert_eq!(from.len(), 2, "{np}");
    assert_eq!(from[1]["ipBlock"]["cidr"], "192.0.2.0/24");
    let user_rb = c
        .get_json(&[
            "rolebinding",
            "-n",
            ns,
            "bob-ood-user",
            "--show-managed-fields",
        ])
        .unwrap();
    assert_eq!(
        user_rb["subjects"],
        serde_json::json!([{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "bob"}])
    );
    let managers: Vec<String> = user_rb["metadata"]["managedFields"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["manager"].as_str().unwrap().to_owned())
        .collect();
    assert!(
        managers.iter().any(|m| m == "ood-k8s-bootstrap"),
        "{managers:?}"
    );
    let ns_obj = c.get_json(&["namespace", ns]).unwrap();
    assert_ne!(
        ns_obj["metadata"]["annotations"]["openondemand.org/last-hook-execution"],
        "1"
    );
    let sa = c
        .get_json(&["serviceaccount", "-n", ns, "default"])
        .unwrap();
    let pulls: Vec<&str> = sa["imagePullSecrets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert!(
        pulls.contains(&"regcred") && pulls.contains(&"site-mirror"),
        "{pulls:?}"
    );

    // And a second run is still clean.
    assert_ok(&hook("bob", &env, &[]));
}

#[test]
fn dry_run_reports_without_changing() {
    let c = cluster();
    let dir = scratch("dry-run");
    linux_user("alice");
    let env = c.hook_env(
        &dir,
        &format!(
            "NAMESPACE_PREFIX={}\nK8S_CREDENTIALS=none\n",
            common::prefix("dry")
        ),
    );
    let out = hook("alice", &env, &["--dry-run"]);
    assert_ok(&out);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("would be 5 created"),
        "{}",
        text(&out)
    );
    assert!(
        c.get_json(&["namespace", &format!("{}alice", common::prefix("dry"))])
            .is_none(),
        "dry run created the namespace"
    );
    assert_ok(&hook("alice", &env, &[]));
    let changed_env = c.hook_env(
        &dir,
        &format!(
            "NAMESPACE_PREFIX={}\nNETWORK_POLICY_ALLOW_CIDR=10.0.0.0/8\nK8S_CREDENTIALS=none\n",
            common::prefix("dry")
        ),
    );
    let out = hook("alice", &changed_env, &["--dry-run", "-v"]);
    assert_ok(&out);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("would change NetworkPolicy/deny-from-other-namespaces"),
        "{stderr}"
    );
    assert!(
        stderr.contains("unchanged  RoleBinding/alice-ood-user"),
        "{stderr}"
    );
    let np = c
        .get_json(&[
            "networkpolicy",
            "-n",
            &format!("{}alice", common::prefix("dry")),
            "deny-from-other-namespaces",
        ])
        .unwrap();
    assert_eq!(
        np["spec"]["ingress"][0]["from"][1]["ipBlock"]["cidr"],
        "127.0.0.1/32"
    );
}

#[test]
fn legacy_call_form_works() {
    let c = cluster();
    let dir = scratch("legacy-form");
    linux_user("alice");
    let env = c.hook_env(
        &dir,
        &format!(
            "NAMESPACE_PREFIX={}\nK8S_CREDENTIALS=none\n",
            common::prefix("oldform")
        ),
    );
    let out = c.hook().arg("alice").arg(&env).output().unwrap();
    assert_ok(&out);
    assert!(
        c.get_json(&["namespace", &format!("{}alice", common::prefix("oldform"))])
            .is_some()
    );
}

#[test]
fn terminating_namespace_gets_a_clear_temporary_error() {
    let c = cluster();
    let dir = scratch("terminating");
    let term_ns = format!("{}bob", common::prefix("term"));
    linux_user("bob");
    let env = c.hook_env(
        &dir,
        &format!(
            "NAMESPACE_PREFIX={}\nK8S_CREDENTIALS=none\n",
            common::prefix("term")
        ),
    );
    assert_ok(&hook("bob", &env, &[]));
    // Hold the namespace in Terminating with a finalizer, as a slow reaper would.
    c.admin(&["create", "configmap", "hold", "-n", &term_ns]);
    c.admin(&[
        "patch",
        "configmap",
        "hold",
        "-n",
        &term_ns,
        "--type=merge",
        "-p",
        r#"{"metadata":{"finalizers":["ood.test/hold"]}}"#,
    ]);
    c.admin(&["delete", "rolebinding", "-n", &term_ns, "bob-ood-user"]);
    c.admin(&["delete", "namespace", &term_ns, "--wait=false"]);
    let out = hook("bob", &env, &[]);
    c.admin(&[
        "patch",
        "configmap",
        "hold",
        "-n",
        &term_ns,
        "--type=merge",
        "-p",
        r#"{"metadata":{"finalizers":null}}"#,
    ]);
    assert_eq!(out.status.code(), Some(75), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(term_ns.as_str()) && stderr.contains("being deleted"),
        "{stderr}"
    );
}

fn kubeconfig_for(dir: &std::path::Path, server: &str) -> std::path::PathBuf {
    let path = dir.join("root.kubeconfig");
    std::fs::write(
        &path,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: t\n  cluster: {{server: {server}, insecure-skip-tls-verify: true}}\n\
             users:\n- name: u\n  user: {{token: not-a-real-token}}\ncontexts:\n- name: t\n  context: {{cluster: t, user: u}}\ncurrent-context: t\n"
        ),
    )
    .unwrap();
    path
}

#[test]
fn unreachable_api_server_fails_fast_naming_the_server() {
    let c = cluster();
    let dir = scratch("unreachable");
    linux_user("alice");
    // A port nothing listens on: the API server is down.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let server = format!("https://127.0.0.1:{port}");
    let kc = kubeconfig_for(&dir, &server);
    let env = c.hook_env(&dir, "HOOK_TIMEOUT_SECONDS=3\nK8S_CREDENTIALS=none\n");
    let started = Instant::now();
    let out = c
        .hook()
        .env("KUBECONFIG", &kc)
        .args(["--user", "alice", "--hook-env"])
        .arg(&env)
        .output()
        .unwrap();
    let took = started.elapsed();
    assert_eq!(out.status.code(), Some(69), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(&server),
        "{}",
        text(&out)
    );
    assert!(
        took < Duration::from_secs(3) + common::MARGIN,
        "took {took:?} with a 3 s deadline"
    );
}

#[test]
fn hanging_api_server_is_bounded_by_the_deadline() {
    let c = cluster();
    let dir = scratch("hanging");
    linux_user("alice");
    // Accepts connections and never answers.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let server = format!(
        "https://127.0.0.1:{}",
        listener.local_addr().unwrap().port()
    );
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for mut s in listener.incoming().flatten().take(50) {
            let mut buf = [0u8; 16];
            let _ = s.set_read_timeout(Some(Duration::from_millis(10)));
            let _ = s.read(&mut buf);
            held.push(s);
        }
    });
    let kc = kubeconfig_for(&dir, &server);
    let env = c.hook_env(&dir, "HOOK_TIMEOUT_SECONDS=2\nK8S_CREDENTIALS=none\n");
    let started = Instant::now();
    let out = c
        .hook()
        .env("KUBECONFIG", &kc)
        .args(["--user", "alice", "--hook-env"])
        .arg(&env)
        .output()
        .unwrap();
    let took = started.elapsed();
    assert!(matches!(out.status.code(), Some(69 | 75)), "{}", text(&out));
    assert!(
        took < Duration::from_secs(2) + common::MARGIN,
        "took {took:?} with a 2 s deadline"
    );
}

#[test]
fn reconcile_many_users_continues_past_failures() {
    let c = cluster();
    let dir = scratch("reconcile");
    let prefix = common::prefix("rc");
    let env = c.hook_env(
        &dir,
        &format!("NAMESPACE_PREFIX={prefix}\nK8S_CREDENTIALS=none\n"),
    );
    let list = dir.join("users.txt");
    let mut users: Vec<String> = (0..40).map(|i| format!("user{i}")).collect();
    users.push("first.last".into());
    std::fs::write(
        &list,
        format!("# bulk\n{}\nBad_Name\nuser0\n", users.join("\n")),
    )
    .unwrap();
    let run = |kubeconfig: &str, args: &[&str]| {
        c.hook()
            .env("KUBECONFIG", kubeconfig)
            .arg("reconcile")
            .args(["--hook-env"])
            .arg(&env)
            .args(args)
            .output()
            .unwrap()
    };
    let out = run(
        c.var("KUBECONFIG_ONDEMAND"),
        &["--users", list.to_str().unwrap(), "--concurrency", "8"],
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("reconciled 41 of 42 users"), "{stderr}");
    // Five objects per user, all new but the `default` ServiceAccounts the
    // controller made first (left alone: unchanged).
    let summary = stderr
        .lines()
        .find(|l| l.contains("reconciled 41 of 42 users"))
        .unwrap_or_default();
    let count = |what: &str| -> u32 {
        summary
            .split(&format!(" {what}"))
            .next()
            .and_then(|before| before.rsplit(|c: char| !c.is_ascii_digit()).next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no \"{what}\" count: {stderr}"))
    };
    assert!(
        count("created") >= 4 * 41
            && count("created") + count("unchanged") == 5 * 41
            && stderr.contains("1 failed"),
        "{stderr}"
    );
    assert!(stderr.contains("failed: Bad_Name:"), "{stderr}");
    let ns = c
        .get_json(&["namespace", &format!("{prefix}first-last")])
        .expect("namespace");
    assert_eq!(
        ns["metadata"]["annotations"]["openondemand.org/user"],
        "first.last"
    );

    // --all needs `list` on namespaces: refused for the ondemand account,
    // fine for an admin, and finds the users again (dots included).
    let out = run(c.var("KUBECONFIG_ONDEMAND"), &["--all"]);
    assert_eq!(out.status.code(), Some(77), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--users"),
        "{}",
        text(&out)
    );
    let out = run(c.var("KUBECONFIG_ADMIN"), &["--all", "--dry-run"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("reconciled 41 of 41 users"), "{stderr}");
    assert!(stderr.contains("0 created"), "{stderr}");
}

/// Issue 25 (a promise no test exercised): under the `ondemand` FlowSchema
/// (hooks/ondemand-apf.yaml, one flow per user namespace), a bulk
/// `reconcile` of a few hundred users at concurrency 64 does not starve
/// logins: logins of other users, run one after another while it works,
/// each succeed within their deadline (HOOK_TIMEOUT_SECONDS) + the common
/// margin; and several of them ran start to end while the reconcile was
/// still running.
#[test]
fn a_bulk_reconcile_does_not_starve_logins() {
    const DEADLINE: Duration = Duration::from_secs(10);
    const BULK: usize = 400;
    const OVERLAPPED: usize = 3;
    let c = cluster();
    let dir = scratch("rc-starve");
    let prefix = common::prefix("rcstarve");
    let env = c.hook_env(
        &dir,
        &format!(
            "NAMESPACE_PREFIX={prefix}\nK8S_CREDENTIALS=none\nHOOK_TIMEOUT_SECONDS={}\n",
            DEADLINE.as_secs()
        ),
    );
    let logins = ["rc-busy1", "rc-busy2", "rc-busy3", "rc-busy4"];
    for u in logins {
        linux_user(u);
    }
    let list = dir.join("users.txt");
    let bulk: Vec<String> = (0..BULK).map(|i| format!("bulk{i:03}")).collect();
    std::fs::write(&list, bulk.join("\n") + "\n").unwrap();
    let started = Instant::now();
    let mut reconcile = c
        .hook()
        .arg("reconcile")
        .arg("--hook-env")
        .arg(&env)
        .arg("--users")
        .arg(&list)
        .args(["--concurrency", "64"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start reconcile");
    // Under way: its first users' namespaces are there.
    let first = format!("{prefix}bulk000");
    while c.get_json(&["namespace", &first]).is_none() {
        assert!(
            reconcile.try_wait().unwrap().is_none(),
            "reconcile ended before making {first}"
        );
        assert!(started.elapsed() < DEADLINE + common::MARGIN, "no {first}");
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut overlapped = 0;
    let mut ran = Vec::new();
    for user in logins.iter().cycle() {
        let mut cmd = c.hook();
        cmd.args(["--user", user, "--hook-env"]).arg(&env);
        let (out, took) = common::output_within(&mut cmd, DEADLINE + common::MARGIN, "a login");
        assert!(
            out.status.success(),
            "{user}'s login failed:\n{}",
            text(&out)
        );
        ran.push(format!("{user}: {took:?}"));
        if reconcile.try_wait().unwrap().is_some() {
            break;
        }
        overlapped += 1;
    }
    let took = started.elapsed();
    let out = reconcile.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("reconcile took {took:?}: {stderr}\nlogins: {ran:?}");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        stderr.contains(&format!("reconciled {BULK} of {BULK} users")),
        "{stderr}"
    );
    assert!(
        overlapped >= OVERLAPPED,
        "only {overlapped} logins ran while the reconcile did ({took:?}); \
         it must run longer for the test to mean anything: {ran:?}"
    );
    for u in logins {
        assert!(
            c.get_json(&["namespace", &format!("{prefix}{u}")])
                .is_some(),
            "{u}'s namespace"
        );
    }
}

#[test]
fn rbac_denial_names_the_account_and_what_to_do() {
    let c = cluster();
    let dir = scratch("rbac-denied");
    linux_user("bob");
    // The ondemand account may not hand out cluster-admin (RBAC escalation
    // prevention), so this binding is refused by the API server.
    let env = c.hook_env(
        &dir,
        &format!(
            "NAMESPACE_PREFIX={}\nUSE_JOB_POD_REAPER=true\nJOB_POD_REAPER_CLUSTER_ROLE=cluster-admin\nK8S_CREDENTIALS=none\n",
            common::prefix("denied")
        ),
    );
    let out = hook("bob", &env, &[]);
    assert_eq!(out.status.code(), Some(77), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("user bob"), "{stderr}");
    assert!(
        stderr.contains("RoleBinding/bob-job-pod-reaper-rolebinding"),
        "{stderr}"
    );
    assert!(
        stderr.contains("system:serviceaccount:ondemand:ondemand"),
        "{stderr}"
    );
    assert!(stderr.contains("ondemand` ClusterRole"), "{stderr}");
    assert_eq!(
        stderr.trim_end().lines().count(),
        1,
        "one line for syslog: {stderr}"
    );
}

#[test]
fn render_needs_no_cluster_and_redacts_secrets() {
    let dir = scratch("render");
    let reg = dir.join("registry.json");
    std::fs::write(
        &reg,
        r#"{"auths":{"registry.example":{"auth":"c2VjcmV0"}}}"#,
    )
    .unwrap();
    let env = dir.join("hook.env");
    std::fs::write(
        &env,
        format!("NETWORK_POLICY_ALLOW_CIDR=10.0.0.0/8\nIMAGE_PULL_SECRET=regcred\nREGISTRY_DOCKER_CONFIG_JSON={}\n", reg.display()),
    )
    .unwrap();
    let out = Command::new(common::bin())
        .env_clear()
        .env("KUBECONFIG", "/nonexistent")
        .args([
            "render",
            "--user",
            "first.last",
            "--time",
            "42",
            "--hook-env",
        ])
        .arg(&env)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let yaml = String::from_utf8_lossy(&out.stdout);
    assert!(yaml.contains("name: first-last"), "{yaml}");
    assert!(
        yaml.contains("openondemand.org/last-hook-execution: '42'")
            || yaml.contains("openondemand.org/last-hook-execution: \"42\""),
        "{yaml}"
    );
    assert!(yaml.contains("<redacted"), "{yaml}");
    assert!(!yaml.contains("eyJhdXRocy"), "{yaml}");
}

#[test]
fn a_bad_token_is_refused_before_the_cluster_is_touched() {
    let c = cluster();
    let dir = scratch("bad-token");
    linux_user("alice");
    let prefix = common::prefix("badtok");
    let env = c.hook_env(
        &dir,
        &format!("NAMESPACE_PREFIX={prefix}\nK8S_CREDENTIALS=token\n"),
    );
    let out = c
        .hook()
        .env("OOD_OIDC_ACCESS_TOKEN", "not-a-jwt-at-all")
        .args(["--user", "alice", "--hook-env"])
        .arg(&env)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(65), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("alice"), "{stderr}");
    assert!(
        !stderr.contains("not-a-jwt-at-all"),
        "the token was echoed: {stderr}"
    );
    assert!(
        c.get_json(&["namespace", &format!("{prefix}alice")])
            .is_none(),
        "the cluster was changed"
    );
}

/// nginx_stage retries and several web nodes log the same user in at once:
/// overlapping runs for a brand-new user all succeed, and the pull secret
/// is listed once, next to one another tool added meanwhile.
#[test]
fn overlapping_runs_for_one_user_converge() {
    let c = cluster();
    let dir = scratch("overlap");
    linux_user("carol.smith");
    let reg = dir.join("registry.json");
    std::fs::write(&reg, r#"{"auths":{"registry.example":{"auth":"dTpw"}}}"#).unwrap();
    let prefix = common::prefix("overlap");
    let env = c.hook_env(
        &dir,
        &format!(
            "NAMESPACE_PREFIX={prefix}\nUSE_JOB_POD_REAPER=true\nIMAGE_PULL_SECRET=regcred\nREGISTRY_DOCKER_CONFIG_JSON={}\nK8S_CREDENTIALS=none\n",
            reg.display()
        ),
    );
    let ns = format!("{prefix}carol-smith");
    let runs: Vec<_> = (0..8)
        .map(|_| {
            c.hook()
                .args(["--user", "carol.smith", "--hook-env"])
                .arg(&env)
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for run in runs {
        let out = run.wait_with_output().unwrap();
        assert_ok(&out);
    }
    // Another tool adds its own pull secret; more overlapping runs follow.
    c.admin(&[
        "patch",
        "serviceaccount",
        "default",
        "-n",
        &ns,
        "--type=json",
        "-p",
        r#"[{"op":"add","path":"/imagePullSecrets/-","value":{"name":"site-mirror"}}]"#,
    ]);
    let runs: Vec<_> = (0..4)
        .map(|_| {
            c.hook()
                .args(["--user", "carol.smith", "--hook-env"])
                .arg(&env)
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for run in runs {
        assert_ok(&run.wait_with_output().unwrap());
    }
    let sa = c
        .get_json(&["serviceaccount", "-n", &ns, "default"])
        .unwrap();
    let names: Vec<&str> = sa["imagePullSecrets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["regcred", "site-mirror"], "{sa}");
}

// ---- whose the namespace is (issue 16 item 1) -----------------------------

/// The RoleBindings in `ns`, by name, with their resourceVersions.
fn bindings_in(ns: &str) -> Vec<(String, String)> {
    let list = cluster().get_json(&["rolebindings", "-n", ns]).unwrap();
    let mut out: Vec<(String, String)> = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| (b["metadata"]["name"].as_str().unwrap().to_owned(), rv(b)))
        .collect();
    out.sort();
    out
}

/// The one error line of a refused login: exit 77, naming both logins and
/// the namespace, and the parts of the message `parts` lists.
fn assert_collision(out: &std::process::Output, ns: &str, parts: &[&str]) {
    assert_eq!(out.status.code(), Some(77), "{}", text(out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    for part in [ns, "nothing was changed"].iter().chain(parts) {
        assert!(err.contains(part), "{part:?} missing: {err}");
    }
}

/// Issue 25 (promises): without `list` on RoleBindings (root's account
/// bound to the shipped `ondemand` ClusterRole minus that rule), a labelled
/// namespace without an owner record is not claimed: the login is refused,
/// exit 77, with the fix, and the namespace stays as it was.
#[test]
fn a_claim_is_refused_without_list_on_rolebindings() {
    let c = cluster();
    let dir = scratch("claim-nolist");
    let prefix = common::prefix("nolist");
    let env = c.hook_env(
        &dir,
        &format!("NAMESPACE_PREFIX={prefix}\nK8S_CREDENTIALS=none\n"),
    );
    linux_user("nolist-user");
    let shipped = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("hooks/ondemand.yaml"),
    )
    .unwrap();
    let role = shipped
        .split("\n---\n")
        .find(|d| d.contains("\nkind: ClusterRole\nmetadata:\n  name: ondemand\n"))
        .expect("the ondemand ClusterRole");
    let list_rule = "- apiGroups: [\"rbac.authorization.k8s.io\"]\n  resources: [\"rolebindings\"]\n  verbs: [\"list\"]\n";
    assert!(role.contains(list_rule), "{role}");
    let role = role
        .replace(list_rule, "")
        .replace("\n  name: ondemand\n", "\n  name: ood-test-nolist\n");
    let objects = format!(
        "apiVersion: v1\nkind: ServiceAccount\nmetadata: {{name: ood-test-nolist, namespace: ondemand}}\n---\n{role}\n---\n\
         apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRoleBinding\nmetadata: {{name: ood-test-nolist}}\n\
         roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: ood-test-nolist}}\n\
         subjects: [{{kind: ServiceAccount, name: ood-test-nolist, namespace: ondemand}}]\n"
    );
    let out = common::pipe(
        std::process::Command::new(c.var("KUBECTL"))
            .args(["--kubeconfig", c.var("KUBECONFIG_ADMIN")])
            .args(["apply", "--server-side", "--force-conflicts", "-f", "-"]),
        objects.as_bytes(),
    );
    assert!(out.status.success(), "{}", text(&out));
    let kubeconfig = dir.join("nolist.kubeconfig");
    c.token_kubeconfig(
        &kubeconfig,
        "ood-test-nolist",
        &common::service_account_token("ood-test-nolist"),
    );
    let ns = format!("{prefix}nolist-user");
    c.admin(&["create", "namespace", &ns]);
    c.admin(&[
        "label",
        "namespace",
        &ns,
        "app.kubernetes.io/name=open-ondemand",
    ]);
    let before = c.get_json(&["namespace", &ns]).unwrap();
    let out = c
        .hook()
        .env("KUBECONFIG", &kubeconfig)
        .args(["--user", "nolist-user", "--hook-env"])
        .arg(&env)
        .output()
        .unwrap();
    assert_collision(
        &out,
        &ns,
        &[
            "has no owner record, and root may not list its RoleBindings",
            "list on rolebindings",
            "openondemand.org/user=nolist-user",
        ],
    );
    let after = c.get_json(&["namespace", &ns]).unwrap();
    assert_eq!(after["metadata"], before["metadata"]);
    assert!(bindings_in(&ns).is_empty());
    let sas = c.get_json(&["serviceaccounts", "-n", &ns]).unwrap();
    assert!(
        sas["items"]
            .as_array()
            .unwrap()
            .iter()
            .all(|s| s["metadata"]["name"] == "default" && s["metadata"]["annotations"].is_null()),
        "{sas}"
    );
    // With the shipped role (list included) the same login claims it.
    let out = hook("nolist-user", &env, &[]);
    assert_ok(&out);
    let annotations = c.get_json(&["namespace", &ns]).unwrap()["metadata"]["annotations"].clone();
    assert_eq!(annotations["openondemand.org/user"], "nolist-user");
}

/// `own.first` and `own-first` map to one namespace: the first login owns
/// it, the second is refused — by the hook, its dry run and reconcile, and
/// doctor says so — and nothing of the owner's changes, not even the
/// published uid the admission policy trusts.
#[test]
fn a_second_login_with_the_same_namespace_is_refused_and_changes_nothing() {
    let c = cluster();
    let dir = scratch("collide");
    let prefix = common::prefix("col");
    let env = c.hook_env(
        &dir,
        &format!("NAMESPACE_PREFIX={prefix}\nPUBLISH_UID_GID=true\nK8S_CREDENTIALS=none\n"),
    );
    let (owner_uid, owner_gid, _) = linux_user("own.first");
    linux_user("own-first");
    let ns = format!("{prefix}own-first");
    assert_ok(&hook("own.first", &env, &[]));
    let before = c.get_json(&["namespace", &ns]).unwrap();
    let annotations = &before["metadata"]["annotations"];
    assert_eq!(annotations["openondemand.org/user"], "own.first");
    assert_eq!(annotations["openondemand.org/uid"], owner_uid.to_string());
    assert_eq!(annotations["openondemand.org/gid"], owner_gid.to_string());
    let owners_bindings = bindings_in(&ns);

    let refused = ["own.first", "own-first", "renames", "uid"];
    assert_collision(&hook("own-first", &env, &[]), &ns, &refused);
    assert_collision(&hook("own-first", &env, &["--dry-run"]), &ns, &refused);
    // Nothing of the owner's changed: no binding for the second login, the
    // owner's untouched, the namespace as it was.
    assert_eq!(bindings_in(&ns), owners_bindings);
    assert_eq!(rv(&c.get_json(&["namespace", &ns]).unwrap()), rv(&before));
    let list = dir.join("users.txt");
    std::fs::write(&list, "own.first\nown-first\n").unwrap();
    let out = c
        .hook()
        .args(["reconcile", "--users"])
        .arg(&list)
        .arg("--hook-env")
        .arg(&env)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("reconciled 1 of 2 users"), "{err}");
    // reconcile ran own.first too (its annotation is fresh), nothing for
    // own-first: the same bindings, the same owner record.
    let names = |b: &[(String, String)]| b.iter().map(|b| b.0.clone()).collect::<Vec<_>>();
    assert_eq!(names(&bindings_in(&ns)), names(&owners_bindings));
    let after = c.get_json(&["namespace", &ns]).unwrap();
    for key in [
        "openondemand.org/user",
        "openondemand.org/uid",
        "openondemand.org/gid",
    ] {
        assert_eq!(
            after["metadata"]["annotations"][key], annotations[key],
            "{key}"
        );
    }
    assert!(
        err.lines()
            .any(|l| l.contains("failed: own-first:") && l.contains("belongs to login own.first")),
        "{err}"
    );
    let doctor = |user: &str| {
        let out = c
            .hook()
            .args(["doctor", "--user", user, "--hook-env"])
            .arg(&env)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let report = doctor("own-first");
    assert!(
        report
            .lines()
            .any(|l| l.starts_with('✗') && l.contains("belongs to login own.first")),
        "{report}"
    );
    let report = doctor("own.first");
    assert!(
        report.lines().any(|l| l.starts_with('✓')
            && l.contains(&format!(
                "namespace {ns} belongs to own.first (uid {owner_uid})"
            ))),
        "{report}"
    );
    assert!(
        owners_bindings
            .iter()
            .all(|(n, _)| !n.starts_with("own-first-"))
    );
}

/// A namespace the old scripts made (labelled, no owner record) becomes the
/// login's whose binding is in it, and is refused to the other login that
/// maps to it; an unlabelled namespace is nobody's to take.
#[test]
fn a_namespace_without_owner_record_is_claimed_only_by_its_own_login() {
    let c = cluster();
    let dir = scratch("claim");
    let prefix = common::prefix("clm");
    let env = c.hook_env(
        &dir,
        &format!("NAMESPACE_PREFIX={prefix}\nK8S_CREDENTIALS=none\n"),
    );
    let (owner_uid, _, _) = linux_user("own.first");
    linux_user("own-first");
    let ns = format!("{prefix}own-first");
    // As the old scripts left it: label, last-hook-execution, the login's
    // RoleBinding, no owner record.
    c.admin(&["create", "namespace", &ns]);
    c.admin(&[
        "label",
        "namespace",
        &ns,
        "app.kubernetes.io/name=open-ondemand",
    ]);
    c.admin(&[
        "annotate",
        "namespace",
        &ns,
        "openondemand.org/last-hook-execution=1700000000",
    ]);
    c.admin(&[
        "create",
        "rolebinding",
        "own.first-ood-user",
        "-n",
        &ns,
        "--clusterrole=ood-user",
        "--user=own.first",
    ]);
    let before = bindings_in(&ns);
    assert_collision(
        &hook("own-first", &env, &[]),
        &ns,
        &[
            "RoleBinding own.first-ood-user",
            "binds user own.first",
            "own-first",
        ],
    );
    assert_eq!(bindings_in(&ns), before);
    let annotations = c.get_json(&["namespace", &ns]).unwrap()["metadata"]["annotations"].clone();
    assert!(
        annotations.get("openondemand.org/uid").is_none(),
        "{annotations}"
    );

    let out = hook("own.first", &env, &[]);
    assert_ok(&out);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("it now records this login as its owner"),
        "{}",
        text(&out)
    );
    let annotations = c.get_json(&["namespace", &ns]).unwrap()["metadata"]["annotations"].clone();
    assert_eq!(annotations["openondemand.org/user"], "own.first");
    assert_eq!(annotations["openondemand.org/uid"], owner_uid.to_string());
    // From now on the record decides.
    assert_collision(
        &hook("own-first", &env, &[]),
        &ns,
        &["belongs to login own.first"],
    );

    // A namespace that is no OnDemand namespace is not taken over.
    let foreign = format!("{prefix}own.second");
    let foreign_ns = format!("{prefix}own-second");
    linux_user("own.second");
    c.admin(&["create", "namespace", &foreign_ns]);
    assert_collision(
        &hook("own.second", &env, &[]),
        &foreign_ns,
        &["no OnDemand namespace", "own.second"],
    );
    assert!(bindings_in(&foreign_ns).is_empty(), "{foreign}");
}

// ---- doctor tells the truth (issue 16 item 6) -----------------------------

/// Root's kubeconfig holds a token the API server rejects that is not a
/// ServiceAccount token (a static token, a mistyped paste): every login
/// would fail, so doctor says ✗ once, names it, and exits 1 (it used to
/// warn and exit 0). Nothing of the shared cluster is changed.
#[test]
fn doctor_fails_when_the_api_server_rejects_roots_credentials() {
    let c = cluster();
    let dir = scratch("doctor-rejected");
    let env = dir.join("hook.env");
    std::fs::write(
        &env,
        "NETWORK_POLICY_ALLOW_CIDR=\"127.0.0.1/32\"\nK8S_CREDENTIALS=none\n",
    )
    .expect("write hook.env");
    std::fs::set_permissions(&env, std::os::unix::fs::PermissionsExt::from_mode(0o600))
        .expect("chmod hook.env");
    let kc = dir.join("root.kubeconfig");
    c.token_kubeconfig(&kc, "root", "not-a-serviceaccount-token");
    let out = Command::new(common::bin())
        .env_clear()
        .env("PATH", "/usr/local/bin:/usr/bin:/bin")
        .args(["doctor", "--kubeconfig"])
        .arg(&kc)
        .arg("--hook-env")
        .arg(&env)
        .output()
        .expect("run doctor");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let failed: Vec<&str> = stdout.lines().filter(|l| l.starts_with('✗')).collect();
    assert_eq!(failed.len(), 1, "{}", text(&out));
    assert!(
        failed[0].starts_with("✗ root's token: the API server ")
            && failed[0].contains("rejects root's credentials")
            && failed[0].contains("every run would fail")
            && failed[0].contains("root-token --using ADMIN_KUBECONFIG"),
        "{}",
        text(&out)
    );
    assert!(
        !stdout
            .lines()
            .any(|l| l.starts_with('⚠') && l.contains("rejects")),
        "still a warning too:\n{stdout}"
    );
    assert!(stdout.trim_end().ends_with("1 failed"), "{stdout}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// On the healthy setup the renewal of root's token is reported in one of
/// doctor's three forms, with a due time that is a time (not any text).
#[test]
fn doctor_says_when_roots_token_must_be_renewed() {
    let c = cluster();
    let dir = scratch("doctor-renewal");
    let env = dir.join("hook.env");
    std::fs::write(
        &env,
        "NETWORK_POLICY_ALLOW_CIDR=\"127.0.0.1/32\"\nK8S_CREDENTIALS=none\n",
    )
    .expect("write hook.env");
    std::fs::set_permissions(&env, std::os::unix::fs::PermissionsExt::from_mode(0o600))
        .expect("chmod hook.env");
    let out = Command::new(common::bin())
        .env_clear()
        .env("PATH", "/usr/local/bin:/usr/bin:/bin")
        .args([
            "doctor",
            "--kubeconfig",
            c.var("KUBECONFIG_ONDEMAND"),
            "--hook-env",
        ])
        .arg(&env)
        .output()
        .expect("run doctor");
    assert!(out.status.success(), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    if let Some(p) = common::renewal_line_problem(&stdout) {
        panic!("{p}\n{}", text(&out));
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// Tests that need the local test IdP (Dex) and its tokens; not run against an existing
/// cluster (tests/external-run lists them).
mod idp {
    use super::*;

    #[test]
    fn a_refused_login_gets_no_kubeconfig() {
        let c = cluster();
        let dir = scratch("collide-kc");
        let prefix = common::prefix("colk");
        let env = c.hook_env(&dir, &format!("NAMESPACE_PREFIX={prefix}\n"));
        linux_user("own.first");
        let (_, _, home) = linux_user("own-first");
        let config = home.join(".kube/config");
        let before = std::fs::read(&config).ok();
        // Real tokens from a portal login (the hook checks them as tokens;
        // whose they are is the API server's business).
        let tokens = c.login("carol.smith");
        let run = |user: &str| {
            c.hook()
                .args(["--user", user, "--hook-env"])
                .arg(&env)
                .env("OOD_OIDC_ACCESS_TOKEN", &tokens.access)
                .env("OOD_OIDC_REFRESH_TOKEN", &tokens.refresh)
                .output()
                .unwrap()
        };
        assert_ok(&run("own.first"));
        let ns = format!("{prefix}own-first");
        assert_collision(&run("own-first"), &ns, &["belongs to login own.first"]);
        assert_eq!(
            std::fs::read(&config).ok(),
            before,
            "own-first's kubeconfig was written"
        );
    }

    #[test]
    fn dex_token_authenticates_as_the_plain_login_name() {
        let c = cluster();
        let tokens = c.login("carol.smith");
        let review = common::pipe(
            Command::new("curl").args([
                "-sS",
                "--cacert",
                c.var("K8S_CA_FILE"),
                "-H",
                "Content-Type: application/json",
                "-H",
                "@-",
                "-X",
                "POST",
                "-d",
                r#"{"apiVersion":"authentication.k8s.io/v1","kind":"SelfSubjectReview"}"#,
                &format!(
                    "{}/apis/authentication.k8s.io/v1/selfsubjectreviews",
                    c.var("K8S_SERVER")
                ),
            ]),
            format!("Authorization: Bearer {}\n", tokens.access).as_bytes(),
        );
        let v: Value =
            serde_json::from_slice(&review.stdout).unwrap_or_else(|_| panic!("{}", text(&review)));
        assert_eq!(v["status"]["userInfo"]["username"], "carol.smith", "{v}");
    }
}

/// Tests of the local cluster's own parts (its pinned release, its audit
/// log); not run against an existing cluster (tests/external-run lists them).
mod local {
    use super::*;

    #[test]
    fn api_server_is_the_pinned_release_and_refuses_strangers() {
        let c = cluster();
        let curl = |args: &[&str]| {
            let out = Command::new("curl")
                .args(["-sS", "--cacert", c.var("K8S_CA_FILE")])
                .args(args)
                .output()
                .unwrap();
            String::from_utf8_lossy(&out.stdout).into_owned()
        };
        let version: Value =
            serde_json::from_str(&curl(&[&format!("{}/version", c.var("K8S_SERVER"))])).unwrap();
        assert_eq!(version["gitVersion"], c.var("K8S_VERSION"));
        assert_eq!(
            c.var("K8S_VERSION"),
            "v1.37.2",
            "Cargo.toml's k8s-openapi feature is v1_37"
        );

        let code = curl(&[
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            &format!("{}/api/v1/namespaces", c.var("K8S_SERVER")),
        ]);
        assert!(
            code == "401" || code == "403",
            "unauthenticated request answered {code}"
        );
    }

    /// A returning user's login, with the objects `bench/run` has (reaper
    /// binding, pull secret), makes exactly the README's 8 requests, each
    /// named, from the API server's audit log: the read of whose the
    /// namespace is, before anything is written; the namespace applied;
    /// then, at once, the network policy, the three RoleBindings, the pull
    /// secret, and the read of the `default` ServiceAccount's pull secret
    /// list (ours is there: nothing written). A request more or less fails
    /// here before the bench's count does.
    #[test]
    fn a_returning_login_makes_exactly_eight_requests() {
        let c = cluster();
        let dir = scratch("returning-requests");
        let reg = dir.join("registry.json");
        std::fs::write(&reg, r#"{"auths":{"registry.example":{"auth":"dTpw"}}}"#).unwrap();
        let prefix = common::prefix("retreq");
        let env = c.hook_env(
            &dir,
            &format!(
                "NAMESPACE_PREFIX=\"{prefix}\"\nUSE_JOB_POD_REAPER=true\nIMAGE_PULL_SECRET=regcred\n\
                 REGISTRY_DOCKER_CONFIG_JSON={}\nK8S_CREDENTIALS=none\n",
                reg.display()
            ),
        );
        linux_user("alice");
        let ns = format!("{prefix}alice");
        assert_ok(&hook("alice", &env, &[]));
        // A later second than the first run, as logins are (within the
        // same second the namespace is not written, and the cluster's
        // revision is read instead).
        wait_for_next_second();
        common::audit_settled();
        let from = std::fs::read(c.var("AUDIT_LOG")).expect("audit log").len();
        let out = hook("alice", &env, &[]);
        assert_ok(&out);
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("0 created, 1 changed, 6 unchanged"),
            "{}",
            text(&out)
        );
        common::audit_settled();
        let log = std::fs::read(c.var("AUDIT_LOG")).expect("audit log");
        let requests: Vec<String> = String::from_utf8_lossy(&log[from..])
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|e| e["user"]["username"] == "system:serviceaccount:ondemand:ondemand")
            .filter(|e| {
                let r = &e["objectRef"];
                r["namespace"] == ns.as_str()
                    || (r["resource"] == "namespaces" && r["name"] == ns.as_str())
            })
            .map(|e| {
                format!(
                    "{} {}/{}",
                    e["verb"].as_str().unwrap_or("?"),
                    e["objectRef"]["resource"].as_str().unwrap_or("?"),
                    e["objectRef"]["name"].as_str().unwrap_or("")
                )
            })
            .collect();
        assert_eq!(requests.len(), 8, "{requests:#?}");
        // In this order: whose it is, then the namespace, then the rest.
        assert_eq!(requests[0], format!("get namespaces/{ns}"), "{requests:#?}");
        assert_eq!(
            requests[1],
            format!("patch namespaces/{ns}"),
            "{requests:#?}"
        );
        let mut rest = requests[2..].to_vec();
        rest.sort();
        let mut expected = vec![
            "get serviceaccounts/default".to_owned(),
            "patch networkpolicies/deny-from-other-namespaces".to_owned(),
            "patch rolebindings/alice-job-pod-reaper-rolebinding".to_owned(),
            "patch rolebindings/alice-ood-initializer".to_owned(),
            "patch rolebindings/alice-ood-user".to_owned(),
            "patch secrets/regcred".to_owned(),
        ];
        expected.sort();
        assert_eq!(rest, expected, "{requests:#?}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn bad_input_fails_before_any_write() {
        let c = cluster();
        let dir = scratch("bad-input");
        linux_user("alice");
        let noauths = dir.join("noauths.json");
        std::fs::write(&noauths, r#"{"credsStore": "x"}"#).unwrap();
        let cases: Vec<(&str, String, i32, &str)> = vec![
            (
                "alice",
                "NETWORK_POLICY_ALLOW_CIDR=10.0.0.300/8\n".into(),
                78,
                "NETWORK_POLICY_ALLOW_CIDR",
            ),
            (
                "alice",
                "USE_JOB_POD_REAPER=yes\n".into(),
                78,
                "USE_JOB_POD_REAPER",
            ),
            (
                "alice",
                "USE_POD_SECURITY_POLICY=true\n".into(),
                78,
                "POD_SECURITY_ENFORCE",
            ),
            (
                "alice",
                "IMAGE_PULL_SECRET=regcred\nREGISTRY_DOCKER_CONFIG_JSON=/nonexistent/config.json\n"
                    .into(),
                78,
                "REGISTRY_DOCKER_CONFIG_JSON",
            ),
            (
                "alice",
                format!(
                    "IMAGE_PULL_SECRET=regcred\nREGISTRY_DOCKER_CONFIG_JSON={}\n",
                    noauths.display()
                ),
                78,
                "auths",
            ),
            (
                "alice",
                "NAMESPACE_PREFIX=Bad_\n".into(),
                78,
                "NAMESPACE_PREFIX",
            ),
            ("../etc", String::new(), 67, "../etc"),
            ("--user=-rf", String::new(), 67, "-rf"),
            ("no-such-user-xyz", String::new(), 67, "no-such-user-xyz"),
            ("a b", String::new(), 67, "whitespace"),
        ];
        common::audit_settled();
        let writes_before = ondemand_writes(&common::prefix("bad"));
        for (i, (user, extra, code, needle)) in cases.iter().enumerate() {
            let sub = dir.join(format!("case{i}"));
            std::fs::create_dir_all(&sub).unwrap();
            let env = c.hook_env(
                &sub,
                &format!("NAMESPACE_PREFIX={}\n{extra}", common::prefix("bad")),
            );
            let out = match user.strip_prefix("--user=") {
                Some(_) => c
                    .hook()
                    .arg(user)
                    .arg("--hook-env")
                    .arg(&env)
                    .output()
                    .unwrap(),
                None => hook(user, &env, &[]),
            };
            assert_eq!(out.status.code(), Some(*code), "case {i}: {}", text(&out));
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(
                stderr.contains(needle),
                "case {i}: message lacks {needle:?}: {stderr}"
            );
            assert!(
                stderr.lines().count() <= 4,
                "case {i}: stderr too long: {stderr}"
            );
        }
        // Unknown keys only warn.
        let env = c.hook_env(
            &dir,
            &format!(
                "NAMESPACE_PREFIX={}\nNAMESPACE_PREFX=oops\nK8S_CREDENTIALS=none\n",
                common::prefix("bad")
            ),
        );
        let out = hook("alice", &env, &["--dry-run"]);
        assert_ok(&out);
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("unknown key NAMESPACE_PREFX"),
            "{}",
            text(&out)
        );
        common::audit_settled();
        assert_eq!(
            ondemand_writes(&common::prefix("bad")),
            writes_before,
            "a refused run (or a dry run) wrote to the cluster"
        );
        assert!(
            c.get_json(&["namespace", &format!("{}alice", common::prefix("bad"))])
                .is_none()
        );
    }

    /// Issue 20: right after a burst of namespace creations (the API
    /// server's own, 1,500 at once, as a site's first bulk reconcile makes)
    /// the controller-manager makes `default` ServiceAccounts minutes late.
    /// A fresh user's first pod, of the shape the dashboard submits (SPEC
    /// §12: no serviceAccountName, so `default`), created by the user's own
    /// kubectl the moment the hook returns, is admitted all the same.
    /// (In `local`: it leaves the namespaces to the throw-away cluster.)
    #[test]
    fn a_fresh_users_first_pod_is_admitted_right_after_a_burst_of_namespaces() {
        let c = cluster();
        let user = "bob";
        let (uid, gid, _) = linux_user(user);
        let prefix = common::prefix("burst");
        let dir = scratch("burst");
        let env = c.hook_env(
            &dir,
            &format!(
                "NAMESPACE_PREFIX=\"{prefix}\"\nK8S_CLUSTER_NAME=\"burst\"\nK8S_SERVER=\"{}\"\n\
                 K8S_CA_FILE=\"{}\"\nK8S_CREDENTIALS=token\n",
                c.var("K8S_SERVER"),
                common::user_tools().1.display(),
            ),
        );
        // 1,500 namespaces at once: 15 kubectl processes of 100 each.
        let creators: Vec<_> = (0..15)
            .map(|part| {
                let items: String = (0..100)
                    .map(|i| {
                        format!(
                            "- apiVersion: v1\n  kind: Namespace\n  metadata:\n    name: {prefix}fill-{part}-{i}\n"
                        )
                    })
                    .collect();
                std::thread::spawn(move || {
                    let c = cluster();
                    common::pipe(
                        Command::new(c.var("KUBECTL")).args([
                            "--kubeconfig",
                            c.var("KUBECONFIG_ADMIN"),
                            "create",
                            "-f",
                            "-",
                        ]),
                        format!("apiVersion: v1\nkind: List\nitems:\n{items}").as_bytes(),
                    )
                })
            })
            .collect();
        for creator in creators {
            let out = creator.join().unwrap();
            assert!(out.status.success(), "{}", text(&out));
        }
        let ns = format!("{prefix}{user}");
        let started = Instant::now();
        let out = c
            .hook()
            .args(["--user", user, "--hook-env"])
            .arg(&env)
            .env("OOD_OIDC_ACCESS_TOKEN", &c.login(user).access)
            .output()
            .unwrap();
        assert_ok(&out);
        // What the test is about: `default` was still missing when the
        // hook ran (the controller-manager behind the burst), and the hook
        // made it. Asked of the audit log: the ondemand account's create of
        // a ServiceAccount in the new namespace answered 201 (had the
        // controller been first, 409).
        common::audit_settled();
        let log = std::fs::read_to_string(c.var("AUDIT_LOG")).expect("audit log");
        let made_default = log
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .any(|e| {
                let r = &e["objectRef"];
                e["user"]["username"] == "system:serviceaccount:ondemand:ondemand"
                    && e["verb"] == "create"
                    && r["resource"] == "serviceaccounts"
                    && r["namespace"] == ns.as_str()
                    && (r["name"] == "default" || r["name"].is_null())
                    && e["responseStatus"]["code"] == 201
            });
        assert!(
            made_default,
            "the hook did not create ServiceAccount {ns}/default (the controller-manager was \
             first, or the hook never asked): the burst did not show what it is for"
        );
        let pod = format!(
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: first-job\n  namespace: {ns}\n  labels:\n    \
             job: first-job\n    app.kubernetes.io/name: first-job\n    \
             app.kubernetes.io/managed-by: open-ondemand\n  annotations:\n    \
             pod.kubernetes.io/lifetime: 01h00m00s\nspec:\n  restartPolicy: Never\n  \
             hostNetwork: false\n  hostIPC: false\n  hostPID: false\n  securityContext:\n    \
             runAsUser: {uid}\n    runAsGroup: {gid}\n    runAsNonRoot: true\n    \
             supplementalGroups: [{gid}]\n    fsGroup: {gid}\n  containers:\n  - name: job\n    \
             image: registry.example/none\n    command: [\"true\"]\n"
        );
        let file = common::user_tools()
            .0
            .with_file_name(format!("pod-{prefix}.yaml"));
        std::fs::write(&file, pod).unwrap();
        let created = common::kubectl_as_user(
            user,
            &["--context", "burst", "create", "-f", file.to_str().unwrap()],
        );
        let after = started.elapsed();
        let _ = std::fs::remove_file(&file);
        // The 1,500 namespaces stay until `tests/cluster/down`: deleting
        // them would keep the namespace controller busy for many minutes
        // (each deletion sweeps every resource type at its 20 requests/s),
        // and the tests after this one delete namespaces of their own.
        assert!(
            created.status.success(),
            "the first pod, {} ms after the hook started: {}",
            after.as_millis(),
            text(&created)
        );
        c.admin(&["delete", "pod", "-n", &ns, "first-job", "--wait=false"]);
    }
}
