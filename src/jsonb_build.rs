//! jsonb values built with PostgreSQL's own `pushJsonbValue`, without writing JSON text and
//! parsing it back with `jsonb_in`. The audit trail's rows (`audit_row_json`) and a binding's
//! description (what `bind` returns) are built this way: on a token's first bind in a
//! backend, serialising the description with serde_json and parsing it with `jsonb_in` was
//! about a third of the bind.

use pgrx::pg_sys;

/// A scalar jsonb value of type `t`, zeroed otherwise.
pub fn scalar(t: pg_sys::jbvType::Type) -> pg_sys::JsonbValue {
    // SAFETY: JsonbValue is plain data; every variant is valid when zeroed.
    let mut v: pg_sys::JsonbValue = unsafe { std::mem::zeroed() };
    v.type_ = t;
    v
}

/// A jsonb string value pointing at `len` bytes at `p` (which must outlive its use).
pub fn string_value(p: *const std::ffi::c_char, len: usize) -> pg_sys::JsonbValue {
    let mut v = scalar(pg_sys::jbvType::jbvString);
    v.val.string.val = p as *mut _;
    v.val.string.len = len as i32;
    v
}

fn str_value(s: &str) -> pg_sys::JsonbValue {
    string_value(s.as_ptr().cast(), s.len())
}

/// A field of an object built by [`object`].
pub enum Field<'a> {
    Null,
    Str(&'a str),
    Strs(&'a [String]),
}

impl<'a> From<Option<&'a str>> for Field<'a> {
    fn from(s: Option<&'a str>) -> Field<'a> {
        s.map_or(Field::Null, Field::Str)
    }
}

/// The jsonb object of `fields`, as a palloc'd `Jsonb` in the current memory context. Keys
/// must be distinct; jsonb orders them itself.
pub fn object(fields: &[(&str, Field<'_>)]) -> *mut pg_sys::Jsonb {
    use pg_sys::JsonbIteratorToken::*;
    let mut state: *mut pg_sys::JsonbParseState = std::ptr::null_mut();
    // SAFETY: every pushed value points at bytes borrowed from `fields`, which outlive the
    // JsonbValueToJsonb call that copies them.
    unsafe {
        let push = |state: &mut *mut pg_sys::JsonbParseState,
                    token,
                    value: Option<&mut pg_sys::JsonbValue>| {
            pg_sys::pushJsonbValue(
                state,
                token,
                value.map_or(std::ptr::null_mut(), |v| v as *mut _),
            )
        };
        push(&mut state, WJB_BEGIN_OBJECT, None);
        for (key, field) in fields {
            push(&mut state, WJB_KEY, Some(&mut str_value(key)));
            match field {
                Field::Null => {
                    push(
                        &mut state,
                        WJB_VALUE,
                        Some(&mut scalar(pg_sys::jbvType::jbvNull)),
                    );
                }
                Field::Str(s) => {
                    push(&mut state, WJB_VALUE, Some(&mut str_value(s)));
                }
                Field::Strs(items) => {
                    push(&mut state, WJB_BEGIN_ARRAY, None);
                    for item in items.iter() {
                        push(&mut state, WJB_ELEM, Some(&mut str_value(item)));
                    }
                    push(&mut state, WJB_END_ARRAY, None);
                }
            }
        }
        let value = push(&mut state, WJB_END_OBJECT, None);
        pg_sys::JsonbValueToJsonb(value)
    }
}
