//! BERT's uncased WordPiece tokenization for ASCII text, without the `tokenizers` pipeline.
//!
//! The fast tier's whole pass is a table look-up per token, so tokenizing is most of its cost;
//! the general pipeline (a normalised string that tracks every character's alignment, Unicode
//! decomposition, pre-tokenized splits) spends ~2 µs a token on it. For the common case (an
//! ASCII text and a tokenizer that is exactly BertNormalizer(lowercase) -> BertPreTokenizer ->
//! WordPiece) the same ids come from a few byte comparisons and hash look-ups. Anything else
//! (a non-ASCII byte, a special token's text in the input, another tokenizer) returns None and
//! the caller uses `tokenizers`. The tests hold both to the same ids.

use std::collections::HashMap;

use tokenizers::{Model as _, ModelWrapper, NormalizerWrapper, PreTokenizerWrapper, Tokenizer};

pub struct AsciiWordPiece {
    /// Vocabulary entries that start a word...
    starts: HashMap<Box<str>, u32>,
    /// ...and those that continue one (`##` stripped).
    continues: HashMap<Box<str>, u32>,
    unk: u32,
    max_chars: usize,
    /// Texts of the added tokens, lowercased: a text containing one goes the general way
    /// (the pipeline matches them before normalising).
    added: Vec<String>,
}

impl AsciiWordPiece {
    /// The fast path for `t`, if `t` is an uncased BERT WordPiece tokenizer.
    pub fn from_tokenizer(t: &Tokenizer) -> Option<Self> {
        match t.get_normalizer()? {
            NormalizerWrapper::BertNormalizer(n) if n.clean_text && n.lowercase => {}
            _ => return None,
        }
        if !matches!(
            t.get_pre_tokenizer()?,
            PreTokenizerWrapper::BertPreTokenizer(_)
        ) {
            return None;
        }
        let ModelWrapper::WordPiece(wp) = t.get_model() else {
            return None;
        };
        let prefix = wp.continuing_subword_prefix.as_str();
        let mut starts = HashMap::new();
        let mut continues = HashMap::new();
        for (piece, id) in t.get_model().get_vocab() {
            match piece.strip_prefix(prefix).filter(|_| !prefix.is_empty()) {
                Some(rest) => continues.insert(rest.into(), id),
                None => starts.insert(piece.into(), id),
            };
        }
        let unk = t.token_to_id(&wp.unk_token)?;
        let added = t
            .get_added_tokens_decoder()
            .values()
            .map(|a| a.content.to_ascii_lowercase())
            .filter(|c| !c.is_empty())
            .collect();
        Some(Self {
            starts,
            continues,
            unk,
            max_chars: wp.max_input_chars_per_word,
            added,
        })
    }

    /// The text's own ids (no special tokens, untruncated), or None when the general pipeline
    /// must do it.
    pub fn content_ids(&self, text: &str) -> Option<Vec<u32>> {
        if !text.is_ascii() {
            return None;
        }
        // clean_text: control characters go (tab, newline and carriage return are spaces);
        // lowercase. Accents and CJK spacing cannot occur in ASCII.
        let mut clean = Vec::with_capacity(text.len());
        for &b in text.as_bytes() {
            match b {
                b'\t' | b'\n' | b'\r' | b' ' => clean.push(b' '),
                0..=0x1f | 0x7f => {}
                _ => clean.push(b.to_ascii_lowercase()),
            }
        }
        // ASCII in, ASCII out.
        let clean = std::str::from_utf8(&clean).ok()?;
        if self.added.iter().any(|a| clean.contains(a.as_str())) {
            return None;
        }
        let mut ids = Vec::with_capacity(clean.len() / 3 + 1);
        // Words split at spaces; each punctuation character is a word of its own.
        for chunk in clean.split(' ').filter(|c| !c.is_empty()) {
            let mut word_start = 0;
            for (i, b) in chunk.bytes().enumerate() {
                if b.is_ascii_punctuation() {
                    if word_start < i {
                        self.word(&chunk[word_start..i], &mut ids);
                    }
                    self.word(&chunk[i..i + 1], &mut ids);
                    word_start = i + 1;
                }
            }
            if word_start < chunk.len() {
                self.word(&chunk[word_start..], &mut ids);
            }
        }
        Some(ids)
    }

    /// WordPiece on one word: greedy longest match from the left; a word with a part that
    /// matches nothing, or longer than `max_chars`, is one unknown token.
    fn word(&self, word: &str, ids: &mut Vec<u32>) {
        if word.len() > self.max_chars {
            ids.push(self.unk);
            return;
        }
        let first = ids.len();
        let mut start = 0;
        while start < word.len() {
            let table = if start == 0 {
                &self.starts
            } else {
                &self.continues
            };
            let mut end = word.len();
            let found = loop {
                if let Some(&id) = table.get(&word[start..end]) {
                    break Some(id);
                }
                end -= 1;
                if end == start {
                    break None;
                }
            };
            match found {
                Some(id) => ids.push(id),
                None => {
                    ids.truncate(first);
                    ids.push(self.unk);
                    return;
                }
            }
            start = end;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Texts that probe every rule: case, punctuation runs, control characters, whitespace
    /// kinds, long and unknown words, special tokens' text, non-ASCII (None).
    fn probes() -> Vec<String> {
        let mut v: Vec<String> = [
            "What is the capital of North Carolina?",
            "  leading and trailing\t\tspaces \n",
            "Hello,world!!! (nested [brackets]) {braces} a-b_c~d",
            "ctrl\u{1}chars\u{7f}here\u{b}and\u{c}there\r\nok",
            "[CLS] literal special token",
            "lower [mask] too",
            "##prefix ##",
            "unbelievably antidisestablishmentarianism xyzzyqwv",
            "numbers 3.14159 and 1,000,000 and 0x1F",
            "email me at someone@example.com or visit https://example.org/a?b=c&d=e",
            "",
            "   ",
            "naïve café",
            "emoji 🙂 here",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        v.push("a".repeat(101));
        v.push(format!("{} end", "b".repeat(100)));
        // Pseudo-random ASCII soup (a fixed LCG: the same texts every run).
        let mut state: u64 = 0x9e3779b97f4a7c15;
        for _ in 0..300 {
            let mut s = String::new();
            let n = (state >> 33) % 120;
            for _ in 0..n {
                state = state
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let r = (state >> 33) as u8;
                s.push(match r % 10 {
                    0..=5 => (b'a' + r % 26) as char,
                    6 => ' ',
                    7 => (b'A' + r % 26) as char,
                    _ => (r % 128) as char,
                });
            }
            v.push(s);
        }
        v
    }

    fn check(mut t: Tokenizer) {
        // As `TextTokenizer` keeps it for content ids: whole, unpadded.
        t.with_truncation(None).unwrap();
        t.with_padding(None);
        let fast = AsciiWordPiece::from_tokenizer(&t).expect("an uncased BERT tokenizer");
        let mut fast_done = 0;
        for text in probes() {
            let want: Vec<u32> = t
                .encode_fast(text.as_str(), false)
                .unwrap()
                .get_ids()
                .to_vec();
            match fast.content_ids(&text) {
                Some(got) => {
                    assert_eq!(got, want, "{text:?}");
                    fast_done += 1;
                }
                None => assert!(
                    !text.is_ascii() || text.to_ascii_lowercase().contains('['),
                    "fell back on {text:?}"
                ),
            }
        }
        assert!(fast_done > 250, "{fast_done}");
    }

    #[test]
    fn the_ascii_path_gives_the_pipelines_ids_for_the_shipped_tokenizer() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../models/static-minilm/tokenizer.json");
        check(Tokenizer::from_file(path).unwrap());
    }

    #[test]
    fn the_ascii_path_gives_the_pipelines_ids_for_the_test_tokenizer() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokenizer.json");
        crate::fixtures::write_tokenizer(&path).unwrap();
        check(Tokenizer::from_file(path).unwrap());
    }
}
