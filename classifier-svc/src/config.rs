//! Every setting of classifier-svc, by flag and by environment variable (clap).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::batch::BatchConfig;
use semroute_encoder::{LoadOptions, Pooling, Source};

#[derive(Debug, Parser)]
#[command(
    name = "classifier-svc",
    version,
    about = "Batched BERT/ModernBERT classification server over gRPC"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve gRPC (Classify, ClassifyStream, Embed, Info, health, reflection) and HTTP (/metrics, /healthz).
    Serve(ServeArgs),
    /// Measure throughput and latency (offline batches, concurrent gRPC clients, matmul peak) and write a report.
    Bench(BenchArgs),
}

#[derive(Debug, Clone, Args)]
pub struct ModelArgs {
    /// Shared encoder: a local directory or hf:org/name[@revision]; "none" for no shared encoder.
    #[arg(
        long,
        env = "CLASSIFIER_ENCODER",
        default_value = "models/all-MiniLM-L6-v2"
    )]
    pub encoder: String,
    /// Directory of shared-encoder heads (<task>/head.json + head.safetensors); skipped if absent.
    #[arg(long, env = "CLASSIFIER_HEADS", default_value = "models/heads")]
    pub heads: PathBuf,
    /// A model profile (`semroute-train profile`: a directory whose head.json is of kind
    /// `profile`) served by the shared encoder beside its heads: each configured LLM's expected
    /// quality on the text, for the router's selection. Repeatable; none by default.
    #[arg(long = "profile", env = "CLASSIFIER_PROFILES", value_delimiter = ',')]
    pub profiles: Vec<PathBuf>,
    /// Hugging Face sequence-classification checkpoint serving one task, as TASK=SOURCE
    /// (e.g. jailbreak=hf:LLM-Semantic-Router/jailbreak_classifier_modernbert-base_model). Repeatable.
    #[arg(
        long = "checkpoint",
        env = "CLASSIFIER_CHECKPOINTS",
        value_delimiter = ','
    )]
    pub checkpoints: Vec<String>,
    #[arg(long, env = "CLASSIFIER_DEVICE", value_enum, default_value = "cpu")]
    pub device: DeviceKind,
    /// f32 (CPU); f16 or bf16 on CUDA.
    #[arg(long, env = "CLASSIFIER_DTYPE", value_enum, default_value = "f32")]
    pub dtype: DTypeKind,
    /// Max tokens per text, special tokens included; longer texts are truncated (and say so).
    #[arg(long, env = "CLASSIFIER_MAX_LENGTH", default_value_t = 512)]
    pub max_length: usize,
    /// Pooling for embeddings and heads (default: the checkpoint's own, else mean).
    #[arg(long, env = "CLASSIFIER_POOLING", value_parser = parse_pooling)]
    pub pooling: Option<Pooling>,
    /// The cascade's fast tier: a static token-embedding model (`semroute-train distill`), a
    /// local directory or hf:org/name[@revision]; "none" for none. A local directory that is
    /// not there means no fast tier (said once at start).
    #[arg(
        long,
        env = "CLASSIFIER_FAST_ENCODER",
        default_value = "models/static-minilm"
    )]
    pub fast_encoder: String,
    /// The fast tier's heads (<task>/head.json with `cascade.threshold`).
    #[arg(
        long,
        env = "CLASSIFIER_FAST_HEADS",
        default_value = "models/heads-static"
    )]
    pub fast_heads: PathBuf,
}

fn parse_pooling(s: &str) -> Result<Pooling, String> {
    Pooling::parse(s).map_err(|e| e.to_string())
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum DeviceKind {
    Cpu,
    Cuda,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum DTypeKind {
    F32,
    F16,
    Bf16,
}

/// What to load: the shared encoder with its heads, and each sequence-classification checkpoint.
#[derive(Debug, Clone)]
pub enum ModelPlan {
    Encoder {
        source: Source,
        heads: Option<PathBuf>,
        /// Model profile directories served beside the heads.
        profiles: Vec<PathBuf>,
        tasks: Vec<String>,
    },
    Checkpoint {
        task: String,
        source: Source,
    },
}

impl ModelPlan {
    pub fn tasks(&self) -> Vec<String> {
        match self {
            ModelPlan::Encoder { tasks, .. } => tasks.clone(),
            ModelPlan::Checkpoint { task, .. } => vec![task.clone()],
        }
    }
}

impl ModelArgs {
    pub fn load_options(&self) -> anyhow::Result<LoadOptions> {
        let device = match self.device {
            DeviceKind::Cpu => candle_core::Device::Cpu,
            DeviceKind::Cuda => candle_core::Device::new_cuda(0).map_err(|e| {
                anyhow::anyhow!(
                    "--device cuda: {e} (build with --features cuda on a machine with nvcc)"
                )
            })?,
        };
        let dtype = match self.dtype {
            DTypeKind::F32 => candle_core::DType::F32,
            DTypeKind::F16 => candle_core::DType::F16,
            DTypeKind::Bf16 => candle_core::DType::BF16,
        };
        if device.is_cpu() && dtype != candle_core::DType::F32 {
            anyhow::bail!(
                "--dtype {:?} needs --device cuda; the CPU runs f32",
                self.dtype
            );
        }
        Ok(LoadOptions {
            device,
            dtype,
            max_length: self.max_length,
            pooling: self.pooling,
        })
    }

    /// The fast tier to load, if any: its source and heads (None: "none", or a local directory
    /// that is not there).
    pub fn fast_plan(&self) -> anyhow::Result<Option<(Source, PathBuf)>> {
        if self.fast_encoder == "none" {
            return Ok(None);
        }
        let source: Source = self.fast_encoder.parse()?;
        if let Source::Local(dir) = &source {
            if !dir.is_dir() {
                tracing::info!(dir = %dir.display(), "no fast tier: its directory is not there (semroute-train distill makes it)");
                return Ok(None);
            }
        }
        anyhow::ensure!(
            self.fast_heads.is_dir(),
            "--fast-heads {}: not a directory (heads trained on {}, or --fast-encoder none)",
            self.fast_heads.display(),
            self.fast_encoder
        );
        Ok(Some((source, self.fast_heads.clone())))
    }

    /// Parses sources and task names up front, so a typo fails at start-up, not after loading.
    pub fn plan(&self) -> anyhow::Result<Vec<ModelPlan>> {
        let mut plans = Vec::new();
        let mut seen = std::collections::HashSet::new();
        if self.encoder != "none" {
            let heads = self.heads.is_dir().then(|| self.heads.clone());
            let mut tasks = Vec::new();
            if let Some(dir) = &heads {
                for e in std::fs::read_dir(dir)?.filter_map(|e| e.ok()) {
                    if e.path().join("head.json").is_file() {
                        tasks.push(e.file_name().to_string_lossy().into_owned());
                    }
                }
            }
            for p in &self.profiles {
                anyhow::ensure!(
                    p.join("head.json").is_file(),
                    "--profile {}: no head.json there (semroute-train profile makes one)",
                    p.display()
                );
                let spec: serde_json::Value =
                    serde_json::from_str(&std::fs::read_to_string(p.join("head.json"))?)?;
                anyhow::ensure!(
                    spec["kind"] == "profile",
                    "--profile {}: head.json is not of kind \"profile\"",
                    p.display()
                );
                tasks.push(spec["task"].as_str().unwrap_or("quality").to_string());
            }
            tasks.sort();
            plans.push(ModelPlan::Encoder {
                source: self.encoder.parse()?,
                heads,
                profiles: self.profiles.clone(),
                tasks,
            });
        }
        for spec in &self.checkpoints {
            let (task, src) = spec
                .split_once('=')
                .ok_or_else(|| anyhow::anyhow!("--checkpoint {spec:?}: expected TASK=SOURCE"))?;
            plans.push(ModelPlan::Checkpoint {
                task: task.trim().to_string(),
                source: src.trim().parse()?,
            });
        }
        for p in &plans {
            for t in p.tasks() {
                if !seen.insert(t.clone()) {
                    anyhow::bail!("task {t:?} is served by two models; give each task one model");
                }
            }
        }
        if plans.is_empty() {
            anyhow::bail!("nothing to serve: --encoder none and no --checkpoint");
        }
        Ok(plans)
    }
}

#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[arg(long, env = "CLASSIFIER_GRPC_ADDR", default_value = "0.0.0.0:50051")]
    pub grpc_addr: SocketAddr,
    /// /metrics (Prometheus) and /healthz.
    #[arg(long, env = "CLASSIFIER_HTTP_ADDR", default_value = "0.0.0.0:9091")]
    pub http_addr: SocketAddr,
    /// Most texts in one batch.
    #[arg(long, env = "CLASSIFIER_MAX_BATCH_SIZE", default_value_t = 32)]
    pub max_batch_size: usize,
    /// Most padded tokens (rows x longest row) in one batch.
    #[arg(long, env = "CLASSIFIER_MAX_BATCH_TOKENS", default_value_t = 8192)]
    pub max_batch_tokens: usize,
    /// How long an idle model waits for more requests before running a batch (microseconds).
    #[arg(long, env = "CLASSIFIER_MAX_WAIT_US", default_value_t = 0)]
    pub max_wait_us: u64,
    /// Texts in flight across all calls; over it calls fail at once with RESOURCE_EXHAUSTED.
    #[arg(long, env = "CLASSIFIER_MAX_CONCURRENT", default_value_t = 512)]
    pub max_concurrent: usize,
    /// Most texts in one Classify/Embed call.
    #[arg(long, env = "CLASSIFIER_MAX_CLIENT_BATCH", default_value_t = 64)]
    pub max_client_batch: usize,
    /// Longest accepted text in bytes (longer texts are refused, not truncated).
    #[arg(long, env = "CLASSIFIER_MAX_TEXT_BYTES", default_value_t = 256 * 1024)]
    pub max_text_bytes: usize,
    /// Log as JSON lines instead of text (the environment variable takes 1/0, true/false, yes/no,
    /// on/off).
    #[arg(long, env = "CLASSIFIER_LOG_JSON", default_value_t = false,
          value_parser = clap::builder::BoolishValueParser::new())]
    pub log_json: bool,
    /// Fault injection for chaos runs: `POST /chaos {"inference_delay_ms": N}` on the HTTP port
    /// slows every batch by N ms. Off by default (the route does not exist then).
    #[arg(long, env = "CLASSIFIER_CHAOS_CONTROL", default_value_t = false)]
    pub chaos_control: bool,
}

impl ServeArgs {
    pub fn batch_config(&self) -> BatchConfig {
        BatchConfig {
            max_batch_size: self.max_batch_size.max(1),
            max_batch_tokens: self.max_batch_tokens.max(1),
            max_wait: Duration::from_micros(self.max_wait_us),
        }
    }

    pub fn limits(&self) -> Limits {
        Limits {
            max_client_batch: self.max_client_batch.max(1),
            max_concurrent: self.max_concurrent.max(1),
            max_text_bytes: self.max_text_bytes.max(1),
            batch: self.batch_config(),
            chaos_control: self.chaos_control,
        }
    }
}

/// Request limits enforced by the service.
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_client_batch: usize,
    pub max_concurrent: usize,
    pub max_text_bytes: usize,
    pub batch: BatchConfig,
    /// Serve `POST /chaos` (fault injection) on the HTTP port.
    pub chaos_control: bool,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_client_batch: 64,
            max_concurrent: 512,
            max_text_bytes: 256 * 1024,
            batch: BatchConfig::default(),
            chaos_control: false,
        }
    }
}

/// `classifier-svc bench`: what to measure and where the report goes.
#[derive(Debug, Clone, Args)]
pub struct BenchArgs {
    /// MiniLM directory (models/fetch.sh installs it).
    #[arg(long, default_value = "models/all-MiniLM-L6-v2")]
    pub minilm: PathBuf,
    /// Which models: minilm, modernbert (ModernBERT-base sizes, random weights).
    #[arg(long, value_delimiter = ',', default_value = "minilm,modernbert")]
    pub models: Vec<String>,
    /// Prompt lengths in tokens (special tokens included).
    #[arg(long, value_delimiter = ',', default_value = "21,256")]
    pub lengths: Vec<usize>,
    #[arg(long, value_delimiter = ',', default_value = "1,8,32")]
    pub batch_sizes: Vec<usize>,
    #[arg(long, value_delimiter = ',', default_value = "1,16,64")]
    pub clients: Vec<usize>,
    /// Seconds of load per measurement (slow configurations finish their last round).
    #[arg(long, default_value_t = 6.0)]
    pub seconds: f64,
    /// Server batching settings for the gRPC runs.
    #[arg(long, default_value_t = 32)]
    pub max_batch_size: usize,
    #[arg(long, default_value_t = 8192)]
    pub max_batch_tokens: usize,
    /// Open loop: fixed rates (calls/s) of one short text a call...
    #[arg(long, value_delimiter = ',', default_value = "150")]
    pub open_loop_rates: Vec<f64>,
    /// ...and fractions of the capacity measured closed-loop with the most clients.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "0.25,0.5,0.75,0.9,1.0,2.0"
    )]
    pub open_loop_fractions: Vec<f64>,
    /// Deadline sent with each open-loop call as grpc-timeout (the router's is 50 ms); 0 = none.
    #[arg(long, default_value_t = 50)]
    pub deadline_ms: u64,
    /// Where random-weight bench models are cached.
    #[arg(long, default_value = "target/bench-models")]
    pub cache: PathBuf,
    /// The fast tier for `--models tiers`.
    #[arg(long, default_value = "models/static-minilm")]
    pub fast_encoder: PathBuf,
    #[arg(long, default_value = "models/heads-static")]
    pub fast_heads: PathBuf,
    /// MiniLM serves the heads of this directory (e.g. models/heads: the shipped heads, a
    /// windowed guard included) instead of three random-weight ones.
    #[arg(long)]
    pub heads: Option<PathBuf>,
    /// Markdown report to write.
    #[arg(long, default_value = "classifier-svc/BENCH.md")]
    pub output: PathBuf,
}
