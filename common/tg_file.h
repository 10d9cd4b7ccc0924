/* tg_file.h — read a whole file into memory.
 *
 * One helper for the "slurp a file" loop that config loaders, the tokenizer
 * and the fuzz replay drivers all need.  It reads until EOF (never trusts
 * ftell), so pipes and /proc files work, and it can refuse files above a
 * size limit without reading them all. */
#ifndef TG_FILE_H
#define TG_FILE_H

#include <stddef.h>

/* Read all of path.  Returns a malloc'd buffer holding the bytes followed by
 * one NUL (not counted in *len), so text can be used as a C string when it
 * holds no NUL of its own; the caller frees it.  max > 0 refuses files longer
 * than max bytes; 0 means no limit.  *len may be NULL.
 * On failure returns NULL with errno set: what fopen/fread said, EFBIG for a
 * file over max, ENOMEM when memory ran out. */
char *tg_file_read(const char *path, size_t max, size_t *len);

#endif
