use std::path::{Path, PathBuf};

/// The secrets directory is not on a filesystem we could check.
#[derive(Debug, thiserror::Error)]
pub enum MountCheckError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("no mount in /proc/self/mountinfo contains {0}")]
    NotFound(PathBuf),
}

/// Filesystem type of the mount holding `path`, from `/proc/self/mountinfo`.
pub fn filesystem_of(path: &Path) -> Result<String, MountCheckError> {
    let canonical = path
        .canonicalize()
        .map_err(|source| MountCheckError::Read {
            path: path.to_owned(),
            source,
        })?;
    let info = std::fs::read_to_string("/proc/self/mountinfo").map_err(|source| {
        MountCheckError::Read {
            path: "/proc/self/mountinfo".into(),
            source,
        }
    })?;
    fs_type_for(&info, &canonical).ok_or(MountCheckError::NotFound(canonical))
}

/// Whether a filesystem type keeps data in memory only (never written to a disk).
pub fn is_memory_backed(fs_type: &str) -> bool {
    matches!(fs_type, "tmpfs" | "ramfs")
}

/// The type of the longest (last, on ties) mount point that contains `path`.
fn fs_type_for(mountinfo: &str, path: &Path) -> Option<String> {
    let mut best: Option<(usize, String)> = None;
    for line in mountinfo.lines() {
        // id parent major:minor root mount-point options [optional...] - fstype source super
        let fields: Vec<&str> = line.split(' ').collect();
        let (Some(mount_point), Some(sep)) = (fields.get(4), fields.iter().position(|f| *f == "-"))
        else {
            continue;
        };
        let Some(fs_type) = fields.get(sep + 1) else {
            continue;
        };
        let mount_point = unescape(mount_point);
        if path.starts_with(&mount_point) {
            let depth = mount_point.components().count();
            if best.as_ref().is_none_or(|(d, _)| depth >= *d) {
                best = Some((depth, (*fs_type).to_owned()));
            }
        }
    }
    best.map(|(_, t)| t)
}

/// mountinfo escapes space, tab, newline and backslash as octal `\ooo`.
fn unescape(s: &str) -> PathBuf {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && i + 3 < bytes.len()
            && bytes[i + 1..i + 4]
                .iter()
                .all(|b| (b'0'..=b'7').contains(b))
        {
            let v = (bytes[i + 1] - b'0') * 64 + (bytes[i + 2] - b'0') * 8 + (bytes[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    PathBuf::from(<std::ffi::OsString as std::os::unix::ffi::OsStringExt>::from_vec(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    const INFO: &str = "\
22 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw
30 22 0:25 / /keyhole/secrets rw,nosuid - tmpfs tmpfs rw,size=1024k
31 22 0:26 / /keyhole/secrets/sub\\040dir rw - ext4 /dev/vdb rw
";

    #[test]
    fn finds_the_innermost_mount() {
        assert_eq!(
            fs_type_for(INFO, Path::new("/keyhole/secrets")).as_deref(),
            Some("tmpfs")
        );
        assert_eq!(
            fs_type_for(INFO, Path::new("/keyhole/secrets/a")).as_deref(),
            Some("tmpfs")
        );
        assert_eq!(
            fs_type_for(INFO, Path::new("/keyhole/secrets/sub dir/x")).as_deref(),
            Some("ext4")
        );
        assert_eq!(
            fs_type_for(INFO, Path::new("/keyhole/secretsX")).as_deref(),
            Some("ext4")
        );
        assert_eq!(
            fs_type_for(INFO, Path::new("/tmp")).as_deref(),
            Some("ext4")
        );
    }

    #[test]
    fn memory_backed_types() {
        assert!(is_memory_backed("tmpfs"));
        assert!(!is_memory_backed("ext4"));
        assert!(!is_memory_backed("overlay"));
    }

    #[test]
    fn dev_shm_is_tmpfs_here() {
        if Path::new("/dev/shm").exists() {
            assert!(is_memory_backed(
                &filesystem_of(Path::new("/dev/shm")).unwrap()
            ));
        }
    }
}
