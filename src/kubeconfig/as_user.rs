//! Running the file work as the user: root re-executes this binary as
//! `/proc/self/exe __write-kubeconfig` with the user's uid, gid and
//! supplementary groups set between fork and exec (so the child never has a
//! thread, or a moment, with root's privileges after exec), an empty
//! environment and `/` as working directory. The job, tokens included,
//! goes to the child's stdin as JSON; the reply comes back on its stdout.

use std::ffi::CString;
use std::io::{Read, Write};
use std::os::unix::process::CommandExt;
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use nix::unistd::{Gid, Uid, getgrouplist, setgroups, setresgid, setresuid};

use super::write::{self, FailKind, Failure, Job, Reply};

/// The hidden subcommand the child is started with.
pub const CHILD_ARG: &str = "__write-kubeconfig";
const MAX_JOB: u64 = 4 << 20;

/// Runs `job` in a child process as `user` (uid/gid/groups), waiting at
/// most `timeout`. Must be called as root.
pub fn run_as(user: &str, job: &Job, timeout: Duration) -> Result<Reply, String> {
    let uid = Uid::from_raw(job.uid);
    let gid = Gid::from_raw(job.gid);
    if uid.is_root() {
        return Err("refusing to write as uid 0".into());
    }
    let name = CString::new(user).map_err(|_| "user name contains NUL".to_owned())?;
    // NSS lookups happen here, in the parent: only raw syscalls after fork.
    let groups = getgrouplist(&name, gid)
        .map_err(|e| format!("cannot list the supplementary groups of {user}: {e}"))?;
    let input = serde_json::to_vec(job).map_err(|e| format!("cannot encode the job: {e}"))?;

    let mut cmd = Command::new("/proc/self/exe");
    cmd.arg(CHILD_ARG)
        .env_clear()
        .current_dir("/")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // SAFETY: only async-signal-safe syscalls run between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            setgroups(&groups)?;
            setresgid(gid, gid, gid)?;
            setresuid(uid, uid, uid)?;
            // Paranoia: root must be gone for good.
            if nix::unistd::setuid(Uid::from_raw(0)).is_ok() {
                return Err(std::io::Error::other("could not drop root"));
            }
            nix::sys::prctl::set_no_new_privs()?;
            nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o077));
            Ok(())
        });
    }
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("cannot start the writer as {user}: {e}"))?;
    let write_result = child
        .stdin
        .take()
        .map(|mut stdin| stdin.write_all(&input))
        .unwrap_or(Ok(()));
    drop(input);

    // A watchdog kills the writer if it overruns; otherwise we simply read
    // its answer to EOF (no polling delay on the login path).
    let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).unwrap_or(i32::MAX));
    let (done, done_rx) = std::sync::mpsc::channel::<()>();
    let watchdog = std::thread::spawn(move || {
        let overran = done_rx.recv_timeout(timeout).is_err();
        if overran {
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
        }
        overran
    });
    let mut out = Vec::new();
    let mut err = String::new();
    if let Some(s) = child.stdout.take() {
        // Bounded: the child runs as the user. A longer answer is cut, so
        // it does not parse and is reported as no answer.
        let _ = s.take(write::MAX_REPLY).read_to_end(&mut out);
    }
    if let Some(s) = child.stderr.take() {
        let _ = s.take(2000).read_to_string(&mut err);
    }
    // Both pipes are closed: the child has exited (or closed them and is
    // about to). Reap it, briefly, before telling the watchdog.
    let deadline = Instant::now() + Duration::from_secs(1);
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Some(status),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(1)),
            Ok(None) | Err(_) => {
                let _ = child.kill();
                break child.wait().ok();
            }
        }
    };
    let _ = done.send(());
    if watchdog.join().unwrap_or(true) {
        return Ok(Reply::Failed(Failure::new(
            FailKind::LockTimeout,
            &job.home.join(".kube/config"),
            format!(
                "the writer did not finish within {} s (a hung home file system?)",
                timeout.as_secs()
            ),
        )));
    }
    let status = status.map_or_else(|| "an unknown status".to_owned(), |s| s.to_string());
    match Reply::from_child(&out) {
        Some(r) => Ok(r),
        None => {
            let mut e = format!("the writer exited with {status} without an answer");
            if let Some(l) = err.trim().lines().next() {
                e.push_str(": ");
                e.push_str(&crate::oneline::clean(l, 200));
            }
            if let Err(w) = write_result {
                e.push_str(&format!(" (sending the job failed: {w})"));
            }
            Err(e)
        }
    }
}

/// `ood-k8s-bootstrap __write-kubeconfig`: the privilege-dropped child.
/// Reads a [`Job`] (JSON) from stdin, writes a [`Reply`] (JSON) to stdout.
pub fn child_main() -> ExitCode {
    let mut input = Vec::new();
    if std::io::stdin()
        .take(MAX_JOB)
        .read_to_end(&mut input)
        .is_err()
    {
        eprintln!("ood-k8s-bootstrap {CHILD_ARG}: cannot read the job from stdin");
        return ExitCode::from(70);
    }
    let job = match Job::from_json(&input) {
        Some(j) => j,
        None => {
            eprintln!(
                "ood-k8s-bootstrap {CHILD_ARG}: stdin is not a job (this command is internal)"
            );
            return ExitCode::from(64);
        }
    };
    drop(input);
    let me = Uid::current();
    let reply = if me.is_root() || Uid::effective().is_root() || me.as_raw() != job.uid {
        Reply::Failed(Failure::new(
            FailKind::Unsafe,
            &job.home,
            format!(
                "the writer runs as uid {me}, not as the user's uid {}; refusing",
                job.uid
            ),
        ))
    } else {
        write::run(&job)
    };
    match serde_json::to_string(&reply) {
        Ok(s) => {
            println!("{s}");
            ExitCode::SUCCESS
        }
        Err(_) => ExitCode::from(70),
    }
}
