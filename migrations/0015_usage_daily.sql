-- 0015_usage_daily.sql — daily rollups of usage per customer.
--
-- One row per (customer_id, day): the sums of that customer's hourly rollups
-- (usage_hourly, 0007) of one UTC day, every column (requests, token classes,
-- cost, failed_5xx and the refusal counters).  Reports over many customers or
-- many days (the operator's top spenders, a customer's usage by day without a
-- split) read 24 times fewer rows per customer-day, and one row where the
-- hourly table has one per key and model.
--
-- Kept in the same statement as the hourly rows it sums, so in the same
-- transaction as the usage rows: the settlement statement
-- (billing/bill_settle.c) adds the rows it inserted to their hourly rows and
-- then to their daily rows; the refusal counters (billing/bill_refusal.c) go
-- to both in one statement.  Lock order in every writer: usage_hourly rows,
-- then usage_daily rows, each in primary-key order, then (the ledger trigger)
-- customers.
--
--   day   date_trunc('day', usage.received_at, 'UTC') (= of the hour)
--
-- Exact: every column equals the sum of the customer's usage_hourly rows of
-- that day.  `usage_daily_mismatch` lists the (customer, day) where it does
-- not (always empty; the tests and `tg_reconcile` read it).
CREATE TABLE usage_daily (
    customer_id              bigint NOT NULL REFERENCES customers(id),
    day                      timestamptz NOT NULL CHECK (day = date_trunc('day', day, 'UTC')),
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
    PRIMARY KEY (customer_id, day)
);
-- The operator's reports over every customer for a period (top spenders).
CREATE INDEX usage_daily_day ON usage_daily (day) INCLUDE (customer_id, cost_pico);

-- Daily rows that differ from the sums of their hourly rows (either side missing included).
CREATE VIEW usage_daily_mismatch AS
    WITH h AS (
        SELECT customer_id, date_trunc('day', hour, 'UTC') AS day, sum(requests) AS requests,
               sum(prompt_cache_hit_tokens) AS prompt_cache_hit_tokens,
               sum(prompt_cache_miss_tokens) AS prompt_cache_miss_tokens, sum(completion_tokens) AS completion_tokens,
               sum(reasoning_tokens) AS reasoning_tokens, sum(cost_pico) AS cost_pico, sum(failed_5xx) AS failed_5xx,
               sum(refused_402) AS refused_402, sum(refused_429) AS refused_429, sum(refused_5xx) AS refused_5xx
        FROM usage_hourly GROUP BY 1, 2)
    SELECT coalesce(h.customer_id, d.customer_id) AS customer_id, coalesce(h.day, d.day) AS day,
           h.requests AS hourly_requests, d.requests AS daily_requests,
           h.cost_pico AS hourly_cost_pico, d.cost_pico AS daily_cost_pico
    FROM h FULL JOIN usage_daily d ON d.customer_id = h.customer_id AND d.day = h.day
    WHERE (h.requests, h.prompt_cache_hit_tokens, h.prompt_cache_miss_tokens, h.completion_tokens,
           h.reasoning_tokens, h.cost_pico, h.failed_5xx, h.refused_402, h.refused_429, h.refused_5xx)
          IS DISTINCT FROM
          (d.requests, d.prompt_cache_hit_tokens, d.prompt_cache_miss_tokens, d.completion_tokens,
           d.reasoning_tokens, d.cost_pico, d.failed_5xx, d.refused_402, d.refused_429, d.refused_5xx);

-- What the hourly rollups held before this migration.
INSERT INTO usage_daily (customer_id, day, requests, prompt_cache_hit_tokens, prompt_cache_miss_tokens,
                         completion_tokens, reasoning_tokens, cost_pico, failed_5xx, refused_402, refused_429,
                         refused_5xx)
SELECT customer_id, date_trunc('day', hour, 'UTC'), sum(requests), sum(prompt_cache_hit_tokens),
       sum(prompt_cache_miss_tokens), sum(completion_tokens), sum(reasoning_tokens), sum(cost_pico), sum(failed_5xx),
       sum(refused_402), sum(refused_429), sum(refused_5xx)
FROM usage_hourly GROUP BY 1, 2;

-- Reconciliation (tg_reconcile, 0006) also names every daily row that is not
-- the sum of its hourly rows, as check `rollup_daily`.
ALTER FUNCTION tg_reconcile(timestamptz, timestamptz) RENAME TO tg_reconcile_0006;
CREATE FUNCTION tg_reconcile(t_from timestamptz, t_to timestamptz)
RETURNS TABLE (check_name text, subject text, expected text, actual text)
LANGUAGE plpgsql STABLE AS $$
BEGIN
    RETURN QUERY SELECT * FROM tg_reconcile_0006(t_from, t_to);
    RETURN QUERY
    SELECT 'rollup_daily', 'customer ' || m.customer_id || ' day ' || to_char(m.day AT TIME ZONE 'UTC', 'YYYY-MM-DD'),
           'requests ' || coalesce(m.hourly_requests, 0) || ' cost ' || coalesce(m.hourly_cost_pico, 0),
           'requests ' || coalesce(m.daily_requests, 0) || ' cost ' || coalesce(m.daily_cost_pico, 0)
    FROM usage_daily_mismatch m
    WHERE m.day >= date_trunc('day', t_from, 'UTC') AND m.day < t_to;
END $$;
