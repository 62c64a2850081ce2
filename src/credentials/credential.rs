//! `ood-k8s-bootstrap credential`: the kubectl exec credential plugin
//! (`client.authentication.k8s.io/v1`) that the `exec` credential mode
//! writes into the user's kubeconfig.
//!
//! It runs as the user, from kubectl. The hook writes the user's tokens to
//! `~/.kube/cache/ood-k8s-bootstrap/<entry>.json` (0600, in a 0700
//! directory) at each portal login. The plugin prints the cached token
//! while it is valid; once it is about to expire it refreshes it with the
//! refresh token at the token endpoint found by OIDC discovery on the
//! issuer, as a public client (client id only, no secret: none exists in
//! the user's home), and writes the new tokens back atomically. Refreshes
//! are serialised by an `flock` on `<entry>.lock` beside the cache, which
//! the hook also takes while writing the cache at login; whoever gets the
//! lock second re-reads the cache and uses the fresh token.
//!
//! The refresh can only work if the refresh token belongs to a client the
//! IdP lets refresh without a secret (a public client). A portal's
//! confidential client's refresh token — what OnDemand's login gives —
//! cannot be refreshed here: kubectl then works until the login's token
//! expires and says to log in again. `K8S_CREDENTIALS=broker`
//! ([`crate::credentials::broker`]) refreshes those, as root, with the portal's secret.

use std::fmt;
use std::fs::File;
use std::io::Read;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Parser;
use nix::fcntl::{OFlag, openat};
use nix::sys::stat::{Mode, fstat};
use nix::unistd::Uid;
use serde::{Deserialize, Serialize};

use crate::credentials::kubeconfig::write::{self, Failure};

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

/// `ood-k8s-bootstrap credential --issuer URL --client-id ID --cache PATH`
#[derive(Debug, Parser)]
#[command(
    name = "ood-k8s-bootstrap credential",
    about = "kubectl exec credential plugin: prints the user's cached OIDC token, refreshing it when needed"
)]
pub struct CredentialArgs {
    /// The OIDC issuer (discovery is done on it).
    #[arg(long, value_name = "URL")]
    pub issuer: String,
    /// The public client the refresh token is refreshed as.
    #[arg(long, value_name = "ID")]
    pub client_id: String,
    /// The token cache file written by the hook at login.
    #[arg(long, value_name = "PATH")]
    pub cache: PathBuf,
    /// Extra CA bundle (PEM) for the issuer's TLS certificate.
    #[arg(long, value_name = "PATH")]
    pub issuer_ca_file: Option<PathBuf>,
}

impl CredentialArgs {
    /// Parses `argv[1..]` (`credential --issuer ...`).
    pub fn from_env() -> Self {
        Self::parse_from(std::env::args_os().skip(1))
    }
}

/// The plugin. Prints an ExecCredential on stdout, or one line on stderr
/// (kubectl shows it) and exits 1.
pub fn main(args: CredentialArgs) -> ExitCode {
    let _ = rustls::crypto::ring::default_provider().install_default();
    match run(&args, crate::unix_now()) {
        Ok(cache) => {
            println!("{}", exec_credential(&cache.token, cache.expiry));
            ExitCode::SUCCESS
        }
        Err(msg) => {
            eprintln!("ood-k8s-bootstrap credential: {msg}");
            ExitCode::from(1)
        }
    }
}

/// The ExecCredential JSON kubectl reads.
pub fn exec_credential(token: &str, expiry: u64) -> String {
    serde_json::json!({
        "apiVersion": "client.authentication.k8s.io/v1",
        "kind": "ExecCredential",
        "status": {"token": token, "expirationTimestamp": rfc3339(expiry)},
    })
    .to_string()
}

const RELOGIN: &str = "log in to Open OnDemand again to get fresh Kubernetes credentials";

fn run(args: &CredentialArgs, now: u64) -> Result<Cache, String> {
    let uid = Uid::current();
    let (dir_path, name) = match (args.cache.parent(), args.cache.file_name()) {
        (Some(d), Some(n)) if args.cache.is_absolute() => {
            (d.to_owned(), n.to_string_lossy().into_owned())
        }
        _ => {
            return Err(format!(
                "--cache {} is not an absolute file path",
                args.cache.display()
            ));
        }
    };
    let dir =
        open_private_dir(&dir_path, uid).map_err(|f| format!("{}: {}", f.path.display(), f.why))?;
    let cache = read_cache(&dir, &name, &args.cache)?;
    check_matches(&cache, args)?;
    if cache.is_fresh(now) {
        return Ok(cache);
    }
    // Refresh, one at a time.
    let lock_name = format!("{}.lock", name.trim_end_matches(".json"));
    let _lock = write::lock_file(
        &dir,
        &lock_name,
        &dir_path.join(&lock_name),
        uid,
        Instant::now() + Duration::from_secs(60),
    )
    .map_err(|f| format!("{}: {}", f.path.display(), f.why))?;
    let cache = read_cache(&dir, &name, &args.cache)?;
    check_matches(&cache, args)?;
    let now = crate::unix_now();
    if cache.is_fresh(now) {
        return Ok(cache);
    }
    let Some(refresh_token) = cache.refresh_token.clone() else {
        return Err(format!(
            "the cached token has expired and there is no refresh token; {RELOGIN}"
        ));
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the async runtime: {e}"))?;
    let fresh = rt.block_on(async {
        tokio::time::timeout(Duration::from_secs(30), refresh(args, &refresh_token, now))
            .await
            .unwrap_or_else(|_| {
                Err(format!(
                    "the IdP {} did not answer within 30 s",
                    args.issuer
                ))
            })
    })?;
    let json = serde_json::to_vec_pretty(&fresh).map_err(|e| e.to_string())?;
    write::write_atomic(&dir, &dir_path, &name, &json)
        .map_err(|f| format!("{}: {}", f.path.display(), f.why))?;
    Ok(fresh)
}

fn check_matches(cache: &Cache, args: &CredentialArgs) -> Result<(), String> {
    if cache.issuer != args.issuer || cache.client_id != args.client_id {
        return Err(format!(
            "{} holds tokens of another issuer or client than the kubeconfig names; {RELOGIN}",
            args.cache.display()
        ));
    }
    Ok(())
}

/// Opens the cache directory (no symlink as its last component; owned by
/// the user and not writable by others).
fn open_private_dir(path: &Path, uid: Uid) -> Result<OwnedFd, Failure> {
    let fd = nix::fcntl::open(
        path,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| {
        Failure::new(
            write::FailKind::Io,
            path,
            format!("cannot open the token cache directory ({e}); {RELOGIN}"),
        )
    })?;
    let st =
        fstat(fd.as_fd()).map_err(|e| Failure::new(write::FailKind::Io, path, e.to_string()))?;
    if st.st_uid != uid.as_raw() || st.st_mode & 0o077 != 0 {
        return Err(Failure::new(
            write::FailKind::Unsafe,
            path,
            format!(
                "the token cache directory must be owned by you and mode 700 (it is uid {}, mode {:o}); refusing to use it",
                st.st_uid,
                st.st_mode & 0o777
            ),
        ));
    }
    Ok(fd)
}

fn read_cache(dir: &OwnedFd, name: &str, full: &Path) -> Result<Cache, String> {
    let fd = openat(
        dir,
        name,
        OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC | OFlag::O_NONBLOCK,
        Mode::empty(),
    )
    .map_err(|e| {
        format!(
            "cannot read the token cache {} ({e}); {RELOGIN}",
            full.display()
        )
    })?;
    let mut text = Vec::new();
    File::from(fd)
        .take(1 << 20)
        .read_to_end(&mut text)
        .map_err(|e| format!("cannot read the token cache {}: {e}", full.display()))?;
    Cache::from_json(&text)
        .ok_or_else(|| format!("the token cache {} is damaged; {RELOGIN}", full.display()))
}

/// The refresh_token grant at the discovered token endpoint.
async fn refresh(args: &CredentialArgs, refresh_token: &str, now: u64) -> Result<Cache, String> {
    use openidconnect::core::{CoreClient, CoreProviderMetadata};
    use openidconnect::{ClientId, IssuerUrl, OAuth2TokenResponse, RefreshToken, TokenResponse};

    let pem = match &args.issuer_ca_file {
        Some(ca) => {
            Some(std::fs::read(ca).map_err(|e| format!("cannot read {}: {e}", ca.display()))?)
        }
        None => None,
    };
    let ca_name = args
        .issuer_ca_file
        .as_ref()
        .map(|p| p.display().to_string())
        .unwrap_or_default();
    let ca = pem.as_deref().map(|p| (ca_name.as_str(), p));
    let http =
        crate::credentials::idp::client(ca, Duration::from_secs(20), Duration::from_secs(20))?;
    let issuer = IssuerUrl::new(args.issuer.clone())
        .map_err(|e| format!("bad issuer URL {}: {e}", args.issuer))?;
    let meta = CoreProviderMetadata::discover_async(issuer, &http)
        .await
        .map_err(|e| {
            format!(
                "OIDC discovery on {} failed: {}",
                args.issuer,
                crate::site::names::truncate(&crate::oneline::error_chain(&e), 400)
            )
        })?;
    let client =
        CoreClient::from_provider_metadata(meta, ClientId::new(args.client_id.clone()), None);
    let rt = RefreshToken::new(refresh_token.to_owned());
    let resp = client
        .exchange_refresh_token(&rt)
        .map_err(|e| format!("the IdP {} has no token endpoint: {e}", args.issuer))?
        .request_async(&http)
        .await
        .map_err(|e| {
            format!(
                "the IdP {} refused to refresh the token as public client {:?} ({}); a refresh token of a confidential client cannot be refreshed without its secret; {RELOGIN}",
                args.issuer,
                args.client_id,
                crate::site::names::truncate(&crate::oneline::error_chain(&e), 400)
            )
        })?;
    let token = match resp.id_token() {
        Some(id) => id.to_string(),
        None => resp.access_token().secret().clone(),
    };
    let expiry =
        crate::credentials::tokens::expiry(&token, resp.expires_in().map(|d| d.as_secs()), now);
    Ok(Cache {
        issuer: args.issuer.clone(),
        client_id: args.client_id.clone(),
        token,
        expiry,
        obtained: now,
        refresh_token: Some(
            resp.refresh_token()
                .map(|r| r.secret().clone())
                .unwrap_or_else(|| refresh_token.to_owned()),
        ),
    })
}

/// The last second RFC 3339 with a four-digit year can write:
/// 9999-12-31T23:59:59Z.
pub const RFC3339_MAX: u64 = 253_402_300_799;

/// Unix seconds as RFC 3339 UTC (`2024-01-31T12:00:00Z`); a later time than
/// [`RFC3339_MAX`] (a token's `exp` is the IdP's word) is written as that,
/// since kubectl refuses five-digit years.
pub fn rfc3339(secs: u64) -> String {
    let secs = secs.min(RFC3339_MAX);
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::OsString;

    #[test]
    fn rfc3339_dates() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_735_689_599), "2024-12-31T23:59:59Z");
    }

    #[test]
    fn rfc3339_stops_at_four_digit_years() {
        assert_eq!(rfc3339(RFC3339_MAX), "9999-12-31T23:59:59Z");
        assert_eq!(rfc3339(u64::MAX), "9999-12-31T23:59:59Z");
    }

    #[test]
    fn debug_hides_tokens() {
        let c = Cache {
            issuer: "i".into(),
            client_id: "c".into(),
            token: "SECRET".into(),
            expiry: 1,
            obtained: 0,
            refresh_token: Some("SECRET2".into()),
        };
        assert!(!format!("{c:?}").contains("SECRET"));
    }

    #[test]
    fn exec_credential_shape() {
        let v: serde_json::Value = serde_json::from_str(&exec_credential("t", 0)).unwrap();
        assert_eq!(v["apiVersion"], "client.authentication.k8s.io/v1");
        assert_eq!(v["kind"], "ExecCredential");
        assert_eq!(v["status"]["token"], "t");
        assert_eq!(v["status"]["expirationTimestamp"], "1970-01-01T00:00:00Z");
    }

    fn setup(tag: &str, expiry: u64) -> (PathBuf, CredentialArgs) {
        let d = std::env::temp_dir().join(format!("kc-cred-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::set_permissions(&d, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
        let cache = Cache {
            issuer: "https://idp.invalid".into(),
            client_id: "c".into(),
            token: "tok".into(),
            expiry,
            obtained: 0,
            refresh_token: None,
        };
        std::fs::write(d.join("me.json"), serde_json::to_vec(&cache).unwrap()).unwrap();
        let args = CredentialArgs {
            issuer: "https://idp.invalid".into(),
            client_id: "c".into(),
            cache: d.join("me.json"),
            issuer_ca_file: None,
        };
        (d, args)
    }

    #[test]
    fn valid_cache_is_returned_expired_without_refresh_token_is_an_error() {
        let (d, args) = setup("valid", 10_000);
        assert_eq!(run(&args, 1000).unwrap().token, "tok");
        let e = run(&args, 20_000).unwrap_err();
        assert!(e.contains("log in to Open OnDemand again"), "{e}");
        let mut other = CredentialArgs::parse_from(
            [
                "credential",
                "--issuer",
                "https://x",
                "--client-id",
                "c",
                "--cache",
            ]
            .map(OsString::from)
            .into_iter()
            .chain([args.cache.clone().into_os_string()]),
        );
        assert!(run(&other, 1000).unwrap_err().contains("another issuer"));
        other.cache = PathBuf::from("relative.json");
        assert!(run(&other, 1000).is_err());
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn open_cache_dir_refused() {
        let (d, args) = setup("open", 10_000);
        std::fs::set_permissions(&d, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        assert!(run(&args, 1000).unwrap_err().contains("mode 700"));
        std::fs::remove_dir_all(&d).unwrap();
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        /// Days since 1970 of a civil date (an independent restatement).
        fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
            let y = if m <= 2 { y - 1 } else { y };
            let era = y.div_euclid(400);
            let yoe = y - era * 400;
            let doy = (153 * ((m + 9) % 12) + 2) / 5 + d - 1;
            era * 146_097 + yoe * 365 + yoe / 4 - yoe / 100 + doy - 719_468
        }

        fn seconds_of(ts: &str) -> u64 {
            let n = |r: std::ops::Range<usize>| ts[r].parse::<i64>().unwrap();
            assert_eq!(
                (ts.len(), &ts[4..5], &ts[10..11], &ts[19..]),
                (20, "-", "T", "Z"),
                "{ts}"
            );
            let days = days_from_civil(n(0..4), n(5..7), n(8..10));
            (days * 86_400 + n(11..13) * 3600 + n(14..16) * 60 + n(17..19)) as u64
        }

        proptest! {
            /// Every expiry is written as RFC 3339 kubectl can read
            /// (four-digit years) that turns back into the same second, or
            /// the last one.
            #[test]
            fn rfc3339_turns_back_into_the_second(secs in any::<u64>(), small in 0..=RFC3339_MAX) {
                prop_assert_eq!(seconds_of(&rfc3339(small)), small);
                prop_assert_eq!(seconds_of(&rfc3339(secs)), secs.min(RFC3339_MAX));
            }

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
}
