//! Token classification (PII entities): what a token head reads besides the encoder's hidden
//! states, and how its per-token BIO labels become entity spans in the text. Training and serving
//! share every function here, so a head sees the same features in both.

use serde::Serialize;

/// Per-token spelling features, read from the original text through the token's byte offsets:
/// the encoder's vocabulary is lower-cased, so capitals, digits and separators would be lost.
pub const SHAPE_DIM: usize = 10;

/// `SHAPE_DIM` values per token, flattened (`offsets.len() * SHAPE_DIM`); special tokens (empty
/// offsets) get zeros.
pub fn shape_features(text: &str, offsets: &[(usize, usize)]) -> Vec<f32> {
    let mut out = vec![0f32; offsets.len() * SHAPE_DIM];
    let mut prev_end = None;
    for (i, &(s, e)) in offsets.iter().enumerate() {
        let Some(tok) = text.get(s..e).filter(|t| !t.is_empty()) else {
            continue;
        };
        let f = &mut out[i * SHAPE_DIM..(i + 1) * SHAPE_DIM];
        let first = tok.chars().next().unwrap_or(' ');
        let letters: Vec<char> = tok.chars().filter(|c| c.is_alphabetic()).collect();
        // The word this token belongs to starts with a capital (sub-tokens inherit it).
        let word_start = text[..s]
            .char_indices()
            .rev()
            .find(|(_, c)| c.is_whitespace())
            .map_or(0, |(j, c)| j + c.len_utf8());
        let word_first = text[word_start..].chars().next().unwrap_or(' ');
        f[0] = first.is_uppercase() as u8 as f32;
        f[1] = (!letters.is_empty() && letters.iter().all(|c| c.is_uppercase())) as u8 as f32;
        f[2] = tok.chars().any(|c| c.is_ascii_digit()) as u8 as f32;
        f[3] = tok.chars().all(|c| c.is_ascii_digit()) as u8 as f32;
        f[4] = tok.chars().all(|c| !c.is_alphanumeric()) as u8 as f32;
        // Starts a new word (whitespace or text start before it) vs continues the previous token.
        f[5] = (prev_end != Some(s)) as u8 as f32;
        f[6] = word_first.is_uppercase() as u8 as f32;
        f[7] = tok.contains('@') as u8 as f32;
        f[8] = text[..s].ends_with('\n') as u8 as f32;
        f[9] = (!first.is_ascii()) as u8 as f32;
        prev_end = Some(e);
    }
    out
}

/// The input of a token head for every token of one text: its hidden state, the hidden states
/// of `context` tokens on each side (zeros past either end), then its shape features.
/// `hidden[token][dim]`, `shape` from `shape_features` (or empty: zeros). Flattened rows.
pub fn token_inputs(hidden: &[Vec<f32>], shape: &[f32], context: usize) -> Vec<f32> {
    let t = hidden.len();
    let h = hidden.first().map_or(0, |r| r.len());
    let width = token_input_width(h, context);
    let mut out = vec![0f32; t * width];
    for i in 0..t {
        let row = &mut out[i * width..(i + 1) * width];
        row[..h].copy_from_slice(&hidden[i]);
        for c in 1..=context {
            let at = h * (2 * c - 1);
            if i >= c {
                row[at..at + h].copy_from_slice(&hidden[i - c]);
            }
            if i + c < t {
                row[at + h..at + 2 * h].copy_from_slice(&hidden[i + c]);
            }
        }
        if let Some(f) = shape.get(i * SHAPE_DIM..(i + 1) * SHAPE_DIM) {
            row[width - SHAPE_DIM..].copy_from_slice(f);
        }
    }
    out
}

/// Width of one token's head input for an encoder of `hidden` dimensions.
pub fn token_input_width(hidden: usize, context: usize) -> usize {
    hidden * (1 + 2 * context) + SHAPE_DIM
}

/// `O`, then `B-T`, `I-T` for every entity type `T`, in the given order.
pub fn bio_labels(types: &[String]) -> Vec<String> {
    let mut l = vec!["O".to_string()];
    for t in types {
        l.push(format!("B-{t}"));
        l.push(format!("I-{t}"));
    }
    l
}

/// One entity found in a text: its type and byte range.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EntitySpan {
    pub kind: String,
    pub start: usize,
    pub end: usize,
    /// Mean probability of the chosen labels over the entity's tokens (1 for patterns).
    pub score: f32,
}

/// BIO targets for gold entity spans (byte ranges), one per word: the first token of a word
/// inside a span is `B-` when the word is the span's first, `I-` after; outside, `O`. Tokens that
/// continue a word get `None` (their word's first token decides; they are not trained on).
/// `labels` is `bio_labels(types)`.
pub fn bio_targets(
    offsets: &[(usize, usize)],
    word_starts: &[bool],
    spans: &[(String, usize, usize)],
    labels: &[String],
) -> Vec<Option<usize>> {
    let mut y: Vec<Option<usize>> = word_starts.iter().map(|&w| w.then_some(0)).collect();
    for (kind, s, e) in spans {
        let Some(b) = labels.iter().position(|l| l == &format!("B-{kind}")) else {
            continue;
        };
        let mut first = true;
        for (i, &(ts, te)) in offsets.iter().enumerate() {
            if word_starts[i] && te > ts && ts >= *s && te <= *e {
                y[i] = Some(if first { b } else { b + 1 });
                first = false;
            }
        }
    }
    y
}

/// Entity spans from per-token label probabilities (`probs[token][label]`, labels from
/// `bio_labels`). Each word's first token decides its label and the rest of the word follows.
/// A `B-T`, or an `I-T` that does not continue a `T`, opens an entity; `I-T` words extend it.
pub fn decode(
    offsets: &[(usize, usize)],
    word_starts: &[bool],
    probs: &[Vec<f32>],
    labels: &[String],
) -> Vec<EntitySpan> {
    let mut out: Vec<EntitySpan> = Vec::new();
    // (kind, start, end, score sum, words)
    let mut open: Option<(String, usize, usize, f32, usize)> = None;
    let close = |o: Option<(String, usize, usize, f32, usize)>, out: &mut Vec<EntitySpan>| {
        if let Some((kind, start, end, sum, n)) = o {
            out.push(EntitySpan {
                kind,
                start,
                end,
                score: sum / n as f32,
            });
        }
    };
    // Whether the current word belongs to the open entity.
    let mut in_entity = false;
    for ((&(s, e), p), &first) in offsets.iter().zip(probs).zip(word_starts) {
        if e <= s {
            continue;
        }
        if !first {
            if let Some(o) = open.as_mut().filter(|_| in_entity) {
                o.2 = e;
            }
            continue;
        }
        let (best, prob) = p
            .iter()
            .enumerate()
            .max_by(|a, b| a.1.total_cmp(b.1))
            .map_or((0, 0.0), |(i, v)| (i, *v));
        let label = labels.get(best).map_or("O", |l| l.as_str());
        if let Some(kind) = label.strip_prefix("I-") {
            if let Some(o) = open.as_mut().filter(|o| o.0 == kind) {
                o.2 = e;
                o.3 += prob;
                o.4 += 1;
                in_entity = true;
                continue;
            }
        }
        close(open.take(), &mut out);
        in_entity = false;
        if let Some(kind) = label
            .strip_prefix("B-")
            .or_else(|| label.strip_prefix("I-"))
        {
            open = Some((kind.to_string(), s, e, prob, 1));
            in_entity = true;
        }
    }
    close(open, &mut out);
    out
}

/// The head's entities with validated patterns added (e-mail, Luhn-checked cards, SSN, IP,
/// phone; `semroute_pii`): a pattern wins where it overlaps a model entity. Entities whose type
/// `semroute_pii` does not know are kept where they overlap nothing. Returned in text order with
/// whether each came from a pattern.
pub fn with_patterns(text: &str, found: Vec<EntitySpan>) -> Vec<(EntitySpan, bool)> {
    use semroute_pii::{PiiType, Span};
    let patterns = semroute_pii::detect(text);
    let (known, unknown): (Vec<_>, Vec<_>) = found
        .into_iter()
        .partition(|e| PiiType::parse(&e.kind).is_some());
    let model_spans: Vec<Span> = known
        .iter()
        .filter_map(|e| {
            Some(Span {
                kind: PiiType::parse(&e.kind)?,
                start: e.start,
                end: e.end,
            })
        })
        .collect();
    let merged = semroute_pii::merge(patterns.clone(), model_spans);
    let mut out: Vec<(EntitySpan, bool)> = merged
        .iter()
        .map(|s| {
            let pattern = patterns.contains(s);
            let score = if pattern {
                1.0
            } else {
                known
                    .iter()
                    .find(|e| e.start == s.start && e.end == s.end)
                    .map_or(1.0, |e| e.score)
            };
            let e = EntitySpan {
                kind: s.kind.as_str().to_string(),
                start: s.start,
                end: s.end,
                score,
            };
            (e, pattern)
        })
        .collect();
    for e in unknown {
        if !merged.iter().any(|s| e.start < s.end && s.start < e.end) {
            out.push((e, false));
        }
    }
    out.sort_by_key(|(e, _)| e.start);
    out
}

/// Entity-level precision, recall and F1 by exact (type, start, end) match, overall and per type.
#[derive(Debug, Default, Clone, Serialize)]
pub struct EntityScores {
    pub precision: f64,
    pub recall: f64,
    pub f1: f64,
    /// Lenient: a predicted entity counts when it overlaps a gold one of its type, a gold one is
    /// found when a predicted one of its type overlaps it (boundary conventions aside).
    pub overlap_precision: f64,
    pub overlap_recall: f64,
    pub overlap_f1: f64,
    pub per_type: std::collections::BTreeMap<String, TypeScore>,
}

#[derive(Debug, Default, Clone, Serialize)]
pub struct TypeScore {
    pub gold: usize,
    pub predicted: usize,
    pub correct: usize,
    pub precision: f64,
    pub recall: f64,
    pub f1: f64,
}

fn prf(correct: usize, predicted: usize, gold: usize) -> (f64, f64, f64) {
    let p = correct as f64 / predicted.max(1) as f64;
    let r = correct as f64 / gold.max(1) as f64;
    let f = if p + r > 0.0 {
        2.0 * p * r / (p + r)
    } else {
        0.0
    };
    (p, r, f)
}

/// Scores predicted against gold spans, text by text: `(kind, start, end)` each.
pub fn entity_scores(
    gold: &[Vec<(String, usize, usize)>],
    predicted: &[Vec<(String, usize, usize)>],
) -> EntityScores {
    let mut per: std::collections::BTreeMap<String, TypeScore> = Default::default();
    let overlaps = |a: &(String, usize, usize), b: &(String, usize, usize)| {
        a.0 == b.0 && a.1 < b.2 && b.1 < a.2
    };
    let (mut op, mut or, mut np, mut ng) = (0usize, 0usize, 0usize, 0usize);
    for (g, p) in gold.iter().zip(predicted) {
        op += p
            .iter()
            .filter(|x| g.iter().any(|y| overlaps(x, y)))
            .count();
        or += g
            .iter()
            .filter(|y| p.iter().any(|x| overlaps(x, y)))
            .count();
        np += p.len();
        ng += g.len();
    }
    let (overlap_precision, _, _) = prf(op, np, ng);
    let (_, overlap_recall, _) = prf(or, np, ng);
    let overlap_f1 = if overlap_precision + overlap_recall > 0.0 {
        2.0 * overlap_precision * overlap_recall / (overlap_precision + overlap_recall)
    } else {
        0.0
    };
    for (g, p) in gold.iter().zip(predicted) {
        for s in g {
            per.entry(s.0.clone()).or_default().gold += 1;
        }
        for s in p {
            let t = per.entry(s.0.clone()).or_default();
            t.predicted += 1;
            if g.contains(s) {
                t.correct += 1;
            }
        }
    }
    let (mut c, mut p, mut g) = (0, 0, 0);
    for t in per.values_mut() {
        (t.precision, t.recall, t.f1) = prf(t.correct, t.predicted, t.gold);
        c += t.correct;
        p += t.predicted;
        g += t.gold;
    }
    let (precision, recall, f1) = prf(c, p, g);
    EntityScores {
        precision,
        recall,
        f1,
        overlap_precision,
        overlap_recall,
        overlap_f1,
        per_type: per,
    }
}

impl EntityScores {
    pub fn render(&self) -> String {
        let mut s = format!(
            "entity-level (exact span): precision {:.4} recall {:.4} F1 {:.4}\n\
             lenient (same type, overlapping span): precision {:.4} recall {:.4} F1 {:.4}\n",
            self.precision,
            self.recall,
            self.f1,
            self.overlap_precision,
            self.overlap_recall,
            self.overlap_f1
        );
        s.push_str("  type                 gold  pred  correct  precision  recall  F1\n");
        for (k, t) in &self.per_type {
            s.push_str(&format!(
                "  {k:<20} {:>5} {:>5} {:>8}  {:>9.4}  {:>6.4}  {:.4}\n",
                t.gold, t.predicted, t.correct, t.precision, t.recall, t.f1
            ));
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels() -> Vec<String> {
        bio_labels(&["PERSON".into(), "EMAIL_ADDRESS".into()])
    }

    #[test]
    fn targets_then_decode_give_the_spans_back() {
        // "Hi Jane Doe, mail jd@x.io"
        // Hi | Jane | Doe | , | mail | jd | @ | x | . | io
        let offsets = [
            (0, 0),
            (0, 2),
            (3, 7),
            (8, 11),
            (11, 12),
            (13, 17),
            (18, 20),
            (20, 21),
            (21, 22),
            (22, 23),
            (23, 25),
            (0, 0),
        ];
        let gold = vec![
            ("PERSON".to_string(), 3, 11),
            ("EMAIL_ADDRESS".to_string(), 18, 25),
        ];
        let words = [
            false, true, true, true, true, true, true, true, true, true, true, false,
        ];
        let l = labels();
        let y = bio_targets(&offsets, &words, &gold, &l);
        let y: Vec<usize> = y.into_iter().map(|v| v.unwrap_or(0)).collect();
        assert_eq!(y, [0, 0, 1, 2, 0, 0, 3, 4, 4, 4, 4, 0]);
        let probs: Vec<Vec<f32>> = y
            .iter()
            .map(|&k| {
                (0..l.len())
                    .map(|j| if j == k { 0.9 } else { 0.02 })
                    .collect()
            })
            .collect();
        let found = decode(&offsets, &words, &probs, &l);
        let got: Vec<_> = found
            .iter()
            .map(|e| (e.kind.clone(), e.start, e.end))
            .collect();
        assert_eq!(got, gold);
        assert!((found[0].score - 0.9).abs() < 1e-6);
        let s = entity_scores(std::slice::from_ref(&gold), &[got[..1].to_vec()]);
        assert!((s.precision - 1.0).abs() < 1e-9 && (s.recall - 0.5).abs() < 1e-9);
        // A predicted person one word short: wrong exactly, right leniently.
        let short = vec![("PERSON".to_string(), 3, 7)];
        let s = entity_scores(&[vec![gold[0].clone()]], &[short]);
        assert_eq!((s.f1, s.overlap_f1), (0.0, 1.0));
    }

    #[test]
    fn a_stray_inside_label_opens_an_entity_and_words_follow_their_first_token() {
        // "Ann Smithson": Ann | Smith | ##son
        let offsets = [(0, 3), (4, 9), (9, 12)];
        let l = labels();
        let one = |k: usize| (0..l.len()).map(|j| (j == k) as u8 as f32).collect();
        // I-PERSON, B-PERSON, (e-mail on the sub-word, ignored): "Ann" opens, "Smithson" anew.
        let probs: Vec<Vec<f32>> = vec![one(2), one(1), one(3)];
        let got: Vec<_> = decode(&offsets, &[true, true, false], &probs, &l)
            .into_iter()
            .map(|e| (e.start, e.end))
            .collect();
        assert_eq!(got, [(0, 3), (4, 12)]);
    }

    #[test]
    fn shape_features_see_capitals_digits_and_word_starts() {
        let text = "Bob 42x";
        let f = shape_features(text, &[(0, 0), (0, 3), (4, 6), (6, 7)]);
        let row = |i: usize| &f[i * SHAPE_DIM..(i + 1) * SHAPE_DIM];
        assert!(row(0).iter().all(|v| *v == 0.0));
        assert_eq!(row(1)[0], 1.0);
        assert_eq!((row(2)[2], row(2)[3], row(2)[5]), (1.0, 1.0, 1.0));
        assert_eq!(row(3)[5], 0.0, "continues the previous token");
    }
}
