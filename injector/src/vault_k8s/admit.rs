//! At admission: a pod's annotations with vault-k8s's translated, its
//! refusals as one error, and the warnings for the response.

use std::collections::BTreeMap;

use super::translate::{VAULT_PREFIX, translate};
use crate::{annotations::AnnotationError, pod::Annotations};

/// A pod's annotations once vault-k8s's are translated.
#[derive(Debug, Clone)]
pub struct Admitted {
    pairs: Vec<(String, String)>,
    /// The AdmissionReview warnings: every ignored annotation, by name.
    pub warnings: Vec<String>,
    origins: BTreeMap<String, String>,
}

impl Admitted {
    /// The `coffer.dev/` (and other read) annotations, vault-k8s's
    /// translated in.
    pub fn annotations(&self) -> Annotations<'_> {
        Annotations::from_pairs(self.pairs.iter().map(|(k, v)| (k.as_str(), v.as_str())))
    }

    /// `error` naming the vault-k8s annotation a translated one came from.
    pub fn in_user_terms(&self, error: AnnotationError) -> AnnotationError {
        match error {
            AnnotationError::Template {
                annotation,
                file,
                reason,
            } => AnnotationError::Template {
                annotation: self.origins.get(&annotation).cloned().unwrap_or(annotation),
                file,
                reason,
            },
            AnnotationError::BadValue { annotation, reason } => AnnotationError::BadValue {
                annotation: self.origins.get(&annotation).cloned().unwrap_or(annotation),
                reason,
            },
            other => other,
        }
    }
}

/// Translates the pod's vault-k8s annotations (the pod opts in to Coffer):
/// `Err` naming every refused one.
pub fn admit(annotations: &Annotations<'_>) -> Result<Admitted, AnnotationError> {
    let translation = translate(annotations.iter(), true);
    let refused: Vec<(String, String)> = translation
        .refusals()
        .map(|(a, why)| (a.to_string(), why.to_string()))
        .collect();
    if !refused.is_empty() {
        return Err(AnnotationError::VaultK8s(refused));
    }
    let mut pairs: BTreeMap<String, String> = annotations
        .iter()
        .filter(|(k, _)| !k.starts_with(VAULT_PREFIX))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    pairs.extend(translation.annotations.clone());
    Ok(Admitted {
        pairs: pairs.into_iter().collect(),
        warnings: translation.warnings(),
        origins: translation.origins,
    })
}
