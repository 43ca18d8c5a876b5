//! Who is calling: customers by API key, providers by session token, a
//! rig's owner by view token.
//!
//! All are `Authorization: Bearer <secret>`. API keys look like
//! `gp_<64 hex>`, provider session tokens `gps_<64 hex>`, view tokens
//! `gpv_<64 hex>`; the pool stores only their sha256. A view token is
//! opened with a node proof ([`open_view`]), shows its provider's page
//! and nothing else, and expires after [`VIEW_SECONDS`].

use crate::error::PoolError;
use crate::Pool;
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use gradpool_core::id::random_hex;
use gradpool_core::wire::AccountCreated;
use gradpool_core::{AccountId, ProviderId};
use sha2::{Digest, Sha256};

/// The sha256 (hex) under which a secret is stored.
pub fn secret_hash(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

/// A fresh customer API key.
pub fn new_api_key() -> String {
    format!("gp_{}", random_hex(32))
}

/// A fresh provider session token.
pub fn new_session_token() -> String {
    format!("gps_{}", random_hex(32))
}

/// How long a view token lasts.
pub const VIEW_SECONDS: i64 = 12 * 3600;

/// Opens a read-only view of `provider`'s page for its owner, who proved
/// they hold its node key: its token (shown once) and when it expires
/// (ms). Expired views are forgotten on the way.
pub(crate) async fn open_view(
    pool: &Pool,
    provider: &ProviderId,
) -> Result<(String, i64), PoolError> {
    let token = format!("gpv_{}", random_hex(32));
    let mut w = pool.write().await?;
    let known: Option<String> = sqlx::query_scalar("SELECT id FROM providers WHERE id = $1")
        .bind(provider.as_str())
        .fetch_optional(w.conn())
        .await?;
    if known.is_none() {
        return Err(PoolError::NotFound(format!(
            "provider {provider} has never registered here"
        )));
    }
    let expires_at = w.now + VIEW_SECONDS * 1000;
    sqlx::query("DELETE FROM provider_views WHERE expires_at <= $1")
        .bind(w.now)
        .execute(w.conn())
        .await?;
    sqlx::query(
        "INSERT INTO provider_views (token_hash, provider_id, expires_at) VALUES ($1, $2, $3)",
    )
    .bind(secret_hash(&token))
    .bind(provider.as_str())
    .bind(expires_at)
    .execute(w.conn())
    .await?;
    w.commit().await?;
    tracing::info!(provider = %provider, "rig view opened");
    Ok((token, expires_at))
}

/// Creates an account and returns its (only) copy of the API key.
pub(crate) async fn create_account(pool: &Pool, name: &str) -> Result<AccountCreated, PoolError> {
    let name = name.trim();
    if name.is_empty() || name.len() > 128 {
        return Err(PoolError::BadRequest(
            "name: a non-empty account name of at most 128 characters".into(),
        ));
    }
    let id = AccountId::random();
    let key = new_api_key();
    let mut w = pool.write().await?;
    sqlx::query("INSERT INTO accounts (id, name, key_hash, created_at) VALUES ($1, $2, $3, $4)")
        .bind(id.as_str())
        .bind(name)
        .bind(secret_hash(&key))
        .bind(w.now)
        .execute(w.conn())
        .await?;
    w.commit().await?;
    tracing::info!(account = %id, name, "account created");
    Ok(AccountCreated {
        account_id: id,
        api_key: key,
    })
}

fn bearer(parts: &Parts) -> Result<&str, PoolError> {
    let header = parts
        .headers
        .get(axum::http::header::AUTHORIZATION)
        .ok_or_else(|| PoolError::Unauthorized("missing Authorization: Bearer header".into()))?;
    let value = header
        .to_str()
        .map_err(|_| PoolError::Unauthorized("malformed Authorization header".into()))?;
    value
        .strip_prefix("Bearer ")
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .ok_or_else(|| PoolError::Unauthorized("expected Authorization: Bearer <key>".into()))
}

async fn account_by_key(pool: &Pool, key: &str) -> Result<Option<AccountId>, PoolError> {
    let id: Option<String> = sqlx::query_scalar("SELECT id FROM accounts WHERE key_hash = $1")
        .bind(secret_hash(key))
        .fetch_optional(&pool.inner.db)
        .await?;
    Ok(id.as_deref().map(AccountId::from))
}

async fn provider_by_token(pool: &Pool, token: &str) -> Result<Option<ProviderId>, PoolError> {
    let id: Option<String> = sqlx::query_scalar("SELECT id FROM providers WHERE token_hash = $1")
        .bind(secret_hash(token))
        .fetch_optional(&pool.inner.db)
        .await?;
    Ok(id.as_deref().map(ProviderId::from))
}

fn unknown_key() -> PoolError {
    PoolError::Unauthorized("unknown API key or session token".into())
}

/// A customer, authenticated by API key.
#[derive(Debug, Clone)]
pub struct Customer(pub AccountId);

impl FromRequestParts<Pool> for Customer {
    type Rejection = PoolError;

    async fn from_request_parts(parts: &mut Parts, pool: &Pool) -> Result<Self, Self::Rejection> {
        let key = bearer(parts)?;
        account_by_key(pool, key)
            .await?
            .map(Customer)
            .ok_or_else(unknown_key)
    }
}

/// A provider, authenticated by the session token it got when it registered.
#[derive(Debug, Clone)]
pub struct ProviderSession(pub ProviderId);

impl FromRequestParts<Pool> for ProviderSession {
    type Rejection = PoolError;

    async fn from_request_parts(parts: &mut Parts, pool: &Pool) -> Result<Self, Self::Rejection> {
        let token = bearer(parts)?;
        provider_by_token(pool, token)
            .await?
            .map(ProviderSession)
            .ok_or_else(unknown_key)
    }
}

/// A rig's owner, by a view token its node proof opened: reads that
/// provider's page, nothing else.
#[derive(Debug, Clone)]
pub struct RigOwner(pub ProviderId);

impl FromRequestParts<Pool> for RigOwner {
    type Rejection = PoolError;

    async fn from_request_parts(parts: &mut Parts, pool: &Pool) -> Result<Self, Self::Rejection> {
        let token = bearer(parts)?;
        let id: Option<String> = sqlx::query_scalar(
            "SELECT provider_id FROM provider_views WHERE token_hash = $1 AND expires_at > $2",
        )
        .bind(secret_hash(token))
        .bind(pool.now())
        .fetch_optional(&pool.inner.db)
        .await?;
        id.map(|id| RigOwner(ProviderId::from(id.as_str())))
            .ok_or_else(|| {
                PoolError::Unauthorized(
                    "unknown or expired view token: open a new one with gradpool provider dashboard"
                        .into(),
                )
            })
    }
}

/// Either kind of caller (blob routes, provider list).
#[derive(Debug, Clone)]
pub enum Caller {
    /// A customer account.
    Customer(AccountId),
    /// A registered provider.
    Provider(ProviderId),
}

impl Caller {
    /// The id recorded as a blob's uploader.
    pub fn principal(&self) -> &str {
        match self {
            Caller::Customer(id) => id.as_str(),
            Caller::Provider(id) => id.as_str(),
        }
    }
}

impl FromRequestParts<Pool> for Caller {
    type Rejection = PoolError;

    async fn from_request_parts(parts: &mut Parts, pool: &Pool) -> Result<Self, Self::Rejection> {
        let secret = bearer(parts)?;
        if secret.starts_with("gps_") {
            provider_by_token(pool, secret).await?.map(Caller::Provider)
        } else {
            account_by_key(pool, secret).await?.map(Caller::Customer)
        }
        .ok_or_else(unknown_key)
    }
}
