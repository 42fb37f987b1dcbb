//! The end-to-end tests, one binary: real broker, sidecar, injector and
//! `cofferctl` processes on loopback, driven through the toolkit in
//! `coffer_tests` (tests/src). A module per area, a file per behaviour;
//! run one area or file with a filter, e.g.
//! `cargo test -p coffer-tests --test e2e sidecar::files`.

mod audit;
mod auth;
mod broker;
mod cli;
mod console;
mod deploy;
mod dynamic;
mod env;
mod injector;
mod kube;
mod limits;
mod policy;
mod proxy;
mod reliability;
mod rotation;
mod sdk;
mod sidecar;
mod vault;
