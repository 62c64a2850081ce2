//! Shared helpers for the end-to-end tests: the local cluster started by
//! `tests/cluster/up`, the built binary, real Linux users and real OIDC
//! tokens from the local Dex.
//!
//! Nothing here is skipped when something is missing: a test that cannot
//! reach the cluster fails, loudly, with what to run.
#![allow(dead_code)]

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;

/// The cluster under test, as described by `tests/cluster/.state/env`
/// (the local cluster of `tests/cluster/up`), or by the file named in
/// `OOD_TEST_ENV` (an existing cluster prepared by `tests/cluster/external`
/// from an admin kubeconfig: no test IdP, no audit log).
pub struct Cluster {
    vars: HashMap<String, String>,
}

pub fn cluster() -> &'static Cluster {
    static CLUSTER: OnceLock<Cluster> = OnceLock::new();
    CLUSTER.get_or_init(|| {
        let path = std::env::var_os("OOD_TEST_ENV")
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/cluster/.state/env")
            });
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
            panic!(
                "the cluster under test is not prepared ({}: {e}); run tests/cluster/up \
                 (or tests/cluster/external ADMIN_KUBECONFIG with OOD_TEST_ENV) first",
                path.display()
            )
        });
        let vars = text
            .lines()
            .filter_map(|l| l.strip_prefix("export "))
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.trim_matches('"').to_owned()))
            .collect();
        Cluster { vars }
    })
}

impl Cluster {
    pub fn var(&self, key: &str) -> &str {
        self.vars.get(key).unwrap_or_else(|| {
            if self.external() {
                panic!(
                    "{key} does not exist in external mode (no test IdP, no audit log): \
                     a test that needs it belongs in an `idp` module, which tests/external-run does not run"
                )
            }
            panic!("{key} missing from tests/cluster/.state/env")
        })
    }

    /// True against an existing cluster (`tests/cluster/external`).
    pub fn external(&self) -> bool {
        self.vars.get("OOD_TEST_MODE").map(String::as_str) == Some("external")
    }

    /// kubectl acting as `user`: with the user's real token from the test
    /// IdP on the local cluster, by impersonation (the admin's `--as`)
    /// where no test IdP exists.
    pub fn kubectl_user(&self, user: &str, args: &[&str]) -> Output {
        if self.external() {
            let mut full = vec![
                "--as".to_owned(),
                user.to_owned(),
                "--as-group".to_owned(),
                "system:authenticated".to_owned(),
            ];
            full.extend(args.iter().map(|a| (*a).to_owned()));
            let full: Vec<&str> = full.iter().map(String::as_str).collect();
            return self.kubectl_as(self.var("KUBECONFIG_ADMIN"), &full);
        }
        let tokens = self.login(user);
        let dir = scratch(&format!("as-{user}"));
        let kc = dir.join("kubeconfig");
        std::fs::write(
            &kc,
            format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster: {{server: \"{}\", certificate-authority: \"{}\"}}\n\
                 contexts:\n- name: c\n  context: {{cluster: c, user: u}}\ncurrent-context: c\n\
                 users:\n- name: u\n  user: {{token: \"{}\"}}\n",
                self.var("K8S_SERVER"),
                self.var("K8S_CA_FILE"),
                tokens.access
            ),
        )
        .expect("write the user's kubeconfig");
        let out = self.kubectl_as(kc.to_str().expect("utf-8 path"), args);
        let _ = std::fs::remove_dir_all(&dir);
        out
    }

    /// kubectl with the given kubeconfig; returns the output, checked or not.
    pub fn kubectl_as(&self, kubeconfig: &str, args: &[&str]) -> Output {
        Command::new(self.var("KUBECTL"))
            .arg("--kubeconfig")
            .arg(kubeconfig)
            .args(args)
            .output()
            .expect("run kubectl")
    }

    /// kubectl as cluster admin; panics on failure.
    pub fn admin(&self, args: &[&str]) -> String {
        let out = self.kubectl_as(self.var("KUBECONFIG_ADMIN"), args);
        assert!(
            out.status.success(),
            "kubectl {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).expect("utf-8")
    }

    /// kubectl as admin, returning the parsed JSON of `get ... -o json`, or
    /// None when the object does not exist.
    pub fn get_json(&self, args: &[&str]) -> Option<serde_json::Value> {
        let mut full = vec!["get"];
        full.extend_from_slice(args);
        full.extend_from_slice(&["-o", "json"]);
        let out = self.kubectl_as(self.var("KUBECONFIG_ADMIN"), &full);
        if !out.status.success() {
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(
                err.contains("NotFound") || err.contains("not found"),
                "kubectl {full:?}: {err}"
            );
            return None;
        }
        Some(serde_json::from_slice(&out.stdout).expect("json"))
    }

    /// Tokens for a Dex test user from the password grant, as
    /// mod_auth_openidc would hold them after a portal login.
    pub fn login(&self, user: &str) -> Tokens {
        self.login_client(
            user,
            self.var("OIDC_CLIENT_ID"),
            Some(self.var("OIDC_CLIENT_SECRET")),
        )
    }

    pub fn login_client(&self, user: &str, client_id: &str, secret: Option<&str>) -> Tokens {
        let password = self
            .var("OIDC_TEST_USERS")
            .split_whitespace()
            .find_map(|pair| pair.strip_prefix(user).and_then(|r| r.strip_prefix(':')))
            .unwrap_or_else(|| panic!("{user} is not a Dex test user"));
        let mut form = format!(
            "grant_type=password&username={user}&password={password}&scope=openid+profile+email+groups+offline_access&client_id={client_id}"
        );
        if let Some(secret) = secret {
            form.push_str(&format!("&client_secret={secret}"));
        }
        // The form (with secrets) goes through stdin, never argv.
        let out = pipe(
            Command::new("curl").args([
                "-sS",
                "--max-time",
                "20",
                "--fail-with-body",
                "--cacert",
                self.var("OIDC_CA_FILE"),
                "--data-binary",
                "@-",
                &format!("{}/token", self.var("OIDC_ISSUER")),
            ]),
            form.as_bytes(),
        );
        assert!(
            out.status.success(),
            "password grant for {user}: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("token json");
        Tokens {
            access: v["access_token"].as_str().expect("access_token").to_owned(),
            refresh: v["refresh_token"]
                .as_str()
                .expect("refresh_token")
                .to_owned(),
            id: v["id_token"].as_str().expect("id_token").to_owned(),
        }
    }

    /// A hook.env pointing at this cluster, in `dir`, with `extra` lines.
    /// (Without a test IdP, in external mode, the IdP keys are left out.)
    pub fn hook_env(&self, dir: &Path, extra: &str) -> PathBuf {
        let path = dir.join("hook.env");
        let idp = if self.external() {
            String::new()
        } else {
            format!(
                "IDP_ISSUER_URL=\"{}\"\nCLIENT_ID=\"{}\"\nCLIENT_SECRET=\"{}\"\n",
                self.var("OIDC_ISSUER"),
                self.var("OIDC_CLIENT_ID"),
                self.var("OIDC_CLIENT_SECRET"),
            )
        };
        let text = format!(
            "# written by the e2e tests\n\
             NETWORK_POLICY_ALLOW_CIDR=\"127.0.0.1/32\"\n{idp}{extra}"
        );
        std::fs::write(&path, text).expect("write hook.env");
        path
    }

    /// The hook as OnDemand runs it, as root with the `ondemand`
    /// ServiceAccount's kubeconfig (never the admin's).
    pub fn hook(&self) -> Command {
        let mut cmd = Command::new(bin());
        cmd.env_clear()
            .env("PATH", "/usr/local/bin:/usr/bin:/bin")
            .env("KUBECONFIG", self.var("KUBECONFIG_ONDEMAND"))
            .stdin(Stdio::null());
        cmd
    }
}

pub struct Tokens {
    pub access: String,
    pub refresh: String,
    pub id: String,
}

/// The binary under test.
pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_ood-k8s-bootstrap"))
}

/// Runs `cmd` with `input` on stdin.
pub fn pipe(cmd: &mut Command, input: &[u8]) -> Output {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(input)
        .expect("write stdin");
    child.wait_with_output().expect("wait")
}

/// A fresh scratch directory for one test, root-only: the files tests put
/// there (hook.env with the client secret, kubeconfigs with tokens) are
/// readable by nobody else.
pub fn scratch(name: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let dir = std::env::temp_dir().join(format!("ood-e2e-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch dir");
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))
        .expect("chmod scratch dir");
    dir
}

/// A real Linux account (created if missing) with a home directory.
/// Returns (uid, gid, home).
pub fn linux_user(name: &str) -> (u32, u32, PathBuf) {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _guard = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let exists = Command::new("id")
        .arg("-u")
        .arg(name)
        .output()
        .expect("id")
        .status
        .success();
    if !exists {
        let out = Command::new("useradd")
            .args(["--create-home", "--shell", "/bin/bash", "--badname", name])
            .output()
            .or_else(|_| {
                Command::new("useradd")
                    .args(["--create-home", "--shell", "/bin/bash", name])
                    .output()
            })
            .expect("useradd");
        if !out.status.success() {
            let out2 = Command::new("useradd")
                .args(["--create-home", "--shell", "/bin/bash", name])
                .output()
                .expect("useradd");
            assert!(
                out2.status.success(),
                "useradd {name}: {}",
                String::from_utf8_lossy(&out2.stderr)
            );
        }
    }
    let id = |flag: &str| -> u32 {
        let out = Command::new("id").arg(flag).arg(name).output().expect("id");
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .expect("numeric id")
    };
    let home = Command::new("getent")
        .args(["passwd", name])
        .output()
        .expect("getent");
    let home = String::from_utf8_lossy(&home.stdout)
        .split(':')
        .nth(5)
        .expect("home field")
        .trim()
        .to_owned();
    (id("-u"), id("-g"), PathBuf::from(home))
}

/// stdout+stderr of a finished command, for assertion messages.
pub fn text(out: &Output) -> String {
    format!(
        "status {:?}\nstdout: {}\nstderr: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A namespace prefix unique to this test process, so the tests can run
/// again and again against the same cluster: `TAG-RUNID-`.
pub fn prefix(tag: &str) -> String {
    static RUN: OnceLock<String> = OnceLock::new();
    let run = RUN.get_or_init(|| {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let mut n = (u64::from(std::process::id()) << 20) ^ u64::from(nanos);
        let mut s = String::new();
        for _ in 0..5 {
            s.push(char::from(
                b"abcdefghijklmnopqrstuvwxyz0123456789"[(n % 36) as usize],
            ));
            n /= 36;
        }
        s
    });
    let prefix = format!("{tag}-{run}-");
    // Against an existing cluster, every namespace prefix handed out is
    // recorded, so `tests/cluster/external --cleanup` deletes exactly the
    // namespaces the tests made.
    if let Some(file) = cluster().vars.get("OOD_TEST_CLEANUP_FILE") {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(file)
            .expect("the cleanup list");
        writeln!(f, "{prefix}").expect("record the prefix");
    }
    prefix
}

/// Number of (non-dry-run) writes the `ondemand` ServiceAccount has made to
/// namespaces starting with `prefix`, from the API server's audit log.
pub fn ondemand_writes(prefix: &str) -> usize {
    let log = std::fs::read_to_string(cluster().var("AUDIT_LOG")).expect("audit log");
    log.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|e| e["user"]["username"] == "system:serviceaccount:ondemand:ondemand")
        .filter(|e| {
            matches!(
                e["verb"].as_str(),
                Some("create" | "update" | "patch" | "delete")
            )
        })
        .filter(|e| {
            !e["requestURI"]
                .as_str()
                .unwrap_or_default()
                .contains("dryRun")
        })
        .filter(|e| {
            let r = &e["objectRef"];
            let ns = r["namespace"]
                .as_str()
                .or_else(|| r["name"].as_str().filter(|_| r["resource"] == "namespaces"));
            ns.is_some_and(|n| n.starts_with(prefix))
        })
        .count()
}
