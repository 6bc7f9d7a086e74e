//! Masking secret values out of the job log.
//!
//! The build container's output reaches the container log only through the broker, which runs
//! it through a [`StreamMasker`]. Every secret value is masked in the forms a script is likely to
//! print it: verbatim, base64 (standard and URL-safe, with and without padding), percent-encoded,
//! and each line of a multi-line value, with `\r\n` line ends too. Overlapping and nested
//! occurrences are masked as the union of their byte ranges, so a short secret inside a longer one
//! can never leave part of the longer one visible.
//!
//! Values shorter than [`MIN_MASKED_LEN`] bytes are not masked (masking every 3-letter word of a
//! log would destroy it, and would tell a reader which words are secret): GitLab draws the same
//! line at 8 characters. The broker warns about such values by name when it resolves them.

mod patterns;
mod sampler;
mod stream;

pub use patterns::{MIN_MASKED_LEN, MaskSet};
pub use stream::{StreamMasker, mask_all};

/// What replaces each masked range in the output.
pub const MASK: &[u8] = b"[MASKED]";
