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
        let mut entries = BTreeMap::new();
        for item in dotenvy::from_read_iter(text.as_bytes()) {
            match item {
                Ok((key, value)) => {
                    let line = definition_line(&text, &key).unwrap_or(0);
                    entries.insert(key, Entry { value, line });
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
        Ok(Self {
            path: path.to_owned(),
            entries,
        })
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

/// The last line that sets `key` (what a shell would end up with).
fn definition_line(text: &str, key: &str) -> Option<usize> {
    text.lines()
        .enumerate()
        .filter(|(_, l)| {
            let l = l.trim_start();
            let l = l
                .strip_prefix("export")
                .filter(|r| r.starts_with([' ', '\t']))
                .map_or(l, str::trim_start);
            l.strip_prefix(key)
                .is_some_and(|r| r.trim_start().starts_with('='))
        })
        .map(|(i, _)| i + 1)
        .last()
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
}
