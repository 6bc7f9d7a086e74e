//! The GitLab `secrets:` conversion never panics on any JSON.
#![no_main]

use keyhole_runner::secrets::from_gitlab_secrets;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(value) = serde_json::from_slice::<serde_json::Value>(data) {
        let _ = from_gitlab_secrets(&value);
    }
});
