//! Pure: whether a stored token set is still served to the uid asking, or
//! deleted. A set is the session of one login, not of a bare uid: it is
//! served only while the caller's uid still maps to that login in passwd
//! (and the login to that uid), so a site that reuses a departed user's
//! uid, or gives it a second name, does not hand the old owner's tokens to
//! the new one. Sets also end: after `BROKER_MAX_SESSION_HOURS` since the
//! login that stored them, and when their refresh token has expired. (A
//! refresh the IdP refuses ends a set too; the service deletes it then.)
//! The passwd lookup itself is the caller's I/O ([`Lookup`]).

use std::fmt;

use super::tokenset::TokenSet;

/// What passwd (NSS) says about the caller's uid and the set's login.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    /// The name of the caller's uid (`getpwuid`), and the uid of the
    /// set's login (`getpwnam`); `None` where there is no such entry.
    Found {
        uid_name: Option<String>,
        login_uid: Option<u32>,
    },
    /// NSS failed (e.g. the directory is unreachable): nothing is decided.
    Failed(String),
}

/// Why a set is deleted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum End {
    /// The uid no longer maps to the login that stored the set.
    OtherOwner {
        login: String,
        uid: u32,
        now: Option<String>,
    },
    /// Older than `BROKER_MAX_SESSION_HOURS`.
    MaxSession { hours: u32 },
    /// The refresh token has expired.
    RefreshExpired,
    /// The IdP refused the refresh.
    Refused(String),
    /// Stored by an earlier version (format `0`), which recorded no login
    /// time.
    Outdated(u32),
    /// A refresh gave tokens larger than a set may be.
    TooLarge(usize),
}

impl End {
    /// For the user (the broker's answer; the plugin prints it).
    pub fn message(&self) -> String {
        let why = match self {
            Self::OtherOwner { .. } => {
                "the stored tokens belong to another login with your uid; they were deleted"
                    .to_owned()
            }
            Self::MaxSession { hours } => format!("it is over {hours} h since your login"),
            Self::RefreshExpired => "your refresh token has expired".to_owned(),
            Self::Refused(why) => format!("the IdP refused the refresh: {why}"),
            Self::Outdated(_) => "your tokens were stored by an earlier version".to_owned(),
            Self::TooLarge(n) => format!("the IdP's new tokens are too large ({n} bytes)"),
        };
        format!("your OnDemand session has ended ({why}): log in to OnDemand again")
    }
}

/// For the log (the administrator).
impl fmt::Display for End {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::OtherOwner { login, uid, now } => write!(
                f,
                "stored for login {login:?} but uid {uid} is now {} in passwd",
                now.as_deref()
                    .map_or_else(|| "no one".to_owned(), |n| format!("{n:?}"))
            ),
            Self::MaxSession { hours } => {
                write!(f, "older than BROKER_MAX_SESSION_HOURS={hours}")
            }
            Self::RefreshExpired => f.write_str("its refresh token has expired"),
            Self::Refused(why) => write!(f, "the IdP refused the refresh ({why})"),
            Self::Outdated(v) => write!(f, "stored by an earlier version (format {v})"),
            Self::TooLarge(n) => write!(f, "a refresh gave a set of {n} bytes, over the limit"),
        }
    }
}

/// What to do with a stored set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Serve,
    Delete(End),
    /// Passwd could not be read: refuse now, keep the set.
    Unsure(String),
}

/// Decides for the set `set` stored under the caller's `uid`, at Unix time
/// `now`, with sessions of at most `max_hours`.
pub fn decide(set: &TokenSet, uid: u32, lookup: &Lookup, now: u64, max_hours: u32) -> Verdict {
    let (uid_name, login_uid) = match lookup {
        Lookup::Failed(why) => return Verdict::Unsure(why.clone()),
        Lookup::Found {
            uid_name,
            login_uid,
        } => (uid_name, login_uid),
    };
    if set.uid != uid || uid_name.as_deref() != Some(set.user.as_str()) || *login_uid != Some(uid) {
        return Verdict::Delete(End::OtherOwner {
            login: set.user.clone(),
            uid,
            now: uid_name.clone(),
        });
    }
    let max = u64::from(max_hours).saturating_mul(3600);
    if now >= set.stored_at.saturating_add(max) || set.stored_at > now.saturating_add(300) {
        return Verdict::Delete(End::MaxSession { hours: max_hours });
    }
    if set.refresh_expiry.is_some_and(|e| e <= now) {
        return Verdict::Delete(End::RefreshExpired);
    }
    Verdict::Serve
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::credentials::broker::tokenset::{Bearer, Obtained, RefreshWith, Source};
    use crate::credentials::tokens::fake_jwt;

    const H: u64 = 3600;

    fn set(stored_at: u64, refresh_expiry: Option<u64>) -> TokenSet {
        let access = fake_jwt(&serde_json::json!({"exp": stored_at.saturating_add(300)}));
        let tokens = Obtained {
            access_token: &access,
            id_token: None,
            refresh_token: Some("r"),
            bearer: Bearer::AccessToken,
            source: Source::Login,
        };
        let with = RefreshWith {
            issuer: "https://idp".into(),
            token_endpoint: None,
            client_id: "c".into(),
            audience: None,
            scope: None,
        };
        let mut s = TokenSet::new(5000, "alice", &tokens, with, stored_at).unwrap();
        s.refresh_expiry = refresh_expiry;
        s
    }

    fn found(name: Option<&str>, uid: Option<u32>) -> Lookup {
        Lookup::Found {
            uid_name: name.map(str::to_owned),
            login_uid: uid,
        }
    }

    #[test]
    fn served_to_the_login_that_stored_it() {
        let s = set(1000, None);
        let alice = found(Some("alice"), Some(5000));
        assert_eq!(decide(&s, 5000, &alice, 1000 + 23 * H, 24), Verdict::Serve);
    }

    #[test]
    fn a_reused_or_shared_uid_deletes_it() {
        let s = set(1000, None);
        let other = |l: &Lookup| {
            matches!(
                decide(&s, 5000, l, 2000, 24),
                Verdict::Delete(End::OtherOwner { .. })
            )
        };
        // alice deleted, bob given her uid
        assert!(other(&found(Some("bob"), None)));
        // bob listed first for alice's uid
        assert!(other(&found(Some("bob"), Some(5000))));
        // alice now has another uid; her old one is unassigned
        assert!(other(&found(None, Some(6000))));
        assert!(other(&found(None, None)));
        // a set filed under another uid
        assert!(matches!(
            decide(&s, 5001, &found(Some("alice"), Some(5001)), 2000, 24),
            Verdict::Delete(End::OtherOwner { .. })
        ));
        let Verdict::Delete(e) = decide(&s, 5000, &found(Some("bob"), None), 2000, 24) else {
            panic!()
        };
        assert!(e.to_string().contains("\"alice\"") && e.to_string().contains("\"bob\""));
        assert!(e.message().contains("log in to OnDemand again"));
    }

    #[test]
    fn sessions_end() {
        let alice = found(Some("alice"), Some(5000));
        let s = set(1000, Some(1000 + 2 * H));
        assert_eq!(
            decide(&s, 5000, &alice, 1000 + 24 * H, 24),
            Verdict::Delete(End::MaxSession { hours: 24 })
        );
        assert_eq!(
            decide(&s, 5000, &alice, 1000 + H, 1),
            Verdict::Delete(End::MaxSession { hours: 1 })
        );
        assert_eq!(
            decide(&s, 5000, &alice, 1000 + 2 * H, 24),
            Verdict::Delete(End::RefreshExpired)
        );
        assert_eq!(
            decide(&s, 5000, &alice, 1000 + 2 * H - 1, 24),
            Verdict::Serve
        );
        // a login time far in the future is not trusted
        assert!(matches!(
            decide(&set(1000 + H, None), 5000, &alice, 1000, 24),
            Verdict::Delete(End::MaxSession { .. })
        ));
        // huge numbers saturate
        assert_eq!(
            decide(
                &set(u64::MAX - 10, None),
                5000,
                &alice,
                u64::MAX - 5,
                u32::MAX
            ),
            Verdict::Serve
        );
    }

    #[test]
    fn a_failed_lookup_decides_nothing() {
        let v = decide(
            &set(1000, None),
            5000,
            &Lookup::Failed("sssd".into()),
            1000,
            24,
        );
        assert_eq!(v, Verdict::Unsure("sssd".into()));
    }
}
