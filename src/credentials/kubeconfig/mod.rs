//! The user's `~/.kube/config`: the hook's one user entry (and optional
//! cluster/context), written safely as the user.
//!
//! - [`entry`] (pure) decides what the entries are for the credential mode;
//! - [`merge`] (pure) merges them into the existing file's text;
//! - [`write`] does the file work as the user: no symlinks followed, locks,
//!   write beside and rename;
//! - [`as_user`] runs [`write`] in a child with the user's uid, gid and
//!   groups when we are root: one child for all of a login's kubeconfig
//!   files ([`execute_all`]; the jobs go through a pipe).

pub mod as_user;
pub mod entry;
pub mod merge;
pub mod write;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use nix::unistd::Uid;
use thiserror::Error;

use crate::credentials::broker::store::Store;
use crate::credentials::broker::tokenset::TokenSet;
use crate::exit::Exit;
use crate::secret::Secret;
use crate::site::account::Account;
use crate::site::names::{Namespace, Username};
use crate::site::settings::Settings;

pub use as_user::child_main;
use entry::EntryError;
use write::{FailKind, Job, Reply};

/// Tokens from the portal login, as nginx_stage exports them
/// (`OOD_OIDC_ACCESS_TOKEN`, `OOD_OIDC_REFRESH_TOKEN`, `OOD_OIDC_ID_TOKEN`).
#[derive(Debug, Default, Clone)]
pub struct Login {
    pub access_token: Option<Secret>,
    pub refresh_token: Option<Secret>,
    pub id_token: Option<Secret>,
}

impl Login {
    /// Reads the tokens from the environment (absent or empty = none).
    pub fn from_env() -> Self {
        let get = |k: &str| {
            std::env::var(k)
                .ok()
                .filter(|v| !v.is_empty())
                .map(Secret::new)
        };
        Self {
            access_token: get("OOD_OIDC_ACCESS_TOKEN"),
            refresh_token: get("OOD_OIDC_REFRESH_TOKEN"),
            id_token: get("OOD_OIDC_ID_TOKEN"),
        }
    }
}

/// What happened to the kubeconfig.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Written(PathBuf),
    Unchanged(PathBuf),
    /// No tokens in the environment: existing credentials left as they are
    /// (cluster and context entries may still have been written).
    NoTokens,
    /// `K8S_CREDENTIALS=none`.
    Disabled,
    /// Broker mode: the tokens were stored for the credential broker
    /// (`tokens`), and the kubeconfig written or left as it was.
    Brokered {
        kubeconfig: Box<Outcome>,
        tokens: PathBuf,
    },
}

/// Why the kubeconfig was not written. Every message names the user and,
/// where there is one, the file.
#[derive(Debug, Error)]
pub enum KubeconfigError {
    #[error("kubeconfig of user {user}: {path}: {why}")]
    Unsafe {
        user: String,
        path: PathBuf,
        why: String,
    },
    #[error("kubeconfig of user {user}: {path}: {why}")]
    Io {
        user: String,
        path: PathBuf,
        why: String,
    },
    #[error("kubeconfig of user {user}: {path} does not parse: {why}")]
    Parse {
        user: String,
        path: PathBuf,
        why: String,
    },
    #[error("kubeconfig of user {user}: {path}: timed out: {why}")]
    LockTimeout {
        user: String,
        path: PathBuf,
        why: String,
    },
    #[error(
        "kubeconfig of user {user}: not running as root (uid {euid}), so only the invoking user's own kubeconfig may be written, not that of {user} (uid {uid}); run the hook as root"
    )]
    NotRoot { user: String, euid: u32, uid: u32 },
    #[error("kubeconfig of user {user}: {source}")]
    Config { user: String, source: EntryError },
    #[error("kubeconfig of user {user} left unchanged: {source}")]
    Token { user: String, source: EntryError },
    #[error("kubeconfig of user {user}: {why}")]
    Writer { user: String, why: String },
    #[error(
        "credential broker tokens of user {user}: {why}; kubeconfig left unchanged (check BROKER_STATE_DIR)"
    )]
    BrokerStore { user: String, why: String },
    #[error(
        "credential broker tokens of user {user}: only root can store them (running as uid {euid}); run the hook as root"
    )]
    BrokerNotRoot { user: String, euid: u32 },
}

impl KubeconfigError {
    pub fn exit(&self) -> Exit {
        match self {
            Self::Unsafe { .. } | Self::NotRoot { .. } | Self::BrokerNotRoot { .. } => Exit::NoPerm,
            Self::BrokerStore { .. } => Exit::CantCreate,
            Self::Io { .. } => Exit::CantCreate,
            Self::Parse { .. } | Self::Token { .. } => Exit::DataErr,
            Self::LockTimeout { .. } => Exit::TempFail,
            Self::Config { .. } => Exit::Config,
            Self::Writer { .. } => Exit::Software,
        }
    }
}

/// What [`prepare`] decided: nothing to write, or a checked job for the
/// writer.
pub enum Prepared {
    Done(Outcome),
    Write(Box<PreparedWrite>),
}

pub struct PreparedWrite {
    who: String,
    user: String,
    job: Job,
    has_tokens: bool,
    as_root: bool,
    /// Broker mode: the state directory and the sets to store in it.
    broker: Vec<(PathBuf, TokenSet)>,
}

/// Everything that can be checked before any change: the settings the mode
/// needs, the tokens, and whether we may write this user's file at all.
/// Pure apart from reading the clock and our uid.
pub fn prepare(
    settings: &Settings,
    user: &Username,
    account: &Account,
    namespace: &Namespace,
    login: &Login,
) -> Result<Prepared, KubeconfigError> {
    if settings.kubeconfig.credentials == crate::site::settings::CredentialMode::None {
        return Ok(Prepared::Done(Outcome::Disabled));
    }
    let who = user.to_string();
    let exe = std::env::current_exe().unwrap_or_else(|_| PathBuf::from("/proc/self/exe"));
    let whom = entry::Who {
        user,
        uid: account.uid.as_raw(),
        home: &account.home,
    };
    let plan = entry::plan(settings, &whom, namespace, login, &exe, crate::unix_now()).map_err(
        |source| match source {
            EntryError::Missing { .. } => KubeconfigError::Config {
                user: who.clone(),
                source,
            },
            EntryError::Token(_) | EntryError::TooLarge(_) => KubeconfigError::Token {
                user: who.clone(),
                source,
            },
        },
    )?;
    for w in &plan.warnings {
        eprintln!("ood-k8s-bootstrap: warning: {who}: {w}");
    }
    if plan.desired.is_empty() {
        return Ok(Prepared::Done(Outcome::NoTokens));
    }
    let euid = Uid::effective();
    if plan.broker.is_some() && !euid.is_root() {
        return Err(KubeconfigError::BrokerNotRoot {
            user: who,
            euid: euid.as_raw(),
        });
    }
    if !euid.is_root() && euid != account.uid {
        return Err(KubeconfigError::NotRoot {
            user: who,
            euid: euid.as_raw(),
            uid: account.uid.as_raw(),
        });
    }

    // Half the run's budget for the locks, the rest for slack.
    let lock_wait = (settings.timeout / 2).max(Duration::from_secs(1));
    let job = Job {
        user: who.clone(),
        uid: account.uid.as_raw(),
        gid: account.gid.as_raw(),
        home: account.home.clone(),
        lock_wait_ms: lock_wait.as_millis() as u64,
        file: settings.kubeconfig.file.clone(),
        desired: vec![plan.desired],
        cache: plan
            .cache
            .map(|(path, cache)| {
                let name = path
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                (name, cache)
            })
            .into_iter()
            .collect(),
    };
    Ok(Prepared::Write(Box::new(PreparedWrite {
        user: user.as_str().to_owned(),
        who,
        job,
        has_tokens: plan.has_tokens,
        as_root: euid.is_root(),
        broker: plan
            .broker
            .map(|set| (settings.broker.state_dir.clone(), set))
            .into_iter()
            .collect(),
    })))
}

impl Prepared {
    /// One job for two clusters whose kubeconfig is the same file: their
    /// entries (and token caches) are written in one locked write.
    pub fn combine(self, other: Prepared) -> Prepared {
        match (self, other) {
            (Prepared::Write(mut a), Prepared::Write(b)) => {
                let b = *b;
                a.job.desired.extend(b.job.desired);
                a.job.cache.extend(b.job.cache);
                a.job.lock_wait_ms = a.job.lock_wait_ms.min(b.job.lock_wait_ms);
                a.has_tokens |= b.has_tokens;
                a.broker.extend(b.broker);
                Prepared::Write(a)
            }
            (w @ Prepared::Write(_), Prepared::Done(_))
            | (Prepared::Done(_), w @ Prepared::Write(_)) => w,
            (Prepared::Done(Outcome::Disabled), d) | (d, Prepared::Done(_)) => d,
        }
    }
}

/// Does the file work of one login's kubeconfig files (one [`Prepared`]
/// each): as the user in one child process for all of them when we are
/// root, in-process when we are that user. The child is killed at
/// `deadline` (the run's), whatever it is doing. An outcome per file, in
/// order.
pub fn execute_all(
    prepared: Vec<Prepared>,
    deadline: Instant,
) -> Vec<Result<Outcome, KubeconfigError>> {
    let timeout = deadline.saturating_duration_since(Instant::now());
    // The tokens first: the entry that makes kubectl ask for them after.
    let staged: Vec<Result<Staged, KubeconfigError>> = prepared
        .into_iter()
        .map(|p| match p {
            Prepared::Done(outcome) => Ok(Staged::Done(outcome)),
            Prepared::Write(w) => Ok(Staged::Write(store_all_for_broker(&w)?, w)),
        })
        .collect();
    let writes: Vec<&PreparedWrite> = staged
        .iter()
        .filter_map(|s| match s {
            Ok(Staged::Write(_, w)) => Some(&**w),
            _ => None,
        })
        .collect();
    let mut replies = write_all(&writes, timeout).into_iter();
    staged
        .into_iter()
        .map(|s| match s? {
            Staged::Done(outcome) => Ok(outcome),
            Staged::Write(stored, w) => {
                let reply = replies.next().unwrap_or_else(|| {
                    Err(KubeconfigError::Writer {
                        user: w.who.clone(),
                        why: "the writer gave no answer for this file".into(),
                    })
                })?;
                let kubeconfig = outcome_of(&w.who, reply, w.has_tokens)?;
                Ok(match stored {
                    Some(tokens) => Outcome::Brokered {
                        kubeconfig: Box::new(kubeconfig),
                        tokens,
                    },
                    None => kubeconfig,
                })
            }
        })
        .collect()
}

/// A file's state between the broker's token store and the writer.
enum Staged {
    Done(Outcome),
    /// The broker's token file, if any, and the write.
    Write(Option<PathBuf>, Box<PreparedWrite>),
}

/// Stores the broker's token sets of one file's clusters; the last one's
/// file (none outside broker mode).
fn store_all_for_broker(w: &PreparedWrite) -> Result<Option<PathBuf>, KubeconfigError> {
    let mut stored = None;
    for (dir, set) in &w.broker {
        stored = Some(store_for_broker(&w.who, dir, set)?);
    }
    Ok(stored)
}

/// Stores a login's token set root-only for the broker; returns its file.
fn store_for_broker(
    who: &str,
    dir: &std::path::Path,
    set: &TokenSet,
) -> Result<PathBuf, KubeconfigError> {
    let fail = |why: String| KubeconfigError::BrokerStore {
        user: who.to_owned(),
        why,
    };
    let store = Store::open(dir).map_err(|e| fail(e.to_string()))?;
    store.write(set).map_err(|e| fail(e.to_string()))?;
    Ok(store.file(set.uid))
}

/// Runs the writer for every file (one child, as the user, when we are
/// root) and reads its replies, one per file.
fn write_all(writes: &[&PreparedWrite], timeout: Duration) -> Vec<Result<Reply, KubeconfigError>> {
    let Some(first) = writes.first() else {
        return Vec::new();
    };
    if !first.as_root {
        return writes.iter().map(|w| Ok(write::run(&w.job))).collect();
    }
    let jobs: Vec<&Job> = writes.iter().map(|w| &w.job).collect();
    match as_user::run_as(&first.user, &jobs, timeout) {
        Ok(replies) => replies.into_iter().map(Ok).collect(),
        Err(why) => writes
            .iter()
            .map(|w| {
                Err(KubeconfigError::Writer {
                    user: w.who.clone(),
                    why: why.clone(),
                })
            })
            .collect(),
    }
}

/// What a file's reply means for the login.
fn outcome_of(who: &str, reply: Reply, has_tokens: bool) -> Result<Outcome, KubeconfigError> {
    match reply {
        Reply::Done {
            path,
            changed,
            warnings,
        } => {
            for w in warnings {
                eprintln!("ood-k8s-bootstrap: warning: {who}: {w}");
            }
            Ok(if !has_tokens {
                Outcome::NoTokens
            } else if changed {
                Outcome::Written(path)
            } else {
                Outcome::Unchanged(path)
            })
        }
        Reply::Failed(f) => {
            let (user, path, why) = (who.to_owned(), f.path, f.why);
            Err(match f.kind {
                FailKind::Unsafe => KubeconfigError::Unsafe { user, path, why },
                FailKind::Io => KubeconfigError::Io { user, path, why },
                FailKind::Parse => KubeconfigError::Parse { user, path, why },
                FailKind::LockTimeout => KubeconfigError::LockTimeout { user, path, why },
            })
        }
    }
}
