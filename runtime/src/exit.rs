//! Exit statuses a binary shares: a configuration mistake is [`EX_USAGE`].

/// Exit status for invalid configuration (sysexits `EX_USAGE`), as
/// linkerd2-proxy uses it: the process will fail the same way until its
/// configuration is fixed, so restarting it is no remedy.
pub const EX_USAGE: u8 = 64;

/// A configuration mistake: [`run_main`](crate::run_main) exits with
/// [`EX_USAGE`] when the body fails with one.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(String);

/// A configuration mistake saying `message`, as an error for `?`.
pub fn usage(message: impl Into<String>) -> anyhow::Error {
    UsageError(message.into()).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_usage_error_says_its_message_and_is_found_behind_context() {
        let error = usage("--listen is not an address").context("starting");
        assert!(error.chain().any(|e| e.is::<UsageError>()));
        assert_eq!(format!("{error:#}"), "starting: --listen is not an address");
    }
}
