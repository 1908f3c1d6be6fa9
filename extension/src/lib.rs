//! The Bulkhead PostgreSQL extension: thin glue between SQL and `bulkhead-policy`.
//!
//! Hand-written SQL (tables, policies, grants, control-plane functions) lives in `sql/`; this
//! crate holds only what needs Rust: the tenant context and its settings.

use pgrx::prelude::*;

mod admission;
mod context;
mod errors;
mod evals;
mod gateway;
mod gucs;
mod pricing;
mod prompts;
mod shared;
mod tokens;

::pgrx::pg_module_magic!();

extension_sql_file!("../../sql/roles.sql", name = "roles", bootstrap);
extension_sql_file!(
    "../../sql/context.sql",
    name = "context",
    requires = [
        "roles",
        context::current_tenant,
        context::set_tenant,
        context::_set_tenant_within_function
    ]
);
extension_sql_file!(
    "../../sql/tenants.sql",
    name = "tenants",
    requires = ["context", shared::_tenants_changed]
);
extension_sql_file!(
    "../../sql/control_plane.sql",
    name = "control_plane",
    requires = ["tenants"]
);
extension_sql_file!(
    "../../sql/prices.sql",
    name = "prices",
    requires = ["control_plane"]
);
extension_sql_file!(
    "../../sql/budgets.sql",
    name = "budgets",
    requires = [
        "prices",
        admission::_admit_in_memory,
        admission::_admit_eval_in_memory,
        admission::_admission_refusal,
        admission::_admission_in_memory,
        admission::_materialize_reservation,
        admission::_materialize_lapsed_gateway_holds,
        admission::_reservation_being_written,
        admission::_release_in_memory,
        admission::_table_hold_in_memory,
        admission::_forget_in_memory,
        admission::_expire_in_memory,
        admission::_open_in_memory,
        context::_postgrest_request
    ]
);
extension_sql_file!(
    "../../sql/ledger.sql",
    name = "ledger",
    requires = ["budgets", pricing::_price_usage]
);
extension_sql_file!(
    "../../sql/credentials.sql",
    name = "credentials",
    requires = ["ledger"]
);
extension_sql_file!(
    "../../sql/prompts.sql",
    name = "prompts",
    requires = [
        "credentials",
        prompts::_check_skeleton,
        prompts::_check_prompt_version,
        prompts::_render_prompt,
        prompts::_render_prompt_version
    ]
);
extension_sql_file!(
    "../../sql/retrieval.sql",
    name = "retrieval",
    requires = ["prompts"]
);
extension_sql_file!(
    "../../sql/jobs.sql",
    name = "jobs",
    requires = ["retrieval"]
);
extension_sql_file!(
    "../../sql/completions.sql",
    name = "completions",
    requires = [
        "jobs",
        tokens::_input_token_bound,
        tokens::_request_input_bound_text
    ]
);
extension_sql_file!(
    "../../sql/pinecone.sql",
    name = "pinecone",
    requires = ["completions"]
);
extension_sql_file!(
    "../../sql/reconcile.sql",
    name = "reconcile",
    requires = ["pinecone"]
);
extension_sql_file!(
    "../../sql/gateway.sql",
    name = "gateway",
    requires = [
        "reconcile",
        gateway::_gateway_admit_in_memory,
        admission::_persist_gateway_holds,
        admission::_tenants_with_old_gateway_holds,
        admission::_gateway_hold,
        admission::_take_gateway_holds
    ]
);
extension_sql_file!(
    "../../sql/evals.sql",
    name = "evals",
    requires = [
        "gateway",
        evals::_eval_check_assertions,
        evals::_eval_score,
        evals::_eval_judge_messages,
        evals::_eval_judge_score
    ]
);
extension_sql_file!(
    "../../sql/provisioning.sql",
    name = "provisioning",
    requires = ["evals"]
);
extension_sql_file!(
    "../../sql/console.sql",
    name = "console",
    requires = ["provisioning"]
);
extension_sql_file!(
    "../../sql/deployment.sql",
    name = "deployment",
    requires = ["console"],
    finalize
);

#[pg_guard]
pub extern "C-unwind" fn _PG_init() {
    gucs::init();
    shared::init();
    admission::init();
}

#[cfg(any(test, feature = "pg_test"))]
#[pg_schema]
mod tests {
    use pgrx::prelude::*;
    use pgrx::spi::SpiResult;

    #[pg_test]
    fn no_context_is_null() -> SpiResult<()> {
        let tenant = Spi::get_one::<pgrx::Uuid>("select bulkhead.current_tenant()")?;
        assert_eq!(tenant, None);
        Ok(())
    }

    #[pg_test]
    fn set_tenant_round_trips_through_the_setting() -> SpiResult<()> {
        // #[pg_test] bodies run inside one transaction, as set_tenant requires.
        let id = Spi::get_one::<pgrx::Uuid>("select bulkhead.create_tenant('pgtest-a', 'A')")?;
        assert!(id.is_some(), "create_tenant returns the new id");
        Spi::run_with_args("select bulkhead.set_tenant($1)", &[id.into()])?;
        let current = Spi::get_one::<pgrx::Uuid>("select bulkhead.current_tenant()")?;
        assert_eq!(current, id);
        Spi::run("select bulkhead.set_tenant(null)")?;
        let cleared = Spi::get_one::<pgrx::Uuid>("select bulkhead.current_tenant()")?;
        assert_eq!(cleared, None);
        Ok(())
    }

    #[pg_test(error = "bulkhead.tenant_id can only be set by bulkhead.set_tenant()")]
    fn direct_set_is_refused() -> SpiResult<()> {
        Spi::run("set local bulkhead.tenant_id = '6f1c1a4e-3b0a-4b53-9a39-9d1b7f0f2a01'")
    }

    #[pg_test]
    fn sqlstate_packing_matches_postgres() {
        use bulkhead_policy::SqlState;
        assert_eq!(
            crate::errors::packed_sqlstate(SqlState::INSUFFICIENT_PRIVILEGE),
            PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE as i32
        );
        assert_eq!(
            crate::errors::packed_sqlstate(SqlState::UNDEFINED_OBJECT),
            PgSqlErrorCode::ERRCODE_UNDEFINED_OBJECT as i32
        );
    }
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
