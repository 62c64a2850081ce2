//! The source's layering, as README's code map promises it: no module
//! imports one that imports it back, directly or round a loop. A folder's
//! `mod.rs` and the files under it may use each other (the files use what
//! `mod.rs` declares); test modules are left out. Reads `src/` as text: a
//! reference is a `crate::…` or `super::…` path outside comments.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Every module of the crate (`cluster::apply`, `run`, …) and its file.
fn modules(src: &Path) -> BTreeMap<String, PathBuf> {
    let mut out = BTreeMap::new();
    let mut dirs = vec![src.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).expect("read src") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                dirs.push(path);
                continue;
            }
            let rel = path.strip_prefix(src).expect("under src");
            let Some(rel) = rel.to_str().and_then(|r| r.strip_suffix(".rs")) else {
                continue;
            };
            let mut parts: Vec<&str> = rel.split('/').collect();
            if parts.last() == Some(&"mod") {
                parts.pop();
            }
            if matches!(parts.as_slice(), ["lib"] | ["main"]) || parts.contains(&"tests") {
                continue;
            }
            out.insert(parts.join("::"), path);
        }
    }
    out
}

/// The code of a file without its test module and its comments.
fn code(text: &str) -> String {
    let text = match text.find("#[cfg(test)]\nmod tests {") {
        Some(at) => &text[..at],
        None => text,
    };
    text.lines()
        .map(|l| l.find("//").map_or(l, |at| &l[..at]))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The paths `text` names after `anchor` (`crate::` or `super::`), with a
/// `{a, b::c}` group split into one path per item.
fn paths_after(text: &str, anchor: &str) -> Vec<String> {
    let ident = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
    let mut out = Vec::new();
    for (at, _) in text.match_indices(anchor) {
        if text[..at].ends_with(|c: char| c.is_ascii_alphanumeric() || c == '_') {
            continue;
        }
        let rest = &text[at + anchor.len()..];
        let head: String = rest.chars().take_while(|&c| ident(c)).collect();
        let after = &rest[head.len()..];
        let head = head.trim_end_matches(':').to_owned();
        if let Some(group) = after.strip_prefix('{') {
            let group: String = group.chars().take_while(|&c| c != '}').collect();
            for item in group.split(',') {
                let item: String = item.trim().chars().take_while(|&c| ident(c)).collect();
                let item = item.trim_end_matches(':');
                if !item.is_empty() && item != "self" {
                    out.push([head.as_str(), item].join("::"));
                }
            }
        }
        out.push(head);
    }
    out
}

/// The longest module that `path` starts with.
fn resolve<'a>(path: &str, mods: &'a BTreeMap<String, PathBuf>) -> Option<&'a String> {
    let mut parts: Vec<&str> = path.split("::").filter(|p| !p.is_empty()).collect();
    while !parts.is_empty() {
        if let Some((m, _)) = mods.get_key_value(&parts.join("::")) {
            return Some(m);
        }
        parts.pop();
    }
    None
}

fn related(a: &str, b: &str) -> bool {
    a == b || a.starts_with(&format!("{b}::")) || b.starts_with(&format!("{a}::"))
}

/// Each module's imports of modules that are neither it, its ancestors nor
/// its descendants.
fn imports(mods: &BTreeMap<String, PathBuf>) -> BTreeMap<&String, BTreeSet<&String>> {
    let mut edges = BTreeMap::new();
    for (m, file) in mods {
        let text = code(&std::fs::read_to_string(file).expect("read"));
        let parent = m.rsplit_once("::").map_or("", |(p, _)| p);
        let mut to = BTreeSet::new();
        let named = paths_after(&text, "crate::").into_iter().chain(
            paths_after(&text, "super::")
                .into_iter()
                .map(|p| format!("{parent}::{p}")),
        );
        for path in named {
            if let Some(t) = resolve(&path, mods).filter(|t| !related(m, t)) {
                to.insert(t);
            }
        }
        edges.insert(m, to);
    }
    edges
}

/// A loop of imports, if there is one.
fn a_loop<'a>(edges: &BTreeMap<&'a String, BTreeSet<&'a String>>) -> Option<Vec<&'a String>> {
    // Depth-first search; 1 = on the current path, 2 = done.
    fn visit<'a>(
        m: &'a String,
        edges: &BTreeMap<&'a String, BTreeSet<&'a String>>,
        state: &mut BTreeMap<&'a String, u8>,
        path: &mut Vec<&'a String>,
    ) -> Option<Vec<&'a String>> {
        state.insert(m, 1);
        path.push(m);
        for &t in edges.get(m).into_iter().flatten() {
            match state.get(t) {
                Some(1) => {
                    let from = path.iter().position(|p| *p == t).unwrap_or(0);
                    let mut found = path[from..].to_vec();
                    found.push(t);
                    return Some(found);
                }
                Some(_) => {}
                None => {
                    if let Some(found) = visit(t, edges, state, path) {
                        return Some(found);
                    }
                }
            }
        }
        path.pop();
        state.insert(m, 2);
        None
    }
    let mut state = BTreeMap::new();
    for &m in edges.keys() {
        if !state.contains_key(m)
            && let Some(found) = visit(m, edges, &mut state, &mut Vec::new())
        {
            return Some(found);
        }
    }
    None
}

#[test]
fn no_module_imports_one_that_imports_it_back() {
    let mods = modules(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src"));
    assert!(
        mods.contains_key("cluster::apply") && mods.contains_key("run"),
        "{mods:?}"
    );
    let edges = imports(&mods);
    // The reader finds what it should: a plain import, a `{…}` group, `super::`.
    let of = |m: &str| edges.get(&m.to_owned()).cloned().unwrap_or_default();
    assert!(
        of("hook").iter().any(|t| *t == "cluster::apply"),
        "{:?}",
        of("hook")
    );
    assert!(of("run").iter().any(|t| *t == "record"), "{:?}", of("run"));
    assert!(
        of("admin::doctor::report")
            .iter()
            .any(|t| *t == "admin::doctor::findings"),
        "{:?}",
        of("admin::doctor::report")
    );
    if let Some(found) = a_loop(&edges) {
        let names: Vec<&str> = found.iter().map(|s| s.as_str()).collect();
        panic!(
            "modules import each other round a loop: {}",
            names.join(" -> ")
        );
    }
}

#[test]
fn a_loop_is_found() {
    let (a, b, c) = ("a".to_owned(), "b".to_owned(), "c".to_owned());
    let mut edges = BTreeMap::new();
    edges.insert(&a, BTreeSet::from([&b]));
    edges.insert(&b, BTreeSet::from([&c]));
    edges.insert(&c, BTreeSet::new());
    assert_eq!(a_loop(&edges), None);
    edges.insert(&c, BTreeSet::from([&a]));
    assert_eq!(a_loop(&edges), Some(vec![&a, &b, &c, &a]));
}

#[test]
fn paths_are_read_from_code_not_comments() {
    let text = code("use crate::a::{b, c::d};\n// crate::e\nlet x = crate::f::g(); // crate::h\n");
    assert_eq!(
        paths_after(&text, "crate::"),
        ["a::b", "a::c::d", "a", "f::g"].map(String::from).to_vec()
    );
}
