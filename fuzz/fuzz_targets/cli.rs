//! argv -> `cli::try_parse_from` (the pure part of the command line, the
//! old `USERNAME HOOK_ENV` form included). Input: the arguments after the
//! program name, separated by NUL bytes (any bytes, not only UTF-8).
//! Checks: the old form keeps both words exactly; a parsed user was given
//! on the command line; errors and help render without panics; the hidden
//! subcommands (`cli::hidden_command`) are only taken with an option after
//! them, so a user named like one is still a hook run.
#![no_main]

use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;

use libfuzzer_sys::fuzz_target;
use ood_k8s_bootstrap::cli::{Command, hidden_command, try_parse_from};

fuzz_target!(|data: &[u8]| {
    let args: Vec<OsString> = std::iter::once(b"ood-k8s-bootstrap".as_slice())
        .chain(data.split(|b| *b == 0))
        .map(|a| OsString::from_vec(a.to_vec()))
        .collect();
    let given = |s: &str| s.is_empty() || data.windows(s.len()).any(|w| w == s.as_bytes());

    let legacy = match &args[..] {
        [_, user, env] => match (user.to_str(), env.to_str()) {
            (Some(u), Some(e)) if !u.starts_with('-') && !e.starts_with('-') && e.contains('/') => {
                Some((u.to_owned(), e.to_owned()))
            }
            _ => None,
        },
        _ => None,
    };
    if hidden_command(&args).is_some() {
        let option_follows = args
            .get(2)
            .and_then(|a| a.to_str())
            .is_some_and(|a| a.starts_with("--"));
        let child = args.get(1).and_then(|a| a.to_str()) == Some("__write-kubeconfig");
        assert!(option_follows || child, "{args:?}");
    }
    match try_parse_from(args) {
        Ok(cli) => {
            if let Some((user, env)) = legacy {
                assert_eq!(cli.hook.user.as_deref(), Some(user.as_str()));
                assert_eq!(cli.hook.common.hook_env.to_str(), Some(env.as_str()));
                assert!(cli.command.is_none());
            }
            if let Some(u) = &cli.hook.user {
                assert!(given(u), "user {u:?} was not on the command line");
            }
            if let Some(Command::Render { user, .. }) = &cli.command {
                assert!(given(user));
            }
        }
        Err(e) => {
            assert!(legacy.is_none(), "the old form was refused: {e}");
            let _ = e.render().to_string();
        }
    }
});
