//! Artifacts and cache, moved between the job's project directory and GitLab or the cache
//! store, by `keyhole-broker transfer`: a separate container of the job pod that mounts the
//! project directory and nothing of the broker's (no secrets volume, no inputs, no
//! ServiceAccount token). The files are the job's, so hostile: nothing here follows a
//! symlink or a `..` out of the project directory.

pub mod archive;
pub mod cache;
mod deflate_pool;
mod dos_time;
pub mod entry;
pub mod extract;
pub mod gitlab;
pub mod run;
pub mod select;
pub mod untracked;
mod zip_writer;
