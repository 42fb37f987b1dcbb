//! Against a real kube-apiserver: RBAC of the overlays, OIDC discovery, TokenReview, the webhook (its coffer-env injection too).

mod env_injection;
mod injector;
mod manifests;
mod oidc_discovery;
mod oidc_overlay;
mod tokenreview;
