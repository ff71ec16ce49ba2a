//! Horizontal scaling without Docker: three router-svc processes share one Redis and one
//! classifier-svc (MiniLM, demo heads), and a client spreads load over them, retrying on another
//! replica when one does not answer (what a load balancer in front of them does).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use e2e::*;
use serde_json::Value;

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .pool_max_idle_per_host(8)
        .build()
        .unwrap()
}

/// The parts of a decision that must not depend on which replica made it.
fn essence(route: &Value) -> (Value, Value, Value, Value) {
    let d = &route["decision"];
    (
        d["model"].clone(),
        d["category"].clone(),
        d["complexity"].clone(),
        d["use_reasoning"].clone(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_agree_share_the_cache_and_lose_nothing_when_one_dies() {
    let dir = tempfile::tempdir().unwrap();
    let cls = Classifier::start(dir.path());
    let redis = Redis::start(dir.path());
    let a = Sim::start("sim-a", Sim::fast()).await;
    let b = Sim::start("sim-b", Sim::fast()).await;
    let big = Sim::start("sim-big", Sim::fast()).await;
    let yaml = config_yaml(
        Some(cls.grpc_port),
        Some(&redis.url()),
        &[&a.url, &b.url],
        &big.url,
        "",
    );
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut routers: Vec<Router> = dirs
        .iter()
        .map(|d| Router::start(d.path(), &yaml, &[]))
        .collect();
    for r in &routers {
        r.wait_classifier_known();
        wait_until("replica connected to redis", Duration::from_secs(5), || {
            metric_sum(&r.metrics(), "router_redis_connected", &[]) == 1
        });
    }
    let c = client();

    // 1. The same prompts sent to every replica at once (all three miss, each classifies):
    // identical decisions.
    let prompts: Vec<String> = [
        ("domain", "math", 0),
        ("domain", "history", 1),
        ("domain", "computer science", 0),
        ("domain", "business", 1),
        ("complexity", "simple", 0),
        ("complexity", "reasoning", 1),
    ]
    .iter()
    .map(|(t, l, i)| example(t, l, *i))
    .collect();
    for p in &prompts {
        let body = chat("auto", p);
        let urls: Vec<String> = routers
            .iter()
            .map(|r| format!("{}/v1/route", r.base))
            .collect();
        let answers = futures::future::join_all(urls.iter().map(|u| post(&c, u, &body))).await;
        for (s, _, v) in &answers {
            assert_eq!(*s, 200, "{v}");
        }
        let first = essence(&answers[0].2);
        for (_, _, v) in &answers[1..] {
            assert_eq!(essence(v), first, "replicas disagree on {p:?}");
        }
    }

    // 2. A decision made through replica 0 is a cache hit through replicas 1 and 2, with no
    // classifier call.
    let fresh = example("domain", "physics", 2);
    let body = chat("auto", &fresh);
    let url = |i: usize| format!("{}/v1/chat/completions", routers[i].base);
    let keys_before = redis.keys("vsr:decision:*").len();
    let (s, h, _) = post(&c, &url(0), &body).await;
    assert_eq!(s, 200);
    assert_eq!(header(&h, "x-vsr-cache-hit"), "false");
    let model = header(&h, "x-vsr-selected-model").to_string();
    // Written off the request path: poll.
    wait_until("decision in redis", Duration::from_secs(5), || {
        redis.keys("vsr:decision:*").len() > keys_before
    });
    let calls = cls.classify_calls();
    for i in 1..3 {
        let (s, h, _) = post(&c, &url(i), &body).await;
        assert_eq!(s, 200);
        assert_eq!(
            header(&h, "x-vsr-decision-source"),
            "cache_redis",
            "replica {i}"
        );
        assert_eq!(header(&h, "x-vsr-selected-model"), model);
    }
    assert_eq!(
        cls.classify_calls(),
        calls,
        "no classification for cache hits"
    );

    // 3. Load spread round-robin; replica 2 is killed while requests are in flight. A request
    // whose replica does not answer (refused, reset) is retried on the next one: every request
    // must end in 200.
    let total = 240;
    let sent = Arc::new(AtomicUsize::new(0));
    let retried = Arc::new(AtomicUsize::new(0));
    let bases: Arc<Vec<String>> = Arc::new(routers.iter().map(|r| r.base.clone()).collect());
    let mut tasks = Vec::new();
    for w in 0..12 {
        let (c, sent, retried, bases) = (c.clone(), sent.clone(), retried.clone(), bases.clone());
        let prompts = prompts.clone();
        tasks.push(tokio::spawn(async move {
            let mut statuses = Vec::new();
            loop {
                let i = sent.fetch_add(1, Ordering::SeqCst);
                if i >= total {
                    return statuses;
                }
                // Half repeated prompts (cache hits), half unique ones (misses: classified).
                let prompt = if i % 2 == 0 {
                    prompts[i / 2 % prompts.len()].clone()
                } else {
                    format!("{} (variant {w}-{i})", prompts[i / 2 % prompts.len()])
                };
                let body = chat("auto", &prompt);
                let mut status = None;
                for attempt in 0..bases.len() {
                    let base = &bases[(i + attempt) % bases.len()];
                    let Ok(r) = c
                        .post(format!("{base}/v1/chat/completions"))
                        .json(&body)
                        .send()
                        .await
                    else {
                        continue; // refused or reset: the next replica
                    };
                    let st = r.status().as_u16();
                    if r.bytes().await.is_err() {
                        continue; // the replica died while answering
                    }
                    if attempt > 0 {
                        retried.fetch_add(1, Ordering::SeqCst);
                    }
                    status = Some(st);
                    break;
                }
                statuses.push(status);
            }
        }));
    }
    wait_until("a third of the load sent", Duration::from_secs(60), || {
        sent.load(Ordering::SeqCst) >= total / 3
    });
    routers[2].proc.kill();
    let mut done = 0;
    for t in tasks {
        for s in t.await.unwrap() {
            assert_eq!(s, Some(200), "a request was lost");
            done += 1;
        }
    }
    assert_eq!(done, total);
    assert!(
        retried.load(Ordering::SeqCst) > 0,
        "the dead replica's share was retried elsewhere"
    );
    // The survivors served the rest, and still share decisions.
    for r in &routers[..2] {
        assert_eq!(http_status(r.port, "/readyz"), Some(200));
    }
    routers.truncate(2);
}
