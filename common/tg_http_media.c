/* tg_http_media.c — a Content-Type value read as RFC 9110 §8.3 writes it:
 * is the body JSON (tg_http_media.h).  No allocation, no I/O; the gateway's
 * request reader and the engine worker's share it, so both refuse the same
 * bodies. */
#include "tg_http_media.h"

#include <ctype.h>
#include <string.h>
#include <strings.h>

int tg_http_json_media(const char *v) {
    static const char TCH[] = "!#$%&'*+-.^_`|~"; /* tchar besides letters and digits (RFC 9110 §5.6.2) */
    const char *p = v + strspn(v, " \t");
    size_t tl = 0, sl = 0, n;
    while (isalnum((unsigned char)p[tl]) || (p[tl] && strchr(TCH, p[tl]))) tl++;
    if (!tl || p[tl] != '/') return TG_HTTP_MEDIA_NOT_JSON;
    const char *sub = p + tl + 1;
    while (isalnum((unsigned char)sub[sl]) || (sub[sl] && strchr(TCH, sub[sl]))) sl++;
    if (!sl) return TG_HTTP_MEDIA_NOT_JSON;
    int json = tl == 11 && !strncasecmp(p, "application", 11) &&
               ((sl == 4 && !strncasecmp(sub, "json", 4)) || (sl > 5 && !strncasecmp(sub + sl - 5, "+json", 5)));
    if (!json) return TG_HTTP_MEDIA_NOT_JSON;
    p = sub + sl;
    for (;;) { /* *( OWS ";" OWS [ parameter ] ) */
        p += strspn(p, " \t");
        if (!*p) return TG_HTTP_MEDIA_JSON;
        if (*p++ != ';') return TG_HTTP_MEDIA_NOT_JSON;
        p += strspn(p, " \t");
        if (!*p || *p == ';') continue;
        const char *name = p;
        for (n = 0; isalnum((unsigned char)p[n]) || (p[n] && strchr(TCH, p[n])); n++) {}
        if (!n || p[n] != '=') return TG_HTTP_MEDIA_NOT_JSON;
        int charset = n == 7 && !strncasecmp(name, "charset", 7);
        p += n + 1;
        char val[32];
        size_t vl = 0;
        if (*p == '"') { /* quoted-string */
            for (p++; *p && *p != '"'; p++) {
                if (*p == '\\' && p[1]) p++;
                if (vl < sizeof val - 1) val[vl++] = *p;
            }
            if (*p++ != '"') return TG_HTTP_MEDIA_NOT_JSON;
        } else {
            for (; isalnum((unsigned char)*p) || (*p && strchr(TCH, *p)); p++)
                if (vl < sizeof val - 1) val[vl++] = *p;
            if (!vl) return TG_HTTP_MEDIA_NOT_JSON;
        }
        val[vl] = 0;
        if (charset && strcasecmp(val, "utf-8") && strcasecmp(val, "utf8")) return TG_HTTP_MEDIA_BAD_CHARSET;
    }
}
