//! `x-request-id` on every request and on its answer: the client's own, or a UUID v4 made here
//! from the thread's RNG. Set on the request before the handlers see it (it goes on to the
//! backend, and vLLM logs it) and copied to the response unless the response has one. One small
//! layer in place of tower-http's SetRequestId, PropagateRequestId and Trace: those inserted an
//! extensions entry, entered a span and looked the header up twice per request (~10 % of a
//! proxied request's instructions); per-request lines are `api`'s, at debug.

use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use axum::http::{HeaderName, HeaderValue, Request, Response};
use tower::{Layer, Service};

pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Wraps a service with [`RequestIds`].
#[derive(Clone, Copy, Default)]
pub struct RequestIdLayer;

impl<S> Layer<S> for RequestIdLayer {
    type Service = RequestIds<S>;
    fn layer(&self, inner: S) -> RequestIds<S> {
        RequestIds { inner }
    }
}

#[derive(Clone)]
pub struct RequestIds<S> {
    inner: S,
}

impl<S, B, R> Service<Request<B>> for RequestIds<S>
where
    S: Service<Request<B>, Response = Response<R>>,
{
    type Response = Response<R>;
    type Error = S::Error;
    type Future = WithId<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let id = match req.headers().get(X_REQUEST_ID) {
            Some(v) => v.clone(),
            None => {
                let v = new_id();
                req.headers_mut().insert(X_REQUEST_ID, v.clone());
                v
            }
        };
        WithId {
            inner: self.inner.call(req),
            id: Some(id),
        }
    }
}

pin_project_lite::pin_project! {
    /// The inner response, with the request's id added.
    pub struct WithId<F> {
        #[pin]
        inner: F,
        id: Option<HeaderValue>,
    }
}

impl<F, R, E> Future for WithId<F>
where
    F: Future<Output = Result<Response<R>, E>>,
{
    type Output = Result<Response<R>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let mut out = ready!(this.inner.poll(cx));
        if let (Ok(resp), Some(id)) = (&mut out, this.id.take()) {
            if !resp.headers().contains_key(X_REQUEST_ID) {
                resp.headers_mut().insert(X_REQUEST_ID, id);
            }
        }
        Poll::Ready(out)
    }
}

/// UUID v4 text from the thread's RNG (tower-http's `MakeRequestUuid` asked the kernel for 16
/// random bytes per request).
pub fn new_id() -> HeaderValue {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let r: u128 = rand::random();
    // Version 4, variant 10xx.
    let r = (r & !(0xf_u128 << 76) | (0x4_u128 << 76)) & !(0x3_u128 << 62) | (0x2_u128 << 62);
    let mut id = [b'-'; 36];
    let mut digit = 0;
    for (i, c) in id.iter_mut().enumerate() {
        if !matches!(i, 8 | 13 | 18 | 23) {
            *c = HEX[((r >> (124 - 4 * digit)) & 0xf) as usize];
            digit += 1;
        }
    }
    HeaderValue::from_bytes(&id).expect("hex digits and dashes are a valid header value")
}

#[cfg(test)]
mod tests {
    use super::*;
    use tower::ServiceExt;

    #[test]
    fn ids_are_uuid_v4_text_and_differ() {
        let mut ids = std::collections::HashSet::new();
        for _ in 0..1000 {
            let s = new_id().to_str().unwrap().to_string();
            let groups: Vec<&str> = s.split('-').collect();
            assert_eq!(
                groups.iter().map(|g| g.len()).collect::<Vec<_>>(),
                [8, 4, 4, 4, 12],
                "{s}"
            );
            assert!(s
                .bytes()
                .all(|b| b == b'-' || b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
            assert_eq!(&groups[2][..1], "4", "version nibble: {s}");
            assert!("89ab".contains(&groups[3][..1]), "variant: {s}");
            assert!(ids.insert(s));
        }
    }

    /// Echoes the id the handler saw in a header of its own; `preset` answers with an id of its
    /// own, as a backend may.
    fn echo(
        preset: Option<&'static str>,
    ) -> impl Service<
        Request<()>,
        Response = Response<()>,
        Error = std::convert::Infallible,
        Future = impl Send,
    > + Clone {
        tower::service_fn(move |req: Request<()>| async move {
            let mut resp = Response::new(());
            if let Some(v) = req.headers().get(X_REQUEST_ID) {
                resp.headers_mut().insert("seen", v.clone());
            }
            if let Some(p) = preset {
                resp.headers_mut()
                    .insert(X_REQUEST_ID, HeaderValue::from_static(p));
            }
            Ok(resp)
        })
    }

    #[tokio::test]
    async fn the_clients_id_is_kept_a_missing_one_made_and_a_backends_own_left() {
        let svc = RequestIdLayer.layer(echo(None));
        let req = Request::builder()
            .header("x-request-id", "abc")
            .body(())
            .unwrap();
        let resp = svc.clone().oneshot(req).await.unwrap();
        assert_eq!(resp.headers()["seen"], "abc");
        assert_eq!(resp.headers()[X_REQUEST_ID], "abc");

        let resp = svc.oneshot(Request::new(())).await.unwrap();
        let made = resp.headers()[X_REQUEST_ID].clone();
        assert_eq!(made.len(), 36);
        assert_eq!(
            resp.headers()["seen"],
            made,
            "the handler saw the id the client gets"
        );

        let svc = RequestIdLayer.layer(echo(Some("from-backend")));
        let req = Request::builder()
            .header("x-request-id", "abc")
            .body(())
            .unwrap();
        let resp = svc.oneshot(req).await.unwrap();
        assert_eq!(resp.headers()[X_REQUEST_ID], "from-backend");
    }
}
