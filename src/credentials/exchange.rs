//! RFC 8693 token exchange at login. The portal's tokens belong to the
//! portal's confidential client and are meant for the portal; with
//! `K8S_TOKEN_EXCHANGE_AUDIENCE` set, the hook trades the portal's access
//! token at the issuer's token endpoint (authenticated as the portal client,
//! whose secret stays in root-only hook.env) for tokens whose audience is
//! the Kubernetes client, asking for a refresh token where the IdP allows
//! it, and uses those instead (Keycloak's standard token exchange).
//!
//! The form and the answer are pure ([`form`], [`parse`]); [`exchange`] is
//! the thin HTTP edge, bounded by the run's deadline.

use std::time::{Duration, Instant};

use serde_json::Value;
use thiserror::Error;

use crate::credentials::idp;
use crate::credentials::kubeconfig::Login;
use crate::exit::Exit;
use crate::oneline::clean;
use crate::secret::Secret;
use crate::site::names::truncate;
use crate::site::settings::ExchangeSettings;

pub const GRANT_TYPE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
pub const ACCESS_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:access_token";
pub const REFRESH_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:refresh_token";

#[derive(Debug, Error)]
pub enum ExchangeError {
    #[error(
        "user {user}: the IdP {issuer} refused the token exchange for audience {audience}: {refusal} — {hint}; the kubeconfig's credentials were left as they are"
    )]
    Refused {
        user: String,
        issuer: String,
        audience: String,
        /// The OAuth `error`, with its description in parentheses.
        refusal: String,
        hint: &'static str,
    },
    #[error(
        "user {user}: cannot reach the IdP {issuer} for the token exchange: {detail}; the kubeconfig's credentials were left as they are"
    )]
    Unreachable {
        user: String,
        issuer: String,
        detail: String,
    },
    #[error(
        "user {user}: the IdP {issuer} gave an unusable token exchange answer: {detail}; the kubeconfig's credentials were left as they are"
    )]
    BadAnswer {
        user: String,
        issuer: String,
        detail: String,
    },
}

impl ExchangeError {
    pub fn exit(&self) -> Exit {
        match self {
            Self::Refused { .. } => Exit::NoPerm,
            Self::Unreachable { .. } => Exit::Unavailable,
            Self::BadAnswer { .. } => Exit::Software,
        }
    }
}

/// The exchange request's form (without client authentication, which goes
/// in the Authorization header).
pub fn form(
    s: &ExchangeSettings,
    subject_token: &str,
    want_refresh: bool,
) -> Vec<(&'static str, String)> {
    let mut f = vec![
        ("grant_type", GRANT_TYPE.to_owned()),
        ("subject_token", subject_token.to_owned()),
        ("subject_token_type", ACCESS_TOKEN_TYPE.to_owned()),
        ("audience", s.audience.clone()),
    ];
    if want_refresh {
        f.push(("requested_token_type", REFRESH_TOKEN_TYPE.to_owned()));
    }
    if let Some(scope) = &s.scope {
        f.push(("scope", scope.clone()));
    }
    f
}

/// What the IdP answered, classified.
#[derive(Debug)]
pub enum Answer {
    Tokens(Login),
    /// An OAuth error (`error`, `error_description`).
    Refused {
        error: String,
        description: String,
    },
    Bad(String),
}

/// Reads the token endpoint's answer.
pub fn parse(status: u16, body: &[u8]) -> Answer {
    let Ok(v) = serde_json::from_slice::<Value>(body) else {
        return Answer::Bad(format!("HTTP {status}, not JSON"));
    };
    let text = |k: &str| v.get(k).and_then(Value::as_str).map(str::to_owned);
    if let Some(error) = text("error") {
        let description = text("error_description").unwrap_or_default();
        return Answer::Refused {
            error: clean(&error, 80),
            description: clean(&description, 200),
        };
    }
    if !(200..300).contains(&status) {
        return Answer::Bad(format!("HTTP {status} without an OAuth error"));
    }
    match text("access_token") {
        Some(access) => Answer::Tokens(Login {
            access_token: Some(Secret::new(access)),
            refresh_token: text("refresh_token").map(Secret::new),
            id_token: text("id_token").map(Secret::new),
        }),
        None => Answer::Bad("no access_token in the answer".into()),
    }
}

/// The usual cause of a refusal, for the admin.
pub fn hint(error: &str, description: &str) -> &'static str {
    let d = description.to_ascii_lowercase();
    if error == "unauthorized_client" || d.contains("not enabled") || d.contains("not allowed") {
        "enable standard token exchange for the portal client (Keycloak: client attribute \
         standard.token.exchange.enabled=true, \"Standard token exchange\" in its settings)"
    } else if d.contains("audience") || error == "invalid_target" {
        "the audience is not available to the portal client: add an audience mapper for the \
         Kubernetes client to one of its client scopes (requested with K8S_TOKEN_EXCHANGE_SCOPE \
         if optional)"
    } else if error == "invalid_client" {
        "CLIENT_ID/CLIENT_SECRET in hook.env are not the portal client's"
    } else if d.contains("token") && (d.contains("expired") || d.contains("invalid")) {
        "the portal's access token is expired or not from this issuer; log in again"
    } else {
        "check the IdP's token exchange settings for the portal client"
    }
}

/// Whether a refusal is about the refresh token we asked for, so that the
/// exchange is worth repeating without it.
fn refresh_not_allowed(error: &str, description: &str) -> bool {
    let d = description.to_ascii_lowercase();
    error == "invalid_request" && d.contains("requested_token_type")
        || d.contains("refresh token") && d.contains("not")
}

/// Exchanges the portal's access token; blocking, for the kubeconfig
/// thread, bounded by `deadline`.
pub fn exchange(
    s: &ExchangeSettings,
    user: &str,
    login: &Login,
    deadline: Instant,
) -> Result<Login, ExchangeError> {
    let unreachable = |detail: String| ExchangeError::Unreachable {
        user: user.to_owned(),
        issuer: s.issuer.clone(),
        detail,
    };
    let Some(subject) = &login.access_token else {
        return Ok(Login::default());
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| unreachable(format!("cannot start the async runtime: {e}")))?;
    let left = deadline.saturating_duration_since(Instant::now());
    runtime.block_on(async {
        match tokio::time::timeout(left, exchange_async(s, user, subject.expose(), left)).await {
            Ok(r) => r,
            Err(_) => Err(unreachable(format!(
                "no answer within the run's deadline ({:.1}s left)",
                left.as_secs_f64()
            ))),
        }
    })
}

async fn exchange_async(
    s: &ExchangeSettings,
    user: &str,
    subject: &str,
    left: Duration,
) -> Result<Login, ExchangeError> {
    let unreachable = |detail: String| ExchangeError::Unreachable {
        user: user.to_owned(),
        issuer: s.issuer.clone(),
        detail,
    };
    let ca = s.ca_pem.as_deref().map(|p| ("IDP_CA_FILE", p));
    let http = idp::client(ca, left, left.min(Duration::from_secs(5))).map_err(unreachable)?;
    let endpoint = token_endpoint(&http, &s.issuer)
        .await
        .map_err(unreachable)?;
    let mut want_refresh = true;
    loop {
        let resp = http
            .post(&endpoint)
            .basic_auth(&s.client_id, Some(s.client_secret.expose()))
            .form(&form(s, subject, want_refresh))
            .send()
            .await
            .map_err(|e| unreachable(one_line(&e)))?;
        let status = resp.status().as_u16();
        let body = idp::read_limited(resp).await.map_err(unreachable)?;
        match parse(status, &body) {
            Answer::Tokens(login) => return Ok(login),
            Answer::Refused { error, description }
                if want_refresh && refresh_not_allowed(&error, &description) =>
            {
                tracing::debug!("no refresh token allowed from the exchange; asking without");
                want_refresh = false;
            }
            Answer::Refused { error, description } => {
                return Err(ExchangeError::Refused {
                    user: user.to_owned(),
                    issuer: s.issuer.clone(),
                    audience: s.audience.clone(),
                    hint: hint(&error, &description),
                    refusal: if description.is_empty() {
                        error
                    } else {
                        format!("{error} ({description})")
                    },
                });
            }
            Answer::Bad(detail) => {
                return Err(ExchangeError::BadAnswer {
                    user: user.to_owned(),
                    issuer: s.issuer.clone(),
                    detail,
                });
            }
        }
    }
}

/// The token endpoint, from OIDC discovery on the issuer.
async fn token_endpoint(http: &reqwest::Client, issuer: &str) -> Result<String, String> {
    let d = idp::discover(http, issuer).await?;
    let url = idp::discovery_url(issuer);
    match d.token_endpoint {
        _ if d.issuer.trim_end_matches('/') != issuer.trim_end_matches('/') => Err(format!(
            "OIDC discovery at {url} names the issuer {}, not {issuer}; fix IDP_ISSUER_URL",
            clean(&d.issuer, 200)
        )),
        Some(t) => Ok(t),
        None => Err(format!("OIDC discovery at {url} has no token_endpoint")),
    }
}

fn one_line(e: &dyn std::error::Error) -> String {
    truncate(&crate::oneline::error_chain(e), 300)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> ExchangeSettings {
        ExchangeSettings {
            issuer: "https://idp.example/realms/ood".into(),
            client_id: "ondemand".into(),
            client_secret: Secret::new("s3cret"),
            audience: "kubernetes".into(),
            scope: Some("openid kubernetes-audience".into()),
            ca_pem: None,
        }
    }

    #[test]
    fn form_asks_for_the_audience_and_a_refresh_token() {
        let f = form(&settings(), "tok", true);
        let get = |k| f.iter().find(|(n, _)| *n == k).map(|(_, v)| v.as_str());
        assert_eq!(get("grant_type"), Some(GRANT_TYPE));
        assert_eq!(get("subject_token"), Some("tok"));
        assert_eq!(get("subject_token_type"), Some(ACCESS_TOKEN_TYPE));
        assert_eq!(get("audience"), Some("kubernetes"));
        assert_eq!(get("requested_token_type"), Some(REFRESH_TOKEN_TYPE));
        assert_eq!(get("scope"), Some("openid kubernetes-audience"));
        assert!(
            !f.iter().any(|(_, v)| v.contains("s3cret")),
            "secret goes in the header"
        );
        let f = form(&settings(), "tok", false);
        assert!(!f.iter().any(|(n, _)| *n == "requested_token_type"));
    }

    #[test]
    fn answers_are_classified() {
        match parse(
            200,
            br#"{"access_token":"a","refresh_token":"r","token_type":"Bearer"}"#,
        ) {
            Answer::Tokens(l) => {
                assert_eq!(l.access_token.unwrap().expose(), "a");
                assert_eq!(l.refresh_token.unwrap().expose(), "r");
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            parse(400, br#"{"error":"invalid_client","error_description":"Invalid client credentials"}"#),
            Answer::Refused { ref error, .. } if error == "invalid_client"
        ));
        assert!(matches!(parse(502, b"<html>"), Answer::Bad(_)));
        assert!(matches!(parse(200, b"{}"), Answer::Bad(_)));
    }

    #[test]
    fn an_idps_text_reaches_the_log_as_one_line() {
        match parse(
            400,
            b"{\"error\":\"bad\\u001b[2J\",\"error_description\":\"line one\\nline two\\r\"}",
        ) {
            Answer::Refused { error, description } => {
                assert_eq!(
                    (error.as_str(), description.as_str()),
                    ("bad [2J", "line one line two")
                );
            }
            other => panic!("{other:?}"),
        }
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            /// Whatever the token endpoint answers: tokens, a refusal of
            /// bounded one-line text, or a bad answer; never a panic.
            #[test]
            fn any_answer_is_classified(
                status in 100u16..600,
                body in prop_oneof![
                    "(?s).{0,200}",
                    ("(?s).{0,60}", "(?s).{0,300}").prop_map(|(e, d)| serde_json::json!({"error": e, "error_description": d}).to_string()),
                ],
            ) {
                match parse(status, body.as_bytes()) {
                    Answer::Refused { error, description } => {
                        for t in [&error, &description] {
                            prop_assert!(!t.chars().any(char::is_control) && t.chars().count() <= 201);
                        }
                    }
                    Answer::Tokens(l) => prop_assert!((200..300).contains(&status) && l.access_token.is_some()),
                    Answer::Bad(d) => prop_assert!(!d.chars().any(char::is_control)),
                }
            }
        }
    }

    #[test]
    fn hints_name_the_usual_cause() {
        assert!(
            hint("unauthorized_client", "Client not allowed to exchange")
                .contains("standard.token.exchange")
        );
        assert!(
            hint(
                "invalid_request",
                "Requested audience not available: kubernetes"
            )
            .contains("audience mapper")
        );
        assert!(hint("invalid_client", "").contains("CLIENT_SECRET"));
        assert!(refresh_not_allowed(
            "invalid_request",
            "requested_token_type unsupported"
        ));
        assert!(!refresh_not_allowed("invalid_client", "bad secret"));
    }
}
