//! What a `compare` run found, and the three files it writes:
//! `latest.json`, `latest.md` and `latest.svg`.

use std::fmt::Write as _;

use serde::Serialize;

use super::stats::{median, Ratio};

/// Where `compare` writes its results into the README (full runs only).
pub const README_BEGIN: &str = "<!-- compare:begin -->";
/// The end of that block.
pub const README_END: &str = "<!-- compare:end -->";

/// One measured run of one case (one round).
#[derive(Debug, Clone, Default, Serialize)]
pub struct Run {
    /// Requests per second (wrk).
    pub rps: f64,
    /// Latency percentiles (wrk), in milliseconds.
    pub p50_ms: Option<f64>,
    /// The 99th percentile.
    pub p99_ms: Option<f64>,
    /// Requests wrk completed.
    pub requests: u64,
    /// Responses other than 2xx/3xx.
    pub non_2xx: u64,
    /// The server's user + system CPU time over the run per request, µs.
    pub cpu_us_per_req: Option<f64>,
}

/// One case's summary over every round.
#[derive(Debug, Clone, Serialize)]
pub struct CaseResult {
    /// Its name, e.g. `axum apikey (L1 hits)`.
    pub case: String,
    /// The case its ratios are taken against (its framework's no-auth case).
    pub baseline: String,
    /// Median requests per second.
    pub rps: f64,
    /// Median of the rounds' p50 latency, ms.
    pub p50_ms: f64,
    /// Median of the rounds' p99 latency, ms.
    pub p99_ms: f64,
    /// Median server CPU time per request, µs.
    pub cpu_us_per_req: f64,
    /// Median of per-round throughput ratios to `baseline`.
    pub ratio: f64,
    /// First quartile of those ratios.
    pub ratio_q1: f64,
    /// Third quartile of those ratios.
    pub ratio_q3: f64,
    /// Median of per-round CPU-per-request ratios to `baseline`.
    pub cpu_ratio: f64,
    /// Non-2xx responses over every round (expected only where a case
    /// sends unknown keys).
    pub non_2xx: u64,
    /// Rounds measured.
    pub runs: usize,
}

impl CaseResult {
    /// Summarizes `runs` (one per round) against `base` (the baseline's
    /// runs, same rounds in the same order).
    pub fn summarize(case: &str, baseline: &str, runs: &[Run], base: &[Run]) -> Self {
        let med = |f: &dyn Fn(&Run) -> Option<f64>| {
            median(&runs.iter().filter_map(f).collect::<Vec<_>>()).unwrap_or(0.0)
        };
        let rps = |r: &Run| Some(r.rps);
        let cpu = |r: &Run| r.cpu_us_per_req;
        let throughput = pair(runs, base, &rps);
        Self {
            case: case.to_owned(),
            baseline: baseline.to_owned(),
            rps: med(&rps),
            p50_ms: med(&|r| r.p50_ms),
            p99_ms: med(&|r| r.p99_ms),
            cpu_us_per_req: med(&cpu),
            ratio: throughput.map_or(0.0, |r| r.median),
            ratio_q1: throughput.map_or(0.0, |r| r.q1),
            ratio_q3: throughput.map_or(0.0, |r| r.q3),
            cpu_ratio: pair(runs, base, &cpu).map_or(0.0, |r| r.median),
            non_2xx: runs.iter().map(|r| r.non_2xx).sum(),
            runs: runs.len(),
        }
    }
}

/// Per-round ratios of `metric` between two cases' runs.
pub fn pair(a: &[Run], b: &[Run], metric: &dyn Fn(&Run) -> Option<f64>) -> Option<Ratio> {
    let a: Vec<_> = a.iter().map(metric).collect();
    let b: Vec<_> = b.iter().map(metric).collect();
    Ratio::per_round(&a, &b)
}

/// A goal of issue 13, checked against this run.
#[derive(Debug, Clone, Serialize)]
pub struct Goal {
    /// What is compared, e.g. `axum apikey / axum noauth, throughput`.
    pub goal: String,
    /// The measured value (a median of per-round ratios, or bytes).
    pub value: f64,
    /// Its first quartile (ratios only).
    pub q1: Option<f64>,
    /// Its third quartile (ratios only).
    pub q3: Option<f64>,
    /// `>= 0.95`, `<= 1.2`, ...
    pub target: String,
    /// Whether `value` meets it.
    pub met: bool,
}

impl Goal {
    /// A ratio that must be at least (`at_least`) or at most `bound`.
    pub fn ratio(goal: &str, ratio: Option<Ratio>, at_least: bool, bound: f64) -> Self {
        let value = ratio.map_or(f64::NAN, |r| r.median);
        Self {
            goal: goal.to_owned(),
            value,
            q1: ratio.map(|r| r.q1),
            q3: ratio.map(|r| r.q3),
            target: format!("{} {bound}", if at_least { ">=" } else { "<=" }),
            met: if at_least {
                value >= bound
            } else {
                value <= bound
            },
        }
    }
}

/// L1 memory per cached key at one size.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Memory {
    /// Keys verified (each cached once, 3 scopes).
    pub keys: u64,
    /// Resident memory added per key, bytes (L1 entries and usage cells).
    pub bytes_per_key: f64,
}

/// A whole `compare` run.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// When the run ended, RFC 3339 UTC.
    pub date: String,
    /// Cores of the machine.
    pub cores: usize,
    /// The CPU model (from `/proc/cpuinfo`), if known.
    pub cpu: Option<String>,
    /// How it was run: rounds, seconds per run, wrk settings, pinning.
    pub setup: String,
    /// Rounds.
    pub rounds: usize,
    /// Seconds of measured load per run.
    pub seconds: f64,
    /// Fewer rounds or seconds than a full run: numbers not to quote.
    pub smoke: bool,
    /// One summary per case.
    pub cases: Vec<CaseResult>,
    /// The issue's goals.
    pub goals: Vec<Goal>,
    /// L1 bytes per key.
    pub memory: Vec<Memory>,
}

impl Report {
    /// The JSON of `latest.json`.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
    }

    /// The Markdown of `latest.md`.
    pub fn to_markdown(&self) -> String {
        let mut md = String::new();
        let smoke = if self.smoke {
            " **SMOKE RUN: too short to quote**"
        } else {
            ""
        };
        let _ = writeln!(
            md,
            "# apikey-cache: side-by-side HTTP comparison{smoke}\n\n\
             {} on {} cores{}; {}.\n\n\
             Ratios are medians of per-round ratios to the case's baseline (its \
             framework's no-auth server), quartiles in brackets; CPU is the server \
             process's user + system time per request.\n",
            self.date,
            self.cores,
            self.cpu
                .as_deref()
                .map_or(String::new(), |c| format!(" ({c})")),
            self.setup
        );
        md.push_str(
            "| case | req/s | ratio (q1-q3) | p50 ms | p99 ms | CPU µs/req | CPU ratio |\n\
             | --- | ---: | ---: | ---: | ---: | ---: | ---: |\n",
        );
        for c in &self.cases {
            let _ = writeln!(
                md,
                "| {} | {:.0} | {:.3} ({:.3}-{:.3}) | {:.3} | {:.3} | {:.2} | {:.3} |",
                c.case,
                c.rps,
                c.ratio,
                c.ratio_q1,
                c.ratio_q3,
                c.p50_ms,
                c.p99_ms,
                c.cpu_us_per_req,
                c.cpu_ratio
            );
        }
        if !self.goals.is_empty() {
            md.push_str("\n| goal | value | target | met |\n| --- | ---: | --- | --- |\n");
            for g in &self.goals {
                let q = match (g.q1, g.q3) {
                    (Some(a), Some(b)) => format!(" ({a:.3}-{b:.3})"),
                    _ => String::new(),
                };
                let _ = writeln!(
                    md,
                    "| {} | {:.3}{q} | {} | {} |",
                    g.goal,
                    g.value,
                    g.target,
                    if g.met { "yes" } else { "**no**" }
                );
            }
        }
        if !self.memory.is_empty() {
            md.push_str("\n| L1 keys (3 scopes) | bytes per key |\n| ---: | ---: |\n");
            for m in &self.memory {
                let _ = writeln!(md, "| {} | {:.0} |", m.keys, m.bytes_per_key);
            }
        }
        md
    }

    /// The README's results block: the chart, the machine and date beside
    /// it, and the tables (`latest.md` without its title).
    pub fn readme_block(&self) -> String {
        let md = self.to_markdown();
        let tables = md.split_once("\n\n").map_or(md.as_str(), |(_, rest)| rest);
        format!(
            "![compare: throughput ratio and CPU per request by case](benches/results/latest.svg)\n\n\
             Measured on {} cores{}, {} (`benches/results/latest.json`).\n\n{tables}",
            self.cores,
            self.cpu
                .as_deref()
                .map_or(String::new(), |c| format!(" ({c})")),
            self.date,
        )
    }

    /// `readme` with the text between [`README_BEGIN`] and [`README_END`]
    /// replaced by [`readme_block`](Self::readme_block); `None` without
    /// both markers.
    pub fn update_readme(&self, readme: &str) -> Option<String> {
        let start = readme.find(README_BEGIN)? + README_BEGIN.len();
        let end = start + readme[start..].find(README_END)?;
        Some(format!(
            "{}\n{}\n{}",
            &readme[..start],
            self.readme_block().trim_end(),
            &readme[end..]
        ))
    }

    /// The chart of `latest.svg`: throughput ratio (with quartiles) and CPU
    /// per request, one row per case.
    pub fn to_svg(&self) -> String {
        const ROW: f64 = 26.0;
        const LABEL: f64 = 250.0;
        const PANEL: f64 = 300.0;
        const GAP: f64 = 40.0;
        let top = 64.0;
        let height = top + ROW * self.cases.len() as f64 + 40.0;
        let width = LABEL + 2.0 * PANEL + GAP + 70.0;
        let max_ratio = self
            .cases
            .iter()
            .map(|c| c.ratio_q3.max(c.ratio))
            .fold(1.0_f64, f64::max)
            * 1.05;
        let max_cpu = self
            .cases
            .iter()
            .map(|c| c.cpu_us_per_req)
            .fold(1.0_f64, f64::max)
            * 1.05;
        let x_ratio = |v: f64| LABEL + v / max_ratio * PANEL;
        let x_cpu = |v: f64| LABEL + PANEL + GAP + v / max_cpu * PANEL;
        let mut s = String::new();
        let _ = writeln!(
            s,
            r##"<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0}" height="{height:.0}" font-family="sans-serif" font-size="12">"##
        );
        let _ = writeln!(
            s,
            r##"<rect width="100%" height="100%" fill="#fff"/><text x="8" y="18" font-size="14" font-weight="bold">apikey-cache compare{}: {} cores, {}</text>"##,
            if self.smoke { " (SMOKE RUN)" } else { "" },
            self.cores,
            escape(&self.date)
        );
        let _ = writeln!(
            s,
            r##"<text x="{:.0}" y="{:.0}">throughput / framework's no auth (median, q1-q3)</text><text x="{:.0}" y="{:.0}">server CPU per request, µs</text>"##,
            LABEL,
            top - 14.0,
            LABEL + PANEL + GAP,
            top - 14.0
        );
        let one = x_ratio(1.0);
        let _ = writeln!(
            s,
            r##"<line x1="{one:.1}" y1="{:.0}" x2="{one:.1}" y2="{:.0}" stroke="#888" stroke-dasharray="3,3"/>"##,
            top - 6.0,
            height - 30.0
        );
        for (i, c) in self.cases.iter().enumerate() {
            let y = top + ROW * i as f64;
            let fill = if c.case.contains("apikey") {
                "#2b6cb0"
            } else {
                "#a0aec0"
            };
            let _ = writeln!(
                s,
                r##"<text x="{:.0}" y="{:.1}" text-anchor="end">{}</text>"##,
                LABEL - 8.0,
                y + 15.0,
                escape(&c.case)
            );
            let _ = writeln!(
                s,
                r##"<rect x="{LABEL:.0}" y="{:.1}" width="{:.1}" height="16" fill="{fill}"/><line x1="{:.1}" y1="{:.1}" x2="{:.1}" y2="{:.1}" stroke="#000"/><text x="{:.1}" y="{:.1}">{:.2}</text>"##,
                y + 3.0,
                (x_ratio(c.ratio) - LABEL).max(0.0),
                x_ratio(c.ratio_q1),
                y + 11.0,
                x_ratio(c.ratio_q3),
                y + 11.0,
                x_ratio(c.ratio_q3.max(c.ratio)) + 4.0,
                y + 15.0,
                c.ratio
            );
            let x0 = LABEL + PANEL + GAP;
            let _ = writeln!(
                s,
                r##"<rect x="{x0:.0}" y="{:.1}" width="{:.1}" height="16" fill="{fill}"/><text x="{:.1}" y="{:.1}">{:.1}</text>"##,
                y + 3.0,
                (x_cpu(c.cpu_us_per_req) - x0).max(0.0),
                x_cpu(c.cpu_us_per_req) + 4.0,
                y + 15.0,
                c.cpu_us_per_req
            );
        }
        let _ = writeln!(
            s,
            r##"<text x="8" y="{:.0}" fill="#555">{}</text>"##,
            height - 10.0,
            escape(&self.setup)
        );
        s.push_str("</svg>\n");
        s
    }
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(rps: f64, cpu: f64) -> Run {
        Run {
            rps,
            p50_ms: Some(0.5),
            p99_ms: Some(1.0),
            requests: 1000,
            non_2xx: 0,
            cpu_us_per_req: Some(cpu),
        }
    }

    fn report() -> Report {
        let base = [run(100.0, 10.0), run(50.0, 12.0), run(100.0, 10.0)];
        let ours = [run(95.0, 10.5), run(45.0, 13.0), run(97.0, 10.2)];
        Report {
            date: "2026-01-01T00:00:00Z".into(),
            cores: 2,
            cpu: Some("Test CPU".into()),
            setup: "3 rounds x 1s".into(),
            rounds: 3,
            seconds: 1.0,
            smoke: true,
            cases: vec![
                CaseResult::summarize("axum noauth", "axum noauth", &base, &base),
                CaseResult::summarize("axum apikey", "axum noauth", &ours, &base),
            ],
            goals: vec![Goal::ratio(
                "axum apikey / axum noauth, throughput",
                pair(&ours, &base, &|r| Some(r.rps)),
                true,
                0.95,
            )],
            memory: vec![Memory {
                keys: 100_000,
                bytes_per_key: 480.0,
            }],
        }
    }

    #[test]
    fn summaries_are_medians_of_per_round_ratios() {
        let r = report();
        let ours = &r.cases[1];
        // Rounds: 0.95, 0.9, 0.97: median 0.95, not 95/100 of the medians.
        assert!((ours.ratio - 0.95).abs() < 1e-12);
        assert!((ours.ratio_q1 - 0.9).abs() < 1e-12);
        assert!((ours.ratio_q3 - 0.97).abs() < 1e-12);
        assert_eq!(ours.rps, 95.0);
        assert_eq!(ours.cpu_us_per_req, 10.5);
        assert!((ours.cpu_ratio - 1.05).abs() < 1e-12);
        assert_eq!(r.cases[0].ratio, 1.0);
        assert!(r.goals[0].met);
    }

    #[test]
    fn json_has_one_object_per_case_with_the_issue_fields() {
        let r = report();
        let json: serde_json::Value =
            serde_json::from_str(&r.to_json()).unwrap_or(serde_json::Value::Null);
        assert_eq!(json["cores"], 2);
        assert!(json["date"].is_string());
        let cases = json["cases"].as_array().map_or(&[][..], Vec::as_slice);
        assert_eq!(cases.len(), 2);
        for case in cases {
            for field in [
                "case",
                "rps",
                "p50_ms",
                "p99_ms",
                "cpu_us_per_req",
                "ratio",
                "ratio_q1",
                "ratio_q3",
            ] {
                assert!(!case[field].is_null(), "{field} missing in {case}");
            }
        }
        assert_eq!(json["memory"][0]["keys"], 100_000);
        assert_eq!(json["smoke"], true);
    }

    #[test]
    fn the_readme_block_replaces_only_what_lies_between_the_markers() {
        let r = report();
        let readme = format!("# T\nbefore\n{README_BEGIN}\nold numbers\n{README_END}\nafter\n");
        let new = r.update_readme(&readme).unwrap_or_default();
        assert!(new.starts_with("# T\nbefore\n<!-- compare:begin -->\n![compare"));
        assert!(new.ends_with("<!-- compare:end -->\nafter\n"), "{new}");
        assert!(!new.contains("old numbers"));
        assert!(new.contains("2 cores (Test CPU), 2026-01-01T00:00:00Z"));
        assert!(new.contains("| axum apikey | 95 |"));
        assert_eq!(r.update_readme("no markers"), None);
    }

    #[test]
    fn markdown_and_svg_show_every_case_and_say_smoke() {
        let r = report();
        let md = r.to_markdown();
        assert!(
            md.contains("| axum apikey | 95 | 0.950 (0.900-0.970)"),
            "{md}"
        );
        assert!(md.contains("SMOKE RUN"));
        let svg = r.to_svg();
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert!(svg.contains("axum apikey") && svg.contains("2 cores"));
    }
}
