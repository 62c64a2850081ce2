//! The messages of the privilege-dropped kubeconfig writer: the jobs it
//! reads on stdin (anyone can start it and send anything), the replies
//! root reads back (the child runs as the user, who may tamper with them),
//! and the holder line in kubectl's `config.lock` (a file in the user's
//! directory). Checks: a job list survives a round trip and its cache file
//! name cannot leave the cache directory; root reads back exactly one reply
//! per job or none, each bounded, one-line text; the lock holder parse is
//! the inverse of what we write, pid always > 0.
#![no_main]

use std::path::{Component, Path};

use libfuzzer_sys::fuzz_target;
use ood_k8s_bootstrap::credentials::kubeconfig::write::{
    Job, Reply, is_cache_file_name, lock_holder, lock_line,
};
use ood_k8s_bootstrap_fuzz::*;

fuzz_target!(|data: &[u8]| {
    if let Some(jobs) = Job::list_from_json(data) {
        let json = serde_json::to_vec(&jobs).expect("jobs serialise");
        assert!(Job::list_from_json(&json) == Some(jobs), "job round trip");
    }

    // Any number of replies: exactly that many back, or none.
    let count = data.first().map_or(0, |b| usize::from(b % 4));
    for reply in Reply::from_child(data, count).into_iter().flatten() {
        let texts: Vec<String> = match &reply {
            Reply::Done { path, warnings, .. } => {
                assert!(warnings.len() <= 8, "{} warnings passed on", warnings.len());
                let mut t = warnings.clone();
                t.push(path.to_string_lossy().into_owned());
                t
            }
            Reply::Failed(f) => vec![f.why.clone(), f.path.to_string_lossy().into_owned()],
        };
        for t in texts {
            assert!(is_one_line(&t), "{t:?}");
            assert!(t.chars().count() <= 401, "{} chars", t.chars().count());
        }
    }
    if let Some(replies) = Reply::from_child(data, count) {
        assert_eq!(replies.len(), count, "as many replies as jobs");
    }

    let Some(text) = text(data) else { return };
    if is_cache_file_name(text) {
        let mut parts = Path::new(text).components();
        assert!(
            matches!(parts.next(), Some(Component::Normal(_))),
            "{text:?}"
        );
        assert!(parts.next().is_none(), "{text:?} is not one name");
    }
    if let Some((pid, host)) = lock_holder(text) {
        assert!(pid > 0);
        let line = lock_line(pid as u32, host);
        assert_eq!(lock_holder(&line), Some((pid, host)), "{line:?}");
    }
});
