//! systemd readiness (`Type=notify`): READY=1 once the filter is attached, its maps filled and
//! every listener up; RELOADING=1 (with MONOTONIC_USEC, which systemd 253+ requires) and READY=1
//! around a SIGHUP reload; STOPPING=1 on the way out. Without `NOTIFY_SOCKET` (not started by
//! systemd) every call does nothing.
//!
//! A failed notification is logged, never fatal: the filter works whether or not systemd heard.

use sd_notify::NotifyState;

fn send(what: &str, states: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(states) {
        tracing::warn!("cannot tell systemd {what}: {e}");
    }
}

pub fn ready() {
    send("the agent is ready", &[NotifyState::Ready]);
}

pub fn reloading() {
    match NotifyState::monotonic_usec_now() {
        Ok(now) => send("the agent reloads", &[NotifyState::Reloading, now]),
        Err(e) => tracing::warn!("cannot read the monotonic clock for systemd: {e}"),
    }
}

pub fn stopping() {
    send("the agent stops", &[NotifyState::Stopping]);
}
