//! The journal as a directory: one small file per running job, so a runner that crashed and
//! restarted (same pod, same memory-backed volume) can still tell GitLab how its jobs ended.
//! A replacement pod does not see it; the [Secret journal](super::secret) covers that.
//!
//! An entry holds the job token (needed to report the job), so the directory must be on a
//! memory-backed volume private to the runner; files are 0600 and removed when the job ends.

use std::io::Write as _;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use zeroize::Zeroizing;

use super::{Entry, Stored};

/// A journal directory.
#[derive(Debug, Clone)]
pub struct DirJournal {
    dir: PathBuf,
}

impl DirJournal {
    /// Opens (creates, mode 0700) the directory.
    pub fn open(dir: &Path) -> std::io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
        Ok(Self { dir: dir.into() })
    }

    /// Opens one runner's journal: `<dir>/<runner>`, both mode 0700. Each `[[runners]]` entry
    /// has its own, so a restarted process reports each job through the GitLab that gave it.
    pub fn open_for_runner(dir: &Path, runner: &str) -> std::io::Result<Self> {
        Self::open(dir)?;
        Self::open(&dir.join(runner))
    }

    fn path(&self, job_id: u64) -> PathBuf {
        self.dir.join(format!("job-{job_id}.json"))
    }

    /// Records a job before its pod is created; written atomically.
    pub fn record(&self, entry: &Entry) -> std::io::Result<()> {
        let text = entry.to_json();
        let tmp = self.dir.join(format!(".job-{}.tmp", entry.job_id));
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, self.path(entry.job_id))
    }

    /// Forgets a job once GitLab has its final state.
    pub fn remove(&self, job_id: u64) {
        let _ = std::fs::remove_file(self.path(job_id));
    }

    /// Jobs a previous run of this runner left unfinished. Unreadable entries are removed and
    /// reported by path, never by content.
    pub fn unfinished(&self) -> (Vec<Entry>, Vec<String>) {
        let mut entries = Vec::new();
        let mut problems = Vec::new();
        let Ok(dir) = std::fs::read_dir(&self.dir) else {
            return (entries, problems);
        };
        for file in dir.flatten() {
            let path = file.path();
            let name = file.file_name().to_string_lossy().into_owned();
            if !(name.starts_with("job-") && name.ends_with(".json")) {
                continue;
            }
            let parsed = std::fs::read(&path)
                .ok()
                .map(Zeroizing::new)
                .and_then(|bytes| serde_json::from_slice::<Stored>(&bytes).ok());
            match parsed {
                Some(s) => entries.push(s.into()),
                None => {
                    problems.push(format!(
                        "{} is not a journal entry; removed",
                        path.display()
                    ));
                    let _ = std::fs::remove_file(&path);
                }
            }
        }
        entries.sort_by_key(|e| e.job_id);
        (entries, problems)
    }
}

#[cfg(test)]
mod tests {
    use secrecy::{ExposeSecret as _, SecretString};

    use super::*;

    fn tmpdir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("keyhole-journal-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn records_survive_a_restart_and_are_private() {
        let dir = tmpdir("a");
        let j = DirJournal::open(&dir).unwrap();
        j.record(&Entry {
            job_id: 7,
            namespace: "ns".into(),
            pod_name: "kh-7-abc".into(),
            token: SecretString::from("glcbt-secret"),
            instance: "i".into(),
        })
        .unwrap();
        let mode = std::fs::metadata(dir.join("job-7.json"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let again = DirJournal::open(&dir).unwrap();
        let (entries, problems) = again.unfinished();
        assert!(problems.is_empty());
        assert_eq!(entries.len(), 1);
        assert_eq!(entries[0].pod_name, "kh-7-abc");
        assert_eq!(entries[0].token.expose_secret(), "glcbt-secret");
        assert!(!format!("{:?}", entries[0]).contains("glcbt-secret"));
        again.remove(7);
        assert!(again.unfinished().0.is_empty());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn each_runner_keeps_its_own_entries() {
        let dir = tmpdir("c");
        let entry = |job_id| Entry {
            job_id,
            namespace: "ns".into(),
            pod_name: format!("kh-{job_id}"),
            token: SecretString::from("t"),
            instance: "i".into(),
        };
        let a = DirJournal::open_for_runner(&dir, "a").unwrap();
        let b = DirJournal::open_for_runner(&dir, "b").unwrap();
        a.record(&entry(1)).unwrap();
        b.record(&entry(1)).unwrap();
        b.record(&entry(2)).unwrap();
        a.remove(1);
        assert!(a.unfinished().0.is_empty());
        let left: Vec<u64> = b.unfinished().0.iter().map(|e| e.job_id).collect();
        assert_eq!(left, [1, 2]);
        let mode = std::fs::metadata(&dir).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn garbage_entries_are_removed_and_reported_without_content() {
        let dir = tmpdir("b");
        let j = DirJournal::open(&dir).unwrap();
        std::fs::write(dir.join("job-9.json"), "token=hunter2").unwrap();
        let (entries, problems) = j.unfinished();
        assert!(entries.is_empty());
        assert_eq!(problems.len(), 1);
        assert!(!problems[0].contains("hunter2"));
        assert!(!dir.join("job-9.json").exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
