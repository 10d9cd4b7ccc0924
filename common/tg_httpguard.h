/* tg_httpguard.h — a gate in front of libevent's evhttp server: a cap on
 * connections, a bound on the request bytes buffered by all of them, a
 * deadline for receiving each request, and the API's JSON error bodies
 * ({"error":{"message","type","param","code"}}) where evhttp 2.1 would answer
 * with its own HTML pages (a malformed request, headers or a body too large,
 * an unknown method) having no hook for those answers.
 *
 * How: evhttp_set_bevcb gives every connection a bufferevent of ours; an
 * evbuffer callback on its input sees the bytes read before evhttp does and
 * holds back each request until the whole of it (head and body) has come and
 * been checked, by rules at least as strict as evhttp's own, so evhttp never
 * parses a request it would refuse (chunk framing lines end in CRLF, an
 * HTTP/1.0 request has no Transfer-Encoding; empty lines before a request
 * line are dropped here, RFC 9112 §2.2, and never reach evhttp).  A request that is refused is replaced by
 * a request of the guard's own (a target under TG_HTTPGUARD_PREFIX, which no
 * client request may have), in the same place in the connection's byte
 * stream, so answers keep their order under pipelining; the program's
 * generic callback passes it to tg_httpguard_answer, which sends the JSON
 * error.  Memory: a connection holds at most max_head bytes of a head and
 * max_body bytes of a body, and the bytes held by all connections together
 * never exceed max_buffered (the request that would is refused, 503).  A
 * connection that waits for a request longer than idle_timeout_s is closed
 * (evhttp's own timeout applies to reads and writes alike, so it is long), so
 * that idle connections cannot hold every place under max_conns.
 *
 * One guard per evhttp; the event loop's thread only. */
#ifndef TG_HTTPGUARD_H
#define TG_HTTPGUARD_H

#include <stddef.h>

#include <event2/event.h>
#include <event2/http.h>

#define TG_HTTPGUARD_PREFIX "/.tg-httpguard/"

typedef struct tg_httpguard tg_httpguard_t;

typedef struct {
    int max_conns;          /* open connections; one more is answered 503 and closed */
    size_t max_head;        /* bytes of a request line and headers (and a chunked body's trailer); 431 above */
    size_t max_body;        /* bytes of a body (413 above: by Content-Length at once, chunked when passed) */
    size_t max_buffered;    /* request bytes held by all connections together (503 above) */
    int request_timeout_s;  /* from a request's first byte to its last (408 and close after) */
    int idle_timeout_s;     /* a connection waiting for a request, none begun, is closed after this long */
} tg_httpguard_opts_t;

typedef struct {
    unsigned long long conns;          /* open now */
    unsigned long long buffered;       /* request bytes held now */
    unsigned long long refused_conns;  /* connections refused over max_conns */
    unsigned long long bad_request, too_large, timeout, busy, bad_method; /* requests refused, by reason */
    unsigned long long idle_closed;    /* connections closed after idle_timeout_s without a request */
} tg_httpguard_stats_t;

/* Guard http (evhttp_set_bevcb is taken); the evhttp's own max_body_size and
 * max_headers_size should be above the guard's (they are a backstop).  NULL
 * on out of memory.  The guard is freed after the evhttp (tg_httpguard_free). */
tg_httpguard_t *tg_httpguard_new(struct event_base *base, struct evhttp *http, const tg_httpguard_opts_t *o);
void tg_httpguard_free(tg_httpguard_t *g);

/* Call first in the generic callback: 1 when req is one of the guard's own
 * (it has been answered: the JSON error, "Connection: close" when the
 * connection is done), 0 otherwise (the program's request). */
int tg_httpguard_answer(tg_httpguard_t *g, struct evhttp_request *req);

void tg_httpguard_stats(const tg_httpguard_t *g, tg_httpguard_stats_t *out);

#endif
