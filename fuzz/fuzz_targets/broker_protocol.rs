//! The credential broker's inputs: a request line from any local user
//! (`protocol::parse_request`), the answer line the plugin reads
//! (`protocol::read_response`), and a stored token set (`<uid>.json`, read
//! back by the broker) with what is made of it.
//! Checks: an accepted request has a short, control-free cluster name;
//! every error a user or the log sees is one line; a token set survives a
//! round trip, its Debug shows no token, its ExecCredential is kubectl's.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ood_k8s_bootstrap::credentials::broker::protocol::{parse_request, read_response};
use ood_k8s_bootstrap::credentials::broker::tokenset::TokenSet;
use ood_k8s_bootstrap_fuzz::*;

fuzz_target!(|data: &[u8]| {
    match parse_request(data) {
        Ok(req) => {
            if let Some(c) = &req.cluster {
                assert!(c.len() <= 253 && is_one_line(c), "{c:?}");
            }
        }
        Err(e) => {
            let msg = e.to_string();
            assert!(is_one_line(&msg), "{msg:?}");
            assert!(msg.chars().count() < 600, "{msg}");
        }
    }

    match read_response(data) {
        Ok(cred) => {
            assert_eq!(cred["kind"], "ExecCredential");
            assert!(cred["status"]["token"].is_string());
        }
        Err(msg) => assert!(is_one_line(&msg), "{msg:?}"),
    }

    let Ok(set) = serde_json::from_slice::<TokenSet>(data) else {
        return;
    };
    let json = serde_json::to_vec(&set).expect("a set serialises");
    assert!(
        serde_json::from_slice::<TokenSet>(&json).ok() == Some(set.clone()),
        "round trip changed the set"
    );
    // Debug shows no token: whatever it shows of one, it shows without the
    // tokens too (the rest of the set may spell the same text).
    let debug = format!("{set:?}");
    let without = format!(
        "{:?}",
        TokenSet {
            access_token: String::new(),
            id_token: set.id_token.as_ref().map(|_| String::new()),
            refresh_token: set.refresh_token.as_ref().map(|_| String::new()),
            ..set.clone()
        }
    );
    for token in [
        Some(&set.access_token),
        set.refresh_token.as_ref(),
        set.id_token.as_ref(),
    ]
    .into_iter()
    .flatten()
    .filter(|t| t.len() >= 8)
    {
        assert!(
            !debug.contains(token.as_str()) || without.contains(token.as_str()),
            "Debug shows a token"
        );
    }
    for now in [0, 1_700_000_000, u64::MAX] {
        let _ = (set.fresh(now), set.usable(now));
    }
    let cred = set.exec_credential();
    assert_eq!(cred["kind"], "ExecCredential");
    assert_eq!(cred["status"]["token"].as_str(), Some(set.bearer_token()));
    let ts = cred["status"]["expirationTimestamp"]
        .as_str()
        .expect("a timestamp");
    assert!(parse_rfc3339(ts).is_some(), "{ts}");
});
