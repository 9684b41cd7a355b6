/* Stand-in for critest's nginx / httpd / hostnet-nginx images (which cannot be
 * pulled offline): a static HTTP server answering 200 on the port in $PORT (80),
 * named by argv[0], writing /var/run/<name>.pid and printing its command line as
 * httpd does at start-up ("Command line: 'httpd -D FOREGROUND'"). Named nginx, it
 * retitles itself "nginx: master process ..." in /proc/PID/cmdline, as nginx does. */
#include <arpa/inet.h>
#include <libgen.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

int main(int argc, char **argv) {
    char cmd[512] = "", pidfile[256];
    for (int i = 0; i < argc; i++) {
        strncat(cmd, i ? " " : "", sizeof cmd - strlen(cmd) - 1);
        strncat(cmd, i ? argv[i] : basename(argv[0]), sizeof cmd - strlen(cmd) - 1);
    }
    printf("Command line: '%s'\n", cmd);
    /* Named before the retitle below rewrites argv[0]. */
    snprintf(pidfile, sizeof pidfile, "/var/run/%s.pid", basename(argv[0]));
    if (strcmp(basename(argv[0]), "nginx") == 0) {
        /* argv strings are contiguous: overwrite them in place, as setproctitle does. */
        size_t room = argv[argc - 1] + strlen(argv[argc - 1]) - argv[0];
        char title[] = "nginx: master process";
        memset(argv[0], 0, room);
        memcpy(argv[0], title, strlen(title) < room ? strlen(title) : room);
    }
    fflush(stdout);
    const char *p = getenv("PORT");
    int port = p ? atoi(p) : 80;
    int s = socket(AF_INET6, SOCK_STREAM, 0), one = 1, zero = 0;
    setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    setsockopt(s, IPPROTO_IPV6, IPV6_V6ONLY, &zero, sizeof zero);
    struct sockaddr_in6 a = {.sin6_family = AF_INET6, .sin6_port = htons(port), .sin6_addr = in6addr_any};
    if (bind(s, (struct sockaddr *)&a, sizeof a) || listen(s, 64)) { perror("bind/listen"); return 1; }
    FILE *f = fopen(pidfile, "w");
    if (f) { fprintf(f, "%d\n", getpid()); fclose(f); }
    static const char body[] = "<html><body>critest web server</body></html>\n";
    char buf[4096], resp[256];
    int n = snprintf(resp, sizeof resp,
        "HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: %zu\r\nConnection: close\r\n\r\n%s",
        sizeof body - 1, body);
    for (;;) {
        int c = accept(s, NULL, NULL);
        if (c < 0) continue;
        if (read(c, buf, sizeof buf) > 0) (void)!write(c, resp, n);
        close(c);
    }
}
