//! The fan-out of rotations: a new version of a shared path is read and
//! encoded once, then sent by every stream that watches the path.

use std::{
    sync::{Arc, Weak},
    time::{Duration, Instant},
};

use coffer_proto::{v1, wire::WatchReply};

use crate::service::{Broker, Call, decisions::Allowed, read_reason};
use crate::swept::SweptMap;
use crate::{auth::WorkloadIdentity, error::ApiError, path::SecretPath, policy::Capability};

impl Broker {
    /// Reads one watched path's new version and audits what is sent. The
    /// watch grant is reused until a policy change clears it (the stream
    /// sees every change before its next update); the version's update is
    /// read and encoded once and shared by every stream on the path (see
    /// [`FanOut`]). Returns the version served and its message.
    pub(super) async fn serve_update(
        &self,
        call: &Call,
        who: &WorkloadIdentity,
        (path, fanout): &(SecretPath, Option<Arc<Slot>>),
        version: u64,
        granted: &mut Option<Box<Allowed>>,
    ) -> Result<(u64, WatchReply), ApiError> {
        let watch = match granted {
            Some(watch) => watch,
            None => granted.insert(Box::new(
                self.authorize(call, who, path, Capability::Watch).await?,
            )),
        };
        let cached = fanout
            .as_ref()
            .and_then(|slot| slot.get(version, Instant::now()));
        let result = match cached {
            Some(reply) => Ok((version, reply)),
            None => self.read(who, path, Some(version)).await.map(|secret| {
                let served = secret.version;
                let update = v1::WatchSecretsResponse {
                    kind: v1::WatchEventKind::Update as i32,
                    secrets: vec![secret],
                };
                match fanout {
                    Some(slot) => {
                        let reply = WatchReply::encoded(&update);
                        slot.put(version, &reply);
                        (served, reply)
                    }
                    None => (served, update.into()),
                }
            }),
        };
        let served = result.as_ref().ok().map(|(v, _)| *v);
        self.audit_served(call, who, path, watch, served, read_reason(&result))
            .await?;
        result
    }
}

/// How long a version's update is shared after it was first read: long
/// enough for one fan-out, short enough that a deleted version is not served
/// from here for long.
const FANOUT_TTL: Duration = Duration::from_secs(2);

/// The newest update of each watched path, read and encoded once and shared
/// by every stream that sends it. Each stream holds its path's [`Slot`], so
/// an update costs one read lock on the slot, not a lookup under a lock
/// every stream shares.
///
/// Each watched path's slot is held weakly: a slot lives as long as a
/// stream holds it, so the index is bounded by the paths open streams watch
/// (and the dead entries since its last sweep).
#[derive(Default)]
pub(crate) struct FanOut {
    index: parking_lot::Mutex<SweptMap<SecretPath, Weak<Slot>>>,
}

impl FanOut {
    /// The slot of `path`, shared by every stream that watches it now.
    pub(super) fn slot(&self, path: &SecretPath) -> Arc<Slot> {
        let mut index = self.index.lock();
        if let Some(slot) = index.get(path).and_then(Weak::upgrade) {
            return slot;
        }
        let slot = Arc::new(Slot::default());
        index.insert(path.clone(), Arc::downgrade(&slot), |_, slot| {
            slot.strong_count() > 0
        });
        slot
    }

    /// Paths in the index, dead entries included (for tests).
    #[cfg(test)]
    fn indexed(&self) -> usize {
        self.index.lock().len()
    }
}

/// One path's newest update: its version, when it was read, and its encoded
/// message, whose bytes are wiped when the last stream drops them.
#[derive(Default)]
pub(super) struct Slot {
    newest: parking_lot::RwLock<Option<(u64, Instant, WatchReply)>>,
}

impl Slot {
    /// The update to `version`, if it was read in the [`FANOUT_TTL`] before
    /// `now`.
    pub(super) fn get(&self, version: u64, now: Instant) -> Option<WatchReply> {
        let newest = self.newest.read();
        let (v, at, reply) = newest.as_ref()?;
        (*v == version && now.saturating_duration_since(*at) < FANOUT_TTL).then(|| reply.clone())
    }

    pub(super) fn put(&self, version: u64, reply: &WatchReply) {
        let mut newest = self.newest.write();
        // An older version never replaces a newer one.
        if newest.as_ref().is_none_or(|(v, _, _)| *v <= version) {
            *newest = Some((version, Instant::now(), reply.clone()));
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use coffer_proto::{SecretBytes, SecretData};
    use futures::StreamExt;

    use super::*;
    use crate::path::SecretName;
    use crate::service::watch::testing::*;
    use crate::{
        auth::{
            jwt::{JwtVerifier, KeySet, VerifierConfig},
            signer::DevSigner,
        },
        policy::Policy,
        store::{SecretStore, SecretWrite, dev::DevStore},
    };

    #[test]
    fn the_fan_out_index_drops_paths_no_stream_watches() {
        let fanout = FanOut::default();
        let path = |n: usize| SecretPath::parse(&format!("shop/p{n}")).unwrap();
        let held: Vec<_> = (0..10).map(|n| fanout.slot(&path(n))).collect();
        // A path's streams share one slot.
        assert!(Arc::ptr_eq(&held[3], &fanout.slot(&path(3))));
        // Thousands of paths watched and left: the index stays bounded.
        for n in 10..10_000 {
            drop(fanout.slot(&path(n)));
        }
        assert!(fanout.indexed() <= 1024, "{}", fanout.indexed());
        // The held slots survive every sweep.
        for (n, slot) in held.iter().enumerate() {
            assert!(Arc::ptr_eq(slot, &fanout.slot(&path(n))));
        }
    }

    #[tokio::test]
    async fn an_update_read_once_reaches_every_watcher_audited_per_stream_under_the_current_rule() {
        let dir = tempfile::tempdir().unwrap();
        let audit = dir.path().join("audit.log");
        let (broker, token, store) = broker(&audit).await;
        let mut streams = Vec::new();
        for _ in 0..3 {
            let mut stream = open(&broker, &token).await;
            stream.next().await.unwrap().unwrap();
            streams.push(stream);
        }
        put(store.as_ref(), b"v2").await;
        for stream in &mut streams {
            let update = message(stream.next().await);
            assert_eq!(update.secrets[0].version, 2);
        }
        // Same access under another rule name: the cached grant is not
        // reused across the policy change.
        broker.set_policy(Policy::from_yaml(&READS.replace("web-reads", "web-reads-2")).unwrap());
        put(store.as_ref(), b"v3").await;
        for stream in &mut streams {
            let update = message(stream.next().await);
            assert_eq!(update.secrets[0].version, 3);
        }
        let text = std::fs::read_to_string(&audit).unwrap();
        let served: Vec<(u64, String)> = text
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .filter(|r| r["capability"] == "watch" && r["version"].as_u64() > Some(1))
            .map(|r| {
                (
                    r["version"].as_u64().unwrap(),
                    r["rule"].as_str().unwrap_or("").to_string(),
                )
            })
            .collect();
        let mut expected = vec![(2, "web-reads".to_string()); 3];
        expected.extend(vec![(3, "web-reads-2".to_string()); 3]);
        assert_eq!(served, expected);
    }

    /// A store whose every version is each holder's own (as a leased path
    /// is): the value names the pod it was issued to.
    struct PerPod(DevStore);

    #[async_trait::async_trait]
    impl SecretStore for PerPod {
        async fn get(
            &self,
            path: &SecretName,
            version: Option<u64>,
        ) -> Result<crate::store::StoredSecret, crate::store::StoreError> {
            self.0.get(path, version).await
        }
        async fn get_held(
            &self,
            holder: &crate::store::Holder,
            path: &SecretName,
            version: Option<u64>,
        ) -> Result<crate::store::StoredSecret, crate::store::StoreError> {
            let mut stored = self.0.get(path, version).await?;
            let pod = holder.pod().unwrap_or_default().to_string();
            stored.data = SecretData::Bytes(SecretBytes::from(pod.as_bytes()));
            Ok(stored)
        }
        async fn put(
            &self,
            path: &SecretName,
            write: SecretWrite,
        ) -> Result<u64, crate::store::StoreError> {
            self.0.put(path, write).await
        }
        async fn versions(
            &self,
            path: &SecretName,
        ) -> Result<(u64, Vec<crate::store::VersionInfo>), crate::store::StoreError> {
            self.0.versions(path).await
        }
        fn subscribe(&self, path: &SecretName) -> tokio::sync::watch::Receiver<u64> {
            self.0.subscribe(path)
        }
        fn shared(&self, _path: &SecretName) -> bool {
            false
        }
    }

    #[tokio::test]
    async fn an_update_of_a_per_holder_path_is_never_shared_between_pods() {
        let signer = DevSigner::generate(ISS).unwrap();
        let keys = KeySet::from_jwks_json(signer.jwks_json().as_bytes()).unwrap();
        let authn = JwtVerifier::new(VerifierConfig::new(ISS, "coffer"), keys);
        let store = Arc::new(PerPod(DevStore::in_memory()));
        put(store.as_ref(), b"v1").await;
        let broker = Broker::new(
            Arc::new(authn),
            Policy::from_yaml(READS).unwrap(),
            store.clone(),
        );
        let mut streams = Vec::new();
        for pod in ["web-0", "web-1"] {
            let token = signer
                .mint("coffer", "shop", "web", Some(pod), Duration::from_secs(600))
                .unwrap();
            let mut stream = open(&broker, &token).await;
            stream.next().await.unwrap().unwrap();
            streams.push((pod, stream));
        }
        put(store.as_ref(), b"v2").await;
        // Each pod's value is its own (here: its pod uid), never the one
        // another stream read first.
        let mut values = Vec::new();
        for (_, stream) in &mut streams {
            let update = message(stream.next().await);
            let secret = update.secrets.into_iter().next().unwrap();
            match SecretData::try_from(secret.value.unwrap()).unwrap() {
                SecretData::Bytes(bytes) => values.push(bytes.expose().to_vec()),
                SecretData::Map(_) => panic!("a map"),
            }
        }
        assert_ne!(values[0], values[1]);
    }
}
