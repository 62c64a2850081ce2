//! Root's kubeconfig -> `root_kubeconfig::resolve` (kubectl's rules from
//! the current context to the user entry and its credentials) and, for a
//! plain token, `replace_token` (the byte-exact edit `root-token` makes).
//! Checks: a resolved token is the user entry's `token`; an edit succeeds
//! only as exactly that token replaced, everything else byte for byte.
#![no_main]

use std::path::{Path, PathBuf};

use libfuzzer_sys::fuzz_target;
use ood_k8s_bootstrap::admin::root_kubeconfig::{Credential, replace_token, resolve};
use ood_k8s_bootstrap::credentials::kubeconfig::merge;
use ood_k8s_bootstrap_fuzz::*;

const NEW: &str = "eyJhbGciOiJSUzI1NiJ9.eyJuZXciOnRydWV9.bmV3";

fuzz_target!(|data: &[u8]| {
    let Some(text) = text(data) else { return };
    let Ok(tree) = merge::parse(text) else { return };
    let path = PathBuf::from("/root/.kube/config");
    let files = vec![(path.clone(), tree)];
    let resolved = match resolve(&files, None) {
        Ok(r) => r,
        Err(e) => {
            assert!(is_one_line(&e.to_string()), "{e:?}");
            return;
        }
    };
    let Credential::Token(old) = &resolved.credential else {
        return;
    };
    let old = old.expose();
    match replace_token(
        Path::new("/root/.kube/config"),
        text,
        &resolved.user,
        old,
        NEW,
    ) {
        Ok(edited) => {
            assert_eq!(text.matches(old).count(), 1);
            assert_eq!(edited, text.replacen(old, NEW, 1));
            let again = merge::parse(&edited).expect("the edit parses");
            let r = resolve(&[(path, again)], None).expect("the edit resolves");
            assert!(matches!(&r.credential, Credential::Token(t) if t.expose() == NEW));
            assert_eq!((r.context, r.user), (resolved.context, resolved.user));
        }
        Err(e) => {
            let msg = e.to_string();
            assert!(is_one_line(&msg), "{msg:?}");
            let named = resolved.user.contains(old) || resolved.context.contains(old);
            assert!(old.len() < 16 || named || !msg.contains(old), "{msg}");
        }
    }
});
