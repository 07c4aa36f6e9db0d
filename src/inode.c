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
#include <unistd.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>

#include "cowfs/fs_impl.h"


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
 * per inode, and a store's load makes one allocation per ~145 inodes.
 * Slabs are carved, as needed, out of chunks of ISLAB_CHUNK bytes mapped
 * with mmap(), not malloc'ed: an aligned_alloc() of 16 KiB from the heap
 * leaves up to 16 KiB of free heap around each slab, which the small
 * allocations made between slabs (entries, maps) fill only in part, so
 * that a store of a million inodes kept some 30 MB of free but resident
 * heap.  A slab that empties goes to a spare list with its pages but the
 * first returned to the kernel (MADV_DONTNEED), unless it is the only one
 * with room; chunks are unmapped only when the table is freed.  Under
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
#define ISLAB_CHUNK (64 * ISLAB_BYTES)
struct islab {
	struct islab *next, *prev;	/* in fs->itab.slabs while it has room */
	struct inode *free;		/* free slots, linked by their first word */
	size_t used;			/* inodes in use */
	struct inode slot[];
};
#define ISLAB_N ((ISLAB_BYTES - sizeof(struct islab)) / sizeof(struct inode))

struct islab_chunk {
	struct islab_chunk *next;
	void *base;			/* ISLAB_CHUNK bytes, mapped */
};

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

/* Map a chunk aligned to ISLAB_BYTES: map a slab more and cut the ends. */
static int islab_chunk_new(struct inode_table *t)
{
	struct islab_chunk *c = malloc(sizeof(*c));
	size_t len = ISLAB_CHUNK + ISLAB_BYTES;
	char *p, *a;

	if (!c)
		return -ENOMEM;
	p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS,
		 -1, 0);
	if (p == MAP_FAILED) {
		free(c);
		return -ENOMEM;
	}
	a = (char *)(((uintptr_t)p + ISLAB_BYTES - 1) & ~(uintptr_t)(ISLAB_BYTES - 1));
	if (a > p)
		munmap(p, (size_t)(a - p));
	if (p + len > a + ISLAB_CHUNK)
		munmap(a + ISLAB_CHUNK, (size_t)(p + len - (a + ISLAB_CHUNK)));
	c->base = a;
	c->next = t->chunks;
	t->chunks = c;
	t->carve = a;
	t->carve_end = a + ISLAB_CHUNK;
	return 0;
}

static struct islab *islab_new(struct inode_table *t)
{
	struct islab *s = t->spare;

	if (s) {
		t->spare = s->next;
	} else {
		if (t->carve == t->carve_end && islab_chunk_new(t))
			return NULL;
		s = (struct islab *)t->carve;
		t->carve += ISLAB_BYTES;
	}
	s->free = NULL;
	s->used = 0;
	for (size_t i = ISLAB_N; i-- > 0;) {
		*(struct inode **)&s->slot[i] = s->free;
		s->free = &s->slot[i];
	}
	return s;
}

/* An empty slab: keep its first page for the spare list's link, give the
 * kernel back the rest (page sizes above half a slab keep it all). */
static void islab_retire(struct inode_table *t, struct islab *s)
{
	long pg = sysconf(_SC_PAGESIZE);

	if (pg > 0 && (size_t)pg <= ISLAB_BYTES / 2)
		madvise((char *)s + pg, ISLAB_BYTES - (size_t)pg, MADV_DONTNEED);
	s->next = t->spare;
	t->spare = s;
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
		if (!(s = islab_new(t)))
			return NULL;
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
		islab_retire(t, s);
	}
#endif
}

/* Unmap every chunk: inodes still in them are gone with the table. */
static void islab_free_all(struct inode_table *t)
{
#ifndef ISLAB_OFF
	while (t->chunks) {
		struct islab_chunk *c = t->chunks;
		t->chunks = c->next;
		munmap(c->base, ISLAB_CHUNK);
		free(c);
	}
#endif
	t->slabs = t->spare = NULL;
	t->carve = t->carve_end = NULL;
}

struct inode *inode_new(struct fs *fs, uint64_t ino)
{
	struct inode *in = inode_alloc(&fs->itab);

	if (!in)
		return NULL;
	in->ino = ino;
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
static void xattrs_forget(struct inode *in);

void inode_delete(struct fs *fs, struct inode *in)
{
	if (itab_remove(fs->itab.root, fs->itab.height, in->ino)) {
		free(fs->itab.root);
		fs->itab.root = NULL;
		fs->itab.height = 0;
	}
	fs->ninodes--;
	times_forget(in);
	xattrs_forget(in);
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
		uint64_t bytes = extmap_nblocks(&in->map) << fs->block_shift;
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
		st->st_size = (off_t)(dir_nentries(in) + 2) * 32;
		st->st_blocks = 8;
	} else if (S_ISLNK(in->mode)) {
		st->st_size = in->target ? (off_t)strlen(in->target) : 0;
	}
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

/*
 * Directories (struct dir in fs_impl.h).  Entries sit in one array in
 * cookie order; names in one byte arena; a directory of more than
 * DIR_HASH_MIN entries also has an open-addressing table of entry indexes
 * by name (linear probing, at most 3/4 full, deletion by backward shift),
 * so a lookup is O(1) in a directory of any size.  A delete leaves a
 * tombstone in the array (so that nothing moves under a caller's pointer,
 * and readdir still seeks by cookie); dir_reserve() squeezes the array and
 * the arena when they are to grow and a quarter of them is dead.
 *
 * The arena and the table are refcounted: a clone's directory shares its
 * source's (dir_clone_shape()), and so do equal directories of a loaded
 * checkpoint (dir_pool_share()).  Whoever changes one copies it first
 * (names_own(), hash_own()).  Only the arena's bytes up to a directory's
 * nlen are its own to read; the entries' offsets are the same in all the
 * directories that share it.
 */
#define DIR_HASH_MIN 8

static struct dnames *names_alloc(size_t cap)
{
	struct dnames *nm = malloc(sizeof(*nm) + cap);

	if (nm)
		nm->refs = 1;
	return nm;
}

static void names_drop(struct dir *d)
{
	if (d->names && --d->names->refs == 0)
		free(d->names);
	d->names = NULL;
	d->ncap = 0;
}

static void hash_drop(struct dir *d)
{
	if (d->hash && --d->hash->refs == 0)
		free(d->hash);
	d->hash = NULL;
	d->hcap = 0;
}

/* Make the arena d's own, with room for cap bytes.  -ENOMEM: unchanged. */
static int names_own(struct dir *d, size_t cap)
{
	struct dnames *nm;

	if (cap < d->ncap)
		cap = d->ncap;
	if (d->names && d->names->refs == 1) {
		if (cap == d->ncap)
			return 0;
		if (!(nm = realloc(d->names, sizeof(*nm) + cap)))
			return -ENOMEM;
	} else {
		if (!(nm = names_alloc(cap)))
			return -ENOMEM;
		if (d->nlen)
			memcpy(nm->b, d->names->b, d->nlen);
		names_drop(d);
	}
	d->names = nm;
	d->ncap = (uint32_t)cap;
	return 0;
}

/* Make the table d's own; when it cannot be copied, d goes without one
 * (lookups scan; the next dir_reserve() builds it again).  1: d has a
 * table to change. */
static int hash_own(struct dir *d)
{
	struct dhash *h;

	if (!d->hash)
		return 0;
	if (d->hash->refs == 1)
		return 1;
	h = malloc(sizeof(*h) + d->hcap * sizeof(*h->slot));
	if (!h) {
		hash_drop(d);
		return 0;
	}
	h->refs = 1;
	memcpy(h->slot, d->hash->slot, d->hcap * sizeof(*h->slot));
	d->hash->refs--;
	d->hash = h;
	return 1;
}

int inode_make_dir(struct inode *in, uint64_t parent)
{
	if (!in->dir && !(in->dir = calloc(1, sizeof(*in->dir))))
		return -ENOMEM;
	in->dir->parent = parent;
	if (in->dir->next_cookie < 3)
		in->dir->next_cookie = 3;
	return 0;
}

void dir_free(struct inode *in)
{
	/* a typeless inode (a failed create) may have one too */
	struct dir *d = !(in->mode & S_IFMT) || S_ISDIR(in->mode) ?
			 in->dir : NULL;

	if (!d)
		return;
	free(d->v);
	names_drop(d);
	hash_drop(d);
	free(d);
	in->dir = NULL;
}

/* FNV-1a, with a final mix: names often differ only in their last bytes. */
static uint32_t name_hash(const char *name, size_t len)
{
	uint32_t h = 2166136261u;

	for (size_t i = 0; i < len; i++)
		h = (h ^ (unsigned char)name[i]) * 16777619u;
	h ^= h >> 15;
	h *= 0x2c1b3c6du;
	h ^= h >> 12;
	return h;
}

static uint32_t ent_home(const struct dir *d, uint32_t idx)
{
	const struct dent *e = &d->v[idx];
	return name_hash(d->names->b + e->off, e->len) & (d->hcap - 1);
}

/* The table's functions below change it: d's own (hash_own()). */
static void hash_put(struct dir *d, uint32_t idx)
{
	uint32_t mask = d->hcap - 1, h = ent_home(d, idx);

	while (d->hash->slot[h])
		h = (h + 1) & mask;
	d->hash->slot[h] = idx + 1;
}

/* Fill the table from the live entries. */
static void hash_fill(struct dir *d)
{
	memset(d->hash->slot, 0, d->hcap * sizeof(*d->hash->slot));
	for (uint32_t i = 0; i < d->n; i++)
		if (d->v[i].ino)
			hash_put(d, i);
}

static void hash_remove(struct dir *d, uint32_t idx)
{
	uint32_t *slot = d->hash->slot;
	uint32_t mask = d->hcap - 1, j = ent_home(d, idx), i;

	while (slot[j] != idx + 1)
		j = (j + 1) & mask;
	/* shift back the entries of the run after j that may move */
	for (i = (j + 1) & mask; slot[i]; i = (i + 1) & mask) {
		uint32_t k = ent_home(d, slot[i] - 1);
		if (j < i ? (j < k && k <= i) : (j < k || k <= i))
			continue;	/* its home is after the hole: stays */
		slot[j] = slot[i];
		j = i;
	}
	slot[j] = 0;
}

static struct dent *find(const struct dir *d, const char *name, size_t len)
{
	if (d->hash) {
		const uint32_t *slot = d->hash->slot;
		uint32_t mask = d->hcap - 1;
		for (uint32_t h = name_hash(name, len) & mask; slot[h];
		     h = (h + 1) & mask) {
			struct dent *e = &d->v[slot[h] - 1];
			if (e->len == len && !memcmp(d->names->b + e->off, name, len))
				return e;
		}
		return NULL;
	}
	for (uint32_t i = 0; i < d->n; i++) {
		struct dent *e = &d->v[i];
		if (e->ino && e->len == len &&
		    !memcmp(d->names->b + e->off, name, len))
			return e;
	}
	return NULL;
}

struct dent *dir_find(struct inode *dir, const char *name)
{
	size_t n = strlen(name);

	if (!inode_dir(dir) || n > COWFS_NAME_MAX)
		return NULL;
	return find(dir->dir, name, n);
}

/* Drop the tombstones (the cookies stay: they are stored, not
 * positions).  Nothing is allocated but maybe a copy of the table. */
static void squeeze(struct dir *d)
{
	uint32_t j = 0;

	for (uint32_t i = 0; i < d->n; i++)
		if (d->v[i].ino)
			d->v[j++] = d->v[i];
	d->n = j;
	if (hash_own(d))
		hash_fill(d);
}

/* Drop the dead names: a new arena of cap bytes for the live ones. */
static int squeeze_names(struct dir *d, size_t cap)
{
	struct dnames *nm = names_alloc(cap);
	uint32_t off = 0;

	if (!nm)
		return -ENOMEM;
	for (uint32_t i = 0; i < d->n; i++) {
		struct dent *e = &d->v[i];
		if (!e->ino)
			continue;
		memcpy(nm->b + off, d->names->b + e->off, e->len + 1);
		e->off = off;
		off += e->len + 1;
	}
	names_drop(d);
	d->names = nm;
	d->ncap = (uint32_t)cap;
	d->nlen = off;
	d->dead = 0;
	return 0;
}

static int grow_v(struct dir *d, size_t need)
{
	size_t cap = d->cap ? 2 * (size_t)d->cap : 4;
	struct dent *v;

	if (need <= d->cap)
		return 0;
	if (cap < need)
		cap = need;
	if (cap > UINT32_MAX)
		cap = UINT32_MAX;
	if (!(v = realloc(d->v, cap * sizeof(*v))))
		return -ENOMEM;
	d->v = v;
	d->cap = (uint32_t)cap;
	return 0;
}

int dir_reserve(struct inode *in, size_t len)
{
	struct dir *d = inode_dir(in);
	size_t need;
	int rc;

	if (!d)
		return -ENOTDIR;
	need = (size_t)d->nlen + len + 1;
	if ((size_t)d->n + 1 >= UINT32_MAX || need >= UINT32_MAX)
		return -ENOSPC;
	/* squeeze rather than grow when a quarter is dead */
	if (d->n == d->cap && 4 * (size_t)(d->n - d->nentries) >= d->n)
		squeeze(d);
	if (need > d->ncap && d->dead && 4 * (size_t)d->dead >= d->nlen) {
		size_t live = d->nlen - d->dead;
		if (squeeze_names(d, live + live / 2 + len + 1))
			return -ENOMEM;
		need = (size_t)d->nlen + len + 1;
	}
	if ((rc = grow_v(d, (size_t)d->n + 1)))
		return rc;
	if (need > d->ncap || !d->names || d->names->refs > 1) {
		size_t cap = d->ncap ? 2 * (size_t)d->ncap : 64;
		if (need <= d->ncap)
			cap = d->ncap;	/* only to own it */
		if ((rc = names_own(d, cap < need ? need : cap)))
			return rc;
	}
	/* the table: once past DIR_HASH_MIN entries, at most 3/4 full; best
	 * effort (without one, lookups scan) */
	hash_own(d);
	if (d->nentries + 1 > DIR_HASH_MIN &&
	    4 * ((size_t)d->nentries + 1) > 3 * (size_t)d->hcap) {
		size_t hcap = d->hcap ? 2 * (size_t)d->hcap : 32;
		while (4 * ((size_t)d->nentries + 1) > 3 * hcap)
			hcap *= 2;
		struct dhash *h = hcap <= UINT32_MAX ?
			malloc(sizeof(*h) + hcap * sizeof(*h->slot)) : NULL;
		hash_drop(d);
		if (h) {
			h->refs = 1;
			d->hash = h;
			d->hcap = (uint32_t)hcap;
			hash_fill(d);
		}
	}
	return 0;
}

int dir_presize(struct inode *in, size_t n, size_t nlen)
{
	struct dir *d = inode_dir(in);

	if (!d || !n || d->cap || d->ncap || d->hcap ||
	    n > UINT32_MAX / 2 || nlen > UINT32_MAX / 2)
		return 0;
	if (!(d->v = malloc(n * sizeof(*d->v))))
		return -ENOMEM;
	d->cap = (uint32_t)n;
	if (!(d->names = names_alloc(nlen)))
		return -ENOMEM;
	d->ncap = (uint32_t)nlen;
	/* the table at its final size too, as dir_add() would grow it:
	 * no smaller ones freed on the way */
	if (n > DIR_HASH_MIN) {
		size_t hcap = 32;
		while (4 * n > 3 * hcap)
			hcap *= 2;
		struct dhash *h = calloc(1, sizeof(*h) + hcap * sizeof(*h->slot));
		if (h) {	/* best effort, as in dir_add() */
			h->refs = 1;
			d->hash = h;
			d->hcap = (uint32_t)hcap;
		}
	}
	return 0;
}

int dir_prealloc(struct inode *in, const struct inode *like)
{
	struct dir *d = inode_dir(in);
	const struct dir *s = inode_dir(like);
	int rc;

	if (!d || !s || !s->nentries || d->cap || d->ncap || d->hcap)
		return 0;
	if ((rc = dir_presize(in, s->nentries, s->nlen - s->dead)))
		return rc;
	d->next_cookie = s->next_cookie;
	return 0;
}

int dir_clone_shape(struct inode *in, const struct inode *like)
{
	struct dir *d = inode_dir(in);
	const struct dir *s = inode_dir(like);

	if (!d || !s || d->n || d->cap || d->names || d->hash)
		return -EINVAL;
	d->next_cookie = s->next_cookie;
	if (!s->nentries)
		return 0;
	if (s->n != s->nentries || s->dead)
		return 1;	/* tombstones: entry by entry (dir_add) */
	if (!(d->v = malloc(s->n * sizeof(*d->v))))
		return -ENOMEM;
	memcpy(d->v, s->v, s->n * sizeof(*d->v));
	d->n = d->cap = s->n;
	d->nentries = s->nentries;
	d->names = s->names;
	d->names->refs++;
	d->ncap = s->ncap;
	d->nlen = s->nlen;
	if (s->hash) {
		d->hash = s->hash;
		d->hash->refs++;
		d->hcap = s->hcap;
	}
	return 0;
}

void dir_trim(struct inode *in)
{
	struct dir *d = inode_dir(in);
	void *p;

	if (!d)
		return;
	if (d->n < d->cap) {
		if (!d->n) {
			free(d->v);
			d->v = NULL;
			d->cap = 0;
		} else if ((p = realloc(d->v, d->n * sizeof(*d->v)))) {
			d->v = p;
			d->cap = d->n;
		}
	}
	if (d->nlen < d->ncap && d->names && d->names->refs == 1) {
		if (!d->nlen) {
			names_drop(d);
		} else if ((p = realloc(d->names, sizeof(*d->names) + d->nlen))) {
			d->names = p;
			d->ncap = d->nlen;
		}
	}
}

/*
 * A pool of arenas and tables by content, for the directories of a
 * checkpoint being loaded: a clone's directory has the same names in the
 * same order as its source, hence the same arena and the same table.
 * The pool holds a reference to what it holds.
 */
struct dir_pool {
	struct dir_pool_ent {
		struct dnames *names;
		struct dhash *hash;	/* NULL: none */
		uint32_t nlen, hcap;
	} *slot;			/* open addressing by the names' hash */
	size_t cap, n;
};

struct dir_pool *dir_pool_new(void)
{
	return calloc(1, sizeof(struct dir_pool));
}

void dir_pool_free(struct dir_pool *p)
{
	if (!p)
		return;
	for (size_t i = 0; i < p->cap; i++) {
		struct dir t = { .names = p->slot[i].names, .hash = p->slot[i].hash };
		names_drop(&t);
		hash_drop(&t);
	}
	free(p->slot);
	free(p);
}

static uint64_t bytes_hash(const char *b, size_t len)
{
	uint64_t h = 1469598103934665603ull;

	for (size_t i = 0; i < len; i++)
		h = (h ^ (unsigned char)b[i]) * 1099511628211ull;
	return h ^ (h >> 29);
}

static int dir_pool_grow(struct dir_pool *p)
{
	size_t cap = p->cap ? 2 * p->cap : 1024;
	struct dir_pool_ent *slot = calloc(cap, sizeof(*slot));

	if (!slot)
		return -ENOMEM;
	for (size_t i = 0; i < p->cap; i++) {
		struct dir_pool_ent *e = &p->slot[i];
		if (!e->names)
			continue;
		size_t h = bytes_hash(e->names->b, e->nlen) & (cap - 1);
		while (slot[h].names)
			h = (h + 1) & (cap - 1);
		slot[h] = *e;
	}
	free(p->slot);
	p->slot = slot;
	p->cap = cap;
	return 0;
}

/* Are the names in the arena in the entries' order, back to back?  Then
 * two such directories with equal arenas have the same name at every
 * index, and a table of one is a table of the other. */
static int arena_in_order(const struct dir *d)
{
	uint32_t off = 0;

	for (uint32_t i = 0; i < d->n; i++) {
		if (d->v[i].off != off)
			return 0;
		off += d->v[i].len + 1;
	}
	return off == d->nlen;
}

void dir_pool_share(struct dir_pool *p, struct inode *in)
{
	struct dir *d = inode_dir(in);
	struct dir_pool_ent *e;
	int full = 0;
	size_t h;

	/* only whole, tombstone-free arenas in order, cut to size (dir_trim) */
	if (!p || !d || !d->names || d->dead || d->n != d->nentries ||
	    d->ncap != d->nlen || !arena_in_order(d))
		return;
	/* past 1M slots (24 MiB), look up only */
	if (2 * (p->n + 1) > p->cap &&
	    (p->cap >= ((size_t)1 << 20) || dir_pool_grow(p)))
		full = 1;
	if (!p->cap)
		return;
	for (h = bytes_hash(d->names->b, d->nlen) & (p->cap - 1);
	     (e = &p->slot[h])->names; h = (h + 1) & (p->cap - 1)) {
		if (e->nlen != d->nlen || memcmp(e->names->b, d->names->b, d->nlen))
			continue;
		if (e->names != d->names) {
			e->names->refs++;
			names_drop(d);
			d->names = e->names;
			d->ncap = d->nlen;
		}
		/* the same names at the same indexes (arena_in_order):
		 * e's table serves d; the same bytes, as a check */
		if (e->hash && d->hash && e->hash != d->hash &&
		    e->hcap == d->hcap &&
		    !memcmp(e->hash->slot, d->hash->slot,
			    d->hcap * sizeof(*d->hash->slot))) {
			e->hash->refs++;
			hash_drop(d);
			d->hash = e->hash;
			d->hcap = e->hcap;
		}
		return;
	}
	if (full)
		return;
	*e = (struct dir_pool_ent){ d->names, d->hash, d->nlen, d->hcap };
	d->names->refs++;
	if (d->hash)
		d->hash->refs++;
	p->n++;
}

/* The index of the first entry whose cookie is >= cookie. */
static uint32_t seek(const struct dir *d, uint64_t cookie)
{
	uint32_t lo = 0, hi = d->n;

	while (lo < hi) {
		uint32_t mid = lo + (hi - lo) / 2;
		if (d->v[mid].cookie < cookie)
			lo = mid + 1;
		else
			hi = mid;
	}
	return lo;
}

size_t dir_seek(const struct inode *dir, uint64_t cookie)
{
	const struct dir *d = inode_dir(dir);

	return d ? seek(d, cookie) : 0;
}

struct dent *dir_next(const struct inode *dir, size_t *i)
{
	const struct dir *d = inode_dir(dir);

	if (!d)
		return NULL;
	for (; *i < d->n; (*i)++)
		if (d->v[*i].ino)
			return &d->v[*i];
	return NULL;
}

int dir_add(struct fs *fs, struct inode *dir, const char *name, uint64_t ino,
	    uint64_t cookie)
{
	size_t len = strlen(name);
	struct dir *d = inode_dir(dir);
	uint32_t pos;
	int rc = fs_name_check(name, len), moved = 0;

	(void)fs;
	if (rc)
		return rc;
	if (!d || !ino)
		return -EINVAL;
	/* 1 and 2 are "." and ".."; readdir offsets are signed */
	if (cookie < 3 || cookie >= (uint64_t)INT64_MAX)
		return -EINVAL;
	if (find(d, name, len))
		return -EEXIST;
	if ((rc = dir_reserve(dir, len)))
		return rc;
	pos = d->n && cookie <= d->v[d->n - 1].cookie ? seek(d, cookie) : d->n;
	if (pos < d->n && d->v[pos].cookie == cookie) {
		/* never two entries with one cookie; a tombstone's slot is
		 * reused (its name stays dead in the arena) */
		if (d->v[pos].ino)
			return -EEXIST;
	} else {
		/* out of order only for odd replayed records */
		moved = pos < d->n;
		memmove(&d->v[pos + 1], &d->v[pos], (d->n - pos) * sizeof(*d->v));
		d->n++;
	}
	memcpy(d->names->b + d->nlen, name, len + 1);
	d->v[pos] = (struct dent){ .ino = ino, .cookie = cookie,
				   .off = d->nlen, .len = (uint32_t)len };
	d->nlen += (uint32_t)len + 1;
	d->nentries++;
	if (d->hash && moved)
		hash_fill(d);	/* the indexes after pos moved */
	else if (d->hash)
		hash_put(d, pos);
	if (cookie >= d->next_cookie)
		d->next_cookie = cookie + 1;
	return 0;
}

void dir_del(struct fs *fs, struct inode *dir, struct dent *e)
{
	struct dir *d = inode_dir(dir);
	uint32_t idx = (uint32_t)(e - d->v);

	(void)fs;
	if (hash_own(d))
		hash_remove(d, idx);
	e->ino = 0;
	d->dead += e->len + 1;
	d->nentries--;
	/* trailing tombstones go at once: nothing is after them */
	while (d->n && !d->v[d->n - 1].ino)
		d->n--;
	if (d->nentries == 0)
		d->nlen = d->dead = 0;
}

/* ---- xattrs ----
 * A side table of the inodes that have xattrs (few have any; a pointer in
 * every inode would cost 8 bytes each): a tree keyed by the inode's
 * address, holding the head of its list; in->has_xattrs says it has an
 * entry.  Its own leaf mutex, as the times' (any thread reads it).
 */
struct xnode {
	RB_ENTRY(xnode) node;
	const struct inode *in;
	struct xattr *head;
};
static int xnode_cmp(struct xnode *a, struct xnode *b)
{
	return (uintptr_t)a->in < (uintptr_t)b->in ? -1 :
	       (uintptr_t)a->in > (uintptr_t)b->in;
}
RB_HEAD(xnode_tree, xnode);
RB_PROTOTYPE(xnode_tree, xnode, node, xnode_cmp)
RB_GENERATE(xnode_tree, xnode, node, xnode_cmp)
static struct xnode_tree xnodes = RB_INITIALIZER(&xnodes);
static pthread_mutex_t xnodes_lock = PTHREAD_MUTEX_INITIALIZER;

/* The head of in's list, made when make (NULL: out of memory), else NULL
 * when in has none. */
static struct xattr **xattr_head(struct inode *in, bool make)
{
	struct xnode key = { .in = in }, *x = NULL;

	if (!in->has_xattrs && !make)
		return NULL;
	pthread_mutex_lock(&xnodes_lock);
	if (in->has_xattrs)
		x = RB_FIND(xnode_tree, &xnodes, &key);
	if (!x && make && (x = calloc(1, sizeof(*x)))) {
		x->in = in;
		RB_INSERT(xnode_tree, &xnodes, x);
	}
	pthread_mutex_unlock(&xnodes_lock);
	if (!x)
		return NULL;
	if (make)
		in->has_xattrs = true;
	return &x->head;
}

/* in's list is empty: drop its entry. */
static void xnode_drop(struct inode *in)
{
	struct xnode key = { .in = in }, *x;

	if (!in->has_xattrs)
		return;
	pthread_mutex_lock(&xnodes_lock);
	if ((x = RB_FIND(xnode_tree, &xnodes, &key)))
		RB_REMOVE(xnode_tree, &xnodes, x);
	pthread_mutex_unlock(&xnodes_lock);
	free(x);
	in->has_xattrs = false;
}

static void xattrs_forget(struct inode *in)
{
	struct xattr **h = xattr_head(in, false);

	while (h && *h) {
		struct xattr *x = *h;
		*h = x->next;
		free(x->name);
		free(x->value);
		free(x);
	}
	xnode_drop(in);
}

struct xattr *inode_xattrs(const struct inode *in)
{
	struct xattr **h = xattr_head((struct inode *)(uintptr_t)in, false);

	return h ? *h : NULL;
}

struct xattr **xattr_find(struct inode *in, const char *name)
{
	static struct xattr *none;	/* stays NULL: callers only read */
	struct xattr **p = xattr_head(in, false);

	if (!p)
		return &none;
	for (; *p; p = &(*p)->next)
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
		if (!x || !(x->name = strdup(name)) ||
		    !(p = xattr_head(in, true))) {
			if (x)
				free(x->name);
			free(x);
			free(val);
			if (!inode_xattrs(in))
				xnode_drop(in);
			return -ENOMEM;
		}
		while (*p)	/* last, as before */
			p = &(*p)->next;
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
	if (!inode_xattrs(in))
		xnode_drop(in);
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
	r->u.inode.next_cookie = dir_next_cookie(in);
	r->u.inode.parent = dir_parent(in);
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
