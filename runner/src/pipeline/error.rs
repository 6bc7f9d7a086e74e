//! Errors of local `.gitlab-ci.yml` loading. Each names the file, the line and column where the
//! YAML gave one, the job and the key, and says what is expected, so a user can fix the file
//! without guessing. No error quotes a variable's value: people put credentials in YAML
//! variables even though they should not.

use std::{fmt, sync::Arc};

/// A place in a YAML file: the file's name as the user knows it, 1-based line and column.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    pub file: Arc<str>,
    pub line: usize,
    pub column: usize,
}

impl Location {
    /// The start of `file`, for errors about a file as a whole.
    pub fn file_start(file: &Arc<str>) -> Self {
        Self {
            file: Arc::clone(file),
            line: 1,
            column: 1,
        }
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.file, self.line, self.column)
    }
}

/// Why a CI configuration could not become a job.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PipelineError {
    /// The file could not be read.
    #[error("{file}: cannot read the file: {source}")]
    Read {
        file: String,
        #[source]
        source: std::io::Error,
    },
    /// The text is not YAML.
    #[error("{at}: not valid YAML: {problem}")]
    Syntax { at: Location, problem: String },
    /// Valid YAML that is not a valid GitLab CI configuration.
    #[error("{at}: {}{problem}", Scope { job: job.as_deref(), key: key.as_deref() })]
    Config {
        at: Location,
        /// The job whose definition is wrong, if the problem is in a job.
        job: Option<String>,
        /// The key (`timeout`, `secrets`, ...) whose value is wrong.
        key: Option<String>,
        problem: String,
    },
    /// An `include:` entry that cannot be followed.
    #[error("{at}: include {path:?}: {problem}")]
    Include {
        at: Location,
        path: String,
        problem: String,
    },
    /// The asked-for job is not in the file.
    #[error("{file}: there is no job {name:?}; {}", JobList(available))]
    UnknownJob {
        file: String,
        name: String,
        /// The jobs that can be run, in file order.
        available: Vec<String>,
    },
    /// The asked-for job exists but cannot be run locally (a hidden template, a trigger job).
    #[error("{at}: job {name:?} {reason}; {}", JobList(available))]
    NotRunnable {
        at: Location,
        name: String,
        reason: String,
        available: Vec<String>,
    },
}

impl PipelineError {
    /// A configuration error in `job`'s `key` (either may be absent).
    pub(crate) fn config(
        at: &Location,
        job: Option<&str>,
        key: Option<&str>,
        problem: impl Into<String>,
    ) -> Self {
        Self::Config {
            at: at.clone(),
            job: job.map(str::to_owned),
            key: key.map(str::to_owned),
            problem: problem.into(),
        }
    }
}

struct Scope<'a> {
    job: Option<&'a str>,
    key: Option<&'a str>,
}

impl fmt::Display for Scope<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(job) = self.job {
            write!(f, "job {job:?}: ")?;
        }
        if let Some(key) = self.key {
            write!(f, "key {key:?}: ")?;
        }
        Ok(())
    }
}

struct JobList<'a>(&'a [String]);

impl fmt::Display for JobList<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return f.write_str("the file defines no runnable job");
        }
        f.write_str("jobs are: ")?;
        for (i, name) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            f.write_str(name)?;
        }
        Ok(())
    }
}
