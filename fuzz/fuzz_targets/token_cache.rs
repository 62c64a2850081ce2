//! The exec plugin's token cache (`~/.kube/cache/ood-k8s-bootstrap/*.json`,
//! the user's own file) -> `cache::Cache`, and what the plugin makes
//! of it: the ExecCredential kubectl reads, the RFC 3339 expiry, the
//! freshness test, and the expiry of a refreshed token (`exp` or the IdP's
//! `expires_in`, both untrusted: `tokens::expiry`).
//! Checks: a cache survives a write/read round trip; `Debug` never shows a
//! token; the ExecCredential is JSON kubectl accepts (four-digit-year RFC
//! 3339 that turns back into the expiry); no arithmetic overflows.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ood_k8s_bootstrap::clock::{RFC3339_MAX, rfc3339};
use ood_k8s_bootstrap::credentials::cache::Cache;
use ood_k8s_bootstrap::credentials::credential::exec_credential;
use ood_k8s_bootstrap::credentials::tokens::expiry;
use ood_k8s_bootstrap_fuzz::*;

fuzz_target!(|data: &[u8]| {
    let number = data
        .iter()
        .take(8)
        .fold(0u64, |n, b| (n << 8) | u64::from(*b));
    timestamps(number);

    if let Some(text) = text(data) {
        let e = expiry(text, Some(number), 1_700_000_000);
        if !text.contains('.') {
            assert_eq!(e, 1_700_000_000u64.saturating_add(number));
        }
        let _ = expiry(text, None, u64::MAX);
    }

    let Some(cache) = Cache::from_json(data) else {
        return;
    };
    let json = serde_json::to_vec_pretty(&cache).expect("a cache serialises");
    assert!(
        Cache::from_json(&json) == Some(cache.clone()),
        "round trip changed the cache"
    );

    // Debug shows no token: whatever it shows of one, it shows without it
    // too (the rest of the cache may spell the same text).
    let debug = format!("{cache:?}");
    let without = format!(
        "{:?}",
        Cache {
            token: String::new(),
            refresh_token: None,
            ..cache.clone()
        }
    );
    for secret in [Some(&cache.token), cache.refresh_token.as_ref()]
        .into_iter()
        .flatten()
        .filter(|s| s.len() >= 8)
    {
        assert!(
            !debug.contains(secret.as_str()) || without.contains(secret.as_str()),
            "Debug shows a token"
        );
    }
    for now in [0, 1_700_000_000, u64::MAX] {
        let _ = cache.is_fresh(now);
    }

    let cred: serde_json::Value =
        serde_json::from_str(&exec_credential(&cache.token, cache.expiry)).expect("JSON");
    assert_eq!(cred["kind"], "ExecCredential");
    assert_eq!(cred["status"]["token"].as_str(), Some(cache.token.as_str()));
    let ts = cred["status"]["expirationTimestamp"]
        .as_str()
        .expect("a timestamp");
    assert_eq!(
        parse_rfc3339(ts),
        Some(cache.expiry.min(RFC3339_MAX)),
        "{ts}"
    );
});

fn timestamps(secs: u64) {
    let s = rfc3339(secs);
    assert_eq!(
        parse_rfc3339(&s),
        Some(secs.min(RFC3339_MAX)),
        "{secs} -> {s}"
    );
}
