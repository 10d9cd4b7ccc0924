-- 0007_usage_hourly.sql — hourly rollups of usage per customer, key and model.
--
-- One row per (customer_id, hour, key_id, model).  The settlement statement
-- (billing/bill_settle.c) adds the usage rows it inserts to their rollup row in
-- the same statement, hence the same transaction: the rollup is never behind
-- the usage table or the ledger, and a row re-sent after a crash (ON CONFLICT
-- DO NOTHING on usage) adds nothing to its rollup either.
--
--   hour           date_trunc('hour', usage.received_at, 'UTC'): the hour the
--                  request arrived (the same instant invoices and usage
--                  listings bucket by)
--   key_id         usage.key_id, 0 when the row has no key
--   requests       usage rows (any http_status)
--   prompt_cache_hit_tokens, prompt_cache_miss_tokens, completion_tokens,
--   reasoning_tokens (inside completion_tokens, as on usage rows)
--   cost_pico      sum of usage.cost_pico (NUMERIC: never overflows)
--   failed_5xx     usage rows with http_status >= 500 (a worker was asked)
--   Counters of authenticated requests answered without a usage row (so
--   without cost), written in batches by the gateway (bill_refusal), at least
--   once rather than exactly once:
--   refused_402    insufficient balance (or a spending limit)
--   refused_429    rate or concurrency limit
--   refused_5xx    5xx before any worker was asked (Redis down, ...)
--
-- Exact (equal to sums over usage, always): requests .. failed_5xx.
-- `usage_hourly_mismatch` lists the (customer, hour, key, model) where they
-- are not (always empty; the tests and reconcile read it).
CREATE TABLE usage_hourly (
    customer_id              bigint NOT NULL REFERENCES customers(id),
    hour                     timestamptz NOT NULL CHECK (hour = date_trunc('hour', hour, 'UTC')),
    key_id                   bigint NOT NULL DEFAULT 0,
    model                    text NOT NULL,
    requests                 bigint NOT NULL DEFAULT 0,
    prompt_cache_hit_tokens  bigint NOT NULL DEFAULT 0,
    prompt_cache_miss_tokens bigint NOT NULL DEFAULT 0,
    completion_tokens        bigint NOT NULL DEFAULT 0,
    reasoning_tokens         bigint NOT NULL DEFAULT 0,
    cost_pico                numeric(38,0) NOT NULL DEFAULT 0,
    failed_5xx               bigint NOT NULL DEFAULT 0,
    refused_402              bigint NOT NULL DEFAULT 0,
    refused_429              bigint NOT NULL DEFAULT 0,
    refused_5xx              bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (customer_id, hour, key_id, model)
);
-- The operator's reports over every customer for a period (top spenders).
CREATE INDEX usage_hourly_hour ON usage_hourly (hour) INCLUDE (customer_id, cost_pico);

-- Usage that is not (exactly) in its rollup, or rollup that has no usage.
CREATE VIEW usage_hourly_mismatch AS
    WITH u AS (
        SELECT customer_id, date_trunc('hour', received_at, 'UTC') AS hour, coalesce(key_id, 0) AS key_id, model,
               count(*) AS requests, sum(prompt_cache_hit_tokens) AS prompt_cache_hit_tokens,
               sum(prompt_cache_miss_tokens) AS prompt_cache_miss_tokens, sum(completion_tokens) AS completion_tokens,
               sum(reasoning_tokens) AS reasoning_tokens, sum(cost_pico)::numeric(38,0) AS cost_pico,
               count(*) FILTER (WHERE http_status >= 500) AS failed_5xx
        FROM usage GROUP BY 1, 2, 3, 4)
    SELECT coalesce(u.customer_id, h.customer_id) AS customer_id, coalesce(u.hour, h.hour) AS hour,
           coalesce(u.key_id, h.key_id) AS key_id, coalesce(u.model, h.model) AS model,
           u.requests AS usage_requests, h.requests AS rollup_requests,
           u.cost_pico AS usage_cost_pico, h.cost_pico AS rollup_cost_pico
    FROM u FULL JOIN (SELECT * FROM usage_hourly WHERE requests > 0) h
      ON h.customer_id = u.customer_id AND h.hour = u.hour AND h.key_id = u.key_id AND h.model = u.model
    WHERE u.requests IS DISTINCT FROM h.requests
       OR u.prompt_cache_hit_tokens IS DISTINCT FROM h.prompt_cache_hit_tokens
       OR u.prompt_cache_miss_tokens IS DISTINCT FROM h.prompt_cache_miss_tokens
       OR u.completion_tokens IS DISTINCT FROM h.completion_tokens
       OR u.reasoning_tokens IS DISTINCT FROM h.reasoning_tokens
       OR u.cost_pico IS DISTINCT FROM h.cost_pico
       OR u.failed_5xx IS DISTINCT FROM h.failed_5xx;

-- Usage rows that existed before this migration.
INSERT INTO usage_hourly (customer_id, hour, key_id, model, requests, prompt_cache_hit_tokens,
                          prompt_cache_miss_tokens, completion_tokens, reasoning_tokens, cost_pico, failed_5xx)
SELECT customer_id, date_trunc('hour', received_at, 'UTC'), coalesce(key_id, 0), model, count(*),
       sum(prompt_cache_hit_tokens), sum(prompt_cache_miss_tokens), sum(completion_tokens), sum(reasoning_tokens),
       sum(cost_pico), count(*) FILTER (WHERE http_status >= 500)
FROM usage GROUP BY 1, 2, 3, 4;
