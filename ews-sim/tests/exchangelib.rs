//! Interoperability: exchangelib (the most used EWS client, unchanged from PyPI) against an
//! in-process ews-sim — the shared probe in delegate mode (on the account's own mailbox, and on
//! another's with full access) and impersonation mode, and our own
//! scenarios — and every request and response of those runs validated against the official
//! schema. Under CI=true, a missing exchangelib or validator fails the test.

use std::path::{Path, PathBuf};
use std::process::Command;

use ews_sim::server::{self, SimConfig};

fn python_has(module: &str) -> bool {
    Command::new("python3")
        .args(["-c", &format!("import {module}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

fn run(script: &Path, args: &[&str]) -> String {
    let out = Command::new("python3")
        .arg(script)
        .args(args)
        .output()
        .expect("python3 runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && text.contains("ALL OK"),
        "{} {args:?} failed:\n{text}",
        script.display()
    );
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exchangelib_works_and_every_message_is_schema_valid() {
    if !python_has("exchangelib") {
        mailsync_testkit::require::missing(
            "python3 with exchangelib 5.6.0 (pip install -r .ci/requirements.txt)",
        );
        return;
    }
    let Some(schema) = mailsync_testkit::schema::dir() else {
        mailsync_testkit::require::missing(
            "../shared/ews-schema (exchangelib_probe.py, validate.py)",
        );
        return;
    };
    let record = tempfile::tempdir().unwrap();
    let sim = server::start(SimConfig {
        mailboxes: 3,
        record: Some(record.path().to_path_buf()),
        // A delegate account with full access to user1's mailbox only.
        users: vec![server::UserSpec {
            smtp: "assistant@example.com".into(),
            password: "pw".into(),
            display_name: Some("Assistant".into()),
            impersonation: false,
            full_access: vec!["user1@example.com".into()],
        }],
        ..SimConfig::default()
    })
    .await
    .unwrap();
    let url = sim.ews_url();
    let base = sim.base_url();
    let probe = schema.join("exchangelib_probe.py");
    let scenarios = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/exchangelib_scenarios.py");
    let (u, b) = (url.clone(), base.clone());
    let outputs = tokio::task::spawn_blocking(move || {
        vec![
            run(
                &probe,
                &[
                    "--url",
                    &u,
                    "--user",
                    "user1@example.com",
                    "--password",
                    "password",
                    "--mailbox",
                    "user1@example.com",
                ],
            ),
            // Delegate (full) access to another user's mailbox.
            run(
                &probe,
                &[
                    "--url",
                    &u,
                    "--user",
                    "assistant@example.com",
                    "--password",
                    "pw",
                    "--mailbox",
                    "user1@example.com",
                ],
            ),
            run(
                &probe,
                &[
                    "--url",
                    &u,
                    "--user",
                    "svc",
                    "--password",
                    "secret",
                    "--mailbox",
                    "user2@example.com",
                    "--impersonation",
                ],
            ),
            run(
                &scenarios,
                &[
                    "--base",
                    &b,
                    "--user",
                    "svc",
                    "--password",
                    "secret",
                    "--mailbox",
                    "user3@example.com",
                    "--impersonation",
                ],
            ),
        ]
    })
    .await
    .unwrap();
    for o in &outputs {
        assert!(!o.contains("FAIL"), "{o}");
    }
    sim.stop().await;

    let files: Vec<PathBuf> = std::fs::read_dir(record.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    let responses = files
        .iter()
        .filter(|p| p.to_string_lossy().ends_with("-response.xml"))
        .count();
    assert!(responses > 50, "only {responses} responses recorded");
    assert!(
        files
            .iter()
            .any(|p| p.to_string_lossy().contains("-GetStreamingEvents-response")),
        "streaming responses are recorded too"
    );
    // Not strict: GetStreamingEvents carries m:Notification, the wire form real Exchange sends.
    match mailsync_testkit::schema::validate(&files, false) {
        Ok(Some(out)) => assert_eq!(
            out.lines().filter(|l| l.ends_with(": ok")).count(),
            files.len(),
            "{out}"
        ),
        Ok(None) => {}
        Err(out) => panic!(
            "recorded messages do not validate:\n{}",
            out.lines()
                .filter(|l| !l.ends_with(": ok"))
                .collect::<Vec<_>>()
                .join("\n")
        ),
    }
}
