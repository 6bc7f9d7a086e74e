//! YAML output for `keyhole-runner render`, so users can diff, review or `kubectl apply` what a
//! job would create.

/// Serializes a Kubernetes object (or anything) as a YAML document.
pub fn to_yaml<T: serde::Serialize>(value: &T) -> Result<String, RenderError> {
    // Through JSON first: k8s-openapi's Serialize emits apiVersion/kind and skips empty fields.
    let json = serde_json::to_value(value).map_err(|e| RenderError(e.to_string()))?;
    serde_saphyr::to_string(&json).map_err(|e| RenderError(e.to_string()))
}

/// An object that could not be written as YAML.
#[derive(Debug, thiserror::Error)]
#[error("writing YAML: {0}")]
pub struct RenderError(String);

#[cfg(test)]
mod tests {
    #[test]
    fn multi_line_scripts_stay_readable_and_round_trip() {
        let value = serde_json::json!({"kind": "Pod", "spec": {"args": ["sh", "-c", "echo 'a'\necho \"b\"\n"]}});
        let yaml = super::to_yaml(&value).unwrap();
        assert!(yaml.contains("kind: Pod"), "{yaml}");
        let back: serde_json::Value = serde_saphyr::from_str(&yaml).unwrap();
        assert_eq!(back, value);
    }
}
