//! Security events kept in shared memory when the library is in `shared_preload_libraries`,
//! and persisted from there by background workers into `tenancy.security_event_log`.
//!
//! Every event is also a server-log line (errors.rs), which needs no preloading; both are
//! written before the refusal is raised, so they survive the rollback of the statement that
//! caused them.
//!
//! Kept so that no one can flood another tenant's events away:
//! - recent events are kept per tenant, in buckets of their own: one per tenant the event is
//!   verified to concern (a bound session's tenant, or a token's tenant once its signature
//!   verified), one for events no tenant can be verified for (a malformed token, say), one for
//!   the platform's flood reports. A bucket keeps its tenant's last [`PER_BUCKET`] events;
//!   when more tenants than buckets have events, the one whose last event is oldest gives its
//!   bucket up. Only a tenant's own sessions and verified tokens produce its events;
//! - each source (the session's login role and the event's tenant) may record [`BURST`]
//!   events, and [`PER_SECOND`] more every second. Past that its events are counted, not kept,
//!   and an `event_flood` event says so (at most one every [`FLOOD_REPORT_SECONDS`] per source),
//!   in the platform's bucket;
//! - every kept event is queued for the log table. The event-log launcher (a background worker)
//!   starts a worker for each database with queued events; it inserts them into that database's
//!   `tenancy.security_event_log` (append-only, read by operators) and, when
//!   `tenancy.notify_security_events` is on, sends a `NOTIFY tenancy_security` for each.

use crate::errors;
use pgrx::bgworkers::{
    BackgroundWorker, BackgroundWorkerBuilder, BgWorkerStartTime, DynamicBackgroundWorker,
    SignalWakeFlags,
};
use pgrx::prelude::*;
use pgrx::{pg_shmem_init, pg_sys, PGRXSharedMemory, PgLwLock};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

pub const KINDS: &[&str] = &[
    "bind_refused",
    "binding_expired",
    "binding_revoked",
    "management_refused",
    "guard_refused",
    "truncate_refused",
    "privilege_refused",
    "cross_tenant_write_refused",
    "audit_tamper_refused",
    "support_refused",
    "platform_role_bound",
    "event_flood",
    "other",
];
/// Tenant buckets, the first two reserved: events with no verified tenant, and flood reports.
const BUCKETS: usize = 128;
const UNATTRIBUTED: usize = 0;
const PLATFORM: usize = 1;
pub const PER_BUCKET: usize = 16;
/// Events waiting for the log table; when full, the oldest goes (and is counted).
const QUEUE: usize = 512;
/// Flood sources tracked at once (least recently active replaced).
const LIMITERS: usize = 256;
pub const BURST: i64 = 32;
pub const PER_SECOND: i64 = 2;
pub const FLOOD_REPORT_SECONDS: i64 = 10;
const TEXT: usize = 360;
const USECS: i64 = 1_000_000;

#[derive(Clone, Copy)]
pub struct Slot {
    at: pg_sys::TimestampTz,
    kind: u8,
    len: u16,
    text: [u8; TEXT],
}

const EMPTY_SLOT: Slot = Slot {
    at: 0,
    kind: 0,
    len: 0,
    text: [0; TEXT],
};

#[derive(Clone, Copy)]
struct Bucket {
    tenant: [u8; 16],
    used: bool,
    last: pg_sys::TimestampTz,
    next: u32,
    slots: [Slot; PER_BUCKET],
}

#[derive(Clone, Copy)]
struct Limiter {
    role: u32,
    tenant: [u8; 16],
    /// Tokens in micro-events (a million is one event).
    tokens: i64,
    updated: pg_sys::TimestampTz,
    suppressed: u64,
    reported: pg_sys::TimestampTz,
}

#[derive(Clone, Copy)]
struct Queued {
    db: u32,
    taken: bool,
    tenant: [u8; 16],
    attributed: bool,
    slot: Slot,
}

#[derive(Clone, Copy)]
pub struct EventLog {
    counts: [u64; 16],
    dropped: u64,
    buckets: [Bucket; BUCKETS],
    limiters: [Limiter; LIMITERS],
    queue: [Queued; QUEUE],
    queued: u64,
}

impl Default for EventLog {
    fn default() -> Self {
        EventLog {
            counts: [0; 16],
            dropped: 0,
            buckets: [Bucket {
                tenant: [0; 16],
                used: false,
                last: 0,
                next: 0,
                slots: [EMPTY_SLOT; PER_BUCKET],
            }; BUCKETS],
            limiters: [Limiter {
                role: 0,
                tenant: [0; 16],
                tokens: 0,
                updated: 0,
                suppressed: 0,
                reported: 0,
            }; LIMITERS],
            queue: [Queued {
                db: 0,
                taken: true,
                tenant: [0; 16],
                attributed: false,
                slot: EMPTY_SLOT,
            }; QUEUE],
            queued: 0,
        }
    }
}

// SAFETY: plain data (integers and byte arrays), no pointers: valid in shared memory.
unsafe impl PGRXSharedMemory for EventLog {}

// SAFETY: the lock's name is unique to pg_tenancy; pg_shmem_init! registers it at preload.
static EVENTS: PgLwLock<EventLog> = unsafe { PgLwLock::new(c"pg_tenancy_security_events") };
static PRELOADED: AtomicBool = AtomicBool::new(false);

pub fn init() {
    // SAFETY: reads a flag PostgreSQL sets while it loads shared_preload_libraries.
    if unsafe { pg_sys::process_shared_preload_libraries_in_progress } {
        pg_shmem_init!(EVENTS);
        PRELOADED.store(true, Ordering::Relaxed);
        BackgroundWorkerBuilder::new("pg_tenancy security event log")
            .set_type("pg_tenancy security event log")
            .set_library("pg_tenancy")
            .set_function("tenancy_event_launcher")
            .enable_shmem_access(None)
            .set_start_time(BgWorkerStartTime::RecoveryFinished)
            .set_restart_time(Some(Duration::from_secs(5)))
            .load();
    }
}

pub fn preloaded() -> bool {
    PRELOADED.load(Ordering::Relaxed)
}

fn kind_index(kind: &str) -> usize {
    KINDS
        .iter()
        .position(|x| *x == kind)
        .unwrap_or(KINDS.len() - 1)
}

fn slot(kind: usize, line: &str, at: pg_sys::TimestampTz) -> Slot {
    let bytes = line.as_bytes();
    let mut n = bytes.len().min(TEXT);
    while n > 0 && !line.is_char_boundary(n) {
        n -= 1;
    }
    let mut s = EMPTY_SLOT;
    s.at = at;
    s.kind = kind as u8;
    s.len = n as u16;
    s.text[..n].copy_from_slice(&bytes[..n]);
    s
}

impl EventLog {
    /// The bucket of `tenant` (None: unattributed), taking a free one or the least recently
    /// used tenant bucket.
    fn bucket_for(&mut self, tenant: Option<[u8; 16]>, now: pg_sys::TimestampTz) -> usize {
        let Some(t) = tenant else {
            return UNATTRIBUTED;
        };
        let tenants = 2..BUCKETS;
        if let Some(i) = tenants
            .clone()
            .find(|&i| self.buckets[i].used && self.buckets[i].tenant == t)
        {
            return i;
        }
        let i = tenants
            .clone()
            .find(|&i| !self.buckets[i].used)
            .unwrap_or_else(|| {
                tenants
                    .min_by_key(|&i| self.buckets[i].last)
                    .expect("tenant buckets")
            });
        let b = &mut self.buckets[i];
        b.used = true;
        b.tenant = t;
        b.next = 0;
        b.last = now;
        b.slots = [EMPTY_SLOT; PER_BUCKET];
        i
    }

    fn keep(&mut self, bucket: usize, s: Slot) {
        let b = &mut self.buckets[bucket];
        b.slots[b.next as usize % PER_BUCKET] = s;
        b.next = b.next.wrapping_add(1);
        b.last = s.at;
    }

    fn enqueue(&mut self, db: u32, tenant: Option<[u8; 16]>, s: Slot) {
        let i = (self.queued % QUEUE as u64) as usize;
        if !self.queue[i].taken {
            self.dropped += 1;
        }
        self.queue[i] = Queued {
            db,
            taken: false,
            tenant: tenant.unwrap_or([0; 16]),
            attributed: tenant.is_some(),
            slot: s,
        };
        self.queued += 1;
    }

    /// Spend one event of the source's allowance; Some(suppressed count to report) when the
    /// source is flooding and a report is due, Err(()) when this event is suppressed.
    fn admit(
        &mut self,
        role: u32,
        tenant: [u8; 16],
        now: pg_sys::TimestampTz,
    ) -> Result<(), Option<u64>> {
        let found = self
            .limiters
            .iter()
            .position(|l| l.updated != 0 && l.role == role && l.tenant == tenant);
        let i = found.unwrap_or_else(|| {
            let i = (0..LIMITERS)
                .min_by_key(|&i| self.limiters[i].updated)
                .expect("limiters");
            self.limiters[i] = Limiter {
                role,
                tenant,
                tokens: BURST * USECS,
                updated: now,
                suppressed: 0,
                reported: 0,
            };
            i
        });
        let l = &mut self.limiters[i];
        let elapsed = (now - l.updated).max(0);
        l.tokens = (l.tokens + elapsed * PER_SECOND).min(BURST * USECS);
        l.updated = now;
        if l.tokens >= USECS {
            l.tokens -= USECS;
            return Ok(());
        }
        l.suppressed += 1;
        if now - l.reported >= FLOOD_REPORT_SECONDS * USECS {
            l.reported = now;
            let n = l.suppressed;
            l.suppressed = 0;
            return Err(Some(n));
        }
        Err(None)
    }
}

/// Count and keep an event (a no-op unless preloaded). `tenant`: the tenant the event is
/// verified to concern, if any.
pub fn record(kind: &str, line: &str, tenant: Option<uuid::Uuid>) {
    if !preloaded() {
        return;
    }
    let k = kind_index(kind);
    // Counted for the tenant's telemetry, kept or not (a flood is counted in full).
    crate::telemetry::event(tenant, k);
    // SAFETY: reads the clock, the database and the session's login role.
    let (now, db, role) = unsafe {
        (
            pg_sys::GetCurrentTimestamp(),
            u32::from(pg_sys::MyDatabaseId),
            u32::from(pg_sys::GetSessionUserId()),
        )
    };
    let tenant = tenant.map(|t| *t.as_bytes());
    let line = fitted(line);
    let line: &str = &line;
    // Looked up before the lock is taken: no catalog access while holding it.
    let role_name = crate::authz::role_name(pg_sys::Oid::from(role));
    let mut log = EVENTS.exclusive();
    log.counts[k] += 1;
    match log.admit(role, tenant.unwrap_or([0; 16]), now) {
        Ok(()) => {
            let s = slot(k, line, now);
            let b = log.bucket_for(tenant, now);
            log.keep(b, s);
            log.enqueue(db, tenant, s);
        }
        Err(report) => {
            let Some(suppressed) = report else {
                return;
            };
            let flood = serde_json::json!({
                "event": "event_flood",
                "role": role_name,
                "tenant_id": tenant.map(|t| uuid::Uuid::from_bytes(t).to_string()),
                "suppressed": suppressed,
                "of_event": kind,
                "reason": format!(
                    "more than {BURST} security events, then {PER_SECOND} a second, from one role and tenant: {suppressed} not kept"
                ),
            })
            .to_string();
            let f = kind_index("event_flood");
            log.counts[f] += 1;
            let s = slot(f, &flood, now);
            log.keep(PLATFORM, s);
            log.enqueue(db, tenant, s);
        }
    }
}

fn require_preloaded() {
    crate::authz::require_operator("security_events");
    if !preloaded() {
        errors::raise(
            errors::NOT_IN_PREREQUISITE_STATE,
            "security event counters need pg_tenancy in shared_preload_libraries",
            "Add pg_tenancy to shared_preload_libraries and restart; until then the events are in the server log as 'pg_tenancy security event:' lines.",
        );
    }
}

fn timestamp(at: pg_sys::TimestampTz) -> pgrx::datum::TimestampWithTimeZone {
    // SAFETY: a TimestampTz datum is the integer itself.
    unsafe { pgrx::datum::TimestampWithTimeZone::from_datum(pg_sys::Datum::from(at), false) }
        .expect("timestamp")
}

fn detail(s: &Slot) -> pgrx::JsonB {
    let text = String::from_utf8_lossy(&s.text[..s.len as usize]).into_owned();
    pgrx::JsonB(without_nul(
        serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text)),
    ))
}

/// `v` with every NUL character in its strings (keys too) replaced by U+FFFD: jsonb cannot
/// hold NUL (`\u0000 cannot be converted to text`), and an event's fields carry what a token's
/// claims said, so one NUL would make the event unwritable and everything read with it fail.
/// The most characters of one string of a security event kept in its log line and record.
const MAX_FIELD_CHARS: usize = 256;

/// `v` with every string longer than [`MAX_FIELD_CHARS`] cut there, its length noted.
pub(crate) fn shortened(v: serde_json::Value) -> serde_json::Value {
    shortened_to(v, MAX_FIELD_CHARS)
}

/// `v` with every string longer than `max` characters cut there, its length noted.
fn shortened_to(v: serde_json::Value, max: usize) -> serde_json::Value {
    use serde_json::Value;
    match v {
        Value::String(s) if s.chars().count() > max => {
            let kept: String = s.chars().take(max).collect();
            Value::String(format!("{kept}...({} bytes)", s.len()))
        }
        Value::Array(a) => Value::Array(a.into_iter().map(|v| shortened_to(v, max)).collect()),
        Value::Object(o) => Value::Object(
            o.into_iter()
                .map(|(k, v)| (k, shortened_to(v, max)))
                .collect(),
        ),
        other => other,
    }
}

/// An event's JSON object made to fit a shared-memory slot ([`TEXT`] bytes) whole: its strings
/// cut shorter until it does (the server log keeps the longer form). Cut at the slot's end
/// instead, a long event was persisted as a cut-off JSON string, without its fields (an
/// attacker's pass saw a cross-tenant write's `table` lost).
fn fitted(line: &str) -> std::borrow::Cow<'_, str> {
    if line.len() <= TEXT {
        return line.into();
    }
    let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
        return "{\"cut\": true}".into();
    };
    for max in [128, 64, 32, 16, 8, 0] {
        let t = shortened_to(v.clone(), max).to_string();
        if t.len() <= TEXT {
            return t.into();
        }
    }
    serde_json::json!({"event": v.get("event"), "cut": true})
        .to_string()
        .into()
}

pub fn without_nul(v: serde_json::Value) -> serde_json::Value {
    use serde_json::Value;
    let clean = |s: String| {
        if s.contains('\0') {
            s.replace('\0', "\u{FFFD}")
        } else {
            s
        }
    };
    match v {
        Value::String(s) => Value::String(clean(s)),
        Value::Array(a) => Value::Array(a.into_iter().map(without_nul).collect()),
        Value::Object(o) => Value::Object(
            o.into_iter()
                .map(|(k, v)| (clean(k), without_nul(v)))
                .collect(),
        ),
        other => other,
    }
}

/// The recent security events kept in shared memory (the last 16 of each tenant, of the
/// events no tenant is verified for, and of flood reports), newest first (operators; needs
/// preloading). Older ones are in tenancy.security_event_log and the server log.
#[pg_extern(volatile, parallel_safe)]
fn security_events() -> TableIterator<
    'static,
    (
        name!(occurred_at, pgrx::datum::TimestampWithTimeZone),
        name!(event, String),
        name!(tenant_id, Option<pgrx::Uuid>),
        name!(detail, pgrx::JsonB),
    ),
> {
    require_preloaded();
    let log = EVENTS.share();
    let mut rows = Vec::new();
    for (i, b) in log.buckets.iter().enumerate() {
        if i >= 2 && !b.used {
            continue;
        }
        let tenant = (i >= 2).then(|| pgrx::Uuid::from_bytes(b.tenant));
        let kept = (b.next as usize).min(PER_BUCKET);
        for back in 1..=kept {
            let s = &b.slots[(b.next as usize + PER_BUCKET - back) % PER_BUCKET];
            rows.push((s.at, KINDS[s.kind as usize].to_string(), tenant, detail(s)));
        }
    }
    drop(log);
    rows.sort_by_key(|r| std::cmp::Reverse(r.0));
    TableIterator::new(
        rows.into_iter()
            .map(|(at, k, t, d)| (timestamp(at), k, t, d))
            .collect::<Vec<_>>(),
    )
}

/// Security events counted since the server started, per kind, including those a flood
/// suppressed (operators; needs preloading).
#[pg_extern(volatile, parallel_safe)]
fn security_event_counts() -> TableIterator<'static, (name!(event, String), name!(total, i64))> {
    require_preloaded();
    let log = EVENTS.share();
    TableIterator::new(
        KINDS
            .iter()
            .enumerate()
            .map(|(i, k)| (k.to_string(), log.counts[i] as i64))
            .collect::<Vec<_>>(),
    )
}

// ------------------------------------------------------------------------------------------
// Persisting: a launcher that needs no database, and one worker per database with events.

/// The event-log launcher (a static background worker): every tenth of a second, starts a
/// worker for each database that has queued events and no worker yet (so that an alert leaves
/// well within a second of its event; the round reads 512 queue slots under a shared lock).
///
/// # Safety
/// Called by the postmaster as a background worker's main function.
#[unsafe(no_mangle)]
#[pg_guard]
pub unsafe extern "C-unwind" fn tenancy_event_launcher(_arg: pg_sys::Datum) {
    BackgroundWorker::attach_signal_handlers(SignalWakeFlags::SIGHUP | SignalWakeFlags::SIGTERM);
    let mut workers: HashMap<u32, DynamicBackgroundWorker> = HashMap::new();
    // Per database: the oldest event waiting when its last writer was started, and how many
    // writers in a row have left it waiting (a writer that cannot connect: the database was
    // dropped, or no longer allows connections).
    let mut tries: HashMap<u32, (u64, u32)> = HashMap::new();
    while BackgroundWorker::wait_latch(Some(Duration::from_millis(100))) {
        let dbs: Vec<(u32, u64)> = oldest_waiting();
        tries.retain(|db, _| dbs.iter().any(|(d, _)| d == db));
        for (db, oldest) in dbs {
            if workers.get(&db).is_some_and(|w| w.pid().is_ok()) {
                continue;
            }
            let t = tries.entry(db).or_insert((oldest, 0));
            if t.0 == oldest {
                t.1 += 1;
            } else {
                *t = (oldest, 1);
            }
            if t.1 > WRITER_TRIES {
                let dropped = discard(db);
                tries.remove(&db);
                pgrx::log!(
                    "pg_tenancy: {dropped} security events of database {db} were not persisted: {WRITER_TRIES} writers in a row could not connect to it (dropped?)"
                );
                continue;
            }
            let started = BackgroundWorkerBuilder::new("pg_tenancy security event writer")
                .set_type("pg_tenancy security event writer")
                .set_library("pg_tenancy")
                .set_function("tenancy_event_writer")
                .set_argument(Some(pg_sys::Datum::from(db)))
                .enable_shmem_access(None)
                .enable_spi_access()
                .load_dynamic();
            match started {
                Ok(w) => {
                    workers.insert(db, w);
                }
                // No free worker slot now: the events wait for the next round.
                Err(_) => break,
            }
        }
    }
}

/// Writers started in a row for a database whose oldest waiting event stays unwritten, before
/// its waiting events are given up.
const WRITER_TRIES: u32 = 3;

/// Each database with events waiting, and the sequence number of its oldest one.
fn oldest_waiting() -> Vec<(u32, u64)> {
    let log = EVENTS.share();
    let start = log.queued.saturating_sub(QUEUE as u64);
    let mut out: Vec<(u32, u64)> = Vec::new();
    for n in start..log.queued {
        let q = &log.queue[(n % QUEUE as u64) as usize];
        if !q.taken && !out.iter().any(|(d, _)| *d == q.db) {
            out.push((q.db, n));
        }
    }
    out
}

/// Give up the waiting events of database `db`; how many there were.
fn discard(db: u32) -> usize {
    take(db).len()
}

/// Take the queued events of database `db`, oldest first.
fn take(db: u32) -> Vec<(Option<[u8; 16]>, Slot)> {
    let mut log = EVENTS.exclusive();
    let start = log.queued.saturating_sub(QUEUE as u64);
    let mut out = Vec::new();
    for n in start..log.queued {
        let q = &mut log.queue[(n % QUEUE as u64) as usize];
        if !q.taken && q.db == db {
            q.taken = true;
            out.push((q.attributed.then_some(q.tenant), q.slot));
        }
    }
    out
}

/// A database's event-log writer (a dynamic background worker): inserts the database's queued
/// events into `tenancy.security_event_log`, and NOTIFYs them when asked to; stops after a
/// second with nothing to write (so that it holds no connection to a database for long: DROP
/// DATABASE waits for it).
///
/// # Safety
/// Called by the postmaster as a background worker's main function.
#[unsafe(no_mangle)]
#[pg_guard]
pub unsafe extern "C-unwind" fn tenancy_event_writer(arg: pg_sys::Datum) {
    BackgroundWorker::attach_signal_handlers(SignalWakeFlags::SIGHUP | SignalWakeFlags::SIGTERM);
    let db = arg.value() as u32;
    BackgroundWorker::connect_worker_to_spi_by_oid(Some(pg_sys::Oid::from(db)), None);
    // The worker runs as the bootstrap superuser with the database's own settings applied
    // (ALTER DATABASE ... SET, which the database's owner may make without being a superuser):
    // a search_path that puts the owner's schema first made a superuser of it through an
    // operator it planted there, and default_transaction_read_only or a short timeout kept
    // every event out of the log, and so would a `role` to run as (found by an attacker's pass;
    // `a_databases_settings_cannot_turn_the_event_writer` in
    // tests/integration/tests/trust_boundaries.rs). Settled for the session before anything
    // else runs, in a transaction of their own (a read-only one may still SET), and every name
    // below is qualified besides.
    BackgroundWorker::transaction(|| {
        Spi::run(
            "SET ROLE NONE; SET search_path TO pg_catalog, pg_temp; SET default_transaction_read_only TO off; \
             SET statement_timeout TO 0; SET lock_timeout TO 0; \
             SET idle_in_transaction_session_timeout TO 0; SET default_transaction_isolation TO 'read committed'",
        )
    })
    .unwrap_or_else(|e| pgrx::error!("pg_tenancy: the security event writer could not settle its session: {e}"));
    let mut idle = 0;
    // The events it was started for first, then every tenth of a second.
    loop {
        let batch = take(db);
        if batch.is_empty() {
            idle += 1;
            if idle > 10 {
                break;
            }
        } else {
            idle = 0;
            BackgroundWorker::transaction(|| write_batch(batch));
        }
        if !BackgroundWorker::wait_latch(Some(Duration::from_millis(100))) {
            break;
        }
    }
}

fn write_batch(batch: Vec<(Option<[u8; 16]>, Slot)>) {
    let installed = Spi::get_one::<bool>(
        "SELECT EXISTS (SELECT FROM pg_catalog.pg_extension WHERE extname OPERATOR(pg_catalog.=) 'pg_tenancy')",
    )
    .ok()
    .flatten()
    .unwrap_or(false);
    if !installed {
        return;
    }
    let notify = crate::gucs::NOTIFY_SECURITY_EVENTS.get();
    for (tenant, s) in batch {
        let id = Spi::get_one_with_args::<i64>(
            "INSERT INTO tenancy.security_event_log (occurred_at, event, tenant_id, detail) \
             VALUES ($1, $2, $3, $4) RETURNING id",
            &[
                timestamp(s.at).into(),
                KINDS[s.kind as usize].into(),
                tenant.map(pgrx::Uuid::from_bytes).into(),
                detail(&s).into(),
            ],
        );
        if notify {
            // The payload names the event, never what it concerns beyond its tenant's id: any
            // role of the database may LISTEN. Operators read the rest in the log table.
            let payload = serde_json::json!({
                "id": id.ok().flatten(),
                "event": KINDS[s.kind as usize],
                "tenant_id": tenant.map(|t| uuid::Uuid::from_bytes(t).to_string()),
            })
            .to_string();
            let _ = Spi::run_with_args(
                "SELECT pg_catalog.pg_notify('tenancy_security', $1)",
                &[payload.as_str().into()],
            );
        }
    }
}

#[cfg(test)]
mod unit {
    use super::*;

    /// The log is about a megabyte: built on a thread with room for it.
    fn with_log(f: impl FnOnce(&mut EventLog) + Send + 'static) {
        std::thread::Builder::new()
            .stack_size(64 << 20)
            .spawn(move || f(&mut Box::<EventLog>::default()))
            .unwrap()
            .join()
            .unwrap();
    }

    #[test]
    fn a_flooding_source_is_cut_to_its_allowance_and_reported_once() {
        with_log(flood);
    }

    fn flood(log: &mut EventLog) {
        let now = 1_000_000_000;
        let mut kept = 0;
        let mut reports = vec![];
        for i in 0..500 {
            match log.admit(7, [1; 16], now + i) {
                Ok(()) => kept += 1,
                Err(Some(n)) => reports.push(n),
                Err(None) => {}
            }
        }
        assert_eq!(kept, BURST);
        assert_eq!(reports, vec![1], "one report at the first suppressed event");
        // Another source (another tenant of the same role) is untouched.
        assert!(log.admit(7, [2; 16], now + 500).is_ok());
        // Ten seconds later the source has 20 events more, and its next report counts the rest.
        let later = now + FLOOD_REPORT_SECONDS * USECS;
        let mut kept = 0;
        let mut reports = vec![];
        for i in 0..100 {
            match log.admit(7, [1; 16], later + i) {
                Ok(()) => kept += 1,
                Err(Some(n)) => reports.push(n),
                Err(None) => {}
            }
        }
        assert_eq!(kept, (FLOOD_REPORT_SECONDS * PER_SECOND) as i32);
        assert_eq!(reports.len(), 1);
        assert!(reports[0] >= 500 - BURST as u64 - 1, "{reports:?}");
    }

    #[test]
    fn one_tenants_events_never_evict_another_tenants() {
        with_log(no_eviction);
    }

    fn no_eviction(log: &mut EventLog) {
        let victim = log.bucket_for(Some([9; 16]), 1);
        log.keep(victim, slot(0, "{\"victim\": true}", 1));
        for i in 0..10_000 {
            let b = log.bucket_for(Some([3; 16]), 2 + i);
            log.keep(b, slot(0, "{}", 2 + i));
            let u = log.bucket_for(None, 2 + i);
            log.keep(u, slot(0, "{}", 2 + i));
        }
        let b = log.bucket_for(Some([9; 16]), 20_000);
        assert_eq!(b, victim);
        assert_eq!(log.buckets[b].next, 1);
        assert_eq!(&log.buckets[b].slots[0].text[..4], b"{\"vi");
    }

    /// A long event keeps every field, as a JSON object that fits its slot (it was cut at the
    /// slot's end and persisted as a string, without its fields).
    #[test]
    fn a_long_event_fits_its_slot_as_an_object_with_every_field() {
        let long = "x".repeat(250);
        let line = serde_json::json!({
            "event": "cross_tenant_write_refused", "role": long, "session_role": long,
            "table": "public.it_orders", "reason": long, "tenant_id": "6f1c1d1e-0000-4000-8000-000000000001",
        })
        .to_string();
        assert!(line.len() > TEXT);
        let kept = fitted(&line);
        assert!(kept.len() <= TEXT, "{kept}");
        let v: serde_json::Value = serde_json::from_str(&kept).unwrap();
        for k in [
            "event",
            "role",
            "session_role",
            "table",
            "reason",
            "tenant_id",
        ] {
            assert!(v.get(k).is_some(), "{k} lost: {kept}");
        }
        assert_eq!(v["table"], "public.it_orders");
        assert_eq!(fitted("{\"short\": 1}"), "{\"short\": 1}");
    }
}

/// Whether a new session of this database loads pg_tenancy before its first statement: the
/// library is in `shared_preload_libraries` (this server preloaded it) or in
/// `session_preload_libraries` (read without the privilege check SQL's current_setting makes, so
/// that verify() works for operators).
#[pg_extern(stable, parallel_safe, name = "_library_preloaded")]
fn library_preloaded() -> bool {
    if preloaded() {
        return true;
    }
    // SAFETY: reads a setting's current value; the returned string is PostgreSQL's.
    unsafe {
        let v = pg_sys::GetConfigOption(c"session_preload_libraries".as_ptr(), true, false);
        !v.is_null()
            && std::ffi::CStr::from_ptr(v)
                .to_string_lossy()
                .split(',')
                .map(|l| l.trim().trim_matches('"'))
                .any(|l| l == "pg_tenancy" || l == "$libdir/pg_tenancy")
    }
}

/// Report a security event ([`crate::errors::EventSink`]): one JSON object in the server log at
/// once (it survives the rollback of the statement that caused it), with the role, the
/// session's role and the tenant it is verified to concern, and in the shared-memory record
/// when preloaded.
pub fn report(event: &str, mut fields: serde_json::Map<String, serde_json::Value>) {
    fields.insert("event".into(), event.into());
    // SAFETY: reads the current and the session's user ids.
    let (role, session_role) = unsafe {
        (
            crate::authz::role_name(pgrx::pg_sys::GetUserId()),
            crate::authz::role_name(pgrx::pg_sys::GetSessionUserId()),
        )
    };
    fields.entry("role").or_insert(role.into());
    fields.entry("session_role").or_insert(session_role.into());
    // The tenant the event is verified to concern: named by the caller once a token's
    // signature verified, or the session's binding.
    let tenant = fields
        .get("tenant_id")
        .and_then(|v| v.as_str())
        .and_then(|t| uuid::Uuid::parse_str(t).ok())
        .or_else(|| crate::authz::acting_unchecked().map(|a| a.tenant));
    // One JSON object: serde_json escapes every control character inside its strings; NUL,
    // which no jsonb can hold, is replaced; every string is cut to MAX_FIELD_CHARS (an
    // attacker's pass wrote 20 MB log lines by naming a 10 MB tenant).
    let line = shortened(without_nul(serde_json::Value::Object(fields))).to_string();
    record(event, &line, tenant);
    pgrx::pg_sys::panic::ErrorReport::new(
        pgrx::PgSqlErrorCode::ERRCODE_SUCCESSFUL_COMPLETION,
        format!("pg_tenancy security event: {line}"),
        "pg_tenancy",
    )
    .report(pgrx::PgLogLevel::LOG);
}
