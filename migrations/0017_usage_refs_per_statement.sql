-- 0017_usage_refs_per_statement.sql — the references of usage and ledger
-- rows checked once per statement, not once per row.
--
-- A settlement batch inserts N usage rows and N ledger debits in one
-- statement.  Their foreign keys (usage -> customers, api_keys, model_prices,
-- price_overrides; ledger -> customers, usage) were checked row by row: 4
-- SPI queries per settled row, each planning-free but starting an executor
-- (ExecInitLockRows, an index scan, a row lock): 47 % of PostgreSQL's CPU per
-- settled row (perf, billing/README.md "Settlement throughput").  Here the
-- same references are checked by statement-level triggers over the
-- statement's new rows (transition tables): one anti-join per reference and
-- statement.  A missing row raises SQLSTATE 23503 (foreign_key_violation), as
-- the constraint did, so a settlement batch with a bad row is still retried
-- row by row and that row rejected alone.
--
-- What the constraints also did on the referenced side — refuse to delete (or
-- re-key) a customer, key, price or override that rows refer to, and lock
-- the referenced row against a concurrent delete — is kept by refusing every
-- DELETE, TRUNCATE and change of id on customers and api_keys (model_prices
-- and price_overrides already refuse every change, 0005): a customer or key
-- is closed (keys revoked), never deleted, so no reference can go stale.
-- And one index fewer per usage row (usage_key_time, at the end).
ALTER TABLE usage DROP CONSTRAINT usage_customer_id_fkey;
ALTER TABLE usage DROP CONSTRAINT usage_key_id_fkey;
ALTER TABLE usage DROP CONSTRAINT usage_price_id_fkey;
ALTER TABLE usage DROP CONSTRAINT usage_override_id_fkey;
ALTER TABLE ledger DROP CONSTRAINT ledger_customer_id_fkey;
ALTER TABLE ledger DROP CONSTRAINT ledger_request_id_fkey;

CREATE FUNCTION usage_refs_check() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    bad text;
BEGIN
    SELECT 'customer ' || n.customer_id INTO bad FROM usage_new n
        WHERE NOT EXISTS (SELECT 1 FROM customers c WHERE c.id = n.customer_id) LIMIT 1;
    IF bad IS NULL THEN
        SELECT 'key ' || n.key_id INTO bad FROM usage_new n
            WHERE n.key_id IS NOT NULL AND NOT EXISTS (SELECT 1 FROM api_keys k WHERE k.id = n.key_id) LIMIT 1;
    END IF;
    IF bad IS NULL THEN
        SELECT 'price ' || n.price_id INTO bad FROM usage_new n
            WHERE n.price_id IS NOT NULL AND NOT EXISTS (SELECT 1 FROM model_prices p WHERE p.id = n.price_id) LIMIT 1;
    END IF;
    IF bad IS NULL THEN
        SELECT 'price override ' || n.override_id INTO bad FROM usage_new n
            WHERE n.override_id IS NOT NULL
              AND NOT EXISTS (SELECT 1 FROM price_overrides o WHERE o.id = n.override_id) LIMIT 1;
    END IF;
    IF bad IS NOT NULL THEN
        RAISE EXCEPTION 'usage row refers to % that does not exist', bad USING ERRCODE = '23503';
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER usage_refs AFTER INSERT ON usage REFERENCING NEW TABLE AS usage_new
    FOR EACH STATEMENT EXECUTE FUNCTION usage_refs_check();

CREATE FUNCTION ledger_refs_check() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    bad text;
BEGIN
    SELECT 'customer ' || n.customer_id INTO bad FROM ledger_new n
        WHERE NOT EXISTS (SELECT 1 FROM customers c WHERE c.id = n.customer_id) LIMIT 1;
    IF bad IS NULL THEN
        SELECT 'usage row ' || n.request_id INTO bad FROM ledger_new n
            WHERE n.request_id IS NOT NULL AND NOT EXISTS (SELECT 1 FROM usage u WHERE u.request_id = n.request_id)
            LIMIT 1;
    END IF;
    IF bad IS NOT NULL THEN
        RAISE EXCEPTION 'ledger row refers to % that does not exist', bad USING ERRCODE = '23503';
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER ledger_refs AFTER INSERT ON ledger REFERENCING NEW TABLE AS ledger_new
    FOR EACH STATEMENT EXECUTE FUNCTION ledger_refs_check();

-- The referenced side: customers and keys are never deleted nor re-keyed.
CREATE FUNCTION tg_never_deleted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '% rows are never deleted or re-keyed (usage and ledger rows refer to them)', TG_TABLE_NAME
        USING ERRCODE = '55000';
END $$;
CREATE TRIGGER customers_never_deleted BEFORE DELETE OR UPDATE OF id ON customers
    FOR EACH ROW EXECUTE FUNCTION tg_never_deleted();
CREATE TRIGGER customers_no_truncate BEFORE TRUNCATE ON customers
    FOR EACH STATEMENT EXECUTE FUNCTION tg_never_deleted();
CREATE TRIGGER api_keys_never_deleted BEFORE DELETE OR UPDATE OF id ON api_keys
    FOR EACH ROW EXECUTE FUNCTION tg_never_deleted();
CREATE TRIGGER api_keys_no_truncate BEFORE TRUNCATE ON api_keys
    FOR EACH STATEMENT EXECUTE FUNCTION tg_never_deleted();

-- One index fewer per usage row: usage_key_time (key_id, received_at), 0011,
-- served one query, the lease grant's spend of a key in the period; the key's
-- customer is known there, so usage_customer_key_received (customer_id,
-- key_id, received_at), 0012, serves it.  The function as in 0014 but for
-- that line (p_customer is the key's customer: bill_lease.c leases per key
-- with the key's customer from the key cache).
CREATE OR REPLACE FUNCTION tg_lease_grant(p_holder text, p_key bigint, p_customer bigint, p_need numeric, p_want numeric,
                               p_ttl_ms bigint)
RETURNS TABLE (granted numeric, bal numeric, kd numeric, km numeric, cd numeric, cm numeric)
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    c record;
    k record;
    lc numeric;
    lk numeric;
    d0 timestamptz := date_trunc('day', now());
    m0 timestamptz := date_trunc('month', now());
    skd numeric := 0;
    skm numeric := 0;
    scd numeric := 0;
    scm numeric := 0;
    room numeric;
BEGIN
    SELECT balance_pico, daily_limit_pico AS dl, monthly_limit_pico AS ml INTO c
        FROM customers WHERE id = p_customer FOR UPDATE;
    IF NOT FOUND THEN
        RETURN QUERY SELECT 0::numeric, NULL::numeric, NULL::numeric, NULL::numeric, NULL::numeric, NULL::numeric;
        RETURN;
    END IF;
    SELECT daily_limit_pico AS dl, monthly_limit_pico AS ml INTO k FROM api_keys WHERE id = p_key;
    SELECT coalesce(sum(amount_pico), 0), coalesce(sum(amount_pico) FILTER (WHERE key_id = p_key), 0)
        INTO lc, lk FROM credit_leases WHERE customer_id = p_customer AND expires_at > now();
    IF k.dl IS NOT NULL OR k.ml IS NOT NULL THEN
        SELECT coalesce(sum(cost_pico) FILTER (WHERE received_at >= d0), 0), coalesce(sum(cost_pico), 0)
            INTO skd, skm FROM usage WHERE customer_id = p_customer AND key_id = p_key AND received_at >= m0;
    END IF;
    IF c.dl IS NOT NULL OR c.ml IS NOT NULL THEN
        SELECT coalesce(sum(cost_pico) FILTER (WHERE received_at >= d0), 0), coalesce(sum(cost_pico), 0)
            INTO scd, scm FROM usage WHERE customer_id = p_customer AND received_at >= m0;
    END IF;
    bal := c.balance_pico - lc;
    kd := k.dl - skd - lk;
    km := k.ml - skm - lk;
    cd := c.dl - scd - lc;
    cm := c.ml - scm - lc;
    room := least(bal, kd, km, cd, cm);
    granted := CASE WHEN room >= p_need THEN least(p_want, greatest(p_need, floor(room / 2))) ELSE 0 END;
    IF granted > 0 THEN
        INSERT INTO credit_leases (holder, key_id, customer_id, amount_pico, expires_at)
            VALUES (p_holder, p_key, p_customer, granted, now() + p_ttl_ms * interval '1 millisecond')
            ON CONFLICT (holder, key_id) DO UPDATE
            SET amount_pico = CASE WHEN credit_leases.expires_at > now() THEN credit_leases.amount_pico ELSE 0 END
                              + EXCLUDED.amount_pico,
                expires_at = EXCLUDED.expires_at;
    END IF;
    RETURN NEXT;
END $$;

DROP INDEX usage_key_time;
