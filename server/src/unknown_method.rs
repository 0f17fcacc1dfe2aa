//! Names the method in the answer to a gRPC call no service implements.
//!
//! tonic answers a call to an unknown service or method with `UNIMPLEMENTED` and no message,
//! so a client (a Qdrant client newer than this server, a typo in a hand-written stub) sees
//! only a status code. This layer adds the message a user can act on — which method, and
//! that this server does not have it — to such answers (trailers-only responses carrying
//! `grpc-status: 12` without a `grpc-message`); answers that already say something keep it.

use std::task::{Context, Poll};

use http::HeaderValue;

/// The gRPC status code `UNIMPLEMENTED`.
const UNIMPLEMENTED: &str = "12";

/// Adds the method's name to bare `UNIMPLEMENTED` answers, as a tower layer.
#[derive(Debug, Clone, Copy, Default)]
pub struct NameUnknownMethodLayer;

impl<S> tower::Layer<S> for NameUnknownMethodLayer {
    type Service = NameUnknownMethod<S>;
    fn layer(&self, inner: S) -> NameUnknownMethod<S> {
        NameUnknownMethod { inner }
    }
}

/// The service [`NameUnknownMethodLayer`] makes.
#[derive(Debug, Clone)]
pub struct NameUnknownMethod<S> {
    inner: S,
}

/// The message for a call to `path` (`/package.Service/Method`) that nothing implements,
/// percent-encoded as `grpc-message` requires (it is printable ASCII but for the path).
pub fn message(path: &str) -> String {
    let mut out = String::from("unknown gRPC method ");
    for b in path.bytes() {
        if (0x20..0x7f).contains(&b) && b != b'%' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out.push_str(": this server does not implement it");
    out
}

impl<S, B, RB> tower::Service<http::Request<B>> for NameUnknownMethod<S>
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

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let path = req.uri().path().to_string();
        let fut = self.inner.call(req);
        Box::pin(async move {
            let mut response = fut.await?;
            let headers = response.headers_mut();
            let bare = headers
                .get("grpc-status")
                .is_some_and(|s| s == UNIMPLEMENTED)
                && headers.get("grpc-message").is_none_or(|m| m.is_empty());
            if bare {
                if let Ok(v) = HeaderValue::from_str(&message(&path)) {
                    headers.insert("grpc-message", v);
                }
            }
            Ok(response)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tower::{Layer, Service, ServiceExt};

    async fn answer(status: &str, message: Option<&str>) -> http::HeaderMap {
        let (status, message) = (status.to_string(), message.map(str::to_string));
        let inner = tower::service_fn(move |_req: http::Request<()>| {
            let mut r = http::Response::builder().header("grpc-status", status.as_str());
            if let Some(m) = &message {
                r = r.header("grpc-message", m.as_str());
            }
            let r = r.body(()).expect("response");
            async move { Ok::<_, std::convert::Infallible>(r) }
        });
        let mut svc = NameUnknownMethodLayer.layer(inner);
        let req = http::Request::builder()
            .uri("/qdrant.Points/Teleport")
            .body(())
            .expect("request");
        let resp = svc.ready().await.unwrap().call(req).await.unwrap();
        resp.headers().clone()
    }

    #[tokio::test]
    async fn a_bare_unimplemented_answer_names_the_method() {
        let h = answer("12", None).await;
        assert_eq!(
            h["grpc-message"],
            "unknown gRPC method /qdrant.Points/Teleport: this server does not implement it"
        );
    }

    #[tokio::test]
    async fn answers_that_say_something_or_succeed_are_kept() {
        let h = answer("12", Some("sharding is not supported")).await;
        assert_eq!(h["grpc-message"], "sharding is not supported");
        let h = answer("0", None).await;
        assert!(h.get("grpc-message").is_none());
    }

    #[test]
    fn the_message_is_a_valid_header_value() {
        let m = message("/a.B/c%d\u{e9}");
        assert!(HeaderValue::from_str(&m).is_ok(), "{m}");
        assert!(m.contains("c%25d%C3%A9"), "{m}");
    }
}
