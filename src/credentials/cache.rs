//! The exec plugin's token cache, `~/.kube/cache/ood-k8s-bootstrap/<entry>.json`:
//! written at login by the kubeconfig writer (as the user), read and
//! refreshed by the plugin (`credential`). Its own module so that the
//! writer and the plugin both use it without using each other.

use std::fmt;

use serde::{Deserialize, Serialize};

/// The cache directory, relative to `~/.kube`.
pub const CACHE_DIR: &str = "cache/ood-k8s-bootstrap";
/// A token with less than this left is refreshed (or a third of its
/// lifetime, when that is shorter: `tokens::is_fresh`).
const MARGIN: u64 = 30;

/// The per-user token cache (JSON).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cache {
    pub issuer: String,
    /// The client the refresh token is refreshed as (no secret).
    pub client_id: String,
    /// The bearer token kubectl presents (ID token, else access token).
    pub token: String,
    /// Its expiry, Unix seconds.
    pub expiry: u64,
    /// When it was obtained, Unix seconds (0 in caches written before this
    /// was recorded: the margin is then the full [`MARGIN`]).
    #[serde(default)]
    pub obtained: u64,
    pub refresh_token: Option<String>,
}

impl Cache {
    /// Parses a cache file. It is the user's own file, so anything may be
    /// in it; `None` when it is not a cache.
    pub fn from_json(bytes: &[u8]) -> Option<Self> {
        serde_json::from_slice(bytes).ok()
    }

    /// Whether the token is good for a while yet: more than `MARGIN`
    /// seconds left, or a third of its lifetime when that is shorter.
    pub fn is_fresh(&self, now: u64) -> bool {
        crate::credentials::tokens::is_fresh(self.expiry, self.obtained, now, MARGIN)
    }
}

impl fmt::Debug for Cache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Cache")
            .field("issuer", &self.issuer)
            .field("client_id", &self.client_id)
            .field("expiry", &self.expiry)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// A cache file is read back as written, `Debug` shows no token,
        /// freshness never overflows.
        #[test]
        fn cache_round_trip(
            token in "tok[A-Za-z0-9_-]{5,37}",
            refresh in proptest::option::of("[A-Za-z0-9._-]{8,40}"),
            expiry in any::<u64>(),
            now in any::<u64>(),
        ) {
            let c = Cache {
                issuer: "https://idp".into(),
                client_id: "c".into(),
                token: token.clone(),
                expiry,
                obtained: 0,
                refresh_token: refresh,
            };
            let json = serde_json::to_vec_pretty(&c).unwrap();
            prop_assert!(Cache::from_json(&json) == Some(c.clone()));
            let debug = format!("{c:?}");
            prop_assert!(!debug.contains(&token));
            prop_assert_eq!(c.is_fresh(now), expiry > now.saturating_add(MARGIN));
        }

        #[test]
        fn arbitrary_cache_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = Cache::from_json(&bytes);
        }
    }
}
