//! The admin commands: `install`, `doctor`, `root-token` (and root's
//! kubeconfig, `root_kubeconfig`), `reconcile`, `reap`, `heal` and `config`.

pub mod config;
pub mod doctor;
pub mod heal;
pub mod install;
pub mod reap;
pub mod reconcile;
pub mod root_kubeconfig;
pub mod root_token;
