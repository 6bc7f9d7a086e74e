//! `secrets:` and `id_tokens:`.
//!
//! `secrets:` becomes the JSON object GitLab puts in the job payload (see
//! `job-response-vault-example.json`), so a local job and a GitLab job reach the broker through
//! the same `crate::secrets::from_gitlab_secrets`. As in GitLab, the `server` block
//! is not written in YAML: it comes from the `VAULT_SERVER_URL`, `VAULT_NAMESPACE`,
//! `VAULT_AUTH_PATH` and `VAULT_AUTH_ROLE` variables, and its JWT is the secret's `token:`, else
//! the job's first ID token, else the legacy `${CI_JOB_JWT}`. Also as in GitLab, every secret of
//! a job shares the server block built for its first one.
//!
//! `id_tokens:` cannot be minted without GitLab; the names and audiences are kept so that
//! `exec` can say what the job needs.

use serde_json::{Map as JsonMap, Value as Json, json};

use crate::job::IdTokenRequest;

use super::{
    error::PipelineError,
    variables::Variables,
    yaml::{Map, Node, Value},
};

const PROVIDERS: &[&str] = &[
    "vault",
    "azure_key_vault",
    "gcp_secret_manager",
    "aws_secrets_manager",
    "gitlab_secrets_manager",
    "akeyless",
];
const ENTRY_KEYS: &[&str] = &["file", "token"];
const VAULT_KEYS: &[&str] = &["engine", "path", "field"];

/// Reads `id_tokens:`.
pub(crate) fn id_tokens(node: &Node, job: &str) -> Result<Vec<IdTokenRequest>, PipelineError> {
    let fail = |at: &Node, problem: String| {
        PipelineError::config(&at.at, Some(job), Some("id_tokens"), problem)
    };
    let Value::Map(map) = &node.value else {
        return Err(fail(
            node,
            format!(
                "is {}; write `NAME: {{aud: audience}}` entries",
                node.kind()
            ),
        ));
    };
    let mut out = Vec::with_capacity(map.len());
    for (name, entry) in map {
        let expected = || {
            fail(
                entry,
                format!(
                    "ID token {name:?} needs `aud:` (a string or a list of strings) and nothing else"
                ),
            )
        };
        let Value::Map(fields) = &entry.value else {
            return Err(expected());
        };
        if fields.keys().any(|k| k != "aud") {
            return Err(expected());
        }
        let aud = match fields.get("aud").map(|n| &n.value) {
            Some(Value::Str(s)) => vec![s.clone()],
            Some(Value::Seq(items)) if !items.is_empty() => items
                .iter()
                .map(|i| i.as_str().map(str::to_owned).ok_or_else(expected))
                .collect::<Result<_, _>>()?,
            _ => return Err(expected()),
        };
        out.push(IdTokenRequest {
            name: name.clone(),
            aud,
        });
    }
    Ok(out)
}

/// Reads `secrets:` into GitLab's payload shape.
pub(crate) fn secrets(
    node: &Node,
    job: &str,
    vars: &Variables,
    id_tokens: &[IdTokenRequest],
) -> Result<Json, PipelineError> {
    let fail = |at: &Node, problem: String| {
        PipelineError::config(&at.at, Some(job), Some("secrets"), problem)
    };
    let Value::Map(map) = &node.value else {
        return Err(fail(
            node,
            format!(
                "is {}; write `NAME: {{vault: path/field@engine}}` entries",
                node.kind()
            ),
        ));
    };
    let mut out = JsonMap::new();
    let mut server: Option<Json> = None;
    for (name, entry) in map {
        let Value::Map(fields) = &entry.value else {
            return Err(fail(
                entry,
                format!(
                    "secret {name:?} is {}; it is a mapping such as `vault: path/field@engine`",
                    entry.kind()
                ),
            ));
        };
        if let Some(unknown) = fields
            .keys()
            .find(|k| !PROVIDERS.contains(&k.as_str()) && !ENTRY_KEYS.contains(&k.as_str()))
        {
            return Err(fail(
                entry,
                format!("secret {name:?} has the unknown key {unknown:?}"),
            ));
        }
        let providers: Vec<&str> = PROVIDERS
            .iter()
            .copied()
            .filter(|p| fields.contains_key(*p))
            .collect();
        match providers.as_slice() {
            ["vault"] => {}
            [other] => {
                return Err(fail(
                    entry,
                    format!(
                        "secret {name:?}: the `{other}` provider is not supported by Keyhole; \
                         use `vault:` or a KEYHOLE_SECRET_{name} variable (see docs/secrets.md)"
                    ),
                ));
            }
            _ => {
                return Err(fail(
                    entry,
                    format!("secret {name:?} needs exactly one provider, such as `vault:`"),
                ));
            }
        }
        let file = match fields.get("file").map(|n| (&n.value, n)) {
            None => true,
            Some((Value::Bool(b), _)) => *b,
            Some((_, n)) => {
                return Err(fail(
                    n,
                    format!("`file` of secret {name:?} is true or false"),
                ));
            }
        };
        let token = match fields.get("token").map(|n| (&n.value, n)) {
            None => None,
            Some((Value::Str(s), _)) => Some(s.clone()),
            Some((_, n)) => {
                return Err(fail(
                    n,
                    format!("`token` of secret {name:?} is a variable such as $VAULT_ID_TOKEN"),
                ));
            }
        };
        let Some(vault_node) = fields.get("vault") else {
            return Err(fail(entry, format!("secret {name:?} needs `vault:`")));
        };
        let (engine_name, engine_path, path, field) = vault(vault_node)
            .map_err(|problem| fail(vault_node, format!("secret {name:?}: {problem}")))?;
        if server.is_none() {
            let jwt = token
                .clone()
                .or_else(|| id_tokens.first().map(|t| format!("${}", t.name)))
                .unwrap_or_else(|| "${CI_JOB_JWT}".to_owned());
            server = Some(
                vault_server(vars, jwt)
                    .map_err(|problem| fail(entry, format!("secret {name:?}: {problem}")))?,
            );
        }
        out.insert(
            name.clone(),
            json!({
                "vault": {
                    "server": server.clone(),
                    "engine": { "name": engine_name, "path": engine_path },
                    "path": path,
                    "field": field,
                },
                "file": file,
            }),
        );
    }
    Ok(Json::Object(out))
}

/// `(engine name, engine path, path, field)` of a `vault:` value.
fn vault(node: &Node) -> Result<(String, String, String, String), String> {
    match &node.value {
        Value::Str(short) => shorthand(short),
        Value::Map(map) => long_form(map),
        _ => Err(format!(
            "`vault` is {}; write `path/field@engine` or {{engine: {{name, path}}, path, field}}",
            node.kind()
        )),
    }
}

/// `production/db/password@ops`: path `production/db`, field `password`, KV v2 engine mounted
/// at `ops` (`kv-v2` when no `@` is given).
fn shorthand(text: &str) -> Result<(String, String, String, String), String> {
    let expected =
        || format!("`vault: {text}` is not `path/field@engine` (e.g. production/db/password@ops)");
    let (location, engine_path) = match text.rsplit_once('@') {
        Some((location, engine)) => (location, engine),
        None => (text, "kv-v2"),
    };
    let (path, field) = location.rsplit_once('/').ok_or_else(expected)?;
    if path.is_empty() || field.is_empty() || engine_path.is_empty() {
        return Err(expected());
    }
    Ok((
        "kv-v2".to_owned(),
        engine_path.to_owned(),
        path.to_owned(),
        field.to_owned(),
    ))
}

fn long_form(map: &Map) -> Result<(String, String, String, String), String> {
    if let Some(unknown) = map.keys().find(|k| !VAULT_KEYS.contains(&k.as_str())) {
        return Err(format!(
            "`vault` has the unknown key {unknown:?}; allowed: engine, path, field"
        ));
    }
    let text = |node: Option<&Node>, what: &str| {
        node.and_then(Node::as_str)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .ok_or_else(|| format!("`vault` needs `{what}` (a string)"))
    };
    let engine = map
        .get("engine")
        .and_then(Node::as_map)
        .ok_or_else(|| "`vault` needs `engine: {name: kv-v2, path: <mount>}`".to_owned())?;
    Ok((
        text(engine.get("name"), "engine: name")?,
        text(engine.get("path"), "engine: path")?,
        text(map.get("path"), "path")?,
        text(map.get("field"), "field")?,
    ))
}

/// The `server` block GitLab adds from the job's variables.
fn vault_server(vars: &Variables, jwt: String) -> Result<Json, String> {
    let var = |name: &str| vars.get(name).map(|v| v.value.clone());
    let url = var("VAULT_SERVER_URL").filter(|u| !u.is_empty()).ok_or_else(|| {
        "Vault secrets need the VAULT_SERVER_URL variable (the Vault address); set it under `variables:`"
            .to_owned()
    })?;
    let mut data = JsonMap::new();
    data.insert("jwt".to_owned(), Json::String(jwt));
    if let Some(role) = var("VAULT_AUTH_ROLE").filter(|r| !r.is_empty()) {
        data.insert("role".to_owned(), Json::String(role));
    }
    Ok(json!({
        "url": url,
        "namespace": var("VAULT_NAMESPACE"),
        "auth": {
            "name": "jwt",
            "path": var("VAULT_AUTH_PATH").unwrap_or_else(|| "jwt".to_owned()),
            "data": data,
        },
    }))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use keyhole_contract::reference::{Engine, Source};

    use super::*;
    use crate::pipeline::{variables, yaml::load_config};

    fn node(text: &str) -> Node {
        load_config(text, &Arc::from("ci.yml")).unwrap()
    }

    fn vars(text: &str) -> Variables {
        variables::read(&node(text), None).unwrap()
    }

    fn fixture_secrets() -> Json {
        let text = include_str!("../gitlab/fixtures/job-response-vault-example.json");
        let job: Json = serde_json::from_str(text).unwrap();
        job["secrets"].clone()
    }

    const SERVER_VARS: &str = "VAULT_SERVER_URL: https://vault.example.com:8200\nVAULT_AUTH_PATH: jwt\nVAULT_AUTH_ROLE: demo-app-deploy\n";

    #[test]
    fn shorthand_and_long_form_give_gitlabs_payload_shape() {
        let tokens = id_tokens(
            &node("VAULT_ID_TOKEN: {aud: https://vault.example.com}"),
            "deploy",
        )
        .unwrap();
        let got = secrets(
            &node(
                "DATABASE_PASSWORD:\n  vault: production/db/password@ops\n  file: true\n\
                 API_KEY:\n  vault:\n    engine: {name: kv-v2, path: kv-v2}\n    path: production/api\n    field: key\n  file: false\n",
            ),
            "deploy",
            &vars(SERVER_VARS),
            &tokens,
        )
        .unwrap();
        assert_eq!(got, fixture_secrets());
    }

    #[test]
    fn the_broker_converts_what_the_pipeline_writes() {
        let got = secrets(
            &node("DB:\n  vault: team/db/password\n  token: $MY_JWT\n"),
            "deploy",
            &vars(&format!("{SERVER_VARS}VAULT_NAMESPACE: ns1\n")),
            &[],
        )
        .unwrap();
        let refs = crate::secrets::from_gitlab_secrets(&got).unwrap();
        let Source::Vault(v) = &refs[0].source else {
            panic!("not vault")
        };
        assert!(refs[0].file);
        assert_eq!((v.mount.as_str(), v.path.as_str()), ("kv-v2", "team/db"));
        assert_eq!(
            (v.field.as_deref(), v.engine),
            (Some("password"), Engine::KvV2)
        );
        let server = v.server.as_ref().unwrap();
        assert_eq!(server.jwt_variable.as_deref(), Some("MY_JWT"));
        assert_eq!(server.namespace.as_deref(), Some("ns1"));
        assert_eq!(server.role.as_deref(), Some("demo-app-deploy"));
    }

    #[test]
    fn jwt_falls_back_to_the_first_id_token_then_ci_job_jwt() {
        let server_jwt = |tokens: &[IdTokenRequest]| {
            let got = secrets(&node("S: {vault: a/b@c}"), "j", &vars(SERVER_VARS), tokens).unwrap();
            got["S"]["vault"]["server"]["auth"]["data"]["jwt"].clone()
        };
        let tokens = id_tokens(&node("FIRST: {aud: a}\nSECOND: {aud: [b, c]}"), "j").unwrap();
        assert_eq!(tokens[1].aud, ["b", "c"]);
        assert_eq!(server_jwt(&tokens), json!("$FIRST"));
        assert_eq!(server_jwt(&[]), json!("${CI_JOB_JWT}"));
    }

    #[test]
    fn unsupported_providers_and_bad_entries_are_named() {
        let check = |yaml: &str, expect: &str| {
            let err = secrets(&node(yaml), "deploy", &vars(SERVER_VARS), &[])
                .unwrap_err()
                .to_string();
            assert!(err.contains(expect), "{yaml}: {err}");
            assert!(err.contains("job \"deploy\": key \"secrets\""), "{err}");
        };
        for provider in [
            "azure_key_vault",
            "gcp_secret_manager",
            "akeyless",
            "gitlab_secrets_manager",
            "aws_secrets_manager",
        ] {
            check(
                &format!("X: {{{provider}: {{name: n}}}}"),
                &format!("the `{provider}` provider is not supported by Keyhole"),
            );
        }
        check("X: {vault: nofield}", "not `path/field@engine`");
        check("X: {vault: {path: p, field: f}}", "needs `engine:");
        check("X: {vault: a/b@c, file: yes-please}", "is true or false");
        check(
            "X: {vault: a/b@c, azure_key_vault: {}}",
            "exactly one provider",
        );
        check("X: {file: true}", "exactly one provider");
        let err = secrets(&node("X: {vault: a/b@c}"), "deploy", &Variables::new(), &[])
            .unwrap_err()
            .to_string();
        assert!(err.contains("VAULT_SERVER_URL"), "{err}");
    }

    #[test]
    fn id_tokens_need_an_audience() {
        let err = id_tokens(&node("T: {}"), "j").unwrap_err().to_string();
        assert!(err.contains("needs `aud:`"), "{err}");
        assert!(id_tokens(&node("T: {aud: []}"), "j").is_err());
        assert!(id_tokens(&node("T: {aud: a, extra: 1}"), "j").is_err());
    }
}
