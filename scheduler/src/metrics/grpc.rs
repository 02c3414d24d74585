//! A tower layer that counts gRPC calls by service, method and status
//! code, and times them until their response ends.
//!
//! The status of a gRPC call is in the response headers when the handler
//! failed at once (a "trailers-only" response) and in the trailers
//! otherwise, so the response body is wrapped to read them. A call whose
//! response is dropped before its trailers is counted as `Cancelled`.
//!
//! Label values stay bounded: a call answered `Unimplemented` (an unknown
//! service or method, whatever path the client sent) is counted under
//! `unknown`.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use http::{HeaderMap, Request, Response};
use http_body::{Body, Frame, SizeHint};
use tonic::Code;

use super::edge::edge;

#[derive(Clone, Copy, Debug, Default)]
pub struct ApiMetricsLayer;

impl<S> tower_layer::Layer<S> for ApiMetricsLayer {
    type Service = ApiMetrics<S>;
    fn layer(&self, inner: S) -> ApiMetrics<S> {
        ApiMetrics { inner }
    }
}

#[derive(Clone, Debug)]
pub struct ApiMetrics<S> {
    inner: S,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, ReqBody, ResBody> tower_service::Service<Request<ReqBody>> for ApiMetrics<S>
where
    S: tower_service::Service<Request<ReqBody>, Response = Response<ResBody>>,
    S::Future: Send + 'static,
{
    type Response = Response<CountedBody<ResBody>>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        let mut call = Call::new(req.uri().path());
        let response = self.inner.call(req);
        Box::pin(async move {
            let response = response.await?;
            if let Some(code) = grpc_status(response.headers()) {
                call.code = Some(code);
            }
            Ok(response.map(|inner| CountedBody { inner, call }))
        })
    }
}

pin_project_lite::pin_project! {
    /// A response body that records its call once its trailers pass.
    pub struct CountedBody<B> {
        #[pin]
        inner: B,
        call: Call,
    }
}

impl<B: Body> Body for CountedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let frame = this.inner.poll_frame(cx);
        if let Poll::Ready(Some(Ok(f))) = &frame {
            if let Some(code) = f.trailers_ref().and_then(grpc_status) {
                this.call.code = Some(code);
            }
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// One call being served; counted when dropped, i.e. when its response
/// has ended or was abandoned.
struct Call {
    service: String,
    method: String,
    code: Option<Code>,
    started: Instant,
}

impl Call {
    fn new(path: &str) -> Call {
        let (service, method) = path
            .trim_start_matches('/')
            .split_once('/')
            .unwrap_or(("unknown", "unknown"));
        Call {
            service: service.to_string(),
            method: method.to_string(),
            code: None,
            started: Instant::now(),
        }
    }
}

impl Drop for Call {
    fn drop(&mut self) {
        let code = self.code.unwrap_or(Code::Cancelled);
        let (service, method) = if code == Code::Unimplemented {
            ("unknown", "unknown")
        } else {
            (self.service.as_str(), self.method.as_str())
        };
        let e = edge();
        e.api_requests
            .with_label_values(&[service, method, code_name(code)])
            .inc();
        e.api_duration
            .with_label_values(&[service, method])
            .observe(self.started.elapsed().as_secs_f64());
    }
}

fn grpc_status(headers: &HeaderMap) -> Option<Code> {
    let v = headers.get("grpc-status")?.to_str().ok()?;
    v.parse::<i32>().ok().map(Code::from)
}

/// The code's name as the gRPC specification writes it.
fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_codes_come_from_grpc_status_headers() {
        let mut h = HeaderMap::new();
        assert_eq!(grpc_status(&h), None);
        h.insert("grpc-status", "5".parse().expect("header"));
        assert_eq!(grpc_status(&h), Some(Code::NotFound));
        assert_eq!(code_name(Code::NotFound), "NOT_FOUND");
    }

    #[test]
    fn paths_split_into_service_and_method() {
        let c = Call::new("/edupool.v1.JobService/SubmitJob");
        assert_eq!(
            (c.service.as_str(), c.method.as_str()),
            ("edupool.v1.JobService", "SubmitJob")
        );
        let c = Call::new("/nonsense");
        assert_eq!(
            (c.service.as_str(), c.method.as_str()),
            ("unknown", "unknown")
        );
    }
}
