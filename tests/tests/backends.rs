//! Backends as they really run: load the router does not see (another client saturating a
//! replica) read from the backends' own metrics, overflow to the next candidate model when a
//! whole pool is saturated, and the hand-off to an inference gateway that picks the pod.

use std::time::{Duration, Instant};

use e2e::*;
use loadtest::sim::SimConfig;
use serde_json::json;

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

/// A backend with `slots` sequences at once, each token 20 ms.
fn slow_sim(slots: usize) -> SimConfig {
    SimConfig {
        ttft: Duration::from_millis(5),
        token_interval: Duration::from_millis(20),
        default_max_tokens: 2,
        max_num_seqs: slots,
        ..SimConfig::default()
    }
}

/// Another client of `url` (not through the router): `n` callers, each asking for long answers
/// back to back until the returned handle is dropped.
fn other_client(url: &str, n: usize) -> Vec<tokio::task::JoinHandle<()>> {
    (0..n)
        .map(|_| {
            let url = format!("{url}/v1/chat/completions");
            tokio::spawn(async move {
                let c = client();
                loop {
                    let body = json!({"model": "any", "max_tokens": 40,
                        "messages": [{"role": "user", "content": "a long answer please"}]});
                    let _ = c.post(&url).json(&body).send().await;
                }
            })
        })
        .collect()
}

fn yaml(models: &str, routing: &str) -> String {
    format!(
        r#"
upstream:
  connect_timeout_ms: 300
  first_byte_timeout_ms: 10000
  total_timeout_ms: 20000
  health_interval_ms: 200
  load: {{interval_ms: 100, timeout_ms: 300, stale_after_ms: 1000}}
models:
{models}
routing:
{routing}
"#
    )
}

/// The value of `name`'s sample for `endpoint` on the router's /metrics.
fn endpoint_gauge(router: &Router, name: &str, endpoint: &str) -> Option<f64> {
    router
        .metrics()
        .lines()
        .find(|l| l.starts_with(name) && l.contains(&format!("\"{endpoint}\"")))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_saturated_by_another_client_gets_few_of_this_routers_requests() {
    let dir = tempfile::tempdir().unwrap();
    let busy = Sim::start("busy", slow_sim(2)).await;
    let idle = Sim::start("idle", slow_sim(2)).await;
    let models = format!(
        "  - name: small\n    endpoints: [\"{}\", \"{}\"]",
        busy.url, idle.url
    );
    let router = Router::start(dir.path(), &yaml(&models, "  default_model: small"), &[]);
    let _load = other_client(&busy.url, 12);
    wait_until(
        "the router sees the busy replica's queue",
        Duration::from_secs(15),
        || {
            endpoint_gauge(&router, "router_upstream_endpoint_waiting", &busy.url)
                .is_some_and(|w| w > 0.0)
        },
    );
    // One request at a time: this router never has a request in flight when it chooses, so by
    // its own count the two replicas look alike (without the backends' reports half would
    // queue behind the other client's).
    let c = client();
    let url = format!("{}/v1/chat/completions", router.base);
    let body = chat("small", "hi");
    let mut served = Vec::new();
    for _ in 0..40 {
        let (status, h, _) = post(&c, &url, &body).await;
        assert_eq!(status, 200);
        served.push(header(&h, "x-sim-backend").to_string());
    }
    let to_busy = served.iter().filter(|b| *b == "busy").count();
    let share = to_busy as f64 / served.len() as f64;
    eprintln!(
        "{to_busy} of {} requests to the replica saturated by another client",
        served.len()
    );
    assert!(
        share < 0.2,
        "{to_busy} of {} requests went to the saturated replica",
        served.len()
    );
    assert_eq!(
        served.iter().filter(|b| *b == "idle").count() + to_busy,
        served.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_saturated_pool_overflows_to_the_next_candidate_unless_the_model_forbids_it() {
    let dir = tempfile::tempdir().unwrap();
    let big = Sim::start("big-1", slow_sim(1)).await;
    let small = Sim::start("small-1", slow_sim(8)).await;
    let config = |overflow: bool| {
        yaml(
            &format!(
                "  - name: big\n    endpoints: [\"{}\"]\n    overflow: {overflow}\n  \
                 - name: small\n    endpoints: [\"{}\"]",
                big.url, small.url
            ),
            "  default_model: big\n  fallback_model: small",
        )
    };
    let router = Router::start(dir.path(), &config(true), &[]);
    let c = client();
    let url = format!("{}/v1/chat/completions", router.base);
    // Idle: the decided model serves.
    let (status, h, _) = post(&c, &url, &chat("auto", "hi")).await;
    assert_eq!((status, header(&h, "x-sim-backend")), (200, "big-1"));
    assert_eq!(header(&h, "x-vsr-overflow"), "");

    let _load = other_client(&big.url, 4);
    wait_until("big's queue seen", Duration::from_secs(15), || {
        endpoint_gauge(&router, "router_upstream_endpoint_waiting", &big.url)
            .is_some_and(|w| w > 0.0)
    });
    let (status, h, body) = post(&c, &url, &chat("auto", "hi")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(header(&h, "x-sim-backend"), "small-1");
    assert_eq!(header(&h, "x-vsr-overflow"), "big->small");
    assert_eq!(header(&h, "x-vsr-selected-model"), "small");
    assert!(router
        .metrics()
        .lines()
        .any(|l| l.starts_with("router_upstream_overflow_total")
            && l.contains("from=\"big\"")
            && l.contains("to=\"small\"")));
    // A model named by the client has no candidates to overflow to: it waits its turn.
    let (status, h, _) = post(&c, &url, &chat("big", "hi")).await;
    assert_eq!((status, header(&h, "x-sim-backend")), (200, "big-1"));

    // Forbidden for big (hot reload): its requests queue there.
    std::fs::write(&router.config, config(false)).unwrap();
    let t0 = Instant::now();
    loop {
        let (status, h, _) = post(&c, &url, &chat("auto", "hi")).await;
        assert_eq!(status, 200);
        if header(&h, "x-sim-backend") == "big-1" {
            assert_eq!(header(&h, "x-vsr-overflow"), "");
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "overflow still on after the reload"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_model_goes_to_the_gateway_with_its_pool_in_the_routing_header() {
    let dir = tempfile::tempdir().unwrap();
    let (gateway, seen) = recording_backend("x-gateway-model-name").await;
    let models = format!(
        "  - name: llama\n    endpoint_picker: gateway\n    pool: llama-pool\n    \
         endpoints: [\"{gateway}\"]\n  - name: plain\n    endpoints: [\"{gateway}\"]"
    );
    let router = Router::start(dir.path(), &yaml(&models, "  default_model: llama"), &[]);
    let c = client();
    let url = format!("{}/v1/chat/completions", router.base);
    for model in ["auto", "llama", "plain"] {
        let (status, _, body) = post(&c, &url, &chat(model, "hi")).await;
        assert_eq!(status, 200, "{body}");
    }
    assert_eq!(*seen.lock().unwrap(), ["llama-pool", "llama-pool", ""]);
    // Its URL is not scraped for load (the gateway's picker reads the pods'); the same URL
    // as a plain model's endpoint is, and serves no metrics.
    let failures = |model: &str| {
        router.metrics().lines().any(|l| {
            l.starts_with("router_upstream_load_scrape_failures_total")
                && l.contains(&format!("model=\"{model}\""))
        })
    };
    wait_until(
        "the plain model's scrape fails",
        Duration::from_secs(10),
        || failures("plain"),
    );
    assert!(!failures("llama"));
}
