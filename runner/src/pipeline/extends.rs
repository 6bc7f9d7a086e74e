//! `extends:` as GitLab resolves it: a job (or hidden template) names one or more other
//! top-level entries; their resolved definitions are deep-merged in the order listed (later
//! ones win), then the job's own keys on top. Lists are replaced, never concatenated. Up to 11
//! levels of `extends` are allowed (an entry that extends may have at most 10 ancestors, GitLab's
//! `MAX_NESTING_LEVELS`); cycles are errors.

use std::collections::{HashMap, HashSet};

use super::{
    error::PipelineError,
    yaml::{CopyBudget, Map, Node, Value, deep_merge},
};

/// GitLab's `MAX_NESTING_LEVELS`: most ancestors one entry may have in an `extends` chain.
pub const MAX_EXTENDS_ANCESTORS: usize = 10;

/// Resolves every `extends:` in the top-level configuration, in place.
pub(crate) fn resolve(config: &mut Map) -> Result<(), PipelineError> {
    let keys: Vec<String> = config.keys().cloned().collect();
    let mut heights = HashMap::new();
    for key in &keys {
        check(config, key, &mut Vec::new(), &mut heights)?;
    }
    let mut done = HashSet::new();
    let mut budget = CopyBudget::new(MAX_EXTENDED_NODES, MAX_EXTENDED_BYTES);
    for key in &keys {
        merge(config, key, &mut done, &mut budget)?;
    }
    Ok(())
}

/// Most nodes that `extends:` may copy into jobs (every job gets its own copy of its bases).
const MAX_EXTENDED_NODES: usize = 1_000_000;

/// Most bytes of text (scalars and keys) that `extends:` may copy into jobs: without it, one
/// big value in a template that thousands of jobs extend is copied thousands of times.
pub(crate) const MAX_EXTENDED_BYTES: usize = 64 << 20;

/// The entries `key` extends, if it extends any.
fn extends_of<'m>(config: &'m Map, key: &str) -> Option<&'m Node> {
    config.get(key)?.as_map()?.get("extends")
}

/// Validates `key`'s chain the way GitLab does (unknown names, non-mapping bases, more than
/// [`MAX_EXTENDS_ANCESTORS`] ancestors, cycles) and returns its height: how many entries with
/// `extends:` its longest chain has. Heights are remembered, so shared bases are walked once
/// and the check does not depend on the order of the file.
fn check(
    config: &Map,
    key: &str,
    ancestors: &mut Vec<String>,
    heights: &mut HashMap<String, usize>,
) -> Result<usize, PipelineError> {
    let Some(extends) = extends_of(config, key) else {
        return Ok(0);
    };
    let fail =
        |problem: String| PipelineError::config(&extends.at, Some(key), Some("extends"), problem);
    let too_deep = |ancestors: &[String]| {
        fail(format!(
            "`extends` nests too deep ({}): GitLab allows {} levels",
            chain(ancestors, key),
            MAX_EXTENDS_ANCESTORS + 1
        ))
    };
    if let Some(&height) = heights.get(key) {
        if ancestors.len() + height - 1 > MAX_EXTENDS_ANCESTORS {
            return Err(too_deep(ancestors));
        }
        return Ok(height);
    }
    let bases = base_names(extends).map_err(fail)?;
    let unknown: Vec<&str> = bases
        .iter()
        .filter(|b| !config.contains_key(b.as_str()))
        .map(String::as_str)
        .collect();
    if !unknown.is_empty() {
        return Err(fail(format!(
            "extends unknown entries ({}); name a job or a hidden template (`.name`) of the file",
            unknown.join(", ")
        )));
    }
    let invalid: Vec<&str> = bases
        .iter()
        .filter(|b| config.get(b.as_str()).and_then(Node::as_map).is_none())
        .map(String::as_str)
        .collect();
    if !invalid.is_empty() {
        return Err(fail(format!(
            "extends entries that are not mappings ({})",
            invalid.join(", ")
        )));
    }
    if ancestors.len() > MAX_EXTENDS_ANCESTORS {
        return Err(too_deep(ancestors));
    }
    if ancestors.iter().any(|a| a == key) {
        return Err(fail(format!(
            "circular dependency detected in `extends` ({})",
            chain(ancestors, key)
        )));
    }
    ancestors.push(key.to_owned());
    let mut height = 0;
    for base in &bases {
        height = height.max(check(config, base, ancestors, heights)?);
    }
    ancestors.pop();
    heights.insert(key.to_owned(), height + 1);
    Ok(height + 1)
}

/// Replaces `key`'s definition by its bases' merged definitions with its own keys on top.
/// Runs after [`check`], so chains are finite and at most 11 deep.
fn merge(
    config: &mut Map,
    key: &str,
    done: &mut HashSet<String>,
    budget: &mut CopyBudget,
) -> Result<(), PipelineError> {
    if !done.insert(key.to_owned()) {
        return Ok(());
    }
    let Some(bases) = extends_of(config, key).and_then(|e| base_names(e).ok()) else {
        return Ok(());
    };
    for base in &bases {
        merge(config, base, done, budget)?;
    }
    let mut merged = Map::new();
    for base in &bases {
        if let Some(node) = config.get(base.as_str()) {
            if let Err(overrun) = budget.charge(node) {
                return Err(PipelineError::config(
                    &node.at,
                    Some(key),
                    Some("extends"),
                    format!(
                        "`extends` copies more than {} into jobs; have fewer jobs extend big \
                         templates, or make the templates smaller",
                        budget.limit(overrun)
                    ),
                ));
            }
            if let Value::Map(map) = &node.value {
                deep_merge(&mut merged, map.clone());
            }
        }
    }
    if let Some(slot) = config.get_mut(key) {
        if let Value::Map(own) = std::mem::replace(&mut slot.value, Value::Null) {
            deep_merge(&mut merged, own);
        }
        slot.value = Value::Map(merged);
    }
    Ok(())
}

fn chain(ancestors: &[String], key: &str) -> String {
    let mut names: Vec<&str> = ancestors.iter().map(String::as_str).collect();
    names.push(key);
    names.join(" → ")
}

/// `extends: name` or `extends: [a, b]`.
fn base_names(extends: &Node) -> Result<Vec<String>, String> {
    let expected = "`extends` takes a name or a list of names";
    let one = |node: &Node| match &node.value {
        Value::Str(s) => Ok(s.clone()),
        Value::Int(i) => Ok(i.to_string()),
        _ => Err(format!("{expected}, not {}", node.kind())),
    };
    match &extends.value {
        Value::Seq(items) => items.iter().map(one).collect(),
        _ => Ok(vec![one(extends)?]),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::pipeline::yaml::load_config;

    fn resolved(text: &str) -> Result<Map, PipelineError> {
        let node = load_config(text, &Arc::from("ci.yml")).unwrap();
        let Value::Map(mut map) = node.value else {
            panic!()
        };
        resolve(&mut map)?;
        Ok(map)
    }

    fn value<'a>(map: &'a Map, path: &[&str]) -> &'a Value {
        let mut node = &map[path[0]];
        for k in &path[1..] {
            node = &node.as_map().unwrap()[*k];
        }
        &node.value
    }

    #[test]
    fn multi_level_extends_deep_merges_hashes_and_replaces_arrays() {
        let map = resolved(
            ".base:\n  image: alpine\n  variables: {A: base, B: base}\n  script: [base]\n\
             .mid:\n  extends: .base\n  variables: {B: mid, C: mid}\n  script: [mid1, mid2]\n\
             job:\n  extends: .mid\n  variables: {C: job}\n",
        )
        .unwrap();
        assert_eq!(value(&map, &["job", "image"]), &Value::Str("alpine".into()));
        assert_eq!(
            value(&map, &["job", "variables", "A"]),
            &Value::Str("base".into())
        );
        assert_eq!(
            value(&map, &["job", "variables", "B"]),
            &Value::Str("mid".into())
        );
        assert_eq!(
            value(&map, &["job", "variables", "C"]),
            &Value::Str("job".into())
        );
        let Value::Seq(script) = value(&map, &["job", "script"]) else {
            panic!()
        };
        assert_eq!(script.len(), 2);
    }

    #[test]
    fn later_entries_of_an_extends_list_win_and_own_keys_win_over_all() {
        let map = resolved(
            ".a: {stage: a, image: a, timeout: 1h}\n.b: {stage: b, image: b}\n\
             job: {extends: [.a, .b], image: own}\n",
        )
        .unwrap();
        assert_eq!(value(&map, &["job", "stage"]), &Value::Str("b".into()));
        assert_eq!(value(&map, &["job", "image"]), &Value::Str("own".into()));
        assert_eq!(value(&map, &["job", "timeout"]), &Value::Str("1h".into()));
    }

    #[test]
    fn cycles_unknown_names_and_too_deep_chains_are_errors() {
        let err = resolved(".a: {extends: .b}\n.b: {extends: .a}\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("circular dependency"), "{err}");
        let err = resolved("job: {extends: .nope}\n").unwrap_err().to_string();
        assert!(
            err.contains("unknown entries (.nope)") && err.contains("job \"job\""),
            "{err}"
        );
        let err = resolved(".s: x\njob: {extends: .s}\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("not mappings"), "{err}");

        let chain = |levels: usize| {
            let mut text = String::from(".l0: {stage: deep}\n");
            for i in 1..levels {
                text.push_str(&format!(".l{i}: {{extends: .l{}}}\n", i - 1));
            }
            text
        };
        // A job and 10 ancestors that extend (12 entries in all, the last a plain base) pass;
        // one more extending level is GitLab's "nesting too deep", whatever the key order.
        let map = resolved(&chain(12)).unwrap();
        assert_eq!(value(&map, &[".l11", "stage"]), &Value::Str("deep".into()));
        let err = resolved(&chain(13)).unwrap_err().to_string();
        assert!(err.contains("nests too deep"), "{err}");
        let reversed: String = chain(13).lines().rev().map(|l| format!("{l}\n")).collect();
        let err = resolved(&reversed).unwrap_err().to_string();
        assert!(err.contains("nests too deep"), "{err}");
    }

    #[test]
    fn copies_into_jobs_are_bounded() {
        let err = resolved(&format!(
            ".big: {{v: [{}]}}\n{}",
            vec!["x"; 50_000].join(", "),
            (0..30)
                .map(|i| format!("j{i}: {{extends: .big}}\n"))
                .collect::<String>()
        ))
        .unwrap_err()
        .to_string();
        assert!(err.contains("copies more than"), "{err}");
    }

    #[test]
    fn extends_copies_are_bounded_in_bytes() {
        // 1 MiB of text in a template: 40 jobs extending it copy 40 MiB, 70 would copy 70.
        let big = "x".repeat(1 << 20);
        let template = format!(".t:\n  variables:\n    X: {big}\n  script: [a]\n");
        let jobs = |n: usize| {
            (0..n)
                .map(|i| format!("j{i}: {{extends: .t}}\n"))
                .collect::<String>()
        };
        let ok = resolved(&format!("{template}{}", jobs(40))).map(|m| m.len());
        assert!(matches!(ok, Ok(41)), "{:?}", ok.map_err(|e| e.to_string()));
        let Err(err) = resolved(&format!("{template}{}", jobs(70))) else {
            panic!("70 MiB were copied");
        };
        let err = err.to_string();
        assert!(
            err.contains("`extends` copies more than 64 MiB of text into jobs"),
            "{err}"
        );
    }
}
