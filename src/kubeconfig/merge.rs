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
    let doc: Value = serde_saphyr::from_str(existing).map_err(|e| {
        // The first line of the parser's message is enough for an admin;
        // never echo file content (it holds tokens).
        let msg = e.to_string();
        MergeError::Parse(first_line_without_snippet(&msg))
    })?;
    match doc {
        Value::Null => Ok(Map::new()),
        Value::Object(m) => Ok(m),
        _ => Err(MergeError::Shape("the top level is not a mapping".into())),
    }
}

fn first_line_without_snippet(msg: &str) -> String {
    let line = msg.lines().next().unwrap_or("parse error");
    let mut out: String = line.chars().take(160).collect();
    if out.len() < line.len() {
        out.push('…');
    }
    out
}

/// The new file content: `existing` with `desired` merged in.
pub fn merge(existing: &str, desired: &Desired) -> Result<String, MergeError> {
    let mut root = parse(existing)?;
    apply(&mut root, desired)?;
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
}
