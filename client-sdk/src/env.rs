//! Settings from the environment, shared by the SDK, the sidecar and
//! `cofferctl`: one set of names, read through one small trait so tests
//! pass a map instead of touching the process environment.

/// The broker endpoint (`https://host:port`, `http://127.0.0.1:port`, `unix:/path`).
pub const BROKER: &str = "COFFER_BROKER";
/// A CA bundle (PEM) for the broker's certificate.
pub const CA_FILE: &str = "COFFER_CA_FILE";
/// The token file (default [`crate::TokenSource::PROJECTED_PATH`]).
pub const TOKEN_FILE: &str = "COFFER_TOKEN_FILE";
/// The TLS server name to verify, when it differs from the endpoint's host.
pub const TLS_SERVER_NAME: &str = "COFFER_TLS_SERVER_NAME";

/// Where settings come from; tests pass a map instead of the process env.
pub trait Env {
    /// The value of `name`, if set.
    fn get(&self, name: &str) -> Option<String>;
}

/// The process environment.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcessEnv;

impl Env for ProcessEnv {
    fn get(&self, name: &str) -> Option<String> {
        std::env::var(name).ok()
    }
}

impl<S: std::hash::BuildHasher> Env for std::collections::HashMap<String, String, S> {
    fn get(&self, name: &str) -> Option<String> {
        self.get(name).cloned()
    }
}
