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

use crate::clock::rfc3339;
use crate::credentials::cache::Cache;
use crate::credentials::kubeconfig::write::{self, Failure};

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

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::OsString;

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
}
