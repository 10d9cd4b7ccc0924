/* bill_admin_invoices.c — invoices per customer and calendar month (UTC) in
 * the admin API. */
#include <stdio.h>
#include <string.h>

#include <event2/http.h>
#include <event2/keyvalq_struct.h>

#include "bill_admin-int.h"

static const char SQL_INVOICE[] =
    "WITH c AS (SELECT * FROM customers WHERE name = $1),"
    " p AS (SELECT ($2 || '-01')::timestamp AT TIME ZONE 'UTC' AS t0,"
    "   (($2 || '-01')::timestamp + interval '1 month') AT TIME ZONE 'UTC' AS t1),"
    " u AS (SELECT u.* FROM usage u, c, p WHERE u.customer_id = c.id AND u.received_at >= p.t0 AND u.received_at < p.t1),"
    " x AS (SELECT model, 'input_cache_miss' AS cls, price_input_cache_miss AS price, prompt_cache_miss_tokens AS n FROM u"
    "   UNION ALL SELECT model, 'input_cache_hit', price_input_cache_hit, prompt_cache_hit_tokens FROM u"
    "   UNION ALL SELECT model, 'output', price_output, completion_tokens FROM u),"
    " lines AS (SELECT model, cls, price, sum(n) AS n, sum(n::numeric * price) AS amount FROM x"
    "   GROUP BY model, cls, price HAVING sum(n) > 0)"
    " SELECT json_build_object('object', 'invoice', 'customer', c.name, 'month', $2, 'currency', 'USD',"
    " 'period_start', p.t0, 'period_end', p.t1,"
    " 'lines', coalesce((SELECT json_agg(json_build_object('model', model, 'token_class', cls,"
    "   'unit_price_micro_usd_per_1m', price::text, 'tokens', n::text, 'amount_pico', amount::text,"
    "   'amount_usd', tg_usd(amount)) ORDER BY model, cls, price) FROM lines), '[]'),"
    " 'requests', (SELECT count(*) FROM u),"
    " 'total_pico', (SELECT coalesce(sum(cost_pico), 0) FROM u)::text,"
    " 'total_usd', tg_usd((SELECT coalesce(sum(cost_pico), 0) FROM u)),"
    " 'credits_pico', (SELECT coalesce(sum(amount_pico), 0) FROM ledger l WHERE l.customer_id = c.id"
    "   AND l.kind <> 'usage' AND l.created_at >= p.t0 AND l.created_at < p.t1)::text,"
    " 'balance_pico', c.balance_pico::text, 'balance_usd', tg_usd(c.balance_pico))::text"
    " FROM c, p";

int bill_admin_invoices_route(adm_req_t *r, char **seg, int nseg, struct evkeyvalq *q) {
    if (nseg == 3 && !strcmp(seg[0], "customers") && !strcmp(seg[2], "invoice")) {
        const char *m = evhttp_find_header(q, "month");
        if (!adm_name_ok(seg[1])) {
            adm_error(r, 404, "not_found", "no such customer");
        } else if (r->method != EVHTTP_REQ_GET) {
            adm_bad_method(r);
        } else if (!adm_month_ok(m)) {
            adm_error(r, 400, "invalid_value", "month must be YYYY-MM");
        } else {
            const char *p[] = {seg[1], m};
            adm_read(r, SQL_INVOICE, 2, p, "no such customer");
        }
        return 1;
    }
    return 0;
}
