//! Credentials: the user's kubeconfig entries and their safe writing
//! (`kubeconfig`), the token exchange (`exchange`), JWT checks (`tokens`),
//! the IdP's HTTP client (`idp`), and the exec plugins kubectl runs
//! (`credential`, with its token `cache`; the credential `broker` and its
//! plugin).

pub mod broker;
pub mod cache;
pub mod credential;
pub mod exchange;
pub mod idp;
pub mod kubeconfig;
pub mod tokens;
