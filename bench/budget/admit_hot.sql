-- One admission for the single hot tenant, as an application's driver sends it: BEGIN,
-- set_tenant, budget_check and COMMIT as prepared statements in one pipeline (one round trip).
\startpipeline
BEGIN;
SELECT bulkhead.set_tenant('00000000-0000-4000-8000-000000000001');
SELECT bulkhead.budget_check('bench-model', 100, 100);
COMMIT;
\endpipeline
