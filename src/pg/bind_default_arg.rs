//! `tenancy.bind(token)`'s default argument, supplied once per backend instead of every call.
//!
//! The SPEC's signature is `tenancy.bind(token text, scope text DEFAULT 'transaction')`, and
//! applications call it with one argument in every transaction. For such a call PostgreSQL's
//! planner reads `proargdefaults` from the catalog and parses its node text again
//! (`expand_function_arguments` -> `fetch_function_defaults` -> `stringToNode`), every time.
//! The planner hook (`binding_param::planner`) calls [`fill`] first: a one-argument call of
//! `tenancy.bind` at the top of a FROM-less SELECT's target list (or under `IS [NOT] NULL`
//! there) gets the default as a constant built from a copy of that same catalog value, read
//! once and forgotten at every pg_proc invalidation (so `CREATE OR REPLACE FUNCTION` with
//! another default, or a re-created extension, is read again). The planner then finds all
//! arguments present and adds nothing. Parse analysis still reads the default once per call
//! (`func_get_detail`, for the argument types); no hook runs there.
//!
//! It changes no result: the argument is what PostgreSQL would have added, from the same row
//! of the same function (the cache is keyed by the function's oid). Anything else, a call with
//! named arguments, a default that is not a plain text constant, is left to PostgreSQL.

use pgrx::pg_sys;
use pgrx::prelude::*;
use std::cell::{Cell, RefCell};
use std::ffi::{c_int, c_void};

/// The default of `tenancy.bind(text, text)` as last read from the catalog.
struct BindDefault {
    funcid: pg_sys::Oid,
    typmod: i32,
    collation: pg_sys::Oid,
    text: Vec<u8>,
}

thread_local! {
    /// None: not read since the last pg_proc invalidation; Some(None): no such function, or a
    /// default this module does not supply.
    static BIND_DEFAULT: RefCell<Option<Option<BindDefault>>> = const { RefCell::new(None) };
    /// One-argument calls given their default here (read by the tests).
    static FILLED: Cell<u64> = const { Cell::new(0) };
}

pub fn init() {
    unsafe {
        pg_sys::CacheRegisterSyscacheCallback(
            pg_sys::SysCacheIdentifier::PROCOID as c_int,
            Some(proc_invalidated),
            pg_sys::Datum::from(0),
        );
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn proc_invalidated(_arg: pg_sys::Datum, _cache: c_int, _hash: u32) {
    // No catalog access in an invalidation callback: only forget.
    BIND_DEFAULT.with(|d| *d.borrow_mut() = None);
}

/// How many one-argument calls of `tenancy.bind` this backend has given their default.
#[cfg(any(test, feature = "pg_test"))]
pub fn filled() -> u64 {
    FILLED.with(|f| f.get())
}

/// Supplies the default argument of one-argument `tenancy.bind(...)` calls at the top of the
/// target list of a SELECT without FROM (`SELECT tenancy.bind($1)`, also `... IS NOT NULL`),
/// and only there.
/// Plain Rust over the parse tree until such a call is found.
pub unsafe fn fill(q: *mut pg_sys::Query) {
    let q = &mut *q;
    if q.commandType != pg_sys::CmdType::CMD_SELECT
        || !q.utilityStmt.is_null()
        || !(q.rtable.is_null() || (*q.rtable).length == 0)
        || q.targetList.is_null()
    {
        return;
    }
    for i in 0..(*q.targetList).length as usize {
        let tle = (*(*q.targetList).elements.add(i)).ptr_value as *mut pg_sys::TargetEntry;
        if tle.is_null() || (*tle).expr.is_null() {
            continue;
        }
        let mut node = (*tle).expr as *mut pg_sys::Node;
        // `SELECT tenancy.bind($1) IS NOT NULL`, for applications that do not read the result.
        if (*node).type_ == pg_sys::NodeTag::T_NullTest {
            node = (*(node as *mut pg_sys::NullTest)).arg as *mut pg_sys::Node;
        }
        if node.is_null() || (*node).type_ != pg_sys::NodeTag::T_FuncExpr {
            continue;
        }
        let f = &mut *(node as *mut pg_sys::FuncExpr);
        if f.funcretset
            || f.funcvariadic
            || f.funcresulttype != pg_sys::JSONBOID
            || f.args.is_null()
            || (*f.args).length != 1
        {
            continue;
        }
        let arg = (*(*f.args).elements).ptr_value as *mut pg_sys::Node;
        if arg.is_null() || (*arg).type_ == pg_sys::NodeTag::T_NamedArgExpr {
            continue;
        }
        let Some(c) = default_const(f.funcid) else {
            continue;
        };
        f.args = pg_sys::lappend(f.args, c as *mut c_void);
        FILLED.with(|n| n.set(n.get() + 1));
    }
}

/// The default as a new Const when `funcid` is `tenancy.bind(text, text)` with a default this
/// module supplies (the catalog is read only when nothing is remembered).
unsafe fn default_const(funcid: pg_sys::Oid) -> Option<*mut pg_sys::Const> {
    if BIND_DEFAULT.with(|d| d.borrow().is_none()) {
        let d = read_bind_default();
        BIND_DEFAULT.with(|slot| *slot.borrow_mut() = Some(d));
    }
    BIND_DEFAULT.with(|slot| {
        let slot = slot.borrow();
        let d = slot.as_ref()?.as_ref().filter(|d| d.funcid == funcid)?;
        let value = pg_sys::cstring_to_text_with_len(d.text.as_ptr().cast(), d.text.len() as c_int);
        Some(pg_sys::makeConst(
            pg_sys::TEXTOID,
            d.typmod,
            d.collation,
            -1,
            pg_sys::Datum::from(value),
            false,
            false,
        ))
    })
}

/// `tenancy.bind(text, text)` and its one default, when that is a non-null text constant.
/// Looked up by name in the `tenancy` schema without a privilege check (this runs for other
/// roles' statements; it reads what the planner itself would read).
unsafe fn read_bind_default() -> Option<BindDefault> {
    let nsp = pg_sys::get_namespace_oid(c"tenancy".as_ptr(), true);
    if nsp == pg_sys::InvalidOid {
        return None;
    }
    let argtypes = [pg_sys::TEXTOID, pg_sys::TEXTOID];
    let args = pg_sys::buildoidvector(argtypes.as_ptr(), 2);
    let tup = pg_sys::SearchSysCache3(
        pg_sys::SysCacheIdentifier::PROCNAMEARGSNSP as c_int,
        pg_sys::Datum::from(c"bind".as_ptr()),
        pg_sys::Datum::from(args),
        pg_sys::Datum::from(nsp),
    );
    pg_sys::pfree(args.cast());
    if tup.is_null() {
        return None;
    }
    let form = &*(pg_sys::GETSTRUCT(tup) as *mut pg_sys::FormData_pg_proc);
    let funcid = form.oid;
    let shape_ok =
        form.pronargdefaults == 1 && form.prorettype == pg_sys::JSONBOID && !form.proretset;
    let mut isnull = true;
    let datum = pg_sys::SysCacheGetAttr(
        pg_sys::SysCacheIdentifier::PROCOID as c_int,
        tup,
        pg_sys::Anum_pg_proc_proargdefaults as pg_sys::AttrNumber,
        &mut isnull,
    );
    let result = if shape_ok && !isnull {
        let text = pg_sys::text_to_cstring(datum.cast_mut_ptr());
        let defaults = pg_sys::stringToNode(text) as *mut pg_sys::List;
        pg_sys::pfree(text.cast());
        text_default(defaults).map(|(typmod, collation, text)| BindDefault {
            funcid,
            typmod,
            collation,
            text,
        })
    } else {
        None
    };
    pg_sys::ReleaseSysCache(tup);
    result
}

/// The single default of the list, when it is a non-null text Const: (typmod, collation, bytes).
unsafe fn text_default(defaults: *mut pg_sys::List) -> Option<(i32, pg_sys::Oid, Vec<u8>)> {
    if defaults.is_null() || (*defaults).type_ != pg_sys::NodeTag::T_List || (*defaults).length != 1
    {
        return None;
    }
    let node = (*(*defaults).elements).ptr_value as *mut pg_sys::Node;
    if node.is_null() || (*node).type_ != pg_sys::NodeTag::T_Const {
        return None;
    }
    let c = &*(node as *mut pg_sys::Const);
    if c.consttype != pg_sys::TEXTOID || c.constisnull || c.constlen != -1 || c.constbyval {
        return None;
    }
    let v = c.constvalue.cast_mut_ptr::<pg_sys::varlena>();
    if pgrx::varlena::varatt_is_1b_e(v) || pgrx::varlena::varatt_is_4b_c(v) {
        return None;
    }
    Some((
        c.consttypmod,
        c.constcollid,
        pgrx::varlena::varlena_to_byte_slice(v).to_vec(),
    ))
}
