//! How the sidecar is added to a pod: the cluster's default is the
//! injector's `--sidecar-mode`, and a pod may choose another with the
//! annotation `coffer.dev/sidecar-mode`.
//!
//! | mode | Kubernetes | what the pod gets |
//! | ---- | ---------- | ----------------- |
//! | `native` | 1.29+ (1.28 with the `SidecarContainers` gate) | the sidecar as the first init container with `restartPolicy: Always` and startup, readiness and liveness probes: files before the app starts, kept current, stopped after the app |
//! | `container` | any | the sidecar with `--once` as the first init container (files before the app starts) and the long-running sidecar as the first ordinary container, with readiness and liveness probes (files kept current) |
//! | `init-only` | any | only the `--once` init container: files written once at pod start, never rotated |
//!
//! Outside `native` no field is used that an API server older than 1.28
//! prunes or refuses: no `restartPolicy` and no probes on init containers,
//! and only `httpGet` probes (gRPC probes need 1.24).

use std::{fmt, str::FromStr};

/// How the sidecar is added to a pod (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SidecarMode {
    /// An init container with `restartPolicy: Always` (Kubernetes 1.29+).
    #[default]
    Native,
    /// A `--once` init container and an ordinary sidecar container.
    Container,
    /// A `--once` init container only: no rotation.
    InitOnly,
}

/// A mode name that is not `native`, `container` or `init-only`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("expected \"native\", \"container\" or \"init-only\", not {0:?}")]
pub struct UnknownMode(pub String);

impl SidecarMode {
    /// Every mode, in the order the docs list them.
    pub const ALL: [SidecarMode; 3] = [Self::Native, Self::Container, Self::InitOnly];

    /// The name used by the flag and the annotation.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Native => "native",
            Self::Container => "container",
            Self::InitOnly => "init-only",
        }
    }
}

impl FromStr for SidecarMode {
    type Err = UnknownMode;

    fn from_str(name: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|mode| mode.as_str() == name)
            .ok_or_else(|| UnknownMode(name.to_string()))
    }
}

impl fmt::Display for SidecarMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_mode_parses_from_its_name() {
        for mode in SidecarMode::ALL {
            assert_eq!(mode.as_str().parse(), Ok(mode));
        }
    }

    #[test]
    fn names_are_exact() {
        for name in ["Native", "init_only", "initonly", " container", ""] {
            assert_eq!(
                name.parse::<SidecarMode>(),
                Err(UnknownMode(name.to_string()))
            );
        }
    }
}
