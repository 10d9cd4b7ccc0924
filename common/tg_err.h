/* tg_err.h — the "char *err, size_t errlen" convention: functions that can
 * fail take a caller's buffer and write one line saying why. */
#ifndef TG_ERR_H
#define TG_ERR_H

#include <stddef.h>

/* printf into err (errlen bytes, always NUL-terminated, truncated if need
 * be); does nothing when err is NULL or errlen is 0. */
void tg_errf(char *err, size_t errlen, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

#endif
