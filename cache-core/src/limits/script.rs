//! The limiter's one Redis script: GCRA debt, monthly quota and token
//! leases, decided atomically per key.
//!
//! **Keys.** `{prefix}rl:{<id>}:<N>:<P>` (a hash: the debt, its time, and a
//! field per lease holder; `{prefix}rl:{<id>}` for a key with a quota and no
//! rate limit) and `{prefix}quota:{<id>}:<YYYY-MM>` (the month's count). The
//! key id in braces is their Redis Cluster hash tag: both keys of one call
//! are in one slot, whatever the prefix (unless it holds an unmatched `{`).
//!
//! **One call** takes `need` tokens to spend at once (requests waiting now)
//! and up to `want` more to hold (a lease's prefetch), for one holder (an
//! instance's lease of this key), and reports what that holder still holds.
//! A token is one admitted request: it is charged to the rate limit and to
//! the quota alike.
//!
//! **Exactness.** A token spent at once adds `P` to the debt, exactly what a
//! request does. A held token is charged too, as `P` that does *not drain*:
//! the script admits while `debt + held × P ≤ P × N`, where `held` counts
//! every holder's tokens. When a holder reports that it holds fewer (it
//! spent them), the difference becomes ordinary debt, as of that report
//! (never earlier than the requests were served, so never in their favour);
//! returned tokens vanish without a charge; a lease past its `until` is
//! charged as spent at `until` (its holder stops spending then). So at every
//! moment the debt Redis keeps is at least the debt the requests actually
//! served would have left, plus `P` per token still held: every request,
//! whenever it spends its token, is admitted by GCRA over the fleet's real
//! requests, and the fleet never admits more than the limit. Nothing is
//! charged twice: a returned, reported or expired token leaves `held` once.
//!
//! **Shrinking near the limit.** A prefetch is at most a quarter of what is
//! left shared by the holders (`left / (4 × holders)`, holders: the leases of the
//! key Redis still remembers, spending or not), at least one: the last tokens
//! go one at a time to whoever asks, so a fleet cannot strand many in leases
//! that are not being spent.
//!
//! **Retries.** Each holder's calls carry increasing request ids. The script
//! remembers, per holder, the last id and its reply: the same call again
//! (a client retry after a lost reply) gets that reply and changes nothing;
//! an older one (overtaken) changes nothing either. A holder that never got
//! a reply says so on its next call (`acked`, the last id it applied): the
//! prefetch it did not receive leaves its count. The memory is kept while
//! the holder holds tokens and `memory` ms past its lease.
//!
//! **Numbers.** Lua's are doubles, exact up to 2^53: the rate-limit part
//! keeps `debt + held × P ≤ P × N ≤ 2^53` (see `limits.rs`), and numbers are
//! written back with `%.0f`, never `tostring` (14 digits).

use std::time::Duration;

use crate::l2::{L2Error, L2};
use crate::KeyId;

use super::Gcra;

/// ARGV: see [`Call`]. Returns `{code, now, held, retry, reset, discard}`:
/// code 0 granted (`now` tokens to spend at once, `held` more to hold; in
/// place of `retry`, the tokens left to the fleet after that),
/// 1 rate limited after granting `now` (`retry`, `reset` in ms), 2 quota
/// exceeded after `now`, 3 an overtaken call (nothing changed), 4 returned.
/// `discard`: the holder claimed more than it was given (Redis lost its
/// state, or the lease expired by Redis's reckoning): it must drop them.
///
/// `#!lua`: Redis refuses the whole script when out of memory, rather than
/// stopping it after its first write.
const SCRIPT: &str = r#"#!lua
local now = tonumber(ARGV[1])
local n = tonumber(ARGV[2])
local p = tonumber(ARGV[3])
local quota = tonumber(ARGV[4])
local quota_ttl = tonumber(ARGV[5])
local me = ARGV[6]
local req = tonumber(ARGV[7])
local acked = tonumber(ARGV[8])
local held = tonumber(ARGV[9])
local need = tonumber(ARGV[10])
local want = tonumber(ARGV[11])
local drop = ARGV[12] == '1'
local till = tonumber(ARGV[13])
local memory = tonumber(ARGV[14])

local function num(x) return string.format('%.0f', x) end

local debt, at = 0, now
local holders, order = {}, {}
local flat = redis.call('HGETALL', KEYS[1])
for i = 1, #flat, 2 do
  local f, v = flat[i], flat[i + 1]
  if f == 'debt' then debt = tonumber(v)
  elseif f == 'at' then at = tonumber(v)
  elseif string.sub(f, 1, 2) == 'h:' then
    local t = {}
    for x in string.gmatch(v, '%S+') do t[#t + 1] = tonumber(x) end
    local h = {name = f, held = t[1], till = t[2], req = t[3], lost = t[4],
               reply = {t[5], t[6], t[7], t[8], t[9], t[10]}}
    holders[f] = h
    order[#order + 1] = h
  end
end

local mine = nil
if me ~= '' then
  mine = holders['h:' .. me]
  if mine and req <= mine.req then
    if req == mine.req then return mine.reply end
    return {3, 0, 0, 0, 0, 0}
  end
  if not mine then
    mine = {name = 'h:' .. me, held = 0, till = 0, req = 0, lost = 0}
    order[#order + 1] = mine
  end
end

local function drain(t)
  if t > at then
    if n > 0 then
      local drained = (t - at) * n
      if drained < debt then debt = debt - drained else debt = 0 end
    end
    at = t
  end
end

local function release(x)
  if x > 0 and redis.call('EXISTS', KEYS[2]) == 1 then
    if redis.call('DECRBY', KEYS[2], x) < 0 then
      redis.call('SET', KEYS[2], 0, 'KEEPTTL')
    end
  end
end

-- Leases past their end were spent, as far as anyone knows, at their end.
table.sort(order, function(a, b) return a.till < b.till end)
for _, h in ipairs(order) do
  if h.held > 0 and h.till <= now then
    drain(h.till)
    debt = debt + h.held * p
    h.held = 0
    h.dirty = true
  end
end
drain(now)

local discard = 0
if mine then
  if mine.lost > 0 and acked ~= mine.req and mine.till > now then
    -- The holder never received its last prefetch.
    mine.held = math.max(0, mine.held - mine.lost)
    if quota >= 0 then release(mine.lost) end
  end
  if held > mine.held then
    discard = 1
    held = 0
  end
  debt = debt + (mine.held - held) * p
  mine.held = held
  mine.req = req
  mine.dirty = true
end

local function save(reply)
  if mine then
    mine.reply = reply
    mine.till = till
  end
  local pttl = 0
  if n > 0 then
    redis.call('HSET', KEYS[1], 'debt', num(debt), 'at', num(at))
    -- Until drained, plus a period: the debt is judged by the instances'
    -- clocks but expires by Redis's, and a key that outlives its debt is
    -- harmless, while one that expires early would hand out a fresh burst.
    pttl = math.ceil(debt / n) + at - now + p
  end
  for _, h in ipairs(order) do
    if h.held == 0 and h.till + memory <= now then
      redis.call('HDEL', KEYS[1], h.name)
    else
      if h.dirty then
        local r = h.reply
        redis.call('HSET', KEYS[1], h.name, table.concat({num(h.held), num(h.till),
          num(h.req), num(h.lost), num(r[1]), num(r[2]), num(r[3]), num(r[4]),
          num(r[5]), num(r[6])}, ' '))
      end
      if h.till - now + memory > pttl then pttl = h.till - now + memory end
    end
  end
  if pttl > 0 then redis.call('PEXPIRE', KEYS[1], pttl) end
  return reply
end

if drop then
  -- Returned tokens were never spent: no debt, and the month has them back.
  if quota >= 0 and mine.till > now then release(held) end
  mine.held = 0
  mine.lost = 0
  return save({4, 0, 0, 0, 0, discard})
end

-- Holders are every lease of this key still remembered: instances that
-- spent it lately, whether they hold tokens right now or not.
local total, others = 0, 0
for _, h in ipairs(order) do
  total = total + h.held
  if h ~= mine and h.till + memory > now then others = others + 1 end
end
local left = need + want
local qleft, rleft = -1, -1
if quota >= 0 then
  qleft = math.max(0, quota - (tonumber(redis.call('GET', KEYS[2])) or 0))
  left = qleft
end
if n > 0 then
  -- The largest k with debt + (total + k) * p <= p * n. `debt + total * p`
  -- never exceeds `p * n` (held tokens were admitted against it), so every
  -- product here stays within 2^53 and the correction is exact.
  local free = math.max(0, p * n - debt - total * p)
  rleft = math.min(n, math.floor(free / p))
  if rleft * p > free then rleft = rleft - 1 end
  if rleft < n and (rleft + 1) * p <= free then rleft = rleft + 1 end
  if qleft < 0 or rleft < left then left = rleft end
end

local code, now_n, hold, x, y = 0, math.min(need, left), 0, 0, 0
debt = debt + now_n * p
if now_n < need then
  if qleft >= 0 and (rleft < 0 or qleft <= rleft) then
    code = 2
  else
    -- As if every held token were spent now: the soonest a token can be
    -- free unless some are returned. `owed > p * n - p` here.
    code = 1
    local owed = debt + total * p
    x = math.ceil((owed - (p * n - p)) / n)
    y = math.ceil(owed / n)
  end
else
  local rest = left - now_n
  if want > 0 then
    hold = math.min(want, rest, math.max(1, math.floor(rest / (4 * (others + 1)))))
  end
  -- What the fleet has left after this call (for the holder's judgement of
  -- how contended the key is); -1: nothing limits it.
  x = rest - hold
  if qleft < 0 and rleft < 0 then x = -1 end
end
if mine then
  mine.held = mine.held + hold
  mine.lost = hold
end
if quota >= 0 and now_n + hold > 0 then
  redis.call('INCRBY', KEYS[2], now_n + hold)
  if redis.call('PTTL', KEYS[2]) < 0 then redis.call('PEXPIRE', KEYS[2], quota_ttl) end
end
return save({code, now_n, hold, x, y, discard})
"#;

/// How long past its lease a holder's last request id and reply are kept
/// (for a retry of its last call), in ms.
const MEMORY_MS: i64 = 10_000;

/// The script, loaded once per process per connection (`EVALSHA`).
pub(crate) struct LimitScript(redis::Script);

/// One holder's side of a call: its name (unique per lease), the call's id
/// (increasing), the id of the last reply it applied, and the tokens it
/// still holds.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Holder<'a> {
    pub(crate) name: &'a str,
    pub(crate) req: u64,
    pub(crate) acked: u64,
    pub(crate) held: u64,
}

/// One call of the script.
#[derive(Debug, Clone)]
pub(crate) struct Call<'a> {
    pub(crate) prefix: &'a str,
    pub(crate) id: &'a KeyId,
    pub(crate) gcra: Option<Gcra>,
    pub(crate) quota: Option<u64>,
    pub(crate) now_ms: i64,
    /// The month's first instant after `now_ms`, and its tag (`YYYY-MM`).
    pub(crate) month_end_ms: i64,
    pub(crate) month: &'a str,
    /// `None`: a single request, decided and forgotten (leases off).
    pub(crate) holder: Option<Holder<'a>>,
    pub(crate) need: u64,
    pub(crate) want: u64,
    /// Give back what the holder holds; grant nothing.
    pub(crate) give_back: bool,
    /// Until when the holder may spend what it holds (ms).
    pub(crate) until_ms: i64,
}

/// What the script decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reply {
    /// `now` tokens to spend at once, `held` more to hold; `left` tokens
    /// left to the fleet after them (`None`: nothing limits it).
    Granted {
        now: u64,
        held: u64,
        left: Option<u64>,
        discard: bool,
    },
    /// Rate limited once `now` tokens were granted.
    RateLimited {
        now: u64,
        retry: Duration,
        reset: Duration,
        discard: bool,
    },
    /// Quota exceeded once `now` tokens were granted.
    QuotaExceeded { now: u64, discard: bool },
    /// A call older than one the script already saw: nothing changed.
    Overtaken,
    /// The holder's tokens were given back.
    Returned,
}

/// The rate-limit hash of `id` under `gcra` (or of a key with a quota and
/// no rate limit): the limit is in the name, so a changed limit starts from
/// a whole bucket instead of misreading a debt scaled by another `N`.
pub(crate) fn rate_key(prefix: &str, id: &KeyId, gcra: Option<Gcra>) -> String {
    match gcra {
        Some(g) => format!("{prefix}rl:{{{}}}:{}:{}", id.as_str(), g.n, g.p),
        None => format!("{prefix}rl:{{{}}}", id.as_str()),
    }
}

/// The month's quota counter of `id`.
pub(crate) fn quota_key(prefix: &str, id: &KeyId, month: &str) -> String {
    format!("{prefix}quota:{{{}}}:{month}", id.as_str())
}

fn ms(v: i64) -> Duration {
    Duration::from_millis(u64::try_from(v).unwrap_or(0))
}

impl LimitScript {
    pub(crate) fn new() -> Self {
        Self(redis::Script::new(SCRIPT))
    }

    /// `call` as an invocation of the script.
    fn invocation(&self, call: &Call<'_>) -> redis::ScriptInvocation<'_> {
        let mut inv = self.0.prepare_invoke();
        inv.key(rate_key(call.prefix, call.id, call.gcra))
            .key(quota_key(call.prefix, call.id, call.month));
        let holder = call.holder.unwrap_or(Holder {
            name: "",
            req: 0,
            acked: 0,
            held: 0,
        });
        inv.arg(call.now_ms)
            .arg(call.gcra.map_or(0, |g| g.n))
            .arg(call.gcra.map_or(0, |g| g.p))
            .arg(
                call.quota
                    .map_or(-1, |q| i64::try_from(q).unwrap_or(i64::MAX)),
            )
            // Keep a month's count a day past the month, for dashboards.
            .arg(call.month_end_ms - call.now_ms + 86_400_000)
            .arg(holder.name)
            .arg(holder.req)
            .arg(holder.acked)
            .arg(holder.held)
            .arg(call.need)
            .arg(call.want)
            .arg(if call.give_back { "1" } else { "0" })
            .arg(call.until_ms)
            .arg(MEMORY_MS);
        inv
    }

    /// Runs `call` under the Redis timeout and breaker.
    pub(crate) async fn run(&self, l2: &L2, call: &Call<'_>) -> Result<Reply, L2Error> {
        let inv = self.invocation(call);
        l2.call_script::<Raw>(&inv).await.map(Reply::of)
    }
}

/// The script's reply as Redis sends it.
type Raw = (i64, i64, i64, i64, i64, i64);

impl Reply {
    fn of((code, now, held, x, y, discard): Raw) -> Self {
        let count = |v: i64| u64::try_from(v).unwrap_or(0);
        let discard = discard != 0;
        match code {
            0 => Self::Granted {
                now: count(now),
                held: count(held),
                left: u64::try_from(x).ok(),
                discard,
            },
            1 => Self::RateLimited {
                now: count(now),
                retry: ms(x),
                reset: ms(y),
                discard,
            },
            2 => Self::QuotaExceeded {
                now: count(now),
                discard,
            },
            3 => Self::Overtaken,
            _ => Self::Returned,
        }
    }
}

// A private `redis-server` for the tests below, as the integration tests
// start theirs (`tests/support`).
#[cfg(test)]
#[path = "../../tests/support/deploy.rs"]
mod deploy;
#[cfg(test)]
#[path = "../../tests/support/ports.rs"]
mod ports;
#[cfg(test)]
#[path = "../../tests/support/redis.rs"]
mod redis_server;

/// The script against a real Redis, call by call: exactness of a lease's
/// charge, held tokens that do not drain, retries, lost replies, lapses,
/// give-backs, and the hash tags.
#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    use super::redis_server::RedisServer;

    const T0: i64 = 1_900_000_000_000;
    const MONTH_END: i64 = T0 + 20 * 86_400_000;
    const P: u64 = 60_000;

    struct Lab {
        _server: RedisServer,
        conn: redis::Connection,
        script: LimitScript,
    }

    /// A call for key `id` at `now` for `n` per minute (0: none) and
    /// `quota`: one request, no lease.
    fn call(id: &KeyId, now: i64, n: u64, quota: Option<u64>) -> Call<'_> {
        Call {
            prefix: "p:",
            id,
            gcra: (n > 0).then_some(Gcra { n, p: P }),
            quota,
            now_ms: now,
            month_end_ms: MONTH_END,
            month: "2030-03",
            holder: None,
            need: 1,
            want: 0,
            give_back: false,
            until_ms: now + 30_000,
        }
    }

    /// A holder's side of a call, with what it holds.
    fn holder(name: &str, req: u64, acked: u64, held: u64) -> Option<Holder<'_>> {
        Some(Holder {
            name,
            req,
            acked,
            held,
        })
    }

    impl Lab {
        fn new() -> Self {
            let server = RedisServer::start();
            let conn = server.conn();
            Self {
                _server: server,
                conn,
                script: LimitScript::new(),
            }
        }

        /// The reply, without what a grant says is left (see `left`).
        fn run(&mut self, call: &Call<'_>) -> Reply {
            match self.run_raw(call) {
                Reply::Granted {
                    now, held, discard, ..
                } => Reply::Granted {
                    now,
                    held,
                    left: None,
                    discard,
                },
                other => other,
            }
        }

        fn run_raw(&mut self, call: &Call<'_>) -> Reply {
            let inv = self.script.invocation(call);
            Reply::of(inv.invoke::<Raw>(&mut self.conn).unwrap())
        }

        /// Debt, its time, and each holder's numbers.
        fn state(&mut self, id: &KeyId, n: u64) -> (u64, i64, HashMap<String, Vec<i64>>) {
            let gcra = (n > 0).then_some(Gcra { n, p: P });
            let all: HashMap<String, String> = redis::cmd("HGETALL")
                .arg(rate_key("p:", id, gcra))
                .query(&mut self.conn)
                .unwrap();
            let holders = all
                .iter()
                .filter_map(|(k, v)| {
                    let name = k.strip_prefix("h:")?;
                    let nums = v.split(' ').map(|x| x.parse().unwrap()).collect();
                    Some((name.to_owned(), nums))
                })
                .collect();
            let num = |f: &str| all.get(f).map(|v| v.parse::<i64>().unwrap());
            (
                num("debt").map_or(0, |d| d as u64),
                num("at").unwrap_or(0),
                holders,
            )
        }

        fn used(&mut self, id: &KeyId) -> Option<u64> {
            redis::cmd("GET")
                .arg(quota_key("p:", id, "2030-03"))
                .query(&mut self.conn)
                .unwrap()
        }
    }

    fn granted(now: u64, held: u64) -> Reply {
        Reply::Granted {
            now,
            held,
            left: None,
            discard: false,
        }
    }

    #[test]
    fn keys_share_their_hash_tag() {
        // Redis Cluster hashes what lies between the first `{` and the
        // first `}` after it.
        fn tag(key: &str) -> &str {
            let open = key.find('{').unwrap();
            let close = key[open + 1..].find('}').unwrap() + open + 1;
            &key[open + 1..close]
        }
        let g = Some(Gcra { n: 5, p: 1000 });
        for id in ["key_1", "a}b", "{x", "x{y}z"] {
            let id = KeyId::from(id);
            let rate = rate_key("apikey-cache:", &id, g);
            let quota = quota_key("apikey-cache:", &id, "2030-01");
            assert_eq!(tag(&rate), tag(&quota), "{rate} {quota}");
            assert_eq!(tag(&rate_key("p:", &id, None)), tag(&quota));
        }
        assert_eq!(
            rate_key("p:", &KeyId::from("key_1"), g),
            "p:rl:{key_1}:5:1000"
        );
        assert_eq!(
            quota_key("p:", &KeyId::from("key_1"), "2030-01"),
            "p:quota:{key_1}:2030-01"
        );
    }

    #[test]
    fn a_lease_takes_what_as_many_requests_would() {
        let mut lab = Lab::new();
        let (a, b) = (KeyId::from("a"), KeyId::from("b"));
        // Ten single requests of key `a`...
        for _ in 0..10 {
            assert_eq!(lab.run(&call(&a, T0, 100, None)), granted(1, 0));
        }
        let (debt_a, _, _) = lab.state(&a, 100);
        assert_eq!(debt_a, 10 * P);
        // ...and one of key `b`, with nine tokens held.
        let lease = Call {
            holder: holder("h1", 1, 0, 0),
            want: 9,
            ..call(&b, T0, 100, None)
        };
        assert_eq!(
            lab.run_raw(&lease),
            Reply::Granted {
                now: 1,
                held: 9,
                left: Some(90),
                discard: false
            }
        );
        let (debt_b, at, holders) = lab.state(&b, 100);
        assert_eq!(debt_b + 9 * P, debt_a, "held tokens count as requests");
        assert_eq!(at, T0);
        assert_eq!(holders["h1"][..4], [9, T0 + 30_000, 1, 9]);
        // The bucket refuses both at the same point, with the same figures.
        let refusal = |lab: &mut Lab, id: &KeyId| {
            let mut admitted = 0;
            loop {
                match lab.run(&call(id, T0, 100, None)) {
                    Reply::Granted { .. } => admitted += 1,
                    other => return (admitted, other),
                }
            }
        };
        let (admitted_a, refused_a) = refusal(&mut lab, &a);
        let (admitted_b, refused_b) = refusal(&mut lab, &b);
        assert_eq!((admitted_a, admitted_b), (90, 90));
        assert_eq!(refused_a, refused_b);
        assert_eq!(
            refused_a,
            Reply::RateLimited {
                now: 0,
                retry: Duration::from_millis(600),
                reset: Duration::from_millis(60_000),
                discard: false
            }
        );
    }

    #[test]
    fn held_tokens_do_not_drain_until_reported() {
        let mut lab = Lab::new();
        let id = KeyId::from("k}1");
        // 20 per minute: one token drains every 3 s.
        let n = 20;
        let lease = Call {
            holder: holder("h1", 1, 0, 0),
            need: 0,
            want: 5,
            ..call(&id, T0, n, None)
        };
        assert_eq!(lab.run(&lease), granted(0, 5));
        // 12 s later (four tokens' worth of draining), the five held tokens
        // are still charged: fifteen left.
        let later = T0 + 12_000;
        for _ in 0..15 {
            assert_eq!(lab.run(&call(&id, later, n, None)), granted(1, 0));
        }
        assert!(matches!(
            lab.run(&call(&id, later, n, None)),
            Reply::RateLimited { .. }
        ));
        // The holder reports two left: three spent, charged as of now.
        let report = Call {
            holder: holder("h1", 2, 1, 2),
            need: 0,
            want: 0,
            ..call(&id, later, n, None)
        };
        assert_eq!(lab.run(&report), granted(0, 0));
        let (debt, at, holders) = lab.state(&id, n);
        assert_eq!((debt, at), (18 * P, later));
        assert_eq!(holders["h1"][0], 2);
        // 3 s on, one token has drained: one single request fits.
        assert_eq!(lab.run(&call(&id, later + 3_000, n, None)), granted(1, 0));
        match lab.run(&call(&id, later + 3_000, n, None)) {
            // The two held as if spent now: 18 + 2 tokens owed, the next
            // one free in 3 s, all of them in 60 s.
            Reply::RateLimited { retry, reset, .. } => {
                assert_eq!(retry, Duration::from_millis(3_000));
                assert_eq!(reset, Duration::from_millis(60_000));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_repeated_call_changes_nothing() {
        let mut lab = Lab::new();
        let id = KeyId::from("k}1");
        let first_call = Call {
            holder: holder("h1", 7, 0, 0),
            want: 4,
            ..call(&id, T0, 100, Some(1000))
        };
        let first = lab.run(&first_call);
        assert_eq!(first, granted(1, 4));
        let state = lab.state(&id, 100);
        let used = lab.used(&id);
        assert_eq!(used, Some(5));
        // The same call again (a client retrying after a lost reply): the
        // same answer, nothing taken twice.
        assert_eq!(lab.run(&first_call), first);
        assert_eq!(lab.state(&id, 100), state);
        assert_eq!(lab.used(&id), used);
        // An older one (overtaken by the first): nothing at all.
        let older = Call {
            holder: holder("h1", 6, 0, 0),
            ..first_call.clone()
        };
        assert_eq!(lab.run(&older), Reply::Overtaken);
        assert_eq!(lab.state(&id, 100), state);
        assert_eq!(lab.used(&id), used);
        // Refusals are replayed too.
        let mut req = 8;
        let refusal = loop {
            let c = Call {
                holder: holder("h1", req, req - 1, 0),
                want: 0,
                need: 50,
                ..call(&id, T0, 100, Some(1000))
            };
            match lab.run(&c) {
                Reply::Granted { .. } => req += 1,
                other => break (c, other),
            }
        };
        assert!(matches!(refusal.1, Reply::RateLimited { now: 45, .. }));
        assert_eq!(lab.run(&refusal.0), refusal.1);
    }

    #[test]
    fn a_prefetch_that_never_arrived_is_taken_back() {
        let mut lab = Lab::new();
        let id = KeyId::from("k}1");
        let first = Call {
            holder: holder("h1", 1, 0, 0),
            want: 4,
            ..call(&id, T0, 100, Some(1000))
        };
        assert_eq!(lab.run(&first), granted(1, 4));
        assert_eq!(lab.used(&id), Some(5));
        // Its reply was lost: the next call says the last reply applied was
        // none, so the four held tokens are not in the holder's hands.
        let next = Call {
            holder: holder("h1", 2, 0, 0),
            need: 0,
            want: 0,
            ..call(&id, T0, 100, Some(1000))
        };
        assert_eq!(lab.run(&next), granted(0, 0));
        let (debt, _, holders) = lab.state(&id, 100);
        assert_eq!(debt, P, "only the request served at once");
        assert_eq!(holders["h1"][0], 0);
        assert_eq!(lab.used(&id), Some(1));
        // Applied, it stays: held 3 of 4, one spent.
        let kept = Call {
            holder: holder("h1", 3, 2, 0),
            need: 0,
            want: 4,
            ..call(&id, T0, 100, Some(1000))
        };
        assert_eq!(lab.run(&kept), granted(0, 4));
        let report = Call {
            holder: holder("h1", 4, 3, 3),
            need: 0,
            want: 0,
            ..call(&id, T0, 100, Some(1000))
        };
        assert_eq!(lab.run(&report), granted(0, 0));
        let (debt, _, holders) = lab.state(&id, 100);
        assert_eq!((debt, holders["h1"][0]), (2 * P, 3));
        assert_eq!(lab.used(&id), Some(5));
    }

    #[test]
    fn a_lapsed_lease_counts_as_spent_at_its_end() {
        let mut lab = Lab::new();
        let id = KeyId::from("k}1");
        let n = 20;
        let lease = Call {
            holder: holder("h1", 1, 0, 0),
            need: 0,
            want: 5,
            until_ms: T0 + 30_000,
            ..call(&id, T0, n, Some(100))
        };
        assert_eq!(lab.run(&lease), granted(0, 5));
        // 42 s in: charged at 30 s, drained 12 s (four tokens) since.
        let later = T0 + 42_000;
        assert_eq!(lab.run(&call(&id, later, n, Some(100))), granted(1, 0));
        let (debt, at, holders) = lab.state(&id, n);
        assert_eq!((debt, at), (2 * P, later));
        assert!(holders.is_empty(), "forgotten 10 s after its end");
        // The month keeps them: nobody can say they were not spent.
        assert_eq!(lab.used(&id), Some(6));
        // The holder, back, claims them: told to discard, nothing charged.
        let back = Call {
            holder: holder("h1", 2, 1, 5),
            need: 0,
            want: 0,
            ..call(&id, later, n, Some(100))
        };
        assert_eq!(
            lab.run(&back),
            Reply::Granted {
                now: 0,
                held: 0,
                left: None,
                discard: true
            }
        );
        assert_eq!(lab.state(&id, n).0, 2 * P);
    }

    #[test]
    fn a_give_back_returns_the_quota_and_charges_nothing() {
        let mut lab = Lab::new();
        let id = KeyId::from("k}1");
        let lease = Call {
            holder: holder("h1", 1, 0, 0),
            want: 8,
            ..call(&id, T0, 100, Some(1000))
        };
        assert_eq!(lab.run(&lease), granted(1, 8));
        assert_eq!(lab.used(&id), Some(9));
        // Three spent, five given back.
        let back = Call {
            holder: holder("h1", 2, 1, 5),
            need: 0,
            want: 0,
            give_back: true,
            until_ms: T0,
            ..call(&id, T0, 100, Some(1000))
        };
        assert_eq!(lab.run(&back), Reply::Returned);
        let (debt, _, holders) = lab.state(&id, 100);
        assert_eq!(debt, 4 * P, "the four served, not the five returned");
        assert_eq!(holders["h1"][0], 0);
        assert_eq!(lab.used(&id), Some(4));
        // Remembered a while (a retry of the give-back), then forgotten.
        assert_eq!(lab.run(&back), Reply::Returned);
        assert_eq!(lab.used(&id), Some(4));
        let later = call(&id, T0 + MEMORY_MS, 100, Some(1000));
        assert_eq!(lab.run(&later), granted(1, 0));
        assert!(lab.state(&id, 100).2.is_empty());
    }

    #[test]
    fn the_last_tokens_go_one_at_a_time() {
        let mut lab = Lab::new();
        let id = KeyId::from("k}1");
        // Three holders known; 60 tokens of 60 per minute.
        for (i, name) in ["a", "b", "c"].into_iter().enumerate() {
            let c = Call {
                holder: holder(name, 1, 0, 0),
                need: u64::from(i == 0),
                want: 0,
                ..call(&id, T0, 60, None)
            };
            assert_eq!(lab.run(&c), granted(u64::from(i == 0), 0));
        }
        // 59 left: at most 59 / (4 x 3) = 4, then less, then one each.
        let mut sizes = Vec::new();
        for req in 2..100 {
            let c = Call {
                holder: holder("a", req, req - 1, 0),
                need: 0,
                want: 100,
                ..call(&id, T0, 60, None)
            };
            match lab.run(&c) {
                Reply::Granted { held: 0, .. } => break,
                Reply::Granted { held, .. } => sizes.push(held),
                other => panic!("{other:?}"),
            }
        }
        let mut want = vec![4, 4, 4, 3, 3, 3, 3, 2, 2, 2, 2, 2, 2];
        want.resize(want.len() + 23, 1);
        assert_eq!(sizes, want);
        assert_eq!(sizes.iter().sum::<u64>(), 59);
    }

    #[test]
    fn quota_only_keys_lease_too() {
        let mut lab = Lab::new();
        let id = KeyId::from("k}1");
        let lease = Call {
            holder: holder("h1", 1, 0, 0),
            want: 100,
            ..call(&id, T0, 0, Some(10))
        };
        // A quarter of the nine left after the request served.
        assert_eq!(lab.run(&lease), granted(1, 2));
        assert_eq!(lab.used(&id), Some(3));
        let ttl: i64 = redis::cmd("PTTL")
            .arg(quota_key("p:", &id, "2030-03"))
            .query(&mut lab.conn)
            .unwrap();
        let want = MONTH_END - T0 + 86_400_000;
        assert!((want - 5_000..=want).contains(&ttl), "{ttl}");
        let (_, _, holders) = lab.state(&id, 0);
        assert_eq!(holders["h1"][0], 2);
        assert!(matches!(
            lab.run_raw(&call(&id, T0, 0, Some(10))),
            Reply::Granted { left: Some(6), .. }
        ));
        for _ in 0..6 {
            assert_eq!(lab.run(&call(&id, T0, 0, Some(10))), granted(1, 0));
        }
        assert_eq!(
            lab.run(&call(&id, T0, 0, Some(10))),
            Reply::QuotaExceeded {
                now: 0,
                discard: false
            }
        );
    }
}
