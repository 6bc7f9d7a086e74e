//! `include:` for local runs: only `local` files of the project (GitLab's `include: local`,
//! also written as a bare path, a list of paths or `{local: path}` maps, with `*`/`**`
//! wildcards). Remote, project, template and component includes need GitLab and are refused
//! by name.
//!
//! Merge order is GitLab's: included files in the order listed, each after its own nested
//! includes, later ones winning; then the including file on top, with GitLab's deep merge.
//! Including the same file twice is allowed (the later inclusion wins), as in GitLab; a file
//! that includes itself, directly or through others, is a cycle and an error.

use std::{
    collections::BTreeMap,
    fs, io,
    path::{Component, Path, PathBuf},
    sync::Arc,
};

use super::{
    error::{Location, PipelineError},
    yaml::{self, Map, Node, Value, deep_merge},
};

/// GitLab's limit on included files per pipeline.
pub const MAX_INCLUDES: usize = 150;
/// How deep includes may nest.
pub const MAX_INCLUDE_DEPTH: usize = 100;
/// Largest file read for a pipeline (GitLab's own limit is 2 MiB per YAML file).
pub const MAX_FILE_BYTES: u64 = 4 << 20;

/// Where `include: local` files come from: the project directory for `keyhole-runner exec`,
/// memory for tests and the fuzz target (so parsing stays pure).
pub trait IncludeSource {
    /// The text of `path` (relative to the project root, `/`-separated, no leading `/`), or
    /// `Ok(None)` if there is no such file.
    fn read(&self, path: &str) -> io::Result<Option<String>>;

    /// The files whose paths match `pattern` (`*` within one directory, `**` across
    /// directories), sorted.
    fn glob(&self, pattern: &str) -> io::Result<Vec<String>>;
}

/// No includes at all: every `include:` entry is an error. For single-file parsing.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoIncludes;

impl IncludeSource for NoIncludes {
    fn read(&self, _path: &str) -> io::Result<Option<String>> {
        Ok(None)
    }

    fn glob(&self, _pattern: &str) -> io::Result<Vec<String>> {
        Ok(Vec::new())
    }
}

/// Included files held in memory, keyed by project-relative path.
#[derive(Debug, Clone, Default)]
pub struct MemoryFiles(pub BTreeMap<String, String>);

impl IncludeSource for MemoryFiles {
    fn read(&self, path: &str) -> io::Result<Option<String>> {
        Ok(self.0.get(path).cloned())
    }

    fn glob(&self, pattern: &str) -> io::Result<Vec<String>> {
        Ok(self
            .0
            .keys()
            .filter(|path| wildcard_match(pattern, path))
            .cloned()
            .collect())
    }
}

/// The files of a project directory on disk. Paths never leave the directory: `..` that climbs
/// out of it and symlinks that point outside are refused.
#[derive(Debug, Clone)]
pub struct ProjectFiles {
    root: PathBuf,
}

/// Most directory entries a wildcard include walks before giving up.
const MAX_WALK: usize = 100_000;

impl ProjectFiles {
    /// The files under `root`, the project directory.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    fn walk(
        &self,
        dir: &Path,
        prefix: &str,
        out: &mut Vec<String>,
        seen: &mut usize,
    ) -> io::Result<()> {
        let mut entries: Vec<_> = fs::read_dir(dir)?.collect::<Result<_, _>>()?;
        entries.sort_by_key(fs::DirEntry::file_name);
        for entry in entries {
            *seen += 1;
            if *seen > MAX_WALK {
                return Err(io::Error::other(format!(
                    "the project has more than {MAX_WALK} files; name the included files without wildcards"
                )));
            }
            let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
                continue;
            };
            if name == ".git" {
                continue;
            }
            let path = format!("{prefix}{name}");
            let kind = entry.file_type()?;
            if kind.is_dir() {
                self.walk(&entry.path(), &format!("{path}/"), out, seen)?;
            } else if kind.is_file() {
                out.push(path);
            }
        }
        Ok(())
    }
}

impl IncludeSource for ProjectFiles {
    fn read(&self, path: &str) -> io::Result<Option<String>> {
        let full = self.root.join(path);
        let (Ok(root), Ok(real)) = (self.root.canonicalize(), full.canonicalize()) else {
            return Ok(None);
        };
        if !real.starts_with(&root) {
            return Err(io::Error::other(
                "the file is outside the project directory",
            ));
        }
        if !real.is_file() {
            return Ok(None);
        }
        let len = fs::metadata(&real)?.len();
        if len > MAX_FILE_BYTES {
            return Err(io::Error::other(format!(
                "the file has {len} bytes, more than the {MAX_FILE_BYTES} allowed"
            )));
        }
        fs::read_to_string(&real).map(Some)
    }

    fn glob(&self, pattern: &str) -> io::Result<Vec<String>> {
        let mut all = Vec::new();
        self.walk(&self.root, "", &mut all, &mut 0)?;
        all.retain(|path| wildcard_match(pattern, path));
        Ok(all)
    }
}

/// GitLab's wildcard paths: `*` matches within one path segment, `**` across segments, and
/// `**/` also matches no directory at all.
pub(crate) fn wildcard_match(pattern: &str, path: &str) -> bool {
    enum Tok {
        Char(char),
        Star,
        Any,
        AnyDir,
    }
    let p: Vec<char> = pattern.chars().collect();
    let mut toks = Vec::new();
    let mut i = 0;
    while i < p.len() {
        if p[i] == '*' && p.get(i + 1) == Some(&'*') {
            if p.get(i + 2) == Some(&'/') {
                toks.push(Tok::AnyDir);
                i += 3;
            } else {
                toks.push(Tok::Any);
                i += 2;
            }
        } else if p[i] == '*' {
            toks.push(Tok::Star);
            i += 1;
        } else {
            toks.push(Tok::Char(p[i]));
            i += 1;
        }
    }
    let s: Vec<char> = path.chars().collect();
    let n = s.len();
    // reach[t][j]: the first t tokens can match the first j characters. No backtracking.
    let mut reach = vec![vec![false; n + 1]; toks.len() + 1];
    reach[0][0] = true;
    for (t, tok) in toks.iter().enumerate() {
        for j in 0..=n {
            if !reach[t][j] {
                continue;
            }
            match tok {
                Tok::Char(c) => {
                    if j < n && s[j] == *c {
                        reach[t + 1][j + 1] = true;
                    }
                }
                Tok::Star => {
                    for k in j..=n {
                        reach[t + 1][k] = true;
                        if k == n || s[k] == '/' {
                            break;
                        }
                    }
                }
                Tok::Any => (j..=n).for_each(|k| reach[t + 1][k] = true),
                Tok::AnyDir => {
                    reach[t + 1][j] = true;
                    for k in j + 1..=n {
                        if s[k - 1] == '/' {
                            reach[t + 1][k] = true;
                        }
                    }
                }
            }
        }
    }
    reach[toks.len()][n]
}

/// Everything include processing counts across the whole pipeline.
pub(crate) struct Includer<'s> {
    source: &'s dyn IncludeSource,
    count: usize,
    /// Files being included right now (outermost first), to spot cycles.
    stack: Vec<String>,
    /// Anchor and alias copies left for the whole pipeline.
    copy_budget: yaml::CopyBudget,
    pub(crate) warnings: Vec<String>,
}

impl<'s> Includer<'s> {
    /// `copy_budget`: what the top file left of the pipeline's anchor and alias copies.
    pub(crate) fn new(
        source: &'s dyn IncludeSource,
        top_file: &str,
        copy_budget: yaml::CopyBudget,
    ) -> Self {
        Self {
            source,
            count: 0,
            copy_budget,
            stack: vec![normalize(top_file).unwrap_or_else(|| top_file.to_owned())],
            warnings: Vec::new(),
        }
    }

    /// Replaces `config`'s `include:` by the merged content of the included files.
    pub(crate) fn expand(&mut self, mut config: Map) -> Result<Map, PipelineError> {
        let Some(include) = config.shift_remove("include") else {
            return Ok(config);
        };
        let mut merged = Map::new();
        for (path, at) in self.locations(&include)? {
            let content = self.include_file(&path, &at)?;
            deep_merge(&mut merged, content);
        }
        deep_merge(&mut merged, config);
        Ok(merged)
    }

    fn include_file(&mut self, path: &str, at: &Location) -> Result<Map, PipelineError> {
        let fail = |problem: String| PipelineError::Include {
            at: at.clone(),
            path: path.to_owned(),
            problem,
        };
        if self.stack.iter().any(|p| p == path) {
            let mut chain = self.stack.clone();
            chain.push(path.to_owned());
            return Err(fail(format!(
                "includes itself through {}; remove one of these includes",
                chain.join(" → ")
            )));
        }
        self.count += 1;
        if self.count > MAX_INCLUDES {
            return Err(fail(format!(
                "more than {MAX_INCLUDES} includes (GitLab's limit)"
            )));
        }
        if self.stack.len() > MAX_INCLUDE_DEPTH {
            return Err(fail(format!(
                "includes nest deeper than {MAX_INCLUDE_DEPTH} levels"
            )));
        }
        if !(path.ends_with(".yml") || path.ends_with(".yaml")) {
            return Err(fail(
                "an included file must have a .yml or .yaml extension".to_owned(),
            ));
        }
        let text = match self.source.read(path) {
            Ok(Some(text)) => text,
            Ok(None) => {
                return Err(fail(
                    "no such file in the project (paths are relative to the project root)"
                        .to_owned(),
                ));
            }
            Err(e) => return Err(fail(format!("cannot read it: {e}"))),
        };
        let file: Arc<str> = Arc::from(path);
        let node = yaml::load_config_with(&text, &file, &mut self.copy_budget)?;
        let map = match node.value {
            Value::Map(map) => map,
            Value::Null => return Err(fail("the file is empty".to_owned())),
            _ => {
                return Err(PipelineError::config(
                    &node.at,
                    None,
                    None,
                    format!(
                        "an included file must be a mapping of keys and jobs, not {}",
                        node.kind()
                    ),
                ));
            }
        };
        self.stack.push(path.to_owned());
        let expanded = self.expand(map);
        self.stack.pop();
        expanded
    }

    /// The local files an `include:` value names, in order, wildcards expanded.
    fn locations(&mut self, include: &Node) -> Result<Vec<(String, Location)>, PipelineError> {
        let entries: Vec<&Node> = match &include.value {
            Value::Seq(items) => items.iter().collect(),
            Value::Null => Vec::new(),
            _ => vec![include],
        };
        let mut out = Vec::new();
        for entry in entries {
            let path = self.local_path(entry)?;
            if path.contains('*') {
                let matches = self
                    .source
                    .glob(&path)
                    .map_err(|e| PipelineError::Include {
                        at: entry.at.clone(),
                        path: path.clone(),
                        problem: format!("cannot list the project's files: {e}"),
                    })?;
                if matches.is_empty() {
                    self.warnings
                        .push(format!("{}: include {path:?} matches no file", entry.at));
                }
                out.extend(matches.into_iter().map(|p| (p, entry.at.clone())));
            } else {
                out.push((path, entry.at.clone()));
            }
        }
        Ok(out)
    }

    fn local_path(&mut self, entry: &Node) -> Result<String, PipelineError> {
        let fail = |path: &str, problem: String| PipelineError::Include {
            at: entry.at.clone(),
            path: path.to_owned(),
            problem,
        };
        let raw = match &entry.value {
            Value::Str(s) => {
                if s.contains("://") {
                    return Err(fail(s, remote_only("a remote URL")));
                }
                s.clone()
            }
            Value::Map(map) => {
                for kind in ["remote", "project", "template", "component", "artifact"] {
                    if map.contains_key(kind) {
                        return Err(fail(
                            &describe(map),
                            remote_only(&format!("`include: {kind}`")),
                        ));
                    }
                }
                if map.contains_key("inputs") {
                    return Err(fail(
                        &describe(map),
                        "`include` with `inputs` is not supported by keyhole-runner exec"
                            .to_owned(),
                    ));
                }
                if let Some(unknown) = map
                    .keys()
                    .find(|k| !["local", "rules"].contains(&k.as_str()))
                {
                    return Err(fail(
                        &describe(map),
                        format!("unknown key {unknown:?}; use `local: path`"),
                    ));
                }
                let Some(local) = map.get("local").and_then(Node::as_str) else {
                    return Err(fail(
                        &describe(map),
                        "`local` must be a file path".to_owned(),
                    ));
                };
                if map.contains_key("rules") {
                    self.warnings.push(format!(
                        "{}: include {local:?} has `rules:`, which exec does not evaluate; the file is included",
                        entry.at
                    ));
                }
                local.to_owned()
            }
            _ => {
                return Err(fail(
                    "",
                    format!(
                        "an include entry is a path or `local: path`, not {}",
                        entry.kind()
                    ),
                ));
            }
        };
        if raw.contains('$') {
            return Err(fail(
                &raw,
                "variables in include paths are not supported by keyhole-runner exec".to_owned(),
            ));
        }
        normalize(&raw).ok_or_else(|| {
            fail(
                &raw,
                "the path leaves the project directory (too many `..`)".to_owned(),
            )
        })
    }
}

fn remote_only(what: &str) -> String {
    format!(
        "{what} needs GitLab; keyhole-runner exec supports only local includes (`include: local`)"
    )
}

fn describe(map: &Map) -> String {
    map.iter()
        .find_map(|(k, v)| v.as_str().map(|s| format!("{k}: {s}")))
        .unwrap_or_default()
}

/// Project-relative form of a path: leading `/` dropped (GitLab does the same), `.` removed,
/// `..` applied; `None` if it climbs out of the project.
fn normalize(path: &str) -> Option<String> {
    let mut parts: Vec<&str> = Vec::new();
    for component in Path::new(path.trim_start_matches('/')).components() {
        match component {
            Component::Normal(p) => parts.push(p.to_str()?),
            Component::ParentDir => {
                parts.pop()?;
            }
            Component::CurDir | Component::RootDir | Component::Prefix(_) => {}
        }
    }
    Some(parts.join("/"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards_match_like_gitlab() {
        assert!(wildcard_match("configs/*.yml", "configs/a.yml"));
        assert!(!wildcard_match("configs/*.yml", "configs/sub/a.yml"));
        assert!(wildcard_match("configs/**.yml", "configs/sub/a.yml"));
        assert!(wildcard_match(
            "configs/**/*.yml",
            "configs/sub/deeper/a.yml"
        ));
        assert!(wildcard_match("configs/**/*.yml", "configs/a.yml"));
        assert!(!wildcard_match("configs/*.yml", "other/a.yml"));
        assert!(!wildcard_match("*.yml", "a.yaml"));
        assert!(wildcard_match("a.yml", "a.yml"));
    }

    #[test]
    fn paths_are_project_relative() {
        assert_eq!(normalize("/ci/a.yml").as_deref(), Some("ci/a.yml"));
        assert_eq!(normalize("./ci/../b.yml").as_deref(), Some("b.yml"));
        assert_eq!(normalize("../x.yml"), None);
    }

    #[test]
    fn project_files_stay_inside_the_project() {
        let dir = std::env::temp_dir().join(format!("kh-include-{}", std::process::id()));
        let project = dir.join("project");
        fs::create_dir_all(project.join("ci")).unwrap();
        fs::write(project.join("ci/a.yml"), "a: {script: x}\n").unwrap();
        fs::write(dir.join("secret.yml"), "x: 1\n").unwrap();
        let files = ProjectFiles::new(&project);
        assert!(files.read("ci/a.yml").unwrap().is_some());
        assert!(files.read("ci/none.yml").unwrap().is_none());
        assert!(files.read("../secret.yml").is_err());
        assert_eq!(files.glob("ci/*.yml").unwrap(), ["ci/a.yml"]);
        fs::remove_dir_all(&dir).unwrap();
    }
}
