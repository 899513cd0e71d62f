//! What pg_tenancy needs to know about Citus in a backend, read from PostgreSQL's own state
//! (settings, the session's user and `application_name`), without linking to Citus: whether
//! Citus is loaded, whether this backend is a connection Citus opened for its own work, and the
//! one Citus setting pg_tenancy changes around its catalog reads.

use pgrx::pg_sys;
use std::cell::Cell;
use std::ffi::CStr;

thread_local! {
    static LOADED: Cell<Option<bool>> = const { Cell::new(None) };
    /// Set while this backend (a superuser's) makes the catalog reference tables.
    static DISTRIBUTING: Cell<bool> = const { Cell::new(false) };
}

/// Marks this backend as making pg_tenancy's catalog Citus reference tables until dropped
/// (also when that raises).
pub struct Distributing(bool);
impl Distributing {
    pub fn start() -> Distributing {
        Distributing(DISTRIBUTING.with(|d| d.replace(true)))
    }
}
impl Drop for Distributing {
    fn drop(&mut self) {
        DISTRIBUTING.with(|d| d.set(self.0));
    }
}

/// Whether pg_tenancy's own catalog work (role mappings looked up, the DDL guard) stands aside
/// in this backend: a superuser's connection Citus opened for its own work
/// ([`internal_superuser_backend`]), or a superuser's backend while it makes the catalog
/// reference tables, where a catalog table is for a moment registered with Citus before its
/// copy on this node exists.
pub fn catalog_work_stands_aside() -> bool {
    DISTRIBUTING.with(|d| d.get()) || internal_superuser_backend()
}

/// Citus refuses a query on a distributed table (a reference table included) made inside a
/// query Citus itself runs on a node, unless this setting is on for the length of it.
const NESTED: &CStr = c"citus.allow_nested_distributed_execution";

/// Whether Citus's library is loaded in this backend (it defines its settings when it loads,
/// from `shared_preload_libraries`, before pg_tenancy). A setting of that name that a client
/// made up is a placeholder, not Citus's: where Citus is not loaded, any client may create one
/// (`options='-c citus.…=on'` at connection), which made pg_tenancy take it for a Citus
/// connection and keep a role mapping that a suspension or `unmap_role` had ended (found by an
/// attacker's pass; `a_connection_passing_for_citus_keeps_no_ended_mapping` in
/// `tests/integration/tests/trust_boundaries.rs`).
pub fn loaded() -> bool {
    if let Some(l) = LOADED.with(|l| l.get()) {
        return l;
    }
    // SAFETY: GetConfigOption and GetConfigOptionFlags with missing_ok return NULL / 0 for an
    // unknown setting and raise nothing else (restrict_privileged = false: the setting is
    // USERSET anyway).
    let l = unsafe {
        !pg_sys::GetConfigOption(NESTED.as_ptr(), true, false).is_null()
            && pg_sys::GetConfigOptionFlags(NESTED.as_ptr(), true)
                & pg_sys::GUC_CUSTOM_PLACEHOLDER as i32
                == 0
    };
    LOADED.with(|c| c.set(Some(l)));
    l
}

/// Whether this backend is a connection Citus opened for its own work (its shard queries,
/// metadata synchronisation, DDL propagation) as a superuser. Citus marks its connections by
/// their `application_name` (`citus_internal gpid=...`, `citus_rebalancer gpid=...`,
/// `citus_run_command gpid=...`), which any client can also set; only a superuser's
/// connection counts here, and a superuser is subject to no policy pg_tenancy could keep: in
/// such a backend pg_tenancy does no catalog work of its own (no role mapping is looked up, the
/// DDL guard stands aside), because Citus's metadata synchronisation runs statements while a
/// catalog table is half registered, where reading it fails.
pub fn internal_superuser_backend() -> bool {
    if !loaded() {
        return false;
    }
    // SAFETY: application_name is the backend's own GUC variable (NULL before the setting is
    // initialised), read on its only thread; the string it points to lives until the setting
    // changes, which nothing here does.
    let internal = unsafe {
        let name = pg_sys::application_name;
        !name.is_null() && CStr::from_ptr(name).to_bytes().starts_with(b"citus_")
    };
    // SAFETY: superuser_arg reads the role's catalog row through the syscache; the session's
    // user always exists.
    internal && unsafe { pg_sys::superuser_arg(crate::pg::unguarded::session_user_id()) }
}

thread_local! {
    /// Whether Citus is created in this database (cached once true: it is not dropped while
    /// anything of pg_tenancy's runs on it).
    static IN_DATABASE: Cell<bool> = const { Cell::new(false) };
}

/// Whether Citus is loaded and created in this database (then statements on Citus tables are
/// planned by Citus, and bindings are carried to the workers).
pub fn in_database() -> bool {
    if IN_DATABASE.with(|a| a.get()) {
        return true;
    }
    if !loaded() || !crate::pg::unguarded::in_transaction() {
        return false;
    }
    // SAFETY: a catalog lookup by name, missing_ok, inside a transaction (checked above).
    let created =
        unsafe { pg_sys::get_extension_oid(c"citus".as_ptr(), true) != pg_sys::InvalidOid };
    IN_DATABASE.with(|a| a.set(created));
    created
}

thread_local! {
    /// Whether a statement of this backend has started while its `application_name` was not
    /// Citus's internal one: then the backend is never Citus's own again.
    static RENAMED: Cell<bool> = const { Cell::new(false) };
}

/// Whether the connection is named as Citus's internal ones now.
fn named_internal() -> bool {
    // SAFETY: application_name is the backend's own GUC variable (NULL before the setting is
    // initialised), read on its only thread; the string it points to lives until the setting
    // changes, which nothing here does.
    unsafe {
        let name = pg_sys::application_name;
        !name.is_null()
            && CStr::from_ptr(name)
                .to_bytes()
                .starts_with(b"citus_internal gpid=")
    }
}

/// Note the connection's name as a statement starts (pg_tenancy's utility, planner and
/// executor hooks call this): a backend seen under another name once is not Citus's own for
/// the rest of its life, whatever it is named later. Citus opens the connections that run a
/// client's commands (`run_command_on_workers`, which any role may call) under its internal
/// name and renames them before the client's command: an attacker's pass, as a table's owner on
/// the coordinator, named such a connection back (`set_config()`, then `RESET
/// application_name`) and dropped every shard of its table on the workers; as any role, it
/// crashed a node by having a distributed plan made for a connection so named.
pub fn note_connection_name() {
    if RENAMED.with(|r| r.get()) || !loaded() {
        return;
    }
    if !named_internal() {
        RENAMED.with(|r| r.set(true));
    }
}

/// Whether this backend is a connection Citus opened for its own work (its
/// `application_name`), whoever its user: named so now, when every statement it ran started
/// (see [`note_connection_name`]), and when it opened.
pub fn internal_backend() -> bool {
    if !loaded() {
        return false;
    }
    note_connection_name();
    if RENAMED.with(|r| r.get()) || !named_internal() {
        return false;
    }
    // SAFETY: GetConfigOptionResetString returns the value the session started with (from its
    // connection, or the role's or database's default), which SET and set_config() leave
    // alone, valid until the setting is reset at startup or reload (read at once), and raises
    // only for an unknown or superuser-only setting, which application_name is not;
    // application_name as in named_internal.
    unsafe {
        let started = pg_sys::GetConfigOptionResetString(c"application_name".as_ptr());
        !started.is_null() && CStr::from_ptr(started) == CStr::from_ptr(pg_sys::application_name)
    }
}

/// Whether this connection opened under the name Citus gives the connections it opens to run
/// shard queries (`citus_internal gpid=...`), whatever it is named now. A statement Citus
/// pushes down runs there, and may rename the connection itself (`set_config` in the pushed
/// expression) before it calls anything else: what must never run in a connection Citus opened
/// asks this, not [`internal_backend`], which such a rename turns off for good.
pub fn opened_as_internal() -> bool {
    if !loaded() {
        return false;
    }
    // SAFETY: as in internal_backend: the value the session started with, read at once.
    unsafe {
        let started = pg_sys::GetConfigOptionResetString(c"application_name".as_ptr());
        !started.is_null()
            && CStr::from_ptr(started)
                .to_bytes()
                .starts_with(b"citus_internal gpid=")
    }
}

/// Whether the running statement is the one with which the coordinator opens every
/// transaction on a worker, `assign_distributed_transaction_id()`, which fails once the
/// backend's transaction has a distributed id; reading a reference table (pg_tenancy's
/// catalog) gives it one. (Read from the statement's text: a client that sends the same text
/// only keeps pg_tenancy from looking up its role mapping for that statement.)
pub fn assigning_distributed_transaction() -> bool {
    // SAFETY: debug_query_string is this backend's variable: null or the NUL-terminated text of
    // the statement being run, read on its only thread.
    unsafe {
        let q = pg_sys::debug_query_string;
        !q.is_null()
            && CStr::from_ptr(q)
                .to_bytes()
                .windows(33)
                .any(|w| w == b"assign_distributed_transaction_id")
    }
}

/// Let pg_tenancy's catalog reads that follow, until the GUC nest level open now is closed, run
/// inside a query Citus runs on a node (a shard query whose policy asks for the binding, or DDL
/// Citus propagates): its catalog tables are reference tables, one copy on every node, whose
/// local copy is always complete, so the refusal that guards distributed tables whose shards may
/// move does not apply to them. Nothing without Citus.
///
/// # Safety
/// Only inside a GUC nest level (`NewGUCNestLevel`) that the caller closes with `AtEOXact_GUC`
/// (or that a (sub)transaction abort closes), in a transaction.
pub unsafe fn allow_nested_catalog_reads() {
    if !loaded() {
        return;
    }
    // SAFETY: the caller's contract: a nest level of its own, closed after the reads, which
    // restores the setting; the setting is USERSET.
    unsafe { super::guc::set_in_nest_level(NESTED, c"on") };
}

/// Whether relation `rel` was created in the running transaction (a shard placement Citus is
/// building: it gets its policies one statement at a time). False for a relation that does not
/// exist.
pub fn created_in_this_transaction(rel: pg_sys::Oid) -> bool {
    // SAFETY: RelationIdGetRelation returns null for a missing relation, else a relcache entry
    // with its reference count raised, released by RelationClose below; rd_createSubid is the
    // entry's own field (InvalidSubTransactionId unless created in this transaction).
    unsafe {
        let r = pg_sys::RelationIdGetRelation(rel);
        if r.is_null() {
            return false;
        }
        // InvalidSubTransactionId is 0.
        let created = (*r).rd_createSubid != 0;
        pg_sys::RelationClose(r);
        created
    }
}

thread_local! {
    /// The local transaction in which this session ran a setting command Citus carries to the
    /// other nodes (0: none yet): the fallback where Citus's own record of them is not found.
    static SETTINGS_CARRIED: Cell<u32> = const { Cell::new(0) };
    /// The local transaction in which pg_tenancy ran statements as another user (the catalog's
    /// owner, a table's owner), which Citus may have sent to other nodes on connections of that
    /// user.
    static ROUTED_AS_ANOTHER: Cell<u32> = const { Cell::new(0) };
    /// pg_tenancy's own carried settings of this transaction (local transaction id, their
    /// texts), and whether one is being run now.
    static OWN_SETTINGS: std::cell::RefCell<(u32, Vec<String>)> =
        const { std::cell::RefCell::new((0, Vec::new())) };
    static RUNNING_OWN: Cell<bool> = const { Cell::new(false) };
    /// Citus's record of the setting commands it carries, looked up once: its
    /// `activeSetStmts`, `ActiveSubXactContexts()` and `GetCurrentLocalExecutionStatus()`.
    static CITUS_RECORD: Cell<Option<Option<(usize, usize, usize)>>> = const { Cell::new(None) };
}

fn local_xact() -> u32 {
    // SAFETY: MyProc is set for every backend that runs a transaction; lxid is its own.
    unsafe { (*pg_sys::MyProc).lxid }
}

/// A sub-transaction's context as Citus 13 keeps it (`SubXactContext` in its
/// `transaction_management.h`): the setting commands carried before the savepoint are sent
/// ahead of the savepoint to a connection opened inside it.
#[repr(C)]
struct CitusSubXactContext {
    sub_id: pg_sys::SubTransactionId,
    set_local_cmds: pg_sys::StringInfo,
    propagated_objects: *mut std::ffi::c_void,
}

/// The addresses of Citus's `activeSetStmts`, `ActiveSubXactContexts` and
/// `GetCurrentLocalExecutionStatus`, or None.
fn citus_record() -> Option<(usize, usize, usize)> {
    if let Some(r) = CITUS_RECORD.with(|c| c.get()) {
        return r;
    }
    // SAFETY: load_external_function looks a symbol up in Citus's library, which is loaded
    // (loaded() is checked by the callers); signalNotFound = false returns NULL when missing.
    let r = unsafe {
        let stmts = pg_sys::load_external_function(
            c"citus".as_ptr(),
            c"activeSetStmts".as_ptr(),
            false,
            std::ptr::null_mut(),
        );
        let subxacts = pg_sys::load_external_function(
            c"citus".as_ptr(),
            c"ActiveSubXactContexts".as_ptr(),
            false,
            std::ptr::null_mut(),
        );
        let status = pg_sys::load_external_function(
            c"citus".as_ptr(),
            c"GetCurrentLocalExecutionStatus".as_ptr(),
            false,
            std::ptr::null_mut(),
        );
        (!stmts.is_null() && !subxacts.is_null() && !status.is_null()).then_some((
            stmts as usize,
            subxacts as usize,
            status as usize,
        ))
    };
    CITUS_RECORD.with(|c| c.set(Some(r)));
    r
}

/// The text Citus sends ahead of the first statement of a connection it opens now: the setting
/// commands carried before each open savepoint and in the current (sub)transaction. None where
/// Citus's record is not found.
fn carried_text() -> Option<String> {
    let (stmts, subxacts, _) = citus_record()?;
    let text = |si: pg_sys::StringInfo| -> String {
        if si.is_null() {
            return String::new();
        }
        // SAFETY: a StringInfo of Citus's, live in the transaction's memory: `data` holds
        // `len` bytes.
        unsafe {
            let bytes =
                std::slice::from_raw_parts((*si).data as *const u8, (*si).len.max(0) as usize);
            // As Citus sends it: up to the first NUL.
            let bytes = bytes.split(|b| *b == 0).next().unwrap_or_default();
            String::from_utf8_lossy(bytes).into_owned()
        }
    };
    let mut out = String::new();
    // SAFETY: `subxacts` is Citus's `List *ActiveSubXactContexts(void)`, a List of pointers to
    // its SubXactContext (mirrored above), valid in this transaction; `stmts` is the address
    // of its `StringInfo activeSetStmts`.
    unsafe {
        let f: unsafe extern "C-unwind" fn() -> *mut pg_sys::List = std::mem::transmute(subxacts);
        let list = f();
        if !list.is_null() {
            for i in 0..(*list).length as usize {
                let ctx = (*(*list).elements.add(i)).ptr_value as *const CitusSubXactContext;
                if !ctx.is_null() {
                    out.push_str(&text((*ctx).set_local_cmds));
                }
            }
        }
        out.push_str(&text(*(stmts as *const pg_sys::StringInfo)));
    }
    Some(out)
}

/// Run one of pg_tenancy's own setting commands (`sql`, the carrier's `SET LOCAL`): its text
/// is pg_tenancy's in Citus's record, and it is not refused after pg_tenancy's own work.
pub fn own_setting<R>(sql: &str, f: impl FnOnce() -> R) -> R {
    struct Done;
    impl Drop for Done {
        fn drop(&mut self) {
            RUNNING_OWN.with(|r| r.set(false));
        }
    }
    let lx = local_xact();
    OWN_SETTINGS.with(|o| {
        let mut o = o.borrow_mut();
        if o.0 != lx {
            *o = (lx, Vec::new());
        }
        o.1.push(sql.to_string());
    });
    RUNNING_OWN.with(|r| r.set(true));
    let _done = Done;
    f()
}

/// Citus's carried text with pg_tenancy's own commands taken out: what a client put there.
fn foreign_carried_text() -> Option<String> {
    let mut text = carried_text()?;
    let lx = local_xact();
    OWN_SETTINGS.with(|o| {
        let o = o.borrow();
        if o.0 == lx {
            for own in &o.1 {
                while let Some(at) = text.find(own.as_str()) {
                    text.replace_range(at..at + own.len(), "");
                }
            }
        }
    });
    Some(text.replace(';', "").trim().to_string())
}

/// Before a utility statement (registered by the Citus pillar), in a session of its own (not
/// Citus's superuser connections) of a role that is not a superuser, in a database with Citus:
/// a setting command Citus carries to the other nodes (`SET LOCAL`, `RESET`, `RESET ALL`, `SET
/// TRANSACTION`). Citus sends the text of the query it came in, at once and ahead of every
/// later statement, to every connection of the transaction, those it opens as its own
/// superuser included: for pg_tenancy's writes, and for its own work (an attacker's pass, as a
/// table's owner: `SET LOCAL work_mem = '1MB' \; DO ...` before or after Citus's
/// `update_distributed_table_colocation`, or `SET LOCAL search_path = public, pg_catalog` to
/// a schema holding a function of a name Citus calls unqualified, ran the role's code as the
/// superuser on every worker, and made it one there). So
/// - Citus is given the command's own text, not the statements beside it in its query;
/// - the command's text holds no backslash (a worker whose `standard_conforming_strings` is off
///   would read one otherwise);
/// - a `SET LOCAL` gives values only to the settings in [`CARRIED_SETTINGS`] (timeouts, memory,
///   the planner's and Citus's executor's choices), none of which changes what a statement
///   means or whose code it runs (`search_path`, `standard_conforming_strings`, `role` do);
/// - and it is refused once pg_tenancy has run statements as another user in the transaction.
///
/// pg_tenancy's own carrier passes.
pub fn note_set_local(stmt: *mut pg_sys::Node) {
    // SAFETY: `stmt` is the statement's parse tree (or null); its tag is read before the node
    // is used as the VariableSetStmt it says, and its name (when there is one) is a
    // NUL-terminated string of the tree.
    let (carried, checked_name) = unsafe {
        if stmt.is_null() || (*stmt).type_ != pg_sys::NodeTag::T_VariableSetStmt {
            return;
        }
        let s = stmt as *mut pg_sys::VariableSetStmt;
        let name = || {
            if (*s).name.is_null() {
                String::new()
            } else {
                std::ffi::CStr::from_ptr((*s).name)
                    .to_string_lossy()
                    .to_ascii_lowercase()
            }
        };
        // As Citus decides what it carries (its ShouldPropagateSetCommand and
        // IsSettingSafeToPropagate).
        let propagated = |n: &str| !NEVER_CARRIED.contains(&n);
        use pg_sys::VariableSetKind::*;
        // The name each carried command is checked by: also `TO DEFAULT`, `FROM CURRENT` and
        // `RESET`, which Citus carries as it carries a value (an attacker's pass sent `RESET
        // search_path` and `SET LOCAL role TO DEFAULT` to Citus's superuser connections);
        // `RESET ALL` by a name no setting has, so that it runs on this node only.
        match (*s).kind {
            VAR_SET_VALUE | VAR_SET_CURRENT | VAR_SET_DEFAULT if (*s).is_local => {
                let n = name();
                (propagated(&n), Some(n))
            }
            VAR_RESET => {
                let n = name();
                (propagated(&n), Some(n))
            }
            VAR_RESET_ALL => (true, Some(String::from("reset all"))),
            VAR_SET_MULTI => (name() == "transaction", None),
            _ => (false, None),
        }
    };
    // A superuser session's own settings on the connections of the catalog's owner (a
    // superuser) give it nothing it does not have. Citus's own connections are its
    // superuser's (a client naming its connection as Citus does is not exempt).
    if !carried
        || RUNNING_OWN.with(|r| r.get())
        || !in_database()
        || internal_superuser_backend()
        || session_is_superuser()
    {
        return;
    }
    // A setting that could change what a statement means there (`search_path`, `role`,
    // `standard_conforming_strings`, ...), or a text with a backslash, is not carried: the
    // command runs past Citus's hook, on this node only, as `set_config(..., true)` would
    // (Citus itself sends `SET LOCAL search_path` to the workers for its DDL: refused, it broke
    // a table owner's ALTER TABLE there).
    let backslash = crate::pg::hooks::statement_text().is_some_and(|t| t.contains('\\'));
    if backslash
        || checked_name
            .as_deref()
            .is_some_and(|n| !carried_setting_allowed(n))
    {
        crate::pg::hooks::run_past_the_hooks_before();
        return;
    }
    if ROUTED_AS_ANOTHER.with(|r| r.get()) == local_xact() {
        crate::errors::raise(
            crate::errors::FEATURE_NOT_SUPPORTED,
            "SET LOCAL, RESET and SET TRANSACTION cannot follow a pg_tenancy management call in a transaction on Citus",
            "Citus would send them to the connections pg_tenancy's statements used as another user; run them in another transaction, or use set_config(..., true), which Citus does not carry.",
        );
    }
    crate::pg::hooks::pass_on_the_statements_text_alone();
    SETTINGS_CARRIED.with(|c| c.set(local_xact()));
}

/// The settings Citus never carries (its IsSettingSafeToPropagate).
const NEVER_CARRIED: &[&str] = &[
    "application_name",
    "citus.propagate_set_commands",
    "client_encoding",
    "exit_on_error",
    "max_stack_depth",
];

/// The settings a client's `SET LOCAL` may give a value on Citus (see [`note_set_local`]), with
/// every setting whose name begins with `enable_` (the planner's methods) or `citus.` (Citus's
/// own, which Citus sets so itself on a user's connections to the workers), and an
/// application's placeholders. None changes how a statement's text is read or whose code it
/// runs.
const CARRIED_SETTINGS: &[&str] = &[
    "statement_timeout",
    "lock_timeout",
    "idle_in_transaction_session_timeout",
    "work_mem",
    "hash_mem_multiplier",
    "maintenance_work_mem",
    "random_page_cost",
    "seq_page_cost",
    "cpu_tuple_cost",
    "cpu_index_tuple_cost",
    "cpu_operator_cost",
    "parallel_setup_cost",
    "parallel_tuple_cost",
    "effective_cache_size",
    "effective_io_concurrency",
    "jit",
    "jit_above_cost",
    "jit_inline_above_cost",
    "jit_optimize_above_cost",
    "plan_cache_mode",
    "default_statistics_target",
    "from_collapse_limit",
    "join_collapse_limit",
    "geqo",
    "max_parallel_workers_per_gather",
    "cursor_tuple_fraction",
    "constraint_exclusion",
    // Citus itself sets it so on a user's connections to the workers.
    "check_function_bodies",
    // What a transaction's own time zone, messages and isolation are (Citus's statements print
    // their times with an offset).
    "timezone",
    "client_min_messages",
    "transaction_isolation",
    "transaction_read_only",
    "transaction_deferrable",
    // pg_tenancy's carrier, as Citus carries it to a worker (a client's own SET of it is
    // refused on the coordinator; a worker binds only what the coordinator signed).
    "tenancy.carrier",
    "tenancy.decommission_wait",
    "tenancy.kill_switch_wait",
];

fn carried_setting_allowed(name: &str) -> bool {
    let prefix = name.split_once('.').map(|(p, _)| p);
    name.starts_with("enable_")
        || prefix == Some("citus")
        || CARRIED_SETTINGS.contains(&name)
        // An application's own placeholders (`SET LOCAL myapp.user_id = '42'`), which no
        // statement of Citus's or PostgreSQL's reads; not a procedural language's settings
        // (`plpgsql.variable_conflict` changes what a function's names mean), nor pg_tenancy's
        // others.
        || prefix.is_some_and(|p| !p.starts_with("pl") && p != "tenancy")
}

/// Before pg_tenancy runs statements as another user (the catalog's owner, a table's owner)
/// that Citus may send to other nodes: refused while Citus carries setting commands of the
/// client's in the transaction (`SET LOCAL`, `RESET`, `SET TRANSACTION`, and whatever else the
/// query they came in held), which it would run ahead of them on every node as that user (an
/// attacker's pass: a `SET LOCAL search_path` to a schema of the caller's made Citus's own
/// unqualified calls run its function as the superuser on every worker). Read from Citus's own
/// record of what it carries, so no form of the command escapes; pg_tenancy's own carrier is
/// taken out. Nothing for a superuser, or where Citus is not created.
pub fn before_routing_as_another() {
    if !loaded() || !in_database() || internal_superuser_backend() {
        return;
    }
    // Noted before any exemption: a carried command after this is refused (note_set_local).
    ROUTED_AS_ANOTHER.with(|r| r.set(local_xact()));
    // The session's user, not the current one: the check may run inside code already
    // switched to the catalog's owner, or in a superuser's SECURITY DEFINER function called
    // by a client that carried settings of its own.
    if session_is_superuser() {
        return;
    }
    let foreign = match foreign_carried_text() {
        Some(text) => (!text.is_empty()).then_some(text),
        None => (SETTINGS_CARRIED.with(|c| c.get()) == local_xact()).then(String::new),
    };
    if let Some(text) = foreign {
        // What is carried is the session's own text; shown (shortened) so that it can be found.
        let shown: String = text.chars().take(120).collect();
        crate::errors::raise(
            crate::errors::FEATURE_NOT_SUPPORTED,
            format!("a pg_tenancy management call cannot follow SET LOCAL, RESET or SET TRANSACTION in a transaction on Citus (carried: \"{shown}\")"),
            "Citus sends the transaction's setting commands to every node ahead of pg_tenancy's statements, which run there as another user: make the call in a transaction without them (set_config(..., true) is not carried).",
        );
    }
    ROUTED_AS_ANOTHER.with(|r| r.set(local_xact()));
}

fn session_is_superuser() -> bool {
    // SAFETY: superuser_arg reads the session user's catalog row through the syscache; the
    // session's user always exists.
    unsafe { pg_sys::superuser_arg(crate::pg::unguarded::session_user_id()) }
}

/// Before pg_tenancy reads as another user what is local to this node (its catalog's copies,
/// this node's shards): such a read reaches another node only when Citus cannot execute it
/// locally in this transaction (`citus.enable_local_execution` off, which the read pins on, or
/// the transaction has reached this node over a connection already: Citus's local execution
/// status disabled). Then it is checked as a routed one ([`before_routing_as_another`]): a
/// client that turned local execution off had a tenant lookup at its bind go over the catalog
/// owner's connection, carrying its settings (a reviewer's pass).
pub fn before_reading_locally_as_another() {
    if !loaded() || !in_database() {
        return;
    }
    let Some((_, _, status)) = citus_record() else {
        return before_routing_as_another();
    };
    // SAFETY: `status` is Citus's `LocalExecutionStatus GetCurrentLocalExecutionStatus(void)`,
    // an enum returned as a C int (LOCAL_EXECUTION_DISABLED is its third value, 2).
    let disabled = unsafe {
        let f: unsafe extern "C-unwind" fn() -> std::ffi::c_int = std::mem::transmute(status);
        f() == 2
    };
    if disabled {
        before_routing_as_another();
    }
}

/// At the end of a transaction (registered by the Citus pillar): Citus clears its record of
/// carried setting commands when a transaction commits or aborts, but not when it is prepared,
/// and the record then points into the prepared transaction's freed memory (read by
/// [`carried_text`], and appended to by Citus's next SET). Cleared at PREPARE as Citus clears
/// it at COMMIT.
pub fn at_transaction_event(event: pg_sys::XactEvent::Type) {
    if event != pg_sys::XactEvent::XACT_EVENT_PREPARE || !loaded() {
        return;
    }
    if let Some((stmts, _, _)) = CITUS_RECORD.with(|c| c.get()).flatten() {
        // SAFETY: `stmts` is the address of Citus's `StringInfo activeSetStmts`; the value
        // written is the one Citus itself writes at the end of a transaction.
        unsafe { *(stmts as *mut pg_sys::StringInfo) = std::ptr::null_mut() };
    }
}
