//! The process's signals: Ctrl-C and SIGTERM stop a server in order; SIGHUP re-reads segments.
//! Only the binary's commands listen for them; the server itself takes a shutdown future.

use crate::server::EngineControl;

/// Resolves at Ctrl-C or SIGTERM.
pub async fn shutdown() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
}

/// SIGHUP re-reads the segments file, like `POST /api/segments/reload`.
pub fn reload_on_hangup(control: EngineControl) {
    #[cfg(unix)]
    tokio::spawn(async move {
        let Ok(mut hup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) else {
            return;
        };
        while hup.recv().await.is_some() {
            if let Err(crate::server::ControlError::Stopped) = control.reload_segments().await {
                return;
            }
        }
    });
    #[cfg(not(unix))]
    let _ = control;
}
