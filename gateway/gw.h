/* gw.h — the public face of the gateway module: load the configuration,
 * start the TLS front door on an event_base, stop it.
 *
 * The gateway speaks HTTP/1.1 over TLS to clients, authenticates and admits
 * requests through billing (bill.h), applies per-key rate limits in Redis and
 * proxies chat completions to the engine workers.  Everything runs on one
 * libevent loop; nothing here blocks it after start-up. */
#ifndef GW_H
#define GW_H

#include <stddef.h>
#include <stdint.h>

struct event_base;

typedef struct gw_config gw_config_t;
typedef struct gw_server gw_server_t;

/* Load the configuration: built-in defaults, then the JSON file (argv
 * "--config FILE", else $TOLLGATE_CONFIG, else config/tollgate.json when it
 * exists), then TOLLGATE_<NAME> environment variables, then "--name value"
 * flags.  Returns NULL with a message in err on any bad value.  The caller
 * owns the result and frees it with gw_config_free. */
gw_config_t *gw_config_load(int argc, char **argv, char *err, size_t errlen);
void gw_config_free(gw_config_t *c); /* accepts NULL */
/* Print the option table (name, default, meaning) to stdout. */
void gw_config_usage(void);

/* Start listening; returns NULL with a message in err.  The server borrows
 * cfg (which must outlive it). */
gw_server_t *gw_server_new(struct event_base *base, const gw_config_t *cfg, char *err, size_t errlen);
/* Stop accepting, let requests in flight finish for up to shutdown_grace_ms,
 * then break the loop.  Safe to call more than once. */
void gw_server_shutdown(gw_server_t *s);
void gw_server_free(gw_server_t *s);
/* Start the loops after the first on threads of their own (the first runs on
 * the caller's event_base_dispatch); gw_server_join waits for them to end. */
int gw_server_start(gw_server_t *s, char *err, size_t errlen);
void gw_server_join(gw_server_t *s);
int gw_server_loops(const gw_server_t *s);
/* SIGHUP: load the TLS certificate and key again (new connections get them;
 * open ones keep theirs); on failure the old ones stay, logged. */
void gw_server_reload(gw_server_t *s); /* accepts NULL; also frees billing */

#endif
