-- 0010_customer_limits.sql — rate limits per customer, over all of its keys
-- together, beside each key's own (api_keys.rpm, tpm, concurrency).  The
-- gateway enforces both: a request passes when the key's limits and its
-- customer's limits all let it (gateway/README.md, "Rate limits").
-- 0 = no limit (and, unlike a key's 0, no configured default applies).

ALTER TABLE customers
    ADD COLUMN rpm         integer NOT NULL DEFAULT 0 CHECK (rpm >= 0),
    ADD COLUMN tpm         integer NOT NULL DEFAULT 0 CHECK (tpm >= 0),
    ADD COLUMN concurrency integer NOT NULL DEFAULT 0 CHECK (concurrency >= 0);

-- The gateways cache a key with its customer's limits (billing/bill_cache.c):
-- a change reaches them on the channel tg_customer (payload: the customer id),
-- which evicts that customer's keys (the listener is billing/bill_listen.c).
CREATE FUNCTION tg_customer_limits_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('tg_customer', NEW.id::text);
    RETURN NULL;
END $$;

CREATE TRIGGER customers_limits_notify AFTER UPDATE OF rpm, tpm, concurrency ON customers
    FOR EACH ROW EXECUTE FUNCTION tg_customer_limits_notify();
