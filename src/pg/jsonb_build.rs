//! jsonb values built in memory and converted by PostgreSQL's `JsonbValueToJsonb` (through
//! `pushJsonbValue` when a value is itself jsonb), without writing JSON text and parsing it
//! back with `jsonb_in`. The audit trail's rows (`audit_row_json`) and a binding's
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

/// The jsonb object of `pairs` (distinct keys), as a palloc'd `Jsonb` in the current memory
/// context. An object of scalars is handed to `JsonbValueToJsonb` whole, in one call, its
/// pairs put in jsonb's key order (shorter keys first, then bytewise) unless they already are;
/// an object with a jsonb container among its values (`jbvBinary`) goes through
/// `pushJsonbValue`, which unpacks containers and sorts the keys itself. Strings the pairs
/// point at must outlive the call, which copies them.
///
/// # Safety
/// Every value must be a valid scalar, a `jbvArray` of scalars, or a `jbvBinary` of a jsonb
/// container; every key a `jbvString`. The strings, numerics and containers they point at must
/// stay alive for the call.
pub unsafe fn object_of(pairs: &mut [pg_sys::JsonbPair]) -> *mut pg_sys::Jsonb {
    use pg_sys::JsonbIteratorToken::*;
    if pairs
        .iter()
        .all(|p| p.value.type_ != pg_sys::jbvType::jbvBinary)
    {
        let key = |p: &pg_sys::JsonbPair| {
            // SAFETY: every key is a jbvString (this function's contract), so `string` is the
            // union's live member, pointing at `len` bytes that are alive for the call.
            unsafe {
                let s = p.key.val.string;
                std::slice::from_raw_parts(s.val.cast::<u8>(), s.len as usize)
            }
        };
        let order = |a: &pg_sys::JsonbPair, b: &pg_sys::JsonbPair| {
            let (a, b) = (key(a), key(b));
            a.len().cmp(&b.len()).then(a.cmp(b))
        };
        if !pairs.windows(2).all(|w| order(&w[0], &w[1]).is_lt()) {
            pairs.sort_by(order);
            assert!(
                pairs.windows(2).all(|w| order(&w[0], &w[1]).is_lt()),
                "jsonb object keys must be distinct"
            );
        }
        let mut object = scalar(pg_sys::jbvType::jbvObject);
        object.val.object.nPairs = pairs.len() as i32;
        object.val.object.pairs = pairs.as_mut_ptr();
        // SAFETY: an object of scalar (or array-of-scalar) values with distinct keys in
        // jsonb's key order (sorted and asserted above), as convertToJsonb requires of an
        // object built in memory; `pairs` and what its values point at are alive for the call,
        // which copies them into a new palloc'd Jsonb.
        return unsafe { pg_sys::JsonbValueToJsonb(&mut object) };
    }
    let mut state: *mut pg_sys::JsonbParseState = std::ptr::null_mut();
    // SAFETY: one object pushed from BEGIN to END, a key and a value per pair: keys are
    // jbvString, values scalars, arrays of scalars or jbvBinary containers (this function's
    // contract), which pushJsonbValue unpacks and copies; the parse state is palloc'd in the
    // current memory context, and the finished object is converted into a new Jsonb.
    unsafe {
        pg_sys::pushJsonbValue(&mut state, WJB_BEGIN_OBJECT, std::ptr::null_mut());
        for pair in pairs.iter_mut() {
            pg_sys::pushJsonbValue(&mut state, WJB_KEY, &mut pair.key);
            pg_sys::pushJsonbValue(&mut state, WJB_VALUE, &mut pair.value);
        }
        let object = pg_sys::pushJsonbValue(&mut state, WJB_END_OBJECT, std::ptr::null_mut());
        pg_sys::JsonbValueToJsonb(object)
    }
}

/// A key and its value, for [`object_of`].
pub fn pair(key: &str, value: pg_sys::JsonbValue) -> pg_sys::JsonbPair {
    pg_sys::JsonbPair {
        key: str_value(key),
        value,
        order: 0,
    }
}

/// The jsonb object of `fields`, as a palloc'd `Jsonb` in the current memory context. Keys
/// must be distinct.
pub fn object(fields: &[(&str, Field<'_>)]) -> *mut pg_sys::Jsonb {
    // Arrays' elements, kept here until the object is built.
    let arrays: Vec<Vec<pg_sys::JsonbValue>> = fields
        .iter()
        .map(|(_, f)| match f {
            Field::Strs(items) => items.iter().map(|s| str_value(s)).collect(),
            _ => Vec::new(),
        })
        .collect();
    let mut pairs: Vec<pg_sys::JsonbPair> = fields
        .iter()
        .zip(&arrays)
        .map(|((key, field), elems)| {
            let value = match field {
                Field::Null => scalar(pg_sys::jbvType::jbvNull),
                Field::Str(s) => str_value(s),
                Field::Strs(_) => {
                    let mut a = scalar(pg_sys::jbvType::jbvArray);
                    a.val.array.nElems = elems.len() as i32;
                    a.val.array.elems = elems.as_ptr() as *mut _;
                    a.val.array.rawScalar = false;
                    a
                }
            };
            pair(key, value)
        })
        .collect();
    // SAFETY: string keys, scalar or array-of-string values pointing at `fields` and `arrays`,
    // which outlive the call.
    unsafe { object_of(&mut pairs) }
}
