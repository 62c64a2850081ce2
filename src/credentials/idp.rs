//! The pieces every conversation with the OIDC identity provider shares:
//! the HTTPS client (no redirects, bounded, trusting `IDP_CA_FILE`'s
//! bundle) and OIDC discovery. Used by the token exchange, the exec
//! plugin's refresh, the broker and `doctor`.

use std::time::Duration;

use serde_json::Value;

use crate::oneline::error_chain;

/// An HTTPS client for the IdP. `ca` is an extra PEM CA bundle and the name
/// to give it in errors (`IDP_CA_FILE`, or its path).
pub fn client(
    ca: Option<(&str, &[u8])>,
    timeout: Duration,
    connect_timeout: Duration,
) -> Result<reqwest::Client, String> {
    let mut builder = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(timeout)
        .connect_timeout(connect_timeout);
    if let Some((name, pem)) = ca {
        let certs = reqwest::Certificate::from_pem_bundle(pem)
            .map_err(|e| format!("{name} is not a PEM CA bundle: {e}"))?;
        for c in certs {
            builder = builder.add_root_certificate(c);
        }
    }
    builder
        .build()
        .map_err(|e| format!("cannot set up HTTPS: {e}"))
}

/// Largest answer read from the IdP (a discovery document or a token
/// answer is a few kilobytes).
pub const MAX_ANSWER: usize = 256 * 1024;

/// An answer's body, at most [`MAX_ANSWER`] bytes: the IdP is on the
/// network, and what it sends is read into memory.
pub async fn read_limited(mut resp: reqwest::Response) -> Result<Vec<u8>, String> {
    let mut body = Vec::new();
    while let Some(chunk) = resp
        .chunk()
        .await
        .map_err(|e| crate::site::names::truncate(&error_chain(&e), 300))?
    {
        if body.len() + chunk.len() > MAX_ANSWER {
            return Err(format!("the answer is larger than {MAX_ANSWER} bytes"));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// What OIDC discovery says about an issuer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Discovery {
    /// The `issuer` the document names (compare it with the configured one).
    pub issuer: String,
    pub token_endpoint: Option<String>,
    pub grant_types: Option<Vec<String>>,
}

/// The discovery document's address for `issuer`.
pub fn discovery_url(issuer: &str) -> String {
    format!(
        "{}/.well-known/openid-configuration",
        issuer.trim_end_matches('/')
    )
}

/// Fetches and reads `issuer`'s discovery document; errors name the URL.
pub async fn discover(http: &reqwest::Client, issuer: &str) -> Result<Discovery, String> {
    let url = discovery_url(issuer);
    let resp = http
        .get(&url)
        .send()
        .await
        .map_err(|e| crate::site::names::truncate(&error_chain(&e), 300))?;
    let status = resp.status();
    if !status.is_success() {
        return Err(format!("{url} answered {status}"));
    }
    let body = read_limited(resp)
        .await
        .map_err(|e| format!("{url}: {e}"))?;
    let v: Value = serde_json::from_slice(&body)
        .map_err(|_| format!("{url} is not a JSON discovery document"))?;
    parse_discovery(&url, &v)
}

/// The fields of a discovery document we use (the document is the IdP's
/// word: the caller cleans what it quotes).
pub fn parse_discovery(url: &str, v: &Value) -> Result<Discovery, String> {
    let text = |k: &str| v.get(k).and_then(Value::as_str).map(str::to_owned);
    Ok(Discovery {
        issuer: text("issuer").ok_or_else(|| format!("{url} has no issuer"))?,
        token_endpoint: text("token_endpoint"),
        grant_types: v
            .get("grant_types_supported")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|g| g.as_str().map(str::to_owned))
                    .collect()
            }),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn discovery_fields() {
        let v = serde_json::json!({
            "issuer": "https://idp/realms/ood",
            "token_endpoint": "https://idp/realms/ood/protocol/openid-connect/token",
            "grant_types_supported": ["refresh_token", 7],
        });
        let d = parse_discovery("u", &v).unwrap();
        assert_eq!(d.issuer, "https://idp/realms/ood");
        assert_eq!(d.grant_types, Some(vec!["refresh_token".to_owned()]));
        assert!(
            parse_discovery("u", &serde_json::json!({}))
                .unwrap_err()
                .contains("no issuer")
        );
        assert_eq!(
            discovery_url("https://idp/x/"),
            "https://idp/x/.well-known/openid-configuration"
        );
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            /// Any JSON document: its issuer read back as it is, or an
            /// error naming the URL; never a panic.
            #[test]
            fn any_document_is_read_or_refused(
                issuer in proptest::option::of("(?s).{0,40}"),
                endpoint in proptest::option::of(any::<i64>()),
                grants in proptest::collection::vec("[a-z_:-]{0,20}", 0..4),
            ) {
                let v = serde_json::json!({"issuer": issuer, "token_endpoint": endpoint, "grant_types_supported": grants});
                match parse_discovery("u", &v) {
                    Ok(d) => {
                        prop_assert_eq!(Some(d.issuer), issuer);
                        prop_assert_eq!(d.token_endpoint, None);
                        prop_assert_eq!(d.grant_types, Some(grants));
                    }
                    Err(e) => prop_assert!(issuer.is_none() && e.starts_with("u ")),
                }
            }
        }
    }
}
