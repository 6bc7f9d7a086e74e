//! Which ServiceAccount a job runs as. The ServiceAccount decides what the job may read (its
//! RBAC on Secrets, the Vault role bound to it), so the choice is made from the job's identity
//! by rules the platform team writes, never by the job alone.

use super::model::{KubernetesConfig, ServiceAccountRule};

/// What the rules match on. Comes from GitLab (or the local file for `exec`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobIdentity<'a> {
    pub project_path: &'a str,
    pub ref_name: &'a str,
    pub protected: bool,
}

/// The chosen ServiceAccount and why, for the job log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceAccountChoice {
    pub name: String,
    pub reason: String,
}

fn anchored(re: &str, text: &str) -> bool {
    regex::Regex::new(&format!("^(?:{re})$")).is_ok_and(|r| r.is_match(text))
}

fn matches(rule: &ServiceAccountRule, id: &JobIdentity<'_>) -> bool {
    rule.project.as_deref().is_none_or(|p| p == id.project_path)
        && rule
            .project_regex
            .as_deref()
            .is_none_or(|re| anchored(re, id.project_path))
        && rule.protected.is_none_or(|p| p == id.protected)
        && rule
            .ref_regex
            .as_deref()
            .is_none_or(|re| anchored(re, id.ref_name))
}

/// Applies the rules (first match wins), then a job's `KUBERNETES_SERVICE_ACCOUNT_OVERWRITE`
/// if `service_account_overwrite_allowed` permits it. An overwrite the regex refuses fails the
/// job rather than silently running it as someone else.
pub fn choose_service_account(
    id: &JobIdentity<'_>,
    rules: &[ServiceAccountRule],
    kubernetes: &KubernetesConfig,
    overwrite: Option<&str>,
) -> Result<ServiceAccountChoice, String> {
    if let Some(wanted) = overwrite.filter(|w| !w.is_empty()) {
        return match kubernetes.service_account_overwrite_allowed.as_deref() {
            Some(re) if anchored(re, wanted) => Ok(ServiceAccountChoice {
                name: wanted.into(),
                reason: "KUBERNETES_SERVICE_ACCOUNT_OVERWRITE".into(),
            }),
            Some(re) => Err(format!(
                "KUBERNETES_SERVICE_ACCOUNT_OVERWRITE={wanted:?} does not match the runner's service_account_overwrite_allowed /{re}/; ask the runner's administrators or remove the variable"
            )),
            None => Err(format!(
                "KUBERNETES_SERVICE_ACCOUNT_OVERWRITE={wanted:?} is not allowed on this runner (service_account_overwrite_allowed is unset); remove the variable"
            )),
        };
    }
    if let Some((i, rule)) = rules.iter().enumerate().find(|(_, r)| matches(r, id)) {
        return Ok(ServiceAccountChoice {
            name: rule.service_account.clone(),
            reason: format!("service_account_rules[{i}]"),
        });
    }
    Ok(ServiceAccountChoice {
        name: kubernetes.service_account.clone(),
        reason: "the runner's default".into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules() -> Vec<ServiceAccountRule> {
        vec![
            ServiceAccountRule {
                project: Some("acme/app".into()),
                protected: Some(true),
                service_account: "app-deployer".into(),
                ..Default::default()
            },
            ServiceAccountRule {
                project_regex: Some("acme/.*".into()),
                ref_regex: Some("main|release-.*".into()),
                service_account: "acme-builder".into(),
                ..Default::default()
            },
        ]
    }

    fn id<'a>(project: &'a str, r: &'a str, protected: bool) -> JobIdentity<'a> {
        JobIdentity {
            project_path: project,
            ref_name: r,
            protected,
        }
    }

    #[test]
    fn first_matching_rule_wins_and_unmatched_jobs_get_the_default() {
        let k = KubernetesConfig::default();
        let pick =
            |i: JobIdentity<'_>| choose_service_account(&i, &rules(), &k, None).unwrap().name;
        assert_eq!(pick(id("acme/app", "main", true)), "app-deployer");
        assert_eq!(pick(id("acme/app", "main", false)), "acme-builder");
        assert_eq!(pick(id("acme/app", "feature", false)), "keyhole-job");
        assert_eq!(pick(id("acme/apps", "release-1", false)), "acme-builder");
        // Regexes are anchored: a longer path does not sneak through.
        assert_eq!(pick(id("evil/acme/x", "main", false)), "keyhole-job");
    }

    #[test]
    fn overwrite_needs_the_allow_regex() {
        let mut k = KubernetesConfig::default();
        let i = id("acme/app", "main", true);
        let err = choose_service_account(&i, &rules(), &k, Some("admin")).unwrap_err();
        assert!(err.contains("not allowed"), "{err}");
        k.service_account_overwrite_allowed = Some("team-.*".into());
        let err = choose_service_account(&i, &rules(), &k, Some("admin")).unwrap_err();
        assert!(err.contains("does not match"), "{err}");
        let ok = choose_service_account(&i, &rules(), &k, Some("team-a")).unwrap();
        assert_eq!(ok.name, "team-a");
    }
}
