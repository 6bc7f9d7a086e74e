//! Zip extraction of any bytes never panics and never writes outside its root: the root is
//! the only thing in its parent directory afterwards, and nothing else it can reach changed.
#![no_main]

use std::io::Cursor;
use std::path::{Path, PathBuf};

use keyhole_broker::transfer::extract::extract_zip_from;
use libfuzzer_sys::fuzz_target;

/// `<tmp>/keyhole-fuzz-extract-<pid>/`, holding `root/` (extracted into) and `outside/victim`.
fn sandbox() -> PathBuf {
    std::env::temp_dir().join(format!("keyhole-fuzz-extract-{}", std::process::id()))
}

fn names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .expect("sandbox readable")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

fuzz_target!(|data: &[u8]| {
    let base = sandbox();
    let _ = std::fs::remove_dir_all(&base);
    let root = base.join("root");
    let outside = base.join("outside");
    std::fs::create_dir_all(&root).expect("root");
    std::fs::create_dir_all(&outside).expect("outside");
    std::fs::write(outside.join("victim"), b"original").expect("victim");

    let _ = extract_zip_from(Cursor::new(data), Path::new("fuzz.zip"), &root);

    assert_eq!(names(&base), ["outside", "root"]);
    assert_eq!(names(&outside), ["victim"]);
    assert_eq!(
        std::fs::read(outside.join("victim")).expect("victim"),
        b"original"
    );
    unlock(&root);
});

/// Gives back owner rights to every directory under `dir` (not through symlinks): directories
/// restored as `0o000` must not stop the next run's clean-up.
fn unlock(dir: &Path) {
    use std::os::unix::fs::PermissionsExt as _;
    let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700));
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            unlock(&entry.path());
        }
    }
}
