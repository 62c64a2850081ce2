//! Sanity checks on the OIDC tokens before they are written anywhere: the
//! token is a JWT, it has not expired, and (a warning only) its audience
//! includes the client id the API server trusts.
//!
//! No signature is verified: the API server does that. These checks only
//! catch the mistakes a site admin can make (an opaque token from the IdP,
//! a stale session, a client without the Kubernetes audience) with a clear
//! message at login instead of a puzzling 401 later.

use base64::Engine;
use base64::engine::{GeneralPurpose, GeneralPurposeConfig};
use serde::Deserialize;
use thiserror::Error;

/// base64url, with or without padding (JWTs have none, but be lenient).
const B64: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::URL_SAFE,
    GeneralPurposeConfig::new()
        .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
);

/// The claims we look at.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Claims {
    /// Expiry, Unix seconds.
    pub exp: Option<u64>,
    pub aud: Vec<String>,
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum TokenError {
    #[error(
        "{what} is not a JWT (three base64url parts with a JSON payload); the API server can only verify JWTs (is the IdP issuing opaque access tokens?)"
    )]
    NotJwt { what: &'static str },
    #[error(
        "{what} expired {ago} s ago (the portal session is older than the token; log out of OnDemand and in again)"
    )]
    Expired { what: &'static str, ago: u64 },
}

#[derive(Deserialize)]
struct RawClaims {
    exp: Option<serde_json::Value>,
    aud: Option<serde_json::Value>,
}

/// Decodes the payload of a JWT (no signature check).
pub fn claims(token: &str, what: &'static str) -> Result<Claims, TokenError> {
    let raw: RawClaims = serde_json::from_value(serde_json::Value::Object(payload(token, what)?))
        .map_err(|_| TokenError::NotJwt { what })?;
    let exp = match raw.exp {
        Some(serde_json::Value::Number(n)) => n
            .as_u64()
            .or_else(|| n.as_f64().filter(|f| *f >= 0.0).map(|f| f as u64)),
        _ => None,
    };
    let aud = match raw.aud {
        Some(serde_json::Value::String(s)) => vec![s],
        Some(serde_json::Value::Array(a)) => a
            .into_iter()
            .filter_map(|v| v.as_str().map(str::to_owned))
            .collect(),
        _ => Vec::new(),
    };
    Ok(Claims { exp, aud })
}

/// Every claim of a JWT's payload (no signature check), for reports such
/// as `doctor`'s "whose token is this".
pub fn payload(
    token: &str,
    what: &'static str,
) -> Result<serde_json::Map<String, serde_json::Value>, TokenError> {
    let not_jwt = || TokenError::NotJwt { what };
    let mut parts = token.split('.');
    let (Some(header), Some(payload), Some(_sig), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(not_jwt());
    };
    let header = B64.decode(header).map_err(|_| not_jwt())?;
    serde_json::from_slice::<serde_json::Map<String, serde_json::Value>>(&header)
        .map_err(|_| not_jwt())?;
    let payload = B64.decode(payload).map_err(|_| not_jwt())?;
    serde_json::from_slice(&payload).map_err(|_| not_jwt())
}

/// Expiry assumed for a token that says nothing about it, in seconds.
pub const DEFAULT_LIFETIME: u64 = 300;

/// When a token the IdP just issued expires, in Unix seconds: its own
/// `exp`, else `now` plus the answer's `expires_in`, else
/// [`DEFAULT_LIFETIME`] from now. Both numbers are the IdP's word, so
/// anything: the sum saturates rather than overflow.
pub fn expiry(token: &str, expires_in: Option<u64>, now: u64) -> u64 {
    claims(token, "the token")
        .ok()
        .and_then(|c| c.exp)
        .unwrap_or_else(|| now.saturating_add(expires_in.unwrap_or(DEFAULT_LIFETIME)))
}

/// Tokens this close to expiry are refreshed whatever their lifetime.
pub const MIN_LEFT: u64 = 5;

/// Whether a token issued at `obtained` (Unix seconds; 0 when unknown) and
/// expiring at `expiry` is still good at `now` without a refresh: more
/// than `margin` seconds left, where the margin is `cap`, or a third of the
/// token's lifetime when that is shorter (a 20 s token with a 30 s margin
/// would never be fresh), and never under [`MIN_LEFT`].
pub fn is_fresh(expiry: u64, obtained: u64, now: u64, cap: u64) -> bool {
    let lifetime = match obtained {
        0 => u64::MAX,
        t => expiry.saturating_sub(t),
    };
    let margin = cap.min(lifetime / 3).max(MIN_LEFT);
    expiry > now.saturating_add(margin)
}

/// A token that passed the checks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checked {
    pub claims: Claims,
    /// Things to tell the admin that do not stop the write.
    pub warning: Option<String>,
}

/// Checks `token` at Unix time `now`: a JWT, not expired; warns when
/// `client_id` is given and not in `aud`.
pub fn check(
    token: &str,
    what: &'static str,
    now: u64,
    client_id: Option<&str>,
) -> Result<Checked, TokenError> {
    let claims = claims(token, what)?;
    if let Some(exp) = claims.exp
        && exp <= now
    {
        return Err(TokenError::Expired {
            what,
            ago: now - exp,
        });
    }
    let warning = match client_id {
        Some(id) if !claims.aud.iter().any(|a| a == id) => Some(format!(
            "{what} is for audience {:?}, not {id:?}: fine if the API server trusts one of those audiences; one that expects {id:?} (--oidc-client-id) will refuse it (then add an audience mapper for it at the IdP)",
            claims.aud
        )),
        _ => None,
    };
    Ok(Checked { claims, warning })
}

/// Encodes claims as an unsigned JWT-shaped string (tests only).
#[cfg(test)]
pub fn fake_jwt(payload: &serde_json::Value) -> String {
    let enc = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    format!(
        "{}.{}.c2ln",
        enc.encode(br#"{"alg":"RS256","typ":"JWT"}"#),
        enc.encode(payload.to_string())
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn good_token() {
        let t = fake_jwt(&json!({"exp": 2000, "aud": "ood-portal", "sub": "x"}));
        let c = check(&t, "access token", 1000, Some("ood-portal")).unwrap();
        assert_eq!(c.claims.exp, Some(2000));
        assert_eq!(c.warning, None);
    }

    #[test]
    fn audience_list_and_warning() {
        let t = fake_jwt(&json!({"exp": 2000, "aud": ["a", "b"]}));
        assert_eq!(check(&t, "t", 1, Some("b")).unwrap().warning, None);
        let w = check(&t, "t", 1, Some("k8s")).unwrap().warning.unwrap();
        assert!(w.contains("k8s") && !w.contains(&t), "{w}");
    }

    #[test]
    fn expired_and_not_jwt() {
        let t = fake_jwt(&json!({"exp": 1000}));
        assert_eq!(
            check(&t, "t", 1500, None),
            Err(TokenError::Expired {
                what: "t",
                ago: 500
            })
        );
        assert_eq!(
            check("opaque-token", "t", 1, None),
            Err(TokenError::NotJwt { what: "t" })
        );
        assert_eq!(
            check("a.b.c", "t", 1, None),
            Err(TokenError::NotJwt { what: "t" })
        );
    }

    #[test]
    fn expiry_prefers_exp_and_never_overflows() {
        let t = fake_jwt(&json!({"exp": 2000}));
        assert_eq!(expiry(&t, Some(5), 1000), 2000);
        assert_eq!(expiry("opaque", Some(40), 1000), 1040);
        assert_eq!(expiry("opaque", None, 1000), 1300);
        assert_eq!(expiry("opaque", Some(u64::MAX), 1000), u64::MAX);
        let huge = fake_jwt(&json!({"exp": 1e300}));
        assert_eq!(expiry(&huge, None, 1000), u64::MAX);
    }

    #[test]
    fn freshness_margin_scales_with_the_lifetime() {
        // An hour-long token: the full cap of 30 s.
        assert!(is_fresh(10_000 + 3600, 10_000, 10_000 + 3600 - 31, 30));
        assert!(!is_fresh(10_000 + 3600, 10_000, 10_000 + 3600 - 30, 30));
        // A 20 s token is fresh for its first 14 s (margin 6 s), not never.
        assert!(is_fresh(10_020, 10_000, 10_013, 30));
        assert!(!is_fresh(10_020, 10_000, 10_014, 30));
        // A 6 s token: never under MIN_LEFT.
        assert!(!is_fresh(10_006, 10_000, 10_001, 30));
        // Issue time unknown (an older cache file): the full cap.
        assert!(!is_fresh(10_020, 0, 10_000, 30));
        assert!(is_fresh(10_031, 0, 10_000, 30));
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            /// The margin is between MIN_LEFT and the cap: a token with more
            /// than the cap left is fresh, one with MIN_LEFT or less is not.
            #[test]
            fn freshness_is_bounded_by_cap_and_min_left(
                expiry in any::<u64>(), obtained in any::<u64>(), now in any::<u64>(), cap in 0u64..600,
            ) {
                let fresh = is_fresh(expiry, obtained, now, cap);
                if expiry > now.saturating_add(cap.max(MIN_LEFT)) { prop_assert!(fresh); }
                if expiry <= now.saturating_add(MIN_LEFT) { prop_assert!(!fresh); }
            }

            /// Arbitrary text, JWT-shaped or not, at any clock: a result,
            /// never a panic, and no message quotes the token.
            #[test]
            fn token_checks_never_panic(
                token in "(?s).{0,200}|[A-Za-z0-9_=-]{0,40}\\.[A-Za-z0-9_=-]{0,60}\\.[A-Za-z0-9_-]{0,10}",
                now in any::<u64>(),
                client in proptest::option::of("[a-z-]{1,12}"),
                expires_in in proptest::option::of(any::<u64>()),
            ) {
                match check(&token, "t", now, client.as_deref()) {
                    Ok(c) => {
                        prop_assert!(c.claims.exp.is_none_or(|e| e > now));
                        if let Some(w) = c.warning {
                            prop_assert!(token.len() < 8 || !w.contains(&token));
                        }
                    }
                    Err(e) => prop_assert!(token.len() < 8 || !e.to_string().contains(&token)),
                }
                let e = expiry(&token, expires_in, now);
                if claims(&token, "t").ok().and_then(|c| c.exp).is_none() {
                    prop_assert_eq!(e, now.saturating_add(expires_in.unwrap_or(DEFAULT_LIFETIME)));
                }
            }

            /// The claims of a JWT are read back as written.
            #[test]
            fn claims_are_read_back(
                exp in proptest::option::of(any::<u64>()),
                aud in proptest::collection::vec("[ -~]{0,12}", 0..4),
                single in any::<bool>(),
            ) {
                let mut payload = serde_json::Map::new();
                if let Some(exp) = exp {
                    payload.insert("exp".into(), exp.into());
                }
                let aud_json = match (&aud[..], single) {
                    ([one], true) => json!(one),
                    _ => json!(aud),
                };
                payload.insert("aud".into(), aud_json);
                let c = claims(&fake_jwt(&payload.into()), "t").unwrap();
                prop_assert_eq!(c.exp, exp);
                prop_assert_eq!(c.aud, aud);
            }
        }
    }
}
