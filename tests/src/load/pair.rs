//! Two broker replicas on one Vault, each the other's peer (as the chart
//! runs them): a write through either reaches watchers on both, and
//! `status` on either lists the pods of both.

use std::ffi::OsStr;

use crate::{
    broker::BrokerProcess,
    http::free_port,
    tokens::{Key, mint},
};

/// Replicas `a` and `b`.
pub struct BrokerPair {
    pub a: BrokerProcess,
    pub b: BrokerProcess,
    _dir: tempfile::TempDir,
}

impl BrokerPair {
    /// Starts both with `policy` and `args` (the Vault flags, limits...),
    /// logging at `info` (the suite's default, debug, would log every
    /// stream of a load).
    pub fn start(policy: &str, args: &[String]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let peer_token = dir.path().join("peer-token");
        std::fs::write(&peer_token, mint(Key::Rsa, "coffer", "broker")).unwrap();
        let (pa, pb) = (free_port(), free_port());
        let launch = |me: u16, peer: u16| {
            let mut all: Vec<String> = args.to_vec();
            all.extend([
                "--log-level".into(),
                "info".into(),
                "--peer".into(),
                format!("http://127.0.0.1:{peer}"),
                "--peer-token-file".into(),
                peer_token.display().to_string(),
                "--peer-identity".into(),
                "coffer/broker".into(),
            ]);
            BrokerProcess::builder()
                .policy(policy)
                .listen(&format!("127.0.0.1:{me}"))
                .args(all.iter().map(OsStr::new))
                .start()
        };
        let a = launch(pa, pb);
        let b = launch(pb, pa);
        Self { a, b, _dir: dir }
    }

    /// Both replicas' endpoints.
    pub fn endpoints(&self) -> Vec<String> {
        vec![self.a.endpoint.clone(), self.b.endpoint.clone()]
    }
}
