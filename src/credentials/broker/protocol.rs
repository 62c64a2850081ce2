//! Pure: the broker's wire protocol, version 1 (see the module doc of
//! [`crate::credentials::broker`] for the whole exchange). One JSON line each way; both
//! sides refuse what they do not understand rather than guess.

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::oneline::clean;

/// The protocol version this build speaks.
pub const VERSION: u32 = 1;
/// Longest request line, newline included.
pub const MAX_REQUEST: usize = 4096;
/// Longest response line the plugin reads: a response holds one token of
/// a stored set (at most [`MAX_SET`](super::tokenset::MAX_SET) bytes in
/// all), plus the envelope.
pub const MAX_RESPONSE: usize = super::tokenset::MAX_SET + 4096;
/// Longest `cluster` name accepted (it is only logged).
const MAX_CLUSTER: usize = 253;

/// What the plugin asks: "my token". Who "my" is comes from the socket
/// (`SO_PEERCRED`), never from the request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Request {
    pub v: u32,
    /// The kubeconfig cluster the token is for (logged, not trusted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<String>,
}

/// Why a request was not answered with a token. The codes are part of the
/// protocol; the message is for the user and is printed by the plugin.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// No token set is stored for the caller's uid.
    NoCredentials,
    /// The IdP refused the refresh (or none was possible): log in again.
    SessionEnded,
    /// The IdP did not answer in time or failed; try again later.
    IdpUnavailable,
    /// The broker's configuration is wrong (e.g. the IdP refused its
    /// client): an administrator must act.
    BrokerMisconfigured,
    /// Too many requests from this uid.
    RateLimited,
    /// Too many connections at once.
    Busy,
    /// The request line was longer than [`MAX_REQUEST`].
    TooLarge,
    /// The request did not parse.
    BadRequest,
    /// A protocol version this broker does not speak.
    UnsupportedVersion,
    /// The request did not arrive in time.
    Timeout,
    /// Anything else (storage failure, a bug).
    Internal,
}

/// An error answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ErrorBody {
    pub code: ErrorCode,
    pub message: String,
}

/// The broker's answer: a kubectl ExecCredential, or an error.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Response {
    pub v: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorBody>,
}

/// Why a request line is refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum RequestError {
    #[error("the request is not protocol JSON: {0}")]
    Malformed(String),
    #[error(
        "the plugin speaks protocol version {0}, this broker speaks {VERSION}: install the same ood-k8s-bootstrap version for both"
    )]
    Version(u32),
    #[error(
        "the cluster name is longer than {MAX_CLUSTER} bytes or holds control or invisible format characters"
    )]
    Cluster,
}

impl RequestError {
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::Version(_) => ErrorCode::UnsupportedVersion,
            _ => ErrorCode::BadRequest,
        }
    }
}

/// Parses one request line (without its newline). Anyone on the host may
/// send anything: errors are one line and quote none of it raw (the
/// parser's message can hold a field name from the request).
pub fn parse_request(line: &[u8]) -> Result<Request, RequestError> {
    let malformed = |e: serde_json::Error| RequestError::Malformed(clean(&e.to_string(), 200));
    // The version first, so a newer plugin gets the version error rather
    // than "unknown field".
    let value: serde_json::Value = serde_json::from_slice(line).map_err(malformed)?;
    match value.get("v").and_then(serde_json::Value::as_u64) {
        Some(v) if v == u64::from(VERSION) => {}
        Some(v) => return Err(RequestError::Version(u32::try_from(v).unwrap_or(u32::MAX))),
        None => return Err(RequestError::Malformed("no version \"v\"".into())),
    }
    let req: Request = serde_json::from_value(value).map_err(malformed)?;
    if let Some(c) = &req.cluster
        && (c.len() > MAX_CLUSTER
            || c.chars()
                .any(|c| c.is_control() || crate::oneline::is_format(c)))
    {
        return Err(RequestError::Cluster);
    }
    Ok(req)
}

impl Response {
    pub fn credential(credential: serde_json::Value) -> Self {
        Self {
            v: VERSION,
            credential: Some(credential),
            error: None,
        }
    }

    pub fn error(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            v: VERSION,
            credential: None,
            error: Some(ErrorBody {
                code,
                message: message.into(),
            }),
        }
    }

    /// The response as one line, newline included.
    pub fn to_line(&self) -> Vec<u8> {
        let mut line = serde_json::to_vec(self).unwrap_or_else(|_| {
            br#"{"v":1,"error":{"code":"internal","message":"cannot encode the answer"}}"#.to_vec()
        });
        line.push(b'\n');
        line
    }
}

/// What the plugin makes of a response line: the ExecCredential to print,
/// or the message for the user.
pub fn read_response(line: &[u8]) -> Result<serde_json::Value, String> {
    let resp: Response = serde_json::from_slice(line)
        .map_err(|e| format!("the credential broker sent an answer this plugin cannot read ({}); is it the same ood-k8s-bootstrap version?", clean(&e.to_string(), 200)))?;
    if resp.v != VERSION {
        return Err(format!(
            "the credential broker speaks protocol version {}, this plugin {VERSION}: ask your administrator",
            resp.v
        ));
    }
    match (resp.credential, resp.error) {
        (_, Some(e)) => Err(clean(&e.message, 1000)),
        (Some(c), None) if c["kind"] == "ExecCredential" && c["status"]["token"].is_string() => {
            Ok(c)
        }
        _ => Err("the credential broker sent an answer without a credential".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn requests() {
        assert_eq!(
            parse_request(br#"{"v":1,"cluster":"open-ondemand"}"#).unwrap(),
            Request {
                v: 1,
                cluster: Some("open-ondemand".into())
            }
        );
        assert_eq!(parse_request(br#"{"v":1}"#).unwrap().cluster, None);
        let e = parse_request(br#"{"v":2,"new":true}"#).unwrap_err();
        assert_eq!(e.code(), ErrorCode::UnsupportedVersion);
        // Nothing in the request can name another user.
        let e = parse_request(br#"{"v":1,"uid":0}"#).unwrap_err();
        assert_eq!(e.code(), ErrorCode::BadRequest);
        assert!(parse_request(b"GET / HTTP/1.1").is_err());
        assert!(parse_request(br#"{"cluster":"x"}"#).is_err());
        let long = format!(r#"{{"v":1,"cluster":"{}"}}"#, "a".repeat(300));
        assert_eq!(parse_request(long.as_bytes()), Err(RequestError::Cluster));
    }

    /// The cluster name is logged: a right-to-left override, a line
    /// separator or a zero-width character in it would make the broker's
    /// log line read other than it is.
    #[test]
    fn a_cluster_name_with_format_characters_is_refused() {
        for c in [
            '\u{202E}', '\u{2028}', '\u{2029}', '\u{200B}', '\u{2066}', '\u{FEFF}', '\u{85}',
        ] {
            let line = json!({"v": 1, "cluster": format!("gpu{c}nimda")}).to_string();
            assert_eq!(
                parse_request(line.as_bytes()),
                Err(RequestError::Cluster),
                "{c:?}"
            );
        }
        let fine = json!({"v": 1, "cluster": "gpü-clüster"}).to_string();
        assert!(parse_request(fine.as_bytes()).is_ok());
    }

    #[test]
    fn responses_round_trip() {
        let cred = json!({"apiVersion": "client.authentication.k8s.io/v1", "kind": "ExecCredential",
                          "status": {"token": "t", "expirationTimestamp": "1970-01-01T00:00:00Z"}});
        let line = Response::credential(cred.clone()).to_line();
        assert_eq!(line.last(), Some(&b'\n'));
        assert_eq!(read_response(&line[..line.len() - 1]).unwrap(), cred);
        let line = Response::error(ErrorCode::SessionEnded, "log in again").to_line();
        assert_eq!(read_response(&line).unwrap_err(), "log in again");
        let v: serde_json::Value = serde_json::from_slice(&line).unwrap();
        assert_eq!(v["error"]["code"], "session_ended");
        assert!(read_response(br#"{"v":1,"credential":{"kind":"Other"}}"#).is_err());
        assert!(
            read_response(br#"{"v":9}"#)
                .unwrap_err()
                .contains("version 9")
        );
        assert!(read_response(b"garbage").is_err());
    }

    #[test]
    fn a_hostile_request_is_not_echoed_raw() {
        let e = parse_request(b"{\"v\":1,\"\\u001b[2J\\nx\":1}").unwrap_err();
        assert_eq!(e.code(), ErrorCode::BadRequest);
        let msg = e.to_string();
        assert!(
            msg.contains("unknown field") && !msg.chars().any(char::is_control),
            "{msg:?}"
        );
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            /// Any line: a request with a clean cluster name, or an error
            /// of one line; the plugin's reading of any answer likewise.
            #[test]
            fn any_line_is_a_request_or_a_one_line_error(
                line in prop_oneof![
                    proptest::collection::vec(any::<u8>(), 0..100),
                    ("(?s).{0,20}", "(?s).{0,40}", 0u64..3).prop_map(|(k, c, v)| serde_json::json!({"v": v, k: c}).to_string().into_bytes()),
                    "(?s).{0,300}".prop_map(|c| serde_json::json!({"v": 1, "cluster": c}).to_string().into_bytes()),
                ],
            ) {
                match parse_request(&line) {
                    Ok(r) => prop_assert!(r.cluster.is_none_or(|c| c.len() <= MAX_CLUSTER && !c.chars().any(|c| c.is_control() || crate::oneline::is_format(c)))),
                    Err(e) => prop_assert!(!e.to_string().chars().any(char::is_control), "{:?}", e.to_string()),
                }
                if let Err(m) = read_response(&line) {
                    prop_assert!(!m.chars().any(char::is_control), "{:?}", m);
                }
            }
        }
    }
}
