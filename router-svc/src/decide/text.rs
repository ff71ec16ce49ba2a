//! What text of a request is classified: the latest user message (string content, or the text
//! parts of an array), optionally with the system prompt and earlier turns, within a budget.

use serde_json::Value;

use crate::config::InputConfig;

/// Text of one message's `content`: a string, or the `text` parts of an array of parts.
pub fn content_text(content: &Value) -> Option<String> {
    match content {
        Value::String(s) => Some(s.clone()),
        Value::Array(parts) => {
            let texts: Vec<&str> = text_parts(parts).collect();
            (!texts.is_empty()).then(|| texts.join("\n"))
        }
        _ => None,
    }
}

/// The texts of an array of content parts (parts of type `text`, or with no type).
pub fn text_parts(parts: &[Value]) -> impl Iterator<Item = &str> {
    parts
        .iter()
        .filter(|p| p.get("type").and_then(Value::as_str).unwrap_or("text") == "text")
        .filter_map(|p| p.get("text").and_then(Value::as_str))
}

/// Cuts `s` to at most `max` characters, on a character boundary.
fn cut(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

/// A chat message as read here: a JSON object of a tree, or a message `api::probe` read.
pub trait Turn {
    /// The role, "" when it has none.
    fn role(&self) -> &str;
    fn content(&self) -> Option<&Value>;
}

impl Turn for Value {
    fn role(&self) -> &str {
        self.get("role").and_then(Value::as_str).unwrap_or("")
    }
    fn content(&self) -> Option<&Value> {
        self.get("content")
    }
}

impl Turn for crate::api::probe::Message {
    fn role(&self) -> &str {
        self.role.as_deref().unwrap_or("")
    }
    fn content(&self) -> Option<&Value> {
        self.content.as_ref()
    }
}

/// The text to classify for a chat request, or None when it has no user text.
pub fn from_messages<M: Turn>(messages: &[M], cfg: &InputConfig) -> Option<String> {
    let last_user = messages.iter().rposition(|m| m.role() == "user")?;
    let latest = content_text(messages[last_user].content()?)?;
    if latest.trim().is_empty() {
        return None;
    }
    let latest = cut(&latest, cfg.max_chars).to_string();
    let mut budget = cfg.max_chars.saturating_sub(latest.chars().count());
    let mut history = Vec::new();
    if cfg.history_messages > 0 {
        for m in messages[..last_user]
            .iter()
            .rev()
            .filter(|m| matches!(m.role(), "user" | "assistant"))
            .take(cfg.history_messages)
        {
            let Some(t) = m.content().and_then(content_text) else {
                continue;
            };
            let n = t.chars().count();
            if n > budget {
                break;
            }
            budget -= n;
            history.push(t);
        }
        history.reverse();
    }
    let mut parts = Vec::new();
    if cfg.include_system {
        if let Some(sys) = messages
            .iter()
            .find(|m| matches!(m.role(), "system" | "developer"))
            .and_then(Turn::content)
            .and_then(content_text)
        {
            parts.push(cut(&sys, budget).to_string());
        }
    }
    parts.extend(history);
    parts.push(latest);
    Some(parts.join("\n"))
}

/// The text to classify for a completions request: the prompt (the last one of a list).
pub fn from_prompt(prompt: &Value, cfg: &InputConfig) -> Option<String> {
    let s = match prompt {
        Value::String(s) => s.as_str(),
        Value::Array(items) => items.iter().rev().find_map(Value::as_str)?,
        _ => return None,
    };
    (!s.trim().is_empty()).then(|| cut(s, cfg.max_chars).to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn cfg() -> InputConfig {
        InputConfig::default()
    }

    #[test]
    fn latest_user_message_string_or_parts() {
        let msgs = vec![
            json!({"role": "system", "content": "be brief"}),
            json!({"role": "user", "content": "first"}),
            json!({"role": "assistant", "content": "ok"}),
            json!({"role": "user", "content": [
                {"type": "text", "text": "what is"},
                {"type": "image_url", "image_url": {"url": "http://x"}},
                {"type": "text", "text": "this?"}
            ]}),
        ];
        assert_eq!(from_messages(&msgs, &cfg()).unwrap(), "what is\nthis?");
        let with = InputConfig {
            include_system: true,
            history_messages: 2,
            ..cfg()
        };
        assert_eq!(
            from_messages(&msgs, &with).unwrap(),
            "be brief\nfirst\nok\nwhat is\nthis?"
        );
    }

    #[test]
    fn no_user_text_is_none() {
        assert!(from_messages(&[json!({"role": "system", "content": "x"})], &cfg()).is_none());
        assert!(from_messages(&[json!({"role": "user", "content": "  "})], &cfg()).is_none());
        assert!(from_prompt(&json!([1, 2, 3]), &cfg()).is_none());
    }

    #[test]
    fn budget_cuts_on_char_boundary() {
        let c = InputConfig {
            max_chars: 3,
            ..cfg()
        };
        let msgs = vec![json!({"role": "user", "content": "héllo"})];
        assert_eq!(from_messages(&msgs, &c).unwrap(), "hél");
        assert_eq!(from_prompt(&json!(["a", "zzzz"]), &c).unwrap(), "zzz");
    }
}
