//! git's index file, as the transfer containers read it for `untracked: true`, never panics
//! on any bytes a job could leave in `.git/index` (or `.git/config`), and what it accepts
//! holds no more entries than its header claims.
#![no_main]

use keyhole_broker::transfer::untracked::{ObjectFormat, object_format, parse_index};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = object_format(data);
    for format in [ObjectFormat::Sha1, ObjectFormat::Sha256] {
        if let Ok(index) = parse_index(data, format) {
            let claimed = u32::from_be_bytes([data[8], data[9], data[10], data[11]]);
            assert!(index.paths.len() <= claimed as usize);
            assert!(index.subtrees.len() <= claimed as usize);
        }
    }
});
