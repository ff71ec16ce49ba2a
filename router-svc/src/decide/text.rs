//! What text of a request is classified: what the user typed in the latest user turn (string
//! content, or the text parts of an array), without what clients add around it (Claude Code's
//! `<system-reminder>` blocks, Codex's `<environment_context>` and AGENTS.md items: tool results
//! and developer messages are never user turns), a short follow-up with the user's earlier turns,
//! optionally the system prompt and history, within a budget. Also says whether the request ends
//! with a new user turn or continues a tool loop, which the session step needs.

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

/// What a chat request says of its user: the text to classify and the shape of the turn.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Input {
    /// What is classified: the latest user turn (with earlier user turns for a short
    /// follow-up, and the history and system prompt where configured); None: no user words.
    pub text: Option<String>,
    /// The request ends with something the user wrote. False inside a tool loop (the last
    /// message is a tool result, or a user message that holds only client boilerplate).
    pub new_turn: bool,
    /// The latest user turn is only an acknowledgement ("thanks", "ok"): `light_words`.
    pub light: bool,
    /// The user's own turns in the conversation (boilerplate-only messages not counted).
    pub user_turns: usize,
}

/// The user's own words in one user message's content: its text parts, less the parts clients
/// add around them (`skip_prefixes`) and tagged segments (`strip_tags`) anywhere in the text.
/// None when nothing is left.
pub fn user_words(content: &Value, cfg: &InputConfig) -> Option<String> {
    let keep = |t: &str| -> Option<String> {
        let t = strip_tags(t, &cfg.strip_tags);
        let trimmed = t.trim();
        let boilerplate = cfg
            .skip_prefixes
            .iter()
            .any(|p| !p.is_empty() && trimmed.starts_with(p.as_str()));
        (!trimmed.is_empty() && !boilerplate).then(|| trimmed.to_string())
    };
    let texts: Vec<String> = match content {
        Value::String(s) => keep(s).into_iter().collect(),
        Value::Array(parts) => text_parts(parts).filter_map(keep).collect(),
        _ => Vec::new(),
    };
    (!texts.is_empty()).then(|| texts.join("\n"))
}

/// `text` with every `<tag ...>...</tag>` segment of the given tags cut out (an unclosed one
/// runs to the end). Borrowed when there is nothing to cut.
fn strip_tags<'a>(text: &'a str, tags: &[String]) -> std::borrow::Cow<'a, str> {
    let mut out = std::borrow::Cow::Borrowed(text);
    // Most text holds no tag at all: no pattern is built for it.
    if !text.contains('<') {
        return out;
    }
    for tag in tags.iter().filter(|t| !t.is_empty()) {
        let open = format!("<{tag}");
        if !out.contains(open.as_str()) {
            continue;
        }
        let close = format!("</{tag}>");
        let mut rest: &str = &out;
        let mut kept = String::with_capacity(rest.len());
        while let Some(i) = rest.find(open.as_str()) {
            // `<tagname>` or `<tag attr>`: not a longer tag that starts alike.
            let after = rest[i + open.len()..].chars().next();
            if !matches!(after, Some('>' | ' ' | '\n' | '\t')) {
                kept.push_str(&rest[..i + open.len()]);
                rest = &rest[i + open.len()..];
                continue;
            }
            kept.push_str(&rest[..i]);
            rest = match rest[i..].find(close.as_str()) {
                Some(j) => &rest[i + j + close.len()..],
                None => "",
            };
        }
        kept.push_str(rest);
        out = std::borrow::Cow::Owned(kept);
    }
    out
}

/// Whether `text` is only an acknowledgement: 1 to 6 words, every one in `words`
/// (case and punctuation ignored).
fn is_light(text: &str, words: &[String]) -> bool {
    let tokens: Vec<String> = text
        .split(|c: char| !c.is_alphanumeric() && c != '\'')
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
        .collect();
    (1..=6).contains(&tokens.len())
        && tokens
            .iter()
            .all(|t| words.iter().any(|w| w.eq_ignore_ascii_case(t)))
}

/// Reads a chat request's messages: what to classify, and whether the user wrote anything new.
pub fn read<M: Turn>(messages: &[M], cfg: &InputConfig) -> Input {
    // The user's own turns, oldest first: (index, words).
    let turns: Vec<(usize, String)> = messages
        .iter()
        .enumerate()
        .filter(|(_, m)| m.role() == "user")
        .filter_map(|(i, m)| Some((i, user_words(m.content()?, cfg)?)))
        .collect();
    let Some((last_user, latest)) = turns.last().cloned() else {
        return Input::default();
    };
    // Anything after the latest user turn but an assistant prefill (a tool result, a
    // boilerplate-only user message) means the request continues a tool loop.
    let new_turn = messages[last_user + 1..]
        .iter()
        .all(|m| m.role() == "assistant");
    let light = is_light(&latest, &cfg.light_words);
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
            let t = match m.role() {
                "user" => m.content().and_then(|c| user_words(c, cfg)),
                _ => m.content().and_then(content_text),
            };
            let Some(t) = t else {
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
    } else if !light
        && cfg.follow_up_turns > 0
        && latest.split_whitespace().count() < cfg.follow_up_words
    {
        // A short follow-up ("now in Rust", "what about 4k+1?") means little alone: the
        // user's earlier turns (newest first, within the budget) come before it.
        // Acknowledgements among them add nothing ("thanks!" between a proof and "what about
        // 4k+1?" made the pair read as chat).
        for (_, t) in turns[..turns.len() - 1]
            .iter()
            .rev()
            .filter(|(_, t)| !is_light(t, &cfg.light_words))
            .take(cfg.follow_up_turns)
        {
            let n = t.chars().count();
            if n > budget {
                break;
            }
            budget -= n;
            history.push(t.clone());
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
    Input {
        text: Some(parts.join("\n")),
        new_turn,
        light,
        user_turns: turns.len(),
    }
}

/// The text to classify for a chat request, or None when it has no user text.
pub fn from_messages<M: Turn>(messages: &[M], cfg: &InputConfig) -> Option<String> {
    read(messages, cfg).text
}

/// The conversation's stable start: the first system (or developer) message and the user's
/// first own turn, for a session fingerprint. None without a user turn.
pub fn opening<M: Turn>(messages: &[M], cfg: &InputConfig) -> Option<(String, String)> {
    let system = messages
        .iter()
        .find(|m| matches!(m.role(), "system" | "developer"))
        .and_then(Turn::content)
        .and_then(content_text)
        .unwrap_or_default();
    let first = messages
        .iter()
        .filter(|m| m.role() == "user")
        .find_map(|m| user_words(m.content()?, cfg))?;
    Some((system, first))
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
        let alone = InputConfig {
            follow_up_turns: 0,
            ..cfg()
        };
        assert_eq!(from_messages(&msgs, &alone).unwrap(), "what is\nthis?");
        // A short follow-up comes after the user's earlier turn by default.
        assert_eq!(
            from_messages(&msgs, &cfg()).unwrap(),
            "first\nwhat is\nthis?"
        );
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
