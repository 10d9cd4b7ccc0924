/* api_fmt.c — string formats of a compiled JSON schema the grammar enforces
 * (engine/sched/eng_gram.c), one byte at a time: "date", "time",
 * "date-time" (RFC 3339 full-date, full-time, date-time), "uuid", "email",
 * "hostname", "ipv4", "ipv6", "duration" (RFC 3339 appendix A), and the
 * offset-less times of zod's z.iso.time() patterns.
 *
 * What is written is a subset of each format, every value of it valid for
 * strict readers too (Python's datetime.fromisoformat, jsonschema's format
 * checker): years 0001-9999, the day within its month (29 February only in
 * leap years), seconds 00-59 (no leap second), at most 6 fraction digits, the
 * offset "Z" or +hh:mm / -hh:mm, "T" between date and time, uuids in lower
 * case; emails local@domain with a lower-case local part of letters and digits
 * (single '.', '_', '+' or '-' between them, at most 64 bytes) and a domain of
 * at least two labels ending in a top-level label of two or more letters (at
 * most 254 bytes in all); hostnames of lower-case labels that start with a
 * letter, end with a letter or digit, of at most 63 bytes (253 in all, no
 * final dot); ipv4 dotted quads without leading zeros; ipv6 in the full
 * eight-group form, lower-case hex (no "::", no embedded ipv4); durations "P"
 * then units in the order RFC 3339's grammar has them (Y M D, or W alone, then
 * "T" and H M S, each unit right after the one before it, as "P1Y2M" or
 * "PT5M30S"), whole numbers of at most 9 digits.  Every prefix taken has a
 * completion (no dead ends), and api_fmt_rest says how many bytes it needs at
 * least. */
#include "api.h"

#include <string.h>

enum { ST_DATE, ST_T, ST_TIME, ST_AFTER, ST_FRAC, ST_OFF, ST_DONE, ST_UUID, ST_IPV4, ST_IPV6, ST_HOST, ST_ELOCAL,
       ST_EDOM, ST_DUR };

#define EMAIL_MAX 254  /* bytes of an email address (RFC 5321's path limit less the brackets) */
#define LOCAL_MAX 64   /* bytes of its local part */
#define HOST_MAX 253   /* bytes of a hostname */
#define LABEL_MAX 63   /* bytes of one label */
#define DUR_DIGITS 9   /* digits of one duration number */

#define MAX_FRAC 6 /* Pydantic (speedate) reads at most 6 */

static int is_dt(int kind) { return kind == API_SF_DATETIME || kind == API_SF_DATETIME_Z; }
/* times with no offset after them (zod's patterns) */
static int is_local(int kind) { return kind == API_SF_TIME_LOCAL || kind == API_SF_TIME_LOCAL_S || kind == API_SF_HHMM; }

void api_fmt_init(int kind, api_fmt_t *s) {
    *s = (api_fmt_t){0};
    switch (kind) {
    case API_SF_TIME: case API_SF_TIME_LOCAL: case API_SF_TIME_LOCAL_S: case API_SF_HHMM: s->stage = ST_TIME; break;
    case API_SF_UUID: case API_SF_UUID_V: s->stage = ST_UUID; break;
    case API_SF_IPV4: s->stage = ST_IPV4; break;
    case API_SF_IPV6: s->stage = ST_IPV6; break;
    case API_SF_HOSTNAME: s->stage = ST_HOST; break;
    case API_SF_EMAIL: s->stage = ST_ELOCAL; break;
    case API_SF_DURATION: s->stage = ST_DUR; break;
    default: s->stage = ST_DATE; break;
    }
}

static int is_lower(unsigned c) { return c >= 'a' && c <= 'z'; }
static int is_digit(unsigned c) { return c >= '0' && c <= '9'; }

/* Duration units (api_fmt_t.month): none yet, Y, M, D, then H, M (minutes), S after "T", W alone. */
enum { DU_NONE, DU_Y, DU_MO, DU_D, DU_H, DU_MI, DU_S, DU_W };

/* The unit letter c may end the number being written: its DU_*, or 0.  In
 * RFC 3339's grammar each unit is followed only by the next one (Y by M, M by
 * D; H by M, M by S), so after a unit exactly one may come. */
static int dur_unit(const api_fmt_t *s, unsigned c) {
    if (!s->d1) { /* the date part */
        switch (s->month) {
        case DU_NONE: return c == 'Y' ? DU_Y : c == 'M' ? DU_MO : c == 'D' ? DU_D : c == 'W' ? DU_W : 0;
        case DU_Y: return c == 'M' ? DU_MO : 0;
        case DU_MO: return c == 'D' ? DU_D : 0;
        default: return 0;
        }
    }
    switch (s->month) { /* after "T": a date unit (or none) was the last */
    case DU_H: return c == 'M' ? DU_MI : 0;
    case DU_MI: return c == 'S' ? DU_S : 0;
    case DU_S: return 0;
    default: return c == 'H' ? DU_H : c == 'M' ? DU_MI : c == 'S' ? DU_S : 0;
    }
}

/* Some unit may still come (so a number may start). */
static int dur_more(const api_fmt_t *s) {
    return s->d1 ? s->month != DU_S : s->month == DU_NONE || s->month == DU_Y || s->month == DU_MO;
}

/* The string's length limit for the formats that have one (0: none). */
static int len_max(int kind) { return kind == API_SF_EMAIL ? EMAIL_MAX : kind == API_SF_HOSTNAME ? HOST_MAX : 0; }

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
        if (t.stage == ST_TIME && kind == API_SF_HHMM && t.pos == 5) t.stage = ST_DONE, t.pos = 0;
        else if (t.stage == ST_TIME && t.pos == 8) t.stage = ST_AFTER, t.pos = 0;
        else if (t.stage == ST_OFF && t.pos == 5) t.stage = ST_DONE, t.pos = 0;
        break;
    case ST_AFTER:
    case ST_FRAC:
        if (t.stage == ST_AFTER && c == '.' && kind != API_SF_TIME_LOCAL_S) {
            t.stage = ST_FRAC, t.nfrac = 0;
        } else if (t.stage == ST_FRAC && dg) {
            if (t.nfrac >= MAX_FRAC) return -1;
            t.nfrac++;
        } else if (t.stage == ST_FRAC && !t.nfrac) {
            return -1; /* "." takes a digit */
        } else if (is_local(kind)) {
            return -1; /* no offset */
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
    case ST_IPV4: /* pos: the octet (0-3), d1: its digits so far, year: its value */
        if (is_digit(c)) {
            if (t.d1 && (!t.year || t.d1 == 3 || t.year * 10 + d > 255)) return -1; /* no leading zero */
            t.year = (uint16_t)(t.year * 10 + d), t.d1++;
        } else if (c == '.' && t.d1 && t.pos < 3) {
            t.pos++, t.d1 = 0, t.year = 0;
        } else {
            return -1;
        }
        break;
    case ST_IPV6: /* pos: the group (0-7), d1: its hex digits so far */
        if (is_digit(c) || (c >= 'a' && c <= 'f')) {
            if (t.d1 >= 4) return -1;
            t.d1++;
        } else if (c == ':' && t.d1 && t.pos < 7) {
            t.pos++, t.d1 = 0;
        } else {
            return -1;
        }
        break;
    case ST_HOST: /* pos: the label's bytes, d1: its last was '-'; year: bytes in all */
    case ST_EDOM: /* the same, and month: a '.' came, nfrac: the label is letters only (a top-level one) */
        if (is_lower(c) || (is_digit(c) && t.pos)) {
            if (t.pos >= LABEL_MAX) return -1;
            if (!t.pos) t.nfrac = 1;
            if (!is_lower(c)) t.nfrac = 0;
            t.pos++, t.d1 = 0;
        } else if (c == '-' && t.pos && t.pos + 2 <= LABEL_MAX) { /* a letter or digit must follow */
            t.pos++, t.d1 = 1, t.nfrac = 0;
        } else if (c == '.' && t.pos && !t.d1) {
            t.pos = 0, t.month = 1;
        } else {
            return -1;
        }
        t.year++;
        break;
    case ST_ELOCAL: /* pos: bytes so far, d1: the last was a separator */
        if (is_lower(c) || is_digit(c)) {
            if (t.pos >= LOCAL_MAX) return -1;
            t.pos++, t.d1 = 0;
        } else if (strchr("._+-", (int)c) && c && t.pos && !t.d1 && t.pos + 2 <= LOCAL_MAX) {
            t.pos++, t.d1 = 1;
        } else if (c == '@' && t.pos && !t.d1) {
            t.stage = ST_EDOM, t.pos = 0, t.d1 = 0, t.month = 0, t.nfrac = 0;
        } else {
            return -1;
        }
        t.year++;
        break;
    case ST_DUR: /* pos: 0 before "P", 1 between units, 2 in a number (nfrac digits); d1: after "T"; month: DU_* */
        if (t.pos == 0) {
            if (c != 'P') return -1;
            t.pos = 1;
        } else if (is_digit(c)) {
            if (!dur_more(&t) || t.nfrac >= DUR_DIGITS) return -1;
            t.pos = 2, t.nfrac++;
        } else if (t.pos == 1 && c == 'T') {
            if (t.d1 || t.month == DU_W) return -1; /* once, and not after weeks */
            t.d1 = 1;
        } else if (t.pos == 2 && dur_unit(&t, c)) {
            t.month = (uint8_t)dur_unit(&t, c), t.pos = 1, t.nfrac = 0;
        } else {
            return -1;
        }
        break;
    default: return -1; /* ST_DONE: only the closing quote */
    }
    if (len_max(kind) && t.year + api_fmt_rest(kind, &t) > len_max(kind)) return -1; /* could not end in time */
    *s = t;
    return 0;
}

int api_fmt_rest(int kind, const api_fmt_t *s) {
    switch (s->stage) {
    case ST_DATE: return 10 - s->pos + (is_dt(kind) ? 1 + 8 + 1 : 0);
    case ST_T: return 1 + 8 + 1;
    case ST_TIME: return kind == API_SF_HHMM ? 5 - s->pos : 8 - s->pos + !is_local(kind);
    case ST_AFTER: return !is_local(kind);
    case ST_FRAC: return (s->nfrac ? 1 : 2) - is_local(kind);
    case ST_OFF: return 5 - s->pos;
    case ST_UUID: return 36 - s->pos;
    case ST_IPV4: return !s->d1 + (3 - s->pos) * 2;
    case ST_IPV6: return !s->d1 + (7 - s->pos) * 2;
    case ST_HOST: return !s->pos || s->d1;
    case ST_ELOCAL: return (!s->pos || s->d1) + 1 + 4; /* "@", then "a.bc" */
    case ST_EDOM: {
        int dot = (!s->pos || s->d1) + 3; /* end the label (a letter or digit first if need be), ".", "bc" */
        if (s->month && s->nfrac) return s->pos >= 2 ? 0 : 2 - s->pos < dot ? 2 - s->pos : dot; /* a top-level label */
        if (s->month && !s->pos) return 2;
        return dot;
    }
    case ST_DUR:
        if (s->pos == 0) return 3; /* "P1D" */
        if (s->pos == 2) return 1; /* the unit */
        return s->month == DU_NONE || (s->d1 && s->month < DU_H) ? 2 : 0;
    default: return 0;
    }
}
