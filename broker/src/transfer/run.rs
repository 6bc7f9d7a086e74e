//! `keyhole-broker transfer fetch` and `transfer store`: the two ends of a job's transfers,
//! each in its own container (see `runner/src/pod/transfer.rs`). Their lines go to the job
//! log through the broker's log pipe, so the broker masks them like the job's own output.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::archive::{Compression, Packed, write_gzip, write_zip};
use super::cache::{self, Fetched};
use super::extract::{Extracted, extract_zip};
use super::gitlab::{Api, Upload};
use super::select::{Selection, select_with_untracked};
use keyhole_contract as contract;
use keyhole_contract::transfer::{
    ArtifactUpload, CachePlan, EXIT_BAD_PLAN, EXIT_TRANSFER_FAILED, Format, Plan,
    SCRIPT_STATUS_FILE,
};

/// How often the store container looks for the script's exit code.
const STATUS_POLL: Duration = Duration::from_millis(100);

/// Where a transfer container works.
#[derive(Debug, Clone)]
pub struct Dirs {
    pub plan: PathBuf,
    pub runtime: PathBuf,
    pub scratch: PathBuf,
}

/// The job log: the broker's pipe when there is one (it masks), else stdout.
struct Log(Box<dyn std::io::Write + Send>);

impl Log {
    fn open(runtime: &Path) -> Self {
        let fifo = runtime.join(contract::LOG_FIFO);
        // The broker holds the pipe open read-write, so opening it for writing never blocks.
        match std::fs::OpenOptions::new().write(true).open(&fifo) {
            Ok(f) => Self(Box::new(f)),
            Err(_) => Self(Box::new(std::io::stdout())),
        }
    }

    fn line(&mut self, text: &str) {
        let _ = writeln!(self.0, "{text}");
    }

    fn warn(&mut self, text: &str) {
        self.line(&format!("\x1b[0;33mWARNING: {text}\x1b[0;m"));
    }

    fn error(&mut self, text: &str) {
        self.line(&format!("\x1b[31;1mERROR: {text}\x1b[0;m"));
    }

    fn section(&mut self, edge: &str, name: &str, header: &str) {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        self.line(&format!("section_{edge}:{now}:{name}\r\x1b[0K{header}"));
    }
}

fn read_plan(path: &Path) -> Result<Plan, String> {
    let bytes = std::fs::read(path)
        .map_err(|e| format!("cannot read the transfer plan {}: {e}", path.display()))?;
    serde_json::from_slice(&bytes).map_err(|e| {
        format!(
            "the transfer plan {} is not valid (line {}, column {}): the runner and the broker \
             image are of different versions?",
            path.display(),
            e.line(),
            e.column()
        )
    })
}

/// Sizes as people read them (`12.4 MiB`).
pub fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// Before the script: the caches restored, then the dependencies' archives, extracted into
/// the project directory (gitlab-runner's order). Returns the container's exit code: a
/// missing cache is a warning, a dependency that cannot be had fails the job.
pub async fn fetch(dirs: &Dirs) -> i32 {
    let mut log = Log::open(&dirs.runtime);
    let plan = match read_plan(&dirs.plan) {
        Ok(p) => p,
        Err(e) => {
            log.error(&e);
            return EXIT_BAD_PLAN;
        }
    };
    let project = PathBuf::from(&plan.project_dir);
    if let Err(e) = std::fs::create_dir_all(&project) {
        log.error(&format!("cannot create the project directory: {e}"));
        return EXIT_TRANSFER_FAILED;
    }
    restore_caches(&plan, dirs, &mut log).await;
    download_dependencies(&plan, dirs, &mut log).await
}

/// Extracts a downloaded zip into the project directory, off the async threads.
async fn unpack(file: &Path, project: &Path) -> Result<Extracted, String> {
    let (file, project) = (file.to_owned(), project.to_owned());
    tokio::task::spawn_blocking(move || extract_zip(&file, &project))
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())
}

/// Each cache from its key or the first fallback key that has one.
async fn restore_caches(plan: &Plan, dirs: &Dirs, log: &mut Log) {
    let caches: Vec<&CachePlan> = plan
        .caches
        .iter()
        .filter(|c| !c.restore.is_empty())
        .collect();
    if caches.is_empty() {
        return;
    }
    log.section("start", "restore_cache", "Restoring cache");
    let http = match cache::client() {
        Ok(h) => h,
        Err(e) => {
            log.warn(&format!("Failed to extract cache: {e}"));
            log.section("end", "restore_cache", "");
            return;
        }
    };
    let project = PathBuf::from(&plan.project_dir);
    for (i, c) in caches.iter().enumerate() {
        let file = dirs.scratch.join(format!("cache-{i}.zip"));
        let mut restored = false;
        for source in &c.restore {
            log.line(&format!(
                "\x1b[32;1mChecking cache for {}...\x1b[0;m",
                source.key
            ));
            let outcome = match cache::fetch(&http, &source.url, &file).await {
                Ok(Fetched::Found(size)) => unpack(&file, &project).await.map(|x| Some((size, x))),
                Ok(Fetched::Missing) => Ok(None),
                Err(e) => Err(e),
            };
            let _ = std::fs::remove_file(&file);
            match outcome {
                Ok(Some((size, extracted))) => {
                    for w in &extracted.warnings {
                        log.warn(w);
                    }
                    log.line(&format!(
                        "\x1b[32;1mSuccessfully extracted cache\x1b[0;m  key={} files={} size={}",
                        source.key,
                        extracted.files,
                        human_size(size)
                    ));
                    restored = true;
                    break;
                }
                Ok(None) => log.warn(&format!("{}: cache not found", source.key)),
                Err(e) => log.warn(&format!("{}: {e}", source.key)),
            }
        }
        if !restored {
            log.warn("Failed to extract cache");
        }
    }
    log.section("end", "restore_cache", "");
}

/// The dependencies' archives; the first that cannot be had fails the job.
async fn download_dependencies(plan: &Plan, dirs: &Dirs, log: &mut Log) -> i32 {
    if plan.dependencies.is_empty() {
        return 0;
    }
    let api = match Api::new(&plan.gitlab_url) {
        Ok(a) => a,
        Err(e) => {
            log.error(&e.to_string());
            return EXIT_TRANSFER_FAILED;
        }
    };
    let project = PathBuf::from(&plan.project_dir);
    log.section("start", "download_artifacts", "Downloading artifacts");
    let mut code = 0;
    for dep in &plan.dependencies {
        log.line(&format!(
            "\x1b[32;1mDownloading artifacts for {} ({})...\x1b[0;m",
            dep.name, dep.id
        ));
        let file = dirs.scratch.join(format!("download-{}.zip", dep.id));
        let result = match api.download(dep.id, &dep.token, &file).await {
            Ok(size) => unpack(&file, &project).await.map(|x| (size, x)),
            Err(e) => Err(e.to_string()),
        };
        let _ = std::fs::remove_file(&file);
        match result {
            Ok((size, extracted)) => {
                for w in &extracted.warnings {
                    log.warn(w);
                }
                log.line(&format!(
                    "Downloading artifacts from coordinator... ok  id={} files={} size={}",
                    dep.id,
                    extracted.files,
                    human_size(size)
                ));
            }
            Err(e) => {
                log.error(&format!("Downloading artifacts from coordinator... {e}"));
                code = EXIT_TRANSFER_FAILED;
                break;
            }
        }
    }
    log.section("end", "download_artifacts", "");
    code
}

/// Waits for the script's exit code ([`SCRIPT_STATUS_FILE`]).
async fn script_exit_code(runtime: &Path) -> i32 {
    let path = runtime.join(SCRIPT_STATUS_FILE);
    loop {
        if let Ok(text) = std::fs::read_to_string(&path)
            && let Ok(code) = text.trim().parse::<i32>()
        {
            return code;
        }
        tokio::time::sleep(STATUS_POLL).await;
    }
}

/// After the script: the artifacts its result calls for, uploaded; then the broker is told
/// the job is over. Returns the container's exit code.
pub async fn store(dirs: &Dirs) -> i32 {
    let mut log = Log::open(&dirs.runtime);
    let plan = match read_plan(&dirs.plan) {
        Ok(p) => p,
        Err(e) => {
            log.error(&e);
            tell_broker_done(&dirs.runtime);
            return EXIT_BAD_PLAN;
        }
    };
    let exit_code = script_exit_code(&dirs.runtime).await;
    save_caches(&plan, exit_code, dirs, &mut log).await;
    let code = upload_all(&plan, exit_code, dirs, &mut log).await;
    tell_broker_done(&dirs.runtime);
    code
}

async fn upload_all(plan: &Plan, exit_code: i32, dirs: &Dirs, log: &mut Log) -> i32 {
    let due: Vec<&ArtifactUpload> = plan
        .artifacts
        .iter()
        .filter(|a| a.when.applies(exit_code))
        .collect();
    if due.is_empty() {
        return 0;
    }
    let (section, header) = if exit_code == 0 {
        (
            "upload_artifacts_on_success",
            "Uploading artifacts for successful job",
        )
    } else {
        (
            "upload_artifacts_on_failure",
            "Uploading artifacts for failed job",
        )
    };
    log.section("start", section, header);
    let level = level(
        plan.compression.as_deref(),
        "ARTIFACT_COMPRESSION_LEVEL",
        log,
    );
    let api = match Api::new(&plan.gitlab_url) {
        Ok(a) => a,
        Err(e) => {
            log.error(&e.to_string());
            return EXIT_TRANSFER_FAILED;
        }
    };
    let mut code = 0;
    for (i, artifact) in due.iter().enumerate() {
        if let Err(e) = upload_one(plan, artifact, i, level, &api, dirs, log).await {
            log.error(&e);
            code = EXIT_TRANSFER_FAILED;
        }
    }
    log.section("end", section, "");
    code
}

/// Selects, packs (on disk) and uploads one `artifacts[]` entry. No files is a warning, as
/// in gitlab-runner, not a failure.
async fn upload_one(
    plan: &Plan,
    a: &ArtifactUpload,
    index: usize,
    level: Compression,
    api: &Api,
    dirs: &Dirs,
    log: &mut Log,
) -> Result<(), String> {
    log.line("\x1b[32;1mUploading artifacts...\x1b[0;m");
    let root = PathBuf::from(&plan.project_dir);
    let (extension, format) = match a.format {
        Format::Zip => ("zip", "zip"),
        Format::Gzip => ("gz", "gzip"),
    };
    let file = dirs.scratch.join(format!("upload-{index}.{extension}"));
    let (selection, packed) = pack(
        &root,
        &a.paths,
        &a.exclude,
        a.untracked,
        a.format,
        level,
        &file,
    )
    .await?;
    for w in &selection.warnings {
        log.warn(w);
    }
    if selection.excluded > 0 {
        log.line(&format!("excluded {} files", selection.excluded));
    }
    let Some(packed) = packed else {
        log.error("No files to upload");
        return Ok(());
    };
    log.line(&format!(
        "{}: found {} matching artifact files and directories",
        a.paths.join(", "),
        selection.entries.len()
    ));
    let filename = format!("{}.{extension}", a.name);
    let sent = api
        .upload(&Upload {
            job_id: plan.job_id,
            token: &plan.job_token,
            file: &file,
            filename: &filename,
            artifact_type: &a.artifact_type,
            artifact_format: format,
            expire_in: &a.expire_in,
        })
        .await;
    let _ = std::fs::remove_file(&file);
    for w in &packed.warnings {
        log.warn(w);
    }
    match sent {
        Ok(status) => {
            log.line(&format!(
                "Uploading artifacts as \"{}\" to coordinator... {status}  id={} files={} size={}",
                a.artifact_type,
                plan.job_id,
                packed.files,
                human_size(packed.bytes)
            ));
            Ok(())
        }
        Err(e) => Err(format!(
            "Uploading artifacts as \"{}\" to coordinator... {e}",
            a.artifact_type
        )),
    }
}

/// Selects `paths` and, with `untracked`, the files git does not track (minus `exclude`) in
/// `root` and packs them into `file`, off the async threads; no archive when nothing matched.
async fn pack(
    root: &Path,
    paths: &[String],
    exclude: &[String],
    untracked: bool,
    format: Format,
    level: Compression,
    file: &Path,
) -> Result<(Selection, Option<Packed>), String> {
    let (root, file) = (root.to_owned(), file.to_owned());
    let (paths, exclude) = (paths.to_vec(), exclude.to_vec());
    tokio::task::spawn_blocking(move || {
        let selection =
            select_with_untracked(&root, &paths, &exclude, untracked).map_err(|e| e.to_string())?;
        if selection.entries.is_empty() {
            return Ok((selection, None));
        }
        let out =
            std::fs::File::create(&file).map_err(|e| format!("cannot write the archive: {e}"))?;
        let out = std::io::BufWriter::with_capacity(1 << 20, out);
        let packed = match format {
            Format::Zip => write_zip(&root, &selection.entries, out, level),
            Format::Gzip => write_gzip(&root, &selection.entries, out),
        }
        .map_err(|e| e.to_string())?;
        Ok((selection, Some(packed)))
    })
    .await
    .map_err(|e| e.to_string())?
}

/// A compression level from a job variable, `fast` when unset or invalid (with a warning).
fn level(value: Option<&str>, variable: &str, log: &mut Log) -> Compression {
    match value.map(str::parse::<Compression>) {
        None => Compression::Fast,
        Some(Ok(level)) => level,
        Some(Err(e)) => {
            log.warn(&format!("{variable}: {e}; using `fast`"));
            Compression::Fast
        }
    }
}

/// Each cache whose `when` the script's result meets, packed and put to its URL. A cache
/// that cannot be saved is a warning, as in gitlab-runner, never the job's failure.
async fn save_caches(plan: &Plan, exit_code: i32, dirs: &Dirs, log: &mut Log) {
    let due: Vec<&CachePlan> = plan
        .caches
        .iter()
        .filter(|c| c.save.is_some() && c.when.applies(exit_code))
        .collect();
    if due.is_empty() {
        return;
    }
    log.section("start", "archive_cache", "Saving cache");
    let level = level(
        plan.cache_compression.as_deref(),
        "CACHE_COMPRESSION_LEVEL",
        log,
    );
    let http = match cache::client() {
        Ok(h) => h,
        Err(e) => {
            log.warn(&format!("Failed to create cache: {e}"));
            log.section("end", "archive_cache", "");
            return;
        }
    };
    let root = PathBuf::from(&plan.project_dir);
    for (i, c) in due.iter().enumerate() {
        let Some(url) = &c.save else { continue };
        log.line(&format!("\x1b[32;1mCreating cache {}...\x1b[0;m", c.key));
        let file = dirs.scratch.join(format!("cache-save-{i}.zip"));
        let result = match pack(&root, &c.paths, &[], c.untracked, Format::Zip, level, &file).await
        {
            Ok((selection, packed)) => {
                for w in &selection.warnings {
                    log.warn(w);
                }
                match packed {
                    None => Err("no files to cache".to_owned()),
                    Some(packed) => {
                        for w in &packed.warnings {
                            log.warn(w);
                        }
                        cache::store(&http, url, &file).await.map(|()| packed)
                    }
                }
            }
            Err(e) => Err(e),
        };
        let _ = std::fs::remove_file(&file);
        match result {
            Ok(packed) => log.line(&format!(
                "\x1b[32;1mCreated cache\x1b[0;m  key={} files={} size={}",
                c.key,
                packed.files,
                human_size(packed.bytes)
            )),
            Err(e) => log.warn(&format!("Failed to create cache {}: {e}", c.key)),
        }
    }
    log.section("end", "archive_cache", "");
}

/// One byte on the broker's `done` pipe: the job's output is complete.
fn tell_broker_done(runtime: &Path) {
    let done = runtime.join(contract::DONE_FIFO);
    // Read-write, like the script does: never blocks, even without a reader.
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&done)
    {
        let _ = f.write_all(b".");
    }
}

#[cfg(test)]
mod tests {
    use super::human_size;

    #[test]
    fn sizes_read_like_gitlab_runner_prints_them() {
        assert_eq!(human_size(512), "512 B");
        assert_eq!(human_size(13_002_342), "12.4 MiB");
        assert_eq!(human_size(1 << 30), "1.0 GiB");
    }
}
