//! What a load is pointed at: a server's address (and the CA its TLS
//! certificate chains to), and how much CPU its side has spent so far.

use std::time::Duration;

use crate::child::{ServerProcess, Side};

/// One server under load.
pub(crate) trait Target: Sync {
    /// `http://` or `https://` and the address.
    fn url(&self) -> &str;
    /// The CA to trust for an `https://` URL.
    fn ca_pem(&self) -> Option<&[u8]> {
        None
    }
    /// The server's on-CPU time so far.
    fn cpu(&self) -> anyhow::Result<Duration>;
}

/// One side of the in-process server pair (`--serve`): its CPU is the
/// child's server threads', which both sides share.
pub(crate) struct InProcess<'a> {
    pub(crate) server: &'a ServerProcess,
    pub(crate) side: Side,
}

impl Target for InProcess<'_> {
    fn url(&self) -> &str {
        self.server.url(self.side)
    }

    fn cpu(&self) -> anyhow::Result<Duration> {
        self.server.cpu()
    }
}

/// The CPU time so far of the whole process `pid` (every thread), read
/// from its process CPU clock (`(!pid << 3) | 2`, which glibc's
/// `clock_getcpuclockid` computes): to the nanosecond, where
/// `/proc/PID/stat` counts 10 ms ticks.
pub(crate) fn process_cpu(pid: u32) -> anyhow::Result<Duration> {
    use nix::time::{ClockId, clock_gettime};
    let pid = i32::try_from(pid)?;
    let t = clock_gettime(ClockId::from_raw((!pid << 3) | 2))?;
    Ok(Duration::new(
        u64::try_from(t.tv_sec())?,
        u32::try_from(t.tv_nsec())?,
    ))
}

/// The resident memory of process `pid`.
pub(crate) fn process_rss(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}
