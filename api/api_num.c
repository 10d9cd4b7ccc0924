/* api_num.c — numbers against a schema node's bounds (minimum, maximum,
 * exclusiveMinimum, exclusiveMaximum), one byte at a time: what the grammar
 * (engine/sched/eng_gram.c) asks while it writes a number, and what the
 * compiler asks for a node's shortest value.
 *
 * Exact: the bounds are integers in units of 10^-F (F = the node's nscale,
 * at most API_NUM_MAX_SCALE; the compiler rounds a finer bound inwards, so
 * what is written is always inside the schema's own bounds), and so is the
 * magnitude written so far; fraction digits beyond F only say whether the
 * value sits strictly between two units (tail).  All arithmetic is 128-bit,
 * saturating at NUM_INF, so nothing overflows.
 *
 * Invariant (the grammar's, kept here): a step is taken only when some valid
 * number still starts with the bytes so far, so a prefix never dead-ends.
 * Numbers are written without exponent when bounded (a subset of JSON's
 * numbers, every one of them valid).
 *
 * multipleOf (nmul units, the scale chosen so that it is a whole number of
 * them): a value is then a multiple of nmul units, so it has no digit beyond
 * the scale, and where the bounds ask "is there a value of this digit shape in
 * range" (multiples of some power of ten u in an interval) the question is
 * asked of the multiples of lcm(u, nmul) instead; magnitudes stop at
 * API_NUM_LIMIT (no multiple is tracked beyond). */
#include "api.h"

typedef __int128 i128;

#define NUM_INF ((i128)1 << 100)

/* The bounds of the magnitude of a number of sign neg. */
typedef struct {
    int has_lo, has_hi, lo_ex, hi_ex;
    i128 lo, hi;
} mag_t;

static mag_t mag_bounds(const api_schema_node_t *nd, int neg) {
    mag_t b = {0};
    if (!neg) {
        b.has_lo = !!(nd->nb & API_NB_LO), b.lo = nd->nlo, b.lo_ex = !!(nd->nb & API_NB_LO_EX);
        b.has_hi = !!(nd->nb & API_NB_HI), b.hi = nd->nhi, b.hi_ex = !!(nd->nb & API_NB_HI_EX);
    } else { /* lo <= -m <= hi  <=>  -hi <= m <= -lo */
        b.has_lo = !!(nd->nb & API_NB_HI), b.lo = -(i128)nd->nhi, b.lo_ex = !!(nd->nb & API_NB_HI_EX);
        b.has_hi = !!(nd->nb & API_NB_LO), b.hi = -(i128)nd->nlo, b.hi_ex = !!(nd->nb & API_NB_LO_EX);
    }
    return b;
}

/* Does the interval from a to b (ao, bo: open ends) meet the bounds? */
static int meets(const mag_t *B, i128 a, int ao, i128 b, int bo) {
    i128 L = a, U = b;
    int Lo = ao, Uo = bo;
    if (B->has_lo) {
        if (B->lo > L) L = B->lo, Lo = B->lo_ex;
        else if (B->lo == L) Lo |= B->lo_ex;
    }
    if (B->has_hi) {
        if (B->hi < U) U = B->hi, Uo = B->hi_ex;
        else if (B->hi == U) Uo |= B->hi_ex;
    }
    return L < U || (L == U && !Lo && !Uo);
}

/* Is there a multiple of u in [a, b] (units, a >= 0) within the bounds? */
static int mult_meets(const mag_t *B, i128 a, i128 b, i128 u) {
    i128 L = a, U = b;
    if (B->has_lo && B->lo + B->lo_ex > L) L = B->lo + B->lo_ex;
    if (B->has_hi && B->hi - B->hi_ex < U) U = B->hi - B->hi_ex;
    if (L < 0) L = 0;
    if (L > U) return 0;
    i128 x = (L + u - 1) / u * u;
    return x <= U;
}

/* Is there a unit x in [a, b] whose open interval (x, x+1) lies within the
 * bounds (a value with a digit beyond the scale)? */
static int open_meets(const mag_t *B, i128 a, i128 b) {
    i128 L = a, U = b;
    if (B->has_lo && B->lo > L) L = B->lo;
    if (B->has_hi && B->hi - 1 < U) U = B->hi - 1;
    return L <= U;
}

static i128 gcd_(i128 a, i128 b) {
    while (b) {
        i128 t = a % b;
        a = b, b = t;
    }
    return a;
}

/* The step of the values that are multiples of u (units) and of the node's multipleOf. */
static i128 step_of(i128 mul, i128 u) {
    if (!mul || u >= NUM_INF) return u;
    i128 l = u / gcd_(u, mul);
    return l > NUM_INF / mul ? NUM_INF : l * mul;
}

static i128 pow10_(int k) {
    i128 x = 1;
    while (k-- > 0)
        if ((x *= 10) > NUM_INF) return NUM_INF;
    return x;
}

/* Fraction digits to add so that a value in [a, a + W * 10^left) (units;
 * `left` digits of the scale still to come) meets the bounds: the fewest, or
 * API_NUM_NEVER.  With e more digits (e <= left) the values are the
 * multiples of 10^(left - e) there; one digit beyond the scale reaches
 * inside a unit. */
static int frac_more(const mag_t *B, i128 mul, i128 a, i128 W, int left) {
    i128 span = W * pow10_(left);
    for (int e = 1; e <= left; e++) {
        i128 u = pow10_(left - e);
        if (mult_meets(B, a, a + span - u, step_of(mul, u))) return e;
    }
    return !mul && open_meets(B, a, a + span - 1) ? left + 1 : API_NUM_NEVER; /* a multiple has no digit beyond */
}

static int min_(int a, int b) { return a < b ? a : b; }

int api_num_cost(const api_schema_node_t *nd, const api_num_t *s) {
    int F = nd->nscale, frac = !!(nd->types & API_ST_NUM);
    i128 S = pow10_(F), mul = nd->nmul;
    mag_t B = mag_bounds(nd, s->neg);
    if (mul && (!B.has_hi || B.hi > API_NUM_LIMIT)) /* api_num_step follows multiples up to the limit only */
        B.has_hi = 1, B.hi = API_NUM_LIMIT, B.hi_ex = 0;
    switch (s->phase) {
    case API_NUM_START:
    case API_NUM_MINUS: {
        int best = API_NUM_NEVER;
        for (int neg = s->phase == API_NUM_MINUS; neg <= 1; neg++) {
            api_num_t t = {.neg = (uint8_t)neg, .phase = API_NUM_ZERO};
            int pre = neg && s->phase == API_NUM_START; /* the '-' itself */
            best = min_(best, pre + 1 + api_num_cost(nd, &t));
            for (int d = 1; d <= 9; d++) {
                t.phase = API_NUM_INT, t.m = (uint64_t)(d * S);
                best = min_(best, pre + 1 + api_num_cost(nd, &t));
            }
        }
        return best;
    }
    case API_NUM_ZERO:
    case API_NUM_INT: {
        if (s->big) /* beyond every bound: more digits only go further */
            return B.has_hi ? API_NUM_NEVER : 0;
        int best = API_NUM_NEVER;
        i128 P = (i128)s->m / S; /* the integer part */
        for (int k = 0; k <= 40 && best > k; k++) {
            if (k && !P) break; /* "0" takes no more digits */
            i128 A = P * pow10_(k), W = pow10_(k); /* k more digits: integer parts [A, A + W) */
            if (A >= NUM_INF / S) break;
            A *= S;
            if (B.has_hi && A > B.hi) break; /* more digits only go further */
            if (mult_meets(&B, A, A + W * S - S, step_of(mul, S))) best = min_(best, k); /* ends as an integer */
            if (frac) best = min_(best, k + 1 + frac_more(&B, mul, A, W, F)); /* '.' and a fraction */
        }
        return best;
    }
    case API_NUM_DOT:
        if (s->big) return B.has_hi ? API_NUM_NEVER : 1;
        return frac_more(&B, mul, (i128)s->m, 1, F);
    case API_NUM_FRAC: {
        if (s->big) return B.has_hi ? API_NUM_NEVER : 0;
        int whole = !mul || (i128)s->m % mul == 0; /* the value so far is a multiple */
        if (s->fd <= F) {
            if (whole && meets(&B, s->m, 0, s->m, 0)) return 0;
            return frac_more(&B, mul, (i128)s->m, 1, F - s->fd);
        }
        if (s->tail) return !mul && meets(&B, s->m, 1, (i128)s->m + 1, 1) ? 0 : API_NUM_NEVER;
        if (whole && meets(&B, s->m, 0, s->m, 0)) return 0;
        return !mul && s->fd < F + API_NUM_MAX_TAIL && meets(&B, s->m, 1, (i128)s->m + 1, 1) ? 1 : API_NUM_NEVER;
    }
    }
    return API_NUM_NEVER;
}

int api_num_step(const api_schema_node_t *nd, api_num_t *s, unsigned c) {
    int F = nd->nscale, frac = !!(nd->types & API_ST_NUM);
    api_num_t t = *s;
    if (c == '-') {
        if (t.phase != API_NUM_START) return t.phase == API_NUM_MINUS ? -1 : 1;
        t.phase = API_NUM_MINUS, t.neg = 1;
    } else if (c >= '0' && c <= '9') {
        unsigned d = c - '0';
        i128 S = pow10_(F);
        switch (t.phase) {
        case API_NUM_START:
        case API_NUM_MINUS:
            t.phase = d ? API_NUM_INT : API_NUM_ZERO;
            t.m = (uint64_t)(d * S);
            t.nint = 1;
            break;
        case API_NUM_ZERO: return -1; /* no leading zeros */
        case API_NUM_INT: {
            if (t.nint >= API_NUM_MAX_INT) return -1; /* as a double, more would be Infinity at last */
            t.nint++;
            i128 v = (i128)t.m * 10 + d * S;
            if (t.big || v > API_NUM_LIMIT) {
                if (nd->nmul) return -1; /* no multiple is followed beyond the limit */
                t.big = 1;
            }
            else t.m = (uint64_t)v;
            break;
        }
        case API_NUM_DOT:
        case API_NUM_FRAC:
            t.phase = API_NUM_FRAC;
            if (t.fd >= F + API_NUM_MAX_TAIL) return -1; /* as a double, more would round onto a bound */
            t.fd++;
            if (t.fd <= F) t.m += (uint64_t)(d * pow10_(F - t.fd));
            else if (d) t.tail = 1;
            break;
        }
    } else if (c == '.') {
        if (!frac || (t.phase != API_NUM_ZERO && t.phase != API_NUM_INT)) return -1;
        t.phase = API_NUM_DOT;
    } else if (c == 'e' || c == 'E' || c == '+') {
        return t.phase == API_NUM_START ? 1 : -1; /* no exponent when bounded */
    } else {
        return 1;
    }
    if (api_num_cost(nd, &t) >= API_NUM_NEVER) return -1;
    *s = t;
    return 0;
}
