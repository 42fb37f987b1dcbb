//! `coffer-injector`: a mutating admission webhook that adds the Coffer
//! sidecar to pods labelled `coffer.dev/inject: "true"`, configured by their
//! annotations (see [`annotations`]). The webhook is only called for those
//! pods (objectSelector), so its `failurePolicy: Fail` never blocks the rest
//! of the cluster. Invalid annotations are refused with a clear message.

pub mod annotations;
pub mod patch;
pub mod review;
pub mod server;
