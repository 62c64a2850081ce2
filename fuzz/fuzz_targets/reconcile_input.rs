//! `reconcile`'s inputs: the `--users FILE` list and, for `--all`, the API
//! server's namespace list (JSON: a NamespaceList, or its `items` array),
//! read with NAMESPACE_PREFIX `user-` and with none.
//! Checks: list entries are trimmed, non-empty, comment-free, unique, in
//! file order and taken from the file; users found in namespaces are
//! sorted and unique, each an annotation value or a prefix-stripped name.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ood_k8s_bootstrap::admin::reconcile::{parse_user_list, users_of_namespaces};
use serde_json::Value;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let names = parse_user_list(text);
        let mut last = 0;
        for (i, n) in names.iter().enumerate() {
            assert!(
                !n.is_empty() && n.trim() == n && !n.contains(['#', '\n']),
                "{n:?}"
            );
            assert!(!names[..i].contains(n), "{n:?} twice");
            // In file order: each is found after the previous one.
            let at = text[last..].find(n.as_str()).expect("taken from the file");
            last += at + n.len();
        }
    }

    let Ok(json) = serde_json::from_slice::<Value>(data) else {
        return;
    };
    let items = match &json {
        Value::Array(items) => items.clone(),
        other => other
            .get("items")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default(),
    };
    for prefix in ["user-", ""] {
        let users = users_of_namespaces(&items, prefix);
        assert!(
            users.windows(2).all(|w| w[0] < w[1]),
            "not sorted and unique"
        );
        let text = json.to_string();
        for u in &users {
            let quoted = serde_json::to_string(u).expect("a string");
            assert!(
                text.contains(&quoted[1..quoted.len() - 1]),
                "{u:?} from nowhere"
            );
        }
    }
});
