//! End-to-end: site policy per user namespace (issue 11) — site templates,
//! the uid/gid annotations and the ValidatingAdmissionPolicy that enforces
//! them, and pruning — with the built binary run as OnDemand runs it (root,
//! the `ondemand` ServiceAccount's kubeconfig) against the local cluster.
//! Cluster-wide changes an admin would make (the policy binding, the prune
//! grant) are scoped to this test's namespaces, so the other tests running
//! at the same time see the cluster as `tests/cluster/up` made it.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use common::{cluster, linux_user, ondemand_writes, scratch, text};
use serde_json::{Value, json};

const REPO: &str = env!("CARGO_MANIFEST_DIR");

fn hook(user: &str, hook_env: &Path, extra: &[&str]) -> Output {
    cluster()
        .hook()
        .args(["--user", user, "--hook-env"])
        .arg(hook_env)
        .args(extra)
        .output()
        .expect("run hook")
}

fn assert_ok(out: &Output) -> String {
    assert!(out.status.success(), "hook failed:\n{}", text(out));
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A template directory as an admin sets it up: root-owned, 0755, files 0644.
fn template_dir(dir: &Path, files: &[(&str, &str)]) -> PathBuf {
    let tdir = dir.join("templates");
    let _ = std::fs::remove_dir_all(&tdir);
    std::fs::create_dir_all(&tdir).unwrap();
    std::fs::set_permissions(&tdir, std::fs::Permissions::from_mode(0o755)).unwrap();
    for (name, body) in files {
        let p = tdir.join(name);
        std::fs::write(&p, body).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    tdir
}

/// The documents of a shipped manifest under hooks/.
fn manifest(name: &str) -> Vec<Value> {
    let text = std::fs::read_to_string(Path::new(REPO).join("hooks").join(name)).unwrap();
    serde_saphyr::from_multiple(&text).unwrap()
}

/// `kubectl apply --server-side` of JSON objects as the admin.
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

/// A kubeconfig holding `user`'s own OIDC token, with the dashboard's
/// cluster and context entries (`open-ondemand`, namespace `ns`).
fn user_kubeconfig(dir: &Path, user: &str, ns: &str) -> String {
    let c = cluster();
    let tokens = c.login(user);
    let kc = dir.join(format!("{user}.kubeconfig"));
    std::fs::write(
        &kc,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: open-ondemand\n  cluster: {{server: {}, certificate-authority: {}}}\n\
             users:\n- name: {user}\n  user: {{token: {}}}\n\
             contexts:\n- name: open-ondemand\n  context: {{cluster: open-ondemand, user: {user}, namespace: {ns}}}\ncurrent-context: open-ondemand\n",
            c.var("K8S_SERVER"),
            c.var("K8S_CA_FILE"),
            tokens.access
        ),
    )
    .unwrap();
    kc.to_str().unwrap().to_owned()
}

const QUOTA: &str = "\
apiVersion: v1
kind: ResourceQuota
metadata:
  name: ${USER}-quota
  namespace: ${NAMESPACE}
spec:
  hard:
    requests.cpu: \"${SITE_QUOTA_CPU}\"
    pods: \"20\"
---
apiVersion: v1
kind: LimitRange
metadata:
  name: limits
spec:
  limits:
  - type: Container
    default: {cpu: \"1\", memory: 1Gi}
";

// ---- site templates ---------------------------------------------------

#[test]
fn site_templates_are_applied_rendered_and_reconciled() {
    let c = cluster();
    let dir = scratch("tpl");
    let prefix = common::prefix("tpl");
    linux_user("alice");
    linux_user("bob");
    let tdir = template_dir(&dir, &[("quota.yaml", QUOTA)]);
    let env_with = |cpu: &str| {
        c.hook_env(
            &dir,
            &format!(
                "NAMESPACE_PREFIX={prefix}\nK8S_CREDENTIALS=none\nSITE_TEMPLATES_DIR={}\nSITE_QUOTA_CPU=\"{cpu}\"\n",
                tdir.display()
            ),
        )
    };
    let env = env_with("4");
    let ns = format!("{prefix}alice");

    // A new user gets both, with the rest, in one run.
    let stderr = assert_ok(&hook("alice", &env, &["-v"]));
    assert!(!stderr.contains("warning"), "{stderr}");
    assert!(
        // The `default` ServiceAccount is the controller's if it was first.
        stderr.contains("7 created, 0 changed, 0 unchanged")
            || stderr.contains("6 created, 0 changed, 1 unchanged"),
        "{stderr}"
    );
    assert!(
        stderr.contains("created    ResourceQuota/alice-quota"),
        "{stderr}"
    );
    assert!(stderr.contains("created    LimitRange/limits"), "{stderr}");
    let quota = c
        .get_json(&["resourcequota", "-n", &ns, "alice-quota"])
        .expect("quota");
    assert_eq!(quota["spec"]["hard"]["requests.cpu"], "4");
    assert_eq!(
        quota["metadata"]["labels"]["app.kubernetes.io/managed-by"],
        "ood-k8s-bootstrap"
    );
    assert_eq!(
        quota["metadata"]["annotations"]["openondemand.org/template"],
        "quota.yaml"
    );
    let limits = c.get_json(&["limitrange", "-n", &ns, "limits"]).unwrap();
    assert_eq!(limits["spec"]["limits"][0]["default"]["memory"], "1Gi");

    // A second run leaves them unchanged: only the namespace changes, and
    // only if the run falls in a later second (its annotation has one-second
    // resolution); the summary is right either way.
    let rv = |v: &Value| v["metadata"]["resourceVersion"].clone();
    let stderr = assert_ok(&hook("alice", &env, &[]));
    assert!(
        stderr.contains("0 created, 1 changed, 6 unchanged")
            || stderr.contains("0 created, 0 changed, 7 unchanged"),
        "{stderr}"
    );
    let again = c
        .get_json(&["resourcequota", "-n", &ns, "alice-quota"])
        .unwrap();
    assert_eq!(rv(&again), rv(&quota));

    // render shows them, without a cluster.
    let out = Command::new(common::bin())
        .env_clear()
        .env("KUBECONFIG", "/nonexistent")
        .args(["render", "--user", "alice", "--hook-env"])
        .arg(&env)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let yaml = String::from_utf8_lossy(&out.stdout);
    assert!(
        yaml.contains("kind: ResourceQuota") && yaml.contains("kind: LimitRange"),
        "{yaml}"
    );
    assert!(yaml.contains("name: alice-quota"), "{yaml}");

    // A changed quota: the dry run says so, reconcile updates every user.
    assert_ok(&hook("bob", &env, &[]));
    let env = env_with("8");
    let stderr = assert_ok(&hook("alice", &env, &["--dry-run", "-v"]));
    assert!(
        stderr.contains("would change ResourceQuota/alice-quota")
            && stderr.contains("unchanged  LimitRange/limits"),
        "{stderr}"
    );
    let list = dir.join("users.txt");
    std::fs::write(&list, "alice\nbob\n").unwrap();
    let out = c
        .hook()
        .arg("reconcile")
        .arg("--hook-env")
        .arg(&env)
        .arg("--users")
        .arg(&list)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("reconciled 2 of 2 users"),
        "{}",
        text(&out)
    );
    for user in ["alice", "bob"] {
        let q = c
            .get_json(&[
                "resourcequota",
                "-n",
                &format!("{prefix}{user}"),
                &format!("{user}-quota"),
            ])
            .unwrap();
        assert_eq!(q["spec"]["hard"]["requests.cpu"], "8", "{user}");
    }
}

#[test]
fn bad_templates_are_refused_before_any_write() {
    let c = cluster();
    let dir = scratch("tpl-bad");
    let prefix = common::prefix("tplbad");
    linux_user("alice");
    let cases: [(&str, &str, &str); 5] = [
        (
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: ok}\n---\n# a cluster-wide role\napiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRole\nmetadata: {name: x}\n",
            "bad.yaml:7:",
            "cluster-scoped",
        ),
        (
            "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: x\n  namespace: kube-system\n",
            "bad.yaml:5:",
            "user's namespace",
        ),
        (
            "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: x\ndata:\n  home: ${HOME}\n",
            "bad.yaml:6:",
            "unknown placeholder ${HOME}",
        ),
        (
            "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: x\n data: {a: b}\n",
            "bad.yaml:5:",
            "not valid YAML",
        ),
        (
            "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: x\n  labels: {job: x}\n",
            "bad.yaml:5:",
            "`job` label",
        ),
    ];
    common::audit_settled();
    let writes_before = ondemand_writes(&prefix);
    for (i, (body, at, needle)) in cases.iter().enumerate() {
        let sub = dir.join(format!("case{i}"));
        std::fs::create_dir_all(&sub).unwrap();
        let tdir = template_dir(&sub, &[("good.yaml", QUOTA), ("bad.yaml", body)]);
        let env = c.hook_env(
            &sub,
            &format!(
                "NAMESPACE_PREFIX={prefix}\nK8S_CREDENTIALS=none\nSITE_TEMPLATES_DIR={}\nSITE_QUOTA_CPU=1\n",
                tdir.display()
            ),
        );
        let out = hook("alice", &env, &[]);
        assert_eq!(out.status.code(), Some(78), "case {i}: {}", text(&out));
        let stderr = String::from_utf8_lossy(&out.stderr);
        let path = format!("{}/{at}", tdir.display());
        assert!(
            stderr.contains(&path) && stderr.contains(needle),
            "case {i}: wanted {path} and {needle:?}: {stderr}"
        );
        assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
    }
    // A template directory others can write to is refused too.
    let tdir = template_dir(&dir, &[("good.yaml", QUOTA)]);
    std::fs::set_permissions(&tdir, std::fs::Permissions::from_mode(0o777)).unwrap();
    let env = c.hook_env(
        &dir,
        &format!(
            "NAMESPACE_PREFIX={prefix}\nK8S_CREDENTIALS=none\nSITE_TEMPLATES_DIR={}\nSITE_QUOTA_CPU=1\n",
            tdir.display()
        ),
    );
    let out = hook("alice", &env, &[]);
    assert_eq!(out.status.code(), Some(78), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("writable by its group and everyone"),
        "{}",
        text(&out)
    );
    common::audit_settled();
    assert_eq!(
        ondemand_writes(&prefix),
        writes_before,
        "a refused run wrote"
    );
    assert!(
        c.get_json(&["namespace", &format!("{prefix}alice")])
            .is_none()
    );
}

// ---- uid/gid published and enforced ------------------------------------

/// A pod as the OnDemand dashboard submits it (ood_core's pod.yml.erb:
/// pod-level runAsUser/runAsGroup/runAsNonRoot/supplementalGroups/fsGroup,
/// container-level allowPrivilegeEscalation false), with its ConfigMap and
/// Service, as one stream.
fn dashboard_job(ns: &str, uid: u32, gid: u32, id: &str) -> String {
    format!(
        "apiVersion: v1
kind: Pod
metadata:
  namespace: {ns}
  name: {id}
  labels:
    job: {id}
    app.kubernetes.io/name: jupyter
    app.kubernetes.io/managed-by: open-ondemand
  annotations:
    pod.kubernetes.io/lifetime: 01h00m00s
spec:
  restartPolicy: Never
  securityContext:
    runAsUser: {uid}
    runAsGroup: {gid}
    runAsNonRoot: true
    supplementalGroups: []
    fsGroup: {gid}
  hostNetwork: false
  hostIPC: false
  hostPID: false
  containers:
  - name: \"jupyter\"
    image: registry.example/jupyter:latest
    imagePullPolicy: IfNotPresent
    env:
    - name: POD_NAME
      valueFrom:
        fieldRef:
          fieldPath: metadata.name
    - name: USER
      value: \"dave\"
    ports:
    - containerPort: 8080
    volumeMounts:
    - name: configmap-volume
      mountPath: /ood
    resources:
      limits: {{memory: \"1Gi\", cpu: \"1\"}}
      requests: {{memory: \"1Gi\", cpu: \"1\"}}
    securityContext:
      allowPrivilegeEscalation: false
      capabilities:
        drop:
        - all
      privileged: false
  initContainers:
  - name: \"init-secret\"
    image: \"registry.example/init:latest\"
    command: [\"/bin/save_passwd_as_secret\"]
    securityContext:
      allowPrivilegeEscalation: false
      capabilities:
        drop:
        - all
      privileged: false
  volumes:
  - name: configmap-volume
    configMap:
      name: {id}-configmap
---
apiVersion: v1
kind: Service
metadata:
  name: {id}-service
  namespace: {ns}
  labels:
    job: {id}
    app.kubernetes.io/managed-by: open-ondemand
spec:
  selector:
    job: {id}
  ports:
  - protocol: TCP
    port: 80
    targetPort: 8080
  type: NodePort
---
apiVersion: v1
kind: ConfigMap
metadata:
  name: {id}-configmap
  namespace: {ns}
  labels:
    job: {id}
    app.kubernetes.io/managed-by: open-ondemand
data:
  config.py: |
    c.NotebookApp.port = 8080
"
    )
}

fn simple_pod(name: &str, pod_sc: &str, container_sc: &str) -> String {
    pod_with_lifetime(name, pod_sc, container_sc, Some("01h00m00s"))
}

/// A pod with `lifetime` as its `pod.kubernetes.io/lifetime` (none: no
/// annotation).
fn pod_with_lifetime(
    name: &str,
    pod_sc: &str,
    container_sc: &str,
    lifetime: Option<&str>,
) -> String {
    let annotations = lifetime.map_or(String::new(), |l| {
        format!(", annotations: {{pod.kubernetes.io/lifetime: '{l}'}}")
    });
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}{annotations}}}\nspec:\n  securityContext: {pod_sc}\n  containers:\n  - name: c\n    image: registry.example/none\n    securityContext: {container_sc}\n"
    )
}

#[test]
fn uid_gid_policy_admits_only_the_users_own_pods() {
    let c = cluster();
    let dir = scratch("uidgid");
    let prefix = common::prefix("uidgid");
    let (uid, gid, _) = linux_user("dave");
    let ns = format!("{prefix}dave");
    let env = c.hook_env(
        &dir,
        &format!("NAMESPACE_PREFIX={prefix}\nK8S_CREDENTIALS=none\nPUBLISH_UID_GID=true\nPUBLISH_GROUPS=true\n"),
    );
    assert_ok(&hook("dave", &env, &[]));

    // The namespace carries the ids from the passwd and group databases.
    let namespace = c.get_json(&["namespace", &ns]).unwrap();
    let ann = &namespace["metadata"]["annotations"];
    assert_eq!(ann["openondemand.org/uid"], uid.to_string());
    assert_eq!(ann["openondemand.org/gid"], gid.to_string());
    let id_g = Command::new("id").args(["-G", "dave"]).output().unwrap();
    let mut groups: Vec<u32> = String::from_utf8_lossy(&id_g.stdout)
        .split_whitespace()
        .map(|g| g.parse().unwrap())
        .collect();
    groups.sort_unstable();
    groups.dedup();
    let groups: Vec<String> = groups.iter().map(u32::to_string).collect();
    assert_eq!(ann["openondemand.org/supplemental-gids"], groups.join(","));

    // An admin applies the shipped policy. Its binding selects every
    // OnDemand namespace; here it is narrowed to this test's namespace so
    // the tests running alongside are not affected.
    let docs = manifest("uid-gid-policy.yaml");
    let (policy, binding, settings) = (&docs[0], &docs[1], &docs[2]);
    assert_eq!(policy["kind"], "ValidatingAdmissionPolicy");
    assert_eq!(
        binding["spec"]["matchResources"]["namespaceSelector"],
        json!({"matchLabels": {"app.kubernetes.io/name": "open-ondemand"}})
    );
    assert_eq!(binding["spec"]["validationActions"], json!(["Deny"]));
    assert_eq!(settings["data"]["maxLifetime"], "24h");
    // Its parameter too, with a maximum of this test's own.
    let mut params = settings.clone();
    let params_name = format!("{prefix}pod-policy");
    params["metadata"]["name"] = json!(params_name);
    params["data"]["maxLifetime"] = json!("2h");
    let mut narrowed = binding.clone();
    let binding_name = format!("{prefix}uid-gid");
    narrowed["metadata"]["name"] = json!(binding_name);
    narrowed["spec"]["paramRef"]["name"] = json!(params_name);
    narrowed["spec"]["matchResources"]["namespaceSelector"]["matchExpressions"] =
        json!([{"key": "kubernetes.io/metadata.name", "operator": "In", "values": [&ns]}]);
    admin_apply(&[policy.clone(), params, narrowed]);

    let kc = user_kubeconfig(&dir, "dave", &ns);
    let create = |manifest: &str| {
        common::pipe(
            Command::new(c.var("KUBECTL")).args([
                &format!("--kubeconfig={kc}"),
                "--context=open-ondemand",
                &format!("--namespace={ns}"),
                "-o",
                "json",
                "create",
                "-f",
                "-",
            ]),
            manifest.as_bytes(),
        )
    };
    let good_sc = format!("{{runAsUser: {uid}, runAsGroup: {gid}, runAsNonRoot: true}}");
    // The binding takes effect once the API server's policy cache has it.
    common::until_uid_gid_policy_refuses(&ns, |name| {
        create(&simple_pod(name, "{runAsUser: 0}", "{}"))
    });

    // The user's own uid/gid: admitted.
    let out = create(&simple_pod(
        "mine",
        &good_sc,
        "{allowPrivilegeEscalation: false}",
    ));
    assert!(out.status.success(), "{}", text(&out));
    // Another uid (on the container), or root, a foreign group, no or too
    // long a lifetime: refused, saying why.
    let other = uid + 1;
    let lifetime = |name: &str, lifetime: Option<&str>| {
        create(&pod_with_lifetime(name, &good_sc, "{}", lifetime))
    };
    for (name, out, why) in [
        ("no-lifetime", lifetime("no-lifetime", None), "none given"),
        (
            "long-lifetime",
            lifetime("long-lifetime", Some("03h00m00s")),
            "at most 2h",
        ),
        (
            "bad-lifetime",
            lifetime("bad-lifetime", Some("-1h")),
            "-1h given",
        ),
    ] {
        assert!(!out.status.success(), "{name} was admitted");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("ood-uid-gid") && stderr.contains(why),
            "{name}: {stderr}"
        );
    }
    for (name, pod_sc, container_sc, why) in [
        (
            "other-uid",
            good_sc.as_str(),
            format!("{{runAsUser: {other}}}"),
            format!("runAsUser {uid}"),
        ),
        (
            "as-root",
            "{runAsUser: 0, runAsGroup: 0}",
            "{}".to_owned(),
            format!("runAsUser {uid}"),
        ),
        (
            "no-nonroot",
            &*format!("{{runAsUser: {uid}, runAsGroup: {gid}}}"),
            "{}".to_owned(),
            "runAsNonRoot".to_owned(),
        ),
        (
            "root-group",
            &*format!(
                "{{runAsUser: {uid}, runAsGroup: {gid}, runAsNonRoot: true, supplementalGroups: [0]}}"
            ),
            "{}".to_owned(),
            "supplementalGroups".to_owned(),
        ),
        (
            "root-fs-group",
            &*format!("{{runAsUser: {uid}, runAsGroup: {gid}, runAsNonRoot: true, fsGroup: 0}}"),
            "{}".to_owned(),
            "fsGroup".to_owned(),
        ),
    ] {
        let out = create(&simple_pod(name, pod_sc, &container_sc));
        assert!(!out.status.success(), "{name} was admitted");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("ood-uid-gid") && stderr.contains(&why),
            "{name}: {stderr}"
        );
    }
    // A job submitted the way the dashboard does it: admitted.
    let out = create(&dashboard_job(&ns, uid, gid, "jupyter-abc123"));
    assert!(out.status.success(), "{}", text(&out));
    assert!(c.get_json(&["pod", "-n", &ns, "jupyter-abc123"]).is_some());

    // The site raises its maximum once, in the parameter: a 3 h pod is
    // admitted as soon as the API server has the new value.
    c.admin(&[
        "-n",
        "ondemand",
        "patch",
        "configmap",
        &params_name,
        "--type=merge",
        "-p",
        r#"{"data":{"maxLifetime":"4h"}}"#,
    ]);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let out = lifetime("three-hours", Some("03h00m00s"));
        if out.status.success() {
            break;
        }
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("at most 2h"),
            "{}",
            text(&out)
        );
        assert!(
            std::time::Instant::now() < deadline,
            "the new maximum never took effect"
        );
        std::thread::sleep(Duration::from_millis(300));
    }

    c.admin(&["delete", "validatingadmissionpolicybinding", &binding_name]);
    c.admin(&["-n", "ondemand", "delete", "configmap", &params_name]);
}

// ---- pruning ----------------------------------------------------------

const EXTRA: &str = "\
apiVersion: v1
kind: ConfigMap
metadata:
  name: site-settings
data:
  user: ${USER}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata:
  name: read-configmaps
rules:
- apiGroups: [\"\"]
  resources: [\"configmaps\"]
  verbs: [\"get\", \"list\"]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata:
  name: ${USER}-read-configmaps
roleRef:
  apiGroup: rbac.authorization.k8s.io
  kind: Role
  name: read-configmaps
subjects:
- apiGroup: rbac.authorization.k8s.io
  kind: User
  name: ${K8S_USERNAME}
";

/// The shipped prune grant, bound in one namespace only (so the other
/// tests still see an `ondemand` account without it).
fn grant_prune_in(ns: &str) {
    let docs = manifest("ondemand-prune.yaml");
    let role = docs
        .iter()
        .find(|d| d["kind"] == "ClusterRole")
        .expect("ClusterRole");
    let binding = docs
        .iter()
        .find(|d| d["kind"] == "ClusterRoleBinding")
        .expect("ClusterRoleBinding");
    assert_eq!(
        binding["subjects"],
        json!([{"kind": "ServiceAccount", "name": "ondemand", "namespace": "ondemand"}])
    );
    admin_apply(&[
        role.clone(),
        json!({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
            "metadata": {"name": "ondemand-prune", "namespace": ns},
            "roleRef": binding["roleRef"], "subjects": binding["subjects"],
        }),
    ]);
}

#[test]
fn pruning_removes_exactly_what_was_switched_off() {
    let c = cluster();
    let dir = scratch("prune");
    let prefix = common::prefix("prune");
    linux_user("carol.smith");
    let ns = format!("{prefix}carol-smith");
    let reg = dir.join("registry.json");
    std::fs::write(&reg, r#"{"auths":{"registry.example":{"auth":"dTpw"}}}"#).unwrap();
    std::fs::set_permissions(&reg, std::fs::Permissions::from_mode(0o600)).unwrap();
    let tdir = template_dir(&dir, &[("quota.yaml", QUOTA), ("extra.yaml", EXTRA)]);
    let base = format!(
        "NAMESPACE_PREFIX={prefix}\nK8S_CREDENTIALS=none\nSITE_TEMPLATES_DIR={}\nSITE_QUOTA_CPU=2\n",
        tdir.display()
    );
    let on = c.hook_env(
        &dir,
        &format!(
            "{base}PRUNE=true\nUSE_JOB_POD_REAPER=true\nIMAGE_PULL_SECRET=regcred\nREGISTRY_DOCKER_CONFIG_JSON={}\n",
            reg.display()
        ),
    );
    assert_ok(&hook("carol.smith", &on, &[]));
    grant_prune_in(&ns);

    // What others put there: a pull secret on the ServiceAccount, a
    // ConfigMap, and one that copies our label (but was not written by us).
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
    c.admin(&["create", "configmap", "site-notes", "-n", &ns]);
    c.admin(&["create", "configmap", "copied", "-n", &ns]);
    c.admin(&[
        "label",
        "configmap",
        "copied",
        "-n",
        &ns,
        "app.kubernetes.io/managed-by=ood-k8s-bootstrap",
    ]);
    // Nothing to prune yet.
    let stderr = assert_ok(&hook("carol.smith", &on, &[]));
    assert!(stderr.contains(", 0 deleted"), "{stderr}");

    // Switch off the reaper binding, the pull secret and a template.
    std::fs::remove_file(tdir.join("extra.yaml")).unwrap();
    let off = c.hook_env(&dir, &format!("{base}PRUNE=true\n"));
    let gone = [
        "RoleBinding/carol.smith-job-pod-reaper-rolebinding",
        "Secret/regcred",
        "ConfigMap/site-settings",
        "Role/read-configmaps",
        "RoleBinding/carol.smith-read-configmaps",
    ];
    let exists = |what: &str| {
        let (kind, name) = what.split_once('/').unwrap();
        c.get_json(&[&kind.to_lowercase(), "-n", &ns, name])
            .is_some()
    };
    let pulls = || -> Vec<String> {
        let sa = c
            .get_json(&["serviceaccount", "-n", &ns, "default"])
            .unwrap();
        sa["imagePullSecrets"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|p| p["name"].as_str().unwrap().to_owned())
            .collect()
    };

    // A dry run lists them first and changes nothing.
    common::audit_settled();
    let writes = ondemand_writes(&prefix);
    let stderr = assert_ok(&hook("carol.smith", &off, &["--dry-run", "-v"]));
    for what in gone {
        assert!(
            stderr.contains(&format!("would delete {what}")),
            "{what}: {stderr}"
        );
    }
    assert!(
        stderr.contains("would change ServiceAccount/default"),
        "{stderr}"
    );
    assert!(stderr.contains(", 5 deleted"), "{stderr}");
    for what in gone {
        assert!(exists(what), "the dry run removed {what}");
    }
    assert_eq!(pulls(), ["regcred", "site-mirror"]);
    common::audit_settled();
    assert_eq!(ondemand_writes(&prefix), writes, "the dry run wrote");

    // The real run removes exactly those, and the ServiceAccount reference.
    let stderr = assert_ok(&hook("carol.smith", &off, &["-v"]));
    for what in gone {
        assert!(
            stderr.contains(&format!("deleted    {what}")),
            "{what}: {stderr}"
        );
        assert!(!exists(what), "{what} is still there");
    }
    assert!(stderr.contains(", 5 deleted"), "{stderr}");
    assert_eq!(pulls(), ["site-mirror"]);
    for kept in [
        "ConfigMap/site-notes",
        "ConfigMap/copied",
        "RoleBinding/ondemand-prune",
        "ResourceQuota/carol.smith-quota",
        "LimitRange/limits",
        "RoleBinding/carol.smith-ood-user",
        "RoleBinding/carol.smith-ood-initializer",
        "NetworkPolicy/deny-from-other-namespaces",
    ] {
        assert!(exists(kept), "{kept} was removed");
    }
    let stderr = assert_ok(&hook("carol.smith", &off, &[]));
    assert!(
        stderr.contains("0 created, 1 changed, 6 unchanged, 0 deleted"),
        "{stderr}"
    );

    // reconcile --prune does it without PRUNE in hook.env.
    std::fs::remove_file(tdir.join("quota.yaml")).unwrap();
    let plain = c.hook_env(&dir, &base);
    let list = dir.join("users.txt");
    std::fs::write(&list, "carol.smith\n").unwrap();
    let out = c
        .hook()
        .arg("reconcile")
        .arg("--hook-env")
        .arg(&plain)
        .arg("--users")
        .arg(&list)
        .arg("--prune")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("2 deleted"),
        "{}",
        text(&out)
    );
    assert!(!exists("ResourceQuota/carol.smith-quota") && !exists("LimitRange/limits"));
    assert!(exists("ConfigMap/copied") && exists("ConfigMap/site-notes"));
}

#[test]
fn pruning_without_the_grant_says_what_to_apply() {
    let c = cluster();
    let dir = scratch("prune-nogrant");
    let prefix = common::prefix("prunenog");
    linux_user("bob");
    let env = c.hook_env(
        &dir,
        &format!("NAMESPACE_PREFIX={prefix}\nK8S_CREDENTIALS=none\nPRUNE=true\n"),
    );
    // A fresh namespace needs no listing; the next run does.
    assert_ok(&hook("bob", &env, &[]));
    let out = hook("bob", &env, &[]);
    assert_eq!(out.status.code(), Some(77), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("ondemand-prune.yaml") && stderr.contains("user bob"),
        "{stderr}"
    );
    assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
}

// ---- reaping ----------------------------------------------------------

/// `reap` as root, with the shipped CronJob's account (`reaper_kubeconfig`).
fn reap(hook_env: &Path, extra: &[&str]) -> Output {
    static KUBECONFIG: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    let kubeconfig = KUBECONFIG.get_or_init(|| common::reaper_kubeconfig(&scratch("reaper")));
    cluster()
        .hook()
        .env("KUBECONFIG", kubeconfig)
        .arg("reap")
        .arg("--hook-env")
        .arg(hook_env)
        .args(extra)
        .output()
        .expect("run reap")
}

/// Deleted: gone, or being deleted (the namespace controller empties it).
fn deleted(ns: &str) -> bool {
    cluster()
        .get_json(&["namespace", ns])
        .is_none_or(|n| !n["metadata"]["deletionTimestamp"].is_null())
}

/// A Linux account made afresh (so its uid is its own this run).
fn fresh_account(name: &str) -> u32 {
    let _ = Command::new("userdel").args(["-r", name]).output();
    linux_user(name).0
}

/// Deletes a Linux account (and its home, if it has one).
fn userdel(name: &str) {
    if Command::new("userdel")
        .args(["-r", name])
        .output()
        .unwrap()
        .status
        .success()
    {
        return;
    }
    let out = Command::new("userdel").arg(name).output().unwrap();
    assert!(out.status.success(), "userdel {name}: {}", text(&out));
}

/// Issue 18 (1): of six users' namespaces, `reap` deletes exactly the idle
/// one (no login for 40 days, nothing running) and the two departed ones
/// (login gone from passwd; login now with another uid), and keeps the
/// active one, an idle one with a pending pod and an idle one holding a
/// PersistentVolumeClaim (until --include-pvcs), and another prefix's. The
/// dry run lists each with its reason and deletes nothing; more than the
/// cap deletes nothing and exits 75.
#[test]
fn reap_deletes_exactly_the_idle_and_departed_namespaces() {
    let c = cluster();
    let dir = scratch("reap");
    let prefix = common::prefix("reap");
    let env = c.hook_env(
        &dir,
        &format!(
            "NAMESPACE_PREFIX={prefix}\nK8S_CREDENTIALS=none\nREAP_IDLE_DAYS=30\nREAP_DEPARTED=true\nREAP_MAX_PER_RUN=3\n"
        ),
    );
    let other_prefix = common::prefix("reapother");
    let other_env = c.hook_env(
        &scratch("reap-other"),
        &format!("NAMESPACE_PREFIX={other_prefix}\nK8S_CREDENTIALS=none\n"),
    );
    let users = [
        "rp-idle",
        "rp-active",
        "rp-busy",
        "rp-data",
        "rp-gone",
        "rp-moved",
    ];
    let mut uids = std::collections::BTreeMap::new();
    for u in users {
        uids.insert(u, fresh_account(u));
        assert_ok(&hook(u, &env, &["--cluster-only"]));
    }
    assert_ok(&hook("rp-idle", &other_env, &["--cluster-only"]));
    let ns = |u: &str| format!("{prefix}{u}");
    // 40 days without a login for three of them.
    let long_ago = (std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        - 40 * 86_400)
        .to_string();
    for u in ["rp-idle", "rp-busy", "rp-data"] {
        c.admin(&[
            "annotate",
            "--overwrite",
            "namespace",
            &ns(u),
            &format!("openondemand.org/last-hook-execution={long_ago}"),
        ]);
    }
    c.admin(&[
        "annotate",
        "--overwrite",
        "namespace",
        &format!("{other_prefix}rp-idle"),
        &format!("openondemand.org/last-hook-execution={long_ago}"),
    ]);
    // A pod that has not finished (no kubelet here: it stays Pending), a claim.
    common::pipe(
        Command::new(c.var("KUBECTL"))
            .args(["--kubeconfig", c.var("KUBECONFIG_ADMIN"), "-n", &ns("rp-busy")])
            .args(["create", "-f", "-"]),
        b"apiVersion: v1\nkind: Pod\nmetadata: {name: job}\nspec:\n  containers:\n  - {name: c, image: registry.example/none}\n",
    );
    common::pipe(
        Command::new(c.var("KUBECTL"))
            .args(["--kubeconfig", c.var("KUBECONFIG_ADMIN"), "-n", &ns("rp-data")])
            .args(["create", "-f", "-"]),
        b"apiVersion: v1\nkind: PersistentVolumeClaim\nmetadata: {name: data}\nspec:\n  accessModes: [ReadWriteOnce]\n  resources: {requests: {storage: 1Gi}}\n",
    );
    // rp-gone leaves; rp-moved's login comes back with another uid.
    userdel("rp-gone");
    userdel("rp-moved");
    let new_uid = uids["rp-moved"] + 1000;
    let out = Command::new("useradd")
        .args(["-u", &new_uid.to_string(), "-M", "rp-moved"])
        .output()
        .unwrap();
    assert!(out.status.success(), "useradd: {}", text(&out));

    // The dry run: each with its reason, nothing deleted.
    let out = reap(&env, &["--dry-run"]);
    assert!(out.status.success(), "{}", text(&out));
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    for want in [
        format!("would delete {}: idle: no login for 40 days", ns("rp-idle")),
        format!(
            "would delete {}: departed: rp-gone is no longer in passwd",
            ns("rp-gone")
        ),
        format!(
            "would delete {}: departed: rp-moved is uid {new_uid} in passwd, the namespace was made for uid {}",
            ns("rp-moved"),
            uids["rp-moved"]
        ),
        format!(
            "kept         {}: idle, but a pod is still running or pending",
            ns("rp-busy")
        ),
        format!(
            "kept         {}: holds PersistentVolumeClaims",
            ns("rp-data")
        ),
    ] {
        assert!(said.contains(&want), "no {want:?} in:\n{}", text(&out));
    }
    assert!(!said.contains("rp-active"), "{said}");
    assert!(!said.contains(&other_prefix), "{said}");
    assert!(users.iter().all(|u| !deleted(&ns(u))));

    // Over the cap: nothing deleted, exit 75, saying why.
    let out = reap(&env, &["--max-per-run", "2"]);
    assert_eq!(out.status.code(), Some(75), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(
            "3 namespaces qualify (2 of them departed), more than REAP_MAX_PER_RUN=2: deleted none"
        ),
        "{err}"
    );
    assert!(users.iter().all(|u| !deleted(&ns(u))));

    // The real run, as the shipped daily timer's service runs it: exactly
    // the three.
    let exec = common::unit_values("ood-k8s-bootstrap-reap.service", "ExecStart");
    assert_eq!(exec, ["/usr/bin/ood-k8s-bootstrap reap"]);
    let environment = common::unit_values("ood-k8s-bootstrap-reap.service", "Environment");
    assert_eq!(environment, ["KUBECONFIG=/root/.kube/config"]);
    let calendar = common::unit_values("ood-k8s-bootstrap-reap.timer", "OnCalendar");
    assert_eq!(calendar, ["*-*-* 03:17:00"]);
    let out = reap(&env, &[]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("reap: 3 deleted (1 idle, 2 departed), 3 kept, 0 failed"),
        "{}",
        text(&out)
    );
    for u in ["rp-idle", "rp-gone", "rp-moved"] {
        assert!(deleted(&ns(u)), "{u} kept:\n{}", text(&out));
    }
    for u in ["rp-active", "rp-busy", "rp-data"] {
        assert!(!deleted(&ns(u)), "{u} deleted:\n{}", text(&out));
    }
    assert!(!deleted(&format!("{other_prefix}rp-idle")));

    // With --include-pvcs the idle namespace holding a claim goes too.
    let out = reap(&env, &["--include-pvcs"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(deleted(&ns("rp-data")), "{}", text(&out));
    assert!(!deleted(&ns("rp-busy")) && !deleted(&ns("rp-active")));
    userdel("rp-moved");

    // The CronJob manifest for sites that let the cluster run it is valid
    // as shipped (the API server's own validation; there is no kubelet
    // here to run it).
    let out = c.kubectl_as(
        c.var("KUBECONFIG_ADMIN"),
        &[
            "apply",
            "--server-side",
            "--dry-run=server",
            "-f",
            &format!("{REPO}/hooks/reap-cronjob.yaml"),
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
}

/// The CronJob's way: no kubeconfig, in a pod — the binary takes the pod's
/// ServiceAccount (its token and CA where the kubelet puts them, the API
/// server from KUBERNETES_SERVICE_HOST/PORT) and reaps as `nobody`, as the
/// shipped manifest runs it. The pod's file system is a private tmpfs on
/// /run (a mount namespace of its own), so the host's is not touched.
#[test]
fn reap_runs_in_a_pod_as_the_cronjobs_service_account() {
    use std::os::unix::fs::PermissionsExt;
    let c = cluster();
    let _ = common::reaper_kubeconfig(&scratch("reap-pod-rbac"));
    let prefix = common::prefix("reappod");
    // World-readable, root-owned, as a ConfigMap volume is.
    let dir = PathBuf::from(format!("/tmp/ood-e2e-pod-files-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("sa")).unwrap();
    for d in [&dir, &dir.join("sa")] {
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    // The hook.env of the shipped ConfigMap, with this test's prefix.
    let shipped = manifest("reap-cronjob.yaml")
        .into_iter()
        .find(|d| d["kind"] == "ConfigMap")
        .expect("the ConfigMap");
    let hook_env_text = shipped["data"]["hook.env"].as_str().unwrap();
    assert!(hook_env_text.contains("NAMESPACE_PREFIX=\"ood-\"\n"));
    let env = dir.join("hook.env");
    std::fs::write(
        &env,
        hook_env_text.replace(
            "NAMESPACE_PREFIX=\"ood-\"",
            &format!("NAMESPACE_PREFIX={prefix}"),
        ),
    )
    .unwrap();
    std::fs::write(dir.join("sa/token"), common::reaper_token()).unwrap();
    std::fs::copy(c.var("K8S_CA_FILE"), dir.join("sa/ca.crt")).unwrap();
    std::fs::write(dir.join("sa/namespace"), "ondemand").unwrap();
    for f in ["hook.env", "sa/token", "sa/ca.crt", "sa/namespace"] {
        std::fs::set_permissions(dir.join(f), std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    linux_user("dave");
    let user_env = c.hook_env(
        &scratch("reap-pod"),
        &format!("NAMESPACE_PREFIX={prefix}\nK8S_CREDENTIALS=none\n"),
    );
    assert_ok(&hook("dave", &user_env, &["--cluster-only"]));
    let ns = format!("{prefix}dave");
    c.admin(&[
        "annotate",
        "--overwrite",
        "namespace",
        &ns,
        "openondemand.org/last-hook-execution=1000000000",
    ]);
    let port = c.var("K8S_SERVER").rsplit(':').next().unwrap().to_owned();
    let script = format!(
        "mount -t tmpfs tmpfs /run && mkdir -p /run/secrets/kubernetes.io/serviceaccount \
         && cp {sa}/token {sa}/ca.crt {sa}/namespace /run/secrets/kubernetes.io/serviceaccount/ \
         && chmod 755 /run/secrets /run/secrets/kubernetes.io /run/secrets/kubernetes.io/serviceaccount \
         && chmod 644 /run/secrets/kubernetes.io/serviceaccount/* \
         && exec setpriv --reuid 65534 --regid 65534 --clear-groups {bin} reap --hook-env {env}",
        sa = dir.join("sa").display(),
        bin = common::bin().display(),
        env = env.display(),
    );
    let out = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c", &script])
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .env("HOME", "/nonexistent")
        .env("KUBERNETES_SERVICE_HOST", "127.0.0.1")
        .env("KUBERNETES_SERVICE_PORT", &port)
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(&format!("deleted      {ns}: idle")),
        "{}",
        text(&out)
    );
    assert!(deleted(&ns));
}

// ---- run records and metrics -------------------------------------------

/// The records `log` received, parsed (every datagram must be one).
fn records(log: &common::SyslogListener) -> Vec<std::collections::BTreeMap<String, String>> {
    log.received()
        .iter()
        .map(|d| {
            common::rfc5424_fields(d).unwrap_or_else(|| panic!("not an RFC 5424 record: {d:?}"))
        })
        .collect()
}

/// A metrics file's samples; panics unless every line is a comment or
/// `name{labels} value` with a number (what node-exporter accepts).
fn metrics(path: &Path) -> std::collections::BTreeMap<String, f64> {
    let text = std::fs::read_to_string(path).unwrap();
    let mut out = std::collections::BTreeMap::new();
    for line in text.lines() {
        if line.starts_with("# HELP ") || line.starts_with("# TYPE ") {
            continue;
        }
        let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("{line:?}"));
        let value: f64 = value.parse().unwrap_or_else(|_| panic!("{line:?}"));
        assert!(
            series.starts_with("ood_k8s_bootstrap_")
                && (!series.contains('{') || series.ends_with('}')),
            "{line:?}"
        );
        out.insert(series.to_owned(), value);
    }
    out
}

/// Issue 18 (2): the hook (a success and a failure), `reconcile`, `reap`
/// and `root-token` each leave one record on the syslog socket with the
/// fields, and never the token; the metrics count them; `doctor --user`
/// shows the user's last run.
#[test]
fn every_command_leaves_one_record_and_the_metrics_count_it() {
    let c = cluster();
    admin_apply(&manifest("self-renew.yaml"));
    let dir = scratch("records");
    let log = common::SyslogListener::bind(&dir, "log.sock");
    let prefix = common::prefix("rec");
    let metrics_file = dir.join("ood.prom");
    let env = c.hook_env(
        &dir,
        &format!(
            "NAMESPACE_PREFIX={prefix}\nK8S_CREDENTIALS=token\nSYSLOG_SOCKET={}\nMETRICS_FILE={}\nLAST_RUN_DIR={}\n",
            log.path.display(),
            metrics_file.display(),
            dir.join("last-run").display()
        ),
    );
    let (uid, _, _) = linux_user("dave");
    let tokens = c.login("dave");
    let out = cluster()
        .hook()
        .env("OOD_OIDC_ACCESS_TOKEN", &tokens.access)
        .env("OOD_OIDC_REFRESH_TOKEN", &tokens.refresh)
        .args(["--user", "dave", "--hook-env"])
        .arg(&env)
        .output()
        .unwrap();
    assert_ok(&out);
    let failed = hook("no-such-user-here", &env, &[]);
    assert_eq!(failed.status.code(), Some(67), "{}", text(&failed));
    let list = dir.join("users");
    std::fs::write(&list, "dave\n").unwrap();
    let out = c
        .hook()
        .arg("reconcile")
        .arg("--users")
        .arg(&list)
        .arg("--hook-env")
        .arg(&env)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let out = reap(&env, &[]);
    assert!(out.status.success(), "{}", text(&out));
    let kubeconfig = dir.join("root.kubeconfig");
    std::fs::copy(c.var("KUBECONFIG_ONDEMAND"), &kubeconfig).unwrap();
    let out = c
        .hook()
        .arg("root-token")
        .arg("--kubeconfig")
        .arg(&kubeconfig)
        .arg("--hook-env")
        .arg(&env)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));

    let got = records(&log);
    let commands: Vec<&str> = got.iter().map(|r| r["command"].as_str()).collect();
    assert_eq!(
        commands,
        ["hook", "hook", "reconcile", "reap", "root-token"],
        "{got:#?}"
    );
    let ns = format!("{prefix}dave");
    let hook_ok = &got[0];
    for (k, v) in [
        ("user", "dave"),
        ("namespace", ns.as_str()),
        ("mode", "token"),
        ("exit", "0"),
        ("deleted", "0"),
        ("pri", "86"),
    ] {
        assert_eq!(
            hook_ok.get(k).map(String::as_str),
            Some(v),
            "{k}: {hook_ok:?}"
        );
    }
    let created: usize = hook_ok["created"].parse().unwrap();
    let unchanged: usize = hook_ok["unchanged"].parse().unwrap();
    assert!(created + unchanged >= 5, "{hook_ok:?}");
    assert!(
        hook_ok.contains_key("cluster") && hook_ok.contains_key("duration_ms"),
        "{hook_ok:?}"
    );
    let hook_failed = &got[1];
    assert_eq!(hook_failed["exit"], "67");
    assert!(
        hook_failed["error"].contains("no-such-user-here"),
        "{hook_failed:?}"
    );
    assert_eq!(got[2]["users"], "1");
    assert_eq!(got[4]["exit"], "0");
    for d in log.received().iter().chain(got.iter().map(|r| &r["msg"])) {
        assert!(!d.contains(&tokens.access) && !d.contains(&tokens.refresh));
    }
    let all = format!("{got:?}");
    assert!(!all.contains(&tokens.access) && !all.contains(&tokens.refresh));

    let m = metrics(&metrics_file);
    for (series, want) in [
        (
            "ood_k8s_bootstrap_runs_total{command=\"hook\",exit=\"0\"}",
            1.0,
        ),
        (
            "ood_k8s_bootstrap_runs_total{command=\"hook\",exit=\"67\"}",
            1.0,
        ),
        (
            "ood_k8s_bootstrap_runs_total{command=\"reconcile\",exit=\"0\"}",
            1.0,
        ),
        (
            "ood_k8s_bootstrap_runs_total{command=\"reap\",exit=\"0\"}",
            1.0,
        ),
        (
            "ood_k8s_bootstrap_runs_total{command=\"root-token\",exit=\"0\"}",
            1.0,
        ),
        (
            "ood_k8s_bootstrap_run_duration_seconds_count{command=\"hook\"}",
            2.0,
        ),
    ] {
        assert_eq!(m.get(series), Some(&want), "{series}: {m:#?}");
    }
    assert!(m.contains_key("ood_k8s_bootstrap_last_success_timestamp_seconds{command=\"hook\"}"));

    // doctor --user: the last run, as recorded.
    let out = c
        .hook()
        .args(["doctor", "--user", "dave", "--hook-env"])
        .arg(&env)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        said.lines().any(|l| l.contains("last run: time=")
            && l.contains("command=\"hook\" user=\"dave\"")
            && l.contains("exit=\"0\"")),
        "{}",
        text(&out)
    );
    let _ = uid;
}

/// Issue 18 (2): 50 hooks at once: the metrics count exactly 50, and the
/// file parses whenever it is read meanwhile.
#[test]
fn fifty_concurrent_hooks_are_counted_exactly_and_the_file_always_parses() {
    let c = cluster();
    let dir = scratch("metrics50");
    let prefix = common::prefix("m50");
    let metrics_file = dir.join("ood.prom");
    let env = c.hook_env(
        &dir,
        &format!(
            "NAMESPACE_PREFIX={prefix}\nK8S_CREDENTIALS=none\nLOG_TARGET=none\nMETRICS_FILE={}\n",
            metrics_file.display()
        ),
    );
    linux_user("dave");
    assert_ok(&hook("dave", &env, &["--cluster-only"]));
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reader = {
        let (done, path) = (done.clone(), metrics_file.clone());
        std::thread::spawn(move || {
            let mut reads = 0;
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                let m = metrics(&path);
                assert!(!m.is_empty(), "an empty metrics file");
                reads += 1;
            }
            reads
        })
    };
    let runs: Vec<_> = (0..50)
        .map(|_| {
            let env = env.clone();
            std::thread::spawn(move || hook("dave", &env, &["--cluster-only"]))
        })
        .collect();
    for r in runs {
        assert_ok(&r.join().unwrap());
    }
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    let reads = reader.join().unwrap();
    let m = metrics(&metrics_file);
    let ok = "ood_k8s_bootstrap_runs_total{command=\"hook\",exit=\"0\"}";
    assert_eq!(m.get(ok), Some(&51.0), "{m:#?}");
    assert_eq!(
        m.get("ood_k8s_bootstrap_run_duration_seconds_bucket{command=\"hook\",le=\"+Inf\"}"),
        Some(&51.0)
    );
    assert!(reads > 0);
}

/// The names in `dir` and under it, with each file's inode and length.
fn tree(dir: &Path) -> std::collections::BTreeMap<PathBuf, (u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    common::files_under(dir)
        .into_iter()
        .map(|f| {
            let m = std::fs::symlink_metadata(&f).unwrap();
            (f, (m.ino(), m.len()))
        })
        .collect()
}

/// Issue 25 (1): a name that is not a login — `../escape`, an absolute
/// path, the old call form with an absolute path — is refused with the
/// unknown-user status and an error naming it, and nothing is made or
/// replaced, outside LAST_RUN_DIR or in it (the record took the raw name,
/// and the last-run file was that name joined to the directory).
#[test]
fn a_name_that_is_not_a_login_never_becomes_a_last_run_file() {
    let c = cluster();
    let dir = scratch("lre");
    let last_run = dir.join("runs").join("last-run");
    let env = c.hook_env(
        &dir,
        &format!(
            "NAMESPACE_PREFIX={}\nK8S_CREDENTIALS=none\nLOG_TARGET=none\nLAST_RUN_DIR={}\n",
            common::prefix("lre"),
            last_run.display()
        ),
    );
    let victim = dir.join("victim");
    std::fs::write(&victim, "root's own file\n").unwrap();
    let before = tree(&dir);
    let absolute = |name: &str| dir.join(name).to_string_lossy().into_owned();
    let old_form = |user: &str| c.hook().arg(user).arg(&env).output().expect("run the hook");
    let runs = [
        ("../escape".to_owned(), hook("../escape", &env, &[])),
        ("../../escape".to_owned(), hook("../../escape", &env, &[])),
        (absolute("victim"), hook(&absolute("victim"), &env, &[])),
        (absolute("made"), hook(&absolute("made"), &env, &[])),
        (absolute("victim"), old_form(&absolute("victim"))),
        (absolute("made-old"), old_form(&absolute("made-old"))),
    ];
    for (name, out) in &runs {
        assert_eq!(out.status.code(), Some(67), "{name}: {}", text(out));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains(&format!("username {name:?} cannot be a login name")),
            "{name}: {}",
            text(out)
        );
    }
    assert_eq!(
        std::fs::read_to_string(&victim).unwrap(),
        "root's own file\n"
    );
    let after = tree(&dir);
    let new: Vec<_> = after.keys().filter(|f| !before.contains_key(*f)).collect();
    assert!(new.is_empty(), "made: {new:?}");
    assert_eq!(before, after, "a file was replaced");
    for escaped in ["escape", "runs/escape", "made", "made-old"] {
        assert!(!dir.join(escaped).exists(), "{escaped}");
    }
}

/// A hook run bounded by `limit`: its output, or None when it had to be
/// killed (it hung).
fn hook_within(user: &str, hook_env: &Path, limit: Duration) -> Option<Output> {
    use std::process::Stdio;
    let mut child = cluster()
        .hook()
        .args(["--user", user, "--hook-env"])
        .arg(hook_env)
        .arg("--cluster-only")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run the hook");
    let started = std::time::Instant::now();
    while child.try_wait().unwrap().is_none() {
        if started.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Some(child.wait_with_output().unwrap())
}

/// Issue 25 (3): whoever owns METRICS_FILE's directory (node-exporter's
/// account, as Debian sets it up) cannot hold a login: a FIFO there, or
/// its lock held forever, and the hook still ends within its deadline
/// (with a generous margin), warns in one line naming METRICS_FILE, and
/// exits as it would without metrics; a symlink there is not followed
/// (the link and its target stay as they were).
#[test]
fn a_hostile_metrics_file_never_holds_a_login() {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let c = cluster();
    let dir = scratch("mhostile");
    let prefix = common::prefix("mhostile");
    linux_user("dave");
    let deadline = 10;
    let limit = Duration::from_secs(deadline + 20);
    let env_with = |tag: &str, metrics: &Path| {
        let d = dir.join(format!("env-{tag}"));
        std::fs::create_dir_all(&d).unwrap();
        c.hook_env(
            &d,
            &format!(
                "NAMESPACE_PREFIX={prefix}\nK8S_CREDENTIALS=none\nLOG_TARGET=none\nHOOK_TIMEOUT_SECONDS={deadline}\nMETRICS_FILE={}\n",
                metrics.display()
            ),
        )
    };
    let without = c.hook_env(
        &dir,
        &format!("NAMESPACE_PREFIX={prefix}\nK8S_CREDENTIALS=none\nLOG_TARGET=none\n"),
    );
    let plain = hook_within("dave", &without, limit).expect("the hook without metrics hung");
    assert_ok(&plain);
    let warned = |what: &str, out: &Output, metrics: &Path| {
        assert_eq!(
            out.status.code(),
            plain.status.code(),
            "{what}: {}",
            text(out)
        );
        let err = String::from_utf8_lossy(&out.stderr);
        let lines: Vec<&str> = err
            .lines()
            .filter(|l| l.contains(&format!("warning: METRICS_FILE {}", metrics.display())))
            .collect();
        assert_eq!(lines.len(), 1, "{what}: {}", text(out));
    };

    // A FIFO with no writer: reading it would block forever.
    let fifo = dir.join("fifo.prom");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o644)).unwrap();
    let out = hook_within("dave", &env_with("fifo", &fifo), limit)
        .expect("a FIFO at METRICS_FILE hung the hook past its deadline");
    warned("fifo", &out, &fifo);
    assert!(
        std::fs::symlink_metadata(&fifo)
            .unwrap()
            .file_type()
            .is_fifo()
    );

    // The lock (the `.NAME.lock` file beside it) held by another process.
    let locked = dir.join("locked.prom");
    std::fs::write(&locked, "").unwrap();
    let lock = std::fs::File::create(dir.join(".locked.prom.lock")).unwrap();
    let held = nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusive).unwrap();
    let out = hook_within("dave", &env_with("locked", &locked), limit)
        .expect("a lock held forever hung the hook past its deadline");
    warned("locked", &out, &locked);
    drop(held);

    // A symlink to a file of root's: neither followed nor replaced.
    let target = dir.join("target");
    std::fs::write(&target, "root's own file\n").unwrap();
    let ino = std::fs::metadata(&target).unwrap().ino();
    let link = dir.join("link.prom");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    let out = hook_within("dave", &env_with("link", &link), limit).expect("hung");
    warned("link", &out, &link);
    assert!(
        std::fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink()
    );
    assert_eq!(std::fs::read_link(&link).unwrap(), target);
    assert_eq!(
        std::fs::read_to_string(&target).unwrap(),
        "root's own file\n"
    );
    assert_eq!(std::fs::metadata(&target).unwrap().ino(), ino);
}

/// Issue 18 (2): a log socket that is missing or full never fails a login
/// (a blocking send to the full one would hang the hook: each run is
/// bounded by the deadline plus a margin, and fails the test when it
/// hangs); with journald owning the socket, the record goes to journald's
/// native socket beside it, every field its own.
#[test]
fn a_missing_or_full_log_socket_never_fails_a_login_and_journald_gets_fields() {
    let c = cluster();
    let dir = scratch("logsock");
    let prefix = common::prefix("logsock");
    linux_user("dave");
    let hook = |user: &str, env: &Path, extra: &[&str]| -> Output {
        let mut cmd = c.hook();
        cmd.args(["--user", user, "--hook-env"])
            .arg(env)
            .args(extra);
        let limit = common::DEFAULT_DEADLINE + common::MARGIN;
        common::output_within(&mut cmd, limit, "the hook with this log socket").0
    };
    let env_with = |socket: &Path| {
        let d = dir.join(format!(
            "env-{}",
            socket.file_name().unwrap().to_string_lossy()
        ));
        std::fs::create_dir_all(&d).unwrap();
        c.hook_env(
            &d,
            &format!(
                "NAMESPACE_PREFIX={prefix}\nK8S_CREDENTIALS=none\nSYSLOG_SOCKET={}\n",
                socket.display()
            ),
        )
    };
    assert_ok(&hook(
        "dave",
        &env_with(&dir.join("missing.sock")),
        &["--cluster-only"],
    ));

    let full = common::SyslogListener::bind(&dir, "full.sock");
    let filler = std::os::unix::net::UnixDatagram::unbound().unwrap();
    filler.set_nonblocking(true).unwrap();
    let mut sent = 0;
    while filler.send_to(&[b'x'; 1024], &full.path).is_ok() {
        sent += 1;
        assert!(sent < 1_000_000, "the socket never filled");
    }
    assert_ok(&hook("dave", &env_with(&full.path), &["--cluster-only"]));

    // journald's layout: /dev/log a link to …/journal/dev-log, its native
    // socket `socket` beside it.
    let journal = dir.join("journal");
    std::fs::create_dir_all(&journal).unwrap();
    let native = common::SyslogListener::bind(&journal, "socket");
    let _dev_log = common::SyslogListener::bind(&journal, "dev-log");
    let link = dir.join("dev-log-link");
    std::os::unix::fs::symlink(journal.join("dev-log"), &link).unwrap();
    assert_ok(&hook("dave", &env_with(&link), &["--cluster-only"]));
    let got = native.received();
    assert_eq!(got.len(), 1, "{got:?}");
    let fields: Vec<&str> = got[0].lines().collect();
    for want in [
        "SYSLOG_IDENTIFIER=ood-k8s-bootstrap",
        "OOD_COMMAND=hook",
        "OOD_USER=dave",
        "OOD_EXIT=0",
        "PRIORITY=6",
    ] {
        assert!(fields.contains(&want), "no {want} in {fields:?}");
    }
    assert!(_dev_log.received().is_empty());
}

/// Issue 25 (promises): `reap` leaves one record per deleted namespace
/// (command `reap`, the user, the namespace, the reason) besides its run
/// record, and `ood_k8s_bootstrap_reap_deletions_total{reason}` counts the
/// deletions per reason: two idle, one departed.
#[test]
fn reap_records_each_deletion_and_counts_it_per_reason() {
    let c = cluster();
    let dir = scratch("reap-records");
    let log = common::SyslogListener::bind(&dir, "log.sock");
    let metrics_file = dir.join("ood.prom");
    let prefix = common::prefix("reaprec");
    let env = c.hook_env(
        &dir,
        &format!(
            "NAMESPACE_PREFIX={prefix}\nK8S_CREDENTIALS=none\nREAP_IDLE_DAYS=30\nREAP_DEPARTED=true\nSYSLOG_SOCKET={}\nMETRICS_FILE={}\n",
            log.path.display(),
            metrics_file.display()
        ),
    );
    let users = ["rr-idle1", "rr-idle2", "rr-gone", "rr-active"];
    for u in users {
        fresh_account(u);
        assert_ok(&hook(u, &env, &["--cluster-only"]));
    }
    let ns = |u: &str| format!("{prefix}{u}");
    let long_ago = (std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        - 40 * 86_400)
        .to_string();
    for u in ["rr-idle1", "rr-idle2"] {
        c.admin(&[
            "annotate",
            "--overwrite",
            "namespace",
            &ns(u),
            &format!("openondemand.org/last-hook-execution={long_ago}"),
        ]);
    }
    userdel("rr-gone");
    let _ = records(&log); // the hooks' records
    let _ = std::fs::remove_file(&metrics_file);

    let out = reap(&env, &[]);
    assert!(out.status.success(), "{}", text(&out));
    for u in ["rr-idle1", "rr-idle2", "rr-gone"] {
        assert!(deleted(&ns(u)), "{u} kept:\n{}", text(&out));
    }
    assert!(!deleted(&ns("rr-active")));

    let got = records(&log);
    assert!(got.iter().all(|r| r["command"] == "reap"), "{got:#?}");
    let mut per_ns: Vec<(String, String, String)> = got
        .iter()
        .filter(|r| r.get("deleted").map(String::as_str) == Some("1") && r.contains_key("reason"))
        .map(|r| {
            (
                r.get("namespace").cloned().unwrap_or_default(),
                r.get("user").cloned().unwrap_or_default(),
                r["reason"].clone(),
            )
        })
        .collect();
    per_ns.sort();
    assert_eq!(per_ns.len(), 3, "one record per deletion: {got:#?}");
    for ((n, user, reason), (u, kind)) in per_ns.iter().zip([
        ("rr-gone", "departed: rr-gone is no longer in passwd"),
        ("rr-idle1", "idle: no login for 40 days"),
        ("rr-idle2", "idle: no login for 40 days"),
    ]) {
        assert_eq!((n.as_str(), user.as_str()), (ns(u).as_str(), u), "{got:#?}");
        assert!(reason.starts_with(kind), "{reason:?}");
    }
    // Besides them, the run's own record: 3 deleted.
    let run: Vec<_> = got.iter().filter(|r| !r.contains_key("reason")).collect();
    assert_eq!(run.len(), 1, "{got:#?}");
    assert_eq!(run[0]["deleted"], "3", "{got:#?}");

    let m = metrics(&metrics_file);
    let count = |reason: &str| {
        m.get(&format!(
            "ood_k8s_bootstrap_reap_deletions_total{{reason=\"{reason}\"}}"
        ))
        .copied()
    };
    assert_eq!(count("idle"), Some(2.0), "{m:#?}");
    assert_eq!(count("departed"), Some(1.0), "{m:#?}");
}
