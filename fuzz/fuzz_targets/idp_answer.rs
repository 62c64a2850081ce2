//! What the OIDC identity provider answers: a token endpoint's answer to
//! the token exchange (`exchange::parse`) and to the broker's refresh
//! (`tokenset::read_answer`, then `TokenSet::refreshed`), and a discovery
//! document (`idp::parse_discovery`). The HTTP status is picked by the
//! input's length.
//! Checks: every text quoted from the IdP is one bounded line; tokens only
//! from a 2xx answer; a refreshed set's expiry never overflows and is what
//! the token or `expires_in` says.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ood_k8s_bootstrap::credentials::broker::tokenset::{
    Bearer, Obtained, RefreshWith, Source, TokenSet, read_answer,
};
use ood_k8s_bootstrap::credentials::exchange::{self, Answer};
use ood_k8s_bootstrap::credentials::{idp, tokens};
use ood_k8s_bootstrap_fuzz::*;

const STATUSES: [u16; 8] = [200, 201, 400, 401, 403, 429, 500, 503];
const NOW: u64 = 1_700_000_000;
// header {"alg":"RS256"}, payload {"exp":1700000040}
const JWT: &str = "eyJhbGciOiJSUzI1NiJ9.eyJleHAiOjE3MDAwMDAwNDB9.c2ln";

fuzz_target!(|data: &[u8]| {
    let status = STATUSES[data.len() % STATUSES.len()];

    match exchange::parse(status, data) {
        Answer::Tokens(login) => {
            assert!((200..300).contains(&status));
            assert!(login.access_token.is_some());
        }
        Answer::Refused { error, description } => {
            assert!(
                is_one_line(&error) && error.chars().count() <= 81,
                "{error:?}"
            );
            assert!(is_one_line(&description) && description.chars().count() <= 201);
            let _ = exchange::hint(&error, &description);
        }
        Answer::Bad(detail) => assert!(is_one_line(&detail), "{detail:?}"),
    }

    match read_answer(status, data) {
        Ok(answer) => {
            assert!((200..300).contains(&status));
            refreshed(&answer);
        }
        Err(e) => assert!(is_one_line(&e.to_string()), "{e}"),
    }

    if let Ok(v) = serde_json::from_slice(data) {
        let url = "https://idp.example/.well-known/openid-configuration";
        match idp::parse_discovery(url, &v) {
            Ok(d) => assert_eq!(Some(d.issuer.as_str()), v["issuer"].as_str()),
            Err(e) => assert!(is_one_line(&e), "{e:?}"),
        }
    }
});

/// A login set refreshed with the answer.
fn refreshed(answer: &ood_k8s_bootstrap::credentials::broker::tokenset::TokenAnswer) {
    let with = RefreshWith {
        issuer: "https://idp.example".into(),
        token_endpoint: None,
        client_id: "ood".into(),
        audience: None,
        scope: None,
    };
    let tokens = Obtained {
        access_token: JWT,
        id_token: Some(JWT),
        refresh_token: Some("r1"),
        bearer: Bearer::AccessToken,
        source: Source::Login,
    };
    let set = TokenSet::new(1001, "alice", &tokens, with, NOW).expect("a login set");
    let later = NOW + 30;
    let new = set
        .refreshed(answer, later)
        .expect("an access-token set refreshes");
    assert_eq!(
        new.expiry,
        tokens::expiry(&answer.access_token, answer.expires_in, later)
    );
    assert_eq!(new.obtained, later);
    let ts = new.exec_credential()["status"]["expirationTimestamp"]
        .as_str()
        .map(str::to_owned)
        .expect("a timestamp");
    assert!(parse_rfc3339(&ts).is_some(), "{ts}");
    for now in [later, u64::MAX] {
        let _ = (new.fresh(now), new.usable(now));
    }
}
