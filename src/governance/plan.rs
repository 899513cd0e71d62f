//! What a configuration document would change ([`plan_config`]), each change with its risk and
//! the call of pg_tenancy's own management function that makes it ([`Step`]), which
//! `apply_config` runs.

use super::current;
use crate::{authz, errors};
use pgrx::prelude::*;
use pgrx::JsonB;
use serde_json::Value;
use std::collections::BTreeMap;

/// Adds nothing that widens access.
pub const SAFE: &str = "safe";
/// Revokes or removes access.
pub const NARROWING: &str = "narrowing";
/// Grants access: privileges, members, mappings, keys, a resumed tenant.
pub const WIDENING: &str = "widening";
/// Removes protection or data: unprotect, audit off, drop role, decommission.
pub const DESTRUCTIVE: &str = "destructive";
pub const RISKS: [&str; 4] = [SAFE, NARROWING, WIDENING, DESTRUCTIVE];

/// Whose duty a change is: key changes are a key admin's, audit exclusions a tenant admin's,
/// every other an operator's.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Duty {
    Operator,
    KeyAdmin,
    TenantAdmin,
}

/// How a change is made: calls of pg_tenancy's management functions, each constant SQL text
/// whose every value is a bound text parameter (cast in the text), run as the caller, so
/// each call checks the caller's permissions and writes its own audit record. `phase` orders
/// them: what others need first (tenants, protection, roles), widening before a tenant gets
/// its admin (after which operators cannot widen), removals last.
#[derive(Clone, Debug)]
pub enum Step {
    Calls {
        phase: u8,
        duty: Duty,
        calls: Vec<(&'static str, Vec<Option<String>>)>,
    },
    /// No management function makes it; the text says what to do instead.
    Unsupported(String),
    /// A tenant admin's decision, made by hand as the text says (apply_config, which operators
    /// and key admins run, leaves it).
    TenantAdmin(String),
}

/// One change a document would make.
#[derive(Clone, Debug)]
pub struct Change {
    pub action: String,
    pub object: String,
    pub detail: String,
    pub risk: &'static str,
    pub step: Step,
}

impl Change {
    fn new(
        action: &str,
        object: impl Into<String>,
        detail: impl Into<String>,
        risk: &'static str,
    ) -> Change {
        Change {
            action: action.into(),
            object: object.into(),
            detail: detail.into(),
            risk,
            step: Step::Unsupported(String::new()),
        }
    }

    /// Made by one call, in `phase`, by an operator.
    fn call(self, phase: u8, sql: &'static str, args: Vec<Option<String>>) -> Change {
        self.calls(phase, Duty::Operator, vec![(sql, args)])
    }

    fn calls(
        mut self,
        phase: u8,
        duty: Duty,
        calls: Vec<(&'static str, Vec<Option<String>>)>,
    ) -> Change {
        self.step = Step::Calls { phase, duty, calls };
        self
    }

    fn unsupported(mut self, why: impl Into<String>) -> Change {
        self.step = Step::Unsupported(why.into());
        self
    }

    /// Made by a tenant's admin by hand, as `how` says; never by apply_config.
    fn for_tenant_admin(mut self, how: impl Into<String>) -> Change {
        self.step = Step::TenantAdmin(how.into());
        self
    }

    /// The change in one line: risk, action, object and detail.
    pub fn shown(&self) -> String {
        if self.detail.is_empty() {
            format!("{} {} {}", self.risk, self.action, self.object)
        } else {
            format!(
                "{} {} {}: {}",
                self.risk, self.action, self.object, self.detail
            )
        }
    }

    pub fn duty(&self) -> Duty {
        match self.step {
            Step::Calls { duty, .. } => duty,
            Step::TenantAdmin(_) => Duty::TenantAdmin,
            Step::Unsupported(_) if self.action.contains("key") => Duty::KeyAdmin,
            Step::Unsupported(_) => Duty::Operator,
        }
    }
}

// The phases of `Step::Calls`.
const CREATE: u8 = 0;
const PROTECT: u8 = 1;
const PROTECT_PARTITION: u8 = 2;
const ROLES: u8 = 3;
const GRANTS: u8 = 4;
const ACCESS: u8 = 5;
const ADMINS: u8 = 6;
const REMOVE: u8 = 7;
const KEYS: u8 = 8;
const STATUS: u8 = 9;
const DROP: u8 = 10;
const UNPROTECT: u8 = 11;
const DECOMMISSION: u8 = 12;

fn s(v: impl Into<String>) -> Option<String> {
    Some(v.into())
}

/// The items of `list` (a jsonb array of objects) by the key `key_of` gives each.
fn by_key(list: &Value, key_of: impl Fn(&Value) -> String) -> BTreeMap<String, Value> {
    list.as_array()
        .map(|a| a.iter().map(|v| (key_of(v), v.clone())).collect())
        .unwrap_or_default()
}

/// The key of an item named by two fields: both, as a JSON array, so that no two different
/// items share one (joined as "a as b", a subject `alice` with a role `bob as viewer` was the
/// member `alice as bob` with the role `viewer`, and a plan hid a widening; found by an
/// attacker's pass).
fn pair(a: String, b: String) -> String {
    serde_json::json!([a, b]).to_string()
}

fn text(v: &Value, key: &str) -> String {
    match &v[key] {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

fn opt_text(v: &Value, key: &str) -> Option<String> {
    Some(text(v, key)).filter(|t| !t.is_empty())
}

/// Added, removed and changed items of two keyed lists, in key order.
#[allow(clippy::type_complexity)]
fn compare<'a>(
    now: &'a BTreeMap<String, Value>,
    want: &'a BTreeMap<String, Value>,
) -> Vec<(&'a String, Option<&'a Value>, Option<&'a Value>)> {
    let mut keys: Vec<&String> = now.keys().chain(want.keys()).collect();
    keys.sort();
    keys.dedup();
    keys.into_iter()
        .map(|k| (k, now.get(k), want.get(k)))
        .filter(|(_, a, b)| a != b)
        .collect()
}

const ADD_KEY: &str = "SELECT tenancy.add_key($1, $2, $3, $4, $5::pg_catalog.timestamptz)";
const REVOKE_KEY: &str = "SELECT tenancy.revoke_key($1)";

/// The changes of signing keys of `tenant` (a slug; None: the platform's keys).
fn key_changes(tenant: Option<&str>, now: &Value, want: &Value, out: &mut Vec<Change>) {
    let owner = tenant.unwrap_or("platform");
    let (now, want) = (
        by_key(now, |k| text(k, "kid")),
        by_key(want, |k| text(k, "kid")),
    );
    let revoke = |kid: &str| (REVOKE_KEY, vec![s(kid)]);
    for (kid, a, b) in compare(&now, &want) {
        let object = format!("{owner} key {kid}");
        match (a, b) {
            (None, Some(b)) => {
                let c = Change::new(
                    "add_key",
                    object,
                    format!(
                        "{} (its key material is not in the document: the key admin who applies it adds it as \"key\")",
                        text(b, "alg")
                    ),
                    WIDENING,
                );
                out.push(match opt_text(b, "key") {
                    Some(material) => {
                        let mut calls = vec![(
                            ADD_KEY,
                            vec![
                                s(kid.as_str()),
                                opt_text(b, "alg"),
                                s(material),
                                tenant.map(String::from),
                                opt_text(b, "not_after"),
                            ],
                        )];
                        if b["revoked"] == true {
                            calls.push(revoke(kid));
                        }
                        c.calls(KEYS, Duty::KeyAdmin, calls)
                    }
                    None => c.unsupported(format!(
                        "add the key's material to the document's entry for key \"{kid}\" as \"key\", never exported, or register it with tenancy.add_key()"
                    )),
                });
            }
            // A revoked key is inert: it is not revoked again.
            (Some(a), None) if a["revoked"] != true => out.push(
                Change::new("revoke_key", object, "not in the document", NARROWING).calls(
                    KEYS,
                    Duty::KeyAdmin,
                    vec![revoke(kid)],
                ),
            ),
            (Some(a), Some(b)) => {
                if b["revoked"] == true && a["revoked"] != true {
                    out.push(
                        Change::new("revoke_key", object.clone(), "", NARROWING).calls(
                            KEYS,
                            Duty::KeyAdmin,
                            vec![revoke(kid)],
                        ),
                    );
                } else if a["revoked"] == true && b["revoked"] != true {
                    out.push(
                        Change::new(
                            "add_key",
                            object.clone(),
                            "a revoked key cannot be restored: add a new one",
                            WIDENING,
                        )
                        .unsupported("register a new key with tenancy.add_key()"),
                    );
                }
                let (x, y) = (text(a, "not_after"), text(b, "not_after"));
                if x != y {
                    // Empty: no end. Later or none widens, earlier narrows.
                    let widens = y.is_empty() || (!x.is_empty() && y > x);
                    out.push(
                        Change::new(
                            "set_key_expiry",
                            object.clone(),
                            format!(
                                "{} -> {}",
                                if x.is_empty() { "none" } else { &x },
                                if y.is_empty() { "none" } else { &y }
                            ),
                            if widens { WIDENING } else { NARROWING },
                        )
                        .unsupported("a key's not_after is set when it is added: add a new key with the end wanted, then revoke this one"),
                    );
                }
                if text(a, "alg") != text(b, "alg") {
                    out.push(
                        Change::new(
                            "add_key",
                            object,
                            "a key's algorithm cannot change: add a new key",
                            WIDENING,
                        )
                        .unsupported("register a new key with tenancy.add_key()"),
                    );
                }
            }
            _ => {}
        }
    }
}

/// The changes of the keys of a tenant's jsonb object `field` (settings, limits), each made by
/// `sql` (tenant, key, value or NULL) as `action`, with the risk `risk` gives.
#[allow(clippy::too_many_arguments)]
fn key_value_changes(
    slug: &str,
    a: &Value,
    b: &Value,
    field: &str,
    action: &str,
    label: &str,
    sql: &'static str,
    risk: impl Fn(&str, Option<&Value>, Option<&Value>) -> &'static str,
    out: &mut Vec<Change>,
) {
    // Left out of the document: left as it is.
    if b.get(field).is_none() {
        return;
    }
    let empty = serde_json::json!({});
    let (xa, xb) = (
        a.get(field).unwrap_or(&empty),
        b.get(field).unwrap_or(&empty),
    );
    let keys: std::collections::BTreeSet<&String> = xa
        .as_object()
        .into_iter()
        .chain(xb.as_object())
        .flat_map(|o| o.keys())
        .collect();
    let shown = |v: Option<&Value>| v.map_or("none".into(), |v| v.to_string());
    for k in keys {
        let (now, want) = (xa.get(k), xb.get(k));
        if now != want {
            let risk = risk(k, now, want);
            // Removals after the tenant's admins are in; the rest before.
            let phase = if risk == NARROWING { REMOVE } else { GRANTS };
            out.push(
                Change::new(
                    action,
                    format!("{slug} {label} {k}"),
                    format!("{} -> {}", shown(now), shown(want)),
                    risk,
                )
                .call(
                    phase,
                    sql,
                    vec![s(slug), s(k.as_str()), want.map(|v| v.to_string())],
                ),
            );
        }
    }
}

/// A ceiling removed or raised lets the tenant use more (widening); one added or lowered
/// narrows. Values that are not numbers cannot be compared: widening, to be read.
fn limit_risk(now: Option<&Value>, want: Option<&Value>) -> &'static str {
    match (now.and_then(|v| v.as_f64()), want.and_then(|v| v.as_f64())) {
        (_, None) if want.is_none() => WIDENING,
        (None, Some(_)) if now.is_none() => NARROWING,
        (Some(a), Some(b)) if b <= a => NARROWING,
        _ => WIDENING,
    }
}

/// Whether holding `after` instead of `before` gives a subject more, by the roles and
/// privileges of `tenant` (a tenant of the document): the `admin` role, or a privilege on a
/// table (or on every table, `*`) that `before` did not give. As `remove_member` decides it.
fn gains(tenant: &Value, before: &[String], after: &[String]) -> bool {
    let admin = |roles: &[String]| roles.iter().any(|r| r == "admin");
    if admin(after) && !admin(before) {
        return true;
    }
    let held = |roles: &[String]| -> Vec<(String, String)> {
        tenant["roles"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|r| roles.contains(&text(r, "role")))
            .flat_map(|r| r["privileges"].as_array().cloned().unwrap_or_default())
            .map(|p| (text(&p, "table"), text(&p, "privilege")))
            .collect()
    };
    let had = held(before);
    held(after)
        .iter()
        .any(|(t, p)| !had.iter().any(|(u, q)| q == p && (u == "*" || u == t)))
}

/// The roles as `create_tenant` seeds them.
fn seeded_roles() -> Value {
    let all = |ps: &[&str]| {
        ps.iter()
            .map(|p| serde_json::json!({"table": "*", "privilege": p}))
            .collect::<Vec<_>>()
    };
    let rw = all(&["delete", "insert", "select", "update"]);
    serde_json::json!([
        {"role": "admin", "builtin": true, "privileges": rw},
        {"role": "member", "builtin": true, "privileges": rw},
        {"role": "viewer", "builtin": true, "privileges": all(&["select"])},
    ])
}

/// The changes inside one tenant that exists now (`a`) and in the document (`b`). A field the
/// document leaves out (`roles`, `settings`, `status`, ...) is left as it is; an export holds
/// every one.
fn tenant_changes(slug: &str, a: &Value, b: &Value, out: &mut Vec<Change>) {
    let given = |field: &str| b.get(field).is_some();
    let (sa, sb) = (text(a, "status"), text(b, "status"));
    if given("status") && sa != sb {
        let c = match sb.as_str() {
            "suspended" => Change::new("suspend_tenant", slug, format!("{sa} -> {sb}"), NARROWING)
                .call(STATUS, "SELECT tenancy.suspend_tenant($1)", vec![s(slug)]),
            "active" => Change::new("resume_tenant", slug, format!("{sa} -> {sb}"), WIDENING).call(
                STATUS,
                "SELECT tenancy.resume_tenant($1)",
                vec![s(slug)],
            ),
            _ => Change::new(
                "decommission_tenant",
                slug,
                format!("{sa} -> {sb}"),
                DESTRUCTIVE,
            )
            .call(
                DECOMMISSION,
                "SELECT tenancy.decommission_tenant($1, $1)",
                vec![s(slug)],
            ),
        };
        out.push(c);
    }
    // A tenant to be decommissioned keeps nothing else: its other changes do not matter.
    if sb == "decommissioned" {
        return;
    }
    for field in ["name", "region"] {
        if given(field) && text(a, field) != text(b, field) {
            out.push(
                Change::new(
                    &format!("set_{field}"),
                    slug,
                    format!("{} -> {}", text(a, field), text(b, field)),
                    if field == "name" { SAFE } else { WIDENING },
                )
                .unsupported(format!(
                    "a tenant's {field} is set by tenancy.create_tenant and no function changes it"
                )),
            );
        }
    }
    // A new or changed setting may widen (default_roles, say); one removed narrows, but for a
    // resource setting (statement_timeout, lock_timeout, work_mem): removing the tenant's own
    // lifts it to the platform's default (an attacker's pass saw it applied as narrowing).
    key_value_changes(
        slug,
        a,
        b,
        "settings",
        "set_setting",
        "setting",
        "SELECT tenancy.set_setting($1, $2, $3::pg_catalog.jsonb)",
        |key, _, want| {
            if want.is_none() && !crate::lifecycle::RESOURCE_SETTINGS.contains(&key) {
                NARROWING
            } else {
                WIDENING
            }
        },
        out,
    );
    key_value_changes(
        slug,
        a,
        b,
        "limits",
        "set_limit",
        "limit",
        "SELECT tenancy.set_limit($1, $2, $3::pg_catalog.jsonb)",
        |_, now, want| limit_risk(now, want),
        out,
    );
    let roles = |v: &Value| by_key(&v["roles"], |r| text(r, "role"));
    let (ra, rb) = if given("roles") {
        (roles(a), roles(b))
    } else {
        Default::default()
    };
    for (role, x, y) in compare(&ra, &rb) {
        let object = format!("{slug} role {role}");
        match (x, y) {
            (None, Some(_)) => out.push(Change::new("create_role", object.clone(), "", SAFE).call(
                ROLES,
                "SELECT tenancy.create_role($1, $2)",
                vec![s(slug), s(role.as_str())],
            )),
            (Some(_), None) if crate::rbac::SEEDED_ROLES.contains(&role.as_str()) => out.push(
                Change::new("drop_role", object.clone(), "", DESTRUCTIVE).unsupported(
                    "admin, member and viewer are in every tenant and cannot be dropped: revoke their privileges instead",
                ),
            ),
            (Some(_), None) => out.push(
                Change::new("drop_role", object.clone(), "", DESTRUCTIVE).call(
                    DROP,
                    "SELECT tenancy.drop_role($1, $2)",
                    vec![s(slug), s(role.as_str())],
                ),
            ),
            _ => {}
        }
        let privileges = |r: Option<&Value>| {
            r.map(|r| {
                by_key(&r["privileges"], |p| {
                    pair(text(p, "privilege"), text(p, "table"))
                })
            })
            .unwrap_or_default()
        };
        let (pa, pb) = (privileges(x), privileges(y));
        for (_, u, v) in compare(&pa, &pb) {
            let item = u.or(v).cloned().unwrap_or_default();
            let p = format!("{} on {}", text(&item, "privilege"), text(&item, "table"));
            let table = opt_text(&item, "table").filter(|t| t != "*");
            let args = vec![
                s(slug),
                s(role.as_str()),
                table,
                opt_text(&item, "privilege"),
            ];
            match (u, v) {
                (None, Some(_)) => out.push(
                    Change::new("grant", object.clone(), p.clone(), WIDENING).call(
                        GRANTS,
                        "SELECT tenancy.grant($1, $2, $3::pg_catalog.regclass, ARRAY[$4])",
                        args,
                    ),
                ),
                (Some(_), None) if y.is_some() => out.push(
                    Change::new("revoke", object.clone(), p.clone(), NARROWING).call(
                        REMOVE,
                        "SELECT tenancy.revoke($1, $2, $3::pg_catalog.regclass, ARRAY[$4])",
                        args,
                    ),
                ),
                _ => {}
            }
        }
    }
    let members = |v: &Value| by_key(&v["members"], |m| pair(text(m, "subject"), text(m, "role")));
    let (ma, mb) = if given("members") {
        (members(a), members(b))
    } else {
        Default::default()
    };
    for (_, x, y) in compare(&ma, &mb) {
        let item = x.or(y).cloned().unwrap_or_default();
        let m = format!("{} as {}", text(&item, "subject"), text(&item, "role"));
        let args = vec![s(slug), opt_text(&item, "subject"), opt_text(&item, "role")];
        match (x, y) {
            (None, Some(_)) => out.push(
                Change::new("add_member", format!("{slug} member"), m.clone(), WIDENING).call(
                    // An admin last: once the tenant has one, operators cannot widen in it.
                    if text(&item, "role") == "admin" {
                        ADMINS
                    } else {
                        ACCESS
                    },
                    "SELECT tenancy.add_member($1, $2, $3)",
                    args,
                ),
            ),
            (Some(_), None) => {
                // A subject left with no membership binds with the tenant's default_roles,
                // which may give it more than it had.
                let subject = text(&item, "subject");
                let left = mb.values().any(|m| text(m, "subject") == subject);
                let settings = if given("settings") { b } else { a };
                let defaults: Vec<String> = settings["settings"]["default_roles"]
                    .as_array()
                    .map(|d| {
                        d.iter()
                            .filter_map(|r| r.as_str().map(String::from))
                            .collect()
                    })
                    .unwrap_or_default();
                let held: Vec<String> = ma
                    .values()
                    .filter(|m| text(m, "subject") == subject)
                    .map(|m| text(m, "role"))
                    .collect();
                let roles = if given("roles") { b } else { a };
                let (detail, risk) = if !left && gains(roles, &held, &defaults) {
                    (format!("{m} (then its default_roles)"), WIDENING)
                } else {
                    (m.clone(), NARROWING)
                };
                out.push(
                    Change::new("remove_member", format!("{slug} member"), detail, risk).call(
                        REMOVE,
                        "SELECT tenancy.remove_member($1, $2, $3)",
                        args,
                    ),
                )
            }
            _ => {}
        }
    }
    let mappings = |v: &Value| by_key(&v["mappings"], |m| text(m, "role"));
    let (ga, gb) = if given("mappings") {
        (mappings(a), mappings(b))
    } else {
        Default::default()
    };
    for (role, x, y) in compare(&ga, &gb) {
        let object = format!("{slug} mapping {role}");
        match (x, y) {
            // Labelled again by the document's end state (label_mapping_removals).
            (Some(_), None) => out.push(Change::new("unmap_role", object, "", NARROWING).call(
                REMOVE,
                "SELECT tenancy.unmap_role($1::pg_catalog.regrole, $2)",
                vec![s(role.as_str()), s(slug)],
            )),
            (_, Some(y)) => {
                let admin = y["tenant_roles"]
                    .as_array()
                    .is_some_and(|r| r.iter().any(|r| r == "admin"));
                out.push(
                    Change::new("map_role", object, y["tenant_roles"].to_string(), WIDENING).call(
                        if admin { ADMINS } else { ACCESS },
                        "SELECT tenancy.map_role($1::pg_catalog.regrole, $2, \
                         ARRAY(SELECT pg_catalog.jsonb_array_elements_text($3::pg_catalog.jsonb)))",
                        vec![s(role.as_str()), s(slug), s(y["tenant_roles"].to_string())],
                    ),
                )
            }
            _ => {}
        }
    }
    if given("keys") {
        key_changes(Some(slug), &a["keys"], &b["keys"], out);
    }
    if given("audit_exclusions") {
        exclusion_changes(slug, &a["audit_exclusions"], &b["audit_exclusions"], out);
    }
}

/// The changes of a tenant's audit exclusions: each its admin's decision
/// (`tenancy.audit_exclude`, in a session bound with the tenant's admin role), so left for
/// the tenant's admin; keeping more of a table out of the trail is destructive (the trail
/// records less), recording more is safe.
fn exclusion_changes(slug: &str, now: &Value, want: &Value, out: &mut Vec<Change>) {
    let columns = |v: Option<&Value>| -> Vec<String> {
        v.and_then(|v| v["columns"].as_array())
            .map(|a| {
                a.iter()
                    .filter_map(|c| c.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default()
    };
    let (now, want) = (
        by_key(now, |e| text(e, "table")),
        by_key(want, |e| text(e, "table")),
    );
    for (table, x, y) in compare(&now, &want) {
        let (mut had, mut wants) = (columns(x), columns(y));
        // Compared as sets: a document may list them in any order.
        had.sort();
        had.dedup();
        wants.sort();
        wants.dedup();
        if had == wants {
            continue;
        }
        let risk = if wants.iter().any(|c| !had.contains(c)) {
            DESTRUCTIVE
        } else {
            SAFE
        };
        let array = format!(
            "{{{}}}",
            wants
                .iter()
                .map(|c| format!("\"{}\"", c.replace('\\', "\\\\").replace('"', "\\\"")))
                .collect::<Vec<_>>()
                .join(",")
        );
        out.push(
            Change::new(
                "audit_exclude",
                format!("{slug} table {table}"),
                format!("{} -> {}", serde_json::json!(had), serde_json::json!(wants)),
                risk,
            )
            .for_tenant_admin(format!(
                "what a tenant's trail leaves out is its admin's decision: in a session bound with the admin role of \"{slug}\", SELECT tenancy.audit_exclude({}, {});",
                crate::catalog::quote_literal(table),
                crate::catalog::quote_literal(&array)
            )),
        );
    }
}

/// A role mapped to one tenant is bound to it without a token, and a role mapped to none may
/// bind any tenant with a token: a removal of mappings (`unmap_role`, or the mappings of a
/// decommissioned tenant) that leaves a role mapped to one tenant or none widens. Judged on
/// the document's end state, over every change of the plan together (two removals that each
/// leave two mappings can leave one between them): each `unmap_role` of such a role is
/// labelled widening.
fn label_mapping_removals(now: &Value, out: &mut [Change]) {
    let mut mapped: BTreeMap<String, std::collections::BTreeSet<String>> = BTreeMap::new();
    for t in now["tenants"].as_array().into_iter().flatten() {
        if text(t, "status") == "decommissioned" {
            continue;
        }
        for m in t["mappings"].as_array().into_iter().flatten() {
            mapped
                .entry(text(m, "role"))
                .or_default()
                .insert(text(t, "slug"));
        }
    }
    let arg = |c: &Change, i: usize| -> String {
        match &c.step {
            Step::Calls { calls, .. } => calls
                .first()
                .and_then(|(_, a)| a.get(i).cloned().flatten())
                .unwrap_or_default(),
            Step::Unsupported(_) | Step::TenantAdmin(_) => String::new(),
        }
    };
    let mut shrunk = std::collections::BTreeSet::new();
    for c in out.iter() {
        match c.action.as_str() {
            "unmap_role" => {
                let role = arg(c, 0);
                mapped.entry(role.clone()).or_default().remove(&arg(c, 1));
                shrunk.insert(role);
            }
            "map_role" => {
                mapped.entry(arg(c, 0)).or_default().insert(arg(c, 1));
            }
            "decommission_tenant" => {
                let slug = arg(c, 0);
                for (role, tenants) in mapped.iter_mut() {
                    if tenants.remove(&slug) {
                        shrunk.insert(role.clone());
                    }
                }
            }
            _ => {}
        }
    }
    for c in out.iter_mut().filter(|c| c.action == "unmap_role") {
        let role = arg(c, 0);
        let left = mapped.get(&role).map_or(0, |t| t.len());
        if shrunk.contains(&role) && left <= 1 && c.risk == NARROWING {
            c.risk = WIDENING;
            c.detail = if left == 0 {
                "the role is left with no mapping: it may then bind any tenant with a token".into()
            } else {
                "the role is left mapped to one tenant: it is then bound there without a token"
                    .into()
            };
        }
    }
}

/// What applying `doc` (a document of `export_config`'s form) to this database would change,
/// one row per change, each with its risk: `safe` (adds nothing that widens access),
/// `narrowing` (revokes or removes access), `widening` (grants, members, mappings, keys, a
/// resumed tenant, a raised or removed ceiling), `destructive` (unprotect, audit off, drop role,
/// decommission). A document with the platform's parts
/// (`protected_tables`, `platform_keys`, `auto_protect_schemas`) describes the whole
/// configuration, so a tenant missing from it would be decommissioned; a document of tenants
/// only is compared for those tenants. Changes nothing. Operators only.
#[pg_extern(volatile, parallel_unsafe)]
#[allow(clippy::type_complexity)]
fn plan_config(
    doc: JsonB,
) -> TableIterator<
    'static,
    (
        name!(action, String),
        name!(object, String),
        name!(detail, String),
        name!(risk, String),
    ),
> {
    authz::require_operator("plan a configuration change");
    // The document's names and values are shown, not run (the calls bind them as parameters):
    // escaped as messages are, so that a name in a submitted document cannot reorder or hide
    // the text of the rows a reviewer approves.
    TableIterator::new(plan(doc.0).into_iter().map(|c| {
        (
            c.action,
            errors::clean(&c.object),
            errors::clean(&c.detail),
            c.risk.to_string(),
        )
    }))
}

/// The changes of [`plan_config`], in the order of the document's objects.
pub fn plan(want: Value) -> Vec<Change> {
    if want["version"] != 1 || !want["tenants"].is_array() {
        errors::raise(
            errors::INVALID_PARAMETER,
            "not a pg_tenancy configuration document (version 1 with a tenants array)",
            "Start from SELECT tenancy.export_config(); and edit it.",
        );
    }
    let whole = ["protected_tables", "platform_keys", "auto_protect_schemas"]
        .iter()
        .any(|k| want.get(*k).is_some());
    let now = current(None);
    let mut want = want;
    canonical_tables(&now, &mut want);
    let mut out: Vec<Change> = Vec::new();
    let (ta, tb) = (
        by_key(&now["tenants"], |t| text(t, "slug")),
        by_key(&want["tenants"], |t| text(t, "slug")),
    );
    for (slug, a, b) in compare(&ta, &tb) {
        match (a, b) {
            (None, Some(b)) => {
                out.push(Change::new("create_tenant", slug.as_str(), "", SAFE).call(
                    CREATE,
                    "SELECT tenancy.create_tenant($1, $2, $3)",
                    vec![s(slug.as_str()), opt_text(b, "name"), opt_text(b, "region")],
                ));
                // Against the tenant as create_tenant makes it, with its name and region.
                let seeded = serde_json::json!({
                    "status": "active", "name": b["name"], "region": b["region"],
                    "roles": seeded_roles(), "settings": {}, "limits": {},
                });
                tenant_changes(slug, &seeded, b, &mut out);
            }
            (Some(a), None) if whole && text(a, "status") != "decommissioned" => out.push(
                Change::new(
                    "decommission_tenant",
                    slug.as_str(),
                    "not in the document",
                    DESTRUCTIVE,
                )
                .call(
                    DECOMMISSION,
                    "SELECT tenancy.decommission_tenant($1, $1)",
                    vec![s(slug.as_str())],
                ),
            ),
            (Some(a), Some(b)) => tenant_changes(slug, a, b, &mut out),
            _ => {}
        }
    }
    // Each platform part the document gives; one it leaves out is left as it is.
    if want.get("platform_keys").is_some() {
        key_changes(
            None,
            &now["platform_keys"],
            &want["platform_keys"],
            &mut out,
        );
    }
    protection_changes(&now, &want, &mut out);
    label_mapping_removals(&now, &mut out);
    out
}

/// The JSON pointers of every table a configuration document names: protected tables and
/// their parents, tenants' audit exclusions and their roles' privileges (`*`, every table, is
/// no table's name).
fn table_slots(doc: &Value) -> Vec<String> {
    let each = |v: &Value| v.as_array().map(|a| a.len()).unwrap_or(0);
    let mut slots = Vec::new();
    for i in 0..each(&doc["protected_tables"]) {
        slots.push(format!("/protected_tables/{i}/table"));
        slots.push(format!("/protected_tables/{i}/parent"));
    }
    for t in 0..each(&doc["tenants"]) {
        let tenant = &doc["tenants"][t];
        for e in 0..each(&tenant["audit_exclusions"]) {
            slots.push(format!("/tenants/{t}/audit_exclusions/{e}/table"));
        }
        for r in 0..each(&tenant["roles"]) {
            for p in 0..each(&tenant["roles"][r]["privileges"]) {
                slots.push(format!("/tenants/{t}/roles/{r}/privileges/{p}/table"));
            }
        }
    }
    slots.retain(|s| matches!(doc.pointer(s), Some(Value::String(n)) if n != "*"));
    slots
}

/// Names each table of `want` as the export names it (`public.orders`, each part quoted as
/// needed), so that `orders` spelled `PUBLIC."orders"` is the same table, not a table
/// unprotected and another protected (a plan of four changes for a document with none).
/// Resolved as `apply_config` runs its calls, with `search_path = pg_catalog, pg_temp`: a name
/// that no table has there is refused here, with 42P01, rather than by the apply.
fn canonical_tables(now: &Value, want: &mut Value) {
    let known: std::collections::BTreeSet<&str> = table_slots(now)
        .iter()
        .filter_map(|p| now.pointer(p).and_then(Value::as_str))
        .collect();
    let mut named: BTreeMap<String, String> = BTreeMap::new();
    for slot in table_slots(want) {
        let Some(Value::String(name)) = want.pointer(&slot).cloned() else {
            continue;
        };
        if known.contains(name.as_str()) {
            continue;
        }
        let canonical = named.entry(name.clone()).or_insert_with(|| {
            // Read as the catalog owner with the search_path apply_config's calls have: the
            // name is bound as a parameter and only looked up, in pg_class, which any role
            // may read (the calls themselves still run as the caller).
            crate::catalog::owner_rows(
                "a table's name",
                "SELECT pg_catalog.to_regclass($1)::pg_catalog.text",
                &[name.as_str().into()],
                |r| r.get::<String>(1),
            )
            .into_iter()
            .next()
            .flatten()
            .unwrap_or_else(|| {
                errors::raise(
                    pgrx::PgSqlErrorCode::ERRCODE_UNDEFINED_TABLE,
                    format!("the document names the table {name}, which does not exist"),
                    "Name each table with its schema, as tenancy.export_config() does (for example public.orders).",
                )
            })
        });
        if let Some(v) = want.pointer_mut(&slot) {
            *v = Value::String(canonical.clone());
        }
    }
    // One table named twice, in two spellings, is a document that says two things of it (audit
    // on and off, say): the last would win, in the plan and in the apply alike (a reviewer's
    // pass). Refused, with both spellings.
    let lists = std::iter::once("/protected_tables".to_string()).chain(
        (0..want["tenants"].as_array().map(Vec::len).unwrap_or(0))
            .map(|t| format!("/tenants/{t}/audit_exclusions")),
    );
    for list in lists {
        let mut seen = std::collections::BTreeSet::new();
        for item in want
            .pointer(&list)
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let table = text(item, "table");
            if !seen.insert(table.clone()) {
                errors::raise(
                    errors::INVALID_PARAMETER,
                    format!("the document names the table {table} twice in {list}"),
                    "Name each table once in each list (spellings PostgreSQL reads alike, such as PUBLIC.\"orders\" and public.orders, are one table).",
                );
            }
        }
    }
}

/// The changes of protected tables and auto-protected schemas.
fn protection_changes(now: &Value, want: &Value, out: &mut Vec<Change>) {
    // A partition is protected and unprotected with its parent: its own call runs only if
    // it is still needed when its turn comes.
    const PROTECT_SQL: &str =
        "SELECT tenancy.protect($1::pg_catalog.regclass, $2, $3::pg_catalog.bool)";
    // Every operator named with its schema: apply_config runs these as its caller, and an
    // unqualified `=` would resolve through the caller's search_path, where another role may
    // have created a `=` of its own (an exact match for regclass, which pg_catalog lacks).
    const PROTECT_LEFT: &str = "SELECT tenancy.protect($1::pg_catalog.regclass, $2, $3::pg_catalog.bool) \
         WHERE NOT EXISTS (SELECT FROM tenancy.protected_tables p \
                            WHERE p.\"table\"::pg_catalog.oid OPERATOR(pg_catalog.=) $1::pg_catalog.regclass::pg_catalog.oid \
                              AND p.tenant_column::pg_catalog.text OPERATOR(pg_catalog.=) $2::pg_catalog.text \
                              AND p.audited OPERATOR(pg_catalog.=) $3::pg_catalog.bool)";
    const UNPROTECT_SQL: &str = "SELECT tenancy.unprotect($1::pg_catalog.regclass) \
         WHERE EXISTS (SELECT FROM tenancy.protected_tables p \
                        WHERE p.\"table\"::pg_catalog.oid OPERATOR(pg_catalog.=) $1::pg_catalog.regclass::pg_catalog.oid)";
    let tables = |v: &Value| by_key(&v["protected_tables"], |t| text(t, "table"));
    let (ta, tb) = if want.get("protected_tables").is_some() {
        (tables(now), tables(want))
    } else {
        Default::default()
    };
    for (table, a, b) in compare(&ta, &tb) {
        let protect = |c: Change, b: &Value| {
            let (phase, sql) = if opt_text(b, "parent").is_some() {
                (PROTECT_PARTITION, PROTECT_LEFT)
            } else {
                (PROTECT, PROTECT_SQL)
            };
            c.call(
                phase,
                sql,
                vec![
                    s(table.as_str()),
                    opt_text(b, "tenant_column"),
                    s((b["audited"] == true).to_string()),
                ],
            )
        };
        match (a, b) {
            (None, Some(b)) => out.push(protect(
                Change::new(
                    "protect",
                    table.as_str(),
                    format!(
                        "tenant column {}, audit {}",
                        text(b, "tenant_column"),
                        b["audited"]
                    ),
                    SAFE,
                ),
                b,
            )),
            (Some(_), None) => out.push(
                Change::new("unprotect", table.as_str(), "", DESTRUCTIVE).call(
                    UNPROTECT,
                    UNPROTECT_SQL,
                    vec![s(table.as_str())],
                ),
            ),
            (Some(a), Some(b)) => {
                let (detail, risk) = if a["audited"] == true && b["audited"] != true {
                    ("audit off".to_string(), DESTRUCTIVE)
                } else if text(a, "tenant_column") != text(b, "tenant_column") {
                    (
                        format!(
                            "tenant column {} -> {}",
                            text(a, "tenant_column"),
                            text(b, "tenant_column")
                        ),
                        DESTRUCTIVE,
                    )
                } else if a["audited"] != b["audited"] {
                    ("audit on".to_string(), SAFE)
                } else {
                    (
                        "policies regenerated (their digest differs)".to_string(),
                        SAFE,
                    )
                };
                out.push(protect(
                    Change::new("protect", table.as_str(), detail, risk),
                    b,
                ));
            }
            (None, None) => {}
        }
    }
    let schemas = |v: &Value| by_key(&v["auto_protect_schemas"], |s| text(s, "schema"));
    let (sa, sb) = if want.get("auto_protect_schemas").is_some() {
        (schemas(now), schemas(want))
    } else {
        Default::default()
    };
    for (schema, a, b) in compare(&sa, &sb) {
        match (a, b) {
            (Some(_), None) => out.push(
                Change::new("auto_protect_off", schema.as_str(), "", DESTRUCTIVE).call(
                    UNPROTECT,
                    "SELECT tenancy.auto_protect($1, false)",
                    vec![s(schema.as_str())],
                ),
            ),
            (a, Some(b)) => out.push(
                Change::new(
                    "auto_protect",
                    schema.as_str(),
                    match a {
                        Some(a) => format!(
                            "tenant column {} -> {}",
                            text(a, "tenant_column"),
                            text(b, "tenant_column")
                        ),
                        None => format!("tenant column {}", text(b, "tenant_column")),
                    },
                    // A new column leaves the schema's next tables with the old one
                    // unprotected: as destructive as a protected table's column changed.
                    if a.is_some() { DESTRUCTIVE } else { SAFE },
                )
                .call(
                    PROTECT,
                    "SELECT tenancy.auto_protect($1, true, $2)",
                    vec![s(schema.as_str()), opt_text(b, "tenant_column")],
                ),
            ),
            _ => {}
        }
    }
}
