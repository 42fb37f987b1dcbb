//! `coffer-injector`: a mutating admission webhook that adds the Coffer
//! sidecar to pods labelled `coffer.dev/inject: "true"`, configured by their
//! annotations (see [`annotations`]). The webhook is only called for those
//! pods (objectSelector), so its `failurePolicy: Fail` never blocks the rest
//! of the cluster. Invalid annotations are refused with a clear message.
//!
//! The sidecar is added in one of three [`mode::SidecarMode`]s (`native` for
//! Kubernetes 1.29+, `container` and `init-only` for any version), the
//! cluster's default set by `--sidecar-mode`, a pod's own by the annotation
//! `coffer.dev/sidecar-mode`. Pods in an excluded namespace
//! (`--exclude-namespace`; the system namespaces and `coffer` by default)
//! are never mutated, whatever the webhook's namespaceSelector lets through.

pub mod annotations;
pub mod mode;
pub mod patch;
pub mod review;
pub mod server;
