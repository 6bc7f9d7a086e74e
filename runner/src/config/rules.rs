//! Which ServiceAccount a job runs as. The ServiceAccount decides what the job may read (its
//! RBAC on Secrets, the Vault role bound to it), so the choice is made from the job's identity
//! by rules the platform team writes, never by the job alone.
//!
//! The rules also bound a job's `KUBERNETES_SERVICE_ACCOUNT_OVERWRITE`: an account that a rule
//! names is reserved for the jobs the rules give it to. Without that, any job could pick an
//! account a rule keeps for one project's protected refs, as long as the name matched
//! `service_account_overwrite_allowed`.

use super::model::{KubernetesConfig, ServiceAccountRule};

/// What the rules match on. Every field comes from GitLab's job payload (`job_info`,
/// `git_info`), or for `exec` from the operator's flags, never from a job variable: a job
/// sets its own variables, so it could claim to be any project.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobIdentity<'a> {
    /// `None` when GitLab did not send `job_info.project_full_path`: no rule matches then
    /// (failing closed), and the job gets the runner's default.
    pub project_path: Option<&'a str>,
    pub ref_name: &'a str,
    pub protected: bool,
}

/// The chosen ServiceAccount and why, for the job log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceAccountChoice {
    pub name: String,
    pub reason: String,
}

/// Why a job's `KUBERNETES_SERVICE_ACCOUNT_OVERWRITE` was refused. The job fails rather than
/// silently running as another account. The value is a public job variable naming an account,
/// not a secret, so it is shown.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ServiceAccountError {
    #[error(
        "KUBERNETES_SERVICE_ACCOUNT_OVERWRITE={wanted:?} is not allowed on this runner (service_account_overwrite_allowed is unset); remove the variable"
    )]
    OverwriteNotAllowed { wanted: String },
    #[error(
        "KUBERNETES_SERVICE_ACCOUNT_OVERWRITE={wanted:?} does not match the runner's service_account_overwrite_allowed /{allowed}/; ask the runner's administrators or remove the variable"
    )]
    OverwriteNotMatched { wanted: String, allowed: String },
    #[error(
        "KUBERNETES_SERVICE_ACCOUNT_OVERWRITE={wanted:?}: service_account_rules[{rule}] reserves this ServiceAccount for the jobs it matches, and this job ({identity}) gets {chosen:?} from the rules ({reason}); remove the variable, or ask the runner's administrators to give this job that account with a rule"
    )]
    Reserved {
        wanted: String,
        rule: usize,
        identity: String,
        chosen: String,
        reason: String,
    },
}

fn anchored(re: &str, text: &str) -> bool {
    regex::Regex::new(&format!("^(?:{re})$")).is_ok_and(|r| r.is_match(text))
}

/// Whether `rule` applies to the job. A job without a project identity matches no rule, even
/// one that does not name a project: failing closed keeps an unusual payload on the default.
fn matches(rule: &ServiceAccountRule, id: &JobIdentity<'_>) -> bool {
    let Some(project_path) = id.project_path else {
        return false;
    };
    rule.project.as_deref().is_none_or(|p| p == project_path)
        && rule
            .project_regex
            .as_deref()
            .is_none_or(|re| anchored(re, project_path))
        && rule.protected.is_none_or(|p| p == id.protected)
        && rule
            .ref_regex
            .as_deref()
            .is_none_or(|re| anchored(re, id.ref_name))
}

/// The identity as the job log shows it, to explain a refusal.
fn describe(id: &JobIdentity<'_>) -> String {
    let project = match id.project_path {
        Some(p) => format!("project {p}"),
        None => "no project path from GitLab".to_owned(),
    };
    let protected = if id.protected {
        "protected"
    } else {
        "unprotected"
    };
    format!("{project}, {protected} ref {}", id.ref_name)
}

/// What the rules alone give the job: the first matching rule, else the runner's default.
fn by_rules(
    id: &JobIdentity<'_>,
    rules: &[ServiceAccountRule],
    kubernetes: &KubernetesConfig,
) -> ServiceAccountChoice {
    if let Some((i, rule)) = rules.iter().enumerate().find(|(_, r)| matches(r, id)) {
        return ServiceAccountChoice {
            name: rule.service_account.clone(),
            reason: format!("service_account_rules[{i}]"),
        };
    }
    let reason = if id.project_path.is_none() && !rules.is_empty() {
        "the runner's default: GitLab sent no project path (job_info.project_full_path), so no service_account_rules apply".to_owned()
    } else {
        "the runner's default".to_owned()
    };
    ServiceAccountChoice {
        name: kubernetes.service_account.clone(),
        reason,
    }
}

/// Applies the rules (first match wins), then a job's `KUBERNETES_SERVICE_ACCOUNT_OVERWRITE`.
/// The overwrite may name an account that `service_account_overwrite_allowed` matches and that
/// no rule names, or the very account the rules give this job. An account a rule names is
/// otherwise out of reach: rules are ordered, so an earlier rule can keep a project away from
/// a later rule's account, and the overwrite must not skip that.
pub fn choose_service_account(
    id: &JobIdentity<'_>,
    rules: &[ServiceAccountRule],
    kubernetes: &KubernetesConfig,
    overwrite: Option<&str>,
) -> Result<ServiceAccountChoice, ServiceAccountError> {
    let chosen = by_rules(id, rules, kubernetes);
    let Some(wanted) = overwrite.filter(|w| !w.is_empty()) else {
        return Ok(chosen);
    };
    match kubernetes.service_account_overwrite_allowed.as_deref() {
        None => {
            return Err(ServiceAccountError::OverwriteNotAllowed {
                wanted: wanted.into(),
            });
        }
        Some(re) if !anchored(re, wanted) => {
            return Err(ServiceAccountError::OverwriteNotMatched {
                wanted: wanted.into(),
                allowed: re.into(),
            });
        }
        Some(_) => {}
    }
    if wanted != chosen.name
        && let Some(rule) = rules.iter().position(|r| r.service_account == wanted)
    {
        return Err(ServiceAccountError::Reserved {
            wanted: wanted.into(),
            rule,
            identity: describe(id),
            chosen: chosen.name,
            reason: chosen.reason,
        });
    }
    Ok(ServiceAccountChoice {
        name: wanted.into(),
        reason: "KUBERNETES_SERVICE_ACCOUNT_OVERWRITE".into(),
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
            project_path: Some(project),
            ref_name: r,
            protected,
        }
    }

    fn overwrites_allowed(re: &str) -> KubernetesConfig {
        KubernetesConfig {
            service_account_overwrite_allowed: Some(re.into()),
            ..KubernetesConfig::default()
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
        assert!(err.to_string().contains("not allowed"), "{err}");
        k.service_account_overwrite_allowed = Some("team-.*".into());
        let err = choose_service_account(&i, &rules(), &k, Some("admin")).unwrap_err();
        assert!(err.to_string().contains("does not match"), "{err}");
        let ok = choose_service_account(&i, &rules(), &k, Some("team-a")).unwrap();
        assert_eq!(ok.name, "team-a");
        assert_eq!(ok.reason, "KUBERNETES_SERVICE_ACCOUNT_OVERWRITE");
        // An empty variable is no overwrite.
        let ok = choose_service_account(&i, &rules(), &k, Some("")).unwrap();
        assert_eq!(ok.name, "app-deployer");
    }

    #[test]
    fn overwrite_cannot_pick_an_account_a_rule_reserves_for_other_jobs() {
        let k = overwrites_allowed("app-.*|acme-.*|team-.*");
        // The reproduction of issue 17 item 5: another project, unprotected branch.
        let evil = id("evil/x", "feature", false);
        let err = choose_service_account(&evil, &rules(), &k, Some("app-deployer")).unwrap_err();
        let shown = err.to_string();
        assert!(shown.contains("service_account_rules[0]"), "{shown}");
        assert!(
            shown.contains("project evil/x, unprotected ref feature"),
            "{shown}"
        );
        assert!(shown.contains("remove the variable"), "{shown}");
        // acme/app itself, but on an unprotected branch: rule 0 does not give it app-deployer.
        let unprotected = id("acme/app", "feature", false);
        assert!(choose_service_account(&unprotected, &rules(), &k, Some("app-deployer")).is_err());
        // Accounts that no rule names stay open to the overwrite.
        let ok = choose_service_account(&evil, &rules(), &k, Some("team-a")).unwrap();
        assert_eq!(ok.name, "team-a");
    }

    #[test]
    fn overwrite_may_repeat_the_account_the_rules_give_but_not_skip_an_earlier_rule() {
        let k = overwrites_allowed("app-.*|acme-.*");
        let deployer = id("acme/app", "main", true);
        let ok = choose_service_account(&deployer, &rules(), &k, Some("app-deployer")).unwrap();
        assert_eq!(ok.name, "app-deployer");
        // acme/app on protected main also fits rule 1, but rule 0 comes first: the rules give it
        // app-deployer, so acme-builder is not its to pick (an earlier rule can be an exclusion).
        let err =
            choose_service_account(&deployer, &rules(), &k, Some("acme-builder")).unwrap_err();
        assert!(
            matches!(err, ServiceAccountError::Reserved { rule: 1, .. }),
            "{err}"
        );
        let builder = id("acme/lib", "main", false);
        let ok = choose_service_account(&builder, &rules(), &k, Some("acme-builder")).unwrap();
        assert_eq!(ok.name, "acme-builder");
    }

    #[test]
    fn a_rule_naming_the_default_account_reserves_it_too() {
        let mut rules = rules();
        rules.push(ServiceAccountRule {
            protected: Some(false),
            service_account: "keyhole-job".into(),
            ..Default::default()
        });
        let k = KubernetesConfig {
            service_account: "ci-default".into(),
            ..overwrites_allowed("keyhole-job|ci-.*")
        };
        let protected = id("other/x", "main", true);
        assert!(choose_service_account(&protected, &rules, &k, Some("keyhole-job")).is_err());
        let unprotected = id("other/x", "main", false);
        let ok = choose_service_account(&unprotected, &rules, &k, Some("keyhole-job")).unwrap();
        assert_eq!(ok.name, "keyhole-job");
    }

    #[test]
    fn without_a_project_identity_no_rule_matches_and_reserved_accounts_stay_closed() {
        let mut rules = rules();
        // Even a rule that names no project: the job's identity is incomplete, so fail closed.
        rules.push(ServiceAccountRule {
            protected: Some(true),
            service_account: "protected-builder".into(),
            ..Default::default()
        });
        let anonymous = JobIdentity {
            project_path: None,
            ref_name: "main",
            protected: true,
        };
        let k = overwrites_allowed("app-.*|protected-.*|team-.*");
        let chosen = choose_service_account(&anonymous, &rules, &k, None).unwrap();
        assert_eq!(chosen.name, "keyhole-job");
        assert!(
            chosen.reason.contains("GitLab sent no project path")
                && chosen.reason.contains("job_info.project_full_path"),
            "{}",
            chosen.reason
        );
        for reserved in ["app-deployer", "protected-builder"] {
            let err = choose_service_account(&anonymous, &rules, &k, Some(reserved)).unwrap_err();
            assert!(
                err.to_string().contains("no project path from GitLab"),
                "{err}"
            );
        }
        assert_eq!(
            choose_service_account(&anonymous, &rules, &k, Some("team-a"))
                .unwrap()
                .name,
            "team-a"
        );
        // With no rules at all, nothing is missing and the reason stays short.
        let plain = choose_service_account(&anonymous, &[], &k, None).unwrap();
        assert_eq!(plain.reason, "the runner's default");
    }
}
