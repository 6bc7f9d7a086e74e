use std::time::Duration;

use proptest::prelude::*;
use secrecy::ExposeSecret;
use serde_json::{Value, json};

use super::*;

const EXAMPLE: &str = include_str!("../fixtures/job-response-example.json");
const VAULT_EXAMPLE: &str = include_str!("../fixtures/job-response-vault-example.json");
const EXAMPLE_TOKEN: &str = "glcbt-64_EXAMPLEjobtokenvalue0000";

fn example() -> Value {
    serde_json::from_str(EXAMPLE).unwrap()
}

fn parse(v: &Value) -> Result<JobPayload, PayloadError> {
    job_from_payload(&serde_json::to_vec(v).unwrap())
}

fn error_of(v: &Value) -> PayloadError {
    parse(v).expect_err("the payload should be rejected")
}

#[test]
fn example_payload_becomes_a_job() {
    let JobPayload { job, features } = job_from_payload(EXAMPLE.as_bytes()).unwrap();
    assert_eq!(job.id, 4242);
    assert_eq!(job.token.as_ref().unwrap().expose_secret(), EXAMPLE_TOKEN);
    assert_eq!(
        (job.name.as_str(), job.stage.as_str()),
        ("unit-tests", "test")
    );
    assert_eq!(
        job.project,
        Project {
            id: 123,
            path: Some("acme/demo-app".into())
        }
    );
    assert_eq!(
        job.git,
        GitCheckout {
            repo_url: Some("https://gitlab.example.com/acme/demo-app.git".into()),
            sha: "1f2e3d4c5b6a79881f2e3d4c5b6a79881f2e3d4c".into(),
            ref_name: "main".into(),
            ref_is_tag: false,
            protected: true,
            refspecs: vec![
                "+refs/pipelines/9001:refs/pipelines/9001".into(),
                "+refs/heads/main:refs/remotes/origin/main".into(),
            ],
            depth: Some(20),
            strategy: GitStrategy::Fetch,
        }
    );
    assert!(job.before_script.is_empty());
    assert_eq!(job.script, ["make deps", "make test"]);
    assert_eq!(job.after_script, ["echo cleanup"]);
    assert_eq!(job.timeout, Some(Duration::from_secs(3600)));
    assert_eq!(
        job.image,
        Some(Image {
            name: "golang:1.22".into(),
            entrypoint: Some(vec!["/bin/sh".into(), "-c".into()]),
            pull_policy: vec!["if-not-present".into()],
            user: Some("1000:1000".into()),
        })
    );
    assert_eq!(
        job.services,
        [Service {
            image: Image {
                name: "postgres:16".into(),
                entrypoint: None,
                pull_policy: vec![],
                user: None,
            },
            aliases: vec!["db".into(), "postgres".into()],
            command: Some(vec!["postgres".into(), "-c".into(), "fsync=off".into()]),
            variables: vec![("POSTGRES_PASSWORD".into(), "test".into())],
            ports: vec![],
        }]
    );
    assert_eq!(job.gitlab_secrets, None);
    assert_eq!(job.variables.len(), 9);
    let db = job
        .variables
        .iter()
        .find(|v| v.key == "DATABASE_PASSWORD")
        .unwrap();
    assert_eq!(db.value.expose_secret(), "s3cr3t-Value-123");
    assert!(!db.public && db.masked && !db.file && !db.raw);
    let kubeconfig = job
        .variables
        .iter()
        .find(|v| v.key == "KUBECONFIG_FILE")
        .unwrap();
    assert!(kubeconfig.file && kubeconfig.raw && !kubeconfig.public);
    assert_eq!(job.public_variable("CI_JOB_ID"), Some("4242"));
    assert_eq!(features.token_mask_prefixes, ["glpat-", "glcbt-"]);
    assert!(
        features
            .failure_reasons
            .contains(&"image_pull_failure".to_owned())
    );
    assert!(features.trace_sections);
}

#[test]
fn vault_payload_keeps_the_secrets_object() {
    let JobPayload { job, features } = job_from_payload(VAULT_EXAMPLE.as_bytes()).unwrap();
    let raw: Value = serde_json::from_str(VAULT_EXAMPLE).unwrap();
    assert_eq!(job.id, 4243);
    assert_eq!(job.gitlab_secrets.as_ref(), Some(&raw["secrets"]));
    assert_eq!(
        job.gitlab_secrets.as_ref().unwrap()["DATABASE_PASSWORD"]["vault"]["engine"]["path"],
        "ops"
    );
    assert_eq!(job.image.unwrap().entrypoint, None);
    assert!(job.services.is_empty());
    assert!(job.after_script.is_empty());
    assert_eq!(job.script.len(), 1);
    assert_eq!(
        job.git.repo_url.as_deref(),
        Some("https://gitlab.example.com/acme/demo-app.git")
    );
    let id_token = job
        .variables
        .iter()
        .find(|v| v.key == "VAULT_ID_TOKEN")
        .unwrap();
    assert!(!id_token.public && id_token.masked);
    assert_eq!(
        features.failure_reasons,
        [
            "script_failure",
            "runner_system_failure",
            "job_execution_timeout"
        ]
    );
}

#[test]
fn debug_output_has_no_token_or_variable_values() {
    for fixture in [EXAMPLE, VAULT_EXAMPLE] {
        let payload = job_from_payload(fixture.as_bytes()).unwrap();
        let debug = format!("{payload:?}");
        let raw: Value = serde_json::from_str(fixture).unwrap();
        let token = raw["token"].as_str().unwrap();
        assert!(!debug.contains(token), "the job token leaked into Debug");
        // Public values may legitimately show elsewhere (CI_PIPELINE_ID in a refspec);
        // every other value must not show at all.
        for v in raw["variables"].as_array().unwrap() {
            if v["public"] == true {
                continue;
            }
            let value = v["value"].as_str().unwrap();
            assert!(
                !debug.contains(value),
                "the value of {} leaked into Debug",
                v["key"]
            );
        }
    }
}

#[test]
fn credentials_are_stripped_from_repo_urls() {
    assert_eq!(
        strip_credentials("https://gitlab-ci-token:abc@gitlab.example.com:8443/g/p.git").as_deref(),
        Some("https://gitlab.example.com:8443/g/p.git")
    );
    assert_eq!(
        strip_credentials("http://user@10.213.0.1:4000/g/p.git").as_deref(),
        Some("http://10.213.0.1:4000/g/p.git")
    );
    assert_eq!(
        strip_credentials("https://gitlab.example.com/g/p.git").as_deref(),
        Some("https://gitlab.example.com/g/p.git")
    );
    assert_eq!(strip_credentials("not a url"), None);
    assert_eq!(strip_credentials("mailto:someone@example.com"), None);
}

#[test]
fn a_missing_required_field_is_named() {
    for (pointer, field) in [
        ("/id", "id"),
        ("/token", "token"),
        ("/job_info", "job_info"),
        ("/job_info/name", "job_info.name"),
        ("/job_info/project_id", "job_info.project_id"),
        ("/git_info", "git_info"),
        ("/git_info/sha", "git_info.sha"),
        ("/git_info/ref", "git_info.ref"),
    ] {
        let mut v = example();
        let (parent, key) = pointer.rsplit_once('/').unwrap();
        v.pointer_mut(if parent.is_empty() { "" } else { parent })
            .unwrap()
            .as_object_mut()
            .unwrap()
            .remove(key);
        match error_of(&v) {
            PayloadError::Missing { field: f } => assert_eq!(f, field),
            other => panic!("removing {pointer}: expected Missing, got {other}"),
        }
    }
}

#[test]
fn project_path_never_comes_from_a_variable() {
    // A job can set CI_PROJECT_PATH itself (`variables:` in .gitlab-ci.yml); ServiceAccount
    // rules match on the project path, so only GitLab's job info may provide it.
    let mut v = example();
    v["job_info"]
        .as_object_mut()
        .unwrap()
        .remove("project_full_path");
    v["variables"].as_array_mut().unwrap().push(json!(
        {"key": "CI_PROJECT_PATH", "value": "acme/other", "public": true}
    ));
    let job = parse(&v)
        .expect("a payload without project_full_path is still a job")
        .job;
    assert_eq!(job.project.path, None);
    let mut v = example();
    v["variables"].as_array_mut().unwrap().push(json!(
        {"key": "CI_PROJECT_PATH", "value": "acme/other", "public": true}
    ));
    assert_eq!(
        parse(&v).unwrap().job.project.path.as_deref(),
        Some("acme/demo-app")
    );
}

#[test]
fn wrong_types_name_field_and_type_but_not_the_value() {
    let mut v = example();
    v["id"] = json!(EXAMPLE_TOKEN);
    let err = error_of(&v);
    assert!(
        matches!(&err, PayloadError::WrongType { field, found: "a string", .. } if field == "id")
    );
    assert!(!err.to_string().contains(EXAMPLE_TOKEN));

    let mut v = example();
    v["variables"][6]["value"] = json!(["s3cr3t-Value-123"]);
    let err = error_of(&v);
    assert!(matches!(&err, PayloadError::WrongType { field, .. } if field == "variables[6].value"));
    assert!(!err.to_string().contains("s3cr3t"));

    let mut v = example();
    v["steps"][0]["script"][1] = json!(7);
    assert!(matches!(
        error_of(&v),
        PayloadError::WrongType { field, .. } if field == "steps[0].script[1]"
    ));

    let mut v = example();
    v["id"] = json!(-1);
    assert!(matches!(error_of(&v), PayloadError::WrongType { field, .. } if field == "id"));
}

#[test]
fn invalid_repo_url_error_does_not_echo_it() {
    let mut v = example();
    v["git_info"]["repo_url"] = json!(format!("gitlab-ci-token:{EXAMPLE_TOKEN} not a url"));
    let err = error_of(&v);
    assert!(matches!(&err, PayloadError::Invalid { field, .. } if field == "git_info.repo_url"));
    assert!(!err.to_string().contains(EXAMPLE_TOKEN));
}

#[test]
fn syntax_errors_do_not_quote_the_input() {
    let broken = format!(r#"{{"id": 1, "token": "{EXAMPLE_TOKEN}", "x": tru"#);
    let err = job_from_payload(broken.as_bytes()).unwrap_err();
    assert!(matches!(err, PayloadError::Syntax { line: 1, .. }));
    assert!(!err.to_string().contains(EXAMPLE_TOKEN));
}

#[test]
fn unknown_fields_are_ignored_and_nulls_are_absent() {
    let mut v = example();
    v["brand_new_field"] = json!({"anything": [1, 2]});
    v["job_info"]["another"] = json!(true);
    v["image"] = Value::Null;
    v["services"] = Value::Null;
    v["secrets"] = Value::Null;
    v["git_info"]["protected"] = Value::Null;
    let job = parse(&v).unwrap().job;
    assert_eq!(job.image, None);
    assert!(job.services.is_empty());
    assert!(!job.git.protected);
}

#[test]
fn git_variables_set_strategy_and_depth() {
    let with = |vars: &[(&str, &str)]| {
        let mut v = example();
        for (k, val) in vars {
            v["variables"]
                .as_array_mut()
                .unwrap()
                .push(json!({"key": k, "value": val, "public": true}));
        }
        parse(&v)
    };
    let git = with(&[("GIT_STRATEGY", "clone"), ("GIT_DEPTH", "3")])
        .unwrap()
        .job
        .git;
    assert_eq!((git.strategy, git.depth), (GitStrategy::Clone, Some(3)));
    let git = with(&[("GIT_STRATEGY", "none")]).unwrap().job.git;
    assert_eq!((git.strategy, git.depth), (GitStrategy::None, Some(20)));
    assert_eq!(
        with(&[("GIT_STRATEGY", "empty")]).unwrap().job.git.strategy,
        GitStrategy::None
    );
    // Later variables win, as in GitLab.
    let git = with(&[("GIT_DEPTH", "5"), ("GIT_DEPTH", "0")])
        .unwrap()
        .job
        .git;
    assert_eq!(git.depth, Some(0));
    assert!(matches!(
        with(&[("GIT_STRATEGY", "rsync")]).unwrap_err(),
        PayloadError::Invalid { field, .. } if field == "variables.GIT_STRATEGY"
    ));
    assert!(matches!(
        with(&[("GIT_DEPTH", "deep")]).unwrap_err(),
        PayloadError::Invalid { field, .. } if field == "variables.GIT_DEPTH"
    ));
}

#[test]
fn tags_and_unknown_ref_types() {
    let mut v = example();
    v["git_info"]["ref_type"] = json!("tag");
    assert!(parse(&v).unwrap().job.git.ref_is_tag);
    v["git_info"]["ref_type"] = json!("merge_request");
    assert!(matches!(
        error_of(&v),
        PayloadError::Invalid { field, .. } if field == "git_info.ref_type"
    ));
}

#[test]
fn timeout_comes_from_the_step_then_the_runner_info() {
    let mut v = example();
    v["steps"][0]["timeout"] = json!(0);
    v["runner_info"]["timeout"] = json!(600);
    assert_eq!(
        parse(&v).unwrap().job.timeout,
        Some(Duration::from_secs(600))
    );
    v["runner_info"]["timeout"] = json!(0);
    assert_eq!(parse(&v).unwrap().job.timeout, None);
}

#[test]
fn unsupported_steps_and_run_are_refused() {
    let mut v = example();
    v["steps"][1]["name"] = json!("release");
    assert!(matches!(
        error_of(&v),
        PayloadError::Unsupported { field, .. } if field == "steps[1].name"
    ));
    let mut v = example();
    v["run"] = json!("[{\"name\":\"x\"}]");
    assert!(matches!(error_of(&v), PayloadError::Unsupported { field, .. } if field == "run"));
}

#[test]
fn empty_image_name_means_default_image() {
    let mut v = example();
    v["image"] = json!({"name": ""});
    assert_eq!(parse(&v).unwrap().job.image, None);
    v["image"] = json!({"name": "alpine", "entrypoint": []});
    assert_eq!(
        parse(&v).unwrap().job.image.unwrap().entrypoint,
        Some(vec![])
    );
}

#[test]
fn aliases_split_on_commas_and_spaces() {
    assert_eq!(
        split_aliases("db,postgres  pg , x"),
        ["db", "postgres", "pg", "x"]
    );
    assert!(split_aliases(" , ").is_empty());
}

proptest! {
    /// Whatever the bytes, parsing returns (never panics) and a failure never quotes the
    /// payload's secret.
    #[test]
    fn arbitrary_input_never_panics_nor_leaks(cut in 0usize..EXAMPLE.len(), junk in ".{0,8}") {
        let mut text = EXAMPLE[..cut].to_owned();
        text.push_str(&junk);
        if let Err(e) = job_from_payload(text.as_bytes()) {
            prop_assert!(!e.to_string().contains(EXAMPLE_TOKEN));
        }
    }

    /// Any value in any variable or the token survives unchanged into the job and never
    /// shows in its Debug output.
    #[test]
    fn secret_values_round_trip_and_stay_hidden(value in "[a-zA-Z0-9]{12,40}") {
        let mut v = example();
        v["token"] = json!(value);
        v["variables"][6]["value"] = json!(value);
        let payload = parse(&v).unwrap();
        prop_assert_eq!(payload.job.token.as_ref().unwrap().expose_secret(), value.as_str());
        prop_assert_eq!(payload.job.variables[6].value.expose_secret(), value.as_str());
        let debug = format!("{payload:?}");
        prop_assert!(!debug.contains(&value));
    }
}

#[test]
fn executor_options_give_the_kubernetes_user_and_refuse_the_rest_by_name() {
    let mut v = example();
    v["image"]["executor_opts"] = json!({"kubernetes": {"user": 1001}});
    v["services"][0]["ports"] = json!([{"number": 5432, "protocol": "tcp"}, {"number": 9187}]);
    let job = parse(&v).unwrap().job;
    assert_eq!(job.image.unwrap().user.as_deref(), Some("1001"));
    assert_eq!(job.services[0].ports, [5432, 9187]);

    for (opts, field) in [
        (
            json!({"docker": {"platform": "arm64"}}),
            "image.executor_opts.docker",
        ),
        (
            json!({"kubernetes": {"user": "1000", "group": "x"}}),
            "image.executor_opts.kubernetes.group",
        ),
    ] {
        let mut v = example();
        v["image"]["executor_opts"] = opts;
        let err = error_of(&v).to_string();
        assert!(
            err.contains(field) && err.contains("does not support"),
            "{err}"
        );
    }
    let mut v = example();
    v["services"][0]["ports"] = json!([{"number": 70000}]);
    let err = error_of(&v).to_string();
    assert!(
        err.contains("services[0].ports[0].number") && err.contains("1 to 65535"),
        "{err}"
    );
}

#[test]
fn registry_credentials_are_read_and_other_types_skipped() {
    let mut v = example();
    v["credentials"] = json!([
        {"type": "registry", "url": "registry.gitlab.example.com", "username": "gitlab-ci-token", "password": "glcbt-registry-secret"},
        {"type": "future-kind", "url": "x", "username": "u", "password": "p"}
    ]);
    let job = parse(&v).unwrap().job;
    assert_eq!(job.registry_credentials.len(), 1);
    let c = &job.registry_credentials[0];
    assert_eq!(
        (
            c.registry.as_str(),
            c.username.as_str(),
            c.password.expose_secret()
        ),
        (
            "registry.gitlab.example.com",
            "gitlab-ci-token",
            "glcbt-registry-secret"
        )
    );
    assert!(!format!("{job:?} {c:?}").contains("glcbt-registry-secret"));
    v["credentials"] =
        json!([{"type": "registry", "url": "", "username": "u", "password": "hunter2"}]);
    let err = error_of(&v).to_string();
    assert!(
        err.contains("credentials[0].url") && !err.contains("hunter2"),
        "{err}"
    );
}
