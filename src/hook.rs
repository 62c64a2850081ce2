//! The hook itself: one user's cluster side and kubeconfig, as OnDemand runs
//! it (`ood-k8s-bootstrap --user alice`), ending in one summary line.

use std::path::Path;
use std::time::Instant;

use crate::PROG;
use crate::cli::HookArgs;
use crate::clock::{unix_ms, unix_now};
use crate::cluster::apply::{Applied, ApplyError, Change, Cluster, Mode, Owner};
use crate::cluster::desired::DesiredState;
use crate::cluster::{desired, outage};
use crate::credentials::{exchange, kubeconfig};
use crate::exit::Exit;
use crate::record::{self, Counts};
use crate::run::{Run, fail, load_clusters, runtime};
use crate::site::account::Account;
use crate::site::names::{Namespace, Username};
use crate::site::settings::Settings;
use crate::site::settings::{ExchangeSettings, GateRefusal};

/// Runs the hook for `args.user`; every failure is already printed.
pub fn run_hook(args: &HookArgs) -> Exit {
    let mut run = Run::start(record::Command::Hook);
    let exit = hook(args, &mut run);
    run.finish(exit);
    exit
}

/// The hook run over every cluster at once; what it learns goes into
/// `run`'s record. With one cluster (no `CLUSTERS_D`) its first failure
/// ends the run, as it always did; with several, each cluster fails alone
/// and the run ends with the most serious status.
fn hook(args: &HookArgs, run: &mut Run) -> Exit {
    let started = Instant::now();
    let Some(user) = args.user.as_deref() else {
        return fail(
            Exit::Usage,
            "no user given; usage: ood-k8s-bootstrap --user USERNAME (see --help)",
        );
    };
    // Only a validated login reaches the record (issue 25: a raw name
    // became the last-run file's path).
    let parsed = Username::parse(user);
    if let Ok(u) = &parsed {
        run.user(u);
    }
    let clusters = match load_clusters(&args.common.hook_env, args.choice.cluster.as_deref()) {
        Ok(c) => c,
        Err(exit) => return exit,
    };
    let Some(first) = clusters.first() else {
        return Exit::Ok;
    };
    run.configured(first);
    let user = match parsed {
        Ok(u) => u,
        Err(e) => return fail(Exit::NoUser, e),
    };
    let several = first.cluster_id.is_some();
    let mut exit = Exit::Ok;
    // A cluster's failure: the run's end with one cluster, a line with
    // several.
    let mut failed = |e: Exit| {
        exit = exit.worst(e);
        !several
    };
    let mut plans = match plan_all(&clusters, &user, args, started, &mut failed) {
        Ok(plans) => plans,
        Err(exit) => return exit,
    };
    if let [p] = plans.as_slice() {
        run.record.namespace = Some(p.namespace.to_string());
    }
    let ids: Vec<&str> = plans.iter().map(|p| p.settings.cluster_label()).collect();
    run.record.cluster = Some(ids.join(","));
    let mode = if args.dry_run {
        Mode::DryRun
    } else {
        Mode::Apply
    };
    let (writers, gates) = Writers::start(&mut plans);
    let sides = match cluster_sides(&plans, gates, &user, mode) {
        Ok(sides) => sides,
        Err(exit) => return exit,
    };
    let kube = writers.finish(&user);
    if mode == Mode::Apply {
        run.outcome(record::Outcome {
            covered: clusters
                .iter()
                .map(|s| s.cluster_label().to_owned())
                .collect(),
            pending: pending_sides(&plans, &sides, &user),
        });
    }
    let mut all = Vec::new();
    for ((plan, side), kube) in plans.iter().zip(sides).zip(kube) {
        match report(plan, &user, side, kube, args, several) {
            Ok(applied) => all.extend(applied),
            Err(e) if failed(e) => return e,
            Err(_) => {}
        }
    }
    run.record.counts = Counts::of(&all);
    exit
}

/// The cluster sides that failed for a reason that passes (the API server
/// unreachable, too slow, throttled, 5xx, the namespace still being
/// deleted): noted for `heal`, which makes them once the cluster answers.
/// A refusal is never among them.
fn pending_sides(
    plans: &[Plan<'_>],
    sides: &[Result<Side, ClusterError>],
    user: &Username,
) -> Vec<crate::pending::Side> {
    plans
        .iter()
        .zip(sides)
        .filter_map(|(plan, side)| {
            let error = match side.as_ref().err()? {
                ClusterError::Apply(e) if e.passes() => e.to_string(),
                ClusterError::Down(record) => record.message(user.as_str(), unix_ms()),
                _ => return None,
            };
            Some(crate::pending::Side {
                cluster: plan.settings.cluster_label().to_owned(),
                login: plan.login,
                error,
                tries: 0,
            })
        })
        .collect()
}

/// Every cluster's plan, in order, leaving out the clusters the user's
/// groups do not get (a line each). A cluster refused for this user goes
/// to `failed`, which says whether that ends the run (its exit returned).
fn plan_all<'a>(
    clusters: &'a [Settings],
    user: &Username,
    args: &HookArgs,
    started: Instant,
    failed: &mut dyn FnMut(Exit) -> bool,
) -> Result<Vec<Plan<'a>>, Exit> {
    let mut named = Vec::new();
    for s in clusters {
        match Namespace::for_user(&s.namespace_prefix, user) {
            Ok(ns) => named.push((s, ns)),
            Err(e) if failed(Exit::DataErr) => return Err(fail(Exit::DataErr, e)),
            Err(e) => {
                fail(Exit::DataErr, format!("{}: {e}", s.cluster_label()));
            }
        }
    }
    let account = Account::lookup(user).map_err(|e| fail(e.exit(), e))?;
    let groups = match gated(clusters) {
        true => account.group_names(user).map_err(|e| fail(e.exit(), e))?,
        false => Default::default(),
    };
    let login = kubeconfig::Login::from_env();
    let mut plans = Vec::new();
    for (s, ns) in named {
        let plan = match s.groups.refuses(&groups) {
            Some(GateRefusal::NotFor(why)) => {
                eprintln!(
                    "{PROG}: {user}: {}: skipped: {why}; nothing there touched",
                    s.cluster_label()
                );
                continue;
            }
            Some(GateRefusal::Undecided(why)) => {
                Err((Exit::TempFail, format!("user {user}: {why}")))
            }
            None => Plan::make(s, user, &account, ns, &login, args, started),
        };
        match plan {
            Ok(p) => plans.push(p),
            Err((e, text)) if failed(e) => return Err(fail(e, text)),
            Err((e, text)) => {
                fail(e, format!("{}: {text}", s.cluster_label()));
            }
        }
    }
    Ok(plans)
}

/// Every cluster's side at once: one runtime per cluster, each on a thread
/// of its own (the first on this one), so the clusters' TLS handshakes and
/// answers are worked on in parallel and a slow cluster never holds up
/// another's.
fn cluster_sides(
    plans: &[Plan<'_>],
    gates: Vec<Option<Gate>>,
    user: &Username,
    mode: Mode,
) -> Result<Vec<Result<Side, ClusterError>>, Exit> {
    let runtimes = plans
        .iter()
        .map(|_| runtime())
        .collect::<Result<Vec<_>, Exit>>()?;
    Ok(std::thread::scope(|scope| {
        let mut work = plans.iter().zip(gates).zip(runtimes);
        let first = work.next();
        let others: Vec<_> = work
            .map(|((p, gate), rt)| {
                scope.spawn(move || rt.block_on(p.cluster_side(user, mode, gate)))
            })
            .collect();
        let mut sides: Vec<_> = first
            .map(|((p, gate), rt)| rt.block_on(p.cluster_side(user, mode, gate)))
            .into_iter()
            .collect();
        for h in others {
            sides.push(h.join().unwrap_or_else(|_| {
                Err(ClusterError::Bug(format!(
                    "user {user}: the cluster's thread panicked (a bug; please report it)"
                )))
            }));
        }
        sides
    }))
}

/// Whether any cluster is only for some groups (the user's groups are
/// looked up only then).
fn gated(clusters: &[Settings]) -> bool {
    clusters.iter().any(|s| !s.groups.is_open())
}

/// One cluster's part of a login, decided before anything is touched.
struct Plan<'a> {
    settings: &'a Settings,
    namespace: Namespace,
    state: DesiredState,
    /// The kubeconfig side (none: dry run, `--cluster-only`).
    job: Option<KubeJob>,
    deadline: Instant,
    /// The login's Unix time (the cluster side's last-hook-execution).
    login: u64,
    /// Who the lines are about: `alice`, or `alice: gpu` with several
    /// clusters.
    who: String,
}

impl<'a> Plan<'a> {
    /// Everything that can be refused for this cluster, refused now.
    fn make(
        settings: &'a Settings,
        user: &Username,
        account: &Account,
        namespace: Namespace,
        login: &kubeconfig::Login,
        args: &HookArgs,
        started: Instant,
    ) -> Result<Self, (Exit, String)> {
        let ids = account
            .ids(user, settings.publish.groups)
            .map_err(|e| (e.exit(), e.to_string()))?;
        let login_time = unix_now();
        let state = desired::desired_state(settings, user, &namespace, Some(&ids), login_time)
            .map_err(|e| (e.exit(), e.to_string()))?;
        // Everything about the kubeconfig that can be refused is refused
        // now, before any change (with a token exchange, the tokens to
        // write are only known once the IdP has answered).
        let job = if args.dry_run || args.cluster_only {
            None
        } else if let (Some(exchange), Some(_)) = (&settings.exchange, &login.access_token) {
            Some(KubeJob::AfterExchange(Box::new(Exchange {
                exchange: exchange.clone(),
                settings: settings.clone(),
                user: user.clone(),
                account: account.clone(),
                namespace: namespace.clone(),
                login: login.clone(),
            })))
        } else {
            match kubeconfig::prepare(settings, user, account, &namespace, login) {
                Ok(p) => Some(KubeJob::Ready(p)),
                Err(e) => return Err((e.exit(), e.to_string())),
            }
        };
        let who = match &settings.cluster_id {
            Some(id) => format!("{user}: {id}"),
            None => user.to_string(),
        };
        Ok(Self {
            settings,
            namespace,
            state,
            job,
            deadline: started + settings.timeout,
            login: login_time,
            who,
        })
    }

    /// Whose the namespace is, then (unless it is another login's) the
    /// objects, bounded by this cluster's deadline. The answer about the
    /// owner goes to `gate` first: the kubeconfig writer waits for it.
    async fn cluster_side(
        &self,
        user: &Username,
        mode: Mode,
        gate: Option<Gate>,
    ) -> Result<Side, ClusterError> {
        let side = ClusterSide::check(self.settings, user, &self.state, self.deadline).await;
        let refused = matches!(
            &side,
            Err(ClusterError::Apply(ApplyError::Collision { .. }))
        );
        if let Some(gate) = gate {
            gate.send(!refused);
        }
        let side = side?;
        let warning = side.owner.warning(self.namespace.as_str(), user.as_str());
        let claimed = side.owner.event() == Some("claimed") && mode == Mode::Apply;
        let applied = side.apply(user, &self.state, mode, self.deadline).await?;
        Ok(Side {
            applied,
            warning,
            claimed,
            finished: Instant::now(),
        })
    }
}

/// What a cluster's side did.
struct Side {
    applied: Vec<Applied>,
    /// About the namespace's owner record (printed as a warning).
    warning: Option<String>,
    /// The namespace had no owner record and now records this login.
    claimed: bool,
    finished: Instant,
}

/// Prints one cluster's outcome: its line, or its error (with what
/// happened to the user's side). Returns what was applied, or the exit.
fn report(
    plan: &Plan<'_>,
    user: &Username,
    side: Result<Side, ClusterError>,
    (kube, kube_finished): KubeDone,
    args: &HookArgs,
    several: bool,
) -> Result<Vec<Applied>, Exit> {
    let prefix = |text: String| match (several, &plan.settings.cluster_id) {
        (true, Some(id)) => format!("{id}: {text}"),
        _ => text,
    };
    let side = match side {
        Ok(side) => side,
        Err(e) => {
            // Each side says what happened to it: a failed kubeconfig on a
            // line of its own, a written one at the end of the cluster's
            // error (still one line, as OnDemand logs it).
            let kube_done = match &kube {
                Some(Err(KubeError::NotWritten)) => {
                    format!("; the user's side: {}", KubeError::NotWritten)
                }
                Some(Err(k)) => {
                    eprintln!("{PROG}: error: {}", prefix(k.to_string()));
                    String::new()
                }
                Some(Ok(k)) => match outcome_text(k).trim_start_matches("; ") {
                    "" => String::new(),
                    done => format!("; the user's side: {done}"),
                },
                None => String::new(),
            };
            let (exit, message) = match e {
                ClusterError::Apply(e) => (e.exit(), e.to_string()),
                ClusterError::Down(record) => {
                    (record.exit(), record.message(user.as_str(), unix_ms()))
                }
                ClusterError::Bug(text) => (Exit::Software, text),
            };
            return Err(fail(exit, prefix(format!("{message}{kube_done}"))));
        }
    };
    if let Some(w) = &side.warning {
        eprintln!("{PROG}: warning: {}", prefix(w.clone()));
    }
    let prune = plan.state.prune;
    let mut line = summary(
        &plan.who,
        &plan.namespace,
        &side.applied,
        args.dry_run,
        prune,
    );
    let kube = match kube.transpose() {
        Ok(k) => k,
        Err(e) => {
            eprintln!("{PROG}: {line}");
            return Err(fail(e.exit(), prefix(e.to_string())));
        }
    };
    if side.claimed {
        line.push_str(" (it had no owner record; it now records this login as its owner)");
    }
    if let Some(k) = kube {
        line.push_str(&outcome_text(&k));
    }
    // This cluster's time: its side, and its kubeconfig file's write.
    let started = plan.deadline - plan.settings.timeout;
    let finished = side.finished.max(kube_finished.unwrap_or(side.finished));
    line.push_str(&format!(" ({} ms)", (finished - started).as_millis()));
    eprintln!("{PROG}: {line}");
    if args.common.verbose > 0 {
        for a in &side.applied {
            eprintln!("  {:<10} {}", change_word(a.change, args.dry_run), a.object);
        }
    }
    Ok(side.applied)
}

/// How long the kubeconfig side waits for the namespace's owner to be
/// known before it goes ahead anyway (a third of HOOK_TIMEOUT_SECONDS if
/// that is shorter): an API server that does not answer must not cost the
/// user their fresh credentials (the cluster side then fails on its own),
/// and the kubeconfig is the user's own file with the user's own tokens.
const OWNER_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

/// A cluster's answer to its kubeconfig writer: may its entries be
/// written (false: the namespace is another login's)?
struct Gate {
    index: usize,
    tx: std::sync::mpsc::Sender<(usize, bool)>,
}

impl Gate {
    fn send(self, go: bool) {
        let _ = self.tx.send((self.index, go));
    }
}

/// The kubeconfig writer: one thread, after the clusters' owner checks,
/// writes every kubeconfig file of the login through one writer child,
/// each file's entries (of every cluster whose `config_file` it is) in one
/// locked write.
struct Writers {
    thread: Option<std::thread::JoinHandle<Vec<FileResult>>>,
    /// Each file's clusters (plan indexes), in the order of the results.
    files: Vec<Vec<usize>>,
    count: usize,
}

/// What the writer did for one file: the file's outcome, and the clusters
/// whose entries could not be made (a failed token exchange).
struct FileResult {
    outcome: Option<Result<kubeconfig::Outcome, KubeError>>,
    failed: Vec<(usize, KubeError)>,
    /// The clusters whose entries were left out (another login's namespace).
    refused: Vec<usize>,
    finished: Instant,
}

/// A cluster's kubeconfig outcome (none: nothing to write) and when its
/// file was done.
type KubeDone = (
    Option<Result<kubeconfig::Outcome, KubeError>>,
    Option<Instant>,
);

/// One file's jobs: each with its cluster's plan index and deadline.
type FileJobs = Vec<(usize, KubeJob, Instant)>;

impl Writers {
    /// Takes the plans' kubeconfig jobs and starts the writer; the gates
    /// (one per plan, in order) are for the cluster sides.
    fn start(plans: &mut [Plan<'_>]) -> (Self, Vec<Option<Gate>>) {
        let mut files: Vec<(String, FileJobs)> = Vec::new();
        let (tx, rx) = std::sync::mpsc::channel();
        let mut gates: Vec<Option<Gate>> = plans.iter().map(|_| None).collect();
        let mut wait = OWNER_WAIT;
        let mut deadline: Option<Instant> = None;
        for (i, p) in plans.iter_mut().enumerate() {
            let Some(job) = p.job.take() else { continue };
            let file = p.settings.kubeconfig.file.clone();
            let job = (i, job, p.deadline);
            match files.iter_mut().find(|(f, _)| *f == file) {
                Some((_, jobs)) => jobs.push(job),
                None => files.push((file, vec![job])),
            }
            gates[i] = Some(Gate {
                index: i,
                tx: tx.clone(),
            });
            wait = wait.min(p.settings.timeout / 3);
            // The writer child may take until the last cluster's deadline
            // (the run lasts that long anyway); each exchange has its own.
            deadline = Some(deadline.map_or(p.deadline, |d| d.max(p.deadline)));
        }
        let count = plans.len();
        let members = files
            .iter()
            .map(|(_, jobs)| jobs.iter().map(|(i, _, _)| *i).collect())
            .collect();
        let thread = deadline.map(|deadline| {
            let files = files.into_iter().map(|(_, jobs)| jobs).collect();
            std::thread::spawn(move || write_files(files, &rx, wait, deadline))
        });
        let writers = Self {
            thread,
            files: members,
            count,
        };
        (writers, gates)
    }

    /// Waits for the writer; each plan's kubeconfig outcome, in order.
    fn finish(self, user: &Username) -> Vec<KubeDone> {
        let mut out: Vec<KubeDone> = (0..self.count).map(|_| (None, None)).collect();
        let Some(thread) = self.thread else {
            return out;
        };
        let results = thread.join().unwrap_or_default();
        let mut results = results.into_iter();
        for members in self.files {
            let result = results.next().unwrap_or_else(|| FileResult {
                outcome: Some(Err(KubeError::Write(kubeconfig::KubeconfigError::Writer {
                    user: user.to_string(),
                    why: "the writer thread panicked".into(),
                }))),
                failed: Vec::new(),
                refused: Vec::new(),
                finished: Instant::now(),
            });
            let mut failed = result.failed;
            for i in members {
                let outcome = match failed.iter().position(|(f, _)| *f == i) {
                    Some(at) => Some(Err(failed.swap_remove(at).1)),
                    None if result.refused.contains(&i) => Some(Err(KubeError::NotWritten)),
                    None => result.outcome.as_ref().map(|r| match r {
                        Ok(o) => Ok(o.clone()),
                        Err(e) => Err(e.again()),
                    }),
                };
                out[i] = (outcome, Some(result.finished));
            }
        }
        out
    }
}

/// The writer: waits (at most `wait`) for the owner checks of the
/// clusters, drops the entries of clusters whose namespace is another
/// login's, makes each file's entries and writes every file in one go.
fn write_files(
    files: Vec<FileJobs>,
    gates: &std::sync::mpsc::Receiver<(usize, bool)>,
    wait: std::time::Duration,
    deadline: Instant,
) -> Vec<FileResult> {
    let expected = files.iter().map(Vec::len).sum();
    let refused = refused_by_gates(gates, expected, wait);
    let refused_of: Vec<Vec<usize>> = files
        .iter()
        .map(|jobs| {
            jobs.iter()
                .map(|(i, _, _)| *i)
                .filter(|i| refused.contains(i))
                .collect()
        })
        .collect();
    let made = make_files(files, &refused);
    let has: Vec<bool> = made.iter().map(|(p, _)| p.is_some()).collect();
    let (prepared, failed_of): (Vec<_>, Vec<_>) = made.into_iter().unzip();
    let to_write = prepared.into_iter().flatten().collect();
    let mut written = kubeconfig::execute_all(to_write, deadline).into_iter();
    let finished = Instant::now();
    has.into_iter()
        .zip(failed_of)
        .zip(refused_of)
        .map(|((has, failed), refused)| FileResult {
            outcome: has
                .then(|| written.next().map(|r| r.map_err(KubeError::Write)))
                .flatten(),
            failed,
            refused,
            finished,
        })
        .collect()
}

/// The clusters whose owner check refused the write, of the `expected`
/// answers that came within `wait` (a cluster side whose check failed
/// answers go: the user's credentials are still worth writing; one that
/// has not answered by then is not waited for).
fn refused_by_gates(
    gates: &std::sync::mpsc::Receiver<(usize, bool)>,
    expected: usize,
    wait: std::time::Duration,
) -> Vec<usize> {
    let until = Instant::now() + wait;
    let mut refused = Vec::new();
    for _ in 0..expected {
        match gates.recv_timeout(until.saturating_duration_since(Instant::now())) {
            Ok((i, false)) => refused.push(i),
            Ok((_, true)) => {}
            Err(_) => break,
        }
    }
    refused
}

/// A file's checked write (none: nothing left to write) and the clusters
/// whose entries could not be made.
type MadeFile = (Option<kubeconfig::Prepared>, Vec<(usize, KubeError)>);

/// Each file's checked write (its clusters' entries combined; none when
/// none is left) and the clusters whose entries could not be made. Token
/// exchanges run at once, a thread each, each within its cluster's
/// deadline.
fn make_files(files: Vec<FileJobs>, refused: &[usize]) -> Vec<MadeFile> {
    std::thread::scope(|scope| {
        let started: Vec<Vec<_>> = files
            .into_iter()
            .map(|jobs| {
                jobs.into_iter()
                    .filter(|(i, _, _)| !refused.contains(i))
                    .map(|(i, job, deadline)| (i, job.start(scope, deadline)))
                    .collect()
            })
            .collect();
        started
            .into_iter()
            .map(|jobs| {
                let mut file: Option<kubeconfig::Prepared> = None;
                let mut failed = Vec::new();
                for (i, making) in jobs {
                    match making.get() {
                        Ok(p) => {
                            file = Some(match file.take() {
                                Some(q) => q.combine(p),
                                None => p,
                            })
                        }
                        Err(e) => failed.push((i, e)),
                    }
                }
                (file, failed)
            })
            .collect()
    })
}

/// The kubeconfig's part of the run, done in a thread of its own.
enum KubeJob {
    Ready(kubeconfig::Prepared),
    AfterExchange(Box<Exchange>),
}

/// Everything the kubeconfig job needs after a token exchange.
struct Exchange {
    exchange: ExchangeSettings,
    settings: Settings,
    user: Username,
    account: Account,
    namespace: Namespace,
    login: kubeconfig::Login,
}

/// Why the kubeconfig was not written.
#[derive(Debug, thiserror::Error)]
enum KubeError {
    #[error(transparent)]
    Write(#[from] kubeconfig::KubeconfigError),
    #[error(transparent)]
    Exchange(#[from] exchange::ExchangeError),
    /// The file's error, as told to another cluster sharing the file.
    #[error("{0}")]
    Shared(String, Exit),
    /// The cluster's entries were left out: its namespace is another
    /// login's (the cluster side's error says whose).
    #[error("its kubeconfig entries were not written (the namespace is another login's)")]
    NotWritten,
}

impl KubeError {
    /// The same error for another cluster sharing the file (the message
    /// is what they share).
    fn again(&self) -> Self {
        Self::Shared(self.to_string(), self.exit())
    }

    fn exit(&self) -> Exit {
        match self {
            Self::Write(e) => e.exit(),
            Self::Exchange(e) => e.exit(),
            Self::Shared(_, exit) => *exit,
            Self::NotWritten => Exit::NoPerm,
        }
    }
}

impl KubeJob {
    /// Starts making the checked write: at once when it is ready, else the
    /// token exchange first, on a thread of `scope`.
    fn start<'scope>(
        self,
        scope: &'scope std::thread::Scope<'scope, '_>,
        deadline: Instant,
    ) -> Making<'scope> {
        match self {
            KubeJob::Ready(p) => Making::Ready(p),
            KubeJob::AfterExchange(x) => {
                Making::Exchanging(scope.spawn(move || x.prepare(deadline)))
            }
        }
    }
}

/// A checked write being made.
enum Making<'scope> {
    Ready(kubeconfig::Prepared),
    Exchanging(std::thread::ScopedJoinHandle<'scope, Result<kubeconfig::Prepared, KubeError>>),
}

impl Making<'_> {
    fn get(self) -> Result<kubeconfig::Prepared, KubeError> {
        match self {
            Making::Ready(p) => Ok(p),
            Making::Exchanging(h) => h.join().unwrap_or_else(|_| {
                Err(KubeError::Shared(
                    "the token exchange's thread panicked".into(),
                    Exit::Software,
                ))
            }),
        }
    }
}

impl Exchange {
    /// The checked write, after the token exchange.
    fn prepare(self, deadline: Instant) -> Result<kubeconfig::Prepared, KubeError> {
        let login = exchange::exchange(&self.exchange, self.user.as_str(), &self.login, deadline)?;
        Ok(kubeconfig::prepare(
            &self.settings,
            &self.user,
            &self.account,
            &self.namespace,
            &login,
        )?)
    }
}

/// Why the cluster side failed.
enum ClusterError {
    Apply(ApplyError),
    /// The API server was found unreachable by a recent run and still
    /// refuses connections: failing at once (`outage.rs`).
    Down(outage::Record),
    /// Not the cluster's doing.
    Bug(String),
}

/// The cluster side of one run: connected, checked against the fast-fail
/// memory, and the namespace's owner known, before anything is written.
struct ClusterSide {
    cluster: Cluster,
    memory: outage::Memory,
    owner: Owner,
    timeout: std::time::Duration,
}

impl ClusterSide {
    /// Connects (failing at once while the API server is remembered to be
    /// down) and checks whose the namespace is, bounded by `deadline`.
    async fn check(
        settings: &Settings,
        user: &Username,
        state: &DesiredState,
        deadline: Instant,
    ) -> Result<Self, ClusterError> {
        let timed_out = |server: &str| ApplyError::Deadline {
            user: user.to_string(),
            server: server.to_owned(),
            secs: settings.timeout.as_secs_f64(),
            last: "no answer".into(),
        };
        let connect = Cluster::connect(&settings.root, settings.timeout);
        let cluster = match tokio::time::timeout_at(deadline.into(), connect).await {
            Ok(c) => c.map_err(ClusterError::Apply)?,
            Err(_) => return Err(ClusterError::Apply(timed_out("(root's kubeconfig)"))),
        };
        let memory = outage::Memory::new(
            Path::new(outage::STATE_DIR),
            cluster.server(),
            settings.fast_fail,
        );
        if let Some(record) = memory.current(unix_ms()) {
            return Err(ClusterError::Down(record));
        }
        let check = cluster.check_owner(user.as_str(), state, deadline);
        let owner = match tokio::time::timeout_at(backstop(deadline).into(), check).await {
            Ok(Ok(owner)) => owner,
            Ok(Err(e)) => return Err(remember(&memory, e)),
            Err(_) => return Err(remember(&memory, timed_out(cluster.server()))),
        };
        Ok(Self {
            cluster,
            memory,
            owner,
            timeout: settings.timeout,
        })
    }

    /// Applies `state`, bounded by `deadline`, remembering whether the API
    /// server was reached.
    async fn apply(
        self,
        user: &Username,
        state: &DesiredState,
        mode: Mode,
        deadline: Instant,
    ) -> Result<Vec<Applied>, ClusterError> {
        let work = self
            .cluster
            .apply_checked(user.as_str(), state, self.owner, mode, deadline);
        let result = match tokio::time::timeout_at(backstop(deadline).into(), work).await {
            Ok(result) => result,
            Err(_) => Err(ApplyError::Deadline {
                user: user.to_string(),
                server: self.cluster.server().to_owned(),
                secs: self.timeout.as_secs_f64(),
                last: "no answer".into(),
            }),
        };
        match result {
            Ok(applied) => {
                self.memory.recovered();
                Ok(applied)
            }
            Err(e) => Err(remember(&self.memory, e)),
        }
    }
}

/// Each request is bounded by the deadline itself (apply.rs), with an
/// error naming what it waited for; this backstop, a moment later, covers
/// everything else.
fn backstop(deadline: Instant) -> Instant {
    deadline + std::time::Duration::from_millis(200)
}

/// Records a failure to reach the API server in the fast-fail memory.
fn remember(memory: &outage::Memory, e: ApplyError) -> ClusterError {
    if let Some(detail) = e.outage_detail() {
        memory.failed(unix_ms(), &detail, e.exit());
    }
    ClusterError::Apply(e)
}

/// The kubeconfig part of the summary line.
fn outcome_text(k: &kubeconfig::Outcome) -> String {
    match k {
        kubeconfig::Outcome::Written(p) => format!("; kubeconfig {} updated", p.display()),
        kubeconfig::Outcome::Unchanged(p) => format!("; kubeconfig {} unchanged", p.display()),
        kubeconfig::Outcome::NoTokens => {
            "; no OIDC tokens in the environment, kubeconfig credentials left as they are".into()
        }
        kubeconfig::Outcome::Disabled => String::new(),
        kubeconfig::Outcome::Brokered { kubeconfig, tokens } => format!(
            "; tokens stored for the credential broker ({}){}",
            tokens.display(),
            outcome_text(kubeconfig)
        ),
    }
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
fn summary(who: &str, ns: &Namespace, applied: &[Applied], dry_run: bool, prune: bool) -> String {
    let count = |c| applied.iter().filter(|a| a.change == c).count();
    let verb = if dry_run { "dry run: would be " } else { "" };
    let mut line = format!(
        "{who}: namespace {ns}: {verb}{} created, {} changed, {} unchanged",
        count(Change::Created),
        count(Change::Changed),
        count(Change::Unchanged)
    );
    if prune {
        line.push_str(&format!(", {} deleted", count(Change::Deleted)));
    }
    line
}
