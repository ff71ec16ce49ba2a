//! The OpenAI wire format as far as the router needs it: parse and check a request (unknown fields
//! are kept untouched), write the body sent to a model (name, reasoning switch, system prompt),
//! and the refusal answered for a blocked request.

use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use serde_json::{json, Map, Value};

use crate::config::{Config, InputConfig, ModelConfig, ReasoningFamily};
use std::collections::BTreeSet;

use crate::decide::pii::{self, PiiType};
use crate::decide::pii_scan::PiiScan;
use crate::decide::{text, Decision};
use crate::error::Error;

use super::probe;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Chat,
    Completion,
}

impl Kind {
    pub fn path(self) -> &'static str {
        match self {
            Kind::Chat => "/v1/chat/completions",
            Kind::Completion => "/v1/completions",
        }
    }
}

/// A checked request: what the router reads of it, and the client's bytes. The JSON tree of
/// every field (`body`) is built only when something needs it: a request the router forwards as
/// its bytes (a named model), or splices (a routed one), never builds it.
#[derive(Debug)]
pub struct Parsed {
    pub kind: Kind,
    pub model: String,
    pub stream: bool,
    pub include_usage: bool,
    /// The chat messages' roles and contents (empty for a completion).
    pub messages: Vec<probe::Message>,
    /// A completion's `prompt` (None for chat).
    pub prompt: Option<Value>,
    /// `max_completion_tokens`, else `max_tokens`, when a whole number.
    pub max_tokens: Option<u64>,
    /// `user` and `prompt_cache_key` when strings (session keys; anything else is the
    /// backend's to judge).
    pub user: Option<String>,
    pub prompt_cache_key: Option<String>,
    /// The body as the client sent it.
    bytes: Bytes,
    /// The tree of `bytes`, made on first use.
    tree: std::sync::OnceLock<Map<String, Value>>,
    /// The tree was changed: `bytes` no longer say what goes to the backend.
    changed: bool,
}

fn bad(message: impl Into<String>, param: &'static str) -> Error {
    Error::bad_request(message, Some(param))
}

pub fn parse(kind: Kind, bytes: &Bytes) -> Result<Parsed, Error> {
    let probe = probe::read(bytes)
        .map_err(|e| {
            Error::bad_request(
                format!("We could not parse the JSON body of your request: {e}"),
                None,
            )
        })?
        .ok_or_else(|| Error::bad_request("The request body must be a JSON object.", None))?;
    let model = match probe.model {
        Some(Value::String(m)) if !m.is_empty() => m,
        None | Some(Value::Null) => {
            return Err(bad("You must provide a model parameter.", "model"))
        }
        Some(_) => return Err(bad("`model` must be a non-empty string.", "model")),
    };
    let stream = match probe.stream {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => b,
        Some(_) => return Err(bad("`stream` must be a boolean.", "stream")),
    };
    let include_usage = match &probe.stream_options {
        None | Some(Value::Null) => false,
        Some(Value::Object(o)) => match o.get("include_usage") {
            None | Some(Value::Null) => false,
            Some(Value::Bool(b)) => *b,
            Some(_) => {
                return Err(bad(
                    "`stream_options.include_usage` must be a boolean.",
                    "stream_options",
                ))
            }
        },
        Some(_) => return Err(bad("`stream_options` must be an object.", "stream_options")),
    };
    match kind {
        Kind::Chat => {
            let msgs = match &probe.messages {
                None => return Err(bad("`messages` is required.", "messages")),
                Some(Ok(m)) => m,
                Some(Err(probe::NotAnArray)) => {
                    return Err(bad("`messages` must be an array.", "messages"))
                }
            };
            if msgs.is_empty() {
                return Err(bad(
                    "`messages` must contain at least one message.",
                    "messages",
                ));
            }
            for (i, m) in msgs.iter().enumerate() {
                if m.role.is_none() {
                    return Err(bad(
                        format!("`messages[{i}]` must be an object with a string `role`."),
                        "messages",
                    ));
                }
                match m.content {
                    None | Some(Value::Null | Value::String(_) | Value::Array(_)) => {}
                    Some(_) => {
                        return Err(bad(
                            format!(
                                "`messages[{i}].content` must be a string or an array of parts."
                            ),
                            "messages",
                        ))
                    }
                }
            }
        }
        Kind::Completion => match probe.prompt {
            Some(Value::String(_) | Value::Array(_)) => {}
            None | Some(Value::Null) => return Err(bad("`prompt` is required.", "prompt")),
            Some(_) => return Err(bad("`prompt` must be a string or an array.", "prompt")),
        },
    }
    Ok(Parsed {
        kind,
        model,
        stream,
        include_usage,
        messages: probe.messages.and_then(Result::ok).unwrap_or_default(),
        prompt: probe.prompt,
        max_tokens: probe
            .max_completion_tokens
            .or(probe.max_tokens)
            .as_ref()
            .and_then(Value::as_u64),
        user: probe.user.and_then(|v| v.as_str().map(str::to_string)),
        prompt_cache_key: probe
            .prompt_cache_key
            .and_then(|v| v.as_str().map(str::to_string)),
        bytes: bytes.clone(),
        tree: Default::default(),
        changed: false,
    })
}

impl Parsed {
    /// The client's JSON object, every field kept (built from the bytes on first use).
    pub fn body(&self) -> &Map<String, Value> {
        self.tree
            .get_or_init(|| match serde_json::from_slice(&self.bytes) {
                Ok(Value::Object(m)) => m,
                // `parse` checked the bytes are a JSON object.
                _ => Map::new(),
            })
    }

    /// The tree, to change what goes to the backend.
    pub fn body_mut(&mut self) -> &mut Map<String, Value> {
        self.body();
        self.changed = true;
        self.tree.get_mut().expect("built just above")
    }

    /// The body as the client sent it, while the router has changed nothing in it.
    pub fn unchanged_bytes(&self) -> Option<&Bytes> {
        (!self.changed).then_some(&self.bytes)
    }

    /// What is classified (see `decide::text`).
    pub fn classify_text(&self, cfg: &InputConfig) -> Option<String> {
        self.input(cfg).text
    }

    /// What is classified and the shape of the turn (a completion is always a new turn).
    pub fn input(&self, cfg: &InputConfig) -> text::Input {
        match self.kind {
            Kind::Chat => text::read(&self.messages, cfg),
            Kind::Completion => {
                let text = self.prompt.as_ref().and_then(|p| text::from_prompt(p, cfg));
                text::Input {
                    new_turn: text.is_some(),
                    user_turns: usize::from(text.is_some()),
                    text,
                    light: false,
                }
            }
        }
    }
}

impl Parsed {
    /// Sets `stream_options.include_usage` in what is forwarded (`include_usage` keeps what the
    /// client asked for).
    pub fn ask_for_stream_usage(&mut self) {
        let opts = self
            .body_mut()
            .entry("stream_options")
            .or_insert_with(|| json!({}));
        if !opts.is_object() {
            *opts = json!({});
        }
        if let Value::Object(o) = opts {
            o.insert("include_usage".into(), Value::Bool(true));
        }
    }

    /// Prompt tokens, estimated at 4 characters a token (what a key's token limit is charged
    /// at admission; the answer's `usage` corrects it).
    pub fn token_estimate(&self) -> u64 {
        (self.text_chars() as u64).div_ceil(4).max(1)
    }

    /// The characters of `all_text`, without writing it (what a model's context is checked
    /// against for every request).
    pub fn text_chars(&self) -> usize {
        // `text::content_text`'s characters: a string, or its text parts joined by newlines.
        let content = |v: &Value| match v {
            Value::String(s) => Some(s.chars().count()),
            Value::Array(parts) => {
                let (n, chars) = text::text_parts(parts)
                    .fold((0, 0), |(n, c), t| (n + 1, c + t.chars().count()));
                (n > 0).then(|| chars + n - 1)
            }
            _ => None,
        };
        let messages: usize = self
            .messages
            .iter()
            .filter_map(|m| m.content.as_ref().and_then(content))
            .map(|n| n + 1)
            .sum();
        let prompt = match &self.prompt {
            Some(Value::String(p)) => p.chars().count(),
            Some(Value::Array(items)) => items
                .iter()
                .filter_map(Value::as_str)
                .map(|p| p.chars().count() + 1)
                .sum(),
            _ => 0,
        };
        messages + prompt
    }

    /// Every text a model would read (all messages' text, or the prompt), for PII checks.
    pub fn all_text(&self) -> String {
        let mut out = String::new();
        for m in &self.messages {
            if let Some(t) = m.content.as_ref().and_then(text::content_text) {
                out.push_str(&t);
                out.push('\n');
            }
        }
        match &self.prompt {
            Some(Value::String(p)) => out.push_str(p),
            Some(Value::Array(items)) => {
                for p in items.iter().filter_map(Value::as_str) {
                    out.push_str(p);
                    out.push('\n');
                }
            }
            _ => {}
        }
        out
    }
}

/// Calls `f` on every text a model reads: message contents (strings, string parts, the `text`
/// of parts), prompts (a string or strings).
fn each_text(body: &mut Map<String, Value>, f: &mut impl FnMut(&mut String)) {
    // A string, or parts/blocks with `text` (and, in a Messages tool result, `content`).
    fn visit(v: &mut Value, f: &mut impl FnMut(&mut String)) {
        match v {
            Value::String(s) => f(s),
            Value::Array(parts) => {
                for p in parts {
                    match p {
                        Value::String(s) => f(s),
                        Value::Object(o) => {
                            if let Some(Value::String(t)) = o.get_mut("text") {
                                f(t);
                            }
                            if let Some(c) = o.get_mut("content") {
                                visit(c, f);
                            }
                        }
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    if let Some(Value::Array(msgs)) = body.get_mut("messages") {
        for m in msgs {
            if let Some(c) = m.get_mut("content") {
                visit(c, f);
            }
        }
    }
    // Anthropic Messages' top-level system prompt.
    if let Some(s) = body.get_mut("system") {
        visit(s, f);
    }
    if let Some(p) = body.get_mut("prompt") {
        visit(p, f);
    }
}

/// A body in the backend's own API (Anthropic Messages) for `model`: as the client sent it with
/// `model` replaced, and PII of `mask` kinds replaced in its texts.
pub fn native_body(
    raw: &Bytes,
    model: &ModelConfig,
    mask: Option<(&BTreeSet<PiiType>, &PiiScan)>,
) -> Bytes {
    let mask = mask.filter(|(k, _)| !k.is_empty());
    if mask.is_none() {
        if let Some(b) = splice(raw, &model.name, None) {
            return b;
        }
    }
    let Ok(Value::Object(mut body)) = serde_json::from_slice::<Value>(raw) else {
        return raw.clone();
    };
    if let Some((kinds, scan)) = mask {
        each_text(&mut body, &mut |s| {
            *s = pii::mask_spans(s, &scan.spans(s), kinds)
        });
    }
    body.insert("model".into(), Value::String(model.name.clone()));
    Bytes::from(serde_json::to_vec(&body).expect("JSON value serialises"))
}

impl Parsed {
    /// Every text a model reads, in body order, once each (what the PII scan looks at).
    pub fn model_texts(&self) -> Vec<String> {
        let mut body = self.body().clone();
        let mut out: Vec<String> = Vec::new();
        each_text(&mut body, &mut |s| {
            if !s.trim().is_empty() && !out.contains(s) {
                out.push(std::mem::take(s));
            }
        });
        out
    }
}

/// The reasoning switch of `model`'s family as JSON fields, for the decision's `on`.
pub fn reasoning_fields(model: &ModelConfig, on: bool) -> Option<(&'static str, Value)> {
    match model.reasoning_family? {
        ReasoningFamily::Qwen3 => Some(("chat_template_kwargs.enable_thinking", json!(on))),
        ReasoningFamily::DeepSeek => Some(("chat_template_kwargs.thinking", json!(on))),
        ReasoningFamily::GptOss => Some((
            "reasoning_effort",
            json!(if on {
                model.reasoning_effort.as_str()
            } else {
                "low"
            }),
        )),
    }
}

/// The body sent to `model`: the client's fields untouched except `model`, and under semantic
/// routing the reasoning switch (unless the client set it) and the category's system prompt;
/// PII of `mask` kinds replaced.
pub fn body_for(
    p: &Parsed,
    cfg: &Config,
    model: &ModelConfig,
    d: &Decision,
    mask: Option<(&BTreeSet<PiiType>, &PiiScan)>,
) -> Bytes {
    let unmasked = mask.is_none_or(|(k, _)| k.is_empty());
    if let Some(raw) = p.unchanged_bytes().filter(|_| unmasked) {
        if d.source == crate::decide::Source::Explicit && model.name == p.model {
            return raw.clone();
        }
    }
    let routed = d.source != crate::decide::Source::Explicit;
    let system_prompt = routed
        .then(|| system_prompt(cfg, d, model))
        .flatten()
        .filter(|_| p.kind == Kind::Chat);
    if let Some(raw) = p
        .unchanged_bytes()
        .filter(|_| unmasked && system_prompt.is_none())
    {
        let reasoning = if routed && p.kind == Kind::Chat {
            reasoning_fields(model, d.use_reasoning)
        } else {
            None
        };
        if let Some(b) = splice(raw, &model.name, reasoning.as_ref().map(|(k, v)| (*k, v))) {
            return b;
        }
    }
    let mut body = p.body().clone();
    if let Some((kinds, scan)) = mask.filter(|(k, _)| !k.is_empty()) {
        each_text(&mut body, &mut |s| {
            *s = pii::mask_spans(s, &scan.spans(s), kinds)
        });
    }
    body.insert("model".into(), Value::String(model.name.clone()));
    if routed && p.kind == Kind::Chat {
        if let Some((path, value)) = reasoning_fields(model, d.use_reasoning) {
            match path.split_once('.') {
                Some((outer, inner)) => {
                    let kw = body.entry(outer).or_insert_with(|| json!({}));
                    if kw.is_null() {
                        *kw = json!({});
                    }
                    if let Value::Object(kw) = kw {
                        kw.entry(inner).or_insert(value);
                    }
                }
                None => {
                    body.entry(path).or_insert(value);
                }
            }
        }
        if let (Some(prompt), Some(Value::Array(msgs))) = (system_prompt, body.get_mut("messages"))
        {
            let first_system = msgs
                .first()
                .is_some_and(|m| m.get("role").and_then(Value::as_str) == Some("system"));
            match msgs.first_mut().and_then(|m| m.get_mut("content")) {
                Some(Value::String(s)) if first_system => *s = format!("{prompt}\n\n{s}"),
                _ => msgs.insert(0, json!({"role": "system", "content": prompt})),
            }
        }
    }
    Bytes::from(serde_json::to_vec(&body).expect("JSON value serialises"))
}

/// The system prompt of the decision's route or category, for the model it chose.
/// What the router adds to a request's body for `model` (a routed request's system prompt and
/// reasoning switch), as text: with the model and the client's body, what its answer depends
/// on (the response cache's key).
pub fn added_by_router(p: &Parsed, cfg: &Config, model: &ModelConfig, d: &Decision) -> String {
    if d.source == crate::decide::Source::Explicit {
        return String::new();
    }
    let system = system_prompt(cfg, d, model).filter(|_| p.kind == Kind::Chat);
    let reasoning = reasoning_fields(model, d.use_reasoning);
    format!("{system:?}\0{reasoning:?}")
}

fn system_prompt<'c>(cfg: &'c Config, d: &Decision, model: &ModelConfig) -> Option<&'c String> {
    let route_prompt = d.route.as_ref().and_then(|name| {
        cfg.routing
            .routes
            .iter()
            .find(|r| r.name == *name)
            .map(|r| r.system_prompt.as_ref())
    });
    match route_prompt {
        Some(p) => p,
        None => d
            .category
            .as_ref()
            .and_then(|c| cfg.routing.categories.get(c))
            .and_then(|r| r.system_prompt.as_ref()),
    }
    .filter(|_| model.name == d.model)
}

/// The client's bytes with `model` replaced and, when the client did not set it, the reasoning
/// field added: the body of a routed request without building its tree again and writing it
/// (a cache hit's ~8 % of instructions). Every other member goes as the client wrote it (the
/// order changes: `model` comes first). None, for the tree path, when a key has escapes or the
/// field to add belongs in an object the client already sent.
fn splice(raw: &[u8], model: &str, reasoning: Option<(&str, &Value)>) -> Option<Bytes> {
    let Members(members) = serde_json::from_slice(raw).ok()?;
    let mut add = None;
    if let Some((path, value)) = reasoning {
        let (outer, inner) = match path.split_once('.') {
            Some((o, i)) => (o, Some(i)),
            None => (path, None),
        };
        match (members.iter().find(|(k, _)| *k == outer), inner) {
            // Set by the client at the top: theirs stands.
            (Some(_), None) => {}
            // An object of the client's to merge into: the tree path does that.
            (Some(_), Some(_)) => return None,
            (None, None) => add = Some((outer, value.clone())),
            (None, Some(i)) => add = Some((outer, json!({ i: value }))),
        }
    }
    let mut out = Vec::with_capacity(raw.len() + 64);
    out.extend_from_slice(b"{\"model\":");
    serde_json::to_writer(&mut out, model).ok()?;
    if let Some((k, v)) = add {
        out.push(b',');
        serde_json::to_writer(&mut out, k).ok()?;
        out.push(b':');
        serde_json::to_writer(&mut out, &v).ok()?;
    }
    for (k, v) in members.iter().filter(|(k, _)| *k != "model") {
        out.push(b',');
        serde_json::to_writer(&mut out, k).ok()?;
        out.push(b':');
        out.extend_from_slice(v.get().as_bytes());
    }
    out.push(b'}');
    Some(Bytes::from(out))
}

/// A JSON object's members as borrowed key and raw value text; fails on a key with escapes
/// (which cannot be borrowed).
struct Members<'a>(Vec<(&'a str, &'a serde_json::value::RawValue)>);

impl<'de> serde::Deserialize<'de> for Members<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Members<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut m: A,
            ) -> Result<Self::Value, A::Error> {
                let mut out = Vec::with_capacity(m.size_hint().unwrap_or(8));
                while let Some(k) = m.next_key::<&'de str>()? {
                    out.push((k, m.next_value()?));
                }
                Ok(Members(out))
            }
        }
        d.deserialize_map(V)
    }
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// An OpenAI-style refusal for a blocked request: a normal completion whose content is the
/// refusal, `finish_reason: content_filter`; as SSE when the client asked for a stream.
pub fn refusal(p: &Parsed, message: &str) -> (bool, Bytes) {
    let id = format!("chatcmpl-vsr-{:x}", rand::random::<u64>());
    let created = now_secs();
    let usage = json!({"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0});
    let (object, choice, chunk_object, delta) = match p.kind {
        Kind::Chat => (
            "chat.completion",
            json!({"index": 0, "finish_reason": "content_filter", "logprobs": null,
                   "message": {"role": "assistant", "content": message, "refusal": message}}),
            "chat.completion.chunk",
            json!({"index": 0, "finish_reason": "content_filter", "logprobs": null,
                   "delta": {"role": "assistant", "content": message, "refusal": message}}),
        ),
        Kind::Completion => (
            "text_completion",
            json!({"index": 0, "text": message, "finish_reason": "content_filter", "logprobs": null}),
            "text_completion",
            json!({"index": 0, "text": message, "finish_reason": "content_filter", "logprobs": null}),
        ),
    };
    if !p.stream {
        let v = json!({"id": id, "object": object, "created": created, "model": p.model,
                       "choices": [choice], "usage": usage});
        return (false, Bytes::from(v.to_string()));
    }
    let mut out = String::new();
    let chunk = json!({"id": id, "object": chunk_object, "created": created, "model": p.model,
                       "choices": [delta]});
    out.push_str(&format!("data: {chunk}\n\n"));
    if p.include_usage {
        let u = json!({"id": id, "object": chunk_object, "created": created, "model": p.model,
                       "choices": [], "usage": usage});
        out.push_str(&format!("data: {u}\n\n"));
    }
    out.push_str("data: [DONE]\n\n");
    (true, Bytes::from(out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decide::Source;

    fn cfg() -> Config {
        Config::from_yaml(crate::config::EMBEDDED_DEFAULT).unwrap()
    }

    fn parse(kind: Kind, bytes: &[u8]) -> Result<Parsed, Error> {
        super::parse(kind, &Bytes::copy_from_slice(bytes))
    }

    #[test]
    fn bad_inputs_name_the_param() {
        let cases: &[(&[u8], Option<&str>)] = &[
            (b"{not json", None),
            (b"[1,2]", None),
            (
                br#"{"messages":[{"role":"user","content":"x"}]}"#,
                Some("model"),
            ),
            (br#"{"model":3,"messages":[]}"#, Some("model")),
            (br#"{"model":"auto"}"#, Some("messages")),
            (br#"{"model":"auto","messages":"hi"}"#, Some("messages")),
            (br#"{"model":"auto","messages":[]}"#, Some("messages")),
            (
                br#"{"model":"auto","messages":[{"content":"x"}]}"#,
                Some("messages"),
            ),
            (
                br#"{"model":"auto","messages":[{"role":"user","content":5}]}"#,
                Some("messages"),
            ),
            (
                br#"{"model":"auto","stream":"yes","messages":[{"role":"user","content":"x"}]}"#,
                Some("stream"),
            ),
        ];
        for (body, param) in cases {
            match parse(Kind::Chat, body) {
                Err(Error::BadRequest { param: p, .. }) => {
                    assert_eq!(p, *param, "{}", String::from_utf8_lossy(body))
                }
                other => panic!("{}: {other:?}", String::from_utf8_lossy(body)),
            }
        }
        assert!(parse(Kind::Completion, br#"{"model":"m","prompt":{}}"#).is_err());
    }

    #[test]
    fn unknown_fields_survive_and_reasoning_is_set_per_family() {
        let p = parse(
            Kind::Chat,
            br#"{"model":"auto","messages":[{"role":"user","content":"x"}],
                 "guided_json":{"type":"object"},"logprobs":true,"top_k":5}"#,
        )
        .unwrap();
        let mut cfg = cfg();
        let mut d = Decision::default_model(&cfg, Source::Classified);
        d.use_reasoning = true;
        let out: Value =
            serde_json::from_slice(&body_for(&p, &cfg, &cfg.models[1].clone(), &d, None)).unwrap();
        assert_eq!(out["model"], "qwen3-8b");
        assert_eq!(out["guided_json"], json!({"type": "object"}));
        assert_eq!(out["top_k"], 5);
        assert_eq!(out["chat_template_kwargs"]["enable_thinking"], true);

        cfg.models[1].reasoning_family = Some(ReasoningFamily::DeepSeek);
        let out: Value =
            serde_json::from_slice(&body_for(&p, &cfg, &cfg.models[1].clone(), &d, None)).unwrap();
        assert_eq!(out["chat_template_kwargs"]["thinking"], true);

        cfg.models[1].reasoning_family = Some(ReasoningFamily::GptOss);
        d.use_reasoning = false;
        let out: Value =
            serde_json::from_slice(&body_for(&p, &cfg, &cfg.models[1].clone(), &d, None)).unwrap();
        assert_eq!(out["reasoning_effort"], "low");

        // An explicit model is forwarded as asked.
        let e = Decision::explicit("qwen3-8b");
        let out: Value =
            serde_json::from_slice(&body_for(&p, &cfg, &cfg.models[1].clone(), &e, None)).unwrap();
        assert!(out.get("reasoning_effort").is_none());
    }

    #[test]
    fn a_named_model_unchanged_goes_as_its_bytes() {
        let raw: &[u8] =
            br#"{"model":"qwen3-8b", "messages":[{"role":"user","content":"x"}],"z":1,"a":2}"#;
        let mut p = parse(Kind::Chat, raw).unwrap();
        let cfg = cfg();
        let e = Decision::explicit("qwen3-8b");
        let m = cfg.model("qwen3-8b").unwrap();
        assert_eq!(&body_for(&p, &cfg, m, &e, None)[..], raw);
        // Failed over to another model: rewritten with that model's name.
        let other = cfg.model("qwen3-0.6b").unwrap();
        let out: Value = serde_json::from_slice(&body_for(&p, &cfg, other, &e, None)).unwrap();
        assert_eq!(
            (out["model"].as_str(), out["z"].as_i64()),
            (Some("qwen3-0.6b"), Some(1))
        );
        // A changed body is written from the tree.
        p.ask_for_stream_usage();
        let out: Value = serde_json::from_slice(&body_for(&p, &cfg, m, &e, None)).unwrap();
        assert_eq!(out["stream_options"]["include_usage"], true);
    }

    #[test]
    fn a_routed_body_spliced_from_its_bytes_reads_as_the_tree_written_again() {
        let bodies: &[&str] = &[
            r#"{"model":"auto","messages":[{"role":"user","content":"x"}],"max_tokens":16}"#,
            r#" { "messages" : [{"role":"user","content":"caf\u00e9 \"q\" ü"}], "model":"auto",
                 "guided_json":{"type":"object","properties":{"a":[1,2.5e3,null,true]}},
                 "stream":false, "n":1 } "#,
            r#"{"model":"auto","messages":[{"role":"user","content":"x"}],"reasoning_effort":"high"}"#,
            r#"{"model":"auto","messages":[{"role":"user","content":"x"}],"chat_template_kwargs":{"x":1}}"#,
            r#"{"model":"auto","messages":[{"role":"user","content":"x"}],"chat_template_kwargs":null}"#,
            r#"{"model":"auto","messages":[{"role":"user","content":"x"}],"we\u0069rd":1}"#,
        ];
        let mut cfg = cfg();
        for family in [
            Some(ReasoningFamily::Qwen3),
            Some(ReasoningFamily::GptOss),
            None,
        ] {
            cfg.models[1].reasoning_family = family;
            let m = cfg.models[1].clone();
            for on in [true, false] {
                let mut d = Decision::default_model(&cfg, Source::Classified);
                d.model = m.name.clone();
                d.use_reasoning = on;
                for body in bodies {
                    let mut p = parse(Kind::Chat, body.as_bytes()).unwrap();
                    let spliced = body_for(&p, &cfg, &m, &d, None);
                    let spliced: Value = serde_json::from_slice(&spliced).unwrap();
                    // Touched, the tree is written instead.
                    p.body_mut();
                    let tree: Value =
                        serde_json::from_slice(&body_for(&p, &cfg, &m, &d, None)).unwrap();
                    assert_eq!(spliced, tree, "{family:?} {on} {body}");
                }
            }
        }
        // The splice itself: model replaced, the field added only where the client set none.
        let raw = br#"{"model":"auto","messages":[],"chat_template_kwargs":{"x":1}}"#;
        assert!(splice(
            raw,
            "m",
            Some(("chat_template_kwargs.enable_thinking", &json!(true)))
        )
        .is_none());
        let out = splice(raw, "m", Some(("reasoning_effort", &json!("low")))).unwrap();
        assert_eq!(
            &out[..],
            br#"{"model":"m","reasoning_effort":"low","messages":[],"chat_template_kwargs":{"x":1}}"#
        );
        assert!(
            splice(br#"{"a\n":1}"#, "m", None).is_none(),
            "escaped key: tree path"
        );
    }

    #[test]
    fn client_reasoning_choice_wins_and_system_prompt_is_added() {
        let p = parse(
            Kind::Chat,
            br#"{"model":"auto","messages":[{"role":"user","content":"x"}],
                 "chat_template_kwargs":{"enable_thinking":false}}"#,
        )
        .unwrap();
        let cfg = cfg();
        let mut d = Decision::default_model(&cfg, Source::Classified);
        d.model = "qwen3-8b".into();
        d.category = Some("math".into());
        d.use_reasoning = true;
        let out: Value = serde_json::from_slice(&body_for(
            &p,
            &cfg,
            cfg.model("qwen3-8b").unwrap(),
            &d,
            None,
        ))
        .unwrap();
        assert_eq!(out["chat_template_kwargs"]["enable_thinking"], false);
        assert_eq!(out["messages"][0]["role"], "system");
        assert_eq!(out["messages"][1]["content"], "x");
    }

    #[test]
    fn refusal_streams_with_done() {
        let p = parse(
            Kind::Chat,
            br#"{"model":"auto","stream":true,"stream_options":{"include_usage":true},
                 "messages":[{"role":"user","content":"x"}]}"#,
        )
        .unwrap();
        let (sse, body) = refusal(&p, "no");
        let s = String::from_utf8(body.to_vec()).unwrap();
        assert!(sse && s.ends_with("data: [DONE]\n\n") && s.contains("\"usage\""));
    }

    /// Any JSON value, a few levels deep.
    fn any_json() -> impl proptest::strategy::Strategy<Value = Value> {
        use proptest::prelude::*;
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            any::<f64>().prop_map(|f| json!(f)),
            ".{0,12}".prop_map(Value::from),
        ];
        leaf.prop_recursive(3, 24, 4, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
                proptest::collection::btree_map(
                    prop_oneof![
                        Just("role".to_string()),
                        Just("content".to_string()),
                        Just("type".to_string()),
                        Just("text".to_string()),
                        "[a-z]{1,6}",
                    ],
                    inner,
                    0..4
                )
                .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    /// The request read from its whole tree, as the router did before `probe`: the oracle the
    /// probe is checked against. Ok: (model, stream, include_usage, classified text, all text,
    /// token budget); Err: the parameter named (None for the body as a whole).
    #[allow(clippy::type_complexity)]
    fn from_tree(
        kind: Kind,
        bytes: &[u8],
    ) -> Result<(String, bool, bool, Option<String>, String, Option<u64>), Option<&'static str>>
    {
        let Ok(Value::Object(b)) = serde_json::from_slice::<Value>(bytes) else {
            return Err(None);
        };
        let model = match b.get("model") {
            Some(Value::String(m)) if !m.is_empty() => m.clone(),
            _ => return Err(Some("model")),
        };
        let stream = match b.get("stream") {
            None | Some(Value::Null) => false,
            Some(Value::Bool(v)) => *v,
            _ => return Err(Some("stream")),
        };
        let include_usage = match b.get("stream_options") {
            None | Some(Value::Null) => false,
            Some(Value::Object(o)) => match o.get("include_usage") {
                None | Some(Value::Null) => false,
                Some(Value::Bool(v)) => *v,
                _ => return Err(Some("stream_options")),
            },
            _ => return Err(Some("stream_options")),
        };
        let msgs = b.get("messages").and_then(Value::as_array);
        let input = cfg().classifier.input;
        let classified = match kind {
            Kind::Chat => {
                let m = msgs.filter(|m| !m.is_empty()).ok_or(Some("messages"))?;
                for x in m {
                    let content_ok = matches!(
                        x.get("content"),
                        None | Some(Value::Null | Value::String(_) | Value::Array(_))
                    );
                    if !x.get("role").is_some_and(Value::is_string) || !content_ok {
                        return Err(Some("messages"));
                    }
                }
                text::from_messages(m, &input)
            }
            Kind::Completion => match b.get("prompt") {
                Some(p @ (Value::String(_) | Value::Array(_))) => text::from_prompt(p, &input),
                _ => return Err(Some("prompt")),
            },
        };
        let mut all = String::new();
        for t in msgs
            .into_iter()
            .flatten()
            .filter_map(|m| m.get("content").and_then(text::content_text))
        {
            all.push_str(&t);
            all.push('\n');
        }
        match b.get("prompt") {
            Some(Value::String(p)) => all.push_str(p),
            Some(Value::Array(items)) => {
                for p in items.iter().filter_map(Value::as_str) {
                    all.push_str(p);
                    all.push('\n');
                }
            }
            _ => {}
        }
        let budget = b
            .get("max_completion_tokens")
            .or_else(|| b.get("max_tokens"))
            .and_then(Value::as_u64);
        Ok((model, stream, include_usage, classified, all, budget))
    }

    /// Accepted requests go on the road; rejections are 4xx OpenAI errors, never a panic; and
    /// what `probe` read is what the whole tree says.
    fn check(kind: Kind, bytes: &[u8]) -> Result<(), proptest::test_runner::TestCaseError> {
        let oracle = from_tree(kind, bytes);
        match parse(kind, bytes) {
            Ok(p) => {
                let cfg = cfg();
                let read = (
                    p.model.clone(),
                    p.stream,
                    p.include_usage,
                    p.classify_text(&cfg.classifier.input),
                    p.all_text(),
                    p.max_tokens,
                );
                proptest::prop_assert_eq!(p.text_chars(), p.all_text().chars().count());
                proptest::prop_assert_eq!(Ok(read), oracle);
                proptest::prop_assert_eq!(
                    &Value::Object(p.body().clone()),
                    &serde_json::from_slice::<Value>(bytes).unwrap()
                );
                let _ = p.model_texts();
                let d = Decision::default_model(&cfg, Source::Classified);
                let _ = body_for(&p, &cfg, &cfg.models[0], &d, None);
            }
            Err(e) => {
                proptest::prop_assert!(e.status().is_client_error(), "{e:?}");
                let param = match &e {
                    Error::BadRequest { param, .. } => *param,
                    _ => None,
                };
                proptest::prop_assert_eq!(Err(param), oracle);
            }
        }
        Ok(())
    }

    proptest::proptest! {
        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..256)) {
            check(Kind::Chat, &bytes)?;
            check(Kind::Completion, &bytes)?;
        }

        /// A valid body with one field replaced by any JSON value.
        #[test]
        fn mutated_bodies_never_panic(
            field in proptest::sample::select(vec![
                "model", "messages", "stream", "stream_options", "prompt", "max_tokens",
                "temperature", "n", "tools", "chat_template_kwargs", "reasoning_effort", "extra",
            ]),
            value in any_json(),
            content in any_json(),
        ) {
            let mut chat = json!({"model": "auto", "messages": [{"role": "user", "content": content}]});
            chat[field] = value.clone();
            check(Kind::Chat, chat.to_string().as_bytes())?;
            let mut completion = json!({"model": "auto", "prompt": "x"});
            completion[field] = value;
            check(Kind::Completion, completion.to_string().as_bytes())?;
        }
    }
}
