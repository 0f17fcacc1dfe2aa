//! Write admission before a body is read: a gRPC upsert's message length is in the first five
//! bytes of its body (the gRPC message prefix), so its share of `--max-write-bytes` is taken
//! from that, before tonic buffers and decodes the message. Past the budget the request is
//! refused with RESOURCE_EXHAUSTED having read those five bytes (one frame), so many clients
//! sending large upserts at once raise the server's memory by at most the budget, not by the
//! sum of their messages. The share covers the message three times (the buffered body or the
//! decoded request, the rows prepared from it, and its log record; five times for Qdrant's
//! point structs, converted twice more); the handler takes it over ([`PreAdmitted`]) and holds
//! it until its write ends, taking none of its own. A client sending its body slowly holds
//! its share meanwhile (at most three times `--max-message-bytes` each).
//! Client-streaming upserts are admitted message by message in their handler instead.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use http_body_util::BodyExt;
use tonic::body::Body;
use tonic::Status;

use std::sync::Arc;

use parking_lot::Mutex;

use crate::writes::{WriteBudget, WriteShare};

/// A request's share of the write budget, taken before its body was read, handed to the
/// handler in the request's extensions: the handler moves it into the write, so it is held
/// until the write's blocking part ends even if the client gives up first.
#[derive(Clone)]
pub struct PreAdmitted(Arc<Mutex<Option<WriteShare>>>);

impl PreAdmitted {
    /// Wraps a share taken for a request.
    pub fn new(share: WriteShare) -> Self {
        PreAdmitted(Arc::new(Mutex::new(Some(share))))
    }

    /// The share, for the one write that holds it (`None` once taken).
    pub fn take(&self) -> Option<WriteShare> {
        self.0.lock().take()
    }
}

/// The methods admitted here, and how many times its message size each one's share is.
const METHODS: &[(&str, u64)] = &[
    ("/quiver.v1.Quiver/Upsert", 3),
    ("/qdrant.Points/Upsert", 5),
    ("/qdrant.Points/UpdateBatch", 5),
];

/// Layer admitting large gRPC writes by their message prefix (see the module doc).
#[derive(Clone)]
pub struct WriteAdmissionLayer {
    budget: WriteBudget,
}

impl WriteAdmissionLayer {
    /// Admits against `budget` (shared with the handlers').
    pub fn new(budget: WriteBudget) -> Self {
        WriteAdmissionLayer { budget }
    }
}

impl<S> tower::Layer<S> for WriteAdmissionLayer {
    type Service = WriteAdmission<S>;
    fn layer(&self, inner: S) -> Self::Service {
        WriteAdmission {
            inner,
            budget: self.budget.clone(),
        }
    }
}

/// The service [`WriteAdmissionLayer`] makes.
#[derive(Clone)]
pub struct WriteAdmission<S> {
    inner: S,
    budget: WriteBudget,
}

type BoxFuture<T, E> = Pin<Box<dyn Future<Output = Result<T, E>> + Send>>;

impl<S, B> tower::Service<http::Request<B>> for WriteAdmission<S>
where
    S: tower::Service<http::Request<Body>, Response = http::Response<Body>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    B: http_body::Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<tonic::codegen::StdError> + Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        // The clone takes the readied service's place (tower's clone-and-swap).
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let factor = METHODS
            .iter()
            .find(|(path, _)| *path == req.uri().path())
            .map(|(_, f)| *f);
        let Some(factor) = factor else {
            return Box::pin(inner.call(req.map(Body::new)));
        };
        let budget = self.budget.clone();
        Box::pin(async move {
            let (parts, mut body) = req.into_parts();
            let mut prefix = BytesMut::new();
            let mut ended = false;
            while prefix.len() < 5 && !ended {
                match body.frame().await {
                    Some(Ok(frame)) => {
                        if let Ok(data) = frame.into_data() {
                            prefix.extend_from_slice(&data);
                        }
                    }
                    // A broken body: tonic reports it from what is left.
                    Some(Err(_)) | None => ended = true,
                }
            }
            let share = if prefix.len() >= 5 {
                let len = u64::from(u32::from_be_bytes([
                    prefix[1], prefix[2], prefix[3], prefix[4],
                ]));
                match budget.take(len.saturating_mul(factor).saturating_add(5)) {
                    Ok(share) => Some(share),
                    Err(status) => return Ok(refusal(status)),
                }
            } else {
                None
            };
            let head = first_frame(prefix.freeze());
            let rest = http_body_util::BodyStream::new(body);
            let stream = tokio_stream::StreamExt::chain(head, rest);
            let mut req = http::Request::from_parts(
                parts,
                Body::new(http_body_util::StreamBody::new(stream)),
            );
            if let Some(share) = share {
                req.extensions_mut().insert(PreAdmitted::new(share));
            }
            inner.call(req).await
        })
    }
}

/// The prefix read, as the first frame of the rebuilt body.
fn first_frame<E>(
    prefix: Bytes,
) -> impl tokio_stream::Stream<Item = Result<http_body::Frame<Bytes>, E>> + Unpin {
    tokio_stream::iter((!prefix.is_empty()).then(|| Ok(http_body::Frame::data(prefix))))
}

/// A gRPC error response (trailers-only) for `status`.
fn refusal(status: Status) -> http::Response<Body> {
    status.into_http()
}
