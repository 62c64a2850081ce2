//! `--user` values and NAMESPACE_PREFIX -> `Username`, `Namespace`, and the
//! name checks and message helpers around them. Input: `PREFIX\nUSER`, or
//! just `USER` (no prefix).
//! Checks: a username maps to exactly the dashboard's namespace (prefix +
//! user with `.`/`@` -> `-`) when that is a DNS-1123 label and is refused
//! otherwise, never renamed; the library's name checks agree with
//! apimachinery's rules; untrusted text is shortened without panics.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ood_k8s_bootstrap::oneline::clean;
use ood_k8s_bootstrap::site::names::{
    Namespace, ObjectName, Username, dns1123_label_problem, dns1123_subdomain_problem, truncate,
};
use ood_k8s_bootstrap_fuzz::*;

fuzz_target!(|data: &[u8]| {
    let Some(text) = text(data) else { return };
    let (prefix, raw) = text.split_once('\n').unwrap_or(("", text));

    names_agree_with_apimachinery(text);
    shorteners(text);

    let user = match Username::parse(raw) {
        Ok(u) => u,
        Err(e) => {
            let msg = e.to_string();
            assert!(is_one_line(&msg), "{msg:?}");
            // 40 characters of the name, each escaped to at most 10.
            assert!(msg.chars().count() < 600, "error too long: {msg}");
            return;
        }
    };
    assert_eq!(user.as_str(), raw);
    assert!((1..=128).contains(&raw.len()));
    assert!(!raw.starts_with(['-', '.']));
    assert!(
        raw.chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-@".contains(c))
    );

    let expected: String = format!("{prefix}{raw}").replace(['.', '@'], "-");
    match Namespace::for_user(prefix, &user) {
        Ok(ns) => {
            assert_eq!(
                ns.as_str(),
                expected,
                "namespace differs from the dashboard's"
            );
            assert!(is_dns1123_label(ns.as_str()));
            // Names derived from the user for the RoleBindings.
            for suffix in [
                "-ood-user",
                "-ood-initializer",
                "-job-pod-reaper-rolebinding",
            ] {
                assert!(is_path_segment_name(&format!("{user}{suffix}")));
            }
        }
        Err(e) => {
            assert!(
                !is_dns1123_label(&expected),
                "{expected:?} is a valid namespace but was refused: {e}"
            );
            assert!(is_one_line(&e.to_string()));
        }
    }
});

fn names_agree_with_apimachinery(s: &str) {
    assert_eq!(
        dns1123_label_problem(s).is_none(),
        is_dns1123_label(s),
        "label check disagrees on {s:?}"
    );
    if dns1123_subdomain_problem(s).is_none() {
        assert!(is_dns1123_subdomain(s), "{s:?} accepted as a subdomain");
    }
    match ObjectName::parse("IMAGE_PULL_SECRET", s) {
        Ok(n) => assert!(is_dns1123_subdomain(n.as_str())),
        Err(e) => assert!(is_one_line(&e.to_string())),
    }
}

fn shorteners(s: &str) {
    for max in [0, 1, 40] {
        let t = truncate(s, max);
        assert!(t.chars().count() <= max + 1);
        assert!(s.starts_with(t.trim_end_matches('…')));
    }
    let l = clean(s, 400);
    assert!(is_one_line(&l) && !l.contains(['\n', '\r', '\t']), "{l:?}");
    assert!(l.chars().count() <= 401);
    assert_eq!(l.trim(), l);
}
