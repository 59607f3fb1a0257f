//! `GET /metrics` as Prometheus reads it: the exposition parsed (families,
//! HELP, TYPE, labels, the histogram's buckets), compared with the core's
//! list of metrics, and `promtool check metrics` clean.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use apikey_cache::telemetry::{MetricKind, LOOKUP_DURATION, LOOKUP_DURATION_BUCKETS, METRICS};
use reqwest::StatusCode;
use serde_json::json;

use crate::support::{eventually, random_key, Env};

#[path = "../promtool/mod.rs"]
mod promtool;

/// One sample line: `name{labels} value`.
#[derive(Debug, Clone)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// A metric family: its `# HELP`, `# TYPE` and samples.
#[derive(Debug, Default)]
pub struct Family {
    pub help: Option<String>,
    pub kind: Option<String>,
    pub samples: Vec<Sample>,
}

/// Parses the text format (version 0.0.4) into families by name. Panics on
/// anything malformed, and on a sample whose family has no `# HELP` and
/// `# TYPE` before it.
pub fn parse_exposition(text: &str) -> BTreeMap<String, Family> {
    let mut families: BTreeMap<String, Family> = BTreeMap::new();
    for (n, line) in text.lines().enumerate() {
        let at = || format!("line {}: {line:?}", n + 1);
        if line.trim().is_empty() {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').unwrap_or((rest, ""));
            let family = families.entry(name.to_owned()).or_default();
            assert!(family.help.is_none(), "second HELP, {}", at());
            assert!(family.samples.is_empty(), "HELP after samples, {}", at());
            family.help = Some(help.to_owned());
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("TYPE name kind");
            let family = families.entry(name.to_owned()).or_default();
            assert!(family.kind.is_none(), "second TYPE, {}", at());
            assert!(family.samples.is_empty(), "TYPE after samples, {}", at());
            family.kind = Some(kind.to_owned());
            continue;
        }
        if line.starts_with('#') {
            continue;
        }
        let sample = parse_sample(line).unwrap_or_else(|e| panic!("{e}, {}", at()));
        // A histogram's series are `<family>_bucket`, `_sum` and `_count`.
        let family = if families.contains_key(&sample.name) {
            sample.name.clone()
        } else {
            ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| sample.name.strip_suffix(s))
                .filter(|stem| {
                    families
                        .get(*stem)
                        .and_then(|f| f.kind.as_deref())
                        .is_some_and(|k| k == "histogram" || k == "summary")
                })
                .unwrap_or_else(|| panic!("a sample with no # TYPE before it, {}", at()))
                .to_owned()
        };
        let family = families.get_mut(&family).unwrap();
        assert!(family.kind.is_some(), "no # TYPE before, {}", at());
        assert!(
            family.help.as_deref().is_some_and(|h| !h.trim().is_empty()),
            "no # HELP text before, {}",
            at()
        );
        family.samples.push(sample);
    }
    families
}

fn parse_sample(line: &str) -> Result<Sample, String> {
    let name_end = line.find(['{', ' ']).ok_or("no value")?;
    let name = &line[..name_end];
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
    {
        return Err(format!("bad metric name {name:?}"));
    }
    let mut labels = BTreeMap::new();
    let mut rest = &line[name_end..];
    if let Some(body) = rest.strip_prefix('{') {
        let mut s = body;
        loop {
            if let Some(after) = s.strip_prefix('}') {
                rest = after;
                break;
            }
            let (label, after) = s.split_once("=\"").ok_or("label without =\"")?;
            let mut value = String::new();
            let mut chars = after.char_indices();
            let end = loop {
                let (i, c) = chars.next().ok_or("unterminated label value")?;
                match c {
                    '"' => break i + 1,
                    '\\' => match chars.next().ok_or("dangling escape")?.1 {
                        'n' => value.push('\n'),
                        c @ ('\\' | '"') => value.push(c),
                        c => return Err(format!("bad escape \\{c}")),
                    },
                    c => value.push(c),
                }
            };
            if labels.insert(label.to_owned(), value).is_some() {
                return Err(format!("label {label} twice"));
            }
            s = &after[end..];
            s = s.strip_prefix(',').unwrap_or(s);
        }
    }
    let mut fields = rest.split_whitespace();
    let value = fields.next().ok_or("no value")?;
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v.parse().map_err(|_| format!("bad value {v:?}"))?,
    };
    // An optional timestamp, then nothing.
    if fields.nth(1).is_some() {
        return Err("trailing fields".into());
    }
    Ok(Sample {
        name: name.to_owned(),
        labels,
        value,
    })
}

/// The value of the sample `series` (a family's name, or a histogram's
/// `_sum` or `_count`) with exactly these labels.
fn value(families: &BTreeMap<String, Family>, series: &str, labels: &[(&str, &str)]) -> f64 {
    let want: BTreeMap<String, String> = labels
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    let family = families
        .get(series)
        .or_else(|| families.get(series.rsplit_once('_')?.0))
        .unwrap_or_else(|| panic!("no family for {series}"));
    family
        .samples
        .iter()
        .find(|s| s.name == series && s.labels == want)
        .unwrap_or_else(|| panic!("no {series}{labels:?}"))
        .value
}

/// Starts `bin` with Redis and PostgreSQL, sends traffic that gives every
/// metric a value (valid keys, an unknown key, no key, a revoked key, L1
/// misses and hits), and checks `/metrics`: every family has HELP and
/// TYPE, matches the core's list (`telemetry::METRICS`: names, types,
/// labels and their values), the lookup duration is a histogram with the
/// core's buckets, no plaintext key appears, and `promtool check metrics`
/// finds nothing to say.
pub async fn metrics_exposition(bin: &str) {
    let env = Env::start(bin).await;
    let (demo, admin) = (&env.demo, env.admin.as_str());
    let (key_id, key) = demo
        .create_key(admin, json!({"owner": "acme", "scopes": ["orders:*"]}))
        .await;
    // L1 miss (Redis, store), then L1 hits.
    for _ in 0..3 {
        assert_eq!(
            demo.get("/v1/orders", Some(&key)).await.status,
            StatusCode::OK
        );
    }
    let unknown = random_key();
    demo.get("/v1/whoami", Some(&unknown))
        .await
        .assert_error(401, "invalid_api_key");
    demo.get("/v1/whoami", None)
        .await
        .assert_error(401, "missing_api_key");
    let res = demo
        .call(
            reqwest::Method::DELETE,
            &format!("/admin/keys/{key_id}"),
            Some(admin),
            None,
        )
        .await;
    assert_eq!(res.status, StatusCode::NO_CONTENT, "{res:?}");
    demo.get("/v1/whoami", Some(&key))
        .await
        .assert_error(401, "revoked_api_key");

    // Loads past L1: the admin key's, the new key's, the unknown key's.
    let (text, families) = eventually(
        "every metric, 3 timed loads",
        Duration::from_secs(5),
        || async {
            let res = demo.client.get(demo.url("/metrics")).send().await.unwrap();
            assert_eq!(res.status(), StatusCode::OK);
            let content_type = res.headers()["content-type"].to_str().unwrap().to_owned();
            assert!(
                content_type.starts_with("text/plain; version=0.0.4"),
                "{content_type}"
            );
            let text = res.text().await.unwrap();
            let families = parse_exposition(&text);
            let ready = METRICS.iter().all(|m| families.contains_key(m.name))
                && families[LOOKUP_DURATION]
                    .samples
                    .iter()
                    .any(|s| s.name.ends_with("_count") && s.value >= 3.0);
            ready.then_some((text, families))
        },
    )
    .await;

    for secret in [admin, key.as_str(), unknown.as_str()] {
        assert!(!text.contains(secret), "a plaintext key in /metrics");
    }

    for (name, family) in &families {
        let def = METRICS
            .iter()
            .find(|m| m.name == name)
            .unwrap_or_else(|| panic!("{name} is not in telemetry::METRICS"));
        assert_eq!(family.help.as_deref(), Some(def.help), "{name} HELP");
        assert_eq!(
            family.kind.as_deref(),
            Some(def.kind.as_str()),
            "{name} TYPE"
        );
        assert!(!family.samples.is_empty(), "{name} has no samples");
        for s in &family.samples {
            let mut declared: Vec<&str> = def.labels.iter().map(|l| l.name).collect();
            if s.name.ends_with("_bucket") {
                declared.push("le");
            }
            declared.sort_unstable();
            let names: Vec<&str> = s.labels.keys().map(String::as_str).collect();
            assert_eq!(names, declared, "labels of {s:?}");
            for l in def.labels {
                assert!(l.values.contains(&s.labels[l.name].as_str()), "{s:?}");
            }
        }
    }
    for m in METRICS {
        assert!(families.contains_key(m.name), "{} missing", m.name);
    }

    // The histogram: ordered cumulative buckets, the core's bounds, +Inf
    // last and equal to _count; no summary quantiles.
    let hist = &families[LOOKUP_DURATION];
    assert_eq!(hist.kind.as_deref(), Some(MetricKind::Histogram.as_str()));
    let bucket = format!("{LOOKUP_DURATION}_bucket");
    let buckets: Vec<(f64, f64)> = hist
        .samples
        .iter()
        .filter(|s| s.name == bucket)
        .map(|s| {
            let le = &s.labels["le"];
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().unwrap()
            };
            (le, s.value)
        })
        .collect();
    assert!(
        hist.samples
            .iter()
            .all(|s| !s.labels.contains_key("quantile")),
        "a summary, not a histogram: {:?}",
        hist.samples
    );
    let bounds: Vec<f64> = buckets.iter().map(|b| b.0).collect();
    let mut want = LOOKUP_DURATION_BUCKETS.to_vec();
    want.push(f64::INFINITY);
    assert_eq!(bounds, want, "bucket bounds, in order");
    assert!(
        buckets.windows(2).all(|w| w[0].1 <= w[1].1),
        "cumulative counts: {buckets:?}"
    );
    let count = value(&families, &format!("{LOOKUP_DURATION}_count"), &[]);
    let sum = value(&families, &format!("{LOOKUP_DURATION}_sum"), &[]);
    assert_eq!(buckets.last().unwrap().1, count, "+Inf bucket = _count");
    assert!(count >= 3.0, "{count}");
    assert!(
        sum > 0.0 && sum < count * 5.0,
        "_sum {sum} for {count} loads"
    );

    // The traffic above, counted.
    let requests = "apikey_cache_requests_total";
    assert!(value(&families, requests, &[("outcome", "valid")]) >= 4.0);
    for outcome in ["unknown", "missing", "revoked"] {
        assert!(
            value(&families, requests, &[("outcome", outcome)]) >= 1.0,
            "{outcome}"
        );
    }
    assert!(value(&families, "apikey_cache_hits_total", &[("tier", "l1")]) >= 2.0);
    assert!(value(&families, "apikey_cache_misses_total", &[("tier", "l1")]) >= 3.0);
    assert!(
        value(
            &families,
            "apikey_cache_store_queries_total",
            &[("result", "ok")]
        ) >= 3.0
    );
    assert_eq!(
        value(
            &families,
            "apikey_cache_store_queries_total",
            &[("result", "error")]
        ),
        0.0
    );
    assert!(
        value(
            &families,
            "apikey_cache_invalidations_total",
            &[("source", "local")]
        ) >= 1.0
    );
    assert!(value(&families, "apikey_cache_entries", &[("tier", "l1")]) >= 1.0);
    assert_eq!(value(&families, "apikey_cache_breaker_state", &[]), 0.0);
    assert_eq!(value(&families, "apikey_cache_mode", &[]), 0.0);

    // promtool: exit 0 and nothing to report.
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = promtool::run(&["check", "metrics"], dir, Some(&text));
    assert!(
        out.status.success() && promtool::text(&out).trim().is_empty(),
        "promtool check metrics ({}):\n{}\n--- exposition ---\n{text}",
        out.status,
        promtool::text(&out)
    );
    // It does look: the same text without HELP lines is refused.
    let no_help: String = text
        .lines()
        .filter(|l| !l.starts_with("# HELP"))
        .map(|l| format!("{l}\n"))
        .collect();
    let out = promtool::run(&["check", "metrics"], dir, Some(&no_help));
    assert!(
        promtool::text(&out).contains("no help text"),
        "promtool should flag missing HELP: {}",
        promtool::text(&out)
    );
}
