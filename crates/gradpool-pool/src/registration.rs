//! Registration: a provider proves it holds its node key over a
//! single-use nonce and gets a session token; the tasks it was resuming are
//! sorted into kept and dropped.

use crate::auth::{new_session_token, secret_hash};
use crate::error::PoolError;
use crate::lease::assignment;
use crate::queue::job_of;
use crate::store::{self};
use crate::Pool;
use gradpool_core::commitment::registration_message;
use gradpool_core::state::ProviderChange;
use gradpool_core::wire::{Register, Registered};
use gradpool_core::ProviderId;

impl Pool {
    /// Registers (or re-registers) a provider that proved it holds its node
    /// key; issues a new session token and sorts the tasks it was resuming.
    pub async fn register_provider(&self, req: Register) -> Result<Registered, PoolError> {
        let now_s = self.now() / 1000;
        if !crate::challenge::within_skew(req.time, now_s) {
            return Err(PoolError::Unauthorized(format!(
                "registration time {} is more than {} s from the pool's clock ({now_s})",
                req.time,
                crate::challenge::REGISTRATION_SKEW_SECONDS
            )));
        }
        req.public_key
            .verifying_key()
            .map_err(|e| PoolError::BadRequest(format!("public_key: {e}")))?;
        let message = registration_message(&req.public_key, req.time, &req.nonce);
        if !req.public_key.verifies(&message, &req.signature) {
            return Err(PoolError::Unauthorized(
                "registration signature does not verify".into(),
            ));
        }
        gradpool_core::wire::check_task_count("resuming", req.resuming.len())
            .map_err(PoolError::BadRequest)?;
        // Only after the signature: a forged request must not burn a nonce.
        self.inner.challenges.take(&req.nonce, self.now()).await?;
        let name = req.name.trim();
        if name.is_empty() || name.len() > 128 {
            return Err(PoolError::BadRequest(
                "name: a non-empty provider name of at most 128 characters".into(),
            ));
        }
        crate::money::check_payout(self, &req.payout)?;
        if let Some(problem) = req
            .region
            .as_deref()
            .and_then(gradpool_core::spec::region_problem)
        {
            return Err(PoolError::BadRequest(format!("region: {problem}")));
        }
        let price = i64::try_from(req.price_per_hour.0)
            .map_err(|_| PoolError::BadRequest("price_per_hour: too large".into()))?;
        let gflops = req
            .benchmark_gflops
            .filter(|g| g.is_finite() && *g > 0.0 && *g < 1e9);
        let provider = ProviderId::from_public_key(&req.public_key.0);
        if req
            .encryption_key
            .as_ref()
            .is_some_and(|k| !k.is_from(&provider))
        {
            return Err(PoolError::BadRequest(
                "encryption_key: not signed by this provider's node key".into(),
            ));
        }
        let encryption_key = req
            .encryption_key
            .as_ref()
            .map(serde_json::to_string)
            .transpose()?;
        if let Some(c) = &req.compliance {
            c.report.check().map_err(PoolError::BadRequest)?;
            if !c.is_signed_by(&req.public_key) {
                return Err(PoolError::BadRequest(
                    "compliance: not signed by this provider's node key".into(),
                ));
            }
        }
        let compliance = req
            .compliance
            .as_ref()
            .map(serde_json::to_string)
            .transpose()?;
        let token = new_session_token();
        let hardware = serde_json::to_string(&req.hardware)?;
        let memory = i64::try_from(req.hardware.memory_bytes).unwrap_or(i64::MAX);
        let lease_seconds = self.inner.config.lease_seconds;
        let mut w = self.write_unless_behind().await?;
        let now = w.now;
        sqlx::query(
            "INSERT INTO providers (id, public_key, name, hardware, device, memory_bytes, class, token_hash, \
             registered_at, last_seen, price_per_hour, benchmark_gflops, validate, trains, region, containers, \
             host_memory_bytes, encryption_key, compliance) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18) \
             ON CONFLICT (id) DO UPDATE SET name = $3, hardware = $4, device = $5, memory_bytes = $6, \
             class = $7, token_hash = $8, last_seen = $9, price_per_hour = $10, benchmark_gflops = $11, \
             validate = $12, trains = $13, region = $14, containers = $15, host_memory_bytes = $16, \
             encryption_key = $17, compliance = $18",
        )
        .bind(provider.as_str())
        .bind(req.public_key.to_string())
        .bind(name)
        .bind(hardware)
        .bind(req.hardware.device.to_string())
        .bind(memory)
        .bind(req.hardware.class())
        .bind(secret_hash(&token))
        .bind(now)
        .bind(price)
        .bind(gflops)
        .bind(i64::from(req.validate))
        .bind(i64::from(req.train))
        .bind(req.region.as_deref())
        .bind(i64::from(req.containers))
        .bind(i64::try_from(req.hardware.host_memory()).unwrap_or(i64::MAX))
        .bind(encryption_key)
        .bind(compliance)
        .execute(w.conn())
        .await?;
        crate::certification::registered(w.conn(), provider.as_str(), req.compliance.as_ref(), now)
            .await?;
        sqlx::query("DELETE FROM payout_splits WHERE provider_id = $1")
            .bind(provider.as_str())
            .execute(w.conn())
            .await?;
        for split in &req.payout {
            sqlx::query(
                "INSERT INTO payout_splits (provider_id, address, share) VALUES ($1, $2, $3)",
            )
            .bind(provider.as_str())
            .bind(&split.address)
            .bind(i64::from(split.share))
            .execute(w.conn())
            .await?;
        }
        crate::presence::seen(&mut w, provider.as_str()).await?;
        crate::presence::record_status(&mut w, provider.as_str(), ProviderChange::Registered, None)
            .await?;
        crate::presence::check_gpu_claim(
            &mut w,
            &provider,
            req.hardware.uuid.as_deref(),
            self.lease_ms(),
        )
        .await?;
        if self.inner.config.hardware_proof {
            crate::proof::plan_next_proof(
                &mut w,
                provider.as_str(),
                self.inner.config.proof_interval_seconds,
            )
            .await?;
        }
        let mut resume = Vec::new();
        let mut dropped = Vec::new();
        for task_id in req.resuming {
            let renewed = sqlx::query(
                "UPDATE tasks SET lease_expires_at = $1, updated_at = $2 \
                 WHERE id = $3 AND provider_id = $4 AND status = 'leased' AND lease_expires_at >= $5",
            )
            .bind(now + self.lease_ms())
            .bind(now)
            .bind(task_id.as_str())
            .bind(provider.as_str())
            .bind(now)
            .execute(w.conn())
            .await?
            .rows_affected();
            let task = match store::task(w.conn(), task_id.as_str()).await? {
                Some(task) if renewed == 1 => task,
                _ => {
                    dropped.push(task_id);
                    continue;
                }
            };
            let job = job_of(w.conn(), &task).await?;
            resume.push(assignment(w.conn(), &job, &task, lease_seconds).await?);
        }
        // Leases the provider did not claim were granted after its last
        // record of work (it died between the pool's reply and writing the
        // task down): nobody works on them, so they end now, not when the
        // lease runs out.
        let proof = if self.inner.config.hardware_proof {
            Some(
                crate::proof::issue_proof(&mut w, &provider, gflops, req.hardware.memory_bytes)
                    .await?,
            )
        } else {
            None
        };
        let kept: Vec<&str> = resume.iter().map(|a| a.task_id.as_str()).collect();
        let abandoned = sqlx::query(&format!(
            "UPDATE tasks SET lease_expires_at = 0, updated_at = $1 \
             WHERE provider_id = $2 AND status = 'leased' AND id NOT IN ({})",
            self.dialect().json_text_elements("$3")
        ))
        .bind(now)
        .bind(provider.as_str())
        .bind(serde_json::to_string(&kept)?)
        .execute(w.conn())
        .await?
        .rows_affected();
        w.commit().await?;
        if abandoned > 0 {
            self.reap_expired_leases().await?;
        }
        tracing::info!(provider = %provider, name, class = %req.hardware.class(),
            resumed = resume.len(), dropped = dropped.len(), "provider registered");
        Ok(Registered {
            provider_id: provider,
            token,
            heartbeat_seconds: self.inner.config.heartbeat_seconds,
            lease_seconds,
            resume,
            dropped,
            proof,
        })
    }
}
