//! Hub sources go through hf-hub for real: a checkpoint laid out in a Hugging Face cache (as a
//! previous download leaves it) loads as `hf:org/name[@revision]` with no network; a repo that is
//! neither cached nor reachable fails fast with an error naming it.

use std::time::{Duration, Instant};

use semroute_encoder::fixtures::{self, Spec};
use semroute_encoder::{Arch, LoadOptions, Model, Source};

#[test]
fn hub_sources_resolve_through_the_hf_hub_cache() {
    let home = tempfile::tempdir().unwrap();
    let repo = home.path().join("hub/models--acme--tiny-jailbreak");
    for (rev, commit, labels) in [
        ("main", "1111111111", ["benign", "jailbreak"]),
        ("v2", "2222222222", ["safe", "attack"]),
    ] {
        std::fs::create_dir_all(repo.join("refs")).unwrap();
        std::fs::write(repo.join("refs").join(rev), commit).unwrap();
        let spec = Spec::tiny(Arch::ModernBert).with_labels(&labels);
        fixtures::write_checkpoint(&repo.join("snapshots").join(commit), &spec).unwrap();
    }
    // One test per process: the environment is ours. The endpoint is a closed local port, so any
    // download attempt fails at once instead of reaching out.
    std::env::set_var("HF_HOME", home.path());
    std::env::set_var("HF_ENDPOINT", "http://127.0.0.1:9");

    let opts = LoadOptions::default();
    let main: Source = "hf:acme/tiny-jailbreak".parse().unwrap();
    let m = Model::load_checkpoint("jailbreak", &main, &opts).unwrap();
    assert_eq!(m.meta.id, "acme/tiny-jailbreak");
    assert_eq!(m.tasks[0].labels, ["benign", "jailbreak"]);

    let v2: Source = "hf:acme/tiny-jailbreak@v2".parse().unwrap();
    let m = Model::load_checkpoint("jailbreak", &v2, &opts).unwrap();
    assert_eq!(m.tasks[0].labels, ["safe", "attack"]);

    let started = Instant::now();
    let missing: Source = "hf:acme/not-cached".parse().unwrap();
    let err = Model::load_checkpoint("x", &missing, &opts).err().unwrap();
    assert!(err.to_string().contains("hf:acme/not-cached@main"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(30));
}
