//! Keep-alive HTTP/1.1 connections to one endpoint, kept per thread. A request takes a ready
//! connection of its own thread's list (no lock, no hash of the authority, nothing spawned) or
//! opens one; the connection goes back when the answer's body is done (`Lease` dropped with the
//! request's in-flight count). hyper's pooled client did more per request for a proxy that
//! talks to a few known hosts: a pool keyed by scheme and authority behind a mutex (three
//! SipHash look-ups), the URI rewritten to origin form, extensions, a task to wait for the
//! connection (~10 % of a proxied request's instructions with the rest).

use std::cell::RefCell;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::http::{Request, Uri};
use bytes::Bytes;
use http_body_util::Full;
use hyper_util::client::legacy::connect::HttpConnector;
use tower::ServiceExt;

use super::{BackendResponse, Endpoint};

pub type Sender = hyper::client::conn::http1::SendRequest<Full<Bytes>>;
pub type Connector = hyper_rustls::HttpsConnector<HttpConnector>;

/// An endpoint's idle connections, a list per thread (most recently used last).
#[derive(Default)]
pub struct Idle {
    lists: thread_local::ThreadLocal<RefCell<Vec<(Sender, Instant)>>>,
}

impl std::fmt::Debug for Idle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Idle").finish_non_exhaustive()
    }
}

impl Idle {
    /// A ready connection that has been idle less than `max_idle_time`; closed and stale ones
    /// are dropped on the way.
    fn take(&self, max_idle_time: Duration) -> Option<Sender> {
        let mut list = self.lists.get_or_default().borrow_mut();
        while let Some((s, since)) = list.pop() {
            if s.is_ready() && since.elapsed() < max_idle_time {
                return Some(s);
            }
        }
        None
    }

    /// Keeps `s` for the next request (at most `max` a thread: the oldest goes).
    fn put(&self, s: Sender, max: usize) {
        if max == 0 || s.is_closed() {
            return;
        }
        let mut list = self.lists.get_or_default().borrow_mut();
        if list.len() >= max {
            list.remove(0);
        }
        list.push((s, Instant::now()));
    }

    /// Idle connections of this thread.
    #[cfg(test)]
    pub fn count(&self) -> usize {
        self.lists.get().map_or(0, |l| l.borrow().len())
    }
}

/// A connection lent to one request; back to its endpoint's list when dropped, once the
/// connection is ready for another request (at once when the body was read to its end, else
/// when hyper has finished with it; never if it closed).
pub struct Lease {
    sender: Option<Sender>,
    endpoint: Arc<Endpoint>,
    max_idle: usize,
}

impl Drop for Lease {
    fn drop(&mut self) {
        let Some(mut s) = self.sender.take() else {
            return;
        };
        if s.is_ready() {
            self.endpoint.idle.put(s, self.max_idle);
        } else if !s.is_closed() && self.max_idle > 0 {
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                let (ep, max) = (self.endpoint.clone(), self.max_idle);
                rt.spawn(async move {
                    if s.ready().await.is_ok() {
                        ep.idle.put(s, max);
                    }
                });
            }
        }
    }
}

/// Why a request got no response head.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error("connection failed: {0}")]
    Connect(Box<dyn std::error::Error + Send + Sync>),
    #[error("request failed: {0}")]
    Request(#[from] hyper::Error),
}

impl SendError {
    pub fn is_connect(&self) -> bool {
        matches!(self, SendError::Connect(_))
    }
}

/// The same request again (its body is shared bytes, not copied).
fn copy_of(req: &Request<Full<Bytes>>) -> Request<Full<Bytes>> {
    let mut copy = Request::new(req.body().clone());
    *copy.method_mut() = req.method().clone();
    *copy.uri_mut() = req.uri().clone();
    *copy.version_mut() = req.version();
    *copy.headers_mut() = req.headers().clone();
    copy
}

/// Opens connections (http, or https by rustls) and sends requests on them.
pub struct Connections {
    connector: Connector,
    max_idle: usize,
    max_idle_time: Duration,
}

impl Connections {
    pub fn new(connector: Connector, max_idle: usize, max_idle_time: Duration) -> Self {
        Self {
            connector,
            max_idle,
            max_idle_time,
        }
    }

    /// Sends `req` (origin-form URI, `Host` set) to `ep` on a connection of this thread. A
    /// request that a kept connection could not take (it closed meanwhile, before anything was
    /// written, or as it was written, before any answer) goes once more on a new connection.
    pub async fn send(
        &self,
        ep: &Arc<Endpoint>,
        req: Request<Full<Bytes>>,
    ) -> Result<(BackendResponse, Lease), SendError> {
        let mut req = req;
        if let Some(mut s) = ep.idle.take(self.max_idle_time) {
            let copy = copy_of(&req);
            match s.try_send_request(req).await {
                Ok(resp) => return Ok((resp, self.lease(ep, s))),
                Err(mut e) => match e.take_message() {
                    Some(back) => req = back,
                    // Written, then the connection closed without a byte of answer: the
                    // server had closed it as idle (or after a streamed answer) as the request
                    // went out, the keep-alive race every proxy meets. Nothing was answered,
                    // and servers drop what a closed connection asked, so it goes once more on
                    // a new connection.
                    None if e.error().is_incomplete_message() || e.error().is_canceled() => {
                        metrics::counter!("router_upstream_stale_connection_retries_total")
                            .increment(1);
                        req = copy;
                    }
                    None => return Err(e.into_error().into()),
                },
            }
        }
        let base = ep
            .base
            .as_ref()
            .ok_or_else(|| SendError::Connect(format!("invalid endpoint URL {}", ep.url).into()))?;
        let mut s = self.connect(base).await?;
        let resp = s.send_request(req).await?;
        Ok((resp, self.lease(ep, s)))
    }

    fn lease(&self, ep: &Arc<Endpoint>, s: Sender) -> Lease {
        Lease {
            sender: Some(s),
            endpoint: ep.clone(),
            max_idle: self.max_idle,
        }
    }

    /// A new connection to `base`, its task on this thread's runtime.
    async fn connect(&self, base: &Uri) -> Result<Sender, SendError> {
        let io = self
            .connector
            .clone()
            .oneshot(base.clone())
            .await
            .map_err(SendError::Connect)?;
        let (sender, conn) = hyper::client::conn::http1::handshake(io).await?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "backend connection ended with an error");
            }
        });
        Ok(sender)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use http_body_util::BodyExt;

    use super::*;

    /// A server on a free port that counts the connections it accepts and hands each to `serve`.
    async fn counting<F, Fut>(serve: F) -> (String, Arc<AtomicUsize>)
    where
        F: Fn(tokio::net::TcpStream) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                count.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(serve(stream));
            }
        });
        (format!("http://{addr}"), accepted)
    }

    /// A backend answering "ok" that counts the connections it accepted; with `keep_alive`
    /// false it closes each after one answer.
    async fn backend(keep_alive: bool) -> (String, Arc<AtomicUsize>) {
        counting(move |stream| async move {
            let svc = hyper::service::service_fn(|_req| async {
                Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(
                    Bytes::from_static(b"ok"),
                )))
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .keep_alive(keep_alive)
                .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                .await;
        })
        .await
    }

    /// A backend (see `backend`), an endpoint on it and connections keeping `max_idle`.
    async fn setup(
        keep_alive: bool,
        max_idle: usize,
    ) -> (Arc<Endpoint>, Connections, Arc<AtomicUsize>) {
        let (url, accepted) = backend(keep_alive).await;
        (
            Arc::new(Endpoint::new("m", &url)),
            connections(max_idle),
            accepted,
        )
    }

    fn connections(max_idle: usize) -> Connections {
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(super::super::rustls_config().unwrap())
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        Connections::new(connector, max_idle, Duration::from_secs(90))
    }

    async fn get(c: &Connections, ep: &Arc<Endpoint>, read_body: bool) -> Lease {
        let mut req = Request::post(ep.target("/v1/chat/completions").unwrap())
            .body(Full::new(Bytes::from_static(b"{}")))
            .unwrap();
        req.headers_mut()
            .insert(axum::http::header::HOST, ep.host.clone().unwrap());
        let (resp, lease) = c.send(ep, req).await.unwrap();
        assert!(resp.status().is_success());
        if read_body {
            assert_eq!(resp.into_body().collect().await.unwrap().to_bytes(), "ok");
        }
        lease
    }

    #[tokio::test]
    async fn a_connection_is_kept_and_reused_once_its_answer_was_read() {
        let (ep, c, accepted) = setup(true, 8).await;
        for _ in 0..5 {
            drop(get(&c, &ep, true).await);
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
        assert_eq!(ep.idle.count(), 1);

        // Two at once: the second opens its own; both are kept afterwards.
        let a = get(&c, &ep, true).await;
        let b = get(&c, &ep, true).await;
        drop((a, b));
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
        assert_eq!(ep.idle.count(), 2);
    }

    #[tokio::test]
    async fn closed_connections_are_not_used_again_and_none_are_kept_with_max_idle_0() {
        let (ep, c, accepted) = setup(false, 8).await;
        for _ in 0..3 {
            drop(get(&c, &ep, true).await);
            // The backend closes after each answer; the next request must not fail on it.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 3);

        let (ep, c, accepted) = setup(true, 0).await;
        for _ in 0..3 {
            drop(get(&c, &ep, true).await);
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 3);
        assert_eq!(ep.idle.count(), 0);
    }

    #[tokio::test]
    async fn an_answer_dropped_unread_does_not_leave_its_connection_half_used() {
        let (ep, c, accepted) = setup(true, 8).await;
        // The lease goes before the body is read: the connection is not handed to the next
        // request in that state (it may come back once hyper has finished with it).
        drop(get(&c, &ep, false).await);
        drop(get(&c, &ep, true).await);
        drop(get(&c, &ep, true).await);
        assert!(accepted.load(Ordering::SeqCst) <= 2);
    }

    /// A kept connection the server closes as the next request arrives (its keep-alive ended):
    /// that request is read and dropped unanswered, and must be answered on a new connection.
    #[tokio::test]
    async fn a_request_lost_to_a_connection_the_server_closed_goes_again_on_a_new_one() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (url, accepted) = counting(|mut stream| async move {
            // Each request is small and comes in one read; the second one on a connection is
            // read, then the connection closes.
            let mut buf = vec![0u8; 4096];
            if matches!(stream.read(&mut buf).await, Ok(n) if n > 0) {
                let ok = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                stream.write_all(ok).await.unwrap();
                let _ = stream.read(&mut buf).await;
            }
        })
        .await;
        let ep = Arc::new(Endpoint::new("m", &url));
        let c = connections(8);
        for _ in 0..3 {
            drop(get(&c, &ep, true).await);
        }
        // One connection per request after the first: each kept one took a request and closed.
        assert_eq!(accepted.load(Ordering::SeqCst), 3);
    }
}
