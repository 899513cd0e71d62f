//! `regclass` and `regrole` arguments as Rust types: a function taking a table or a role
//! declares it in its signature, and pgrx generates the SQL (no hand-written CREATE FUNCTION).
//! Both are an oid; nothing is opened or locked when the argument is read.

use pgrx::pg_sys;
use pgrx::prelude::*;
use pgrx::{FromDatum, IntoDatum};

/// A `regclass` argument: a relation's oid.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Regclass(pub pg_sys::Oid);

/// A `regrole` argument: a role's oid.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Regrole(pub pg_sys::Oid);

impl FromDatum for Regclass {
    /// # Safety
    /// As [`FromDatum::from_polymorphic_datum`]: `datum` is a regclass datum unless `is_null`.
    unsafe fn from_polymorphic_datum(
        datum: pg_sys::Datum,
        is_null: bool,
        _typoid: pg_sys::Oid,
    ) -> Option<Self> {
        // SAFETY: a regclass datum is an oid passed by value.
        unsafe { pg_sys::Oid::from_polymorphic_datum(datum, is_null, pg_sys::OIDOID) }.map(Regclass)
    }
}

impl IntoDatum for Regclass {
    fn into_datum(self) -> Option<pg_sys::Datum> {
        Some(pg_sys::Datum::from(self.0))
    }
    fn type_oid() -> pg_sys::Oid {
        pg_sys::REGCLASSOID
    }
}

impl FromDatum for Regrole {
    /// # Safety
    /// As [`FromDatum::from_polymorphic_datum`]: `datum` is a regrole datum unless `is_null`.
    unsafe fn from_polymorphic_datum(
        datum: pg_sys::Datum,
        is_null: bool,
        _typoid: pg_sys::Oid,
    ) -> Option<Self> {
        // SAFETY: a regrole datum is an oid passed by value.
        unsafe { pg_sys::Oid::from_polymorphic_datum(datum, is_null, pg_sys::OIDOID) }.map(Regrole)
    }
}

impl IntoDatum for Regrole {
    fn into_datum(self) -> Option<pg_sys::Datum> {
        Some(pg_sys::Datum::from(self.0))
    }
    fn type_oid() -> pg_sys::Oid {
        pg_sys::REGROLEOID
    }
}

impl_sql_translatable!(Regclass, "regclass");
impl_sql_translatable!(Regrole, "regrole");

// What pgrx's own scalar arguments do (its `argue_from_datum!`), for these two.
macro_rules! oid_argument {
    ($t:ty) => {
        // SAFETY: the argument is unboxed through FromDatum above (an oid by value), as pgrx
        // unboxes its own scalar types; a NULL is refused for a non-Option argument.
        unsafe impl<'fcx> pgrx::callconv::ArgAbi<'fcx> for $t {
            /// # Safety
            /// As [`pgrx::callconv::ArgAbi::unbox_arg_unchecked`]: `arg` is an argument of
            /// this type.
            unsafe fn unbox_arg_unchecked(arg: pgrx::callconv::Arg<'_, 'fcx>) -> Self {
                let index = arg.index();
                // SAFETY: `arg` is an argument of this type (this function's contract), a regclass
                // or regrole datum, which FromDatum above reads as the oid it is.
                unsafe { arg.unbox_arg_using_from_datum() }
                    .unwrap_or_else(|| panic!("argument {index} must not be null"))
            }

            /// # Safety
            /// As [`pgrx::callconv::ArgAbi::unbox_nullable_arg`]: `arg` is an argument of this
            /// type, or NULL.
            unsafe fn unbox_nullable_arg(
                arg: pgrx::callconv::Arg<'_, 'fcx>,
            ) -> pgrx::nullable::Nullable<Self> {
                // SAFETY: as in unbox_arg_unchecked; a NULL argument gives None, not a read.
                unsafe { arg.unbox_arg_using_from_datum() }.into()
            }
        }
    };
}
oid_argument!(Regclass);
oid_argument!(Regrole);
