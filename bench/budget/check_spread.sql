-- One admission for a random tenant out of 1,000, context and check in one round trip.
\set n random(1, 1000)
SELECT bulkhead.set_tenant(bench.tenant_id(:n)) \; SELECT bulkhead.budget_check('bench-model', 100, 100);
