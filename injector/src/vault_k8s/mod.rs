//! Moving from Vault Agent: every annotation vault-k8s defines has a rule
//! ([`rules::ROWS`], the table of docs/deploy.md): translated into the
//! `coffer.dev/` annotations with the same meaning ([`translate()`]), its
//! Go templates converted ([`crate::gotemplate`]); ignored with a warning in
//! the admission response; or refused, naming the annotation and what to
//! write instead. The injector translates at admission; `cofferctl migrate`
//! rewrites manifests with the same code.

pub mod admit;
pub mod command;
pub mod rules;
pub mod translate;

pub use admit::{Admitted, admit};
pub use translate::{Outcome, Translation, VAULT_PREFIX, broker_path, go_bool, translate};

#[cfg(test)]
mod tests;
