/* tg_hex.h — the one hex codec (lower case out, either case in). */
#ifndef TG_HEX_H
#define TG_HEX_H

#include <stddef.h>

/* n bytes as 2n lower-case hex digits and a NUL (out holds 2n + 1). */
void tg_hex_encode(const unsigned char *b, size_t n, char *out);
/* The value of one hex digit, or -1. */
int tg_hex_val(int c);
/* 2n hex digits (either case) -> n bytes; 0, or -1 when a digit is not hex. */
int tg_hex_decode(const char *s, size_t n, unsigned char *out);

#endif
