use secrecy::{ExposeSecret as _, SecretSlice};

use super::fields::fields;
use super::{MIN_MASKED_LEN, MaskSet};

/// What one job's log is masked for, gathered value by value, with a warning for each named
/// value that cannot be masked.
///
/// The warnings name values (by secret or variable name, and field), never show them: the
/// broker prints them on stderr before the job starts, so they are in the job's trace above
/// its output.
#[derive(Default)]
pub struct MaskPlan {
    values: Vec<SecretSlice<u8>>,
    warnings: Vec<String>,
}

impl std::fmt::Debug for MaskPlan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MaskPlan")
            .field("values", &self.values.len())
            .field("warnings", &self.warnings)
            .finish()
    }
}

impl MaskPlan {
    pub fn new() -> Self {
        Self::default()
    }

    /// A delivered secret. `json_object` says it is a whole secret (a `k8s:` Secret without a
    /// key, a `vault:` path without a field), delivered as a JSON object of its fields: each
    /// field is masked on its own too, and a field too short to mask is the one warned about.
    pub fn secret(&mut self, name: &str, value: &SecretSlice<u8>, json_object: bool) {
        if json_object {
            for field in fields(value.expose_secret()) {
                self.warn_if_short(&field.value, || {
                    format!("secret {name} field {:?}", field.path)
                });
                self.values.push(field.value);
            }
        } else {
            self.warn_if_short(value, || format!("secret {name}"));
        }
        self.add(value);
    }

    /// A job variable from the per-job Secret, by its name and key.
    pub fn variable(&mut self, name: &str, key: &str, value: &SecretSlice<u8>) {
        self.warn_if_short(value, || {
            format!("job variable {name} (per-job Secret key {key:?})")
        });
        self.add(value);
    }

    /// A value that is not delivered under a name (an input of the broker's own, such as the
    /// ID token): masked all the same, without a warning.
    pub fn other(&mut self, value: &SecretSlice<u8>) {
        self.add(value);
    }

    /// One line per value that cannot be masked, naming it.
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }

    /// The patterns to mask.
    pub fn build(&self) -> MaskSet {
        MaskSet::new(&self.values)
    }

    /// Masking stops at [`MIN_MASKED_LEN`] (see the module docs); a shorter value that the job
    /// gets under a name is reported by `what` it is. An empty value has nothing to show.
    fn warn_if_short(&mut self, value: &SecretSlice<u8>, what: impl FnOnce() -> String) {
        let len = value.expose_secret().len();
        if (1..MIN_MASKED_LEN).contains(&len) {
            self.warnings.push(format!(
                "{} is shorter than {MIN_MASKED_LEN} bytes and cannot be masked in the log",
                what()
            ));
        }
    }

    fn add(&mut self, value: &SecretSlice<u8>) {
        self.values
            .push(SecretSlice::from(value.expose_secret().to_vec()));
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::mask::mask_all;

    fn value(text: &str) -> SecretSlice<u8> {
        SecretSlice::from(text.as_bytes().to_vec())
    }

    fn masked(plan: &MaskPlan, log: &str) -> String {
        String::from_utf8(mask_all(&Arc::new(plan.build()), log.as_bytes())).unwrap()
    }

    const WHOLE: &str = r#"{"password":"db-pass-0123","user":"app-user-77","nested":{"api":"nested-key-0123"},"list":["list-item-0123"],"port":543210987,"quoted":"with \"quotes\" \\ 0123","on":true}"#;

    #[test]
    fn each_field_of_a_whole_secret_is_masked_on_its_own() {
        let mut plan = MaskPlan::new();
        plan.secret("DB", &value(WHOLE), true);
        // `jq -r .password`, `set -x` of an export, and the like print one field.
        for field in [
            "db-pass-0123",
            "app-user-77",
            "nested-key-0123",
            "list-item-0123",
            "543210987",
            r#"with "quotes" \ 0123"#,
        ] {
            assert_eq!(
                masked(&plan, &format!("+ export X={field}\n")),
                "+ export X=[MASKED]\n",
                "{field}"
            );
        }
        // `cat` of the file, and `jq .` (pretty, strings JSON-escaped).
        assert_eq!(masked(&plan, WHOLE), "[MASKED]");
        let pretty = r#"{
  "password": "db-pass-0123",
  "quoted": "with \"quotes\" \\ 0123",
  "on": true
}"#;
        assert_eq!(
            masked(&plan, pretty),
            "{\n  \"password\": \"[MASKED]\",\n  \"quoted\": \"[MASKED]\",\n  \"on\": true\n}"
        );
        assert!(plan.warnings().is_empty(), "{:?}", plan.warnings());
    }

    #[test]
    fn a_field_too_short_to_mask_is_named_in_a_warning() {
        let mut plan = MaskPlan::new();
        plan.secret(
            "DB",
            &value(r#"{"pin":"4321","password":"long-enough-pw","deep":{"k":"x1"}}"#),
            true,
        );
        assert_eq!(
            plan.warnings(),
            [
                "secret DB field \"deep.k\" is shorter than 8 bytes and cannot be masked in the log",
                "secret DB field \"pin\" is shorter than 8 bytes and cannot be masked in the log",
            ]
        );
        assert_eq!(masked(&plan, "long-enough-pw"), "[MASKED]");
    }

    #[test]
    fn a_single_value_that_is_json_is_not_split_into_fields() {
        // The job asked for it as one value (a key file, say), whose fields need not be
        // secret: masking "service_account" everywhere would only garble the log.
        let mut plan = MaskPlan::new();
        plan.secret("KEY_FILE", &value(r#"{"type":"service_account"}"#), false);
        assert_eq!(masked(&plan, "service_account"), "service_account");
    }

    #[test]
    fn a_job_variable_too_short_to_mask_is_named_in_a_warning() {
        let mut plan = MaskPlan::new();
        plan.variable("PIN", "var.PIN", &value("4321"));
        plan.variable("TOKEN", "var.TOKEN", &value("long-token-value"));
        plan.variable("KUBECONFIG", "file.KUBECONFIG", &value("a: b"));
        plan.other(&value("short"));
        assert_eq!(
            plan.warnings(),
            [
                "job variable PIN (per-job Secret key \"var.PIN\") is shorter than 8 bytes and cannot be masked in the log",
                "job variable KUBECONFIG (per-job Secret key \"file.KUBECONFIG\") is shorter than 8 bytes and cannot be masked in the log",
            ]
        );
        assert_eq!(masked(&plan, "long-token-value"), "[MASKED]");
    }

    #[test]
    fn an_empty_value_has_nothing_to_mask_and_no_warning() {
        let mut plan = MaskPlan::new();
        plan.secret("EMPTY", &value(""), false);
        plan.variable("UNSET", "var.UNSET", &value(""));
        plan.secret("NONE", &value("{}"), true);
        assert!(plan.warnings().is_empty(), "{:?}", plan.warnings());
    }

    #[test]
    fn warnings_and_debug_never_show_a_value() {
        let mut plan = MaskPlan::new();
        plan.secret("S", &value("s3cr"), false);
        plan.secret("W", &value(r#"{"f":"f1eld"}"#), true);
        plan.variable("V", "var.V", &value("v4lue"));
        let shown = format!("{plan:?} {:?}", plan.warnings());
        for v in ["s3cr", "f1eld", "v4lue"] {
            assert!(!shown.contains(v), "{shown}");
        }
    }
}
