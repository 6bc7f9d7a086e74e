//! Typed, path-aware reads from a parsed JSON payload.
//!
//! The job payload holds secrets (the job token, variable values), so its errors must name the
//! field at fault and the JSON type found, never the value. Deserialising with serde derive
//! would put values into "invalid type" messages; reading through these accessors keeps every
//! error to a field path such as `git_info.sha` or `variables[3].key`.

use serde_json::{Map, Value};

use super::error::PayloadError;

/// A JSON object together with its path in the payload, for error messages.
#[derive(Clone)]
pub(crate) struct Obj<'a> {
    path: String,
    map: &'a Map<String, Value>,
}

impl std::fmt::Debug for Obj<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The map may hold secrets: show only where we are.
        f.debug_struct("Obj").field("path", &self.path).finish()
    }
}

/// The JSON type name of a value, for "expected X, found Y" errors.
pub(crate) fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// `parent.key`, or `key` at the top level.
pub(crate) fn join(parent: &str, key: &str) -> String {
    if parent.is_empty() {
        key.to_owned()
    } else {
        format!("{parent}.{key}")
    }
}

fn wrong_type(field: String, expected: &'static str, found: &Value) -> PayloadError {
    PayloadError::WrongType {
        field,
        expected,
        found: type_name(found),
    }
}

impl<'a> Obj<'a> {
    /// The top-level object of a payload.
    pub(crate) fn root(value: &'a Value) -> Result<Self, PayloadError> {
        match value {
            Value::Object(map) => Ok(Self {
                path: String::new(),
                map,
            }),
            other => Err(wrong_type("(the payload)".into(), "an object", other)),
        }
    }

    /// Wraps an object found at `path`.
    pub(crate) fn at(path: String, value: &'a Value) -> Result<Self, PayloadError> {
        match value {
            Value::Object(map) => Ok(Self { path, map }),
            other => Err(wrong_type(path, "an object", other)),
        }
    }

    pub(crate) fn field(&self, key: &str) -> String {
        join(&self.path, key)
    }

    /// The object's keys, for refusing the ones a caller does not know.
    pub(crate) fn keys(&self) -> impl Iterator<Item = &'a str> {
        self.map.keys().map(String::as_str)
    }

    /// The value at `key`; JSON `null` counts as absent (Rails sends `nil` for unset fields).
    pub(crate) fn get(&self, key: &str) -> Option<&'a Value> {
        self.map.get(key).filter(|v| !v.is_null())
    }

    fn required(&self, key: &str) -> Result<&'a Value, PayloadError> {
        self.get(key).ok_or_else(|| PayloadError::Missing {
            field: self.field(key),
        })
    }

    pub(crate) fn req_str(&self, key: &str) -> Result<&'a str, PayloadError> {
        let v = self.required(key)?;
        v.as_str()
            .ok_or_else(|| wrong_type(self.field(key), "a string", v))
    }

    pub(crate) fn opt_str(&self, key: &str) -> Result<Option<&'a str>, PayloadError> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_str()
                .map(Some)
                .ok_or_else(|| wrong_type(self.field(key), "a string", v)),
        }
    }

    pub(crate) fn req_u64(&self, key: &str) -> Result<u64, PayloadError> {
        let v = self.required(key)?;
        v.as_u64()
            .ok_or_else(|| wrong_type(self.field(key), "a non-negative integer", v))
    }

    pub(crate) fn opt_u64(&self, key: &str) -> Result<Option<u64>, PayloadError> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_u64()
                .map(Some)
                .ok_or_else(|| wrong_type(self.field(key), "a non-negative integer", v)),
        }
    }

    /// A boolean that defaults to `false` when absent, like Go's zero value.
    pub(crate) fn flag(&self, key: &str) -> Result<bool, PayloadError> {
        match self.get(key) {
            None => Ok(false),
            Some(v) => v
                .as_bool()
                .ok_or_else(|| wrong_type(self.field(key), "a boolean", v)),
        }
    }

    pub(crate) fn req_obj(&self, key: &str) -> Result<Obj<'a>, PayloadError> {
        Obj::at(self.field(key), self.required(key)?)
    }

    pub(crate) fn opt_obj(&self, key: &str) -> Result<Option<Obj<'a>>, PayloadError> {
        self.get(key)
            .map(|v| Obj::at(self.field(key), v))
            .transpose()
    }

    /// The objects of an array; absent is empty.
    pub(crate) fn objects(&self, key: &str) -> Result<Vec<Obj<'a>>, PayloadError> {
        let field = self.field(key);
        self.array(key)?
            .iter()
            .enumerate()
            .map(|(i, v)| Obj::at(format!("{field}[{i}]"), v))
            .collect()
    }

    /// An array; absent is empty.
    pub(crate) fn array(&self, key: &str) -> Result<&'a [Value], PayloadError> {
        match self.get(key) {
            None => Ok(&[]),
            Some(Value::Array(items)) => Ok(items),
            Some(v) => Err(wrong_type(self.field(key), "an array", v)),
        }
    }

    /// A list of strings, `None` when absent (so `[]` and "not given" stay distinct, as
    /// `image:entrypoint: [""]`-style overrides need).
    pub(crate) fn opt_str_list(&self, key: &str) -> Result<Option<Vec<String>>, PayloadError> {
        let Some(v) = self.get(key) else {
            return Ok(None);
        };
        let Value::Array(items) = v else {
            return Err(wrong_type(self.field(key), "an array of strings", v));
        };
        items
            .iter()
            .enumerate()
            .map(|(i, item)| {
                item.as_str().map(str::to_owned).ok_or_else(|| {
                    wrong_type(format!("{}[{i}]", self.field(key)), "a string", item)
                })
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Some)
    }

    /// A list of strings; absent is empty.
    pub(crate) fn str_list(&self, key: &str) -> Result<Vec<String>, PayloadError> {
        Ok(self.opt_str_list(key)?.unwrap_or_default())
    }
}
