-- 0014_lease_grant.sql — the credit-lease grant as one function.
--
-- Granting must read the customer's other leases and spending AFTER taking
-- the customer's row lock.  In one statement under READ COMMITTED the lock
-- wait re-reads only the locked row: the sums in the statement's other parts
-- keep the snapshot from before the wait, so two gateways granting at once
-- could each miss the other's lease (found by tests/integration/test_holds.py:
-- a spending limit overshot by one request).  A plpgsql function takes a new
-- snapshot for each statement, so the sums below see every lease committed
-- before the lock was granted.
--
-- tg_lease_grant(holder, key, customer, need, want, ttl_ms) -> granted (0:
-- refused) and the room left under each constraint (NULL: no such limit):
-- balance, key day, key month, customer day, customer month.
CREATE FUNCTION tg_lease_grant(p_holder text, p_key bigint, p_customer bigint, p_need numeric, p_want numeric,
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
            INTO skd, skm FROM usage WHERE key_id = p_key AND received_at >= m0;
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
