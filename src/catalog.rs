//! pg_tenancy's own catalog (tenants, keys, tenant roles, members, role mappings): privileged
//! access and a per-backend cache.
//!
//! The tables are readable only by their owner. Functions of the extension are SECURITY INVOKER
//! (so they know their real caller) and read or write the tables through [`with_owner`], which
//! switches to the owner with a pinned `search_path` for the length of one call, as a SECURITY
//! DEFINER function would.
//!
//! Lookups are cached per backend. A statement-level trigger on every catalog table queues a
//! relcache invalidation of that table; every backend receives it at its next transaction start
//! (or lock acquisition), and [`relcache_callback`] drops the cache and bumps [`generation`].
//! Bindings remember the generation they were validated at and are validated again when it
//! changes: that is how a suspension, a revoked key or a removed member reaches every session
//! from its next statement, without a catalog query on every statement.

use crate::errors::{self, UNDEFINED_OBJECT};
use jsonwebtoken::{Algorithm, DecodingKey};
use pgrx::prelude::*;
use pgrx::{pg_sys, JsonB};
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use uuid::Uuid;

#[derive(Debug, Clone)]
pub struct TenantRow {
    pub id: Uuid,
    pub slug: String,
    pub status: String,
    pub region: Option<String>,
    pub settings: serde_json::Value,
}

impl TenantRow {
    pub fn is_active(&self) -> bool {
        self.status == "active"
    }
}

pub struct KeyRow {
    pub kid: String,
    pub alg: Algorithm,
    pub key: Option<DecodingKey>,
    pub tenant: Option<Uuid>,
    pub not_after: Option<i64>,
    pub revoked: bool,
}

#[derive(Debug, Clone)]
pub struct Mapping {
    pub tenant: Uuid,
    pub roles: Vec<String>,
}

#[derive(Default)]
struct Cache {
    tenants: HashMap<Uuid, Option<Rc<TenantRow>>>,
    slugs: HashMap<String, Option<Uuid>>,
    keys: HashMap<String, Option<Rc<KeyRow>>>,
    mappings: HashMap<u32, Rc<Vec<Mapping>>>,
    members: HashMap<(Uuid, String), Rc<Vec<String>>>,
    roles: HashMap<Uuid, Rc<Vec<String>>>,
    privileges: HashMap<Uuid, Rc<Vec<Privilege>>>,
    support: HashMap<(Uuid, u32), Option<Rc<SupportGrant>>>,
    protected: Option<Rc<std::collections::HashSet<u32>>>,
    all_tenants_loaded: bool,
    all_privileges_loaded: bool,
    /// Tenants (and tenants' grants) loaded one by one since the last invalidation.
    tenant_loads: u32,
    privilege_loads: u32,
    /// Tenants that have at least one member (None: not loaded yet).
    tenants_with_members: Option<Rc<std::collections::HashSet<Uuid>>>,
}

/// A live support grant: an operator may act in a tenant with these privileges until expiry.
#[derive(Debug, Clone)]
pub struct SupportGrant {
    pub id: i64,
    pub privileges: Vec<String>,
    pub expires_at: i64,
}

/// A tenant role's privilege on one protected table, or on all of them (`relid` None).
#[derive(Debug, Clone)]
pub struct Privilege {
    pub role: String,
    pub relid: Option<pg_sys::Oid>,
    pub privilege: String,
}

#[derive(Clone, Copy)]
struct Rels {
    owner: pg_sys::Oid,
    oids: [pg_sys::Oid; 8],
}

thread_local! {
    static CACHE: RefCell<Cache> = RefCell::new(Cache::default());
    static RELS: Cell<Option<Rels>> = const { Cell::new(None) };
    static GENERATION: Cell<u64> = const { Cell::new(1) };
}

const TABLES: [&std::ffi::CStr; 8] = [
    c"tenant",
    c"signing_key",
    c"tenant_role",
    c"member",
    c"role_mapping",
    c"role_privilege",
    c"support_grant",
    c"protected_table",
];

pub fn init() {
    unsafe {
        pg_sys::CacheRegisterRelcacheCallback(Some(relcache_callback), pg_sys::Datum::from(0));
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn relcache_callback(_arg: pg_sys::Datum, relid: pg_sys::Oid) {
    crate::audit::relcache_changed();
    let ours = match RELS.with(|r| r.get()) {
        Some(rels) => relid == pg_sys::InvalidOid || rels.oids.contains(&relid),
        None => true,
    };
    if ours {
        invalidate();
    }
}

/// Drop every cached row and bump the generation.
pub fn invalidate() {
    CACHE.with(|c| *c.borrow_mut() = Cache::default());
    RELS.with(|r| r.set(None));
    GENERATION.with(|g| g.set(g.get() + 1));
}

/// Bumped whenever pg_tenancy's catalog may have changed.
pub fn generation() -> u64 {
    GENERATION.with(|g| g.get())
}

/// Whether pg_tenancy is installed in this database (the library may be preloaded for the
/// whole cluster; the hooks must leave databases without the extension alone).
pub fn installed() -> bool {
    RELS.with(|r| r.get()).is_some()
        || unsafe { pg_sys::get_extension_oid(c"pg_tenancy".as_ptr(), true) } != pg_sys::InvalidOid
}

fn rels() -> Rels {
    if let Some(r) = RELS.with(|r| r.get()) {
        return r;
    }
    let r = unsafe {
        let nsp = pg_sys::get_namespace_oid(c"tenancy".as_ptr(), true);
        if nsp == pg_sys::InvalidOid {
            errors::raise(
                UNDEFINED_OBJECT,
                "pg_tenancy is not installed in this database",
                "Run CREATE EXTENSION pg_tenancy;",
            );
        }
        let mut oids = [pg_sys::InvalidOid; 8];
        for (i, name) in TABLES.iter().enumerate() {
            oids[i] = pg_sys::get_relname_relid(name.as_ptr(), nsp);
        }
        // From the syscache, not a query: this runs at a backend's first use of the catalog,
        // which can be inside a parallel operation (a parallel plan's InitPlan) or on a hot
        // standby, where nothing may ask for a transaction id (see `read_one`).
        let mut owner = pg_sys::Oid::from(pg_sys::BOOTSTRAP_SUPERUSERID);
        let tup = pg_sys::SearchSysCache1(
            pg_sys::SysCacheIdentifier::RELOID as i32,
            pg_sys::Datum::from(oids[0]),
        );
        if !tup.is_null() {
            owner = (*(pg_sys::GETSTRUCT(tup) as *mut pg_sys::FormData_pg_class)).relowner;
            pg_sys::ReleaseSysCache(tup);
        }
        Rels { owner, oids }
    };
    RELS.with(|c| c.set(Some(r)));
    r
}

/// Run `f` as the owner of pg_tenancy's catalog with `search_path = pg_catalog, pg_temp`, the way
/// a SECURITY DEFINER function with a pinned search_path runs. On error, transaction or
/// subtransaction abort restores the user and the setting, as it does for SECURITY DEFINER.
pub fn with_owner<R>(f: impl FnOnce() -> R) -> R {
    unsafe {
        let nest = pg_sys::NewGUCNestLevel();
        pg_sys::set_config_option(
            c"search_path".as_ptr(),
            c"pg_catalog, pg_temp".as_ptr(),
            pg_sys::GucContext::PGC_USERSET,
            pg_sys::GucSource::PGC_S_SESSION,
            pg_sys::GucAction::GUC_ACTION_SAVE,
            true,
            0,
            false,
        );
        let r = as_owner(f);
        pg_sys::AtEOXact_GUC(true, nest);
        r
    }
}

/// Run `f` as the owner of pg_tenancy's catalog without touching search_path: only for
/// executing plans that were prepared under [`with_owner`] (a kept plan is re-planned with the
/// search_path it was created with, so it needs no pinning when it runs).
pub fn as_owner<R>(f: impl FnOnce() -> R) -> R {
    let owner = rels().owner;
    unsafe {
        let mut save_user = pg_sys::InvalidOid;
        let mut save_sec: i32 = 0;
        pg_sys::GetUserIdAndSecContext(&mut save_user, &mut save_sec);
        pg_sys::SetUserIdAndSecContext(
            owner,
            save_sec
                | pg_sys::SECURITY_LOCAL_USERID_CHANGE as i32
                | pg_sys::SECURITY_RESTRICTED_OPERATION as i32,
        );
        let r = f();
        pg_sys::SetUserIdAndSecContext(save_user, save_sec);
        r
    }
}

pub fn to_pg_uuid(id: Uuid) -> pgrx::Uuid {
    pgrx::Uuid::from_bytes(*id.as_bytes())
}

pub fn from_pg_uuid(id: &pgrx::Uuid) -> Uuid {
    Uuid::from_bytes(**id)
}

fn tenant_row(row: &pgrx::spi::SpiHeapTupleData) -> Result<TenantRow, pgrx::spi::Error> {
    Ok(TenantRow {
        id: from_pg_uuid(&row.get::<pgrx::Uuid>(1)?.expect("id")),
        slug: row.get::<String>(2)?.unwrap_or_default(),
        status: row.get::<String>(3)?.unwrap_or_default(),
        region: row.get::<String>(4)?,
        settings: row.get::<JsonB>(5)?.map(|j| j.0).unwrap_or_default(),
    })
}

fn load_tenant(where_clause: &str, arg: pgrx::datum::DatumWithOid) -> Option<TenantRow> {
    let q = format!(
        "SELECT id, slug, status, region, settings FROM tenancy.tenant WHERE {where_clause}"
    );
    owner_rows("tenancy.tenant", &q, &[arg], tenant_row)
        .into_iter()
        .next()
}

/// The first column of the first row of a read-only query, or None, through a read-only SPI
/// connection. pgrx's `Spi::get_one_with_args` runs every query as an update and first asks for
/// the transaction's id, assigning one to a transaction that only reads: that fails inside a
/// parallel operation ("cannot assign XIDs during a parallel operation", for example when a
/// policy's InitPlan runs for a parallel plan) and on a hot standby, and costs a commit record
/// and an XID everywhere else. Every lookup on a read path goes through here instead.
pub fn read_one<A: FromDatum + IntoDatum>(
    sql: &str,
    args: &[pgrx::datum::DatumWithOid],
) -> Option<A> {
    Spi::connect(|c| c.select(sql, Some(1), args)?.first().get_one::<A>())
        .ok()
        .flatten()
}

/// Run a read-only query on the catalog as its owner and map every row.
pub fn owner_rows<T>(
    what: &str,
    sql: &str,
    args: &[pgrx::datum::DatumWithOid],
    map: impl Fn(&pgrx::spi::SpiHeapTupleData) -> Result<T, pgrx::spi::Error>,
) -> Vec<T> {
    with_owner(|| {
        Spi::connect(|c| {
            let t = c.select(sql, None, args)?;
            let mut out = Vec::with_capacity(t.len());
            for row in t {
                out.push(map(&row)?);
            }
            Ok::<_, pgrx::spi::Error>(out)
        })
    })
    .unwrap_or_else(|e| pgrx::error!("pg_tenancy: reading {what} failed: {e}"))
}

/// A backend loads the tenants it meets one by one (an index lookup each), and all of them in
/// one query once it has met this many since the last invalidation. A new connection's first
/// statement then costs one lookup, not the whole catalog (100-160 ms with 11,000 tenants),
/// and a backend serving thousands of tenants still warms up with one query, not one each.
const LOAD_ALL_AFTER: u32 = 32;

/// Count one more one-by-one load; true when the whole table should be loaded instead.
fn load_all_now(counter: fn(&mut Cache) -> &mut u32) -> bool {
    CACHE.with(|c| {
        let mut c = c.borrow_mut();
        let n = counter(&mut c);
        *n += 1;
        *n > LOAD_ALL_AFTER
    })
}

/// Load every tenant into the cache in one query (see LOAD_ALL_AFTER).
fn load_all_tenants() {
    let rows = owner_rows(
        "tenancy.tenant",
        "SELECT id, slug, status, region, settings FROM tenancy.tenant",
        &[],
        tenant_row,
    );
    CACHE.with(|c| {
        let mut c = c.borrow_mut();
        for r in rows {
            c.slugs.insert(r.slug.clone(), Some(r.id));
            c.tenants.insert(r.id, Some(Rc::new(r)));
        }
        c.all_tenants_loaded = true;
    });
}

pub fn tenant_by_id(id: Uuid) -> Option<Rc<TenantRow>> {
    if let Some(hit) = CACHE.with(|c| c.borrow().tenants.get(&id).cloned()) {
        return hit;
    }
    if !CACHE.with(|c| c.borrow().all_tenants_loaded) && load_all_now(|c| &mut c.tenant_loads) {
        load_all_tenants();
        if let Some(hit) = CACHE.with(|c| c.borrow().tenants.get(&id).cloned()) {
            return hit;
        }
    }
    let row = load_tenant("id = $1", to_pg_uuid(id).into()).map(Rc::new);
    CACHE.with(|c| c.borrow_mut().tenants.insert(id, row.clone()));
    row
}

/// A tenant named by its uuid or its slug.
pub fn tenant_by_ref(reference: &str) -> Option<Rc<TenantRow>> {
    if let Ok(id) = Uuid::parse_str(reference) {
        return tenant_by_id(id);
    }
    let cached = CACHE.with(|c| c.borrow().slugs.get(reference).cloned());
    let cached = match cached {
        None if !CACHE.with(|c| c.borrow().all_tenants_loaded)
            && load_all_now(|c| &mut c.tenant_loads) =>
        {
            load_all_tenants();
            CACHE.with(|c| c.borrow().slugs.get(reference).cloned())
        }
        other => other,
    };
    let id = match cached {
        Some(id) => id,
        None => {
            let row = load_tenant("slug = $1", reference.into());
            let id = row.as_ref().map(|r| r.id);
            CACHE.with(|c| {
                let mut c = c.borrow_mut();
                c.slugs.insert(reference.to_string(), id);
                if let Some(r) = row {
                    c.tenants.insert(r.id, Some(Rc::new(r)));
                }
            });
            id
        }
    };
    id.and_then(tenant_by_id)
}

/// A tenant that must exist (any status), or an error naming it.
pub fn require_tenant(reference: &str) -> Rc<TenantRow> {
    tenant_by_ref(reference).unwrap_or_else(|| {
        errors::raise(
            UNDEFINED_OBJECT,
            format!("tenant \"{reference}\" does not exist"),
            "Name a tenant by its slug or uuid; SELECT slug, id FROM tenancy.tenants lists them.",
        )
    })
}

pub fn key(kid: &str) -> Option<Rc<KeyRow>> {
    if let Some(hit) = CACHE.with(|c| c.borrow().keys.get(kid).cloned()) {
        return hit;
    }
    let loaded = with_owner(|| {
        Spi::connect(|c| {
            let t = c.select(
                "SELECT alg, key_material, tenant_id, extract(epoch FROM not_after)::int8, revoked_at IS NOT NULL \
                 FROM tenancy.signing_key WHERE kid = $1",
                Some(1),
                &[kid.into()],
            )?;
            if t.is_empty() {
                return Ok::<_, pgrx::spi::Error>(None);
            }
            let row = t.first();
            let alg_name = row.get::<String>(1)?.unwrap_or_default();
            let material = row.get::<String>(2)?.unwrap_or_default();
            let tenant = row.get::<pgrx::Uuid>(3)?.map(|u| from_pg_uuid(&u));
            let not_after = row.get::<i64>(4)?;
            let revoked = row.get::<bool>(5)?.unwrap_or(true);
            Ok(Some((alg_name, material, tenant, not_after, revoked)))
        })
    })
    .unwrap_or_else(|e| pgrx::error!("pg_tenancy: reading tenancy.signing_key failed: {e}"));
    let row = loaded.and_then(|(alg_name, material, tenant, not_after, revoked)| {
        let alg = crate::token::parse_algorithm(&alg_name)?;
        let key = crate::token::parse_key(alg, &material).ok();
        Some(Rc::new(KeyRow {
            kid: kid.to_string(),
            alg,
            key,
            tenant,
            not_after,
            revoked,
        }))
    });
    CACHE.with(|c| c.borrow_mut().keys.insert(kid.to_string(), row.clone()));
    row
}

/// The tenants a database role is mapped to.
pub fn mappings(role: pg_sys::Oid) -> Rc<Vec<Mapping>> {
    let k = u32::from(role);
    if let Some(hit) = CACHE.with(|c| c.borrow().mappings.get(&k).cloned()) {
        return hit;
    }
    let rows = owner_rows(
        "tenancy.role_mapping",
        "SELECT m.tenant_id, m.tenant_roles FROM tenancy.role_mapping m WHERE m.role::oid = $1 ORDER BY m.tenant_id",
        &[role.into()],
        |row| {
            Ok(Mapping {
                tenant: from_pg_uuid(&row.get::<pgrx::Uuid>(1)?.expect("tenant_id")),
                roles: row.get::<Vec<String>>(2)?.unwrap_or_default(),
            })
        },
    );
    let rows = Rc::new(rows);
    CACHE.with(|c| c.borrow_mut().mappings.insert(k, rows.clone()));
    rows
}

/// The roles `subject` holds in `tenant` (empty when not a member).
pub fn member_roles(tenant: Uuid, subject: &str) -> Rc<Vec<String>> {
    // Most tenants of a platform that signs roles into tokens have no member rows at all: know
    // which do with one query instead of one per (tenant, subject).
    let with_members = match CACHE.with(|c| c.borrow().tenants_with_members.clone()) {
        Some(set) => set,
        None => {
            let set: std::collections::HashSet<Uuid> = owner_rows(
                "tenancy.member",
                "SELECT DISTINCT tenant_id FROM tenancy.member",
                &[],
                |row| Ok(from_pg_uuid(&row.get::<pgrx::Uuid>(1)?.expect("tenant_id"))),
            )
            .into_iter()
            .collect();
            let set = Rc::new(set);
            CACHE.with(|c| c.borrow_mut().tenants_with_members = Some(set.clone()));
            set
        }
    };
    if !with_members.contains(&tenant) {
        return Rc::new(Vec::new());
    }
    let key = (tenant, subject.to_string());
    if let Some(hit) = CACHE.with(|c| c.borrow().members.get(&key).cloned()) {
        return hit;
    }
    let rows = owner_rows(
        "tenancy.member",
        "SELECT role FROM tenancy.member WHERE tenant_id = $1 AND subject = $2 ORDER BY role",
        &[to_pg_uuid(tenant).into(), subject.into()],
        |row| Ok(row.get::<String>(1)?.unwrap_or_default()),
    );
    let rows = Rc::new(rows);
    CACHE.with(|c| c.borrow_mut().members.insert(key, rows.clone()));
    rows
}

/// The roles defined in `tenant`.
pub fn tenant_roles(tenant: Uuid) -> Rc<Vec<String>> {
    if let Some(hit) = CACHE.with(|c| c.borrow().roles.get(&tenant).cloned()) {
        return hit;
    }
    let rows = owner_rows(
        "tenancy.tenant_role",
        "SELECT role FROM tenancy.tenant_role WHERE tenant_id = $1 ORDER BY role",
        &[to_pg_uuid(tenant).into()],
        |row| Ok(row.get::<String>(1)?.unwrap_or_default()),
    );
    let rows = Rc::new(rows);
    CACHE.with(|c| c.borrow_mut().roles.insert(tenant, rows.clone()));
    rows
}

/// Run a writing statement on the catalog as its owner.
pub fn write(sql: &str, args: &[pgrx::datum::DatumWithOid]) -> u64 {
    with_owner(|| Spi::connect_mut(|c| c.update(sql, None, args).map(|t| t.len() as u64)))
        .unwrap_or_else(|e| pgrx::error!("pg_tenancy: catalog write failed: {e}"))
}

/// Statement-level trigger on every catalog table: queue a relcache invalidation of the table so
/// that every backend drops its cached rows when this transaction commits.
#[pg_trigger]
fn catalog_changed<'a>(
    trigger: &'a pgrx::PgTrigger<'a>,
) -> Result<Option<PgHeapTuple<'a, pgrx::AllocatedByPostgres>>, pgrx::PgTriggerError> {
    let relid = trigger.relid()?;
    unsafe { pg_sys::CacheInvalidateRelcacheByRelid(relid) };
    Ok(None)
}

/// Every privilege granted to `tenant`'s roles.
pub fn privileges(tenant: Uuid) -> Rc<Vec<Privilege>> {
    if let Some(hit) = CACHE.with(|c| c.borrow().privileges.get(&tenant).cloned()) {
        return hit;
    }
    if !CACHE.with(|c| c.borrow().all_privileges_loaded) && load_all_now(|c| &mut c.privilege_loads)
    {
        // All tenants' grants in one query (a few rows per tenant).
        let rows = owner_rows(
            "tenancy.role_privilege",
            "SELECT tenant_id, role, relid::oid, privilege FROM tenancy.role_privilege",
            &[],
            |row| {
                Ok((
                    from_pg_uuid(&row.get::<pgrx::Uuid>(1)?.expect("tenant_id")),
                    Privilege {
                        role: row.get::<String>(2)?.unwrap_or_default(),
                        relid: row.get::<pg_sys::Oid>(3)?,
                        privilege: row.get::<String>(4)?.unwrap_or_default(),
                    },
                ))
            },
        );
        let mut by_tenant: HashMap<Uuid, Vec<Privilege>> = HashMap::new();
        for (t, p) in rows {
            by_tenant.entry(t).or_default().push(p);
        }
        CACHE.with(|c| {
            let mut c = c.borrow_mut();
            for (t, ps) in by_tenant {
                c.privileges.insert(t, Rc::new(ps));
            }
            c.all_privileges_loaded = true;
        });
        if let Some(hit) = CACHE.with(|c| c.borrow().privileges.get(&tenant).cloned()) {
            return hit;
        }
    }
    let rows = owner_rows(
        "tenancy.role_privilege",
        "SELECT role, relid::oid, privilege FROM tenancy.role_privilege WHERE tenant_id = $1",
        &[to_pg_uuid(tenant).into()],
        |row| {
            Ok(Privilege {
                role: row.get::<String>(1)?.unwrap_or_default(),
                relid: row.get::<pg_sys::Oid>(2)?,
                privilege: row.get::<String>(3)?.unwrap_or_default(),
            })
        },
    );
    let rows = Rc::new(rows);
    CACHE.with(|c| c.borrow_mut().privileges.insert(tenant, rows.clone()));
    rows
}

/// Whether any of `roles` holds `privilege` on `rel` under a tenant's grants `privs`
/// ([`privileges`]). A partition inherits the grants of the protected table it belongs to.
pub fn roles_allow(
    privs: &[Privilege],
    roles: &[String],
    rel: pg_sys::Oid,
    privilege: &str,
) -> bool {
    let matches = |target: pg_sys::Oid| {
        privs.iter().any(|p| {
            p.privilege == privilege
                && roles.contains(&p.role)
                && p.relid.is_none_or(|r| r == target)
        })
    };
    if matches(rel) {
        return true;
    }
    // Grants on a partitioned table apply to its partitions.
    crate::policy::parent_of(rel).is_some_and(|parent| roles_allow(privs, roles, parent, privilege))
}

/// The newest unrevoked, unexpired support grant of `tenant` to `operator`.
pub fn support_grant(tenant: Uuid, operator: pg_sys::Oid) -> Option<Rc<SupportGrant>> {
    let key = (tenant, u32::from(operator));
    let cached = CACHE.with(|c| c.borrow().support.get(&key).cloned());
    let grant = match cached {
        Some(g) => g,
        None => {
            let g = with_owner(|| {
                Spi::connect(|c| {
                    let t = c.select(
                        "SELECT id, privileges, extract(epoch FROM expires_at)::int8 FROM tenancy.support_grant \
                          WHERE tenant_id = $1 AND operator::oid = $2 AND revoked_at IS NULL AND expires_at > now() \
                          ORDER BY expires_at DESC LIMIT 1",
                        Some(1),
                        &[to_pg_uuid(tenant).into(), operator.into()],
                    )?;
                    if t.is_empty() {
                        return Ok::<_, pgrx::spi::Error>(None);
                    }
                    let r = t.first();
                    Ok(Some(Rc::new(SupportGrant {
                        id: r.get::<i64>(1)?.unwrap_or_default(),
                        privileges: r.get::<Vec<String>>(2)?.unwrap_or_default(),
                        expires_at: r.get::<i64>(3)?.unwrap_or_default(),
                    })))
                })
            })
            .unwrap_or_else(|e| pgrx::error!("pg_tenancy: reading tenancy.support_grant failed: {e}"));
            CACHE.with(|c| c.borrow_mut().support.insert(key, g.clone()));
            g
        }
    };
    // Expiry is checked on every use, cached or not.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    grant.filter(|g| g.expires_at > now)
}

thread_local! {
    static LOADING_PROTECTED: Cell<bool> = const { Cell::new(false) };
}

/// The oids of protected tables (and partitions), or None while they are being loaded (the
/// executor hook must not recurse into its own catalog query).
pub fn protected_relids() -> Option<Rc<std::collections::HashSet<u32>>> {
    if let Some(hit) = CACHE.with(|c| c.borrow().protected.clone()) {
        return Some(hit);
    }
    if !installed() || LOADING_PROTECTED.with(|l| l.replace(true)) {
        return None;
    }
    let loaded = with_owner(|| {
        Spi::connect(|c| {
            let t = c.select("SELECT relid::oid FROM tenancy.protected_table", None, &[])?;
            let mut out = std::collections::HashSet::new();
            for r in t {
                if let Some(o) = r.get::<pg_sys::Oid>(1)? {
                    out.insert(u32::from(o));
                }
            }
            Ok::<_, pgrx::spi::Error>(out)
        })
    });
    LOADING_PROTECTED.with(|l| l.set(false));
    let set = Rc::new(loaded.unwrap_or_else(|e| {
        pgrx::error!("pg_tenancy: reading tenancy.protected_table failed: {e}")
    }));
    CACHE.with(|c| c.borrow_mut().protected = Some(set.clone()));
    Some(set)
}
