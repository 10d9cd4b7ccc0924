-- 0028_ledger_refs_probe.sql — the check of ledger -> usage (0017, 0018)
-- probes usage's primary key once per new ledger row whatever the planner's
-- statistics said when the plan was made.
--
-- plpgsql plans a trigger's query once per session and keeps the plan until
-- the tables' statistics change.  A gateway's settlement session that
-- started on a new database (usage empty, never analyzed) planned 0018's
-- NOT EXISTS (SELECT 1 FROM usage ...) as a hash anti-join over the whole
-- usage table and kept that plan until autovacuum first analyzed usage: a
-- full scan of usage, hashed (spilling to disk past work_mem), at every
-- settlement batch.  In bench/gateway, whose database starts empty, that
-- was 34 % of PostgreSQL's CPU one to two minutes in (perf; usage's
-- seq_scan counter: 231 scans, 27 M rows read for 305,000 rows settled).
-- A session that starts when usage is empty (or freshly vacuumed empty)
-- could also keep a per-row sequential scan.
--
-- Now each new ledger row's request id is looked up with a correlated
-- subquery, which the planner never turns into a join (so never a hash over
-- usage), and the function plans with enable_seqscan off, so that lookup is
-- the primary key's index scan even while usage looks empty.  (The other
-- scans in this function read the transition table, which a sequential
-- scan setting does not touch, and customers, which has its primary key.)
-- Same errors: SQLSTATE 23503 naming the first missing reference.
CREATE OR REPLACE FUNCTION ledger_refs_check() RETURNS trigger LANGUAGE plpgsql
SET enable_seqscan = off AS $$
DECLARE
    bad text;
BEGIN
    SELECT coalesce(
        (SELECT 'customer ' || d.id FROM (SELECT DISTINCT customer_id AS id FROM ledger_new) d
            WHERE NOT EXISTS (SELECT 1 FROM customers c WHERE c.id = d.id) LIMIT 1),
        (SELECT 'usage row ' || n.request_id FROM ledger_new n
            WHERE n.request_id IS NOT NULL
              AND (SELECT true FROM usage u WHERE u.request_id = n.request_id) IS NULL
            LIMIT 1))
        INTO bad;
    IF bad IS NOT NULL THEN
        RAISE EXCEPTION 'ledger row refers to % that does not exist', bad USING ERRCODE = '23503';
    END IF;
    RETURN NULL;
END $$;
