//! The user's account in the passwd database (uid, gid, home), looked up
//! once; every file operation for the user goes through it.

use std::path::PathBuf;

use nix::unistd::{Gid, Uid, User};
use thiserror::Error;

use crate::exit::Exit;
use crate::names::Username;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    pub uid: Uid,
    pub gid: Gid,
    pub home: PathBuf,
}

#[derive(Debug, Error)]
pub enum AccountError {
    #[error(
        "user {0} does not exist in the passwd database (check the name, or that LDAP/SSSD answers on this node)"
    )]
    Unknown(String),
    #[error("looking up user {user} in the passwd database failed: {source}")]
    Lookup { user: String, source: nix::Error },
    #[error("user {0} is uid 0; refusing to manage a root account's Kubernetes access")]
    Root(String),
}

impl AccountError {
    pub fn exit(&self) -> Exit {
        match self {
            Self::Unknown(_) => Exit::NoUser,
            Self::Lookup { .. } => Exit::TempFail,
            Self::Root(_) => Exit::NoPerm,
        }
    }
}

impl Account {
    pub fn lookup(user: &Username) -> Result<Self, AccountError> {
        match User::from_name(user.as_str()) {
            Ok(Some(u)) if u.uid.is_root() => Err(AccountError::Root(user.to_string())),
            Ok(Some(u)) => Ok(Self {
                uid: u.uid,
                gid: u.gid,
                home: u.dir,
            }),
            Ok(None) => Err(AccountError::Unknown(user.to_string())),
            Err(source) => Err(AccountError::Lookup {
                user: user.to_string(),
                source,
            }),
        }
    }
}
