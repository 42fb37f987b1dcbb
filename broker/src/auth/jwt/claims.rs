//! What the claims of a projected service-account token must say, and the
//! checks that hold a token to it: the exact `iss`, one of the broker's
//! audiences, `exp`/`nbf`/`iat` within a small leeway, an optional longest
//! lifetime, and a `sub` that agrees with the `kubernetes.io` names.
//!
//! Nothing here sees a signature: [`check_claims`] is only ever called by
//! `super::verify` once the signature is good.

use std::{
    borrow::Cow,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use serde::{Deserialize, Serialize};

use crate::auth::{AuthError, Verified, WorkloadIdentity};

/// The clock skew tolerated on `exp`, `nbf` and `iat`.
pub const DEFAULT_LEEWAY: Duration = Duration::from_secs(30);

/// Settings for one trusted issuer.
#[derive(Debug, Clone)]
pub struct VerifierConfig {
    /// The exact `iss` expected.
    pub issuer: String,
    /// The broker's audiences; `aud` must contain one of them.
    pub audiences: Vec<String>,
    /// Clock skew tolerated on `exp`, `nbf` and `iat`.
    pub leeway: Duration,
    /// The longest `exp - iat` accepted, if set.
    pub max_lifetime: Option<Duration>,
    /// Accept tokens without `aud`. Off by default: audience-less tokens are
    /// the legacy kind that any holder can replay against any service.
    pub allow_missing_audience: bool,
}

impl VerifierConfig {
    /// An issuer and one audience, with the default leeway.
    pub fn new(issuer: impl Into<String>, audience: impl Into<String>) -> Self {
        Self {
            issuer: issuer.into(),
            audiences: vec![audience.into()],
            leeway: DEFAULT_LEEWAY,
            max_lifetime: None,
            allow_missing_audience: false,
        }
    }
}

/// `aud` is a string or a list of strings.
#[derive(Debug, Clone, Serialize, Default, PartialEq, Eq)]
#[serde(untagged)]
pub enum Audience {
    #[default]
    None,
    One(String),
    Many(Vec<String>),
}

/// Read by hand rather than `untagged`: an untagged enum buffers the value
/// and builds an error for each variant it rejects, which cost more than
/// the rest of the claims together on every cold token. Accepts what the
/// untagged form accepted: `null`, a string, or a list of strings.
impl<'de> Deserialize<'de> for Audience {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;

        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = Audience;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a string or a list of strings")
            }

            fn visit_unit<E: serde::de::Error>(self) -> Result<Audience, E> {
                Ok(Audience::None)
            }

            fn visit_none<E: serde::de::Error>(self) -> Result<Audience, E> {
                Ok(Audience::None)
            }

            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Audience, E> {
                Ok(Audience::One(v.to_string()))
            }

            fn visit_string<E: serde::de::Error>(self, v: String) -> Result<Audience, E> {
                Ok(Audience::One(v))
            }

            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<Audience, A::Error> {
                // A token names a handful of audiences; the claims size
                // limit bounds the list.
                let mut all = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(8));
                while let Some(one) = seq.next_element::<String>()? {
                    all.push(one);
                }
                Ok(Audience::Many(all))
            }
        }

        deserializer.deserialize_any(Visitor)
    }
}

impl Audience {
    pub(super) fn is_empty(&self) -> bool {
        match self {
            Self::None => true,
            Self::One(_) => false,
            Self::Many(v) => v.is_empty(),
        }
    }
}

/// The claims as found, each optional so a missing one has its own reason.
/// `iss` and `sub` are only compared, so they borrow from the payload.
#[derive(Deserialize)]
pub(super) struct RawClaims<'a> {
    #[serde(default, borrow)]
    iss: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    sub: Option<Cow<'a, str>>,
    #[serde(default)]
    aud: Audience,
    #[serde(default)]
    exp: Option<u64>,
    #[serde(default)]
    nbf: Option<u64>,
    #[serde(default)]
    iat: Option<u64>,
    #[serde(default, rename = "kubernetes.io", borrow)]
    kubernetes: Option<RawKubernetes<'a>>,
}

/// The `kubernetes.io` claim as read for verification: the names borrow from the
/// payload and are copied only into the identity. Same shape, same checks:
/// unknown members are ignored, the known ones must be well-formed.
#[derive(Deserialize)]
struct RawKubernetes<'a> {
    #[serde(borrow)]
    namespace: Cow<'a, str>,
    #[serde(borrow)]
    serviceaccount: RawRef<'a>,
    #[serde(default, borrow)]
    pod: Option<RawRef<'a>>,
    // Not used, but a token whose `node`, `secret` or `warnafter` has the
    // wrong shape is still refused, as before.
    #[serde(default, borrow, rename = "node")]
    _node: Option<RawRef<'a>>,
    #[serde(default, borrow, rename = "secret")]
    _secret: Option<RawRef<'a>>,
    #[serde(default, rename = "warnafter")]
    _warnafter: Option<u64>,
}

/// A named Kubernetes object, borrowed.
#[derive(Deserialize)]
struct RawRef<'a> {
    #[serde(borrow)]
    name: Cow<'a, str>,
    #[serde(borrow)]
    uid: Cow<'a, str>,
}

/// Syntax errors mean the part is not JSON at all; data errors mean it is
/// JSON of the wrong shape (wrong types, duplicate members).
pub(super) fn json_error(error: serde_json::Error) -> AuthError {
    match error.classify() {
        serde_json::error::Category::Data => AuthError::InvalidClaims,
        _ => AuthError::Malformed,
    }
}

pub(super) fn check_claims(
    config: &VerifierConfig,
    claims: RawClaims<'_>,
    now: u64,
) -> Result<Verified, AuthError> {
    let leeway = config.leeway.as_secs();

    let iss = claims.iss.ok_or(AuthError::MissingClaim("iss"))?;
    if iss != config.issuer {
        return Err(AuthError::UnknownIssuer);
    }

    let exp = claims.exp.ok_or(AuthError::MissingClaim("exp"))?;
    if exp.saturating_add(leeway) <= now {
        return Err(AuthError::Expired);
    }
    if let Some(nbf) = claims.nbf
        && nbf > now.saturating_add(leeway)
    {
        return Err(AuthError::NotYetValid);
    }
    let iat = claims.iat.ok_or(AuthError::MissingClaim("iat"))?;
    if iat > now.saturating_add(leeway) {
        return Err(AuthError::IssuedInFuture);
    }
    if exp <= iat {
        return Err(AuthError::InvalidClaims);
    }
    if let Some(max) = config.max_lifetime
        && exp - iat > max.as_secs()
    {
        return Err(AuthError::LifetimeTooLong);
    }

    if claims.aud.is_empty() {
        if !config.allow_missing_audience {
            return Err(AuthError::MissingAudience);
        }
    } else {
        let ours = |a: &String| config.audiences.iter().any(|ours| ours == a);
        let matches = match &claims.aud {
            Audience::None => false,
            Audience::One(a) => ours(a),
            Audience::Many(list) => list.iter().any(ours),
        };
        if !matches {
            return Err(AuthError::WrongAudience);
        }
    }

    let sub = claims.sub.ok_or(AuthError::MissingClaim("sub"))?;
    let k8s = claims
        .kubernetes
        .ok_or(AuthError::MissingClaim("kubernetes.io"))?;
    if !is_name(&k8s.namespace) || !is_name(&k8s.serviceaccount.name) {
        return Err(AuthError::InvalidClaims);
    }
    // `sub` must be exactly `system:serviceaccount:NS:NAME`; compared in
    // place (neither name can hold a `:`, see `is_name`).
    let sub_matches = sub
        .strip_prefix("system:serviceaccount:")
        .and_then(|rest| rest.strip_prefix(&*k8s.namespace))
        .and_then(|rest| rest.strip_prefix(':'))
        .is_some_and(|name| name == k8s.serviceaccount.name);
    if !sub_matches {
        return Err(AuthError::SubjectMismatch);
    }
    let non_empty = |s: Cow<'_, str>| (!s.is_empty()).then(|| s.into_owned());
    Ok(Verified {
        identity: WorkloadIdentity {
            issuer: iss.into_owned(),
            namespace: k8s.namespace.into_owned(),
            service_account: k8s.serviceaccount.name.into_owned(),
            service_account_uid: non_empty(k8s.serviceaccount.uid),
            pod_name: k8s.pod.as_ref().map(|p| p.name.clone().into_owned()),
            pod_uid: k8s.pod.and_then(|p| non_empty(p.uid)),
        },
        expires_at: exp,
        key: None,
        token_exp: Some(exp),
    })
}

/// A Kubernetes object name as a namespace or service account can have:
/// non-empty, at most 253 bytes, lowercase alphanumerics, `-` and `.`. This
/// keeps `:` out, so `system:serviceaccount:NS:NAME` is unambiguous.
pub(crate) fn is_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
}

/// Seconds since the Unix epoch.
pub(crate) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    const ISS: &str = "https://issuer.test";

    fn claims(now: u64) -> RawClaims<'static> {
        RawClaims {
            iss: Some(ISS.into()),
            sub: Some("system:serviceaccount:shop:web".into()),
            aud: Audience::Many(vec!["other".into(), "coffer".into()]),
            exp: Some(now + 600),
            nbf: Some(now),
            iat: Some(now),
            kubernetes: Some(RawKubernetes {
                namespace: "shop".into(),
                serviceaccount: RawRef {
                    name: "web".into(),
                    uid: "u-1".into(),
                },
                pod: Some(RawRef {
                    name: "web-0".into(),
                    uid: "p-1".into(),
                }),
                _node: None,
                _secret: None,
                _warnafter: None,
            }),
        }
    }

    fn check(
        f: impl FnOnce(&mut RawClaims<'static>, &mut VerifierConfig),
    ) -> Result<Verified, AuthError> {
        let now = 1_000_000;
        let mut c = claims(now);
        let mut config = VerifierConfig::new(ISS, "coffer");
        f(&mut c, &mut config);
        check_claims(&config, c, now)
    }

    #[test]
    fn good_claims_give_the_whole_identity() {
        let v = check(|_, _| {}).unwrap();
        assert_eq!(v.expires_at, 1_000_600);
        assert_eq!(v.identity.service_account_uid.as_deref(), Some("u-1"));
        assert_eq!(v.identity.pod_name.as_deref(), Some("web-0"));
        assert_eq!(v.identity.pod_uid.as_deref(), Some("p-1"));
    }

    #[test]
    fn each_claim_failure_has_its_own_reason() {
        use AuthError::*;
        type Mutation = Box<dyn FnOnce(&mut RawClaims<'static>, &mut VerifierConfig)>;
        let cases: Vec<(AuthError, Mutation)> = vec![
            (
                UnknownIssuer,
                Box::new(|c, _| c.iss = Some("https://evil".into())),
            ),
            (MissingClaim("iss"), Box::new(|c, _| c.iss = None)),
            (MissingClaim("exp"), Box::new(|c, _| c.exp = None)),
            (
                Expired,
                Box::new(|c, _| {
                    c.iat = Some(1_000_000 - 600);
                    c.exp = Some(1_000_000 - 30);
                }),
            ),
            (NotYetValid, Box::new(|c, _| c.nbf = Some(1_000_031))),
            (MissingClaim("iat"), Box::new(|c, _| c.iat = None)),
            (IssuedInFuture, Box::new(|c, _| c.iat = Some(1_000_031))),
            (
                LifetimeTooLong,
                Box::new(|_, cfg| cfg.max_lifetime = Some(Duration::from_secs(599))),
            ),
            (MissingAudience, Box::new(|c, _| c.aud = Audience::None)),
            (
                MissingAudience,
                Box::new(|c, _| c.aud = Audience::Many(vec![])),
            ),
            (
                WrongAudience,
                Box::new(|c, _| c.aud = Audience::One("vault".into())),
            ),
            (MissingClaim("sub"), Box::new(|c, _| c.sub = None)),
            (
                MissingClaim("kubernetes.io"),
                Box::new(|c, _| c.kubernetes = None),
            ),
            (
                SubjectMismatch,
                Box::new(|c, _| c.sub = Some("system:serviceaccount:ops:web".into())),
            ),
            (
                InvalidClaims,
                Box::new(|c, _| {
                    if let Some(k) = c.kubernetes.as_mut() {
                        k.namespace = "shop:web".into();
                    }
                }),
            ),
            (InvalidClaims, Box::new(|c, _| c.exp = c.iat)),
        ];
        for (want, mutate) in cases {
            assert_eq!(check(mutate).map(|_| ()), Err(want.clone()), "{want:?}");
        }
    }

    #[test]
    fn audience_reads_every_shape_the_untagged_form_read() {
        let aud = |json: &str| serde_json::from_str::<Audience>(json);
        assert_eq!(aud("null").unwrap(), Audience::None);
        assert_eq!(aud(r#""coffer""#).unwrap(), Audience::One("coffer".into()));
        assert_eq!(
            aud(r#"["a","b\u0063"]"#).unwrap(),
            Audience::Many(vec!["a".into(), "bc".into()])
        );
        assert_eq!(aud("[]").unwrap(), Audience::Many(vec![]));
        // Anything else is claims of the wrong shape, not a parse failure.
        for bad in ["1", "{}", r#"["a",1]"#, "true"] {
            let error = aud(bad).unwrap_err();
            assert_eq!(json_error(error), AuthError::InvalidClaims, "{bad}");
        }
    }

    #[test]
    fn escaped_claims_are_read_like_plain_ones() {
        // Borrowed fields fall back to owned text when the JSON escapes.
        let json = br#"{"iss":"https:\/\/issuer.test","sub":"system:serviceaccount:shop:w\u0065b",
            "aud":"coffer","exp":1000600,"iat":1000000,
            "kubernetes.io":{"namespace":"shop","serviceaccount":{"name":"web","uid":""}}}"#;
        let claims: RawClaims<'_> = serde_json::from_slice(json).unwrap();
        let config = VerifierConfig::new(ISS, "coffer");
        let verified = check_claims(&config, claims, 1_000_000).unwrap();
        assert_eq!(verified.identity.issuer, ISS);
        assert_eq!(verified.identity.service_account, "web");
        assert_eq!(verified.identity.service_account_uid, None);
    }

    #[test]
    fn kubernetes_claims_keep_their_shape_checks() {
        let claims = |k8s: &str| {
            format!(
                r#"{{"iss":"{ISS}","sub":"system:serviceaccount:shop:web","aud":"coffer",
                "exp":1000600,"iat":1000000,"kubernetes.io":{k8s}}}"#
            )
        };
        let read = |json: &str| serde_json::from_str::<RawClaims<'_>>(json).map(|_| ());
        let good = r#"{"namespace":"shop","serviceaccount":{"name":"web","uid":"u"},
            "node":{"name":"n","uid":"x"},"warnafter":5,"credential-id":"ignored"}"#;
        assert!(read(&claims(good)).is_ok());
        for bad in [
            r#"{"namespace":"shop","serviceaccount":{"name":"web"}}"#,
            r#"{"namespace":"shop","serviceaccount":{"name":"web","uid":"u"},"node":"n"}"#,
            r#"{"namespace":"shop","serviceaccount":{"name":"web","uid":"u"},"secret":{"name":"s"}}"#,
            r#"{"namespace":"shop","serviceaccount":{"name":"web","uid":"u"},"warnafter":"soon"}"#,
            r#"{"namespace":7,"serviceaccount":{"name":"web","uid":"u"}}"#,
        ] {
            let error = read(&claims(bad)).unwrap_err();
            assert_eq!(json_error(error), AuthError::InvalidClaims, "{bad}");
        }
    }

    #[test]
    fn subject_must_match_exactly() {
        for sub in [
            "system:serviceaccount:shop:we",
            "system:serviceaccount:shop:web:",
            "system:serviceaccount:shopweb",
            "system:serviceaccount:sho:pweb",
            "system:serviceaccount::shop:web",
            "serviceaccount:shop:web",
        ] {
            assert_eq!(
                check(|c, _| c.sub = Some(sub.into())).map(|_| ()),
                Err(AuthError::SubjectMismatch),
                "{sub}"
            );
        }
    }

    #[test]
    fn leeway_applies_at_the_edges() {
        assert!(
            check(|c, _| {
                c.iat = Some(1_000_000 - 600);
                c.exp = Some(1_000_000 - 29);
            })
            .is_ok()
        );
        assert!(check(|c, _| c.nbf = Some(1_000_030)).is_ok());
        assert!(check(|c, _| c.iat = Some(1_000_030)).is_ok());
        assert!(check(|_, cfg| cfg.max_lifetime = Some(Duration::from_secs(600))).is_ok());
    }

    #[test]
    fn missing_audience_only_when_explicitly_allowed() {
        assert!(
            check(|c, cfg| {
                c.aud = Audience::None;
                cfg.allow_missing_audience = true;
            })
            .is_ok()
        );
        // Allowing a missing audience does not allow a wrong one.
        assert_eq!(
            check(|c, cfg| {
                c.aud = Audience::One("vault".into());
                cfg.allow_missing_audience = true;
            })
            .map(|_| ()),
            Err(AuthError::WrongAudience)
        );
    }
}
