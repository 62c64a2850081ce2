//! The credential broker (`K8S_CREDENTIALS=broker`): tokens that last the
//! whole OnDemand session, with no token or client secret in users' homes.
//!
//! At login the hook (root) stores the user's token set — access, refresh
//! and ID token, expiry, issuer, the client that owns the refresh token —
//! root-only in `BROKER_STATE_DIR/<uid>.json` ([`store`], [`tokenset`]),
//! and writes a kubeconfig user entry that runs
//! `ood-k8s-bootstrap broker-credential --socket BROKER_SOCKET` as a kubectl
//! exec plugin ([`plugin`]). `ood-k8s-bootstrap broker` ([`service`]), a
//! root service (systemd socket activation or its own socket,
//! [`listen`]), answers the plugin with the caller's own token, identified
//! by the kernel (`SO_PEERCRED` uid), refreshing it first at the IdP with
//! hook.env's `CLIENT_ID`/`CLIENT_SECRET` when it is about to expire
//! ([`idp`]); rotated refresh tokens are stored before the answer. Rates and
//! sizes are bounded ([`limits`]), and so are log lines about refusals (one
//! per uid and minute, with a count).
//!
//! A set is one login's session, not a uid's ([`session`]): it names the
//! login and uid it was stored for, and is served only while passwd still
//! maps that uid to that login; otherwise it is deleted. It is deleted too
//! when the IdP refuses its refresh, when its refresh token has expired,
//! after `BROKER_MAX_SESSION_HOURS` since the login, and when it was stored
//! by an earlier version (format 1, without the login time): in each case
//! the user is told to log in to OnDemand again.
//!
//! # Protocol, version 1
//!
//! One connection, one exchange; the broker closes the connection after it.
//!
//! - request: one line of JSON, at most 4096 bytes with its newline:
//!   `{"v":1,"cluster":"open-ondemand"}` (`cluster` optional, only logged;
//!   any other field is refused — the caller's identity comes from the
//!   socket, never from the request);
//! - answer, one line: `{"v":1,"credential":EXECCREDENTIAL}` where
//!   EXECCREDENTIAL is a `client.authentication.k8s.io/v1` ExecCredential
//!   with `status.token` and `status.expirationTimestamp`, or
//!   `{"v":1,"error":{"code":CODE,"message":TEXT}}`, TEXT for the user, CODE
//!   one of `no_credentials`, `session_ended`, `idp_unavailable`,
//!   `broker_misconfigured`, `rate_limited`, `busy`, `too_large`,
//!   `bad_request`, `unsupported_version`, `timeout`, `internal`.
//!
//! A request with another `v` is answered `unsupported_version`; a new
//! version gets a new number, and both ends of one installation come from
//! the same package.

pub mod idp;
pub mod limits;
pub mod listen;
pub mod plugin;
pub mod protocol;
pub mod service;
pub mod session;
pub mod store;
pub mod tokenset;
