/* tg_b64.h — base64url (RFC 4648 §5, no padding): the alphabet A-Z a-z 0-9
 * '-' '_', safe in HTTP header values, URLs and JSON strings without
 * escaping.  Used by signed usage receipts (billing/bill_receipt.c) and
 * `tollgatectl receipt verify`. */
#ifndef TG_B64_H
#define TG_B64_H

#include <stddef.h>
#include <stdint.h>

/* Encoded length of n bytes (without the NUL). */
#define TG_B64URL_LEN(n) (((n) / 3) * 4 + ((n) % 3 ? (n) % 3 + 1 : 0))

/* Encode p[0..n) into out (TG_B64URL_LEN(n) + 1 bytes, NUL-terminated).
 * Returns the length written. */
size_t tg_b64url_encode(const void *p, size_t n, char *out);

/* Decode s[0..n) into out (at least n * 3 / 4 bytes).  Padding ('=') is
 * refused, as are characters outside the alphabet, a length of 1 mod 4 and
 * non-zero bits left over in the last character (so every byte string has
 * exactly one encoding).  Returns the number of bytes, or -1. */
long tg_b64url_decode(const char *s, size_t n, uint8_t *out);

#endif
