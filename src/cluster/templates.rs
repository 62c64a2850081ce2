//! Site templates: the objects a site adds to every user's namespace (a
//! ResourceQuota, a LimitRange, an egress policy, ...), written as YAML
//! files with envsubst-style placeholders, as sites did with the old hooks.
//!
//! Pure: [`TemplateSet::parse`] takes (file name, text) pairs and the
//! hook.env `SITE_*` values, checks everything that does not depend on the
//! user, and [`TemplateSet::instantiate`] makes one user's objects (`desired`
//! then adds our label and checks them against the hook's own). Every error
//! names the file and line. Placeholders are replaced *after* the YAML
//! is parsed, inside string scalars (keys and values), so no value — a
//! username, a `SITE_*` value — can add YAML structure.
//!
//! Placeholders: `${USER}`, `${NAMESPACE}`, `${UID}`, `${GID}`,
//! `${K8S_USERNAME}` (the username as the API server sees it) and
//! `${SITE_NAME}` for each hook.env key `SITE_NAME`. `$$` is a literal `$`.
//! Any other `${...}` is an error, and so is a bare `$USER` (and the like):
//! envsubst would have replaced it, so it is most likely a migration slip.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::Deserialize;
use serde_json::{Map, Value};
use serde_saphyr::Spanned;
use thiserror::Error;

use crate::cluster::kinds::Kind;
use crate::site::account::Ids;
use crate::site::names::{Namespace, Username, truncate};

/// Annotation naming the template file an object came from.
pub const TEMPLATE_ANNOTATION: &str = "openondemand.org/template";

/// The placeholders that stand for the user.
const USER_PLACEHOLDERS: [&str; 5] = ["USER", "NAMESPACE", "UID", "GID", "K8S_USERNAME"];
/// Prefix of site-value placeholders (hook.env keys of the same name).
pub const SITE_PREFIX: &str = "SITE_";

/// Metadata fields that only make sense on an object read back from a
/// cluster (`kubectl get -o yaml`); applying them would pin or break it.
const READ_ONLY_METADATA: [&str; 8] = [
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "managedFields",
    "selfLink",
];

/// Kinds admins are likely to try that live outside any namespace.
const CLUSTER_SCOPED: [&str; 8] = [
    "Namespace",
    "ClusterRole",
    "ClusterRoleBinding",
    "PersistentVolume",
    "StorageClass",
    "PriorityClass",
    "ValidatingAdmissionPolicy",
    "CustomResourceDefinition",
];

/// A template problem: the file, the line, and what is wrong.
#[derive(Debug, Clone, Error, PartialEq, Eq)]
#[error("{file}:{line}: {why}")]
pub struct TemplateError {
    pub file: String,
    pub line: usize,
    pub why: String,
}

/// Where a document starts: file and line.
#[derive(Debug, Clone, PartialEq, Eq)]
struct At {
    file: String,
    line: usize,
}

impl At {
    fn error(&self, why: impl Into<String>) -> TemplateError {
        self.error_at(self.line, why)
    }

    fn error_at(&self, line: usize, why: impl Into<String>) -> TemplateError {
        TemplateError {
            file: self.file.clone(),
            line,
            why: why.into(),
        }
    }
}

/// One object of one template file, checked, placeholders still in.
#[derive(Debug, Clone, PartialEq)]
struct Doc {
    at: At,
    kind: Kind,
    /// The whole document (apiVersion, kind, metadata, ...).
    value: Map<String, Value>,
}

/// Every site template, checked; empty when `SITE_TEMPLATES_DIR` is unset.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TemplateSet {
    docs: Vec<Doc>,
    site: BTreeMap<String, String>,
    uses_ids: bool,
}

/// What a user's placeholders stand for.
#[derive(Debug, Clone)]
pub struct UserValues<'a> {
    pub user: &'a Username,
    pub namespace: &'a Namespace,
    /// The username as the API server sees it (`OIDC_USERNAME_PREFIX` + user).
    pub k8s_username: String,
    /// uid and gid, when the caller looked them up.
    pub ids: Option<&'a Ids>,
}

/// One object a template made for one user.
#[derive(Debug, Clone, PartialEq)]
pub struct SiteObject {
    pub kind: Kind,
    /// Name and namespace set; our label and template annotation added.
    pub meta: ObjectMeta,
    /// Everything but apiVersion, kind and metadata.
    pub body: Map<String, Value>,
    /// The template file and the line its document starts on.
    pub file: String,
    pub line: usize,
}

impl SiteObject {
    /// A problem with this object, pointing at its template.
    pub fn error(&self, why: impl Into<String>) -> TemplateError {
        TemplateError {
            file: self.file.clone(),
            line: self.line,
            why: why.into(),
        }
    }

    /// The JSON body as sent to the API server.
    pub fn to_json(&self) -> Value {
        let mut out = Map::new();
        out.insert("apiVersion".into(), Value::String(self.kind.api_version()));
        out.insert("kind".into(), Value::String(self.kind.name().into()));
        out.insert(
            "metadata".into(),
            serde_json::to_value(&self.meta).unwrap_or(Value::Null),
        );
        out.extend(self.body.clone());
        Value::Object(out)
    }
}

impl TemplateSet {
    /// Parses and checks template files, given as (name for messages, text)
    /// in the order they apply, with the hook.env `SITE_*` values.
    pub fn parse(
        files: &[(String, String)],
        site: &BTreeMap<String, String>,
    ) -> Result<Self, TemplateError> {
        let mut set = Self {
            docs: Vec::new(),
            site: site.clone(),
            uses_ids: false,
        };
        for (file, text) in files {
            for doc in parse_file(file, text)? {
                set.uses_ids |= set.check_placeholders(&doc, text)?;
                set.docs.push(doc);
            }
        }
        Ok(set)
    }

    pub fn is_empty(&self) -> bool {
        self.docs.is_empty()
    }

    /// How many objects the templates make per user.
    pub fn len(&self) -> usize {
        self.docs.len()
    }

    /// Does any template use `${UID}` or `${GID}` (so the passwd entry is
    /// needed even where the hook would not look it up)?
    pub fn uses_ids(&self) -> bool {
        self.uses_ids
    }

    /// One user's objects, in file order.
    pub fn instantiate(&self, values: &UserValues<'_>) -> Result<Vec<SiteObject>, TemplateError> {
        self.docs
            .iter()
            .map(|doc| self.instantiate_doc(doc, values))
            .collect()
    }

    fn instantiate_doc(
        &self,
        doc: &Doc,
        values: &UserValues<'_>,
    ) -> Result<SiteObject, TemplateError> {
        let lookup = |name: &str| -> Option<String> {
            match name {
                "USER" => Some(values.user.to_string()),
                "NAMESPACE" => Some(values.namespace.to_string()),
                "K8S_USERNAME" => Some(values.k8s_username.clone()),
                "UID" => values.ids.map(|i| i.uid.to_string()),
                "GID" => values.ids.map(|i| i.gid.to_string()),
                other => self.site.get(other).cloned(),
            }
        };
        let for_user = |why: String| doc.at.error(format!("for user {}: {why}", values.user));
        let Value::Object(mut value) =
            substitute_value(&Value::Object(doc.value.clone()), &lookup).map_err(for_user)?
        else {
            return Err(doc.at.error("not a mapping"));
        };
        let mut meta_value = value.remove("metadata").unwrap_or(Value::Null);
        if let Some(m) = meta_value.as_object_mut() {
            m.insert(
                "namespace".into(),
                Value::String(values.namespace.to_string()),
            );
        }
        let mut meta: ObjectMeta =
            serde_json::from_value(meta_value).map_err(|e| for_user(format!("metadata: {e}")))?;
        let name = meta.name.clone().unwrap_or_default();
        if let Some(why) = doc.kind.name_problem(&name) {
            return Err(for_user(format!(
                "metadata.name {:?} is not a valid {} name: {why}",
                truncate(&name, 80),
                doc.kind
            )));
        }
        if meta.labels.as_ref().is_some_and(|l| l.contains_key("job")) {
            return Err(for_user(job_label_why()));
        }
        meta.annotations
            .get_or_insert_with(BTreeMap::new)
            .insert(TEMPLATE_ANNOTATION.into(), file_name(&doc.at.file).into());
        value.remove("apiVersion");
        value.remove("kind");
        Ok(SiteObject {
            kind: doc.kind,
            meta,
            body: value,
            file: doc.at.file.clone(),
            line: doc.at.line,
        })
    }

    /// Checks every placeholder in `doc` is known; returns whether it uses
    /// the uid or gid.
    fn check_placeholders(&self, doc: &Doc, text: &str) -> Result<bool, TemplateError> {
        let mut strings = Vec::new();
        collect_strings(&Value::Object(doc.value.clone()), &mut strings);
        let mut uses_ids = false;
        for s in strings {
            let pieces = pieces(&s).map_err(|(bad, why)| {
                doc.at
                    .error_at(line_of(text, &bad, doc.at.line).unwrap_or(doc.at.line), why)
            })?;
            for piece in pieces {
                let Piece::Ref(name) = piece else { continue };
                uses_ids |= name == "UID" || name == "GID";
                if !self.known(name) {
                    let line =
                        line_of(text, &format!("${{{name}}}"), doc.at.line).unwrap_or(doc.at.line);
                    return Err(doc.at.error_at(line, unknown_why(name)));
                }
            }
        }
        Ok(uses_ids)
    }

    fn known(&self, name: &str) -> bool {
        USER_PLACEHOLDERS.contains(&name) || self.site.contains_key(name)
    }
}

fn unknown_why(name: &str) -> String {
    let known = USER_PLACEHOLDERS.map(|p| format!("${{{p}}}")).join(", ");
    if name.starts_with(SITE_PREFIX) {
        format!(
            "${{{name}}}: {name} is not set in hook.env (site values are hook.env keys starting with {SITE_PREFIX})"
        )
    } else {
        format!(
            "unknown placeholder ${{{name}}} (known: {known}, and ${{{SITE_PREFIX}...}} for hook.env keys starting with {SITE_PREFIX}; write $$ for a literal $)"
        )
    }
}

fn job_label_why() -> String {
    "objects may not carry a `job` label: the job-pod-reaper deletes objects labelled `job`".into()
}

/// The last path component, for the template annotation.
fn file_name(file: &str) -> &str {
    file.rsplit('/').next().unwrap_or(file)
}

/// The top-level keys of a document whose position errors point at.
#[derive(Deserialize)]
struct HeadLines {
    #[serde(rename = "apiVersion", default)]
    api_version: Option<Spanned<Value>>,
    #[serde(default)]
    kind: Option<Spanned<Value>>,
    #[serde(default)]
    metadata: Option<MetaLines>,
}

#[derive(Deserialize)]
struct MetaLines {
    #[serde(default)]
    name: Option<Spanned<Value>>,
    #[serde(default)]
    namespace: Option<Spanned<Value>>,
    #[serde(default)]
    labels: Option<Spanned<Value>>,
}

/// Lines of the fields checks point at; 0 where unknown.
#[derive(Default, Clone, Copy)]
struct Lines {
    api_version: usize,
    kind: usize,
    name: usize,
    namespace: usize,
    labels: usize,
}

fn line(s: Option<&Spanned<Value>>) -> usize {
    s.map_or(0, |s| usize::try_from(s.referenced.line()).unwrap_or(0))
}

impl Lines {
    fn of(h: &HeadLines) -> Self {
        let m = h.metadata.as_ref();
        Self {
            api_version: line(h.api_version.as_ref()),
            kind: line(h.kind.as_ref()),
            name: line(m.and_then(|m| m.name.as_ref())),
            namespace: line(m.and_then(|m| m.namespace.as_ref())),
            labels: line(m.and_then(|m| m.labels.as_ref())),
        }
    }
}

fn yaml_options() -> serde_saphyr::Options {
    serde_saphyr::options! { with_snippet: false }
}

/// Parses one file's documents and checks each on its own.
fn parse_file(file: &str, text: &str) -> Result<Vec<Doc>, TemplateError> {
    let docs: Vec<Spanned<Value>> = serde_saphyr::from_multiple_with_options(text, yaml_options())
        .map_err(|e| {
            let line = e
                .location()
                .map_or(0, |l| usize::try_from(l.line()).unwrap_or(0));
            TemplateError {
                file: file.into(),
                line,
                why: format!("not valid YAML: {}", yaml_message(&e)),
            }
        })?;
    // Second pass for the lines of individual fields; documents whose shape
    // does not fit fall back to their first line.
    let heads: Vec<Option<Lines>> =
        serde_saphyr::from_multiple_with_options::<HeadLines>(text, yaml_options())
            .ok()
            .filter(|h| h.len() == docs.len())
            .map(|h| h.iter().map(|h| Some(Lines::of(h))).collect())
            .unwrap_or_else(|| vec![None; docs.len()]);
    docs.into_iter()
        .zip(heads)
        .map(|(doc, lines)| {
            let at = At {
                file: file.into(),
                line: usize::try_from(doc.referenced.line()).unwrap_or(0),
            };
            check_doc(at, doc.value, lines.unwrap_or_default())
        })
        .collect()
}

/// The parser's message without its own location suffix (we add ours).
fn yaml_message(e: &serde_saphyr::Error) -> String {
    let text = e.to_string();
    let first = text.lines().next().unwrap_or_default();
    let mut trimmed = match first.rfind(" at line ") {
        Some(i) => &first[..i],
        None => first,
    };
    // The parser's advice to its caller, not to an admin.
    if let Some(i) = trimmed.find(", set DuplicateKeyPolicy") {
        trimmed = &trimmed[..i];
    }
    truncate(trimmed.trim(), 200)
}

/// The checks that do not depend on the user.
fn check_doc(at: At, value: Value, lines: Lines) -> Result<Doc, TemplateError> {
    let pick = |l: usize| if l == 0 { at.line } else { l };
    let Value::Object(map) = value else {
        return Err(
            at.error("expected a Kubernetes object (a mapping with apiVersion, kind and metadata)")
        );
    };
    let text = |key: &str| map.get(key).and_then(Value::as_str).map(str::to_owned);
    let Some(api_version) = text("apiVersion") else {
        return Err(at.error_at(
            pick(lines.api_version),
            "apiVersion is missing or not a string",
        ));
    };
    let Some(kind_name) = text("kind") else {
        return Err(at.error_at(pick(lines.kind), "kind is missing or not a string"));
    };
    let kind = template_kind(&api_version, &kind_name)
        .map_err(|why| at.error_at(pick(lines.kind), why))?;
    let Some(meta) = map.get("metadata").and_then(Value::as_object) else {
        return Err(at.error("metadata is missing or not a mapping"));
    };
    match meta.get("name") {
        Some(Value::String(n)) if !n.is_empty() => {}
        _ if meta.contains_key("generateName") => {
            return Err(at.error("metadata.generateName is not supported: give metadata.name"));
        }
        _ => return Err(at.error_at(pick(lines.name), "metadata.name is missing or not a string")),
    }
    match meta.get("namespace") {
        None => {}
        Some(Value::String(ns)) if ns == "${NAMESPACE}" => {}
        Some(other) => {
            return Err(at.error_at(
                pick(lines.namespace),
                format!(
                    "metadata.namespace is {}: objects go into the user's namespace; remove it or write ${{NAMESPACE}}",
                    truncate(&other.to_string(), 60)
                ),
            ));
        }
    }
    if let Some(field) = READ_ONLY_METADATA.iter().find(|f| meta.contains_key(**f)) {
        return Err(at.error(format!(
            "metadata.{field} belongs to an object read back from a cluster (kubectl get -o yaml?); remove it"
        )));
    }
    for field in ["labels", "annotations"] {
        match meta.get(field) {
            None | Some(Value::Null) => {}
            Some(Value::Object(m)) if m.values().all(Value::is_string) => {}
            Some(_) => {
                return Err(at.error_at(
                    pick(lines.labels),
                    format!(
                        "metadata.{field} must map names to strings (quote numbers and booleans)"
                    ),
                ));
            }
        }
    }
    if meta
        .get("labels")
        .and_then(Value::as_object)
        .is_some_and(|l| l.contains_key("job"))
    {
        return Err(at.error_at(pick(lines.labels), job_label_why()));
    }
    Ok(Doc {
        at,
        kind,
        value: map,
    })
}

/// The table kind for a manifest's apiVersion and kind, or why not.
fn template_kind(api_version: &str, kind: &str) -> Result<Kind, String> {
    let allowed = || {
        Kind::ALL
            .iter()
            .filter(|k| k.in_templates())
            .map(|k| k.name())
            .collect::<Vec<_>>()
            .join(", ")
    };
    match Kind::from_manifest(api_version, kind) {
        Some(k) if k.in_templates() => Ok(k),
        _ if CLUSTER_SCOPED.contains(&kind) => Err(format!(
            "{kind} is cluster-scoped; templates hold only objects in the user's namespace ({})",
            allowed()
        )),
        _ => match Kind::from_name(kind) {
            Some(k) => Err(format!(
                "{kind} has apiVersion {}, not {}",
                k.api_version(),
                truncate(api_version, 60)
            )),
            None => Err(format!(
                "kind {} is not one the ondemand account may write in users' namespaces (allowed: {})",
                truncate(kind, 60),
                allowed()
            )),
        },
    }
}

/// Part of a string: literal text or a placeholder name.
#[derive(Debug, PartialEq, Eq)]
enum Piece<'a> {
    Text(&'a str),
    Ref(&'a str),
}

/// Splits `s` into text and `${NAME}` references; `$$` is a literal `$`.
/// On error: (the offending text, why).
fn pieces(s: &str) -> Result<Vec<Piece<'_>>, (String, String)> {
    let mut out = Vec::new();
    let mut rest = s;
    while let Some(i) = rest.find('$') {
        if i > 0 {
            out.push(Piece::Text(&rest[..i]));
        }
        let after = &rest[i + 1..];
        if let Some(r) = after.strip_prefix('$') {
            out.push(Piece::Text("$"));
            rest = r;
        } else if let Some(r) = after.strip_prefix('{') {
            let Some(end) = r.find('}') else {
                let bad = truncate(&rest[i..], 30);
                return Err((bad.clone(), format!("{bad}: `${{` without a closing `}}`")));
            };
            let name = &r[..end];
            if !is_identifier(name) {
                let bad = format!("${{{name}}}");
                return Err((
                    bad.clone(),
                    format!(
                        "{}: not a placeholder (only ${{NAME}} is replaced; write $$ for a literal $)",
                        truncate(&bad, 40)
                    ),
                ));
            }
            out.push(Piece::Ref(name));
            rest = &r[end + 1..];
        } else {
            let ident_len = after
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(after.len());
            let ident = &after[..ident_len];
            if USER_PLACEHOLDERS.contains(&ident) || ident.starts_with(SITE_PREFIX) {
                let bad = format!("${ident}");
                return Err((
                    bad.clone(),
                    format!(
                        "{bad}: write ${{{ident}}} (only the braced form is replaced; $$ is a literal $)"
                    ),
                ));
            }
            out.push(Piece::Text("$"));
            rest = after;
        }
    }
    if !rest.is_empty() {
        out.push(Piece::Text(rest));
    }
    Ok(out)
}

fn is_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// `s` with every placeholder replaced; an error for any it cannot.
fn substitute(s: &str, lookup: &dyn Fn(&str) -> Option<String>) -> Result<String, String> {
    let mut out = String::with_capacity(s.len());
    for piece in pieces(s).map_err(|(_, why)| why)? {
        match piece {
            Piece::Text(t) => out.push_str(t),
            Piece::Ref(name) => match lookup(name) {
                Some(v) => out.push_str(&v),
                None => return Err(unknown_or_missing(name)),
            },
        }
    }
    Ok(out)
}

fn unknown_or_missing(name: &str) -> String {
    if name == "UID" || name == "GID" {
        format!("${{{name}}} needs the user's passwd entry, which was not looked up")
    } else {
        unknown_why(name)
    }
}

/// Replaces placeholders in every string of `v`, keys included.
fn substitute_value(v: &Value, lookup: &dyn Fn(&str) -> Option<String>) -> Result<Value, String> {
    Ok(match v {
        Value::String(s) => Value::String(substitute(s, lookup)?),
        Value::Array(items) => Value::Array(
            items
                .iter()
                .map(|i| substitute_value(i, lookup))
                .collect::<Result<_, _>>()?,
        ),
        Value::Object(map) => {
            let mut out = Map::new();
            for (k, v) in map {
                let key = substitute(k, lookup)?;
                if out.contains_key(&key) {
                    return Err(format!(
                        "two keys become {key:?} once placeholders are replaced"
                    ));
                }
                out.insert(key, substitute_value(v, lookup)?);
            }
            Value::Object(out)
        }
        other => other.clone(),
    })
}

/// Every string in `v`, keys included.
fn collect_strings(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::String(s) => out.push(s.clone()),
        Value::Array(items) => items.iter().for_each(|i| collect_strings(i, out)),
        Value::Object(map) => {
            for (k, v) in map {
                out.push(k.clone());
                collect_strings(v, out);
            }
        }
        _ => {}
    }
}

/// The first line at or after `from` (1-based) containing `needle`.
fn line_of(text: &str, needle: &str, from: usize) -> Option<usize> {
    text.lines()
        .enumerate()
        .skip(from.saturating_sub(1))
        .find(|(_, l)| l.contains(needle))
        .map(|(i, _)| i + 1)
}

/// The first object whose kind and name an earlier one already has.
pub fn first_duplicate(objects: &[SiteObject]) -> Option<&SiteObject> {
    let mut seen = BTreeSet::new();
    objects
        .iter()
        .find(|o| !seen.insert((o.kind, o.meta.name.clone().unwrap_or_default())))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn site() -> BTreeMap<String, String> {
        BTreeMap::from([
            ("SITE_CPU".to_owned(), "8".to_owned()),
            ("SITE_EVIL".to_owned(), "x\nkind: ClusterRole\n".to_owned()),
        ])
    }

    fn parse(text: &str) -> Result<TemplateSet, TemplateError> {
        TemplateSet::parse(&[("/t/quota.yaml".into(), text.into())], &site())
    }

    fn err(text: &str) -> String {
        parse(text).expect_err("should be refused").to_string()
    }

    fn objects(text: &str, user: &str) -> Result<Vec<SiteObject>, TemplateError> {
        let set = parse(text).unwrap();
        let user = Username::parse(user).unwrap();
        let ns = Namespace::for_user("ood-", &user).unwrap();
        let ids = Ids {
            uid: 1234,
            gid: 5678,
            groups: None,
        };
        set.instantiate(&UserValues {
            user: &user,
            namespace: &ns,
            k8s_username: format!("oidc-{user}"),
            ids: Some(&ids),
        })
    }

    const QUOTA: &str = "\
# a quota per user
apiVersion: v1
kind: ResourceQuota
metadata:
  name: ${USER}-quota
  namespace: ${NAMESPACE}
  labels:
    site: hpc
spec:
  hard:
    requests.cpu: ${SITE_CPU}
    limits.memory: 16Gi
---
apiVersion: v1
kind: LimitRange
metadata:
  name: limits
spec:
  limits:
  - type: Container
    default: {cpu: '1'}
";

    #[test]
    fn quota_and_limit_range_for_a_user() {
        let objs = objects(QUOTA, "first.last").unwrap();
        assert_eq!(objs.len(), 2);
        let q = objs[0].to_json();
        assert_eq!(q["apiVersion"], "v1");
        assert_eq!(q["kind"], "ResourceQuota");
        assert_eq!(q["metadata"]["name"], "first.last-quota");
        assert_eq!(q["metadata"]["namespace"], "ood-first-last");
        assert_eq!(q["metadata"]["labels"]["site"], "hpc");
        assert_eq!(
            q["metadata"]["annotations"]["openondemand.org/template"],
            "quota.yaml"
        );
        assert_eq!(q["spec"]["hard"]["requests.cpu"], "8");
        assert_eq!((objs[0].file.as_str(), objs[0].line), ("/t/quota.yaml", 2));
        let l = objs[1].to_json();
        assert_eq!(l["metadata"]["namespace"], "ood-first-last");
        assert_eq!(objs[1].line, 14);
        assert!(!parse(QUOTA).unwrap().uses_ids());
    }

    #[test]
    fn values_cannot_inject_yaml() {
        let objs = objects(
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: site}\ndata:\n  evil: \"${SITE_EVIL}\"\n  user: ${USER}\n  ids: ${UID}:${GID}\n  who: ${K8S_USERNAME}\n  dollar: $$HOME and $PATH\n",
            "alice",
        )
        .unwrap();
        let cm = objs[0].to_json();
        assert_eq!(cm["kind"], "ConfigMap");
        assert_eq!(cm["data"]["evil"], "x\nkind: ClusterRole\n");
        assert_eq!(cm["data"]["ids"], "1234:5678");
        assert_eq!(cm["data"]["who"], "oidc-alice");
        assert_eq!(cm["data"]["dollar"], "$HOME and $PATH");
    }

    #[test]
    fn uid_placeholders_are_noticed() {
        let set =
            parse("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\ndata: {u: \"${UID}\"}\n")
                .unwrap();
        assert!(set.uses_ids());
        let user = Username::parse("alice").unwrap();
        let ns = Namespace::for_user("", &user).unwrap();
        let e = set
            .instantiate(&UserValues {
                user: &user,
                namespace: &ns,
                k8s_username: "alice".into(),
                ids: None,
            })
            .unwrap_err();
        assert!(e.to_string().contains("passwd"), "{e}");
    }

    #[test]
    fn refusals_name_file_and_line() {
        let cases = [
            (
                "apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRole\nmetadata: {name: x}\n",
                ":2:",
                "cluster-scoped",
            ),
            (
                "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: x\n  namespace: kube-system\n",
                ":5:",
                "user's namespace",
            ),
            (
                "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: x\ndata:\n  a: ok\n  b: ${HOME}\n",
                ":7:",
                "unknown placeholder ${HOME}",
            ),
            (
                "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: x\ndata:\n  b: ${SITE_MEM}\n",
                ":6:",
                "SITE_MEM is not set",
            ),
            (
                "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: x\ndata:\n  b: $USER\n",
                ":6:",
                "write ${USER}",
            ),
            (
                "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: [x\n",
                ":",
                "not valid YAML",
            ),
            (
                "apiVersion: v1\nkind: Pod\nmetadata: {name: x}\n",
                ":2:",
                "kind Pod is not",
            ),
            (
                "apiVersion: v1\nkind: NetworkPolicy\nmetadata: {name: x}\n",
                ":2:",
                "networking.k8s.io/v1",
            ),
            (
                "kind: ConfigMap\nmetadata: {name: x}\n",
                ":1:",
                "apiVersion is missing",
            ),
            (
                "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  labels: {a: b}\n",
                ":",
                "metadata.name",
            ),
            (
                "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: x\n  labels:\n    job: x\n",
                ":6:",
                "job",
            ),
            (
                "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: x\n  resourceVersion: '5'\n",
                ":",
                "resourceVersion",
            ),
            ("- a\n- b\n", ":1:", "mapping"),
            (
                "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x, labels: {n: 1}}\n",
                ":",
                "strings",
            ),
        ];
        for (text, line, needle) in cases {
            let msg = err(text);
            assert!(
                msg.starts_with("/t/quota.yaml:") && msg.contains(line) && msg.contains(needle),
                "{text:?}: {msg}"
            );
        }
        // Broken YAML names its line.
        let msg = err("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: x\n data: y\n");
        assert!(msg.contains("/t/quota.yaml:5"), "{msg}");
    }

    #[test]
    fn second_document_errors_point_into_it() {
        let msg = err(&format!(
            "{QUOTA}---\napiVersion: v1\nkind: Namespace\nmetadata: {{name: x}}\n"
        ));
        assert!(msg.contains("quota.yaml:24:"), "{msg}");
    }

    #[test]
    fn per_user_checks() {
        // A name that is fine for some users only.
        let text = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: \"${USER}-cm\"}\n";
        assert!(objects(text, "alice").is_ok());
        let e = objects(text, "bob@example.org").unwrap_err().to_string();
        assert!(
            e.contains("quota.yaml:1")
                && e.contains("user bob@example.org")
                && e.contains("not a valid ConfigMap name"),
            "{e}"
        );
        // RBAC names are looser.
        let rb = "apiVersion: rbac.authorization.k8s.io/v1\nkind: RoleBinding\nmetadata: {name: \"${USER}-view\"}\nroleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: view}\n";
        assert!(objects(rb, "bob@example.org").is_ok());
    }

    #[test]
    fn pieces_and_escapes() {
        assert_eq!(
            pieces("a${USER}b$$c$d").unwrap(),
            vec![
                Piece::Text("a"),
                Piece::Ref("USER"),
                Piece::Text("b"),
                Piece::Text("$"),
                Piece::Text("c"),
                Piece::Text("$"),
                Piece::Text("d")
            ]
        );
        assert!(pieces("${USER").is_err());
        assert!(pieces("${A-B}").is_err());
        assert!(pieces("$SITE_X").is_err());
        assert!(pieces("price: 5$").is_ok());
    }

    #[test]
    fn shipped_examples_parse() {
        let files = [
            (
                "deny-egress.yaml".to_owned(),
                include_str!("../../hooks/site-templates/deny-egress.yaml").to_owned(),
            ),
            (
                "quota.yaml".to_owned(),
                include_str!("../../hooks/site-templates/quota.yaml").to_owned(),
            ),
        ];
        let site = BTreeMap::from([
            ("SITE_QUOTA_CPU".to_owned(), "16".to_owned()),
            ("SITE_QUOTA_MEMORY".to_owned(), "64Gi".to_owned()),
        ]);
        let set = TemplateSet::parse(&files, &site).unwrap();
        let user = Username::parse("alice").unwrap();
        let ns = Namespace::for_user("", &user).unwrap();
        let objs = set
            .instantiate(&UserValues {
                user: &user,
                namespace: &ns,
                k8s_username: "alice".into(),
                ids: None,
            })
            .unwrap();
        let kinds: Vec<Kind> = objs.iter().map(|o| o.kind).collect();
        assert_eq!(
            kinds,
            [Kind::NetworkPolicy, Kind::ResourceQuota, Kind::LimitRange]
        );
        assert_eq!(objs[1].to_json()["spec"]["hard"]["limits.memory"], "64Gi");
        // Without the site values they are refused, naming the value.
        let e = TemplateSet::parse(&files, &BTreeMap::new()).unwrap_err();
        assert!(e.to_string().contains("SITE_QUOTA_CPU is not set"), "{e}");
    }

    #[test]
    fn duplicates_are_found() {
        let text = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n---\napiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n";
        let objs = objects(text, "alice").unwrap();
        assert_eq!(first_duplicate(&objs).map(|o| o.line), Some(5));
    }
}
