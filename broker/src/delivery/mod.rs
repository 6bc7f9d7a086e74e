//! Delivering resolved secrets and job variables to the job: files on a memory-backed volume,
//! an env file for the exports, all or nothing, and wiped at the end.

mod env_file;
mod files;
mod mounts;

pub use env_file::{EnvFileError, render_env_file};
pub use files::{Delivery, DeliveryError, Ownership, Resolved, SecretFiles, WriteOptions};
pub use mounts::{MountCheckError, filesystem_of, is_memory_backed};
