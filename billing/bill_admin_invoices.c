/* bill_admin_invoices.c — invoices per customer and calendar month (UTC),
 * their finalization, and reconciliation, in the admin API.
 *
 * The documents come from PostgreSQL (migration 0006): a finalized invoice is
 * served from the JSON and CSV stored when it was finalized, so it reads the
 * same byte for byte forever; a month not finalized yet is a draft computed
 * on each call (tg_invoice_render).  Finalizing (tg_invoice_finalize_month)
 * assigns every usage and ledger row no invoice holds yet to the new invoice;
 * usage arriving later is billed on the next invoice as a late line. */
#include <stdio.h>
#include <string.h>

#include <event2/http.h>
#include <event2/keyvalq_struct.h>

#include "bill_admin-int.h"

/* $1 customer, $2 month YYYY-MM, $3 'json' or 'csv': the invoice document (also
 * what the dashboards show and download: bill_dash_views.c). */
const char BILL_INVOICE_SQL[] =
    "SELECT CASE WHEN $3 = 'csv' THEN coalesce(i.body_csv, d.body_csv) ELSE coalesce(i.body_json, d.body_json) END"
    " FROM customers c"
    " LEFT JOIN invoices i ON i.customer_id = c.id AND i.month = ($2 || '-01')::date"
    " LEFT JOIN LATERAL (SELECT * FROM tg_invoice_render(c.id, ($2 || '-01')::date, NULL, NULL, NULL)"
    "   WHERE i.id IS NULL) d ON true"
    " WHERE c.name = $1";

/* $1 month: the finalized invoices of that month. */
static const char SQL_INVOICE_LIST[] =
    "SELECT json_build_object('object', 'list', 'month', $1::text, 'data', coalesce(json_agg(json_build_object("
    "   'id', i.id, 'customer', c.name, 'month', to_char(i.month, 'YYYY-MM'), 'status', 'finalized',"
    "   'opening_balance_pico', i.opening_pico::text, 'credits_pico', i.credits_pico::text,"
    "   'adjustments_pico', i.adjustments_pico::text, 'refunds_pico', i.refunds_pico::text,"
    "   'usage_pico', i.usage_pico::text, 'usage_usd', tg_usd(i.usage_pico),"
    "   'closing_balance_pico', i.closing_pico::text, 'requests', i.requests::text, 'late_requests', i.late_requests::text,"
    "   'finalized_at', tg_iso(i.finalized_at), 'finalized_by', i.finalized_by) ORDER BY c.name), '[]'))::text"
    " FROM invoices i JOIN customers c ON c.id = i.customer_id WHERE i.month = ($1 || '-01')::date";

/* $1 month, $2 customer or NULL (every customer) */
static const char SQL_FINALIZE[] =
    "WITH r AS (SELECT tg_invoice_finalize_month(($1 || '-01')::date, $actor::text,"
    "     (SELECT id FROM customers WHERE name = $2)) AS body"
    "   WHERE $2::text IS NULL OR EXISTS (SELECT 1 FROM customers WHERE name = $2)),"
    ADM_AUDIT("a", "'invoice.finalize'", "'month:' || $1 || coalesce(' customer:' || $2, '')", "NULL",
              "r.body::jsonb", "r")
    ", resp AS (SELECT body FROM r)";

/* $1 from, $2 to */
static const char SQL_RECONCILE[] =
    "SELECT json_build_object('object', 'reconciliation',"
    " 'from', " ADM_PERIOD_FROM("$1::timestamptz", "$2::timestamptz") ", 'to', $2::timestamptz,"
    " 'ok', count(d.*) = 0,"
    " 'checked', json_build_object("
    "   'usage_rows', (SELECT count(*) FROM usage WHERE received_at >= $1::timestamptz AND received_at < $2::timestamptz)::text,"
    "   'customers', (SELECT count(*) FROM customers)::text,"
    "   'invoices', (SELECT count(*) FROM invoices WHERE period_end > $1::timestamptz AND period_start < $2::timestamptz)::text,"
    "   'rollups', to_regclass('usage_hourly_mismatch') IS NOT NULL),"
    " 'differences', coalesce(json_agg(json_build_object('check', d.check_name, 'subject', d.subject,"
    "   'expected', d.expected, 'actual', d.actual) ORDER BY d.check_name, d.subject), '[]'))::text"
    " FROM tg_reconcile($1::timestamptz, $2::timestamptz) d";

static void invoice_get(adm_req_t *r, const char *cust, struct evkeyvalq *q) {
    const char *m = evhttp_find_header(q, "month"), *f = evhttp_find_header(q, "format");
    int csv = f && !strcmp(f, "csv");
    if (!adm_month_ok(m)) {
        adm_field_error(r, "invalid_value", "month", "month must be YYYY-MM");
    } else if (f && !csv && strcmp(f, "json")) {
        adm_field_error(r, "invalid_value", "format", "format must be json or csv");
    } else {
        const char *p[] = {cust, m, csv ? "csv" : "json"};
        if (csv) adm_read_as(r, "text/csv; charset=utf-8");
        adm_read(r, BILL_INVOICE_SQL, 3, p, "no such customer");
    }
}

static void finalize(adm_req_t *r) {
    tg_json_t *j = adm_body(r);
    if (!j) return;
    const char *m, *cust;
    if (adm_str_field(r, j, "month", 7, 1, &m) == 0 && adm_str_field(r, j, "customer", 64, 0, &cust) == 0) {
        if (!adm_month_ok(m)) {
            adm_field_error(r, "invalid_value", "month", "month must be YYYY-MM");
        } else {
            const char *p[] = {m, cust};
            adm_write(r, SQL_FINALIZE, 2, p, "no such customer", 200, NULL, NULL);
        }
    }
    tg_json_free(j);
}

int bill_admin_invoices_route(adm_req_t *r, char **seg, int nseg, struct evkeyvalq *q) {
    if (nseg == 3 && !strcmp(seg[0], "customers") && !strcmp(seg[2], "invoice")) {
        if (!adm_name_ok(seg[1])) adm_error(r, 404, "not_found", "no such customer");
        else if (r->method != EVHTTP_REQ_GET) adm_bad_method(r, "GET");
        else invoice_get(r, seg[1], q);
        return 1;
    }
    if (nseg == 1 && !strcmp(seg[0], "invoices")) {
        const char *m = evhttp_find_header(q, "month");
        const char *p[] = {m};
        if (r->method != EVHTTP_REQ_GET) adm_bad_method(r, "GET");
        else if (!adm_month_ok(m)) adm_field_error(r, "invalid_value", "month", "month must be YYYY-MM");
        else adm_read(r, SQL_INVOICE_LIST, 1, p, NULL);
        return 1;
    }
    if (nseg == 2 && !strcmp(seg[0], "invoices") && !strcmp(seg[1], "finalize")) {
        if (r->method == EVHTTP_REQ_POST) finalize(r);
        else adm_bad_method(r, "POST");
        return 1;
    }
    if (nseg == 1 && !strcmp(seg[0], "reconcile")) {
        char f2[40], t2[40];
        int bad = 0;
        const char *f = adm_time_q(r, q, "from", f2, &bad);
        const char *t = bad ? NULL : adm_time_q(r, q, "to", t2, &bad);
        if (bad) return 1;
        const char *p[] = {f ? f : "-infinity", t ? t : "infinity"};
        if (r->method == EVHTTP_REQ_GET) adm_read(r, SQL_RECONCILE, 2, p, NULL);
        else adm_bad_method(r, "GET");
        return 1;
    }
    return 0;
}
