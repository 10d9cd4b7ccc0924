/* tg_http_media.h — is a Content-Type value JSON (RFC 9110 §8.3):
 * TG_HTTP_MEDIA_JSON for application/json or application/...+json, with any
 * parameters, a charset among them only utf-8 (any case, quoted or not);
 * TG_HTTP_MEDIA_BAD_CHARSET for a JSON type in another charset;
 * TG_HTTP_MEDIA_NOT_JSON otherwise (another type, or a value that does not
 * parse).  A POST body of the API with no Content-Type at all is taken as
 * JSON by its callers (curl users forget it; the body must still parse). */
#ifndef TG_HTTP_MEDIA_H
#define TG_HTTP_MEDIA_H

enum { TG_HTTP_MEDIA_JSON = 0, TG_HTTP_MEDIA_NOT_JSON = -1, TG_HTTP_MEDIA_BAD_CHARSET = -2 };
int tg_http_json_media(const char *v);

#endif
