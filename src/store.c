/*
 * store.c - host-side layout of a store (see store.h): creating, locking,
 * object files and the metadata file's atomic replacement.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cowfs/store.h"

static int write_all(int fd, const void *buf, size_t len)
{
	const char *p = buf;
	while (len) {
		ssize_t n = write(fd, p, len);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			return -errno;
		}
		p += n;
		len -= (size_t)n;
	}
	return 0;
}

static int dir_is_empty(const char *path)
{
	DIR *d = opendir(path);
	struct dirent *e;
	int empty = 1;

	if (!d)
		return -errno;
	while ((e = readdir(d))) {
		if (strcmp(e->d_name, ".") && strcmp(e->d_name, "..")) {
			empty = 0;
			break;
		}
	}
	closedir(d);
	return empty;
}

int store_create(const char *path, const void *meta, size_t len, char *err,
		 size_t errlen)
{
	int rc, dfd = -1, fd = -1;
	char sub[32];

	if (mkdir(path, 0700) < 0 && errno != EEXIST) {
		rc = -errno;
		snprintf(err, errlen, "'%s': %s", path, strerror(errno));
		return rc;
	}
	rc = dir_is_empty(path);
	if (rc <= 0) {
		if (rc == 0) {
			snprintf(err, errlen, "'%s': directory not empty", path);
			return -ENOTEMPTY;
		}
		snprintf(err, errlen, "'%s': %s", path, strerror(-rc));
		return rc;
	}
	dfd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (dfd < 0)
		goto fail;
	if (mkdirat(dfd, STORE_OBJDIR, 0700) < 0)
		goto fail;
	for (int i = 0; i < 256; i++) {
		snprintf(sub, sizeof(sub), STORE_OBJDIR "/%02x", i);
		if (mkdirat(dfd, sub, 0700) < 0)
			goto fail;
	}
	fd = openat(dfd, STORE_LOCK, O_CREAT | O_WRONLY | O_CLOEXEC, 0600);
	if (fd < 0)
		goto fail;
	close(fd);
	fd = openat(dfd, STORE_META ".tmp", O_CREAT | O_TRUNC | O_WRONLY | O_CLOEXEC,
		    0600);
	if (fd < 0)
		goto fail;
	if ((rc = write_all(fd, meta, len)) < 0) {
		errno = -rc;
		goto fail;
	}
	if (fsync(fd) < 0 || renameat(dfd, STORE_META ".tmp", dfd, STORE_META) < 0 ||
	    fsync(dfd) < 0)
		goto fail;
	close(fd);
	close(dfd);
	return 0;
fail:
	rc = -errno;
	snprintf(err, errlen, "'%s': %s", path, strerror(errno));
	if (fd >= 0)
		close(fd);
	if (dfd >= 0)
		close(dfd);
	return rc;
}

int store_open(struct store *s, const char *path, int ro, char *err,
	       size_t errlen)
{
	struct stat st;
	int rc;

	memset(s, 0, sizeof(*s));
	s->dirfd = s->objfd = s->lockfd = -1;
	s->ro = ro;
	s->path = realpath(path, NULL);
	if (!s->path) {
		rc = -errno;
		snprintf(err, errlen, "'%s': %s", path, strerror(errno));
		return rc;
	}
	s->dirfd = open(s->path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (s->dirfd < 0)
		goto fail;
	if (fstatat(s->dirfd, STORE_META, &st, 0) < 0) {
		rc = -errno;
		if (errno == ENOENT)
			snprintf(err, errlen, "'%s': not a cowfs store (no %s; "
				 "create one with 'cowfs init')", path, STORE_META);
		else
			snprintf(err, errlen, "'%s/%s': %s", path, STORE_META,
				 strerror(errno));
		store_close(s);
		return rc;
	}
	s->objfd = openat(s->dirfd, STORE_OBJDIR, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (s->objfd < 0)
		goto fail;
	s->lockfd = openat(s->dirfd, STORE_LOCK, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
	if (s->lockfd < 0)
		goto fail;
	if (flock(s->lockfd, LOCK_EX | LOCK_NB) < 0) {
		rc = errno == EWOULDBLOCK ? -EBUSY : -errno;
		pid_t pid = store_lock_owner(s->path);
		if (rc == -EBUSY && pid > 0)
			snprintf(err, errlen, "'%s': store is in use by another "
				 "cowfs daemon (pid %d)", path, (int)pid);
		else if (rc == -EBUSY)
			snprintf(err, errlen, "'%s': store is in use by another "
				 "cowfs daemon", path);
		else
			snprintf(err, errlen, "'%s': lock: %s", path, strerror(-rc));
		store_close(s);
		return rc;
	}
	return 0;
fail:
	rc = -errno;
	snprintf(err, errlen, "'%s': %s", path, strerror(errno));
	store_close(s);
	return rc;
}

void store_set_pid(struct store *s)
{
	char buf[32];
	int n = snprintf(buf, sizeof(buf), "%d\n", (int)getpid());

	if (ftruncate(s->lockfd, 0) == 0 && pwrite(s->lockfd, buf, (size_t)n, 0) < 0) {
		/* the pid is advisory; nothing depends on it */
	}
}

pid_t store_lock_owner(const char *path)
{
	char p[PATH_MAX], buf[32] = { 0 };
	int fd;
	ssize_t n;

	snprintf(p, sizeof(p), "%s/%s", path, STORE_LOCK);
	fd = open(p, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return 0;
	n = read(fd, buf, sizeof(buf) - 1);
	close(fd);
	if (n <= 0)
		return 0;
	return (pid_t)atoi(buf);
}

void store_close(struct store *s)
{
	if (s->lockfd >= 0)
		close(s->lockfd);
	if (s->objfd >= 0)
		close(s->objfd);
	if (s->dirfd >= 0)
		close(s->dirfd);
	free(s->path);
	s->path = NULL;
	s->dirfd = s->objfd = s->lockfd = -1;
}

static void obj_name(uint64_t id, char *buf, size_t len)
{
	snprintf(buf, len, "%02x/%016" PRIx64, (unsigned)(id & 0xff), id);
}

int store_obj_open(struct store *s, uint64_t id, int create)
{
	char name[40];
	int flags = (s->ro ? O_RDONLY : O_RDWR) | O_CLOEXEC;

	obj_name(id, name, sizeof(name));
	if (create)
		flags |= O_CREAT | O_TRUNC;
	int fd = openat(s->objfd, name, flags, 0600);
	return fd < 0 ? -errno : fd;
}

int store_obj_unlink(struct store *s, uint64_t id)
{
	char name[40];

	obj_name(id, name, sizeof(name));
	if (unlinkat(s->objfd, name, 0) < 0 && errno != ENOENT)
		return -errno;
	return 0;
}

int store_meta_read(struct store *s, void **buf, size_t *len)
{
	struct stat st;
	int fd = openat(s->dirfd, STORE_META, O_RDONLY | O_CLOEXEC);
	int rc = 0;

	if (fd < 0)
		return -errno;
	if (fstat(fd, &st) < 0) {
		rc = -errno;
		goto out;
	}
	*len = (size_t)st.st_size;
	*buf = malloc(*len ? *len : 1);
	if (!*buf) {
		rc = -ENOMEM;
		goto out;
	}
	for (size_t got = 0; got < *len;) {
		ssize_t n = pread(fd, (char *)*buf + got, *len - got, (off_t)got);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0) {
			rc = n < 0 ? -errno : -EIO;
			free(*buf);
			*buf = NULL;
			goto out;
		}
		got += (size_t)n;
	}
out:
	close(fd);
	return rc;
}

int store_meta_write_tmp(struct store *s, const void *buf, size_t len)
{
	int fd, rc;

	fd = openat(s->dirfd, STORE_META ".tmp",
		    O_CREAT | O_TRUNC | O_RDWR | O_CLOEXEC, 0600);
	if (fd < 0)
		return -errno;
	if ((rc = write_all(fd, buf, len)) < 0)
		goto fail;
	if (fsync(fd) < 0) {
		rc = -errno;
		goto fail;
	}
	return fd;
fail:
	close(fd);
	unlinkat(s->dirfd, STORE_META ".tmp", 0);
	return rc;
}

int store_meta_install_tmp(struct store *s)
{
	if (renameat(s->dirfd, STORE_META ".tmp", s->dirfd, STORE_META) < 0 ||
	    fsync(s->dirfd) < 0)
		return -errno;
	return 0;
}

void store_meta_drop_tmp(struct store *s)
{
	unlinkat(s->dirfd, STORE_META ".tmp", 0);
}

int store_meta_replace(struct store *s, const void *buf, size_t len)
{
	int fd = store_meta_write_tmp(s, buf, len), rc;

	if (fd < 0)
		return fd;
	if ((rc = store_meta_install_tmp(s))) {
		close(fd);
		store_meta_drop_tmp(s);
		return rc;
	}
	return fd;
}

int store_meta_cut(struct store *s, const void *hdr, size_t hlen,
		   uint64_t len)
{
	int fd = openat(s->dirfd, STORE_META, O_RDWR | O_CLOEXEC);
	int rc = 0;

	if (fd < 0)
		return -errno;
	if (pwrite(fd, hdr, hlen, 0) != (ssize_t)hlen ||
	    ftruncate(fd, (off_t)len) < 0 || fsync(fd) < 0)
		rc = errno ? -errno : -EIO;
	close(fd);
	return rc;
}

int store_meta_open(struct store *s)
{
	int fd = openat(s->dirfd, STORE_META,
			(s->ro ? O_RDONLY : O_RDWR) | O_CLOEXEC);
	return fd < 0 ? -errno : fd;
}

/*
 * How the last daemon stopped: a line "stop RC" (0 or -errno) appended to
 * the lock file after its pid, written after fs_close() and before the
 * daemon's second (OFD) lock goes; the next daemon's store_set_pid()
 * truncates it.
 */
int store_record_stop(const char *path, int rc)
{
	char p[PATH_MAX], buf[32];
	int fd, n, ret = 0;

	snprintf(p, sizeof(p), "%s/%s", path, STORE_LOCK);
	fd = open(p, O_WRONLY | O_APPEND | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	n = snprintf(buf, sizeof(buf), "stop %d\n", rc);
	if (write_all(fd, buf, (size_t)n) < 0 || fsync(fd) < 0)
		ret = -errno;
	close(fd);
	return ret;
}

int store_last_stop(const char *path, int *rc)
{
	char p[PATH_MAX], buf[128] = { 0 }, *s;
	ssize_t n;
	int fd;

	snprintf(p, sizeof(p), "%s/%s", path, STORE_LOCK);
	fd = open(p, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	n = read(fd, buf, sizeof(buf) - 1);
	close(fd);
	if (n <= 0 || !(s = strstr(buf, "\nstop ")))
		return -ENODATA;
	*rc = atoi(s + 6);
	return 0;
}
