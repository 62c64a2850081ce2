//! Reading `SITE_TEMPLATES_DIR`: the thin I/O edge in front of the pure
//! template parser (`crate::cluster::templates`). Runs as root, so the directory and
//! every file are trusted only as `crate::site::trusted` trusts files (root's,
//! writable by no one else, through safe directories) — otherwise anyone who
//! can write there could add objects to every user's namespace. FIFOs and
//! devices are refused without blocking.

use std::path::Path;

use crate::site::trusted;

/// The template files in `dir` as (path, text), sorted by name: `*.yaml`
/// and `*.yml`, hidden files skipped. Errors say what is wrong with which
/// path.
pub fn read(dir: &Path) -> Result<Vec<(String, String)>, String> {
    let dir = trusted::directory(dir).map_err(|e| e.to_string())?;
    let mut names = Vec::new();
    for entry in std::fs::read_dir(&dir).map_err(|e| format!("cannot list it: {e}"))? {
        let entry = entry.map_err(|e| format!("cannot list it: {e}"))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else {
            return Err(format!(
                "{}: a file name that is not UTF-8; rename or remove it",
                entry.path().display()
            ));
        };
        if !name.starts_with('.') && (name.ends_with(".yaml") || name.ends_with(".yml")) {
            names.push(name.to_owned());
        }
    }
    names.sort();
    names
        .into_iter()
        .map(|name| {
            let path = dir.join(&name);
            let text = trusted::read_to_string(&path).map_err(|e| e.to_string())?;
            Ok((path.display().to_string(), text))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn scratch(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("ood-tdir-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        dir
    }

    #[test]
    fn reads_yaml_files_in_order_and_skips_the_rest() {
        let dir = scratch("order");
        for (name, text) in [
            ("b.yaml", "b"),
            ("a.yml", "a"),
            (".hidden.yaml", "h"),
            ("notes.txt", "n"),
            ("c.yaml~", "c"),
        ] {
            let p = dir.join(name);
            std::fs::write(&p, text).unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        }
        let files = read(&dir).unwrap();
        let names: Vec<_> = files
            .iter()
            .map(|(p, t)| (p.rsplit('/').next().unwrap(), t.as_str()))
            .collect();
        assert_eq!(names, [("a.yml", "a"), ("b.yaml", "b")]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn refuses_writable_files_fifos_and_missing_dirs() {
        let dir = scratch("refuse");
        let p = dir.join("open.yaml");
        std::fs::write(&p, "x").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o666)).unwrap();
        let e = read(&dir).unwrap_err();
        assert!(e.contains("open.yaml") && e.contains("writable"), "{e}");
        std::fs::remove_file(&p).unwrap();

        let fifo = dir.join("pipe.yaml");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o644)).unwrap();
        let e = read(&dir).unwrap_err();
        assert!(e.contains("pipe.yaml") && e.contains("FIFO"), "{e}");
        std::fs::remove_file(&fifo).unwrap();

        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
        assert!(read(&dir).unwrap_err().contains("writable"));
        assert!(
            read(&std::env::temp_dir().join("ood-tdir-missing-dir"))
                .unwrap_err()
                .contains("cannot read")
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
