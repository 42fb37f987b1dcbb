//! The SPIFFE trust domain a certificate names: it follows the issuer of
//! the caller's token, so two clusters' `shop/web` are two identities.

use std::collections::BTreeMap;

use super::{
    error::ConfigError,
    mounts::{Engine, MountConfig},
};

/// The trust domain of a single-issuer setup that names none.
pub const DEFAULT_TRUST_DOMAIN: &str = "cluster.local";

/// Whether `name` is a SPIFFE trust domain: lowercase letters, digits,
/// `.`, `-` and `_`, at most 255 of them.
pub fn valid_trust_domain(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 255
        && name.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'-' | b'_')
        })
}

/// Gives each `pki` mount the trust domain of every trusted issuer:
/// `issuers` is each authenticator's issuer and its `trustDomain`.
///
/// Two clusters' `shop/web` must not get one SPIFFE ID, so the trust
/// domain follows the issuer of the caller's token. With one issuer it
/// is the authenticator's `trustDomain`, else the mount's, else
/// `cluster.local`. With several, every issuer needs its own
/// `trustDomain` and a mount may not set one: the configuration is
/// refused at start rather than certificates issued under a guess.
pub(super) fn resolve(
    mounts: &mut [MountConfig],
    issuers: &[(String, Option<String>)],
) -> Result<(), ConfigError> {
    let invalid = |m: String| Err(ConfigError::Invalid(m));
    for (issuer, domain) in issuers {
        if let Some(domain) = domain
            && !valid_trust_domain(domain)
        {
            return invalid(format!(
                "issuer {issuer:?}: trustDomain {domain:?} is not a SPIFFE trust domain \
                 (lowercase letters, digits, '.', '-', '_')"
            ));
        }
    }
    for mount in mounts.iter_mut().filter(|m| m.engine == Engine::Pki) {
        if let Some(domain) = &mount.trust_domain
            && !valid_trust_domain(domain)
        {
            return invalid(format!(
                "mount {}: trustDomain {domain:?} is not a SPIFFE trust domain",
                mount.prefix
            ));
        }
        let domains = match issuers {
            [] => BTreeMap::new(),
            [(issuer, own)] => {
                let domain = match (own, &mount.trust_domain) {
                    (Some(a), Some(b)) if a != b => {
                        return invalid(format!(
                            "mount {}: trustDomain {b:?} differs from issuer {issuer:?}'s \
                             trustDomain {a:?}: give it in one place",
                            mount.prefix
                        ));
                    }
                    (Some(a), _) => a.clone(),
                    (None, Some(b)) => b.clone(),
                    (None, None) => DEFAULT_TRUST_DOMAIN.to_string(),
                };
                BTreeMap::from([(issuer.clone(), domain)])
            }
            several => {
                if mount.trust_domain.is_some() {
                    return invalid(format!(
                        "mount {}: with several issuers the trust domain follows the \
                         issuer: set trustDomain on each authenticator in --auth-config, \
                         not on the mount",
                        mount.prefix
                    ));
                }
                let missing: Vec<&str> = several
                    .iter()
                    .filter(|(_, d)| d.is_none())
                    .map(|(i, _)| i.as_str())
                    .collect();
                if !missing.is_empty() {
                    return invalid(format!(
                        "mount {}: certificates name the caller's trust domain, and with \
                         several issuers each needs its own: set trustDomain for {} in \
                         --auth-config",
                        mount.prefix,
                        missing.join(", ")
                    ));
                }
                several
                    .iter()
                    .filter_map(|(i, d)| Some((i.clone(), d.clone()?)))
                    .collect()
            }
        };
        mount.trust_domains = domains;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pki(mount_domain: &str) -> Vec<MountConfig> {
        serde_norway::from_str(&format!(
            "[{{prefix: shop/tls, mount: pki, type: pki, role: web{mount_domain}}}]"
        ))
        .unwrap()
    }

    fn issuer(name: &str, domain: Option<&str>) -> (String, Option<String>) {
        (name.to_string(), domain.map(str::to_string))
    }

    #[test]
    fn one_issuer_gets_its_trust_domain_or_the_mount_s_or_cluster_local() {
        let mut c = pki("");
        resolve(&mut c, &[issuer("a", None)]).unwrap();
        assert_eq!(c[0].trust_domains["a"], "cluster.local");
        let mut c = pki(", trustDomain: prod.example");
        resolve(&mut c, &[issuer("a", None)]).unwrap();
        assert_eq!(c[0].trust_domains["a"], "prod.example");
        let mut c = pki("");
        resolve(&mut c, &[issuer("a", Some("a.example"))]).unwrap();
        assert_eq!(c[0].trust_domains["a"], "a.example");
        let mut c = pki(", trustDomain: prod.example");
        assert!(resolve(&mut c, &[issuer("a", Some("a.example"))]).is_err());
    }

    #[test]
    fn several_issuers_need_a_trust_domain_each_and_none_on_the_mount() {
        let mut c = pki("");
        let error = resolve(&mut c, &[issuer("a", Some("a.example")), issuer("b", None)])
            .unwrap_err()
            .to_string();
        assert!(error.contains("set trustDomain for b"), "{error}");
        let mut c = pki(", trustDomain: cluster.local");
        assert!(
            resolve(
                &mut c,
                &[
                    issuer("a", Some("a.example")),
                    issuer("b", Some("b.example"))
                ]
            )
            .is_err()
        );
        let mut c = pki("");
        resolve(
            &mut c,
            &[
                issuer("a", Some("a.example")),
                issuer("b", Some("b.example")),
            ],
        )
        .unwrap();
        assert_eq!(c[0].trust_domains["a"], "a.example");
        assert_eq!(c[0].trust_domains["b"], "b.example");
        let mut c = pki("");
        assert!(resolve(&mut c, &[issuer("a", Some("A/../x"))]).is_err());
    }
}
