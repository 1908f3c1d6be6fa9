-- One admission for a random tenant out of 1,000, sent as admit_hot.sql sends it.
\set n random(1, 1000)
\startpipeline
BEGIN;
SELECT bulkhead.set_tenant(('00000000-0000-4000-8000-' || lpad(to_hex((:n)::int), 12, '0'))::uuid);
SELECT bulkhead.budget_check('bench-model', 100, 100);
COMMIT;
\endpipeline
