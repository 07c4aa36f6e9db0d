/*
 * object.c - objects, their open-fd cache and pins, the dead-object queue,
 * origin files (open and identity check) and origin prefetch.  What it
 * owns and its rules are in include/cowfs/object.h.
 *
 * No host file is opened, stat()ed or closed here while fs->lock is held:
 * a caller pins the object under the lock (obj_hold), drops the lock, and
 * obj_ready() does the syscalls and takes the lock again only to install
 * the fd.  Two threads may open the same object at once; the first to
 * install wins and the other closes its fd.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cowfs/fs_impl.h"

#define EVICT_MAX 8

static int obj_cmp(struct object *a, struct object *b)
{
	return (a->id < b->id) ? -1 : (a->id > b->id);
}
RB_GENERATE(object_tree, object, node, obj_cmp)

struct object *obj_get(struct fs *fs, uint64_t id)
{
	struct object key = { .id = id };
	return RB_FIND(object_tree, &fs->objects, &key);
}

struct object *obj_new(struct fs *fs, uint64_t id, uint64_t owner)
{
	struct object *o = calloc(1, sizeof(*o));
	if (!o)
		return NULL;
	o->id = id;
	o->owner = owner;
	o->fd = -1;
	RB_INSERT(object_tree, &fs->objects, o);
	if (id >= fs->next_obj)
		fs->next_obj = id + 1;
	return o;
}

size_t obj_evict(struct fs *fs, int *fds, size_t max)
{
	size_t n = 0;

	while (n < max && fs->nfds >= fs->max_fds && !TAILQ_EMPTY(&fs->lru)) {
		struct object *o = TAILQ_FIRST(&fs->lru);
		TAILQ_REMOVE(&fs->lru, o, lru);
		fds[n++] = o->fd;
		o->fd = -1;
		fs->nfds--;
	}
	return n;
}

void obj_close_fds(const int *fds, size_t n)
{
	LOCK_ASSERT_UNLOCKED_FS();
	for (size_t i = 0; i < n; i++)
		close(fds[i]);
}

int obj_adopt_fd(struct fs *fs, struct object *o, int fd)
{
	if (o->fd >= 0)
		return fd;
	o->fd = fd;
	fs->nfds++;
	if (o->pins == 0)
		TAILQ_INSERT_TAIL(&fs->lru, o, lru);
	return -1;
}

bool obj_hold(struct fs *fs, struct object *o)
{
	if (o->fd >= 0 && o->pins == 0)
		TAILQ_REMOVE(&fs->lru, o, lru);
	o->pins++;
	return o->fd < 0 || o->opath;
}

void obj_unpin(struct fs *fs, struct object *o)
{
	if (--o->pins == 0 && o->fd >= 0)
		TAILQ_INSERT_TAIL(&fs->lru, o, lru);
}

int obj_ready(struct fs *fs, struct object *o)
{
	int evicted[EVICT_MAX];
	size_t nev;
	int fd;

	LOCK_ASSERT_UNLOCKED_FS();
	lock_take(fs, LOCK_FS);
	fd = o->fd;
	nev = fd < 0 ? obj_evict(fs, evicted, EVICT_MAX) : 0;
	lock_drop(fs, LOCK_FS);
	obj_close_fds(evicted, nev);
	if (fd >= 0) {
		/* cached: an origin must still be the file that was cloned */
		return o->opath && origin_check(fs, o, fd) ? -EIO : fd;
	}
	fd = o->opath ? origin_open(fs, o) : store_obj_open(&fs->store, o->id, 0);
	if (fd < 0) {
		if (!o->opath)
			fs_log(fs, "error: object %016llx: open: %s",
			       (unsigned long long)o->id, strerror(-fd));
		return fd == -ENOENT ? -EIO : fd;
	}
	lock_take(fs, LOCK_FS);
	int spare = obj_adopt_fd(fs, o, fd);	/* -1, or ours when raced */
	fd = o->fd;
	lock_drop(fs, LOCK_FS);
	if (spare >= 0)
		close(spare);
	return fd;
}

int obj_pin(struct fs *fs, struct object *o)
{
	int rc = 0;

	if (!obj_hold(fs, o))
		return 0;
	unsigned t = lock_fs_suspend(fs);
	int fd = obj_ready(fs, o);
	lock_fs_resume(fs, t);
	if (fd < 0) {
		obj_unpin(fs, o);
		rc = fd;
	}
	return rc;
}

void obj_maybe_doom(struct fs *fs, struct object *o)
{
	if (o->nlive || o->owner || o->doomed)
		return;
	if (fs->nunlinks == fs->cap_unlinks) {
		size_t cap = fs->cap_unlinks ? fs->cap_unlinks * 2 : 64;
		struct object **n = realloc(fs->unlinks, cap * sizeof(*n));
		if (!n)
			return;	/* leaked until fsck --repair; never wrong */
		fs->unlinks = n;
		fs->cap_unlinks = cap;
	}
	o->doomed = true;
	fs->unlinks[fs->nunlinks++] = o;
}

void obj_mark_dirty(struct fs *fs, struct object *o)
{
	if (o->dirty)
		return;
	o->dirty = true;
	o->dirty_next = fs->dirty_objs;
	fs->dirty_objs = o;
}

void obj_forget(struct fs *fs, struct object *o)
{
	if (o->fd >= 0) {
		if (o->pins == 0)
			TAILQ_REMOVE(&fs->lru, o, lru);
		close(o->fd);
		fs->nfds--;
	}
	RB_REMOVE(object_tree, &fs->objects, o);
	free(o->opath);
	free(o);
}

void obj_free_all(struct fs *fs)
{
	struct object *o, *t;

	RB_FOREACH_SAFE(o, object_tree, &fs->objects, t)
		obj_forget(fs, o);
	fs->nfds = 0;
}

/* ---- origin files ---- */

static int64_t ts_ns(const struct timespec *t)
{
	return (int64_t)t->tv_sec * 1000000000 + t->tv_nsec;
}

/* Log o's failure once per object and daemon run (any thread). */
static void origin_warn(struct fs *fs, struct object *o, const char *what,
			const char *detail, const char *tail)
{
	if (__atomic_exchange_n(&o->warned, true, __ATOMIC_RELAXED))
		return;
	fs_log(fs, "origin file '%s' %s%s%s", o->opath, what, detail, tail);
}

/* 0 when st describes the regular file that was cloned. */
static int origin_match(struct fs *fs, struct object *o, const struct stat *st)
{
	if (S_ISREG(st->st_mode) && st->st_dev == o->odev &&
	    st->st_ino == o->oino && (uint64_t)st->st_size == o->osize &&
	    ts_ns(&st->st_mtim) == o->omtime && ts_ns(&st->st_ctim) == o->octime)
		return 0;
	origin_warn(fs, o, "changed since it was cloned", S_ISREG(st->st_mode) ? "" :
		    S_ISFIFO(st->st_mode) ? " (now a FIFO)" :
		    S_ISCHR(st->st_mode) ? " (now a character device)" :
		    S_ISBLK(st->st_mode) ? " (now a block device)" :
		    S_ISSOCK(st->st_mode) ? " (now a socket)" :
		    S_ISDIR(st->st_mode) ? " (now a directory)" :
		    S_ISLNK(st->st_mode) ? " (now a symlink)" : " (now not a file)",
		    ": its reads fail with EIO (cowfs fsck lists such files)");
	return -EIO;
}

int origin_check(struct fs *fs, struct object *o, int fd)
{
	struct stat st;

	LOCK_ASSERT_UNLOCKED_FS();
	if (fstat(fd, &st) < 0) {
		origin_warn(fs, o, "cannot be checked: ", strerror(errno),
			    " (reads fail with EIO)");
		return -EIO;
	}
	return origin_match(fs, o, &st);
}

/*
 * Resolve the path with O_PATH, which neither waits for a FIFO's writer
 * nor calls a device driver's open, check what it found, and only then
 * open that very inode for reading through /proc/self/fd.  Without /proc,
 * the path is opened O_NONBLOCK | O_NOCTTY and checked after the fact.
 */
int origin_open(struct fs *fs, struct object *o)
{
	const int fl = O_RDONLY | O_NOFOLLOW | O_CLOEXEC | O_NONBLOCK | O_NOCTTY;
	char proc[64];
	struct stat st;
	int pfd, fd = -1, rc = -EIO;

	LOCK_ASSERT_UNLOCKED_FS();
	pfd = open(o->opath, O_PATH | O_NOFOLLOW | O_CLOEXEC);
	if (pfd < 0) {
		origin_warn(fs, o, "cannot be opened: ", strerror(errno),
			    " (reads fail with EIO)");
		return -EIO;
	}
	if (fstat(pfd, &st) < 0) {
		origin_warn(fs, o, "cannot be checked: ", strerror(errno),
			    " (reads fail with EIO)");
		goto out;
	}
	if (origin_match(fs, o, &st))
		goto out;
	snprintf(proc, sizeof(proc), "/proc/self/fd/%d", pfd);
	fd = open(proc, (fl & ~O_NOFOLLOW) | O_NOATIME);
	if (fd < 0 && errno == EPERM)
		fd = open(proc, fl & ~O_NOFOLLOW);
	if (fd < 0 && errno == ENOENT) {	/* no /proc */
		fd = open(o->opath, fl | O_NOATIME);
		if (fd < 0 && errno == EPERM)
			fd = open(o->opath, fl);
	}
	if (fd < 0) {
		origin_warn(fs, o, "cannot be opened: ", strerror(errno),
			    " (reads fail with EIO)");
		goto out;
	}
	/* the same inode, unless /proc was missing and the path raced */
	if (origin_check(fs, o, fd))
		goto out_close;
	/* a regular file: O_NONBLOCK has no use any more */
	if (fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) & ~O_NONBLOCK) < 0)
		goto out_close;
	rc = fd;
	fd = -1;
out_close:
	if (fd >= 0)
		close(fd);
out:
	close(pfd);
	return rc;
}

/* ---- prefetch ----
 * A directory listed through readdirplus is usually read next (tar, cp,
 * grep -r, a build).  Its origin-backed files are opened and read ahead
 * on the host by two worker threads, so that the host's disk works in
 * parallel with the reader instead of one file at a time.  A worker opens
 * and checks a file exactly as a read does (origin_open(), no lock held),
 * and hands the fd to the object's cache when there is room. */

#define PF_MAX 4096		/* queued paths; more are dropped */
#define PF_BYTES (1u << 20)	/* read ahead at most this much per file */

static void pf_one(struct fs *fs, uint64_t id)
{
	struct object *o;
	int fd;

	lock_take(fs, LOCK_FS);
	o = obj_get(fs, id);
	if (!o || !o->opath || o->fd >= 0 || o->doomed ||
	    fs->nfds >= fs->max_fds) {
		lock_drop(fs, LOCK_FS);
		return;
	}
	obj_hold(fs, o);	/* keeps o allocated while we open it */
	lock_drop(fs, LOCK_FS);

	fd = origin_open(fs, o);
	if (fd >= 0)
		readahead(fd, 0, PF_BYTES);

	lock_take(fs, LOCK_FS);
	/* the read that follows needs no open() of its own */
	if (fd >= 0 && fs->nfds < fs->max_fds)
		fd = obj_adopt_fd(fs, o, fd);
	obj_unpin(fs, o);
	lock_drop(fs, LOCK_FS);
	if (fd >= 0)
		close(fd);
}

static void *pf_worker(void *arg)
{
	struct fs *fs = arg;

	lock_take(fs, LOCK_PF);
	for (;;) {
		while (!fs->pf_stop && fs->pf_head == fs->pf_tail)
			pthread_cond_wait(&fs->pf_cond, &fs->pf_lock);
		if (fs->pf_stop)
			break;
		struct pf_item it = fs->pf_queue[fs->pf_head % fs->pf_cap];
		fs->pf_head++;
		lock_drop(fs, LOCK_PF);
		pf_one(fs, it.obj);
		free(it.path);
		lock_take(fs, LOCK_PF);
	}
	lock_drop(fs, LOCK_PF);
	return NULL;
}

void origin_prefetch_start(struct fs *fs)
{
	fs->pf_cap = PF_MAX;
	fs->pf_queue = calloc(PF_MAX, sizeof(*fs->pf_queue));
	if (!fs->pf_queue)
		return;
	for (int i = 0; i < 2; i++)
		if (pthread_create(&fs->pf_threads[i], NULL, pf_worker, fs) == 0)
			fs->pf_nthreads++;
}

void origin_prefetch_stop(struct fs *fs)
{
	lock_take(fs, LOCK_PF);
	fs->pf_stop = true;
	pthread_cond_broadcast(&fs->pf_cond);
	lock_drop(fs, LOCK_PF);
	for (int i = 0; i < fs->pf_nthreads; i++)
		pthread_join(fs->pf_threads[i], NULL);
	fs->pf_nthreads = 0;
	for (size_t i = fs->pf_head; i < fs->pf_tail; i++)
		free(fs->pf_queue[i % fs->pf_cap].path);
	free(fs->pf_queue);
	fs->pf_queue = NULL;
}

void origin_prefetch(struct fs *fs, struct pf_item *items, size_t n)
{
	size_t i = 0;

	lock_take(fs, LOCK_PF);
	if (fs->pf_nthreads && !fs->pf_stop)
		for (; i < n && fs->pf_tail - fs->pf_head < fs->pf_cap; i++)
			fs->pf_queue[fs->pf_tail++ % fs->pf_cap] = items[i];
	if (i)
		pthread_cond_signal(&fs->pf_cond);
	if (i > 1)
		pthread_cond_broadcast(&fs->pf_cond);
	lock_drop(fs, LOCK_PF);
	for (; i < n; i++)
		free(items[i].path);
}

/* The REC_ORIGIN record of an origin object; its path is stored as the
 * prefix it shares with *prev (the previous REC_ORIGIN of the batch or
 * checkpoint) plus a suffix.  *prev is set to this object's path. */
void origin_to_rec(const struct object *o, struct rec *r, char **prev)
{
	size_t k = 0;

	if (*prev)
		while (k < 4095 && (*prev)[k] && (*prev)[k] == o->opath[k])
			k++;
	memset(r, 0, sizeof(*r));
	r->type = REC_ORIGIN;
	r->flags = (uint16_t)k;
	r->u.origin.obj = o->id;
	r->u.origin.dev = o->odev;
	r->u.origin.ino = o->oino;
	r->u.origin.size = o->osize;
	r->u.origin.mtime_ns = o->omtime;
	r->u.origin.ctime_ns = o->octime;
	r->data = o->opath + k;
	r->data_len = (uint32_t)strlen(o->opath + k);
	*prev = o->opath;
}
