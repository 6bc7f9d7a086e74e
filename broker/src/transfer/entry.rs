//! What a selected path is: one file, directory or symlink, with the facts `lstat` gave when
//! it was selected. A leaf shared by the selection (`select`, `untracked`) and the archive
//! writers, so that each depends on it and not on one another.

use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

/// One file, directory or symlink to archive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Relative to the project directory; normal, UTF-8 components only.
    pub relative: PathBuf,
    pub kind: EntryKind,
    /// Modification time (unix seconds) when selected; the archive writers take a regular
    /// file's from the file they open instead.
    pub mtime: i64,
}

/// What an [`Entry`] is, as `lstat` saw it during the selection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntryKind {
    /// `mode` holds the permission bits (`0o7777`); writers drop setuid, setgid and sticky.
    File {
        size: u64,
        mode: u32,
    },
    Dir {
        mode: u32,
    },
    /// The link itself: `target` is what it points to, never followed.
    Symlink {
        target: PathBuf,
    },
}

/// The [`Entry`] for one walked path (its `lstat` facts, a symlink's target read, never
/// followed), or the warning that says why it is skipped: a name that is not UTF-8, a FIFO,
/// socket or device, a path that vanished.
pub(super) fn entry_of(relative: &Path, dent: &walkdir::DirEntry) -> Result<Entry, String> {
    if relative.to_str().is_none() {
        return Err(format!(
            "{}: file name is not UTF-8; skipped",
            relative.display()
        ));
    }
    // With follow_links(false) this is lstat: the entry itself, never a link's target.
    let metadata = dent
        .metadata()
        .map_err(|e| format!("{}: {e}", relative.display()))?;
    let mode = metadata.permissions().mode() & 0o7777;
    let file_type = metadata.file_type();
    let kind = if file_type.is_file() {
        EntryKind::File {
            size: metadata.len(),
            mode,
        }
    } else if file_type.is_dir() {
        EntryKind::Dir { mode }
    } else if file_type.is_symlink() {
        let target =
            std::fs::read_link(dent.path()).map_err(|e| format!("{}: {e}", relative.display()))?;
        EntryKind::Symlink { target }
    } else {
        return Err(format!(
            "{}: not a regular file, directory or symbolic link; skipped",
            relative.display()
        ));
    };
    Ok(Entry {
        relative: relative.to_path_buf(),
        kind,
        mtime: metadata.mtime(),
    })
}
