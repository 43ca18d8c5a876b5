//! Blobs on S3-compatible object storage, against a real S3 server: s3s's
//! file-system server on a loopback port, with signed requests (SigV4)
//! and its own access key. A stored blob lands in the bucket and comes
//! back from it once the pool's local copy is gone; a refused upload (a
//! digest mismatch, over the size cap) leaves nothing in the bucket; a
//! wrong key or an unreachable store is an error, never a blob.

mod common;

use common::*;
use gradpool_core::Sha256Hex;
use gradpool_pool::{ObjectStorage, S3Credentials};
use std::path::{Path, PathBuf};

const BUCKET: &str = "gradpool-blobs";
const ACCESS_KEY: &str = "gradpool-test";
const SECRET_KEY: &str = "a-secret-only-this-test-knows";

/// An S3 server over `root` on a free loopback port; its URL. The bucket
/// exists.
async fn s3_server(root: &Path) -> String {
    std::fs::create_dir_all(root.join(BUCKET)).unwrap();
    let fs = s3s_fs::FileSystem::new(root).unwrap();
    let mut builder = s3s::service::S3ServiceBuilder::new(fs);
    builder.set_auth(s3s::auth::SimpleAuth::from_single(ACCESS_KEY, SECRET_KEY));
    let service = builder.build();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        let http =
            hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new());
        loop {
            let Ok((socket, _)) = listener.accept().await else {
                continue;
            };
            let conn = http
                .serve_connection(hyper_util::rt::TokioIo::new(socket), service.clone())
                .into_owned();
            tokio::spawn(async move {
                let _ = conn.await;
            });
        }
    });
    url
}

fn storage(endpoint: &str, secret: &str) -> ObjectStorage {
    let mut s = ObjectStorage::parse(
        &format!("s3://{BUCKET}/pool-a"),
        Some(endpoint),
        "us-east-1",
    )
    .unwrap();
    s.credentials = Some(S3Credentials {
        access_key_id: ACCESS_KEY.into(),
        secret_access_key: secret.into(),
    });
    s
}

/// Where the S3 server keeps `sha`'s object.
fn object(root: &Path, sha: &Sha256Hex) -> PathBuf {
    root.join(BUCKET)
        .join("pool-a")
        .join(&sha.as_str()[..2])
        .join(sha.as_str())
}

fn local(tp: &TestPool, sha: &Sha256Hex) -> PathBuf {
    tp.blob_dir().join(&sha.as_str()[..2]).join(sha.as_str())
}

#[tokio::test]
async fn a_blob_is_kept_in_the_bucket_and_comes_back_from_it() {
    let s3 = tempfile::tempdir().unwrap();
    let endpoint = s3_server(s3.path()).await;
    let tp =
        TestPool::start_with(|c| c.object_storage = Some(storage(&endpoint, SECRET_KEY))).await;
    let alice = tp.customer("alice").await;

    // Large enough to go up in parts.
    let data: Vec<u8> = (0..12 << 20).map(|i: u32| (i % 251) as u8).collect();
    let sha = alice.upload(&data).await;
    assert_eq!(std::fs::read(object(s3.path(), &sha)).unwrap(), data);

    // The pool's own copy gone (a new machine, a wiped disk): served
    // from the bucket, and kept again.
    std::fs::remove_file(local(&tp, &sha)).unwrap();
    let (status, got) = alice.get_bytes(&format!("/v1/blobs/{sha}")).await;
    assert_eq!(status, 200);
    assert!(got == data, "the blob came back changed");
    assert!(local(&tp, &sha).is_file());

    // A job's dataset read from the bucket at submit: its shape is read
    // from the copy fetched back.
    let text = b"To be, or not to be, that is the question.\n".repeat(50);
    let data_sha = alice.upload(&text).await;
    std::fs::remove_dir_all(tp.blob_dir().join(&data_sha.as_str()[..2])).unwrap();
    let job = alice.submit(SPEC, &text).await;
    assert_eq!(job.status, gradpool_core::wire::JobStatus::Queued);
    assert!(local(&tp, &data_sha).is_file());

    // A copy the bucket corrupted is never served as the blob.
    std::fs::remove_file(local(&tp, &sha)).unwrap();
    let mut bad = data.clone();
    bad[1000] ^= 1;
    std::fs::write(object(s3.path(), &sha), &bad).unwrap();
    let e = alice.get(&format!("/v1/blobs/{sha}")).await.err(500);
    assert_eq!(e.code, "internal");
    assert!(!local(&tp, &sha).exists());
}

#[tokio::test]
async fn a_refused_upload_leaves_nothing_in_the_bucket() {
    let s3 = tempfile::tempdir().unwrap();
    let endpoint = s3_server(s3.path()).await;
    let tp = TestPool::start_with(|c| {
        c.object_storage = Some(storage(&endpoint, SECRET_KEY));
        c.max_blob_bytes = 1000;
    })
    .await;
    let alice = tp.customer("alice").await;
    let kept = alice.upload(b"kept").await;
    let before = stored_files(&s3.path().join(BUCKET));
    assert_eq!(before, [object(s3.path(), &kept)]);

    // Bytes with another digest.
    let other = Sha256Hex::of(b"something else");
    let e = alice
        .put_blob(other.as_str(), b"hello".to_vec())
        .await
        .err(400);
    assert_eq!(e.code, "digest_mismatch");
    // Over the cap, declared and streamed.
    let big = vec![7u8; 2000];
    let big_sha = Sha256Hex::of(&big);
    let e = alice.put_blob(big_sha.as_str(), big.clone()).await.err(413);
    assert_eq!(e.code, "too_large");
    let resp = alice.put_blob_streamed(big_sha.as_str(), &big, 300).await;
    assert_eq!(resp.status(), 413);

    assert_eq!(stored_files(&s3.path().join(BUCKET)), before);
    assert!(!local(&tp, &other).exists() && !local(&tp, &big_sha).exists());
}

#[tokio::test]
async fn a_store_that_refuses_the_pool_stores_nothing() {
    let s3 = tempfile::tempdir().unwrap();
    let endpoint = s3_server(s3.path()).await;
    // The wrong secret: the server refuses every signed request.
    let tp = TestPool::start_with(|c| c.object_storage = Some(storage(&endpoint, "wrong"))).await;
    let alice = tp.customer("alice").await;
    let bytes = b"not stored".to_vec();
    let sha = Sha256Hex::of(&bytes);
    let e = alice.put_blob(sha.as_str(), bytes).await.err(503);
    assert_eq!(e.code, "unavailable");
    assert!(e.message.contains("object storage"), "{}", e.message);
    assert!(stored_files(&s3.path().join(BUCKET)).is_empty());
    assert!(!local(&tp, &sha).exists(), "kept locally though not stored");
}

#[test]
fn object_storage_settings_are_checked_when_read() {
    let ok = ObjectStorage::parse("s3://my-bucket/some/prefix/", None, "eu-west-1").unwrap();
    assert_eq!(
        (ok.bucket.as_str(), ok.prefix.as_str()),
        ("my-bucket", "some/prefix")
    );
    for (url, endpoint, why) in [
        ("my-bucket", None, "expected s3://"),
        ("s3://My_Bucket", None, "not a bucket name"),
        ("s3://b", None, "not a bucket name"),
        (
            "s3://bucket",
            Some("http://s3.example.net"),
            "plain http only",
        ),
        (
            "s3://bucket",
            Some("ftp://127.0.0.1"),
            "expected http(s)://",
        ),
        ("s3://bucket", Some("127.0.0.1:9000"), "expected http(s)://"),
        (
            "s3://bucket",
            Some("http://localhost:1@evil.example"),
            "plain http only",
        ),
        (
            "s3://bucket",
            Some("http://127.0.0.1.evil.example"),
            "plain http only",
        ),
    ] {
        let e = ObjectStorage::parse(url, endpoint, "us-east-1").unwrap_err();
        assert!(e.contains(why), "{url} {endpoint:?}: {e}");
    }
    ObjectStorage::parse("s3://bucket", Some("http://127.0.0.1:9000"), "us-east-1").unwrap();
    ObjectStorage::parse("s3://bucket", Some("http://[::1]:9000"), "us-east-1").unwrap();
    ObjectStorage::parse("s3://bucket", Some("https://s3.example.net"), "us-east-1").unwrap();
}
