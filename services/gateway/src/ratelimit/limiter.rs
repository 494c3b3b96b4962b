//! The counters: GCRA (the generic cell rate algorithm, a token bucket kept
//! as one timestamp per key) in Redis, with an in-process copy of the same
//! algorithm for when Redis cannot answer.
//!
//! GCRA stores, per key, the "theoretical arrival time" (TAT) of the next
//! request at the sustained rate. With emission interval `T = period /
//! rate` and tolerance `tau = T * burst`, a request at `now` is allowed when
//! `max(TAT, now) + T - now <= tau`, and then TAT moves to that value. One
//! number per key, no background refill, exact under concurrency when the
//! read-modify-write is atomic: in Redis it is one Lua script (`EVALSHA`),
//! which also reads the clock from Redis (`TIME`) so that gateways with
//! skewed clocks still share one limit. All rules matching a request are
//! checked in the same script, and counters advance only when every rule
//! allows: a request refused by one rule does not spend the others' quota.
//!
//! The checks of requests arriving together are sent in one script call
//! (see [`run_batches`]): one Redis round trip for a whole batch instead of
//! one per request, which cost the gateway half its throughput on busy read
//! paths (a round trip is two socket writes, two wake-ups of other threads
//! and a script run per request). The script still decides request after
//! request, each atomically and in arrival order, with what the earlier ones
//! stored, so decisions are exactly those of one call per request; the
//! requests of a batch share one reading of Redis' clock, taken within the
//! fraction of a millisecond they arrived in.
//!
//! A busy client does not need Redis for every request either: a request
//! that goes to Redis may take a *lease* of several of its key's tokens at
//! once (its counter moves past all of them in the script, atomically, as
//! that many requests would), and the key's next requests on this replica
//! spend them in process, without a round trip, for at most [`LEASE_TTL`].
//! A lease starts at one token (a plain check) and doubles each time the
//! last one ran out before its time, up to an eighth of the rule's burst and
//! [`MAX_LEASE`]; it halves when tokens were left unspent. So a limit is
//! never exceeded, across any number of replicas: every token spent here
//! was taken from the shared counter first. What leasing can cost is the
//! other way: a replica's unspent tokens are lost when their lease ends, so
//! a client may be refused up to one lease early; rules whose burst is
//! under 16 never lease. While a lease is being asked for, the key's other
//! requests on this replica are checked one by one, so they do not all
//! take a lease at once.
//!
//! Redis unreachable (not connected yet, connection lost, slow beyond
//! [`REDIS_TIMEOUT`]): the same decision is made in process, so limits still
//! hold per replica (each replica allowing the full rate, which is the
//! price of staying up). `commerce_gateway_ratelimit_fallback` is 1 while
//! that is the case, and each switch is logged once.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use redis::aio::ConnectionManager;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use super::rules::Rule;

/// How long a limit check may wait for Redis before deciding locally: the
/// limiter sits in front of every request, so a slow Redis must not become
/// a slow API.
pub const REDIS_TIMEOUT: Duration = Duration::from_millis(250);
/// How often the in-process buckets drop the ones that are full again (µs).
/// Pruning on a clock, not on a size, keeps a flood of distinct clients
/// (while Redis is down) from making every request scan the whole table
/// under its lock: the scan runs at most once a second, and the table holds
/// only buckets touched within their own window plus that second.
const LOCAL_PRUNE_INTERVAL_US: u64 = 1_000_000;
/// Most requests decided by one script call. A batch holds what arrived
/// while the previous call was out (tens under heavy load); the cap only
/// keeps one script run, which blocks Redis, short (about 1 µs per check).
const MAX_BATCH: usize = 256;

/// How long a lease's tokens may be spent in process. Short: what a
/// replica holds and does not spend is lost for the client.
pub const LEASE_TTL: Duration = Duration::from_millis(50);
/// Most tokens one lease takes.
pub const MAX_LEASE: u64 = 256;
/// A lease takes at most this share (1/n) of its rule's burst.
const LEASE_SHARE_OF_BURST: u64 = 8;
/// Longest a counter counts as being asked for a lease (µs): the wait for
/// Redis' answer, with room.
const ASKING_FOR_AT_MOST_US: u64 = 2 * REDIS_TIMEOUT.as_micros() as u64;

/// The check script, for a batch of requests. KEYS: the counters of every
/// request, one per matching rule, request after request; ARGV: per request
/// the number of its counters `n`, then per counter its emission interval
/// and tolerance in microseconds and the tokens wanted (1, or a lease).
/// Returns per counter `allowed (0|1), remaining, retry_after_us, reset_us,
/// granted`, in the same order: a lease that does not fit whole gets the
/// tokens that do (at least one, or the request is refused as a plain check
/// would be). Each request's counters advance only if all of them allow it.
const GCRA_SCRIPT: &str = r"
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000000 + tonumber(clock[2])
local results = {}
local first_key = 0
local a = 1
while a <= #ARGV do
  local n = tonumber(ARGV[a])
  a = a + 1
  local tats = {}
  local allowed_all = true
  for i = 1, n do
    local interval = tonumber(ARGV[a])
    local tolerance = tonumber(ARGV[a + 1])
    local granted = tonumber(ARGV[a + 2])
    a = a + 3
    local stored = redis.call('GET', KEYS[first_key + i])
    local tat = now
    if stored then tat = math.max(tonumber(stored), now) end
    if granted > 1 and tat + interval * granted - now > tolerance then
      granted = math.max(1, math.floor((tolerance - (tat - now)) / interval))
    end
    local new_tat = tat + interval * granted
    local ahead = new_tat - now
    if ahead > tolerance then
      allowed_all = false
      table.insert(results, 0)
      table.insert(results, 0)
      table.insert(results, tat + interval - now - tolerance)
      table.insert(results, tat - now)
      table.insert(results, 0)
    else
      table.insert(results, 1)
      table.insert(results, math.floor((tolerance - ahead) / interval))
      table.insert(results, 0)
      table.insert(results, ahead)
      table.insert(results, granted)
      tats[i] = new_tat
    end
  end
  if allowed_all then
    for i = 1, n do
      local ttl_ms = math.ceil((tats[i] - now) / 1000) + 1
      redis.call('SET', KEYS[first_key + i], string.format('%.0f', tats[i]), 'PX', ttl_ms)
    end
  end
  first_key = first_key + n
end
return results
";

/// One request's checks waiting for the next batch, and where its
/// decisions (or why Redis did not decide) go.
struct Pending {
    /// Each check with the tokens it wants (1, or a lease).
    checks: Vec<(Check, u64)>,
    reply: oneshot::Sender<Result<Vec<Grant>, String>>,
}

/// Redis' answer to one check: the decision, and how many tokens it took
/// (0 when refused; more than 1 for a lease).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Grant {
    pub decision: Decision,
    pub granted: u64,
}

/// One rule's verdict on a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    /// Requests that could still come at once.
    pub remaining: u64,
    /// When refused: how long until one more request would be allowed.
    pub retry_after: Duration,
    /// How long until the bucket is full again (quota fully restored).
    pub reset: Duration,
}

/// One counter to check: the rule's GCRA parameters and the counter key.
#[derive(Debug, Clone)]
pub struct Check {
    pub key: String,
    pub interval_us: u64,
    pub tolerance_us: u64,
}

impl Check {
    pub fn new(rule: &Rule, key: String) -> Self {
        Self { key, interval_us: rule.emission_interval_us(), tolerance_us: rule.tolerance_us() }
    }

    /// The largest lease of this check's counter: an eighth of its burst,
    /// at most [`MAX_LEASE`], at least 1 (no lease).
    fn max_lease(&self) -> u64 {
        (self.tolerance_us / self.interval_us.max(1) / LEASE_SHARE_OF_BURST).clamp(1, MAX_LEASE)
    }
}

/// Tokens of one counter taken from Redis and spent here (see the module
/// documentation), and what sizes the next lease.
#[derive(Debug, Clone, Default)]
struct Lease {
    /// Tokens still to spend here.
    left: u64,
    /// Until when they may be (µs since the limiter's origin).
    expires_us: u64,
    /// When Redis granted them.
    granted_us: u64,
    /// Redis' `remaining` and `reset` once they were taken.
    remaining: u64,
    reset_us: u64,
    /// Tokens the last lease took.
    size: u64,
    /// Until when a request is asking Redis for this counter's next lease
    /// (µs; it clears this when answered, and a request dropped while
    /// waiting cannot keep it set for longer).
    asking_until_us: u64,
}

impl Lease {
    fn asking(&self, now: u64) -> bool {
        now < self.asking_until_us
    }

    fn spendable(&self, now: u64) -> bool {
        self.left > 0 && now < self.expires_us
    }

    /// Spends one token; the decision a check at `now` would have had, as
    /// far as this replica knows.
    fn spend(&mut self, now: u64) -> Decision {
        self.left -= 1;
        Decision {
            allowed: true,
            remaining: self.remaining + self.left,
            retry_after: Duration::ZERO,
            reset: Duration::from_micros(self.reset_us.saturating_sub(now - self.granted_us.min(now))),
        }
    }

    /// How many tokens the next request to Redis asks for: more when the
    /// last lease ran out before its time, fewer when some were left.
    fn next_size(&self, now: u64, max: u64) -> u64 {
        let size = if self.left == 0 && now < self.expires_us {
            self.size.saturating_mul(2)
        } else if self.left > 0 {
            self.size / 2
        } else {
            self.size
        };
        size.clamp(1, max)
    }
}

/// The leases of every counter this replica spends tokens of.
#[derive(Debug, Default)]
struct Leases {
    by_key: HashMap<String, Lease>,
    next_prune_us: u64,
}

/// What one request's leases decided before Redis was asked.
struct Spent {
    /// Per check: decided from a lease, or the tokens to ask Redis for and
    /// whether this request asks for the counter's next lease.
    outcomes: Vec<Result<Decision, (u64, bool)>>,
}

/// GCRA for one key (one token); returns the decision and the new TAT when
/// allowed.
pub fn gcra(stored_tat: Option<u64>, now: u64, interval: u64, tolerance: u64) -> (Decision, Option<u64>) {
    let tat = stored_tat.unwrap_or(now).max(now);
    let new_tat = tat.saturating_add(interval);
    let ahead = new_tat - now;
    if ahead > tolerance {
        let decision = Decision {
            allowed: false,
            remaining: 0,
            retry_after: Duration::from_micros(ahead - tolerance),
            reset: Duration::from_micros(tat - now),
        };
        (decision, None)
    } else {
        let decision = Decision {
            allowed: true,
            remaining: (tolerance - ahead) / interval.max(1),
            retry_after: Duration::ZERO,
            reset: Duration::from_micros(ahead),
        };
        (decision, Some(new_tat))
    }
}

/// Metrics of the limiter.
#[derive(Debug, Clone, Default)]
pub struct LimiterMetrics {
    /// 1 while decisions are made in process.
    pub fallback: Gauge,
    /// Requests refused.
    pub limited: Counter,
    /// Requests decided from leased tokens, without asking Redis.
    pub leased: Counter,
    /// Redis checks that failed (each falls back).
    pub redis_errors: Counter,
    /// Versions of the rules file that did not parse (each keeps the last
    /// good rules): worth an alert, since the change did not apply.
    pub rules_file_errors: Counter,
}

/// The fallback's buckets: theoretical arrival time per key (µs since the
/// limiter's origin), pruned every [`LOCAL_PRUNE_INTERVAL_US`].
#[derive(Debug, Default)]
struct LocalBuckets {
    tats: HashMap<String, u64>,
    next_prune_us: u64,
    /// Scans made so far (tests read it).
    prunes: u64,
}

/// Redis-backed limiter with the in-process fallback.
pub struct Limiter {
    redis: Arc<RwLock<Option<ConnectionManager>>>,
    /// Feeds [`run_batches`], started on the first check that finds Redis
    /// connected; it ends when the limiter is dropped.
    queue: OnceLock<mpsc::UnboundedSender<Pending>>,
    local: Mutex<LocalBuckets>,
    leases: Mutex<Leases>,
    origin: Instant,
    in_fallback: AtomicBool,
    /// Whether the first decision was logged (so the initial state is
    /// announced once, whichever it is).
    announced: AtomicBool,
    metrics: LimiterMetrics,
}

impl std::fmt::Debug for Limiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Limiter").field("in_fallback", &self.in_fallback).finish_non_exhaustive()
    }
}

impl Limiter {
    /// `redis` is filled in by the connection task once Redis answers.
    pub fn new(redis: Arc<RwLock<Option<ConnectionManager>>>, metrics: LimiterMetrics) -> Self {
        metrics.fallback.set(1);
        Self {
            redis,
            queue: OnceLock::new(),
            local: Mutex::new(LocalBuckets::default()),
            leases: Mutex::new(Leases::default()),
            origin: Instant::now(),
            in_fallback: AtomicBool::new(true),
            announced: AtomicBool::new(false),
            metrics,
        }
    }

    /// Whether decisions are currently made in process.
    pub fn in_fallback(&self) -> bool {
        self.in_fallback.load(Ordering::Relaxed)
    }

    pub fn metrics(&self) -> &LimiterMetrics {
        &self.metrics
    }

    /// Decides every check of one request, atomically.
    pub async fn check(&self, checks: &[Check]) -> Vec<Decision> {
        if checks.is_empty() {
            return Vec::new();
        }
        let connected = self.redis.read().unwrap_or_else(std::sync::PoisonError::into_inner).is_some();
        let outcome =
            if connected { self.check_shared(checks).await } else { Err("not connected yet".to_owned()) };
        match outcome {
            Ok(decisions) => {
                self.set_fallback(false, None);
                decisions
            }
            Err(reason) => {
                if self.redis.read().unwrap_or_else(std::sync::PoisonError::into_inner).is_some() {
                    self.metrics.redis_errors.inc();
                }
                self.set_fallback(true, Some(&reason));
                self.check_locally(checks)
            }
        }
    }

    fn now_us(&self) -> u64 {
        u64::try_from(self.origin.elapsed().as_micros()).unwrap_or(u64::MAX)
    }

    /// Decides `checks` against the shared counters: from this replica's
    /// leases where it holds tokens, through Redis for the rest (asking for
    /// the next leases on the way). When Redis refuses one of them, the
    /// tokens spent from leases go back to them: a refused request spends
    /// nothing, as in the script.
    async fn check_shared(&self, checks: &[Check]) -> Result<Vec<Decision>, String> {
        let spent = self.spend_leased(checks, self.now_us());
        let asks: Vec<(Check, u64)> = checks
            .iter()
            .zip(&spent.outcomes)
            .filter_map(|(check, outcome)| outcome.err().map(|(wanted, _)| (check.clone(), wanted)))
            .collect();
        if asks.is_empty() {
            self.metrics.leased.inc();
            return Ok(spent.outcomes.into_iter().filter_map(Result::ok).collect());
        }
        let answer = self.check_in_redis(asks).await;
        let now = self.now_us();
        let mut leases = self.leases.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let grants = match answer {
            Ok(grants) => grants,
            Err(reason) => {
                leases.settle(checks, &spent, None, now);
                return Err(reason);
            }
        };
        leases.settle(checks, &spent, Some(&grants), now);
        let mut grants = grants.into_iter();
        Ok(spent
            .outcomes
            .into_iter()
            .map(|outcome| match outcome {
                Ok(decision) => decision,
                Err(_) => {
                    let grant = grants.next().expect("one grant per ask");
                    Decision {
                        remaining: grant.decision.remaining + grant.granted.saturating_sub(1),
                        ..grant.decision
                    }
                }
            })
            .collect())
    }

    /// Spends a token of each check's lease where this replica holds one at
    /// `now`; says for the others what to ask Redis for.
    fn spend_leased(&self, checks: &[Check], now: u64) -> Spent {
        let mut leases = self.leases.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        leases.prune(now);
        let outcomes = checks
            .iter()
            .map(|check| match leases.by_key.get_mut(&check.key) {
                Some(lease) if lease.spendable(now) => Ok(lease.spend(now)),
                // Another request is asking for this counter's lease: a
                // plain check meanwhile.
                Some(lease) if lease.asking(now) => Err((1, false)),
                Some(lease) => {
                    lease.asking_until_us = now + ASKING_FOR_AT_MOST_US;
                    Err((lease.next_size(now, check.max_lease()), true))
                }
                None => {
                    let asking = Lease { asking_until_us: now + ASKING_FOR_AT_MOST_US, ..Lease::default() };
                    leases.by_key.insert(check.key.clone(), asking);
                    Err((1, true))
                }
            })
            .collect();
        Spent { outcomes }
    }

    /// Queues `checks` for the next batch and waits for its decisions,
    /// at most [`REDIS_TIMEOUT`] (a check that was sent may still count in
    /// Redis after that, as a slow single call would).
    async fn check_in_redis(&self, checks: Vec<(Check, u64)>) -> Result<Vec<Grant>, String> {
        let queue = self.queue.get_or_init(|| {
            let (sender, receiver) = mpsc::unbounded_channel();
            tokio::spawn(run_batches(receiver, self.redis.clone()));
            sender
        });
        let (reply, decided) = oneshot::channel();
        queue.send(Pending { checks, reply }).map_err(|_| "the batching task stopped".to_owned())?;
        match tokio::time::timeout(REDIS_TIMEOUT, decided).await {
            Ok(Ok(outcome)) => outcome,
            Ok(Err(_)) => Err("the batching task dropped the check".to_owned()),
            Err(_) => Err(format!("no answer within {REDIS_TIMEOUT:?}")),
        }
    }

    fn set_fallback(&self, fallback: bool, reason: Option<&str>) {
        let was = self.in_fallback.swap(fallback, Ordering::Relaxed);
        let first = !self.announced.swap(true, Ordering::Relaxed);
        if was == fallback && !first {
            return;
        }
        self.metrics.fallback.set(i64::from(fallback));
        if fallback {
            tracing::warn!(
                reason = reason.unwrap_or(""),
                "rate limits fall back to in-process counters (Redis unavailable); each replica now limits on its own"
            );
        } else {
            tracing::info!("rate limits are shared through Redis");
        }
    }

    fn check_locally(&self, checks: &[Check]) -> Vec<Decision> {
        let now = self.now_us();
        let mut local = self.local.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if now >= local.next_prune_us {
            // A bucket whose arrival time has passed is full: forgetting it
            // changes no decision.
            local.tats.retain(|_, tat| *tat > now);
            local.next_prune_us = now + LOCAL_PRUNE_INTERVAL_US;
            local.prunes += 1;
        }
        let buckets = &mut local.tats;
        let verdicts: Vec<(Decision, Option<u64>)> = checks
            .iter()
            .map(|check| gcra(buckets.get(&check.key).copied(), now, check.interval_us, check.tolerance_us))
            .collect();
        if verdicts.iter().all(|(decision, _)| decision.allowed) {
            for (check, (_, tat)) in checks.iter().zip(&verdicts) {
                if let Some(tat) = tat {
                    buckets.insert(check.key.clone(), *tat);
                }
            }
        }
        verdicts.into_iter().map(|(decision, _)| decision).collect()
    }
}

impl Leases {
    /// Drops the leases that ended over a second ago (none being asked
    /// for), at most once a second.
    fn prune(&mut self, now: u64) {
        if now >= self.next_prune_us {
            self.by_key
                .retain(|_, lease| lease.asking(now) || lease.expires_us + LOCAL_PRUNE_INTERVAL_US > now);
            self.next_prune_us = now + LOCAL_PRUNE_INTERVAL_US;
        }
    }

    /// Records Redis' answer (`None`: no answer) to the asks of `spent`:
    /// the new leases when every check was allowed; otherwise the tokens
    /// `spent` took from leases go back.
    fn settle(&mut self, checks: &[Check], spent: &Spent, grants: Option<&[Grant]>, now: u64) {
        let allowed = grants.is_some_and(|grants| grants.iter().all(|grant| grant.decision.allowed));
        let mut grants = grants.unwrap_or_default().iter();
        for (check, outcome) in checks.iter().zip(&spent.outcomes) {
            // (Taken first: the grants are in the order of the asks.)
            let grant = outcome.is_err().then(|| grants.next()).flatten();
            let Some(lease) = self.by_key.get_mut(&check.key) else {
                continue;
            };
            match outcome {
                Ok(_) if !allowed => lease.left += 1,
                Ok(_) | Err((_, false)) => {}
                Err((_, true)) => {
                    lease.asking_until_us = 0;
                    match grant.filter(|_| allowed) {
                        Some(grant) => {
                            *lease = Lease {
                                left: grant.granted.saturating_sub(1),
                                expires_us: now + LEASE_TTL.as_micros() as u64,
                                granted_us: now,
                                remaining: grant.decision.remaining,
                                reset_us: u64::try_from(grant.decision.reset.as_micros()).unwrap_or(u64::MAX),
                                size: grant.granted,
                                asking_until_us: 0,
                            };
                        }
                        // Refused, or no answer: nothing taken, no lease.
                        None => {
                            lease.left = 0;
                            lease.expires_us = 0;
                        }
                    }
                }
            }
        }
    }
}

/// Decides queued checks in batches until every sender is gone: takes
/// whatever is queued (up to [`MAX_BATCH`] requests), sends it as one script
/// call, hands each request its decisions, and repeats. No batch waits for
/// more requests to come: under light load a batch is one request and the
/// cost is that of a direct call, under heavy load the requests queued while
/// one call was out share the next.
async fn run_batches(
    mut queue: mpsc::UnboundedReceiver<Pending>,
    redis: Arc<RwLock<Option<ConnectionManager>>>,
) {
    let script = redis::Script::new(GCRA_SCRIPT);
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while queue.recv_many(&mut batch, MAX_BATCH).await > 0 {
        let checks: usize = batch.iter().map(|pending| pending.checks.len()).sum();
        let connection = redis.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
        let outcome = match connection {
            Some(mut connection) => {
                let mut invocation = script.prepare_invoke();
                for pending in &batch {
                    invocation.arg(pending.checks.len());
                    for (check, wanted) in &pending.checks {
                        invocation
                            .key(&check.key)
                            .arg(check.interval_us)
                            .arg(check.tolerance_us)
                            .arg(*wanted);
                    }
                }
                match tokio::time::timeout(
                    REDIS_TIMEOUT,
                    invocation.invoke_async::<Vec<i64>>(&mut connection),
                )
                .await
                {
                    Ok(Ok(values)) if values.len() == checks * VALUES_PER_CHECK => Ok(values),
                    Ok(Ok(values)) => {
                        Err(format!("the script returned {} values for {checks} checks", values.len()))
                    }
                    Ok(Err(error)) => Err(error.to_string()),
                    Err(_) => Err(format!("no answer within {REDIS_TIMEOUT:?}")),
                }
            }
            None => Err("not connected".to_owned()),
        };
        match outcome {
            Ok(values) => {
                let mut rest = values.as_slice();
                for pending in batch.drain(..) {
                    let (own, next) = rest.split_at(pending.checks.len() * VALUES_PER_CHECK);
                    rest = next;
                    // A request that gave up waiting has dropped its receiver.
                    let _ = pending.reply.send(Ok(decode(own)));
                }
            }
            Err(reason) => {
                for pending in batch.drain(..) {
                    let _ = pending.reply.send(Err(reason.clone()));
                }
            }
        }
    }
}

/// What the script returns per check.
const VALUES_PER_CHECK: usize = 5;

fn decode(values: &[i64]) -> Vec<Grant> {
    let number = |value: i64| u64::try_from(value).unwrap_or(0);
    values
        .chunks_exact(VALUES_PER_CHECK)
        .map(|chunk| Grant {
            decision: Decision {
                allowed: chunk[0] == 1,
                remaining: number(chunk[1]),
                retry_after: Duration::from_micros(number(chunk[2])),
                reset: Duration::from_micros(number(chunk[3])),
            },
            granted: number(chunk[4]),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gcra_allows_the_burst_then_refuses_until_one_interval_passes() {
        // 10 per second (interval 100 ms), burst 3.
        let (interval, tolerance) = (100_000, 300_000);
        let mut tat = None;
        let mut remaining = Vec::new();
        for _ in 0..3 {
            let (decision, new_tat) = gcra(tat, 0, interval, tolerance);
            assert!(decision.allowed);
            remaining.push(decision.remaining);
            tat = new_tat;
        }
        assert_eq!(remaining, [2, 1, 0]);
        let (refused, none) = gcra(tat, 0, interval, tolerance);
        assert!(!refused.allowed && none.is_none());
        assert_eq!(refused.retry_after, Duration::from_millis(100));
        let (later, _) = gcra(tat, 100_000, interval, tolerance);
        assert!(later.allowed, "one interval later one more request fits");
    }

    fn check(key: &str, burst: u64) -> Check {
        Check { key: key.into(), interval_us: 1_000, tolerance_us: 1_000 * burst }
    }

    fn grant(allowed: bool, remaining: u64, granted: u64) -> Grant {
        let decision =
            Decision { allowed, remaining, retry_after: Duration::ZERO, reset: Duration::from_millis(10) };
        Grant { decision, granted }
    }

    #[test]
    fn a_lease_grows_while_it_runs_out_in_time_shrinks_when_left_over_and_stays_within_its_rule() {
        assert_eq!(check("small", 15).max_lease(), 1, "a burst under 16 never leases");
        assert_eq!(check("mid", 80).max_lease(), 10);
        assert_eq!(check("huge", 1_000_000).max_lease(), MAX_LEASE);
        let lease = |left, expires_us, size| Lease { left, expires_us, size, ..Lease::default() };
        assert_eq!(lease(0, 100, 4).next_size(50, 64), 8, "ran out before its end");
        assert_eq!(lease(0, 100, 40).next_size(50, 64), 64, "capped");
        assert_eq!(lease(3, 100, 8).next_size(150, 64), 4, "tokens were left");
        assert_eq!(lease(0, 100, 8).next_size(150, 64), 8, "ran out about when it ended");
        assert_eq!(lease(1, 100, 1).next_size(150, 64), 1, "never below one");
        assert_eq!(lease(0, 100, 64).next_size(50, 10), 10, "a rule changed to a smaller burst");
    }

    #[test]
    fn leased_tokens_are_spent_here_and_come_back_when_redis_refuses_another_rule() {
        let limiter = Limiter::new(Arc::new(RwLock::new(None)), LimiterMetrics::default());
        let both = [check("wide", 1_000), check("narrow", 1_000)];
        let wide = &both[..1];
        let now = 1_000;
        // First sight of both counters: plain checks, each asking.
        let first = limiter.spend_leased(wide, now);
        assert_eq!(first.outcomes.iter().map(|o| o.err()).collect::<Vec<_>>(), [Some((1, true))]);
        limiter.leases.lock().unwrap().settle(wide, &first, Some(&[grant(true, 900, 1)]), now);
        // It ran out in time: the next ask is for two, and meanwhile others
        // check one token at a time.
        let second = limiter.spend_leased(wide, now);
        assert_eq!(second.outcomes[0].err(), Some((2, true)));
        assert_eq!(limiter.spend_leased(wide, now).outcomes[0].err(), Some((1, false)));
        limiter.leases.lock().unwrap().settle(wide, &second, Some(&[grant(true, 897, 2)]), now);
        // One token of the lease is left: the next request spends it here.
        let third = limiter.spend_leased(&both, now);
        let decided = third.outcomes[0].expect("spent from the lease");
        assert!(decided.allowed);
        assert_eq!(decided.remaining, 897);
        assert_eq!(third.outcomes[1].err(), Some((1, true)));
        // Redis refuses the other rule: the token goes back to the lease.
        limiter.leases.lock().unwrap().settle(&both, &third, Some(&[grant(false, 0, 0)]), now);
        let leases = limiter.leases.lock().unwrap();
        assert_eq!(leases.by_key["wide"].left, 1, "the refused request spent nothing");
        assert!(!leases.by_key["narrow"].asking(now) && leases.by_key["narrow"].left == 0);
    }

    #[tokio::test]
    async fn the_local_limiter_does_not_spend_other_rules_when_one_refuses() {
        let limiter = Limiter::new(Arc::new(RwLock::new(None)), LimiterMetrics::default());
        let tight = Check { key: "tight".into(), interval_us: 1_000_000_000, tolerance_us: 1_000_000_000 };
        let loose = Check { key: "loose".into(), interval_us: 1_000_000_000, tolerance_us: 2_000_000_000 };
        assert!(limiter.check(&[tight.clone(), loose.clone()]).await.iter().all(|d| d.allowed));
        let second = limiter.check(&[tight, loose.clone()]).await;
        assert!(!second[0].allowed && second[1].allowed);
        let alone = limiter.check(&[loose]).await;
        assert!(alone[0].allowed, "the refused request did not spend the loose rule's quota");
        assert!(limiter.in_fallback());
        assert_eq!(limiter.metrics().fallback.get(), 1);
    }

    #[tokio::test]
    async fn a_flood_of_distinct_clients_does_not_make_every_request_scan_the_local_table() {
        let limiter = Limiter::new(Arc::new(RwLock::new(None)), LimiterMetrics::default());
        // 150,000 clients, each with a bucket that stays partly spent for
        // an hour: none can be pruned.
        let hour = 3_600_000_000;
        let check =
            |client: usize| Check { key: format!("ip:{client}"), interval_us: hour, tolerance_us: hour };
        let started = std::time::Instant::now();
        for client in 0..150_000 {
            assert!(limiter.check(&[check(client)]).await[0].allowed);
        }
        // One scan per started second (the first check scans the empty
        // table); before, every request past 100,000 keys scanned them all.
        let most = started.elapsed().as_secs() + 2;
        let scans = limiter.local.lock().unwrap().prunes;
        assert!(scans <= most, "{scans} scans of the table for 150,000 requests in {:?}", started.elapsed());
        assert_eq!(limiter.local.lock().unwrap().tats.len(), 150_000, "an active bucket was dropped");

        // Once a bucket's window has passed, the next scan drops it.
        let short = Check { key: "short".into(), interval_us: 1, tolerance_us: 1 };
        assert!(limiter.check(std::slice::from_ref(&short)).await[0].allowed);
        limiter.local.lock().unwrap().next_prune_us = 0;
        assert!(!limiter.check(&[check(0)]).await[0].allowed, "client 0's bucket is spent");
        let local = limiter.local.lock().unwrap();
        assert!(!local.tats.contains_key("short"), "a full bucket survived the scan");
        assert!(local.tats.contains_key("ip:1"), "an active bucket was pruned");
    }
}
