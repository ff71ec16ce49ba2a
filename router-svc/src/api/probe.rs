//! One pass over a request body that checks it is JSON and reads only what the router looks at:
//! `model`, the stream flags, each message's role and content, the prompt, the token budget,
//! the session keys (`user`, `prompt_cache_key`).
//! Every other member is skipped (checked, not stored): a request for a named model goes to its
//! backend as the client's bytes, so building the tree of all its fields (a map per message, a
//! string per key) was a named request's largest cost in the router (~9 % of its instructions).
//! `openai::Parsed` builds that tree later, only for a request whose body it changes.

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::Value;

/// A chat message as read: its role (None when it is not a string, or the message is not an
/// object) and its content as sent (Some(Null) for `"content": null`).
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    pub role: Option<String>,
    pub content: Option<Value>,
}

/// What a body holds of the members the router reads (the last one where a key repeats, as in
/// the tree).
#[derive(Debug, Default)]
pub struct Probe {
    pub model: Option<Value>,
    pub stream: Option<Value>,
    pub stream_options: Option<Value>,
    /// `messages`: None when missing or null, the list for an array.
    pub messages: Option<Result<Vec<Message>, NotAnArray>>,
    pub prompt: Option<Value>,
    pub max_tokens: Option<Value>,
    pub max_completion_tokens: Option<Value>,
    /// Session keys a client may send (`decide::session`): OpenAI's `user` (Anthropic's
    /// `metadata.user_id` arrives here translated) and `prompt_cache_key`.
    pub user: Option<Value>,
    pub prompt_cache_key: Option<Value>,
}

/// Reads `bytes`. Err(None): not JSON (with serde_json's reason); Ok(None): JSON but not an
/// object.
pub fn read(bytes: &[u8]) -> Result<Option<Probe>, serde_json::Error> {
    serde_json::from_slice::<Top>(bytes).map(|t| t.0)
}

/// The methods of a visitor for the scalar JSON types it does not read: the value is consumed
/// and the visitor answers `$other` (`$null` for null, where given).
macro_rules! any_other {
    ($other:expr) => {
        any_other!($other, $other);
    };
    ($other:expr, $null:expr) => {
        fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
            Ok($other)
        }
        fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
            Ok($other)
        }
        fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
            Ok($other)
        }
        fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
            Ok($other)
        }
        fn visit_str<E: de::Error>(self, _: &str) -> Result<Self::Value, E> {
            Ok($other)
        }
        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok($null)
        }
    };
}

/// Any JSON value, checked and dropped. Arrays and objects go through serde_json's recursion
/// limit as they do when the tree is built (serde's `IgnoredAny` has none): what the probe
/// accepts also reads as a tree.
struct Skip;

impl<'de> de::Deserialize<'de> for Skip {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Skip;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON value")
            }
            any_other!(Skip);
            fn visit_seq<A: SeqAccess<'de>>(self, mut s: A) -> Result<Self::Value, A::Error> {
                while s.next_element::<Skip>()?.is_some() {}
                Ok(Skip)
            }
            fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<Self::Value, A::Error> {
                while m.next_entry::<Skip, Skip>()?.is_some() {}
                Ok(Skip)
            }
        }
        d.deserialize_any(V)
    }
}

/// A key, borrowed from the body unless it has escapes.
struct Key<'de>(Cow<'de, str>);

impl<'de> de::Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string key")
            }
            fn visit_borrowed_str<E: de::Error>(self, s: &'de str) -> Result<Self::Value, E> {
                Ok(Key(Cow::Borrowed(s)))
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Self::Value, E> {
                Ok(Key(Cow::Owned(s.to_owned())))
            }
            fn visit_string<E: de::Error>(self, s: String) -> Result<Self::Value, E> {
                Ok(Key(Cow::Owned(s)))
            }
        }
        d.deserialize_str(V)
    }
}

/// The whole body: Some(probe) for an object.
struct Top(Option<Probe>);

impl<'de> de::Deserialize<'de> for Top {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Top;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON value")
            }
            any_other!(Top(None));
            fn visit_seq<A: SeqAccess<'de>>(self, mut s: A) -> Result<Self::Value, A::Error> {
                while s.next_element::<Skip>()?.is_some() {}
                Ok(Top(None))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<Self::Value, A::Error> {
                let mut p = Probe::default();
                while let Some(Key(k)) = m.next_key()? {
                    match &*k {
                        "model" => p.model = Some(m.next_value()?),
                        "stream" => p.stream = Some(m.next_value()?),
                        "stream_options" => p.stream_options = Some(m.next_value()?),
                        "messages" => p.messages = m.next_value::<Messages>()?.0,
                        "prompt" => p.prompt = Some(m.next_value()?),
                        "max_tokens" => p.max_tokens = Some(m.next_value()?),
                        "max_completion_tokens" => p.max_completion_tokens = Some(m.next_value()?),
                        "user" => p.user = Some(m.next_value()?),
                        "prompt_cache_key" => p.prompt_cache_key = Some(m.next_value()?),
                        _ => {
                            m.next_value::<Skip>()?;
                        }
                    }
                }
                Ok(Top(Some(p)))
            }
        }
        d.deserialize_any(V)
    }
}

/// `messages`: None for null (as if missing), the list for an array, Err for anything else.
struct Messages(Option<Result<Vec<Message>, NotAnArray>>);

/// `messages` that is neither null nor an array.
#[derive(Debug, PartialEq)]
pub struct NotAnArray;

impl<'de> de::Deserialize<'de> for Messages {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Messages;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON value")
            }
            any_other!(Messages(Some(Err(NotAnArray))), Messages(None));
            fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<Self::Value, A::Error> {
                while m.next_entry::<Skip, Skip>()?.is_some() {}
                Ok(Messages(Some(Err(NotAnArray))))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut s: A) -> Result<Self::Value, A::Error> {
                let mut out = Vec::with_capacity(s.size_hint().unwrap_or(4));
                while let Some(m) = s.next_element::<Msg>()? {
                    out.push(m.0);
                }
                Ok(Messages(Some(Ok(out))))
            }
        }
        d.deserialize_any(V)
    }
}

/// One element of `messages`.
struct Msg(Message);

const NOT_A_MESSAGE: Msg = Msg(Message {
    role: None,
    content: None,
});

impl<'de> de::Deserialize<'de> for Msg {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Msg;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON value")
            }
            any_other!(NOT_A_MESSAGE);
            fn visit_seq<A: SeqAccess<'de>>(self, mut s: A) -> Result<Self::Value, A::Error> {
                while s.next_element::<Skip>()?.is_some() {}
                Ok(NOT_A_MESSAGE)
            }
            fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<Self::Value, A::Error> {
                let mut role = None;
                let mut content = None;
                while let Some(Key(k)) = m.next_key()? {
                    match &*k {
                        "role" => role = Some(m.next_value::<Value>()?),
                        "content" => content = Some(m.next_value::<Value>()?),
                        _ => {
                            m.next_value::<Skip>()?;
                        }
                    }
                }
                let role = match role {
                    Some(Value::String(s)) => Some(s),
                    _ => None,
                };
                Ok(Msg(Message { role, content }))
            }
        }
        d.deserialize_any(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_what_the_router_needs_and_skips_the_rest() {
        let p = read(
            br#"{"model":"m","x":{"deep":[1,{"a":null}]},"messages":[
                {"role":"user","content":"hi","name":"n"},
                {"role":5,"content":null},
                7,
                {"content":[{"type":"text","text":"t"}]}],
              "stream":true,"max_tokens":9,"model":"last"}"#,
        )
        .unwrap()
        .unwrap();
        assert_eq!(p.model, Some(Value::String("last".into())));
        assert_eq!(p.stream, Some(Value::Bool(true)));
        assert_eq!(p.max_tokens, Some(9.into()));
        let msgs = p.messages.unwrap().unwrap();
        assert_eq!(msgs.len(), 4);
        assert_eq!(msgs[0].role.as_deref(), Some("user"));
        assert_eq!(msgs[0].content, Some(Value::String("hi".into())));
        assert_eq!(
            (msgs[1].role.as_ref(), &msgs[1].content),
            (None, &Some(Value::Null))
        );
        assert_eq!((msgs[2].role.as_ref(), &msgs[2].content), (None, &None));
        assert!(msgs[3].content.as_ref().is_some_and(Value::is_array));
    }

    #[test]
    fn not_an_object_and_not_json() {
        assert!(read(b"[1,2]").unwrap().is_none());
        assert!(read(b"\"s\"").unwrap().is_none());
        assert!(read(b"{\"a\":}").is_err());
        assert!(read(b"{} x").is_err());
        // Nesting past serde_json's limit is refused wherever it is, as the tree refuses it.
        let deep = format!(
            r#"{{"model":"m","x":{}{}}}"#,
            "[".repeat(200),
            "]".repeat(200)
        );
        assert!(serde_json::from_str::<Value>(&deep).is_err());
        assert!(read(deep.as_bytes()).is_err());
        let p = read(br#"{"messages":"hi","m\u006fdel":"esc"}"#)
            .unwrap()
            .unwrap();
        assert_eq!(p.messages, Some(Err(NotAnArray)));
        assert_eq!(p.model, Some(Value::String("esc".into())));
        let p = read(br#"{"messages":[],"messages":null}"#)
            .unwrap()
            .unwrap();
        assert_eq!(p.messages, None);
    }
}
