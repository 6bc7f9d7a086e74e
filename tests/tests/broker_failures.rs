//! `keyhole-broker run` as a child process against the bed's real Vault and API server: every
//! way it can fail, each with its message and exit code and no file left behind; and the
//! success case, whose output carries no secret value. Needs `scripts/testbed up` and a built
//! broker (`cargo build -p keyhole-broker`; see `keyhole_tests::broker_binary`).

use std::net::TcpListener;
use std::time::{Duration, Instant};

use keyhole_broker::leases::END_DEADLINE;
use keyhole_contract::exit_code;
use keyhole_tests::{
    AuditedCall, BrokerExit, BrokerJob, BrokerProcess, JobNamespace, OwnVault, TestBed, VaultAdmin,
    VaultRole, audited_calls_of_namespace, free_port, lease_of,
};
use serde_json::json;

const DB_PASSWORD: &str = "db-pass-'quoted' $HOME \"x\" 0123";
const DB_USER: &str = "app-user-0123456789";
const APP_TOKEN: &str = "app-token-k8s-0123456789";
const FORBIDDEN: &str = "forbidden-value-0123456789";
const OTHER_TEAM: &str = "other-team-secret-0123456789";

/// A job namespace with ServiceAccount `job`: Vault may read `kv/<ns>/*` (the secret `db`
/// holds password and user), RBAC lets it get the Secret `app-creds` but not `not-yours`; the
/// broker's inputs hold real tokens of that ServiceAccount.
struct Job(BrokerJob);

impl std::ops::Deref for Job {
    type Target = BrokerJob;

    fn deref(&self) -> &BrokerJob {
        &self.0
    }
}

impl Job {
    async fn new(tag: &str) -> Self {
        let job = BrokerJob::create(
            JobNamespace::builder(tag)
                .service_account("job")
                .secret("app-creds", json!({"token": APP_TOKEN}))
                .secret("not-yours", json!({"token": FORBIDDEN}))
                .secret_reader("read-app-creds", "job", "app-creds")
                .vault_kv("db", json!({"password": DB_PASSWORD, "user": DB_USER}))
                .vault_role(VaultRole::new("job").read("kv/data/{ns}/*")),
        )
        .await;
        job.vault
            .write(
                &format!("kv/data/other-team-{}/db", job.ns.name),
                json!({"data": {"password": OTHER_TEAM}}),
            )
            .await
            .unwrap();
        Self(job)
    }

    /// The namespace's settings with `extra` in place of those of the same name.
    fn settings_with(&self, extra: &[(&str, &str)]) -> Vec<(String, String)> {
        let mut settings = self.settings();
        for (k, v) in extra {
            settings.retain(|(key, _)| key != k);
            settings.push(((*k).to_owned(), (*v).to_owned()));
        }
        settings
    }

    /// [`Self::fails_with`] the namespace's settings.
    async fn fails(&self, code: i32, refs: &[(&str, &str)]) -> BrokerExit {
        self.fails_with(code, refs, &self.settings()).await
    }

    /// Runs the broker with `refs` and `settings` to its exit (it must fail before ready), which
    /// must be `code` with nothing left behind.
    async fn fails_with(
        &self,
        code: i32,
        refs: &[(&str, &str)],
        settings: &[(String, String)],
    ) -> BrokerExit {
        let exit = self.spawn(refs, settings).wait().await.unwrap();
        exit.assert_code(code);
        self.assert_nothing_left(&exit);
        exit
    }

    /// Ends the job of a ready `broker` (SIGTERM): it exits 0 with nothing left behind.
    async fn ends_well(&self, broker: BrokerProcess) -> BrokerExit {
        let exit = broker.stop().await.unwrap();
        exit.assert_code(exit_code::OK);
        self.assert_nothing_left(&exit);
        exit
    }

    fn assert_nothing_left(&self, exit: &BrokerExit) {
        assert_eq!(
            self.dirs.secret_files().unwrap(),
            Vec::<String>::new(),
            "files left in the secrets directory; stderr:\n{}",
            exit.stderr
        );
        for value in [DB_PASSWORD, DB_USER, APP_TOKEN, FORBIDDEN, OTHER_TEAM] {
            assert!(
                !exit.stderr.contains(value) && !exit.stdout.contains(value),
                "a secret value reached the broker's output:\n{}",
                exit.stderr
            );
        }
    }
}

/// The error lines of `exit`, which must be `count`.
fn errors(exit: &BrokerExit, count: usize) -> Vec<&str> {
    let errors = exit.error_lines();
    assert_eq!(errors.len(), count, "{}", exit.stderr);
    errors
}

/// Sets up `vault` as `scripts/lib/up.sh` sets up the bed's Vault for dynamic secrets: kubernetes
/// auth against the bed's API server (reviewer: the bed's `kube-system/vault-auth`), the
/// database engine on the bed's Redis with the role [`SHORT_LIVED`] (users live 6 s unless
/// renewed, 60 s at most). ServiceAccount `job` of `namespace` logs in as role `namespace`
/// with a token of 300 s (no token renewal within the test) and may read the role's
/// credentials and revoke its leases.
async fn configure_dynamic_secrets(vault: &OwnVault, bed: &TestBed, namespace: &str) {
    let vault = vault.admin();
    let write = async |path: &str, body: serde_json::Value| {
        vault.write(path, body).await.unwrap();
    };
    let reviewer = bed
        .service_account_token("kube-system", "vault-auth", &[])
        .await
        .unwrap();
    let ca = std::fs::read_to_string(bed.path("pki/ca.crt")).unwrap();
    write("sys/auth/kubernetes", json!({"type": "kubernetes"})).await;
    write(
        "auth/kubernetes/config",
        json!({"kubernetes_host": bed.env.apiserver_url, "kubernetes_ca_cert": ca,
               "token_reviewer_jwt": reviewer, "disable_local_ca_jwt": true}),
    )
    .await;
    let redis = bed.env.redis.as_ref().expect("the bed has Redis");
    let (host, port) = redis.addr.rsplit_once(':').unwrap();
    let password = std::fs::read_to_string(&redis.password_file).unwrap();
    write("sys/mounts/database", json!({"type": "database"})).await;
    write(
        "database/config/redis",
        json!({"plugin_name": "redis-database-plugin", "host": host, "port": port.parse::<u16>().unwrap(),
               "tls": false, "username": "default", "password": password.trim(), "allowed_roles": "*"}),
    )
    .await;
    write(
        "database/roles/short-lived",
        json!({"db_name": "redis", "creation_statements": "[\"~*\", \"+@read\", \"+ping\"]",
               "default_ttl": "6s", "max_ttl": "60s"}),
    )
    .await;
    let role = VaultRole::new("job")
        .read(SHORT_LIVED)
        .update("sys/leases/revoke");
    vault.grant(namespace, &role).await.unwrap();
}
/// The dynamic credentials [`configure_dynamic_secrets`] issues.
const SHORT_LIVED: &str = "database/creds/short-lived";

/// Deletes a user of the bed's Redis when dropped (panics included): a sealed Vault cannot
/// revoke the lease that made it, and the test's own Vault is gone after the test.
struct RedisUserRemoved {
    bed: TestBed,
    user: String,
}

impl Drop for RedisUserRemoved {
    fn drop(&mut self) {
        let Some(redis) = self.bed.env.redis.as_ref() else {
            return;
        };
        let Some((host, port)) = redis.addr.rsplit_once(':') else {
            return;
        };
        let password = std::fs::read_to_string(&redis.password_file).unwrap_or_default();
        let _ = std::process::Command::new(self.bed.env.bin("redis-cli"))
            .env("REDISCLI_AUTH", password.trim())
            .args(["-h", host, "-p", port, "ACL", "DELUSER", &self.user])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status();
    }
}

#[tokio::test]
async fn success_delivers_secrets_and_job_variables_and_no_value_reaches_its_output() {
    let job = Job::new("bfok").await;
    let ns = &job.ns.name;
    let ci_job_token = "glcbt-64_ci-job-token-0123456789";
    let deploy_config = "apiVersion: v1\nkind: Config\nsecret: file-var-0123456789\n";
    let id_token = "eyJhbGciOi.id-token-payload-0123456789.sig";
    job.dirs
        .write_input("job/var.CI_JOB_TOKEN", ci_job_token.as_bytes())
        .unwrap();
    job.dirs
        .write_input("job/file.DEPLOY_CONFIG", deploy_config.as_bytes())
        .unwrap();
    job.dirs
        .write_input("job/VAULT_ID_TOKEN", id_token.as_bytes())
        .unwrap();
    let (broker, stderr) = job
        .start(&[
            ("DB_PASSWORD", &format!("vault:kv/{ns}/db#password")),
            ("APP_TOKEN", "k8s:app-creds/token?file=false"),
        ])
        .await;
    assert!(
        stderr.contains("2 secret(s) and 2 job variable(s) delivered; ready"),
        "{stderr}"
    );

    let secrets = &job.dirs.secrets;
    assert_eq!(
        job.dirs.secret_files().unwrap(),
        [".env", ".ready", "DB_PASSWORD", "DEPLOY_CONFIG"],
        "the bare input VAULT_ID_TOKEN is not delivered"
    );
    assert_eq!(
        std::fs::read_to_string(secrets.join("DB_PASSWORD")).unwrap(),
        DB_PASSWORD
    );
    assert_eq!(
        std::fs::read_to_string(secrets.join("DEPLOY_CONFIG")).unwrap(),
        deploy_config
    );
    // What the job script sees after sourcing the env file.
    let seen = std::process::Command::new("sh")
        .arg("-c")
        .arg(r#". "$1/.env"; printf '%s\n%s\n%s\n%s' "$CI_JOB_TOKEN" "$DEPLOY_CONFIG" "$APP_TOKEN" "${VAULT_ID_TOKEN:-unset}""#)
        .arg("sh")
        .arg(secrets)
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8(seen.stdout).unwrap(),
        format!(
            "{ci_job_token}\n{}\n{APP_TOKEN}\nunset",
            secrets.join("DEPLOY_CONFIG").display()
        )
    );

    job.dirs
        .write_job_log(&format!(
            "db={DB_PASSWORD}\napp={APP_TOKEN}\njob-token={ci_job_token}\nid={id_token}\nconfig-line=secret: file-var-0123456789\njob done\n"
        ))
        .unwrap();
    let exit = job.ends_well(broker).await;
    for line in [
        "db=[MASKED]",
        "app=[MASKED]",
        "job-token=[MASKED]",
        "id=[MASKED]",
        "job done",
    ] {
        assert!(exit.stdout.contains(line), "{line:?} in:\n{}", exit.stdout);
    }
    for value in [ci_job_token, id_token, "file-var-0123456789"] {
        assert!(
            !exit.stdout.contains(value) && !exit.stderr.contains(value),
            "a job variable's value reached the output:\n{}\n{}",
            exit.stdout,
            exit.stderr
        );
    }
    exit.assert_stderr_has("audit variable=CI_JOB_TOKEN source=job-secret:var.CI_JOB_TOKEN");
    exit.assert_stderr_has("audit variable=DEPLOY_CONFIG source=job-secret:file.DEPLOY_CONFIG");
    exit.assert_stderr_has("Vault token revoked");
}

#[tokio::test]
async fn vault_down_is_unavailable_after_the_deadline() {
    let job = Job::new("bfdown").await;
    let addr = format!("http://127.0.0.1:{}", free_port());
    let ns = &job.ns.name;
    let started = std::time::Instant::now();
    let exit = job
        .fails_with(
            exit_code::UNAVAILABLE,
            &[("DB_PASSWORD", &format!("vault:kv/{ns}/db#password"))],
            &job.settings_with(&[
                ("KEYHOLE_VAULT_ADDR", &addr),
                ("KEYHOLE_VAULT_DEADLINE", "2"),
            ]),
        )
        .await;
    let failed_after = started.elapsed();
    // The failure comes within 10 s of the 2 s deadline, and nothing was delivered.
    assert!(
        failed_after < std::time::Duration::from_secs(12),
        "failed {failed_after:?} after start, deadline 2 s"
    );
    println!(
        "FIGURE vault-unreachable-at-start: the broker failed {:.1} s after it started (KEYHOLE_VAULT_DEADLINE 2 s), no file written",
        failed_after.as_secs_f64()
    );
    let errors = errors(&exit, 1);
    assert!(
        errors[0].contains(&format!("secret DB_PASSWORD (vault:kv/{ns}/db#password)"))
            && errors[0].contains(&format!("Vault at {addr} could not be reached"))
            && errors[0].contains("check the address and that Vault is running"),
        "{}",
        errors[0]
    );
}

#[tokio::test]
async fn a_sealed_vault_is_unavailable() {
    // Sealing the shared Vault would break other tests: start a dev server of our own.
    let job = Job::new("bfseal").await;
    let vault = OwnVault::start(&job.bed).await;
    let addr = vault.addr.clone();
    vault.seal().await;
    let exit = job
        .fails_with(
            exit_code::UNAVAILABLE,
            &[("DB_PASSWORD", "vault:kv/app/db#password")],
            &job.settings_with(&[("KEYHOLE_VAULT_ADDR", &addr)]),
        )
        .await;
    assert!(
        errors(&exit, 1)[0].contains(&format!(
            "Vault at {addr} is sealed; unseal it (vault operator unseal) and rerun the job"
        )),
        "{}",
        exit.stderr
    );
}

/// The fault "Vault sealed mid-job" of docs/reliability.md, on a Vault of the test's own: a job
/// holds dynamic Redis credentials whose lease lives 6 s unless renewed; Vault is sealed once
/// they are delivered. The files keep their bytes, the renewal fails with a warning naming the
/// lease and the sealed Vault while the job goes on, and at the job's end the revocation is
/// attempted, fails as sealed, and the broker exits 0 within [`END_DEADLINE`].
#[tokio::test]
async fn a_vault_sealed_mid_job_keeps_delivered_files_warns_on_renewal_and_bounds_revocation() {
    let job = Job::new("bfsealmid").await;
    let ns = job.ns.name.clone();
    let vault = OwnVault::start(&job.bed).await;
    configure_dynamic_secrets(&vault, &job.bed, &ns).await;
    let addr = vault.addr.clone();
    let (mut broker, stderr) = job
        .start_with(
            &[
                ("REDIS_USER", &format!("vault:{SHORT_LIVED}#username")),
                ("REDIS_PASSWORD", &format!("vault:{SHORT_LIVED}#password")),
            ],
            &job.settings_with(&[("KEYHOLE_VAULT_ADDR", &addr)]),
        )
        .await;
    let lease = lease_of(&stderr, "REDIS_PASSWORD");
    let read = |name: &str| std::fs::read(job.dirs.secrets.join(name)).unwrap();
    let delivered = [read("REDIS_USER"), read("REDIS_PASSWORD")];
    assert!(
        delivered.iter().all(|v| !v.is_empty()),
        "empty credentials delivered"
    );
    let _user = RedisUserRemoved {
        bed: job.bed.clone(),
        user: String::from_utf8(delivered[0].clone()).unwrap(),
    };

    vault.seal().await;
    let sealed = Instant::now();
    let failed = format!("keyhole-broker: warning: renewing lease {lease} failed: ");
    let stderr = broker
        .wait_for_stderr("a failed renewal", |s| s.contains(&failed))
        .await
        .unwrap();
    let warned = sealed.elapsed();
    let line = stderr.lines().find(|l| l.starts_with(&failed)).unwrap();
    assert!(
        line.contains(&format!("Vault at {addr} is sealed"))
            && line.contains(
                "the secrets from it (REDIS_PASSWORD, REDIS_USER) stop working when it ends"
            )
            && line.ends_with("the job goes on"),
        "{line}"
    );
    assert!(
        !line.contains("rerun the job"),
        "the job is running: {line}"
    );

    // The job goes on past the lease's end (6 s after it was issued), files and log alike.
    tokio::time::sleep(Duration::from_secs(3)).await;
    job.dirs.write_job_log("still running\n").unwrap();
    // Compared, never printed: they are credentials.
    assert!(
        [read("REDIS_USER"), read("REDIS_PASSWORD")] == delivered,
        "the delivered files changed"
    );

    let ended = Instant::now();
    let exit = broker.stop().await.unwrap();
    let took = ended.elapsed();
    eprintln!(
        "FIGURE vault-sealed-mid-job: renewal warning {:.1} s after the seal; broker exit {} ms after the job's end (revocation attempted, refused as sealed)",
        warned.as_secs_f64(),
        took.as_millis()
    );
    exit.assert_code(exit_code::OK);
    assert!(
        took < END_DEADLINE + Duration::from_secs(2),
        "the broker took {took:?} to end: {}",
        exit.stderr
    );
    assert!(exit.stdout.contains("still running"), "{}", exit.stdout);
    for attempt in [
        format!(
            "keyhole-broker: warning: revoking lease {lease}: Vault at {addr} is sealed; it expires at its TTL\n"
        ),
        format!(
            "keyhole-broker: warning: revoking the Vault token: Vault at {addr} is sealed; it and the leases it holds expire at their TTL\n"
        ),
    ] {
        exit.assert_stderr_has(&attempt);
    }
    assert!(
        !exit.stderr.contains("Vault token revoked"),
        "{}",
        exit.stderr
    );
    assert_eq!(job.dirs.secret_files().unwrap(), Vec::<String>::new());
    for value in &delivered {
        let value = String::from_utf8_lossy(value);
        assert!(
            !exit.stderr.contains(value.as_ref()) && !exit.stdout.contains(value.as_ref()),
            "a credential reached the broker's output"
        );
    }
}

#[tokio::test]
async fn permission_denied_missing_path_and_missing_field_fail_the_job_each_with_its_reason() {
    let job = Job::new("bfdeny").await;
    let ns = &job.ns.name;
    let exit = job
        .fails(
            exit_code::SECRETS_FAILED,
            &[
                ("DENIED", &format!("vault:kv/other-team-{ns}/db#password")),
                ("MISSING", &format!("vault:kv/{ns}/nope#password")),
                ("FIELD", &format!("vault:kv/{ns}/db#passwd")),
                ("FINE", &format!("vault:kv/{ns}/db#password")),
            ],
        )
        .await;
    // One line per failed reference, sorted by name; the readable one is not reported.
    let errors = errors(&exit, 3);
    assert!(
        errors[0].starts_with(&format!(
            "keyhole-broker: error: secret DENIED (vault:kv/other-team-{ns}/db#password): Vault denied read of kv/other-team-{ns}/db: "
        )) && errors[0].contains("permission denied")
            && errors[0].ends_with(
                "; check the Vault role's bound service account/claims and its policies"
            ),
        "{}",
        errors[0]
    );
    assert_eq!(
        errors[1],
        format!(
            "keyhole-broker: error: secret FIELD (vault:kv/{ns}/db#passwd): the secret at kv/{ns}/db has no field \"passwd\"; fields present: password, user"
        )
    );
    assert_eq!(
        errors[2],
        format!(
            "keyhole-broker: error: secret MISSING (vault:kv/{ns}/nope#password): Vault has nothing at kv/{ns}/nope; check the mount, path and version"
        )
    );
    exit.assert_stderr_has("Vault token revoked");
}

#[tokio::test]
async fn a_bad_reference_fails_before_anything_is_read() {
    let job = Job::new("bfref").await;
    let exit = job
        .fails(
            exit_code::SECRETS_FAILED,
            &[
                ("API_KEY", "vault:kv/team/api?version=0#key"),
                ("X", "vault:kv"),
            ],
        )
        .await;
    let errors = errors(&exit, 2);
    assert!(
        errors[0].contains(
            "secret API_KEY: the vault: reference has a version that is not a positive number; expected vault:"
        ),
        "{}",
        errors[0]
    );
    assert!(
        errors[1].contains("secret X: the vault: reference has no path after the mount"),
        "{}",
        errors[1]
    );
    assert!(
        !exit.stderr.contains("logging in to Vault"),
        "nothing is read: {}",
        exit.stderr
    );
}

#[tokio::test]
async fn an_address_off_the_allow_list_gets_no_request() {
    let job = Job::new("bfallow").await;
    // A listener of our own as the "Vault": any request would show up as a connection.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let addr = format!("http://{}", listener.local_addr().unwrap());
    let exit = job
        .fails_with(
            exit_code::BAD_INPUTS,
            &[("DB_PASSWORD", "vault:kv/app/db#password")],
            &job.settings_with(&[
                ("KEYHOLE_VAULT_ADDR", &addr),
                ("KEYHOLE_VAULT_ALLOWED", "https://vault.example.com:8200"),
            ]),
        )
        .await;
    assert!(
        errors(&exit, 1)[0].contains(&format!(
            "Vault at {addr} is not on the broker's allow-list; add it to vault.allowed_addresses"
        )),
        "{}",
        exit.stderr
    );
    match listener.accept() {
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
        other => panic!("the broker connected to an address off the allow-list: {other:?}"),
    }
}

#[tokio::test]
async fn a_kubernetes_secret_the_service_account_may_not_read_fails_the_job() {
    let job = Job::new("bfk8s").await;
    let ns = &job.ns.name;
    let exit = job
        .fails(
            exit_code::SECRETS_FAILED,
            &[
                ("STOLEN", "k8s:not-yours/token"),
                ("APP_TOKEN", "k8s:app-creds/token"),
            ],
        )
        .await;
    assert_eq!(
        exit.error_lines(),
        [format!(
            "keyhole-broker: error: secret STOLEN (k8s:not-yours/token): service account {ns}/job may not read secret not-yours in namespace {ns}; grant it get on that Secret (Role with resourceNames: [not-yours])"
        )]
    );
}

#[tokio::test]
async fn a_job_variable_named_like_a_secret_is_refused_naming_both() {
    let job = Job::new("bfclash").await;
    let ns = &job.ns.name;
    job.dirs
        .write_input("job/var.DB_PASSWORD", b"from-gitlab-0123456789")
        .unwrap();
    let exit = job
        .fails(
            exit_code::BAD_INPUTS,
            &[("DB_PASSWORD", &format!("vault:kv/{ns}/db#password"))],
        )
        .await;
    assert_eq!(
        exit.error_lines(),
        [format!(
            "keyhole-broker: error: job variable DB_PASSWORD (per-job Secret key \"var.DB_PASSWORD\") and secret DB_PASSWORD (vault:kv/{ns}/db#password) both define $DB_PASSWORD; rename the variable or the secret"
        )]
    );
    assert!(!exit.stderr.contains("from-gitlab-0123456789"));
}

/// The Kubernetes client is set up only when a `k8s:` reference needs it (its set-up costs
/// start-up time and memory): a Kubernetes setting that cannot work does not stop a job that
/// reads only Vault, and does stop one that reads a Secret, saying so.
#[tokio::test]
async fn the_kubernetes_client_is_set_up_only_for_kubernetes_references() {
    let job = Job::new("bfkube").await;
    let ns = &job.ns.name;
    let missing_ca = job.dirs.inputs.join("no-such-ca.crt");
    let settings =
        job.settings_with(&[("KEYHOLE_KUBE_CA_FILE", &missing_ca.display().to_string())]);

    let (broker, stderr) = job
        .start_with(
            &[("DB_PASSWORD", &format!("vault:kv/{ns}/db#password"))],
            &settings,
        )
        .await;
    assert!(
        stderr.contains("1 secret(s) and 0 job variable(s) delivered; ready"),
        "{stderr}"
    );
    job.ends_well(broker).await;

    let exit = job
        .fails_with(
            exit_code::BAD_INPUTS,
            &[
                ("DB_PASSWORD", &format!("vault:kv/{ns}/db#password")),
                ("APP_TOKEN", "k8s:app-creds/token"),
            ],
            &settings,
        )
        .await;
    let errors = errors(&exit, 1);
    assert!(errors[0].contains("the Kubernetes client"), "{}", errors[0]);
}

/// Issue 17 item 1: a job names Vault's own APIs (the broker's token through
/// `auth/token/lookup-self`, `sys/`, `cubbyhole/`, `identity/`) or an encoded path that the URL
/// parser would turn into `..`. Each fails the job with exit 64 and no file, before the broker
/// even logs in: Vault's audit device shows nothing of this job.
#[tokio::test]
async fn references_to_vaults_own_apis_fail_before_any_request() {
    let job = Job::new("bfapi").await;
    let cases = [
        (
            "T",
            "vault:auth/token/lookup-self?engine=kv-v1#id",
            "not a secrets engine",
        ),
        ("S", "vault:sys/mounts?engine=kv-v1", "not a secrets engine"),
        (
            "C",
            "vault:cubbyhole/x?engine=kv-v1#x",
            "not a secrets engine",
        ),
        (
            "I",
            "vault:identity/entity/name/x#x",
            "not a secrets engine",
        ),
        (
            "E",
            "vault:kv/%2e%2e/auth/token/lookup-self?engine=kv-v1#id",
            "'%'",
        ),
    ];
    for (name, reference, problem) in cases {
        let exit = job
            .fails(exit_code::SECRETS_FAILED, &[(name, reference)])
            .await;
        let errors = errors(&exit, 1);
        assert!(
            errors[0].contains(&format!("secret {name}")) && errors[0].contains(problem),
            "{reference}: {}",
            exit.stderr
        );
        assert!(
            !exit.stderr.contains("logging in to Vault"),
            "{reference}: {}",
            exit.stderr
        );
    }
    let calls = audited_calls_of_namespace(&job.bed.env.vault_audit_log, &job.ns.name).unwrap();
    assert_eq!(
        calls,
        Vec::<AuditedCall>::new(),
        "Vault saw this job's token"
    );
}

/// Issue 17 item 1: `engine=` is never taken on the job's word. A transit mount (an API, not a
/// secrets engine) read "as KV v1", and a KV v2 secret read "as KV v1", both fail after the
/// mount lookup and before any read, although the job's policy would allow the reads; the
/// audit device shows the login's token asked only for the mounts and revoked itself.
#[tokio::test]
async fn a_stated_engine_is_checked_against_the_mount_before_any_read() {
    let job = Job::new("bfeng").await;
    let ns = job.ns.name.clone();
    let vault = VaultAdmin::new(&job.bed.env);
    let transit = format!("transit-{ns}");
    vault
        .write(&format!("sys/mounts/{transit}"), json!({"type": "transit"}))
        .await
        .unwrap();
    vault
        .write(&format!("{transit}/keys/k"), json!({}))
        .await
        .unwrap();
    vault
        .grant_job_in_namespace(
            &ns,
            &[
                format!("kv/data/{ns}/*"),
                format!("kv/{ns}/*"),
                format!("{transit}/keys/*"),
            ],
        )
        .await
        .unwrap();
    let exit = job
        .fails(
            exit_code::SECRETS_FAILED,
            &[
                ("KEYS", &format!("vault:{transit}/keys/k?engine=kv-v1")),
                ("DB", &format!("vault:kv/{ns}/db?engine=kv-v1#password")),
            ],
        )
        .await;
    let errors = errors(&exit, 2);
    assert!(
        errors[0].contains("secret DB")
            && errors[0].contains("states engine=kv-v1 but Vault mount kv is kv-v2"),
        "{}",
        errors[0]
    );
    assert!(
        errors[1].contains("secret KEYS")
            && errors[1].contains(&format!("Vault mount {transit} is of type transit")),
        "{}",
        errors[1]
    );
    exit.assert_stderr_has("Vault token revoked");
    let calls = audited_calls_of_namespace(&job.bed.env.vault_audit_log, &ns).unwrap();
    let paths: std::collections::BTreeSet<&str> = calls
        .iter()
        .filter(|c| c.kind == "request")
        .map(|c| c.path.as_str())
        .collect();
    assert_eq!(
        paths,
        std::collections::BTreeSet::from([
            "auth/token/revoke-self",
            "sys/internal/ui/mounts/kv",
            format!("sys/internal/ui/mounts/{transit}").as_str(),
        ]),
        "{calls:?}"
    );
}

/// Issue 17 item 6: Vault over TLS signed by a private CA (the bed's). With the bundle the
/// broker reads the secret; without it the certificate is refused at once (not retried, a
/// settings error naming what to configure); an address off the allow-list is refused before
/// any request.
#[tokio::test]
async fn vault_over_tls_needs_its_ca_bundle_and_an_allowed_address() {
    let job = Job::new("bftls").await;
    let ns = job.ns.name.clone();
    let tls = job.bed.env.vault_tls_addr.clone();
    let ca = job.bed.env.vault_ca_file.display().to_string();
    let refs = [("DB_PASSWORD", format!("vault:kv/{ns}/db#password"))];
    let refs: Vec<(&str, &str)> = refs.iter().map(|(n, r)| (*n, r.as_str())).collect();

    let trusted = job.settings_with(&[
        ("KEYHOLE_VAULT_ADDR", &tls),
        ("KEYHOLE_VAULT_CA_FILE", &ca),
        ("KEYHOLE_VAULT_ALLOWED", &tls),
    ]);
    let (broker, _) = job.start_with(&refs, &trusted).await;
    assert_eq!(
        std::fs::read_to_string(job.dirs.secrets.join("DB_PASSWORD")).unwrap(),
        DB_PASSWORD
    );
    job.ends_well(broker)
        .await
        .assert_stderr_has("Vault token revoked");

    let exit = job
        .fails_with(
            exit_code::BAD_INPUTS,
            &refs,
            &job.settings_with(&[
                ("KEYHOLE_VAULT_ADDR", &tls),
                ("KEYHOLE_VAULT_DEADLINE", "30"),
            ]),
        )
        .await;
    let errors = errors(&exit, 1);
    assert!(
        errors[0].contains(&format!(
            "Vault at {tls} presented a certificate the broker does not trust"
        )) && errors[0].contains("vault_ca_config_map"),
        "{}",
        exit.stderr
    );

    let exit = job
        .fails_with(
            exit_code::BAD_INPUTS,
            &refs,
            &job.settings_with(&[
                ("KEYHOLE_VAULT_ADDR", &tls),
                ("KEYHOLE_VAULT_CA_FILE", &ca),
                ("KEYHOLE_VAULT_ALLOWED", &job.bed.env.vault_addr),
            ]),
        )
        .await;
    exit.assert_stderr_has(&format!("Vault at {tls} is not on the broker's allow-list"));
}
