//! The build container and the service containers: images checked against the runner's
//! allow-lists, pull policies, entrypoints, all under the `restricted` hardening.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Container, ResourceRequirements, SecurityContext};
use keyhole_contract as contract;

use super::env::{env_list, literal_env_value};
use super::error::PodError;
use super::parts::{mount, read_only_mount, restricted};
use super::resources::service_resources;
use crate::config::{KubernetesConfig, RunnerConfig, UserNamespaceRoot};
use crate::job::{Image, Job, Service};

/// [`restricted`] with the image's `kubernetes: {user}` applied: the job may pick any
/// non-root uid (and gid) for its own container. uid 0 only in a user namespace
/// (`user_namespace_root`), where it is root in the container and an unprivileged uid on the
/// node; otherwise it would fail PodSecurity `restricted` at admission with a less helpful
/// message, so it is refused here, naming the field. `allowed_users`/`allowed_groups`, when
/// set, bound the choice (as in gitlab-runner).
pub(super) fn restricted_as(
    image: &Image,
    what: &str,
    k: &KubernetesConfig,
    userns: UserNamespaceRoot,
) -> Result<SecurityContext, PodError> {
    let mut context = restricted();
    if let Some((uid, gid)) = image.user.as_deref().map(|u| run_as(u, what)).transpose()? {
        if uid == 0 && userns == UserNamespaceRoot::Off {
            return Err(PodError::RootWithoutUserNamespace { what: what.into() });
        }
        if uid == 0 {
            // Root in the pod's own user namespace; PodSecurity allows it there.
            context.run_as_non_root = Some(false);
        }
        allowed_id(uid, &k.allowed_users, "user", "allowed_users", what)?;
        if let Some(gid) = gid {
            allowed_id(gid, &k.allowed_groups, "group", "allowed_groups", what)?;
        }
        context.run_as_user = Some(uid);
        context.run_as_group = gid;
    }
    Ok(context)
}

/// An empty allow-list allows any id; otherwise `id` must be on it.
fn allowed_id(
    id: i64,
    allowed: &[String],
    kind: &'static str,
    key: &'static str,
    what: &str,
) -> Result<(), PodError> {
    if allowed.is_empty() || allowed.iter().any(|a| a.trim() == id.to_string()) {
        return Ok(());
    }
    Err(PodError::IdNotAllowed {
        what: what.into(),
        kind,
        id,
        key,
        allowed: allowed.to_vec(),
    })
}

/// Parses `uid` or `uid:gid` (numbers: the pod cannot resolve names from the image).
fn run_as(user: &str, what: &str) -> Result<(i64, Option<i64>), PodError> {
    let number = |s: &str| -> Option<i64> {
        (!s.is_empty() && s.len() <= 10 && s.bytes().all(|b| b.is_ascii_digit()))
            .then(|| s.parse::<i64>().ok())
            .flatten()
            .filter(|&n| n <= i64::from(i32::MAX))
    };
    let (uid, gid) = match user.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (user, None),
    };
    let bad = || PodError::UserNotNumeric {
        what: what.into(),
        user: user.chars().take(40).collect(),
    };
    let uid = number(uid).ok_or_else(bad)?;
    let gid = gid.map(|g| number(g).ok_or_else(bad)).transpose()?;
    Ok((uid, gid))
}

/// The first of the job's pull policies, if the runner allows it, as Kubernetes spells it.
fn pull_policy(policies: &[String], allowed: &[String]) -> Result<Option<&'static str>, PodError> {
    let Some(first) = policies.first() else {
        return Ok(None);
    };
    if !allowed.is_empty() && !allowed.iter().any(|a| a == first) {
        return Err(PodError::PullPolicyNotAllowed {
            policy: first.clone(),
            allowed: allowed.to_vec(),
        });
    }
    match first.as_str() {
        "always" => Ok(Some("Always")),
        "if-not-present" => Ok(Some("IfNotPresent")),
        "never" => Ok(Some("Never")),
        other => Err(PodError::PullPolicyUnknown {
            policy: other.into(),
        }),
    }
}

/// gitlab-runner's `allowed_images` patterns: `*` matches within a path segment, `**` across.
pub fn image_allowed(image: &str, patterns: &[String]) -> bool {
    if patterns.is_empty() {
        return true;
    }
    patterns.iter().any(|p| {
        let mut re = String::from("^");
        let mut chars = p.chars().peekable();
        while let Some(c) = chars.next() {
            match c {
                '*' if chars.peek() == Some(&'*') => {
                    chars.next();
                    re.push_str(".*");
                }
                '*' => re.push_str("[^/]*"),
                c => re.push_str(&regex::escape(&c.to_string())),
            }
        }
        re.push('$');
        regex::Regex::new(&re).is_ok_and(|r| r.is_match(image))
    })
}

fn dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// The build container's image: the job's, else the runner's default; checked against
/// `allowed_images`.
pub(super) fn build_image(
    job: &Job,
    k: &KubernetesConfig,
    userns: UserNamespaceRoot,
) -> Result<Image, PodError> {
    let mut image = job.image.clone().unwrap_or_else(|| Image {
        name: k.image.clone(),
        ..Image::default()
    });
    if userns == UserNamespaceRoot::Always && image.user.is_none() {
        image.user = Some("0".into());
    }
    if !image_allowed(&image.name, &k.allowed_images) {
        return Err(PodError::ImageNotAllowed {
            image: image.name,
            allowed: k.allowed_images.clone(),
        });
    }
    Ok(image)
}

/// The build container: runs the generated script with the job's public env, reads the
/// secrets volume read-only.
pub(super) fn build_container(
    image: &Image,
    runner: &RunnerConfig,
    script: String,
    public_env: &BTreeMap<String, String>,
    resources: ResourceRequirements,
    honor_entrypoint: bool,
) -> Result<Container, PodError> {
    let k = &runner.kubernetes;
    let policies = if image.pull_policy.is_empty() {
        &k.pull_policy.0
    } else {
        &image.pull_policy
    };
    let image_pull_policy = pull_policy(policies, &k.allowed_pull_policies)?;
    let start = build_start(image, script, honor_entrypoint)?;
    let security_context = restricted_as(image, "image", k, runner.keyhole.user_namespace_root)?;
    Ok(start.apply(Container {
        name: contract::BUILD_CONTAINER.into(),
        image: Some(image.name.clone()),
        image_pull_policy: image_pull_policy.map(Into::into),
        working_dir: Some(runner.builds_dir.clone()),
        env: Some(env_list(public_env)),
        resources: Some(resources),
        security_context: Some(security_context),
        volume_mounts: Some(vec![
            read_only_mount(contract::SECRETS_VOLUME, contract::SECRETS_DIR),
            mount(contract::RUNTIME_VOLUME, contract::RUNTIME_DIR),
            mount("builds", &runner.builds_dir),
        ]),
        ..Default::default()
    }))
}

/// A container's `command` and `args`; `None` keeps the image's `ENTRYPOINT` / `CMD`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Start {
    command: Option<Vec<String>>,
    args: Option<Vec<String>>,
}

impl Start {
    /// Sets `command` and `args` so that they reach the process as written: the kubelet
    /// expands `$(NAME)` and `$$` in both, as in env values, which would change a script's
    /// `$$` (the shell's pid) or `$(BASE)` (a command substitution) behind the job's back.
    fn apply(self, container: Container) -> Container {
        Container {
            command: self.command.as_deref().map(literal_list),
            args: self.args.as_deref().map(literal_list),
            ..container
        }
    }
}

fn literal_list(items: &[String]) -> Vec<String> {
    items.iter().map(|item| literal_env_value(item)).collect()
}

/// What `entrypoint:` asks for: `[]` and `[""]` clear the image's entrypoint (the usual way to
/// run a tool image such as `hashicorp/terraform`, whose entrypoint is the tool, as a job
/// image), anything else replaces it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Entrypoint<'a> {
    Image,
    Cleared,
    Given(&'a [String]),
}

fn entrypoint<'a>(given: &'a Option<Vec<String>>, what: &str) -> Result<Entrypoint<'a>, PodError> {
    match given.as_deref() {
        None => Ok(Entrypoint::Image),
        Some(e) if e.iter().all(String::is_empty) => Ok(Entrypoint::Cleared),
        Some(e) if e[0].is_empty() => Err(PodError::EntrypointWithoutProgram { what: what.into() }),
        Some(e) => Ok(Entrypoint::Given(e)),
    }
}

/// The build container runs the job's script with `sh -c`. gitlab-runner's Kubernetes
/// semantics: the image's own `ENTRYPOINT` is replaced by the shell unless the job asks for it
/// (`FF_KUBERNETES_HONOR_ENTRYPOINT`); a job's `entrypoint:` gets the shell as its arguments,
/// so a wrapper that ends in `exec "$@"` runs the script.
fn build_start(image: &Image, script: String, honor_entrypoint: bool) -> Result<Start, PodError> {
    let shell = vec!["sh".to_string(), "-c".to_string(), script];
    Ok(match entrypoint(&image.entrypoint, "image")? {
        Entrypoint::Given(e) => Start {
            command: Some(e.to_vec()),
            args: Some(shell),
        },
        Entrypoint::Image if honor_entrypoint => Start {
            command: None,
            args: Some(shell),
        },
        Entrypoint::Image | Entrypoint::Cleared => Start {
            command: Some(shell),
            args: None,
        },
    })
}

/// A service runs its image as the image says, with `entrypoint:` and `command:` as Docker's
/// `--entrypoint` and arguments: a cleared entrypoint makes `command:` the program, and
/// without one there is nothing to run.
fn service_start(service: &Service, what: &str) -> Result<Start, PodError> {
    Ok(match entrypoint(&service.image.entrypoint, what)? {
        Entrypoint::Image => Start {
            command: None,
            args: service.command.clone(),
        },
        Entrypoint::Given(e) => Start {
            command: Some(e.to_vec()),
            args: service.command.clone(),
        },
        Entrypoint::Cleared => match &service.command {
            Some(c) if c.first().is_some_and(|p| !p.is_empty()) => Start {
                command: Some(c.clone()),
                args: None,
            },
            _ => {
                return Err(PodError::ServiceWithoutCommand { what: what.into() });
            }
        },
    })
}

/// gitlab-runner reads feature flags with Go's `strconv.ParseBool`.
pub(super) fn flag_enabled(job: &Job, name: &str) -> bool {
    matches!(
        job.public_variable(name),
        Some("1" | "t" | "T" | "true" | "TRUE" | "True")
    )
}

/// The job's service containers, the aliases they answer to, and what the job waits for.
#[derive(Debug, Default)]
pub(super) struct ServiceContainers {
    pub containers: Vec<Container>,
    /// Every alias (the pod's `hostAliases` point them at localhost: a pod shares one network
    /// namespace).
    pub host_aliases: Vec<String>,
    /// Services with a port to wait for, in the job's order.
    pub waits: Vec<contract::ServiceWait>,
}

/// The service variable naming the port to wait for, as in gitlab-runner.
pub const HEALTHCHECK_TCP_PORT: &str = "HEALTHCHECK_TCP_PORT";

/// The ports the job waits for on a service: its `HEALTHCHECK_TCP_PORT` (the last one set,
/// as later variables win), else the ports its `ports:` lists; none means no wait.
fn readiness_ports(service: &Service, what: &str) -> Result<Vec<u16>, PodError> {
    match service
        .variables
        .iter()
        .rev()
        .find(|(k, _)| k == HEALTHCHECK_TCP_PORT)
    {
        Some((_, v)) => v
            .trim()
            .parse::<u16>()
            .ok()
            .filter(|&p| p != 0)
            .map(|p| vec![p])
            .ok_or_else(|| PodError::HealthcheckPort {
                what: what.into(),
                value: v.chars().take(20).collect(),
            }),
        None => Ok(service.ports.clone()),
    }
}

/// The service containers, their aliases and their readiness ports.
pub(super) fn service_containers(
    job: &Job,
    k: &KubernetesConfig,
    userns: UserNamespaceRoot,
    public_env: &BTreeMap<String, String>,
) -> Result<ServiceContainers, PodError> {
    let mut out = ServiceContainers::default();
    let mut used_names: Vec<String> = vec![contract::BUILD_CONTAINER.into()];
    for (i, service) in job.services.iter().enumerate() {
        if !image_allowed(&service.image.name, &k.allowed_services) {
            return Err(PodError::ServiceImageNotAllowed {
                image: service.image.name.clone(),
                allowed: k.allowed_services.clone(),
            });
        }
        let name = service
            .aliases
            .iter()
            .find(|a| dns_label(a) && !used_names.contains(a))
            .cloned()
            .unwrap_or_else(|| format!("svc-{i}"));
        used_names.push(name.clone());
        out.host_aliases.extend(service.aliases.iter().cloned());
        let what = format!("service {:?}", service.image.name);
        let ports = readiness_ports(service, &what)?;
        if !ports.is_empty() {
            out.waits.push(contract::ServiceWait {
                name: name.clone(),
                ports,
            });
        }
        let mut env = public_env.clone();
        env.extend(service.variables.iter().cloned());
        let security_context = restricted_as(&service.image, &what, k, userns)?;
        let start = service_start(service, &what)?;
        let image_pull_policy = pull_policy(&service.image.pull_policy, &k.allowed_pull_policies)?;
        out.containers.push(start.apply(Container {
            name,
            image: Some(service.image.name.clone()),
            image_pull_policy: image_pull_policy.map(Into::into),
            env: Some(env_list(&env)),
            resources: Some(service_resources(k)),
            security_context: Some(security_context),
            ..Default::default()
        }));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    fn image(entrypoint: Option<&[&str]>) -> Image {
        Image {
            name: "img".into(),
            entrypoint: entrypoint.map(v),
            ..Image::default()
        }
    }

    fn shell() -> Vec<String> {
        v(&["sh", "-c", "S"])
    }

    #[test]
    fn the_kubernetes_user_is_numeric_and_root_only_in_a_user_namespace() {
        assert_eq!(run_as("1001", "image").unwrap(), (1001, None));
        assert_eq!(run_as("1001:0", "image").unwrap(), (1001, Some(0)));
        for bad in ["root", "", ":1", "1:", "-5", "99999999999", "1:2:3"] {
            let err = run_as(bad, "image").unwrap_err();
            assert!(err.to_string().contains("numeric `uid`"), "{bad}: {err}");
        }
        let mut root = image(None);
        root.user = Some("0:0".into());
        let mut k = KubernetesConfig::default();
        let err = restricted_as(&root, "service \"pg\"", &k, UserNamespaceRoot::Off).unwrap_err();
        assert!(
            err.to_string().contains("service \"pg\"")
                && err.to_string().contains("uid 0 (root)")
                && err.to_string().contains("user_namespace_root"),
            "{err}"
        );
        for mode in [UserNamespaceRoot::Allowed, UserNamespaceRoot::Always] {
            let context = restricted_as(&root, "image", &k, mode).unwrap();
            assert_eq!(
                (context.run_as_user, context.run_as_non_root),
                (Some(0), Some(false))
            );
            assert_eq!(context.capabilities.and_then(|c| c.drop), Some(v(&["ALL"])));
        }
        // An allow-list must name root for a job to get it.
        k.allowed_users = v(&["1000"]);
        let err = restricted_as(&root, "image", &k, UserNamespaceRoot::Allowed).unwrap_err();
        assert!(
            err.to_string().contains("user 0") && err.to_string().contains("allowed_users"),
            "{err}"
        );
        k.allowed_users = v(&["1000", "0"]);
        assert!(restricted_as(&root, "image", &k, UserNamespaceRoot::Allowed).is_ok());
        k.allowed_users.clear();
        let mut img = image(None);
        img.user = Some("2000:3000".into());
        let context = restricted_as(&img, "image", &k, UserNamespaceRoot::Off).unwrap();
        assert_eq!(context.run_as_user, Some(2000));
        assert_eq!(context.run_as_group, Some(3000));
        assert_eq!(context.run_as_non_root, Some(true));
        k.allowed_users = v(&["1000", "2000"]);
        k.allowed_groups = v(&["1000"]);
        let err = restricted_as(&img, "image", &k, UserNamespaceRoot::Off).unwrap_err();
        assert!(
            err.to_string().contains("group 3000")
                && err.to_string().contains("allowed_groups: 1000"),
            "{err}"
        );
        img.user = Some("3000".into());
        let err = restricted_as(&img, "image", &k, UserNamespaceRoot::Off).unwrap_err();
        assert!(
            err.to_string().contains("user 3000")
                && err.to_string().contains("allowed_users: 1000, 2000"),
            "{err}"
        );
        img.user = Some("2000:1000".into());
        assert_eq!(
            restricted_as(&img, "image", &k, UserNamespaceRoot::Off)
                .unwrap()
                .run_as_user,
            Some(2000)
        );
    }

    #[test]
    fn services_wait_on_their_healthcheck_port_else_their_ports() {
        let mut s = Service {
            ports: vec![80, 443],
            ..Service::default()
        };
        assert_eq!(readiness_ports(&s, "service").unwrap(), [80, 443]);
        s.variables = vec![
            (HEALTHCHECK_TCP_PORT.into(), "1".into()),
            (HEALTHCHECK_TCP_PORT.into(), " 8080 ".into()),
        ];
        assert_eq!(readiness_ports(&s, "service").unwrap(), [8080]);
        s.variables = vec![(HEALTHCHECK_TCP_PORT.into(), "http".into())];
        let err = readiness_ports(&s, "service \"web\"").unwrap_err();
        assert!(
            err.to_string()
                .contains("service \"web\": HEALTHCHECK_TCP_PORT is \"http\""),
            "{err}"
        );
        assert!(
            readiness_ports(&Service::default(), "s")
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn the_build_container_runs_the_script_whatever_the_images_entrypoint() {
        for cleared in [None, Some(&[][..]), Some(&[""][..]), Some(&["", ""][..])] {
            assert_eq!(
                build_start(&image(cleared), "S".into(), false).unwrap(),
                Start {
                    command: Some(shell()),
                    args: None
                },
                "{cleared:?}"
            );
        }
    }

    #[test]
    fn a_jobs_entrypoint_gets_the_shell_as_its_arguments() {
        assert_eq!(
            build_start(&image(Some(&["/entry.sh", "--x"])), "S".into(), false).unwrap(),
            Start {
                command: Some(v(&["/entry.sh", "--x"])),
                args: Some(shell())
            }
        );
    }

    #[test]
    fn honoring_the_image_entrypoint_passes_only_arguments_unless_cleared() {
        assert_eq!(
            build_start(&image(None), "S".into(), true).unwrap(),
            Start {
                command: None,
                args: Some(shell())
            }
        );
        assert_eq!(
            build_start(&image(Some(&[""])), "S".into(), true).unwrap(),
            Start {
                command: Some(shell()),
                args: None
            }
        );
    }

    #[test]
    fn an_entrypoint_without_a_program_is_refused_by_name() {
        let err = build_start(&image(Some(&["", "-x"])), "S".into(), false).unwrap_err();
        assert!(
            err.to_string()
                .contains("image: the entrypoint's first element is empty"),
            "{err}"
        );
    }

    fn service(entrypoint: Option<&[&str]>, command: Option<&[&str]>) -> Service {
        Service {
            image: image(entrypoint),
            command: command.map(v),
            ..Service::default()
        }
    }

    #[test]
    fn services_start_as_docker_would_start_them() {
        let start = |e, c| service_start(&service(e, c), "service \"img\"");
        assert_eq!(
            start(None, None).unwrap(),
            Start {
                command: None,
                args: None
            }
        );
        assert_eq!(
            start(None, Some(&["--port", "1"])).unwrap(),
            Start {
                command: None,
                args: Some(v(&["--port", "1"]))
            }
        );
        assert_eq!(
            start(Some(&["/bin/srv"]), Some(&["-v"])).unwrap(),
            Start {
                command: Some(v(&["/bin/srv"])),
                args: Some(v(&["-v"]))
            }
        );
        assert_eq!(
            start(Some(&[""]), Some(&["httpd", "-f"])).unwrap(),
            Start {
                command: Some(v(&["httpd", "-f"])),
                args: None
            }
        );
        let err = start(Some(&[""]), None).unwrap_err();
        assert!(
            err.to_string().contains("give the service a `command:`"),
            "{err}"
        );
    }

    #[test]
    fn feature_flags_read_as_gitlab_runner_reads_them() {
        let mut job = crate::pod::samples::sample_jobs("http://v").remove(0).1;
        for (value, on) in [
            ("true", true),
            ("1", true),
            ("TRUE", true),
            ("yes", false),
            ("0", false),
        ] {
            job.variables.push(crate::job::Variable::public(
                "FF_KUBERNETES_HONOR_ENTRYPOINT",
                value,
            ));
            assert_eq!(
                flag_enabled(&job, "FF_KUBERNETES_HONOR_ENTRYPOINT"),
                on,
                "{value}"
            );
        }
    }
}
