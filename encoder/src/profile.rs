//! Model profiles: how well each LLM is expected to answer a prompt, from scored prompts near it.
//!
//! A profile keeps scored prompts (their pooled encoder embeddings and, per model, a score in
//! [0, 1] where that model was scored; NaN where it was not) and predicts for a new prompt each
//! model's expected score in three steps:
//! 1. difficulty `d`: the similarity-weighted mean of the reference score (per stored prompt, the
//!    mean score of the models scored on every prompt) over its `k` nearest stored prompts,
//!    shrunk toward the overall mean by `shrinkage`;
//! 2. a base per model, `sigmoid(a + b * logit(d))`: two numbers fitted on the model's own
//!    scores, so that a model scored on a few dozen prompts still moves with the prompt's
//!    difficulty instead of being one constant;
//! 3. the model's own scores on those of the prompt's `k` nearest stored prompts that it was
//!    scored on, shrunk toward that base by `shrinkage`: a model scored on few prompts has few
//!    or none among them, and its prediction is its base.
//!
//! Served as a head of kind `profile` over the normalised pooled embedding (one encoder pass
//! serves it with the other heads): its labels are model names and its values expected scores,
//! not a distribution. `semroute-train profile` builds one (`head.json` + `head.safetensors`).

use std::collections::HashMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The profile's `head.json`: the head fields every head has, and the fitted numbers.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProfileSpec {
    pub task: String,
    /// Always "profile".
    pub kind: String,
    /// Model names, in the order of the stored score columns.
    pub labels: Vec<String>,
    /// Neighbours read, for the difficulty and for each model's own scores.
    pub k: usize,
    /// Pseudo-count of the shrinkage (in units of summed cosine similarity).
    pub shrinkage: f32,
    /// Per model, `(a, b)` of its base `sigmoid(a + b * logit(difficulty))`.
    pub calibration: Vec<[f32; 2]>,
    /// Per model, its mean score over the prompts it was scored on.
    pub prior: Vec<f32>,
    /// Per model, how many prompts it was scored on.
    pub scored: Vec<usize>,
    /// Models whose mean score is the difficulty (scored on every stored prompt).
    pub reference: Vec<String>,
    /// Mean reference score over the stored prompts.
    pub difficulty_mean: f32,
    /// The encoder whose embeddings these are (a profile only means something on it).
    pub encoder: String,
    /// Where the scores came from and how the profile was built (free text).
    #[serde(default)]
    pub source: String,
}

/// A loaded profile.
#[derive(Debug, Clone)]
pub struct Profile {
    pub spec: ProfileSpec,
    dim: usize,
    /// `(rows, dim)`, row-major, L2-normalised.
    embeddings: Vec<f32>,
    /// `(rows, models)`, row-major; NaN where a model was not scored.
    scores: Vec<f32>,
    /// The reference score of each stored prompt.
    difficulty: Vec<f32>,
}

fn logit(p: f32) -> f32 {
    let p = p.clamp(1e-3, 1.0 - 1e-3);
    (p / (1.0 - p)).ln()
}

fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

/// The `k` most similar rows as `(similarity, row)`, in no order.
fn nearest(sims: &[f32], k: usize) -> Vec<(f32, u32)> {
    let mut all: Vec<(f32, u32)> = sims
        .iter()
        .enumerate()
        .map(|(i, &s)| (s, i as u32))
        .collect();
    if all.len() > k && k > 0 {
        all.select_nth_unstable_by(k - 1, |a, b| b.0.total_cmp(&a.0));
        all.truncate(k);
    }
    all
}

/// Similarity-weighted mean of `value(row)` over `near` (NaN values left out), shrunk toward
/// `toward`.
fn shrunk(near: &[(f32, u32)], shrinkage: f32, toward: f32, value: impl Fn(u32) -> f32) -> f32 {
    let (mut num, mut den) = (shrinkage * toward, shrinkage);
    for &(s, r) in near {
        let v = value(r);
        if v.is_nan() {
            continue;
        }
        let w = s.max(0.0);
        num += w * v;
        den += w;
    }
    if den > 0.0 {
        num / den
    } else {
        toward
    }
}

impl Profile {
    /// A profile from its parts; checks that the shapes agree.
    pub fn new(
        spec: ProfileSpec,
        dim: usize,
        embeddings: Vec<f32>,
        scores: Vec<f32>,
        difficulty: Vec<f32>,
    ) -> Result<Self> {
        let m = spec.labels.len();
        let fail = |why: String| Error::load(format!("profile {}", spec.task), why);
        if dim == 0 || !embeddings.len().is_multiple_of(dim) {
            return Err(fail(format!(
                "embeddings of {} values are not rows of {dim}",
                embeddings.len()
            )));
        }
        let rows = embeddings.len() / dim;
        if scores.len() != rows * m || difficulty.len() != rows {
            return Err(fail(format!(
                "{rows} stored prompts but {} scores ({m} models) and {} difficulties",
                scores.len(),
                difficulty.len()
            )));
        }
        if spec.calibration.len() != m || spec.prior.len() != m || spec.scored.len() != m {
            return Err(fail(format!(
                "calibration, prior and scored need one entry per model ({m})"
            )));
        }
        if m < 2 || spec.k == 0 {
            return Err(fail("a profile needs at least 2 models and k >= 1".into()));
        }
        Ok(Self {
            spec,
            dim,
            embeddings,
            scores,
            difficulty,
        })
    }

    pub fn dim(&self) -> usize {
        self.dim
    }

    pub fn rows(&self) -> usize {
        self.difficulty.len()
    }

    pub fn models(&self) -> &[String] {
        &self.spec.labels
    }

    /// The stored embeddings `(rows, dim)`, row-major (for a device-side similarity product).
    pub fn embeddings(&self) -> &[f32] {
        &self.embeddings
    }

    /// Cosine similarity of a normalised embedding to every stored prompt.
    pub fn similarities(&self, embedding: &[f32]) -> Vec<f32> {
        self.embeddings
            .chunks_exact(self.dim)
            .map(|row| row.iter().zip(embedding).map(|(a, b)| a * b).sum())
            .collect()
    }

    /// Every model's expected score, from the prompt's similarities to the stored prompts.
    pub fn predict(&self, sims: &[f32]) -> Vec<f32> {
        let s = &self.spec;
        let m = s.labels.len();
        let near = nearest(sims, s.k);
        let d = shrunk(&near, s.shrinkage, s.difficulty_mean, |r| {
            self.difficulty[r as usize]
        });
        let ld = logit(d);
        (0..m)
            .map(|j| {
                let [a, b] = s.calibration[j];
                let base = sigmoid(a + b * ld);
                shrunk(&near, s.shrinkage, base, |r| {
                    self.scores[r as usize * m + j]
                })
            })
            .collect()
    }

    /// `predict` for a normalised embedding.
    pub fn predict_embedding(&self, embedding: &[f32]) -> Vec<f32> {
        self.predict(&self.similarities(embedding))
    }

    /// Reads `head.json` and `head.safetensors` of a profile directory.
    pub fn load(dir: &Path) -> Result<Self> {
        let name = dir.display().to_string();
        let text = std::fs::read_to_string(dir.join("head.json"))
            .map_err(|e| Error::load(&name, format!("head.json: {e}")))?;
        let mut spec: ProfileSpec = serde_json::from_str(&text)
            .map_err(|e| Error::load(&name, format!("head.json (profile): {e}")))?;
        if spec.task.is_empty() {
            spec.task = dir
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
        }
        let bytes = std::fs::read(dir.join("head.safetensors"))
            .map_err(|e| Error::load(&name, format!("head.safetensors: {e}")))?;
        let st = safetensors::SafeTensors::deserialize(&bytes)
            .map_err(|e| Error::load(&name, format!("head.safetensors: {e}")))?;
        let get = |key: &str| -> Result<(Vec<usize>, Vec<f32>)> {
            let t = st
                .tensor(key)
                .map_err(|e| Error::load(&name, format!("head.safetensors {key}: {e}")))?;
            if t.dtype() != safetensors::Dtype::F32 {
                return Err(Error::load(&name, format!("{key}: expected f32")));
            }
            let v = t
                .data()
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect();
            Ok((t.shape().to_vec(), v))
        };
        let (shape, embeddings) = get("embeddings")?;
        let dim = *shape.get(1).unwrap_or(&0);
        let (_, scores) = get("scores")?;
        let (_, difficulty) = get("difficulty")?;
        Self::new(spec, dim, embeddings, scores, difficulty).map_err(|e| match e {
            Error::ModelLoad { reason, .. } => Error::load(&name, reason),
            e => e,
        })
    }

    /// Writes the profile as `dir/head.json` + `dir/head.safetensors`.
    pub fn save(&self, dir: &Path) -> Result<()> {
        let io = |what: &str, e: &dyn std::fmt::Display| {
            Error::load(dir.display().to_string(), format!("{what}: {e}"))
        };
        std::fs::create_dir_all(dir).map_err(|e| io("create", &e))?;
        let json = serde_json::to_string_pretty(&self.spec).map_err(|e| io("head.json", &e))?;
        std::fs::write(dir.join("head.json"), json + "\n").map_err(|e| io("head.json", &e))?;
        let rows = self.rows();
        let m = self.spec.labels.len();
        let bytes = |v: &[f32]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
        let tensors = [
            ("embeddings", vec![rows, self.dim], bytes(&self.embeddings)),
            ("scores", vec![rows, m], bytes(&self.scores)),
            ("difficulty", vec![rows], bytes(&self.difficulty)),
        ];
        let views: Vec<(String, safetensors::tensor::TensorView)> = tensors
            .iter()
            .map(|(k, shape, data)| {
                safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape.clone(), data)
                    .map(|v| (k.to_string(), v))
            })
            .collect::<std::result::Result<_, _>>()
            .map_err(|e| io("head.safetensors", &e))?;
        let meta = HashMap::from([("format".to_string(), "semroute-profile-1".to_string())]);
        safetensors::serialize_to_file(views, Some(meta), &dir.join("head.safetensors"))
            .map_err(|e| io("head.safetensors", &e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two clusters of prompts: model "a" right on the first, "b" on the second; "c" scored
    /// on two prompts only.
    fn two_clusters() -> Profile {
        let mut emb = Vec::new();
        let mut scores = Vec::new();
        let nan = f32::NAN;
        for i in 0..20 {
            let first = i < 10;
            let v = if first { [1.0, 0.0] } else { [0.0, 1.0] };
            emb.extend(v);
            let c = match i {
                0 => 1.0,
                10 => 0.0,
                _ => nan,
            };
            scores.extend([f32::from(u8::from(first)), f32::from(u8::from(!first)), c]);
        }
        let difficulty = vec![0.5; 20];
        let spec = ProfileSpec {
            task: "quality".into(),
            kind: "profile".into(),
            labels: vec!["a".into(), "b".into(), "c".into()],
            k: 10,
            shrinkage: 1.0,
            calibration: vec![[0.0, 1.0]; 3],
            prior: vec![0.5; 3],
            scored: vec![20, 20, 2],
            reference: vec!["a".into(), "b".into()],
            difficulty_mean: 0.5,
            encoder: "test".into(),
            source: String::new(),
        };
        Profile::new(spec, 2, emb, scores, difficulty).unwrap()
    }

    #[test]
    fn each_model_is_predicted_from_its_own_neighbours() {
        let p = two_clusters();
        let q = p.predict_embedding(&[1.0, 0.0]);
        // 10 neighbours at similarity 1, shrinkage 1 toward the base 0.5: (10 + 0.5) / 11.
        assert!((q[0] - 10.5 / 11.0).abs() < 1e-5, "{q:?}");
        assert!((q[1] - 0.5 / 11.0).abs() < 1e-5, "{q:?}");
        let q = p.predict_embedding(&[0.0, 1.0]);
        assert!(q[1] > 0.9 && q[0] < 0.1, "{q:?}");
    }

    #[test]
    fn a_model_with_few_scores_falls_back_on_its_base() {
        let p = two_clusters();
        // "c" has one score per cluster: among the 10 nearest (the first cluster) its one right
        // answer counts beside the base; the other cluster's score is not among them.
        let q = p.predict_embedding(&[1.0, 0.0]);
        assert!((q[2] - (1.0 + 0.5) / 2.0).abs() < 1e-5, "{q:?}");
        let q = p.predict_embedding(&[0.0, 1.0]);
        assert!((q[2] - 0.5 / 2.0).abs() < 1e-5, "{q:?}");
        // Orthogonal to everything: the base alone.
        let q = p.predict_embedding(&[0.0, 0.0]);
        assert!(q.iter().all(|x| (x - 0.5).abs() < 1e-5), "{q:?}");
    }

    #[test]
    fn saved_and_loaded_it_predicts_the_same() {
        let p = two_clusters();
        let dir = std::env::temp_dir().join(format!("semroute-profile-{}", std::process::id()));
        p.save(&dir).unwrap();
        let back = Profile::load(&dir).unwrap();
        let x = [0.6, 0.8];
        assert_eq!(p.predict_embedding(&x), back.predict_embedding(&x));
        assert_eq!(back.spec.labels, ["a", "b", "c"]);
        std::fs::remove_dir_all(&dir).ok();
    }

    /// Served as a head of a model (a similarity product on the device, then `predict`), the
    /// profile answers what `predict_embedding` answers for the model's own embedding; its
    /// files join the model's revision.
    #[test]
    fn served_as_a_head_it_predicts_what_it_predicts_alone() -> anyhow::Result<()> {
        use crate::{fixtures, Arch, LoadOptions, Model, Source, Truncation};
        let dir = tempfile::tempdir()?;
        let enc = dir.path().join("enc");
        let spec = fixtures::Spec::tiny(Arch::Bert);
        fixtures::write_checkpoint(&enc, &spec)?;
        let mut model = Model::load_encoder(&Source::Local(enc), None, &LoadOptions::default())?;
        let dim = model.meta.hidden_size;
        // 12 stored prompts: unit vectors along the first axes, with scores that differ.
        let rows = 12;
        let mut emb = vec![0.0; rows * dim];
        let mut scores = Vec::new();
        for i in 0..rows {
            emb[i * dim + i % dim] = 1.0;
            emb[i * dim + (i + 1) % dim] = if i % 2 == 0 { 0.5 } else { -0.5 };
            scores.extend([f32::from(u8::from(i % 3 == 0)), 0.25 * (i % 4) as f32]);
        }
        for row in emb.chunks_mut(dim) {
            let n = row.iter().map(|x| x * x).sum::<f32>().sqrt();
            row.iter_mut().for_each(|x| *x /= n);
        }
        let spec = ProfileSpec {
            task: "quality".into(),
            kind: "profile".into(),
            labels: vec!["a".into(), "b".into()],
            k: 4,
            shrinkage: 0.5,
            calibration: vec![[0.1, 1.0], [-0.2, 0.8]],
            prior: vec![0.33, 0.4],
            scored: vec![rows, rows],
            reference: vec!["a".into(), "b".into()],
            difficulty_mean: 0.4,
            encoder: "tiny".into(),
            source: String::new(),
        };
        let alone = Profile::new(spec, dim, emb, scores, vec![0.3; rows])?;
        let pdir = dir.path().join("quality");
        alone.save(&pdir)?;
        let before = model.meta.revision.clone();
        model.add_profile(&pdir)?;
        assert_ne!(model.meta.revision, before);
        assert_eq!(model.tasks.last().unwrap().kind(), "profile");
        let e = model.tokenize(
            "how well does each model answer this?",
            Truncation::Truncate,
        )?;
        let out = model.run(&[&e.ids])?;
        let served = out.probs[0].last().unwrap();
        let expected = alone.predict_embedding(&out.embeddings[0]);
        for (s, x) in served.iter().zip(&expected) {
            assert!((s - x).abs() < 1e-5, "{served:?} vs {expected:?}");
        }
        // A second head for the same task is refused.
        assert!(model.add_profile(&pdir).is_err());
        Ok(())
    }

    #[test]
    fn shapes_that_disagree_are_refused() {
        let p = two_clusters();
        let err = Profile::new(
            p.spec.clone(),
            2,
            vec![0.0; 40],
            vec![0.0; 10],
            vec![0.5; 20],
        )
        .unwrap_err();
        assert!(err.to_string().contains("20 stored prompts"), "{err}");
    }
}
