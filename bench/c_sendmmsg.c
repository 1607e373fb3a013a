/* Bare C sendmmsg loop: the baseline of bench/replay_bench.py.
 * Loads the packets of a .hepraw file (4-byte big-endian length + bytes per record) into memory
 * and sends them round robin to HOST:PORT over a connected UDP socket, COUNT packets in all (or
 * for SECONDS when COUNT is 0), BATCH per sendmmsg. Prints a JSON line: sent, seconds, pps, errors.
 * With LOOPFILE (same packet count), the first pass over the packets comes from FILE and every
 * later pass from LOOPFILE: bench/replay_bench.py passes hepfast's loop template there, so both
 * senders put the same bytes on the wire (hepfast also rewrites the 6 loop digits per packet;
 * this loop does not, which only favours the baseline).
 * Like `hepfast replay`: 8 MiB SO_SNDBUF(FORCE), connected socket, flags 0, full batches across
 * pass boundaries, the mmsghdrs pointed at iovecs built once.
 * usage: c_sendmmsg FILE.hepraw HOST PORT COUNT [SECONDS] [BATCH] [LOOPFILE.hepraw]
 * build: cc -O2 -o bench/c_sendmmsg bench/c_sendmmsg.c */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

/* The packets of a .hepraw file as iovecs into one buffer (never freed: the process is short). */
static struct iovec *load(const char *path, size_t *count) {
    FILE *f = fopen(path, "rb");
    if (!f) { perror(path); return NULL; }
    fseek(f, 0, SEEK_END);
    long size = ftell(f);
    fseek(f, 0, SEEK_SET);
    uint8_t *data = malloc(size + 1);
    if (fread(data, 1, size, f) != (size_t)size) { perror("read"); return NULL; }
    fclose(f);
    size_t cap = 1024, n = 0;
    struct iovec *pk = malloc(cap * sizeof *pk);
    for (long pos = 0; pos + 4 <= size;) {
        uint32_t len = (uint32_t)data[pos] << 24 | data[pos + 1] << 16 | data[pos + 2] << 8 | data[pos + 3];
        if (pos + 4 + (long)len > size) break;
        if (n == cap) pk = realloc(pk, (cap *= 2) * sizeof *pk);
        pk[n].iov_base = data + pos + 4;
        pk[n].iov_len = len;
        n++;
        pos += 4 + len;
    }
    if (!n) { fprintf(stderr, "no packets in %s\n", path); return NULL; }
    *count = n;
    return pk;
}

int main(int argc, char **argv) {
    if (argc < 5) {
        fprintf(stderr, "usage: %s FILE.hepraw HOST PORT COUNT [SECONDS] [BATCH] [LOOPFILE]\n", argv[0]);
        return 2;
    }
    long long count = atoll(argv[4]);
    double seconds = argc > 5 ? atof(argv[5]) : 0;
    int batch = argc > 6 ? atoi(argv[6]) : 64;
    if (batch < 1 || batch > 1024) batch = 64;
    size_t n = 0, n1 = 0;
    struct iovec *pk = load(argv[1], &n), *pk1 = pk;
    if (!pk) return 1;
    if (argc > 7) {
        pk1 = load(argv[7], &n1);
        if (!pk1) return 1;
        if (n1 != n) { fprintf(stderr, "%s: %zu packets, %s: %zu\n", argv[1], n, argv[7], n1); return 1; }
    }

    int fd = socket(strchr(argv[2], ':') ? AF_INET6 : AF_INET, SOCK_DGRAM, 0);
    int buf = 8 << 20;
    if (setsockopt(fd, SOL_SOCKET, SO_SNDBUFFORCE, &buf, sizeof buf) < 0)
        setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &buf, sizeof buf);
    struct sockaddr_storage ss = {0};
    socklen_t sl;
    if (strchr(argv[2], ':')) {
        struct sockaddr_in6 *a = (void *)&ss;
        a->sin6_family = AF_INET6;
        inet_pton(AF_INET6, argv[2], &a->sin6_addr);
        a->sin6_port = htons(atoi(argv[3]));
        sl = sizeof *a;
    } else {
        struct sockaddr_in *a = (void *)&ss;
        a->sin_family = AF_INET;
        inet_pton(AF_INET, argv[2], &a->sin_addr);
        a->sin_port = htons(atoi(argv[3]));
        sl = sizeof *a;
    }
    if (connect(fd, (struct sockaddr *)&ss, sl) < 0) { perror("connect"); return 1; }
    struct mmsghdr *m = calloc(batch, sizeof *m);
    long long sent = 0, errors = 0;
    size_t idx = 0;                      /* next packet; pass 0 reads pk, later passes pk1 */
    int later = 0;
    double t0 = now(), end = seconds > 0 ? t0 + seconds : 0;
    while (count ? sent < count : now() < end) {
        int b = batch;
        if (count && count - sent < b) b = (int)(count - sent);
        size_t j = idx;
        int l = later;
        for (int i = 0; i < b; i++) {
            m[i].msg_hdr.msg_iov = l ? &pk1[j] : &pk[j];
            m[i].msg_hdr.msg_iovlen = 1;
            if (++j == n) { j = 0; l = 1; }
        }
        int r = sendmmsg(fd, m, b, 0);
        if (r < 0) {
            if (errno == EINTR) continue;
            errors++;
            r = 1;                       /* skip it, counted as attempted like hepfast's skip */
        }
        sent += r;
        idx += r;
        while (idx >= n) { idx -= n; later = 1; }
    }
    double secs = now() - t0;
    printf("{\"sent\": %lld, \"seconds\": %.6f, \"pps\": %.1f, \"errors\": %lld, \"packets\": %zu}\n",
           sent, secs, sent / secs, errors, n);
    return 0;
}
