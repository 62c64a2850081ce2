//! End-to-end tests of the user's kubeconfig: the real hook binary run as
//! root the way OnDemand runs it, real Linux users, real tokens from the
//! local Dex, and real kubectl run as those users against the local
//! cluster (`tests/cluster/up`).
//!
//! The Dex users (alice, bob, carol.smith) are shared with other test
//! files, so these tests only use their own entries (user entry prefix,
//! cluster and context names unique to the test) and pass `--context`.
//! File-safety tests use Linux users of their own (`kc-*`).

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::{Tokens, cluster, files_under, linux_user, prefix, scratch, text};
use serde_json::Value;

/// kubectl and the cluster CA where every user can read them (the state
/// directory is root-only).
fn shared() -> &'static (PathBuf, PathBuf) {
    static SHARED: OnceLock<(PathBuf, PathBuf)> = OnceLock::new();
    SHARED.get_or_init(|| {
        let dir = PathBuf::from(format!("/tmp/ood-e2e-kc-bin-{}", std::process::id()));
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

/// A hook.env for this cluster: entry names and namespaces unique to `tag`.
fn hook_env(dir: &Path, tag: &str, mode: &str, extra: &str) -> PathBuf {
    let c = cluster();
    cluster().hook_env(
        dir,
        &format!(
            "NAMESPACE_PREFIX=\"{p}\"\nK8S_USERNAME_PREFIX=\"{tag}-\"\nK8S_CLUSTER_NAME=\"{tag}\"\n\
             K8S_SERVER=\"{}\"\nK8S_CA_FILE=\"{}\"\nK8S_CREDENTIALS={mode}\n{extra}",
            c.var("K8S_SERVER"),
            shared().1.display(),
            p = prefix(tag),
        ),
    )
}

fn hook_cmd(user: &str, env: &Path, tokens: Option<&Tokens>) -> Command {
    let mut cmd = cluster().hook();
    cmd.arg("--user").arg(user).arg("--hook-env").arg(env);
    if let Some(t) = tokens {
        cmd.env("OOD_OIDC_ACCESS_TOKEN", &t.access)
            .env("OOD_OIDC_REFRESH_TOKEN", &t.refresh);
    }
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    cmd
}

fn run_hook(user: &str, env: &Path, tokens: Option<&Tokens>) -> Output {
    hook_cmd(user, env, tokens).output().expect("run the hook")
}

fn home_of(user: &str) -> PathBuf {
    linux_user(user).2
}

/// kubectl as `user`, with nothing but their own home (and `env`).
fn kubectl_user(user: &str, args: &[&str], env: &[(&str, &str)]) -> Output {
    let home = home_of(user);
    let mut cmd = Command::new("runuser");
    cmd.args(["-u", user, "--", "env", "-i"])
        .arg(format!("HOME={}", home.display()))
        .arg("PATH=/usr/bin:/bin");
    for (k, v) in env {
        cmd.arg(format!("{k}={v}"));
    }
    cmd.arg(&shared().0).args(args).current_dir("/");
    cmd.output().expect("runuser kubectl")
}

fn config(home: &Path) -> Value {
    let text = std::fs::read_to_string(home.join(".kube/config")).expect("read kubeconfig");
    serde_saphyr::from_str(&text).expect("kubeconfig parses")
}

fn entry<'a>(cfg: &'a Value, list: &str, name: &str) -> Option<&'a Value> {
    cfg[list]
        .as_array()?
        .iter()
        .find(|e| e["name"].as_str() == Some(name))
}

fn assert_secret_absent(home: &Path) {
    let secret = cluster().var("OIDC_CLIENT_SECRET");
    for f in files_under(home) {
        let data = std::fs::read(&f).unwrap_or_default();
        assert!(
            !String::from_utf8_lossy(&data).contains(secret),
            "the portal's client secret is in {}",
            f.display()
        );
    }
}

/// The whole "kubectl works in my namespace, not in another" check.
fn assert_kubectl_scoped(user: &str, tag: &str, env: &[(&str, &str)]) {
    let ns = format!("{}{}", prefix(tag), user.replace('.', "-"));
    let own = kubectl_user(user, &["--context", tag, "get", "pods"], env);
    assert!(
        own.status.success(),
        "kubectl get pods as {user} in {ns}: {}",
        text(&own)
    );
    let other = kubectl_user(
        user,
        &["--context", tag, "get", "pods", "-n", "kube-system"],
        env,
    );
    assert!(
        !other.status.success() && String::from_utf8_lossy(&other.stderr).contains("Forbidden"),
        "kubectl get pods as {user} in kube-system should be forbidden: {}",
        text(&other)
    );
}

fn no_tokens_in(out: &Output, tokens: &Tokens) {
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    for t in [&tokens.access, &tokens.refresh] {
        assert!(!all.contains(t.as_str()), "a token is in the hook's output");
    }
}

#[test]
fn auth_provider_mode_works_with_kubectl() {
    let user = "alice";
    linux_user(user);
    let dir = scratch("kc-ap");
    let env = hook_env(&dir, "kcap", "auth-provider", "");
    let tokens = cluster().login(user);
    let out = run_hook(user, &env, Some(&tokens));
    assert!(out.status.success(), "{}", text(&out));
    no_tokens_in(&out, &tokens);
    let cfg = config(&home_of(user));
    let e = entry(&cfg, "users", &format!("kcap-{user}")).expect("user entry");
    let c = &e["user"]["auth-provider"];
    assert_eq!(c["name"], "oidc");
    assert_eq!(c["config"]["id-token"], tokens.access.as_str());
    assert_eq!(c["config"]["refresh-token"], tokens.refresh.as_str());
    assert_eq!(c["config"]["client-id"], cluster().var("OIDC_CLIENT_ID"));
    assert_eq!(c["config"]["idp-issuer-url"], cluster().var("OIDC_ISSUER"));
    assert_kubectl_scoped(user, "kcap", &[]);
}

/// The test IdP's token lifetime in seconds (tests/cluster/lib.sh).
fn token_ttl() -> u64 {
    let ttl = cluster().var("OIDC_TOKEN_TTL");
    ttl.strip_suffix('s')
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("OIDC_TOKEN_TTL={ttl}: expected seconds like 20s"))
}

/// auth-provider promises refresh: kubectl's oidc provider refreshes with
/// the refresh token and the client secret, and must trust the IdP's site
/// CA (IDP_CA_FILE, embedded as idp-certificate-authority-data) to do so.
/// Checked past twice the token lifetime, as a user would meet it.
#[test]
fn auth_provider_mode_keeps_working_past_twice_the_token_lifetime() {
    // bob: no other test here holds a portal-client session of his (Dex
    // keeps one refresh token per user and client), and no test looks for
    // the client secret in his home (this mode puts it there).
    let user = "bob";
    linux_user(user);
    let dir = scratch("kc-ap-refresh");
    let env = hook_env(
        &dir,
        "kcapr",
        "auth-provider",
        &format!("IDP_CA_FILE=\"{}\"\n", shared().1.display()),
    );
    let tokens = cluster().login(user);
    let logged_in = std::time::Instant::now();
    let out = run_hook(user, &env, Some(&tokens));
    assert!(out.status.success(), "{}", text(&out));
    let cfg = config(&home_of(user));
    let e = entry(&cfg, "users", "kcapr-bob").expect("user entry");
    let ca = e["user"]["auth-provider"]["config"]["idp-certificate-authority-data"]
        .as_str()
        .expect("idp-certificate-authority-data");
    assert!(!ca.is_empty());
    assert_kubectl_scoped(user, "kcapr", &[]);

    let wait = Duration::from_secs(2 * token_ttl() + 2).saturating_sub(logged_in.elapsed());
    std::thread::sleep(wait);
    assert_kubectl_scoped(user, "kcapr", &[]);
    let cfg = config(&home_of(user));
    let e = entry(&cfg, "users", "kcapr-bob").expect("user entry");
    assert_ne!(
        e["user"]["auth-provider"]["config"]["id-token"],
        tokens.access.as_str(),
        "kubectl did not refresh"
    );
}

#[test]
fn token_mode_works_with_kubectl() {
    // alice: bob's portal session belongs to the auth-provider refresh test.
    let user = "alice";
    linux_user(user);
    let dir = scratch("kc-tok");
    let env = hook_env(&dir, "kctok", "token", "");
    let tokens = cluster().login(user);
    let out = run_hook(user, &env, Some(&tokens));
    assert!(out.status.success(), "{}", text(&out));
    let cfg = config(&home_of(user));
    let e = entry(&cfg, "users", &format!("kctok-{user}")).expect("user entry");
    assert_eq!(e["user"], serde_json::json!({"token": tokens.access}));
    let ctx = entry(&cfg, "contexts", "kctok").expect("context");
    assert_eq!(
        ctx["context"]["namespace"],
        format!("{}alice", prefix("kctok"))
    );
    assert_kubectl_scoped(user, "kctok", &[]);

    // An admin's run without tokens leaves the credentials as they are.
    let out = run_hook(user, &env, None);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("left as they are"),
        "{}",
        text(&out)
    );
    let after = config(&home_of(user));
    assert_eq!(entry(&after, "users", "kctok-alice"), Some(e));
}

/// The cache file of an exec-mode entry.
fn exec_cache(home: &Path, entry_name: &str) -> PathBuf {
    home.join(".kube/cache/ood-k8s-bootstrap")
        .join(format!("{entry_name}.json"))
}

fn set_cache_expiry(path: &Path, expiry: u64) {
    let mut v: Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    v["expiry"] = expiry.into();
    // Overwrite in place: owner and mode stay the user's.
    std::fs::write(path, serde_json::to_vec(&v).unwrap()).unwrap();
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// The plugin needs the IdP's CA; the test IdP's is not in the system
/// store, and kubectl passes its environment to the plugin.
fn idp_ca_env() -> Vec<(&'static str, String)> {
    vec![("SSL_CERT_FILE", shared().1.display().to_string())]
}

#[test]
fn exec_mode_works_with_kubectl_and_keeps_the_secret_out_of_home() {
    let user = "carol.smith";
    linux_user(user);
    let home = home_of(user);
    let dir = scratch("kc-exec");
    let env = hook_env(&dir, "kcexec", "exec", "");
    let tokens = cluster().login(user);
    let out = run_hook(user, &env, Some(&tokens));
    assert!(out.status.success(), "{}", text(&out));
    no_tokens_in(&out, &tokens);

    let cfg = config(&home);
    let e = entry(&cfg, "users", "kcexec-carol.smith").expect("user entry");
    let exec = &e["user"]["exec"];
    assert_eq!(exec["apiVersion"], "client.authentication.k8s.io/v1");
    assert_eq!(exec["interactiveMode"], "Never");
    let args = exec["args"].to_string();
    assert!(!args.contains(&tokens.access) && !args.contains(&tokens.refresh));

    let cache = exec_cache(&home, "kcexec-carol.smith");
    let meta = std::fs::metadata(&cache).unwrap();
    assert_eq!(meta.mode() & 0o777, 0o600);
    assert_eq!(
        std::fs::metadata(cache.parent().unwrap()).unwrap().mode() & 0o777,
        0o700
    );
    assert_eq!(meta.uid(), linux_user(user).0);

    let ca = idp_ca_env();
    let ca: Vec<(&str, &str)> = ca.iter().map(|(k, v)| (*k, v.as_str())).collect();
    assert_kubectl_scoped(user, "kcexec", &ca);
    assert_secret_absent(&home);

    // What exec mode cannot do: the portal's own refresh token belongs to
    // its confidential client, so the plugin (no secret in the home) cannot
    // refresh it. With OnDemand's login, kubectl stops at the first expiry
    // and says why; K8S_CREDENTIALS=broker is the mode that refreshes it.
    set_cache_expiry(&cache, now() - 1);
    let out = kubectl_user(user, &["--context", "kcexec", "get", "pods"], &ca);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("log in to Open OnDemand again")
            && err.contains("confidential client cannot be refreshed without its secret"),
        "{}",
        text(&out)
    );
    assert_secret_absent(&home);
}

/// Password grant as the public kubectl client, asking for the API
/// server's client as audience too when `audience` is given.
fn public_login(user: &str, audience: Option<&str>) -> Result<Tokens, String> {
    let c = cluster();
    let password = c
        .var("OIDC_TEST_USERS")
        .split_whitespace()
        .find_map(|p| p.strip_prefix(user).and_then(|r| r.strip_prefix(':')))
        .unwrap();
    let mut scope = "openid+profile+email+groups+offline_access".to_owned();
    if let Some(a) = audience {
        scope.push_str(&format!("+audience:server:client_id:{a}"));
    }
    let form = format!(
        "grant_type=password&username={user}&password={password}&scope={scope}&client_id={}",
        c.var("OIDC_PUBLIC_CLIENT_ID")
    );
    let out = c.dex_token_request(&form, false);
    let v: Value = serde_json::from_slice(&out.stdout).map_err(|e| e.to_string())?;
    match (v["access_token"].as_str(), v["refresh_token"].as_str()) {
        (Some(a), Some(r)) => Ok(Tokens {
            access: a.to_owned(),
            refresh: r.to_owned(),
            id: v["id_token"].as_str().unwrap_or_default().to_owned(),
        }),
        _ => Err(String::from_utf8_lossy(&out.stdout).into_owned()),
    }
}

/// The plugin itself, as the user, with the args of the kubeconfig entry.
fn run_plugin(user: &str, exec: &Value) -> Output {
    let home = home_of(user);
    let mut cmd = Command::new("runuser");
    cmd.args(["-u", user, "--", "env", "-i"])
        .arg(format!("HOME={}", home.display()))
        .arg(format!("SSL_CERT_FILE={}", shared().1.display()))
        .arg(exec["command"].as_str().unwrap());
    for a in exec["args"].as_array().unwrap() {
        cmd.arg(a.as_str().unwrap());
    }
    cmd.current_dir("/").output().unwrap()
}

#[test]
fn exec_plugin_refreshes_an_expired_token_as_a_public_client() {
    let user = "kc-refresh";
    linux_user(user);
    let home = home_of(user);
    let dir = scratch("kc-refresh");
    let public = cluster().var("OIDC_PUBLIC_CLIENT_ID");
    let env = hook_env(
        &dir,
        "kcref",
        "exec",
        &format!("K8S_EXEC_CLIENT_ID=\"{public}\"\n"),
    );
    let tokens = public_login("alice", None).expect("public client login");
    let out = run_hook(user, &env, Some(&tokens));
    assert!(out.status.success(), "{}", text(&out));
    // aud is the public client only: the hook warns the API server may refuse it
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--oidc-client-id"),
        "{}",
        text(&out)
    );
    let cfg = config(&home);
    let exec = entry(&cfg, "users", "kcref-kc-refresh").unwrap()["user"]["exec"].clone();
    let cache = exec_cache(&home, "kcref-kc-refresh");

    // valid: the cached token, no IdP round trip
    let out = run_plugin(user, &exec);
    assert!(out.status.success(), "{}", text(&out));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["kind"], "ExecCredential");
    assert_eq!(v["status"]["token"], tokens.access.as_str());

    // "expired": refreshed at the discovered token endpoint, no secret
    set_cache_expiry(&cache, now() - 1);
    let out = run_plugin(user, &exec);
    assert!(out.status.success(), "{}", text(&out));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let fresh = v["status"]["token"].as_str().unwrap();
    assert_ne!(fresh, tokens.access);
    let c: Value = serde_json::from_slice(&std::fs::read(&cache).unwrap()).unwrap();
    assert_eq!(c["token"], fresh);
    // A new expiry, in the future (the test IdP's lifetime is short).
    assert!(c["expiry"].as_u64().unwrap() > now() + 5, "{c}");
    let meta = std::fs::metadata(&cache).unwrap();
    assert_eq!(
        (meta.mode() & 0o777, meta.uid()),
        (0o600, linux_user(user).0)
    );

    // Several kubectl at once: one refresh, and every one gets the token
    // it gave. Dex rotates refresh tokens and refuses a used one, so two
    // refreshes at once would fail one of them; afterwards the refresh
    // token used is refused (it was spent) and the cached one works (the
    // session survived).
    set_cache_expiry(&cache, now() - 1);
    let spent: Value = serde_json::from_slice(&std::fs::read(&cache).unwrap()).unwrap();
    let spent = spent["refresh_token"].as_str().unwrap().to_owned();
    let handles: Vec<_> = (0..4)
        .map(|_| {
            let exec = exec.clone();
            std::thread::spawn(move || run_plugin("kc-refresh", &exec))
        })
        .collect();
    let mut got = Vec::new();
    for h in handles {
        let out = h.join().unwrap();
        assert!(out.status.success(), "{}", text(&out));
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        got.push(v["status"]["token"].as_str().unwrap().to_owned());
    }
    let c: Value = serde_json::from_slice(&std::fs::read(&cache).unwrap()).unwrap();
    assert!(
        got.iter().all(|t| *t == c["token"]),
        "the four runs got different tokens: one refresh each?"
    );
    let form = format!("grant_type=refresh_token&refresh_token={spent}&client_id={public}");
    let reuse: Value =
        serde_json::from_slice(&cluster().dex_token_request(&form, false).stdout).unwrap();
    assert!(
        reuse.get("access_token").is_none() && reuse["error"].is_string(),
        "the spent refresh token still works: {reuse}"
    );
    set_cache_expiry(&cache, now() - 1);
    let out = run_plugin(user, &exec);
    assert!(out.status.success(), "after the burst: {}", text(&out));
    assert_secret_absent(&home);
}

/// What exec mode can refresh, and only that: tokens of a *public* client.
/// Here the login itself is made as the public client (which asks Dex for
/// the API server's client `ood-portal` as audience, allowed because
/// `ood-portal` lists it in `trustedPeers`); then kubectl keeps working
/// past the token lifetime. An OnDemand portal logs in with its
/// confidential client, whose tokens exec mode cannot refresh (see
/// `exec_mode_works_with_kubectl_and_keeps_the_secret_out_of_home`); the
/// broker mode covers that case (tests/e2e_broker.rs).
#[test]
fn exec_mode_keeps_working_after_expiry_only_with_a_public_clients_login() {
    let user = "dave";
    linux_user(user);
    let home = home_of(user);
    let dir = scratch("kc-exec2");
    let c = cluster();
    let public = c.var("OIDC_PUBLIC_CLIENT_ID");
    let tokens = public_login(user, Some(c.var("OIDC_CLIENT_ID"))).unwrap_or_else(|e| {
        panic!(
            "Dex refused the public client {public} the audience {}: {e}\n\
             tests/cluster/up must give the portal client \"trustedPeers\": [\"{public}\"] \
             so a public client can hold tokens the API server accepts",
            c.var("OIDC_CLIENT_ID")
        )
    });
    let env = hook_env(
        &dir,
        "kcexec2",
        "exec",
        &format!("K8S_EXEC_CLIENT_ID=\"{public}\"\n"),
    );
    let out = run_hook(user, &env, Some(&tokens));
    assert!(out.status.success(), "{}", text(&out));
    let ca = idp_ca_env();
    let ca: Vec<(&str, &str)> = ca.iter().map(|(k, v)| (*k, v.as_str())).collect();
    assert_kubectl_scoped(user, "kcexec2", &ca);

    let cache = exec_cache(&home, "kcexec2-dave");
    // With the test IdP's short token lifetime (tests/cluster/lib.sh), wait
    // for the real expiry; with a long one, fake it in the cache.
    let ttl = c.var("OIDC_TOKEN_TTL");
    let short_ttl = ttl
        .strip_suffix('s')
        .and_then(|n| n.parse::<u64>().ok())
        .is_some_and(|n| n <= 60);
    let wait = short_ttl || std::env::var("OOD_TEST_WAIT_TOKEN_TTL").is_ok();
    if wait {
        // Real expiry (with a short OIDC_TOKEN_TTL, e.g. 20s).
        let c: Value = serde_json::from_slice(&std::fs::read(&cache).unwrap()).unwrap();
        let exp = c["expiry"].as_u64().unwrap();
        std::thread::sleep(Duration::from_secs(exp.saturating_sub(now()) + 1));
    } else {
        set_cache_expiry(&cache, now() - 1);
    }
    assert_kubectl_scoped(user, "kcexec2", &ca);
    let after: Value = serde_json::from_slice(&std::fs::read(&cache).unwrap()).unwrap();
    assert_ne!(after["token"], tokens.access.as_str(), "not refreshed");
    assert_secret_absent(&home);
}

#[test]
fn other_entries_survive() {
    let user = "kc-keep";
    let (uid, gid, home) = linux_user(user);
    let kube = home.join(".kube");
    let _ = std::fs::remove_dir_all(&kube);
    std::fs::create_dir(&kube).unwrap();
    let mine = "apiVersion: v1\nkind: Config\ncurrent-context: work\n\
preferences:\n  colors: true\n\
clusters:\n- name: work\n  cluster:\n    server: https://work.example:6443\n    certificate-authority-data: QUJD\n    extensions:\n    - name: x\n      extension: {a: \"007\", b: 'true'}\n\
- name: kckeep\n  cluster:\n    server: https://old.example\n    proxy-url: http://proxy:3128\n\
contexts:\n- name: work\n  context: {cluster: work, user: me, namespace: team}\n\
users:\n- name: me\n  user:\n    client-certificate-data: Q0VSVA==\n    client-key-data: S0VZ\n\
- name: other\n  user:\n    exec:\n      apiVersion: client.authentication.k8s.io/v1\n      command: /bin/true\n      interactiveMode: Never\n\
extensions:\n- name: top\n  extension: {v: 1}\n";
    std::fs::write(kube.join("config"), mine).unwrap();
    for p in [&kube, &kube.join("config")] {
        std::os::unix::fs::chown(p, Some(uid), Some(gid)).unwrap();
    }
    std::fs::set_permissions(kube.join("config"), PermissionsExt::from_mode(0o644)).unwrap();
    let before: Value = serde_saphyr::from_str(mine).unwrap();

    let dir = scratch("kc-keep");
    let env = hook_env(&dir, "kckeep", "token", "");
    let tokens = cluster().login("alice");
    let out = run_hook(user, &env, Some(&tokens));
    assert!(out.status.success(), "{}", text(&out));
    let after = config(&home);
    for key in ["preferences", "extensions", "current-context"] {
        assert_eq!(after[key], before[key], "{key}");
    }
    assert_eq!(after["clusters"][0], before["clusters"][0]);
    assert_eq!(after["contexts"][0], before["contexts"][0]);
    assert_eq!(after["users"][0], before["users"][0]);
    assert_eq!(after["users"][1], before["users"][1]);
    assert_eq!(after["users"].as_array().unwrap().len(), 3);
    // the dashboard's cluster entry: ours set, the user's extra key kept
    let cl = &after["clusters"][1]["cluster"];
    assert_eq!(cl["server"], cluster().var("K8S_SERVER"));
    assert_eq!(cl["proxy-url"], "http://proxy:3128");
    let meta = std::fs::metadata(kube.join("config")).unwrap();
    assert_eq!((meta.mode() & 0o777, meta.uid()), (0o600, uid));
    // kubectl reads it
    let view = kubectl_user(user, &["config", "view", "-o", "json"], &[]);
    assert!(view.status.success(), "{}", text(&view));
    // same input, same bytes
    let first = std::fs::read(kube.join("config")).unwrap();
    let out = run_hook(user, &env, Some(&tokens));
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("unchanged"),
        "{}",
        text(&out)
    );
    assert_eq!(std::fs::read(kube.join("config")).unwrap(), first);
}

#[test]
fn unparsable_kubeconfig_is_never_overwritten() {
    let user = "kc-bad";
    let (uid, gid, home) = linux_user(user);
    let kube = home.join(".kube");
    let _ = std::fs::remove_dir_all(&kube);
    std::fs::create_dir(&kube).unwrap();
    std::fs::write(kube.join("config"), "users: [ {name: x\n").unwrap();
    for p in [&kube, &kube.join("config")] {
        std::os::unix::fs::chown(p, Some(uid), Some(gid)).unwrap();
    }
    let dir = scratch("kc-bad");
    let env = hook_env(&dir, "kcbad", "token", "");
    let tokens = cluster().login("alice");
    let out = run_hook(user, &env, Some(&tokens));
    assert_eq!(out.status.code(), Some(65), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&kube.join("config").display().to_string()) && err.contains(user),
        "{}",
        text(&out)
    );
    assert_eq!(
        std::fs::read_to_string(kube.join("config")).unwrap(),
        "users: [ {name: x\n"
    );
    assert!(!kube.join("config.lock").exists());
}

#[test]
fn symlinks_and_unsafe_directories_are_refused() {
    let dir = scratch("kc-sym");
    let env = hook_env(&dir, "kcsym", "token", "");
    let tokens = cluster().login("alice");

    // ~/.kube/config -> a root-owned file
    let (uid, gid, home) = linux_user("kc-sym1");
    let root_file = dir.join("root-owned");
    std::fs::write(&root_file, "precious\n").unwrap();
    std::fs::set_permissions(&root_file, PermissionsExt::from_mode(0o666)).unwrap();
    let kube = home.join(".kube");
    let _ = std::fs::remove_dir_all(&kube);
    std::fs::create_dir(&kube).unwrap();
    std::os::unix::fs::chown(&kube, Some(uid), Some(gid)).unwrap();
    std::os::unix::fs::symlink(&root_file, kube.join("config")).unwrap();
    let out = run_hook("kc-sym1", &env, Some(&tokens));
    assert_eq!(out.status.code(), Some(77), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("symbolic link"),
        "{}",
        text(&out)
    );
    assert_eq!(std::fs::read_to_string(&root_file).unwrap(), "precious\n");

    // ~/.kube -> another user's ~/.kube
    let (vuid, vgid, vhome) = linux_user("kc-victim");
    let vkube = vhome.join(".kube");
    let _ = std::fs::remove_dir_all(&vkube);
    std::fs::create_dir(&vkube).unwrap();
    std::fs::write(vkube.join("config"), "victim: true\n").unwrap();
    for p in [&vkube, &vkube.join("config")] {
        std::os::unix::fs::chown(p, Some(vuid), Some(vgid)).unwrap();
    }
    std::fs::set_permissions(&vkube, PermissionsExt::from_mode(0o777)).unwrap();
    std::fs::set_permissions(vkube.join("config"), PermissionsExt::from_mode(0o666)).unwrap();
    let (_, _, home2) = linux_user("kc-sym2");
    let kube2 = home2.join(".kube");
    let _ = std::fs::remove_dir_all(&kube2);
    let _ = std::fs::remove_file(&kube2);
    std::os::unix::fs::symlink(&vkube, &kube2).unwrap();
    let out = run_hook("kc-sym2", &env, Some(&tokens));
    assert_eq!(out.status.code(), Some(77), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("symbolic link"),
        "{}",
        text(&out)
    );
    assert_eq!(
        std::fs::read_to_string(vkube.join("config")).unwrap(),
        "victim: true\n"
    );
    let names: Vec<_> = std::fs::read_dir(&vkube)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, vec![std::ffi::OsString::from("config")]);

    // ~/.kube owned by root
    let (_, _, home3) = linux_user("kc-sym3");
    let kube3 = home3.join(".kube");
    let _ = std::fs::remove_dir_all(&kube3);
    std::fs::create_dir(&kube3).unwrap();
    std::fs::set_permissions(&kube3, PermissionsExt::from_mode(0o755)).unwrap();
    let out = run_hook("kc-sym3", &env, Some(&tokens));
    assert_eq!(out.status.code(), Some(77), "{}", text(&out));
    assert!(!kube3.join("config").exists());
}

fn assert_clean_kube(home: &Path, entry_name: &str) {
    let cfg = config(home);
    assert!(
        entry(&cfg, "users", entry_name).is_some(),
        "entry {entry_name} missing"
    );
    let names: Vec<String> = std::fs::read_dir(home.join(".kube"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        names.iter().all(|n| n == "config" || n == "cache"),
        "left behind in ~/.kube: {names:?}"
    );
}

#[test]
fn concurrent_runs_for_one_user() {
    let user = "kc-race";
    let (_, _, home) = linux_user(user);
    let _ = std::fs::remove_dir_all(home.join(".kube"));
    let dir = scratch("kc-race");
    let env = hook_env(&dir, "kcrace", "token", "");
    let tokens = cluster().login("alice");
    // first run creates the namespace; then 10 at once
    let out = run_hook(user, &env, Some(&tokens));
    assert!(out.status.success(), "{}", text(&out));
    let children: Vec<_> = (0..10)
        .map(|_| hook_cmd(user, &env, Some(&tokens)).spawn().unwrap())
        .collect();
    for c in children {
        let out = c.wait_with_output().unwrap();
        assert!(out.status.success(), "{}", text(&out));
    }
    assert_clean_kube(&home, "kcrace-kc-race");
}

/// Killed at random moments (the hook and its writer child together), a
/// run leaves the kubeconfig as it was or as it would have written it —
/// never empty, truncated or without the user's own entries. Every run
/// changes the file (two logins' tokens, alternating), so the kills land
/// in writes; the test fails unless at least one kill landed inside a
/// write (it left the writer's lock or temporary file behind), running
/// more than the first 50 if need be (at most 200). The seed is printed;
/// OOD_TEST_SEED replays one.
#[test]
fn killed_at_random_moments_the_file_is_old_or_new_never_torn() {
    let user = "kc-kill";
    let (uid, gid, home) = linux_user(user);
    let _ = std::fs::remove_dir_all(home.join(".kube"));
    let dir = scratch("kc-kill");
    let env = hook_env(&dir, "kckill", "token", "");
    let logins = [cluster().login("alice"), cluster().login("alice")];
    assert_ne!(logins[0].access, logins[1].access);
    let out = run_hook(user, &env, Some(&logins[0]));
    assert!(out.status.success(), "{}", text(&out));
    // The user's own entries, which every run must keep.
    let mut cfg = config(&home);
    let own = [
        (
            "clusters",
            serde_json::json!({"name": "my-cluster", "cluster": {"server": "https://my.example:6443"}}),
        ),
        (
            "users",
            serde_json::json!({"name": "my-own", "user": {"token": "keep-me"}}),
        ),
        (
            "contexts",
            serde_json::json!({"name": "my-ctx", "context": {"cluster": "my-cluster", "user": "my-own"}}),
        ),
    ];
    for (list, e) in &own {
        cfg[list].as_array_mut().expect("a list").push(e.clone());
    }
    let path = home.join(".kube/config");
    std::fs::write(&path, serde_json::to_vec_pretty(&cfg).unwrap()).unwrap();
    std::os::unix::fs::chown(&path, Some(uid), Some(gid)).unwrap();
    // What a complete run with each login's tokens leaves.
    let mut expected = Vec::new();
    let mut full = 0;
    for tokens in &logins {
        let t = Instant::now();
        let out = run_hook(user, &env, Some(tokens));
        assert!(out.status.success(), "{}", text(&out));
        full = full.max(t.elapsed().as_micros() as u64);
        let cfg = config(&home);
        for (list, e) in &own {
            assert_eq!(entry(&cfg, list, e["name"].as_str().unwrap()), Some(e));
        }
        expected.push(cfg);
    }
    assert_ne!(
        expected[0], expected[1],
        "the two logins' files must differ"
    );
    let mut seed = std::env::var("OOD_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap()
                .subsec_nanos() as u64
                | 1
        });
    eprintln!("killed_at_random_moments: seed {seed} (replay with OOD_TEST_SEED={seed})");
    let mut killed_in_write = 0;
    let mut replaced = 0;
    let mut runs = 0;
    for i in 0..200 {
        if i >= 50 && killed_in_write > 0 {
            break;
        }
        runs += 1;
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        // anywhere in a run, mostly near its end where the file is written
        let delay = seed % (full + full / 4 + 1);
        let before = std::fs::read(&path).unwrap();
        let marks_before = write_marks(&home);
        let mut cmd = hook_cmd(user, &env, Some(&logins[i % 2]));
        cmd.process_group(0);
        let child = cmd.spawn().unwrap();
        std::thread::sleep(Duration::from_micros(delay));
        // the hook and its writer child together
        let _ = nix::sys::signal::killpg(
            nix::unistd::Pid::from_raw(child.id() as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
        let _ = child.wait_with_output();
        let text = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("run {i} (killed after {delay} us, seed {seed}): {e}"));
        let now: Value = serde_saphyr::from_str(&text).unwrap_or_else(|e| {
            panic!("run {i} (killed after {delay} us, seed {seed}): torn kubeconfig: {e}")
        });
        assert!(
            expected.contains(&now),
            "run {i} (killed after {delay} us, seed {seed}): neither the old file nor the new:\n{text}"
        );
        if std::fs::read(&path).unwrap() != before {
            replaced += 1;
        }
        // Inside a write: this run's writer had taken its lock or begun its
        // temporary file (one not there, as it is, before the run: an
        // earlier killed run's stale lock is not this run's), and neither
        // was removed.
        if !write_marks(&home).is_subset(&marks_before) {
            killed_in_write += 1;
        }
    }
    eprintln!(
        "killed_at_random_moments: {replaced} of {runs} runs had replaced the file, \
         {killed_in_write} were killed inside a write"
    );
    assert!(
        killed_in_write > 0,
        "no kill of {runs} landed inside a write (seed {seed}): the test proved nothing"
    );
    // afterwards the hook still works, and cleans up after the killed runs
    let out = run_hook(user, &env, Some(&logins[0]));
    assert!(out.status.success(), "{}", text(&out));
    assert_clean_kube(&home, "kckill-kc-kill");
}

/// The kubeconfig writer's lock and temporary files in `home`'s ~/.kube,
/// each as (name, inode, modification time in ns): a file made or taken
/// over anew is a new element.
fn write_marks(home: &Path) -> std::collections::BTreeSet<(String, u64, i128)> {
    std::fs::read_dir(home.join(".kube"))
        .unwrap()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let meta = e.metadata().ok()?;
            let ns = i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec());
            (name.ends_with(".lock") || name.ends_with(".tmp")).then_some((name, meta.ino(), ns))
        })
        .collect()
}

/// Every process's argv (and the writer child's environment) while the
/// hook runs: no token anywhere.
#[test]
fn tokens_never_in_argv_or_the_writers_environment() {
    let user = "kc-argv";
    let (uid, gid, home) = linux_user(user);
    let kube = home.join(".kube");
    let _ = std::fs::remove_dir_all(&kube);
    std::fs::create_dir(&kube).unwrap();
    std::os::unix::fs::chown(&kube, Some(uid), Some(gid)).unwrap();
    std::fs::set_permissions(&kube, PermissionsExt::from_mode(0o700)).unwrap();
    // A fresh foreign lock keeps the writer child alive for a while
    // (it is taken over as stale after a few seconds).
    std::fs::write(kube.join("config.lock"), "").unwrap();
    let dir = scratch("kc-argv");
    let env = hook_env(&dir, "kcargv", "exec", "");
    let tokens = cluster().login("alice");
    let mut child = hook_cmd(user, &env, Some(&tokens)).spawn().unwrap();
    let needles = [tokens.access.clone(), tokens.refresh.clone()];
    let mut saw_writer = false;
    while child.try_wait().unwrap().is_none() {
        for p in std::fs::read_dir("/proc").unwrap().flatten() {
            let name = p.file_name();
            if !name.to_string_lossy().chars().all(|c| c.is_ascii_digit()) {
                continue;
            }
            let Ok(cmdline) = std::fs::read(p.path().join("cmdline")) else {
                continue;
            };
            let cmdline = String::from_utf8_lossy(&cmdline).into_owned();
            for n in &needles {
                assert!(!cmdline.contains(n.as_str()), "a token is in an argv");
            }
            let status = std::fs::read_to_string(p.path().join("status")).unwrap_or_default();
            let ppid = status
                .lines()
                .find_map(|l| l.strip_prefix("PPid:"))
                .map(str::trim)
                .unwrap_or("");
            // Only our hook's writer: other tests run hooks concurrently.
            if cmdline.contains("__write-kubeconfig") && ppid == child.id().to_string() {
                saw_writer = true;
                let environ = std::fs::read(p.path().join("environ")).unwrap_or_default();
                let environ = String::from_utf8_lossy(&environ);
                assert!(
                    !environ.contains("OOD_OIDC")
                        && !needles.iter().any(|n| environ.contains(n.as_str())),
                    "the writer's environment holds tokens"
                );
                let uid_line = status.lines().find(|l| l.starts_with("Uid:")).unwrap_or("");
                if !uid_line.is_empty() {
                    assert!(
                        uid_line
                            .split_whitespace()
                            .skip(1)
                            .all(|u| u == uid.to_string()),
                        "the writer runs with {uid_line}"
                    );
                }
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    no_tokens_in(&out, &tokens);
    assert!(saw_writer, "never saw the writer child");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("stale lock"),
        "{}",
        text(&out)
    );
}

/// Issue 25 (promises): the writer child is not dumpable — while it runs
/// (kept waiting by a fresh foreign `config.lock`), the user it runs as may
/// not read its environment through /proc (the same ptrace access check a
/// ptrace attach or a read of its memory takes), and its /proc/PID files
/// are root's.
#[test]
fn the_writer_child_is_not_dumpable_for_its_user() {
    let user = "kc-dump";
    let (uid, gid, home) = linux_user(user);
    let kube = home.join(".kube");
    let _ = std::fs::remove_dir_all(&kube);
    std::fs::create_dir(&kube).unwrap();
    std::os::unix::fs::chown(&kube, Some(uid), Some(gid)).unwrap();
    std::fs::set_permissions(&kube, PermissionsExt::from_mode(0o700)).unwrap();
    std::fs::write(kube.join("config.lock"), "").unwrap();
    let dir = scratch("kc-dump");
    let env = hook_env(&dir, "kcdump", "exec", "");
    let tokens = cluster().login("alice");
    let mut child = hook_cmd(user, &env, Some(&tokens)).spawn().unwrap();
    let mut checked = 0;
    let mut seen = std::collections::BTreeSet::new();
    while child.try_wait().unwrap().is_none() {
        for p in std::fs::read_dir("/proc").unwrap().flatten() {
            let name = p.file_name().to_string_lossy().into_owned();
            if !name.chars().all(|c| c.is_ascii_digit()) {
                continue;
            }
            let Ok(cmdline) = std::fs::read(p.path().join("cmdline")) else {
                continue;
            };
            let status = std::fs::read_to_string(p.path().join("status")).unwrap_or_default();
            let ppid = status
                .lines()
                .find_map(|l| l.strip_prefix("PPid:"))
                .map(str::trim)
                .unwrap_or("");
            if !String::from_utf8_lossy(&cmdline).contains("__write-kubeconfig")
                || ppid != child.id().to_string()
                || !status.lines().any(|l| {
                    l.starts_with("Uid:")
                        && l.split_whitespace().skip(1).all(|u| u == uid.to_string())
                })
            {
                continue;
            }
            // Judged from its second sighting on (20 ms later): between its
            // exec and its first step it is briefly dumpable.
            if seen.insert(name.clone()) {
                continue;
            }
            // The user's own process, yet /proc/PID is root's and its
            // environment is refused to the user.
            let owner = std::fs::metadata(p.path().join("environ")).map(|m| m.uid());
            let out = Command::new("setpriv")
                .args(["--reuid", &uid.to_string(), "--regid", &gid.to_string()])
                .args(["--clear-groups", "cat"])
                .arg(p.path().join("environ"))
                .output()
                .unwrap();
            // Only a verdict while the child was still there throughout.
            let still = std::fs::read(p.path().join("cmdline")).is_ok_and(|c| c == cmdline);
            if !still || owner.is_err() {
                continue;
            }
            assert_eq!(owner.unwrap(), 0, "/proc/{name}/environ is not root's");
            assert!(!out.status.success(), "the user read the writer's environ");
            assert!(
                String::from_utf8_lossy(&out.stderr).contains("Permission denied"),
                "{}",
                text(&out)
            );
            checked += 1;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert!(checked > 0, "never caught the writer child running");
}

/// Token exchange refused by a real IdP (Dex has no RFC 8693 exchange for
/// OAuth clients): exit 77 with the IdP's error and a hint, the cluster side
/// applied, the kubeconfig's existing credentials untouched. The Linux
/// account is the test's own (carol.smith's kubeconfig, compared byte for
/// byte, is written by the exec-mode test beside it); the login is Dex's
/// carol.smith.
#[test]
fn refused_token_exchange_keeps_existing_credentials() {
    let user = "kc-xrefused";
    linux_user(user);
    let home = home_of(user);
    let dir = scratch("kc-xchg-refused");
    let tokens = cluster().login("carol.smith");
    let plain = hook_env(&dir, "kcxr", "token", "");
    let out = run_hook(user, &plain, Some(&tokens));
    assert!(out.status.success(), "{}", text(&out));
    let before = std::fs::read(home.join(".kube/config")).unwrap();

    let env = hook_env(
        &dir,
        "kcxr",
        "token",
        &format!(
            "K8S_TOKEN_EXCHANGE_AUDIENCE=\"kubernetes\"\nIDP_CA_FILE=\"{}\"\n",
            shared().1.display()
        ),
    );
    let out = run_hook(user, &env, Some(&tokens));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(77), "{}", text(&out));
    assert!(
        stderr.contains("refused the token exchange") && stderr.contains("namespace "),
        "names the refusal and still reports the cluster side:\n{stderr}"
    );
    no_tokens_in(&out, &tokens);
    assert!(!stderr.contains(cluster().var("OIDC_CLIENT_SECRET")));
    assert_eq!(
        std::fs::read(home.join(".kube/config")).unwrap(),
        before,
        "kubeconfig changed"
    );
}

/// An IdP that cannot be reached: bounded by the run's deadline, exit 69,
/// cluster side applied, credentials untouched.
#[test]
fn unreachable_idp_for_the_exchange_is_bounded() {
    let user = "carol.smith";
    linux_user(user);
    let dir = scratch("kc-xchg-down");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let tokens = cluster().login(user);
    let env = hook_env(
        &dir,
        "kcxd",
        "token",
        &format!(
            "K8S_TOKEN_EXCHANGE_AUDIENCE=\"kubernetes\"\nIDP_ISSUER_URL=\"https://127.0.0.1:{port}/dex\"\nHOOK_TIMEOUT_SECONDS=3\n"
        ),
    );
    let started = std::time::Instant::now();
    let out = run_hook(user, &env, Some(&tokens));
    let took = started.elapsed();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(69), "{}", text(&out));
    assert!(
        took < Duration::from_secs(3) + common::MARGIN,
        "took {took:?}"
    );
    assert!(stderr.contains("cannot reach the IdP"), "{stderr}");
    // The cluster side applied, as the API server says: the namespace of
    // this run's own prefix exists, with the login's RoleBinding.
    let ns = format!("{}carol-smith", prefix("kcxd"));
    assert!(
        cluster().get_json(&["namespace", &ns]).is_some(),
        "no namespace {ns}:\n{stderr}"
    );
    let binding = format!("{user}-ood-user");
    assert!(
        cluster()
            .get_json(&["rolebinding", "-n", &ns, &binding])
            .is_some(),
        "no RoleBinding {binding} in {ns}"
    );
    let cfg = config(&home_of(user));
    assert!(entry(&cfg, "users", &format!("kcxd-{user}")).is_none());
}

// ---- the writer child cannot hang root (issue 16 item 3) -------------------

/// The pids whose parent (in /proc/PID/stat) is `parent`.
fn children_of(parent: u32) -> Vec<i32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|s| {
                    s.rsplit_once(')')?
                        .1
                        .split_whitespace()
                        .nth(1)?
                        .parse::<u32>()
                        .ok()
                })
                == Some(parent)
        })
        .collect()
}

/// A job larger than a pipe's buffer (auth-provider mode embeds a big
/// IDP_CA_FILE bundle) and a writer child that is stopped (SIGSTOP, which
/// the user it runs as may send it) before it has read it: root's hook
/// still ends within HOOK_TIMEOUT_SECONDS, exit 75, with the child killed.
#[test]
fn a_stopped_writer_cannot_hang_the_hook() {
    let user = "kc-stop";
    linux_user(user);
    let dir = scratch("writer-stop");
    // ~200 KiB of CA bundle: far over a pipe's 64 KiB.
    let pem = std::fs::read_to_string(shared().1.as_path()).unwrap();
    let bundle = dir.join("big-ca.crt");
    std::fs::write(&bundle, pem.repeat(200_000 / pem.len() + 1)).unwrap();
    std::fs::set_permissions(&bundle, PermissionsExt::from_mode(0o600)).unwrap();
    let deadline = Duration::from_secs(3);
    let env = hook_env(
        &dir,
        "kcstop",
        "auth-provider",
        &format!(
            "IDP_CA_FILE=\"{}\"\nHOOK_TIMEOUT_SECONDS={}\n",
            bundle.display(),
            deadline.as_secs()
        ),
    );
    let tokens = cluster().login("alice");
    let started = Instant::now();
    let mut hook = hook_cmd(user, &env, Some(&tokens)).spawn().unwrap();
    // Stop the writer the moment it exists (before it can have read the
    // job): the hook's only child.
    let writer = loop {
        if let Some(pid) = children_of(hook.id()).first() {
            break *pid;
        }
        assert!(
            hook.try_wait().unwrap().is_none() && started.elapsed() < Duration::from_secs(10),
            "the hook ended (or took 10 s) without starting the writer"
        );
        std::thread::sleep(Duration::from_micros(100));
    };
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(writer),
        nix::sys::signal::Signal::SIGSTOP,
    )
    .unwrap();
    // Bounded even if the hook hangs (as it did): killed after 3× the deadline.
    let status = loop {
        if let Some(status) = hook.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > deadline * 3 {
            let _ = hook.kill();
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(writer),
                nix::sys::signal::Signal::SIGKILL,
            );
            panic!(
                "the hook still runs {:?} after its start",
                started.elapsed()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let took = started.elapsed();
    let out = hook.wait_with_output().unwrap();
    assert_eq!(status.code(), Some(75), "{}", text(&out));
    assert!(
        took < deadline + common::MARGIN,
        "took {took:?} with a {deadline:?} deadline"
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("did not finish within") && stderr.contains("was killed"),
        "{stderr}"
    );
    // The stopped writer is gone (killed, and reaped or left to init).
    std::thread::sleep(Duration::from_millis(200));
    let state = std::fs::read_to_string(format!("/proc/{writer}/stat")).unwrap_or_default();
    assert!(
        state.is_empty()
            || state
                .rsplit_once(')')
                .unwrap()
                .1
                .trim_start()
                .starts_with('Z'),
        "the writer survives: {state}"
    );
}

// ---- promises with no test before (issue 19 item 3) ------------------------

/// `--cluster-only` leaves the kubeconfig alone, byte for byte and as a
/// file (inode and mtime), even with fresh tokens in the environment — which
/// without it do change the file.
#[test]
fn cluster_only_leaves_the_kubeconfig_byte_for_byte() {
    let user = "kc-conly";
    let (_, _, home) = linux_user(user);
    let dir = scratch("kc-conly");
    let env = hook_env(&dir, "kcconly", "token", "");
    let out = run_hook(user, &env, Some(&cluster().login("alice")));
    assert!(out.status.success(), "{}", text(&out));
    let path = home.join(".kube/config");
    let before = std::fs::read(&path).unwrap();
    let meta = std::fs::metadata(&path).unwrap();
    let fresh = cluster().login("alice");
    let out = hook_cmd(user, &env, Some(&fresh))
        .arg("--cluster-only")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        !String::from_utf8_lossy(&out.stderr).contains("kubeconfig"),
        "{}",
        text(&out)
    );
    assert_eq!(std::fs::read(&path).unwrap(), before, "the file changed");
    let after = std::fs::metadata(&path).unwrap();
    assert_eq!(
        (after.ino(), after.mtime(), after.mtime_nsec()),
        (meta.ino(), meta.mtime(), meta.mtime_nsec()),
        "the file was rewritten"
    );
    let out = run_hook(user, &env, Some(&fresh));
    assert!(out.status.success(), "{}", text(&out));
    assert_ne!(
        std::fs::read(&path).unwrap(),
        before,
        "the same run without --cluster-only changes it"
    );
}

/// The numeric ids on a /proc/PID/status line (`Uid:`, `Gid:`, `Groups:`).
fn status_ids(status: &str, key: &str) -> Vec<u32> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|n| n.parse().ok())
        .collect()
}

/// The writer child runs with the user's uid, primary gid and every
/// supplementary group of the group database — none of root's. It is
/// caught while it runs (stopped the moment its uid is the user's, so what
/// /proc says of it holds still) and then let go.
#[test]
fn the_writer_runs_with_the_users_gid_and_supplementary_groups() {
    let user = "kc-groups";
    let (uid, gid, _) = linux_user(user);
    let group = "kc-extra";
    let _ = Command::new("groupadd").arg(group).output();
    let out = Command::new("usermod")
        .args(["-aG", group, user])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let ids = Command::new("id").args(["-G", user]).output().unwrap();
    let mut expected: Vec<u32> = String::from_utf8_lossy(&ids.stdout)
        .split_whitespace()
        .map(|g| g.parse().unwrap())
        .collect();
    expected.sort_unstable();
    assert!(expected.len() >= 2, "{expected:?}");
    let dir = scratch("kc-groups");
    let env = hook_env(&dir, "kcgroups", "token", "");
    let tokens = cluster().login("alice");
    for _ in 0..20 {
        let mut hook = hook_cmd(user, &env, Some(&tokens)).spawn().unwrap();
        let mut seen = None;
        while seen.is_none() && hook.try_wait().unwrap().is_none() {
            for pid in children_of(hook.id()) {
                let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
                    continue;
                };
                if status_ids(&status, "Uid:").first() != Some(&uid) {
                    continue;
                }
                let pid = nix::unistd::Pid::from_raw(pid);
                let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGSTOP);
                seen = std::fs::read_to_string(format!("/proc/{pid}/status")).ok();
                let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGCONT);
            }
        }
        let out = hook.wait_with_output().unwrap();
        assert!(out.status.success(), "{}", text(&out));
        let Some(status) = seen else {
            continue; // the writer was quicker than the look; again
        };
        assert_eq!(status_ids(&status, "Uid:"), [uid; 4], "{status}");
        assert_eq!(status_ids(&status, "Gid:"), [gid; 4], "{status}");
        let mut groups = status_ids(&status, "Groups:");
        groups.sort_unstable();
        assert_eq!(groups, expected, "{status}");
        return;
    }
    panic!("the writer was never caught running in 20 runs");
}
