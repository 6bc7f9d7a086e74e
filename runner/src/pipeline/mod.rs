//! Local `.gitlab-ci.yml` files for `keyhole-runner exec` and `render`: one job of a file on
//! disk becomes a [`Job`], with no GitLab involved.
//!
//! The file is read as GitLab reads it, in GitLab's order:
//! 1. YAML with anchors, aliases and merge keys ([`yaml`]);
//! 2. `include: local` files merged in ([`include`]);
//! 3. `extends:` ([`extends`]);
//! 4. `!reference` tags ([`reference`]);
//! 5. the job itself: `default:`, `inherit:`, variables, scripts, image and services,
//!    `timeout:`, `secrets:` and `id_tokens:` ([`job`]).
//!
//! Parsing is pure ([`parse_pipeline`] reads includes through an [`IncludeSource`]); only
//! [`load_job`] touches the file system.

mod duration;
mod error;
mod extends;
mod image;
mod include;
mod job;
mod reference;
mod script;
mod secrets;
mod variables;
mod yaml;

use std::{
    fmt, fs,
    path::{Path, PathBuf},
    sync::Arc,
};

pub use error::{Location, PipelineError};
pub use extends::MAX_EXTENDS_ANCESTORS;
pub use include::{
    IncludeSource, MAX_FILE_BYTES, MAX_INCLUDE_DEPTH, MAX_INCLUDES, MemoryFiles, NoIncludes,
    ProjectFiles,
};
pub use job::RESERVED as RESERVED_KEYS;
pub use reference::MAX_REFERENCE_DEPTH;
pub use variables::PIPELINE_SOURCE;

use crate::job::Job;

/// What a local run needs besides the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadOptions {
    /// The project root: `include: local` paths are relative to it. Usually the directory of
    /// the `.gitlab-ci.yml`; an empty path means exactly that.
    pub project_dir: PathBuf,
    /// `CI_PROJECT_DIR` inside the job's pod (the runner decides where the project lives).
    pub ci_project_dir: String,
    /// The job's id (`CI_JOB_ID`); local jobs get a process-unique number from the runner.
    pub job_id: u64,
}

/// A parsed configuration: includes, `extends:` and `!reference` resolved, ready to give jobs.
pub struct Pipeline {
    file: Arc<str>,
    config: yaml::Map,
    warnings: Vec<String>,
}

impl fmt::Debug for Pipeline {
    /// Names the file and the jobs only: variable values stay out of logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pipeline")
            .field("file", &self.file)
            .field("jobs", &self.job_names())
            .field("warnings", &self.warnings)
            .finish()
    }
}

impl Pipeline {
    /// The jobs that can be run, in file order (hidden templates, reserved keys and trigger
    /// jobs left out).
    pub fn job_names(&self) -> Vec<String> {
        job::runnable_names(&self.config)
    }

    /// Things that did not stop parsing but that a user should know (e.g. an `include:` with
    /// `rules:` that exec cannot evaluate and includes anyway).
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }

    /// Builds job `name`. An unknown name lists the runnable jobs.
    pub fn job(&self, name: &str, opts: &LoadOptions) -> Result<Job, PipelineError> {
        job::build(&self.config, &self.file, name, opts)
    }
}

/// Parses a CI configuration without touching the file system: `file_name` is how errors name
/// the file (and the top of include cycles); `includes` serves `include: local` files.
pub fn parse_pipeline(
    text: &str,
    file_name: &str,
    includes: &dyn IncludeSource,
) -> Result<Pipeline, PipelineError> {
    let file: Arc<str> = Arc::from(file_name);
    let mut copy_budget = yaml::CopyBudget::pipeline();
    let root = yaml::load_config_with(text, &file, &mut copy_budget)?;
    let config = match root.value {
        yaml::Value::Map(map) => map,
        yaml::Value::Null => {
            return Err(PipelineError::config(
                &root.at,
                None,
                None,
                "the file is empty; it needs at least one job with a `script:`",
            ));
        }
        _ => {
            return Err(PipelineError::config(
                &root.at,
                None,
                None,
                format!(
                    "the file is {}; a CI configuration is a mapping of keywords and jobs",
                    root.kind()
                ),
            ));
        }
    };
    let mut includer = include::Includer::new(includes, file_name, copy_budget);
    let mut config = includer.expand(config)?;
    extends::resolve(&mut config)?;
    let config = reference::resolve(config)?;
    Ok(Pipeline {
        file,
        config,
        warnings: includer.warnings,
    })
}

/// The runnable jobs of a parsed configuration, for "no job X; jobs are: ..." messages.
pub fn job_names(pipeline: &Pipeline) -> Vec<String> {
    pipeline.job_names()
}

/// Reads `path` and builds its job `job_name`. Warnings are logged.
pub fn load_job(path: &Path, job_name: &str, opts: &LoadOptions) -> Result<Job, PipelineError> {
    let project_dir = if opts.project_dir.as_os_str().is_empty() {
        path.parent().map(Path::to_path_buf).unwrap_or_default()
    } else {
        opts.project_dir.clone()
    };
    let read_error = |source| PipelineError::Read {
        file: path.display().to_string(),
        source,
    };
    let len = fs::metadata(path).map_err(read_error)?.len();
    if len > MAX_FILE_BYTES {
        return Err(read_error(std::io::Error::other(format!(
            "the file has {len} bytes, more than the {MAX_FILE_BYTES} allowed"
        ))));
    }
    let text = fs::read_to_string(path).map_err(read_error)?;
    // Errors and include cycles name the file as the project knows it (`.gitlab-ci.yml`).
    let file_name = relative_name(path, &project_dir);
    let pipeline = parse_pipeline(&text, &file_name, &ProjectFiles::new(&project_dir))?;
    for warning in pipeline.warnings() {
        tracing::warn!(%warning, "local pipeline");
    }
    pipeline.job(job_name, opts)
}

fn relative_name(path: &Path, project_dir: &Path) -> String {
    let canonical = |p: &Path| p.canonicalize().unwrap_or_else(|_| p.to_path_buf());
    let (path_c, dir_c) = (canonical(path), canonical(project_dir));
    match path_c.strip_prefix(&dir_c) {
        Ok(rel) if !rel.as_os_str().is_empty() => rel.to_string_lossy().replace('\\', "/"),
        _ => path.display().to_string(),
    }
}

#[cfg(test)]
mod tests;
