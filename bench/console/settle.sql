-- One admitted and settled call for a random tenant out of 1,000: the settle's ledger insert
-- fires the usage rollup trigger (or not, in the other arm).
\set n random(1, 1000)
BEGIN;
SELECT bulkhead.set_tenant(('00000000-0000-4000-8000-' || lpad(to_hex(:n), 12, '0'))::uuid);
SELECT bulkhead.ledger_record(bulkhead.budget_check('bench-model', 100, 100),
    '{"prompt_tokens": 90, "completion_tokens": 40}', 'bench-' || gen_random_uuid()::text) \gset
COMMIT;
