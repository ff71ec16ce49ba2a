//! Resumable state of `semroute-train finetune`: a CPU run of the encoder fine-tune takes longer
//! than a working session, so every validation writes `<out>/checkpoint/` (the trained weights
//! reached, the best ones so far, the step, the validation history) and `--resume` continues from
//! there. Only the trained tensors are stored (the frozen ones are the base encoder's), and the
//! run's settings are fingerprinted: a checkpoint is never resumed under other data or settings.
//! The optimizers' moment estimates are not stored; a resumed run starts them afresh.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Where the run is: written beside the weights as `state.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct State {
    /// Digest of the settings and the tasks file the run was started with.
    pub fingerprint: String,
    /// Optimizer steps done.
    pub step: usize,
    /// The epoch in progress (1-based) and how many of its batches are done.
    pub epoch: usize,
    pub batches_done: usize,
    /// The best checkpoint so far: its step and mean validation macro-F1.
    pub best_step: usize,
    pub best_mean: f64,
    /// Validation history (as `finetune.json` reports it).
    pub history: Vec<serde_json::Value>,
}

/// Weights of one point of the run: the trained encoder tensors by name and each task's head
/// layers (weight, bias), tasks in the tasks file's order.
pub struct Weights {
    pub encoder: HashMap<String, Tensor>,
    pub heads: Vec<Vec<(Tensor, Tensor)>>,
}

/// The checkpoint directory of a fine-tune output directory.
pub fn dir(out: &Path) -> PathBuf {
    out.join("checkpoint")
}

/// A digest of everything that must match for a resumed run to be the same run.
pub fn fingerprint(parts: &[&str]) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update((p.len() as u64).to_le_bytes());
        h.update(p.as_bytes());
    }
    h.finalize()
        .iter()
        .take(12)
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn flatten(w: &Weights) -> HashMap<String, Tensor> {
    let mut all: HashMap<String, Tensor> = w
        .encoder
        .iter()
        .map(|(n, t)| (format!("encoder/{n}"), t.clone()))
        .collect();
    for (ti, layers) in w.heads.iter().enumerate() {
        for (li, (wt, b)) in layers.iter().enumerate() {
            all.insert(format!("head/{ti}/{li}/weight"), wt.clone());
            all.insert(format!("head/{ti}/{li}/bias"), b.clone());
        }
    }
    all
}

fn unflatten(
    mut all: HashMap<String, Tensor>,
    tasks: usize,
    file: &Path,
) -> anyhow::Result<Weights> {
    let mut heads = Vec::with_capacity(tasks);
    for ti in 0..tasks {
        let mut layers = Vec::new();
        while let (Some(w), Some(b)) = (
            all.remove(&format!("head/{ti}/{}/weight", layers.len())),
            all.remove(&format!("head/{ti}/{}/bias", layers.len())),
        ) {
            layers.push((w, b));
        }
        anyhow::ensure!(
            !layers.is_empty(),
            "{}: no head for task {ti}",
            file.display()
        );
        heads.push(layers);
    }
    let encoder = all
        .into_iter()
        .filter_map(|(n, t)| n.strip_prefix("encoder/").map(|n| (n.to_string(), t)))
        .collect();
    Ok(Weights { encoder, heads })
}

/// Writes the live and best weights and the state; the state goes last (renamed into place), so
/// a run cut off while writing leaves the previous checkpoint whole.
pub fn save(out: &Path, state: &State, live: &Weights, best: &Weights) -> anyhow::Result<()> {
    let d = dir(out);
    std::fs::create_dir_all(&d)?;
    let tag = state.step;
    candle_core::safetensors::save(&flatten(live), d.join(format!("live-{tag}.safetensors")))?;
    candle_core::safetensors::save(&flatten(best), d.join(format!("best-{tag}.safetensors")))?;
    let tmp = d.join("state.json.tmp");
    std::fs::write(&tmp, serde_json::to_string_pretty(state)? + "\n")?;
    std::fs::rename(&tmp, d.join("state.json"))?;
    // Older weight files are no longer named by the state.
    for e in std::fs::read_dir(&d)?.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let keep = [
            format!("live-{tag}.safetensors"),
            format!("best-{tag}.safetensors"),
        ];
        if name.ends_with(".safetensors") && !keep.contains(&name) {
            let _ = std::fs::remove_file(e.path());
        }
    }
    Ok(())
}

/// Reads the checkpoint of `out`, refusing one made under another fingerprint.
pub fn load(
    out: &Path,
    fingerprint: &str,
    tasks: usize,
    device: &Device,
) -> anyhow::Result<(State, Weights, Weights)> {
    let d = dir(out);
    let path = d.join("state.json");
    let text = std::fs::read_to_string(&path).map_err(|e| {
        anyhow::anyhow!(
            "--resume: {}: {e} (no checkpoint: start without --resume)",
            path.display()
        )
    })?;
    let state: State =
        serde_json::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    anyhow::ensure!(
        state.fingerprint == fingerprint,
        "--resume: {} was written by a run with other data or settings (fingerprint {} here, {} there)",
        path.display(),
        fingerprint,
        state.fingerprint
    );
    let read = |kind: &str| -> anyhow::Result<Weights> {
        let file = d.join(format!("{kind}-{}.safetensors", state.step));
        let all = candle_core::safetensors::load(&file, device)
            .map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
        unflatten(all, tasks, &file)
    };
    let (live, best) = (read("live")?, read("best")?);
    Ok((state, live, best))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn weights(v: f32) -> Weights {
        let t = |n: usize| Tensor::full(v, n, &Device::Cpu).unwrap();
        Weights {
            encoder: HashMap::from([("encoder.layer.1.output.dense.bias".to_string(), t(4))]),
            heads: vec![vec![(t(6), t(2))], vec![(t(8), t(4)), (t(4), t(2))]],
        }
    }

    fn first(t: &Tensor) -> f32 {
        t.to_vec1::<f32>().unwrap()[0]
    }

    #[test]
    fn a_checkpoint_round_trips_and_refuses_other_settings() {
        let dir = tempfile::tempdir().unwrap();
        let fp = fingerprint(&["tasks", "16"]);
        assert_ne!(fp, fingerprint(&["tasks1", "6"]), "parts are delimited");
        let mut state = State {
            fingerprint: fp.clone(),
            step: 20,
            epoch: 1,
            batches_done: 20,
            best_step: 20,
            best_mean: 0.5,
            history: vec![serde_json::json!({"step": 20})],
        };
        save(dir.path(), &state, &weights(1.0), &weights(2.0)).unwrap();
        state.step = 40;
        save(dir.path(), &state, &weights(3.0), &weights(2.0)).unwrap();
        let (got, live, best) = load(dir.path(), &fp, 2, &Device::Cpu).unwrap();
        assert_eq!(got, state);
        assert_eq!(
            first(&live.encoder["encoder.layer.1.output.dense.bias"]),
            3.0
        );
        assert_eq!(live.heads[1].len(), 2);
        assert_eq!(first(&best.heads[1][1].0), 2.0);
        let files = std::fs::read_dir(super::dir(dir.path())).unwrap().count();
        assert_eq!(files, 3, "the step-20 weights were removed");

        let other = load(dir.path(), &fingerprint(&["other"]), 2, &Device::Cpu);
        assert!(other.err().unwrap().to_string().contains("other data"));
        let missing = load(&dir.path().join("nothing"), &fp, 2, &Device::Cpu);
        assert!(missing.err().unwrap().to_string().contains("no checkpoint"));
    }
}
