//! Exit statuses (sysexits.h), the one number nginx_stage logs about us.

use std::process::ExitCode;

/// A sysexits status with a meaning a site admin can look up
/// ([`Exit::meaning`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Exit {
    Ok = 0,
    Partial = 1,
    Usage = 64,
    DataErr = 65,
    NoInput = 66,
    NoUser = 67,
    Unavailable = 69,
    Software = 70,
    CantCreate = 73,
    TempFail = 75,
    NoPerm = 77,
    Config = 78,
}

impl Exit {
    /// Every status, in order, for the man page's EXIT STATUS section.
    pub const ALL: [Exit; 12] = [
        Exit::Ok,
        Exit::Partial,
        Exit::Usage,
        Exit::DataErr,
        Exit::NoInput,
        Exit::NoUser,
        Exit::Unavailable,
        Exit::Software,
        Exit::CantCreate,
        Exit::TempFail,
        Exit::NoPerm,
        Exit::Config,
    ];

    /// What the status tells a site admin (the man page's words).
    pub fn meaning(self) -> &'static str {
        match self {
            Exit::Ok => "Success.",
            Exit::Partial => "Some users failed in a bulk reconcile (the others succeeded).",
            Exit::Usage => "Bad command line.",
            Exit::DataErr => {
                "The cluster refused the objects as invalid (e.g. an immutable field)."
            }
            Exit::NoInput => "An input file (e.g. reconcile's user list) cannot be read.",
            Exit::NoUser => {
                "The user does not exist in the passwd database, or the name is impossible."
            }
            Exit::Unavailable => "The API server or the identity provider cannot be reached.",
            Exit::Software => "A bug or an unexpected answer.",
            Exit::CantCreate => "A file could not be written.",
            Exit::TempFail => {
                "Temporary: try again (deadline, throttling, namespace being deleted); for \
                 `reap`, more namespaces qualify than REAP_MAX_PER_RUN (none deleted)."
            }
            Exit::NoPerm => "Not allowed: RBAC denial, unsafe file ownership, not root.",
            Exit::Config => "Bad hook.env (the message names file, line and key).",
        }
    }
}

impl Exit {
    /// The more serious of two statuses, for a run over several clusters:
    /// what needs an admin's fix (a bug, bad configuration, a denial) before
    /// what passes (an unreachable server, a deadline), success last.
    pub fn worst(self, other: Exit) -> Exit {
        if other.rank() > self.rank() {
            other
        } else {
            self
        }
    }

    fn rank(self) -> u8 {
        match self {
            Exit::Ok => 0,
            Exit::Partial => 1,
            Exit::TempFail => 2,
            Exit::Unavailable => 3,
            Exit::Usage => 4,
            Exit::NoInput => 5,
            Exit::NoUser => 6,
            Exit::CantCreate => 7,
            Exit::DataErr => 8,
            Exit::NoPerm => 9,
            Exit::Config => 10,
            Exit::Software => 11,
        }
    }
}

impl From<Exit> for ExitCode {
    fn from(e: Exit) -> Self {
        ExitCode::from(e as u8)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_worst_of_several_statuses_is_the_one_needing_a_fix() {
        assert_eq!(Exit::Ok.worst(Exit::Unavailable), Exit::Unavailable);
        assert_eq!(Exit::Unavailable.worst(Exit::NoPerm), Exit::NoPerm);
        assert_eq!(Exit::Config.worst(Exit::TempFail), Exit::Config);
        let ranks: std::collections::BTreeSet<u8> = Exit::ALL.iter().map(|e| e.rank()).collect();
        assert_eq!(
            ranks.len(),
            Exit::ALL.len(),
            "every status has its own rank"
        );
    }

    #[test]
    fn all_is_ordered_unique_and_described() {
        let codes: Vec<u8> = Exit::ALL.iter().map(|e| *e as u8).collect();
        assert!(codes.windows(2).all(|w| w[0] < w[1]), "{codes:?}");
        assert!(Exit::ALL.iter().all(|e| e.meaning().ends_with('.')));
    }
}
