-- Bulkhead 0.1.0 to 0.2.0. Unreleased: every schema change goes here as well as into sql/*.sql
-- until 0.2.0 is released; from then on this file never changes (scripts/check-releases.sh).
\echo Use "ALTER EXTENSION bulkhead UPDATE TO '0.2.0'" to load this file. \quit

comment on table bulkhead.prices is
    'Model prices (USD per million tokens), versioned by effective_from; a missing cached or cache-write rate bills at the input rate. Seeded rows come with the extension and are not dumped.';
