//! GitLab's `!reference [entry, key, ...]` tag: replaced by the value found at that path of the
//! configuration after includes and `extends:` are merged (GitLab's order). A referenced value
//! may hold references itself, up to 10 levels (GitLab's limit); a reference that needs itself
//! is a cycle. Inside `script:` lists the substituted list stays nested; the job's script
//! reader flattens it as GitLab does.

use std::collections::HashMap;

use super::{
    error::PipelineError,
    yaml::{CopyBudget, Map, Node, Overrun, Value},
};

/// How many references may nest inside one another.
pub const MAX_REFERENCE_DEPTH: usize = 10;

/// Most nodes the configuration may have once references are resolved (hostile input could
/// otherwise make references fan out exponentially).
const MAX_RESOLVED_NODES: usize = 3_000_000;

/// Most bytes of text (scalars and keys) the configuration may hold once references are
/// resolved: few nodes can carry much text, so one big value referenced by thousands of jobs
/// would otherwise be copied thousands of times.
pub(crate) const MAX_RESOLVED_BYTES: usize = 256 << 20;

/// Resolves every `!reference` of the configuration.
pub(crate) fn resolve(config: Map) -> Result<Map, PipelineError> {
    resolve_within(
        config,
        CopyBudget::new(MAX_RESOLVED_NODES, MAX_RESOLVED_BYTES),
    )
}

/// [`resolve`] with the resolved configuration bounded by `budget`.
fn resolve_within(config: Map, budget: CopyBudget) -> Result<Map, PipelineError> {
    let mut resolver = Resolver {
        config: &config,
        memo: HashMap::new(),
        in_progress: Vec::new(),
        budget,
    };
    let mut out = Map::with_capacity(config.len());
    for (key, node) in &config {
        let (resolved, _) = resolver.deep(node, 0)?;
        out.insert(key.clone(), resolved);
    }
    Ok(out)
}

struct Resolver<'c> {
    config: &'c Map,
    /// Path → (resolved value, how many references nest in it, itself included).
    memo: HashMap<Vec<String>, (Node, usize)>,
    in_progress: Vec<Vec<String>>,
    /// What the resolved configuration may still hold.
    budget: CopyBudget,
}

impl Resolver<'_> {
    fn too_big(&self, overrun: Overrun, at: &Node) -> PipelineError {
        PipelineError::config(
            &at.at,
            None,
            None,
            format!(
                "!reference tags expand the configuration beyond {}; reference big values \
                 from fewer places, or make them smaller",
                self.budget.limit(overrun)
            ),
        )
    }

    /// Resolves the references inside `node`; returns the new node and the deepest reference
    /// nesting found in it.
    fn deep(&mut self, node: &Node, depth: usize) -> Result<(Node, usize), PipelineError> {
        if let Err(overrun) = self.budget.take(1, node.text_len()) {
            return Err(self.too_big(overrun, node));
        }
        let mut height = 0;
        let value = match &node.value {
            Value::Reference(args) => return self.reference(node, args, depth),
            Value::Seq(items) => {
                let mut out = Vec::with_capacity(items.len());
                for item in items {
                    let (resolved, h) = self.deep(item, depth)?;
                    height = height.max(h);
                    out.push(resolved);
                }
                Value::Seq(out)
            }
            Value::Map(map) => {
                let mut out = Map::with_capacity(map.len());
                for (key, item) in map {
                    let (resolved, h) = self.deep(item, depth)?;
                    height = height.max(h);
                    out.insert(key.clone(), resolved);
                }
                Value::Map(out)
            }
            other => other.clone(),
        };
        Ok((Node::new(value, node.at.clone()), height))
    }

    fn reference(
        &mut self,
        node: &Node,
        args: &[Node],
        depth: usize,
    ) -> Result<(Node, usize), PipelineError> {
        let fail = |problem: String| PipelineError::config(&node.at, None, None, problem);
        let path: Option<Vec<String>> =
            args.iter().map(|a| a.as_str().map(str::to_owned)).collect();
        let path = match path {
            Some(path) if !path.is_empty() => path,
            _ => {
                return Err(fail(
                    "!reference takes a non-empty list of names: !reference [job, key]".to_owned(),
                ));
            }
        };
        let shown = format!("!reference [{}]", path.join(", "));
        let too_deep = || {
            fail(format!(
                "{shown}: references nest deeper than {MAX_REFERENCE_DEPTH} levels (GitLab's limit)"
            ))
        };
        if depth >= MAX_REFERENCE_DEPTH {
            return Err(too_deep());
        }
        if self.in_progress.contains(&path) {
            return Err(fail(format!(
                "{shown} is part of a circular chain of references"
            )));
        }
        if let Some((done, height)) = self.memo.get(&path).cloned() {
            if depth + height > MAX_REFERENCE_DEPTH {
                return Err(too_deep());
            }
            if let Err(overrun) = self.budget.charge(&done) {
                return Err(self.too_big(overrun, node));
            }
            return Ok((done, height));
        }
        let Some(target) = dig(self.config, &path) else {
            return Err(fail(format!(
                "{shown} could not be found; name an entry of the file and keys inside it"
            )));
        };
        self.in_progress.push(path.clone());
        let resolved = self.deep(target, depth + 1);
        self.in_progress.pop();
        let (resolved, inner) = resolved?;
        let height = inner + 1;
        if depth + height > MAX_REFERENCE_DEPTH {
            return Err(too_deep());
        }
        self.memo.insert(path, (resolved.clone(), height));
        Ok((resolved, height))
    }
}

/// The value at `path`, as Ruby's `Hash#dig` finds it: only through mappings; null and
/// `false` count as not found, as in GitLab.
fn dig<'c>(config: &'c Map, path: &[String]) -> Option<&'c Node> {
    let (first, rest) = path.split_first()?;
    let mut node = config.get(first)?;
    for key in rest {
        node = node.as_map()?.get(key)?;
    }
    match node.value {
        Value::Null | Value::Bool(false) => None,
        _ => Some(node),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::pipeline::yaml::load_config;

    fn resolved(text: &str) -> Result<Map, PipelineError> {
        let node = load_config(text, &Arc::from("ci.yml")).unwrap();
        let Value::Map(map) = node.value else {
            panic!()
        };
        resolve(map)
    }

    fn strings(node: &Node) -> Vec<String> {
        match &node.value {
            Value::Str(s) => vec![s.clone()],
            Value::Seq(items) => items.iter().flat_map(strings).collect(),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn references_are_replaced_by_the_referenced_values() {
        let map = resolved(
            ".setup:\n  script: [a, b]\n  vars: {X: '1'}\n\
             job:\n  script:\n    - !reference [.setup, script]\n    - c\n  variables: !reference [.setup, vars]\n",
        )
        .unwrap();
        let job = map["job"].as_map().unwrap();
        assert_eq!(strings(&job["script"]), ["a", "b", "c"]);
        // The referenced list stays one nested item; the script reader flattens it.
        let Value::Seq(items) = &job["script"].value else {
            panic!()
        };
        assert!(matches!(items[0].value, Value::Seq(_)));
        assert_eq!(
            job["variables"].as_map().unwrap()["X"].value,
            Value::Str("1".into())
        );
    }

    #[test]
    fn nested_references_resolve_up_to_ten_levels() {
        let chain = |levels: usize| {
            let mut text = String::from(".r0: {s: [base]}\n");
            for i in 1..levels {
                text.push_str(&format!(
                    ".r{i}: {{s: [!reference [.r{}, s], l{i}]}}\n",
                    i - 1
                ));
            }
            text.push_str(&format!(
                "job: {{script: [!reference [.r{}, s]]}}\n",
                levels - 1
            ));
            text
        };
        // job → .r9 → ... → .r0: ten references nested in one another.
        let map = resolved(&chain(10)).unwrap();
        assert_eq!(strings(&map["job"].as_map().unwrap()["script"]).len(), 10);
        let err = resolved(&chain(11)).unwrap_err().to_string();
        assert!(err.contains("nest deeper than 10"), "{err}");
    }

    #[test]
    fn missing_circular_and_malformed_references_are_errors() {
        let err = resolved("job: {script: !reference [.nope, script]}\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("!reference [.nope, script] could not be found"),
            "{err}"
        );
        assert!(err.starts_with("ci.yml:1:"), "{err}");
        let err = resolved(".a: {s: !reference [.b, s]}\n.b: {s: !reference [.a, s]}\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("circular"), "{err}");
        let err = resolved("job: {script: !reference []}\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("non-empty list"), "{err}");
        let err = resolved(".a: {s: [x]}\njob: {script: !reference [.a, s, deeper]}\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("could not be found"), "{err}");
    }

    #[test]
    fn fan_out_is_bounded() {
        let mut text = String::from(".l0: {s: [x, x, x, x, x, x, x, x]}\n");
        for i in 1..10 {
            let r = format!("!reference [.l{}, s]", i - 1);
            text.push_str(&format!(".l{i}: {{s: [{}]}}\n", vec![r; 8].join(", ")));
        }
        let err = resolved(&text).unwrap_err().to_string();
        assert!(err.contains("expand the configuration"), "{err}");
    }

    #[test]
    fn resolved_text_is_bounded_in_bytes() {
        // Few nodes, much text: 20 references to a 100-byte value, about 2.5 KB in all.
        let value = "x".repeat(100);
        let mut text = format!(".t: {{v: {value}}}\n");
        for i in 0..20 {
            text.push_str(&format!(
                "j{i}: {{script: [a], variables: {{X: !reference [.t, v]}}}}\n"
            ));
        }
        let Value::Map(map) = load_config(&text, &Arc::from("ci.yml")).unwrap().value else {
            panic!()
        };
        let err = resolve_within(map.clone(), CopyBudget::new(usize::MAX, 1000))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("expand the configuration beyond 1000 bytes of text"),
            "{err}"
        );
        assert!(resolve_within(map, CopyBudget::new(usize::MAX, 10_000)).is_ok());
    }
}
