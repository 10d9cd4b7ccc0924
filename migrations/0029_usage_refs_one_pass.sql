-- 0029_usage_refs_one_pass.sql — the references of a statement's new usage
-- rows (0017, 0018) gathered in one pass over its transition table.
--
-- 0018 read usage_new four times, once per reference (customer, key, price,
-- price override), each a hash of all the statement's rows: a settlement
-- batch of 1024 rows was hashed four times for a handful of distinct ids.
-- Now one pass keeps the distinct (customer, key, price, override) tuples (a
-- batch has a few: one per key and price version in it), and the four checks
-- read those.  Same checks in the same order, same error: SQLSTATE 23503
-- naming the first missing reference.
CREATE OR REPLACE FUNCTION usage_refs_check() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    bad text;
BEGIN
    WITH r AS MATERIALIZED (SELECT DISTINCT customer_id, key_id, price_id, override_id FROM usage_new)
    SELECT coalesce(
        (SELECT 'customer ' || d.id FROM (SELECT DISTINCT customer_id AS id FROM r) d
            WHERE NOT EXISTS (SELECT 1 FROM customers c WHERE c.id = d.id) LIMIT 1),
        (SELECT 'key ' || d.id FROM (SELECT DISTINCT key_id AS id FROM r WHERE key_id IS NOT NULL) d
            WHERE NOT EXISTS (SELECT 1 FROM api_keys k WHERE k.id = d.id) LIMIT 1),
        (SELECT 'price ' || d.id FROM (SELECT DISTINCT price_id AS id FROM r WHERE price_id IS NOT NULL) d
            WHERE NOT EXISTS (SELECT 1 FROM model_prices p WHERE p.id = d.id) LIMIT 1),
        (SELECT 'price override ' || d.id
            FROM (SELECT DISTINCT override_id AS id FROM r WHERE override_id IS NOT NULL) d
            WHERE NOT EXISTS (SELECT 1 FROM price_overrides o WHERE o.id = d.id) LIMIT 1))
        INTO bad;
    IF bad IS NOT NULL THEN
        RAISE EXCEPTION 'usage row refers to % that does not exist', bad USING ERRCODE = '23503';
    END IF;
    RETURN NULL;
END $$;
