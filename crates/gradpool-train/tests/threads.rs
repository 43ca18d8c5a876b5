//! Thread-count independence: candle's CPU thread pool size is fixed per
//! process (read from `RAYON_NUM_THREADS` once), so the test re-runs this
//! test binary as child processes with 1 and 2 threads and compares the
//! checkpoints byte for byte.

use gradpool_core::JobSpec;
use gradpool_train::{run_segment, Dataset, Device};
use std::path::PathBuf;
use std::process::Command;

const OUT_VAR: &str = "GRADPOOL_TRAIN_THREAD_TEST_OUT";

const SHAKESPEARE: &str = include_str!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../data/tinyshakespeare.txt"
));

/// Not a test on its own: the child process of
/// `checkpoints_do_not_depend_on_thread_count`.
#[test]
#[ignore]
fn thread_child_train() {
    let Some(out) = std::env::var_os(OUT_VAR).map(PathBuf::from) else {
        return;
    };
    let want = std::env::var("RAYON_NUM_THREADS").unwrap();
    assert_eq!(candle_core::utils::get_num_threads().to_string(), want);
    // Wide enough that candle's elementwise ops and gemm run multi-threaded.
    let spec = JobSpec::from_toml_str(
        r#"
name = "threads"
[model]
kind = "gpt"
n_layer = 2
n_head = 4
n_embd = 64
block_size = 32
[data]
format = "text"
[train]
seed = 11
steps = 10
batch_size = 8
checkpoint_every = 10
lr = 0.003
"#,
    )
    .unwrap();
    let data = Dataset::from_bytes(&spec, &SHAKESPEARE.as_bytes()[..100_000]).unwrap();
    run_segment(&spec, &data, None, 0, 10, &Device::Cpu, &out, &mut |_| {}).unwrap();
}

#[test]
fn checkpoints_do_not_depend_on_thread_count() {
    let dir = tempfile::tempdir().unwrap();
    let exe = std::env::current_exe().unwrap();
    let mut files = Vec::new();
    for threads in ["1", "2"] {
        let out = dir.path().join(format!("t{threads}.safetensors"));
        let status = Command::new(&exe)
            .args(["--exact", "thread_child_train", "--ignored", "--quiet"])
            .env("RAYON_NUM_THREADS", threads)
            .env_remove("CANDLE_NUM_THREADS")
            .env(OUT_VAR, &out)
            .status()
            .unwrap();
        assert!(status.success(), "child with {threads} threads failed");
        files.push(std::fs::read(&out).unwrap());
    }
    assert!(!files[0].is_empty());
    assert!(
        files[0] == files[1],
        "checkpoints differ between 1 and 2 threads"
    );
}
