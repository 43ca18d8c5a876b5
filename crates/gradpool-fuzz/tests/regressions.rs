//! Every input kept in `fuzz/regressions/<target>/` (crashes the fuzzer
//! found, once fixed, and the hostile inputs the pool was first attacked
//! with) goes through its target on every test run.

use std::path::PathBuf;

#[test]
fn every_kept_input_passes_its_target() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/regressions");
    for (name, target) in gradpool_fuzz::TARGETS {
        let dir = root.join(name);
        let mut inputs: Vec<PathBuf> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|e| e.unwrap().path())
            .collect();
        inputs.sort();
        assert!(!inputs.is_empty(), "no kept inputs for {name}");
        for input in inputs {
            let bytes = std::fs::read(&input).unwrap();
            let outcome = std::panic::catch_unwind(|| target(&bytes));
            assert!(outcome.is_ok(), "{name} panicked on {}", input.display());
        }
    }
}

/// The targets are not vacuous: the inputs the pool must refuse are
/// refused by the functions the targets call.
#[test]
fn the_hostile_inputs_are_refused() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/regressions");
    let read = |p: &str| std::fs::read(root.join(p)).unwrap();
    let model = gradpool_core::model::ModelMeta::Gpt {
        n_layer: 1,
        n_head: 1,
        n_embd: 4,
        block_size: 4,
        vocab_size: 3,
    };
    gradpool_core::checkpoint::inspect(&read("checkpoint_inspect/valid.safetensors"), &model, 10)
        .unwrap();
    for p in [
        "checkpoint_inspect/header_2_pow_60.bin",
        "checkpoint_inspect/huge_shape.bin",
    ] {
        assert!(
            gradpool_core::checkpoint::inspect(&read(p), &model, 10).is_err(),
            "{p}"
        );
    }
    // The trainer's loader takes the checkpoint a run of the target's own
    // spec wrote, and refuses the hostile ones.
    let spec = gradpool_core::JobSpec::from_toml_str(gradpool_fuzz::LOAD_SPEC).unwrap();
    let data = gradpool_train::Dataset::from_bytes(&spec, b"abcabcabcabc").unwrap();
    let loaded = gradpool_train::checkpoint::check_bytes(
        &spec,
        &data,
        &read("checkpoint_load/valid.safetensors"),
    );
    assert_eq!(loaded.unwrap(), 20);
    assert!(gradpool_train::checkpoint::check_bytes(
        &spec,
        &data,
        &read("checkpoint_load/huge_shape.bin")
    )
    .is_err());
    let commit = read("wire_json/commit_loss_1e39.json");
    assert!(serde_json::from_slice::<gradpool_core::wire::Commit>(&commit[1..]).is_err());
    let hb = read("wire_json/heartbeat_too_many.json");
    let hb: gradpool_core::wire::Heartbeat = serde_json::from_slice(&hb[1..]).unwrap();
    assert!(hb.check().is_err());
    let maxed = String::from_utf8(read("job_spec/maxed.toml")).unwrap();
    let spec = gradpool_core::JobSpec::from_toml_str(&maxed).unwrap();
    let memory = gradpool_core::model::ModelMeta::of(
        &spec,
        gradpool_core::model::DataShape::Text { vocab_size: 65 },
    )
    .unwrap()
    .memory(spec.train.batch_size);
    assert!(memory.total_bytes > 1 << 50, "{memory:?}");
}
