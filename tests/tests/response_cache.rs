//! The response cache end to end: the real router and classifier-svc (MiniLM embeddings),
//! simulated backends that count what reaches them. Each safety rule of the cache is a check
//! here: exact and semantic hits, no hit across scopes, sampling bypass, no cached error, no
//! cached truncated stream, a replayed stream that is a valid SSE stream, negation pairs.

use std::time::Duration;

use e2e::*;
use futures::StreamExt;
use serde_json::{json, Value};

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

const CACHE: &str = "
response_cache:
  enabled: true
  ttl_secs: 600
";

fn ask(model: &str, prompt: &str) -> Value {
    json!({"model": model, "temperature": 0, "max_tokens": 6,
           "messages": [{"role": "user", "content": prompt}]})
}

async fn send(
    c: &reqwest::Client,
    base: &str,
    body: &Value,
    headers: &[(&str, &str)],
) -> (u16, String, String, Value) {
    let mut r = c.post(format!("{base}/v1/chat/completions")).json(body);
    for (k, v) in headers {
        r = r.header(*k, *v);
    }
    let r = r.send().await.unwrap();
    let status = r.status().as_u16();
    let cache = header(r.headers(), "x-vsr-response-cache").to_string();
    let sim = header(r.headers(), "x-vsr-response-cache-similarity").to_string();
    let text = r.text().await.unwrap();
    (
        status,
        cache,
        sim,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

/// The SSE events of a body, checked to be a well-formed OpenAI stream ending in [DONE].
fn sse_text(body: &str) -> String {
    let events: Vec<&str> = body.split("\n\n").filter(|e| !e.is_empty()).collect();
    assert_eq!(events.last(), Some(&"data: [DONE]"), "{body}");
    let mut text = String::new();
    for e in &events[..events.len() - 1] {
        let data = e.strip_prefix("data: ").unwrap_or_else(|| panic!("{e}"));
        let v: Value = serde_json::from_str(data).unwrap_or_else(|_| panic!("{data}"));
        assert_eq!(v["object"], "chat.completion.chunk", "{v}");
        text.push_str(v["choices"][0]["delta"]["content"].as_str().unwrap_or(""));
    }
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_are_replayed_only_when_safe() {
    let dir = tempfile::tempdir().unwrap();
    let sim = Sim::start("sim", Sim::fast()).await;
    let yaml = config_yaml(None, None, &[&sim.url], &sim.url, "") + CACHE;
    let router = Router::start(dir.path(), &yaml, &[]);
    let c = client();
    let base = router.base.as_str();
    let reached = || async { sim.requests().await.len() };

    // Exact: the second identical request (keys in another order) is not forwarded.
    let q = ask("small", "What is the capital of North Carolina?");
    let (s, cache, _, first) = send(&c, base, &q, &[]).await;
    assert_eq!((s, cache.as_str()), (200, "miss"), "{first}");
    let reordered: Value = serde_json::from_str(
        r#"{"messages": [{"content": "What is the capital of North Carolina?", "role": "user"}],
            "max_tokens": 6, "model": "small", "temperature": 0}"#,
    )
    .unwrap();
    let (s, cache, _, again) = send(&c, base, &reordered, &[]).await;
    assert_eq!((s, cache.as_str()), (200, "hit"));
    assert_eq!(again, first, "a hit replays the stored answer");
    assert_eq!(reached().await, 1);
    // Anything else that changes the answer is another entry.
    let mut longer = q.clone();
    longer["max_tokens"] = json!(7);
    assert_eq!(send(&c, base, &longer, &[]).await.1, "miss");
    assert_eq!(reached().await, 2);

    // Sampling requests bypass: temperature absent (default 1) or above 0, n above 1.
    for body in [
        json!({"model": "small", "messages": [{"role": "user", "content": "Tell me a story"}]}),
        json!({"model": "small", "temperature": 0.8, "messages": [{"role": "user", "content": "Tell me a story"}]}),
        json!({"model": "small", "temperature": 0, "n": 2, "messages": [{"role": "user", "content": "Tell me a story"}]}),
    ] {
        for _ in 0..2 {
            let (s, cache, _, _) = send(&c, base, &body, &[]).await;
            assert_eq!((s, cache.as_str()), (200, "bypass"), "{body}");
        }
    }
    assert_eq!(reached().await, 8);
    // So does a client saying no-cache.
    let (_, cache, _, _) = send(&c, base, &q, &[("cache-control", "no-cache")]).await;
    assert_eq!(cache, "bypass");

    // Scopes: a question asked in one scope is never answered from another's entry.
    let mut cross = 0;
    for i in 0..10 {
        let q = ask("small", &format!("Scoped question number {i}?"));
        let a = format!("tenant-a-{i}");
        let b = format!("tenant-b-{i}");
        assert_eq!(
            send(&c, base, &q, &[("x-semroute-cache-scope", &a)])
                .await
                .1,
            "miss"
        );
        if send(&c, base, &q, &[("x-semroute-cache-scope", &b)])
            .await
            .1
            == "hit"
        {
            cross += 1;
        }
        // Backend credentials are a scope too when no scope is named.
        let auth_a = format!("Bearer key-a-{i}");
        let auth_b = format!("Bearer key-b-{i}");
        assert_eq!(
            send(&c, base, &q, &[("authorization", &auth_a)]).await.1,
            "miss"
        );
        if send(&c, base, &q, &[("authorization", &auth_b)]).await.1 == "hit" {
            cross += 1;
        }
        assert_eq!(
            send(&c, base, &q, &[("x-semroute-cache-scope", &a)])
                .await
                .1,
            "hit"
        );
    }
    assert_eq!(cross, 0, "cross-scope hits");

    // Errors are not stored: a failing backend's answer, then the same request is a miss.
    let q = ask("small", "Will this be cached while the backend fails?");
    sim.set_mode("fail").await;
    let (s, cache, _, _) = send(&c, base, &q, &[]).await;
    assert!(s >= 500, "{s}");
    assert_ne!(cache, "hit");
    sim.set_mode("ok").await;
    let (s, cache, _, _) = send(&c, base, &q, &[]).await;
    assert_eq!(
        (s, cache.as_str()),
        (200, "miss"),
        "the error was not cached"
    );
    assert_eq!(send(&c, base, &q, &[]).await.1, "hit");

    // Streams: a complete one is replayed as a valid SSE stream with the same text...
    let mut sq = ask("small", "Stream me an answer, please.");
    sq["stream"] = json!(true);
    sq["max_tokens"] = json!(12);
    let (s, cache, _, first) = send(&c, base, &sq, &[]).await;
    assert_eq!((s, cache.as_str()), (200, "miss"));
    let first = sse_text(first.as_str().unwrap());
    assert!(!first.is_empty());
    let (s, cache, _, again) = send(&c, base, &sq, &[]).await;
    assert_eq!((s, cache.as_str()), (200, "hit"));
    assert_eq!(sse_text(again.as_str().unwrap()), first);
    // ...one the client left half way is not stored.
    let mut cut = ask("small", "A long stream the client leaves.");
    cut["stream"] = json!(true);
    cut["max_tokens"] = json!(400);
    let r = c
        .post(format!("{base}/v1/chat/completions"))
        .json(&cut)
        .send()
        .await
        .unwrap();
    assert_eq!(header(r.headers(), "x-vsr-response-cache"), "miss");
    let mut body = r.bytes_stream();
    body.next().await.unwrap().unwrap();
    drop(body);
    tokio::time::sleep(Duration::from_millis(300)).await;
    cut["max_tokens"] = json!(400);
    let r = c
        .post(format!("{base}/v1/chat/completions"))
        .json(&cut)
        .send()
        .await
        .unwrap();
    assert_eq!(
        header(r.headers(), "x-vsr-response-cache"),
        "miss",
        "a truncated stream was replayed"
    );
    drop(r);

    // The other APIs: a Messages request (translated to chat) and a Responses one, replayed in
    // their own formats.
    for (path, body) in [
        (
            "/v1/messages",
            json!({"model": "small", "max_tokens": 6, "temperature": 0,
            "messages": [{"role": "user", "content": "Cache me in Anthropic's format"}]}),
        ),
        (
            "/v1/responses",
            json!({"model": "small", "temperature": 0,
            "input": "Cache me in the Responses format"}),
        ),
    ] {
        let mut seen = Vec::new();
        for _ in 0..2 {
            let r = c
                .post(format!("{base}{path}"))
                .json(&body)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200, "{path}");
            let cache = header(r.headers(), "x-vsr-response-cache").to_string();
            let v: Value = r.json().await.unwrap();
            seen.push((cache, v));
        }
        assert_eq!(
            (seen[0].0.as_str(), seen[1].0.as_str()),
            ("miss", "hit"),
            "{path}"
        );
        let text = |v: &Value| {
            v.pointer("/content/0/text")
                .or_else(|| v.pointer("/output/0/content/0/text"))
                .and_then(Value::as_str)
                .map(str::to_string)
        };
        assert!(text(&seen[1].1).is_some(), "{path}: {}", seen[1].1);
        assert_eq!(text(&seen[0].1), text(&seen[1].1), "{path}");
    }

    let m = router.metrics();
    for needle in [
        "router_response_cache_total{result=\"hit\",layer=\"local\"}",
        "router_response_cache_total{result=\"bypass\",layer=\"sampled\"}",
        "router_response_cache_stores_total{result=\"stored\"}",
    ] {
        assert!(m.contains(needle), "{needle} missing:\n{m}");
    }
}

/// "How to install X" and "how not to install X" are close in embedding space; the cache must
/// not answer one with the other. Measured with the guard (the default) and without it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn semantic_hits_for_near_duplicates_never_for_negations() {
    let dir = tempfile::tempdir().unwrap();
    let cls = Classifier::start(dir.path());
    let sim = Sim::start("sim", Sim::fast()).await;
    // The demo jailbreak head is a crude few-shot centroid: keep it out of this test's way.
    let yaml = config_yaml(Some(cls.grpc_port), None, &[&sim.url], &sim.url, "")
        .replace("    threshold: 0.6\n", "    threshold: 0.999\n")
        + CACHE;
    for d in ["guarded", "unguarded"] {
        std::fs::create_dir_all(dir.path().join(d)).unwrap();
    }
    let guarded = Router::start(&dir.path().join("guarded"), &yaml, &[]);
    let unguarded_yaml = yaml.clone() + "  semantic:\n    guard: false\n";
    let unguarded = Router::start(&dir.path().join("unguarded"), &unguarded_yaml, &[]);
    guarded.wait_classifier_known();
    unguarded.wait_classifier_known();
    let c = client();

    // The same question typed differently: a semantic hit, then found exactly.
    let g = guarded.base.as_str();
    let (_, cache, _, first) = send(
        &c,
        g,
        &ask("auto", "How do I install nginx on Debian?"),
        &[],
    )
    .await;
    assert_eq!(cache, "miss");
    let (_, cache, sim_score, again) =
        send(&c, g, &ask("auto", "how do i install nginx on debian"), &[]).await;
    assert_eq!(cache, "hit", "near-duplicate missed");
    assert!(sim_score.parse::<f32>().unwrap() >= 0.95, "{sim_score}");
    assert_eq!(again, first);
    let (_, cache, sim_score, _) =
        send(&c, g, &ask("auto", "how do i install nginx on debian"), &[]).await;
    assert_eq!(
        (cache.as_str(), sim_score.as_str()),
        ("hit", ""),
        "exact the second time"
    );
    // Another question is not.
    let (_, cache, _, _) = send(&c, g, &ask("auto", "What is the capital of France?"), &[]).await;
    assert_eq!(cache, "miss");

    let pairs = [
        (
            "How to install nginx on Ubuntu?",
            "How not to install nginx on Ubuntu?",
        ),
        (
            "Should I use a VPN on public wifi?",
            "Should I not use a VPN on public wifi?",
        ),
        (
            "Is it safe to eat raw eggs?",
            "Is it not safe to eat raw eggs?",
        ),
        (
            "Why does my car start in the cold?",
            "Why doesn't my car start in the cold?",
        ),
        (
            "Can I take ibuprofen with coffee?",
            "Can I take ibuprofen without coffee?",
        ),
        (
            "Does Python support multiple inheritance?",
            "Does Python not support multiple inheritance?",
        ),
        ("Do cats like water?", "Do cats never like water?"),
        (
            "List the countries that use the euro",
            "List the countries that do not use the euro",
        ),
        (
            "How do I enable two factor login?",
            "How do I avoid two factor login?",
        ),
        (
            "Explain why the sky is blue",
            "Explain why the sky is not blue",
        ),
        ("What is 15 percent of 80?", "What is 25 percent of 80?"),
        (
            "Best laptops under 1000 dollars",
            "Best laptops under 500 dollars",
        ),
    ];
    let mut false_hits = [0usize; 2];
    for (i, router) in [&guarded, &unguarded].into_iter().enumerate() {
        for (a, b) in pairs {
            let (s, cache, _, _) = send(&c, &router.base, &ask("auto", a), &[]).await;
            assert_eq!((s, cache.as_str()), (200, "miss"), "{a}");
            let (s, cache, score, _) = send(&c, &router.base, &ask("auto", b), &[]).await;
            assert_eq!(s, 200);
            if cache == "hit" {
                false_hits[i] += 1;
                println!(
                    "false hit ({}): {a:?} -> {b:?} at {score}",
                    ["guarded", "unguarded"][i]
                );
            }
        }
    }
    println!(
        "negation/number pairs: false hits with the guard {}/{n}, without it {}/{n} (threshold 0.95)",
        false_hits[0],
        false_hits[1],
        n = pairs.len()
    );
    assert_eq!(false_hits[0], 0, "the guard let a negation through");
}
