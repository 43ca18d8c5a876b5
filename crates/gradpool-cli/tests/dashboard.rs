//! The dashboard in a real browser: Debian's headless Chromium, driven
//! over WebDriver (chromedriver), against a pool and a provider agent on
//! 127.0.0.1. A customer signs in, opens a running job, sees its loss
//! curve gain points as segments commit, downloads the model, and opens
//! the provider's page. Every step also checks that the page itself did
//! not break: no script error, no refused request, no error shown.
//!
//! Screenshots of each step are kept in `target/tmp/dashboard-screenshots/`.
//! Needs `chromium` and `chromium-driver` (`.ci/run` installs them).

mod common;

use common::*;
use fantoccini::{Client, ClientBuilder, Locator};
use gradpool_core::wire::{Balance, Faucet};
use gradpool_core::Piconero;
use serde_json::{json, Value};
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const LIMIT: Duration = Duration::from_secs(120);

/// The job's steps, in 8 segments: long enough for the page to see it run.
const STEPS: u64 = 1600;

/// chromedriver on a free port, stopped on drop.
struct Driver {
    child: std::process::Child,
    url: String,
}

impl Driver {
    fn start() -> Driver {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut child = std::process::Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("chromedriver (apt-get install chromium chromium-driver)");
        let stdout = child.stdout.take().unwrap();
        let mut lines = std::io::BufReader::new(stdout).lines();
        loop {
            let line = lines
                .next()
                .expect("chromedriver exited before it started")
                .unwrap();
            if line.contains("started successfully") {
                break;
            }
        }
        std::thread::spawn(move || lines.for_each(drop));
        Driver {
            child,
            url: format!("http://127.0.0.1:{port}"),
        }
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A headless Chromium session that downloads into `downloads`.
async fn browser(driver: &Driver, profile: &Path, downloads: &Path) -> Client {
    let capabilities = json!({
        "browserName": "chrome",
        "goog:chromeOptions": {
            "binary": "/usr/bin/chromium",
            "args": [
                "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--disable-background-networking", "--disable-component-update",
                "--disable-sync", "--no-first-run", "--window-size=1280,1000",
                format!("--user-data-dir={}", profile.display()),
            ],
            "prefs": {
                "download.default_directory": downloads.display().to_string(),
                "download.prompt_for_download": false,
            },
        },
    });
    let Value::Object(capabilities) = capabilities else {
        unreachable!()
    };
    ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(capabilities)
        .connect(&driver.url)
        .await
        .expect("a Chromium session")
}

/// Where the screenshots go.
fn shots() -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("dashboard-screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Saves a screenshot, then fails if the page broke: a script error, a
/// request the page's policy refused, or an error it shows.
async fn check(c: &Client, name: &str) {
    let png = c.screenshot().await.unwrap();
    assert!(png.starts_with(b"\x89PNG"), "not a PNG screenshot");
    std::fs::write(shots().join(format!("{name}.png")), png).unwrap();
    let errors = c
        .execute(
            "return window.gradpoolErrors || ['the page script did not run'];",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(errors, json!([]), "{name}: the page broke");
    let alert = c
        .execute(
            "const a = document.getElementById('alert'); return a.hidden ? '' : a.textContent;",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(alert, json!(""), "{name}: the page shows an error");
}

/// The text of the first element `css` finds, once there is one (the
/// page redraws live parts: an element found may be replaced before it is
/// read, and is then looked up again).
async fn text(c: &Client, css: &str) -> String {
    let start = Instant::now();
    loop {
        let found = c.wait().at_most(LIMIT).for_element(Locator::Css(css)).await;
        let el = found.unwrap_or_else(|e| panic!("no {css}: {e}"));
        match el.text().await {
            Ok(t) => return t,
            Err(e) if start.elapsed() < LIMIT => {
                stale_or_fail(&e);
            }
            Err(e) => panic!("{css}: {e}"),
        }
    }
}

/// A redrawn element is looked up again; anything else is a failure.
fn stale_or_fail(e: &fantoccini::error::CmdError) {
    assert!(
        e.to_string().contains("stale element"),
        "reading an element failed: {e}"
    );
}

/// Waits until `script` (a function body) returns true.
async fn until(c: &Client, what: &str, script: &str) {
    let start = Instant::now();
    loop {
        if c.execute(script, vec![]).await.unwrap() == json!(true) {
            return;
        }
        assert!(
            start.elapsed() < LIMIT,
            "{what} did not happen in {LIMIT:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The chart's `data-NAME` as a number.
async fn chart(c: &Client, name: &str) -> u64 {
    let v = c
        .execute(
            &format!("return document.getElementById('loss-chart').dataset.{name};"),
            vec![],
        )
        .await
        .unwrap();
    v.as_str().and_then(|s| s.parse().ok()).unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_customer_follows_a_job_live_and_downloads_its_model() {
    let tmp = tempfile::tempdir().unwrap();
    let pool = start_pool(tmp.path(), 10).await;
    let account = pool.pool.create_account("ada").await.unwrap();
    let api = gradpool_client::Api::new(
        &pool.url,
        Some(account.api_key.clone()),
        &Default::default(),
    )
    .unwrap();
    let _: Balance = api
        .post(
            "/v1/account/faucet",
            &Faucet {
                amount: Piconero(1_000_000_000_000),
            },
        )
        .await
        .unwrap();
    // 8 segments of 200 steps; it waits for a provider until the page is open.
    let spec = tiny_spec("dashboard-gpt", 5, STEPS, STEPS / 8)
        + "[budget]\ntotal_xmr = \"0.01\"\nmax_price_xmr_per_hour = \"0.05\"\n";
    let data = small_corpus(tmp.path());
    let job = gradpool_cli::cmd::job::submit_text(&api, &spec, &data, false)
        .await
        .unwrap();
    let driver = Driver::start();
    let downloads = tmp.path().join("downloads");
    std::fs::create_dir_all(&downloads).unwrap();
    let c = browser(&driver, &tmp.path().join("profile"), &downloads).await;

    // The pool at a glance, for anyone.
    c.goto(&format!("{}/", pool.url)).await.unwrap();
    text(&c, "#providers-by-status").await;
    assert_eq!(text(&c, "h1").await, "The pool");
    check(&c, "1-overview").await;

    // A wrong key is refused in words, and nothing is stored.
    c.goto(&format!("{}/#/signin", pool.url)).await.unwrap();
    let input = c.wait().for_element(Locator::Id("api-key")).await.unwrap();
    input.send_keys("gp_not_a_key").await.unwrap();
    c.find(Locator::Css("#signin button[type=submit]"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    until(
        &c,
        "the refusal",
        "return !document.getElementById('alert').hidden;",
    )
    .await;
    assert!(text(&c, "#alert").await.contains("not one this pool knows"));

    // Signed in: the jobs, the balance.
    let input = c.find(Locator::Id("api-key")).await.unwrap();
    input.clear().await.unwrap();
    input.send_keys(&account.api_key).await.unwrap();
    c.find(Locator::Css("#signin button[type=submit]"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let jobs = text(&c, "#jobs").await;
    assert!(jobs.contains("dashboard-gpt"), "{jobs}");
    assert!(text(&c, "[data-field=available] dd").await.ends_with("XMR"));
    check(&c, "2-jobs").await;

    // The job, queued: nothing on its curve yet.
    c.find(Locator::LinkText("dashboard-gpt"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    assert_eq!(text(&c, "h1").await, "dashboard-gpt");
    assert_eq!(text(&c, "[data-field=status] dd").await, "queued");
    text(&c, "#loss-chart").await;
    assert_eq!(chart(&c, "points").await, 0);
    // Every state the chart goes through, as the page draws it.
    c.execute(
        "const box = document.getElementById('loss-chart'); window.chartHistory = []; \
         new MutationObserver(() => window.chartHistory.push([Number(box.dataset.committed), \
           Number(box.dataset.points)])).observe(box, { attributes: true, \
           attributeFilter: ['data-points', 'data-committed'] });",
        vec![],
    )
    .await
    .unwrap();
    check(&c, "3-job-queued").await;

    // A provider comes: the curve gains points as segments commit.
    let rig = Rig::start(&pool, tmp.path(), "rig-1", 1, |c| {
        c.price_per_hour = Piconero(10_000_000_000);
    });
    until(
        &c,
        "a first committed segment",
        "return Number(document.getElementById('loss-chart').dataset.committed) > 0;",
    )
    .await;
    check(&c, "4-job-running").await;
    until(
        &c,
        "the job's end",
        "const s = document.querySelector('[data-field=status] dd'); return !!s && s.textContent === 'succeeded';",
    )
    .await;
    until(
        &c,
        "every step on the curve",
        &format!("return document.getElementById('loss-chart').dataset.points === '{STEPS}';"),
    )
    .await;
    let history: Vec<(u64, u64)> = serde_json::from_value(
        c.execute("return window.chartHistory;", vec![])
            .await
            .unwrap(),
    )
    .unwrap();
    // The most points seen with each number of committed segments.
    let mut most = std::collections::BTreeMap::new();
    for (committed, points) in &history {
        let m = most.entry(*committed).or_insert(0);
        *m = (*m).max(*points);
    }
    assert!(
        most.len() >= 3,
        "the curve grew in fewer than 3 steps of commits: {history:?}"
    );
    let seen: Vec<u64> = most.values().copied().collect();
    assert!(
        seen.windows(2).all(|w| w[0] < w[1]),
        "points did not grow with commits: {most:?}"
    );
    assert_eq!(most.keys().last(), Some(&8), "{most:?}");
    assert!(text(&c, "[data-field=spent] dd").await.ends_with("XMR"));

    c.find(Locator::Id("download"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    until(
        &c,
        "the download",
        "return !!document.getElementById('download-note').dataset.downloaded;",
    )
    .await;
    let file = downloads.join("dashboard-gpt-model.safetensors");
    // The same model `gradpool job fetch` writes, once Chromium has
    // written it whole.
    let (fetched, _) =
        gradpool_cli::cmd::job::fetch_model(&api, job.id.as_str(), &tmp.path().join("out"), false)
            .await
            .unwrap();
    let want = std::fs::read(&fetched).unwrap();
    let start = Instant::now();
    while std::fs::read(&file).ok().as_ref() != Some(&want) {
        assert!(
            start.elapsed() < LIMIT,
            "{} is missing or differs from job fetch's model",
            file.display()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    check(&c, "5-job-done").await;

    // The provider that trained it, with the pool's telemetry sample and
    // its last heartbeat's reading charted.
    assert_eq!(pool.pool.sample_telemetry().await.unwrap(), 1);
    c.find(Locator::Css("#segments a"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    assert_eq!(text(&c, "h1").await, "rig-1");
    let segments = text(&c, "[data-field=segments] dd").await;
    assert_eq!(segments, "8");
    text(&c, "#telemetry").await;
    until(
        &c,
        "a chart of two readings",
        "const s = document.querySelector('#telemetry .spark'); return !!s && Number(s.dataset.samples) >= 2;",
    )
    .await;
    check(&c, "6-provider").await;

    // The rig's owner, with the link the rig prints: its own page.
    let out = succeeded(
        std::process::Command::new(BIN)
            .args([
                "provider",
                "dashboard",
                "--json",
                "--pool",
                &pool.url,
                "--data-dir",
            ])
            .arg(tmp.path().join("rig-1")),
    );
    let link: Value = serde_json::from_slice(&out).unwrap();
    let url = link["url"].as_str().unwrap();
    assert!(
        url.starts_with(&format!("{}/#/rig/gpv_", pool.url)),
        "{url}"
    );
    c.goto(url).await.unwrap();
    assert_eq!(text(&c, "h1").await, "rig-1");
    assert_eq!(text(&c, "[data-field=segments] dd").await, "8");
    assert!(text(&c, "#history").await.contains("registered"));
    assert!(text(&c, "[data-field=pending] dd").await.ends_with("XMR"));
    text(&c, "#proofs").await;
    text(&c, "#audits").await;
    // The token left the address bar (and the history) at once.
    assert_eq!(c.current_url().await.unwrap().fragment(), Some("/rig"));
    check(&c, "7-rig").await;

    // On a phone: nothing wider than the screen but what scrolls inside
    // its own box (the tables).
    c.set_window_size(390, 844).await.unwrap();
    for (page, name) in [
        (format!("#/jobs/{}", job.id), "8-phone-job"),
        ("#/".to_owned(), "9-phone-overview"),
    ] {
        c.goto(&format!("{}/{page}", pool.url)).await.unwrap();
        text(&c, "h1").await;
        until(
            &c,
            "the page fitting the screen",
            "return document.documentElement.scrollWidth <= window.innerWidth;",
        )
        .await;
        check(&c, name).await;
    }

    c.close().await.unwrap();
    rig.stop().await;
}
