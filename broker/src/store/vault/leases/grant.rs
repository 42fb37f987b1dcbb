//! Vault's side of a lease: issuing a credential (a database role's
//! `creds`, or a PKI certificate), renewing and revoking it. Vault's
//! answers are read into zeroizing buffers; the identity a certificate
//! names comes from the verified token, never from the caller's request.

use std::{
    collections::BTreeMap,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use vaultrs::{client::VaultClient, error::ClientError};
use zeroize::Zeroizing;

use super::super::{
    backend::{Backend, CallError},
    config::{Engine, MountConfig},
    kv::to_secret_data,
};
use crate::store::{Holder, StoreError, StoredSecret};

/// The label carrying a leased credential's expiry (Unix seconds).
pub const LEASE_EXPIRES_LABEL: &str = "coffer.dev/lease-expires";

/// A credential held for one holder on one path.
pub(super) struct Credential {
    pub(super) secret: StoredSecret,
    pub(super) lease_id: String,
    /// The duration Vault granted at issue (the role's TTL).
    pub(super) lease: Duration,
    pub(super) renew_at: Instant,
    pub(super) expires_at: Instant,
    pub(super) expires_wall: SystemTime,
    pub(super) issued_wall: SystemTime,
    pub(super) renewable: bool,
    /// Since when renewals fail, and how (a fixed word, never Vault's text).
    pub(super) failing: Option<(SystemTime, &'static str)>,
}

/// What Vault answers when issuing or renewing.
pub(super) struct Grant {
    pub(super) lease_id: String,
    lease: Duration,
    renewable: bool,
    data: Option<serde_json::Value>,
}

impl Grant {
    /// When the granted lease ends, on the wall clock.
    pub(super) fn expires_wall(&self) -> SystemTime {
        SystemTime::now() + self.lease
    }
}

/// Asks Vault for a new credential (or certificate) for `holder`: the
/// path asked and Vault's grant.
pub(super) async fn request(
    vault: &Backend,
    mount: &MountConfig,
    holder: &Holder,
) -> Result<(String, Grant), StoreError> {
    if mount.engine == Engine::Pki {
        let path = issue_path(mount);
        let body = pki_request(mount, holder)?;
        let answer = vault
            .call(|c| {
                let (path, body) = (path.clone(), body.clone());
                async move { raw(&c, http::Method::PUT, &path, Some(body)).await }
            })
            .await?;
        let grant = parse_certificate(&answer)?;
        return Ok((path, grant));
    }
    let path = creds_path(mount);
    let answer = vault
        .call(|c| {
            let path = path.clone();
            async move { raw(&c, http::Method::GET, &path, None).await }
        })
        .await?;
    let grant = parse_grant(&answer)?;
    Ok((path, grant))
}

impl Credential {
    /// `grant` (from `path`), lasting until `expires_wall`, as `version`.
    pub(super) fn new(
        path: &str,
        grant: Grant,
        version: u64,
        expires_wall: SystemTime,
    ) -> Result<Self, StoreError> {
        let data = to_secret_data(grant.data.unwrap_or(serde_json::Value::Null))?;
        let now = Instant::now();
        let expires_unix = unix_seconds(expires_wall);
        tracing::info!(path = %path, lease_id = %grant.lease_id, version, ttl_s = grant.lease.as_secs(), "issued a leased credential");
        Ok(Self {
            secret: StoredSecret {
                version,
                data,
                content_type: String::new(),
                created_at: SystemTime::now(),
                ttl_hint: Some(grant.lease),
                labels: BTreeMap::from([(
                    LEASE_EXPIRES_LABEL.to_string(),
                    expires_unix.to_string(),
                )]),
            },
            lease_id: grant.lease_id,
            lease: grant.lease,
            renew_at: now + grant.lease * 2 / 3,
            expires_at: now + grant.lease,
            expires_wall,
            issued_wall: SystemTime::now(),
            renewable: grant.renewable,
            failing: None,
        })
    }
}

/// Renews `lease_id` by `increment`; the duration Vault granted.
pub(super) async fn renew(
    vault: &Backend,
    lease_id: &str,
    increment: Duration,
) -> Result<Duration, CallError> {
    let body = serde_json::json!({"lease_id": lease_id, "increment": increment.as_secs()});
    let answer = vault
        .call(|c| {
            let body = body.clone();
            async move { raw(&c, http::Method::PUT, "sys/leases/renew", Some(body)).await }
        })
        .await?;
    parse_grant(&answer)
        .map(|g| g.lease)
        .map_err(|e| CallError::Other(0, e.to_string()))
}

/// Revokes `lease_id` in Vault; failures are logged (the lease then ends
/// at its expiry, or at the next start's sweep).
pub(super) async fn revoke(vault: &Backend, lease_id: &str) -> Result<(), StoreError> {
    let body = serde_json::json!({"lease_id": lease_id});
    let result = vault
        .call(|c| {
            let body = body.clone();
            async move {
                raw(&c, http::Method::PUT, "sys/leases/revoke", Some(body))
                    .await
                    .map(drop)
            }
        })
        .await;
    match result {
        Ok(()) => {
            tracing::info!(lease_id = %lease_id, "revoked a lease");
            Ok(())
        }
        Err(e) => {
            let error = StoreError::from(e);
            tracing::warn!(lease_id = %lease_id, error = %error, "could not revoke a lease");
            Err(error)
        }
    }
}

pub(super) fn unix_seconds(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// `<mount>/creds/<role>`.
pub(super) fn creds_path(mount: &MountConfig) -> String {
    format!(
        "{}/creds/{}",
        mount.mount.trim_matches('/'),
        mount.role.as_deref().unwrap_or("")
    )
}

/// One request to Vault's HTTP API, for endpoints vaultrs does not model
/// with their lease fields. The body is zeroized when dropped.
pub(super) async fn raw(
    client: &VaultClient,
    method: http::Method,
    path: &str,
    body: Option<serde_json::Value>,
) -> Result<Zeroizing<Vec<u8>>, ClientError> {
    let settings = &client.settings;
    let url = format!(
        "{}/v1/{path}",
        settings.address.as_str().trim_end_matches('/')
    );
    let mut request = http::Request::builder()
        .method(method)
        .uri(url)
        .header("X-Vault-Token", settings.token.as_str());
    if let Some(namespace) = &settings.namespace {
        request = request.header("X-Vault-Namespace", namespace.as_str());
    }
    let bytes = body.map(|b| b.to_string().into_bytes()).unwrap_or_default();
    let request = request.body(bytes).map_err(|e| ClientError::APIError {
        code: 0,
        errors: vec![e.to_string()],
    })?;
    let response = rustify::client::Client::execute(&client.http, request)
        .await
        .map_err(|source| ClientError::RestClientError { source })?;
    Ok(Zeroizing::new(response.into_body()))
}

/// `<mount>/issue/<role>`.
fn issue_path(mount: &MountConfig) -> String {
    format!(
        "{}/issue/{}",
        mount.mount.trim_matches('/'),
        mount.role.as_deref().unwrap_or("")
    )
}

/// The issue request: the identity comes from the verified token (the
/// holder) and the names from the config, never from the caller's request.
fn pki_request(mount: &MountConfig, holder: &Holder) -> Result<serde_json::Value, StoreError> {
    let name_ok = |s: &str| {
        !s.is_empty()
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
    };
    if !name_ok(&holder.namespace) || !name_ok(&holder.service_account) {
        return Err(StoreError::Internal(
            "the caller's namespace or service account is not a DNS name".into(),
        ));
    }
    // The trust domain is the caller's issuer's: two clusters' `shop/web`
    // are two identities. An issuer without one gets nothing (fail closed).
    let Some(trust_domain) = mount.trust_domains.get(&holder.issuer) else {
        return Err(StoreError::Internal(
            "no trust domain is configured for the caller's issuer".into(),
        ));
    };
    let spiffe = format!(
        "spiffe://{trust_domain}/ns/{}/sa/{}",
        holder.namespace, holder.service_account
    );
    let mut body = serde_json::json!({
        "uri_sans": spiffe,
        "exclude_cn_from_sans": false,
        "format": "pem",
    });
    if let Some(first) = mount.dns_names.first() {
        body["common_name"] = first.clone().into();
        body["alt_names"] = mount.dns_names.join(",").into();
    }
    if let Some(ttl) = mount.ttl {
        body["ttl"] = format!("{}s", ttl.as_secs()).into();
    }
    Ok(body)
}

/// A PKI answer as a credential: `tls.crt`, `tls.key`, `ca.crt`, lasting
/// until the certificate's expiry; its serial stands for the lease id.
fn parse_certificate(body: &[u8]) -> Result<Grant, StoreError> {
    let mut value: serde_json::Value = serde_json::from_slice(body)
        .map_err(|_| StoreError::Internal("Vault's certificate answer is not JSON".into()))?;
    let data = &mut value["data"];
    let serial = data["serial_number"].as_str().unwrap_or("").to_string();
    let expiration = data["expiration"].as_u64().unwrap_or(0);
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    if serial.is_empty() || expiration <= now {
        return Err(StoreError::Internal(
            "Vault's certificate answer has no serial or expiry".into(),
        ));
    }
    let files = serde_json::json!({
        "tls.crt": data["certificate"].take(),
        "tls.key": data["private_key"].take(),
        "ca.crt": data["issuing_ca"].take(),
    });
    Ok(Grant {
        lease_id: format!("pki:{serial}"),
        lease: Duration::from_secs(expiration - now),
        renewable: false,
        data: Some(files),
    })
}

/// The lease fields (and data) of a Vault answer.
fn parse_grant(body: &[u8]) -> Result<Grant, StoreError> {
    let mut value: serde_json::Value = serde_json::from_slice(body)
        .map_err(|_| StoreError::Internal("Vault's lease answer is not JSON".into()))?;
    let lease_id = value["lease_id"].as_str().unwrap_or("").to_string();
    if lease_id.is_empty() {
        return Err(StoreError::Internal("Vault's answer has no lease".into()));
    }
    Ok(Grant {
        lease: Duration::from_secs(value["lease_duration"].as_u64().unwrap_or(0)),
        renewable: value["renewable"].as_bool().unwrap_or(false),
        data: value.get_mut("data").map(serde_json::Value::take),
        lease_id,
    })
}

#[cfg(test)]
mod tests {
    use crate::store::vault::config::LeasePer;

    use super::*;

    #[test]
    fn a_grant_is_parsed_without_keeping_the_body() {
        let body = br#"{"lease_id":"database/creds/shop/abc","lease_duration":60,"renewable":true,"data":{"username":"u","password":"p"}}"#;
        let grant = parse_grant(body).unwrap();
        assert_eq!(grant.lease_id, "database/creds/shop/abc");
        assert_eq!(grant.lease, Duration::from_secs(60));
        assert!(grant.renewable);
        assert!(grant.data.is_some());
        assert!(parse_grant(br#"{"lease_id":"","data":{}}"#).is_err());
        assert!(parse_grant(b"not json").is_err());
    }

    #[test]
    fn a_certificate_request_names_the_token_identity_and_the_configured_dns_names() {
        let mut mount = MountConfig {
            prefix: "shop/tls".into(),
            mount: "pki".into(),
            kv: 2,
            path: None,
            engine: Engine::Pki,
            role: Some("web".into()),
            lease_per: LeasePer::Pod,
            grace: Duration::from_secs(1),
            revoke_on_start: true,
            trust_domain: None,
            trust_domains: BTreeMap::from([
                ("iss".to_string(), "cluster.local".to_string()),
                ("other".to_string(), "other.example".to_string()),
            ]),
            dns_names: vec!["web.shop.svc".into(), "web".into()],
            ttl: Some(Duration::from_secs(60)),
        };
        let holder = Holder {
            namespace: "shop".into(),
            service_account: "web".into(),
            issuer: "iss".into(),
            pod_name: None,
            pod_uid: None,
        };
        let body = pki_request(&mount, &holder).unwrap();
        assert_eq!(body["uri_sans"], "spiffe://cluster.local/ns/shop/sa/web");
        assert_eq!(body["common_name"], "web.shop.svc");
        assert_eq!(body["alt_names"], "web.shop.svc,web");
        assert_eq!(body["ttl"], "60s");
        assert_eq!(issue_path(&mount), "pki/issue/web");
        mount.engine = Engine::Database;
        assert_eq!(creds_path(&mount), "pki/creds/web");
        mount.dns_names.clear();
        assert!(
            pki_request(&mount, &holder)
                .unwrap()
                .get("common_name")
                .is_none()
        );
        let other = Holder {
            issuer: "other".into(),
            ..holder.clone()
        };
        assert_eq!(
            pki_request(&mount, &other).unwrap()["uri_sans"],
            "spiffe://other.example/ns/shop/sa/web",
            "the trust domain follows the issuer"
        );
        let unknown = Holder {
            issuer: "unknown".into(),
            ..holder.clone()
        };
        assert!(pki_request(&mount, &unknown).is_err());
        let odd = Holder {
            service_account: "web/../x".into(),
            ..holder
        };
        assert!(pki_request(&mount, &odd).is_err());
    }
}
