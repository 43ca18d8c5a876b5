//! The HTTP API: routes of [`gradpool_core::wire`] and their handlers.

use crate::auth::{Caller, Customer, ProviderSession};
use crate::blob::too_large;
use crate::error::PoolError;
use crate::store;
use crate::throttle::RouteClass;
use crate::Pool;
use axum::body::Body;
use axum::extract::{DefaultBodyLimit, FromRequest, Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures::StreamExt;
use gradpool_core::wire::{
    AccountView, BlobStored, Commit, CreateAccount, Faucet, Heartbeat, OuterCommit, Progress,
    Register, SignedNonce, StakeRequest, SubmitJob, TaskFailed, Withdraw,
};
use gradpool_core::Sha256Hex;
use serde::Deserialize;

/// A JSON body whose rejections are [`PoolError`]s (so they reply with an
/// `ApiError` body).
#[derive(FromRequest)]
#[from_request(via(axum::Json), rejection(PoolError))]
pub struct ApiJson<T>(pub T);

/// The address of a connection's peer, as the pool serves it (over plain
/// TCP or TLS) to the handlers.
#[derive(Debug, Clone, Copy)]
pub struct PeerAddr(pub std::net::SocketAddr);

impl
    axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, tokio::net::TcpListener>>
    for PeerAddr
{
    fn connect_info(stream: axum::serve::IncomingStream<'_, tokio::net::TcpListener>) -> Self {
        PeerAddr(*stream.remote_addr())
    }
}

impl
    axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, crate::tls::TlsListener>>
    for PeerAddr
{
    fn connect_info(stream: axum::serve::IncomingStream<'_, crate::tls::TlsListener>) -> Self {
        PeerAddr(*stream.remote_addr())
    }
}

/// The address of the client a request came from, when it came over a
/// socket (the pool serves with connection info).
pub struct ClientAddr(pub Option<std::net::IpAddr>);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for ClientAddr {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _state: &S,
    ) -> Result<Self, Self::Rejection> {
        Ok(ClientAddr(
            parts
                .extensions
                .get::<axum::extract::ConnectInfo<PeerAddr>>()
                .map(|c| c.0 .0.ip()),
        ))
    }
}

/// The pool's routes, with `pool` as state.
pub fn router(pool: Pool) -> Router {
    Router::new()
        .route("/v1/accounts", post(create_account))
        .route("/v1/account", get(account))
        .route(
            "/v1/blobs/{sha256}",
            get(get_blob)
                .put(put_blob)
                .layer(DefaultBodyLimit::disable()),
        )
        .route("/v1/jobs", post(submit_job).get(list_jobs))
        .route("/v1/jobs/{id}", get(get_job))
        .route("/v1/jobs/{id}/cancel", post(cancel_job))
        .route("/v1/jobs/{id}/segments", get(job_segments))
        .route("/v1/jobs/{id}/rounds", get(job_rounds))
        .route(
            "/v1/jobs/{id}/checkpoint-requests",
            post(job_checkpoint_requests),
        )
        .route("/v1/jobs/{id}/events", get(job_events))
        .route("/v1/pool", get(pool_info))
        .route("/v1/bookings", post(book).get(list_bookings))
        .route("/v1/bookings/{id}/cancel", post(cancel_booking))
        .route("/v1/providers", get(list_providers))
        .route("/v1/providers/challenge", post(challenge))
        .route("/v1/providers/register", post(register))
        .route("/v1/providers/heartbeat", post(heartbeat))
        .route("/v1/tasks/{id}/progress", post(progress))
        // A loss trace takes about 12 bytes a step in JSON.
        .route(
            "/v1/tasks/{id}/commit",
            post(commit).layer(DefaultBodyLimit::max(COMMIT_BODY_LIMIT)),
        )
        .route("/v1/tasks/{id}/outer", post(commit_outer))
        .route("/v1/tasks/{id}/fail", post(fail))
        .route("/v1/tasks/{id}/release", post(release))
        .route("/v1/tasks/{id}/replay", post(replay))
        .route("/v1/jobs/{id}/verdicts", get(job_verdicts))
        .route("/v1/account/balance", get(balance))
        .route("/v1/account/deposit", post(deposit_address))
        .route("/v1/account/faucet", post(faucet))
        .route("/v1/account/withdraw", post(withdraw))
        .route("/v1/providers/earnings", post(earnings))
        .route("/v1/providers/status", post(provider_status))
        .route("/v1/providers/proofs/{id}", post(answer_proof))
        .route("/v1/providers/compliance", post(send_compliance))
        .route("/v1/providers/stake", post(stake))
        .route("/metrics", get(metrics))
        .fallback(|| async { PoolError::NotFound("no such route".into()) })
        .layer(axum::middleware::from_fn_with_state(pool.clone(), measured))
        .with_state(pool)
}

/// Counts and times every request, by the route it matched.
async fn measured(
    State(pool): State<Pool>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let route = request
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map(|m| m.as_str().to_owned());
    let method = request.method().clone();
    let started = std::time::Instant::now();
    let response = next.run(request).await;
    pool.inner.metrics.observe(
        route.as_deref(),
        method.as_str(),
        response.status().as_u16(),
        started.elapsed(),
    );
    response
}

/// `GET /metrics`: the Prometheus text exposition. Each scrape reads the
/// database, so anyone's scrapes share the anonymous routes' budget.
async fn metrics(
    State(pool): State<Pool>,
    ClientAddr(client): ClientAddr,
) -> Result<impl IntoResponse, PoolError> {
    pool.inner.throttle.check(RouteClass::Anonymous, client)?;
    let overview = pool.overview().await?;
    let text = pool
        .inner
        .metrics
        .render(&overview)
        .map_err(|e| PoolError::Internal(format!("encoding the metrics: {e}")))?;
    Ok(([(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)], text))
}

/// The largest commit body: a segment of [`gradpool_core::spec::MAX_CHECKPOINT_EVERY`]
/// steps fits with room to spare.
const COMMIT_BODY_LIMIT: usize = 16 << 20;

async fn create_account(
    State(pool): State<Pool>,
    ClientAddr(client): ClientAddr,
    ApiJson(req): ApiJson<CreateAccount>,
) -> Result<impl IntoResponse, PoolError> {
    if !pool.inner.config.open_signup {
        return Err(PoolError::Forbidden(
            "this pool does not take sign-ups; ask its operator for an account".into(),
        ));
    }
    pool.inner.throttle.check(RouteClass::Signup, client)?;
    let created = pool.create_account(&req.name).await?;
    Ok((StatusCode::CREATED, Json(created)))
}

async fn account(
    State(pool): State<Pool>,
    Customer(id): Customer,
) -> Result<Json<AccountView>, PoolError> {
    let (name, created_at): (String, i64) =
        sqlx::query_as("SELECT name, created_at FROM accounts WHERE id = ?")
            .bind(id.as_str())
            .fetch_one(&pool.inner.db)
            .await?;
    Ok(Json(AccountView {
        id,
        name,
        created_at: store::rfc3339(created_at),
    }))
}

fn parse_digest(s: &str) -> Result<Sha256Hex, PoolError> {
    s.parse().map_err(|e| PoolError::BadRequest(format!("{e}")))
}

async fn put_blob(
    State(pool): State<Pool>,
    caller: Caller,
    Path(sha): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<impl IntoResponse, PoolError> {
    let sha = parse_digest(&sha)?;
    let max = pool.inner.config.max_blob_bytes;
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > max) {
        return Err(too_large(max));
    }
    let started = std::time::Instant::now();
    let size = pool
        .inner
        .blobs
        .put(&sha, body.into_data_stream(), max)
        .await?;
    let ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
    pool.record_blob(&sha, size, &caller, ms).await?;
    tracing::debug!(sha256 = %sha, size, by = caller.principal(), "blob stored");
    Ok((StatusCode::CREATED, Json(BlobStored { sha256: sha, size })))
}

async fn get_blob(
    State(pool): State<Pool>,
    method: axum::http::Method,
    caller: Caller,
    Path(sha): Path<String>,
) -> Result<Response, PoolError> {
    let sha = parse_digest(&sha)?;
    let missing = || PoolError::not_found(format!("blob {sha}"));
    if !pool.can_read_blob(&caller, &sha).await? {
        return Err(missing());
    }
    let file = match tokio::fs::File::open(pool.inner.blobs.path_of(&sha)).await {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(missing()),
        Err(e) => return Err(e.into()),
    };
    let len = file.metadata().await?.len();
    let headers = [
        (header::CONTENT_TYPE, "application/octet-stream".to_owned()),
        (header::CONTENT_LENGTH, len.to_string()),
    ];
    // HEAD: whether the caller may read it, and its size; no transfer.
    if method == axum::http::Method::HEAD {
        return Ok(headers.into_response());
    }
    let transfer = pool.record_download(&sha, len, &caller).await?;
    // The time it took to hand every byte but the last chunk's to the
    // connection, recorded before the last chunk goes: a client that holds
    // the whole body finds the rate already there. A body that ends early
    // (the client went away) records none.
    let started = std::time::Instant::now();
    let mut sent = 0u64;
    let mut timer = Some(pool);
    let timed = tokio_util::io::ReaderStream::new(file).then(move |chunk| {
        if let Ok(bytes) = &chunk {
            sent = sent.saturating_add(bytes.len() as u64);
        }
        let last = if sent >= len { timer.take() } else { None };
        async move {
            if let Some(pool) = last {
                let ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
                if let Err(e) = pool.record_download_time(transfer, ms).await {
                    tracing::warn!(error = %e, "recording a download's time");
                }
            }
            chunk
        }
    });
    let body = Body::from_stream(timed);
    Ok((headers, body).into_response())
}

async fn submit_job(
    State(pool): State<Pool>,
    Customer(account): Customer,
    ApiJson(req): ApiJson<SubmitJob>,
) -> Result<impl IntoResponse, PoolError> {
    let submitted = pool.submit_job(&account, req).await?;
    let mut conn = pool.inner.db.acquire().await?;
    let job = store::owned_job(&mut conn, account.as_str(), submitted.id.as_str()).await?;
    let view = pool.job_view(&mut conn, &job).await?;
    Ok((StatusCode::CREATED, Json(view)))
}

async fn list_jobs(
    State(pool): State<Pool>,
    Customer(account): Customer,
) -> Result<impl IntoResponse, PoolError> {
    let mut conn = pool.inner.db.acquire().await?;
    let mut views = Vec::new();
    for job in store::jobs_of(&mut conn, account.as_str()).await? {
        views.push(pool.job_view(&mut conn, &job).await?);
    }
    Ok(Json(views))
}

async fn get_job(
    State(pool): State<Pool>,
    Customer(account): Customer,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, PoolError> {
    let mut conn = pool.inner.db.acquire().await?;
    let job = store::owned_job(&mut conn, account.as_str(), &id).await?;
    Ok(Json(pool.job_view(&mut conn, &job).await?))
}

async fn cancel_job(
    State(pool): State<Pool>,
    Customer(account): Customer,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, PoolError> {
    Ok(Json(pool.cancel_job(&account, &id).await?))
}

async fn job_segments(
    State(pool): State<Pool>,
    Customer(account): Customer,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, PoolError> {
    let mut conn = pool.inner.db.acquire().await?;
    store::owned_job(&mut conn, account.as_str(), &id).await?;
    Ok(Json(store::segments(&mut conn, &id).await?))
}

async fn job_rounds(
    State(pool): State<Pool>,
    Customer(account): Customer,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, PoolError> {
    let mut conn = pool.inner.db.acquire().await?;
    let job = store::owned_job(&mut conn, account.as_str(), &id).await?;
    Ok(Json(store::rounds(&mut conn, &job).await?))
}

async fn job_checkpoint_requests(
    State(pool): State<Pool>,
    Customer(account): Customer,
    Path(id): Path<String>,
    ApiJson(request): ApiJson<gradpool_core::wire::CheckpointRequest>,
) -> Result<impl IntoResponse, PoolError> {
    Ok(Json(
        pool.request_checkpoints(account.as_str(), &id, request)
            .await?,
    ))
}

/// `?after=<event id>` of the event stream.
#[derive(Debug, Deserialize)]
struct EventsQuery {
    after: Option<i64>,
}

async fn job_events(
    State(pool): State<Pool>,
    Customer(account): Customer,
    Path(id): Path<String>,
    query: Result<Query<EventsQuery>, axum::extract::rejection::QueryRejection>,
    headers: HeaderMap,
) -> Result<Response, PoolError> {
    let Query(query) = query?;
    let last_event_id = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<i64>().ok());
    let after = query.after.or(last_event_id).unwrap_or(0);
    {
        let mut conn = pool.inner.db.acquire().await?;
        store::owned_job(&mut conn, account.as_str(), &id).await?;
    }
    Ok(pool.event_stream(id, after).into_response())
}

async fn list_providers(
    State(pool): State<Pool>,
    _caller: Caller,
) -> Result<impl IntoResponse, PoolError> {
    let mut conn = pool.inner.db.acquire().await?;
    Ok(Json(
        store::providers(
            &mut conn,
            pool.now(),
            pool.inner.config.lease_seconds,
            pool.inner.config.verification.sampling,
            &pool.inner.sightings,
        )
        .await?,
    ))
}

async fn book(
    State(pool): State<Pool>,
    Customer(id): Customer,
    ApiJson(req): ApiJson<gradpool_core::wire::Book>,
) -> Result<impl IntoResponse, PoolError> {
    Ok((StatusCode::CREATED, Json(pool.book(&id, req).await?)))
}

async fn list_bookings(
    State(pool): State<Pool>,
    Customer(id): Customer,
) -> Result<impl IntoResponse, PoolError> {
    Ok(Json(pool.bookings(&id).await?))
}

async fn cancel_booking(
    State(pool): State<Pool>,
    Customer(id): Customer,
    Path(booking): Path<String>,
) -> Result<impl IntoResponse, PoolError> {
    Ok(Json(pool.cancel_booking(&id, &booking).await?))
}

async fn pool_info(State(pool): State<Pool>) -> Result<impl IntoResponse, PoolError> {
    Ok(Json(pool.info().await?))
}

async fn challenge(
    State(pool): State<Pool>,
    ClientAddr(client): ClientAddr,
) -> Result<impl IntoResponse, PoolError> {
    pool.inner.throttle.check(RouteClass::Anonymous, client)?;
    Ok(Json(pool.inner.challenges.issue(pool.now())?))
}

async fn register(
    State(pool): State<Pool>,
    ClientAddr(client): ClientAddr,
    ApiJson(req): ApiJson<Register>,
) -> Result<impl IntoResponse, PoolError> {
    pool.inner.throttle.check(RouteClass::Anonymous, client)?;
    Ok(Json(pool.register_provider(req).await?))
}

async fn heartbeat(
    State(pool): State<Pool>,
    ProviderSession(provider): ProviderSession,
    ApiJson(hb): ApiJson<Heartbeat>,
) -> Result<impl IntoResponse, PoolError> {
    Ok(Json(pool.heartbeat(&provider, hb).await?))
}

async fn progress(
    State(pool): State<Pool>,
    ProviderSession(provider): ProviderSession,
    Path(id): Path<String>,
    ApiJson(p): ApiJson<Progress>,
) -> Result<StatusCode, PoolError> {
    pool.progress(&provider, &id, p).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn commit(
    State(pool): State<Pool>,
    ProviderSession(provider): ProviderSession,
    Path(id): Path<String>,
    ApiJson(c): ApiJson<Commit>,
) -> Result<impl IntoResponse, PoolError> {
    Ok(Json(pool.commit(&provider, &id, c).await?))
}

async fn commit_outer(
    State(pool): State<Pool>,
    ProviderSession(provider): ProviderSession,
    Path(id): Path<String>,
    ApiJson(c): ApiJson<OuterCommit>,
) -> Result<impl IntoResponse, PoolError> {
    Ok(Json(pool.commit_outer(&provider, &id, c).await?))
}

async fn fail(
    State(pool): State<Pool>,
    ProviderSession(provider): ProviderSession,
    Path(id): Path<String>,
    ApiJson(f): ApiJson<TaskFailed>,
) -> Result<StatusCode, PoolError> {
    pool.fail_task(&provider, &id, f).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn release(
    State(pool): State<Pool>,
    ProviderSession(provider): ProviderSession,
    Path(id): Path<String>,
    ApiJson(f): ApiJson<TaskFailed>,
) -> Result<StatusCode, PoolError> {
    pool.release_task(&provider, &id, f).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn replay(
    State(pool): State<Pool>,
    ProviderSession(provider): ProviderSession,
    Path(id): Path<String>,
    ApiJson(r): ApiJson<gradpool_core::SignedReplay>,
) -> Result<StatusCode, PoolError> {
    pool.replay(&provider, &id, r).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn job_verdicts(
    State(pool): State<Pool>,
    Customer(account): Customer,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, PoolError> {
    Ok(Json(pool.verdicts(&account, &id).await?))
}

async fn balance(
    State(pool): State<Pool>,
    Customer(id): Customer,
) -> Result<impl IntoResponse, PoolError> {
    Ok(Json(pool.balance(&id).await?))
}

async fn deposit_address(
    State(pool): State<Pool>,
    Customer(id): Customer,
) -> Result<impl IntoResponse, PoolError> {
    Ok(Json(pool.deposit_address(&id).await?))
}

async fn faucet(
    State(pool): State<Pool>,
    ClientAddr(client): ClientAddr,
    Customer(id): Customer,
    ApiJson(req): ApiJson<Faucet>,
) -> Result<impl IntoResponse, PoolError> {
    pool.inner.throttle.check(RouteClass::Faucet, client)?;
    Ok(Json(pool.faucet(&id, req.amount).await?))
}

async fn withdraw(
    State(pool): State<Pool>,
    Customer(id): Customer,
    ApiJson(req): ApiJson<Withdraw>,
) -> Result<impl IntoResponse, PoolError> {
    Ok(Json(pool.withdraw(&id, req).await?))
}

async fn earnings(
    State(pool): State<Pool>,
    ClientAddr(client): ClientAddr,
    ApiJson(signed): ApiJson<SignedNonce>,
) -> Result<impl IntoResponse, PoolError> {
    pool.inner.throttle.check(RouteClass::Anonymous, client)?;
    let provider = pool.verify_signed_nonce("earnings", &signed)?;
    Ok(Json(pool.earnings(&provider).await?))
}

async fn answer_proof(
    State(pool): State<Pool>,
    ProviderSession(provider): ProviderSession,
    Path(id): Path<String>,
    ApiJson(answer): ApiJson<gradpool_core::proof::ProofAnswer>,
) -> Result<impl IntoResponse, PoolError> {
    Ok(Json(pool.answer_proof(&provider, &id, answer).await?))
}

async fn send_compliance(
    State(pool): State<Pool>,
    ProviderSession(provider): ProviderSession,
    ApiJson(report): ApiJson<gradpool_core::compliance::SignedCompliance>,
) -> Result<impl IntoResponse, PoolError> {
    let passed = pool.receive_compliance(&provider, report).await?;
    Ok(Json(serde_json::json!({ "passed": passed })))
}

async fn provider_status(
    State(pool): State<Pool>,
    ClientAddr(client): ClientAddr,
    ApiJson(signed): ApiJson<SignedNonce>,
) -> Result<impl IntoResponse, PoolError> {
    pool.inner.throttle.check(RouteClass::Anonymous, client)?;
    let provider = pool.verify_signed_nonce("status", &signed)?;
    let mut conn = pool.inner.db.acquire().await?;
    let view = store::providers(
        &mut conn,
        pool.now(),
        pool.inner.config.lease_seconds,
        pool.inner.config.verification.sampling,
        &pool.inner.sightings,
    )
    .await?
    .into_iter()
    .find(|p| p.id == provider)
    .ok_or_else(|| PoolError::NotFound(format!("provider {provider} has never registered here")))?;
    let rows: Vec<(String, Option<String>, i64)> = sqlx::query_as(
        "SELECT status, reason, at FROM provider_status WHERE provider_id = ? ORDER BY at DESC, rowid DESC LIMIT 50",
    )
    .bind(provider.as_str())
    .fetch_all(&mut *conn)
    .await?;
    let history = rows
        .into_iter()
        .map(|(status, reason, at)| {
            Ok(gradpool_core::wire::StatusChange {
                status: status.parse()?,
                reason,
                at: store::rfc3339(at),
            })
        })
        .collect::<Result<_, PoolError>>()?;
    Ok(Json(gradpool_core::wire::ProviderStatusReply {
        provider: view,
        history,
    }))
}

async fn stake(
    State(pool): State<Pool>,
    ClientAddr(client): ClientAddr,
    ApiJson(req): ApiJson<StakeRequest>,
) -> Result<impl IntoResponse, PoolError> {
    pool.inner.throttle.check(RouteClass::Anonymous, client)?;
    let provider = pool.verify_signed_nonce("stake", &req.signed_nonce)?;
    Ok(Json(pool.stake(&provider, &req).await?))
}
