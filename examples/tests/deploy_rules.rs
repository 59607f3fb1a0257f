//! `deploy/`: the Prometheus alert rules pass `promtool check rules`, their
//! unit tests pass `promtool test rules` and cover every alert both ways,
//! and the rules and the Grafana dashboard use only metrics (and label
//! values) the core emits: `apikey_cache::telemetry::METRICS`, which a core
//! test pins to what is emitted and the demos' exposition test to what
//! `/metrics` shows.
#![allow(clippy::unwrap_used)]

mod promtool;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use apikey_cache::telemetry::{MetricDef, MetricKind, METRICS};
use serde_json::Value;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_owned()
}

fn read(path: &str) -> String {
    std::fs::read_to_string(repo().join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// Alert names of alerts.yml, in order, with their rule's text (up to the
/// next alert).
fn alerts() -> Vec<(String, String)> {
    let text = read("deploy/prometheus/alerts.yml");
    let mut alerts: Vec<(String, String)> = Vec::new();
    for line in text.lines() {
        if let Some(name) = line.trim_start().strip_prefix("- alert: ") {
            alerts.push((name.trim().to_owned(), String::new()));
        } else if let Some((_, body)) = alerts.last_mut() {
            body.push_str(line);
            body.push('\n');
        }
    }
    alerts
}

/// The design's alerts, by what they watch.
const WANTED_ALERTS: &[&str] = &[
    "ApiKeyCacheL2BreakerOpen",
    "ApiKeyCacheStoreDown",
    "ApiKeyCacheDatabaseOnlyMode",
    "ApiKeyCacheAuthFailureSpike",
    "ApiKeyCacheUsageFlushErrors",
    "ApiKeyCacheHitRateLow",
    "ApiKeyCacheInvalidationResyncs",
];

#[test]
fn promtool_check_rules_passes() {
    let out = promtool::run(
        &["check", "rules", "deploy/prometheus/alerts.yml"],
        &repo(),
        None,
    );
    let text = promtool::text(&out);
    println!("{text}");
    assert!(out.status.success(), "promtool check rules:\n{text}");
    let alerts = alerts();
    assert!(
        text.contains(&format!("SUCCESS: {} rules found", alerts.len())),
        "{} alerts in the file:\n{text}",
        alerts.len()
    );
    let names: Vec<&str> = alerts.iter().map(|(n, _)| n.as_str()).collect();
    let unique: BTreeSet<&str> = names.iter().copied().collect();
    assert_eq!(unique.len(), names.len(), "an alert name twice: {names:?}");
    for wanted in WANTED_ALERTS {
        assert!(names.contains(wanted), "{wanted} missing from alerts.yml");
    }
}

#[test]
fn every_alert_has_severity_summary_description_and_runbook() {
    for (name, body) in alerts() {
        let anchor = format!(
            "runbook_url: \"docs/OPERATIONS.md#{}\"",
            name.to_lowercase()
        );
        for needle in ["severity: ", "summary: ", "description: ", anchor.as_str()] {
            assert!(body.contains(needle), "{name}: no `{needle}`:\n{body}");
        }
    }
}

/// Each `runbook_url` lands on a section: GitHub's anchor for a heading
/// `### ApiKeyCacheStoreDown` is its lowercased text.
#[test]
fn every_alert_has_its_runbook_section() {
    let runbook = read("docs/OPERATIONS.md");
    for (name, _) in alerts() {
        let heading = format!("\n### {name}\n");
        assert!(
            runbook.contains(&heading),
            "docs/OPERATIONS.md has no `### {name}` section"
        );
    }
}

#[test]
fn promtool_test_rules_passes_and_covers_every_alert_both_ways() {
    let dir = repo().join("deploy/prometheus");
    let out = promtool::run(&["test", "rules", "alerts.test.yml"], &dir, None);
    let text = promtool::text(&out);
    println!("{text}");
    assert!(
        out.status.success() && text.contains("SUCCESS"),
        "promtool test rules:\n{text}"
    );

    // alertname -> (cases where it fires, cases where it does not)
    let tests = read("deploy/prometheus/alerts.test.yml");
    let mut cases: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    let lines: Vec<&str> = tests.lines().map(str::trim).collect();
    for (i, line) in lines.iter().enumerate() {
        let Some(name) = line.strip_prefix("alertname: ") else {
            continue;
        };
        let next = lines.get(i + 1).copied().unwrap_or_default();
        let entry = cases.entry(name.to_owned()).or_default();
        match next {
            "exp_alerts: []" => entry.1 += 1,
            "exp_alerts:" if lines[i + 2].starts_with("- exp_labels:") => entry.0 += 1,
            _ => panic!("alertname {name}: `exp_alerts:` expected on the next line"),
        }
    }
    let names: BTreeSet<String> = alerts().into_iter().map(|(n, _)| n).collect();
    for name in &names {
        let (fires, quiet) = cases.get(name).copied().unwrap_or_default();
        assert!(fires >= 1, "{name}: no test where it fires");
        assert!(quiet >= 1, "{name}: no test where it stays quiet");
    }
    for name in cases.keys() {
        assert!(
            names.contains(name),
            "alerts.test.yml tests unknown alert {name}"
        );
    }
}

/// A metric used in a PromQL text, and the label matchers on it.
#[derive(Debug)]
struct Use {
    series: String,
    metric: &'static MetricDef,
    matchers: Vec<(String, String, String)>,
}

/// Every `apikey_cache_*` name in `text` (PromQL, or a whole rules file),
/// resolved to its entry of `METRICS` (`_bucket`, `_sum`, `_count` of a
/// histogram to the histogram), with the matchers in the `{...}` after it.
/// Panics on a name the core does not emit.
fn uses(text: &str) -> Vec<Use> {
    let mut found = Vec::new();
    let mut rest = text;
    while let Some(at) = rest.find("apikey_cache_") {
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'))
            .unwrap_or(tail.len());
        let series = &tail[..end];
        let metric = METRICS
            .iter()
            .find(|m| m.name == series)
            .or_else(|| {
                ["_bucket", "_sum", "_count"].iter().find_map(|s| {
                    let stem = series.strip_suffix(s)?;
                    METRICS
                        .iter()
                        .find(|m| m.name == stem && m.kind == MetricKind::Histogram)
                })
            })
            .unwrap_or_else(|| panic!("{series} is not a metric the core emits"));
        let mut matchers = Vec::new();
        if let Some(body) = tail[end..].strip_prefix('{') {
            let body = &body[..body.find('}').expect("closing }")];
            for m in body.split(',').map(str::trim).filter(|m| !m.is_empty()) {
                let op_at = m.find(['=', '!']).expect("a matcher operator");
                let op_len = if m[op_at..].starts_with('=') && !m[op_at..].starts_with("=~") {
                    1
                } else {
                    2
                };
                let value = m[op_at + op_len..].trim();
                let value = value
                    .strip_prefix('"')
                    .and_then(|v| v.strip_suffix('"'))
                    .unwrap_or_else(|| panic!("{series}: matcher value not quoted: {m}"));
                matchers.push((
                    m[..op_at].trim().to_owned(),
                    m[op_at..op_at + op_len].to_owned(),
                    value.to_owned(),
                ));
            }
        }
        found.push(Use {
            series: series.to_owned(),
            metric,
            matchers,
        });
        rest = &tail[end..];
    }
    found
}

/// Label matchers name labels the metric has and values it takes; `job`
/// and `instance` are the scrape's. A typo (`outcome="invalid"`) would make
/// an alert that never fires.
fn check_matchers(u: &Use) {
    for (label, op, value) in &u.matchers {
        let Some(def) = u.metric.labels.iter().find(|l| l.name == label) else {
            assert!(
                label == "job"
                    || label == "instance"
                    || (label == "le" && u.series.ends_with("_bucket")),
                "{}: no label {label}",
                u.series
            );
            continue;
        };
        if value.contains('$') {
            continue; // a dashboard variable
        }
        let values: Vec<&str> = match op.as_str() {
            "=" | "!=" => vec![value.as_str()],
            _ => {
                assert!(
                    value.chars().all(|c| c.is_ascii_lowercase()
                        || c == '_'
                        || c == '|'
                        || c.is_ascii_digit()),
                    "{}: write {label}=~ as a plain alternation: {value}",
                    u.series
                );
                value.split('|').collect()
            }
        };
        for v in values {
            assert!(
                def.values.contains(&v),
                "{}: {label}={v} is never emitted",
                u.series
            );
        }
    }
}

#[test]
fn alert_rules_use_only_emitted_metrics_and_labels() {
    let text = read("deploy/prometheus/alerts.yml");
    let used = uses(&text);
    assert!(used.len() >= WANTED_ALERTS.len(), "{used:?}");
    for u in &used {
        check_matchers(u);
    }
    // Each alert's expression names a metric.
    for (name, body) in alerts() {
        assert!(
            !uses(&body).is_empty(),
            "{name} uses no apikey_cache metric"
        );
    }
}

/// Every `expr` of the dashboard's panels, with the panel's title.
fn dashboard_exprs(dash: &Value) -> Vec<(String, String)> {
    let mut exprs = Vec::new();
    for panel in dash["panels"].as_array().expect("panels") {
        let title = panel["title"].as_str().expect("a panel title").to_owned();
        let targets = panel["targets"]
            .as_array()
            .unwrap_or_else(|| panic!("{title}: no targets"));
        assert!(!targets.is_empty(), "{title}: no targets");
        let mut ref_ids = BTreeSet::new();
        for t in targets {
            let expr = t["expr"]
                .as_str()
                .unwrap_or_else(|| panic!("{title}: a target without expr"));
            assert!(
                ref_ids.insert(t["refId"].as_str().expect("refId")),
                "{title}: refId twice"
            );
            exprs.push((title.clone(), expr.to_owned()));
        }
    }
    exprs
}

#[test]
fn dashboard_uses_only_emitted_metrics_and_valid_promql() {
    let dash: Value = serde_json::from_str(&read("deploy/grafana/apikey-cache.json")).unwrap();
    assert!(dash["title"].is_string() && dash["uid"].is_string());
    let mut ids = BTreeSet::new();
    for panel in dash["panels"].as_array().unwrap() {
        assert!(
            ids.insert(panel["id"].as_u64().expect("panel id")),
            "panel id twice"
        );
        for k in ["x", "y", "w", "h"] {
            assert!(
                panel["gridPos"][k].is_u64(),
                "{}: gridPos.{k}",
                panel["title"]
            );
        }
    }
    let exprs = dashboard_exprs(&dash);
    let mut metrics_used = BTreeSet::new();
    for (title, expr) in &exprs {
        let used = uses(expr);
        assert!(
            !used.is_empty(),
            "{title}: no apikey_cache metric in {expr}"
        );
        for u in &used {
            check_matchers(u);
            metrics_used.insert(u.metric.name);
        }
    }
    // What the dashboard is for.
    for wanted in [
        "apikey_cache_requests_total",
        "apikey_cache_hits_total",
        "apikey_cache_misses_total",
        "apikey_cache_lookup_duration_seconds",
        "apikey_cache_store_queries_total",
        "apikey_cache_l2_errors_total",
        "apikey_cache_breaker_state",
        "apikey_cache_mode",
        "apikey_cache_invalidations_total",
        "apikey_cache_usage_flush_errors_total",
        "apikey_cache_entries",
    ] {
        assert!(
            metrics_used.contains(wanted),
            "the dashboard does not show {wanted}"
        );
    }
    for q in ["0.5", "0.99"] {
        let p = format!(
            "histogram_quantile({q}, sum by (le) (rate(apikey_cache_lookup_duration_seconds_bucket"
        );
        assert!(exprs.iter().any(|(_, e)| e.starts_with(&p)), "no {p}");
    }

    // PromQL syntax: promtool parses each expression as a recording rule,
    // Grafana's variables replaced by what they stand for.
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, (_, expr)) in exprs.iter().enumerate() {
        let expr = expr
            .replace("$__rate_interval", "5m")
            .replace("$job", ".*")
            .replace("$instance", ".*");
        // A JSON string is a YAML double-quoted scalar.
        rules.push_str(&format!(
            "      - record: dashboard:expr_{i}\n        expr: {}\n",
            serde_json::to_string(&expr).unwrap()
        ));
    }
    let dir = std::env::temp_dir().join(format!("apikey-cache-dashboard-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("dashboard.rules.yml"), &rules).unwrap();
    let out = promtool::run(&["check", "rules", "dashboard.rules.yml"], &dir, None);
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        out.status.success(),
        "dashboard PromQL:\n{}\n{rules}",
        promtool::text(&out)
    );
    assert!(promtool::text(&out).contains(&format!("SUCCESS: {} rules found", exprs.len())));
}

/// The checker above catches what it is for.
#[test]
fn the_name_and_label_checks_refuse_mistakes() {
    let typo = std::panic::catch_unwind(|| uses("rate(apikey_cache_request_total[5m])"));
    assert!(typo.is_err(), "an unknown name passes");
    let not_histogram = std::panic::catch_unwind(|| uses("apikey_cache_requests_total_bucket"));
    assert!(not_histogram.is_err(), "_bucket of a counter passes");
    for bad in [
        r#"apikey_cache_requests_total{outcome="invalid"}"#,
        r#"apikey_cache_requests_total{outcome=~"unknown|nope"}"#,
        r#"apikey_cache_hits_total{tier="l3"}"#,
        r#"apikey_cache_mode{tier="l1"}"#,
    ] {
        let used = uses(bad);
        let caught = std::panic::catch_unwind(|| check_matchers(&used[0]));
        assert!(caught.is_err(), "{bad} passes");
    }
    let ok = uses(r#"apikey_cache_lookup_duration_seconds_bucket{le="0.01", job=~"$job"}"#);
    check_matchers(&ok[0]);
    assert_eq!(ok[0].metric.name, "apikey_cache_lookup_duration_seconds");
}
