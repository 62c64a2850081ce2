//! Shared helpers for the end-to-end tests: the local cluster started by
//! `tests/cluster/up`, the built binary, real Linux users and real OIDC
//! tokens from the local Dex and Keycloak.
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

    /// A key the env file may leave out (None: not there).
    pub fn var_opt(&self, key: &str) -> Option<&str> {
        self.vars.get(key).map(String::as_str)
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
        self.token_kubeconfig(&kc, "u", &tokens.access);
        let out = self.kubectl_as(kc.to_str().expect("utf-8 path"), args);
        let _ = std::fs::remove_dir_all(&dir);
        out
    }

    /// Writes a root-only kubeconfig at `path` for this cluster whose one
    /// user entry, `entry`, holds `token`.
    pub fn token_kubeconfig(&self, path: &Path, entry: &str, token: &str) {
        use std::os::unix::fs::PermissionsExt;
        std::fs::write(
            path,
            format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster: {{server: \"{}\", certificate-authority: \"{}\"}}\n\
                 contexts:\n- name: c\n  context: {{cluster: c, user: {entry}}}\ncurrent-context: c\n\
                 users:\n- name: {entry}\n  user: {{token: \"{token}\"}}\n",
                self.var("K8S_SERVER"),
                self.var("K8S_CA_FILE"),
            ),
        )
        .expect("write a token kubeconfig");
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
            .expect("chmod 600 the token kubeconfig");
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

    /// POSTs `form` to Dex's token endpoint with curl; the form (with
    /// secrets and tokens) goes through stdin, never argv. With
    /// `fail_on_http_error`, an HTTP error makes curl fail (its body still
    /// printed).
    pub fn dex_token_request(&self, form: &str, fail_on_http_error: bool) -> Output {
        let mut args = vec!["-sS", "--max-time", "20"];
        if fail_on_http_error {
            args.push("--fail-with-body");
        }
        let endpoint = format!("{}/token", self.var("OIDC_ISSUER"));
        args.extend([
            "--cacert",
            self.var("OIDC_CA_FILE"),
            "--data-binary",
            "@-",
            &endpoint,
        ]);
        pipe(Command::new("curl").args(&args), form.as_bytes())
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
        let out = self.dex_token_request(&form, true);
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

/// Keycloak, the IdP most OnDemand sites run: logins through its portal
/// clients, RFC 8693 token exchange, refresh, and what the API server makes
/// of a token. Every token and secret travels through stdin or a root-only
/// file, never argv.
impl Cluster {
    /// A Keycloak test user's password (from `KEYCLOAK_TEST_USERS`).
    pub fn keycloak_password(&self, user: &str) -> &str {
        self.var("KEYCLOAK_TEST_USERS")
            .split_whitespace()
            .find_map(|pair| pair.strip_prefix(user).and_then(|r| r.strip_prefix(':')))
            .unwrap_or_else(|| panic!("{user} is not a Keycloak test user"))
    }

    /// The logins in `KEYCLOAK_TEST_USERS`.
    pub fn keycloak_users(&self) -> Vec<&str> {
        self.var("KEYCLOAK_TEST_USERS")
            .split_whitespace()
            .filter_map(|pair| pair.split_once(':').map(|(u, _)| u))
            .collect()
    }

    /// One POST to Keycloak's token endpoint, the form on curl's stdin.
    /// Ok with the JSON answer on success, Err with the IdP's error JSON
    /// (`error`, `error_description`) otherwise.
    pub fn keycloak_token_request(
        &self,
        form: &[(&str, &str)],
    ) -> Result<serde_json::Value, serde_json::Value> {
        self.keycloak_post_form(self.var("KEYCLOAK_TOKEN_ENDPOINT"), form)
    }

    fn keycloak_post_form(
        &self,
        url: &str,
        form: &[(&str, &str)],
    ) -> Result<serde_json::Value, serde_json::Value> {
        let (code, json) = self.keycloak_curl(&["--data-binary", "@-", url], &form_encode(form));
        if code == 200 { Ok(json) } else { Err(json) }
    }

    /// curl to Keycloak with `input` on stdin: (HTTP status, JSON answer,
    /// Null when empty).
    fn keycloak_curl(&self, args: &[&str], input: &str) -> (u16, serde_json::Value) {
        let out = pipe(
            Command::new("curl")
                .args(["-sS", "--max-time", "20", "--cacert"])
                .arg(self.var("KEYCLOAK_CA_FILE"))
                .args(["--write-out", "\n%{http_code}"])
                .args(args),
            input.as_bytes(),
        );
        assert!(out.status.success(), "curl to Keycloak: {}", text(&out));
        let answer = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = answer.rsplit_once('\n').unwrap_or(("", &answer));
        let code: u16 = code.parse().expect("an HTTP status");
        let json = if body.trim().is_empty() {
            serde_json::Value::Null
        } else {
            serde_json::from_str(body)
                .unwrap_or_else(|e| panic!("Keycloak answered {code} with non-JSON ({e}): {body}"))
        };
        (code, json)
    }

    /// The master realm's admin (`KEYCLOAK_ADMIN_USER`) calling Keycloak's
    /// admin REST API: `method` on `KEYCLOAK_URL` + `path` (e.g.
    /// `/admin/realms/ood/clients`), with an optional JSON body. Returns
    /// the HTTP status and the JSON answer. The admin's token goes to curl
    /// in a root-only header file.
    pub fn keycloak_admin(
        &self,
        method: &str,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> (u16, serde_json::Value) {
        use std::os::unix::fs::OpenOptionsExt;
        use std::sync::atomic::{AtomicU32, Ordering};
        static N: AtomicU32 = AtomicU32::new(0);
        let base = self.var("KEYCLOAK_URL");
        let token = self
            .keycloak_post_form(
                &format!("{base}/realms/master/protocol/openid-connect/token"),
                &[
                    ("grant_type", "password"),
                    ("client_id", "admin-cli"),
                    ("username", self.var("KEYCLOAK_ADMIN_USER")),
                    ("password", self.var("KEYCLOAK_ADMIN_PASSWORD")),
                ],
            )
            .unwrap_or_else(|e| panic!("Keycloak admin login: {e}"))["access_token"]
            .as_str()
            .expect("admin access token")
            .to_owned();
        let dir = scratch(&format!("kcadmin{}", N.fetch_add(1, Ordering::Relaxed)));
        let header = dir.join("auth.hdr");
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&header)
            .and_then(|mut f| writeln!(f, "Authorization: Bearer {token}"))
            .expect("write the admin header file");
        let header_arg = format!("@{}", header.display());
        let url = format!("{base}{path}");
        let mut args = vec![
            "-X",
            method,
            "-H",
            &header_arg,
            "-H",
            "Content-Type: application/json",
        ];
        if body.is_some() {
            args.extend(["--data-binary", "@-"]);
        }
        args.push(&url);
        let input = body.map(|b| b.to_string()).unwrap_or_default();
        let answer = self.keycloak_curl(&args, &input);
        let _ = std::fs::remove_dir_all(&dir);
        answer
    }

    /// Tokens for a Keycloak test user from the password grant as the
    /// confidential portal client (`KEYCLOAK_PORTAL_CLIENT_ID`), as
    /// mod_auth_openidc holds them after a portal login.
    pub fn keycloak_login(&self, user: &str) -> Tokens {
        self.keycloak_login_client(
            user,
            self.var("KEYCLOAK_PORTAL_CLIENT_ID"),
            self.var("KEYCLOAK_PORTAL_CLIENT_SECRET"),
            None,
        )
    }

    /// Password grant as any confidential client of the realm, asking for
    /// `openid` plus `scope` (e.g. `KEYCLOAK_K8S_AUDIENCE_SCOPE`).
    pub fn keycloak_login_client(
        &self,
        user: &str,
        client_id: &str,
        secret: &str,
        scope: Option<&str>,
    ) -> Tokens {
        let scope = match scope {
            Some(s) => format!("openid {s}"),
            None => "openid".to_owned(),
        };
        let v = self
            .keycloak_token_request(&[
                ("grant_type", "password"),
                ("client_id", client_id),
                ("client_secret", secret),
                ("username", user),
                ("password", self.keycloak_password(user)),
                ("scope", &scope),
            ])
            .unwrap_or_else(|e| panic!("Keycloak password grant for {user} as {client_id}: {e}"));
        Tokens::from_json(&v)
    }

    /// An RFC 8693 standard token exchange of `subject` (an access token),
    /// by default as the portal client for the Kubernetes audience with the
    /// audience scope, asking for a refresh token; see [`Exchange`].
    pub fn keycloak_exchange(&self, subject: &str) -> Exchange<'_> {
        Exchange {
            cluster: self,
            subject: subject.to_owned(),
            client_id: self.var("KEYCLOAK_PORTAL_CLIENT_ID").to_owned(),
            secret: self.var("KEYCLOAK_PORTAL_CLIENT_SECRET").to_owned(),
            audience: Some(self.var("KEYCLOAK_K8S_AUDIENCE").to_owned()),
            scope: Some(self.var("KEYCLOAK_K8S_AUDIENCE_SCOPE").to_owned()),
            refresh: true,
        }
    }

    /// The refresh grant as a confidential client.
    pub fn keycloak_refresh(
        &self,
        client_id: &str,
        secret: &str,
        refresh: &str,
    ) -> Result<serde_json::Value, serde_json::Value> {
        self.keycloak_token_request(&[
            ("grant_type", "refresh_token"),
            ("client_id", client_id),
            ("client_secret", secret),
            ("refresh_token", refresh),
        ])
    }

    /// Who the API server takes a bearer token for: real kubectl's
    /// `auth whoami -o json` (a SelfSubjectReview), the token in a
    /// root-only kubeconfig. Ok(status.userInfo), or Err(kubectl's stderr).
    pub fn whoami(&self, token: &str) -> Result<serde_json::Value, String> {
        use std::os::unix::fs::OpenOptionsExt;
        use std::sync::atomic::{AtomicU32, Ordering};
        static N: AtomicU32 = AtomicU32::new(0);
        let dir = scratch(&format!("whoami{}", N.fetch_add(1, Ordering::Relaxed)));
        let path = dir.join("kubeconfig");
        let config = serde_json::json!({
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "c", "cluster": {
                "server": self.var("K8S_SERVER"),
                "certificate-authority": self.var("K8S_CA_FILE")}}],
            "users": [{"name": "u", "user": {"token": token}}],
            "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u"}}],
            "current-context": "c",
        });
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .and_then(|mut f| f.write_all(config.to_string().as_bytes()))
            .expect("write the whoami kubeconfig");
        let out = self.kubectl_as(
            path.to_str().expect("utf-8 path"),
            &["auth", "whoami", "-o", "json"],
        );
        let _ = std::fs::remove_dir_all(&dir);
        if out.status.success() {
            let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("whoami json");
            Ok(v["status"]["userInfo"].clone())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }
}

impl Tokens {
    /// From a token endpoint's JSON answer; refresh and ID tokens may be
    /// absent (then empty), the access token may not.
    pub fn from_json(v: &serde_json::Value) -> Tokens {
        let field = |k: &str| v[k].as_str().unwrap_or_default().to_owned();
        let access = field("access_token");
        assert!(!access.is_empty(), "no access_token in the IdP's answer");
        Tokens {
            access,
            refresh: field("refresh_token"),
            id: field("id_token"),
        }
    }
}

/// A token exchange request (RFC 8693) at Keycloak, builder style: start
/// from [`Cluster::keycloak_exchange`], change what the test is about, then
/// [`Exchange::send`].
pub struct Exchange<'a> {
    cluster: &'a Cluster,
    subject: String,
    client_id: String,
    secret: String,
    audience: Option<String>,
    scope: Option<String>,
    refresh: bool,
}

impl Exchange<'_> {
    /// Exchange as another confidential client.
    pub fn client(mut self, id: &str, secret: &str) -> Self {
        self.client_id = id.to_owned();
        self.secret = secret.to_owned();
        self
    }

    pub fn audience(mut self, audience: Option<&str>) -> Self {
        self.audience = audience.map(str::to_owned);
        self
    }

    pub fn scope(mut self, scope: Option<&str>) -> Self {
        self.scope = scope.map(str::to_owned);
        self
    }

    /// Whether to ask for a refresh token (`requested_token_type`).
    pub fn refresh(mut self, refresh: bool) -> Self {
        self.refresh = refresh;
        self
    }

    /// Ok with the token endpoint's answer, Err with the IdP's error JSON.
    pub fn send(self) -> Result<serde_json::Value, serde_json::Value> {
        let mut form = vec![
            (
                "grant_type",
                "urn:ietf:params:oauth:grant-type:token-exchange",
            ),
            ("client_id", self.client_id.as_str()),
            ("client_secret", self.secret.as_str()),
            ("subject_token", self.subject.as_str()),
            (
                "subject_token_type",
                "urn:ietf:params:oauth:token-type:access_token",
            ),
        ];
        if let Some(a) = &self.audience {
            form.push(("audience", a));
        }
        if let Some(s) = &self.scope {
            form.push(("scope", s));
        }
        if self.refresh {
            form.push((
                "requested_token_type",
                "urn:ietf:params:oauth:token-type:refresh_token",
            ));
        }
        self.cluster.keycloak_token_request(&form)
    }
}

/// An `application/x-www-form-urlencoded` body.
pub fn form_encode(pairs: &[(&str, &str)]) -> String {
    let enc = |s: &str| -> String {
        s.bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                    char::from(b).to_string()
                }
                b' ' => "+".to_owned(),
                _ => format!("%{b:02X}"),
            })
            .collect()
    };
    pairs
        .iter()
        .map(|(k, v)| format!("{}={}", enc(k), enc(v)))
        .collect::<Vec<_>>()
        .join("&")
}

/// The claims of a JWT, decoded but not verified (the API server verifies;
/// tests only read what the IdP put there).
pub fn jwt_claims(token: &str) -> serde_json::Value {
    use base64::Engine;
    let payload = token.split('.').nth(1).expect("a JWT has three parts");
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .expect("JWT payload is base64url");
    serde_json::from_slice(&bytes).expect("JWT payload is JSON")
}

/// A token's `aud` as a list, whether the IdP wrote a string or an array.
pub fn audiences(claims: &serde_json::Value) -> Vec<String> {
    match &claims["aud"] {
        serde_json::Value::String(s) => vec![s.clone()],
        serde_json::Value::Array(a) => a
            .iter()
            .filter_map(|v| v.as_str().map(str::to_owned))
            .collect(),
        _ => Vec::new(),
    }
}

/// kubectl and the cluster CA copied where every user can read them (the
/// state directory is root-only), for kubectl run as a real Linux user.
/// Returns (kubectl, ca.crt).
pub fn user_tools() -> &'static (PathBuf, PathBuf) {
    use std::os::unix::fs::PermissionsExt;
    static TOOLS: OnceLock<(PathBuf, PathBuf)> = OnceLock::new();
    TOOLS.get_or_init(|| {
        let dir = PathBuf::from(format!("/tmp/ood-e2e-tools-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("tools dir");
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755))
            .expect("chmod tools dir");
        let kubectl = dir.join("kubectl");
        std::fs::copy(cluster().var("KUBECTL"), &kubectl).expect("copy kubectl");
        std::fs::set_permissions(&kubectl, std::fs::Permissions::from_mode(0o755))
            .expect("chmod kubectl");
        let ca = dir.join("ca.crt");
        std::fs::copy(cluster().var("K8S_CA_FILE"), &ca).expect("copy the CA");
        std::fs::set_permissions(&ca, std::fs::Permissions::from_mode(0o644)).expect("chmod CA");
        (kubectl, ca)
    })
}

/// kubectl run as the Linux user `user` (runuser, empty environment but
/// HOME and PATH), so it reads that user's own `~/.kube/config`.
pub fn kubectl_as_user(user: &str, args: &[&str]) -> Output {
    let (_, _, home) = linux_user(user);
    Command::new("runuser")
        .args(["-u", user, "--", "env", "-i"])
        .arg(format!("HOME={}", home.display()))
        .arg("PATH=/usr/bin:/bin")
        .arg(&user_tools().0)
        .args(args)
        .current_dir("/")
        .output()
        .expect("runuser kubectl")
}

/// Every regular file under `dir` (no symlinks followed).
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in rd.flatten() {
        let p = e.path();
        match e.file_type() {
            Ok(t) if t.is_dir() => out.extend(files_under(&p)),
            Ok(t) if t.is_file() => out.push(p),
            _ => {}
        }
    }
    out
}

/// The binary under test, where every user may run it: the tests' Linux
/// users run it as kubectl's exec plugin, and the build may sit in a
/// directory only root can enter (CI builds under root's `~/.cache`). A
/// copy per build, made once, in a root-owned directory others can only
/// read; copies of earlier builds are removed.
pub fn bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let built = Path::new(env!("CARGO_BIN_EXE_ood-k8s-bootstrap"));
        let meta = std::fs::metadata(built).expect("the built binary");
        let shared = Path::new("/tmp/ood-e2e-bin");
        let _ = std::fs::create_dir(shared);
        let dir_meta = std::fs::symlink_metadata(shared).expect("/tmp/ood-e2e-bin");
        assert!(
            dir_meta.is_dir() && dir_meta.uid() == 0,
            "/tmp/ood-e2e-bin is not root's directory"
        );
        std::fs::set_permissions(shared, PermissionsExt::from_mode(0o755)).unwrap();
        let name = format!("{}-{}-{}", meta.size(), meta.mtime(), meta.mtime_nsec());
        let copy = shared.join(&name).join("ood-k8s-bootstrap");
        if copy.exists() {
            return copy;
        }
        // Copies of other builds are removed only once they are a day old:
        // another checkout's test run (a developer's beside CI's) may be
        // running its copy right now.
        let day = std::time::Duration::from_secs(24 * 3600);
        for old in std::fs::read_dir(shared).unwrap().flatten() {
            let stale = old
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|age| age > day);
            if stale && !old.file_name().to_string_lossy().starts_with('.') {
                let _ = std::fs::remove_dir_all(old.path());
            }
        }
        // Made aside and renamed into place: a test binary running at the
        // same time finds either no copy or a whole one.
        let tmp = shared.join(format!(".{name}.{}", std::process::id()));
        std::fs::create_dir_all(&tmp).unwrap();
        std::fs::copy(built, tmp.join("ood-k8s-bootstrap")).expect("copy the binary");
        for p in [&tmp, &tmp.join("ood-k8s-bootstrap")] {
            std::fs::set_permissions(p, PermissionsExt::from_mode(0o755)).unwrap();
        }
        if std::fs::rename(&tmp, shared.join(&name)).is_err() {
            let _ = std::fs::remove_dir_all(&tmp); // another test binary was first
        }
        copy
    })
    .clone()
}

/// `Key=value` lines of a shipped systemd unit (`packaging/systemd/UNIT`),
/// in order: the tests start what the units start, as they say it.
pub fn unit_values(unit: &str, key: &str) -> Vec<String> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("packaging/systemd")
        .join(unit);
    std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .lines()
        .filter_map(|l| l.strip_prefix(key)?.strip_prefix('='))
        .map(str::to_owned)
        .collect()
}

/// Waits (at most 30 s) until the API server's policy cache has the
/// `ood-uid-gid` admission policy in force in `ns`: `create_as_root(name)`
/// creates a pod running as root, which is retried (and deleted) until the
/// policy refuses it. Panics if it is refused for another reason. Each try
/// has a name of its own: an admitted pod is scheduled on the node and
/// takes a while to go, so its name is not free again at once.
pub fn until_uid_gid_policy_refuses(ns: &str, create_as_root: impl Fn(&str) -> Output) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    for attempt in 0.. {
        let name = format!("probe-root-{attempt}");
        let out = create_as_root(&name);
        if !out.status.success() {
            assert!(
                String::from_utf8_lossy(&out.stderr).contains("ood-uid-gid"),
                "{}",
                text(&out)
            );
            return;
        }
        cluster().admin(&["delete", "pod", "-n", ns, &name, "--wait=false"]);
        assert!(
            std::time::Instant::now() < deadline,
            "the policy never took effect"
        );
        std::thread::sleep(std::time::Duration::from_millis(300));
    }
}

/// How far past its deadline a test lets a run go before calling it
/// unbounded. Generous on purpose: the suites run beside fuzzers and each
/// other on few cores, so a test checks that a run is bounded by its
/// deadline and leaves how fast it is to the benchmark (bench/run).
pub const MARGIN: std::time::Duration = std::time::Duration::from_secs(5);

/// The hook's deadline when hook.env sets none (HOOK_TIMEOUT_SECONDS).
pub const DEFAULT_DEADLINE: std::time::Duration = std::time::Duration::from_secs(10);

/// Runs `cmd`, its stdout and stderr captured, and waits at most `limit`:
/// a run still going then is killed and the test fails naming `what`, so a
/// run that hangs fails the test instead of hanging the suite. Returns the
/// output and how long the run took.
pub fn output_within(
    cmd: &mut Command,
    limit: std::time::Duration,
    what: &str,
) -> (Output, std::time::Duration) {
    use std::io::Read;
    let started = std::time::Instant::now();
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{what}: cannot start: {e}"));
    let drain = |r: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut r) = r {
                let _ = r.read_to_end(&mut buf);
            }
            buf
        })
    };
    let out = drain(
        child
            .stdout
            .take()
            .map(|r| Box::new(r) as Box<dyn Read + Send>),
    );
    let err = drain(
        child
            .stderr
            .take()
            .map(|r| Box::new(r) as Box<dyn Read + Send>),
    );
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for the run") {
            break status;
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            // Not waiting for the output: a child of the run may hold it.
            panic!("{what}: still running after {limit:?}, killed");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    let took = started.elapsed();
    let output = Output {
        status,
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
    };
    (output, took)
}

/// A pass-through HTTPS proxy of the test's own in front of an IdP (or any
/// server whose certificate the test CA signed): tests/chaos's proxy with
/// no faults, its certificate signed by the same CA, writing one JSON line
/// per request it forwards and per answer it got. What the IdP was asked
/// is counted there, not in the client's own log. Stopped when dropped.
pub struct CountingProxy {
    child: std::process::Child,
    /// `https://127.0.0.1:PORT`
    pub url: String,
    events: PathBuf,
}

impl CountingProxy {
    /// In front of the server of `upstream` (`https://HOST:PORT`, any path
    /// left out), with its files in `dir`.
    pub fn start(dir: &Path, upstream: &str) -> CountingProxy {
        let rest = upstream.strip_prefix("https://").expect("an https URL");
        let upstream = format!("https://{}", rest.split('/').next().unwrap_or(rest));
        use std::io::BufRead;
        static BIN: OnceLock<PathBuf> = OnceLock::new();
        let bin = BIN.get_or_init(|| {
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
        });
        let ca = PathBuf::from(cluster().var("OIDC_CA_FILE"));
        let events = dir.join("idp-proxy-events.jsonl");
        let log = std::fs::File::create(dir.join("idp-proxy.log")).expect("proxy log");
        let mut child = Command::new(bin)
            .arg("-upstream")
            .arg(&upstream)
            .arg("-ca")
            .arg(&ca)
            .arg("-ca-key")
            .arg(ca.with_file_name("ca.key"))
            .arg("-events")
            .arg(&events)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .expect("start the proxy");
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().expect("proxy stdout"))
            .read_line(&mut line)
            .expect("read the proxy's address");
        let addr = line
            .strip_prefix("listening ")
            .unwrap_or_else(|| panic!("the proxy did not start: {line:?}"))
            .trim();
        CountingProxy {
            child,
            url: format!("https://{addr}"),
            events,
        }
    }

    /// `url` (`https://HOST:PORT/PATH`) with this proxy's origin instead.
    pub fn via(&self, url: &str) -> String {
        let rest = url.strip_prefix("https://").expect("an https URL");
        let path = rest.find('/').map_or("", |i| &rest[i..]);
        format!("{}{path}", self.url)
    }

    /// Answers the upstream gave to `method` requests whose path ends with
    /// `suffix`, with HTTP status `status`.
    pub fn answered(&self, method: &str, suffix: &str, status: u16) -> usize {
        std::fs::read_to_string(&self.events)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|e| {
                e["kind"] == "answer"
                    && e["method"] == method
                    && e["path"].as_str().is_some_and(|p| p.ends_with(suffix))
                    && e["status"] == status
            })
            .count()
    }
}

impl Drop for CountingProxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
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
/// namespaces starting with `prefix`, from the API server's audit log. A
/// create answered "already exists" (409) wrote nothing and is not counted.
pub fn ondemand_writes(prefix: &str) -> usize {
    ondemand_writes_in("AUDIT_LOG", prefix)
}

/// [`ondemand_writes`] on the API server whose audit log the env file
/// names `log_var` (`AUDIT_LOG`, or `AUDIT_LOG_2` for the second cluster).
pub fn ondemand_writes_in(log_var: &str, prefix: &str) -> usize {
    let log = std::fs::read_to_string(cluster().var(log_var)).expect("audit log");
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
        .filter(|e| !(e["verb"] == "create" && e["responseStatus"]["code"] == 409))
        .filter(|e| {
            let r = &e["objectRef"];
            let ns = r["namespace"]
                .as_str()
                .or_else(|| r["name"].as_str().filter(|_| r["resource"] == "namespaces"));
            ns.is_some_and(|n| n.starts_with(prefix))
        })
        .count()
}

/// The problem with `doctor`'s renewal line in `stdout`, if any: exactly
/// one line about the renewal timer, in one of its three forms (active with
/// the next run; not active, or no systemd, with the time by which the
/// token must be renewed: an RFC 3339 UTC time from now to the token's
/// expiry shown on the root's token line).
pub fn renewal_line_problem(stdout: &str) -> Option<String> {
    const TIMER: &str = "ood-k8s-bootstrap-root-token.timer";
    let lines: Vec<&str> = stdout
        .lines()
        .filter(|l| l.contains("token renewal: ") && l.contains(TIMER))
        .collect();
    let [line] = lines[..] else {
        return Some(format!("not one renewal line about {TIMER}: {lines:?}"));
    };
    if let Some(next) = line.strip_prefix(&format!(
        "✓ token renewal: {TIMER} is active; next renewal "
    )) {
        return next
            .trim()
            .is_empty()
            .then(|| format!("no next renewal: {line}"));
    }
    let due = [
        format!("⚠ token renewal: {TIMER} is not active; the token must be renewed by "),
        format!("⚠ token renewal: no systemd here to run {TIMER}; the token must be renewed by "),
    ]
    .iter()
    .find_map(|p| line.strip_prefix(p.as_str()))
    .and_then(|rest| rest.split_whitespace().next());
    let Some(due) = due else {
        return Some(format!("not a renewal line doctor writes: {line}"));
    };
    let rfc3339 = |t: &str| {
        t.len() == 20
            && t.bytes().enumerate().all(|(i, b)| match i {
                4 | 7 => b == b'-',
                10 => b == b'T',
                13 | 16 => b == b':',
                19 => b == b'Z',
                _ => b.is_ascii_digit(),
            })
    };
    let now = Command::new("date")
        .args(["-u", "+%Y-%m-%dT%H:%M:%SZ"])
        .output()
        .expect("date");
    let now = String::from_utf8_lossy(&now.stdout).trim().to_owned();
    let expiry = stdout
        .lines()
        .find(|l| l.contains("root's token: ") && l.contains("expires in "))
        .and_then(|l| l.split_once("expires in "))
        .and_then(|(_, rest)| rest.split_once('('))
        .and_then(|(_, t)| t.get(..20));
    if !rfc3339(due) || due < now.as_str() || expiry.is_some_and(|e| due > e) {
        return Some(format!(
            "renewal due {due:?} is not an RFC 3339 time from now ({now}) to the token's expiry ({expiry:?}): {line}"
        ));
    }
    None
}

/// Waits until the audit log holds every request made before this call:
/// sends a request of its own (a GET of a namespace no one makes, named
/// uniquely) and waits for its line, which the API server writes after the
/// lines of every request answered before it. A count taken afterwards
/// cannot miss a late line (a fixed wait could). Panics after 20 s.
pub fn audit_settled() {
    audit_settled_on("KUBECONFIG_ADMIN", "AUDIT_LOG");
}

/// [`audit_settled`] on the API server the admin kubeconfig `admin_var`
/// reaches, whose audit log is `log_var` (`KUBECONFIG_ADMIN_2` and
/// `AUDIT_LOG_2` for the second cluster).
pub fn audit_settled_on(admin_var: &str, log_var: &str) {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    let c = cluster();
    let marker = format!(
        "audit-marker-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    );
    // NotFound is the answer; the request is what counts.
    let _ = c.kubectl_as(c.var(admin_var), &["get", "namespace", &marker]);
    let started = std::time::Instant::now();
    loop {
        let log = std::fs::read_to_string(c.var(log_var)).expect("audit log");
        if log.contains(&marker) {
            return;
        }
        assert!(
            started.elapsed() < std::time::Duration::from_secs(20),
            "the audit log never showed {marker}"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// A system log of the test's own: a datagram socket the binary's records
/// go to (hook.env `SYSLOG_SOCKET`), read back as they arrive.
pub struct SyslogListener {
    pub path: PathBuf,
    socket: std::os::unix::net::UnixDatagram,
}

impl SyslogListener {
    /// Binds `dir/name`.
    pub fn bind(dir: &Path, name: &str) -> Self {
        let path = dir.join(name);
        let _ = std::fs::remove_file(&path);
        let socket = std::os::unix::net::UnixDatagram::bind(&path).expect("bind the log socket");
        socket.set_nonblocking(true).unwrap();
        Self { path, socket }
    }

    /// Every datagram received so far, as text.
    pub fn received(&self) -> Vec<String> {
        let mut out = Vec::new();
        let mut buf = vec![0u8; 65536];
        while let Ok(n) = self.socket.recv(&mut buf) {
            out.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
        out
    }
}

/// An RFC 5424 record of ood-k8s-bootstrap: its structured-data fields
/// (`run@32473`) and `msg`, or None if `line` is not one.
pub fn rfc5424_fields(line: &str) -> Option<std::collections::BTreeMap<String, String>> {
    let rest = line.strip_prefix('<')?;
    let (pri, rest) = rest.split_once(">1 ")?;
    let mut parts = rest.splitn(5, ' ');
    let (_time, _host, app, _pid) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    if app != "ood-k8s-bootstrap" {
        return None;
    }
    let rest = parts.next()?.strip_prefix("- [run@32473")?;
    let mut fields = std::collections::BTreeMap::new();
    fields.insert("pri".to_owned(), pri.to_owned());
    let mut chars = rest.chars().peekable();
    loop {
        match chars.next()? {
            ']' => break,
            ' ' => {
                let key: String = chars.by_ref().take_while(|&c| c != '=').collect();
                if chars.next()? != '"' {
                    return None;
                }
                let mut value = String::new();
                loop {
                    match chars.next()? {
                        '\\' => value.push(chars.next()?),
                        '"' => break,
                        c => value.push(c),
                    }
                }
                fields.insert(key, value);
            }
            _ => return None,
        }
    }
    let msg: String = chars.collect();
    fields.insert("msg".to_owned(), msg.trim_start().to_owned());
    Some(fields)
}

/// A kubeconfig for `reap` as the shipped CronJob runs it: ServiceAccount
/// ondemand/ood-reaper bound to the ClusterRole of hooks/ondemand-reap.yaml
/// (hooks/reap-cronjob.yaml). The `ondemand` account itself is not granted
/// it here: other tests check that it cannot list or delete namespaces.
pub fn reaper_kubeconfig(dir: &Path) -> PathBuf {
    let c = cluster();
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("hooks");
    let docs = |file: &str| -> Vec<String> {
        std::fs::read_to_string(repo.join(file))
            .unwrap()
            .split("\n---\n")
            .map(str::to_owned)
            .collect()
    };
    let mut objects: Vec<String> = docs("ondemand-reap.yaml")
        .into_iter()
        .filter(|d| d.contains("\nkind: ClusterRole\n"))
        .collect();
    objects.extend(docs("reap-cronjob.yaml").into_iter().filter(|d| {
        d.contains("\nkind: ServiceAccount\n") || d.contains("\nkind: ClusterRoleBinding\n")
    }));
    assert_eq!(objects.len(), 3, "{objects:?}");
    for doc in objects {
        let out = pipe(
            Command::new(c.var("KUBECTL"))
                .args(["--kubeconfig", c.var("KUBECONFIG_ADMIN")])
                .args(["apply", "--server-side", "--force-conflicts", "-f", "-"]),
            doc.as_bytes(),
        );
        assert!(out.status.success(), "apply {doc}: {}", text(&out));
    }
    let path = dir.join("reaper.kubeconfig");
    c.token_kubeconfig(&path, "ood-reaper", &reaper_token());
    path
}

/// A token of the reap CronJob's ServiceAccount (ondemand/ood-reaper), as
/// its pod would have it.
pub fn reaper_token() -> String {
    service_account_token("ood-reaper")
}

/// A fresh one-hour token of ServiceAccount `name` in namespace
/// `ondemand`, minted by the admin (TokenRequest).
pub fn service_account_token(name: &str) -> String {
    let token = cluster().admin(&[
        "-n",
        "ondemand",
        "create",
        "token",
        name,
        "--duration",
        "1h",
    ]);
    token.trim().to_owned()
}
