//! APIs served on top of the chat road (Anthropic Messages, OpenAI Responses): what they share.
//! A request in such an API is translated to a chat completions body and goes down the road;
//! a model whose backend serves the API itself (`api: [...]`) gets the client's body as it was
//! sent instead. The answer comes back in the API's own form: errors in its error format (the
//! status kept), a chat answer translated (JSON whole, SSE event by event), a native backend's
//! answer as it came.

use axum::body::Body;
use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::Response;
use bytes::Bytes;
use futures::StreamExt;
use http_body_util::BodyExt;
use serde_json::Value;

use super::openai::Kind;
use super::{proxy, read_body, AppState, Native};
use crate::config::Api;
use crate::error::Error;

/// One API translated to and from chat completions.
pub trait Dialect {
    const API: Api;
    /// Chat completion chunks in, this API's stream events out.
    type Stream: Events + Default + Send + 'static;
    /// The chat completions body for a request (400 with the field on bad input).
    fn to_chat(raw: &[u8]) -> Result<Value, Error>;
    /// A chat completion as this API's answer; None when it is not one.
    fn from_chat(chat: &[u8]) -> Option<Vec<u8>>;
    /// This API's error body.
    fn error_body(status: u16, message: &str) -> Value;
    /// Whether a body is already this API's error (from a backend that speaks it).
    fn is_error_body(v: &Value) -> bool;
    /// A check of the request before the road, with the config (what only a native backend can
    /// do, for instance).
    fn admit(_raw: &[u8], _cfg: &crate::config::Config) -> Result<(), Error> {
        Ok(())
    }
    /// One of the router's errors as this API answers it.
    fn error_response(e: Error) -> Response {
        error_response::<Self>(&e)
    }
}

/// A stream translator: SSE bytes of chat completion chunks in, this API's events out. Chunks
/// may split anywhere; events are cut at blank lines.
pub trait Events {
    /// The bytes of an event not yet complete.
    fn buffer(&mut self) -> &mut Vec<u8>;
    /// One `data:` payload (`[DONE]` included).
    fn data(&mut self, data: &str, out: &mut Vec<u8>);
    /// The closing events, once (a second call writes nothing).
    fn close(&mut self, out: &mut Vec<u8>);

    /// Feeds backend bytes; returns the events they complete.
    fn push(&mut self, chunk: &[u8]) -> Bytes {
        self.buffer().extend_from_slice(chunk);
        let mut out = Vec::new();
        while let Some((text_end, end)) = find_event_end(self.buffer()) {
            let ev: Vec<u8> = self.buffer().drain(..end).collect();
            let text = String::from_utf8_lossy(&ev[..text_end]).into_owned();
            for line in text.lines() {
                if let Some(data) = line.strip_prefix("data:") {
                    self.data(data.trim_start(), &mut out);
                }
            }
        }
        Bytes::from(out)
    }

    /// The closing events when the backend stream ended (nothing if they were sent).
    fn finish(&mut self) -> Bytes {
        let mut out = Vec::new();
        self.close(&mut out);
        Bytes::from(out)
    }
}

/// Writes one SSE event with a name.
pub fn event(out: &mut Vec<u8>, name: &str, data: &Value) {
    out.extend_from_slice(b"event: ");
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b"\ndata: ");
    out.extend_from_slice(data.to_string().as_bytes());
    out.extend_from_slice(b"\n\n");
}

/// Where the first complete event of `buf` ends: (end of its text, end including the blank
/// line). LF and CRLF line ends.
fn find_event_end(buf: &[u8]) -> Option<(usize, usize)> {
    let lf = buf
        .windows(2)
        .position(|w| w == b"\n\n")
        .map(|p| (p, p + 2));
    let crlf = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|p| (p, p + 4));
    match (lf, crlf) {
        (Some(a), Some(b)) => Some(if a.0 <= b.0 { a } else { b }),
        (a, b) => a.or(b),
    }
}

/// An OpenAI-format error body (the router's, a chat backend's) in `D`'s format.
pub fn error_from_openai<D: Dialect + ?Sized>(status: u16, body: &[u8]) -> Vec<u8> {
    let message = serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| {
            v.pointer("/error/message")
                .and_then(Value::as_str)
                .map(str::to_string)
        })
        .unwrap_or_else(|| String::from_utf8_lossy(body).into_owned());
    serde_json::to_vec(&D::error_body(status, &message)).unwrap_or_default()
}

/// An error of the router's in `D`'s format, with its status.
pub fn error_response<D: Dialect + ?Sized>(e: &Error) -> Response {
    let status = e.status();
    let body = serde_json::to_vec(&D::error_body(status.as_u16(), &e.to_string()));
    let mut resp = Response::new(Body::from(body.unwrap_or_default()));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

/// The road for a request in `D`'s API: read, translate to chat, the road (a native backend
/// gets the raw body), the answer translated back.
pub async fn road<D: Dialect>(s: &AppState, mut headers: HeaderMap, body: Body) -> Response {
    let rt = s.shared.current();
    let raw = match read_body(&headers, body, &rt.cfg.server).await {
        Ok(b) => b,
        Err(e) => return D::error_response(e),
    };
    if let Err(e) = D::admit(&raw, &rt.cfg) {
        return D::error_response(e);
    }
    let chat = match D::to_chat(&raw) {
        Ok(c) => Bytes::from(serde_json::to_vec(&c).unwrap_or_default()),
        Err(e) => return D::error_response(e),
    };
    // Anthropic clients send their key as `x-api-key`; chat backends take it as a bearer token.
    if !headers.contains_key(header::AUTHORIZATION) {
        if let Some(v) = headers
            .get("x-api-key")
            .and_then(|k| HeaderValue::from_str(&format!("Bearer {}", k.to_str().ok()?)).ok())
        {
            headers.insert(header::AUTHORIZATION, v);
        }
    }
    headers.remove(header::CONTENT_LENGTH);
    let native = Native { api: D::API, raw };
    let resp = proxy(s, Kind::Chat, headers, Body::from(chat), Some(&native)).await;
    let served_natively = resp
        .headers()
        .get("x-vsr-selected-model")
        .and_then(|v| v.to_str().ok())
        .and_then(|m| rt.cfg.model(m))
        .is_some_and(|m| m.serves(D::API));
    answer::<D>(resp, served_natively).await
}

/// Largest error body read to translate it.
const MAX_ERROR_BODY: usize = 1 << 20;

/// The road's answer in `D`'s form.
async fn answer<D: Dialect>(resp: Response, native: bool) -> Response {
    let (mut parts, body) = resp.into_parts();
    // A native backend's answer is already in this form (its errors too: kept below).
    if native && parts.status.is_success() {
        return Response::from_parts(parts, body);
    }
    let sse = parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/event-stream"));
    parts.headers.remove(header::CONTENT_LENGTH);
    if !parts.status.is_success() {
        let bytes = match http_body_util::Limited::new(body, MAX_ERROR_BODY)
            .collect()
            .await
        {
            Ok(b) => b.to_bytes(),
            Err(_) => Bytes::new(),
        };
        let already = serde_json::from_slice::<Value>(&bytes).is_ok_and(|v| D::is_error_body(&v));
        let out = if already {
            bytes
        } else {
            Bytes::from(error_from_openai::<D>(parts.status.as_u16(), &bytes))
        };
        parts.headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        return Response::from_parts(parts, Body::from(out));
    }
    if sse {
        let events = futures::stream::unfold(
            (body.into_data_stream(), D::Stream::default(), false),
            |(mut upstream, mut tr, done)| async move {
                if done {
                    return None;
                }
                let (out, done) = match upstream.next().await {
                    Some(Ok(chunk)) => (tr.push(&chunk), false),
                    // The relay ends a broken backend stream with an error event; this is the
                    // end of the body.
                    Some(Err(_)) | None => (tr.finish(), true),
                };
                Some((Ok::<_, std::io::Error>(out), (upstream, tr, done)))
            },
        )
        .filter(|r| std::future::ready(!matches!(r, Ok(b) if b.is_empty())));
        return Response::from_parts(parts, Body::from_stream(events));
    }
    let translated = match body.collect().await {
        Ok(b) => D::from_chat(&b.to_bytes()),
        Err(_) => None,
    };
    match translated {
        Some(m) => Response::from_parts(parts, Body::from(m)),
        None => D::error_response(Error::BadGateway {
            model: String::new(),
            detail: "the backend's answer was not a complete chat completion".into(),
        }),
    }
}
