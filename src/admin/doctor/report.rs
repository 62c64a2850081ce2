//! What `doctor` found, as data, and its two renderings: one line per check
//! for people (✓ ok, ⚠ warning, ✗ failure, each problem with its fix) and
//! one JSON object for scripts.

use serde::Serialize;

use super::findings::Finding;
pub use super::findings::Status;

/// One finding.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Check {
    /// Short name of what was checked (`hook.env`, `root token`, ...).
    pub check: String,
    pub status: Status,
    /// What was found.
    pub detail: String,
    /// What to do about it (none when all is well).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

impl Check {
    pub fn ok(check: impl Into<String>, detail: impl Into<String>) -> Self {
        Self {
            check: check.into(),
            status: Status::Ok,
            detail: detail.into(),
            fix: None,
        }
    }

    /// A problem: its status is the finding's (`findings.rs`); an empty
    /// `fix` means none is known.
    pub fn found(
        finding: Finding,
        check: impl Into<String>,
        detail: impl Into<String>,
        fix: impl Into<String>,
    ) -> Self {
        let fix = fix.into();
        Self {
            check: check.into(),
            status: finding.status(),
            detail: detail.into(),
            fix: Some(fix).filter(|f| !f.is_empty()),
        }
    }
}

/// True when nothing failed (warnings pass).
pub fn passed(checks: &[Check]) -> bool {
    checks.iter().all(|c| c.status != Status::Fail)
}

/// `✗ root token: expired 2h ago — fix: ...`, one line per check, and a
/// summary line.
pub fn text(checks: &[Check]) -> String {
    let mut out = String::new();
    for c in checks {
        let mark = match c.status {
            Status::Ok => "✓",
            Status::Warn => "⚠",
            Status::Fail => "✗",
        };
        out.push_str(&format!("{mark} {}: {}", c.check, c.detail));
        if let Some(fix) = &c.fix {
            out.push_str(&format!(" — fix: {fix}"));
        }
        out.push('\n');
    }
    out.push_str(&summary(checks));
    out.push('\n');
    out
}

/// `12 ok, 2 warnings, 1 failed`.
pub fn summary(checks: &[Check]) -> String {
    let n = |s| checks.iter().filter(|c| c.status == s).count();
    format!(
        "{} ok, {} warning{}, {} failed",
        n(Status::Ok),
        n(Status::Warn),
        if n(Status::Warn) == 1 { "" } else { "s" },
        n(Status::Fail)
    )
}

/// `{"ok": false, "checks": [...]}`.
pub fn json(checks: &[Check]) -> String {
    serde_json::json!({"ok": passed(checks), "checks": checks}).to_string()
}

/// [`json`] for a run over the clusters of CLUSTERS_D: one section per
/// cluster; a single section without an id is exactly [`json`].
pub fn json_sections(sections: &[(Option<String>, Vec<Check>)]) -> String {
    if let [(None, checks)] = sections {
        return json(checks);
    }
    let ok = sections.iter().all(|(_, c)| passed(c));
    let clusters: Vec<_> = sections
        .iter()
        .map(|(id, checks)| serde_json::json!({"cluster": id, "ok": passed(checks), "checks": checks}))
        .collect();
    serde_json::json!({"ok": ok, "clusters": clusters}).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_and_json() {
        let checks = vec![
            Check::ok("hook.env", "parses"),
            Check::found(
                Finding::RootTokenExpiresSoon,
                "root token",
                "expires in 3h",
                "enable the timer",
            ),
            Check::found(
                Finding::RoleMissing,
                "ClusterRole ood-user",
                "missing",
                "run install",
            ),
        ];
        let t = text(&checks);
        assert!(t.contains("✓ hook.env: parses\n"));
        assert!(t.contains("⚠ root token: expires in 3h — fix: enable the timer\n"));
        assert!(t.contains("✗ ClusterRole ood-user: missing — fix: run install\n"));
        assert!(t.ends_with("1 ok, 1 warning, 1 failed\n"));
        assert!(!passed(&checks));
        assert!(passed(&checks[..2]));
        let j: serde_json::Value = serde_json::from_str(&json(&checks)).unwrap();
        assert_eq!(j["ok"], false);
        assert_eq!(j["checks"][2]["status"], "fail");
        assert_eq!(j["checks"][0].get("fix"), None);
    }
}
