//! A TCP fault proxy between the broker and Vault, on `127.0.0.1:0`, run
//! by a thread of its own (so sync and async tests drive it alike). It
//! stands where a Kubernetes Service stands and makes the network faults
//! `tc netem` cannot make here:
//!
//! - [`Target::Fixed`]: forward to one address;
//! - [`Target::FollowActive`]: each new connection goes to the node that
//!   answers `/v1/sys/health` with 200 (what a `vault-active` Service
//!   does; none active: the connection is closed at once, as a Service
//!   without ready endpoints refuses it);
//! - [`Target::RoundRobin`]: each new connection to the next address (the
//!   chart's all-pods Service);
//! - [`FaultProxy::blackhole`]: a partition without RST: connections are
//!   accepted and held, no byte crosses in either direction (those of open
//!   connections included) until [`FaultProxy::heal`];
//! - [`FaultProxy::cut`]: closes every open connection.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    time::Duration,
};

use parking_lot::Mutex;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::watch,
};

/// Where the proxy sends a new connection.
#[derive(Debug, Clone)]
pub enum Target {
    /// Always this address.
    Fixed(SocketAddr),
    /// The node of these that answers as active now.
    FollowActive(Vec<SocketAddr>),
    /// The next of these, in turn.
    RoundRobin(Vec<SocketAddr>),
}

/// The proxy's state, shared with its thread.
struct Shared {
    target: Mutex<Target>,
    next: AtomicUsize,
    /// Whether bytes may cross (false: blackholed).
    open: watch::Sender<bool>,
    /// Bumped by [`FaultProxy::cut`]; every connection ends when it moves.
    epoch: watch::Sender<u64>,
    connections: AtomicU64,
}

/// A running fault proxy; it stops when dropped.
pub struct FaultProxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl FaultProxy {
    /// A proxy forwarding to `target`.
    pub fn start(target: Target) -> Self {
        let (open, _) = watch::channel(true);
        let (epoch, _) = watch::channel(0);
        let shared = Arc::new(Shared {
            target: Mutex::new(target),
            next: AtomicUsize::new(0),
            open,
            epoch,
            connections: AtomicU64::new(0),
        });
        let std_listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        std_listener.set_nonblocking(true).unwrap();
        let addr = std_listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel();
        let thread_shared = shared.clone();
        std::thread::Builder::new()
            .name("fault-proxy".into())
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                runtime.block_on(async move {
                    let listener = TcpListener::from_std(std_listener).unwrap();
                    tokio::select! {
                        () = accept_loop(listener, thread_shared) => {}
                        _ = stopped => {}
                    }
                });
            })
            .unwrap();
        Self {
            addr,
            shared,
            stop: Some(stop),
        }
    }

    /// A proxy that follows the active node of `cluster`.
    pub fn follow_active(cluster: &crate::openbao_cluster::RaftCluster) -> Self {
        Self::start(Target::FollowActive(cluster.sockets()))
    }

    /// A proxy that spreads connections over every node of `cluster`.
    pub fn round_robin(cluster: &crate::openbao_cluster::RaftCluster) -> Self {
        Self::start(Target::RoundRobin(cluster.sockets()))
    }

    /// `http://127.0.0.1:PORT`, for the broker's Vault `address`.
    pub fn address(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The listening socket address.
    pub fn socket(&self) -> SocketAddr {
        self.addr
    }

    /// Sends new connections to `target` from now on.
    pub fn retarget(&self, target: Target) {
        *self.shared.target.lock() = target;
    }

    /// A partition without RST: nothing crosses, connections stay open.
    pub fn blackhole(&self) {
        self.shared.open.send_replace(false);
    }

    /// Ends a [`blackhole`](Self::blackhole): held bytes flow again (as TCP
    /// retransmits them after a partition heals).
    pub fn heal(&self) {
        self.shared.open.send_replace(true);
    }

    /// Closes every open connection (new ones are accepted as before).
    pub fn cut(&self) {
        self.shared.epoch.send_modify(|e| *e += 1);
    }

    /// How many connections the proxy accepted so far.
    pub fn connections(&self) -> u64 {
        self.shared.connections.load(Ordering::Relaxed)
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.cut();
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        let Ok((client, _)) = listener.accept().await else {
            continue;
        };
        shared.connections.fetch_add(1, Ordering::Relaxed);
        tokio::spawn(connection(client, shared.clone()));
    }
}

/// One client connection: wait while blackholed, pick the upstream, pump
/// bytes both ways until either side closes or the proxy cuts.
async fn connection(client: TcpStream, shared: Arc<Shared>) {
    let mut epoch = shared.epoch.subscribe();
    epoch.mark_unchanged();
    let mut open = shared.open.subscribe();
    let work = async {
        // A partition holds a connection attempt, too.
        let _ = open.wait_for(|o| *o).await;
        let Some(upstream) = pick(&shared).await else {
            return;
        };
        let Ok(upstream) = TcpStream::connect(upstream).await else {
            return;
        };
        let _ = client.set_nodelay(true);
        let _ = upstream.set_nodelay(true);
        let (cr, cw) = client.into_split();
        let (ur, uw) = upstream.into_split();
        tokio::select! {
            () = pump(cr, uw, shared.open.subscribe()) => {}
            () = pump(ur, cw, shared.open.subscribe()) => {}
        }
    };
    tokio::select! {
        () = work => {}
        _ = epoch.changed() => {}
    }
}

/// Copies `from` to `to`, holding each chunk while the proxy is blackholed.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut open: watch::Receiver<bool>,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if open.wait_for(|o| *o).await.is_err() {
            return;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

/// The upstream for a new connection.
async fn pick(shared: &Shared) -> Option<SocketAddr> {
    let target = shared.target.lock().clone();
    match target {
        Target::Fixed(addr) => Some(addr),
        Target::RoundRobin(addrs) => {
            let i = shared.next.fetch_add(1, Ordering::Relaxed);
            addrs.get(i % addrs.len().max(1)).copied()
        }
        Target::FollowActive(addrs) => {
            for addr in addrs {
                if health(addr).await == Some(200) {
                    return Some(addr);
                }
            }
            None
        }
    }
}

/// `/v1/sys/health` of `addr` within 500 ms.
async fn health(addr: SocketAddr) -> Option<u16> {
    let ask = async {
        let mut stream = TcpStream::connect(addr).await.ok()?;
        stream
            .write_all(b"GET /v1/sys/health HTTP/1.0\r\nHost: localhost\r\n\r\n")
            .await
            .ok()?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await.ok()?;
        let response = String::from_utf8_lossy(&response);
        response.split_whitespace().nth(1)?.parse().ok()
    };
    tokio::time::timeout(Duration::from_millis(500), ask)
        .await
        .ok()
        .flatten()
}
