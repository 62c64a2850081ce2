//! `ood-k8s-bootstrap reap`: removes the Kubernetes footprint of users who
//! went idle or left — their OnDemand namespaces (and everything in them)
//! and, for departed logins, the broker's stored tokens — so that a site
//! needs no Prometheus-driven reaper beside the hook.
//!
//! Deciding is pure ([`judge`], [`recheck`], [`plan`]): a namespace's
//! annotations, the passwd answer and what runs in it go in, a reason to
//! delete or to keep comes out. The I/O around it lists our namespaces,
//! asks passwd, lists pods and claims, and deletes with preconditions (a
//! user who logs in meanwhile keeps the namespace).

use std::time::{Duration, Instant};

use http::Method;
use serde_json::{Value, json};

use crate::PROG;
use crate::clock::unix_now;
use crate::cluster::apply::{ApplyError, Cluster};
use crate::cluster::desired::{
    LAST_HOOK_ANNOTATION, NAME_LABEL, NAME_LABEL_VALUE, UID_ANNOTATION, USER_ANNOTATION,
};
use crate::exit::Exit;
use crate::record::{self, Record};
use crate::run::{Run, fail, runtime};
use crate::site::settings::{ReapSettings, Settings};

const DAY: u64 = 24 * 60 * 60;

/// How many namespaces are inspected or deleted at once.
const CONCURRENCY: usize = 16;

/// What the admin asked for on the command line.
#[derive(Debug, Clone, Default)]
pub struct Options {
    pub dry_run: bool,
    pub include_pvcs: bool,
    /// Overrides `REAP_MAX_PER_RUN` for this run.
    pub max_per_run: Option<usize>,
    pub verbose: u8,
}

/// One OnDemand namespace as listed (untrusted JSON, read defensively).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Namespace {
    pub name: String,
    /// The object's uid and version: the deletion's preconditions.
    pub uid: String,
    pub resource_version: String,
    /// The owner record the hook writes (`openondemand.org/user`, `/uid`).
    pub user: Option<String>,
    pub recorded_uid: Option<u32>,
    /// `openondemand.org/last-hook-execution`, Unix seconds.
    pub last_hook: Option<u64>,
    pub terminating: bool,
}

impl Namespace {
    /// `None` for an item without a name, uid or version.
    pub fn from_json(item: &Value) -> Option<Self> {
        let meta = item.get("metadata")?;
        let text = |v: &Value, key: &str| v.get(key).and_then(Value::as_str).map(str::to_owned);
        let annotations = meta.get("annotations").cloned().unwrap_or(Value::Null);
        Some(Self {
            name: text(meta, "name")?,
            uid: text(meta, "uid")?,
            resource_version: text(meta, "resourceVersion")?,
            user: text(&annotations, USER_ANNOTATION),
            recorded_uid: text(&annotations, UID_ANNOTATION).and_then(|v| v.parse().ok()),
            last_hook: text(&annotations, LAST_HOOK_ANNOTATION).and_then(|v| v.parse().ok()),
            terminating: meta.get("deletionTimestamp").is_some_and(|v| !v.is_null()),
        })
    }
}

/// What passwd (NSS) says of a login.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Passwd {
    /// Its uid, or `None`: no such login.
    Uid(Option<u32>),
    /// NSS failed: nothing is decided on it.
    Failed(String),
}

/// Why a namespace is deleted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reason {
    /// No login for `days` days (and nothing running).
    Idle { days: u64 },
    /// The login is gone from passwd.
    Gone { login: String },
    /// The login now has another uid than the namespace recorded.
    UidChanged {
        login: String,
        recorded: u32,
        now: u32,
    },
}

impl Reason {
    pub fn departed(&self) -> bool {
        !matches!(self, Self::Idle { .. })
    }
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Idle { days } => write!(f, "idle: no login for {days} days and nothing running"),
            Self::Gone { login } => write!(f, "departed: {login} is no longer in passwd"),
            Self::UidChanged {
                login,
                recorded,
                now,
            } => write!(
                f,
                "departed: {login} is uid {now} in passwd, the namespace was made for uid {recorded}"
            ),
        }
    }
}

/// Why a namespace is kept (shown with -v and --dry-run).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Keep {
    /// Logged in within `REAP_IDLE_DAYS` (or no age limit set).
    Active,
    /// No last-hook-execution annotation: its age is not known.
    NoRecord,
    Terminating,
    /// Idle, but a pod is still running or pending.
    Running,
    /// Holds PersistentVolumeClaims (kept without --include-pvcs).
    Claims,
    /// Passwd could not be asked.
    PasswdFailed(String),
}

impl std::fmt::Display for Keep {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Active => write!(f, "active"),
            Self::NoRecord => write!(
                f,
                "no {LAST_HOOK_ANNOTATION} annotation: its age is not known"
            ),
            Self::Terminating => write!(f, "already being deleted"),
            Self::Running => write!(f, "idle, but a pod is still running or pending"),
            Self::Claims => write!(
                f,
                "holds PersistentVolumeClaims (--include-pvcs deletes it with them)"
            ),
            Self::PasswdFailed(why) => write!(f, "passwd could not be asked ({why})"),
        }
    }
}

/// The first look, from the namespace alone and passwd: a reason to delete
/// it (pending [`recheck`]), or to keep it. Departure wins over idleness;
/// only a namespace with the hook's owner record can be judged departed
/// (the name alone is ambiguous: `first.last` and `first-last` share it).
pub fn judge(
    ns: &Namespace,
    reap: &ReapSettings,
    now: u64,
    passwd: &dyn Fn(&str) -> Passwd,
) -> Result<Reason, Keep> {
    if ns.terminating {
        return Err(Keep::Terminating);
    }
    if reap.departed
        && let (Some(login), Some(recorded)) = (&ns.user, ns.recorded_uid)
    {
        match passwd(login) {
            Passwd::Failed(why) => return Err(Keep::PasswdFailed(why)),
            Passwd::Uid(None) => {
                return Ok(Reason::Gone {
                    login: login.clone(),
                });
            }
            Passwd::Uid(Some(uid)) if uid != recorded => {
                return Ok(Reason::UidChanged {
                    login: login.clone(),
                    recorded,
                    now: uid,
                });
            }
            Passwd::Uid(Some(_)) => {}
        }
    }
    let Some(limit) = reap.idle_days else {
        return Err(Keep::Active);
    };
    let Some(last) = ns.last_hook else {
        return Err(Keep::NoRecord);
    };
    let days = now.saturating_sub(last) / DAY;
    if days >= u64::from(limit) {
        Ok(Reason::Idle { days })
    } else {
        Err(Keep::Active)
    }
}

/// The second look, at what lives in the namespace: an idle one with a
/// running or pending pod is kept; any with claims, unless
/// `include_pvcs`.
pub fn recheck(
    reason: Reason,
    running: bool,
    claims: bool,
    include_pvcs: bool,
) -> Result<Reason, Keep> {
    if claims && !include_pvcs {
        return Err(Keep::Claims);
    }
    if running && !reason.departed() {
        return Err(Keep::Running);
    }
    Ok(reason)
}

/// More namespaces qualify than one run may delete.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TooMany {
    pub qualifying: usize,
    pub departed: usize,
    pub max: usize,
}

impl std::fmt::Display for TooMany {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} namespaces qualify ({} of them departed), more than REAP_MAX_PER_RUN={}: deleted none. \
             So many at once usually means passwd (NSS: sssd, LDAP) is answering wrongly — check \
             `getent passwd LOGIN` for a few of them (--dry-run lists them); if they really are \
             gone, run once with --max-per-run {}",
            self.qualifying, self.departed, self.max, self.qualifying
        )
    }
}

/// Namespaces (or anything standing for them) with why each goes.
pub type Doomed<T> = Vec<(T, Reason)>;

/// The deletions, all or none: none when more than `max` qualify (then
/// the refusal, and the list for a dry run to show).
pub fn plan<T>(qualifying: Doomed<T>, max: usize) -> Result<Doomed<T>, (TooMany, Doomed<T>)> {
    if qualifying.len() > max {
        let too_many = TooMany {
            qualifying: qualifying.len(),
            departed: qualifying.iter().filter(|(_, r)| r.departed()).count(),
            max,
        };
        return Err((too_many, qualifying));
    }
    Ok(qualifying)
}

/// Why `REAP_DEPARTED=true` is refused, if it is: in a pod (the CronJob's
/// way, `KUBERNETES_SERVICE_HOST` set) the container's passwd is not the
/// site's, so every login would look departed and only the cap would stand
/// between reap and everyone's namespaces.
pub fn departed_refused(reap: &ReapSettings, in_pod: bool) -> Option<String> {
    (reap.departed && in_pod).then(|| {
        "reap: REAP_DEPARTED=true in a pod (KUBERNETES_SERVICE_HOST is set): a container's passwd \
         is not the site's, so every login would look departed; in the cluster reap by idleness \
         only (REAP_DEPARTED=false, REAP_IDLE_DAYS), and judge departures on a web node \
         (ood-k8s-bootstrap-reap.timer), which also deletes the broker's stored tokens"
            .to_owned()
    })
}

/// Runs `reap` on each chosen cluster (`--cluster`; every cluster of
/// CLUSTERS_D by default), each with its own run record; every failure is
/// already printed and the most serious status wins.
pub fn main(hook_env: &std::path::Path, cluster: Option<&str>, options: &Options) -> Exit {
    let loaded = crate::run::load_clusters(hook_env, cluster).and_then(|c| Ok((c, runtime()?)));
    let (clusters, rt) = match loaded {
        Ok(v) => v,
        Err(exit) => {
            Run::start(record::Command::Reap).finish(exit);
            return exit;
        }
    };
    let mut exit = Exit::Ok;
    for settings in &clusters {
        if let Some(id) = &settings.cluster_id {
            eprintln!("ood-k8s-bootstrap: reap: cluster {id}:");
        }
        let mut recorded = Run::start(record::Command::Reap);
        recorded.configured(settings);
        recorded.record.cluster = Some(settings.cluster_label().to_owned());
        let done = rt.block_on(run(settings, options, &mut recorded));
        recorded.finish(done);
        exit = exit.worst(done);
    }
    exit
}

async fn run(settings: &Settings, options: &Options, recorded: &mut Run) -> Exit {
    let in_pod = std::env::var_os("KUBERNETES_SERVICE_HOST").is_some();
    if let Some(why) = departed_refused(&settings.reap, in_pod) {
        return fail(Exit::Config, why);
    }
    let started = Instant::now();
    let deadline = started + settings.timeout.max(Duration::from_secs(60));
    let cluster = match Cluster::connect(&settings.root, settings.timeout).await {
        Ok(c) => c,
        Err(e) => return fail(e.exit(), e),
    };
    let listed = match cluster
        .list_namespaces(&format!("{NAME_LABEL}={NAME_LABEL_VALUE}"), deadline)
        .await
    {
        Ok(items) => items,
        Err(ApplyError::Forbidden { .. }) => {
            return fail(
                Exit::NoPerm,
                "reap: listing namespaces is not allowed for this account; grant it with \
                 `ood-k8s-bootstrap install --reap` (hooks/ondemand-reap.yaml) or run with an admin's KUBECONFIG",
            );
        }
        Err(e) => return fail(e.exit(), e),
    };
    let ours: Vec<Namespace> = listed
        .iter()
        .filter_map(Namespace::from_json)
        .filter(|ns| ns.name.starts_with(&settings.namespace_prefix))
        .collect();
    if options.verbose > 0 {
        eprintln!(
            "{PROG}: reap: {} OnDemand namespaces with prefix {:?}; judging them",
            ours.len(),
            settings.namespace_prefix
        );
    }
    let now = unix_now();
    let first: Vec<(Namespace, Result<Reason, Keep>)> = ours
        .into_iter()
        .map(|ns| {
            let verdict = judge(&ns, &settings.reap, now, &lookup);
            (ns, verdict)
        })
        .collect();
    let (kept, inspected) = match second_look(&cluster, first, options).await {
        Ok(v) => v,
        Err(e) => return fail(e.exit(), e),
    };
    for (ns, why) in &kept {
        if options.verbose > 0 || (options.dry_run && *why != Keep::Active) {
            println!("kept         {}: {why}", ns.name);
        }
    }
    let max = options.max_per_run.unwrap_or(settings.reap.max_per_run);
    let doomed = match plan(inspected, max) {
        Ok(d) => d,
        Err((too_many, all)) if options.dry_run => {
            eprintln!("{PROG}: reap: a real run would refuse: {too_many}");
            all
        }
        Err((too_many, _)) => return fail(Exit::TempFail, format!("reap: {too_many}")),
    };
    let deleted = delete_all(&cluster, &doomed, options, deadline).await;
    if !options.dry_run {
        record_deletions(&doomed, &deleted, recorded);
    }
    let tokens = if settings.reap.departed && !options.dry_run {
        reap_token_sets(settings)
    } else {
        TokenReport::default()
    };
    summary(&doomed, &deleted, kept.len(), &tokens, options, started)
}

/// Lists pods and claims of every namespace [`judge`] would delete, and
/// [`recheck`]s it; the kept ones and the ones to delete.
async fn second_look(
    cluster: &Cluster,
    first: Vec<(Namespace, Result<Reason, Keep>)>,
    options: &Options,
) -> Result<KeptAndDoomed, ApplyError> {
    use futures::StreamExt;
    let mut kept = Vec::new();
    let mut candidates = Vec::new();
    for (ns, verdict) in first {
        match verdict {
            Ok(reason) => candidates.push((ns, reason)),
            Err(keep) => kept.push((ns, keep)),
        }
    }
    let looked: Vec<_> = futures::stream::iter(candidates)
        .map(|(ns, reason)| async move {
            let running = any(
                cluster,
                &ns.name,
                "pods",
                "fieldSelector=status.phase!%3DSucceeded,status.phase!%3DFailed",
            )
            .await;
            let claims = any(cluster, &ns.name, "persistentvolumeclaims", "").await;
            (ns, reason, running, claims)
        })
        .buffer_unordered(CONCURRENCY)
        .collect()
        .await;
    let mut doomed = Vec::new();
    for (ns, reason, running, claims) in looked {
        match recheck(reason, running?, claims?, options.include_pvcs) {
            Ok(reason) => doomed.push((ns, reason)),
            Err(keep) => kept.push((ns, keep)),
        }
    }
    kept.sort_by(|a, b| a.0.name.cmp(&b.0.name));
    doomed.sort_by(|a, b| a.0.name.cmp(&b.0.name));
    Ok((kept, doomed))
}

type KeptAndDoomed = (Vec<(Namespace, Keep)>, Doomed<Namespace>);

/// Does namespace `ns` hold any `resource` (matching `query`)?
async fn any(cluster: &Cluster, ns: &str, resource: &str, query: &str) -> Result<bool, ApplyError> {
    let sep = if query.is_empty() { "" } else { "&" };
    let path = format!("/api/v1/namespaces/{ns}/{resource}?limit=1{sep}{query}");
    let reply = cluster
        .request(Method::GET, &path, None)
        .await
        .map_err(|detail| ApplyError::Unreachable {
            user: "reap".into(),
            server: cluster.server().to_owned(),
            detail,
        })?;
    match reply.status {
        200 => Ok(reply
            .body
            .get("items")
            .and_then(Value::as_array)
            .is_some_and(|items| !items.is_empty())),
        403 => Err(ApplyError::Forbidden {
            user: "reap".into(),
            object: format!("{resource} in {ns}"),
            message: reply.message(),
            hint: "grant reap what it needs with `ood-k8s-bootstrap install --reap` (hooks/ondemand-reap.yaml)",
        }),
        s => Err(ApplyError::Unreachable {
            user: "reap".into(),
            server: cluster.server().to_owned(),
            detail: format!(
                "listing {resource} in {ns} answered {s}: {}",
                reply.message()
            ),
        }),
    }
}

/// What one deletion came to.
enum Deleted {
    Done,
    /// Changed since it was judged (the user logged in): kept.
    Changed,
    Failed(String),
}

/// Deletes `doomed` (or, in a dry run, lists them), each guarded by the
/// uid and version it was judged at.
async fn delete_all(
    cluster: &Cluster,
    doomed: &[(Namespace, Reason)],
    options: &Options,
    deadline: Instant,
) -> Vec<Deleted> {
    use futures::StreamExt;
    if options.dry_run {
        for (ns, reason) in doomed {
            println!("would delete {}: {reason}", ns.name);
        }
        return doomed.iter().map(|_| Deleted::Done).collect();
    }
    let results: Vec<Deleted> = futures::stream::iter(doomed)
        .map(|(ns, _)| delete(cluster, ns, deadline))
        .buffered(CONCURRENCY)
        .collect()
        .await;
    for ((ns, reason), result) in doomed.iter().zip(&results) {
        match result {
            Deleted::Done => println!("deleted      {}: {reason}", ns.name),
            Deleted::Changed => println!(
                "kept         {}: changed since it was judged (a login?)",
                ns.name
            ),
            Deleted::Failed(why) => eprintln!("{PROG}: reap: {}: not deleted: {why}", ns.name),
        }
    }
    results
}

async fn delete(cluster: &Cluster, ns: &Namespace, deadline: Instant) -> Deleted {
    let body = json!({
        "apiVersion": "v1",
        "kind": "DeleteOptions",
        "preconditions": {"uid": ns.uid, "resourceVersion": ns.resource_version},
        "propagationPolicy": "Background",
    });
    let path = format!("/api/v1/namespaces/{}", ns.name);
    let ask = cluster.request(Method::DELETE, &path, Some(&body));
    match tokio::time::timeout_at(deadline.into(), ask).await {
        Err(_) => Deleted::Failed("no answer before the deadline".into()),
        Ok(Err(e)) => Deleted::Failed(e),
        Ok(Ok(r)) => match r.status {
            200 | 202 => Deleted::Done,
            404 | 409 => Deleted::Changed,
            s => Deleted::Failed(format!("answered {s}: {}", r.message())),
        },
    }
}

/// One record per deletion in the log, and the run's counts.
fn record_deletions(doomed: &[(Namespace, Reason)], results: &[Deleted], recorded: &mut Run) {
    let (mut idle, mut departed) = (0, 0);
    for ((ns, reason), result) in doomed.iter().zip(results) {
        if !matches!(result, Deleted::Done) {
            continue;
        }
        if reason.departed() {
            departed += 1;
        } else {
            idle += 1;
        }
        let mut one = Record::new(record::Command::Reap);
        one.user = ns.user.clone();
        one.namespace = Some(ns.name.clone());
        one.cluster = recorded.record.cluster.clone();
        one.counts.deleted = 1;
        one.extra.push(("reason", reason.to_string()));
        one.send(&recorded.sink);
        forget_pending(ns, recorded);
    }
    recorded.record.counts.deleted = idle + departed;
    recorded
        .record
        .extra
        .push(("deleted_idle", idle.to_string()));
    recorded
        .record
        .extra
        .push(("deleted_departed", departed.to_string()));
}

/// A login noted as pending on this node (`pending.rs`) is not healed
/// into the namespace reap just deleted: only a new login brings it back.
fn forget_pending(ns: &Namespace, recorded: &Run) {
    let (Some(dir), Some(cluster), Some(user)) = (
        &recorded.sink.last_run,
        &recorded.record.cluster,
        ns.user
            .as_deref()
            .and_then(|u| crate::site::names::Username::parse(u).ok()),
    ) else {
        return;
    };
    if let Err(e) = crate::pending::Notes::new(dir).forget(&user, cluster) {
        eprintln!("{PROG}: reap: warning: {user}'s pending login: {e}");
    }
}

/// What passwd says of `login`.
fn lookup(login: &str) -> Passwd {
    match nix::unistd::User::from_name(login) {
        Ok(user) => Passwd::Uid(user.map(|u| u.uid.as_raw())),
        Err(e) => Passwd::Failed(e.to_string()),
    }
}

/// The broker's stored token sets of departed logins, deleted.
#[derive(Debug, Default)]
struct TokenReport {
    deleted: Vec<String>,
    problems: Vec<String>,
    /// Sets kept because passwd could not be asked (warned about).
    unsure: Vec<String>,
}

fn reap_token_sets(settings: &Settings) -> TokenReport {
    use crate::credentials::broker::session::{Verdict, decide};
    use crate::credentials::broker::store::{Found, Store};
    let dir = &settings.broker.state_dir;
    let mut report = TokenReport::default();
    if std::fs::symlink_metadata(dir).is_err() {
        return report; // no broker on this node
    }
    let store = match Store::open(dir) {
        Ok(s) => s,
        Err(e) => {
            report.problems.push(e.to_string());
            return report;
        }
    };
    for uid in store.uids() {
        let found = match store.find(uid) {
            Ok(Some(found)) => found,
            Ok(None) => continue,
            Err(e) => {
                report.problems.push(e.to_string());
                continue;
            }
        };
        let Found::Set(set) = &found else { continue };
        let uid_name =
            nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid)).map(|u| u.map(|u| u.name));
        let lookup = set_lookup(uid_name, lookup(&set.user));
        let verdict = decide(
            set,
            uid,
            &lookup,
            unix_now(),
            settings.broker.max_session_hours,
        );
        match verdict {
            Verdict::Delete(why @ crate::credentials::broker::session::End::OtherOwner { .. }) => {
                match store.remove_if(uid, &found) {
                    Ok(true) => report
                        .deleted
                        .push(format!("uid {uid} ({}): {why}", set.user)),
                    Ok(false) => {}
                    Err(e) => report.problems.push(e.to_string()),
                }
            }
            Verdict::Unsure(why) => report.unsure.push(format!(
                "kept the stored token set of uid {uid} ({}): passwd could not be asked ({why})",
                set.user
            )),
            _ => {}
        }
    }
    report
}

/// What passwd says of a stored set's uid (`getpwuid`) and login, for the
/// broker's `decide`: a failed lookup of either (NSS down) is `Failed`,
/// which keeps the set — never "no such user", which would delete it.
fn set_lookup(
    uid_name: nix::Result<Option<String>>,
    login: Passwd,
) -> crate::credentials::broker::session::Lookup {
    use crate::credentials::broker::session::Lookup;
    match (uid_name, login) {
        (Err(e), _) => Lookup::Failed(format!("passwd lookup of the uid: {e}")),
        (_, Passwd::Failed(why)) => Lookup::Failed(format!("passwd lookup of the login: {why}")),
        (Ok(uid_name), Passwd::Uid(login_uid)) => Lookup::Found {
            uid_name,
            login_uid,
        },
    }
}

fn summary(
    doomed: &[(Namespace, Reason)],
    results: &[Deleted],
    kept: usize,
    tokens: &TokenReport,
    options: &Options,
    started: Instant,
) -> Exit {
    let done: Vec<&Reason> = doomed
        .iter()
        .zip(results)
        .filter(|(_, r)| matches!(r, Deleted::Done))
        .map(|((_, reason), _)| reason)
        .collect();
    let departed = done.iter().filter(|r| r.departed()).count();
    let changed = results
        .iter()
        .filter(|r| matches!(r, Deleted::Changed))
        .count();
    let failed = results
        .iter()
        .filter(|r| matches!(r, Deleted::Failed(_)))
        .count();
    for line in &tokens.deleted {
        println!("deleted      stored token set of {line}");
    }
    for p in &tokens.problems {
        eprintln!("{PROG}: reap: broker store: {p}");
    }
    for u in &tokens.unsure {
        eprintln!("{PROG}: reap: warning: {u}");
    }
    eprintln!(
        "{PROG}: reap: {}{} deleted ({} idle, {departed} departed), {} kept, {failed} failed; \
         {} stored token sets of departed logins deleted ({} ms)",
        if options.dry_run {
            "dry run: would be "
        } else {
            ""
        },
        done.len(),
        done.len() - departed,
        kept + changed,
        tokens.deleted.len(),
        started.elapsed().as_millis()
    );
    if failed > 0 || !tokens.problems.is_empty() {
        Exit::Partial
    } else {
        Exit::Ok
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_800_000_000;

    fn reap(idle: Option<u32>, departed: bool) -> ReapSettings {
        ReapSettings {
            idle_days: idle,
            departed,
            max_per_run: 50,
        }
    }

    fn ns(user: Option<(&str, u32)>, days_ago: Option<u64>) -> Namespace {
        Namespace {
            name: "ood-x".into(),
            uid: "u".into(),
            resource_version: "1".into(),
            user: user.map(|(l, _)| l.to_owned()),
            recorded_uid: user.map(|(_, u)| u),
            last_hook: days_ago.map(|d| NOW - d * DAY - 5),
            terminating: false,
        }
    }

    fn passwd_has(login: &'static str, uid: u32) -> impl Fn(&str) -> Passwd {
        move |l| Passwd::Uid((l == login).then_some(uid))
    }

    #[test]
    fn idle_only_past_the_limit_and_only_when_asked() {
        let alice = passwd_has("alice", 1000);
        let old = ns(Some(("alice", 1000)), Some(40));
        assert_eq!(
            judge(&old, &reap(Some(30), false), NOW, &alice),
            Ok(Reason::Idle { days: 40 })
        );
        let recent = ns(Some(("alice", 1000)), Some(29));
        assert_eq!(
            judge(&recent, &reap(Some(30), false), NOW, &alice),
            Err(Keep::Active)
        );
        assert_eq!(
            judge(&old, &reap(None, false), NOW, &alice),
            Err(Keep::Active)
        );
        let unknown = ns(Some(("alice", 1000)), None);
        assert_eq!(
            judge(&unknown, &reap(Some(30), true), NOW, &alice),
            Err(Keep::NoRecord)
        );
    }

    #[test]
    fn departed_needs_the_owner_record_and_a_working_passwd() {
        let nobody = |_: &str| Passwd::Uid(None);
        let gone = ns(Some(("bob", 1001)), Some(1));
        assert_eq!(
            judge(&gone, &reap(None, true), NOW, &nobody),
            Ok(Reason::Gone {
                login: "bob".into()
            })
        );
        // Without REAP_DEPARTED, or without the owner record: not judged.
        assert_eq!(
            judge(&gone, &reap(None, false), NOW, &nobody),
            Err(Keep::Active)
        );
        assert_eq!(
            judge(&ns(None, Some(1)), &reap(None, true), NOW, &nobody),
            Err(Keep::Active)
        );
        // A reused login with another uid.
        let moved = passwd_has("bob", 2002);
        assert_eq!(
            judge(&gone, &reap(None, true), NOW, &moved),
            Ok(Reason::UidChanged {
                login: "bob".into(),
                recorded: 1001,
                now: 2002
            })
        );
        // NSS down: keep, say why.
        let down = |_: &str| Passwd::Failed("sssd unreachable".into());
        assert_eq!(
            judge(&gone, &reap(Some(1), true), NOW, &down),
            Err(Keep::PasswdFailed("sssd unreachable".into()))
        );
        let mut terminating = gone.clone();
        terminating.terminating = true;
        assert_eq!(
            judge(&terminating, &reap(None, true), NOW, &nobody),
            Err(Keep::Terminating)
        );
    }

    #[test]
    fn running_pods_keep_idle_namespaces_and_claims_keep_all_unless_included() {
        let idle = Reason::Idle { days: 40 };
        let gone = Reason::Gone {
            login: "bob".into(),
        };
        assert_eq!(
            recheck(idle.clone(), true, false, false),
            Err(Keep::Running)
        );
        assert_eq!(recheck(idle.clone(), false, false, false), Ok(idle.clone()));
        assert_eq!(recheck(gone.clone(), true, false, false), Ok(gone.clone()));
        assert_eq!(recheck(gone.clone(), false, true, false), Err(Keep::Claims));
        assert_eq!(recheck(gone.clone(), false, true, true), Ok(gone));
    }

    #[test]
    fn more_than_the_cap_deletes_none() {
        let many: Vec<(u32, Reason)> = (0..51)
            .map(|i| {
                (
                    i,
                    Reason::Gone {
                        login: format!("u{i}"),
                    },
                )
            })
            .collect();
        let (err, all) = plan(many.clone(), 50).unwrap_err();
        assert_eq!(all.len(), 51);
        assert_eq!(
            err,
            TooMany {
                qualifying: 51,
                departed: 51,
                max: 50
            }
        );
        assert!(err.to_string().contains("deleted none"), "{err}");
        assert!(err.to_string().contains("--max-per-run 51"), "{err}");
        assert_eq!(plan(many, 51).unwrap().len(), 51);
    }

    /// Issue 25 (8): a stored token set whose uid passwd cannot look up
    /// (NSS down) is kept, as the broker keeps it; only a lookup that
    /// answers "no such uid" (or another login) deletes it.
    #[test]
    fn a_failed_passwd_lookup_keeps_a_stored_token_set() {
        use crate::credentials::broker::session::{End, Lookup, Verdict, decide};
        use crate::credentials::broker::tokenset::{
            Bearer, Obtained, RefreshWith, Source, TokenSet,
        };
        let access = crate::credentials::tokens::fake_jwt(&json!({"exp": NOW + 300}));
        let tokens = Obtained {
            access_token: &access,
            id_token: None,
            refresh_token: Some("r"),
            bearer: Bearer::AccessToken,
            source: Source::Login,
        };
        let with = RefreshWith {
            issuer: "https://idp".into(),
            token_endpoint: None,
            client_id: "c".into(),
            audience: None,
            scope: None,
        };
        let set = TokenSet::new(5000, "alice", &tokens, with, NOW).unwrap();
        let verdict = |uid_name, login| decide(&set, 5000, &set_lookup(uid_name, login), NOW, 24);
        let down = nix::Error::EIO;
        assert!(matches!(
            verdict(Err(down), Passwd::Uid(Some(5000))),
            Verdict::Unsure(why) if why.contains("passwd lookup of the uid")
        ));
        assert!(matches!(
            verdict(Ok(Some("alice".into())), Passwd::Failed("sssd".into())),
            Verdict::Unsure(_)
        ));
        assert_eq!(
            set_lookup(Ok(None), Passwd::Uid(None)),
            Lookup::Found {
                uid_name: None,
                login_uid: None
            }
        );
        assert!(matches!(
            verdict(Ok(None), Passwd::Uid(None)),
            Verdict::Delete(End::OtherOwner { .. })
        ));
        assert_eq!(
            verdict(Ok(Some("alice".into())), Passwd::Uid(Some(5000))),
            Verdict::Serve
        );
    }

    /// Issue 25 (12): the CronJob's pod has no site passwd, so departures
    /// are not judged there.
    #[test]
    fn departed_is_refused_in_a_pod() {
        let why = departed_refused(&reap(Some(30), true), true).unwrap();
        assert!(why.contains("REAP_DEPARTED=true") && why.contains("KUBERNETES_SERVICE_HOST"));
        assert_eq!(departed_refused(&reap(Some(30), true), false), None);
        assert_eq!(departed_refused(&reap(Some(30), false), true), None);
    }

    #[test]
    fn namespaces_are_read_defensively() {
        let item = json!({"metadata": {"name": "ood-a", "uid": "x", "resourceVersion": "7",
            "annotations": {USER_ANNOTATION: "a", UID_ANNOTATION: "not a number",
                            LAST_HOOK_ANNOTATION: "1700000000"}}});
        let ns = Namespace::from_json(&item).unwrap();
        assert_eq!(ns.user.as_deref(), Some("a"));
        assert_eq!(ns.recorded_uid, None);
        assert_eq!(ns.last_hook, Some(1_700_000_000));
        assert!(Namespace::from_json(&json!({"metadata": {"name": "x"}})).is_none());
    }
}
