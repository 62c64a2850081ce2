//! Running the file work as the user: root re-executes this binary as
//! `/proc/self/exe __write-kubeconfig` with the user's uid, gid and
//! supplementary groups set between fork and exec (so the child never has a
//! thread, or a moment, with root's privileges after exec), an empty
//! environment and `/` as working directory. One child does every
//! kubeconfig file of a login: the jobs, one per file, tokens included, go
//! to its stdin as JSON; the replies come back on its stdout.

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

/// Runs `jobs` (one per kubeconfig file, all of `user`) in one child
/// process as `user` (uid/gid/groups), waiting at most `timeout`; a reply
/// per job, in order. Must be called as root.
pub fn run_as(user: &str, jobs: &[&Job], timeout: Duration) -> Result<Vec<Reply>, String> {
    let Some(first) = jobs.first() else {
        return Ok(Vec::new());
    };
    if jobs
        .iter()
        .any(|j| (j.uid, j.gid) != (first.uid, first.gid))
    {
        return Err("the kubeconfig jobs are not all for the same uid and gid".into());
    }
    let uid = Uid::from_raw(first.uid);
    let gid = Gid::from_raw(first.gid);
    if uid.is_root() {
        return Err("refusing to write as uid 0".into());
    }
    let name = CString::new(user).map_err(|_| "user name contains NUL".to_owned())?;
    // NSS lookups happen here, in the parent: only raw syscalls after fork.
    let groups = getgrouplist(&name, gid)
        .map_err(|e| format!("cannot list the supplementary groups of {user}: {e}"))?;
    let input = serde_json::to_vec(jobs).map_err(|e| format!("cannot encode the jobs: {e}"))?;

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
            // Not dumpable from the moment root is gone (exec resets it;
            // the child sets it again first thing).
            nix::sys::prctl::set_dumpable(false)?;
            nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o077));
            Ok(())
        });
    }
    // The child runs as the user, who can stop it (SIGSTOP) at any point —
    // before it has exec'd (spawn then waits), with the job half written
    // and the pipe full, or with its answer not yet sent — or keep its
    // pipes open. So the whole exchange, spawn included, runs in a thread
    // of its own, and this one waits for it only until `timeout`; then the
    // child is killed, and the thread left behind.
    let (tx, rx) = std::sync::mpsc::channel();
    let (pid_tx, pid_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(exchange(cmd, input, &pid_tx));
    });
    let (mut child, sent, out, err) = match rx.recv_timeout(timeout) {
        Ok(Ok(done)) => done,
        Ok(Err(e)) => return Err(format!("cannot start the writer as {user}: {e}")),
        Err(_) => {
            match pid_rx.try_recv() {
                Ok(pid) => kill(pid),
                // Not even spawned: stopped before its exec.
                Err(_) => children_of_this_process().into_iter().for_each(kill),
            }
            let why = format!(
                "the writer did not finish within {:.1} s (HOOK_TIMEOUT_SECONDS) and was killed \
                 (a hung home file system, or the user stopped it)",
                timeout.as_secs_f64()
            );
            return Ok(jobs
                .iter()
                .map(|j| Reply::Failed(Failure::new(FailKind::LockTimeout, &j.path(), &why)))
                .collect());
        }
    };
    // Both pipes are closed: the child has exited (or closed them and is
    // about to).
    let status = reap(&mut child);
    let status = status.map_or_else(|| "an unknown status".to_owned(), |s| s.to_string());
    match Reply::from_child(&out, jobs.len()) {
        Some(r) => Ok(r),
        None => {
            let mut e = format!("the writer exited with {status} without an answer");
            if let Some(l) = err.trim().lines().next() {
                e.push_str(": ");
                e.push_str(&crate::oneline::clean(l, 200));
            }
            if let Err(w) = sent {
                e.push_str(&format!(" (sending the job failed: {w})"));
            }
            Err(e)
        }
    }
}

/// Everything said with the child: spawned (its pid sent on `pid` at
/// once), the job written to its stdin, its answer read to EOF.
type Exchanged = (std::process::Child, std::io::Result<()>, Vec<u8>, String);

fn exchange(
    mut cmd: Command,
    input: Vec<u8>,
    pid: &std::sync::mpsc::Sender<u32>,
) -> std::io::Result<Exchanged> {
    let mut child = cmd.spawn()?;
    let _ = pid.send(child.id());
    let sent = child
        .stdin
        .take()
        .map_or(Ok(()), |mut s| s.write_all(&input));
    drop(input);
    let mut out = Vec::new();
    let mut err = String::new();
    if let Some(s) = child.stdout.take() {
        // Bounded: a longer answer is cut, so it does not parse and is
        // reported as no answer.
        let _ = s.take(write::MAX_REPLY).read_to_end(&mut out);
    }
    if let Some(s) = child.stderr.take() {
        let _ = s.take(2000).read_to_string(&mut err);
    }
    Ok((child, sent, out, err))
}

fn kill(pid: u32) {
    if let Ok(pid) = i32::try_from(pid) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}

/// The pids whose parent is this process (from /proc/*/stat).
fn children_of_this_process() -> Vec<u32> {
    let me = std::process::id();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|s| parent_pid(&s))
                == Some(me)
        })
        .collect()
}

/// The parent pid in a /proc/PID/stat line: the second field after the
/// command name, which is in parentheses and may hold anything.
fn parent_pid(stat: &str) -> Option<u32> {
    stat.rsplit_once(')')?
        .1
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// Reaps the child, waiting at most a second (a process in uninterruptible
/// sleep on a hung file system outlives even SIGKILL); after that it is
/// killed and left to init.
fn reap(child: &mut std::process::Child) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + Duration::from_secs(1);
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Some(status),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(1)),
            Ok(None) | Err(_) => {
                let _ = child.kill();
                return None;
            }
        }
    }
}

/// `ood-k8s-bootstrap __write-kubeconfig`: the privilege-dropped child.
/// Reads a list of [`Job`]s (JSON) from stdin, does them in order, writes
/// a list of [`Reply`]s (JSON) to stdout.
pub fn child_main() -> ExitCode {
    // First of all: not dumpable, so that the user it runs as cannot
    // ptrace it or read its memory (the job holds the tokens) through
    // /proc. exec reset what the parent set before it.
    if nix::sys::prctl::set_dumpable(false).is_err() {
        eprintln!("ood-k8s-bootstrap {CHILD_ARG}: cannot make the writer non-dumpable");
        return ExitCode::from(70);
    }
    let mut input = Vec::new();
    if std::io::stdin()
        .take(MAX_JOB)
        .read_to_end(&mut input)
        .is_err()
    {
        eprintln!("ood-k8s-bootstrap {CHILD_ARG}: cannot read the job from stdin");
        return ExitCode::from(70);
    }
    let jobs = match Job::list_from_json(&input) {
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
    let root = me.is_root() || Uid::effective().is_root();
    let replies: Vec<Reply> = jobs
        .iter()
        .map(|job| {
            if root || me.as_raw() != job.uid {
                Reply::Failed(Failure::new(
                    FailKind::Unsafe,
                    &job.home,
                    format!(
                        "the writer runs as uid {me}, not as the user's uid {}; refusing",
                        job.uid
                    ),
                ))
            } else {
                write::run(job)
            }
        })
        .collect();
    match serde_json::to_string(&replies) {
        Ok(s) => {
            println!("{s}");
            ExitCode::SUCCESS
        }
        Err(_) => ExitCode::from(70),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parent_pid_reads_past_any_command_name() {
        assert_eq!(parent_pid("1234 (bash) S 77 1234 1234 0 -1"), Some(77));
        assert_eq!(parent_pid("1234 (a) b) S 9 1 1"), Some(9));
        assert_eq!(parent_pid("1234 (x"), None);
        assert_eq!(parent_pid(""), None);
    }

    #[test]
    fn this_process_finds_its_children() {
        let mut child = Command::new("sleep").arg("5").spawn().unwrap();
        assert!(children_of_this_process().contains(&child.id()));
        kill(child.id());
        let _ = child.wait();
    }
}
