//! Exit statuses (sysexits.h), the one number nginx_stage logs about us.

use std::process::ExitCode;

/// A sysexits status with a meaning a site admin can look up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Exit {
    Ok = 0,
    /// Some users failed in a bulk `reconcile` (the others succeeded).
    Partial = 1,
    /// Bad command line.
    Usage = 64,
    /// The cluster refused the objects as invalid (e.g. an immutable field).
    DataErr = 65,
    /// An input file (e.g. reconcile's user list) cannot be read.
    NoInput = 66,
    /// The user does not exist in the passwd database.
    NoUser = 67,
    /// The API server (or IdP) cannot be reached.
    Unavailable = 69,
    /// A bug or an unexpected answer.
    Software = 70,
    /// A file could not be written.
    CantCreate = 73,
    /// Temporary: try again (deadline, throttling, namespace being deleted).
    TempFail = 75,
    /// Not allowed: RBAC denial, unsafe file ownership, not root.
    NoPerm = 77,
    /// Bad hook.env.
    Config = 78,
}

impl From<Exit> for ExitCode {
    fn from(e: Exit) -> Self {
        ExitCode::from(e as u8)
    }
}
