//! The model a job trains, as the pool knows it without training: learnt
//! from the job's data at submit, sized against the pool's devices, and
//! held up against every checkpoint a provider commits.
//!
//! - At submit the pool reads the data blob as far as its shape (the
//!   vocabulary of a text, the features and labels of a CSV), which with
//!   the spec fixes every parameter ([`ModelMeta`]). It estimates the
//!   memory a training step takes and refuses a job larger than the
//!   largest device any of its providers has, or than
//!   [`PoolConfig::max_job_memory_bytes`](crate::PoolConfig::max_job_memory_bytes).
//!   The estimate is also the least memory a provider needs to get the job.
//! - A customer downloads the model a job trained ([`Pool::model_file`]):
//!   its last accepted checkpoint's weights, without the optimizer's state.
//! - At commit the checkpoint is read once, memory-mapped: its header,
//!   every tensor's name, dtype and shape, and every value
//!   ([`gradpool_core::checkpoint::inspect`]), and its chain hash.

use crate::error::PoolError;
use crate::Pool;
use gradpool_core::commitment::ChainHash;
use gradpool_core::model::{human_bytes, MemoryEstimate, ModelMeta};
use gradpool_core::state::{JobBlobRole, Runtime};
use gradpool_core::{JobSpec, Sha256Hex};
use std::path::PathBuf;

impl Pool {
    /// The model `spec` trains on the uploaded data `data`, and the memory
    /// it takes; refused (naming its size) when no device of this pool
    /// could hold it.
    pub(crate) async fn size_job(
        &self,
        spec: &JobSpec,
        data: &Sha256Hex,
        declared: Option<gradpool_core::model::DataShape>,
    ) -> Result<(ModelMeta, MemoryEstimate), PoolError> {
        if let Some(c) = spec.container() {
            // The script's model: its memory is what the spec gives it.
            let model = ModelMeta::Container {
                memory_gib: c.memory_gib,
            };
            let memory = model.memory(spec.train.batch_size);
            let needs = format!("container.memory_gib: {} GiB", c.memory_gib);
            self.check_memory(&needs, "container.memory_gib", memory.total_bytes, true)
                .await?;
            return Ok((model, memory));
        }
        let shape = match declared {
            // A confidential job's sealed data: its customer says.
            Some(shape) => shape,
            None => {
                let path = self.inner.blobs.local(data).await?;
                let spec_copy = spec.clone();
                tokio::task::spawn_blocking(move || {
                    let file = std::fs::File::open(&path)?;
                    Ok::<_, PoolError>(gradpool_core::data::data_shape(
                        &spec_copy,
                        std::io::BufReader::new(file),
                    ))
                })
                .await??
                .map_err(|e| PoolError::InvalidSpec(format!("data: {e}")))?
            }
        };
        let model =
            ModelMeta::of(spec, shape).map_err(|e| PoolError::InvalidSpec(format!("data: {e}")))?;
        let memory = model.memory(spec.train.batch_size);
        let needs = format!(
            "the job needs about {} to train ({} parameters: {} of weights, {} of gradients and \
             optimizer state, {} of activations for a batch of {})",
            human_bytes(memory.total_bytes),
            memory.parameters,
            human_bytes(memory.weights_bytes),
            human_bytes(memory.optimizer_bytes),
            human_bytes(memory.activations_bytes),
            spec.train.batch_size,
        );
        self.check_memory(
            &format!("model: {needs}"),
            "the model or train.batch_size",
            memory.total_bytes,
            false,
        )
        .await?;
        Ok((model, memory))
    }

    /// Refuses a job that needs more memory (`bytes`, described by
    /// `needs`) than this pool allows or than its largest device has (for
    /// a `container` job: the most RAM of a provider that runs
    /// containers); `smaller` names what to make smaller.
    async fn check_memory(
        &self,
        needs: &str,
        smaller: &str,
        bytes: u64,
        container: bool,
    ) -> Result<(), PoolError> {
        let cap = self.inner.config.max_job_memory_bytes;
        if bytes > cap {
            return Err(PoolError::InvalidSpec(format!(
                "{needs}, more than this pool's limit of {}; make {smaller} smaller",
                human_bytes(cap)
            )));
        }
        let sql = if container {
            "SELECT MAX(host_memory_bytes) FROM providers WHERE containers = 1"
        } else {
            "SELECT MAX(memory_bytes) FROM providers"
        };
        let largest: Option<i64> = sqlx::query_scalar(sql).fetch_one(&self.inner.db).await?;
        if let Some(largest) = largest.and_then(|m| u64::try_from(m).ok()) {
            if bytes > largest {
                let what = if container {
                    "the most RAM of this pool's providers that run containers"
                } else {
                    "the largest device of this pool's providers"
                };
                return Err(PoolError::InvalidSpec(format!(
                    "{needs}, more than {what} ({}); make {smaller} smaller",
                    human_bytes(largest)
                )));
            }
        }
        Ok(())
    }

    /// Fills in the model of jobs submitted before the pool recorded it
    /// (those still running need it for their next commit).
    pub(crate) async fn learn_missing_models(&self) -> Result<(), PoolError> {
        let jobs: Vec<(String, String, String)> = sqlx::query_as(
            "SELECT id, spec_toml, data_sha256 FROM jobs WHERE model IS NULL \
             AND status IN ('queued', 'running')",
        )
        .fetch_all(&self.inner.db)
        .await?;
        for (id, spec_toml, data) in jobs {
            let learnt = match (
                JobSpec::from_toml_str(&spec_toml),
                data.parse::<Sha256Hex>(),
            ) {
                (Ok(spec), Ok(data)) => self.size_job(&spec, &data, None).await,
                _ => Err(PoolError::InvalidSpec("stored spec or data digest".into())),
            };
            match learnt {
                Ok((model, memory)) => {
                    sqlx::query("UPDATE jobs SET model = $1, memory_bytes = $2 WHERE id = $3")
                        .bind(serde_json::to_string(&model)?)
                        .bind(i64::try_from(memory.total_bytes).unwrap_or(i64::MAX))
                        .bind(&id)
                        .execute(&self.inner.db)
                        .await?;
                }
                Err(e) => tracing::warn!(job = %id, error = %e, "cannot learn the job's model"),
            }
        }
        Ok(())
    }
}

/// The model stored for a job.
pub(crate) fn stored_model(job_id: &str, model: Option<&str>) -> Result<ModelMeta, PoolError> {
    let text =
        model.ok_or_else(|| PoolError::Internal(format!("job {job_id} has no recorded model")))?;
    serde_json::from_str(text).map_err(PoolError::from)
}

/// Reads a committed checkpoint once: checks it against the job's model and
/// the segment's end step, and returns its chain hash `BLAKE3(file ‖ prev)`.
pub(crate) async fn inspect_checkpoint(
    path: PathBuf,
    model: ModelMeta,
    step: u64,
    prev: ChainHash,
) -> Result<ChainHash, PoolError> {
    tokio::task::spawn_blocking(move || {
        let file = std::fs::File::open(&path)?;
        // SAFETY: a blob is written to a temporary file and renamed into
        // place once complete; the pool never writes to or truncates it
        // after (a removal unlinks it, which leaves the mapping intact).
        let bytes = unsafe { memmap2::Mmap::map(&file)? };
        gradpool_core::checkpoint::inspect(&bytes, &model, step)
            .map_err(|e| PoolError::BadRequest(e.to_string()))?;
        Ok(gradpool_core::commitment::chain(&bytes, &prev))
    })
    .await?
}

/// The reproducibility class `provider` must sign for a segment of `job`:
/// the one it registered for a native job; for a container job the
/// image's digest, its device class and thread count
/// ([`gradpool_core::container::class`]).
pub(crate) async fn class_for(
    conn: &mut sqlx::AnyConnection,
    provider: &str,
    job: &crate::store::JobRow,
) -> Result<String, PoolError> {
    let (class, hardware): (String, String) =
        sqlx::query_as("SELECT class, hardware FROM providers WHERE id = $1")
            .bind(provider)
            .fetch_one(&mut *conn)
            .await?;
    if job.runtime == Runtime::Native {
        return Ok(class);
    }
    let image: String =
        sqlx::query_scalar("SELECT sha256 FROM job_blobs WHERE job_id = $1 AND role = $2")
            .bind(&job.id)
            .bind(JobBlobRole::Image.as_str())
            .fetch_optional(&mut *conn)
            .await?
            .ok_or_else(|| PoolError::Internal(format!("container job {} has no image", job.id)))?;
    let image: Sha256Hex = image
        .parse()
        .map_err(|e| PoolError::Internal(format!("job {}: stored image digest: {e}", job.id)))?;
    let hardware: gradpool_core::hardware::Hardware = serde_json::from_str(&hardware)?;
    // As the agent decides: the GPU when the job asks for CUDA and the
    // rig has it, else the CPU.
    let on_gpu = job.device == gradpool_core::spec::DeviceRequest::Cuda.as_str()
        && hardware.device == gradpool_core::hardware::DeviceKind::Cuda;
    Ok(gradpool_core::container::class(&image, &hardware, on_gpu))
}

/// Reads a container segment's committed checkpoint once: it must be
/// what [`gradpool_core::container::canonical`] makes of itself at the
/// segment's end step, with the layout of the checkpoint it started from
/// (`start`, none for the first segment); returns its chain hash.
pub(crate) async fn inspect_container_checkpoint(
    path: PathBuf,
    start: Option<PathBuf>,
    step: u64,
    prev: ChainHash,
) -> Result<ChainHash, PoolError> {
    tokio::task::spawn_blocking(move || {
        let layout = match start {
            Some(start) => {
                let bytes = std::fs::read(&start)?;
                Some(
                    gradpool_core::container::Layout::of(&bytes)
                        .map_err(|e| PoolError::Internal(format!("the start checkpoint: {e}")))?,
                )
            }
            None => None,
        };
        let file = std::fs::File::open(&path)?;
        // SAFETY: as in `inspect_checkpoint`, a blob is never written after
        // it is renamed into place.
        let bytes = unsafe { memmap2::Mmap::map(&file)? };
        let (canonical, _) = gradpool_core::container::canonical(&bytes, step, layout.as_ref())
            .map_err(|e| PoolError::BadRequest(e.to_string()))?;
        if canonical[..] != bytes[..] {
            return Err(PoolError::BadRequest(
                "checkpoint: not in the canonical encoding of a container checkpoint \
                 (gradpool_core::container::canonical)"
                    .into(),
            ));
        }
        Ok(gradpool_core::commitment::chain(&bytes, &prev))
    })
    .await?
}

/// Checks a parallel container job's initial checkpoint at `path` (at most
/// `cap` bytes): a checkpoint at step 0 in its canonical encoding, with F32
/// weights for the outer step to average.
pub(crate) async fn check_initial(path: PathBuf, cap: u64) -> Result<(), PoolError> {
    let invalid = |reason: String| PoolError::InvalidSpec(format!("container.initial: {reason}"));
    tokio::task::spawn_blocking(move || {
        let size = std::fs::metadata(&path)?.len();
        if size > cap {
            return Err(invalid(format!(
                "{}, more than the job's memory (container.memory_gib) holds",
                human_bytes(size)
            )));
        }
        let bytes = std::fs::read(&path)?;
        let (canonical, _) = gradpool_core::container::canonical(&bytes, 0, None)
            .map_err(|e| invalid(e.to_string()))?;
        if canonical != bytes {
            return Err(invalid(
                "not in the canonical encoding of a container checkpoint \
                 (`gradpool job submit` writes it so)"
                    .into(),
            ));
        }
        gradpool_core::container::parallel_weights(&bytes).map_err(|e| invalid(e.to_string()))?;
        Ok(())
    })
    .await?
}

impl Pool {
    /// Where a parallel container job's initial checkpoint lies, if the
    /// job has one.
    pub(crate) async fn initial_of(&self, job: &str) -> Result<Option<PathBuf>, PoolError> {
        let sha: Option<String> =
            sqlx::query_scalar("SELECT sha256 FROM job_blobs WHERE job_id = $1 AND role = $2")
                .bind(job)
                .bind(JobBlobRole::Initial.as_str())
                .fetch_optional(&self.inner.db)
                .await?;
        let Some(sha) = sha else {
            return Ok(None);
        };
        let sha = sha
            .parse::<Sha256Hex>()
            .map_err(|e| PoolError::Internal(format!("job {job}: stored initial digest: {e}")))?;
        Ok(Some(self.inner.blobs.local(&sha).await?))
    }

    /// The weights a parallel job's pseudo-gradients carry, by name and
    /// shape: the model's parameters, or a container job's initial
    /// checkpoint's F32 weights.
    pub(crate) async fn parallel_shapes(
        &self,
        job: &str,
        model: &ModelMeta,
    ) -> Result<Vec<(String, Vec<usize>)>, PoolError> {
        if !matches!(model, ModelMeta::Container { .. }) {
            return Ok(model
                .params()
                .into_iter()
                .map(|p| (p.name, p.shape))
                .collect());
        }
        let path = self
            .initial_of(job)
            .await?
            .ok_or_else(|| PoolError::Internal(format!("job {job}: no initial checkpoint")))?;
        tokio::task::spawn_blocking(move || {
            let file = std::fs::File::open(&path)?;
            // SAFETY: as in `inspect_checkpoint`, a blob is never written
            // after it is renamed into place. Only the header is read.
            let bytes = unsafe { memmap2::Mmap::map(&file)? };
            let layout = gradpool_core::container::Layout::of(&bytes)
                .map_err(|e| PoolError::Internal(format!("the initial checkpoint: {e}")))?;
            // Checked at submit: its float model.* tensors are all F32.
            Ok(layout
                .0
                .into_iter()
                .filter(|(_, dtype, _)| *dtype == "F32")
                .filter_map(|(name, _, shape)| {
                    Some((name.strip_prefix("model.")?.to_owned(), shape))
                })
                .collect())
        })
        .await?
    }
}

impl Pool {
    /// The model file of `account`'s job `job_id`, from its last accepted
    /// checkpoint: a built-in model's as `gradpool job fetch` writes it
    /// ([`gradpool_core::checkpoint::model_file`]), a container job's
    /// weights under its script's names. A confidential job's checkpoint is
    /// sealed: only the customer's key opens it, so the pool refuses.
    pub async fn model_file(
        &self,
        account: &gradpool_core::AccountId,
        job_id: &str,
    ) -> Result<Vec<u8>, PoolError> {
        let job = {
            let mut conn = self.inner.db.acquire().await?;
            crate::store::owned_job(&mut conn, account.as_str(), job_id).await?
        };
        let Some(sha) = job.checkpoint_sha256.as_deref() else {
            return Err(PoolError::Conflict(format!(
                "job {job_id} has no accepted checkpoint yet"
            )));
        };
        let spec = JobSpec::from_toml_str(&job.spec_toml)
            .map_err(|e| PoolError::Internal(format!("job {job_id}'s spec: {e}")))?;
        if spec.privacy.is_some() {
            return Err(PoolError::Conflict(format!(
                "job {job_id} is confidential: its checkpoint is sealed to your key; \
                 fetch it with `gradpool job fetch`, which opens it"
            )));
        }
        let sha: Sha256Hex = sha
            .parse()
            .map_err(|e| PoolError::Internal(format!("checkpoint digest: {e}")))?;
        let bytes = tokio::fs::read(self.inner.blobs.local(&sha).await?).await?;
        let invalid = |e: &dyn std::fmt::Display| {
            PoolError::Internal(format!("checkpoint {sha} of job {job_id}: {e}"))
        };
        match (spec.container(), spec.parallel.is_some()) {
            (Some(_), true) => gradpool_core::outer::Global::from_bytes(&bytes)
                .map(|g| gradpool_core::container::global_model(&g))
                .map_err(|e| invalid(&e)),
            (Some(_), false) => {
                gradpool_core::container::model_weights(&bytes).map_err(|e| invalid(&e))
            }
            (None, _) => gradpool_core::checkpoint::model_file(&bytes).map_err(|e| invalid(&e)),
        }
    }
}
