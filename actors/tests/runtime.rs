//! The actor runtime against fake ports, under paused tokio time: isolation, restarts with
//! back-off, admin commands, coalescing, throttling, streaming renewal and gaps, polling
//! fallback, reload, graceful shutdown.

use std::sync::Arc;
use std::time::Duration;

use mailsync_actors::fakes::{within, Behaviour, FakeCrm, FakeStream, FakeSync};
use mailsync_actors::mailbox::{self, MailboxTrigger};
use mailsync_actors::stream_group;
use mailsync_actors::supervisor::{self, GroupRef};
use mailsync_actors::*;
use tokio::sync::Notify;
use tokio::time::Instant;

const FOLDERS: [&str; 4] = ["contacts", "calendar", "tasks", "mail/inbox"];

fn settings() -> RuntimeSettings {
    RuntimeSettings {
        arbiters: 0,
        max_concurrent_starts: 4,
        step_retry: Backoff::new(Duration::from_secs(1), Duration::from_secs(60)),
        restart: Backoff::new(Duration::from_secs(1), Duration::from_secs(60)),
        denied_retry: Backoff::new(Duration::from_secs(300), Duration::from_secs(3600)),
        healthy_after: Duration::from_secs(300),
        stall_timeout: Duration::from_secs(60),
        max_resyncs: 2,
        stop_timeout: Duration::from_secs(30),
        stream: StreamSettings {
            renew_before: Duration::from_secs(60),
            heartbeat_timeout: Duration::from_secs(75),
            failures_before_polling: 3,
            retry: Backoff::new(Duration::from_secs(1), Duration::from_secs(30)),
            join_delay: Duration::from_millis(200),
            min_reopen: Duration::ZERO,
        },
        safety_read: None,
    }
}

fn server(id: &str, streaming: bool) -> ServerSpec {
    ServerSpec {
        id: id.into(),
        throttle: ThrottleSettings {
            requests_per_second: 10_000.0,
            burst: 10_000,
            max_concurrent: 100,
        },
        streaming,
        stream: ServerStreaming {
            group_size: 3,
            connection_timeout: Duration::from_secs(600),
            polling_interval: Duration::from_secs(60),
        },
    }
}

fn mailbox(n: usize, server: &str) -> MailboxSpec {
    MailboxSpec {
        smtp: format!("user{n}@example.com").into(),
        server: server.into(),
        fingerprint: 0,
    }
}

fn smtp(n: usize) -> String {
    format!("user{n}@example.com")
}

struct Rig {
    handle: SupervisorHandle,
    sync: Arc<FakeSync>,
    stream: Arc<FakeStream>,
    crm: Arc<FakeCrm>,
}

impl Rig {
    fn start(
        settings: RuntimeSettings,
        servers: Vec<ServerSpec>,
        mailboxes: Vec<MailboxSpec>,
    ) -> Rig {
        Rig::start_with(settings, servers, mailboxes, FakeSync::new(&FOLDERS))
    }

    fn start_with(
        settings: RuntimeSettings,
        servers: Vec<ServerSpec>,
        mailboxes: Vec<MailboxSpec>,
        sync: Arc<FakeSync>,
    ) -> Rig {
        let stream = FakeStream::new();
        let crm = FakeCrm::new();
        let ports = Ports {
            sync: sync.clone(),
            stream: stream.clone(),
            crm: Some(crm.clone()),
        };
        let handle =
            Supervisor::launch(settings, servers, mailboxes, ports, Metrics::unregistered())
                .unwrap();
        Rig {
            handle,
            sync,
            stream,
            crm,
        }
    }

    fn snapshot(&self, n: usize) -> MailboxSnapshot {
        self.handle
            .board
            .snapshot(&smtp(n))
            .expect("mailbox is registered")
    }

    async fn info(&self, n: usize) -> mailbox::MailboxInfo {
        let addr = self.handle.board.addr(&smtp(n)).expect("mailbox runs");
        addr.send(mailbox::GetStatus).await.unwrap()
    }

    async fn ready(&self) {
        let board = self.handle.board.clone();
        self.sync
            .wait_until("every mailbox is ready", |_| board.ready())
            .await;
    }

    /// Like `ready`, for tests on real time: gives up after `limit` and names the mailboxes
    /// that are not ready, with their state, so a hang on a loaded machine explains itself.
    async fn ready_within(&self, limit: Duration) {
        let board = self.handle.board.clone();
        let wait = self
            .sync
            .wait_until("every mailbox is ready", |_| board.ready());
        if tokio::time::timeout(limit, wait).await.is_err() {
            let stuck: Vec<String> = board
                .snapshots()
                .into_iter()
                .filter(|m| !m.first_step_done)
                .map(|m| format!("{m:?}"))
                .collect();
            panic!(
                "not ready after {limit:?}; {} steps ran; not ready: {stuck:#?}",
                self.sync.total_steps()
            );
        }
    }

    async fn trigger(&self, n: usize, folder: Option<&str>, cause: Cause) {
        let addr = self.handle.board.addr(&smtp(n)).expect("mailbox runs");
        addr.send(MailboxTrigger {
            folder: folder.map(Into::into),
            cause,
            full: false,
        })
        .await
        .unwrap();
    }

    async fn groups(&self) -> Vec<GroupRef> {
        self.handle
            .addr
            .send(supervisor::GetStatus)
            .await
            .unwrap()
            .groups
    }

    async fn group_status(&self, index: usize) -> stream_group::GroupStatus {
        let groups = self.groups().await;
        groups[index]
            .addr
            .send(stream_group::GetStatus)
            .await
            .unwrap()
    }

    fn metric(&self, name: &str, labels: &[&str]) -> f64 {
        let m = &self.handle.metrics;
        match name {
            "restarts" => m.restarts.with_label_values(labels).get() as f64,
            "steps" => m.steps.with_label_values(labels).get() as f64,
            "coalesced" => m.coalesced.with_label_values(labels).get() as f64,
            "mailboxes" => m.mailboxes.with_label_values(labels).get() as f64,
            "pauses" => m.throttle_pauses.with_label_values(labels).get() as f64,
            "reconnects" => m.stream_reconnects.with_label_values(labels).get() as f64,
            "groups" => m.stream_groups.with_label_values(labels).get() as f64,
            "initial_remaining" => m.initial_remaining.get() as f64,
            "initial_running" => m.initial_running.get() as f64,
            other => panic!("unknown metric {other}"),
        }
    }

    fn folder_status(&self, n: usize, folder: &str) -> FolderStatus {
        self.snapshot(n)
            .folders
            .into_iter()
            .find(|f| f.id.as_ref() == folder)
            .expect("folder is registered")
    }
}

async fn sleep(secs: u64) {
    tokio::time::sleep(Duration::from_secs(secs)).await;
}

#[actix_rt::test]
async fn every_mailbox_gets_its_folders_and_becomes_ready() {
    tokio::time::pause();
    let rig = Rig::start(
        settings(),
        vec![server("ex1", true)],
        (1..=5).map(|n| mailbox(n, "ex1")).collect(),
    );
    rig.ready().await;
    for n in 1..=5 {
        let snap = rig.snapshot(n);
        assert_eq!(snap.state, MailboxState::Running);
        assert_eq!(snap.folders.len(), 4);
        for folder in FOLDERS {
            assert_eq!(
                rig.sync.step_count(&smtp(n), folder),
                1,
                "{folder} of mailbox {n}"
            );
        }
        assert!(snap.last_sync.is_some());
    }
    assert_eq!(rig.metric("mailboxes", &["running"]), 5.0);
    assert_eq!(rig.metric("mailboxes", &["starting"]), 0.0);
}

#[actix_rt::test]
async fn a_failing_or_stalled_mailbox_does_not_delay_the_others() {
    tokio::time::pause();
    let sync = FakeSync::new(&FOLDERS);
    // Mailbox 1 cannot be opened; mailbox 2's opening hangs; mailbox 3's contacts step hangs.
    sync.script_open(
        &smtp(1),
        std::iter::repeat_n(Behaviour::Fail(SyncError::Failed("boom".into())), 50),
    );
    sync.script_open(&smtp(2), [Behaviour::Hang]);
    sync.script_step(&smtp(3), "contacts", [Behaviour::Hang]);
    let start = Instant::now();
    let rig = Rig::start_with(
        settings(),
        vec![server("ex1", true)],
        (1..=8).map(|n| mailbox(n, "ex1")).collect(),
        sync,
    );
    rig.sync
        .wait_until("mailboxes 4..8 synced every folder", |f| {
            (4..=8).all(|n| {
                FOLDERS
                    .iter()
                    .all(|folder| f.step_count(&smtp(n), folder) >= 1)
            })
        })
        .await;
    assert!(
        start.elapsed() < Duration::from_secs(10),
        "the healthy mailboxes waited {:?}",
        start.elapsed()
    );
    for n in 4..=8 {
        assert_eq!(rig.snapshot(n).state, MailboxState::Running);
    }
    // The stalled opening and the stalled folder are cancelled at the stall timeout.
    let board = rig.handle.board.clone();
    rig.sync
        .wait_until("mailbox 2 was reopened after its stall", |f| {
            f.opens(&smtp(2)) >= 2
        })
        .await;
    rig.sync
        .wait_until("mailbox 3's contacts restarted", |f| {
            f.step_count(&smtp(3), "contacts") >= 2
        })
        .await;
    assert!(start.elapsed() >= Duration::from_secs(60));
    assert_eq!(rig.metric("restarts", &["mailbox", "stall"]), 1.0);
    assert_eq!(rig.metric("restarts", &["folder", "stall"]), 1.0);
    assert!(board.snapshot(&smtp(1)).unwrap().restarts >= 1);
    assert!(rig.metric("restarts", &["mailbox", "error"]) >= 1.0);
    // Mailbox 3's other folders were never disturbed.
    let info = rig.info(3).await;
    let incarnations: Vec<Option<u64>> = info.folders.iter().map(|(_, i)| *i).collect();
    assert_eq!(incarnations, vec![Some(2), Some(1), Some(1), Some(1)]);
}

#[actix_rt::test]
async fn a_failed_mailbox_restarts_with_capped_exponential_back_off() {
    tokio::time::pause();
    let sync = FakeSync::new(&FOLDERS);
    sync.script_open(
        &smtp(1),
        std::iter::repeat_n(Behaviour::Fail(SyncError::Failed("no".into())), 8),
    );
    let rig = Rig::start_with(
        settings(),
        vec![server("ex1", true)],
        vec![mailbox(1, "ex1")],
        sync,
    );
    let board = rig.handle.board.clone();
    rig.sync
        .wait_until("nine openings", |f| f.opens(&smtp(1)) >= 9)
        .await;
    let times = rig.sync.open_times(&smtp(1));
    let gaps: Vec<u64> = times.windows(2).map(|w| (w[1] - w[0]).as_secs()).collect();
    // 1, 2, 4 … doubling, capped at 60 s.
    assert_eq!(gaps, vec![1, 2, 4, 8, 16, 32, 60, 60]);
    rig.sync
        .wait_until("running", |_| {
            board.snapshot(&smtp(1)).unwrap().state == MailboxState::Running
        })
        .await;
    let snap = rig.snapshot(1);
    assert_eq!(snap.state, MailboxState::Running);
    assert_eq!(snap.restarts, 8);
    assert_eq!(rig.metric("restarts", &["mailbox", "error"]), 8.0);
}

#[actix_rt::test]
async fn denied_access_fails_one_mailbox_and_retries_it_slowly() {
    tokio::time::pause();
    let sync = FakeSync::new(&FOLDERS);
    sync.script_open(
        &smtp(2),
        [Behaviour::Fail(SyncError::Denied(
            "ErrorImpersonateUserDenied".into(),
        ))],
    );
    sync.script_step(
        &smtp(3),
        "tasks",
        [Behaviour::Fail(SyncError::Denied("401".into()))],
    );
    let rig = Rig::start_with(
        settings(),
        vec![server("ex1", true)],
        (1..=3).map(|n| mailbox(n, "ex1")).collect(),
        sync,
    );
    rig.ready().await;
    for n in [2, 3] {
        let snap = rig.snapshot(n);
        assert_eq!(snap.state, MailboxState::Failed, "mailbox {n}");
        assert!(
            snap.last_error
                .as_deref()
                .unwrap()
                .contains("access denied"),
            "{:?}",
            snap.last_error
        );
        assert!(snap.next_retry.is_some());
    }
    assert_eq!(rig.snapshot(1).state, MailboxState::Running);
    assert_eq!(rig.metric("restarts", &["mailbox", "denied"]), 2.0);
    let opened = rig.sync.open_times(&smtp(2))[0];
    rig.sync
        .wait_until("mailbox 2 retried", |f| f.opens(&smtp(2)) >= 2)
        .await;
    assert_eq!((rig.sync.open_times(&smtp(2))[1] - opened).as_secs(), 300);
    rig.ready().await;
    let board = rig.handle.board.clone();
    rig.sync
        .wait_until("both recovered", |_| {
            [2, 3]
                .iter()
                .all(|n| board.snapshot(&smtp(*n)).unwrap().state == MailboxState::Running)
        })
        .await;
    // Mailbox 1 ran once and was never touched.
    assert_eq!(rig.sync.opens(&smtp(1)), 1);
    assert_eq!(rig.snapshot(1).restarts, 0);
}

#[actix_rt::test]
async fn a_failing_folder_restarts_alone_and_a_panic_is_caught() {
    tokio::time::pause();
    let sync = FakeSync::new(&FOLDERS);
    sync.script_step(
        &smtp(1),
        "calendar",
        [
            Behaviour::Fail(SyncError::Failed("bad row".into())),
            Behaviour::Panic,
        ],
    );
    let rig = Rig::start_with(
        settings(),
        vec![server("ex1", true)],
        vec![mailbox(1, "ex1")],
        sync,
    );
    rig.sync
        .wait_until("calendar ran three times", |f| {
            f.step_count(&smtp(1), "calendar") >= 3
        })
        .await;
    rig.ready().await;
    let info = rig.info(1).await;
    assert_eq!(info.generation, 1, "the mailbox itself was not restarted");
    let calendar = info
        .folders
        .iter()
        .find(|(f, _)| &**f == "calendar")
        .unwrap();
    assert_eq!(calendar.1, Some(3));
    for (folder, incarnation) in &info.folders {
        if &**folder != "calendar" {
            assert_eq!(*incarnation, Some(1), "{folder}");
            assert_eq!(rig.sync.step_count(&smtp(1), folder), 1, "{folder}");
        }
    }
    assert_eq!(rig.metric("restarts", &["folder", "error"]), 1.0);
    assert_eq!(rig.metric("restarts", &["folder", "panic"]), 1.0);
    assert_eq!(rig.metric("steps", &["panic"]), 1.0);
    let snap = rig.snapshot(1);
    assert_eq!(
        snap.folders
            .iter()
            .find(|f| &*f.id == "calendar")
            .unwrap()
            .restarts,
        2
    );
    assert_eq!(snap.restarts, 0);
}

#[actix_rt::test]
async fn transient_errors_retry_with_back_off_and_invalid_state_resyncs() {
    tokio::time::pause();
    let sync = FakeSync::new(&["contacts"]);
    let transient = Behaviour::Fail(SyncError::Transient("503".into()));
    sync.script_step(
        &smtp(1),
        "contacts",
        [transient.clone(), transient.clone(), transient],
    );
    let rig = Rig::start_with(
        settings(),
        vec![server("ex1", true)],
        vec![mailbox(1, "ex1")],
        sync,
    );
    rig.sync
        .wait_until("four steps", |f| f.step_count(&smtp(1), "contacts") >= 4)
        .await;
    let steps = rig.sync.steps_of(&smtp(1), "contacts");
    let gaps: Vec<u64> = steps
        .windows(2)
        .map(|w| (w[1].started - w[0].started).as_secs())
        .collect();
    assert_eq!(gaps, vec![1, 2, 4]);
    assert!(steps[3].committed.is_some());
    assert_eq!(rig.metric("steps", &["retry"]), 3.0);
    assert_eq!(rig.snapshot(1).restarts, 0);

    rig.sync.script_step(
        &smtp(1),
        "contacts",
        [Behaviour::Fail(SyncError::InvalidState(
            "ErrorInvalidSyncStateData".into(),
        ))],
    );
    rig.trigger(1, Some("contacts"), Cause::Notification).await;
    rig.sync
        .wait_until("the resync ran", |f| {
            f.step_count(&smtp(1), "contacts") >= 6
        })
        .await;
    let steps = rig.sync.steps_of(&smtp(1), "contacts");
    assert!(!steps[4].full);
    assert!(
        steps[5].full,
        "after an invalid sync state the folder resyncs from scratch"
    );
    assert_eq!(rig.metric("steps", &["resync"]), 1.0);
}

#[actix_rt::test]
async fn a_thousand_triggers_during_a_step_cause_exactly_one_more_step() {
    tokio::time::pause();
    let sync = FakeSync::new(&["contacts"]);
    let gate = Arc::new(Notify::new());
    let rig = Rig::start_with(
        settings(),
        vec![server("ex1", true)],
        vec![mailbox(1, "ex1")],
        sync,
    );
    rig.ready().await;
    rig.sync
        .script_step(&smtp(1), "contacts", [Behaviour::Gate(gate.clone())]);
    rig.trigger(1, Some("contacts"), Cause::Notification).await;
    rig.sync
        .wait_until("the gated step started", |f| {
            f.step_count(&smtp(1), "contacts") == 2
        })
        .await;
    for i in 0..1000 {
        let cause = if i % 2 == 0 {
            Cause::Crm
        } else {
            Cause::Notification
        };
        rig.trigger(1, Some("contacts"), cause).await;
    }
    assert_eq!(
        rig.sync.step_count(&smtp(1), "contacts"),
        2,
        "no step ran while the gated one did"
    );
    gate.notify_one();
    rig.sync
        .wait_until("one more step", |f| f.step_count(&smtp(1), "contacts") == 3)
        .await;
    sleep(600).await;
    assert_eq!(
        rig.sync.step_count(&smtp(1), "contacts"),
        3,
        "exactly one more step"
    );
    let coalesced = rig.metric("coalesced", &["crm"]) + rig.metric("coalesced", &["notification"]);
    assert_eq!(coalesced, 999.0);
}

#[actix_rt::test]
async fn a_server_busy_pause_holds_every_actor_of_that_server_only() {
    tokio::time::pause();
    let sync = FakeSync::new(&FOLDERS);
    let rig = Rig::start_with(
        settings(),
        vec![server("ex1", true), server("ex2", true)],
        vec![mailbox(1, "ex1"), mailbox(2, "ex1"), mailbox(3, "ex2")],
        sync,
    );
    rig.ready().await;
    rig.sync.script_step(
        &smtp(1),
        "contacts",
        [Behaviour::Fail(SyncError::Throttled {
            back_off: Duration::from_secs(30),
        })],
    );
    rig.trigger(1, Some("contacts"), Cause::Notification).await;
    rig.sync
        .wait_until("the throttled step ran", |f| {
            f.step_count(&smtp(1), "contacts") == 2
        })
        .await;
    let paused_at = Instant::now();
    for n in [1, 2, 3] {
        rig.trigger(n, None, Cause::Crm).await;
    }
    rig.sync
        .wait_until("every folder synced again", |f| {
            [1, 2, 3].iter().all(|n| {
                FOLDERS.iter().all(|folder| {
                    f.steps_of(&smtp(*n), folder)
                        .last()
                        .is_some_and(|s| s.committed.is_some() && s.started >= paused_at)
                })
            })
        })
        .await;
    for n in [1, 2, 3] {
        for folder in FOLDERS {
            let step = rig.sync.steps_of(&smtp(n), folder).last().cloned().unwrap();
            let waited = step.sent.unwrap() - paused_at;
            if n == 3 {
                assert!(
                    waited < Duration::from_secs(1),
                    "ex2 was paused too: {waited:?}"
                );
            } else {
                assert!(
                    waited >= Duration::from_secs(30),
                    "{folder} of mailbox {n} went out after {waited:?}"
                );
            }
        }
    }
    assert_eq!(rig.metric("pauses", &["ex1"]), 1.0);
    assert_eq!(rig.metric("pauses", &["ex2"]), 0.0);
}

#[actix_rt::test]
async fn an_absurd_back_off_pauses_at_most_the_cap_and_the_folder_goes_on() {
    tokio::time::pause();
    let sync = FakeSync::new(&FOLDERS);
    let rig = Rig::start_with(
        settings(),
        vec![server("ex1", true)],
        vec![mailbox(1, "ex1")],
        sync,
    );
    rig.ready().await;
    // 10^12 ms (about 31 years), as a broken or hostile server might say.
    rig.sync.script_step(
        &smtp(1),
        "contacts",
        [Behaviour::Fail(SyncError::Throttled {
            back_off: Duration::from_millis(1_000_000_000_000),
        })],
    );
    rig.trigger(1, Some("contacts"), Cause::Notification).await;
    rig.sync
        .wait_until("the throttled step ran", |f| {
            f.step_count(&smtp(1), "contacts") == 2
        })
        .await;
    let paused_at = Instant::now();
    rig.sync
        .wait_until("the folder synced again", |f| {
            f.steps_of(&smtp(1), "contacts")
                .last()
                .is_some_and(|s| s.committed.is_some() && s.started >= paused_at)
        })
        .await;
    let step = rig
        .sync
        .steps_of(&smtp(1), "contacts")
        .last()
        .cloned()
        .unwrap();
    let waited = step.sent.unwrap() - paused_at;
    assert!(
        waited >= mailsync_actors::throttle::MAX_PAUSE - Duration::from_secs(1)
            && waited <= mailsync_actors::throttle::MAX_PAUSE + Duration::from_secs(60),
        "the retry went out after {waited:?}"
    );
    assert_eq!(rig.metric("pauses", &["ex1"]), 1.0);
}

#[actix_rt::test]
async fn an_admin_restart_restarts_exactly_one_mailbox() {
    tokio::time::pause();
    let rig = Rig::start(
        settings(),
        vec![server("ex1", true)],
        (1..=4).map(|n| mailbox(n, "ex1")).collect(),
    );
    rig.ready().await;
    let before: Vec<_> = futures_util::future::join_all((1..=4).map(|n| rig.info(n))).await;
    let command = Command {
        smtp: smtp(2).into(),
        action: Action::Restart,
    };
    rig.handle.addr.send(command).await.unwrap().unwrap();
    rig.ready().await;
    let after: Vec<_> = futures_util::future::join_all((1..=4).map(|n| rig.info(n))).await;
    for n in [0, 2, 3] {
        assert_eq!(before[n], after[n], "mailbox {} was disturbed", n + 1);
        assert_eq!(rig.sync.opens(&smtp(n + 1)), 1);
    }
    assert!(after[1].generation > before[1].generation);
    assert_eq!(rig.sync.opens(&smtp(2)), 2);
    assert_eq!(rig.snapshot(2).restarts, 1);
    assert_eq!(rig.metric("restarts", &["mailbox", "admin"]), 1.0);

    let unknown = Command {
        smtp: "nobody@example.com".into(),
        action: Action::Restart,
    };
    let err = rig.handle.addr.send(unknown).await.unwrap().unwrap_err();
    assert_eq!(
        err.to_string(),
        "mailbox nobody@example.com is not configured"
    );
}

#[actix_rt::test]
async fn pause_holds_steps_and_resume_runs_one_for_everything_missed() {
    tokio::time::pause();
    let rig = Rig::start(
        settings(),
        vec![server("ex1", true)],
        vec![mailbox(1, "ex1")],
    );
    rig.ready().await;
    let cmd = |action| Command {
        smtp: smtp(1).into(),
        action,
    };
    rig.handle
        .addr
        .send(cmd(Action::Pause))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(rig.snapshot(1).state, MailboxState::Paused);
    for _ in 0..10 {
        rig.trigger(1, None, Cause::Crm).await;
    }
    sleep(60).await;
    assert_eq!(rig.sync.total_steps(), 4, "no step while paused");
    assert!(
        rig.snapshot(1).lag >= Duration::from_secs(60),
        "lag shows the waiting triggers"
    );
    rig.handle
        .addr
        .send(cmd(Action::Resume))
        .await
        .unwrap()
        .unwrap();
    rig.sync
        .wait_until("one step per folder", |f| f.total_steps() == 8)
        .await;
    sleep(60).await;
    assert_eq!(rig.sync.total_steps(), 8);
    assert_eq!(rig.snapshot(1).state, MailboxState::Running);
    assert_eq!(rig.snapshot(1).lag, Duration::ZERO);

    rig.handle
        .addr
        .send(cmd(Action::Resync))
        .await
        .unwrap()
        .unwrap();
    rig.sync
        .wait_until("a full resync of every folder", |f| f.total_steps() == 12)
        .await;
    assert!(rig.sync.steps().iter().skip(8).all(|s| s.full));

    // "sync": one step in every folder, from the stored state (no resync).
    rig.handle
        .addr
        .send(cmd(Action::Sync))
        .await
        .unwrap()
        .unwrap();
    rig.sync
        .wait_until("one more step per folder", |f| f.total_steps() == 16)
        .await;
    assert!(rig.sync.steps().iter().skip(12).all(|s| !s.full));
    assert_eq!(Action::parse("sync"), Some(Action::Sync));
}

#[actix_rt::test]
async fn crm_changes_trigger_the_folder_they_concern() {
    tokio::time::pause();
    let rig = Rig::start(
        settings(),
        vec![server("ex1", true)],
        (1..=2).map(|n| mailbox(n, "ex1")).collect(),
    );
    rig.ready().await;
    rig.crm.push(&smtp(2), "tasks");
    rig.crm.push(&smtp(2), "tasks");
    rig.sync
        .wait_until("tasks of mailbox 2 synced", |f| {
            f.step_count(&smtp(2), "tasks") == 2
        })
        .await;
    sleep(10).await;
    assert_eq!(rig.sync.total_steps(), 9, "only that folder, once");
}

#[actix_rt::test]
async fn streams_renew_before_the_timeout_without_a_gap() {
    tokio::time::pause();
    let rig = Rig::start(
        settings(),
        vec![server("ex1", true)],
        (1..=3).map(|n| mailbox(n, "ex1")).collect(),
    );
    rig.ready().await;
    rig.stream
        .wait_until("one connection", |s| s.open_connections() == 1)
        .await;
    let first = rig.stream.connections()[0].clone();
    assert_eq!(first.subscriptions.len(), 3);
    assert_eq!(first.timeout, Duration::from_secs(600));
    // Notifications reach the folder they name.
    assert!(rig.stream.notify(&smtp(2), "calendar"));
    rig.sync
        .wait_until("calendar synced", |f| {
            f.step_count(&smtp(2), "calendar") == 2
        })
        .await;
    let steps_before = rig.sync.total_steps();
    rig.stream
        .wait_until("a second connection", |s| s.connections().len() == 2)
        .await;
    let second = rig.stream.connections()[1].clone();
    assert_eq!(
        (second.opened - first.opened).as_secs(),
        540,
        "renewed a minute before the timeout"
    );
    sleep(3600).await;
    assert_eq!(
        rig.sync.total_steps(),
        steps_before,
        "renewal is not a gap: no resync"
    );
    assert_eq!(
        rig.stream.subscribes(),
        3,
        "subscriptions are kept across renewals"
    );
    assert!(rig.metric("reconnects", &["ex1", "renewal"]) >= 6.0);
    assert_eq!(rig.metric("reconnects", &["ex1", "lost"]), 0.0);
}

#[actix_rt::test]
async fn an_old_connection_closed_by_its_successor_is_no_gap() {
    tokio::time::pause();
    let rig = Rig::start(
        settings(),
        vec![server("ex1", true)],
        (1..=3).map(|n| mailbox(n, "ex1")).collect(),
    );
    rig.ready().await;
    rig.stream.take_over();
    let steps = rig.sync.total_steps();
    rig.stream
        .wait_until("two renewals", |s| {
            assert!(s.connections().len() < 10, "reconnect storm");
            s.connections().len() >= 3
        })
        .await;
    sleep(60).await;
    assert_eq!(rig.sync.total_steps(), steps, "no resync");
    assert_eq!(rig.metric("reconnects", &["ex1", "lost"]), 0.0);
    assert_eq!(rig.stream.open_connections(), 1);
}

#[actix_rt::test]
async fn a_replaced_connection_is_still_read_until_it_ends() {
    tokio::time::pause();
    let rig = Rig::start(
        settings(),
        vec![server("ex1", true)],
        vec![mailbox(1, "ex1")],
    );
    rig.ready().await;
    rig.stream
        .wait_until("a renewal", |s| s.connections().len() == 2)
        .await;
    // Exchange sent this on the old connection before the new one took over.
    let steps = rig.sync.step_count(&smtp(1), "calendar");
    assert!(rig.stream.notify_on(0, &smtp(1), "calendar"));
    rig.sync
        .wait_until("the old connection's notification synced", |f| {
            f.step_count(&smtp(1), "calendar") == steps + 1
        })
        .await;
    // A while later the old connection is let go.
    sleep(11).await;
    assert!(!rig.stream.notify_on(0, &smtp(1), "calendar"));
    assert_eq!(rig.stream.open_connections(), 1);
}

#[actix_rt::test]
async fn mailboxes_joining_a_live_connection_are_gathered_onto_one_new_connection() {
    tokio::time::pause();
    let mut s = settings();
    s.stream.min_reopen = Duration::from_secs(5);
    let mut ex1 = server("ex1", true);
    ex1.stream.group_size = 10;
    let rig = Rig::start(
        s,
        vec![ex1.clone()],
        (1..=2).map(|n| mailbox(n, "ex1")).collect(),
    );
    rig.ready().await;
    rig.stream
        .wait_until("one connection", |s| s.open_connections() == 1)
        .await;
    let first = rig.stream.connections()[0].clone();
    // Two more mailboxes join, a second apart, soon after the connection opened.
    for n in 3..=4 {
        let reload = Reload {
            servers: vec![ex1.clone()],
            mailboxes: (1..=n).map(|m| mailbox(m, "ex1")).collect(),
        };
        rig.handle.addr.send(reload).await.unwrap().unwrap();
        sleep(1).await;
    }
    rig.ready().await;
    rig.stream
        .wait_until("a second connection", |s| s.connections().len() >= 2)
        .await;
    sleep(30).await;
    let all = rig.stream.connections();
    assert_eq!(all.len(), 2, "one new connection for both joins: {all:?}");
    assert_eq!(all[1].subscriptions.len(), 4);
    assert!(
        all[1].opened - first.opened >= Duration::from_secs(5),
        "not replaced sooner than min_reopen"
    );
}

#[actix_rt::test]
async fn a_stream_gap_resyncs_every_folder_of_the_group_and_lost_subscriptions_come_back() {
    tokio::time::pause();
    let rig = Rig::start(
        settings(),
        vec![server("ex1", true)],
        (1..=5).map(|n| mailbox(n, "ex1")).collect(),
    );
    rig.ready().await;
    // Group size 3: two groups, two connections.
    rig.stream
        .wait_until("two connections", |s| s.open_connections() == 2)
        .await;
    let groups = rig.groups().await;
    assert_eq!(
        groups.iter().map(|g| g.members.len()).collect::<Vec<_>>(),
        vec![3, 2]
    );
    let before = rig.sync.total_steps();
    rig.stream.drop_connection(); // the newest: the group of mailboxes 4 and 5
    rig.sync
        .wait_until("every folder of the group synced", |f| {
            f.total_steps() == before + 8
        })
        .await;
    for n in [4, 5] {
        for folder in FOLDERS {
            assert_eq!(
                rig.sync.step_count(&smtp(n), folder),
                2,
                "{folder} of mailbox {n}"
            );
        }
    }
    for n in 1..=3 {
        assert_eq!(
            rig.sync.step_count(&smtp(n), "contacts"),
            1,
            "mailbox {n} is in the other group"
        );
    }
    rig.stream
        .wait_until("reconnected", |s| s.open_connections() == 2)
        .await;
    assert!(rig.metric("reconnects", &["ex1", "failed"]) >= 1.0);

    // A lost subscription: resubscribed, and that mailbox resyncs.
    let before = rig.sync.total_steps();
    let subscribes = rig.stream.subscribes();
    assert!(rig.stream.lose_subscription(&smtp(5)));
    rig.sync
        .wait_until("mailbox 5 resynced", |f| f.total_steps() == before + 4)
        .await;
    assert_eq!(rig.stream.subscribes(), subscribes + 1);
    assert_eq!(rig.sync.step_count(&smtp(5), "contacts"), 3);
    assert!(
        rig.stream.notify(&smtp(5), "contacts"),
        "the new subscription is on the live connection"
    );
    rig.sync
        .wait_until("notification for the new subscription", |f| {
            f.step_count(&smtp(5), "contacts") == 4
        })
        .await;
}

#[actix_rt::test]
async fn a_silent_connection_counts_as_lost() {
    tokio::time::pause();
    let rig = Rig::start(
        settings(),
        vec![server("ex1", true)],
        vec![mailbox(1, "ex1")],
    );
    rig.stream.silence_heartbeats();
    rig.ready().await;
    rig.stream
        .wait_until("connected", |s| s.open_connections() == 1)
        .await;
    let before = rig.sync.total_steps();
    // No heartbeat for 75 s: reconnect and resync.
    rig.sync
        .wait_until("resynced after the silence", |f| {
            f.total_steps() == before + 4
        })
        .await;
    assert!(rig.stream.connections().len() >= 2);
}

#[actix_rt::test]
async fn streaming_that_keeps_failing_falls_back_to_polling_and_comes_back() {
    tokio::time::pause();
    let rig = Rig::start(
        settings(),
        vec![server("ex1", true)],
        vec![mailbox(1, "ex1")],
    );
    rig.stream
        .fail_next_connects(6, SyncError::Transient("connection refused".into()));
    rig.ready().await;
    rig.stream
        .wait_until("three failed attempts", |s| s.connects_attempted() >= 3)
        .await;
    assert_eq!(rig.group_status(0).await.mode, "polling");
    assert_eq!(rig.metric("groups", &["ex1", "polling"]), 1.0);
    // Polled every 60 s while not streaming.
    let steps = rig.sync.total_steps();
    sleep(61).await;
    assert!(
        rig.sync.total_steps() >= steps + 4,
        "polling ran every folder"
    );
    rig.stream
        .wait_until("streaming again", |s| s.open_connections() == 1)
        .await;
    let status = rig.group_status(0).await;
    assert_eq!(status.mode, "streaming");
    assert_eq!(status.failures, 0);
    assert_eq!(rig.metric("groups", &["ex1", "streaming"]), 1.0);
    // Covered by a stream again: no more polling.
    let steps = rig.sync.total_steps();
    sleep(600).await;
    assert_eq!(rig.sync.total_steps(), steps);
}

#[actix_rt::test]
async fn with_streaming_off_every_folder_is_polled() {
    tokio::time::pause();
    let rig = Rig::start(
        settings(),
        vec![server("ex1", false)],
        vec![mailbox(1, "ex1")],
    );
    rig.ready().await;
    sleep(181).await;
    assert_eq!(
        rig.sync.step_count(&smtp(1), "contacts"),
        4,
        "start + three polls"
    );
    assert_eq!(rig.stream.subscribes(), 0);
    assert_eq!(rig.stream.connects_attempted(), 0);
}

#[actix_rt::test]
async fn each_server_groups_and_polls_by_its_own_streaming_settings() {
    tokio::time::pause();
    // ex1 streams in groups of 2; ex2 cannot stream and polls every 20 s, in groups of 5;
    // ex3 polls every 90 s.
    let mut ex1 = server("ex1", true);
    ex1.stream.group_size = 2;
    let mut ex2 = server("ex2", false);
    ex2.stream.group_size = 5;
    ex2.stream.polling_interval = Duration::from_secs(20);
    let mut ex3 = server("ex3", false);
    ex3.stream.polling_interval = Duration::from_secs(90);
    let mut mailboxes: Vec<MailboxSpec> = (1..=4).map(|n| mailbox(n, "ex1")).collect();
    mailboxes.extend((5..=10).map(|n| mailbox(n, "ex2")));
    mailboxes.push(mailbox(11, "ex3"));
    let rig = Rig::start(settings(), vec![ex1, ex2, ex3], mailboxes);
    rig.ready().await;
    let sizes = |server: &str, groups: &[GroupRef]| -> Vec<usize> {
        groups
            .iter()
            .filter(|g| &*g.server == server)
            .map(|g| g.members.len())
            .collect()
    };
    let groups = rig.groups().await;
    assert_eq!(sizes("ex1", &groups), vec![2, 2]);
    assert_eq!(sizes("ex2", &groups), vec![5, 1]);
    assert_eq!(sizes("ex3", &groups), vec![1]);
    let polled = |n: usize| rig.sync.step_count(&smtp(n), "contacts");
    sleep(181).await;
    assert_eq!(polled(5), 1 + 9, "ex2: start + a poll every 20 s");
    assert_eq!(polled(10), 1 + 9, "ex2's second group polls alike");
    assert_eq!(polled(11), 1 + 2, "ex3: start + a poll every 90 s");
    assert_eq!(polled(1), 1, "ex1 streams: no polling");
}

#[actix_rt::test]
async fn reload_adds_removes_and_restarts_only_changed_mailboxes() {
    tokio::time::pause();
    let rig = Rig::start(
        settings(),
        vec![server("ex1", true)],
        (1..=3).map(|n| mailbox(n, "ex1")).collect(),
    );
    rig.ready().await;
    let kept = rig.info(1).await;
    let mut changed = mailbox(2, "ex1");
    changed.fingerprint = 42;
    let reload = Reload {
        servers: vec![server("ex1", true)],
        mailboxes: vec![mailbox(1, "ex1"), changed, mailbox(4, "ex1")],
    };
    let report = rig.handle.addr.send(reload).await.unwrap().unwrap();
    assert_eq!(report.added, vec![MailboxId::from(smtp(4))]);
    assert_eq!(report.removed, vec![MailboxId::from(smtp(3))]);
    assert_eq!(report.changed, vec![MailboxId::from(smtp(2))]);
    assert_eq!(report.unchanged, 1);
    rig.ready().await;
    assert_eq!(
        rig.info(1).await,
        kept,
        "an unchanged mailbox keeps its actors"
    );
    assert!(
        rig.info(2).await.generation > 1,
        "a changed mailbox restarts"
    );
    assert_eq!(rig.sync.opens(&smtp(4)), 1);
    assert!(rig.handle.board.snapshot(&smtp(3)).is_none());
    assert_eq!(rig.handle.board.len(), 3);
    assert_eq!(rig.metric("mailboxes", &["running"]), 3.0);

    let bad = Reload {
        servers: vec![server("ex1", true)],
        mailboxes: vec![mailbox(1, "nowhere")],
    };
    let err = rig.handle.addr.send(bad).await.unwrap().unwrap_err();
    assert_eq!(
        err.to_string(),
        "mailbox user1@example.com uses server nowhere, which is not configured"
    );
    assert_eq!(
        rig.handle.board.len(),
        3,
        "a rejected reload changes nothing"
    );
}

#[actix_rt::test]
async fn shutdown_lets_running_steps_commit() {
    tokio::time::pause();
    let rig = Rig::start(
        settings(),
        vec![server("ex1", true)],
        (1..=2).map(|n| mailbox(n, "ex1")).collect(),
    );
    rig.ready().await;
    rig.sync.script_step(
        &smtp(1),
        "contacts",
        [Behaviour::Delay(Duration::from_secs(10))],
    );
    rig.trigger(1, Some("contacts"), Cause::Crm).await;
    rig.sync
        .wait_until("the slow step started", |f| {
            f.step_count(&smtp(1), "contacts") == 2
        })
        .await;
    let start = Instant::now();
    within("shutdown", rig.handle.addr.send(Shutdown))
        .await
        .unwrap();
    assert!(
        start.elapsed() >= Duration::from_secs(9),
        "shutdown waited for the step"
    );
    let step = rig
        .sync
        .steps_of(&smtp(1), "contacts")
        .last()
        .cloned()
        .unwrap();
    assert!(
        step.committed.is_some(),
        "the running step committed before shutdown finished"
    );
    for n in [1, 2] {
        assert_eq!(rig.snapshot(n).state, MailboxState::Stopped);
    }
    assert_eq!(rig.metric("mailboxes", &["stopped"]), 2.0);
}

#[actix_rt::test]
async fn shutdown_cancels_a_hung_step_after_the_stop_timeout() {
    tokio::time::pause();
    let rig = Rig::start(
        settings(),
        vec![server("ex1", true)],
        vec![mailbox(1, "ex1")],
    );
    rig.ready().await;
    rig.sync.script_step(
        &smtp(1),
        "contacts",
        [Behaviour::Gate(Arc::new(Notify::new()))],
    );
    rig.trigger(1, Some("contacts"), Cause::Crm).await;
    rig.sync
        .wait_until("the gated step started", |f| {
            f.step_count(&smtp(1), "contacts") == 2
        })
        .await;
    let start = Instant::now();
    within("shutdown", rig.handle.addr.send(Shutdown))
        .await
        .unwrap();
    let waited = start.elapsed();
    assert!(
        waited >= Duration::from_secs(30) && waited < Duration::from_secs(31),
        "{waited:?}"
    );
}

#[test]
fn mailboxes_spread_over_arbiters_in_real_time() {
    actix_rt::System::new().block_on(async {
        let mut s = settings();
        s.arbiters = 3;
        let rig = Rig::start(
            s,
            vec![server("ex1", true)],
            (1..=12).map(|n| mailbox(n, "ex1")).collect(),
        );
        rig.ready_within(Duration::from_secs(120)).await;
        let status = rig.handle.addr.send(supervisor::GetStatus).await.unwrap();
        assert_eq!(status.arbiters, 3);
        assert_eq!(rig.sync.total_steps(), 48);
        rig.handle.addr.send(Shutdown).await.unwrap();
    });
}

#[actix_rt::test]
async fn a_stream_group_that_dies_is_replaced_and_its_mailboxes_are_never_left_silent() {
    tokio::time::pause();
    let mut s = settings();
    // Streaming is retried 400 s after a third death in a row (capped at 600 s).
    s.restart = Backoff::new(Duration::from_secs(100), Duration::from_secs(600));
    let mut ex1 = server("ex1", true);
    ex1.stream.polling_interval = Duration::from_secs(20);
    let rig = Rig::start(s, vec![ex1], (1..=2).map(|n| mailbox(n, "ex1")).collect());
    rig.ready().await;
    rig.stream
        .wait_until("one connection", |s| s.open_connections() == 1)
        .await;
    let first = rig.groups().await[0].addr.clone();
    let all_steps = |rig: &Rig| -> Vec<u64> {
        (1..=2)
            .flat_map(|n| FOLDERS.map(|f| rig.sync.step_count(&smtp(n), f)))
            .collect()
    };
    let steps_before = all_steps(&rig);

    // The connection drops; the one that replaces it panics inside the group actor.
    rig.stream.panic_next_connects(1);
    rig.stream.drop_connection();
    rig.stream
        .wait_until("a new group streams for both mailboxes", |s| {
            s.pending_panics() == 0 && s.connections().len() == 2 && s.open_connections() == 1
        })
        .await;
    assert_eq!(rig.metric("restarts", &["stream_group", "panic"]), 1.0);
    let groups = rig.groups().await;
    assert_eq!(groups.len(), 1);
    assert!(groups[0].addr != first, "a new group actor");
    assert!(!first.connected(), "the old one is gone");
    let status = rig.group_status(0).await;
    assert_eq!((status.members, status.covered), (2, 2));
    assert_eq!(status.mode, "streaming");
    assert_eq!(rig.metric("groups", &["ex1", "streaming"]), 1.0, "gauges");
    // Nothing was heard while no group watched: every folder of both mailboxes synced again.
    rig.sync
        .wait_until("every folder synced after the rejoin", |_| {
            all_steps(&rig)
                .iter()
                .zip(&steps_before)
                .all(|(now, before)| now > before)
        })
        .await;
    // Notifications reach the members through the new group.
    let steps = rig.sync.step_count(&smtp(1), "contacts");
    assert!(rig.stream.notify(&smtp(1), "contacts"));
    rig.sync
        .wait_until("the notification synced contacts", |f| {
            f.step_count(&smtp(1), "contacts") == steps + 1
        })
        .await;

    // A group that keeps dying gives up streaming for polling: its mailboxes are polled.
    rig.stream.panic_next_connects(2);
    rig.stream.drop_connection();
    rig.stream
        .wait_until("two more deaths", |s| s.pending_panics() == 0)
        .await;
    sleep(1).await;
    assert_eq!(rig.metric("restarts", &["stream_group", "panic"]), 3.0);
    let status = rig.group_status(0).await;
    assert_eq!((status.mode, status.members), ("polling", 2));
    assert_eq!(rig.metric("groups", &["ex1", "polling"]), 1.0);
    assert_eq!(rig.metric("groups", &["ex1", "streaming"]), 0.0);
    let polled = rig.sync.step_count(&smtp(2), "calendar");
    sleep(21).await;
    assert_eq!(
        rig.sync.step_count(&smtp(2), "calendar"),
        polled + 1,
        "a polling-only group polls every 20 s"
    );
    // After the restart back-off it streams again.
    rig.stream
        .wait_until("streaming again", |s| s.open_connections() == 1)
        .await;
    sleep(1).await;
    let status = rig.group_status(0).await;
    assert_eq!((status.mode, status.covered), ("streaming", 2));
    assert_eq!(rig.metric("groups", &["ex1", "polling"]), 0.0);
    assert_eq!(rig.metric("groups", &["ex1", "streaming"]), 1.0);
}

#[actix_rt::test]
async fn a_step_can_ask_for_a_wake_up_and_the_safety_read_comes_without_any_trigger() {
    tokio::time::pause();
    let sync = FakeSync::new(&FOLDERS);
    // The contacts step parks an item and wants to retry it in two minutes.
    sync.script_step(
        &smtp(1),
        "contacts",
        [Behaviour::Report(StepReport {
            items: 0,
            wake_in: Some(Duration::from_secs(120)),
            ..StepReport::default()
        })],
    );
    let mut with_safety = settings();
    with_safety.safety_read = Some(Duration::from_secs(3600));
    let rig = Rig::start_with(
        with_safety,
        vec![server("ex1", true)],
        vec![mailbox(1, "ex1")],
        sync,
    );
    rig.ready().await;
    // Nothing triggers anything from here on: only timers can cause steps.
    sleep(110).await;
    assert_eq!(rig.sync.step_count(&smtp(1), "contacts"), 1);
    sleep(20).await;
    assert_eq!(
        rig.sync.step_count(&smtp(1), "contacts"),
        2,
        "the step asked to be woken after 120s"
    );
    // The safety read is jittered to between half and one and a half of its period.
    sleep(29 * 60 - 130).await;
    for folder in FOLDERS {
        let expected = if folder == "contacts" { 2 } else { 1 };
        assert_eq!(
            rig.sync.step_count(&smtp(1), folder),
            expected,
            "{folder} before half the safety period"
        );
    }
    sleep(62 * 60).await;
    for folder in FOLDERS {
        let floor = if folder == "contacts" { 3 } else { 2 };
        assert!(
            rig.sync.step_count(&smtp(1), folder) >= floor,
            "{folder} had no safety read after 91 minutes"
        );
    }
    assert!(rig.metric("steps", &["ok"]) >= 9.0);

    // Without a safety period a quiet folder is never read again.
    let quiet = Rig::start(
        settings(),
        vec![server("ex1", true)],
        vec![mailbox(2, "ex1")],
    );
    quiet.ready().await;
    sleep(5 * 3600).await;
    for folder in FOLDERS {
        assert_eq!(quiet.sync.step_count(&smtp(2), folder), 1, "{folder}");
    }
}

#[actix_rt::test]
async fn held_deletes_and_initial_sync_progress_show_on_the_status_and_gauges() {
    tokio::time::pause();
    let sync = FakeSync::new(&FOLDERS);
    let gate = Arc::new(Notify::new());
    sync.script_step(
        &smtp(1),
        "contacts",
        [Behaviour::Progress(40, 100, gate.clone())],
    );
    sync.script_step(
        &smtp(1),
        "calendar",
        [Behaviour::Report(StepReport {
            held: 3,
            ..StepReport::default()
        })],
    );
    let rig = Rig::start_with(
        settings(),
        vec![server("ex1", true)],
        vec![mailbox(1, "ex1")],
        sync,
    );
    let board = rig.handle.board.clone();
    rig.sync
        .wait_until("contacts reports its progress", |_| {
            board.snapshot(&smtp(1)).is_some_and(|m| {
                m.folders
                    .iter()
                    .any(|f| f.id.as_ref() == "contacts" && f.progress == Some((40, 100)))
            })
        })
        .await;
    assert_eq!(rig.metric("initial_remaining", &[]), 60.0);
    assert_eq!(rig.metric("initial_running", &[]), 1.0);
    assert!(!board.ready(), "a folder still importing is not ready");
    rig.sync
        .wait_until("calendar ran", |f| f.step_count(&smtp(1), "calendar") >= 1)
        .await;
    sleep(1).await;
    assert_eq!(rig.folder_status(1, "calendar").held, 3);

    // The page ends with more to do; the next step finishes the import.
    gate.notify_one();
    rig.ready().await;
    assert_eq!(rig.sync.step_count(&smtp(1), "contacts"), 2);
    assert_eq!(rig.folder_status(1, "contacts").progress, None);
    assert_eq!(rig.metric("initial_remaining", &[]), 0.0);
    assert_eq!(rig.metric("initial_running", &[]), 0.0);

    // The next calendar step decides nothing is held any more.
    rig.trigger(1, Some("calendar"), Cause::Crm).await;
    rig.sync
        .wait_until("calendar ran again", |f| {
            f.step_count(&smtp(1), "calendar") >= 2
        })
        .await;
    sleep(1).await;
    assert_eq!(rig.folder_status(1, "calendar").held, 0);
}

#[actix_rt::test]
async fn a_mailbox_keeps_its_start_slot_until_its_initial_sync_is_done() {
    tokio::time::pause();
    let sync = FakeSync::new(&FOLDERS);
    // Each mailbox's contacts import takes two pages, each waiting for its gate.
    let gates: Vec<[Arc<Notify>; 2]> = (0..2)
        .map(|_| [Arc::new(Notify::new()), Arc::new(Notify::new())])
        .collect();
    for (n, pages) in [1, 2].into_iter().zip(&gates) {
        sync.script_step(
            &smtp(n),
            "contacts",
            [
                Behaviour::Progress(1, 1000, pages[0].clone()),
                Behaviour::Progress(500, 1000, pages[1].clone()),
            ],
        );
    }
    let mut one_start = settings();
    one_start.max_concurrent_starts = 1;
    one_start.stall_timeout = Duration::from_secs(3600);
    let rig = Rig::start_with(
        one_start,
        vec![server("ex1", true)],
        vec![mailbox(1, "ex1"), mailbox(2, "ex1")],
        sync,
    );
    rig.sync
        .wait_until("one mailbox is importing", |f| {
            f.step_count(&smtp(1), "contacts") + f.step_count(&smtp(2), "contacts") >= 1
        })
        .await;
    let (first, second) = if rig.sync.step_count(&smtp(1), "contacts") == 1 {
        (1, 2)
    } else {
        (2, 1)
    };
    // Long after every other folder of the first mailbox finished, the second still waits.
    sleep(600).await;
    assert_eq!(
        rig.sync.opens(&smtp(second)),
        0,
        "the second mailbox opened"
    );
    // The first page ends with more to do: the import is not finished, the slot stays.
    gates[first - 1][0].notify_one();
    rig.sync
        .wait_until("the second page runs", |f| {
            f.step_count(&smtp(first), "contacts") == 2
        })
        .await;
    sleep(600).await;
    assert_eq!(
        rig.sync.opens(&smtp(second)),
        0,
        "the second mailbox opened while the first one still imported"
    );
    assert!(!rig.snapshot(first).first_step_done);
    gates[first - 1][1].notify_one();
    rig.sync
        .wait_until("the second mailbox opens", |f| f.opens(&smtp(second)) == 1)
        .await;
    assert!(rig.snapshot(first).first_step_done);
    gates[second - 1][0].notify_one();
    gates[second - 1][1].notify_one();
    rig.ready().await;
}
