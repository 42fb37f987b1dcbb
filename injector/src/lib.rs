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
//!
//! After injection the webhook also answers UPDATEs of pods and of their
//! `ephemeralcontainers` subresource, refusing those that change what it
//! added ([`guard`]). Templates are rendered at admission as the sidecar
//! renders them ([`template`]). Reviews are read into bounded, borrowed
//! structs ([`pod`]), and the server bounds bodies, handshakes, connections
//! and time per request ([`server`]), so no caller can take the webhook
//! down and with it every opted-in pod (`failurePolicy: Fail`).
//!
//! With `coffer.dev/env`, the app's containers run `coffer-env` in front of
//! their own command, which resolves `coffer:` references in their
//! environment variables ([`env`]; alone, without files, no sidecar).

pub mod access;
pub mod annotations;
pub mod env;
pub mod gotemplate;
pub mod guard;
pub mod mode;
pub mod options;
pub mod patch;
pub mod pod;
pub mod proxies;
pub mod review;
pub mod server;
pub mod template;
pub mod vault_k8s;
