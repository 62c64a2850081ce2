//! OIDC tokens from the portal login -> `tokens::claims` / `tokens::check`.
//! An input with a `.` is used as the token itself; otherwise it is taken
//! as a JWT payload and wrapped in a header and signature, so the fuzzer
//! explores the claims JSON without having to find valid base64url.
//! Checks: only three-part tokens decode; an accepted token is unexpired;
//! "expired N s ago" is exact; no message or warning quotes the token;
//! the ServiceAccount a token names (`root_kubeconfig::service_account`,
//! for doctor and root-token) is read from any claims without a panic.
#![no_main]

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use libfuzzer_sys::fuzz_target;
use ood_k8s_bootstrap::admin::root_kubeconfig::service_account;
use ood_k8s_bootstrap::credentials::tokens::{TokenError, check, claims, payload};
use ood_k8s_bootstrap_fuzz::*;

const NOW: u64 = 1_700_000_000;

fuzz_target!(|data: &[u8]| {
    let Some(text) = text(data) else { return };
    let token = if text.contains('.') {
        text.to_owned()
    } else {
        format!(
            "{}.{}.c2ln",
            URL_SAFE_NO_PAD.encode(br#"{"alg":"RS256","typ":"JWT"}"#),
            URL_SAFE_NO_PAD.encode(text)
        )
    };
    let client_id = data.len().is_multiple_of(2).then_some("ood-portal");

    let decoded = claims(&token, "the access token");
    if decoded.is_ok() {
        assert_eq!(token.split('.').count(), 3);
    }
    match check(&token, "the access token", NOW, client_id) {
        Ok(c) => {
            assert_eq!(Ok(&c.claims), decoded.as_ref());
            assert!(c.claims.exp.is_none_or(|exp| exp > NOW));
            if let Some(w) = &c.warning {
                assert!(client_id.is_some());
                no_leak(w, &token);
            }
        }
        Err(e) => {
            if let TokenError::Expired { ago, .. } = e {
                let exp = decoded.as_ref().ok().and_then(|c| c.exp).expect("an exp");
                assert_eq!(ago, NOW - exp);
            } else {
                assert!(decoded.is_err());
            }
            no_leak(&e.to_string(), &token);
        }
    }
    // Whose a ServiceAccount token is (doctor, root-token): any claims.
    if let Ok(p) = payload(&token, "the token")
        && let Some((ns, name)) = service_account(&p)
    {
        assert!(token.len() >= ns.len() + name.len());
    }
    // Any clock: no overflow.
    let _ = check(&token, "t", u64::MAX, client_id);
    let _ = check(&token, "t", 0, client_id);
});

fn no_leak(msg: &str, token: &str) {
    assert!(is_one_line(msg), "{msg:?}");
    // The audience list is quoted on purpose; the token's parts never are
    // (unless the part is our own wording, which a fuzzer can write).
    let what = "the access token";
    let ours = format!(
        "{} {}",
        TokenError::NotJwt { what },
        TokenError::Expired { what, ago: 0 }
    );
    for part in token.split('.').filter(|p| p.len() >= 16) {
        assert!(
            !msg.contains(part) || ours.contains(part),
            "message quotes the token: {msg}"
        );
    }
}
