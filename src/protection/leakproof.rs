//! Which expressions may run over every tenant's rows without showing them to anyone.
//!
//! A CHECK constraint is validated, an index expression or predicate built, an `ALTER COLUMN
//! TYPE ... USING` rewrite and a generated column computed over every row of a table, by the
//! table's owner, with no row security. A function in such an expression sees every tenant's
//! values and can show them (a NOTICE, an error message that quotes its input, a write to
//! another table). Only PostgreSQL's built-in functions marked LEAKPROOF are known to do none of
//! that: [`first_leaky_call`] names the first call in an expression that is anything else.

use pgrx::pg_sys;
use pgrx::prelude::*;
use std::ffi::c_void;

/// What the walk found: the first offending function (or node) described for a message.
struct Walk {
    found: Option<String>,
    /// Only functions that are not built in (nor nodes that run a user's code) offend, and
    /// VOLATILE ones with effects beyond their value ([`has_effects`]).
    user_code_only: bool,
    /// Domains the expression coerces to: their constraints run too, and are read after the
    /// walk (a catalog query has no place in a tree walker's callback).
    domains: Vec<pg_sys::Oid>,
    /// Types defined in the database that values are made of at run time (a function's or a
    /// conversion's result): their domains' constraints and their ranges' functions run too
    /// (`json_populate_record(NULL::t, ...)`, a text converted to a composite), read after the
    /// walk.
    types: Vec<pg_sys::Oid>,
}

/// Built-in functions that run what they are given rather than fixed code: SQL text (the XML
/// exports of a query, a cursor, a table, a schema or a database; `ts_stat`; `ts_rewrite` with
/// a query) or settings (`set_config`, which can point the session's `search_path` at a
/// schema of the expression's author). A reviewer's pass hid a user's function in the SQL text
/// of `query_to_xml` inside a domain's default, where only calls of non-built-in functions
/// were refused.
const RUNS_WHAT_IT_IS_GIVEN: &[&[u8]] = &[
    b"query_to_xml",
    b"query_to_xmlschema",
    b"query_to_xml_and_xmlschema",
    b"cursor_to_xml",
    b"cursor_to_xmlschema",
    b"table_to_xml",
    b"table_to_xmlschema",
    b"table_to_xml_and_xmlschema",
    b"schema_to_xml",
    b"schema_to_xmlschema",
    b"schema_to_xml_and_xmlschema",
    b"database_to_xml",
    b"database_to_xmlschema",
    b"database_to_xml_and_xmlschema",
    b"ts_stat",
    b"ts_rewrite",
    b"set_config",
];

/// The VOLATILE built-in functions that may run where a user's code may not (a column's or a
/// domain's default, a joining table's definition): they make a value and change nothing a
/// reader could see but the value itself. Every other VOLATILE function has an effect beyond
/// the row (`pg_notify`, `setval`, the large-object writers, advisory locks) or reads the
/// session's statement (`current_query`): an attacker's pass made a domain's default send every
/// tenant's INSERT text to its owner with `pg_notify('leak', current_query())`, and run
/// pg_tenancy's management functions (`tenancy.add_key`) as whoever inserted.
const VOLATILE_BUT_PURE: &[&[u8]] = &[
    b"nextval",
    b"gen_random_uuid",
    b"random",
    b"clock_timestamp",
    b"timeofday",
];

/// Whether `func` is VOLATILE and not one of [`VOLATILE_BUT_PURE`] (built in).
fn has_effects(func: pg_sys::Oid) -> bool {
    // SAFETY: syscache lookups of a function's volatility and name by oid; the name is NULL or
    // a palloc'd, NUL-terminated copy, freed after the comparison.
    unsafe {
        if pg_sys::func_volatile(func) != pg_sys::PROVOLATILE_VOLATILE as std::ffi::c_char {
            return false;
        }
        if u32::from(func) >= pg_sys::FirstNormalObjectId {
            return true;
        }
        let name = pg_sys::get_func_name(func);
        if name.is_null() {
            return true;
        }
        let pure = VOLATILE_BUT_PURE.contains(&std::ffi::CStr::from_ptr(name).to_bytes());
        pg_sys::pfree(name.cast());
        !pure
    }
}

/// Whether built-in function `func` is one of [`RUNS_WHAT_IT_IS_GIVEN`].
fn runs_what_it_is_given(func: pg_sys::Oid) -> bool {
    if u32::from(func) >= pg_sys::FirstNormalObjectId {
        return false;
    }
    // SAFETY: a syscache lookup of a function's name by oid: NULL or a palloc'd,
    // NUL-terminated copy, freed after the comparison.
    unsafe {
        let name = pg_sys::get_func_name(func);
        if name.is_null() {
            return false;
        }
        let found = RUNS_WHAT_IT_IS_GIVEN.contains(&std::ffi::CStr::from_ptr(name).to_bytes());
        pg_sys::pfree(name.cast());
        found
    }
}

/// Whether `func` is one of PostgreSQL's own functions (created by initdb, below the first
/// normal object id) and marked LEAKPROOF.
fn builtin_leakproof(func: pg_sys::Oid) -> bool {
    // SAFETY: a syscache lookup of a function by oid.
    u32::from(func) < pg_sys::FirstNormalObjectId && unsafe { pg_sys::get_func_leakproof(func) }
}

/// Whether `func` is pg_tenancy's own (in its schema, where only the extension's owner
/// creates functions): no user's code, as a built-in function is not (`tenancy.current_tenant()`
/// as a column's default, say).
fn pg_tenancys_own(func: pg_sys::Oid) -> bool {
    // SAFETY: syscache lookups by name (missing ok) and of a function's schema by its oid.
    unsafe {
        let tenancy = pg_sys::get_namespace_oid(c"tenancy".as_ptr(), true);
        tenancy != pg_sys::InvalidOid && pg_sys::get_func_namespace(func) == tenancy
    }
}

fn describe_function(func: pg_sys::Oid) -> String {
    // SAFETY: format_procedure returns a palloc'd, NUL-terminated string (or the oid as text).
    unsafe {
        let p = pg_sys::format_procedure(func);
        let s = std::ffi::CStr::from_ptr(p).to_string_lossy().into_owned();
        pg_sys::pfree(p.cast());
        format!("function {s}")
    }
}

/// `check_functions_in_node`'s callback: whether `func` is leaky (then it is named in the walk).
///
/// # Safety
/// Called by `check_functions_in_node` from [`walker`], with the [`Walk`] it was given as
/// `context`.
#[pg_guard]
unsafe extern "C-unwind" fn check_function(func: pg_sys::Oid, context: *mut c_void) -> bool {
    // SAFETY: `context` is the Walk that first_leaky_call passed down.
    let walk = unsafe { &mut *(context as *mut Walk) };
    let builtin = u32::from(func) < pg_sys::FirstNormalObjectId;
    if runs_what_it_is_given(func) {
        walk.found = Some(format!(
            "{} (which runs the SQL or settings it is given)",
            describe_function(func)
        ));
        return true;
    }
    if builtin_leakproof(func) {
        return false;
    }
    if walk.user_code_only && (builtin || pg_tenancys_own(func)) {
        if !has_effects(func) {
            return false;
        }
        walk.found = Some(format!(
            "{} (which is VOLATILE: it acts beyond the value it returns)",
            describe_function(func)
        ));
        return true;
    }
    walk.found = Some(describe_function(func));
    true
}

/// The expression tree walker of [`walk_expression`]: true (stop) at the first leaky call.
///
/// # Safety
/// `node` must be null or a node of a valid analyzed expression tree, and `context` point at
/// the live [`Walk`] of the walk (as `expression_tree_walker` passes both on).
#[pg_guard]
unsafe extern "C-unwind" fn walker(node: *mut pg_sys::Node, context: *mut c_void) -> bool {
    if node.is_null() {
        return false;
    }
    // An expression nested deeper than the stack allows to walk counts as leaky, rather than
    // raising: any role's table (a temporary one of another session included) with a CHECK of
    // a few thousand terms, which PostgreSQL itself accepts, made verify() and assert_clean fail
    // for everyone with "stack depth limit exceeded" (an attacker's pass).
    // SAFETY: stack_is_too_deep compares this frame's address with PostgreSQL's limit and does
    // not raise; `context` is our Walk (this function's contract).
    unsafe {
        if pg_sys::stack_is_too_deep() {
            (*(context as *mut Walk)).found = Some("an expression nested too deep to check".into());
            return true;
        }
    }
    // SAFETY: `node` is a node of an analyzed expression tree, `context` our Walk.
    unsafe {
        match (*node).type_ {
            // A domain's CHECK constraints run with the value: read after the walk.
            pg_sys::NodeTag::T_CoerceToDomain => {
                let walk = &mut *(context as *mut Walk);
                walk.domains
                    .push((*(node as *mut pg_sys::CoerceToDomain)).resulttype);
            }
            // Every value's type, constants' too: built-in functions convert what they are
            // given with its type's casts (`to_json` looks for a cast to json, `||` and
            // `quote_literal` cast to text), so a cast of a user's runs where no call of it
            // shows (a reviewer's pass hid one behind `to_json('a'::t)` in a default).
            pg_sys::NodeTag::T_Const
            | pg_sys::NodeTag::T_Var
            | pg_sys::NodeTag::T_Param
            | pg_sys::NodeTag::T_FuncExpr
            | pg_sys::NodeTag::T_OpExpr
            | pg_sys::NodeTag::T_DistinctExpr
            | pg_sys::NodeTag::T_NullIfExpr
            | pg_sys::NodeTag::T_CoerceViaIO
            | pg_sys::NodeTag::T_ArrayCoerceExpr
            | pg_sys::NodeTag::T_RelabelType
            | pg_sys::NodeTag::T_ConvertRowtypeExpr
            | pg_sys::NodeTag::T_CollateExpr
            | pg_sys::NodeTag::T_CaseExpr
            | pg_sys::NodeTag::T_ArrayExpr
            | pg_sys::NodeTag::T_RowExpr
            | pg_sys::NodeTag::T_CoalesceExpr
            | pg_sys::NodeTag::T_MinMaxExpr
            | pg_sys::NodeTag::T_FieldSelect
            | pg_sys::NodeTag::T_SubscriptingRef => {
                let t = pg_sys::exprType(node);
                if u32::from(t) >= pg_sys::FirstNormalObjectId {
                    let walk = &mut *(context as *mut Walk);
                    if !walk.types.contains(&t) {
                        walk.types.push(t);
                    }
                }
            }
            // A subquery or a parameter has no place in these expressions.
            pg_sys::NodeTag::T_SubLink
            | pg_sys::NodeTag::T_SubPlan
            | pg_sys::NodeTag::T_XmlExpr => {
                let walk = &mut *(context as *mut Walk);
                if walk.user_code_only && (*node).type_ == pg_sys::NodeTag::T_XmlExpr {
                    return pg_sys::expression_tree_walker(node, Some(walker), context);
                }
                walk.found = Some(match (*node).type_ {
                    pg_sys::NodeTag::T_XmlExpr => "an XML expression".into(),
                    _ => "a subquery".into(),
                });
                return true;
            }
            _ => {}
        }
        if pg_sys::check_functions_in_node(node, Some(check_function), context) {
            return true;
        }
        pg_sys::expression_tree_walker(node, Some(walker), context)
    }
}

/// The first call in `expr` (an analyzed expression, or a list of them) that is not a built-in
/// LEAKPROOF function, described for a message; None when every call is one. With
/// `user_code_only`, only calls of functions that are not built in or are VOLATILE with effects
/// beyond their value (and domains' constraints)
/// count: built-in functions cannot be made to leak, but those not marked LEAKPROOF may say
/// what they were given in an error (a failed cast, a division by zero).
///
/// # Safety
/// `expr` is null or a valid analyzed expression tree.
pub unsafe fn first_leaky_call(expr: *mut pg_sys::Node, user_code_only: bool) -> Option<String> {
    // SAFETY: `expr` is null or a valid analyzed expression tree (this function's contract),
    // which is walk_expression's contract.
    unsafe { walk_expression(expr, user_code_only, &mut Vec::new()) }
}

/// [`first_leaky_call`], with the domains already looked at (a domain's constraint may coerce
/// to another domain, and back).
///
/// # Safety
/// As [`first_leaky_call`]: `expr` is null or a valid analyzed expression tree.
unsafe fn walk_expression(
    expr: *mut pg_sys::Node,
    user_code_only: bool,
    seen: &mut Vec<pg_sys::Oid>,
) -> Option<String> {
    let mut walk = Walk {
        found: None,
        user_code_only,
        domains: Vec::new(),
        types: Vec::new(),
    };
    // SAFETY: the walker only reads the tree; `walk` outlives the walk.
    unsafe { walker(expr, (&mut walk as *mut Walk).cast()) };
    if walk.found.is_some() {
        return walk.found;
    }
    if let Some(call) = walk
        .domains
        .into_iter()
        .find_map(|d| domain_leaky_call(d, user_code_only, seen))
    {
        return Some(call);
    }
    walk.types.into_iter().find_map(|t| {
        if seen.contains(&t) {
            return None;
        }
        type_leaky_call_in(t, user_code_only, seen)
    })
}

/// The first leaky call in the CHECK constraints and the defaults of domain `domain` and of
/// the domains it is based on. A domain's default runs in every tenant's inserts that leave
/// the column out, as a column's default does: read as one (no user's function; built-in ones
/// allowed, it reads no row). Its owner sets it at any time (`ALTER DOMAIN ... SET DEFAULT`,
/// refused while a protected column uses the domain; found by an attacker's pass).
/// Every query here runs as the caller (a table's owner, in the guard's ddl_command_start check)
/// and with the search_path pinned: an owner's own `=` ("char", "char") on its search_path made
/// the domain lookup find no constraint, and an ADD COLUMN of a domain whose CHECK sent each
/// tenant's values to the owner passed the guard (an attacker's pass).
fn domain_leaky_call(
    domain: pg_sys::Oid,
    user_code_only: bool,
    seen: &mut Vec<pg_sys::Oid>,
) -> Option<String> {
    if seen.contains(&domain) {
        return None;
    }
    seen.push(domain);
    // (domain, stored expression, whether it is the domain's default), constraints first.
    let exprs: Vec<(String, String, bool)> = crate::catalog::with_pinned_search_path(|| Spi::connect(|c| {
        let t = c.select(
            "WITH RECURSIVE d(oid) AS (SELECT $1::pg_catalog.oid \
               UNION SELECT t.typbasetype FROM pg_catalog.pg_type t JOIN d ON t.oid = d.oid WHERE t.typtype = 'd') \
             SELECT pg_catalog.format_type(con.contypid, NULL), con.conbin::pg_catalog.text, false \
               FROM pg_catalog.pg_constraint con WHERE con.contypid IN (SELECT oid FROM d) AND con.conbin IS NOT NULL \
             UNION ALL \
             SELECT pg_catalog.format_type(t.oid, NULL), t.typdefaultbin::pg_catalog.text, true \
               FROM pg_catalog.pg_type t WHERE t.oid IN (SELECT oid FROM d) AND t.typdefaultbin IS NOT NULL \
             ORDER BY 3",
            None,
            &[domain.into()],
        )?;
        let mut out = Vec::new();
        for r in t {
            out.push((
                r.get::<String>(1)?.unwrap_or_default(),
                r.get::<String>(2)?.unwrap_or_default(),
                r.get::<bool>(3)?.unwrap_or(false),
            ));
        }
        Ok::<_, pgrx::spi::Error>(out)
    }))
    .unwrap_or_else(|e| pgrx::error!("pg_tenancy: reading a domain's constraints failed: {e}"));
    exprs.into_iter().find_map(|(name, bin, default)| {
        let c = std::ffi::CString::new(bin).ok()?;
        // SAFETY: stringToNode parses PostgreSQL's own node text into a fresh tree.
        let call = unsafe {
            let node = pg_sys::stringToNode(c.as_ptr()) as *mut pg_sys::Node;
            walk_expression(node, user_code_only || default, seen)
        }?;
        Some(if default {
            format!("{call} (in the default of domain {name})")
        } else {
            format!("{call} (in a constraint of domain {name})")
        })
    })
}

/// Every type a value of type `typ` is made of: `typ`, the base types of a domain, the element
/// of an array, the attributes of a composite, the subtype of a range, the range of a
/// multirange, recursively.
pub const REACHABLE_TYPES: &str = concat!(
    "WITH RECURSIVE t(oid) AS ( \
      SELECT $1::pg_catalog.oid \
      UNION \
      SELECT x.child FROM t JOIN pg_catalog.pg_type ty ON ty.oid = t.oid ",
    crate::catalog::type_parts!(),
    ") SELECT oid FROM t"
);

/// `tenancy._reachable_types(typ)`: [`REACHABLE_TYPES`] as a set, for verify().
#[pg_extern(stable, parallel_safe, name = "_reachable_types")]
fn reachable_types(typ: pg_sys::Oid) -> SetOfIterator<'static, pg_sys::Oid> {
    let types: Vec<pg_sys::Oid> = crate::catalog::with_pinned_search_path(|| {
        Spi::connect(|c| {
            let t = c.select(REACHABLE_TYPES, None, &[typ.into()])?;
            let mut out = Vec::new();
            for r in t {
                if let Some(o) = r.get::<pg_sys::Oid>(1)? {
                    out.push(o);
                }
            }
            Ok::<_, pgrx::spi::Error>(out)
        })
    })
    .unwrap_or_else(|e| pgrx::error!("pg_tenancy: reading a type failed: {e}"));
    SetOfIterator::new(types)
}

/// The first code a value of type `typ` runs that is not a built-in LEAKPROOF function (with
/// `user_code_only`, that is not built in): the CHECK constraints of every domain it is made
/// of, and the canonical and subtype-difference functions of every range it is made of
/// (ANALYZE and GiST indexes call the latter over every row; those not built in are a user's
/// code whatever the mode). None when there is none.
pub fn type_leaky_call(typ: pg_sys::Oid, user_code_only: bool) -> Option<String> {
    type_leaky_call_in(typ, user_code_only, &mut Vec::new())
}

/// [`type_leaky_call`], with the domains and types already looked at.
fn type_leaky_call_in(
    typ: pg_sys::Oid,
    user_code_only: bool,
    seen: &mut Vec<pg_sys::Oid>,
) -> Option<String> {
    let q = format!(
        "SELECT ty.oid, ty.typtype::pg_catalog.text, \
                (SELECT f FROM pg_catalog.pg_range r, LATERAL pg_catalog.unnest(ARRAY[r.rngcanonical, r.rngsubdiff]::pg_catalog.oid[]) f \
                  WHERE r.rngtypid = ty.oid AND f >= {} ORDER BY f LIMIT 1) \
           FROM ({REACHABLE_TYPES}) reach JOIN pg_catalog.pg_type ty ON ty.oid = reach.oid \
          WHERE ty.typtype IN ('d', 'r') ORDER BY ty.oid",
        pg_sys::FirstNormalObjectId
    );
    let found: Vec<(pg_sys::Oid, String, Option<pg_sys::Oid>)> =
        crate::catalog::with_pinned_search_path(|| {
            Spi::connect(|c| {
                let t = c.select(&q, None, &[typ.into()])?;
                let mut out = Vec::new();
                for r in t {
                    out.push((
                        r.get::<pg_sys::Oid>(1)?.unwrap_or(pg_sys::InvalidOid),
                        r.get::<String>(2)?.unwrap_or_default(),
                        r.get::<pg_sys::Oid>(3)?,
                    ));
                }
                Ok::<_, pgrx::spi::Error>(out)
            })
        })
        .unwrap_or_else(|e| pgrx::error!("pg_tenancy: reading a type failed: {e}"));
    if let Some(call) = found
        .into_iter()
        .find_map(|(t, kind, range_fn)| match kind.as_str() {
            "d" => domain_leaky_call(t, user_code_only, seen),
            _ => range_fn.map(|f| {
                format!(
                    "{} (a function of range type {})",
                    describe_function(f),
                    type_name(t)
                )
            }),
        })
    {
        return Some(call);
    }
    // A cast to or from a type the value is made of, with a function of a user's: it runs
    // wherever such a value is converted (an INSERT of a text into an enum column), and its
    // function's owner may replace it at any time (a reviewer's pass). Not one a superuser
    // owns (an extension's, citext's or hstore's: the trusted migration role's).
    let q = format!(
        "SELECT c.castfunc FROM pg_catalog.pg_cast c \
          WHERE c.castfunc >= {0} \
            AND NOT (SELECT r.rolsuper FROM pg_catalog.pg_proc f JOIN pg_catalog.pg_roles r ON r.oid = f.proowner \
                      WHERE f.oid = c.castfunc) \
            AND (c.castsource IN (SELECT oid FROM ({REACHABLE_TYPES}) r WHERE r.oid >= {0}) \
                 OR c.casttarget IN (SELECT oid FROM ({REACHABLE_TYPES}) r WHERE r.oid >= {0})) \
          ORDER BY 1 LIMIT 1",
        pg_sys::FirstNormalObjectId
    );
    let cast: Option<pg_sys::Oid> = crate::catalog::with_pinned_search_path(|| {
        Spi::connect(|c| {
            let t = c.select(&q, Some(1), &[typ.into()])?;
            if t.is_empty() {
                return Ok(None);
            }
            t.first().get_one::<pg_sys::Oid>()
        })
    })
    .unwrap_or_else(|e| pgrx::error!("pg_tenancy: reading a type's casts failed: {e}"));
    cast.map(|f| {
        format!(
            "{} (a cast to or from a type of {})",
            describe_function(f),
            type_name(typ)
        )
    })
}

fn type_name(typ: pg_sys::Oid) -> String {
    // SAFETY: format_type_be returns a palloc'd, NUL-terminated string.
    unsafe {
        let p = pg_sys::format_type_be(typ);
        let s = std::ffi::CStr::from_ptr(p).to_string_lossy().into_owned();
        pg_sys::pfree(p.cast());
        s
    }
}

/// verify()'s view of a column's type: [`type_leaky_call`].
#[pg_extern(stable, parallel_safe, name = "_type_leaky_call")]
fn type_leaky_call_sql(typ: pg_sys::Oid, user_code_only: bool) -> Option<String> {
    type_leaky_call(typ, user_code_only)
}

/// verify()'s view of an expression PostgreSQL stored in its catalog, named by where it is:
/// `source` one of `conbin` (a `pg_constraint` row by oid), `indexprs` and `indpred` (a
/// `pg_index` row by its index's oid), `stxexprs` (a `pg_statistic_ext` row by oid), `adbin` (a
/// `pg_attrdef` row by oid) and `partexprs` (a `pg_partitioned_table` row by its table's oid).
/// The first call that is not a built-in LEAKPROOF function (with `user_code_only`, the first
/// that is not built in or acts beyond its value), or NULL; evaluates nothing. It reads the
/// node tree from the catalog itself: `stringToNode` trusts its input, and the function this
/// replaces, `_leaky_call(text, ...)`, parsed whatever text its caller gave (an attacker's pass
/// crashed the server with `SELECT tenancy._leaky_call('{CONST', true)`).
#[pg_extern(stable, parallel_safe, name = "_leaky_expr")]
fn leaky_expr(source: &str, objid: pg_sys::Oid, user_code_only: bool) -> Option<String> {
    let sql = match source {
        "conbin" => "SELECT conbin::pg_catalog.text FROM pg_catalog.pg_constraint WHERE oid OPERATOR(pg_catalog.=) $1",
        "indexprs" => "SELECT indexprs::pg_catalog.text FROM pg_catalog.pg_index WHERE indexrelid OPERATOR(pg_catalog.=) $1",
        "indpred" => "SELECT indpred::pg_catalog.text FROM pg_catalog.pg_index WHERE indexrelid OPERATOR(pg_catalog.=) $1",
        "stxexprs" => "SELECT stxexprs::pg_catalog.text FROM pg_catalog.pg_statistic_ext WHERE oid OPERATOR(pg_catalog.=) $1",
        "adbin" => "SELECT adbin::pg_catalog.text FROM pg_catalog.pg_attrdef WHERE oid OPERATOR(pg_catalog.=) $1",
        "partexprs" => "SELECT partexprs::pg_catalog.text FROM pg_catalog.pg_partitioned_table WHERE partrelid OPERATOR(pg_catalog.=) $1",
        _ => crate::errors::raise(
            crate::errors::INVALID_PARAMETER,
            format!("tenancy._leaky_expr: unknown source \"{source}\""),
            "Name one of conbin, indexprs, indpred, stxexprs, adbin, partexprs.",
        ),
    };
    let text: String = crate::catalog::read_one(sql, &[objid.into()])?;
    leaky_call_text(&text, user_code_only)
}

/// [`first_leaky_call`] of an expression stored as node text: only text read from PostgreSQL's
/// catalog (`stringToNode` trusts its input).
pub fn leaky_call_text(expr: &str, user_code_only: bool) -> Option<String> {
    let c = std::ffi::CString::new(expr).ok()?;
    // SAFETY: stringToNode parses PostgreSQL's own node text into a fresh tree.
    unsafe {
        let node = pg_sys::stringToNode(c.as_ptr()) as *mut pg_sys::Node;
        first_leaky_call(node, user_code_only)
    }
}
