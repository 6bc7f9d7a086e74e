//! Runner configuration: gitlab-runner's `config.toml` shape plus `[runners.keyhole]`.
//! See `docs/configuration.md` for every key.

mod keys;
mod load;
mod model;
mod rules;

pub use keys::{RefusedKey, kubernetes_key_status};
pub use load::{ConfigError, Loaded, journal_secret_parts, load_file, load_str};
pub use model::*;
pub use rules::{JobIdentity, ServiceAccountChoice, ServiceAccountError, choose_service_account};
