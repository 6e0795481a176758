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
 *     namespace); the parent ignores a stop's signals (from its start:
 *     the child takes the defaults back), waits for it and
 *     exits as it did (same status, or same signal), and if the parent
 *     dies the child is killed (PR_SET_PDEATHSIG);
 *  4. the start folder entered, as root;
 *  4a. a new session keyring of its own (KEYCTL_JOIN_SESSION_KEYRING): it
 *     possesses nothing of the server's (a systemd service has a session
 *     keyring of its own); with option k, a seccomp filter: add_key,
 *     request_key, keyctl, io_setup, clone3 fail with ENOSYS, and a new
 *     user namespace (clone, unshare) with EPERM (a uid's user keyrings
 *     outlive its last process; AIO is one machine-wide budget; in a user
 *     namespace of its own a job is root, and mounts past its caps).
 *     Installed as root, so no_new_privs stays off;
 *  4b. a Landlock domain scoping abstract unix sockets and signals (ABI 6+,
 *     else shared): no socket or process outside it (another job's, even of
 *     the same uid) can be reached or signalled from the job;
 *  4c. its pipes (fds 0-2, made as root) its own: /dev/stderr opens again;
 *  5. setgroups, setresgid, setresuid (never uid 0, gid 0 or group 0),
 *     each checked afterwards with getgroups, getresgid, getresuid, and no
 *     capability left (effective and permitted empty); with option k,
 *     no_new_privs (a setuid file a dynamic uid's earlier holder left gives
 *     nothing), else untouched, as setpriv leaves it;
 *  6. the request's working directory entered as the job;
 *  6a. with option p, the process so far, PID 1 of the namespace, forks:
 *     the child goes on, PID 2, and the parent stays as the namespace's
 *     init (see forkJob): a stop's SIGTERM reaches the job, orphans are
 *     reaped, and the job's wait status goes back to the first process;
 *  7. execvp() of the command with exactly the environment given (its PATH
 *     searched, as env -i does).
 * JOBWORKER_NOFILE=N in its own environment lowers the soft RLIMIT_NOFILE;
 * JOBWORKER_OOM_SCORE_ADJ=N sets the job's oom_score_adj; JOBWORKER_UMASK=
 * OCTAL its umask (right before the exec).
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
 *   namespace), p (a PID namespace), k (a dynamic uid: 4a and 5).
 * GROUPS: supplementary gids separated by commas, or "-" for none.
 * CWD: entered after the identity change; "" for none.
 * FLAGS: "-", or letters: s nosuid, d nodev, x noexec, m mkdir 0755 first.
 * DATA: mount(2)'s data, e.g. "mode=1777,size=1048576"; "" for none.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <limits.h>
#include <linux/audit.h>
#include <linux/capability.h>
#include <linux/filter.h>
#include <linux/keyctl.h>
#include <linux/seccomp.h>
#include <stddef.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/epoll.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#ifndef P_PIDFD
#define P_PIDFD 3
#endif
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

/* A session keyring of the job's own (4a): none of the server's. A kernel
 * without keys (ENOSYS), or a sandbox around the server that refuses the
 * call (EPERM: a container's seccomp profile), leaves none to share. */
static void ownSessionKeyring(void) {
    if (syscall(SYS_keyctl, KEYCTL_JOIN_SESSION_KEYRING, NULL) < 0 &&
        errno != ENOSYS && errno != EPERM)
        die(SETUP_FAILED, "cannot make a session keyring", NULL, errno);
}

/* 4b, as root. Landlock's calls: 444 create_ruleset (flag 1: the ABI), 446
 * restrict_self; its ruleset's third field (ABI 6), scoped: bit 0 abstract
 * unix sockets, bit 1 signals. */
static void ownAbstractSockets(void) {
    uint64_t ruleset[3] = {0, 0, 3};
    if (syscall(444, NULL, (size_t)0, 1U) < 6)
        return;  /* no Landlock, not enabled, or too old: shared, as before */
    long fd = syscall(444, ruleset, sizeof ruleset, 0U);
    if (fd < 0 || syscall(446, (int)fd, 0U) != 0)
        die(SETUP_FAILED, "cannot enter a Landlock domain", NULL, errno);
    close((int)fd);
}

/* 4c: only pipes ("pipe:[INODE]"), never the job's /dev/null. */
static void ownPipes(uid_t uid, gid_t gid) {
    char link[20], target[8];
    for (int fd = 0; fd <= 2; fd++) {
        snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
        if (readlink(link, target, sizeof target) >= 6 &&
            memcmp(target, "pipe:[", 6) == 0 && fchown(fd, uid, gid) != 0)
            die(SETUP_FAILED, "cannot give the job its pipe", NULL, errno);
    }
}

/* Those calls of each system call ABI this machine runs, by seccomp's arch
 * (x86_64 also runs x32, bit 30 of the number, and i386): add_key,
 * request_key, keyctl, io_setup, clone3, splice, tee, vmsplice,
 * userfaultfd, sendfile (and sendfile64) and io_uring's three (ENOSYS: a
 * splice or sendfile between the job's pipe and an idle socket, io_uring's
 * own splice, or a fault in a page moved into a pipe, holds the pipe's
 * lock, and the server's read, write or close of that pipe waited on it:
 * attacker round 36, the verifier of its fix), then clone and unshare
 * (EPERM with CLONE_NEWUSER or CLONE_PARENT in their first argument's low
 * word: a child made with CLONE_PARENT is the spawner's, which it did not
 * fork), then ioctl
 * (ENOTTY for PIDFD_GET_INFO, below). */
#define CALLS 17
#define NO_SUCH_CALLS 14
#define IOCTL_CALL 16
/* PIDFD_GET_INFO is _IOWR(0xFF, 11, struct pidfd_info), of any size (the
 * struct grows; the kernel matches type and number, but its first
 * versions (6.13) the number alone: there the filter falls short). Asked of any
 * pid's pidfd, which any process may open, it tells the process's uids,
 * gids and parent (kernel 6.13 and later): every process of the host,
 * which the job's /proc (hidepid=invisible) hides. Refused as kernels
 * before it refuse it. */
#define PIDFD_INFO_TYPE_NR 0xFF0BU
#define X32 0x40000000
static const struct {
    uint32_t arch, calls[CALLS];
} keyCalls[] = {
#if defined(__x86_64__)
    /* (A 64-bit ABI has one sendfile: named twice, for sendfile64's place.) */
    {AUDIT_ARCH_X86_64, {248, 249, 250, 206, 435, 275, 276, 278, 323, 40, 40,
                         425, 426, 427, 56, 272, 16}},
    {AUDIT_ARCH_X86_64, {X32 | 248, X32 | 249, X32 | 250, X32 | 543, X32 | 435,
                         X32 | 275, X32 | 276, X32 | 532, X32 | 323, X32 | 40,
                         X32 | 40, X32 | 425, X32 | 426, X32 | 427, X32 | 56,
                         X32 | 272, X32 | 514}},
    {AUDIT_ARCH_I386, {286, 287, 288, 245, 435, 313, 315, 316, 374, 187, 239,
                       425, 426, 427, 120, 310, 54}},
#elif defined(__aarch64__)
    {AUDIT_ARCH_AARCH64, {217, 218, 219, 0, 435, 76, 77, 75, 282, 71, 71,
                          425, 426, 427, 220, 97, 29}},
    {AUDIT_ARCH_ARM, {309, 310, 311, 243, 435, 340, 342, 343, 388, 187, 239,
                      425, 426, 427, 120, 337, 54}},
#elif defined(__i386__)
    {AUDIT_ARCH_I386, {286, 287, 288, 245, 435, 313, 315, 316, 374, 187, 239,
                       425, 426, 427, 120, 310, 54}},
#else
#define NO_KEY_FILTER 1
    {0, {0}},
#endif
};
#define ABIS (sizeof keyCalls / sizeof keyCalls[0])

/* Option k (4a): from here on, in every ABI, the key calls, io_setup and the
 * pipe-locking calls fail with ENOSYS, and so does clone3 (a filter cannot read its flags; the C
 * library then uses clone); a new user namespace is EPERM, and so is a
 * child of the caller's parent (CLONE_PARENT); an ioctl
 * PIDFD_GET_INFO is ENOTTY. Per ABI: if the
 * arch is its, load the number and compare it with each, then load the arch
 * again for the next ABI. (Little-endian: args[0]'s low word comes first.) */
static void noKeyrings(void) {
#ifdef NO_KEY_FILTER
    die(SETUP_FAILED, "no keyring filter for this architecture", NULL, 0);
#else
    struct sock_filter program[12 + (CALLS + 3) * ABIS];
    unsigned short at = 0, flags = (unsigned short)(1 + (CALLS + 3) * ABIS + 1);
    program[at++] = (struct sock_filter)BPF_STMT(
        BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, arch));
    for (size_t abi = 0; abi < ABIS; abi++) {
        program[at++] = (struct sock_filter)BPF_JUMP(
            BPF_JMP | BPF_JEQ | BPF_K, keyCalls[abi].arch, 0, CALLS + 2);
        program[at++] = (struct sock_filter)BPF_STMT(
            BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr));
        for (int call = 0; call < CALLS; call++, at++)
            program[at] = (struct sock_filter)BPF_JUMP(
                BPF_JMP | BPF_JEQ | BPF_K, keyCalls[abi].calls[call],
                (unsigned char)(flags - at - 1 + (call < NO_SUCH_CALLS ? 4
                                                  : call == IOCTL_CALL ? 5 : 0)),
                0);
        program[at++] = (struct sock_filter)BPF_STMT(
            BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, arch));
    }
    program[at++] = (struct sock_filter)BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW);
    program[at++] = (struct sock_filter)BPF_STMT(  /* flags: clone, unshare */
        BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, args[0]));
    program[at++] = (struct sock_filter)BPF_JUMP(
        BPF_JMP | BPF_JSET | BPF_K, CLONE_NEWUSER | CLONE_PARENT, 1, 0);
    program[at++] = (struct sock_filter)BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW);
    program[at++] = (struct sock_filter)BPF_STMT(
        BPF_RET | BPF_K, SECCOMP_RET_ERRNO | (EPERM & SECCOMP_RET_DATA));
    program[at++] = (struct sock_filter)BPF_STMT(
        BPF_RET | BPF_K, SECCOMP_RET_ERRNO | (ENOSYS & SECCOMP_RET_DATA));
    program[at++] = (struct sock_filter)BPF_STMT(  /* ioctl: its request */
        BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, args[1]));
    program[at++] = (struct sock_filter)BPF_STMT(BPF_ALU | BPF_AND | BPF_K, 0xFFFFU);
    program[at++] = (struct sock_filter)BPF_JUMP(
        BPF_JMP | BPF_JEQ | BPF_K, PIDFD_INFO_TYPE_NR, 1, 0);
    program[at++] = (struct sock_filter)BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW);
    program[at++] = (struct sock_filter)BPF_STMT(
        BPF_RET | BPF_K, SECCOMP_RET_ERRNO | (ENOTTY & SECCOMP_RET_DATA));
    struct sock_fprog filter = {at, program};
    if (prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &filter) != 0)
        die(SETUP_FAILED, "cannot filter the keyring calls", NULL, errno);
#endif
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
 * dieWithParent), and in *report the write end of one it reads the job's
 * wait status from (see forkJob); the parent waits for the child and
 * exits as the job did, as unshare --fork --kill-child does. */
static const int stopSignals[] = {SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2, SIGALRM};
#define STOPS (sizeof stopSignals / sizeof *stopSignals)

static void blockStops(void) {
    sigset_t stops;
    sigemptyset(&stops);
    for (size_t i = 0; i < STOPS; i++)
        sigaddset(&stops, stopSignals[i]);
    if (sigprocmask(SIG_BLOCK, &stops, NULL) != 0)
        die(SETUP_FAILED, "sigprocmask", NULL, errno);
}

/* The stop signals pending here (blocked), sent to pid: a stop that came
 * before that child was forked is its. */
static void passStops(const sigset_t *pending, pid_t pid) {
    for (size_t i = 0; i < STOPS; i++)
        if (sigismember(pending, stopSignals[i]))
            kill(pid, stopSignals[i]);
}

/* fork(), the stop signals blocked: the child returns only once the parent
 * has passed it the stops pending on the parent, looked at after the fork
 * (a stop that came between a look before it and the fork stayed pending
 * on the parent for good: a fork's child starts with none pending; one
 * that reaches the group after the fork is the child's too, and the two
 * merge, a blocked signal being pending once). */
static pid_t forkPassingStops(void) {
    int passed[2];
    if (pipe2(passed, O_CLOEXEC) != 0)
        die(SETUP_FAILED, "pipe", NULL, errno);
    pid_t child = fork();
    if (child < 0)
        die(SETUP_FAILED, "fork", NULL, errno);
    if (child == 0) {
        char nothing;
        close(passed[1]);
        while (read(passed[0], &nothing, 1) < 0 && errno == EINTR)
            ;
        close(passed[0]);
        return 0;
    }
    close(passed[0]);
    sigset_t pending;
    if (sigpending(&pending) == 0)
        passStops(&pending, child);
    close(passed[1]);
    return child;
}

static int becomeInit(int *report) {
    int alive[2], job[2];
    if (pipe2(alive, O_CLOEXEC) != 0 || pipe2(job, O_CLOEXEC) != 0)
        die(SETUP_FAILED, "pipe", NULL, errno);
    /* (The init's look at its own stops, at forkJob, came before this
     * process had passed it a stop that came during the set-up, now and
     * then: the command ran, the stop lost; CI at 88ea0f4.) */
    pid_t child = forkPassingStops();
    if (child == 0) {
        close(alive[1]);
        close(job[0]);
        *report = job[1];  /* (the stop signals still blocked: forkJob) */
        return alive[0];
    }
    close(alive[0]);
    close(job[1]);
    close(0); /* the job's stdin is its own: closed there, no writer waits (review 37) */
    int status, jobStatus;
    while (waitpid(child, &status, 0) < 0)
        if (errno != EINTR)
            die(SETUP_FAILED, "waitpid", NULL, errno);
    /* The init's own status, unless it reported the job's: a PID 1 cannot
     * die of a signal it sends itself, so it writes how the job ended. */
    ssize_t got;
    while ((got = read(job[0], &jobStatus, sizeof jobStatus)) < 0 && errno == EINTR)
        ;
    if (got == (ssize_t)sizeof jobStatus)
        status = jobStatus;
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

/* As the job, PID 1 of its namespace: fork the command (PID 2) and stay
 * as the namespace's init, as tini does. A PID 1 gets no signal it does
 * not handle: a stop's SIGTERM reached such a job only as the SIGKILL
 * after the grace. The init runs as the job (nothing of root is left),
 * with every signal blocked, reaps orphans, and once the command ends
 * writes its wait status to REPORT and exits (the namespace's rest is
 * killed). Returns in the command's process. */
static void forkJob(int report) {
    sigset_t all, before;
    sigfillset(&all);
    sigprocmask(SIG_BLOCK, &all, &before);
    for (size_t i = 0; i < STOPS; i++)
        sigdelset(&before, stopSignals[i]);  /* blocked since launch() */
    /* A stop while the namespace was made is the command's (a look before
     * the fork lost one that came just before it: session review 34). */
    pid_t job = forkPassingStops();
    if (job == 0) {
        close(report);
        sigprocmask(SIG_SETMASK, &before, NULL);
        return;
    }
    /* The job's pipes are the job's: its stdin's writer sees EPIPE when
     * the job closes it, and its output ends with the job's processes. */
    for (int fd = 0; fd <= 2; fd++)
        close(fd);
    for (;;) {
        int status;
        pid_t ended = waitpid(-1, &status, __WALL);
        if (ended == job) {
            ssize_t sent = write(report, &status, sizeof status);
            (void)sent;  /* else the first process takes the init's status */
            _exit(WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status));
        }
        if (ended < 0 && errno != EINTR)
            _exit(SETUP_FAILED);
    }
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

/* The job's umask (JOBWORKER_UMASK, octal), set right before the exec;
 * -1: as inherited. */
static long jobUmask = -1;

/* From this program's environment (never the job's): the job's soft
 * RLIMIT_NOFILE (the server's before it raised its own), oom_score_adj,
 * umask. */
static void inherited(void) {
    const char *text = getenv("JOBWORKER_UMASK");
    if (text != NULL) {
        char *end;
        errno = 0;
        jobUmask = strtol(text, &end, 8);
        if (errno != 0 || end == text || *end != '\0' || jobUmask < 0 ||
            jobUmask > 0777)
            usage("bad JOBWORKER_UMASK", text);
    }
    text = getenv("JOBWORKER_NOFILE");
    struct rlimit limit;
    if (text != NULL && getrlimit(RLIMIT_NOFILE, &limit) == 0) {
        limit.rlim_cur = number(text, limit.rlim_cur, "bad JOBWORKER_NOFILE");
        if (setrlimit(RLIMIT_NOFILE, &limit) != 0)
            die(SETUP_FAILED, "setrlimit(RLIMIT_NOFILE)", NULL, errno);
    }
    if ((text = getenv("JOBWORKER_OOM_SCORE_ADJ")) == NULL)
        return;
    int fd = open("/proc/self/oom_score_adj", O_WRONLY | O_CLOEXEC);
    if (fd < 0 || write(fd, text, strlen(text)) < 0)
        die(SETUP_FAILED, "/proc/self/oom_score_adj", NULL, errno);
    close(fd);
}

/* One job, from OPTIONS on (argv[0] is this program): never returns. */
static int launch(int argc, char **argv) {
    int gate = 0, gateEnvironment = 0, pidNamespace = 0, alive = -1, report = -1;
    int mkdirFirst;
    int keys = 1;
    int at = 7;
    unsigned long namespaces = CLONE_NEWNS | CLONE_NEWIPC;
    if (argc < 10)
        usage("too few arguments (see the comment in launcher.c)", NULL);
    inherited();
    const char *options = argv[1], *start = argv[2], *cwd = argv[6];
    for (const char *c = options; *c && strcmp(options, "-") != 0; c++) {
        if (*c == 'g') gate = 1;
        else if (*c == 'e') gateEnvironment = 1;
        else if (*c == 'n') namespaces |= CLONE_NEWNET;
        else if (*c == 'p') pidNamespace = 1;
        else if (*c == 'k') keys = 0;
        else usage("bad OPTIONS", options);
    }
    /* With a PID namespace, a stop's signal is for the job, PID 1, which
     * gets it only if it handles it; this process waits and ends as the job
     * does. Blocked from here on, and passed on to the command once it is
     * forked (becomeInit, forkJob): ignored, a stop while the namespace was
     * being made was lost, and the job ran its grace out (code review 34).
     * SIGKILL of the group ends everything. */
    if (pidNamespace)
        blockStops();
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
        alive = becomeInit(&report);
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
    ownSessionKeyring();
    ownAbstractSockets();
    ownPipes(uid, gid);
    if (!keys)
        noKeyrings();
    becomeJob(uid, gid, count);
    if (!keys && prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0)
        die(SETUP_FAILED, "prctl(PR_SET_NO_NEW_PRIVS)", NULL, errno);
    if (alive >= 0)
        dieWithParent(alive);
    if (*cwd && chdir(cwd) != 0)
        die(CANNOT_RUN, "cannot enter the working directory", cwd, errno);
    if (report >= 0)
        forkJob(report);
    if (jobUmask >= 0)
        umask((mode_t)jobUmask);
    environ = jobEnvironment;
    execvp(command[0], command);
    int e = errno; /* ENOENT for a file that is there: its #! or loader */
    die(e == ENOENT ? NOT_FOUND : CANNOT_RUN,
        e == ENOENT && strchr(command[0], '/') && access(command[0], F_OK) == 0
            ? "its #! interpreter or loader is missing: cannot run"
            : "cannot run",
        command[0], e);
    return CANNOT_RUN;
}

/* -- the spawner ---------------------------------------------------------
 *
 * "jobworker-launch --spawner": a long-lived process the server starts
 * once. The server's process is large and Python; this one is small, so it
 * forks fast, on another CPU, and the server's thread neither waits for a
 * fork or an exec nor scans its descriptors for each job.
 *
 * The spawner keeps one child forked ahead of the next job, the standby,
 * waiting on a socket of its own. fd 3 is a SOCK_SEQPACKET socket to the
 * server:
 *   from the spawner, 'A' (announce): the standby's pid (int32) and start
 *       time (uint64, clock ticks since boot, as /proc's starttime, or the
 *       tick before it), with a pidfd of it (SCM_RIGHTS). One at a time:
 *       the next once the server has used this one (or it died).
 *   from the server, 'S' (start): the standby's pid (int32), then the
 *       launcher's arguments as above (from OPTIONS on), each ended by a
 *       NUL byte, with four descriptors: the job's fds 0, 1, 2 and the
 *       gate, 3; then up to MAX_JOIN more, the cgroup.procs files of the
 *       job's cgroup (one per v1 hierarchy), opened for writing. The
 *       standby takes the four as its 0-3, gives every signal its default
 *       action and unblocks it, joins the cgroup (writes "0" to each file;
 *       exit 125 if it cannot), closes every other descriptor, and goes on
 *       exactly as a launcher exec'd with those arguments (launch()): the
 *       gate comes after the join. No answer: the server knew
 *       the pid before it asked. A start for a standby that has died (its
 *       end is reported) only has its descriptors closed.
 *   from the server, 's': as 'S', for a child reaped as soon as it ends
 *       (a job without a cgroup, whose group the server asks about: a
 *       zombie leader would keep it alive). Its end record says so.
 *   from the server, 'R' (reap): pids (int32s) whose ends the server has
 *       taken in: reaped now.
 *   from the spawner, 'F' (failed): instead of an 'A' when no standby can
 *       be forked, the errno (int32; then 8 bytes of zeros). The server
 *       fails that spawn, and asks again ('N', next) at its next one.
 * fd 4 is a pipe: each child's end, as two int32s, pid and wait status,
 * taken with WNOWAIT; or, for the child of an 's', with REAPED added: it
 * was reaped at once, and takes no 'R'. An 'S' child stays a zombie until
 * its 'R': its pid (and its process group id) cannot be reused before the
 * server knows it ended, as when the server was its parent. An 's' child's
 * pid can be, as when Twisted reaps: only after the pid numbers have gone
 * round, the server signals it through its pidfd, and its group by number
 * only while the group has members. A standby may then be announced with
 * the pid of a child whose end the server has not read yet: records are
 * written in the order children end, so the server takes the first record
 * for that pid as the earlier child's. EOF on fd 3: the server is
 * gone or done; the spawner exits (jobs go on, as when the server dies,
 * and init reaps them; the standby sees EOF and exits). */

#define MAX_REQUEST (128 * 1024)  /* under a socket's default buffer */
#define MAX_ARGS (MAX_REQUEST / 2)
#define REQUEST_FDS 4     /* the job's fds 0-3 */
#define MAX_JOIN 8        /* cgroup.procs files after them (v1: 5 at most) */
#define MAX_FDS (REQUEST_FDS + MAX_JOIN)
#define SOCKET_KEY (~0ULL)
#define PIPE_KEY (~1ULL)
#define SIGNAL_KEY (~2ULL)
#define REAPED 0x10000    /* in an end record's status: no 'R' wanted */

static char request[MAX_REQUEST];
static char *requestArgv[MAX_ARGS + 2];
static int32_t *ended;            /* (pid, status) pairs not yet written */
static size_t endedCount, endedRoom;
static int watched;               /* the epoll of fd 3, fd 4 and pidfds */
static pid_t standbyPid = -1;     /* the child forked ahead of a job */
static int *waiting;              /* pidfds readable, not yet waitable */
static size_t waitingCount, waitingRoom;
static int standbyPidfd = -1, standbySocket = -1;
static unsigned char *reapNow;    /* by pidfd: a child of an 's' */
static size_t reapNowRoom;
static sigset_t deaf;             /* what the spawner keeps blocked */
/* The pids of the children the spawner forked and has not reaped, a bit
 * each (pids are below 2^22, the kernel's PID_MAX_LIMIT). Any other child
 * (a job's clone(CLONE_PARENT): the spawner is the job's parent) is reaped
 * as soon as it ends: they stayed zombies until the server stopped, past
 * the job's end and its pids limit (attacker round 34). */
#define PID_BITS (1U << 22)
static unsigned char *forked;

/* Room for the most descriptors one message carries (SCM_RIGHTS), aligned
 * for a cmsghdr. */
union fdControl {
    struct cmsghdr header;
    char space[CMSG_SPACE(MAX_FDS * sizeof(int))];
};

/* A message of one buffer (iov) whose descriptors go in control, room
 * bytes of it. */
static struct msghdr withFds(struct iovec *iov, union fdControl *control,
                             size_t room) {
    struct msghdr msg = {0};
    msg.msg_iov = iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control->space;
    msg.msg_controllen = room;
    return msg;
}

/* sendmsg of len bytes with count (at most MAX_FDS) descriptors
 * (SCM_RIGHTS), again after EINTR; sendmsg's result. */
static ssize_t sendWithFds(int sock, void *data, size_t len, const int *fds,
                           int count) {
    union fdControl control;
    struct iovec iov = {data, len};
    ssize_t sent;
    memset(&control, 0, sizeof control);
    struct msghdr msg =
        withFds(&iov, &control, CMSG_SPACE((size_t)count * sizeof(int)));
    struct cmsghdr *c = CMSG_FIRSTHDR(&msg);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN((size_t)count * sizeof(int));
    memcpy(CMSG_DATA(c), fds, (size_t)count * sizeof(int));
    while ((sent = sendmsg(sock, &msg, MSG_NOSIGNAL)) < 0 && errno == EINTR)
        ;
    return sent;
}

/* In the forked child: the request's first four descriptors as 0-3, every
 * signal reset, the job's cgroups joined through the rest (count in all),
 * then nothing else open. */
static void takeDescriptors(const int *fds, int count) {
    int moved[MAX_FDS];
    sigset_t none;
    for (int i = 0; i < count; i++) {
        /* Out of the way of 0-3 first: a received fd may be one of them. */
        moved[i] = fcntl(fds[i], F_DUPFD, 10);
        if (moved[i] < 0)
            _exit(SETUP_FAILED);
    }
    for (int i = 0; i < REQUEST_FDS; i++)
        if (dup2(moved[i], i) != i)
            _exit(SETUP_FAILED);
    /* Every signal with its default action, none blocked, whatever the
     * spawner was started with. The kernel's call: glibc's refuses its own
     * two (32 and 33), which an ignoring parent passes on as well. */
    struct {
        void (*handler)(int);
        unsigned long flags;
        void (*restorer)(void);
        uint64_t mask;
    } byDefault = {SIG_DFL, 0, NULL, 0};
    for (int signum = 1; signum <= 64; signum++)
        if (signum != SIGKILL && signum != SIGSTOP)
            syscall(SYS_rt_sigaction, signum, &byDefault, NULL, sizeof byDefault.mask);
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);
    /* Into the job's cgroup ("0": the writer) before the gate, so nothing
     * of the user's ever runs outside it; here rather than in the server,
     * whose thread would wait out the kernel's migration (an RCU grace
     * period on cgroup v1). A failure is said on the job's stderr. */
    for (int i = REQUEST_FDS; i < count; i++) {
        ssize_t wrote = write(moved[i], "0", 1);
        if (wrote != 1)
            die(SETUP_FAILED, "cannot join the job's cgroup", NULL,
                wrote < 0 ? errno : EIO);
    }
    if (syscall(SYS_close_range, REQUEST_FDS, ~0U, 0) != 0)
        _exit(SETUP_FAILED);
}

/* One message into request[], with at most MAX_FDS descriptors (any
 * more are closed) into fds, *count of them; *truncated if the message or
 * its descriptors did not fit. The message's length, or -1 (errno). */
static ssize_t receiveWithFds(int sock, int flags, int *fds, int *count,
                              int *truncated) {
    union fdControl control;
    struct iovec iov = {request, MAX_REQUEST};
    struct msghdr msg = withFds(&iov, &control, sizeof control.space);
    ssize_t got;
    *count = 0;
    while ((got = recvmsg(sock, &msg, flags | MSG_CMSG_CLOEXEC)) < 0 && errno == EINTR)
        ;
    if (got < 0)
        return got;
    for (struct cmsghdr *c = CMSG_FIRSTHDR(&msg); c; c = CMSG_NXTHDR(&msg, c)) {
        if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS)
            continue;
        int n = (int)((c->cmsg_len - CMSG_LEN(0)) / sizeof(int));
        for (int i = 0; i < n; i++) {
            int fd;
            memcpy(&fd, CMSG_DATA(c) + (size_t)i * sizeof(int), sizeof fd);
            if (*count < MAX_FDS)
                fds[(*count)++] = fd;
            else
                close(fd);
        }
    }
    *truncated = (msg.msg_flags & (MSG_TRUNC | MSG_CTRUNC)) != 0;
    return got;
}

/* The standby: nothing of the spawner's but its own socket (as fd 3);
 * then one request, and the job. EOF first: the spawner is gone. */
static void standbyMain(int sock) {
    int fds[MAX_FDS], count, truncated, argc = 1;
    /* A stop signal sent since the fork (blocked) ends it, as the job. */
    sigprocmask(SIG_UNBLOCK, &deaf, NULL);
    if (dup2(sock, 3) != 3 || syscall(SYS_close_range, 4, ~0U, 0) != 0)
        _exit(SETUP_FAILED);
    ssize_t got = receiveWithFds(3, 0, fds, &count, &truncated);
    if (got <= 0 || count < REQUEST_FDS || truncated)
        _exit(SETUP_FAILED);
    requestArgv[0] = "jobworker-launch";
    for (char *at = request; at < request + got; at += strlen(at) + 1) {
        if (argc > MAX_ARGS)
            _exit(SETUP_FAILED);
        requestArgv[argc++] = at;
    }
    requestArgv[argc] = NULL;
    takeDescriptors(fds, count);  /* the gate takes fd 3 */
    _exit(launch(argc, requestArgv));
}

/* CLOCK_BOOTTIME in clock ticks, as /proc's starttime counts. */
static uint64_t bootTicks(void) {
    struct timespec now;
    clock_gettime(CLOCK_BOOTTIME, &now);
    uint64_t ns = (uint64_t)now.tv_sec * 1000000000ULL + (uint64_t)now.tv_nsec;
    return ns / (1000000000ULL / (uint64_t)sysconf(_SC_CLK_TCK));
}

/* pid's starttime from /proc (0 if it cannot be read). */
static uint64_t procStart(pid_t pid) {
    char path[64], text[1024];
    unsigned long long start = 0;
    snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return 0;
    ssize_t got = read(fd, text, sizeof text - 1);
    close(fd);
    if (got <= 0)
        return 0;
    text[got] = '\0';
    char *field = strrchr(text, ')');
    for (int i = 0; field != NULL && i < 20; i++)  /* to field 22 */
        field = strchr(field + 1, ' ');
    if (field == NULL || sscanf(field + 1, "%llu", &start) != 1)
        return 0;
    return start;
}

/* Fork the next standby and announce it on fd 3. 0, or an errno. */
static int makeStandby(void) {
    int pair[2];
    if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, pair) != 0)
        return errno;
    uint64_t before = bootTicks();
    pid_t child = fork();
    if (child == 0)
        standbyMain(pair[1]);
    uint64_t after = bootTicks();
    int error = errno;
    close(pair[1]);
    if (child < 0) {
        close(pair[0]);
        return error;
    }
    int pidfd = (int)syscall(SYS_pidfd_open, child, 0);
    struct epoll_event watch = {EPOLLIN, {.u64 = (uint64_t)pidfd}};
    if (pidfd < 0 || epoll_ctl(watched, EPOLL_CTL_ADD, pidfd, &watch) != 0) {
        /* Without it the server could not signal it safely. */
        error = errno;
        close(pair[0]);  /* EOF: it exits */
        while (waitpid(child, NULL, 0) < 0 && errno == EINTR)
            ;
        if (pidfd >= 0)
            close(pidfd);
        return error;
    }
    if ((uint32_t)child < PID_BITS)
        forked[child >> 3] |= (unsigned char)(1U << (child & 7));
    standbyPid = child;
    standbyPidfd = pidfd;
    standbySocket = pair[0];
    /* The kernel stamps the child between the two readings; within one
     * tick, the first is its start or the tick before (the server's
     * crash recovery accepts either). */
    struct {
        char kind;
        char pad[3];
        int32_t pid;
        uint64_t start;
    } announce = {'A', {0, 0, 0}, child, after - before <= 1 ? before : procStart(child)};
    if (sendWithFds(3, &announce, sizeof announce, &pidfd, 1) < 0)
        _exit(0);  /* the server is gone */
    return 0;
}

/* A standby, announced; or, when it cannot be made (no pid left, say), the
 * error announced instead ('F', errno, no descriptor): the server fails
 * that spawn at once, and asks again ('N') at its next one. */
static void replaceStandby(void) {
    int error = makeStandby();
    if (error == 0)
        return;
    struct {
        char kind;
        char pad[3];
        int32_t error;
        uint64_t unused;
    } failed = {'F', {0, 0, 0}, error, 0};
    while (send(3, &failed, sizeof failed, MSG_NOSIGNAL) < 0)
        if (errno != EINTR)
            _exit(0);  /* the server is gone */
}

/* 'S': hand the request (of length got) to the standby it names. */
static void start(ssize_t got, const int *fds, int count) {
    int32_t pid;
    if (got < 1 + (ssize_t)sizeof pid + 2 || request[got - 1] != '\0' ||
        count < REQUEST_FDS)
        die(SETUP_FAILED, "spawner: a bad start request", NULL, 0);
    memcpy(&pid, request + 1, sizeof pid);
    if (pid != standbyPid || standbyPid < 0)
        return;  /* that standby died: its end is reported */
    if (request[0] == 's') {
        if ((size_t)standbyPidfd >= reapNowRoom) {
            size_t room = reapNowRoom ? reapNowRoom : 1024;
            while (room <= (size_t)standbyPidfd)
                room *= 2;
            unsigned char *grown = realloc(reapNow, room);
            if (grown == NULL)
                die(SETUP_FAILED, "spawner: out of memory", NULL, 0);
            memset(grown + reapNowRoom, 0, room - reapNowRoom);
            reapNow = grown;
            reapNowRoom = room;
        }
        reapNow[standbyPidfd] = 1;
    }
    /* If it died meanwhile the send fails; its pidfd reports its end. */
    sendWithFds(standbySocket, request + 1 + sizeof pid,
                (size_t)got - 1 - sizeof pid, fds, count);
    close(standbySocket);
    standbyPid = standbyPidfd = standbySocket = -1;  /* a job now */
    replaceStandby();
}

/* A child of the spawner's own is reaped. */
static void notForked(pid_t pid) {
    if ((uint32_t)pid < PID_BITS)
        forked[pid >> 3] &= (unsigned char)~(1U << (pid & 7));
}

/* Reap child pid if the spawner did not fork it (and it has ended). */
static void reapStranger(pid_t pid) {
    if (pid <= 0 || (uint32_t)pid >= PID_BITS || forked[pid >> 3] & (1U << (pid & 7)))
        return;
    while (waitpid(pid, NULL, WNOHANG | __WALL) < 0 && errno == EINTR)
        ;
}

/* Reap the ended children the spawner did not fork: the one a SIGCHLD
 * names, then every child /proc lists that it did not fork (SIGCHLDs sent
 * together come as one). Without that list (a kernel without
 * CONFIG_PROC_CHILDREN): those a look at the first waitable child finds,
 * until it is one of the spawner's own (its end waits for the server's
 * 'R', which looks again) or none. */
static void reapStrangers(pid_t named) {
    reapStranger(named);
    char path[64], chunk[4096];
    snprintf(path, sizeof path, "/proc/self/task/%d/children", (int)getpid());
    int list = open(path, O_RDONLY | O_CLOEXEC);
    if (list >= 0) {
        long pid = 0;
        ssize_t got;
        while ((got = read(list, chunk, sizeof chunk)) > 0 ||
               (got < 0 && errno == EINTR))
            for (ssize_t i = 0; i < got; i++) {
                if (chunk[i] >= '0' && chunk[i] <= '9') {
                    pid = pid * 10 + (chunk[i] - '0');
                    if (pid >= (long)PID_BITS)
                        pid = 0;  /* (no pid; read on) */
                } else {
                    reapStranger((pid_t)pid);
                    pid = 0;
                }
            }
        reapStranger((pid_t)pid);
        close(list);
        return;
    }
    for (int i = 0; i < 1024; i++) {
        siginfo_t info;
        memset(&info, 0, sizeof info);
        if (waitid(P_ALL, 0, &info, WEXITED | WNOHANG | WNOWAIT | __WALL) != 0) {
            if (errno == EINTR)
                continue;
            return;  /* ECHILD: no child at all */
        }
        pid_t pid = info.si_pid;
        if (pid <= 0 || ((uint32_t)pid < PID_BITS && forked[pid >> 3] & (1U << (pid & 7))))
            return;
        reapStranger(pid);
    }
}

/* 'R': reap the ended children the server has taken in. */
static void reap(ssize_t got) {
    for (ssize_t at = 1; at + (ssize_t)sizeof(int32_t) <= got; at += (ssize_t)sizeof(int32_t)) {
        int32_t pid;
        memcpy(&pid, request + at, sizeof pid);
        if (pid <= 0)
            die(SETUP_FAILED, "spawner: a bad pid to reap", NULL, 0);
        while (waitpid(pid, NULL, WNOHANG) < 0 && errno == EINTR)
            ;
        notForked(pid);
    }
    reapStrangers(0);  /* (the fallback stopped at one of these) */
}

/* One message from the server. 0 on EOF. */
static int serve(void) {
    int fds[MAX_FDS], count, truncated;
    ssize_t got = receiveWithFds(3, MSG_DONTWAIT, fds, &count, &truncated);
    if (got < 0)
        return errno == EAGAIN;
    if (got == 0)
        return 0;
    if (truncated)
        die(SETUP_FAILED, "spawner: a request too large", NULL, 0);
    if (request[0] == 'S' || request[0] == 's')
        start(got, fds, count);
    else if (request[0] == 'R')
        reap(got);
    else if (request[0] == 'N') {
        if (standbyPid < 0)
            replaceStandby();
    }
    else
        die(SETUP_FAILED, "spawner: an unknown request", NULL, 0);
    for (int i = 0; i < count; i++)
        close(fds[i]);
    return 1;
}

/* A child ended: note its pid and status (it stays a zombie until 'R',
 * unless it is an 's' child: reaped now). */
static void childEnded(int pidfd) {
    siginfo_t info;
    int now = (size_t)pidfd < reapNowRoom && reapNow[pidfd];
    memset(&info, 0, sizeof info);
    while (waitid(P_PIDFD, (id_t)pidfd, &info,
                  WEXITED | WNOHANG | (now ? 0 : WNOWAIT)) < 0)
        if (errno != EINTR)
            die(SETUP_FAILED, "spawner: waitid", NULL, errno);
    if (info.si_pid == 0) {
        /* Readable, but not ours to wait for yet: another process traces
         * it. Off the epoll (it would wake us without end), retried at the
         * next SIGCHLD, which comes when the tracer lets it go. */
        epoll_ctl(watched, EPOLL_CTL_DEL, pidfd, NULL);
        if (waitingCount == waitingRoom) {
            size_t room = waitingRoom ? waitingRoom * 2 : 64;
            int *grown = realloc(waiting, room * sizeof *waiting);
            if (grown == NULL)
                die(SETUP_FAILED, "spawner: out of memory", NULL, 0);
            waiting = grown;
            waitingRoom = room;
        }
        waiting[waitingCount++] = pidfd;
        return;
    }
    int status;
    if (info.si_code == CLD_EXITED)
        status = (info.si_status & 0xff) << 8;
    else
        status = (info.si_status & 0x7f) | (info.si_code == CLD_DUMPED ? 0x80 : 0);
    if (endedCount + 2 > endedRoom) {
        size_t room = endedRoom ? endedRoom * 2 : 1024;
        int32_t *grown = realloc(ended, room * sizeof *ended);
        if (grown == NULL)
            die(SETUP_FAILED, "spawner: out of memory", NULL, 0);
        ended = grown;
        endedRoom = room;
    }
    ended[endedCount++] = (int32_t)info.si_pid;
    ended[endedCount++] = (int32_t)(status | (now ? REAPED : 0));
    epoll_ctl(watched, EPOLL_CTL_DEL, pidfd, NULL);
    if (now) {
        reapNow[pidfd] = 0;
        notForked(info.si_pid);
    }
    close(pidfd);
    if (pidfd == standbyPidfd) {
        /* The standby died waiting: reported like a job's end (a start
         * the server sent for it meanwhile ends so), and replaced. */
        close(standbySocket);
        standbyPid = standbyPidfd = standbySocket = -1;
        replaceStandby();
    }
}

/* SIGCHLD: reap the children the spawner did not fork; try the pidfds
 * that were not waitable yet again. */
static void childSignalled(int signals) {
    struct signalfd_siginfo info;
    pid_t named = 0;
    while (read(signals, &info, sizeof info) > 0)
        named = (pid_t)info.ssi_pid;
    reapStrangers(named);
    size_t count = waitingCount;
    waitingCount = 0;
    for (size_t i = 0; i < count; i++)
        childEnded(waiting[i]);  /* back on the list if still not */
}

/* Write what the pipe takes of the ended list (whole records only: a
 * pipe write of at most PIPE_BUF bytes is all or nothing). */
static void reportEnded(void) {
    size_t sent = 0;
    while (sent < endedCount) {
        size_t pairs = (endedCount - sent) / 2;
        if (pairs > PIPE_BUF / 8)
            pairs = PIPE_BUF / 8;
        ssize_t wrote = write(4, ended + sent, pairs * 8);
        if (wrote < 0 && errno == EINTR)
            continue;
        if (wrote < 0 && errno == EAGAIN)
            break;
        if (wrote < 0)
            _exit(0);  /* the server is gone */
        sent += (size_t)wrote / 4;
    }
    memmove(ended, ended + sent, (endedCount - sent) * sizeof *ended);
    endedCount -= sent;
}

static int spawner(void) {
    struct epoll_event events[64];
    struct epoll_event onSocket = {EPOLLIN, {.u64 = SOCKET_KEY}};
    struct epoll_event onPipe = {EPOLLOUT, {.u64 = PIPE_KEY}};
    int pipeWatched = 0;
    /* A session of its own, deaf to the stop signals (blocked, below): a
     * terminal's ^C or a SIGTERM to the server's group is for the server,
     * which stops its jobs first and then closes fd 3. Children take the
     * defaults back (standbyMain, takeDescriptors). */
    if (setsid() < 0 && getsid(0) != getpid())
        die(SETUP_FAILED, "spawner: setsid", NULL, errno);
    /* Killed when the server dies: it ends at the EOF of fd 3, which a
     * spawner stopped then (SIGSTOP, a debugger) never read, and it, its
     * standby and its children's zombies stayed for good (fault round 8).
     * Not passed on: a fork's child starts without it. */
    if (prctl(PR_SET_PDEATHSIG, SIGKILL) != 0)
        die(SETUP_FAILED, "spawner: prctl(PR_SET_PDEATHSIG)", NULL, errno);
    /* Blocked, not ignored: a standby (a fork: nothing pending) keeps one
     * sent to it before it took its request; ignored, a stop then waited
     * out its grace for the KILL (review round 30). */
    const int deafTo[] = {SIGINT, SIGTERM, SIGHUP};
    sigemptyset(&deaf);
    for (int i = 0; i < 3; i++)
        sigaddset(&deaf, deafTo[i]);
    if (sigprocmask(SIG_BLOCK, &deaf, NULL) != 0)
        die(SETUP_FAILED, "spawner: sigprocmask", NULL, errno);
    for (int i = 0; i < 3; i++)
        signal(deafTo[i], SIG_DFL);  /* (not ignored, whatever the server's) */
    sigset_t child;
    sigemptyset(&child);
    sigaddset(&child, SIGCHLD);
    /* Blocked here, read from a signalfd; children unblock every signal
     * (takeDescriptors). */
    int signals = sigprocmask(SIG_BLOCK, &child, NULL) == 0
                      ? signalfd(-1, &child, SFD_CLOEXEC | SFD_NONBLOCK)
                      : -1;
    struct epoll_event onSignal = {EPOLLIN, {.u64 = SIGNAL_KEY}};
    if (signals < 0)
        die(SETUP_FAILED, "spawner: signalfd", NULL, errno);
    if (fcntl(3, F_SETFD, FD_CLOEXEC) != 0 || fcntl(4, F_SETFD, FD_CLOEXEC) != 0 ||
        fcntl(4, F_SETFL, O_NONBLOCK) != 0)
        die(SETUP_FAILED, "spawner: fds 3 and 4", NULL, errno);
    watched = epoll_create1(EPOLL_CLOEXEC);
    if (watched < 0 || epoll_ctl(watched, EPOLL_CTL_ADD, 3, &onSocket) != 0 ||
        epoll_ctl(watched, EPOLL_CTL_ADD, signals, &onSignal) != 0)
        die(SETUP_FAILED, "spawner: epoll", NULL, errno);
    forked = calloc(PID_BITS / 8, 1);
    if (forked == NULL)
        die(SETUP_FAILED, "spawner: out of memory", NULL, 0);
    replaceStandby();
    for (;;) {
        int n = epoll_wait(watched, events, 64, -1);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            die(SETUP_FAILED, "spawner: epoll_wait", NULL, errno);
        }
        for (int i = 0; i < n; i++) {
            uint64_t key = events[i].data.u64;
            if (key == SOCKET_KEY) {
                if (!serve())
                    return 0;
            } else if (key == PIPE_KEY) {
                if (events[i].events & (EPOLLERR | EPOLLHUP))
                    return 0;  /* the server is gone */
            } else if (key == SIGNAL_KEY) {
                childSignalled(signals);
            } else {
                childEnded((int)key);
            }
        }
        if (endedCount)
            reportEnded();
        if (!!endedCount != pipeWatched) {
            pipeWatched = !!endedCount;
            if (epoll_ctl(watched, pipeWatched ? EPOLL_CTL_ADD : EPOLL_CTL_DEL, 4,
                          &onPipe) != 0)
                die(SETUP_FAILED, "spawner: epoll of fd 4", NULL, errno);
        }
    }
}

int main(int argc, char **argv) {
    if (argc == 2 && strcmp(argv[1], "--spawner") == 0)
        return spawner();
    return launch(argc, argv);
}
