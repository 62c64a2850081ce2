//! Pure: one user's stored token set, when it needs a refresh, what a
//! token endpoint's answer does to it, and how an IdP's refusal is read.
//!
//! A set records how it is refreshed — issuer, token endpoint (if known),
//! the client that owns the refresh token, and optional `audience`/`scope`
//! parameters — so sets that did not come straight from the portal login
//! (e.g. from an RFC 8693 token exchange, whose refresh token belongs to
//! the portal's client but whose tokens are for the Kubernetes audience)
//! are stored and refreshed the same way. Client secrets are never part of
//! a set: the broker takes them from hook.env.
//!
//! A set also records whose it is and how long it may live: the login
//! (passwd name) and uid it was stored for, when that login stored it, and
//! when its refresh token expires if the IdP said so ([`crate::credentials::broker::session`]
//! decides from these whether it is still served). Its stored size is
//! bounded by [`MAX_SET`], checked when it is written, so what is written
//! can be read back.

use std::fmt;

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::credentials::credential::exec_credential;
use crate::credentials::tokens::{self, TokenError};

/// The stored format's version. Version 1 (no `stored_at`) sets are
/// deleted on first use: their owner logs in again.
pub const FORMAT: u32 = 2;
/// Largest stored set, in bytes, for writing and reading alike: the IdP
/// answer cap, so one login's tokens fit.
pub const MAX_SET: usize = crate::credentials::idp::MAX_ANSWER;
/// Refresh when less than this is left (or a third of the token's
/// lifetime, if that is shorter: `tokens::is_fresh`).
pub const MARGIN: u64 = 60;
/// Tokens this close to expiry are never handed out.
const MIN_LEFT: u64 = tokens::MIN_LEFT;

/// Which token kubectl presents to the API server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Bearer {
    AccessToken,
    IdToken,
}

/// How the refresh token is refreshed. Never holds a secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RefreshWith {
    pub issuer: String,
    /// The token endpoint, when whoever stored the set knew it; else found
    /// by OIDC discovery on `issuer`.
    #[serde(default)]
    pub token_endpoint: Option<String>,
    /// The client that owns the refresh token (its secret is hook.env's).
    pub client_id: String,
    /// Optional `audience` parameter of the refresh request.
    #[serde(default)]
    pub audience: Option<String>,
    /// Optional `scope` parameter of the refresh request.
    #[serde(default)]
    pub scope: Option<String>,
}

/// Where the set's current tokens came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// The portal login, stored by the hook.
    Login,
    /// A token exchange done by the hook.
    Exchange,
    /// A refresh done by the broker.
    Refresh,
}

/// One user's tokens, as stored root-only (`<uid>.json`).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenSet {
    pub format: u32,
    /// The uid this set belongs to (checked against the file name).
    pub uid: u32,
    /// The login (passwd name) that stored it; served only while `uid`
    /// still maps to it.
    pub user: String,
    /// When that login stored the set, Unix seconds (kept by refreshes):
    /// the start of `BROKER_MAX_SESSION_HOURS`.
    pub stored_at: u64,
    /// When the refresh token expires, Unix seconds, if the IdP said so
    /// (`refresh_expires_in`, or the refresh token's own `exp`).
    #[serde(default)]
    pub refresh_expiry: Option<u64>,
    pub access_token: String,
    #[serde(default)]
    pub id_token: Option<String>,
    #[serde(default)]
    pub refresh_token: Option<String>,
    pub bearer: Bearer,
    /// Expiry of the bearer token, Unix seconds.
    pub expiry: u64,
    /// When the bearer token was obtained, Unix seconds.
    pub obtained: u64,
    pub refresh: RefreshWith,
    pub source: Source,
}

impl fmt::Debug for TokenSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenSet")
            .field("uid", &self.uid)
            .field("user", &self.user)
            .field("bearer", &self.bearer)
            .field("expiry", &self.expiry)
            .field("refresh", &self.refresh)
            .field("stored_at", &self.stored_at)
            .field("refresh_expiry", &self.refresh_expiry)
            .field("has_refresh_token", &self.refresh_token.is_some())
            .finish_non_exhaustive()
    }
}

/// The tokens a set is made from (a login, or an exchange).
pub struct Obtained<'a> {
    pub access_token: &'a str,
    pub id_token: Option<&'a str>,
    pub refresh_token: Option<&'a str>,
    pub bearer: Bearer,
    pub source: Source,
}

impl TokenSet {
    /// A new set, at Unix time `now`; the bearer token must be a JWT (its
    /// `exp` is the set's expiry).
    pub fn new(
        uid: u32,
        user: &str,
        tokens: &Obtained<'_>,
        refresh: RefreshWith,
        now: u64,
    ) -> Result<Self, TokenError> {
        let (bearer, what) = match (tokens.bearer, tokens.id_token) {
            (Bearer::IdToken, Some(id)) => (id, "the ID token"),
            _ => (tokens.access_token, "the access token"),
        };
        let exp = tokens::claims(bearer, what)?.exp;
        Ok(Self {
            format: FORMAT,
            uid,
            user: user.to_owned(),
            access_token: tokens.access_token.to_owned(),
            id_token: tokens.id_token.map(str::to_owned),
            refresh_token: tokens.refresh_token.map(str::to_owned),
            bearer: if bearer == tokens.access_token {
                Bearer::AccessToken
            } else {
                Bearer::IdToken
            },
            expiry: exp.unwrap_or(now.saturating_add(tokens::DEFAULT_LIFETIME)),
            obtained: now,
            stored_at: now,
            refresh_expiry: refresh_expiry(tokens.refresh_token, None, now),
            refresh,
            source: tokens.source,
        })
    }

    /// The set as stored: JSON of at most [`MAX_SET`] bytes.
    pub fn encode(&self) -> Result<Vec<u8>, TooLarge> {
        let json = serde_json::to_vec_pretty(self).map_err(|_| TooLarge(usize::MAX))?;
        if json.len() > MAX_SET {
            return Err(TooLarge(json.len()));
        }
        Ok(json)
    }

    /// The token kubectl presents.
    pub fn bearer_token(&self) -> &str {
        match (self.bearer, &self.id_token) {
            (Bearer::IdToken, Some(id)) => id,
            _ => &self.access_token,
        }
    }

    /// Good for a while yet: no refresh needed.
    pub fn fresh(&self, now: u64) -> bool {
        tokens::is_fresh(self.expiry, self.obtained, now, MARGIN)
    }

    /// Still valid long enough to hand out (when a refresh is not possible
    /// right now).
    pub fn usable(&self, now: u64) -> bool {
        self.expiry > now.saturating_add(MIN_LEFT)
    }

    /// The ExecCredential JSON kubectl reads.
    pub fn exec_credential(&self) -> serde_json::Value {
        serde_json::from_str(&exec_credential(self.bearer_token(), self.expiry))
            .unwrap_or(serde_json::Value::Null)
    }

    /// The set after a successful refresh at Unix time `now`. A refresh
    /// token that was not rotated is kept.
    pub fn refreshed(&self, answer: &TokenAnswer, now: u64) -> Result<Self, RefreshError> {
        let id_token = answer.id_token.clone().or_else(|| self.id_token.clone());
        let bearer = match self.bearer {
            Bearer::AccessToken => &answer.access_token,
            Bearer::IdToken => answer.id_token.as_ref().ok_or_else(|| {
                RefreshError::Unavailable("the IdP's refresh answer has no ID token".into())
            })?,
        };
        let expiry = tokens::expiry(bearer, answer.expires_in, now);
        let refresh_expiry = match &answer.refresh_token {
            Some(r) => refresh_expiry(Some(r), answer.refresh_expires_in, now),
            None => refresh_expiry(None, answer.refresh_expires_in, now).or(self.refresh_expiry),
        };
        Ok(Self {
            access_token: answer.access_token.clone(),
            id_token,
            refresh_token: answer
                .refresh_token
                .clone()
                .or_else(|| self.refresh_token.clone()),
            expiry,
            obtained: now,
            refresh_expiry,
            source: Source::Refresh,
            ..self.clone()
        })
    }
}

/// A set too large to store: its size in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
#[error(
    "the tokens make a stored set of {0} bytes, more than the {MAX_SET} the broker stores; ask the IdP's administrator for smaller tokens (fewer claims or groups)"
)]
pub struct TooLarge(pub usize);

/// When a refresh token expires: `now` plus the IdP's
/// `refresh_expires_in` (Keycloak; 0 means "never", as for offline
/// tokens), else the token's own `exp` when it is a JWT, else unknown.
pub fn refresh_expiry(token: Option<&str>, expires_in: Option<u64>, now: u64) -> Option<u64> {
    match expires_in {
        Some(n) if n > 0 => Some(now.saturating_add(n)),
        Some(_) => None,
        None => token
            .and_then(|t| tokens::claims(t, "the refresh token").ok())
            .and_then(|c| c.exp)
            .filter(|&e| e > 0),
    }
}

/// A token endpoint's successful answer.
#[derive(Clone, Deserialize)]
pub struct TokenAnswer {
    pub access_token: String,
    #[serde(default)]
    pub refresh_token: Option<String>,
    #[serde(default)]
    pub id_token: Option<String>,
    #[serde(default)]
    pub expires_in: Option<u64>,
    /// Keycloak: the refresh token's lifetime in seconds (0: no expiry).
    #[serde(default)]
    pub refresh_expires_in: Option<u64>,
}

impl fmt::Debug for TokenAnswer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenAnswer")
            .field("expires_in", &self.expires_in)
            .field("refresh_expires_in", &self.refresh_expires_in)
            .finish_non_exhaustive()
    }
}

/// Why a refresh did not give new tokens.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum RefreshError {
    /// The IdP refused the refresh token (expired, revoked, rotated
    /// away): the user must log in again.
    #[error("the IdP refused the refresh: {0}")]
    Refused(String),
    /// The IdP refused the broker itself (its client or secret), or the
    /// token endpoint is not one: an administrator must act.
    #[error("the IdP refused the broker's client: {0}")]
    Misconfigured(String),
    /// No answer, or a server error: try again later.
    #[error("the IdP could not be reached or failed: {0}")]
    Unavailable(String),
}

/// Reads a token endpoint's answer: HTTP status and body.
pub fn read_answer(status: u16, body: &[u8]) -> Result<TokenAnswer, RefreshError> {
    #[derive(Deserialize)]
    struct OAuthError {
        error: String,
        #[serde(default)]
        error_description: Option<String>,
    }
    if (200..300).contains(&status) {
        return serde_json::from_slice::<TokenAnswer>(body).map_err(|_| {
            RefreshError::Unavailable(format!("HTTP {status} without the expected token JSON"))
        });
    }
    let oauth = serde_json::from_slice::<OAuthError>(body).ok().map(|e| {
        let text = match e.error_description {
            Some(d) if !d.is_empty() => format!("{}: {d}", e.error),
            _ => e.error.clone(),
        };
        (e.error, crate::oneline::clean(&text, 200))
    });
    match (status, oauth) {
        (400..=499, Some((code, text)))
            if code == "invalid_client" || code == "unauthorized_client" =>
        {
            Err(RefreshError::Misconfigured(text))
        }
        (429, _) => Err(RefreshError::Unavailable("HTTP 429 (rate limited)".into())),
        (400..=499, Some((_, text))) => Err(RefreshError::Refused(text)),
        (400..=499, None) => Err(RefreshError::Misconfigured(format!(
            "HTTP {status} from the token endpoint, without an OAuth error"
        ))),
        (_, Some((_, text))) => Err(RefreshError::Unavailable(format!("HTTP {status}: {text}"))),
        (_, None) => Err(RefreshError::Unavailable(format!("HTTP {status}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::credentials::tokens::fake_jwt;
    use serde_json::json;

    fn with() -> RefreshWith {
        RefreshWith {
            issuer: "https://idp.example/dex".into(),
            token_endpoint: None,
            client_id: "ood-portal".into(),
            audience: None,
            scope: None,
        }
    }

    fn set(exp: u64, now: u64) -> TokenSet {
        let access = fake_jwt(&json!({"exp": exp}));
        let tokens = Obtained {
            access_token: &access,
            id_token: None,
            refresh_token: Some("r1"),
            bearer: Bearer::AccessToken,
            source: Source::Login,
        };
        TokenSet::new(1001, "alice", &tokens, with(), now).unwrap()
    }

    #[test]
    fn a_login_set_and_its_freshness() {
        let s = set(1040, 1000);
        assert_eq!((s.expiry, s.obtained), (1040, 1000));
        assert_eq!(s.bearer_token(), s.access_token);
        // 40 s tokens: refreshed in their last third (13 s), not 60 s.
        assert!(s.fresh(1020));
        assert!(!s.fresh(1030));
        assert!(s.usable(1030) && !s.usable(1036));
        // long tokens: the last minute
        let s = set(4600, 1000);
        assert!(s.fresh(4530) && !s.fresh(4545));
        assert!(!format!("{s:?}").contains("r1"));
        assert!(!format!("{s:?}").contains(&s.access_token));
        let c = s.exec_credential();
        assert_eq!(c["status"]["token"], s.access_token.as_str());
        assert_eq!(c["kind"], "ExecCredential");
    }

    #[test]
    fn opaque_tokens_are_refused() {
        let tokens = Obtained {
            access_token: "opaque",
            id_token: None,
            refresh_token: None,
            bearer: Bearer::AccessToken,
            source: Source::Login,
        };
        assert!(TokenSet::new(1, "a", &tokens, with(), 0).is_err());
    }

    #[test]
    fn refresh_keeps_or_rotates_the_refresh_token() {
        let s = set(1040, 1000);
        let new_access = fake_jwt(&json!({"exp": 2040}));
        let answer = TokenAnswer {
            access_token: new_access.clone(),
            refresh_token: Some("r2".into()),
            id_token: None,
            expires_in: Some(40),
            refresh_expires_in: Some(1800),
        };
        let r = s.refreshed(&answer, 2000).unwrap();
        assert_eq!(
            (r.expiry, r.obtained, r.refresh_token.as_deref()),
            (2040, 2000, Some("r2"))
        );
        assert_eq!((r.uid, r.source), (1001, Source::Refresh));
        // the login's time is kept; the refresh token's expiry is the IdP's
        assert_eq!((r.stored_at, r.refresh_expiry), (1000, Some(3800)));
        let answer = TokenAnswer {
            refresh_token: None,
            access_token: "opaque".into(),
            refresh_expires_in: None,
            ..answer
        };
        let r2 = r.refreshed(&answer, 2100).unwrap();
        assert_eq!((r2.expiry, r2.refresh_token.as_deref()), (2140, Some("r2")));
        assert_eq!(r2.refresh_expiry, Some(3800), "kept when not rotated");
    }

    #[test]
    fn refresh_expiry_from_the_idp_or_the_token() {
        let jwt = fake_jwt(&json!({"exp": 5000}));
        assert_eq!(refresh_expiry(Some("opaque"), Some(60), 100), Some(160));
        assert_eq!(refresh_expiry(Some(&jwt), Some(0), 100), None);
        assert_eq!(refresh_expiry(Some(&jwt), None, 100), Some(5000));
        assert_eq!(refresh_expiry(Some("opaque"), None, 100), None);
        assert_eq!(refresh_expiry(None, None, 100), None);
        assert_eq!(refresh_expiry(None, Some(u64::MAX), 100), Some(u64::MAX));
    }

    #[test]
    fn the_stored_size_is_bounded() {
        let s = set(1040, 1000);
        let json = s.encode().unwrap();
        assert_eq!(serde_json::from_slice::<TokenSet>(&json).unwrap(), s);
        let big = TokenSet {
            id_token: Some("a".repeat(MAX_SET)),
            ..s
        };
        let e = big.encode().unwrap_err();
        assert!(e.0 > MAX_SET && e.to_string().contains("262144"), "{e}");
    }

    #[test]
    fn an_idps_huge_numbers_saturate() {
        let s = set(1040, 1000);
        let answer = read_answer(
            200,
            br#"{"access_token":"opaque","expires_in":18446744073709551615}"#,
        )
        .unwrap();
        let r = s.refreshed(&answer, 2000).unwrap();
        assert_eq!(r.expiry, u64::MAX);
        assert!(r.fresh(3000) && !r.fresh(u64::MAX) && !r.usable(u64::MAX));
        assert_eq!(
            r.exec_credential()["status"]["expirationTimestamp"],
            "9999-12-31T23:59:59Z"
        );
    }

    #[test]
    fn idp_answers_are_classified() {
        let ok = read_answer(200, br#"{"access_token":"a","expires_in":40}"#).unwrap();
        assert_eq!(ok.expires_in, Some(40));
        assert!(matches!(
            read_answer(400, br#"{"error":"invalid_grant","error_description":"Token is not active"}"#),
            Err(RefreshError::Refused(t)) if t == "invalid_grant: Token is not active"
        ));
        assert!(matches!(
            read_answer(400, br#"{"error":"invalid_request","error_description":"Refresh token is invalid or has already been claimed by another client."}"#),
            Err(RefreshError::Refused(_))
        ));
        assert!(matches!(
            read_answer(401, br#"{"error":"invalid_client"}"#),
            Err(RefreshError::Misconfigured(t)) if t == "invalid_client"
        ));
        assert!(matches!(
            read_answer(404, b"not found"),
            Err(RefreshError::Misconfigured(_))
        ));
        assert!(matches!(
            read_answer(503, b""),
            Err(RefreshError::Unavailable(_))
        ));
        assert!(matches!(
            read_answer(200, b"<html>"),
            Err(RefreshError::Unavailable(_))
        ));
        let e = read_answer(400, b"{\"error\":\"x\",\"error_description\":\"a\\nb\"}").unwrap_err();
        assert_eq!(e, RefreshError::Refused("x: a b".into()));
    }
}
