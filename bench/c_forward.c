/* Bare C UDP forwarder: the physical baseline of bench/driver.py.
 * recvmmsg a batch on LISTEN_PORT (127.0.0.1), sendmmsg the same buffers to TARGET_PORT; no
 * parsing, no copies. Prints the packets forwarded (a JSON line) on SIGTERM/SIGINT.
 * usage: c_forward LISTEN_PORT TARGET_PORT [BATCH] [HOST]
 * build: cc -O2 -o bench/c_forward bench/c_forward.c */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define SLOT 65536
static volatile sig_atomic_t stop;
static void on_signal(int s) { (void)s; stop = 1; }

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: %s LISTEN_PORT TARGET_PORT [BATCH] [HOST]\n", argv[0]);
        return 2;
    }
    int lport = atoi(argv[1]), tport = atoi(argv[2]);
    int batch = argc > 3 ? atoi(argv[3]) : 64;
    const char *host = argc > 4 ? argv[4] : "127.0.0.1";
    if (batch < 1 || batch > 1024) batch = 64;
    struct sigaction sa = {0};
    sa.sa_handler = on_signal;           /* no SA_RESTART: recvmmsg returns EINTR */
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);

    int rx = socket(AF_INET, SOCK_DGRAM, 0), tx = socket(AF_INET, SOCK_DGRAM, 0);
    int buf = 8 << 20;
    if (setsockopt(rx, SOL_SOCKET, SO_RCVBUFFORCE, &buf, sizeof buf) < 0)
        setsockopt(rx, SOL_SOCKET, SO_RCVBUF, &buf, sizeof buf);
    if (setsockopt(tx, SOL_SOCKET, SO_SNDBUFFORCE, &buf, sizeof buf) < 0)
        setsockopt(tx, SOL_SOCKET, SO_SNDBUF, &buf, sizeof buf);
    struct sockaddr_in a = {0};
    a.sin_family = AF_INET;
    inet_pton(AF_INET, host, &a.sin_addr);
    a.sin_port = htons(lport);
    if (bind(rx, (struct sockaddr *)&a, sizeof a) < 0) { perror("bind"); return 1; }
    a.sin_port = htons(tport);
    if (connect(tx, (struct sockaddr *)&a, sizeof a) < 0) { perror("connect"); return 1; }

    char *mem = malloc((size_t)batch * SLOT);
    struct iovec *iov = calloc(batch, sizeof *iov);
    struct mmsghdr *rm = calloc(batch, sizeof *rm), *sm = calloc(batch, sizeof *sm);
    for (int i = 0; i < batch; i++) {
        iov[i].iov_base = mem + (size_t)i * SLOT;
        iov[i].iov_len = SLOT;
        rm[i].msg_hdr.msg_iov = &iov[i];
        rm[i].msg_hdr.msg_iovlen = 1;
    }
    struct iovec *siov = calloc(batch, sizeof *siov);
    for (int i = 0; i < batch; i++) {
        sm[i].msg_hdr.msg_iov = &siov[i];
        sm[i].msg_hdr.msg_iovlen = 1;
    }
    fprintf(stderr, "c_forward: 127.0.0.1:%d -> %s:%d batch %d\n", lport, host, tport, batch);
    unsigned long long received = 0, forwarded = 0, errors = 0, calls = 0;
    while (!stop) {
        int n = recvmmsg(rx, rm, batch, MSG_WAITFORONE, NULL);
        if (n <= 0) {
            if (n < 0 && errno != EINTR) errors++;
            continue;
        }
        calls++;
        received += n;
        for (int i = 0; i < n; i++) {
            siov[i].iov_base = iov[i].iov_base;
            siov[i].iov_len = rm[i].msg_len;
        }
        int done = 0;
        while (done < n) {
            int r = sendmmsg(tx, sm + done, n - done, 0);
            if (r < 0) {
                if (errno == EINTR) continue;
                errors++;
                done++;                   /* skip the packet the kernel refused */
                continue;
            }
            done += r;
            forwarded += r;
        }
    }
    printf("{\"received\": %llu, \"forwarded\": %llu, \"errors\": %llu, \"recv_calls\": %llu}\n",
           received, forwarded, errors, calls);
    fflush(stdout);
    return 0;
}
