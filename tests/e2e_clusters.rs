//! Several clusters (`CLUSTERS_D`): one login bootstraps both of the local
//! harness's real API servers, each with the prefixes, kubeconfig file and
//! root credentials its clusters.d file and hook.env.d overrides give, and
//! real kubectl as the real Linux user works on both with `--context`, as
//! the dashboard calls it. A cluster that is down, gated or misconfigured
//! fails or is skipped alone.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::*;

/// One two-cluster site in a scratch directory: hook.env, clusters.d and
/// hook.env.d, with the second cluster's root kubeconfig replaceable. The
/// user entries hold the login's token (`K8S_CREDENTIALS=token`): no
/// client secret is left in the test users' homes for other suites to find.
struct Site {
    dir: PathBuf,
    hook_env: PathBuf,
    /// Namespace prefixes of cluster one and two.
    ns1: String,
    ns2: String,
}

/// The CAs where every user can read them (kubectl runs as the user).
/// Copied once per test process and never written again: the tests run
/// side by side, and a copy truncated under a reading kubectl would fail it.
fn user_cas() -> (PathBuf, PathBuf) {
    static CAS: std::sync::OnceLock<(PathBuf, PathBuf)> = std::sync::OnceLock::new();
    CAS.get_or_init(|| {
        let c = cluster();
        let dir = PathBuf::from(format!("/tmp/ood-e2e-cas-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let copy = |var: &str, name: &str| {
            let to = dir.join(name);
            std::fs::copy(c.var(var), &to).unwrap();
            std::fs::set_permissions(&to, std::fs::Permissions::from_mode(0o644)).unwrap();
            to
        };
        (
            copy("K8S_CA_FILE", "ca1.crt"),
            copy("K8S_CA_FILE_2", "ca2.crt"),
        )
    })
    .clone()
}

impl Site {
    /// `tag` names the scratch directory and prefixes; `hook_env_extra` and
    /// `two_env_extra` are added to hook.env and to the second cluster's
    /// overrides.
    fn new(tag: &str, hook_env_extra: &str, two_env_extra: &str) -> Site {
        let c = cluster();
        let dir = scratch(&format!("clusters-{tag}"));
        let (ca1, ca2) = user_cas();
        let (ns1, ns2) = (prefix(&format!("{tag}1")), prefix(&format!("{tag}2")));
        let clusters_d = dir.join("clusters.d");
        let overrides = dir.join("hook.env.d");
        for d in [&clusters_d, &overrides] {
            std::fs::create_dir(d).unwrap();
            std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        let file = |path: PathBuf, text: String| {
            std::fs::write(&path, text).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        };
        file(
            clusters_d.join("one.yml"),
            format!(
                "---\nv2:\n  metadata:\n    title: \"One\"\n  job:\n    adapter: \"kubernetes\"\n    \
                 cluster: \"one\"\n    namespace_prefix: \"{ns1}\"\n    username_prefix: \"one-\"\n    \
                 server:\n      endpoint: \"{}\"\n      cert_authority_file: \"{}\"\n    \
                 auth:\n      type: \"oidc\"\n",
                c.var("K8S_SERVER"),
                ca1.display()
            ),
        );
        file(
            clusters_d.join("two.yml"),
            format!(
                "---\nv2:\n  metadata:\n    title: \"Two\"\n  job:\n    adapter: \"kubernetes\"\n    \
                 cluster: \"two\"\n    config_file: \"$HOME/.kube/two\"\n    \
                 namespace_prefix: \"{ns2}\"\n    username_prefix: \"two-\"\n    \
                 server:\n      endpoint: \"{}\"\n      cert_authority_file: \"{}\"\n",
                c.var("K8S_SERVER_2"),
                ca2.display()
            ),
        );
        // Another adapter's file with ERB (which ood_core does not
        // evaluate either): none of the hook's business.
        file(
            clusters_d.join("login.yml"),
            "v2:\n  metadata:\n    title: \"<%= 'Login' %>\"\n  login:\n    host: \"<%= ENV['LOGIN_HOST'] %>\"\n  \
             job:\n    adapter: \"slurm\"\n    cluster: \"<%= `hostname -s` %>\"\n"
                .into(),
        );
        file(
            overrides.join("one.env"),
            format!("ROOT_KUBECONFIG={}\n", c.var("KUBECONFIG_ONDEMAND")),
        );
        file(
            overrides.join("two.env"),
            format!(
                "ROOT_KUBECONFIG={}\n{two_env_extra}",
                c.var("KUBECONFIG_ONDEMAND_2")
            ),
        );
        let hook_env = c.hook_env(
            &dir,
            &format!(
                "CLUSTERS_D={}\nHOOK_ENV_D={}\nK8S_CREDENTIALS=token\n{hook_env_extra}",
                clusters_d.display(),
                overrides.display()
            ),
        );
        Site {
            dir,
            hook_env,
            ns1,
            ns2,
        }
    }

    /// The hook for `user` after a portal login (Dex tokens in the
    /// environment), as root, with no KUBECONFIG: each cluster's root
    /// kubeconfig comes from its overrides.
    fn login(&self, user: &str) -> (Output, Duration) {
        let tokens = cluster().login(user);
        self.run(user, Some(&tokens))
    }

    fn run(&self, user: &str, tokens: Option<&Tokens>) -> (Output, Duration) {
        let mut cmd = Command::new(bin());
        cmd.env_clear()
            .env("PATH", "/usr/local/bin:/usr/bin:/bin")
            .env("HOME", "/root")
            .arg("--hook-env")
            .arg(&self.hook_env)
            .args(["--user", user])
            .stdin(Stdio::null());
        if let Some(t) = tokens {
            cmd.env("OOD_OIDC_ACCESS_TOKEN", &t.access)
                .env("OOD_OIDC_REFRESH_TOKEN", &t.refresh)
                .env("OOD_OIDC_ID_TOKEN", &t.id);
        }
        let started = Instant::now();
        let out = cmd.output().expect("run the hook");
        (out, started.elapsed())
    }
}

/// kubectl as admin of the second cluster.
fn admin_2(args: &[&str]) -> Output {
    cluster().kubectl_as(cluster().var("KUBECONFIG_ADMIN_2"), args)
}

fn namespace_exists_1(ns: &str) -> bool {
    cluster().get_json(&["namespace", ns]).is_some()
}

fn namespace_exists_2(ns: &str) -> bool {
    let out = admin_2(&["get", "namespace", ns, "-o", "name"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() || err.contains("NotFound"), "{err}");
    out.status.success()
}

/// kubectl as the user, as the dashboard calls it: `--kubeconfig`
/// (the cluster's config_file), `--context` and `--namespace`, listing pods.
fn dashboard_kubectl(user: &str, kubeconfig: &Path, context: &str, ns: &str) -> Output {
    kubectl_as_user(
        user,
        &[
            &format!("--kubeconfig={}", kubeconfig.display()),
            &format!("--context={context}"),
            &format!("--namespace={ns}"),
            "get",
            "pods",
        ],
    )
}

/// kubectl as the dashboard really runs it: ood_core builds one command
/// string with `config_file` as clusters.d gives it (no ERB evaluated) and
/// Ruby hands it to `sh -c`, as the user with the user's `HOME`.
fn dashboard_sh(user: &str, config_file: &str, context: &str, ns: &str) -> Output {
    let (_, _, home) = linux_user(user);
    let command = format!(
        "{} --kubeconfig={config_file} --context={context} --namespace={ns} get pods",
        user_tools().0.display()
    );
    Command::new("runuser")
        .args(["-u", user, "--", "env", "-i"])
        .arg(format!("HOME={}", home.display()))
        .arg("PATH=/usr/bin:/bin")
        .args(["sh", "-c", &command])
        .current_dir("/")
        .output()
        .expect("runuser sh -c kubectl")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn one_login_bootstraps_both_clusters_and_kubectl_works_on_each_as_the_dashboard_calls_it() {
    let (_, _, home) = linux_user("alice");
    // Other runs leave entries of other clusters here.
    let _ = std::fs::remove_dir_all(home.join(".kube"));
    let site = Site::new("both", "", "");
    let (out, _) = site.login("alice");
    let err = stderr(&out);
    assert!(out.status.success(), "{}", text(&out));
    let (ns1, ns2) = (format!("{}alice", site.ns1), format!("{}alice", site.ns2));
    for line in [
        format!("alice: one: namespace {ns1}: "),
        format!("alice: two: namespace {ns2}: "),
    ] {
        assert!(err.contains(&line), "no line {line:?} in:\n{err}");
    }
    assert!(
        !err.contains("login"),
        "a non-Kubernetes cluster file is ignored: {err}"
    );
    assert!(namespace_exists_1(&ns1) && namespace_exists_2(&ns2));
    assert!(
        !namespace_exists_2(&ns1) && !namespace_exists_1(&ns2),
        "each cluster gets its own namespace only"
    );

    // The dashboard's calls: --kubeconfig CONFIG_FILE --context CONTEXT.
    let one = home.join(".kube/config");
    let two = home.join(".kube/two");
    for (file, context, ns) in [(&one, "one", &ns1), (&two, "two", &ns2)] {
        let out = dashboard_kubectl("alice", file, context, ns);
        assert!(out.status.success(), "kubectl on {context}: {}", text(&out));
    }
    // As ood_core runs them: through sh -c, with cluster two's config_file
    // as its clusters.d file says it (`$HOME/.kube/two`), reaching the API
    // server with the credentials the hook wrote. The ERB form the README
    // once gave breaks every such call.
    for config_file in ["$HOME/.kube/two", "${HOME}/.kube/two"] {
        let out = dashboard_sh("alice", config_file, "two", &ns2);
        assert!(
            out.status.success(),
            "sh -c kubectl --kubeconfig={config_file}: {}",
            text(&out)
        );
    }
    let erb = dashboard_sh("alice", "<%= Dir.home %>/.kube/two", "two", &ns2);
    assert!(
        !erb.status.success() && stderr(&erb).contains("%="),
        "{}",
        text(&erb)
    );
    let config: serde_json::Value =
        serde_saphyr::from_str(&std::fs::read_to_string(&two).unwrap()).unwrap();
    assert_eq!(config["users"][0]["name"], "two-alice");
    assert_eq!(config["contexts"][0]["context"]["namespace"], ns2.as_str());
    assert_eq!(
        config["clusters"][0]["cluster"]["server"],
        cluster().var("K8S_SERVER_2")
    );
    let first = std::fs::read_to_string(&one).unwrap();
    assert!(
        first.contains("one-alice") && !first.contains("two-alice"),
        "cluster one's file holds another cluster's entry"
    );
    let mode = std::fs::metadata(&two).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);

    // A second login (a later second) only refreshes each namespace's
    // last-hook-execution annotation.
    std::thread::sleep(Duration::from_millis(1000));
    let (again, _) = site.login("alice");
    let err = stderr(&again);
    assert!(again.status.success(), "{}", text(&again));
    for (id, ns) in [("one", &ns1), ("two", &ns2)] {
        let lines: Vec<&str> = err
            .lines()
            .filter(|l| l.contains(&format!("alice: {id}: namespace {ns}: ")))
            .collect();
        assert!(
            matches!(lines[..], [l] if l.contains(": 0 created, 1 changed, 4 unchanged")),
            "cluster {id}'s own summary line: {lines:?} in:\n{err}"
        );
    }

    // One writer child does every kubeconfig file of a login, and each file
    // is written or refused on its own: cluster two's file turned into a
    // symbolic link is refused and left as it is, while the same login
    // writes cluster one's file.
    let elsewhere = home.join("elsewhere");
    std::fs::rename(&two, &elsewhere).unwrap();
    std::os::unix::fs::symlink(&elsewhere, &two).unwrap();
    let kept = std::fs::read(&elsewhere).unwrap();
    std::fs::remove_file(&one).unwrap();
    let (refused, _) = site.login("alice");
    let err = stderr(&refused);
    assert!(!refused.status.success(), "{}", text(&refused));
    assert!(
        err.contains("symbolic link") && err.contains(".kube/two"),
        "{err}"
    );
    assert!(
        err.contains(&format!("kubeconfig {} updated", one.display())),
        "cluster one's file is written: {err}"
    );
    let first = std::fs::read_to_string(&one).unwrap();
    assert!(first.contains("one-alice") && !first.contains("two-alice"));
    assert!(
        std::fs::symlink_metadata(&two)
            .unwrap()
            .file_type()
            .is_symlink()
    );
    assert_eq!(
        std::fs::read(&elsewhere).unwrap(),
        kept,
        "the link's target"
    );
    std::fs::remove_file(&two).unwrap();
    std::fs::remove_file(&elsewhere).unwrap();

    // Both clusters in one file: one write holds both clusters' entries,
    // and the dashboard's calls work on either through it.
    let two_yml = site.dir.join("clusters.d/two.yml");
    let yml = std::fs::read_to_string(&two_yml).unwrap();
    std::fs::write(&two_yml, yml.replace("/.kube/two", "/.kube/config")).unwrap();
    let (shared, _) = site.login("alice");
    let err = stderr(&shared);
    assert!(shared.status.success(), "{}", text(&shared));
    assert_eq!(
        err.matches(&format!("kubeconfig {} updated", one.display()))
            .count(),
        2,
        "both clusters' lines name the one file: {err}"
    );
    let both = std::fs::read_to_string(&one).unwrap();
    assert!(
        both.contains("one-alice") && both.contains("two-alice"),
        "the shared file lacks a cluster's user entry"
    );
    for (context, ns) in [("one", &ns1), ("two", &ns2)] {
        let out = dashboard_kubectl("alice", &one, context, ns);
        assert!(out.status.success(), "kubectl on {context}: {}", text(&out));
    }

    // Cluster two's namespace made another login's: its side is refused,
    // and sharing the file with cluster one (written), its own line says
    // its entries were not written, and they are not.
    let owned = admin_2(&[
        "annotate",
        "namespace",
        &ns2,
        "openondemand.org/user=mallory",
        "openondemand.org/uid=4242",
        "--overwrite",
    ]);
    assert!(owned.status.success(), "{}", text(&owned));
    std::fs::remove_file(&one).unwrap();
    let (taken, _) = site.login("alice");
    let err = stderr(&taken);
    assert_eq!(taken.status.code(), Some(77), "{}", text(&taken));
    let line_of = |start: &str| err.lines().find(|l| l.contains(start)).unwrap_or_default();
    let two_line = line_of("two: user alice: namespace");
    assert!(
        two_line.contains("belongs to login mallory")
            && two_line.contains("kubeconfig entries were not written")
            && !two_line.contains("updated"),
        "cluster two's line: {err}"
    );
    assert!(
        line_of(&format!("alice: one: namespace {ns1}"))
            .contains(&format!("kubeconfig {} updated", one.display())),
        "cluster one's line: {err}"
    );
    let only_one = std::fs::read_to_string(&one).unwrap();
    assert!(
        only_one.contains("one-alice") && !only_one.contains("two-alice"),
        "{only_one}"
    );

    // The ERB form of config_file (which breaks the dashboard's kubectl) is
    // refused before anything changes, naming the file and the form that
    // works.
    std::fs::write(
        &two_yml,
        yml.replace("$HOME/.kube/two", "<%= Dir.home %>/.kube/two"),
    )
    .unwrap();
    let (erb, _) = site.login("alice");
    let err = stderr(&erb);
    assert_eq!(erb.status.code(), Some(78), "{}", text(&erb));
    assert!(
        err.contains(&two_yml.display().to_string())
            && err.contains("ERB")
            && err.contains("$HOME/.kube/NAME"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&site.dir);
}

#[test]
fn a_cluster_that_is_down_fails_alone_within_its_deadline_and_then_fast() {
    linux_user("bob");
    // Cluster two's deadline is 3 s, the others' 30 s: a run bounded by
    // cluster two's own deadline (plus a margin for a busy machine) is
    // told apart from one waiting out the others'.
    let site = Site::new(
        "down",
        "HOOK_TIMEOUT_SECONDS=30\n",
        "HOOK_TIMEOUT_SECONDS=3\n",
    );
    let deadline = Duration::from_secs(3);
    // Cluster two's root kubeconfig now leads to a port nobody listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let real = std::fs::read_to_string(cluster().var("KUBECONFIG_ONDEMAND_2")).unwrap();
    let dead = site.dir.join("dead.kubeconfig");
    std::fs::write(
        &dead,
        real.replace(
            cluster().var("K8S_SERVER_2"),
            &format!("https://127.0.0.1:{port}"),
        ),
    )
    .unwrap();
    std::fs::set_permissions(&dead, std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::write(
        site.dir.join("hook.env.d/two.env"),
        format!(
            "ROOT_KUBECONFIG={}\nHOOK_TIMEOUT_SECONDS=3\n",
            dead.display()
        ),
    )
    .unwrap();

    let (out, took) = site.login("bob");
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(69), "{}", text(&out));
    assert!(took < deadline + MARGIN, "took {took:?}: {err}");
    let ns1 = format!("{}bob", site.ns1);
    assert!(
        err.contains(&format!("bob: one: namespace {ns1}: ")),
        "{err}"
    );
    assert!(
        err.contains("error: two: ") && err.contains(&format!("127.0.0.1:{port}")),
        "{err}"
    );
    assert!(namespace_exists_1(&ns1), "cluster one is done");
    let (_, _, home) = linux_user("bob");
    let config = std::fs::read_to_string(home.join(".kube/config")).unwrap();
    assert!(
        config.contains("one-bob"),
        "cluster one's kubeconfig entry is written"
    );

    // The next login does not wait for cluster two again.
    let (out, took) = site.login("bob");
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(69), "{}", text(&out));
    assert!(
        took < deadline,
        "waited out the deadline again: {took:?}: {err}"
    );
    assert!(
        err.contains("FAST_FAIL_SECONDS") && err.contains("error: two: "),
        "{err}"
    );
    assert!(
        err.contains(&format!("bob: one: namespace {ns1}: ")),
        "{err}"
    );
    let _ = std::fs::remove_file(format!(
        "/run/ood-k8s-bootstrap/outage-127.0.0.1_{port}.json"
    ));
    let _ = std::fs::remove_dir_all(&site.dir);
}

/// Nothing of `user`'s on cluster two: the ondemand account wrote nothing
/// to or in namespace `ns` (the audit log), no object of any kind the hook
/// writes is there, no RoleBinding of the user's (`USER-…`) is anywhere,
/// and the user's kubeconfig holds nothing of cluster two.
fn assert_nothing_on_two(user: &str, ns: &str, home: &Path) {
    audit_settled_on("KUBECONFIG_ADMIN_2", "AUDIT_LOG_2");
    assert_eq!(
        ondemand_writes_in("AUDIT_LOG_2", ns),
        0,
        "the ondemand account wrote to {ns} on two"
    );
    assert!(!namespace_exists_2(ns), "namespace {ns} on two");
    let kinds = "rolebindings,roles,networkpolicies,serviceaccounts,secrets,configmaps,\
                 resourcequotas,limitranges,persistentvolumeclaims";
    let out = admin_2(&["get", kinds, "--all-namespaces", "-o", "json"]);
    assert!(out.status.success(), "{}", text(&out));
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let ours: Vec<String> = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|o| {
            let meta = &o["metadata"];
            meta["namespace"] == ns
                || (o["kind"] == "RoleBinding"
                    && meta["name"]
                        .as_str()
                        .is_some_and(|n| n.starts_with(&format!("{user}-"))))
        })
        .map(|o| {
            format!(
                "{} {}/{}",
                o["kind"], o["metadata"]["namespace"], o["metadata"]["name"]
            )
        })
        .collect();
    assert!(ours.is_empty(), "{user}'s objects on two: {ours:?}");
    assert!(!home.join(".kube/two").exists(), "a kubeconfig for two");
    let config = std::fs::read_to_string(home.join(".kube/config")).unwrap_or_default();
    assert!(
        !config.contains(&format!("two-{user}")),
        "cluster two in {user}'s kubeconfig:\n{config}"
    );
}

/// Issue 25 (promises): a login over two clusters is one run: one record
/// on the log and one LAST_RUN_DIR file, each naming both clusters, and
/// the runs counter goes up by exactly one, not one per cluster.
#[test]
fn a_login_over_two_clusters_is_one_record_and_one_run_counted() {
    let user = "rec-two";
    let (_, _, home) = linux_user(user);
    let _ = std::fs::remove_dir_all(home.join(".kube"));
    let logs = scratch("clusters-rec-log");
    let log = SyslogListener::bind(&logs, "log.sock");
    let (metrics, last_run) = (logs.join("ood.prom"), logs.join("last-run"));
    let site = Site::new(
        "rec",
        &format!(
            "K8S_CREDENTIALS=none\nSYSLOG_SOCKET={}\nMETRICS_FILE={}\nLAST_RUN_DIR={}\n",
            log.path.display(),
            metrics.display(),
            last_run.display()
        ),
        "",
    );
    let (out, _) = site.run(user, None);
    assert!(out.status.success(), "{}", text(&out));
    let err = stderr(&out);
    assert!(
        err.contains(&format!("{user}: one: namespace"))
            && err.contains(&format!("{user}: two: namespace")),
        "{err}"
    );
    let records: Vec<_> = log
        .received()
        .iter()
        .filter_map(|d| rfc5424_fields(d))
        .collect();
    assert_eq!(records.len(), 1, "{records:?}");
    let r = &records[0];
    assert_eq!(
        (
            r["command"].as_str(),
            r["user"].as_str(),
            r["exit"].as_str()
        ),
        ("hook", user, "0"),
        "{r:?}"
    );
    assert_eq!(r["cluster"], "one,two", "{r:?}");
    let kept: Vec<_> = std::fs::read_dir(&last_run)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(kept, [user], "{kept:?}");
    let line = std::fs::read_to_string(last_run.join(user)).unwrap();
    assert_eq!(line.lines().count(), 1, "{line}");
    assert!(
        line.contains(&format!("command=\"hook\" user=\"{user}\""))
            && line.contains("cluster=\"one,two\""),
        "{line}"
    );
    let text = std::fs::read_to_string(&metrics).unwrap();
    for want in [
        "ood_k8s_bootstrap_runs_total{command=\"hook\",exit=\"0\"} 1\n",
        "ood_k8s_bootstrap_run_duration_seconds_count{command=\"hook\"} 1\n",
    ] {
        assert!(text.contains(want), "no {want:?} in:\n{text}");
    }
    assert_eq!(
        text.matches("ood_k8s_bootstrap_runs_total{").count(),
        1,
        "{text}"
    );
    let _ = std::fs::remove_dir_all(&site.dir);
}

#[test]
fn a_group_gated_cluster_is_only_for_its_groups() {
    linux_user("erin");
    linux_user("frank");
    let group = "ood-e2e-two";
    let _ = Command::new("groupadd").arg(group).output();
    let add = Command::new("usermod")
        .args(["-a", "-G", group, "frank"])
        .output()
        .unwrap();
    assert!(add.status.success(), "{}", text(&add));
    let site = Site::new("gate", "", &format!("ALLOWED_GROUPS={group}\n"));

    // erin (not in the group) is this test's own login: the broker test
    // beside it writes dave's `one-dave` entries.
    let (_, _, erin_home) = linux_user("erin");
    let _ = std::fs::remove_dir_all(erin_home.join(".kube"));
    let (out, _) = site.login("erin");
    let err = stderr(&out);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        err.contains(&format!(
            "erin: two: skipped: not a member of {group} (ALLOWED_GROUPS)"
        )),
        "{err}"
    );
    assert!(namespace_exists_1(&format!("{}erin", site.ns1)));
    assert_nothing_on_two("erin", &format!("{}erin", site.ns2), &erin_home);

    let (out, _) = site.login("frank");
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        namespace_exists_2(&format!("{}frank", site.ns2)),
        "{}",
        text(&out)
    );
    let _ = std::fs::remove_dir_all(&site.dir);
}

#[test]
fn drift_between_a_cluster_file_and_hook_env_is_refused_before_anything_changes() {
    let (_, _, home) = linux_user("carol.smith");
    let site = Site::new("drift", "K8S_USERNAME_PREFIX=oidc:\n", "");
    let config = home.join(".kube/config");
    let before = std::fs::read(&config).ok();
    let (out, _) = site.login("carol.smith");
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(78), "{}", text(&out));
    assert!(
        err.contains(&format!("{}:", site.hook_env.display()))
            && err.contains("K8S_USERNAME_PREFIX=\"oidc:\" contradicts")
            && err.contains("clusters.d/one.yml (job.username_prefix: \"one-\")"),
        "{err}"
    );
    assert!(!namespace_exists_1(&format!("{}carol-smith", site.ns1)));
    assert!(!namespace_exists_2(&format!("{}carol-smith", site.ns2)));
    assert_eq!(
        std::fs::read(&config).ok(),
        before,
        "the kubeconfig is untouched"
    );
    assert!(!Path::new(&home.join(".kube/two")).exists());
    let _ = std::fs::remove_dir_all(&site.dir);
}

/// A child process killed when the test ends, passed or not.
struct Stopped(std::process::Child);

impl Drop for Stopped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The real broker for `site` (its hook.env), verbose, logging to
/// `broker.log` in the site's directory; returned once it says it started.
fn start_broker(site: &Site) -> (Stopped, PathBuf) {
    let log = site.dir.join("broker.log");
    let mut broker = Stopped(
        Command::new(bin())
            .arg("broker")
            .arg("--hook-env")
            .arg(&site.hook_env)
            .arg("-v")
            .env_clear()
            .env("PATH", "/usr/local/bin:/usr/bin:/bin")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap(),
    );
    let started = Instant::now();
    while !std::fs::read_to_string(&log)
        .unwrap_or_default()
        .contains("started (")
    {
        assert!(
            broker.0.try_wait().unwrap().is_none(),
            "{}",
            std::fs::read_to_string(&log).unwrap()
        );
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the broker did not start"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    (broker, log)
}

/// The token the broker's plugin of user entry `entry` in `kubeconfig`
/// hands kubectl, the plugin run as `user` exactly as the entry says.
fn plugin_token(user: &str, kubeconfig: &Path, entry: &str) -> serde_json::Value {
    let text = std::fs::read_to_string(kubeconfig).unwrap();
    let config: serde_json::Value = serde_saphyr::from_str(&text).unwrap();
    let users = config["users"].as_array().unwrap();
    let exec = &users
        .iter()
        .find(|u| u["name"] == entry)
        .expect("the user entry")["user"]["exec"];
    let args: Vec<&str> = exec["args"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|a| a.as_str())
        .collect();
    let out = Command::new("runuser")
        .args(["-u", user, "--"])
        .arg(exec["command"].as_str().unwrap())
        .args(&args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "plugin for {entry}: status {:?}",
        out.status.code()
    );
    let cred: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    cred["status"]["token"].clone()
}

/// The broker's plugin names the kubeconfig cluster; two clusters.d files
/// leaving `job.cluster` unset are both `open-ondemand`: in broker mode with
/// different token sets (here cluster two's own exchange audience), the
/// broker could only serve one of them the other's token, so the hook
/// refuses the site at load, naming both files, before anything changes.
#[test]
fn broker_clusters_of_one_kubeconfig_name_with_different_token_sets_are_refused_at_load() {
    let c = cluster();
    let dir = scratch("clusters-brkname-state");
    let broker = format!(
        "K8S_CREDENTIALS=broker\nBROKER_STATE_DIR={}\nIDP_ISSUER_URL={}\nIDP_CA_FILE={}\n\
         CLIENT_ID={}\nCLIENT_SECRET={}\n",
        dir.join("tokens").display(),
        c.var("KEYCLOAK_ISSUER"),
        c.var("KEYCLOAK_CA_FILE"),
        c.var("KEYCLOAK_PORTAL_CLIENT_ID"),
        c.var("KEYCLOAK_PORTAL_CLIENT_SECRET"),
    );
    let audience = format!(
        "K8S_TOKEN_EXCHANGE_AUDIENCE={}\n",
        c.var("KEYCLOAK_K8S_AUDIENCE")
    );
    let site = Site::new("brkname", &broker, &audience);
    let clusters_d = site.dir.join("clusters.d");
    for id in ["one", "two"] {
        let path = clusters_d.join(format!("{id}.yml"));
        let yml = std::fs::read_to_string(&path).unwrap();
        std::fs::write(&path, yml.replace(&format!("    cluster: \"{id}\"\n"), "")).unwrap();
    }
    let (out, _) = site.run("alice", None);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(78), "{}", text(&out));
    assert!(
        err.contains(&clusters_d.join("one.yml").display().to_string())
            && err.contains(&clusters_d.join("two.yml").display().to_string())
            && err.contains("\"open-ondemand\""),
        "{err}"
    );
    assert!(
        !namespace_exists_1(&format!("{}alice", site.ns1)),
        "nothing changed"
    );
    let _ = std::fs::remove_dir_all(&site.dir);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Two clusters in broker mode whose tokens differ: cluster one takes the
/// Keycloak login's own tokens (asked for with the Kubernetes audience
/// scope), cluster two a token exchange for the `kubernetes` audience. The
/// broker keeps a token set per user for each (two files), and kubectl as
/// the user gets each cluster's own through the plugin, on both clusters.
/// Both sets come from one issuer (Keycloak) and one client (the portal's),
/// and neither is refreshed here: that each set is refreshed at its own
/// issuer as its own client is what
/// `each_clusters_broker_set_is_refreshed_at_its_issuer_as_its_own_client`
/// shows.
#[test]
fn the_broker_keeps_a_set_per_cluster_the_logins_own_and_an_exchanged_one() {
    let c = cluster();
    let user = "dave";
    let (uid, _, home) = linux_user(user);
    let _ = std::fs::remove_dir_all(home.join(".kube"));
    let sock_dir = PathBuf::from(format!("/tmp/ood-e2e-mcbrk-sock-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&sock_dir);
    let socket = sock_dir.join("broker.sock");
    let dir = scratch("clusters-brk-state");
    let state = dir.join("tokens");
    let keycloak = format!(
        "K8S_CREDENTIALS=broker\nBROKER_SOCKET={}\nBROKER_STATE_DIR={}\nIDP_ISSUER_URL={}\n\
         IDP_CA_FILE={}\nCLIENT_ID={}\nCLIENT_SECRET={}\n",
        socket.display(),
        state.display(),
        c.var("KEYCLOAK_ISSUER"),
        c.var("KEYCLOAK_CA_FILE"),
        c.var("KEYCLOAK_PORTAL_CLIENT_ID"),
        c.var("KEYCLOAK_PORTAL_CLIENT_SECRET"),
    );
    let exchange = format!(
        "K8S_TOKEN_EXCHANGE_AUDIENCE={}\nK8S_TOKEN_EXCHANGE_SCOPE={}\n",
        c.var("KEYCLOAK_K8S_AUDIENCE"),
        c.var("KEYCLOAK_K8S_AUDIENCE_SCOPE")
    );
    let site = Site::new("brk", &keycloak, &exchange);
    let (broker, log) = start_broker(&site);

    let tokens = c.keycloak_login_client(
        user,
        c.var("KEYCLOAK_PORTAL_CLIENT_ID"),
        c.var("KEYCLOAK_PORTAL_CLIENT_SECRET"),
        Some(c.var("KEYCLOAK_K8S_AUDIENCE_SCOPE")),
    );
    let (out, _) = site.run(user, Some(&tokens));
    assert!(out.status.success(), "{}", text(&out));
    let read = |p: &Path| -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display())))
            .unwrap()
    };
    let login_set = read(&state.join(format!("{uid}.json")));
    let other: Vec<PathBuf> = std::fs::read_dir(&state)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_dir())
        .collect();
    assert_eq!(other.len(), 1, "one more set directory: {other:?}");
    let exchange_set = read(&other[0].join(format!("{uid}.json")));
    // Cluster one's set holds the login's own refresh token, cluster two's
    // the exchange's (compared, never printed).
    let refresh = |set: &serde_json::Value| set["refresh_token"].as_str().unwrap_or("").to_owned();
    assert!(
        refresh(&login_set) == tokens.refresh,
        "cluster one's set is not the login's"
    );
    assert!(
        !refresh(&exchange_set).is_empty() && refresh(&exchange_set) != tokens.refresh,
        "cluster two's set is not the exchange's"
    );
    for (file, context, ns) in [
        ("config", "one", format!("{}{user}", site.ns1)),
        ("two", "two", format!("{}{user}", site.ns2)),
    ] {
        let out = dashboard_kubectl(user, &home.join(".kube").join(file), context, &ns);
        assert!(
            out.status.success(),
            "kubectl on {context}: {}\nbroker log:\n{}",
            text(&out),
            std::fs::read_to_string(&log).unwrap_or_default()
        );
    }
    // Each cluster's plugin gets that cluster's own set's token.
    for (file, entry, set) in [
        ("config", "one-dave", &login_set),
        ("two", "two-dave", &exchange_set),
    ] {
        assert!(
            plugin_token(user, &home.join(".kube").join(file), entry) == set["access_token"],
            "the plugin of {entry} did not get its own cluster's token set"
        );
    }
    let served = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        served.contains("cluster one: token for dave served")
            && served.contains("cluster two: token for dave served"),
        "{served}"
    );
    drop(broker);
    let _ = std::fs::remove_dir_all(home.join(".kube"));
    let _ = std::fs::remove_dir_all(&site.dir);
}

/// Keycloak clients and a user this test makes in the shared realm, named
/// for it (the clients also for this process), deleted when it ends. After
/// a failure they are left (a panic while cleaning up would abort every
/// test of this binary); the next run replaces the user.
struct KeycloakOwned {
    clients: Vec<String>,
    user: Option<String>,
}

impl KeycloakOwned {
    /// Creates a client of the `ood` realm from its representation.
    fn client(&mut self, rep: serde_json::Value) {
        let id = rep["clientId"].as_str().unwrap().to_owned();
        let (code, answer) =
            cluster().keycloak_admin("POST", "/admin/realms/ood/clients", Some(&rep));
        assert_eq!(code, 201, "Keycloak: create client {id}: {answer}");
        self.clients.push(id);
    }

    /// Creates (replacing one left by an earlier run) a user of the `ood`
    /// realm with `password`.
    fn user(&mut self, name: &str, password: &str) {
        let c = cluster();
        if let Some(id) = keycloak_user_id(name) {
            let (code, answer) =
                c.keycloak_admin("DELETE", &format!("/admin/realms/ood/users/{id}"), None);
            assert_eq!(code, 204, "Keycloak: delete the old user {name}: {answer}");
        }
        let rep = serde_json::json!({
            "username": name,
            "enabled": true,
            "email": format!("{name}@example.test"),
            "emailVerified": true,
            "firstName": "Broker",
            "lastName": "Issuer",
            "credentials": [{"type": "password", "value": password, "temporary": false}],
        });
        let (code, answer) = c.keycloak_admin("POST", "/admin/realms/ood/users", Some(&rep));
        assert_eq!(code, 201, "Keycloak: create user {name}: {answer}");
        self.user = Some(name.to_owned());
    }
}

impl Drop for KeycloakOwned {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "left in Keycloak's ood realm: clients {:?}, user {:?}",
                self.clients, self.user
            );
            return;
        }
        let c = cluster();
        for id in &self.clients {
            let (code, found) = c.keycloak_admin(
                "GET",
                &format!("/admin/realms/ood/clients?clientId={id}"),
                None,
            );
            if let (200, Some(uuid)) = (code, found[0]["id"].as_str()) {
                c.keycloak_admin("DELETE", &format!("/admin/realms/ood/clients/{uuid}"), None);
            }
        }
        if let Some(id) = self.user.as_deref().and_then(keycloak_user_id) {
            c.keycloak_admin("DELETE", &format!("/admin/realms/ood/users/{id}"), None);
        }
    }
}

/// The id of the `ood` realm's user `name`, if there is one.
fn keycloak_user_id(name: &str) -> Option<String> {
    let (code, found) = cluster().keycloak_admin(
        "GET",
        &format!("/admin/realms/ood/users?username={name}&exact=true"),
        None,
    );
    assert_eq!(code, 200, "Keycloak: find user {name}: {found}");
    found[0]["id"].as_str().map(str::to_owned)
}

/// The promise of the README's "Several clusters": the broker keeps a set
/// per issuer and client and refreshes each at its own issuer as its own
/// client. Cluster one takes the portal login's own tokens (client P, the
/// portal); cluster two's hook.env.d names another client (X) that makes a
/// token exchange of the login's token for the Kubernetes audience, so its
/// set's refresh token is X's. Both clients, and the user, are this test's
/// own in the local Keycloak (P's tokens carry X in their audience, which
/// Keycloak's standard token exchange requires of X's subject tokens).
///
/// Both are of one issuer: every set of a login is that login's tokens or
/// an exchange at the cluster's issuer, and neither local IdP can take the
/// other's tokens (Keycloak's standard token exchange takes only its own;
/// Dex exchanges only its connectors' tokens, and the local Dex has none),
/// so one portal login cannot give a Dex set and a Keycloak set, though
/// both API servers trust both IdPs. What is told apart is the client.
///
/// After the login, both tokens are left to expire (the realm's short
/// token lifetime); then the dashboard's kubectl on each cluster works,
/// which needs the broker to refresh each set: the refreshed tokens (signed
/// by the IdP, accepted by both API servers) name Keycloak as `iss` and
/// each set's own client as `azp`, each set still records its own client,
/// and Keycloak refuses either refresh token to the other client, so a
/// refresh as the wrong client could not have succeeded.
#[test]
fn each_clusters_broker_set_is_refreshed_at_its_issuer_as_its_own_client() {
    let c = cluster();
    let user = "brk-iss";
    let (uid, _, home) = linux_user(user);
    let _ = std::fs::remove_dir_all(home.join(".kube"));
    let pid = std::process::id();
    let nonce = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let issuer = c.var("KEYCLOAK_ISSUER");
    let audience = c.var("KEYCLOAK_K8S_AUDIENCE");
    let audience_scope = c.var("KEYCLOAK_K8S_AUDIENCE_SCOPE");
    let (portal, exchanger) = (
        format!("ood-e2e-iss-portal-{pid}"),
        format!("ood-e2e-iss-exchange-{pid}"),
    );
    let (portal_secret, exchanger_secret, password) = (
        format!("p-{pid}-{nonce}"),
        format!("x-{pid}-{nonce}"),
        format!("pw-{pid}-{nonce}"),
    );
    let mut owned = KeycloakOwned {
        clients: Vec::new(),
        user: None,
    };
    // X first: P's audience mapper names it.
    owned.client(serde_json::json!({
        "clientId": exchanger,
        "enabled": true,
        "protocol": "openid-connect",
        "publicClient": false,
        "clientAuthenticatorType": "client-secret",
        "secret": exchanger_secret,
        "standardFlowEnabled": false,
        "directAccessGrantsEnabled": false,
        "attributes": {
            "standard.token.exchange.enabled": "true",
            "standard.token.exchange.enableRefreshRequestedTokenType": "SAME_SESSION"
        },
        "defaultClientScopes": ["basic", "profile", "groups"],
        "optionalClientScopes": [audience_scope],
    }));
    owned.client(serde_json::json!({
        "clientId": portal,
        "enabled": true,
        "protocol": "openid-connect",
        "publicClient": false,
        "clientAuthenticatorType": "client-secret",
        "secret": portal_secret,
        "standardFlowEnabled": false,
        "directAccessGrantsEnabled": true,
        "defaultClientScopes": ["basic", "profile", "groups", audience_scope],
        "optionalClientScopes": [],
        "protocolMappers": [{
            "name": "the exchanging client's audience",
            "protocol": "openid-connect",
            "protocolMapper": "oidc-audience-mapper",
            "config": {"included.client.audience": exchanger,
                       "access.token.claim": "true", "id.token.claim": "false",
                       "introspection.token.claim": "true"}
        }],
    }));
    owned.user(user, &password);

    let sock_dir = PathBuf::from(format!("/tmp/ood-e2e-mciss-sock-{pid}"));
    let _ = std::fs::remove_dir_all(&sock_dir);
    let dir = scratch("clusters-iss-state");
    let state = dir.join("tokens");
    let site = Site::new(
        "iss",
        &format!(
            "K8S_CREDENTIALS=broker\nBROKER_SOCKET={}\nBROKER_STATE_DIR={}\nIDP_ISSUER_URL={issuer}\n\
             IDP_CA_FILE={}\nCLIENT_ID={portal}\nCLIENT_SECRET={portal_secret}\n",
            sock_dir.join("broker.sock").display(),
            state.display(),
            c.var("KEYCLOAK_CA_FILE"),
        ),
        &format!(
            "CLIENT_ID={exchanger}\nCLIENT_SECRET={exchanger_secret}\n\
             K8S_TOKEN_EXCHANGE_AUDIENCE={audience}\nK8S_TOKEN_EXCHANGE_SCOPE={audience_scope}\n"
        ),
    );
    let (broker, log) = start_broker(&site);
    let log_text = || std::fs::read_to_string(&log).unwrap_or_default();
    let started = log_text();
    for client in [&portal, &exchanger] {
        assert!(
            started.contains(&format!("refreshed as {client} at {issuer}")),
            "the broker does not refresh a store as {client}: {started}"
        );
    }

    // The portal login (P), as mod_auth_openidc holds it.
    let login = c
        .keycloak_token_request(&[
            ("grant_type", "password"),
            ("client_id", &portal),
            ("client_secret", &portal_secret),
            ("username", user),
            ("password", &password),
            ("scope", "openid"),
        ])
        .unwrap_or_else(|e| panic!("Keycloak password grant for {user} as {portal}: {e}"));
    let tokens = Tokens::from_json(&login);
    let (out, _) = site.run(user, Some(&tokens));
    assert!(out.status.success(), "{}", text(&out));

    let read = |p: &Path| -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display())))
            .unwrap()
    };
    let one_file = state.join(format!("{uid}.json"));
    let sets: Vec<PathBuf> = std::fs::read_dir(&state)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_dir())
        .collect();
    assert_eq!(sets.len(), 1, "one more set directory: {sets:?}");
    let two_file = sets[0].join(format!("{uid}.json"));
    let clusters = [
        (
            "one",
            "config",
            "one-brk-iss",
            &one_file,
            &portal,
            &site.ns1,
        ),
        (
            "two",
            "two",
            "two-brk-iss",
            &two_file,
            &exchanger,
            &site.ns2,
        ),
    ];
    let mut before = Vec::new();
    for (id, file, _, set_file, client, prefix) in clusters {
        let set = read(set_file);
        assert_eq!(set["refresh"]["issuer"], issuer, "cluster {id}'s set");
        assert_eq!(set["refresh"]["client_id"], **client, "cluster {id}'s set");
        let claims = jwt_claims(set["access_token"].as_str().unwrap());
        assert_eq!(claims["azp"], **client, "cluster {id}'s token at login");
        let out = dashboard_kubectl(
            user,
            &home.join(".kube").join(file),
            id,
            &format!("{prefix}{user}"),
        );
        assert!(
            out.status.success(),
            "kubectl on {id} after the login: {}\nbroker log:\n{}",
            text(&out),
            log_text()
        );
        before.push(set);
    }
    assert!(
        before[0]["refresh_token"].as_str() == Some(tokens.refresh.as_str())
            && before[1]["refresh_token"] != before[0]["refresh_token"],
        "cluster one's set is not the login's, or cluster two's not the exchange's"
    );

    // Both tokens expire (Keycloak's lifetime, set by the realm): neither
    // is any use to an API server then.
    let expiry = before
        .iter()
        .map(|s| s["expiry"].as_u64().unwrap())
        .max()
        .unwrap();
    let now = || {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs()
    };
    while now() <= expiry + 1 {
        std::thread::sleep(Duration::from_millis(250));
    }
    for (set, (id, ..)) in before.iter().zip(clusters) {
        assert!(
            c.whoami(set["access_token"].as_str().unwrap()).is_err(),
            "cluster {id}'s token from the login still authenticates after its expiry"
        );
    }

    // The dashboard's kubectl on each cluster: the broker refreshes each set.
    for (id, file, _, _, _, prefix) in clusters {
        let out = dashboard_kubectl(
            user,
            &home.join(".kube").join(file),
            id,
            &format!("{prefix}{user}"),
        );
        assert!(
            out.status.success(),
            "kubectl on {id} after expiry: {}\nbroker log:\n{}",
            text(&out),
            log_text()
        );
    }
    let served = log_text();
    for (id, ..) in clusters {
        assert!(
            served.contains(&format!(
                "cluster {id}: token for {user} served (refreshed at the IdP"
            )),
            "cluster {id}'s set was not refreshed: {served}"
        );
    }
    let mut after = Vec::new();
    for ((id, file, entry, set_file, client, _), old) in clusters.into_iter().zip(&before) {
        // What kubectl gets on that cluster is this set's token (read after
        // asking, so a refresh in between cannot tell them apart).
        let served = plugin_token(user, &home.join(".kube").join(file), entry);
        let set = read(set_file);
        assert!(
            served == set["access_token"],
            "the plugin of {entry} did not get its own cluster's set"
        );
        assert_eq!(set["source"], "refresh", "cluster {id}'s set");
        assert_eq!(set["refresh"]["issuer"], issuer, "cluster {id}'s set");
        assert_eq!(set["refresh"]["client_id"], **client, "cluster {id}'s set");
        assert!(
            set["access_token"] != old["access_token"],
            "cluster {id}'s token was not renewed"
        );
        let token = set["access_token"].as_str().unwrap();
        let claims = jwt_claims(token);
        assert_eq!(claims["iss"], issuer, "cluster {id}'s refreshed token");
        assert_eq!(claims["azp"], **client, "cluster {id}'s refreshed token");
        assert!(
            audiences(&claims).iter().any(|a| a == audience),
            "cluster {id}'s refreshed token is not for {audience}: {:?}",
            audiences(&claims)
        );
        assert!(
            claims["exp"].as_u64().unwrap() > expiry,
            "cluster {id}'s refreshed token expires no later than the login's"
        );
        // The API servers take it as the user.
        let who = c
            .whoami(token)
            .unwrap_or_else(|e| panic!("cluster {id}'s refreshed token: {e}"));
        assert_eq!(who["username"], user, "cluster {id}'s refreshed token");
        after.push(set);
    }

    // Keycloak binds each refresh token to its client: each set's refresh
    // token is refused to the other client and taken from its own, so the
    // broker's refreshes above were each made as the set's own client.
    for (set, (id, .., own, _), (other, other_secret), own_secret) in [
        (
            &after[0],
            clusters[0],
            (&exchanger, &exchanger_secret),
            &portal_secret,
        ),
        (
            &after[1],
            clusters[1],
            (&portal, &portal_secret),
            &exchanger_secret,
        ),
    ] {
        let refresh = set["refresh_token"].as_str().unwrap();
        match c.keycloak_refresh(other, other_secret, refresh) {
            Err(e) => assert_eq!(e["error"], "invalid_grant", "cluster {id}: {e}"),
            Ok(_) => panic!("Keycloak refreshed cluster {id}'s refresh token as {other}"),
        }
        if let Err(e) = c.keycloak_refresh(own, own_secret, refresh) {
            panic!("Keycloak refused cluster {id}'s refresh token to {own}: {e}");
        }
    }
    drop(broker);
    let _ = std::fs::remove_dir_all(home.join(".kube"));
    let _ = std::fs::remove_dir_all(&site.dir);
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_dir_all(&sock_dir);
}

/// The admin commands over both clusters: `install --cluster ID` picks the
/// admin kubeconfig's context for that cluster's API server, `root-token`
/// (as its timer runs it) renews every cluster's root token and `--cluster`
/// only one, `render --cluster` shows one cluster's objects and
/// `reconcile` works on every cluster.
#[test]
fn install_root_token_render_and_reconcile_work_per_cluster() {
    let c = cluster();
    let user = "alice";
    linux_user(user);
    let site = Site::new("adm", "", "");
    // Root's kubeconfigs: copies, so the harness's own stay as they are.
    let mut roots = Vec::new();
    for (id, var) in [
        ("one", "KUBECONFIG_ONDEMAND"),
        ("two", "KUBECONFIG_ONDEMAND_2"),
    ] {
        let copy = site.dir.join(format!("root-{id}.kubeconfig"));
        std::fs::copy(c.var(var), &copy).unwrap();
        std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::fs::write(
            site.dir.join(format!("hook.env.d/{id}.env")),
            format!("ROOT_KUBECONFIG={}\n", copy.display()),
        )
        .unwrap();
        roots.push(copy);
    }
    // One admin kubeconfig with a context per cluster; the current one is
    // cluster one's.
    let admin = site.dir.join("admin.kubeconfig");
    let one: serde_json::Value =
        serde_saphyr::from_str(&std::fs::read_to_string(c.var("KUBECONFIG_ADMIN")).unwrap())
            .unwrap();
    let two: serde_json::Value =
        serde_saphyr::from_str(&std::fs::read_to_string(c.var("KUBECONFIG_ADMIN_2")).unwrap())
            .unwrap();
    let part = |v: &serde_json::Value, name: &str| {
        (
            serde_json::json!({"name": name, "cluster": v["clusters"][0]["cluster"]}),
            serde_json::json!({"name": name, "context": {"cluster": name, "user": name}}),
            serde_json::json!({"name": name, "user": v["users"][0]["user"]}),
        )
    };
    let (c1, x1, u1) = part(&one, "first");
    let (c2, x2, u2) = part(&two, "second");
    let combined = serde_json::json!({
        "apiVersion": "v1", "kind": "Config", "current-context": "first",
        "clusters": [c1, c2], "contexts": [x1, x2], "users": [u1, u2],
    });
    std::fs::write(&admin, combined.to_string()).unwrap();
    std::fs::set_permissions(&admin, std::fs::Permissions::from_mode(0o600)).unwrap();
    let run = |args: &[&str]| -> Output {
        Command::new(bin())
            .args(args)
            .arg("--hook-env")
            .arg(&site.hook_env)
            .env_clear()
            .env("PATH", "/usr/local/bin:/usr/bin:/bin")
            .env("HOME", "/root")
            .stdin(Stdio::null())
            .output()
            .unwrap()
    };
    let admin = admin.to_str().unwrap();
    for (id, server) in [("two", c.var("K8S_SERVER_2")), ("one", c.var("K8S_SERVER"))] {
        let out = run(&[
            "install",
            "--cluster",
            id,
            "--kubeconfig",
            admin,
            "--self-renew",
        ]);
        let err = stderr(&out);
        assert!(out.status.success(), "{}", text(&out));
        assert!(
            err.contains(&format!("objects to {server}")),
            "install --cluster {id}: {err}"
        );
    }

    let before: Vec<String> = roots
        .iter()
        .map(|p| std::fs::read_to_string(p).unwrap())
        .collect();
    let out = run(&["root-token", "--cluster", "two"]);
    assert!(out.status.success(), "{}", text(&out));
    let after: Vec<String> = roots
        .iter()
        .map(|p| std::fs::read_to_string(p).unwrap())
        .collect();
    assert!(
        after[0] == before[0] && after[1] != before[1],
        "only cluster two's token is renewed"
    );
    let out = run(&["root-token"]);
    assert!(out.status.success(), "{}", text(&out));
    let renewed: Vec<String> = roots
        .iter()
        .map(|p| std::fs::read_to_string(p).unwrap())
        .collect();
    assert!(
        renewed[0] != after[0] && renewed[1] != after[1],
        "the timer's run renews both"
    );

    let out = run(&["render", "--user", user, "--cluster", "one"]);
    let yaml = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        yaml.starts_with("# cluster one\n") && yaml.contains(&format!("name: {}{user}", site.ns1)),
        "{yaml}"
    );
    assert!(!yaml.contains(&site.ns2), "{yaml}");

    let list = site.dir.join("users");
    std::fs::write(&list, format!("{user}\n")).unwrap();
    let out = run(&["reconcile", "--users", list.to_str().unwrap()]);
    let err = stderr(&out);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        err.contains("cluster one:")
            && err.contains("cluster two:")
            && err.matches("reconciled 1 of 1 users").count() == 2,
        "{err}"
    );
    assert!(namespace_exists_1(&format!("{}{user}", site.ns1)));
    assert!(namespace_exists_2(&format!("{}{user}", site.ns2)));
    // doctor: a section per cluster, each checking its own cluster file.
    let out = run(&["doctor"]);
    let report = String::from_utf8_lossy(&out.stdout);
    for id in ["one", "two"] {
        assert!(
            report.contains(&format!("== cluster {id}\n"))
                && report.contains(&format!(
                    "dashboard: {}",
                    site.dir.join(format!("clusters.d/{id}.yml")).display()
                )),
            "{}",
            text(&out)
        );
    }
    let out = run(&["render", "--user", user, "--cluster", "three"]);
    assert_eq!(out.status.code(), Some(64), "{}", text(&out));
    assert!(stderr(&out).contains("known: one, two"), "{}", text(&out));
    let _ = std::fs::remove_dir_all(&site.dir);
}
