//! The runner's config.toml loader never panics on any text.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = keyhole_runner::config::load_str(text, "config.toml", &|_| None);
    }
});
