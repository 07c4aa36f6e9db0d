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
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cowfs/fs_impl.h"

#define EVICT_MAX 8

/* ---- the object table ----
 * Open addressing with linear probing: one pointer per slot (8 bytes,
 * at most 3/4 full), where a tree would take 32 bytes of links in every
 * object and a malloc'ed node per insert.  The home slot of id is its
 * low bits XORed with the bits above them: ids come from a counter, so
 * consecutive objects take neighbouring slots and do not collide, and
 * iterating over the slots visits them in nearly id order (the
 * checkpoint's origin records prefix-code their paths against the
 * previous one); the XOR spreads ids that are a multiple of the table
 * size apart, which the low bits alone would pile into one slot. */

static size_t slot_of(const struct obj_table *t, uint64_t id)
{
	unsigned bits = (unsigned)__builtin_ctzll((unsigned long long)t->cap);

	return (size_t)(id ^ (id >> bits)) & (t->cap - 1);
}

struct object *obj_get(struct fs *fs, uint64_t id)
{
	struct obj_table *t = &fs->objects;

	if (!t->cap)
		return NULL;
	for (size_t i = slot_of(t, id);; i = (i + 1) & (t->cap - 1)) {
		struct object *o = t->v[i];
		if (!o || o->id == id)
			return o;
	}
}

static void table_put(struct obj_table *t, struct object *o)
{
	size_t i = slot_of(t, o->id);

	while (t->v[i])
		i = (i + 1) & (t->cap - 1);
	t->v[i] = o;
}

static int table_resize(struct obj_table *t, size_t cap)
{
	struct object **old = t->v;
	size_t ocap = t->cap;

	if (!(t->v = calloc(cap, sizeof(*t->v)))) {
		t->v = old;
		return -1;
	}
	t->cap = cap;
	for (size_t i = 0; i < ocap; i++)
		if (old[i])
			table_put(t, old[i]);
	free(old);
	return 0;
}

static int table_add(struct obj_table *t, struct object *o)
{
	if ((t->n + 1) * 4 > t->cap * 3 &&
	    table_resize(t, t->cap ? t->cap * 2 : 64))
		return -1;
	table_put(t, o);
	t->n++;
	return 0;
}

/* Take o out, shifting back the entries of its probe run that would
 * no longer be found (no tombstones). */
static void table_del(struct obj_table *t, struct object *o)
{
	size_t mask = t->cap - 1, i = slot_of(t, o->id);

	while (t->v[i] != o)
		i = (i + 1) & mask;
	for (size_t j = (i + 1) & mask; t->v[j]; j = (j + 1) & mask) {
		size_t home = slot_of(t, t->v[j]->id);
		/* v[j] stays when its home lies cyclically in (i, j] */
		if (i <= j ? (i < home && home <= j) : (i < home || home <= j))
			continue;
		t->v[i] = t->v[j];
		i = j;
	}
	t->v[i] = NULL;
	t->n--;
	/* a big tree deleted: give the slots back */
	if (t->cap > 64 && t->n * 8 < t->cap)
		table_resize(t, t->cap / 2);
}

struct object *obj_next(struct fs *fs, size_t *i)
{
	struct obj_table *t = &fs->objects;

	while (*i < t->cap)
		if (t->v[(*i)++])
			return t->v[*i - 1];
	return NULL;
}

struct object *obj_new(struct fs *fs, uint64_t id, uint64_t owner)
{
	struct object *o = calloc(1, sizeof(*o));
	if (!o)
		return NULL;
	o->id = id;
	o->owner = owner;
	o->fd = -1;
	if (table_add(&fs->objects, o)) {
		free(o);
		return NULL;
	}
	if (id >= fs->next_obj)
		fs->next_obj = id + 1;
	return o;
}

/* ---- origin memory ----
 * Origin objects, their names inline, and their directory nodes are
 * carved one after the other from chunks of OCHUNK_SIZE aligned to their
 * size: no malloc header and 8-byte rather than 16-byte rounding, some 12
 * bytes of about 100 (a clone of /usr makes 136,000 origins).  A chunk
 * counts what is live in it and is unmapped when the last one goes; until
 * then, the room of a dropped one is not reused (origins come and go in
 * bulk: a clone, then its deletion or detach). */
#define OCHUNK_SIZE ((size_t)1 << 20)

struct ochunk {
	size_t live;		/* carved from it and not freed */
};

#define OCHUNK_HDR ((sizeof(struct ochunk) + 7) & ~(size_t)7)

static struct ochunk *ochunk_of(const void *p)
{
	return (struct ochunk *)((uintptr_t)p & ~(uintptr_t)(OCHUNK_SIZE - 1));
}

/* A chunk aligned to its size: map twice as much, keep the aligned part. */
static struct ochunk *ochunk_new(void)
{
	char *m = mmap(NULL, 2 * OCHUNK_SIZE, PROT_READ | PROT_WRITE,
		       MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	char *c;

	if (m == MAP_FAILED)
		return NULL;
	c = (char *)(((uintptr_t)m + OCHUNK_SIZE - 1) & ~(uintptr_t)(OCHUNK_SIZE - 1));
	if (c > m)
		munmap(m, (size_t)(c - m));
	munmap(c + OCHUNK_SIZE, (size_t)(m + OCHUNK_SIZE - c));
	return (struct ochunk *)(void *)c;
}

/* size bytes, zeroed, for an origin or an odir; NULL: out of memory. */
static void *carve_alloc(struct obj_table *t, size_t size)
{
	size = (size + 7) & ~(size_t)7;
	if (size > OCHUNK_SIZE - OCHUNK_HDR)
		return NULL;
	if (!t->ochunk || size > (size_t)((char *)t->ochunk + OCHUNK_SIZE - t->ocur)) {
		struct ochunk *c = ochunk_new();
		if (!c)
			return NULL;
		if (t->ochunk && !t->ochunk->live)
			munmap(t->ochunk, OCHUNK_SIZE);
		c->live = 0;
		t->ochunk = c;
		t->ocur = (char *)c + OCHUNK_HDR;
	}
	void *p = t->ocur;
	t->ocur += size;
	t->ochunk->live++;
	memset(p, 0, size);
	return p;
}

static void carve_free(struct obj_table *t, void *p)
{
	struct ochunk *c = ochunk_of(p);

	if (--c->live)
		return;
	if (c == t->ochunk)
		t->ocur = (char *)c + OCHUNK_HDR;	/* start it again */
	else
		munmap(c, OCHUNK_SIZE);
}

/* ---- origin directories ----
 * Every origin file of one host directory points to one struct odir,
 * and a directory's node to its parent's: /usr has 136,000 files in
 * 15,000 directories whose paths average 64 bytes, and a path string per
 * file, or per directory, would cost more than the rest of its object. */

static size_t odir_hash(const struct odir *parent, const char *name,
			size_t nlen, uint64_t dev)
{
	uint64_t h = 1469598103934665603ull ^ dev ^ (uint64_t)(uintptr_t)parent;

	for (size_t i = 0; i < nlen; i++)
		h = (h ^ (unsigned char)name[i]) * 1099511628211ull;
	return (size_t)(h ^ (h >> 29));
}

static size_t odir_slot(const struct obj_table *t, const struct odir *d)
{
	return odir_hash(d->parent, d->name, d->nlen, d->dev) & (t->dcap - 1);
}

static void odir_put(struct obj_table *t, struct odir *d)
{
	while (d && --d->refs == 0) {
		struct odir *parent = d->parent;
		struct odir **p = &t->dirs[odir_slot(t, d)];
		while (*p != d)
			p = &(*p)->next;
		*p = d->next;
		t->dn--;
		if (t->dlast == d)
			t->dlast = NULL;
		carve_free(t, d);
		d = parent;	/* d held a reference to it */
	}
}

static int odir_table_grow(struct obj_table *t)
{
	size_t cap = t->dcap ? t->dcap * 2 : 64;
	struct odir **n = calloc(cap, sizeof(*n)), *d;

	if (!n)
		return -1;
	for (size_t i = 0; i < t->dcap; i++)
		while ((d = t->dirs[i])) {
			t->dirs[i] = d->next;
			size_t k = odir_hash(d->parent, d->name, d->nlen, d->dev) & (cap - 1);
			d->next = n[k];
			n[k] = d;
		}
	free(t->dirs);
	t->dirs = n;
	t->dcap = cap;
	return 0;
}

/* A reference to the node (parent, name, dev), made if missing (it then
 * holds a reference to parent).  NULL: out of memory. */
static struct odir *odir_ref(struct obj_table *t, struct odir *parent,
			     const char *name, size_t nlen, uint64_t dev)
{
	size_t h = odir_hash(parent, name, nlen, dev);
	size_t len = parent ? (size_t)parent->len + 1 + nlen : 0;
	struct odir *d;

	if (t->dcap) {
		for (d = t->dirs[h & (t->dcap - 1)]; d; d = d->next)
			if (d->parent == parent && d->dev == dev &&
			    d->nlen == nlen && !memcmp(d->name, name, nlen)) {
				d->refs++;
				return d;
			}
	}
	if (len >= PATH_MAX || (t->dn >= t->dcap && odir_table_grow(t)))
		return NULL;
	if (!(d = carve_alloc(t, sizeof(*d) + nlen + 1)))
		return NULL;
	d->parent = parent;
	d->dev = dev;
	d->refs = 1;
	d->len = (uint16_t)len;
	d->nlen = (uint16_t)nlen;
	memcpy(d->name, name, nlen);
	d->name[nlen] = 0;
	if (parent)
		parent->refs++;
	size_t k = h & (t->dcap - 1);
	d->next = t->dirs[k];
	t->dirs[k] = d;
	t->dn++;
	return d;
}

/* Whether d's path is path[0, len). */
static bool odir_is(const struct odir *d, const char *path, size_t len)
{
	if (d->len != len)
		return false;
	for (; d->parent; d = d->parent) {
		len -= d->nlen;
		if (memcmp(path + len, d->name, d->nlen) || path[--len] != '/')
			return false;
	}
	return true;
}

/* A reference to the node of the directory path[0, len) ("" for "/",
 * else absolute) on dev.  NULL: out of memory, or errno EINVAL. */
static struct odir *odir_get(struct obj_table *t, const char *path,
			     size_t len, uint64_t dev)
{
	struct odir *d = t->dlast;

	/* a clone's files come directory by directory */
	if (d && d->dev == dev && odir_is(d, path, len)) {
		d->refs++;
		return d;
	}
	if (len && path[0] != '/') {
		errno = EINVAL;
		return NULL;
	}
	if (!(d = odir_ref(t, NULL, "", 0, dev)))
		return NULL;
	for (size_t i = 1, j; i <= len; i = j + 1) {
		for (j = i; j < len && path[j] != '/'; j++)
			;
		struct odir *c = odir_ref(t, d, path + i, j - i, dev);
		odir_put(t, d);	/* c holds its own reference to d */
		if (!(d = c))
			return NULL;
	}
	t->dlast = d;
	return d;
}

/* d's path into buf (without a NUL); returns its length. */
static size_t odir_path(const struct odir *d, char *buf)
{
	size_t len = d->len, at = len;

	for (; d->parent; d = d->parent) {
		at -= d->nlen;
		memcpy(buf + at, d->name, d->nlen);
		buf[--at] = '/';
	}
	return len;
}

struct object *obj_new_origin(struct fs *fs, uint64_t id, const char *path,
			      uint64_t dev, uint64_t ino, uint64_t size,
			      int64_t mtime, int64_t ctime)
{
	struct obj_table *t = &fs->objects;
	const char *slash = strrchr(path, '/');
	struct object *old = obj_get(fs, id);
	struct origin *g;

	/* (a write object's id named as an origin: a corrupt journal) */
	if (old && (old->doomed || old->dirty || old->pins || old->fd >= 0 ||
		    old->owner)) {
		errno = EINVAL;
		return NULL;
	}
	if (!slash) {
		errno = EINVAL;
		return NULL;
	}
	size_t nlen = strlen(slash + 1);
	if (!(g = carve_alloc(t, sizeof(*g) + nlen + 1)))
		return NULL;
	if (!(g->obj.odir = odir_get(t, path, (size_t)(slash - path), dev))) {
		carve_free(t, g);
		return NULL;
	}
	memcpy(g->name, slash + 1, nlen + 1);
	g->obj.host_ino = ino;
	g->obj.len = size;
	g->mtime = mtime;
	g->ctime = ctime;
	g->obj.id = id;
	g->obj.fd = -1;
	g->obj.origin = true;
	if (old) {
		/* replay: extents named the id before its REC_ORIGIN */
		g->obj.nlive = old->nlive;
		obj_forget(fs, old);
	}
	if (table_add(t, &g->obj)) {
		odir_put(t, g->obj.odir);
		carve_free(t, g);
		return NULL;
	}
	if (id >= fs->next_obj)
		fs->next_obj = id + 1;
	return &g->obj;
}

size_t origin_path(const struct object *o, char *buf)
{
	const struct origin *g = obj_origin(o);
	size_t dl = odir_path(g->obj.odir, buf), nl = strlen(g->name);

	/* both parts were cut from one path shorter than PATH_MAX */
	buf[dl] = '/';
	memcpy(buf + dl + 1, g->name, nl + 1);
	return dl + 1 + nl;
}

/* ---- the fd LRU ----
 * Indexed by fd: an fd number belongs to one object at a time, so the
 * links live in a small array the size of the highest fd, not in every
 * object. */

static struct lru_slot *lru_at(struct obj_table *t, int fd1)
{
	return &t->lru[fd1 - 1];
}

/* Room for fd in the LRU array; before an object takes the fd. */
static int lru_reserve(struct obj_table *t, int fd)
{
	if ((size_t)fd < t->lru_cap)
		return 0;
	size_t cap = t->lru_cap ? t->lru_cap : 64;
	while (cap <= (size_t)fd)
		cap *= 2;
	struct lru_slot *n = realloc(t->lru, cap * sizeof(*n));
	if (!n)
		return -1;
	memset(n + t->lru_cap, 0, (cap - t->lru_cap) * sizeof(*n));
	t->lru = n;
	t->lru_cap = cap;
	return 0;
}

static void lru_push(struct obj_table *t, struct object *o)
{
	int fd1 = o->fd + 1;
	struct lru_slot *s = lru_at(t, fd1);

	s->o = o;
	s->next = 0;
	s->prev = t->lru_tail;
	if (t->lru_tail)
		lru_at(t, t->lru_tail)->next = fd1;
	else
		t->lru_head = fd1;
	t->lru_tail = fd1;
}

static void lru_del(struct obj_table *t, struct object *o)
{
	struct lru_slot *s = lru_at(t, o->fd + 1);

	if (s->prev)
		lru_at(t, s->prev)->next = s->next;
	else
		t->lru_head = s->next;
	if (s->next)
		lru_at(t, s->next)->prev = s->prev;
	else
		t->lru_tail = s->prev;
	*s = (struct lru_slot){ 0 };
}

size_t obj_evict(struct fs *fs, int *fds, size_t max)
{
	size_t n = 0;

	while (n < max && fs->nfds >= fs->max_fds && fs->objects.lru_head) {
		struct object *o = lru_at(&fs->objects, fs->objects.lru_head)->o;
		lru_del(&fs->objects, o);
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
	if (o->fd >= 0 || lru_reserve(&fs->objects, fd))
		return fd;
	o->fd = fd;
	fs->nfds++;
	if (o->pins == 0)
		lru_push(&fs->objects, o);
	return -1;
}

bool obj_hold(struct fs *fs, struct object *o)
{
	if (o->fd >= 0 && o->pins == 0)
		lru_del(&fs->objects, o);
	o->pins++;
	return o->fd < 0 || o->origin;
}

void obj_unpin(struct fs *fs, struct object *o)
{
	if (--o->pins == 0 && o->fd >= 0)
		lru_push(&fs->objects, o);
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
		return o->origin && origin_check(fs, o, fd) ? -EIO : fd;
	}
	fd = o->origin ? origin_open(fs, o) : store_obj_open(&fs->store, o->id, 0);
	if (fd < 0) {
		if (!o->origin)
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
	return fd >= 0 ? fd : -ENOMEM;	/* no room in the LRU array */
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
	if (o->nlive || obj_owner(o) || o->doomed)
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
	if (o->dirty || o->origin)	/* an origin's odir is in dirty_next */
		return;
	o->dirty = true;
	o->dirty_next = fs->dirty_objs;
	fs->dirty_objs = o;
}

static void obj_free(struct obj_table *t, struct object *o)
{
	struct origin *g = obj_origin(o);

	if (g) {
		odir_put(t, g->obj.odir);
		carve_free(t, g);
	} else {
		free(o);
	}
}

int obj_drop(struct fs *fs, struct object *o)
{
	int fd = o->fd;

	if (fd >= 0) {
		if (o->pins == 0)
			lru_del(&fs->objects, o);
		fs->nfds--;
	}
	table_del(&fs->objects, o);
	obj_free(&fs->objects, o);
	return fd;
}

void obj_forget(struct fs *fs, struct object *o)
{
	int fd = obj_drop(fs, o);

	if (fd >= 0)
		close(fd);
}

void obj_free_all(struct fs *fs)
{
	struct obj_table *t = &fs->objects;

	for (size_t i = 0; i < t->cap; i++) {
		struct object *o = t->v[i];
		if (!o)
			continue;
		if (o->fd >= 0)
			close(o->fd);
		obj_free(t, o);
	}
	free(t->v);
	free(t->dirs);
	free(t->lru);
	if (t->ochunk)		/* empty now: every origin was freed */
		munmap(t->ochunk, OCHUNK_SIZE);
	memset(t, 0, sizeof(*t));
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
	char path[PATH_MAX];

	if (__atomic_exchange_n(&o->warned, true, __ATOMIC_RELAXED))
		return;
	origin_path(o, path);
	fs_log(fs, "origin file '%s' %s%s%s", path, what, detail, tail);
}

/* 0 when st describes the regular file that was cloned. */
static int origin_match(struct fs *fs, struct object *o, const struct stat *st)
{
	const struct origin *g = obj_origin(o);

	if (S_ISREG(st->st_mode) && st->st_dev == g->obj.odir->dev &&
	    st->st_ino == g->obj.host_ino && (uint64_t)st->st_size == g->obj.len &&
	    ts_ns(&st->st_mtim) == g->mtime && ts_ns(&st->st_ctim) == g->ctime)
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
	char proc[64], path[PATH_MAX];
	struct stat st;
	int pfd, fd = -1, rc = -EIO;

	LOCK_ASSERT_UNLOCKED_FS();
	origin_path(o, path);
	pfd = open(path, O_PATH | O_NOFOLLOW | O_CLOEXEC);
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
		fd = open(path, fl | O_NOATIME);
		if (fd < 0 && errno == EPERM)
			fd = open(path, fl);
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
	if (!o || !o->origin || o->fd >= 0 || o->doomed ||
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
}

/* The REC_ORIGIN record of an origin object; its path is stored as the
 * prefix it shares with that of *prev (the previous REC_ORIGIN of the
 * batch or checkpoint) plus a suffix.  *prev is set to this object. */
void origin_to_rec(const struct object *o, struct rec *r,
		   const struct object **prev, char *buf)
{
	const struct origin *g = obj_origin(o);
	size_t len = origin_path(o, buf), k = 0;

	if (*prev) {
		const struct origin *p = obj_origin(*prev);
		char pbuf[PATH_MAX];
		const char *pp = pbuf;
		size_t skip = 0;
		if (p->obj.odir == g->obj.odir) {
			/* the same directory: only the names differ */
			skip = g->obj.odir->len + 1;
			pp = p->name;
		} else {
			origin_path(*prev, pbuf);
		}
		k = skip;
		while (k < 4095 && pp[k - skip] && pp[k - skip] == buf[k])
			k++;
	}
	memset(r, 0, sizeof(*r));
	r->type = REC_ORIGIN;
	r->flags = (uint16_t)k;
	r->u.origin.obj = o->id;
	r->u.origin.dev = g->obj.odir->dev;
	r->u.origin.ino = g->obj.host_ino;
	r->u.origin.size = g->obj.len;
	r->u.origin.mtime_ns = g->mtime;
	r->u.origin.ctime_ns = g->ctime;
	r->data = buf + k;
	r->data_len = (uint32_t)(len - k);
	*prev = o;
}
