//! The stop signals every tsweep process honours: SIGINT (Ctrl-C), SIGTERM (a stop, a pod
//! deletion) and SIGHUP (the terminal was closed).

/// Waits for the first SIGINT, SIGTERM or SIGHUP and names it. Where the handlers cannot
/// be installed, waits for Ctrl-C alone.
pub async fn shutdown_signal() -> &'static str {
    use tokio::signal::unix::{signal, SignalKind};
    match (signal(SignalKind::terminate()), signal(SignalKind::interrupt()), signal(SignalKind::hangup())) {
        (Ok(mut term), Ok(mut int), Ok(mut hup)) => tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
            _ = hup.recv() => "SIGHUP",
        },
        (Err(error), _, _) | (_, Err(error), _) | (_, _, Err(error)) => {
            tracing::warn!(%error, "cannot listen for SIGTERM/SIGHUP; only Ctrl-C stops this process");
            let _ = tokio::signal::ctrl_c().await;
            "SIGINT"
        }
    }
}
