//! Exit codes by category, and how a failed command's error picks one.
//! The table is shown at the end of `--help` and in docs/cli.md; scripts
//! depend on it.

/// The exit codes, shown at the end of `--help`.
pub(crate) const EXIT_CODES: &str = "\
Exit codes:
  0  success
  1  failure: a denied policy check, a rejected token, a broken audit chain,
     a rollout not (yet) applied everywhere, a refused annotation
     (migrate --check), any other error
  2  usage error: bad arguments, an invalid policy or input
  3  not found: the secret or version does not exist
  4  permission denied: the policy does not allow it
  5  unauthenticated: the token is missing, unreadable, expired or refused
  6  unavailable: the broker or its secret backend cannot be reached";

/// A failure: a denied check, a rejected token, a broken chain, any other error.
pub(crate) const FAILURE: u8 = 1;
/// Bad arguments, an invalid policy or input. cofferctl's own code (as
/// clap's), not the daemons' EX_USAGE 64: scripts already depend on it.
pub(crate) const USAGE: u8 = 2;
pub(crate) const NOT_FOUND: u8 = 3;
pub(crate) const PERMISSION_DENIED: u8 = 4;
pub(crate) const UNAUTHENTICATED: u8 = 5;
pub(crate) const UNAVAILABLE: u8 = 6;

/// A usage error found after parsing (exit 2).
#[derive(Debug)]
pub(crate) struct UsageError(pub(crate) String);

impl std::fmt::Display for UsageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UsageError {}

/// The exit code of a failed command, by category.
pub(crate) fn code(error: &anyhow::Error) -> u8 {
    if error.downcast_ref::<UsageError>().is_some() {
        return USAGE;
    }
    let Some(error) = error.downcast_ref::<coffer::Error>() else {
        return FAILURE;
    };
    if let coffer::Error::Token { .. } = error {
        return UNAUTHENTICATED;
    }
    match error.code() {
        Some(coffer::Code::NotFound) => NOT_FOUND,
        Some(coffer::Code::PermissionDenied) => PERMISSION_DENIED,
        Some(coffer::Code::Unauthenticated) => UNAUTHENTICATED,
        Some(coffer::Code::Unavailable | coffer::Code::DeadlineExceeded) => UNAVAILABLE,
        Some(coffer::Code::InvalidArgument) => USAGE,
        _ => FAILURE,
    }
}
