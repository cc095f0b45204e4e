//! `mailsync check-config` as a user runs it: the real binary, exit codes, stdout and stderr.

use std::process::Command;

fn mailsync() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_mailsync"));
    // A clean environment for the overrides, so the developer's shell cannot change the outcome.
    for var in [
        "MAILSYNC_DATABASE_URL",
        "MAILSYNC_STATE_URL",
        "MAILSYNC_ADMIN_LISTEN",
        "MAILSYNC_ADMIN_TOKEN",
        "MAILSYNC_LOG_FORMAT",
        "MAILSYNC_LOG_LEVEL",
    ] {
        cmd.env_remove(var);
    }
    cmd
}

#[test]
fn example_config_is_valid_and_summarised() {
    let out = mailsync()
        .args(["check-config", "--config"])
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/config/mailsync.example.toml"
        ))
        .env("MAILSYNC_ADMIN_TOKEN", "a-long-enough-admin-token")
        .env(
            "MAILSYNC_CRM_DATABASE_URL",
            "postgres://crm:crm-db-password@db/crm",
        )
        .env("MAILSYNC_ONPREM_PASSWORD", "onprem-password")
        .env("MAILSYNC_ONLINE_CLIENT_SECRET", "online-secret")
        .env("MAILSYNC_SMTP_PASSWORD", "smtp-password")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(0),
        "stdout:\n{stdout}\nstderr:\n{stderr}"
    );
    assert!(stdout.starts_with("configuration ok: "), "{stdout}");
    assert!(stdout.contains("servers: 2\n"), "{stdout}");
    assert!(stdout.contains("  onprem: https://mail.example.com/EWS/Exchange.asmx, auth ntlm, impersonation, Exchange2013_SP1, 2 mailboxes\n"), "{stdout}");
    assert!(stdout.contains("  online: autodiscover (mailbox domain), auth oauth2, impersonation, Exchange2016, 1 mailbox\n"), "{stdout}");
    assert!(stdout.contains("mailboxes: 3\n"), "{stdout}");
    assert!(stdout.contains("tenants: 2\n"), "{stdout}");
    assert!(
        stdout.contains(
            "smtp (outbox mails of other senders): smtp.example.com:587 (starttls, login)\n"
        ),
        "{stdout}"
    );
    for secret in [
        "crm-db-password",
        "onprem-password",
        "online-secret",
        "a-long-enough-admin-token",
        "smtp-password",
    ] {
        assert!(
            !stdout.contains(secret) && !stderr.contains(secret),
            "{secret} leaked"
        );
    }
}

#[test]
fn invalid_config_exits_2_with_every_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(
        &path,
        r#"
[[servers]]
name = "ex1"
ews_url = "https://mail.example.com/EWS/Exchange.asmx"
auth = "basic"
service_account = { username = "svc", password = "inline-secret" }
[servers.streaming]
group_size = 500
[[mailboxes]]
smtp = "bob@"
operator = "1"
server = "ex2"
"#,
    )
    .unwrap();
    let out = mailsync()
        .args(["check-config", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(out.stdout.is_empty());
    assert!(stderr.contains("3 configuration errors"), "{stderr}");
    assert!(
        stderr.contains("servers[0].streaming.group_size: 500 is out of range, allowed 1 to 200"),
        "{stderr}"
    );
    assert!(
        stderr.contains(r#"mailboxes[0].smtp: "bob@" is not an e-mail address"#),
        "{stderr}"
    );
    assert!(
        stderr.contains(r#"mailboxes[0].server: unknown server "ex2" (configured: ex1)"#),
        "{stderr}"
    );
    assert!(!stderr.contains("inline-secret"), "{stderr}");
}

#[test]
fn missing_file_is_a_clear_error() {
    let out = mailsync()
        .args(["check-config", "--config", "/nonexistent/mailsync.toml"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr.contains("cannot read /nonexistent/mailsync.toml: No such file or directory"),
        "{stderr}"
    );
}

#[test]
fn json_logs_on_request_with_secrets_masked() {
    let out = mailsync()
        .args(["--log-format", "json", "check-config", "--config"])
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/config/mailsync.example.toml"
        ))
        .env("MAILSYNC_ADMIN_TOKEN", "a-long-enough-admin-token")
        .env(
            "MAILSYNC_CRM_DATABASE_URL",
            "postgres://crm:crm-db-password@db/crm",
        )
        .env("MAILSYNC_ONPREM_PASSWORD", "onprem-password")
        .env("MAILSYNC_ONLINE_CLIENT_SECRET", "online-secret")
        .env("MAILSYNC_SMTP_PASSWORD", "smtp-password")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let line = stderr
        .lines()
        .find(|l| l.contains("configuration valid"))
        .unwrap_or_else(|| panic!("no log line in {stderr}"));
    let event: serde_json::Value =
        serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
    assert_eq!(event["level"], "INFO");
    assert_eq!(event["mailboxes"], 3);
    assert_eq!(event["database"], "postgres://crm:***@db/crm");
    assert!(!stderr.contains("crm-db-password"));
}

#[test]
fn text_logs_by_default() {
    let out = mailsync()
        .args(["check-config", "--config"])
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/config/mailsync.local.toml"
        ))
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("INFO") && stderr.contains("configuration valid"),
        "{stderr}"
    );
    assert!(
        serde_json::from_str::<serde_json::Value>(stderr.lines().next().unwrap_or("")).is_err(),
        "{stderr}"
    );
}

/// A log written to a pipe or a file (as under systemd, docker or `2>file`) carries no ANSI
/// colour codes: the level and message are plain text.
#[test]
fn logs_to_a_pipe_carry_no_colour_codes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(&path, "[admin]\nlisten = \"not an address\"\n").unwrap();
    let out = mailsync()
        .args(["check-config", "--config"])
        .arg(&path)
        .env_remove("NO_COLOR")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("ERROR") && stderr.contains("configuration invalid"),
        "the error is logged: {stderr}"
    );
    assert!(
        !stderr.contains('\u{1b}'),
        "colour codes in a piped log: {stderr:?}"
    );
}
