//! Writing a [`Selection`](super::select::Selection) as the archives GitLab accepts: `zip` (the
//! artifacts and cache format) and `gzip` (concatenated members, the format of some reports).
//!
//! Between `select()` and the writer the job's files may change (the job's processes can still
//! run in other containers, or left something behind that does): a regular file may have become
//! a symlink to a Secret of another mount, a directory on its path a symlink to `/`, a FIFO that
//! would block a read forever. So every file is opened by walking down from the project
//! directory one component at a time with `O_NOFOLLOW` (a symlink anywhere fails the open), with
//! `O_NONBLOCK` (a FIFO does not block the open), and is then checked with `fstat` to be a
//! regular file; what fails those checks is skipped with a warning, like gitlab-runner's
//! "File ignored" for files that vanished since they were listed.
//!
//! The error type of the whole `transfer` module, [`ArchiveError`], lives here, as do the few
//! file-system primitives `extract` shares (walking beneath a root without following symlinks,
//! a copy that tells read errors from write errors, zip timestamps).

use std::collections::VecDeque;
use std::ffi::OsStr;
use std::fs::File;
use std::io::{self, Read, Seek, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Component, Path, PathBuf};

use super::deflate_pool::{CHUNK, DICTIONARY, DeflatePool, Pending};
use super::entry::{Entry, EntryKind};
use super::zip_writer::{Header, Method, ZipStream};
use flate2::GzBuilder;
use nix::errno::Errno;
use nix::fcntl::{OFlag, openat};
use nix::sys::stat::{Mode, SFlag, fstat};

/// Why archiving, selecting or extracting failed. Problems with single files that the job may
/// have caused (a file replaced since it was selected, an unsafe archive entry) are not errors
/// but warnings in the result; these are the failures that make the whole archive unusable.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    /// The project directory (or the directory to extract into) cannot be opened.
    #[error("directory {root}: {source}")]
    Root { root: PathBuf, source: io::Error },
    /// An `exclude:` pattern that is not a glob. An error, not a warning: ignoring it would
    /// archive files the job meant to leave out.
    #[error("exclude pattern {pattern:?}: {reason}")]
    ExcludePattern { pattern: String, reason: String },
    /// An [`Entry`] whose path is not relative, of normal UTF-8 components (`select` never
    /// makes one: a caller's bug, refused rather than written into the archive).
    #[error("entry {path:?}: not a relative path of normal UTF-8 components")]
    EntryPath { path: PathBuf },
    /// Reading a file of the project directory failed (other than by being replaced).
    #[error("reading {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    /// Writing the archive failed (the output, or the zip writer).
    #[error("writing the archive at {entry}: {source}")]
    Write { entry: String, source: io::Error },
    /// The archive to extract cannot be opened or is not a zip archive.
    #[error("{archive}: not a readable zip archive: {source}")]
    Unreadable {
        archive: PathBuf,
        source: zip::result::ZipError,
    },
    /// The data of one entry cannot be read: truncated, bad CRC, encrypted, a compression
    /// method this build does not have. Nothing after it is extracted.
    #[error("{archive}: entry {entry:?}: {reason}")]
    Entry {
        archive: PathBuf,
        entry: String,
        reason: String,
    },
    /// Writing an extracted entry under the root failed (no space, no permission).
    #[error("extracting {entry:?} to {path}: {source}")]
    Extract {
        entry: String,
        path: PathBuf,
        source: io::Error,
    },
    /// `ARTIFACT_COMPRESSION_LEVEL` / `CACHE_COMPRESSION_LEVEL` with an unknown value.
    #[error("compression level {value:?} is not one of fastest, fast, default, slow, slowest")]
    CompressionLevel { value: String },
}

/// What an archive writer wrote.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Packed {
    /// Regular files written.
    pub files: u64,
    /// Their bytes, uncompressed.
    pub bytes: u64,
    /// Entries skipped, each with the reason (the job changed them since `select()`).
    pub warnings: Vec<String>,
}

/// The deflate effort, from `ARTIFACT_COMPRESSION_LEVEL` / `CACHE_COMPRESSION_LEVEL`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Compression {
    Fastest,
    Fast,
    #[default]
    Default,
    Slow,
    Slowest,
}

impl Compression {
    /// The deflate level (1 to 9). gitlab-runner's fastzip stores without compressing at
    /// `fastest`; here every level deflates, `fastest` at level 1, so that `fastest` never
    /// makes an archive larger than its files.
    pub fn deflate_level(self) -> u32 {
        match self {
            Self::Fastest => 1,
            Self::Fast => 3,
            Self::Default => 6,
            Self::Slow => 8,
            Self::Slowest => 9,
        }
    }
}

impl std::str::FromStr for Compression {
    type Err = ArchiveError;

    /// The values GitLab documents, in any letter case.
    fn from_str(value: &str) -> Result<Self, Self::Err> {
        match value.to_ascii_lowercase().as_str() {
            "fastest" => Ok(Self::Fastest),
            "fast" => Ok(Self::Fast),
            "default" => Ok(Self::Default),
            "slow" => Ok(Self::Slow),
            "slowest" => Ok(Self::Slowest),
            _ => Err(ArchiveError::CompressionLevel {
                value: value.to_owned(),
            }),
        }
    }
}

/// Files at least this large are written with zip64 sizes. Below 4 GiB on purpose: the size
/// comes from `fstat` before the copy, and the job may still be appending to the file (and
/// deflate can grow incompressible data a little); the cost is 20 bytes per such file.
const ZIP64_FROM: u64 = 2 << 30;

/// Deflated chunks waiting for a worker, per worker: enough to keep every worker busy while
/// the writer catches up, few enough to bound memory (each is at most two chunks of bytes).
const IN_FLIGHT_PER_WORKER: usize = 2;

/// Headers queued behind a chunk still being deflated, at most (many directories or symlinks
/// after a large file): past it, the writer waits for the chunk.
const MAX_QUEUED: usize = 4096;

/// Writes `entries` (from `select()`, below `root`) as a zip archive: regular files deflated at
/// `level` on every core (`deflate_pool`), directories as directory entries (so empty ones
/// survive), symlinks as zip symlinks (unix mode `S_IFLNK`, the target as content, never
/// followed). Permissions are kept without setuid, setgid and sticky bits; modification times
/// are kept (DOS time in UTC plus the extended-timestamp field, as Go's `archive/zip` writes
/// them). Memory is bounded whatever the sizes: a few chunks per worker.
///
/// A file that is no longer a regular file reached without symlinks (replaced, moved, a
/// directory on its path swapped for a symlink) is skipped with a warning in [`Packed`].
///
/// # Errors
/// [`ArchiveError::Root`] when `root` cannot be opened, [`ArchiveError::EntryPath`] for an entry
/// path `select()` would not make, [`ArchiveError::Read`] for a file that cannot be read for
/// another reason, [`ArchiveError::Write`] when the output fails. The output is unusable after
/// an error.
pub fn write_zip<W: Write + Seek>(
    root: &Path,
    entries: &[Entry],
    out: W,
    level: Compression,
) -> Result<Packed, ArchiveError> {
    let root_fd = open_root(root)?;
    let workers = DeflatePool::workers_for_this_machine();
    let mut packer = Packer {
        zip: ZipStream::new(out),
        pool: DeflatePool::new(level.deflate_level(), workers),
        queue: VecDeque::new(),
        in_flight: 0,
        max_in_flight: workers * IN_FLIGHT_PER_WORKER,
        writing: String::new(),
    };
    let mut packed = Packed::default();
    for entry in entries {
        let name = zip_name(&entry.relative)?;
        match &entry.kind {
            EntryKind::Dir { mode } => {
                let header = stored_header(format!("{name}/"), SFlag::S_IFDIR, *mode, entry);
                packer.stored(header, Vec::new())?;
            }
            EntryKind::Symlink { target } => {
                let Some(target) = target.to_str() else {
                    packed.warnings.push(format!(
                        "{name}: symbolic link target is not UTF-8; skipped"
                    ));
                    continue;
                };
                let header = stored_header(name.to_owned(), SFlag::S_IFLNK, 0o777, entry);
                packer.stored(header, target.as_bytes().to_vec())?;
            }
            EntryKind::File { .. } => {
                let Some(file) = open_regular(root_fd.as_fd(), root, entry, &mut packed)? else {
                    continue;
                };
                let header = Header {
                    name: name.to_owned(),
                    method: Method::Deflated,
                    mode: SFlag::S_IFREG.bits() | (file.mode & 0o777),
                    mtime: file.mtime,
                    zip64: file.size >= ZIP64_FROM,
                };
                let read_failed = |source| ArchiveError::Read {
                    path: root.join(&entry.relative),
                    source,
                };
                packed.bytes += packer.deflated(header, file.file, read_failed)?;
                packed.files += 1;
            }
        }
    }
    packer.finish()?;
    Ok(packed)
}

/// The header of a directory or symlink entry: stored, the permission bits of `mode` under
/// `kind`, the selection's modification time.
fn stored_header(name: String, kind: SFlag, mode: u32, entry: &Entry) -> Header {
    Header {
        name,
        method: Method::Stored,
        mode: kind.bits() | (mode & 0o777),
        mtime: entry.mtime,
        zip64: false,
    }
}

/// One step of writing the archive, kept in order while chunks are deflated elsewhere.
enum Step {
    Begin(Header),
    Data(Vec<u8>),
    Deflated(Pending),
    End { crc: u32, size: u64 },
}

/// Feeds files to the deflate workers and writes the archive in order: steps queue up behind
/// chunks still being deflated, and the queue is drained whenever too many are in flight.
struct Packer<W: Write + Seek> {
    zip: ZipStream<W>,
    pool: DeflatePool,
    queue: VecDeque<Step>,
    in_flight: usize,
    max_in_flight: usize,
    /// The entry whose steps are being written, for error messages.
    writing: String,
}

impl<W: Write + Seek> Packer<W> {
    /// Queues an entry whose (small) content is stored as it is.
    fn stored(&mut self, header: Header, content: Vec<u8>) -> Result<(), ArchiveError> {
        let crc = crc32fast::hash(&content);
        let size = content.len() as u64;
        self.push(Step::Begin(header))?;
        self.push(Step::Data(content))?;
        self.push(Step::End { crc, size })
    }

    /// Queues a regular file, read here chunk by chunk and deflated by the workers; returns
    /// the bytes read.
    fn deflated(
        &mut self,
        header: Header,
        mut file: File,
        read_failed: impl Fn(io::Error) -> ArchiveError,
    ) -> Result<u64, ArchiveError> {
        self.push(Step::Begin(header))?;
        let mut crc = crc32fast::Hasher::new();
        let mut size = 0u64;
        let mut dictionary = Vec::new();
        let mut chunk = read_chunk(&mut file).map_err(&read_failed)?;
        loop {
            let next = if chunk.len() == CHUNK {
                read_chunk(&mut file).map_err(&read_failed)?
            } else {
                Vec::new()
            };
            let last = next.is_empty();
            crc.update(&chunk);
            size += chunk.len() as u64;
            let tail = chunk
                .get(chunk.len().saturating_sub(DICTIONARY)..)
                .unwrap_or_default()
                .to_vec();
            let previous_tail = std::mem::replace(&mut dictionary, tail);
            let pending = self
                .pool
                .submit(chunk, previous_tail, last)
                .map_err(|source| self.write_failed(source))?;
            self.push(Step::Deflated(pending))?;
            if last {
                break;
            }
            chunk = next;
        }
        self.push(Step::End {
            crc: crc.finalize(),
            size,
        })?;
        Ok(size)
    }

    fn push(&mut self, step: Step) -> Result<(), ArchiveError> {
        if matches!(step, Step::Deflated(_)) {
            self.in_flight += 1;
        }
        self.queue.push_back(step);
        while self.in_flight > self.max_in_flight || self.queue.len() > MAX_QUEUED {
            self.write_next()?;
        }
        Ok(())
    }

    /// Writes the first queued step, waiting for its chunk if it is still being deflated.
    fn write_next(&mut self) -> Result<(), ArchiveError> {
        let Some(step) = self.queue.pop_front() else {
            return Ok(());
        };
        let written = match step {
            Step::Begin(header) => {
                self.writing.clone_from(&header.name);
                self.zip.begin(header)
            }
            Step::Data(bytes) => self.zip.data(&bytes),
            Step::Deflated(pending) => {
                self.in_flight -= 1;
                pending.wait().and_then(|bytes| self.zip.data(&bytes))
            }
            Step::End { crc, size } => self.zip.end(crc, size),
        };
        written.map_err(|source| self.write_failed(source))
    }

    fn write_failed(&self, source: io::Error) -> ArchiveError {
        ArchiveError::Write {
            entry: self.writing.clone(),
            source,
        }
    }

    /// Writes what is queued and the central directory.
    fn finish(mut self) -> Result<(), ArchiveError> {
        while !self.queue.is_empty() {
            self.write_next()?;
        }
        self.writing = "(central directory)".to_owned();
        let Self { zip, writing, .. } = self;
        zip.finish().map_err(|source| ArchiveError::Write {
            entry: writing,
            source,
        })?;
        Ok(())
    }
}

/// Reads up to [`CHUNK`] bytes: less only at the end of the file.
fn read_chunk(file: &mut File) -> io::Result<Vec<u8>> {
    let mut chunk = Vec::with_capacity(CHUNK);
    file.take(CHUNK as u64).read_to_end(&mut chunk)?;
    Ok(chunk)
}

/// Writes the regular files of `entries` as GitLab's `gzip` artifact format, the way
/// gitlab-runner's `gziplegacy` archiver does: one gzip member per file, concatenated, each
/// with FNAME set to the file's base name, FCOMMENT to its path relative to the project
/// directory, and MTIME to its modification time. Directories are left out (their files are
/// entries of their own); symlinks are left out with a warning (gitlab-runner refuses them).
///
/// # Errors
/// As [`write_zip`]; the output is unusable after an error.
pub fn write_gzip<W: Write>(
    root: &Path,
    entries: &[Entry],
    mut out: W,
) -> Result<Packed, ArchiveError> {
    let root_fd = open_root(root)?;
    let mut packed = Packed::default();
    for entry in entries {
        let name = zip_name(&entry.relative)?;
        match entry.kind {
            EntryKind::Dir { .. } => continue,
            EntryKind::Symlink { .. } => {
                packed.warnings.push(format!(
                    "{name}: a symbolic link, left out of the gzip archive"
                ));
                continue;
            }
            EntryKind::File { .. } => {}
        }
        let Some(file) = open_regular(root_fd.as_fd(), root, entry, &mut packed)? else {
            continue;
        };
        let base = entry.relative.file_name().unwrap_or_default().as_bytes();
        let mut member = GzBuilder::new()
            .filename(base)
            .comment(name.as_bytes())
            .mtime(u32::try_from(file.mtime).unwrap_or(0))
            .write(&mut out, flate2::Compression::default());
        let bytes = copy_file(file.file, &mut member, root, entry, name)?;
        member.finish().map_err(|source| ArchiveError::Write {
            entry: name.to_owned(),
            source,
        })?;
        packed.files += 1;
        packed.bytes += bytes;
    }
    out.flush().map_err(|source| ArchiveError::Write {
        entry: "(end)".to_owned(),
        source,
    })?;
    Ok(packed)
}

/// The archive name of an entry: its relative path, `/`-separated, refused unless every
/// component is a normal UTF-8 name.
fn zip_name(relative: &Path) -> Result<&str, ArchiveError> {
    let refuse = || ArchiveError::EntryPath {
        path: relative.to_owned(),
    };
    let name = relative.to_str().ok_or_else(refuse)?;
    let normal = !name.is_empty()
        && !name.contains('\0')
        && !name.starts_with('/')
        && !name.ends_with('/')
        && relative
            .components()
            .all(|c| matches!(c, Component::Normal(_)))
        && !name
            .split('/')
            .any(|c| c.is_empty() || c == "." || c == "..");
    if normal { Ok(name) } else { Err(refuse()) }
}

/// A regular file opened for archiving, with its `fstat` facts.
struct Opened {
    file: File,
    size: u64,
    mode: u32,
    mtime: i64,
}

/// Opens a `File` entry for reading, or records why it is skipped: not reachable without a
/// symlink, gone, or no longer a regular file.
fn open_regular(
    root_fd: BorrowedFd<'_>,
    root: &Path,
    entry: &Entry,
    packed: &mut Packed,
) -> Result<Option<Opened>, ArchiveError> {
    let name = entry.relative.display();
    let fd = match open_file_beneath(root_fd, &entry.relative) {
        Ok(fd) => fd,
        Err(errno) if changed_since_selection(errno) => {
            packed.warnings.push(format!(
                "{name}: changed since it was selected (gone, or reached through a symbolic link); skipped"
            ));
            return Ok(None);
        }
        Err(errno) => {
            return Err(ArchiveError::Read {
                path: root.join(&entry.relative),
                source: errno.into(),
            });
        }
    };
    let stat = fstat(&fd).map_err(|errno| ArchiveError::Read {
        path: root.join(&entry.relative),
        source: errno.into(),
    })?;
    if !is_type(stat.st_mode, SFlag::S_IFREG) {
        packed.warnings.push(format!(
            "{name}: no longer a regular file since it was selected; skipped"
        ));
        return Ok(None);
    }
    Ok(Some(Opened {
        file: File::from(fd),
        size: u64::try_from(stat.st_size).unwrap_or(0),
        mode: stat.st_mode,
        mtime: stat.st_mtime,
    }))
}

/// The `open` failures that mean the job changed the path since `select()`: a symlink where a
/// directory or the file was (`ELOOP`), a file where a directory was (`ENOTDIR`), gone.
fn changed_since_selection(errno: Errno) -> bool {
    matches!(errno, Errno::ELOOP | Errno::ENOTDIR | Errno::ENOENT)
}

/// Streams one opened file into the archive, telling the file's read errors from the
/// archive's write errors.
fn copy_file(
    mut file: File,
    to: &mut impl Write,
    root: &Path,
    entry: &Entry,
    name: &str,
) -> Result<u64, ArchiveError> {
    copy_counted(&mut file, to).map_err(|e| match e {
        CopyError::Read(source) => ArchiveError::Read {
            path: root.join(&entry.relative),
            source,
        },
        CopyError::Write(source) => ArchiveError::Write {
            entry: name.to_owned(),
            source,
        },
    })
}

// === Shared with extract: paths beneath a root, never through a symlink ===

/// Opens the root directory itself. The root is the caller's (the project directory from the
/// job's configuration, not from the job's files), so a symlink there is followed.
pub(super) fn open_root(root: &Path) -> Result<OwnedFd, ArchiveError> {
    let fail = |source: io::Error| ArchiveError::Root {
        root: root.to_owned(),
        source,
    };
    // O_DIRECTORY: a root that is a file fails here, not at the first entry.
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_DIRECTORY)
        .open(root)
        .map_err(fail)?;
    Ok(OwnedFd::from(file))
}

/// Flags for one step down a directory tree: a directory, and not a symlink to one (`ELOOP`).
fn dir_step_flags() -> OFlag {
    OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC
}

/// Opens the directory `components` beneath `root`, one component at a time, none of them
/// followed if it is a symlink (`ELOOP`) and none a file (`ENOTDIR`). With `create`, missing
/// directories are made (mode `0o777`, less the umask, as gitlab-runner's `MkdirAll`).
pub(super) fn open_dir_beneath(
    root: BorrowedFd<'_>,
    components: &[&OsStr],
    create: bool,
) -> Result<OwnedFd, Errno> {
    let mut current = nix::unistd::dup(root)?;
    for component in components {
        let next = match openat(&current, *component, dir_step_flags(), Mode::empty()) {
            Err(Errno::ENOENT) if create => {
                match nix::sys::stat::mkdirat(&current, *component, Mode::from_bits_truncate(0o777))
                {
                    Ok(()) | Err(Errno::EEXIST) => {}
                    Err(errno) => return Err(errno),
                }
                openat(&current, *component, dir_step_flags(), Mode::empty())?
            }
            other => other?,
        };
        current = next;
    }
    Ok(current)
}

/// Opens the file at `relative` (normal components) beneath `root` for reading, without
/// following a symlink at any component and without blocking on a FIFO (`O_NONBLOCK` does
/// nothing to reads of a regular file). The caller checks with `fstat` what it opened.
fn open_file_beneath(root: BorrowedFd<'_>, relative: &Path) -> Result<OwnedFd, Errno> {
    let components: Vec<&OsStr> = relative.iter().collect();
    let Some((last, parents)) = components.split_last() else {
        return Err(Errno::ENOENT);
    };
    let parent = open_dir_beneath(root, parents, false)?;
    let flags = OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC;
    openat(&parent, *last, flags, Mode::empty())
}

/// Whether a `st_mode` is of the file type `kind`.
pub(super) fn is_type(mode: u32, kind: SFlag) -> bool {
    mode & SFlag::S_IFMT.bits() == kind.bits()
}

/// A copy failure, on which side.
#[derive(Debug)]
pub(super) enum CopyError {
    Read(io::Error),
    Write(io::Error),
}

/// `io::copy` with a fixed 64 KiB buffer that tells which side failed: a file of any size
/// moves through bounded memory, and the error names the right culprit.
pub(super) fn copy_counted(from: &mut impl Read, to: &mut impl Write) -> Result<u64, CopyError> {
    let mut buffer = vec![0u8; 64 * 1024];
    let mut total = 0u64;
    loop {
        let read = match from.read(&mut buffer) {
            Ok(0) => return Ok(total),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(CopyError::Read(e)),
        };
        let chunk = buffer.get(..read).unwrap_or_default();
        to.write_all(chunk).map_err(CopyError::Write)?;
        total += read as u64;
    }
}

// === Zip timestamps (UTC, as Go's archive/zip) ===

#[cfg(test)]
mod tests {
    use std::io::{BufRead as _, BufReader, Cursor};
    use std::os::unix::fs::{PermissionsExt as _, symlink};

    use super::*;
    use crate::transfer::select::select;

    fn write(path: &Path, content: &[u8]) {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).unwrap();
        }
        std::fs::write(path, content).unwrap();
    }

    #[test]
    fn compression_levels_parse_and_unknown_ones_list_the_allowed_values() {
        assert_eq!(
            "fastest".parse::<Compression>().unwrap(),
            Compression::Fastest
        );
        assert_eq!(
            "Slowest".parse::<Compression>().unwrap(),
            Compression::Slowest
        );
        assert_eq!("default".parse::<Compression>().unwrap().deflate_level(), 6);
        let err = "max".parse::<Compression>().unwrap_err().to_string();
        assert!(err.contains("\"max\""), "{err}");
        assert!(
            err.contains("fastest, fast, default, slow, slowest"),
            "{err}"
        );
    }

    #[test]
    fn entry_paths_that_select_would_not_make_are_refused() {
        for bad in ["", "/abs", "a/../b", "./a", "a/", "a//b", "nul\0"] {
            assert!(zip_name(Path::new(bad)).is_err(), "{bad:?}");
        }
        assert_eq!(zip_name(Path::new("a/b.txt")).unwrap(), "a/b.txt");
    }

    #[test]
    fn zip_keeps_modes_without_special_bits_and_symlinks_as_links() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        write(&root.join("bin/tool"), b"#!/bin/sh\n");
        std::fs::set_permissions(
            root.join("bin/tool"),
            std::fs::Permissions::from_mode(0o4755),
        )
        .unwrap();
        symlink("../etc/passwd", root.join("bin/link")).unwrap();
        let selection = select(root, &["bin".into()], &[]).unwrap();
        let mut out = Cursor::new(Vec::new());
        let packed = write_zip(root, &selection.entries, &mut out, Compression::Fast).unwrap();
        assert_eq!((packed.files, packed.bytes), (1, 10));

        let mut zip = zip::ZipArchive::new(Cursor::new(out.into_inner())).unwrap();
        let tool = zip.by_name("bin/tool").unwrap();
        assert_eq!(tool.unix_mode().unwrap() & 0o7777, 0o755);
        assert_eq!(tool.compression(), zip::CompressionMethod::Deflated);
        drop(tool);
        let mut link = zip.by_name("bin/link").unwrap();
        assert!(link.is_symlink());
        let mut target = String::new();
        link.read_to_string(&mut target).unwrap();
        assert_eq!(target, "../etc/passwd");
        drop(link);
        assert!(zip.by_name("bin/").unwrap().is_dir());
    }

    #[test]
    fn file_swapped_for_a_symlink_after_select_is_skipped_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("project");
        write(&root.join("out/report.txt"), b"report");
        write(&dir.path().join("secret"), b"do not archive");
        let selection = select(&root, &["out/report.txt".into()], &[]).unwrap();

        std::fs::remove_file(root.join("out/report.txt")).unwrap();
        symlink(dir.path().join("secret"), root.join("out/report.txt")).unwrap();

        let mut out = Cursor::new(Vec::new());
        let packed = write_zip(&root, &selection.entries, &mut out, Compression::Default).unwrap();
        assert_eq!(packed.files, 0);
        assert!(
            packed.warnings[0].contains("out/report.txt"),
            "{:?}",
            packed.warnings
        );
        let bytes = out.into_inner();
        assert!(!bytes.windows(14).any(|w| w == b"do not archive"));
        let zip = zip::ZipArchive::new(Cursor::new(bytes)).unwrap();
        assert_eq!(zip.len(), 0);
    }

    #[test]
    fn directory_swapped_for_a_symlink_after_select_is_not_walked_through() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("project");
        write(&root.join("out/report.txt"), b"report");
        write(&dir.path().join("elsewhere/report.txt"), b"outside");
        let selection = select(&root, &["out".into()], &[]).unwrap();

        std::fs::remove_dir_all(root.join("out")).unwrap();
        symlink(dir.path().join("elsewhere"), root.join("out")).unwrap();

        let mut out = Vec::new();
        let packed = write_gzip(&root, &selection.entries, &mut out).unwrap();
        assert_eq!(packed.files, 0);
        assert_eq!(packed.warnings.len(), 1, "{:?}", packed.warnings);
        assert!(out.is_empty());
    }

    #[test]
    fn fifo_swapped_in_after_select_does_not_block_and_is_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        write(&root.join("pipe"), b"x");
        let selection = select(root, &["pipe".into()], &[]).unwrap();
        std::fs::remove_file(root.join("pipe")).unwrap();
        nix::unistd::mkfifo(&root.join("pipe"), Mode::from_bits_truncate(0o600)).unwrap();

        let mut out = Cursor::new(Vec::new());
        let packed = write_zip(root, &selection.entries, &mut out, Compression::Fastest).unwrap();
        assert_eq!(packed.files, 0);
        assert!(packed.warnings[0].contains("no longer a regular file"));
    }

    /// Reads concatenated gzip members: (FNAME, FCOMMENT, MTIME, content) of each.
    fn gzip_members(bytes: &[u8]) -> Vec<(String, String, u32, Vec<u8>)> {
        let mut reader = BufReader::new(bytes);
        let mut members = Vec::new();
        while !reader.fill_buf().unwrap().is_empty() {
            let mut decoder = flate2::bufread::GzDecoder::new(&mut reader);
            let mut content = Vec::new();
            decoder.read_to_end(&mut content).unwrap();
            let header = decoder.header().unwrap();
            members.push((
                String::from_utf8(header.filename().unwrap().to_vec()).unwrap(),
                String::from_utf8(header.comment().unwrap().to_vec()).unwrap(),
                header.mtime(),
                content,
            ));
        }
        members
    }

    #[test]
    fn gzip_writes_one_member_per_file_named_like_gitlab_runner() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        write(&root.join("reports/a.xml"), b"<a/>");
        write(&root.join("reports/deep/b.xml"), b"<b/>");
        symlink("a.xml", root.join("reports/link.xml")).unwrap();
        let selection = select(root, &["reports".into()], &[]).unwrap();
        let mut out = Vec::new();
        let packed = write_gzip(root, &selection.entries, &mut out).unwrap();
        assert_eq!((packed.files, packed.bytes), (2, 8));
        assert_eq!(
            packed.warnings.len(),
            1,
            "the symlink: {:?}",
            packed.warnings
        );

        let members = gzip_members(&out);
        let names: Vec<(&str, &str)> = members
            .iter()
            .map(|m| (m.0.as_str(), m.1.as_str()))
            .collect();
        assert_eq!(
            names,
            [("a.xml", "reports/a.xml"), ("b.xml", "reports/deep/b.xml")]
        );
        assert_eq!(members[1].3, b"<b/>");
        let mtime = std::fs::metadata(root.join("reports/a.xml"))
            .unwrap()
            .modified()
            .unwrap()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        assert_eq!(u64::from(members[0].2), mtime);
    }

    #[test]
    fn a_root_that_is_not_a_directory_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        write(&dir.path().join("file"), b"x");
        let err = write_gzip(&dir.path().join("file"), &[], Vec::new()).unwrap_err();
        assert!(matches!(err, ArchiveError::Root { .. }), "{err}");
    }

    #[test]
    fn copy_counted_tells_read_errors_from_write_errors() {
        struct Failing;
        impl Read for Failing {
            fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
                Err(io::Error::other("disk"))
            }
        }
        impl Write for Failing {
            fn write(&mut self, _: &[u8]) -> io::Result<usize> {
                Err(io::Error::other("full"))
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        assert!(matches!(
            copy_counted(&mut Failing, &mut Vec::new()),
            Err(CopyError::Read(_))
        ));
        assert!(matches!(
            copy_counted(&mut &b"data"[..], &mut Failing),
            Err(CopyError::Write(_))
        ));
        let mut sink = Vec::new();
        assert_eq!(copy_counted(&mut &b"data"[..], &mut sink).unwrap(), 4);
    }
}
