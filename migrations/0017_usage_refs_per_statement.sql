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
