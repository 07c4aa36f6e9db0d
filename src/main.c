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

#include <ftw.h>
#include <libgen.h>
#include <libutil.h>
#include <sys/ioctl.h>
#include <sys/statfs.h>

#include "cowfs/fs.h"
#include "cowfs/fuse_ops.h"
#include "cowfs/ioctl.h"
#include "cowfs/store.h"

#define FUSE_SUPER_MAGIC 0x65735546

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

static char *mount_logfile;	/* freed at exit, whatever the path out */

static void free_mount_logfile(void)
{
	free(mount_logfile);
}

static int cmd_mount(int argc, char **argv)
{
	struct fs_options fo = { 0 };
	struct cowfs_mount m = { 0 };
	char fuse_opts[8192] = "", errbuf[1024];
	char *store_abs;
	struct fs *fs;
	int c, rc;

	atexit(free_mount_logfile);

	if ((rc = want_help("mount", argc, argv)) >= 0)
		return rc;
	static const struct option lo[] = {
		{ "origin", required_argument, NULL, 'O' },
		{ 0 }
	};
	const char *origin = NULL;

	optind = 1;
	opterr = 0;
	while ((c = getopt_long(argc, argv, "+fdo:", lo, NULL)) != -1) {
		switch (c) {
		case 'O':
			origin = optarg;
			break;
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
					     &mount_logfile)))
				return rc;
			break;
		case '?':
			if (optopt == 'o')
				return usage_error("mount", "option -o needs a value");
			if (optopt == 'O')
				return usage_error("mount", "option --origin needs a DIR");
			if (optopt)
				return usage_error("mount", "unknown option '-%c'", optopt);
			return usage_error("mount", "unknown option '%s'",
					   argv[optind - 1]);
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
		int e = stat(mnt, &st) < 0 ? errno : ENOTDIR;
		fprintf(stderr, "cowfs: mount: '%s': %s\n", mnt, strerror(e));
		return 1;
	}
	if (mount_logfile) {
		/* the daemon chdirs to /: make the log path absolute */
		char *abs = mount_logfile[0] == '/' ? NULL : realpath(".", NULL);
		if (abs) {
			char *p;
			if (asprintf(&p, "%s/%s", abs, mount_logfile) > 0) {
				free(mount_logfile);
				mount_logfile = p;
			}
			free(abs);
		}
	}
	fo.logfile = mount_logfile;
	char *origin_abs = NULL;
	if (origin) {
		origin_abs = realpath(origin, NULL);
		if (!origin_abs || stat(origin_abs, &st) < 0 || !S_ISDIR(st.st_mode)) {
			fprintf(stderr, "cowfs: mount: --origin '%s': %s\n", origin,
				origin_abs ? strerror(ENOTDIR) : strerror(errno));
			free(origin_abs);
			return 1;
		}
		/* cowfs init happens implicitly for a new store */
		if (access(store, F_OK) < 0 && errno == ENOENT &&
		    fs_init_store(store, 16, errbuf, sizeof(errbuf))) {
			fprintf(stderr, "cowfs: mount: %s\n", errbuf);
			free(origin_abs);
			return 1;
		}
	}
	rc = fs_open(store, &fo, &fs, errbuf, sizeof(errbuf));
	if (rc) {
		fprintf(stderr, "cowfs: mount: %s\n", errbuf);
		free(origin_abs);
		return 1;
	}
	if (origin_abs) {
		rc = fs_attach_origin(fs, origin_abs, errbuf, sizeof(errbuf));
		free(origin_abs);
		if (rc) {
			fprintf(stderr, "cowfs: mount: %s\n", errbuf);
			fs_close(fs);
			return 1;
		}
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
	if (argc > 1 && !strcmp(argv[1], "--")) {
		argc--;
		argv++;
	}
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

/* Is fd on a cowfs mount?  (FUSE with our ioctls.) */
static int on_fuse(int fd)
{
	struct statfs sf;
	return fstatfs(fd, &sf) == 0 && sf.f_type == FUSE_SUPER_MAGIC;
}

/* SRC outside the mount: clone by reference.  Returns the exit status. */
static int clone_host(int dirfd_, const char *src, const char *dst,
		      const char *name)
{
	struct cowfs_ioc_clone_host *a = calloc(1, sizeof(*a));
	char *d = strdup(src), *b = strdup(src), *abs = NULL;
	int status = 1;

	if (!a || !d || !b)
		err(1, "clone");
	/* resolve the parent, keep SRC itself (a symlink stays a symlink) */
	for (size_t n = strlen(d); n > 1 && d[n - 1] == '/'; n--)
		d[n - 1] = b[n - 1] = 0;
	char *pdir = realpath(dirname(d), NULL);
	const char *base = basename(b);
	if (!pdir) {
		fprintf(stderr, "cowfs: clone: '%s': %s\n", src, strerror(errno));
		goto out;
	}
	if (!strcmp(base, ".") || !strcmp(base, "..") || !strcmp(base, "/")) {
		abs = realpath(src, NULL);
	} else if (asprintf(&abs, "%s/%s", strcmp(pdir, "/") ? pdir : "", base) < 0) {
		abs = NULL;
	}
	free(pdir);
	if (!abs || strlen(abs) >= sizeof(a->path)) {
		fprintf(stderr, "cowfs: clone: '%s': %s\n", src,
			abs ? strerror(ENAMETOOLONG) : strerror(errno));
		goto out;
	}
	strlcpy(a->path, abs, sizeof(a->path));
	strlcpy(a->name, name, sizeof(a->name));
	if (ioctl(dirfd_, COWFS_IOC_CLONE_HOST, a) < 0) {
		int e = errno;
		fprintf(stderr, "cowfs: clone: '%s': %s\n",
			e == EACCES || e == EPERM || e == EXDEV ||
			e == EOPNOTSUPP ? src : dst, strerror(e));
		goto out;
	}
	if (a->skipped)
		fprintf(stderr, "cowfs: clone: warning: %llu socket(s) or device "
			"node(s) in '%s' skipped\n", (unsigned long long)a->skipped, src);
	status = 0;
out:
	free(abs);
	free(a);
	free(d);
	free(b);
	return status;
}

/* SRC (inside a mount, lstat()ed as *sst) as its parent directory's
 * inode and its name, which the daemon checks.  0, or -1 with errno. */
static int src_entry(const char *src, const struct stat *sst,
		     struct cowfs_ioc_clone *a)
{
	char *d = strdup(src), *b = strdup(src), *real = NULL;
	struct stat pst;
	int rc = -1;

	if (!d || !b)
		goto out;
	for (size_t n = strlen(d); n > 1 && d[n - 1] == '/'; n--)
		d[n - 1] = b[n - 1] = 0;
	const char *dir = dirname(d), *base = basename(b);
	if (!strcmp(base, ".") || !strcmp(base, "..") || !strcmp(base, "/")) {
		if (!(real = realpath(src, NULL)))
			goto out;
		free(d);
		free(b);
		d = strdup(real);
		b = strdup(real);
		if (!d || !b)
			goto out;
		dir = dirname(d);
		base = basename(b);
	}
	if (stat(dir, &pst) < 0)
		goto out;
	if (pst.st_dev != sst->st_dev || pst.st_ino == sst->st_ino) {
		a->src_parent = 0;	/* SRC is the mount's root */
		a->src_name[0] = 0;
	} else if (strlen(base) >= sizeof(a->src_name)) {
		errno = ENAMETOOLONG;
		goto out;
	} else {
		a->src_parent = pst.st_ino;
		strlcpy(a->src_name, base, sizeof(a->src_name));
	}
	rc = 0;
out:
	free(real);
	free(d);
	free(b);
	return rc;
}

static int cmd_clone(int argc, char **argv)
{
	struct cowfs_ioc_clone a;
	struct stat sst, dst_st, pst;
	int rc, fd = -1, status = 1;
	char *d1 = NULL, *d2 = NULL;

	if ((rc = want_help("clone", argc, argv)) >= 0)
		return rc;
	if (argc != 3)
		return usage_error("clone", argc < 3 ? "missing SRC or DST" :
				   "too many arguments");
	const char *src = argv[1], *dst = argv[2];
	if (lstat(src, &sst) < 0) {
		fprintf(stderr, "cowfs: clone: '%s': %s\n", src, strerror(errno));
		return 1;
	}
	if (lstat(dst, &dst_st) == 0) {
		fprintf(stderr, "cowfs: clone: '%s': %s\n", dst, strerror(EEXIST));
		return 1;
	}
	d1 = strdup(dst);
	d2 = strdup(dst);
	if (!d1 || !d2)
		err(1, "clone");
	/* strip trailing slashes for basename/dirname */
	for (size_t n = strlen(d1); n > 1 && d1[n - 1] == '/'; n--)
		d1[n - 1] = d2[n - 1] = 0;
	const char *parent = dirname(d1), *name = basename(d2);
	if (strlen(name) >= sizeof(a.name)) {
		fprintf(stderr, "cowfs: clone: '%s': %s\n", dst, strerror(ENAMETOOLONG));
		goto out;
	}
	fd = open(parent, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (fd < 0) {
		fprintf(stderr, "cowfs: clone: '%s': %s\n", parent, strerror(errno));
		goto out;
	}
	if (fstat(fd, &pst) < 0 || !on_fuse(fd)) {
		fprintf(stderr, "cowfs: clone: '%s': not inside a cowfs mount\n", dst);
		goto out;
	}
	if (pst.st_dev != sst.st_dev) {
		status = clone_host(fd, src, dst, name);
		goto out;
	}
	memset(&a, 0, sizeof(a));
	a.src_ino = sst.st_ino;
	if (src_entry(src, &sst, &a) < 0) {
		fprintf(stderr, "cowfs: clone: '%s': %s\n", src, strerror(errno));
		goto out;
	}
	strlcpy(a.name, name, sizeof(a.name));
	if (ioctl(fd, COWFS_IOC_CLONE, &a) < 0) {
		int e = errno;
		if (e == ENOTTY || e == ENOSYS)
			fprintf(stderr, "cowfs: clone: '%s': not inside a cowfs mount\n",
				dst);
		else
			fprintf(stderr, "cowfs: clone: '%s': %s\n", dst, strerror(e));
		goto out;
	}
	status = 0;
out:
	if (fd >= 0)
		close(fd);
	free(d1);
	free(d2);
	return status;
}

static void human(char *buf, size_t len, uint64_t v, int exact)
{
	if (exact)
		snprintf(buf, len, "%llu", (unsigned long long)v);
	else
		humanize_number(buf, len > 5 ? 5 : len, (int64_t)v, "",
				HN_AUTOSCALE, HN_B | HN_NOSPACE | HN_DECIMAL);
}

static void json_str(const char *s)
{
	putchar('"');
	for (; *s; s++) {
		unsigned char ch = (unsigned char)*s;
		if (ch == '"' || ch == '\\')
			printf("\\%c", ch);
		else if (ch < 0x20)
			printf("\\u%04x", ch);
		else
			putchar(ch);
	}
	putchar('"');
}

static int usage_ioctl(const char *cmd, const char *path, unsigned long nr,
		       struct cowfs_ioc_usage *u)
{
	struct stat st;
	int fd;

	memset(u, 0, sizeof(*u));
	if (lstat(path, &st) < 0) {
		fprintf(stderr, "cowfs: %s: '%s': %s\n", cmd, path, strerror(errno));
		return -1;
	}
	if (!S_ISDIR(st.st_mode) && !S_ISREG(st.st_mode)) {
		/* symlinks, fifos, sockets, devices: no data, if in a mount */
		char *dup = strdup(path);
		int dfd = dup ? open(dirname(dup), O_RDONLY | O_DIRECTORY | O_CLOEXEC) : -1;
		int ok = dfd >= 0 && on_fuse(dfd);
		if (dfd >= 0)
			close(dfd);
		free(dup);
		if (!ok) {
			fprintf(stderr, "cowfs: %s: '%s': not inside a cowfs mount\n",
				cmd, path);
			return -1;
		}
		u->other = 1;
		return 0;
	}
	fd = open(path, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
	if (fd < 0) {
		fprintf(stderr, "cowfs: %s: '%s': %s\n", cmd, path, strerror(errno));
		return -1;
	}
	if (!on_fuse(fd) || ioctl(fd, nr, u) < 0) {
		int e = errno;
		fprintf(stderr, "cowfs: %s: '%s': %s\n", cmd, path,
			!on_fuse(fd) || e == ENOTTY ? "not inside a cowfs mount" :
			strerror(e));
		close(fd);
		return -1;
	}
	close(fd);
	return 0;
}

static int cmd_du(int argc, char **argv)
{
	int json = 0, rc, first = 1, status = 0, i;
	int exact = !isatty(STDOUT_FILENO);

	if ((rc = want_help("du", argc, argv)) >= 0)
		return rc;
	for (i = 1; i < argc && argv[i][0] == '-' && argv[i][1]; i++) {
		if (!strcmp(argv[i], "--json"))
			json = 1;
		else if (!strcmp(argv[i], "--bytes") || !strcmp(argv[i], "-b"))
			exact = 1;
		else if (!strcmp(argv[i], "--"))
			{ i++; break; }
		else
			return usage_error("du", "unknown option '%s'", argv[i]);
	}
	if (i >= argc)
		return usage_error("du", "missing PATH");
	if (json)
		printf("[");
	else
		printf("%12s %12s %12s  %s\n", "Logical", "Shared", "Exclusive", "Path");
	for (; i < argc; i++) {
		struct cowfs_ioc_usage u;
		if (usage_ioctl("du", argv[i], COWFS_IOC_DU, &u)) {
			status = 1;
			continue;
		}
		if (json) {
			printf("%s\n  {\"path\": ", first ? "" : ",");
			json_str(argv[i]);
			printf(", \"logical\": %llu, \"shared\": %llu, \"exclusive\": %llu, "
			       "\"files\": %llu, \"dirs\": %llu}",
			       (unsigned long long)u.logical, (unsigned long long)u.shared,
			       (unsigned long long)u.exclusive, (unsigned long long)u.files,
			       (unsigned long long)u.dirs);
			first = 0;
		} else {
			char a[32], b[32], c[32];
			human(a, sizeof(a), u.logical, exact);
			human(b, sizeof(b), u.shared, exact);
			human(c, sizeof(c), u.exclusive, exact);
			printf("%12s %12s %12s  %s\n", a, b, c, argv[i]);
		}
	}
	if (json)
		printf("\n]\n");
	return status;
}

static int cmd_df(int argc, char **argv)
{
	int json = 0, rc, i;
	int exact = !isatty(STDOUT_FILENO);
	struct cowfs_ioc_usage u;

	if ((rc = want_help("df", argc, argv)) >= 0)
		return rc;
	for (i = 1; i < argc && argv[i][0] == '-' && argv[i][1]; i++) {
		if (!strcmp(argv[i], "--json"))
			json = 1;
		else if (!strcmp(argv[i], "--bytes") || !strcmp(argv[i], "-b"))
			exact = 1;
		else
			return usage_error("df", "unknown option '%s'", argv[i]);
	}
	if (argc - i != 1)
		return usage_error("df", argc - i ? "too many arguments" :
				   "missing MOUNTPOINT");
	if (usage_ioctl("df", argv[i], COWFS_IOC_DF, &u))
		return 1;
	/* bytes seen per byte kept on disk (store objects and origin files) */
	uint64_t kept = u.exclusive + u.origin;
	double ratio = kept ? (double)u.logical / (double)kept : 0.0;
	if (json) {
		printf("{\"mountpoint\": ");
		json_str(argv[i]);
		printf(", \"logical\": %llu, \"physical\": %llu, \"shared\": %llu, "
		       "\"ratio\": %.3f, \"metadata\": %llu, \"files\": %llu, "
		       "\"dirs\": %llu, \"objects\": %llu, \"block_size\": %llu, "
		       "\"origin\": %llu}\n",
		       (unsigned long long)u.logical, (unsigned long long)u.exclusive,
		       (unsigned long long)u.shared, ratio,
		       (unsigned long long)u.meta_bytes, (unsigned long long)u.files,
		       (unsigned long long)u.dirs, (unsigned long long)u.objects,
		       (unsigned long long)u.block_size, (unsigned long long)u.origin);
		return 0;
	}
	char a[32], b[32], c[32], d[32];
	human(a, sizeof(a), u.logical, exact);
	human(b, sizeof(b), u.exclusive, exact);
	human(c, sizeof(c), u.shared, exact);
	human(d, sizeof(d), u.meta_bytes, exact);
	printf("logical bytes:   %s (%llu files, %llu directories)\n", a,
	       (unsigned long long)u.files, (unsigned long long)u.dirs);
	printf("physical bytes:  %s in %llu objects (blocks of %llu bytes)\n", b,
	       (unsigned long long)u.objects, (unsigned long long)u.block_size);
	printf("shared blocks:   %s\n", c);
	if (u.origin) {
		char e[32];
		human(e, sizeof(e), u.origin, exact);
		printf("read from origins: %s (in place on the host, not in the store)\n", e);
	}
	printf("sharing ratio:   %.2f\n", ratio);
	printf("metadata:        %s\n", d);
	return 0;
}

static uint64_t detach_total, detach_done, detach_bytes;
static int detach_tty, detach_status;

static int detach_one(const char *path, const struct stat *st, int type,
		      struct FTW *ftw)
{
	struct cowfs_ioc_detach d;
	(void)ftw;
	if (type != FTW_F || !S_ISREG(st->st_mode))
		return 0;
	if (st->st_nlink > 1 && st->st_size == 0)
		return 0;
	int fd = open(path, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
	memset(&d, 0, sizeof(d));
	if (fd < 0 || ioctl(fd, COWFS_IOC_DETACH, &d) < 0) {
		int e = errno;
		fprintf(stderr, "%scowfs: detach: '%s': %s\n", detach_tty ? "\n" : "",
			path, e == ENOTTY ? "not inside a cowfs mount" : strerror(e));
		detach_status = 1;
	} else {
		detach_bytes += d.bytes;
	}
	if (fd >= 0)
		close(fd);
	detach_done++;
	if (detach_tty && (detach_done % 64 == 0 || detach_done == detach_total))
		fprintf(stderr, "\rdetaching: %llu/%llu files, %llu MiB copied",
			(unsigned long long)detach_done,
			(unsigned long long)detach_total,
			(unsigned long long)(detach_bytes >> 20));
	return 0;
}

static int count_one(const char *path, const struct stat *st, int type,
		     struct FTW *ftw)
{
	(void)path;
	(void)ftw;
	if (type == FTW_F && S_ISREG(st->st_mode))
		detach_total++;
	return 0;
}

static int cmd_detach(int argc, char **argv)
{
	int rc;

	if ((rc = want_help("detach", argc, argv)) >= 0)
		return rc;
	if (argc < 2)
		return usage_error("detach", "missing PATH");
	detach_tty = isatty(STDERR_FILENO);
	for (int i = 1; i < argc; i++) {
		struct stat st;
		if (lstat(argv[i], &st) < 0) {
			fprintf(stderr, "cowfs: detach: '%s': %s\n", argv[i],
				strerror(errno));
			detach_status = 1;
			continue;
		}
		if (detach_tty)
			nftw(argv[i], count_one, 64, FTW_PHYS | FTW_MOUNT);
		nftw(argv[i], detach_one, 64, FTW_PHYS | FTW_MOUNT);
	}
	if (detach_tty)
		fputc('\n', stderr);
	printf("%llu bytes copied from origins into the store\n",
	       (unsigned long long)detach_bytes);
	return detach_status;
}

static int cmd_fsck(int argc, char **argv)
{
	int repair = 0, verbose = 0, rc, i;
	char errbuf[1024];

	if ((rc = want_help("fsck", argc, argv)) >= 0)
		return rc;
	for (i = 1; i < argc && argv[i][0] == '-'; i++) {
		if (!strcmp(argv[i], "--repair"))
			repair = 1;
		else if (!strcmp(argv[i], "-v") || !strcmp(argv[i], "--verbose"))
			verbose = 1;
		else
			return usage_error("fsck", "unknown option '%s'", argv[i]);
	}
	if (argc - i != 1)
		return usage_error("fsck", argc - i ? "too many arguments" :
				   "missing STORE");
	rc = fs_fsck(argv[i], repair, verbose, stdout, errbuf, sizeof(errbuf));
	if (rc < 0) {
		fprintf(stderr, "cowfs: fsck: %s\n", errbuf);
		return 3;
	}
	return rc;
}

static int cmd_help(int argc, char **argv);

static const struct cmd cmds[] = {
	{ "init", cmd_init, "init [--block-size SIZE] STORE",
	  "Create a new, empty store in STORE (a missing or empty directory).\n\n"
	  "  --block-size SIZE  unit of sharing and copy-on-write: a power of two\n"
	  "                     from 4K to 1M (default 64K)\n" },
	{ "mount", cmd_mount,
	  "mount [-f] [-d] [-o OPT[,OPT...]] [--origin DIR] STORE MOUNTPOINT",
	  "Serve STORE at MOUNTPOINT.  Returns once the mount is live; the daemon\n"
	  "runs in the background until 'cowfs umount'.\n\n"
	  "  --origin DIR  the mount's root is a writable zero-copy clone of the\n"
	  "                host directory DIR (made on the first mount; STORE is\n"
	  "                created if missing; later mounts reuse it)\n"
	  "  -f            stay in the foreground\n"
	  "  -d            debug output (implies -f)\n"
	  "  -o OPT,...    libfuse options (allow_other, ro, ...) and cowfs's own:\n"
	  "                commit=SECONDS  journal commit interval (default 5)\n"
	  "                logfile=PATH    append the daemon's log to PATH\n" },
	{ "umount", cmd_umount, "umount MOUNTPOINT",
	  "Unmount a cowfs mount and wait until its daemon has written its\n"
	  "metadata and exited.\n" },
	{ "clone", cmd_clone, "clone SRC DST",
	  "Make DST an instant copy-on-write clone of SRC (a file, symlink or\n"
	  "directory tree), like 'cp -a' but sharing every block.  DST must not\n"
	  "exist; its parent must be in a cowfs mount.  When SRC is in the same\n"
	  "mount the clone costs metadata only; when SRC is a host path outside\n"
	  "it, the clone is made by reference: no data is copied, the host files\n"
	  "are read in place and never written (see 'cowfs detach').\n" },
	{ "detach", cmd_detach, "detach PATH...",
	  "Copy every block that PATH (a file or tree in a mount) still reads\n"
	  "from a host origin into the store; afterwards it no longer depends on\n"
	  "the origin.  Shows progress on a terminal.\n" },
	{ "du", cmd_du, "du [--json] [--bytes] PATH...",
	  "For each PATH in a cowfs mount: logical bytes, bytes in blocks shared\n"
	  "with files outside PATH, and bytes in blocks PATH alone holds.\n" },
	{ "df", cmd_df, "df [--json] [--bytes] MOUNTPOINT",
	  "The store's logical bytes, physical bytes, shared bytes and sharing\n"
	  "ratio.\n" },
	{ "fsck", cmd_fsck, "fsck [--repair] [-v] STORE",
	  "Check an unmounted store: refcounts against extent maps, objects,\n"
	  "directory entries and link counts, leaked space.  Exit 0: clean\n"
	  "(leaks alone are harmless and reported), 1: problems found,\n"
	  "3: the store could not be opened.  --repair returns leaked space.\n" },
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
