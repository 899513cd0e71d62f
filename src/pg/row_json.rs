//! A row of an audited table as jsonb, the same value `to_jsonb(row)` gives, without the work
//! `to_jsonb` repeats for every row.
//!
//! `to_jsonb` of a row looks up the row type and, for every column of every row, the column's
//! base type, element type, row-type-ness and output function in the system caches, then turns
//! integers and numerics into text and parses the text back into a numeric. Here each column's
//! conversion is decided once per statement: integers become jsonb numbers directly, numerics
//! are stored as they are (NaN and the infinities become strings, as `to_jsonb` makes them),
//! booleans, text, varchar, uuid and jsonb are copied, dates and timestamps formatted as
//! `to_jsonb` formats them, and every other built-in type (domains over them included) is
//! converted by `to_jsonb` of the column's value alone, which is what `to_jsonb` of the row
//! does for that column.
//!
//! Except for types defined in the database: `to_jsonb` of a value whose type is not built in
//! (an enum, a range, a base type of an extension; or an array, a composite or a domain that
//! reaches one) calls a cast of that type to `json` if there is one, a function its owner
//! wrote, and the audit trigger converts every writer's rows, the superuser's too. So a column
//! whose type reaches one is recorded as the text its output function gives (PostgreSQL's own
//! for enums, ranges, arrays and composites; only a superuser can create a base type), a JSON
//! string, and no cast ever runs (`audit_never_runs_a_types_cast_to_json` in
//! `tests/integration/tests/trust_boundaries.rs`).

use crate::pg::jsonb_build::{object_of, scalar, string_value};
use pgrx::pg_sys::{self, Datum};
use std::ffi::CString;

/// How one column's value becomes a jsonb value.
enum Kind {
    Int2,
    Int4,
    Int8,
    Numeric,
    Bool,
    /// text and varchar: the string as stored.
    Text,
    Uuid,
    /// date, timestamp and timestamptz: the ISO 8601 text to_jsonb gives, of this type.
    DateTime(pg_sys::Oid),
    /// jsonb: the value itself.
    Jsonb,
    /// `to_jsonb` of the value, called with an expression of the column's type (built in).
    Other(Box<pg_sys::FmgrInfo>),
    /// The text of the type's output function, as a JSON string: a type that reaches one
    /// defined in the database ([`reaches_a_defined_type`]).
    Output(Box<pg_sys::FmgrInfo>),
}

/// A live column of the audited table.
pub struct Column {
    pub name: String,
    key_name: CString,
    /// The key as `jsonb_out` writes it, with the ": " that follows it.
    key_text: Vec<u8>,
    pub attnum: i32,
    pub typlen: i16,
    pub byval: bool,
    kind: Kind,
}

/// The live columns of a table, each with its conversion.
pub struct RowJson {
    pub columns: Vec<Column>,
}

impl RowJson {
    /// # Safety
    /// `rel` must be an open relation. The conversions of columns left to `to_jsonb` keep
    /// state in the current memory context: it must outlive every [`RowJson::object`] call.
    pub unsafe fn new(rel: pg_sys::Relation) -> RowJson {
        // SAFETY: `rel` is open (this function's contract): its tuple descriptor is valid.
        let desc = unsafe { (*rel).rd_att };
        let mut columns = Vec::new();
        // SAFETY: `desc` is the open relation's descriptor: attrs holds natts entries, each
        // with a NUL-terminated name (copied into `key_name`).
        for i in 0..unsafe { (*desc).natts } as usize {
            // SAFETY: `i` is below natts (above).
            let att = unsafe { (*desc).attrs.as_ptr().add(i) };
            // SAFETY: `att` points at one of the descriptor's attributes (above).
            if unsafe { (*att).attisdropped } {
                continue;
            }
            // SAFETY: as above; attname is NUL-terminated within its NAMEDATALEN bytes.
            let key_name =
                unsafe { std::ffi::CStr::from_ptr((*att).attname.data.as_ptr()) }.to_owned();
            let mut key_text = Vec::new();
            escape_json(&mut key_text, key_name.as_bytes());
            key_text.extend_from_slice(b": ");
            // SAFETY: `att` as above; kind_of's state goes into the current memory context,
            // which outlives the calls of `object` (this function's contract).
            unsafe {
                columns.push(Column {
                    name: key_name.to_string_lossy().into_owned(),
                    key_name,
                    key_text,
                    attnum: (*att).attnum as i32,
                    typlen: (*att).attlen,
                    byval: (*att).attbyval,
                    kind: kind_of((*att).atttypid),
                });
            }
        }
        // In the order jsonb keeps an object's keys (shorter first, then bytewise): the sort
        // that ends every object then finds them sorted already.
        columns.sort_by(|a, b| {
            let (a, b) = (a.key_name.as_bytes(), b.key_name.as_bytes());
            a.len().cmp(&b.len()).then(a.cmp(b))
        });
        RowJson { columns }
    }

    /// Which columns `include` selects, for [`RowJson::object`].
    pub fn select(&self, include: impl Fn(&str) -> bool) -> Vec<bool> {
        self.columns.iter().map(|c| include(&c.name)).collect()
    }

    /// Whether [`RowJson::object`] can write the text of an object of these columns: none is
    /// of a type left to `to_jsonb`, or jsonb.
    pub fn textual(&self, selected: &[bool]) -> bool {
        self.columns
            .iter()
            .zip(selected)
            .all(|(c, &s)| !s || !matches!(c.kind, Kind::Jsonb | Kind::Other(_)))
    }

    /// The jsonb object of the row's selected columns, keyed by column name. With `text` (only
    /// where [`RowJson::textual`] holds), also appends the text `jsonb_out` gives for it, so the
    /// record's hash needs no second pass over the jsonb.
    ///
    /// Built by [`object_of`]: the columns are kept in jsonb's key order, so an object of
    /// scalars needs no sort.
    ///
    /// # Safety
    /// `slot` must hold a row of the relation this was made for; `text` only where
    /// [`RowJson::textual`] holds for `selected`. The jsonb is palloc'd in the current memory
    /// context, and may point into the row's values until it is copied.
    pub unsafe fn object(
        &self,
        slot: *mut pg_sys::TupleTableSlot,
        selected: &[bool],
        mut text: Option<&mut Vec<u8>>,
    ) -> Datum {
        if let Some(t) = text.as_deref_mut() {
            t.push(b'{');
        }
        // Every column at once: one call instead of one per column.
        // SAFETY: `slot` holds a row (this function's contract); afterwards its values and
        // nulls arrays are valid for every attribute of its descriptor.
        let (values, nulls) = unsafe {
            pg_sys::slot_getallattrs(slot);
            ((*slot).tts_values, (*slot).tts_isnull)
        };
        let columns = self.columns.iter().zip(selected).filter(|(_, &s)| s);
        let mut pairs: Vec<pg_sys::JsonbPair> = Vec::with_capacity(self.columns.len());
        for (i, (col, _)) in columns.enumerate() {
            let key = string_value(col.key_name.as_ptr(), col.key_name.as_bytes().len());
            let at = (col.attnum - 1) as usize;
            // SAFETY: `col.attnum` is a live column of the slot's relation (made by `new` from
            // its descriptor), so `at` is below natts.
            let isnull = unsafe { *nulls.add(at) };
            if let Some(t) = text.as_deref_mut() {
                if i > 0 {
                    t.extend_from_slice(b", ");
                }
                t.extend_from_slice(&col.key_text);
                if isnull {
                    t.extend_from_slice(b"null");
                }
            }
            let value = if isnull {
                scalar(pg_sys::jbvType::jbvNull)
            } else {
                // SAFETY: `at` as above; the datum is not null and of the column's type, the
                // one `col.kind` was chosen for; `text` is asked only where `textual` holds
                // (this function's contract), so never of jsonb or `to_jsonb` columns.
                unsafe { col.value(*values.add(at), text.as_deref_mut()) }
            };
            pairs.push(pg_sys::JsonbPair {
                key,
                value,
                order: i as u32,
            });
        }
        if let Some(t) = text {
            t.push(b'}');
        }
        // SAFETY: every key is a jbvString of a column name (`key_name`, owned by self); every
        // value a scalar or a jbvBinary jsonb container made by `Column::value`, pointing at
        // memory alive until this call has copied it.
        let jsonb = unsafe { object_of(&mut pairs) };
        Datum::from(jsonb)
    }
}

impl Column {
    /// The jsonb value of a non-null datum of this column; with `text`, also appends the
    /// value's text as `jsonb_out` writes it (never asked of jsonb or `to_jsonb` columns).
    ///
    /// # Safety
    /// `d` must be a non-null datum of the column's type, alive as long as the value is used;
    /// `text` must not be given for jsonb or `to_jsonb` columns. Strings and numerics the value
    /// points at are palloc'd in the current memory context (or are `d`'s own).
    unsafe fn value(&self, d: Datum, text: Option<&mut Vec<u8>>) -> pg_sys::JsonbValue {
        let number = |n: pg_sys::Numeric| {
            let mut v = scalar(pg_sys::jbvType::jbvNumeric);
            v.val.numeric = n;
            v
        };
        let integer = |i: i64, text: Option<&mut Vec<u8>>| {
            if let Some(t) = text {
                t.extend_from_slice(i.to_string().as_bytes());
            }
            // SAFETY: int64_to_numeric takes any integer and returns a palloc'd numeric.
            number(unsafe { pg_sys::int64_to_numeric(i) })
        };
        // SAFETY: called only with the NUL-terminated strings numeric_out and
        // JsonEncodeDateTime return (palloc'd, alive while the bytes are used).
        let cstr = |p: *const std::ffi::c_char| unsafe { std::ffi::CStr::from_ptr(p) }.to_bytes();
        match &self.kind {
            Kind::Int2 => integer(d.value() as i16 as i64, text),
            Kind::Int4 => integer(d.value() as i32 as i64, text),
            Kind::Int8 => integer(d.value() as i64, text),
            Kind::Numeric => {
                // SAFETY: `d` is a non-null numeric datum (this function's contract): a varlena,
                // detoasted here (a copy in the current memory context when it was toasted or
                // had a short header), which the numeric functions require.
                let n = unsafe { pg_sys::pg_detoast_datum(d.cast_mut_ptr()) } as pg_sys::Numeric;
                // SAFETY: `n` is a detoasted numeric (above).
                let special = unsafe { pg_sys::numeric_is_nan(n) || pg_sys::numeric_is_inf(n) };
                if !special && text.is_none() {
                    return number(n);
                }
                // SAFETY: numeric_out takes the detoasted numeric and returns a palloc'd
                // NUL-terminated string, never NULL.
                let shown = unsafe {
                    pgrx::fcinfo::direct_function_call_as_datum(
                        pg_sys::numeric_out,
                        &[Some(Datum::from(n))],
                    )
                }
                .expect("numeric_out")
                .cast_mut_ptr::<std::ffi::c_char>();
                let bytes = cstr(shown);
                if special {
                    // Not a JSON number: to_jsonb makes it the string numeric_out gives.
                    if let Some(t) = text {
                        escape_json(t, bytes);
                    }
                    string_value(shown, bytes.len())
                } else {
                    if let Some(t) = text {
                        t.extend_from_slice(bytes);
                    }
                    number(n)
                }
            }
            Kind::Bool => {
                let b = d.value() != 0;
                if let Some(t) = text {
                    t.extend_from_slice(if b { b"true" } else { b"false" });
                }
                let mut v = scalar(pg_sys::jbvType::jbvBool);
                v.val.boolean = b;
                v
            }
            Kind::Text => {
                // SAFETY: `d` is a non-null text or varchar datum (this function's contract),
                // detoasted (a copy in the current memory context when it was toasted or
                // compressed; a short header may stay), so its header gives the length of the
                // inline data that follows it.
                let t = unsafe { pg_sys::pg_detoast_datum_packed(d.cast_mut_ptr()) };
                // SAFETY: `t` is an untoasted varlena (above).
                let (p, len) = unsafe { (pgrx::vardata_any(t), pgrx::varsize_any_exhdr(t)) };
                if let Some(out) = text {
                    // SAFETY: `len` bytes of string data start at `p`, inside `t` (above).
                    escape_json(out, unsafe {
                        std::slice::from_raw_parts(p.cast::<u8>(), len)
                    });
                }
                string_value(p as *mut std::ffi::c_char, len)
            }
            Kind::Uuid => {
                // SAFETY: a non-null uuid datum points at its 16 bytes (this function's
                // contract).
                let bytes = unsafe { std::slice::from_raw_parts(d.cast_mut_ptr::<u8>(), 16) };
                let shown = uuid::Uuid::from_slice(bytes)
                    .expect("uuid")
                    .hyphenated()
                    .to_string();
                if let Some(t) = text {
                    escape_json(t, shown.as_bytes());
                }
                // SAFETY: palloc returns `shown.len()` (36) writable bytes in the current
                // memory context, or raises.
                let p = unsafe { pg_sys::palloc(shown.len()) } as *mut u8;
                // SAFETY: `p` has room for `shown.len()` bytes (above), and `shown` is a
                // distinct Rust allocation of that many bytes.
                unsafe { std::ptr::copy_nonoverlapping(shown.as_ptr(), p, shown.len()) };
                string_value(p.cast(), shown.len())
            }
            Kind::DateTime(typ) => {
                // SAFETY: `d` is a non-null datum of `typ` (date, timestamp or timestamptz, by
                // value); with no buffer given, JsonEncodeDateTime returns a palloc'd
                // NUL-terminated string; no time zone is passed, as to_jsonb passes none.
                let p = unsafe {
                    pg_sys::JsonEncodeDateTime(std::ptr::null_mut(), d, *typ, std::ptr::null())
                };
                if let Some(t) = text {
                    escape_json(t, cstr(p));
                }
                string_value(p, cstr(p).len())
            }
            // SAFETY: `d` is a non-null jsonb datum (this function's contract).
            Kind::Jsonb => unsafe { binary(d) },
            Kind::Output(flinfo) => {
                let flinfo = &**flinfo as *const _ as *mut pg_sys::FmgrInfo;
                // SAFETY: `flinfo` is the column type's output function (kind_of), `d` a
                // non-null datum of that type; it returns a palloc'd NUL-terminated string.
                // The output functions PostgreSQL calls through OutputFunctionCall may keep a
                // cache in fn_extra (array_out, record_out, range_out): the FmgrInfo is this
                // column's own, boxed, and only this backend uses it.
                let p = unsafe { pg_sys::OutputFunctionCall(flinfo, d) };
                if let Some(t) = text {
                    escape_json(t, cstr(p));
                }
                string_value(p, cstr(p).len())
            }
            Kind::Other(flinfo) => {
                let flinfo = &**flinfo as *const _ as *mut pg_sys::FmgrInfo;
                // SAFETY: `flinfo` is to_jsonb's, with a call expression of the column's type
                // (kind_of), and `d` a non-null datum of that type; to_jsonb returns a jsonb,
                // never NULL. In PostgreSQL 15 to_jsonb does not write to its FmgrInfo (no
                // fn_extra cache), so the pointer made from a shared reference is only read.
                unsafe { binary(pg_sys::FunctionCall1Coll(flinfo, pg_sys::InvalidOid, d)) }
            }
        }
    }
}

/// PostgreSQL's escape_json: the string in double quotes; quotes, backslashes and the
/// control characters below U+0020 escaped (\b \f \n \r \t by name, others as \u00xx).
pub fn escape_json(out: &mut Vec<u8>, s: &[u8]) {
    out.push(b'"');
    let mut rest = s;
    while let Some(i) = rest
        .iter()
        .position(|&c| c < b' ' || c == b'"' || c == b'\\')
    {
        out.extend_from_slice(&rest[..i]);
        match rest[i] {
            b'\x08' => out.extend_from_slice(b"\\b"),
            b'\x0c' => out.extend_from_slice(b"\\f"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b'\t' => out.extend_from_slice(b"\\t"),
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            c => out.extend_from_slice(format!("\\u{:04x}", c).as_bytes()),
        }
        rest = &rest[i + 1..];
    }
    out.extend_from_slice(rest);
    out.push(b'"');
}

/// How a column of type `typ` becomes jsonb.
///
/// # Safety
/// Inside a transaction (the catalog is read for types left to `to_jsonb`); the current
/// memory context holds the call expression of those and must outlive their use.
unsafe fn kind_of(typ: pg_sys::Oid) -> Kind {
    match typ {
        pg_sys::INT2OID => Kind::Int2,
        pg_sys::INT4OID => Kind::Int4,
        pg_sys::INT8OID => Kind::Int8,
        pg_sys::NUMERICOID => Kind::Numeric,
        pg_sys::BOOLOID => Kind::Bool,
        pg_sys::TEXTOID | pg_sys::VARCHAROID => Kind::Text,
        pg_sys::UUIDOID => Kind::Uuid,
        pg_sys::DATEOID | pg_sys::TIMESTAMPOID | pg_sys::TIMESTAMPTZOID => Kind::DateTime(typ),
        pg_sys::JSONBOID => Kind::Jsonb,
        // SAFETY: inside a transaction (this function's contract).
        _ if unsafe { reaches_a_defined_type(typ, 0) } => {
            let (mut func, mut varlena) = (pg_sys::InvalidOid, false);
            // SAFETY: as for to_jsonb below: a zeroed FmgrInfo filled by fmgr_info in the
            // current memory context, boxed so that it does not move; getTypeOutputInfo raises
            // for a type without an output function (none that a column can have).
            let mut flinfo: Box<pg_sys::FmgrInfo> = Box::new(unsafe { std::mem::zeroed() });
            // SAFETY: as above.
            unsafe {
                pg_sys::getTypeOutputInfo(typ, &mut func, &mut varlena);
                pg_sys::fmgr_info(func, &mut *flinfo);
            }
            Kind::Output(flinfo)
        }
        _ => {
            // to_jsonb(anyelement) learns its argument's type from the call expression.
            // SAFETY: FmgrInfo is plain data (pointers, integers, an optional function
            // pointer), valid when zeroed; fmgr_info fills it for to_jsonb, a built-in
            // function, with fn_mcxt the current memory context. The call expression (a
            // FuncExpr over a typed NULL constant, as makeFuncExpr and makeNullConst build it)
            // is palloc'd in the same context, which outlives the conversion (this function's
            // contract). The FmgrInfo is boxed, so it does not move while PostgreSQL refers to
            // it.
            let mut flinfo: Box<pg_sys::FmgrInfo> = Box::new(unsafe { std::mem::zeroed() });
            // SAFETY: as above.
            unsafe {
                pg_sys::fmgr_info(pg_sys::Oid::from(pg_sys::F_TO_JSONB), &mut *flinfo);
                let arg = pg_sys::makeNullConst(typ, -1, pg_sys::InvalidOid);
                flinfo.fn_expr = pg_sys::makeFuncExpr(
                    pg_sys::Oid::from(pg_sys::F_TO_JSONB),
                    pg_sys::JSONBOID,
                    pg_sys::lappend(std::ptr::null_mut(), arg.cast()),
                    pg_sys::InvalidOid,
                    pg_sys::InvalidOid,
                    pg_sys::CoercionForm::COERCE_EXPLICIT_CALL,
                )
                .cast();
            }
            Kind::Other(flinfo)
        }
    }
}

/// Whether `to_jsonb` of a value of `typ` could call a cast to `json` (jsonb.c's
/// `jsonb_categorize_type`, which looks for one on any type not built in that is neither an
/// array nor a composite, after looking through domains): `typ`, its base type, its element
/// type or a field of its row type, at any depth, is defined in the database (an OID from
/// `FirstNormalObjectId` on). Deeper than 32 levels counts as reaching one.
///
/// # Safety
/// Inside a transaction (the catalog is read).
pub unsafe fn reaches_a_defined_type(typ: pg_sys::Oid, depth: u32) -> bool {
    if depth > 32 {
        return true;
    }
    // SAFETY: catalog lookups by OID inside a transaction (this function's contract); each
    // returns InvalidOid (or the type itself) where there is nothing to follow.
    let base = unsafe { pg_sys::getBaseType(typ) };
    // SAFETY: as above.
    let element = unsafe { pg_sys::get_element_type(base) };
    if element != pg_sys::InvalidOid {
        // SAFETY: as above.
        return unsafe { reaches_a_defined_type(element, depth + 1) };
    }
    // SAFETY: as above.
    if unsafe { pg_sys::get_typ_typrelid(base) } != pg_sys::InvalidOid {
        // SAFETY: lookup_rowtype_tupdesc returns the row type's descriptor with its reference
        // count raised (or raises for a type that is not one: it is, just checked); the fields
        // are read, then the count released with DecrTupleDescRefCount, as
        // ReleaseTupleDesc does for a reference-counted descriptor.
        unsafe {
            let desc = pg_sys::lookup_rowtype_tupdesc(base, -1);
            let n = (*desc).natts as usize;
            let attrs = (*desc).attrs.as_slice(n);
            let fields: Vec<pg_sys::Oid> = attrs
                .iter()
                .filter(|a| !a.attisdropped)
                .map(|a| a.atttypid)
                .collect();
            if (*desc).tdrefcount >= 0 {
                pg_sys::DecrTupleDescRefCount(desc);
            }
            return fields
                .into_iter()
                .any(|f| reaches_a_defined_type(f, depth + 1));
        }
    }
    u32::from(base) >= pg_sys::FirstNormalObjectId
}

/// A jsonb datum as a value to push: its container is unpacked (a scalar's too).
///
/// # Safety
/// `d` must be a non-null jsonb datum, alive as long as the value is used.
unsafe fn binary(d: Datum) -> pg_sys::JsonbValue {
    // SAFETY: `d` is a jsonb varlena (this function's contract), detoasted here (a copy in the
    // current memory context when it was toasted or had a short header) so that its root
    // container follows a 4-byte header.
    let jsonb = unsafe { pg_sys::pg_detoast_datum(d.cast_mut_ptr()) } as *mut pg_sys::Jsonb;
    let mut v = scalar(pg_sys::jbvType::jbvBinary);
    // SAFETY: `jsonb` is the detoasted, non-null jsonb (above); only the address of its root
    // is taken, and its size read from its header.
    unsafe {
        v.val.binary.data = &mut (*jsonb).root;
        v.val.binary.len = pgrx::varsize_any_exhdr(jsonb.cast()) as i32;
    }
    v
}
