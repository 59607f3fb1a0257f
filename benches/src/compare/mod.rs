//! `compare`: the side-by-side HTTP comparison in one command.
//!
//! ```text
//! cargo run --release -p apikey-cache-benches --bin compare -- [--rounds 8] [--seconds 3]
//! ```
//!
//! On loopback it starts what it needs: its own `redis-server` on a free
//! port, a fresh PostgreSQL database (from `APIKEY_CACHE_TEST_PG_URL`, default
//! `postgres://postgres@127.0.0.1:5432/postgres`; dropped afterwards), and,
//! for every case of every round, a server (this same binary, re-run as
//! `compare --serve <framework> <mode>`: the apps of [`crate::app`] and
//! [`crate::actix`], as `bench-server` and `actix-bench-server` serve them)
//! pinned to one core with `TOKIO_WORKER_THREADS=1`, loaded by `wrk` as a
//! separate process pinned to the other core (`benches/wrk/zipf.lua`: 10k
//! keys, Zipf-distributed). Per run: requests/s, p50/p99 (wrk) and the
//! server's CPU time per request (`utime + stime` from `/proc` over the
//! measured run).
//!
//! The method is `ab-bench`'s: the case order rotates from round to round
//! (no case always runs first), and ratios are medians of per-round ratios
//! (each case against its framework's no-auth server in the same round),
//! with quartiles. Then L1 memory per key (a fresh process per size).
//!
//! It writes `benches/results/latest.json`, `latest.md` and `latest.svg`
//! (or into `--out DIR`). Fewer than 8 rounds or 3 s per run is marked a
//! smoke run in all three; a full run also rewrites the README's results
//! block (between `<!-- compare:begin -->` and `<!-- compare:end -->`).
//!
//! Interrupted (Ctrl-C), it leaves its database behind:
//! `DROP DATABASE apikey_cache_compare_<pid>` (the servers and
//! redis-server get the same signal and exit).

pub mod report;
pub mod stats;

mod procs;

use std::path::PathBuf;
use std::time::Duration;

use report::{pair, CaseResult, Goal, Memory, Report, Run};

/// A full run's minimum: fewer rounds or seconds is a smoke run.
const FULL_ROUNDS: usize = 8;
const FULL_SECONDS: f64 = 3.0;

/// Which server a case runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framework {
    /// `bench-server` ([`crate::app`]).
    Axum,
    /// `actix-bench-server` ([`crate::actix::ActixApp`]).
    Actix,
}

impl Framework {
    /// Its name on the `--serve` command line.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Axum => "axum",
            Self::Actix => "actix",
        }
    }
}

/// What a case needs started before the rounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Needs {
    Nothing,
    Redis,
    Postgres,
}

/// One case of the comparison.
#[derive(Debug, Clone)]
struct Case {
    name: &'static str,
    framework: Framework,
    mode: &'static str,
    /// The case its ratios are taken against.
    baseline: &'static str,
    /// Extra environment for the server (`APIKEY_CACHE_*`, `BENCH_*`).
    env: Vec<(&'static str, String)>,
    needs: Needs,
    /// Percent of requests with an unknown key (the wrk script's `UNKNOWN_PCT`).
    unknown_pct: u32,
}

const AXUM_NOAUTH: &str = "axum noauth";
const AXUM_APIKEY: &str = "axum apikey (L1 hits)";
const AXUM_L1_OFF: &str = "axum apikey, L1 disabled (Redis)";
const AXUM_DB_ONLY: &str = "axum apikey, database only (PostgreSQL)";
const ACTIX_NOAUTH: &str = "actix noauth";
const ACTIX_APIKEY: &str = "actix apikey (L1 hits)";

/// Every case; the first of each framework is its baseline.
fn cases() -> Vec<Case> {
    let axum = |name, mode, env, needs, unknown_pct| Case {
        name,
        framework: Framework::Axum,
        mode,
        baseline: AXUM_NOAUTH,
        env,
        needs,
        unknown_pct,
    };
    let actix = |name, mode| Case {
        name,
        framework: Framework::Actix,
        mode,
        baseline: ACTIX_NOAUTH,
        env: Vec::new(),
        needs: Needs::Nothing,
        unknown_pct: 0,
    };
    vec![
        axum(AXUM_NOAUTH, "noauth", vec![], Needs::Nothing, 0),
        axum(
            "axum bearer (tower-http, static)",
            "bearer",
            vec![],
            Needs::Nothing,
            0,
        ),
        axum(AXUM_APIKEY, "apikey", vec![], Needs::Nothing, 0),
        axum(
            "axum apikey, 1% unknown keys",
            "apikey",
            vec![],
            Needs::Nothing,
            1,
        ),
        axum(
            "axum apikey, all keys rate limited",
            "apikey",
            // Far above the load: the limiter's path is measured, not
            // its refusals.
            vec![("BENCH_RATE_LIMIT", "1000000/1".into())],
            Needs::Redis,
            0,
        ),
        axum(
            AXUM_L1_OFF,
            "apikey",
            vec![("APIKEY_CACHE_L1_TTL", "0s".into())],
            Needs::Redis,
            0,
        ),
        axum(
            AXUM_DB_ONLY,
            "apikey",
            vec![("APIKEY_CACHE_MODE", "database_only".into())],
            Needs::Postgres,
            0,
        ),
        actix(ACTIX_NOAUTH, "noauth"),
        actix("actix httpauth (static bearer)", "httpauth"),
        actix(ACTIX_APIKEY, "apikey"),
    ]
}

/// `compare`'s settings (its command line).
#[derive(Debug, Clone)]
pub struct Options {
    /// Rounds (default 8).
    pub rounds: usize,
    /// Seconds of measured load per run (default 3; whole seconds for wrk).
    pub seconds: u64,
    /// Seconds of unmeasured load before each run (default 1).
    pub warmup: u64,
    /// wrk connections (default 32).
    pub connections: u32,
    /// wrk threads (default 1).
    pub threads: u32,
    /// The server's core (default `0`).
    pub pin_server: String,
    /// wrk's and redis-server's core (default `1`).
    pub pin_client: String,
    /// Where the results go (default `benches/results`).
    pub out: PathBuf,
    /// Key counts to measure L1 memory per key at (default 100k and 1M).
    pub memory_keys: Vec<u64>,
    /// Only the cases whose name contains one of these (default: all).
    pub only: Vec<String>,
    /// PostgreSQL server URL (a database is created on it and dropped).
    pub pg_url: String,
    /// The README whose results block a full run rewrites (default the
    /// workspace's; `--readme none` for none).
    pub readme: Option<PathBuf>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            rounds: FULL_ROUNDS,
            seconds: 3,
            warmup: 1,
            connections: 32,
            threads: 1,
            pin_server: "0".into(),
            pin_client: "1".into(),
            out: PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("results"),
            memory_keys: vec![100_000, 1_000_000],
            only: Vec::new(),
            pg_url: std::env::var("APIKEY_CACHE_TEST_PG_URL")
                .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into()),
            readme: Some(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../README.md")),
        }
    }
}

/// The usage text.
pub const USAGE: &str = "\
usage: compare [--rounds N] [--seconds S] [--warmup S] [--connections C] [--threads T]
               [--pin-server CPUS] [--pin-client CPUS] [--out DIR]
               [--memory-keys N,N | none] [--only SUBSTRING,...] [--readme FILE | none]
Defaults: 8 rounds x 3 s (+1 s warm-up), wrk -t1 -c32, server on cpu 0, wrk on cpu 1,
memory at 100000,1000000 keys, every case. Needs wrk, redis-server, taskset, PostgreSQL.
Writes benches/results/latest.{json,md,svg}; a full run (8+ rounds of 3+ s) also
rewrites the README's results block.";

impl Options {
    /// Parses `args` (without the program name).
    ///
    /// ```
    /// use apikey_cache_benches::compare::Options;
    ///
    /// let o = Options::parse(["--rounds", "1", "--seconds", "1", "--memory-keys", "none"]).unwrap();
    /// assert_eq!((o.rounds, o.seconds, o.memory_keys.len()), (1, 1, 0));
    /// assert!(Options::parse(["--rounds"]).is_err());
    /// ```
    pub fn parse<I, S>(args: I) -> Result<Self, String>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let mut o = Self::default();
        let mut args = args.into_iter().map(Into::into);
        while let Some(flag) = args.next() {
            let mut value = || args.next().ok_or(format!("{flag} needs a value\n{USAGE}"));
            let num = |v: String| v.parse::<u64>().map_err(|e| format!("{flag} {v}: {e}"));
            match flag.as_str() {
                "--rounds" => o.rounds = num(value()?)?.max(1) as usize,
                "--seconds" => o.seconds = num(value()?)?.max(1),
                "--warmup" => o.warmup = num(value()?)?,
                "--connections" => o.connections = num(value()?)?.max(1) as u32,
                "--threads" => o.threads = num(value()?)?.max(1) as u32,
                "--pin-server" => o.pin_server = value()?,
                "--pin-client" => o.pin_client = value()?,
                "--out" => o.out = PathBuf::from(value()?),
                "--memory-keys" => {
                    let v = value()?;
                    o.memory_keys = if v == "none" {
                        Vec::new()
                    } else {
                        v.split(',')
                            .map(|n| num(n.into()))
                            .collect::<Result<_, _>>()?
                    };
                }
                "--only" => o.only = value()?.split(',').map(str::to_owned).collect(),
                "--readme" => {
                    let v = value()?;
                    o.readme = (v != "none").then(|| PathBuf::from(v));
                }
                "-h" | "--help" => return Err(USAGE.into()),
                other => return Err(format!("unknown flag {other}\n{USAGE}")),
            }
        }
        Ok(o)
    }

    fn smoke(&self) -> bool {
        self.rounds < FULL_ROUNDS || (self.seconds as f64) < FULL_SECONDS
    }
}

type Error = Box<dyn std::error::Error>;

/// Runs the comparison and writes the results; the report.
pub fn run(o: &Options) -> Result<Report, Error> {
    let exe = std::env::current_exe()?;
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("wrk/zipf.lua");
    let mut cases = cases();
    if !o.only.is_empty() {
        // Keep the baselines of the cases kept: ratios need them.
        let wanted: Vec<&'static str> = cases
            .iter()
            .filter(|c| o.only.iter().any(|s| c.name.contains(s.as_str())))
            .flat_map(|c| [c.name, c.baseline])
            .collect();
        cases.retain(|c| wanted.contains(&c.name));
    }
    if cases.is_empty() {
        return Err("no case matches --only".into());
    }

    let redis = if cases.iter().any(|c| c.needs == Needs::Redis) {
        Some(procs::Redis::start(&o.pin_client)?)
    } else {
        None
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let pg = if cases.iter().any(|c| c.needs == Needs::Postgres) {
        eprintln!(
            "compare: creating a PostgreSQL database with {} keys",
            crate::KEYS
        );
        Some(rt.block_on(procs::Postgres::create(&o.pg_url))?)
    } else {
        None
    };
    let measured = measure(o, &exe, &script, &cases, redis.as_ref(), pg.as_ref());
    if let Some(pg) = pg {
        rt.block_on(pg.drop_database());
    }
    drop(redis);
    let runs = measured?;

    let mut memory = Vec::new();
    for &n in &o.memory_keys {
        eprintln!("compare: L1 memory per key at {n} keys");
        memory.push(Memory {
            keys: n,
            bytes_per_key: procs::memory_per_key(&exe, n)?,
        });
    }

    let results: Vec<CaseResult> = cases
        .iter()
        .zip(&runs)
        .map(|(c, r)| {
            let base = cases
                .iter()
                .position(|b| b.name == c.baseline)
                .map_or(&r[..], |i| &runs[i][..]);
            CaseResult::summarize(c.name, c.baseline, r, base)
        })
        .collect();
    let report = Report {
        date: now_rfc3339(),
        cores: std::thread::available_parallelism().map_or(1, usize::from),
        cpu: cpu_model(),
        setup: format!(
            "{} rotating rounds x {} s (+{} s warm-up), wrk -t{} -c{} (Zipf over {} keys), \
             server on cpu {} (TOKIO_WORKER_THREADS=1), wrk and redis-server on cpu {}",
            o.rounds,
            o.seconds,
            o.warmup,
            o.threads,
            o.connections,
            crate::KEYS,
            o.pin_server,
            o.pin_client
        ),
        rounds: o.rounds,
        seconds: o.seconds as f64,
        smoke: o.smoke(),
        goals: goals(&cases, &runs, &memory),
        cases: results,
        memory,
    };
    std::fs::create_dir_all(&o.out)?;
    std::fs::write(o.out.join("latest.json"), report.to_json())?;
    std::fs::write(o.out.join("latest.md"), report.to_markdown())?;
    std::fs::write(o.out.join("latest.svg"), report.to_svg())?;
    // Only a full run's numbers go into the README.
    if !report.smoke {
        if let Some(readme) = &o.readme {
            let text = std::fs::read_to_string(readme)?;
            match report.update_readme(&text) {
                Some(updated) => std::fs::write(readme, updated)?,
                None => eprintln!("compare: no results markers in {}", readme.display()),
            }
        }
    }
    Ok(report)
}

/// Every round, every case in rotating order; runs per case, in round order.
fn measure(
    o: &Options,
    exe: &std::path::Path,
    script: &std::path::Path,
    cases: &[Case],
    redis: Option<&procs::Redis>,
    pg: Option<&procs::Postgres>,
) -> Result<Vec<Vec<Run>>, Error> {
    let mut runs: Vec<Vec<Run>> = vec![Vec::new(); cases.len()];
    for round in 0..o.rounds {
        let k = round % cases.len();
        for i in (k..cases.len()).chain(0..k) {
            let case = &cases[i];
            let mut env: Vec<(String, String)> = case
                .env
                .iter()
                .map(|(k, v)| ((*k).to_owned(), v.clone()))
                .collect();
            env.push(("TOKIO_WORKER_THREADS".into(), "1".into()));
            match case.needs {
                Needs::Redis => {
                    let url = redis.map(procs::Redis::url).ok_or("no redis")?;
                    env.push(("APIKEY_CACHE_REDIS_URL".into(), url));
                    env.push((
                        "APIKEY_CACHE_KEY_PREFIX".into(),
                        format!("compare-{round}-{i}:"),
                    ));
                }
                Needs::Postgres => {
                    let url = pg.map(|p| p.url.clone()).ok_or("no database")?;
                    env.push(("BENCH_STORE_URL".into(), url));
                }
                Needs::Nothing => {}
            }
            let server =
                procs::Server::start(exe, case.framework.as_str(), case.mode, &env, &o.pin_server)?;
            let load = procs::Load {
                pin: &o.pin_client,
                threads: o.threads,
                connections: o.connections,
                script,
                unknown_pct: case.unknown_pct,
                port: server.port,
            };
            if o.warmup > 0 {
                load.run(o.warmup)?;
            }
            let cpu0 = server.cpu_seconds()?;
            let mut run = load.run(o.seconds)?;
            let cpu1 = server.cpu_seconds()?;
            drop(server);
            if run.requests > 0 {
                run.cpu_us_per_req = Some((cpu1 - cpu0) * 1e6 / run.requests as f64);
            }
            let expected_refusals = case.unknown_pct > 0;
            if run.non_2xx > 0 && !expected_refusals {
                return Err(format!("{}: {} non-2xx responses", case.name, run.non_2xx).into());
            }
            eprintln!(
                "round {} {}: {:.0} req/s, {:.2} us CPU/req",
                round + 1,
                case.name,
                run.rps,
                run.cpu_us_per_req.unwrap_or(0.0)
            );
            runs[i].push(run);
        }
    }
    Ok(runs)
}

/// The issue's goals that the cases run can answer.
fn goals(cases: &[Case], runs: &[Vec<Run>], memory: &[Memory]) -> Vec<Goal> {
    let find = |name: &str| cases.iter().position(|c| c.name == name).map(|i| &runs[i]);
    let rps = |r: &Run| Some(r.rps);
    let p99 = |r: &Run| r.p99_ms;
    let cpu = |r: &Run| r.cpu_us_per_req;
    let mut goals = Vec::new();
    for (ours, base) in [(AXUM_APIKEY, AXUM_NOAUTH), (ACTIX_APIKEY, ACTIX_NOAUTH)] {
        if let (Some(a), Some(b)) = (find(ours), find(base)) {
            let g = |what: &str, m: &dyn Fn(&Run) -> Option<f64>, at_least, bound| {
                Goal::ratio(
                    &format!("{ours} / {base}: {what}"),
                    pair(a, b, m),
                    at_least,
                    bound,
                )
            };
            goals.push(g("throughput", &rps, true, 0.95));
            goals.push(g("p99", &p99, false, 1.2));
            goals.push(g("CPU per request", &cpu, false, 1.05));
        }
    }
    for (other, bound) in [(AXUM_L1_OFF, 3.0), (AXUM_DB_ONLY, 10.0)] {
        if let (Some(a), Some(b)) = (find(AXUM_APIKEY), find(other)) {
            goals.push(Goal::ratio(
                &format!("{AXUM_APIKEY} / {other}: throughput"),
                pair(a, b, &rps),
                true,
                bound,
            ));
        }
    }
    if let Some(m) = memory.iter().max_by_key(|m| m.keys) {
        goals.push(Goal {
            goal: format!("L1 bytes per key at {} keys (3 scopes)", m.keys),
            value: m.bytes_per_key,
            q1: None,
            q3: None,
            target: "<= 512".into(),
            met: m.bytes_per_key <= 512.0,
        });
    }
    goals
}

fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

fn cpu_model() -> Option<String> {
    let info = std::fs::read_to_string("/proc/cpuinfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("model name"))?;
    Some(line.split_once(':')?.1.trim().to_owned())
}

/// How long a server may take to listen (the apikey apps warm 10k keys).
pub(crate) const START_TIMEOUT: Duration = Duration::from_secs(60);
