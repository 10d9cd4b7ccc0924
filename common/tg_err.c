/* tg_err.c — tg_errf (see tg_err.h). */
#include "tg_err.h"

#include <stdarg.h>
#include <stdio.h>

void tg_errf(char *err, size_t errlen, const char *fmt, ...) {
    if (!err || !errlen) return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}
