-- 0016_ledger_apply_batch.sql — ledger rows reach the balance once per
-- statement and customer, not once per row.
--
-- 0001's ledger_apply ran FOR EACH ROW: a settlement batch of 1024 usage
-- debits of one customer updated that customer's row 1024 times (a plpgsql
-- call, an UPDATE and the balance guard each), about 45 % of the statement's
-- time (EXPLAIN ANALYZE, billing/README.md "Settlement throughput").  Now one
-- statement-level trigger sums the statement's new ledger rows (transition
-- table) per customer and applies each sum with one UPDATE, customers in id
-- order (a fixed lock order for concurrent batches).  Same transaction, same
-- moment (after the statement), same invariant:
--     customers.balance_pico = sum(ledger.amount_pico)
-- and the balance guard (0001) still refuses any other write of balance_pico.
DROP TRIGGER ledger_apply ON ledger;

CREATE FUNCTION ledger_apply_rows() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    r record;
BEGIN
    FOR r IN SELECT customer_id, sum(amount_pico) AS amount FROM ledger_new GROUP BY customer_id ORDER BY customer_id
    LOOP
        UPDATE customers SET balance_pico = balance_pico + r.amount WHERE id = r.customer_id;
    END LOOP;
    RETURN NULL;
END $$;

CREATE TRIGGER ledger_apply AFTER INSERT ON ledger REFERENCING NEW TABLE AS ledger_new
    FOR EACH STATEMENT EXECUTE FUNCTION ledger_apply_rows();

DROP FUNCTION ledger_apply();
