//! `--restart-on-change`: coffer-env stays as the parent of the app, watches
//! the referenced paths, and restarts the app with the new environment when
//! a version changes.
//!
//! - A burst of rotations restarts once: a change waits for a quiet
//!   `debounce` (at most ten of them after the first change) before the
//!   restart begins.
//! - A restart is SIGTERM, up to `grace` for the app to exit, SIGKILL, then
//!   the new app. A new version that cannot make an environment (a key gone)
//!   keeps the running app and is acknowledged as failed.
//! - SIGTERM, SIGINT, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2 and SIGWINCH are
//!   passed to the app; after SIGTERM, SIGINT or SIGQUIT no restart begins.
//! - When the app exits on its own (or after a forwarded signal),
//!   coffer-env exits with its status: its code, or 128 + the signal that
//!   ended it, as a shell reports it.
//! - Every child is reaped, the app's orphans too: in a container
//!   coffer-env is PID 1.
//! - Each applied version is acknowledged to the broker, so
//!   `cofferctl status` counts this process among the path's consumers.

use std::{
    collections::BTreeMap,
    ffi::OsString,
    process::{Command, ExitCode},
    time::Duration,
};

use coffer::{Applied, ApplyState, Client, Secret, WatchStream};
use nix::{
    errno::Errno,
    sys::{
        signal::{Signal, kill},
        wait::{WaitPidFlag, WaitStatus, waitpid},
    },
    unistd::Pid,
};
use tokio::{
    signal::unix::{SignalKind, signal},
    sync::mpsc,
    time::Instant,
};

use crate::{
    reference::Plan,
    resolve::{ResolvedEnv, build, changed, versions},
};

/// The signals passed on to the app.
pub const FORWARDED: [Signal; 7] = [
    Signal::SIGTERM,
    Signal::SIGINT,
    Signal::SIGHUP,
    Signal::SIGQUIT,
    Signal::SIGUSR1,
    Signal::SIGUSR2,
    Signal::SIGWINCH,
];

/// How restarts are paced.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// How long the app has to exit after SIGTERM before SIGKILL.
    pub grace: Duration,
    /// How long the versions must stay still before a restart.
    pub debounce: Duration,
}

/// A restart under way: the old app was sent SIGTERM.
struct Restart {
    env: ResolvedEnv,
    versions: BTreeMap<String, u64>,
    kill_at: Instant,
    killed: bool,
}

/// Runs `command` with the environment of `first`, restarting it on
/// change, until it exits; returns its status.
pub async fn supervise(
    client: Option<Client>,
    plan: Plan,
    command: Vec<OsString>,
    first: BTreeMap<String, Secret>,
    options: Options,
) -> anyhow::Result<ExitCode> {
    // This process keeps the values to restart the app: no debugger of the
    // same user and no core file may copy them out (the app, once
    // exec'd, is dumpable again: the kernel resets it at exec).
    if let Err(error) = nix::sys::prctl::set_dumpable(false) {
        tracing::warn!(%error, "cannot make the process non-dumpable");
    }
    // Before the first spawn, so no signal and no exit is missed.
    let mut signals = forward_signals()?;
    let mut chld = signal(SignalKind::child())?;
    let env = build(&plan, |p| first.get(p).map(Secret::data))?;
    let mut child = match spawn(&command, &env) {
        Ok(pid) => pid,
        Err(code) => return Ok(code),
    };
    drop(env);
    let mut applied = versions(&first);
    tracing::info!(pid = child.as_raw(), paths = applied.len(), "app started");
    acknowledge(&client, &applied, ApplyState::Applied, "");
    let mut current = first;
    let paths = plan.paths();
    let mut watch = match &client {
        Some(client) if !paths.is_empty() => match client.watch(paths).await {
            Ok(watch) => Some(watch),
            Err(error) => {
                tracing::error!(%error, "cannot watch the referenced paths; the app runs without restarts");
                None
            }
        },
        _ => None,
    };
    // (first change, last change) of versions not applied yet.
    let mut pending: Option<(Instant, Instant)> = None;
    let mut restart: Option<Restart> = None;
    let mut stopping = false;
    loop {
        let due = restart_due(pending, restart.is_some() || stopping, options.debounce);
        let kill_at = restart.as_ref().filter(|r| !r.killed).map(|r| r.kill_at);
        let wake = [due, kill_at].into_iter().flatten().min();
        tokio::select! {
            Some(sig) = signals.recv() => {
                if matches!(sig, Signal::SIGTERM | Signal::SIGINT | Signal::SIGQUIT) {
                    stopping = true;
                    pending = None;
                }
                tracing::info!(signal = sig.as_str(), "passing the signal to the app");
                send(child, sig);
            }
            _ = chld.recv() => {
                let Some(status) = reap(child) else { continue };
                match restart.take() {
                    Some(next) if !stopping => {
                        child = match spawn(&command, &next.env) {
                            Ok(pid) => pid,
                            Err(code) => return Ok(code),
                        };
                        applied = next.versions;
                        tracing::info!(pid = child.as_raw(), "app restarted with the new versions");
                        acknowledge(&client, &applied, ApplyState::Applied, "");
                    }
                    _ => {
                        tracing::info!(status, "app exited");
                        return Ok(ExitCode::from(status));
                    }
                }
            }
            event = next_event(&mut watch) => match event {
                Some(Ok(secrets)) => {
                    for secret in secrets {
                        current.insert(secret.path().to_string(), secret);
                    }
                    if changed(&applied, &current).is_empty() {
                        acknowledge(&client, &applied, ApplyState::Applied, "");
                    } else if !stopping {
                        let now = Instant::now();
                        pending = Some(pending.map_or((now, now), |(first, _)| (first, now)));
                    }
                }
                Some(Err(error)) => tracing::warn!(%error, "watch failed; reconnecting"),
                None => {
                    tracing::warn!("the watch ended; the app runs without restarts");
                    watch = None;
                }
            },
            _ = sleep_until(wake) => {
                let now = Instant::now();
                if let Some(r) = restart.as_mut().filter(|r| !r.killed && now >= r.kill_at) {
                    tracing::warn!(grace_ms = options.grace.as_millis() as u64, "the app did not exit after SIGTERM; SIGKILL");
                    send(child, Signal::SIGKILL);
                    r.killed = true;
                }
                if due.is_some_and(|due| now >= due) {
                    pending = None;
                    let next = versions(&current);
                    match build(&plan, |p| current.get(p).map(Secret::data)) {
                        Ok(env) => {
                            tracing::info!(versions = ?next, "new versions; restarting the app");
                            send(child, Signal::SIGTERM);
                            restart = Some(Restart { env, versions: next, kill_at: now + options.grace, killed: false });
                        }
                        Err(error) => {
                            tracing::error!(%error, "the new versions make no environment; the app keeps the previous one");
                            let failed: BTreeMap<String, u64> = next.into_iter().filter(|(p, v)| applied.get(p) != Some(v)).collect();
                            acknowledge(&client, &failed, ApplyState::Failed, error.reason());
                            // Not retried until the next version.
                            applied.extend(failed);
                        }
                    }
                }
            }
        }
    }
}

/// When the pending change (first, last) restarts the app: after a quiet
/// `debounce`, at most ten of them after the first change; never while a
/// restart is under way or the app is stopping (`held`), so a change
/// waiting behind a restart is no reason to wake.
fn restart_due(
    pending: Option<(Instant, Instant)>,
    held: bool,
    debounce: Duration,
) -> Option<Instant> {
    pending
        .filter(|_| !held)
        .map(|(first, last)| (last + debounce).min(first + debounce * 10))
}

/// Starts the app with exactly `env`; on failure, the status a shell
/// gives (127 not found, 126 not runnable).
fn spawn(command: &[OsString], env: &ResolvedEnv) -> Result<Pid, ExitCode> {
    let (program, args) = command.split_first().ok_or(ExitCode::from(127))?;
    let mut cmd = Command::new(program);
    cmd.args(args);
    env.apply(&mut cmd);
    match cmd.spawn() {
        // The child is reaped by `reap`, not by `Child::wait`.
        Ok(child) => Ok(Pid::from_raw(child.id() as i32)),
        Err(error) => {
            tracing::error!(program = %program.to_string_lossy(), %error, "cannot start the app");
            Err(ExitCode::from(crate::exec_failure_status(&error)))
        }
    }
}

/// Reaps every exited child; returns the app's status if it was one of
/// them (its code, or 128 + signal).
fn reap(app: Pid) -> Option<u8> {
    let mut status = None;
    loop {
        match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(pid, code)) if pid == app => status = Some(code as u8),
            Ok(WaitStatus::Signaled(pid, sig, _)) if pid == app => {
                status = Some(128u8.saturating_add(sig as i32 as u8))
            }
            Ok(WaitStatus::StillAlive) | Err(Errno::ECHILD) => return status,
            Ok(_) => {}
            Err(Errno::EINTR) => {}
            Err(error) => {
                tracing::warn!(%error, "waitpid failed");
                return status;
            }
        }
    }
}

fn send(pid: Pid, sig: Signal) {
    if let Err(error) = kill(pid, sig) {
        tracing::debug!(%error, signal = sig.as_str(), "cannot signal the app");
    }
}

/// One task per forwarded signal, all into one channel.
fn forward_signals() -> std::io::Result<mpsc::Receiver<Signal>> {
    let (tx, rx) = mpsc::channel(64);
    for sig in FORWARDED {
        let mut stream = signal(SignalKind::from_raw(sig as i32))?;
        let tx = tx.clone();
        tokio::spawn(async move {
            while stream.recv().await.is_some() {
                // Full means 64 unhandled signals: one more of a kind
                // already queued changes nothing.
                let _ = tx.try_send(sig);
            }
        });
    }
    Ok(rx)
}

async fn next_event(watch: &mut Option<WatchStream>) -> Option<Result<Vec<Secret>, coffer::Error>> {
    match watch {
        Some(watch) => watch.next().await.map(|e| e.map(|e| e.secrets)),
        None => std::future::pending().await,
    }
}

async fn sleep_until(wake: Option<Instant>) {
    match wake {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Tells the broker what runs now, in the background.
fn acknowledge(
    client: &Option<Client>,
    versions: &BTreeMap<String, u64>,
    state: ApplyState,
    reason: &str,
) {
    let Some(client) = client.as_ref().filter(|_| !versions.is_empty()) else {
        return;
    };
    let acks: Vec<Applied> = versions
        .iter()
        .map(|(path, version)| Applied {
            path: path.clone(),
            version: *version,
            state,
            reason: reason.to_string(),
        })
        .collect();
    let client = client.clone();
    tokio::spawn(async move {
        match tokio::time::timeout(Duration::from_secs(10), client.ack(acks)).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => tracing::debug!(%error, "acknowledgement not delivered"),
            Err(_) => tracing::debug!("acknowledgement timed out"),
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_waits_for_quiet_but_not_forever_and_never_during_a_restart() {
        let t0 = Instant::now();
        let second = Duration::from_secs(1);
        assert_eq!(restart_due(None, false, second), None);
        assert_eq!(
            restart_due(Some((t0, t0)), false, second),
            Some(t0 + second)
        );
        let late = t0 + Duration::from_millis(900);
        assert_eq!(
            restart_due(Some((t0, late)), false, second),
            Some(late + second)
        );
        let much_later = t0 + Duration::from_secs(30);
        assert_eq!(
            restart_due(Some((t0, much_later)), false, second),
            Some(t0 + second * 10)
        );
        assert_eq!(restart_due(Some((t0, t0)), true, second), None);
    }
}
