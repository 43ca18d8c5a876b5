//! Confidential jobs at the pool: what it takes of them at submit (a
//! sealed dataset, the data key sealed to providers the spec allows, the
//! data's shape from the customer, since the pool cannot read it), and
//! the sealed keys it relays, each to its provider alone, with a lease
//! (see `lease::assignment`; the claim leases a confidential job's tasks
//! only to key holders).
//!
//! A confidential container job brings its image and job files sealed
//! too; the pool checks that each is a sealed file, nothing more.
//!
//! What the pool sees of a confidential job, and says so in the README:
//! sizes, timings, losses, and which providers worked on it.

use crate::error::PoolError;
use crate::Pool;
use gradpool_core::model::DataShape;
use gradpool_core::privacy::{looks_sealed, AnnouncedKey, HEADER};
use gradpool_core::spec::{KeyHolder, KeyHolders, MAX_KEY_HOLDERS};
use gradpool_core::state::ProviderTier;
use gradpool_core::wire::{JobKey, SubmitJob};
use gradpool_core::JobSpec;
use sqlx::AnyConnection;

impl Pool {
    /// The sealed keys a submitted job brings, checked against its spec:
    /// none for a job that is not confidential; for a confidential one,
    /// one per provider, each allowed by `privacy.providers` and holding
    /// an announced encryption key, with a sealed dataset and its shape.
    pub(crate) async fn check_confidential(
        &self,
        spec: &JobSpec,
        req: &SubmitJob,
    ) -> Result<Vec<JobKey>, PoolError> {
        let Some(privacy) = &spec.privacy else {
            if !req.sealed_keys.is_empty() || req.data_shape.is_some() {
                return Err(PoolError::BadRequest(
                    "sealed_keys, data_shape: only for a confidential job ([privacy] confidential = true)"
                        .into(),
                ));
            }
            return Ok(Vec::new());
        };
        refuse_unsealable(spec)?;
        if req.sealed_keys.is_empty() || req.sealed_keys.len() > MAX_KEY_HOLDERS {
            return Err(PoolError::BadRequest(format!(
                "sealed_keys: a confidential job's data key sealed to 1 to {MAX_KEY_HOLDERS} providers"
            )));
        }
        check_shape(spec, req.data_shape)?;
        let mut conn = self.inner.db.acquire().await?;
        for (i, k) in req.sealed_keys.iter().enumerate() {
            let field = format!("sealed_keys[{i}]");
            if req.sealed_keys[..i]
                .iter()
                .any(|o| o.provider == k.provider)
            {
                return Err(PoolError::BadRequest(format!(
                    "{field}: provider {} twice",
                    k.provider
                )));
            }
            let announced = announced_key(&mut conn, k.provider.as_str())
                .await?
                .ok_or_else(|| {
                    PoolError::BadRequest(format!(
                        "{field}: provider {} announced no encryption key",
                        k.provider
                    ))
                })?;
            if privacy.providers == KeyHolders::Isolated
                && crate::certification::current(&mut conn, k.provider.as_str(), self.now())
                    .await?
                    .is_none_or(|(tier, _)| tier != ProviderTier::Isolated)
            {
                return Err(PoolError::BadRequest(format!(
                    "{field}: provider {} is not certified into the isolated tier",
                    k.provider
                )));
            }
            if let KeyHolders::Listed(list) = &privacy.providers {
                let allowed = list.iter().any(|h| match h {
                    KeyHolder::Id(id) => *id == k.provider,
                    KeyHolder::Key(key) => *key == announced.key,
                });
                if !allowed {
                    return Err(PoolError::BadRequest(format!(
                        "{field}: provider {} is not among privacy.providers",
                        k.provider
                    )));
                }
            }
        }
        self.check_sealed_blob(&req.data_sha256, "data", "dataset")
            .await?;
        if let Some(c) = spec.container() {
            if let Some(image) = &c.image_sha256 {
                self.check_sealed_blob(image, "container.image_sha256", "image")
                    .await?;
            }
            for f in &c.files {
                if let Some(sha) = &f.sha256 {
                    let field = format!("container.file_sha256.{}", f.name);
                    self.check_sealed_blob(sha, &field, "job file").await?;
                }
            }
        }
        Ok(req.sealed_keys.clone())
    }

    /// Refuses the blob `sha` of a confidential job unless it is a sealed
    /// file: `field` names it in the refusal.
    async fn check_sealed_blob(
        &self,
        sha: &gradpool_core::Sha256Hex,
        field: &str,
        what: &str,
    ) -> Result<(), PoolError> {
        if looks_sealed(&self.blob_head(sha).await?) {
            return Ok(());
        }
        Err(PoolError::InvalidSpec(format!(
            "{field}: a confidential job's {what} must be sealed under its data key \
             (`gradpool job submit` seals it)"
        )))
    }

    /// The first bytes of a blob, as many as a sealed file's header.
    async fn blob_head(&self, sha: &gradpool_core::Sha256Hex) -> Result<Vec<u8>, PoolError> {
        use tokio::io::AsyncReadExt;
        let file = tokio::fs::File::open(self.inner.blobs.local(sha).await?).await?;
        let mut head = Vec::with_capacity(HEADER);
        file.take(HEADER as u64).read_to_end(&mut head).await?;
        Ok(head)
    }
}

/// What a confidential job may not be yet: a parallel one (the pool
/// takes the outer steps over its workers' pseudo-gradients, which it
/// would have to read).
fn refuse_unsealable(spec: &JobSpec) -> Result<(), PoolError> {
    if spec.parallel.is_some() {
        return Err(PoolError::InvalidSpec(
            "privacy.confidential: a parallel job cannot be confidential yet (the pool would \
             read its pseudo-gradients to take the outer steps)"
                .into(),
        ));
    }
    Ok(())
}

/// The data's shape a confidential native job declares (the pool cannot
/// read its sealed dataset to size the model); a container job's model is
/// its script's, sized by `container.memory_gib`, and declares none.
fn check_shape(spec: &JobSpec, shape: Option<DataShape>) -> Result<(), PoolError> {
    let bad = |why: &str| Err(PoolError::BadRequest(why.into()));
    match (spec.container().is_some(), shape) {
        (true, Some(_)) => {
            bad("data_shape: only for a native job: a container job's model is its script's")
        }
        (true, None) => Ok(()),
        (false, None) => bad(
            "data_shape: required for a confidential job: the pool cannot read its sealed dataset",
        ),
        (false, Some(DataShape::Text { vocab_size: 0 })) => {
            bad("data_shape.vocab_size: at least 1")
        }
        (false, Some(DataShape::Csv { inputs, classes })) if inputs == 0 || classes < 2 => {
            bad("data_shape: at least 1 input column and 2 classes")
        }
        (false, Some(_)) => Ok(()),
    }
}

/// The encryption key `provider` announced, if any.
async fn announced_key(
    conn: &mut AnyConnection,
    provider: &str,
) -> Result<Option<AnnouncedKey>, PoolError> {
    let stored: Option<Option<String>> =
        sqlx::query_scalar("SELECT encryption_key FROM providers WHERE id = $1")
            .bind(provider)
            .fetch_optional(conn)
            .await?;
    Ok(stored
        .flatten()
        .and_then(|k| serde_json::from_str::<AnnouncedKey>(&k).ok()))
}

/// Records a confidential job's sealed keys.
pub(crate) async fn store_keys(
    conn: &mut AnyConnection,
    job: &str,
    keys: &[JobKey],
) -> Result<(), PoolError> {
    for k in keys {
        sqlx::query("INSERT INTO job_keys (job_id, provider_id, sealed_key) VALUES ($1, $2, $3)")
            .bind(job)
            .bind(k.provider.as_str())
            .bind(String::from(k.sealed_key.clone()))
            .execute(&mut *conn)
            .await?;
    }
    Ok(())
}

/// The tier a job's providers must hold: its `resources.tier`, or the
/// isolated tier for a confidential job whose key holders are
/// `"isolated"`.
pub(crate) fn tier_of(spec: &JobSpec) -> Option<ProviderTier> {
    let isolated = spec
        .privacy
        .as_ref()
        .is_some_and(|p| p.providers == KeyHolders::Isolated);
    spec.resources
        .tier
        .or(isolated.then_some(ProviderTier::Isolated))
}
