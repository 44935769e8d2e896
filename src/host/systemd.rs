//! Tells systemd (a `Type=notify` unit) how the agent is doing: READY once bootstrap
//! is done, STATUS at each phase, WATCHDOG while healthy, STOPPING on drain.
//!
//! The sd-notify crate reads `NOTIFY_SOCKET` and `WATCHDOG_USEC` itself: they are
//! the protocol's, not our configuration. Without systemd every call is a no-op.

use std::time::Duration;

use sd_notify::NotifyState;

fn send(states: &[NotifyState]) {
    if let Err(error) = sd_notify::notify(states) {
        tracing::debug!(%error, "Could not notify systemd.");
    }
}

pub fn ready(status: &str) {
    send(&[NotifyState::Ready, NotifyState::Status(status)]);
}

pub fn status(status: &str) {
    send(&[NotifyState::Status(status)]);
}

pub fn stopping(status: &str) {
    send(&[NotifyState::Stopping, NotifyState::Status(status)]);
}

pub fn watchdog() {
    send(&[NotifyState::Watchdog]);
}

/// How often to pet the watchdog, if systemd asked for it: twice per interval.
pub fn watchdog_period() -> Option<Duration> {
    sd_notify::watchdog_enabled().map(|interval| interval / 2)
}
