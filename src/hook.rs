//! The hook itself: one user's cluster side and kubeconfig, as OnDemand runs
//! it (`ood-k8s-bootstrap --user alice`), ending in one summary line.

use std::path::Path;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use crate::account::Account;
use crate::apply::{Applied, ApplyError, Change, Cluster, Mode, Owner};
use crate::cli::HookArgs;
use crate::desired::DesiredState;
use crate::exit::Exit;
use crate::names::{Namespace, Username};
use crate::record::{self, Counts, Run};
use crate::run::{PROG, fail, load, runtime, unix_now};
use crate::settings::ExchangeSettings;
use crate::settings::Settings;
use crate::{desired, exchange, kubeconfig, outage};

/// Runs the hook for `args.user`; every failure is already printed.
pub fn run_hook(args: &HookArgs) -> Exit {
    let mut run = Run::start(record::Command::Hook);
    let exit = hook(args, &mut run);
    run.finish(exit);
    exit
}

/// The hook run; what it learns goes into `run`'s record.
fn hook(args: &HookArgs, run: &mut Run) -> Exit {
    let started = Instant::now();
    let Some(user) = args.user.as_deref() else {
        return fail(
            Exit::Usage,
            "no user given; usage: ood-k8s-bootstrap --user USERNAME (see --help)",
        );
    };
    run.record.user = Some(user.to_owned());
    let (settings, user, namespace) = match load(user, &args.common.hook_env) {
        Ok(v) => v,
        Err(exit) => return exit,
    };
    run.configured(&settings);
    run.record.namespace = Some(namespace.to_string());
    run.record.cluster = Some(settings.kubeconfig.cluster_name.clone());
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
    // before any change (with a token exchange, the tokens to write are
    // only known once the IdP has answered).
    let job = if args.dry_run || args.cluster_only {
        None
    } else if let (Some(exchange), Some(_)) = (&settings.exchange, &login.access_token) {
        Some(KubeJob::AfterExchange(Box::new(Exchange {
            exchange: exchange.clone(),
            settings: settings.clone(),
            user: user.clone(),
            account: account.clone(),
            namespace: namespace.clone(),
            login,
        })))
    } else {
        match kubeconfig::prepare(&settings, &user, &account, &namespace, &login) {
            Ok(p) => Some(KubeJob::Ready(p)),
            Err(e) => return fail(e.exit(), e),
        }
    };
    let runtime = match runtime() {
        Ok(rt) => rt,
        Err(exit) => return exit,
    };
    // Whose the namespace is, before anything is written (the kubeconfig
    // included): another login's namespace stops the run here. The
    // kubeconfig side waits for that answer — for at most OWNER_WAIT: an
    // API server that does not answer must not cost the user their fresh
    // credentials (the cluster side then fails on its own), and the
    // kubeconfig is the user's own file with the user's own tokens.
    let (gate, gate_rx) = std::sync::mpsc::channel::<bool>();
    let wait = OWNER_WAIT.min(settings.timeout / 3);
    let writer = job.map(|j| {
        std::thread::spawn(move || match gate_rx.recv_timeout(wait) {
            Ok(false) => None,
            _ => Some(j.run(deadline)),
        })
    });
    let side = runtime.block_on(ClusterSide::check(&settings, &user, &state, deadline));
    let refused = matches!(
        &side,
        Err(ClusterError::Apply(ApplyError::Collision { .. }))
    );
    let _ = gate.send(!refused);
    let side = match side {
        Err(e @ ClusterError::Apply(ApplyError::Collision { .. })) => {
            // Let a writer that already went ahead (a slow owner check)
            // finish its file before the process ends.
            if let Some(w) = writer {
                let _ = w.join();
            }
            return e.fail(&user);
        }
        side => side,
    };
    let mut claimed = false;
    if let Ok(side) = &side {
        if let Some(w) = side.owner.warning(namespace.as_str(), user.as_str()) {
            eprintln!("{PROG}: warning: {w}");
        }
        claimed = side.owner.event() == Some("claimed") && !args.dry_run;
    }
    let applied = match side {
        Ok(side) => runtime.block_on(side.apply(&user, &state, mode, deadline)),
        Err(e) => Err(e),
    };
    drop(runtime);
    let kube = writer.and_then(|w| {
        w.join().unwrap_or_else(|_| {
            Some(Err(KubeError::Write(kubeconfig::KubeconfigError::Writer {
                user: user.to_string(),
                why: "the writer thread panicked".into(),
            })))
        })
    });
    if let Ok(a) = &applied {
        run.record.counts = Counts::of(a);
    }
    let applied = match applied {
        Ok(a) => a,
        // Each side says what happened to it: a failed kubeconfig on a
        // line of its own, a written one at the end of the cluster's error
        // (still one line, as OnDemand logs it).
        Err(e) => {
            let kube_done = match &kube {
                Some(Err(k)) => {
                    eprintln!("{PROG}: error: {k}");
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
            };
            return fail(exit, format!("{message}{kube_done}"));
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
    if claimed {
        line.push_str(" (it had no owner record; it now records this login as its owner)");
    }
    if let Some(k) = kube {
        line.push_str(&outcome_text(&k));
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

/// How long the kubeconfig side waits for the namespace's owner to be
/// known before it goes ahead anyway (a third of HOOK_TIMEOUT_SECONDS if
/// that is shorter).
const OWNER_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

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
}

impl KubeError {
    fn exit(&self) -> Exit {
        match self {
            Self::Write(e) => e.exit(),
            Self::Exchange(e) => e.exit(),
        }
    }
}

impl KubeJob {
    fn run(self, deadline: Instant) -> Result<kubeconfig::Outcome, KubeError> {
        let x = match self {
            KubeJob::Ready(p) => return Ok(p.execute(deadline)?),
            KubeJob::AfterExchange(x) => x,
        };
        let login = exchange::exchange(&x.exchange, x.user.as_str(), &x.login, deadline)?;
        let prepared = kubeconfig::prepare(&x.settings, &x.user, &x.account, &x.namespace, &login)?;
        Ok(prepared.execute(deadline)?)
    }
}

/// Why the cluster side failed.
enum ClusterError {
    Apply(ApplyError),
    /// The API server was found unreachable by a recent run and still
    /// refuses connections: failing at once (`outage.rs`).
    Down(outage::Record),
}

impl ClusterError {
    /// Prints the error line; its exit status.
    fn fail(self, user: &Username) -> Exit {
        match self {
            Self::Apply(e) => fail(e.exit(), e),
            Self::Down(record) => fail(record.exit(), record.message(user.as_str(), unix_ms())),
        }
    }
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

/// Unix time in milliseconds.
fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
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
