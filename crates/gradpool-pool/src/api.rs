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
use axum::{Json, Router};
use futures::StreamExt;
use gradpool_core::wire::{
    AccountView, BlobStored, Commit, CreateAccount, Faucet, Heartbeat, OuterCommit, Progress,
    Register, SignedNonce, StakeRequest, SubmitJob, TaskFailed, Withdraw,
};
use gradpool_core::Sha256Hex;
use serde::Deserialize;
use utoipa::OpenApi as _;
use utoipa_axum::router::{OpenApiRouter, UtoipaMethodRouterExt};
use utoipa_axum::routes;

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
    let (router, _) = described().split_for_parts();
    router
        .merge(crate::dashboard::router())
        .fallback(|| async { PoolError::NotFound("no such route".into()) })
        .layer(axum::middleware::from_fn_with_state(pool.clone(), measured))
        .with_state(pool)
}

/// The OpenAPI 3 document of the API (`GET /v1/openapi.json`): made from
/// the same [`described`] routes the router serves.
pub fn openapi() -> utoipa::openapi::OpenApi {
    described().into_openapi()
}

/// Every route with its description: a handler is routed only through
/// `routes!`, which adds its `#[utoipa::path]` to the document.
fn described() -> OpenApiRouter<Pool> {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(create_account))
        .routes(routes!(account))
        .routes(routes!(get_blob, put_blob).layer(DefaultBodyLimit::disable()))
        .routes(routes!(submit_job, list_jobs))
        .routes(routes!(get_job))
        .routes(routes!(cancel_job))
        .routes(routes!(job_segments))
        .routes(routes!(job_rounds))
        .routes(routes!(job_checkpoint_requests))
        .routes(routes!(job_events))
        .routes(routes!(job_verdicts))
        .routes(routes!(pool_info))
        .routes(routes!(overview))
        .routes(routes!(get_provider))
        .routes(routes!(provider_telemetry))
        .routes(routes!(job_model))
        .routes(routes!(open_view))
        .routes(routes!(rig_view))
        .routes(routes!(book, list_bookings))
        .routes(routes!(cancel_booking))
        .routes(routes!(list_providers))
        .routes(routes!(challenge))
        .routes(routes!(register))
        .routes(routes!(heartbeat))
        .routes(routes!(progress))
        // A loss trace takes about 12 bytes a step in JSON.
        .routes(routes!(commit).layer(DefaultBodyLimit::max(COMMIT_BODY_LIMIT)))
        .routes(routes!(commit_outer))
        .routes(routes!(fail))
        .routes(routes!(release))
        .routes(routes!(replay))
        .routes(routes!(balance))
        .routes(routes!(deposit_address))
        .routes(routes!(faucet))
        .routes(routes!(withdraw))
        .routes(routes!(earnings))
        .routes(routes!(provider_status))
        .routes(routes!(answer_proof))
        .routes(routes!(send_compliance))
        .routes(routes!(stake))
        .routes(routes!(metrics))
        .routes(routes!(openapi_json))
}

/// The document's frame: what the API is, and how callers authenticate.
#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "gradpool pool API",
        description = "The HTTP API of a gradpool pool: customers submit training jobs and \
                       fund them; providers register, heart-beat, train segments and commit \
                       them; validators replay. Errors are `ApiError` bodies with a stable `code`."
    ),
    modifiers(&Credentials),
    tags(
        (name = "accounts", description = "Customer accounts and money"),
        (name = "jobs", description = "Training jobs, their segments, events and verdicts"),
        (name = "blobs", description = "Content-addressed datasets, files and checkpoints"),
        (name = "bookings", description = "Providers reserved for a window"),
        (name = "providers", description = "Registration, heartbeats, proofs, earnings"),
        (name = "tasks", description = "Leased segments, outer steps and replays"),
        (name = "pool", description = "The pool's terms, metrics and this document"),
    )
)]
struct ApiDoc;

/// What the routes do not say: the two bearer credentials (a customer's
/// API key, a provider's session) and the job spec's TOML.
struct Credentials;

impl utoipa::Modify for Credentials {
    fn modify(&self, api: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let bearer = |what: &str| {
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(what))
                    .build(),
            )
        };
        let components = api.components.get_or_insert_with(Default::default);
        // `spec_toml` is TOML text; its fields, for editors and SDKs.
        for (name, schema) in gradpool_core::spec::toml_schemas() {
            components.schemas.insert(name, schema);
        }
        components.add_security_scheme(
            "api_key",
            bearer("A customer's API key (`gp_…`), from `POST /v1/accounts`"),
        );
        components.add_security_scheme(
            "session",
            bearer("A provider's session token (`gps_…`), from `POST /v1/providers/register`"),
        );
        components.add_security_scheme(
            "view",
            bearer("A read-only view of one provider (`gpv_…`), from `POST /v1/providers/views`"),
        );
    }
}

/// The document, made once.
static DOCUMENT: std::sync::OnceLock<Result<String, String>> = std::sync::OnceLock::new();

/// The OpenAPI description of this API.
#[utoipa::path(
    get,
    path = "/v1/openapi.json",
    tag = "pool",
    responses((status = 200, description = "This document", body = Object, content_type = "application/json"))
)]
async fn openapi_json() -> Result<Response, PoolError> {
    let document = DOCUMENT
        .get_or_init(|| openapi().to_json().map_err(|e| e.to_string()))
        .as_ref()
        .map_err(|e| PoolError::Internal(format!("the OpenAPI document: {e}")))?;
    Ok((
        [(header::CONTENT_TYPE, "application/json")],
        document.clone(),
    )
        .into_response())
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
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "pool",
    responses((status = 200, description = "Prometheus text exposition", body = String, content_type = "text/plain; version=0.0.4"), (status = "4XX", description = "Refused: the code and message say why", body = gradpool_core::wire::ApiError), (status = "5XX", description = "The pool failed, or is busy (503, with Retry-After)", body = gradpool_core::wire::ApiError))
)]
async fn metrics(
    State(pool): State<Pool>,
    ClientAddr(client): ClientAddr,
) -> Result<impl IntoResponse, PoolError> {
    pool.inner.throttle.check(RouteClass::Anonymous, client)?;
    let overview = pool.overview().await?;
    let text = pool
        .inner
        .metrics
        .render(&overview, pool.inner.leadership.leading())
        .map_err(|e| PoolError::Internal(format!("encoding the metrics: {e}")))?;
    Ok(([(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)], text))
}

/// The largest commit body: a segment of [`gradpool_core::spec::MAX_CHECKPOINT_EVERY`]
/// steps fits with room to spare.
const COMMIT_BODY_LIMIT: usize = 16 << 20;

/// Opens a customer account (on pools that take sign-ups).
#[utoipa::path(
    post,
    path = "/v1/accounts",
    tag = "accounts",
    request_body = gradpool_core::wire::CreateAccount,
    responses((status = 201, description = "The account and its API key, shown once", body = gradpool_core::wire::AccountCreated), (status = "4XX", description = "Refused: the code and message say why", body = gradpool_core::wire::ApiError), (status = "5XX", description = "The pool failed, or is busy (503, with Retry-After)", body = gradpool_core::wire::ApiError))
)]
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

/// The caller's account.
#[utoipa::path(
    get,
    path = "/v1/account",
    tag = "accounts",
    security(("api_key" = [])),
    responses((status = 200, description = "The caller's account", body = gradpool_core::wire::AccountView), (status = "4XX", description = "Refused: the code and message say why", body = gradpool_core::wire::ApiError), (status = "5XX", description = "The pool failed, or is busy (503, with Retry-After)", body = gradpool_core::wire::ApiError))
)]
async fn account(
    State(pool): State<Pool>,
    Customer(id): Customer,
) -> Result<Json<AccountView>, PoolError> {
    let (name, created_at): (String, i64) =
        sqlx::query_as("SELECT name, created_at FROM accounts WHERE id = $1")
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

/// Uploads a blob named by the sha256 of its bytes; refused whole on a digest mismatch or over the size cap.
#[utoipa::path(
    put,
    path = "/v1/blobs/{sha256}",
    tag = "blobs",
    request_body(content = Vec<u8>, content_type = "application/octet-stream"),
    params(("sha256" = String, Path, description = "The blob's sha256, 64 lowercase hex digits")),
    security(("api_key" = []), ("session" = [])),
    responses((status = 201, description = "Stored (or already there)", body = gradpool_core::wire::BlobStored), (status = "4XX", description = "Refused: the code and message say why", body = gradpool_core::wire::ApiError), (status = "5XX", description = "The pool failed, or is busy (503, with Retry-After)", body = gradpool_core::wire::ApiError))
)]
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

/// Downloads a blob the caller may read.
#[utoipa::path(
    method(get, head),
    path = "/v1/blobs/{sha256}",
    tag = "blobs",
    params(("sha256" = String, Path, description = "The blob's sha256, 64 lowercase hex digits")),
    security(("api_key" = []), ("session" = [])),
    responses((status = 200, description = "The blob's bytes (HEAD: its size only)", body = Vec<u8>, content_type = "application/octet-stream"), (status = "4XX", description = "Refused: the code and message say why", body = gradpool_core::wire::ApiError), (status = "5XX", description = "The pool failed, or is busy (503, with Retry-After)", body = gradpool_core::wire::ApiError))
)]
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
    let file = match tokio::fs::File::open(pool.inner.blobs.local(&sha).await?).await {
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

/// Submits a job.
#[utoipa::path(
    post,
    path = "/v1/jobs",
    tag = "jobs",
    request_body = gradpool_core::wire::SubmitJob,
    security(("api_key" = [])),
    responses((status = 201, description = "The job, queued, its budget held in escrow", body = gradpool_core::wire::JobView), (status = "4XX", description = "Refused: the code and message say why", body = gradpool_core::wire::ApiError), (status = "5XX", description = "The pool failed, or is busy (503, with Retry-After)", body = gradpool_core::wire::ApiError))
)]
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

/// The caller's jobs.
#[utoipa::path(
    get,
    path = "/v1/jobs",
    tag = "jobs",
    security(("api_key" = [])),
    responses((status = 200, description = "The caller's jobs, newest first", body = Vec<gradpool_core::wire::JobView>), (status = "4XX", description = "Refused: the code and message say why", body = gradpool_core::wire::ApiError), (status = "5XX", description = "The pool failed, or is busy (503, with Retry-After)", body = gradpool_core::wire::ApiError))
)]
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

/// One of the caller's jobs.
#[utoipa::path(
    get,
    path = "/v1/jobs/{id}",
    tag = "jobs",
    params(("id" = String, Path, description = "The id")),
    security(("api_key" = [])),
    responses((status = 200, description = "The job", body = gradpool_core::wire::JobView), (status = "4XX", description = "Refused: the code and message say why", body = gradpool_core::wire::ApiError), (status = "5XX", description = "The pool failed, or is busy (503, with Retry-After)", body = gradpool_core::wire::ApiError))
)]
async fn get_job(
    State(pool): State<Pool>,
    Customer(account): Customer,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, PoolError> {
    let mut conn = pool.inner.db.acquire().await?;
    let job = store::owned_job(&mut conn, account.as_str(), &id).await?;
    Ok(Json(pool.job_view(&mut conn, &job).await?))
}

/// Cancels a job.
#[utoipa::path(
    post,
    path = "/v1/jobs/{id}/cancel",
    tag = "jobs",
    params(("id" = String, Path, description = "The id")),
    security(("api_key" = [])),
    responses((status = 200, description = "The job, cancelled; the unspent budget refunded", body = gradpool_core::wire::JobView), (status = "4XX", description = "Refused: the code and message say why", body = gradpool_core::wire::ApiError), (status = "5XX", description = "The pool failed, or is busy (503, with Retry-After)", body = gradpool_core::wire::ApiError))
)]
async fn cancel_job(
    State(pool): State<Pool>,
    Customer(account): Customer,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, PoolError> {
    Ok(Json(pool.cancel_job(&account, &id).await?))
}

/// A job's committed segments and their checkpoints.
#[utoipa::path(
    get,
    path = "/v1/jobs/{id}/segments",
    tag = "jobs",
    params(("id" = String, Path, description = "The id")),
    security(("api_key" = [])),
    responses((status = 200, description = "Its committed segments", body = Vec<gradpool_core::wire::SegmentView>), (status = "4XX", description = "Refused: the code and message say why", body = gradpool_core::wire::ApiError), (status = "5XX", description = "The pool failed, or is busy (503, with Retry-After)", body = gradpool_core::wire::ApiError))
)]
async fn job_segments(
    State(pool): State<Pool>,
    Customer(account): Customer,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, PoolError> {
    let mut conn = pool.inner.db.acquire().await?;
    store::owned_job(&mut conn, account.as_str(), &id).await?;
    Ok(Json(store::segments(&mut conn, &id).await?))
}

/// A parallel job's rounds.
#[utoipa::path(
    get,
    path = "/v1/jobs/{id}/rounds",
    tag = "jobs",
    params(("id" = String, Path, description = "The id")),
    security(("api_key" = [])),
    responses((status = 200, description = "Its rounds", body = Vec<gradpool_core::wire::RoundView>), (status = "4XX", description = "Refused: the code and message say why", body = gradpool_core::wire::ApiError), (status = "5XX", description = "The pool failed, or is busy (503, with Retry-After)", body = gradpool_core::wire::ApiError))
)]
async fn job_rounds(
    State(pool): State<Pool>,
    Customer(account): Customer,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, PoolError> {
    let mut conn = pool.inner.db.acquire().await?;
    let job = store::owned_job(&mut conn, account.as_str(), &id).await?;
    Ok(Json(store::rounds(&mut conn, &job).await?))
}

/// Asks for checkpoints the pool no longer holds.
#[utoipa::path(
    post,
    path = "/v1/jobs/{id}/checkpoint-requests",
    tag = "jobs",
    request_body = gradpool_core::wire::CheckpointRequest,
    params(("id" = String, Path, description = "The id")),
    security(("api_key" = [])),
    responses((status = 200, description = "What the pool holds and what it asked providers for", body = gradpool_core::wire::CheckpointRequestReply), (status = "4XX", description = "Refused: the code and message say why", body = gradpool_core::wire::ApiError), (status = "5XX", description = "The pool failed, or is busy (503, with Retry-After)", body = gradpool_core::wire::ApiError))
)]
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

/// The pool's answer to a compliance report.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
struct ComplianceVerdict {
    /// Whether every check passed (else the tier is lost).
    passed: bool,
}

/// `?after=<event id>` of the event stream.
#[derive(Debug, Deserialize)]
struct EventsQuery {
    after: Option<i64>,
}

/// A job's event stream (server-sent events), from `after` or `Last-Event-ID`.
#[utoipa::path(
    get,
    path = "/v1/jobs/{id}/events",
    tag = "jobs",
    params(("id" = String, Path, description = "The id"), ("after" = Option<i64>, Query, description = "Events after this id")),
    security(("api_key" = [])),
    responses((status = 200, description = "Server-sent events, one JobEvent each", body = gradpool_core::wire::JobEvent, content_type = "text/event-stream"), (status = "4XX", description = "Refused: the code and message say why", body = gradpool_core::wire::ApiError), (status = "5XX", description = "The pool failed, or is busy (503, with Retry-After)", body = gradpool_core::wire::ApiError))
)]
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

/// The providers: status, tier, hardware, price, reputation.
#[utoipa::path(
    get,
    path = "/v1/providers",
    tag = "providers",
    security(("api_key" = []), ("session" = [])),
    responses((status = 200, description = "Every provider, as anyone sees it", body = Vec<gradpool_core::wire::ProviderView>), (status = "4XX", description = "Refused: the code and message say why", body = gradpool_core::wire::ApiError), (status = "5XX", description = "The pool failed, or is busy (503, with Retry-After)", body = gradpool_core::wire::ApiError))
)]
async fn list_providers(
    State(pool): State<Pool>,
    _caller: Caller,
) -> Result<impl IntoResponse, PoolError> {
    let mut conn = pool.inner.db.acquire().await?;
    Ok(Json(pool.provider_views(&mut conn).await?))
}

/// Whether a caller may read providers' pages: anyone with a key, and
/// anyone at all on a pool that makes them public.
fn may_see_providers(pool: &Pool, caller: Result<Caller, PoolError>) -> Result<(), PoolError> {
    match caller {
        Ok(_) => Ok(()),
        Err(_) if pool.inner.config.public_providers => Ok(()),
        Err(e) => Err(e),
    }
}

/// One provider, as anyone with a key sees it (anyone at all, on a pool started with `--public-providers`).
#[utoipa::path(
    get,
    path = "/v1/providers/{id}",
    tag = "providers",
    params(("id" = String, Path, description = "The provider's id (`prov_…`)")),
    security(("api_key" = []), ("session" = [])),
    responses((status = 200, description = "The provider", body = gradpool_core::wire::ProviderView), (status = "4XX", description = "Refused: the code and message say why", body = gradpool_core::wire::ApiError), (status = "5XX", description = "The pool failed, or is busy (503, with Retry-After)", body = gradpool_core::wire::ApiError))
)]
async fn get_provider(
    State(pool): State<Pool>,
    caller: Result<Caller, PoolError>,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, PoolError> {
    may_see_providers(&pool, caller)?;
    let mut conn = pool.inner.db.acquire().await?;
    Ok(Json(pool.provider_view(&mut conn, &id).await?))
}

/// A provider's telemetry over the last hour, a sample a minute, oldest first.
#[utoipa::path(
    get,
    path = "/v1/providers/{id}/telemetry",
    tag = "providers",
    params(("id" = String, Path, description = "The provider's id (`prov_…`)")),
    security(("api_key" = []), ("session" = [])),
    responses((status = 200, description = "Its samples", body = Vec<gradpool_core::wire::TelemetrySample>), (status = "4XX", description = "Refused: the code and message say why", body = gradpool_core::wire::ApiError), (status = "5XX", description = "The pool failed, or is busy (503, with Retry-After)", body = gradpool_core::wire::ApiError))
)]
async fn provider_telemetry(
    State(pool): State<Pool>,
    caller: Result<Caller, PoolError>,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, PoolError> {
    may_see_providers(&pool, caller)?;
    let mut conn = pool.inner.db.acquire().await?;
    let known: Option<String> = sqlx::query_scalar("SELECT id FROM providers WHERE id = $1")
        .bind(&id)
        .fetch_optional(&mut *conn)
        .await?;
    if known.is_none() {
        return Err(PoolError::not_found(format!("provider {id}")));
    }
    Ok(Json(
        crate::presence::telemetry_history(&mut conn, &id).await?,
    ))
}

/// Opens a read-only view of a provider's page for its owner, who signs a nonce (purpose `view`) with its node key.
#[utoipa::path(
    post,
    path = "/v1/providers/views",
    tag = "providers",
    request_body = gradpool_core::wire::SignedNonce,
    responses((status = 201, description = "The view token, shown once", body = gradpool_core::wire::ViewOpened), (status = "4XX", description = "Refused: the code and message say why", body = gradpool_core::wire::ApiError), (status = "5XX", description = "The pool failed, or is busy (503, with Retry-After)", body = gradpool_core::wire::ApiError))
)]
async fn open_view(
    State(pool): State<Pool>,
    ClientAddr(client): ClientAddr,
    ApiJson(signed): ApiJson<SignedNonce>,
) -> Result<impl IntoResponse, PoolError> {
    pool.inner.throttle.check(RouteClass::Anonymous, client)?;
    let provider = pool.verify_signed_nonce("view", &signed).await?;
    let (token, expires_at) = crate::auth::open_view(&pool, &provider).await?;
    Ok((
        StatusCode::CREATED,
        Json(gradpool_core::wire::ViewOpened {
            token,
            provider_id: provider,
            expires_at: store::rfc3339(expires_at),
        }),
    ))
}

/// How much of a provider's history its owner's page shows.
const RIG_HISTORY: u32 = 50;

/// A provider's own page: standing and its history, earnings and payouts, hardware proofs, audits.
#[utoipa::path(
    get,
    path = "/v1/providers/me",
    tag = "providers",
    security(("view" = [])),
    responses((status = 200, description = "The provider, as its owner sees it", body = gradpool_core::wire::RigView), (status = "4XX", description = "Refused: the code and message say why", body = gradpool_core::wire::ApiError), (status = "5XX", description = "The pool failed, or is busy (503, with Retry-After)", body = gradpool_core::wire::ApiError))
)]
async fn rig_view(
    State(pool): State<Pool>,
    crate::auth::RigOwner(provider): crate::auth::RigOwner,
) -> Result<impl IntoResponse, PoolError> {
    let mut conn = pool.inner.db.acquire().await?;
    let view = pool.provider_view(&mut conn, provider.as_str()).await?;
    let history =
        crate::presence::status_history(&mut conn, provider.as_str(), RIG_HISTORY).await?;
    let proofs = crate::proof::proofs_of(&mut conn, provider.as_str(), RIG_HISTORY).await?;
    let earnings = pool.earnings_in(&mut conn, &provider).await?;
    let telemetry = crate::presence::telemetry_history(&mut conn, provider.as_str()).await?;
    drop(conn);
    let verdicts = pool.recent_verdicts(RIG_HISTORY, Some(&provider)).await?;
    Ok(Json(gradpool_core::wire::RigView {
        provider: view,
        history,
        earnings,
        proofs,
        verdicts,
        telemetry,
    }))
}

/// Reserves providers for a window.
#[utoipa::path(
    post,
    path = "/v1/bookings",
    tag = "bookings",
    request_body = gradpool_core::wire::Book,
    security(("api_key" = [])),
    responses((status = 201, description = "The booking, its price held", body = gradpool_core::wire::BookingView), (status = "4XX", description = "Refused: the code and message say why", body = gradpool_core::wire::ApiError), (status = "5XX", description = "The pool failed, or is busy (503, with Retry-After)", body = gradpool_core::wire::ApiError))
)]
async fn book(
    State(pool): State<Pool>,
    Customer(id): Customer,
    ApiJson(req): ApiJson<gradpool_core::wire::Book>,
) -> Result<impl IntoResponse, PoolError> {
    Ok((StatusCode::CREATED, Json(pool.book(&id, req).await?)))
}

/// The caller's bookings.
#[utoipa::path(
    get,
    path = "/v1/bookings",
    tag = "bookings",
    security(("api_key" = [])),
    responses((status = 200, description = "The caller's bookings", body = Vec<gradpool_core::wire::BookingView>), (status = "4XX", description = "Refused: the code and message say why", body = gradpool_core::wire::ApiError), (status = "5XX", description = "The pool failed, or is busy (503, with Retry-After)", body = gradpool_core::wire::ApiError))
)]
async fn list_bookings(
    State(pool): State<Pool>,
    Customer(id): Customer,
) -> Result<impl IntoResponse, PoolError> {
    Ok(Json(pool.bookings(&id).await?))
}

/// Cancels a booking.
#[utoipa::path(
    post,
    path = "/v1/bookings/{id}/cancel",
    tag = "bookings",
    params(("id" = String, Path, description = "The id")),
    security(("api_key" = [])),
    responses((status = 200, description = "The booking, cancelled", body = gradpool_core::wire::BookingView), (status = "4XX", description = "Refused: the code and message say why", body = gradpool_core::wire::ApiError), (status = "5XX", description = "The pool failed, or is busy (503, with Retry-After)", body = gradpool_core::wire::ApiError))
)]
async fn cancel_booking(
    State(pool): State<Pool>,
    Customer(id): Customer,
    Path(booking): Path<String>,
) -> Result<impl IntoResponse, PoolError> {
    Ok(Json(pool.cancel_booking(&id, &booking).await?))
}

/// What the pool pays and charges.
#[utoipa::path(
    get,
    path = "/v1/pool",
    tag = "pool",
    responses((status = 200, description = "The pool's terms and prices", body = gradpool_core::wire::PoolInfo), (status = "4XX", description = "Refused: the code and message say why", body = gradpool_core::wire::ApiError), (status = "5XX", description = "The pool failed, or is busy (503, with Retry-After)", body = gradpool_core::wire::ApiError))
)]
async fn pool_info(State(pool): State<Pool>) -> Result<impl IntoResponse, PoolError> {
    Ok(Json(pool.info().await?))
}

/// How many of the latest verdicts the overview shows.
const OVERVIEW_VERDICTS: u32 = 20;

/// The pool at a glance, for anyone: providers by status and device, jobs by state, prices, the latest verdicts.
#[utoipa::path(
    get,
    path = "/v1/overview",
    tag = "pool",
    responses((status = 200, description = "The pool at a glance", body = gradpool_core::wire::PoolOverview), (status = "4XX", description = "Refused: the code and message say why", body = gradpool_core::wire::ApiError), (status = "5XX", description = "The pool failed, or is busy (503, with Retry-After)", body = gradpool_core::wire::ApiError))
)]
async fn overview(
    State(pool): State<Pool>,
    ClientAddr(client): ClientAddr,
) -> Result<impl IntoResponse, PoolError> {
    // It reads every provider: an anonymous caller gets it at the
    // anonymous rate.
    pool.inner.throttle.check(RouteClass::Anonymous, client)?;
    let o = pool.overview().await?;
    Ok(Json(gradpool_core::wire::PoolOverview {
        pool: pool.info().await?,
        providers: o.providers,
        devices: o.devices,
        jobs: o.jobs,
        recent_verdicts: pool.recent_verdicts(OVERVIEW_VERDICTS, None).await?,
    }))
}

/// A nonce for a provider to sign (registration, earnings, status, stake).
#[utoipa::path(
    post,
    path = "/v1/providers/challenge",
    tag = "providers",
    responses((status = 200, description = "A single-use nonce to sign", body = gradpool_core::wire::RegistrationChallenge), (status = "4XX", description = "Refused: the code and message say why", body = gradpool_core::wire::ApiError), (status = "5XX", description = "The pool failed, or is busy (503, with Retry-After)", body = gradpool_core::wire::ApiError))
)]
async fn challenge(
    State(pool): State<Pool>,
    ClientAddr(client): ClientAddr,
) -> Result<impl IntoResponse, PoolError> {
    pool.inner.throttle.check(RouteClass::Anonymous, client)?;
    Ok(Json(pool.inner.challenges.issue(pool.now())?))
}

/// Registers a provider with its signed node key.
#[utoipa::path(
    post,
    path = "/v1/providers/register",
    tag = "providers",
    request_body = gradpool_core::wire::Register,
    responses((status = 200, description = "The session", body = gradpool_core::wire::Registered), (status = "4XX", description = "Refused: the code and message say why", body = gradpool_core::wire::ApiError), (status = "5XX", description = "The pool failed, or is busy (503, with Retry-After)", body = gradpool_core::wire::ApiError))
)]
async fn register(
    State(pool): State<Pool>,
    ClientAddr(client): ClientAddr,
    ApiJson(req): ApiJson<Register>,
) -> Result<impl IntoResponse, PoolError> {
    pool.inner.throttle.check(RouteClass::Anonymous, client)?;
    Ok(Json(pool.register_provider(req).await?))
}

/// A provider's heartbeat: renews leases and claims work (long-poll).
#[utoipa::path(
    post,
    path = "/v1/providers/heartbeat",
    tag = "providers",
    request_body = gradpool_core::wire::Heartbeat,
    security(("session" = [])),
    responses((status = 200, description = "Work leased, tasks to stop, checks due", body = gradpool_core::wire::HeartbeatReply), (status = "4XX", description = "Refused: the code and message say why", body = gradpool_core::wire::ApiError), (status = "5XX", description = "The pool failed, or is busy (503, with Retry-After)", body = gradpool_core::wire::ApiError))
)]
async fn heartbeat(
    State(pool): State<Pool>,
    ProviderSession(provider): ProviderSession,
    ApiJson(hb): ApiJson<Heartbeat>,
) -> Result<impl IntoResponse, PoolError> {
    Ok(Json(pool.heartbeat(&provider, hb).await?))
}

/// Training progress of a leased task.
#[utoipa::path(
    post,
    path = "/v1/tasks/{id}/progress",
    tag = "tasks",
    request_body = gradpool_core::wire::Progress,
    params(("id" = String, Path, description = "The id")),
    security(("session" = [])),
    responses((status = 204, description = "Recorded"), (status = "4XX", description = "Refused: the code and message say why", body = gradpool_core::wire::ApiError), (status = "5XX", description = "The pool failed, or is busy (503, with Retry-After)", body = gradpool_core::wire::ApiError))
)]
async fn progress(
    State(pool): State<Pool>,
    ProviderSession(provider): ProviderSession,
    Path(id): Path<String>,
    ApiJson(p): ApiJson<Progress>,
) -> Result<StatusCode, PoolError> {
    pool.progress(&provider, &id, p).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Commits a segment: the signed commitment of its checkpoint.
#[utoipa::path(
    post,
    path = "/v1/tasks/{id}/commit",
    tag = "tasks",
    request_body = gradpool_core::wire::Commit,
    params(("id" = String, Path, description = "The id")),
    security(("session" = [])),
    responses((status = 200, description = "Accepted", body = gradpool_core::wire::CommitReply), (status = "4XX", description = "Refused: the code and message say why", body = gradpool_core::wire::ApiError), (status = "5XX", description = "The pool failed, or is busy (503, with Retry-After)", body = gradpool_core::wire::ApiError))
)]
async fn commit(
    State(pool): State<Pool>,
    ProviderSession(provider): ProviderSession,
    Path(id): Path<String>,
    ApiJson(c): ApiJson<Commit>,
) -> Result<impl IntoResponse, PoolError> {
    Ok(Json(pool.commit(&provider, &id, c).await?))
}

/// Commits a parallel job's outer step.
#[utoipa::path(
    post,
    path = "/v1/tasks/{id}/outer",
    tag = "tasks",
    request_body = gradpool_core::wire::OuterCommit,
    params(("id" = String, Path, description = "The id")),
    security(("session" = [])),
    responses((status = 200, description = "Accepted", body = gradpool_core::wire::CommitReply), (status = "4XX", description = "Refused: the code and message say why", body = gradpool_core::wire::ApiError), (status = "5XX", description = "The pool failed, or is busy (503, with Retry-After)", body = gradpool_core::wire::ApiError))
)]
async fn commit_outer(
    State(pool): State<Pool>,
    ProviderSession(provider): ProviderSession,
    Path(id): Path<String>,
    ApiJson(c): ApiJson<OuterCommit>,
) -> Result<impl IntoResponse, PoolError> {
    Ok(Json(pool.commit_outer(&provider, &id, c).await?))
}

/// A provider gives up on a task.
#[utoipa::path(
    post,
    path = "/v1/tasks/{id}/fail",
    tag = "tasks",
    request_body = gradpool_core::wire::TaskFailed,
    params(("id" = String, Path, description = "The id")),
    security(("session" = [])),
    responses((status = 204, description = "Recorded; the segment is queued again"), (status = "4XX", description = "Refused: the code and message say why", body = gradpool_core::wire::ApiError), (status = "5XX", description = "The pool failed, or is busy (503, with Retry-After)", body = gradpool_core::wire::ApiError))
)]
async fn fail(
    State(pool): State<Pool>,
    ProviderSession(provider): ProviderSession,
    Path(id): Path<String>,
    ApiJson(f): ApiJson<TaskFailed>,
) -> Result<StatusCode, PoolError> {
    pool.fail_task(&provider, &id, f).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// A provider hands a task back (its owner needs the machine).
#[utoipa::path(
    post,
    path = "/v1/tasks/{id}/release",
    tag = "tasks",
    request_body = gradpool_core::wire::TaskFailed,
    params(("id" = String, Path, description = "The id")),
    security(("session" = [])),
    responses((status = 204, description = "Handed back"), (status = "4XX", description = "Refused: the code and message say why", body = gradpool_core::wire::ApiError), (status = "5XX", description = "The pool failed, or is busy (503, with Retry-After)", body = gradpool_core::wire::ApiError))
)]
async fn release(
    State(pool): State<Pool>,
    ProviderSession(provider): ProviderSession,
    Path(id): Path<String>,
    ApiJson(f): ApiJson<TaskFailed>,
) -> Result<StatusCode, PoolError> {
    pool.release_task(&provider, &id, f).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// A validator's signed replay report.
#[utoipa::path(
    post,
    path = "/v1/tasks/{id}/replay",
    tag = "tasks",
    request_body = gradpool_core::SignedReplay,
    params(("id" = String, Path, description = "The id")),
    security(("session" = [])),
    responses((status = 204, description = "Recorded"), (status = "4XX", description = "Refused: the code and message say why", body = gradpool_core::wire::ApiError), (status = "5XX", description = "The pool failed, or is busy (503, with Retry-After)", body = gradpool_core::wire::ApiError))
)]
async fn replay(
    State(pool): State<Pool>,
    ProviderSession(provider): ProviderSession,
    Path(id): Path<String>,
    ApiJson(r): ApiJson<gradpool_core::SignedReplay>,
) -> Result<StatusCode, PoolError> {
    pool.replay(&provider, &id, r).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// A job's audits and verdicts.
#[utoipa::path(
    get,
    path = "/v1/jobs/{id}/verdicts",
    tag = "jobs",
    params(("id" = String, Path, description = "The id")),
    security(("api_key" = [])),
    responses((status = 200, description = "Its audits and their verdicts", body = Vec<gradpool_core::wire::VerdictView>), (status = "4XX", description = "Refused: the code and message say why", body = gradpool_core::wire::ApiError), (status = "5XX", description = "The pool failed, or is busy (503, with Retry-After)", body = gradpool_core::wire::ApiError))
)]
async fn job_verdicts(
    State(pool): State<Pool>,
    Customer(account): Customer,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, PoolError> {
    Ok(Json(pool.verdicts(&account, &id).await?))
}

/// The model a job trained: its last accepted checkpoint's weights, as `gradpool job fetch` writes them.
#[utoipa::path(
    get,
    path = "/v1/jobs/{id}/model",
    tag = "jobs",
    params(("id" = String, Path, description = "The id")),
    security(("api_key" = [])),
    responses((status = 200, description = "model.safetensors: the weights, the model's config and the data's vocabulary or features in its metadata", body = Vec<u8>, content_type = "application/octet-stream"), (status = "4XX", description = "Refused: the code and message say why", body = gradpool_core::wire::ApiError), (status = "5XX", description = "The pool failed, or is busy (503, with Retry-After)", body = gradpool_core::wire::ApiError))
)]
async fn job_model(
    State(pool): State<Pool>,
    Customer(account): Customer,
    Path(id): Path<String>,
) -> Result<Response, PoolError> {
    let bytes = pool.model_file(&account, &id).await?;
    let headers = [
        (header::CONTENT_TYPE, "application/octet-stream".to_owned()),
        (
            header::CONTENT_DISPOSITION,
            "attachment; filename=\"model.safetensors\"".to_owned(),
        ),
    ];
    Ok((headers, bytes).into_response())
}

/// The caller's balance.
#[utoipa::path(
    get,
    path = "/v1/account/balance",
    tag = "accounts",
    security(("api_key" = [])),
    responses((status = 200, description = "Available and held", body = gradpool_core::wire::Balance), (status = "4XX", description = "Refused: the code and message say why", body = gradpool_core::wire::ApiError), (status = "5XX", description = "The pool failed, or is busy (503, with Retry-After)", body = gradpool_core::wire::ApiError))
)]
async fn balance(
    State(pool): State<Pool>,
    Customer(id): Customer,
) -> Result<impl IntoResponse, PoolError> {
    Ok(Json(pool.balance(&id).await?))
}

/// The caller's deposit address (Monero pools).
#[utoipa::path(
    post,
    path = "/v1/account/deposit",
    tag = "accounts",
    security(("api_key" = [])),
    responses((status = 200, description = "The account's Monero deposit address", body = gradpool_core::wire::DepositAddress), (status = "4XX", description = "Refused: the code and message say why", body = gradpool_core::wire::ApiError), (status = "5XX", description = "The pool failed, or is busy (503, with Retry-After)", body = gradpool_core::wire::ApiError))
)]
async fn deposit_address(
    State(pool): State<Pool>,
    Customer(id): Customer,
) -> Result<impl IntoResponse, PoolError> {
    Ok(Json(pool.deposit_address(&id).await?))
}

/// Test money (dev pools only).
#[utoipa::path(
    post,
    path = "/v1/account/faucet",
    tag = "accounts",
    request_body = gradpool_core::wire::Faucet,
    security(("api_key" = [])),
    responses((status = 200, description = "The new balance", body = gradpool_core::wire::Balance), (status = "4XX", description = "Refused: the code and message say why", body = gradpool_core::wire::ApiError), (status = "5XX", description = "The pool failed, or is busy (503, with Retry-After)", body = gradpool_core::wire::ApiError))
)]
async fn faucet(
    State(pool): State<Pool>,
    ClientAddr(client): ClientAddr,
    Customer(id): Customer,
    ApiJson(req): ApiJson<Faucet>,
) -> Result<impl IntoResponse, PoolError> {
    pool.inner.throttle.check(RouteClass::Faucet, client)?;
    Ok(Json(pool.faucet(&id, req.amount).await?))
}

/// Withdraws to a Monero address.
#[utoipa::path(
    post,
    path = "/v1/account/withdraw",
    tag = "accounts",
    request_body = gradpool_core::wire::Withdraw,
    security(("api_key" = [])),
    responses((status = 200, description = "The payout", body = gradpool_core::wire::PayoutView), (status = "4XX", description = "Refused: the code and message say why", body = gradpool_core::wire::ApiError), (status = "5XX", description = "The pool failed, or is busy (503, with Retry-After)", body = gradpool_core::wire::ApiError))
)]
async fn withdraw(
    State(pool): State<Pool>,
    Customer(id): Customer,
    ApiJson(req): ApiJson<Withdraw>,
) -> Result<impl IntoResponse, PoolError> {
    Ok(Json(pool.withdraw(&id, req).await?))
}

/// A provider's earnings, asked with a signed nonce.
#[utoipa::path(
    post,
    path = "/v1/providers/earnings",
    tag = "providers",
    request_body = gradpool_core::wire::SignedNonce,
    responses((status = 200, description = "What the provider earned and was paid", body = gradpool_core::wire::Earnings), (status = "4XX", description = "Refused: the code and message say why", body = gradpool_core::wire::ApiError), (status = "5XX", description = "The pool failed, or is busy (503, with Retry-After)", body = gradpool_core::wire::ApiError))
)]
async fn earnings(
    State(pool): State<Pool>,
    ClientAddr(client): ClientAddr,
    ApiJson(signed): ApiJson<SignedNonce>,
) -> Result<impl IntoResponse, PoolError> {
    pool.inner.throttle.check(RouteClass::Anonymous, client)?;
    let provider = pool.verify_signed_nonce("earnings", &signed).await?;
    Ok(Json(pool.earnings(&provider).await?))
}

/// Answers a hardware proof.
#[utoipa::path(
    post,
    path = "/v1/providers/proofs/{id}",
    tag = "providers",
    request_body = gradpool_core::proof::ProofAnswer,
    params(("id" = String, Path, description = "The id")),
    security(("session" = [])),
    responses((status = 200, description = "The verdict", body = gradpool_core::proof::ProofResult), (status = "4XX", description = "Refused: the code and message say why", body = gradpool_core::wire::ApiError), (status = "5XX", description = "The pool failed, or is busy (503, with Retry-After)", body = gradpool_core::wire::ApiError))
)]
async fn answer_proof(
    State(pool): State<Pool>,
    ProviderSession(provider): ProviderSession,
    Path(id): Path<String>,
    ApiJson(answer): ApiJson<gradpool_core::proof::ProofAnswer>,
) -> Result<impl IntoResponse, PoolError> {
    Ok(Json(pool.answer_proof(&provider, &id, answer).await?))
}

/// An isolated-tier provider's signed compliance report.
#[utoipa::path(
    post,
    path = "/v1/providers/compliance",
    tag = "providers",
    request_body = gradpool_core::compliance::SignedCompliance,
    security(("session" = [])),
    responses((status = 200, description = "Whether every check passed", body = ComplianceVerdict), (status = "4XX", description = "Refused: the code and message say why", body = gradpool_core::wire::ApiError), (status = "5XX", description = "The pool failed, or is busy (503, with Retry-After)", body = gradpool_core::wire::ApiError))
)]
async fn send_compliance(
    State(pool): State<Pool>,
    ProviderSession(provider): ProviderSession,
    ApiJson(report): ApiJson<gradpool_core::compliance::SignedCompliance>,
) -> Result<impl IntoResponse, PoolError> {
    let passed = pool.receive_compliance(&provider, report).await?;
    Ok(Json(ComplianceVerdict { passed }))
}

/// A provider's status and history, asked with a signed nonce.
#[utoipa::path(
    post,
    path = "/v1/providers/status",
    tag = "providers",
    request_body = gradpool_core::wire::SignedNonce,
    responses((status = 200, description = "Its view and status history", body = gradpool_core::wire::ProviderStatusReply), (status = "4XX", description = "Refused: the code and message say why", body = gradpool_core::wire::ApiError), (status = "5XX", description = "The pool failed, or is busy (503, with Retry-After)", body = gradpool_core::wire::ApiError))
)]
async fn provider_status(
    State(pool): State<Pool>,
    ClientAddr(client): ClientAddr,
    ApiJson(signed): ApiJson<SignedNonce>,
) -> Result<impl IntoResponse, PoolError> {
    pool.inner.throttle.check(RouteClass::Anonymous, client)?;
    let provider = pool.verify_signed_nonce("status", &signed).await?;
    let mut conn = pool.inner.db.acquire().await?;
    let view = pool
        .provider_view(&mut conn, provider.as_str())
        .await
        .map_err(|e| match e {
            PoolError::NotFound(_) => {
                PoolError::NotFound(format!("provider {provider} has never registered here"))
            }
            e => e,
        })?;
    let history = crate::presence::status_history(&mut conn, provider.as_str(), 50).await?;
    Ok(Json(gradpool_core::wire::ProviderStatusReply {
        provider: view,
        history,
    }))
}

/// Moves earnings into (or out of) a provider's stake.
#[utoipa::path(
    post,
    path = "/v1/providers/stake",
    tag = "providers",
    request_body = gradpool_core::wire::StakeRequest,
    responses((status = 200, description = "Its earnings and stake", body = gradpool_core::wire::Earnings), (status = "4XX", description = "Refused: the code and message say why", body = gradpool_core::wire::ApiError), (status = "5XX", description = "The pool failed, or is busy (503, with Retry-After)", body = gradpool_core::wire::ApiError))
)]
async fn stake(
    State(pool): State<Pool>,
    ClientAddr(client): ClientAddr,
    ApiJson(req): ApiJson<StakeRequest>,
) -> Result<impl IntoResponse, PoolError> {
    pool.inner.throttle.check(RouteClass::Anonymous, client)?;
    let provider = pool.verify_signed_nonce("stake", &req.signed_nonce).await?;
    Ok(Json(pool.stake(&provider, &req).await?))
}
