/* upstream.c — the bench's fixed upstream: an HTTP/1.1 server (epoll, one
 * thread per core, keep-alive) that answers every request with the same
 * OpenAI-shaped chat completion, usage included, after reading its head and
 * its Content-Length body.  Fast enough that the proxies in front of it are
 * what the bench measures.
 * usage: upstream PORT [THREADS] */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

static const char BODY[] =
    "{\"id\":\"chatcmpl-bench\",\"object\":\"chat.completion\",\"created\":1700000000,\"model\":\"bench-model\","
    "\"choices\":[{\"index\":0,\"message\":{\"role\":\"assistant\",\"content\":\"Hello from the bench.\"},"
    "\"finish_reason\":\"stop\"}],\"usage\":{\"prompt_tokens\":12,\"completion_tokens\":6,\"total_tokens\":18,"
    "\"prompt_cache_hit_tokens\":0,\"prompt_cache_miss_tokens\":12}}";
static char resp[1024];
static int resp_len;
static int port;

typedef struct {
    int fd;
    size_t len;
    size_t skip;  /* body bytes still to discard (a body larger than buf) before answering */
    char buf[65536];
} conn_t;

/* Answer every whole request in c->buf; returns -1 to close. */
static int serve(conn_t *c) {
    for (;;) {
        if (c->skip) {
            size_t k = c->len < c->skip ? c->len : c->skip;
            memmove(c->buf, c->buf + k, c->len - k);
            c->len -= k;
            c->skip -= k;
            if (c->skip) return 0;
            if (write(c->fd, resp, (size_t)resp_len) != resp_len) return -1;
            continue;
        }
        char *end = memmem(c->buf, c->len, "\r\n\r\n", 4);
        if (!end) return c->len == sizeof c->buf ? -1 : 0;
        size_t head = (size_t)(end - c->buf) + 4, body = 0;
        for (char *p = c->buf; p < end; p++)
            if ((p == c->buf || p[-1] == '\n') && !strncasecmp(p, "content-length:", 15)) body = strtoul(p + 15, 0, 10);
        if (head + body > sizeof c->buf) { /* a large body: discarded as it comes, then answered */
            memmove(c->buf, c->buf + head, c->len - head);
            c->len -= head;
            c->skip = body;
            continue;
        }
        if (c->len < head + body) return 0;
        if (write(c->fd, resp, (size_t)resp_len) != resp_len) return -1;
        memmove(c->buf, c->buf + head + body, c->len - head - body);
        c->len -= head + body;
    }
}

static void *run(void *arg) {
    int ls = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0), one = 1;
    setsockopt(ls, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    setsockopt(ls, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (bind(ls, (struct sockaddr *)&a, sizeof a) || listen(ls, 1024)) {
        perror("upstream: bind");
        exit(1);
    }
    int ep = epoll_create1(0);
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = NULL};
    epoll_ctl(ep, EPOLL_CTL_ADD, ls, &ev);
    struct epoll_event evs[64];
    for (;;) {
        int n = epoll_wait(ep, evs, 64, -1);
        for (int i = 0; i < n; i++) {
            conn_t *c = evs[i].data.ptr;
            if (!c) {
                int fd;
                while ((fd = accept4(ls, NULL, NULL, SOCK_NONBLOCK)) >= 0) {
                    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
                    conn_t *nc = calloc(1, sizeof *nc);
                    nc->fd = fd;
                    struct epoll_event ce = {.events = EPOLLIN, .data.ptr = nc};
                    epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ce);
                }
                continue;
            }
            ssize_t r;
            int dead = 0;
            while ((r = read(c->fd, c->buf + c->len, sizeof c->buf - c->len)) > 0) {
                c->len += (size_t)r;
                if (serve(c) < 0) {
                    dead = 1;
                    break;
                }
            }
            if (dead || r == 0 || (r < 0 && errno != EAGAIN)) {
                close(c->fd);
                free(c);
            }
        }
    }
    return arg;
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: upstream PORT [THREADS]\n");
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);
    port = atoi(argv[1]);
    int nt = argc > 2 ? atoi(argv[2]) : (int)sysconf(_SC_NPROCESSORS_ONLN);
    resp_len = snprintf(resp, sizeof resp,
                        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %zu\r\n"
                        "Connection: keep-alive\r\n\r\n%s",
                        sizeof BODY - 1, BODY);
    pthread_t t;
    for (int i = 1; i < nt; i++) pthread_create(&t, NULL, run, NULL);
    run(NULL);
    return 0;
}
