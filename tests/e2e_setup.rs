//! End-to-end: setting up and diagnosing a web node — `install`, `doctor`,
//! `root-token` — against the real cluster under test, as an admin would
//! run them (install with the admin's kubeconfig, the rest as root with the
//! `ondemand` ServiceAccount's).
//!
//! Runs against the local cluster (tests/cluster/up) and, through
//! tests/external-run, against any cluster given only an admin kubeconfig.
//! The tests that need the test IdP's real user tokens are in `mod idp`,
//! which external mode does not run.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::Instant;

use common::{cluster, linux_user, scratch, text};

/// Tests that remove cluster-wide prerequisites hold this for writing; all
/// others hold it for reading, so they never see a half-installed cluster.
static PREREQUISITES: RwLock<()> = RwLock::new(());

fn shared() -> RwLockReadGuard<'static, ()> {
    PREREQUISITES.read().unwrap_or_else(|e| e.into_inner())
}

fn exclusive() -> RwLockWriteGuard<'static, ()> {
    PREREQUISITES.write().unwrap_or_else(|e| e.into_inner())
}

/// The binary with a clean environment and `KUBECONFIG`.
fn bin(kubeconfig: &str, args: &[&str]) -> Command {
    let mut cmd = Command::new(common::bin());
    cmd.env_clear()
        .env("PATH", "/usr/local/bin:/usr/bin:/bin")
        .env("HOME", "/nonexistent")
        .env("KUBECONFIG", kubeconfig)
        .args(args)
        .stdin(Stdio::null());
    cmd
}

fn run(kubeconfig: &str, args: &[&str]) -> Output {
    bin(kubeconfig, args)
        .output()
        .expect("run ood-k8s-bootstrap")
}

fn admin_kubeconfig() -> &'static str {
    cluster().var("KUBECONFIG_ADMIN")
}

fn ondemand_kubeconfig() -> &'static str {
    cluster().var("KUBECONFIG_ONDEMAND")
}

fn install(extra: &[&str]) -> Output {
    let mut args = vec!["install", "--kubeconfig", admin_kubeconfig()];
    args.extend_from_slice(extra);
    run(admin_kubeconfig(), &args)
}

/// `kubeconfig` authenticates as the `ondemand` ServiceAccount.
fn assert_is_the_ondemand_account(kubeconfig: &str) {
    let who = cluster().kubectl_as(
        kubeconfig,
        &[
            "auth",
            "whoami",
            "-o",
            "jsonpath={.status.userInfo.username}",
        ],
    );
    assert_eq!(
        stdout(&who),
        "system:serviceaccount:ondemand:ondemand",
        "{}",
        text(&who)
    );
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A root-only hook.env for this cluster (with the IdP keys where the test
/// IdP exists), plus `extra` lines.
fn hook_env(dir: &Path, extra: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let c = cluster();
    let mut text = format!(
        "NETWORK_POLICY_ALLOW_CIDR=\"127.0.0.1/32\"\nNAMESPACE_PREFIX=\"{}\"\nK8S_CREDENTIALS=none\n",
        common::prefix("setup")
    );
    if !c.external() {
        text.push_str(&format!(
            "IDP_ISSUER_URL=\"{}\"\nIDP_CA_FILE=\"{}\"\nCLIENT_ID=\"{}\"\nCLIENT_SECRET=\"{}\"\n",
            c.var("OIDC_ISSUER"),
            c.var("OIDC_CA_FILE"),
            c.var("OIDC_CLIENT_ID"),
            c.var("OIDC_CLIENT_SECRET")
        ));
    }
    text.push_str(extra);
    let path = dir.join("hook.env");
    std::fs::write(&path, text).expect("write hook.env");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    path
}

/// `doctor` as root with `kubeconfig`; `envs` adds e.g. the user's token.
fn doctor(hook_env: &Path, kubeconfig: &str, extra: &[&str], envs: &[(&str, &str)]) -> Output {
    let mut cmd = bin(kubeconfig, &["doctor", "--hook-env"]);
    cmd.arg(hook_env).args(extra);
    for (k, v) in envs {
        cmd.env(k, v);
    }
    cmd.output().expect("run doctor")
}

/// The doctor lines of one status mark (`✓`, `⚠`, `✗`).
fn lines(out: &Output, mark: &str) -> Vec<String> {
    stdout(out)
        .lines()
        .filter(|l| l.starts_with(mark))
        .map(str::to_owned)
        .collect()
}

/// Asserts doctor failed with a line naming `cause` whose fix names `fix`.
fn assert_fails_with(out: &Output, cause: &str, fix: &str) {
    assert_eq!(
        out.status.code(),
        Some(1),
        "doctor should fail:\n{}",
        text(out)
    );
    let failed = lines(out, "✗");
    assert!(
        failed.iter().any(|l| l.contains(cause)
            && l.split_once(" — fix: ")
                .is_some_and(|(_, f)| f.contains(fix))),
        "no ✗ line with {cause:?} and fix {fix:?}:\n{}",
        text(out)
    );
}

fn wait_gone(args: &[&str]) {
    let deadline = Instant::now() + std::time::Duration::from_secs(90);
    while cluster().get_json(args).is_some() {
        assert!(
            Instant::now() < deadline,
            "{args:?} still exists after 90 s"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

/// Puts back what tests/cluster/up (or external) installed, and a working
/// `ondemand` token in the shared kubeconfig — also when a test fails.
struct Restore;

impl Drop for Restore {
    fn drop(&mut self) {
        let check = |what: &str, out: Output| {
            if out.status.success() {
                return;
            }
            // Already unwinding from a failed test: report, do not abort.
            if std::thread::panicking() {
                eprintln!("restoring {what} failed too:\n{}", text(&out));
            } else {
                panic!("restoring {what}:\n{}", text(&out));
            }
        };
        check("the prerequisites", install(&["--job-pod-reaper"]));
        // A re-created ServiceAccount invalidates the old token; its claims
        // still say whose it was, which is all `--using` needs.
        check(
            "the ondemand token",
            run(
                ondemand_kubeconfig(),
                &[
                    "root-token",
                    "--kubeconfig",
                    ondemand_kubeconfig(),
                    "--using",
                    admin_kubeconfig(),
                    "--duration",
                    "24h",
                ],
            ),
        );
    }
}

// ---- install -----------------------------------------------------------

#[test]
fn install_creates_missing_prerequisites_then_changes_nothing_and_the_hook_works() {
    let _lock = exclusive();
    let c = cluster();
    let _restore = Restore;
    for obj in [
        "clusterrolebinding/ondemand",
        "clusterrole/ondemand",
        "clusterrole/ood-user",
        "clusterrole/ood-initializer",
    ] {
        c.admin(&["delete", obj, "--ignore-not-found"]);
    }
    c.admin(&[
        "delete",
        "namespace",
        "ondemand",
        "--ignore-not-found",
        "--timeout=90s",
    ]);
    wait_gone(&["namespace", "ondemand"]);

    let out = install(&["--dry-run"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        stdout(&out).matches("would create").count(),
        6,
        "{}",
        text(&out)
    );
    assert!(
        c.get_json(&["namespace", "ondemand"]).is_none(),
        "a dry run created the namespace"
    );

    let started = Instant::now();
    let out = install(&[]);
    let first = started.elapsed();
    assert!(out.status.success(), "{}", text(&out));
    for obj in [
        "Namespace/ondemand",
        "ServiceAccount/ondemand",
        "ClusterRole/ondemand",
        "ClusterRoleBinding/ondemand",
        "ClusterRole/ood-initializer",
        "ClusterRole/ood-user",
    ] {
        assert!(
            stdout(&out).contains(&format!("created      {obj}\n")),
            "{obj}:\n{}",
            text(&out)
        );
    }
    assert!(c.get_json(&["clusterrole", "ood-user"]).is_some());
    assert!(
        c.get_json(&["-n", "ondemand", "serviceaccount", "ondemand"])
            .is_some()
    );

    let out = install(&[]);
    assert!(out.status.success(), "{}", text(&out));
    // The base's six and the login-storm FlowSchema and priority level.
    assert_eq!(
        stdout(&out).matches("unchanged").count(),
        8,
        "second run:\n{}",
        text(&out)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("0 created, 0 changed, 8 unchanged"));
    eprintln!("install: first run {} ms", first.as_millis());

    // The hook, as root with a token minted for the installed account.
    let dir = scratch("install-hook");
    let token = common::service_account_token("ondemand");
    let kc = dir.join("ondemand.kubeconfig");
    c.token_kubeconfig(&kc, "ondemand", &token);
    linux_user("dave");
    let env = hook_env(&dir, "");
    let out = bin(kc.to_str().unwrap(), &["--user", "dave", "--hook-env"])
        .arg(&env)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "the hook with the new account:\n{}",
        text(&out)
    );
    let ns = format!("{}dave", common::prefix("setup"));
    let can = c.kubectl_user("dave", &["auth", "can-i", "create", "pods", "-n", &ns]);
    assert_eq!(stdout(&can).trim(), "yes", "{}", text(&can));
}

#[test]
fn install_print_needs_no_cluster_and_shows_the_optional_parts() {
    let out = Command::new(common::bin())
        .env_clear()
        .args(["install", "--print", "--job-pod-reaper", "--self-renew"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let yaml = stdout(&out);
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    for file in ["ondemand.yaml", "job-pod-reaper.yaml", "self-renew.yaml"] {
        let text = std::fs::read_to_string(repo.join("hooks").join(file)).unwrap();
        assert!(yaml.contains(&text), "{file} is not printed verbatim");
    }
    let base = Command::new(common::bin())
        .env_clear()
        .args(["install", "--print"])
        .output()
        .unwrap();
    assert!(base.status.success(), "{}", text(&base));
    let ondemand = std::fs::read_to_string(repo.join("hooks/ondemand.yaml")).unwrap();
    assert!(stdout(&base).contains(&ondemand), "{}", text(&base));
    assert!(
        !stdout(&base).contains("ondemand-self-renew"),
        "--self-renew is opt-in"
    );
}

#[test]
fn install_dry_runs_the_pruning_grant_and_the_uid_gid_policy() {
    let _lock = shared();
    let out = install(&["--prune", "--uid-gid-policy", "--dry-run"]);
    assert!(out.status.success(), "{}", text(&out));
    for obj in [
        "ClusterRole/ondemand-prune",
        "ClusterRoleBinding/ondemand-prune",
        "ValidatingAdmissionPolicy/ood-uid-gid",
        "ValidatingAdmissionPolicyBinding/ood-uid-gid",
    ] {
        assert!(
            stdout(&out).contains(&format!(" {obj}\n")),
            "{obj}:\n{}",
            text(&out)
        );
    }
}

#[test]
fn install_refuses_the_ondemand_account_naming_what_it_needs() {
    let _lock = shared();
    let out = run(ondemand_kubeconfig(), &["install"]);
    assert_eq!(out.status.code(), Some(77), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("install needs a cluster admin's kubeconfig"),
        "{err}"
    );
    assert_eq!(
        err.lines().count(),
        2,
        "one progress line and one error line:\n{err}"
    );
}

// ---- doctor ------------------------------------------------------------

#[test]
fn doctor_passes_on_the_healthy_setup() {
    let _lock = shared();
    let dir = scratch("doctor-healthy");
    let env = hook_env(&dir, "USE_JOB_POD_REAPER=true\n");
    let started = Instant::now();
    let out = doctor(&env, ondemand_kubeconfig(), &[], &[]);
    eprintln!("doctor: {} ms", started.elapsed().as_millis());
    assert!(out.status.success(), "{}", text(&out));
    assert!(lines(&out, "✗").is_empty(), "{}", text(&out));
    let ok = lines(&out, "✓").join("\n");
    for want in [
        "✓ hook.env:",
        "✓ root's kubeconfig:",
        "✓ API server:",
        "✓ permissions: all",
        "✓ ClusterRole ood-user: exists and root may bind it",
        "✓ ClusterRole ood-initializer:",
        "✓ ClusterRole job-pod-reaper:",
        "✓ job-pod-reaper: ServiceAccount job-pod-reaper/job-pod-reaper exists",
        "✓ login storms: the ondemand account's requests are classified by FlowSchema ondemand",
    ] {
        assert!(ok.contains(want), "no {want:?}:\n{}", text(&out));
    }
    // The issuer is checked where hook.env names one: here only locally
    // (idp::doctor_checks_the_test_idps_issuer, which tests/external-run
    // lists as not run); against an existing cluster there is no test IdP,
    // hook.env names none, and doctor says nothing about an issuer.
    if cluster().external() {
        assert!(
            !stdout(&out).lines().any(|l| l.contains(" issuer: ")),
            "an issuer line with no IDP_ISSUER_URL:\n{}",
            text(&out)
        );
    }
    // The renewal is reported: by systemd's timer, or when it is due.
    if let Some(p) = common::renewal_line_problem(&stdout(&out)) {
        panic!("{p}\n{}", text(&out));
    }
    // Whose token, and when it expires.
    assert!(
        stdout(&out).contains("root's token: ServiceAccount ondemand/ondemand, expires in "),
        "{}",
        text(&out)
    );

    let json = doctor(&env, ondemand_kubeconfig(), &["--output", "json"], &[]);
    assert!(json.status.success(), "{}", text(&json));
    let v: serde_json::Value = serde_json::from_slice(&json.stdout).expect("one JSON object");
    assert_eq!(v["ok"], true);
    assert!(v["checks"].as_array().unwrap().len() >= 8);
}

#[test]
fn doctor_fails_on_an_expired_root_token() {
    let _lock = shared();
    let dir = scratch("doctor-expired");
    let env = hook_env(&dir, "");
    // A ServiceAccount token that expired an hour ago (the API server
    // rejects it too: it is not signed by it).
    let b64 = |s: &str| {
        use std::io::Write;
        let mut child = Command::new("base64")
            .arg("-w0")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(s.as_bytes()).unwrap();
        let out = child.wait_with_output().unwrap();
        String::from_utf8(out.stdout)
            .unwrap()
            .trim_end_matches('=')
            .replace('+', "-")
            .replace('/', "_")
    };
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        - 3600;
    let token = format!(
        "{}.{}.c2ln",
        b64(r#"{"alg":"RS256"}"#),
        b64(&format!(
            r#"{{"sub":"system:serviceaccount:ondemand:ondemand","exp":{exp}}}"#
        ))
    );
    let kc = kubeconfig_with_token(&dir, &token);
    let out = doctor(&env, kc.to_str().unwrap(), &[], &[]);
    assert_fails_with(
        &out,
        "token expired 1h 0m ago",
        "root-token --using ADMIN_KUBECONFIG",
    );
    assert_eq!(lines(&out, "✗").len(), 1, "{}", text(&out));
}

/// A root-only kubeconfig for this cluster with another token.
fn kubeconfig_with_token(dir: &Path, token: &str) -> PathBuf {
    let kc = dir.join("root.kubeconfig");
    cluster().token_kubeconfig(&kc, "root", token);
    kc
}

#[test]
fn doctor_fails_on_a_revoked_root_token() {
    let _lock = shared();
    let c = cluster();
    let dir = scratch("doctor-revoked");
    let env = hook_env(&dir, "");
    // A token of a ServiceAccount that is then deleted: revoked.
    let ns = format!("{}revoked", common::prefix("setup"));
    c.admin(&["create", "namespace", &ns]);
    c.admin(&["-n", &ns, "create", "serviceaccount", "gone"]);
    let token = c.admin(&["-n", &ns, "create", "token", "gone", "--duration", "1h"]);
    c.admin(&["-n", &ns, "delete", "serviceaccount", "gone"]);
    let kc = kubeconfig_with_token(&dir, token.trim());
    let out = doctor(&env, kc.to_str().unwrap(), &[], &[]);
    assert_fails_with(
        &out,
        &format!("the API server rejects ServiceAccount {ns}/gone's token"),
        "root-token --using ADMIN_KUBECONFIG",
    );
    assert_eq!(lines(&out, "✗").len(), 1, "{}", text(&out));
    c.admin(&["delete", "namespace", &ns, "--wait=false"]);
}

#[test]
fn doctor_fails_when_cluster_role_ood_user_is_missing_and_install_fixes_it() {
    let _lock = exclusive();
    let _restore = Restore;
    let c = cluster();
    let dir = scratch("doctor-no-ood-user");
    let env = hook_env(&dir, "");
    c.admin(&["delete", "clusterrole", "ood-user"]);
    let out = doctor(&env, ondemand_kubeconfig(), &[], &[]);
    assert_fails_with(
        &out,
        "ClusterRole ood-user: does not exist",
        "ood-k8s-bootstrap install",
    );
    assert_eq!(lines(&out, "✗").len(), 1, "{}", text(&out));

    let fixed = install(&[]);
    assert!(fixed.status.success(), "{}", text(&fixed));
    assert!(stdout(&fixed).contains("created      ClusterRole/ood-user"));
    let out = doctor(&env, ondemand_kubeconfig(), &[], &[]);
    assert!(out.status.success(), "after install:\n{}", text(&out));
}

/// Without the login-storm FlowSchema logins work, but share the API
/// server with every other workload: a warning naming the fix, which
/// works.
#[test]
fn doctor_warns_without_the_login_storm_flow_schema_and_install_restores_it() {
    let _lock = exclusive();
    let _restore = Restore;
    let c = cluster();
    let dir = scratch("doctor-no-apf");
    let env = hook_env(&dir, "");
    c.admin(&["delete", "flowschema", "ondemand"]);
    let out = doctor(&env, ondemand_kubeconfig(), &[], &[]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        lines(&out, "⚠").iter().any(|l| l
            .contains("login storms: there is no FlowSchema ondemand")
            && l.contains("ood-k8s-bootstrap install")),
        "{}",
        text(&out)
    );
    let fixed = install(&[]);
    assert!(fixed.status.success(), "{}", text(&fixed));
    assert!(
        stdout(&fixed).contains("created      FlowSchema/ondemand"),
        "{}",
        text(&fixed)
    );
    assert!(
        stdout(&fixed).contains("unchanged    PriorityLevelConfiguration/ondemand"),
        "{}",
        text(&fixed)
    );
    let out = doctor(&env, ondemand_kubeconfig(), &[], &[]);
    assert!(
        lines(&out, "✓")
            .iter()
            .any(|l| l.contains("login storms: the ondemand account's requests are classified")),
        "after install:\n{}",
        text(&out)
    );
}

/// Logins work without the reaper (a RoleBinding may name a missing
/// ServiceAccount); only pods are not reaped: a warning, exit 0.
#[test]
fn doctor_warns_when_the_reapers_service_account_is_missing() {
    let _lock = shared();
    let dir = scratch("doctor-reaper");
    let env = hook_env(
        &dir,
        "USE_JOB_POD_REAPER=true\nJOB_POD_REAPER_SERVICE_ACCOUNT=no-such-reaper\n",
    );
    let out = doctor(&env, ondemand_kubeconfig(), &[], &[]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(lines(&out, "✗").is_empty(), "{}", text(&out));
    assert!(
        lines(&out, "⚠").iter().any(|l| l
            .contains("ServiceAccount job-pod-reaper/no-such-reaper does not exist")
            && l.contains("JOB_POD_REAPER_SERVICE_ACCOUNT")),
        "{}",
        text(&out)
    );
}

#[test]
fn doctor_fails_when_hook_env_and_the_dashboards_prefixes_differ() {
    let _lock = shared();
    let dir = scratch("doctor-dashboard");
    let env = hook_env(&dir, "");
    let clusters_d = dir.join("clusters.d");
    std::fs::create_dir(&clusters_d).unwrap();
    std::fs::write(
        clusters_d.join("slurm.yml"),
        "v2:\n  job:\n    adapter: slurm\n",
    )
    .unwrap();
    let k8s = clusters_d.join("kubernetes.yml");
    let yaml = |ns_prefix: &str| {
        format!(
            "---\nv2:\n  metadata:\n    title: Kubernetes\n  job:\n    adapter: \"kubernetes\"\n    cluster: \"open-ondemand\"\n    \
             username_prefix: \"\"\n    namespace_prefix: \"{ns_prefix}\"\n    auth:\n      type: \"oidc\"\n"
        )
    };
    std::fs::write(&k8s, yaml("user-")).unwrap();
    let args = ["--clusters-d", clusters_d.to_str().unwrap()];
    let out = doctor(&env, ondemand_kubeconfig(), &args, &[]);
    assert_fails_with(
        &out,
        &format!(
            "namespace_prefix is \"user-\" but hook.env's NAMESPACE_PREFIX is \"{}\"",
            common::prefix("setup")
        ),
        "NAMESPACE_PREFIX in hook.env or namespace_prefix in",
    );

    std::fs::write(&k8s, yaml(&common::prefix("setup"))).unwrap();
    let out = doctor(&env, ondemand_kubeconfig(), &args, &[]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        stdout(&out).contains("agree with hook.env"),
        "{}",
        text(&out)
    );
}

// ---- install's opt-in parts, applied and used ---------------------------

/// Removes what `install --prune --uid-gid-policy` added when dropped, so the
/// tests after this one (and the rest of the suite) run without it.
struct Uninstall;

impl Drop for Uninstall {
    fn drop(&mut self) {
        let c = cluster();
        for (kind, name) in [
            ("validatingadmissionpolicybinding", "ood-uid-gid"),
            ("validatingadmissionpolicy", "ood-uid-gid"),
            ("clusterrolebinding", "ondemand-prune"),
            ("clusterrole", "ondemand-prune"),
            ("clusterrolebinding", "ondemand-reap"),
        ] {
            let _ = c.kubectl_as(
                admin_kubeconfig(),
                &["delete", kind, name, "--ignore-not-found"],
            );
        }
        let _ = c.kubectl_as(
            admin_kubeconfig(),
            &[
                "-n",
                "ondemand",
                "delete",
                "configmap",
                "ood-pod-policy",
                "--ignore-not-found",
            ],
        );
    }
}

/// `install --prune --uid-gid-policy`, for real, then used as a site would:
/// a PRUNE=true run, as the `ondemand` account, deletes the binding that was
/// switched off; the admission policy refuses a pod as root in the user's
/// namespace and admits one with the user's own ids.
#[test]
fn install_prune_and_uid_gid_policy_are_applied_and_used() {
    let _lock = exclusive();
    let c = cluster();
    let _uninstall = Uninstall;
    let out = install(&["--prune", "--uid-gid-policy", "--reap"]);
    assert!(out.status.success(), "{}", text(&out));
    // A user of its own: hook_env's namespace prefix is shared by the file.
    let user = "inst-used";
    let (uid, gid, _) = linux_user(user);
    let dir = scratch("install-used");
    let ns = format!("{}{user}", common::prefix("setup"));
    let env = |extra: &str| hook_env(&dir, &format!("PUBLISH_UID_GID=true\n{extra}"));
    let hook = |env: &Path| {
        let out = run(
            ondemand_kubeconfig(),
            &["--user", user, "--hook-env", env.to_str().unwrap()],
        );
        assert!(out.status.success(), "{}", text(&out));
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    hook(&env("USE_JOB_POD_REAPER=true\n"));
    let reaper = format!("{user}-job-pod-reaper-rolebinding");
    assert!(c.get_json(&["rolebinding", "-n", &ns, &reaper]).is_some());
    let said = hook(&env("USE_JOB_POD_REAPER=false\nPRUNE=true\n"));
    assert!(said.contains(", 1 deleted"), "{said}");
    assert!(c.get_json(&["rolebinding", "-n", &ns, &reaper]).is_none());

    let create = |name: &str, sc: &str| {
        common::pipe(
            Command::new(c.var("KUBECTL")).args([
                "--kubeconfig",
                admin_kubeconfig(),
                "-n",
                &ns,
                "create",
                "-f",
                "-",
            ]),
            format!(
                "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  annotations: {{pod.kubernetes.io/lifetime: 01h00m00s}}\n\
                 spec:\n  securityContext: {sc}\n  containers:\n  - name: c\n    image: registry.example/none\n"
            )
            .as_bytes(),
        )
    };
    // The policy is in force once the API server's policy cache has it.
    common::until_uid_gid_policy_refuses(&ns, |name| create(name, "{runAsUser: 0}"));
    let out = create(
        "own-ids",
        &format!("{{runAsUser: {uid}, runAsGroup: {gid}, runAsNonRoot: true}}"),
    );
    assert!(out.status.success(), "{}", text(&out));

    // The policy's maximum is the site's: a later install keeps it.
    c.admin(&[
        "-n",
        "ondemand",
        "patch",
        "configmap",
        "ood-pod-policy",
        "--type=merge",
        "-p",
        r#"{"data":{"maxLifetime":"48h"}}"#,
    ]);
    let again = install(&["--uid-gid-policy"]);
    assert!(again.status.success(), "{}", text(&again));
    assert!(
        String::from_utf8_lossy(&again.stdout)
            .lines()
            .any(|l| l.starts_with("unchanged") && l.ends_with("ConfigMap/ood-pod-policy")),
        "{}",
        text(&again)
    );
    let kept = c.get_json(&["configmap", "-n", "ondemand", "ood-pod-policy"]);
    assert_eq!(kept.unwrap()["data"]["maxLifetime"], "48h");

    // --reap: root's own account may now reap, as the daily timer runs it
    // (a dry run: other tests' namespaces are not this test's to delete).
    let out = run(
        ondemand_kubeconfig(),
        &["reap", "--dry-run", "--hook-env", env("").to_str().unwrap()],
    );
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("reap: dry run: would be 0 deleted"),
        "{}",
        text(&out)
    );
}

// ---- root-token --------------------------------------------------------

#[test]
fn root_token_replaces_the_token_and_nothing_else() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let _lock = shared();
    let c = cluster();
    let granted = install(&["--self-renew"]);
    assert!(granted.status.success(), "{}", text(&granted));
    let dir = scratch("root-token");
    let token = common::service_account_token("ondemand");
    let token = token.as_str();
    // Root's kubeconfig as a site has it: comments, other entries, quoting.
    let original = format!(
        "# root's kubeconfig on the web node\napiVersion: v1\nkind: Config\nclusters:\n- name: kubernetes\n  cluster:\n    \
         server: {}\n    certificate-authority: {}\n- name: elsewhere\n  cluster: {{server: 'https://elsewhere.example:6443'}}\n\
         contexts:\n- name: ondemand@kubernetes\n  context:\n    cluster: kubernetes\n    user: ondemand@kubernetes\n\
         - name: other\n  context: {{cluster: elsewhere, user: other}}\ncurrent-context: ondemand@kubernetes\n\
         users:\n- name: other\n  user:\n    token: \"not-a-jwt-but-kept\"   # another credential\n\
         - name: ondemand@kubernetes\n  user:\n    token: {token}\npreferences: {{}}\n",
        c.var("K8S_SERVER"),
        c.var("K8S_CA_FILE")
    );
    let kc = dir.join("config");
    std::fs::write(&kc, &original).unwrap();
    std::fs::set_permissions(&kc, std::fs::Permissions::from_mode(0o600)).unwrap();
    let kc_s = kc.to_str().unwrap();

    let started = Instant::now();
    let out = run(kc_s, &["root-token"]);
    eprintln!("root-token: {} ms", started.elapsed().as_millis());
    assert!(out.status.success(), "{}", text(&out));
    let after = std::fs::read_to_string(&kc).unwrap();
    let line = after
        .lines()
        .find(|l| l.starts_with("    token: ") && !l.contains("kept"))
        .expect("the token line");
    let new = line.trim_start_matches("    token: ");
    assert_ne!(new, token, "the token was not replaced");
    assert_eq!(
        after,
        original.replace(token, new),
        "something besides the token changed"
    );
    let meta = std::fs::metadata(&kc).unwrap();
    assert_eq!(meta.mode() & 0o7777, 0o600);
    assert_eq!(meta.uid(), 0);
    assert!(
        !String::from_utf8_lossy(&out.stderr).contains(new),
        "the token was printed"
    );
    // The new token works, as the same account, for the next 48 h.
    assert_is_the_ondemand_account(kc_s);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("(in 47h 59m)") || err.contains("(in 48h 0m)"),
        "{}",
        text(&out)
    );
    // Nothing left beside it.
    let names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, ["config"], "leftovers: {names:?}");
}

#[test]
fn root_token_gives_a_new_kubeconfig_its_first_token_then_renews_it() {
    use std::os::unix::fs::MetadataExt;
    let _lock = shared();
    let c = cluster();
    let granted = install(&["--self-renew"]);
    assert!(granted.status.success(), "{}", text(&granted));
    let dir = scratch("root-token-first");
    let kc = dir.join("config");
    let kc_s = kc.to_str().unwrap();
    // What an admin types on a new web node (README: Installing).
    for args in [
        vec![
            "config",
            "set-cluster",
            "kubernetes",
            "--server",
            c.var("K8S_SERVER"),
            "--certificate-authority",
            c.var("K8S_CA_FILE"),
        ],
        vec![
            "config",
            "set-context",
            "ondemand@kubernetes",
            "--cluster",
            "kubernetes",
            "--user",
            "ondemand@kubernetes",
        ],
        vec!["config", "use-context", "ondemand@kubernetes"],
    ] {
        let out = c.kubectl_as(kc_s, &args);
        assert!(out.status.success(), "{}", text(&out));
    }
    let no_account = run(kc_s, &["root-token", "--using", admin_kubeconfig()]);
    assert_eq!(no_account.status.code(), Some(78), "{}", text(&no_account));
    assert!(
        String::from_utf8_lossy(&no_account.stderr).contains("\"ondemand@kubernetes\" (of context")
    );

    let out = run(
        kc_s,
        &[
            "root-token",
            "--using",
            admin_kubeconfig(),
            "--service-account",
            "ondemand/ondemand",
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("writing the first"),
        "{}",
        text(&out)
    );
    assert_is_the_ondemand_account(kc_s);
    assert_eq!(std::fs::metadata(&kc).unwrap().mode() & 0o7777, 0o600);

    // From now on the timer's plain `root-token` renews it by itself.
    let first = std::fs::read_to_string(&kc).unwrap();
    let out = run(kc_s, &["root-token"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("renewing"),
        "{}",
        text(&out)
    );
    assert_ne!(std::fs::read_to_string(&kc).unwrap(), first);
}

#[test]
fn root_token_refuses_a_symlinked_kubeconfig() {
    let _lock = shared();
    let dir = scratch("root-token-symlink");
    let token = common::service_account_token("ondemand");
    let real = kubeconfig_with_token(&dir, &token);
    let before = std::fs::read_to_string(&real).unwrap();
    let link = dir.join("config");
    std::os::unix::fs::symlink(&real, &link).unwrap();
    let out = run(
        link.to_str().unwrap(),
        &["root-token", "--using", admin_kubeconfig()],
    );
    assert_eq!(out.status.code(), Some(77), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("symbolic link"),
        "{}",
        text(&out)
    );
    assert_eq!(std::fs::read_to_string(&real).unwrap(), before);
}

/// Tests that need real user tokens from the local test IdP (Dex); not
/// run against an existing cluster (tests/external-run says so).
mod idp {
    use super::*;

    /// The healthy setup's issuer check, with the test IdP's issuer in
    /// hook.env (doctor_passes_on_the_healthy_setup runs in external mode
    /// too, where there is none).
    #[test]
    fn doctor_checks_the_test_idps_issuer() {
        let _lock = shared();
        let dir = scratch("doctor-issuer-ok");
        let env = hook_env(&dir, "");
        let out = doctor(&env, ondemand_kubeconfig(), &[], &[]);
        assert!(out.status.success(), "{}", text(&out));
        let want = format!(
            "✓ issuer: OIDC discovery at {} works",
            cluster().var("OIDC_ISSUER")
        );
        assert!(
            lines(&out, "✓").iter().any(|l| l.starts_with(&want)),
            "no {want:?}:\n{}",
            text(&out)
        );
    }

    #[test]
    fn doctor_fails_when_issuer_url_is_the_token_endpoint() {
        let _lock = shared();
        let c = cluster();
        let dir = scratch("doctor-issuer");
        let issuer = c.var("OIDC_ISSUER");
        let env = hook_env(&dir, &format!("IDP_ISSUER_URL=\"{issuer}/token\"\n"));
        let out = doctor(&env, ondemand_kubeconfig(), &[], &[]);
        assert_fails_with(
            &out,
            &format!("IDP_ISSUER_URL={issuer}/token is the token endpoint of issuer {issuer}"),
            &format!("set IDP_ISSUER_URL=\"{issuer}\" in hook.env"),
        );
        assert_eq!(lines(&out, "✗").len(), 1, "{}", text(&out));
    }

    #[test]
    fn doctor_tries_the_configured_token_exchange() {
        let _lock = shared();
        let c = cluster();
        let dir = scratch("doctor-exchange");
        // Dex offers the grant, but its password connector cannot exchange.
        let env = hook_env(&dir, "K8S_TOKEN_EXCHANGE_AUDIENCE=\"kubernetes\"\n");
        let tokens = c.login("bob");
        let out = doctor(
            &env,
            ondemand_kubeconfig(),
            &["--user", "bob"],
            &[("OOD_OIDC_ACCESS_TOKEN", tokens.access.as_str())],
        );
        assert!(
            lines(&out, "✓")
                .iter()
                .any(|l| l.starts_with("✓ token exchange: the IdP offers")),
            "{}",
            text(&out)
        );
        assert_fails_with(
            &out,
            &format!(
                "user bob: the IdP {} refused to exchange the token for audience kubernetes",
                c.var("OIDC_ISSUER")
            ),
            "",
        );
    }

    #[test]
    fn doctor_with_keycloak_exchanges_the_portal_token_as_the_hook_would() {
        let _lock = shared();
        let c = cluster();
        let dir = scratch("doctor-keycloak");
        // A site's hook.env for Keycloak, with the shipped example's
        // mistake: the token endpoint as the issuer (the hook corrects it).
        let env = hook_env(
            &dir,
            &format!(
                "IDP_ISSUER_URL=\"{}\"\nIDP_CA_FILE=\"{}\"\nCLIENT_ID=\"{}\"\nCLIENT_SECRET=\"{}\"\n\
                 K8S_TOKEN_EXCHANGE_AUDIENCE=\"{}\"\nK8S_TOKEN_EXCHANGE_SCOPE=\"{}\"\n",
                c.var("KEYCLOAK_TOKEN_ENDPOINT"),
                c.var("KEYCLOAK_CA_FILE"),
                c.var("KEYCLOAK_PORTAL_CLIENT_ID"),
                c.var("KEYCLOAK_PORTAL_CLIENT_SECRET"),
                c.var("KEYCLOAK_K8S_AUDIENCE"),
                c.var("KEYCLOAK_K8S_AUDIENCE_SCOPE"),
            ),
        );
        linux_user("alice");
        let tokens = c.keycloak_login("alice");
        let out = doctor(
            &env,
            ondemand_kubeconfig(),
            &["--user", "alice"],
            &[("OOD_OIDC_ACCESS_TOKEN", tokens.access.as_str())],
        );
        assert!(out.status.success(), "{}", text(&out));
        let all = stdout(&out);
        for want in [
            "⚠ issuer: IDP_ISSUER_URL=",
            "✓ token exchange: the IdP offers the token-exchange grant",
            "✓ user alice: the IdP exchanged the token",
            "✓ user alice: the API server sees \"alice\"",
        ] {
            assert!(all.contains(want), "no {want:?}:\n{}", text(&out));
        }
        assert!(
            all.contains(&format!(
                "set IDP_ISSUER_URL=\"{}\"",
                c.var("KEYCLOAK_ISSUER")
            )),
            "{all}"
        );
        assert!(
            !all.contains(&tokens.access)
                && !String::from_utf8_lossy(&out.stderr).contains(&tokens.access)
        );
    }

    #[test]
    fn doctor_fails_when_the_api_servers_username_differs_from_the_binding() {
        let _lock = shared();
        let c = cluster();
        let dir = scratch("doctor-username");
        linux_user("carol.smith");
        let tokens = c.login("carol.smith");
        let envs = [("OOD_OIDC_ACCESS_TOKEN", tokens.access.as_str())];
        let wrong = hook_env(&dir, "OIDC_USERNAME_PREFIX=\"oidc-\"\n");
        let out = doctor(
            &wrong,
            ondemand_kubeconfig(),
            &["--user", "carol.smith"],
            &envs,
        );
        assert_fails_with(
            &out,
            "the API server sees \"carol.smith\" but the RoleBinding carol.smith-ood-user would name \"oidc-carol.smith\"",
            "set OIDC_USERNAME_PREFIX=\"\" in hook.env",
        );
        assert!(
            !stdout(&out).contains(&tokens.access)
                && !String::from_utf8_lossy(&out.stderr).contains(&tokens.access)
        );

        let right = hook_env(&dir, "");
        let token_file = dir.join("token");
        std::fs::write(&token_file, &tokens.access).unwrap();
        let out = doctor(
            &right,
            ondemand_kubeconfig(),
            &[
                "--user",
                "carol.smith",
                "--token-file",
                token_file.to_str().unwrap(),
            ],
            &[],
        );
        assert!(out.status.success(), "{}", text(&out));
        assert!(
            stdout(&out).contains("✓ user carol.smith: the API server sees \"carol.smith\""),
            "{}",
            text(&out)
        );
    }
}

/// The timer's service as shipped: its ExecStart= (only the binary's path
/// is the test's) with its Environment= and UMask=, only KUBECONFIG pointed
/// at a scratch copy of root's kubeconfig. It renews the token for the
/// duration it names, which outlasts the timer's interval twice over, and
/// the file stays root's and private.
#[test]
fn the_shipped_root_token_service_renews_as_shipped() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let _lock = shared();
    let c = cluster();
    let granted = install(&["--self-renew"]);
    assert!(granted.status.success(), "{}", text(&granted));
    let service = "ood-k8s-bootstrap-root-token.service";
    let exec = common::unit_values(service, "ExecStart");
    assert_eq!(exec.len(), 1, "{exec:?}");
    let argv: Vec<&str> = exec[0].split_whitespace().collect();
    assert_eq!(argv[0], "/usr/bin/ood-k8s-bootstrap", "{exec:?}");
    let hours: u64 = argv
        .windows(2)
        .find(|w| w[0] == "--duration")
        .and_then(|w| w[1].strip_suffix('h'))
        .and_then(|h| h.parse().ok())
        .unwrap_or_else(|| panic!("no --duration in hours: {exec:?}"));
    // The timer fires at least twice within the token's lifetime.
    let calendar = common::unit_values("ood-k8s-bootstrap-root-token.timer", "OnCalendar");
    let every: u64 = calendar[0]
        .rsplit_once('/')
        .and_then(|(_, h)| h.split(':').next())
        .and_then(|h| h.parse().ok())
        .unwrap_or_else(|| panic!("OnCalendar: {calendar:?}"));
    assert!(2 * every < hours, "every {every} h, token {hours} h");
    let env = common::unit_values(service, "Environment");
    assert_eq!(env, ["KUBECONFIG=/root/.kube/config"], "{env:?}");
    let umask = &common::unit_values(service, "UMask")[0];

    let dir = scratch("root-token-unit");
    let kc = dir.join("config");
    let token = common::service_account_token("ondemand");
    // Root's kubeconfig as the ondemand account has it, with a token of
    // an hour: the one to renew.
    let copied = std::fs::read_to_string(ondemand_kubeconfig()).unwrap();
    let old = stdout(&c.kubectl_as(
        ondemand_kubeconfig(),
        &[
            "config",
            "view",
            "--raw",
            "--minify",
            "-o",
            "jsonpath={.users[0].user.token}",
        ],
    ));
    assert!(!old.is_empty() && copied.contains(&old), "{copied}");
    std::fs::write(&kc, copied.replace(&old, &token)).unwrap();
    std::fs::set_permissions(&kc, PermissionsExt::from_mode(0o600)).unwrap();

    let out = Command::new("sh")
        .args(["-c", &format!("umask {umask} && exec \"$0\" \"$@\"")])
        .arg(common::bin())
        .args(&argv[1..])
        .env_clear()
        .env("PATH", "/usr/local/bin:/usr/bin:/bin")
        .env("KUBECONFIG", &kc)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    let left = [
        format!("(in {}h 0m)", hours),
        format!("(in {}h 59m)", hours - 1),
    ];
    assert!(left.iter().any(|l| err.contains(l)), "{}", text(&out));
    let after = std::fs::read_to_string(&kc).unwrap();
    assert!(
        !after.contains(token.as_str()),
        "the token was not replaced"
    );
    let meta = std::fs::metadata(&kc).unwrap();
    assert_eq!((meta.uid(), meta.mode() & 0o7777), (0, 0o600));
    assert_is_the_ondemand_account(kc.to_str().unwrap());
}

/// Issue 17's ROOT_KUBECONFIG and ROOT_CONTEXT, in one cluster: root's
/// credentials named in hook.env, in a file of two contexts whose current
/// one points at nothing. The hook, doctor and root-token all use the named
/// context (KUBECONFIG pointing nowhere); without ROOT_CONTEXT the hook
/// goes to the current context and fails.
#[test]
fn root_kubeconfig_and_context_come_from_hook_env() {
    use std::os::unix::fs::PermissionsExt;
    let _lock = shared();
    let c = cluster();
    let granted = install(&["--self-renew"]);
    assert!(granted.status.success(), "{}", text(&granted));
    let dir = scratch("root-context");
    let token = common::service_account_token("ondemand");
    let token = token.as_str();
    let kc = dir.join("root.kubeconfig");
    std::fs::write(
        &kc,
        format!(
            "apiVersion: v1\nkind: Config\ncurrent-context: elsewhere\nclusters:\n\
             - name: real\n  cluster: {{server: \"{}\", certificate-authority: \"{}\"}}\n\
             - name: nowhere\n  cluster: {{server: \"https://127.0.0.1:1\"}}\n\
             contexts:\n- name: elsewhere\n  context: {{cluster: nowhere, user: other}}\n\
             - name: ood\n  context: {{cluster: real, user: ondemand}}\n\
             users:\n- name: other\n  user: {{token: \"not-a-jwt-but-kept\"}}\n\
             - name: ondemand\n  user: {{token: \"{token}\"}}\n",
            c.var("K8S_SERVER"),
            c.var("K8S_CA_FILE")
        ),
    )
    .unwrap();
    std::fs::set_permissions(&kc, std::fs::Permissions::from_mode(0o600)).unwrap();
    let nowhere = "/nonexistent/kubeconfig";
    let user = "inst-used";
    linux_user(user);
    let with_context = hook_env(
        &dir,
        &format!("ROOT_KUBECONFIG=\"{}\"\nROOT_CONTEXT=ood\n", kc.display()),
    );
    let env = with_context.to_str().unwrap();
    let out = run(
        nowhere,
        &["--user", user, "--hook-env", env, "--cluster-only"],
    );
    assert!(out.status.success(), "{}", text(&out));

    let out = run(nowhere, &["doctor", "--hook-env", env]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        stdout(&out).contains("root's token: ServiceAccount ondemand/ondemand"),
        "{}",
        text(&out)
    );

    let out = run(nowhere, &["root-token", "--hook-env", env]);
    assert!(out.status.success(), "{}", text(&out));
    let after = std::fs::read_to_string(&kc).unwrap();
    assert!(
        !after.contains(token),
        "the token was not renewed:\n{after}"
    );
    assert!(after.contains("not-a-jwt-but-kept"), "{after}");

    // Without ROOT_CONTEXT: the file's current context, which leads nowhere.
    let dir2 = scratch("root-context-current");
    let without = hook_env(
        &dir2,
        &format!(
            "ROOT_KUBECONFIG=\"{}\"\nHOOK_TIMEOUT_SECONDS=2\n",
            kc.display()
        ),
    );
    let out = run(
        nowhere,
        &[
            "--user",
            user,
            "--hook-env",
            without.to_str().unwrap(),
            "--cluster-only",
        ],
    );
    assert_eq!(out.status.code(), Some(69), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("127.0.0.1:1"),
        "{}",
        text(&out)
    );
}
