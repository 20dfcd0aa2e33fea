/* The floor a TCP echo is measured against: one epoll loop, edge-triggered, each readable
 * socket read until it would block and every read sent straight back (no framing); what
 * the socket does not take waits in a buffer of the connection's and goes out when it is
 * writable again, while reading that connection waits. TCP_NODELAY, as kv_server sets.
 * benches/compare.sh compiles it with the system's cc.
 * Usage: tcp_echo PORT */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

struct connection {
    int fd;
    char *pending; /* unsent bytes, or NULL */
    size_t pending_len, pending_sent;
};

static char buffer[65536];

/* Sends what is pending; 0 when all is out, 1 when the socket is full, -1 on error. */
static int flush(struct connection *c) {
    while (c->pending_sent < c->pending_len) {
        ssize_t n = send(c->fd, c->pending + c->pending_sent, c->pending_len - c->pending_sent,
                         MSG_NOSIGNAL);
        if (n < 0)
            return errno == EAGAIN ? 1 : -1;
        c->pending_sent += (size_t)n;
    }
    free(c->pending);
    c->pending = NULL;
    c->pending_len = c->pending_sent = 0;
    return 0;
}

/* Reads until the socket would block, echoing each read; -1 when the connection is over. */
static int serve(struct connection *c) {
    for (;;) {
        if (c->pending) {
            int flushed = flush(c);
            if (flushed != 0)
                return flushed < 0 ? -1 : 0;
        }
        ssize_t n = recv(c->fd, buffer, sizeof buffer, 0);
        if (n == 0)
            return -1;
        if (n < 0)
            return errno == EAGAIN ? 0 : -1;
        ssize_t sent = send(c->fd, buffer, (size_t)n, MSG_NOSIGNAL);
        if (sent < 0 && errno != EAGAIN)
            return -1;
        if (sent < 0)
            sent = 0;
        if (sent < n) {
            c->pending_len = (size_t)(n - sent);
            c->pending = malloc(c->pending_len);
            memcpy(c->pending, buffer + sent, c->pending_len);
            return 0;
        }
        if (n < (ssize_t)sizeof buffer)
            return 0; /* short read: drained, the next byte brings an edge */
    }
}

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: tcp_echo PORT\n");
        return 2;
    }
    int listener = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    int one = 1;
    setsockopt(listener, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons(atoi(argv[1]))};
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (bind(listener, (struct sockaddr *)&addr, sizeof addr) < 0 || listen(listener, 4096) < 0) {
        perror("tcp_echo: bind");
        return 1;
    }
    int epoll = epoll_create1(0);
    struct epoll_event event = {.events = EPOLLIN, .data.ptr = NULL};
    epoll_ctl(epoll, EPOLL_CTL_ADD, listener, &event);
    struct epoll_event events[256];
    for (;;) {
        int ready = epoll_wait(epoll, events, 256, -1);
        for (int i = 0; i < ready; i++) {
            struct connection *c = events[i].data.ptr;
            if (c == NULL) {
                int fd;
                while ((fd = accept4(listener, NULL, NULL, SOCK_NONBLOCK)) >= 0) {
                    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
                    c = calloc(1, sizeof *c);
                    c->fd = fd;
                    struct epoll_event e = {.events = EPOLLIN | EPOLLOUT | EPOLLET, .data.ptr = c};
                    epoll_ctl(epoll, EPOLL_CTL_ADD, fd, &e);
                }
                continue;
            }
            if (serve(c) < 0) {
                close(c->fd);
                free(c->pending);
                free(c);
            }
        }
    }
}
