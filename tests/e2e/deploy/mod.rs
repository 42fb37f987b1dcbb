//! What deploy/ and docs/ ship: manifests, a smoke run of them, the examples in the docs.

mod audit_sizing;
mod docs_examples;
mod manifests;
mod smoke;
