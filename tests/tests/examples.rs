//! The examples run as written, so they cannot rot: the same set-up script and pod manifest
//! that `scripts/demo` uses, on the bed. Needs `scripts/testbed up` and the broker image.

use keyhole_tests::{TestBed, TestNamespace, bed_script, run};

#[tokio::test]
async fn broker_vault_example_delivers_and_masks_the_secret() {
    let bed = TestBed::connect().await;
    let ns = TestNamespace::create(&bed, "example", &[]).await.unwrap();
    let script = r#"
        examples/broker-vault/setup.sh
        sed -e "s|\${NAMESPACE}|$NAMESPACE|g" -e "s|\${VAULT_POD_ADDR}|$KEYHOLE_VAULT_POD_ADDR|g" \
          examples/broker-vault/pod.yaml | kubectl -n "$NAMESPACE" apply -f - >/dev/null
        kubectl -n "$NAMESPACE" wait pod/demo-job --for=jsonpath='{.status.phase}'=Succeeded --timeout=120s >/dev/null
        kubectl -n "$NAMESPACE" logs demo-job -c keyhole-broker
        vault kv get -mount=kv -field=password demo/db > "$SECRET_OUT"
    "#;
    let secret_out = std::env::temp_dir().join(format!("{}.secret", ns.name));
    let out = run(bed_script(&bed.env, script)
        .env("KEYHOLE_VAULT_POD_ADDR", &bed.env.vault_pod_addr)
        .env("NAMESPACE", &ns.name)
        .env("SECRET_OUT", &secret_out))
    .unwrap();
    let log = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "example failed: {}\n{log}",
        String::from_utf8_lossy(&out.stderr)
    );
    let secret = std::fs::read_to_string(&secret_out).unwrap();
    let _ = std::fs::remove_file(&secret_out);
    for line in [
        "password is [MASKED]",
        "-r--------",
        "tmpfs /keyhole/secrets tmpfs ro",
        "job done",
        "Vault token revoked",
    ] {
        assert!(log.contains(line), "missing {line:?}:\n{log}");
    }
    assert!(secret.trim().len() > 8);
    assert!(
        !log.contains(secret.trim()),
        "the secret reached the log:\n{log}"
    );
}
