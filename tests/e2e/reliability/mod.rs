//! Reliability on a real 3-node OpenBao raft cluster (issue #27): the
//! toolkit itself, then one file per fault scenario. Each scenario prints
//! its figures on one line, `reliability: <scenario>: key=value ...`, for
//! docs/reliability.md. The CI form is short; `COFFER_CHAOS_FULL=1` runs
//! the full form (`scripts/chaos`).

mod cluster;
mod failover;
mod leader_kill;
mod partition;
mod quorum;
mod replica_kill;
mod restart_storm;
mod scenario;
mod soak;
mod standby_reads;
mod watchers;
