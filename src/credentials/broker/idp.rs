//! The broker's calls to the IdP: OIDC discovery of the token endpoint
//! (cached) and the `refresh_token` grant, authenticated as the client that
//! owns the refresh token with its secret from hook.env
//! (`client_secret_basic`), bounded by `BROKER_IDP_TIMEOUT_SECONDS`. The
//! issuer's certificate is checked against the system roots plus
//! `IDP_CA_FILE`.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::Deserialize;

use super::tokenset::{RefreshError, RefreshWith, TokenAnswer, read_answer};
use crate::secret::Secret;
use crate::site::settings::Oidc;

/// How long a discovered token endpoint is reused.
const DISCOVERY_TTL: Duration = Duration::from_secs(3600);

/// The IdP as the broker sees it: one issuer, one client (hook.env's).
pub struct Idp {
    http: reqwest::Client,
    pub issuer: String,
    pub client_id: String,
    secret: Option<Secret>,
    timeout: Duration,
    endpoints: Mutex<HashMap<String, (String, Instant)>>,
}

impl Idp {
    /// From hook.env's `IDP_ISSUER_URL`, `CLIENT_ID`, `CLIENT_SECRET`,
    /// `IDP_CA_FILE`.
    pub fn new(oidc: &Oidc, timeout: Duration) -> Result<Self, String> {
        let (Some(issuer), Some(client_id)) = (&oidc.issuer_url, &oidc.client_id) else {
            return Err(
                "the broker refreshes tokens at IDP_ISSUER_URL as CLIENT_ID: set both in hook.env"
                    .into(),
            );
        };
        // IDP_CA_FILE was read, as root trusts files, with hook.env.
        let ca = oidc.ca_pem.as_deref().map(|p| ("IDP_CA_FILE", p));
        let http = crate::credentials::idp::client(ca, timeout, timeout)?;
        Ok(Self {
            http,
            issuer: issuer.trim_end_matches('/').to_owned(),
            client_id: client_id.clone(),
            secret: oidc.client_secret.clone(),
            timeout,
            endpoints: Mutex::new(HashMap::new()),
        })
    }

    /// Whether a set's refresh token is one this broker may refresh: same
    /// issuer, same client as hook.env names now. `Err` says why not.
    pub fn accepts(&self, with: &RefreshWith) -> Result<(), String> {
        if with.issuer.trim_end_matches('/') != self.issuer || with.client_id != self.client_id {
            return Err(format!(
                "your tokens were stored for client {:?} of {}, but the broker now refreshes as {:?} of {}",
                with.client_id, with.issuer, self.client_id, self.issuer
            ));
        }
        Ok(())
    }

    /// The refresh_token grant, bounded by the IdP timeout.
    pub async fn refresh(
        &self,
        with: &RefreshWith,
        refresh_token: &str,
    ) -> Result<TokenAnswer, RefreshError> {
        let work = async {
            let endpoint = match &with.token_endpoint {
                Some(e) => e.clone(),
                None => self.token_endpoint().await?,
            };
            self.grant(&endpoint, with, refresh_token).await
        };
        tokio::time::timeout(self.timeout, work)
            .await
            .unwrap_or_else(|_| {
                Err(RefreshError::Unavailable(format!(
                    "no answer within {} s",
                    self.timeout.as_secs()
                )))
            })
    }

    async fn grant(
        &self,
        endpoint: &str,
        with: &RefreshWith,
        refresh_token: &str,
    ) -> Result<TokenAnswer, RefreshError> {
        if !same_scheme(endpoint, &self.issuer) {
            return Err(RefreshError::Misconfigured(format!(
                "token endpoint {endpoint} does not use the issuer's scheme"
            )));
        }
        let mut form = vec![
            ("grant_type", "refresh_token"),
            ("refresh_token", refresh_token),
        ];
        if let Some(a) = &with.audience {
            form.push(("audience", a));
        }
        if let Some(s) = &with.scope {
            form.push(("scope", s));
        }
        let mut req = self.http.post(endpoint);
        match &self.secret {
            // RFC 6749 2.3.1: both form-encoded, then HTTP Basic.
            Some(secret) => {
                req = req.basic_auth(
                    form_encode(&with.client_id),
                    Some(form_encode(secret.expose())),
                );
            }
            None => form.push(("client_id", &with.client_id)),
        }
        let resp = req
            .form(&form)
            .send()
            .await
            .map_err(|e| RefreshError::Unavailable(error_line(&e)))?;
        let status = resp.status().as_u16();
        let body = read_bounded(resp).await?;
        read_answer(status, &body)
    }

    /// The issuer's token endpoint, by discovery, cached for an hour.
    async fn token_endpoint(&self) -> Result<String, RefreshError> {
        if let Ok(cache) = self.endpoints.lock()
            && let Some((e, at)) = cache.get(&self.issuer)
            && at.elapsed() < DISCOVERY_TTL
        {
            return Ok(e.clone());
        }
        #[derive(Deserialize)]
        struct Discovery {
            issuer: String,
            token_endpoint: String,
        }
        let url = format!("{}/.well-known/openid-configuration", self.issuer);
        let resp = self
            .http
            .get(&url)
            .send()
            .await
            .map_err(|e| RefreshError::Unavailable(format!("discovery: {}", error_line(&e))))?;
        let status = resp.status();
        let body = read_bounded(resp).await?;
        if status.is_server_error() {
            return Err(RefreshError::Unavailable(format!(
                "discovery: HTTP {status}"
            )));
        }
        let d: Discovery = serde_json::from_slice(&body).map_err(|_| {
            RefreshError::Misconfigured(format!(
                "{url} (HTTP {status}) is not OIDC discovery: is IDP_ISSUER_URL the issuer?"
            ))
        })?;
        if d.issuer.trim_end_matches('/') != self.issuer {
            return Err(RefreshError::Misconfigured(format!(
                "{url} names issuer {}, not IDP_ISSUER_URL",
                crate::oneline::clean(&d.issuer, 200)
            )));
        }
        if let Ok(mut cache) = self.endpoints.lock() {
            cache.insert(
                self.issuer.clone(),
                (d.token_endpoint.clone(), Instant::now()),
            );
        }
        Ok(d.token_endpoint)
    }
}

async fn read_bounded(resp: reqwest::Response) -> Result<Vec<u8>, RefreshError> {
    crate::credentials::idp::read_limited(resp)
        .await
        .map_err(RefreshError::Unavailable)
}

fn same_scheme(a: &str, b: &str) -> bool {
    let scheme = |s: &str| s.split_once("://").map(|(s, _)| s.to_ascii_lowercase());
    scheme(a).is_some() && scheme(a) == scheme(b)
}

/// `application/x-www-form-urlencoded` encoding of one value.
fn form_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'*' => {
                out.push(char::from(b));
            }
            b' ' => out.push('+'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// An error and its causes, one line, at most 300 characters.
fn error_line(e: &dyn std::error::Error) -> String {
    crate::site::names::truncate(&crate::oneline::error_chain(e), 300)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn form_encoding() {
        assert_eq!(form_encode("ood-portal"), "ood-portal");
        assert_eq!(form_encode("a b:c/%"), "a+b%3Ac%2F%25");
    }

    #[test]
    fn schemes() {
        assert!(same_scheme("https://a/token", "https://b"));
        assert!(!same_scheme("http://a/token", "https://a"));
        assert!(!same_scheme("token", "https://a"));
    }

    #[test]
    fn accepts_only_its_own_client_and_issuer() {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let oidc = Oidc {
            issuer_url: Some("https://idp/dex/".into()),
            client_id: Some("ood-portal".into()),
            client_secret: None,
            ca_file: None,
            ca_pem: None,
        };
        let idp = Idp::new(&oidc, Duration::from_secs(1)).unwrap();
        let mut with = RefreshWith {
            issuer: "https://idp/dex".into(),
            token_endpoint: None,
            client_id: "ood-portal".into(),
            audience: None,
            scope: None,
        };
        assert!(idp.accepts(&with).is_ok());
        with.client_id = "other".into();
        assert!(idp.accepts(&with).unwrap_err().contains("\"other\""));
        let none = Oidc::default();
        assert!(Idp::new(&none, Duration::from_secs(1)).is_err());
    }
}
