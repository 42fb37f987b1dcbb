//! What Linux tells about this process: its threads' CPU clocks, its
//! resident memory, and its limit on open descriptors.

use std::time::Duration;

/// Descriptors the bench asks for: both sides' 10,000 connections at once,
/// in each process.
const WANTED_FDS: u64 = 65_536;

/// Raises the limit on open descriptors to [`WANTED_FDS`] (root may raise
/// the hard limit, up to the kernel's `nr_open`), else the soft limit to
/// the hard one.
pub(crate) fn raise_fd_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else {
        return;
    };
    let nr_open = std::fs::read_to_string("/proc/sys/fs/nr_open")
        .ok()
        .and_then(|n| n.trim().parse::<u64>().ok())
        .unwrap_or(hard);
    let wanted = WANTED_FDS.min(nr_open).max(hard);
    if soft >= wanted || setrlimit(Resource::RLIMIT_NOFILE, wanted, wanted).is_ok() {
        return;
    }
    if soft < hard
        && let Err(e) = setrlimit(Resource::RLIMIT_NOFILE, hard, hard)
    {
        eprintln!("coffer-bench: keeping the descriptor limit at {soft}: {e}");
    }
}

/// The soft limit on open descriptors (of each process: the server process
/// inherits it).
pub(crate) fn fd_limit() -> usize {
    nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        .map_or(1024, |(soft, _)| {
            usize::try_from(soft).unwrap_or(usize::MAX)
        })
}

/// On-CPU time so far of this process's threads named `name` (the server
/// runtime's, read in the server process).
pub(crate) fn threads_cpu(name: &str) -> Duration {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return Duration::ZERO;
    };
    let mut total = 0u64;
    for task in tasks.flatten() {
        let dir = task.path();
        let named =
            std::fs::read_to_string(dir.join("comm")).is_ok_and(|comm| comm.trim_end() == name);
        if !named {
            continue;
        }
        // The thread's CPU clock: counts to the nanosecond, where a running
        // thread's schedstat moves only at scheduler ticks (4 ms here).
        if let Some(cpu) = task
            .file_name()
            .to_str()
            .and_then(|tid| tid.parse::<i32>().ok())
            .and_then(thread_cpu_of)
        {
            total += u64::try_from(cpu.as_nanos()).unwrap_or(u64::MAX);
            continue;
        }
        // schedstat: on-CPU nanoseconds first.
        if let Some(ns) = std::fs::read_to_string(dir.join("schedstat"))
            .ok()
            .and_then(|s| {
                s.split_whitespace()
                    .next()
                    .and_then(|n| n.parse::<u64>().ok())
            })
        {
            total += ns;
        }
    }
    Duration::from_nanos(total)
}

/// This process's resident memory.
pub(crate) fn rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

/// On-CPU time so far of thread `tid` of this process, from its CPU clock:
/// the id Linux gives it is `(!tid << 3) | 6` (per thread, scheduler time;
/// glibc's `pthread_getcpuclockid` computes the same).
fn thread_cpu_of(tid: i32) -> Option<Duration> {
    use nix::time::{ClockId, clock_gettime};
    let clock = ClockId::from_raw((!tid << 3) | 6);
    let t = clock_gettime(clock).ok()?;
    Some(Duration::new(
        u64::try_from(t.tv_sec()).ok()?,
        u32::try_from(t.tv_nsec()).ok()?,
    ))
}

/// On-CPU time of the calling thread so far.
pub(crate) fn thread_cpu() -> Duration {
    // The clock, not `/proc/thread-self/schedstat`: a running thread's
    // schedstat moves only at scheduler ticks (4 ms here), the clock counts
    // to the nanosecond.
    use nix::time::{ClockId, clock_gettime};
    clock_gettime(ClockId::CLOCK_THREAD_CPUTIME_ID).map_or(Duration::ZERO, |t| {
        Duration::new(
            u64::try_from(t.tv_sec()).unwrap_or(0),
            u32::try_from(t.tv_nsec()).unwrap_or(0),
        )
    })
}
