//! Per-tenant resource limits that hold.
//!
//! A tenant's admin chooses its `statement_timeout`, `lock_timeout` and `work_mem`
//! (tenancy.set_setting); the platform sets ceilings above them: an operator per tenant
//! (tenancy.set_limit, audited in the tenant's chain) and a superuser for every tenant
//! (`tenancy.max_*`). The tenant's admin cannot set a value above a ceiling, and a bound session
//! runs every statement within them: a value above the lowest ceiling (a timeout of 0, none,
//! counts as above any) is brought down to it before the statement reads the binding, whatever
//! set it (the tenant's setting, the session's own SET, a ROLLBACK TO SAVEPOINT that undid the
//! SET LOCAL of bind). A statement whose timeout was lowered while it ran is re-armed with the
//! lowered value.

use crate::catalog::{self, TenantRow};
use crate::errors;
use crate::gucs;
use pgrx::pg_sys;
use pgrx::prelude::*;
use std::cell::Cell;
use uuid::Uuid;

/// The resource settings, in the order of every array below.
pub const NAMES: [&str; 3] = ["statement_timeout", "lock_timeout", "work_mem"];

/// Whether a value of 0 means "none" (timeouts), which is above any ceiling.
const ZERO_IS_NONE: [bool; 3] = [true, true, false];

/// utils/timeout.h, which pgrx does not bind.
const STATEMENT_TIMEOUT: std::ffi::c_int = 3;
unsafe extern "C-unwind" {
    fn enable_timeout_after(id: std::ffi::c_int, delay_ms: std::ffi::c_int);
    fn get_timeout_active(id: std::ffi::c_int) -> bool;
    fn get_timeout_finish_time(id: std::ffi::c_int) -> pg_sys::TimestampTz;
}

/// Arm the running statement's timeout to fire `ms` from now, unless it is armed to fire
/// sooner: a ceiling only ever brings the deadline closer. Re-arming an armed timer would push
/// it back, and a statement that lifts its own timeout between its queries (`set_config` in a
/// PL/pgSQL loop, whose expressions run no query) would then be re-armed at each query and
/// never time out (found by a review).
fn arm_statement_timeout(ms: i32) {
    // SAFETY: the timeout module's own API, in a backend's main process, called through
    // pgrx's FFI guard (an ERROR raised below comes back as a panic).
    unsafe {
        pg_sys::ffi::pg_guard_ffi_boundary(|| {
            if get_timeout_active(STATEMENT_TIMEOUT) {
                let finish = get_timeout_finish_time(STATEMENT_TIMEOUT);
                let wanted = pg_sys::GetCurrentTimestamp() + i64::from(ms) * 1000;
                if finish <= wanted {
                    return;
                }
            }
            enable_timeout_after(STATEMENT_TIMEOUT, ms);
        })
    }
}

fn index(name: &str) -> Option<usize> {
    NAMES.iter().position(|n| *n == name)
}

/// A setting's value (a JSON string or number, as SET takes it) in the setting's base unit
/// (milliseconds, kB), or None if SET would not take it.
pub fn parse(name: &str, value: &serde_json::Value) -> Option<i32> {
    let text = match value {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Number(n) => n.to_string(),
        _ => return None,
    };
    let cname = std::ffi::CString::new(name).ok()?;
    let cvalue = std::ffi::CString::new(text).ok()?;
    let mut out = 0;
    // SAFETY: GetConfigOptionFlags reads the setting's definition (missing_ok); parse_int reads
    // a NUL-terminated string with the setting's unit flags and writes `out`.
    let ok = unsafe {
        let flags = pg_sys::GetConfigOptionFlags(cname.as_ptr(), true);
        pg_sys::parse_int(cvalue.as_ptr(), &mut out, flags, std::ptr::null_mut())
    };
    ok.then_some(out)
}

fn current(i: usize) -> i32 {
    // SAFETY: reads of PostgreSQL's own setting variables in this backend.
    unsafe {
        match i {
            0 => pg_sys::StatementTimeout,
            1 => pg_sys::LockTimeout,
            _ => pg_sys::work_mem,
        }
    }
}

fn server_ceiling(i: usize) -> Option<i32> {
    let v = match i {
        0 => gucs::int(&gucs::MAX_STATEMENT_TIMEOUT),
        1 => gucs::int(&gucs::MAX_LOCK_TIMEOUT),
        _ => gucs::int(&gucs::MAX_WORK_MEM),
    };
    (v > 0).then_some(v)
}

fn min_some(a: Option<i32>, b: Option<i32>) -> Option<i32> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// What a tenant's row says of its resource settings, parsed once per catalog generation of
/// the tenant: its own values (tenancy.set_setting) and its operator's ceilings
/// (tenancy.set_limit), in their base units. The superuser's ceilings are settings that may
/// change at any time (SET, reload), and are read each time.
#[derive(Clone, Copy)]
struct Parsed {
    own: [Option<i32>; 3],
    operator: [Option<i32>; 3],
}

impl Parsed {
    fn of(t: &TenantRow) -> Parsed {
        let read =
            |v: &serde_json::Value, i: usize| v.get(NAMES[i]).and_then(|v| parse(NAMES[i], v));
        Parsed {
            own: [0, 1, 2].map(|i| read(&t.settings, i)),
            operator: [0, 1, 2].map(|i| read(&t.limits, i).filter(|v| *v > 0)),
        }
    }

    /// The lowest ceiling on setting `i`: the operator's and the superuser's.
    fn ceiling(&self, i: usize) -> Option<i32> {
        min_some(self.operator[i], server_ceiling(i))
    }

    /// The highest value setting `i` may have in a session bound to the tenant: the lowest
    /// ceiling, and the tenant's own setting (which it chose as its limit).
    fn cap(&self, i: usize) -> Option<i32> {
        let own = self.own[i].filter(|v| !(ZERO_IS_NONE[i] && *v == 0));
        min_some(self.ceiling(i), own)
    }

    fn caps(&self) -> Caps {
        [self.cap(0), self.cap(1), self.cap(2)]
    }
}

thread_local! {
    /// (tenant, the tenant's catalog generation) and what its row says (see [`Parsed`]).
    static PARSED: Cell<Option<(Uuid, u64, Parsed)>> = const { Cell::new(None) };
}

/// What `t`'s row says of its resource settings: the memo's, if it holds the tenant's current
/// generation, else parsed from `t` and not kept (the caller's row may have been read before
/// an invalidation that the current generation already counts; only [`enforce`], which reads
/// the generation before the row, fills the memo).
fn parsed(t: &TenantRow) -> Parsed {
    let gen = catalog::generation_of(t.id);
    match PARSED.with(|p| p.get()) {
        Some((id, g, p)) if id == t.id && g == gen => p,
        _ => Parsed::of(t),
    }
}

/// The lowest ceiling on setting `i` for tenant `t`: the operator's and the superuser's.
fn ceiling(t: &TenantRow, i: usize) -> Option<i32> {
    Parsed::of(t).ceiling(i)
}

fn above(i: usize, value: i32, cap: i32) -> bool {
    value > cap || (ZERO_IS_NONE[i] && value == 0)
}

fn unit(i: usize) -> &'static str {
    if i == 2 {
        "kB"
    } else {
        "ms"
    }
}

/// SET LOCAL setting `i` to `value` (in its base unit) for the rest of the transaction.
fn set_local(i: usize, value: i32) {
    set_local_text(NAMES[i], &format!("{value}{}", unit(i)));
}

fn set_local_text(name: &str, value: &str) {
    let name = std::ffi::CString::new(name).expect("name");
    let text = std::ffi::CString::new(value).expect("value");
    // SAFETY: set_config_option with NUL-terminated strings, as SET LOCAL does; a bad value
    // cannot occur (it was parsed with the same unit).
    unsafe {
        pg_sys::set_config_option(
            name.as_ptr(),
            text.as_ptr(),
            pg_sys::GucContext::PGC_USERSET,
            pg_sys::GucSource::PGC_S_SESSION,
            pg_sys::GucAction::GUC_ACTION_LOCAL,
            true,
            pgrx::PgLogLevel::ERROR as i32,
            false,
        );
    }
}

/// At bind: the tenant's own settings, held within the ceilings, for the rest of the
/// transaction (SET LOCAL).
pub fn apply(t: &TenantRow) {
    let p = parsed(t);
    for (i, own) in p.own.iter().enumerate() {
        let value = match (*own, p.ceiling(i)) {
            (Some(v), Some(c)) if above(i, v, c) => Some(c),
            (v, _) => v,
        };
        if let Some(v) = value {
            set_local(i, v);
        }
    }
    hold(&p.caps());
}

/// The highest value of each setting (None: no cap).
type Caps = [Option<i32>; 3];

/// Every statement of a bound session: bring a setting above its cap down to it.
pub fn enforce(tenant: Uuid) {
    // The generation first: if the tenant changes while its row is read, the memo is kept
    // under the generation before the change and read again at the next statement.
    let gen = catalog::generation_of(tenant);
    let p = match PARSED.with(|c| c.get()) {
        Some((t, g, p)) if t == tenant && g == gen => p,
        _ => {
            let Some(row) = catalog::tenant_by_id(tenant) else {
                return;
            };
            let p = Parsed::of(&row);
            PARSED.with(|c| c.set(Some((tenant, gen, p))));
            p
        }
    };
    hold(&p.caps());
}

/// `hash_mem_multiplier` at most PostgreSQL 15's default while work_mem is capped: hash
/// tables may use work_mem times it.
const MAX_HASH_MEM_MULTIPLIER: f64 = 2.0;
/// `maintenance_work_mem` (kB) at most PostgreSQL 15's default (64 MB) while work_mem is
/// capped: a bound session's own CREATE INDEX or VACUUM of its temporary tables uses it (an
/// attacker's pass set it to 512MB under a 4MB work_mem ceiling and built an index in 205 MB;
/// it goes up to 2 GB a backend).
const MAX_MAINTENANCE_WORK_MEM_KB: i32 = 64 * 1024;

fn hold(caps: &Caps) {
    // SAFETY: reads PostgreSQL's own setting variables in this backend.
    let (hash_mem, maintenance) =
        unsafe { (pg_sys::hash_mem_multiplier, pg_sys::maintenance_work_mem) };
    if caps[2].is_some() && hash_mem > MAX_HASH_MEM_MULTIPLIER {
        set_local_text("hash_mem_multiplier", &MAX_HASH_MEM_MULTIPLIER.to_string());
    }
    if caps[2].is_some() && maintenance > MAX_MAINTENANCE_WORK_MEM_KB {
        set_local_text(
            "maintenance_work_mem",
            &format!("{MAX_MAINTENANCE_WORK_MEM_KB}kB"),
        );
    }
    for (i, c) in caps.iter().enumerate() {
        let Some(c) = *c else { continue };
        // The superuser's ceiling may have changed since the caps were read (SET, reload).
        let c = min_some(Some(c), server_ceiling(i)).unwrap_or(c);
        if above(i, current(i), c) {
            set_local(i, c);
            if i == 0 {
                // The running statement's timer was armed with the value it started with.
                arm_statement_timeout(c);
            }
        } else if i == 0 && c > 0 && current(0) > 0 {
            // A statement whose timer is not armed (started under statement_timeout = 0).
            arm_statement_timeout(current(0));
        }
    }
}

/// tenancy.set_setting() of a resource setting: refused above a ceiling.
pub fn check_setting(t: &TenantRow, name: &str, value: &serde_json::Value) {
    let Some(i) = index(name) else { return };
    let (Some(v), Some(c)) = (parse(name, value), ceiling(t, i)) else {
        return;
    };
    if above(i, v, c) {
        errors::raise(
            errors::INSUFFICIENT_PRIVILEGE,
            format!(
                "tenant setting \"{name}\" of tenant \"{}\" cannot be {value}: the platform's ceiling is {c}{}",
                t.slug,
                unit(i)
            ),
            format!("Choose a value of at most {c}{} (for a timeout, not 0); an operator sets the ceiling with tenancy.set_limit().", unit(i)),
        );
    }
}

/// Set (or, with NULL, remove) an operator's ceiling on a tenant's resource setting
/// (`statement_timeout`, `lock_timeout`, `work_mem`). Operators only; recorded in the tenant's
/// chain. Bound sessions of the tenant run within it from their next statement.
#[pg_extern(volatile, parallel_unsafe)]
fn set_limit(tenant: &str, name: &str, value: Option<pgrx::JsonB>) {
    crate::authz::require_operator("set_limit");
    let t = catalog::require_tenant(tenant);
    let t = catalog::lock_live_tenant(&t);
    if index(name).is_none() {
        errors::raise(
            errors::INVALID_PARAMETER,
            format!("\"{name}\" is not a resource setting"),
            "Limits apply to statement_timeout, lock_timeout and work_mem.",
        );
    }
    if let Some(v) = value.as_ref() {
        if parse(name, &v.0).is_none_or(|n| n <= 0) {
            errors::raise(
                errors::INVALID_PARAMETER,
                format!("invalid limit for \"{name}\": {}", v.0),
                format!("Use a positive value that SET {name} accepts, for example '\"30s\"' or '\"64MB\"'; remove a limit with NULL."),
            );
        }
    }
    match value {
        Some(v) => catalog::write(
            "UPDATE tenancy.tenant SET limits = limits || jsonb_build_object($2::text, $3::jsonb) WHERE id = $1",
            &[catalog::to_pg_uuid(t.id).into(), name.into(), v.into()],
        ),
        None => catalog::write(
            "UPDATE tenancy.tenant SET limits = limits - $2::text WHERE id = $1",
            &[catalog::to_pg_uuid(t.id).into(), name.into()],
        ),
    };
    crate::audit::admin(
        "set_limit",
        Some(t.id),
        serde_json::json!({"name": name, "value": catalog::tenant_by_id(t.id).and_then(|r| r.limits.get(name).cloned())}),
    );
}
