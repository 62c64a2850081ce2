//! The hook itself: one user's cluster side and kubeconfig, as OnDemand runs
//! it (`ood-k8s-bootstrap --user alice`), ending in one summary line.

use std::time::Instant;

use crate::account::Account;
use crate::apply::{self, Applied, Change, Cluster, Mode};
use crate::cli::HookArgs;
use crate::exit::Exit;
use crate::names::{Namespace, Username};
use crate::run::{PROG, fail, load, runtime, unix_now};
use crate::{desired, kubeconfig};

/// Runs the hook for `args.user`; every failure is already printed.
pub fn run_hook(args: &HookArgs) -> Exit {
    let started = Instant::now();
    let Some(user) = args.user.as_deref() else {
        return fail(
            Exit::Usage,
            "no user given; usage: ood-k8s-bootstrap --user USERNAME (see --help)",
        );
    };
    let (settings, user, namespace) = match load(user, &args.common.hook_env) {
        Ok(v) => v,
        Err(exit) => return exit,
    };
    let account = match Account::lookup(&user) {
        Ok(a) => a,
        Err(e) => return fail(e.exit(), e),
    };
    let login = kubeconfig::Login::from_env();
    let mode = if args.dry_run {
        Mode::DryRun
    } else {
        Mode::Apply
    };
    let deadline = started + settings.timeout;
    let ids = match account.ids(&user, settings.publish.groups) {
        Ok(ids) => ids,
        Err(e) => return fail(e.exit(), e),
    };
    let state = match desired::desired_state(&settings, &user, &namespace, Some(&ids), unix_now()) {
        Ok(s) => s,
        Err(e) => return fail(e.exit(), e),
    };
    // Everything about the kubeconfig that can be refused is refused now,
    // before any change.
    let prepared = if args.dry_run || args.cluster_only {
        None
    } else {
        match kubeconfig::prepare(&settings, &user, &account, &namespace, &login) {
            Ok(p) => Some(p),
            Err(e) => return fail(e.exit(), e),
        }
    };
    drop(login);
    // The kubeconfig is written (by a child running as the user) while the
    // cluster side is applied: the two are independent.
    let writer = prepared.map(|p| std::thread::spawn(move || p.execute()));

    let runtime = match runtime() {
        Ok(rt) => rt,
        Err(exit) => return exit,
    };
    let applied = runtime.block_on(async {
        let work = async {
            let cluster = Cluster::connect(settings.timeout).await?;
            cluster.apply(user.as_str(), &state, mode, deadline).await
        };
        match tokio::time::timeout_at(deadline.into(), work).await {
            Ok(result) => result,
            Err(_) => Err(apply::ApplyError::Deadline {
                user: user.to_string(),
                server: "(root's kubeconfig)".into(),
                secs: settings.timeout.as_secs_f64(),
                last: "no answer".into(),
            }),
        }
    });
    drop(runtime);
    let kube = writer.map(|w| {
        w.join().unwrap_or_else(|_| {
            Err(kubeconfig::KubeconfigError::Writer {
                user: user.to_string(),
                why: "the writer thread panicked".into(),
            })
        })
    });
    let applied = match applied {
        Ok(a) => a,
        Err(e) => {
            if let Some(Err(k)) = &kube {
                eprintln!("{PROG}: error: {k}");
            }
            return fail(e.exit(), e);
        }
    };
    let kube = match kube.transpose() {
        Ok(k) => k,
        Err(e) => {
            eprintln!(
                "{PROG}: {}",
                summary(&user, &namespace, &applied, args.dry_run, state.prune)
            );
            return fail(e.exit(), e);
        }
    };

    let mut line = summary(&user, &namespace, &applied, args.dry_run, state.prune);
    if let Some(k) = kube {
        line.push_str(&match k {
            kubeconfig::Outcome::Written(p) => format!("; kubeconfig {} updated", p.display()),
            kubeconfig::Outcome::Unchanged(p) => format!("; kubeconfig {} unchanged", p.display()),
            kubeconfig::Outcome::NoTokens => {
                "; no OIDC tokens in the environment, kubeconfig credentials left as they are"
                    .into()
            }
            kubeconfig::Outcome::Disabled => String::new(),
        });
    }
    line.push_str(&format!(" ({} ms)", started.elapsed().as_millis()));
    eprintln!("{PROG}: {line}");
    if args.common.verbose > 0 {
        for a in &applied {
            eprintln!("  {:<10} {}", change_word(a.change, args.dry_run), a.object);
        }
    }
    Exit::Ok
}

fn change_word(c: Change, dry_run: bool) -> &'static str {
    match (c, dry_run) {
        (Change::Created, false) => "created",
        (Change::Changed, false) => "changed",
        (Change::Created, true) => "would create",
        (Change::Changed, true) => "would change",
        (Change::Unchanged, _) => "unchanged",
        (Change::Deleted, false) => "deleted",
        (Change::Deleted, true) => "would delete",
    }
}

/// `alice: namespace alice: 1 created, 1 changed, 3 unchanged` (and `, 1
/// deleted` when pruning).
fn summary(
    user: &Username,
    ns: &Namespace,
    applied: &[Applied],
    dry_run: bool,
    prune: bool,
) -> String {
    let count = |c| applied.iter().filter(|a| a.change == c).count();
    let verb = if dry_run { "dry run: would be " } else { "" };
    let mut line = format!(
        "{user}: namespace {ns}: {verb}{} created, {} changed, {} unchanged",
        count(Change::Created),
        count(Change::Changed),
        count(Change::Unchanged)
    );
    if prune {
        line.push_str(&format!(", {} deleted", count(Change::Deleted)));
    }
    line
}
