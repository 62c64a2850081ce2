//! The token sets on disk, root-only: `BROKER_STATE_DIR/<uid>.json` (0600)
//! in a directory of mode 0700 owned by root, reached through directories
//! root controls. Nothing is followed through a symlink: every file is
//! opened relative to the directory's descriptor with `O_NOFOLLOW`. Writes
//! are atomic (a new file beside, fsynced, renamed over, the directory
//! fsynced) and serialised per uid by an `flock` on `<uid>.lock`, which the
//! hook (storing a login) and the broker (storing a refresh) both take.
//! Critical sections are short: the broker never holds the lock across a
//! call to the IdP, it compares the refresh token afterwards instead
//! ([`Store::replace_if`]), and deletes a set only if it is still the one
//! it judged ([`Store::remove_if`]). Sets are at most
//! [`MAX_SET`](super::tokenset::MAX_SET) bytes, written and read alike; a
//! set of an earlier format is reported as [`Found::Outdated`] (so it is
//! deleted and its owner logs in again).

use std::fs::File;
use std::io::Read;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::fcntl::{OFlag, openat};
use nix::sys::stat::{Mode, SFlag, fstat};
use nix::unistd::Uid;
use thiserror::Error;

use super::tokenset::{FORMAT, MAX_SET, TokenSet};
use crate::credentials::kubeconfig::write::{self, Create, Failure};
use crate::site::trusted;

/// Longest wait for another writer of the same uid's set.
const LOCK_WAIT: Duration = Duration::from_secs(5);

/// A problem with the token store; names the path and what to do.
#[derive(Debug, Error)]
#[error("{path}: {why}")]
pub struct StoreError {
    pub path: PathBuf,
    pub why: String,
}

impl StoreError {
    fn new(path: &Path, why: impl Into<String>) -> Self {
        Self {
            path: path.to_owned(),
            why: why.into(),
        }
    }
}

impl From<Failure> for StoreError {
    fn from(f: Failure) -> Self {
        Self {
            path: f.path,
            why: f.why,
        }
    }
}

/// The open state directory.
pub struct Store {
    dir: OwnedFd,
    path: PathBuf,
    owner: Uid,
}

/// What is stored for a uid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Found {
    Set(Box<TokenSet>),
    /// A set of an earlier format (the number), for this uid.
    Outdated(u32),
}

/// What [`Store::replace_if`] did.
#[derive(Debug)]
pub enum Replaced {
    /// The new set is stored.
    Stored,
    /// Someone (a new login) stored another set meanwhile; here it is.
    Superseded(Option<Box<TokenSet>>),
}

impl Store {
    /// Opens (creating it 0700) the state directory. Its parent is created
    /// 0755 when missing and must be one root controls.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else {
            return Err(StoreError::new(path, "expected an absolute directory path"));
        };
        if !path.is_absolute() {
            return Err(StoreError::new(path, "expected an absolute directory path"));
        }
        if std::fs::symlink_metadata(parent).is_err() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o755)
                .create(parent)
                .map_err(|e| StoreError::new(parent, format!("cannot create it: {e}")))?;
        }
        let parent = trusted::directory(parent)
            .map_err(|e| StoreError::new(path, format!("its parent directory: {e}")))?;
        let parent_fd = nix::fcntl::open(
            &parent,
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| StoreError::new(&parent, format!("cannot open it: {e}")))?;
        let owner = Uid::effective();
        let name = name.to_string_lossy();
        let dir = write::open_dir(&parent_fd, &name, path, owner, Create::Private)?;
        Ok(Self {
            dir,
            path: path.to_owned(),
            owner,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn name(uid: u32) -> String {
        format!("{uid}.json")
    }

    /// The full path of a uid's set (for messages).
    pub fn file(&self, uid: u32) -> PathBuf {
        self.path.join(Self::name(uid))
    }

    /// The uids something is stored for (files `UID.json`), for `reap`.
    pub fn uids(&self) -> Vec<u32> {
        let Ok(entries) = std::fs::read_dir(&self.path) else {
            return Vec::new();
        };
        let mut uids: Vec<u32> = entries
            .flatten()
            .filter_map(|e| {
                let name = e.file_name();
                let uid = name.to_str()?.strip_suffix(".json")?;
                uid.bytes()
                    .all(|b| b.is_ascii_digit())
                    .then(|| uid.parse().ok())?
            })
            .collect();
        uids.sort_unstable();
        uids
    }

    /// The set stored for `uid`, if any, of this format.
    pub fn read(&self, uid: u32) -> Result<Option<TokenSet>, StoreError> {
        match self.find(uid)? {
            Some(Found::Set(set)) => Ok(Some(*set)),
            Some(Found::Outdated(v)) => Err(StoreError::new(
                &self.file(uid),
                format!("stored by an earlier version (format {v}); the user must log in again"),
            )),
            None => Ok(None),
        }
    }

    /// What is stored for `uid`, if anything.
    pub fn find(&self, uid: u32) -> Result<Option<Found>, StoreError> {
        let full = self.file(uid);
        let Some(text) = self.read_bytes(uid)? else {
            return Ok(None);
        };
        #[derive(serde::Deserialize)]
        struct Head {
            format: u32,
            uid: u32,
        }
        let damaged = || {
            StoreError::new(
                &full,
                "damaged or of another version; the user must log in again",
            )
        };
        let head: Head = serde_json::from_slice(&text).map_err(|_| damaged())?;
        if head.uid != uid {
            return Err(StoreError::new(
                &full,
                format!("holds a set for uid {}; refused", head.uid),
            ));
        }
        if head.format < FORMAT {
            return Ok(Some(Found::Outdated(head.format)));
        }
        let set: TokenSet = serde_json::from_slice(&text).map_err(|_| damaged())?;
        if set.format != FORMAT {
            return Err(damaged());
        }
        Ok(Some(Found::Set(Box::new(set))))
    }

    /// The file's bytes, checked: a regular root file of mode 600, at most
    /// [`MAX_SET`] bytes.
    fn read_bytes(&self, uid: u32) -> Result<Option<Vec<u8>>, StoreError> {
        let full = self.file(uid);
        let fd = match openat(
            &self.dir,
            Self::name(uid).as_str(),
            OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC,
            Mode::empty(),
        ) {
            Ok(fd) => fd,
            Err(Errno::ENOENT) => return Ok(None),
            Err(Errno::ELOOP) => {
                return Err(StoreError::new(
                    &full,
                    "it is a symbolic link; refused (remove it)",
                ));
            }
            Err(e) => return Err(StoreError::new(&full, format!("cannot open it: {e}"))),
        };
        let st = fstat(fd.as_fd()).map_err(|e| StoreError::new(&full, e.to_string()))?;
        let regular = SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == SFlag::S_IFREG;
        if !regular || st.st_uid != self.owner.as_raw() || st.st_mode & 0o077 != 0 {
            return Err(StoreError::new(
                &full,
                format!(
                    "not a regular file of uid {} with mode 600 (uid {}, mode {:o}); refused (remove it; the user logs in again)",
                    self.owner,
                    st.st_uid,
                    st.st_mode & 0o7777
                ),
            ));
        }
        let too_large = || StoreError::new(&full, format!("larger than {MAX_SET} bytes; refused"));
        if st.st_size as u64 > MAX_SET as u64 {
            return Err(too_large());
        }
        let mut text = Vec::new();
        File::from(fd)
            .take(MAX_SET as u64 + 1)
            .read_to_end(&mut text)
            .map_err(|e| StoreError::new(&full, format!("cannot read it: {e}")))?;
        if text.len() > MAX_SET {
            return Err(too_large());
        }
        Ok(Some(text))
    }

    /// Deletes what is stored for `uid` if it is still `judged` (a login
    /// stored meanwhile is kept). True when something was deleted.
    pub fn remove_if(&self, uid: u32, judged: &Found) -> Result<bool, StoreError> {
        let _lock = self.lock(uid)?;
        if self.find(uid)?.as_ref() != Some(judged) {
            return Ok(false);
        }
        nix::unistd::unlinkat(
            &self.dir,
            Self::name(uid).as_str(),
            nix::unistd::UnlinkatFlags::NoRemoveDir,
        )
        .map_err(|e| StoreError::new(&self.file(uid), format!("cannot delete it: {e}")))?;
        nix::unistd::fsync(&self.dir)
            .map_err(|e| StoreError::new(&self.path, format!("cannot sync it: {e}")))?;
        Ok(true)
    }

    /// Stores `set` (for its uid), replacing whatever is there.
    pub fn write(&self, set: &TokenSet) -> Result<(), StoreError> {
        let _lock = self.lock(set.uid)?;
        self.write_locked(set)
    }

    /// Stores `new` only if the stored set still holds the refresh token
    /// `used` (the one the refresh was made with): a login stored while the
    /// IdP was being asked wins.
    pub fn replace_if(&self, used: Option<&str>, new: &TokenSet) -> Result<Replaced, StoreError> {
        let _lock = self.lock(new.uid)?;
        let current = self.read(new.uid)?;
        if current.as_ref().map(|c| c.refresh_token.as_deref()) != Some(used) {
            return Ok(Replaced::Superseded(current.map(Box::new)));
        }
        self.write_locked(new)?;
        Ok(Replaced::Stored)
    }

    fn lock(&self, uid: u32) -> Result<nix::fcntl::Flock<File>, StoreError> {
        let name = format!("{uid}.lock");
        let full = self.path.join(&name);
        write::lock_file(
            &self.dir,
            &name,
            &full,
            self.owner,
            Instant::now() + LOCK_WAIT,
        )
        .map_err(|f| {
            StoreError::new(
                &full,
                format!("{} (another login or refresh of this user)", f.why),
            )
        })
    }

    fn write_locked(&self, set: &TokenSet) -> Result<(), StoreError> {
        let json = set
            .encode()
            .map_err(|e| StoreError::new(&self.file(set.uid), e.to_string()))?;
        write::write_atomic(&self.dir, &self.path, &Self::name(set.uid), &json)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::credentials::broker::tokenset::{Bearer, Obtained, RefreshWith, Source};
    use crate::credentials::tokens::fake_jwt;
    use std::os::unix::fs::PermissionsExt;

    fn set(uid: u32, refresh: &str) -> TokenSet {
        let access = fake_jwt(&serde_json::json!({"exp": 2000}));
        let tokens = Obtained {
            access_token: &access,
            id_token: None,
            refresh_token: Some(refresh),
            bearer: Bearer::AccessToken,
            source: Source::Login,
        };
        let with = RefreshWith {
            issuer: "https://idp".into(),
            token_endpoint: None,
            client_id: "c".into(),
            audience: None,
            scope: None,
        };
        TokenSet::new(uid, "u", &tokens, with, 1000).unwrap()
    }

    fn root() -> PathBuf {
        let d = std::env::temp_dir().join(format!("ood-store-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn stores_private_and_reads_back() {
        let base = root();
        let dir = base.join("a/tokens");
        let store = Store::open(&dir).unwrap();
        let m = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(m(&dir), 0o700);
        assert_eq!(m(&base.join("a")), 0o755);
        assert!(store.read(5).unwrap().is_none());
        store.write(&set(5, "r1")).unwrap();
        assert_eq!(m(&dir.join("5.json")), 0o600);
        assert_eq!(
            store.read(5).unwrap().unwrap().refresh_token.as_deref(),
            Some("r1")
        );
        // compare-and-swap on the refresh token
        assert!(matches!(
            store.replace_if(Some("r0"), &set(5, "r2")).unwrap(),
            Replaced::Superseded(Some(_))
        ));
        assert!(matches!(
            store.replace_if(Some("r1"), &set(5, "r2")).unwrap(),
            Replaced::Stored
        ));
        // a file named for one uid holding another's set is refused
        std::fs::copy(dir.join("5.json"), dir.join("6.json")).unwrap();
        assert!(store.read(6).unwrap_err().why.contains("uid 5"));
        // symlinks and loose modes are refused
        std::os::unix::fs::symlink(dir.join("5.json"), dir.join("7.json")).unwrap();
        assert!(store.read(7).unwrap_err().why.contains("symbolic link"));
        // deleted only while it is the set judged
        let judged = store.find(5).unwrap().unwrap();
        store.write(&set(5, "r3")).unwrap();
        assert!(!store.remove_if(5, &judged).unwrap());
        let judged = store.find(5).unwrap().unwrap();
        assert!(store.remove_if(5, &judged).unwrap());
        assert!(store.find(5).unwrap().is_none());
        // an earlier format is told apart, and deleted the same way
        std::fs::write(dir.join("5.json"), r#"{"format":1,"uid":5,"user":"u"}"#).unwrap();
        std::fs::set_permissions(dir.join("5.json"), PermissionsExt::from_mode(0o600)).unwrap();
        assert_eq!(store.find(5).unwrap(), Some(Found::Outdated(1)));
        assert!(store.read(5).unwrap_err().why.contains("earlier version"));
        assert!(store.remove_if(5, &Found::Outdated(1)).unwrap());
        // too large to store: refused at write, nothing written
        let mut big = set(5, "r4");
        big.id_token = Some("x".repeat(MAX_SET));
        assert!(store.write(&big).unwrap_err().why.contains("more than"));
        assert!(store.find(5).unwrap().is_none());
        // and a file over the limit is not read
        std::fs::write(dir.join("5.json"), vec![b' '; MAX_SET + 1]).unwrap();
        std::fs::set_permissions(dir.join("5.json"), PermissionsExt::from_mode(0o600)).unwrap();
        assert!(store.read(5).unwrap_err().why.contains("larger than"));
        store.write(&set(5, "r1")).unwrap();
        std::fs::set_permissions(dir.join("5.json"), PermissionsExt::from_mode(0o644)).unwrap();
        assert!(store.read(5).unwrap_err().why.contains("mode 600"));
        // a loose directory is made private again on open
        std::fs::set_permissions(&dir, PermissionsExt::from_mode(0o755)).unwrap();
        Store::open(&dir).unwrap();
        assert_eq!(m(&dir), 0o700);
        std::fs::remove_dir_all(&base).unwrap();
    }

    #[test]
    fn a_symlinked_state_dir_is_refused() {
        let base = root().with_extension("sym");
        let _ = std::fs::remove_dir_all(&base);
        std::fs::create_dir_all(base.join("real")).unwrap();
        std::os::unix::fs::symlink(base.join("real"), base.join("tokens")).unwrap();
        assert!(Store::open(&base.join("tokens")).is_err());
        std::fs::remove_dir_all(&base).unwrap();
    }
}
