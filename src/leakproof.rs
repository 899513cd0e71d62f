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
    /// Only functions that are not built in (nor nodes that run a user's code) offend.
    user_code_only: bool,
}

/// Whether `func` is one of PostgreSQL's own functions (created by initdb, below the first
/// normal object id) and marked LEAKPROOF.
fn builtin_leakproof(func: pg_sys::Oid) -> bool {
    // SAFETY: a syscache lookup of a function by oid.
    u32::from(func) < pg_sys::FirstNormalObjectId && unsafe { pg_sys::get_func_leakproof(func) }
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

#[pg_guard]
unsafe extern "C-unwind" fn check_function(func: pg_sys::Oid, context: *mut c_void) -> bool {
    // SAFETY: `context` is the Walk that first_leaky_call passed down.
    let walk = unsafe { &mut *(context as *mut Walk) };
    let builtin = u32::from(func) < pg_sys::FirstNormalObjectId;
    if builtin_leakproof(func) || (walk.user_code_only && builtin) {
        return false;
    }
    walk.found = Some(describe_function(func));
    true
}

#[pg_guard]
unsafe extern "C-unwind" fn walker(node: *mut pg_sys::Node, context: *mut c_void) -> bool {
    if node.is_null() {
        return false;
    }
    // SAFETY: `node` is a node of an analyzed expression tree, `context` our Walk.
    unsafe {
        match (*node).type_ {
            // A domain's CHECK constraints run code of the domain's owner; a subquery or a
            // parameter has no place in these expressions.
            pg_sys::NodeTag::T_CoerceToDomain
            | pg_sys::NodeTag::T_SubLink
            | pg_sys::NodeTag::T_SubPlan
            | pg_sys::NodeTag::T_XmlExpr => {
                let walk = &mut *(context as *mut Walk);
                if walk.user_code_only && (*node).type_ == pg_sys::NodeTag::T_XmlExpr {
                    return pg_sys::expression_tree_walker(node, Some(walker), context);
                }
                walk.found = Some(match (*node).type_ {
                    pg_sys::NodeTag::T_CoerceToDomain => "a domain's constraints".into(),
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
/// `user_code_only`, only calls of functions that are not built in (and domains' constraints)
/// count: built-in functions cannot be made to leak, but those not marked LEAKPROOF may say
/// what they were given in an error (a failed cast, a division by zero).
///
/// # Safety
/// `expr` is null or a valid analyzed expression tree.
pub unsafe fn first_leaky_call(expr: *mut pg_sys::Node, user_code_only: bool) -> Option<String> {
    let mut walk = Walk {
        found: None,
        user_code_only,
    };
    // SAFETY: the walker only reads the tree; `walk` outlives the walk.
    unsafe { walker(expr, (&mut walk as *mut Walk).cast()) };
    walk.found
}

/// verify()'s view of a stored expression (`pg_constraint.conbin`, `pg_index.indexprs`,
/// `pg_index.indpred`, `pg_statistic_ext.stxexprs`, as text): the first call that is not a
/// built-in LEAKPROOF function (with `user_code_only`, the first that is not built in), or
/// NULL. Reads the node tree PostgreSQL stored; evaluates nothing.
#[pg_extern(stable, parallel_safe, name = "_leaky_call")]
fn leaky_call(expr: &str, user_code_only: bool) -> Option<String> {
    leaky_call_text(expr, user_code_only)
}

/// [`first_leaky_call`] of an expression stored as node text.
pub fn leaky_call_text(expr: &str, user_code_only: bool) -> Option<String> {
    let c = std::ffi::CString::new(expr).ok()?;
    // SAFETY: stringToNode parses PostgreSQL's own node text into a fresh tree.
    unsafe {
        let node = pg_sys::stringToNode(c.as_ptr()) as *mut pg_sys::Node;
        first_leaky_call(node, user_code_only)
    }
}
