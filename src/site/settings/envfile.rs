//! The shell-style `KEY=VALUE` syntax of hook.env, read the way bash's
//! `source` left it for the old hooks: comments, blank lines, quotes,
//! `export KEY=...`, CRLF line ends, the last assignment winning. Knows
//! nothing about what the keys mean (that is `keys.rs`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::SettingsError;

/// A key's value and the line it was (last) set on.
#[derive(Debug, Clone)]
pub struct Entry {
    pub value: String,
    pub line: usize,
    /// The file it came from when not the file itself: a cluster's
    /// `hook.env.d` override or its clusters.d file (several clusters).
    pub source: Option<PathBuf>,
}

/// The raw file: key → last value.
#[derive(Debug)]
pub struct EnvFile {
    pub path: PathBuf,
    pub entries: BTreeMap<String, Entry>,
}

impl EnvFile {
    pub fn parse(path: &Path, text: &str) -> Result<Self, SettingsError> {
        // dotenvy does not treat "\r\n" as a line end; sites have CRLF files.
        let text = text.replace("\r\n", "\n");
        let definitions = definitions(&text);
        let mut entries = BTreeMap::new();
        let mut read = Vec::new();
        for item in dotenvy::from_read_iter(text.as_bytes()) {
            match item {
                Ok((key, value)) => {
                    let line = definitions
                        .iter()
                        .rev()
                        .find(|(k, _)| *k == key)
                        .map_or(0, |(_, l)| *l);
                    read.push(key.clone());
                    entries.insert(
                        key,
                        Entry {
                            value,
                            line,
                            source: None,
                        },
                    );
                }
                Err(dotenvy::Error::LineParse(bad, _)) => {
                    return Err(SettingsError::Syntax {
                        path: path.to_owned(),
                        line: line_of(&text, &bad),
                    });
                }
                Err(_) => {
                    return Err(SettingsError::Syntax {
                        path: path.to_owned(),
                        line: 0,
                    });
                }
            }
        }
        if let Some((key, line)) = swallowed(&definitions, &read) {
            return Err(SettingsError::Swallowed {
                path: path.to_owned(),
                line,
                key: key.to_owned(),
            });
        }
        Ok(Self {
            path: path.to_owned(),
            entries,
        })
    }

    /// The file `key`'s value came from (the file itself when unset).
    pub fn path_of(&self, key: &str) -> &Path {
        self.entries
            .get(key)
            .and_then(|e| e.source.as_deref())
            .unwrap_or(&self.path)
    }

    /// Sets `key` from another file (`source`), as if it were written here.
    pub fn overlay(&mut self, key: &str, value: &str, line: usize, source: &Path) {
        self.entries.insert(
            key.to_owned(),
            Entry {
                value: value.to_owned(),
                line,
                source: Some(source.to_owned()),
            },
        );
    }

    /// The value of `key`, trimmed; unset and empty are the same, as in the
    /// old bash.
    pub fn get(&self, key: &str) -> Option<(&str, usize)> {
        self.entries
            .get(key)
            .filter(|e| !e.value.trim().is_empty())
            .map(|e| (e.value.trim(), e.line))
    }
}

/// The line where dotenvy's unparsable remainder `bad` starts.
fn line_of(text: &str, bad: &str) -> usize {
    let first = bad.lines().next().unwrap_or(bad);
    text.lines()
        .position(|l| !bad.is_empty() && l.contains(first))
        .map_or(0, |i| i + 1)
}

/// The first definition a shell makes that dotenvy did not (in order):
/// dotenvy reads `\'` inside single quotes as an escaped quote, which a
/// shell does not, and then takes the following lines as part of that
/// value. Such a line is refused rather than silently lost.
fn swallowed<'a>(shell: &[(&'a str, usize)], read: &[String]) -> Option<(&'a str, usize)> {
    let mut rest = read.iter();
    shell
        .iter()
        .find(|(key, _)| !rest.any(|k| k == key))
        .copied()
}

/// Every `KEY=` definition as a shell reads the text, in order, with the
/// line it starts on: a quoted value may span lines (single quotes have no
/// escapes, double quotes and bare words have backslash escapes), and `#`
/// at the start of a word starts a comment. (A backslash before a line end
/// outside quotes ends the line, as dotenvy reads it.)
fn definitions(text: &str) -> Vec<(&str, usize)> {
    let mut out = Vec::new();
    let mut line = 1;
    let mut chars = text.char_indices().peekable();
    while let Some(&(start, _)) = chars.peek() {
        let first_line = line;
        let mut quote = None;
        let mut word_start = true;
        let mut end = text.len();
        while let Some((i, c)) = chars.next() {
            if c == '\n' {
                line += 1;
            }
            match (quote, c) {
                (None, '\n') => {
                    end = i;
                    break;
                }
                (None, '#') if word_start => {
                    end = i;
                    for (_, c) in chars.by_ref() {
                        if c == '\n' {
                            line += 1;
                            break;
                        }
                    }
                    break;
                }
                // As dotenvy: a backslash before a line end outside quotes
                // does not continue the line.
                (None, '\\') => {
                    chars.next_if(|(_, c)| *c != '\n');
                }
                (Some('"'), '\\') => {
                    line += usize::from(chars.next().is_some_and(|(_, c)| c == '\n'));
                }
                (None, '\'' | '"') => quote = Some(c),
                (Some(q), c) if c == q => quote = None,
                _ => {}
            }
            word_start = quote.is_none() && c.is_whitespace();
        }
        if let Some(key) = defined_key(&text[start..end]) {
            out.push((key, first_line));
        }
    }
    out
}

/// The key a line starts to set (`KEY=`, `export KEY =`), read the way
/// dotenvy reads it.
fn defined_key(line: &str) -> Option<&str> {
    fn key_at(l: &str) -> Option<(&str, &str)> {
        if !l.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_') {
            return None;
        }
        let end = l
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '.'))
            .unwrap_or(l.len());
        let (key, rest) = l.split_at(end);
        Some((key, rest.trim_start()))
    }
    let (mut key, mut rest) = key_at(line.trim_start())?;
    if key == "export" && !rest.starts_with('=') {
        (key, rest) = key_at(rest)?;
    }
    rest.starts_with('=').then_some(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn last_assignment_wins_with_its_line() {
        let f = EnvFile::parse(Path::new("h"), "A=1\r\nexport A='2'\n# A=3\n").unwrap();
        assert_eq!(f.get("A"), Some(("2", 2)));
    }

    #[test]
    fn empty_is_unset() {
        let f = EnvFile::parse(Path::new("h"), "A=\"  \"\n").unwrap();
        assert_eq!(f.get("A"), None);
    }

    /// Found by fuzzing: dotenvy reads `\'` in single quotes as an escaped
    /// quote (a shell does not) and took the next line into the value, so
    /// B was silently never set.
    #[test]
    fn a_line_swallowed_by_an_earlier_quote_is_refused() {
        let e = EnvFile::parse(Path::new("h"), "A=1\nB='x\\'\nC='y\\'\n").unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.starts_with("h:3: ") && msg.contains("C would not be set"),
            "{msg}"
        );
    }

    #[test]
    fn multi_line_quoted_values_are_one_definition() {
        let text = "# c\nA=\"one\nB=two==\"\nexport\tC = 'x # y'\n  D=3 # E=4\nA=5\n";
        let f = EnvFile::parse(Path::new("h"), text).unwrap();
        assert_eq!(f.entries["A"].value, "5");
        let line = |k: &str| f.entries[k].line;
        assert_eq!((line("A"), line("C"), line("D")), (6, 4, 5));
        assert!(!f.entries.contains_key("B") && !f.entries.contains_key("E"));
        // A backslash at a line end outside quotes does not continue it.
        let f = EnvFile::parse(Path::new("h"), "A=''\\\nB=2\n").unwrap();
        assert_eq!(f.get("B"), Some(("2", 2)));
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        /// How a line sets a value, as sites write it.
        #[derive(Debug, Clone, Copy)]
        enum Quoting {
            Bare,
            Double,
            Single,
        }

        fn quoting() -> impl Strategy<Value = Quoting> {
            prop_oneof![
                Just(Quoting::Bare),
                Just(Quoting::Double),
                Just(Quoting::Single)
            ]
        }

        proptest! {
            /// Any value written the way sites write hook.env (bare, double
            /// or single quotes, multi-line in quotes, `export`, CRLF,
            /// comments and blank lines between) reads back as itself, with
            /// the line its definition starts on.
            #[test]
            fn values_round_trip_through_shell_syntax(
                entries in proptest::collection::btree_map(
                    "[A-Z][A-Z0-9_]{0,12}",
                    ("[A-Za-z0-9./:@,+=_-]{0,24}", "[A-Za-z0-9 ./:@,#+=_\n-]{0,24}", quoting(), any::<bool>()),
                    1..8,
                ),
                crlf in any::<bool>(),
                comments in any::<bool>(),
            ) {
                let eol = if crlf { "\r\n" } else { "\n" };
                let mut text = String::new();
                let mut expected = Vec::new();
                for (key, (bare, quoted, q, export)) in &entries {
                    if comments {
                        text.push_str(&format!("# {key} below{eol}{eol}"));
                    }
                    let (value, written) = match q {
                        Quoting::Bare => (bare.clone(), bare.clone()),
                        Quoting::Double => (quoted.clone(), format!("\"{}\"", quoted.replace('\\', "\\\\").replace('"', "\\\""))),
                        Quoting::Single => (quoted.clone(), format!("'{quoted}'")),
                    };
                    let line = text.matches('\n').count() + 1;
                    let export = if *export { "export " } else { "" };
                    text.push_str(&format!("{export}{key}={written}{eol}"));
                    expected.push((key.clone(), value, line));
                }
                let env = EnvFile::parse(Path::new("h"), &text).expect("parses");
                prop_assert_eq!(env.entries.len(), expected.len());
                for (key, value, line) in expected {
                    let entry = &env.entries[&key];
                    prop_assert_eq!(&entry.value, &value, "{:?} in {:?}", key, text);
                    prop_assert_eq!(entry.line, line, "line of {} in {:?}", key, text);
                }
            }

            /// Arbitrary text never panics; what is read has a line.
            #[test]
            fn arbitrary_text_is_read_or_refused(text in "(?s).{0,200}|([A-Z]{1,3}=['\"\\\\a# \n]{0,6}\n){0,8}") {
                if let Ok(env) = EnvFile::parse(Path::new("h"), &text) {
                    for e in env.entries.values() {
                        prop_assert!(e.line >= 1 && e.line <= text.lines().count().max(1));
                    }
                }
            }
        }
    }
}
