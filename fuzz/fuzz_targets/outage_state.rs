//! The fast-fail memory (`/run/ood-k8s-bootstrap/outage-*.json`, root-only
//! but read as untrusted) -> `outage::Record::parse`, the message runs fail
//! with, and the record after one more failure. The clock is picked by the
//! input's first bytes.
//! Checks: a record is used only if plausible for this server and clock;
//! its message is one line naming the user; no arithmetic overflows.
#![no_main]

use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use ood_k8s_bootstrap::cluster::outage::{Record, window};
use ood_k8s_bootstrap::exit::Exit;
use ood_k8s_bootstrap_fuzz::*;

const SERVER: &str = "https://k8s.example:6443";
const MAX: Duration = Duration::from_secs(30);

fuzz_target!(|data: &[u8]| {
    let clock = data
        .iter()
        .take(8)
        .fold(0u64, |n, b| (n << 8) | u64::from(*b));
    let Some(text) = text(data) else { return };
    for now in [1_700_000_000_000, clock] {
        let Some(r) = Record::parse(text, SERVER, now, MAX) else {
            continue;
        };
        assert_eq!(r.server, SERVER);
        assert!(r.since_ms <= now && r.failures >= 1);
        assert!(r.until_ms <= now.saturating_add(30_000));
        assert!(matches!(r.exit(), Exit::Unavailable | Exit::TempFail));
        let msg = r.message("alice", now);
        assert!(is_one_line(&msg) && msg.contains("user alice"), "{msg:?}");
        let _ = r.in_window(now);
        let next = Record::failed(Some(r.clone()), SERVER, now, text, Exit::Unavailable, MAX);
        assert_eq!(next.failures, r.failures.saturating_add(1));
        assert!(is_one_line(&next.detail) && next.detail.chars().count() <= 301);
        assert!(window(next.failures, MAX) <= MAX);
        let again = serde_json::to_string(&next).expect("a record serialises");
        assert_eq!(Record::parse(&again, SERVER, now, MAX), Some(next));
    }
});
