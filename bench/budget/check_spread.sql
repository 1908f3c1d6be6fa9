-- One admission for a random tenant out of 1,000, context and check in one round trip. The tenant
-- id is built from built-in functions, which the planner folds cheaply (a SQL helper function
-- cost ~6 % of the transaction).
\set n random(1, 1000)
SELECT bulkhead.set_tenant(('00000000-0000-4000-8000-' || lpad(to_hex(:n), 12, '0'))::uuid) \; SELECT bulkhead.budget_check('bench-model', 100, 100);
