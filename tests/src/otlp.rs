//! An OTLP trace receiver for tests, decoding what it is sent as the collector would: gRPC
//! (`opentelemetry.proto.collector.trace.v1.TraceService/Export`) and HTTP (`POST /v1/traces`,
//! protobuf). Every span is kept with its ids, name, attributes and service name.

use std::sync::{Arc, Mutex};

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use prost::Message;

/// One received span.
#[derive(Debug, Clone)]
pub struct Span {
    pub service: String,
    pub trace_id: String,
    pub span_id: String,
    pub parent_span_id: String,
    pub name: String,
    pub attributes: Vec<(String, String)>,
}

impl Span {
    pub fn attr(&self, key: &str) -> Option<&str> {
        self.attributes
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

#[derive(Clone, Default)]
struct Store(Arc<Mutex<Vec<Span>>>);

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

impl Store {
    fn add(&self, req: ExportTraceServiceRequest) {
        let mut out = self.0.lock().unwrap();
        for rs in req.resource_spans {
            let service = rs
                .resource
                .iter()
                .flat_map(|r| &r.attributes)
                .find(|kv| kv.key == "service.name")
                .and_then(|kv| kv.value.as_ref()?.value.as_ref())
                .map(value_text)
                .unwrap_or_default();
            for ss in rs.scope_spans {
                for s in ss.spans {
                    out.push(Span {
                        service: service.clone(),
                        trace_id: hex(&s.trace_id),
                        span_id: hex(&s.span_id),
                        parent_span_id: hex(&s.parent_span_id),
                        name: s.name,
                        attributes: s
                            .attributes
                            .into_iter()
                            .map(|kv| {
                                let v = kv
                                    .value
                                    .and_then(|v| v.value)
                                    .map(|v| value_text(&v))
                                    .unwrap_or_default();
                                (kv.key, v)
                            })
                            .collect(),
                    });
                }
            }
        }
    }
}

fn value_text(v: &Value) -> String {
    match v {
        Value::StringValue(s) => s.clone(),
        Value::BoolValue(b) => b.to_string(),
        Value::IntValue(i) => i.to_string(),
        Value::DoubleValue(d) => d.to_string(),
        other => format!("{other:?}"),
    }
}

#[tonic::async_trait]
impl TraceService for Store {
    async fn export(
        &self,
        req: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        self.add(req.into_inner());
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

/// Listens on two loopback ports until dropped.
pub struct Receiver {
    /// `http://127.0.0.1:port` of the gRPC and the HTTP receiver.
    pub grpc: String,
    pub http: String,
    store: Store,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Receiver {
    pub async fn start() -> Self {
        let store = Store::default();
        let g = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let h = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (grpc, http) = (
            format!("http://{}", g.local_addr().unwrap()),
            format!("http://{}", h.local_addr().unwrap()),
        );
        let svc = TraceServiceServer::new(store.clone());
        let grpc_task = tokio::spawn(async move {
            let _ = tonic::transport::Server::builder()
                .add_service(svc)
                .serve_with_incoming(tokio_stream_of(g))
                .await;
        });
        let st = store.clone();
        let app = axum::Router::new().route(
            "/v1/traces",
            axum::routing::post(move |body: axum::body::Bytes| {
                let st = st.clone();
                async move {
                    match ExportTraceServiceRequest::decode(body) {
                        Ok(req) => {
                            st.add(req);
                            (
                                axum::http::StatusCode::OK,
                                [("content-type", "application/x-protobuf")],
                                ExportTraceServiceResponse {
                                    partial_success: None,
                                }
                                .encode_to_vec(),
                            )
                        }
                        Err(_) => (
                            axum::http::StatusCode::BAD_REQUEST,
                            [("content-type", "text/plain")],
                            b"not an ExportTraceServiceRequest".to_vec(),
                        ),
                    }
                }
            }),
        );
        let http_task = tokio::spawn(async move {
            let _ = axum::serve(h, app).await;
        });
        Self {
            grpc,
            http,
            store,
            tasks: vec![grpc_task, http_task],
        }
    }

    pub fn spans(&self) -> Vec<Span> {
        self.store.0.lock().unwrap().clone()
    }

    /// The spans of `trace_id` once `n` of them arrived (or after `within`).
    pub async fn wait_trace(
        &self,
        trace_id: &str,
        n: usize,
        within: std::time::Duration,
    ) -> Vec<Span> {
        let until = std::time::Instant::now() + within;
        loop {
            let got: Vec<Span> = self
                .spans()
                .into_iter()
                .filter(|s| s.trace_id == trace_id)
                .collect();
            if got.len() >= n || std::time::Instant::now() > until {
                return got;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// A listener as the stream of connections tonic's server takes.
fn tokio_stream_of(
    l: tokio::net::TcpListener,
) -> impl futures::Stream<Item = std::io::Result<tokio::net::TcpStream>> {
    futures::stream::unfold(l, |l| async move {
        let r = l.accept().await.map(|(s, _)| s);
        Some((r, l))
    })
}
