//! The gRPC service end to end over loopback: Classify, ClassifyStream, Embed, Info, health,
//! reflection, limits, deadlines, malformed requests, /healthz and /metrics.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use classifier_svc::batch::{BatchConfig, Batcher};
use classifier_svc::config::Limits;
use classifier_svc::error::Error;
use classifier_svc::server::{self, Running};
use semroute_encoder::fixtures::{self, Spec};
use semroute_encoder::{Arch, LoadOptions, Model, Source};
use semroute_proto::classifier::v1 as pb;
use semroute_proto::classifier::v1::classifier_client::ClassifierClient;
use tonic::transport::Channel;
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

fn encoder(dir: &Path, arch: Arch) -> Model {
    let enc = dir.join("enc");
    fixtures::write_checkpoint(&enc, &Spec::tiny(arch)).unwrap();
    let heads = dir.join("heads");
    fixtures::write_head(&heads, "domain", &["math", "law", "other"], 32, &[], 1).unwrap();
    fixtures::write_head(&heads, "complexity", &["simple", "reasoning"], 32, &[8], 2).unwrap();
    let opts = LoadOptions {
        max_length: 24,
        ..Default::default()
    };
    Model::load_encoder(&Source::Local(enc), Some(&heads), &opts).unwrap()
}

fn checkpoint(dir: &Path) -> Model {
    let spec = Spec::tiny(Arch::ModernBert).with_labels(&["benign", "jailbreak"]);
    fixtures::write_checkpoint(dir, &spec).unwrap();
    Model::load_checkpoint(
        "jailbreak",
        &Source::Local(dir.into()),
        &LoadOptions::default(),
    )
    .unwrap()
}

async fn start(limits: Limits, tasks: &[&str]) -> Running {
    let g = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let h = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let tasks: Vec<String> = tasks.iter().map(|s| s.to_string()).collect();
    server::start(g, h, limits, &tasks, None).await.unwrap()
}

async fn full_server(limits: Limits) -> (Running, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let running = start(limits.clone(), &["domain", "complexity", "jailbreak"]).await;
    running
        .service
        .add_model(encoder(dir.path(), Arch::Bert), limits.batch.clone())
        .await;
    running
        .service
        .add_model(checkpoint(&dir.path().join("jb")), limits.batch.clone())
        .await;
    running.service.mark_ready().await;
    (running, dir)
}

async fn channel(r: &Running) -> Channel {
    Channel::from_shared(format!("http://{}", r.grpc_addr))
        .unwrap()
        .connect()
        .await
        .unwrap()
}

fn req(texts: &[&str], tasks: &[&str]) -> pb::ClassifyRequest {
    pb::ClassifyRequest {
        texts: texts.iter().map(|s| s.to_string()).collect(),
        tasks: tasks.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    }
}

#[tokio::test]
async fn classify_returns_every_task_with_distributions_and_timings() {
    let (running, _dir) = full_server(Limits::default()).await;
    let mut c = ClassifierClient::new(channel(&running).await);
    let r = c
        .classify(req(
            &["What is the capital of North Carolina?", "hello world"],
            &[],
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.results.len(), 2);
    for text in &r.results {
        let tasks: Vec<&str> = text.results.iter().map(|t| t.task.as_str()).collect();
        assert_eq!(tasks, vec!["complexity", "domain", "jailbreak"]);
        for t in &text.results {
            let sum: f32 = t.scores.iter().map(|s| s.probability).sum();
            assert!((sum - 1.0).abs() < 1e-4);
            let best = t.scores.iter().map(|s| s.probability).fold(0.0, f32::max);
            assert_eq!(best, t.probability);
            assert!(t
                .scores
                .iter()
                .any(|s| s.label == t.label && s.probability == t.probability));
            assert!(t.model.contains('@'), "versioned model id: {}", t.model);
        }
        assert_eq!(text.timings.len(), 2, "two encoders ran");
        assert!(text
            .timings
            .iter()
            .all(|t| t.batch_size >= 1 && t.batch_tokens >= 1));
        assert!(text.num_tokens > 2);
        assert!(!text.truncated);
    }
    // A subset of tasks only touches the model that serves them.
    let r = c
        .classify(req(&["hello"], &["jailbreak"]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.results[0].results.len(), 1);
    assert_eq!(r.results[0].timings.len(), 1);
    let labels: Vec<_> = r.results[0].results[0]
        .scores
        .iter()
        .map(|s| s.label.as_str())
        .collect();
    assert_eq!(labels, vec!["benign", "jailbreak"]);
    running.shutdown().await;
}

#[tokio::test]
async fn truncation_is_reported_or_refused() {
    let (running, _dir) = full_server(Limits::default()).await;
    let mut c = ClassifierClient::new(channel(&running).await);
    let long = "the capital of north carolina ".repeat(30);
    let r = c
        .classify(req(&[long.as_str()], &["domain"]))
        .await
        .unwrap()
        .into_inner();
    assert!(r.results[0].truncated);
    assert_eq!(r.results[0].num_tokens, 24);
    let mut refuse = req(&[long.as_str()], &["domain"]);
    refuse.truncation = pb::Truncation::Reject as i32;
    let e = c.classify(refuse).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("max length"), "{}", e.message());
    running.shutdown().await;
}

#[tokio::test]
async fn malformed_requests_get_invalid_argument_with_a_message() {
    let limits = Limits {
        max_client_batch: 4,
        max_text_bytes: 1000,
        ..Limits::default()
    };
    let (running, _dir) = full_server(limits).await;
    let mut c = ClassifierClient::new(channel(&running).await);
    let long = "x".repeat(1001);
    let cases: Vec<(pb::ClassifyRequest, &str)> = vec![
        (req(&[], &[]), "texts is empty"),
        (req(&["ok", ""], &[]), "texts[1] is empty"),
        (req(&["   "], &[]), "texts[0] is empty"),
        (req(&["a", "b", "c", "d", "e"], &[]), "limit is 4"),
        (req(&[long.as_str()], &[]), "bytes"),
        (req(&["hello"], &["nope"]), "unknown task \"nope\""),
        (
            pb::ClassifyRequest {
                texts: vec!["hi".into()],
                tasks: vec![],
                truncation: 42,
                ..Default::default()
            },
            "truncation",
        ),
    ];
    for (r, needle) in cases {
        let e = c.classify(r).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{}", e.message());
        assert!(
            e.message().contains(needle),
            "{:?} lacks {needle:?}",
            e.message()
        );
    }
    let e = c
        .embed(pb::EmbedRequest {
            texts: vec!["hi".into()],
            model: "missing".into(),
            truncation: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    running.shutdown().await;
}

#[tokio::test]
async fn info_lists_models_tasks_labels_and_limits() {
    let (running, _dir) = full_server(Limits::default()).await;
    let mut c = ClassifierClient::new(channel(&running).await);
    let info = c.info(pb::InfoRequest {}).await.unwrap().into_inner();
    assert_eq!(info.models.len(), 2);
    assert_eq!(info.models[0].architecture, "bert");
    assert_eq!(info.models[1].architecture, "modernbert");
    assert_eq!(info.models[0].tasks, vec!["complexity", "domain"]);
    assert_eq!(info.models[0].revision.len(), 12);
    let domain = info.tasks.iter().find(|t| t.name == "domain").unwrap();
    assert_eq!(domain.labels, vec!["math", "law", "other"]);
    assert_eq!(domain.kind, "head");
    let jb = info.tasks.iter().find(|t| t.name == "jailbreak").unwrap();
    assert_eq!(jb.kind, "sequence_classification");
    let limits = info.limits.unwrap();
    assert_eq!(limits.max_batch_size, 32);
    assert_eq!(limits.max_client_batch, 64);
    running.shutdown().await;
}

#[tokio::test]
async fn embed_returns_normalised_vectors() {
    let (running, _dir) = full_server(Limits::default()).await;
    let mut c = ClassifierClient::new(channel(&running).await);
    let r = c
        .embed(pb::EmbedRequest {
            texts: vec!["hello world".into(), "write a poem".into()],
            model: String::new(),
            truncation: 0,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.dimensions, 32);
    assert_eq!(r.embeddings.len(), 2);
    for e in &r.embeddings {
        let norm: f32 = e.values.iter().map(|v| v * v).sum();
        assert!((norm - 1.0).abs() < 1e-4);
    }
    running.shutdown().await;
}

#[tokio::test]
async fn classify_can_return_the_embedding_from_the_same_pass() {
    let (running, _dir) = full_server(Limits::default()).await;
    let mut c = ClassifierClient::new(channel(&running).await);
    let text = "write a poem about the sea";
    let embed = c
        .embed(pb::EmbedRequest {
            texts: vec![text.into()],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let mut r = req(&[text], &[]);
    r.include_embedding = true;
    let classified = c.classify(r).await.unwrap().into_inner();
    let got = &classified.results[0].embedding;
    let want = &embed.embeddings[0].values;
    assert_eq!(got.len(), want.len());
    assert!(got.iter().zip(want).all(|(a, b)| (a - b).abs() < 1e-5));
    assert!(
        !classified.results[0].results.is_empty(),
        "tasks still answered"
    );
    let plain = c.classify(req(&[text], &[])).await.unwrap().into_inner();
    assert!(plain.results[0].embedding.is_empty(), "only when asked");
    running.shutdown().await;
}

#[tokio::test]
async fn health_goes_from_not_serving_to_serving_per_task() {
    let dir = tempfile::tempdir().unwrap();
    let limits = Limits::default();
    let running = start(limits.clone(), &["domain", "complexity", "jailbreak"]).await;
    let mut h = HealthClient::new(channel(&running).await);
    let status = |svc: &str| HealthCheckRequest {
        service: svc.to_string(),
    };
    for svc in [
        "",
        "semroute.classifier.v1.Classifier",
        "domain",
        "jailbreak",
    ] {
        let s = h.check(status(svc)).await.unwrap().into_inner().status;
        assert_eq!(s, ServingStatus::NotServing as i32, "{svc}");
    }
    // Calls before loading: UNAVAILABLE, and /healthz 503.
    let mut c = ClassifierClient::new(channel(&running).await);
    assert_eq!(
        c.classify(req(&["hi"], &[])).await.unwrap_err().code(),
        Code::Unavailable
    );
    assert!(http_get(running.http_addr, "/healthz")
        .await
        .starts_with("HTTP/1.1 503"));

    running
        .service
        .add_model(encoder(dir.path(), Arch::Bert), limits.batch.clone())
        .await;
    let s = h.check(status("domain")).await.unwrap().into_inner().status;
    assert_eq!(s, ServingStatus::Serving as i32);
    let s = h
        .check(status("jailbreak"))
        .await
        .unwrap()
        .into_inner()
        .status;
    assert_eq!(
        s,
        ServingStatus::NotServing as i32,
        "its model is not loaded yet"
    );
    running
        .service
        .add_model(checkpoint(&dir.path().join("jb")), limits.batch.clone())
        .await;
    running.service.mark_ready().await;
    for svc in ["", "semroute.classifier.v1.Classifier", "jailbreak"] {
        let s = h.check(status(svc)).await.unwrap().into_inner().status;
        assert_eq!(s, ServingStatus::Serving as i32, "{svc}");
    }
    let body = http_get(running.http_addr, "/healthz").await;
    assert!(body.starts_with("HTTP/1.1 200"), "{body}");
    assert!(body.contains("serving"));
    running.shutdown().await;
}

/// Lists the services over one reflection protocol (`v1` or `v1alpha`: the same messages in two
/// packages, hence the macro).
macro_rules! reflection_services {
    ($running:expr, $pb:ident) => {{
        use tonic_reflection::pb::$pb::server_reflection_client::ServerReflectionClient;
        use tonic_reflection::pb::$pb::server_reflection_request::MessageRequest;
        use tonic_reflection::pb::$pb::server_reflection_response::MessageResponse;
        use tonic_reflection::pb::$pb::ServerReflectionRequest;
        let mut c = ServerReflectionClient::new(channel($running).await);
        let req = ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        };
        let mut stream = c
            .server_reflection_info(tokio_stream::iter(vec![req]))
            .await
            .unwrap()
            .into_inner();
        let msg = stream.message().await.unwrap().unwrap();
        let Some(MessageResponse::ListServicesResponse(list)) = msg.message_response else {
            panic!("unexpected reflection answer over {}", stringify!($pb));
        };
        list.service
            .into_iter()
            .map(|s| s.name)
            .collect::<Vec<String>>()
    }};
}

#[tokio::test]
async fn reflection_lists_the_services_over_v1_and_v1alpha() {
    let (running, _dir) = full_server(Limits::default()).await;
    let v1 = reflection_services!(&running, v1);
    let v1alpha = reflection_services!(&running, v1alpha);
    for names in [&v1, &v1alpha] {
        for want in ["semroute.classifier.v1.Classifier", "grpc.health.v1.Health"] {
            assert!(names.contains(&want.to_string()), "{want} not in {names:?}");
        }
    }
    assert!(
        v1.contains(&"grpc.reflection.v1.ServerReflection".to_string()),
        "{v1:?}"
    );
    assert!(
        v1alpha.contains(&"grpc.reflection.v1alpha.ServerReflection".to_string()),
        "{v1alpha:?}"
    );
    running.shutdown().await;
}

#[tokio::test]
async fn over_the_concurrency_limit_is_resource_exhausted_at_once() {
    let limits = Limits {
        max_concurrent: 2,
        ..Limits::default()
    };
    let (running, _dir) = full_server(limits).await;
    let ch = channel(&running).await;
    // More texts than the whole server admits.
    let mut c = ClassifierClient::new(ch.clone());
    let started = Instant::now();
    let e = c
        .classify(req(&["a", "b", "c"], &["domain"]))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted);
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "refused at once"
    );
    // A flood: every call either succeeds or is refused; none hangs.
    let calls = (0..100).map(|i| {
        let mut c = ClassifierClient::new(ch.clone());
        async move {
            let text = format!("prove the theorem about the integral {i} ").repeat(3);
            c.classify(req(&[text.as_str()], &[])).await
        }
    });
    let results = tokio::time::timeout(Duration::from_secs(60), futures::future::join_all(calls))
        .await
        .expect("no call hangs");
    let refused = results
        .iter()
        .filter(|r| matches!(r, Err(s) if s.code() == Code::ResourceExhausted))
        .count();
    let ok = results.iter().filter(|r| r.is_ok()).count();
    assert_eq!(ok + refused, 100, "only OK or RESOURCE_EXHAUSTED");
    assert!(refused > 0 && ok > 0, "ok {ok}, refused {refused}");
    running.shutdown().await;
}

#[tokio::test]
async fn expired_deadlines_are_dropped_before_inference() {
    let dir = tempfile::tempdir().unwrap();
    let model = Arc::new(encoder(dir.path(), Arch::Bert));
    let batcher = Batcher::spawn(model.clone(), BatchConfig::default());
    let ids = model.tokenize("hello", Default::default()).unwrap().ids;
    let past = Instant::now() - Duration::from_millis(5);
    let r = batcher
        .submit(ids.clone(), Vec::new(), Some(past))
        .await
        .unwrap();
    assert!(matches!(r, Err(Error::DeadlineExceeded(_))), "{r:?}");
    let ok = batcher
        .submit(
            ids,
            Vec::new(),
            Some(Instant::now() + Duration::from_secs(10)),
        )
        .await
        .unwrap();
    assert!(ok.is_ok());

    // Through gRPC: a 1 ns grpc-timeout cannot be met.
    let (running, _dir2) = full_server(Limits::default()).await;
    let mut c = ClassifierClient::new(channel(&running).await);
    let mut r = tonic::Request::new(req(&["hello"], &[]));
    r.metadata_mut()
        .insert("grpc-timeout", "1n".parse().unwrap());
    let e = c.classify(r).await.unwrap_err();
    assert!(
        matches!(e.code(), Code::DeadlineExceeded | Code::Cancelled),
        "{:?}",
        e
    );
    running.shutdown().await;
}

#[tokio::test]
async fn stream_answers_each_request_and_survives_errors() {
    let (running, _dir) = full_server(Limits::default()).await;
    let mut c = ClassifierClient::new(channel(&running).await);
    let msgs = vec![
        pb::ClassifyStreamRequest {
            request_id: 1,
            request: Some(req(&["hello"], &["domain"])),
        },
        pb::ClassifyStreamRequest {
            request_id: 2,
            request: Some(req(&[""], &[])),
        },
        pb::ClassifyStreamRequest {
            request_id: 3,
            request: Some(req(&["write a poem", "prove it"], &[])),
        },
    ];
    let mut stream = c
        .classify_stream(tokio_stream::iter(msgs))
        .await
        .unwrap()
        .into_inner();
    let mut seen = std::collections::BTreeMap::new();
    while let Some(m) = stream.message().await.unwrap() {
        seen.insert(m.request_id, m.outcome.unwrap());
    }
    assert_eq!(seen.len(), 3);
    use pb::classify_stream_response::Outcome;
    assert!(matches!(&seen[&1], Outcome::Response(r) if r.results.len() == 1));
    assert!(matches!(&seen[&2], Outcome::Error(e) if e.code == Code::InvalidArgument as i32));
    assert!(matches!(&seen[&3], Outcome::Response(r) if r.results.len() == 2));
    running.shutdown().await;
}

#[tokio::test]
async fn batches_form_under_concurrent_load_and_match_single_results() {
    // A short max wait lets the first batch gather company even on a fast tiny model.
    let mut limits = Limits::default();
    limits.batch.max_wait = Duration::from_millis(2);
    let (running, _dir) = full_server(limits).await;
    let ch = channel(&running).await;
    let texts: Vec<String> = (0..40)
        .map(|i| {
            format!(
                "what is the capital {} of north carolina",
                "tax ".repeat(i % 7)
            )
        })
        .collect();
    let mut c = ClassifierClient::new(ch.clone());
    let mut alone = Vec::new();
    for t in &texts {
        let r = c
            .classify(req(&[t.as_str()], &["domain"]))
            .await
            .unwrap()
            .into_inner();
        alone.push(r.results[0].results[0].scores.clone());
    }
    let calls = texts.iter().map(|t| {
        let mut c = ClassifierClient::new(ch.clone());
        let t = t.clone();
        async move {
            c.classify(req(&[t.as_str()], &["domain"]))
                .await
                .unwrap()
                .into_inner()
        }
    });
    let together = futures::future::join_all(calls).await;
    let max_batch = together
        .iter()
        .map(|r| r.results[0].timings[0].batch_size)
        .max()
        .unwrap();
    assert!(max_batch > 1, "concurrent calls share batches");
    for (a, b) in alone.iter().zip(&together) {
        for (x, y) in a.iter().zip(&b.results[0].results[0].scores) {
            assert!((x.probability - y.probability).abs() < 1e-4);
        }
    }
    running.shutdown().await;
}

#[tokio::test]
async fn metrics_are_exported() {
    // One recorder per process; this test binary installs it here only.
    let handle = classifier_svc::metrics::install().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let g = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let h = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let running = server::start(g, h, Limits::default(), &[], Some(handle))
        .await
        .unwrap();
    running
        .service
        .add_model(encoder(dir.path(), Arch::Bert), BatchConfig::default())
        .await;
    let mut c = ClassifierClient::new(channel(&running).await);
    c.classify(req(&["hello"], &[])).await.unwrap();
    let _ = c.classify(req(&[], &[])).await;
    let body = http_get(running.http_addr, "/metrics").await;
    for name in [
        "classifier_requests_total",
        "classifier_batch_size",
        "classifier_batch_tokens",
        "classifier_queue_duration_seconds",
        "classifier_tokenization_duration_seconds",
        "classifier_inference_duration_seconds",
        "classifier_queue_size",
    ] {
        assert!(body.contains(name), "{name} missing from /metrics");
    }
    assert!(body.contains("code=\"InvalidArgument\""));
    assert!(!body.contains("hello"), "no prompt text in metrics");
    running.shutdown().await;
}

async fn http_get(addr: std::net::SocketAddr, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out
}

#[tokio::test]
async fn token_tasks_return_entities_with_patterns_and_run_only_when_asked() {
    let dir = tempfile::tempdir().unwrap();
    let enc = dir.path().join("enc");
    fixtures::write_checkpoint(&enc, &Spec::tiny(Arch::Bert)).unwrap();
    let heads = dir.path().join("heads");
    fixtures::write_head(&heads, "domain", &["math", "law", "other"], 32, &[], 1).unwrap();
    fixtures::write_token_head(&heads, "pii", &["PERSON", "EMAIL_ADDRESS"], 32, 1, 3).unwrap();
    let model =
        Model::load_encoder(&Source::Local(enc), Some(&heads), &LoadOptions::default()).unwrap();
    let limits = Limits::default();
    let running = start(limits.clone(), &["domain", "pii"]).await;
    running.service.add_model(model, limits.batch.clone()).await;
    running.service.mark_ready().await;
    let mut c = ClassifierClient::new(channel(&running).await);

    let info = c.info(pb::InfoRequest {}).await.unwrap().into_inner();
    let pii = info.tasks.iter().find(|t| t.name == "pii").unwrap();
    assert_eq!(pii.kind, "token_classification");
    assert_eq!(pii.labels[0], "O");

    let texts = ["mail bob@example.com now", "hello there world"];
    let r = c
        .classify(req(&texts, &["pii"]))
        .await
        .unwrap()
        .into_inner();
    for (text, res) in texts.iter().zip(&r.results) {
        assert_eq!(res.results.len(), 1);
        let t = &res.results[0];
        assert_eq!(t.task, "pii");
        assert!(t.label == "found" || t.label == "none", "{}", t.label);
        assert_eq!(t.label == "found", !res.entities.is_empty());
        let mut end = 0;
        for e in &res.entities {
            assert!(
                e.start >= end && e.end > e.start,
                "ordered, not overlapping"
            );
            assert!(text.get(e.start as usize..e.end as usize).is_some());
            end = e.end;
        }
    }
    // The e-mail is found by its validated pattern whatever the random head says.
    let mail = r.results[0]
        .entities
        .iter()
        .find(|e| e.entity_type == "EMAIL_ADDRESS")
        .expect("e-mail entity");
    assert_eq!(
        &texts[0][mail.start as usize..mail.end as usize],
        "bob@example.com"
    );
    assert_eq!((mail.source.as_str(), mail.score), ("pattern", 1.0));

    // A sentence task alone on the same model: no entities, and no token work.
    let r = c
        .classify(req(&texts, &["domain"]))
        .await
        .unwrap()
        .into_inner();
    assert!(r
        .results
        .iter()
        .all(|t| t.entities.is_empty() && t.results.len() == 1));
    running.shutdown().await;
}

/// Random and mutated Classify requests (texts empty, blank, huge, any Unicode; tasks known,
/// unknown, repeated; any truncation value; too many texts): never a panic, and every
/// rejection is INVALID_ARGUMENT with a message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_requests_are_answered_or_invalid_argument() {
    use proptest::prelude::*;
    use proptest::strategy::ValueTree;
    use proptest::test_runner::{Config, TestRunner};
    let limits = Limits {
        max_client_batch: 4,
        max_text_bytes: 200,
        ..Limits::default()
    };
    let (running, _dir) = full_server(limits).await;
    let text = prop_oneof![
        Just(String::new()),
        Just("   \n\t".to_string()),
        ".{0,40}",
        "[a-z ]{150,260}",
        any::<String>(),
    ];
    let task = prop_oneof![
        Just("domain".to_string()),
        Just("complexity".to_string()),
        Just("jailbreak".to_string()),
        "[a-z]{0,8}",
    ];
    let strategy = (
        proptest::collection::vec(text, 0..6),
        proptest::collection::vec(task, 0..4),
        prop_oneof![Just(0i32), Just(1), Just(2), any::<i32>()],
        any::<bool>(),
    );
    let mut runner = TestRunner::new(Config {
        cases: 96,
        ..Config::default()
    });
    let mut cases = Vec::new();
    for _ in 0..96 {
        cases.push(strategy.new_tree(&mut runner).unwrap().current());
    }
    let (mut answered, mut refused) = (0, 0);
    for (texts, tasks, truncation, include_embedding) in cases {
        let req = pb::ClassifyRequest {
            texts: texts.clone(),
            tasks: tasks.clone(),
            truncation,
            include_embedding,
            ..Default::default()
        };
        let deadline = Some(Instant::now() + Duration::from_secs(10));
        match running.service.classify_request(req, deadline).await {
            Ok(r) => {
                answered += 1;
                assert_eq!(r.results.len(), texts.len())
            }
            Err(e) => {
                refused += 1;
                assert_eq!(
                    classifier_svc::service::code_of(&e),
                    Code::InvalidArgument,
                    "{texts:?} {tasks:?} {truncation}: {e}"
                );
                assert!(!e.to_string().is_empty());
            }
        }
    }
    assert!(
        answered > 0 && refused > 0,
        "{answered} answered, {refused} refused"
    );
}

/// A static fast tier beside the encoder: its heads for domain and complexity, with
/// `cascade.threshold` where given (None: the head never answers alone).
fn fast_tier(dir: &Path, thresholds: [Option<f32>; 2]) -> classifier_svc::cascade::FastTier {
    let enc = dir.join("static");
    fixtures::write_checkpoint(&enc, &Spec::tiny(Arch::Static)).unwrap();
    let heads = dir.join("fast-heads");
    fixtures::write_head(&heads, "domain", &["math", "law", "other"], 32, &[], 3).unwrap();
    fixtures::write_head(&heads, "complexity", &["simple", "reasoning"], 32, &[], 4).unwrap();
    for (task, th) in ["domain", "complexity"].iter().zip(thresholds) {
        let p = heads.join(task).join("head.json");
        let mut spec: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
        if let Some(th) = th {
            spec["cascade"] = serde_json::json!({"threshold": th});
        }
        std::fs::write(&p, spec.to_string()).unwrap();
    }
    classifier_svc::cascade::FastTier::load(&Source::Local(enc), &heads, &LoadOptions::default())
        .unwrap()
}

fn tiers(r: &pb::ClassifyResponse) -> Vec<(i32, String)> {
    r.results
        .iter()
        .flat_map(|t| t.results.iter().map(|x| (x.tier, x.tier_reason.clone())))
        .collect()
}

/// The cascade: the fast tier answers where every asked task clears its threshold, the encoder
/// where one does not (or it has no threshold), when an embedding or a task the fast tier lacks
/// is asked for, or when the caller asks for it; the fast tier answers whatever its confidence
/// when admission sheds the encoder's share; tier FAST without one loaded is refused.
#[tokio::test]
async fn the_cascade_answers_by_tier_and_says_which() {
    let (running, dir) = full_server(Limits::default()).await;
    let svc = &running.service;
    let deadline = || Some(Instant::now() + Duration::from_secs(10));
    let fast_only = pb::ClassifyRequest {
        tier: pb::Tier::Fast as i32,
        ..req(&["hello"], &["domain"])
    };
    let e = svc.classify_request(fast_only.clone(), deadline()).await;
    assert!(matches!(e, Err(Error::InvalidArgument(_))), "{e:?}");

    let fast = (pb::Tier::Fast as i32, "confident".to_string());
    let enc = (pb::Tier::Encoder as i32, String::new());
    // Thresholds 0: sure of everything.
    svc.set_fast_tier(Some(fast_tier(dir.path(), [Some(0.0), Some(0.0)])));
    let r = svc
        .classify_request(
            req(
                &["what is the capital", "prove the theorem"],
                &["domain", "complexity"],
            ),
            deadline(),
        )
        .await
        .unwrap();
    assert_eq!(tiers(&r), vec![fast.clone(); 4]);
    assert!(
        r.results[0].results[0].model.starts_with("static@"),
        "{:?}",
        r.results[0].results[0].model
    );
    // The caller may ask for one tier.
    let r = svc
        .classify_request(
            pb::ClassifyRequest {
                tier: pb::Tier::Encoder as i32,
                ..req(&["hello"], &["domain"])
            },
            deadline(),
        )
        .await
        .unwrap();
    assert_eq!(tiers(&r), vec![enc.clone()]);
    let r = svc.classify_request(fast_only, deadline()).await.unwrap();
    assert_eq!(
        tiers(&r),
        vec![(pb::Tier::Fast as i32, "requested".to_string())]
    );
    // A task the fast tier does not serve, or an embedding: the encoder for all.
    let r = svc
        .classify_request(req(&["hello"], &["domain", "jailbreak"]), deadline())
        .await
        .unwrap();
    assert_eq!(tiers(&r), vec![enc.clone(); 2]);
    let with_embedding = pb::ClassifyRequest {
        include_embedding: true,
        ..req(&["hello"], &["domain"])
    };
    let r = svc
        .classify_request(with_embedding, deadline())
        .await
        .unwrap();
    assert_eq!(tiers(&r), vec![enc.clone()]);
    assert!(!r.results[0].embedding.is_empty());

    // Complexity has no threshold: never answered alone, so its texts go to the encoder
    // (every asked task from it), while domain alone stays with the fast tier.
    svc.set_fast_tier(Some(fast_tier(dir.path(), [Some(0.0), None])));
    let r = svc
        .classify_request(req(&["hello"], &["domain", "complexity"]), deadline())
        .await
        .unwrap();
    assert_eq!(tiers(&r), vec![enc.clone(); 2]);
    let r = svc
        .classify_request(req(&["hello"], &["domain"]), deadline())
        .await
        .unwrap();
    assert_eq!(tiers(&r), vec![fast.clone()]);
    // Thresholds above any probability: the encoder.
    svc.set_fast_tier(Some(fast_tier(dir.path(), [Some(1.0), Some(1.0)])));
    let r = svc
        .classify_request(req(&["hello"], &["domain"]), deadline())
        .await
        .unwrap();
    assert_eq!(tiers(&r), vec![enc.clone()]);
    running.shutdown().await;

    // Admission sheds the encoder's share: the fast tier answers it, not an error.
    let limits = Limits {
        max_concurrent: 1,
        ..Limits::default()
    };
    let (running, dir) = full_server(limits).await;
    running
        .service
        .set_fast_tier(Some(fast_tier(dir.path(), [Some(1.0), Some(1.0)])));
    let r = running
        .service
        .classify_request(req(&["a", "b"], &["domain"]), deadline())
        .await
        .unwrap();
    assert_eq!(
        tiers(&r),
        vec![(pb::Tier::Fast as i32, "shed".to_string()); 2]
    );
    // Without the fast tier the same call is refused, as before.
    running.service.set_fast_tier(None);
    let e = running
        .service
        .classify_request(req(&["a", "b"], &["domain"]), deadline())
        .await;
    assert!(matches!(e, Err(Error::Overloaded { .. })), "{e:?}");
    running.shutdown().await;
}

/// The encoder cannot meet the deadline (every batch slowed past it): the fast tier answers
/// instead of DEADLINE_EXCEEDED, without waiting for the slowed batch.
#[tokio::test]
async fn past_the_encoders_deadline_the_fast_tier_answers_in_time() {
    let (running, dir) = full_server(Limits::default()).await;
    running
        .service
        .set_fast_tier(Some(fast_tier(dir.path(), [Some(1.0), Some(1.0)])));
    // Warm the encoder's batch-time estimate with one request first.
    running
        .service
        .classify_request(req(&["hello"], &["domain"]), None)
        .await
        .unwrap();
    classifier_svc::batch::set_inference_delay(Duration::from_millis(400));
    let started = Instant::now();
    let r = running
        .service
        .classify_request(
            req(&["hello there"], &["domain"]),
            Some(Instant::now() + Duration::from_millis(150)),
        )
        .await;
    classifier_svc::batch::set_inference_delay(Duration::ZERO);
    let r = r.unwrap();
    assert_eq!(
        tiers(&r),
        vec![(pb::Tier::Fast as i32, "deadline".to_string())]
    );
    // Answered near the deadline (the encoder was given it less a 5 ms margin), not after the
    // slowed batch (400 ms); the bound leaves room for a loaded machine.
    assert!(
        started.elapsed() < Duration::from_millis(350),
        "{:?}",
        started.elapsed()
    );
    running.shutdown().await;
}
