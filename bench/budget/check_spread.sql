-- One admission for a random tenant out of 1,000, in its own transaction.
\set n random(1, 1000)
BEGIN;
SELECT bulkhead.set_tenant(bench.tenant_id(:n));
SELECT bulkhead.budget_check('bench-model', 100, 100);
COMMIT;
