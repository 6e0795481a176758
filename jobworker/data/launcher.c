/*
 * jobworker-launch: how a root jobworker server starts a sandboxed job, in
 * one process, instead of the exec chain setsid, unshare --mount --ipc,
 * sh (gate, mount -a, cd), setpriv, env -i. Compiled at server start-up
 * from this file (jobworker/executors/local/launcher.py); it is the only
 * root code between the server and the user's command, so it is kept small.
 *
 * What it guarantees, in this order, before execvp() of the command:
 *  1. a session and process group of its own (setsid): the server kills
 *     the job's whole tree through it;
 *  2. with option g: nothing else happens until the server writes one line
 *     on fd 3 (the pid is in the job's cgroup, the record is stored); EOF
 *     first means "do not start": exit 125. fd 3 is closed after. With
 *     option e as well, the line is "go LENGTH" and the job's environment
 *     follows it: LENGTH bytes of NAME=VALUE entries each ended by a NUL
 *     byte. It is never on this command line, which local users may read
 *     in /proc;
 *  3. new mount and IPC namespaces (and network, option n; PID, option p),
 *     every mount made private, then exactly the mounts given, in order (a
 *     folder made with mode 0755 first where asked). With option p the
 *     launcher forks first, as unshare --fork --kill-child does: the child
 *     is PID 1 of the new namespace and goes on (its /proc mount shows that
 *     namespace); the parent ignores SIGINT and SIGTERM (from its start:
 *     the child takes the defaults back), waits for it and
 *     exits as it did (same status, or same signal), and if the parent
 *     dies the child is killed (PR_SET_PDEATHSIG);
 *  4. the start folder entered, as root;
 *  5. setgroups, setresgid, setresuid (never uid 0, gid 0 or group 0),
 *     each checked afterwards with getgroups, getresgid, getresuid, and no
 *     capability left (effective and permitted empty; no_new_privs
 *     untouched, as setpriv leaves it);
 *  6. the request's working directory entered as the job;
 *  7. execvp() of the command with exactly the environment given (its PATH
 *     searched, as env -i does).
 * Exit status: 125 the set-up failed (nothing of the job ran), 126 a folder
 * could not be entered or the command could not be run, 127 the command was
 * not found; a message on stderr says which, except for a closed gate.
 *
 * Arguments, all required, in this order (counts make the lists exact):
 *   OPTIONS START UID GID GROUPS CWD
 *   NMOUNTS {SOURCE TARGET FSTYPE FLAGS DATA}...  NENV {NAME=VALUE}...
 *   COMMAND [ARG]...
 * OPTIONS: "-", or letters: g (the gate on fd 3), e (the environment on the
 *   gate, after its line: NENV must then be 0; needs g), n (a network
 *   namespace), p (a PID namespace).
 * GROUPS: supplementary gids separated by commas, or "-" for none.
 * CWD: entered after the identity change; "" for none.
 * FLAGS: "-", or letters: s nosuid, d nodev, x noexec, m mkdir 0755 first.
 * DATA: mount(2)'s data, e.g. "mode=1777,size=1048576"; "" for none.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <linux/capability.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#define SETUP_FAILED 125
#define CANNOT_RUN 126
#define NOT_FOUND 127
#define MAX_GROUPS 65536     /* the kernel's NGROUPS_MAX */
#define MAX_ENV 4096         /* a request holds at most 1024 */
#define MAX_ID 4294967294UL  /* (uid_t)-1 means "unchanged" */
#define MAX_GATE (256 * 1024)  /* a request holds at most 32 KiB */

extern char **environ;
static gid_t groups[MAX_GROUPS], seen[MAX_GROUPS];
static char *jobEnvironment[MAX_ENV + 1];
static char gateBuffer[MAX_GATE + 1];

/* Say why on stderr (with errno's text if error is not 0), then exit. */
static void die(int status, const char *what, const char *arg, int error) {
    fprintf(stderr, "jobworker-launch: %s%s%s%s%s%s\n", what,
            arg ? " '" : "", arg ? arg : "", arg ? "'" : "",
            error ? ": " : "", error ? strerror(error) : "");
    _exit(status);
}

static void usage(const char *what, const char *arg) {
    die(SETUP_FAILED, what, arg, 0);
}

/* A decimal number from 0 to most, nothing else. */
static unsigned long number(const char *text, unsigned long most,
                            const char *what) {
    char *end;
    unsigned long value;
    if (*text < '0' || *text > '9')
        usage(what, text);
    errno = 0;
    value = strtoul(text, &end, 10);
    if (errno != 0 || *end != '\0' || value > most)
        usage(what, text);
    return value;
}

/* GROUPS into groups[], sorted as getgroups() reports them; their count. */
static size_t parseGroups(const char *text) {
    size_t count = 0;
    const char *next = text;
    char *end;
    if (strcmp(text, "-") == 0)
        return 0;
    for (;;) {
        if (*next < '0' || *next > '9' || count == MAX_GROUPS)
            usage("bad GROUPS", text);
        errno = 0;
        unsigned long gid = strtoul(next, &end, 10);
        if (errno != 0 || gid == 0 || gid > MAX_ID || (*end != '\0' && *end != ','))
            usage("bad GROUPS", text);
        groups[count++] = (gid_t)gid;
        if (*end == '\0')
            break;
        next = end + 1;
    }
    for (size_t i = 1; i < count; i++)  /* insertion sort: few groups */
        for (size_t j = i; j > 0 && groups[j - 1] > groups[j]; j--) {
            gid_t swap = groups[j];
            groups[j] = groups[j - 1];
            groups[j - 1] = swap;
        }
    return count;
}

/* FLAGS into mount(2) flags; *mkdirFirst set for m. */
static unsigned long mountFlags(const char *text, int *mkdirFirst) {
    unsigned long flags = 0;
    *mkdirFirst = 0;
    if (strcmp(text, "-") == 0)
        return 0;
    for (const char *c = text; *c; c++) {
        if (*c == 's') flags |= MS_NOSUID;
        else if (*c == 'd') flags |= MS_NODEV;
        else if (*c == 'x') flags |= MS_NOEXEC;
        else if (*c == 'm') *mkdirFirst = 1;
        else usage("bad mount FLAGS", text);
    }
    if (*text == '\0')
        usage("bad mount FLAGS", text);
    return flags;
}

/* NAME=VALUE, checked, as jobEnvironment[at] (the list ends after it). */
static void setVariable(unsigned long at, char *assignment) {
    if (at >= MAX_ENV)
        usage("too many variables", NULL);
    if (assignment[0] == '=' || strchr(assignment, '=') == NULL)
        usage("an environment entry is not NAME=VALUE", NULL);
    jobEnvironment[at] = assignment;
    jobEnvironment[at + 1] = NULL;
}

/* The gate: one line on fd 3; withEnvironment, the line is "go N" and N
 * bytes of NUL-ended entries follow (counted: no wait for EOF). fd 3 is
 * closed after. EOF first: exit 125 (the server decided not to start). */
static void waitForGo(int withEnvironment) {
    size_t have = 0, need = 0;
    char *line = NULL;
    while (line == NULL || have < need) {
        if (have == MAX_GATE)
            die(SETUP_FAILED, "the environment on the gate is too large", NULL, 0);
        ssize_t got = read(3, gateBuffer + have, MAX_GATE - have);
        if (got < 0 && errno == EINTR)
            continue;
        if (got < 0)
            die(SETUP_FAILED, "cannot read the gate (fd 3)", NULL, errno);
        if (got == 0)
            _exit(SETUP_FAILED);
        have += (size_t)got;
        if (line == NULL && (line = memchr(gateBuffer, '\n', have)) != NULL) {
            need = (size_t)(line + 1 - gateBuffer);
            if (withEnvironment) {
                *line = '\0';
                if (strncmp(gateBuffer, "go ", 3) != 0)
                    usage("not 'go LENGTH' on the gate", gateBuffer);
                need += number(gateBuffer + 3, MAX_GATE - need, "bad gate LENGTH");
            }
        }
    }
    if (withEnvironment && have > need)
        usage("more on the gate than its LENGTH", NULL);
    if (close(3) != 0)
        die(SETUP_FAILED, "cannot close the gate (fd 3)", NULL, errno);
    char *entry = line + 1, *end = gateBuffer + need;
    if (withEnvironment && entry < end && end[-1] != '\0')
        usage("the environment on the gate does not end with NUL", NULL);
    for (unsigned long count = 0; withEnvironment && entry < end; count++) {
        setVariable(count, entry);
        entry += strlen(entry) + 1;
    }
}

/* The job's identity, checked; no capability may be left. */
static void becomeJob(uid_t uid, gid_t gid, size_t count) {
    uid_t ruid, euid, suid;
    gid_t rgid, egid, sgid;
    struct __user_cap_header_struct header = {_LINUX_CAPABILITY_VERSION_3, 0};
    struct __user_cap_data_struct caps[_LINUX_CAPABILITY_U32S_3];
    if (setgroups(count, groups) != 0)
        die(SETUP_FAILED, "setgroups", NULL, errno);
    if (setresgid(gid, gid, gid) != 0)
        die(SETUP_FAILED, "setresgid", NULL, errno);
    if (setresuid(uid, uid, uid) != 0)
        die(SETUP_FAILED, "setresuid", NULL, errno);
    if (getresuid(&ruid, &euid, &suid) != 0 || ruid != uid || euid != uid ||
        suid != uid)
        die(SETUP_FAILED, "the uid did not change", NULL, 0);
    if (getresgid(&rgid, &egid, &sgid) != 0 || rgid != gid || egid != gid ||
        sgid != gid)
        die(SETUP_FAILED, "the gid did not change", NULL, 0);
    int got = getgroups(MAX_GROUPS, seen);
    if (got < 0 || (size_t)got != count ||
        (count > 0 && memcmp(seen, groups, count * sizeof *groups) != 0))
        die(SETUP_FAILED, "the groups did not change", NULL, 0);
    if (syscall(SYS_capget, &header, caps) != 0)
        die(SETUP_FAILED, "capget", NULL, errno);
    for (int i = 0; i < _LINUX_CAPABILITY_U32S_3; i++)
        if (caps[i].effective != 0 || caps[i].permitted != 0)
            die(SETUP_FAILED, "capabilities left after setresuid", NULL, 0);
}

/* After unshare(CLONE_NEWPID): fork. Returns in the child, PID 1 of the
 * new namespace, the read end of a pipe the parent holds (see
 * dieWithParent); the parent waits for it and exits as it did, as
 * unshare --fork --kill-child does. */
static int becomeInit(void) {
    int alive[2];
    if (pipe2(alive, O_CLOEXEC) != 0)
        die(SETUP_FAILED, "pipe", NULL, errno);
    pid_t child = fork();
    if (child < 0)
        die(SETUP_FAILED, "fork", NULL, errno);
    if (child == 0) {
        close(alive[1]);
        signal(SIGINT, SIG_DFL);  /* ignored since main (see there) */
        signal(SIGTERM, SIG_DFL);
        return alive[0];
    }
    close(alive[0]);
    int status;
    while (waitpid(child, &status, 0) < 0)
        if (errno != EINTR)
            die(SETUP_FAILED, "waitpid", NULL, errno);
    if (WIFEXITED(status))
        _exit(WEXITSTATUS(status));
    if (WIFSIGNALED(status)) {
        int signum = WTERMSIG(status);
        struct rlimit none = {0, 0};
        sigset_t only;
        setrlimit(RLIMIT_CORE, &none); /* the job's core is the job's */
        signal(signum, SIG_DFL);
        sigemptyset(&only);
        sigaddset(&only, signum);
        sigprocmask(SIG_UNBLOCK, &only, NULL);
        kill(getpid(), signum);
    }
    _exit(SETUP_FAILED);
}

/* As the job: be killed when the parent dies. Set after the identity
 * change, which clears it; a parent already gone has closed its end of
 * the pipe, and then nothing of the job may run. */
static void dieWithParent(int alive) {
    struct pollfd parent = {alive, 0, 0};
    if (prctl(PR_SET_PDEATHSIG, SIGKILL) != 0)
        die(SETUP_FAILED, "prctl(PR_SET_PDEATHSIG)", NULL, errno);
    if (poll(&parent, 1, 0) != 0)
        _exit(SETUP_FAILED);
    close(alive);
}

int main(int argc, char **argv) {
    int gate = 0, gateEnvironment = 0, pidNamespace = 0, alive = -1, mkdirFirst;
    int at = 7;
    unsigned long namespaces = CLONE_NEWNS | CLONE_NEWIPC;
    if (argc < 10)
        usage("too few arguments (see the comment in launcher.c)", NULL);
    const char *options = argv[1], *start = argv[2], *cwd = argv[6];
    for (const char *c = options; *c && strcmp(options, "-") != 0; c++) {
        if (*c == 'g') gate = 1;
        else if (*c == 'e') gateEnvironment = 1;
        else if (*c == 'n') namespaces |= CLONE_NEWNET;
        else if (*c == 'p') pidNamespace = 1;
        else usage("bad OPTIONS", options);
    }
    /* With a PID namespace, a stop's SIGTERM (and SIGINT) is for the job,
     * PID 1, which gets it only if it handles it; this process waits and
     * ends as the job does. Ignored from here on, so a stop that comes
     * while the namespace is being made is not taken for the job's end;
     * SIGKILL of the group ends everything. */
    if (pidNamespace) {
        signal(SIGINT, SIG_IGN);
        signal(SIGTERM, SIG_IGN);
    }
    if (*options == '\0' || *start != '/' || (gateEnvironment && !gate))
        usage("bad OPTIONS or START", NULL);
    uid_t uid = (uid_t)number(argv[3], MAX_ID, "bad UID");
    gid_t gid = (gid_t)number(argv[4], MAX_ID, "bad GID");
    if (uid == 0 || gid == 0)
        usage("refusing to run a job as root", NULL);
    size_t count = parseGroups(argv[5]);
    unsigned long mounts = number(argv[at], (unsigned long)(argc - at - 1) / 5,
                                  "bad NMOUNTS");
    int firstMount = at + 1;
    at = firstMount + 5 * (int)mounts;
    for (int m = firstMount; m < at; m += 5)
        mountFlags(argv[m + 3], &mkdirFirst);  /* checked before any change */
    if (at >= argc)
        usage("no NENV", NULL);
    unsigned long variables = number(argv[at], gateEnvironment ? 0 : MAX_ENV,
                                     "bad NENV");
    if (variables >= (unsigned long)(argc - at - 1))  /* and a COMMAND */
        usage("no COMMAND after NENV variables", argv[at]);
    for (unsigned long v = 0; v < variables; v++)
        setVariable(v, argv[at + 1 + (int)v]);
    char **command = argv + at + 1 + variables;

    if (setsid() < 0)
        die(SETUP_FAILED, "setsid", NULL, errno);
    if (gate)
        waitForGo(gateEnvironment);
    if (pidNamespace)
        namespaces |= CLONE_NEWPID;
    if (unshare((int)namespaces) != 0)
        die(SETUP_FAILED, "unshare", NULL, errno);
    if (pidNamespace)
        alive = becomeInit();
    if (mount("none", "/", NULL, MS_REC | MS_PRIVATE, NULL) != 0)
        die(SETUP_FAILED, "cannot make the mounts private", NULL, errno);
    for (int m = firstMount; m < firstMount + 5 * (int)mounts; m += 5) {
        unsigned long flags = mountFlags(argv[m + 3], &mkdirFirst);
        if (mkdirFirst && mkdir(argv[m + 1], 0755) != 0 && errno != EEXIST)
            die(SETUP_FAILED, "cannot make the folder", argv[m + 1], errno);
        if (mount(argv[m], argv[m + 1], argv[m + 2], flags,
                  *argv[m + 4] ? argv[m + 4] : NULL) != 0)
            die(SETUP_FAILED, "cannot mount on", argv[m + 1], errno);
    }
    if (chdir(start) != 0)
        die(CANNOT_RUN, "cannot enter the start folder", start, errno);
    becomeJob(uid, gid, count);
    if (alive >= 0)
        dieWithParent(alive);
    if (*cwd && chdir(cwd) != 0)
        die(CANNOT_RUN, "cannot enter the working directory", cwd, errno);
    environ = jobEnvironment;
    execvp(command[0], command);
    die(errno == ENOENT ? NOT_FOUND : CANNOT_RUN, "cannot run", command[0],
        errno);
    return CANNOT_RUN;
}
