//! Masking secret values out of the job log.
//!
//! The build container's output reaches the container log only through the broker, which runs
//! it through a [`StreamMasker`]. Every secret value is masked in the forms a script is likely to
//! print it: verbatim; base64 (standard and URL-safe, with and without padding), and each line
//! of it wrapped at 76 columns (`base64`) or 64 (`openssl base64`); percent-encoded as strict
//! RFC 3986 encoders, Python's `quote` (keeps `/`) and `quote_plus`, and JavaScript's
//! `encodeURIComponent` and `encodeURI` write it; JSON-escaped; and each line of a multi-line
//! value, with `\r\n` line ends too. A whole secret (delivered as a JSON object) has each of
//! its fields masked as a value of its own. Overlapping and nested occurrences are masked as
//! the union of their byte ranges, so a short secret inside a longer one can never leave part
//! of the longer one visible.
//!
//! Values shorter than [`MIN_MASKED_LEN`] bytes are not masked (masking every 3-letter word of a
//! log would destroy it, and would tell a reader which words are secret): GitLab draws the same
//! line at 8 characters. [`MaskPlan`] names each such secret, field or job variable in a
//! warning, which the broker prints before the job's output.

mod fields;
mod patterns;
mod plan;
mod sampler;
mod stream;

pub use patterns::{MIN_MASKED_LEN, MaskSet};
pub use plan::MaskPlan;
pub use stream::{StreamMasker, mask_all};

/// What replaces each masked range in the output.
pub const MASK: &[u8] = b"[MASKED]";
