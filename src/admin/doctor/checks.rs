//! The verdicts: [`Facts`] in, one [`Check`] per line out, each problem
//! with the cause and the fix (naming the key, file or command). Pure, so
//! every message is unit tested here.

use serde_json::Value;

use super::facts::*;
use super::findings::Finding;
use super::report::Check;
use crate::admin::root_token::{RENEW_EVERY, TIMER, human};
use crate::clock::rfc3339;
use crate::cluster::kinds::Kind;
use crate::cluster::templates::UserValues;
use crate::site::account::Ids;
use crate::site::names::{Namespace, Username};
use crate::site::settings::clusters::{WORKING_FORM, kubeconfig_file};
use crate::site::settings::{CredentialMode, Settings};

/// Below this much validity left, root's token is a warning.
pub const TOKEN_WARN_SECS: u64 = 24 * 3600;

const INSTALL: &str = "run `ood-k8s-bootstrap install --kubeconfig ADMIN_KUBECONFIG` (add --job-pod-reaper / --self-renew as used)";
const NEW_ROOT_TOKEN: &str = "mint a new one with a cluster admin's kubeconfig: `ood-k8s-bootstrap root-token --using ADMIN_KUBECONFIG`, then `systemctl enable --now ood-k8s-bootstrap-root-token.timer`";

/// Every check, in the order an admin fixes things.
pub fn all(f: &Facts) -> Vec<Check> {
    let settings = f.hook_env.settings.as_ref().ok();
    let mut out = hook_env(&f.hook_env);
    out.extend(root(f));
    if let Ok(c) = &f.cluster {
        out.extend(api_server(c));
        out.extend(permissions(c));
        out.extend(cluster_roles(c, settings));
        out.extend(reaper(c));
        out.push(login_storms(c));
    }
    out.extend(renewal(f));
    if let Some(p) = &f.pending {
        out.push(pending(p));
    }
    if let Some(i) = &f.issuer {
        out.push(issuer(i));
        out.extend(exchange(i));
    }
    let unchecked = |what: &str| {
        Check::found(
            Finding::NotChecked,
            what,
            "not checked: hook.env does not load",
            "",
        )
    };
    match (&f.user, settings) {
        (Some(u), Some(s)) => out.extend(user(u, s, f.now)),
        (Some(u), None) => out.push(unchecked(&format!("user {}", u.user))),
        (None, _) => {}
    }
    match (&f.dashboard, settings) {
        (Some(d), Some(s)) => out.extend(dashboard(d, s)),
        (Some(_), None) => out.push(unchecked("dashboard")),
        (None, _) => {}
    }
    out
}

/// The permissions one hook run needs, in namespace `ns` ("" = any):
/// get/create/patch on every kind it writes (the site templates' kinds
/// too), and with PRUNE=true list/delete on every kind it may prune.
pub fn needed_access(settings: Option<&Settings>, ns: &str) -> Vec<Access> {
    let mut kinds = vec![Kind::Namespace, Kind::NetworkPolicy, Kind::RoleBinding];
    if let Some(s) = settings {
        if s.image_pull.is_some() {
            kinds.extend([Kind::Secret, Kind::ServiceAccount]);
        }
        kinds.extend(template_kinds(s));
    }
    kinds.sort();
    kinds.dedup();
    let access = |verb: &'static str, kind: Kind| Access {
        verb,
        group: kind.group(),
        resource: kind.plural(),
        namespace: if kind == Kind::Namespace {
            String::new()
        } else {
            ns.to_owned()
        },
        name: None,
        allowed: Ok(false),
    };
    let mut out: Vec<Access> = kinds
        .iter()
        .flat_map(|k| ["get", "create", "patch"].map(|v| access(v, *k)))
        .collect();
    if settings.is_some_and(|s| s.prune) {
        out.extend(Kind::prunable_kinds().flat_map(|k| ["list", "delete"].map(|v| access(v, k))));
    }
    out
}

/// The kinds the site templates make (instantiated for a stand-in user:
/// only the kinds matter).
fn template_kinds(s: &Settings) -> Vec<Kind> {
    let Ok(user) = Username::parse("ood-doctor") else {
        return Vec::new();
    };
    let Ok(ns) = Namespace::for_user(&s.namespace_prefix, &user) else {
        return Vec::new();
    };
    let ids = Ids {
        uid: 65534,
        gid: 65534,
        groups: Some(vec![65534]),
    };
    let values = UserValues {
        user: &user,
        namespace: &ns,
        k8s_username: format!("{}{user}", s.user_subject_prefix),
        ids: Some(&ids),
    };
    s.templates
        .instantiate(&values)
        .map(|objects| objects.iter().map(|o| o.kind).collect())
        .unwrap_or_default()
}

/// The ClusterRoles a run binds.
pub fn bound_roles(settings: Option<&Settings>) -> Vec<String> {
    let mut roles = vec![
        crate::cluster::desired::USER_CLUSTER_ROLE.to_owned(),
        crate::cluster::desired::INITIALIZER_CLUSTER_ROLE.to_owned(),
    ];
    if let Some(r) = settings.and_then(|s| s.job_pod_reaper.as_ref()) {
        roles.push(r.cluster_role.as_str().to_owned());
    }
    roles
}

fn hook_env(h: &HookEnvFacts) -> Vec<Check> {
    let name = "hook.env";
    let mut out = vec![match &h.settings {
        Ok(s) => Check::ok(
            name,
            format!(
                "{} parses ({} warning{})",
                h.path.display(),
                s.warnings.len(),
                if s.warnings.len() == 1 { "" } else { "s" }
            ),
        ),
        Err(e) => Check::found(
            Finding::HookEnvInvalid,
            name,
            e.clone(),
            "correct hook.env as the message says (every key: `ood-k8s-bootstrap config --example`)",
        ),
    }];
    if let Ok(s) = &h.settings {
        out.extend(
            s.warnings
                .iter()
                .map(|w| Check::found(Finding::HookEnvWarning, name, w.clone(), "")),
        );
    }
    let problems: Vec<Check> = h.files.iter().filter_map(file).collect();
    if problems.is_empty() && !h.files.is_empty() {
        let keys: Vec<&str> = h.files.iter().map(|f| f.key).collect();
        out.push(Check::ok(
            "files",
            format!("{} exist, owned by root, safe modes", keys.join(", ")),
        ));
    }
    out.extend(problems);
    out
}

/// A problem with a file hook.env names, if any.
fn file(f: &FileFact) -> Option<Check> {
    let what = format!("{} {}", f.key, f.path.display());
    let m = match &f.meta {
        Ok(m) => m,
        Err(e) => {
            return Some(Check::found(
                Finding::FileMissing,
                "files",
                format!("{what}: {e}"),
                format!("create it or fix {} in hook.env", f.key),
            ));
        }
    };
    let mode = m.mode & 0o7777;
    if !m.regular {
        return Some(Check::found(
            Finding::FileUnsafe,
            "files",
            format!("{what} is not a regular file"),
            format!("point {} at a file", f.key),
        ));
    }
    if m.uid != 0 {
        return Some(Check::found(
            Finding::FileUnsafe,
            "files",
            format!("{what} is owned by uid {}, not root", m.uid),
            format!("chown root: {}", f.path.display()),
        ));
    }
    if mode & 0o022 != 0 {
        return Some(Check::found(
            Finding::FileUnsafe,
            "files",
            format!("{what} is writable by group or others (mode {mode:o})"),
            format!("chmod go-w {}", f.path.display()),
        ));
    }
    if f.secret && mode & 0o044 != 0 {
        return Some(Check::found(
            Finding::FileUnsafe,
            "files",
            format!("{what} holds a secret but is readable by others (mode {mode:o})"),
            format!("chmod 600 {}", f.path.display()),
        ));
    }
    if f.executable && mode & 0o001 == 0 {
        return Some(Check::found(
            Finding::FileUnsafe,
            "files",
            format!("{what} is not executable by users (mode {mode:o}); their kubectl runs it"),
            format!("chmod 755 {}", f.path.display()),
        ));
    }
    if m.symlink {
        return Some(Check::found(
            Finding::FileSymlink,
            "files",
            format!("{what} is a symbolic link"),
            "name the real file in hook.env",
        ));
    }
    None
}

fn root(f: &Facts) -> Vec<Check> {
    let name = "root's kubeconfig";
    let r = match &f.root {
        Ok(r) => r,
        Err(e) => {
            return vec![Check::found(
                Finding::RootKubeconfigUnusable,
                name,
                e.clone(),
                "give root a kubeconfig with the ondemand ServiceAccount's token (README: Installing)",
            )];
        }
    };
    let mut out = vec![Check::ok(
        name,
        format!(
            "{}, context {}, user {} ({})",
            r.file.display(),
            r.context,
            r.user,
            r.credential
        ),
    )];
    out.push(root_token(r, f.cluster.as_ref().ok(), f.now));
    out
}

/// True when the API server answered 401 to root: no run can work.
fn rejects_root(c: &ClusterFacts) -> bool {
    version_rejected(c) || matches!(&c.whoami, Err(e) if e.contains("401"))
}

/// The API server answered 401 even to `/version`: then nothing else is
/// asked, and the other cluster checks are missing from the report.
fn version_rejected(c: &ClusterFacts) -> bool {
    matches!(&c.version, Err(e) if e.contains("answered 401"))
}

/// `": every run would fail"`, saying so when the other cluster checks
/// were skipped.
fn every_run_fails(c: &ClusterFacts) -> &'static str {
    if version_rejected(c) {
        ": every run would fail (nothing else was asked of the API server)"
    } else {
        ": every run would fail"
    }
}

fn root_token(r: &RootFacts, cluster: Option<&ClusterFacts>, now: u64) -> Check {
    let name = "root's token";
    let whoami = cluster.map(|c| &c.whoami);
    let Some((ns, sa)) = &r.account else {
        if let Some(c) = cluster.filter(|c| rejects_root(c)) {
            return Check::found(
                Finding::RootCredentialsRejected,
                name,
                format!(
                    "the API server {} answers but rejects root's credentials ({}){}",
                    c.server,
                    r.credential,
                    every_run_fails(c)
                ),
                "give root the `ondemand` ServiceAccount's token: `ood-k8s-bootstrap root-token --using ADMIN_KUBECONFIG --service-account ondemand/ondemand` (README: Installing)",
            );
        }
        let seen = match whoami {
            Some(Ok(u)) => format!("; the API server sees {u}"),
            _ => String::new(),
        };
        return Check::found(
            Finding::RootNotServiceAccount,
            name,
            format!(
                "root uses {}, not a ServiceAccount token{seen}",
                r.credential
            ),
            "the hook only needs the `ondemand` ServiceAccount's rights; give root its token (README: Installing)",
        );
    };
    let whose = format!("ServiceAccount {ns}/{sa}");
    if let Some(exp) = r.expiry
        && exp <= now
    {
        return Check::found(
            Finding::RootCredentialsRejected,
            name,
            format!(
                "{whose}'s token expired {} ago ({})",
                human(now - exp),
                rfc3339(exp)
            ),
            NEW_ROOT_TOKEN,
        );
    }
    if let Some(c) = cluster.filter(|c| rejects_root(c)) {
        return Check::found(
            Finding::RootCredentialsRejected,
            name,
            format!(
                "the API server rejects {whose}'s token (revoked, or the ServiceAccount was deleted and re-created){}",
                every_run_fails(c)
            ),
            NEW_ROOT_TOKEN,
        );
    }
    if let Some(Ok(u)) = whoami
        && *u != format!("system:serviceaccount:{ns}:{sa}")
    {
        return Check::found(
            Finding::RootCredentialsRejected,
            name,
            format!("the token's claims say {whose} but the API server sees {u}"),
            NEW_ROOT_TOKEN,
        );
    }
    match r.expiry {
        None => Check::ok(
            name,
            format!("{whose}, never expires (a Secret-based token)"),
        ),
        Some(exp) if exp - now < TOKEN_WARN_SECS => Check::found(
            Finding::RootTokenExpiresSoon,
            name,
            format!(
                "{whose}, expires in {} ({})",
                human(exp - now),
                rfc3339(exp)
            ),
            "renew it: `ood-k8s-bootstrap root-token` (the systemd timer does this every 6 h)",
        ),
        Some(exp) => Check::ok(
            name,
            format!(
                "{whose}, expires in {} ({})",
                human(exp - now),
                rfc3339(exp)
            ),
        ),
    }
}

fn api_server(c: &ClusterFacts) -> Option<Check> {
    let name = "API server";
    Some(match &c.version {
        Ok(v) => Check::ok(name, format!("{} answers, Kubernetes {v}", c.server)),
        // Root's credentials are at fault: the failure is reported once, by
        // root's token's check.
        Err(e) if e.contains("answered 401") => return None,
        Err(e) => Check::found(
            Finding::ApiServerUnreachable,
            name,
            format!("{}: {e}", c.server),
            "check the server URL and CA in root's kubeconfig, and that this node can reach it",
        ),
    })
}

fn permissions(c: &ClusterFacts) -> Vec<Check> {
    let name = "permissions";
    if c.version.is_err() {
        return Vec::new();
    }
    let mut out: Vec<Check> = c
        .access
        .iter()
        .filter_map(|a| match &a.allowed {
            Ok(true) => None,
            Ok(false) => Some(Check::found(Finding::PermissionMissing,
                name,
                format!("root may not {}", a.describe()),
                "grant it in the `ondemand` ClusterRole: re-run `ood-k8s-bootstrap install` with a cluster admin's kubeconfig",
            )),
            Err(e) => Some(Check::found(Finding::PermissionMissing, name, format!("cannot ask whether root may {}: {e}", a.describe()), "")),
        })
        .collect();
    if out.is_empty() {
        out.push(Check::ok(
            name,
            format!(
                "all {} permissions a run needs are granted (SelfSubjectAccessReview)",
                c.access.len()
            ),
        ));
    }
    out
}

/// A role root may bind (the dry run passed): does it exist, and is the
/// binding fast? With `bind` on the role the API server no longer looks the
/// role up, so then only the GET proves that it exists.
fn bound(name: String, b: &BindFact) -> Check {
    let exists = "exists and root may bind it (server-side dry run)";
    match (&b.may_bind, &b.get) {
        (Ok(true), Ok(200)) => Check::ok(name, exists),
        (Ok(true), _) => Check::found(
            Finding::RoleUnreadable,
            name,
            "root may bind it (server-side dry run) but may not read it, so whether it exists is not known",
            "re-run `ood-k8s-bootstrap install` with a cluster admin's kubeconfig (it grants `get` on this role)",
        ),
        (Ok(false), _) => Check::ok(
            name,
            format!(
                "{exists}; without `bind` on it a new user's first login takes ~60 ms longer \
                 (`ood-k8s-bootstrap install` grants it)"
            ),
        ),
        (Err(e), _) => Check::found(
            Finding::RoleNotBindable,
            name,
            format!("cannot check `bind` on it: {e}"),
            "",
        ),
    }
}

fn cluster_roles(c: &ClusterFacts, settings: Option<&Settings>) -> Vec<Check> {
    if c.version.is_err() {
        return Vec::new();
    }
    let reaper_role = settings
        .and_then(|s| s.job_pod_reaper.as_ref())
        .map(|r| r.cluster_role.as_str().to_owned());
    c.binds
        .iter()
        .map(|b| {
            let name = format!("ClusterRole {}", b.role);
            let fix = if Some(&b.role) == reaper_role.as_ref() {
                "run `ood-k8s-bootstrap install --job-pod-reaper` with a cluster admin's kubeconfig, or set JOB_POD_REAPER_CLUSTER_ROLE in hook.env to the reaper's role".to_owned()
            } else {
                INSTALL.to_owned()
            };
            let missing = matches!(b.get, Ok(404)) || matches!(&b.bind, Ok((404, _)));
            match (&b.bind, missing) {
                (_, true) => Check::found(Finding::RoleMissing, name, "does not exist, so RoleBindings to it grant nothing", fix),
                (Ok((s, _)), _) if (200..300).contains(s) => bound(name, b),
                (Ok((403, m)), _) => Check::found(Finding::RoleNotBindable,
                    name,
                    format!("root may not bind it: {m}"),
                    "the `ondemand` ClusterRole must hold every permission of this role: re-run `ood-k8s-bootstrap install`, or check the role's rules",
                ),
                (Ok((s, m)), _) => Check::found(Finding::RoleNotBindable, name, format!("binding it answered {s}: {m}"), ""),
                (Err(e), _) => Check::found(Finding::RoleNotBindable, name, format!("cannot check: {e}"), ""),
            }
        })
        .collect()
}

fn reaper(c: &ClusterFacts) -> Vec<Check> {
    c.reaper
        .iter()
        .map(|o| {
            let name = "job-pod-reaper";
            match &o.status {
                Ok(200) => Check::ok(name, format!("{} exists", o.describe)),
                Ok(404) => Check::found(Finding::ReaperMissing,
                    name,
                    format!("{} does not exist (USE_JOB_POD_REAPER=true)", o.describe),
                    "install the job-pod-reaper Helm chart, or set JOB_POD_REAPER_NAMESPACE / JOB_POD_REAPER_SERVICE_ACCOUNT in hook.env to its names",
                ),
                Ok(s) => Check::found(Finding::ReaperMissing, name, format!("reading {} answered {s}", o.describe), ""),
                Err(e) => Check::found(Finding::ReaperMissing, name, format!("cannot read {}: {e}", o.describe), ""),
            }
        })
        .collect()
}

/// Are the account's requests classified by FlowSchema `ondemand`, so that
/// logins keep their share of the API server in a storm?
fn login_storms(c: &ClusterFacts) -> Check {
    let name = "login storms";
    let fix = "run `ood-k8s-bootstrap install` with a cluster admin's kubeconfig (it applies hooks/ondemand-apf.yaml)";
    let storm = "in a login storm the hook's requests queue behind every other ServiceAccount's (priority level workload-low)";
    let Ok(flow) = &c.flow else {
        let why = c.flow.as_ref().err().map_or("", String::as_str);
        return Check::found(
            Finding::FlowSchemaMissing,
            name,
            format!("cannot read FlowSchema ondemand: {why}"),
            "",
        );
    };
    match (flow.status, &flow.uid, &flow.classified_by) {
        (200, Some(uid), Some(by)) if uid == by => Check::ok(
            name,
            "the ondemand account's requests are classified by FlowSchema ondemand: logins keep their own share of the API server",
        ),
        (200, Some(_), Some(by)) => Check::found(
            Finding::FlowSchemaMissing,
            name,
            format!(
                "FlowSchema ondemand exists, but another one (uid {by}) classifies the ondemand account's requests first: {storm}"
            ),
            "give FlowSchema ondemand a lower matchingPrecedence than the one with that uid (`kubectl get flowschemas`)",
        ),
        (_, _, None) => Check::found(
            Finding::FlowSchemaMissing,
            name,
            "the API server does not classify requests (API Priority and Fairness is off)",
            "",
        ),
        (404, _, _) => Check::found(
            Finding::FlowSchemaMissing,
            name,
            format!("there is no FlowSchema ondemand: {storm}"),
            fix,
        ),
        (s, _, _) => Check::found(
            Finding::FlowSchemaMissing,
            name,
            format!("reading FlowSchema ondemand answered {s}"),
            fix,
        ),
    }
}

fn renewal(f: &Facts) -> Vec<Check> {
    let name = "token renewal";
    let Ok(r) = &f.root else { return Vec::new() };
    let (Some(exp), Some(_)) = (r.expiry, &r.account) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    if let Ok(c) = &f.cluster
        && let Some(a) = &c.self_renew
        && a.allowed != Ok(true)
    {
        out.push(Check::found(
            Finding::SelfRenewDenied,
            name,
            format!(
                "root may not {}, so `root-token` cannot renew by itself",
                a.describe()
            ),
            "run `ood-k8s-bootstrap install --self-renew` with a cluster admin's kubeconfig",
        ));
    }
    let due = rfc3339(exp.saturating_sub(RENEW_EVERY.as_secs()).max(f.now));
    out.push(match &f.timer {
        Timer::State { active: true, next } => Check::ok(
            name,
            format!(
                "{TIMER} is active; next renewal {}",
                next.as_deref().unwrap_or("(not scheduled yet)")
            ),
        ),
        Timer::State { active: false, .. } | Timer::NotInstalled => Check::found(
            Finding::RenewalNotScheduled,
            name,
            format!("{TIMER} is not active; the token must be renewed by {due}"),
            format!("systemctl enable --now {TIMER}"),
        ),
        Timer::NoSystemd => Check::found(
            Finding::RenewalNotScheduled,
            name,
            format!("no systemd here to run {TIMER}; the token must be renewed by {due}"),
            "run `ood-k8s-bootstrap root-token` every 6 h (cron)",
        ),
    });
    out
}

fn issuer(i: &IssuerFacts) -> Check {
    let name = "issuer";
    match (&i.discovery, &i.issuer_of_endpoint) {
        (Err(_), Some(d)) => Check::found(
            Finding::IssuerWrong,
            name,
            format!(
                "IDP_ISSUER_URL={} is the token endpoint of issuer {}, not an issuer (OIDC discovery fails on it)",
                i.configured, d.issuer
            ),
            format!("set IDP_ISSUER_URL=\"{}\" in hook.env", d.issuer),
        ),
        (Err(e), None) => Check::found(
            Finding::IssuerWrong,
            name,
            format!("OIDC discovery at {} failed: {e}", i.effective),
            "set IDP_ISSUER_URL in hook.env to the IdP's issuer (the `issuer` of its /.well-known/openid-configuration); set IDP_CA_FILE if its CA is private",
        ),
        (Ok(d), _) if d.issuer != i.effective => Check::found(
            Finding::IssuerWrong,
            name,
            format!("discovery at {} names issuer {}", i.effective, d.issuer),
            format!(
                "set IDP_ISSUER_URL=\"{}\" in hook.env (tokens carry that issuer)",
                d.issuer
            ),
        ),
        (Ok(_), _) if i.configured != i.effective => Check::found(
            Finding::IssuerCorrected,
            name,
            format!(
                "IDP_ISSUER_URL={} is a token endpoint; the hook uses {}, whose discovery works",
                i.configured, i.effective
            ),
            format!("set IDP_ISSUER_URL=\"{}\" in hook.env", i.effective),
        ),
        (Ok(d), _) => Check::ok(
            name,
            format!(
                "OIDC discovery at {} works{}",
                d.issuer,
                d.token_endpoint
                    .as_ref()
                    .map(|t| format!(" (token endpoint {t})"))
                    .unwrap_or_default()
            ),
        ),
    }
}

/// With K8S_TOKEN_EXCHANGE_AUDIENCE set: does the IdP offer the grant?
fn exchange(i: &IssuerFacts) -> Option<Check> {
    let name = "token exchange";
    let audience = i.exchange_audience.as_ref()?;
    let d = i.discovery.as_ref().ok()?;
    let grant = crate::credentials::exchange::GRANT_TYPE;
    Some(match &d.grant_types {
        Some(g) if g.iter().any(|t| t == grant) => Check::ok(
            name,
            format!(
                "the IdP offers the token-exchange grant (K8S_TOKEN_EXCHANGE_AUDIENCE={audience})"
            ),
        ),
        Some(_) => Check::found(
            Finding::ExchangeGrantMissing,
            name,
            format!(
                "K8S_TOKEN_EXCHANGE_AUDIENCE={audience} is set, but the IdP's grant_types_supported lacks {grant}"
            ),
            "enable standard token exchange at the IdP (Keycloak >= 26.2: client attribute standard.token.exchange.enabled=true on the portal client), or unset K8S_TOKEN_EXCHANGE_AUDIENCE in hook.env",
        ),
        None => Check::found(
            Finding::ExchangeGrantUnknown,
            name,
            "the IdP does not list its grant types, so whether it exchanges tokens is not known",
            "check with a user's token: doctor --user USER (OOD_OIDC_ACCESS_TOKEN or --token-file)",
        ),
    })
}

fn user(u: &UserFacts, s: &Settings, now: u64) -> Vec<Check> {
    let name = format!("user {}", u.user);
    let mut out = Vec::new();
    let ns = match &u.namespace {
        Ok(ns) => ns.clone(),
        Err(e) => return vec![Check::found(Finding::UserInvalid, name, e.clone(), "")],
    };
    let expected = format!("{}{}", s.user_subject_prefix, u.user);
    match (&u.token_source, &u.claims) {
        (None, _) => out.push(Check::found(
            Finding::UserNoToken,
            &name,
            "no token given, so what the API server sees for this user is not checked",
            "pass the user's access token in OOD_OIDC_ACCESS_TOKEN or --token-file FILE",
        )),
        (Some(src), Some(Err(e))) => out.push(Check::found(
            Finding::UserTokenUnusable,
            &name,
            format!("the token from {src}: {e}"),
            "",
        )),
        (Some(src), Some(Ok(c))) => out.push(token_claims(&name, src, c, s, now)),
        (Some(_), None) => {}
    }
    match &u.exchange {
        Some(Ok(())) => out.push(Check::ok(
            &name,
            "the IdP exchanged the token for one meant for Kubernetes (checked below)",
        )),
        Some(Err((e, fix))) => out.push(Check::found(
            Finding::UserExchangeRefused,
            &name,
            e.clone(),
            fix.clone(),
        )),
        None => {}
    }
    if let Some(review) = &u.review {
        out.push(api_username(&name, review, &expected, &u.user, s));
    }
    match &u.owner {
        Some(Ok(owner)) => out.push(Check::ok(&name, owner.clone())),
        Some(Err(e)) => out.push(Check::found(
            Finding::UserNamespaceTaken,
            &name,
            e.clone(),
            "the dashboard computes the same namespace for both logins: rename one of them, or record the rightful owner as the message says",
        )),
        None => {}
    }
    out.push(user_objects(&name, &ns, &u.objects));
    out.push(user_kubeconfig(&name, &u.kubeconfig, s, &u.user));
    out.push(last_run(&name, &u.last_run));
    if let Some(c) = user_pending(&name, &u.pending, now) {
        out.push(c);
    }
    out
}

/// The logins this node noted as pending: a warning naming how many once
/// any has waited more than a few minutes.
fn pending(p: &Result<PendingFacts, String>) -> Check {
    const WHAT: &str = "pending logins";
    match p {
        Ok(p) if p.stale > 0 => Check::found(
            Finding::LoginsPending,
            WHAT,
            format!(
                "{} of {} users' logins left a cluster side pending for more than {} minutes (the longest {})",
                p.stale,
                p.users,
                PENDING_WARN_SECS / 60,
                human(p.longest)
            ),
            "is the cluster still down? `ood-k8s-bootstrap heal --dry-run` lists them and why;              `systemctl enable --now ood-k8s-bootstrap-heal.timer` heals them once it answers",
        ),
        Ok(p) if p.users > 0 => Check::ok(
            WHAT,
            format!(
                "{} users' logins pending for {} at most (heal makes them within a minute of the cluster's return)",
                p.users,
                human(p.longest)
            ),
        ),
        Ok(_) => Check::ok(WHAT, "no login is pending on this node"),
        Err(e) => Check::found(
            Finding::LoginsPending,
            WHAT,
            format!("cannot read them: {e}"),
            "",
        ),
    }
}

/// The user's pending cluster sides, if any (or their note unreadable).
fn user_pending(
    name: &str,
    note: &Result<crate::pending::Note, String>,
    now: u64,
) -> Option<Check> {
    let note = match note {
        Ok(n) if n.is_empty() => return None,
        Ok(n) => n,
        Err(e) => {
            return Some(Check::found(
                Finding::UserPending,
                name,
                format!("their pending login's note cannot be read: {e}"),
                "",
            ));
        }
    };
    let sides: Vec<String> = note
        .sides
        .iter()
        .map(|s| {
            format!(
                "{}: pending since the login at {} ({} ago, {} heal tries): {}",
                s.cluster,
                rfc3339(s.login),
                human(now.saturating_sub(s.login)),
                s.tries,
                s.error
            )
        })
        .collect();
    Some(Check::found(
        Finding::UserPending,
        name,
        sides.join("; "),
        "nothing to do once the cluster answers: ood-k8s-bootstrap-heal.timer makes it (or run `ood-k8s-bootstrap heal`)",
    ))
}

/// The user's last hook run, as the hook kept it (`LAST_RUN_DIR`), and
/// what heal did since (a line each).
fn last_run(name: &str, last: &Result<Option<String>, String>) -> Check {
    let login_ok = |text: &str| text.lines().next().unwrap_or("").contains(" exit=\"0\"");
    let healed = |text: &str| {
        text.lines()
            .skip(1)
            .any(|l| l.contains(" outcome=\"healed\""))
    };
    match last {
        Ok(Some(text)) if login_ok(text) => {
            Check::ok(name, format!("last run: {}", text.replace('\n', "; then ")))
        }
        Ok(Some(text)) if healed(text) => Check::ok(
            name,
            format!(
                "last run failed, its cluster side healed since: {}",
                text.replace('\n', "; then ")
            ),
        ),
        Ok(Some(line)) => Check::found(
            Finding::UserLastRunFailed,
            name,
            format!("last run failed: {line}"),
            "the error field says what failed and what to do",
        ),
        Ok(None) => Check::ok(name, "last run: none recorded on this node"),
        Err(e) => Check::found(
            Finding::UserLastRunFailed,
            name,
            format!("last run: cannot read its record: {e}"),
            "",
        ),
    }
}

fn token_claims(
    name: &str,
    src: &str,
    c: &serde_json::Map<String, Value>,
    s: &Settings,
    now: u64,
) -> Check {
    let iss = c.get("iss").and_then(Value::as_str).unwrap_or("(none)");
    let aud: Vec<String> = match c.get("aud") {
        Some(Value::String(a)) => vec![a.clone()],
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(|v| v.as_str().map(str::to_owned))
            .collect(),
        _ => Vec::new(),
    };
    let exp = c.get("exp").and_then(Value::as_u64);
    let about = format!("token from {src}: issuer {iss}, audience {aud:?}");
    if let Some(e) = exp
        && e <= now
    {
        return Check::found(
            Finding::UserTokenUnusable,
            name,
            format!("{about}, expired {} ago", human(now - e)),
            "log in to OnDemand again for a fresh token",
        );
    }
    if let Some(want) = &s.oidc.issuer_url
        && iss != want
    {
        return Check::found(
            Finding::UserTokenUnusable,
            name,
            format!("{about}; hook.env's IDP_ISSUER_URL is {want}"),
            format!("set IDP_ISSUER_URL=\"{iss}\" in hook.env"),
        );
    }
    // With a token exchange the portal's token is not for Kubernetes; the
    // exchanged one is (checked by the API server below).
    if let Some(id) = &s.oidc.client_id
        && s.exchange.is_none()
        && !aud.contains(id)
    {
        return Check::found(
            Finding::UserTokenAudience,
            name,
            format!("{about}, which does not include CLIENT_ID {id}"),
            "give the OnDemand client an audience mapper for the Kubernetes client at the IdP",
        );
    }
    let left = exp
        .map(|e| format!(", expires in {}", human(e - now)))
        .unwrap_or_default();
    Check::ok(name, format!("{about}{left}"))
}

fn api_username(
    name: &str,
    review: &Result<String, String>,
    expected: &str,
    user: &str,
    s: &Settings,
) -> Check {
    let seen = match review {
        Ok(u) => u,
        Err(e) => {
            return Check::found(
                Finding::UserRejected,
                name,
                format!("the API server does not accept the token ({e})"),
                "make the API server trust the IdP: its --oidc-issuer-url and --oidc-client-id (or AuthenticationConfiguration jwt issuer and audiences) must match the token's issuer and audience",
            );
        }
    };
    if seen == expected {
        return Check::ok(
            name,
            format!("the API server sees {seen:?}, the name the RoleBinding {user}-ood-user gives"),
        );
    }
    let detail = format!(
        "the API server sees {seen:?} but the RoleBinding {user}-ood-user would name {expected:?}, so the user gets no rights"
    );
    let fix = match seen.strip_suffix(user) {
        Some(prefix) => format!(
            "set OIDC_USERNAME_PREFIX=\"{prefix}\" in hook.env (it is {:?}), or change the API server's --oidc-username-prefix to {:?}",
            s.user_subject_prefix, s.user_subject_prefix
        ),
        None => "the API server takes the username from another claim: set its --oidc-username-claim (or the AuthenticationConfiguration's claimMappings.username) to the claim holding the login name, e.g. preferred_username".into(),
    };
    Check::found(Finding::UserRejected, name, detail, fix)
}

fn user_objects(name: &str, ns: &str, objects: &[ObjectFact]) -> Check {
    let missing: Vec<&str> = objects
        .iter()
        .filter(|o| o.status != Ok(200))
        .map(|o| o.describe.as_str())
        .collect();
    if missing.is_empty() {
        return Check::ok(
            name,
            format!(
                "namespace {ns} and its {} objects exist",
                objects.len().saturating_sub(1)
            ),
        );
    }
    Check::found(
        Finding::UserObjectsMissing,
        name,
        format!("not in the cluster yet: {}", missing.join(", ")),
        format!(
            "they are made at the user's next login, or now: `ood-k8s-bootstrap --user {}`",
            name.trim_start_matches("user ")
        ),
    )
}

fn user_kubeconfig(
    name: &str,
    k: &Result<UserKubeconfig, String>,
    s: &Settings,
    user: &str,
) -> Check {
    let entry_name = format!("{}{user}", s.username_prefix);
    let k = match k {
        Ok(k) => k,
        Err(e) => {
            return Check::found(
                Finding::UserKubeconfigIncomplete,
                name,
                format!("kubeconfig: {e}"),
                "",
            );
        }
    };
    let Some(kind) = &k.entry else {
        let fix = if s.kubeconfig.credentials == CredentialMode::None {
            "K8S_CREDENTIALS=none: the hook writes no user entry; the dashboard needs one from elsewhere".to_owned()
        } else {
            "it is written at the user's next login (with tokens)".to_owned()
        };
        return Check::found(
            Finding::UserKubeconfigIncomplete,
            name,
            format!("{} has no user entry {entry_name}", k.path.display()),
            fix,
        );
    };
    let ctx = match &k.context {
        Some((cluster, u, ns)) => format!(
            "; context {}: cluster {cluster}, user {u}, namespace {ns}",
            s.kubeconfig.context_name
        ),
        None => format!(
            "; no context {} yet (the dashboard writes it)",
            s.kubeconfig.context_name
        ),
    };
    Check::ok(
        name,
        format!(
            "{}: user entry {entry_name} ({kind}){ctx}",
            k.path.display()
        ),
    )
}

fn dashboard(d: &DashboardFacts, s: &Settings) -> Vec<Check> {
    let mut out: Vec<Check> = d
        .unreadable
        .iter()
        .map(|(p, e)| {
            Check::found(
                Finding::DashboardBroken,
                "dashboard",
                format!("{}: {e}", p.display()),
                "fix the YAML",
            )
        })
        .collect();
    if d.clusters.is_empty() {
        out.push(Check::found(
            Finding::DashboardIncomplete,
            "dashboard",
            format!(
                "no cluster config with v2.job.adapter: kubernetes in {}",
                d.dir.display()
            ),
            "",
        ));
    }
    for c in &d.clusters {
        out.extend(dashboard_cluster(c, s));
    }
    out.extend(d.erb.iter().map(|p| {
        Check::found(
            Finding::DashboardErb,
            "dashboard",
            format!(
                "{}: holds ERB (<%), which ood_core does not evaluate in clusters.d (it reads plain YAML): \
                 the dashboard uses the text as it is; logins fail only when it is in a Kubernetes job field the hook reads",
                p.display()
            ),
            format!(
                "write the value itself in {} (a kubeconfig file per user: config_file: \"{WORKING_FORM}\")",
                p.display()
            ),
        )
    }));
    out
}

fn dashboard_cluster(c: &DashboardCluster, s: &Settings) -> Vec<Check> {
    let file = c.file.display().to_string();
    let mut out = Vec::new();
    let mut differ = |what: &str, theirs: &str, key: &str, ours: &str| {
        if theirs != ours {
            out.push(Check::found(
                Finding::DashboardBroken,
                "dashboard",
                format!("{file}: {what} is {theirs:?} but hook.env's {key} is {ours:?}"),
                format!("make them equal: {key} in hook.env or {what} in {file}"),
            ));
        }
    };
    differ(
        "username_prefix",
        &c.username_prefix,
        "K8S_USERNAME_PREFIX",
        &s.username_prefix,
    );
    differ(
        "namespace_prefix",
        &c.namespace_prefix,
        "NAMESPACE_PREFIX",
        &s.namespace_prefix,
    );
    if s.kubeconfig.server.is_some() {
        let context = c.context.clone().unwrap_or_else(|| c.cluster.clone());
        differ(
            "cluster",
            &c.cluster,
            "K8S_CLUSTER_NAME",
            &s.kubeconfig.cluster_name,
        );
        differ(
            "context",
            &context,
            "K8S_CONTEXT_NAME",
            &s.kubeconfig.context_name,
        );
    }
    // The hook's own rule (clusters::kubeconfig_file): ERB, `~` and fixed
    // paths do not work per user in the dashboard's `sh -c` kubectl calls.
    if let Some(Err(why)) = c.config_file.as_deref().map(kubeconfig_file) {
        out.push(Check::found(
            Finding::DashboardBroken,
            "dashboard",
            format!(
                "{file}: config_file {:?}: {why}",
                c.config_file.as_deref().unwrap_or_default()
            ),
            format!(
                "set config_file: \"{WORKING_FORM}\" in {file}, or remove it (the default is the user's ~/.kube/config)"
            ),
        ));
    }
    if c.auth_type != "oidc"
        && s.kubeconfig.credentials != CredentialMode::None
        && s.kubeconfig.server.is_none()
    {
        out.push(Check::found(Finding::DashboardIncomplete,
            "dashboard",
            format!("{file}: auth.type is {:?}, so the dashboard writes no context for the hook's user entry", c.auth_type),
            "set auth.type: oidc there, or K8S_SERVER in hook.env so the hook writes cluster and context itself",
        ));
    }
    if out.is_empty() {
        out.push(Check::ok(
            "dashboard",
            format!(
                "{file}: username_prefix, namespace_prefix, cluster and context agree with hook.env"
            ),
        ));
    }
    out
}

#[cfg(test)]
mod tests;
