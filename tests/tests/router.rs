//! router-svc end to end: the real router and classifier-svc processes (MiniLM encoder, demo
//! centroid heads), real redis-server, simulated vLLM backends.

use std::time::{Duration, Instant};

use e2e::*;
use futures::StreamExt;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

struct Backends {
    a: Sim,
    b: Sim,
    c: Sim,
}

impl Backends {
    async fn start() -> Self {
        Self {
            a: Sim::start("sim-a", Sim::fast()).await,
            b: Sim::start("sim-b", Sim::fast()).await,
            c: Sim::start("sim-c", Sim::fast()).await,
        }
    }

    fn small(&self) -> [&str; 2] {
        [&self.a.url, &self.b.url]
    }

    async fn last_body(&self, sim: &Sim) -> Value {
        sim.requests().await.last().cloned().unwrap_or(Value::Null)
    }

    async fn total_requests(&self) -> usize {
        self.a.requests().await.len()
            + self.b.requests().await.len()
            + self.c.requests().await.len()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_routing_follows_the_policy_and_sets_reasoning_per_family() {
    let dir = tempfile::tempdir().unwrap();
    let cls = Classifier::start(dir.path());
    let be = Backends::start().await;
    // Two classifier addresses, one of them dead: calls still land on the live one.
    let yaml = config_yaml(Some(cls.grpc_port), None, &be.small(), &be.c.url, "").replace(
        "addresses: [",
        &format!("addresses: [\"http://127.0.0.1:{}\", ", free_port()),
    );
    let router = Router::start(dir.path(), &yaml, &[]);
    let c = client();
    let url = format!("{}/v1/chat/completions", router.base);

    // A simple factoid: small model, reasoning off.
    let (s, h, body) = post(&c, &url, &chat("auto", &example("domain", "history", 0))).await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(header(&h, "x-vsr-selected-model"), "small");
    assert_eq!(header(&h, "x-vsr-selected-category"), "history");
    assert_eq!(header(&h, "x-vsr-selected-reasoning"), "off");
    assert_eq!(header(&h, "x-vsr-cache-hit"), "false");
    assert!(header(&h, "x-vsr-confidence").parse::<f32>().unwrap() > 0.4);
    assert!(header(&h, "server-timing").contains("classify;dur="));
    assert!(header(&h, "server-timing").contains("upstream;dur="));
    assert!(["sim-a", "sim-b"].contains(&header(&h, "x-sim-backend")));
    assert_eq!(body["model"], "small");
    let sent = be
        .last_body(if header(&h, "x-sim-backend") == "sim-a" {
            &be.a
        } else {
            &be.b
        })
        .await;
    assert_eq!(sent["chat_template_kwargs"]["enable_thinking"], false);

    // Math that needs reasoning: big (qwen3) with thinking on and the category's system prompt.
    let math = example("domain", "math", 2);
    let (s, h, _) = post(&c, &url, &chat("auto", &math)).await;
    assert_eq!(s, 200);
    assert_eq!(header(&h, "x-vsr-selected-model"), "big");
    assert_eq!(header(&h, "x-vsr-selected-category"), "math");
    assert_eq!(header(&h, "x-vsr-selected-reasoning"), "on");
    let sent = be.last_body(&be.c).await;
    assert_eq!(sent["model"], "big");
    assert_eq!(sent["chat_template_kwargs"]["enable_thinking"], true);
    assert_eq!(sent["messages"][0]["role"], "system");
    assert_eq!(sent["messages"][1]["content"], math);

    // Coding: the deepseek family's switch.
    let (s, h, _) = post(
        &c,
        &url,
        &chat("auto", &example("domain", "computer science", 0)),
    )
    .await;
    assert_eq!(s, 200);
    assert_eq!(header(&h, "x-vsr-selected-model"), "ds");
    let sent = be.last_body(&be.c).await;
    assert_eq!(sent["chat_template_kwargs"]["thinking"], true);

    // A financial projection: gpt-oss with its configured effort; unknown fields kept.
    let mut req = chat("auto", &example("domain", "business", 0));
    req["guided_json"] = json!({"type": "object"});
    req["logprobs"] = json!(true);
    let (s, h, _) = post(&c, &url, &req).await;
    assert_eq!(s, 200);
    assert_eq!(header(&h, "x-vsr-selected-model"), "oss");
    let sent = be.last_body(&be.c).await;
    assert_eq!(sent["reasoning_effort"], "medium");
    assert_eq!(sent["guided_json"], json!({"type": "object"}));
    assert_eq!(sent["logprobs"], true);

    // An explicit model skips classification.
    let calls = cls.classify_calls();
    let (s, h, _) = post(&c, &url, &chat("big", "Anything at all, unclassified.")).await;
    assert_eq!(s, 200);
    assert_eq!(header(&h, "x-vsr-selected-model"), "big");
    assert_eq!(header(&h, "x-vsr-decision-source"), "explicit");
    assert_eq!(
        cls.classify_calls(),
        calls,
        "explicit model must not be classified"
    );
    let sent = be.last_body(&be.c).await;
    assert!(sent.get("chat_template_kwargs").is_none(), "{sent}");

    // A jailbreak is refused without reaching any backend.
    let before = be.total_requests().await;
    let (s, h, body) = post(
        &c,
        &url,
        &chat("auto", &example("jailbreak", "jailbreak", 0)),
    )
    .await;
    assert_eq!(s, 200);
    assert_eq!(header(&h, "x-vsr-jailbreak"), "blocked");
    assert_eq!(body["choices"][0]["finish_reason"], "content_filter");
    assert_eq!(be.total_requests().await, before);

    // Text completions are routed too.
    let (s, h, body) = post(
        &c,
        &format!("{}/v1/completions", router.base),
        &json!({"model": "auto", "prompt": math, "max_tokens": 3}),
    )
    .await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(header(&h, "x-vsr-selected-model"), "big");
    assert_eq!(body["object"], "text_completion");

    // /v1/route decides without forwarding; /v1/models lists models and the alias.
    let before = be.total_requests().await;
    let (s, _, r) = post(
        &c,
        &format!("{}/v1/route", router.base),
        &chat("auto", &math),
    )
    .await;
    assert_eq!(s, 200);
    assert_eq!(r["decision"]["model"], "big");
    assert_eq!(
        r["reasoning_fields"]["chat_template_kwargs.enable_thinking"],
        true
    );
    assert_eq!(be.total_requests().await, before);
    let models: Value = c
        .get(format!("{}/v1/models", router.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let ids: Vec<&str> = models["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["auto", "small", "big", "ds", "oss"]);

    // Logs never carry prompt text.
    let log = router.proc.log_text();
    assert!(
        !log.contains(&math) && !log.contains("North Carolina"),
        "{log}"
    );
}

fn text_key_pattern(text: &str) -> String {
    format!(
        "vsr:decision:{}:*",
        hex::encode(Sha256::digest(text.as_bytes()))
    )
}

async fn policy_version(c: &reqwest::Client, router: &Router) -> String {
    let (_, _, r) = post(c, &format!("{}/v1/route", router.base), &chat("small", "x")).await;
    r["policy_version"].as_str().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decisions_are_cached_in_redis_shared_by_replicas_and_invalidated_by_policy() {
    let dir = tempfile::tempdir().unwrap();
    let cls = Classifier::start(dir.path());
    let redis = Redis::start(dir.path());
    let be = Backends::start().await;
    let yaml = config_yaml(
        Some(cls.grpc_port),
        Some(&redis.url()),
        &be.small(),
        &be.c.url,
        "",
    );
    let router = Router::start(dir.path(), &yaml, &[]);
    router.wait_classifier_known();
    let c = client();
    let url = format!("{}/v1/chat/completions", router.base);
    let prompt = example("domain", "math", 2);

    let (s, h, _) = post(&c, &url, &chat("auto", &prompt)).await;
    assert_eq!(s, 200);
    assert_eq!(header(&h, "x-vsr-cache-hit"), "false");
    // Written off the request path: poll.
    wait_until("decision in redis", Duration::from_secs(5), || {
        redis.keys(&text_key_pattern(&prompt)).len() == 1
    });
    let key = &redis.keys(&text_key_pattern(&prompt))[0];
    let value = redis.command(&["GET", key]).unwrap().join("");
    assert!(value.contains("\"model\":\"big\""), "{value}");
    assert!(!value.contains(&prompt), "no prompt text in Redis: {value}");
    let ttl: i64 = redis.command(&["TTL", key]).unwrap()[0].parse().unwrap();
    assert!(ttl > 0 && ttl <= 3600, "ttl {ttl}");

    // The same request again: a hit, and no classifier call.
    let calls = cls.classify_calls();
    let (s, h, _) = post(&c, &url, &chat("auto", &prompt)).await;
    assert_eq!(s, 200);
    assert_eq!(header(&h, "x-vsr-cache-hit"), "true");
    assert_eq!(header(&h, "x-vsr-decision-source"), "cache_local");
    assert_eq!(header(&h, "x-vsr-selected-model"), "big");
    assert_eq!(cls.classify_calls(), calls);

    // Another replica sharing Redis: a hit from Redis.
    let dir_b = tempfile::tempdir().unwrap();
    let replica = Router::start(dir_b.path(), &yaml, &[]);
    replica.wait_classifier_known();
    wait_until("replica connected to redis", Duration::from_secs(5), || {
        metric_sum(&replica.metrics(), "router_redis_connected", &[]) == 1
    });
    let (s, h, _) = post(
        &c,
        &format!("{}/v1/chat/completions", replica.base),
        &chat("auto", &prompt),
    )
    .await;
    assert_eq!(s, 200);
    assert_eq!(header(&h, "x-vsr-decision-source"), "cache_redis");
    assert_eq!(cls.classify_calls(), calls);

    // Identical concurrent misses are coalesced into one classification.
    let fresh = example("domain", "physics", 1);
    let calls = cls.classify_calls();
    let body = chat("auto", &fresh);
    let reqs = (0..8).map(|_| post(&c, &url, &body));
    let results = futures::future::join_all(reqs).await;
    assert!(results.iter().all(|(s, _, _)| *s == 200));
    assert_eq!(
        cls.classify_calls(),
        calls + 1,
        "one classification for 8 identical requests"
    );

    // An invalid new config is refused and the old one keeps serving.
    let v1 = policy_version(&c, &router).await;
    std::fs::write(
        &router.config,
        yaml.replace("default_model: small", "default_model: nosuch"),
    )
    .unwrap();
    wait_until("rejection logged", Duration::from_secs(5), || {
        router.proc.log_text().contains("routing.default_model")
    });
    assert_eq!(policy_version(&c, &router).await, v1);
    let (s, _, _) = post(&c, &url, &chat("auto", &prompt)).await;
    assert_eq!(s, 200);

    // A policy change: the same prompt is a miss again.
    std::fs::write(
        &router.config,
        yaml.replace("confidence_threshold: 0.4", "confidence_threshold: 0.45"),
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while policy_version(&c, &router).await == v1 {
        assert!(Instant::now() < deadline, "config not reloaded");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let calls = cls.classify_calls();
    let (s, h, _) = post(&c, &url, &chat("auto", &prompt)).await;
    assert_eq!(s, 200);
    assert_eq!(header(&h, "x-vsr-cache-hit"), "false");
    assert_eq!(cls.classify_calls(), calls + 1);
    wait_until("new key", Duration::from_secs(5), || {
        redis.keys(&text_key_pattern(&prompt)).len() == 2
    });
}

/// Reads an SSE response, returning each `data:` payload with its arrival time.
async fn read_sse(resp: reqwest::Response) -> Vec<(Instant, String)> {
    let mut out = Vec::new();
    let mut buf = String::new();
    let mut stream = resp.bytes_stream();
    while let Some(chunk) = stream.next().await {
        buf.push_str(&String::from_utf8_lossy(&chunk.unwrap()));
        while let Some(i) = buf.find("\n\n") {
            let event: String = buf.drain(..i + 2).collect();
            if let Some(data) = event.trim().strip_prefix("data: ") {
                out.push((Instant::now(), data.to_string()));
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streaming_relays_every_chunk_in_order_and_client_exit_cancels_upstream() {
    let dir = tempfile::tempdir().unwrap();
    let slow = loadtest::sim::SimConfig {
        ttft: Duration::from_millis(20),
        token_interval: Duration::from_millis(40),
        ..Sim::fast()
    };
    let a = Sim::start("sim-a", slow.clone()).await;
    let yaml = config_yaml(None, None, &[&a.url], &a.url, "");
    let router = Router::start(dir.path(), &yaml, &[]);
    let c = client();

    for (path, body) in [
        (
            "/v1/chat/completions",
            json!({"model": "auto", "stream": true, "max_tokens": 6,
                   "stream_options": {"include_usage": true},
                   "messages": [{"role": "user", "content": "count"}]}),
        ),
        (
            "/v1/completions",
            json!({"model": "small", "stream": true, "max_tokens": 6,
                   "stream_options": {"include_usage": true}, "prompt": "count"}),
        ),
    ] {
        let resp = c
            .post(format!("{}{path}", router.base))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        assert!(header(resp.headers(), "content-type").starts_with("text/event-stream"));
        assert_eq!(header(resp.headers(), "x-vsr-selected-model"), "small");
        let events = read_sse(resp).await;
        assert_eq!(events.last().unwrap().1, "[DONE]", "{path}");
        let chunks: Vec<Value> = events[..events.len() - 1]
            .iter()
            .map(|(_, d)| serde_json::from_str(d).unwrap())
            .collect();
        let text: String = chunks
            .iter()
            .filter_map(|c| {
                let ch = c["choices"].get(0)?;
                ch["delta"]["content"]
                    .as_str()
                    .or(ch["text"].as_str())
                    .map(String::from)
            })
            .collect();
        assert_eq!(text, "t0 t1 t2 t3 t4 t5 ", "{path}: every token, in order");
        assert!(
            chunks.last().unwrap()["usage"]["completion_tokens"] == 6,
            "{path}: usage chunk"
        );
        // Relayed as produced, not buffered: ~40 ms between tokens reach the client spread out.
        let spread = events[events.len() - 2].0 - events[0].0;
        assert!(
            spread >= Duration::from_millis(120),
            "{path}: stream buffered ({spread:?})"
        );
    }

    // Tokens of streamed responses are counted from their usage chunk.
    let m = router.metrics();
    assert!(
        metric_sum(
            &m,
            "router_tokens_total",
            &["model=\"small\"", "kind=\"completion\""]
        ) >= 12,
        "{m}"
    );

    // A client that goes away cancels the upstream request (plain and streamed).
    let running = || async {
        let text = reqwest::get(format!("{}/metrics", a.url))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        metric_sum(&text, "vllm:num_requests_running", &[])
    };
    let impatient = reqwest::Client::builder()
        .timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    let r = impatient
        .post(format!("{}/v1/chat/completions", router.base))
        .json(&json!({"model": "small", "max_tokens": 1000,
                      "messages": [{"role": "user", "content": "long"}]}))
        .send()
        .await;
    assert!(r.is_err(), "client timed out");
    let deadline = Instant::now() + Duration::from_secs(3);
    while running().await != 0 {
        assert!(
            Instant::now() < deadline,
            "plain upstream request not cancelled"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let resp = c
        .post(format!("{}/v1/chat/completions", router.base))
        .json(
            &json!({"model": "small", "stream": true, "max_tokens": 1000,
                      "messages": [{"role": "user", "content": "long"}]}),
        )
        .send()
        .await
        .unwrap();
    let mut stream = resp.bytes_stream();
    stream.next().await.unwrap().unwrap();
    assert_eq!(running().await, 1);
    drop(stream);
    let deadline = Instant::now() + Duration::from_secs(3);
    while running().await != 0 {
        assert!(Instant::now() < deadline, "upstream request not cancelled");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn official_openai_python_client_works_streaming_and_not() {
    let dir = tempfile::tempdir().unwrap();
    let a = Sim::start("sim-a", Sim::fast()).await;
    let yaml = config_yaml(None, None, &[&a.url], &a.url, "");
    let router = Router::start(dir.path(), &yaml, &[]);
    let script = r#"
import sys, openai
c = openai.OpenAI(base_url=sys.argv[1] + "/v1", api_key="unused", max_retries=0)
r = c.chat.completions.with_raw_response.create(model="auto", messages=[{"role": "user", "content": "hi"}], max_tokens=4)
assert r.headers["x-vsr-selected-model"] == "small", r.headers
resp = r.parse()
assert resp.choices[0].message.content.strip() == "t0 t1 t2 t3", resp
assert resp.usage.completion_tokens == 4
parts = []
for chunk in c.chat.completions.create(model="small", messages=[{"role": "user", "content": "hi"}], max_tokens=5, stream=True, stream_options={"include_usage": True}):
    if chunk.choices:
        parts.append(chunk.choices[0].delta.content or "")
    else:
        assert chunk.usage.completion_tokens == 5
assert "".join(parts).strip() == "t0 t1 t2 t3 t4", parts
t = c.completions.create(model="auto", prompt="hi", max_tokens=2)
assert t.choices[0].text.strip() == "t0 t1", t
try:
    c.chat.completions.create(model="gpt-9", messages=[{"role": "user", "content": "hi"}])
    raise SystemExit("expected NotFoundError")
except openai.NotFoundError as e:
    assert e.body["code"] == "model_not_found", e.body
print("openai client OK")
"#;
    let out = python_client(dir.path(), "openai", script, &router.base);
    assert!(out.contains("openai client OK"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn official_anthropic_client_through_the_messages_api_translated_and_native() {
    let dir = tempfile::tempdir().unwrap();
    let a = Sim::start("sim-a", Sim::fast()).await;
    let b = Sim::start("sim-b", Sim::fast()).await;
    // `big` speaks Messages itself; `small` (the default for `auto`) only chat.
    let yaml = config_yaml(None, None, &[&a.url], &b.url, "")
        .replace("  - name: big\n", "  - name: big\n    api: [messages]\n");
    let router = Router::start(dir.path(), &yaml, &[]);
    let script = r#"
import sys, anthropic
c = anthropic.Anthropic(base_url=sys.argv[1], api_key="unused", max_retries=0)
msgs = [{"role": "user", "content": "What is the capital of North Carolina?"}]

# Translated to chat completions (auto -> small, and small by name), plain and streamed.
for model in ("auto", "small"):
    r = c.messages.with_raw_response.create(model=model, max_tokens=4, system="Be brief.", messages=msgs)
    assert r.headers["x-vsr-selected-model"] == "small", r.headers
    m = r.parse()
    assert m.type == "message" and m.role == "assistant", m
    assert m.content[0].type == "text" and m.content[0].text.strip() == "t0 t1 t2 t3", m
    assert m.stop_reason == "max_tokens" and m.usage.output_tokens == 4, m
    with c.messages.stream(model=model, max_tokens=5, messages=msgs) as s:
        text = "".join(s.text_stream)
        final = s.get_final_message()
    assert text.strip() == "t0 t1 t2 t3 t4", text
    assert final.stop_reason == "max_tokens" and final.usage.output_tokens == 5, final

# Tools: the call comes back as a tool_use block, plain and streamed; its result goes back.
tools = [{"name": "get_weather", "description": "Weather of a city",
          "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}}}]
m = c.messages.create(model="auto", max_tokens=16, messages=msgs, tools=tools)
assert m.stop_reason == "tool_use", m
use = [b for b in m.content if b.type == "tool_use"][0]
assert use.name == "get_weather" and use.input == {"city": "Raleigh", "n": 1}, use
with c.messages.stream(model="small", max_tokens=16, messages=msgs, tools=tools,
                       tool_choice={"type": "tool", "name": "get_weather"}) as s:
    final = s.get_final_message()
use2 = [b for b in final.content if b.type == "tool_use"][0]
assert final.stop_reason == "tool_use" and use2.input == {"city": "Raleigh", "n": 1}, final
follow = msgs + [{"role": "assistant", "content": [b.model_dump() for b in m.content]},
                 {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id, "content": "sunny"}]}]
m = c.messages.create(model="small", max_tokens=3, messages=follow, tools=tools)
assert m.stop_reason == "max_tokens" and m.content[0].text.strip() == "t0 t1 t2", m

# A backend that speaks Messages gets the request as sent; its answer comes back as it was.
r = c.messages.with_raw_response.create(model="big", max_tokens=3, messages=msgs)
assert r.headers["x-sim-backend"] == "sim-b", r.headers
m = r.parse()
assert m.id.startswith("msg_sim") and m.content[0].text.strip() == "t0 t1 t2", m
with c.messages.stream(model="big", max_tokens=2, messages=msgs) as s:
    assert "".join(s.text_stream).strip() == "t0 t1"

# Errors in Anthropic's format.
try:
    c.messages.create(model="gpt-9", max_tokens=4, messages=msgs)
    raise SystemExit("expected NotFoundError")
except anthropic.NotFoundError as e:
    assert e.body["type"] == "error" and e.body["error"]["type"] == "not_found_error", e.body
try:
    c.messages.create(model="small", max_tokens=0, messages=msgs)
    raise SystemExit("expected BadRequestError")
except anthropic.BadRequestError as e:
    assert e.body["error"]["type"] == "invalid_request_error", e.body
print("anthropic client OK")
"#;
    let out = python_client(dir.path(), "anthropic", script, &router.base);
    assert!(out.contains("anthropic client OK"), "{out}");
    // What the backends received: chat with the system prompt first for `small`; the
    // Messages body itself, model replaced, for `big`.
    let seen_a: Vec<Value> = a.requests().await;
    let first = &seen_a[0];
    assert_eq!(
        first["messages"][0],
        json!({"role": "system", "content": "Be brief."})
    );
    assert_eq!(first["model"], "small");
    let tool_turn = seen_a
        .iter()
        .find(|r| {
            r["messages"]
                .as_array()
                .is_some_and(|m| m.iter().any(|m| m["role"] == "tool"))
        })
        .expect("the tool result reached the backend");
    assert_eq!(
        tool_turn["messages"][1]["tool_calls"][0]["function"]["name"],
        "get_weather"
    );
    let seen_b: Vec<Value> = b.requests().await;
    assert_eq!(seen_b[0]["model"], "big");
    assert_eq!(
        seen_b[0]["messages"][0]["content"],
        "What is the capital of North Carolina?"
    );
    assert!(seen_b[0].get("max_tokens").is_some() && seen_b[0].get("stream_options").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn official_openai_client_through_the_responses_api_translated_and_native() {
    let dir = tempfile::tempdir().unwrap();
    let a = Sim::start("sim-a", Sim::fast()).await;
    let b = Sim::start("sim-b", Sim::fast()).await;
    // `big` serves /v1/responses itself; `small` (the default for `auto`) only chat.
    let yaml = config_yaml(None, None, &[&a.url], &b.url, "")
        .replace("  - name: big\n", "  - name: big\n    api: [responses]\n");
    let router = Router::start(dir.path(), &yaml, &[]);
    let script = r#"
import sys, json, openai
c = openai.OpenAI(base_url=sys.argv[1] + "/v1", api_key="unused", max_retries=0)

# Translated to chat completions, plain and streamed (vllm-sim stops by length: `incomplete`).
for model in ("auto", "small"):
    r = c.responses.with_raw_response.create(model=model, input="What is the capital of North Carolina?",
                                             instructions="Be brief.", max_output_tokens=4)
    assert r.headers["x-vsr-selected-model"] == "small", r.headers
    resp = r.parse()
    assert resp.object == "response" and resp.output_text.strip() == "t0 t1 t2 t3", resp
    assert resp.usage.output_tokens == 4 and resp.status == "incomplete", resp
    assert resp.incomplete_details.reason == "max_output_tokens", resp
    types, text = [], ""
    for ev in c.responses.create(model=model, max_output_tokens=3, stream=True,
                                 input=[{"role": "user", "content": [{"type": "input_text", "text": "hi"}]}]):
        types.append(ev.type)
        if ev.type == "response.output_text.delta":
            text += ev.delta
        last = ev
    assert types[:4] == ["response.created", "response.in_progress", "response.output_item.added",
                         "response.content_part.added"], types
    assert types[-4:] == ["response.output_text.done", "response.content_part.done",
                          "response.output_item.done", "response.incomplete"], types
    assert text.strip() == "t0 t1 t2" and last.response.output_text.strip() == "t0 t1 t2", last

# Tools: a function_call item, plain and with the SDK's stream helper; its output goes back.
tools = [{"type": "function", "name": "get_weather", "description": "Weather of a city",
          "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}]
resp = c.responses.create(model="auto", input="Weather in Raleigh?", tools=tools)
call = [o for o in resp.output if o.type == "function_call"][0]
assert call.name == "get_weather" and json.loads(call.arguments) == {"city": "Raleigh", "n": 1}, resp
assert resp.status == "completed", resp
with c.responses.stream(model="small", input="Weather in Raleigh?", tools=tools,
                        tool_choice={"type": "function", "name": "get_weather"}) as s:
    for _ in s:
        pass
    final = s.get_final_response()
call2 = [o for o in final.output if o.type == "function_call"][0]
assert call2.name == "get_weather" and json.loads(call2.arguments) == {"city": "Raleigh", "n": 1}, final
resp = c.responses.create(model="small", max_output_tokens=2, tools=tools, input=[
    {"role": "user", "content": "Weather in Raleigh?"},
    {"type": "function_call", "call_id": call.call_id, "name": call.name, "arguments": call.arguments},
    {"type": "function_call_output", "call_id": call.call_id, "output": "sunny"}])
assert resp.output_text.strip() == "t0 t1", resp

# Structured output kept under auto-routing.
schema = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"],
          "additionalProperties": False}
c.responses.create(model="auto", input="The capital of NC as JSON", max_output_tokens=2,
                   text={"format": {"type": "json_schema", "name": "capital", "schema": schema, "strict": True}})

# A backend that serves /v1/responses gets the request as sent (stored responses included).
r = c.responses.with_raw_response.create(model="big", input="hi", max_output_tokens=2,
                                         previous_response_id="resp_prev1")
assert r.headers["x-sim-backend"] == "sim-b", r.headers
resp = r.parse()
assert resp.id.startswith("resp_sim") and resp.previous_response_id == "resp_prev1", resp
assert resp.output_text.strip() == "t0 t1", resp
types = [ev.type for ev in c.responses.create(model="big", input="hi", max_output_tokens=2, stream=True)]
assert types[-1] == "response.completed", types

# What cannot be translated is refused clearly.
try:
    c.responses.create(model="auto", input="hi", previous_response_id="resp_prev1")
    raise SystemExit("expected BadRequestError")
except openai.BadRequestError as e:
    assert e.body["param"] == "previous_response_id", e.body
try:
    c.responses.create(model="small", input="hi", tools=[{"type": "web_search"}])
    raise SystemExit("expected BadRequestError")
except openai.BadRequestError as e:
    assert e.body["param"] == "tools", e.body
try:
    c.responses.create(model="gpt-9", input="hi")
    raise SystemExit("expected NotFoundError")
except openai.NotFoundError as e:
    assert e.body["code"] == "model_not_found", e.body
print("responses client OK")
"#;
    let out = python_client(dir.path(), "openai", script, &router.base);
    assert!(out.contains("responses client OK"), "{out}");
    let seen_a: Vec<Value> = a.requests().await;
    assert_eq!(
        seen_a[0]["messages"][0],
        json!({"role": "system", "content": "Be brief."})
    );
    let structured = seen_a
        .iter()
        .find(|r| r.get("response_format").is_some())
        .expect("the json_schema format reached the backend");
    assert_eq!(structured["model"], "small");
    assert_eq!(
        structured["response_format"]["json_schema"]["name"],
        "capital"
    );
    assert_eq!(structured["response_format"]["json_schema"]["strict"], true);
    let seen_b: Vec<Value> = b.requests().await;
    assert_eq!(seen_b[0]["model"], "big");
    assert_eq!(seen_b[0]["input"], "hi");
    assert_eq!(seen_b[0]["previous_response_id"], "resp_prev1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traces_reach_an_otlp_collector_over_grpc_and_http_under_the_clients_traceparent() {
    let rx = e2e::otlp::Receiver::start().await;
    let (backend, seen) = recording_backend("traceparent").await;
    let c = reqwest::Client::new();
    for (i, (protocol, endpoint)) in [
        ("grpc", rx.grpc.clone()),
        ("http/protobuf", rx.http.clone()),
    ]
    .into_iter()
    .enumerate()
    {
        let dir = tempfile::tempdir().unwrap();
        let yaml = config_yaml(None, None, &[&backend], &backend, "");
        let router = Router::start(
            dir.path(),
            &yaml,
            &[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
                ("OTEL_EXPORTER_OTLP_PROTOCOL", protocol),
                ("OTEL_SERVICE_NAME", "router-test"),
                ("OTEL_BSP_SCHEDULE_DELAY", "100"),
            ],
        );
        let trace_id = format!("4bf92f3577b34da6a3ce929d0e0e47{i:02x}");
        let parent = "00f067aa0ba902b7";
        let secret = "my secret prompt 12345";
        let resp = c
            .post(format!("{}/v1/chat/completions", router.base))
            .header("traceparent", format!("00-{trace_id}-{parent}-01"))
            .json(&chat("auto", secret))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "{protocol}");
        let spans = rx.wait_trace(&trace_id, 5, Duration::from_secs(15)).await;
        let by_name = |n: &str| {
            spans
                .iter()
                .find(|s| s.name == n)
                .unwrap_or_else(|| panic!("{protocol}: no {n} span in {spans:#?}"))
        };
        let root = by_name("router.request");
        assert_eq!(
            root.parent_span_id, parent,
            "{protocol}: the client's span is the parent"
        );
        assert_eq!(root.service, "router-test");
        assert_eq!(root.attr("semroute.model"), Some("small"), "{root:?}");
        assert_eq!(root.attr("http.response.status_code"), Some("200"));
        let decide = by_name("decide");
        assert_eq!(decide.parent_span_id, root.span_id);
        assert!(
            decide.attr("semroute.decision_source").is_some(),
            "{decide:?}"
        );
        assert!(decide.attr("semroute.cache_layer").is_some(), "{decide:?}");
        let attempt = by_name("upstream.attempt");
        assert_eq!(attempt.attr("semroute.outcome"), Some("ok"));
        for n in ["parse", "relay"] {
            by_name(n);
        }
        for s in &spans {
            for (k, v) in &s.attributes {
                assert!(
                    !v.contains("secret prompt"),
                    "prompt text in {}.{k}",
                    s.name
                );
            }
        }
        // The backend was called under the attempt's span.
        let tp = seen.lock().unwrap().last().cloned().unwrap_or_default();
        assert_eq!(
            tp,
            format!("00-{trace_id}-{}-01", attempt.span_id),
            "{protocol}: traceparent sent to the backend"
        );
        drop(router);
    }
    // Without the OTLP settings nothing is exported and no traceparent is made up.
    let dir = tempfile::tempdir().unwrap();
    let yaml = config_yaml(None, None, &[&backend], &backend, "");
    let router = Router::start(dir.path(), &yaml, &[]);
    let before = rx.spans().len();
    let resp = c
        .post(format!("{}/v1/chat/completions", router.base))
        .json(&chat("small", "hi"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(rx.spans().len(), before);
    assert_eq!(seen.lock().unwrap().last().map(String::as_str), Some(""));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn degrades_when_redis_classifier_or_a_backend_fails() {
    let dir = tempfile::tempdir().unwrap();
    let mut cls = Classifier::start(dir.path());
    let mut redis = Redis::start(dir.path());
    let mut be = Backends::start().await;
    let yaml = config_yaml(
        Some(cls.grpc_port),
        Some(&redis.url()),
        &be.small(),
        &be.c.url,
        "",
    );
    let router = Router::start(dir.path(), &yaml, &[]);
    let c = client();
    let url = format!("{}/v1/chat/completions", router.base);

    // Redis stopped: requests keep flowing, still classified.
    redis.proc.kill();
    let math = example("domain", "math", 0);
    let t = Instant::now();
    let (s, h, _) = post(&c, &url, &chat("auto", &math)).await;
    assert_eq!(s, 200);
    assert_eq!(header(&h, "x-vsr-selected-model"), "big");
    assert!(t.elapsed() < Duration::from_secs(2));
    let m = router.metrics();
    assert!(
        metric_sum(
            &m,
            "router_cache_requests_total",
            &["layer=\"redis\"", "result=\"error\""]
        ) >= 1,
        "{m}"
    );

    // Redis stalled (DEBUG SLEEP): skipped within its budget, requests keep flowing.
    let stalled = Redis::start(dir.path());
    let stall_port = stalled.port;
    let yaml_stalled = yaml.replace(&format!(":{}\"", redis.port), &format!(":{stall_port}\""));
    let dir_s = tempfile::tempdir().unwrap();
    let router_s = Router::start(dir_s.path(), &yaml_stalled, &[]);
    let url_s = format!("{}/v1/chat/completions", router_s.base);
    wait_until("router connected to redis", Duration::from_secs(5), || {
        metric_sum(&router_s.metrics(), "router_redis_connected", &[]) == 1
    });
    let sleeper = std::thread::spawn(move || redis_command(stall_port, &["DEBUG", "SLEEP", "3"]));
    tokio::time::sleep(Duration::from_millis(200)).await;
    let t = Instant::now();
    for i in 0..3 {
        let (s, h, _) = post(&c, &url_s, &chat("auto", &format!("{math} stalled #{i}"))).await;
        assert_eq!(s, 200);
        assert_eq!(header(&h, "x-vsr-selected-model"), "big");
    }
    assert!(
        t.elapsed() < Duration::from_millis(2000),
        "stalled Redis held requests: {:?}",
        t.elapsed()
    );
    assert!(sleeper.join().unwrap().is_some(), "DEBUG SLEEP ran");
    drop(router_s);
    drop(stalled);

    // Redis back on the same port: the pool reconnects and decisions are stored again.
    let port = redis.port;
    drop(redis);
    let redis = Redis::start_on(dir.path(), port);
    let fresh = example("domain", "law", 1);
    let deadline = Instant::now() + Duration::from_secs(10);
    for i in 0.. {
        let (s, _, _) = post(&c, &url, &chat("auto", &format!("{fresh} #{i}"))).await;
        assert_eq!(s, 200);
        if !redis.keys("vsr:decision:*").is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "redis pool did not reconnect");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Classifier killed: still 200, on the default model, counted.
    cls.proc.kill();
    for i in 0..5 {
        let (s, h, _) = post(&c, &url, &chat("auto", &format!("{math} #{i}"))).await;
        assert_eq!(s, 200);
        assert_eq!(header(&h, "x-vsr-selected-model"), "small");
        assert_eq!(header(&h, "x-vsr-decision-source"), "fail_open");
    }
    let m = router.metrics();
    assert!(metric_sum(&m, "router_fail_open_total", &[]) >= 5, "{m}");
    assert!(
        metric_sum(&m, "router_fail_open_total", &["reason=\"circuit_open\""]) >= 1,
        "{m}"
    );
    assert_eq!(
        http_status(router.port, "/readyz"),
        Some(200),
        "a dead classifier keeps the router ready"
    );

    // One backend of `small` down: every request served by the other.
    be.a.stop().await;
    for _ in 0..10 {
        let (s, h, _) = post(&c, &url, &chat("small", "hello")).await;
        assert_eq!(s, 200);
        assert_eq!(header(&h, "x-sim-backend"), "sim-b");
    }
}

/// The classifier away (nothing listens at its address): the router's own fast tier (the
/// shipped static model and heads) classifies every `auto` request instead of failing open,
/// says so in the headers and metrics, keeps none of those decisions in the cache, and a
/// config reload that turns it off brings fail-open back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_routers_fast_tier_classifies_while_the_classifier_is_away() {
    let dir = tempfile::tempdir().unwrap();
    let be = Backends::start().await;
    let dead = free_port();
    let fast = format!(
        "fast_tier:\n  model: \"{}\"\n  heads: \"{}\"\n",
        repo().join("models/static-minilm").display(),
        repo().join("models/heads-static").display()
    );
    let base = config_yaml(Some(dead), None, &be.small(), &be.c.url, "");
    let router = Router::start(dir.path(), &(base.clone() + &fast), &[]);
    let c = client();
    let url = format!("{}/v1/chat/completions", router.base);
    let math = "Compute the definite integral of x^2 from 0 to 3 and prove that the answer is 9.";
    for i in 0..6 {
        // The same text twice: a stand-in decision is not cached.
        let (s, h, _) = post(&c, &url, &chat("auto", math)).await;
        assert_eq!(s, 200);
        assert_eq!(
            header(&h, "x-vsr-decision-source"),
            "fast_tier",
            "request {i}"
        );
        let tier = header(&h, "x-vsr-classifier-tier");
        assert!(
            tier == "fast:router:unavailable" || tier == "fast:router:circuit_open",
            "{tier}"
        );
        assert_eq!(header(&h, "x-vsr-selected-category"), "math", "request {i}");
        assert_eq!(header(&h, "x-vsr-selected-model"), "big", "request {i}");
    }
    let (s, h, _) = post(&c, &url, &chat("auto", "hi there, how are you today?")).await;
    assert_eq!(s, 200);
    assert_eq!(header(&h, "x-vsr-decision-source"), "fast_tier");
    assert_eq!(header(&h, "x-vsr-selected-model"), "small");
    let m = router.metrics();
    assert!(
        metric_sum(&m, "router_decisions_total", &["source=\"fast_tier\""]) >= 7,
        "{m}"
    );
    assert!(metric_sum(&m, "router_fast_tier_total", &[]) >= 7, "{m}");
    assert_eq!(metric_sum(&m, "router_fail_open_total", &[]), 0, "{m}");
    assert!(
        router
            .proc
            .log_text()
            .contains("fast tier loaded in process"),
        "{}",
        router.proc.log_text()
    );

    // Turned off by a reload: the same request fails open again.
    std::fs::write(&router.config, base + "fast_tier:\n  enabled: false\n").unwrap();
    wait_until(
        "the reload takes the fast tier away",
        Duration::from_secs(10),
        || {
            let log = router.proc.log_text();
            assert!(!log.contains("new config rejected"), "{log}");
            log.contains("config reloaded")
        },
    );
    let other = "Prove that the square root of 2 is irrational, step by step.";
    let (s, h, _) = post(&c, &url, &chat("auto", other)).await;
    assert_eq!(s, 200);
    assert_eq!(header(&h, "x-vsr-decision-source"), "fail_open");
    assert_eq!(header(&h, "x-vsr-selected-model"), "small");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_and_upstream_trouble_get_openai_errors() {
    let dir = tempfile::tempdir().unwrap();
    let mut be = Backends::start().await;
    // Health checks read /v1/models, which answers in every fault mode: the faults below are of
    // completions (hung, failing) on a backend that is up. With /health (which hangs too) the
    // checker ejected the hung backend ~1.5 s after "hang", and on a loaded machine the two slow
    // requests could arrive after that and never be in flight together (a flake).
    let yaml = format!(
        "server:\n  max_body_bytes: 4096\n  max_in_flight: 2\n{}",
        config_yaml(None, None, &be.small(), &be.c.url, "")
    )
    .replace(
        "  health_interval_ms: 200\n",
        "  health_path: /v1/models\n  health_interval_ms: 200\n",
    );
    assert!(yaml.contains("health_path: /v1/models"));
    let router = Router::start(dir.path(), &yaml, &[]);
    let c = client();
    let url = format!("{}/v1/chat/completions", router.base);

    let check = |status: u16, want: u16, body: &Value, code: &str| {
        assert_eq!(status, want, "{body}");
        let e = &body["error"];
        assert!(
            e["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{body}"
        );
        assert!(e["type"].is_string() && e.get("param").is_some(), "{body}");
        assert_eq!(e["code"], code, "{body}");
    };
    let raw = |body: &'static str| {
        let c = c.clone();
        let url = url.clone();
        async move {
            let r = c
                .post(url)
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await
                .unwrap();
            let s = r.status().as_u16();
            (s, r.json::<Value>().await.unwrap())
        }
    };
    let (s, b) = raw("{not json").await;
    check(s, 400, &b, "invalid_request");
    let (s, b) = raw(r#"{"model": 5, "messages": [{"role":"user","content":"x"}]}"#).await;
    check(s, 400, &b, "invalid_request");
    assert_eq!(b["error"]["param"], "model");
    let (s, b) = raw(r#"{"model": "auto"}"#).await;
    check(s, 400, &b, "invalid_request");
    assert_eq!(b["error"]["param"], "messages");
    let (s, b) = raw(r#"{"model": "auto", "messages": []}"#).await;
    check(s, 400, &b, "invalid_request");
    let (s, b) =
        raw(r#"{"model": "auto", "stream": "yes", "messages": [{"role":"user","content":"x"}]}"#)
            .await;
    check(s, 400, &b, "invalid_request");
    let (s, _, b) = post(&c, &url, &chat("gpt-9", "x")).await;
    check(s, 404, &b, "model_not_found");
    let (s, _, b) = post(&c, &url, &chat("auto", &"x".repeat(5000))).await;
    check(s, 413, &b, "payload_too_large");
    let r = c
        .get(format!("{}/v2/nothing", router.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);

    // Backend hangs: two requests fill max_in_flight (429 for a third), then each gets 504.
    be.c.set_mode("hang").await;
    let slow = |model: &'static str| {
        let c = c.clone();
        let url = url.clone();
        {
            // Streams wait first_byte_timeout_ms for their headers (plain requests: the total).
            let mut body = chat(model, "x");
            body["stream"] = json!(true);
            tokio::spawn(async move { post(&c, &url, &body).await })
        }
    };
    let (h1, h2) = (slow("big"), slow("big"));
    wait_until("two requests in flight", Duration::from_secs(5), || {
        metric_sum(
            &router.metrics(),
            "router_upstream_in_flight",
            &["model=\"big\""],
        ) == 2
    });
    let (s, h, b) = post(&c, &url, &chat("small", "x")).await;
    check(s, 429, &b, "rate_limit_exceeded");
    assert_eq!(header(&h, "retry-after"), "1");
    for j in [h1, h2] {
        let (s, _, b) = j.await.unwrap();
        check(s, 504, &b, "upstream_timeout");
    }

    // Backends answer 503: relayed after trying every endpoint.
    be.a.set_mode("fail").await;
    be.b.set_mode("fail").await;
    let (s, _, b) = post(&c, &url, &chat("small", "x")).await;
    assert_eq!(s, 503, "{b}");
    assert!(b["error"]["message"].is_string(), "{b}");

    // Backends gone: 502, and the router turns unready once health checks see it.
    be.a.stop().await;
    be.b.stop().await;
    be.c.stop().await;
    let (s, _, b) = post(&c, &url, &chat("small", "x")).await;
    check(s, 502, &b, "upstream_error");
    wait_until("unready", Duration::from_secs(5), || {
        http_status(router.port, "/readyz") == Some(503)
    });
    assert_eq!(http_status(router.port, "/healthz"), Some(200));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn similarity_routes_catch_paraphrases_and_leave_other_prompts_alone() {
    let dir = tempfile::tempdir().unwrap();
    let cls = Classifier::start(dir.path());
    let be = Backends::start().await;
    let routes = r#"
  routes:
    - name: customer-support
      model: ds
      threshold: 0.5
      system_prompt: "You are a patient support agent."
      examples:
        - "I want a refund for my order"
        - "My package never arrived, where is it?"
        - "How do I cancel my subscription?"
        - "I was charged twice on my credit card"
        - "I need to talk to customer service about my account"
"#;
    // The demo jailbreak head is a crude few-shot centroid: keep it out of this test's way.
    let yaml = config_yaml(Some(cls.grpc_port), None, &be.small(), &be.c.url, routes)
        .replace("    threshold: 0.6\n", "    threshold: 0.999\n");
    let router = Router::start(dir.path(), &yaml, &[]);
    wait_until("routes embedded", Duration::from_secs(20), || {
        router.proc.log_text().contains("similarity routes ready")
    });
    let c = client();
    let route = |prompt: String| {
        let c = c.clone();
        let url = format!("{}/v1/route", router.base);
        async move { post(&c, &url, &chat("auto", &prompt)).await.2 }
    };
    for unseen in [
        "Can I get my money back for this purchase?",
        "My delivery is late and the parcel hasn't shown up",
        "Please help me stop my monthly membership",
    ] {
        let r = route(unseen.into()).await;
        assert_eq!(r["decision"]["route"], "customer-support", "{unseen}: {r}");
        assert_eq!(r["decision"]["model"], "ds", "{r}");
    }
    for unrelated in [
        example("domain", "math", 2),
        example("domain", "history", 0),
        example("domain", "computer science", 0),
    ] {
        let r = route(unrelated.clone()).await;
        assert!(r["decision"].get("route").is_none(), "{unrelated}: {r}");
    }
    // Through the chat endpoint: header and the route's system prompt.
    let url = format!("{}/v1/chat/completions", router.base);
    let (s, h, _) = post(
        &c,
        &url,
        &chat("auto", "Can I get my money back for this purchase?"),
    )
    .await;
    assert_eq!(s, 200);
    assert_eq!(header(&h, "x-vsr-selected-route"), "customer-support");
    assert_eq!(header(&h, "x-sim-backend"), "sim-c", "{h:?}");
    let sent = be.last_body(&be.c).await;
    assert_eq!(sent["model"], "ds");
    assert_eq!(
        sent["messages"][0]["content"],
        "You are a patient support agent."
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pii_policy_skips_or_masks_per_model() {
    let dir = tempfile::tempdir().unwrap();
    let be = Backends::start().await;
    let yaml = config_yaml(None, None, &be.small(), &be.c.url, "")
        .replace(
            "  - name: small\n",
            "  - name: small\n    pii: {deny: [US_SSN]}\n",
        )
        .replace(
            "  - name: big\n",
            "  - name: big\n    pii: {deny: [EMAIL_ADDRESS, CREDIT_CARD], action: mask}\n",
        );
    let router = Router::start(dir.path(), &yaml, &[]);
    let c = client();
    let url = format!("{}/v1/chat/completions", router.base);

    // `small` may not see an SSN and nothing else may take it: refused, naming the type only.
    let (s, _, b) = post(
        &c,
        &url,
        &chat("small", "my ssn is 123-45-6789, file my taxes"),
    )
    .await;
    assert_eq!(s, 400, "{b}");
    assert_eq!(b["error"]["code"], "pii_not_allowed");
    let msg = b["error"]["message"].as_str().unwrap();
    assert!(msg.contains("US_SSN") && !msg.contains("6789"), "{msg}");

    // `big` gets e-mail and card numbers masked; other text untouched.
    let mut req = chat(
        "big",
        "write to jane@example.com about card 4111 1111 1111 1111 today",
    );
    req["messages"].as_array_mut().unwrap().insert(
        0,
        json!({"role": "system", "content": "cc ops@example.org"}),
    );
    let (s, h, _) = post(&c, &url, &req).await;
    assert_eq!(s, 200);
    assert_eq!(header(&h, "x-vsr-pii"), "EMAIL_ADDRESS,CREDIT_CARD");
    assert_eq!(header(&h, "x-vsr-pii-masked"), "true");
    let sent = be.last_body(&be.c).await;
    assert_eq!(sent["messages"][0]["content"], "cc [EMAIL_ADDRESS]");
    assert_eq!(
        sent["messages"][1]["content"],
        "write to [EMAIL_ADDRESS] about card [CREDIT_CARD] today"
    );

    // No PII: nothing changes.
    let (s, h, _) = post(
        &c,
        &url,
        &chat("small", "What is the capital of North Carolina?"),
    )
    .await;
    assert_eq!(s, 200);
    assert_eq!(header(&h, "x-vsr-pii"), "");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pii_policy_uses_the_classifiers_entities_for_names_and_places() {
    let dir = tempfile::tempdir().unwrap();
    let mut cls = Classifier::start_with(dir.path(), &["pii"]);
    let be = Backends::start().await;
    let yaml = config_yaml(Some(cls.grpc_port), None, &be.small(), &be.c.url, "")
        .replace(
            "  - name: small\n",
            "  - name: small\n    pii: {deny: [PERSON]}\n",
        )
        .replace(
            "  - name: big\n",
            "  - name: big\n    pii: {deny: [PERSON, EMAIL_ADDRESS], action: mask}\n",
        );
    let router = Router::start(dir.path(), &yaml, &[]);
    router.wait_classifier_known();
    let c = client();
    let url = format!("{}/v1/chat/completions", router.base);

    // A name only the model can find: `big` gets it masked (the pattern-found e-mail too).
    let prompt = "Please send the signed contract to Maria Gonzalez at maria.g@example.com today.";
    let (s, h, b) = post(&c, &url, &chat("big", prompt)).await;
    assert_eq!(s, 200, "{b}");
    assert!(header(&h, "x-vsr-pii").contains("PERSON"), "{h:?}");
    assert_eq!(header(&h, "x-vsr-pii-masked"), "true");
    let sent = be.last_body(&be.c).await;
    let content = sent["messages"][0]["content"].as_str().unwrap().to_string();
    assert!(
        content.contains("[PERSON]") && content.contains("[EMAIL_ADDRESS]"),
        "{content}"
    );
    assert!(
        !content.contains("Gonzalez") && !content.contains("maria.g@"),
        "{content}"
    );
    assert!(
        content.starts_with("Please send the signed contract to "),
        "{content}"
    );

    // `small` may not see names: refused, naming the type only.
    let (s, _, b) = post(
        &c,
        &url,
        &chat("small", "Write a birthday note for John Miller."),
    )
    .await;
    assert_eq!(s, 400, "{b}");
    assert_eq!(b["error"]["code"], "pii_not_allowed");
    assert!(!b.to_string().contains("Miller"), "{b}");

    // No names: served as is.
    let (s, h, _) = post(
        &c,
        &url,
        &chat("small", "Explain how photosynthesis works."),
    )
    .await;
    assert_eq!(s, 200);
    assert_eq!(header(&h, "x-vsr-pii"), "");

    // Classifier gone: patterns still apply (the e-mail is masked), counted as a PII-task error.
    cls.proc.kill();
    let (s, _, _) = post(&c, &url, &chat("big", "reply to ops@example.org please")).await;
    assert_eq!(s, 200);
    let sent = be.last_body(&be.c).await;
    assert_eq!(
        sent["messages"][0]["content"],
        "reply to [EMAIL_ADDRESS] please"
    );
    assert!(metric_sum(&router.metrics(), "router_pii_model_errors_total", &[]) >= 1);
}

/// compose's optional collector: with SEMROUTE_OTLP_OPTIONAL a collector name that does not
/// resolve at start means tracing off (said once), the router serving; without it, tracing on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_optional_collector_that_does_not_resolve_turns_tracing_off() {
    let dir = tempfile::tempdir().unwrap();
    let sim = Sim::start("sim", Sim::fast()).await;
    let yaml = config_yaml(None, None, &[&sim.url], &sim.url, "");
    let endpoint = (
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "http://no-such-collector.invalid:4317",
    );
    let router = Router::start(
        dir.path(),
        &yaml,
        &[endpoint, ("SEMROUTE_OTLP_OPTIONAL", "true")],
    );
    let (s, _, _) = post(
        &client(),
        &format!("{}/v1/chat/completions", router.base),
        &chat("small", "hi"),
    )
    .await;
    assert_eq!(s, 200);
    let log = router.proc.log_text();
    assert!(
        log.contains("tracing off: the OTLP collector no-such-collector.invalid does not resolve"),
        "{log}"
    );
    assert!(!log.contains("OpenTelemetry traces on"), "{log}");
    drop(router);
    let other = tempfile::tempdir().unwrap();
    let router = Router::start(other.path(), &yaml, &[endpoint]);
    assert!(router.proc.log_text().contains("OpenTelemetry traces on"));
}

/// classifier-svc's spans join the router's trace: its Classify span under the router's call,
/// the queue wait and the batch (with its size) under that; no text in any of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn classifier_spans_join_the_routers_trace() {
    let rx = e2e::otlp::Receiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let otel = |service: &'static str| {
        [
            ("OTEL_EXPORTER_OTLP_ENDPOINT", rx.grpc.clone()),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc".to_string()),
            ("OTEL_SERVICE_NAME", service.to_string()),
            ("OTEL_BSP_SCHEDULE_DELAY", "100".to_string()),
        ]
    };
    let env = otel("classifier-test");
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let cls = Classifier::start_env(dir.path(), &env);
    let sim = Sim::start("sim", Sim::fast()).await;
    // The demo jailbreak head is a crude few-shot centroid: keep it out of this test's way.
    let yaml = config_yaml(Some(cls.grpc_port), None, &[&sim.url], &sim.url, "")
        .replace("    threshold: 0.6\n", "    threshold: 0.999\n");
    let renv = otel("router-test");
    let renv: Vec<(&str, &str)> = renv.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let router = Router::start(dir.path(), &yaml, &renv);
    router.wait_classifier_known();
    let trace_id = "5bf92f3577b34da6a3ce929d0e0e4736";
    let secret = "What is the integral of x squared from 0 to 98765?";
    let resp = reqwest::Client::new()
        .post(format!("{}/v1/chat/completions", router.base))
        .header("traceparent", format!("00-{trace_id}-00f067aa0ba902b7-01"))
        .json(&chat("auto", secret))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    // router: request, parse, decide, attempt, relay; classifier: rpc, queue, batch.
    let spans = rx.wait_trace(trace_id, 8, Duration::from_secs(15)).await;
    let find = |service: &str, name: &str| {
        spans
            .iter()
            .find(|s| s.service == service && s.name == name)
            .unwrap_or_else(|| panic!("no {service} {name} span in {spans:#?}"))
    };
    let rpc = find("classifier-test", "classifier.Classify");
    let router_ids: Vec<&str> = spans
        .iter()
        .filter(|s| s.service == "router-test")
        .map(|s| s.span_id.as_str())
        .collect();
    assert!(
        router_ids.contains(&rpc.parent_span_id.as_str()),
        "the Classify span's parent is a router span: {spans:#?}"
    );
    let batch = find("classifier-test", "classifier.batch");
    let queue = find("classifier-test", "classifier.queue");
    assert_eq!(batch.parent_span_id, rpc.span_id);
    assert_eq!(queue.parent_span_id, rpc.span_id);
    assert!(
        batch
            .attr("semroute.batch_size")
            .is_some_and(|n| n.parse::<u64>().unwrap() >= 1),
        "{batch:?}"
    );
    for s in &spans {
        for (k, v) in &s.attributes {
            assert!(
                !v.contains("secret prompt"),
                "prompt text in {}.{k}",
                s.name
            );
        }
    }
}

/// Selection among models by predicted quality and price, end to end: `semroute-train profile`
/// builds a profile from scored prompts (the large model right on maths, both right on
/// chit-chat), classifier-svc serves it beside the heads (`CLASSIFIER_PROFILES`), and the
/// router's `routing.selection` chooses by it; the cost weight moves the choice per request
/// (`x-vsr-cost-weight`), /v1/route explains it, and a bad weight is a 400.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn selection_by_profiles_chooses_by_quality_and_price() {
    let dir = tempfile::tempdir().unwrap();
    let be = Backends::start().await;
    let math = |i: usize| {
        format!(
            "Compute the definite integral of x^{} from 0 to {} and prove each step.",
            i % 5 + 2,
            i + 1
        )
    };
    let chat_text = |i: usize| format!("Hi there! How is your day going, friend number {i}?");
    let mut scored = String::new();
    for i in 0..24 {
        scored += &json!({"text": math(i), "scores": {"small": 0, "big": 1}}).to_string();
        scored += "\n";
        scored += &json!({"text": chat_text(i), "scores": {"small": 1, "big": 1}}).to_string();
        scored += "\n";
    }
    let data = dir.path().join("scored.jsonl");
    std::fs::write(&data, scored).unwrap();
    let selection = "  selection:\n    task: quality\n    cost_weight: 0.2\n";
    let models = |small: &str, big: &str| {
        format!(
            "models:\n  - name: small\n    endpoints: [\"{small}\"]\n    pricing: {{input_per_million: 0.1, output_per_million: 0.2}}\n  - name: big\n    endpoints: [\"{big}\"]\n    pricing: {{input_per_million: 1.0, output_per_million: 4.0}}\n"
        )
    };
    let train_cfg = dir.path().join("select.yaml");
    std::fs::write(
        &train_cfg,
        format!(
            "{}routing:\n  default_model: small\n{selection}",
            models("http://127.0.0.1:9", "http://127.0.0.1:9")
        ),
    )
    .unwrap();
    let profile = dir.path().join("profile");
    let out = std::process::Command::new(bin("semroute-train"))
        .args(["profile", "--k", "5", "--shrinkage", "1", "--encoder"])
        .arg(minilm())
        .arg("--data")
        .arg(&data)
        .arg("--config")
        .arg(&train_cfg)
        .arg("--cache-dir")
        .arg(dir.path().join("cache"))
        .arg("--out")
        .arg(&profile)
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{report}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        report.contains("| oracle (cheapest right model) |"),
        "{report}"
    );
    assert!(profile.join("head.json").is_file() && profile.join("CARD.md").is_file());

    let profile_dir = profile.display().to_string();
    let cls = Classifier::start_env(dir.path(), &[("CLASSIFIER_PROFILES", &profile_dir)]);
    let yaml = config_yaml(Some(cls.grpc_port), None, &be.small(), &be.c.url, "");
    // The selection decides where no category rule does: no category is confident here.
    let (head, _) = yaml.split_once("models:\n").unwrap();
    let yaml = format!(
        "{head}{}routing:\n  default_model: small\n  confidence_threshold: 1.0\n  jailbreak: {{enabled: false}}\n{selection}",
        models(be.a.url.as_str(), be.c.url.as_str())
    );
    let router = Router::start(dir.path(), &yaml, &[]);
    router.wait_classifier_known();
    let c = client();
    let route = format!("{}/v1/route", router.base);
    let ask = |text: String, weight: Option<&'static str>| {
        let mut rq = c.post(&route).json(&chat("auto", &text));
        if let Some(w) = weight {
            rq = rq.header("x-vsr-cost-weight", w);
        }
        rq.send()
    };
    let r = ask(math(3), None).await.unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    let sel = &v["decision"]["selection"];
    assert_eq!(v["decision"]["model"], "big", "{v}");
    assert_eq!(sel["weight_from"], "config", "{v}");
    let cands = sel["candidates"].as_array().unwrap();
    assert_eq!(cands.len(), 2, "{v}");
    let q = |m: &str| {
        cands.iter().find(|c| c["model"] == m).unwrap()["quality"]
            .as_f64()
            .unwrap()
    };
    assert!(q("big") > q("small") + 0.3, "{v}");
    assert!(
        sel["why"]
            .as_str()
            .unwrap()
            .contains("highest expected quality"),
        "{v}"
    );
    // Chit-chat: both expected right, the cheaper one wins at the config's weight.
    let v: Value = ask(chat_text(30), None)
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["decision"]["model"], "small", "{v}");
    // A request that weighs price heavily: maths goes to the small model, from the cache.
    let v: Value = ask(math(3), Some("5")).await.unwrap().json().await.unwrap();
    assert_eq!(v["decision"]["model"], "small", "{v}");
    assert_eq!(v["decision"]["selection"]["weight_from"], "header", "{v}");
    assert_eq!(v["cache_hit"], true, "{v}");
    let r = ask(math(3), Some("cheap")).await.unwrap();
    assert_eq!(r.status(), 400);
    let v: Value = r.json().await.unwrap();
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("x-vsr-cost-weight"),
        "{v}"
    );
    // Forwarded where the selection said.
    let url = format!("{}/v1/chat/completions", router.base);
    let (s, h, _) = post(&c, &url, &chat("auto", &math(4))).await;
    assert_eq!(s, 200);
    assert_eq!(header(&h, "x-vsr-selected-model"), "big");
    drop(cls);
}
