-- One admission for the single hot tenant, in its own transaction.
BEGIN;
SELECT bulkhead.set_tenant('00000000-0000-4000-8000-000000000001');
SELECT bulkhead.budget_check('bench-model', 100, 100);
COMMIT;
