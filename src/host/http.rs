//! The agent's small HTTP servers (`metrics`, `credentials`) share this: one
//! accept loop whose connections live in a set owned by the serving future, so
//! dropping it closes them all (no detached tasks), and hyper's HTTP/1.1 with a
//! deadline for the request head.

use std::convert::Infallible;
use std::future::Future;
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

pub type Reply = Response<Full<Bytes>>;

/// Answers each request with `handler` until dropped. `what` names the server
/// in the one warning it may log.
pub async fn serve<H, F>(listener: TcpListener, what: &'static str, handler: H) -> Infallible
where
    H: Fn(Request<Incoming>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Reply> + Send + 'static,
{
    let mut connections = JoinSet::new();
    loop {
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
        connections.spawn(async move {
            let service = hyper::service::service_fn(move |request| {
                let reply = handler(request);
                async move { Ok::<_, Infallible>(reply.await) }
            });
            // A client that goes away is no concern of the agent's.
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
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
