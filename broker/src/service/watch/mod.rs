//! Each `WatchSecrets` stream: a state machine polled by the connection's
//! own stream task (no task or channel of its own), sending the snapshot and
//! then one update per new version.
//!
//! `open.rs` opens a watch (its checks: authentication, the grants, the
//! bound on streams, the snapshot) and decides again after a policy change;
//! `state.rs` is the state of one stream and what wakes it; `fanout.rs`
//! reads each new version once and shares its encoded update between the
//! streams of a path.

mod fanout;
mod open;
mod state;

pub(super) use fanout::FanOut;
pub(super) use state::WatchResponseStream;

/// What the tests of every watch room share: a broker, a store and tokens.
#[cfg(test)]
mod testing {
    use std::{sync::Arc, time::Duration};

    use coffer_proto::{
        SecretBytes, SecretData, v1, v1::secret_broker_server::SecretBroker, wire::WatchReply,
    };
    use tonic::{Request, Status};

    use super::WatchResponseStream;
    use crate::{
        audit::AuditLog,
        auth::{AuthError, WorkloadIdentity},
        auth::{
            jwt::{JwtVerifier, KeySet, VerifierConfig},
            signer::DevSigner,
        },
        policy::Policy,
        service::Broker,
        store::{SecretStore, SecretWrite, dev::DevStore},
    };

    pub(super) const ISS: &str = "https://issuer.test";
    pub(super) const READS: &str = "rules:\n  - name: web-reads\n    subjects: [{namespace: shop, serviceAccount: web}]\n    paths: [\"shop/*\"]\n    capabilities: [read, watch]\n";

    pub(super) async fn broker(audit: &std::path::Path) -> (Broker, String, Arc<DevStore>) {
        let (broker, token, store) = unaudited_broker().await;
        (
            broker.with_audit(AuditLog::file(audit, 0).unwrap()),
            token,
            store,
        )
    }

    /// A broker without an audit trail, a token for `shop/web` and its store.
    pub(super) async fn unaudited_broker() -> (Broker, String, Arc<DevStore>) {
        let signer = DevSigner::generate(ISS).unwrap();
        let keys = KeySet::from_jwks_json(signer.jwks_json().as_bytes()).unwrap();
        let authn = JwtVerifier::new(VerifierConfig::new(ISS, "coffer"), keys);
        let store = Arc::new(DevStore::in_memory());
        put(store.as_ref(), b"v1").await;
        let broker = Broker::new(
            Arc::new(authn),
            Policy::from_yaml(READS).unwrap(),
            store.clone(),
        );
        let token = signer
            .mint(
                "coffer",
                "shop",
                "web",
                Some("web-0"),
                Duration::from_secs(600),
            )
            .unwrap();
        (broker, token, store)
    }

    /// Writes `value` as the next version of `shop/db`.
    pub(super) async fn put(store: &dyn SecretStore, value: &'static [u8]) -> u64 {
        put_at(store, "shop/db", value).await
    }

    /// Writes `value` as the next version of `path`.
    pub(super) async fn put_at(store: &dyn SecretStore, path: &str, value: &'static [u8]) -> u64 {
        store
            .put(
                &crate::path::SecretName::valid(path),
                SecretWrite::new(SecretData::Bytes(SecretBytes::from(value)), ""),
            )
            .await
            .unwrap()
    }

    /// Opens a watch of `shop/db` with `token`.
    pub(super) async fn open(broker: &Broker, token: &str) -> WatchResponseStream {
        broker
            .watch_secrets(watch_request(token))
            .await
            .unwrap()
            .into_inner()
    }

    /// A stream's next item as the message a client decodes.
    pub(super) fn message(item: Option<Result<WatchReply, Status>>) -> v1::WatchSecretsResponse {
        item.unwrap().unwrap().into_message().unwrap()
    }

    pub(super) fn watch_request(token: &str) -> Request<v1::WatchSecretsRequest> {
        let mut request = Request::new(v1::WatchSecretsRequest {
            paths: vec!["shop/db".into()],
        });
        request
            .metadata_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
        request
            .metadata_mut()
            .insert("x-request-id", "watch-1".parse().unwrap());
        request
    }

    /// Vouches for every token as `shop/web`: the answer runs out in
    /// `answer_secs`, the token in `token_secs` (none: no `exp`).
    pub(super) struct Answers {
        answer_secs: u64,
        token_secs: Option<u64>,
        /// Answers given.
        pub(super) calls: std::sync::atomic::AtomicUsize,
    }

    impl Answers {
        pub(super) fn new(answer_secs: u64, token_secs: Option<u64>) -> Self {
            Self {
                answer_secs,
                token_secs,
                calls: Default::default(),
            }
        }
    }

    #[async_trait::async_trait]
    impl crate::auth::Authenticator for Answers {
        async fn authenticate(
            &self,
            _token: &crate::auth::BearerToken,
        ) -> Result<crate::auth::Verified, AuthError> {
            self.calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let now = crate::auth::jwt::unix_now();
            Ok(crate::auth::Verified {
                identity: WorkloadIdentity {
                    issuer: ISS.into(),
                    namespace: "shop".into(),
                    service_account: "web".into(),
                    service_account_uid: None,
                    pod_name: Some("web-0".into()),
                    pod_uid: None,
                },
                expires_at: now + self.answer_secs,
                key: None,
                token_exp: self.token_secs.map(|secs| now + secs),
            })
        }

        fn issuers(&self) -> Vec<String> {
            vec![ISS.into()]
        }
    }

    /// A broker whose authenticator is `answers`, and its store.
    pub(super) async fn answered_broker(answers: Answers) -> (Broker, Arc<DevStore>) {
        answered_by(Arc::new(answers)).await
    }

    /// A broker whose authenticator is `authn`, and its store.
    pub(super) async fn answered_by(
        authn: Arc<dyn crate::auth::Authenticator>,
    ) -> (Broker, Arc<DevStore>) {
        let store = Arc::new(DevStore::in_memory());
        put(store.as_ref(), b"v1").await;
        let broker = Broker::new(authn, Policy::from_yaml(READS).unwrap(), store.clone());
        (broker, store)
    }
}
