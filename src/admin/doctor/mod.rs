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

use crate::PROG;
use crate::cli::{DoctorArgs, Output};
use crate::clock::unix_now;
use crate::exit::Exit;
use crate::run::runtime;
use crate::site::settings::Settings;
use crate::site::settings::site::Site;

/// Runs every check, for each chosen cluster (`--cluster`; every cluster
/// of CLUSTERS_D by default, a section each); exit 0 only when none failed.
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
    // hook.env as the hook reads it: one Settings per cluster, or the
    // reason it does not load (itself the first failed check).
    let runs: Vec<(Option<String>, Result<Settings, String>)> =
        match Site::load(&args.common.hook_env) {
            Ok(site) => match site.select(args.choice.cluster.as_deref()) {
                Ok(chosen) => chosen
                    .into_iter()
                    .map(|s| (s.cluster_id.clone(), Ok(s.clone())))
                    .collect(),
                Err(e) => return crate::fail(Exit::Usage, e),
            },
            Err(e) => vec![(None, Err(e.to_string()))],
        };
    let mut passed = true;
    let mut sections = Vec::new();
    for (id, settings) in runs {
        let facts = rt.block_on(gather::gather(args, unix_now(), settings));
        let checks = checks::all(&facts);
        passed &= report::passed(&checks);
        match (args.output, &id) {
            (Output::Text, Some(id)) => print!("== cluster {id}\n{}", report::text(&checks)),
            (Output::Text, None) => print!("{}", report::text(&checks)),
            (Output::Json, _) => sections.push((id, checks)),
        }
    }
    drop(rt);
    match args.output {
        Output::Text => eprintln!(
            "{PROG}: doctor: done in {} ms",
            started.elapsed().as_millis()
        ),
        Output::Json => println!("{}", report::json_sections(&sections)),
    }
    if passed { Exit::Ok } else { Exit::Partial }
}
