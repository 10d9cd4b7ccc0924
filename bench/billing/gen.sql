-- gen.sql — fill a tollgate database with :rows usage rows (default 5,000,000) for
-- :customers customers (default 1000, 2 keys each, 3 models) over one month
-- (:month, default 2026-10), with their ledger rows and hourly rollups, consistent:
--   usage          :rows rows, request ids from gen_random_uuid(), spend skewed (customer
--                  rank r gets a share ~ r^-1.2: a few big spenders, a long tail)
--   ledger         one top-up per customer (enough credit) + one debit per usage row
--   usage_hourly   the sums of usage, built by the same GROUP BY as migration 0007
--   usage_daily    the sums of usage_hourly per customer and UTC day (migration 0015)
--   customers      balance_pico = sum(ledger) (ledger_mismatch stays empty)
-- All in SQL (generate_series), under session_replication_role = replica so the per-row
-- triggers (ledger -> balance, immutability, FK checks) do not run: the sums are
-- computed once at the end instead, and checked by the bench (usage_hourly_mismatch
-- on a sample, ledger_mismatch).  Run by bench/billing/run.sh on a private cluster.
--   psql -v rows=5000000 -v customers=1000 -v month=2026-10 -f gen.sql
\set ON_ERROR_STOP 1
\if :{?rows} \else \set rows 5000000 \endif
\if :{?customers} \else \set customers 1000 \endif
\if :{?month} \else \set month 2026-10 \endif
\timing on

SET session_replication_role = replica;
SET synchronous_commit = off;
SET maintenance_work_mem = '512MB';
SET work_mem = '256MB';

BEGIN;
INSERT INTO model_prices (model, input_cache_miss, input_cache_hit, output, effective_from)
SELECT m, miss, hit, out, timestamptz '2020-01-01'
FROM (VALUES ('bench-v3', 270000, 70000, 1100000), ('bench-r1', 550000, 140000, 2190000),
             ('bench-small', 100000, 25000, 400000)) v(m, miss, hit, out)
ON CONFLICT DO NOTHING;

CREATE TEMP TABLE bench_c AS
SELECT g AS rank, 'bench-c' || lpad(g::text, 5, '0') AS name FROM generate_series(1, :customers) g;
INSERT INTO customers (name) SELECT name FROM bench_c ORDER BY rank;
CREATE TEMP TABLE bench_k AS
SELECT b.rank, c.id AS customer_id, k AS slot, nextval('api_keys_id_seq') AS key_id
FROM bench_c b JOIN customers c ON c.name = b.name, generate_series(0, 1) k;
INSERT INTO api_keys (id, customer_id, key_hash, prefix, name)
SELECT key_id, customer_id, md5(key_id::text || 'a') || md5(key_id::text || 'b'), 'sk-bench', 'bench'
FROM bench_k;
-- cumulative spend shares: customer rank r ~ r^-1.2
CREATE TEMP TABLE bench_w AS
SELECT rank, sum(w) OVER (ORDER BY rank) / sum(w) OVER () AS cum
FROM (SELECT rank, power(rank, -1.2) AS w FROM bench_c) x;
CREATE INDEX ON bench_w (cum);
ANALYZE bench_w;
COMMIT;

-- usage: one random draw picks the customer (by the cumulative shares), the rest follow
BEGIN;
INSERT INTO usage (request_id, customer_id, key_id, model, prompt_tokens, prompt_cache_hit_tokens,
                   prompt_cache_miss_tokens, completion_tokens, reasoning_tokens, price_input_cache_miss,
                   price_input_cache_hit, price_output, cost_pico, http_status, stream, received_at,
                   first_byte_at, finished_at, recorded_at)
SELECT gen_random_uuid(), k.customer_id, k.key_id, p.model, t.prompt, t.hit, t.prompt - t.hit, t.completion,
       t.reasoning, p.input_cache_miss, p.input_cache_hit, p.output,
       (t.prompt - t.hit) * p.input_cache_miss + t.hit * p.input_cache_hit + t.completion * p.output,
       t.status, t.stream, t.at, t.at + interval '300 ms', t.at + interval '2 s', t.at + interval '2 s'
FROM (SELECT g, random() AS u, (g % 2)::int AS slot, (g % 3)::int AS mi,
             100 + (random() * 4000)::bigint AS prompt, (g % 7 = 0) AS stream,
             CASE WHEN g % 97 = 0 THEN 500 ELSE 200 END AS status,
             ((:'month' || '-01')::timestamp AT TIME ZONE 'UTC')
               + random() * (((:'month' || '-01')::timestamp + interval '1 month') - (:'month' || '-01')::timestamp)
               AS at
      FROM generate_series(1, :rows) g) r0
CROSS JOIN LATERAL (SELECT r0.*, (SELECT w.rank FROM bench_w w WHERE w.cum >= r0.u ORDER BY w.cum LIMIT 1) AS rank) r
CROSS JOIN LATERAL (SELECT r.prompt, (r.prompt * random() * 0.6)::bigint AS hit,
                           10 + (random() * 800)::bigint AS completion, r.status, r.stream, r.at) t0
CROSS JOIN LATERAL (SELECT t0.*, CASE WHEN r.mi = 1 THEN (t0.completion * random() * 0.5)::bigint ELSE 0 END
                           AS reasoning) t
JOIN bench_k k ON k.rank = coalesce(r.rank, 1) AND k.slot = r.slot
JOIN (SELECT row_number() OVER (ORDER BY model) - 1 AS mi, model, input_cache_miss, input_cache_hit, output
      FROM model_prices WHERE model LIKE 'bench-%') p ON p.mi = r.mi;
COMMIT;

BEGIN;
-- credit: each customer gets 10% more than it spends, at the start of the month
INSERT INTO ledger (customer_id, kind, amount_pico, note, created_at)
SELECT customer_id, 'topup', sum(cost_pico) * 11 / 10 + 1000000000000, 'bench',
       (:'month' || '-01')::timestamp AT TIME ZONE 'UTC'
FROM usage u JOIN bench_k k USING (customer_id) WHERE k.slot = 0 GROUP BY customer_id;
INSERT INTO ledger (customer_id, kind, amount_pico, request_id, created_at)
SELECT customer_id, 'usage', -cost_pico, request_id, finished_at FROM usage u
WHERE cost_pico > 0 AND customer_id IN (SELECT customer_id FROM bench_k);
INSERT INTO usage_hourly (customer_id, hour, key_id, model, requests, prompt_cache_hit_tokens,
                          prompt_cache_miss_tokens, completion_tokens, reasoning_tokens, cost_pico, failed_5xx)
SELECT customer_id, date_trunc('hour', received_at, 'UTC'), coalesce(key_id, 0), model, count(*),
       sum(prompt_cache_hit_tokens), sum(prompt_cache_miss_tokens), sum(completion_tokens), sum(reasoning_tokens),
       sum(cost_pico), count(*) FILTER (WHERE http_status >= 500)
FROM usage WHERE customer_id IN (SELECT customer_id FROM bench_k) GROUP BY 1, 2, 3, 4;
INSERT INTO usage_daily (customer_id, day, requests, prompt_cache_hit_tokens, prompt_cache_miss_tokens,
                         completion_tokens, reasoning_tokens, cost_pico, failed_5xx)
SELECT customer_id, date_trunc('day', hour, 'UTC'), sum(requests), sum(prompt_cache_hit_tokens),
       sum(prompt_cache_miss_tokens), sum(completion_tokens), sum(reasoning_tokens), sum(cost_pico), sum(failed_5xx)
FROM usage_hourly WHERE customer_id IN (SELECT customer_id FROM bench_k) GROUP BY 1, 2;
UPDATE customers c SET balance_pico = s.v
FROM (SELECT customer_id, sum(amount_pico) AS v FROM ledger GROUP BY 1) s
WHERE s.customer_id = c.id AND c.name LIKE 'bench-c%';
COMMIT;

RESET session_replication_role;
VACUUM ANALYZE usage;
VACUUM ANALYZE ledger;
VACUUM ANALYZE usage_hourly;
VACUUM ANALYZE usage_daily;
VACUUM ANALYZE customers;
SELECT (SELECT count(*) FROM usage) AS usage_rows, (SELECT count(*) FROM usage_hourly) AS rollup_rows,
       (SELECT count(*) FROM ledger) AS ledger_rows, (SELECT count(*) FROM ledger_mismatch) AS ledger_mismatches;
