/*
 * inode.c - the inode table and what hangs off one inode: the radix tree
 * of inodes by number, directory entries (by name and by readdir cookie),
 * extended attributes, the dirty list, timestamps (and the side table of
 * those outside the packed form's range), the name check, and an inode's
 * record form.  Plain in-memory structures, all under fs->lock.
 *
 * Below file.c and journal.c, which look inodes up and encode them; it
 * calls nothing above it.  Freeing an inode (which drops its blocks) is
 * fs.c's inode_free().
 */
#include <errno.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "cowfs/fs_impl.h"

static int name_cmp(struct dirent_node *a, struct dirent_node *b)
{
	return strcmp(a->name, b->name);
}
RB_GENERATE(dir_names, dirent_node, by_name, name_cmp)

static int cookie_cmp(struct dirent_node *a, struct dirent_node *b)
{
	return (a->cookie < b->cookie) ? -1 : (a->cookie > b->cookie);
}
RB_GENERATE(dir_cookies, dirent_node, by_cookie, cookie_cmp)

unsigned fs_block_size(const struct fs *fs)
{
	return (unsigned)fs->block_size;
}

void now_ts(struct timespec *ts)
{
	clock_gettime(CLOCK_REALTIME, ts);
}

/* ---- the table: a radix tree over the inode number (fs_impl.h) ---- */

/* Bits of the number below level h (h = 1: the bottom). */
static unsigned itab_bits(unsigned h)
{
	return ITAB_SHIFT * h;
}

/* Whether a tree of height h covers ino. */
static bool itab_covers(unsigned h, uint64_t ino)
{
	return itab_bits(h) >= 64 || ino >> itab_bits(h) == 0;
}

static unsigned itab_index(unsigned h, uint64_t ino)
{
	return (unsigned)(ino >> itab_bits(h - 1)) & (ITAB_FAN - 1);
}

struct inode *inode_get(struct fs *fs, uint64_t ino)
{
	struct itab_node *n = fs->itab.root;
	unsigned h = fs->itab.height;

	if (!n || !itab_covers(h, ino))
		return NULL;
	for (; h > 1 && n; h--)
		n = n->slot[itab_index(h, ino)];
	return n ? n->slot[ino & (ITAB_FAN - 1)] : NULL;
}

/* Put in at in->ino (a free slot); -ENOMEM leaves the table as it was but
 * for empty nodes, which a later insert fills or inode_table_free()
 * frees. */
static int itab_insert(struct inode_table *t, struct inode *in)
{
	struct itab_node *n, **p;
	unsigned h;

	while (!t->root || !itab_covers(t->height, in->ino)) {
		n = calloc(1, sizeof(*n));
		if (!n)
			return -ENOMEM;
		if (t->root) {
			n->slot[0] = t->root;
			n->count = 1;
		}
		t->root = n;
		t->height++;
	}
	p = &t->root;
	for (h = t->height; h > 1; h--) {
		unsigned i = itab_index(h, in->ino);
		if (!(*p)->slot[i]) {
			if (!((*p)->slot[i] = calloc(1, sizeof(**p))))
				return -ENOMEM;
			(*p)->count++;
		}
		p = (struct itab_node **)&(*p)->slot[i];
	}
	assert(!(*p)->slot[in->ino & (ITAB_FAN - 1)]);
	(*p)->slot[in->ino & (ITAB_FAN - 1)] = in;
	(*p)->count++;
	return 0;
}

/* Clear the slot of ino in the subtree n of height h; frees nodes that
 * become empty.  Returns whether n itself is now empty. */
static bool itab_remove(struct itab_node *n, unsigned h, uint64_t ino)
{
	unsigned i = h > 1 ? itab_index(h, ino) : (unsigned)(ino & (ITAB_FAN - 1));

	if (!n->slot[i])
		return false;
	if (h > 1 && !itab_remove(n->slot[i], h - 1, ino))
		return false;
	if (h > 1)
		free(n->slot[i]);
	n->slot[i] = NULL;
	return --n->count == 0;
}

/* The lowest inode at or above ino in the subtree n of height h. */
static struct inode *itab_ge(struct itab_node *n, unsigned h, uint64_t ino)
{
	unsigned i = h > 1 ? itab_index(h, ino) : (unsigned)(ino & (ITAB_FAN - 1));

	for (; i < ITAB_FAN; i++) {
		if (!n->slot[i])
			continue;
		if (h == 1)
			return n->slot[i];
		struct inode *in = itab_ge(n->slot[i], h - 1, ino);
		if (in)
			return in;
		/* from the next slot on, the whole subtree is above ino */
		ino = 0;
	}
	return NULL;
}

struct inode *inode_after(struct fs *fs, uint64_t ino)
{
	if (!fs->itab.root || ino == UINT64_MAX ||
	    !itab_covers(fs->itab.height, ino + 1))
		return NULL;
	return itab_ge(fs->itab.root, fs->itab.height, ino + 1);
}

static void itab_free(struct itab_node *n, unsigned h)
{
	if (h > 1)
		for (unsigned i = 0; i < ITAB_FAN; i++)
			if (n->slot[i])
				itab_free(n->slot[i], h - 1);
	free(n);
}

static void islab_free_all(struct inode_table *t);

void inode_table_free(struct fs *fs)
{
	if (fs->itab.root)
		itab_free(fs->itab.root, fs->itab.height);
	fs->itab.root = NULL;
	fs->itab.height = 0;
	islab_free_all(&fs->itab);
	free(fs->dirty);
	fs->dirty = NULL;
	fs->ndirty = fs->cap_dirty = 0;
}

/* ---- inode memory: slabs ---- */

/*
 * Inodes come from slabs of ISLAB_BYTES, aligned to their size so that an
 * inode's slab is its address rounded down: no malloc header or rounding
 * per inode, and a store's load makes one allocation per ~90 inodes.  A
 * slab that empties is freed unless it is the only one with room.  Under
 * AddressSanitizer every inode is its own allocation, so that a use after
 * free is still caught.
 */
#if defined(__SANITIZE_ADDRESS__)
#define ISLAB_OFF 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define ISLAB_OFF 1
#endif
#endif

#define ISLAB_BYTES 16384
struct islab {
	struct islab *next, *prev;	/* in fs->itab.slabs while it has room */
	struct inode *free;		/* free slots, linked by their first word */
	size_t used;			/* inodes in use */
	struct inode slot[];
};
#define ISLAB_N ((ISLAB_BYTES - sizeof(struct islab)) / sizeof(struct inode))

#ifndef ISLAB_OFF
static void islab_unlink(struct inode_table *t, struct islab *s)
{
	if (s->prev)
		s->prev->next = s->next;
	else
		t->slabs = s->next;
	if (s->next)
		s->next->prev = s->prev;
	s->next = s->prev = NULL;
}

static void islab_link(struct inode_table *t, struct islab *s)
{
	s->prev = NULL;
	s->next = t->slabs;
	if (t->slabs)
		t->slabs->prev = s;
	t->slabs = s;
}

#endif

static struct inode *inode_alloc(struct inode_table *t)
{
#ifdef ISLAB_OFF
	(void)t;
	return calloc(1, sizeof(struct inode));
#else
	struct islab *s = t->slabs;
	struct inode *in;

	if (!s) {
		if (!(s = aligned_alloc(ISLAB_BYTES, ISLAB_BYTES)))
			return NULL;
		s->free = NULL;
		s->used = 0;
		for (size_t i = ISLAB_N; i-- > 0;) {
			*(struct inode **)&s->slot[i] = s->free;
			s->free = &s->slot[i];
		}
		islab_link(t, s);
	}
	in = s->free;
	s->free = *(struct inode **)in;
	s->used++;
	if (!s->free)
		islab_unlink(t, s);
	memset(in, 0, sizeof(*in));
	return in;
#endif
}

static void inode_dealloc(struct inode_table *t, struct inode *in)
{
#ifdef ISLAB_OFF
	(void)t;
	free(in);
#else
	struct islab *s = (struct islab *)((uintptr_t)in & ~(uintptr_t)(ISLAB_BYTES - 1));

	if (!s->free)
		islab_link(t, s);	/* full until now */
	*(struct inode **)in = s->free;
	s->free = in;
	if (--s->used == 0 && (s->prev || s->next)) {
		islab_unlink(t, s);
		free(s);
	}
#endif
}

static void islab_free_all(struct inode_table *t)
{
#ifdef ISLAB_OFF
	(void)t;
#else
	while (t->slabs) {
		struct islab *s = t->slabs;
		islab_unlink(t, s);
		free(s);	/* inodes still in it are leaked anyway */
	}
#endif
}

struct inode *inode_new(struct fs *fs, uint64_t ino)
{
	struct inode *in = inode_alloc(&fs->itab);

	if (!in)
		return NULL;
	in->ino = ino;
	RB_INIT(&in->names);
	RB_INIT(&in->cookies);
	in->next_cookie = 3;
	/* the map is all zero, as extmap_init() makes it; so is the rest
	 * of the per-type union, whatever the type turns out to be */
	if (itab_insert(&fs->itab, in)) {
		inode_dealloc(&fs->itab, in);
		return NULL;
	}
	fs->ninodes++;
	if (ino >= fs->next_ino)
		fs->next_ino = ino + 1;
	return in;
}

static void times_forget(struct inode *in);

void inode_delete(struct fs *fs, struct inode *in)
{
	if (itab_remove(fs->itab.root, fs->itab.height, in->ino)) {
		free(fs->itab.root);
		fs->itab.root = NULL;
		fs->itab.height = 0;
	}
	fs->ninodes--;
	times_forget(in);
	while (in->xattrs) {
		struct xattr *x = in->xattrs;
		in->xattrs = x->next;
		free(x->name);
		free(x->value);
		free(x);
	}
	inode_dealloc(&fs->itab, in);
}

/* ---- the dirty list: a flag in the inode, its number in a vector ---- */

void inode_dirty(struct fs *fs, struct inode *in)
{
	if (in->dirty)
		return;
	in->dirty = true;
	if (fs->ndirty == fs->cap_dirty) {
		size_t cap = fs->cap_dirty ? fs->cap_dirty * 2 : 64;
		uint64_t *v = realloc(fs->dirty, cap * sizeof(*v));
		if (!v) {
			/* the flag is set: the flush finds it by a scan */
			fs->dirty_lost = true;
			return;
		}
		fs->dirty = v;
		fs->cap_dirty = cap;
	}
	fs->dirty[fs->ndirty++] = in->ino;
}

/* The entry stays in the vector; the flush skips a clean inode. */
void inode_undirty(struct fs *fs, struct inode *in)
{
	(void)fs;
	in->dirty = false;
}

void inode_flush_dirty(struct fs *fs, void (*fn)(struct fs *, struct inode *))
{
	struct inode *in;

	for (size_t i = 0; i < fs->ndirty; i++) {
		in = inode_get(fs, fs->dirty[i]);
		if (in && in->dirty) {
			in->dirty = false;
			fn(fs, in);
		}
	}
	fs->ndirty = 0;
	if (fs->dirty_lost) {
		fs->dirty_lost = false;
		INODE_FOREACH(in, fs)
			if (in->dirty) {
				in->dirty = false;
				fn(fs, in);
			}
	}
	/* a big clone dirtied many: give the memory back */
	if (fs->cap_dirty > 4096) {
		free(fs->dirty);
		fs->dirty = NULL;
		fs->cap_dirty = 0;
	}
}

/* ---- timestamps ---- */

/*
 * The side table of times that do not fit the packed form: a tree keyed by
 * the inode's address and which time.  Such times are rare (a user's
 * `touch -d 1600-01-01`, a host file's odd mtime), so a tree is enough.
 * Its own leaf mutex: inodes of two stores in one process share it.
 */
struct xtime {
	RB_ENTRY(xtime) node;
	const struct inode *in;
	unsigned t;
	struct timespec ts;
};
static int xtime_cmp(struct xtime *a, struct xtime *b)
{
	if (a->in != b->in)
		return (uintptr_t)a->in < (uintptr_t)b->in ? -1 : 1;
	return (a->t > b->t) - (a->t < b->t);
}
RB_HEAD(xtime_tree, xtime);
RB_PROTOTYPE(xtime_tree, xtime, node, xtime_cmp)
RB_GENERATE(xtime_tree, xtime, node, xtime_cmp)
static struct xtime_tree xtimes = RB_INITIALIZER(&xtimes);
static pthread_mutex_t xtimes_lock = PTHREAD_MUTEX_INITIALIZER;

#define NSEC 1000000000LL

/* ts as ns since the epoch; false: it does not fit (or is not normal). */
static bool ts_pack(struct timespec ts, int64_t *ns)
{
	if (ts.tv_nsec < 0 || ts.tv_nsec >= NSEC ||
	    ts.tv_sec < INT64_MIN / NSEC || ts.tv_sec > INT64_MAX / NSEC)
		return false;
	int64_t v = (int64_t)ts.tv_sec * NSEC;
	if (v > INT64_MAX - ts.tv_nsec)
		return false;
	*ns = v + ts.tv_nsec;
	return true;
}

static struct timespec ts_unpack(int64_t ns)
{
	int64_t s = ns / NSEC, r = ns % NSEC;

	if (r < 0) {
		r += NSEC;
		s--;
	}
	return (struct timespec){ .tv_sec = s, .tv_nsec = r };
}

struct timespec inode_time(const struct inode *in, enum inode_time t)
{
	if (!(in->xtimes & IT_BIT(t)))
		return ts_unpack(in->times[t]);
	struct xtime key = { .in = in, .t = t }, *x;
	struct timespec ts = { 0, 0 };
	pthread_mutex_lock(&xtimes_lock);
	if ((x = RB_FIND(xtime_tree, &xtimes, &key)))
		ts = x->ts;
	pthread_mutex_unlock(&xtimes_lock);
	return ts;
}

static void xtime_drop(struct inode *in, enum inode_time t)
{
	struct xtime key = { .in = in, .t = t }, *x;

	pthread_mutex_lock(&xtimes_lock);
	if ((x = RB_FIND(xtime_tree, &xtimes, &key))) {
		RB_REMOVE(xtime_tree, &xtimes, x);
		free(x);
	}
	pthread_mutex_unlock(&xtimes_lock);
	in->xtimes &= (uint8_t)~IT_BIT(t);
}

void inode_set_time(struct inode *in, enum inode_time t, struct timespec ts)
{
	int64_t ns;

	if (ts_pack(ts, &ns)) {
		if (in->xtimes & IT_BIT(t))
			xtime_drop(in, t);
		in->times[t] = ns;
		return;
	}
	struct xtime key = { .in = in, .t = t }, *x;
	pthread_mutex_lock(&xtimes_lock);
	if (!(x = RB_FIND(xtime_tree, &xtimes, &key)) &&
	    (x = calloc(1, sizeof(*x)))) {
		x->in = in;
		x->t = t;
		RB_INSERT(xtime_tree, &xtimes, x);
	}
	if (x)
		x->ts = ts;
	pthread_mutex_unlock(&xtimes_lock);
	if (x) {
		in->xtimes |= (uint8_t)IT_BIT(t);
		in->times[t] = 0;
	} else {
		/* out of memory: the nearest time the packed form holds */
		in->xtimes &= (uint8_t)~IT_BIT(t);
		in->times[t] = ts.tv_sec < 0 ? INT64_MIN : INT64_MAX;
	}
}

void inode_touch(struct inode *in, unsigned mask, const struct timespec *ts)
{
	struct timespec now;

	if (!ts) {
		now_ts(&now);
		ts = &now;
	}
	for (unsigned t = 0; t < IT_N; t++)
		if (mask & IT_BIT(t))
			inode_set_time(in, t, *ts);
}

static void times_forget(struct inode *in)
{
	for (unsigned t = 0; t < IT_N; t++)
		if (in->xtimes & IT_BIT(t))
			xtime_drop(in, t);
}

void inode_stat(const struct fs *fs, const struct inode *in, struct stat *st)
{
	memset(st, 0, sizeof(*st));
	st->st_ino = in->ino;
	st->st_mode = in->mode;
	st->st_nlink = in->nlink;
	st->st_uid = in->uid;
	st->st_gid = in->gid;
	st->st_rdev = inode_rdev(in);
	st->st_size = (off_t)in->size;
	st->st_blksize = (blksize_t)fs->block_size;
	st->st_atim = inode_atime(in);
	st->st_mtim = inode_mtime(in);
	st->st_ctim = inode_ctime(in);
	if (S_ISREG(in->mode)) {
		/* Allocation as the host counts it: whole blocks, but the
		 * block holding EOF only up to EOF in 4 KiB pages. */
		uint64_t bytes = in->map.nblocks << fs->block_shift;
		uint64_t last = in->size ? (in->size - 1) >> fs->block_shift : 0;
		struct extent e;
		if (in->size && extmap_lookup(&in->map, last, &e)) {
			uint64_t tail = in->size - (last << fs->block_shift);
			tail = (tail + 4095) & ~(uint64_t)4095;
			if (tail < fs->block_size)
				bytes -= fs->block_size - tail;
		}
		st->st_blocks = (blkcnt_t)(bytes / 512);
	} else if (S_ISDIR(in->mode)) {
		st->st_size = (off_t)(in->nentries + 2) * 32;
		st->st_blocks = 8;
	} else if (S_ISLNK(in->mode)) {
		st->st_size = in->target ? (off_t)strlen(in->target) : 0;
	}
}

struct dirent_node *dir_find(struct inode *dir, const char *name)
{
	size_t n = strlen(name);
	char buf[sizeof(struct dirent_node) + COWFS_NAME_MAX + 1];
	struct dirent_node *key = (struct dirent_node *)buf;

	if (n > COWFS_NAME_MAX)
		return NULL;
	memcpy(key->name, name, n + 1);
	return RB_FIND(dir_names, &dir->names, key);
}

int fs_name_check(const char *name, size_t len)
{
	if (len == 0 || memchr(name, 0, len) || memchr(name, '/', len))
		return -EINVAL;
	if ((len == 1 && name[0] == '.') ||
	    (len == 2 && name[0] == '.' && name[1] == '.'))
		return -EINVAL;
	if (len > COWFS_NAME_MAX)
		return -ENAMETOOLONG;
	return 0;
}

/* A new, unlinked entry (caller owns; free() it or give it to
 * dir_insert()).  NULL: out of memory. */
struct dirent_node *dirent_new(const char *name, uint64_t ino,
				      uint64_t cookie)
{
	size_t n = strlen(name);
	struct dirent_node *d = malloc(sizeof(*d) + n + 1);

	if (!d)
		return NULL;
	memcpy(d->name, name, n + 1);
	d->ino = ino;
	d->cookie = cookie;
	return d;
}

/* Link d into dir; on failure d is still the caller's.  A bad name is
 * -EINVAL or -ENAMETOOLONG; a name or a cookie already in dir is
 * -EEXIST (a replayed record that does not fit: never two entries with
 * one cookie, which would corrupt the cookie tree). */
int dir_insert(struct inode *dir, struct dirent_node *d)
{
	int rc = fs_name_check(d->name, strlen(d->name));

	if (rc)
		return rc;
	/* 1 and 2 are "." and ".."; readdir offsets are signed */
	if (d->cookie < 3 || d->cookie >= (uint64_t)INT64_MAX)
		return -EINVAL;
	if (RB_FIND(dir_cookies, &dir->cookies, d))
		return -EEXIST;
	if (RB_INSERT(dir_names, &dir->names, d))
		return -EEXIST;
	RB_INSERT(dir_cookies, &dir->cookies, d);
	if (d->cookie >= dir->next_cookie)
		dir->next_cookie = d->cookie + 1;
	dir->nentries++;
	return 0;
}

int dir_add(struct fs *fs, struct inode *dir, const char *name, uint64_t ino,
	    uint64_t cookie)
{
	struct dirent_node *d = dirent_new(name, ino, cookie);
	int rc;

	(void)fs;
	if (!d)
		return -ENOMEM;
	if ((rc = dir_insert(dir, d)))
		free(d);
	return rc;
}

void dir_del(struct fs *fs, struct inode *dir, struct dirent_node *d)
{
	(void)fs;
	RB_REMOVE(dir_names, &dir->names, d);
	RB_REMOVE(dir_cookies, &dir->cookies, d);
	dir->nentries--;
	free(d);
}

struct xattr **xattr_find(struct inode *in, const char *name)
{
	struct xattr **p;
	for (p = &in->xattrs; *p; p = &(*p)->next)
		if (!strcmp((*p)->name, name))
			break;
	return p;
}

int xattr_set(struct inode *in, const char *name, const void *v, uint32_t len)
{
	struct xattr **p = xattr_find(in, name), *x = *p;
	void *val = malloc(len ? len : 1);

	if (!val)
		return -ENOMEM;
	memcpy(val, v, len);
	if (!x) {
		x = calloc(1, sizeof(*x));
		if (!x || !(x->name = strdup(name))) {
			free(x);
			free(val);
			return -ENOMEM;
		}
		*p = x;
	} else {
		free(x->value);
	}
	x->value = val;
	x->len = len;
	return 0;
}

int xattr_del(struct inode *in, const char *name)
{
	struct xattr **p = xattr_find(in, name), *x = *p;
	if (!x)
		return -ENODATA;
	*p = x->next;
	free(x->name);
	free(x->value);
	free(x);
	return 0;
}

void inode_to_rec(const struct inode *in, struct rec *r)
{
	memset(r, 0, sizeof(*r));
	r->type = REC_INODE;
	r->u.inode.ino = in->ino;
	r->u.inode.size = in->size;
	r->u.inode.wobj = S_ISREG(in->mode) ? in->wobj : 0;
	r->u.inode.rdev = inode_rdev(in);
	r->u.inode.next_cookie = in->next_cookie;
	r->u.inode.parent = in->parent;
	r->u.inode.mode = in->mode;
	r->u.inode.uid = in->uid;
	r->u.inode.gid = in->gid;
	r->u.inode.nlink = in->nlink;
	r->u.inode.flags = in->flags;
	struct timespec ts[IT_N];
	for (unsigned t = 0; t < IT_N; t++)
		ts[t] = inode_time(in, t);
	r->u.inode.atime_sec = ts[IT_ATIME].tv_sec;
	r->u.inode.atime_nsec = (uint32_t)ts[IT_ATIME].tv_nsec;
	r->u.inode.mtime_sec = ts[IT_MTIME].tv_sec;
	r->u.inode.mtime_nsec = (uint32_t)ts[IT_MTIME].tv_nsec;
	r->u.inode.ctime_sec = ts[IT_CTIME].tv_sec;
	r->u.inode.ctime_nsec = (uint32_t)ts[IT_CTIME].tv_nsec;
	r->u.inode.btime_sec = ts[IT_BTIME].tv_sec;
	r->u.inode.btime_nsec = (uint32_t)ts[IT_BTIME].tv_nsec;
	if (inode_target(in)) {
		r->data = in->target;
		r->data_len = (uint32_t)strlen(in->target);
	}
}
