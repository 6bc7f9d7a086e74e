//! Local `.gitlab-ci.yml` loading never panics on any input. The input is split at NUL bytes:
//! the first part is the main file, the others are `include: local` files named `1.yml`,
//! `2.yml`, ..., so includes (and their cycles) are fuzzed too.
#![no_main]

use std::path::PathBuf;

use keyhole_runner::pipeline::{LoadOptions, MemoryFiles, parse_pipeline};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut parts = text.split('\0');
    let main = parts.next().unwrap_or_default();
    let files = MemoryFiles(
        parts
            .enumerate()
            .map(|(i, part)| (format!("{}.yml", i + 1), part.to_owned()))
            .collect(),
    );
    let Ok(pipeline) = parse_pipeline(main, ".gitlab-ci.yml", &files) else {
        return;
    };
    let opts = LoadOptions {
        project_dir: PathBuf::new(),
        ci_project_dir: "/builds/fuzz".to_owned(),
        job_id: 1,
    };
    for name in pipeline.job_names() {
        let _ = pipeline.job(&name, &opts);
    }
    let _ = pipeline.job(".hidden", &opts);
});
