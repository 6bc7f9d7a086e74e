use std::fs::{self, OpenOptions};
use std::io::Write as _;
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use secrecy::{ExposeSecret, SecretSlice};

use super::env_file::{EnvFileError, render_env_file};
use super::mounts::{MountCheckError, filesystem_of, is_memory_backed};
use keyhole_contract as contract;
use keyhole_contract::reference::SecretName;

/// One resolved secret or job variable, ready to deliver.
pub struct Resolved {
    pub name: SecretName,
    pub value: SecretSlice<u8>,
    pub delivery: Delivery,
    /// The value is a whole secret (a `k8s:` Secret without a key, a `vault:` path without a
    /// field): a JSON object whose fields a job may print one by one, so each is masked too.
    pub json_object: bool,
}

/// How a value reaches the job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// The file `<dir>/NAME` (a `file: true` secret; the runner points `$NAME` at it).
    File,
    /// `export NAME='value'` in the env file (a `file: false` secret, a plain job variable).
    Env,
    /// The file `<dir>/NAME` and `export NAME='<dir>/NAME'` in the env file (a GitLab file
    /// variable, whose value the job expects to be the file's path).
    FileAndPath,
}

impl Delivery {
    /// The delivery a reference's `file=` option asks for.
    pub fn for_reference(file: bool) -> Self {
        if file { Self::File } else { Self::Env }
    }
}

impl std::fmt::Debug for Resolved {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Resolved")
            .field("name", &self.name)
            .field("value", &"[REDACTED]")
            .field("delivery", &self.delivery)
            .field("json_object", &self.json_object)
            .finish()
    }
}

/// Who may read the files: the job's uid, and its group (fsGroup) when given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ownership {
    pub uid: u32,
    pub gid: Option<u32>,
}

/// Where and how to write.
#[derive(Debug, Clone)]
pub struct WriteOptions {
    pub dir: PathBuf,
    /// `None` keeps the broker's own uid/gid (the usual case: broker and job share a uid).
    pub owner: Option<Ownership>,
    /// Writing secrets to a disk-backed directory must be asked for explicitly.
    pub allow_disk: bool,
}

/// Why delivery failed; nothing is left on disk when this is returned.
#[derive(Debug, thiserror::Error)]
pub enum DeliveryError {
    #[error(
        "{dir} is on a {fs_type} filesystem, not memory-backed; mount an emptyDir with medium: Memory there (or allow disk explicitly)"
    )]
    DiskBacked { dir: PathBuf, fs_type: String },
    #[error("checking the secrets directory: {0}")]
    Mount(#[from] MountCheckError),
    #[error(transparent)]
    EnvFile(#[from] EnvFileError),
    #[error("writing secret {name} to {path}: {source}")]
    Write {
        name: String,
        path: PathBuf,
        source: std::io::Error,
    },
}

/// The files one delivery wrote; [`SecretFiles::wipe`] overwrites and removes them.
#[derive(Debug)]
pub struct SecretFiles {
    dir: PathBuf,
    paths: Vec<PathBuf>,
}

impl SecretFiles {
    /// Writes every value (files for [`Delivery::File`] and [`Delivery::FileAndPath`], one env
    /// file for the exports), atomically per file, and either all of them or none.
    pub fn write_all(options: &WriteOptions, secrets: &[Resolved]) -> Result<Self, DeliveryError> {
        if !options.allow_disk {
            let fs_type = filesystem_of(&options.dir)?;
            if !is_memory_backed(&fs_type) {
                return Err(DeliveryError::DiskBacked {
                    dir: options.dir.clone(),
                    fs_type,
                });
            }
        }
        let mut files = Self {
            dir: options.dir.clone(),
            paths: Vec::new(),
        };
        match files.write_each(options, secrets) {
            Ok(()) => Ok(files),
            Err(e) => {
                files.wipe();
                Err(e)
            }
        }
    }

    fn write_each(
        &mut self,
        options: &WriteOptions,
        secrets: &[Resolved],
    ) -> Result<(), DeliveryError> {
        for secret in secrets.iter().filter(|s| s.delivery != Delivery::Env) {
            self.write_one(options, secret.name.as_str(), secret.value.expose_secret())?;
        }
        // Paths are not secret; they sit next to the values only to share one env file.
        let paths: Vec<Vec<u8>> = secrets
            .iter()
            .map(|s| match s.delivery {
                Delivery::FileAndPath => self
                    .dir
                    .join(s.name.as_str())
                    .into_os_string()
                    .into_encoded_bytes(),
                _ => Vec::new(),
            })
            .collect();
        let env: Vec<(&SecretName, &[u8])> = secrets
            .iter()
            .zip(&paths)
            .filter_map(|(s, path)| match s.delivery {
                Delivery::File => None,
                Delivery::Env => Some((&s.name, s.value.expose_secret())),
                Delivery::FileAndPath => Some((&s.name, path.as_slice())),
            })
            .collect();
        if !env.is_empty() {
            let rendered = render_env_file(env)?;
            self.write_one(options, contract::ENV_FILE, &rendered)?;
        }
        Ok(())
    }

    fn write_one(
        &mut self,
        options: &WriteOptions,
        name: &str,
        bytes: &[u8],
    ) -> Result<(), DeliveryError> {
        let path = self.dir.join(name);
        let tmp = self.dir.join(format!(".tmp-{name}"));
        let fail = |source: std::io::Error| DeliveryError::Write {
            name: name.to_owned(),
            path: path.clone(),
            source,
        };
        // Remember the temp file first, so a failure after creating it still wipes it.
        self.paths.push(tmp.clone());
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(fail)?;
        file.write_all(bytes).map_err(fail)?;
        drop(file);
        let mode = match options.owner {
            Some(Ownership { gid: Some(_), .. }) => 0o440,
            _ => 0o400,
        };
        if let Some(owner) = options.owner {
            std::os::unix::fs::chown(&tmp, Some(owner.uid), owner.gid).map_err(fail)?;
        }
        fs::set_permissions(&tmp, fs::Permissions::from_mode(mode)).map_err(fail)?;
        fs::rename(&tmp, &path).map_err(fail)?;
        self.paths.pop();
        self.paths.push(path);
        Ok(())
    }

    /// Paths written, for the audit log.
    pub fn paths(&self) -> &[PathBuf] {
        &self.paths
    }

    /// Overwrites each file with zeros and removes it. Best effort: keeps going past errors.
    pub fn wipe(&mut self) {
        for path in self.paths.drain(..) {
            overwrite_with_zeros(&path);
            let _ = fs::remove_file(&path);
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

fn overwrite_with_zeros(path: &Path) {
    let Ok(meta) = fs::metadata(path) else { return };
    // Files are 0400; make them writable for ourselves first (we own them or are root).
    let _ = fs::set_permissions(path, fs::Permissions::from_mode(0o600));
    if let Ok(mut f) = OpenOptions::new().write(true).open(path) {
        let zeros = vec![0u8; meta.len().min(1 << 20) as usize];
        let mut left = meta.len();
        while left > 0 {
            let n = left.min(zeros.len() as u64) as usize;
            if f.write_all(&zeros[..n]).is_err() {
                break;
            }
            left -= n as u64;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret(name: &str, value: &[u8], file: bool) -> Resolved {
        Resolved {
            name: SecretName::new(name).unwrap(),
            value: SecretSlice::from(value.to_vec()),
            delivery: Delivery::for_reference(file),
            json_object: false,
        }
    }

    fn shm_dir(tag: &str) -> PathBuf {
        let d = PathBuf::from(format!(
            "/dev/shm/keyhole-test-{tag}-{}",
            std::process::id()
        ));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn writes_files_with_exact_bytes_and_mode_0400_and_an_env_file() {
        let dir = shm_dir("write");
        let options = WriteOptions {
            dir: dir.clone(),
            owner: None,
            allow_disk: false,
        };
        let mut files = SecretFiles::write_all(
            &options,
            &[
                secret("DB", b"pa55\nword", true),
                secret("API", b"k'ey", false),
            ],
        )
        .unwrap();
        assert_eq!(fs::read(dir.join("DB")).unwrap(), b"pa55\nword");
        let mode = fs::metadata(dir.join("DB")).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o400);
        assert_eq!(
            fs::read(dir.join(".env")).unwrap(),
            b"export API='k'\\''ey'\n"
        );
        files.wipe();
        assert_eq!(
            fs::read_dir(&dir).unwrap().count(),
            0,
            "wipe leaves nothing"
        );
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn file_variables_get_a_file_and_an_export_of_its_path() {
        let dir = shm_dir("filevar");
        let options = WriteOptions {
            dir: dir.clone(),
            owner: None,
            allow_disk: false,
        };
        let mut files = SecretFiles::write_all(
            &options,
            &[
                Resolved {
                    name: SecretName::new("KUBECONFIG").unwrap(),
                    value: SecretSlice::from(b"apiVersion: v1\n".to_vec()),
                    delivery: Delivery::FileAndPath,
                    json_object: false,
                },
                secret("TOKEN", b"t0ken-value", false),
            ],
        )
        .unwrap();
        assert_eq!(
            fs::read(dir.join("KUBECONFIG")).unwrap(),
            b"apiVersion: v1\n"
        );
        let mode = fs::metadata(dir.join("KUBECONFIG"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o400);
        let env = fs::read(dir.join(".env")).unwrap();
        let script = [&env[..], b"printf '%s|%s' \"$KUBECONFIG\" \"$TOKEN\""].concat();
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(<std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(&script))
            .output()
            .unwrap();
        assert_eq!(
            String::from_utf8(out.stdout).unwrap(),
            format!("{}|t0ken-value", dir.join("KUBECONFIG").display())
        );
        files.wipe();
        assert_eq!(fs::read_dir(&dir).unwrap().count(), 0);
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn refuses_disk_backed_directories_unless_allowed() {
        let dir = std::env::temp_dir().join(format!("keyhole-disk-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let fs_type = filesystem_of(&dir).unwrap();
        if !is_memory_backed(&fs_type) {
            let options = WriteOptions {
                dir: dir.clone(),
                owner: None,
                allow_disk: false,
            };
            let err = SecretFiles::write_all(&options, &[secret("A", b"x", true)]).unwrap_err();
            assert!(err.to_string().contains("not memory-backed"), "{err}");
            assert_eq!(fs::read_dir(&dir).unwrap().count(), 0);
        }
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn all_or_nothing_when_one_secret_fails() {
        let dir = shm_dir("atomic");
        // A NUL byte cannot go into the env file: the whole delivery fails and wipes.
        let options = WriteOptions {
            dir: dir.clone(),
            owner: None,
            allow_disk: false,
        };
        let err = SecretFiles::write_all(
            &options,
            &[
                secret("GOOD", b"fine-value", true),
                secret("BAD", b"a\0b", false),
            ],
        )
        .unwrap_err();
        assert!(err.to_string().contains("secret BAD"), "{err}");
        assert_eq!(
            fs::read_dir(&dir).unwrap().count(),
            0,
            "no partial set is left"
        );
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn debug_never_shows_a_value() {
        let shown = format!("{:?}", secret("X", b"hunter2-value", true));
        assert!(!shown.contains("hunter2"), "{shown}");
    }
}
