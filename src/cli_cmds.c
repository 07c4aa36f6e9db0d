/*
 * cli_cmds.c - the commands that talk to a running daemon through the
 * ioctls of include/cowfs/ioctl.h: clone (in the mount, or by reference
 * of a host path), detach, du, df and status.
 */
#include <err.h>
#include <errno.h>
#include <fcntl.h>
#include <fts.h>
#include <libgen.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cowfs/ioctl.h"
#include "cli.h"

#define NOT_COWFS "not inside a cowfs mount"
#define EXDEV_MSG "on another filesystem (clones share blocks only " \
		  "within one store)"

/* The usual options of the commands that show progress. */
static int parse_quiet(const char *cmd, int argc, char **argv, int *quiet)
{
	static const struct option lo[] = {
		{ "quiet", no_argument, NULL, 'q' },
		{ "help", no_argument, NULL, 'H' },
		{ 0 }
	};
	int c;

	opterr = 0;
	while ((c = getopt_long(argc, argv, ":qh", lo, NULL)) != -1) {
		switch (c) {
		case 'q':
			*quiet = 1;
			break;
		case 'h':
		case 'H':
			return print_help(cmd);
		default:
			return bad_option(cmd, argc, argv, c);
		}
	}
	return -1;
}

/*
 * Walk the tree at root without recursion (fts(3) keeps its own stack on
 * the heap and descends with fchdir, so no depth or PATH_MAX limit) and
 * call cb for every entry: path is for messages, acc opens the entry
 * from the current directory.  xdev: stay on root's filesystem.
 */
static void walk_tree(const char *root, int xdev,
		      void (*cb)(const char *path, const char *acc,
				 const struct stat *st))
{
	char *paths[] = { (char *)root, NULL };
	FTS *f = fts_open(paths, FTS_PHYSICAL | (xdev ? FTS_XDEV : 0), NULL);
	FTSENT *e;

	if (!f)
		return;
	while ((e = fts_read(f))) {
		if (e->fts_info == FTS_DP)	/* a directory, on the way up */
			continue;
		if (e->fts_info == FTS_NS || e->fts_info == FTS_NSOK ||
		    e->fts_info == FTS_ERR || e->fts_info == FTS_DNR)
			continue;
		cb(e->fts_path, e->fts_accpath, e->fts_statp);
	}
	fts_close(f);
}

/* --- clone ----------------------------------------------------------- */

static struct progress scan_prog;

static void scan_one(const char *path, const char *acc, const struct stat *st)
{
	(void)path;
	(void)acc;
	if (S_ISREG(st->st_mode)) {
		scan_prog.total_files++;
		scan_prog.total_bytes += (uint64_t)st->st_size;
	}
	scan_prog.files++;
	if (scan_prog.on && now_secs() - scan_prog.last >= 0.1) {
		char b[32];
		scan_prog.last = now_secs();
		fmt_size(b, sizeof(b), scan_prog.total_bytes, 0);
		fprintf(stderr, "\rclone: scanning: %llu entries, %llu files, %s\033[K",
			(unsigned long long)scan_prog.files,
			(unsigned long long)scan_prog.total_files, b);
		scan_prog.shown = 1;
	}
}

struct host_call {
	int fd;
	struct cowfs_ioc_clone_host *a;
	int rc;			/* 0 or errno */
	int done;
	pthread_mutex_t lock;
	pthread_cond_t cond;
};

static void *host_clone_thread(void *p)
{
	struct host_call *h = p;
	int rc = ioctl(h->fd, COWFS_IOC_CLONE_HOST, h->a) < 0 ? errno : 0;

	pthread_mutex_lock(&h->lock);
	h->rc = rc;
	h->done = 1;
	pthread_cond_signal(&h->cond);
	pthread_mutex_unlock(&h->lock);
	return NULL;
}

/*
 * The clone by reference is one ioctl: the daemon walks the host tree.
 * On a terminal, the tree is counted first (files, bytes: the totals),
 * then the ioctl runs in a thread while the elapsed time shows, with an
 * ETA estimated from the count's own speed (the daemon's walk does about
 * the same work per entry, on a warmer cache).
 */
static int clone_ioctl_progress(int fd, struct cowfs_ioc_clone_host *a,
				const char *src, int quiet)
{
	struct host_call h = { .fd = fd, .a = a,
			       .lock = PTHREAD_MUTEX_INITIALIZER,
			       .cond = PTHREAD_COND_INITIALIZER };
	pthread_t t;
	double scan_secs, start;
	char b[32];

	progress_init(&scan_prog, "clone", quiet);
	if (!scan_prog.on)
		return ioctl(fd, COWFS_IOC_CLONE_HOST, a) < 0 ? errno : 0;
	walk_tree(src, 0, scan_one);
	scan_secs = now_secs() - scan_prog.start;
	fmt_size(b, sizeof(b), scan_prog.total_bytes, 0);
	if (pthread_create(&t, NULL, host_clone_thread, &h)) {
		progress_clear(&scan_prog);
		return ioctl(fd, COWFS_IOC_CLONE_HOST, a) < 0 ? errno : 0;
	}
	start = now_secs();
	pthread_mutex_lock(&h.lock);
	while (!h.done) {
		double el = now_secs() - start, left = scan_secs - el;
		fprintf(stderr, "\rclone: by reference: %llu entries, %llu files, "
			"%s: %d:%02d elapsed, ETA ~%d:%02d\033[K",
			(unsigned long long)scan_prog.files,
			(unsigned long long)scan_prog.total_files, b,
			(int)el / 60, (int)el % 60,
			left > 0 ? (int)left / 60 : 0, left > 0 ? (int)left % 60 : 0);
		struct timespec ts;
		clock_gettime(CLOCK_REALTIME, &ts);
		ts.tv_nsec += 200000000;
		if (ts.tv_nsec >= 1000000000) {
			ts.tv_sec++;
			ts.tv_nsec -= 1000000000;
		}
		pthread_cond_timedwait(&h.cond, &h.lock, &ts);
	}
	pthread_mutex_unlock(&h.lock);
	pthread_join(t, NULL);
	if (h.rc) {
		fprintf(stderr, "\r\033[K");
	} else {
		double el = now_secs() - scan_prog.start;
		fprintf(stderr, "\rclone: by reference: %llu entries, %llu files, "
			"%s: done in %d:%02d\033[K\n",
			(unsigned long long)scan_prog.files,
			(unsigned long long)scan_prog.total_files, b,
			(int)el / 60, (int)el % 60);
	}
	return h.rc;
}

/* SRC outside the mount: clone by reference.  Returns the exit status. */
static int clone_host(int dirfd_, const char *parent, const char *src,
		      const char *dst, const char *name, int quiet)
{
	struct cowfs_ioc_clone_host *a = calloc(1, sizeof(*a));
	char *d = strdup(src), *b = strdup(src), *abs = NULL, *pdir;
	const char *base;
	int status = 1, e;

	if (!a || !d || !b)
		err(1, "clone");
	/* resolve the parent, keep SRC itself (a symlink stays a symlink) */
	for (size_t n = strlen(d); n > 1 && d[n - 1] == '/'; n--)
		d[n - 1] = b[n - 1] = 0;
	/* "link/" names the directory a symlink points to: not the link */
	struct stat lst;
	int via_link = strlen(d) < strlen(src) && lstat(d, &lst) == 0 &&
		       S_ISLNK(lst.st_mode);
	pdir = realpath(dirname(d), NULL);
	base = basename(b);
	if (!pdir) {
		fprintf(stderr, "cowfs: clone: '%s': %s\n", src, strerror(errno));
		goto out;
	}
	if (via_link || !strcmp(base, ".") || !strcmp(base, "..") ||
	    !strcmp(base, "/")) {
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
	e = clone_ioctl_progress(dirfd_, a, abs, quiet);
	if (e) {
		const char *at = dst;
		if (e == EXDEV) {
			fprintf(stderr, "cowfs: clone: '%s': %s\n", src, EXDEV_MSG);
			goto out;
		}
		if (e == ENOTTY || e == ENOSYS) {
			fprintf(stderr, "cowfs: clone: '%s': %s\n", dst, NOT_COWFS);
			goto out;
		}
		/* EACCES: DST's directory refused the write, or SRC the read */
		if (e == EOPNOTSUPP || ((e == EACCES || e == EPERM) &&
		    access(parent, W_OK | X_OK) == 0))
			at = src;
		fprintf(stderr, "cowfs: clone: '%s': %s\n", at, strerror(e));
		goto out;
	}
	if (a->skipped)
		fprintf(stderr, "cowfs: clone: '%s': warning: %llu socket(s) or "
			"device node(s) skipped\n", src,
			(unsigned long long)a->skipped);
	status = 0;
out:
	free(abs);
	free(a);
	free(d);
	free(b);
	return status;
}

/* Which path an in-store clone's error is about: 1 SRC, 0 DST.  The
 * daemon says EACCES/EPERM for either side: DST's directory is at fault
 * only when the caller may not write and search it.  ENOENT is SRC's
 * entry gone or changed, unless DST's directory was removed; EIO is
 * SRC's tree. */
static int clone_at_fault(int e, int dirfd_, const char *parent)
{
	struct stat st;

	if (e == EACCES || e == EPERM)
		return access(parent, W_OK | X_OK) == 0;
	if (e == ENOENT)
		return fstat(dirfd_, &st) == 0 && st.st_nlink > 0;
	return e == EIO || e == ELOOP;
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
	/* "link/" names the directory a symlink points to: not the entry */
	int via_link = lstat(d, &pst) == 0 && (pst.st_ino != sst->st_ino ||
						pst.st_dev != sst->st_dev);
	const char *dir = dirname(d), *base = basename(b);
	if (via_link || !strcmp(base, ".") || !strcmp(base, "..") ||
	    !strcmp(base, "/")) {
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
		if (sst->st_ino != 1) {
			/* the top of a bind mount of a directory inside:
			 * its parent in the store is not to be seen here */
			errno = EXDEV;
			goto out;
		}
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

/*
 * With the kernel's writeback cache (the default), data written a moment
 * ago may still be dirty pages in the kernel, not yet in the daemon: a
 * clone would copy, and du/df would count, the older bytes.  So the
 * command has the kernel write back first, and waits for it.
 *
 * syncfs() sends every dirty page of the mount on its way, but on recent
 * kernels it does not wait for a FUSE mount's writeback to finish (a
 * daemon must not be able to hang sync(2)).  What is sent is counted in
 * /proc/meminfo's Writeback (WritebackTmp on kernels before 6.14) until
 * the daemon has answered; when that is 0 nothing of ours is in flight.
 * Otherwise (some other filesystem is writing too) the files concerned are
 * waited for one by one: sync_file_range() waits for a file's writeback
 * and sends no FSYNC to the daemon.  Errors here are write errors that
 * belong to the writer (it sees them at its own fsync or close): the
 * command goes on with what the daemon has.
 */
static long writeback_kb(void)
{
	FILE *f = fopen("/proc/meminfo", "re");
	char line[128];
	long kb, sum = 0;
	int seen = 0;

	if (!f)
		return -1;
	while (fgets(line, sizeof(line), f))
		if (sscanf(line, "Writeback: %ld kB", &kb) == 1 ||
		    sscanf(line, "WritebackTmp: %ld kB", &kb) == 1) {
			sum += kb;
			seen++;
		}
	fclose(f);
	return seen ? sum : -1;
}

static void wait_file(int fd)
{
	(void)sync_file_range(fd, 0, 0, SYNC_FILE_RANGE_WAIT_BEFORE |
			      SYNC_FILE_RANGE_WRITE |
			      SYNC_FILE_RANGE_WAIT_AFTER);
}

static void wait_one(const char *path, const char *acc, const struct stat *st)
{
	(void)path;
	if (!S_ISREG(st->st_mode))
		return;
	/* O_NONBLOCK: a FIFO swapped in since the walk must not block */
	int fd = open(acc, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_NOCTTY |
			   O_CLOEXEC);
	if (fd >= 0) {
		wait_file(fd);
		close(fd);
	}
}

/* Write back the mount of fd and wait for path's data (the whole mount
 * when path is NULL: then wait a bounded while only). */
static void flush_mount(int fd, const char *path)
{
	struct stat st;

	(void)syncfs(fd);
	if (!path) {	/* df: the whole mount, a bounded while */
		for (int i = 0; i < 200 && writeback_kb() > 0; i++)
			usleep(10000);
		return;
	}
	if (lstat(path, &st) < 0)
		return;
	if (!S_ISDIR(st.st_mode)) {
		wait_one(path, path, &st);
		return;
	}
	/* A tree: what syncfs sent stays under writeback until the daemon
	 * has it, usually a few milliseconds after a copy.  Watch the
	 * counter for up to 100 ms (it also counts other filesystems, and
	 * a writer that goes on keeps it up) before waiting file by file,
	 * which costs microseconds a file (0.3 s for 30,000 files). */
	for (int i = 0; i < 200; i++) {
		long kb = writeback_kb();
		if (kb == 0)
			return;
		if (kb < 0)
			break;
		usleep(500);
	}
	walk_tree(path, 1, wait_one);
}

int cmd_clone(int argc, char **argv)
{
	struct cowfs_ioc_clone a;
	struct stat sst, dst_st, pst;
	int rc, fd = -1, status = 1, quiet = 0;
	char *d1 = NULL, *d2 = NULL;

	if ((rc = parse_quiet("clone", argc, argv, &quiet)) >= 0)
		return rc;
	if (argc - optind != 2)
		return usage_error("clone", argc - optind < 2 ? "missing SRC or DST" :
				   "too many arguments");
	const char *src = argv[optind], *dst = argv[optind + 1];
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
		fprintf(stderr, "cowfs: clone: '%s': %s\n", dst, strerror(errno));
		goto out;
	}
	if (fstat(fd, &pst) < 0 || !on_fuse(fd)) {
		fprintf(stderr, "cowfs: clone: '%s': %s\n", dst, NOT_COWFS);
		goto out;
	}
	if (pst.st_dev != sst.st_dev) {
		status = clone_host(fd, parent, src, dst, name, quiet);
		goto out;
	}
	memset(&a, 0, sizeof(a));
	a.src_ino = sst.st_ino;
	if (src_entry(src, &sst, &a) < 0) {
		fprintf(stderr, "cowfs: clone: '%s': %s\n", src, errno == EXDEV ?
			"the top of a bind mount: name it by its path in the "
			"cowfs mount" : strerror(errno));
		goto out;
	}
	strlcpy(a.name, name, sizeof(a.name));
	flush_mount(fd, src);
	if (ioctl(fd, COWFS_IOC_CLONE, &a) < 0) {
		int e = errno;
		if (e == ENOTTY || e == ENOSYS)
			fprintf(stderr, "cowfs: clone: '%s': %s\n", dst, NOT_COWFS);
		else if (e == EXDEV)
			fprintf(stderr, "cowfs: clone: '%s': %s\n", src, EXDEV_MSG);
		else
			fprintf(stderr, "cowfs: clone: '%s': %s\n",
				clone_at_fault(e, fd, parent) ? src : dst,
				strerror(e));
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

/* --- du, df, status -------------------------------------------------- */

/* -h/-b/--json and --help; returns -1 to go on. */
static int parse_size_opts(const char *cmd, int argc, char **argv, int *exact,
			   int *json)
{
	static const struct option lo[] = {
		{ "human-readable", no_argument, NULL, 'h' },
		{ "bytes", no_argument, NULL, 'b' },
		{ "json", no_argument, NULL, 'j' },
		{ "help", no_argument, NULL, 'H' },
		{ 0 }
	};
	int c;

	*exact = !isatty(STDOUT_FILENO);
	*json = 0;
	opterr = 0;
	while ((c = getopt_long(argc, argv, ":hb", lo, NULL)) != -1) {
		switch (c) {
		case 'h':
			*exact = 0;
			break;
		case 'b':
			*exact = 1;
			break;
		case 'j':
			*json = 1;
			break;
		case 'H':
			return print_help(cmd);
		default:
			return bad_option(cmd, argc, argv, c);
		}
	}
	return -1;
}

/* Open PATH for an ioctl; fd, or -1 after the message. */
static int open_in_mount(const char *cmd, const char *path)
{
	struct stat st;
	int fd;

	if (lstat(path, &st) < 0) {
		fprintf(stderr, "cowfs: %s: '%s': %s\n", cmd, path, strerror(errno));
		return -1;
	}
	fd = open(path, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
	if (fd < 0) {
		fprintf(stderr, "cowfs: %s: '%s': %s\n", cmd, path, strerror(errno));
		return -1;
	}
	errno = 0;
	if (!on_fuse(fd)) {
		fprintf(stderr, "cowfs: %s: '%s': %s\n", cmd, path,
			errno ? strerror(errno) : NOT_COWFS);
		close(fd);
		return -1;
	}
	return fd;
}

/* For df and status, which are about the whole mount: a directory fd
 * in the mount that holds path (path itself when it is a directory; its
 * parent for a file, symlink, FIFO or device, which are never opened). */
static int open_mount_of(const char *cmd, const char *path)
{
	struct stat st;
	char *dup;
	int fd;

	if (lstat(path, &st) < 0) {
		fprintf(stderr, "cowfs: %s: '%s': %s\n", cmd, path, strerror(errno));
		return -1;
	}
	if (S_ISDIR(st.st_mode))
		return open_in_mount(cmd, path);
	if (!(dup = strdup(path)))
		err(1, "%s", cmd);
	fd = open(dirname(dup), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	free(dup);
	if (fd < 0) {
		fprintf(stderr, "cowfs: %s: '%s': %s\n", cmd, path, strerror(errno));
		return -1;
	}
	if (!on_fuse(fd)) {
		fprintf(stderr, "cowfs: %s: '%s': %s\n", cmd, path, NOT_COWFS);
		close(fd);
		return -1;
	}
	return fd;
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
	if (nr == COWFS_IOC_DF) {
		fd = open_mount_of(cmd, path);
		goto ioctl;
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
			fprintf(stderr, "cowfs: %s: '%s': %s\n", cmd, path, NOT_COWFS);
			return -1;
		}
		u->other = 1;
		return 0;
	}
	fd = open_in_mount(cmd, path);
ioctl:
	if (fd < 0)
		return -1;
	flush_mount(fd, nr == COWFS_IOC_DF ? NULL : path);
	if (ioctl(fd, nr, u) < 0) {
		int e = errno;
		fprintf(stderr, "cowfs: %s: '%s': %s\n", cmd, path,
			e == ENOTTY || e == ENOSYS ? NOT_COWFS : strerror(e));
		close(fd);
		return -1;
	}
	close(fd);
	return 0;
}

/* A size for a du column: a bare number in bytes, or "1.5G"-style. */
static void col_size(char *buf, size_t len, uint64_t v, int exact)
{
	char *sp;

	if (exact) {
		snprintf(buf, len, "%llu", (unsigned long long)v);
		return;
	}
	fmt_size(buf, len, v, 0);
	sp = strchr(buf, ' ');
	if (sp && sp[1] == 'b')		/* "512 bytes" -> "512B" */
		strcpy(sp, "B");
	else if (sp) {			/* "1.5 GiB" -> "1.5G" */
		sp[0] = sp[1];
		sp[1] = 0;
	}
}

int cmd_du(int argc, char **argv)
{
	int json, exact, rc, first = 1, status = 0;

	if ((rc = parse_size_opts("du", argc, argv, &exact, &json)) >= 0)
		return rc;
	if (optind >= argc)
		return usage_error("du", "missing PATH");
	if (json)
		printf("[");
	else
		printf("%12s %12s %12s %12s  %s\n", "Logical", "Shared",
		       "Exclusive", "Host", "Path");
	for (int i = optind; i < argc; i++) {
		struct cowfs_ioc_usage u;
		if (usage_ioctl("du", argv[i], COWFS_IOC_DU, &u)) {
			status = 1;
			continue;
		}
		if (json) {
			printf("%s\n  {\"path\": ", first ? "" : ",");
			json_str(stdout, argv[i]);
			printf(", \"logical\": %llu, \"shared\": %llu, \"exclusive\": %llu, "
			       "\"host\": %llu, \"files\": %llu, \"dirs\": %llu}",
			       (unsigned long long)u.logical, (unsigned long long)u.shared,
			       (unsigned long long)u.exclusive, (unsigned long long)u.host,
			       (unsigned long long)u.files, (unsigned long long)u.dirs);
			first = 0;
		} else {
			char a[32], b[32], c[32], h[32];
			col_size(a, sizeof(a), u.logical, exact);
			col_size(b, sizeof(b), u.shared, exact);
			col_size(c, sizeof(c), u.exclusive, exact);
			col_size(h, sizeof(h), u.host, exact);
			printf("%12s %12s %12s %12s  %s\n", a, b, c, h, argv[i]);
		}
	}
	if (json)
		printf("\n]\n");
	return status;
}

int cmd_df(int argc, char **argv)
{
	int json, exact, rc;
	struct cowfs_ioc_usage u;

	if ((rc = parse_size_opts("df", argc, argv, &exact, &json)) >= 0)
		return rc;
	if (argc - optind != 1)
		return usage_error("df", argc - optind ? "too many arguments" :
				   "missing MOUNTPOINT");
	const char *mnt = argv[optind];
	if (usage_ioctl("df", mnt, COWFS_IOC_DF, &u))
		return 1;
	/* bytes seen per byte kept on disk (store objects and origin files) */
	uint64_t kept = u.exclusive + u.origin;
	double ratio = kept ? (double)u.logical / (double)kept : 0.0;
	if (json) {
		printf("{\"mountpoint\": ");
		json_str(stdout, mnt);
		printf(", \"logical\": %llu, \"physical\": %llu, \"shared\": %llu, "
		       "\"ratio\": %.3f, \"metadata\": %llu, \"files\": %llu, "
		       "\"dirs\": %llu, \"objects\": %llu, \"block_size\": %llu, "
		       "\"origin\": %llu, \"host\": %llu}\n",
		       (unsigned long long)u.logical, (unsigned long long)u.exclusive,
		       (unsigned long long)u.shared, ratio,
		       (unsigned long long)u.meta_bytes, (unsigned long long)u.files,
		       (unsigned long long)u.dirs, (unsigned long long)u.objects,
		       (unsigned long long)u.block_size, (unsigned long long)u.origin,
		       (unsigned long long)u.host);
		return 0;
	}
	char a[32], b[32], c[32], d[32], bs[32], h[32];
	fmt_size(a, sizeof(a), u.logical, exact);
	fmt_size(b, sizeof(b), u.exclusive, exact);
	fmt_size(h, sizeof(h), u.host, exact);
	fmt_size(c, sizeof(c), u.shared, exact);
	fmt_size(d, sizeof(d), u.meta_bytes, exact);
	fmt_size(bs, sizeof(bs), u.block_size, 0);
	printf("logical:         %s in %llu file%s, %llu director%s\n", a,
	       (unsigned long long)u.files, u.files == 1 ? "" : "s",
	       (unsigned long long)u.dirs, u.dirs == 1 ? "y" : "ies");
	printf("physical:        %s in the store (%llu object%s, blocks of %s)\n",
	       b, (unsigned long long)u.objects, u.objects == 1 ? "" : "s", bs);
	printf("on the host:     %s taken by the object files\n", h);
	printf("shared:          %s in blocks used more than once\n", c);
	if (u.origin) {
		char e[32];
		fmt_size(e, sizeof(e), u.origin, exact);
		printf("from origins:    %s read in place from host files "
		       "(no space in the store)\n", e);
		printf("sharing ratio:   %.2f (logical / (physical + origin "
		       "blocks, counted whole))\n", ratio);
	} else {
		printf("sharing ratio:   %.2f (logical / physical)\n", ratio);
	}
	printf("metadata:        %s\n", d);
	return 0;
}

static void fmt_uptime(char *buf, size_t len, uint64_t ns)
{
	uint64_t s = ns / 1000000000ull;
	if (s >= 86400)
		snprintf(buf, len, "%llud %02llu:%02llu:%02llu",
			 (unsigned long long)(s / 86400),
			 (unsigned long long)(s / 3600 % 24),
			 (unsigned long long)(s / 60 % 60),
			 (unsigned long long)(s % 60));
	else
		snprintf(buf, len, "%02llu:%02llu:%02llu",
			 (unsigned long long)(s / 3600),
			 (unsigned long long)(s / 60 % 60),
			 (unsigned long long)(s % 60));
}

int cmd_status(int argc, char **argv)
{
	struct cowfs_ioc_status *s;
	int json, exact, rc, fd, status = 1;

	if ((rc = parse_size_opts("status", argc, argv, &exact, &json)) >= 0)
		return rc;
	if (argc - optind != 1)
		return usage_error("status", argc - optind ? "too many arguments" :
				   "missing MOUNTPOINT");
	const char *mnt = argv[optind];
	fd = open_mount_of("status", mnt);
	if (fd < 0)
		return 1;
	s = calloc(1, sizeof(*s));
	if (!s)
		err(1, "status");
	if (ioctl(fd, COWFS_IOC_STATUS, s) < 0) {
		int e = errno;
		fprintf(stderr, "cowfs: status: '%s': %s\n", mnt,
			e == ENOTTY || e == ENOSYS ? NOT_COWFS : strerror(e));
		goto out;
	}
	s->store[sizeof(s->store) - 1] = 0;
	s->origin_dir[sizeof(s->origin_dir) - 1] = 0;
	s->log[sizeof(s->log) - 1] = 0;
	status = 0;
	if (json) {
		printf("{\"mountpoint\": ");
		json_str(stdout, mnt);
		printf(", \"store\": ");
		json_str(stdout, s->store);
		printf(", \"origin\": ");
		if (s->origin_dir[0])
			json_str(stdout, s->origin_dir);
		else
			printf("null");
		printf(", \"log\": ");
		json_str(stdout, s->log);
		printf(", \"pid\": %llu, \"uptime\": %.3f, \"read_only\": %s, "
		       "\"block_size\": %llu, \"inodes\": %llu, \"files\": %llu, "
		       "\"dirs\": %llu, \"other\": %llu, \"shared_files\": %llu, "
		       "\"origin_files\": %llu, \"objects\": %llu, \"logical\": %llu, "
		       "\"physical\": %llu, \"shared\": %llu, \"origin_bytes\": %llu, "
		       "\"host_bytes\": %llu, \"metadata\": %llu, "
		       "\"passthrough\": %s, \"passthrough_opens\": %llu, "
		       "\"passthrough_files\": %llu}\n",
		       (unsigned long long)s->pid, (double)s->uptime_ns / 1e9,
		       s->ro ? "true" : "false",
		       (unsigned long long)s->block_size, (unsigned long long)s->inodes,
		       (unsigned long long)s->files, (unsigned long long)s->dirs,
		       (unsigned long long)s->other,
		       (unsigned long long)s->shared_files,
		       (unsigned long long)s->origin_files,
		       (unsigned long long)s->objects, (unsigned long long)s->logical,
		       (unsigned long long)s->physical, (unsigned long long)s->shared,
		       (unsigned long long)s->origin, (unsigned long long)s->host_bytes,
		       (unsigned long long)s->meta_bytes,
		       s->passthrough ? "true" : "false",
		       (unsigned long long)s->pt_opens,
		       (unsigned long long)s->pt_files);
		goto out;
	}
	char bs[32], up[32], lg[32], ph[32], sh[32], og[32], hb[32], md[32];
	fmt_size(bs, sizeof(bs), s->block_size, 0);
	fmt_uptime(up, sizeof(up), s->uptime_ns);
	fmt_size(lg, sizeof(lg), s->logical, exact);
	fmt_size(ph, sizeof(ph), s->physical, exact);
	fmt_size(sh, sizeof(sh), s->shared, exact);
	fmt_size(og, sizeof(og), s->origin, exact);
	fmt_size(hb, sizeof(hb), s->host_bytes, exact);
	fmt_size(md, sizeof(md), s->meta_bytes, exact);
	printf("mount point:   %s\n", mnt);
	printf("store:         %s (%s)\n", s->store, s->ro ? "read-only" : "read-write");
	printf("block size:    %s\n", bs);
	printf("origin:        %s\n", s->origin_dir[0] ? s->origin_dir : "none");
	printf("daemon pid:    %llu\n", (unsigned long long)s->pid);
	printf("log:           %s\n", s->log[0] ? s->log : "unknown");
	printf("uptime:        %s\n", up);
	printf("inodes:        %llu (%llu files, %llu directories, %llu other)\n",
	       (unsigned long long)s->inodes, (unsigned long long)s->files,
	       (unsigned long long)s->dirs, (unsigned long long)s->other);
	printf("sharing files: %llu (with blocks shared with another file or "
	       "read from an origin)\n", (unsigned long long)s->shared_files);
	printf("origin files:  %llu\n", (unsigned long long)s->origin_files);
	printf("logical:       %s\n", lg);
	printf("physical:      %s in %llu objects\n", ph,
	       (unsigned long long)s->objects);
	printf("shared:        %s\n", sh);
	printf("from origins:  %s\n", og);
	printf("host usage:    %s (blocks the objects take on the host)\n", hb);
	printf("metadata:      %s\n", md);
out:
	close(fd);
	free(s);
	return status;
}

/* --- detach ---------------------------------------------------------- */

static struct progress dprog;
static uint64_t detach_copied;
static int detach_status;

static void detach_one(const char *path, const char *acc,
		       const struct stat *st)
{
	struct cowfs_ioc_detach d;
	if (!S_ISREG(st->st_mode))
		return;
	if (st->st_nlink > 1 && st->st_size == 0)
		return;
	/* a FIFO swapped in since the walk saw a file must not block */
	int fd = open(acc, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_NOCTTY |
			    O_CLOEXEC);
	memset(&d, 0, sizeof(d));
	if (fd >= 0)
		wait_file(fd);	/* see flush_mount() */
	if (fd < 0 || ioctl(fd, COWFS_IOC_DETACH, &d) < 0) {
		int e = errno;
		progress_clear(&dprog);
		fprintf(stderr, "cowfs: detach: '%s': %s\n", path,
			e == ENOTTY ? NOT_COWFS : strerror(e));
		detach_status = 1;
	} else {
		detach_copied += d.bytes;
	}
	if (fd >= 0)
		close(fd);
	dprog.files++;
	dprog.bytes += (uint64_t)st->st_size;
	progress_update(&dprog, 0);
}

static void count_one(const char *path, const char *acc,
		      const struct stat *st)
{
	(void)path;
	(void)acc;
	if (S_ISREG(st->st_mode)) {
		dprog.total_files++;
		dprog.total_bytes += (uint64_t)st->st_size;
	}
}

int cmd_detach(int argc, char **argv)
{
	int rc, quiet = 0;
	char b[32];

	if ((rc = parse_quiet("detach", argc, argv, &quiet)) >= 0)
		return rc;
	if (optind >= argc)
		return usage_error("detach", "missing PATH");
	progress_init(&dprog, "detach", quiet);
	for (int i = optind; i < argc; i++) {
		struct cowfs_ioc_usage u;
		struct stat st;
		/* a path outside any mount is one error, not a walk */
		if (lstat(argv[i], &st) == 0 && !S_ISREG(st.st_mode) &&
		    !S_ISDIR(st.st_mode))
			continue;
		int fd = open_in_mount("detach", argv[i]);
		memset(&u, 0, sizeof(u));
		if (fd < 0) {
			detach_status = 1;
			continue;
		}
		(void)syncfs(fd);	/* detach_one() waits file by file */
		if (ioctl(fd, COWFS_IOC_DF, &u) < 0) {
			int e = errno;
			fprintf(stderr, "cowfs: detach: '%s': %s\n", argv[i],
				e == ENOTTY || e == ENOSYS ? NOT_COWFS : strerror(e));
			close(fd);
			detach_status = 1;
			continue;
		}
		close(fd);
		if (dprog.on)
			walk_tree(argv[i], 1, count_one);
		walk_tree(argv[i], 1, detach_one);
	}
	if (dprog.on && dprog.total_files)
		progress_done(&dprog);
	fmt_size(b, sizeof(b), detach_copied, 0);
	if (detach_copied >= 1024)
		printf("%llu bytes copied from origins into the store (%s)\n",
		       (unsigned long long)detach_copied, b);
	else
		printf("%llu bytes copied from origins into the store\n",
		       (unsigned long long)detach_copied);
	return detach_status;
}
