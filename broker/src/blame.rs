//! Whose fix a failure needs. It picks the broker's exit code, which the runner turns into the
//! job's failure reason, so a user is never told to fix what only the platform can.

use keyhole_contract::exit_code;

/// Ordered by precedence: when failures are mixed, the greatest decides the exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Blame {
    /// The platform: Vault or the API server is down, sealed or failing. Trying later may work.
    Platform,
    /// The broker's own settings or inputs (allow-list, token file, per-job Secret keys): the
    /// runner or its deployment.
    Settings,
    /// The job's references or the Vault/RBAC grants behind them: the job's author or an
    /// admin. Retrying cannot fix it, so it wins over the others.
    Reference,
}

impl Blame {
    /// The exit code of `keyhole-broker run` for this kind of failure.
    pub fn exit_code(self) -> i32 {
        match self {
            Blame::Platform => exit_code::UNAVAILABLE,
            Blame::Settings => exit_code::BAD_INPUTS,
            Blame::Reference => exit_code::SECRETS_FAILED,
        }
    }

    /// The exit code for a set of failures: the one whose fix matters most.
    pub fn exit_code_of(blames: impl IntoIterator<Item = Blame>) -> i32 {
        blames
            .into_iter()
            .max()
            .map_or(exit_code::SECRETS_FAILED, Blame::exit_code)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_users_fix_wins_then_settings_then_platform() {
        use Blame::*;
        assert_eq!(Blame::exit_code_of([Platform, Reference]), 64);
        assert_eq!(Blame::exit_code_of([Platform, Settings]), 65);
        assert_eq!(Blame::exit_code_of([Platform, Platform]), 69);
        assert_eq!(Blame::exit_code_of([Settings]), 65);
    }
}
