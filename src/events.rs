//! Security events kept in shared memory when the library is in `shared_preload_libraries`:
//! counters per kind and the most recent events, read by `tenancy.security_events()` and
//! `tenancy.security_event_counts()`. Every event is also a server-log line (errors.rs), which
//! needs no preloading; both are written before the refusal is raised, so they survive the
//! rollback of the statement that caused them.

use crate::errors;
use pgrx::prelude::*;
use pgrx::{pg_shmem_init, pg_sys, PGRXSharedMemory, PgLwLock};
use std::sync::atomic::{AtomicBool, Ordering};

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
    "other",
];
const RECENT: usize = 128;
const TEXT: usize = 480;

#[derive(Clone, Copy)]
pub struct Slot {
    at: pg_sys::TimestampTz,
    kind: u8,
    len: u16,
    text: [u8; TEXT],
}

#[derive(Clone, Copy)]
pub struct EventLog {
    next: u64,
    counts: [u64; 16],
    slots: [Slot; RECENT],
}

impl Default for EventLog {
    fn default() -> Self {
        EventLog {
            next: 0,
            counts: [0; 16],
            slots: [Slot {
                at: 0,
                kind: 0,
                len: 0,
                text: [0; TEXT],
            }; RECENT],
        }
    }
}

unsafe impl PGRXSharedMemory for EventLog {}

static EVENTS: PgLwLock<EventLog> = unsafe { PgLwLock::new(c"pg_tenancy_security_events") };
static PRELOADED: AtomicBool = AtomicBool::new(false);

pub fn init() {
    if unsafe { pg_sys::process_shared_preload_libraries_in_progress } {
        pg_shmem_init!(EVENTS);
        PRELOADED.store(true, Ordering::Relaxed);
    }
}

/// Count and keep an event (a no-op unless preloaded).
pub fn record(kind: &str, line: &str) {
    if !PRELOADED.load(Ordering::Relaxed) {
        return;
    }
    let k = KINDS
        .iter()
        .position(|x| *x == kind)
        .unwrap_or(KINDS.len() - 1);
    let bytes = line.as_bytes();
    let mut n = bytes.len().min(TEXT);
    while n > 0 && !line.is_char_boundary(n) {
        n -= 1;
    }
    let mut log = EVENTS.exclusive();
    log.counts[k] += 1;
    let i = (log.next % RECENT as u64) as usize;
    log.next += 1;
    let slot = &mut log.slots[i];
    slot.at = unsafe { pg_sys::GetCurrentTimestamp() };
    slot.kind = k as u8;
    slot.len = n as u16;
    slot.text[..n].copy_from_slice(&bytes[..n]);
}

fn require_preloaded() {
    crate::authz::require_operator("security_events");
    if !PRELOADED.load(Ordering::Relaxed) {
        errors::raise(
            errors::NOT_IN_PREREQUISITE_STATE,
            "security event counters need pg_tenancy in shared_preload_libraries",
            "Add pg_tenancy to shared_preload_libraries and restart; until then the events are in the server log as 'pg_tenancy security event:' lines.",
        );
    }
}

/// The most recent security events, newest first (operators; needs preloading).
#[pg_extern(volatile, parallel_safe)]
fn security_events() -> TableIterator<
    'static,
    (
        name!(occurred_at, pgrx::datum::TimestampWithTimeZone),
        name!(event, String),
        name!(detail, pgrx::JsonB),
    ),
> {
    require_preloaded();
    let log = *EVENTS.share();
    let total = log.next.min(RECENT as u64) as usize;
    let mut rows = Vec::with_capacity(total);
    for back in 1..=total {
        let i = ((log.next - back as u64) % RECENT as u64) as usize;
        let s = log.slots[i];
        let text = String::from_utf8_lossy(&s.text[..s.len as usize]).into_owned();
        let detail = serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text));
        let at = unsafe {
            pgrx::datum::TimestampWithTimeZone::from_datum(pg_sys::Datum::from(s.at), false)
        }
        .expect("timestamp");
        rows.push((at, KINDS[s.kind as usize].to_string(), pgrx::JsonB(detail)));
    }
    TableIterator::new(rows)
}

/// Security events counted since the server started, per kind (operators; needs preloading).
#[pg_extern(volatile, parallel_safe)]
fn security_event_counts() -> TableIterator<'static, (name!(event, String), name!(total, i64))> {
    require_preloaded();
    let log = *EVENTS.share();
    TableIterator::new(
        KINDS
            .iter()
            .enumerate()
            .map(|(i, k)| (k.to_string(), log.counts[i] as i64))
            .collect::<Vec<_>>(),
    )
}
