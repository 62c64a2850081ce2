//! Pure: what the hook wants in the user's kubeconfig (and, in exec mode,
//! in the token cache; in broker mode, in root's token store), from
//! hook.env and the login's tokens.

use std::path::{Path, PathBuf};

use serde_json::{Value, json};
use thiserror::Error;

use super::Login;
use super::merge::{ClusterEntry, ContextEntry, Desired, UserEntry};
use crate::credentials::broker::plugin::SUBCOMMAND as BROKER_PLUGIN;
use crate::credentials::broker::tokenset::{
    Bearer, Obtained, RefreshWith, Source, TokenSet, TooLarge,
};
use crate::credentials::cache::{CACHE_DIR, Cache};
use crate::credentials::tokens::{self, TokenError};
use crate::site::names::{Namespace, Username};
use crate::site::settings::{CredentialMode, Settings};

/// Everything the writer child is asked to do.
#[derive(Debug)]
pub struct Plan {
    pub desired: Desired,
    /// Exec mode: the token cache to write, and its path.
    pub cache: Option<(PathBuf, Cache)>,
    /// Broker mode: the token set root stores for the broker.
    pub broker: Option<TokenSet>,
    /// Tokens were given (otherwise credentials are left alone).
    pub has_tokens: bool,
    pub warnings: Vec<String>,
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum EntryError {
    #[error("K8S_CREDENTIALS={mode} needs {key} in hook.env")]
    Missing {
        mode: &'static str,
        key: &'static str,
    },
    #[error("{0}")]
    Token(#[from] TokenError),
    /// Broker mode: the login's tokens are too large to store.
    #[error("{0}")]
    TooLarge(#[from] TooLarge),
}

/// The kubeconfig user entry's name: `K8S_USERNAME_PREFIX` + username.
pub fn entry_name(settings: &Settings, user: &Username) -> String {
    format!("{}{}", settings.username_prefix, user.as_str())
}

/// Where exec mode keeps the user's tokens.
pub fn cache_path(home: &Path, entry_name: &str) -> PathBuf {
    home.join(".kube")
        .join(CACHE_DIR)
        .join(format!("{entry_name}.json"))
}

/// The user: name, uid and home directory.
pub struct Who<'a> {
    pub user: &'a Username,
    pub uid: u32,
    pub home: &'a Path,
}

/// Builds the plan. `exe` is the command the exec entry runs when
/// `K8S_EXEC_COMMAND` is not set; `now` is Unix seconds.
pub fn plan(
    settings: &Settings,
    who: &Who<'_>,
    namespace: &Namespace,
    login: &Login,
    exe: &Path,
    now: u64,
) -> Result<Plan, EntryError> {
    let (user, home) = (who.user, who.home);
    let kc = &settings.kubeconfig;
    let oidc = &settings.oidc;
    let name = entry_name(settings, user);
    let mut warnings = Vec::new();
    let mut cache = None;
    let mut broker = None;
    let mode = kc.credentials;
    let need = |v: Option<&String>, key: &'static str| -> Result<String, EntryError> {
        v.cloned().ok_or(EntryError::Missing {
            mode: mode.as_str(),
            key,
        })
    };
    // The audience the API server is expected to trust: the exchange's
    // target when there is one, else the portal's client.
    let api_client = settings
        .exchange
        .as_ref()
        .map(|x| x.audience.as_str())
        .or(oidc.client_id.as_deref());
    // Checks a token; an expired one is only a warning when kubectl can
    // refresh it.
    let mut checked =
        |token: &str, what: &'static str, refreshable: bool| -> Result<Option<u64>, EntryError> {
            match tokens::check(token, what, now, api_client) {
                Ok(c) => {
                    warnings.extend(c.warning);
                    Ok(c.claims.exp)
                }
                Err(TokenError::Expired { what, ago }) if refreshable => {
                    warnings.push(format!(
                        "{what} expired {ago} s ago; kubectl will refresh it with the refresh token"
                    ));
                    Ok(Some(now))
                }
                Err(e) => Err(e.into()),
            }
        };

    let user_entry = match (&login.access_token, mode) {
        (_, CredentialMode::None) | (None, _) => None,
        (Some(access), CredentialMode::AuthProvider) => {
            let issuer = need(oidc.issuer_url.as_ref(), "IDP_ISSUER_URL")?;
            let client_id = need(oidc.client_id.as_ref(), "CLIENT_ID")?;
            checked(
                access.expose(),
                "the access token",
                login.refresh_token.is_some(),
            )?;
            // Exactly the old set-k8s-creds.sh entry: the access token goes
            // into id-token on purpose.
            let mut config = serde_json::Map::new();
            config.insert("idp-issuer-url".into(), issuer.into());
            config.insert("client-id".into(), client_id.into());
            if let Some(s) = &oidc.client_secret {
                config.insert("client-secret".into(), s.expose().into());
            }
            if let Some(r) = &login.refresh_token {
                config.insert("refresh-token".into(), r.expose().into());
            }
            // Without it kubectl's refresh fails against an IdP whose
            // certificate comes from a site CA ("x509: unknown authority").
            if let Some(pem) = &oidc.ca_pem {
                use base64::Engine as _;
                let data = base64::engine::general_purpose::STANDARD.encode(pem);
                config.insert("idp-certificate-authority-data".into(), data.into());
            }
            config.insert("id-token".into(), access.expose().into());
            Some(json!({"auth-provider": {"name": "oidc", "config": config}}))
        }
        (Some(access), CredentialMode::Token) => {
            checked(access.expose(), "the access token", false)?;
            Some(json!({"token": access.expose()}))
        }
        (Some(access), CredentialMode::Exec) => {
            let issuer = need(oidc.issuer_url.as_ref(), "IDP_ISSUER_URL")?;
            let client_id = need(
                kc.exec_client_id.as_ref().or(oidc.client_id.as_ref()),
                "K8S_EXEC_CLIENT_ID (or CLIENT_ID)",
            )?;
            // kubectl presents the ID token when the IdP gave one (what the
            // API server's OIDC authenticator is specified for), else the
            // access token, as the other modes do.
            let (bearer, what) = match &login.id_token {
                Some(id) => (id, "the ID token"),
                None => (access, "the access token"),
            };
            let exp = checked(bearer.expose(), what, login.refresh_token.is_some())?;
            let path = cache_path(home, &name);
            cache = Some((
                path.clone(),
                Cache {
                    issuer: issuer.clone(),
                    client_id: client_id.clone(),
                    token: bearer.expose().to_owned(),
                    // A JWT without exp: trust it for five minutes.
                    expiry: exp.unwrap_or(now.saturating_add(tokens::DEFAULT_LIFETIME)),
                    obtained: now,
                    refresh_token: login.refresh_token.as_ref().map(|r| r.expose().to_owned()),
                },
            ));
            let command = kc.exec_command.as_deref().unwrap_or(exe);
            Some(exec_entry(
                command,
                &issuer,
                &client_id,
                &path,
                settings.oidc.ca_file.as_deref(),
            ))
        }
        (Some(access), CredentialMode::Broker) => {
            let issuer = need(oidc.issuer_url.as_ref(), "IDP_ISSUER_URL")?;
            let client_id = need(oidc.client_id.as_ref(), "CLIENT_ID")?;
            checked(
                access.expose(),
                "the access token",
                login.refresh_token.is_some(),
            )?;
            if login.refresh_token.is_none() {
                warnings.push(
                    "no refresh token (OOD_OIDC_REFRESH_TOKEN): the broker can hand out the \
                     access token only until it expires; set OIDCPassRefreshToken On and add \
                     OIDC_REFRESH_TOKEN to pun_pre_hook_exports"
                        .into(),
                );
            }
            broker = Some(login_set(who, login, access, issuer, client_id, now)?);
            let command = kc.exec_command.as_deref().unwrap_or(exe);
            Some(broker_entry(command, settings))
        }
    };

    let (cluster, context) = match &kc.server {
        None => (None, None),
        Some(server) => (
            Some(ClusterEntry {
                name: kc.cluster_name.clone(),
                server: server.clone(),
                certificate_authority: kc.ca_file.as_ref().map(|p| p.display().to_string()),
            }),
            Some(ContextEntry {
                name: kc.context_name.clone(),
                cluster: kc.cluster_name.clone(),
                user: name.clone(),
                namespace: namespace.to_string(),
            }),
        ),
    };

    Ok(Plan {
        has_tokens: user_entry.is_some(),
        desired: Desired {
            user: user_entry.map(|user| UserEntry { name, user }),
            cluster,
            context,
        },
        cache,
        broker,
        warnings,
    })
}

/// Broker mode: the token set of a portal login, refreshed as the client
/// that got it. (Tokens from elsewhere — an RFC 8693 exchange — make their
/// set the same way, with `Source::Exchange`, the token endpoint and the
/// `audience`/`scope` their refresh needs.)
fn login_set(
    who: &Who<'_>,
    login: &Login,
    access: &crate::secret::Secret,
    issuer: String,
    client_id: String,
    now: u64,
) -> Result<TokenSet, EntryError> {
    let tokens = Obtained {
        access_token: access.expose(),
        id_token: login.id_token.as_ref().map(|t| t.expose()),
        refresh_token: login.refresh_token.as_ref().map(|t| t.expose()),
        bearer: Bearer::AccessToken,
        source: Source::Login,
    };
    let with = RefreshWith {
        issuer,
        token_endpoint: None,
        client_id,
        audience: None,
        scope: None,
    };
    let set = TokenSet::new(who.uid, who.user.as_str(), &tokens, with, now)?;
    // What the broker could not read back is refused now, before the
    // kubeconfig or the broker's store changes (and, without a token
    // exchange, before the cluster side starts; with one, these are the
    // exchanged tokens, known only after the cluster side began: hook.rs).
    set.encode()?;
    Ok(set)
}

/// The broker mode's exec plugin entry: `broker-credential` and the
/// socket; nothing secret.
pub fn broker_entry(command: &Path, settings: &Settings) -> Value {
    let b = &settings.broker;
    // The plugin waits for the IdP's worst case, and a little more.
    let timeout = b.idp_timeout.as_secs() + 10;
    json!({
        "exec": {
            "apiVersion": "client.authentication.k8s.io/v1",
            "command": command.display().to_string(),
            "args": [
                BROKER_PLUGIN,
                "--socket", b.socket.display().to_string(),
                "--cluster", settings.kubeconfig.cluster_name,
                "--timeout", timeout.to_string(),
            ],
            "interactiveMode": "Never",
            "provideClusterInfo": false,
            "installHint": "ood-k8s-bootstrap is installed by Open OnDemand on its web nodes; \
                            log in to OnDemand there to get Kubernetes credentials",
        }
    })
}

/// The exec credential plugin entry: this binary's `credential` command.
/// The arguments name no secret; the tokens are in the cache file.
pub fn exec_entry(
    command: &Path,
    issuer: &str,
    client_id: &str,
    cache: &Path,
    issuer_ca: Option<&Path>,
) -> Value {
    let mut args = vec![
        "credential".to_owned(),
        "--issuer".to_owned(),
        issuer.to_owned(),
        "--client-id".to_owned(),
        client_id.to_owned(),
        "--cache".to_owned(),
        cache.display().to_string(),
    ];
    if let Some(ca) = issuer_ca {
        args.push("--issuer-ca-file".to_owned());
        args.push(ca.display().to_string());
    }
    json!({
        "exec": {
            "apiVersion": "client.authentication.k8s.io/v1",
            "command": command.display().to_string(),
            "args": args,
            "interactiveMode": "Never",
            "provideClusterInfo": false,
            "installHint": "ood-k8s-bootstrap is installed by Open OnDemand on its web nodes; \
                            log in to OnDemand there to get Kubernetes credentials",
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::credentials::tokens::fake_jwt;
    use crate::secret::Secret;

    fn settings(extra: &str) -> Settings {
        Settings::parse(
            Path::new("/etc/ood/config/hook.env"),
            &format!(
                "NETWORK_POLICY_ALLOW_CIDR=10.0.0.0/8\nIDP_ISSUER_URL=https://idp.example/dex\n\
                 CLIENT_ID=ood-portal\nCLIENT_SECRET=portal-secret\nK8S_USERNAME_PREFIX=oidc-\n{extra}"
            ),
        )
        .unwrap()
    }

    fn login(exp: u64) -> Login {
        Login {
            access_token: Some(Secret::new(fake_jwt(
                &json!({"exp": exp, "aud": "ood-portal"}),
            ))),
            refresh_token: Some(Secret::new("refresh-1")),
            id_token: None,
        }
    }

    fn run(s: &Settings, l: &Login) -> Result<Plan, EntryError> {
        let user = Username::parse("alice").unwrap();
        let ns = Namespace::for_user("user-", &user).unwrap();
        let who = Who {
            user: &user,
            uid: 1001,
            home: Path::new("/home/alice"),
        };
        plan(
            s,
            &who,
            &ns,
            l,
            Path::new("/usr/bin/ood-k8s-bootstrap"),
            1000,
        )
    }

    #[test]
    fn auth_provider_is_the_old_entry() {
        let p = run(&settings(""), &login(2000)).unwrap();
        let u = p.desired.user.unwrap();
        assert_eq!(u.name, "oidc-alice");
        let access = login(2000).access_token.unwrap().expose().to_owned();
        assert_eq!(
            u.user,
            json!({"auth-provider": {"name": "oidc", "config": {
                "idp-issuer-url": "https://idp.example/dex",
                "client-id": "ood-portal",
                "client-secret": "portal-secret",
                "refresh-token": "refresh-1",
                "id-token": access,
            }}})
        );
        assert!(p.cache.is_none() && p.desired.cluster.is_none());
        assert!(p.warnings.is_empty(), "{:?}", p.warnings);
    }

    #[test]
    fn token_mode_and_expiry() {
        let s = settings("K8S_CREDENTIALS=token\n");
        let p = run(&s, &login(2000)).unwrap();
        assert_eq!(
            p.desired.user.unwrap().user["token"],
            login(2000).access_token.unwrap().expose()
        );
        assert!(matches!(
            run(&s, &login(999)),
            Err(EntryError::Token(TokenError::Expired { .. }))
        ));
        // refreshable modes only warn
        let p = run(&settings(""), &login(999)).unwrap();
        assert_eq!(p.warnings.len(), 1);
    }

    #[test]
    fn exec_mode_has_no_secret_in_the_entry() {
        let s = settings("K8S_CREDENTIALS=exec\nK8S_EXEC_CLIENT_ID=ood-kubectl\n");
        let p = run(&s, &login(2000)).unwrap();
        let entry = p.desired.user.unwrap().user.to_string();
        assert!(!entry.contains("portal-secret") && !entry.contains("refresh-1"));
        assert!(entry.contains("ood-kubectl") && entry.contains("interactiveMode"));
        let (path, cache) = p.cache.unwrap();
        assert_eq!(
            path,
            Path::new("/home/alice/.kube/cache/ood-k8s-bootstrap/oidc-alice.json")
        );
        assert_eq!(cache.expiry, 2000);
        assert_eq!(cache.client_id, "ood-kubectl");
        assert_eq!(cache.refresh_token.as_deref(), Some("refresh-1"));
        let json = serde_json::to_string(&cache).unwrap();
        assert!(!json.contains("portal-secret"));
    }

    #[test]
    fn broker_mode_stores_tokens_for_root_and_the_entry_names_only_the_socket() {
        let s = settings("K8S_CREDENTIALS=broker\nBROKER_SOCKET=/run/b/broker.sock\n");
        let p = run(&s, &login(2000)).unwrap();
        let entry = p.desired.user.unwrap().user;
        let text = entry.to_string();
        assert!(!text.contains("portal-secret") && !text.contains("refresh-1"));
        assert!(!text.contains(login(2000).access_token.unwrap().expose()));
        assert_eq!(entry["exec"]["interactiveMode"], "Never");
        assert_eq!(
            entry["exec"]["args"],
            json!([
                "broker-credential",
                "--socket",
                "/run/b/broker.sock",
                "--cluster",
                "open-ondemand",
                "--timeout",
                "20"
            ])
        );
        assert!(p.cache.is_none());
        let set = p.broker.unwrap();
        assert_eq!(
            (set.uid, set.user.as_str(), set.expiry),
            (1001, "alice", 2000)
        );
        assert_eq!(set.refresh_token.as_deref(), Some("refresh-1"));
        assert_eq!(set.refresh.client_id, "ood-portal");
        assert!(
            !serde_json::to_string(&set)
                .unwrap()
                .contains("portal-secret")
        );
        // without tokens: nothing stored, the entry left alone
        let p = run(&s, &Login::default()).unwrap();
        assert!(p.broker.is_none() && p.desired.user.is_none());
    }

    #[test]
    fn no_tokens_leaves_credentials_but_writes_cluster() {
        let s = settings("K8S_SERVER=https://k8s.example:6443\nK8S_CA_FILE=/etc/passwd\n");
        let p = run(&s, &Login::default()).unwrap();
        assert!(!p.has_tokens && p.desired.user.is_none());
        let c = p.desired.context.unwrap();
        assert_eq!(
            (c.name.as_str(), c.user.as_str(), c.namespace.as_str()),
            ("open-ondemand", "oidc-alice", "user-alice")
        );
        assert_eq!(
            p.desired.cluster.unwrap().certificate_authority.as_deref(),
            Some("/etc/passwd")
        );
    }

    #[test]
    fn opaque_token_is_refused_and_missing_keys_named() {
        let mut l = login(2000);
        l.access_token = Some(Secret::new("opaque"));
        assert!(matches!(
            run(&settings(""), &l),
            Err(EntryError::Token(TokenError::NotJwt { .. }))
        ));
        let s = Settings::parse(
            Path::new("/h"),
            "NETWORK_POLICY_ALLOW_CIDR=10.0.0.0/8\nCLIENT_ID=x\n",
        )
        .unwrap();
        assert_eq!(
            run(&s, &login(2000)).unwrap_err().to_string(),
            "K8S_CREDENTIALS=auth-provider needs IDP_ISSUER_URL in hook.env"
        );
    }

    #[test]
    fn audience_warning() {
        let mut l = login(2000);
        l.access_token = Some(Secret::new(fake_jwt(&json!({"exp": 2000, "aud": "other"}))));
        let p = run(&settings("K8S_CREDENTIALS=token\n"), &l).unwrap();
        assert!(
            p.warnings[0].contains("--oidc-client-id"),
            "{:?}",
            p.warnings
        );
    }
}
