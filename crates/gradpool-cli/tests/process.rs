//! The real `gradpool` binary: a pool and providers as separate processes on
//! 127.0.0.1, driven by the customer commands, one short job end to end.

mod common;

use common::{small_corpus, tiny_spec, BIN};
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn gradpool(home: &Path, args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .env("GRADPOOL_HOME", home)
        .env_remove("GRADPOOL_POOL")
        .env_remove("GRADPOOL_API_KEY")
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn ok(out: Output) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "failed: {}\nstdout: {stdout}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

fn refused(out: Output) -> String {
    assert!(
        !out.status.success(),
        "should have failed: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Starts `gradpool pool` on a free port and returns its URL.
fn start_pool(dir: &Path) -> (Killed, String) {
    let mut child = Command::new(BIN)
        .args([
            "pool",
            "--listen",
            "127.0.0.1:0",
            "--lease-seconds",
            "5",
            "--heartbeat-seconds",
            "1",
            // No sampled audits: a random draw with no validator would make
            // a test's outcome random (the audit tests set their own).
            "--audit-p-new",
            "0",
            "--audit-floor",
            "0",
            "--log-format",
            "json",
            "--data-dir",
        ])
        .arg(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(dir.with_extension("log")).unwrap())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line).unwrap();
    let url = line
        .split_whitespace()
        .find(|w| w.starts_with("http://"))
        .unwrap_or_else(|| panic!("no URL in {line:?}"))
        .to_owned();
    (Killed(child), url)
}

#[test]
fn pool_providers_and_customer_as_processes() {
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("home");
    let (_pool, url) = start_pool(&tmp.path().join("pool"));
    let _providers: Vec<Killed> = (0..2)
        .map(|i| {
            Killed(
                Command::new(BIN)
                    .args([
                        "provider",
                        "--pool",
                        &url,
                        "--threads",
                        "1",
                        "--name",
                        &format!("rig{i}"),
                        "--data-dir",
                    ])
                    .arg(tmp.path().join(format!("provider-{i}")))
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .unwrap(),
            )
        })
        .collect();

    // An account; its key is saved for the next commands.
    let created = ok(gradpool(
        &home,
        &["account", "create", "--pool", &url, "--name", "ada"],
    ));
    assert!(created.contains("api key   gp_"), "{created}");
    let shown = ok(gradpool(&home, &["account", "show"]));
    assert!(shown.contains("ada"), "{shown}");
    let funded = ok(gradpool(&home, &["account", "faucet", "--amount", "1"]));
    assert!(funded.contains("available    1 XMR"), "{funded}");
    assert!(funded.contains("credited     1 XMR"), "{funded}");

    let data = small_corpus(tmp.path());
    let spec = tmp.path().join("tiny.toml");
    std::fs::write(
        &spec,
        tiny_spec("e2e", 3, 40, 20) + "\n[budget]\ntotal_xmr = \"0.01\"\n",
    )
    .unwrap();

    // A malformed spec is refused locally, naming the field.
    let bad = tmp.path().join("bad.toml");
    std::fs::write(
        &bad,
        tiny_spec("bad", 3, 40, 20).replace("batch_size = 8", "batch_size = \"eight\""),
    )
    .unwrap();
    let err = refused(gradpool(
        &home,
        &[
            "job",
            "submit",
            bad.to_str().unwrap(),
            "--data",
            data.to_str().unwrap(),
        ],
    ));
    assert!(err.contains("train.batch_size"), "{err}");

    let submitted = ok(gradpool(
        &home,
        &[
            "job",
            "submit",
            spec.to_str().unwrap(),
            "--data",
            data.to_str().unwrap(),
            "--watch",
        ],
    ));
    let id = submitted.lines().next().unwrap().trim().to_owned();
    assert!(id.starts_with("job_"), "{submitted}");

    let list = ok(gradpool(&home, &["job", "list"]));
    assert!(list.contains(&id) && list.contains("succeeded"), "{list}");
    let show = ok(gradpool(&home, &["job", "show", &id]));
    assert!(show.contains("40/40 (2 of 2 segments)"), "{show}");
    // A reader that goes away (`| head -1`) ends the report quietly: no
    // panic, no backtrace.
    let mut child = Command::new(BIN)
        .args(["job", "show", &id])
        .env("GRADPOOL_HOME", &home)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let piped = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&piped.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    {
        use std::os::unix::process::ExitStatusExt;
        assert!(
            piped.status.success() || piped.status.signal() == Some(13),
            "{}: {stderr}",
            piped.status
        );
    }

    let out = tmp.path().join("model");
    ok(gradpool(
        &home,
        &["job", "fetch", &id, "--out", out.to_str().unwrap()],
    ));
    let model = out.join("model.safetensors");
    assert!(model.is_file());
    let text = ok(gradpool(
        &home,
        &[
            "sample",
            "--model",
            model.to_str().unwrap(),
            "--prompt",
            "ROMEO:",
            "--tokens",
            "40",
        ],
    ));
    let text = text.trim_end_matches('\n');
    assert!(text.starts_with("ROMEO:"), "{text:?}");
    assert_eq!(text.chars().count(), "ROMEO:".len() + 40, "{text:?}");

    // Wrong key, unknown job, a cancel of a finished job.
    let err = refused(gradpool(&home, &["job", "list", "--api-key", "gp_wrong"]));
    assert!(err.contains("401"), "{err}");
    let err = refused(gradpool(&home, &["job", "show", "job_doesnotexist"]));
    assert!(err.contains("404"), "{err}");

    // The money: the job's cost came out of the balance, the providers
    // earned it less the fees, and a withdrawal is checked.
    let balance: serde_json::Value =
        serde_json::from_str(&ok(gradpool(&home, &["account", "balance", "--json"]))).unwrap();
    let available = balance["available"].as_u64().unwrap();
    assert!(available < 1_000_000_000_000, "{balance}");
    assert_eq!(balance["escrowed"], 0);
    let mut earned = 0;
    for i in 0..2 {
        let dir = tmp.path().join(format!("provider-{i}"));
        let e: serde_json::Value = serde_json::from_str(&ok(gradpool(
            &home,
            &[
                "provider",
                "earnings",
                "--pool",
                &url,
                "--json",
                "--data-dir",
                dir.to_str().unwrap(),
            ],
        )))
        .unwrap();
        earned += e["available"].as_u64().unwrap();
    }
    let spent = 1_000_000_000_000 - available;
    assert!(earned > 0 && earned < spent, "earned {earned} of {spent}");
    let err = refused(gradpool(
        &home,
        &[
            "account",
            "withdraw",
            "--to",
            "44AFFq5kSiGBoZ4NMDw",
            "--amount",
            "0.1",
        ],
    ));
    assert!(err.contains("to:"), "{err}");
    let out = ok(gradpool(
        &home,
        &[
            "account",
            "withdraw",
            "--to",
            "44AFFq5kSiGBoZ4NMDwYtN18obc8AemS33DBLWs3H7otXft3XjrpDtQGv7SqSsaBYBb98uNbr2VBBEt7f2wfn3RVGQBEP3A",
            "--amount",
            "0.1",
        ],
    ));
    assert!(out.contains("status      settled"), "{out}");

    // The operator's glance, from the pool's database.
    let pool_dir = tmp.path().join("pool");
    let dir = pool_dir.to_str().unwrap();
    let status = ok(gradpool(&home, &["pool", "status", "--data-dir", dir]));
    assert!(status.contains("jobs          1: 1 succeeded"), "{status}");
    assert!(status.contains("escrow        0 XMR"), "{status}");
    let glance: serde_json::Value = serde_json::from_str(&ok(gradpool(
        &home,
        &["pool", "status", "--data-dir", dir, "--json"],
    )))
    .unwrap();
    assert_eq!(glance["jobs"]["succeeded"], 1, "{glance}");
    assert_eq!(glance["segments"]["accepted"], 2, "{glance}");
    assert_eq!(glance["payouts"]["settled"], 1, "{glance}");
    // `--log-format json`: every line the pool logged is one JSON object.
    let log = std::fs::read_to_string(pool_dir.with_extension("log")).unwrap();
    let lines: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    assert!(
        lines
            .iter()
            .any(|l| l["fields"]["message"] == "pool listening" && l["level"] == "INFO"),
        "{log}"
    );
}

#[test]
fn devnet_trains_and_writes_its_summary() {
    let tmp = tempfile::tempdir().unwrap();
    let data = small_corpus(tmp.path());
    let spec = tmp.path().join("tiny.toml");
    std::fs::write(&spec, tiny_spec("devnet", 5, 60, 20)).unwrap();
    let out = tmp.path().join("out");
    let stdout = ok(Command::new(BIN)
        .args([
            "devnet",
            "--providers",
            "2",
            "--threads",
            "1",
            "--sample-tokens",
            "80",
            "--spec",
        ])
        .arg(&spec)
        .arg("--data")
        .arg(&data)
        .arg("--out")
        .arg(&out)
        .stdin(Stdio::null())
        .output()
        .unwrap());
    assert!(stdout.contains("PROVIDER"), "{stdout}");
    assert!(out.join("model.safetensors").is_file());
    let summary: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("summary.json")).unwrap()).unwrap();
    assert!(summary["job_id"].as_str().unwrap().starts_with("job_"));
    // Over TLS, its certificate pinned by the providers and the customer.
    assert!(summary["pool"]
        .as_str()
        .unwrap()
        .starts_with("https://127.0.0.1:"));
    assert!(summary["pool_fingerprint"]
        .as_str()
        .unwrap()
        .starts_with("sha256:"));
    assert_eq!(summary["steps"], 60);
    let initial = summary["initial_loss"].as_f64().unwrap();
    let last = summary["final_loss"].as_f64().unwrap();
    assert!(last < initial - 0.5, "loss {initial} → {last}");
    // The held-out tenth of the text at each of the three checkpoints.
    let held_out = summary["eval_losses"].as_array().unwrap();
    assert_eq!(held_out.len(), 3, "{held_out:?}");
    assert!(held_out.iter().all(|l| l.as_f64().is_some_and(|l| l > 0.0)));
    assert!(stdout.contains("held-out loss"), "{stdout}");
    assert_eq!(summary["verification"]["status"], "succeeded");
    assert!(summary["wall_seconds"].as_f64().unwrap() > 0.0);
    let segments: u64 = summary["providers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["segments"].as_u64().unwrap())
        .sum();
    assert_eq!(segments, 3);
    // `--device auto` in a build without CUDA: the CPU, named in the class.
    for p in summary["providers"].as_array().unwrap() {
        let class = p["class"].as_str().unwrap();
        assert!(class.contains("/cpu/"), "{class}");
    }
    assert!(summary["sample"].as_str().unwrap().starts_with("ROMEO:"));
    // The job was paid through the ledger: providers' shares plus fees make
    // the cost, and the audit is clean.
    let payments = &summary["payments"];
    assert_eq!(payments["backend"], "dev");
    assert_eq!(payments["ledger_balanced"], true);
    let paid: u64 = payments["paid_piconero"]
        .as_object()
        .unwrap()
        .values()
        .map(|v| v.as_u64().unwrap())
        .sum();
    let fees = payments["fees_piconero"].as_u64().unwrap();
    assert!(paid > 0 && fees > 0, "{payments}");
    assert_eq!(paid + fees, payments["spent_piconero"].as_u64().unwrap());
}

#[test]
fn devnet_trains_a_parallel_job_on_its_workers() {
    let tmp = tempfile::tempdir().unwrap();
    let data = small_corpus(tmp.path());
    let spec = tmp.path().join("tiny.toml");
    std::fs::write(&spec, tiny_spec("devnet-diloco", 5, 60, 20)).unwrap();
    let out = tmp.path().join("out");
    let stdout = ok(Command::new(BIN)
        .args([
            "devnet",
            "--workers",
            "2",
            "--threads",
            "1",
            "--sample-tokens",
            "40",
        ])
        .arg("--spec")
        .arg(&spec)
        .arg("--data")
        .arg(&data)
        .arg("--out")
        .arg(&out)
        .stdin(Stdio::null())
        .output()
        .unwrap());
    let summary: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("summary.json")).unwrap()).unwrap();
    let p = &summary["parallel"];
    assert_eq!(p["workers"], 2, "{summary:#}");
    assert_eq!(p["rounds"], 3, "{summary:#}");
    assert_eq!(p["inner_steps"], 20, "{summary:#}");
    assert_eq!(p["outer_steps_checked"], 3, "{summary:#}");
    // Every round moved at least its two workers' pseudo-gradients up; a
    // worker sent at least one each round, and trained part of the time.
    assert!(p["bytes_per_round"].as_u64().unwrap() > 0, "{summary:#}");
    assert!(p["straggler_wait_seconds"].as_f64().unwrap() >= 0.0);
    let per_worker = p["bytes_per_worker"].as_u64().unwrap();
    assert!(
        per_worker > 0 && per_worker < p["bytes_per_round"].as_u64().unwrap() * 3,
        "{summary:#}"
    );
    let utilisation = p["utilisation"].as_f64().unwrap();
    assert!(utilisation > 0.0 && utilisation <= 1.0, "{summary:#}");
    assert!(stdout.contains("per worker"), "{stdout}");
    let losses = p["round_losses"].as_array().unwrap();
    let held_out = p["round_eval_losses"].as_array().unwrap();
    assert_eq!((losses.len(), held_out.len()), (3, 3), "{summary:#}");
    assert_eq!(summary["eval_losses"], p["round_eval_losses"]);
    assert!(stdout.contains("round loss"), "{stdout}");
    assert!(
        stdout.contains("outer steps computed again by the pool"),
        "{stdout}"
    );
    // Three providers by default (more than the workers), six segments.
    let segments: Vec<u64> = summary["providers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["segments"].as_u64().unwrap())
        .collect();
    assert_eq!(segments.len(), 3);
    assert_eq!(segments.iter().sum::<u64>(), 6);
    assert_eq!(summary["verification"]["status"], "succeeded");
    assert_eq!(summary["payments"]["ledger_balanced"], true);
}

/// `gradpool provider status` for the rig in `dir`, as its owner runs it.
fn provider_status(url: &str, dir: &Path) -> String {
    let out = Command::new(BIN)
        .args(["provider", "status", "--pool", url, "--data-dir"])
        .arg(dir)
        .env_remove("GRADPOOL_PROVIDER_CONFIG")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    ok(out)
}

fn spawn_provider(url: &str, dir: &Path) -> Killed {
    Killed(
        Command::new(BIN)
            .args([
                "provider",
                "--pool",
                url,
                "--threads",
                "1",
                "--name",
                "rig",
                "--data-dir",
            ])
            .arg(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    )
}

/// Polls the rig's status until its status line contains `want`.
fn wait_status(url: &str, dir: &Path, want: &str, limit: std::time::Duration) -> String {
    let start = std::time::Instant::now();
    loop {
        let text = provider_status(url, dir);
        let line = text
            .lines()
            .find(|l| l.starts_with("status "))
            .unwrap_or_default()
            .to_owned();
        if line.contains(want) {
            return text;
        }
        assert!(start.elapsed() < limit, "never {want}:\n{text}");
        std::thread::sleep(std::time::Duration::from_millis(300));
    }
}

/// The statuses the pool records for a rig: registered and held until its
/// hardware proof passes, idle, `disconnected` once the agent is killed
/// (SIGKILL: no goodbye) and its heartbeats stop, then connected again when
/// it restarts.
#[test]
fn a_killed_provider_is_seen_disconnected_and_back() {
    let tmp = tempfile::tempdir().unwrap();
    let (_pool, url) = start_pool(&tmp.path().join("pool"));
    let rig = tmp.path().join("rig");
    let limit = std::time::Duration::from_secs(60);

    let mut agent = spawn_provider(&url, &rig);
    wait_status(&url, &rig, "idle", limit);
    agent.0.kill().unwrap();
    agent.0.wait().unwrap();
    wait_status(&url, &rig, "disconnected", limit);
    // The pool's reaper records it within a second or so.
    let start = std::time::Instant::now();
    while !provider_status(&url, &rig).contains("disconnected (no heartbeat for a lease period)") {
        assert!(
            start.elapsed() < limit,
            "the disconnection was never recorded"
        );
        std::thread::sleep(std::time::Duration::from_millis(300));
    }

    let _agent = spawn_provider(&url, &rig);
    let text = wait_status(&url, &rig, "idle", limit);
    // Newest first: back, the proof passed again, and before that the story
    // of the first run.
    let history: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("  "))
        .filter_map(|l| l.split_whitespace().nth(1))
        .collect();
    let position = |s: &str| history.iter().position(|h| *h == s);
    let (connected, disconnected) = (position("connected"), position("disconnected"));
    assert!(
        connected.is_some() && disconnected.is_some() && connected < disconnected,
        "{history:?}\n{text}"
    );
    assert!(history.contains(&"released"), "{history:?}");
    assert!(history.contains(&"registered"), "{history:?}");
}

/// `gradpool book` as a customer runs it: a rig is reserved for a window two
/// hours from now, the pool shows it `reserved`, asking for more GPUs than
/// there are says how many are free, and a cancel returns the hold.
#[test]
fn a_customer_books_a_rig_for_later() {
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("home");
    let (_pool, url) = start_pool(&tmp.path().join("pool"));
    let rig = tmp.path().join("rig");
    let _agent = spawn_provider(&url, &rig);
    wait_status(&url, &rig, "idle", std::time::Duration::from_secs(60));
    ok(gradpool(
        &home,
        &["account", "create", "--pool", &url, "--name", "ada"],
    ));
    ok(gradpool(&home, &["account", "faucet", "--amount", "1"]));

    let booked = ok(gradpool(
        &home,
        &["book", "--gpus", "1", "--from", "+2h", "--hours", "3"],
    ));
    assert!(booked.contains("status     reserved"), "{booked}");
    // 3 hours at the rig's default 0.01 XMR an hour.
    assert!(booked.contains("held       0.03 XMR"), "{booked}");
    let id = booked
        .lines()
        .find_map(|l| l.strip_prefix("booking    "))
        .unwrap()
        .to_owned();
    let shown = provider_status(&url, &rig);
    assert!(shown.contains("status             reserved"), "{shown}");
    let balance = ok(gradpool(&home, &["account", "balance"]));
    assert!(balance.contains("0.97 XMR"), "{balance}");
    // The hold is in escrow, not gone.
    assert!(balance.contains("in escrow    0.03 XMR"), "{balance}");

    let refused = refused(gradpool(
        &home,
        &["book", "--gpus", "3", "--from", "+2h", "--hours", "1"],
    ));
    assert!(
        refused.contains("only 0 connected provider(s)"),
        "{refused}"
    );
    let listed = ok(gradpool(&home, &["book", "list"]));
    assert!(
        listed.contains(&id) && listed.contains("reserved"),
        "{listed}"
    );
    let cancelled = ok(gradpool(&home, &["book", "cancel", &id]));
    assert!(cancelled.contains("status     cancelled"), "{cancelled}");
    assert!(
        cancelled.contains("returned   0.03 XMR to your balance") && !cancelled.contains("held"),
        "{cancelled}"
    );
    let balance = ok(gradpool(&home, &["account", "balance"]));
    assert!(balance.contains("available    1 XMR"), "{balance}");

    // Booked from now, and a quick job run inside it with the everyday
    // flags over the spec.
    let booked = ok(gradpool(
        &home,
        &["book", "--gpus", "1", "--from", "now", "--hours", "1"],
    ));
    assert!(booked.contains("status     active"), "{booked}");
    let id = booked
        .lines()
        .find_map(|l| l.strip_prefix("booking    "))
        .unwrap()
        .to_owned();
    assert!(booked.contains(&format!("--booking {id}")), "{booked}");
    let spec = tmp.path().join("tiny.toml");
    std::fs::write(&spec, tiny_spec("from the file", 3, 100, 50)).unwrap();
    let data = small_corpus(tmp.path());
    let job = ok(gradpool(
        &home,
        &[
            "job",
            "submit",
            spec.to_str().unwrap(),
            "--data",
            data.to_str().unwrap(),
            "--booking",
            &id,
            "--steps",
            "20",
            "--budget",
            "0.05",
            "--max-price",
            "0.5",
            "--name",
            "booked-run",
        ],
    ));
    let job = job.trim().to_owned();
    ok(gradpool(&home, &["job", "watch", &job]));
    let shown = ok(gradpool(&home, &["job", "show", &job]));
    for expect in [
        "name       booked-run".to_owned(),
        "status     succeeded".to_owned(),
        "step       20/20".to_owned(),
        format!("booking    {id}"),
        "a 0.05 XMR budget".to_owned(),
    ] {
        assert!(shown.contains(&expect), "{expect:?} not in:\n{shown}");
    }
    // The spec file is as it was.
    assert!(std::fs::read_to_string(&spec)
        .unwrap()
        .contains("steps = 100"));
}
