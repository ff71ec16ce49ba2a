//! Sessions end to end: Claude Code-, Codex- and chat-with-tools-shaped sessions over two
//! router replicas sharing Redis (the real classifier with the demo heads, simulated backends).
//! The decision follows the user's task, not the client's boilerplate; tool-loop turns are not
//! classified and never switch the model, whichever replica they reach; an acknowledgement keeps
//! the model with reasoning off; a session's turns stay on one endpoint of its model.

use std::time::Duration;

use e2e::*;
use serde_json::{json, Value};

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

/// Text that the demo heads would route to `small` (history): what a session must NOT be decided
/// by when a client wraps it around the user's task.
fn boilerplate() -> String {
    (0..5)
        .map(|i| example("domain", "history", i))
        .collect::<Vec<_>>()
        .join(" ")
}

/// The first of `candidates` that `/v1/route` sends to `model` on its own (a session's first
/// turn): the demo heads are centroids of a few examples, so the test asks rather than guesses.
async fn routed_to(
    c: &reqwest::Client,
    router: &Router,
    model: &str,
    candidates: &[String],
) -> String {
    routed_among(c, router, &[model], candidates).await.0
}

/// The first of `candidates` routed to one of `models`, and that model.
async fn routed_among(
    c: &reqwest::Client,
    router: &Router,
    models: &[&str],
    candidates: &[String],
) -> (String, String) {
    for t in candidates {
        let (s, _, r) = post(c, &format!("{}/v1/route", router.base), &chat("auto", t)).await;
        assert_eq!(s, 200);
        let m = r["decision"]["model"].as_str().unwrap_or("");
        if models.contains(&m) && r["decision"]["blocked"] != true {
            return (t.clone(), m.to_string());
        }
    }
    panic!("none of {candidates:?} is routed to one of {models:?}");
}

/// Maths and reasoning examples: candidates for a task that needs the `big` model.
fn hard_candidates() -> Vec<String> {
    (0..5)
        .map(|i| example("domain", "math", i))
        .chain((0..6).map(|i| example("complexity", "reasoning", i)))
        .collect()
}

struct Stack {
    cls: Classifier,
    redis: Redis,
    routers: [Router; 2],
    sims: [Sim; 3],
    _dirs: [tempfile::TempDir; 3],
}

impl Stack {
    async fn start() -> Self {
        let dirs = [(); 3].map(|_| tempfile::tempdir().unwrap());
        let cls = Classifier::start(dirs[0].path());
        let redis = Redis::start(dirs[0].path());
        let sims = [
            Sim::start("sim-a", Sim::fast()).await,
            Sim::start("sim-b", Sim::fast()).await,
            Sim::start("sim-c", Sim::fast()).await,
        ];
        // The demo guard (centroids of five examples) flags some maths questions: flagged, not
        // refused, so that what is tested here is the session.
        let yaml = config_yaml(
            Some(cls.grpc_port),
            Some(&redis.url()),
            &[&sims[0].url, &sims[1].url],
            &sims[2].url,
            "",
        )
        .replace("    action: block\n", "    action: flag\n")
            // Only `small` is priced in the test config: the tiers say which model is stronger.
            + "session:\n  tiers: [small, ds, oss, big]\n";
        let routers = [
            Router::start(dirs[1].path(), &yaml, &[]),
            Router::start(dirs[2].path(), &yaml, &[]),
        ];
        for r in &routers {
            r.wait_classifier_known();
            wait_until("replica connected to redis", Duration::from_secs(5), || {
                metric_sum(&r.metrics(), "router_redis_connected", &[]) == 1
            });
        }
        Self {
            cls,
            redis,
            routers,
            sims,
            _dirs: dirs,
        }
    }

    /// Turn `i` goes to replica `i % 2`.
    async fn send(
        &self,
        c: &reqwest::Client,
        i: usize,
        path: &str,
        body: &Value,
    ) -> reqwest::header::HeaderMap {
        let url = format!("{}{path}", self.routers[i % 2].base);
        let (s, h, b) = post(c, &url, body).await;
        assert_eq!(s, 200, "turn {i}: {b}");
        h
    }
}

fn turn(h: &reqwest::header::HeaderMap) -> (String, String, String, String, String) {
    (
        header(h, "x-vsr-selected-model").to_string(),
        header(h, "x-vsr-session-action").to_string(),
        header(h, "x-vsr-decision-source").to_string(),
        header(h, "x-vsr-selected-reasoning").to_string(),
        header(h, "x-vsr-session").to_string(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_and_chat_sessions_follow_the_task_and_keep_one_model_across_replicas() {
    let st = Stack::start().await;
    let c = client();
    let hard = hard_candidates();
    let task = routed_to(&c, &st.routers[0], "big", &hard).await;
    // The boilerplate alone would go to `small`: were it classified with the task, the
    // decisions below could not all follow the task.
    routed_to(&c, &st.routers[0], "small", &[boilerplate()]).await;
    let reminder = format!("<system-reminder>\n{}\n</system-reminder>", boilerplate());

    // --- Claude Code over /v1/messages: the task with a reminder block, tool loops, thanks.
    let cc = |messages: Vec<Value>| {
        json!({"model": "auto", "max_tokens": 8,
               "metadata": {"user_id": "user_1_account_2_session_3"},
               "system": [{"type": "text", "text": "You are Claude Code, Anthropic's official CLI for Claude."}],
               "tools": [{"name": "Bash", "description": "run", "input_schema": {"type": "object"}},
                         {"name": "Read", "description": "read", "input_schema": {"type": "object"}}],
               "messages": messages})
    };
    let mut msgs = vec![json!({"role": "user", "content": [
        {"type": "text", "text": reminder}, {"type": "text", "text": task}]})];
    let h = st.send(&c, 0, "/v1/messages", &cc(msgs.clone())).await;
    let (model, action, _, reasoning, sid) = turn(&h);
    assert_eq!((model.as_str(), action.as_str()), ("big", "started"));
    assert_eq!(reasoning, "on");
    assert_eq!(sid.len(), 16);
    let calls = st.cls.classify_calls();
    for i in 1..=3 {
        msgs.push(json!({"role": "assistant", "content": [
            {"type": "tool_use", "id": format!("toolu_{i}"), "name": "Bash", "input": {"cmd": "ls"}}]}));
        msgs.push(json!({"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": format!("toolu_{i}"), "content": boilerplate()},
            {"type": "text", "text": reminder}]}));
        let h = st.send(&c, i, "/v1/messages", &cc(msgs.clone())).await;
        let (model, action, source, reasoning, id) = turn(&h);
        assert_eq!(
            (model.as_str(), action.as_str(), source.as_str()),
            ("big", "tool_loop", "session"),
            "tool turn {i}"
        );
        assert_eq!((reasoning.as_str(), id.as_str()), ("on", sid.as_str()));
    }
    assert_eq!(
        st.cls.classify_calls(),
        calls,
        "tool-loop turns are not classified"
    );
    msgs.push(json!({"role": "assistant", "content": [{"type": "text", "text": "Done."}]}));
    msgs.push(json!({"role": "user", "content": "thanks"}));
    let h = st.send(&c, 4, "/v1/messages", &cc(msgs.clone())).await;
    let (model, action, _, reasoning, _) = turn(&h);
    assert_eq!(
        (model.as_str(), action.as_str(), reasoning.as_str()),
        ("big", "light", "off")
    );
    // A new, lighter task: classified, the session's model kept (no step-down configured).
    msgs.push(
        json!({"role": "assistant", "content": [{"type": "text", "text": "You're welcome."}]}),
    );
    msgs.push(json!({"role": "user", "content": example("domain", "history", 1)}));
    let h = st.send(&c, 5, "/v1/messages", &cc(msgs.clone())).await;
    let (model, action, _, _, id) = turn(&h);
    assert_eq!((model.as_str(), action.as_str()), ("big", "kept"));
    assert_eq!(id, sid);
    // The state is in Redis, shared, with a TTL and no text.
    let key = format!("vsr:session:{sid}");
    let v = st.redis.command(&["GET", &key]).unwrap().concat();
    assert!(v.contains("\"model\":\"big\""), "{v}");
    assert!(!v.contains("emperor") && !v.contains("derivative"), "{v}");
    let ttl: i64 = st.redis.command(&["TTL", &key]).unwrap()[0]
        .parse()
        .unwrap();
    assert!(ttl > 0 && ttl <= 3600, "{ttl}");

    // --- Codex over /v1/responses: AGENTS.md and environment items around the task.
    let codex = |extra: Vec<Value>| {
        let item = |role: &str, text: &str| json!({"type": "message", "role": role, "content": [{"type": "input_text", "text": text}]});
        let mut input = vec![
            item("developer", &boilerplate()),
            item("user", &format!("# AGENTS.md instructions for /repo\n\n<INSTRUCTIONS>\n{}\n</INSTRUCTIONS>", boilerplate())),
            item("user", &format!("<environment_context>\n  <cwd>/repo</cwd>\n  <note>{}</note>\n</environment_context>", boilerplate())),
            item("user", &task),
        ];
        input.extend(extra);
        json!({"model": "auto", "instructions": "You are Codex.", "input": input, "store": false,
               "max_output_tokens": 8, "prompt_cache_key": "codex-conversation-1",
               "tools": [{"type": "function", "name": "shell", "parameters": {"type": "object"}}]})
    };
    let h = st.send(&c, 0, "/v1/responses", &codex(vec![])).await;
    let (model, action, _, _, cid) = turn(&h);
    assert_eq!((model.as_str(), action.as_str()), ("big", "started"));
    assert_ne!(cid, sid);
    let mut extra = Vec::new();
    for i in 1..=3 {
        extra.push(json!({"type": "function_call", "name": "shell", "arguments": "{}", "call_id": format!("call_{i}")}));
        extra.push(json!({"type": "function_call_output", "call_id": format!("call_{i}"), "output": boilerplate()}));
        let h = st.send(&c, i, "/v1/responses", &codex(extra.clone())).await;
        let (model, action, _, _, id) = turn(&h);
        assert_eq!(
            (model.as_str(), action.as_str(), id.as_str()),
            ("big", "tool_loop", cid.as_str()),
            "codex turn {i}"
        );
    }

    // --- Chat with tools: the task, tool calls and results, then "ok".
    let mut chat_msgs = vec![
        json!({"role": "system", "content": "You are an agent with tools."}),
        json!({"role": "user", "content": task.clone()}),
    ];
    let tools = json!([{"type": "function", "function": {"name": "calc", "parameters": {"type": "object"}}}]);
    let body =
        |m: &Vec<Value>| json!({"model": "auto", "messages": m, "tools": tools, "max_tokens": 8});
    let h = st
        .send(&c, 0, "/v1/chat/completions", &body(&chat_msgs))
        .await;
    let (first, _, _, _, tid) = turn(&h);
    assert_eq!(first, "big");
    for i in 1..=2 {
        chat_msgs.push(json!({"role": "assistant", "content": null, "tool_calls": [
            {"id": format!("c{i}"), "type": "function", "function": {"name": "calc", "arguments": "{}"}}]}));
        chat_msgs.push(
            json!({"role": "tool", "tool_call_id": format!("c{i}"), "content": boilerplate()}),
        );
        let h = st
            .send(&c, i, "/v1/chat/completions", &body(&chat_msgs))
            .await;
        let (model, action, _, _, id) = turn(&h);
        assert_eq!(
            (model.as_str(), action.as_str(), id.as_str()),
            ("big", "tool_loop", tid.as_str())
        );
    }
    chat_msgs.push(json!({"role": "assistant", "content": "42"}));
    chat_msgs.push(json!({"role": "user", "content": "ok"}));
    let h = st
        .send(&c, 3, "/v1/chat/completions", &body(&chat_msgs))
        .await;
    let (model, action, _, reasoning, _) = turn(&h);
    assert_eq!(
        (model.as_str(), action.as_str(), reasoning.as_str()),
        ("big", "light", "off")
    );

    // Switches are counted by action: none of the turns above switched.
    let switched: u64 = st
        .routers
        .iter()
        .map(|r| {
            let m = r.metrics();
            metric_sum(&m, "router_session_turns_total", &["action=\"escalated\""])
                + metric_sum(
                    &m,
                    "router_session_turns_total",
                    &["action=\"stepped_down\""],
                )
        })
        .sum();
    assert_eq!(switched, 0);
    let tool_loops: u64 = st
        .routers
        .iter()
        .map(|r| {
            metric_sum(
                &r.metrics(),
                "router_session_turns_total",
                &["action=\"tool_loop\""],
            )
        })
        .sum();
    assert_eq!(tool_loops, 8);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_stays_on_one_endpoint_and_escalates_when_its_task_needs_it() {
    let st = Stack::start().await;
    let c = client();
    // Long enough to stand alone (a shorter turn is classified after the earlier ones).
    let short = hard_candidates();
    let hard: Vec<String> = short
        .iter()
        .zip(short.iter().skip(1))
        .map(|(a, b)| format!("{a} Then: {b}"))
        .filter(|t| t.split_whitespace().count() >= 16)
        .collect();
    let (task, stronger) = routed_among(&c, &st.routers[0], &["big", "ds", "oss"], &hard).await;
    // A chat on `small` (two endpoints): every turn, on either replica, on the same endpoint.
    let mut msgs = vec![json!({"role": "user", "content": example("domain", "history", 0)})];
    let mut backends = std::collections::HashSet::new();
    for i in 0..6 {
        let url = format!("{}/v1/chat/completions", st.routers[i % 2].base);
        let (s, h, _) = post(
            &c,
            &url,
            &json!({"model": "auto", "messages": msgs, "max_tokens": 4}),
        )
        .await;
        assert_eq!(s, 200);
        assert_eq!(header(&h, "x-vsr-selected-model"), "small", "turn {i}");
        backends.insert(header(&h, "x-sim-backend").to_string());
        msgs.push(json!({"role": "assistant", "content": "An answer."}));
        msgs.push(json!({"role": "user", "content": example("domain", "history", 1 + i % 3)}));
    }
    assert_eq!(
        backends.len(),
        1,
        "one endpoint for the session: {backends:?}"
    );
    // Sessions spread: many sessions use both endpoints.
    let mut spread = std::collections::HashSet::new();
    for i in 0..24 {
        let h = c
            .post(format!("{}/v1/chat/completions", st.routers[i % 2].base))
            .header("x-session-id", format!("s-{i}"))
            .json(&json!({"model": "auto", "messages": [{"role": "user", "content": example("domain", "history", 0)}],
                          "max_tokens": 2}))
            .send()
            .await
            .unwrap();
        assert_eq!(header(h.headers(), "x-vsr-selected-model"), "small");
        spread.insert(header(h.headers(), "x-sim-backend").to_string());
    }
    assert_eq!(spread.len(), 2, "sessions spread over both endpoints");

    // The same conversation escalates when a new turn needs the stronger model, once.
    msgs.push(json!({"role": "assistant", "content": "An answer."}));
    msgs.push(json!({"role": "user", "content": task}));
    let (_, h, _) = post(
        &c,
        &format!("{}/v1/chat/completions", st.routers[0].base),
        &json!({"model": "auto", "messages": msgs, "max_tokens": 4}),
    )
    .await;
    assert_eq!(header(&h, "x-vsr-selected-model"), stronger);
    assert_eq!(header(&h, "x-vsr-session-action"), "escalated");
    // /v1/route explains the next turn without changing the session.
    msgs.push(json!({"role": "assistant", "content": "An answer."}));
    msgs.push(json!({"role": "user", "content": "thanks"}));
    let (s, _, r) = post(
        &c,
        &format!("{}/v1/route", st.routers[1].base),
        &json!({"model": "auto", "messages": msgs}),
    )
    .await;
    assert_eq!(s, 200);
    assert_eq!(r["decision"]["session"]["action"], "light", "{r}");
    assert_eq!(
        r["decision"]["session"]["previous"],
        stronger.as_str(),
        "{r}"
    );
    assert_eq!(r["decision"]["model"], stronger.as_str());
    drop(st.sims);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn official_clients_send_agent_sessions_that_keep_one_model() {
    let st = Stack::start().await;
    let c = client();
    let task = routed_to(&c, &st.routers[0], "big", &hard_candidates()).await;
    let consts = format!(
        "TASK = {}\nBOIL = {}\n",
        serde_json::to_string(&task).unwrap(),
        serde_json::to_string(&boilerplate()).unwrap()
    );
    let bases = format!("{},{}", st.routers[0].base, st.routers[1].base);

    // Claude Code's shape through the anthropic client: reminders, tool_use / tool_result.
    let script = format!(
        r##"
import sys, anthropic
{consts}
cs = [anthropic.Anthropic(base_url=b, api_key="unused", max_retries=0) for b in sys.argv[1].split(",")]
tools = [{{"name": "Bash", "description": "run", "input_schema": {{"type": "object"}}}}]
system = "You are Claude Code, Anthropic's official CLI for Claude."
reminder = {{"type": "text", "text": "<system-reminder>\n" + BOIL + "\n</system-reminder>"}}
msgs = [{{"role": "user", "content": [reminder, {{"type": "text", "text": TASK}}]}}]
def turn(i):
    r = cs[i % 2].messages.with_raw_response.create(model="auto", max_tokens=8, system=system,
        tools=tools, messages=msgs, metadata={{"user_id": "user_a_account_b_session_c"}})
    r.parse()
    return r.headers
h = turn(0)
assert (h["x-vsr-selected-model"], h["x-vsr-session-action"]) == ("big", "started"), dict(h)
sid = h["x-vsr-session"]
for i in range(1, 4):
    msgs += [{{"role": "assistant", "content": [{{"type": "tool_use", "id": f"toolu_{{i}}", "name": "Bash", "input": {{}}}}]}},
             {{"role": "user", "content": [{{"type": "tool_result", "tool_use_id": f"toolu_{{i}}", "content": BOIL}}, reminder]}}]
    h = turn(i)
    assert (h["x-vsr-selected-model"], h["x-vsr-session-action"], h["x-vsr-session"]) == ("big", "tool_loop", sid), dict(h)
print("anthropic session OK")
"##
    );
    let out = python_client(st._dirs[0].path(), "anthropic", &script, &bases);
    assert!(out.contains("anthropic session OK"), "{out}");

    // Codex's shape through the openai client's Responses API: AGENTS.md and environment
    // items, prompt_cache_key, function calls and their outputs.
    let script = format!(
        r##"
import sys, openai
{consts}
cs = [openai.OpenAI(base_url=b + "/v1", api_key="unused", max_retries=0) for b in sys.argv[1].split(",")]
item = lambda role, text: {{"type": "message", "role": role, "content": [{{"type": "input_text", "text": text}}]}}
inp = [item("developer", BOIL),
       item("user", "# AGENTS.md instructions for /repo\n\n<INSTRUCTIONS>\n" + BOIL + "\n</INSTRUCTIONS>"),
       item("user", "<environment_context>\n  <cwd>/repo</cwd>\n</environment_context>"),
       item("user", TASK)]
def turn(i):
    r = cs[i % 2].responses.with_raw_response.create(model="auto", instructions="You are Codex.",
        input=inp, store=False, max_output_tokens=8, extra_body={{"prompt_cache_key": "codex-official-1"}})
    r.parse()
    return r.headers
h = turn(0)
assert (h["x-vsr-selected-model"], h["x-vsr-session-action"]) == ("big", "started"), dict(h)
sid = h["x-vsr-session"]
for i in range(1, 4):
    inp += [{{"type": "function_call", "name": "shell", "arguments": "{{}}", "call_id": f"call_{{i}}"}},
            {{"type": "function_call_output", "call_id": f"call_{{i}}", "output": BOIL}}]
    h = turn(i)
    assert (h["x-vsr-selected-model"], h["x-vsr-session-action"], h["x-vsr-session"]) == ("big", "tool_loop", sid), dict(h)
print("openai session OK")
"##
    );
    let out = python_client(st._dirs[0].path(), "openai", &script, &bases);
    assert!(out.contains("openai session OK"), "{out}");
}
