//! Every problem `doctor` can find, with its severity, defined once: the
//! checks report a [`Finding`] (which fixes the ✗ or ⚠), and `doctor
//! --help` (so the man page) lists them from the same table, so the two
//! cannot drift apart.
//!
//! The rule: a failure (✗, exit status 1) means logins fail — every login,
//! or with `--user` that user's — or what they set up cannot be used; a
//! warning (⚠, exit status 0) means logins work, but something is degraded,
//! at risk later, or could not be known.

use serde::Serialize;

/// A check's outcome: ✓, ⚠ or ✗.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Ok,
    Warn,
    Fail,
}

/// One table: variant, severity, what it means (for `--help`).
macro_rules! findings {
    ($($(#[$doc:meta])* $name:ident: $status:ident, $meaning:literal;)*) => {
        /// A problem a check can report.
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum Finding {
            $($(#[$doc])* $name,)*
        }

        impl Finding {
            /// Every finding, in the order of the checks.
            pub const ALL: &[Finding] = &[$(Finding::$name,)*];

            /// ✗ or ⚠.
            pub fn status(self) -> Status {
                match self {
                    $(Finding::$name => Status::$status,)*
                }
            }

            /// What it means, as `--help` lists it.
            pub fn meaning(self) -> &'static str {
                match self {
                    $(Finding::$name => $meaning,)*
                }
            }
        }
    };
}

findings! {
    HookEnvInvalid: Fail, "hook.env does not parse or a value is invalid";
    HookEnvWarning: Warn, "hook.env parses with a warning";
    FileMissing: Fail, "a file hook.env names is missing or unreadable";
    FileUnsafe: Fail, "a file hook.env names is not a regular file, not owned by root, writable by others, a secret readable by others, or an exec plugin users cannot run";
    FileSymlink: Warn, "a file hook.env names is a symbolic link";
    RootKubeconfigUnusable: Fail, "root's kubeconfig is missing or unusable";
    RootNotServiceAccount: Warn, "root's credential, which the API server accepts, is not the ondemand ServiceAccount's token";
    RootCredentialsRejected: Fail, "root's credentials, whatever their kind, are expired or rejected by the API server, or belong to another ServiceAccount than their claims say";
    RootTokenExpiresSoon: Warn, "root's token expires within 24 hours";
    ApiServerUnreachable: Fail, "the API server cannot be reached or does not answer";
    PermissionMissing: Fail, "root lacks a permission a hook run needs, or whether it has it cannot be asked";
    RoleUnreadable: Warn, "root may bind a ClusterRole but not read it, so whether it exists is not known";
    RoleMissing: Fail, "a ClusterRole the hook binds does not exist";
    RoleNotBindable: Fail, "root may not bind a ClusterRole the hook binds, or whether it may cannot be checked";
    ReaperMissing: Warn, "USE_JOB_POD_REAPER=true but the job-pod-reaper's namespace or ServiceAccount is missing or unreadable (logins work; pods are not reaped)";
    FlowSchemaMissing: Warn, "the ondemand account's requests are not classified by FlowSchema ondemand, or whether they are cannot be read (logins work; in a login storm they queue behind other workloads)";
    SelfRenewDenied: Warn, "root may not renew its own token";
    RenewalNotScheduled: Warn, "nothing renews root's token (the systemd timer is not active, or there is no systemd)";
    LoginsPending: Warn, "logins on this node left a cluster side pending for more than 5 minutes (the cluster is still down, or ood-k8s-bootstrap-heal.timer is not active), or their notes cannot be read";
    IssuerWrong: Fail, "OIDC discovery at IDP_ISSUER_URL fails or names another issuer";
    IssuerCorrected: Warn, "IDP_ISSUER_URL is a token endpoint the hook corrected to a working issuer";
    ExchangeGrantMissing: Fail, "K8S_TOKEN_EXCHANGE_AUDIENCE is set but the IdP does not offer token exchange";
    ExchangeGrantUnknown: Warn, "the IdP does not list its grant types, so whether it exchanges tokens is not known";
    NotChecked: Warn, "a check was skipped because hook.env does not load (which fails on its own)";
    UserInvalid: Fail, "--user: the login gives no valid namespace";
    UserNoToken: Warn, "--user without a token: what the API server sees is not checked";
    UserTokenUnusable: Fail, "--user: the user's token does not parse, has expired, or has another issuer than IDP_ISSUER_URL";
    UserTokenAudience: Warn, "--user: the user's token lacks CLIENT_ID in its audience (the API server's verdict follows)";
    UserExchangeRefused: Fail, "--user: the IdP refuses to exchange the user's token";
    UserRejected: Fail, "--user: the API server rejects the user's token, or sees another name than the RoleBinding gives";
    UserNamespaceTaken: Fail, "--user: the user's namespace belongs to another login (the dashboard maps `.` and `@` to `-`), or whose it is cannot be checked";
    UserObjectsMissing: Warn, "--user: the user's namespace or objects are not there yet (the next login makes them)";
    UserKubeconfigIncomplete: Warn, "--user: the user's kubeconfig cannot be read or has no entry yet";
    UserLastRunFailed: Warn, "--user: the user's last hook run on this node failed (its record says why), or its record cannot be read";
    UserPending: Warn, "--user: the user's last login left a cluster side pending (heal makes it once the cluster answers), or its note cannot be read";
    DashboardBroken: Fail, "--clusters-d: a cluster config does not parse, disagrees with hook.env, or has a config_file the dashboard cannot use per user (ERB, ~, a fixed path)";
    DashboardErb: Warn, "--clusters-d: a cluster config holds ERB, which the dashboard does not evaluate there (it uses the text as it is)";
    DashboardIncomplete: Warn, "--clusters-d: no Kubernetes cluster config, or its auth.type makes the dashboard write no context";
}

/// The part of `doctor --help` (and its man page) that says which findings
/// fail and which warn.
pub fn help() -> String {
    let mut out = String::from(
        "Failures (✗, exit status 1): logins fail, or what they set up cannot be used:\n",
    );
    list(Status::Fail, &mut out);
    out.push_str("\nWarnings (⚠, exit status 0): logins work, but:\n");
    list(Status::Warn, &mut out);
    out
}

fn list(status: Status, out: &mut String) {
    for f in Finding::ALL.iter().filter(|f| f.status() == status) {
        out.push_str("  - ");
        out.push_str(f.meaning());
        out.push('\n');
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn help_lists_every_finding_under_its_status() {
        let h = help();
        let (fails, warns) = h.split_once("\nWarnings").unwrap();
        for f in Finding::ALL {
            let line = format!("  - {}\n", f.meaning());
            let part = if f.status() == Status::Fail {
                fails
            } else {
                warns
            };
            assert!(part.contains(&line), "{f:?} under the wrong heading");
        }
    }

    #[test]
    fn rejected_root_credentials_fail() {
        assert_eq!(Finding::RootCredentialsRejected.status(), Status::Fail);
        assert_eq!(Finding::ApiServerUnreachable.status(), Status::Fail);
    }
}
