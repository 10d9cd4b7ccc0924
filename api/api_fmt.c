/* api_fmt.c — string formats of a compiled JSON schema the grammar enforces
 * (engine/sched/eng_gram.c), one byte at a time: "date", "time",
 * "date-time" (RFC 3339 full-date, full-time, date-time) and "uuid".
 *
 * What is written is a subset of each format, every value of it valid for
 * strict readers too (Python's datetime.fromisoformat, jsonschema's format
 * checker): years 0001-9999, the day within its month (29 February only in
 * leap years), seconds 00-59 (no leap second), at most 6 fraction digits, the
 * offset "Z" or +hh:mm / -hh:mm, "T" between date and time, uuids in lower
 * case.  Every prefix taken has a completion (no dead ends), and
 * api_fmt_rest says how many bytes it needs at least. */
#include "api.h"

#include <string.h>

enum { ST_DATE, ST_T, ST_TIME, ST_AFTER, ST_FRAC, ST_OFF, ST_DONE, ST_UUID };

#define MAX_FRAC 6 /* Pydantic (speedate) reads at most 6 */

static int is_dt(int kind) { return kind == API_SF_DATETIME || kind == API_SF_DATETIME_Z; }

void api_fmt_init(int kind, api_fmt_t *s) {
    *s = (api_fmt_t){0};
    s->stage = kind == API_SF_TIME ? ST_TIME : kind == API_SF_UUID || kind == API_SF_UUID_V ? ST_UUID : ST_DATE;
}

static int days_in(int month, int year) {
    static const uint8_t D[] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    int leap = year % 4 == 0 && (year % 100 != 0 || year % 400 == 0);
    return month == 2 ? 28 + leap : D[month - 1];
}

/* Two digits of hh (00-23) or mm/ss (00-59) at position k (0 or 1) of the pair. */
static int pair_ok(int hour, int k, int d1, int d) {
    if (hour) return k == 0 ? d <= 2 : d1 < 2 || d <= 3;
    return k == 0 ? d <= 5 : 1;
}

int api_fmt_step(int kind, api_fmt_t *s, unsigned c) {
    int dg = c >= '0' && c <= '9', d = (int)c - '0';
    api_fmt_t t = *s;
    switch (t.stage) {
    case ST_DATE: /* YYYY-MM-DD */
        switch (t.pos) {
        case 4:
        case 7:
            if (c != '-') return -1;
            break;
        case 0: case 1: case 2: case 3:
            if (!dg || (t.pos == 3 && t.year * 10 + d == 0)) return -1; /* no year 0000 */
            t.year = (uint16_t)(t.year * 10 + d);
            break;
        case 5:
            if (!dg || d > 1) return -1;
            t.d1 = (uint8_t)d;
            break;
        case 6:
            if (!dg || (t.d1 == 0 ? d == 0 : d > 2)) return -1;
            t.month = (uint8_t)(t.d1 * 10 + d);
            break;
        case 8:
            if (!dg || d * 10 > days_in(t.month, t.year)) return -1;
            t.d1 = (uint8_t)d;
            break;
        case 9:
            if (!dg || (t.d1 == 0 && d == 0) || t.d1 * 10 + d > days_in(t.month, t.year)) return -1;
            break;
        }
        if (++t.pos == 10) t.stage = is_dt(kind) ? ST_T : ST_DONE, t.pos = 0;
        break;
    case ST_T:
        if (c != 'T') return -1;
        t.stage = ST_TIME, t.pos = 0;
        break;
    case ST_TIME: /* hh:mm:ss */
    case ST_OFF:  /* hh:mm */
        if (t.pos == 2 || t.pos == 5) {
            if (c != ':') return -1;
        } else {
            int k = t.pos % 3; /* 0: the pair's first digit */
            if (!dg || !pair_ok(t.pos < 2, k, t.d1, d)) return -1;
            t.d1 = (uint8_t)d;
        }
        t.pos++;
        if (t.stage == ST_TIME && t.pos == 8) t.stage = ST_AFTER, t.pos = 0;
        else if (t.stage == ST_OFF && t.pos == 5) t.stage = ST_DONE, t.pos = 0;
        break;
    case ST_AFTER:
    case ST_FRAC:
        if (t.stage == ST_AFTER && c == '.') {
            t.stage = ST_FRAC, t.nfrac = 0;
        } else if (t.stage == ST_FRAC && dg) {
            if (t.nfrac >= MAX_FRAC) return -1;
            t.nfrac++;
        } else if (t.stage == ST_FRAC && !t.nfrac) {
            return -1; /* "." takes a digit */
        } else if (c == 'Z') {
            t.stage = ST_DONE;
        } else if ((c == '+' || c == '-') && kind != API_SF_DATETIME_Z) {
            t.stage = ST_OFF, t.pos = 0;
        } else {
            return -1;
        }
        break;
    case ST_UUID: /* 8-4-4-4-12 lower-case hex */
        if (t.pos == 8 || t.pos == 13 || t.pos == 18 || t.pos == 23) {
            if (c != '-') return -1;
        } else if (!dg && !(c >= 'a' && c <= 'f')) {
            return -1;
        } else if (kind == API_SF_UUID_V && ((t.pos == 14 && (c < '1' || c > '8')) || /* version 1-8 */
                                             (t.pos == 19 && !strchr("89ab", (int)c)))) { /* variant 10xx */
            return -1;
        }
        if (++t.pos == 36) t.stage = ST_DONE, t.pos = 0;
        break;
    default: return -1; /* ST_DONE: only the closing quote */
    }
    *s = t;
    return 0;
}

int api_fmt_rest(int kind, const api_fmt_t *s) {
    switch (s->stage) {
    case ST_DATE: return 10 - s->pos + (is_dt(kind) ? 1 + 8 + 1 : 0);
    case ST_T: return 1 + 8 + 1;
    case ST_TIME: return 8 - s->pos + 1;
    case ST_AFTER: return 1;
    case ST_FRAC: return s->nfrac ? 1 : 2;
    case ST_OFF: return 5 - s->pos;
    case ST_UUID: return 36 - s->pos;
    default: return 0;
    }
}
