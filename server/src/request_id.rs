//! Request ids at the edge: every gRPC and REST request gets one (the caller's `x-request-id`
//! when it is a valid id, else one made up), answered back in the `x-request-id` response
//! header, named by every log line of its handling (a `request` span), and carried by the
//! cluster layer to each replica asked for it ([`quiver_cluster::request_id`]).

use std::task::{Context, Poll};

use http::HeaderValue;
use quiver_cluster::request_id;
use tracing::Instrument;

/// The header carrying a request's id, both ways.
pub const HEADER: &str = "x-request-id";

/// The request id of a request, in its extensions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestId(pub String);

/// Gives every request its id, as a tower layer.
#[derive(Debug, Clone, Copy, Default)]
pub struct RequestIdLayer;

impl<S> tower::Layer<S> for RequestIdLayer {
    type Service = WithRequestId<S>;
    fn layer(&self, inner: S) -> WithRequestId<S> {
        WithRequestId { inner }
    }
}

/// The service [`RequestIdLayer`] makes.
#[derive(Debug, Clone)]
pub struct WithRequestId<S> {
    inner: S,
}

/// The id a request carries, if valid; else a new one.
pub fn id_of(headers: &http::HeaderMap) -> String {
    headers
        .get(HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|v| request_id::valid(v))
        .map_or_else(request_id::new_id, str::to_string)
}

impl<S, B, RB> tower::Service<http::Request<B>> for WithRequestId<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<RB>>,
    S::Future: Send + 'static,
{
    type Response = http::Response<RB>;
    type Error = S::Error;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Self::Response, Self::Error>> + Send>,
    >;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<B>) -> Self::Future {
        let id = id_of(req.headers());
        let span = tracing::info_span!("request", request_id = %id, path = %req.uri().path());
        req.extensions_mut().insert(RequestId(id.clone()));
        let fut = self.inner.call(req);
        Box::pin(async move {
            let mut response = request_id::scope(id.clone(), fut.instrument(span)).await?;
            if let Ok(v) = HeaderValue::from_str(&id) {
                response.headers_mut().insert(HEADER, v);
            }
            Ok(response)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_valid_caller_id_is_kept_and_others_replaced() {
        let mut h = http::HeaderMap::new();
        assert!(request_id::valid(&id_of(&h)));
        h.insert(HEADER, HeaderValue::from_static("trace-42"));
        assert_eq!(id_of(&h), "trace-42");
        h.insert(HEADER, HeaderValue::from_static("has space"));
        let made = id_of(&h);
        assert!(request_id::valid(&made) && made != "has space");
    }

    #[tokio::test]
    async fn the_handler_sees_the_id_and_the_response_carries_it() {
        use tower::{Layer, Service, ServiceExt};
        let inner = tower::service_fn(|req: http::Request<()>| async move {
            let seen = request_id::current().unwrap_or_default();
            let ext = req.extensions().get::<RequestId>().cloned();
            assert_eq!(ext, Some(RequestId(seen.clone())));
            Ok::<_, std::convert::Infallible>(http::Response::new(seen))
        });
        let mut svc = RequestIdLayer.layer(inner);
        let req = http::Request::builder()
            .header(HEADER, "abc-1")
            .body(())
            .unwrap();
        let resp = svc.ready().await.unwrap().call(req).await.unwrap();
        assert_eq!(resp.body(), "abc-1");
        assert_eq!(resp.headers()[HEADER], "abc-1");
    }
}
