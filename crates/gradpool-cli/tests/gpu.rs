//! The GPU-facing commands on a machine without a GPU (CI has none): the
//! one-shot GPU check reports "no GPU" for each figure and exits cleanly,
//! and the commands that need a GPU say why they cannot run. On a machine
//! with the NVIDIA driver these tests step aside: `bench/gpu-check.sh`
//! itself is the check there.

mod common;

use common::BIN;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// Whether the NVIDIA driver is loaded here.
fn has_driver() -> bool {
    Path::new("/proc/driver/nvidia").exists()
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The figures the check measures on a GPU, in its order.
const GPU_FIGURES: [&str; 8] = [
    "gpu",
    "build",
    "bench_reference",
    "bench_gpt2_small",
    "determinism",
    "gpu_vs_cpu",
    "nvml",
    "devnet",
];

#[test]
fn the_gpu_check_reports_no_gpu_for_every_figure_and_exits_cleanly() {
    if has_driver() {
        eprintln!("skipped: this machine has the NVIDIA driver; run bench/gpu-check.sh");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("report").join("gpu-check.json");
    let run = Command::new("bash")
        .arg(repo_root().join("bench/gpu-check.sh"))
        .arg(&out)
        .current_dir(dir.path())
        // A home of its own: nothing it might install could land in ours.
        .env("HOME", dir.path())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(
        run.status.success(),
        "{}\n{stdout}\n{}",
        run.status,
        String::from_utf8_lossy(&run.stderr)
    );
    assert!(stdout.contains("no GPU"), "{stdout}");
    let report: serde_json::Value = serde_json::from_slice(&std::fs::read(&out).unwrap())
        .expect("the report is one JSON document");
    assert_eq!(report["result"], "no GPU", "{report}");
    for figure in GPU_FIGURES {
        assert_eq!(report[figure]["status"], "no GPU", "{figure}: {report}");
    }
    assert!(
        report["gpu"]["reason"]
            .as_str()
            .unwrap()
            .contains("nvidia-smi"),
        "{report}"
    );
    // Nothing failed, and nothing was installed or built for nothing.
    assert_eq!(report["failures"], serde_json::json!([]), "{report}");
    assert_eq!(report["installs"], serde_json::json!([]), "{report}");
    assert!(report["machine"]["cpus"].as_u64().unwrap() >= 1, "{report}");
    assert!(report["seconds"].as_u64().is_some(), "{report}");
    // Written whole: no partial file left beside it.
    let left: Vec<_> = std::fs::read_dir(out.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(left, vec![std::ffi::OsString::from("gpu-check.json")]);
}

#[test]
fn commands_that_need_a_gpu_say_why_they_cannot_run() {
    if has_driver() {
        eprintln!("skipped: this machine has the NVIDIA driver");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // NVML does not load: the message says what to install.
    let nvml = Command::new(BIN)
        .args(["bench", "nvml", "--power-cap", "--json"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!nvml.status.success());
    assert!(nvml.stdout.is_empty(), "nothing on stdout when it fails");
    let err = String::from_utf8_lossy(&nvml.stderr);
    assert!(err.contains("no NVIDIA driver found"), "{err}");
    // devnet on CUDA refuses before starting anything: this build has no
    // CUDA (the test build never has).
    let devnet = Command::new(BIN)
        .args(["devnet", "--device", "cuda", "--steps", "10", "--out"])
        .arg(dir.path().join("out"))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!devnet.status.success());
    let err = String::from_utf8_lossy(&devnet.stderr);
    assert!(
        err.contains("--device cuda") && err.contains("without CUDA"),
        "{err}"
    );
    assert!(!dir.path().join("out").exists(), "nothing was written");
    // A segment asked to run on CUDA says the same.
    let segment = Command::new(BIN)
        .args(["bench", "train", "--device", "cuda", "--steps", "1"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!segment.status.success());
    let err = String::from_utf8_lossy(&segment.stderr);
    assert!(err.contains("cannot use CUDA"), "{err}");
}
