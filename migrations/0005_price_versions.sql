-- 0005_price_versions.sql — per-customer price overrides, the price version
-- on every usage row, and immutable price and usage rows.
--
-- An override applies to one customer and one model from its effective_from
-- on, until a later override of the same pair.  Kinds:
--   price    explicit prices (micro-USD per 1M tokens) replacing the base
--            price book at every time of day (bands included)
--   percent  a percentage of the base price in force (its band included):
--            each unit price is round(base * percent / 100), half away from
--            zero, so prices stay integers and costs exact
--   base     back to the base price book (ends the previous override)
-- Rows are never changed or deleted (triggers), like model_prices: a new
-- version is a new row.  tg_customer_price(customer, model, t) is the rule;
-- admission uses it and the usage row keeps price_id (the model_prices row)
-- and override_id (the override in force, NULL for none) next to the price
-- snapshot it was billed at.

CREATE TABLE price_overrides (
    id               bigserial PRIMARY KEY,
    customer_id      bigint NOT NULL REFERENCES customers(id),
    model            text NOT NULL CHECK (length(model) BETWEEN 1 AND 200),
    kind             text NOT NULL CHECK (kind IN ('price', 'percent', 'base')),
    input_cache_miss bigint CHECK (input_cache_miss BETWEEN 0 AND 1000000000000),
    input_cache_hit  bigint CHECK (input_cache_hit BETWEEN 0 AND 1000000000000),
    output           bigint CHECK (output BETWEEN 0 AND 1000000000000),
    percent          numeric(9,4) CHECK (percent BETWEEN 0 AND 1000),
    effective_from   timestamptz NOT NULL DEFAULT now(),
    created_at       timestamptz NOT NULL DEFAULT now(),
    CHECK ((kind = 'price') = (input_cache_miss IS NOT NULL AND input_cache_hit IS NOT NULL AND output IS NOT NULL)),
    CHECK (kind = 'price' OR (input_cache_miss IS NULL AND input_cache_hit IS NULL AND output IS NULL)),
    CHECK ((kind = 'percent') = (percent IS NOT NULL)),
    UNIQUE (customer_id, model, effective_from)
);

-- The price a customer pays for a model at time t: its override in force
-- applied to the base price (tg_price) in force.  No row: no price.
CREATE FUNCTION tg_customer_price(cid bigint, m text, at timestamptz)
RETURNS TABLE (price_id bigint, override_id bigint, input_cache_miss bigint, input_cache_hit bigint, output bigint)
LANGUAGE sql STABLE AS $$
    SELECT p.id, CASE WHEN o.kind IN ('price', 'percent') THEN o.id END,
           CASE o.kind WHEN 'price' THEN o.input_cache_miss
                       WHEN 'percent' THEN round(p.input_cache_miss * o.percent / 100)::bigint
                       ELSE p.input_cache_miss END,
           CASE o.kind WHEN 'price' THEN o.input_cache_hit
                       WHEN 'percent' THEN round(p.input_cache_hit * o.percent / 100)::bigint
                       ELSE p.input_cache_hit END,
           CASE o.kind WHEN 'price' THEN o.output
                       WHEN 'percent' THEN round(p.output * o.percent / 100)::bigint
                       ELSE p.output END
    FROM (SELECT 1) one
    LEFT JOIN LATERAL tg_price(m, at) p ON true
    LEFT JOIN LATERAL (SELECT * FROM price_overrides x WHERE x.customer_id = cid AND x.model = m
                       AND x.effective_from <= at ORDER BY x.effective_from DESC, x.id DESC LIMIT 1) o ON true
    WHERE p.id IS NOT NULL OR o.kind = 'price'
$$;

ALTER TABLE usage
    ADD COLUMN price_id bigint REFERENCES model_prices(id),
    ADD COLUMN override_id bigint REFERENCES price_overrides(id);

-- Rows that are history: never changed, never deleted (TRUNCATE included).
CREATE FUNCTION tg_immutable() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '% rows are never changed or deleted (%)', TG_TABLE_NAME, TG_OP
        USING ERRCODE = '55000';
END $$;

CREATE TRIGGER model_prices_immutable BEFORE UPDATE OR DELETE ON model_prices
    FOR EACH ROW EXECUTE FUNCTION tg_immutable();
CREATE TRIGGER model_prices_no_truncate BEFORE TRUNCATE ON model_prices
    FOR EACH STATEMENT EXECUTE FUNCTION tg_immutable();
CREATE TRIGGER price_overrides_immutable BEFORE UPDATE OR DELETE ON price_overrides
    FOR EACH ROW EXECUTE FUNCTION tg_immutable();
CREATE TRIGGER price_overrides_no_truncate BEFORE TRUNCATE ON price_overrides
    FOR EACH STATEMENT EXECUTE FUNCTION tg_immutable();
CREATE TRIGGER usage_immutable BEFORE UPDATE OR DELETE ON usage
    FOR EACH ROW EXECUTE FUNCTION tg_immutable();
CREATE TRIGGER usage_no_truncate BEFORE TRUNCATE ON usage
    FOR EACH STATEMENT EXECUTE FUNCTION tg_immutable();
CREATE TRIGGER ledger_no_truncate BEFORE TRUNCATE ON ledger
    FOR EACH STATEMENT EXECUTE FUNCTION tg_immutable();
