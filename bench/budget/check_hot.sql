-- One admission for the single hot tenant. The context and the check travel in one round trip
-- and run in one implicit transaction, as an application can send them.
SELECT bulkhead.set_tenant('00000000-0000-4000-8000-000000000001') \; SELECT bulkhead.budget_check('bench-model', 100, 100);
