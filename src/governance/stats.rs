//! What a platform team sees of each tenant without reading a row: `tenancy.tenant_stats`
//! (the telemetry of `src/telemetry.rs` beside the planner's statistics of each protected
//! table) and `tenancy.metrics()` (the same as Prometheus text, with a bounded label set).

use crate::telemetry::{self, Counts, TableCounts};
use crate::{authz, catalog, events};
use pgrx::prelude::*;
use pgrx::JsonB;
use std::collections::HashMap;
use std::fmt::Write;

/// Each protected table with what its statistics say of its tenant column, read as the catalog
/// owner (statistics hold the column's most common values: tenant ids, never a row).
const TABLE_STATISTICS: &str = "
SELECT p.relid::oid, p.relid::regclass::text, c.reltuples::float8, c.relpages::int8,
       s.null_frac::float8, s.n_distinct::float8,
       CASE WHEN a.atttypid = 'pg_catalog.uuid'::pg_catalog.regtype
            THEN s.most_common_vals::text::uuid[] END,
       s.most_common_freqs::float8[]
  FROM tenancy.protected_table p
  JOIN pg_catalog.pg_class c ON c.oid = p.relid
  JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
  JOIN pg_catalog.pg_attribute a ON a.attrelid = p.relid AND a.attname = p.tenant_column
  LEFT JOIN pg_catalog.pg_stats s ON s.schemaname = n.nspname AND s.tablename = c.relname
        AND s.attname = p.tenant_column AND s.inherited = (c.relkind = 'p')
 ORDER BY 2";

struct TableStats {
    relid: u32,
    name: String,
    reltuples: f64,
    relpages: i64,
    /// (null_frac, n_distinct, most common tenants, their frequencies), None: never analyzed.
    column: Option<(f64, f64, Vec<uuid::Uuid>, Vec<f64>)>,
}

impl TableStats {
    /// The rows of `tenant` the statistics estimate, and their bytes (None: not analyzed).
    fn estimate(&self, tenant: uuid::Uuid) -> (Option<i64>, Option<i64>) {
        let Some((null_frac, n_distinct, mcv, mcf)) = &self.column else {
            return (None, None);
        };
        let r = self.reltuples;
        if r < 0.0 {
            return (None, None);
        }
        let rows = match mcv.iter().position(|t| *t == tenant) {
            Some(i) => r * mcf.get(i).copied().unwrap_or(0.0),
            None => {
                let distinct = if *n_distinct < 0.0 {
                    -n_distinct * r
                } else {
                    *n_distinct
                };
                let rest = distinct - mcv.len() as f64;
                if rest >= 1.0 {
                    r * (1.0 - null_frac - mcf.iter().sum::<f64>()).max(0.0) / rest
                } else {
                    0.0
                }
            }
        };
        let bytes = if r > 0.0 {
            rows * self.relpages as f64 * 8192.0 / r
        } else {
            0.0
        };
        (Some(rows.round() as i64), Some(bytes.round() as i64))
    }
}

fn table_statistics() -> Vec<TableStats> {
    catalog::owner_rows(
        "the protected tables' statistics",
        TABLE_STATISTICS,
        &[],
        |r| {
            let mcv: Option<Vec<pgrx::Uuid>> = r.get(7)?;
            let null_frac: Option<f64> = r.get(5)?;
            Ok(TableStats {
                relid: r.get::<pg_sys::Oid>(1)?.map(u32::from).unwrap_or(0),
                name: r.get(2)?.unwrap_or_default(),
                reltuples: r.get(3)?.unwrap_or(-1.0),
                relpages: r.get(4)?.unwrap_or(0),
                column: null_frac.map(|nf| {
                    (
                        nf,
                        r.get::<f64>(6).ok().flatten().unwrap_or(0.0),
                        mcv.unwrap_or_default()
                            .iter()
                            .map(catalog::from_pg_uuid)
                            .collect(),
                        r.get::<Vec<f64>>(8).ok().flatten().unwrap_or_default(),
                    )
                }),
            })
        },
    )
}

/// Every tenant: (id, slug, status), by slug.
fn tenants() -> Vec<(uuid::Uuid, String, String)> {
    catalog::owner_rows(
        "the tenants",
        "SELECT id, slug, status FROM tenancy.tenant ORDER BY slug",
        &[],
        |r| {
            Ok((
                r.get::<pgrx::Uuid>(1)?
                    .map(|u| catalog::from_pg_uuid(&u))
                    .unwrap_or_default(),
                r.get(2)?.unwrap_or_default(),
                r.get(3)?.unwrap_or_default(),
            ))
        },
    )
}

fn timestamp(t: i64) -> Option<pgrx::datum::TimestampWithTimeZone> {
    (t > 0).then(|| {
        pgrx::datum::TimestampWithTimeZone::try_from(pg_sys::TimestampTz::from(t))
            .expect("a PostgreSQL timestamp")
    })
}

fn events_json(c: &Counts) -> serde_json::Value {
    serde_json::Value::Object(
        events::KINDS
            .iter()
            .zip(c.events.iter())
            .filter(|(_, n)| **n > 0)
            .map(|(k, n)| (k.to_string(), (*n).into()))
            .collect(),
    )
}

fn refused_binds(c: &Counts) -> u64 {
    let i = events::KINDS
        .iter()
        .position(|k| *k == "bind_refused")
        .unwrap_or(0);
    c.events[i]
}

/// The per-table part of a row: each protected table with the tenant's counts (when tracked)
/// and its statistics' estimate of the tenant's rows and bytes.
fn tables_json(
    stats: &[TableStats],
    counts: Option<&Counts>,
    tenant: Option<uuid::Uuid>,
) -> serde_json::Value {
    let mut out: Vec<serde_json::Value> = Vec::new();
    for t in stats {
        let c: Option<TableCounts> =
            counts.and_then(|c| c.tables.iter().find(|x| x.relid == t.relid).copied());
        let (rows, bytes) = tenant.map(|id| t.estimate(id)).unwrap_or((None, None));
        let mut o = serde_json::Map::new();
        o.insert("table".into(), t.name.clone().into());
        if let Some(c) = c {
            o.insert("statements".into(), c.statements.into());
            o.insert("rows_read".into(), c.rows_read.into());
            o.insert("rows_written".into(), c.rows_written.into());
        } else if counts.is_some() {
            o.insert("statements".into(), 0.into());
            o.insert("rows_read".into(), 0.into());
            o.insert("rows_written".into(), 0.into());
        }
        if let Some(rows) = rows {
            o.insert("estimated_rows".into(), rows.into());
        }
        if let Some(bytes) = bytes {
            o.insert("estimated_bytes".into(), bytes.into());
        }
        out.push(o.into());
    }
    if let Some(c) = counts.filter(|c| c.other_tables.statements > 0) {
        out.push(serde_json::json!({
            "table": "(other tables)",
            "statements": c.other_tables.statements,
            "rows_read": c.other_tables.rows_read,
            "rows_written": c.other_tables.rows_written,
        }));
    }
    serde_json::Value::Array(out)
}

type StatsRow = (
    Option<String>,
    Option<pgrx::Uuid>,
    Option<String>,
    String,
    Option<i64>,
    Option<i64>,
    Option<i64>,
    Option<i64>,
    Option<i64>,
    Option<i64>,
    Option<JsonB>,
    Option<pgrx::datum::TimestampWithTimeZone>,
    Option<pgrx::datum::TimestampWithTimeZone>,
    Option<i64>,
    Option<pgrx::datum::Interval>,
    JsonB,
);

fn row(
    slug: Option<String>,
    id: Option<uuid::Uuid>,
    status: Option<String>,
    source: &str,
    counts: Option<(&Counts, u64)>,
    stats: &[TableStats],
) -> StatsRow {
    let n = |f: fn(&Counts) -> u64| counts.map(|(c, _)| f(c) as i64);
    (
        slug,
        id.map(catalog::to_pg_uuid),
        status,
        source.to_string(),
        n(|c| c.binds),
        n(refused_binds),
        n(|c| c.statements),
        n(|c| c.rows_read),
        n(|c| c.rows_written),
        n(|c| c.audit_records),
        counts.map(|(c, _)| JsonB(events_json(c))),
        counts.and_then(|(c, _)| timestamp(c.last_bind)),
        counts.and_then(|(c, _)| timestamp(c.last_write)),
        counts.map(|(_, s)| s as i64),
        counts
            .map(|(c, _)| c.time_to_revoke)
            .filter(|t| *t >= 0)
            .map(pgrx::datum::Interval::from_micros),
        JsonB(tables_json(stats, counts.map(|(c, _)| c), id)),
    )
}

/// Each tenant's telemetry, never a value of a row (see `tenancy.tenant_stats`): operators and
/// roles with the privileges of `pg_monitor` see every tenant and the "other" bucket; a session
/// bound as a tenant's admin sees its tenant.
#[pg_extern(volatile, parallel_unsafe)]
#[allow(clippy::type_complexity)]
fn tenant_stats() -> TableIterator<
    'static,
    (
        name!(tenant, Option<String>),
        name!(tenant_id, Option<pgrx::Uuid>),
        name!(status, Option<String>),
        name!(source, String),
        name!(binds, Option<i64>),
        name!(refused_binds, Option<i64>),
        name!(statements, Option<i64>),
        name!(rows_read, Option<i64>),
        name!(rows_written, Option<i64>),
        name!(audit_records, Option<i64>),
        name!(security_events, Option<JsonB>),
        name!(last_bind, Option<pgrx::datum::TimestampWithTimeZone>),
        name!(last_write, Option<pgrx::datum::TimestampWithTimeZone>),
        name!(bound_sessions, Option<i64>),
        name!(time_to_revoke, Option<pgrx::datum::Interval>),
        name!(tables, JsonB),
    ),
> {
    let who = authz::caller();
    let only = match authz::admin_of() {
        Some(t) if !authz::is_operator(who) && !authz::is_monitor(who) => Some(t),
        _ => {
            authz::require_operator_or_monitor("read tenancy.tenant_stats");
            None
        }
    };
    let snapshot = telemetry::snapshot();
    let stats = table_statistics();
    let tracked: HashMap<uuid::Uuid, (Counts, u64)> = snapshot
        .as_ref()
        .map(|s| s.tenants.iter().map(|(t, c, n)| (*t, (*c, *n))).collect())
        .unwrap_or_default();
    let off = !telemetry::on();
    let mut rows: Vec<StatsRow> = Vec::new();
    for (id, slug, status) in tenants()
        .into_iter()
        .filter(|(id, _, _)| only.is_none_or(|o| o == *id))
    {
        let (source, counts) = match (&snapshot, tracked.get(&id)) {
            (None, _) => ("statistics only: pg_tenancy is not in shared_preload_libraries", None),
            (Some(_), Some((c, n))) => (
                if off {
                    "shared memory (tenancy.telemetry is off: counting stopped)"
                } else {
                    "shared memory"
                },
                Some((c, *n)),
            ),
            (Some(_), None) => (
                "statistics only: not tracked (inactive since the server started, or its counts went to the other bucket)",
                None,
            ),
        };
        rows.push(row(
            Some(slug),
            Some(id),
            Some(status),
            source,
            counts,
            &stats,
        ));
    }
    if let (None, Some(s)) = (only, &snapshot) {
        rows.push(row(
            None,
            None,
            None,
            &format!(
                "other: {} tenant(s) evicted from the {} tracked, other databases' tenants, and events of no verified tenant",
                s.evicted, s.cap
            ),
            Some((&s.other, s.other_sessions)),
            &[],
        ));
    }
    TableIterator::new(rows)
}

/// Appends one metric family: its HELP, TYPE and samples (label set, value).
fn family(out: &mut String, name: &str, kind: &str, help: &str, samples: &[(String, f64)]) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
    for (labels, value) in samples {
        if labels.is_empty() {
            let _ = writeln!(out, "{name} {value}");
        } else {
            let _ = writeln!(out, "{name}{{{labels}}} {value}");
        }
    }
}

/// A label value, escaped as the exposition format asks (backslash, quote, newline).
fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Platform totals and the most active tenants' counts in Prometheus text exposition format
/// (version 0.0.4): `# HELP`, `# TYPE`, counters and gauges. Tenants are labelled by slug, at
/// most `tenancy.metrics_top_tenants` of them (the most statements and binds since the server
/// started), the rest summed under `tenant="(other)"`, a value no slug can take: a bounded label set. Operators and roles
/// with the privileges of `pg_monitor`.
#[pg_extern(volatile, parallel_unsafe)]
fn metrics() -> String {
    authz::require_operator_or_monitor("read tenancy.metrics()");
    let mut out = String::new();
    let all = tenants();
    let mut by_status: std::collections::BTreeMap<String, f64> =
        ["active", "suspended", "decommissioned"]
            .iter()
            .map(|s| (s.to_string(), 0.0))
            .collect();
    for (_, _, status) in &all {
        *by_status.entry(status.clone()).or_default() += 1.0;
    }
    family(
        &mut out,
        "pg_tenancy_tenants",
        "gauge",
        "Tenants by status.",
        &by_status
            .iter()
            .map(|(s, n)| (format!("status=\"{}\"", label(s)), *n))
            .collect::<Vec<_>>(),
    );
    let Some(s) = telemetry::snapshot() else {
        family(
            &mut out,
            "pg_tenancy_telemetry_up",
            "gauge",
            "1 when per-tenant counts are kept (pg_tenancy preloaded and tenancy.telemetry on).",
            &[(String::new(), 0.0)],
        );
        return out;
    };
    let slugs: HashMap<uuid::Uuid, &str> = all.iter().map(|(id, s, _)| (*id, s.as_str())).collect();
    let mut total = s.other;
    let mut sessions = s.other_sessions;
    for (_, c, n) in &s.tenants {
        total.add(c);
        sessions += n;
    }
    family(
        &mut out,
        "pg_tenancy_telemetry_up",
        "gauge",
        "1 when per-tenant counts are kept (pg_tenancy preloaded and tenancy.telemetry on).",
        &[(String::new(), if telemetry::on() { 1.0 } else { 0.0 })],
    );
    family(
        &mut out,
        "pg_tenancy_tracked_tenants",
        "gauge",
        "Tenants whose counts are kept one by one (at most tenancy.telemetry_tenants).",
        &[(String::new(), s.tenants.len() as f64)],
    );
    family(
        &mut out,
        "pg_tenancy_evicted_tenants_total",
        "counter",
        "Tenants whose slot went to a more recently active one, their counts added to the other bucket.",
        &[(String::new(), s.evicted as f64)],
    );
    family(
        &mut out,
        "pg_tenancy_bound_sessions",
        "gauge",
        "Sessions bound to a tenant now.",
        &[(String::new(), sessions as f64)],
    );
    family(
        &mut out,
        "pg_tenancy_security_events_total",
        "counter",
        "Security events by kind.",
        &events::KINDS
            .iter()
            .zip(total.events.iter())
            .map(|(k, n)| (format!("event=\"{}\"", label(k)), *n as f64))
            .collect::<Vec<_>>(),
    );
    // The most active tenants one by one, the rest as "(other)".
    let top = crate::gucs::METRICS_TOP_TENANTS.get().max(0) as usize;
    let mut ranked: Vec<(&uuid::Uuid, &Counts, u64)> =
        s.tenants.iter().map(|(t, c, n)| (t, c, *n)).collect();
    ranked.sort_by(|a, b| {
        (b.1.statements + b.1.binds)
            .cmp(&(a.1.statements + a.1.binds))
            .then_with(|| slugs.get(a.0).cmp(&slugs.get(b.0)))
    });
    let mut labelled: Vec<(String, Counts, u64)> = Vec::new();
    let mut other = s.other;
    let mut other_sessions = s.other_sessions;
    for (i, (t, c, n)) in ranked.into_iter().enumerate() {
        match slugs.get(t) {
            Some(slug) if i < top => labelled.push((slug.to_string(), *c, n)),
            _ => {
                other.add(c);
                other_sessions += n;
            }
        }
    }
    // "(other)": no slug can take it (a tenant may be named `other`).
    labelled.push(("(other)".to_string(), other, other_sessions));
    let per_tenant = |f: &dyn Fn(&Counts, u64) -> f64| -> Vec<(String, f64)> {
        labelled
            .iter()
            .map(|(slug, c, n)| (format!("tenant=\"{}\"", label(slug)), f(c, *n)))
            .collect()
    };
    for (name, kind, help, f) in [
        (
            "pg_tenancy_tenant_binds_total",
            "counter",
            "Token binds.",
            &(|c: &Counts, _| c.binds as f64) as &dyn Fn(&Counts, u64) -> f64,
        ),
        (
            "pg_tenancy_tenant_refused_binds_total",
            "counter",
            "Binds refused once the token's tenant was verified.",
            &|c: &Counts, _| refused_binds(c) as f64,
        ),
        (
            "pg_tenancy_tenant_statements_total",
            "counter",
            "Statements on protected tables.",
            &|c: &Counts, _| c.statements as f64,
        ),
        (
            "pg_tenancy_tenant_rows_read_total",
            "counter",
            "Rows read from protected tables: returned by statements, or copied out by a writing statement.",
            &|c: &Counts, _| c.rows_read as f64,
        ),
        (
            "pg_tenancy_tenant_rows_written_total",
            "counter",
            "Rows inserted, updated or deleted in protected tables by committed or prepared transactions.",
            &|c: &Counts, _| c.rows_written as f64,
        ),
        (
            "pg_tenancy_tenant_audit_records_total",
            "counter",
            "Audit records linked into the tenant's chain.",
            &|c: &Counts, _| c.audit_records as f64,
        ),
        (
            "pg_tenancy_tenant_security_events_total",
            "counter",
            "Security events of the tenant, all kinds.",
            &|c: &Counts, _| c.events.iter().sum::<u64>() as f64,
        ),
        (
            "pg_tenancy_tenant_bound_sessions",
            "gauge",
            "Sessions bound to the tenant now.",
            &|_: &Counts, n| n as f64,
        ),
    ] {
        family(&mut out, name, kind, help, &per_tenant(f));
    }
    let revoke: Vec<(String, f64)> = labelled
        .iter()
        .filter(|(_, c, _)| c.time_to_revoke >= 0)
        .map(|(slug, c, _)| {
            (
                format!("tenant=\"{}\"", label(slug)),
                c.time_to_revoke as f64 / 1e6,
            )
        })
        .collect();
    family(
        &mut out,
        "pg_tenancy_tenant_time_to_revoke_seconds",
        "gauge",
        "From the commit of the latest revocation to the refusal of the first session bound before it.",
        &revoke,
    );
    out
}
