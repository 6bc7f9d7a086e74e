//! `script:`, `before_script:`, `after_script:`: a string or a list of strings. Lists may nest
//! (what `!reference` leaves behind) up to 10 levels, GitLab's limit, and are flattened into
//! one list of commands in order.

use super::{
    error::PipelineError,
    yaml::{Node, Value},
};

/// GitLab's limit on nested lists in a script ("a nested array of strings up to 10 levels deep").
const MAX_SCRIPT_NESTING: usize = 10;

/// Reads a script key of `job`.
pub(crate) fn commands(node: &Node, job: &str, key: &str) -> Result<Vec<String>, PipelineError> {
    let mut out = Vec::new();
    match &node.value {
        Value::Str(s) => out.push(s.clone()),
        Value::Seq(items) => flatten(node, items, 1, &mut out, job, key)?,
        _ => {
            return Err(PipelineError::config(
                &node.at,
                Some(job),
                Some(key),
                format!(
                    "is {}; a script is a string or a list of strings (nested lists up to \
                     {MAX_SCRIPT_NESTING} levels)",
                    node.kind()
                ),
            ));
        }
    }
    Ok(out)
}

fn flatten(
    list: &Node,
    items: &[Node],
    level: usize,
    out: &mut Vec<String>,
    job: &str,
    key: &str,
) -> Result<(), PipelineError> {
    if level > MAX_SCRIPT_NESTING {
        return Err(PipelineError::config(
            &list.at,
            Some(job),
            Some(key),
            format!("lists nest deeper than {MAX_SCRIPT_NESTING} levels"),
        ));
    }
    for item in items {
        match &item.value {
            Value::Str(s) => out.push(s.clone()),
            Value::Seq(inner) => flatten(item, inner, level + 1, out, job, key)?,
            Value::Map(_) => {
                return Err(PipelineError::config(
                    &item.at,
                    Some(job),
                    Some(key),
                    "a command is a mapping: an unquoted `: ` inside a command makes YAML read \
                     it as a key; quote the whole command",
                ));
            }
            _ => {
                return Err(PipelineError::config(
                    &item.at,
                    Some(job),
                    Some(key),
                    format!("a command is {}; quote it to make it a string", item.kind()),
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::pipeline::yaml::load_config;

    fn read(text: &str) -> Result<Vec<String>, PipelineError> {
        let node = load_config(text, &Arc::from("ci.yml")).unwrap();
        commands(&node.as_map().unwrap()["script"], "job", "script")
    }

    #[test]
    fn strings_and_nested_lists_flatten_in_order() {
        assert_eq!(read("script: echo hi\n").unwrap(), ["echo hi"]);
        assert_eq!(
            read("script: [a, [b, [c, d]], e]\n").unwrap(),
            ["a", "b", "c", "d", "e"]
        );
        assert_eq!(
            read("script: |\n  multi\n  line\n").unwrap(),
            ["multi\nline\n"]
        );
    }

    #[test]
    fn non_strings_are_errors_that_say_how_to_fix() {
        let err = read("script:\n  - echo a: b\n").unwrap_err().to_string();
        assert!(
            err.contains("quote the whole command") && err.starts_with("ci.yml:2:"),
            "{err}"
        );
        let err = read("script: [42]\n").unwrap_err().to_string();
        assert!(err.contains("a number; quote it"), "{err}");
        let err = read("script: {a: b}\n").unwrap_err().to_string();
        assert!(err.contains("is a mapping; a script is"), "{err}");
        let deep = format!("script: {}x{}\n", "[".repeat(11), "]".repeat(11));
        let err = read(&deep).unwrap_err().to_string();
        assert!(err.contains("deeper than 10"), "{err}");
        let ok = format!("script: {}x{}\n", "[".repeat(10), "]".repeat(10));
        assert_eq!(read(&ok).unwrap(), ["x"]);
    }
}
