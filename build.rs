//! Build facts for `--version`: the git commit the binary was built from and
//! the Kubernetes API version k8s-openapi was built for (its `v1_*` feature,
//! read from the `DEP_K8S_OPENAPI_*_VERSION` value its build script exports,
//! so Cargo.toml's feature is the only place that names it).

use std::path::Path;
use std::process::Command;

fn main() -> Result<(), String> {
    println!("cargo::rerun-if-changed=build.rs");
    println!("cargo::rustc-env=OOD_GIT_COMMIT={}", git_commit());
    println!(
        "cargo::rustc-env=OOD_K8S_API_VERSION={}",
        k8s_api_version()?
    );
    Ok(())
}

/// `git rev-parse --short HEAD`, or `OOD_GIT_COMMIT` from the environment
/// (for builds from a source tarball), or "unknown".
fn git_commit() -> String {
    println!("cargo::rerun-if-env-changed=OOD_GIT_COMMIT");
    if let Ok(c) = std::env::var("OOD_GIT_COMMIT")
        && !c.is_empty()
    {
        return c;
    }
    let Some(commit) = git(&["rev-parse", "--short", "HEAD"]) else {
        return "unknown".to_owned();
    };
    // Rebuild when HEAD moves: HEAD itself (a branch switch), the branch's
    // ref (a commit) and packed-refs. In a worktree these live in different
    // directories, which `--git-path` resolves.
    let mut watched = vec!["HEAD".to_owned(), "packed-refs".to_owned()];
    if let Some(r) = git(&["symbolic-ref", "-q", "HEAD"]) {
        watched.push(r);
    }
    for name in watched {
        if let Some(path) = git(&["rev-parse", "--git-path", &name])
            && Path::new(&path).exists()
        {
            println!("cargo::rerun-if-changed={path}");
        }
    }
    commit
}

/// One line of git's output, run in the crate's directory.
fn git(args: &[&str]) -> Option<String> {
    let dir = std::env::var_os("CARGO_MANIFEST_DIR")?;
    let out = Command::new("git")
        .args(args)
        .current_dir(&dir)
        .output()
        .ok()?;
    let line = String::from_utf8(out.stdout).ok()?.trim().to_owned();
    (out.status.success() && !line.is_empty()).then(|| {
        // --git-path answers relative to the crate directory.
        if Path::new(&line).is_relative() && args.contains(&"--git-path") {
            Path::new(&dir).join(&line).display().to_string()
        } else {
            line
        }
    })
}

/// "1.37" from k8s-openapi's `0x00_MM_NN_00` version value.
fn k8s_api_version() -> Result<String, String> {
    let raw = std::env::vars()
        .find(|(k, _)| k.starts_with("DEP_K8S_OPENAPI_") && k.ends_with("_VERSION"))
        .map(|(_, v)| v)
        .ok_or("k8s-openapi did not export DEP_K8S_OPENAPI_*_VERSION (is a v1_* feature on?)")?;
    let v: u32 = raw
        .parse()
        .map_err(|e| format!("DEP_K8S_OPENAPI_*_VERSION {raw:?}: {e}"))?;
    Ok(format!("{}.{}", (v >> 16) & 0xff, (v >> 8) & 0xff))
}
