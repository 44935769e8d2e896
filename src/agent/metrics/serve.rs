//! The metrics' HTTP side: the listener, the routes, and the exposition format
//! the scraper asked for.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use hyper::body::Incoming;
use hyper::{Method, Request, StatusCode};
use tokio::net::TcpListener;

use super::{Format, Metrics, State};
use crate::host::http::Reply;

/// OpenMetrics text as Prometheus's text format: a counter family `x` is named
/// `x_total` in its `# HELP` and `# TYPE` (its samples are already), OpenMetrics'
/// own types become the nearest Prometheus ones, and `# UNIT` and `# EOF` go.
pub(super) fn prometheus_text(open: &str) -> String {
    let counters: std::collections::HashSet<&str> = open
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE ")?.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(open.len());
    for line in open.lines() {
        let meta = ["# HELP ", "# TYPE "]
            .into_iter()
            .find_map(|p| line.strip_prefix(p).map(|rest| (p, rest)));
        match meta {
            _ if line == "# EOF" || line.starts_with("# UNIT ") => continue,
            Some((prefix, rest)) => {
                let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
                let name = if counters.contains(name) {
                    format!("{name}_total")
                } else {
                    name.to_owned()
                };
                let tail = match (prefix, tail) {
                    ("# TYPE ", "info" | "stateset") => "gauge",
                    ("# TYPE ", "unknown" | "gaugehistogram") => "untyped",
                    _ => tail,
                };
                out.push_str(&format!("{prefix}{name} {tail}\n"));
            }
            None => {
                out.push_str(line);
                out.push('\n');
            }
        }
    }
    out
}

/// Binds `metrics.listen` (port 0: any free port; the log says which).
pub async fn bind(address: SocketAddr) -> Result<TcpListener, crate::host::http::BindError> {
    let listener = crate::host::http::bind(address, "metrics.listen").await?;
    if let Ok(bound) = listener.local_addr() {
        tracing::info!(address = %bound, "Serving metrics and health.");
    }
    Ok(listener)
}

/// Answers scrapes until dropped.
pub async fn serve(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    state: Arc<dyn Fn() -> State + Send + Sync>,
) -> Infallible {
    crate::host::http::serve(listener, "metrics", move |request| {
        let reply = respond(&request, &metrics, &state());
        async move { reply }
    })
    .await
}

fn respond(request: &Request<Incoming>, metrics: &Metrics, state: &State) -> Reply {
    let reply = |status: StatusCode, content_type: &str, body: String| {
        let body = if request.method() == Method::HEAD {
            Bytes::new()
        } else {
            Bytes::from(body)
        };
        crate::host::http::reply(status, content_type, body)
    };
    if request.method() != Method::GET && request.method() != Method::HEAD {
        return reply(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "GET or HEAD only\n".into(),
        );
    }
    let probe = |why: Option<&str>| match why {
        None => reply(StatusCode::OK, "text/plain", "ok\n".into()),
        Some(why) => reply(
            StatusCode::SERVICE_UNAVAILABLE,
            "text/plain",
            format!("{why}\n"),
        ),
    };
    match request.uri().path() {
        "/metrics" => {
            let accept = request
                .headers()
                .get(hyper::header::ACCEPT)
                .and_then(|v| v.to_str().ok());
            let format = Format::accepted(accept);
            reply(
                StatusCode::OK,
                format.content_type(),
                metrics.render_as(state, format),
            )
        }
        "/healthz" => probe(Metrics::unhealthy(state)),
        "/readyz" => probe(metrics.unready(state)),
        _ => reply(
            StatusCode::NOT_FOUND,
            "text/plain",
            "/metrics, /healthz or /readyz\n".into(),
        ),
    }
}
