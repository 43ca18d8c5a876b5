//! One module per command group.

pub mod account;
pub mod bench_pool;
pub mod bench_verify;
pub mod book;
pub mod confidential;
pub mod container;
pub mod job;
pub mod local;
pub mod onboarding;
pub mod pool;
pub mod provider;
pub mod verify;

/// Resolves on Ctrl-C or SIGTERM.
pub async fn interrupted() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term => {}
    }
}
