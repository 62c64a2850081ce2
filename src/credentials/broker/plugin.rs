//! `ood-k8s-bootstrap broker-credential --socket PATH`: the kubectl exec
//! credential plugin of `K8S_CREDENTIALS=broker`. It runs as the user, asks
//! the broker for the user's token, prints the ExecCredential on stdout, or
//! one line on stderr (kubectl shows it) and exits 1. It holds no token,
//! secret or file of its own; the whole exchange is bounded by `--timeout`.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::mpsc;
use std::time::Duration;

use clap::Parser;

use super::protocol::{self, MAX_RESPONSE, Request, VERSION};

/// The hidden subcommand kubectl runs.
pub const SUBCOMMAND: &str = "broker-credential";

/// `ood-k8s-bootstrap broker-credential --socket PATH [--cluster NAME] [--timeout S]`
#[derive(Debug, Parser)]
#[command(
    name = "ood-k8s-bootstrap broker-credential",
    about = "kubectl exec credential plugin: asks the root credential broker for your Kubernetes token"
)]
pub struct PluginArgs {
    /// The broker's Unix socket (BROKER_SOCKET).
    #[arg(long, value_name = "PATH")]
    pub socket: PathBuf,
    /// The kubeconfig cluster the token is for (the broker logs it).
    #[arg(long, value_name = "NAME")]
    pub cluster: Option<String>,
    /// Give up after this many seconds.
    #[arg(long, value_name = "SECONDS", default_value_t = 20)]
    pub timeout: u64,
}

impl PluginArgs {
    /// Parses `argv[1..]` (`broker-credential --socket ...`).
    pub fn from_env() -> Self {
        Self::parse_from(std::env::args_os().skip(1))
    }
}

/// The plugin.
pub fn main(args: PluginArgs) -> ExitCode {
    let timeout = Duration::from_secs(args.timeout.clamp(1, 300));
    // The whole exchange in a thread, so even a connect that blocks (a full
    // listen queue) cannot hold kubectl longer than the timeout.
    let (tx, rx) = mpsc::channel();
    let socket = args.socket.clone();
    let cluster = args.cluster.clone();
    std::thread::spawn(move || {
        let _ = tx.send(ask(&socket, cluster, timeout));
    });
    let result = rx.recv_timeout(timeout).unwrap_or_else(|_| {
        Err(format!(
            "the credential broker ({}) did not answer within {} s: try again; if this persists, ask your administrator",
            args.socket.display(),
            timeout.as_secs()
        ))
    });
    match result {
        Ok(credential) => {
            println!("{credential}");
            ExitCode::SUCCESS
        }
        Err(msg) => {
            eprintln!("ood-k8s-bootstrap: {msg}");
            ExitCode::from(1)
        }
    }
}

/// One request, one answer.
fn ask(socket: &Path, cluster: Option<String>, timeout: Duration) -> Result<String, String> {
    let mut stream = UnixStream::connect(socket).map_err(|e| not_reached(socket, &e))?;
    let _ = stream.set_read_timeout(Some(timeout));
    let _ = stream.set_write_timeout(Some(timeout));
    let mut line = serde_json::to_vec(&Request {
        v: VERSION,
        cluster,
    })
    .map_err(|e| format!("cannot encode the request: {e}"))?;
    line.push(b'\n');
    // A broker refusing the connection may answer before it reads: the
    // answer is read even when the request could not be written.
    let wrote = stream.write_all(&line);
    let mut answer = Vec::new();
    let read = (&stream)
        .take(MAX_RESPONSE as u64 + 1)
        .read_to_end(&mut answer);
    if answer.is_empty() {
        let e = wrote
            .err()
            .or(read.err())
            .map_or("it closed the connection".into(), |e| e.to_string());
        return Err(format!(
            "no answer from the credential broker at {} ({e}): try again; if this persists, ask your administrator",
            socket.display()
        ));
    }
    if answer.len() > MAX_RESPONSE {
        return Err("the credential broker's answer is too long".into());
    }
    let end = answer
        .iter()
        .position(|&b| b == b'\n')
        .unwrap_or(answer.len());
    protocol::read_response(&answer[..end]).map(|c| c.to_string())
}

/// The message for a socket that cannot be reached.
fn not_reached(socket: &Path, e: &std::io::Error) -> String {
    use std::io::ErrorKind;
    match e.kind() {
        ErrorKind::NotFound | ErrorKind::ConnectionRefused => format!(
            "the credential broker is not running (socket {}: {e}): ask your administrator \
             (systemctl status ood-k8s-bootstrap-broker.socket)",
            socket.display()
        ),
        ErrorKind::PermissionDenied => format!(
            "the credential broker's socket {} is not open to you ({e}): ask your administrator",
            socket.display()
        ),
        _ => format!(
            "cannot reach the credential broker at {} ({e}): ask your administrator",
            socket.display()
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_broker_is_named() {
        let e = ask(
            Path::new("/nonexistent/ood-broker.sock"),
            None,
            Duration::from_secs(1),
        )
        .unwrap_err();
        assert!(
            e.contains("the credential broker is not running") && e.contains("administrator"),
            "{e}"
        );
    }

    #[test]
    fn args() {
        let a = PluginArgs::parse_from([SUBCOMMAND, "--socket", "/run/x.sock", "--cluster", "c"]);
        assert_eq!(a.socket, PathBuf::from("/run/x.sock"));
        assert_eq!(a.timeout, 20);
    }
}
