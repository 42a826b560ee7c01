//! Resolves on SIGTERM (systemd, Kubernetes) or SIGINT (a terminal). Both are needed: a process
//! started in the background from a non-interactive shell ignores SIGINT.

pub async fn signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        () = term => tracing::info!("SIGTERM received"),
        r = tokio::signal::ctrl_c() => match r {
            Ok(()) => tracing::info!("SIGINT received"),
            Err(e) => tracing::error!(error = %e, "cannot listen for SIGINT"),
        },
    }
}
