/* api-int.h — private to api/: what api_chat.c's one reader calls in
 * api_completion.c.  No other folder includes it. */
#ifndef API_INT_H
#define API_INT_H

#include "api.h"

/* The members only a completions body has (prompt, suffix, echo, logprobs
 * as an integer, best_of) and its max_tokens default, read after the members
 * it shares with chat (n included).  Sets r->cmpl.  0, or -1 with a 400 in e
 * (the caller frees r). */
int api_cmpl_members(api_chat_req_t *r, const tg_json_t *root, api_err_t *e);

#endif
