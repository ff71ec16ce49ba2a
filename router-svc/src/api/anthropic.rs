//! Anthropic's Messages API (`POST /v1/messages`: Claude Code, the anthropic SDK) on the chat
//! road. A Messages request becomes a chat completions body (system, content blocks, images,
//! tool use and results, tools and tool choice, sampling); the chat answer becomes a Messages
//! answer: a `message` object, or the Messages SSE events (`message_start`,
//! `content_block_start`/`_delta`/`_stop` for text and tool use, `message_delta` with the stop
//! reason and usage, `message_stop`). Errors go out in Anthropic's format. A model whose backend
//! speaks Messages itself (`api: [messages]`) gets the client's body as it was sent, `model`
//! replaced, and its answer unchanged.

use serde_json::{json, Map, Value};

use super::dialect::{event, Dialect, Events};
use crate::config::Api;
use crate::error::Error;

/// The Messages API as a dialect of the chat road.
pub struct Messages;

impl Dialect for Messages {
    const API: Api = Api::Messages;
    type Stream = StreamTranslator;
    fn to_chat(raw: &[u8]) -> Result<Value, Error> {
        to_chat(raw)
    }
    fn from_chat(chat: &[u8]) -> Option<Vec<u8>> {
        message_from_chat(chat)
    }
    fn error_body(status: u16, message: &str) -> Value {
        error_body(status, message)
    }
    fn is_error_body(v: &Value) -> bool {
        v.get("type").and_then(Value::as_str) == Some("error")
    }
}

fn bad(message: impl Into<String>) -> Error {
    Error::bad_request(message, None)
}

/// The chat completions body for a Messages request. Fields that chat has no counterpart for
/// (`metadata` other than `user_id`, `thinking`, `container`, `mcp_servers`, ...) are dropped;
/// sampling fields vLLM understands go along.
pub fn to_chat(bytes: &[u8]) -> Result<Value, Error> {
    let v: Value = serde_json::from_slice(bytes).map_err(|e| {
        bad(format!(
            "We could not parse the JSON body of your request: {e}"
        ))
    })?;
    let Value::Object(req) = v else {
        return Err(bad("The request body must be a JSON object."));
    };
    let model = match req.get("model") {
        Some(Value::String(m)) if !m.is_empty() => m.clone(),
        _ => return Err(bad("model: Field required (a non-empty string).")),
    };
    let max_tokens = match req.get("max_tokens") {
        Some(Value::Number(n)) if n.as_u64().is_some_and(|n| n >= 1) => n.clone(),
        None => return Err(bad("max_tokens: Field required.")),
        Some(_) => return Err(bad("max_tokens: must be an integer >= 1.")),
    };
    let mut messages = Vec::new();
    match req.get("system") {
        None | Some(Value::Null) => {}
        Some(Value::String(s)) => messages.push(json!({"role": "system", "content": s})),
        Some(Value::Array(blocks)) => {
            let text = text_of(blocks, "system")?;
            messages.push(json!({"role": "system", "content": text}));
        }
        Some(_) => return Err(bad("system: must be a string or an array of text blocks.")),
    }
    let Some(Value::Array(msgs)) = req.get("messages") else {
        return Err(bad("messages: Field required (an array)."));
    };
    if msgs.is_empty() {
        return Err(bad("messages: at least one message is required."));
    }
    for (i, m) in msgs.iter().enumerate() {
        let role = m.get("role").and_then(Value::as_str);
        let content = m.get("content");
        match (role, content) {
            (Some("user"), Some(c)) => user_message(c, i, &mut messages)?,
            (Some("assistant"), Some(c)) => messages.push(assistant_message(c, i)?),
            (Some(r), _) if r != "user" && r != "assistant" => {
                return Err(bad(format!(
                    "messages.{i}.role: Input should be 'user' or 'assistant'"
                )))
            }
            _ => {
                return Err(bad(format!(
                    "messages.{i}: must be an object with `role` and `content`"
                )))
            }
        }
    }
    let mut chat = Map::new();
    chat.insert("model".into(), Value::String(model));
    chat.insert("messages".into(), Value::Array(messages));
    chat.insert("max_tokens".into(), Value::Number(max_tokens));
    for k in ["temperature", "top_p", "top_k"] {
        if let Some(v) = req.get(k).filter(|v| !v.is_null()) {
            chat.insert(k.into(), v.clone());
        }
    }
    if let Some(stop) = req.get("stop_sequences").filter(|v| !v.is_null()) {
        if !stop.is_array() {
            return Err(bad("stop_sequences: must be an array of strings."));
        }
        chat.insert("stop".into(), stop.clone());
    }
    if let Some(user) = req
        .get("metadata")
        .and_then(|m| m.get("user_id"))
        .and_then(Value::as_str)
    {
        chat.insert("user".into(), Value::String(user.into()));
    }
    let stream = match req.get("stream") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err(bad("stream: must be a boolean.")),
    };
    if stream {
        chat.insert("stream".into(), Value::Bool(true));
        // The usage goes into `message_delta`.
        chat.insert("stream_options".into(), json!({"include_usage": true}));
    }
    match req.get("tools") {
        None | Some(Value::Null) => {}
        Some(Value::Array(tools)) => {
            let mut out = Vec::with_capacity(tools.len());
            for (i, t) in tools.iter().enumerate() {
                let Some(name) = t.get("name").and_then(Value::as_str) else {
                    return Err(bad(format!("tools.{i}.name: Field required.")));
                };
                // Server tools (web search, code execution, ...) have a `type` and no schema:
                // a chat backend cannot run them.
                let Some(schema) = t.get("input_schema") else {
                    return Err(bad(format!(
                        "tools.{i}: only client tools (with `input_schema`) can be routed to this model."
                    )));
                };
                let mut f = json!({"name": name, "parameters": schema});
                if let Some(d) = t.get("description").filter(|d| d.is_string()) {
                    f["description"] = d.clone();
                }
                out.push(json!({"type": "function", "function": f}));
            }
            chat.insert("tools".into(), Value::Array(out));
        }
        Some(_) => return Err(bad("tools: must be an array.")),
    }
    if let Some(tc) = req.get("tool_choice").filter(|v| !v.is_null()) {
        let choice = match tc.get("type").and_then(Value::as_str) {
            Some("auto") => json!("auto"),
            Some("any") => json!("required"),
            Some("none") => json!("none"),
            Some("tool") => match tc.get("name").and_then(Value::as_str) {
                Some(n) => json!({"type": "function", "function": {"name": n}}),
                None => return Err(bad("tool_choice.name: Field required for type `tool`.")),
            },
            _ => return Err(bad("tool_choice.type: one of auto, any, tool, none.")),
        };
        if tc.get("disable_parallel_tool_use") == Some(&Value::Bool(true)) {
            chat.insert("parallel_tool_calls".into(), Value::Bool(false));
        }
        chat.insert("tool_choice".into(), choice);
    }
    Ok(Value::Object(chat))
}

/// The text of text blocks (others refused), joined by blank lines.
fn text_of(blocks: &[Value], at: &str) -> Result<String, Error> {
    let mut parts = Vec::with_capacity(blocks.len());
    for (j, b) in blocks.iter().enumerate() {
        match (b.get("type").and_then(Value::as_str), b.get("text")) {
            (Some("text"), Some(Value::String(t))) => parts.push(t.as_str()),
            _ => return Err(bad(format!("{at}.{j}: expected a text block."))),
        }
    }
    Ok(parts.join("\n\n"))
}

/// A user turn: text and images as content parts; each `tool_result` block becomes a `tool`
/// message before them (chat puts tool results in their own messages).
fn user_message(content: &Value, i: usize, out: &mut Vec<Value>) -> Result<(), Error> {
    let blocks = match content {
        Value::String(s) => {
            out.push(json!({"role": "user", "content": s}));
            return Ok(());
        }
        Value::Array(b) => b,
        _ => {
            return Err(bad(format!(
                "messages.{i}.content: must be a string or an array of blocks."
            )))
        }
    };
    let mut parts = Vec::new();
    for (j, b) in blocks.iter().enumerate() {
        let at = || format!("messages.{i}.content.{j}");
        match b.get("type").and_then(Value::as_str) {
            Some("text") => {
                let Some(t) = b.get("text").and_then(Value::as_str) else {
                    return Err(bad(format!("{}.text: Field required.", at())));
                };
                parts.push(json!({"type": "text", "text": t}));
            }
            Some("image") => {
                let src = b.get("source");
                let url = match src.and_then(|s| s.get("type")).and_then(Value::as_str) {
                    Some("base64") => {
                        let mt = src
                            .and_then(|s| s.get("media_type"))
                            .and_then(Value::as_str);
                        let data = src.and_then(|s| s.get("data")).and_then(Value::as_str);
                        match (mt, data) {
                            (Some(mt), Some(d)) => format!("data:{mt};base64,{d}"),
                            _ => {
                                return Err(bad(format!(
                                    "{}.source: media_type and data required.",
                                    at()
                                )))
                            }
                        }
                    }
                    Some("url") => match src.and_then(|s| s.get("url")).and_then(Value::as_str) {
                        Some(u) => u.to_string(),
                        None => return Err(bad(format!("{}.source.url: Field required.", at()))),
                    },
                    _ => {
                        return Err(bad(format!(
                            "{}.source: a base64 or url image source.",
                            at()
                        )))
                    }
                };
                parts.push(json!({"type": "image_url", "image_url": {"url": url}}));
            }
            Some("tool_result") => {
                let Some(id) = b.get("tool_use_id").and_then(Value::as_str) else {
                    return Err(bad(format!("{}.tool_use_id: Field required.", at())));
                };
                let text = match b.get("content") {
                    None | Some(Value::Null) => String::new(),
                    Some(Value::String(s)) => s.clone(),
                    Some(Value::Array(inner)) => inner
                        .iter()
                        .filter_map(|x| x.get("text").and_then(Value::as_str))
                        .collect::<Vec<_>>()
                        .join("\n\n"),
                    Some(_) => return Err(bad(format!("{}.content: a string or blocks.", at()))),
                };
                let text = if b.get("is_error") == Some(&Value::Bool(true)) {
                    format!("Error: {text}")
                } else {
                    text
                };
                out.push(json!({"role": "tool", "tool_call_id": id, "content": text}));
            }
            // Earlier turns' reasoning: chat backends take none back.
            Some("thinking" | "redacted_thinking") => {}
            Some(other) => {
                return Err(bad(format!(
                    "{}: block type `{other}` cannot be sent to a chat completions model.",
                    at()
                )))
            }
            None => return Err(bad(format!("{}.type: Field required.", at()))),
        }
    }
    if !parts.is_empty() {
        // One text part is sent as plain content (every chat backend takes that).
        let content = match parts.as_slice() {
            [p] if p["type"] == "text" => p["text"].clone(),
            _ => Value::Array(parts),
        };
        out.push(json!({"role": "user", "content": content}));
    }
    Ok(())
}

/// An assistant turn: its text, and `tool_use` blocks as `tool_calls`.
fn assistant_message(content: &Value, i: usize) -> Result<Value, Error> {
    let blocks = match content {
        Value::String(s) => return Ok(json!({"role": "assistant", "content": s})),
        Value::Array(b) => b,
        _ => {
            return Err(bad(format!(
                "messages.{i}.content: must be a string or an array of blocks."
            )))
        }
    };
    let mut text = String::new();
    let mut calls = Vec::new();
    for (j, b) in blocks.iter().enumerate() {
        match b.get("type").and_then(Value::as_str) {
            Some("text") => text.push_str(b.get("text").and_then(Value::as_str).unwrap_or("")),
            Some("tool_use") => {
                let (Some(id), Some(name)) = (
                    b.get("id").and_then(Value::as_str),
                    b.get("name").and_then(Value::as_str),
                ) else {
                    return Err(bad(format!(
                        "messages.{i}.content.{j}: tool_use needs `id` and `name`."
                    )));
                };
                let input = b.get("input").cloned().unwrap_or_else(|| json!({}));
                calls.push(json!({"id": id, "type": "function",
                    "function": {"name": name, "arguments": input.to_string()}}));
            }
            Some("thinking" | "redacted_thinking") => {}
            _ => {
                return Err(bad(format!(
                    "messages.{i}.content.{j}: an assistant turn holds text and tool_use blocks."
                )))
            }
        }
    }
    let mut m = json!({"role": "assistant", "content": if text.is_empty() && !calls.is_empty() { Value::Null } else { Value::String(text) }});
    if !calls.is_empty() {
        m["tool_calls"] = Value::Array(calls);
    }
    Ok(m)
}

fn stop_reason(finish: Option<&str>) -> &'static str {
    match finish {
        Some("length") => "max_tokens",
        Some("tool_calls" | "function_call") => "tool_use",
        Some("content_filter") => "refusal",
        _ => "end_turn",
    }
}

fn message_id(chat_id: Option<&str>) -> String {
    match chat_id {
        Some(id) => format!("msg_{}", id.trim_start_matches("chatcmpl-")),
        None => format!("msg_vsr{:016x}", rand::random::<u64>()),
    }
}

/// A chat completion as a Messages `message`; None when it is not one.
pub fn message_from_chat(chat: &[u8]) -> Option<Vec<u8>> {
    let c: Value = serde_json::from_slice(chat).ok()?;
    let choice = c.get("choices")?.get(0)?;
    let msg = choice.get("message")?;
    let mut content = Vec::new();
    if let Some(t) = msg
        .get("content")
        .and_then(Value::as_str)
        .filter(|t| !t.is_empty())
    {
        content.push(json!({"type": "text", "text": t}));
    }
    for call in msg
        .get("tool_calls")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let f = call.get("function");
        let args = f
            .and_then(|f| f.get("arguments"))
            .and_then(Value::as_str)
            .unwrap_or("{}");
        content.push(json!({
            "type": "tool_use",
            "id": call.get("id").and_then(Value::as_str).map(str::to_string)
                .unwrap_or_else(|| format!("toolu_vsr{:016x}", rand::random::<u64>())),
            "name": f.and_then(|f| f.get("name")).cloned().unwrap_or(Value::Null),
            "input": serde_json::from_str::<Value>(args).unwrap_or_else(|_| json!({})),
        }));
    }
    let usage = c.get("usage");
    let tokens = |k: &str| {
        usage
            .and_then(|u| u.get(k))
            .and_then(Value::as_u64)
            .unwrap_or(0)
    };
    let out = json!({
        "id": message_id(c.get("id").and_then(Value::as_str)),
        "type": "message",
        "role": "assistant",
        "model": c.get("model").cloned().unwrap_or(Value::Null),
        "content": content,
        "stop_reason": stop_reason(choice.get("finish_reason").and_then(Value::as_str)),
        "stop_sequence": null,
        "usage": {"input_tokens": tokens("prompt_tokens"), "output_tokens": tokens("completion_tokens")},
    });
    serde_json::to_vec(&out).ok()
}

pub fn error_body(status: u16, message: &str) -> Value {
    let kind = match status {
        400 => "invalid_request_error",
        401 => "authentication_error",
        403 => "permission_error",
        404 => "not_found_error",
        413 => "request_too_large",
        429 => "rate_limit_error",
        503 | 529 => "overloaded_error",
        _ if status < 500 => "invalid_request_error",
        _ => "api_error",
    };
    json!({"type": "error", "error": {"type": kind, "message": message}})
}

/// Chat completion chunks (SSE) in, Messages events out. Chunks may split anywhere; events are
/// cut at blank lines.
#[derive(Default)]
pub struct StreamTranslator {
    buf: Vec<u8>,
    started: bool,
    /// The open content block: its index and whether it is text (else a tool call's index).
    open: Option<(usize, Block)>,
    next_index: usize,
    stop_reason: Option<&'static str>,
    output_tokens: u64,
    input_tokens: u64,
    finished: bool,
}

#[derive(Clone, Copy, PartialEq)]
enum Block {
    Text,
    Tool(u64),
}

impl Events for StreamTranslator {
    fn buffer(&mut self) -> &mut Vec<u8> {
        &mut self.buf
    }

    fn data(&mut self, data: &str, out: &mut Vec<u8>) {
        self.chunk(data, out)
    }

    fn close(&mut self, out: &mut Vec<u8>) {
        self.end(out)
    }
}

impl StreamTranslator {
    fn start(&mut self, chunk: &Value, out: &mut Vec<u8>) {
        if self.started {
            return;
        }
        self.started = true;
        event(
            out,
            "message_start",
            &json!({"type": "message_start", "message": {
                "id": message_id(chunk.get("id").and_then(Value::as_str)),
                "type": "message", "role": "assistant",
                "model": chunk.get("model").cloned().unwrap_or(Value::Null),
                "content": [], "stop_reason": null, "stop_sequence": null,
                "usage": {"input_tokens": 0, "output_tokens": 0}}}),
        );
    }

    fn open_block(&mut self, kind: Block, start: Value, out: &mut Vec<u8>) -> usize {
        if let Some((i, k)) = self.open {
            if k == kind {
                return i;
            }
            event(
                out,
                "content_block_stop",
                &json!({"type": "content_block_stop", "index": i}),
            );
        }
        let i = self.next_index;
        self.next_index += 1;
        self.open = Some((i, kind));
        event(
            out,
            "content_block_start",
            &json!({"type": "content_block_start", "index": i, "content_block": start}),
        );
        i
    }

    fn chunk(&mut self, data: &str, out: &mut Vec<u8>) {
        if data == "[DONE]" {
            self.end(out);
            return;
        }
        let Ok(chunk) = serde_json::from_str::<Value>(data) else {
            return;
        };
        if let Some(e) = chunk.get("error") {
            // The router's or the backend's in-stream error.
            let msg = e
                .get("message")
                .and_then(Value::as_str)
                .unwrap_or("The backend stream failed.");
            event(out, "error", &error_body(500, msg));
            self.finished = true;
            return;
        }
        self.start(&chunk, out);
        if let Some(u) = chunk.get("usage").filter(|u| u.is_object()) {
            self.input_tokens = u.get("prompt_tokens").and_then(Value::as_u64).unwrap_or(0);
            self.output_tokens = u
                .get("completion_tokens")
                .and_then(Value::as_u64)
                .unwrap_or(0);
        }
        let Some(choice) = chunk.get("choices").and_then(|c| c.get(0)) else {
            return;
        };
        let delta = choice.get("delta");
        if let Some(t) = delta
            .and_then(|d| d.get("content"))
            .and_then(Value::as_str)
            .filter(|t| !t.is_empty())
        {
            let i = self.open_block(Block::Text, json!({"type": "text", "text": ""}), out);
            event(
                out,
                "content_block_delta",
                &json!({"type": "content_block_delta", "index": i,
                    "delta": {"type": "text_delta", "text": t}}),
            );
        }
        for call in delta
            .and_then(|d| d.get("tool_calls"))
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let idx = call.get("index").and_then(Value::as_u64).unwrap_or(0);
            let f = call.get("function");
            let i = if let Some((i, _)) = self.open.filter(|o| o.1 == Block::Tool(idx)) {
                i
            } else {
                let id = call
                    .get("id")
                    .and_then(Value::as_str)
                    .map(str::to_string)
                    .unwrap_or_else(|| format!("toolu_vsr{:016x}", rand::random::<u64>()));
                let name = f.and_then(|f| f.get("name")).cloned().unwrap_or(json!(""));
                self.open_block(
                    Block::Tool(idx),
                    json!({"type": "tool_use", "id": id, "name": name, "input": {}}),
                    out,
                )
            };
            if let Some(args) = f
                .and_then(|f| f.get("arguments"))
                .and_then(Value::as_str)
                .filter(|a| !a.is_empty())
            {
                event(
                    out,
                    "content_block_delta",
                    &json!({"type": "content_block_delta", "index": i,
                        "delta": {"type": "input_json_delta", "partial_json": args}}),
                );
            }
        }
        if let Some(f) = choice.get("finish_reason").and_then(Value::as_str) {
            self.stop_reason = Some(stop_reason(Some(f)));
        }
    }

    fn end(&mut self, out: &mut Vec<u8>) {
        if self.finished {
            return;
        }
        self.finished = true;
        if !self.started {
            self.start(&Value::Null, out);
        }
        if let Some((i, _)) = self.open.take() {
            event(
                out,
                "content_block_stop",
                &json!({"type": "content_block_stop", "index": i}),
            );
        }
        event(
            out,
            "message_delta",
            &json!({"type": "message_delta",
                "delta": {"stop_reason": self.stop_reason.unwrap_or("end_turn"), "stop_sequence": null},
                "usage": {"input_tokens": self.input_tokens, "output_tokens": self.output_tokens}}),
        );
        event(out, "message_stop", &json!({"type": "message_stop"}));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::dialect::Events;

    #[test]
    fn a_messages_request_becomes_chat() {
        let req = json!({
            "model": "auto", "max_tokens": 64, "temperature": 0.2, "top_k": 5,
            "stop_sequences": ["END"], "stream": true, "metadata": {"user_id": "u1"},
            "system": [{"type": "text", "text": "Be brief."}, {"type": "text", "text": "Be kind."}],
            "messages": [
                {"role": "user", "content": [
                    {"type": "text", "text": "What is this?"},
                    {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AAAA"}}]},
                {"role": "assistant", "content": [
                    {"type": "thinking", "thinking": "hmm", "signature": "x"},
                    {"type": "text", "text": "Let me look."},
                    {"type": "tool_use", "id": "toolu_1", "name": "lookup", "input": {"q": "png"}}]},
                {"role": "user", "content": [
                    {"type": "tool_result", "tool_use_id": "toolu_1", "content": [{"type": "text", "text": "a cat"}]},
                    {"type": "text", "text": "And now?"}]}
            ],
            "tools": [{"name": "lookup", "description": "Look up", "input_schema": {"type": "object"}}],
            "tool_choice": {"type": "any", "disable_parallel_tool_use": true}
        });
        let chat = to_chat(req.to_string().as_bytes()).unwrap();
        assert_eq!(
            chat["messages"],
            json!([
                {"role": "system", "content": "Be brief.\n\nBe kind."},
                {"role": "user", "content": [
                    {"type": "text", "text": "What is this?"},
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]},
                {"role": "assistant", "content": "Let me look.", "tool_calls": [
                    {"id": "toolu_1", "type": "function", "function": {"name": "lookup", "arguments": "{\"q\":\"png\"}"}}]},
                {"role": "tool", "tool_call_id": "toolu_1", "content": "a cat"},
                {"role": "user", "content": "And now?"}
            ])
        );
        assert_eq!(
            chat["tools"][0]["function"]["parameters"],
            json!({"type": "object"})
        );
        assert_eq!(chat["tool_choice"], "required");
        assert_eq!(chat["parallel_tool_calls"], false);
        assert_eq!(chat["stop"], json!(["END"]));
        assert_eq!(chat["user"], "u1");
        assert_eq!(chat["stream_options"]["include_usage"], true);
        assert_eq!(
            (chat["max_tokens"].as_u64(), chat["top_k"].as_u64()),
            (Some(64), Some(5))
        );
    }

    #[test]
    fn bad_messages_requests_are_refused_with_the_field() {
        for (body, needle) in [
            (json!({"max_tokens": 5, "messages": []}), "model"),
            (
                json!({"model": "m", "messages": [{"role": "user", "content": "x"}]}),
                "max_tokens",
            ),
            (
                json!({"model": "m", "max_tokens": 0, "messages": [{"role": "user", "content": "x"}]}),
                "max_tokens",
            ),
            (
                json!({"model": "m", "max_tokens": 5, "messages": []}),
                "messages",
            ),
            (
                json!({"model": "m", "max_tokens": 5, "messages": [{"role": "system", "content": "x"}]}),
                "messages.0.role",
            ),
            (
                json!({"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": [{"type": "document"}]}]}),
                "document",
            ),
            (
                json!({"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}],
                    "tools": [{"type": "web_search_20250305", "name": "web_search"}]}),
                "tools.0",
            ),
        ] {
            match to_chat(body.to_string().as_bytes()) {
                Err(Error::BadRequest { message, .. }) => {
                    assert!(message.contains(needle), "{message}")
                }
                other => panic!("{body}: {other:?}"),
            }
        }
        assert!(to_chat(b"{nope").is_err());
    }

    #[test]
    fn a_chat_answer_becomes_a_message() {
        let chat = json!({"id": "chatcmpl-7", "model": "small", "choices": [{"index": 0,
            "message": {"role": "assistant", "content": "Checking.", "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{\"a\":1}"}}]},
            "finish_reason": "tool_calls"}], "usage": {"prompt_tokens": 9, "completion_tokens": 4}});
        let m: Value =
            serde_json::from_slice(&message_from_chat(chat.to_string().as_bytes()).unwrap())
                .unwrap();
        assert_eq!(m["id"], "msg_7");
        assert_eq!(
            m["content"],
            json!([{"type": "text", "text": "Checking."},
            {"type": "tool_use", "id": "call_1", "name": "f", "input": {"a": 1}}])
        );
        assert_eq!(m["stop_reason"], "tool_use");
        assert_eq!(m["usage"], json!({"input_tokens": 9, "output_tokens": 4}));
        assert!(message_from_chat(b"{\"error\":{}}").is_none());
        let e: Value = serde_json::from_slice(&crate::api::dialect::error_from_openai::<Messages>(
            429,
            br#"{"error":{"message":"slow down"}}"#,
        ))
        .unwrap();
        assert_eq!(
            e,
            json!({"type": "error", "error": {"type": "rate_limit_error", "message": "slow down"}})
        );
    }

    /// The events of a translated stream, as (name, data).
    fn events(out: &[u8]) -> Vec<(String, Value)> {
        String::from_utf8(out.to_vec())
            .unwrap()
            .split("\n\n")
            .filter(|e| !e.is_empty())
            .map(|e| {
                let (name, data) = e.split_once('\n').unwrap();
                (
                    name.strip_prefix("event: ").unwrap().to_string(),
                    serde_json::from_str(data.strip_prefix("data: ").unwrap()).unwrap(),
                )
            })
            .collect()
    }

    #[test]
    fn a_chat_stream_becomes_messages_events_however_it_is_cut() {
        let chunks = [
            json!({"id": "chatcmpl-1", "model": "small", "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]}),
            json!({"id": "chatcmpl-1", "model": "small", "choices": [{"index": 0, "delta": {"content": "Hel"}}]}),
            json!({"id": "chatcmpl-1", "model": "small", "choices": [{"index": 0, "delta": {"content": "lo"}}]}),
            json!({"id": "chatcmpl-1", "model": "small", "choices": [{"index": 0, "delta": {"tool_calls": [
                {"index": 0, "id": "call_9", "type": "function", "function": {"name": "f", "arguments": ""}}]}}]}),
            json!({"id": "chatcmpl-1", "model": "small", "choices": [{"index": 0, "delta": {"tool_calls": [
                {"index": 0, "function": {"arguments": "{\"a\":"}}]}}]}),
            json!({"id": "chatcmpl-1", "model": "small", "choices": [{"index": 0, "delta": {"tool_calls": [
                {"index": 0, "function": {"arguments": "1}"}}]}}]}),
            json!({"id": "chatcmpl-1", "model": "small", "choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]}),
            json!({"id": "chatcmpl-1", "model": "small", "choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 7}}),
        ];
        let mut wire: String = chunks.iter().map(|c| format!("data: {c}\n\n")).collect();
        wire.push_str("data: [DONE]\n\n");
        let mut whole = None;
        for cut in [1, 7, 64, wire.len()] {
            let mut tr = StreamTranslator::default();
            let mut out = Vec::new();
            for piece in wire.as_bytes().chunks(cut) {
                out.extend_from_slice(&tr.push(piece));
            }
            out.extend_from_slice(&tr.finish());
            let ev = events(&out);
            match &whole {
                None => whole = Some(ev),
                Some(w) => assert_eq!(&ev, w, "cut every {cut} bytes"),
            }
        }
        let ev = whole.unwrap();
        let names: Vec<&str> = ev.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "message_start",
                "content_block_start",
                "content_block_delta",
                "content_block_delta",
                "content_block_stop",
                "content_block_start",
                "content_block_delta",
                "content_block_delta",
                "content_block_stop",
                "message_delta",
                "message_stop"
            ]
        );
        assert_eq!(ev[0].1["message"]["id"], "msg_1");
        assert_eq!(
            ev[3].1["delta"],
            json!({"type": "text_delta", "text": "lo"})
        );
        assert_eq!(
            ev[5].1["content_block"],
            json!({"type": "tool_use", "id": "call_9", "name": "f", "input": {}})
        );
        assert_eq!(ev[5].1["index"], 1);
        assert_eq!(
            ev[7].1["delta"],
            json!({"type": "input_json_delta", "partial_json": "1}"})
        );
        assert_eq!(ev[9].1["delta"]["stop_reason"], "tool_use");
        assert_eq!(ev[9].1["usage"]["output_tokens"], 7);
    }

    #[test]
    fn a_stream_that_fails_or_ends_early_still_closes() {
        let mut tr = StreamTranslator::default();
        let out = tr.push(b"data: {\"error\":{\"message\":\"The backend stream broke off.\"}}\n\n");
        let ev = events(&out);
        assert_eq!(ev[0].0, "error");
        assert_eq!(ev[0].1["error"]["message"], "The backend stream broke off.");
        assert!(tr.finish().is_empty(), "nothing after the error");
        // Ended without [DONE]: the closing events are still sent, once.
        let mut tr = StreamTranslator::default();
        let mut out = tr.push(b"data: {\"id\":\"x\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"a\"}}]}\n\n").to_vec();
        out.extend_from_slice(&tr.finish());
        assert!(tr.finish().is_empty());
        let names: Vec<String> = events(&out).into_iter().map(|(n, _)| n).collect();
        assert_eq!(names.last().map(String::as_str), Some("message_stop"));
    }
}
