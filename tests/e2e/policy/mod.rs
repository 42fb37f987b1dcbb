//! The policy file: lint and live reload.

mod lint;
mod reload;
