//! The agent speaks systemd's notify protocol: READY once bootstrapped, STATUS at
//! each phase, WATCHDOG while healthy, STOPPING when the drain begins — in order.

mod common;

use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::agent::{AgentProcess, agent_config};
use common::scenario::Scenario;
use common::*;
use nix::sys::signal::Signal;

/// A socket like systemd's notify socket, its datagrams collected line by line by a
/// thread until `stop`.
struct NotifySocket {
    received: Arc<Mutex<Vec<String>>>,
    done: Arc<AtomicBool>,
    reader: std::thread::JoinHandle<()>,
}

impl NotifySocket {
    fn bind(path: &Path) -> NotifySocket {
        let socket = UnixDatagram::bind(path).unwrap();
        socket
            .set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let received: Arc<Mutex<Vec<String>>> = Arc::default();
        let done = Arc::new(AtomicBool::new(false));
        let reader = {
            let received = received.clone();
            let done = done.clone();
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while !done.load(Ordering::Relaxed) {
                    if let Ok(n) = socket.recv(&mut buf) {
                        let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                        received
                            .lock()
                            .unwrap()
                            .extend(text.lines().map(str::to_owned));
                    }
                }
            })
        };
        NotifySocket {
            received,
            done,
            reader,
        }
    }

    /// Stops the reader: every line received.
    fn stop(self) -> Vec<String> {
        self.done.store(true, Ordering::Relaxed);
        self.reader.join().unwrap();
        self.received.lock().unwrap().clone()
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn notifications_arrive_in_order() {
    let Some(s) = Scenario::new("notify").await else {
        return;
    };
    let Scenario { stack, aws, pool } = &s;
    let dir = tempfile::tempdir().unwrap();
    let socket_path = dir.path().join("notify.sock");
    let notify = NotifySocket::bind(&socket_path);
    let received = &notify.received;
    let config = agent_config(stack, pool, &aws.endpoint, &unique("i-notify"), "");
    let mut agent = AgentProcess::start_with(
        &config,
        "agent",
        &[
            ("NOTIFY_SOCKET", socket_path.to_str().unwrap()),
            // 1 s: petted every 0.5 s.
            ("WATCHDOG_USEC", "1000000"),
        ],
    );
    let has = |prefix: &str| {
        received
            .lock()
            .unwrap()
            .iter()
            .any(|l| l.starts_with(prefix))
    };
    eventually("READY=1 and two watchdog pets", LONG, || async {
        has("READY=1")
            && received
                .lock()
                .unwrap()
                .iter()
                .filter(|l| *l == "WATCHDOG=1")
                .count()
                >= 2
    })
    .await;
    agent.signal(Signal::SIGTERM);
    assert_eq!(agent.wait_exit(LONG).await, Some(0));
    eventually("STOPPING=1", LONG, || async { has("STOPPING=1") }).await;
    let lines = notify.stop();
    let first = |needle: &str| {
        lines
            .iter()
            .position(|l| l == needle || l.starts_with(needle))
            .unwrap_or_else(|| panic!("no {needle:?} in {lines:#?}"))
    };
    assert!(
        first("STATUS=bootstrap: secrets") < first("READY=1"),
        "{lines:#?}"
    );
    assert!(first("READY=1") < first("WATCHDOG=1"), "{lines:#?}");
    assert!(first("WATCHDOG=1") < first("STOPPING=1"), "{lines:#?}");
    assert!(
        lines.contains(&"STATUS=serving the queue".to_owned()),
        "{lines:#?}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("STATUS=draining: SIGTERM received")),
        "{lines:#?}"
    );
}
