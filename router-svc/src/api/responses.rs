//! OpenAI's Responses API (`POST /v1/responses`: Codex, the openai SDK's `client.responses`,
//! agent frameworks) on the chat road. A request (`input` as a string or items, `instructions`,
//! function `tools`, `tool_choice`, `text.format` json_schema / json_object, sampling) becomes a
//! chat completions body; the chat answer becomes a `response` object, or the Responses stream
//! events (`response.created`, `response.in_progress`, `response.output_item.added`,
//! `response.content_part.added`, `response.output_text.delta`/`.done`,
//! `response.function_call_arguments.delta`/`.done`, `response.output_item.done`,
//! `response.completed`). Stored responses (`previous_response_id`) exist only on backends that
//! keep them: such a request must name a model with `api: [responses]`.

use serde_json::{json, Map, Value};

use super::dialect::{event, Dialect, Events};
use crate::config::{Api, Config};
use crate::error::Error;

/// The Responses API as a dialect of the chat road.
pub struct Responses;

impl Dialect for Responses {
    const API: Api = Api::Responses;
    type Stream = StreamTranslator;
    fn to_chat(raw: &[u8]) -> Result<Value, Error> {
        to_chat(raw)
    }
    fn from_chat(chat: &[u8]) -> Option<Vec<u8>> {
        response_from_chat(chat)
    }
    fn error_body(status: u16, message: &str) -> Value {
        let (kind, code) = match status {
            400 | 413 => ("invalid_request_error", "invalid_request"),
            401 => ("authentication_error", "invalid_api_key"),
            403 => ("permission_error", "forbidden"),
            404 => ("invalid_request_error", "model_not_found"),
            429 => ("rate_limit_error", "rate_limit_exceeded"),
            _ if status < 500 => ("invalid_request_error", "invalid_request"),
            _ => ("server_error", "upstream_error"),
        };
        crate::error::body(message, kind, None, code)
    }
    fn is_error_body(v: &Value) -> bool {
        v.get("error").is_some_and(Value::is_object)
    }
    /// The router's own OpenAI-format errors, `param` included.
    fn error_response(e: Error) -> axum::response::Response {
        axum::response::IntoResponse::into_response(e)
    }
    fn admit(raw: &[u8], cfg: &Config) -> Result<(), Error> {
        #[derive(serde::Deserialize)]
        struct Head {
            model: Option<String>,
            previous_response_id: Option<String>,
        }
        let Ok(head) = serde_json::from_slice::<Head>(raw) else {
            return Ok(()); // to_chat says what is wrong
        };
        if head.previous_response_id.is_some() {
            let native = head
                .model
                .as_deref()
                .and_then(|m| cfg.model(m))
                .is_some_and(|m| m.serves(Api::Responses));
            if !native {
                return Err(Error::bad_request(
                    "`previous_response_id` continues a response stored by the backend: it needs \
                     a model named explicitly whose backend serves /v1/responses (`api: [responses]` \
                     in the router's config). The router stores no responses; send the \
                     conversation as `input` items instead.",
                    Some("previous_response_id"),
                ));
            }
        }
        Ok(())
    }
}

fn bad(message: impl Into<String>, param: &'static str) -> Error {
    Error::bad_request(message, Some(param))
}

/// The chat completions body for a Responses request.
pub fn to_chat(raw: &[u8]) -> Result<Value, Error> {
    let v: Value = serde_json::from_slice(raw).map_err(|e| {
        Error::bad_request(
            format!("We could not parse the JSON body of your request: {e}"),
            None,
        )
    })?;
    let Value::Object(req) = v else {
        return Err(Error::bad_request(
            "The request body must be a JSON object.",
            None,
        ));
    };
    let model = match req.get("model") {
        Some(Value::String(m)) if !m.is_empty() => m.clone(),
        _ => return Err(bad("You must provide a model parameter.", "model")),
    };
    let mut messages = Vec::new();
    match req.get("instructions") {
        None | Some(Value::Null) => {}
        Some(Value::String(s)) => messages.push(json!({"role": "system", "content": s})),
        Some(_) => return Err(bad("`instructions` must be a string.", "instructions")),
    }
    match req.get("input") {
        Some(Value::String(s)) => messages.push(json!({"role": "user", "content": s})),
        Some(Value::Array(items)) if !items.is_empty() => {
            for (i, item) in items.iter().enumerate() {
                input_item(item, i, &mut messages)?;
            }
        }
        _ => {
            return Err(bad(
                "`input` must be a string or a non-empty array of items.",
                "input",
            ))
        }
    }
    let mut chat = Map::new();
    chat.insert("model".into(), Value::String(model));
    chat.insert("messages".into(), Value::Array(messages));
    if let Some(n) = req.get("max_output_tokens").filter(|v| !v.is_null()) {
        if n.as_u64().is_none_or(|n| n < 1) {
            return Err(bad(
                "`max_output_tokens` must be an integer >= 1.",
                "max_output_tokens",
            ));
        }
        chat.insert("max_tokens".into(), n.clone());
    }
    for k in ["temperature", "top_p", "user", "parallel_tool_calls"] {
        if let Some(v) = req.get(k).filter(|v| !v.is_null()) {
            chat.insert(k.into(), v.clone());
        }
    }
    if let Some(e) = req
        .get("reasoning")
        .and_then(|r| r.get("effort"))
        .filter(|e| e.is_string())
    {
        chat.insert("reasoning_effort".into(), e.clone());
    }
    match req.get("stream") {
        None | Some(Value::Null) | Some(Value::Bool(false)) => {}
        Some(Value::Bool(true)) => {
            chat.insert("stream".into(), Value::Bool(true));
            // The usage goes into `response.completed`.
            chat.insert("stream_options".into(), json!({"include_usage": true}));
        }
        Some(_) => return Err(bad("`stream` must be a boolean.", "stream")),
    }
    match req.get("tools") {
        None | Some(Value::Null) => {}
        Some(Value::Array(tools)) => {
            let mut out = Vec::with_capacity(tools.len());
            for (i, t) in tools.iter().enumerate() {
                if t.get("type").and_then(Value::as_str) != Some("function") {
                    return Err(bad(
                        format!(
                            "tools[{i}]: only function tools can be routed to a chat completions \
                             model (built-in tools such as web_search run at OpenAI)."
                        ),
                        "tools",
                    ));
                }
                let Some(name) = t.get("name").and_then(Value::as_str) else {
                    return Err(bad(format!("tools[{i}].name is required."), "tools"));
                };
                let mut f = json!({"name": name});
                for k in ["description", "parameters", "strict"] {
                    if let Some(v) = t.get(k).filter(|v| !v.is_null()) {
                        f[k] = v.clone();
                    }
                }
                out.push(json!({"type": "function", "function": f}));
            }
            chat.insert("tools".into(), Value::Array(out));
        }
        Some(_) => return Err(bad("`tools` must be an array.", "tools")),
    }
    match req.get("tool_choice") {
        None | Some(Value::Null) => {}
        Some(Value::String(s)) if matches!(s.as_str(), "auto" | "none" | "required") => {
            chat.insert("tool_choice".into(), Value::String(s.clone()));
        }
        Some(tc) if tc.get("type").and_then(Value::as_str) == Some("function") => {
            let Some(name) = tc.get("name").and_then(Value::as_str) else {
                return Err(bad("`tool_choice.name` is required.", "tool_choice"));
            };
            chat.insert(
                "tool_choice".into(),
                json!({"type": "function", "function": {"name": name}}),
            );
        }
        Some(_) => {
            return Err(bad(
                "`tool_choice` must be auto, none, required or a function.",
                "tool_choice",
            ))
        }
    }
    if let Some(format) = req.get("text").and_then(|t| t.get("format")) {
        match format.get("type").and_then(Value::as_str) {
            None | Some("text") => {}
            Some("json_object") => {
                chat.insert("response_format".into(), json!({"type": "json_object"}));
            }
            Some("json_schema") => {
                let mut js = Map::new();
                for k in ["name", "schema", "strict", "description"] {
                    if let Some(v) = format.get(k).filter(|v| !v.is_null()) {
                        js.insert(k.into(), v.clone());
                    }
                }
                if !js.contains_key("schema") {
                    return Err(bad("`text.format.schema` is required.", "text"));
                }
                chat.insert(
                    "response_format".into(),
                    json!({"type": "json_schema", "json_schema": js}),
                );
            }
            Some(other) => {
                return Err(bad(
                    format!("`text.format.type` {other:?} is not supported."),
                    "text",
                ))
            }
        }
    }
    Ok(Value::Object(chat))
}

/// Text of a content (a string, or parts with `text`); images as chat `image_url` parts.
fn content(c: &Value, at: &str) -> Result<Value, Error> {
    match c {
        Value::String(s) => Ok(Value::String(s.clone())),
        Value::Array(parts) => {
            let mut out = Vec::with_capacity(parts.len());
            for (j, p) in parts.iter().enumerate() {
                match p.get("type").and_then(Value::as_str) {
                    Some("input_text" | "output_text" | "text") => {
                        let t = p.get("text").and_then(Value::as_str).unwrap_or("");
                        out.push(json!({"type": "text", "text": t}));
                    }
                    Some("input_image") => match p.get("image_url").and_then(Value::as_str) {
                        Some(u) => out.push(json!({"type": "image_url", "image_url": {"url": u}})),
                        None => {
                            return Err(bad(
                                format!("{at}.content[{j}]: only images by `image_url` (a URL or a data URL) can be sent to a chat model."),
                                "input",
                            ))
                        }
                    },
                    Some("refusal") => {}
                    other => {
                        return Err(bad(
                            format!("{at}.content[{j}]: part type {other:?} cannot be sent to a chat completions model."),
                            "input",
                        ))
                    }
                }
            }
            // One text part is sent as plain content (every chat backend takes that).
            Ok(match out.as_slice() {
                [p] if p["type"] == "text" => p["text"].clone(),
                _ => Value::Array(out),
            })
        }
        _ => Err(bad(
            format!("{at}.content must be a string or an array of parts."),
            "input",
        )),
    }
}

/// One input item as chat messages (function calls join the assistant message before them).
fn input_item(item: &Value, i: usize, out: &mut Vec<Value>) -> Result<(), Error> {
    let at = format!("input[{i}]");
    let kind = item.get("type").and_then(Value::as_str);
    match kind {
        None | Some("message") => {
            let role = match item.get("role").and_then(Value::as_str) {
                Some(r @ ("user" | "assistant" | "system")) => r,
                // Chat templates know `system`; the Responses API's `developer` is the same.
                Some("developer") => "system",
                _ => {
                    return Err(bad(
                        format!("{at}.role must be user, assistant, system or developer."),
                        "input",
                    ))
                }
            };
            let c = content(item.get("content").unwrap_or(&Value::Null), &at)?;
            let c = match (role, c) {
                // An assistant's earlier answer goes back as its text.
                ("assistant", Value::Array(parts)) => Value::String(
                    parts
                        .iter()
                        .filter_map(|p| p.get("text").and_then(Value::as_str))
                        .collect::<Vec<_>>()
                        .join(""),
                ),
                (_, c) => c,
            };
            out.push(json!({"role": role, "content": c}));
        }
        Some("function_call") => {
            let (Some(call_id), Some(name)) = (
                item.get("call_id").and_then(Value::as_str),
                item.get("name").and_then(Value::as_str),
            ) else {
                return Err(bad(
                    format!("{at}: a function_call needs `call_id` and `name`."),
                    "input",
                ));
            };
            let args = item.get("arguments").and_then(Value::as_str).unwrap_or("{}");
            let call = json!({"id": call_id, "type": "function",
                "function": {"name": name, "arguments": args}});
            let joins = out.last().is_some_and(|m| {
                m["role"] == "assistant" && (m.get("tool_calls").is_some() || m["content"].is_string())
            });
            if joins {
                let last = out.last_mut().expect("checked");
                match last.get_mut("tool_calls").and_then(Value::as_array_mut) {
                    Some(calls) => calls.push(call),
                    None => last["tool_calls"] = json!([call]),
                }
            } else {
                out.push(json!({"role": "assistant", "content": null, "tool_calls": [call]}));
            }
        }
        Some("function_call_output") => {
            let Some(call_id) = item.get("call_id").and_then(Value::as_str) else {
                return Err(bad(
                    format!("{at}: a function_call_output needs `call_id`."),
                    "input",
                ));
            };
            let output = match item.get("output") {
                Some(Value::String(s)) => s.clone(),
                Some(Value::Array(parts)) => parts
                    .iter()
                    .filter_map(|p| p.get("text").and_then(Value::as_str))
                    .collect::<Vec<_>>()
                    .join(""),
                _ => String::new(),
            };
            out.push(json!({"role": "tool", "tool_call_id": call_id, "content": output}));
        }
        // Earlier reasoning: chat backends take none back.
        Some("reasoning") => {}
        Some(other) => {
            return Err(bad(
                format!("{at}: item type {other:?} cannot be sent to a chat completions model (item references need a backend that stores responses)."),
                "input",
            ))
        }
    }
    Ok(())
}

fn response_id(chat_id: Option<&str>) -> String {
    match chat_id {
        Some(id) => format!("resp_{}", id.trim_start_matches("chatcmpl-")),
        None => format!("resp_vsr{:016x}", rand::random::<u64>()),
    }
}

fn usage(prompt: u64, completion: u64) -> Value {
    json!({"input_tokens": prompt, "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": completion, "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": prompt + completion})
}

/// The response object around `output`.
fn response(
    id: &str,
    model: &Value,
    created: u64,
    status: &str,
    output: Vec<Value>,
    finish: Option<&str>,
    usage: Value,
) -> Value {
    json!({
        "id": id, "object": "response", "created_at": created, "status": status,
        "model": model, "output": output, "usage": usage, "error": null,
        "incomplete_details": if finish == Some("length") { json!({"reason": "max_output_tokens"}) } else { Value::Null },
        "instructions": null, "metadata": {}, "parallel_tool_calls": true, "previous_response_id": null,
        "store": false, "temperature": null, "top_p": null, "tool_choice": "auto", "tools": [],
        "text": {"format": {"type": "text"}}, "truncation": "disabled",
    })
}

fn status_of(finish: Option<&str>) -> &'static str {
    if finish == Some("length") {
        "incomplete"
    } else {
        "completed"
    }
}

fn message_item(id: &str, text: &str, status: &str) -> Value {
    json!({"type": "message", "id": id, "status": status, "role": "assistant",
        "content": [{"type": "output_text", "text": text, "annotations": []}]})
}

fn call_item(id: &str, call_id: &str, name: &Value, args: &str, status: &str) -> Value {
    json!({"type": "function_call", "id": id, "call_id": call_id, "name": name,
        "arguments": args, "status": status})
}

/// A chat completion as a `response` object; None when it is not one.
pub fn response_from_chat(chat: &[u8]) -> Option<Vec<u8>> {
    let c: Value = serde_json::from_slice(chat).ok()?;
    let choice = c.get("choices")?.get(0)?;
    let msg = choice.get("message")?;
    let id = response_id(c.get("id").and_then(Value::as_str));
    let mut output = Vec::new();
    if let Some(t) = msg
        .get("content")
        .and_then(Value::as_str)
        .filter(|t| !t.is_empty())
    {
        output.push(message_item(&format!("msg_{}", &id[5..]), t, "completed"));
    }
    for (k, call) in msg
        .get("tool_calls")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .enumerate()
    {
        let f = call.get("function");
        let call_id = call.get("id").and_then(Value::as_str).unwrap_or("call");
        output.push(call_item(
            &format!("fc_{}_{k}", &id[5..]),
            call_id,
            f.and_then(|f| f.get("name")).unwrap_or(&Value::Null),
            f.and_then(|f| f.get("arguments"))
                .and_then(Value::as_str)
                .unwrap_or("{}"),
            "completed",
        ));
    }
    let u = c.get("usage");
    let tokens = |k: &str| {
        u.and_then(|u| u.get(k))
            .and_then(Value::as_u64)
            .unwrap_or(0)
    };
    let finish = choice.get("finish_reason").and_then(Value::as_str);
    let out = response(
        &id,
        c.get("model").unwrap_or(&Value::Null),
        c.get("created").and_then(Value::as_u64).unwrap_or(0),
        status_of(finish),
        output,
        finish,
        usage(tokens("prompt_tokens"), tokens("completion_tokens")),
    );
    serde_json::to_vec(&out).ok()
}

/// An output item being streamed.
enum Open {
    Message {
        index: usize,
        id: String,
        text: String,
    },
    Call {
        index: usize,
        tool: u64,
        id: String,
        call_id: String,
        name: Value,
        args: String,
    },
}

/// Chat completion chunks in, Responses stream events out.
#[derive(Default)]
pub struct StreamTranslator {
    buf: Vec<u8>,
    seq: u64,
    id: String,
    model: Value,
    created: u64,
    started: bool,
    open: Option<Open>,
    done: Vec<Value>,
    finish: Option<String>,
    tokens: (u64, u64),
    finished: bool,
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
    fn emit(&mut self, out: &mut Vec<u8>, mut data: Value) {
        data["sequence_number"] = json!(self.seq);
        self.seq += 1;
        let name = data["type"].as_str().unwrap_or("").to_string();
        event(out, &name, &data);
    }

    fn snapshot(&self, status: &str, output: Vec<Value>) -> Value {
        let finish = self.finish.as_deref();
        response(
            &self.id,
            &self.model,
            self.created,
            status,
            output,
            finish,
            usage(self.tokens.0, self.tokens.1),
        )
    }

    fn start(&mut self, chunk: &Value, out: &mut Vec<u8>) {
        if self.started {
            return;
        }
        self.started = true;
        self.id = response_id(chunk.get("id").and_then(Value::as_str));
        self.model = chunk.get("model").cloned().unwrap_or(Value::Null);
        self.created = chunk.get("created").and_then(Value::as_u64).unwrap_or(0);
        let snap = self.snapshot("in_progress", Vec::new());
        self.emit(
            out,
            json!({"type": "response.created", "response": snap.clone()}),
        );
        self.emit(
            out,
            json!({"type": "response.in_progress", "response": snap}),
        );
    }

    /// Ends the open item (its `.done` events) and keeps it for the final response.
    fn close_item(&mut self, out: &mut Vec<u8>) {
        match self.open.take() {
            Some(Open::Message { index, id, text }) => {
                let part = json!({"type": "output_text", "text": text, "annotations": []});
                self.emit(
                    out,
                    json!({"type": "response.output_text.done", "item_id": id,
                    "output_index": index, "content_index": 0, "text": text}),
                );
                self.emit(
                    out,
                    json!({"type": "response.content_part.done", "item_id": id,
                    "output_index": index, "content_index": 0, "part": part}),
                );
                let item = message_item(&id, &text, "completed");
                self.emit(
                    out,
                    json!({"type": "response.output_item.done",
                    "output_index": index, "item": item.clone()}),
                );
                self.done.push(item);
            }
            Some(Open::Call {
                index,
                id,
                call_id,
                name,
                args,
                ..
            }) => {
                self.emit(
                    out,
                    json!({"type": "response.function_call_arguments.done",
                    "item_id": id, "output_index": index, "arguments": args}),
                );
                let item = call_item(&id, &call_id, &name, &args, "completed");
                self.emit(
                    out,
                    json!({"type": "response.output_item.done",
                    "output_index": index, "item": item.clone()}),
                );
                self.done.push(item);
            }
            None => {}
        }
    }

    fn chunk(&mut self, data: &str, out: &mut Vec<u8>) {
        if self.finished {
            return;
        }
        if data == "[DONE]" {
            self.end(out);
            return;
        }
        let Ok(chunk) = serde_json::from_str::<Value>(data) else {
            return;
        };
        if let Some(e) = chunk.get("error") {
            let msg = e
                .get("message")
                .and_then(Value::as_str)
                .unwrap_or("The backend stream failed.")
                .to_string();
            self.emit(
                out,
                json!({"type": "error", "code": "upstream_error", "message": msg, "param": null}),
            );
            self.finished = true;
            return;
        }
        self.start(&chunk, out);
        if let Some(u) = chunk.get("usage").filter(|u| u.is_object()) {
            let t = |k: &str| u.get(k).and_then(Value::as_u64).unwrap_or(0);
            self.tokens = (t("prompt_tokens"), t("completion_tokens"));
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
            if !matches!(self.open, Some(Open::Message { .. })) {
                self.close_item(out);
                let index = self.done.len();
                let id = format!("msg_{}", &self.id[5..]);
                self.emit(out, json!({"type": "response.output_item.added", "output_index": index,
                    "item": {"type": "message", "id": id, "status": "in_progress", "role": "assistant", "content": []}}));
                self.emit(
                    out,
                    json!({"type": "response.content_part.added", "item_id": id,
                    "output_index": index, "content_index": 0,
                    "part": {"type": "output_text", "text": "", "annotations": []}}),
                );
                self.open = Some(Open::Message {
                    index,
                    id,
                    text: String::new(),
                });
            }
            if let Some(Open::Message { index, id, text }) = &mut self.open {
                text.push_str(t);
                let ev = json!({"type": "response.output_text.delta", "item_id": id,
                    "output_index": index, "content_index": 0, "delta": t});
                self.emit(out, ev);
            }
        }
        for call in delta
            .and_then(|d| d.get("tool_calls"))
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let tool = call.get("index").and_then(Value::as_u64).unwrap_or(0);
            let f = call.get("function");
            if !matches!(&self.open, Some(Open::Call { tool: t, .. }) if *t == tool) {
                self.close_item(out);
                let index = self.done.len();
                let id = format!("fc_{}_{index}", &self.id[5..]);
                let call_id = call
                    .get("id")
                    .and_then(Value::as_str)
                    .map_or_else(|| format!("call_{index}"), str::to_string);
                let name = f.and_then(|f| f.get("name")).cloned().unwrap_or(json!(""));
                let item = call_item(&id, &call_id, &name, "", "in_progress");
                self.emit(out, json!({"type": "response.output_item.added", "output_index": index, "item": item}));
                self.open = Some(Open::Call {
                    index,
                    tool,
                    id,
                    call_id,
                    name,
                    args: String::new(),
                });
            }
            if let Some(a) = f
                .and_then(|f| f.get("arguments"))
                .and_then(Value::as_str)
                .filter(|a| !a.is_empty())
            {
                if let Some(Open::Call {
                    index, id, args, ..
                }) = &mut self.open
                {
                    args.push_str(a);
                    let ev = json!({"type": "response.function_call_arguments.delta",
                        "item_id": id, "output_index": index, "delta": a});
                    self.emit(out, ev);
                }
            }
        }
        if let Some(f) = choice.get("finish_reason").and_then(Value::as_str) {
            self.finish = Some(f.to_string());
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
        self.close_item(out);
        let output = std::mem::take(&mut self.done);
        let status = status_of(self.finish.as_deref());
        let snap = self.snapshot(status, output);
        let kind = if status == "completed" {
            "response.completed"
        } else {
            "response.incomplete"
        };
        self.emit(out, json!({"type": kind, "response": snap}));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_responses_request_becomes_chat() {
        let req = json!({
            "model": "auto", "instructions": "Be brief.", "max_output_tokens": 32,
            "temperature": 0.1, "reasoning": {"effort": "low"}, "stream": true,
            "input": [
                {"role": "developer", "content": "Answer in French."},
                {"type": "message", "role": "user", "content": [
                    {"type": "input_text", "text": "What is this?"},
                    {"type": "input_image", "image_url": "https://x/cat.png"}]},
                {"type": "reasoning", "id": "rs_1", "summary": []},
                {"type": "function_call", "call_id": "call_1", "name": "look", "arguments": "{\"q\":1}"},
                {"type": "function_call", "call_id": "call_2", "name": "look", "arguments": "{\"q\":2}"},
                {"type": "function_call_output", "call_id": "call_1", "output": "a cat"},
                {"role": "assistant", "content": [{"type": "output_text", "text": "A cat."}]}
            ],
            "tools": [{"type": "function", "name": "look", "parameters": {"type": "object"}, "strict": true}],
            "tool_choice": {"type": "function", "name": "look"},
            "text": {"format": {"type": "json_schema", "name": "out", "schema": {"type": "object"}, "strict": true}}
        });
        let chat = to_chat(req.to_string().as_bytes()).unwrap();
        assert_eq!(
            chat["messages"],
            json!([
                {"role": "system", "content": "Be brief."},
                {"role": "system", "content": "Answer in French."},
                {"role": "user", "content": [
                    {"type": "text", "text": "What is this?"},
                    {"type": "image_url", "image_url": {"url": "https://x/cat.png"}}]},
                {"role": "assistant", "content": null, "tool_calls": [
                    {"id": "call_1", "type": "function", "function": {"name": "look", "arguments": "{\"q\":1}"}},
                    {"id": "call_2", "type": "function", "function": {"name": "look", "arguments": "{\"q\":2}"}}]},
                {"role": "tool", "tool_call_id": "call_1", "content": "a cat"},
                {"role": "assistant", "content": "A cat."}
            ])
        );
        assert_eq!(
            chat["response_format"],
            json!({"type": "json_schema", "json_schema": {"name": "out", "schema": {"type": "object"}, "strict": true}})
        );
        assert_eq!(
            chat["tools"][0],
            json!({"type": "function", "function": {"name": "look", "parameters": {"type": "object"}, "strict": true}})
        );
        assert_eq!(
            chat["tool_choice"],
            json!({"type": "function", "function": {"name": "look"}})
        );
        assert_eq!(chat["max_tokens"], 32);
        assert_eq!(chat["reasoning_effort"], "low");
        assert_eq!(chat["stream_options"]["include_usage"], true);
        let plain = to_chat(br#"{"model":"m","input":"hi"}"#).unwrap();
        assert_eq!(
            plain["messages"],
            json!([{"role": "user", "content": "hi"}])
        );
    }

    #[test]
    fn what_cannot_be_translated_is_refused_with_the_param() {
        for (body, param) in [
            (json!({"input": "x"}), "model"),
            (json!({"model": "m"}), "input"),
            (json!({"model": "m", "input": []}), "input"),
            (
                json!({"model": "m", "input": [{"type": "item_reference", "id": "msg_1"}]}),
                "input",
            ),
            (
                json!({"model": "m", "input": "x", "tools": [{"type": "web_search"}]}),
                "tools",
            ),
            (
                json!({"model": "m", "input": "x", "max_output_tokens": 0}),
                "max_output_tokens",
            ),
            (
                json!({"model": "m", "input": "x", "text": {"format": {"type": "json_schema", "name": "n"}}}),
                "text",
            ),
        ] {
            match to_chat(body.to_string().as_bytes()) {
                Err(Error::BadRequest { param: p, .. }) => assert_eq!(p, Some(param), "{body}"),
                other => panic!("{body}: {other:?}"),
            }
        }
        let cfg = Config::from_yaml(crate::config::EMBEDDED_DEFAULT).unwrap();
        let stored = br#"{"model":"auto","input":"x","previous_response_id":"resp_1"}"#;
        assert!(Responses::admit(stored, &cfg).is_err());
        assert!(Responses::admit(br#"{"model":"auto","input":"x"}"#, &cfg).is_ok());
    }

    #[test]
    fn a_chat_answer_becomes_a_response() {
        let chat = json!({"id": "chatcmpl-7", "created": 5, "model": "small", "choices": [{"index": 0,
            "message": {"role": "assistant", "content": "Checking.", "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
            "finish_reason": "tool_calls"}], "usage": {"prompt_tokens": 9, "completion_tokens": 4}});
        let r: Value =
            serde_json::from_slice(&response_from_chat(chat.to_string().as_bytes()).unwrap())
                .unwrap();
        assert_eq!(
            (r["id"].as_str(), r["status"].as_str()),
            (Some("resp_7"), Some("completed"))
        );
        assert_eq!(
            r["output"][0]["content"][0],
            json!({"type": "output_text", "text": "Checking.", "annotations": []})
        );
        assert_eq!(r["output"][1]["type"], "function_call");
        assert_eq!(r["output"][1]["call_id"], "call_1");
        assert_eq!(r["usage"]["total_tokens"], 13);
    }

    #[test]
    fn a_chat_stream_becomes_responses_events_however_it_is_cut() {
        let chunks = [
            json!({"id": "chatcmpl-1", "model": "small", "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]}),
            json!({"id": "chatcmpl-1", "model": "small", "choices": [{"index": 0, "delta": {"content": "Hel"}}]}),
            json!({"id": "chatcmpl-1", "model": "small", "choices": [{"index": 0, "delta": {"content": "lo"}}]}),
            json!({"id": "chatcmpl-1", "model": "small", "choices": [{"index": 0, "delta": {"tool_calls": [
                {"index": 0, "id": "call_9", "type": "function", "function": {"name": "f", "arguments": "{\"a\":"}}]}}]}),
            json!({"id": "chatcmpl-1", "model": "small", "choices": [{"index": 0, "delta": {"tool_calls": [
                {"index": 0, "function": {"arguments": "1}"}}]}}]}),
            json!({"id": "chatcmpl-1", "model": "small", "choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]}),
            json!({"id": "chatcmpl-1", "model": "small", "choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 7}}),
        ];
        let mut wire: String = chunks.iter().map(|c| format!("data: {c}\n\n")).collect();
        wire.push_str("data: [DONE]\n\n");
        let mut whole: Option<Vec<Value>> = None;
        for cut in [1, 5, 100, wire.len()] {
            let mut tr = StreamTranslator::default();
            let mut out = Vec::new();
            for piece in wire.as_bytes().chunks(cut) {
                out.extend_from_slice(&tr.push(piece));
            }
            out.extend_from_slice(&tr.finish());
            let evs: Vec<Value> = String::from_utf8(out)
                .unwrap()
                .split("\n\n")
                .filter(|e| !e.is_empty())
                .map(|e| {
                    let (name, data) = e.split_once('\n').unwrap();
                    let v: Value =
                        serde_json::from_str(data.strip_prefix("data: ").unwrap()).unwrap();
                    assert_eq!(
                        Some(name.strip_prefix("event: ").unwrap()),
                        v["type"].as_str()
                    );
                    v
                })
                .collect();
            match &whole {
                None => whole = Some(evs),
                Some(w) => assert_eq!(&evs, w, "cut every {cut} bytes"),
            }
        }
        let evs = whole.unwrap();
        let types: Vec<&str> = evs.iter().map(|e| e["type"].as_str().unwrap()).collect();
        assert_eq!(
            types,
            [
                "response.created",
                "response.in_progress",
                "response.output_item.added",
                "response.content_part.added",
                "response.output_text.delta",
                "response.output_text.delta",
                "response.output_text.done",
                "response.content_part.done",
                "response.output_item.done",
                "response.output_item.added",
                "response.function_call_arguments.delta",
                "response.function_call_arguments.delta",
                "response.function_call_arguments.done",
                "response.output_item.done",
                "response.completed"
            ]
        );
        let seqs: Vec<u64> = evs
            .iter()
            .map(|e| e["sequence_number"].as_u64().unwrap())
            .collect();
        assert_eq!(seqs, (0..evs.len() as u64).collect::<Vec<_>>());
        assert_eq!(evs[6]["text"], "Hello");
        assert_eq!(evs[9]["output_index"], 1);
        assert_eq!(evs[12]["arguments"], "{\"a\":1}");
        let done = &evs[14]["response"];
        assert_eq!(done["status"], "completed");
        assert_eq!(done["output"].as_array().unwrap().len(), 2);
        assert_eq!(done["usage"]["output_tokens"], 7);
    }
}
