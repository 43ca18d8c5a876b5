//! Container segments under real podman, in the sandbox a provider uses:
//! a script that tries to get out fails as the sandbox says, and the
//! reason reaches the segment's error. The image is a busybox rootfs
//! (Debian's busybox-static), made an OCI archive with podman itself.

use gradpool_core::Sha256Hex;
use gradpool_provider::container::{ContainerError, ContainerSegment, ImageStore, Sandbox};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// An OCI archive of a busybox rootfs, in `dir`.
fn busybox_archive(dir: &Path) -> PathBuf {
    busybox_archive_marked(dir, None)
}

/// An OCI archive of a busybox rootfs in `dir`, with the file `/marker`
/// holding `marker` when given; tagged `localhost/busybox:test` either way.
fn busybox_archive_marked(dir: &Path, marker: Option<&str>) -> PathBuf {
    let dir = &dir.join(marker.unwrap_or("plain"));
    let rootfs = dir.join("rootfs");
    if let Some(m) = marker {
        std::fs::create_dir_all(&rootfs).unwrap();
        std::fs::write(rootfs.join("marker"), m).unwrap();
    }
    std::fs::create_dir_all(rootfs.join("bin")).unwrap();
    std::fs::create_dir_all(rootfs.join("tmp")).unwrap();
    // As in any distribution's rootfs: podman's tmpfs /tmp keeps it.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(rootfs.join("tmp"), std::fs::Permissions::from_mode(0o1777)).unwrap();
    std::fs::copy("/bin/busybox", rootfs.join("bin/busybox"))
        .expect("busybox-static is installed (apt-get install busybox-static)");
    for applet in [
        "sh", "ls", "cat", "echo", "dd", "sleep", "touch", "printf", "wget", "seq", "head", "tr",
        "id", "ln", "mkfifo",
    ] {
        std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(applet)).unwrap();
    }
    let tar = dir.join("rootfs.tar");
    assert!(Command::new("tar")
        .arg("-C")
        .arg(&rootfs)
        .arg("-cf")
        .arg(&tar)
        .arg(".")
        .status()
        .unwrap()
        .success());
    let store = dir.join("build-store");
    let podman = |args: &[&std::ffi::OsStr]| {
        let out = Command::new("podman")
            .arg("--root")
            .arg(store.join("root"))
            .arg("--runroot")
            .arg(store.join("run"))
            .args(args)
            .output()
            .expect("podman is installed");
        assert!(
            out.status.success(),
            "podman {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    podman(&[
        "import".as_ref(),
        tar.as_os_str(),
        "localhost/busybox:test".as_ref(),
    ]);
    let archive = dir.join("busybox.oci.tar");
    podman(&[
        "save".as_ref(),
        "--format=oci-archive".as_ref(),
        "-o".as_ref(),
        archive.as_os_str(),
        "localhost/busybox:test".as_ref(),
    ]);
    archive
}

struct Rig {
    dir: tempfile::TempDir,
    store: ImageStore,
    image: String,
}

impl Rig {
    async fn new() -> Rig {
        let dir = tempfile::tempdir().unwrap();
        let archive = busybox_archive(dir.path());
        let store = ImageStore::open(&dir.path().join("images"), 1 << 30).unwrap();
        let digest = Sha256Hex::of_file(&archive).unwrap();
        let image = store.ensure(&digest, || Some(archive), 1).await.unwrap();
        std::fs::write(dir.path().join("data"), "some data\n").unwrap();
        std::fs::create_dir_all(dir.path().join("job")).unwrap();
        Rig { dir, store, image }
    }

    /// Runs `script` (busybox sh) as steps [0, 2).
    async fn run(
        &self,
        script: &str,
        sandbox: &Sandbox,
    ) -> Result<Vec<(u64, f32)>, ContainerError> {
        let segment = ContainerSegment {
            image: self.image.clone(),
            command: vec!["/bin/sh".into(), "-c".into(), script.into()],
            data: self.dir.path().join("data"),
            job_files: self.dir.path().join("job"),
            start: None,
            work: self.dir.path().join("work"),
            from: 0,
            to: 2,
            env: vec![],
            owner: "sandbox-test".into(),
        };
        let mut steps = Vec::new();
        let out = self.dir.path().join("checkpoint.safetensors");
        segment
            .run(&self.store, sandbox, None, &out, |s, l| steps.push((s, l)))
            .await
            .map(|_| steps)
    }
}

fn sandbox() -> Sandbox {
    Sandbox::new(1, 1, Duration::from_secs(60))
}

fn output_of(e: ContainerError) -> String {
    match e {
        ContainerError::Exited { code: 7, output } => output,
        other => panic!("expected the script's own exit 7, got {other}"),
    }
}

#[tokio::test]
async fn a_script_is_shut_in() {
    let rig = Rig::new().await;
    // The trace is read even when the script then fails.
    let steps = std::cell::RefCell::new(Vec::new());
    let e = rig
        .run(
            "echo '{\"step\": 0, \"loss\": 1.5}' > /out/trace.jsonl; \
             ls /sys/class/net | tr '\\n' ' ' ; echo; \
             wget -q -T 2 -O /tmp/page http://192.0.2.1/ 2>/dev/null && echo REACHED; \
             id -u; \
             echo x > /x 2>/dev/null || echo REFUSED-ROOT; \
             echo x > /job/x 2>/dev/null || echo REFUSED-JOB; \
             echo x > /data 2>/dev/null || echo REFUSED-DATA; \
             echo x > /tmp/x && echo TMP-WRITABLE; exit 7",
            &sandbox(),
        )
        .await
        .map(|s| steps.borrow_mut().extend(s))
        .unwrap_err();
    let output = output_of(e);
    let lines: Vec<&str> = output.lines().collect();
    assert_eq!(
        lines[0].trim(),
        "lo",
        "the only network interface is loopback: {output}"
    );
    assert!(!output.contains("REACHED"), "{output}");
    for expected in [
        "65534",
        "REFUSED-ROOT",
        "REFUSED-JOB",
        "REFUSED-DATA",
        "TMP-WRITABLE",
    ] {
        assert!(
            lines.contains(&expected),
            "{expected} missing from {output}"
        );
    }
}

#[tokio::test]
async fn a_fork_bomb_meets_the_pid_limit() {
    let rig = Rig::new().await;
    let small = Sandbox {
        pids: 32,
        ..sandbox()
    };
    let e = rig
        .run(
            "i=0; while [ $i -lt 200 ]; do sleep 30 & i=$((i+1)); done; echo SPAWNED-ALL; exit 7",
            &small,
        )
        .await
        .unwrap_err();
    let text = e.to_string();
    assert!(!text.contains("SPAWNED-ALL"), "{text}");
    assert!(
        text.contains("fork") || text.contains("Resource temporarily unavailable"),
        "{text}"
    );
}

#[tokio::test]
async fn going_over_memory_or_time_ends_the_segment_with_the_reason() {
    let rig = Rig::new().await;
    // dd allocates its block: 1.5 GiB in a 1 GiB container.
    let e = rig
        .run(
            "exec dd if=/dev/zero of=/dev/null bs=1536M count=1",
            &sandbox(),
        )
        .await
        .unwrap_err();
    assert!(matches!(e, ContainerError::OutOfMemory { gib: 1 }), "{e}");
    let short = Sandbox {
        time_limit: Duration::from_secs(2),
        ..sandbox()
    };
    let e = rig.run("sleep 60", &short).await.unwrap_err();
    assert!(matches!(e, ContainerError::TimedOut { secs: 2 }), "{e}");
}

#[tokio::test]
async fn a_script_that_writes_no_or_a_malformed_checkpoint_fails() {
    let rig = Rig::new().await;
    let trace =
        "printf '{\"step\": 0, \"loss\": 2}\\n{\"step\": 1, \"loss\": 1}\\n' > /out/trace.jsonl";
    let e = rig.run(trace, &sandbox()).await.unwrap_err();
    assert!(matches!(e, ContainerError::NoCheckpoint), "{e}");
    let e = rig
        .run(
            &format!("{trace}; echo garbage > /out/checkpoint.safetensors"),
            &sandbox(),
        )
        .await
        .unwrap_err();
    assert!(e.to_string().contains("not a safetensors file"), "{e}");
    let e = rig
        .run(
            "printf '{\"step\": 1, \"loss\": 2}\\n' > /out/trace.jsonl",
            &sandbox(),
        )
        .await
        .unwrap_err();
    assert!(e.to_string().contains("step 0 was due"), "{e}");
}

/// What a script leaves in `/out` is read as plain files only: a link to
/// a file of the host's is not followed (its content never reaches the
/// error), a FIFO does not block the agent, and writing past the output
/// cap stops the script.
#[tokio::test]
async fn what_a_script_leaves_in_out_cannot_reach_or_wedge_the_agent() {
    let rig = Rig::new().await;
    let secret = rig.dir.path().join("secret");
    std::fs::write(
        &secret,
        "{\"step\": 0, \"loss\": 0.5}\nSECRET-OF-THE-HOST\n",
    )
    .unwrap();
    let linked = format!("ln -s {} /out/trace.jsonl; sleep 1", secret.display());
    let e = rig.run(&linked, &sandbox()).await.unwrap_err();
    let text = e.to_string();
    assert!(matches!(e, ContainerError::Trace(_)), "{text}");
    assert!(text.contains("symbolic link"), "{text}");
    assert!(!text.contains("SECRET"), "{text}");

    let trace =
        "printf '{\"step\": 0, \"loss\": 2}\\n{\"step\": 1, \"loss\": 1}\\n' > /out/trace.jsonl";
    let linked_checkpoint = format!(
        "{trace}; ln -s {} /out/checkpoint.safetensors",
        secret.display()
    );
    let e = rig.run(&linked_checkpoint, &sandbox()).await.unwrap_err();
    assert!(e.to_string().contains("symbolic link"), "{e}");

    let fifo = tokio::time::timeout(
        Duration::from_secs(60),
        rig.run("mkfifo /out/trace.jsonl; sleep 1", &sandbox()),
    )
    .await
    .expect("a FIFO does not block the agent")
    .unwrap_err();
    assert!(fifo.to_string().contains("not a regular file"), "{fifo}");

    let small = Sandbox {
        output_bytes: 1 << 20,
        ..sandbox()
    };
    let e = rig
        .run(
            "dd if=/dev/zero of=/out/fill bs=1M count=8; sleep 5",
            &small,
        )
        .await
        .unwrap_err();
    assert!(matches!(e, ContainerError::OutputTooLarge { .. }), "{e}");
}

/// Images are held by their podman ID, not by any name: an archive that
/// carries another image's name (here both carry `localhost/busybox:test`)
/// takes nothing from it.
#[tokio::test]
async fn an_archive_cannot_take_over_another_images_name() {
    let dir = tempfile::tempdir().unwrap();
    let store = ImageStore::open(&dir.path().join("images"), 1 << 30).unwrap();
    let honest = busybox_archive(dir.path());
    let rogue = busybox_archive_marked(dir.path(), Some("rogue"));
    let (a, b) = (
        Sha256Hex::of_file(&honest).unwrap(),
        Sha256Hex::of_file(&rogue).unwrap(),
    );
    let first = store.ensure(&a, || Some(honest), 1).await.unwrap();
    let second = store.ensure(&b, || Some(rogue), 2).await.unwrap();
    assert_ne!(first, second);
    // Held: no archive needed, and still the first image.
    assert_eq!(store.ensure(&a, || None, 3).await.unwrap(), first);
    let out = store
        .podman()
        .args(["run", "--rm"])
        .args(sandbox().args(store.rootless()))
        .args([first.as_str(), "/bin/sh", "-c"])
        .arg("cat /marker 2>/dev/null || echo NO-MARKER")
        .output()
        .await
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "NO-MARKER",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
