//! Every verdict of `doctor`, from hand-made facts.

use std::path::{Path, PathBuf};

use super::*;
use crate::admin::doctor::report::Status;

const NOW: u64 = 1_000_000;

fn settings(extra: &str) -> Settings {
    Settings::parse(
        Path::new("/etc/ood/config/hook.env"),
        &format!("NETWORK_POLICY_ALLOW_CIDR=10.0.0.1/32\nIDP_ISSUER_URL=https://idp.example/realms/ood\nCLIENT_ID=k8s\n{extra}"),
    )
    .unwrap()
}

fn healthy() -> Facts {
    Facts {
        now: NOW,
        hook_env: HookEnvFacts {
            path: PathBuf::from("/etc/ood/config/hook.env"),
            settings: Ok(settings("")),
            raw_issuer: Some("https://idp.example/realms/ood".into()),
            files: vec![FileFact {
                key: "hook.env",
                path: PathBuf::from("/etc/ood/config/hook.env"),
                meta: Ok(FileMeta {
                    uid: 0,
                    mode: 0o100600,
                    symlink: false,
                    regular: true,
                }),
                secret: true,
                executable: false,
            }],
        },
        root: Ok(RootFacts {
            file: PathBuf::from("/root/.kube/config"),
            context: "ondemand@k8s".into(),
            user: "ondemand@k8s".into(),
            credential: "a token".into(),
            account: Some(("ondemand".into(), "ondemand".into())),
            expiry: Some(NOW + 40 * 3600),
        }),
        cluster: Ok(ClusterFacts {
            server: "https://k8s.example:6443".into(),
            version: Ok("v1.37.2".into()),
            whoami: Ok("system:serviceaccount:ondemand:ondemand".into()),
            access: needed_access(None, "")
                .into_iter()
                .map(|mut a| {
                    a.allowed = Ok(true);
                    a
                })
                .collect(),
            binds: bound_roles(None)
                .into_iter()
                .map(|role| BindFact {
                    role,
                    get: Ok(200),
                    bind: Ok((201, String::new())),
                    may_bind: Ok(true),
                })
                .collect(),
            reaper: Vec::new(),
            self_renew: None,
            flow: Ok(FlowFact {
                status: 200,
                uid: Some("uid-ondemand".into()),
                classified_by: Some("uid-ondemand".into()),
            }),
        }),
        issuer: Some(IssuerFacts {
            configured: "https://idp.example/realms/ood".into(),
            effective: "https://idp.example/realms/ood".into(),
            discovery: Ok(Discovery {
                issuer: "https://idp.example/realms/ood".into(),
                token_endpoint: Some(
                    "https://idp.example/realms/ood/protocol/openid-connect/token".into(),
                ),
                grant_types: None,
            }),
            issuer_of_endpoint: None,
            exchange_audience: None,
        }),
        user: None,
        dashboard: None,
        timer: Timer::State {
            active: true,
            next: Some("Thu 2026-11-26 06:00:00 UTC".into()),
        },
        pending: None,
    }
}

fn failures(f: &Facts) -> Vec<Check> {
    all(f)
        .into_iter()
        .filter(|c| c.status == Status::Fail)
        .collect()
}

/// The one failure `f` has, with its detail and fix.
fn only_failure(f: &Facts) -> Check {
    let mut fails = failures(f);
    assert_eq!(fails.len(), 1, "{fails:#?}");
    fails.remove(0)
}

#[test]
fn a_healthy_setup_passes() {
    let checks = all(&healthy());
    assert!(crate::admin::doctor::report::passed(&checks), "{checks:#?}");
    assert!(checks.iter().all(|c| c.status == Status::Ok), "{checks:#?}");
}

#[test]
fn expired_or_rejected_root_token_fails() {
    let mut f = healthy();
    if let Ok(r) = &mut f.root {
        r.expiry = Some(NOW - 7200);
    }
    let c = only_failure(&f);
    assert!(c.detail.contains("expired 2h 0m ago"), "{c:?}");
    assert!(
        c.fix
            .unwrap()
            .contains("root-token --using ADMIN_KUBECONFIG")
    );

    let mut f = healthy();
    if let Ok(c) = &mut f.cluster {
        // A rejected token gets 401 even for /version: one failure, not two.
        c.version = Err("/version answered 401: Unauthorized".into());
        c.whoami = Err("rejected: 401 Unauthorized".into());
    }
    let c = only_failure(&f);
    assert!(
        c.detail
            .contains("rejects ServiceAccount ondemand/ondemand's token"),
        "{c:?}"
    );
}

/// A credential that is not a ServiceAccount token (a static token, a
/// client certificate) and that the API server rejects: every run would
/// fail, so it fails, once, and is not only a warning.
#[test]
fn rejected_credentials_of_any_kind_fail() {
    let mut f = healthy();
    if let Ok(r) = &mut f.root {
        r.account = None;
        r.expiry = None;
        r.credential = "a token".into();
    }
    if let Ok(c) = &mut f.cluster {
        c.version = Err("/version answered 401: Unauthorized".into());
        c.whoami = Err("rejected: 401 Unauthorized".into());
    }
    let c = only_failure(&f);
    assert_eq!(c.check, "root's token");
    assert!(
        c.detail
            .contains("answers but rejects root's credentials (a token)")
            && c.detail.contains("every run would fail"),
        "{c:?}"
    );
    assert!(
        c.fix
            .unwrap()
            .contains("--service-account ondemand/ondemand")
    );
    assert!(!crate::admin::doctor::report::passed(&all(&f)));
    assert!(
        all(&f).iter().all(|c| c.check != "API server"),
        "the API server is not reported a second time"
    );

    // Accepted, it only warns that it is not the ServiceAccount's token.
    let mut f = healthy();
    if let Ok(r) = &mut f.root {
        r.account = None;
    }
    if let Ok(c) = &mut f.cluster {
        c.whoami = Ok("kubernetes-admin".into());
    }
    assert!(failures(&f).is_empty(), "{:#?}", all(&f));
}

#[test]
fn unreachable_api_server_fails() {
    let mut f = healthy();
    if let Ok(c) = &mut f.cluster {
        c.version = Err("connection refused".into());
        c.whoami = Err("connection refused".into());
    }
    let c = only_failure(&f);
    assert_eq!(c.check, "API server");
}

#[test]
fn root_token_near_expiry_warns() {
    let mut f = healthy();
    if let Ok(r) = &mut f.root {
        r.expiry = Some(NOW + 3 * 3600);
    }
    let checks = all(&f);
    let c = checks.iter().find(|c| c.check == "root's token").unwrap();
    assert_eq!(c.status, Status::Warn);
    assert!(c.detail.contains("expires in 3h 0m"), "{c:?}");
}

#[test]
fn issuer_set_to_the_token_endpoint_fails_naming_the_issuer() {
    let mut f = healthy();
    let endpoint = "https://idp.example/dex/token";
    f.issuer = Some(IssuerFacts {
        configured: endpoint.into(),
        effective: endpoint.into(),
        discovery: Err("answered 404".into()),
        issuer_of_endpoint: Some(Discovery {
            issuer: "https://idp.example/dex".into(),
            token_endpoint: Some(endpoint.into()),
            grant_types: None,
        }),
        exchange_audience: None,
    });
    let c = only_failure(&f);
    assert!(
        c.detail
            .contains("is the token endpoint of issuer https://idp.example/dex")
    );
    assert_eq!(
        c.fix.as_deref(),
        Some("set IDP_ISSUER_URL=\"https://idp.example/dex\" in hook.env")
    );
}

#[test]
fn corrected_keycloak_token_endpoint_only_warns() {
    let mut f = healthy();
    if let Some(i) = &mut f.issuer {
        i.configured = "https://idp.example/realms/ood/protocol/openid-connect/token".into();
    }
    assert!(failures(&f).is_empty());
    let checks = all(&f);
    let c = checks.iter().find(|c| c.check == "issuer").unwrap();
    assert_eq!(c.status, Status::Warn);
}

#[test]
fn missing_or_unbindable_cluster_role_fails() {
    let mut f = healthy();
    if let Ok(c) = &mut f.cluster {
        c.binds[0].bind = Ok((404, "clusterroles \"ood-user\" not found".into()));
    }
    let c = only_failure(&f);
    assert_eq!(c.check, "ClusterRole ood-user");
    assert!(c.detail.contains("does not exist"));
    assert!(c.fix.unwrap().contains("ood-k8s-bootstrap install"));

    let mut f = healthy();
    if let Ok(c) = &mut f.cluster {
        c.binds[1].bind = Ok((
            403,
            "attempting to grant RBAC permissions not currently held".into(),
        ));
    }
    let c = only_failure(&f);
    assert!(c.detail.contains("may not bind it"), "{c:?}");
}

#[test]
fn cluster_role_found_only_by_get_when_root_may_bind_it() {
    // With `bind` on the role the dry-run create succeeds even when the role
    // is missing: the GET decides.
    let mut f = healthy();
    if let Ok(c) = &mut f.cluster {
        c.binds[0].get = Ok(404);
    }
    let c = only_failure(&f);
    assert_eq!(c.check, "ClusterRole ood-user");
    assert!(c.detail.contains("does not exist"), "{c:?}");

    // Root may bind but not read it (an install older than the `get` rule).
    let mut f = healthy();
    if let Ok(c) = &mut f.cluster {
        c.binds[0].get = Ok(403);
    }
    assert!(failures(&f).is_empty());
    let checks = all(&f);
    let c = checks
        .iter()
        .find(|c| c.check == "ClusterRole ood-user")
        .unwrap();
    assert_eq!(c.status, Status::Warn, "{c:?}");
    assert!(c.fix.as_deref().unwrap().contains("install"), "{c:?}");

    // Without `bind` (OnDemand's own ondemand.yaml) the dry run proved the
    // role exists: fine, with a hint about first-login speed.
    let mut f = healthy();
    if let Ok(c) = &mut f.cluster {
        c.binds[0].get = Ok(403);
        c.binds[0].may_bind = Ok(false);
    }
    let checks = all(&f);
    let c = checks
        .iter()
        .find(|c| c.check == "ClusterRole ood-user")
        .unwrap();
    assert_eq!(c.status, Status::Ok, "{c:?}");
    assert!(c.detail.contains("first login"), "{c:?}");
}

/// Logins work without the reaper (the RoleBinding may name a missing
/// ServiceAccount); only pods are not reaped.
#[test]
fn reaper_service_account_missing_warns() {
    let mut f = healthy();
    f.hook_env.settings = Ok(settings("USE_JOB_POD_REAPER=true\n"));
    if let Ok(c) = &mut f.cluster {
        c.binds.push(BindFact {
            role: "job-pod-reaper".into(),
            get: Ok(200),
            bind: Ok((201, String::new())),
            may_bind: Ok(true),
        });
        c.reaper = vec![
            ObjectFact {
                describe: "Namespace job-pod-reaper".into(),
                status: Ok(200),
            },
            ObjectFact {
                describe: "ServiceAccount job-pod-reaper/job-pod-reaper".into(),
                status: Ok(404),
            },
        ];
    }
    assert!(failures(&f).is_empty(), "{:#?}", all(&f));
    let c = all(&f)
        .into_iter()
        .find(|c| c.check == "job-pod-reaper" && c.status == Status::Warn)
        .expect("a warning about the reaper");
    assert!(
        c.detail
            .contains("ServiceAccount job-pod-reaper/job-pod-reaper does not exist"),
        "{c:?}"
    );
    assert!(c.fix.unwrap().contains("JOB_POD_REAPER_SERVICE_ACCOUNT"));
}

#[test]
fn denied_permission_fails_naming_it() {
    let mut f = healthy();
    if let Ok(c) = &mut f.cluster {
        c.access[4].allowed = Ok(false);
    }
    let c = only_failure(&f);
    assert_eq!(
        c.detail,
        "root may not create networkpolicies.networking.k8s.io"
    );
}

fn user_facts(seen: &str) -> UserFacts {
    UserFacts {
        user: "alice".into(),
        namespace: Ok("alice".into()),
        token_source: Some("OOD_OIDC_ACCESS_TOKEN".into()),
        claims: Some(Ok(serde_json::json!({"iss": "https://idp.example/realms/ood", "aud": ["ood", "k8s"], "exp": NOW + 300})
            .as_object()
            .unwrap()
            .clone())),
        exchange: None,
        review: Some(Ok(seen.into())),
        objects: vec![ObjectFact { describe: "Namespace/alice".into(), status: Ok(200) }],
        owner: None,
        kubeconfig: Ok(UserKubeconfig {
            path: PathBuf::from("/home/alice/.kube/config"),
            entry: Some("auth-provider".into()),
            context: None,
        }),
        last_run: Ok(Some("time=\"t\" command=\"hook\" user=\"alice\" exit=\"0\"".into())),
        pending: Ok(Default::default()),
    }
}

#[test]
fn the_users_last_run_is_shown_and_a_failed_one_warns() {
    let last = |run: Result<Option<String>, String>| {
        let mut f = healthy();
        let mut u = user_facts("alice");
        u.last_run = run;
        f.user = Some(u);
        all(&f)
            .into_iter()
            .find(|c| c.detail.starts_with("last run"))
            .unwrap()
    };
    let ok = last(Ok(Some("command=\"hook\" exit=\"0\"".into())));
    assert_eq!(ok.status, Status::Ok);
    assert_eq!(ok.detail, "last run: command=\"hook\" exit=\"0\"");
    let failed = last(Ok(Some(
        "command=\"hook\" exit=\"69\" error=\"down\"".into(),
    )));
    assert_eq!(failed.status, Status::Warn);
    assert!(failed.detail.contains("error=\"down\""), "{failed:?}");
    assert_eq!(
        last(Ok(None)).detail,
        "last run: none recorded on this node"
    );
}

/// Issue 27: a login left pending warns with its cluster and why, a
/// healed one is fine, and doctor warns (naming how many) only once
/// logins wait longer than a few minutes.
#[test]
fn pending_logins_are_shown_and_old_ones_warn() {
    use crate::pending::{Note, Side};
    let mut f = healthy();
    let mut u = user_facts("alice");
    u.last_run = Ok(Some(
        "time=\"t\" command=\"hook\" exit=\"69\" error=\"down\" pending=\"gpu\"".into(),
    ));
    u.pending = Ok(Note {
        sides: vec![Side {
            cluster: "gpu".into(),
            login: NOW - 120,
            error: "unreachable".into(),
            tries: 2,
        }],
    });
    f.user = Some(u.clone());
    let checks = all(&f);
    let pending = checks
        .iter()
        .find(|c| c.detail.contains("pending since the login"))
        .expect("a pending check");
    assert_eq!(pending.status, Status::Warn);
    assert!(
        pending.detail.contains("gpu: pending since the login at")
            && pending.detail.contains("2 heal tries")
            && pending.detail.contains("unreachable"),
        "{pending:?}"
    );
    u.pending = Ok(Note::default());
    u.last_run = Ok(Some(
        "time=\"t\" command=\"hook\" exit=\"69\" pending=\"gpu\"\ntime=\"u\" command=\"heal\" exit=\"0\" outcome=\"healed\""
            .into(),
    ));
    f.user = Some(u);
    let last = all(&f)
        .into_iter()
        .find(|c| c.detail.starts_with("last run"))
        .unwrap();
    assert_eq!(last.status, Status::Ok, "{last:?}");
    assert!(last.detail.contains("healed since"), "{last:?}");

    let node = |p: PendingFacts| {
        let mut f = healthy();
        f.pending = Some(Ok(p));
        all(&f)
            .into_iter()
            .find(|c| c.check == "pending logins")
            .unwrap()
    };
    let fresh = node(PendingFacts {
        users: 3,
        stale: 0,
        longest: 70,
    });
    assert_eq!(fresh.status, Status::Ok, "{fresh:?}");
    let stale = node(PendingFacts {
        users: 3,
        stale: 2,
        longest: 900,
    });
    assert_eq!(stale.status, Status::Warn);
    assert!(
        stale.detail.starts_with("2 of 3 users' logins"),
        "{stale:?}"
    );
}

#[test]
fn user_seen_as_the_binding_names_passes() {
    let mut f = healthy();
    f.user = Some(user_facts("alice"));
    assert!(failures(&f).is_empty(), "{:#?}", all(&f));
}

#[test]
fn username_prefix_mismatch_fails_naming_the_key() {
    let mut f = healthy();
    f.user = Some(user_facts("oidc:alice"));
    let c = only_failure(&f);
    assert!(
        c.detail.contains(
            "sees \"oidc:alice\" but the RoleBinding alice-ood-user would name \"alice\""
        ),
        "{c:?}"
    );
    assert!(
        c.fix
            .unwrap()
            .starts_with("set OIDC_USERNAME_PREFIX=\"oidc:\" in hook.env")
    );

    let mut f = healthy();
    f.user = Some(user_facts("7f1a9d0e-0000-4000-8000-00000000a11c"));
    let c = only_failure(&f);
    assert!(c.fix.unwrap().contains("--oidc-username-claim"));
}

#[test]
fn user_token_problems() {
    let mut f = healthy();
    let mut u = user_facts("alice");
    u.review = Some(Err("rejected: 401 Unauthorized".into()));
    f.user = Some(u);
    assert!(only_failure(&f).fix.unwrap().contains("--oidc-issuer-url"));

    let mut f = healthy();
    let mut u = user_facts("alice");
    u.claims = Some(Ok(
        serde_json::json!({"iss": "https://other.example", "aud": "k8s"})
            .as_object()
            .unwrap()
            .clone(),
    ));
    f.user = Some(u);
    assert!(
        only_failure(&f)
            .fix
            .unwrap()
            .contains("IDP_ISSUER_URL=\"https://other.example\"")
    );

    let mut f = healthy();
    let mut u = user_facts("alice");
    u.token_source = None;
    u.claims = None;
    u.review = None;
    f.user = Some(u);
    assert!(failures(&f).is_empty());
}

fn dashboard_cluster(username_prefix: &str, namespace_prefix: &str) -> DashboardFacts {
    DashboardFacts {
        dir: PathBuf::from("/etc/ood/config/clusters.d"),
        clusters: vec![DashboardCluster {
            file: PathBuf::from("/etc/ood/config/clusters.d/k8s.yml"),
            username_prefix: username_prefix.into(),
            namespace_prefix: namespace_prefix.into(),
            cluster: "open-ondemand".into(),
            context: None,
            auth_type: "oidc".into(),
            config_file: None,
        }],
        unreadable: Vec::new(),
        erb: Vec::new(),
    }
}

#[test]
fn dashboard_prefixes_must_equal_hook_env() {
    let mut f = healthy();
    f.dashboard = Some(dashboard_cluster("", ""));
    assert!(failures(&f).is_empty());

    f.dashboard = Some(dashboard_cluster("", "user-"));
    let c = only_failure(&f);
    assert!(
        c.detail
            .contains("namespace_prefix is \"user-\" but hook.env's NAMESPACE_PREFIX is \"\""),
        "{c:?}"
    );
    assert!(c.fix.unwrap().contains(
        "NAMESPACE_PREFIX in hook.env or namespace_prefix in /etc/ood/config/clusters.d/k8s.yml"
    ));

    f.dashboard = Some(dashboard_cluster("prod-", ""));
    assert!(only_failure(&f).detail.contains("K8S_USERNAME_PREFIX"));
}

#[test]
fn dashboard_tilde_config_file_fails() {
    let mut f = healthy();
    let mut d = dashboard_cluster("", "");
    d.clusters[0].config_file = Some("~/.kube/config".into());
    f.dashboard = Some(d);
    assert!(only_failure(&f).detail.contains("does not expand '~'"));
}

/// ood_core evaluates no ERB in clusters.d and runs kubectl through
/// `sh -c`: `$HOME` works per user, ERB breaks every kubectl call.
#[test]
fn dashboard_erb_config_file_fails_and_home_works() {
    let mut f = healthy();
    let mut d = dashboard_cluster("", "");
    d.clusters[0].config_file = Some("<%= Dir.home %>/.kube/config".into());
    f.dashboard = Some(d.clone());
    let c = only_failure(&f);
    assert!(
        c.detail.contains("ERB")
            && c.fix
                .as_deref()
                .is_some_and(|x| x.contains("$HOME/.kube/NAME")),
        "{c:?}"
    );
    for home in ["$HOME/.kube/config", "${HOME}/.kube/config"] {
        d.clusters[0].config_file = Some(home.into());
        f.dashboard = Some(d.clone());
        assert!(failures(&f).is_empty(), "{home}");
    }
}

/// ERB in any clusters.d file (a Slurm cluster's `login.host`) breaks no
/// login, but the dashboard does not evaluate it either: a warning.
#[test]
fn dashboard_erb_elsewhere_is_a_warning() {
    let mut f = healthy();
    let mut d = dashboard_cluster("", "");
    d.erb = vec![PathBuf::from("/etc/ood/config/clusters.d/owens.yml")];
    f.dashboard = Some(d);
    assert!(failures(&f).is_empty());
    let warned: Vec<_> = all(&f)
        .into_iter()
        .filter(|c| c.status == Status::Warn && c.detail.contains("holds ERB"))
        .collect();
    assert!(
        warned.len() == 1
            && warned[0].detail.contains("owens.yml: holds ERB")
            && warned[0]
                .fix
                .as_deref()
                .is_some_and(|x| x.contains("$HOME/.kube/NAME")),
        "{warned:?}"
    );
}

#[test]
fn unsafe_files_fail() {
    let mut f = healthy();
    f.hook_env.files[0].meta = Ok(FileMeta {
        uid: 0,
        mode: 0o100644,
        symlink: false,
        regular: true,
    });
    let c = only_failure(&f);
    assert!(
        c.detail
            .contains("holds a secret but is readable by others")
    );
    assert_eq!(c.fix.as_deref(), Some("chmod 600 /etc/ood/config/hook.env"));

    f.hook_env.files[0].meta = Ok(FileMeta {
        uid: 1000,
        mode: 0o100600,
        symlink: false,
        regular: true,
    });
    assert!(only_failure(&f).detail.contains("owned by uid 1000"));

    f.hook_env.files[0].meta = Ok(FileMeta {
        uid: 0,
        mode: 0o100620,
        symlink: false,
        regular: true,
    });
    assert!(
        only_failure(&f)
            .detail
            .contains("writable by group or others")
    );
}

#[test]
fn renewal_is_reported() {
    let mut f = healthy();
    f.timer = Timer::NotInstalled;
    let checks = all(&f);
    let c = checks.iter().find(|c| c.check == "token renewal").unwrap();
    assert_eq!(c.status, Status::Warn);
    // Renew at the latest one timer period before expiry.
    assert!(c.detail.contains(&rfc3339(NOW + 34 * 3600)), "{c:?}");
    assert_eq!(
        c.fix.as_deref(),
        Some("systemctl enable --now ood-k8s-bootstrap-root-token.timer")
    );

    let mut f = healthy();
    if let Ok(c) = &mut f.cluster {
        c.self_renew = Some(Access {
            verb: "create",
            group: "",
            resource: "serviceaccounts/token",
            namespace: "ondemand".into(),
            name: Some("ondemand".into()),
            allowed: Ok(false),
        });
    }
    let checks = all(&f);
    assert!(checks.iter().any(|c| c.status == Status::Warn
        && c.fix.as_deref().is_some_and(|x| x.contains("--self-renew"))));
}

#[test]
fn token_exchange_grant_must_be_offered() {
    let mut f = healthy();
    let set = |f: &mut Facts, grants: Option<Vec<&str>>| {
        if let Some(i) = &mut f.issuer {
            i.exchange_audience = Some("kubernetes".into());
            if let Ok(d) = &mut i.discovery {
                d.grant_types = grants.map(|g| g.into_iter().map(str::to_owned).collect());
            }
        }
    };
    set(
        &mut f,
        Some(vec![
            "authorization_code",
            crate::credentials::exchange::GRANT_TYPE,
        ]),
    );
    assert!(failures(&f).is_empty());
    set(&mut f, Some(vec!["authorization_code"]));
    let c = only_failure(&f);
    assert!(c.fix.unwrap().contains("unset K8S_TOKEN_EXCHANGE_AUDIENCE"));
    set(&mut f, None);
    assert!(failures(&f).is_empty());

    let mut u = user_facts("alice");
    u.exchange = Some(Err((
        "the IdP https://idp.example refused to exchange the token for audience kubernetes: invalid_request".into(),
        "check the IdP's token exchange settings for the portal client".into(),
    )));
    f.user = Some(u);
    let c = only_failure(&f);
    assert!(c.detail.contains("refused to exchange the token"), "{c:?}");
    assert!(c.fix.unwrap().contains("token exchange settings"));
}

#[test]
fn pruning_needs_list_and_delete_on_every_prunable_kind() {
    let plain = needed_access(Some(&settings("")), "alice");
    assert_eq!(plain.len(), 9);
    assert!(
        plain
            .iter()
            .all(|a| ["get", "create", "patch"].contains(&a.verb))
    );
    let pruning = needed_access(Some(&settings("PRUNE=true\n")), "alice");
    let deletes: Vec<String> = pruning
        .iter()
        .filter(|a| a.verb == "delete")
        .map(Access::describe)
        .collect();
    assert_eq!(
        deletes.len(),
        crate::cluster::kinds::Kind::prunable_kinds().count()
    );
    assert!(
        deletes.contains(
            &"delete rolebindings.rbac.authorization.k8s.io in namespace alice".to_owned()
        )
    );
    assert!(!deletes.iter().any(|d| d.contains("persistentvolumeclaims")));
}

#[test]
fn login_storms_need_the_ondemand_flow_schema_to_classify_roots_requests() {
    let storms = |flow: Result<FlowFact, String>| {
        let mut f = healthy();
        if let Ok(c) = &mut f.cluster {
            c.flow = flow;
        }
        all(&f)
            .into_iter()
            .find(|c| c.check == "login storms")
            .unwrap()
    };
    let fact = |status, uid: Option<&str>, by: Option<&str>| {
        Ok(FlowFact {
            status,
            uid: uid.map(str::to_owned),
            classified_by: by.map(str::to_owned),
        })
    };
    assert_eq!(storms(fact(200, Some("a"), Some("a"))).status, Status::Ok);
    let missing = storms(fact(404, None, Some("sa-schema")));
    assert_eq!(missing.status, Status::Warn);
    assert!(
        missing.detail.contains("there is no FlowSchema ondemand"),
        "{missing:?}"
    );
    assert!(missing.fix.unwrap().contains("ood-k8s-bootstrap install"));
    let shadowed = storms(fact(200, Some("a"), Some("b")));
    assert_eq!(shadowed.status, Status::Warn);
    assert!(
        shadowed.detail.contains("another one (uid b)"),
        "{shadowed:?}"
    );
    assert!(shadowed.fix.unwrap().contains("matchingPrecedence"));
    let off = storms(fact(200, Some("a"), None));
    assert!(
        off.detail.contains("Priority and Fairness is off"),
        "{off:?}"
    );
    assert_eq!(storms(Err("timeout".into())).status, Status::Warn);
}
