//! Server settings under the reserved prefix `tenancy.`. None of them holds the binding: the
//! binding lives in backend memory, so no SET, set_config(), ALTER ROLE/DATABASE SET, function
//! SET clause or connection option can forge it. (`tenancy.carrier` carries a token from a Citus
//! coordinator to its workers, where it is verified as a bind would; see below.) The prefix is reserved so that placeholder
//! variables cannot be created under it once the library is loaded.

use pgrx::guc::{GucContext, GucFlags, GucRegistry, GucSetting};
use std::ffi::CString;

thread_local! {
    /// Moves whenever a setting a binding's validation reads is assigned (`tenancy.region`,
    /// `tenancy.clock_skew`): by SET, RESET, a reload, or the end of the transaction that set it.
    static BINDING_SETTINGS: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// Moves whenever a setting a binding's validation reads may have changed
/// (src/binding/memo.rs).
pub fn binding_settings_generation() -> u64 {
    BINDING_SETTINGS.with(|g| g.get())
}

fn binding_setting_assigned() {
    BINDING_SETTINGS.with(|g| g.set(g.get().wrapping_add(1)));
}

/// # Safety
/// Called by PostgreSQL as tenancy.region's assign hook.
#[pgrx::pg_guard]
unsafe extern "C-unwind" fn region_assigned(
    _newval: *const std::ffi::c_char,
    _extra: *mut std::ffi::c_void,
) {
    binding_setting_assigned();
}

/// # Safety
/// Called by PostgreSQL as tenancy.clock_skew's assign hook.
#[pgrx::pg_guard]
unsafe extern "C-unwind" fn clock_skew_assigned(_newval: i32, _extra: *mut std::ffi::c_void) {
    binding_setting_assigned();
}

/// An integer setting's value, read as `GucSetting::get` reads it but without pgrx's check that
/// the caller is PostgreSQL's thread (a thread-local read and a comparison on every call): for
/// the settings the hooks read on every statement, which only ever run on that thread.
pub fn int(setting: &'static GucSetting<i32>) -> i32 {
    // SAFETY: the variable PostgreSQL's setting machinery writes (registered by `init`), read
    // on the backend's only thread, which is the only one pg_tenancy's hooks run on.
    unsafe { *setting.as_ptr() }
}

/// A boolean setting's value, as [`int`] reads an integer's.
pub fn flag(setting: &'static GucSetting<bool>) -> bool {
    // SAFETY: as in [`int`].
    unsafe { *setting.as_ptr() }
}

/// `tenancy.carrier`: on a Citus cluster, the token of the coordinator's binding, carried to the
/// workers as `SET LOCAL` (the one way Citus carries a setting to them) and bound there again,
/// verified as any bind (`src/binding/carrier.rs`). Read only on a Citus worker; only
/// pg_tenancy sets it on the coordinator (a client's `SET` of it is refused there).
pub static CARRIER: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(None);

/// `tenancy.region`: this server's data-residency region. A tenant whose region is set and
/// differs is refused at bind. Superuser only.
pub static REGION: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(None);

/// `tenancy.tenant_claim`: the token claim that names the tenant (uuid or slug). Superuser only,
/// so an application cannot make another claim of a signed token decide the tenant.
pub static TENANT_CLAIM: GucSetting<Option<CString>> =
    GucSetting::<Option<CString>>::new(Some(c"tid"));

/// `tenancy.token_cache_size`: verified tokens kept per backend, least recently used dropped
/// first (0 disables the cache).
pub static TOKEN_CACHE_SIZE: GucSetting<i32> = GucSetting::<i32>::new(4096);

/// `tenancy.cache_tenants`: tenants whose catalog rows (row, roles, grants, members, support
/// grants, revocations) a backend keeps, least recently used dropped first.
pub static CACHE_TENANTS: GucSetting<i32> = GucSetting::<i32>::new(4096);
/// `tenancy.max_token_bytes`: longer tokens are refused before any parsing.
pub static MAX_TOKEN_BYTES: GucSetting<i32> = GucSetting::<i32>::new(8192);

/// `tenancy.clock_skew`: seconds of tolerance when checking `exp` and `nbf`.
pub static CLOCK_SKEW: GucSetting<i32> = GucSetting::<i32>::new(0);

/// `tenancy.allow_session_scope`: whether `bind(token, 'session')` is allowed. Behind a pooler
/// in transaction mode a session binding would outlive the client, so such platforms set it off.
pub static ALLOW_SESSION_SCOPE: GucSetting<bool> = GucSetting::<bool>::new(true);

/// `tenancy.plan_binding_as_param`: whether statements are planned with the policies'
/// binding as a reserved executor parameter (`binding_param.rs`) instead of an InitPlan. Both
/// isolate alike; off plans the policies exactly as written. Superuser only.
pub static PLAN_BINDING_AS_PARAM: GucSetting<bool> = GucSetting::<bool>::new(true);

/// `tenancy.plan_binding_as_const`: whether a statement planned for one execution only (the
/// simple protocol's statements, custom plans with their parameters' values) is planned with
/// the bound tenant as a constant, checked against the binding again when it starts
/// (`binding_param.rs`). Needs `tenancy.plan_binding_as_param`. Superuser only.
pub static PLAN_BINDING_AS_CONST: GucSetting<bool> = GucSetting::<bool>::new(true);

/// `tenancy.notify_security_events`: whether the security-event writers send a `NOTIFY
/// tenancy_security` (a JSON payload: id, event, tenant_id) for every event they persist. Off by
/// default: any role of the database may LISTEN on a channel. Superuser only.
pub static NOTIFY_SECURITY_EVENTS: GucSetting<bool> = GucSetting::<bool>::new(false);

/// `tenancy.max_statement_timeout`, `tenancy.max_lock_timeout` (milliseconds) and
/// `tenancy.max_work_mem` (kB): the highest value a bound session may run with, whatever the
/// tenant's settings and the session's own SET say; 0, the default, sets no ceiling.
/// Superuser only. Operators set ceilings per tenant with tenancy.set_limit().
pub static MAX_STATEMENT_TIMEOUT: GucSetting<i32> = GucSetting::<i32>::new(0);
pub static MAX_LOCK_TIMEOUT: GucSetting<i32> = GucSetting::<i32>::new(0);
pub static MAX_WORK_MEM: GucSetting<i32> = GucSetting::<i32>::new(0);

/// `tenancy.audit_min_retention`: audit records younger than this are never purged (seconds;
/// default 90 days). Superuser only: operators purge within it, and anchored chain entries
/// younger than it that are gone are tampering (audit_verify_heads).
pub static AUDIT_MIN_RETENTION: GucSetting<i32> = GucSetting::<i32>::new(90 * 86_400);

/// `tenancy.decommission_wait`: how long decommission_tenant waits for the tenant's running
/// write transactions before it terminates their sessions (milliseconds; default 10 s).
pub static DECOMMISSION_WAIT: GucSetting<i32> = GucSetting::<i32>::new(10_000);

/// `tenancy.kill_switch_wait`: how long an operator's `suspend_tenant` or `revoke_subject`
/// waits for a transaction holding the tenant's management lock before it terminates its
/// session (milliseconds; default 10 s). Operators' and superusers' sessions are waited for.
pub static KILL_SWITCH_WAIT: GucSetting<i32> = GucSetting::<i32>::new(10_000);

/// [`DECOMMISSION_WAIT`] in milliseconds.
pub fn decommission_wait_ms() -> u64 {
    DECOMMISSION_WAIT.get().max(0) as u64
}

/// [`KILL_SWITCH_WAIT`] in milliseconds.
pub fn kill_switch_wait_ms() -> u64 {
    KILL_SWITCH_WAIT.get().max(0) as u64
}

/// `tenancy.telemetry`: whether per-tenant counts are kept in shared memory (`src/telemetry.rs`;
/// needs preloading). Superuser only (per database or role too): a tenant's session cannot
/// hide its activity.
pub static TELEMETRY: GucSetting<bool> = GucSetting::<bool>::new(true);

/// `tenancy.telemetry_tenants`: the most tenants tracked at once; the least recently active
/// gives its slot up to a new one, its counts added to the "other" bucket. Set at server start.
pub static TELEMETRY_TENANTS: GucSetting<i32> = GucSetting::<i32>::new(1000);
/// Its maximum: the slots shared memory holds.
pub const TELEMETRY_MAX_TENANTS: i32 = 2048;

/// `tenancy.metrics_top_tenants`: the tenants `tenancy.metrics()` labels one by one (the most
/// active), the rest summed under `tenant="other"`: a bounded label set.
pub static METRICS_TOP_TENANTS: GucSetting<i32> = GucSetting::<i32>::new(10);

pub fn init() {
    GucRegistry::define_bool_guc(
        c"tenancy.telemetry",
        c"Keep per-tenant counts in shared memory (tenancy.tenant_stats, tenancy.metrics()).",
        c"Needs pg_tenancy in shared_preload_libraries. Counts never hold a value of a row.",
        &TELEMETRY,
        GucContext::Suset,
        GucFlags::default(),
    );
    // A server-start setting can only be defined while the server starts: when preloaded
    // (telemetry needs that anyway).
    // SAFETY: reads a flag PostgreSQL sets while it loads shared_preload_libraries.
    if unsafe { pgrx::pg_sys::process_shared_preload_libraries_in_progress } {
        define_telemetry_tenants();
    }
    GucRegistry::define_int_guc(
        c"tenancy.metrics_top_tenants",
        c"The most active tenants tenancy.metrics() labels one by one.",
        c"The others are summed under tenant=\"other\".",
        &METRICS_TOP_TENANTS,
        0,
        100,
        GucContext::Suset,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"tenancy.decommission_wait",
        c"How long decommission_tenant waits for the tenant's running write transactions.",
        c"Sessions still holding writes of the tenant after it are terminated (their writes roll back).",
        &DECOMMISSION_WAIT,
        0,
        3_600_000,
        GucContext::Userset,
        GucFlags::UNIT_MS,
    );
    GucRegistry::define_int_guc(
        c"tenancy.kill_switch_wait",
        c"How long an operator's suspend_tenant or revoke_subject waits for a transaction holding the tenant's management lock.",
        c"Sessions still holding it after it are terminated (their changes roll back); operators' and superusers' sessions are waited for.",
        &KILL_SWITCH_WAIT,
        0,
        3_600_000,
        GucContext::Userset,
        GucFlags::UNIT_MS,
    );
    GucRegistry::define_int_guc(
        c"tenancy.audit_min_retention",
        c"Age below which audit records are never purged.",
        c"tenancy.audit_purge() refuses a cut-off younger than this; audit_verify_heads() reports anchored entries younger than it that are gone.",
        &AUDIT_MIN_RETENTION,
        0,
        i32::MAX,
        GucContext::Suset,
        GucFlags::UNIT_S,
    );
    for (name, desc, setting, flags) in [
        (
            c"tenancy.max_statement_timeout",
            c"Highest statement_timeout of a bound session (0: no ceiling).",
            &MAX_STATEMENT_TIMEOUT,
            GucFlags::UNIT_MS,
        ),
        (
            c"tenancy.max_lock_timeout",
            c"Highest lock_timeout of a bound session (0: no ceiling).",
            &MAX_LOCK_TIMEOUT,
            GucFlags::UNIT_MS,
        ),
        (
            c"tenancy.max_work_mem",
            c"Highest work_mem of a bound session (0: no ceiling).",
            &MAX_WORK_MEM,
            GucFlags::UNIT_KB,
        ),
    ] {
        GucRegistry::define_int_guc(
            name,
            desc,
            c"Tenants' settings and sessions' own SET are held below it from the next statement; a timeout of 0 (none) counts as above any ceiling.",
            setting,
            0,
            i32::MAX,
            GucContext::Suset,
            flags,
        );
    }
    GucRegistry::define_string_guc(
        c"tenancy.carrier",
        c"On Citus: the coordinator's binding, carried to the workers (set by pg_tenancy).",
        c"Read only on a Citus worker, where the token is verified and bound as tenancy.bind() would; a client cannot set it on the coordinator.",
        &CARRIER,
        GucContext::Userset,
        // Unreadable by SQL except to superusers (and pg_read_all_settings): code of a table's
        // owner running in a tenant's session on a worker (a trigger, a default) must not read
        // the carried token and bind it elsewhere (an attacker's review, 2026-12-05).
        GucFlags::NO_SHOW_ALL | GucFlags::NO_RESET_ALL | GucFlags::SUPERUSER_ONLY,
    );
    // SAFETY: the hook is a #[pg_guard] function with the signature PostgreSQL calls; called
    // once from _PG_init.
    unsafe {
        GucRegistry::define_string_guc_with_hooks(
            c"tenancy.region",
            c"Data-residency region of this server.",
            c"A tenant whose region is set and differs from this value is refused at bind.",
            &REGION,
            GucContext::Suset,
            GucFlags::default(),
            None,
            Some(region_assigned),
            None,
        );
    }
    GucRegistry::define_string_guc(
        c"tenancy.tenant_claim",
        c"Token claim that names the tenant.",
        c"The claim holds the tenant's uuid or slug.",
        &TENANT_CLAIM,
        GucContext::Suset,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"tenancy.cache_tenants",
        c"Tenants whose catalog rows are cached per backend.",
        c"The least recently used tenant's rows are dropped first; a change to a tenant drops that tenant's rows in every backend.",
        &CACHE_TENANTS,
        16,
        1_000_000,
        GucContext::Suset,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"tenancy.token_cache_size",
        c"Verified tokens cached per backend.",
        c"Repeated binds of a cached token skip signature verification; expiry, key revocation and tenant status are still checked.",
        &TOKEN_CACHE_SIZE,
        0,
        100_000,
        GucContext::Suset,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"tenancy.max_token_bytes",
        c"Longest token accepted by tenancy.bind().",
        c"",
        &MAX_TOKEN_BYTES,
        256,
        1_048_576,
        GucContext::Suset,
        GucFlags::default(),
    );
    // SAFETY: as for tenancy.region above.
    unsafe {
        GucRegistry::define_int_guc_with_hooks(
            c"tenancy.clock_skew",
            c"Seconds of clock skew tolerated for exp and nbf.",
            c"",
            &CLOCK_SKEW,
            0,
            3600,
            GucContext::Suset,
            GucFlags::UNIT_S,
            None,
            Some(clock_skew_assigned),
            None,
        );
    }
    GucRegistry::define_bool_guc(
        c"tenancy.allow_session_scope",
        c"Whether tenancy.bind(token, 'session') is allowed.",
        c"Turn off behind a connection pooler in transaction mode.",
        &ALLOW_SESSION_SCOPE,
        GucContext::Suset,
        GucFlags::default(),
    );
    GucRegistry::define_bool_guc(
        c"tenancy.plan_binding_as_param",
        c"Plan the row security policies' binding as an executor parameter instead of an InitPlan.",
        c"Saves planning and running a subquery per protected table in every statement; off plans the policies as written.",
        &PLAN_BINDING_AS_PARAM,
        GucContext::Suset,
        GucFlags::default(),
    );
    GucRegistry::define_bool_guc(
        c"tenancy.plan_binding_as_const",
        c"Plan a statement planned for one execution with the bound tenant as a constant.",
        c"The statement is checked against the binding again when it starts; cached plans keep the reserved parameter. Needs tenancy.plan_binding_as_param.",
        &PLAN_BINDING_AS_CONST,
        GucContext::Suset,
        GucFlags::default(),
    );
    GucRegistry::define_bool_guc(
        c"tenancy.notify_security_events",
        c"Send a notification on channel tenancy_security for every persisted security event.",
        c"The payload carries the event's id, kind and tenant id; any role of the database can LISTEN. Needs pg_tenancy in shared_preload_libraries.",
        &NOTIFY_SECURITY_EVENTS,
        GucContext::Suset,
        GucFlags::default(),
    );
    // SAFETY: called once from _PG_init, after the settings above are defined.
    unsafe { pgrx::pg_sys::MarkGUCPrefixReserved(c"tenancy".as_ptr()) };
}

pub fn region() -> Option<String> {
    REGION
        .get()
        .map(|c| c.to_string_lossy().into_owned())
        .filter(|s| !s.is_empty())
}

pub fn tenant_claim() -> String {
    TENANT_CLAIM
        .get()
        .map(|c| c.to_string_lossy().into_owned())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "tid".into())
}

fn define_telemetry_tenants() {
    GucRegistry::define_int_guc(
        c"tenancy.telemetry_tenants",
        c"The most tenants whose counts are kept one by one.",
        c"The least recently active gives its slot up to a new tenant; its counts go to the \"other\" bucket.",
        &TELEMETRY_TENANTS,
        1,
        TELEMETRY_MAX_TENANTS,
        GucContext::Postmaster,
        GucFlags::default(),
    );
}
