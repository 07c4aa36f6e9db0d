/*
 * main.c - the cowfs command: argument parsing, usage, and dispatch to the
 * core (init, fsck), the FUSE layer (mount) and the daemon (umount, and the
 * ioctl-based commands).
 */
#include <err.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "cowfs/fs.h"
#include "cowfs/fuse_ops.h"
#include "cowfs/store.h"

struct cmd {
	const char *name;
	int (*run)(int argc, char **argv);
	const char *synopsis;
	const char *help;
};

static const struct cmd *find_cmd(const char *name);

static int usage_error(const char *cmd, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));

static int usage_error(const char *cmd, const char *fmt, ...)
{
	va_list ap;
	const struct cmd *c = cmd ? find_cmd(cmd) : NULL;

	fprintf(stderr, "cowfs: %s%s", cmd ? cmd : "", cmd ? ": " : "");
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
	if (c)
		fprintf(stderr, "usage: cowfs %s\n", c->synopsis);
	else
		fprintf(stderr, "Try 'cowfs help'.\n");
	return 2;
}

static int print_help(const struct cmd *c)
{
	printf("usage: cowfs %s\n\n%s", c->synopsis, c->help);
	return 0;
}

/* Parse "64K", "4096", "1M" into bytes; 0 on error. */
static unsigned long long parse_size(const char *s)
{
	char *end;
	errno = 0;
	unsigned long long v = strtoull(s, &end, 10);
	if (errno || end == s)
		return 0;
	if (*end == 'k' || *end == 'K')
		v <<= 10, end++;
	else if (*end == 'm' || *end == 'M')
		v <<= 20, end++;
	if (*end == 'i' && end[1] == 'B')
		end += 2;
	else if (*end == 'B')
		end++;
	return *end ? 0 : v;
}

/* Common: --help on every command; returns -1 to go on. */
static int want_help(const char *cmd, int argc, char **argv)
{
	for (int i = 1; i < argc; i++) {
		if (!strcmp(argv[i], "--"))
			break;
		if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h"))
			return print_help(find_cmd(cmd));
	}
	return -1;
}

static int cmd_init(int argc, char **argv)
{
	static const struct option lo[] = {
		{ "block-size", required_argument, NULL, 'b' },
		{ 0 }
	};
	unsigned long long bs = 65536;
	char errbuf[512];
	int c, rc;

	if ((rc = want_help("init", argc, argv)) >= 0)
		return rc;
	optind = 1;
	opterr = 0;
	while ((c = getopt_long(argc, argv, "+b:", lo, NULL)) != -1) {
		switch (c) {
		case 'b':
			bs = parse_size(optarg);
			if (bs < 4096 || bs > (1u << 20) || (bs & (bs - 1)))
				return usage_error("init", "invalid block size '%s' "
						   "(a power of two from 4K to 1M)",
						   optarg);
			break;
		default:
			return usage_error("init", "unknown option '%s'",
					   argv[optind - 1]);
		}
	}
	if (argc - optind != 1)
		return usage_error("init", argc - optind ? "too many arguments" :
				   "missing STORE");
	rc = fs_init_store(argv[optind], (unsigned)__builtin_ctzll(bs), errbuf,
			   sizeof(errbuf));
	if (rc) {
		fprintf(stderr, "cowfs: init: %s\n", errbuf);
		return 1;
	}
	return 0;
}

/* Split -o options into cowfs's own and libfuse's. */
static int split_opts(const char *in, struct fs_options *fo, char *fuse_out,
		      size_t outlen, char **logfile)
{
	char *dup = strdup(in), *save = NULL, *tok;

	if (!dup)
		return -1;
	for (tok = strtok_r(dup, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
		if (!strncmp(tok, "commit=", 7)) {
			char *end;
			long v = strtol(tok + 7, &end, 10);
			if (*end || v < 1 || v > 3600) {
				free(dup);
				return usage_error("mount", "invalid commit interval "
						   "'%s' (1 to 3600 seconds)", tok + 7);
			}
			fo->commit_secs = (unsigned)v;
			continue;
		}
		if (!strncmp(tok, "logfile=", 8)) {
			free(*logfile);
			*logfile = strdup(tok + 8);
			continue;
		}
		if (!strcmp(tok, "ro"))
			fo->ro = 1;
		if (!strcmp(tok, "rw"))
			fo->ro = 0;
		if (*fuse_out)
			strlcat(fuse_out, ",", outlen);
		strlcat(fuse_out, tok, outlen);
	}
	free(dup);
	return 0;
}

static void append_fsname(char *out, size_t outlen, const char *store)
{
	char esc[PATH_MAX * 2 + 16];
	size_t k = 0;

	k += (size_t)snprintf(esc, sizeof(esc), "fsname=");
	for (const char *p = store; *p && k + 3 < sizeof(esc); p++) {
		if (*p == ',' || *p == '\\')
			esc[k++] = '\\';
		esc[k++] = *p;
	}
	esc[k] = 0;
	if (*out)
		strlcat(out, ",", outlen);
	strlcat(out, esc, outlen);
}

static int cmd_mount(int argc, char **argv)
{
	struct fs_options fo = { 0 };
	struct cowfs_mount m = { 0 };
	char fuse_opts[8192] = "", errbuf[1024];
	char *logfile = NULL, *store_abs;
	struct fs *fs;
	int c, rc;

	if ((rc = want_help("mount", argc, argv)) >= 0)
		return rc;
	optind = 1;
	opterr = 0;
	while ((c = getopt(argc, argv, "+fdo:")) != -1) {
		switch (c) {
		case 'f':
			m.foreground = 1;
			break;
		case 'd':
			m.debug = 1;
			m.foreground = 1;
			fo.debug = 1;
			break;
		case 'o':
			if ((rc = split_opts(optarg, &fo, fuse_opts, sizeof(fuse_opts),
					     &logfile)))
				return rc;
			break;
		case '?':
			if (optopt == 'o')
				return usage_error("mount", "option -o needs a value");
			return usage_error("mount", "unknown option '-%c'", optopt);
		default:
			return usage_error("mount", "unknown option");
		}
	}
	if (argc - optind != 2)
		return usage_error("mount", argc - optind < 2 ?
				   "missing STORE or MOUNTPOINT" : "too many arguments");
	const char *store = argv[optind], *mnt = argv[optind + 1];
	struct stat st;
	if (stat(mnt, &st) < 0 || !S_ISDIR(st.st_mode)) {
		fprintf(stderr, "cowfs: mount: '%s': %s\n", mnt,
			errno && stat(mnt, &st) < 0 ? strerror(errno) : "not a directory");
		return 1;
	}
	if (logfile) {
		/* the daemon chdirs to /: make the log path absolute */
		char *abs = logfile[0] == '/' ? NULL : realpath(".", NULL);
		if (abs) {
			char *p;
			if (asprintf(&p, "%s/%s", abs, logfile) > 0) {
				free(logfile);
				logfile = p;
			}
			free(abs);
		}
	}
	fo.logfile = logfile;
	rc = fs_open(store, &fo, &fs, errbuf, sizeof(errbuf));
	if (rc) {
		fprintf(stderr, "cowfs: mount: %s\n", errbuf);
		free(logfile);
		return 1;
	}
	store_abs = realpath(store, NULL);
	append_fsname(fuse_opts, sizeof(fuse_opts), store_abs ? store_abs : store);
	free(store_abs);
	m.mountpoint = mnt;
	m.fuse_opts = fuse_opts;
	rc = cowfs_fuse_run(fs, &m);
	if (rc)
		fprintf(stderr, "cowfs: mount: '%s': could not mount\n", mnt);
	if (fs_close(fs))
		rc = rc ? rc : -EIO;
	free(logfile);
	return rc ? 1 : 0;
}

/* Unescape /proc/self/mountinfo octal escapes in place. */
static void unescape(char *s)
{
	char *d = s;
	while (*s) {
		if (s[0] == '\\' && s[1] >= '0' && s[1] <= '7' && s[2] && s[3]) {
			*d++ = (char)((s[1] - '0') * 64 + (s[2] - '0') * 8 + (s[3] - '0'));
			s += 4;
		} else {
			*d++ = *s++;
		}
	}
	*d = 0;
}

/* Find the store behind a cowfs mountpoint. Caller frees. */
static char *mount_source(const char *mnt_abs)
{
	FILE *f = fopen("/proc/self/mountinfo", "re");
	char line[8192], *found = NULL;

	if (!f)
		return NULL;
	while (fgets(line, sizeof(line), f)) {
		/* id parent maj:min root mountpoint opts ... - fstype source super */
		char *fields[16];
		int n = 0;
		for (char *t = strtok(line, " \n"); t && n < 16; t = strtok(NULL, " \n"))
			fields[n++] = t;
		if (n < 10)
			continue;
		unescape(fields[4]);
		if (strcmp(fields[4], mnt_abs))
			continue;
		int dash = 6;
		while (dash < n && strcmp(fields[dash], "-"))
			dash++;
		if (dash + 2 >= n)
			continue;
		if (strcmp(fields[dash + 1], "fuse.cowfs"))
			continue;
		unescape(fields[dash + 2]);
		free(found);
		found = strdup(fields[dash + 2]);
	}
	fclose(f);
	return found;
}

static int cmd_umount(int argc, char **argv)
{
	int rc;
	if ((rc = want_help("umount", argc, argv)) >= 0)
		return rc;
	if (argc != 2)
		return usage_error("umount", argc < 2 ? "missing MOUNTPOINT" :
				   "too many arguments");
	char *mnt = realpath(argv[1], NULL);
	if (!mnt) {
		fprintf(stderr, "cowfs: umount: '%s': %s\n", argv[1], strerror(errno));
		return 1;
	}
	char *store = mount_source(mnt);
	if (!store) {
		fprintf(stderr, "cowfs: umount: '%s': not a cowfs mount\n", argv[1]);
		free(mnt);
		return 1;
	}
	pid_t pid = fork();
	if (pid == 0) {
		execlp("fusermount3", "fusermount3", "-u", mnt, (char *)NULL);
		_exit(127);
	}
	int status = 0;
	if (pid < 0 || waitpid(pid, &status, 0) < 0 || !WIFEXITED(status) ||
	    WEXITSTATUS(status)) {
		fprintf(stderr, "cowfs: umount: '%s': fusermount3 -u failed\n", argv[1]);
		free(mnt);
		free(store);
		return 1;
	}
	/* Wait for the daemon to write its checkpoint and let go of the store. */
	char lockp[PATH_MAX];
	snprintf(lockp, sizeof(lockp), "%s/%s", store, STORE_LOCK);
	int fd = open(lockp, O_RDONLY | O_CLOEXEC);
	rc = 0;
	if (fd >= 0) {
		int waited = 0;
		while (flock(fd, LOCK_SH | LOCK_NB) < 0) {
			if (waited++ > 6000) {	/* 10 minutes */
				fprintf(stderr, "cowfs: umount: the daemon for '%s' "
					"has not exited\n", store);
				rc = 1;
				break;
			}
			usleep(100000);
		}
		close(fd);
	}
	free(mnt);
	free(store);
	return rc;
}

static int cmd_help(int argc, char **argv);

static const struct cmd cmds[] = {
	{ "init", cmd_init, "init [--block-size SIZE] STORE",
	  "Create a new, empty store in STORE (a missing or empty directory).\n\n"
	  "  --block-size SIZE  unit of sharing and copy-on-write: a power of two\n"
	  "                     from 4K to 1M (default 64K)\n" },
	{ "mount", cmd_mount, "mount [-f] [-d] [-o OPT[,OPT...]] STORE MOUNTPOINT",
	  "Serve STORE at MOUNTPOINT.  Returns once the mount is live; the daemon\n"
	  "runs in the background until 'cowfs umount'.\n\n"
	  "  -f            stay in the foreground\n"
	  "  -d            debug output (implies -f)\n"
	  "  -o OPT,...    libfuse options (allow_other, ro, ...) and cowfs's own:\n"
	  "                commit=SECONDS  journal commit interval (default 5)\n"
	  "                logfile=PATH    append the daemon's log to PATH\n" },
	{ "umount", cmd_umount, "umount MOUNTPOINT",
	  "Unmount a cowfs mount and wait until its daemon has written its\n"
	  "metadata and exited.\n" },
	{ "help", cmd_help, "help [COMMAND]",
	  "Show the commands, or one command's usage.\n" },
};

static const struct cmd *find_cmd(const char *name)
{
	for (size_t i = 0; i < sizeof(cmds) / sizeof(cmds[0]); i++)
		if (!strcmp(cmds[i].name, name))
			return &cmds[i];
	return NULL;
}

static void general_usage(FILE *f)
{
	fprintf(f, "usage: cowfs COMMAND [ARGS...]\n\n"
		"cowfs is a copy-on-write FUSE filesystem: instant clones of files\n"
		"and trees that share blocks until one side writes.\n\nCommands:\n");
	for (size_t i = 0; i < sizeof(cmds) / sizeof(cmds[0]); i++)
		fprintf(f, "  cowfs %s\n", cmds[i].synopsis);
	fprintf(f, "\n'cowfs help COMMAND' or 'cowfs COMMAND --help' for details.\n");
}

static int cmd_help(int argc, char **argv)
{
	if (argc > 2)
		return usage_error("help", "too many arguments");
	if (argc == 2 && strcmp(argv[1], "--help") && strcmp(argv[1], "-h")) {
		const struct cmd *c = find_cmd(argv[1]);
		if (!c)
			return usage_error("help", "unknown command '%s'", argv[1]);
		return print_help(c);
	}
	general_usage(stdout);
	return 0;
}

int main(int argc, char **argv)
{
	if (argc < 2) {
		general_usage(stderr);
		return 2;
	}
	if (!strcmp(argv[1], "--version") || !strcmp(argv[1], "-V")) {
		printf("cowfs %s\n", COWFS_VERSION);
		return 0;
	}
	if (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h")) {
		general_usage(stdout);
		return 0;
	}
	const struct cmd *c = find_cmd(argv[1]);
	if (!c)
		return usage_error(NULL, "unknown command '%s'", argv[1]);
	return c->run(argc - 1, argv + 1);
}
