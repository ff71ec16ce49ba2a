//! `vllm-sim`: a simulated vLLM backend for tests, the quickstart and load tests. It is NOT a
//! model server: completions are deterministic filler tokens.

use std::time::Duration;

use clap::Parser;
use loadtest::sim::{serve, Control, Mode, SimConfig};

#[derive(Debug, Parser)]
#[command(
    name = "vllm-sim",
    version,
    about = "Simulated vLLM (OpenAI-compatible) backend: filler tokens at a set rate"
)]
struct Args {
    #[arg(long, env = "SIM_ADDR", default_value = "127.0.0.1:8000")]
    addr: std::net::SocketAddr,
    /// Name in the x-sim-backend header and metrics labels.
    #[arg(long, env = "SIM_NAME", default_value = "vllm-sim")]
    name: String,
    /// Served model name (repeatable); none = answer for any model.
    #[arg(long = "model", env = "SIM_MODELS", value_delimiter = ',')]
    models: Vec<String>,
    /// Time to first token, ms.
    #[arg(long, env = "SIM_TTFT_MS", default_value_t = 20)]
    ttft_ms: u64,
    /// Streamed tokens per second (`inf`: no wait between tokens).
    #[arg(long, env = "SIM_TOKENS_PER_SEC", default_value_t = 200.0)]
    tokens_per_sec: f64,
    #[arg(long, env = "SIM_DEFAULT_MAX_TOKENS", default_value_t = 16)]
    default_max_tokens: usize,
    #[arg(long, env = "SIM_MAX_NUM_SEQS", default_value_t = 256)]
    max_num_seqs: usize,
    /// Prefill time per prompt token not in the prefix cache, microseconds (added to the time
    /// to first token; 0: TTFT does not depend on the prompt).
    #[arg(long, env = "SIM_PREFILL_US_PER_TOKEN", default_value_t = 0)]
    prefill_us_per_token: u64,
    /// Prefix-cache blocks (16 tokens each) kept, least recently used evicted; 0: no cache.
    #[arg(long, env = "SIM_PREFIX_CACHE_BLOCKS", default_value_t = 0)]
    prefix_cache_blocks: usize,
    /// Start in this mode (change at run time with POST /sim/control).
    #[arg(long, env = "SIM_MODE", value_enum, default_value = "ok")]
    mode: Mode,
    #[arg(long, env = "SIM_FAIL_STATUS", default_value_t = 500)]
    fail_status: u16,
    #[arg(long, env = "SIM_SLOW_FACTOR", default_value_t = 10.0)]
    slow_factor: f64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .init();
    let a = Args::parse();
    if a.tokens_per_sec.is_nan() || a.tokens_per_sec <= 0.0 {
        anyhow::bail!("--tokens-per-sec must be positive (or inf)");
    }
    let cfg = SimConfig {
        name: a.name,
        models: a.models,
        ttft: Duration::from_millis(a.ttft_ms),
        token_interval: Duration::from_secs_f64(1.0 / a.tokens_per_sec),
        default_max_tokens: a.default_max_tokens,
        max_num_seqs: a.max_num_seqs,
        prefill_per_token: Duration::from_micros(a.prefill_us_per_token),
        prefix_cache_blocks: a.prefix_cache_blocks,
        control: Control {
            mode: a.mode,
            fail_status: a.fail_status,
            slow_factor: a.slow_factor,
        },
    };
    // A backlog of 4096 like vLLM's server (std's 128 drops the SYNs of a burst of connects).
    let socket = if a.addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    let listener = socket
        .bind(a.addr)
        .and_then(|()| socket.listen(4096))
        .map_err(|e| anyhow::anyhow!("bind {}: {e}", a.addr))?;
    tracing::info!(addr = %a.addr, "vllm-sim (simulated backend) listening");
    serve(listener, cfg, async {
        let _ = tokio::signal::ctrl_c().await;
    })
    .await?;
    Ok(())
}
