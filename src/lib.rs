//! pg_lakesync: keep Postgres tables in sync with Delta Lake tables.
//!
//! The pipeline reads as its folders: `source` (Delta log and data) → `plan` (columns, key,
//! names) → `apply` (DDL and bulk load) → `record` (catalog and run history). `types` holds the
//! whole Delta → Postgres type mapping; `api` the SQL functions; `worker` the background worker
//! that runs scheduled and continuous syncs.

use pgrx::prelude::*;

::pgrx::pg_module_magic!(name, version);

mod api;
mod apply;
mod catalog;
mod credentials;
mod debug;
mod error;
mod offload;
mod options;
mod plan;
mod record;
mod session;
mod source;
mod subxact;
mod sync;
mod types;
mod worker;

#[cfg(any(test, feature = "pg_test"))]
mod tests;

extension_sql_file!("catalog.sql", name = "catalog", bootstrap);
extension_sql_file!("status.sql", name = "status", requires = ["catalog"]);
extension_sql_file!("access.sql", name = "access", finalize);

#[pg_guard]
pub extern "C-unwind" fn _PG_init() {
    // The worker's settings before debug's, which reserves the lakesync prefix.
    worker::init();
    debug::register();
}

/// Required by `cargo pgrx test`.
#[cfg(test)]
pub mod pg_test {
    pub fn setup(_options: Vec<&str>) {}

    #[must_use]
    pub fn postgresql_conf_options() -> Vec<&'static str> {
        vec![]
    }
}
