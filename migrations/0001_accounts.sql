-- 0001_accounts.sql — customers, API keys, prices, usage and the money ledger.
--
-- Money: prices are integer micro-USD per 1M tokens, so n tokens cost exactly
-- n*price pico-USD.  Balances and ledger amounts are NUMERIC(38,0) pico-USD;
-- one usage row's cost is a bigint of pico-USD.
--
-- Invariant: customers.balance_pico = sum(ledger.amount_pico) of that customer.
-- It is kept by a trigger on ledger inserts (the only way a balance changes);
-- ledger rows are never updated or deleted, and a direct write to
-- customers.balance_pico is refused.  `SELECT * FROM ledger_mismatch` lists
-- customers for whom it does not hold (always empty).

CREATE TABLE customers (
    id           bigserial PRIMARY KEY,
    name         text NOT NULL UNIQUE CHECK (name ~ '^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$'),
    balance_pico numeric(38,0) NOT NULL DEFAULT 0,
    created_at   timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE api_keys (
    id          bigserial PRIMARY KEY,
    customer_id bigint NOT NULL REFERENCES customers(id),
    key_hash    text NOT NULL UNIQUE CHECK (key_hash ~ '^[0-9a-f]{64}$'), -- HMAC-SHA256(secret, key)
    prefix      text NOT NULL,                                            -- "sk-1a2b3c4d", for display
    rpm         integer NOT NULL DEFAULT 0 CHECK (rpm >= 0),              -- 0 = no limit
    tpm         integer NOT NULL DEFAULT 0 CHECK (tpm >= 0),
    concurrency integer NOT NULL DEFAULT 0 CHECK (concurrency >= 0),
    created_at  timestamptz NOT NULL DEFAULT now(),
    revoked_at  timestamptz
);
CREATE INDEX api_keys_customer ON api_keys (customer_id);

-- Price history: the price of a model at time t is the row with the latest
-- effective_from <= t.  Rows are never changed, so past usage stays explainable.
CREATE TABLE model_prices (
    id               bigserial PRIMARY KEY,
    model            text NOT NULL CHECK (length(model) BETWEEN 1 AND 200),
    input_cache_miss bigint NOT NULL CHECK (input_cache_miss >= 0), -- micro-USD per 1M tokens
    input_cache_hit  bigint NOT NULL CHECK (input_cache_hit >= 0),
    output           bigint NOT NULL CHECK (output >= 0),
    effective_from   timestamptz NOT NULL DEFAULT now(),
    created_at       timestamptz NOT NULL DEFAULT now(),
    UNIQUE (model, effective_from)
);

-- One row per request, written exactly once: request_id (the gateway's UUIDv7)
-- is the idempotency key.  Not partitioned: PostgreSQL requires the partition
-- key inside every unique constraint, which would turn request_id's global
-- uniqueness into per-month uniqueness (see billing/README.md).
CREATE TABLE usage (
    request_id               uuid PRIMARY KEY,
    customer_id              bigint NOT NULL REFERENCES customers(id),
    key_id                   bigint REFERENCES api_keys(id),
    model                    text NOT NULL,
    prompt_tokens            bigint NOT NULL CHECK (prompt_tokens >= 0),
    prompt_cache_hit_tokens  bigint NOT NULL CHECK (prompt_cache_hit_tokens >= 0),
    prompt_cache_miss_tokens bigint NOT NULL CHECK (prompt_cache_miss_tokens >= 0),
    completion_tokens        bigint NOT NULL CHECK (completion_tokens >= 0),
    reasoning_tokens         bigint NOT NULL CHECK (reasoning_tokens >= 0),
    price_input_cache_miss   bigint NOT NULL, -- the price snapshot admission used
    price_input_cache_hit    bigint NOT NULL,
    price_output             bigint NOT NULL,
    cost_pico                bigint NOT NULL CHECK (cost_pico >= 0),
    http_status              integer NOT NULL,
    stream                   boolean NOT NULL,
    received_at              timestamptz NOT NULL,
    first_byte_at            timestamptz,
    finished_at              timestamptz NOT NULL,
    recorded_at              timestamptz NOT NULL DEFAULT now(),
    CHECK (prompt_tokens = prompt_cache_hit_tokens + prompt_cache_miss_tokens)
);
CREATE INDEX usage_customer_time ON usage (customer_id, received_at);

-- One row per money movement: + credit (topup, adjustment), - debit (usage).
CREATE TABLE ledger (
    id          bigserial PRIMARY KEY,
    customer_id bigint NOT NULL REFERENCES customers(id),
    kind        text NOT NULL CHECK (kind IN ('topup', 'usage', 'adjustment')),
    amount_pico numeric(38,0) NOT NULL,
    request_id  uuid UNIQUE REFERENCES usage(request_id),
    note        text,
    created_at  timestamptz NOT NULL DEFAULT now(),
    CHECK ((kind = 'usage') = (request_id IS NOT NULL)),
    CHECK (kind = 'adjustment' OR (kind = 'topup') = (amount_pico > 0))
);
CREATE INDEX ledger_customer_time ON ledger (customer_id, created_at);

CREATE FUNCTION ledger_apply() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE customers SET balance_pico = balance_pico + NEW.amount_pico WHERE id = NEW.customer_id;
    RETURN NULL;
END $$;
CREATE TRIGGER ledger_apply AFTER INSERT ON ledger FOR EACH ROW EXECUTE FUNCTION ledger_apply();

CREATE FUNCTION ledger_immutable() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'ledger rows are never changed or deleted';
END $$;
CREATE TRIGGER ledger_immutable BEFORE UPDATE OR DELETE ON ledger
    FOR EACH ROW EXECUTE FUNCTION ledger_immutable();

CREATE FUNCTION customers_balance_guard() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.balance_pico IS DISTINCT FROM OLD.balance_pico AND pg_trigger_depth() < 2 THEN
        RAISE EXCEPTION 'balance_pico changes only through ledger rows';
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER customers_balance_guard BEFORE UPDATE ON customers
    FOR EACH ROW EXECUTE FUNCTION customers_balance_guard();

CREATE FUNCTION customers_balance_zero() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.balance_pico := 0;
    RETURN NEW;
END $$;
CREATE TRIGGER customers_balance_zero BEFORE INSERT ON customers
    FOR EACH ROW EXECUTE FUNCTION customers_balance_zero();

CREATE VIEW ledger_mismatch AS
    SELECT c.id, c.name, c.balance_pico, coalesce(sum(l.amount_pico), 0) AS ledger_sum
    FROM customers c LEFT JOIN ledger l ON l.customer_id = c.id
    GROUP BY c.id HAVING c.balance_pico <> coalesce(sum(l.amount_pico), 0);

-- Display form of a pico-USD amount: USD rounded half away from zero to 6
-- decimals ("5.000000").  Only for display; balances are never rounded.
CREATE FUNCTION tg_usd(p numeric) RETURNS text LANGUAGE sql IMMUTABLE STRICT AS $$
    SELECT (round(p, -6) / 1000000000000)::numeric(50,6)::text
$$;
