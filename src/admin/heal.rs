//! `ood-k8s-bootstrap heal`: makes the cluster sides that logins could not
//! (the API server unreachable, too slow, throttled, 5xx), once the cluster
//! answers again — run every minute by ood-k8s-bootstrap-heal.timer, so a
//! user whose PUN started during an outage gets their namespace and
//! RoleBindings within a minute of the cluster's return, with no action.
//!
//! One pass: the logins `pending.rs` noted (the longest-pending first, at
//! most `HEAL_MAX_PER_RUN` users), each cluster side applied exactly as the
//! login would have (same objects and login time, owner check, group gate,
//! templates), with bounded concurrency over one connection per cluster.
//! Nothing noted: one directory read, no request. A cluster remembered down
//! (`outage.rs`) costs no request either, and one found down stops the
//! pass's work on it at once. A refusal is reported and never retried.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::clock::unix_ms;

use futures::StreamExt;

use crate::PROG;
use crate::cluster::apply::{Applied, Cluster, Mode};
use crate::cluster::{desired, outage};
use crate::exit::Exit;
use crate::pending::{Note, Notes, Side};
use crate::record::{self, Counts, Record, Sink};
use crate::run::{Run, fail};
use crate::site::account::Account;
use crate::site::names::{Namespace, Username};
use crate::site::settings::Settings;

/// How many users a pass works on at once per cluster (as `reconcile`'s
/// default).
const CONCURRENCY: usize = 32;

/// How `heal` runs.
#[derive(Debug, Clone, Copy, Default)]
pub struct Options {
    /// List who would be healed and why; touch nothing.
    pub dry_run: bool,
    pub verbose: u8,
}

/// One heal pass over `hook_env`'s clusters (`--cluster`: one of them),
/// recorded as a run.
pub fn main(hook_env: &Path, cluster: Option<&str>, options: Options) -> Exit {
    let mut run = Run::start(record::Command::Heal);
    let exit = pass(hook_env, cluster, options, &mut run);
    run.finish(exit);
    exit
}

/// What became of one pending cluster side.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Outcome {
    Healed(Counts),
    /// Still failing for a reason that passes: tried again next pass.
    Pending(String),
    /// Needs a person (a collision, bad configuration, a group gate, an
    /// unknown user): no longer retried.
    Refused(Exit, String),
}

impl Outcome {
    fn word(&self) -> &'static str {
        match self {
            Self::Healed(_) => "healed",
            Self::Pending(_) => "pending",
            Self::Refused(..) => "refused",
        }
    }
}

/// One pending side to work on.
struct Work {
    user: Username,
    side: Side,
}

fn pass(hook_env: &Path, cluster: Option<&str>, options: Options, run: &mut Run) -> Exit {
    let started = Instant::now();
    let clusters = match crate::run::load_clusters(hook_env, cluster) {
        Ok(c) => c,
        Err(exit) => return exit,
    };
    let Some(first) = clusters.first() else {
        return Exit::Ok;
    };
    run.configured(first);
    let Some(dir) = first.log.last_run_dir.clone() else {
        eprintln!(
            "{PROG}: heal: LAST_RUN_DIR is empty in hook.env: logins are not recorded, so none is noted as pending; nothing to heal"
        );
        return Exit::Ok;
    };
    let notes = Notes::new(&dir);
    let _pass = match notes.pass_lock() {
        Ok(Some(held)) => held,
        Ok(None) => {
            return fail(
                Exit::TempFail,
                format!(
                    "heal: another heal pass is running (it holds {}/{}); this one stops",
                    dir.display(),
                    crate::pending::DIR_NAME
                ),
            );
        }
        Err(e) => return fail(Exit::CantCreate, format!("heal: LAST_RUN_DIR: {e}")),
    };
    let users = match notes.users() {
        Ok(u) => u,
        Err(e) => return fail(Exit::CantCreate, format!("heal: LAST_RUN_DIR: {e}")),
    };
    let max = first.log.heal_max_per_run;
    let (work, later) = gather(&notes, &users, &clusters, cluster.is_some(), max);
    if work.is_empty() {
        if options.verbose > 0 {
            eprintln!("{PROG}: heal: nothing pending");
        }
        return finish(run, &BTreeMap::new(), later, &notes);
    }
    if options.dry_run {
        return dry_run(&work, later);
    }
    let runtime = match crate::runtime() {
        Ok(rt) => rt,
        Err(exit) => return exit,
    };
    let mut outcomes = BTreeMap::new();
    let mut broken = Exit::Ok;
    for settings in &clusters {
        let mine: Vec<&Work> = work
            .iter()
            .filter(|w| w.side.cluster == settings.cluster_label())
            .collect();
        if mine.is_empty() {
            continue;
        }
        match runtime.block_on(heal_cluster(settings, &mine)) {
            Ok(done) => {
                for (w, outcome) in mine.into_iter().zip(done) {
                    commit(&notes, &run.sink, settings, w, &outcome);
                    outcomes.insert((w.user.to_string(), w.side.cluster.clone()), outcome);
                }
            }
            // Root's side of this cluster is broken (e.g. its kubeconfig):
            // its users stay pending, untouched, until it is fixed.
            Err(exit) => broken = broken.worst(exit),
        }
    }
    // Sides of clusters no longer configured (without --cluster): dropped.
    let configured = |label: &str| clusters.iter().any(|c| c.cluster_label() == label);
    for w in &work {
        let key = (w.user.to_string(), w.side.cluster.clone());
        if !configured(&w.side.cluster) {
            let outcome = Outcome::Refused(
                Exit::Config,
                format!(
                    "cluster {} is no longer configured (CLUSTERS_D); not retried",
                    w.side.cluster
                ),
            );
            commit(&notes, &run.sink, first, w, &outcome);
            outcomes.insert(key, outcome);
        }
    }
    let exit = finish(run, &outcomes, later, &notes).worst(broken);
    eprintln!(
        "{PROG}: heal: {} healed, {} still pending, {} refused{} ({} ms)",
        count(&outcomes, "healed"),
        count(&outcomes, "pending"),
        count(&outcomes, "refused"),
        if later > 0 {
            format!(", {later} users left for the next pass (HEAL_MAX_PER_RUN={max})")
        } else {
            String::new()
        },
        started.elapsed().as_millis()
    );
    exit
}

/// The pending sides of the first `max` users (oldest note first), and
/// how many users are left for the next pass. With `--cluster`, only that
/// cluster's sides; without, a side of a cluster no longer configured is
/// kept (to be dropped, with a line).
fn gather(
    notes: &Notes,
    users: &[Username],
    clusters: &[Settings],
    one_cluster: bool,
    max: usize,
) -> (Vec<Work>, usize) {
    let mut work = Vec::new();
    let mut taken = 0;
    let mut later = 0;
    for user in users {
        let note = match notes.load(user) {
            Ok(n) => n,
            Err(e) => {
                eprintln!("{PROG}: heal: warning: {user}: {e}");
                continue;
            }
        };
        let sides: Vec<Side> = note
            .sides
            .into_iter()
            .filter(|s| !one_cluster || clusters.iter().any(|c| c.cluster_label() == s.cluster))
            .collect();
        if sides.is_empty() {
            continue;
        }
        if taken == max {
            later += 1;
            continue;
        }
        taken += 1;
        work.extend(sides.into_iter().map(|side| Work {
            user: user.clone(),
            side,
        }));
    }
    (work, later)
}

/// `--dry-run`: one line per pending side; nothing touched.
fn dry_run(work: &[Work], later: usize) -> Exit {
    let now = crate::unix_now();
    for w in work {
        eprintln!(
            "{PROG}: heal: {}: {}: would be healed: login at {} ({} ago), {} tries so far: {}",
            w.user,
            w.side.cluster,
            crate::clock::rfc3339(w.side.login),
            ago(now.saturating_sub(w.side.login)),
            w.side.tries,
            w.side.error
        );
    }
    if later > 0 {
        eprintln!("{PROG}: heal: and {later} more users in later passes (HEAL_MAX_PER_RUN)");
    }
    Exit::TempFail
}

/// Ends the pass: the record's counts (for the metrics) and the exit
/// status: 0 when no user is left pending, 75 when some are.
fn finish(
    run: &mut Run,
    outcomes: &BTreeMap<(String, String), Outcome>,
    later: usize,
    notes: &Notes,
) -> Exit {
    let left = notes.users().map(|u| u.len()).unwrap_or(later);
    for (key, word) in [
        ("heals_healed", "healed"),
        ("heals_pending", "pending"),
        ("heals_refused", "refused"),
    ] {
        run.record
            .extra
            .push((key, count(outcomes, word).to_string()));
    }
    run.record.extra.push(("pending_users", left.to_string()));
    for o in outcomes.values() {
        if let Outcome::Healed(c) = o {
            run.record.counts.add(*c);
        }
    }
    if left == 0 {
        Exit::Ok
    } else {
        run.record.error = Some(format!("{left} users still pending"));
        Exit::TempFail
    }
}

fn count(outcomes: &BTreeMap<(String, String), Outcome>, word: &str) -> usize {
    outcomes.values().filter(|o| o.word() == word).count()
}

/// Heals `work` (one cluster's sides), returning each one's outcome in
/// order. Inside the fast-fail window no request is made; once a user's
/// side finds the server unreachable, no further one is started. Root's
/// kubeconfig not loading is the pass's error (printed), not the users'.
async fn heal_cluster(settings: &Settings, work: &[&Work]) -> Result<Vec<Outcome>, Exit> {
    let still = |why: String| Ok(work.iter().map(|_| Outcome::Pending(why.clone())).collect());
    let cluster = match Cluster::connect(&settings.root, settings.timeout).await {
        Ok(c) => c,
        Err(e) if e.passes() => return still(e.to_string()),
        Err(e) => {
            return Err(fail(
                e.exit(),
                format!("heal: {}: {e}", settings.cluster_label()),
            ));
        }
    };
    let memory = outage::Memory::new(
        Path::new(outage::STATE_DIR),
        cluster.server(),
        settings.fast_fail,
    );
    if let Some(down) = memory.current(unix_ms()) {
        return still(down.message("(heal)", unix_ms()));
    }
    let down = AtomicBool::new(false);
    let mut reached = false;
    let mut lost: Option<(String, Exit)> = None;
    let results: Vec<(usize, Result<Vec<Applied>, Failed>)> =
        futures::stream::iter(work.iter().enumerate())
            .map(|(i, w)| {
                let (cluster, down) = (&cluster, &down);
                async move {
                    if down.load(Ordering::Relaxed) {
                        return (i, Err(Failed::skipped()));
                    }
                    let result = heal_one(cluster, settings, &w.user, &w.side).await;
                    if result.as_ref().is_err_and(|f| f.outage.is_some()) {
                        down.store(true, Ordering::Relaxed);
                    }
                    (i, result)
                }
            })
            .buffer_unordered(CONCURRENCY)
            .collect()
            .await;
    let mut out: Vec<Outcome> = work
        .iter()
        .map(|_| Outcome::Pending(String::new()))
        .collect();
    for (i, result) in results {
        out[i] = match result {
            Ok(applied) => {
                reached = true;
                Outcome::Healed(Counts::of(&applied))
            }
            Err(f) => {
                if let Some(detail) = &f.outage {
                    lost = Some((detail.clone(), f.exit));
                }
                if f.passes {
                    Outcome::Pending(f.message)
                } else {
                    Outcome::Refused(f.exit, f.message)
                }
            }
        };
    }
    match (reached, lost) {
        (_, Some((detail, exit))) => memory.failed(unix_ms(), &detail, exit),
        (true, None) => memory.recovered(),
        _ => {}
    }
    Ok(out)
}

/// Why one side was not made.
struct Failed {
    message: String,
    exit: Exit,
    /// Whether trying again later can succeed with no one's fix.
    passes: bool,
    /// The API server was not reached at all (for the fast-fail memory).
    outage: Option<String>,
}

impl Failed {
    fn refused(exit: Exit, message: impl std::fmt::Display) -> Self {
        Self {
            message: message.to_string(),
            exit,
            passes: false,
            outage: None,
        }
    }

    /// Not tried: the cluster was found down by another user's side.
    fn skipped() -> Self {
        Self {
            message: "not tried: the API server was found unreachable in this pass".into(),
            exit: Exit::Unavailable,
            passes: true,
            outage: None,
        }
    }
}

/// One user's cluster side, as their login would have made it: the same
/// objects and login time, the owner check, the group gate.
async fn heal_one(
    cluster: &Cluster,
    settings: &Settings,
    user: &Username,
    side: &Side,
) -> Result<Vec<Applied>, Failed> {
    let namespace = Namespace::for_user(&settings.namespace_prefix, user)
        .map_err(|e| Failed::refused(Exit::DataErr, e))?;
    let account_failed = |e: crate::site::account::AccountError| Failed {
        passes: e.exit() == Exit::TempFail,
        exit: e.exit(),
        message: e.to_string(),
        outage: None,
    };
    let account = Account::lookup(user).map_err(account_failed)?;
    if let Some(why) = crate::admin::reconcile::gate(settings, user, Ok(&account))
        .map_err(|why| Failed::refused(Exit::NoPerm, why))?
    {
        return Err(Failed::refused(
            Exit::NoPerm,
            format!("the cluster is not for their groups now: {why}"),
        ));
    }
    let ids = account
        .ids(user, settings.publish.groups)
        .map_err(account_failed)?;
    let state = desired::desired_state(settings, user, &namespace, Some(&ids), side.login)
        .map_err(|e| Failed::refused(e.exit(), e))?;
    let deadline = Instant::now() + settings.timeout;
    let work = cluster.apply(user.as_str(), &state, Mode::Apply, deadline);
    let backstop = deadline + Duration::from_millis(200);
    match tokio::time::timeout_at(backstop.into(), work).await {
        Ok(Ok(applied)) => Ok(applied),
        Ok(Err(e)) => Err(Failed {
            passes: e.passes(),
            exit: e.exit(),
            outage: e.outage_detail(),
            message: e.to_string(),
        }),
        Err(_) => Err(Failed {
            passes: true,
            exit: Exit::TempFail,
            outage: Some(format!(
                "did not answer within {:.1}s",
                settings.timeout.as_secs_f64()
            )),
            message: format!(
                "user {user}: gave up after {:.1}s (HOOK_TIMEOUT_SECONDS) waiting for the API server {}",
                settings.timeout.as_secs_f64(),
                cluster.server()
            ),
        }),
    }
}

/// Records one side's outcome: the user's note (only if it is still the
/// same login's: a later login's outcome stands), a line in their last-run
/// file, one system-log record, one line on stderr.
fn commit(notes: &Notes, sink: &Sink, settings: &Settings, w: &Work, outcome: &Outcome) {
    let mut rec = Record::new(record::Command::Heal);
    rec.user = Some(w.user.to_string());
    rec.cluster = Some(w.side.cluster.clone());
    rec.namespace = Namespace::for_user(&settings.namespace_prefix, &w.user)
        .ok()
        .map(|n| n.to_string());
    rec.extra.push(("outcome", outcome.word().to_owned()));
    rec.extra
        .push(("login", crate::clock::rfc3339(w.side.login)));
    match outcome {
        Outcome::Healed(c) => rec.counts = *c,
        Outcome::Pending(why) => {
            rec.exit = Exit::TempFail as u8;
            rec.error = Some(why.clone());
        }
        Outcome::Refused(exit, why) => {
            rec.exit = *exit as u8;
            rec.error = Some(why.clone());
        }
    }
    let dir = notes.last_run_dir().to_owned();
    let written = notes.locked(|| {
        let note = notes.load(&w.user).unwrap_or_default();
        let same_login = note
            .sides
            .iter()
            .any(|s| s.cluster == w.side.cluster && s.login == w.side.login);
        if !same_login {
            return Ok(false);
        }
        let note: Note = match outcome {
            Outcome::Pending(why) => note.tried(&w.side, why),
            _ => note.without(&w.side),
        };
        notes.store(&w.user, &note)?;
        if !matches!(outcome, Outcome::Pending(_)) {
            record::append_last(&dir, &w.user, &rec)?;
        }
        Ok(true)
    });
    let line = match outcome {
        Outcome::Healed(c) => format!(
            "namespace {}: {} created, {} changed, {} unchanged",
            rec.namespace.as_deref().unwrap_or("?"),
            c.created,
            c.changed,
            c.unchanged
        ),
        Outcome::Pending(why) => format!("still pending: {why}"),
        Outcome::Refused(exit, why) => {
            format!("refused (exit {}), not retried: {why}", *exit as u8)
        }
    };
    let since = ago(crate::unix_now().saturating_sub(w.side.login));
    match written {
        Ok(true) => {}
        Ok(false) => eprintln!(
            "{PROG}: heal: {}: {}: a later login replaced this one's note; its outcome stands",
            w.user, w.side.cluster
        ),
        Err(e) => eprintln!(
            "{PROG}: heal: warning: {}: cannot update its note: {e}",
            w.user
        ),
    }
    eprintln!(
        "{PROG}: heal: {}: {}: {} {line} (login {since} ago)",
        w.user,
        w.side.cluster,
        outcome.word()
    );
    rec.send(sink);
}

/// `3m12s`, `2h5m`, `45s`.
fn ago(secs: u64) -> String {
    match secs {
        0..60 => format!("{secs}s"),
        60..3600 => format!("{}m{}s", secs / 60, secs % 60),
        _ => format!("{}h{}m", secs / 3600, secs % 3600 / 60),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_read_at_a_glance() {
        assert_eq!(ago(45), "45s");
        assert_eq!(ago(192), "3m12s");
        assert_eq!(ago(7500), "2h5m");
    }

    #[test]
    fn outcomes_are_counted_by_word() {
        let mut m = BTreeMap::new();
        m.insert(("a".into(), "x".into()), Outcome::Healed(Counts::default()));
        m.insert(("b".into(), "x".into()), Outcome::Pending("down".into()));
        m.insert(
            ("c".into(), "x".into()),
            Outcome::Refused(Exit::NoPerm, "collision".into()),
        );
        assert_eq!(
            (
                count(&m, "healed"),
                count(&m, "pending"),
                count(&m, "refused")
            ),
            (1, 1, 1)
        );
    }
}
