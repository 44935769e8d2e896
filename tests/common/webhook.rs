//! An admission webhook the test controls: a real HTTP server on 127.0.0.1 whose
//! every answer a closure of the test's picks from the question, and which keeps
//! each question it was asked.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::net::TcpListener;

/// What the webhook answers one question.
#[derive(Clone, Debug)]
pub enum Reply {
    Allow,
    Deny(String),
    /// Any status with any body.
    Raw(u16, String),
    /// 10 MB, streamed without a length, in 1 MB chunks.
    Huge,
    /// 302 to another address.
    Redirect,
    /// Never answers.
    Hang,
}

/// Picks the answer from the request's path and its body as JSON (`null` when
/// it is none).
type Decide = dyn Fn(&str, &Value) -> Reply + Send + Sync;
/// Each question, with its `Authorization` header.
type Asked = Arc<Mutex<Vec<(Value, Option<String>)>>>;

/// The running webhook; stops with the test's runtime.
pub struct Webhook {
    pub address: SocketAddr,
    asked: Asked,
}

impl Webhook {
    /// Serves on 127.0.0.1:`port` (0: any free port), answering with `decide`.
    pub async fn start_on(
        port: u16,
        decide: impl Fn(&str, &Value) -> Reply + Send + Sync + 'static,
    ) -> Webhook {
        let listener = TcpListener::bind(("127.0.0.1", port)).await.unwrap();
        let address = listener.local_addr().unwrap();
        let asked = Arc::new(Mutex::new(Vec::new()));
        let decide: Arc<Decide> = Arc::new(decide);
        let kept = Arc::clone(&asked);
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let (decide, asked) = (Arc::clone(&decide), Arc::clone(&kept));
                let service = hyper::service::service_fn(move |request| {
                    answer(request, Arc::clone(&decide), Arc::clone(&asked))
                });
                tokio::spawn(async move {
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Webhook { address, asked }
    }

    pub async fn start(decide: impl Fn(&str, &Value) -> Reply + Send + Sync + 'static) -> Webhook {
        Self::start_on(0, decide).await
    }

    /// The URL the agent's config names.
    pub fn url(&self) -> String {
        format!("http://{}/admit", self.address)
    }

    /// Every question so far, with its `Authorization` header.
    pub fn asked(&self) -> Vec<(Value, Option<String>)> {
        self.asked.lock().unwrap().clone()
    }
}

/// A free port on 127.0.0.1 with nothing listening on it (yet).
pub async fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    listener.local_addr().unwrap().port()
}

async fn answer(
    request: Request<Incoming>,
    decide: Arc<Decide>,
    asked: Asked,
) -> Result<Response<BoxBody<Bytes, Infallible>>, Infallible> {
    let auth = request
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let path = request.uri().path().to_owned();
    let body = request.into_body().collect().await.unwrap().to_bytes();
    let question: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let reply = decide(&path, &question);
    asked.lock().unwrap().push((question, auth));
    let full = |status: u16, text: String| {
        Response::builder()
            .status(status)
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(text)).boxed())
            .unwrap()
    };
    Ok(match reply {
        Reply::Allow => full(
            200,
            r#"{"allowed": true, "reason": "scanned clean"}"#.into(),
        ),
        Reply::Deny(reason) => full(
            200,
            serde_json::json!({"allowed": false, "reason": reason}).to_string(),
        ),
        Reply::Raw(status, text) => full(status, text),
        Reply::Redirect => Response::builder()
            .status(302)
            .header("location", "http://127.0.0.1:9/elsewhere")
            .body(Full::new(Bytes::new()).boxed())
            .unwrap(),
        Reply::Huge => {
            let chunks = futures_util::stream::iter(0..10)
                .map(|_| Ok::<_, Infallible>(Frame::data(Bytes::from(vec![b' '; 1_000_000]))));
            Response::builder()
                .status(200)
                .body(BodyExt::boxed(StreamBody::new(chunks)))
                .unwrap()
        }
        Reply::Hang => {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            full(200, r#"{"allowed": true}"#.into())
        }
    })
}
