//! Root's kubeconfig: which file, which user entry, which token — found by
//! kubectl's rules — and the one edit `root-token` makes to it.
//!
//! `doctor` reads it to say whose token root holds and when it expires;
//! `root-token` replaces the token. The edit is surgical: exactly the old
//! token's bytes are replaced by the new token's, then the result is parsed
//! again and must equal the old file with only that token changed, so
//! comments, order and every other entry stay byte for byte.

use std::path::{Path, PathBuf};

use serde_json::{Map, Value};
use thiserror::Error;

use crate::credentials::kubeconfig::merge;
use crate::secret::Secret;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum RootKubeconfigError {
    #[error(
        "no kubeconfig for root ({why}); give root one with the ondemand ServiceAccount's token (README: Installing), or set KUBECONFIG"
    )]
    NoFile { why: String },
    #[error("cannot read {path}: {why}")]
    Read { path: PathBuf, why: String },
    #[error("{path}: {why}")]
    Parse { path: PathBuf, why: String },
    #[error("{files}: no current-context is set; set one with `kubectl config use-context NAME`")]
    NoCurrentContext { files: String },
    #[error("{files}: the current context {context:?} is not defined")]
    NoContext { files: String, context: String },
    #[error("{files}: user {user:?} (of context {context:?}) is not defined")]
    NoUser {
        files: String,
        context: String,
        user: String,
    },
    #[error(
        "{path}: the token of user {user:?} is not written verbatim on one line (found {count} copies); \
         root-token only replaces a plain `token:` value — rewrite it with `kubectl config set-credentials {user} --token=...`"
    )]
    NotVerbatim {
        path: PathBuf,
        user: String,
        count: usize,
    },
    #[error(
        "{path}: replacing the token would change more than user {user:?}'s token; left unchanged"
    )]
    EditMismatch { path: PathBuf, user: String },
    #[error("the new token has characters a JWT never has; nothing written")]
    BadNewToken,
}

/// One parsed kubeconfig file and its path.
pub type File = (PathBuf, Map<String, Value>);

/// Where the user entry's credentials are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Credential {
    /// `token:` in the entry.
    Token(Secret),
    /// `tokenFile:`: the token is in that file.
    TokenFile(PathBuf),
    /// No bearer token (client certificate, exec plugin, ...): named.
    Other(&'static str),
}

/// The current context's user entry, and the file that defines it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    pub file: PathBuf,
    pub context: String,
    pub user: String,
    pub credential: Credential,
}

/// The files kubectl would read: `explicit`, else every path in
/// `KUBECONFIG`, else `~/.kube/config` (home from `HOME`, then passwd).
pub fn candidate_files(explicit: Option<&Path>) -> Vec<PathBuf> {
    match explicit {
        Some(p) => vec![p.to_owned()],
        None => crate::cluster::apply::default_kubeconfig_files(),
    }
}

/// Reads and parses the candidate files; missing files in a `KUBECONFIG`
/// list are skipped as kubectl does, an explicit missing file is an error.
pub fn load(paths: &[PathBuf], explicit: bool) -> Result<Vec<File>, RootKubeconfigError> {
    let mut out = Vec::new();
    for path in paths {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !explicit => continue,
            Err(e) => {
                return Err(RootKubeconfigError::Read {
                    path: path.clone(),
                    why: e.to_string(),
                });
            }
        };
        let tree = merge::parse(&text).map_err(|e| RootKubeconfigError::Parse {
            path: path.clone(),
            why: e.to_string(),
        })?;
        out.push((path.clone(), tree));
    }
    if out.is_empty() {
        let names: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();
        return Err(RootKubeconfigError::NoFile {
            why: format!("{} does not exist", names.join(", ")),
        });
    }
    Ok(out)
}

/// The named entry's body (`context`, `user`, ...) in a list of entries.
fn entry<'a>(
    tree: &'a Map<String, Value>,
    list: &str,
    name: &str,
    body: &str,
) -> Option<&'a Value> {
    tree.get(list)?
        .as_array()?
        .iter()
        .find(|e| e.get("name").and_then(Value::as_str) == Some(name))
        .map(|e| e.get(body).unwrap_or(&Value::Null))
}

/// The context (`context`, else the current one), the file defining it
/// and the user it names, by kubectl's merge rules (the first file to set
/// a value wins).
pub fn current_user(
    files: &[File],
    context: Option<&str>,
) -> Result<(PathBuf, String, String), RootKubeconfigError> {
    let names = file_names(files);
    let context = match context {
        Some(c) => c.to_owned(),
        None => files
            .iter()
            .find_map(|(_, t)| {
                t.get("current-context")
                    .and_then(Value::as_str)
                    .filter(|s| !s.is_empty())
            })
            .ok_or_else(|| RootKubeconfigError::NoCurrentContext {
                files: names.clone(),
            })?
            .to_owned(),
    };
    let (file, ctx) = files
        .iter()
        .find_map(|(p, t)| entry(t, "contexts", &context, "context").map(|c| (p, c)))
        .ok_or_else(|| RootKubeconfigError::NoContext {
            files: names.clone(),
            context: context.clone(),
        })?;
    let user = ctx
        .get("user")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    Ok((file.clone(), context, user))
}

fn file_names(files: &[File]) -> String {
    files
        .iter()
        .map(|(p, _)| p.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Follows kubectl's merge rules from the context (`context`, else the
/// current one) to its user entry and the credentials in it.
pub fn resolve(files: &[File], context: Option<&str>) -> Result<Resolved, RootKubeconfigError> {
    let (_, context, user) = current_user(files, context)?;
    let (file, body) = files
        .iter()
        .find_map(|(p, t)| entry(t, "users", &user, "user").map(|b| (p, b)))
        .ok_or_else(|| RootKubeconfigError::NoUser {
            files: file_names(files),
            context: context.clone(),
            user: user.clone(),
        })?;
    let text = |k: &str| {
        body.get(k)
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
    };
    let credential = if let Some(t) = text("token") {
        Credential::Token(Secret::new(t))
    } else if let Some(f) = text("tokenFile") {
        Credential::TokenFile(PathBuf::from(f))
    } else if body.get("exec").is_some_and(|v| !v.is_null()) {
        Credential::Other("an exec credential plugin")
    } else if text("client-certificate")
        .or(text("client-certificate-data"))
        .is_some()
    {
        Credential::Other("a client certificate")
    } else if body.get("auth-provider").is_some_and(|v| !v.is_null()) {
        Credential::Other("an auth-provider")
    } else {
        Credential::Other("no credentials at all")
    };
    Ok(Resolved {
        file: file.clone(),
        context,
        user,
        credential,
    })
}

/// `text` with user `user`'s token `old` replaced by `new`, every other
/// byte kept; refused unless the result means exactly that.
pub fn replace_token(
    path: &Path,
    text: &str,
    user: &str,
    old: &str,
    new: &str,
) -> Result<String, RootKubeconfigError> {
    if new.is_empty()
        || !new
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
    {
        return Err(RootKubeconfigError::BadNewToken);
    }
    let count = if old.is_empty() {
        0
    } else {
        text.matches(old).count()
    };
    if count != 1 {
        return Err(RootKubeconfigError::NotVerbatim {
            path: path.to_owned(),
            user: user.to_owned(),
            count,
        });
    }
    let edited = text.replacen(old, new, 1);
    let parse = |t: &str| {
        merge::parse(t).map_err(|e| RootKubeconfigError::Parse {
            path: path.to_owned(),
            why: e.to_string(),
        })
    };
    let mut expected = parse(text)?;
    let set = expected
        .get_mut("users")
        .and_then(Value::as_array_mut)
        .and_then(|users| {
            users
                .iter_mut()
                .find(|e| e.get("name").and_then(Value::as_str) == Some(user))
        })
        .and_then(|e| e.get_mut("user"))
        .and_then(Value::as_object_mut)
        .map(|body| body.insert("token".into(), Value::String(new.to_owned())));
    if set.is_none() || parse(&edited)? != expected {
        return Err(RootKubeconfigError::EditMismatch {
            path: path.to_owned(),
            user: user.to_owned(),
        });
    }
    Ok(edited)
}

/// Whose a ServiceAccount token is: (namespace, name), from the
/// `kubernetes.io` claim of bound tokens or the `sub` of any SA token.
pub fn service_account(claims: &Map<String, Value>) -> Option<(String, String)> {
    let k = claims.get("kubernetes.io");
    let ns = k.and_then(|k| k.get("namespace")).and_then(Value::as_str);
    let name = k
        .and_then(|k| k.pointer("/serviceaccount/name"))
        .and_then(Value::as_str);
    if let (Some(ns), Some(name)) = (ns, name) {
        return Some((ns.to_owned(), name.to_owned()));
    }
    let sub = claims.get("sub").and_then(Value::as_str)?;
    let rest = sub.strip_prefix("system:serviceaccount:")?;
    let (ns, name) = rest.split_once(':')?;
    Some((ns.to_owned(), name.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const CONFIG: &str = "\
# root's kubeconfig, with a comment that must survive
apiVersion: v1
kind: Config
clusters:
- name: kubernetes
  cluster: {server: 'https://k8s.example:6443', certificate-authority: /etc/k8s/ca.crt}
contexts:
- name: ondemand@kubernetes
  context:
    cluster: kubernetes
    user: ondemand@kubernetes
current-context: ondemand@kubernetes
users:
- name: other
  user:
    token: other.token.value
- name: ondemand@kubernetes
  user:
    token: \"old.jwt.token\"
";

    fn tree(text: &str) -> Map<String, Value> {
        merge::parse(text).unwrap()
    }

    #[test]
    fn resolves_the_current_users_token() {
        let r = resolve(&[(PathBuf::from("/root/.kube/config"), tree(CONFIG))], None).unwrap();
        assert_eq!(r.user, "ondemand@kubernetes");
        assert_eq!(
            r.credential,
            Credential::Token(Secret::new("old.jwt.token"))
        );
    }

    #[test]
    fn first_file_wins_like_kubectl() {
        let a = tree("current-context: c\ncontexts:\n- name: c\n  context: {user: u}\n");
        let b = tree("current-context: other\nusers:\n- name: u\n  user: {tokenFile: /run/t}\n");
        let r = resolve(&[(PathBuf::from("/a"), a), (PathBuf::from("/b"), b)], None).unwrap();
        assert_eq!(r.file, PathBuf::from("/b"));
        assert_eq!(r.context, "c");
        assert_eq!(r.credential, Credential::TokenFile(PathBuf::from("/run/t")));
    }

    #[test]
    fn missing_pieces_are_named() {
        let e = resolve(&[(PathBuf::from("/a"), tree("kind: Config\n"))], None).unwrap_err();
        assert!(matches!(e, RootKubeconfigError::NoCurrentContext { .. }));
        let e = resolve(
            &[(
                PathBuf::from("/a"),
                tree("current-context: c\ncontexts:\n- name: c\n  context: {user: u}\n"),
            )],
            None,
        )
        .unwrap_err();
        assert!(e.to_string().contains("user \"u\""), "{e}");
        let cert = tree(
            "current-context: c\ncontexts:\n- name: c\n  context: {user: u}\nusers:\n- name: u\n  user: {client-certificate: /c, client-key: /k}\n",
        );
        let r = resolve(&[(PathBuf::from("/a"), cert)], None).unwrap();
        assert_eq!(r.credential, Credential::Other("a client certificate"));
    }

    #[test]
    fn replacing_keeps_every_other_byte() {
        let p = Path::new("/root/.kube/config");
        let new = replace_token(
            p,
            CONFIG,
            "ondemand@kubernetes",
            "old.jwt.token",
            "new.jwt-token_2",
        )
        .unwrap();
        assert_eq!(new, CONFIG.replace("old.jwt.token", "new.jwt-token_2"));
        assert!(new.starts_with("# root's kubeconfig"));
    }

    #[test]
    fn replacing_refuses_ambiguity_and_mismatch() {
        let p = Path::new("/k");
        let twice = CONFIG.replace("other.token.value", "old.jwt.token");
        assert!(matches!(
            replace_token(p, &twice, "ondemand@kubernetes", "old.jwt.token", "n.n.n"),
            Err(RootKubeconfigError::NotVerbatim { count: 2, .. })
        ));
        // The old token's text is another user's token: the edit would
        // change the wrong entry.
        assert!(matches!(
            replace_token(
                p,
                CONFIG,
                "ondemand@kubernetes",
                "other.token.value",
                "n.n.n"
            ),
            Err(RootKubeconfigError::EditMismatch { .. })
        ));
        assert_eq!(
            replace_token(
                p,
                CONFIG,
                "ondemand@kubernetes",
                "old.jwt.token",
                "bad\ntoken"
            ),
            Err(RootKubeconfigError::BadNewToken)
        );
    }

    #[test]
    fn service_account_from_claims() {
        let bound = json!({"sub": "system:serviceaccount:x:y",
            "kubernetes.io": {"namespace": "ondemand", "serviceaccount": {"name": "ondemand", "uid": "u"}}});
        assert_eq!(
            service_account(bound.as_object().unwrap()),
            Some(("ondemand".into(), "ondemand".into()))
        );
        let legacy = json!({"sub": "system:serviceaccount:ns1:sa1"});
        assert_eq!(
            service_account(legacy.as_object().unwrap()),
            Some(("ns1".into(), "sa1".into()))
        );
        assert_eq!(
            service_account(json!({"sub": "alice"}).as_object().unwrap()),
            None
        );
    }
}
