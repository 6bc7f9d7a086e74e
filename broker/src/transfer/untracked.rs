//! The files git does not track in the project directory, for `artifacts:untracked` and
//! `cache:untracked`: what gitlab-runner gets from `git ls-files -o -z`, found without git
//! (the transfer containers have none) by reading git's index (`.git/index`) and walking the
//! tree.
//!
//! As `git ls-files -o` (without `--exclude-standard`), files `.gitignore` matches are listed
//! too; directories are not, except a nested repository that the index does not know, which is
//! listed as the directory itself (`nested/`), not its files. Subtrees the index tracks as a
//! whole (submodules' gitlinks, a sparse index's directories) are not walked. Every entry named
//! `.git` is left out, as git leaves it out.
//!
//! Index, config and tree are the job's, so hostile: `.git`, `.git/index` and `.git/config`
//! are opened beneath the project directory without following a symlink (a `.git` that is a
//! symlink or a `gitdir:` file is a warning and no untracked files, like no repository); the
//! walk follows nothing; the parser never panics, refuses an index over [`MAX_INDEX_BYTES`]
//! and entry counts or paths the file cannot hold, keeps at most [`MAX_INDEX_BYTES`] of paths,
//! and says what is wrong at which byte. Unlike git, it checks the index's trailing checksum
//! (git does only in `fsck`): a damaged or truncated index is refused rather than half read.
//! A split index (`core.splitIndex`, the `link` extension) is refused: its entries live in a
//! second file.

use std::collections::HashSet;
use std::ffi::OsStr;
use std::io::Read as _;
use std::os::fd::{AsFd as _, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt as _;
use std::path::Path;

use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag, openat, readlinkat};
use nix::sys::stat::{Mode, SFlag, fstat, fstatat};
use walkdir::WalkDir;

use super::archive::{is_type, open_dir_beneath, open_root};
use super::entry::{Entry, entry_of};

/// The largest index read, and the most bytes its paths may add up to (a version 4 index
/// compresses them): 256 MiB, far beyond a checkout's (a 100 000-file repository's index is
/// about 10 MiB).
pub const MAX_INDEX_BYTES: u64 = 256 << 20;
/// The largest `.git/config` read (only `extensions.objectformat` matters).
const MAX_CONFIG_BYTES: u64 = 1 << 20;
/// How much of a nested repository's `HEAD` or `.git` file is read (git reads 255 bytes).
const MAX_HEAD_BYTES: u64 = 255;
/// The fixed part of an entry before the object id: ctime and mtime (8 bytes each), dev, ino,
/// mode, uid, gid and size (4 bytes each).
const STAT_BYTES: usize = 40;
/// A name length of `0xFFF` in the flags: the name is that long or longer, up to its NUL.
const NAME_MASK: u16 = 0x0FFF;
const FLAG_EXTENDED: u16 = 0x4000;
/// The extended flags git knows (intent-to-add, skip-worktree); others make git refuse too.
const KNOWN_EXTENDED_FLAGS: u16 = 0x2000 | 0x4000;
const MODE_TYPE: u32 = 0o170000;
const MODE_GITLINK: u32 = 0o160000;
const MODE_SPARSE_DIR: u32 = 0o040000;

/// Which hash the repository's object ids are (`extensions.objectformat`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ObjectFormat {
    Sha1,
    Sha256,
}

impl ObjectFormat {
    /// Bytes of an object id, and of the index's trailing checksum.
    pub fn id_len(self) -> usize {
        match self {
            Self::Sha1 => 20,
            Self::Sha256 => 32,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Self::Sha1 => "SHA-1",
            Self::Sha256 => "SHA-256",
        }
    }

    fn digest(self, data: &[u8]) -> Vec<u8> {
        match self {
            Self::Sha1 => {
                use sha1::Digest as _;
                sha1::Sha1::digest(data).to_vec()
            }
            Self::Sha256 => {
                use sha2::Digest as _;
                sha2::Sha256::digest(data).to_vec()
            }
        }
    }
}

/// What a parsed index tracks.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Index {
    /// 2, 3 or 4.
    pub version: u32,
    /// Every entry's path (all stages, intent-to-add and gitlinks included), sparse
    /// directories excepted: none of these is untracked.
    pub paths: HashSet<Vec<u8>>,
    /// Paths, without a trailing `/`, that the index tracks as a whole: gitlinks (submodules,
    /// mode `160000`) and a sparse index's directories (mode `040000`). Nothing beneath them is
    /// untracked.
    pub subtrees: HashSet<Vec<u8>>,
}

impl Index {
    /// Every directory above a path or subtree: the directories the index has files in, which
    /// `git ls-files -o` walks even when they hold a repository of their own.
    fn directories(&self) -> HashSet<&[u8]> {
        let mut out = HashSet::new();
        for path in self.paths.iter().chain(&self.subtrees) {
            let mut rest: &[u8] = path;
            while let Some(slash) = rest.iter().rposition(|&b| b == b'/') {
                rest = rest.get(..slash).unwrap_or_default();
                if !out.insert(rest) {
                    break;
                }
            }
        }
        out
    }
}

/// Why an index cannot be read. Offsets count from the start of the file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IndexError {
    #[error("{size} bytes: larger than the {limit} bytes Keyhole reads", limit = MAX_INDEX_BYTES)]
    TooLarge { size: u64 },
    #[error("{size} bytes: too short for a header and a {format} checksum")]
    TooShort { size: usize, format: &'static str },
    #[error("not a git index: the first 4 bytes are {found:?}, not \"DIRC\"")]
    Signature { found: String },
    #[error("version {version} at byte 4: only versions 2, 3 and 4 are known")]
    Version { version: u32 },
    #[error("{count} entries (byte 8) cannot fit in the {room} bytes between header and checksum")]
    Count { count: u32, room: usize },
    #[error("entry {entry} at byte {offset}: {what} runs past the end of the entries (byte {end})")]
    Truncated {
        entry: u32,
        offset: usize,
        what: &'static str,
        end: usize,
    },
    #[error("entry {entry} at byte {offset}: unknown extended flags {flags:#06x}")]
    ExtendedFlags {
        entry: u32,
        offset: usize,
        flags: u16,
    },
    #[error("entry {entry} at byte {offset}: the path does not end with a NUL byte")]
    Unterminated { entry: u32, offset: usize },
    #[error("entry {entry} at byte {offset}: the prefix length does not fit in 64 bits")]
    Varint { entry: u32, offset: usize },
    #[error(
        "entry {entry} at byte {offset}: strips {strip} bytes of the previous path, which has {previous}"
    )]
    Strip {
        entry: u32,
        offset: usize,
        strip: u64,
        previous: usize,
    },
    #[error(
        "entry {entry} at byte {offset}: a path length of {length} is shorter than the {kept} bytes kept from the previous path"
    )]
    NameLength {
        entry: u32,
        offset: usize,
        length: u16,
        kept: usize,
    },
    #[error(
        "entry {entry} at byte {offset}: the paths add up to more than the {limit} bytes Keyhole keeps",
        limit = MAX_INDEX_BYTES
    )]
    PathBytes { entry: u32, offset: usize },
    #[error(
        "a split index (the \"link\" extension at byte {offset}): its entries are in a shared index file Keyhole does not read; run `git update-index --no-split-index` (or set core.splitIndex=false) before the job ends"
    )]
    SplitIndex { offset: usize },
    #[error(
        "extension {signature:?} at byte {offset}: its {size} bytes run past the checksum (byte {end})"
    )]
    Extension {
        signature: String,
        offset: usize,
        size: u32,
        end: usize,
    },
    #[error("{left} bytes at byte {offset} are too few for an extension header")]
    Trailing { offset: usize, left: usize },
    #[error(
        "the last {len} bytes are not the {format} checksum of the rest: the index is truncated or damaged"
    )]
    Checksum { len: usize, format: &'static str },
}

/// Parses git's index file (`.git/index`, versions 2 to 4) of a repository whose object ids
/// are `format`. Never panics; keeps at most [`MAX_INDEX_BYTES`] of paths (a version 4 index
/// can name more than it holds).
///
/// # Errors
/// [`IndexError`]: what is wrong, at which byte.
pub fn parse_index(bytes: &[u8], format: ObjectFormat) -> Result<Index, IndexError> {
    parse(bytes, format, MAX_INDEX_BYTES)
}

/// [`parse_index`] keeping at most `path_budget` bytes of paths.
fn parse(bytes: &[u8], format: ObjectFormat, path_budget: u64) -> Result<Index, IndexError> {
    let size = bytes.len();
    if size as u64 > MAX_INDEX_BYTES {
        return Err(IndexError::TooLarge { size: size as u64 });
    }
    let hash = format.id_len();
    let Some(end) = size.checked_sub(hash).filter(|&end| end >= 12) else {
        return Err(IndexError::TooShort {
            size,
            format: format.name(),
        });
    };
    let signature = bytes.get(..4).unwrap_or_default();
    if signature != b"DIRC" {
        return Err(IndexError::Signature {
            found: String::from_utf8_lossy(signature).into_owned(),
        });
    }
    let version = be32(bytes, 4);
    if !(2..=4).contains(&version) {
        return Err(IndexError::Version { version });
    }
    let count = be32(bytes, 8);
    // The smallest entry: stat data, object id, flags, and a NUL (v2/v3: a one-byte path and
    // its NUL; v4: a one-byte prefix length and a NUL).
    let smallest = (STAT_BYTES + hash + 2 + 2) as u64;
    let room = end - 12;
    if u64::from(count) * smallest > room as u64 {
        return Err(IndexError::Count { count, room });
    }
    let mut index = Index {
        version,
        paths: HashSet::new(),
        subtrees: HashSet::new(),
    };
    let mut reader = Entries {
        bytes: bytes.get(..end).unwrap_or_default(),
        offset: 12,
        previous: Vec::new(),
        budget: path_budget,
    };
    for entry in 0..count {
        let (mode, path) = reader.entry(entry, version, hash)?;
        match mode & MODE_TYPE {
            MODE_SPARSE_DIR => {
                let dir = path.strip_suffix(b"/").unwrap_or(&path);
                index.subtrees.insert(dir.to_vec());
            }
            MODE_GITLINK => {
                index.subtrees.insert(path.clone());
                index.paths.insert(path);
            }
            _ => {
                index.paths.insert(path);
            }
        }
    }
    extensions(bytes, reader.offset, end)?;
    let stored = bytes.get(end..).unwrap_or_default();
    // `index.skipHash` writes zeros instead of the checksum; git accepts them.
    if stored.iter().any(|&b| b != 0)
        && format.digest(bytes.get(..end).unwrap_or_default()) != stored
    {
        return Err(IndexError::Checksum {
            len: hash,
            format: format.name(),
        });
    }
    Ok(index)
}

/// Big-endian `u32` at `at`; the caller has checked the bounds (0 past the end).
fn be32(bytes: &[u8], at: usize) -> u32 {
    bytes
        .get(at..at.saturating_add(4))
        .and_then(|b| <[u8; 4]>::try_from(b).ok())
        .map_or(0, u32::from_be_bytes)
}

fn be16(bytes: &[u8], at: usize) -> u16 {
    bytes
        .get(at..at.saturating_add(2))
        .and_then(|b| <[u8; 2]>::try_from(b).ok())
        .map_or(0, u16::from_be_bytes)
}

/// The entries, one after the other.
struct Entries<'a> {
    /// The file without its checksum.
    bytes: &'a [u8],
    offset: usize,
    /// The previous entry's path (version 4 paths are prefix-compressed against it).
    previous: Vec<u8>,
    /// Path bytes still allowed.
    budget: u64,
}

impl<'a> Entries<'a> {
    /// The next entry's mode and path.
    fn entry(
        &mut self,
        entry: u32,
        version: u32,
        hash: usize,
    ) -> Result<(u32, Vec<u8>), IndexError> {
        let start = self.offset;
        let end = self.bytes.len();
        let truncated = |what| IndexError::Truncated {
            entry,
            offset: start,
            what,
            end,
        };
        let flags_at = start + STAT_BYTES + hash;
        if flags_at + 2 > end {
            return Err(truncated("the fixed part"));
        }
        let mode = be32(self.bytes, start + 24);
        let flags = be16(self.bytes, flags_at);
        let mut name_at = flags_at + 2;
        if flags & FLAG_EXTENDED != 0 {
            if name_at + 2 > end {
                return Err(truncated("the extended flags"));
            }
            let extended = be16(self.bytes, name_at);
            if extended & !KNOWN_EXTENDED_FLAGS != 0 {
                return Err(IndexError::ExtendedFlags {
                    entry,
                    offset: start,
                    flags: extended,
                });
            }
            name_at += 2;
        }
        let length = flags & NAME_MASK;
        let path = if version == 4 {
            let (strip, used) = varint(self.bytes.get(name_at..).unwrap_or_default()).ok_or(
                IndexError::Varint {
                    entry,
                    offset: start,
                },
            )?;
            let kept = usize::try_from(strip)
                .ok()
                .and_then(|strip| self.previous.len().checked_sub(strip))
                .ok_or(IndexError::Strip {
                    entry,
                    offset: start,
                    strip,
                    previous: self.previous.len(),
                })?;
            let suffix_at = name_at + used;
            let suffix = if length == NAME_MASK {
                self.up_to_nul(suffix_at, entry, start)?
            } else {
                let suffix =
                    usize::from(length)
                        .checked_sub(kept)
                        .ok_or(IndexError::NameLength {
                            entry,
                            offset: start,
                            length,
                            kept,
                        })?;
                self.exactly(suffix_at, suffix, entry, start)?
            };
            self.offset = suffix_at + suffix.len() + 1;
            self.previous.truncate(kept);
            self.previous.extend_from_slice(suffix);
            self.previous.clone()
        } else {
            let name = if length == NAME_MASK {
                self.up_to_nul(name_at, entry, start)?
            } else {
                self.exactly(name_at, usize::from(length), entry, start)?
            };
            // Padded with NULs to a multiple of 8 counted from the entry's start, at least one.
            let size = (name_at - start + name.len() + 8) & !7;
            if start + size > end {
                return Err(truncated("the padding"));
            }
            self.offset = start + size;
            name.to_vec()
        };
        self.budget = self
            .budget
            .checked_sub(path.len() as u64)
            .ok_or(IndexError::PathBytes {
                entry,
                offset: start,
            })?;
        Ok((mode, path))
    }

    /// The `length` bytes at `at`, which a NUL must follow.
    fn exactly(
        &self,
        at: usize,
        length: usize,
        entry: u32,
        start: usize,
    ) -> Result<&'a [u8], IndexError> {
        let bytes: &'a [u8] = self.bytes;
        match bytes.get(at..).and_then(|rest| rest.get(..=length)) {
            None => Err(IndexError::Truncated {
                entry,
                offset: start,
                what: "the path",
                end: self.bytes.len(),
            }),
            Some([name @ .., 0]) => Ok(name),
            Some(_) => Err(IndexError::Unterminated {
                entry,
                offset: start,
            }),
        }
    }

    /// The bytes at `at` up to the next NUL.
    fn up_to_nul(&self, at: usize, entry: u32, start: usize) -> Result<&'a [u8], IndexError> {
        let bytes: &'a [u8] = self.bytes;
        let rest = bytes.get(at..).unwrap_or_default();
        match rest.iter().position(|&b| b == 0) {
            Some(nul) => Ok(rest.get(..nul).unwrap_or_default()),
            None => Err(IndexError::Truncated {
                entry,
                offset: start,
                what: "the path (no NUL)",
                end: self.bytes.len(),
            }),
        }
    }
}

/// git's offset varint (`varint.c`): 7 bits a byte, most significant first, each continuation
/// adding one. The value and the bytes it took; `None` when it runs out or overflows.
fn varint(bytes: &[u8]) -> Option<(u64, usize)> {
    let mut iter = bytes.iter();
    let mut byte = *iter.next()?;
    let mut value = u64::from(byte & 0x7f);
    let mut used = 1;
    while byte & 0x80 != 0 {
        value = value.checked_add(1)?;
        if value >> 57 != 0 {
            return None;
        }
        byte = *iter.next()?;
        value = (value << 7) | u64::from(byte & 0x7f);
        used += 1;
    }
    Some((value, used))
}

/// Walks the extensions between the entries and the checksum: each a 4-byte signature and a
/// 4-byte size. Only `link` (split index) matters: refused.
fn extensions(bytes: &[u8], mut offset: usize, end: usize) -> Result<(), IndexError> {
    while offset < end {
        let left = end - offset;
        if left < 8 {
            return Err(IndexError::Trailing { offset, left });
        }
        let signature = bytes.get(offset..offset + 4).unwrap_or_default();
        let size = be32(bytes, offset + 4);
        if signature == b"link" {
            return Err(IndexError::SplitIndex { offset });
        }
        let next = (offset + 8).saturating_add(size as usize);
        if next > end {
            return Err(IndexError::Extension {
                signature: String::from_utf8_lossy(signature).into_owned(),
                offset,
                size,
                end,
            });
        }
        offset = next;
    }
    Ok(())
}

/// The object format `.git/config` names: SHA-256 when its `[extensions]` section says
/// `objectformat = sha256` (names case-insensitive, as git reads them), else SHA-1.
pub fn object_format(config: &[u8]) -> ObjectFormat {
    let text = String::from_utf8_lossy(config).to_ascii_lowercase();
    let mut section = String::new();
    for line in text.lines() {
        let mut line = line.trim();
        if let Some(rest) = line.strip_prefix('[') {
            let name = rest.split(']').next().unwrap_or_default();
            section = name
                .split_whitespace()
                .next()
                .unwrap_or_default()
                .to_owned();
            // A key may follow the header on the same line (`[extensions] objectformat = x`).
            line = rest.split_once(']').map_or("", |(_, after)| after.trim());
        }
        if section != "extensions" {
            continue;
        }
        let Some((key, value)) = line.split_once('=') else {
            continue;
        };
        let value = value.split(['#', ';']).next().unwrap_or_default().trim();
        if key.trim() == "objectformat" && value.trim_matches('"') == "sha256" {
            return ObjectFormat::Sha256;
        }
    }
    ObjectFormat::Sha1
}

// === Opening the repository beneath the project directory ===

/// Why the project directory's repository cannot be read: each means no untracked files, with
/// a warning (gitlab-runner warns and goes on when `git ls-files` fails).
#[derive(Debug, thiserror::Error)]
pub enum UntrackedError {
    #[error(transparent)]
    Root(super::archive::ArchiveError),
    #[error("no git repository in the project directory (no .git)")]
    NoRepository,
    #[error(
        ".git is not a directory; a worktree's or submodule's `gitdir:` file or a symbolic link is not followed"
    )]
    GitNotADirectory,
    #[error("{path} is a symbolic link; not followed")]
    Symlink { path: &'static str },
    #[error("{path} is not a regular file")]
    NotRegular { path: &'static str },
    #[error("{path}: {size} bytes: larger than the {limit} bytes Keyhole reads")]
    TooLarge {
        path: &'static str,
        size: u64,
        limit: u64,
    },
    #[error("{path}: {source}")]
    Open { path: &'static str, source: Errno },
    #[error("{path}: {source}")]
    Read {
        path: &'static str,
        source: std::io::Error,
    },
    #[error(".git/index: {0}")]
    Index(#[from] IndexError),
}

/// Opens `name` in `dir` for reading, not through a symlink and without blocking on a FIFO.
fn open_in(dir: BorrowedFd<'_>, name: &str, extra: OFlag) -> Result<OwnedFd, Errno> {
    let flags = OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC | extra;
    openat(dir, name, flags, Mode::empty())
}

/// The regular file `name` in `dir` (`path` names it in messages), at most `limit` bytes;
/// `None` when it does not exist.
fn read_small(
    dir: BorrowedFd<'_>,
    name: &str,
    path: &'static str,
    limit: u64,
) -> Result<Option<Vec<u8>>, UntrackedError> {
    let fd = match open_in(dir, name, OFlag::O_NONBLOCK) {
        Ok(fd) => fd,
        Err(Errno::ENOENT) => return Ok(None),
        Err(Errno::ELOOP) => return Err(UntrackedError::Symlink { path }),
        Err(source) => return Err(UntrackedError::Open { path, source }),
    };
    let stat = fstat(&fd).map_err(|source| UntrackedError::Open { path, source })?;
    if !is_type(stat.st_mode, SFlag::S_IFREG) {
        return Err(UntrackedError::NotRegular { path });
    }
    let size = u64::try_from(stat.st_size).unwrap_or(0);
    if size > limit {
        return Err(UntrackedError::TooLarge { path, size, limit });
    }
    let mut bytes = Vec::with_capacity(usize::try_from(size).unwrap_or(0));
    // One byte more than the limit tells a file that grew since fstat.
    std::fs::File::from(fd)
        .take(limit + 1)
        .read_to_end(&mut bytes)
        .map_err(|source| UntrackedError::Read { path, source })?;
    if bytes.len() as u64 > limit {
        return Err(UntrackedError::TooLarge {
            path,
            size: bytes.len() as u64,
            limit,
        });
    }
    Ok(Some(bytes))
}

/// The index of the repository at `root/.git`; an empty one when the repository has none yet
/// (nothing added).
fn read_repository(root: BorrowedFd<'_>) -> Result<Index, UntrackedError> {
    let git = match open_in(root, ".git", OFlag::O_DIRECTORY) {
        Ok(fd) => fd,
        Err(Errno::ENOENT) => return Err(UntrackedError::NoRepository),
        Err(Errno::ELOOP | Errno::ENOTDIR) => return Err(UntrackedError::GitNotADirectory),
        Err(source) => {
            return Err(UntrackedError::Open {
                path: ".git",
                source,
            });
        }
    };
    let format = read_small(git.as_fd(), "config", ".git/config", MAX_CONFIG_BYTES)?
        .map_or(ObjectFormat::Sha1, |config| object_format(&config));
    match read_small(git.as_fd(), "index", ".git/index", MAX_INDEX_BYTES)? {
        None => Ok(Index::default()),
        Some(bytes) => Ok(parse_index(&bytes, format)?),
    }
}

/// Whether the directory `relative` holds a repository of its own, as git's
/// `is_nonbare_repository_dir` decides: a `.git` directory with a valid `HEAD`, `objects` and
/// `refs`, or a `.git` file (`gitdir: ...`, whose target is not checked: it may lie outside
/// the project directory). A `.git` symlink is not followed: no repository.
fn nested_repository(root: BorrowedFd<'_>, relative: &Path) -> bool {
    let components: Vec<&OsStr> = relative.iter().collect();
    let Ok(dir) = open_dir_beneath(root, &components, false) else {
        return false;
    };
    match open_in(dir.as_fd(), ".git", OFlag::O_DIRECTORY) {
        Ok(git) => {
            valid_head(git.as_fd())
                && present(git.as_fd(), "objects")
                && present(git.as_fd(), "refs")
        }
        Err(Errno::ENOTDIR) => {
            matches!(read_small(dir.as_fd(), ".git", ".git", MAX_HEAD_BYTES),
                Ok(Some(text)) if text.starts_with(b"gitdir: "))
        }
        Err(_) => false,
    }
}

/// git's `validate_headref`: `HEAD` a symlink into `refs/`, or a file `ref: refs/...` or
/// starting with an object id in hex.
fn valid_head(git: BorrowedFd<'_>) -> bool {
    let Ok(stat) = fstatat(git, "HEAD", AtFlags::AT_SYMLINK_NOFOLLOW) else {
        return false;
    };
    if is_type(stat.st_mode, SFlag::S_IFLNK) {
        return readlinkat(git, "HEAD").is_ok_and(|t| t.as_bytes().starts_with(b"refs/"));
    }
    let Ok(Some(text)) = read_small(git, "HEAD", "HEAD", MAX_HEAD_BYTES) else {
        return false;
    };
    if let Some(rest) = text.strip_prefix(b"ref:") {
        let target = rest.trim_ascii_start();
        return target.starts_with(b"refs/");
    }
    text.get(..40)
        .is_some_and(|hex| hex.iter().all(u8::is_ascii_hexdigit))
}

/// Whether `name` exists in `git` as a directory or a symlink (git checks it with `access`).
fn present(git: BorrowedFd<'_>, name: &str) -> bool {
    fstatat(git, name, AtFlags::AT_SYMLINK_NOFOLLOW)
        .is_ok_and(|s| is_type(s.st_mode, SFlag::S_IFDIR) || is_type(s.st_mode, SFlag::S_IFLNK))
}

// === The listing ===

/// The untracked files of a project directory.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Listing {
    /// Untracked files and symlinks, and nested repositories (directories), sorted
    /// component-wise as [`super::select::Selection`] is.
    pub entries: Vec<Entry>,
    /// What was skipped (special files, names that are not UTF-8, unreadable directories);
    /// for the job log.
    pub warnings: Vec<String>,
}

/// What `git ls-files -o` lists in `root` (see the module documentation), without git.
///
/// # Errors
/// [`UntrackedError`] when there is no repository to read, or its index cannot be read: no
/// untracked files (a warning, as gitlab-runner warns when `git ls-files` fails). What is
/// wrong with single files is a warning in the [`Listing`].
pub fn list(root: &Path) -> Result<Listing, UntrackedError> {
    let root_fd = open_root(root).map_err(UntrackedError::Root)?;
    let index = read_repository(root_fd.as_fd())?;
    let mut listing = Listing::default();
    let directories = index.directories();
    let mut walker = WalkDir::new(root)
        .follow_links(false)
        .follow_root_links(false)
        .min_depth(1)
        .sort_by_file_name()
        .into_iter();
    while let Some(next) = walker.next() {
        let dent = match next {
            Ok(dent) => dent,
            Err(e) => {
                listing.warnings.push(format!("untracked: {e}"));
                continue;
            }
        };
        let is_dir = dent.file_type().is_dir();
        if dent.file_name() == ".git" {
            if is_dir {
                walker.skip_current_dir();
            }
            continue;
        }
        let Ok(relative) = dent.path().strip_prefix(root) else {
            continue;
        };
        let bytes = relative.as_os_str().as_bytes();
        if is_dir {
            if index.subtrees.contains(bytes) {
                walker.skip_current_dir();
                continue;
            }
            // The lstat by path is only a quick look (most directories have no .git); the
            // check itself opens nothing through a symlink.
            let has_git = std::fs::symlink_metadata(dent.path().join(".git")).is_ok();
            if directories.contains(bytes)
                || !has_git
                || !nested_repository(root_fd.as_fd(), relative)
            {
                continue;
            }
            walker.skip_current_dir();
        } else if index.paths.contains(bytes) {
            continue;
        }
        match entry_of(relative, &dent) {
            Ok(entry) => listing.entries.push(entry),
            Err(warning) => listing.warnings.push(format!("untracked: {warning}")),
        }
    }
    Ok(listing)
}

#[cfg(test)]
pub(super) mod tests {
    use std::os::unix::fs::symlink;
    use std::process::Command;

    use super::*;
    use crate::transfer::entry::EntryKind;

    /// Runs git in `dir` with no user or system configuration; its stdout.
    pub(in crate::transfer) fn git(dir: &Path, args: &[&str]) -> Vec<u8> {
        let out = Command::new("git")
            .args([
                "-c",
                "user.name=Keyhole",
                "-c",
                "user.email=keyhole@example.invalid",
                "-c",
                "init.defaultBranch=main",
                "-c",
                "advice.addEmbeddedRepo=false",
            ])
            .args(args)
            .current_dir(dir)
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .env("HOME", dir)
            .env_remove("GIT_DIR")
            .env_remove("GIT_WORK_TREE")
            .env_remove("GIT_INDEX_FILE")
            .env_remove("GIT_OBJECT_DIRECTORY")
            .output()
            .expect("these tests run git (/usr/bin/git)");
        assert!(
            out.status.success(),
            "git {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    }

    fn write(root: &Path, relative: &str) {
        let path = root.join(relative);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, relative.as_bytes()).unwrap();
    }

    /// A repository in a new temporary directory, `files` committed.
    pub(in crate::transfer) fn repository(init: &[&str], files: &[&str]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let mut args = vec!["init", "-q"];
        args.extend_from_slice(init);
        git(dir.path(), &args);
        for file in files {
            write(dir.path(), file);
        }
        if !files.is_empty() {
            git(dir.path(), &["add", "-A"]);
            git(dir.path(), &["commit", "-qm", "files"]);
        }
        dir
    }

    /// `git ls-files -o -z`, sorted.
    fn git_untracked(dir: &Path) -> Vec<String> {
        let out = git(dir, &["ls-files", "-o", "-z"]);
        let mut names: Vec<String> = out
            .split(|&b| b == 0)
            .filter(|name| !name.is_empty())
            .map(|name| String::from_utf8(name.to_vec()).unwrap())
            .collect();
        names.sort();
        names
    }

    /// [`list`] as git names its entries (a directory with a trailing `/`), sorted.
    fn listed(dir: &Path) -> Vec<String> {
        let listing = list(dir).unwrap();
        assert!(listing.warnings.is_empty(), "{:?}", listing.warnings);
        let mut names: Vec<String> = listing
            .entries
            .iter()
            .map(|e| {
                let name = e.relative.to_str().unwrap().to_owned();
                match e.kind {
                    EntryKind::Dir { .. } => format!("{name}/"),
                    _ => name,
                }
            })
            .collect();
        names.sort();
        names
    }

    fn index_bytes(dir: &Path) -> Vec<u8> {
        std::fs::read(dir.join(".git/index")).unwrap()
    }

    fn assert_like_git(dir: &Path) {
        let expected = git_untracked(dir);
        assert!(!expected.is_empty());
        assert_eq!(listed(dir), expected);
    }

    #[test]
    fn untracked_and_ignored_files_are_listed_as_git_ls_files_others_lists_them() {
        let dir = repository(
            &[],
            &[
                "README",
                "src/main.rs",
                "src/lib/mod.rs",
                ".gitignore",
                "gone",
                "was_a_file",
                "tracked_repo/kept",
            ],
        );
        let root = dir.path();
        std::fs::write(root.join(".gitignore"), "*.log\nbuild/\n").unwrap();
        for file in [
            "app.log",
            "build/out.o",
            "build/deep/er/x.o",
            "src/new.rs",
            "src/lib/gen/a.rs",
            "u/v/w",
            "with space/and ünïcode",
            "src/.git",
            "fake/.git/objects/x",
            "fake/y",
        ] {
            write(root, file);
        }
        std::fs::create_dir_all(root.join("empty/deeper")).unwrap();
        std::fs::remove_file(root.join("gone")).unwrap();
        std::fs::remove_file(root.join("was_a_file")).unwrap();
        write(root, "was_a_file/inside");
        symlink("README", root.join("link")).unwrap();
        symlink("/nonexistent", root.join("dangling")).unwrap();
        symlink("/", root.join("src/to_root")).unwrap();
        // Nested repositories: untracked ones are listed as the directory, one in a tracked
        // directory is walked as git walks it; a .git file naming a gitdir makes one too.
        git(root, &["init", "-q", "nested"]);
        write(root, "nested/file");
        git(root, &["init", "-q", "src/inner"]);
        write(root, "src/inner/file");
        git(root, &["init", "-q", "tracked_repo"]);
        write(root, "tracked_repo/new");
        write(root, "worktree/file");
        std::fs::write(root.join("worktree/.git"), "gitdir: ../nested/.git\n").unwrap();
        nix::unistd::mkfifo(
            &root.join("fifo"),
            nix::sys::stat::Mode::from_bits_truncate(0o600),
        )
        .unwrap();

        let listing = list(root).unwrap();
        assert_eq!(
            listing.warnings,
            ["untracked: fifo: not a regular file, directory or symbolic link; skipped"]
        );
        std::fs::remove_file(root.join("fifo")).unwrap();
        let names = listed(root);
        assert_eq!(names, git_untracked(root));
        for expected in [
            "app.log",
            "build/deep/er/x.o",
            "nested/",
            "src/inner/",
            "tracked_repo/new",
            "was_a_file/inside",
            "worktree/",
        ] {
            assert!(names.iter().any(|n| n == expected), "{expected}: {names:?}");
        }
        let entries = list(root).unwrap().entries;
        let kinds: Vec<_> = entries
            .iter()
            .filter(|e| e.relative == Path::new("link") || e.relative == Path::new("nested"))
            .map(|e| e.kind.clone())
            .collect();
        assert!(matches!(kinds[0], EntryKind::Symlink { .. }), "{kinds:?}");
        assert!(matches!(kinds[1], EntryKind::Dir { .. }), "{kinds:?}");
        // Component-wise order, as select keeps its entries.
        let mut sorted = entries.clone();
        sorted.sort_by(|a, b| a.relative.cmp(&b.relative));
        assert_eq!(entries, sorted);
    }

    #[test]
    fn a_repository_without_an_index_has_every_file_untracked() {
        let dir = repository(&[], &[]);
        write(dir.path(), "a");
        write(dir.path(), "b/c");
        assert!(!dir.path().join(".git/index").exists());
        assert_like_git(dir.path());
    }

    #[test]
    fn intent_to_add_entries_version_3_are_tracked() {
        let dir = repository(&[], &["a"]);
        write(dir.path(), "planned");
        write(dir.path(), "other");
        git(dir.path(), &["add", "-N", "planned"]);
        let index = parse_index(&index_bytes(dir.path()), ObjectFormat::Sha1).unwrap();
        assert_eq!(index.version, 3);
        assert!(index.paths.contains(&b"planned"[..]));
        assert_like_git(dir.path());
        assert_eq!(listed(dir.path()), ["other"]);
    }

    #[test]
    fn version_4_indexes_with_prefix_compressed_paths_are_read() {
        let dir = repository(
            &[],
            &["a/b/c/one", "a/b/c/two", "a/b/d", "a/e", "z", "zz/top"],
        );
        write(dir.path(), "a/b/c/three");
        write(dir.path(), "a/new");
        git(dir.path(), &["update-index", "--index-version", "4"]);
        let index = parse_index(&index_bytes(dir.path()), ObjectFormat::Sha1).unwrap();
        assert_eq!(index.version, 4);
        assert_eq!(index.paths.len(), 6);
        assert!(index.paths.contains(&b"a/b/c/two"[..]));
        assert!(index.paths.contains(&b"zz/top"[..]));
        assert_like_git(dir.path());
    }

    /// Writes `relative` beneath `root` one directory at a time: its whole path may be longer
    /// than `PATH_MAX` allows from `/` (only its path relative to `root` fits).
    fn write_deep(root: &Path, relative: &str) {
        let mut dir = open_root(root).unwrap();
        let components: Vec<&str> = relative.split('/').collect();
        let (file, parents) = components.split_last().unwrap();
        for component in parents {
            match nix::sys::stat::mkdirat(&dir, *component, Mode::from_bits_truncate(0o755)) {
                Ok(()) | Err(Errno::EEXIST) => {}
                Err(e) => panic!("{e}"),
            }
            dir = open_in(dir.as_fd(), component, OFlag::O_DIRECTORY).unwrap();
        }
        let flags = OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_CLOEXEC;
        let fd = openat(&dir, *file, flags, Mode::from_bits_truncate(0o644)).unwrap();
        std::io::Write::write_all(&mut std::fs::File::from(fd), b"deep").unwrap();
    }

    #[test]
    fn paths_of_4095_bytes_are_read_up_to_their_nul_in_versions_2_and_4() {
        // 0xFFF in the flags: the path is that long or longer, up to its NUL. git keeps paths
        // below PATH_MAX, so 4095 bytes is the longest a checkout has.
        let deep = format!("{}/", "x".repeat(200)).repeat(20);
        let long = format!("{deep}{}", "f".repeat(75));
        let sibling = format!("{deep}{}", "g".repeat(75));
        assert_eq!(long.len(), 0xfff);
        let dir = repository(&[], &["short"]);
        write_deep(dir.path(), &long);
        write_deep(dir.path(), &sibling);
        git(dir.path(), &["add", "-A"]);
        let index = parse_index(&index_bytes(dir.path()), ObjectFormat::Sha1).unwrap();
        assert_eq!(index.version, 2);
        assert!(index.paths.contains(long.as_bytes()));
        assert!(index.paths.contains(sibling.as_bytes()));
        git(dir.path(), &["update-index", "--index-version", "4"]);
        let index = parse_index(&index_bytes(dir.path()), ObjectFormat::Sha1).unwrap();
        assert_eq!(index.version, 4);
        assert_eq!(index.paths.len(), 3);
        assert!(index.paths.contains(long.as_bytes()));
        assert!(index.paths.contains(sibling.as_bytes()));
    }

    #[test]
    fn sha256_repositories_are_read_with_32_byte_ids() {
        let dir = repository(&["--object-format=sha256"], &["a", "d/b"]);
        write(dir.path(), "d/new");
        let config = std::fs::read(dir.path().join(".git/config")).unwrap();
        assert_eq!(object_format(&config), ObjectFormat::Sha256);
        let bytes = index_bytes(dir.path());
        assert!(parse_index(&bytes, ObjectFormat::Sha256).is_ok());
        assert!(parse_index(&bytes, ObjectFormat::Sha1).is_err());
        assert_like_git(dir.path());
    }

    #[test]
    fn the_object_format_is_read_from_the_extensions_section_only() {
        let sha256 = [
            "[extensions]\n\tobjectformat = sha256\n",
            "[Extensions]\nObjectFormat=SHA256 # comment\n",
            "[core]\n bare = false\n[extensions] objectFormat = \"sha256\"\n",
        ];
        for config in sha256 {
            assert_eq!(
                object_format(config.as_bytes()),
                ObjectFormat::Sha256,
                "{config}"
            );
        }
        let sha1 = [
            "",
            "[core]\n\tobjectformat = sha256\n",
            "[extensions]\n\tobjectformat = sha1\n",
            "[extensions]\n[core]\nobjectformat = sha256\n",
        ];
        for config in sha1 {
            assert_eq!(
                object_format(config.as_bytes()),
                ObjectFormat::Sha1,
                "{config}"
            );
        }
    }

    #[test]
    fn a_gitlinks_directory_is_not_walked() {
        let dir = repository(&[], &["a"]);
        let root = dir.path();
        let head = String::from_utf8(git(root, &["rev-parse", "HEAD"])).unwrap();
        let cacheinfo = format!("160000,{},sub", head.trim());
        git(root, &["update-index", "--add", "--cacheinfo", &cacheinfo]);
        write(root, "sub/inside");
        write(root, "sub/deeper/file");
        write(root, "subway/file");
        let index = parse_index(&index_bytes(root), ObjectFormat::Sha1).unwrap();
        assert!(index.subtrees.contains(&b"sub"[..]));
        assert_like_git(root);
        assert_eq!(listed(root), ["subway/file"]);
    }

    #[test]
    fn sparse_index_directories_are_tracked_subtrees() {
        let dir = repository(&[], &["in/a", "out/b", "out/c/d", "top"]);
        let root = dir.path();
        git(
            root,
            &["sparse-checkout", "init", "--cone", "--sparse-index"],
        );
        git(root, &["sparse-checkout", "set", "in"]);
        write(root, "in/new");
        let index = parse_index(&index_bytes(root), ObjectFormat::Sha1).unwrap();
        assert!(index.subtrees.contains(&b"out"[..]), "{index:?}");
        assert_like_git(root);
    }

    #[test]
    fn split_indexes_are_refused_by_name() {
        let dir = repository(&[], &["a"]);
        git(dir.path(), &["update-index", "--split-index"]);
        let err = parse_index(&index_bytes(dir.path()), ObjectFormat::Sha1).unwrap_err();
        assert!(matches!(err, IndexError::SplitIndex { .. }), "{err}");
        assert!(err.to_string().contains("split index"), "{err}");
        let err = list(dir.path()).unwrap_err().to_string();
        assert!(err.contains("--no-split-index"), "{err}");
    }

    #[test]
    fn a_git_symlink_or_gitdir_file_is_not_followed() {
        let other = repository(&[], &["secret"]);
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "secret");
        write(dir.path(), "mine");
        symlink(other.path().join(".git"), dir.path().join(".git")).unwrap();
        assert!(matches!(
            list(dir.path()),
            Err(UntrackedError::GitNotADirectory)
        ));

        std::fs::remove_file(dir.path().join(".git")).unwrap();
        let gitdir = format!("gitdir: {}\n", other.path().join(".git").display());
        std::fs::write(dir.path().join(".git"), gitdir).unwrap();
        assert!(matches!(
            list(dir.path()),
            Err(UntrackedError::GitNotADirectory)
        ));
    }

    #[test]
    fn no_repository_is_a_warning_not_a_failure() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "a");
        assert_eq!(
            list(dir.path()).unwrap_err().to_string(),
            "no git repository in the project directory (no .git)"
        );
    }

    #[test]
    fn index_and_config_symlinks_are_not_followed() {
        let other = repository(&[], &["a", "b"]);
        let dir = repository(&[], &[]);
        write(dir.path(), "a");
        let git_dir = dir.path().join(".git");
        symlink(other.path().join(".git/index"), git_dir.join("index")).unwrap();
        assert_eq!(
            list(dir.path()).unwrap_err().to_string(),
            ".git/index is a symbolic link; not followed"
        );
        std::fs::remove_file(git_dir.join("index")).unwrap();
        std::fs::rename(git_dir.join("config"), git_dir.join("config.real")).unwrap();
        symlink("config.real", git_dir.join("config")).unwrap();
        assert_eq!(
            list(dir.path()).unwrap_err().to_string(),
            ".git/config is a symbolic link; not followed"
        );
    }

    #[test]
    fn an_index_too_large_is_refused_before_it_is_read() {
        let dir = repository(&[], &[]);
        write(dir.path(), "a");
        let index = std::fs::File::create(dir.path().join(".git/index")).unwrap();
        index.set_len(MAX_INDEX_BYTES + 1).unwrap();
        assert_eq!(
            list(dir.path()).unwrap_err().to_string(),
            format!(
                ".git/index: {} bytes: larger than the {MAX_INDEX_BYTES} bytes Keyhole reads",
                MAX_INDEX_BYTES + 1
            )
        );
        let fifo = dir.path().join(".git/index");
        std::fs::remove_file(&fifo).unwrap();
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        assert_eq!(
            list(dir.path()).unwrap_err().to_string(),
            ".git/index is not a regular file"
        );
    }

    /// Real indexes of each kind: v2 with a TREE extension, v3, v4, SHA-256.
    fn real_indexes() -> Vec<(Vec<u8>, ObjectFormat)> {
        let v2 = repository(&[], &["a", "b/c", "b/d/e"]);
        let v3 = repository(&[], &["a"]);
        write(v3.path(), "n");
        git(v3.path(), &["add", "-N", "n"]);
        let v4 = repository(&[], &["a/b/c", "a/b/d", "e"]);
        git(v4.path(), &["update-index", "--index-version", "4"]);
        let sha256 = repository(&["--object-format=sha256"], &["a", "b/c"]);
        vec![
            (index_bytes(v2.path()), ObjectFormat::Sha1),
            (index_bytes(v3.path()), ObjectFormat::Sha1),
            (index_bytes(v4.path()), ObjectFormat::Sha1),
            (index_bytes(sha256.path()), ObjectFormat::Sha256),
        ]
    }

    #[test]
    fn every_truncation_of_a_real_index_is_an_error() {
        for (bytes, format) in real_indexes() {
            parse_index(&bytes, format).unwrap();
            for len in 0..bytes.len() {
                assert!(
                    parse_index(&bytes[..len], format).is_err(),
                    "{len} of {} bytes",
                    bytes.len()
                );
            }
        }
    }

    #[test]
    fn every_single_byte_change_of_a_real_index_is_refused() {
        for (bytes, format) in real_indexes() {
            for at in 0..bytes.len() {
                let mut damaged = bytes.clone();
                damaged[at] ^= 0x5a;
                assert!(parse_index(&damaged, format).is_err(), "byte {at}");
            }
        }
    }

    /// An index of `count` entries (claimed) followed by `body` and a zero checksum
    /// (`index.skipHash`).
    fn crafted(version: u32, count: u32, body: &[u8]) -> Vec<u8> {
        let mut bytes = b"DIRC".to_vec();
        bytes.extend_from_slice(&version.to_be_bytes());
        bytes.extend_from_slice(&count.to_be_bytes());
        bytes.extend_from_slice(body);
        bytes.extend_from_slice(&[0; 20]);
        bytes
    }

    /// One entry's fixed part (SHA-1): regular file mode, `flags`.
    fn fixed(mode: u32, flags: u16) -> Vec<u8> {
        let mut entry = vec![0u8; 24];
        entry.extend_from_slice(&mode.to_be_bytes());
        entry.extend_from_slice(&[0; 12]);
        entry.extend_from_slice(&[0xab; 20]);
        entry.extend_from_slice(&flags.to_be_bytes());
        entry
    }

    fn entry_v2(path: &[u8]) -> Vec<u8> {
        let mut entry = fixed(0o100644, path.len() as u16);
        entry.extend_from_slice(path);
        let size = (entry.len() + 8) & !7;
        entry.resize(size, 0);
        entry
    }

    #[test]
    fn crafted_indexes_parse_and_hostile_ones_are_refused_with_the_offset() {
        let mut body = entry_v2(b"a");
        body.extend(entry_v2(b"dir/b"));
        let index = parse_index(&crafted(2, 2, &body), ObjectFormat::Sha1).unwrap();
        assert_eq!(index.paths.len(), 2);

        let err = parse_index(&crafted(2, u32::MAX, &body), ObjectFormat::Sha1).unwrap_err();
        assert!(
            matches!(
                err,
                IndexError::Count {
                    count: u32::MAX,
                    ..
                }
            ),
            "{err}"
        );

        // A path length that runs past the end.
        let mut long = fixed(0o100644, 0x0ffe);
        long.extend_from_slice(b"abc");
        let err = parse_index(&crafted(2, 1, &long), ObjectFormat::Sha1).unwrap_err();
        assert_eq!(
            err,
            IndexError::Truncated {
                entry: 0,
                offset: 12,
                what: "the path",
                end: 12 + long.len()
            }
        );
        assert!(err.to_string().contains("at byte 12"), "{err}");
        // 0xFFF: up to a NUL that never comes.
        let mut unterminated = fixed(0o100644, 0x0fff);
        unterminated.extend_from_slice(&[b'x'; 40]);
        let err = parse_index(&crafted(2, 1, &unterminated), ObjectFormat::Sha1).unwrap_err();
        assert!(matches!(err, IndexError::Truncated { .. }), "{err}");
        // A length that does not meet the NUL.
        let mut wrong = entry_v2(b"abcd");
        wrong[61] = 2;
        let err = parse_index(&crafted(2, 1, &wrong), ObjectFormat::Sha1).unwrap_err();
        assert!(matches!(err, IndexError::Unterminated { .. }), "{err}");

        let err = parse_index(&crafted(5, 0, &[]), ObjectFormat::Sha1).unwrap_err();
        assert_eq!(err, IndexError::Version { version: 5 });
        let err = parse_index(
            b"DIRX\0\0\0\x02\0\0\0\0xxxxxxxxxxxxxxxxxxxx",
            ObjectFormat::Sha1,
        )
        .unwrap_err();
        assert!(matches!(err, IndexError::Signature { .. }), "{err}");

        // Unknown extended flags, as git refuses them.
        let mut extended = fixed(0o100644, FLAG_EXTENDED | 1);
        extended.extend_from_slice(&0x0001u16.to_be_bytes());
        extended.extend_from_slice(b"a\0\0\0\0\0\0\0");
        let err = parse_index(&crafted(3, 1, &extended), ObjectFormat::Sha1).unwrap_err();
        assert!(
            matches!(err, IndexError::ExtendedFlags { flags: 1, .. }),
            "{err}"
        );

        // An extension that runs past the checksum, and bytes too few for one.
        let mut ext = body.clone();
        ext.extend_from_slice(b"TREE\0\0\x01\0");
        let err = parse_index(&crafted(2, 2, &ext), ObjectFormat::Sha1).unwrap_err();
        assert!(matches!(err, IndexError::Extension { .. }), "{err}");
        let mut trailing = body.clone();
        trailing.extend_from_slice(b"TRE");
        let err = parse_index(&crafted(2, 2, &trailing), ObjectFormat::Sha1).unwrap_err();
        assert!(matches!(err, IndexError::Trailing { left: 3, .. }), "{err}");
    }

    /// A version 4 entry: strip `strip` bytes (one-byte varint), then `suffix`.
    fn entry_v4(length: u16, strip: u8, suffix: &[u8]) -> Vec<u8> {
        let mut entry = fixed(0o100644, length);
        entry.push(strip);
        entry.extend_from_slice(suffix);
        entry.push(0);
        entry
    }

    #[test]
    fn version_4_prefixes_that_do_not_fit_are_refused_and_paths_are_bounded() {
        let mut body = entry_v4(3, 0, b"abc");
        body.extend(entry_v4(4, 1, b"de"));
        let index = parse_index(&crafted(4, 2, &body), ObjectFormat::Sha1).unwrap();
        assert!(index.paths.contains(&b"abde"[..]));

        let mut strip = entry_v4(3, 0, b"abc");
        strip.extend(entry_v4(1, 9, b"x"));
        let err = parse_index(&crafted(4, 2, &strip), ObjectFormat::Sha1).unwrap_err();
        assert!(
            matches!(
                err,
                IndexError::Strip {
                    entry: 1,
                    strip: 9,
                    previous: 3,
                    ..
                }
            ),
            "{err}"
        );

        let mut length = entry_v4(3, 0, b"abc");
        length.extend(entry_v4(1, 0, b"x"));
        let err = parse_index(&crafted(4, 2, &length), ObjectFormat::Sha1).unwrap_err();
        assert!(
            matches!(err, IndexError::NameLength { kept: 3, .. }),
            "{err}"
        );

        let mut overflow = fixed(0o100644, 1);
        overflow.extend_from_slice(&[0xff; 10]);
        overflow.extend_from_slice(b"\x01a\0");
        let err = parse_index(&crafted(4, 1, &overflow), ObjectFormat::Sha1).unwrap_err();
        assert!(matches!(err, IndexError::Varint { .. }), "{err}");

        // Each entry keeps the whole previous path and adds a byte: paths grow quadratically
        // with the file, until the budget stops them.
        let mut growing = entry_v4(0x0fff, 0, &[b'p'; 5000]);
        let entries = 200u32;
        for _ in 1..entries {
            growing.extend(entry_v4(0x0fff, 0, b"q"));
        }
        let bytes = crafted(4, entries, &growing);
        assert!(parse(&bytes, ObjectFormat::Sha1, u64::MAX).is_ok());
        let err = parse(&bytes, ObjectFormat::Sha1, 100_000).unwrap_err();
        assert!(matches!(err, IndexError::PathBytes { .. }), "{err}");
    }

    #[test]
    fn a_wrong_checksum_is_refused() {
        let dir = repository(&[], &["a"]);
        let mut bytes = index_bytes(dir.path());
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        let err = parse_index(&bytes, ObjectFormat::Sha1).unwrap_err();
        assert!(matches!(err, IndexError::Checksum { len: 20, .. }), "{err}");
    }

    #[test]
    fn varints_decode_as_git_writes_them() {
        assert_eq!(varint(&[0x05]), Some((5, 1)));
        assert_eq!(varint(&[0x80, 0x00]), Some((128, 2)));
        assert_eq!(varint(&[0x81, 0x7f]), Some((383, 2)));
        assert_eq!(varint(&[0x80]), None);
        assert_eq!(varint(&[]), None);
        assert_eq!(varint(&[0xff; 12]), None);
    }

    proptest::proptest! {
        #[test]
        fn any_bytes_parse_without_panicking(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..600)) {
            for format in [ObjectFormat::Sha1, ObjectFormat::Sha256] {
                let _ = parse_index(&bytes, format);
            }
            let mut headed = crafted(2, 3, &bytes);
            let _ = parse_index(&headed, ObjectFormat::Sha1);
            headed[7] = 4;
            let _ = parse_index(&headed, ObjectFormat::Sha1);
        }
    }
}
