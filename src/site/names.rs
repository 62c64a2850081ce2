//! Validated names: the login name OnDemand hands us and the Kubernetes names
//! derived from it.
//!
//! Every other module takes these types, never bare strings, so a name is
//! checked exactly once, here, before anything touches the cluster or a file.
//! The namespace mapping must match what the OnDemand dashboard computes
//! (ood_core >= 0.27): a different answer would make it look elsewhere.

use std::fmt;

use thiserror::Error;

/// Longest login name accepted. Linux allows 32 by default; directory
/// services allow more, but nothing sane is longer than this.
const MAX_USERNAME_LEN: usize = 128;

/// Why a username or a name derived from it was refused.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum NameError {
    #[error("the username is empty")]
    EmptyUsername,
    #[error("username {0:?} is longer than {MAX_USERNAME_LEN} characters")]
    UsernameTooLong(String),
    #[error(
        "username {name:?} cannot be a login name: {why} (allowed: letters, digits, '.', '_', '-', '@'; not starting with '-' or '.')"
    )]
    BadUsername { name: String, why: &'static str },
    #[error(
        "namespace {namespace:?} for user {user:?} is not a valid Kubernetes namespace name: {why}; \
         the OnDemand dashboard computes the same name, so it cannot be changed here (check NAMESPACE_PREFIX)"
    )]
    BadNamespace {
        user: String,
        namespace: String,
        why: &'static str,
    },
    #[error("{key}={value:?} is not a valid Kubernetes object name: {why}")]
    BadObjectName {
        key: &'static str,
        value: String,
        why: &'static str,
    },
}

/// A login name as OnDemand passes it with `--user`: something that could be
/// a real account. Refuses anything that could be a path, an option, or a
/// shell/YAML metacharacter.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Username(String);

impl Username {
    pub fn parse(raw: &str) -> Result<Self, NameError> {
        if raw.is_empty() {
            return Err(NameError::EmptyUsername);
        }
        if raw.len() > MAX_USERNAME_LEN {
            return Err(NameError::UsernameTooLong(truncate(raw, 40)));
        }
        let bad = |why| NameError::BadUsername {
            name: truncate(raw, 40),
            why,
        };
        let first = raw.chars().next().unwrap_or('-');
        if first == '-' {
            return Err(bad("it starts with '-'"));
        }
        if first == '.' {
            return Err(bad("it starts with '.'"));
        }
        if let Some(c) = raw.chars().find(|c| !is_login_char(*c)) {
            return Err(bad(match c {
                '/' => "it contains '/'",
                c if c.is_whitespace() => "it contains whitespace",
                c if c.is_control() => "it contains a control character",
                _ => "it contains a character not allowed in login names",
            }));
        }
        Ok(Self(raw.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

fn is_login_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '@')
}

impl fmt::Display for Username {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A user's namespace: `NAMESPACE_PREFIX` + username with `.` and `@`
/// replaced by `-`, and a valid DNS-1123 label.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Namespace(String);

impl Namespace {
    /// Computes the namespace exactly as the OnDemand dashboard does, or
    /// refuses: a silently different name would be a namespace the dashboard
    /// never looks in.
    pub fn for_user(prefix: &str, user: &Username) -> Result<Self, NameError> {
        let name: String = format!("{prefix}{}", user.as_str())
            .chars()
            .map(|c| if c == '.' || c == '@' { '-' } else { c })
            .collect();
        match dns1123_label_problem(&name) {
            None => Ok(Self(name)),
            Some(why) => Err(NameError::BadNamespace {
                user: user.to_string(),
                namespace: name,
                why,
            }),
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Namespace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Why `name` is not a DNS-1123 label (≤ 63 chars of `[a-z0-9-]`,
/// alphanumeric at both ends), or `None` if it is one.
pub fn dns1123_label_problem(name: &str) -> Option<&'static str> {
    if name.is_empty() {
        return Some("it is empty");
    }
    if name.len() > 63 {
        return Some("it is longer than 63 characters");
    }
    if name.chars().any(|c| c.is_ascii_uppercase()) {
        return Some("it contains upper-case letters");
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
    {
        return Some("it may contain only a-z, 0-9 and '-'");
    }
    if name.starts_with('-') || name.ends_with('-') {
        return Some("it must start and end with a letter or digit");
    }
    None
}

/// Why `name` is not a DNS-1123 subdomain (what Secrets, ServiceAccounts and
/// ClusterRoles are named with), or `None` if it is one.
pub fn dns1123_subdomain_problem(name: &str) -> Option<&'static str> {
    if name.is_empty() {
        return Some("it is empty");
    }
    if name.len() > 253 {
        return Some("it is longer than 253 characters");
    }
    for part in name.split('.') {
        if let Some(why) = dns1123_label_problem(part) {
            return Some(if part.is_empty() {
                "it has an empty part between dots"
            } else {
                why
            });
        }
    }
    None
}

/// A Kubernetes object name checked as a DNS-1123 subdomain; `key` names the
/// hook.env key it came from, for the error.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ObjectName(String);

impl ObjectName {
    pub fn parse(key: &'static str, value: &str) -> Result<Self, NameError> {
        match dns1123_subdomain_problem(value) {
            None => Ok(Self(value.to_owned())),
            Some(why) => Err(NameError::BadObjectName {
                key,
                value: truncate(value, 80),
                why,
            }),
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ObjectName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Shortens untrusted text for an error message without splitting a char.
pub fn truncate(s: &str, max_chars: usize) -> String {
    if s.chars().count() <= max_chars {
        s.to_owned()
    } else {
        let mut out: String = s.chars().take(max_chars).collect();
        out.push('…');
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(s: &str) -> Username {
        Username::parse(s).expect("valid username")
    }

    #[test]
    fn namespace_replaces_dots_and_at_like_the_dashboard() {
        assert_eq!(
            Namespace::for_user("", &user("first.last"))
                .unwrap()
                .as_str(),
            "first-last"
        );
        assert_eq!(
            Namespace::for_user("user-", &user("alice@example.org"))
                .unwrap()
                .as_str(),
            "user-alice-example-org"
        );
        assert_eq!(
            Namespace::for_user("ood-", &user("bob")).unwrap().as_str(),
            "ood-bob"
        );
    }

    #[test]
    fn namespace_refuses_instead_of_renaming() {
        for (prefix, name) in [("", "Alice"), ("", "a_b"), ("", "bob."), ("User-", "x")] {
            let err = Namespace::for_user(prefix, &user(name)).unwrap_err();
            assert!(
                matches!(err, NameError::BadNamespace { .. }),
                "{prefix}{name}: {err}"
            );
        }
        let long = "a".repeat(64);
        assert!(Namespace::for_user("", &user(&long)).is_err());
        assert!(Namespace::for_user("", &user(&"a".repeat(63))).is_ok());
    }

    #[test]
    fn hostile_usernames_are_refused() {
        for bad in [
            "", "-rf", ".hidden", "../etc", "a/b", "a b", "a\tb", "a\nb", "a:b", "a$b", "ä",
            "a\"b", "a;b",
        ] {
            assert!(Username::parse(bad).is_err(), "{bad:?} accepted");
        }
        assert!(Username::parse(&"a".repeat(MAX_USERNAME_LEN + 1)).is_err());
        for good in [
            "alice",
            "first.last",
            "a_b",
            "alice@example.org",
            "u123",
            "_svc",
        ] {
            assert!(Username::parse(good).is_ok(), "{good:?} refused");
        }
    }

    #[test]
    fn error_names_the_user_and_namespace() {
        let msg = Namespace::for_user("", &user("Alice"))
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains("\"Alice\"") && msg.contains("upper-case"),
            "{msg}"
        );
    }

    #[test]
    fn subdomain_rules() {
        assert!(dns1123_subdomain_problem("private-docker-registry").is_none());
        assert!(dns1123_subdomain_problem("a.b-c").is_none());
        assert!(dns1123_subdomain_problem("a..b").is_some());
        assert!(dns1123_subdomain_problem("Registry").is_some());
        assert!(
            ObjectName::parse("IMAGE_PULL_SECRET", "x_y")
                .unwrap_err()
                .to_string()
                .contains("IMAGE_PULL_SECRET")
        );
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        /// apimachinery's IsDNS1123Label, restated.
        fn is_label(s: &str) -> bool {
            let b = s.as_bytes();
            let alnum = |c: &u8| c.is_ascii_lowercase() || c.is_ascii_digit();
            (1..=63).contains(&b.len())
                && b.iter().all(|c| alnum(c) || *c == b'-')
                && b.first().is_some_and(alnum)
                && b.last().is_some_and(alnum)
        }

        proptest! {
            /// A username maps to the dashboard's namespace when that is a
            /// DNS-1123 label, and is refused otherwise; never a panic, never
            /// a renamed namespace.
            #[test]
            fn username_to_namespace_is_a_label_or_an_error(
                prefix in "[a-z0-9-]{0,12}|\\PC{0,5}",
                raw in "[a-zA-Z0-9._@-]{1,70}|\\PC{0,140}",
            ) {
                let Ok(user) = Username::parse(&raw) else {
                    prop_assert!(raw.is_empty() || raw.len() > 128 || raw.starts_with(['-', '.'])
                        || raw.chars().any(|c| !is_login_char(c)));
                    return Ok(());
                };
                let expected = format!("{prefix}{raw}").replace(['.', '@'], "-");
                match Namespace::for_user(&prefix, &user) {
                    Ok(ns) => {
                        prop_assert_eq!(ns.as_str(), expected.as_str());
                        prop_assert!(is_label(ns.as_str()));
                    }
                    Err(e) => {
                        prop_assert!(!is_label(&expected), "{} refused: {}", expected, e);
                        prop_assert!(!e.to_string().contains('\n'));
                    }
                }
            }

            #[test]
            fn label_check_is_apimachinerys(s in "[a-z0-9-]{0,70}|\\PC{0,10}") {
                prop_assert_eq!(dns1123_label_problem(&s).is_none(), is_label(&s));
            }

            #[test]
            fn subdomains_are_dot_separated_labels(s in "[a-z0-9.-]{0,80}") {
                let ok = dns1123_subdomain_problem(&s).is_none();
                prop_assert_eq!(ok, !s.is_empty() && s.len() <= 253 && s.split('.').all(is_label));
            }

            #[test]
            fn messages_are_short_single_lines(s in "(?s).{0,600}", max in 0usize..100) {
                let t = truncate(&s, max);
                prop_assert!(t.chars().count() <= max + 1);
                prop_assert!(s.starts_with(t.trim_end_matches('…')));
                let l = crate::oneline::clean(&s, max);
                prop_assert!(!l.chars().any(|c| c.is_control() || (c.is_whitespace() && c != ' ')));
                prop_assert!(l.chars().count() <= max + 1);
            }
        }
    }
}
