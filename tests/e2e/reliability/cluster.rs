//! The raft toolkit itself: three nodes start, elect a leader and make
//! every node a voter; a write on the active node is read on a standby
//! (OpenBao's standby reads, counted by that node's audit log); a SIGKILL
//! of the leader elects another; the node restarted on its data rejoins as
//! a standby and catches up. The fault proxy follows the active node,
//! blackholes and heals.

use std::{
    io::{Read, Write},
    net::TcpStream,
    time::{Duration, Instant},
};

use coffer_tests::{eventually, fault::FaultProxy, openbao_cluster::RaftCluster};

/// `/v1/sys/health` through the proxy, or `None` within `timeout`.
fn health_through(proxy: &FaultProxy, timeout: Duration) -> Option<u16> {
    let mut stream = TcpStream::connect(proxy.socket()).ok()?;
    stream.set_read_timeout(Some(timeout)).ok()?;
    stream
        .write_all(b"GET /v1/sys/health HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    response.split_whitespace().nth(1)?.parse().ok()
}

#[test]
fn a_raft_cluster_elects_replicates_fails_over_and_rejoins() {
    let _turn = coffer_tests::serial::heavy();
    let mut cluster = RaftCluster::start();
    let leader = cluster.leader();
    assert_eq!(cluster.voters(), 3, "every node is a raft voter");
    let standbys = cluster.standbys();
    assert_eq!(standbys.len(), 2, "two standbys beside the leader");

    // A write on the active node, read on a standby from its own copy.
    let v1 = cluster.write("shop/db", &[("password", "one")]);
    let standby = standbys[0];
    eventually(Duration::from_secs(10), "the standby to have v1", || {
        cluster
            .read_at(standby, "shop/db", None)
            .filter(|(v, data)| *v == v1 && data["password"] == "one")
    });
    let per_node = cluster.audited_per_node("read", "secret/data/shop/db");
    assert!(
        per_node[standby] >= 1,
        "the standby answered the read itself: {per_node:?}"
    );
    assert_eq!(cluster.reads("shop/db"), per_node.iter().sum::<usize>());

    // The proxy reaches the active node; a blackhole holds, heal restores.
    let proxy = FaultProxy::follow_active(&cluster);
    assert_eq!(health_through(&proxy, Duration::from_secs(5)), Some(200));
    proxy.blackhole();
    assert_eq!(health_through(&proxy, Duration::from_millis(700)), None);
    proxy.heal();
    assert_eq!(health_through(&proxy, Duration::from_secs(5)), Some(200));

    // SIGKILL the leader: another is elected and takes writes.
    cluster.kill(leader);
    let (new_leader, election) = cluster.wait_for_leader(Duration::from_secs(60));
    assert_ne!(new_leader, leader);
    let v2 = cluster.write("shop/db", &[("password", "two")]);
    assert_eq!(v2, v1 + 1, "nothing acknowledged was lost");
    assert_eq!(
        health_through(&proxy, Duration::from_secs(5)),
        Some(200),
        "the proxy follows the new leader"
    );

    // Restarted on its data, the old leader comes back as a standby and
    // catches up.
    let begin = Instant::now();
    cluster.restart(leader);
    let restart = begin.elapsed();
    assert_eq!(cluster.health(leader), Some(429));
    eventually(
        Duration::from_secs(20),
        "the restarted node to catch up",
        || {
            cluster
                .read_at(leader, "shop/db", None)
                .filter(|(v, _)| *v == v2)
        },
    );
    eventually(Duration::from_secs(20), "three voters again", || {
        (cluster.voters() == 3).then_some(())
    });
    println!(
        "reliability: toolkit: start_s={:.1} election_after_sigkill_s={:.2} restart_to_standby_s={:.1}",
        cluster.started_in.as_secs_f64(),
        election.as_secs_f64(),
        restart.as_secs_f64()
    );
}
