//! Anchoring the audit chain's heads outside the database.
//!
//! `audit_verify` proves every lane of a tenant's chain consistent from its start (or purge
//! checkpoint) to its newest entry, but nothing refers to the newest entries of a lane: a
//! superuser who deletes them, with their records, leaves a shorter chain that still verifies.
//! `audit_heads()` returns each lane's newest entry (seq and chain_hash); kept somewhere the
//! database's superusers cannot write (a ticket, an object store with retention, another
//! system's log), those rows are an anchor. `audit_verify_heads(anchor)` later checks that every
//! anchored entry is still there with the same hash, or was purged for retention: because each
//! chain_hash covers every entry before it in its lane, the lanes are then intact up to the
//! anchor.

use crate::audit::{trail_tenants, LANES, PLATFORM_CHAIN};
use crate::catalog::{self, to_pg_uuid};
use crate::errors;
use pgrx::prelude::*;
use pgrx::JsonB;

/// Each lane's newest entry of one tenant, or every tenant's (NULL; operators only): tenant,
/// lane, seq, chain_hash as hex, and when its newest record was written. A lane purged to its
/// last entry reports its checkpoint.
#[pg_extern(volatile, parallel_unsafe)]
fn audit_heads(
    tenant: default!(Option<&str>, "NULL"),
) -> TableIterator<
    'static,
    (
        name!(tenant, pgrx::Uuid),
        name!(lane, i16),
        name!(seq, i64),
        name!(chain_hash, String),
        name!(at, Option<pgrx::datum::TimestampWithTimeZone>),
    ),
> {
    let mut rows = Vec::new();
    for t in trail_tenants(tenant, "reading the heads of") {
        let uuid = to_pg_uuid(t);
        catalog::with_owner(|| {
            Spi::connect(|c| {
                let heads = c.select(
                    "SELECT l::smallint, h.seq, encode(h.chain_hash, 'hex'), h.at \
                       FROM generate_series(0, $2 - 1) l CROSS JOIN LATERAL ( \
                            SELECT seq, chain_hash, at FROM ( \
                                (SELECT c.seq, c.chain_hash, \
                                        (SELECT max(r.occurred_at) FROM tenancy._record_ids(c.record_ids) x \
                                           JOIN tenancy.audit_log r ON r.tenant_id = $1 AND r.id = x) AS at \
                                   FROM tenancy.audit_chain c \
                                  WHERE c.tenant_id = $1 AND c.lane = l ORDER BY c.seq DESC LIMIT 1) \
                                UNION ALL \
                                SELECT seq, chain_hash, last_record_at FROM tenancy.audit_checkpoint \
                                 WHERE tenant_id = $1 AND lane = l) x \
                             ORDER BY seq DESC LIMIT 1) h \
                      ORDER BY 1",
                    None,
                    &[uuid.into(), (LANES as i32).into()],
                )?;
                for r in heads {
                    rows.push((
                        uuid,
                        r.get::<i16>(1)?.unwrap_or(0),
                        r.get::<i64>(2)?.unwrap_or(0),
                        r.get::<String>(3)?.unwrap_or_default(),
                        r.get::<pgrx::datum::TimestampWithTimeZone>(4)?,
                    ));
                }
                Ok::<_, pgrx::spi::Error>(())
            })
        })
        .unwrap_or_else(|e| pgrx::error!("pg_tenancy: audit_heads failed: {e}"));
    }
    TableIterator::new(rows)
}

/// One anchored head, as audit_heads() returned it.
#[derive(serde::Deserialize)]
struct Head {
    tenant: String,
    lane: i16,
    seq: i64,
    chain_hash: String,
    /// When the entry's newest record was written (anchors taken before it was reported may
    /// lack it).
    #[serde(default)]
    at: Option<String>,
}

fn bad_anchor(detail: String) -> ! {
    errors::raise(
        errors::INVALID_PARAMETER,
        format!("invalid anchor: {detail}"),
        "Pass the rows of tenancy.audit_heads() as a jsonb array: SELECT jsonb_agg(h) FROM tenancy.audit_heads() h;",
    )
}

/// Check anchored heads (a jsonb array of audit_heads() rows) against the chain: one row per
/// head, ok when the entry is still there with the same chain_hash or was purged for retention
/// after it was anchored. Operators check any tenant's heads; a bound session its own.
#[pg_extern(volatile, parallel_unsafe)]
fn audit_verify_heads(
    anchor: JsonB,
) -> TableIterator<
    'static,
    (
        name!(tenant, pgrx::Uuid),
        name!(lane, i16),
        name!(seq, i64),
        name!(ok, bool),
        name!(detail, String),
    ),
> {
    let heads: Vec<Head> = serde_json::from_value(anchor.0).unwrap_or_else(|e| {
        bad_anchor(format!(
            "expected an array of objects with tenant, lane, seq and chain_hash ({e})"
        ))
    });
    let mut rows = Vec::with_capacity(heads.len());
    for h in heads {
        if !(0..LANES).contains(&h.lane) || h.seq < 1 {
            bad_anchor(format!(
                "lane {} seq {} is not a chain position",
                h.lane, h.seq
            ));
        }
        let hash = hex::decode(&h.chain_hash)
            .unwrap_or_else(|_| bad_anchor(format!("chain_hash \"{}\" is not hex", h.chain_hash)));
        let tenant = uuid::Uuid::parse_str(&h.tenant)
            .unwrap_or_else(|_| bad_anchor(format!("tenant \"{}\" is not a uuid", h.tenant)));
        // Permission: the same as verifying the tenant's trail; the platform chain (the nil
        // uuid) is the operators'.
        if tenant == PLATFORM_CHAIN {
            crate::authz::require_operator("checking anchored heads of the platform chain");
        } else {
            trail_tenants(Some(&h.tenant), "checking anchored heads of");
        }
        let uuid = to_pg_uuid(tenant);
        let (ok, detail) = catalog::with_owner(|| {
            Spi::connect(|c| {
                let entry = c.select(
                    "SELECT chain_hash FROM tenancy.audit_chain WHERE tenant_id = $1 AND lane = $2 AND seq = $3",
                    Some(1),
                    &[uuid.into(), h.lane.into(), h.seq.into()],
                )?;
                if let Some(r) = entry.into_iter().next() {
                    let stored = r.get::<Vec<u8>>(1)?.unwrap_or_default();
                    return Ok::<_, pgrx::spi::Error>(if stored == hash {
                        (true, "ok".to_string())
                    } else {
                        (false, format!("chain entry {} of lane {} was changed since it was anchored", h.seq, h.lane))
                    });
                }
                let cp = c.select(
                    "SELECT seq, chain_hash FROM tenancy.audit_checkpoint WHERE tenant_id = $1 AND lane = $2",
                    Some(1),
                    &[uuid.into(), h.lane.into()],
                )?;
                let checkpoint = match cp.into_iter().next() {
                    Some(r) => Some((r.get::<i64>(1)?.unwrap_or(0), r.get::<Vec<u8>>(2)?.unwrap_or_default())),
                    None => None,
                };
                // Entries younger than the retention floor are never purged: one that is gone
                // was deleted, whatever checkpoint stands in for it.
                let young = match h.at.as_deref() {
                    Some(at) => c
                        .select(
                            "SELECT $1::timestamptz > pg_catalog.now() - pg_catalog.make_interval(secs => $2)",
                            Some(1),
                            &[at.into(), (crate::gucs::AUDIT_MIN_RETENTION.get() as f64).into()],
                        )?
                        .first()
                        .get::<bool>(1)?
                        .unwrap_or(false),
                    None => false,
                };
                if young && checkpoint.as_ref().is_some_and(|(seq, _)| *seq >= h.seq) {
                    return Ok((
                        false,
                        format!(
                            "chain entry {} of lane {} is gone although it is younger than the retention floor: it was deleted, not purged",
                            h.seq, h.lane
                        ),
                    ));
                }
                Ok(match checkpoint {
                    Some((seq, stored)) if seq == h.seq && stored == hash => {
                        (true, "ok (the lane was purged up to this entry)".to_string())
                    }
                    Some((seq, _)) if seq > h.seq => (
                        true,
                        format!("ok (purged for retention since it was anchored; checkpoint at {seq})"),
                    ),
                    _ => (
                        false,
                        format!(
                            "chain entry {} of lane {} is gone: entries anchored before were deleted",
                            h.seq, h.lane
                        ),
                    ),
                })
            })
        })
        .unwrap_or_else(|e| pgrx::error!("pg_tenancy: audit_verify_heads failed: {e}"));
        rows.push((uuid, h.lane, h.seq, ok, detail));
    }
    TableIterator::new(rows)
}
