//! Where a model comes from: a local directory, or a Hugging Face hub repo at a revision
//! (downloaded once through hf-hub into its cache; `HF_HOME`, `HF_HUB_OFFLINE` are honoured).

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    Local(PathBuf),
    Hub { repo: String, revision: String },
}

impl FromStr for Source {
    type Err = Error;
    /// `hf:org/name[@revision]` is a hub repo; anything else is a local directory.
    fn from_str(s: &str) -> Result<Self> {
        if let Some(rest) = s.strip_prefix("hf:") {
            let (repo, revision) = rest.split_once('@').unwrap_or((rest, "main"));
            if repo.split('/').count() != 2 || repo.contains(' ') {
                return Err(Error::InvalidArgument(format!(
                    "hub source {s:?}: expected hf:org/name[@revision]"
                )));
            }
            return Ok(Source::Hub {
                repo: repo.to_string(),
                revision: revision.to_string(),
            });
        }
        if s.is_empty() {
            return Err(Error::InvalidArgument("empty model source".into()));
        }
        Ok(Source::Local(PathBuf::from(s)))
    }
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Local(p) => write!(f, "{}", p.display()),
            Source::Hub { repo, revision } => write!(f, "hf:{repo}@{revision}"),
        }
    }
}

/// The files of a checkpoint on local disk.
#[derive(Debug, Clone)]
pub struct Files {
    /// Short name: the directory name or the hub repo id.
    pub id: String,
    pub config: PathBuf,
    pub tokenizer: PathBuf,
    pub weights: PathBuf,
    /// sentence-transformers pooling config, if the checkpoint has one.
    pub pooling: Option<PathBuf>,
}

impl Source {
    pub fn resolve(&self) -> Result<Files> {
        match self {
            Source::Local(dir) => resolve_local(dir),
            Source::Hub { repo, revision } => resolve_hub(repo, revision),
        }
    }
}

fn resolve_local(dir: &Path) -> Result<Files> {
    let name = dir.display().to_string();
    if !dir.is_dir() {
        return Err(Error::load(
            &name,
            "not a directory (run models/fetch.sh for the default encoder, or pass hf:org/name)",
        ));
    }
    let need = |f: &str| {
        let p = dir.join(f);
        if p.is_file() {
            Ok(p)
        } else {
            Err(Error::load(&name, format!("missing {f}")))
        }
    };
    let pooling = dir.join("1_Pooling/config.json");
    Ok(Files {
        id: dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or(name.clone()),
        config: need("config.json")?,
        tokenizer: need("tokenizer.json")?,
        weights: need("model.safetensors")?,
        pooling: pooling.is_file().then_some(pooling),
    })
}

fn resolve_hub(repo: &str, revision: &str) -> Result<Files> {
    use hf_hub::{api::sync::ApiBuilder, Repo, RepoType};
    let err = |e: &dyn fmt::Display| Error::load(format!("hf:{repo}@{revision}"), e);
    let api = ApiBuilder::from_env()
        .with_progress(false)
        .build()
        .map_err(|e| err(&e))?;
    let r = api.repo(Repo::with_revision(
        repo.to_string(),
        RepoType::Model,
        revision.to_string(),
    ));
    let get = |f: &str| r.get(f).map_err(|e| err(&format!("{f}: {e}")));
    Ok(Files {
        id: repo.to_string(),
        config: get("config.json")?,
        tokenizer: get("tokenizer.json")?,
        weights: get("model.safetensors")?,
        pooling: r.get("1_Pooling/config.json").ok(),
    })
}

/// Content hash of the given files (first 12 hex digits of SHA-256): the model "version" that
/// clients may put in cache keys, so a changed checkpoint never serves stale answers.
pub fn content_version(paths: &[&Path]) -> Result<String> {
    let mut h = Sha256::new();
    for p in paths {
        let mut f = std::fs::File::open(p)
            .map_err(|e| Error::load(p.display().to_string(), format!("read: {e}")))?;
        std::io::copy(&mut f, &mut h)
            .map_err(|e| Error::load(p.display().to_string(), format!("read: {e}")))?;
    }
    Ok(hex::encode(h.finalize())[..12].to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_sources() {
        assert_eq!(
            "hf:org/m@v1".parse::<Source>().unwrap(),
            Source::Hub {
                repo: "org/m".into(),
                revision: "v1".into()
            }
        );
        assert_eq!(
            "hf:org/m".parse::<Source>().unwrap(),
            Source::Hub {
                repo: "org/m".into(),
                revision: "main".into()
            }
        );
        assert!("hf:nope".parse::<Source>().is_err());
        assert_eq!(
            "models/x".parse::<Source>().unwrap(),
            Source::Local("models/x".into())
        );
    }

    #[test]
    fn missing_dir_says_what_to_do() {
        let e = Source::Local("/nonexistent/m".into())
            .resolve()
            .unwrap_err();
        assert!(e.to_string().contains("fetch.sh"), "{e}");
    }
}
