//! The agent's small HTTP servers (`metrics`, `credentials`) share this: one
//! accept loop whose connections live in a set owned by the serving future, so
//! dropping it closes them all (no detached tasks), and hyper's HTTP/1.1 with a
//! deadline for the request head. Connections are capped in number and buffer
//! size and serve one request each, so a job flooding the credentials endpoint
//! costs the agent a bounded number of descriptors and bytes. A connection
//! holds its place only once its request has arrived: at the cap, the oldest
//! that has sent nothing yet makes way for the new one, so idle sockets cannot
//! starve the jobs that ask; and every connection ends within
//! [`CONNECTION_DEADLINE`], however slowly it reads its answer.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::task::JoinSet;

/// A listener the host could not open: the address is taken or not the host's.
#[derive(Debug, thiserror::Error)]
#[error("listen on {address} ({key}): {source}")]
pub struct BindError {
    /// The config key that names the address.
    key: &'static str,
    address: std::net::SocketAddr,
    source: std::io::Error,
}

/// Binds `address` (port 0: any free port), for the server configured at `key`.
pub async fn bind(
    address: std::net::SocketAddr,
    key: &'static str,
) -> Result<TcpListener, BindError> {
    TcpListener::bind(address)
        .await
        .map_err(|source| BindError {
            key,
            address,
            source,
        })
}

/// A client that sends no request head within this is dropped.
const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// Connections served at once. Past it, new ones wait in the listen backlog: a
/// job opening sockets in a loop must not take the file descriptors the agent's
/// SQS, S3 and Docker calls need.
const MAX_CONNECTIONS: usize = 64;
/// Each connection's read buffer, and so the largest request head: these
/// servers answer short GETs.
const MAX_BUFFER_BYTES: usize = 16 * 1024;
/// The whole life of one connection: a request, its answer (credentials may
/// need one STS call), and the client reading it.
const CONNECTION_DEADLINE: Duration = Duration::from_secs(30);

/// A connection being served, and whether its request has arrived.
struct Serving {
    abort: tokio::task::AbortHandle,
    asked: Arc<AtomicBool>,
}

pub type Reply = Response<Full<Bytes>>;

/// Answers each request with `handler` until dropped. `what` names the server
/// in the one warning it may log.
pub async fn serve<H, F>(listener: TcpListener, what: &'static str, handler: H) -> Infallible
where
    H: Fn(Request<Incoming>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Reply> + Send + 'static,
{
    let mut connections = JoinSet::new();
    let mut serving: VecDeque<Serving> = VecDeque::new();
    loop {
        if connections.len() >= MAX_CONNECTIONS {
            serving.retain(|s| !s.abort.is_finished());
            // The oldest that has not asked yet makes way; if all have asked,
            // the next waits for one to finish.
            if let Some(idle) = serving
                .iter()
                .position(|s| !s.asked.load(Ordering::Relaxed))
            {
                if let Some(evicted) = serving.remove(idle) {
                    evicted.abort.abort();
                }
            }
            // Reaps the aborted one (or any other that ended): the set counts a
            // task until it is joined.
            connections.join_next().await;
            continue;
        }
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            Some(_) = connections.join_next() => continue,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(error) => {
                // Out of file descriptors, most likely: let some close first.
                tracing::warn!(%error, server = what, "Could not accept a connection.");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let handler = handler.clone();
        let asked = Arc::new(AtomicBool::new(false));
        let marks = asked.clone();
        let abort = connections.spawn(async move {
            let service = hyper::service::service_fn(move |request| {
                marks.store(true, Ordering::Relaxed);
                let reply = handler(request);
                async move { Ok::<_, Infallible>(reply.await) }
            });
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .max_buf_size(MAX_BUFFER_BYTES)
                // One request per connection: an idle keep-alive would hold a
                // slot of the few above for as long as its client likes.
                .keep_alive(false)
                .serve_connection(TokioIo::new(stream), service);
            // A client that goes away, or reads too slowly, is no concern of
            // the agent's.
            let _ = tokio::time::timeout(CONNECTION_DEADLINE, connection).await;
        });
        serving.push_back(Serving { abort, asked });
    }
}

/// A response with `body` of `content_type`.
pub fn reply(status: StatusCode, content_type: &str, body: impl Into<Bytes>) -> Reply {
    Response::builder()
        .status(status)
        .header("content-type", content_type)
        .body(Full::new(body.into()))
        .expect("a response from valid parts")
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn open_descriptors() -> usize {
        std::fs::read_dir("/proc/self/fd").unwrap().count()
    }

    /// One GET, and the whole answer.
    async fn ask(address: std::net::SocketAddr) -> String {
        let mut client = tokio::net::TcpStream::connect(address).await.unwrap();
        client
            .write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
            .await
            .unwrap();
        let mut text = String::new();
        client.read_to_string(&mut text).await.unwrap();
        text
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_socket_flood_holds_a_bounded_number_of_descriptors_and_still_gets_answers() {
        let listener = bind("127.0.0.1:0".parse().unwrap(), "test.listen")
            .await
            .unwrap();
        let address = listener.local_addr().unwrap();
        let server = tokio::spawn(serve(listener, "test", |_request| async {
            reply(StatusCode::OK, "text/plain", "ok\n")
        }));
        let before = open_descriptors();
        // Idle connections that never send a request, as a hostile job would.
        let mut flood = Vec::new();
        for _ in 0..(MAX_CONNECTIONS * 3) {
            flood.push(tokio::net::TcpStream::connect(address).await.unwrap());
        }
        // Let the server accept what it will.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        let mut grown = 0;
        while tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let now = open_descriptors().saturating_sub(before);
            if now == grown && now > flood.len() {
                break;
            }
            grown = now;
        }
        // Ours (the flood) plus at most MAX_CONNECTIONS accepted, plus slack for
        // the runtime's own.
        let held = open_descriptors().saturating_sub(before + flood.len());
        assert!(
            held <= MAX_CONNECTIONS + 8,
            "the server holds {held} descriptors"
        );

        // A real request gets its answer while the idle ones hold every place.
        let answered = tokio::time::timeout(Duration::from_secs(60), ask(address))
            .await
            .expect("an answer beside the flood");
        assert!(answered.starts_with("HTTP/1.1 200"), "{answered}");
        drop(flood);

        // Idle sockets make way for a request at once, while a flood that
        // never asks goes on.
        let flooding = tokio::spawn(async move {
            let mut held = Vec::new();
            loop {
                if let Ok(stream) = tokio::net::TcpStream::connect(address).await {
                    held.push(stream);
                }
                if held.len() > MAX_CONNECTIONS * 4 {
                    held.remove(0);
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        });
        tokio::time::sleep(Duration::from_millis(200)).await;
        // Well inside HEADER_TIMEOUT: no idle socket timed out to make room.
        let answered = tokio::time::timeout(HEADER_TIMEOUT - Duration::from_secs(1), ask(address))
            .await
            .expect("an answer while idle sockets hold every place");
        assert!(answered.starts_with("HTTP/1.1 200"), "{answered}");
        flooding.abort();
        server.abort();
    }
}
