//! The client of a gradpool pool's HTTP API.
//!
//! [`Api`] is the transport every gradpool client uses (the provider agent,
//! the customer commands, devnet): bearer authentication, JSON bodies,
//! streamed blob transfers checked against their digest, and [`ApiError`]
//! replies turned into [`ClientError::Refused`]. The provider's calls are
//! methods on top of it; the messages are [`gradpool_core::wire`]'s, whose
//! other end is the pool's router.
//!
//! Whom the client talks to is decided by [`trust::Trust`]: a pool over
//! `https://` must show a certificate an authority signed, the one pinned
//! by its fingerprint, or the one remembered the first time; plain
//! `http://` is for a pool on this machine.

pub mod trust;

use futures::StreamExt;
use gradpool_core::wire::{self, ApiError};
use gradpool_core::{Sha256Hex, TaskId};
use serde::de::DeserializeOwned;
use serde::Serialize;
use sha2::{Digest, Sha256};
use std::path::Path;
use std::time::Duration;
use tokio::io::AsyncWriteExt;

pub use trust::{Fingerprint, Trust};

/// What can go wrong talking to a pool.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("pool at {url} is unreachable: check the pool address and that the pool is running")]
    Unreachable { url: String, source: reqwest::Error },
    #[error("pool at {url} refused: {refusal}")]
    Certificate {
        url: String,
        refusal: Box<trust::Refusal>,
    },
    #[error("pool address {url}: {reason}")]
    BadUrl { url: String, reason: String },
    #[error("pool refused {what}: {status} {message}")]
    Refused {
        what: String,
        status: u16,
        code: String,
        message: String,
    },
    #[error("pool sent an unreadable reply to {what}")]
    BadReply {
        what: String,
        source: reqwest::Error,
    },
    #[error("blob {sha256} from the pool does not match its digest")]
    CorruptBlob { sha256: String },
    #[error("{context}: {error}")]
    Io {
        context: String,
        error: std::io::Error,
    },
}

impl ClientError {
    fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> ClientError {
        let context = context.into();
        move |error| ClientError::Io { context, error }
    }

    /// The error with its causes, for logs and messages: `pool at … is
    /// unreachable: error sending request …: connection refused`.
    pub fn report(&self) -> String {
        report(self)
    }

    /// True when the pool does not know the caller's credentials (a
    /// provider must register again).
    pub fn is_unauthorized(&self) -> bool {
        matches!(self, ClientError::Refused { status: 401, .. })
    }

    /// True when the pool did not answer at all (down, restarting, or the
    /// network in between): worth trying again.
    pub fn is_unreachable(&self) -> bool {
        matches!(self, ClientError::Unreachable { .. })
    }
}

/// An error with its causes, each after a colon: what `report` methods
/// print, here and in the crates built on this one.
pub fn report(error: &dyn std::error::Error) -> String {
    let mut out = error.to_string();
    let mut cause = error.source();
    while let Some(c) = cause {
        out.push_str(": ");
        out.push_str(&c.to_string());
        cause = c.source();
    }
    out
}

/// Whether `host` is this machine: plain HTTP to it crosses no network.
fn is_loopback(host: &url::Host<&str>) -> bool {
    match host {
        url::Host::Domain(d) => d.eq_ignore_ascii_case("localhost"),
        url::Host::Ipv4(ip) => ip.is_loopback(),
        url::Host::Ipv6(ip) => ip.is_loopback(),
    }
}

/// A client of one pool, with an optional bearer token.
#[derive(Clone)]
pub struct Api {
    base: String,
    http: reqwest::Client,
    token: Option<String>,
    /// Why the pool's certificate was last refused, if it was.
    refusal: trust::LastRefusal,
}

impl Api {
    /// A client for the pool at `base` (`https://pool.example:7443`, or
    /// `http://127.0.0.1:7070` on this machine), trusting its certificate
    /// as `trust` says.
    pub fn new(base: &str, token: Option<String>, trust: &Trust) -> Result<Api, ClientError> {
        let base = base.trim().trim_end_matches('/').to_owned();
        let bad = |reason: String| ClientError::BadUrl {
            url: base.clone(),
            reason,
        };
        let url = reqwest::Url::parse(&base)
            .map_err(|e| bad(format!("{e} (expected like https://pool.example:7443)")))?;
        let host = url.host().ok_or_else(|| bad("no host".into()))?;
        let pool = format!("{host}:{}", url.port_or_known_default().unwrap_or(0));
        let builder = reqwest::Client::builder().connect_timeout(Duration::from_secs(10));
        let refusal = trust::LastRefusal::default();
        let builder = match url.scheme() {
            "https" => {
                let (config, r) = trust::client_config(pool, trust)
                    .map_err(|e| bad(format!("TLS setup: {e}")))?;
                return Api::with_client(
                    base.clone(),
                    token,
                    builder.use_preconfigured_tls(config),
                    r,
                );
            }
            "http" if is_loopback(&host) || trust.allow_plain_http => builder,
            "http" => {
                return Err(bad(
                    "plain http:// to another machine sends keys and data in the clear; use \
                     https:// (a pool started with --tls-self-signed or --tls-cert), or allow it \
                     with --insecure-plain-http"
                        .into(),
                ))
            }
            other => {
                return Err(bad(format!(
                    "unknown scheme {other}: use https:// or http://"
                )))
            }
        };
        Api::with_client(base, token, builder, refusal)
    }

    fn with_client(
        base: String,
        token: Option<String>,
        builder: reqwest::ClientBuilder,
        refusal: trust::LastRefusal,
    ) -> Result<Api, ClientError> {
        let http = builder.build().map_err(|e| ClientError::BadUrl {
            url: base.clone(),
            reason: format!("cannot set up the HTTP client: {e}"),
        })?;
        Ok(Api {
            base,
            http,
            token,
            refusal,
        })
    }

    /// The error of a request that did not reach the pool: a refused
    /// certificate, said plainly, or the transport's error.
    fn unreachable(&self, source: reqwest::Error) -> ClientError {
        match self.refusal.lock().ok().and_then(|mut r| r.take()) {
            Some(refusal) => ClientError::Certificate {
                url: self.base.clone(),
                refusal: Box::new(refusal),
            },
            None => ClientError::Unreachable {
                url: self.base.clone(),
                source,
            },
        }
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    /// The same client without credentials (to register afresh).
    pub fn without_token(&self) -> Api {
        Api {
            token: None,
            ..self.clone()
        }
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

    /// Sends a request and turns an error status into [`ClientError::Refused`].
    pub async fn send(
        &self,
        what: &str,
        rb: reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, ClientError> {
        let resp = rb.send().await.map_err(|e| self.unreachable(e))?;
        if resp.status().is_success() {
            return Ok(resp);
        }
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap_or_default();
        let (code, message) = match serde_json::from_str::<ApiError>(&text) {
            Ok(e) => (e.code, e.message),
            Err(_) => ("http".to_owned(), text.chars().take(300).collect()),
        };
        Err(ClientError::Refused {
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
    ) -> Result<T, ClientError> {
        self.send(what, rb)
            .await?
            .json()
            .await
            .map_err(|source| ClientError::BadReply {
                what: what.to_owned(),
                source,
            })
    }

    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        self.json(path, self.request(reqwest::Method::GET, path))
            .await
    }

    pub async fn post<B: Serialize + ?Sized, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T, ClientError> {
        self.json(path, self.request(reqwest::Method::POST, path).json(body))
            .await
    }

    /// POST with no reply body expected.
    pub async fn post_unit<B: Serialize + ?Sized>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<(), ClientError> {
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
    ) -> Result<wire::BlobStored, ClientError> {
        let file = tokio::fs::File::open(path)
            .await
            .map_err(ClientError::io(format!("cannot open {}", path.display())))?;
        let len = file
            .metadata()
            .await
            .map_err(ClientError::io(format!("cannot stat {}", path.display())))?
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

    /// Whether the pool holds the blob `sha` and lets this caller read it
    /// (`HEAD /v1/blobs/{sha}`): an upload it already has can be skipped.
    pub async fn has_blob(&self, sha: &Sha256Hex) -> Result<bool, ClientError> {
        let rb = self.request(reqwest::Method::HEAD, &format!("/v1/blobs/{sha}"));
        match self.send(&format!("blob {sha}"), rb).await {
            Ok(_) => Ok(true),
            Err(ClientError::Refused { status: 404, .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// The size of the blob `sha` as the pool announces it, before any
    /// download; `None` when it does not say or the caller cannot read it.
    pub async fn blob_size(&self, sha: &Sha256Hex) -> Result<Option<u64>, ClientError> {
        let rb = self.request(reqwest::Method::HEAD, &format!("/v1/blobs/{sha}"));
        match self.send(&format!("blob {sha}"), rb).await {
            Ok(resp) => Ok(resp
                .headers()
                .get(reqwest::header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok()?.parse().ok())),
            Err(ClientError::Refused { status: 404, .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Downloads a blob to `dest`, checking its digest; `dest` is written
    /// only once the whole blob arrived and matched.
    pub async fn get_blob(&self, sha: &Sha256Hex, dest: &Path) -> Result<(), ClientError> {
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
            .map_err(ClientError::io(format!("cannot create {}", tmp.display())))?;
        let mut hasher = Sha256::new();
        let mut body = resp.bytes_stream();
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|e| self.unreachable(e))?;
            hasher.update(&chunk);
            file.write_all(&chunk)
                .await
                .map_err(ClientError::io(format!("cannot write {}", tmp.display())))?;
        }
        file.sync_all()
            .await
            .map_err(ClientError::io(format!("cannot write {}", tmp.display())))?;
        if Sha256Hex::from_digest(hasher.finalize().into()) != *sha {
            let _ = tokio::fs::remove_file(&tmp).await;
            return Err(ClientError::CorruptBlob {
                sha256: sha.to_string(),
            });
        }
        tokio::fs::rename(&tmp, dest)
            .await
            .map_err(ClientError::io(format!("cannot write {}", dest.display())))
    }

    // The provider's calls.

    pub async fn challenge(&self) -> Result<wire::RegistrationChallenge, ClientError> {
        self.post("/v1/providers/challenge", &()).await
    }

    pub async fn register(&self, req: &wire::Register) -> Result<wire::Registered, ClientError> {
        self.post("/v1/providers/register", req).await
    }

    pub async fn heartbeat(
        &self,
        req: &wire::Heartbeat,
    ) -> Result<wire::HeartbeatReply, ClientError> {
        // The pool may hold a long-poll up to `wait_seconds`.
        let rb = self
            .request(reqwest::Method::POST, "/v1/providers/heartbeat")
            .timeout(Duration::from_secs(u64::from(req.wait_seconds) + 20))
            .json(req);
        self.json("heartbeat", rb).await
    }

    pub async fn progress(&self, task: &TaskId, p: &wire::Progress) -> Result<(), ClientError> {
        self.post_unit(&format!("/v1/tasks/{task}/progress"), p)
            .await
    }

    pub async fn commit(
        &self,
        task: &TaskId,
        c: &wire::Commit,
    ) -> Result<wire::CommitReply, ClientError> {
        self.post(&format!("/v1/tasks/{task}/commit"), c).await
    }

    /// Commits a parallel job's outer step (the new global checkpoint
    /// uploaded first).
    pub async fn commit_outer(
        &self,
        task: &TaskId,
        c: &wire::OuterCommit,
    ) -> Result<wire::CommitReply, ClientError> {
        self.post(&format!("/v1/tasks/{task}/outer"), c).await
    }

    /// Reports a replay's result (an audit's evidence).
    pub async fn replay(
        &self,
        task: &TaskId,
        r: &gradpool_core::SignedReplay,
    ) -> Result<(), ClientError> {
        self.post_unit(&format!("/v1/tasks/{task}/replay"), r).await
    }

    /// Hands a leased task back (the provider pauses); not a failure.
    pub async fn release(&self, task: &TaskId, reason: &str) -> Result<(), ClientError> {
        self.post_unit(
            &format!("/v1/tasks/{task}/release"),
            &wire::TaskFailed {
                reason: reason.to_owned(),
            },
        )
        .await
    }

    pub async fn fail(&self, task: &TaskId, reason: &str) -> Result<(), ClientError> {
        self.post_unit(
            &format!("/v1/tasks/{task}/fail"),
            &wire::TaskFailed {
                reason: reason.to_owned(),
            },
        )
        .await
    }
}
