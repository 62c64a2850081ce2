//! A wrapper for secret strings (tokens, client secrets, registry
//! credentials) that cannot leak through `Debug`, `Display` or logs.
//!
//! The only way to the bytes is [`Secret::expose`], which makes every place
//! that handles a secret easy to find.

use std::fmt;

#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The secret itself. Callers must not log or format it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

impl Drop for Secret {
    fn drop(&mut self) {
        // Best effort: overwrite the heap copy we own.
        // SAFETY-free version: replace every byte with zero through a safe API.
        let zeros = "\0".repeat(self.0.len());
        self.0.replace_range(.., &zeros);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_does_not_show_the_value() {
        let s = Secret::new("hunter2");
        assert_eq!(format!("{s:?}"), "Secret(<redacted>)");
        assert_eq!(s.expose(), "hunter2");
    }
}
