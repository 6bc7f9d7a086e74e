//! Searching bytes, files and directory trees for every form of every needle at once.

use std::collections::HashSet;
use std::fmt;
use std::path::{Path, PathBuf};

use aho_corasick::AhoCorasick;
use anyhow::{Context, Result};

use super::needle::{Form, Needle};

/// One needle, in one form, in one place.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Finding {
    pub needle: String,
    pub form: Form,
    /// What was searched: a file path, `etcd:<key>`, `pod <name>`, `trace`, ...
    pub place: String,
    /// The place is a file on a memory-backed filesystem (tmpfs), not on disk.
    pub in_memory: bool,
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({}) in {}", self.needle, self.form, self.place)?;
        if self.in_memory {
            f.write_str(" [tmpfs]")?;
        }
        Ok(())
    }
}

/// One line per finding, for assertion messages.
pub fn report(findings: &[Finding]) -> String {
    if findings.is_empty() {
        return "nothing found".into();
    }
    findings
        .iter()
        .map(|f| format!("  {f}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Searches for every form of a set of needles in one pass over the bytes.
pub struct Scanner {
    automaton: AhoCorasick,
    /// Pattern id → (needle name, form).
    patterns: Vec<(String, Form)>,
}

impl fmt::Debug for Scanner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Scanner")
            .field("patterns", &self.patterns)
            .finish_non_exhaustive()
    }
}

impl Scanner {
    pub fn new(needles: &[&Needle]) -> Result<Self> {
        let mut bytes = Vec::new();
        let mut patterns = Vec::new();
        for needle in needles {
            for (form, b) in needle.forms() {
                bytes.push(b);
                patterns.push((needle.name().to_string(), form));
            }
        }
        let automaton = AhoCorasick::new(&bytes).context("building the needle automaton")?;
        Ok(Self {
            automaton,
            patterns,
        })
    }

    /// Each (needle, form) found in `haystack`, once.
    pub fn scan(&self, place: &str, haystack: &[u8]) -> Vec<Finding> {
        let mut seen = HashSet::new();
        let mut out = Vec::new();
        for m in self.automaton.find_overlapping_iter(haystack) {
            let id = m.pattern().as_usize();
            if seen.insert(id) {
                let (needle, form) = &self.patterns[id];
                out.push(Finding {
                    needle: needle.clone(),
                    form: *form,
                    place: place.to_string(),
                    in_memory: false,
                });
            }
        }
        out.sort();
        out
    }

    /// Every regular file under `root` (symlinks are not followed; files that vanish while
    /// being read, as a pod's do when it is torn down, are skipped). Files on a tmpfs mounted
    /// below `root` are searched too, and marked `in_memory`.
    pub fn scan_tree(&self, root: &Path) -> Result<Vec<Finding>> {
        let mounts = Mounts::read()?;
        let mut out = Vec::new();
        let mut stack = vec![root.to_path_buf()];
        while let Some(dir) = stack.pop() {
            let entries = match std::fs::read_dir(&dir) {
                Ok(e) => e,
                Err(e) if vanished(&e) => continue,
                Err(e) => return Err(e).with_context(|| format!("listing {}", dir.display())),
            };
            for entry in entries {
                let entry = match entry {
                    Ok(e) => e,
                    Err(e) if vanished(&e) => continue,
                    Err(e) => return Err(e).with_context(|| format!("listing {}", dir.display())),
                };
                let path = entry.path();
                let Ok(kind) = entry.file_type() else {
                    continue;
                };
                if kind.is_dir() {
                    stack.push(path);
                } else if kind.is_file() {
                    let bytes = match std::fs::read(&path) {
                        Ok(b) => b,
                        Err(e) if vanished(&e) => continue,
                        Err(e) => {
                            return Err(e).with_context(|| format!("reading {}", path.display()));
                        }
                    };
                    let in_memory = mounts.is_tmpfs(&path);
                    out.extend(
                        self.scan(&path.display().to_string(), &bytes)
                            .into_iter()
                            .map(|f| Finding { in_memory, ..f }),
                    );
                }
            }
        }
        out.sort();
        Ok(out)
    }

    /// [`Scanner::scan_tree`] of each root that exists.
    pub fn scan_trees(&self, roots: &[PathBuf]) -> Result<Vec<Finding>> {
        let mut out = Vec::new();
        for root in roots.iter().filter(|r| r.exists()) {
            out.extend(self.scan_tree(root)?);
        }
        Ok(out)
    }
}

fn vanished(e: &std::io::Error) -> bool {
    e.kind() == std::io::ErrorKind::NotFound
}

/// The mount table: each mount point and whether it is a tmpfs.
struct Mounts(Vec<(PathBuf, bool)>);

impl Mounts {
    /// From `/proc/self/mounts` (octal escapes decoded).
    fn read() -> Result<Self> {
        let text =
            std::fs::read_to_string("/proc/self/mounts").context("reading /proc/self/mounts")?;
        Ok(Self(
            text.lines()
                .filter_map(|line| {
                    let mut fields = line.split(' ');
                    let (_, point, kind) = (fields.next()?, fields.next()?, fields.next()?);
                    Some((PathBuf::from(unescape_mount(point)), kind == "tmpfs"))
                })
                .collect(),
        ))
    }

    /// Whether the filesystem holding `path` (its deepest mount point) is a tmpfs.
    fn is_tmpfs(&self, path: &Path) -> bool {
        self.0
            .iter()
            .filter(|(point, _)| path.starts_with(point))
            .max_by_key(|(point, _)| point.components().count())
            .is_some_and(|(_, tmpfs)| *tmpfs)
    }
}

fn unescape_mount(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && let Some(code) = s
                .get(i + 1..i + 4)
                .and_then(|o| u8::from_str_radix(o, 8).ok())
        {
            out.push(code);
            i += 4;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_each_needle_once_per_form_and_nothing_else() {
        let a = Needle::new("A", "alpha-secret-0001");
        let b = Needle::new("B", "beta \"quoted\" secret");
        let scanner = Scanner::new(&[&a, &b]).unwrap();
        let hay = br#"x alpha-secret-0001 y alpha-secret-0001 {"v":"beta \"quoted\" secret"}"#;
        let found = scanner.scan("here", hay);
        assert_eq!(
            found
                .iter()
                .map(|f| (f.needle.as_str(), f.form))
                .collect::<Vec<_>>(),
            vec![("A", Form::Raw), ("B", Form::Json)],
            "{}",
            report(&found)
        );
        assert!(scanner.scan("clean", b"alpha-secret-0002").is_empty());
    }

    #[test]
    fn a_tree_scan_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        std::fs::write(dir.path().join("sub/log"), "line alpha-secret-0001\n").unwrap();
        std::fs::write(dir.path().join("other"), "nothing\n").unwrap();
        let a = Needle::new("A", "alpha-secret-0001");
        let found = Scanner::new(&[&a]).unwrap().scan_tree(dir.path()).unwrap();
        assert_eq!(found.len(), 1, "{}", report(&found));
        assert!(found[0].place.ends_with("sub/log"));
    }

    #[test]
    fn mount_points_are_unescaped() {
        assert_eq!(unescape_mount(r"/a\040b"), "/a b");
        assert_eq!(unescape_mount("/plain"), "/plain");
    }
}
