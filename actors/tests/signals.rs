//! SIGHUP reloads, SIGTERM stops gracefully. In a test binary of its own, because signals
//! are process-wide.

use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use mailsync_actors::fakes::{within, FakeStream, FakeSync};
use mailsync_actors::signals::run_until_stopped;
use mailsync_actors::*;
use tokio::sync::Notify;

#[actix_rt::test]
async fn sighup_reloads_and_sigterm_stops_after_running_steps() {
    let sync = FakeSync::new(&["contacts"]);
    let ports = Ports {
        sync: sync.clone(),
        stream: FakeStream::new(),
        crm: None,
    };
    let mut settings = RuntimeSettings {
        arbiters: 0,
        ..RuntimeSettings::default()
    };
    settings.stream.join_delay = Duration::from_millis(1);
    let server = ServerSpec {
        id: "ex1".into(),
        throttle: ThrottleSettings {
            requests_per_second: 100.0,
            burst: 100,
            max_concurrent: 10,
        },
        streaming: true,
        stream: ServerStreaming::default(),
    };
    let mailbox = MailboxSpec {
        smtp: "user1@example.com".into(),
        server: "ex1".into(),
        fingerprint: 0,
    };
    let handle = Supervisor::launch(
        settings,
        vec![server],
        vec![mailbox],
        ports,
        Metrics::unregistered(),
    )
    .unwrap();
    let board = handle.board.clone();
    sync.wait_until("ready", |_| board.ready()).await;

    let reloaded = Arc::new(Notify::new());
    let reloads = Rc::new(std::cell::Cell::new(0));
    let (r, n) = (reloaded.clone(), reloads.clone());
    let reload = move || {
        let (r, n) = (r.clone(), n.clone());
        Box::pin(async move {
            n.set(n.get() + 1);
            r.notify_one();
        }) as futures_util::future::LocalBoxFuture<'static, ()>
    };
    let running = actix_rt::spawn(run_until_stopped(handle.clone(), reload));
    // Let it install its handlers.
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
    unsafe { libc::raise(libc::SIGHUP) };
    within("reload after SIGHUP", reloaded.notified()).await;
    assert_eq!(reloads.get(), 1);
    assert!(!running.is_finished(), "SIGHUP must not stop the service");

    unsafe { libc::raise(libc::SIGTERM) };
    within("stop after SIGTERM", running)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        board.snapshot("user1@example.com").unwrap().state,
        MailboxState::Stopped
    );
}
