//! The shared ledger on Redis (feature `redis`): several proxy replicas, and services that call
//! providers directly, keep one budget per limit id.
//!
//! - Spend and reservations are integers of micro-dollars (µUSD): a call's cost is rounded to
//!   the nearest µUSD (a reservation up), then only added and subtracted as integers, so there
//!   is no float drift however many replicas add to a limit.
//! - Admission is one Lua script (one atomic step on Redis): it reads spend and reservations of
//!   every limit the call names, decides as the memory ledger does (`spent`: refuse once spend
//!   has reached max; `reserve`: refuse when spend + reserved + this call's worst case would pass
//!   max) and, when the call is admitted, holds its reservation on every limit.
//! - Settlement is one Lua script per batch: release the hold, add the cost. Settlements are
//!   queued (bounded, counted) and applied in order by one background task, so a call never
//!   waits for Redis at its end; each carries a sequence number of this ledger instance, and the
//!   script skips those already applied, so a batch retried after a timeout counts once.
//! - Reset windows are key expiry: a limit with `reset` keeps its spend in a key that expires at
//!   the end of the window, windows aligned to whole periods since the Unix epoch on Redis's
//!   clock (`1d` resets at 00:00 UTC), so every replica agrees when a window ends.
//! - A hold is a member of a sorted set scored by its lease's end: a replica that dies with
//!   calls in flight leaves holds that lapse after the lease (default 15 minutes) instead of
//!   shrinking the budget for ever.
//! - Every Redis operation has a timeout. When Redis does not answer, [`OnLedgerError`] decides:
//!   `closed` refuses calls that name a block limit (others are served), `open` admits calls on
//!   the last known spend; either way settlements wait in the queue and are replayed.
//!
//! Keys (`{prefix}` defaults to `llm-meter`): `{prefix}:spend:{id}`, `{prefix}:reserved:{id}`,
//! `{prefix}:holds:{id}`, `{prefix}:unconfigured` (ids calls named that no limit configures),
//! `{prefix}:applied:{instance}` (the last settlement an instance applied). One Redis (or a
//! primary with replicas); Redis Cluster is not supported. Budgets outlive a Redis restart only
//! as far as Redis persists them (AOF or RDB).

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, IntoConnectionInfo, Script, Value};
use tokio::sync::Notify;

use crate::names;
use crate::record::limits::{
    check_limits, Admission, AdmissionMode, Hold, Ledger, LedgerError, LedgerFuture, LedgerHealth, LedgerObserver,
    LedgerOp, LimitConfig, LimitError, LimitKind, LimitState, LimitStatus, OnLedgerError,
};

const LEDGER: &str = names::LEDGER_REDIS;

/// Mode codes the scripts know a limit by.
const MODE_ALLOW: i64 = 0;
const MODE_BLOCK_SPENT: i64 = 1;
const MODE_BLOCK_RESERVE: i64 = 2;
const MODE_UNCONFIGURED: i64 = 3;

/// Settlements applied per round trip, at most.
const BATCH: usize = 128;
/// How long the last applied sequence number of an instance is kept.
const APPLIED_TTL_SECS: u64 = 7 * 86_400;

const ADMIT: &str = r#"
-- KEYS: per id i: spend (3i-2), reserved (3i-1), holds (3i); last: the unconfigured set.
-- ARGV: hold member ('' for none), reservation µUSD, lease ms, then per id: mode, max µUSD, id.
local t = redis.call('TIME')
local now_us = tonumber(t[1]) * 1000000 + tonumber(t[2])
local now = math.floor(now_us / 1000)
local n = (#KEYS - 1) / 3
local unconfigured = KEYS[#KEYS]
local member, amount, lease = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local out, tracked, refused = {}, {}, false
for i = 1, n do
  local sk, rk, hk = KEYS[3 * i - 2], KEYS[3 * i - 1], KEYS[3 * i]
  local mode, max, id = tonumber(ARGV[1 + 3 * i]), tonumber(ARGV[2 + 3 * i]), ARGV[3 + 3 * i]
  local reserved = tonumber(redis.call('GET', rk) or '0')
  local lapsed = redis.call('ZRANGEBYSCORE', hk, '-inf', now)
  if #lapsed > 0 then
    for _, m in ipairs(lapsed) do
      reserved = reserved - tonumber(string.match(m, ':(%d+)$') or '0')
    end
    if reserved < 0 then reserved = 0 end
    redis.call('ZREMRANGEBYSCORE', hk, '-inf', now)
    redis.call('SET', rk, reserved)
  end
  local spend = tonumber(redis.call('GET', sk) or '0')
  local blocked = 0
  if mode == 1 and spend >= max then blocked = 1 end
  if mode == 2 and (spend >= max or spend + reserved + amount > max) then blocked = 1 end
  if blocked == 1 then refused = true end
  tracked[i] = mode ~= 3 or redis.call('SISMEMBER', unconfigured, id) == 1
  out[4 * i - 3] = blocked
  out[4 * i - 2] = spend
  out[4 * i - 1] = reserved
  out[4 * i] = tracked[i] and 1 or 0
end
if not refused and member ~= '' and amount > 0 then
  for i = 1, n do
    if tracked[i] then
      redis.call('ZADD', KEYS[3 * i], now + lease, member)
      out[4 * i - 1] = redis.call('INCRBY', KEYS[3 * i - 1], amount)
    end
  end
end
out[4 * n + 1] = now_us
return out
"#;

const SETTLE: &str = r#"
-- KEYS: 1 this instance's last applied sequence, 2 the unconfigured set, then per unique id u:
-- spend (3u), reserved (3u+1), holds (3u+2).
-- ARGV: 1 unique ids, 2 most unconfigured ids tracked, 3 TTL of KEYS[1] in s, then per unique
-- id: mode, reset period ms (0: none), id; then per settlement: sequence, hold member ('' for
-- none), cost µUSD, k, and k indexes of unique ids.
local t = redis.call('TIME')
local now_us = tonumber(t[1]) * 1000000 + tonumber(t[2])
local now = math.floor(now_us / 1000)
local nu, bound, ttl = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local applied = tonumber(redis.call('GET', KEYS[1]) or '0')
local mode, period, ids, tracked = {}, {}, {}, {}
for u = 1, nu do
  mode[u], period[u], ids[u] = tonumber(ARGV[1 + 3 * u]), tonumber(ARGV[2 + 3 * u]), ARGV[3 + 3 * u]
  tracked[u] = mode[u] ~= 3 or redis.call('SISMEMBER', KEYS[2], ids[u]) == 1
end
local a, fresh = 4 + 3 * nu, 0
while a <= #ARGV do
  local seq, member, cost, k = tonumber(ARGV[a]), ARGV[a + 1], tonumber(ARGV[a + 2]), tonumber(ARGV[a + 3])
  if seq > applied then
    applied = seq
    fresh = fresh + 1
    for j = 1, k do
      local u = tonumber(ARGV[a + 3 + j])
      if not tracked[u] and redis.call('SCARD', KEYS[2]) < bound then
        redis.call('SADD', KEYS[2], ids[u])
        tracked[u] = true
      end
      if tracked[u] then
        local sk, rk, hk = KEYS[3 * u], KEYS[3 * u + 1], KEYS[3 * u + 2]
        if member ~= '' and redis.call('ZREM', hk, member) == 1 then
          local left = redis.call('DECRBY', rk, tonumber(string.match(member, ':(%d+)$') or '0'))
          if left < 0 then redis.call('SET', rk, 0) end
        end
        if cost > 0 then
          redis.call('INCRBY', sk, cost)
          if period[u] > 0 then
            redis.call('PEXPIREAT', sk, (math.floor(now / period[u]) + 1) * period[u])
          end
        end
      end
    end
  end
  a = a + 4 + k
end
redis.call('SET', KEYS[1], applied, 'EX', ttl)
local out = {}
for u = 1, nu do
  out[3 * u - 2] = tonumber(redis.call('GET', KEYS[3 * u]) or '0')
  out[3 * u - 1] = tonumber(redis.call('GET', KEYS[3 * u + 1]) or '0')
  out[3 * u] = tracked[u] and 1 or 0
end
out[3 * nu + 1] = now_us
out[3 * nu + 2] = fresh
return out
"#;

const READ: &str = r#"
-- KEYS: 1 the unconfigured set, then per configured id: spend, reserved, holds.
-- ARGV: 1 the key prefix (the keys of unconfigured ids are made from it).
-- Returns per configured id: spend, reserved; then per unconfigured id: id, spend, reserved;
-- then Redis's time in µs.
local t = redis.call('TIME')
local now_us = tonumber(t[1]) * 1000000 + tonumber(t[2])
local now = math.floor(now_us / 1000)
local function read(sk, rk, hk)
  local reserved = tonumber(redis.call('GET', rk) or '0')
  local lapsed = redis.call('ZRANGEBYSCORE', hk, '-inf', now)
  if #lapsed > 0 then
    for _, m in ipairs(lapsed) do
      reserved = reserved - tonumber(string.match(m, ':(%d+)$') or '0')
    end
    if reserved < 0 then reserved = 0 end
    redis.call('ZREMRANGEBYSCORE', hk, '-inf', now)
    redis.call('SET', rk, reserved)
  end
  return tonumber(redis.call('GET', sk) or '0'), reserved
end
local out = {}
for i = 1, (#KEYS - 1) / 3 do
  local s, r = read(KEYS[3 * i - 1], KEYS[3 * i], KEYS[3 * i + 1])
  table.insert(out, s)
  table.insert(out, r)
end
for _, id in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  local p = ARGV[1]
  local s, r = read(p .. ':spend:' .. id, p .. ':reserved:' .. id, p .. ':holds:' .. id)
  table.insert(out, id)
  table.insert(out, s)
  table.insert(out, r)
end
table.insert(out, now_us)
return out
"#;

/// USD as whole µUSD, to the nearest (negative, NaN and infinite amounts are 0).
fn micros(usd: f64) -> i64 {
    if usd.is_finite() && usd > 0.0 {
        (usd * 1e6).round().min(i64::MAX as f64) as i64
    } else {
        0
    }
}

/// A reservation as whole µUSD, rounded up (a worst case stays a worst case).
fn reservation_micros(usd: f64) -> i64 {
    if usd.is_finite() && usd > 0.0 {
        (usd * 1e6).ceil().min(i64::MAX as f64) as i64
    } else {
        0
    }
}

fn usd(micros: i64) -> f64 {
    micros as f64 / 1e6
}

/// `url` with its password (if any) replaced by `***`: what logs and `Debug` may show.
pub fn redact_url(url: &str) -> String {
    let Some(scheme_end) = url.find("://").map(|i| i + 3) else {
        return url.to_owned();
    };
    let rest = &url[scheme_end..];
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let Some(at) = rest[..authority_end].rfind('@') else {
        return url.to_owned();
    };
    let userinfo = &rest[..at];
    let user = userinfo.split(':').next().unwrap_or_default();
    let shown = if userinfo.contains(':') || !user.is_empty() {
        if userinfo.contains(':') {
            format!("{user}:***")
        } else {
            "***".to_owned()
        }
    } else {
        String::new()
    };
    format!("{}{shown}@{}", &url[..scheme_end], &rest[at + 1..])
}

/// Settings of a [`RedisLedger`].
pub struct RedisLedgerBuilder {
    url: String,
    password: Option<String>,
    limits: Vec<LimitConfig>,
    on_error: OnLedgerError,
    timeout: Duration,
    prefix: String,
    max_queued: usize,
    lease: Duration,
    max_unconfigured: usize,
    refresh: Duration,
}

impl fmt::Debug for RedisLedgerBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisLedgerBuilder")
            .field("url", &redact_url(&self.url))
            .field("password", &self.password.as_ref().map(|_| "***"))
            .field("on_error", &self.on_error)
            .field("timeout", &self.timeout)
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

impl RedisLedgerBuilder {
    /// What Redis does when it cannot be asked in time (default `closed`).
    pub fn on_error(mut self, policy: OnLedgerError) -> Self {
        self.on_error = policy;
        self
    }
    /// Longest wait for any one Redis operation, connecting included (default 250 ms). No call
    /// waits longer than this on Redis.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }
    /// The password, when it is not in the URL (e.g. read from an environment variable).
    pub fn password(mut self, password: impl Into<String>) -> Self {
        self.password = Some(password.into());
        self
    }
    /// Prefix of every key (default `llm-meter`): deployments sharing one Redis keep apart.
    pub fn key_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }
    /// Settlements queued at most while Redis does not answer (default 100,000); past it they
    /// are dropped and counted.
    pub fn max_queued(mut self, n: usize) -> Self {
        self.max_queued = n.max(1);
        self
    }
    /// How long a call's hold lasts if it never settles (its replica died; default 15 min).
    pub fn lease(mut self, lease: Duration) -> Self {
        self.lease = lease;
        self
    }
    /// Unconfigured limit ids tracked at most (default 1000, as the memory ledger).
    pub fn max_unconfigured(mut self, n: usize) -> Self {
        self.max_unconfigured = n;
        self
    }
    /// How often every limit is read afresh when nothing else reads it (default 1 s).
    pub fn refresh_every(mut self, every: Duration) -> Self {
        self.refresh = every.max(Duration::from_millis(10));
        self
    }

    /// The ledger; starts its background task on the current tokio runtime. Fails on invalid
    /// limits, an unreadable URL, or outside a tokio runtime; never because Redis is down (the
    /// ledger connects when first used and reconnects by itself).
    pub fn build(self) -> Result<RedisLedger, LimitError> {
        check_limits(&self.limits)?;
        let config = |why: String| LimitError::Config(format!("ledger redis {}: {why}", redact_url(&self.url)));
        let mut info = self
            .url
            .as_str()
            .into_connection_info()
            .map_err(|e| config(format!("not a Redis URL ({e})")))?;
        if let Some(password) = &self.password {
            let settings = info.redis_settings().clone().set_password(password);
            info = info.set_redis_settings(settings);
        }
        let client = redis::Client::open(info).map_err(|e| config(e.to_string()))?;
        let runtime = tokio::runtime::Handle::try_current()
            .map_err(|_| config("the Redis ledger needs a tokio runtime to run its queue".into()))?;
        let instance = std::collections::hash_map::RandomState::new().hash_one((
            SystemTime::now(),
            std::process::id(),
            self.prefix.as_str(),
        ));
        let configs: HashMap<String, LimitConfig> = self.limits.iter().map(|l| (l.id.clone(), l.clone())).collect();
        let mut configured: Vec<String> = configs.keys().cloned().collect();
        configured.sort();
        let entries = configured
            .iter()
            .map(|id| (id.clone(), Cached::new(configs.get(id).cloned())))
            .collect();
        let shared = Arc::new(Shared {
            url: redact_url(&self.url),
            client,
            conn: tokio::sync::Mutex::new(None),
            retry_at: Mutex::new(None),
            timeout: self.timeout,
            on_error: self.on_error,
            prefix: self.prefix,
            instance,
            lease: self.lease,
            max_unconfigured: self.max_unconfigured,
            max_queued: self.max_queued,
            refresh: self.refresh,
            configs,
            configured,
            view: Mutex::new(View { entries, offset_us: 0 }),
            queue: Mutex::new(Queue::default()),
            work: Notify::new(),
            applied: Notify::new(),
            applied_seq: AtomicU64::new(0),
            next_hold: AtomicU64::new(1),
            available: AtomicBool::new(true),
            dropped: AtomicU64::new(0),
            replayed: AtomicU64::new(0),
            closed: AtomicBool::new(false),
            observers: RwLock::new(Vec::new()),
        });
        runtime.spawn(run(shared.clone()));
        Ok(RedisLedger { shared })
    }
}

/// The ledger on Redis: see the `llm_meter` crate docs and README ("Replicas: budgets on Redis"). Cheap to share (`Arc`); dropping the last
/// handle stops its background task after one last attempt to apply the queue (call
/// [`Ledger::flush`] first to be sure).
pub struct RedisLedger {
    shared: Arc<Shared>,
}

impl fmt::Debug for RedisLedger {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisLedger")
            .field("url", &self.shared.url)
            .field("prefix", &self.shared.prefix)
            .field("on_error", &self.shared.on_error)
            .finish_non_exhaustive()
    }
}

impl Drop for RedisLedger {
    fn drop(&mut self) {
        self.shared.closed.store(true, Ordering::SeqCst);
        self.shared.work.notify_one();
    }
}

/// What this instance knows of one limit: the values last read from Redis and the settlements
/// still queued here.
#[derive(Debug)]
struct Cached {
    config: Option<LimitConfig>,
    spend: i64,
    reserved: i64,
    /// Redis's time (µs) of the read; older answers never overwrite newer ones.
    version: i64,
    /// Queued cost not yet applied.
    pending_spend: i64,
    /// Queued releases of holds not yet applied.
    pending_release: i64,
}

impl Cached {
    fn new(config: Option<LimitConfig>) -> Self {
        Cached {
            config,
            spend: 0,
            reserved: 0,
            version: 0,
            pending_spend: 0,
            pending_release: 0,
        }
    }

    fn period_ms(&self) -> i64 {
        self.config
            .as_ref()
            .and_then(|c| c.reset)
            .map_or(0, |p| i64::try_from(p.as_millis()).unwrap_or(i64::MAX).max(1))
    }

    /// Spend as known at Redis time `now_us`: the read value while its window lasts, plus what
    /// is queued here.
    fn spend_at(&self, now_us: i64) -> i64 {
        let period = self.period_ms();
        let remote = if period > 0 && self.version > 0 && now_us / 1000 / period != self.version / 1000 / period {
            0 // the window the value was read in has ended: its key has expired
        } else {
            self.spend
        };
        remote.saturating_add(self.pending_spend)
    }

    fn reserved_now(&self) -> i64 {
        (self.reserved - self.pending_release).max(0)
    }

    fn state_at(&self, now_us: i64) -> LimitState {
        self.config
            .as_ref()
            .map_or(LimitState::Ok, |c| c.state(usd(self.spend_at(now_us))))
    }

    /// Takes values read at Redis time `version`, unless newer ones are already here.
    fn update(&mut self, spend: i64, reserved: i64, version: i64) {
        if version >= self.version {
            self.spend = spend;
            self.reserved = reserved;
            self.version = version;
        }
    }
}

#[derive(Debug)]
struct View {
    entries: HashMap<String, Cached>,
    /// Redis's clock minus ours, in µs, at the last answer.
    offset_us: i64,
}

fn local_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
}

impl View {
    fn redis_now_us(&self) -> i64 {
        local_us().saturating_add(self.offset_us)
    }

    fn saw_time(&mut self, redis_us: i64) {
        self.offset_us = redis_us - local_us();
    }

    fn unconfigured(&self) -> usize {
        self.entries.values().filter(|e| e.config.is_none()).count()
    }
}

/// One call's settlement, waiting to be applied.
#[derive(Clone, Debug)]
struct Settlement {
    seq: u64,
    ids: Vec<String>,
    /// The hold's member in the holds sets (empty: none).
    member: String,
    hold_micros: i64,
    cost: i64,
    attempts: u32,
}

#[derive(Debug, Default)]
struct Queue {
    items: VecDeque<Settlement>,
    next_seq: u64,
}

struct Shared {
    url: String,
    client: redis::Client,
    conn: tokio::sync::Mutex<Option<MultiplexedConnection>>,
    /// While connecting just failed: fail fast until then.
    retry_at: Mutex<Option<Instant>>,
    timeout: Duration,
    on_error: OnLedgerError,
    prefix: String,
    instance: u64,
    lease: Duration,
    max_unconfigured: usize,
    max_queued: usize,
    refresh: Duration,
    configs: HashMap<String, LimitConfig>,
    /// Configured ids, sorted.
    configured: Vec<String>,
    view: Mutex<View>,
    queue: Mutex<Queue>,
    /// Wakes the background task (a settlement was queued, a flush waits, the ledger closed).
    work: Notify,
    /// Tells flushes that settlements were applied.
    applied: Notify,
    applied_seq: AtomicU64,
    next_hold: AtomicU64,
    available: AtomicBool,
    dropped: AtomicU64,
    replayed: AtomicU64,
    closed: AtomicBool,
    observers: RwLock<Vec<Arc<dyn LedgerObserver>>>,
}

fn unavailable(reason: impl fmt::Display) -> LedgerError {
    LedgerError::Unavailable {
        ledger: LEDGER,
        reason: reason.to_string(),
    }
}

/// Keeps the first of repeated ids (a hold is one member per limit).
fn unique(ids: &[String]) -> Vec<&String> {
    let mut out: Vec<&String> = Vec::with_capacity(ids.len());
    for id in ids {
        if !out.contains(&id) {
            out.push(id);
        }
    }
    out
}

impl Shared {
    fn lock_view(&self) -> std::sync::MutexGuard<'_, View> {
        self.view.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn lock_queue(&self) -> std::sync::MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn key(&self, what: &str, id: &str) -> String {
        format!("{}:{what}:{id}", self.prefix)
    }

    fn unconfigured_key(&self) -> String {
        format!("{}:unconfigured", self.prefix)
    }

    fn mode(&self, id: &str) -> (i64, i64, i64) {
        match self.configs.get(id) {
            None => (MODE_UNCONFIGURED, 0, 0),
            Some(c) => {
                let mode = match (c.kind, c.admission) {
                    (LimitKind::Allow, _) => MODE_ALLOW,
                    (LimitKind::Block, AdmissionMode::Spent) => MODE_BLOCK_SPENT,
                    (LimitKind::Block, AdmissionMode::Reserve) => MODE_BLOCK_RESERVE,
                };
                let period = c
                    .reset
                    .map_or(0, |p| i64::try_from(p.as_millis()).unwrap_or(i64::MAX).max(1));
                (mode, micros(c.max), period)
            }
        }
    }

    fn names_block_limit(&self, ids: &[String]) -> bool {
        ids.iter()
            .any(|id| self.configs.get(id).is_some_and(|c| c.kind == LimitKind::Block))
    }

    fn observe(&self, op: LedgerOp, took: Duration, error: Option<&LedgerError>) {
        self.available.store(error.is_none(), Ordering::Relaxed);
        if let Ok(observers) = self.observers.read() {
            for o in observers.iter() {
                o.operation(op, took, error);
            }
        }
    }

    /// A connection: the open one, or a new one (failing fast for a moment after a failed try).
    async fn connection(&self) -> Result<MultiplexedConnection, LedgerError> {
        let mut slot = self.conn.lock().await;
        if let Some(c) = slot.as_ref() {
            return Ok(c.clone());
        }
        if let Ok(retry) = self.retry_at.lock() {
            if retry.is_some_and(|at| Instant::now() < at) {
                return Err(unavailable("not connected (reconnecting)"));
            }
        }
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.timeout))
            .set_response_timeout(Some(self.timeout));
        match self.client.get_multiplexed_async_connection_with_config(&config).await {
            Ok(c) => {
                *slot = Some(c.clone());
                Ok(c)
            }
            Err(e) => {
                if let Ok(mut retry) = self.retry_at.lock() {
                    *retry = Some(Instant::now() + Duration::from_millis(200).min(self.timeout));
                }
                Err(unavailable(e))
            }
        }
    }

    /// Runs one script invocation within the timeout; a broken connection is dropped so the
    /// next operation reconnects.
    async fn invoke<T: redis::FromRedisValue>(
        &self,
        op: LedgerOp,
        script: &Script,
        keys: &[String],
        args: &[Vec<u8>],
    ) -> Result<T, LedgerError> {
        let started = Instant::now();
        let attempt = async {
            let mut conn = self.connection().await?;
            let mut invocation = script.prepare_invoke();
            for k in keys {
                invocation.key(k);
            }
            for a in args {
                invocation.arg(a.as_slice());
            }
            invocation.invoke_async::<T>(&mut conn).await.map_err(|e| {
                if e.is_io_error() || e.is_connection_dropped() || e.is_connection_refusal() || e.is_timeout() {
                    if let Ok(mut slot) = self.conn.try_lock() {
                        *slot = None;
                    }
                }
                unavailable(e)
            })
        };
        let result = match tokio::time::timeout(self.timeout, attempt).await {
            Ok(r) => r,
            Err(_) => Err(LedgerError::Timeout {
                ledger: LEDGER,
                after: self.timeout,
            }),
        };
        self.observe(op, started.elapsed(), result.as_ref().err());
        result
    }

    async fn admit(&self, ids: &[String], reservation: f64) -> Result<Admission, LedgerError> {
        let ids = unique(ids);
        let amount = reservation_micros(reservation);
        let hold_id = if amount > 0 {
            self.next_hold.fetch_add(1, Ordering::Relaxed)
        } else {
            0
        };
        let member = if hold_id == 0 {
            String::new()
        } else {
            self.member(hold_id, amount)
        };
        let mut keys = Vec::with_capacity(ids.len() * 3 + 1);
        let mut args: Vec<Vec<u8>> = vec![
            member.clone().into_bytes(),
            amount.to_string().into_bytes(),
            self.lease.as_millis().to_string().into_bytes(),
        ];
        for id in &ids {
            keys.push(self.key("spend", id));
            keys.push(self.key("reserved", id));
            keys.push(self.key("holds", id));
            let (mode, max, _) = self.mode(id);
            args.push(mode.to_string().into_bytes());
            args.push(max.to_string().into_bytes());
            args.push(id.as_bytes().to_vec());
        }
        keys.push(self.unconfigured_key());
        let script = admit_script();
        let out: Vec<i64> = match self.invoke(LedgerOp::Admit, script, &keys, &args).await {
            Ok(out) => out,
            Err(e) => {
                if hold_id != 0 && matches!(e, LedgerError::Timeout { .. }) {
                    // Redis may have held it before the answer was lost: release it, in turn.
                    let owned: Vec<String> = ids.iter().map(|s| (*s).clone()).collect();
                    self.enqueue(&owned, member, amount, 0);
                }
                return self.admit_without_redis(&ids, reservation, e);
            }
        };
        let version = out.get(4 * ids.len()).copied().unwrap_or(0);
        let mut blocked = Vec::new();
        let mut view = self.lock_view();
        view.saw_time(version);
        let unconfigured = view.unconfigured();
        let mut added = 0;
        for (i, id) in ids.iter().enumerate() {
            let field = |k: usize| out.get(4 * i + k).copied().unwrap_or(0);
            if field(0) == 1 {
                blocked.push((*id).clone());
            }
            if field(3) == 1 {
                if !view.entries.contains_key(*id) {
                    if unconfigured + added >= self.max_unconfigured {
                        continue;
                    }
                    added += 1;
                }
                view.entries
                    .entry((*id).clone())
                    .or_insert_with(|| Cached::new(None))
                    .update(field(1), field(2), version);
            }
        }
        drop(view);
        if !blocked.is_empty() || hold_id == 0 {
            return Ok(Admission {
                blocked,
                hold: Hold::default(),
            });
        }
        Ok(Admission {
            blocked,
            hold: Hold {
                usd: reservation,
                id: hold_id,
            },
        })
    }

    /// Admission when Redis did not answer: `closed` refuses calls naming a block limit; `open`
    /// decides on the last known spend. Nothing is held either way.
    fn admit_without_redis(
        &self,
        ids: &[&String],
        reservation: f64,
        error: LedgerError,
    ) -> Result<Admission, LedgerError> {
        let owned: Vec<String> = ids.iter().map(|s| (*s).clone()).collect();
        if self.on_error == OnLedgerError::Closed && self.names_block_limit(&owned) {
            return Err(error);
        }
        let view = self.lock_view();
        let now = view.redis_now_us();
        let amount = reservation_micros(reservation);
        let blocked = owned
            .iter()
            .filter(|id| {
                let Some(e) = view.entries.get(*id) else {
                    return false;
                };
                let Some(c) = e.config.as_ref().filter(|c| c.kind == LimitKind::Block) else {
                    return false;
                };
                let (spend, max) = (e.spend_at(now), micros(c.max));
                match c.admission {
                    AdmissionMode::Spent => spend >= max,
                    AdmissionMode::Reserve => spend >= max || spend + e.reserved_now() + amount > max,
                }
            })
            .cloned()
            .collect();
        Ok(Admission {
            blocked,
            hold: Hold::default(),
        })
    }

    fn member(&self, hold_id: u64, amount: i64) -> String {
        format!("{:016x}-{hold_id}:{amount}", self.instance)
    }

    /// Queues a settlement (dropped and counted past the bound); `false` when dropped.
    fn enqueue(&self, ids: &[String], member: String, hold_micros: i64, cost: i64) -> bool {
        {
            let mut q = self.lock_queue();
            if q.items.len() >= self.max_queued {
                drop(q);
                self.dropped.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(target: "llm_meter", "the Redis ledger's queue is full: a settlement was dropped");
                return false;
            }
            q.next_seq += 1;
            let seq = q.next_seq;
            q.items.push_back(Settlement {
                seq,
                ids: ids.to_vec(),
                member,
                hold_micros,
                cost,
                attempts: 0,
            });
        }
        self.work.notify_one();
        true
    }

    fn settle(&self, ids: &[String], hold: Hold, cost: f64) -> Vec<(String, LimitState)> {
        let ids: Vec<String> = unique(ids).into_iter().cloned().collect();
        let cost = micros(if cost.is_finite() { cost } else { 0.0 });
        let hold_micros = if hold.id == 0 { 0 } else { reservation_micros(hold.usd) };
        let member = if hold.id == 0 {
            String::new()
        } else {
            self.member(hold.id, hold_micros)
        };
        let queued = self.enqueue(&ids, member, hold_micros, cost);
        let mut view = self.lock_view();
        let now = view.redis_now_us();
        let mut unconfigured = view.unconfigured();
        let mut out = Vec::with_capacity(ids.len());
        for id in &ids {
            if !view.entries.contains_key(id) {
                if unconfigured >= self.max_unconfigured {
                    continue;
                }
                unconfigured += 1;
                view.entries.insert(id.clone(), Cached::new(None));
            }
            if let Some(e) = view.entries.get_mut(id) {
                if queued {
                    e.pending_spend += cost;
                    e.pending_release += hold_micros;
                } else {
                    e.reserved = (e.reserved - hold_micros).max(0);
                }
                out.push((id.clone(), e.state_at(now)));
            }
        }
        out
    }

    /// Applies the queue's first settlements in one script; `Ok(applied)`.
    async fn apply(&self, batch: &[Settlement]) -> Result<(), LedgerError> {
        let mut unique_ids: Vec<&str> = Vec::new();
        for s in batch {
            for id in &s.ids {
                if !unique_ids.contains(&id.as_str()) {
                    unique_ids.push(id);
                }
            }
        }
        let mut keys = vec![
            format!("{}:applied:{:016x}", self.prefix, self.instance),
            self.unconfigured_key(),
        ];
        let mut args: Vec<Vec<u8>> = vec![
            unique_ids.len().to_string().into_bytes(),
            self.max_unconfigured.to_string().into_bytes(),
            APPLIED_TTL_SECS.to_string().into_bytes(),
        ];
        for id in &unique_ids {
            keys.push(self.key("spend", id));
            keys.push(self.key("reserved", id));
            keys.push(self.key("holds", id));
            let (mode, _, period) = self.mode(id);
            args.push(mode.to_string().into_bytes());
            args.push(period.to_string().into_bytes());
            args.push(id.as_bytes().to_vec());
        }
        for s in batch {
            args.push(s.seq.to_string().into_bytes());
            args.push(s.member.clone().into_bytes());
            args.push(s.cost.to_string().into_bytes());
            args.push(s.ids.len().to_string().into_bytes());
            for id in &s.ids {
                let index = unique_ids.iter().position(|u| u == id).map_or(0, |i| i + 1);
                args.push(index.to_string().into_bytes());
            }
        }
        let out: Vec<i64> = self.invoke(LedgerOp::Settle, settle_script(), &keys, &args).await?;
        let n = unique_ids.len();
        let version = out.get(3 * n).copied().unwrap_or(0);
        let mut view = self.lock_view();
        view.saw_time(version);
        for s in batch {
            for id in &s.ids {
                if let Some(e) = view.entries.get_mut(id) {
                    e.pending_spend -= s.cost;
                    e.pending_release -= s.hold_micros;
                }
            }
        }
        for (u, id) in unique_ids.iter().enumerate() {
            let field = |k: usize| out.get(3 * u + k).copied().unwrap_or(0);
            if field(2) == 1 {
                if let Some(e) = view.entries.get_mut(*id) {
                    e.update(field(0), field(1), version);
                }
            } else if let Some(e) = view.entries.get(*id) {
                // Redis did not track it (past the bound of unconfigured ids): neither do we.
                if e.config.is_none() && e.pending_spend == 0 {
                    view.entries.remove(*id);
                }
            }
        }
        Ok(())
    }

    /// Reads every limit afresh.
    async fn refresh(&self) -> Result<(), LedgerError> {
        let mut keys = vec![self.unconfigured_key()];
        for id in &self.configured {
            keys.push(self.key("spend", id));
            keys.push(self.key("reserved", id));
            keys.push(self.key("holds", id));
        }
        let args = vec![self.prefix.clone().into_bytes()];
        let out: Vec<Value> = self.invoke(LedgerOp::Refresh, read_script(), &keys, &args).await?;
        let int = |v: Option<&Value>| -> i64 {
            match v {
                Some(Value::Int(n)) => *n,
                _ => 0,
            }
        };
        let version = int(out.last());
        let mut view = self.lock_view();
        view.saw_time(version);
        let mut i = 0;
        for id in &self.configured {
            let (spend, reserved) = (int(out.get(i)), int(out.get(i + 1)));
            i += 2;
            if let Some(e) = view.entries.get_mut(id) {
                e.update(spend, reserved, version);
            }
        }
        let mut unconfigured = view.unconfigured();
        while i + 3 < out.len() {
            let id = match out.get(i) {
                Some(Value::BulkString(b)) => String::from_utf8_lossy(b).into_owned(),
                Some(Value::SimpleString(s)) => s.clone(),
                _ => String::new(),
            };
            let (spend, reserved) = (int(out.get(i + 1)), int(out.get(i + 2)));
            i += 3;
            if id.is_empty() || self.configs.contains_key(&id) {
                continue;
            }
            if !view.entries.contains_key(&id) {
                if unconfigured >= self.max_unconfigured {
                    continue;
                }
                unconfigured += 1;
            }
            view.entries
                .entry(id)
                .or_insert_with(|| Cached::new(None))
                .update(spend, reserved, version);
        }
        Ok(())
    }

    fn statuses(&self) -> Vec<LimitStatus> {
        let view = self.lock_view();
        let now = view.redis_now_us();
        let mut out: Vec<LimitStatus> = view
            .entries
            .iter()
            .map(|(id, e)| {
                let period = e.period_ms();
                let window_end = (period > 0).then(|| {
                    let end_ms = (now / 1000 / period + 1) * period;
                    UNIX_EPOCH + Duration::from_millis(u64::try_from(end_ms).unwrap_or(0))
                });
                LimitStatus {
                    id: id.clone(),
                    config: e.config.clone(),
                    spend: usd(e.spend_at(now)),
                    reserved: usd(e.reserved_now()),
                    state: e.state_at(now),
                    window_end,
                }
            })
            .collect();
        out.sort_by(|a, b| a.id.cmp(&b.id));
        out
    }

    async fn flush(&self) -> Result<(), LedgerError> {
        let target = self.lock_queue().next_seq;
        let deadline = Instant::now() + self.timeout * 20;
        loop {
            let applied = self.applied.notified();
            tokio::pin!(applied);
            applied.as_mut().enable();
            if self.applied_seq.load(Ordering::SeqCst) >= target {
                break;
            }
            self.work.notify_one();
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() || tokio::time::timeout(left, applied).await.is_err() {
                let queued = self.lock_queue().items.len();
                return Err(unavailable(format!("{queued} settlements are still queued")));
            }
        }
        self.refresh().await
    }
}

fn admit_script() -> &'static Script {
    static S: std::sync::OnceLock<Script> = std::sync::OnceLock::new();
    S.get_or_init(|| Script::new(ADMIT))
}

fn settle_script() -> &'static Script {
    static S: std::sync::OnceLock<Script> = std::sync::OnceLock::new();
    S.get_or_init(|| Script::new(SETTLE))
}

fn read_script() -> &'static Script {
    static S: std::sync::OnceLock<Script> = std::sync::OnceLock::new();
    S.get_or_init(|| Script::new(READ))
}

/// The background task: applies queued settlements in order (retrying with backoff while Redis
/// does not answer) and reads every limit afresh now and then.
async fn run(shared: Arc<Shared>) {
    let mut failures: u32 = 0;
    let mut last_refresh: Option<Instant> = None;
    loop {
        let closing = shared.closed.load(Ordering::SeqCst);
        let batch: Vec<Settlement> = shared.lock_queue().items.iter().take(BATCH).cloned().collect();
        if !batch.is_empty() {
            match shared.apply(&batch).await {
                Ok(()) => {
                    failures = 0;
                    let mut q = shared.lock_queue();
                    for s in &batch {
                        if q.items.front().is_some_and(|f| f.seq == s.seq) {
                            q.items.pop_front();
                        }
                        if s.attempts > 0 {
                            shared.replayed.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    drop(q);
                    if let Some(last) = batch.last() {
                        shared.applied_seq.fetch_max(last.seq, Ordering::SeqCst);
                    }
                    shared.applied.notify_waiters();
                    continue;
                }
                Err(e) => {
                    failures = failures.saturating_add(1);
                    for s in shared.lock_queue().items.iter_mut().take(batch.len()) {
                        s.attempts = s.attempts.saturating_add(1);
                    }
                    if failures == 1 {
                        tracing::warn!(target: "llm_meter", "the Redis ledger does not answer ({e}); settlements are queued and replayed");
                    }
                    if closing {
                        return;
                    }
                    let backoff = Duration::from_millis(50u64 << failures.min(5)).min(Duration::from_secs(1));
                    let _ = tokio::time::timeout(backoff, shared.work.notified()).await;
                    continue;
                }
            }
        }
        if closing {
            return;
        }
        if last_refresh.is_none_or(|t| t.elapsed() >= shared.refresh) {
            last_refresh = Some(Instant::now());
            let _ = shared.refresh().await;
        }
        let wait = shared
            .refresh
            .saturating_sub(last_refresh.map_or(Duration::ZERO, |t| t.elapsed()));
        let _ = tokio::time::timeout(wait.max(Duration::from_millis(1)), shared.work.notified()).await;
    }
}

impl RedisLedger {
    /// Starts the settings of a ledger on the Redis at `url` (`redis://[user:password@]host:port/db`)
    /// for `limits`.
    pub fn builder(url: impl Into<String>, limits: Vec<LimitConfig>) -> RedisLedgerBuilder {
        RedisLedgerBuilder {
            url: url.into(),
            password: None,
            limits,
            on_error: OnLedgerError::default(),
            timeout: Duration::from_millis(250),
            prefix: "llm-meter".to_owned(),
            max_queued: 100_000,
            lease: Duration::from_secs(15 * 60),
            max_unconfigured: 1000,
            refresh: Duration::from_secs(1),
        }
    }

    /// The URL, password hidden.
    pub fn url(&self) -> &str {
        &self.shared.url
    }

    /// The policy when Redis does not answer.
    pub fn on_error(&self) -> OnLedgerError {
        self.shared.on_error
    }
}

impl Ledger for RedisLedger {
    fn admit<'a>(&'a self, ids: &'a [String], reservation: f64) -> LedgerFuture<'a, Admission> {
        Box::pin(self.shared.admit(ids, reservation))
    }

    fn settle(&self, ids: &[String], hold: Hold, cost: f64) -> Vec<(String, LimitState)> {
        self.shared.settle(ids, hold, cost)
    }

    fn statuses(&self) -> Vec<LimitStatus> {
        self.shared.statuses()
    }

    fn flush(&self) -> LedgerFuture<'_, ()> {
        Box::pin(self.shared.flush())
    }

    fn health(&self) -> LedgerHealth {
        let mut h = LedgerHealth::local(LEDGER);
        h.available = self.shared.available.load(Ordering::Relaxed);
        h.queued = self.shared.lock_queue().items.len() as u64;
        h.dropped = self.shared.dropped.load(Ordering::Relaxed);
        h.replayed = self.shared.replayed.load(Ordering::Relaxed);
        h
    }

    fn add_observer(&self, observer: Arc<dyn LedgerObserver>) {
        if let Ok(mut o) = self.shared.observers.write() {
            o.push(observer);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amounts_become_whole_micro_dollars() {
        assert_eq!(micros(0.00047), 470);
        assert_eq!(micros(1.0), 1_000_000);
        assert_eq!(micros(0.0000004), 0);
        assert_eq!(micros(0.0000005), 1);
        assert_eq!(micros(-1.0), 0);
        assert_eq!(micros(f64::NAN), 0);
        assert_eq!(reservation_micros(0.0000001), 1, "a worst case rounds up");
        assert_eq!(usd(10_000), 0.01);
    }

    #[test]
    fn passwords_never_show_in_urls() {
        assert_eq!(redact_url("redis://127.0.0.1:6379/0"), "redis://127.0.0.1:6379/0");
        assert_eq!(
            redact_url("redis://user:s3cret@redis.internal:6379/0"),
            "redis://user:***@redis.internal:6379/0"
        );
        assert_eq!(redact_url("redis://:s3cret@h/0"), "redis://:***@h/0");
        assert_eq!(redact_url("redis://s3cret@h"), "redis://***@h");
        assert!(!redact_url("rediss://u:p%40ss@h:1/2").contains("p%40ss"));
    }

    #[tokio::test]
    async fn a_bad_url_is_a_config_error_that_hides_the_password() {
        let e = RedisLedger::builder("http://user:s3cret@host/0", vec![])
            .build()
            .unwrap_err();
        let text = e.to_string();
        assert!(text.contains("not a Redis URL") && !text.contains("s3cret"), "{text}");
    }
}
