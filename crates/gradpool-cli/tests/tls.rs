//! The pool over TLS: a certificate pinned by its fingerprint, a wrong one
//! refused, one remembered on first use that then changes refused loudly,
//! and plain HTTP kept to this machine unless asked for.

mod common;

use common::BIN;
use gradpool_client::trust::Refusal;
use gradpool_client::{Api, ClientError, Fingerprint, Trust};
use gradpool_core::wire::PoolInfo;
use gradpool_pool::tls::{Tls, TlsListener, TlsSource};
use gradpool_pool::{Pool, PoolConfig};
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use tokio_util::sync::CancellationToken;

/// A pool serving HTTPS on `addr` with a self-signed certificate kept in
/// `dir/tls`; returns its fingerprint, its address and the stop token.
async fn tls_pool(dir: &Path, addr: &str) -> (Fingerprint, SocketAddr, CancellationToken) {
    let pool = Pool::open(PoolConfig {
        data_dir: dir.join("pool"),
        ..PoolConfig::default()
    })
    .await
    .unwrap();
    let tls = Tls::load(&TlsSource::SelfSigned {
        dir: dir.join("tls"),
        names: vec!["localhost".into()],
    })
    .unwrap();
    let tcp = tokio::net::TcpListener::bind(addr).await.unwrap();
    let local = tcp.local_addr().unwrap();
    let listener = TlsListener::new(tcp, &tls).unwrap();
    let stop = CancellationToken::new();
    let s = stop.clone();
    tokio::spawn(pool.serve(listener, async move { s.cancelled().await }));
    (tls.fingerprint, local, stop)
}

async fn info(url: &str, trust: &Trust) -> Result<PoolInfo, ClientError> {
    Api::new(url, None, trust).unwrap().get("/v1/pool").await
}

#[tokio::test]
async fn a_pinned_certificate_is_accepted_and_any_other_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let (fingerprint, addr, _stop) = tls_pool(tmp.path(), "127.0.0.1:0").await;
    let url = format!("https://{addr}");
    let pinned = Trust {
        fingerprint: Some(fingerprint),
        ..Trust::default()
    };
    info(&url, &pinned).await.unwrap();

    let wrong = Trust {
        fingerprint: Some(Fingerprint::of(b"another certificate")),
        ..Trust::default()
    };
    match info(&url, &wrong).await {
        Err(ClientError::Certificate { refusal, .. }) => match *refusal {
            Refusal::NotPinned { got, .. } => assert_eq!(got, fingerprint),
            other => panic!("{other:?}"),
        },
        other => panic!("{other:?}"),
    }
    // Neither pinned nor signed by an authority, with nowhere to remember
    // it: refused, saying what to pass.
    let err = info(&url, &Trust::default()).await.unwrap_err();
    assert!(err.to_string().contains("--pool-fingerprint"), "{err}");
    // Plain HTTP to the TLS port does not get through either.
    assert!(info(&format!("http://{addr}"), &Trust::default())
        .await
        .is_err());
}

#[tokio::test]
async fn a_remembered_certificate_that_changes_is_refused_loudly() {
    let tmp = tempfile::tempdir().unwrap();
    let known = tmp.path().join("home/known_pools");
    let trust = Trust {
        known_pools: Some(known.clone()),
        ..Trust::default()
    };
    let (first, addr, stop) = tls_pool(&tmp.path().join("a"), "127.0.0.1:0").await;
    let url = format!("https://{addr}");
    // First use: accepted and written down; then accepted again.
    info(&url, &trust).await.unwrap();
    let text = std::fs::read_to_string(&known).unwrap();
    assert_eq!(text.trim(), format!("127.0.0.1:{} {first}", addr.port()));
    info(&url, &trust).await.unwrap();

    // Another pool (another certificate) on the same address.
    stop.cancel();
    let mut second = None;
    for _ in 0..10_000 {
        let bound = tokio::net::TcpListener::bind(addr).await;
        if bound.is_ok() {
            drop(bound);
            second = Some(tls_pool(&tmp.path().join("b"), &addr.to_string()).await);
            break;
        }
        tokio::task::yield_now().await;
    }
    let (other, _, _stop) = second.expect("the address is free again");
    assert_ne!(other, first);
    let err = info(&url, &trust).await.unwrap_err();
    match &err {
        ClientError::Certificate { refusal, .. } => match refusal.as_ref() {
            Refusal::Changed {
                remembered, got, ..
            } => assert_eq!((*remembered, *got), (first, other)),
            other => panic!("{other:?}"),
        },
        other => panic!("{other:?}"),
    }
    assert!(err.to_string().contains("HAS CHANGED"), "{err}");
    // Nothing was overwritten.
    assert_eq!(std::fs::read_to_string(&known).unwrap(), text);
}

#[test]
fn plain_http_stays_on_this_machine_unless_asked_for() {
    let err = Api::new("http://192.0.2.7:7070", None, &Trust::default())
        .err()
        .unwrap();
    assert!(err.to_string().contains("--insecure-plain-http"), "{err}");
    for local in [
        "http://127.0.0.1:7070",
        "http://localhost:7070",
        "http://[::1]:7070",
    ] {
        Api::new(local, None, &Trust::default()).unwrap();
    }
    let allowed = Trust {
        allow_plain_http: true,
        ..Trust::default()
    };
    Api::new("http://192.0.2.7:7070", None, &allowed).unwrap();

    // The pool itself will not listen in the clear beyond loopback.
    let tmp = tempfile::tempdir().unwrap();
    let out = Command::new(BIN)
        .args(["pool", "--listen", "0.0.0.0:0", "--data-dir"])
        .arg(tmp.path().join("pool"))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("refusing to serve plain HTTP"), "{stderr}");
}

/// `gradpool pool --tls-self-signed` prints its fingerprint, and the
/// customer commands pin it.
#[test]
fn the_binary_serves_tls_and_customers_pin_it() {
    let tmp = tempfile::tempdir().unwrap();
    let mut pool = Command::new(BIN)
        .args([
            "pool",
            "--tls-self-signed",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
        ])
        .arg(tmp.path().join("pool"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(pool.stdout.take().unwrap()).lines();
    let listening = lines.next().unwrap().unwrap();
    let url = listening
        .split_whitespace()
        .find(|w| w.starts_with("https://"))
        .unwrap_or_else(|| panic!("{listening}"))
        .to_owned();
    let certificate = lines.next().unwrap().unwrap();
    let fingerprint = certificate.split_whitespace().nth(1).unwrap().to_owned();
    assert!(fingerprint.parse::<Fingerprint>().is_ok(), "{certificate}");

    let account = |fingerprint: &str| {
        Command::new(BIN)
            .args([
                "account",
                "create",
                "--no-save",
                "--name",
                "ada",
                "--pool",
                &url,
            ])
            .args(["--pool-fingerprint", fingerprint])
            .env("GRADPOOL_HOME", tmp.path().join("home"))
            .stdin(Stdio::null())
            .output()
            .unwrap()
    };
    let ok = account(&fingerprint);
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert!(String::from_utf8_lossy(&ok.stdout).contains("api key"));
    let wrong = account(&Fingerprint::of(b"x").to_string());
    assert!(!wrong.status.success());
    let stderr = String::from_utf8_lossy(&wrong.stderr);
    assert!(stderr.contains("not the pinned"), "{stderr}");
    let _ = pool.kill();
    let _ = pool.wait();
}
