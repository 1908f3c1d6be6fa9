-- 100 renders for one random tenant out of 100, in one statement: renders per second on one
-- backend (one core), without the round trip per render.
\set n random(1, 100)
SELECT bulkhead.set_tenant(('00000000-0000-4000-8000-' || lpad(to_hex(:n), 12, '0'))::uuid) \; SELECT count(bulkhead.render_prompt('support', '{"question": "How do I get a refund?", "customer_name": "Kim", "documents": [{"title": "Refunds", "text": "Refunds within 30 days."}, {"title": "Shipping", "text": "Ships in 2 days."}]}'::jsonb)) FROM generate_series(1, 100);
