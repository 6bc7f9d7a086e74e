//! Dynamic secrets through `keyhole-broker run` (a child process) against the bed's real Vault
//! database engine and Redis: the credentials work, their lease is renewed while the job runs
//! (seen on Vault's side), the token too when it would end first, and SIGTERM revokes the
//! lease (the Redis user is gone) and the token. Needs `scripts/testbed up` (with Redis) and a
//! built broker (`cargo build -p keyhole-broker`).

use keyhole_contract::exit_code;
use keyhole_tests::exposure::vault_tokens_of_namespace;
use keyhole_tests::{
    BrokerJob, JobNamespace, Redis, Reply, SilentServer, TestBed, VaultAdmin, VaultRole,
    eventually, lease_of,
};
use serde_json::json;

/// The bed's role: users live 6 s unless renewed, 60 s at most (`scripts/lib/up.sh`).
const CREDS: &str = "database/creds/short-lived";

/// A namespace whose ServiceAccount `job` logs in to Vault (kubernetes auth, role named after
/// the namespace) with a token of `token_ttl`, and may read the bed's Redis credentials and
/// `extra` (dynamic paths) and revoke its own leases.
async fn job(tag: &str, token_ttl: &str, extra: &[String]) -> BrokerJob {
    let role = VaultRole::new("job")
        .read(CREDS)
        .read_all(extra)
        .update("sys/leases/revoke")
        .token_ttl(token_ttl)
        .token_max_ttl("120s");
    BrokerJob::create(
        JobNamespace::builder(tag)
            .service_account("job")
            .vault_role(role),
    )
    .await
}

#[tokio::test]
async fn dynamic_credentials_work_are_renewed_and_are_revoked_at_sigterm() {
    // A token TTL (9 s) just over the lease's (6 s): the broker must renew both.
    let job = job("dyn", "9s", &[]).await;
    let (mut broker, stderr) = job
        .start(&[
            ("REDIS_USER", &format!("vault:{CREDS}#username")),
            ("REDIS_PASSWORD", &format!("vault:{CREDS}#password")),
        ])
        .await;

    // Two fields of one path: one read, one lease.
    assert_eq!(
        stderr
            .lines()
            .filter(|l| l.contains(&format!(
                "reading REDIS_PASSWORD, REDIS_USER from vault:{CREDS} (dynamic"
            )))
            .count(),
        1,
        "{stderr}"
    );
    let lease = lease_of(&stderr, "REDIS_USER");
    assert_eq!(lease_of(&stderr, "REDIS_PASSWORD"), lease, "{stderr}");
    assert!(lease.starts_with(&format!("{CREDS}/")), "{lease}");

    // The credentials work, together (they came from one read).
    let user = std::fs::read_to_string(job.dirs.secrets.join("REDIS_USER")).unwrap();
    let password = std::fs::read_to_string(job.dirs.secrets.join("REDIS_PASSWORD")).unwrap();
    let redis_addr = job
        .bed
        .env
        .redis
        .as_ref()
        .expect("the bed has Redis")
        .addr
        .clone();
    let mut as_job = Redis::connect(&redis_addr).await.unwrap();
    assert!(
        as_job.auth(&user, &password).await.unwrap(),
        "AUTH as {user}"
    );
    assert_eq!(
        as_job.command(&["PING"]).await.unwrap(),
        Reply::Simple("PONG".into())
    );
    let mut admin = Redis::admin(&job.bed.env).await.unwrap();
    assert!(admin.acl_users().await.unwrap().contains(&user));

    // Renewed during the job: Vault moves the lease's expiry forward.
    let first_expiry = job.vault.lease_expiry(&lease).await;
    let renewed = format!("lease {lease} renewed; ttl ");
    broker
        .wait_for_stderr("a lease renewal", |s| s.contains(&renewed))
        .await
        .unwrap();
    let later_expiry = job.vault.lease_expiry(&lease).await;
    assert!(
        later_expiry > first_expiry,
        "expire_time {first_expiry} -> {later_expiry}"
    );
    // The token (9 s) would end before the lease it keeps alive: renewed too.
    broker
        .wait_for_stderr("a token renewal", |s| {
            s.contains("Vault token renewed; ttl ")
        })
        .await
        .unwrap();
    // Still alive past the first 6 s TTL and the 9 s token TTL: the credentials still work.
    let renewed_twice = |s: &str| s.matches(&renewed).count() >= 3;
    broker
        .wait_for_stderr("three lease renewals", renewed_twice)
        .await
        .unwrap();
    let mut again = Redis::connect(&redis_addr).await.unwrap();
    assert!(again.auth(&user, &password).await.unwrap());

    let exit = broker.stop().await.unwrap();
    exit.assert_code(exit_code::OK);
    exit.assert_stderr_has(&format!("lease {lease} revoked"));
    exit.assert_stderr_has("Vault token revoked");
    for value in [&user, &password] {
        assert!(!exit.stderr.contains(value.as_str()), "{}", exit.stderr);
    }
    job.vault.assert_lease_gone(&lease).await;
    assert!(
        !admin.acl_users().await.unwrap().contains(&user),
        "the Redis user is gone"
    );
    let mut after = Redis::connect(&redis_addr).await.unwrap();
    assert!(!after.auth(&user, &password).await.unwrap());
    assert_eq!(job.dirs.secret_files().unwrap(), Vec::<String>::new());
}

#[tokio::test]
async fn a_failed_renewal_is_logged_and_the_job_goes_on() {
    let job = job("dynfail", "120s", &[]).await;
    let (mut broker, stderr) = job
        .start(&[("REDIS_PASSWORD", &format!("vault:{CREDS}#password"))])
        .await;
    let lease = lease_of(&stderr, "REDIS_PASSWORD");
    // Someone revokes the lease behind the broker's back: its next renewal must fail.
    job.vault
        .write("sys/leases/revoke", json!({"lease_id": lease}))
        .await
        .unwrap();
    let failed = format!("warning: renewing lease {lease} failed: ");
    let stderr = broker
        .wait_for_stderr("a failed renewal", |s| s.contains(&failed))
        .await
        .unwrap();
    let line = stderr.lines().find(|l| l.contains(&failed)).unwrap();
    assert!(
        line.contains("the secrets from it (REDIS_PASSWORD) stop working when it ends, in at most")
            && line.ends_with("the job goes on"),
        "{line}"
    );
    // The job goes on: its log is still relayed.
    job.dirs.write_job_log("still running\n").unwrap();
    let exit = broker.stop().await.unwrap();
    exit.assert_code(exit_code::OK);
    assert!(exit.stdout.contains("still running"), "{}", exit.stdout);
    assert_eq!(job.dirs.secret_files().unwrap(), Vec::<String>::new());
}

/// Issue 17 item 3: SIGTERM while the broker resolves (the pod deleted by a cancel or a
/// timeout). One read has issued a lease already, another is still pending in Vault. The
/// broker must stop at once, deliver nothing, and leave no token and no lease behind: the
/// lease it never got to see is revoked with the token it hangs on.
#[tokio::test]
async fn sigterm_during_resolution_revokes_what_was_issued_and_exits_at_once() {
    let silent = SilentServer::start().await.unwrap();
    let tag = "dynterm";
    let bed = TestBed::connect().await;
    let vault = VaultAdmin::new(&bed.env);
    // Per-test roles so that the leases counted are this test's alone.
    let (quick, stalled) = vault
        .quick_and_stalled_roles(&format!("{tag}-{}", std::process::id()), &silent)
        .await
        .unwrap();
    let job = job(tag, "60s", &[quick.clone(), stalled.clone()]).await;
    let mut broker = job.spawn(
        &[
            ("QUICK", &format!("vault:{quick}#password")),
            ("STALLED", &format!("vault:{stalled}#password")),
        ],
        &job.settings(),
    );
    broker
        .wait_for_stderr("the pending read", |s| {
            s.contains(&format!("reading STALLED from vault:{stalled}"))
        })
        .await
        .unwrap();
    // The quick read has issued its lease; the broker has not collected it yet.
    let issued = eventually(
        std::time::Duration::from_secs(30),
        std::time::Duration::from_millis(100),
        async || {
            let leases = vault.leases_under(&format!("{quick}/")).await;
            (!leases.is_empty()).then_some(leases)
        },
    )
    .await
    .expect("the quick read issued no lease");
    assert_eq!(issued.len(), 1, "{issued:?}");

    let signalled = std::time::Instant::now();
    let exit = broker.stop().await.unwrap();
    let took = signalled.elapsed();
    println!(
        "figure: broker exit after SIGTERM during resolution: {} ms",
        took.as_millis()
    );
    exit.assert_code(exit_code::TERMINATED);
    exit.assert_stderr_has("terminated during resolution");
    exit.assert_stderr_has("Vault token revoked");
    assert!(!exit.stderr.contains("delivered; ready"), "{}", exit.stderr);
    // Well inside any grace period (the kubelet's SIGKILL comes after 30 s or more): the broker
    // did not wait for the pending read.
    assert!(
        took < std::time::Duration::from_secs(15),
        "the broker took {took:?} to stop: {}",
        exit.stderr
    );
    assert_eq!(job.dirs.secret_files().unwrap(), Vec::<String>::new());
    let tokens = vault_tokens_of_namespace(&vault, &job.ns.name)
        .await
        .unwrap();
    assert!(tokens.is_empty(), "tokens of the job left: {tokens:?}");
    assert_eq!(
        vault.leases_under(&format!("{quick}/")).await,
        Vec::<String>::new(),
        "the lease issued during resolution is gone with the token"
    );
    drop(silent);
}
