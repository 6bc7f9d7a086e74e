//! `keyhole-broker run` as a child process against the bed's Vault and API server, with a job
//! script that prints its secrets the ways users really do (`jq`, `set -x`, `base64`,
//! `openssl base64`, Python's URL quoting) into the broker's log pipe: none of those forms
//! reaches the broker's output, and a job variable too short to mask is named in a warning
//! before the job's output. Needs `scripts/testbed up`, a built broker
//! (`cargo build -p keyhole-broker`), and `jq`, `base64`, `openssl` and `python3` on this
//! machine.

use std::process::Stdio;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use keyhole_contract::exit_code;
use keyhole_tests::{BrokerJob, JobNamespace, VaultRole};
use serde_json::json;

/// Fields of the whole Vault secret `db`.
const DB_PASSWORD: &str = "db-pass-\"quoted\" \\ 0123";
const DB_USER: &str = "app-user-0123456789";
/// Too short to mask: named in a warning.
const DB_PIN: &str = "Zq7!";
/// The key of the whole Kubernetes Secret `app-creds`.
const APP_TOKEN: &str = "app-token-k8s-0123456789";
/// Long enough that its base64 wraps (76 + 76 + 4 characters at 76 columns: the last line too
/// short to mask alone), with bytes that percent-encoders treat differently.
const CERT: &str = "cert/with spaces+plus?and=more&symbol-0123456789/abcdefghijklmnopqrstuvwxyz/ABCDEFGHIJKLMNOPQRSTUVWXYZ/0123456789/end";
const JOB_TOKEN: &str = "glcbt-64_ci-job-token-0123456789";
/// A job variable too short to mask.
const SHORT_PIN: &str = "Pk9#";

/// The job script: sources the env file, sends its stdout and stderr into the broker's log
/// pipe (as the runner's script does), and prints every secret in the forms users print.
const SCRIPT: &str = r#"
set -eu
secrets=$1
. "$secrets/.env"
quote() { python3 -c 'import sys, urllib.parse as u; print(getattr(u, sys.argv[1])(sys.stdin.read(), safe=sys.argv[2]))' "$@"; }
set -x
jq -r .password "$secrets/DB"
jq -r .user "$secrets/DB"
jq . "$secrets/DB"
jq -r .token "$secrets/APP"
PASSWORD=$(jq -r .password "$secrets/DB")
TOKEN=$(jq -r .token "$secrets/APP")
printf '%s' "$CERT" | base64
printf '%s' "$CERT" | openssl base64
echo "$CERT" | base64
printf '%s' "$CERT" | quote quote /
printf '%s' "$CERT" | quote quote_plus ''
printf '%s' "$CERT" | quote quote "!*'();,/?:@&=+\$#~"
echo "token=$CI_JOB_TOKEN"
set +x
echo job done
"#;

/// Runs the job script with its output to `out` (the log pipe, or a pipe of this test's).
fn job_script(secrets: &std::path::Path) -> std::process::Command {
    let mut sh = std::process::Command::new("sh");
    sh.arg("-c").arg(SCRIPT).arg("sh").arg(secrets);
    sh
}

/// The forms the script prints, computed here independently of the tools: each must be in
/// what the job printed and not in what the broker let through.
fn printed_forms() -> Vec<(String, String)> {
    let mut forms = vec![
        ("password".to_owned(), DB_PASSWORD.to_owned()),
        (
            "password, JSON-escaped".to_owned(),
            r#"db-pass-\"quoted\" \\ 0123"#.to_owned(),
        ),
        ("user".to_owned(), DB_USER.to_owned()),
        ("token".to_owned(), APP_TOKEN.to_owned()),
        ("job token".to_owned(), JOB_TOKEN.to_owned()),
    ];
    for (what, encoded, columns) in [
        ("base64", STANDARD.encode(CERT), 76),
        ("openssl base64", STANDARD.encode(CERT), 64),
        ("echo | base64", STANDARD.encode(format!("{CERT}\n")), 76),
    ] {
        for (i, line) in encoded.as_bytes().chunks(columns).enumerate() {
            forms.push((
                format!("{what} line {i}"),
                String::from_utf8(line.to_vec()).unwrap(),
            ));
        }
    }
    let percent = |safe: &[u8], plus: bool| -> String {
        CERT.bytes()
            .map(|b| {
                if b.is_ascii_alphanumeric() || b"-._~".contains(&b) || safe.contains(&b) {
                    (b as char).to_string()
                } else if plus && b == b' ' {
                    "+".to_owned()
                } else {
                    format!("%{b:02X}")
                }
            })
            .collect()
    };
    forms.push(("quote".to_owned(), percent(b"/", false)));
    forms.push(("quote_plus".to_owned(), percent(b"", true)));
    forms.push(("encodeURI".to_owned(), percent(b"!*'();,/?:@&=+$#", false)));
    forms
}

#[tokio::test]
async fn a_job_printing_its_secrets_every_usual_way_shows_none_of_them() {
    for tool in ["jq", "base64", "openssl", "python3"] {
        let found = std::process::Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .stdout(Stdio::null())
            .status()
            .unwrap();
        assert!(found.success(), "this test needs {tool} on this machine");
    }
    let job = BrokerJob::create(
        JobNamespace::builder("bmask")
            .service_account("job")
            .secret("app-creds", json!({"token": APP_TOKEN}))
            .secret_reader("read-app-creds", "job", "app-creds")
            .vault_kv(
                "db",
                json!({"password": DB_PASSWORD, "user": DB_USER, "pin": DB_PIN}),
            )
            .vault_kv("cert", json!({"value": CERT}))
            .vault_role(VaultRole::new("job").read("kv/data/{ns}/*")),
    )
    .await;
    let (name, dirs) = (&job.ns.name, &job.dirs);
    dirs.write_input("job/var.CI_JOB_TOKEN", JOB_TOKEN.as_bytes())
        .unwrap();
    dirs.write_input("job/var.SHORT_PIN", SHORT_PIN.as_bytes())
        .unwrap();
    let (broker, before_job) = job
        .start(&[
            ("DB", &format!("vault:kv/{name}/db")),
            ("APP", "k8s:app-creds"),
            ("CERT", &format!("vault:kv/{name}/cert?file=false#value")),
        ])
        .await;
    for warning in [
        "keyhole-broker: warning: secret DB field \"pin\" is shorter than 8 bytes and cannot be masked in the log",
        "keyhole-broker: warning: job variable SHORT_PIN (per-job Secret key \"var.SHORT_PIN\") is shorter than 8 bytes and cannot be masked in the log",
    ] {
        assert!(
            before_job.contains(warning),
            "no {warning:?} before the job's output:\n{before_job}"
        );
    }

    // What the job prints, unmasked: proof that the tools print each form.
    let raw = job_script(&dirs.secrets).output().unwrap();
    assert!(raw.status.success(), "{raw:?}");
    let raw = format!(
        "{}{}",
        String::from_utf8_lossy(&raw.stdout),
        String::from_utf8_lossy(&raw.stderr)
    );
    // The same through the broker's log pipe, as the runner's script sends it.
    let fifo = std::fs::OpenOptions::new()
        .write(true)
        .open(dirs.runtime.join("log"))
        .unwrap();
    let status = job_script(&dirs.secrets)
        .stdout(fifo.try_clone().unwrap())
        .stderr(fifo)
        .status()
        .unwrap();
    assert!(status.success());
    let exit = broker.stop().await.unwrap();
    exit.assert_code(exit_code::OK);
    assert!(
        exit.stdout.contains("job done") && exit.stdout.contains("+ jq -r .password"),
        "{}",
        exit.stdout
    );
    for (what, form) in printed_forms() {
        assert!(raw.contains(&form), "the job never printed the {what} form");
        assert!(
            !exit.stdout.contains(&form) && !exit.stderr.contains(&form),
            "the {what} form reached the broker's output:\n{}",
            exit.stdout
        );
    }
    for value in [DB_PIN, SHORT_PIN] {
        assert!(
            !exit.stderr.contains(value),
            "a warning showed a value:\n{}",
            exit.stderr
        );
    }
}
