//! Whole-file tests: YAML in, [`Job`] out, through every pass.

use std::{collections::BTreeMap, path::PathBuf, time::Duration};

use proptest::prelude::*;
use secrecy::ExposeSecret;

use super::*;
use crate::job::{GitStrategy, IdTokenRequest};

fn opts() -> LoadOptions {
    LoadOptions {
        project_dir: PathBuf::new(),
        ci_project_dir: "/builds/project".to_owned(),
        job_id: 7,
    }
}

fn pipeline(text: &str) -> Pipeline {
    parse_pipeline(text, "ci.yml", &NoIncludes).unwrap_or_else(|e| panic!("{e}"))
}

fn job(text: &str, name: &str) -> Job {
    pipeline(text)
        .job(name, &opts())
        .unwrap_or_else(|e| panic!("{e}"))
}

fn job_err(text: &str, name: &str) -> String {
    match parse_pipeline(text, "ci.yml", &NoIncludes).and_then(|p| p.job(name, &opts())) {
        Ok(job) => panic!("job {} was accepted", job.name),
        Err(e) => e.to_string(),
    }
}

fn var<'j>(job: &'j Job, key: &str) -> Option<&'j str> {
    job.public_variable(key)
}

fn memory(files: &[(&str, &str)]) -> MemoryFiles {
    MemoryFiles(
        files
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect::<BTreeMap<_, _>>(),
    )
}

#[test]
fn a_plain_job_gets_gitlabs_defaults_and_predefined_variables() {
    let j = job("build:\n  script: make\n", "build");
    assert_eq!(j.name, "build");
    assert_eq!(j.stage, "test");
    assert_eq!(j.id, 7);
    assert_eq!(j.script, ["make"]);
    assert!(j.image.is_none() && j.timeout.is_none() && j.token.is_none());
    assert_eq!(j.git.strategy, GitStrategy::None);
    for (key, value) in [
        ("CI", "true"),
        ("GITLAB_CI", "true"),
        ("CI_JOB_ID", "7"),
        ("CI_JOB_NAME", "build"),
        ("CI_JOB_NAME_SLUG", "build"),
        ("CI_JOB_STAGE", "test"),
        ("CI_PROJECT_DIR", "/builds/project"),
        ("CI_PIPELINE_SOURCE", "keyhole-exec"),
        ("CI_NODE_TOTAL", "1"),
    ] {
        assert_eq!(var(&j, key), Some(value), "{key}");
    }
    assert!(j.variables.iter().all(|v| v.public));
}

#[test]
fn anchors_and_merge_keys_build_jobs() {
    let text = "\
.common: &common
  image: alpine:3.20
  variables: &vars
    A: '1'
job:
  <<: *common
  variables:
    <<: *vars
    B: '2'
  script: [echo]
";
    let j = job(text, "job");
    assert_eq!(j.image.as_ref().unwrap().name, "alpine:3.20");
    assert_eq!((var(&j, "A"), var(&j, "B")), (Some("1"), Some("2")));
}

#[test]
fn references_in_scripts_are_flattened_and_nested_references_resolve() {
    let text = "\
.snippets:
  one: [echo one]
  two:
    - !reference [.snippets, one]
    - echo two
job:
  before_script: !reference [.snippets, one]
  script:
    - !reference [.snippets, two]
    - echo three
";
    let j = job(text, "job");
    assert_eq!(j.before_script, ["echo one"]);
    assert_eq!(j.script, ["echo one", "echo two", "echo three"]);
}

#[test]
fn references_see_the_configuration_after_extends() {
    let text = "\
.base: {script: [from-base]}
.child: {extends: .base}
job:
  script: !reference [.child, script]
";
    assert_eq!(job(text, "job").script, ["from-base"]);
}

#[test]
fn default_and_inherit() {
    let text = "\
default:
  image: ruby:3
  before_script: [bundle install]
  after_script: [cleanup]
  timeout: 30m
  services: [redis]
  id_tokens: {TOKEN: {aud: https://x}}
plain: {script: [a]}
own_image: {script: [a], image: alpine}
no_defaults: {script: [a], inherit: {default: false}}
some_defaults: {script: [a], inherit: {default: [image, timeout]}}
";
    let plain = job(text, "plain");
    assert_eq!(plain.image.as_ref().unwrap().name, "ruby:3");
    assert_eq!(plain.before_script, ["bundle install"]);
    assert_eq!(plain.after_script, ["cleanup"]);
    assert_eq!(plain.timeout, Some(Duration::from_secs(1800)));
    assert_eq!(plain.services[0].image.name, "redis");
    assert_eq!(
        plain.id_tokens,
        [IdTokenRequest {
            name: "TOKEN".into(),
            aud: vec!["https://x".into()]
        }]
    );
    assert_eq!(var(&plain, "CI_JOB_TIMEOUT"), Some("1800"));
    assert_eq!(var(&plain, "CI_JOB_IMAGE"), Some("ruby:3"));
    // A job's own key replaces the default whole.
    assert_eq!(job(text, "own_image").image.unwrap().name, "alpine");
    let none = job(text, "no_defaults");
    assert!(none.image.is_none() && none.before_script.is_empty() && none.timeout.is_none());
    assert!(none.id_tokens.is_empty());
    let some = job(text, "some_defaults");
    assert_eq!(some.image.unwrap().name, "ruby:3");
    assert_eq!(some.timeout, Some(Duration::from_secs(1800)));
    assert!(some.before_script.is_empty() && some.services.is_empty());
}

#[test]
fn top_level_defaults_work_and_clash_with_default() {
    let j = job(
        "image: alpine\nbefore_script: [x]\njob: {script: [a]}\n",
        "job",
    );
    assert_eq!(j.image.as_ref().unwrap().name, "alpine");
    assert_eq!(j.before_script, ["x"]);
    let err = job_err("image: a\ndefault: {image: b}\njob: {script: [a]}\n", "job");
    assert!(
        err.contains("image is defined in top-level and `default:` entry"),
        "{err}"
    );
    let err = job_err("default: {variables: {A: b}}\njob: {script: [a]}\n", "job");
    assert!(err.contains("top-level `variables:`"), "{err}");
    let err = job_err("default: {secrets: {}}\njob: {script: [a]}\n", "job");
    assert!(err.contains("`secrets:` belongs in each job"), "{err}");
    let err = job_err(
        "job: {script: [a], inherit: {default: [variables]}}\n",
        "job",
    );
    assert!(err.contains("not a default"), "{err}");
}

#[test]
fn variables_precedence_inherit_and_raw() {
    let text = "\
variables:
  A: global
  B: global
  RAW: {value: $HOME, expand: false}
job:
  variables: {B: job, CI_PROJECT_DIR: /custom}
  script: [a]
isolated:
  inherit: {variables: [A]}
  script: [a]
";
    let j = job(text, "job");
    assert_eq!(var(&j, "A"), Some("global"));
    assert_eq!(var(&j, "B"), Some("job"));
    // YAML variables come after predefined ones, so they win (GitLab's precedence).
    assert_eq!(var(&j, "CI_PROJECT_DIR"), Some("/custom"));
    let raw = j.variables.iter().find(|v| v.key == "RAW").unwrap();
    assert!(raw.raw && raw.value.expose_secret() == "$HOME");
    let isolated = job(text, "isolated");
    assert_eq!(var(&isolated, "A"), Some("global"));
    assert_eq!(var(&isolated, "B"), None);
    // Keyhole references are plain variables here; the runner extracts them later.
    let k = job(
        "job: {script: [a], variables: {KEYHOLE_SECRET_API: 'vault:kv/app#key'}}\n",
        "job",
    );
    let name = format!(
        "{}API",
        keyhole_contract::reference::KEYHOLE_VARIABLE_PREFIX
    );
    assert_eq!(var(&k, &name), Some("vault:kv/app#key"));
}

#[test]
fn git_settings_come_from_variables() {
    let j = job(
        "variables: {GIT_DEPTH: 3}\njob: {script: [a], variables: {GIT_STRATEGY: fetch}}\n",
        "job",
    );
    assert_eq!((j.git.strategy, j.git.depth), (GitStrategy::Fetch, Some(3)));
}

#[test]
fn timeouts_in_human_form() {
    let timeout = |t: &str| job(&format!("job: {{script: [a], timeout: {t}}}\n"), "job").timeout;
    assert_eq!(timeout("1h 30m"), Some(Duration::from_secs(5400)));
    assert_eq!(timeout("'3 hours'"), Some(Duration::from_secs(10_800)));
    assert_eq!(timeout("90 minutes"), Some(Duration::from_secs(5400)));
    assert_eq!(timeout("45s"), Some(Duration::from_secs(45)));
    let err = job_err("build:\n  script: [a]\n  timeout: ten minutes\n", "build");
    assert_eq!(
        err,
        "ci.yml:3:12: job \"build\": key \"timeout\": \"ten minutes\" is not a duration \
         (it has \"ten\", which is not a unit of time); use e.g. \"10m\" or \"1h 30m\""
    );
    let err = job_err("job: {script: [a], timeout: 3600}\n", "job");
    assert!(err.contains("\"3600s\""), "{err}");
    let err = job_err("job: {script: [a], timeout: 2 months}\n", "job");
    assert!(err.contains("longer than GitLab's limit"), "{err}");
}

#[test]
fn stages_are_checked() {
    let j = job(
        "stages: [lint, ship]\njob: {stage: ship, script: [a]}\n",
        "job",
    );
    assert_eq!(
        (j.stage.as_str(), var(&j, "CI_JOB_STAGE")),
        ("ship", Some("ship"))
    );
    assert_eq!(
        job("job: {stage: .pre, script: [a]}\n", "job").stage,
        ".pre"
    );
    let err = job_err("job: {stage: lint, script: [a]}\n", "job");
    assert!(
        err.contains("chosen stage \"lint\" does not exist; available stages are .pre, build, test, deploy, .post"),
        "{err}"
    );
}

#[test]
fn hidden_trigger_unknown_and_reserved_names() {
    let text = "\
stages: [build, test]
.template: {script: [a]}
build: {script: [a]}
downstream: {trigger: {project: a/b}}
test: {script: [a]}
";
    let p = pipeline(text);
    assert_eq!(job_names(&p), ["build", "test"]);
    let err = p.job("deploy", &opts()).unwrap_err();
    assert!(matches!(err, PipelineError::UnknownJob { .. }));
    assert_eq!(
        err.to_string(),
        "ci.yml: there is no job \"deploy\"; jobs are: build, test"
    );
    let err = p.job(".template", &opts()).unwrap_err().to_string();
    assert!(
        err.contains("is hidden") && err.contains("jobs are: build, test"),
        "{err}"
    );
    let err = p.job("downstream", &opts()).unwrap_err().to_string();
    assert!(err.contains("trigger job"), "{err}");
    let err = p.job("stages", &opts()).unwrap_err().to_string();
    assert!(err.contains("there is no job \"stages\""), "{err}");
}

#[test]
fn job_shape_errors_name_job_and_key() {
    let err = job_err("job: {scirpt: [a]}\n", "job");
    assert!(
        err.contains("job \"job\": key \"scirpt\": is not a GitLab job keyword"),
        "{err}"
    );
    let err = job_err("job: {image: alpine}\n", "job");
    assert!(err.contains("has no `script:`"), "{err}");
    let err = job_err("job: {script: []}\n", "job");
    assert!(err.contains("is empty"), "{err}");
    let err = job_err("job: [a]\n", "job");
    assert!(err.contains("a job is a mapping"), "{err}");
    let err = job_err("job: {run: [{name: a}]}\n", "job");
    assert!(err.contains("`run:`"), "{err}");
    let long = "j".repeat(256);
    let err = job_err(&format!("{long}: {{script: [a]}}\n"), &long);
    assert!(err.contains("at most 255 characters"), "{err}");
    let err = job_err("- a\n", "job");
    assert!(err.contains("the file is a list"), "{err}");
    let err = job_err("", "job");
    assert!(err.contains("the file is empty"), "{err}");
}

#[test]
fn malformed_yaml_names_line_and_column() {
    let err =
        parse_pipeline("job:\n  script: [a\n  image: b\n", "ci.yml", &NoIncludes).unwrap_err();
    let PipelineError::Syntax { at, .. } = &err else {
        panic!("{err}")
    };
    assert_eq!(&*at.file, "ci.yml");
    assert!(at.line >= 2, "{err}");
}

#[test]
fn secrets_and_id_tokens_reach_the_job() {
    let text = "\
variables:
  VAULT_SERVER_URL: https://vault.example.com:8200
  VAULT_AUTH_ROLE: demo-app-deploy
deploy:
  id_tokens: {VAULT_ID_TOKEN: {aud: https://vault.example.com}}
  secrets:
    DATABASE_PASSWORD: {vault: production/db/password@ops}
  script: [deploy]
";
    let j = job(text, "deploy");
    let secrets = j.gitlab_secrets.unwrap();
    let entry = &secrets["DATABASE_PASSWORD"]["vault"];
    assert_eq!(entry["server"]["auth"]["data"]["jwt"], "$VAULT_ID_TOKEN");
    assert_eq!(entry["engine"]["path"], "ops");
    let refs = crate::secrets::from_gitlab_secrets(&secrets).unwrap();
    assert_eq!(refs[0].name.as_str(), "DATABASE_PASSWORD");
    assert_eq!(j.id_tokens[0].name, "VAULT_ID_TOKEN");
}

#[test]
fn include_local_forms_nested_and_merge_order() {
    let files = memory(&[
        (
            "ci/a.yml",
            "include: {local: /ci/b.yml}\nvariables: {X: a, Y: a}\n.t: {script: [from-a]}\n",
        ),
        (
            "ci/b.yml",
            "variables: {X: b, Z: b}\nfrom_b: {script: [b]}\n",
        ),
        ("ci/c.yml", "variables: {Y: c}\n"),
    ]);
    let text = "include: [ci/a.yml, {local: ci/c.yml}]\nvariables: {Z: main}\njob: {extends: .t}\n";
    let p = parse_pipeline(text, ".gitlab-ci.yml", &files).unwrap();
    let j = p.job("job", &opts()).unwrap();
    // b is merged before a (nested first), a before c, the main file last.
    assert_eq!(var(&j, "X"), Some("a"));
    assert_eq!(var(&j, "Y"), Some("c"));
    assert_eq!(var(&j, "Z"), Some("main"));
    assert_eq!(j.script, ["from-a"]);
    assert_eq!(p.job_names(), ["from_b", "job"]);
    let single =
        parse_pipeline("include: ci/c.yml\njob: {script: [a]}\n", "x.yml", &files).unwrap();
    assert_eq!(var(&single.job("job", &opts()).unwrap(), "Y"), Some("c"));
    let glob = parse_pipeline("include: 'ci/*.yml'\n", "x.yml", &files).unwrap();
    assert_eq!(glob.job_names(), ["from_b"]);
}

#[test]
fn include_errors() {
    let cyclic = memory(&[
        ("a.yml", "include: b.yml\n"),
        ("b.yml", "include: a.yml\n"),
        ("self.yml", "include: .gitlab-ci.yml\n"),
        ("empty.yml", ""),
        ("list.yml", "- a\n"),
    ]);
    let parse = |text: &str| {
        parse_pipeline(text, ".gitlab-ci.yml", &cyclic)
            .unwrap_err()
            .to_string()
    };
    let err = parse("include: a.yml\n");
    assert!(
        err.contains("includes itself through .gitlab-ci.yml → a.yml → b.yml → a.yml"),
        "{err}"
    );
    let err = parse("include: self.yml\n");
    assert!(err.contains("includes itself"), "{err}");
    assert!(parse("include: missing.yml\n").contains("no such file"));
    assert!(parse("include: empty.yml\n").contains("empty"));
    assert!(parse("include: list.yml\n").contains("must be a mapping"));
    assert!(parse("include: notes.txt\n").contains(".yml or .yaml"));
    assert!(parse("include: ../outside.yml\n").contains("leaves the project"));
    for remote in [
        "include: https://example.com/ci.yml\n",
        "include: {remote: 'https://example.com/ci.yml'}\n",
        "include: {project: a/b, file: ci.yml}\n",
        "include: {template: Auto-DevOps.gitlab-ci.yml}\n",
        "include: {component: gitlab.com/a/b@1}\n",
    ] {
        let err = parse(remote);
        assert!(
            err.contains("supports only local includes"),
            "{remote}: {err}"
        );
    }
}

#[test]
fn include_rules_are_included_with_a_warning() {
    let files = memory(&[("a.yml", "job: {script: [a]}\n")]);
    let p = parse_pipeline(
        "include: [{local: a.yml, rules: [{if: $X}]}]\n",
        "ci.yml",
        &files,
    )
    .unwrap();
    assert_eq!(p.job_names(), ["job"]);
    assert!(p.warnings()[0].contains("rules"), "{:?}", p.warnings());
}

#[test]
fn loads_the_example_project_from_disk() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/pipeline");
    let opts = LoadOptions {
        project_dir: dir.clone(),
        ..opts()
    };
    let path = dir.join(".gitlab-ci.yml");
    let build = load_job(&path, "build", &opts).unwrap();
    assert_eq!(build.stage, "build");
    assert_eq!(build.image.as_ref().unwrap().name, "alpine:3.20");
    assert_eq!(build.before_script, ["echo \"default before\""]);
    assert_eq!(
        build.script,
        ["echo setup", "echo \"target is $TARGET\"", "make build"]
    );
    assert_eq!(build.timeout, Some(Duration::from_secs(5400)));
    assert_eq!(build.services[0].aliases, ["db"]);
    assert_eq!(var(&build, "TARGET"), Some("release"));
    assert_eq!(
        (build.git.strategy, build.git.depth),
        (GitStrategy::Clone, Some(10))
    );

    let deploy = load_job(&path, "deploy", &opts).unwrap();
    assert_eq!(deploy.stage, "deploy");
    assert!(
        deploy.before_script.is_empty(),
        "inherit:default [image] drops before_script"
    );
    assert_eq!(deploy.after_script, ["echo done"]);
    let secrets = deploy.gitlab_secrets.as_ref().unwrap();
    assert_eq!(
        secrets["DATABASE_PASSWORD"]["vault"]["server"]["auth"]["path"],
        "jwt-gitlab"
    );

    let err = load_job(&path, "nope", &opts).unwrap_err().to_string();
    assert_eq!(
        err,
        ".gitlab-ci.yml: there is no job \"nope\"; jobs are: build, deploy"
    );
    // An empty project directory means the file's directory.
    let same = LoadOptions {
        project_dir: PathBuf::new(),
        ..opts
    };
    assert_eq!(
        load_job(&path, "build", &same).unwrap().script,
        build.script
    );
    let err = load_job(&dir.join("missing.yml"), "build", &same).unwrap_err();
    assert!(matches!(err, PipelineError::Read { .. }), "{err}");
}

#[test]
fn debug_of_a_pipeline_shows_no_values() {
    let p = pipeline("variables: {PASSWORD: hunter2}\njob: {script: [a]}\n");
    let shown = format!("{p:?}");
    assert!(
        shown.contains("job") && !shown.contains("hunter2"),
        "{shown}"
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn job_names_and_scripts_survive_parsing(
        name in "[a-z][a-z0-9_-]{0,15}",
        commands in proptest::collection::vec("[ -~]{1,40}", 1..5),
    ) {
        prop_assume!(!job::RESERVED.contains(&name.as_str()));
        let quoted: Vec<String> = commands
            .iter()
            .map(|c| format!("    - '{}'\n", c.replace('\'', "''")))
            .collect();
        let text = format!("{name}:\n  script:\n{}", quoted.concat());
        let p = parse_pipeline(&text, "ci.yml", &NoIncludes).unwrap();
        prop_assert_eq!(p.job_names(), vec![name.clone()]);
        let j = p.job(&name, &opts()).unwrap();
        prop_assert_eq!(j.script, commands);
    }

    #[test]
    fn parsing_never_panics(text in "[a-z:\\[\\]{}&*!<,\\- \n'\"0-9.]{0,200}") {
        if let Ok(p) = parse_pipeline(&text, "ci.yml", &NoIncludes) {
            for name in p.job_names() {
                let _ = p.job(&name, &opts());
            }
        }
    }
}

#[test]
fn keys_that_move_files_between_jobs_are_named_for_a_local_run() {
    let text = "default:\n  cache:\n    paths: [vendor/]\nbuild:\n  script: make\n  artifacts:\n    paths: [dist/]\ntest:\n  script: make test\n  needs: [build]\n  cache: []\n";
    assert_eq!(
        job(text, "build").transfers.left_out,
        ["artifacts", "cache"]
    );
    // `cache: []` is GitLab's "no cache", yet the key is there: named, erring on the side of
    // saying too much.
    let left_out = job(text, "test").transfers.left_out;
    assert!(left_out.contains(&"needs".to_owned()), "{left_out:?}");
    assert!(
        job("lint:\n  script: \"true\"\n", "lint")
            .transfers
            .left_out
            .is_empty()
    );
}
