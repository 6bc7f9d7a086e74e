//! Representative jobs, shared by the pod snapshot tests (pure) and the test that creates
//! every snapshot pod on a real apiserver in a `restricted` namespace, so a snapshot is never a
//! pod Kubernetes would refuse.

use std::time::Duration;

use keyhole_contract::reference::KEYHOLE_VARIABLE_PREFIX;
use secrecy::SecretString;

use crate::config::RunnerConfig;
use crate::job::{GitCheckout, Image, Job, Project, Service, Variable};

/// Values the samples carry that must never appear in a pod spec.
pub const SAMPLE_SECRET_VALUES: &[&str] = &[
    "glcbt-64_SAMPLEjobtoken0001",
    "masked-variable-value-77",
    "eyJhbGciOiJSUzI1NiJ9.SAMPLE.idtoken",
    "-----BEGIN SAMPLE FILE VARIABLE-----",
];

fn secret_var(key: &str, value: &str, file: bool) -> Variable {
    Variable {
        key: key.into(),
        value: SecretString::from(value.to_string()),
        public: false,
        masked: true,
        file,
        raw: false,
    }
}

fn base(id: u64, name: &str) -> Job {
    Job {
        id,
        name: name.into(),
        stage: "test".into(),
        project: Project {
            id: 42,
            path: Some("acme/app".into()),
        },
        git: GitCheckout::default(),
        image: None,
        services: vec![],
        variables: vec![
            Variable::public("CI", "true"),
            Variable::public("CI_JOB_NAME", name),
        ],
        before_script: vec![],
        script: vec!["echo hello".into()],
        after_script: vec![],
        timeout: None,
        gitlab_secrets: None,
        token: None,
        id_tokens: Vec::new(),
        registry_credentials: Vec::new(),
        transfers: Default::default(),
    }
}

/// A runner config for the samples, in namespace `ns` with Vault at `vault_addr`.
pub fn sample_runner(ns: &str, vault_addr: &str, broker_image: &str) -> RunnerConfig {
    let mut r = RunnerConfig::default();
    r.kubernetes.namespace = ns.into();
    r.kubernetes.cpu_request = Some("100m".into());
    r.kubernetes.memory_limit = Some("256Mi".into());
    r.kubernetes.memory_limit_overwrite_max_allowed = Some("1Gi".into());
    r.keyhole.vault_addr = Some(vault_addr.into());
    r.keyhole.broker_image = broker_image.into();
    r
}

/// `(name, job)` pairs: no secrets; Keyhole references with masked and file variables, a
/// service and a resource override; GitLab `secrets:` with JWT auth.
pub fn sample_jobs(vault_addr: &str) -> Vec<(&'static str, Job)> {
    let hello = base(1001, "hello");

    let mut refs = base(1002, "vault-and-k8s");
    refs.image = Some(Image {
        name: "keyhole.local/busybox:1".into(),
        entrypoint: None,
        pull_policy: vec!["if-not-present".into()],
        user: None,
    });
    refs.before_script = vec!["echo preparing".into()];
    refs.script = vec![
        "cat \"$DB_PASSWORD\" | wc -c".into(),
        "test -n \"$API_KEY\"".into(),
    ];
    refs.after_script = vec!["echo done".into()];
    refs.timeout = Some(Duration::from_secs(600));
    refs.services = vec![Service {
        image: Image {
            name: "keyhole.local/busybox:1".into(),
            ..Image::default()
        },
        aliases: vec!["cache".into()],
        command: Some(vec!["sleep".into(), "3600".into()]),
        variables: vec![("MODE".into(), "test".into())],
        ports: vec![],
    }];
    refs.variables.extend([
        Variable::public(
            format!("{KEYHOLE_VARIABLE_PREFIX}DB_PASSWORD"),
            "vault:kv/acme/db#password",
        ),
        Variable::public(
            format!("{KEYHOLE_VARIABLE_PREFIX}API_KEY"),
            "k8s:api-credentials/key?file=false",
        ),
        Variable::public("KUBERNETES_MEMORY_LIMIT", "512Mi"),
        secret_var("MASKED_VAR", "masked-variable-value-77", false),
        secret_var("CONFIG_FILE", "-----BEGIN SAMPLE FILE VARIABLE-----", true),
    ]);
    refs.token = Some(SecretString::from("glcbt-64_SAMPLEjobtoken0001"));

    let mut gitlab = base(1003, "gitlab-secrets");
    gitlab.git = GitCheckout {
        repo_url: Some("https://gitlab.example.com/acme/app.git".into()),
        sha: "2a3b4c5d6e7f80912a3b4c5d6e7f80912a3b4c5d".into(),
        ref_name: "main".into(),
        ref_is_tag: false,
        protected: true,
        refspecs: vec!["+refs/heads/main:refs/remotes/origin/main".into()],
        depth: Some(20),
        strategy: crate::job::GitStrategy::Fetch,
    };
    gitlab.variables.push(secret_var(
        "VAULT_ID_TOKEN",
        "eyJhbGciOiJSUzI1NiJ9.SAMPLE.idtoken",
        false,
    ));
    gitlab.token = Some(SecretString::from("glcbt-64_SAMPLEjobtoken0001"));
    gitlab.gitlab_secrets = Some(serde_json::json!({
        "DATABASE_PASSWORD": {
            "vault": {
                "server": {"url": vault_addr, "namespace": null,
                           "auth": {"name": "jwt", "path": "jwt", "data": {"jwt": "$VAULT_ID_TOKEN", "role": "acme-deploy"}}},
                "engine": {"name": "kv-v2", "path": "kv"},
                "path": "acme/db", "field": "password"
            },
            "file": true
        }
    }));
    vec![
        ("hello", hello),
        ("vault_and_k8s", refs),
        ("gitlab_secrets", gitlab),
    ]
}
