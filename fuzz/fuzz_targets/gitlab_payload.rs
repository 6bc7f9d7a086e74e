//! The runner's job payload parser never panics on any bytes GitLab (or anyone on the wire)
//! could send, and never echoes a value in its error.
#![no_main]

use keyhole_runner::gitlab::job_from_payload;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = job_from_payload(data);
});
