//! ood-k8s-bootstrap: Open OnDemand's PUN pre-hook for Kubernetes, as a
//! library. The binary (`main.rs`) only dispatches; fuzz targets and tests
//! reach the parsers of outside input through here. See README.md for the
//! module map.

pub mod admin;
pub mod cli;
pub mod clock;
pub mod cluster;
pub mod credentials;
pub mod docs;
pub mod exit;
pub mod hook;
pub mod metrics;
pub mod oneline;
pub mod pending;
pub mod record;
pub mod replace;
pub mod run;
pub mod secret;
pub mod site;

pub use clock::unix_now;
pub use run::{fail, runtime};

/// The program's name, in messages, records and file names.
pub const PROG: &str = "ood-k8s-bootstrap";
