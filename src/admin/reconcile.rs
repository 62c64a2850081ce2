//! `ood-k8s-bootstrap reconcile`: re-bootstrap many users in one process —
//! after a hook.env change, or to repair drift — cluster side only.
//!
//! Users come from a list (file or stdin) or from the namespaces that carry
//! the OnDemand label. Work runs with bounded concurrency over the one
//! HTTP/2 connection [`Cluster`] holds; one user's failure never stops the
//! others, and the summary lists each failure with its reason.

use std::collections::BTreeMap;
use std::io::{BufRead, IsTerminal, Read, Write};
use std::path::Path;
use std::time::Instant;

use futures::StreamExt;

use crate::cluster::apply::{Applied, ApplyError, Change, Cluster, Mode};
use crate::cluster::desired::{self, NAME_LABEL, NAME_LABEL_VALUE, USER_ANNOTATION};
use crate::exit::Exit;
use crate::record::{self, Counts, Record};
use crate::run::Run;
use crate::site::account::{Account, AccountError};
use crate::site::names::{Namespace, Username};
use crate::site::settings::{GateRefusal, Settings};

/// Where the user names come from.
pub enum Source<'a> {
    /// One username per line; `-` is stdin. Blank lines and `#` comments are
    /// skipped.
    List(&'a Path),
    /// Every namespace labelled `app.kubernetes.io/name=open-ondemand`.
    Labelled,
}

/// How `reconcile` runs.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// How many users are worked on at once.
    pub concurrency: usize,
    pub dry_run: bool,
    /// Prune even if hook.env does not say `PRUNE=true`.
    pub prune: bool,
}

/// Reconciles the users of `source` on each chosen cluster (`--cluster`;
/// every cluster of CLUSTERS_D by default), one after the other, each with
/// its own summary and run record; the most serious status wins.
pub fn main(source: Source<'_>, hook_env: &Path, cluster: Option<&str>, options: Options) -> Exit {
    let loaded =
        crate::run::load_clusters(hook_env, cluster).and_then(|c| Ok((c, crate::runtime()?)));
    let (clusters, runtime) = match loaded {
        Ok(v) => v,
        Err(exit) => {
            Run::start(record::Command::Reconcile).finish(exit);
            return exit;
        }
    };
    // A list is read once (it may be stdin), for every cluster.
    let names = match source {
        Source::List(path) => match read_list(path) {
            Ok(names) => Some(names),
            Err((exit, msg)) => return crate::fail(exit, msg),
        },
        Source::Labelled => None,
    };
    let mut exit = Exit::Ok;
    for mut settings in clusters {
        if let Some(id) = &settings.cluster_id {
            eprintln!("ood-k8s-bootstrap: cluster {id}:");
        }
        let mut recorded = Run::start(record::Command::Reconcile);
        settings.prune |= options.prune;
        recorded.configured(&settings);
        recorded.record.cluster = Some(settings.cluster_label().to_owned());
        let done = runtime.block_on(run(
            names.as_deref(),
            &settings,
            options.concurrency.max(1),
            options.dry_run,
            &mut recorded.record,
        ));
        recorded.finish(done);
        exit = exit.worst(done);
    }
    exit
}

async fn run(
    listed: Option<&[String]>,
    settings: &Settings,
    concurrency: usize,
    dry_run: bool,
    record: &mut Record,
) -> Exit {
    let started = Instant::now();
    let cluster = match Cluster::connect(&settings.root, settings.timeout).await {
        Ok(c) => c,
        Err(e) => return crate::fail(e.exit(), e),
    };
    let names = match listed {
        Some(listed) => Ok(listed.to_vec()),
        None => labelled_users(&cluster, settings).await,
    };
    let names = match names {
        Ok(n) => n,
        Err((exit, msg)) => return crate::fail(exit, msg),
    };

    let total = names.len();
    let mode = if dry_run { Mode::DryRun } else { Mode::Apply };
    let now = crate::unix_now();
    let mut progress = Progress::new(total);
    let mut counts: BTreeMap<&'static str, usize> = BTreeMap::new();
    let mut failures: Vec<String> = Vec::new();
    let mut skipped: Vec<String> = Vec::new();

    let mut results = futures::stream::iter(names)
        .map(|name| {
            let cluster = &cluster;
            async move {
                let result = reconcile_one(cluster, settings, &name, mode, now).await;
                (name, result)
            }
        })
        .buffer_unordered(concurrency);
    while let Some((name, result)) = results.next().await {
        match result {
            Ok(Done::Applied(applied)) => {
                record.counts.add(Counts::of(&applied));
                for a in applied {
                    *counts.entry(change_word(a.change)).or_default() += 1;
                }
            }
            Ok(Done::Skipped(why)) => skipped.push(format!("{name}: {why}")),
            Err(msg) => failures.push(format!("{name}: {msg}")),
        }
        progress.tick();
    }
    progress.finish();

    let secs = started.elapsed().as_secs_f64();
    eprintln!(
        "ood-k8s-bootstrap: reconciled {} of {total} users in {secs:.1}s ({:.0} users/s){}: objects {} created, {} changed, {} unchanged{}; {}{} failed",
        total - failures.len() - skipped.len(),
        total as f64 / secs.max(1e-9),
        if dry_run { " (dry run)" } else { "" },
        counts.get("created").unwrap_or(&0),
        counts.get("changed").unwrap_or(&0),
        counts.get("unchanged").unwrap_or(&0),
        if settings.prune {
            format!(", {} deleted", counts.get("deleted").unwrap_or(&0))
        } else {
            String::new()
        },
        if skipped.is_empty() {
            String::new()
        } else {
            format!("{} skipped (not for their groups), ", skipped.len())
        },
        failures.len(),
    );
    for s in &skipped {
        eprintln!("  skipped: {s}; nothing of theirs touched");
    }
    for f in &failures {
        eprintln!("  failed: {f}");
    }
    record.extra.push(("users", total.to_string()));
    record.extra.push(("failed", failures.len().to_string()));
    if let Some(first) = failures.first() {
        record.error = Some(format!(
            "{} of {total} users failed; the first: {first}",
            failures.len()
        ));
    }
    if failures.is_empty() {
        Exit::Ok
    } else {
        Exit::Partial
    }
}

/// What reconciling one user came to.
enum Done {
    Applied(Vec<Applied>),
    /// `ALLOWED_GROUPS`/`DENIED_GROUPS` keep the cluster from the user, as
    /// at a login: nothing of theirs touched.
    Skipped(String),
}

async fn reconcile_one(
    cluster: &Cluster,
    settings: &Settings,
    name: &str,
    mode: Mode,
    now: u64,
) -> Result<Done, String> {
    let user = Username::parse(name).map_err(|e| e.to_string())?;
    let namespace =
        Namespace::for_user(&settings.namespace_prefix, &user).map_err(|e| e.to_string())?;
    let account = Account::lookup(&user);
    if let Some(why) = gate(settings, &user, account.as_ref())? {
        return Ok(Done::Skipped(why));
    }
    // The uid goes into the namespace's owner record; a name that is not
    // on this node keeps the record it has (owner.rs).
    let ids = match account.and_then(|a| a.ids(&user, settings.publish.groups)) {
        Ok(ids) => Some(ids),
        Err(e) if settings.needs_ids() => return Err(e.to_string()),
        Err(_) => None,
    };
    let mut state = desired::desired_state(settings, &user, &namespace, ids.as_ref(), now)
        .map_err(|e| e.to_string())?;
    // Not a login: the namespace's idle clock stays as it is.
    state.login = false;
    let deadline = Instant::now() + settings.timeout;
    cluster
        .apply(user.as_str(), &state, mode, deadline)
        .await
        .map(Done::Applied)
        .map_err(|e| match e {
            // Drop the repeated "user X:" prefix; the summary line names the user.
            e @ ApplyError::Kubeconfig { .. } => e.to_string(),
            e => e
                .to_string()
                .split_once(": ")
                .map_or_else(|| e.to_string(), |(_, rest)| rest.to_owned()),
        })
}

/// The cluster's group gate, as a login meets it (`GroupGate::refuses`):
/// why the user is skipped, if they are; an error where it cannot be
/// decided (no account on this node, a group without a name).
pub(crate) fn gate(
    settings: &Settings,
    user: &Username,
    account: Result<&Account, &AccountError>,
) -> Result<Option<String>, String> {
    if settings.groups.is_open() {
        return Ok(None);
    }
    let groups = account
        .map_err(|e| e.to_string())
        .and_then(|a| a.group_names(user).map_err(|e| e.to_string()))
        .map_err(|e| format!("{e}; ALLOWED_GROUPS/DENIED_GROUPS cannot be checked: refused"))?;
    match settings.groups.refuses(&groups) {
        None => Ok(None),
        Some(GateRefusal::NotFor(why)) => Ok(Some(why)),
        Some(GateRefusal::Undecided(why)) => Err(why),
    }
}

fn change_word(c: Change) -> &'static str {
    match c {
        Change::Created => "created",
        Change::Changed => "changed",
        Change::Unchanged => "unchanged",
        Change::Deleted => "deleted",
    }
}

/// Usernames from a file (or stdin for `-`), in order, without duplicates.
fn read_list(path: &Path) -> Result<Vec<String>, (Exit, String)> {
    let mut reader: Box<dyn BufRead> = if path == Path::new("-") {
        Box::new(std::io::stdin().lock())
    } else {
        let file = std::fs::File::open(path).map_err(|e| {
            (
                Exit::NoInput,
                format!("cannot read {}: {e}", path.display()),
            )
        })?;
        Box::new(std::io::BufReader::new(file))
    };
    let mut text = String::new();
    reader
        .read_to_string(&mut text)
        .map_err(|e| (Exit::NoInput, format!("reading {}: {e}", path.display())))?;
    Ok(parse_user_list(&text))
}

/// The names in a user list: one per line, `#` starts a comment, blank
/// lines and repeats are skipped, order is kept. Names are not validated
/// here: each is checked (and reported) with its user.
pub fn parse_user_list(text: &str) -> Vec<String> {
    let mut seen = std::collections::HashSet::new();
    let mut out = Vec::new();
    for line in text.lines() {
        let name = line.split('#').next().unwrap_or_default().trim();
        if !name.is_empty() && seen.insert(name) {
            out.push(name.to_owned());
        }
    }
    out
}

/// Users of every OnDemand namespace: the user annotation this program
/// writes, or, for namespaces the old hook made, the name minus
/// `NAMESPACE_PREFIX` (the old hook did not rewrite names).
async fn labelled_users(
    cluster: &Cluster,
    settings: &Settings,
) -> Result<Vec<String>, (Exit, String)> {
    let list = cluster
        .list_namespaces(
            &format!("{NAME_LABEL}={NAME_LABEL_VALUE}"),
            Instant::now() + settings.timeout,
        )
        .await
        .map_err(|e| match e {
            ApplyError::Forbidden { .. } => (
                Exit::NoPerm,
                "listing namespaces is not allowed for this account (the ondemand ClusterRole deliberately lacks \
                 `list` on namespaces); pass the users with --users FILE, or run with an admin's KUBECONFIG"
                    .to_owned(),
            ),
            e => (e.exit(), e.to_string()),
        })?;
    Ok(users_of_namespaces(&list, &settings.namespace_prefix))
}

/// The users of a namespace list (the API server's `items`, read as
/// untrusted JSON): the user annotation this program writes, or, for
/// namespaces the old hook made, the name minus `prefix`. Namespaces
/// without `prefix` belong to another OnDemand instance and are skipped.
pub fn users_of_namespaces(items: &[serde_json::Value], prefix: &str) -> Vec<String> {
    let mut users: Vec<String> = items
        .iter()
        .filter_map(|ns| {
            let name = ns.pointer("/metadata/name")?.as_str()?;
            // Only namespaces of this hook.env's prefix: other OnDemand
            // instances may share the cluster.
            let unprefixed = name.strip_prefix(prefix)?;
            let annotated = ns.pointer(&format!(
                "/metadata/annotations/{}",
                USER_ANNOTATION.replace('/', "~1")
            ));
            Some(
                annotated
                    .and_then(|v| v.as_str())
                    .unwrap_or(unprefixed)
                    .to_owned(),
            )
        })
        .collect();
    users.sort();
    users.dedup();
    users
}

/// A one-line progress bar on a terminal; silent otherwise.
struct Progress {
    total: usize,
    done: usize,
    on_terminal: bool,
}

impl Progress {
    fn new(total: usize) -> Self {
        Self {
            total,
            done: 0,
            on_terminal: std::io::stderr().is_terminal(),
        }
    }

    fn tick(&mut self) {
        self.done += 1;
        if self.on_terminal && (self.done.is_multiple_of(10) || self.done == self.total) {
            let width = 40;
            let filled = width * self.done / self.total.max(1);
            let mut err = std::io::stderr().lock();
            let _ = write!(
                err,
                "\r[{}{}] {}/{}",
                "#".repeat(filled),
                ".".repeat(width - filled),
                self.done,
                self.total
            );
            let _ = err.flush();
        }
    }

    fn finish(&self) {
        if self.on_terminal && self.total > 0 {
            eprintln!();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    #[test]
    fn user_list_skips_comments_blanks_and_repeats() {
        assert_eq!(
            parse_user_list("# users\nalice\n  bob  # x\n\nalice\r\nfirst.last\n"),
            ["alice", "bob", "first.last"]
        );
    }

    #[test]
    fn users_of_namespaces_prefers_the_annotation() {
        let items = [
            json!({"metadata": {"name": "user-first-last", "annotations": {"openondemand.org/user": "first.last"}}}),
            json!({"metadata": {"name": "user-bob"}}),
            json!({"metadata": {"name": "other-carol"}}),
            json!({"metadata": {"name": 7}}),
            json!("not an object"),
        ];
        assert_eq!(users_of_namespaces(&items, "user-"), ["bob", "first.last"]);
    }

    proptest! {
        /// Entries are trimmed, non-empty, comment-free, unique, in order.
        #[test]
        fn user_list_entries_are_clean(text in "(?s).{0,300}|([ a-z#.\r]{0,12}\n){0,12}") {
            let names = parse_user_list(&text);
            let mut rest = text.as_str();
            for (i, n) in names.iter().enumerate() {
                prop_assert!(!n.is_empty() && n.trim() == n && !n.contains(['#', '\n']));
                prop_assert!(!names[..i].contains(n));
                let at = rest.find(n.as_str()).expect("in file order");
                rest = &rest[at + n.len()..];
            }
        }
    }
}
