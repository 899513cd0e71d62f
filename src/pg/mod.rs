//! PostgreSQL internals, fenced: everything here reaches below PostgreSQL's public extension
//! APIs (executor parameters, planner and executor hooks, forming jsonb and heap tuples
//! without SQL). Each piece is kept only where it pays (see `README.md` in this folder, with
//! the measured gain of each), and every unsafe block carries the argument for its safety.

pub mod binding_param;
pub mod citus;
pub mod executor_end;
pub mod fmgr_gate;
pub mod guc;
pub mod hooks;
pub mod jsonb_build;
pub mod lock_wait;
pub mod relation_spi;
pub mod row_json;
pub mod table_scan;
pub mod targeted_inval;
pub mod types;
pub mod unguarded;
