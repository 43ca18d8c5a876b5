//! The blob store: datasets, checkpoints and models, named by the sha256 of
//! their bytes and kept at `blobs/ab/abcd…`, or in S3-compatible object
//! storage under `PREFIX/ab/abcd…` with `blobs/` as the local copies the
//! pool computes with (checkpoints are read memory-mapped).
//!
//! Uploads stream to a temporary file in `blobs/tmp/` while being hashed
//! and counted; only a complete upload whose digest matches its name and
//! that stays within the size limit is fsynced, sent to object storage
//! (when there is one) and renamed into place. Anything else leaves
//! nothing behind, locally or in the bucket. A blob missing locally is
//! fetched from object storage when needed ([`BlobStore::local`]), and
//! kept only if its bytes have its digest.

use crate::auth::Caller;
use crate::config::ObjectStorage;
use crate::error::PoolError;
use crate::Pool;
use bytes::Bytes;
use futures::{Stream, StreamExt};
use gradpool_core::id::random_hex;
use gradpool_core::state::TransferDirection;
use gradpool_core::Sha256Hex;
use object_store::ObjectStore;
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::io::AsyncWriteExt;

/// Content-addressed files under one directory, and in object storage
/// when the pool has one.
#[derive(Debug, Clone)]
pub struct BlobStore {
    dir: PathBuf,
    remote: Option<Remote>,
}

/// A bucket (and a prefix in it) of S3-compatible object storage.
#[derive(Debug, Clone)]
struct Remote {
    store: Arc<dyn ObjectStore>,
    prefix: object_store::path::Path,
}

impl Remote {
    fn open(config: &ObjectStorage) -> Result<Remote, PoolError> {
        let mut builder = object_store::aws::AmazonS3Builder::from_env()
            .with_bucket_name(&config.bucket)
            .with_region(&config.region);
        if let Some(c) = &config.credentials {
            builder = builder
                .with_access_key_id(&c.access_key_id)
                .with_secret_access_key(&c.secret_access_key);
        }
        if let Some(endpoint) = &config.endpoint {
            // `ObjectStorage::parse` allows plain http on loopback only.
            builder = builder
                .with_endpoint(endpoint)
                .with_allow_http(endpoint.starts_with("http://"));
        }
        let store = builder
            .build()
            .map_err(|e| PoolError::BadRequest(format!("object storage: {e}")))?;
        Ok(Remote {
            store: Arc::new(store),
            prefix: object_store::path::Path::from(config.prefix.as_str()),
        })
    }

    fn key(&self, sha: &Sha256Hex) -> object_store::path::Path {
        let s = sha.as_str();
        self.prefix.child(&s[..2]).child(s)
    }

    /// Sends the file at `path` as `sha`'s object (in parts when large).
    /// The object appears only once complete; a failed multipart upload is
    /// aborted (one that fails at its very end leaves parts the bucket's
    /// lifecycle rule for incomplete uploads removes).
    async fn upload(&self, path: &Path, sha: &Sha256Hex) -> Result<(), PoolError> {
        let mut writer = object_store::buffered::BufWriter::new(self.store.clone(), self.key(sha));
        let mut file = tokio::fs::File::open(path).await?;
        if let Err(e) = tokio::io::copy(&mut file, &mut writer).await {
            let _ = writer.abort().await;
            return Err(unavailable(e));
        }
        writer.shutdown().await.map_err(unavailable)
    }
}

fn unavailable(e: impl std::fmt::Display) -> PoolError {
    PoolError::Unavailable(format!("object storage: {e}"))
}

/// Deletes a temporary file unless it was moved into place.
struct TempFile {
    path: PathBuf,
    keep: bool,
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if !self.keep {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

impl BlobStore {
    /// Opens (creating) the store at `dir`, with `object_storage` when
    /// given; clears leftovers of interrupted uploads.
    pub async fn open(
        dir: PathBuf,
        object_storage: Option<&ObjectStorage>,
    ) -> Result<BlobStore, PoolError> {
        let tmp = dir.join("tmp");
        if tokio::fs::try_exists(&tmp).await? {
            tokio::fs::remove_dir_all(&tmp).await?;
        }
        tokio::fs::create_dir_all(&tmp).await?;
        let remote = object_storage.map(Remote::open).transpose()?;
        Ok(BlobStore { dir, remote })
    }

    /// Where the local copy of the blob with this digest lives.
    fn path_of(&self, sha: &Sha256Hex) -> PathBuf {
        let s = sha.as_str();
        self.dir.join(&s[..2]).join(s)
    }

    /// The local copy of a blob, fetched from object storage first if it
    /// is only there. The path of a blob stored nowhere is returned as it
    /// is (opening it fails as a missing file does).
    pub async fn local(&self, sha: &Sha256Hex) -> Result<PathBuf, PoolError> {
        let path = self.path_of(sha);
        let Some(remote) = &self.remote else {
            return Ok(path);
        };
        if tokio::fs::try_exists(&path).await? {
            return Ok(path);
        }
        let got = match remote.store.get(&remote.key(sha)).await {
            Ok(got) => got,
            Err(object_store::Error::NotFound { .. }) => return Ok(path),
            Err(e) => return Err(unavailable(e)),
        };
        let stream = got.into_stream();
        // What the bucket holds is checked as an upload is: a wrong or
        // cut object is never taken for the blob.
        self.keep(sha, stream, u64::MAX, None)
            .await
            .map_err(|e| match e {
                PoolError::DigestMismatch(m) | PoolError::BadRequest(m) => {
                    PoolError::Internal(format!("object storage holds a bad copy of {sha}: {m}"))
                }
                e => e,
            })?;
        Ok(path)
    }

    /// Removes a blob nothing refers to any more: its local copy and its
    /// object.
    pub async fn remove(&self, sha: &Sha256Hex) -> Result<(), PoolError> {
        match tokio::fs::remove_file(self.path_of(sha)).await {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e.into()),
        }
        if let Some(r) = &self.remote {
            match r.store.delete(&r.key(sha)).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(unavailable(e)),
            }
        }
        Ok(())
    }

    /// Whether the blob is stored (locally or in object storage).
    pub async fn exists(&self, sha: &Sha256Hex) -> Result<bool, PoolError> {
        if tokio::fs::try_exists(self.path_of(sha)).await? {
            return Ok(true);
        }
        match &self.remote {
            None => Ok(false),
            Some(r) => match r.store.head(&r.key(sha)).await {
                Ok(_) => Ok(true),
                Err(object_store::Error::NotFound { .. }) => Ok(false),
                Err(e) => Err(unavailable(e)),
            },
        }
    }

    /// Streams `body` into the store under `expected`, refusing more than
    /// `max_bytes` ([`PoolError::TooLarge`]) or bytes with another digest
    /// ([`PoolError::DigestMismatch`]). Returns the size.
    pub async fn put<S, E>(
        &self,
        expected: &Sha256Hex,
        body: S,
        max_bytes: u64,
    ) -> Result<u64, PoolError>
    where
        S: Stream<Item = Result<Bytes, E>> + Unpin,
        E: std::fmt::Display,
    {
        self.keep(expected, body, max_bytes, self.remote.as_ref())
            .await
    }

    /// Streams `body` to a temporary file, checks it, sends it to `remote`
    /// if given, and moves it into place.
    async fn keep<S, E>(
        &self,
        expected: &Sha256Hex,
        body: S,
        max_bytes: u64,
        remote: Option<&Remote>,
    ) -> Result<u64, PoolError>
    where
        S: Stream<Item = Result<Bytes, E>> + Unpin,
        E: std::fmt::Display,
    {
        let mut body = body;
        let mut temp = TempFile {
            path: self.dir.join("tmp").join(random_hex(12)),
            keep: false,
        };
        let mut file = tokio::fs::File::create(&temp.path).await?;
        let mut hasher = Sha256::new();
        let mut size: u64 = 0;
        while let Some(chunk) = body.next().await {
            let chunk = chunk
                .map_err(|e| PoolError::BadRequest(format!("reading the upload failed: {e}")))?;
            size += chunk.len() as u64;
            if size > max_bytes {
                return Err(too_large(max_bytes));
            }
            hasher.update(&chunk);
            file.write_all(&chunk).await?;
        }
        let actual = Sha256Hex::from_digest(hasher.finalize().into());
        if &actual != expected {
            return Err(PoolError::DigestMismatch(format!(
                "the uploaded bytes have sha256 {actual}, not {expected}"
            )));
        }
        file.flush().await?;
        file.sync_all().await?;
        drop(file);
        if let Some(remote) = remote {
            remote.upload(&temp.path, expected).await?;
        }
        let dest = self.path_of(expected);
        if let Some(parent) = dest.parent() {
            tokio::fs::create_dir_all(parent).await?;
        }
        // Same content, same name: replacing an existing copy is harmless.
        tokio::fs::rename(&temp.path, &dest).await?;
        temp.keep = true;
        if let Some(parent) = dest.parent() {
            sync_dir(parent).await;
        }
        Ok(size)
    }
}

async fn sync_dir(dir: &Path) {
    if let Ok(d) = tokio::fs::File::open(dir).await {
        let _ = d.sync_all().await;
    }
}

pub(crate) fn too_large(max_bytes: u64) -> PoolError {
    PoolError::TooLarge(format!("blobs are limited to {max_bytes} bytes"))
}

impl Pool {
    /// Records a stored blob and who uploaded it (in `ms` milliseconds).
    pub(crate) async fn record_blob(
        &self,
        sha: &Sha256Hex,
        size: u64,
        caller: &Caller,
        ms: u64,
    ) -> Result<(), PoolError> {
        let now = self.now();
        let size = i64::try_from(size).map_err(|_| too_large(self.inner.config.max_blob_bytes))?;
        let mut w = self.write().await?;
        sqlx::query("INSERT INTO blobs (sha256, size, created_at) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING")
            .bind(sha.as_str())
            .bind(size)
            .bind(now)
            .execute(w.conn())
            .await?;
        sqlx::query(
            "INSERT INTO blob_uploads (sha256, principal, uploaded_at) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
        )
        .bind(sha.as_str())
        .bind(caller.principal())
        .bind(now)
        .execute(w.conn())
        .await?;
        transfer(
            &mut w,
            sha,
            caller,
            TransferDirection::Upload,
            size,
            Some(ms),
        )
        .await?;
        w.commit().await
    }

    /// Records a blob served to `caller`; its time is recorded as the
    /// body's last chunk goes ([`Pool::record_download_time`]). Returns the
    /// transfer's id.
    pub(crate) async fn record_download(
        &self,
        sha: &Sha256Hex,
        size: u64,
        caller: &Caller,
    ) -> Result<i64, PoolError> {
        let size = i64::try_from(size).unwrap_or(i64::MAX);
        let mut w = self.write().await?;
        let id = transfer(&mut w, sha, caller, TransferDirection::Download, size, None).await?;
        w.commit().await?;
        Ok(id)
    }

    /// Records how long a download took to send, in milliseconds: the
    /// pool's view of the caller's transfer rate
    /// ([`crate::placement::Pace`]).
    pub(crate) async fn record_download_time(
        &self,
        transfer: i64,
        ms: u64,
    ) -> Result<(), PoolError> {
        let mut w = self.write().await?;
        sqlx::query("UPDATE blob_transfers SET ms = $1 WHERE id = $2 AND ms IS NULL")
            .bind(i64::try_from(ms).unwrap_or(i64::MAX))
            .bind(transfer)
            .execute(w.conn())
            .await?;
        w.commit().await
    }

    /// Whether `caller` may read the blob. A customer reads what it uploaded
    /// and what its jobs reference (data, a container job's image and
    /// files, checkpoints); a provider reads what
    /// it uploaded and what the jobs it holds or held a task of reference.
    pub(crate) async fn can_read_blob(
        &self,
        caller: &Caller,
        sha: &Sha256Hex,
    ) -> Result<bool, PoolError> {
        let sql = match caller {
            Caller::Customer(_) => {
                "SELECT EXISTS (SELECT 1 FROM blob_uploads WHERE sha256 = $1 AND principal = $2) \
                 OR EXISTS (SELECT 1 FROM jobs WHERE account_id = $2 AND data_sha256 = $1) \
                 OR EXISTS (SELECT 1 FROM job_blobs b JOIN jobs j ON j.id = b.job_id \
                            WHERE j.account_id = $2 AND b.sha256 = $1) \
                 OR EXISTS (SELECT 1 FROM commitments c JOIN jobs j ON j.id = c.job_id \
                            WHERE j.account_id = $2 AND (c.checkpoint_sha256 = $1 OR c.pseudo_gradient_sha256 = $1)) \
                 OR EXISTS (SELECT 1 FROM outer_steps o JOIN jobs j ON j.id = o.job_id \
                            WHERE j.account_id = $2 \
                              AND (o.global_sha256 = $1 OR o.update_sha256 = $1 OR o.from_global_sha256 = $1))"
            }
            Caller::Provider(_) => {
                "SELECT EXISTS (SELECT 1 FROM blob_uploads WHERE sha256 = $1 AND principal = $2) \
                 OR EXISTS (SELECT 1 FROM tasks t JOIN jobs j ON j.id = t.job_id \
                            WHERE t.provider_id = $2 AND j.data_sha256 = $1) \
                 OR EXISTS (SELECT 1 FROM tasks t JOIN job_blobs b ON b.job_id = t.job_id \
                            WHERE t.provider_id = $2 AND b.sha256 = $1) \
                 OR EXISTS (SELECT 1 FROM tasks t JOIN commitments c ON c.job_id = t.job_id \
                            WHERE t.provider_id = $2 AND (c.checkpoint_sha256 = $1 OR c.pseudo_gradient_sha256 = $1)) \
                 OR EXISTS (SELECT 1 FROM tasks t JOIN outer_steps o ON o.job_id = t.job_id \
                            WHERE t.provider_id = $2 \
                              AND (o.global_sha256 = $1 OR o.update_sha256 = $1 OR o.from_global_sha256 = $1))"
            }
        };
        let ok: bool = sqlx::query_scalar::<_, crate::db::Flag>(sql)
            .bind(sha.as_str())
            .bind(caller.principal())
            .fetch_one(&self.inner.db)
            .await?
            .0;
        Ok(ok)
    }
}

/// One blob transfer, in the caller's transaction; returns its id.
async fn transfer(
    w: &mut crate::tx::Write<'_>,
    sha: &Sha256Hex,
    caller: &Caller,
    direction: TransferDirection,
    bytes: i64,
    ms: Option<u64>,
) -> Result<i64, PoolError> {
    let now = w.now;
    let id: i64 = sqlx::query_scalar(
        "INSERT INTO blob_transfers (sha256, principal, direction, bytes, ms, at) VALUES ($1, $2, $3, $4, $5, $6) \
         RETURNING id",
    )
    .bind(sha.as_str())
    .bind(caller.principal())
    .bind(direction.as_str())
    .bind(bytes)
    .bind(ms.map(|m| i64::try_from(m).unwrap_or(i64::MAX)))
    .bind(now)
    .fetch_one(w.conn())
    .await?;
    Ok(id)
}
