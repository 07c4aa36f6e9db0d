/*
 * cli_mount.c - cowfs mount and umount: mount options (cowfs's own, the
 * ones fstab and systemd add, libfuse's), the 'cowfs STORE MNT -o OPTS'
 * form that mount.fuse3 runs and the mount.fuse.cowfs helper form, where
 * a daemonized cowfs logs (syslog by default), waiting for a previous
 * daemon of the same store that is still saving, and how umount learns
 * whether the daemon's last save worked.
 *
 * The daemon holds two locks on STORE/lock: the store's flock (taken by
 * the core in fs_open, released in fs_close) and an fcntl OFD lock taken
 * here after fs_open and released only after the stop status is written
 * (store_record_stop).  flock and OFD locks do not interact, so 'cowfs
 * umount' waits for both and then reads a status that is complete.
 */
#include <err.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <malloc.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <syslog.h>
#include <unistd.h>

#include "cowfs/fs.h"
#include "cowfs/fuse_ops.h"
#include "cowfs/status.h"
#include "cowfs/store.h"
#include "cli.h"

#define MOUNT_WAIT_SECS 120

struct mount_args {
	struct fs_options fo;
	struct cowfs_mount m;
	char fuse_opts[8192];
	char *logfile;		/* owned */
	char *origin;		/* owned */
};

/* Options fstab, mount(8) and systemd use, which mean nothing to the
 * daemon: dropped without a word ("relatime" is what a FUSE mount gets
 * anyway; libfuse does not know the word). */
static int ignored_opt(const char *o)
{
	static const char *names[] = {
		"defaults", "auto", "noauto", "nofail", "_netdev", "user",
		"nouser", "users", "owner", "group", "loop", "bg", "fg",
		"sw", "xx", "relatime", NULL
	};
	for (int i = 0; names[i]; i++)
		if (!strcmp(o, names[i]))
			return 1;
	return !strncmp(o, "x-", 2) || !strncmp(o, "comment=", 8) ||
	       !strncmp(o, "_", 1);
}

/* Take one -o list apart into cowfs's own options, ignored ones and
 * libfuse's.  Returns 0 or the exit status of a usage error. */
static int split_opts(const char *in, struct mount_args *a, const char *cmd)
{
	char *dup = strdup(in), *save = NULL, *tok;
	int rc = 0;

	if (!dup)
		err(1, "%s", cmd);
	for (tok = strtok_r(dup, ",", &save); tok && !rc;
	     tok = strtok_r(NULL, ",", &save)) {
		if (!strcmp(tok, "passthrough") || !strcmp(tok, "nopassthrough")) {
			a->m.passthrough = tok[0] == 'p';
			continue;
		}
		if (!strncmp(tok, "commit=", 7)) {
			char *end;
			long v = strtol(tok + 7, &end, 10);
			if (end == tok + 7 || *end || v < 1 || v > 3600)
				rc = usage_error(cmd, "invalid commit interval "
						 "'%s' (1 to 3600 seconds)", tok + 7);
			a->fo.commit_secs = (unsigned)v;
			continue;
		}
		if (!strncmp(tok, "logfile=", 8) || !strncmp(tok, "origin=", 7)) {
			char **p = tok[0] == 'l' ? &a->logfile : &a->origin;
			const char *v = strchr(tok, '=') + 1;
			if (!*v) {
				rc = usage_error(cmd, "option '%s' needs a value", tok);
				continue;
			}
			free(*p);
			if (!(*p = strdup(v)))
				err(1, "%s", cmd);
			continue;
		}
		if (ignored_opt(tok))
			continue;
		/* libfuse's own spelling is no_writeback_cache; take both */
		if (!strcmp(tok, "writeback_cache") ||
		    !strcmp(tok, "nowriteback_cache") ||
		    !strcmp(tok, "no_writeback_cache")) {
			a->m.no_writeback = tok[0] == 'n';
			continue;
		}
		if (!strcmp(tok, "ro"))
			a->fo.ro = 1;
		if (!strcmp(tok, "rw"))
			a->fo.ro = 0;
		if (a->fuse_opts[0])
			strlcat(a->fuse_opts, ",", sizeof(a->fuse_opts));
		if (strlcat(a->fuse_opts, tok, sizeof(a->fuse_opts)) >=
		    sizeof(a->fuse_opts))
			rc = usage_error(cmd, "too many options");
	}
	free(dup);
	return rc;
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

/* --- the daemon's log ------------------------------------------------ */

/*
 * Without -f and without logfile=, the daemon's standard error (which
 * fuse_daemonize() points at /dev/null) is useless; stderr becomes a
 * stream that writes to the terminal while this is still the process
 * that was started, and to syslog (LOG_DAEMON, ident "cowfs", so
 * journald where it runs) once it is the daemon.  fs_log() writes to
 * stderr when no logfile is set; its "DATE TIME cowfs[PID]: " prefix is
 * dropped since syslog adds its own.
 */
static pid_t log_parent;
static char log_buf[2048];
static size_t log_len;

static void log_flush_line(void)
{
	const char *s = log_buf;
	int prio = LOG_NOTICE;

	log_buf[log_len] = 0;
	/* "2026-01-01 12:00:00 cowfs[123]: " */
	if (log_len > 20 && s[4] == '-' && s[7] == '-' && s[13] == ':' &&
	    !strncmp(s + 19, " cowfs[", 7)) {
		const char *p = strstr(s + 19, "]: ");
		if (p)
			s = p + 3;
	}
	if (!strncmp(s, "error", 5) || !strncmp(s, "fuse:", 5))
		prio = LOG_ERR;
	else if (!strncmp(s, "warning", 7) || strstr(s, "EIO") ||
		 strstr(s, " fail"))
		prio = LOG_WARNING;
	if (*s)
		syslog(prio, "%s", s);
	log_len = 0;
}

static ssize_t log_write(void *cookie, const char *buf, size_t len)
{
	(void)cookie;
	if (getpid() == log_parent) {
		size_t done = 0;
		while (done < len) {
			ssize_t n = write(STDERR_FILENO, buf + done, len - done);
			if (n < 0 && errno == EINTR)
				continue;
			if (n <= 0)
				break;
			done += (size_t)n;
		}
		return (ssize_t)len;
	}
	for (size_t i = 0; i < len; i++) {
		if (buf[i] == '\n') {
			log_flush_line();
			continue;
		}
		if (log_len < sizeof(log_buf) - 1)
			log_buf[log_len++] = buf[i];
	}
	return (ssize_t)len;
}

static int log_to_syslog(void)
{
	cookie_io_functions_t io = { .write = log_write };
	FILE *f = fopencookie(NULL, "w", io);

	if (!f)
		return -1;
	setvbuf(f, NULL, _IOLBF, 0);
	log_parent = getpid();
	openlog("cowfs", LOG_PID, LOG_DAEMON);
	stderr = f;
	return 0;
}

/* --- waiting for a store's daemon ------------------------------------ */

/* Is the lock file free of both the daemon's flock and its OFD lock? */
static int lock_free(int fd)
{
	struct flock fl = { .l_type = F_RDLCK, .l_whence = SEEK_SET };

	if (flock(fd, LOCK_SH | LOCK_NB) < 0)
		return 0;
	flock(fd, LOCK_UN);
	if (fcntl(fd, F_OFD_SETLK, &fl) < 0)
		return errno != EAGAIN && errno != EACCES;
	fl.l_type = F_UNLCK;
	fcntl(fd, F_OFD_SETLK, &fl);
	return 1;
}

/*
 * Before a mount: a daemon that still holds the store although no mount
 * of it is left (it was unmounted and is writing its checkpoint) will
 * let go soon; wait for it, saying so, rather than fail.  Returns 0 when
 * the store is free (or held by a daemon that serves a mount: fs_open
 * then says it is in use).
 */
static void wait_saving_daemon(const char *store_abs)
{
	char lockp[PATH_MAX];
	int fd, said = 0;
	double start = now_secs();

	snprintf(lockp, sizeof(lockp), "%s/%s", store_abs, STORE_LOCK);
	fd = open(lockp, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return;
	while (!lock_free(fd) && !store_is_mounted(store_abs)) {
		if (now_secs() - start > MOUNT_WAIT_SECS)
			break;
		if (!said) {
			pid_t pid = store_lock_owner(store_abs);
			fprintf(stderr, "cowfs: mount: '%s': waiting for the "
				"store's previous daemon (pid %d) to finish saving\n",
				store_abs, (int)pid);
			said = 1;
		}
		usleep(50000);
	}
	close(fd);
}

/* --- mount ----------------------------------------------------------- */

static int absolutize(char **path)
{
	char *cwd, *p;

	if (!*path || (*path)[0] == '/')
		return 0;
	cwd = getcwd(NULL, 0);
	if (!cwd)
		return -1;
	if (asprintf(&p, "%s/%s", cwd, *path) < 0) {
		free(cwd);
		return -1;
	}
	free(cwd);
	free(*path);
	*path = p;
	return 0;
}

static int mount_main(int argc, char **argv, const char *cmd)
{
	static const struct option lo[] = {
		{ "origin", required_argument, NULL, 'O' },
		{ "help", no_argument, NULL, 'H' },
		{ 0 }
	};
	struct mount_args a;
	char errbuf[1024], *store_abs = NULL, *mnt_abs = NULL, *origin_abs = NULL;
	const char *store, *mnt, *log_target;
	struct fs *fs = NULL;
	struct stat st;
	int c, rc = 0, lockfd = -1;

	/* A fixed threshold: glibc otherwise raises it to the size of each
	 * big block freed (up to 32 MiB), so that the big transient buffers
	 * of a load or a clone (tables, the metadata read) come from the
	 * heap and leave resident holes under the inodes' data: 6-7 bytes of
	 * RSS an inode in a 1M-inode store.  Mapped, they go back whole.  A
	 * fixed mmap threshold also stops the trim threshold (128 KiB) from
	 * moving up, so freed heap tops go back too. */
	mallopt(M_MMAP_THRESHOLD, 1 << 20);
	memset(&a, 0, sizeof(a));
	opterr = 0;
	/* -s -n -v -t TYPE: what mount(8) gives a helper; no meaning here */
	while ((c = getopt_long(argc, argv, ":fdo:hsnvt:", lo, NULL)) != -1) {
		switch (c) {
		case 'O':
			free(a.origin);
			if (!(a.origin = strdup(optarg)))
				err(1, "%s", cmd);
			break;
		case 'f':
			a.m.foreground = 1;
			break;
		case 'd':
			a.m.debug = 1;
			a.m.foreground = 1;
			a.fo.debug = 1;
			break;
		case 'o':
			rc = split_opts(optarg, &a, cmd);
			if (rc)
				goto out;
			break;
		case 's':
		case 'n':
		case 'v':
		case 't':
			break;
		case 'h':
		case 'H':
			rc = print_help("mount");
			goto out;
		default:
			rc = bad_option("mount", argc, argv, c);
			goto out;
		}
	}
	if (argc - optind != 2) {
		rc = usage_error("mount", argc - optind < 2 ?
				 "missing STORE or MOUNTPOINT" : "too many arguments");
		goto out;
	}
	store = argv[optind];
	mnt = argv[optind + 1];
	/* a bad option is a usage error, found before the store is opened */
	if (a.fuse_opts[0]) {
		char bad[256];
		int e = cowfs_fuse_check_opts(a.fuse_opts, bad, sizeof(bad));
		if (e == -EINVAL) {
			rc = usage_error("mount", "unknown option '%s'", bad);
			goto out;
		}
	}
	rc = 1;
	if (stat(mnt, &st) < 0 || !S_ISDIR(st.st_mode)) {
		int e = stat(mnt, &st) < 0 ? errno : ENOTDIR;
		fprintf(stderr, "cowfs: %s: '%s': %s\n", cmd, mnt, strerror(e));
		goto out;
	}
	/* The daemon chdirs to /: every path it keeps must be absolute (a
	 * relative mount point could not be unmounted on SIGTERM). */
	mnt_abs = realpath(mnt, NULL);
	if (!mnt_abs || absolutize(&a.logfile) < 0) {
		fprintf(stderr, "cowfs: %s: '%s': %s\n", cmd, mnt, strerror(errno));
		goto out;
	}
	a.fo.logfile = a.logfile;
	if (a.origin) {
		origin_abs = realpath(a.origin, NULL);
		if (!origin_abs || stat(origin_abs, &st) < 0 || !S_ISDIR(st.st_mode)) {
			fprintf(stderr, "cowfs: %s: origin '%s': %s\n", cmd, a.origin,
				origin_abs ? strerror(ENOTDIR) : strerror(errno));
			goto out;
		}
		/* cowfs init happens implicitly for a new store */
		if (access(store, F_OK) < 0 && errno == ENOENT &&
		    fs_init_store(store, 16, errbuf, sizeof(errbuf))) {
			fprintf(stderr, "cowfs: %s: %s\n", cmd, errbuf);
			goto out;
		}
	}
	store_abs = realpath(store, NULL);
	if (store_abs)
		wait_saving_daemon(store_abs);
	if (fs_open(store, &a.fo, &fs, errbuf, sizeof(errbuf))) {
		fprintf(stderr, "cowfs: %s: %s\n", cmd, errbuf);
		goto out;
	}
	if (origin_abs && fs_attach_origin(fs, origin_abs, errbuf, sizeof(errbuf))) {
		fprintf(stderr, "cowfs: %s: %s\n", cmd, errbuf);
		goto out_close;
	}
	/* the second lock: held until the stop status is written */
	if (store_abs) {
		char lockp[PATH_MAX];
		struct flock fl = { .l_type = F_WRLCK, .l_whence = SEEK_SET };
		snprintf(lockp, sizeof(lockp), "%s/%s", store_abs, STORE_LOCK);
		lockfd = open(lockp, O_RDWR | O_CLOEXEC);
		if (lockfd >= 0 && fcntl(lockfd, F_OFD_SETLK, &fl) < 0) {
			close(lockfd);
			lockfd = -1;
		}
	}
	append_fsname(a.fuse_opts, sizeof(a.fuse_opts), store_abs ? store_abs : store);
	if (a.logfile)
		log_target = a.logfile;
	else if (a.m.foreground)
		log_target = "stderr";
	else
		log_target = "syslog";
	fs_status_daemon(log_target);
	if (!a.m.foreground && log_to_syslog() < 0)
		fprintf(stderr, "cowfs: %s: no syslog stream: %s\n", cmd,
			strerror(errno));
	a.m.mountpoint = mnt_abs;
	a.m.fuse_opts = a.fuse_opts;
	rc = cowfs_fuse_run(fs, &a.m);
	if (rc)
		fprintf(stderr, "cowfs: %s: '%s': could not mount\n", cmd, mnt);
	rc = rc ? 1 : 0;
out_close:
	c = fs_close(fs);
	if (c) {
		fprintf(stderr, "cowfs: %s: '%s': the metadata could not be "
			"saved: %s\n", cmd, store, strerror(-c));
		rc = 1;
	}
	if (store_abs && lockfd >= 0)
		store_record_stop(store_abs, c);
	if (lockfd >= 0)
		close(lockfd);
out:
	free(store_abs);
	free(mnt_abs);
	free(origin_abs);
	free(a.logfile);
	free(a.origin);
	return rc;
}

int cmd_mount(int argc, char **argv)
{
	return mount_main(argc, argv, "mount");
}

int cli_mount_helper(int argc, char **argv, int helper_mode)
{
	(void)helper_mode;
	optind = 1;
	return mount_main(argc, argv, "mount");
}

/* --- umount ---------------------------------------------------------- */

int cmd_umount(int argc, char **argv)
{
	static const struct option lo[] = {
		{ "help", no_argument, NULL, 'H' },
		{ 0 }
	};
	char lockp[PATH_MAX], *mnt = NULL, *store = NULL;
	int c, rc = 1, fd, status = 0, stop = 0;
	pid_t pid;

	opterr = 0;
	while ((c = getopt_long(argc, argv, ":h", lo, NULL)) != -1) {
		if (c == 'h' || c == 'H')
			return print_help("umount");
		return bad_option("umount", argc, argv, c);
	}
	if (argc - optind != 1)
		return usage_error("umount", argc - optind < 1 ? "missing MOUNTPOINT" :
				   "too many arguments");
	const char *arg = argv[optind];
	mnt = realpath(arg, NULL);
	if (!mnt) {
		fprintf(stderr, "cowfs: umount: '%s': %s\n", arg, strerror(errno));
		return 1;
	}
	store = mount_source(mnt);
	if (!store) {
		fprintf(stderr, "cowfs: umount: '%s': not a cowfs mount\n", arg);
		goto out;
	}
	pid = fork();
	if (pid == 0) {
		execlp("fusermount3", "fusermount3", "-u", "--", mnt, (char *)NULL);
		_exit(127);
	}
	if (pid < 0 || waitpid(pid, &status, 0) < 0 || !WIFEXITED(status) ||
	    WEXITSTATUS(status)) {
		fprintf(stderr, "cowfs: umount: '%s': fusermount3 -u failed\n", arg);
		goto out;
	}
	/* Wait for the daemon to write its checkpoint and let go. */
	snprintf(lockp, sizeof(lockp), "%s/%s", store, STORE_LOCK);
	fd = open(lockp, O_RDONLY | O_CLOEXEC);
	rc = 0;
	if (fd >= 0) {
		double start = now_secs();
		while (!lock_free(fd)) {
			if (now_secs() - start > 600) {
				fprintf(stderr, "cowfs: umount: '%s': the daemon has "
					"not exited after 10 minutes\n", store);
				rc = 1;
				break;
			}
			usleep(20000);
		}
		close(fd);
	}
	if (!rc && store_last_stop(store, &stop) == 0 && stop) {
		fprintf(stderr, "cowfs: umount: '%s': the daemon could not save "
			"the store's metadata at unmount: %s (changes since the last "
			"commit are lost; see the daemon's log)\n", arg,
			strerror(-stop));
		rc = 1;
	}
out:
	free(mnt);
	free(store);
	return rc;
}
