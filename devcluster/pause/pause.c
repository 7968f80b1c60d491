/*
 * The pod sandbox's process on the dev cluster's real node (containerd's sandbox_image).
 *
 * A sandbox only has to hold the pod's namespaces open, so this waits forever. As PID 1 of the
 * pod it also reaps any orphaned child (a pod that shares its PID namespace re-parents to it), and
 * since the kernel drops default-action signals sent to a namespace's PID 1, SIGTERM and SIGINT
 * get handlers of their own: without them the runtime could stop the sandbox only with SIGKILL.
 * Built with `gcc -static` so that the image needs nothing but this file.
 */
#include <errno.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

static void stop(int sig) {
    (void)sig;
    _exit(0);
}

static void reap(int sig) {
    int saved = errno; /* a handler must not change errno under the interrupted code */
    (void)sig;
    while (waitpid(-1, NULL, WNOHANG) > 0) {
    }
    errno = saved;
}

static int on(int sig, void (*handler)(int), int flags) {
    struct sigaction action = {0};
    action.sa_handler = handler;
    action.sa_flags = flags;
    sigemptyset(&action.sa_mask);
    return sigaction(sig, &action, NULL);
}

int main(void) {
    if (on(SIGTERM, stop, 0) || on(SIGINT, stop, 0) || on(SIGCHLD, reap, SA_NOCLDSTOP | SA_RESTART)) {
        return EXIT_FAILURE;
    }
    for (;;) {
        pause();
    }
}
