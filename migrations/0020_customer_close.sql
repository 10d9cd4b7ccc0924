-- 0020: closing a customer (POST /admin/v1/customers/{name}/close, tollgatectl customer close NAME).
--
-- Closing is final.  The close statement (billing/bill_admin_accounts.c) sets closed_at, revokes the
-- customer's keys and dashboard logins and ends its dashboard sessions; what follows holds whatever
-- races with it:
--   - admission reads closed_at with the key (billing/bill.c ADMIT_SQL): a key of a closed customer is
--     refused like a revoked one, even one made or un-revoked after the close;
--   - closed_at is announced on tg_customer, so every gateway's key cache drops the customer's keys at
--     once (as a spending-limit change does);
--   - no API key and no dashboard login can be made for a closed customer (SQLSTATE 55000 -> 409);
--   - dashboard sessions and sign-ins check it (billing/bill_dash.c).
-- The balance and the ledger stay: an admin may still refund what is left.
ALTER TABLE customers ADD COLUMN closed_at timestamptz;

DROP TRIGGER customers_notify ON customers;
CREATE TRIGGER customers_notify AFTER UPDATE OF daily_limit_pico, monthly_limit_pico, closed_at ON customers
    FOR EACH ROW EXECUTE FUNCTION tg_customer_notify();

CREATE FUNCTION tg_customer_close_final() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF OLD.closed_at IS NOT NULL AND NEW.closed_at IS DISTINCT FROM OLD.closed_at THEN
        RAISE EXCEPTION 'customer % is closed, and closing is final', OLD.name USING ERRCODE = '55000';
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER customers_close_final BEFORE UPDATE OF closed_at ON customers
    FOR EACH ROW EXECUTE FUNCTION tg_customer_close_final();

CREATE FUNCTION tg_refuse_closed_customer() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.customer_id IS NOT NULL
       AND EXISTS (SELECT 1 FROM customers WHERE id = NEW.customer_id AND closed_at IS NOT NULL) THEN
        RAISE EXCEPTION 'the customer is closed' USING ERRCODE = '55000';
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER api_keys_open_customer BEFORE INSERT OR UPDATE OF customer_id ON api_keys
    FOR EACH ROW EXECUTE FUNCTION tg_refuse_closed_customer();
CREATE TRIGGER dash_users_open_customer BEFORE INSERT OR UPDATE OF customer_id ON dash_users
    FOR EACH ROW EXECUTE FUNCTION tg_refuse_closed_customer();
