//! ood-k8s-bootstrap: Open OnDemand's PUN pre-hook for Kubernetes, as a
//! library. The binary (`main.rs`) only dispatches; fuzz targets and tests
//! reach the parsers of outside input through here. See README.md for the
//! module map.

pub mod account;
pub mod apply;
pub mod broker;
pub mod cli;
pub mod config;
pub mod credential;
pub mod desired;
pub mod docs;
pub mod doctor;
pub mod exchange;
pub mod exit;
pub mod hook;
pub mod idp;
pub mod install;
pub mod kinds;
pub mod kubeconfig;
pub mod metrics;
pub mod names;
pub mod oneline;
pub mod outage;
pub mod owner;
pub mod prune;
pub mod reap;
pub mod reconcile;
pub mod record;
pub mod render;
pub mod root_kubeconfig;
pub mod root_token;
pub mod run;
pub mod secret;
pub mod settings;
pub mod templates;
pub mod tokens;
pub mod trusted;

pub use run::{PROG, fail, load, load_settings, runtime, unix_now};
