//! JSON over HTTP: the JSON-RPC envelope of `/json_rpc` and monerod's plain
//! JSON endpoints (`/get_height`, `/get_transactions`).

use super::RpcError;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// How long a connection attempt may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a whole call may take at most. A wallet's `refresh` on a long
/// chain is the slowest call; pass your own client to change this.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(600);
/// How long a call that builds or sends a transaction may take: a wallet
/// that takes longer is stuck (waiting on locked outputs, say), and the
/// caller had better try again later than wait.
const TRANSACTION_TIMEOUT: Duration = Duration::from_secs(120);
/// How long any other call may take: reads of the wallet's or the daemon's
/// state answer in well under a second.
const QUERY_TIMEOUT: Duration = Duration::from_secs(30);

/// The time a call of `method` may take: each call gets a timeout that fits
/// it, so one stuck call cannot hold its caller for the client's whole
/// [`REQUEST_TIMEOUT`].
fn timeout_of(method: &str) -> Duration {
    match method {
        "refresh" | "rescan_blockchain" | "generateblocks" => REQUEST_TIMEOUT,
        "transfer" | "transfer_split" | "relay_tx" | "sweep_all" | "send_raw_transaction" => {
            TRANSACTION_TIMEOUT
        }
        _ => QUERY_TIMEOUT,
    }
}
/// How much of an unexpected HTTP body an error quotes.
const BODY_QUOTE: usize = 300;

/// Where to send calls, and the HTTP client to send them with.
#[derive(Debug, Clone)]
pub(crate) struct Endpoint {
    http: reqwest::Client,
    base: String,
}

#[derive(Serialize)]
struct Request<'a, P> {
    jsonrpc: &'static str,
    id: &'static str,
    method: &'a str,
    params: &'a P,
}

#[derive(Deserialize)]
struct Envelope {
    #[serde(default)]
    result: Option<serde_json::Value>,
    #[serde(default)]
    error: Option<ErrorObject>,
}

#[derive(Deserialize)]
struct ErrorObject {
    code: i64,
    #[serde(default)]
    message: String,
}

impl Endpoint {
    /// A default client: rustls, connect timeout 10 s, call timeout 10 min.
    pub(crate) fn new(url: &str) -> Result<Endpoint, RpcError> {
        let http = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(REQUEST_TIMEOUT)
            .build()
            .map_err(RpcError::Client)?;
        Endpoint::with_client(url, http)
    }

    /// `url` is the server's root (`http://127.0.0.1:18083`); a trailing
    /// `/json_rpc` is accepted and dropped.
    pub(crate) fn with_client(url: &str, http: reqwest::Client) -> Result<Endpoint, RpcError> {
        let invalid = |reason: &str| RpcError::InvalidUrl {
            url: url.to_string(),
            reason: reason.to_string(),
        };
        let trimmed = url.trim();
        let parsed = reqwest::Url::parse(trimmed)
            .map_err(|e| invalid(&format!("{e} (expected like http://127.0.0.1:18083)")))?;
        if parsed.scheme() != "http" && parsed.scheme() != "https" {
            return Err(invalid(
                "expected an http:// or https:// URL, like http://127.0.0.1:18083",
            ));
        }
        if parsed.host_str().is_none() {
            return Err(invalid("no host"));
        }
        if parsed.query().is_some() || parsed.fragment().is_some() {
            return Err(invalid("a query or fragment is not expected"));
        }
        let base = trimmed.trim_end_matches('/');
        let base = base.strip_suffix("/json_rpc").unwrap_or(base);
        Ok(Endpoint {
            http,
            base: base.to_string(),
        })
    }

    /// The server's root URL.
    pub(crate) fn base(&self) -> &str {
        &self.base
    }

    /// Calls `method` on `/json_rpc`. `status_check` also refuses a result
    /// whose `status` is not `OK` (monerod's convention).
    pub(crate) async fn json_rpc<P: Serialize, R: DeserializeOwned>(
        &self,
        method: &str,
        params: &P,
        status_check: bool,
    ) -> Result<R, RpcError> {
        let body = Request {
            jsonrpc: "2.0",
            id: "0",
            method,
            params,
        };
        let url = format!("{}/json_rpc", self.base);
        let bytes = self.post(method, &url, &body).await?;
        let envelope: Envelope = serde_json::from_slice(&bytes).map_err(|e| RpcError::Decode {
            method: method.to_string(),
            detail: format!("not a JSON-RPC answer: {e}"),
        })?;
        if let Some(error) = envelope.error {
            return Err(RpcError::Rpc {
                method: method.to_string(),
                code: error.code,
                message: error.message,
            });
        }
        let result = envelope.result.ok_or_else(|| RpcError::Decode {
            method: method.to_string(),
            detail: "neither a result nor an error".to_string(),
        })?;
        if status_check {
            check_status(method, &result)?;
        }
        decode(method, result)
    }

    /// POSTs JSON to a plain monerod endpoint such as `/get_transactions`
    /// and refuses a `status` other than `OK`.
    pub(crate) async fn plain<P: Serialize, R: DeserializeOwned>(
        &self,
        path: &str,
        params: &P,
    ) -> Result<R, RpcError> {
        let method = path.trim_start_matches('/');
        let url = format!("{}/{method}", self.base);
        let bytes = self.post(method, &url, params).await?;
        let value: serde_json::Value =
            serde_json::from_slice(&bytes).map_err(|e| RpcError::Decode {
                method: method.to_string(),
                detail: format!("not JSON: {e}"),
            })?;
        check_status(method, &value)?;
        decode(method, value)
    }

    async fn post<B: Serialize + ?Sized>(
        &self,
        method: &str,
        url: &str,
        body: &B,
    ) -> Result<Vec<u8>, RpcError> {
        tracing::debug!(method, url, "monero rpc call");
        let transport = |source| RpcError::Transport {
            method: method.to_string(),
            endpoint: url.to_string(),
            source,
        };
        let response = self
            .http
            .post(url)
            .timeout(timeout_of(method).min(REQUEST_TIMEOUT))
            .json(body)
            .send()
            .await
            .map_err(transport)?;
        let status = response.status();
        let bytes = response.bytes().await.map_err(transport)?;
        if !status.is_success() {
            let text = String::from_utf8_lossy(&bytes);
            let body: String = text.chars().take(BODY_QUOTE).collect();
            return Err(RpcError::HttpStatus {
                method: method.to_string(),
                endpoint: url.to_string(),
                status: status.as_u16(),
                body,
            });
        }
        Ok(bytes.to_vec())
    }
}

fn check_status(method: &str, value: &serde_json::Value) -> Result<(), RpcError> {
    match value.get("status").and_then(|s| s.as_str()) {
        None | Some("OK") => Ok(()),
        Some(status) => Err(RpcError::DaemonStatus {
            method: method.to_string(),
            status: status.to_string(),
        }),
    }
}

fn decode<R: DeserializeOwned>(method: &str, value: serde_json::Value) -> Result<R, RpcError> {
    serde_json::from_value(value).map_err(|e| RpcError::Decode {
        method: method.to_string(),
        detail: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_checked_and_normalised() {
        let e = Endpoint::new("http://127.0.0.1:18083/json_rpc").unwrap();
        assert_eq!(e.base(), "http://127.0.0.1:18083");
        let e = Endpoint::new("http://127.0.0.1:18083/").unwrap();
        assert_eq!(e.base(), "http://127.0.0.1:18083");
        for bad in [
            "127.0.0.1:18083",
            "localhost:18083",
            "ftp://x",
            "",
            "http://x/?a=b",
        ] {
            assert!(
                matches!(Endpoint::new(bad), Err(RpcError::InvalidUrl { .. })),
                "{bad}"
            );
        }
    }

    #[tokio::test]
    async fn an_unreachable_server_is_a_transport_error() {
        // Bind then drop a listener, so the port is (almost surely) closed.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .unwrap();
        let e = Endpoint::new(&format!("http://127.0.0.1:{port}")).unwrap();
        let err = e
            .json_rpc::<_, serde_json::Value>("get_version", &serde_json::json!({}), false)
            .await
            .unwrap_err();
        assert!(matches!(err, RpcError::Transport { .. }), "{err}");
        assert!(
            err.to_string().contains("could not reach the server"),
            "{err}"
        );
    }
}
