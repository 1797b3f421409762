//! The process's signals: Ctrl-C and SIGTERM stop a server in order; SIGHUP re-reads segments.
//! Only the binary's commands listen for them; the server itself takes a shutdown future.

use std::future::Future;

use crate::server::EngineControl;

/// Resolves at Ctrl-C or SIGTERM. The handlers are installed when this is called, not when the
/// future is first polled: a SIGTERM that came between the server printing its address and the
/// first poll used to kill the process the default way, with no final checkpoint (a test under
/// load caught it). Call it inside the runtime.
pub fn shutdown() -> impl std::future::Future<Output = ()> {
    #[cfg(unix)]
    let term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    // Ctrl-C's handler is installed by its first poll: poll it once now.
    let mut ctrl_c = Box::pin(tokio::signal::ctrl_c());
    let waker = futures_util::task::noop_waker();
    let _ = ctrl_c.as_mut().poll(&mut std::task::Context::from_waker(&waker));
    async move {
        #[cfg(unix)]
        let term = async move {
            match term {
                Some(mut s) => {
                    s.recv().await;
                }
                None => std::future::pending::<()>().await,
            }
        };
        #[cfg(not(unix))]
        let term = std::future::pending::<()>();
        tokio::select! { _ = ctrl_c => {}, _ = term => {} }
    }
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
