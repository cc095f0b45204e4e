//! The alerting rules in alerts/: valid for Prometheus, behaving as their unit tests say
//! (`promtool test rules`), and querying only metrics the service exports. promtool comes
//! with Debian's `prometheus` package; without it the test fails under CI and skips elsewhere.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

use mailsync::metrics::Telemetry;

const DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/alerts");

fn promtool() -> Option<String> {
    let tool = std::env::var("MAILSYNC_PROMTOOL").unwrap_or_else(|_| "promtool".into());
    let found = Command::new(&tool).arg("--version").output();
    matches!(found, Ok(o) if o.status.success()).then_some(tool)
}

fn run(tool: &str, args: &[&str]) {
    let out = Command::new(tool)
        .args(args)
        .current_dir(DIR)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "promtool {}:\n{}{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn the_rules_are_valid_and_pass_their_unit_tests() {
    let Some(tool) = promtool() else {
        mailsync_testkit::require::missing("promtool (Debian: apt-get install prometheus)");
        return;
    };
    run(&tool, &["check", "rules", "mailsync.rules.yml"]);
    run(&tool, &["test", "rules", "mailsync.tests.yml"]);
}

/// `mailsync_…` names in the rules' expressions, histogram series mapped to their family.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in text.lines().map(str::trim) {
        let Some(expr) = line.strip_prefix("expr:") else {
            continue;
        };
        let mut rest = expr;
        while let Some(pos) = rest.find("mailsync_") {
            let tail = &rest[pos..];
            let end = tail
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(tail.len());
            let name = &tail[..end];
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .fold(name, |n, s| n.strip_suffix(s).unwrap_or(n));
            names.insert(family.to_owned());
            rest = &tail[end..];
        }
    }
    names
}

#[test]
fn every_metric_the_rules_query_is_exported() {
    let text = std::fs::read_to_string(Path::new(DIR).join("mailsync.rules.yml")).unwrap();
    let queried = metric_names(&text);
    let exported: BTreeSet<String> = Telemetry::new().names().into_iter().collect();
    let unknown: Vec<&String> = queried.difference(&exported).collect();
    assert!(
        unknown.is_empty(),
        "the rules query metrics nobody exports: {unknown:?}"
    );
    for needed in [
        "mailsync_mailboxes",
        "mailsync_held_deletes",
        "mailsync_sync_lag_seconds",
        "mailsync_throttle_paused_seconds_total",
        "mailsync_stream_groups",
        "mailsync_failures_parked",
    ] {
        assert!(queried.contains(needed), "no rule uses {needed}");
    }
    let alerts = text.matches("- alert: ").count();
    let tests = std::fs::read_to_string(Path::new(DIR).join("mailsync.tests.yml")).unwrap();
    for line in text
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert: "))
    {
        assert!(
            tests.contains(&format!("alertname: {line}")),
            "alert {line} has no unit test"
        );
    }
    assert_eq!(alerts, 10);
}
