//! Pure: the existing kubeconfig text + the hook's entries -> the new text.
//!
//! Everything the hook does not own survives in meaning: other clusters,
//! contexts, users, preferences, extensions and unknown fields (parsed into
//! a generic tree, never into a typed struct that would drop fields).
//! Comments and key order do not survive (kubectl drops them too); output
//! is deterministic: maps are emitted with sorted keys, lists keep their
//! order, new entries are appended.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use thiserror::Error;

/// The user entry the hook owns: `users[name].user` is replaced wholesale.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UserEntry {
    pub name: String,
    pub user: Value,
}

/// The cluster entry the dashboard also writes: `server` and the CA file
/// are set, other keys of the entry are kept.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterEntry {
    pub name: String,
    pub server: String,
    pub certificate_authority: Option<String>,
}

/// The context entry the dashboard also writes: `cluster`, `user` and
/// `namespace` are set, other keys are kept.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContextEntry {
    pub name: String,
    pub cluster: String,
    pub user: String,
    pub namespace: String,
}

/// What the hook wants in the file.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Desired {
    pub user: Option<UserEntry>,
    pub cluster: Option<ClusterEntry>,
    pub context: Option<ContextEntry>,
}

impl Desired {
    pub fn is_empty(&self) -> bool {
        self.user.is_none() && self.cluster.is_none() && self.context.is_none()
    }
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum MergeError {
    #[error("it is not valid YAML ({0})")]
    Parse(String),
    #[error("it is not a kubeconfig: {0}")]
    Shape(String),
    #[error("cannot serialise the new kubeconfig: {0}")]
    Emit(String),
}

/// Parses kubeconfig text into a generic tree; empty text is an empty
/// config (kubectl treats it so).
pub fn parse(existing: &str) -> Result<Map<String, Value>, MergeError> {
    if existing.lines().all(|l| {
        let l = l.trim();
        l.is_empty() || l.starts_with('#') || l == "---"
    }) {
        return Ok(Map::new());
    }
    // As kubectl reads a kubeconfig: a repeated key's last value wins
    // (client-go's YAML decoding is not strict). The default budget bounds
    // what aliases can expand to.
    let mut options = serde_saphyr::Options::default();
    options.duplicate_keys = serde_saphyr::DuplicateKeyPolicy::LastWins;
    options.with_snippet = false;
    let doc: Value =
        serde_saphyr::from_str_with_options(existing, options).map_err(|e| parse_error(&e))?;
    match doc {
        Value::Null => Ok(Map::new()),
        Value::Object(m) => Ok(m),
        _ => Err(MergeError::Shape("the top level is not a mapping".into())),
    }
}

/// Where and what kind of error, never the text around it: the parser's
/// detail after the kind can quote keys or values of the file (it holds
/// tokens).
fn parse_error(e: &serde_saphyr::Error) -> MergeError {
    let msg = e.to_string();
    let first = msg.lines().next().unwrap_or("parse error");
    // "error: line L column C: KIND: detail" -> "KIND"
    let kind = first
        .rsplit_once(&format!(
            "column {}: ",
            e.location().map_or(0, |l| l.column())
        ))
        .map_or(first, |(_, rest)| rest);
    // Only the leading words: the detail may quote the file, in backquotes
    // or bare (`non-finite float \`1111…\``).
    let words: Vec<&str> = kind
        .split(|c: char| !(c.is_ascii_alphabetic() || c == ' ' || c == '-'))
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .take(4)
        .collect();
    let kind = match words.join(" ") {
        k if k.is_empty() => "not valid YAML".to_owned(),
        k => crate::oneline::clean(&k, 60),
    };
    MergeError::Parse(match e.location() {
        Some(l) => format!("line {}, column {}: {kind}", l.line(), l.column()),
        None => kind,
    })
}

/// The new file content: `existing` with `desired` merged in.
pub fn merge(existing: &str, desired: &Desired) -> Result<String, MergeError> {
    let mut root = parse(existing)?;
    apply(&mut root, desired)?;
    emit(&root)
}

/// [`merge`] for the entries of several clusters written into one file.
pub fn merge_all(existing: &str, desired: &[Desired]) -> Result<String, MergeError> {
    let mut root = parse(existing)?;
    for d in desired {
        apply(&mut root, d)?;
    }
    emit(&root)
}

/// Merges `desired` into a parsed config.
pub fn apply(root: &mut Map<String, Value>, desired: &Desired) -> Result<(), MergeError> {
    set_default(root, "apiVersion", Value::String("v1".into()));
    set_default(root, "kind", Value::String("Config".into()));
    set_default(root, "preferences", Value::Object(Map::new()));
    for key in ["clusters", "contexts", "users"] {
        list(root, key)?;
    }

    if let Some(u) = &desired.user {
        let body = entry_body(list(root, "users")?, "users", &u.name, "user")?;
        *body = u.user.clone();
    }
    if let Some(c) = &desired.cluster {
        let body = entry_object(list(root, "clusters")?, "clusters", &c.name, "cluster")?;
        body.insert("server".into(), Value::String(c.server.clone()));
        if let Some(ca) = &c.certificate_authority {
            body.insert("certificate-authority".into(), Value::String(ca.clone()));
            // kubectl refuses an entry with both, and skip-verify contradicts a CA.
            body.remove("certificate-authority-data");
            body.remove("insecure-skip-tls-verify");
        }
    }
    if let Some(c) = &desired.context {
        let body = entry_object(list(root, "contexts")?, "contexts", &c.name, "context")?;
        body.insert("cluster".into(), Value::String(c.cluster.clone()));
        body.insert("user".into(), Value::String(c.user.clone()));
        body.insert("namespace".into(), Value::String(c.namespace.clone()));
        // An existing current-context is the user's choice and never
        // changed; with none, ours makes a plain `kubectl` work.
        let unset = match root.get("current-context") {
            None | Some(Value::Null) => true,
            Some(Value::String(s)) => s.is_empty(),
            Some(_) => false,
        };
        if unset {
            root.insert("current-context".into(), Value::String(c.name.clone()));
        }
    }
    Ok(())
}

/// Serialises a config as YAML, deterministically.
pub fn emit(root: &Map<String, Value>) -> Result<String, MergeError> {
    let mut entries: Vec<_> = root.iter().map(|(k, v)| (k.as_str(), sort(v))).collect();
    entries.sort_by(|a, b| a.0.cmp(b.0));
    let sorted = SortedValue::Map(entries);
    serde_saphyr::to_string(&sorted).map_err(|e| MergeError::Emit(e.to_string()))
}

/// A copy with every map's keys in sorted order, whatever serde_json's map
/// type (`preserve_order` may be switched on by another crate).
fn sort(v: &Value) -> SortedValue<'_> {
    match v {
        Value::Object(m) => {
            let mut entries: Vec<_> = m.iter().map(|(k, v)| (k.as_str(), sort(v))).collect();
            entries.sort_by(|a, b| a.0.cmp(b.0));
            SortedValue::Map(entries)
        }
        Value::Array(a) => SortedValue::List(a.iter().map(sort).collect()),
        other => SortedValue::Leaf(other),
    }
}

enum SortedValue<'a> {
    Map(Vec<(&'a str, SortedValue<'a>)>),
    List(Vec<SortedValue<'a>>),
    Leaf(&'a Value),
}

impl Serialize for SortedValue<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::{SerializeMap, SerializeSeq};
        match self {
            Self::Map(entries) => {
                let mut m = s.serialize_map(Some(entries.len()))?;
                for (k, v) in entries {
                    m.serialize_entry(k, v)?;
                }
                m.end()
            }
            Self::List(items) => {
                let mut l = s.serialize_seq(Some(items.len()))?;
                for i in items {
                    l.serialize_element(i)?;
                }
                l.end()
            }
            Self::Leaf(v) => v.serialize(s),
        }
    }
}

fn set_default(root: &mut Map<String, Value>, key: &str, value: Value) {
    match root.get(key) {
        None | Some(Value::Null) => {
            root.insert(key.into(), value);
        }
        Some(_) => {}
    }
}

/// `root[key]` as a list (created when absent or null).
fn list<'a>(root: &'a mut Map<String, Value>, key: &str) -> Result<&'a mut Vec<Value>, MergeError> {
    let slot = root.entry(key.to_owned()).or_insert(Value::Null);
    if slot.is_null() {
        *slot = Value::Array(Vec::new());
    }
    match slot {
        Value::Array(a) => Ok(a),
        _ => Err(MergeError::Shape(format!("`{key}` is not a list"))),
    }
}

/// The `body_key` value of the (last) entry named `name` in `items`,
/// appending a new entry when there is none. client-go lets the last of
/// several same-named entries win, so that is the one updated.
fn entry_body<'a>(
    items: &'a mut Vec<Value>,
    list_key: &str,
    name: &str,
    body_key: &str,
) -> Result<&'a mut Value, MergeError> {
    for item in items.iter() {
        if !item.is_object() {
            return Err(MergeError::Shape(format!(
                "an item of `{list_key}` is not a mapping"
            )));
        }
    }
    let idx = match items
        .iter()
        .rposition(|i| i.get("name").and_then(Value::as_str) == Some(name))
    {
        Some(i) => i,
        None => {
            let mut m = Map::new();
            m.insert("name".into(), Value::String(name.to_owned()));
            m.insert(body_key.into(), Value::Object(Map::new()));
            items.push(Value::Object(m));
            items.len() - 1
        }
    };
    let Value::Object(item) = &mut items[idx] else {
        return Err(MergeError::Shape(format!(
            "an item of `{list_key}` is not a mapping"
        )));
    };
    Ok(item.entry(body_key.to_owned()).or_insert(Value::Null))
}

fn entry_object<'a>(
    items: &'a mut Vec<Value>,
    list_key: &str,
    name: &str,
    body_key: &str,
) -> Result<&'a mut Map<String, Value>, MergeError> {
    let body = entry_body(items, list_key, name, body_key)?;
    if body.is_null() {
        *body = Value::Object(Map::new());
    }
    match body {
        Value::Object(m) => Ok(m),
        _ => Err(MergeError::Shape(format!(
            "`{list_key}` entry {name:?} has a `{body_key}` that is not a mapping"
        ))),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn parse_errors_never_quote_the_file() {
        // Found by fuzzing: the parser's detail quoted a long number.
        let text = format!("ess: {}e9{}\n", "1".repeat(80), "1".repeat(20));
        let e = parse(&text).unwrap_err().to_string();
        assert!(!e.contains("1111111111"), "{e}");
        assert!(e.contains("line 1"), "{e}");
    }

    use super::*;
    use serde_json::json;

    fn desired() -> Desired {
        Desired {
            user: Some(UserEntry {
                name: "alice".into(),
                user: json!({"token": "tok-123"}),
            }),
            cluster: Some(ClusterEntry {
                name: "open-ondemand".into(),
                server: "https://k8s.example:6443".into(),
                certificate_authority: Some("/etc/pki/k8s-ca.crt".into()),
            }),
            context: Some(ContextEntry {
                name: "open-ondemand".into(),
                cluster: "open-ondemand".into(),
                user: "alice".into(),
                namespace: "user-alice".into(),
            }),
        }
    }

    const OTHERS: &str = r#"
# a comment
apiVersion: v1
kind: Config
current-context: mine
preferences:
  colors: true
clusters:
- name: mine
  cluster:
    server: https://other.example
    certificate-authority-data: QUJD
    extensions:
    - name: ext
      extension: {a: 1, b: [x, "007", "true", null]}
contexts:
- name: mine
  context: {cluster: mine, user: me, namespace: default}
users:
- name: me
  user:
    client-certificate-data: Q0VSVA==
    client-key-data: S0VZ
- name: alice
  user:
    auth-provider:
      name: oidc
      config: {client-secret: old}
extensions:
- name: top
  extension: {version: 1.10, on: "yes"}
x-unknown-field: {keep: me}
"#;

    #[test]
    fn fresh_file() {
        let out = merge("", &desired()).unwrap();
        let v = parse(&out).unwrap();
        assert_eq!(v["current-context"], "open-ondemand");
        assert_eq!(v["users"][0]["user"]["token"], "tok-123");
        assert_eq!(v["contexts"][0]["context"]["namespace"], "user-alice");
        assert_eq!(
            v["clusters"][0]["cluster"]["certificate-authority"],
            "/etc/pki/k8s-ca.crt"
        );
        assert_eq!(v["kind"], "Config");
    }

    #[test]
    fn keeps_everything_else_and_current_context() {
        let out = merge(OTHERS, &desired()).unwrap();
        let before = parse(OTHERS).unwrap();
        let after = parse(&out).unwrap();
        assert_eq!(after["current-context"], "mine");
        assert_eq!(after["preferences"], before["preferences"]);
        assert_eq!(after["extensions"], before["extensions"]);
        assert_eq!(after["x-unknown-field"], before["x-unknown-field"]);
        assert_eq!(after["clusters"][0], before["clusters"][0]);
        assert_eq!(after["contexts"][0], before["contexts"][0]);
        assert_eq!(after["users"][0], before["users"][0]);
        // the owned entry is replaced wholesale: the old secret is gone
        assert_eq!(
            after["users"][1],
            json!({"name": "alice", "user": {"token": "tok-123"}})
        );
        assert_eq!(after["users"].as_array().unwrap().len(), 2);
        assert_eq!(after["clusters"].as_array().unwrap().len(), 2);
        // strings that look like other types stay strings
        let ext = &after["clusters"][0]["cluster"]["extensions"][0]["extension"];
        assert_eq!(ext["b"], json!(["x", "007", "true", null]));
        assert_eq!(after["extensions"][0]["extension"]["on"], "yes");
        assert!(!out.contains("old"));
    }

    #[test]
    fn deterministic_and_idempotent() {
        let a = merge(OTHERS, &desired()).unwrap();
        let b = merge(OTHERS, &desired()).unwrap();
        assert_eq!(a, b);
        let c = merge(&a, &desired()).unwrap();
        assert_eq!(a, c);
    }

    #[test]
    fn cluster_entry_keeps_user_keys_and_drops_conflicting_ca() {
        let existing = "clusters:\n- name: open-ondemand\n  cluster:\n    server: https://old\n    certificate-authority-data: QUJD\n    proxy-url: http://proxy:3128\n";
        let after = parse(&merge(existing, &desired()).unwrap()).unwrap();
        let c = &after["clusters"][0]["cluster"];
        assert_eq!(c["server"], "https://k8s.example:6443");
        assert_eq!(c["proxy-url"], "http://proxy:3128");
        assert!(c.get("certificate-authority-data").is_none());
    }

    #[test]
    fn no_tokens_only_cluster_and_context() {
        let mut d = desired();
        d.user = None;
        let after = parse(&merge(OTHERS, &d).unwrap()).unwrap();
        assert_eq!(after["users"], parse(OTHERS).unwrap()["users"]);
    }

    #[test]
    fn refuses_garbage() {
        assert!(matches!(
            merge("users: [\n  - {", &desired()),
            Err(MergeError::Parse(_))
        ));
        assert!(matches!(
            merge("- a\n- b\n", &desired()),
            Err(MergeError::Shape(_))
        ));
        assert!(matches!(
            merge("users: 3\n", &desired()),
            Err(MergeError::Shape(_))
        ));
        assert!(matches!(
            merge("users:\n- just-a-string\n", &desired()),
            Err(MergeError::Shape(_))
        ));
    }

    #[test]
    fn parse_error_does_not_echo_content() {
        let e = merge(
            "users: [ {name: x, user: {token: SECRETTOKEN} \n",
            &desired(),
        )
        .unwrap_err();
        assert!(!e.to_string().contains("SECRETTOKEN"), "{e}");
    }

    /// Found by fuzzing (fuzz/fuzz_targets/kubeconfig_merge.rs): a repeated
    /// key was refused (kubectl takes the last) with a message quoting the
    /// key from the file.
    #[test]
    fn repeated_keys_last_wins_like_kubectl() {
        let text = "users:\n- name: me\n  user:\n    token: SECRET-ONE\n    token: two\n";
        let after = parse(&merge(text, &desired()).unwrap()).unwrap();
        assert_eq!(after["users"][0]["user"], json!({"token": "two"}));
    }

    #[test]
    fn parse_errors_give_the_place_not_the_content() {
        let e = merge(
            "users:\n- name: x\n  user: {token: SECRETTOKEN\n",
            &desired(),
        )
        .unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.contains("line ") && !msg.contains("SECRETTOKEN"),
            "{msg}"
        );
        let e = merge("a: &x 1\nb: *SECRETANCHOR\n", &desired()).unwrap_err();
        assert!(!e.to_string().contains("SECRETANCHOR"), "{e}");
    }

    #[test]
    fn empty_and_null_files_are_empty_configs() {
        for text in ["", "\n", "# only a comment\n", "---\n", "null\n", "~\n"] {
            let after = parse(&merge(text, &desired()).unwrap()).unwrap();
            assert_eq!(after["users"][0]["name"], "alice", "{text:?}");
        }
    }

    #[test]
    fn yaml_from_kubectl_roundtrips() {
        // what `kubectl config view --raw` writes, with an exec user
        let k = r#"apiVersion: v1
clusters:
- cluster:
    certificate-authority: /tmp/ca.crt
    server: https://127.0.0.1:16443
  name: local
contexts: null
current-context: ""
kind: Config
preferences: {}
users:
- name: bob
  user:
    exec:
      apiVersion: client.authentication.k8s.io/v1
      args:
      - --x=1
      command: /usr/bin/thing
      env: null
      interactiveMode: Never
      provideClusterInfo: false
"#;
        let a = merge(k, &desired()).unwrap();
        let after = parse(&a).unwrap();
        assert_eq!(after["users"][0], parse(k).unwrap()["users"][0]);
        assert_eq!(after["current-context"], "open-ondemand");
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        /// Scalars a YAML emitter must quote to keep them strings, and
        /// plain ones.
        fn scalar() -> impl Strategy<Value = Value> {
            prop_oneof![
                proptest::sample::select(vec![
                    "007",
                    "true",
                    "yes",
                    "no",
                    "on",
                    "null",
                    "~",
                    "",
                    " lead",
                    "trail ",
                    "a: b",
                    "- x",
                    "#c",
                    "1e3",
                    "0x1F",
                    ".inf",
                    "2024-01-01",
                    "&a",
                    "*a",
                    "!t",
                    "multi\nline",
                    "tab\tin",
                    "quote\"s",
                    "'",
                    "ü",
                    "\u{85}",
                    "\u{feff}x",
                    "{a}",
                    "[b]",
                    "%p",
                    "@x",
                ])
                .prop_map(|s| Value::String(s.into())),
                "[ -~]{0,20}".prop_map(Value::String),
                any::<i64>().prop_map(Value::from),
                any::<bool>().prop_map(Value::Bool),
                Just(Value::Null),
            ]
        }

        fn tree() -> impl Strategy<Value = Value> {
            scalar().prop_recursive(3, 24, 4, |inner| {
                prop_oneof![
                    proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                    proptest::collection::btree_map("[a-z-]{1,8}|007|true|\"k", inner, 0..4)
                        .prop_map(|m| Value::Object(m.into_iter().collect())),
                ]
            })
        }

        fn entries(body_key: &'static str) -> impl Strategy<Value = Vec<Value>> {
            proptest::collection::vec(("alice|bob|open-ondemand|mine|[a-z]{1,6}", tree()), 0..4)
                .prop_map(move |items| {
                    items
                        .into_iter()
                        .map(|(name, body)| json!({"name": name, body_key: body}))
                        .collect()
                })
        }

        fn config() -> impl Strategy<Value = Value> {
            (
                entries("user"),
                entries("cluster"),
                entries("context"),
                tree(),
                "|mine|x",
            )
                .prop_map(|(users, clusters, contexts, extra, cc)| {
                    json!({"apiVersion": "v1", "kind": "Config", "users": users,
                           "clusters": clusters, "contexts": contexts,
                           "x-extra": extra, "current-context": cc})
                })
        }

        fn foreign(root: &Map<String, Value>, list: &str, ours: &str) -> Vec<Value> {
            root[list]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|i| i["name"] != ours)
                .cloned()
                .collect()
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(64))]

            /// Any config (written as JSON, which is YAML, or by our own
            /// emitter): every entry and key we do not own survives, ours is
            /// set, a second merge changes nothing, and the output parses
            /// back to exactly the merged tree.
            #[test]
            fn merge_keeps_foreign_entries_and_is_idempotent(
                existing in config(),
                as_json in any::<bool>(),
            ) {
                let Value::Object(before) = existing else { unreachable!() };
                let text = if as_json {
                    serde_json::to_string_pretty(&before).unwrap()
                } else {
                    emit(&before).unwrap()
                };
                prop_assert_eq!(&parse(&text).unwrap(), &before, "{}", text);
                let d = desired();
                // The entry we update (the last of its name) must have a
                // mapping (or nothing) as its body, else the file is refused.
                let unusable = [("clusters", "cluster"), ("contexts", "context")].iter().any(|(list, body)| {
                    before[*list].as_array().unwrap().iter().rev()
                        .find(|i| i["name"] == "open-ondemand")
                        .is_some_and(|i| !i[*body].is_object() && !i[*body].is_null())
                });
                let out = match merge(&text, &d) {
                    Err(MergeError::Shape(_)) if unusable => return Ok(()),
                    other => other.unwrap(),
                };
                prop_assert!(!unusable);
                let after = parse(&out).unwrap();
                for (list, ours) in [("users", "alice"), ("clusters", "open-ondemand"), ("contexts", "open-ondemand")] {
                    prop_assert_eq!(foreign(&before, list, ours), foreign(&after, list, ours), "{}", list);
                }
                prop_assert_eq!(&after["x-extra"], &before["x-extra"]);
                let user = after["users"].as_array().unwrap().iter().rev()
                    .find(|u| u["name"] == "alice").unwrap();
                prop_assert_eq!(&user["user"], &d.user.as_ref().unwrap().user);
                if before["current-context"] != "" {
                    prop_assert_eq!(&after["current-context"], &before["current-context"]);
                }
                prop_assert_eq!(merge(&out, &d).unwrap(), out);
            }

            /// Arbitrary text never panics, and errors never quote it.
            #[test]
            fn arbitrary_text_never_panics(text in "(?s).{0,300}") {
                if let Err(e) = merge(&text, &desired()) {
                    let msg = e.to_string();
                    prop_assert!(!msg.contains('\n'), "{:?}", msg);
                }
            }
        }
    }
}
