//! Audit records of row changes, written without SQL.
//!
//! The statement-level audit trigger reads its transition tables itself, forms every record
//! in Rust and inserts it through the executor's simple-insert path
//! (`ExecSimpleRelationInsert`, as logical replication applies rows): the constraints, every
//! index and any trigger of `tenancy.audit_log` still apply. It replaces one
//! `INSERT ... SELECT` over the transition table per statement, whose executor start-up
//! (a subquery scan, the hash expression compiled again, RETURNING) cost more than the
//! change it recorded.
//!
//! Per row: the row as jsonb, the value `to_jsonb` gives (`src/pg/row_json.rs`), without
//! the excluded columns; the key's columns likewise; for UPDATE only the columns whose jsonb
//! values differ.
//! `row_hash` is HMAC-SHA-256, under the tenant's audit key, of exactly the text
//! [`record_text`] gives (`quote_nullable` of each field's text form, joined by
//! `|`), taken from the values as stored, so `audit_verify`, which recomputes it from the
//! stored record in SQL, checks these records too.

use crate::catalog;
use crate::pg::row_json::{Column, RowJson};
use pgrx::fcinfo::{direct_function_call, direct_function_call_as_datum};
use pgrx::pg_sys::{self, Datum};
use pgrx::{FromDatum, IntoDatum};
use sha2::Sha256;
use std::ffi::CStr;
use uuid::Uuid;

/// The nil uuid as a `uuid` datum points at: the tenant_id of records that concern no tenant.
static NIL_UUID: [u8; 16] = *crate::audit::PLATFORM_CHAIN.as_bytes();

/// A record this statement wrote: (tenant, id, row_hash). The platform's tenant is the nil uuid.
pub type Written = (Uuid, i64, Vec<u8>);

/// What the trigger knows about the audited table.
pub struct Table<'a> {
    pub name: &'a str,
    /// The trail's table in schema tenancy: `audit_log`, or on Citus its shard colocated with
    /// the table's shard that fired.
    pub log: &'a CStr,
    pub tenant_column: &'a str,
    /// The columns a tenant keeps out of its records of this table.
    pub exclude: &'a dyn Fn(Uuid) -> std::rc::Rc<Vec<String>>,
    pub key_columns: &'a [String],
}

/// Who made the change.
pub struct Actor<'a> {
    pub role: &'a str,
    pub subject: Option<&'a str>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Insert,
    Update,
    Delete,
}

impl Op {
    fn text(self) -> &'static str {
        match self {
            Op::Insert => "INSERT",
            Op::Update => "UPDATE",
            Op::Delete => "DELETE",
        }
    }
}

/// The audit_log columns the writer fills, in [`record_text`]'s order, then row_hash, with
/// the type each must have.
const FIELDS: [(&CStr, pg_sys::Oid); 14] = [
    (c"id", pg_sys::INT8OID),
    (c"tenant_id", pg_sys::UUIDOID),
    (c"occurred_at", pg_sys::TIMESTAMPTZOID),
    (c"txid", pg_sys::INT8OID),
    (c"table_name", pg_sys::TEXTOID),
    (c"op", pg_sys::TEXTOID),
    (c"row_key", pg_sys::JSONBOID),
    (c"old_row", pg_sys::JSONBOID),
    (c"new_row", pg_sys::JSONBOID),
    (c"db_role", pg_sys::TEXTOID),
    (c"subject", pg_sys::TEXTOID),
    (c"application_name", pg_sys::TEXTOID),
    (c"client_addr", pg_sys::INETOID),
    (c"row_hash", pg_sys::BYTEAOID),
];

/// Record every row of the firing statement's transition tables.
///
/// The rows are turned into jsonb as the user whose statement fired the trigger: `to_jsonb` of
/// a column of a type that is not built in may call a cast its type's owner wrote, which must
/// run with no more privilege than any other function of that statement. Only taking record
/// ids and writing into the trail (pg_tenancy's own sequence and table) run as the catalog
/// owner.
///
/// # Safety
/// `td` must be the TriggerData of a statement-level AFTER trigger with the transition
/// tables of `op` (NEW TABLE for INSERT, OLD TABLE for DELETE, both for UPDATE), called inside
/// the firing statement's transaction.
pub unsafe fn record_statement(
    td: *const pg_sys::TriggerData,
    table: &Table,
    op: Op,
    actor: &Actor,
) -> Vec<Written> {
    // SAFETY: `td` is the firing trigger's TriggerData (this function's contract), valid for
    // the whole trigger call; its transition tables are null or tuplestores that the
    // after-trigger queue keeps until every trigger of the statement has run.
    let (old_ts, new_ts) = unsafe { ((*td).tg_oldtable, (*td).tg_newtable) };
    let source = if op == Op::Delete { old_ts } else { new_ts };
    // SAFETY: only reached when `source` is not null: then it is one of those tuplestores.
    if source.is_null() || unsafe { pg_sys::tuplestore_tuple_count(source) } == 0 {
        return Vec::new();
    }
    // SAFETY: `td` as above; tg_relation is the relation the trigger fired on, which the
    // executor keeps open and locked until the end of the statement.
    let rel = unsafe { (*td).tg_relation };
    // SAFETY: `rel` is open for the length of this call (above).
    let shape = unsafe { RowShape::new(rel, table) };
    // SAFETY: inside the firing statement's transaction (this function's contract); the
    // writer is closed below, or released by the transaction's abort on an error.
    let mut writer = catalog::as_owner_running_no_sql(|| unsafe {
        Writer::open(table.log, table.name, op, actor)
    });
    // SAFETY: for UPDATE the contract promises the OLD TABLE, so `old_ts` is a live tuplestore
    // (not null) of `rel`'s rows, as `source` is (checked above); both outlive the readers,
    // which are closed below.
    let mut old_rows = (op == Op::Update).then(|| unsafe { Reader::new(old_ts, rel) });
    // SAFETY: as above.
    let mut new_rows = unsafe { Reader::new(source, rel) };
    // SAFETY: a child of the current memory context (the trigger call's), so it goes with
    // its parent on an error; deleted after the loop otherwise. The name is a static string,
    // as the context keeps the pointer.
    let row_cxt = unsafe {
        pg_sys::AllocSetContextCreateExtended(
            pg_sys::CurrentMemoryContext,
            c"pg_tenancy audit row".as_ptr(),
            pg_sys::ALLOCSET_DEFAULT_MINSIZE as usize,
            pg_sys::ALLOCSET_DEFAULT_INITSIZE as usize,
            pg_sys::ALLOCSET_DEFAULT_MAXSIZE as usize,
        )
    };
    // SAFETY: `source` is a live, non-null tuplestore (checked above).
    let mut out = Vec::with_capacity(unsafe { pg_sys::tuplestore_tuple_count(source) } as usize);
    let mut checked: Option<Uuid> = None;
    // SAFETY: `new_rows` reads `source`, alive for the call (above).
    while unsafe { new_rows.next() } {
        let old = match old_rows.as_mut() {
            Some(r) => {
                // SAFETY: `r` reads the OLD TABLE, alive for the call (above).
                if !unsafe { r.next() } {
                    pgrx::error!("pg_tenancy: the UPDATE transition tables differ in length");
                }
                Some(r.slot)
            }
            None => None,
        };
        // SAFETY: `row_cxt` is alive until the MemoryContextDelete after the loop; the
        // previous context is switched back to below, before the next row.
        let outer = unsafe { pg_sys::MemoryContextSwitchTo(row_cxt) };
        let row = new_rows.slot;
        // SAFETY: `row` (and `old`, the OLD TABLE's row at the same position) hold the row
        // just fetched from a transition table of `rel`, the relation `shape` was made for;
        // the tuples stay in their tuplestores until the next fetch.
        let change = unsafe {
            match (op, old) {
                (Op::Update, Some(old)) => shape.update(old, row),
                (Op::Insert, _) => shape.insert(row),
                _ => shape.delete(row),
            }
        };
        if op != Op::Delete {
            // SAFETY: `change.tenant` is the row's tenant column, a uuid datum (protect()
            // refuses a tenant column of another type, and PostgreSQL refuses to retype a
            // column the generated policies use), pointing into the fetched row.
            unsafe { refuse_decommissioned(change.tenant, &mut checked, table.name) };
        }
        // SAFETY: the datums of `change` were formed just above in `row_cxt` or point into
        // the fetched rows, all alive until the reset below; `writer` is open.
        out.push(catalog::as_owner_running_no_sql(|| unsafe {
            writer.write(&change)
        }));
        // SAFETY: `outer` is the context that was current before the switch above, still
        // alive (it is the trigger call's); `writer` is open; nothing refers to what
        // `row_cxt` holds any more: `change`'s datums were copied by the insert, and `out`
        // holds Rust values.
        unsafe {
            pg_sys::MemoryContextSwitchTo(outer);
            writer.reset_row();
            pg_sys::MemoryContextReset(row_cxt);
        }
    }
    // SAFETY: `row_cxt` is not the current context (switched back above) and nothing
    // allocated in it is used any more; `writer` and the readers are open and closed once
    // here, their tuplestores still alive.
    unsafe {
        pg_sys::MemoryContextDelete(row_cxt);
        catalog::as_owner_running_no_sql(|| writer.close());
        new_rows.close();
        if let Some(r) = old_rows {
            r.close();
        }
    }
    out
}

/// A row written for a decommissioned tenant (by a role that row security does not confine,
/// since no session can bind such a tenant) is refused: its certificate says it has no rows.
///
/// # Safety
/// `tenant`, when given, must be a `uuid` datum: a pointer to 16 readable bytes.
unsafe fn refuse_decommissioned(tenant: Option<Datum>, checked: &mut Option<Uuid>, table: &str) {
    let Some(d) = tenant else { return };
    // SAFETY: a uuid datum points at its 16 bytes (this function's contract); [u8; 16] needs
    // no alignment.
    let id = Uuid::from_bytes(unsafe { *d.cast_mut_ptr::<[u8; 16]>() });
    if *checked == Some(id) {
        return;
    }
    if catalog::tenant_by_id(id).is_some_and(|t| t.status == "decommissioned") {
        crate::errors::raise(
            crate::errors::INSUFFICIENT_PRIVILEGE,
            format!("tenant {id} is decommissioned: rows of it cannot be written to {table}"),
            "A decommissioned tenant keeps no rows; its deletion certificate is in its audit trail.",
        );
    }
    *checked = Some(id);
}

/// A reader of one transition table with its own read pointer (as a named tuplestore scan
/// does), so other triggers reading the same table are not disturbed.
struct Reader {
    store: *mut pg_sys::Tuplestorestate,
    ptr: i32,
    slot: *mut pg_sys::TupleTableSlot,
}

impl Reader {
    /// A reader from the start of `store`, with a slot for rows of `rel`.
    ///
    /// # Safety
    /// `store` must be a live (non-null) tuplestore of rows of `rel`'s row type, for instance
    /// a transition table of a trigger on `rel`, that outlives the reader; `rel` must be open.
    unsafe fn new(store: *mut pg_sys::Tuplestorestate, rel: pg_sys::Relation) -> Reader {
        // SAFETY: `store` is a live tuplestore (this function's contract); the new read
        // pointer is selected before the rescan, so other readers' positions are left alone.
        // The slot is made in the current memory context for `rel`'s tuple descriptor, which
        // is valid while `rel` is open, and dropped in `close`.
        unsafe {
            let ptr = pg_sys::tuplestore_alloc_read_pointer(store, pg_sys::EXEC_FLAG_REWIND as i32);
            pg_sys::tuplestore_select_read_pointer(store, ptr);
            pg_sys::tuplestore_rescan(store);
            Reader {
                store,
                ptr,
                slot: pg_sys::MakeSingleTupleTableSlot((*rel).rd_att, &pg_sys::TTSOpsMinimalTuple),
            }
        }
    }

    /// Select this reader's pointer and fetch the next row into `slot`.
    ///
    /// # Safety
    /// The store the reader was made for must still be alive.
    unsafe fn next(&mut self) -> bool {
        // SAFETY: `store` is alive (this function's contract) and `ptr` is the read pointer
        // `new` allocated in it; `slot` is this reader's slot, of the store's row type. The
        // row is not copied (copy = false): it stays valid until the next fetch.
        unsafe {
            pg_sys::tuplestore_select_read_pointer(self.store, self.ptr);
            pg_sys::tuplestore_gettupleslot(self.store, true, false, self.slot)
        }
    }

    /// Drop the reader's slot.
    ///
    /// # Safety
    /// The memory context current at [`Reader::new`] must still be alive (it holds the slot).
    unsafe fn close(self) {
        // SAFETY: `slot` was made by MakeSingleTupleTableSlot in `new` and is dropped once:
        // `close` takes the reader by value.
        unsafe { pg_sys::ExecDropSingleTupleTableSlot(self.slot) };
    }
}

/// One record's row-derived fields.
struct Change {
    tenant: Option<Datum>,
    row_key: Option<Json>,
    old_row: Option<Json>,
    new_row: Option<Json>,
}

/// A jsonb field of a record, with its `jsonb_out` text when it was written alongside.
struct Json {
    datum: Datum,
    text: Option<Vec<u8>>,
}

impl Json {
    /// The text `jsonb_out` gives for the value: the one written alongside, or `jsonb_out`'s.
    ///
    /// # Safety
    /// `datum` must still point at the jsonb it was made for (its memory context not reset).
    unsafe fn text(&self) -> std::borrow::Cow<'_, [u8]> {
        match &self.text {
            Some(t) => std::borrow::Cow::Borrowed(t.as_slice()),
            None => {
                // SAFETY: `datum` is a live jsonb (this function's contract), jsonb_out's one
                // argument; jsonb_out never returns NULL, and its result is a palloc'd
                // NUL-terminated string, copied here before anything can free it.
                unsafe {
                    let p = direct_function_call_as_datum(pg_sys::jsonb_out, &[Some(self.datum)])
                        .expect("cstring");
                    std::borrow::Cow::Owned(CStr::from_ptr(p.cast_mut_ptr()).to_bytes().to_vec())
                }
            }
        }
    }
}

/// How rows of the audited table become jsonb: the row as `to_jsonb` gives it
/// ([`RowJson`]) without the excluded columns; the key is the primary key's columns.
/// The columns of a tenant's records (not excluded), and whether their text can be written
/// alongside their jsonb.
type Audited = (Vec<bool>, bool);

struct RowShape<'a> {
    json: RowJson,
    tenant_attnum: i32,
    /// The columns a tenant keeps out of its records.
    exclude: &'a dyn Fn(Uuid) -> std::rc::Rc<Vec<String>>,
    /// The last tenant's audited columns (not excluded) and whether their text can be written
    /// alongside their jsonb; rows of a statement are almost always one tenant's.
    audited: std::cell::RefCell<Option<(Uuid, std::rc::Rc<Audited>)>>,
    /// The columns of the key (None: no primary key).
    key: Option<Vec<bool>>,
    key_textual: bool,
    /// Text datums of the column names (for `jsonb -> name`).
    name_texts: Vec<Datum>,
}

impl<'a> RowShape<'a> {
    /// The shape of `rel`'s rows for the records of `table`.
    ///
    /// # Safety
    /// `rel` must be an open relation, the one `table` describes.
    unsafe fn new(rel: pg_sys::Relation, table: &'a Table<'a>) -> RowShape<'a> {
        // SAFETY: `rel` is open (this function's contract).
        let json = unsafe { RowJson::new(rel) };
        let Some(tenant) = json.columns.iter().find(|c| c.name == table.tenant_column) else {
            crate::errors::raise(
                crate::errors::NOT_IN_PREREQUISITE_STATE,
                format!(
                    "tenant column \"{}\" of table {} is missing",
                    table.tenant_column, table.name
                ),
                format!(
                    "Protect the table again: SELECT tenancy.protect('{}');",
                    table.name.replace('\'', "''")
                ),
            );
        };
        let tenant_attnum = tenant.attnum;
        // The tenant's datum is read as a uuid (16 bytes) for every row: the column must be one
        // (protect() checks it, and PostgreSQL refuses to retype a column a policy uses; a
        // superuser who dropped the policies and retyped it finds the trigger refusing here).
        // SAFETY: `rel` is open; attnum is a live column of its tuple descriptor (RowJson read
        // it from there), so the attribute at attnum - 1 exists.
        let typ = unsafe {
            (*(*(*rel).rd_att)
                .attrs
                .as_ptr()
                .add((tenant_attnum - 1) as usize))
            .atttypid
        };
        if typ != pg_sys::UUIDOID {
            crate::errors::raise(
                crate::errors::NOT_IN_PREREQUISITE_STATE,
                format!(
                    "tenant column \"{}\" of table {} is not uuid",
                    table.tenant_column, table.name
                ),
                "Tenant columns hold the tenant's uuid; give the column back its type and protect the table again.",
            );
        }
        let key = (!table.key_columns.is_empty())
            .then(|| json.select(|c| table.key_columns.iter().any(|k| k == c)));
        let name_texts = json
            .columns
            .iter()
            .map(|c| c.name.as_str().into_datum().expect("text"))
            .collect();
        RowShape {
            key_textual: key.as_ref().is_some_and(|k| json.textual(k)),
            json,
            tenant_attnum,
            exclude: table.exclude,
            audited: std::cell::RefCell::new(None),
            key,
            name_texts,
        }
    }

    /// The audited columns of a row of `tenant` (a uuid datum; every column for none).
    ///
    /// # Safety
    /// `tenant`, when given, must be a `uuid` datum: a pointer to 16 readable bytes.
    unsafe fn audited(&self, tenant: Option<Datum>) -> std::rc::Rc<Audited> {
        let id = tenant.map_or(Uuid::nil(), |d| {
            // SAFETY: a uuid datum points at its 16 bytes (this function's contract);
            // [u8; 16] needs no alignment.
            Uuid::from_bytes(unsafe { *d.cast_mut_ptr::<[u8; 16]>() })
        });
        if let Some((t, mask)) = self.audited.borrow().as_ref() {
            if *t == id {
                return mask.clone();
            }
        }
        let excluded = if tenant.is_some() {
            (self.exclude)(id)
        } else {
            std::rc::Rc::new(Vec::new())
        };
        let selected = self.json.select(|c| !excluded.iter().any(|e| e == c));
        let textual = self.json.textual(&selected);
        let mask = std::rc::Rc::new((selected, textual));
        *self.audited.borrow_mut() = Some((id, mask.clone()));
        mask
    }

    /// The row's tenant column: a uuid datum pointing into the row, or None for NULL.
    ///
    /// # Safety
    /// `slot` must hold a row of the relation this shape was made for.
    unsafe fn tenant(&self, slot: *mut pg_sys::TupleTableSlot) -> Option<Datum> {
        let mut isnull = false;
        // SAFETY: `slot` holds a row of this shape's relation (this function's contract), of
        // which `tenant_attnum` is a live column (found in its tuple descriptor by `new`).
        let d = unsafe { pg_sys::slot_getattr(slot, self.tenant_attnum, &mut isnull) };
        (!isnull).then_some(d)
    }

    /// The selected columns of `row` as jsonb, with their text when `textual`.
    ///
    /// # Safety
    /// `row` must hold a row of the relation this shape was made for; `textual` only where
    /// [`RowJson::textual`] holds for `selected`.
    unsafe fn build(
        &self,
        row: *mut pg_sys::TupleTableSlot,
        selected: &[bool],
        textual: bool,
    ) -> Json {
        let mut text = textual.then(|| Vec::with_capacity(128));
        // SAFETY: `row` holds a row of the relation `self.json` was made for (this function's
        // contract).
        let datum = unsafe { self.json.object(row, selected, text.as_mut()) };
        Json { datum, text }
    }

    /// The row's key columns as jsonb (None: the table has no primary key).
    ///
    /// # Safety
    /// `row` must hold a row of the relation this shape was made for.
    unsafe fn key(&self, row: *mut pg_sys::TupleTableSlot) -> Option<Json> {
        self.key
            .as_ref()
            // SAFETY: `row` as this function's contract; `key_textual` was computed by `new`
            // with RowJson::textual over exactly these columns.
            .map(|k| unsafe { self.build(row, k, self.key_textual) })
    }

    /// The record fields of an inserted row.
    ///
    /// # Safety
    /// `row` must hold a row of the relation this shape was made for.
    unsafe fn insert(&self, row: *mut pg_sys::TupleTableSlot) -> Change {
        // SAFETY: `row` as this function's contract; the tenant column's datum is a uuid (see
        // record_statement); `audited` pairs each selection with RowJson::textual of it.
        unsafe {
            let tenant = self.tenant(row);
            let audited = self.audited(tenant);
            Change {
                tenant,
                row_key: self.key(row),
                old_row: None,
                new_row: Some(self.build(row, &audited.0, audited.1)),
            }
        }
    }

    /// The record fields of a deleted row.
    ///
    /// # Safety
    /// `row` must hold a row of the relation this shape was made for.
    unsafe fn delete(&self, row: *mut pg_sys::TupleTableSlot) -> Change {
        // SAFETY: as in `insert`.
        unsafe {
            let tenant = self.tenant(row);
            let audited = self.audited(tenant);
            Change {
                tenant,
                row_key: self.key(row),
                old_row: Some(self.build(row, &audited.0, audited.1)),
                new_row: None,
            }
        }
    }

    /// Only the audited columns whose jsonb values differ (as `IS DISTINCT FROM` on jsonb); both
    /// NULL when none did. Objects are built over the columns whose bits differ, not the whole
    /// row, with their text where the columns allow it.
    ///
    /// # Safety
    /// `old` and `new` must hold the old and the new version of a row of the relation this
    /// shape was made for.
    unsafe fn update(
        &self,
        old: *mut pg_sys::TupleTableSlot,
        new: *mut pg_sys::TupleTableSlot,
    ) -> Change {
        // Identical bits make identical jsonb. The columns the row's tenant (after the
        // update) keeps out of its records are left out of both rows.
        // SAFETY: `new` holds a row of this shape's relation (this function's contract), whose
        // tenant column is a uuid (see record_statement).
        let audited = unsafe { self.audited(self.tenant(new)) };
        let mut changed: Vec<bool> = self
            .json
            .columns
            .iter()
            .zip(&audited.0)
            // SAFETY: both slots hold rows of the relation `col` is a live column of.
            .map(|(col, &audited)| audited && !unsafe { same_bits(old, new, col) })
            .collect();
        // SAFETY: both slots hold rows of this shape's relation (this function's contract).
        let mut pair = unsafe { self.pair(old, new, &changed) };
        if let Some((o, n)) = &pair {
            // Values that differ in their bits may still be the same jsonb (1.0 and 1.00 are
            // the same jsonb number; a text stored with another header): those did not change.
            let field = |obj: Datum, name: Datum| {
                // SAFETY: `obj` is a jsonb object just built (alive in the current memory
                // context) and `name` a text datum of `name_texts`, made by `new` in the
                // caller's longer-lived context: jsonb_object_field's two arguments.
                unsafe {
                    direct_function_call_as_datum(
                        pg_sys::jsonb_object_field,
                        &[Some(obj), Some(name)],
                    )
                }
            };
            let mut narrowed = false;
            for (c, &name) in changed.iter_mut().zip(&self.name_texts) {
                if !*c {
                    continue;
                }
                if let (Some(a), Some(b)) = (field(o.datum, name), field(n.datum, name)) {
                    // SAFETY: two jsonb values jsonb_object_field just returned (non-null),
                    // jsonb_eq's two arguments; it returns a bool.
                    if unsafe {
                        direct_function_call::<bool>(pg_sys::jsonb_eq, &[Some(a), Some(b)])
                    }
                    .unwrap_or(false)
                    {
                        *c = false;
                        narrowed = true;
                    }
                }
            }
            if narrowed {
                // SAFETY: as for the first pair.
                pair = unsafe { self.pair(old, new, &changed) };
            }
        }
        let (old_row, new_row) = pair.unzip();
        // SAFETY: `new` as above.
        unsafe {
            Change {
                tenant: self.tenant(new),
                row_key: self.key(new),
                old_row,
                new_row,
            }
        }
    }

    /// The old and the new row's objects over `selected`; None when nothing is selected.
    ///
    /// # Safety
    /// `old` and `new` must hold rows of the relation this shape was made for.
    unsafe fn pair(
        &self,
        old: *mut pg_sys::TupleTableSlot,
        new: *mut pg_sys::TupleTableSlot,
        selected: &[bool],
    ) -> Option<(Json, Json)> {
        if !selected.contains(&true) {
            return None;
        }
        let textual = self.json.textual(selected);
        // SAFETY: both slots hold rows of this shape's relation (this function's contract);
        // `textual` is RowJson::textual of `selected`, as `build` requires.
        unsafe {
            Some((
                self.build(old, selected, textual),
                self.build(new, selected, textual),
            ))
        }
    }
}

/// The trail's own tables were altered by hand: a clear 55000 with the way back.
fn trail_damaged(what: String) -> ! {
    crate::errors::raise(
        crate::errors::NOT_IN_PREREQUISITE_STATE,
        format!("pg_tenancy cannot write the audit trail: {what}"),
        "The audit tables are pg_tenancy's; restore them from the extension's definition (or a dump) and retry.",
    )
}

/// Whether a column holds the same bits in both rows (both NULL counts). False whenever it
/// cannot tell cheaply (toasted, compressed, or differently sized headers).
///
/// # Safety
/// `a` and `b` must hold rows of the relation `col` is a live column of.
unsafe fn same_bits(
    a: *mut pg_sys::TupleTableSlot,
    b: *mut pg_sys::TupleTableSlot,
    col: &Column,
) -> bool {
    let (mut a_null, mut b_null) = (false, false);
    // SAFETY: both slots hold rows of the relation of which `col.attnum` is a live column
    // (this function's contract).
    let x = unsafe { pg_sys::slot_getattr(a, col.attnum, &mut a_null) };
    // SAFETY: as above.
    let y = unsafe { pg_sys::slot_getattr(b, col.attnum, &mut b_null) };
    if a_null || b_null {
        return a_null && b_null;
    }
    if col.byval {
        return x == y;
    }
    let (p, q) = (x.cast_mut_ptr::<u8>(), y.cast_mut_ptr::<u8>());
    let len = match col.typlen {
        n if n > 0 => n as usize,
        -1 => {
            let (v, w) = (p.cast::<pg_sys::varlena>(), q.cast::<pg_sys::varlena>());
            // SAFETY: a non-null datum of a varlena column (typlen -1, not by value) points at
            // a varlena header, in the row or (toasted) its pointer; only the header is read.
            let plain = |v| unsafe { !pgrx::varatt_is_1b_e(v) && !pgrx::varatt_is_4b_c(v) };
            // SAFETY: as above: `v` and `w` point at varlena headers.
            if !plain(v) || !plain(w) || unsafe { pgrx::varatt_is_1b(v) != pgrx::varatt_is_1b(w) } {
                return false;
            }
            // SAFETY: neither is external nor compressed (checked above): each header gives
            // the size of the inline value it starts.
            let n = unsafe { pgrx::varsize_any(v) };
            // SAFETY: as above.
            if n != unsafe { pgrx::varsize_any(w) } {
                return false;
            }
            n
        }
        _ => return false,
    };
    // SAFETY: `len` is the column's fixed length, or the whole inline varlena of both values
    // (same size, checked above); the rows hold that many bytes at `p` and `q`, and nothing
    // writes to them while the slices live.
    unsafe { std::slice::from_raw_parts(p, len) == std::slice::from_raw_parts(q, len) }
}

/// Inserts into one of pg_tenancy's own tables without SQL: an executor state for one result
/// relation, as logical replication's apply sets up, kept for one statement.
pub struct SimpleInsert {
    rel: pg_sys::Relation,
    estate: *mut pg_sys::EState,
    rri: *mut pg_sys::ResultRelInfo,
    slot: *mut pg_sys::TupleTableSlot,
    /// Attribute index of each named column.
    att: Vec<usize>,
    /// Row triggers, CHECK constraints or stored generated columns were added to the table:
    /// take the executor's full path (ExecSimpleRelationInsert) for every row.
    full_path: bool,
    /// Rows formed and not yet in the table: `batch[..queued]`, each owning its tuple.
    batch: Vec<*mut pg_sys::TupleTableSlot>,
    queued: usize,
    queued_bytes: usize,
}

/// A batch of rows goes to the table in one `multi_insert` (one WAL record per page, as COPY
/// does) when it reaches this many rows or bytes; the bound on bytes keeps wide rows from
/// holding much memory.
const BATCH_ROWS: usize = 1000;
const BATCH_BYTES: usize = 256 * 1024;

impl SimpleInsert {
    /// Open `tenancy.<table>` for inserting the named columns. `own_checks` names the CHECK
    /// constraints pg_tenancy gave the table (values it always satisfies).
    ///
    /// # Safety
    /// Inside a transaction; the caller closes it with [`SimpleInsert::close`], while the
    /// memory context current here is still alive.
    pub unsafe fn open(
        table: &CStr,
        columns: &[(&CStr, pg_sys::Oid)],
        own_checks: &[&CStr],
    ) -> SimpleInsert {
        // SAFETY: a catalog lookup by name inside a transaction (this function's contract);
        // it raises when pg_tenancy's schema is missing (missing_ok = false).
        let nsp = unsafe { pg_sys::get_namespace_oid(c"tenancy".as_ptr(), false) };
        // SAFETY: as above; InvalidOid when the table is missing, checked below.
        let relid = unsafe { pg_sys::get_relname_relid(table.as_ptr(), nsp) };
        if relid == pg_sys::InvalidOid {
            trail_damaged(format!("tenancy.{} is missing", table.to_string_lossy()));
        }
        // SAFETY: `relid` names an existing relation (checked above), opened with the lock an
        // INSERT takes (held to the end of the transaction) and closed by `close`.
        let rel =
            unsafe { pg_sys::table_open(relid, pg_sys::RowExclusiveLock as pg_sys::LOCKMODE) };
        // Only a plain table has the heap access method the insert paths below call.
        // SAFETY: `rel` is open (above).
        if unsafe { (*(*rel).rd_rel).relkind } != pg_sys::RELKIND_RELATION as std::ffi::c_char {
            // SAFETY: closes what was opened above, keeping the lock.
            unsafe { pg_sys::table_close(rel, pg_sys::NoLock as pg_sys::LOCKMODE) };
            trail_damaged(format!(
                "tenancy.{} is not a plain table",
                table.to_string_lossy()
            ));
        }
        // SAFETY: `rel` is open (above): its relcache entry and tuple descriptor stay valid
        // until `close`.
        let desc = unsafe { (*rel).rd_att };
        let att = columns
            .iter()
            // SAFETY: `rel` is open (above).
            .map(|&(c, typ)| unsafe { attribute_index(rel, c, typ) })
            .collect();
        // SAFETY: a new executor state, in the current memory context; `close` frees it.
        let estate = unsafe { pg_sys::CreateExecutorState() };
        // SAFETY: palloc0 returns zeroed memory of a RangeTblEntry's size (or raises), in the
        // current memory context, which outlives the executor state (this function's
        // contract).
        let rte = unsafe {
            pg_sys::palloc0(std::mem::size_of::<pg_sys::RangeTblEntry>())
                .cast::<pg_sys::RangeTblEntry>()
        };
        // SAFETY: `rte` is the zeroed node just allocated, filled as makeNode and logical
        // replication's apply (create_edata_for_relation) fill it; `rel` is open, so its
        // pg_class row (rd_rel) is valid. The range table is a new one-element List of it,
        // handed to `estate` (made above).
        unsafe {
            (*rte).type_ = pg_sys::NodeTag::T_RangeTblEntry;
            (*rte).rtekind = pg_sys::RTEKind::RTE_RELATION;
            (*rte).relid = relid;
            (*rte).relkind = (*(*rel).rd_rel).relkind;
            (*rte).rellockmode = pg_sys::RowExclusiveLock as i32;
            pg_sys::ExecInitRangeTable(estate, pg_sys::lappend(std::ptr::null_mut(), rte.cast()));
        }
        // SAFETY: as for `rte`: zeroed memory of a ResultRelInfo's size.
        let rri = unsafe {
            pg_sys::palloc0(std::mem::size_of::<pg_sys::ResultRelInfo>())
                .cast::<pg_sys::ResultRelInfo>()
        };
        // SAFETY: `rri` is the zeroed node just allocated, initialised by InitResultRelInfo for
        // the open `rel` as range table entry 1 (the one above) and listed among `estate`'s
        // opened result relations, as the apply worker does. Inside a transaction, the command
        // id is this statement's (marked used: rows are written). AfterTriggerBeginQuery is
        // matched by `close`'s AfterTriggerEndQuery (or undone by the transaction's abort); the
        // indexes opened here are closed by `close`.
        unsafe {
            (*rri).type_ = pg_sys::NodeTag::T_ResultRelInfo;
            pg_sys::InitResultRelInfo(rri, rel, 1, std::ptr::null_mut(), 0);
            (*estate).es_opened_result_relations =
                pg_sys::lappend((*estate).es_opened_result_relations, rri.cast());
            (*estate).es_output_cid = pg_sys::GetCurrentCommandId(true);
            pg_sys::AfterTriggerBeginQuery();
            pg_sys::ExecOpenIndices(rri, false);
        }
        // SAFETY: `rri` was initialised above; InitResultRelInfo set ri_TrigDesc from the open
        // relation (null or a copy of its triggers).
        let trig = unsafe { (*rri).ri_TrigDesc };
        // SAFETY: `desc` is the open relation's tuple descriptor (above).
        let constr = unsafe { (*desc).constr };
        // SAFETY: `trig` and `constr` are read only when not null: then they are the open
        // relation's trigger and constraint descriptors, whose `check` array holds `num_check`
        // entries, each with a NUL-terminated name.
        let full_path = unsafe {
            (!trig.is_null()
                && ((*trig).trig_insert_before_row
                    || (*trig).trig_insert_after_row
                    || (*trig).trig_insert_instead_row))
                || (!constr.is_null()
                    && ((*constr).has_generated_stored
                        || (0..(*constr).num_check as usize).any(|i| {
                            let name = CStr::from_ptr((*(*constr).check.add(i)).ccname);
                            !own_checks.contains(&name)
                        })))
        };
        SimpleInsert {
            rel,
            estate,
            rri,
            // SAFETY: a virtual slot of the open relation's descriptor, in `estate`'s tuple
            // table (released by ExecResetTupleTable in `close`).
            slot: unsafe { pg_sys::ExecInitExtraTupleSlot(estate, desc, &pg_sys::TTSOpsVirtual) },
            att,
            full_path,
            batch: Vec::new(),
            queued: 0,
            queued_bytes: 0,
        }
    }

    /// Insert one row: `values[i]` for the i-th named column (None: NULL); other columns NULL.
    /// The table's indexes are maintained. pg_tenancy's own NOT NULL and CHECK constraints are
    /// not evaluated (the CHECK would be compiled again for every statement, and pg_tenancy
    /// fills these columns itself); when someone added row triggers or CHECK constraints, the
    /// executor's full path runs them, row by row. Otherwise the row is queued and reaches the
    /// table with its batch (at the latest in [`SimpleInsert::close`]); the values are copied,
    /// so the caller may free them at once.
    ///
    /// # Safety
    /// Datums must be valid for the columns' types.
    pub unsafe fn insert(&mut self, values: &[Option<Datum>]) {
        if self.full_path {
            // SAFETY: `slot` is this insert's virtual slot of the table's descriptor, `att` the
            // columns' attribute numbers; the datums are of the columns' types (this function's
            // contract). `rri` and `estate` are the open executor state of `open`.
            unsafe {
                Self::fill(self.slot, &self.att, values);
                pg_sys::ExecSimpleRelationInsert(self.rri, self.estate, self.slot);
            }
            return;
        }
        if self.queued == self.batch.len() {
            // In the executor state's memory, which lives until close: the caller may be in
            // a per-row context.
            // SAFETY: `estate` is open, so es_query_cxt is alive until `close` frees it, after
            // dropping these slots; `rel` is open, its descriptor and table AM valid. The
            // caller's context is switched back to at once.
            unsafe {
                let outer = pg_sys::MemoryContextSwitchTo((*self.estate).es_query_cxt);
                self.batch.push(pg_sys::MakeSingleTupleTableSlot(
                    (*self.rel).rd_att,
                    pg_sys::table_slot_callbacks(self.rel),
                ));
                pg_sys::MemoryContextSwitchTo(outer);
            }
        }
        let slot = self.batch[self.queued];
        // SAFETY: `slot` is a slot of the table's descriptor made above, not yet holding a
        // queued row (index `queued`); the datums are of the columns' types (this function's
        // contract).
        unsafe { Self::fill(slot, &self.att, values) };
        // The slot now owns a copy of the row (in the statement's memory).
        // SAFETY: `slot` holds the virtual tuple just stored; its ops are the table AM's slot
        // ops, whose materialize forms the tuple in the slot's own memory context (es_query_cxt)
        // from values that are all still alive. A callback of PostgreSQL's that may raise (out
        // of memory, a row too big): called through the FFI guard, as pgrx's bindings call
        // PostgreSQL's functions, rather than jumping over the Rust frames above.
        unsafe {
            let materialize = (*(*slot).tts_ops).materialize.expect("slot materialize");
            pg_sys::ffi::pg_guard_ffi_boundary(|| materialize(slot));
        }
        // SAFETY: the slot holds a materialized heap tuple (above), which ExecFetchSlotHeapTuple
        // returns without copying (materialize = false), valid while the slot holds it.
        let tuple = unsafe { pg_sys::ExecFetchSlotHeapTuple(slot, false, std::ptr::null_mut()) };
        self.queued += 1;
        // SAFETY: `tuple` is the slot's heap tuple (above), not null.
        self.queued_bytes += unsafe { (*tuple).t_len } as usize;
        if self.queued >= BATCH_ROWS || self.queued_bytes >= BATCH_BYTES {
            // SAFETY: this insert is open (`close` consumes it).
            unsafe { self.flush() };
        }
    }

    /// Store `values` into `slot` as a virtual tuple.
    ///
    /// # Safety
    /// `slot` must be a live slot of the table's tuple descriptor, `att` attribute indexes in
    /// it, and the datums valid for those columns' types.
    unsafe fn fill(slot: *mut pg_sys::TupleTableSlot, att: &[usize], values: &[Option<Datum>]) {
        // SAFETY: `slot` is live (this function's contract); once cleared, its values and
        // nulls arrays (natts entries each, allocated with the slot) are written for every
        // attribute, then at the indexes of `att`, all below natts, before the slot is marked
        // as holding a virtual tuple of them.
        unsafe {
            pg_sys::ExecClearTuple(slot);
            let n = (*(*slot).tts_tupleDescriptor).natts as usize;
            for i in 0..n {
                *(*slot).tts_values.add(i) = Datum::from(0);
                *(*slot).tts_isnull.add(i) = true;
            }
            for (f, v) in values.iter().enumerate() {
                if let Some(v) = v {
                    *(*slot).tts_values.add(att[f]) = *v;
                    *(*slot).tts_isnull.add(att[f]) = false;
                }
            }
            pg_sys::ExecStoreVirtualTuple(slot);
        }
    }

    /// Write the queued rows: one `multi_insert`, then each row's index entries.
    ///
    /// # Safety
    /// The insert must be open (its executor state and relation as `open` left them).
    unsafe fn flush(&mut self) {
        if self.queued == 0 {
            return;
        }
        if self.queued == 1 {
            // One row (the usual single-row statement, and every chain entry): the plain path.
            // SAFETY: `rel` is open with RowExclusiveLock; `batch[0]` holds a materialized
            // tuple of its descriptor (`insert`).
            unsafe { pg_sys::simple_table_tuple_insert(self.rel, self.batch[0]) };
        } else {
            // SAFETY: `rel` is open; it is pg_tenancy's own table, made a plain table by the
            // extension's SQL, so rd_tableam is its table AM (`open` does not check the
            // relkind: a relation put in its place by hand without a table AM is not caught).
            // `batch[..queued]` are its slots, each holding a materialized tuple; the command
            // id is the one `open` set for this statement; no options and no bulk-insert
            // state, as a single insert would. The table AM's callback may raise (a full disk,
            // a serialization failure): called through the FFI guard, rather than jumping
            // over the Rust frames above.
            unsafe {
                let multi_insert = (*(*self.rel).rd_tableam)
                    .multi_insert
                    .expect("table AM multi_insert");
                pg_sys::ffi::pg_guard_ffi_boundary(|| {
                    multi_insert(
                        self.rel,
                        self.batch.as_mut_ptr(),
                        self.queued as i32,
                        (*self.estate).es_output_cid,
                        0,
                        std::ptr::null_mut(),
                    )
                });
            }
        }
        for &slot in &self.batch[..self.queued] {
            // SAFETY: `slot` holds a row just written (its tid set by the insert), of the
            // relation whose indexes `open` opened; cleared once its entries are in.
            unsafe {
                self.insert_index_entries(slot);
                pg_sys::ExecClearTuple(slot);
            }
        }
        self.queued = 0;
        self.queued_bytes = 0;
    }

    /// The index entries of a row just written (its slot knows where).
    ///
    /// # Safety
    /// The insert must be open; `slot` must hold a row just written to its table.
    unsafe fn insert_index_entries(&self, slot: *mut pg_sys::TupleTableSlot) {
        // SAFETY: `rri` is the open insert's result relation, its indexes opened by `open`;
        // `slot` holds a row just written (this function's contract), as ExecInsertIndexTuples
        // requires (not an UPDATE, no speculative insertion, no arbiter indexes). The list it
        // returns (indexes to recheck) is the executor's, freed here unread.
        unsafe {
            if (*self.rri).ri_NumIndices == 0 {
                return;
            }
            let recheck = pg_sys::ExecInsertIndexTuples(
                self.rri,
                slot,
                self.estate,
                false,
                false,
                std::ptr::null_mut(),
                std::ptr::null_mut(),
            );
            pg_sys::list_free(recheck);
            self.reset_tuple_memory();
        }
    }

    /// Free what the last row left in the executor's per-row memory.
    ///
    /// # Safety
    /// The insert must be open, and nothing may still refer to the last row's per-row memory.
    pub unsafe fn reset_row(&mut self) {
        // SAFETY: `slot` is the open insert's own slot (cleared, not dropped); the per-row
        // memory holds nothing the caller still uses (this function's contract).
        unsafe {
            pg_sys::ExecClearTuple(self.slot);
            self.reset_tuple_memory();
        }
    }

    /// Reset the executor's per-tuple memory, if it has been made.
    ///
    /// # Safety
    /// The insert must be open, and nothing may still refer to its per-tuple memory.
    unsafe fn reset_tuple_memory(&self) {
        // SAFETY: `estate` is the open insert's executor state; its per-tuple expression
        // context is null until the executor makes one, then alive with the state.
        unsafe {
            let econtext = (*self.estate).es_per_tuple_exprcontext;
            if !econtext.is_null() {
                pg_sys::MemoryContextReset((*econtext).ecxt_per_tuple_memory);
            }
        }
    }

    /// Write what is still queued and release the table.
    ///
    /// # Safety
    /// Inside the transaction the insert was opened in, with the memory context current at
    /// [`SimpleInsert::open`] still alive.
    pub unsafe fn close(mut self) {
        // SAFETY: the insert is open until here (`close` consumes it, so this runs once).
        // After the last batch, each batch slot is dropped once; then what `open` began is
        // ended, each once: the indexes, the after-trigger query level (firing the AFTER
        // triggers the full path queued, while the executor state still lives), the tuple
        // table (this insert's slot) and the executor state; the relation is closed last,
        // keeping its lock to the end of the transaction.
        unsafe {
            self.flush();
            for &slot in &self.batch {
                pg_sys::ExecDropSingleTupleTableSlot(slot);
            }
            pg_sys::ExecCloseIndices(self.rri);
            pg_sys::AfterTriggerEndQuery(self.estate);
            pg_sys::ExecResetTupleTable((*self.estate).es_tupleTable, false);
            pg_sys::FreeExecutorState(self.estate);
            pg_sys::table_close(self.rel, pg_sys::NoLock as pg_sys::LOCKMODE);
        }
    }
}

/// Writes the records of one statement into tenancy.audit_log.
struct Writer {
    log: SimpleInsert,
    seq: pg_sys::Oid,
    /// Added to the sequence's values (a Citus node's offset, `src/citus/trail.rs`).
    id_offset: i64,
    /// Per-statement values with their text for the hash: table_name, op, db_role, subject,
    /// application_name, client_addr.
    table: (Datum, Vec<u8>),
    op: (Datum, Vec<u8>),
    role: (Datum, Vec<u8>),
    subject: Option<(Datum, Vec<u8>)>,
    app: (Datum, Vec<u8>),
    client: Option<(Datum, Vec<u8>)>,
    txid: i64,
}

impl Writer {
    /// Open the trail for the records of one statement on `table`.
    ///
    /// # Safety
    /// Inside a transaction; the caller closes it with [`Writer::close`], while the memory
    /// context current here (which holds the per-statement datums) is still alive.
    unsafe fn open(log: &CStr, table: &str, op: Op, actor: &Actor) -> Writer {
        // SAFETY: a catalog lookup by name inside a transaction (this function's contract);
        // it raises when pg_tenancy's schema is missing (missing_ok = false).
        let nsp = unsafe { pg_sys::get_namespace_oid(c"tenancy".as_ptr(), false) };
        // SAFETY: as above; InvalidOid when the sequence is missing, checked below.
        let seq = unsafe { pg_sys::get_relname_relid(c"audit_log_id_seq".as_ptr(), nsp) };
        if seq == pg_sys::InvalidOid {
            trail_damaged("tenancy.audit_log_id_seq is missing".into());
        }
        // SAFETY: inside a transaction (this function's contract); closed by `close`, with
        // the same memory context alive.
        let log = unsafe { SimpleInsert::open(log, &FIELDS, &[c"audit_log_op_check"]) };
        let text = |s: &str| (s.into_datum().expect("text"), s.as_bytes().to_vec());
        let role = text(actor.role);
        // SAFETY: application_name is the GUC's string variable of this backend, read once
        // here (no other thread writes it); when not null it is a NUL-terminated string.
        let app = unsafe {
            if pg_sys::application_name.is_null() {
                String::new()
            } else {
                CStr::from_ptr(pg_sys::application_name)
                    .to_string_lossy()
                    .into_owned()
            }
        };
        // SAFETY: inet_client_addr takes no argument and returns NULL (None) for a connection
        // without an address; network_show takes the inet it returned and returns text.
        let client = unsafe {
            direct_function_call_as_datum(pg_sys::inet_client_addr, &[]).map(|inet| {
                let shown: String =
                    direct_function_call(pg_sys::network_show, &[Some(inet)]).expect("inet text");
                (inet, shown.into_bytes())
            })
        };
        Writer {
            log,
            seq,
            id_offset: crate::citus::trail::id_offset(),
            table: text(table),
            op: text(op.text()),
            role,
            subject: actor.subject.map(text),
            app: text(&app),
            client,
            // SAFETY: inside a transaction (this function's contract): its top-level id,
            // assigned now if it has none (the audited statement writes anyway).
            txid: unsafe { pg_sys::GetTopFullTransactionId() }.value as i64,
        }
    }

    /// Insert one record; returns (tenant, id, row_hash).
    ///
    /// # Safety
    /// The writer must be open; `c`'s datums must still be alive: its tenant a `uuid` datum,
    /// its rows and key `jsonb` datums.
    unsafe fn write(&mut self, c: &Change) -> Written {
        // SAFETY: nextval_oid takes the sequence's oid (checked to exist by `open`) and
        // returns an int8, never NULL.
        let id: i64 = unsafe {
            direct_function_call::<i64>(pg_sys::nextval_oid, &[self.seq.into_datum()])
                .expect("nextval")
        } + self.id_offset;
        // SAFETY: reads the clock; no precondition.
        let at = unsafe { pg_sys::GetCurrentTimestamp() };
        let at_datum = Datum::from(at);
        // A row whose tenant column is NULL (only a role that bypasses row security can write
        // one) is recorded under the nil uuid, the platform's, as its chain entry is.
        let tenant = c.tenant.map_or(crate::audit::PLATFORM_CHAIN, |d| {
            // SAFETY: a uuid datum points at its 16 bytes (this function's contract).
            Uuid::from_slice(unsafe { std::slice::from_raw_parts(d.cast_mut_ptr::<u8>(), 16) })
                .expect("uuid")
        });
        let tenant_datum = c.tenant.unwrap_or(Datum::from(NIL_UUID.as_ptr()));
        // SAFETY: the jsonb datums of `c` are alive (this function's contract).
        let (key, old, new) = unsafe {
            (
                c.row_key.as_ref().map(|j| j.text()),
                c.old_row.as_ref().map(|j| j.text()),
                c.new_row.as_ref().map(|j| j.text()),
            )
        };
        let tenant_text = tenant.hyphenated().to_string().into_bytes();
        let (id_text, epoch_text, txid_text) = (
            id.to_string().into_bytes(),
            epoch_text(at).into_bytes(),
            self.txid.to_string().into_bytes(),
        );
        let hash = record_hmac(
            &crate::audit::audit_mac(tenant),
            &record_text(&[
                Some(id_text.as_slice()),
                Some(tenant_text.as_slice()),
                Some(epoch_text.as_slice()),
                Some(txid_text.as_slice()),
                Some(self.table.1.as_slice()),
                Some(self.op.1.as_slice()),
                key.as_deref(),
                old.as_deref(),
                new.as_deref(),
                Some(self.role.1.as_slice()),
                self.subject.as_ref().map(|s| s.1.as_slice()),
                Some(self.app.1.as_slice()),
                self.client.as_ref().map(|c| c.1.as_slice()),
            ]),
        );
        // SAFETY: each datum is of its column's type (FIELDS, checked by attribute_index):
        // int8 and timestamptz by value, the tenant's uuid bytes (the row's, or the static nil
        // uuid), text datums made by `open`, the record's jsonb, inet and the hash as bytea,
        // all alive until the insert has copied them.
        unsafe {
            self.log.insert(&[
                Some(Datum::from(id)),
                Some(tenant_datum),
                Some(at_datum),
                Some(Datum::from(self.txid)),
                Some(self.table.0),
                Some(self.op.0),
                c.row_key.as_ref().map(|j| j.datum),
                c.old_row.as_ref().map(|j| j.datum),
                c.new_row.as_ref().map(|j| j.datum),
                Some(self.role.0),
                self.subject.as_ref().map(|s| s.0),
                Some(self.app.0),
                self.client.as_ref().map(|c| c.0),
                hash.as_slice().into_datum(),
            ])
        };
        (tenant, id, hash)
    }

    /// Free what the last record left in the executor's per-row memory.
    ///
    /// # Safety
    /// The writer must be open, and nothing may still refer to the last record's per-row
    /// memory.
    unsafe fn reset_row(&mut self) {
        // SAFETY: this function's contract is SimpleInsert::reset_row's.
        unsafe { self.log.reset_row() };
    }

    /// Write what is still queued and release the trail.
    ///
    /// # Safety
    /// Inside the transaction the writer was opened in, with the memory context current at
    /// [`Writer::open`] still alive.
    unsafe fn close(self) {
        // SAFETY: this function's contract is SimpleInsert::close's.
        unsafe { self.log.close() };
    }
}

/// The newest entry (seq, chain_hash) of one lane of a tenant's chain in `tenancy.<chain>`
/// (`audit_chain`, or on Citus its shard holding the tenant),
/// read through its primary key (tenant_id, lane, seq) backwards with the latest snapshot (so
/// a REPEATABLE READ transaction links after the newest committed entry). None: the lane has
/// no entry with a seq of at least `at_least`.
///
/// `at_least` only saves work: the backward scan stops at the first seq below it instead of
/// checking every entry of the lane on the index's last page. The newest entry is the same
/// whenever one at or above the bound exists; the caller retries without it otherwise.
///
/// # Safety
/// Inside a transaction, with the lane's lock held.
pub unsafe fn newest_chain_entry(
    chain: &CStr,
    tenant: Uuid,
    lane: i16,
    at_least: Option<i64>,
) -> Option<(i64, Vec<u8>)> {
    // SAFETY: a catalog lookup by name inside a transaction (this function's contract); it
    // raises when pg_tenancy's schema is missing (missing_ok = false).
    let nsp = unsafe { pg_sys::get_namespace_oid(c"tenancy".as_ptr(), false) };
    // SAFETY: as above (InvalidOid when the table is missing, which table_open refuses).
    let relid = unsafe { pg_sys::get_relname_relid(chain.as_ptr(), nsp) };
    let lock = pg_sys::AccessShareLock as pg_sys::LOCKMODE;
    // SAFETY: opened (or an error raised) inside a transaction, closed below with its lock
    // kept to the end of the transaction.
    let rel = unsafe { pg_sys::table_open(relid, lock) };
    // SAFETY: `rel` is open (above).
    let pkey = unsafe { pg_sys::RelationGetPrimaryKeyIndex(rel) };
    if pkey == pg_sys::InvalidOid {
        trail_damaged("tenancy.audit_chain has lost its primary key".into());
    }
    // SAFETY: `pkey` is the open table's primary key index (checked above), opened with the
    // table's lock mode and closed below.
    let index = unsafe { pg_sys::index_open(pkey, lock) };
    // SAFETY: ScanKeyData is plain data (integers, oids, a datum and an FmgrInfo of pointers
    // and integers), for which all zeroes is a valid value; ScanKeyInit fills the keys used.
    let mut keys: [pg_sys::ScanKeyData; 3] = unsafe { std::mem::zeroed() };
    // SAFETY: each key is initialised in place with the btree strategy and the comparison
    // function of its column's type (uuid, smallint and bigint, the primary key's columns in
    // order), and a datum of that type: the uuid's bytes are palloc'd in the current memory
    // context, alive through the scan below.
    unsafe {
        pg_sys::ScanKeyInit(
            &mut keys[0],
            1,
            pg_sys::BTEqualStrategyNumber as pg_sys::StrategyNumber,
            pg_sys::Oid::from(pg_sys::F_UUID_EQ),
            catalog::to_pg_uuid(tenant).into_datum().expect("uuid"),
        );
        pg_sys::ScanKeyInit(
            &mut keys[1],
            2,
            pg_sys::BTEqualStrategyNumber as pg_sys::StrategyNumber,
            pg_sys::Oid::from(pg_sys::F_INT2EQ),
            lane.into_datum().expect("int2"),
        );
        if let Some(bound) = at_least {
            pg_sys::ScanKeyInit(
                &mut keys[2],
                3,
                pg_sys::BTGreaterEqualStrategyNumber as pg_sys::StrategyNumber,
                pg_sys::Oid::from(pg_sys::F_INT8GE),
                bound.into_datum().expect("int8"),
            );
        }
    }
    // SAFETY: an ordered scan of the open index of the open table; `keys` holds the number of
    // initialised keys passed (3 only with the bound) and outlives the scan, ended below. The
    // latest snapshot is not registered: nothing takes another snapshot before the scan ends,
    // and the caller's transaction keeps this backend's xmin (the commit path has an active
    // snapshot pushed).
    let scan = unsafe {
        pg_sys::systable_beginscan_ordered(
            rel,
            index,
            pg_sys::GetLatestSnapshot(),
            if at_least.is_some() { 3 } else { 2 },
            keys.as_mut_ptr(),
        )
    };
    // SAFETY: `scan` is the scan begun above, not yet ended.
    let tuple = unsafe {
        pg_sys::systable_getnext_ordered(scan, pg_sys::ScanDirection::BackwardScanDirection)
    };
    let newest = (!tuple.is_null()).then(|| {
        // SAFETY: `tuple` is the scan's current tuple (not null), valid until the scan ends
        // below, a row of `rel` (open): it is deformed into arrays of its descriptor's natts
        // entries. The two columns are found with their expected types (int8, bytea), so
        // the datums are read as those types; Vec<u8> copies the bytea out of the tuple.
        unsafe {
            let desc = (*rel).rd_att;
            let n = (*desc).natts as usize;
            let mut values = vec![Datum::from(0); n];
            let mut nulls = vec![false; n];
            pg_sys::heap_deform_tuple(tuple, desc, values.as_mut_ptr(), nulls.as_mut_ptr());
            let (seq, hash) = (
                attribute_index(rel, c"seq", pg_sys::INT8OID),
                attribute_index(rel, c"chain_hash", pg_sys::BYTEAOID),
            );
            (
                i64::from_datum(values[seq], nulls[seq]).unwrap_or(0),
                Vec::<u8>::from_datum(values[hash], nulls[hash]).unwrap_or_default(),
            )
        }
    });
    // SAFETY: the scan, index and table opened above, each ended once in reverse order; the
    // locks are kept to the end of the transaction (NoLock).
    unsafe {
        pg_sys::systable_endscan_ordered(scan);
        pg_sys::index_close(index, pg_sys::NoLock as pg_sys::LOCKMODE);
        pg_sys::table_close(rel, pg_sys::NoLock as pg_sys::LOCKMODE);
    }
    newest
}

/// Index in `rel`'s tuple descriptor of its live column `name`.
///
/// # Safety
/// `rel` must be an open relation.
unsafe fn attribute_index(rel: pg_sys::Relation, name: &CStr, typ: pg_sys::Oid) -> usize {
    // SAFETY: `rel` is open (this function's contract): its descriptor is valid.
    let desc = unsafe { (*rel).rd_att };
    // SAFETY: `rel` is open: its pg_class row is valid, with a NUL-terminated name.
    let table =
        || unsafe { CStr::from_ptr((*(*rel).rd_rel).relname.data.as_ptr()) }.to_string_lossy();
    // SAFETY: `desc` is the open relation's descriptor, whose attrs array holds natts
    // entries, each with a NUL-terminated name.
    let i = unsafe {
        (0..(*desc).natts as usize)
            .find(|&i| {
                let a = (*desc).attrs.as_ptr().add(i);
                !(*a).attisdropped && CStr::from_ptr((*a).attname.data.as_ptr()) == name
            })
            .unwrap_or_else(|| {
                trail_damaged(format!(
                    "column {} of tenancy.{} is missing",
                    name.to_string_lossy(),
                    table()
                ))
            })
    };
    // The writer forms datums of the type it expects: a retyped column would receive bytes
    // of another type.
    // SAFETY: `i` is below natts (found above).
    let found = unsafe { (*(*desc).attrs.as_ptr().add(i)).atttypid };
    if found != typ {
        let shown = |t: pg_sys::Oid| {
            // SAFETY: format_type_be returns a palloc'd NUL-terminated name for any oid (or
            // raises); it is copied at once.
            unsafe { CStr::from_ptr(pg_sys::format_type_be(t)) }
                .to_string_lossy()
                .into_owned()
        };
        trail_damaged(format!(
            "column {} of tenancy.{} has type {}, expected {}",
            name.to_string_lossy(),
            table(),
            shown(found),
            shown(typ)
        ));
    }
    i
}

/// `extract(epoch FROM ts)::text` of PostgreSQL 14 and later: a numeric with exactly six
/// decimals ("1795341600.500000"). `ts` is in microseconds since 2000-01-01 UTC.
pub fn epoch_text(ts: i64) -> String {
    const UNIX_TO_PG_EPOCH_US: i64 = 946_684_800_000_000;
    let us = ts + UNIX_TO_PG_EPOCH_US;
    let (sign, abs) = if us < 0 {
        ("-", us.unsigned_abs())
    } else {
        ("", us as u64)
    };
    format!("{sign}{}.{:06}", abs / 1_000_000, abs % 1_000_000)
}

/// A record's text: `quote_nullable(f1) || '|' || quote_nullable(f2) ...` of its fields' text
/// forms, unambiguous. The one definition, used by the writer and, through
/// `tenancy._audit_row_hash`, by the SQL paths.
pub fn record_text(fields: &[Option<&[u8]>]) -> Vec<u8> {
    let mut text = Vec::with_capacity(256);
    for (i, f) in fields.iter().enumerate() {
        if i > 0 {
            text.push(b'|');
        }
        quote_nullable(&mut text, *f);
    }
    text
}

/// HMAC-SHA-256 keyed with a tenant's audit key, before any record is fed to it.
pub type RecordMac = hmac::Hmac<Sha256>;

/// The record MAC of an audit key ([`crate::audit::audit_mac`] keeps one per tenant).
pub fn record_mac(key: &[u8]) -> RecordMac {
    use hmac::Mac;
    RecordMac::new_from_slice(key).expect("HMAC takes keys of any length")
}

/// A record's `row_hash`: HMAC-SHA-256 of its text ([`record_text`]) under its tenant's audit
/// key, which no operator or tenant can read, so that a hash never confirms a guessed row. The
/// one definition of the record hash: `tenancy._audit_row_hash`, which the SQL paths (management
/// records, audit_verify) call, uses this function.
pub fn record_hmac(mac: &RecordMac, text: &[u8]) -> Vec<u8> {
    use hmac::Mac;
    let mut mac = mac.clone();
    mac.update(text);
    mac.finalize().into_bytes().to_vec()
}

/// PostgreSQL's quote_nullable(text): NULL, or the value in single quotes with quotes and
/// backslashes doubled, prefixed with E when it contains a backslash.
fn quote_nullable(out: &mut Vec<u8>, value: Option<&[u8]>) {
    let Some(v) = value else {
        out.extend_from_slice(b"NULL");
        return;
    };
    let special = |c: &u8| *c == b'\'' || *c == b'\\';
    if v.contains(&b'\\') {
        out.push(b'E');
    }
    out.push(b'\'');
    // Copy runs without quotes or backslashes whole; double each of those.
    let mut rest = v;
    while let Some(i) = rest.iter().position(special) {
        out.extend_from_slice(&rest[..=i]);
        out.push(rest[i]);
        rest = &rest[i + 1..];
    }
    out.extend_from_slice(rest);
    out.push(b'\'');
}
