//! `ood-k8s-bootstrap doctor`: what is wrong with this web node's setup,
//! one line per check with the fix.
//!
//! - [`gather`] (I/O) reads hook.env and the files it names, root's
//!   kubeconfig, and asks the API server (SelfSubjectReview,
//!   SelfSubjectAccessReview, dry-run RoleBindings), the IdP (OIDC
//!   discovery) and systemd; it changes nothing;
//! - [`checks`] (pure) turns those [`facts`] into verdicts, each problem
//!   one of the [`findings`], which fix its severity;
//! - [`report`] prints them as text or JSON.

pub mod checks;
pub mod dashboard;
pub mod facts;
pub mod findings;
pub mod gather;
pub mod report;

use std::time::Instant;

use crate::cli::{DoctorArgs, Output};
use crate::exit::Exit;
use crate::run::{PROG, runtime, unix_now};

/// Runs every check; exit 0 only when none failed.
pub fn main(args: &DoctorArgs) -> Exit {
    let started = Instant::now();
    let Ok(rt) = runtime() else {
        return Exit::Software;
    };
    if args.output == Output::Text {
        eprintln!(
            "{PROG}: doctor: checking {} and root's kubeconfig …",
            args.common.hook_env.display()
        );
    }
    let facts = rt.block_on(gather::gather(args, unix_now()));
    drop(rt);
    let checks = checks::all(&facts);
    match args.output {
        Output::Text => {
            print!("{}", report::text(&checks));
            eprintln!(
                "{PROG}: doctor: done in {} ms",
                started.elapsed().as_millis()
            );
        }
        Output::Json => println!("{}", report::json(&checks)),
    }
    if report::passed(&checks) {
        Exit::Ok
    } else {
        Exit::Partial
    }
}
