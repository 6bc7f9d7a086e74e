//! The pod contract between `keyhole-runner` (which builds job pods) and `keyhole-broker` (which
//! runs in them). Both compile against this crate, so a pod the runner builds is always one the
//! broker understands. Each item says who writes it and who reads it.
//!
//! # Layout
//!
//! * the crate root: container, volume, file and Secret-key names of the job pod, the services
//!   wait, the end-of-log marker and the broker's exit codes.
//! * [`env`](mod@env): every `KEYHOLE_*` environment variable name (the broker's settings and the
//!   runner's own).
//! * [`reference`](mod@reference): the secret reference model and the `KEYHOLE_SECRET_<NAME>` grammar; uses
//!   nothing else here.
//! * [`transfer`]: the plan of the transfer containers (artifacts, caches), which the runner
//!   writes into the per-job Secret.
//!
//! It is compiled into the broker binary, so it depends only on serde, secrecy and thiserror.

pub mod env;
pub mod reference;
pub mod transfer;

/// Name of the broker's container, the job pod's first. Written by the runner; read by the
/// runner when it reports a broker failure.
pub const BROKER_CONTAINER: &str = "keyhole-broker";

/// Name of the job's build container. Written by the runner.
pub const BUILD_CONTAINER: &str = "build";

/// The projected volume holding the broker's inputs (ServiceAccount token, reference
/// annotations, the per-job Secret). Mounted into the broker alone; the build container never
/// sees it. Written by the runner (pod spec); read by the broker.
pub const INPUTS_VOLUME: &str = "keyhole-inputs";
/// Where [`INPUTS_VOLUME`] is mounted in the broker.
pub const INPUTS_DIR: &str = "/keyhole/inputs";
/// File in [`INPUTS_DIR`]: the projected ServiceAccount token (audience [`VAULT_AUDIENCE`] by
/// default, short expiry). Written by the kubelet; read by the broker for every login.
pub const INPUT_SA_TOKEN: &str = "token";
/// File in [`INPUTS_DIR`]: a projected ServiceAccount token for the Kubernetes API (default
/// audience), used to read `k8s:` references as the job's ServiceAccount. Written by the
/// kubelet; read by the broker's Kubernetes client (re-read when it rotates).
pub const INPUT_KUBE_TOKEN: &str = "kube-token";
/// File in [`INPUTS_DIR`]: the PEM bundle that signs Vault's certificate, projected from the
/// ConfigMap the runner's `vault_ca_config_map` names (public data, but in the broker's inputs
/// only: the build container has no use for it). Read by the broker ([`env::VAULT_CA_FILE`]).
pub const INPUT_VAULT_CA: &str = "vault-ca.crt";
/// File in [`INPUTS_DIR`]: the pod's annotations (downward API, `key="value"` lines), carrying
/// the references under [`REFERENCE_ANNOTATION_PREFIX`]. Written by the kubelet.
pub const INPUT_ANNOTATIONS: &str = "annotations";
/// Directory in [`INPUTS_DIR`]: the keys of the per-job Secret (job token, masked variables,
/// ID tokens), one file each. Written by the kubelet from the runner's Secret. Every value in
/// it is masked in the job log. Keys starting with [`JOB_VARIABLE_PREFIX`] or
/// [`JOB_FILE_VARIABLE_PREFIX`] are delivered to the job; other keys are inputs for the broker
/// alone (e.g. the ID token for Vault JWT login) and are not delivered.
pub const INPUT_JOB_SECRET_DIR: &str = "job";
/// Per-job Secret key prefix of a plain job variable: key `var.<NAME>` makes the broker append
/// `export NAME='value'` to [`ENV_FILE`], quoted like a `file: false` secret. `<NAME>` must be a
/// shell variable name and may not also name a secret reference. Written by the runner (for
/// values only it has: CI_JOB_TOKEN, masked variables, ID tokens the job uses); read by the
/// broker.
pub const JOB_VARIABLE_PREFIX: &str = "var.";
/// Per-job Secret key prefix of a GitLab file variable: key `file.<NAME>` makes the broker write
/// the value to `SECRETS_DIR/<NAME>` (same modes as secrets) and append
/// `export NAME='SECRETS_DIR/<NAME>'` to [`ENV_FILE`]. Same name rules as
/// [`JOB_VARIABLE_PREFIX`]. Written by the runner; read by the broker.
pub const JOB_FILE_VARIABLE_PREFIX: &str = "file.";

/// Pod annotation prefix for secret references: `secrets.keyhole.dev/<NAME>: <reference>`.
/// Names and locations only, never values. Written by the runner; read by the broker.
pub const REFERENCE_ANNOTATION_PREFIX: &str = "secrets.keyhole.dev/";

/// Default audience of the projected ServiceAccount token (a Vault role's `audience`).
pub const VAULT_AUDIENCE: &str = "vault";

/// The memory-backed (`emptyDir.medium: Memory`) volume the broker writes secrets to and the
/// build container mounts read-only.
pub const SECRETS_VOLUME: &str = "keyhole-secrets";
/// Where [`SECRETS_VOLUME`] is mounted in both containers. One file per secret, named after the
/// secret; written by the broker (mode 0400/0440), read by the job.
pub const SECRETS_DIR: &str = "/keyhole/secrets";
/// File in [`SECRETS_DIR`]: `export NAME='value'` lines for `file: false` secrets and job
/// variables (and `export NAME='<path>'` for file variables). Written by the broker; sourced by
/// the generated job script.
pub const ENV_FILE: &str = ".env";
/// File in [`SECRETS_DIR`]: present once every secret is written. Written by the broker last;
/// read by its startup probe (`keyhole-broker ready`).
pub const READY_MARKER: &str = ".ready";

/// A small `emptyDir` both containers mount, for the log pipe. Written by the runner (pod spec).
pub const RUNTIME_VOLUME: &str = "keyhole-run";
/// Where [`RUNTIME_VOLUME`] is mounted in both containers.
pub const RUNTIME_DIR: &str = "/keyhole/run";
/// FIFO in [`RUNTIME_DIR`]: the build script writes its output here; the broker masks it and
/// writes it to its own stdout, the only path to the container log. Created by the broker.
pub const LOG_FIFO: &str = "log";
/// FIFO in [`RUNTIME_DIR`]: the generated job script writes its exit status here (`0`–`255`
/// and a newline, [`parse_done`]) as its very last act, so the broker drains the log, wipes,
/// revokes and ends its log at once rather than when the kubelet's SIGTERM comes (late on a
/// busy node), and passes the status on in [`script_exit_line`]. Opened read-write by the
/// script, which never blocks. A job that writes it early only cuts its own trace short,
/// loses its own secrets and names its own status, as a script's `exit` does. Created by the
/// broker; written by the build script.
pub const DONE_FIFO: &str = "done";

/// FIFO in [`RUNTIME_DIR`], only when the job has services or preparation steps to wait
/// for: the generated job script reads a line from it before its first command. The broker
/// opens it once the script is reading (the job's containers, services included, have
/// started), then writes the line once every step in [`env::WAIT_FOR_STEPS`] left its
/// [`step_done_marker`] and every service in [`env::WAIT_FOR_SERVICES`] accepted a connection
/// or the wait timed out (with a warning in the trace). Created by the broker before it
/// reports ready; read by the build script.
pub const GATE_FIFO: &str = "gate";
/// The line the broker writes to [`GATE_FIFO`] to let the script start. Anything else (the
/// end of file when the broker stopped first) stops the script before the job's commands.
pub const GATE_OPEN: &str = "go";

/// FIFO in [`RUNTIME_DIR`]: the build script opens it read-write (never blocks) once past its
/// gate and writes one byte; every process of the build container inherits it, so the
/// broker reads the end of file exactly when the build container's processes are all gone.
/// At a SIGTERM (a canceled job: the kubelet stops every container of the pod at once) the
/// broker keeps relaying while the script lives, for its `after_script`, up to
/// [`env::CANCEL_WAIT`]. Created by the broker before it reports ready; opened by the build
/// script.
pub const ALIVE_FIFO: &str = "alive";

/// File in [`RUNTIME_DIR`] a preparation step (the checkout, the artifacts' download: regular
/// containers that start right after the broker, with the build container, in the same kubelet
/// sync) creates once it has succeeded, as its last act. A failed step leaves none: the script
/// stays at its gate and the runner fails the job from the step container's exit. Written by
/// the step; read by the broker (and by a later step that must come after it).
pub fn step_done_marker(step: &str) -> String {
    format!("{step}.done")
}

/// Step container names, comma-separated (DNS labels never hold a comma).
pub fn encode_steps(steps: &[&str]) -> String {
    steps.join(",")
}

/// The inverse of [`encode_steps`]; the error names the entry that is not a container name.
pub fn decode_steps(text: &str) -> Result<Vec<String>, String> {
    text.split(',')
        .filter(|s| !s.is_empty())
        .map(|s| {
            let label = s.len() <= 63
                && s.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !s.starts_with('-')
                && !s.ends_with('-');
            if label {
                Ok(s.to_owned())
            } else {
                Err(format!(
                    "step {s:?} is not a container name (lowercase letters, digits and '-')"
                ))
            }
        })
        .collect()
}

/// A service the job waits for: its container name and the TCP ports on the pod's loopback of
/// which one must accept a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceWait {
    pub name: String,
    pub ports: Vec<u16>,
}

/// `name:port+port,name:port`: container names are DNS labels, so `:`, `+` and `,` never
/// occur in them.
pub fn encode_service_waits(waits: &[ServiceWait]) -> String {
    waits
        .iter()
        .map(|w| {
            let ports: Vec<String> = w.ports.iter().map(u16::to_string).collect();
            format!("{}:{}", w.name, ports.join("+"))
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// The inverse of [`encode_service_waits`]; the error names the entry that is malformed.
pub fn decode_service_waits(text: &str) -> Result<Vec<ServiceWait>, String> {
    text.split(',')
        .filter(|e| !e.is_empty())
        .map(|entry| {
            let bad = || {
                format!(
                    "{}: {entry:?} is not `name:port[+port...]`",
                    env::WAIT_FOR_SERVICES
                )
            };
            let (name, ports) = entry.split_once(':').ok_or_else(bad)?;
            let ports = ports
                .split('+')
                .map(|p| p.parse::<u16>().ok().filter(|&p| p != 0).ok_or_else(bad))
                .collect::<Result<Vec<_>, _>>()?;
            if name.is_empty() {
                return Err(bad());
            }
            Ok(ServiceWait {
                name: name.to_owned(),
                ports,
            })
        })
        .collect()
}

/// The broker's log line once the job's output is relayed in full (the pipe drained at the
/// end of the job), before it wipes the files and revokes its Vault leases and token. Written
/// by the broker to stderr, for people reading the trace.
pub const LOG_END_LINE: &str = "keyhole-broker: job ended; wiping secrets";

/// Per-job Secret key of the log-end token: random, made by the runner for each job, a broker
/// input (not delivered to the job). The broker's last output is [`log_end_marker`] on stdout
/// and on stderr with this token, after the job's output, the wipe and the revocations. The
/// runner stops following the log once both came through, rather than waiting for the kubelet
/// to notice the broker exited (up to a second, `logForceCheckPeriod`), and warns when the
/// stream ends without them (the trace may lack the job's last lines). The job cannot forge a
/// marker: it never sees the token, and like every value of the per-job Secret the token is
/// masked in the job's output. Written by the runner; read by the broker.
pub const INPUT_LOG_END_KEY: &str = "log-end";

/// The two streams of the broker's container log. The kubelet interleaves them, each in order
/// with itself, so the end of the log is known only once both have ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogStream {
    Stdout,
    Stderr,
}

/// The broker's last line on `stream`: `keyhole-broker: end of log (stdout) <token>`. Written by
/// the broker; cut out of the trace by the runner.
pub fn log_end_marker(stream: LogStream, token: &str) -> String {
    let stream = match stream {
        LogStream::Stdout => "stdout",
        LogStream::Stderr => "stderr",
    };
    format!("keyhole-broker: end of log ({stream}) {token}\n")
}

/// What the job script wrote to [`DONE_FIFO`]: its exit status, or None for anything else
/// (an older script writes a single `.`).
pub fn parse_done(written: &[u8]) -> Option<u8> {
    let text = std::str::from_utf8(written).ok()?;
    let digits = text.strip_suffix('\n').unwrap_or(text);
    if digits.is_empty() || digits.len() > 3 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// The start of the broker's line on stdout, just before its end marker, that gives the job
/// script's exit status: `keyhole-broker: script exited <token> ` and then
/// [`script_exit_line`]'s three digits and a newline. The token makes it the broker's (the job
/// cannot print it unmasked), so the runner can end the job at the log's end instead of at the
/// kubelet's next status update. Absent when the script's end was not seen (killed, canceled,
/// or a job whose uploads follow its script).
pub fn script_exit_prefix(token: &str) -> String {
    format!("keyhole-broker: script exited {token} ")
}

/// The whole exit line for `status`, see [`script_exit_prefix`]: fixed width, `000`–`255`.
pub fn script_exit_line(token: &str, status: u8) -> String {
    format!("{}{status:03}\n", script_exit_prefix(token))
}

/// Reads the three digits and newline after [`script_exit_prefix`] (exactly
/// [`SCRIPT_EXIT_TAIL`] bytes); None if they are not that.
pub fn parse_script_exit_tail(tail: &[u8]) -> Option<u8> {
    match tail {
        [a, b, c, b'\n'] if [a, b, c].iter().all(|d| d.is_ascii_digit()) => {
            std::str::from_utf8(&tail[..3]).ok()?.parse().ok()
        }
        _ => None,
    }
}

/// The length of what follows [`script_exit_prefix`] in [`script_exit_line`].
pub const SCRIPT_EXIT_TAIL: usize = 4;

/// Exit codes of `keyhole-broker run`. Read by the runner to choose the job's failure reason.
pub mod exit_code {
    /// Clean shutdown after the job.
    pub const OK: i32 = 0;
    /// A reference could not be resolved (denied, missing, malformed): a job configuration
    /// error the user must fix. Wins over the codes below when failures are mixed, since
    /// retrying cannot fix it.
    pub const SECRETS_FAILED: i32 = 64;
    /// The broker's own configuration or inputs are wrong (settings, allow-list, per-job
    /// Secret keys, a job variable clashing with a secret): a runner/deployment error.
    pub const BAD_INPUTS: i32 = 65;
    /// Vault or the apiserver could not be reached in time, or Vault is sealed: an
    /// infrastructure error; the job may succeed when retried.
    pub const UNAVAILABLE: i32 = 69;
    /// SIGTERM or SIGINT came before the job's script ran (the pod was deleted while the
    /// broker resolved): what was issued so far is revoked, nothing is delivered. 128 + 15,
    /// as a shell reports a process ended by SIGTERM.
    pub const TERMINATED: i32 = 143;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_waits_round_trip_and_malformed_entries_are_named() {
        let waits = vec![
            ServiceWait {
                name: "db".into(),
                ports: vec![5432],
            },
            ServiceWait {
                name: "svc-1".into(),
                ports: vec![80, 443],
            },
        ];
        let text = encode_service_waits(&waits);
        assert_eq!(text, "db:5432,svc-1:80+443");
        assert_eq!(decode_service_waits(&text).unwrap(), waits);
        assert_eq!(decode_service_waits("").unwrap(), []);
        for bad in ["db", "db:", "db:0", "db:70000", ":80", "db:80+x"] {
            let err = decode_service_waits(bad).unwrap_err();
            assert!(err.contains(&format!("{bad:?}")), "{bad}: {err}");
        }
    }

    #[test]
    fn the_done_fifo_carries_the_exit_status_and_nothing_else_counts() {
        assert_eq!(parse_done(b"0\n"), Some(0));
        assert_eq!(parse_done(b"255\n"), Some(255));
        assert_eq!(parse_done(b"7"), Some(7));
        for other in [
            &b"."[..],
            b"",
            b"\n",
            b"256\n",
            b"-1\n",
            b"1 2\n",
            b"0001\n",
            b"\xff\n",
        ] {
            assert_eq!(parse_done(other), None, "{other:?}");
        }
    }

    #[test]
    fn the_exit_line_is_fixed_width_and_reads_back() {
        let token = "0123456789abcdef0123456789abcdef";
        for status in [0u8, 7, 42, 255] {
            let line = script_exit_line(token, status);
            let tail = line.strip_prefix(&script_exit_prefix(token)).unwrap();
            assert_eq!(tail.len(), SCRIPT_EXIT_TAIL);
            assert_eq!(parse_script_exit_tail(tail.as_bytes()), Some(status));
        }
        for bad in [&b"00\n\n"[..], b"0000", b"abc\n", b"256\n", b"12\n"] {
            assert_eq!(parse_script_exit_tail(bad), None, "{bad:?}");
        }
    }
}
