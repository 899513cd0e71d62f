//! A row of an audited table as jsonb, the same value `to_jsonb(row)` gives, without the work
//! `to_jsonb` repeats for every row.
//!
//! `to_jsonb` of a row looks up the row type and, for every column of every row, the column's
//! base type, element type, row-type-ness and output function in the system caches, then turns
//! integers and numerics into text and parses the text back into a numeric. Here each column's
//! conversion is decided once per statement: integers become jsonb numbers directly, numerics
//! are stored as they are (NaN and the infinities become strings, as `to_jsonb` makes them),
//! booleans, text, varchar, uuid and jsonb are copied, dates and timestamps formatted as
//! `to_jsonb` formats them, and every other type (domains included) is converted by
//! `to_jsonb` of the column's value alone, which is what `to_jsonb` of the row does for that
//! column.

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
    /// `to_jsonb` of the value, called with an expression of the column's type.
    Other(Box<pg_sys::FmgrInfo>),
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
    /// `rel` must be an open relation.
    pub unsafe fn new(rel: pg_sys::Relation) -> RowJson {
        let desc = (*rel).rd_att;
        let mut columns = Vec::new();
        for i in 0..(*desc).natts as usize {
            let att = (*desc).attrs.as_ptr().add(i);
            if (*att).attisdropped {
                continue;
            }
            let key_name = std::ffi::CStr::from_ptr((*att).attname.data.as_ptr()).to_owned();
            let mut key_text = Vec::new();
            escape_json(&mut key_text, key_name.as_bytes());
            key_text.extend_from_slice(b": ");
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
    /// `slot` must hold a row of the relation this was made for.
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
        pg_sys::slot_getallattrs(slot);
        let (values, nulls) = ((*slot).tts_values, (*slot).tts_isnull);
        let columns = self.columns.iter().zip(selected).filter(|(_, &s)| s);
        let mut pairs: Vec<pg_sys::JsonbPair> = Vec::with_capacity(self.columns.len());
        for (i, (col, _)) in columns.enumerate() {
            let key = string_value(col.key_name.as_ptr(), col.key_name.as_bytes().len());
            let at = (col.attnum - 1) as usize;
            let isnull = *nulls.add(at);
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
                col.value(*values.add(at), text.as_deref_mut())
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
        let jsonb = object_of(&mut pairs);
        Datum::from(jsonb)
    }
}

impl Column {
    /// The jsonb value of a non-null datum of this column; with `text`, also appends the
    /// value's text as `jsonb_out` writes it (never asked of jsonb or `to_jsonb` columns).
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
            number(pg_sys::int64_to_numeric(i))
        };
        let cstr = |p: *const std::ffi::c_char| std::ffi::CStr::from_ptr(p).to_bytes();
        match &self.kind {
            Kind::Int2 => integer(d.value() as i16 as i64, text),
            Kind::Int4 => integer(d.value() as i32 as i64, text),
            Kind::Int8 => integer(d.value() as i64, text),
            Kind::Numeric => {
                let n = pg_sys::pg_detoast_datum(d.cast_mut_ptr()) as pg_sys::Numeric;
                let special = pg_sys::numeric_is_nan(n) || pg_sys::numeric_is_inf(n);
                if !special && text.is_none() {
                    return number(n);
                }
                let shown = pgrx::fcinfo::direct_function_call_as_datum(
                    pg_sys::numeric_out,
                    &[Some(Datum::from(n))],
                )
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
                let t = pg_sys::pg_detoast_datum_packed(d.cast_mut_ptr());
                let (p, len) = (pgrx::vardata_any(t), pgrx::varsize_any_exhdr(t));
                if let Some(out) = text {
                    escape_json(out, std::slice::from_raw_parts(p.cast::<u8>(), len));
                }
                string_value(p as *mut std::ffi::c_char, len)
            }
            Kind::Uuid => {
                let bytes = std::slice::from_raw_parts(d.cast_mut_ptr::<u8>(), 16);
                let shown = uuid::Uuid::from_slice(bytes)
                    .expect("uuid")
                    .hyphenated()
                    .to_string();
                if let Some(t) = text {
                    escape_json(t, shown.as_bytes());
                }
                let p = pg_sys::palloc(shown.len()) as *mut u8;
                std::ptr::copy_nonoverlapping(shown.as_ptr(), p, shown.len());
                string_value(p.cast(), shown.len())
            }
            Kind::DateTime(typ) => {
                let p = pg_sys::JsonEncodeDateTime(std::ptr::null_mut(), d, *typ, std::ptr::null());
                if let Some(t) = text {
                    escape_json(t, cstr(p));
                }
                string_value(p, cstr(p).len())
            }
            Kind::Jsonb => binary(d),
            Kind::Other(flinfo) => {
                let flinfo = &**flinfo as *const _ as *mut pg_sys::FmgrInfo;
                binary(pg_sys::FunctionCall1Coll(flinfo, pg_sys::InvalidOid, d))
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
        _ => {
            // to_jsonb(anyelement) learns its argument's type from the call expression.
            let mut flinfo: Box<pg_sys::FmgrInfo> = Box::new(std::mem::zeroed());
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
            Kind::Other(flinfo)
        }
    }
}

/// A jsonb datum as a value to push: its container is unpacked (a scalar's too).
unsafe fn binary(d: Datum) -> pg_sys::JsonbValue {
    let jsonb = pg_sys::pg_detoast_datum(d.cast_mut_ptr()) as *mut pg_sys::Jsonb;
    let mut v = scalar(pg_sys::jbvType::jbvBinary);
    v.val.binary.data = &mut (*jsonb).root;
    v.val.binary.len = pgrx::varsize_any_exhdr(jsonb.cast()) as i32;
    v
}
