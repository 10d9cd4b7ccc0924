-- 0011_credit_leases.sql — holds that cannot overspend, at wire speed, and
-- the key-cache invalidation channel.
--
-- Credit leases (billing/README.md "Holds"): each gateway event loop (a
-- `holder`) reserves credit for one API key in chunks; admission then holds a
-- request's maximum cost against that local lease without a round trip.
-- Granting is one statement that locks the customer row, so for every
-- customer at every moment:
--     sum(active leases) <= balance
-- and for every key / customer with a spending limit:
--     spent in the period (usage rows) + its active leases <= limit.
-- A settled cost is debited (ledger) and then shrinks the lease it was held
-- against by the same amount, so settlement keeps both sums; settled costs
-- can therefore never exceed the credit.  A lease whose holder died expires
-- (expires_at, renewed every few seconds by a live holder) and is reaped;
-- a restarted holder replays its journal and then drops its old leases.

CREATE TABLE credit_leases (
    holder      text NOT NULL CHECK (length(holder) BETWEEN 1 AND 200),
    key_id      bigint NOT NULL REFERENCES api_keys(id),
    customer_id bigint NOT NULL REFERENCES customers(id),
    amount_pico numeric(38,0) NOT NULL CHECK (amount_pico >= 0),
    created_at  timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz NOT NULL,
    PRIMARY KEY (holder, key_id)
);
CREATE INDEX credit_leases_customer ON credit_leases (customer_id, expires_at);
CREATE INDEX credit_leases_expiry ON credit_leases (expires_at);

-- Spending limits in pico-USD per UTC day and calendar month (UTC); NULL: none.
ALTER TABLE api_keys
    ADD COLUMN daily_limit_pico bigint CHECK (daily_limit_pico >= 0),
    ADD COLUMN monthly_limit_pico bigint CHECK (monthly_limit_pico >= 0);
ALTER TABLE customers
    ADD COLUMN daily_limit_pico bigint CHECK (daily_limit_pico >= 0),
    ADD COLUMN monthly_limit_pico bigint CHECK (monthly_limit_pico >= 0);

-- What a key spent in a period is summed from its usage rows at lease grant.
CREATE INDEX usage_key_time ON usage (key_id, received_at);

-- Key cache invalidation: every change that admission reads is announced on
-- channel tg_key (payload: "<key hash> <key id> <customer id>") or tg_customer
-- (payload: the customer id); every gateway LISTENs, drops its cached entry
-- and stops taking holds from the leases granted under the old settings.
-- last_used_at/ip (written in batches) are deliberately not announced.
CREATE FUNCTION tg_key_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        PERFORM pg_notify('tg_key', OLD.key_hash || ' ' || OLD.id || ' ' || OLD.customer_id);
    ELSE
        PERFORM pg_notify('tg_key', NEW.key_hash || ' ' || NEW.id || ' ' || NEW.customer_id);
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER api_keys_notify AFTER INSERT OR DELETE OR UPDATE OF customer_id, key_hash, rpm, tpm, concurrency,
    revoked_at, expires_at, models, daily_limit_pico, monthly_limit_pico ON api_keys
    FOR EACH ROW EXECUTE FUNCTION tg_key_notify();

CREATE FUNCTION tg_customer_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('tg_customer', NEW.id::text);
    RETURN NULL;
END $$;
CREATE TRIGGER customers_notify AFTER UPDATE OF daily_limit_pico, monthly_limit_pico ON customers
    FOR EACH ROW EXECUTE FUNCTION tg_customer_notify();
