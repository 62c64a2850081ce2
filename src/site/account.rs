//! The user's account in the passwd database (uid, gid, home) and group
//! database (supplementary groups), looked up once; every file operation for
//! the user goes through it, and the namespace annotations and templates'
//! `${UID}`/`${GID}` come from it.

use std::ffi::CString;
use std::path::PathBuf;

use nix::unistd::{Gid, Uid, User, getgrouplist};
use thiserror::Error;

use crate::exit::Exit;
use crate::site::names::Username;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    pub uid: Uid,
    pub gid: Gid,
    pub home: PathBuf,
}

/// The numeric identity pods of the user must run with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ids {
    pub uid: u32,
    pub gid: u32,
    /// Every group the user is in (the primary one included), sorted;
    /// `None` when not asked for.
    pub groups: Option<Vec<u32>>,
}

/// The user's groups by name, for `ALLOWED_GROUPS`/`DENIED_GROUPS`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GroupNames {
    pub names: Vec<String>,
    /// The gids whose name could not be looked up, each with why.
    pub unnamed: Vec<(u32, String)>,
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
    #[error("looking up the groups of user {user} failed: {source}")]
    Groups { user: String, source: nix::Error },
}

impl AccountError {
    pub fn exit(&self) -> Exit {
        match self {
            Self::Unknown(_) => Exit::NoUser,
            Self::Lookup { .. } | Self::Groups { .. } => Exit::TempFail,
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

    /// uid and gid, and with `groups` every group of the user
    /// (getgrouplist: the group database, LDAP/SSSD included).
    pub fn ids(&self, user: &Username, groups: bool) -> Result<Ids, AccountError> {
        let groups = if groups {
            // A validated username has no NUL byte.
            let name = CString::new(user.as_str()).unwrap_or_default();
            let mut list: Vec<u32> = getgrouplist(&name, self.gid)
                .map_err(|source| AccountError::Groups {
                    user: user.to_string(),
                    source,
                })?
                .into_iter()
                .map(Gid::as_raw)
                .collect();
            list.sort_unstable();
            list.dedup();
            Some(list)
        } else {
            None
        };
        Ok(Ids {
            uid: self.uid.as_raw(),
            gid: self.gid.as_raw(),
            groups,
        })
    }

    /// The names of every group the user is in (the primary one included),
    /// as NSS reports them: what `ALLOWED_GROUPS`/`DENIED_GROUPS` name. A
    /// group whose name cannot be looked up (no entry, or NSS failed) is
    /// kept aside with why, so that the gate can refuse rather than guess.
    pub fn group_names(&self, user: &Username) -> Result<GroupNames, AccountError> {
        let name = CString::new(user.as_str()).unwrap_or_default();
        let gids = getgrouplist(&name, self.gid).map_err(|source| AccountError::Groups {
            user: user.to_string(),
            source,
        })?;
        let mut found = GroupNames::default();
        for gid in gids {
            match nix::unistd::Group::from_gid(gid) {
                Ok(Some(g)) => found.names.push(g.name),
                Ok(None) => found
                    .unnamed
                    .push((gid.as_raw(), "no entry in the group database".into())),
                Err(e) => found
                    .unnamed
                    .push((gid.as_raw(), format!("looking it up failed: {e}"))),
            }
        }
        Ok(found)
    }
}
