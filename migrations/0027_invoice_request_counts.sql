-- 0027: an invoice's request counts, requests and late_requests, are strings
-- of digits in its JSON document, as every other counter of the admin API is
-- (usage totals, reports, dashboards: a JSON number is a double to most
-- readers, exact only up to 2^53); they were JSON numbers.  Drafts and the
-- invoices finalized from now on are rendered so; an invoice finalized before
-- keeps the document stored then, byte for byte (finalized = immutable), so a
-- reader takes either (tollgatectl and the dashboard do).  The invoice list
-- (bill_admin_invoices.c) is computed on each call and says strings for all.
--
-- tg_invoice_render as 0006 wrote it, but for those two members.
CREATE OR REPLACE FUNCTION tg_invoice_render(cid bigint, mon date, inv bigint, fin_at timestamptz, fin_by text)
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
        'requests', d.requests::text, 'late_requests', d.late_requests::text,
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
