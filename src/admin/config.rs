//! `ood-k8s-bootstrap config`: check a hook.env (and the site templates it
//! names, and whether root controls root's kubeconfig) without touching
//! anything, or print the example generated from the key table.

use std::io::Write;
use std::path::Path;

use crate::PROG;
use crate::cluster::apply::check_root_kubeconfig;
use crate::exit::Exit;
use crate::run::{fail, load_site};
use crate::site::settings::keys;

/// Prints the example, or checks `hook_env` and says what it found.
pub fn main(example: bool, hook_env: &Path) -> Exit {
    if example {
        let mut out = std::io::stdout().lock();
        return match out.write_all(keys::example().as_bytes()) {
            Ok(()) => Exit::Ok,
            Err(e) => fail(Exit::CantCreate, format!("cannot write to stdout: {e}")),
        };
    }
    let site = match load_site(hook_env) {
        Ok(site) => site,
        Err(exit) => return exit,
    };
    // Root's kubeconfig where hook.env leaves it to kubectl's defaults,
    // refused as the hook would refuse it (ROOT_KUBECONFIG itself is
    // checked with the file); nothing in it is used.
    if site.clusters.iter().any(|s| s.root.kubeconfig.is_none())
        && let Err(e) = check_root_kubeconfig(None)
    {
        return fail(e.exit(), e);
    }
    let warnings = site.warnings.len();
    let plural = |n: usize| if n == 1 { "" } else { "s" };
    let mut what = Vec::new();
    for s in &site.clusters {
        let templates = match s.templates.len() {
            0 => String::new(),
            n => format!("{n} site template object{}", plural(n)),
        };
        match &s.cluster_id {
            Some(id) => what.push(format!(
                "cluster {id}: namespaces {}USER, ~/.kube/{}{}{}",
                s.namespace_prefix,
                s.kubeconfig.file,
                if s.groups.is_open() {
                    ""
                } else {
                    ", group-gated"
                },
                if templates.is_empty() {
                    String::new()
                } else {
                    format!(", {templates}")
                }
            )),
            None if !templates.is_empty() => what.push(templates),
            None => {}
        }
    }
    let what = match what.is_empty() {
        true => String::new(),
        false => format!(", {}", what.join("; ")),
    };
    eprintln!(
        "{PROG}: {}: ok ({warnings} warning{}{what})",
        hook_env.display(),
        plural(warnings)
    );
    Exit::Ok
}
