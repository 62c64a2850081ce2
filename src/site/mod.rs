//! The site's configuration: hook.env, the dashboard's clusters.d and the
//! per-cluster overrides (`settings`), validated names (`names`), the files
//! root trusts (`trusted`) and the passwd/group answers (`account`).

pub mod account;
pub mod names;
pub mod settings;
pub mod trusted;
