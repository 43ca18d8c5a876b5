//! The pool's HTTP API, as a client.
//!
//! [`Api`] is the transport every gradpool client uses (the provider agent
//! and the customer commands): bearer authentication, JSON bodies, streamed
//! blob transfers checked against their digest, and [`ApiError`] replies
//! turned into [`ProviderError::Refused`]. The provider calls are methods on
//! top of it.

use crate::ProviderError;
use futures::StreamExt;
use gradpool_core::wire::{self, ApiError};
use gradpool_core::{Sha256Hex, TaskId};
use serde::de::DeserializeOwned;
use serde::Serialize;
use sha2::{Digest, Sha256};
use std::path::Path;
use std::time::Duration;
use tokio::io::AsyncWriteExt;

/// A client of one pool, with an optional bearer token.
#[derive(Clone)]
pub struct Api {
    base: String,
    http: reqwest::Client,
    token: Option<String>,
}

impl Api {
    /// A client for the pool at `base` (`http://127.0.0.1:7070`).
    pub fn new(base: &str, token: Option<String>) -> Api {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .build()
            .unwrap_or_default();
        Api {
            base: base.trim_end_matches('/').to_owned(),
            http,
            token,
        }
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    pub fn set_token(&mut self, token: String) {
        self.token = Some(token);
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    /// A request with authentication set.
    pub fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let rb = self.http.request(method, self.url(path));
        match &self.token {
            Some(t) => rb.bearer_auth(t),
            None => rb,
        }
    }

    /// Sends a request and turns an error status into [`ProviderError::Refused`].
    pub async fn send(
        &self,
        what: &str,
        rb: reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, ProviderError> {
        let resp = rb
            .send()
            .await
            .map_err(|source| ProviderError::Unreachable {
                url: self.base.clone(),
                source,
            })?;
        if resp.status().is_success() {
            return Ok(resp);
        }
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap_or_default();
        let (code, message) = match serde_json::from_str::<ApiError>(&text) {
            Ok(e) => (e.code, e.message),
            Err(_) => ("http".to_owned(), text.chars().take(300).collect()),
        };
        Err(ProviderError::Refused {
            what: what.to_owned(),
            status,
            code,
            message,
        })
    }

    async fn json<T: DeserializeOwned>(
        &self,
        what: &str,
        rb: reqwest::RequestBuilder,
    ) -> Result<T, ProviderError> {
        self.send(what, rb)
            .await?
            .json()
            .await
            .map_err(|source| ProviderError::BadReply {
                what: what.to_owned(),
                source,
            })
    }

    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ProviderError> {
        self.json(path, self.request(reqwest::Method::GET, path))
            .await
    }

    pub async fn post<B: Serialize + ?Sized, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T, ProviderError> {
        self.json(path, self.request(reqwest::Method::POST, path).json(body))
            .await
    }

    /// POST with no reply body expected.
    pub async fn post_unit<B: Serialize + ?Sized>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<(), ProviderError> {
        self.send(path, self.request(reqwest::Method::POST, path).json(body))
            .await?;
        Ok(())
    }

    /// Uploads a file as a blob, streamed; `on_bytes` is called with each
    /// chunk's length (for progress bars).
    pub async fn put_blob(
        &self,
        path: &Path,
        sha: &Sha256Hex,
        on_bytes: impl Fn(u64) + Send + Sync + 'static,
    ) -> Result<wire::BlobStored, ProviderError> {
        let file = tokio::fs::File::open(path)
            .await
            .map_err(ProviderError::io(format!("cannot open {}", path.display())))?;
        let len = file
            .metadata()
            .await
            .map_err(ProviderError::io(format!("cannot stat {}", path.display())))?
            .len();
        let stream = tokio_util::io::ReaderStream::new(file).inspect(move |chunk| {
            if let Ok(c) = chunk {
                on_bytes(c.len() as u64);
            }
        });
        let what = format!("upload of {}", path.display());
        let rb = self
            .request(reqwest::Method::PUT, &format!("/v1/blobs/{sha}"))
            .header(reqwest::header::CONTENT_LENGTH, len)
            .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
            .body(reqwest::Body::wrap_stream(stream));
        self.json(&what, rb).await
    }

    /// Downloads a blob to `dest`, checking its digest; `dest` is written
    /// only once the whole blob arrived and matched.
    pub async fn get_blob(&self, sha: &Sha256Hex, dest: &Path) -> Result<(), ProviderError> {
        let what = format!("download of blob {sha}");
        let resp = self
            .send(
                &what,
                self.request(reqwest::Method::GET, &format!("/v1/blobs/{sha}")),
            )
            .await?;
        // Unique: two workers may fetch the same blob at once.
        let tmp = dest.with_extension(format!("download-{}", gradpool_core::id::random_hex(6)));
        let mut file = tokio::fs::File::create(&tmp)
            .await
            .map_err(ProviderError::io(format!(
                "cannot create {}",
                tmp.display()
            )))?;
        let mut hasher = Sha256::new();
        let mut body = resp.bytes_stream();
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|source| ProviderError::Unreachable {
                url: self.base.clone(),
                source,
            })?;
            hasher.update(&chunk);
            file.write_all(&chunk)
                .await
                .map_err(ProviderError::io(format!("cannot write {}", tmp.display())))?;
        }
        file.sync_all()
            .await
            .map_err(ProviderError::io(format!("cannot write {}", tmp.display())))?;
        if Sha256Hex::from_digest(hasher.finalize().into()) != *sha {
            let _ = tokio::fs::remove_file(&tmp).await;
            return Err(ProviderError::CorruptBlob {
                sha256: sha.to_string(),
            });
        }
        tokio::fs::rename(&tmp, dest)
            .await
            .map_err(ProviderError::io(format!(
                "cannot write {}",
                dest.display()
            )))
    }

    // The provider's calls.

    pub async fn challenge(&self) -> Result<wire::RegistrationChallenge, ProviderError> {
        self.post("/v1/providers/challenge", &()).await
    }

    pub async fn register(&self, req: &wire::Register) -> Result<wire::Registered, ProviderError> {
        self.post("/v1/providers/register", req).await
    }

    pub async fn heartbeat(
        &self,
        req: &wire::Heartbeat,
    ) -> Result<wire::HeartbeatReply, ProviderError> {
        // The pool may hold a long-poll up to `wait_seconds`.
        let rb = self
            .request(reqwest::Method::POST, "/v1/providers/heartbeat")
            .timeout(Duration::from_secs(u64::from(req.wait_seconds) + 20))
            .json(req);
        self.json("heartbeat", rb).await
    }

    pub async fn progress(&self, task: &TaskId, p: &wire::Progress) -> Result<(), ProviderError> {
        self.post_unit(&format!("/v1/tasks/{task}/progress"), p)
            .await
    }

    pub async fn commit(
        &self,
        task: &TaskId,
        c: &wire::Commit,
    ) -> Result<wire::CommitReply, ProviderError> {
        self.post(&format!("/v1/tasks/{task}/commit"), c).await
    }

    /// Reports a replay's result (an audit's evidence).
    pub async fn replay(
        &self,
        task: &TaskId,
        r: &gradpool_core::SignedReplay,
    ) -> Result<(), ProviderError> {
        self.post_unit(&format!("/v1/tasks/{task}/replay"), r).await
    }

    /// Hands a leased task back (the provider pauses); not a failure.
    pub async fn release(&self, task: &TaskId, reason: &str) -> Result<(), ProviderError> {
        self.post_unit(
            &format!("/v1/tasks/{task}/release"),
            &wire::TaskFailed {
                reason: reason.to_owned(),
            },
        )
        .await
    }

    pub async fn fail(&self, task: &TaskId, reason: &str) -> Result<(), ProviderError> {
        self.post_unit(
            &format!("/v1/tasks/{task}/fail"),
            &wire::TaskFailed {
                reason: reason.to_owned(),
            },
        )
        .await
    }
}
