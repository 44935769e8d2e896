//! A proxy a test can cut: stands between deckhand and a dependency (moto over TCP,
//! Docker over its unix socket) to simulate an outage without stopping the shared
//! service that other tests use. While down, it drops open connections and refuses
//! new ones by closing them at once.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, copy_bidirectional};
use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub struct Proxy {
    down: watch::Sender<bool>,
    accept: JoinHandle<()>,
    pub address: String,
}

impl Proxy {
    /// `http://127.0.0.1:<port>` in front of `upstream` (`host:port`).
    pub async fn tcp(upstream: &str) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = format!("http://{}", listener.local_addr().unwrap());
        let (down, watch) = watch::channel(false);
        let upstream = upstream.to_owned();
        let accept = tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    return;
                };
                let upstream = upstream.clone();
                let watch = watch.clone();
                tokio::spawn(async move {
                    if let Ok(server) = TcpStream::connect(&upstream).await {
                        forward(client, server, watch).await;
                    }
                });
            }
        });
        Proxy {
            down,
            accept,
            address,
        }
    }

    /// Like [`Proxy::tcp`], but answers the first `n` HTTP requests whose head or
    /// body contains `marker` with `response` (a whole HTTP response) instead of
    /// forwarding them, and records each such request. (Each request comes on its
    /// own connection: moto closes every one.)
    pub async fn tcp_intercepting(
        upstream: &str,
        marker: &str,
        n: usize,
        response: String,
    ) -> (Proxy, Arc<Mutex<Vec<String>>>) {
        let intercepted = Arc::new(Mutex::new(Vec::new()));
        let record = intercepted.clone();
        let marker = marker.as_bytes().to_owned();
        let proxy = Proxy::tcp_judging(upstream, move |request| {
            if !request
                .windows(marker.len())
                .any(|w| w == marker.as_slice())
            {
                return Verdict::Forward;
            }
            let mut record = record.lock().unwrap();
            if record.len() >= n {
                return Verdict::Forward;
            }
            record.push(String::from_utf8_lossy(request).into_owned());
            Verdict::Answer(response.clone())
        })
        .await;
        (proxy, intercepted)
    }

    /// Like [`Proxy::tcp`], but records each request whose head or body contains
    /// `marker`, with when it came, and forwards it.
    pub async fn tcp_recording(
        upstream: &str,
        marker: &str,
    ) -> (Proxy, Arc<Mutex<Vec<(std::time::Instant, String)>>>) {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let record = seen.clone();
        let marker = marker.as_bytes().to_owned();
        let proxy = Proxy::tcp_judging(upstream, move |request| {
            if request
                .windows(marker.len())
                .any(|w| w == marker.as_slice())
            {
                let text = String::from_utf8_lossy(request).into_owned();
                record
                    .lock()
                    .unwrap()
                    .push((std::time::Instant::now(), text));
            }
            Verdict::Forward
        })
        .await;
        (proxy, seen)
    }

    /// Answers the first `n` requests carrying `marker` with an AWS `Throttling`
    /// error (Query protocol).
    pub async fn tcp_throttling(
        upstream: &str,
        marker: &str,
        n: usize,
    ) -> (Proxy, Arc<Mutex<Vec<String>>>) {
        let body = "<ErrorResponse><Error><Type>Sender</Type><Code>Throttling</Code><Message>Rate exceeded</Message></Error><RequestId>throttled</RequestId></ErrorResponse>";
        Proxy::tcp_intercepting(upstream, marker, n, http_response("400 Bad Request", body)).await
    }

    /// Like [`Proxy::tcp`], but the first request whose head or body contains
    /// `marker` takes effect upstream and its answer never reaches the client:
    /// the returned flag turns true once the upstream has answered. A client
    /// killed then has done what it never heard it did.
    pub async fn tcp_holding(upstream: &str, marker: &str) -> (Proxy, Arc<AtomicBool>) {
        let held = Arc::new(AtomicBool::new(false));
        let flag = held.clone();
        let taken = AtomicBool::new(false);
        let marker = marker.as_bytes().to_owned();
        let proxy = Proxy::tcp_judging(upstream, move |request| {
            let marked = request
                .windows(marker.len())
                .any(|w| w == marker.as_slice());
            if marked && !taken.swap(true, Ordering::SeqCst) {
                Verdict::Hold(flag.clone())
            } else {
                Verdict::Forward
            }
        })
        .await;
        (proxy, held)
    }

    /// Like [`Proxy::tcp`], but fails a share of the HTTP requests, as S3 and
    /// SQS now and then do: half answered `503 Service Unavailable`, half with the
    /// connection closed before any answer. The failed request never reaches
    /// `upstream`. The share is [`Faults::set_percent`]'s, 0 at first. Every PUT
    /// that `upstream` took is counted in [`Faults::writes`].
    pub async fn tcp_faulty(upstream: &str) -> (Proxy, Arc<Faults>) {
        let faults = Arc::new(Faults::default());
        let shared = faults.clone();
        let judge = move |_: &[u8]| match shared.roll() {
            Some(Fault::Unavailable) => {
                let body =
                    "<Error><Code>ServiceUnavailable</Code><Message>injected</Message></Error>";
                Verdict::Answer(http_response("503 Service Unavailable", body))
            }
            Some(Fault::Dropped) => Verdict::Drop,
            None => Verdict::Forward,
        };
        let shared = faults.clone();
        let answered = move |request: &[u8], response: &[u8]| shared.writes.note(request, response);
        let proxy = Proxy::tcp_watching(upstream, judge, Some(Box::new(answered))).await;
        (proxy, faults)
    }

    /// Like [`Proxy::tcp`], but reads each connection's first HTTP request whole
    /// and lets `judge` say what becomes of it.
    async fn tcp_judging(
        upstream: &str,
        judge: impl Fn(&[u8]) -> Verdict + Send + Sync + 'static,
    ) -> Proxy {
        Proxy::tcp_watching(upstream, judge, None).await
    }

    /// [`Proxy::tcp_judging`], and `answered` sees each forwarded request with
    /// the head of `upstream`'s answer, read before it is passed on (so seen even
    /// when the client is gone by then: killed after sending).
    async fn tcp_watching(
        upstream: &str,
        judge: impl Fn(&[u8]) -> Verdict + Send + Sync + 'static,
        answered: Option<Box<Answered>>,
    ) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = format!("http://{}", listener.local_addr().unwrap());
        let (down, watch) = watch::channel(false);
        let upstream = upstream.to_owned();
        let judge = Arc::new(judge);
        let answered: Option<Arc<Answered>> = answered.map(Arc::from);
        let accept = tokio::spawn(async move {
            loop {
                let Ok((mut client, _)) = listener.accept().await else {
                    return;
                };
                let upstream = upstream.clone();
                let watch = watch.clone();
                let judge = judge.clone();
                let answered = answered.clone();
                tokio::spawn(async move {
                    let Some(request) = read_request(&mut client).await else {
                        return;
                    };
                    match judge(&request) {
                        Verdict::Answer(response) => {
                            let _ = client.write_all(response.as_bytes()).await;
                        }
                        Verdict::Drop => drop(client),
                        Verdict::Forward => {
                            pass(client, &upstream, &request, answered.as_deref(), watch).await;
                        }
                        Verdict::Hold(held) => hold(client, &upstream, &request, &held).await,
                    }
                });
            }
        });
        Proxy {
            down,
            accept,
            address,
        }
    }

    /// A unix socket at `path` in front of the socket at `upstream`.
    pub async fn unix(path: &Path, upstream: &Path) -> Proxy {
        let listener = UnixListener::bind(path).unwrap();
        let (down, watch) = watch::channel(false);
        let upstream: PathBuf = upstream.to_owned();
        let accept = tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    return;
                };
                let upstream = upstream.clone();
                let watch = watch.clone();
                tokio::spawn(async move {
                    if let Ok(server) = UnixStream::connect(&upstream).await {
                        forward(client, server, watch).await;
                    }
                });
            }
        });
        Proxy {
            down,
            accept,
            address: path.display().to_string(),
        }
    }

    pub fn set_down(&self, down: bool) {
        self.down.send_replace(down);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.set_down(true);
    }
}

/// What a watching proxy is told of each request it forwarded: the request
/// and the head of the answer.
type Answered = dyn Fn(&[u8], &[u8]) + Send + Sync;

/// The faults a [`Proxy::tcp_faulty`] injects, how many it did, and the writes
/// it let through.
#[derive(Default)]
pub struct Faults {
    percent: AtomicU64,
    /// A xorshift state: the proxy's own randomness, seeded by the test.
    state: AtomicU64,
    pub requests: AtomicU64,
    pub injected: AtomicU64,
    pub writes: Writes,
}

/// Every PUT the upstream answered 2xx, counted by path (`/bucket/key` for S3,
/// path-style): what S3 itself took, seen on the wire. An agent killed between a
/// write and its log line cannot say it wrote; this still counts it.
#[derive(Default)]
pub struct Writes(Mutex<HashMap<String, usize>>);

impl Writes {
    /// How many PUTs to `path` were answered 2xx.
    pub fn puts(&self, path: &str) -> usize {
        self.0.lock().unwrap().get(path).copied().unwrap_or(0)
    }

    /// Every path PUT to with a 2xx answer, and how many times.
    pub fn all(&self) -> HashMap<String, usize> {
        self.0.lock().unwrap().clone()
    }

    fn note(&self, request: &[u8], response: &[u8]) {
        let line = |bytes: &[u8]| {
            let end = bytes
                .iter()
                .position(|&b| b == b'\r')
                .unwrap_or(bytes.len());
            String::from_utf8_lossy(&bytes[..end]).into_owned()
        };
        let (request, response) = (line(request), line(response));
        let mut request = request.split(' ');
        let (Some("PUT"), Some(target)) = (request.next(), request.next()) else {
            return;
        };
        // `HTTP/1.1 200 OK`
        if !response
            .split(' ')
            .nth(1)
            .is_some_and(|s| s.starts_with('2'))
        {
            return;
        }
        let path = target.split('?').next().unwrap_or(target);
        *self.0.lock().unwrap().entry(path.to_owned()).or_default() += 1;
    }
}

enum Fault {
    Unavailable,
    Dropped,
}

/// What a judging proxy does with a request.
enum Verdict {
    Forward,
    /// This whole HTTP response instead.
    Answer(String),
    /// The connection closed, no answer.
    Drop,
    /// Forwarded, and the upstream's answer kept from the client, which waits
    /// on; the flag turns true once the upstream has answered.
    Hold(Arc<AtomicBool>),
}

impl Faults {
    pub fn set_percent(&self, percent: u64, seed: u64) {
        self.state.store(seed | 1, Ordering::Relaxed);
        self.percent.store(percent, Ordering::Relaxed);
    }

    fn roll(&self) -> Option<Fault> {
        self.requests.fetch_add(1, Ordering::Relaxed);
        let mut x = self.state.load(Ordering::Relaxed).max(1);
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.state.store(x, Ordering::Relaxed);
        if x % 100 >= self.percent.load(Ordering::Relaxed) {
            return None;
        }
        self.injected.fetch_add(1, Ordering::Relaxed);
        Some(if x % 2 == 0 {
            Fault::Unavailable
        } else {
            Fault::Dropped
        })
    }
}

/// A whole HTTP/1.1 response with an XML body, closing the connection as moto does.
pub fn http_response(status: &str, body: &str) -> String {
    format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/xml\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

/// Reads up to the end of the HTTP head (and whatever body came with it).
async fn read_head(stream: &mut TcpStream) -> Option<Vec<u8>> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 || buf.len() > 1 << 20 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    Some(buf)
}

/// One whole HTTP request: its head and its body.
async fn read_request(client: &mut TcpStream) -> Option<Vec<u8>> {
    let mut request = read_head(client).await?;
    let mut rest = vec![0; content_length(&request).saturating_sub(body_read(&request))];
    client.read_exact(&mut rest).await.ok()?;
    request.extend_from_slice(&rest);
    Some(request)
}

/// Sends `request` on to `upstream`, and its answer back; `answered` sees the
/// answer's head first.
async fn pass(
    mut client: TcpStream,
    upstream: &str,
    request: &[u8],
    answered: Option<&Answered>,
    watch: watch::Receiver<bool>,
) {
    let Ok(mut server) = TcpStream::connect(upstream).await else {
        return;
    };
    if server.write_all(request).await.is_err() {
        return;
    }
    if let Some(answered) = answered {
        let Some(head) = read_head(&mut server).await else {
            return;
        };
        answered(request, &head);
        if client.write_all(&head).await.is_err() {
            return;
        }
    }
    forward(client, server, watch).await;
}

/// Sends `request` on to `upstream`, which acts on it, and keeps the answer
/// from the client, which waits until it gives up or is killed.
async fn hold(mut client: TcpStream, upstream: &str, request: &[u8], held: &AtomicBool) {
    let Ok(mut server) = TcpStream::connect(upstream).await else {
        return;
    };
    if server.write_all(request).await.is_err() || read_head(&mut server).await.is_none() {
        return;
    }
    held.store(true, Ordering::SeqCst);
    let _ = client.read(&mut [0u8; 1]).await;
}

fn head_end(head: &[u8]) -> usize {
    head.windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map_or(head.len(), |p| p + 4)
}

fn body_read(head: &[u8]) -> usize {
    head.len() - head_end(head)
}

fn content_length(head: &[u8]) -> usize {
    String::from_utf8_lossy(&head[..head_end(head)])
        .lines()
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse().ok())?
        })
        .unwrap_or(0)
}

async fn forward<A, B>(mut client: A, mut server: B, mut down: watch::Receiver<bool>)
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    if *down.borrow() {
        return;
    }
    tokio::select! {
        _ = copy_bidirectional(&mut client, &mut server) => {}
        _ = down.wait_for(|down| *down) => {}
    }
}
