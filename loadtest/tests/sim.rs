//! The vLLM simulator over real HTTP: completions echo the model, streams relay tokens in order
//! with [DONE] and optional usage, faults on command, vLLM gauges, OpenAI-format errors.

use std::time::{Duration, Instant};

use loadtest::sim::{self, Control, Mode, SimConfig};
use serde_json::{json, Value};

async fn start(cfg: SimConfig) -> String {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(sim::serve(l, cfg, std::future::pending()));
    format!("http://{addr}")
}

async fn control(c: &reqwest::Client, base: &str, ctl: Control) {
    let r = c
        .post(format!("{base}/sim/control"))
        .json(&ctl)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

fn fast() -> SimConfig {
    SimConfig {
        name: "b1".into(),
        ttft: Duration::from_millis(30),
        token_interval: Duration::from_millis(2),
        ..SimConfig::default()
    }
}

#[tokio::test]
async fn chat_and_text_completions_echo_the_model_with_usage() {
    let base = start(fast()).await;
    let c = reqwest::Client::new();
    let r = c
        .post(format!("{base}/v1/chat/completions"))
        .json(
            &json!({"model": "qwen3-8b", "messages": [{"role": "user", "content": "hello there"}],
                      "max_tokens": 5, "chat_template_kwargs": {"enable_thinking": true}}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-sim-backend"], "b1");
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["model"], "qwen3-8b");
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["choices"][0]["message"]["content"], "t0 t1 t2 t3 t4 ");
    assert_eq!(v["usage"]["completion_tokens"], 5);
    let v: Value = c
        .post(format!("{base}/v1/completions"))
        .json(&json!({"model": "m", "prompt": "abc", "max_tokens": 2}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["choices"][0]["text"], "t0 t1 ");
    // What was received is kept verbatim, unknown fields included.
    let log: Vec<Value> = c
        .get(format!("{base}/sim/requests"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(log[0]["chat_template_kwargs"]["enable_thinking"], true);
    assert_eq!(log.len(), 2);
}

#[tokio::test]
async fn streams_tokens_in_order_after_ttft_with_done_and_usage() {
    let base = start(fast()).await;
    let c = reqwest::Client::new();
    let started = Instant::now();
    let mut r = c
        .post(format!("{base}/v1/chat/completions"))
        .json(
            &json!({"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 6,
                      "stream": true, "stream_options": {"include_usage": true}}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["content-type"], "text/event-stream");
    let mut text = String::new();
    let mut first = None;
    while let Some(chunk) = r.chunk().await.unwrap() {
        first.get_or_insert_with(|| started.elapsed());
        text.push_str(std::str::from_utf8(&chunk).unwrap());
    }
    assert!(
        first.unwrap() >= Duration::from_millis(30),
        "first byte after the TTFT"
    );
    let events: Vec<&str> = text.split("\n\n").filter(|e| !e.is_empty()).collect();
    assert_eq!(*events.last().unwrap(), "data: [DONE]");
    let json: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e.strip_prefix("data: ").unwrap()).unwrap())
        .collect();
    assert_eq!(json[0]["choices"][0]["delta"]["role"], "assistant");
    let content: String = json
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(content, "t0 t1 t2 t3 t4 t5 ");
    let usage = json.last().unwrap();
    assert_eq!(usage["usage"]["completion_tokens"], 6);
    assert_eq!(usage["choices"], json!([]));
}

#[tokio::test]
async fn fails_hangs_and_slows_on_command() {
    let base = start(fast()).await;
    let c = reqwest::Client::new();
    let body =
        json!({"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1});
    // Per request, by header.
    let r = c
        .post(format!("{base}/v1/chat/completions"))
        .header("x-sim-mode", "fail")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 500);
    let v: Value = r.json().await.unwrap();
    assert!(v["error"]["message"].is_string());
    // Hang: the client's own timeout is what ends it; the gauge shows it running meanwhile.
    let hung = c
        .post(format!("{base}/v1/chat/completions"))
        .header("x-sim-mode", "hang")
        .timeout(Duration::from_millis(300))
        .json(&body)
        .send()
        .await;
    assert!(hung.unwrap_err().is_timeout());
    // Whole server, by control call.
    let ctl = Control {
        mode: Mode::Fail,
        fail_status: 503,
        slow_factor: 10.0,
    };
    control(&c, &base, ctl).await;
    let r = c
        .post(format!("{base}/v1/chat/completions"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    assert_eq!(
        c.get(format!("{base}/health"))
            .send()
            .await
            .unwrap()
            .status(),
        503
    );
    let ctl = Control {
        mode: Mode::Ok,
        ..ctl
    };
    control(&c, &base, ctl).await;
    assert_eq!(
        c.get(format!("{base}/health"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let t = Instant::now();
    let r = c
        .post(format!("{base}/v1/chat/completions"))
        .header("x-sim-mode", "slow")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(
        t.elapsed() >= Duration::from_millis(300),
        "10x the 30 ms TTFT"
    );
}

#[tokio::test]
async fn exposes_vllm_gauges() {
    let base = start(fast()).await;
    let c = reqwest::Client::new();
    // 100 x slower: a 3 s time to first token keeps the request running while we look.
    let ctl = Control {
        mode: Mode::Ok,
        fail_status: 500,
        slow_factor: 100.0,
    };
    control(&c, &base, ctl).await;
    let body =
        json!({"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1});
    let slow = {
        let c = c.clone();
        let url = format!("{base}/v1/chat/completions");
        tokio::spawn(async move {
            c.post(url)
                .header("x-sim-mode", "slow")
                .json(&body)
                .send()
                .await
        })
    };
    let metrics = || async {
        c.get(format!("{base}/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    };
    let deadline = Instant::now() + Duration::from_secs(2);
    let mut m = metrics().await;
    while !m.contains("vllm:num_requests_running{model_name=\"b1\"} 1") {
        assert!(
            Instant::now() < deadline,
            "request never showed as running:\n{m}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
        m = metrics().await;
    }
    assert!(
        m.contains("vllm:num_requests_waiting{model_name=\"b1\"} 0"),
        "{m}"
    );
    assert!(m.contains("vllm:kv_cache_usage_perc"), "{m}");
    assert_eq!(slow.await.unwrap().unwrap().status(), 200);
    let m = metrics().await;
    assert!(
        m.contains("vllm:num_requests_running{model_name=\"b1\"} 0"),
        "{m}"
    );
}

#[tokio::test]
async fn bad_requests_get_openai_errors() {
    let cfg = SimConfig {
        models: vec!["served".into()],
        ..fast()
    };
    let base = start(cfg).await;
    let c = reqwest::Client::new();
    let url = format!("{base}/v1/chat/completions");
    let r = c.post(&url).body("{not json").send().await.unwrap();
    assert_eq!(r.status(), 400);
    let r = c
        .post(&url)
        .json(&json!({"messages": []}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["message"], "model is required");
    let r = c
        .post(&url)
        .json(&json!({"model": "other", "messages": []}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let models: Value = c
        .get(format!("{base}/v1/models"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(models["data"][0]["id"], "served");
}
