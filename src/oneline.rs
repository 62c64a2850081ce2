//! One stderr/syslog line from an error: every failure the hook reports
//! must fit nginx_stage's one syslog line, and reqwest and hyper hide the
//! useful part ("Connection refused", "UnknownIssuer") in the source chain.

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
    out.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect::<String>()
        .split_whitespace()
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
}
