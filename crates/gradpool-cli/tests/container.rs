//! A container spec trained here under real podman, with the example's
//! PyTorch image (built from Debian's packages once per content of its
//! build script and the Python package, then kept under `target/`): the
//! same spec gives the same bytes twice, and a job cut into segments gives
//! the bytes of the same job in one segment, so a replay from any
//! committed checkpoint can be compared by hash.

use std::path::{Path, PathBuf};
use std::process::Command;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The example's image, built when its inputs changed.
fn torch_image() -> PathBuf {
    let repo = repo();
    let mut key = blake3::Hasher::new();
    key.update(&std::fs::read(repo.join("examples/container-torch/build-image.sh")).unwrap());
    for f in [
        "pyproject.toml",
        "gradpool/__init__.py",
        "gradpool/segment.py",
        "gradpool/safetensors.py",
    ] {
        key.update(&std::fs::read(repo.join("python").join(f)).unwrap());
    }
    let dir = repo.join("target/container-images");
    std::fs::create_dir_all(&dir).unwrap();
    let image = dir.join(format!(
        "torch-{}.oci.tar.gz",
        &key.finalize().to_hex()[..16]
    ));
    if !image.exists() {
        let status = Command::new(repo.join("examples/container-torch/build-image.sh"))
            .arg(&image)
            .status()
            .expect("mmdebstrap and podman are installed");
        assert!(status.success(), "building the example's image failed");
    }
    image
}

fn spec(dir: &Path, image: &Path, checkpoint_every: u64) -> PathBuf {
    std::fs::copy(
        repo().join("examples/container-torch/train.py"),
        dir.join("train.py"),
    )
    .unwrap();
    let text = std::fs::read_to_string(repo().join("examples/container-torch/job.toml"))
        .unwrap()
        .replace("image.oci.tar.gz", image.to_str().unwrap())
        .replace(
            "../../data/tinyshakespeare.txt",
            repo().join("data/tinyshakespeare.txt").to_str().unwrap(),
        )
        .replace("steps = 60", "steps = 24")
        .replace(
            "checkpoint_every = 20",
            &format!("checkpoint_every = {checkpoint_every}"),
        );
    let path = dir.join(format!("job-{checkpoint_every}.toml"));
    std::fs::write(&path, text).unwrap();
    path
}

/// Trains `spec` into `out`; the checkpoint's bytes.
fn train(spec: &Path, out: &Path, store: &Path) -> Vec<u8> {
    let run = Command::new(env!("CARGO_BIN_EXE_gradpool"))
        .arg("train")
        .arg(spec)
        .arg("--out")
        .arg(out)
        .args(["--threads", "1", "--image-store"])
        .arg(store)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(
        run.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&run.stderr)
    );
    assert!(stdout.contains("trained 24 steps"), "{stdout}");
    std::fs::read(out.join("checkpoint.safetensors")).unwrap()
}

#[test]
fn a_container_job_trains_the_same_bytes_however_it_is_cut() {
    let image = torch_image();
    let dir = tempfile::tempdir().unwrap();
    let store = repo().join("target/container-images/store");
    let cut = spec(dir.path(), &image, 8);
    let whole = spec(dir.path(), &image, 24);
    let first = train(&cut, &dir.path().join("a"), &store);
    let again = train(&cut, &dir.path().join("b"), &store);
    let straight = train(&whole, &dir.path().join("c"), &store);
    assert_eq!(first, again, "a replay gives the same bytes");
    assert_eq!(first, straight, "three segments give the bytes of one");
    let (_, header) = safetensors::SafeTensors::read_metadata(&first).unwrap();
    let names: Vec<_> = header.tensors().keys().cloned().collect();
    assert!(names.iter().any(|n| n.starts_with("model.")), "{names:?}");
    assert!(
        names.iter().any(|n| n.starts_with("optim.")),
        "the optimizer's state is kept: {names:?}"
    );
}
