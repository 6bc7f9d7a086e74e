//! Extracting a downloaded artifacts or cache zip into the project directory, with
//! gitlab-runner's semantics (`helpers/archives/zip_extract.go`): directories created, existing
//! files replaced, symlinks restored as symlinks, permissions restored (`& 0o777`, so no
//! setuid, setgid or sticky bit), modification times of files restored.
//!
//! The archive was made by a job, so it is hostile. What it cannot do here:
//! - name a path outside the root: entries with an absolute path, a `..` component, or a
//!   Windows drive or UNC prefix (`\` counts as a separator for this test) are skipped;
//! - write through a symlink: every directory on an entry's path is opened one component at a
//!   time with `O_NOFOLLOW | O_DIRECTORY`, so a symlink there (one the archive itself made, as
//!   in `link -> /etc` followed by `link/passwd`, or one already in the root) is never
//!   traversed; the entry is skipped. A file or symlink entry replaces whatever non-directory
//!   is at its own path (`unlink`, then `O_CREAT | O_EXCL | O_NOFOLLOW`), so neither a symlink
//!   nor a hard link there is written through;
//! - exhaust memory: each entry is streamed to disk through a fixed buffer, symlink targets
//!   are read up to `PATH_MAX`;
//! - panic the extractor: zip parse errors are [`ArchiveError`]s naming the archive.
//!
//! Entry-level refusals are warnings in [`Extracted`] and the extraction goes on, as
//! gitlab-runner goes on after a failed entry: the archive's other files are still the job's
//! artifacts. An archive whose data is broken (bad CRC, truncated, encrypted, an unknown
//! compression method) is an error: its contents cannot be trusted to be what the job made.
//! A symlink entry's target may point anywhere, as gitlab-runner restores them; the job that
//! reads the files follows it at its own risk, the extractor never does.

use std::ffi::OsStr;
use std::fs::File;
use std::io::{BufReader, Read, Seek};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt as _;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag, openat};
use nix::sys::stat::{Mode, SFlag, fchmod, fstatat, futimens, mkdirat};
use nix::sys::time::TimeSpec;
use nix::unistd::{UnlinkatFlags, symlinkat, unlinkat};
use zip::ZipArchive;
use zip::read::ZipFile;

use super::archive::{ArchiveError, CopyError, copy_counted, is_type, open_dir_beneath, open_root};
use super::dos_time::unix_time;

/// What [`extract_zip`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Extracted {
    /// Regular files written.
    pub files: u64,
    /// Their bytes.
    pub bytes: u64,
    /// Entries skipped and metadata not restored, with the reason (at most
    /// [`MAX_WARNINGS`], then one line saying more were left out).
    pub warnings: Vec<String>,
    /// Entries skipped, all of them (the warnings may stop before).
    pub skipped: u64,
}

/// Warnings kept per extraction: a hostile archive of a million bad entries must not become
/// a million log lines (gitlab-runner also suppresses repeats).
pub const MAX_WARNINGS: usize = 100;

/// Longest symlink target restored (Linux `PATH_MAX`, terminating NUL included).
const MAX_LINK_TARGET: u64 = 4095;

/// Extracts the zip archive at `archive` into `root`, see the module documentation.
///
/// # Errors
/// [`ArchiveError::Root`] when `root` is not a directory; [`ArchiveError::Unreadable`] when
/// `archive` cannot be opened or is not a zip archive; [`ArchiveError::Entry`] when an entry's
/// data is broken; [`ArchiveError::Extract`] when writing under `root` fails for a reason
/// other than the entry's path (no space, no permission). Entries before the failing one stay
/// extracted.
pub fn extract_zip(archive: &Path, root: &Path) -> Result<Extracted, ArchiveError> {
    let file = File::open(archive).map_err(|e| ArchiveError::Unreadable {
        archive: archive.to_owned(),
        source: zip::result::ZipError::Io(e),
    })?;
    extract_zip_from(BufReader::new(file), archive, root)
}

/// [`extract_zip`] from any seekable reader; `archive` only names it in errors.
///
/// # Errors
/// As [`extract_zip`].
pub fn extract_zip_from<R: Read + Seek>(
    reader: R,
    archive: &Path,
    root: &Path,
) -> Result<Extracted, ArchiveError> {
    let root_fd = open_root(root)?;
    let mut zip = ZipArchive::new(reader).map_err(|source| ArchiveError::Unreadable {
        archive: archive.to_owned(),
        source,
    })?;
    let mut run = Extraction {
        archive,
        root,
        root_fd,
        out: Extracted::default(),
        dir_modes: Vec::new(),
    };
    for index in 0..zip.len() {
        let label = entry_label(&zip, index);
        let entry = zip.by_index(index).map_err(|e| ArchiveError::Entry {
            archive: archive.to_owned(),
            entry: label.clone(),
            reason: e.to_string(),
        })?;
        run.entry(&label, entry)?;
    }
    run.restore_dir_modes();
    Ok(run.out)
}

/// An entry's name for messages (lossy: names are bytes; a direct look-up, not a scan).
fn entry_label<R: Read + Seek>(zip: &ZipArchive<R>, index: usize) -> String {
    match zip.name_for_index(index) {
        Some(Ok(name)) => name.into_owned(),
        _ => format!("#{index}"),
    }
}

// === Entry names and kinds (pure) ===

/// The components of an entry name to create beneath the root, or `None` if the name is not
/// safe: absolute, with a `..`, a NUL, or a Windows drive (`C:`) or UNC (`\\host`) prefix.
/// For the test `\` separates components too (what a Windows reader of the same archive
/// would see); the components made are split at `/` only, as on Linux `\` is a name byte.
/// `.` and empty components are dropped, so `./a//b` is `a/b`.
fn safe_components(name: &[u8]) -> Option<Vec<&OsStr>> {
    let is_separator = |b: &u8| *b == b'/' || *b == b'\\';
    if name.contains(&0) || name.first().is_some_and(is_separator) {
        return None;
    }
    let mut pieces = name.split(is_separator);
    let drive = |piece: &[u8]| matches!(piece, [letter, b':', ..] if letter.is_ascii_alphabetic());
    if pieces.next().is_some_and(drive) || name.split(is_separator).any(|p| p == b"..") {
        return None;
    }
    Some(
        name.split(|b| *b == b'/')
            .filter(|p| !p.is_empty() && *p != b".")
            .map(OsStr::from_bytes)
            .collect(),
    )
}

/// What an entry is, from its name and its unix mode (Go's `archive/zip` reads them the same
/// way: a trailing `/` or `S_IFDIR` is a directory).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Dir {
        mode: u32,
    },
    File {
        mode: u32,
    },
    Symlink,
    /// FIFO, socket, device: skipped, as gitlab-runner does.
    Other,
}

fn kind_of(name: &[u8], unix_mode: Option<u32>) -> Kind {
    let format = unix_mode.map(|m| m & SFlag::S_IFMT.bits());
    let permissions = unix_mode.map(|m| m & 0o777);
    if name.ends_with(b"/") || format == Some(SFlag::S_IFDIR.bits()) {
        return Kind::Dir {
            mode: permissions.unwrap_or(0o755),
        };
    }
    match format {
        None | Some(0) => Kind::File {
            mode: permissions.unwrap_or(0o644),
        },
        Some(f) if f == SFlag::S_IFREG.bits() => Kind::File {
            mode: permissions.unwrap_or(0o644),
        },
        Some(f) if f == SFlag::S_IFLNK.bits() => Kind::Symlink,
        Some(_) => Kind::Other,
    }
}

/// An entry's modification time: the extended-timestamp field if there is one (unix
/// seconds), else the DOS time read as UTC (as Go's `archive/zip`).
fn mtime_of<R: Read>(entry: &ZipFile<'_, R>) -> Option<i64> {
    let extended = entry.extra_data_fields().find_map(|field| match field {
        zip::ExtraField::ExtendedTimestamp(ts) => ts.mod_time(),
        _ => None,
    });
    match extended {
        Some(seconds) => Some(i64::from(seconds)),
        None => entry.last_modified().map(|t| unix_time(&t)),
    }
}

/// `errno`s that an entry's own path causes (a symlink or file where a directory is needed, a
/// name too long): the entry is skipped. Any other failure is the root's (no space, no
/// permission) and ends the extraction.
fn caused_by_entry(errno: Errno) -> bool {
    matches!(errno, Errno::ELOOP | Errno::ENOTDIR | Errno::ENAMETOOLONG)
}

// === The extraction ===

/// One extraction in progress.
struct Extraction<'a> {
    archive: &'a Path,
    root: &'a Path,
    root_fd: OwnedFd,
    out: Extracted,
    /// Directory modes, set after every entry is written (a read-only directory must not stop
    /// its own files from being extracted), deepest first.
    dir_modes: Vec<(PathBuf, u32)>,
}

impl Extraction<'_> {
    fn skip(&mut self, warning: String) {
        self.out.skipped += 1;
        self.warn(warning);
    }

    fn warn(&mut self, warning: String) {
        match self.out.warnings.len() {
            n if n < MAX_WARNINGS => self.out.warnings.push(warning),
            n if n == MAX_WARNINGS => self
                .out
                .warnings
                .push("(further warnings left out)".to_owned()),
            _ => {}
        }
    }

    fn extract_error(&self, label: &str, components: &[&OsStr], errno: Errno) -> ArchiveError {
        ArchiveError::Extract {
            entry: label.to_owned(),
            path: components
                .iter()
                .fold(self.root.to_owned(), |p, c| p.join(c)),
            source: errno.into(),
        }
    }

    fn entry<R: Read>(
        &mut self,
        label: &str,
        mut entry: ZipFile<'_, R>,
    ) -> Result<(), ArchiveError> {
        let raw = entry.name_raw().to_vec();
        let Some(components) = safe_components(&raw) else {
            self.skip(format!(
                "{label}: unsafe path (absolute, `..`, or a drive or UNC prefix); skipped"
            ));
            return Ok(());
        };
        if components.is_empty() {
            return Ok(()); // `./`: the root itself
        }
        match kind_of(&raw, entry.unix_mode()) {
            Kind::Dir { mode } => self.dir(label, &components, mode),
            Kind::File { mode } => {
                let mtime = mtime_of(&entry);
                self.file(label, &components, mode, mtime, &mut entry)
            }
            Kind::Symlink => self.symlink(label, &components, &mut entry),
            Kind::Other => {
                self.skip(format!(
                    "{label}: not a regular file, directory or symbolic link; skipped"
                ));
                Ok(())
            }
        }
    }

    /// The directory that will hold the entry's last component, created as needed, reached
    /// without following a symlink; `None` (and a warning) if a symlink or file is in the way.
    fn parent<'c>(
        &mut self,
        label: &str,
        components: &[&'c OsStr],
    ) -> Result<Option<(OwnedFd, &'c OsStr)>, ArchiveError> {
        let Some((name, parents)) = components.split_last() else {
            return Ok(None);
        };
        match open_dir_beneath(self.root_fd.as_fd(), parents, true) {
            Ok(fd) => Ok(Some((fd, *name))),
            Err(errno) if caused_by_entry(errno) => {
                self.skip(format!(
                    "{label}: a directory on its path is a symbolic link or a file ({errno}); skipped, nothing is written through a symbolic link"
                ));
                Ok(None)
            }
            Err(errno) => Err(self.extract_error(label, parents, errno)),
        }
    }

    /// Makes room for a new file or symlink at `name`: removes a file or symlink there (never
    /// following it), or an empty directory, as gitlab-runner's `os.Remove`. `false` (and a
    /// warning) if a non-empty directory is in the way.
    fn clear(
        &mut self,
        label: &str,
        components: &[&OsStr],
        parent: &OwnedFd,
        name: &OsStr,
    ) -> Result<bool, ArchiveError> {
        let stat = match fstatat(parent, name, AtFlags::AT_SYMLINK_NOFOLLOW) {
            Ok(stat) => stat,
            Err(Errno::ENOENT) => return Ok(true),
            Err(errno) if caused_by_entry(errno) => {
                self.skip(format!("{label}: {errno}; skipped"));
                return Ok(false);
            }
            Err(errno) => return Err(self.extract_error(label, components, errno)),
        };
        let flag = if is_type(stat.st_mode, SFlag::S_IFDIR) {
            UnlinkatFlags::RemoveDir
        } else {
            UnlinkatFlags::NoRemoveDir
        };
        match unlinkat(parent, name, flag) {
            Ok(()) | Err(Errno::ENOENT) => Ok(true),
            Err(Errno::ENOTEMPTY | Errno::EEXIST) => {
                self.skip(format!("{label}: a directory is in the way; skipped"));
                Ok(false)
            }
            Err(errno) => Err(self.extract_error(label, components, errno)),
        }
    }

    fn dir(&mut self, label: &str, components: &[&OsStr], mode: u32) -> Result<(), ArchiveError> {
        let Some((parent, name)) = self.parent(label, components)? else {
            return Ok(());
        };
        let existing = fstatat(&parent, name, AtFlags::AT_SYMLINK_NOFOLLOW);
        let is_dir = matches!(&existing, Ok(stat) if is_type(stat.st_mode, SFlag::S_IFDIR));
        if !is_dir {
            // A file or symlink at a directory's path gives way, as for a file entry.
            if existing.is_ok() && !self.clear(label, components, &parent, name)? {
                return Ok(());
            }
            match mkdirat(&parent, name, Mode::from_bits_truncate(0o777)) {
                Ok(()) | Err(Errno::EEXIST) => {}
                Err(errno) if caused_by_entry(errno) => {
                    self.skip(format!("{label}: {errno}; skipped"));
                    return Ok(());
                }
                Err(errno) => return Err(self.extract_error(label, components, errno)),
            }
        }
        self.dir_modes
            .push((components.iter().collect::<PathBuf>(), mode));
        Ok(())
    }

    fn file<R: Read>(
        &mut self,
        label: &str,
        components: &[&OsStr],
        mode: u32,
        mtime: Option<i64>,
        entry: &mut ZipFile<'_, R>,
    ) -> Result<(), ArchiveError> {
        let Some((parent, name)) = self.parent(label, components)? else {
            return Ok(());
        };
        if !self.clear(label, components, &parent, name)? {
            return Ok(());
        }
        let flags =
            OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
        let fd = match openat(&parent, name, flags, Mode::from_bits_truncate(0o600)) {
            Ok(fd) => fd,
            Err(errno) if caused_by_entry(errno) => {
                self.skip(format!("{label}: {errno}; skipped"));
                return Ok(());
            }
            Err(errno) => return Err(self.extract_error(label, components, errno)),
        };
        let mut file = File::from(fd);
        let bytes = match copy_counted(entry, &mut file) {
            Ok(bytes) => bytes,
            Err(CopyError::Read(e)) => {
                // Broken data: leave no half file behind that looks like the job's.
                let _ = unlinkat(&parent, name, UnlinkatFlags::NoRemoveDir);
                return Err(ArchiveError::Entry {
                    archive: self.archive.to_owned(),
                    entry: label.to_owned(),
                    reason: e.to_string(),
                });
            }
            Err(CopyError::Write(e)) => {
                return Err(ArchiveError::Extract {
                    entry: label.to_owned(),
                    path: components
                        .iter()
                        .fold(self.root.to_owned(), |p, c| p.join(c)),
                    source: e,
                });
            }
        };
        if let Err(errno) = fchmod(&file, Mode::from_bits_truncate(mode)) {
            self.warn(format!("{label}: setting mode {mode:o}: {errno}"));
        }
        if let Some(seconds) = mtime {
            let time = TimeSpec::new(seconds, 0);
            if let Err(errno) = futimens(&file, &time, &time) {
                self.warn(format!("{label}: setting the modification time: {errno}"));
            }
        }
        self.out.files += 1;
        self.out.bytes += bytes;
        Ok(())
    }

    fn symlink<R: Read>(
        &mut self,
        label: &str,
        components: &[&OsStr],
        entry: &mut ZipFile<'_, R>,
    ) -> Result<(), ArchiveError> {
        let mut target = Vec::new();
        Read::by_ref(entry)
            .take(MAX_LINK_TARGET + 1)
            .read_to_end(&mut target)
            .map_err(|e| ArchiveError::Entry {
                archive: self.archive.to_owned(),
                entry: label.to_owned(),
                reason: e.to_string(),
            })?;
        if target.is_empty() || target.contains(&0) || target.len() as u64 > MAX_LINK_TARGET {
            self.skip(format!(
                "{label}: symbolic link target is empty, too long or holds a NUL; skipped"
            ));
            return Ok(());
        }
        let Some((parent, name)) = self.parent(label, components)? else {
            return Ok(());
        };
        if !self.clear(label, components, &parent, name)? {
            return Ok(());
        }
        match symlinkat(OsStr::from_bytes(&target), &parent, name) {
            Ok(()) => Ok(()),
            Err(errno) if caused_by_entry(errno) => {
                self.skip(format!("{label}: {errno}; skipped"));
                Ok(())
            }
            Err(errno) => Err(self.extract_error(label, components, errno)),
        }
    }

    /// Sets the directories' modes, deepest first (a parent made unsearchable must not hide
    /// its children), each reached again without following a symlink. Failures are warnings,
    /// as in gitlab-runner.
    fn restore_dir_modes(&mut self) {
        let mut dir_modes = std::mem::take(&mut self.dir_modes);
        dir_modes.sort_by_key(|(path, _)| std::cmp::Reverse(path.components().count()));
        for (path, mode) in dir_modes {
            let components: Vec<&OsStr> = path.iter().collect();
            let result = open_dir_beneath(self.root_fd.as_fd(), &components, false)
                .and_then(|fd| fchmod(&fd, Mode::from_bits_truncate(mode)));
            if let Err(errno) = result {
                self.warn(format!(
                    "{}: setting mode {mode:o}: {errno}",
                    path.display()
                ));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Cursor, Write as _};
    use std::os::unix::fs::{PermissionsExt as _, symlink};

    use zip::write::SimpleFileOptions;

    use super::*;
    use crate::transfer::archive::{Compression, write_zip};
    use crate::transfer::select::select;

    /// One entry of a hand-made (hostile) archive.
    enum Item<'a> {
        File(&'a str, &'a [u8]),
        Dir(&'a str),
        Link(&'a str, &'a str),
    }

    fn archive(items: &[Item<'_>]) -> Vec<u8> {
        let mut zip = zip::ZipWriter::new(Cursor::new(Vec::new()));
        let options = SimpleFileOptions::default();
        for item in items {
            match item {
                Item::File(name, content) => {
                    zip.start_file(*name, options).unwrap();
                    zip.write_all(content).unwrap();
                }
                Item::Dir(name) => zip.add_directory(*name, options).unwrap(),
                Item::Link(name, target) => zip.add_symlink(*name, *target, options).unwrap(),
            }
        }
        zip.finish().unwrap().into_inner()
    }

    fn extract(bytes: Vec<u8>, root: &Path) -> Result<Extracted, ArchiveError> {
        extract_zip_from(Cursor::new(bytes), Path::new("test.zip"), root)
    }

    /// A temp dir with `root/` to extract into and `outside/victim` that must survive.
    fn sandbox() -> (tempfile::TempDir, PathBuf, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        let outside = dir.path().join("outside");
        std::fs::create_dir(&root).unwrap();
        std::fs::create_dir(&outside).unwrap();
        std::fs::write(outside.join("victim"), b"original").unwrap();
        (dir, root, outside)
    }

    /// Everything beneath `dir`, relative, sorted (without following symlinks).
    fn listing(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = walkdir::WalkDir::new(dir)
            .min_depth(1)
            .into_iter()
            .map(|e| {
                let e = e.unwrap();
                e.path().strip_prefix(dir).unwrap().display().to_string()
            })
            .collect();
        names.sort();
        names
    }

    fn assert_outside_untouched(outside: &Path) {
        assert_eq!(listing(outside), ["victim"]);
        assert_eq!(std::fs::read(outside.join("victim")).unwrap(), b"original");
    }

    #[test]
    fn safe_components_refuse_escapes_and_drop_dots() {
        let ok = |name: &str| {
            safe_components(name.as_bytes()).map(|c| {
                c.iter()
                    .map(|c| c.to_str().unwrap().to_owned())
                    .collect::<Vec<_>>()
            })
        };
        assert_eq!(ok("a/b.txt"), Some(vec!["a".into(), "b.txt".into()]));
        assert_eq!(ok("./a//b/"), Some(vec!["a".into(), "b".into()]));
        assert_eq!(ok("a\\b"), Some(vec!["a\\b".into()]));
        for bad in [
            "/etc/passwd",
            "../evil",
            "a/../../evil",
            "a/..",
            "..\\evil",
            "a\\..\\..\\evil",
            "\\\\host\\share\\x",
            "\\evil",
            "C:\\Windows\\x",
            "c:/x",
            "D:",
            "nul\0byte",
        ] {
            assert_eq!(ok(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn kinds_follow_the_name_and_the_unix_mode() {
        assert_eq!(kind_of(b"d/", None), Kind::Dir { mode: 0o755 });
        assert_eq!(kind_of(b"d", Some(0o040_700)), Kind::Dir { mode: 0o700 });
        assert_eq!(kind_of(b"f", None), Kind::File { mode: 0o644 });
        assert_eq!(kind_of(b"f", Some(0o104_755)), Kind::File { mode: 0o755 });
        assert_eq!(kind_of(b"f", Some(0o600)), Kind::File { mode: 0o600 });
        assert_eq!(kind_of(b"l", Some(0o120_777)), Kind::Symlink);
        assert_eq!(kind_of(b"p", Some(0o010_644)), Kind::Other);
        assert_eq!(kind_of(b"s", Some(0o140_755)), Kind::Other);
    }

    #[test]
    fn round_trip_is_byte_exact_with_modes_empty_dirs_symlinks_and_mtimes() {
        let src = tempfile::tempdir().unwrap();
        let s = src.path();
        std::fs::create_dir_all(s.join("dist/empty")).unwrap();
        std::fs::create_dir_all(s.join("dist/private")).unwrap();
        std::fs::set_permissions(
            s.join("dist/private"),
            std::fs::Permissions::from_mode(0o700),
        )
        .unwrap();
        let big: Vec<u8> = (0..300_000u32)
            .flat_map(|i| (i * 7919).to_le_bytes())
            .collect();
        std::fs::write(s.join("dist/big.bin"), &big).unwrap();
        std::fs::write(s.join("dist/run.sh"), b"#!/bin/sh\necho hi\n").unwrap();
        std::fs::set_permissions(
            s.join("dist/run.sh"),
            std::fs::Permissions::from_mode(0o750),
        )
        .unwrap();
        std::fs::write(s.join("dist/private/ro"), b"read only").unwrap();
        std::fs::set_permissions(
            s.join("dist/private/ro"),
            std::fs::Permissions::from_mode(0o444),
        )
        .unwrap();
        std::fs::write(s.join("dist/naïve ünïcode.txt"), b"utf-8 name").unwrap();
        symlink("run.sh", s.join("dist/link")).unwrap();
        let mtime = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_600_000_000);
        File::options()
            .write(true)
            .open(s.join("dist/run.sh"))
            .unwrap()
            .set_modified(mtime)
            .unwrap();

        let selection = select(s, &["dist".into()], &[]).unwrap();
        let mut zip = Cursor::new(Vec::new());
        let packed = write_zip(s, &selection.entries, &mut zip, Compression::Slowest).unwrap();
        assert_eq!(packed.files, 4);

        let dst = tempfile::tempdir().unwrap();
        let d = dst.path();
        let extracted = extract(zip.into_inner(), d).unwrap();
        assert_eq!((extracted.files, extracted.bytes), (4, packed.bytes));
        assert!(extracted.warnings.is_empty(), "{:?}", extracted.warnings);

        assert_eq!(listing(s), listing(d));
        assert_eq!(std::fs::read(d.join("dist/big.bin")).unwrap(), big);
        assert_eq!(
            std::fs::read(d.join("dist/naïve ünïcode.txt")).unwrap(),
            b"utf-8 name"
        );
        let mode = |p: &str| {
            std::fs::symlink_metadata(d.join(p))
                .unwrap()
                .permissions()
                .mode()
                & 0o7777
        };
        assert_eq!(mode("dist/run.sh"), 0o750);
        assert_eq!(mode("dist/private"), 0o700);
        assert_eq!(mode("dist/private/ro"), 0o444);
        assert!(d.join("dist/empty").is_dir());
        assert_eq!(
            std::fs::read_link(d.join("dist/link")).unwrap(),
            Path::new("run.sh")
        );
        let modified = std::fs::metadata(d.join("dist/run.sh"))
            .unwrap()
            .modified()
            .unwrap();
        assert_eq!(
            modified
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_secs(),
            1_600_000_000
        );
    }

    #[test]
    fn parent_dir_and_absolute_entries_are_skipped() {
        let (_dir, root, outside) = sandbox();
        let bytes = archive(&[
            Item::File("../outside/victim", b"pwned"),
            Item::File("../evil", b"pwned"),
            Item::File("/abs", b"pwned"),
            Item::File("a/../../outside/victim", b"pwned"),
            Item::File("C:\\evil", b"pwned"),
            Item::File("ok.txt", b"fine"),
        ]);
        let extracted = extract(bytes, &root).unwrap();
        assert_eq!(extracted.files, 1);
        assert_eq!(extracted.skipped, 5);
        assert!(extracted.warnings[0].starts_with("../outside/victim: unsafe path"));
        assert_eq!(listing(&root), ["ok.txt"]);
        assert_outside_untouched(&outside);
        assert!(!root.parent().unwrap().join("evil").exists());
        assert!(!Path::new("/abs").exists());
    }

    #[test]
    fn a_symlink_made_by_the_archive_is_never_written_through() {
        let (_dir, root, outside) = sandbox();
        let outside_text = outside.to_str().unwrap().to_owned();
        let bytes = archive(&[
            Item::Link("link", &outside_text),
            Item::File("link/victim", b"pwned"),
            Item::File("link/new", b"pwned"),
            Item::Link("up", ".."),
            Item::File("up/outside/victim", b"pwned"),
            Item::Dir("up/outside/"),
            Item::Link("nested/l", "../.."),
            Item::File("nested/l/outside/victim", b"pwned"),
        ]);
        let extracted = extract(bytes, &root).unwrap();
        assert_eq!(extracted.files, 0);
        assert_eq!(extracted.skipped, 5, "{:?}", extracted.warnings);
        assert!(
            extracted.warnings[0]
                .starts_with("link/victim: a directory on its path is a symbolic link")
        );
        assert_outside_untouched(&outside);
        assert_eq!(std::fs::read_link(root.join("link")).unwrap(), outside);
        assert_eq!(
            std::fs::read_link(root.join("up")).unwrap(),
            Path::new("..")
        );
    }

    #[test]
    fn a_preexisting_symlink_at_a_file_path_is_replaced_not_followed() {
        let (_dir, root, outside) = sandbox();
        symlink(outside.join("victim"), root.join("report.txt")).unwrap();
        symlink(&outside, root.join("dir")).unwrap();
        let bytes = archive(&[
            Item::File("report.txt", b"new report"),
            Item::File("dir/victim", b"pwned"),
            Item::Dir("dir/"),
            Item::File("dir/new", b"inside now"),
        ]);
        let extracted = extract(bytes, &root).unwrap();
        assert_eq!(extracted.files, 2, "{:?}", extracted.warnings);
        assert_eq!(extracted.skipped, 1);
        let report = std::fs::symlink_metadata(root.join("report.txt")).unwrap();
        assert!(report.file_type().is_file());
        assert_eq!(
            std::fs::read(root.join("report.txt")).unwrap(),
            b"new report"
        );
        assert!(
            std::fs::symlink_metadata(root.join("dir"))
                .unwrap()
                .is_dir()
        );
        assert_eq!(listing(&root.join("dir")), ["new"]);
        assert_eq!(std::fs::read(root.join("dir/new")).unwrap(), b"inside now");
        assert_outside_untouched(&outside);
    }

    #[test]
    fn a_preexisting_hard_link_is_replaced_not_written_through() {
        let (_dir, root, outside) = sandbox();
        std::fs::hard_link(outside.join("victim"), root.join("shared")).unwrap();
        let extracted = extract(archive(&[Item::File("shared", b"pwned")]), &root).unwrap();
        assert_eq!(extracted.files, 1);
        assert_eq!(std::fs::read(root.join("shared")).unwrap(), b"pwned");
        assert_outside_untouched(&outside);
    }

    #[test]
    fn existing_files_are_overwritten_and_non_empty_directories_are_not() {
        let (_dir, root, _outside) = sandbox();
        std::fs::write(root.join("old"), b"old content that is longer").unwrap();
        std::fs::create_dir_all(root.join("busy/child")).unwrap();
        std::fs::create_dir(root.join("empty")).unwrap();
        let bytes = archive(&[
            Item::File("old", b"new"),
            Item::File("busy", b"x"),
            Item::File("empty", b"now a file"),
            Item::File("old/under", b"x"),
        ]);
        let extracted = extract(bytes, &root).unwrap();
        assert_eq!(std::fs::read(root.join("old")).unwrap(), b"new");
        assert!(root.join("busy/child").is_dir());
        assert_eq!(std::fs::read(root.join("empty")).unwrap(), b"now a file");
        assert_eq!(extracted.files, 2);
        assert_eq!(extracted.skipped, 2, "{:?}", extracted.warnings);
    }

    #[test]
    fn read_only_directories_get_their_mode_after_their_files() {
        let (_dir, root, _outside) = sandbox();
        let mut zip = zip::ZipWriter::new(Cursor::new(Vec::new()));
        let ro = SimpleFileOptions::default().unix_permissions(0o555);
        zip.add_directory("locked/", ro).unwrap();
        zip.start_file("locked/file", SimpleFileOptions::default())
            .unwrap();
        zip.write_all(b"x").unwrap();
        let bytes = zip.finish().unwrap().into_inner();
        let extracted = extract(bytes, &root).unwrap();
        assert_eq!(extracted.files, 1, "{:?}", extracted.warnings);
        let mode = std::fs::metadata(root.join("locked"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o555);
        std::fs::set_permissions(root.join("locked"), std::fs::Permissions::from_mode(0o755))
            .unwrap();
    }

    #[test]
    fn garbage_and_truncated_archives_are_errors_naming_the_archive() {
        let (_dir, root, _outside) = sandbox();
        let err = extract(b"not a zip at all".to_vec(), &root).unwrap_err();
        assert!(matches!(err, ArchiveError::Unreadable { .. }), "{err}");
        assert!(err.to_string().starts_with("test.zip: "), "{err}");

        let mut zip = zip::ZipWriter::new(Cursor::new(Vec::new()));
        let stored =
            SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
        zip.start_file("data", stored).unwrap();
        zip.write_all(&[7u8; 10_000]).unwrap();
        let mut bytes = zip.finish().unwrap().into_inner();
        // Corrupt the stored data (after the 30-byte header and the 4-byte name).
        for byte in bytes.iter_mut().skip(100).take(20) {
            *byte ^= 0xff;
        }
        let err = extract(bytes, &root).unwrap_err();
        assert!(matches!(err, ArchiveError::Entry { .. }), "{err}");
        assert!(err.to_string().contains("\"data\""), "{err}");
        assert!(!root.join("data").exists(), "no half-written file is left");

        let missing = extract_zip(&root.join("missing.zip"), &root).unwrap_err();
        assert!(
            matches!(missing, ArchiveError::Unreadable { .. }),
            "{missing}"
        );
    }

    #[test]
    fn overlong_and_empty_symlink_targets_are_skipped() {
        let (_dir, root, _outside) = sandbox();
        let long = "x".repeat(5000);
        let bytes = archive(&[Item::Link("long", &long), Item::Link("empty", "")]);
        let extracted = extract(bytes, &root).unwrap();
        assert_eq!(extracted.skipped, 2);
        assert!(listing(&root).is_empty());
    }

    #[test]
    fn warnings_stop_at_the_cap_but_skips_are_all_counted() {
        let (_dir, root, _outside) = sandbox();
        let names: Vec<String> = (0..MAX_WARNINGS + 10).map(|i| format!("../e{i}")).collect();
        let items: Vec<Item<'_>> = names.iter().map(|n| Item::File(n.as_str(), b"x")).collect();
        let extracted = extract(archive(&items), &root).unwrap();
        assert_eq!(extracted.skipped, (MAX_WARNINGS + 10) as u64);
        assert_eq!(extracted.warnings.len(), MAX_WARNINGS + 1);
    }

    /// A small archive with every kind of entry and the hostile shapes, for mutation.
    fn hostile_sample(outside: &str) -> Vec<u8> {
        archive(&[
            Item::Dir("d/"),
            Item::File("d/f", b"file content"),
            Item::Link("link", outside),
            Item::File("link/victim", b"pwned"),
            Item::Link("up", ".."),
            Item::File("../victim", b"pwned"),
            Item::File("e/g", b"more"),
        ])
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(300))]

        /// What the fuzz target `extract_zip` checks, on stable: damaged archives (flipped
        /// bytes, truncation) give an error or warnings, never a panic or a write outside.
        #[test]
        fn damaged_archives_never_panic_or_write_outside(
            flips in proptest::collection::vec((proptest::prelude::any::<usize>(), 1u8..), 1..6),
            cut in proptest::prelude::any::<usize>(),
        ) {
            let (dir, root, outside) = sandbox();
            let mut bytes = hostile_sample(outside.to_str().unwrap());
            let len = bytes.len();
            for (at, value) in flips {
                if let Some(byte) = bytes.get_mut(at % len) {
                    *byte ^= value;
                }
            }
            if cut % 3 == 0 {
                bytes.truncate(cut % len);
            }
            let _ = extract(bytes, &root);
            assert_outside_untouched(&outside);
            let mut top: Vec<String> = std::fs::read_dir(dir.path())
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            top.sort();
            proptest::prop_assert_eq!(top, ["outside", "root"]);
        }
    }
}
