//! The Grafana dashboard queries only metrics the service exports, and is well formed.

use std::collections::BTreeSet;

use mailsync::metrics::Telemetry;
use serde_json::Value;

fn dashboard() -> Value {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/grafana/dashboards/mailsync.json"
    );
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn panels(v: &Value) -> Vec<&Value> {
    let mut out = Vec::new();
    for p in v["panels"].as_array().into_iter().flatten() {
        out.push(p);
        out.extend(panels(p));
    }
    out
}

/// Metric names in a PromQL expression, histogram series mapped to their family.
fn metric_names(expr: &str) -> Vec<String> {
    let mut names = Vec::new();
    let bytes = expr.as_bytes();
    let mut i = 0;
    while let Some(pos) = expr[i..].find("mailsync_") {
        let start = i + pos;
        let end = start
            + expr[start..]
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(expr.len() - start);
        let name = &expr[start..end];
        let inside_label_value = start > 0 && bytes[start - 1] == b'"';
        if !inside_label_value {
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .fold(name, |n, s| n.strip_suffix(s).unwrap_or(n));
            names.push(family.to_owned());
        }
        i = end;
    }
    names
}

#[test]
fn every_queried_metric_is_exported() {
    let exported: BTreeSet<String> = Telemetry::new().names().into_iter().collect();
    let dash = dashboard();
    let mut queried = BTreeSet::new();
    for panel in panels(&dash) {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"].as_str().expect("every target has an expr");
            let names = metric_names(expr);
            assert!(
                !names.is_empty(),
                "panel {:?} queries no mailsync metric: {expr}",
                panel["title"]
            );
            queried.extend(names);
        }
    }
    let unknown: Vec<&String> = queried.difference(&exported).collect();
    assert!(
        unknown.is_empty(),
        "the dashboard queries metrics nobody exports: {unknown:?}"
    );
    // Every family the service exports is on the dashboard somewhere.
    let unshown: Vec<&String> = exported.difference(&queried).collect();
    assert!(unshown.is_empty(), "exported but on no panel: {unshown:?}");
}

#[test]
fn the_dashboard_has_an_overview_and_a_row_per_server() {
    let dash = dashboard();
    let all = panels(&dash);
    let ids: Vec<i64> = all.iter().map(|p| p["id"].as_i64().unwrap()).collect();
    assert_eq!(
        ids.len(),
        ids.iter().collect::<BTreeSet<_>>().len(),
        "panel ids are unique"
    );
    let rows: Vec<&&Value> = all.iter().filter(|p| p["type"] == "row").collect();
    assert_eq!(rows[0]["title"], "Overview");
    assert!(
        rows.iter().any(|r| r["repeat"] == "server"),
        "a row repeated per server"
    );
    let vars: Vec<&str> = dash["templating"]["list"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().unwrap())
        .collect();
    assert_eq!(vars, vec!["datasource", "server"]);
    for title in [
        "Mailboxes by state",
        "Sync lag (trigger to commit)",
        "Items synced",
        "EWS requests",
        "Restarts",
        "Failures",
    ] {
        assert!(
            all.iter().any(|p| p["title"] == title),
            "missing panel {title}"
        );
    }
}

#[test]
fn metric_names_are_read_from_promql() {
    assert_eq!(
        metric_names(
            r#"histogram_quantile(0.99, sum by (le) (rate(mailsync_sync_lag_seconds_bucket{cause="mailsync_x"}[5m])))"#
        ),
        vec!["mailsync_sync_lag_seconds"]
    );
    assert_eq!(
        metric_names("sum(mailsync_a) / sum(mailsync_b_count)"),
        vec!["mailsync_a", "mailsync_b"]
    );
}
