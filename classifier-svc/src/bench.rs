//! `classifier-svc bench`: throughput and latency of the real code paths, written as a report.
//!
//! - offline: `Model::run` on batches of 1/8/32 texts (no server);
//! - gRPC: N concurrent closed-loop clients, one text per Classify call, through an in-process
//!   server on loopback with the dynamic batcher;
//! - efficiency: the model's achieved GFLOP/s beside candle's own f32 matmul rate on large square
//!   matrices, measured in the same run;
//! - layouts: one shared encoder with 3 heads vs 3 sequence-classification checkpoints;
//! - open loop: calls sent on a fixed schedule (the router's pattern: one text a call, each with
//!   a gRPC deadline) at fixed rates and at fractions of the closed-loop capacity, latency from
//!   the scheduled send time, so a queue that builds up shows (closed loops hide it).

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

use candle_core::{Device, Tensor};
use semroute_proto::classifier::v1 as pb;
use semroute_proto::classifier::v1::classifier_client::ClassifierClient;

use crate::batch::BatchConfig;
use crate::config::{BenchArgs, Limits};
use semroute_encoder::fixtures;
use semroute_encoder::{Arch, LoadOptions, Model, Source, Truncation};

const WORDS: &[&str] = &[
    "what",
    "is",
    "the",
    "capital",
    "of",
    "north",
    "carolina",
    "how",
    "do",
    "i",
    "compute",
    "income",
    "tax",
    "for",
    "a",
    "small",
    "business",
    "explain",
    "why",
    "sky",
    "blue",
    "write",
    "python",
    "function",
    "that",
    "reverses",
    "linked",
    "list",
    "prove",
    "there",
    "are",
    "infinitely",
    "many",
    "primes",
    "summarize",
    "french",
    "revolution",
    "in",
    "three",
    "sentences",
    "which",
    "drug",
    "interactions",
    "should",
    "patient",
    "know",
    "about",
    "court",
    "ruled",
    "contract",
    "was",
    "void",
    "because",
    "energy",
    "photon",
    "wavelength",
];

/// Deterministic English-like texts of `tokens` tokens each (as `model` tokenizes them).
fn texts(model: &Model, tokens: usize, n: usize, seed: u64) -> Vec<String> {
    let mut state = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    let mut next = move || {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (state >> 33) as usize
    };
    (0..n)
        .map(|_| {
            let mut words: Vec<&str> = Vec::new();
            loop {
                words.push(WORDS[next() % WORDS.len()]);
                let text = words.join(" ");
                let len = model
                    .tokenize(&text, Truncation::Truncate)
                    .map(|e| e.ids.len())
                    .unwrap_or(0);
                if len >= tokens || len >= model.meta.max_length {
                    return text;
                }
            }
        })
        .collect()
}

struct Stats {
    throughput: f64,
    p50_ms: f64,
    p99_ms: f64,
    n: usize,
}

fn stats(mut lat: Vec<Duration>, elapsed: Duration, items: usize) -> Stats {
    lat.sort();
    let pick = |q: f64| {
        if lat.is_empty() {
            return 0.0;
        }
        let i = ((lat.len() as f64 * q).ceil() as usize).clamp(1, lat.len()) - 1;
        lat[i].as_secs_f64() * 1e3
    };
    Stats {
        throughput: items as f64 / elapsed.as_secs_f64(),
        p50_ms: pick(0.5),
        p99_ms: pick(0.99),
        n: lat.len(),
    }
}

/// Offline: repeated `Model::run` on one batch until `seconds` pass (at least 2 runs).
fn offline(model: &Model, texts: &[String], batch: usize, seconds: f64) -> anyhow::Result<Stats> {
    let ids: Vec<Vec<u32>> = texts
        .iter()
        .take(batch)
        .map(|t| model.tokenize(t, Truncation::Truncate).map(|e| e.ids))
        .collect::<Result<_, _>>()?;
    let seqs: Vec<&[u32]> = ids.iter().map(|s| s.as_slice()).collect();
    model.run(&seqs)?; // warm-up
    let mut lat = Vec::new();
    let start = Instant::now();
    while lat.len() < 2 || start.elapsed().as_secs_f64() < seconds {
        let t = Instant::now();
        model.run(&seqs)?;
        lat.push(t.elapsed());
    }
    let elapsed = start.elapsed();
    let n = lat.len();
    Ok(stats(lat, elapsed, n * seqs.len()))
}

/// Closed-loop gRPC clients, each on its own HTTP/2 connection, one text per call.
async fn grpc(
    addr: std::net::SocketAddr,
    texts: Arc<Vec<String>>,
    clients: usize,
    seconds: f64,
) -> anyhow::Result<Stats> {
    let mut conns = Vec::new();
    for _ in 0..clients {
        let ch = tonic::transport::Channel::from_shared(format!("http://{addr}"))?
            .tcp_nodelay(true)
            .connect()
            .await?;
        conns.push(ClassifierClient::new(ch));
    }
    // Warm-up: one call per client.
    let warm = conns.iter().cloned().map(|mut c| {
        let t = texts[0].clone();
        async move {
            c.classify(pb::ClassifyRequest {
                texts: vec![t],
                ..Default::default()
            })
            .await
        }
    });
    for r in futures::future::join_all(warm).await {
        r?;
    }
    let start = Instant::now();
    let stop = start + Duration::from_secs_f64(seconds);
    let tasks = conns.into_iter().enumerate().map(|(i, mut c)| {
        let texts = texts.clone();
        tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut k = i;
            while Instant::now() < stop {
                let text = texts[k % texts.len()].clone();
                k += clients;
                let t = Instant::now();
                c.classify(pb::ClassifyRequest {
                    texts: vec![text],
                    ..Default::default()
                })
                .await
                .map_err(|s| anyhow::anyhow!("classify: {s}"))?;
                lat.push(t.elapsed());
            }
            anyhow::Ok(lat)
        })
    });
    let mut lat = Vec::new();
    for r in futures::future::join_all(tasks).await {
        lat.extend(r??);
    }
    let elapsed = start.elapsed();
    let n = lat.len();
    Ok(stats(lat, elapsed, n))
}

/// One open-loop measurement.
struct OpenLoop {
    offered: f64,
    answered_per_s: f64,
    /// Share of calls answered OK (the rest missed their deadline or were refused).
    answered: f64,
    deadline_missed: usize,
    other_errors: usize,
    p50_ms: f64,
    p99_ms: f64,
}

/// Open loop: `rate` calls a second for `seconds`, each sent at its scheduled time whatever the
/// earlier ones are doing, over a few HTTP/2 connections; latency counts from the scheduled time.
async fn open_loop(
    addr: std::net::SocketAddr,
    texts: Arc<Vec<String>>,
    rate: f64,
    seconds: f64,
    deadline: Option<Duration>,
) -> anyhow::Result<OpenLoop> {
    let mut conns = Vec::new();
    for _ in 0..4 {
        let ch = tonic::transport::Channel::from_shared(format!("http://{addr}"))?
            .tcp_nodelay(true)
            .connect()
            .await?;
        conns.push(ClassifierClient::new(ch));
    }
    let n = ((rate * seconds).round() as usize).max(1);
    let start = tokio::time::Instant::now() + Duration::from_millis(20);
    let mut calls = Vec::with_capacity(n);
    for i in 0..n {
        let at = start + Duration::from_secs_f64(i as f64 / rate);
        tokio::time::sleep_until(at).await;
        let mut c = conns[i % conns.len()].clone();
        let text = texts[i % texts.len()].clone();
        calls.push(tokio::spawn(async move {
            let mut req = tonic::Request::new(pb::ClassifyRequest {
                texts: vec![text],
                ..Default::default()
            });
            if let Some(d) = deadline {
                req.set_timeout(d);
            }
            let r = c.classify(req).await;
            (r.map(|_| ()).map_err(|s| s.code()), at.elapsed())
        }));
    }
    let (mut lat, mut missed, mut other) = (Vec::new(), 0, 0);
    for call in calls {
        match call.await? {
            (Ok(()), t) => lat.push(t),
            (Err(tonic::Code::DeadlineExceeded | tonic::Code::Cancelled), _) => missed += 1,
            (Err(_), _) => other += 1,
        }
    }
    let elapsed = start.elapsed();
    let ok = lat.len();
    let s = stats(lat, elapsed, ok);
    Ok(OpenLoop {
        offered: rate,
        answered_per_s: s.throughput,
        answered: ok as f64 / n as f64,
        deadline_missed: missed,
        other_errors: other,
        p50_ms: s.p50_ms,
        p99_ms: s.p99_ms,
    })
}

/// Best of a few f32 matmuls of `n x n` matrices, in GFLOP/s.
fn matmul_gflops(n: usize) -> anyhow::Result<f64> {
    let a = Tensor::randn(0f32, 1.0, (n, n), &Device::Cpu)?;
    let b = Tensor::randn(0f32, 1.0, (n, n), &Device::Cpu)?;
    a.matmul(&b)?;
    let mut best = f64::MAX;
    for _ in 0..5 {
        let t = Instant::now();
        let c = a.matmul(&b)?;
        c.dims();
        best = best.min(t.elapsed().as_secs_f64());
    }
    Ok(2.0 * (n as f64).powi(3) / best / 1e9)
}

/// Matmul FLOPs of one forward pass over `batch` rows of `t` tokens: the linear layers plus
/// attention (QK^T and PV) over the keys each query may see (ModernBERT's local layers only see
/// their window).
fn forward_flops(arch: Arch, h: usize, layers: usize, inter: usize, batch: usize, t: usize) -> f64 {
    let tokens = (batch * t) as f64;
    let (hf, inter) = (h as f64, inter as f64);
    let linear = match arch {
        Arch::Bert => 4.0 * hf * hf + 2.0 * hf * inter,
        Arch::ModernBert => 4.0 * hf * hf + 3.0 * hf * inter,
        // A table look-up per token.
        Arch::Static => return 0.0,
    };
    let keys = |window: Option<usize>| -> f64 {
        (0..t)
            .map(|i| match window {
                None => t,
                Some(w) => (i + w + 1).min(t) - i.saturating_sub(w),
            })
            .sum::<usize>() as f64
    };
    let attention_layer = |window| 4.0 * hf * keys(window) * batch as f64;
    let attention: f64 = (0..layers)
        .map(|l| match arch {
            Arch::ModernBert if l % 3 != 0 => attention_layer(Some(64)),
            _ => attention_layer(None),
        })
        .sum();
    2.0 * tokens * linear * layers as f64 + attention
}

struct Subject {
    name: String,
    model: Arc<Model>,
    dims: (Arch, usize, usize, usize),
}

/// The cascade's two tiers, texts/s per core count, as served: the encoder tokenizes and runs
/// batches of 32 (what the batch former makes under load), the fast tier tokenizes and runs one
/// text at a time in the caller's thread (what a request does). One core: a one-thread pool;
/// two: the encoder's pool of both, the fast tier on two threads.
fn tiers(args: &BenchArgs, report: &mut String) -> anyhow::Result<()> {
    let encoder = minilm(args)?.model;
    let fast = crate::cascade::FastTier::load(
        &Source::Local(args.fast_encoder.clone()),
        &args.fast_heads,
        &LoadOptions::default(),
    )?;
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    writeln!(
        report,
        "## The cascade's tiers: {} (encoder) and {} (fast tier, {} heads)
",
        encoder.meta.versioned_id(),
        fast.version(),
        fast.model.tasks.len()
    )?;
    writeln!(
        report,
        "Tokenization included in both. The encoder in batches of 32, the fast tier one text at a \
         time on each thread.\n\n| prompt tokens | cores | encoder texts/s | fast tier texts/s | \
         fast / encoder | fast tier µs a text | of which tokenization µs |\n|---|---|---|---|---|---|---|"
    )?;
    for &len in &args.lengths {
        let sample = texts(&encoder, len, 256, len as u64);
        for threads in [1, cores.min(2)] {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()?;
            let enc = pool.install(|| -> anyhow::Result<f64> {
                let mut done = 0usize;
                let start = Instant::now();
                let mut i = 0;
                while done < 64 || start.elapsed().as_secs_f64() < args.seconds {
                    let chunk: Vec<Vec<u32>> = (0..32)
                        .map(|k| {
                            let t = &sample[(i + k) % sample.len()];
                            encoder.tokenize(t, Truncation::Truncate).map(|e| e.ids)
                        })
                        .collect::<Result<_, _>>()?;
                    let seqs: Vec<&[u32]> = chunk.iter().map(Vec::as_slice).collect();
                    encoder.run(&seqs)?;
                    done += 32;
                    i += 32;
                }
                Ok(done as f64 / start.elapsed().as_secs_f64())
            })?;
            let fast_rate = {
                let start = Instant::now();
                let counts: Vec<usize> = std::thread::scope(|sc| {
                    let handles: Vec<_> = (0..threads)
                        .map(|t| {
                            let (fast, sample) = (&fast, &sample);
                            sc.spawn(move || {
                                let mut n = 0usize;
                                while n < 1000 || start.elapsed().as_secs_f64() < args.seconds {
                                    let text = &sample[(n * 7 + t) % sample.len()];
                                    let _ = fast.classify(text, Truncation::Truncate);
                                    n += 1;
                                }
                                n
                            })
                        })
                        .collect();
                    handles.into_iter().map(|h| h.join().unwrap_or(0)).collect()
                });
                counts.iter().sum::<usize>() as f64 / start.elapsed().as_secs_f64()
            };
            // Of a fast-tier text, the tokenizer's share (one thread).
            let tok_us = if threads == 1 {
                let start = Instant::now();
                let mut n = 0usize;
                while n < 1000 || start.elapsed().as_secs_f64() < args.seconds / 2.0 {
                    let _ = fast
                        .model
                        .tokenize(&sample[(n * 7) % sample.len()], Truncation::Truncate);
                    n += 1;
                }
                format!("{:.1}", start.elapsed().as_secs_f64() * 1e6 / n as f64)
            } else {
                "-".into()
            };
            writeln!(
                report,
                "| {len} | {threads} | {enc:.1} | {fast_rate:.0} | **{:.0}x** | {:.1} | {tok_us} |",
                fast_rate / enc,
                threads as f64 * 1e6 / fast_rate
            )?;
            tracing::info!(len, threads, enc, fast_rate, "tiers");
        }
    }
    writeln!(report)?;
    Ok(())
}

fn minilm(args: &BenchArgs) -> anyhow::Result<Subject> {
    let heads = args
        .heads
        .clone()
        .unwrap_or_else(|| args.cache.join("minilm-heads"));
    if args.heads.is_none() && !heads.join("domain/head.json").is_file() {
        let domain: Vec<String> = (0..14).map(|i| format!("d{i}")).collect();
        let domain: Vec<&str> = domain.iter().map(|s| s.as_str()).collect();
        fixtures::write_head(&heads, "domain", &domain, 384, &[], 1)?;
        fixtures::write_head(&heads, "complexity", &["simple", "reasoning"], 384, &[], 2)?;
        fixtures::write_head(&heads, "jailbreak", &["benign", "jailbreak"], 384, &[64], 3)?;
    }
    let model = Model::load_encoder(
        &Source::Local(args.minilm.clone()),
        Some(&heads),
        &LoadOptions::default(),
    )?;
    let name = match &args.heads {
        Some(d) => format!(
            "all-MiniLM-L6-v2 (real weights) + the {} heads of {}",
            model.tasks.len(),
            d.display()
        ),
        None => "all-MiniLM-L6-v2 (real weights) + 3 heads".into(),
    };
    Ok(Subject {
        name,
        model: Arc::new(model),
        dims: (Arch::Bert, 384, 6, 1536),
    })
}

fn modernbert(args: &BenchArgs) -> anyhow::Result<Subject> {
    let dir = args.cache.join("modernbert-base-random");
    let spec = fixtures::Spec::modernbert_base();
    if !dir.join("model.safetensors").is_file() {
        tracing::info!(dir = %dir.display(), "writing random ModernBERT-base checkpoint");
        fixtures::write_checkpoint(&dir, &spec)?;
    }
    let model = Model::load_checkpoint("domain", &Source::Local(dir), &LoadOptions::default())?;
    Ok(Subject {
        name: "ModernBERT-base sizes (random weights), sequence classification, 14 labels".into(),
        model: Arc::new(model),
        dims: (
            Arch::ModernBert,
            spec.hidden,
            spec.layers,
            spec.intermediate,
        ),
    })
}

pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    let mut report = String::new();
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_default();
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let cmd: Vec<String> = std::env::args().collect();
    writeln!(report, "# classifier-svc benchmark\n")?;
    writeln!(
        report,
        "Reproduce: `cargo run --release -p classifier-svc -- {}`\n",
        cmd[1..].join(" ")
    )?;
    writeln!(report, "Machine: {cpu}, {cores} cores; device cpu, f32. Clients run in the same process over loopback (closed loop, one text per call, one HTTP/2 connection per client).\n")?;
    let peak = matmul_gflops(2048)?;
    writeln!(
        report,
        "candle f32 matmul, 2048x2048: **{peak:.1} GFLOP/s** (best of 5)\n"
    )?;
    tracing::info!(peak, "matmul");

    if args.models.iter().any(|m| m == "tiers") {
        tiers(&args, &mut report)?;
    }
    for name in args.models.iter().filter(|m| *m != "tiers") {
        let subject = match name.as_str() {
            "minilm" => minilm(&args)?,
            "modernbert" => modernbert(&args)?,
            other => anyhow::bail!("unknown bench model {other:?} (minilm, modernbert, tiers)"),
        };
        let model = subject.model.clone();
        writeln!(report, "## {}\n", subject.name)?;
        writeln!(
            report,
            "| scenario | prompt tokens | texts/s | p50 ms | p99 ms | samples |"
        )?;
        writeln!(report, "|---|---|---|---|---|---|")?;
        // gRPC server for this model.
        let limits = Limits {
            max_concurrent: 4096,
            batch: BatchConfig {
                max_batch_size: args.max_batch_size,
                max_batch_tokens: args.max_batch_tokens,
                max_wait: Duration::ZERO,
            },
            ..Limits::default()
        };
        let grpc_l = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let http_l = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let running = crate::server::start(grpc_l, http_l, limits.clone(), &[], None).await?;
        let served = match name.as_str() {
            "minilm" => minilm(&args)?.model,
            _ => modernbert(&args)?.model,
        };
        running
            .service
            .add_model(
                Arc::try_unwrap(served).ok().expect("fresh model"),
                limits.batch.clone(),
            )
            .await;
        let mut efficiency = Vec::new();
        // Closed-loop texts/s with the most clients, per length: the open loop's capacity.
        let mut capacity = Vec::new();
        for &len in &args.lengths {
            let pool = texts(&model, len, 256, len as u64);
            let real_len = model.tokenize(&pool[0], Truncation::Truncate)?.ids.len();
            for &b in &args.batch_sizes {
                let m2 = model.clone();
                let p2 = pool.clone();
                let secs = args.seconds;
                let s = tokio::task::spawn_blocking(move || offline(&m2, &p2, b, secs)).await??;
                writeln!(
                    report,
                    "| offline batch {b} | {real_len} | {:.1} | {:.2} | {:.2} | {} |",
                    s.throughput, s.p50_ms, s.p99_ms, s.n
                )?;
                tracing::info!(
                    model = name,
                    len,
                    batch = b,
                    tput = s.throughput,
                    p50 = s.p50_ms,
                    "offline"
                );
                let (arch, h, layers, inter) = subject.dims;
                let flops = forward_flops(arch, h, layers, inter, b, real_len);
                efficiency.push((b, real_len, flops / (s.p50_ms / 1e3) / 1e9));
            }
            let pool = Arc::new(pool);
            for &c in &args.clients {
                let s = grpc(running.grpc_addr, pool.clone(), c, args.seconds).await?;
                if Some(&c) == args.clients.iter().max() {
                    capacity.push((real_len, s.throughput, pool.clone()));
                }
                writeln!(
                    report,
                    "| gRPC {c} clients | {real_len} | {:.1} | {:.2} | {:.2} | {} |",
                    s.throughput, s.p50_ms, s.p99_ms, s.n
                )?;
                tracing::info!(
                    model = name,
                    len,
                    clients = c,
                    tput = s.throughput,
                    p50 = s.p50_ms,
                    p99 = s.p99_ms,
                    "grpc"
                );
            }
        }
        if let Some((len, cap, pool)) = capacity.first() {
            let deadline = (args.deadline_ms > 0).then(|| Duration::from_millis(args.deadline_ms));
            writeln!(report)?;
            writeln!(
                report,
                "Open loop, {len}-token prompts, one text a call, deadline {} (grpc-timeout); capacity = the {}-client closed loop's {cap:.1} texts/s. Latency of answered calls from their scheduled send time; missed = answered DEADLINE_EXCEEDED (dropped before inference or late).\n",
                if args.deadline_ms > 0 { format!("{} ms", args.deadline_ms) } else { "none".into() },
                args.clients.iter().max().copied().unwrap_or(1),
            )?;
            writeln!(
                report,
                "| offered calls/s | of capacity | answered/s | answered | missed | other errors | p50 ms | p99 ms |"
            )?;
            writeln!(report, "|---|---|---|---|---|---|---|---|")?;
            let rates = args
                .open_loop_rates
                .iter()
                .copied()
                .chain(args.open_loop_fractions.iter().map(|f| f * cap));
            for rate in rates.filter(|r| *r > 0.0) {
                let o = open_loop(
                    running.grpc_addr,
                    pool.clone(),
                    rate,
                    args.seconds,
                    deadline,
                )
                .await?;
                writeln!(
                    report,
                    "| {:.0} | {:.0}% | {:.1} | {:.1}% | {} | {} | {:.2} | {:.2} |",
                    o.offered,
                    100.0 * o.offered / cap,
                    o.answered_per_s,
                    100.0 * o.answered,
                    o.deadline_missed,
                    o.other_errors,
                    o.p50_ms,
                    o.p99_ms
                )?;
                tracing::info!(
                    model = name,
                    rate,
                    answered = o.answered,
                    p50 = o.p50_ms,
                    p99 = o.p99_ms,
                    "open loop"
                );
            }
        }
        writeln!(report)?;
        writeln!(report, "Achieved model GFLOP/s (matmul FLOPs as executed / p50 forward time) vs candle matmul peak {peak:.1}:\n")?;
        writeln!(report, "| batch | tokens | GFLOP/s | % of matmul peak |")?;
        writeln!(report, "|---|---|---|---|")?;
        for (b, len, g) in &efficiency {
            writeln!(
                report,
                "| {b} | {len} | {g:.1} | {:.0}% |",
                100.0 * g / peak
            )?;
        }
        if name == "modernbert" {
            // The efficiency target: batch 32 x 128 tokens.
            let pool = texts(&model, 128, 32, 128);
            let t = pool
                .iter()
                .map(|p| model.tokenize(p, Truncation::Truncate).map(|e| e.ids.len()))
                .collect::<Result<Vec<_>, _>>()?
                .into_iter()
                .max()
                .unwrap_or(128);
            let m2 = model.clone();
            let s = tokio::task::spawn_blocking(move || offline(&m2, &pool, 32, 0.0)).await??;
            let flops = forward_flops(Arch::ModernBert, 768, 22, 1152, 32, t);
            let g = flops / (s.p50_ms / 1e3) / 1e9;
            writeln!(
                report,
                "| 32 | {t} (target case) | {g:.1} | **{:.0}%** |",
                100.0 * g / peak
            )?;
        }
        if name == "minilm" {
            // Layout comparison: one encoder pass serves 3 tasks, vs 3 checkpoints = 3 passes.
            let pool = texts(&model, 21, 32, 7);
            let m2 = model.clone();
            let secs = args.seconds;
            let (shared, separate) = tokio::task::spawn_blocking(move || {
                let ids: Vec<Vec<u32>> = pool
                    .iter()
                    .map(|t| m2.tokenize(t, Truncation::Truncate).map(|e| e.ids))
                    .collect::<Result<_, _>>()?;
                let seqs: Vec<&[u32]> = ids.iter().map(|s| s.as_slice()).collect();
                let (mut one, mut three) = (Vec::new(), Vec::new());
                let start = Instant::now();
                while one.len() < 3 || start.elapsed().as_secs_f64() < secs {
                    let t = Instant::now();
                    m2.run(&seqs)?;
                    one.push(t.elapsed());
                    let t = Instant::now();
                    for _ in 0..3 {
                        m2.run(&seqs)?;
                    }
                    three.push(t.elapsed());
                }
                anyhow::Ok((
                    stats(one, start.elapsed(), 0).p50_ms,
                    stats(three, start.elapsed(), 0).p50_ms,
                ))
            })
            .await??;
            writeln!(report, "\nLayouts, 3 tasks on 32 texts of 21 tokens (p50 per batch): one shared encoder + 3 heads {shared:.1} ms; three sequence-classification checkpoints of this size (3 encoder passes) {separate:.1} ms, {:.2}x the cost.", separate / shared)?;
            // Latency of a ~15-token prompt, one client.
            let pool = Arc::new(texts(&model, 15, 64, 15));
            let s = grpc(running.grpc_addr, pool.clone(), 1, args.seconds).await?;
            let n = model.tokenize(&pool[0], Truncation::Truncate)?.ids.len();
            writeln!(report, "\nOne client, {n}-token prompts through gRPC: p50 **{:.2} ms**, p99 {:.2} ms ({:.0} req/s).", s.p50_ms, s.p99_ms, s.throughput)?;
        }
        writeln!(report)?;
        running.shutdown().await;
    }
    if let Some(dir) = args.output.parent() {
        if !dir.as_os_str().is_empty() {
            std::fs::create_dir_all(dir)?;
        }
    }
    std::fs::write(&args.output, &report)?;
    println!("{report}");
    println!("report written to {}", args.output.display());
    Ok(())
}
