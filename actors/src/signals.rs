//! Process signals: SIGTERM and Ctrl-C stop the service gracefully, SIGHUP reloads the
//! configuration.

use futures_util::future::LocalBoxFuture;

use crate::supervisor::{Shutdown, SupervisorHandle};

/// Waits for signals until a stop signal arrives; then shuts the supervisor down (running
/// steps finish, their state is committed) and returns. SIGHUP runs `reload` each time.
pub async fn run_until_stopped<F>(handle: SupervisorHandle, reload: F) -> std::io::Result<()>
where
    F: Fn() -> LocalBoxFuture<'static, ()>,
{
    wait_for_stop(reload).await?;
    let _ = handle.addr.send(Shutdown).await;
    Ok(())
}

/// Waits until SIGTERM or Ctrl-C (SIGHUP runs `reload` each time) and returns without
/// stopping anything, so the caller can announce the stop (e.g. to systemd) before it sends
/// [`Shutdown`].
pub async fn wait_for_stop<F>(reload: F) -> std::io::Result<()>
where
    F: Fn() -> LocalBoxFuture<'static, ()>,
{
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate())?;
        let mut hup = signal(SignalKind::hangup())?;
        loop {
            tokio::select! {
                _ = term.recv() => { tracing::info!("SIGTERM: stopping"); break; }
                r = tokio::signal::ctrl_c() => { r?; tracing::info!("interrupted: stopping"); break; }
                _ = hup.recv() => { tracing::info!("SIGHUP: reloading the configuration"); reload().await; }
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = &reload;
        tokio::signal::ctrl_c().await?;
    }
    Ok(())
}
