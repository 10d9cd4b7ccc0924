-- 0021: usage_hourly_mismatch (0007) also names a rollup row that carries
-- cost or tokens without requests.
--
-- The view compared the usage rows with the rollup rows that have requests
-- (requests = 0 is a row of refusals only: 402, 429 and 5xx counters, no
-- usage).  A row with requests 0 but cost, tokens or failures (a fault, a
-- hand edit) was left out: the reports, the top spenders and the dashboards
-- showed money no usage row holds, and reconcile said everything agreed (its
-- daily check only compares the daily rollup with the hourly one, which the
-- same fault may keep equal).  Now only a row whose exact columns are all 0
-- is left out.
CREATE OR REPLACE VIEW usage_hourly_mismatch AS
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
    FROM u FULL JOIN (SELECT * FROM usage_hourly
                      WHERE requests <> 0 OR prompt_cache_hit_tokens <> 0 OR prompt_cache_miss_tokens <> 0
                         OR completion_tokens <> 0 OR reasoning_tokens <> 0 OR cost_pico <> 0 OR failed_5xx <> 0) h
      ON h.customer_id = u.customer_id AND h.hour = u.hour AND h.key_id = u.key_id AND h.model = u.model
    WHERE u.requests IS DISTINCT FROM h.requests
       OR u.prompt_cache_hit_tokens IS DISTINCT FROM h.prompt_cache_hit_tokens
       OR u.prompt_cache_miss_tokens IS DISTINCT FROM h.prompt_cache_miss_tokens
       OR u.completion_tokens IS DISTINCT FROM h.completion_tokens
       OR u.reasoning_tokens IS DISTINCT FROM h.reasoning_tokens
       OR u.cost_pico IS DISTINCT FROM h.cost_pico
       OR u.failed_5xx IS DISTINCT FROM h.failed_5xx;
