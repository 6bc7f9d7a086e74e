//! `image:` and `services:` in GitLab's forms: a name, or a mapping with `name`,
//! `entrypoint`, `pull_policy` (and for services `alias`, `command`, `variables`, `ports`).
//! Of the executor options, `kubernetes: {user}` is honoured; `docker:` is refused by name, as
//! a job that asks for a user or a platform must not silently get another.

use crate::job::{Image, Service};

use super::{
    error::PipelineError,
    yaml::{Map, Node, Value},
};

const IMAGE_KEYS: &[&str] = &["name", "entrypoint", "pull_policy", "docker", "kubernetes"];
const SERVICE_KEYS: &[&str] = &[
    "name",
    "entrypoint",
    "command",
    "alias",
    "variables",
    "pull_policy",
    "ports",
    "docker",
    "kubernetes",
];
const PULL_POLICIES: &[&str] = &["always", "never", "if-not-present"];

struct Field<'a> {
    job: &'a str,
    key: &'a str,
}

impl Field<'_> {
    fn fail(&self, at: &Node, problem: impl Into<String>) -> PipelineError {
        PipelineError::config(&at.at, Some(self.job), Some(self.key), problem)
    }
}

/// Reads `image:`.
pub(crate) fn image(node: &Node, job: &str) -> Result<Image, PipelineError> {
    let field = Field { job, key: "image" };
    match &node.value {
        Value::Str(name) => Ok(Image {
            name: name.clone(),
            ..Image::default()
        }),
        Value::Map(map) => image_map(map, node, &field, IMAGE_KEYS),
        _ => Err(field.fail(
            node,
            format!(
                "is {}; use an image name or a mapping with `name:`",
                node.kind()
            ),
        )),
    }
}

fn image_map(
    map: &Map,
    node: &Node,
    field: &Field<'_>,
    allowed: &[&str],
) -> Result<Image, PipelineError> {
    if let Some(unknown) = map.keys().find(|k| !allowed.contains(&k.as_str())) {
        return Err(field.fail(
            node,
            format!("unknown key {unknown:?}; allowed: {}", allowed.join(", ")),
        ));
    }
    let name = match map.get("name") {
        Some(Node {
            value: Value::Str(name),
            ..
        }) if !name.is_empty() => name.clone(),
        _ => return Err(field.fail(node, "needs `name:` with the image's name")),
    };
    let entrypoint = map
        .get("entrypoint")
        .map(|n| strings(n, field, "entrypoint"))
        .transpose()?;
    let pull_policy = match map.get("pull_policy") {
        None => Vec::new(),
        Some(n) => {
            let policies = match &n.value {
                Value::Str(s) => vec![s.clone()],
                _ => strings(n, field, "pull_policy")?,
            };
            if let Some(bad) = policies
                .iter()
                .find(|p| !PULL_POLICIES.contains(&p.as_str()))
            {
                return Err(field.fail(
                    n,
                    format!(
                        "pull_policy {bad:?} is unknown; use {}",
                        PULL_POLICIES.join(", ")
                    ),
                ));
            }
            policies
        }
    };
    let user = map
        .get("kubernetes")
        .map(|n| kubernetes_user(n, field))
        .transpose()?
        .flatten();
    if let Some(n) = map.get("docker") {
        return Err(field.fail(
            n,
            "`docker:` executor options (user, platform) are not honoured by Keyhole's Kubernetes \
             pods; remove them, or use `kubernetes: {user: \"uid:gid\"}` for the user",
        ));
    }
    Ok(Image {
        name,
        entrypoint,
        pull_policy,
        user,
    })
}

/// `kubernetes: {user: uid[:gid]}`, the one Kubernetes executor option GitLab has.
fn kubernetes_user(node: &Node, field: &Field<'_>) -> Result<Option<String>, PipelineError> {
    let Value::Map(map) = &node.value else {
        return Err(field.fail(node, "`kubernetes` is a mapping with `user:`"));
    };
    if let Some(unknown) = map.keys().find(|k| k.as_str() != "user") {
        return Err(field.fail(
            node,
            format!("`kubernetes` has unknown key {unknown:?}; only `user` is allowed"),
        ));
    }
    match map.get("user").map(|n| (&n.value, n)) {
        None | Some((Value::Null, _)) => Ok(None),
        Some((Value::Str(s), _)) => Ok(Some(s.clone())),
        Some((Value::Int(i), _)) => Ok(Some(i.to_string())),
        Some((_, n)) => Err(field.fail(n, "`kubernetes: user` is `uid` or `\"uid:gid\"`")),
    }
}

/// Reads a service's `ports:`: numbers, or mappings with `number` (and `protocol`, `name`).
fn ports(node: &Node, field: &Field<'_>) -> Result<Vec<u16>, PipelineError> {
    let Value::Seq(items) = &node.value else {
        return Err(field.fail(node, "`ports` is a list of port numbers"));
    };
    items
        .iter()
        .map(|item| {
            let number = match &item.value {
                Value::Map(m) => m.get("number").unwrap_or(item),
                _ => item,
            };
            match &number.value {
                Value::Int(n) => port_number(*n),
                _ => None,
            }
            .ok_or_else(|| {
                field.fail(
                    item,
                    "a port is a number from 1 to 65535, or a mapping with `number:`",
                )
            })
        })
        .collect()
}

fn port_number(n: i64) -> Option<u16> {
    u16::try_from(n).ok().filter(|&p| p != 0)
}

/// A list of strings (`entrypoint`, `command`).
fn strings(node: &Node, field: &Field<'_>, what: &str) -> Result<Vec<String>, PipelineError> {
    let expected = || field.fail(node, format!("`{what}` is a list of strings"));
    let Value::Seq(items) = &node.value else {
        return Err(expected());
    };
    items
        .iter()
        .map(|i| i.as_str().map(str::to_owned).ok_or_else(expected))
        .collect()
}

/// Reads `services:`.
pub(crate) fn services(node: &Node, job: &str) -> Result<Vec<Service>, PipelineError> {
    let field = Field {
        job,
        key: "services",
    };
    let Value::Seq(items) = &node.value else {
        return Err(field.fail(node, format!("is {}; services are a list", node.kind())));
    };
    items.iter().map(|item| service(item, &field)).collect()
}

fn service(node: &Node, field: &Field<'_>) -> Result<Service, PipelineError> {
    let map = match &node.value {
        Value::Str(name) => {
            return Ok(Service {
                image: Image {
                    name: name.clone(),
                    ..Image::default()
                },
                ..Service::default()
            });
        }
        Value::Map(map) => map,
        _ => {
            return Err(field.fail(
                node,
                format!(
                    "a service is {}; use an image name or a mapping with `name:`",
                    node.kind()
                ),
            ));
        }
    };
    let image = image_map(map, node, field, SERVICE_KEYS)?;
    let aliases = match map.get("alias") {
        None => Vec::new(),
        Some(n) => n
            .as_str()
            .ok_or_else(|| {
                field.fail(
                    n,
                    "`alias` is a string (several aliases: comma- or space-separated)",
                )
            })?
            .split([',', ' '])
            .filter(|a| !a.is_empty())
            .map(str::to_owned)
            .collect(),
    };
    let command = map
        .get("command")
        .map(|n| strings(n, field, "command"))
        .transpose()?;
    let variables = match map.get("variables") {
        None => Vec::new(),
        Some(n) => {
            let Value::Map(vars) = &n.value else {
                return Err(
                    field.fail(n, "a service's `variables` is a mapping of names to values")
                );
            };
            vars.iter()
                .map(|(k, v)| {
                    let value = match &v.value {
                        Value::Str(s) => s.clone(),
                        Value::Int(i) => i.to_string(),
                        _ => {
                            return Err(field.fail(
                                v,
                                format!(
                                    "service variable {k:?} is {}; use a string (quote it) or an integer",
                                    v.kind()
                                ),
                            ));
                        }
                    };
                    Ok((k.clone(), value))
                })
                .collect::<Result<_, _>>()?
        }
    };
    let ports = map
        .get("ports")
        .map(|n| ports(n, field))
        .transpose()?
        .unwrap_or_default();
    Ok(Service {
        image,
        aliases,
        command,
        variables,
        ports,
    })
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::pipeline::yaml::load_config;

    fn node(text: &str) -> Node {
        load_config(text, &Arc::from("ci.yml")).unwrap()
    }

    #[test]
    fn image_forms() {
        assert_eq!(
            image(&node("alpine:3.20"), "j").unwrap().name,
            "alpine:3.20"
        );
        let full = image(
            &node("{name: 'postgres:16', entrypoint: [''], pull_policy: [always, if-not-present]}"),
            "j",
        )
        .unwrap();
        assert_eq!(
            full,
            Image {
                name: "postgres:16".into(),
                entrypoint: Some(vec![String::new()]),
                pull_policy: vec!["always".into(), "if-not-present".into()],
                user: None,
            }
        );
        assert_eq!(
            image(&node("{name: a, pull_policy: never}"), "j")
                .unwrap()
                .pull_policy,
            ["never"]
        );
        let err = image(&node("{name: a, pull_policy: sometimes}"), "j")
            .unwrap_err()
            .to_string();
        assert!(err.contains("\"sometimes\" is unknown"), "{err}");
        let err = image(&node("{entrypoint: [sh]}"), "j")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("needs `name:`") && err.contains("key \"image\""),
            "{err}"
        );
        let err = image(&node("{name: a, nmae: b}"), "j")
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown key \"nmae\""), "{err}");
    }

    #[test]
    fn ports_and_the_kubernetes_user_are_read_and_docker_options_refused() {
        let list = services(
            &node("- {name: pg, ports: [5432, {number: 9187, protocol: tcp}], kubernetes: {user: '1001:1001'}}"),
            "j",
        )
        .unwrap();
        assert_eq!(list[0].ports, [5432, 9187]);
        assert_eq!(list[0].image.user.as_deref(), Some("1001:1001"));
        assert_eq!(
            image(&node("{name: a, kubernetes: {user: 1001}}"), "j")
                .unwrap()
                .user
                .as_deref(),
            Some("1001")
        );
        let err = image(&node("{name: a, docker: {platform: arm64}}"), "j")
            .unwrap_err()
            .to_string();
        assert!(err.contains("`docker:` executor options"), "{err}");
        let err = image(&node("{name: a, kubernetes: {uid: 1}}"), "j")
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown key \"uid\""), "{err}");
        let err = services(&node("- {name: pg, ports: [0]}"), "j")
            .unwrap_err()
            .to_string();
        assert!(err.contains("from 1 to 65535"), "{err}");
    }

    #[test]
    fn service_forms() {
        let list = services(
            &node(
                "- redis:7\n\
                 - name: postgres:16\n  alias: db, pg\n  command: [postgres, -c, fsync=off]\n  \
                 entrypoint: [docker-entrypoint.sh]\n  variables: {POSTGRES_DB: app, PORT: 5432}\n",
            ),
            "j",
        )
        .unwrap();
        assert_eq!(list[0].image.name, "redis:7");
        assert!(list[0].aliases.is_empty());
        let pg = &list[1];
        assert_eq!(pg.aliases, ["db", "pg"]);
        assert_eq!(
            pg.command.as_deref().unwrap(),
            ["postgres", "-c", "fsync=off"]
        );
        assert_eq!(
            pg.image.entrypoint.as_deref().unwrap(),
            ["docker-entrypoint.sh"]
        );
        assert_eq!(
            pg.variables,
            [
                ("POSTGRES_DB".into(), "app".into()),
                ("PORT".into(), "5432".into())
            ]
        );
        let err = services(&node("redis"), "j").unwrap_err().to_string();
        assert!(err.contains("services are a list"), "{err}");
        let err = services(&node("- {name: a, variables: {X: true}}"), "j")
            .unwrap_err()
            .to_string();
        assert!(err.contains("\"X\" is a boolean"), "{err}");
    }
}
