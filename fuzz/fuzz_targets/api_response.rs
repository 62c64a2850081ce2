//! The API server's error answers (a Status object, or anything at all: a
//! proxy, a half-upgraded server) -> `apply::classify`. The HTTP status is
//! picked by the input's length, the object by its first byte.
//! Checks: a final error is one line of bounded length naming the user and
//! object, with the sysexits status SPEC §7 calls for; throttling and 5xx
//! are retried, with a one-line reason.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ood_k8s_bootstrap::cluster::apply::{ApplyError, Failure, Target, classify};
use ood_k8s_bootstrap::cluster::kinds::Kind;
use ood_k8s_bootstrap::exit::Exit;
use ood_k8s_bootstrap_fuzz::is_one_line;
use serde_json::Value;

const STATUSES: [u16; 13] = [
    400, 401, 403, 404, 409, 410, 422, 429, 500, 502, 503, 504, 507,
];
const OBJECTS: [(Kind, &str); 4] = [
    (Kind::Namespace, "user-first-last"),
    (Kind::RoleBinding, "first.last-ood-user"),
    (Kind::Secret, "regcred"),
    (Kind::NetworkPolicy, "ood-allow"),
];

fuzz_target!(|data: &[u8]| {
    let body: Value = serde_json::from_slice(data).unwrap_or(Value::Null);
    let status = STATUSES[data.len() % STATUSES.len()];
    let (kind, name) = OBJECTS[data.first().map_or(0, |b| usize::from(*b)) % OBJECTS.len()];
    let target = Target::named(kind, "user-first-last", name);
    let prune = data.last().is_some_and(|b| b % 2 == 1);

    match classify(
        "first.last",
        "https://k8s.example:6443",
        &target,
        prune,
        status,
        &body,
        None,
    ) {
        Failure::Final(e) => {
            let msg = e.to_string();
            assert!(is_one_line(&msg), "{msg:?}");
            assert!(msg.chars().count() < 1200, "{} chars", msg.chars().count());
            assert!(msg.contains("first.last"), "{msg}");
            let expected = match status {
                401 => Exit::NoPerm,
                403 if matches!(e, ApplyError::Terminating { .. }) => Exit::TempFail,
                403 => Exit::NoPerm,
                422 => Exit::DataErr,
                _ => Exit::TempFail,
            };
            assert_eq!(e.exit(), expected, "{msg}");
        }
        Failure::Transient(t) => {
            assert!(
                matches!(status, 429 | 500 | 502 | 503 | 504),
                "{status} retried"
            );
            assert!(
                is_one_line(&t.reason) && t.reason.contains(name),
                "{:?}",
                t.reason
            );
        }
    }
});
