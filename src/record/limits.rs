//! Limits (budgets) in USD, as Pay-i's: a ledger of spend per limit id, states, admission with
//! reservations so that concurrent calls cannot overspend a block limit, and snapshots so that
//! a restarted proxy keeps its budgets.
//!
//! States: `ok`; `exceeded` (spend reached `threshold × max`); `overrun` (spend passed `max` on
//! an `allow` limit: observed and reported, never refused); `blocked` (a `block` limit whose
//! spend reached `max`, or that a call's worst-case cost would take past `max`: the call is
//! refused before the provider is called).
//!
//! Admission is per limit ([`AdmissionMode`]). `spent` (the default, Pay-i's rule) refuses once
//! recorded spend has reached `max`; calls in flight at that moment still finish, so spend can
//! pass `max` by what they cost. `reserve` reserves each call's worst-case cost on every limit
//! it names and settles the real cost when the call ends, admitting a call only while `spend +
//! reserved + reservation <= max`: as long as real costs stay within their reservations, spend
//! never passes `max`. Either way every call reserves and settles, so `reserved` shows what is
//! in flight.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// What a limit does at its max.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LimitKind {
    /// Observe and report (`exceeded`, `overrun`); never refuse.
    #[default]
    Allow,
    /// Refuse calls that would pass `max`.
    Block,
}

/// When a `block` limit refuses a call.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AdmissionMode {
    /// Refuse once recorded spend has reached `max` (Pay-i's and LiteLLM's rule, the default).
    /// Calls in flight when spend reaches `max` still finish, so spend can pass `max` by what
    /// they cost: that shows as state `blocked` with spend above `max`.
    #[default]
    Spent,
    /// Reserve each call's worst-case cost at admission and refuse a call whose reservation
    /// would take spend plus reservations past `max`: never overspends, but refuses calls while
    /// part of the budget is still unspent (reservations are worst cases).
    Reserve,
}

/// State of a limit, as Pay-i reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LimitState {
    /// Under the threshold.
    Ok,
    /// Threshold reached.
    Exceeded,
    /// Max passed on an `allow` limit.
    Overrun,
    /// A `block` limit refused, or would refuse, calls.
    Blocked,
}

impl LimitState {
    /// The wire value.
    pub fn as_str(self) -> &'static str {
        match self {
            LimitState::Ok => "ok",
            LimitState::Exceeded => "exceeded",
            LimitState::Overrun => "overrun",
            LimitState::Blocked => "blocked",
        }
    }
    /// Numeric code for gauges: 0 ok, 1 exceeded, 2 overrun, 3 blocked.
    pub fn code(self) -> u64 {
        self as u64
    }
}

/// One configured limit.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LimitConfig {
    /// Limit id, as named in `xProxy-Limit-IDs`.
    pub id: String,
    /// Budget in USD.
    pub max: f64,
    /// Fraction of `max` at which the state becomes `exceeded` (0 < threshold <= 1).
    #[serde(default)]
    pub threshold: Option<f64>,
    /// `allow` (default) or `block`.
    #[serde(default)]
    pub kind: LimitKind,
    /// Reset period: `30m`, `12h`, `1d`, `7d`, `30d`, or seconds (`3600s`). None: never resets.
    #[serde(default, with = "period")]
    pub reset: Option<Duration>,
    /// When a `block` limit refuses calls: `spent` (default) or `reserve`.
    #[serde(default)]
    pub admission: AdmissionMode,
}

mod period {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(d) => s.serialize_str(&format!("{}s", d.as_secs())),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        let text: Option<String> = Option::deserialize(d)?;
        text.map(|t| super::parse_period(&t).map_err(serde::de::Error::custom))
            .transpose()
    }
}

/// Parses a reset period: a positive whole number and one of `s`, `m`, `h`, `d`, `w`.
pub fn parse_period(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (n, unit) = t.split_at(split);
    let n: u64 = n
        .parse()
        .map_err(|_| format!("reset {text:?}: expected a number and a unit, like \"1d\""))?;
    let secs = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        "w" => 604_800,
        _ => return Err(format!("reset {text:?}: unit must be one of s, m, h, d, w")),
    };
    if n == 0 {
        return Err(format!("reset {text:?}: must be longer than zero"));
    }
    n.checked_mul(secs)
        .map(Duration::from_secs)
        .ok_or_else(|| format!("reset {text:?}: too long"))
}

impl LimitConfig {
    /// Checks the rules: non-empty id, finite `max > 0`, `0 < threshold <= 1`.
    pub fn validate(&self) -> Result<(), LimitError> {
        let bad = |why: String| Err(LimitError::Config(format!("limit {:?}: {why}", self.id)));
        if self.id.trim().is_empty() || self.id.contains(',') || self.id.trim() != self.id {
            return bad("id must be non-empty, without commas or surrounding spaces".into());
        }
        if !(self.max.is_finite() && self.max > 0.0) {
            return bad(format!("max must be a positive number of USD, got {}", self.max));
        }
        if let Some(t) = self.threshold {
            if !(t > 0.0 && t <= 1.0) {
                return bad(format!("threshold must be a fraction in (0, 1], got {t}"));
            }
        }
        Ok(())
    }

    pub(crate) fn state(&self, spend: f64) -> LimitState {
        match self.kind {
            LimitKind::Block if spend >= self.max => LimitState::Blocked,
            LimitKind::Allow if spend > self.max => LimitState::Overrun,
            _ if self.threshold.is_some_and(|t| spend >= t * self.max) => LimitState::Exceeded,
            _ => LimitState::Ok,
        }
    }
}

/// Errors of limits and ledgers.
#[derive(Debug, thiserror::Error)]
pub enum LimitError {
    /// A limit in the configuration breaks a rule.
    #[error("invalid limit configuration: {0}")]
    Config(String),
    /// The snapshot file exists but cannot be read as a snapshot: it is not silently reset.
    #[error("ledger snapshot {path} is unreadable ({reason}); fix or move it away to start from zero")]
    CorruptSnapshot {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// Reading or writing the snapshot failed.
    #[error("ledger snapshot {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
}

/// Where one limit stands.
#[derive(Clone, Debug, PartialEq)]
pub struct LimitStatus {
    /// Limit id.
    pub id: String,
    /// Its configuration, when configured.
    pub config: Option<LimitConfig>,
    /// USD spent in the current window.
    pub spend: f64,
    /// USD reserved by calls in flight.
    pub reserved: f64,
    /// State.
    pub state: LimitState,
    /// When the current window ends and spend resets (limits with a reset period).
    pub window_end: Option<SystemTime>,
}

/// What admission holds for a call until it settles: the USD reserved on its limits, and the
/// ledger's handle on that reservation (0: none). Hand it back to [`Ledger::settle`].
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Hold {
    /// USD reserved on every limit the call named (0 when nothing is held).
    pub usd: f64,
    /// The ledger's id of the reservation (0: none; the memory ledger needs none).
    pub id: u64,
}

impl Hold {
    /// A reservation of `usd` with no ledger id (what the memory ledger holds).
    pub fn of(usd: f64) -> Self {
        Hold { usd, id: 0 }
    }
}

/// The answer to a pre-flight check.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct Admission {
    /// Block limits that refuse the call; empty when it is admitted (and its reservation held).
    pub blocked: Vec<String>,
    /// What is held for the admitted call (nothing when refused, or when the ledger could not
    /// be asked and its policy admitted the call anyway).
    pub hold: Hold,
}

/// A ledger that could not be asked in time. The message never holds credentials.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LedgerError {
    /// No answer within the configured timeout.
    #[error("the {ledger} ledger did not answer within {} ms", after.as_millis())]
    Timeout {
        /// Which ledger (`redis`).
        ledger: &'static str,
        /// The timeout.
        after: Duration,
    },
    /// Not reachable, or it answered with an error.
    #[error("the {ledger} ledger is unavailable: {reason}")]
    Unavailable {
        /// Which ledger (`redis`).
        ledger: &'static str,
        /// What went wrong.
        reason: String,
    },
}

impl LedgerError {
    /// Low-cardinality class, for the ledger's error counter: `timeout` or `unavailable`.
    pub fn kind(&self) -> &'static str {
        match self {
            LedgerError::Timeout { .. } => "timeout",
            LedgerError::Unavailable { .. } => "unavailable",
        }
    }
    /// Which ledger failed.
    pub fn ledger(&self) -> &'static str {
        match self {
            LedgerError::Timeout { ledger, .. } | LedgerError::Unavailable { ledger, .. } => ledger,
        }
    }
}

/// Why a call was refused before the provider was called.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum Refusal {
    /// Block limits that would pass their max.
    Blocked(Vec<String>),
    /// The ledger could not be asked, and its policy (`on_redis_error = "closed"`) refuses calls
    /// that name a block limit until it answers again.
    LedgerUnavailable(LedgerError),
}

/// What a network ledger does when it cannot be asked in time.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OnLedgerError {
    /// Refuse calls that name a block limit (default): a budget is never passed unseen. Other
    /// calls are served and their spend is queued and replayed.
    #[default]
    Closed,
    /// Serve every call that the last known spend admits; spend is queued (bounded, counted)
    /// and replayed when the ledger answers again.
    Open,
}

/// One kind of ledger operation, as its health metrics label it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum LedgerOp {
    /// A pre-flight check (one per admitted or refused call).
    Admit,
    /// Applying queued settlements (a batch per round trip).
    Settle,
    /// Reading every limit's spend.
    Refresh,
}

impl LedgerOp {
    /// The label value: `admit`, `settle`, `refresh`.
    pub fn as_str(self) -> &'static str {
        match self {
            LedgerOp::Admit => "admit",
            LedgerOp::Settle => "settle",
            LedgerOp::Refresh => "refresh",
        }
    }
}

/// Told of every operation a network ledger makes (the metrics sink is one).
pub trait LedgerObserver: Send + Sync + 'static {
    /// `op` took `took`, and failed with `error` if it did.
    fn operation(&self, op: LedgerOp, took: Duration, error: Option<&LedgerError>);
}

/// How a ledger is doing, for its health metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct LedgerHealth {
    /// Which ledger: `memory` or `redis`.
    pub kind: &'static str,
    /// Whether its last operation succeeded.
    pub available: bool,
    /// Settlements waiting to be applied.
    pub queued: u64,
    /// Settlements dropped because the queue was full (their spend is lost to the ledger).
    pub dropped: u64,
    /// Settlements applied after at least one failed attempt.
    pub replayed: u64,
}

impl LedgerHealth {
    /// A ledger that is always there and queues nothing (the memory ledger).
    pub fn local(kind: &'static str) -> Self {
        LedgerHealth {
            kind,
            available: true,
            queued: 0,
            dropped: 0,
            replayed: 0,
        }
    }
}

/// A boxed future of a ledger operation.
pub type LedgerFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, LedgerError>> + Send + 'a>>;

/// Spend per limit id. Behind a trait so that deployments can keep it elsewhere: in memory
/// ([`MemoryLedger`], one process) or on Redis (`RedisLedger`, shared by replicas).
///
/// Admission is asynchronous (a network ledger is asked over the network, within a timeout);
/// settlement is synchronous and never blocks (it runs where a call ends, in a stream's `Drop`
/// too): a network ledger applies it in the background and answers with the states it knows.
pub trait Ledger: Send + Sync + fmt::Debug + 'static {
    /// Pre-flight: reserves `reservation` USD on every id, unless a block limit among them would
    /// pass its max (then nothing is reserved and the blocking ids are returned). An error means
    /// the ledger could not be asked and its policy refuses the call.
    fn admit<'a>(&'a self, ids: &'a [String], reservation: f64) -> LedgerFuture<'a, Admission>;
    /// Completion: releases `hold` and adds `cost` on every id; returns each id's state (as far
    /// as the ledger knows it now).
    fn settle(&self, ids: &[String], hold: Hold, cost: f64) -> Vec<(String, LimitState)>;
    /// Every tracked limit (a network ledger: as last read, refreshed in the background).
    fn statuses(&self) -> Vec<LimitStatus>;
    /// Waits until every settlement handed in so far is applied, then reads every limit afresh.
    fn flush(&self) -> LedgerFuture<'_, ()> {
        Box::pin(std::future::ready(Ok(())))
    }
    /// Health, for the ledger's own metrics.
    fn health(&self) -> LedgerHealth {
        LedgerHealth::local(crate::names::LEDGER_MEMORY)
    }
    /// Adds an observer of every operation (a network ledger's latency and errors).
    fn add_observer(&self, observer: Arc<dyn LedgerObserver>) {
        let _ = observer;
    }
    /// Replaces the limits' configuration while calls run (a configuration reload): the spend,
    /// window and reservations of ids that stay are kept; new ids start from zero; ids no longer
    /// configured are tracked as unconfigured (never refused). A ledger that cannot do this
    /// (the default) says so and changes nothing.
    fn reconfigure(&self, limits: Vec<LimitConfig>) -> Result<(), LimitError> {
        let _ = limits;
        Err(LimitError::Config(
            "this ledger cannot change its limits while it runs: restart the proxy to apply them".into(),
        ))
    }
}

#[derive(Debug)]
struct Entry {
    config: Option<LimitConfig>,
    spend: f64,
    reserved: f64,
    window_start: SystemTime,
}

impl Entry {
    fn new(config: Option<LimitConfig>, now: SystemTime) -> Self {
        Entry {
            config,
            spend: 0.0,
            reserved: 0.0,
            window_start: now,
        }
    }

    /// Starts a new window when the reset period has passed.
    fn roll(&mut self, now: SystemTime) {
        let Some(period) = self.config.as_ref().and_then(|c| c.reset) else {
            return;
        };
        let Ok(elapsed) = now.duration_since(self.window_start) else {
            return;
        };
        if elapsed >= period {
            let periods = (elapsed.as_secs_f64() / period.as_secs_f64()).floor();
            self.window_start += period.mul_f64(periods);
            self.spend = 0.0;
        }
    }

    fn state(&self) -> LimitState {
        self.config.as_ref().map_or(LimitState::Ok, |c| c.state(self.spend))
    }
}

/// Checks every limit's rules, and that no id is configured twice.
pub(crate) fn check_limits(limits: &[LimitConfig]) -> Result<(), LimitError> {
    let mut seen = std::collections::HashSet::new();
    for limit in limits {
        limit.validate()?;
        if !seen.insert(limit.id.as_str()) {
            return Err(LimitError::Config(format!("limit {:?} is configured twice", limit.id)));
        }
    }
    Ok(())
}

/// The default ledger: in memory, with snapshots to a file.
#[derive(Debug)]
pub struct MemoryLedger {
    entries: Mutex<HashMap<String, Entry>>,
    max_unconfigured: usize,
    untracked: AtomicU64,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Snapshot {
    version: u32,
    saved_at_unix: u64,
    limits: HashMap<String, SnapshotEntry>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct SnapshotEntry {
    spend: f64,
    window_start_unix: f64,
}

/// Unix seconds of `t` (0 before the epoch).
pub(crate) fn unix(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64())
}

impl MemoryLedger {
    /// Unconfigured limit ids tracked at most, by default.
    pub const DEFAULT_MAX_UNCONFIGURED: usize = 1000;

    /// A ledger for `limits` (validated; ids must be unique).
    pub fn new(limits: Vec<LimitConfig>) -> Result<Self, LimitError> {
        let now = SystemTime::now();
        check_limits(&limits)?;
        let mut entries = HashMap::new();
        for limit in limits {
            entries.insert(limit.id.clone(), Entry::new(Some(limit), now));
        }
        Ok(MemoryLedger {
            entries: Mutex::new(entries),
            max_unconfigured: Self::DEFAULT_MAX_UNCONFIGURED,
            untracked: AtomicU64::new(0),
        })
    }

    /// See [`Ledger::reconfigure`]: checks `limits` first, then applies them at once.
    pub fn reconfigure(&self, limits: Vec<LimitConfig>) -> Result<(), LimitError> {
        check_limits(&limits)?;
        let now = SystemTime::now();
        let mut entries = self.lock();
        for entry in entries.values_mut() {
            entry.config = None;
        }
        for limit in limits {
            match entries.get_mut(&limit.id) {
                Some(entry) => entry.config = Some(limit),
                None => {
                    entries.insert(limit.id.clone(), Entry::new(Some(limit), now));
                }
            }
        }
        Ok(())
    }

    /// Tracks at most `n` limit ids that calls name but the configuration does not.
    pub fn with_max_unconfigured(mut self, n: usize) -> Self {
        self.max_unconfigured = n;
        self
    }

    /// Calls that named an unconfigured id past the bound (that id was not tracked for them).
    pub fn untracked(&self) -> u64 {
        self.untracked.load(Ordering::Relaxed)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs `f` on the entry of each id (creating unconfigured ones within the bound).
    fn with_entries<R>(&self, ids: &[String], mut f: impl FnMut(&str, &mut Entry) -> R) -> Vec<R> {
        let now = SystemTime::now();
        let mut entries = self.lock();
        let mut unconfigured = entries.values().filter(|e| e.config.is_none()).count();
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            if !entries.contains_key(id) {
                if unconfigured >= self.max_unconfigured {
                    self.untracked.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                unconfigured += 1;
                entries.insert(id.clone(), Entry::new(None, now));
            }
            if let Some(entry) = entries.get_mut(id) {
                entry.roll(now);
                out.push(f(id, entry));
            }
        }
        out
    }

    /// Writes every limit's spend and window to `path` (atomically: temp file, then rename).
    pub fn snapshot(&self, path: &Path) -> Result<(), LimitError> {
        let snapshot = {
            let entries = self.lock();
            Snapshot {
                version: 1,
                saved_at_unix: SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()),
                limits: entries
                    .iter()
                    .map(|(id, e)| {
                        (
                            id.clone(),
                            SnapshotEntry {
                                spend: e.spend,
                                window_start_unix: unix(e.window_start),
                            },
                        )
                    })
                    .collect(),
            }
        };
        let io = |source| LimitError::Io {
            path: path.to_owned(),
            source,
        };
        let text = serde_json::to_vec_pretty(&snapshot).map_err(|e| io(std::io::Error::other(e)))?;
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, text).map_err(io)?;
        std::fs::rename(&tmp, path).map_err(io)
    }

    /// A ledger for `limits` restored from the snapshot at `path`. A missing file starts from
    /// zero; an unreadable one is an error (budgets are never silently reset).
    pub fn restore(limits: Vec<LimitConfig>, path: &Path) -> Result<Self, LimitError> {
        let ledger = Self::new(limits)?;
        let text = match std::fs::read(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(ledger),
            Err(source) => {
                return Err(LimitError::Io {
                    path: path.to_owned(),
                    source,
                })
            }
        };
        let corrupt = |reason: String| LimitError::CorruptSnapshot {
            path: path.to_owned(),
            reason,
        };
        let snapshot: Snapshot = serde_json::from_slice(&text).map_err(|e| corrupt(e.to_string()))?;
        if snapshot.version != 1 {
            return Err(corrupt(format!("unknown version {}", snapshot.version)));
        }
        {
            let mut entries = ledger.lock();
            for (id, saved) in snapshot.limits {
                if !(saved.spend.is_finite()
                    && saved.spend >= 0.0
                    && saved.window_start_unix.is_finite()
                    && saved.window_start_unix >= 0.0)
                {
                    return Err(corrupt(format!("limit {id:?} has an impossible spend or window")));
                }
                // A hostile or corrupt window start is an error, never an overflow panic.
                let window_start = Duration::try_from_secs_f64(saved.window_start_unix)
                    .ok()
                    .and_then(|d| UNIX_EPOCH.checked_add(d))
                    .ok_or_else(|| corrupt(format!("limit {id:?} has an impossible window start")))?;
                let entry = entries.entry(id).or_insert_with(|| Entry::new(None, SystemTime::now()));
                entry.spend = saved.spend;
                entry.window_start = window_start;
            }
        }
        Ok(ledger)
    }
}

impl MemoryLedger {
    /// Pre-flight, at once: [`Ledger::admit`] without the future.
    pub fn admit(&self, ids: &[String], reservation: f64) -> Admission {
        let reservation = reservation.max(0.0);
        let now = SystemTime::now();
        let mut entries = self.lock();
        let mut blocked = Vec::new();
        for id in ids {
            if let Some(e) = entries.get_mut(id) {
                e.roll(now);
                if let Some(c) = e.config.as_ref().filter(|c| c.kind == LimitKind::Block) {
                    let refuse = match c.admission {
                        AdmissionMode::Spent => e.spend >= c.max,
                        AdmissionMode::Reserve => e.spend >= c.max || e.spend + e.reserved + reservation > c.max,
                    };
                    if refuse {
                        blocked.push(id.clone());
                    }
                }
            }
        }
        let mut hold = Hold::default();
        if blocked.is_empty() {
            for id in ids {
                if let Some(e) = entries.get_mut(id) {
                    e.reserved += reservation;
                }
            }
            hold = Hold::of(reservation);
        }
        Admission { blocked, hold }
    }

    /// Completion: releases `reservation` USD and adds `cost` on every id; returns each id's
    /// state ([`Ledger::settle`] with a plain amount).
    pub fn settle(&self, ids: &[String], reservation: f64, cost: f64) -> Vec<(String, LimitState)> {
        let cost = if cost.is_finite() { cost.max(0.0) } else { 0.0 };
        self.with_entries(ids, |id, e| {
            e.reserved = (e.reserved - reservation.max(0.0)).max(0.0);
            if e.reserved < 1e-12 {
                e.reserved = 0.0; // float residue once every reservation is back
            }
            e.spend += cost;
            (id.to_owned(), e.state())
        })
    }

    /// Every tracked limit, sorted by id.
    pub fn statuses(&self) -> Vec<LimitStatus> {
        let now = SystemTime::now();
        let mut entries = self.lock();
        let mut out: Vec<LimitStatus> = entries
            .iter_mut()
            .map(|(id, e)| {
                e.roll(now);
                LimitStatus {
                    id: id.clone(),
                    config: e.config.clone(),
                    spend: e.spend,
                    reserved: e.reserved,
                    state: e.state(),
                    window_end: e.config.as_ref().and_then(|c| c.reset).map(|p| e.window_start + p),
                }
            })
            .collect();
        out.sort_by(|a, b| a.id.cmp(&b.id));
        out
    }
}

impl Ledger for MemoryLedger {
    fn admit<'a>(&'a self, ids: &'a [String], reservation: f64) -> LedgerFuture<'a, Admission> {
        Box::pin(std::future::ready(Ok(MemoryLedger::admit(self, ids, reservation))))
    }

    fn settle(&self, ids: &[String], hold: Hold, cost: f64) -> Vec<(String, LimitState)> {
        MemoryLedger::settle(self, ids, hold.usd, cost)
    }

    fn statuses(&self) -> Vec<LimitStatus> {
        MemoryLedger::statuses(self)
    }

    fn reconfigure(&self, limits: Vec<LimitConfig>) -> Result<(), LimitError> {
        MemoryLedger::reconfigure(self, limits)
    }
}

/// A shared ledger.
pub type SharedLedger = Arc<dyn Ledger>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reconfiguring_keeps_spend_and_applies_the_new_limits() {
        let limit = |id: &str, max: f64, kind: LimitKind| LimitConfig {
            id: id.into(),
            max,
            threshold: None,
            kind,
            reset: None,
            admission: AdmissionMode::Reserve,
        };
        let ledger = MemoryLedger::new(vec![
            limit("a", 1.0, LimitKind::Block),
            limit("b", 1.0, LimitKind::Block),
        ])
        .unwrap();
        let ids = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        ledger.settle(&ids(&["a", "b"]), 0.0, 0.9);
        assert!(ledger.admit(&ids(&["a"]), 0.2).blocked == ["a"]);
        // `a` raised, `b` dropped, `c` new; a bad set changes nothing.
        assert!(ledger.reconfigure(vec![limit("a", -1.0, LimitKind::Block)]).is_err());
        assert_eq!(
            ledger
                .statuses()
                .iter()
                .find(|s| s.id == "a")
                .unwrap()
                .config
                .as_ref()
                .unwrap()
                .max,
            1.0
        );
        ledger
            .reconfigure(vec![
                limit("a", 2.0, LimitKind::Block),
                limit("c", 0.5, LimitKind::Block),
            ])
            .unwrap();
        let status = |id: &str| ledger.statuses().into_iter().find(|s| s.id == id).unwrap();
        assert!((status("a").spend - 0.9).abs() < 1e-12, "spend kept");
        assert!(
            ledger.admit(&ids(&["a"]), 0.2).blocked.is_empty(),
            "the new max applies"
        );
        assert!(
            ledger.admit(&ids(&["b"]), 5.0).blocked.is_empty(),
            "b is no longer enforced"
        );
        assert!((status("b").spend - 0.9).abs() < 1e-12);
        assert_eq!(ledger.admit(&ids(&["c"]), 0.6).blocked, ["c"]);
    }

    fn limit(id: &str, max: f64, threshold: Option<f64>, kind: LimitKind) -> LimitConfig {
        LimitConfig {
            id: id.into(),
            max,
            threshold,
            kind,
            reset: None,
            admission: AdmissionMode::Spent,
        }
    }

    fn reserving(id: &str, max: f64) -> LimitConfig {
        LimitConfig {
            admission: AdmissionMode::Reserve,
            ..limit(id, max, None, LimitKind::Block)
        }
    }

    fn ids(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn states_follow_threshold_max_and_kind() {
        let l = MemoryLedger::new(vec![
            limit("a", 1.0, Some(0.8), LimitKind::Allow),
            limit("b", 1.0, Some(0.5), LimitKind::Block),
        ])
        .unwrap();
        let both = ids(&["a", "b"]);
        assert_eq!(
            l.settle(&both, 0.0, 0.4),
            [("a".into(), LimitState::Ok), ("b".into(), LimitState::Ok)]
        );
        assert_eq!(
            l.settle(&both, 0.0, 0.4),
            [("a".into(), LimitState::Exceeded), ("b".into(), LimitState::Exceeded)]
        );
        assert_eq!(l.settle(&ids(&["a"]), 0.0, 0.4), [("a".into(), LimitState::Overrun)]);
        assert_eq!(l.settle(&ids(&["b"]), 0.0, 0.2), [("b".into(), LimitState::Blocked)]);
        assert_eq!(l.admit(&both, 0.0).blocked, ["b"]);
        assert!(
            l.admit(&ids(&["a"]), 5.0).blocked.is_empty(),
            "allow limits never refuse"
        );
    }

    #[test]
    fn admission_counts_reservations_in_flight() {
        let l = MemoryLedger::new(vec![reserving("b", 1.0)]).unwrap();
        let b = ids(&["b"]);
        assert!(l.admit(&b, 0.4).blocked.is_empty());
        assert!(l.admit(&b, 0.4).blocked.is_empty());
        assert_eq!(l.admit(&b, 0.4).blocked, ["b"], "0.8 reserved + 0.4 would pass 1.0");
        l.settle(&b, 0.4, 0.1);
        assert!(l.admit(&b, 0.4).blocked.is_empty(), "settling released the reservation");
        let s = &l.statuses()[0];
        assert!((s.spend - 0.1).abs() < 1e-12 && (s.reserved - 0.8).abs() < 1e-12);
    }

    #[test]
    fn spent_admission_refuses_only_once_spend_reached_max() {
        let l = MemoryLedger::new(vec![limit("b", 1.0, None, LimitKind::Block)]).unwrap();
        let b = ids(&["b"]);
        for _ in 0..5 {
            assert!(l.admit(&b, 0.4).blocked.is_empty(), "reservations do not refuse");
        }
        assert!((l.statuses()[0].reserved - 2.0).abs() < 1e-12, "but are still tracked");
        l.settle(&b, 0.4, 0.6);
        assert!(l.admit(&b, 0.4).blocked.is_empty(), "0.6 spent of 1.0");
        let states = l.settle(&b, 0.4, 0.5);
        assert_eq!(
            states,
            [("b".to_owned(), LimitState::Blocked)],
            "1.1 spent: overspend of one call in flight"
        );
        assert_eq!(l.admit(&b, 0.0).blocked, ["b"], "spend reached max: refused");
        for _ in 0..4 {
            l.settle(&b, 0.4, 0.0);
        }
        assert_eq!(l.statuses()[0].reserved, 0.0, "every reservation settled");
    }

    #[test]
    fn admission_mode_reads_from_config_and_defaults_to_spent() {
        let c: LimitConfig = toml::from_str("id = \"a\"\nmax = 1.0\nkind = \"block\"").unwrap();
        assert_eq!(c.admission, AdmissionMode::Spent);
        let c: LimitConfig = toml::from_str("id = \"a\"\nmax = 1.0\nadmission = \"reserve\"").unwrap();
        assert_eq!(c.admission, AdmissionMode::Reserve);
        assert!(toml::from_str::<LimitConfig>("id = \"a\"\nmax = 1.0\nadmission = \"maybe\"").is_err());
    }

    #[test]
    fn unconfigured_ids_are_tracked_up_to_a_bound() {
        let l = MemoryLedger::new(vec![]).unwrap().with_max_unconfigured(2);
        l.settle(&ids(&["x", "y", "z"]), 0.0, 0.5);
        assert_eq!(
            l.statuses().iter().map(|s| s.id.as_str()).collect::<Vec<_>>(),
            ["x", "y"]
        );
        assert_eq!(l.untracked(), 1);
        assert_eq!(l.statuses()[0].state, LimitState::Ok);
    }

    #[test]
    fn windows_reset_on_schedule() {
        let mut cfg = limit("d", 1.0, None, LimitKind::Block);
        cfg.reset = Some(Duration::from_secs(60));
        let l = MemoryLedger::new(vec![cfg]).unwrap();
        l.settle(&ids(&["d"]), 0.0, 1.0);
        assert_eq!(l.admit(&ids(&["d"]), 0.0).blocked, ["d"]);
        l.lock().get_mut("d").unwrap().window_start -= Duration::from_secs(61);
        assert!(l.admit(&ids(&["d"]), 0.0).blocked.is_empty());
        assert_eq!(l.statuses()[0].spend, 0.0);
    }

    #[test]
    fn config_rules_are_enforced_with_clear_messages() {
        for (cfg, word) in [
            (limit("", 1.0, None, LimitKind::Allow), "id"),
            (limit("a,b", 1.0, None, LimitKind::Allow), "commas"),
            (limit("a", 0.0, None, LimitKind::Allow), "positive"),
            (limit("a", f64::NAN, None, LimitKind::Allow), "positive"),
            (limit("a", 1.0, Some(1.5), LimitKind::Allow), "threshold"),
        ] {
            let e = MemoryLedger::new(vec![cfg]).unwrap_err().to_string();
            assert!(e.contains(word), "{e}");
        }
        let dup = MemoryLedger::new(vec![
            limit("a", 1.0, None, LimitKind::Allow),
            limit("a", 2.0, None, LimitKind::Allow),
        ]);
        assert!(dup.unwrap_err().to_string().contains("twice"));
        assert_eq!(parse_period("1d"), Ok(Duration::from_secs(86_400)));
        assert_eq!(parse_period("90m"), Ok(Duration::from_secs(5400)));
        assert!(parse_period("1 month").is_err() && parse_period("0h").is_err() && parse_period("d").is_err());
    }

    #[test]
    fn snapshots_restore_budgets_and_corrupt_files_are_reported() {
        let dir = std::env::temp_dir().join(format!("llm-meter-ledger-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("ledger.json");
        let _ = std::fs::remove_file(&path);
        let limits = vec![reserving("b", 1.0)];
        let l = MemoryLedger::restore(limits.clone(), &path).unwrap();
        l.settle(&ids(&["b", "extra"]), 0.0, 0.75);
        l.snapshot(&path).unwrap();
        let back = MemoryLedger::restore(limits.clone(), &path).unwrap();
        let statuses = back.statuses();
        assert_eq!(statuses.len(), 2);
        assert!((statuses[0].spend - 0.75).abs() < 1e-12);
        assert_eq!(
            back.admit(&ids(&["b"]), 0.5).blocked,
            ["b"],
            "restored spend still counts"
        );

        std::fs::write(
            &path,
            b"{\"version\":1,\"saved_at_unix\":1,\"limits\":{\"b\":{\"spend\":\"lots\"",
        )
        .unwrap();
        let e = MemoryLedger::restore(limits.clone(), &path).unwrap_err();
        assert!(matches!(e, LimitError::CorruptSnapshot { .. }), "{e}");
        assert!(e.to_string().contains("ledger.json"));
        std::fs::write(
            &path,
            b"{\"version\":1,\"saved_at_unix\":1,\"limits\":{\"b\":{\"spend\":-5,\"window_start_unix\":0}}}",
        )
        .unwrap();
        assert!(matches!(
            MemoryLedger::restore(limits.clone(), &path).unwrap_err(),
            LimitError::CorruptSnapshot { .. }
        ));
        // A window start too far out for a SystemTime: an error, not an overflow panic.
        for start in ["1e300", "1.8e19"] {
            let text = format!("{{\"version\":1,\"saved_at_unix\":1,\"limits\":{{\"b\":{{\"spend\":1,\"window_start_unix\":{start}}}}}}}");
            std::fs::write(&path, text).unwrap();
            let e = MemoryLedger::restore(limits.clone(), &path).unwrap_err();
            assert!(e.to_string().contains("impossible window start"), "{start}: {e}");
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
