\set v random(1, 2)
select bulkhead.activate_prompt('00000000-0000-4000-8000-000000000006', 'support', :v);
