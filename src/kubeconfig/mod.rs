//! The user's `~/.kube/config`: the hook's one user entry (and optional
//! cluster/context), written safely as the user. (Stub: see issue 4.)
#![allow(dead_code)]

pub mod merge;

use std::path::PathBuf;

use thiserror::Error;

use crate::account::Account;
use crate::exit::Exit;
use crate::names::{Namespace, Username};
use crate::secret::Secret;
use crate::settings::Settings;

/// Tokens from the portal login, as nginx_stage exports them
/// (`OOD_OIDC_ACCESS_TOKEN`, `OOD_OIDC_REFRESH_TOKEN`, `OOD_OIDC_ID_TOKEN`).
#[derive(Debug, Default)]
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
    /// No tokens in the environment: existing credentials left as they are.
    NoTokens,
    /// `K8S_CREDENTIALS=none`.
    Disabled,
}

#[derive(Debug, Error)]
pub enum KubeconfigError {
    #[error("kubeconfig for {user}: {why}")]
    Other { user: String, why: String },
}

impl KubeconfigError {
    pub fn exit(&self) -> Exit {
        Exit::CantCreate
    }
}

/// Writes the user's entry. Runs the file work as the user.
pub fn update(
    settings: &Settings,
    _user: &Username,
    _account: &Account,
    _namespace: &Namespace,
    login: &Login,
) -> Result<Outcome, KubeconfigError> {
    if settings.kubeconfig.credentials == crate::settings::CredentialMode::None {
        return Ok(Outcome::Disabled);
    }
    if login.access_token.is_none() && login.refresh_token.is_none() {
        return Ok(Outcome::NoTokens);
    }
    Ok(Outcome::NoTokens)
}
