-- 0018_refs_distinct.sql — the statement-level reference checks of 0017 look
-- up each distinct referenced id once, in one query per trigger.
--
-- 0017 checked usage -> customers, api_keys, model_prices, price_overrides
-- and ledger -> customers with one index probe per new row and reference (a
-- settlement batch of 1024 rows of one customer and key probed the same
-- customer row 2048 times), in six queries.  A batch has a handful of
-- distinct customers, keys and prices: each is now looked up once (the
-- DISTINCT is a hash over the transition table), and each trigger runs one
-- query.  ledger -> usage (request ids, all distinct) keeps its probe per
-- row.  Same errors: SQLSTATE 23503, naming the first missing reference.
CREATE OR REPLACE FUNCTION usage_refs_check() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    bad text;
BEGIN
    SELECT coalesce(
        (SELECT 'customer ' || d.id FROM (SELECT DISTINCT customer_id AS id FROM usage_new) d
            WHERE NOT EXISTS (SELECT 1 FROM customers c WHERE c.id = d.id) LIMIT 1),
        (SELECT 'key ' || d.id FROM (SELECT DISTINCT key_id AS id FROM usage_new WHERE key_id IS NOT NULL) d
            WHERE NOT EXISTS (SELECT 1 FROM api_keys k WHERE k.id = d.id) LIMIT 1),
        (SELECT 'price ' || d.id FROM (SELECT DISTINCT price_id AS id FROM usage_new WHERE price_id IS NOT NULL) d
            WHERE NOT EXISTS (SELECT 1 FROM model_prices p WHERE p.id = d.id) LIMIT 1),
        (SELECT 'price override ' || d.id
            FROM (SELECT DISTINCT override_id AS id FROM usage_new WHERE override_id IS NOT NULL) d
            WHERE NOT EXISTS (SELECT 1 FROM price_overrides o WHERE o.id = d.id) LIMIT 1))
        INTO bad;
    IF bad IS NOT NULL THEN
        RAISE EXCEPTION 'usage row refers to % that does not exist', bad USING ERRCODE = '23503';
    END IF;
    RETURN NULL;
END $$;

CREATE OR REPLACE FUNCTION ledger_refs_check() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    bad text;
BEGIN
    SELECT coalesce(
        (SELECT 'customer ' || d.id FROM (SELECT DISTINCT customer_id AS id FROM ledger_new) d
            WHERE NOT EXISTS (SELECT 1 FROM customers c WHERE c.id = d.id) LIMIT 1),
        (SELECT 'usage row ' || n.request_id FROM ledger_new n
            WHERE n.request_id IS NOT NULL AND NOT EXISTS (SELECT 1 FROM usage u WHERE u.request_id = n.request_id)
            LIMIT 1))
        INTO bad;
    IF bad IS NOT NULL THEN
        RAISE EXCEPTION 'ledger row refers to % that does not exist', bad USING ERRCODE = '23503';
    END IF;
    RETURN NULL;
END $$;
