//! The Vault nodes the store may talk to, which one it talks to now, and
//! how it finds the active one.
//!
//! With one address (a node, or a Service that follows the active node)
//! there is nothing to choose. With `addresses` naming every node of an HA
//! cluster the store talks to the active node: `/v1/sys/health` answers
//! 200 there (429 on a standby, 472/473 on DR and performance standbys,
//! 501 uninitialised, 503 sealed). When a call to the node in use fails in
//! a way another node might not (connection refused or reset, timeout,
//! 5xx, 429), every node is probed at once and the store moves to the one
//! that answers active, if it is another; the failed call is then retried
//! there within its retry budget. A standby forwards what it cannot serve,
//! so the store also checks now and then that the node it uses is still
//! the active one and moves back when it is not.

use std::{
    sync::atomic::{AtomicU64, AtomicUsize, Ordering},
    time::Duration,
};

use parking_lot::Mutex;
use vaultrs::client::VaultClient;

/// What a node's `/v1/sys/health` said.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum NodeState {
    Active,
    Standby,
    PerformanceStandby,
    DrSecondary,
    Uninitialized,
    Sealed,
    /// Another status code.
    Other(u16),
    /// No HTTP answer (refused, reset, timed out).
    Unreachable,
}

impl NodeState {
    /// The state a `/v1/sys/health` status code stands for (Vault's and
    /// OpenBao's default codes).
    pub(super) fn from_status(code: u16) -> Self {
        match code {
            200 => Self::Active,
            429 => Self::Standby,
            472 => Self::DrSecondary,
            473 => Self::PerformanceStandby,
            501 => Self::Uninitialized,
            503 => Self::Sealed,
            other => Self::Other(other),
        }
    }
}

/// Asks one node's `/v1/sys/health` (no token), waiting at most `timeout`.
pub(super) async fn probe(client: &VaultClient, timeout: Duration) -> NodeState {
    let url = format!(
        "{}/v1/sys/health",
        client.settings.address.as_str().trim_end_matches('/')
    );
    let Ok(request) = http::Request::get(url).body(Vec::new()) else {
        return NodeState::Unreachable;
    };
    match tokio::time::timeout(
        timeout,
        rustify::client::Client::send(&client.http, request),
    )
    .await
    {
        Ok(Ok(response)) => NodeState::from_status(response.status().as_u16()),
        Ok(Err(_)) | Err(_) => NodeState::Unreachable,
    }
}

/// The nodes and the one in use.
pub(super) struct Nodes {
    urls: Vec<url::Url>,
    /// A client without a token per node, for the health probes.
    probes: Vec<VaultClient>,
    current: AtomicUsize,
    /// Bumped at each move to another node: a call that failed on the node
    /// before retries at once on the new one instead of probing again.
    epoch: AtomicU64,
    /// One search for the active node at a time.
    searching: tokio::sync::Mutex<()>,
    /// What the node in use last answered to a health probe.
    state: Mutex<NodeState>,
}

impl Nodes {
    pub(super) fn new(urls: Vec<url::Url>, probes: Vec<VaultClient>) -> Self {
        let nodes = Self {
            urls,
            probes,
            current: AtomicUsize::new(0),
            epoch: AtomicU64::new(0),
            searching: tokio::sync::Mutex::new(()),
            state: Mutex::new(NodeState::Other(0)),
        };
        nodes.report();
        nodes
    }

    /// Whether there is a choice to make (several addresses).
    pub(super) fn several(&self) -> bool {
        self.urls.len() > 1
    }

    /// The address in use.
    pub(super) fn current(&self) -> &url::Url {
        &self.urls[self.current.load(Ordering::Acquire) % self.urls.len()]
    }

    /// The number of moves so far.
    pub(super) fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    /// The state of every node, probed at once.
    pub(super) async fn probe_all(&self, timeout: Duration) -> Vec<NodeState> {
        futures::future::join_all(self.probes.iter().map(|c| probe(c, timeout))).await
    }

    /// The state of the node in use, probed now.
    pub(super) async fn probe_current(&self, timeout: Duration) -> NodeState {
        let index = self.current.load(Ordering::Acquire) % self.probes.len();
        let state = probe(&self.probes[index], timeout).await;
        *self.state.lock() = state;
        state
    }

    /// Whether the node in use answered active when last probed.
    pub(super) fn on_active(&self) -> bool {
        *self.state.lock() == NodeState::Active
    }

    /// After a failure seen at `epoch`: finds the active node and, if it is
    /// another, makes it the one in use, then calls `switch` (which
    /// rebuilds the client for [`Self::current`]) and returns its address.
    /// `Some` also when someone else moved since `epoch`: the caller
    /// retries on the new node. `None`: stay (no other node is active, or
    /// there is one node only).
    pub(super) async fn find_active(
        &self,
        epoch: u64,
        timeout: Duration,
        switch: impl FnOnce(),
    ) -> Option<url::Url> {
        if !self.several() {
            return None;
        }
        let _one_search = self.searching.lock().await;
        if self.epoch() != epoch {
            return Some(self.current().clone());
        }
        let states = self.probe_all(timeout).await;
        let from = self.current.load(Ordering::Acquire);
        *self.state.lock() = states[from];
        let to = choose_active(&states, from)?;
        *self.state.lock() = NodeState::Active;
        let previous = self.urls[from].clone();
        let next = &self.urls[to];
        self.current.store(to, Ordering::Release);
        switch();
        self.epoch.fetch_add(1, Ordering::AcqRel);
        self.report();
        crate::metrics::backend_failover();
        tracing::info!(
            from = %previous,
            to = %next,
            from_state = ?states[from],
            "Vault failover: now talking to the active node"
        );
        Some(next.clone())
    }

    /// Publishes the node in use.
    fn report(&self) {
        let current = self.current.load(Ordering::Acquire);
        for (i, url) in self.urls.iter().enumerate() {
            crate::metrics::backend_node(url.as_str(), i == current);
        }
    }
}

/// The node to move to: the active one, unless it is the one in use
/// (`from`) or there is none. Two answering active (a leader that has not
/// noticed it was replaced) give the first other than `from`: the one in
/// use just failed.
fn choose_active(states: &[NodeState], from: usize) -> Option<usize> {
    if states.get(from) == Some(&NodeState::Active) {
        return None;
    }
    states
        .iter()
        .enumerate()
        .find(|(i, s)| *i != from && **s == NodeState::Active)
        .map(|(i, _)| i)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A fixed HTTP answer on a loopback port, standing in for one node's
    /// `/v1/sys/health` in this parser test only: the real cluster's
    /// answers are tested in tests/e2e/reliability/failover.rs.
    async fn answering(status: &'static str) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                let mut buffer = [0u8; 1024];
                let _ = socket.read(&mut buffer).await;
                let body = r#"{"initialized":true}"#;
                let reply = format!(
                    "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = socket.write_all(reply.as_bytes()).await;
            }
        });
        address
    }

    fn client(address: &str) -> VaultClient {
        let settings = vaultrs::client::VaultClientSettingsBuilder::default()
            .address(address)
            .build()
            .unwrap();
        VaultClient::new(settings).unwrap()
    }

    #[tokio::test]
    async fn a_health_answer_says_which_state_the_node_is_in() {
        let _ = rustls::crypto::ring::default_provider().install_default();
        for (status, state) in [
            ("200 OK", NodeState::Active),
            ("429 Too Many Requests", NodeState::Standby),
            ("472 Custom", NodeState::DrSecondary),
            ("473 Custom", NodeState::PerformanceStandby),
            ("501 Not Implemented", NodeState::Uninitialized),
            ("503 Service Unavailable", NodeState::Sealed),
            ("500 Internal Server Error", NodeState::Other(500)),
        ] {
            let address = answering(status).await;
            let got = probe(&client(&address), Duration::from_secs(5)).await;
            assert_eq!(got, state, "{status}");
        }
        // Nothing listens on a port just released.
        let free = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = format!("http://{}", free.local_addr().unwrap());
        drop(free);
        let got = probe(&client(&address), Duration::from_secs(5)).await;
        assert_eq!(got, NodeState::Unreachable);
    }

    #[test]
    fn the_store_moves_only_to_another_active_node() {
        use NodeState::*;
        assert_eq!(choose_active(&[Unreachable, Active, Standby], 0), Some(1));
        assert_eq!(choose_active(&[Active, Standby, Standby], 0), None);
        assert_eq!(choose_active(&[Unreachable, Standby, Sealed], 0), None);
        assert_eq!(choose_active(&[Active, Active, Standby], 0), None);
        assert_eq!(choose_active(&[Standby, Active, Active], 1), None);
        assert_eq!(choose_active(&[Standby, Unreachable, Active], 1), Some(2));
    }
}
