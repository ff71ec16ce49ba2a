//! The router's own accept loop: on shutdown it stops taking connections, lets a request in
//! flight finish with its answer, and returns; a request head over the 8 KiB buffer is refused
//! with 431, not hung.

use std::time::Duration;

use loadtest::sim::{self, SimConfig};
use semroute_router::config::Config;

async fn backend(ttft: Duration) -> String {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let cfg = SimConfig {
        ttft,
        default_max_tokens: 1,
        ..SimConfig::default()
    };
    tokio::spawn(sim::serve(l, cfg, std::future::pending()));
    format!("http://{addr}")
}

fn config(backend: &str) -> Config {
    let mut cfg = Config::load(None).unwrap();
    cfg.cache.redis_url = None;
    cfg.classifier.addresses = vec!["http://127.0.0.1:1".into()];
    for m in &mut cfg.models {
        m.endpoints = vec![backend.to_string()];
    }
    cfg
}

const BODY: &str = r#"{"model": "qwen3-0.6b", "messages": [{"role": "user", "content": "hi"}]}"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_finishes_requests_in_flight_then_stops_accepting() {
    let url = backend(Duration::from_millis(600)).await;
    let listener = semroute_router::listen("127.0.0.1:0".parse().unwrap()).unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(semroute_router::serve(
        listener,
        config(&url),
        None,
        Duration::from_secs(1),
        None,
        async move {
            let _ = stopped.await;
        },
    ));
    let client = reqwest::Client::new();
    let in_flight = tokio::spawn({
        let (client, base) = (client.clone(), base.clone());
        async move {
            client
                .post(format!("{base}/v1/chat/completions"))
                .header("content-type", "application/json")
                .body(BODY)
                .send()
                .await
        }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.send(()).unwrap();
    let resp = in_flight
        .await
        .unwrap()
        .expect("the request in flight is answered");
    assert_eq!(resp.status(), 200);
    assert!(resp.text().await.unwrap().contains("choices"));
    tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .expect("serve returns once the request in flight is done")
        .unwrap()
        .unwrap();
    assert!(
        reqwest::Client::new()
            .get(format!("{base}/healthz"))
            .send()
            .await
            .is_err(),
        "no longer accepting"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_request_head_gets_431() {
    let url = backend(Duration::ZERO).await;
    let listener = semroute_router::listen("127.0.0.1:0".parse().unwrap()).unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(semroute_router::serve(
        listener,
        config(&url),
        None,
        Duration::from_secs(1),
        None,
        std::future::pending(),
    ));
    let c = reqwest::Client::new();
    let post = |extra: usize| {
        c.post(format!("{base}/v1/chat/completions"))
            .header("content-type", "application/json")
            .header("x-padding", "a".repeat(extra))
            .body(BODY)
            .send()
    };
    assert_eq!(post(6000).await.unwrap().status(), 200);
    assert_eq!(post(9000).await.unwrap().status(), 431);
}
