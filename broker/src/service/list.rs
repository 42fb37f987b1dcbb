//! `ListSecrets`: the names under a folder that the caller may list.
//!
//! The caller is authorized before the store is asked anything: a caller
//! with no `list` rule reaching below the folder is refused
//! (`PERMISSION_DENIED`, audited) without a single backend request. The
//! listing is then charged to the caller's own share of the backend (as a
//! read is), so one tenant's listings cannot queue in front of every other
//! tenant's reads; over its share the caller gets `RESOURCE_EXHAUSTED`.
//! Each name is finally shown only if the caller has `list` on it.

use coffer_proto::v1;
use tonic::{Request, Response, Status};

use super::{Broker, Call, limits::tenant};
use crate::{
    audit::Outcome, error::ApiError, path::SecretPath, policy::Capability, store::StoreError,
};

impl Broker {
    pub(super) async fn list_secrets_rpc(
        &self,
        request: Request<v1::ListSecretsRequest>,
    ) -> Result<Response<v1::ListSecretsResponse>, Status> {
        let call = Call::of(&request, "ListSecrets");
        let who = self.authenticate(&request, &call).await?;
        let folder = super::parse_folder(&request.get_ref().path, "a folder")?;
        let policy = self.policy();
        let gate = policy.decide_below(&who, &folder, Capability::List);
        self.inner.decisions.count(call.rpc, gate.is_allowed());
        if !gate.is_allowed() {
            tracing::info!(
                target: "coffer::decision",
                rpc = call.rpc,
                namespace = %who.namespace,
                service_account = %who.service_account,
                folder = %folder,
                capability = Capability::List.as_str(),
                allowed = false,
                "policy decision"
            );
            let mut event = call.event(
                Some(&who),
                Some(&folder),
                Some(Capability::List),
                Outcome::Deny,
                gate.reason(),
            );
            event.rule = gate.rule();
            self.audit(&event).await?;
            return Err(ApiError::PermissionDenied.into());
        }
        let names = match self.inner.store.list_for(&tenant(&who), &folder).await {
            Ok(names) => names,
            // Nothing there (or a folder no mount serves, or a leased path
            // that holds no names): nothing listable, told as below.
            Err(StoreError::NotFound | StoreError::Unsupported(_)) => Vec::new(),
            Err(error) => {
                let reason = match error {
                    StoreError::Throttled => "throttled",
                    _ => "store_error",
                };
                self.audit(&call.event(
                    Some(&who),
                    Some(&folder),
                    Some(Capability::List),
                    Outcome::Allow,
                    reason,
                ))
                .await?;
                return Err(ApiError::from(error).into());
            }
        };
        // Each name is shown only to a caller with `list` on it, and a
        // folder (`name/`) only to one with `list` somewhere below it: the
        // folder itself grants nothing, so a listing reveals no more than
        // the policy already lets the caller see, and the caller can walk
        // down to everything it may list.
        let visible: Vec<String> = names
            .into_iter()
            .filter(|name| {
                let child = if folder.is_empty() {
                    name.trim_end_matches('/').to_string()
                } else {
                    format!("{folder}/{}", name.trim_end_matches('/'))
                };
                if name.ends_with('/') {
                    return SecretPath::parse(&child).is_ok()
                        && policy
                            .decide_below(&who, &child, Capability::List)
                            .is_allowed();
                }
                SecretPath::parse(&child)
                    .is_ok_and(|p| policy.decide(&who, &p, Capability::List).is_allowed())
            })
            .collect();
        // Nothing there and nothing the caller may see are not told apart.
        let (outcome, reason) = if visible.is_empty() {
            (Outcome::Deny, "nothing_listable")
        } else {
            (Outcome::Allow, "listed")
        };
        self.audit(&call.event(
            Some(&who),
            Some(&folder),
            Some(Capability::List),
            outcome,
            reason,
        ))
        .await?;
        if visible.is_empty() {
            return Err(ApiError::PermissionDenied.into());
        }
        Ok(Response::new(v1::ListSecretsResponse { names: visible }))
    }
}

#[cfg(test)]
mod tests {
    use std::{
        sync::{
            Arc,
            atomic::{AtomicUsize, Ordering},
        },
        time::Duration,
    };

    use coffer_proto::{
        SecretBytes, SecretData,
        v1::{self, secret_operator_server::SecretOperator},
    };
    use tonic::Request;

    use crate::path::SecretName;

    use crate::{
        auth::{
            jwt::{JwtVerifier, KeySet, VerifierConfig},
            signer::DevSigner,
        },
        policy::Policy,
        service::Broker,
        store::{SecretStore, SecretWrite, StoreError, StoredSecret, VersionInfo, dev::DevStore},
    };

    const ISS: &str = "https://issuer.test";
    const POLICY: &str = "rules:\n  - name: admin-lists-shop\n    subjects: [{namespace: ops, serviceAccount: admin}]\n    paths: [\"shop/*\"]\n    capabilities: [list]\n";

    /// The dev store, counting the listings asked of it and the tenant
    /// each was charged to.
    struct Counting {
        store: DevStore,
        lists: AtomicUsize,
        tenants: parking_lot::Mutex<Vec<String>>,
    }

    #[async_trait::async_trait]
    impl SecretStore for Counting {
        async fn get(
            &self,
            path: &SecretName,
            version: Option<u64>,
        ) -> Result<StoredSecret, StoreError> {
            self.store.get(path, version).await
        }
        async fn put(&self, path: &SecretName, write: SecretWrite) -> Result<u64, StoreError> {
            self.store.put(path, write).await
        }
        async fn versions(&self, path: &SecretName) -> Result<(u64, Vec<VersionInfo>), StoreError> {
            self.store.versions(path).await
        }
        fn subscribe(&self, path: &SecretName) -> tokio::sync::watch::Receiver<u64> {
            self.store.subscribe(path)
        }
        async fn list(&self, folder: &str) -> Result<Vec<String>, StoreError> {
            self.lists.fetch_add(1, Ordering::SeqCst);
            self.store.list(folder).await
        }
        async fn list_for(&self, tenant: &str, folder: &str) -> Result<Vec<String>, StoreError> {
            self.tenants.lock().push(tenant.to_string());
            self.list(folder).await
        }
    }

    async fn broker() -> (Broker, DevSigner, Arc<Counting>) {
        let signer = DevSigner::generate(ISS).unwrap();
        let keys = KeySet::from_jwks_json(signer.jwks_json().as_bytes()).unwrap();
        let authn = JwtVerifier::new(VerifierConfig::new(ISS, "coffer"), keys);
        let store = Arc::new(Counting {
            store: DevStore::in_memory(),
            lists: AtomicUsize::new(0),
            tenants: Default::default(),
        });
        let value = SecretData::Bytes(SecretBytes::from(&b"v"[..]));
        store
            .put(&SecretName::valid("shop/db"), SecretWrite::new(value, ""))
            .await
            .unwrap();
        let broker = Broker::new(
            Arc::new(authn),
            Policy::from_yaml(POLICY).unwrap(),
            store.clone(),
        );
        (broker, signer, store)
    }

    fn request(
        signer: &DevSigner,
        ns: &str,
        sa: &str,
        folder: &str,
    ) -> Request<v1::ListSecretsRequest> {
        let token = signer
            .mint("coffer", ns, sa, None, Duration::from_secs(600))
            .unwrap();
        let mut request = Request::new(v1::ListSecretsRequest {
            path: folder.into(),
        });
        request
            .metadata_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
        request
    }

    #[tokio::test]
    async fn a_caller_without_a_list_rule_is_refused_before_the_store_is_asked() {
        let (broker, signer, store) = broker().await;
        for folder in ["shop", "", "elsewhere", "shop/db"] {
            let refused = broker
                .list_secrets(request(&signer, "evil", "nobody", folder))
                .await
                .unwrap_err();
            assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{folder:?}");
        }
        // A rule, but nothing it lists below this folder.
        let refused = broker
            .list_secrets(request(&signer, "ops", "admin", "elsewhere"))
            .await
            .unwrap_err();
        assert_eq!(refused.code(), tonic::Code::PermissionDenied);
        assert_eq!(store.lists.load(Ordering::SeqCst), 0);
    }

    #[tokio::test]
    async fn a_listing_is_charged_to_its_caller_and_shows_what_it_may_list() {
        let (broker, signer, store) = broker().await;
        let names = broker
            .list_secrets(request(&signer, "ops", "admin", "shop"))
            .await
            .unwrap()
            .into_inner()
            .names;
        assert_eq!(names, ["db"]);
        assert_eq!(*store.tenants.lock(), [format!("{ISS} ops/admin")]);
        // Nothing under it: a denial, not NOT_FOUND.
        let empty = broker
            .list_secrets(request(&signer, "ops", "admin", "shop/db"))
            .await
            .unwrap_err();
        assert_eq!(empty.code(), tonic::Code::PermissionDenied);
    }
}
