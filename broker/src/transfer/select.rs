//! Which files an `artifacts:` or `cache:` entry means, with gitlab-runner's semantics
//! (`commands/helpers/file_archiver.go`): each `paths:` item is relative to the project
//! directory and may be a doublestar glob (`*` stays within one path component, `**` crosses
//! them); a match that is a directory brings everything beneath it, itself included (so empty
//! directories survive); `exclude:` globs leave out what they match.
//!
//! The tree is the job's, so: nothing is followed. A symlink is an entry of its own (never
//! descended into), a path item that runs through a symlink (`link/file`) is refused with a
//! warning, and a path item that leads outside the project directory (absolute elsewhere, or
//! `..` after lexical cleaning) is refused with gitlab-runner's warning. FIFOs, sockets and
//! devices are skipped with a warning. The walk keeps names only, never file contents.
//!
//! Two deliberate differences from gitlab-runner: an `exclude:` pattern that matches a
//! directory leaves out everything beneath it too (gitlab-runner matches each path on its own,
//! so `exclude: [build]` there drops only the directory's own entry); and an `exclude:`
//! pattern that is not a glob is an error rather than ignored (ignoring it would archive what
//! the job meant to leave out).
//!
//! `untracked: true` adds the files git does not track ([`super::untracked`]), as
//! gitlab-runner adds what `git ls-files -o` prints; `exclude:` applies to them too.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use globset::{GlobBuilder, GlobMatcher, GlobSet, GlobSetBuilder};
use walkdir::WalkDir;

use super::archive::ArchiveError;
use super::entry::entry_of;
pub use super::entry::{Entry, EntryKind};
use super::untracked::Listing;

/// The outcome of [`select`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Selection {
    /// Sorted by path (component-wise, so parents come before their children), no duplicates.
    pub entries: Vec<Entry>,
    /// gitlab-runner's warnings, for the job log: missing paths, paths outside the project
    /// directory or through a symlink, skipped special files.
    pub warnings: Vec<String>,
    /// Files, directories and symlinks left out by `exclude:`, beneath excluded directories
    /// too; counted once per `paths:` item that reached them, and once more for an untracked
    /// file (as gitlab-runner counts).
    pub excluded: u64,
}

/// Lists the files that `paths` (minus `exclude`) mean beneath `root`, the project directory.
///
/// # Errors
/// [`ArchiveError::Root`] when `root` is not a readable directory;
/// [`ArchiveError::ExcludePattern`] for an `exclude` item that is not a glob. Everything about
/// single `paths` items is a warning in the [`Selection`], as in gitlab-runner.
pub fn select(
    root: &Path,
    paths: &[String],
    exclude: &[String],
) -> Result<Selection, ArchiveError> {
    select_with_untracked(root, paths, exclude, false)
}

/// [`select`], plus, with `untracked` (`artifacts:untracked`, `cache:untracked`), the files
/// git does not track in `root` ([`super::untracked::list`]: what `git ls-files -o` prints,
/// ignored files included), minus `exclude` as well. The result stays sorted and
/// deduplicated; problems with the repository are warnings (no untracked files), as in
/// gitlab-runner.
///
/// # Errors
/// As [`select`].
pub fn select_with_untracked(
    root: &Path,
    paths: &[String],
    exclude: &[String],
    untracked: bool,
) -> Result<Selection, ArchiveError> {
    let metadata = std::fs::metadata(root).map_err(|source| ArchiveError::Root {
        root: root.to_owned(),
        source,
    })?;
    if !metadata.is_dir() {
        return Err(ArchiveError::Root {
            root: root.to_owned(),
            source: std::io::Error::from(std::io::ErrorKind::NotADirectory),
        });
    }
    let mut warnings = Vec::new();
    let excludes = exclude_set(root, exclude, &mut warnings)?;
    let mut collector = Collector {
        root,
        excludes,
        entries: BTreeMap::new(),
        warnings,
        excluded: 0,
    };
    for item in paths {
        collector.process(item);
    }
    if untracked {
        match super::untracked::list(root) {
            Ok(listing) => collector.add_untracked(listing),
            Err(e) => collector
                .warnings
                .push(format!("untracked: {e}; no untracked files are added")),
        }
    }
    Ok(Selection {
        entries: collector
            .entries
            .into_iter()
            .map(|(relative, (kind, mtime))| Entry {
                relative,
                kind,
                mtime,
            })
            .collect(),
        warnings: collector.warnings,
        excluded: collector.excluded,
    })
}

// === Path items: cleaning and splitting ===

/// The components of a `paths:`/`exclude:` item relative to `root`, cleaned lexically (as Go's
/// `filepath.Abs`/`filepath.Rel` do in gitlab-runner): empty and `.` components dropped, `..`
/// taking back the one before. An absolute item counts if it lies in `root` (`$CI_PROJECT_DIR/x`
/// works, as with gitlab-runner). `None`: the item leads outside `root`.
///
/// Lexical `..` is safe here: the result lies in `root`, and the walk follows no symlink.
fn clean<'a>(root: &Path, item: &'a str) -> Option<Vec<&'a str>> {
    let components = lexical(item)?;
    if !item.starts_with('/') {
        return Some(components);
    }
    let root = root.to_str()?;
    let root_components = lexical(root)?;
    if components.len() >= root_components.len()
        && components.iter().zip(&root_components).all(|(a, b)| a == b)
    {
        Some(components.get(root_components.len()..)?.to_vec())
    } else {
        None
    }
}

/// `/`-separated components without empty ones and `.`, `..` applied; `None` if a `..` has
/// nothing left to take back.
fn lexical(path: &str) -> Option<Vec<&str>> {
    let mut out = Vec::new();
    for component in path.split('/') {
        match component {
            "" | "." => {}
            ".." => {
                out.pop()?;
            }
            other => out.push(other),
        }
    }
    Some(out)
}

/// Whether a path component has glob syntax (doublestar's, which globset shares).
fn is_glob(component: &str) -> bool {
    component.contains(['*', '?', '[', '{'])
}

/// A compiled `paths:` glob, with how deep a match can be when that is fixed (no `**`, no
/// `{a,b/c}` alternatives): directories deeper than that cannot hold a match and are not walked.
struct Pattern {
    glob: GlobMatcher,
    depth: Option<usize>,
}

impl Pattern {
    fn new(components: &[&str]) -> Result<Self, globset::Error> {
        let text = components.join("/");
        let glob = GlobBuilder::new(&text)
            .literal_separator(true)
            .build()?
            .compile_matcher();
        let fixed = !text.contains("**") && !text.contains('{');
        Ok(Self {
            glob,
            depth: fixed.then_some(components.len()),
        })
    }
}

/// The `exclude:` globs, cleaned like `paths:` items. One outside `root` can match nothing
/// there: a warning, not an error.
fn exclude_set(
    root: &Path,
    exclude: &[String],
    warnings: &mut Vec<String>,
) -> Result<GlobSet, ArchiveError> {
    let mut builder = GlobSetBuilder::new();
    for pattern in exclude {
        let Some(components) = clean(root, pattern) else {
            warnings.push(format!("{pattern}: not supported: outside build directory"));
            continue;
        };
        let glob = GlobBuilder::new(&components.join("/"))
            .literal_separator(true)
            .build()
            .map_err(|e| ArchiveError::ExcludePattern {
                pattern: pattern.clone(),
                reason: e.kind().to_string(),
            })?;
        builder.add(glob);
    }
    builder.build().map_err(|e| ArchiveError::ExcludePattern {
        pattern: exclude.join(", "),
        reason: e.to_string(),
    })
}

// === The walk ===

/// Why a literal path prefix cannot be walked into.
enum Blocked {
    /// Missing, or a file where a directory should be.
    Missing,
    /// A symlink where a directory should be: not followed.
    Symlink(PathBuf),
}

/// Checks that each of `components` (a path relative to `root`) is a real directory, not a
/// symlink to one.
fn real_directories(root: &Path, components: &[&str]) -> Result<(), Blocked> {
    let mut path = root.to_path_buf();
    for (i, component) in components.iter().enumerate() {
        path.push(component);
        let metadata = std::fs::symlink_metadata(&path).map_err(|_| Blocked::Missing)?;
        if metadata.file_type().is_symlink() {
            let prefix: PathBuf = components.iter().take(i + 1).collect();
            return Err(Blocked::Symlink(prefix));
        }
        if !metadata.is_dir() {
            return Err(Blocked::Missing);
        }
    }
    Ok(())
}

/// The selection being built.
struct Collector<'a> {
    root: &'a Path,
    excludes: GlobSet,
    /// Keyed by relative path: sorted, deduplicated; names only.
    entries: BTreeMap<PathBuf, (EntryKind, i64)>,
    warnings: Vec<String>,
    excluded: u64,
}

impl Collector<'_> {
    /// One `paths:` item.
    fn process(&mut self, item: &str) {
        let Some(components) = clean(self.root, item) else {
            self.warnings
                .push(format!("{item}: not supported: outside build directory"));
            return;
        };
        let literal = components.iter().position(|c| is_glob(c));
        let (base, pattern) = match literal {
            None => (components.as_slice(), None),
            Some(i) => match Pattern::new(&components) {
                Ok(pattern) => (components.get(..i).unwrap_or_default(), Some(pattern)),
                Err(e) => {
                    self.warnings.push(format!("{item}: {}", e.kind()));
                    return;
                }
            },
        };
        // A literal item's own last component may be anything (a symlink is an entry); every
        // directory above it, and a glob's whole base, must be a real directory.
        let must_be_dirs = match pattern {
            None => base.split_last().map_or(&[][..], |(_, parents)| parents),
            Some(_) => base,
        };
        let found = match real_directories(self.root, must_be_dirs) {
            Err(Blocked::Symlink(prefix)) => {
                self.warnings.push(format!(
                    "{item}: not supported: {} is a symbolic link (not followed)",
                    prefix.display()
                ));
                return;
            }
            Err(Blocked::Missing) => 0,
            Ok(()) => {
                let start: PathBuf = base.iter().collect();
                if pattern.is_none()
                    && !start.as_os_str().is_empty()
                    && std::fs::symlink_metadata(self.root.join(&start)).is_err()
                {
                    0
                } else {
                    self.walk(item, &start, pattern.as_ref())
                }
            }
        };
        if found == 0 {
            self.warnings.push(format!(
                "{item}: no matching files. Ensure that the artifact path is relative to the working directory ({})",
                self.root.display()
            ));
        }
    }

    /// Whether `relative` or a directory above it (below the root) is excluded.
    fn excluded_with_parents(&self, relative: &Path) -> bool {
        relative
            .ancestors()
            .filter(|a| !a.as_os_str().is_empty())
            .any(|a| self.excludes.is_match(a))
    }

    /// Walks `start` (relative; empty for the root itself). Without a pattern everything from
    /// `start` down is selected (`start` too, unless it is the root); with one, what matches
    /// it and everything beneath a matching directory. Returns how many entries were found.
    ///
    /// Depth-first order lets "beneath a match" and "beneath an excluded directory" be one
    /// remembered depth each instead of a test of every ancestor.
    fn walk(&mut self, item: &str, start: &Path, pattern: Option<&Pattern>) -> u64 {
        let whole = pattern.is_none();
        let min_depth = if whole && !start.as_os_str().is_empty() {
            0
        } else {
            1
        };
        // Directories above the walk are never visited by it: test them once here.
        let above_excluded = match start.parent() {
            Some(parent) if whole => self.excluded_with_parents(parent),
            _ => self.excluded_with_parents(start),
        };
        let mut walker = WalkDir::new(self.root.join(start))
            .follow_links(false)
            .follow_root_links(false)
            .min_depth(min_depth)
            .sort_by_file_name()
            .into_iter();
        let mut matched_at: Option<usize> = None;
        let mut excluded_at: Option<usize> = None;
        let mut found = 0;
        while let Some(next) = walker.next() {
            let dent = match next {
                Ok(dent) => dent,
                Err(e) => {
                    self.warnings.push(format!("{item}: {e}"));
                    continue;
                }
            };
            let depth = dent.depth();
            if matched_at.is_some_and(|d| depth <= d) {
                matched_at = None;
            }
            if excluded_at.is_some_and(|d| depth <= d) {
                excluded_at = None;
            }
            let Ok(relative) = dent.path().strip_prefix(self.root) else {
                continue;
            };
            let is_dir = dent.file_type().is_dir();
            let excluded =
                above_excluded || excluded_at.is_some() || self.excludes.is_match(relative);
            if excluded && is_dir && excluded_at.is_none() {
                excluded_at = Some(depth);
            }
            let inside = whole
                || matched_at.is_some()
                || match pattern {
                    Some(p) if p.glob.is_match(relative) => {
                        if is_dir {
                            matched_at = Some(depth);
                        }
                        true
                    }
                    _ => false,
                };
            if !inside {
                let too_deep = pattern
                    .and_then(|p| p.depth)
                    .is_some_and(|d| relative.components().count() >= d);
                if is_dir && too_deep {
                    walker.skip_current_dir();
                }
                continue;
            }
            if excluded {
                self.excluded += 1;
                continue;
            }
            if self.add(relative, &dent) {
                found += 1;
            }
        }
        found
    }

    /// Adds one walked path, or warns why not. Returns whether it was added.
    fn add(&mut self, relative: &Path, dent: &walkdir::DirEntry) -> bool {
        match entry_of(relative, dent) {
            Ok(entry) => {
                self.entries
                    .insert(entry.relative, (entry.kind, entry.mtime));
                true
            }
            Err(warning) => {
                self.warnings.push(warning);
                false
            }
        }
    }

    /// The untracked files (`untracked: true`), added after the `paths:` items: `exclude:`
    /// applies to them as to paths (each one left out counts once), and a file both lists
    /// name is one entry. Warns as gitlab-runner does when there is none.
    fn add_untracked(&mut self, listing: Listing) {
        self.warnings.extend(listing.warnings);
        let mut found = 0u64;
        for entry in listing.entries {
            if self.excluded_with_parents(&entry.relative) {
                self.excluded += 1;
                continue;
            }
            self.entries
                .insert(entry.relative, (entry.kind, entry.mtime));
            found += 1;
        }
        if found == 0 {
            self.warnings.push("untracked: no files".to_owned());
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::symlink;

    use super::*;
    use crate::transfer::untracked::tests::repository;

    fn write(root: &Path, relative: &str) {
        let path = root.join(relative);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, relative.as_bytes()).unwrap();
    }

    fn tree(files: &[&str]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for file in files {
            write(dir.path(), file);
        }
        dir
    }

    fn names(selection: &Selection) -> Vec<String> {
        selection
            .entries
            .iter()
            .map(|e| e.relative.to_str().unwrap().to_owned())
            .collect()
    }

    fn paths(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn cleaning_applies_dots_and_keeps_absolute_paths_inside_the_root() {
        let root = Path::new("/builds/group/project");
        assert_eq!(clean(root, "./a//b/"), Some(vec!["a", "b"]));
        assert_eq!(clean(root, "a/../b"), Some(vec!["b"]));
        assert_eq!(clean(root, "."), Some(vec![]));
        assert_eq!(clean(root, "../other"), None);
        assert_eq!(clean(root, "a/../../x"), None);
        assert_eq!(
            clean(root, "/builds/group/project/dist"),
            Some(vec!["dist"])
        );
        assert_eq!(clean(root, "/builds/group/project/../x"), None);
        assert_eq!(clean(root, "/etc/passwd"), None);
        assert_eq!(clean(root, "/builds/group/projectile"), None);
    }

    #[test]
    fn doublestar_glob_matches_at_any_depth() {
        let dir = tree(&["a.xml", "x/b.xml", "x/y/c.xml", "x/y/c.txt"]);
        let selection = select(dir.path(), &paths(&["**/*.xml"]), &[]).unwrap();
        assert_eq!(names(&selection), ["a.xml", "x/b.xml", "x/y/c.xml"]);
        assert!(selection.warnings.is_empty(), "{:?}", selection.warnings);
    }

    #[test]
    fn single_star_does_not_cross_a_slash() {
        let dir = tree(&["a.txt", "sub/b.txt", "sub/deeper/c.txt"]);
        let selection = select(dir.path(), &paths(&["*.txt", "sub/*.txt"]), &[]).unwrap();
        assert_eq!(names(&selection), ["a.txt", "sub/b.txt"]);
    }

    #[test]
    fn a_directory_brings_itself_and_everything_beneath_it() {
        let dir = tree(&["dist/app.js", "dist/css/site.css", "src/main.rs"]);
        std::fs::create_dir(dir.path().join("dist/empty")).unwrap();
        let selection = select(dir.path(), &paths(&["dist/"]), &[]).unwrap();
        assert_eq!(
            names(&selection),
            [
                "dist",
                "dist/app.js",
                "dist/css",
                "dist/css/site.css",
                "dist/empty"
            ]
        );
        assert!(matches!(selection.entries[0].kind, EntryKind::Dir { .. }));
        assert!(matches!(
            selection.entries[1].kind,
            EntryKind::File { size: 11, .. }
        ));
    }

    #[test]
    fn a_glob_matching_a_directory_brings_its_contents() {
        let dir = tree(&["pkg/a/out/x.bin", "pkg/b/out/y.bin", "pkg/b/src/z.c"]);
        let selection = select(dir.path(), &paths(&["pkg/*/out"]), &[]).unwrap();
        assert_eq!(
            names(&selection),
            [
                "pkg/a/out",
                "pkg/a/out/x.bin",
                "pkg/b/out",
                "pkg/b/out/y.bin"
            ]
        );
    }

    #[test]
    fn overlapping_items_give_each_entry_once_parents_first() {
        let dir = tree(&["a/b/c.txt", "a.txt"]);
        let selection = select(dir.path(), &paths(&["a/b/c.txt", "a", "**/*.txt"]), &[]).unwrap();
        assert_eq!(names(&selection), ["a", "a/b", "a/b/c.txt", "a.txt"]);
    }

    #[test]
    fn the_whole_project_directory_is_dot() {
        let dir = tree(&["a", "b/c"]);
        let selection = select(dir.path(), &paths(&["."]), &[]).unwrap();
        assert_eq!(names(&selection), ["a", "b", "b/c"]);
    }

    #[test]
    fn exclude_leaves_out_matches_and_what_is_beneath_them_and_counts_them() {
        let dir = tree(&[
            "build/app",
            "build/app.o",
            "build/obj/x.o",
            "build/cache/a",
            "build/cache/b/c",
        ]);
        let selection = select(
            dir.path(),
            &paths(&["build"]),
            &paths(&["**/*.o", "build/cache"]),
        )
        .unwrap();
        assert_eq!(names(&selection), ["build", "build/app", "build/obj"]);
        // app.o, obj/x.o, cache, cache/a, cache/b, cache/b/c
        assert_eq!(selection.excluded, 6);
    }

    #[test]
    fn exclude_of_a_parent_applies_to_a_literal_path_beneath_it() {
        let dir = tree(&["vendor/lib/x"]);
        let selection = select(dir.path(), &paths(&["vendor/lib/x"]), &paths(&["vendor"])).unwrap();
        assert!(selection.entries.is_empty());
        assert_eq!(selection.excluded, 1);
        assert!(selection.warnings[0].contains("no matching files"));
    }

    #[test]
    fn an_invalid_exclude_pattern_is_an_error() {
        let dir = tree(&["a"]);
        let err = select(dir.path(), &paths(&["a"]), &paths(&["[unclosed"])).unwrap_err();
        assert!(matches!(err, ArchiveError::ExcludePattern { .. }), "{err}");
    }

    #[test]
    fn a_missing_path_warns_like_gitlab_runner() {
        let dir = tree(&["a"]);
        let selection = select(dir.path(), &paths(&["missing/file", "nothing*"]), &[]).unwrap();
        assert!(selection.entries.is_empty());
        assert_eq!(
            selection.warnings[0],
            format!(
                "missing/file: no matching files. Ensure that the artifact path is relative to the working directory ({})",
                dir.path().display()
            )
        );
        assert!(selection.warnings[1].starts_with("nothing*: no matching files."));
    }

    #[test]
    fn paths_outside_the_project_directory_are_refused_with_a_warning() {
        let dir = tree(&["project/a", "secret"]);
        let root = dir.path().join("project");
        let items = paths(&["../secret", "/etc/passwd", "a/../../secret"]);
        let selection = select(&root, &items, &[]).unwrap();
        assert!(selection.entries.is_empty());
        assert_eq!(
            selection.warnings,
            [
                "../secret: not supported: outside build directory",
                "/etc/passwd: not supported: outside build directory",
                "a/../../secret: not supported: outside build directory",
            ]
        );
        let inside = format!("{}/a", root.display());
        assert_eq!(names(&select(&root, &[inside], &[]).unwrap()), ["a"]);
    }

    #[test]
    fn symlinks_are_entries_never_followed() {
        let dir = tree(&["outside/secret", "project/real/file"]);
        let root = dir.path().join("project");
        symlink(dir.path().join("outside"), root.join("link")).unwrap();
        symlink("real", root.join("real_link")).unwrap();

        let selection = select(&root, &paths(&["."]), &[]).unwrap();
        assert_eq!(
            names(&selection),
            ["link", "real", "real/file", "real_link"]
        );
        assert_eq!(
            selection.entries[0].kind,
            EntryKind::Symlink {
                target: dir.path().join("outside")
            }
        );

        let globbed = select(&root, &paths(&["**/secret", "*/file"]), &[]).unwrap();
        assert_eq!(names(&globbed), ["real/file"]);
    }

    #[test]
    fn a_literal_path_through_a_symlink_is_refused() {
        let dir = tree(&["outside/secret"]);
        let root = dir.path().join("project");
        std::fs::create_dir(&root).unwrap();
        symlink(dir.path().join("outside"), root.join("link")).unwrap();

        let selection = select(&root, &paths(&["link/secret", "link/*"]), &[]).unwrap();
        assert!(selection.entries.is_empty(), "{:?}", selection.entries);
        assert_eq!(
            selection.warnings,
            [
                "link/secret: not supported: link is a symbolic link (not followed)",
                "link/*: not supported: link is a symbolic link (not followed)",
            ]
        );
        let itself = select(&root, &paths(&["link"]), &[]).unwrap();
        assert_eq!(names(&itself), ["link"]);
    }

    #[test]
    fn special_files_are_skipped_with_a_warning() {
        let dir = tree(&["out/a"]);
        nix::unistd::mkfifo(
            &dir.path().join("out/fifo"),
            nix::sys::stat::Mode::from_bits_truncate(0o600),
        )
        .unwrap();
        let selection = select(dir.path(), &paths(&["out"]), &[]).unwrap();
        assert_eq!(names(&selection), ["out", "out/a"]);
        assert_eq!(
            selection.warnings,
            ["out/fifo: not a regular file, directory or symbolic link; skipped"]
        );
    }

    #[test]
    fn untracked_files_join_the_paths_once_in_order_and_exclude_applies_to_them() {
        let dir = repository(&[], &["src/main.rs", "dist/README"]);
        let root = dir.path();
        std::fs::write(root.join(".gitignore"), "*.o\n").unwrap();
        for file in [
            "dist/app",
            "dist/tmp/x",
            "notes.txt",
            "src/gen.rs",
            "obj/a.o",
        ] {
            write(root, file);
        }
        let selection = select_with_untracked(
            root,
            &paths(&["dist"]),
            &paths(&["dist/tmp", "*.txt"]),
            true,
        )
        .unwrap();
        assert_eq!(
            names(&selection),
            [
                ".gitignore",
                "dist",
                "dist/README",
                "dist/app",
                "obj/a.o",
                "src/gen.rs"
            ]
        );
        // dist/tmp and dist/tmp/x from `paths`; dist/tmp/x and notes.txt from `untracked`.
        assert_eq!(selection.excluded, 4);
        assert!(selection.warnings.is_empty(), "{:?}", selection.warnings);
        assert_eq!(
            select_with_untracked(root, &[], &[], true)
                .unwrap()
                .entries
                .len(),
            6,
            "untracked alone: .gitignore, dist/app, dist/tmp/x, notes.txt, src/gen.rs, obj/a.o"
        );
        assert_eq!(
            select_with_untracked(root, &paths(&["dist"]), &[], false).unwrap(),
            select(root, &paths(&["dist"]), &[]).unwrap()
        );
    }

    #[test]
    fn untracked_without_a_repository_or_files_warns_and_keeps_the_paths() {
        let dir = tree(&["a"]);
        let selection = select_with_untracked(dir.path(), &paths(&["a"]), &[], true).unwrap();
        assert_eq!(names(&selection), ["a"]);
        assert_eq!(
            selection.warnings,
            [
                "untracked: no git repository in the project directory (no .git); no untracked files are added"
            ]
        );

        let clean = repository(&[], &["a"]);
        let selection = select_with_untracked(clean.path(), &[], &[], true).unwrap();
        assert!(selection.entries.is_empty());
        assert_eq!(selection.warnings, ["untracked: no files"]);
    }

    #[test]
    fn a_root_that_is_missing_is_an_error() {
        let dir = tree(&[]);
        let err = select(&dir.path().join("nope"), &paths(&["a"]), &[]).unwrap_err();
        assert!(matches!(err, ArchiveError::Root { .. }), "{err}");
    }
}
