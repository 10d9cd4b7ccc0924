-- 0006_invoices.sql — finalized invoices per customer and calendar month
-- (UTC), immutable, with late usage billed on the next invoice.
--
-- Finalizing month M for a customer assigns to the new invoice every usage
-- row and every non-usage ledger row (credits, adjustments, refunds) of the
-- customer that no invoice holds yet, received (usage.received_at) or made
-- (ledger.created_at) before the end of M: invoice_usage / invoice_ledger
-- map each such row to exactly one invoice (primary keys).  A usage row of M
-- that arrives after M was finalized (a late spool replay, a settlement that
-- committed during the finalization) is held by no invoice, so the next
-- invoice finalized for that customer takes it, as a late line naming its
-- own period.  Nothing is ever re-assigned.
--
-- An invoice stores its lines, its totals and the exact JSON and CSV
-- documents served for it; rows of all four tables are never changed or
-- deleted (triggers), so a finalized invoice reads the same forever.
--
-- Balances on an invoice: opening = the closing balance of the customer's
-- previous invoice (0 for the first); closing = opening + credits +
-- adjustments + refunds - usage.  usage = the sum of the lines; a line's
-- amount = quantity * unit price (pico-USD), exactly.  A draft (a month not
-- finalized yet) is computed the same way from what no invoice holds yet.

CREATE TABLE invoices (
    id               bigserial PRIMARY KEY,
    customer_id      bigint NOT NULL REFERENCES customers(id),
    month            date NOT NULL CHECK (extract(day FROM month) = 1),
    period_start     timestamptz NOT NULL,
    period_end       timestamptz NOT NULL,
    opening_pico     numeric(38,0) NOT NULL,
    credits_pico     numeric(38,0) NOT NULL,   -- topups
    adjustments_pico numeric(38,0) NOT NULL,
    refunds_pico     numeric(38,0) NOT NULL,
    usage_pico       numeric(38,0) NOT NULL,   -- = sum of the lines
    closing_pico     numeric(38,0) NOT NULL,
    requests         bigint NOT NULL,
    late_requests    bigint NOT NULL,
    finalized_at     timestamptz NOT NULL,
    finalized_by     text NOT NULL,
    body_json        text NOT NULL,            -- the documents served, byte for byte
    body_csv         text NOT NULL,
    UNIQUE (customer_id, month),
    CHECK (closing_pico = opening_pico + credits_pico + adjustments_pico + refunds_pico - usage_pico)
);

CREATE TABLE invoice_lines (
    invoice_id  bigint NOT NULL REFERENCES invoices(id) DEFERRABLE INITIALLY DEFERRED,
    line_no     integer NOT NULL,
    period      date NOT NULL,                 -- the month the usage was received in (< month: late)
    model       text NOT NULL,
    token_class text NOT NULL CHECK (token_class IN ('input_cache_miss', 'input_cache_hit', 'output')),
    unit_price  bigint NOT NULL,               -- micro-USD per 1M tokens
    quantity    numeric(38,0) NOT NULL,        -- tokens
    amount_pico numeric(38,0) NOT NULL,
    PRIMARY KEY (invoice_id, line_no),
    CHECK (amount_pico = quantity * unit_price)
);

CREATE TABLE invoice_usage (
    request_id uuid PRIMARY KEY REFERENCES usage(request_id),
    invoice_id bigint NOT NULL REFERENCES invoices(id) DEFERRABLE INITIALLY DEFERRED
);
CREATE INDEX invoice_usage_invoice ON invoice_usage (invoice_id);

CREATE TABLE invoice_ledger (
    ledger_id  bigint PRIMARY KEY REFERENCES ledger(id),
    invoice_id bigint NOT NULL REFERENCES invoices(id) DEFERRABLE INITIALLY DEFERRED
);
CREATE INDEX invoice_ledger_invoice ON invoice_ledger (invoice_id);

CREATE TRIGGER invoices_immutable BEFORE UPDATE OR DELETE ON invoices FOR EACH ROW EXECUTE FUNCTION tg_immutable();
CREATE TRIGGER invoices_no_truncate BEFORE TRUNCATE ON invoices FOR EACH STATEMENT EXECUTE FUNCTION tg_immutable();
CREATE TRIGGER invoice_lines_immutable BEFORE UPDATE OR DELETE ON invoice_lines
    FOR EACH ROW EXECUTE FUNCTION tg_immutable();
CREATE TRIGGER invoice_lines_no_truncate BEFORE TRUNCATE ON invoice_lines
    FOR EACH STATEMENT EXECUTE FUNCTION tg_immutable();
CREATE TRIGGER invoice_usage_immutable BEFORE UPDATE OR DELETE ON invoice_usage
    FOR EACH ROW EXECUTE FUNCTION tg_immutable();
CREATE TRIGGER invoice_usage_no_truncate BEFORE TRUNCATE ON invoice_usage
    FOR EACH STATEMENT EXECUTE FUNCTION tg_immutable();
CREATE TRIGGER invoice_ledger_immutable BEFORE UPDATE OR DELETE ON invoice_ledger
    FOR EACH ROW EXECUTE FUNCTION tg_immutable();
CREATE TRIGGER invoice_ledger_no_truncate BEFORE TRUNCATE ON invoice_ledger
    FOR EACH STATEMENT EXECUTE FUNCTION tg_immutable();

-- A timestamp as the invoices show it: UTC, microseconds, whatever the
-- session's time zone ("2026-11-01T00:00:00.000000Z").
CREATE FUNCTION tg_iso(t timestamptz) RETURNS text LANGUAGE sql IMMUTABLE AS $$
    SELECT to_char(t AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')
$$;

-- A CSV field: quoted when it holds a comma, quote or line break.
CREATE FUNCTION tg_csv(s text) RETURNS text LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE WHEN s IS NULL THEN ''
                WHEN s ~ '[,"\r\n]' THEN '"' || replace(s, '"', '""') || '"'
                ELSE s END
$$;

-- The usage rows of invoice inv, or (inv NULL) those of customer cid that no
-- invoice holds yet and were received before t1.
CREATE FUNCTION tg_invoice_usage(cid bigint, t1 timestamptz, inv bigint) RETURNS SETOF usage
LANGUAGE sql STABLE AS $$
    SELECT u.* FROM usage u
    WHERE inv IS NULL AND u.customer_id = cid AND u.received_at < t1
      AND NOT EXISTS (SELECT 1 FROM invoice_usage iu WHERE iu.request_id = u.request_id)
    UNION ALL
    SELECT u.* FROM invoice_usage iu JOIN usage u ON u.request_id = iu.request_id
    WHERE inv IS NOT NULL AND iu.invoice_id = inv
$$;

-- The same for the credits, adjustments and refunds (ledger rows not of kind usage).
CREATE FUNCTION tg_invoice_ledger(cid bigint, t1 timestamptz, inv bigint) RETURNS SETOF ledger
LANGUAGE sql STABLE AS $$
    SELECT l.* FROM ledger l
    WHERE inv IS NULL AND l.customer_id = cid AND l.kind <> 'usage' AND l.created_at < t1
      AND NOT EXISTS (SELECT 1 FROM invoice_ledger il WHERE il.ledger_id = l.id)
    UNION ALL
    SELECT l.* FROM invoice_ledger il JOIN ledger l ON l.id = il.ledger_id
    WHERE inv IS NOT NULL AND il.invoice_id = inv
$$;

-- The lines of those usage rows: per period (the month received), model,
-- token class and unit price; this month's lines first, then late lines by
-- period.  Zero-token lines are left out.
CREATE FUNCTION tg_invoice_lines(cid bigint, mon date, inv bigint)
RETURNS TABLE (line_no integer, period date, model text, token_class text, unit_price bigint,
               quantity numeric, amount_pico numeric, requests bigint, late_requests bigint)
LANGUAGE sql STABLE AS $$
    WITH u AS (SELECT * FROM tg_invoice_usage(cid, ((mon + interval '1 month')::timestamp AT TIME ZONE 'UTC'), inv)),
    x AS (SELECT date_trunc('month', received_at AT TIME ZONE 'UTC')::date AS period, model,
                 'input_cache_miss' AS cls, price_input_cache_miss AS price, prompt_cache_miss_tokens AS n FROM u
          UNION ALL SELECT date_trunc('month', received_at AT TIME ZONE 'UTC')::date, model, 'input_cache_hit',
                 price_input_cache_hit, prompt_cache_hit_tokens FROM u
          UNION ALL SELECT date_trunc('month', received_at AT TIME ZONE 'UTC')::date, model, 'output',
                 price_output, completion_tokens FROM u),
    g AS (SELECT period, model, cls, price, sum(n) AS q FROM x GROUP BY 1, 2, 3, 4 HAVING sum(n) > 0),
    r AS (SELECT count(*) AS n, count(*) FILTER (WHERE received_at < mon::timestamp AT TIME ZONE 'UTC') AS late
          FROM u)
    SELECT (row_number() OVER (ORDER BY g.period <> mon, g.period, g.model, g.cls, g.price))::integer,
           g.period, g.model, g.cls, g.price, g.q, g.q * g.price, r.n, r.late
    FROM g, r
    UNION ALL  -- one row even without lines, to carry the request counts
    SELECT NULL, NULL, NULL, NULL, NULL, NULL, NULL, r.n, r.late FROM r WHERE NOT EXISTS (SELECT 1 FROM g)
$$;

CREATE TYPE tg_invoice_doc AS (
    opening numeric, credits numeric, adjustments numeric, refunds numeric, usage numeric, closing numeric,
    requests bigint, late_requests bigint, body_json text, body_csv text, lines jsonb);

-- The documents of customer cid's invoice for month mon: of invoice inv
-- (its rows are mapped already), or a draft (inv NULL).  Every figure is
-- computed from one reading of the rows (lines and credits each read once).
CREATE FUNCTION tg_invoice_render(cid bigint, mon date, inv bigint, fin_at timestamptz, fin_by text)
RETURNS tg_invoice_doc LANGUAGE plpgsql STABLE AS $$
DECLARE
    t0 timestamptz := mon::timestamp AT TIME ZONE 'UTC';
    t1 timestamptz := (mon + interval '1 month')::timestamp AT TIME ZONE 'UTC';
    cname text;
    lines jsonb;
    items jsonb;
    d tg_invoice_doc;
    m text := to_char(mon, 'YYYY-MM');
    lines_json text;
    items_json text;
    csv text;
    pre text;
BEGIN
    SELECT name INTO cname FROM customers WHERE id = cid;
    SELECT coalesce(jsonb_agg(to_jsonb(l) ORDER BY l.line_no) FILTER (WHERE l.line_no IS NOT NULL), '[]'),
           coalesce(max(l.requests), 0), coalesce(max(l.late_requests), 0)
      INTO lines, d.requests, d.late_requests FROM tg_invoice_lines(cid, mon, inv) l;
    SELECT coalesce(jsonb_agg(jsonb_build_object('id', l.id, 'kind', l.kind, 'amount_pico', l.amount_pico,
                                                  'reason', l.note, 'created_at', tg_iso(l.created_at))
                             ORDER BY l.id), '[]')
      INTO items FROM tg_invoice_ledger(cid, t1, inv) l;
    d.lines := lines;
    d.opening := coalesce((SELECT i.closing_pico FROM invoices i WHERE i.customer_id = cid AND i.month < mon
                           ORDER BY i.month DESC LIMIT 1), 0);
    SELECT coalesce(sum((x->>'amount_pico')::numeric) FILTER (WHERE x->>'kind' = 'topup'), 0),
           coalesce(sum((x->>'amount_pico')::numeric) FILTER (WHERE x->>'kind' = 'adjustment'), 0),
           coalesce(sum((x->>'amount_pico')::numeric) FILTER (WHERE x->>'kind' = 'refund'), 0)
      INTO d.credits, d.adjustments, d.refunds FROM jsonb_array_elements(items) x;
    SELECT coalesce(sum((x->>'amount_pico')::numeric), 0) INTO d.usage FROM jsonb_array_elements(lines) x;
    d.closing := d.opening + d.credits + d.adjustments + d.refunds - d.usage;

    SELECT coalesce(json_agg(json_build_object(
               'line', (x->>'line_no')::int, 'period', to_char((x->>'period')::date, 'YYYY-MM'),
               'late', (x->>'period')::date < mon, 'model', x->>'model', 'token_class', x->>'token_class',
               'quantity', x->>'quantity', 'unit_price_micro_usd_per_1m', x->>'unit_price',
               'amount_pico', x->>'amount_pico', 'amount_usd', tg_usd((x->>'amount_pico')::numeric))
             ORDER BY (x->>'line_no')::int), '[]')::text
      INTO lines_json FROM jsonb_array_elements(lines) x;
    SELECT coalesce(json_agg(json_build_object(
               'ledger_id', (x->>'id')::bigint, 'kind', x->>'kind', 'amount_pico', x->>'amount_pico',
               'amount_usd', tg_usd((x->>'amount_pico')::numeric), 'reason', x->>'reason',
               'created_at', x->>'created_at') ORDER BY (x->>'id')::bigint), '[]')::text
      INTO items_json FROM jsonb_array_elements(items) x;

    d.body_json := json_build_object(
        'object', 'invoice', 'id', inv, 'status', CASE WHEN inv IS NULL THEN 'draft' ELSE 'finalized' END,
        'customer', cname, 'customer_id', cid, 'month', m, 'currency', 'USD',
        'period_start', tg_iso(t0), 'period_end', tg_iso(t1), 'finalized_at', tg_iso(fin_at), 'finalized_by', fin_by,
        'opening_balance_pico', d.opening::text, 'opening_balance_usd', tg_usd(d.opening),
        'credits', items_json::json,
        'credits_pico', d.credits::text, 'adjustments_pico', d.adjustments::text, 'refunds_pico', d.refunds::text,
        'lines', lines_json::json,
        'requests', d.requests, 'late_requests', d.late_requests,
        'usage_pico', d.usage::text, 'usage_usd', tg_usd(d.usage),
        'total_pico', d.usage::text, 'total_usd', tg_usd(d.usage),
        'closing_balance_pico', d.closing::text, 'closing_balance_usd', tg_usd(d.closing))::text;

    pre := tg_csv(cname) || ',' || m || ',';
    csv := 'customer,month,record,period,model,token_class,quantity,unit_price_micro_usd_per_1m,amount_pico,'
           'amount_usd,note' || E'\n';
    csv := csv || pre || 'opening_balance,' || m || ',,,,,' || d.opening || ',' || tg_usd(d.opening) || ','
           || E'\n';
    SELECT csv || coalesce(string_agg(pre || (x->>'kind') || ',' || to_char((x->>'created_at')::timestamptz
               AT TIME ZONE 'UTC', 'YYYY-MM') || ',,,,,' || (x->>'amount_pico') || ','
               || tg_usd((x->>'amount_pico')::numeric) || ',' || tg_csv(x->>'reason') || E'\n',
               '' ORDER BY (x->>'id')::bigint), '')
      INTO csv FROM jsonb_array_elements(items) x;
    SELECT csv || coalesce(string_agg(pre || CASE WHEN (x->>'period')::date < mon THEN 'late_usage' ELSE 'usage' END
               || ',' || to_char((x->>'period')::date, 'YYYY-MM') || ',' || tg_csv(x->>'model') || ','
               || (x->>'token_class') || ',' || (x->>'quantity') || ',' || (x->>'unit_price') || ','
               || (x->>'amount_pico') || ',' || tg_usd((x->>'amount_pico')::numeric) || ','
               || CASE WHEN (x->>'period')::date < mon THEN 'usage of ' || to_char((x->>'period')::date, 'YYYY-MM')
                       || ' billed late' ELSE '' END || E'\n',
               '' ORDER BY (x->>'line_no')::int), '')
      INTO csv FROM jsonb_array_elements(lines) x;
    csv := csv || pre || 'usage_total,' || m || ',,,,,' || d.usage || ',' || tg_usd(d.usage) || ','
           || d.requests || ' requests' || E'\n';
    csv := csv || pre || 'closing_balance,' || m || ',,,,,' || d.closing || ',' || tg_usd(d.closing) || ','
           || CASE WHEN inv IS NULL THEN 'draft' ELSE 'finalized' END || E'\n';
    d.body_csv := csv;
    RETURN d;
END $$;

-- Finalize customer cid's invoice for month mon (UTC), once: returns its id
-- (the existing one when it was finalized before).  A month not over yet is
-- refused (22023).
CREATE FUNCTION tg_invoice_finalize(cid bigint, mon date, actor text) RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    t0 timestamptz := mon::timestamp AT TIME ZONE 'UTC';
    t1 timestamptz := (mon + interval '1 month')::timestamp AT TIME ZONE 'UTC';
    inv bigint;
    d tg_invoice_doc;
    at timestamptz := now();
BEGIN
    IF extract(day FROM mon) <> 1 THEN
        RAISE EXCEPTION 'a month starts on its first day (%)', mon USING ERRCODE = '22023';
    END IF;
    IF t1 > now() THEN
        RAISE EXCEPTION 'month % is not over yet (it ends %)', to_char(mon, 'YYYY-MM'), t1 USING ERRCODE = '22023';
    END IF;
    PERFORM pg_advisory_xact_lock(7301, cid::integer);  -- one finalization per customer at a time
    SELECT id INTO inv FROM invoices WHERE customer_id = cid AND month = mon;
    IF inv IS NOT NULL THEN
        RETURN inv;
    END IF;
    inv := nextval(pg_get_serial_sequence('invoices', 'id'));
    INSERT INTO invoice_usage (request_id, invoice_id)
        SELECT u.request_id, inv FROM tg_invoice_usage(cid, t1, NULL) u;
    INSERT INTO invoice_ledger (ledger_id, invoice_id)
        SELECT l.id, inv FROM tg_invoice_ledger(cid, t1, NULL) l;
    d := tg_invoice_render(cid, mon, inv, at, actor);
    INSERT INTO invoices (id, customer_id, month, period_start, period_end, opening_pico, credits_pico,
                          adjustments_pico, refunds_pico, usage_pico, closing_pico, requests, late_requests,
                          finalized_at, finalized_by, body_json, body_csv)
        VALUES (inv, cid, mon, t0, t1, d.opening, d.credits, d.adjustments, d.refunds, d.usage, d.closing,
                d.requests, d.late_requests, at, actor, d.body_json, d.body_csv);
    INSERT INTO invoice_lines (invoice_id, line_no, period, model, token_class, unit_price, quantity, amount_pico)
        SELECT inv, (x->>'line_no')::int, (x->>'period')::date, x->>'model', x->>'token_class',
               (x->>'unit_price')::bigint, (x->>'quantity')::numeric, (x->>'amount_pico')::numeric
        FROM jsonb_array_elements(d.lines) x;
    RETURN inv;
END $$;

-- Finalize month mon for one customer (cid) or for every customer that
-- existed before the month ended or has rows no invoice holds from before
-- then; customers in id order (so two finalizations never deadlock).
-- Returns the JSON answer of POST /admin/v1/invoices/finalize.
CREATE FUNCTION tg_invoice_finalize_month(mon date, actor text, cid bigint) RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    t1 timestamptz := (mon + interval '1 month')::timestamp AT TIME ZONE 'UTC';
    c record;
    done jsonb := '[]';
    before bigint;
    inv bigint;
    n int := 0;
BEGIN
    FOR c IN SELECT x.id, x.name FROM customers x
             WHERE (cid IS NULL OR x.id = cid)
               AND (x.created_at < t1
                    OR EXISTS (SELECT 1 FROM tg_invoice_usage(x.id, t1, NULL))
                    OR EXISTS (SELECT 1 FROM tg_invoice_ledger(x.id, t1, NULL)))
             ORDER BY x.id LOOP
        SELECT id INTO before FROM invoices WHERE customer_id = c.id AND month = mon;
        inv := tg_invoice_finalize(c.id, mon, actor);
        IF before IS NULL THEN
            n := n + 1;
            done := done || jsonb_build_object('customer', c.name, 'invoice_id', inv);
        END IF;
    END LOOP;
    RETURN json_build_object('object', 'invoice_finalization', 'month', to_char(mon, 'YYYY-MM'),
                             'finalized', n, 'invoices', done::json,
                             'already_finalized', (SELECT count(*) FROM invoices WHERE month = mon) - n)::text;
END $$;

-- Reconciliation (tollgatectl reconcile): one row per difference found,
-- none when everything agrees.  [t_from, t_to) bounds the usage rows checked
-- (by received_at), the invoices (by period) and the rollup hours; balances
-- are checked whole.
--   usage_cost     a usage row's cost is not its tokens times its prices
--   usage_debit    a usage row without exactly one ledger debit equal to its
--                  cost (none for a zero cost), or a debit of another customer
--   balance        customers.balance_pico is not the sum of its ledger rows
--   invoice_total  an invoice's usage is not the sum of its lines, or its
--                  closing balance not opening + credits + adjustments +
--                  refunds - usage, or its stored JSON says otherwise
--   invoice_lines  an invoice's lines are not those of the usage rows it holds
--   invoice_credits  its credits/adjustments/refunds are not those of the
--                  ledger rows it holds
--   invoice_opening  its opening balance is not the previous invoice's closing
--   invoice_usage  it holds a usage row of another customer or received after
--                  its period
--   rollup         a usage_hourly row disagrees with the usage it sums (the
--                  hook: read from usage_hourly_mismatch when that view exists)
CREATE FUNCTION tg_reconcile(t_from timestamptz, t_to timestamptz)
RETURNS TABLE (check_name text, subject text, expected text, actual text)
LANGUAGE plpgsql STABLE AS $$
BEGIN
    RETURN QUERY
    SELECT 'usage_cost', 'request ' || u.request_id,
           (u.prompt_cache_miss_tokens::numeric * u.price_input_cache_miss
            + u.prompt_cache_hit_tokens::numeric * u.price_input_cache_hit
            + u.completion_tokens::numeric * u.price_output)::text, u.cost_pico::text
    FROM usage u
    WHERE u.received_at >= t_from AND u.received_at < t_to
      AND u.cost_pico <> u.prompt_cache_miss_tokens::numeric * u.price_input_cache_miss
                         + u.prompt_cache_hit_tokens::numeric * u.price_input_cache_hit
                         + u.completion_tokens::numeric * u.price_output;

    RETURN QUERY
    SELECT 'usage_debit', 'request ' || u.request_id,
           CASE WHEN u.cost_pico > 0 THEN (-u.cost_pico)::text || ' for customer ' || u.customer_id
                ELSE 'no debit' END,
           CASE WHEN l.id IS NULL THEN 'no debit'
                ELSE l.amount_pico::text || ' for customer ' || l.customer_id || ' (ledger ' || l.id || ')' END
    FROM usage u LEFT JOIN ledger l ON l.request_id = u.request_id
    WHERE u.received_at >= t_from AND u.received_at < t_to
      AND CASE WHEN u.cost_pico > 0
               THEN l.id IS NULL OR l.amount_pico <> -u.cost_pico OR l.customer_id <> u.customer_id
                    OR l.kind <> 'usage'
               ELSE l.id IS NOT NULL END;

    RETURN QUERY
    SELECT 'balance', 'customer ' || m.name, m.ledger_sum::text, m.balance_pico::text FROM ledger_mismatch m;

    RETURN QUERY
    WITH i AS (SELECT * FROM invoices WHERE period_end > t_from AND period_start < t_to),
    s AS (SELECT i.id, coalesce((SELECT sum(amount_pico) FROM invoice_lines l WHERE l.invoice_id = i.id), 0) AS lines
          FROM i)
    SELECT 'invoice_total', 'invoice ' || i.id || ' (customer ' || i.customer_id || ', ' || to_char(i.month, 'YYYY-MM')
           || ')', x.expected, x.actual
    FROM i JOIN s ON s.id = i.id,
    LATERAL (VALUES ('usage ' || s.lines, 'usage ' || i.usage_pico),
                    ('closing ' || (i.opening_pico + i.credits_pico + i.adjustments_pico + i.refunds_pico - i.usage_pico),
                     'closing ' || i.closing_pico),
                    ('document usage ' || i.usage_pico, 'document usage ' || (i.body_json::json->>'usage_pico')),
                    ('document closing ' || i.closing_pico,
                     'document closing ' || (i.body_json::json->>'closing_balance_pico'))) x(expected, actual)
    WHERE x.expected <> x.actual;

    RETURN QUERY
    WITH i AS (SELECT * FROM invoices WHERE period_end > t_from AND period_start < t_to),
    want AS (SELECT i.id, l.line_no, l.period, l.model, l.token_class, l.unit_price, l.quantity, l.amount_pico
             FROM i, tg_invoice_lines(i.customer_id, i.month, i.id) l WHERE l.line_no IS NOT NULL),
    have AS (SELECT l.invoice_id AS id, l.line_no, l.period, l.model, l.token_class, l.unit_price, l.quantity,
                    l.amount_pico FROM invoice_lines l JOIN i ON i.id = l.invoice_id),
    diff AS ((SELECT 'missing' AS side, * FROM (SELECT * FROM want EXCEPT SELECT * FROM have) a)
             UNION ALL (SELECT 'extra', * FROM (SELECT * FROM have EXCEPT SELECT * FROM want) b))
    SELECT 'invoice_lines', 'invoice ' || d.id || ' line ' || d.line_no,
           CASE WHEN d.side = 'missing' THEN concat_ws(' ', d.model, d.token_class, d.quantity, d.unit_price, d.amount_pico)
                ELSE '(no such line)' END,
           CASE WHEN d.side = 'extra' THEN concat_ws(' ', d.model, d.token_class, d.quantity, d.unit_price, d.amount_pico)
                ELSE '(missing)' END
    FROM diff d;

    RETURN QUERY
    WITH i AS (SELECT * FROM invoices WHERE period_end > t_from AND period_start < t_to),
    l AS (SELECT il.invoice_id,
                 coalesce(sum(g.amount_pico) FILTER (WHERE g.kind = 'topup'), 0) AS credits,
                 coalesce(sum(g.amount_pico) FILTER (WHERE g.kind = 'adjustment'), 0) AS adjustments,
                 coalesce(sum(g.amount_pico) FILTER (WHERE g.kind = 'refund'), 0) AS refunds
          FROM invoice_ledger il JOIN ledger g ON g.id = il.ledger_id JOIN i ON i.id = il.invoice_id
          GROUP BY il.invoice_id)
    SELECT 'invoice_credits', 'invoice ' || i.id,
           concat_ws(' ', coalesce(l.credits, 0), coalesce(l.adjustments, 0), coalesce(l.refunds, 0)),
           concat_ws(' ', i.credits_pico, i.adjustments_pico, i.refunds_pico)
    FROM i LEFT JOIN l ON l.invoice_id = i.id
    WHERE (coalesce(l.credits, 0), coalesce(l.adjustments, 0), coalesce(l.refunds, 0))
          <> (i.credits_pico, i.adjustments_pico, i.refunds_pico);

    RETURN QUERY
    SELECT 'invoice_opening', 'invoice ' || i.id, coalesce(p.closing_pico, 0)::text, i.opening_pico::text
    FROM invoices i
    LEFT JOIN LATERAL (SELECT closing_pico FROM invoices x WHERE x.customer_id = i.customer_id AND x.month < i.month
                       ORDER BY x.month DESC LIMIT 1) p ON true
    WHERE i.period_end > t_from AND i.period_start < t_to AND i.opening_pico <> coalesce(p.closing_pico, 0);

    RETURN QUERY
    SELECT 'invoice_usage', 'invoice ' || i.id || ' request ' || u.request_id,
           'customer ' || i.customer_id || ', received before ' || tg_iso(i.period_end),
           'customer ' || u.customer_id || ', received ' || tg_iso(u.received_at)
    FROM invoices i JOIN invoice_usage iu ON iu.invoice_id = i.id JOIN usage u ON u.request_id = iu.request_id
    WHERE i.period_end > t_from AND i.period_start < t_to
      AND (u.customer_id <> i.customer_id OR u.received_at >= i.period_end);

    -- The rollups' hook: usage_hourly (migration 0007) keeps a view of its
    -- differences; read it when it exists.
    IF to_regclass('usage_hourly_mismatch') IS NOT NULL THEN
        RETURN QUERY EXECUTE
            'SELECT ''rollup''::text, ''customer '' || customer_id || '' hour '' || tg_iso(hour) || '' key '' || key_id'
            ' || '' model '' || model, ''requests '' || coalesce(usage_requests, 0) || '' cost '' || coalesce(usage_cost_pico, 0),'
            ' ''requests '' || coalesce(rollup_requests, 0) || '' cost '' || coalesce(rollup_cost_pico, 0)'
            ' FROM usage_hourly_mismatch WHERE hour >= date_trunc(''hour'', $1, ''UTC'') AND hour < $2'
            USING t_from, t_to;
    END IF;
END $$;
