//! The provider's config file and flags, through the binary: a wrong
//! address, an unparseable schedule or an out-of-range limit is refused
//! before anything starts, with the field's name; a good file is shown by
//! `gradpool provider status` with the flags over it.

mod common;

use common::BIN;
use std::process::Output;

/// A mainnet address (the Monero general fund's).
const ADDRESS: &str =
    "44AFFq5kSiGBoZ4NMDwYtN18obc8AemS33DBLWs3H7otXft3XjrpDtQGv7SqSsaBYBb98uNbr2VBBEt7f2wfn3RVGQBEP3A";

fn provider(dir: &std::path::Path, config: &str, args: &[&str]) -> Output {
    let path = dir.join("provider.toml");
    std::fs::write(&path, config).unwrap();
    std::process::Command::new(BIN)
        .arg("provider")
        .args(args)
        .arg("--config")
        .arg(&path)
        // Nothing listens here: a refused config must not get that far.
        .args(["--pool", "http://127.0.0.1:9"])
        .arg("--data-dir")
        .arg(dir.join("data"))
        .env_remove("GRADPOOL_POOL")
        .output()
        .unwrap()
}

#[test]
fn bad_settings_are_refused_naming_the_field() {
    let tmp = tempfile::tempdir().unwrap();
    let cases = [
        (
            // One character changed: the checksum fails.
            format!("payout = [\"{}\"]\n", ADDRESS.replacen("44A", "44B", 1)),
            "payout",
        ),
        (
            format!("network = \"stagenet\"\npayout = [\"{ADDRESS}\"]\n"),
            "payout",
        ),
        (
            "[limits]\nschedule = \"weeknights\"\n".to_owned(),
            "limits.schedule",
        ),
        (
            "[limits]\nmax_gpu_share = 0\n".to_owned(),
            "limits.max_gpu_share",
        ),
        (
            "[limits]\npause_above_c = 80\nresume_below_c = 85\n".to_owned(),
            "limits.resume_below_c",
        ),
        (
            "[limits]\npower_limit_w = 5000\n".to_owned(),
            "limits.power_limit_w",
        ),
        (
            "[limits]\ntemperature = 80\n".to_owned(),
            "limits.temperature",
        ),
        (
            "min_price_xmr_per_hour = \"cheap\"\n".to_owned(),
            "min_price_xmr_per_hour",
        ),
        ("region = \"Europe/Paris\"\n".to_owned(), "region"),
    ];
    for (config, field) in cases {
        for args in [&["status"][..], &[][..]] {
            let out = provider(tmp.path(), &config, args);
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(!out.status.success(), "{config} {args:?}: accepted");
            assert!(
                stderr.contains(field),
                "{config} {args:?}: the error does not name {field}: {stderr}"
            );
        }
    }
    // The agent refused before it created anything.
    assert!(!tmp.path().join("data").exists());
}

#[test]
fn status_shows_the_file_with_the_flags_over_it() {
    let tmp = tempfile::tempdir().unwrap();
    let config = format!(
        r#"name = "garage-rig"
payout = ["{ADDRESS}=70", "{ADDRESS}=30"]
min_price_xmr_per_hour = "0.02"
[limits]
max_gpu_share = 80
pause_above_c = 83
resume_below_c = 75
schedule = "mon-fri 22:00-07:00, sat-sun all-day"
"#
    );
    let out = provider(tmp.path(), &config, &["status", "--max-gpu-share", "60"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for line in [
        "name               garage-rig",
        "min price          0.02 XMR/hour",
        "max GPU share      60%",
        "temperature        pause at 83 °C, resume at 75 °C",
        "schedule           mon+tue+wed+thu+fri 22:00-07:00, sat+sun all-day (local time;",
        "(share 70)",
        "not registered yet",
    ] {
        assert!(stdout.contains(line), "missing {line:?} in:\n{stdout}");
    }
}

#[test]
fn the_shipped_config_is_valid() {
    let path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../packaging/provider.toml");
    let tmp = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(BIN)
        .args(["provider", "status", "--config"])
        .arg(&path)
        .arg("--data-dir")
        .arg(tmp.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("max GPU share      80%"), "{stdout}");
}

/// Runs `gradpool provider init` with `answers` on its stdin.
async fn init(config: &std::path::Path, pool: &str, answers: &str) -> Output {
    use tokio::io::AsyncWriteExt;
    let mut child = tokio::process::Command::new(BIN)
        .args(["provider", "init", "--pool", pool, "--config"])
        .arg(config)
        .env_remove("GRADPOOL_POOL")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(answers.as_bytes()).await.unwrap();
    drop(stdin);
    child.wait_with_output().await.unwrap()
}

/// Onboarding, as a rig owner answers it: a pool address that does not
/// answer, an address with a typo, a share and a schedule out of range are
/// each refused on the spot with the reason and asked again; the config
/// written runs `gradpool provider status` with those answers, and the
/// estimate uses the pool's prices.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn init_asks_checks_each_answer_and_writes_a_config_that_runs() {
    let tmp = tempfile::tempdir().unwrap();
    let pool = common::start_pool(&tmp.path().join("pool"), 10).await;
    let config = tmp.path().join("rig").join("provider.toml");
    let mut typo = ADDRESS.to_owned();
    typo.replace_range(10..11, if &ADDRESS[10..11] == "a" { "b" } else { "a" });
    let data_dir = tmp.path().join("rig-data");
    let answers = [
        "http://127.0.0.1:9",                   // nothing listens
        "",                                     // the default: the test pool
        &typo,                                  // a checksum error
        ADDRESS,                                // right
        "attic rig",                            // name
        "0",                                    // threads: out of range
        "1",                                    // threads
        "mon-fri 25:00-07:00",                  // no such hour
        "mon-fri 22:00-07:00, sat-sun all-day", // schedule
        "0.02",                                 // price
        "",                                     // validate: yes
        data_dir.to_str().unwrap(),             // data directory
    ]
    .join("\n")
        + "\n";
    let out = init(&config, &pool.url, &answers).await;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("cannot reach a gradpool pool at http://127.0.0.1:9"),
        "{text}"
    );
    assert!(text.contains("checksum"), "{text}");
    assert!(
        text.contains("\"0\": a number of threads from 1 to"),
        "{text}"
    );
    assert!(text.contains("25:00"), "{text}");
    assert!(text.contains("training on:"), "{text}");
    // A CPU rig is asked nothing about a GPU.
    for gpu_only in [
        "GPU may train",
        "temperature",
        "watts",
        "use the GPU yourself",
    ] {
        assert!(
            !text.contains(gpu_only),
            "{gpu_only:?} asked of a CPU rig:\n{text}"
        );
    }
    // Validation is explained with the payout-address rule.
    assert!(
        text.contains("never checks a rig paid to the same Monero address"),
        "{text}"
    );
    // The start command names the data directory.
    assert!(
        text.contains(&format!("--data-dir {}", data_dir.display())),
        "{text}"
    );
    // 0.02 XMR less 3% fees an hour; 86 h a week: 12.3 h a day.
    assert!(
        text.contains("0.0194 XMR an hour of work") && text.contains("12.3 working hours a day"),
        "{text}"
    );
    let written = std::fs::read_to_string(&config).unwrap();
    assert!(
        !written.contains("pause_above_c") && !written.contains("pause_when_busy"),
        "{written}"
    );

    // The config alone (its data_dir included) runs `provider status`.
    let status = std::process::Command::new(BIN)
        .args(["provider", "status", "--config"])
        .arg(&config)
        .env_remove("GRADPOOL_POOL")
        .output()
        .unwrap();
    let shown = String::from_utf8_lossy(&status.stdout);
    assert!(status.status.success(), "{shown}");
    // A CPU rig's share is its threads: no GPU share is shown.
    assert!(!shown.contains("max GPU share"), "{shown}");
    for expect in [
        format!("pool               {}", pool.url),
        format!("data dir           {}", data_dir.display()),
        "name               attic rig".to_owned(),
        "threads            1".to_owned(),
        "validates          yes".to_owned(),
        "mon+tue+wed+thu+fri 22:00-07:00, sat+sun all-day".to_owned(),
        "pause when busy    no".to_owned(),
        "min price          0.02 XMR/hour".to_owned(),
        "device             cpu".to_owned(),
        ADDRESS.to_owned(),
    ] {
        assert!(shown.contains(&expect), "{expect:?} not in:\n{shown}");
    }

    // Run again: it does not overwrite without asking.
    let before = std::fs::read_to_string(&config).unwrap();
    let out = init(&config, &pool.url, "no\n").await;
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("nothing written"));
    assert_eq!(std::fs::read_to_string(&config).unwrap(), before);
}

/// An agent process, killed when dropped.
struct Agent(std::process::Child);

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn status_of(data_dir: &std::path::Path) -> String {
    let stdout = common::succeeded(
        std::process::Command::new(BIN)
            .args(["provider", "status", "--data-dir"])
            .arg(data_dir)
            .env_remove("GRADPOOL_POOL")
            .env_remove("GRADPOOL_PROVIDER_CONFIG"),
    );
    String::from_utf8_lossy(&stdout).into_owned()
}

/// `provider status` on a running agent's data directory shows what that
/// agent runs with (not the flags status was given), and a second agent on
/// the directory is refused, saying which one holds it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_shows_the_running_agent_and_a_second_agent_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let pool = common::start_pool(&tmp.path().join("pool"), 10).await;
    let data_dir = tmp.path().join("rig");
    let start = |name: &str| {
        std::process::Command::new(BIN)
            .args(["provider", "start", "--pool", &pool.url, "--name", name])
            .args([
                "--validate",
                "--threads",
                "1",
                "--price-xmr-per-hour",
                "0.03",
            ])
            .args(["--payout", ADDRESS, "--data-dir"])
            .arg(&data_dir)
            .env_remove("GRADPOOL_PROVIDER_CONFIG")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let first = Agent(start("running-rig"));
    let began = std::time::Instant::now();
    let shown = loop {
        let shown = status_of(&data_dir);
        if shown.contains("agent              running (pid") {
            break shown;
        }
        assert!(
            began.elapsed() < std::time::Duration::from_secs(90),
            "the agent never showed as running:\n{shown}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    };
    for expect in [
        format!("pid {}", first.0.id()),
        format!("pool               {}", pool.url),
        "name               running-rig".to_owned(),
        "validates          yes".to_owned(),
        "threads            1".to_owned(),
        "min price          0.03 XMR/hour".to_owned(),
        format!("payout to          {ADDRESS} (share 1)"),
    ] {
        assert!(shown.contains(&expect), "{expect:?} not in:\n{shown}");
    }

    // A second agent on the same directory is refused.
    let second = start("intruder").wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert!(!second.status.success(), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "in use by another gradpool provider agent (pid {}",
            first.0.id()
        )) && stderr.contains("--data-dir"),
        "{stderr}"
    );
    assert!(status_of(&data_dir).contains("name               running-rig"));

    // Once it is gone, status says so and shows what would start.
    drop(first);
    let shown = status_of(&data_dir);
    assert!(shown.contains("agent              not running"), "{shown}");
}
