-- One render per transaction, as an application sends it (context and render in one round trip).
\set n random(1, 100)
SELECT bulkhead.set_tenant(('00000000-0000-4000-8000-' || lpad(to_hex(:n), 12, '0'))::uuid) \; SELECT bulkhead.render_prompt('support', '{"question": "How do I get a refund?", "customer_name": "Kim", "documents": [{"title": "Refunds", "text": "Refunds within 30 days."}, {"title": "Shipping", "text": "Ships in 2 days."}]}'::jsonb);
