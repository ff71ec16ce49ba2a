//! Reading a checkpoint's `config.json`: which encoder it is, its sizes, and its labels.
//!
//! Hugging Face writes `label2id` with integer values; candle-transformers 0.11's ModernBERT config
//! silently drops `id2label` then. Here labels are parsed on their own and checked against each other
//! and against the classifier's weights, so a checkpoint never loads with zero or wrong labels.

use serde::Deserialize;
use serde_json::Value;
use std::collections::BTreeMap;

use crate::error::{Error, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arch {
    Bert,
    ModernBert,
    /// Static token embeddings (model2vec): no layers, a text is the mean of its tokens.
    Static,
}

impl Arch {
    pub fn as_str(&self) -> &'static str {
        match self {
            Arch::Bert => "bert",
            Arch::ModernBert => "modernbert",
            Arch::Static => "static",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pooling {
    Cls,
    Mean,
}

impl Pooling {
    pub fn as_str(&self) -> &'static str {
        match self {
            Pooling::Cls => "cls",
            Pooling::Mean => "mean",
        }
    }
    pub fn parse(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "cls" => Ok(Pooling::Cls),
            "mean" => Ok(Pooling::Mean),
            other => Err(Error::InvalidArgument(format!(
                "unknown pooling {other:?}: expected \"cls\" or \"mean\""
            ))),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    GeluErf,
    GeluTanh,
    Relu,
    Silu,
    Tanh,
}

impl Activation {
    pub fn parse(s: &str) -> Result<Self> {
        Ok(match s {
            "gelu" | "gelu_erf" => Activation::GeluErf,
            "gelu_new" | "gelu_pytorch_tanh" | "gelu_fast" | "gelu_approximate" => {
                Activation::GeluTanh
            }
            "relu" => Activation::Relu,
            "silu" | "swish" => Activation::Silu,
            "tanh" => Activation::Tanh,
            other => {
                return Err(Error::InvalidArgument(format!(
                    "unsupported activation {other:?}"
                )))
            }
        })
    }
}

/// What classifier-svc needs to know from a `config.json`, for either architecture.
#[derive(Debug, Clone)]
pub struct EncoderConfig {
    pub arch: Arch,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub intermediate_size: usize,
    pub max_position_embeddings: usize,
    pub layer_norm_eps: f64,
    pub hidden_act: Activation,
    pub pad_token_id: u32,
    // BERT only
    pub type_vocab_size: usize,
    // ModernBERT only
    pub global_attn_every_n_layers: usize,
    pub global_rope_theta: f64,
    pub local_attention: usize,
    pub local_rope_theta: f64,
    pub classifier_pooling: Pooling,
    pub classifier_activation: Activation,
    /// Labels in id order, if the checkpoint is a sequence classifier (`id2label` present).
    pub labels: Option<Vec<String>>,
}

#[derive(Deserialize)]
struct Raw {
    model_type: Option<String>,
    architectures: Option<Vec<String>>,
    vocab_size: usize,
    hidden_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    intermediate_size: usize,
    #[serde(default = "default_max_pos")]
    max_position_embeddings: usize,
    layer_norm_eps: Option<f64>,
    norm_eps: Option<f64>,
    hidden_act: Option<String>,
    hidden_activation: Option<String>,
    pad_token_id: Option<u32>,
    type_vocab_size: Option<usize>,
    global_attn_every_n_layers: Option<usize>,
    global_rope_theta: Option<f64>,
    local_attention: Option<usize>,
    local_rope_theta: Option<f64>,
    classifier_pooling: Option<String>,
    classifier_activation: Option<String>,
    id2label: Option<BTreeMap<String, Value>>,
    label2id: Option<BTreeMap<String, Value>>,
}

fn default_max_pos() -> usize {
    512
}

/// A static model's `config.json` (model2vec's keys).
#[derive(Deserialize)]
struct StaticRaw {
    hidden_dim: usize,
    #[serde(default)]
    vocab_size: usize,
    #[serde(default)]
    pad_token_id: Option<u32>,
}

impl EncoderConfig {
    /// A static model's: its dimension (`hidden_dim`); the vocabulary is the table's rows,
    /// known once the weights are read (0 until then, unless the config says).
    fn static_model(text: &str, model: &str) -> Result<Self> {
        let raw: StaticRaw = serde_json::from_str(text)
            .map_err(|e| Error::load(model, format!("config.json: {e}")))?;
        if raw.hidden_dim == 0 {
            return Err(Error::load(model, "config.json: hidden_dim is 0"));
        }
        Ok(EncoderConfig {
            arch: Arch::Static,
            vocab_size: raw.vocab_size,
            hidden_size: raw.hidden_dim,
            num_layers: 0,
            num_heads: 0,
            intermediate_size: 0,
            // No positions: a text of any length is one look-up per token.
            max_position_embeddings: usize::MAX,
            layer_norm_eps: 0.0,
            hidden_act: Activation::GeluErf,
            pad_token_id: raw.pad_token_id.unwrap_or(0),
            type_vocab_size: 0,
            global_attn_every_n_layers: 1,
            global_rope_theta: 0.0,
            local_attention: 0,
            local_rope_theta: 0.0,
            classifier_pooling: Pooling::Mean,
            classifier_activation: Activation::GeluErf,
            labels: None,
        })
    }

    pub fn from_json(text: &str, model: &str) -> Result<Self> {
        let kind: Value = serde_json::from_str(text)
            .map_err(|e| Error::load(model, format!("config.json: {e}")))?;
        if matches!(kind["model_type"].as_str(), Some("model2vec" | "static")) {
            return Self::static_model(text, model);
        }
        let raw: Raw = serde_json::from_str(text)
            .map_err(|e| Error::load(model, format!("config.json: {e}")))?;
        let arch = match raw.model_type.as_deref() {
            Some("modernbert") => Arch::ModernBert,
            Some("bert") | Some("roberta") | Some("xlm-roberta") | Some("distilbert_like") => {
                Arch::Bert
            }
            Some(other) => {
                return Err(Error::load(
                    model,
                    format!(
                        "config.json: model_type {other:?} is not supported (bert, modernbert, \
                         model2vec)"
                    ),
                ))
            }
            None => match raw.architectures.as_ref().and_then(|a| a.first()) {
                Some(a) if a.starts_with("ModernBert") => Arch::ModernBert,
                Some(a) if a.starts_with("Bert") => Arch::Bert,
                _ => return Err(Error::load(model, "config.json has no model_type")),
            },
        };
        if raw.num_attention_heads == 0 || !raw.hidden_size.is_multiple_of(raw.num_attention_heads)
        {
            return Err(Error::load(
                model,
                format!(
                    "hidden_size {} is not a multiple of num_attention_heads {}",
                    raw.hidden_size, raw.num_attention_heads
                ),
            ));
        }
        let act = raw
            .hidden_act
            .as_deref()
            .or(raw.hidden_activation.as_deref())
            .unwrap_or("gelu");
        let labels = parse_labels(raw.id2label.as_ref(), raw.label2id.as_ref())
            .map_err(|e| Error::load(model, e))?;
        Ok(EncoderConfig {
            arch,
            vocab_size: raw.vocab_size,
            hidden_size: raw.hidden_size,
            num_layers: raw.num_hidden_layers,
            num_heads: raw.num_attention_heads,
            intermediate_size: raw.intermediate_size,
            max_position_embeddings: raw.max_position_embeddings,
            layer_norm_eps: raw.layer_norm_eps.or(raw.norm_eps).unwrap_or(match arch {
                Arch::ModernBert => 1e-5,
                _ => 1e-12,
            }),
            hidden_act: Activation::parse(act).map_err(|e| Error::load(model, e))?,
            pad_token_id: raw.pad_token_id.unwrap_or(0),
            type_vocab_size: raw.type_vocab_size.unwrap_or(2),
            global_attn_every_n_layers: raw.global_attn_every_n_layers.unwrap_or(3).max(1),
            global_rope_theta: raw.global_rope_theta.unwrap_or(160_000.0),
            local_attention: raw.local_attention.unwrap_or(128),
            local_rope_theta: raw.local_rope_theta.unwrap_or(10_000.0),
            classifier_pooling: Pooling::parse(raw.classifier_pooling.as_deref().unwrap_or("cls"))
                .map_err(|e| Error::load(model, e))?,
            classifier_activation: Activation::parse(
                raw.classifier_activation.as_deref().unwrap_or("gelu"),
            )
            .map_err(|e| Error::load(model, e))?,
            labels,
        })
    }
}

/// Labels in id order from `id2label` (keys are stringified ids), checked against `label2id`
/// (values may be integers, as Hugging Face writes them, or strings).
pub fn parse_labels(
    id2label: Option<&BTreeMap<String, Value>>,
    label2id: Option<&BTreeMap<String, Value>>,
) -> std::result::Result<Option<Vec<String>>, String> {
    let Some(id2label) = id2label else {
        return Ok(None);
    };
    if id2label.is_empty() {
        return Err("config.json: id2label is empty".into());
    }
    let mut labels = vec![None; id2label.len()];
    for (k, v) in id2label {
        let id: usize = k
            .parse()
            .map_err(|_| format!("config.json: id2label key {k:?} is not an integer"))?;
        let name = v
            .as_str()
            .ok_or_else(|| format!("config.json: id2label[{k}] is not a string"))?;
        let slot = labels.get_mut(id).ok_or_else(|| {
            format!(
                "config.json: id2label ids must be 0..{}, found {id}",
                id2label.len()
            )
        })?;
        *slot = Some(name.to_string());
    }
    let labels: Vec<String> = labels.into_iter().map(|l| l.unwrap_or_default()).collect();
    if let Some(label2id) = label2id {
        if label2id.len() != labels.len() {
            return Err(format!(
                "config.json: id2label has {} labels but label2id has {}",
                labels.len(),
                label2id.len()
            ));
        }
        for (name, v) in label2id {
            let id = match v {
                Value::Number(n) => n.as_u64().map(|n| n as usize),
                Value::String(s) => s.parse().ok(),
                _ => None,
            }
            .ok_or_else(|| format!("config.json: label2id[{name:?}] is not an integer id"))?;
            if labels.get(id) != Some(name) {
                return Err(format!(
                    "config.json: label2id[{name:?}] = {id} disagrees with id2label"
                ));
            }
        }
    }
    Ok(Some(labels))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(labels: &str) -> String {
        format!(
            r#"{{"model_type":"modernbert","vocab_size":10,"hidden_size":8,"num_hidden_layers":1,
            "num_attention_heads":2,"intermediate_size":16,"norm_eps":1e-5,{labels}}}"#
        )
    }

    #[test]
    fn integer_label2id_keeps_labels() {
        let c = EncoderConfig::from_json(
            &cfg(r#""id2label":{"0":"a","1":"b"},"label2id":{"a":0,"b":1},"classifier_pooling":"mean""#),
            "m",
        )
        .unwrap();
        assert_eq!(c.labels.unwrap(), vec!["a", "b"]);
        assert_eq!(c.classifier_pooling, Pooling::Mean);
        assert_eq!(c.arch, Arch::ModernBert);
    }

    #[test]
    fn inconsistent_labels_fail_loudly() {
        let e = EncoderConfig::from_json(
            &cfg(r#""id2label":{"0":"a","1":"b"},"label2id":{"a":1,"b":0}"#),
            "m",
        )
        .unwrap_err();
        assert!(e.to_string().contains("disagrees"), "{e}");
        let e = EncoderConfig::from_json(&cfg(r#""id2label":{"0":"a","2":"b"}"#), "m").unwrap_err();
        assert!(e.to_string().contains("ids must be"), "{e}");
        let e = EncoderConfig::from_json(&cfg(r#""id2label":{}"#), "m").unwrap_err();
        assert!(e.to_string().contains("empty"), "{e}");
    }

    #[test]
    fn unknown_model_type_is_named() {
        let e = EncoderConfig::from_json(
            r#"{"model_type":"gpt2","vocab_size":1,"hidden_size":2,"num_hidden_layers":1,"num_attention_heads":1,"intermediate_size":2}"#,
            "m",
        )
        .unwrap_err();
        assert!(e.to_string().contains("gpt2"));
    }
}
