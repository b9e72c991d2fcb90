//! Exit codes, and the markers that choose them.
//!
//! `0` success, `1` the migration failed (a helper failed, a stream was
//! rejected, the demo saw a mismatch), `2` bad usage or an I/O error
//! outside the migration itself. A command ended by a signal re-raises it,
//! so its parent sees it killed by that signal (see `interrupt`).

use std::error::Error as StdError;
use std::fmt;

/// Exit code: success.
pub const OK: u8 = 0;
/// Exit code: the migration failed.
pub const MIGRATION_FAILED: u8 = 1;
/// Exit code: bad usage, or an I/O error outside the migration itself.
pub const USAGE: u8 = 2;

/// A usage error found after parsing (a terminal where a stream should
/// go, a bad name): exit code 2.
#[derive(Debug)]
pub struct Usage(pub String);

impl fmt::Display for Usage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl StdError for Usage {}

/// A stream that failed verification or cannot be converted: exit code 1.
#[derive(Debug)]
pub struct Rejected(pub String);

impl fmt::Display for Rejected {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl StdError for Rejected {}

/// The exit code for an error that ended a command: 1 when the migration
/// itself failed (a helper, a rejected stream), 2 for usage and I/O
/// errors. The library's classifiers decide for its own errors.
pub fn code(e: &anyhow::Error) -> u8 {
    // Markers attached with `.context(...)` are found through the error
    // itself; errors that are causes, through the chain.
    if e.downcast_ref::<Usage>().is_some() {
        return USAGE;
    }
    if e.downcast_ref::<Rejected>().is_some() {
        return MIGRATION_FAILED;
    }
    e.chain().find_map(code_of).unwrap_or(USAGE)
}

/// The exit code one error in a chain decides, if it decides one.
fn code_of(cause: &(dyn StdError + 'static)) -> Option<u8> {
    let failed = |yes: bool| if yes { MIGRATION_FAILED } else { USAGE };
    if cause.is::<Usage>() {
        Some(USAGE)
    } else if cause.is::<Rejected>() {
        Some(MIGRATION_FAILED)
    } else if let Some(e) = cause.downcast_ref::<dbus_vmstate::control::Error>() {
        Some(failed(e.is_migration_failure()))
    } else {
        cause
            .downcast_ref::<dbus_vmstate::Error>()
            .map(|e| failed(e.is_migration_failure()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use anyhow::Context;

    #[test]
    fn markers_decide_as_context_and_as_cause() {
        let e = anyhow::Error::new(std::io::Error::other("x")).context(Rejected("r".into()));
        assert_eq!(code(&e), MIGRATION_FAILED);
        let e = anyhow::Error::new(Usage("u".into())).context("outer");
        assert_eq!(code(&e), USAGE);
        let e: anyhow::Result<()> = Err(std::io::Error::other("plain").into());
        assert_eq!(code(&e.context("cannot write").unwrap_err()), USAGE);
    }

    #[test]
    fn library_errors_are_classified_by_the_library() {
        let config = dbus_vmstate::Error::Config {
            reason: "bad".into(),
        };
        assert_eq!(code(&config.into()), USAGE);
        let missing = dbus_vmstate::Error::MissingInStream { id: "a".into() };
        assert_eq!(code(&missing.into()), MIGRATION_FAILED);
    }
}
