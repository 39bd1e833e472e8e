//! Apply: write planned rows into Postgres — DDL for a new target, then the bulk load.

pub mod changes;
pub mod copy;
pub mod ddl;
pub mod guard;
pub mod parallel;
pub mod snapshot;
pub mod swap;
