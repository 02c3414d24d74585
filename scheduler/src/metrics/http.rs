//! The `/metrics` HTTP listener: plain HTTP/1.1 on its own port, so
//! Prometheus needs no gRPC and scraping never competes with the API.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::Scrape;

/// Serves `GET /metrics` on `listener` until `stop`; each connection is a
/// task on `tasks`.
pub async fn serve(
    listener: TcpListener,
    scrape: Arc<Scrape>,
    tasks: TaskTracker,
    stop: CancellationToken,
) {
    loop {
        let (stream, peer) = tokio::select! {
            _ = stop.cancelled() => return,
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!("metrics listener: accept failed: {e}");
                    continue;
                }
            },
        };
        let scrape = scrape.clone();
        let stop = stop.clone();
        tasks.spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let scrape = scrape.clone();
                async move { Ok::<_, Infallible>(answer(&scrape, &req)) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service);
            tokio::select! {
                r = conn => if let Err(e) = r {
                    tracing::debug!(%peer, "metrics connection ended: {e}");
                },
                _ = stop.cancelled() => {}
            }
        });
    }
}

fn answer(scrape: &Scrape, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    let reply = |status: StatusCode, content_type: &str, body: String| {
        Response::builder()
            .status(status)
            .header("content-type", content_type)
            .body(Full::new(Bytes::from(body)))
            .expect("a valid response")
    };
    match (req.method(), req.uri().path()) {
        (&Method::GET, "/metrics") => match scrape.render() {
            Ok(text) => reply(StatusCode::OK, prometheus::TEXT_FORMAT, text),
            Err(e) => reply(
                StatusCode::INTERNAL_SERVER_ERROR,
                "text/plain",
                format!("cannot encode the metrics: {e}\n"),
            ),
        },
        (_, "/metrics") => reply(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "only GET is served here\n".into(),
        ),
        _ => reply(
            StatusCode::NOT_FOUND,
            "text/plain",
            "metrics are served at /metrics\n".into(),
        ),
    }
}

/// The address a bound metrics listener reports, for the startup line.
pub fn local_addr(listener: &TcpListener) -> SocketAddr {
    listener
        .local_addr()
        .expect("a bound listener has an address")
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    use super::*;
    use crate::raft::{Replica, ReplicaConfig};
    use crate::sessions::Sessions;

    /// One HTTP/1.0 request; the whole response as text.
    async fn request(addr: SocketAddr, method: &str, path: &str) -> String {
        let mut s = TcpStream::connect(addr).await.expect("connects");
        let req = format!("{method} {path} HTTP/1.0\r\nHost: test\r\n\r\n");
        s.write_all(req.as_bytes()).await.expect("writes");
        let mut out = String::new();
        s.read_to_string(&mut out).await.expect("reads");
        out
    }

    #[tokio::test]
    async fn serves_the_replica_metrics_at_metrics_only() {
        let dir = tempfile::tempdir().expect("a temp dir");
        let tasks = TaskTracker::new();
        let stop = CancellationToken::new();
        let replica = Replica::start(
            ReplicaConfig::single(1, dir.path().to_path_buf(), Duration::from_millis(10)),
            stop.clone(),
            &tasks,
        )
        .expect("the replica starts");
        let mut lead = replica.leadership();
        tokio::time::timeout(Duration::from_secs(10), lead.wait_for(|l| l.is_leader))
            .await
            .expect("a single voter leads")
            .expect("the driver runs");
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("binds");
        let addr = local_addr(&listener);
        super::super::start(
            listener,
            &replica,
            &Sessions::default(),
            dir.path(),
            &tasks,
            &stop,
        );

        let ok = request(addr, "GET", "/metrics").await;
        assert!(ok.starts_with("HTTP/1.0 200"), "{ok}");
        assert!(ok.contains("text/plain; version=0.0.4"), "{ok}");
        assert!(ok.contains("\nedupool_raft_is_leader 1\n"), "{ok}");
        assert!(ok.contains("\nedupool_agents_connected 0\n"), "{ok}");
        assert!(ok.contains("\nedupool_raft_log_size_bytes "), "{ok}");
        let other = request(addr, "GET", "/").await;
        assert!(other.starts_with("HTTP/1.0 404"), "{other}");
        let post = request(addr, "POST", "/metrics").await;
        assert!(post.starts_with("HTTP/1.0 405"), "{post}");

        stop.cancel();
        tasks.close();
        tasks.wait().await;
    }
}
