use std::time::Duration;

use proptest::prelude::*;
use secrecy::{ExposeSecret, SecretString};

use super::*;
use crate::job::{GitCheckout, Project};

fn var(key: &str, value: &str, public: bool, masked: bool, file: bool, raw: bool) -> Variable {
    Variable {
        key: key.into(),
        value: SecretString::from(value.to_owned()),
        public,
        masked,
        file,
        raw,
    }
}

fn public(key: &str, value: &str) -> Variable {
    Variable::public(key, value)
}

fn expanded(value: &str, vars: &[Variable]) -> String {
    expand(value, vars).value.expose_secret().to_owned()
}

fn value_of<'j>(job: &'j Job, key: &str) -> Option<&'j Variable> {
    job.variables.iter().rev().find(|v| v.key == key)
}

fn text(v: &Variable) -> &str {
    v.value.expose_secret()
}

fn facts() -> RunnerFacts {
    RunnerFacts {
        builds_dir: "/builds".into(),
        environment: vec![("HTTP_PROXY".into(), "http://proxy:3128".into())],
        short_token: Some("abcdefghi".into()),
        version: "0.1.0".into(),
        revision: "unknown".into(),
        executable_arch: "linux/amd64".into(),
    }
}

fn job(variables: Vec<Variable>) -> Job {
    Job {
        id: 9,
        name: "job".into(),
        stage: "test".into(),
        project: Project {
            id: 7,
            path: Some("acme/app".into()),
        },
        git: GitCheckout::default(),
        image: None,
        services: vec![],
        variables,
        before_script: vec![],
        script: vec!["true".into()],
        after_script: vec![],
        timeout: Some(Duration::from_secs(600)),
        gitlab_secrets: None,
        token: None,
        id_tokens: vec![],
        registry_credentials: Vec::new(),
        transfers: Default::default(),
    }
}

/// Go's `os.Expand` with gitlab-runner's lookup, case by case.
#[test]
fn expands_like_gitlab_runner() {
    let vars = [
        public("A", "a"),
        public("Ab", "ab"),
        public("B", "$A"),
        var("F", "file body", false, false, true, false),
        public("E", ""),
    ];
    for (input, want) in [
        ("$A", "a"),
        ("${A}", "a"),
        ("${A}b", "ab"),
        ("$Ab", "ab"),
        ("x$A.y", "xa.y"),
        ("$$", "$"),
        ("$$A", "$A"),
        ("$$$A", "$a"),
        ("${$}", "$"),
        ("$", "$"),
        ("x$", "x$"),
        ("$NOPE", ""),
        ("${NOPE}", ""),
        ("<$E>", "<>"),
        ("$1", ""),
        ("${1}", ""),
        ("$?x", "x"),
        ("$#", ""),
        ("$*", ""),
        ("$-x", "x"),
        ("${A:-default}", ""),
        ("${}x", "x"),
        ("${A", "A"),
        ("a ${ b", "a  b"),
        ("$(date)", "$(date)"),
        ("$ A", "$ A"),
        ("$/", "$/"),
        ("é$A€", "éa€"),
        ("$é", "$é"),
        ("${é}", ""),
        // One pass: B's value is taken as it is, not expanded again.
        ("$B", "$A"),
        // A file variable stands for the path of its file.
        ("cat $F", "cat /keyhole/secrets/F"),
    ] {
        assert_eq!(expanded(input, &vars), want, "{input:?}");
    }
}

#[test]
fn the_last_variable_of_a_name_wins() {
    let vars = [public("A", "first"), public("A", "second")];
    assert_eq!(expanded("$A", &vars), "second");
}

#[test]
fn raw_variables_stay_and_others_expand_against_the_unexpanded_values() {
    let vars = [
        public("A", "a"),
        var("RAW", "$A-${A}-$$", true, false, false, true),
        public("REF_RAW", "<$RAW>"),
        public("SELF", "x$SELF"),
        var("FILE", "file-$A-$$", false, false, true, false),
    ];
    let out = expand_variables(&vars).unwrap();
    let get = |k: &str| {
        out.iter()
            .find(|v| v.key == k)
            .map(text)
            .unwrap()
            .to_owned()
    };
    assert_eq!(get("RAW"), "$A-${A}-$$");
    assert_eq!(get("REF_RAW"), "<$A-${A}-$$>");
    assert_eq!(get("SELF"), "xx$SELF");
    assert_eq!(get("FILE"), "file-a-$");
    let flags: Vec<(bool, bool, bool, bool)> = out
        .iter()
        .map(|v| (v.public, v.masked, v.file, v.raw))
        .collect();
    let before: Vec<(bool, bool, bool, bool)> = vars
        .iter()
        .map(|v| (v.public, v.masked, v.file, v.raw))
        .collect();
    assert_eq!(flags, before, "expansion alone changes no flag");
}

#[test]
fn a_public_variable_taking_in_a_secret_value_leaves_the_pod_spec() {
    let vars = [
        var("TOKEN", "token-value-123", false, true, false, false),
        var("HOST", "db.internal", false, false, false, false),
        var("CERT", "pem", false, true, true, false),
        public("URL", "https://user:$TOKEN@host"),
        public("DSN", "postgres://$HOST/app"),
        public("CERT_PATH", "$CERT"),
        public("PLAIN", "$CI_NOTHING and $$TOKEN"),
    ];
    let out = expand_variables(&vars).unwrap();
    let get = |k: &str| out.iter().find(|v| v.key == k).unwrap();
    assert!(!get("URL").public, "a masked value inside");
    assert!(!get("DSN").public, "a non-public value inside");
    assert_eq!(text(get("DSN")), "postgres://db.internal/app");
    // A file variable gives its path, which is no secret.
    assert!(get("CERT_PATH").public);
    assert_eq!(text(get("CERT_PATH")), "/keyhole/secrets/CERT");
    // `$$TOKEN` is text, not a reference.
    assert!(get("PLAIN").public);
    assert_eq!(text(get("PLAIN")), " and $TOKEN");
}

#[test]
fn a_secret_reference_may_not_take_in_a_masked_value() {
    let ok = format!("{KEYHOLE_VARIABLE_PREFIX}OK");
    let bad_name = format!("{KEYHOLE_VARIABLE_PREFIX}BAD");
    let vars = [
        var("DB_ROLE", "secret-role-name", false, true, false, false),
        public("ENVIRONMENT", "prod"),
        public(&ok, "vault:kv/$ENVIRONMENT/db#password"),
    ];
    let out = expand_variables(&vars).unwrap();
    assert_eq!(text(&out[2]), "vault:kv/prod/db#password");
    let mut bad = vars.to_vec();
    bad.push(public(&bad_name, "vault:kv/$DB_ROLE#password"));
    let err = expand_variables(&bad).unwrap_err().to_string();
    assert!(err.contains(&bad_name) && err.contains("DB_ROLE"), "{err}");
    assert!(!err.contains("secret-role-name"), "{err}");
}

#[test]
fn the_runner_adds_its_variables_around_the_jobs_own() {
    let mut j = job(vec![
        public("CI_JOB_ID", "9"),
        public("CI_SERVER", "overridden by the job"),
        public("CI_RUNNER_VERSION", "the job cannot change this"),
        public("WHERE", "$CI_PROJECT_DIR/out via $HTTP_PROXY"),
    ]);
    j.image = Some(Image {
        name: "alpine:$CI_JOB_ID".into(),
        ..Image::default()
    });
    let done = complete_job(&j, &facts()).unwrap();
    let get = |k: &str| value_of(&done, k).map(text).unwrap_or("<unset>").to_owned();
    assert_eq!(get("CI_BUILDS_DIR"), "/builds");
    assert_eq!(get("CI_PROJECT_DIR"), "/builds/acme/app");
    assert_eq!(get("CI_SERVER"), "overridden by the job");
    assert_eq!(get("CI_RUNNER_VERSION"), "0.1.0");
    assert_eq!(get("CI_RUNNER_REVISION"), "unknown");
    assert_eq!(get("CI_RUNNER_EXECUTABLE_ARCH"), "linux/amd64");
    assert_eq!(get("CI_RUNNER_SHORT_TOKEN"), "abcdefghi");
    assert_eq!(get("CI_DISPOSABLE_ENVIRONMENT"), "true");
    assert_eq!(get("CI_JOB_STATUS"), "running");
    assert_eq!(get("CI_JOB_TIMEOUT"), "600");
    assert_eq!(get("CI_JOB_IMAGE"), "alpine:9");
    assert_eq!(get("HTTP_PROXY"), "http://proxy:3128");
    assert_eq!(get("WHERE"), "/builds/acme/app/out via http://proxy:3128");
    assert_eq!(done.image.unwrap().name, "alpine:9");
    assert!(done.variables.iter().all(|v| !v.masked && v.public));
    // The job's own variables keep their order and their names' case.
    let keys: Vec<&str> = done.variables.iter().map(|v| v.key.as_str()).collect();
    let job_part: Vec<&str> = keys
        .iter()
        .copied()
        .skip_while(|k| *k != "CI_JOB_ID")
        .take(4)
        .collect();
    assert_eq!(
        job_part,
        ["CI_JOB_ID", "CI_SERVER", "CI_RUNNER_VERSION", "WHERE"]
    );
}

#[test]
fn exec_jobs_keep_their_project_dir_and_get_no_short_token() {
    let j = job(vec![public("CI_PROJECT_DIR", "/builds/local/project")]);
    let done = complete_job(
        &j,
        &RunnerFacts {
            short_token: None,
            ..facts()
        },
    )
    .unwrap();
    assert_eq!(
        value_of(&done, "CI_PROJECT_DIR").map(text),
        Some("/builds/local/project")
    );
    assert!(value_of(&done, "CI_RUNNER_SHORT_TOKEN").is_none());
    let mut no_path = job(vec![]);
    no_path.project.path = None;
    assert_eq!(project_dir(&no_path, "/builds/"), "/builds/project-7");
}

#[test]
fn image_and_service_fields_expand() {
    let mut j = job(vec![
        public("REGISTRY", "registry.example/acme"),
        var("TAG", "1.2", false, false, false, false),
        public("POLICY", "if-not-present"),
        public("ALIASES", "db,pg cache"),
        public("PORT", "5432"),
    ]);
    j.image = Some(Image {
        name: "$REGISTRY/app:$TAG".into(),
        entrypoint: Some(vec!["/bin/$SHELL_NAME".into(), "-c".into()]),
        pull_policy: vec!["$POLICY".into()],
        user: Some("$PORT:${PORT}".into()),
    });
    j.services = vec![Service {
        image: Image {
            name: "${REGISTRY}/postgres:16".into(),
            entrypoint: Some(vec!["docker-entrypoint.sh".into()]),
            pull_policy: vec![],
            user: None,
        },
        ports: vec![5432],
        aliases: vec!["$ALIASES".into(), "main".into()],
        command: Some(vec!["postgres".into(), "-p".into(), "$PORT".into()]),
        variables: vec![
            ("POSTGRES_DB".into(), "db-$PGPORT".into()),
            ("PGPORT".into(), "$PORT".into()),
        ],
    }];
    let done = complete_job(&j, &facts()).unwrap();
    let image = done.image.unwrap();
    // A non-public, unmasked variable may name the image (it has to be in the pod spec).
    assert_eq!(image.name, "registry.example/acme/app:1.2");
    assert_eq!(image.entrypoint.unwrap(), ["/bin/", "-c"]);
    assert_eq!(image.pull_policy, ["if-not-present"]);
    assert_eq!(image.user.as_deref(), Some("5432:5432"));
    let s = &done.services[0];
    assert_eq!(s.ports, [5432]);
    assert_eq!(s.image.name, "registry.example/acme/postgres:16");
    assert_eq!(s.aliases, ["db", "pg", "cache", "main"]);
    assert_eq!(s.command.as_deref().unwrap(), ["postgres", "-p", "5432"]);
    // Service variables see the job's and their own (unexpanded, one pass).
    assert_eq!(
        s.variables,
        [
            ("POSTGRES_DB".to_owned(), "db-$PORT".to_owned()),
            ("PGPORT".to_owned(), "5432".to_owned())
        ]
    );
}

#[test]
fn a_masked_variable_may_not_reach_an_image_or_service_field() {
    let secret = "masked-value-4711";
    let masked = var("PASSWORD", secret, false, true, false, false);
    let with_image = |name: &str| {
        let mut j = job(vec![masked.clone()]);
        j.image = Some(Image {
            name: name.into(),
            ..Image::default()
        });
        j
    };
    let err = complete_job(&with_image("app:$PASSWORD"), &facts()).unwrap_err();
    assert_eq!(
        err,
        ExpandError::MaskedInPodSpec {
            field: "image name".into(),
            variable: "PASSWORD".into()
        }
    );
    assert!(!err.to_string().contains(secret));
    // Escaped, it is text.
    let done = complete_job(&with_image("app:$$PASSWORD"), &facts()).unwrap();
    assert_eq!(done.image.unwrap().name, "app:$PASSWORD");
    let mut j = job(vec![masked]);
    j.services = vec![Service {
        image: Image {
            name: "redis".into(),
            ..Image::default()
        },
        variables: vec![("REDIS_PASSWORD".into(), "$PASSWORD".into())],
        ..Service::default()
    }];
    let err = complete_job(&j, &facts()).unwrap_err().to_string();
    assert!(
        err.contains("services[0] variable REDIS_PASSWORD") && err.contains("PASSWORD"),
        "{err}"
    );
    assert!(!err.contains(secret), "{err}");
}

#[test]
fn no_value_reaches_debug_output() {
    let mut j = job(vec![
        var("TOKEN", "debug-secret-0042", false, true, false, false),
        public("URL", "https://$TOKEN@host"),
    ]);
    j.token = Some(SecretString::from("glcbt-token-0042".to_owned()));
    let done = complete_job(&j, &facts()).unwrap();
    let debug = format!("{done:?}");
    assert!(!debug.contains("debug-secret-0042"), "{debug}");
    assert!(!debug.contains("glcbt-token-0042"), "{debug}");
}

#[test]
fn short_tokens_like_gitlab_runner() {
    for (token, want) in [
        ("glrt-t1_abcdefghijklmnop", "abcdefghi"),
        ("glrt-abcdefghijklmnop", "abcdefghi"),
        ("t2_abcdefghijk", "abcdefghi"),
        ("glrtr-abcdefghijk", "abcdefghi"),
        ("glcbt-abcdefghijk", "abcdefghi"),
        ("GR1348941abcdefghijk", "abcdefghi"),
        ("GRzzzzzzzabcdefghijk", "GRzzzzzzz"),
        ("short", "short"),
        ("", ""),
    ] {
        assert_eq!(short_token(token), want, "{token}");
    }
}

#[test]
fn booleans_like_gitlab_runner() {
    for yes in ["true", "TRUE", "True", "tRuE", "t", "T", "1", "+1", "01"] {
        assert!(go_bool(yes), "{yes}");
    }
    for no in ["false", "0", "", "yes", "on", "2", "-1", " true", "truee"] {
        assert!(!go_bool(no), "{no}");
    }
}

#[test]
fn debug_trace_follows_the_last_value_of_any_visibility() {
    let on = job(vec![
        public("CI_DEBUG_TRACE", "false"),
        var("CI_DEBUG_TRACE", "true", false, false, false, false),
    ]);
    assert!(on.debug_trace());
    assert!(!job(vec![public("CI_DEBUG_TRACE", "no")]).debug_trace());
    assert!(!job(vec![]).debug_trace());
}

#[test]
fn platforms_in_gos_spelling() {
    assert_eq!(go_platform("linux", "x86_64"), "linux/amd64");
    assert_eq!(go_platform("linux", "aarch64"), "linux/arm64");
    assert_eq!(go_platform("linux", "s390x"), "linux/s390x");
}

fn any_var() -> impl Strategy<Value = Variable> {
    (
        "[A-Z]{1,3}",
        "[a-z$A-Z{}()]{0,12}",
        any::<bool>(),
        any::<bool>(),
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(|(k, v, public, masked, file, raw)| var(&k, &v, public, masked, file, raw))
}

proptest! {
    /// A raw variable is never changed, whatever it holds and whatever else there is.
    #[test]
    fn raw_values_never_change(
        value in any::<String>(),
        others in proptest::collection::vec(any_var(), 0..6),
    ) {
        let mut vars = others;
        vars.push(var("RAW", &value, true, false, false, true));
        let out = expand_variables(&vars).unwrap_or_default();
        // The last `RAW` is this one: `others` may hold a non-raw variable of that name too.
        if let Some(raw) = out.iter().rev().find(|v| v.key == "RAW") {
            prop_assert_eq!(text(raw), value.as_str());
        }
    }

    /// Any text with each `$` written `$$` comes back exactly: the escape works everywhere.
    #[test]
    fn escaped_dollars_come_back_as_written(
        value in any::<String>(),
        others in proptest::collection::vec(any_var(), 0..6),
    ) {
        prop_assert_eq!(expanded(&value.replace('$', "$$"), &others), value);
    }

    /// One pass: the result is at most the value with every reference (two bytes at least)
    /// replaced by the longest value or file path there is; self and mutual references
    /// cannot make it grow further.
    #[test]
    fn expansion_is_bounded(
        value in "[a-zA-Z${}]{0,40}",
        others in proptest::collection::vec(any_var(), 0..8),
    ) {
        let longest = others
            .iter()
            .map(|v| text(v).len().max(contract::SECRETS_DIR.len() + 1 + v.key.len()))
            .max()
            .unwrap_or(0)
            .max(1);
        let out = expanded(&value, &others);
        prop_assert!(out.len() <= value.len() + value.len() / 2 * longest);
    }

    /// Text without `$` is never touched.
    #[test]
    fn text_without_dollars_is_kept(
        value in "[^$]{0,60}",
        others in proptest::collection::vec(any_var(), 0..4),
    ) {
        prop_assert_eq!(expanded(&value, &others), value);
    }

    /// Only non-public and masked sources take a variable out of the pod spec.
    #[test]
    fn public_stays_public_unless_a_secret_is_taken_in(
        others in proptest::collection::vec(any_var(), 0..6),
        refs in proptest::collection::vec("[A-Z]{1,3}", 0..4),
    ) {
        let value: String = refs.iter().map(|r| format!("${{{r}}}")).collect();
        let mut vars = others.clone();
        vars.push(public("TARGET", &value));
        let out = expand_variables(&vars);
        prop_assume!(out.is_ok());
        let target = out.unwrap().pop().unwrap();
        let secret_source = refs.iter().any(|r| {
            others
                .iter()
                .rev()
                .find(|v| &v.key == r)
                .is_some_and(|v| !v.file && (!v.public || v.masked))
        });
        prop_assert_eq!(target.public, !secret_source);
    }
}
