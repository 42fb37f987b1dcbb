//! `coffer-env`: references in environment variables resolved through a
//! real broker, the app exec'd (no shell anywhere), failures closed, and
//! `--restart-on-change` restarting, forwarding signals and acknowledging.

mod distroless;
mod exit_status;
mod failures;
mod grace_period;
mod restart;
