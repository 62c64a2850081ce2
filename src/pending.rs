//! Logins whose cluster side is still to be made. A login whose API server
//! was unreachable, timed out, throttled or answered 5xx goes on without
//! its namespace and RoleBindings; the hook notes that here, per cluster,
//! and `heal` (a root timer) applies the cluster side once the cluster
//! answers again. A refusal (another login's namespace, bad configuration,
//! a group gate, an unknown user) is never noted: it needs a person.
//!
//! The notes live beside the last-run files: `LAST_RUN_DIR/.pending/USER`,
//! one small root-only JSON file per user with something pending, so a
//! `heal` pass with nothing to do costs one directory read. Every change of
//! a user's last-run file and note holds the lock of `LAST_RUN_DIR` (a
//! moment), so a login and a heal pass never write over each other; a
//! note is changed only for the login it was made for.

use std::fs::File;
use std::io::Read;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};

use crate::site::names::Username;

/// The directory of the notes, inside `LAST_RUN_DIR` (a leading dot: no
/// login name can be it).
pub const DIR_NAME: &str = ".pending";

/// The largest note read (a few hundred bytes per cluster).
const MAX_NOTE: u64 = 64 * 1024;

/// How long a writer waits for the directory's lock at most: each holder
/// keeps it for a rename or two.
const LOCK_MOST: Duration = Duration::from_secs(1);
const LOCK_POLL: Duration = Duration::from_millis(2);

/// One cluster side still to be made.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Side {
    /// The cluster as records name it (`Settings::cluster_label`).
    pub cluster: String,
    /// The login's Unix time: the time the cluster side records
    /// (last-hook-execution), and what tells this login from a later one.
    pub login: u64,
    /// Why it failed (the error line, without secrets).
    pub error: String,
    /// Heal passes that found the cluster still failing.
    #[serde(default)]
    pub tries: u32,
}

/// A user's note: the cluster sides still to be made.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Note {
    pub sides: Vec<Side>,
}

impl Note {
    /// This run's outcome merged into the note it finds: the clusters the
    /// run worked on (`covered`) are replaced by what it left pending;
    /// the others keep their pending sides (a `--cluster` run leaves the
    /// other clusters' state alone).
    pub fn merged(self, covered: &[String], pending: Vec<Side>) -> Note {
        let mut sides: Vec<Side> = self
            .sides
            .into_iter()
            .filter(|s| !covered.contains(&s.cluster))
            .collect();
        sides.extend(pending);
        Note { sides }
    }

    /// The note without `side` (if it is still the same login's).
    pub fn without(mut self, side: &Side) -> Note {
        self.sides
            .retain(|s| !(s.cluster == side.cluster && s.login == side.login));
        self
    }

    /// The note with `side`'s failed tries counted (if it is still the same
    /// login's).
    pub fn tried(mut self, side: &Side, error: &str) -> Note {
        for s in &mut self.sides {
            if s.cluster == side.cluster && s.login == side.login {
                s.tries = s.tries.saturating_add(1);
                s.error = error.to_owned();
            }
        }
        self
    }

    pub fn is_empty(&self) -> bool {
        self.sides.is_empty()
    }

    /// The oldest pending login's time.
    pub fn oldest(&self) -> Option<u64> {
        self.sides.iter().map(|s| s.login).min()
    }

    /// The note's text (JSON).
    pub fn to_text(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Parses a note's text; a corrupt note is an error naming why.
    pub fn parse(text: &str) -> Result<Note, String> {
        serde_json::from_str(text).map_err(|e| format!("not a note of ours: {e}"))
    }
}

/// The notes of one `LAST_RUN_DIR`.
pub struct Notes {
    dir: PathBuf,
}

impl Notes {
    pub fn new(last_run_dir: &Path) -> Self {
        Self {
            dir: last_run_dir.to_owned(),
        }
    }

    /// The `LAST_RUN_DIR` the notes are in.
    pub fn last_run_dir(&self) -> &Path {
        &self.dir
    }

    fn notes_dir(&self) -> PathBuf {
        self.dir.join(DIR_NAME)
    }

    fn path(&self, user: &Username) -> PathBuf {
        // A validated login name is one plain file name (names.rs).
        self.notes_dir().join(user.as_str())
    }

    /// Holds the lock of `LAST_RUN_DIR` while `change` runs (waiting at
    /// most [`LOCK_MOST`]); every writer of last-run files and notes takes
    /// it, for a moment.
    pub fn locked<T>(&self, change: impl FnOnce() -> std::io::Result<T>) -> std::io::Result<T> {
        let dir = open_dir(&self.dir)?;
        let started = Instant::now();
        let mut dir = dir;
        let _held = loop {
            match Flock::lock(dir, FlockArg::LockExclusiveNonblock) {
                Ok(held) => break held,
                Err((d, nix::errno::Errno::EWOULDBLOCK)) if started.elapsed() < LOCK_MOST => {
                    dir = d;
                    std::thread::sleep(LOCK_POLL);
                }
                Err((_, e)) => {
                    return Err(std::io::Error::other(format!(
                        "{}: cannot lock it: {e}",
                        self.dir.display()
                    )));
                }
            }
        };
        change()
    }

    /// `user`'s note (empty when there is none). Call inside [`Notes::locked`]
    /// when the note is then changed.
    pub fn load(&self, user: &Username) -> std::io::Result<Note> {
        let path = self.path(user);
        let file = match File::options()
            .read(true)
            .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_NONBLOCK | nix::libc::O_CLOEXEC)
            .open(&path)
        {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Note::default()),
            Err(e) => return Err(e),
        };
        let meta = file.metadata()?;
        if !meta.is_file() || meta.uid() != nix::unistd::geteuid().as_raw() {
            return Err(std::io::Error::other(format!(
                "{}: not a regular file of ours; ignored",
                path.display()
            )));
        }
        let mut text = String::new();
        file.take(MAX_NOTE).read_to_string(&mut text)?;
        Note::parse(&text).map_err(|e| std::io::Error::other(format!("{}: {e}", path.display())))
    }

    /// Writes `user`'s note, or removes it when empty. Call inside
    /// [`Notes::locked`].
    pub fn store(&self, user: &Username, note: &Note) -> std::io::Result<()> {
        let path = self.path(user);
        if note.is_empty() {
            return match std::fs::remove_file(&path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
                _ => Ok(()),
            };
        }
        own_dir(&self.notes_dir())?;
        crate::replace::replace_file(&path, note.to_text().as_bytes(), 0o600, false)
    }

    /// Forgets `user`'s pending side on `cluster` (reap deleted their
    /// namespace there: a login from before that is never healed back).
    pub fn forget(&self, user: &Username, cluster: &str) -> std::io::Result<()> {
        self.locked(|| {
            let note = self.load(user).unwrap_or_default();
            let kept = note.clone().merged(&[cluster.to_owned()], Vec::new());
            if kept != note {
                self.store(user, &kept)?;
            }
            Ok(())
        })
    }

    /// The users with a note, oldest note first (by its file's time), each
    /// a validated login name; other entries (temporary files) are skipped.
    /// No directory (nothing ever pending) is an empty list.
    pub fn users(&self) -> std::io::Result<Vec<Username>> {
        let dir = self.notes_dir();
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        check_own_dir(&dir)?;
        let mut users = Vec::new();
        for entry in entries {
            let entry = entry?;
            let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
                continue;
            };
            let Ok(user) = Username::parse(&name) else {
                continue;
            };
            let mtime = entry
                .metadata()
                .map(|m| (m.mtime(), m.mtime_nsec()))
                .unwrap_or_default();
            users.push((mtime, user));
        }
        users.sort_by(|a, b| a.0.cmp(&b.0).then_with(|| a.1.as_str().cmp(b.1.as_str())));
        Ok(users.into_iter().map(|(_, u)| u).collect())
    }

    /// Takes the lock that lets one `heal` pass run at a time (the notes'
    /// directory's); None when another pass holds it.
    pub fn pass_lock(&self) -> std::io::Result<Option<Flock<File>>> {
        let dir = self.notes_dir();
        if std::fs::symlink_metadata(&self.dir).is_err() {
            own_dir(&self.dir)?;
        }
        own_dir(&dir)?;
        match Flock::lock(open_dir(&dir)?, FlockArg::LockExclusiveNonblock) {
            Ok(held) => Ok(Some(held)),
            Err((_, nix::errno::Errno::EWOULDBLOCK)) => Ok(None),
            Err((_, e)) => Err(e.into()),
        }
    }
}

/// Opens a directory without following a link.
fn open_dir(dir: &Path) -> std::io::Result<File> {
    File::options()
        .read(true)
        .custom_flags(nix::libc::O_DIRECTORY | nix::libc::O_NOFOLLOW | nix::libc::O_CLOEXEC)
        .open(dir)
}

/// Makes `dir` (0700) unless it is there, then checks it is ours alone.
pub fn own_dir(dir: &Path) -> std::io::Result<()> {
    if std::fs::symlink_metadata(dir).is_err() {
        match std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
        {
            Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => return Err(e),
            _ => {}
        }
    }
    check_own_dir(dir)
}

/// `dir` is a directory (not a link) of ours that no one else may write.
fn check_own_dir(dir: &Path) -> std::io::Result<()> {
    let meta = std::fs::symlink_metadata(dir)?;
    if !meta.is_dir() || meta.uid() != nix::unistd::geteuid().as_raw() || meta.mode() & 0o022 != 0 {
        return Err(std::io::Error::other(format!(
            "{}: not a directory of ours that only we may write; refused",
            dir.display()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn side(cluster: &str, login: u64) -> Side {
        Side {
            cluster: cluster.into(),
            login,
            error: "unreachable".into(),
            tries: 0,
        }
    }

    #[test]
    fn a_run_replaces_only_the_clusters_it_covered() {
        let old = Note {
            sides: vec![side("gpu", 10), side("cpu", 10)],
        };
        let new = old.merged(&["cpu".into()], vec![]);
        assert_eq!(new.sides, vec![side("gpu", 10)]);
        let new = new.merged(&["gpu".into()], vec![side("gpu", 20)]);
        assert_eq!(new.sides, vec![side("gpu", 20)]);
        assert!(new.clone().merged(&["gpu".into()], vec![]).is_empty());
    }

    #[test]
    fn a_heal_changes_only_the_login_it_healed() {
        let note = Note {
            sides: vec![side("gpu", 20)],
        };
        // A later login (20) replaced the one healed (10): kept.
        assert_eq!(note.clone().without(&side("gpu", 10)), note);
        assert!(note.clone().without(&side("gpu", 20)).is_empty());
        let tried = note.clone().tried(&side("gpu", 20), "still down");
        assert_eq!(
            (tried.sides[0].tries, tried.sides[0].error.as_str()),
            (1, "still down")
        );
        assert_eq!(note.clone().tried(&side("gpu", 10), "x"), note);
    }

    #[test]
    fn notes_round_trip_and_corrupt_ones_are_errors() {
        let note = Note {
            sides: vec![side("gpu", 20)],
        };
        assert_eq!(Note::parse(&note.to_text()).unwrap(), note);
        assert!(Note::parse("{").unwrap_err().contains("not a note of ours"));
        assert_eq!(note.oldest(), Some(20));
    }

    #[test]
    fn notes_are_stored_listed_and_removed() {
        let dir = std::env::temp_dir().join(format!("ood-pending-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        own_dir(&dir).unwrap();
        let notes = Notes::new(&dir);
        let alice = Username::parse("alice").unwrap();
        assert!(notes.users().unwrap().is_empty());
        let note = Note {
            sides: vec![side("gpu", 20)],
        };
        notes.locked(|| notes.store(&alice, &note)).unwrap();
        assert_eq!(notes.users().unwrap(), vec![alice.clone()]);
        assert_eq!(notes.load(&alice).unwrap(), note);
        let held = notes.pass_lock().unwrap().expect("free");
        assert!(notes.pass_lock().unwrap().is_none(), "one pass at a time");
        drop(held);
        notes
            .locked(|| notes.store(&alice, &Note::default()))
            .unwrap();
        assert!(notes.users().unwrap().is_empty());
        assert!(notes.load(&alice).unwrap().is_empty());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
