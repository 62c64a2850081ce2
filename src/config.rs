//! `ood-k8s-bootstrap config`: check a hook.env (and the site templates it
//! names) without touching anything, or print the example generated from
//! the key table.

use std::io::Write;
use std::path::Path;

use crate::exit::Exit;
use crate::run::{PROG, fail, load_settings};
use crate::settings::keys;

/// Prints the example, or checks `hook_env` and says what it found.
pub fn main(example: bool, hook_env: &Path) -> Exit {
    if example {
        let mut out = std::io::stdout().lock();
        return match out.write_all(keys::example().as_bytes()) {
            Ok(()) => Exit::Ok,
            Err(e) => fail(Exit::CantCreate, format!("cannot write to stdout: {e}")),
        };
    }
    match load_settings(hook_env) {
        Ok(s) => {
            let templates = match s.templates.len() {
                0 => String::new(),
                n => format!(
                    ", {n} site template object{}",
                    if n == 1 { "" } else { "s" }
                ),
            };
            eprintln!(
                "{PROG}: {}: ok ({} warning{}{templates})",
                hook_env.display(),
                s.warnings.len(),
                if s.warnings.len() == 1 { "" } else { "s" }
            );
            Exit::Ok
        }
        Err(exit) => exit,
    }
}
