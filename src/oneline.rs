//! One stderr/syslog line from an error or from text others wrote: every
//! failure the hook reports must fit nginx_stage's one syslog line, reqwest
//! and hyper hide the useful part ("Connection refused", "UnknownIssuer") in
//! the source chain, and what an API server, IdP, broker client or user's
//! process says may hold newlines and terminal escapes that must never
//! reach a log or a terminal.

/// An error and its causes on one line: each cause not already in the text
/// is appended after ": ", control characters become spaces, runs of
/// whitespace one space. Unbounded: callers truncate to their line's budget.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    words(&out)
}

/// Untrusted text made fit for one line: control characters (newlines,
/// escape sequences, NUL) become spaces, runs of whitespace one space, and
/// it is cut to `max_chars` characters (plus `…` when cut).
pub fn clean(text: &str, max_chars: usize) -> String {
    crate::site::names::truncate(&words(text), max_chars)
}

/// Invisible characters that change how a line reads: Unicode's format
/// characters (general category Cf: bidirectional overrides and isolates
/// such as U+202E, zero-width joiners and spaces, the byte order mark,
/// interlinear annotations, tags) and the line and paragraph separators
/// (U+2028, U+2029). With control characters, never let into a log line.
pub fn is_format(c: char) -> bool {
    matches!(c,
        '\u{00AD}'
        | '\u{0600}'..='\u{0605}'
        | '\u{061C}'
        | '\u{06DD}'
        | '\u{070F}'
        | '\u{0890}'..='\u{0891}'
        | '\u{08E2}'
        | '\u{180E}'
        | '\u{200B}'..='\u{200F}'
        | '\u{2028}'..='\u{202E}'
        | '\u{2060}'..='\u{2064}'
        | '\u{2066}'..='\u{206F}'
        | '\u{FEFF}'
        | '\u{FFF9}'..='\u{FFFB}'
        | '\u{110BD}'
        | '\u{110CD}'
        | '\u{13430}'..='\u{1343F}'
        | '\u{1BCA0}'..='\u{1BCA3}'
        | '\u{1D173}'..='\u{1D17A}'
        | '\u{E0001}'
        | '\u{E0020}'..='\u{E007F}')
}

/// The words of `text`, split at whitespace, control and format
/// characters, joined by single spaces.
fn words(text: &str) -> String {
    text.split(|c: char| c.is_whitespace() || c.is_control() || is_format(c))
        .filter(|w| !w.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct E(&'static str, Option<Box<E>>);
    impl std::fmt::Display for E {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(self.0)
        }
    }
    impl std::error::Error for E {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            self.1.as_deref().map(|e| e as _)
        }
    }

    #[test]
    fn causes_on_one_line_without_repeats() {
        let e = E(
            "error sending request",
            Some(Box::new(E(
                "client error (Connect)",
                Some(Box::new(E("Connection\nrefused", None))),
            ))),
        );
        assert_eq!(
            error_chain(&e),
            "error sending request: client error (Connect): Connection refused"
        );
        let repeated = E("tcp connect: refused", Some(Box::new(E("refused", None))));
        assert_eq!(error_chain(&repeated), "tcp connect: refused");
    }

    #[test]
    fn clean_removes_escapes_and_cuts() {
        assert_eq!(clean("a\x1b[31mb\r\n\tc\0d  ", 100), "a [31mb c d");
        assert_eq!(clean("abcdef", 3), "abc…");
        assert_eq!(clean("\n\u{85}\u{2028}", 10), "");
    }

    /// A right-to-left override, zero-width or separator character would
    /// make a log line read other than it is.
    #[test]
    fn clean_removes_format_characters() {
        assert_eq!(
            clean("gpu\u{202E}nimda\u{2028}x\u{200B}y\u{2066}z\u{FEFF}", 100),
            "gpu nimda x y z"
        );
        for c in [
            '\u{202A}',
            '\u{202E}',
            '\u{2028}',
            '\u{2029}',
            '\u{200D}',
            '\u{2069}',
            '\u{E0041}',
        ] {
            assert!(is_format(c), "{:?}", c);
        }
        for c in ['a', 'é', '中', ' ', '\u{2030}'] {
            assert!(!is_format(c), "{c:?}");
        }
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            /// Whatever the text, the result is one line of bounded length
            /// without control characters, holding the text's words in order.
            #[test]
            fn clean_is_one_bounded_line(text in "(?s).{0,300}", max in 0usize..120) {
                let out = clean(&text, max);
                prop_assert!(!out.chars().any(|c| c.is_control() || (c.is_whitespace() && c != ' ')), "{:?}", out);
                prop_assert!(out.chars().count() <= max + 1);
                prop_assert_eq!(out.trim(), out.as_str());
                prop_assert!(!out.contains("  "));
                let all = clean(&text, usize::MAX);
                prop_assert!(all.starts_with(out.trim_end_matches('…')));
            }
        }
    }
}
