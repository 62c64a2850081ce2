//! The built binary's `--version` and its hidden `generate-docs` (what
//! `packaging/build` runs), without a cluster.

mod common;

use std::process::Command;

use common::{bin, scratch, text};
use ood_k8s_bootstrap::cli::K8S_API_VERSION;

#[test]
fn version_names_commit_and_kubernetes_and_ends_with_newline() {
    for flag in ["--version", "-V"] {
        let out = Command::new(bin()).arg(flag).output().expect("run");
        assert!(out.status.success(), "{}", text(&out));
        let stdout = String::from_utf8(out.stdout).expect("utf-8");
        let prefix = format!("ood-k8s-bootstrap {} (commit ", env!("CARGO_PKG_VERSION"));
        assert!(stdout.starts_with(&prefix), "{stdout:?}");
        let suffix = format!(", Kubernetes API {K8S_API_VERSION})\n");
        assert!(stdout.ends_with(&suffix), "{stdout:?}");
        assert_eq!(stdout.lines().count(), 1, "{stdout:?}");
    }
}

#[test]
fn generate_docs_writes_pages_and_completions() {
    let dir = scratch("docs");
    let out = Command::new(bin())
        .args(["generate-docs", "--out-dir"])
        .arg(&dir)
        .output()
        .expect("run");
    assert!(out.status.success(), "{}", text(&out));
    for path in [
        "man/man1/ood-k8s-bootstrap.1",
        "man/man1/ood-k8s-bootstrap-render.1",
        "man/man1/ood-k8s-bootstrap-config.1",
        "man/man1/ood-k8s-bootstrap-reconcile.1",
        "man/man5/ood-k8s-bootstrap-hook.env.5",
        "completions/bash/ood-k8s-bootstrap",
        "completions/zsh/_ood-k8s-bootstrap",
        "completions/fish/ood-k8s-bootstrap.fish",
    ] {
        let len = std::fs::metadata(dir.join(path))
            .unwrap_or_else(|e| panic!("{path}: {e}"))
            .len();
        assert!(len > 200, "{path} has {len} bytes");
    }
    std::fs::remove_dir_all(&dir).expect("clean up");
}

/// `PROG generate-docs /path` is the old scripts' call form for a user
/// named "generate-docs": it must run the hook (and fail on the missing
/// hook.env), not write docs into /path.
#[test]
fn legacy_form_with_that_name_is_a_hook_run() {
    let dir = scratch("docs-legacy");
    let target = dir.join("hook.env");
    let out = Command::new(bin())
        .arg("generate-docs")
        .arg(&target)
        .env_remove("KUBECONFIG")
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(78), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("hook.env"),
        "{}",
        text(&out)
    );
    assert!(!dir.join("hook.env").exists() && !dir.join("hook.env/man").exists());
    std::fs::remove_dir_all(&dir).expect("clean up");
}

#[test]
fn help_does_not_show_generate_docs() {
    let out = Command::new(bin()).arg("--help").output().expect("run");
    assert!(out.status.success(), "{}", text(&out));
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(
        help.contains("render") && !help.contains("generate-docs"),
        "{help}"
    );
}
