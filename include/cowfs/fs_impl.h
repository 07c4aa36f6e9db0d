/*
 * fs_impl.h - the core's internal structures and the prototypes its
 * modules share.  Nothing outside the core includes this header.
 *
 * Modules, each calling only the ones below it (scripts/check-layers.sh
 * checks this on every test run, from the object files):
 *
 *   super.c fsck.c status.c open/close a store, offline check, figures
 *   replay.c                applies records read back (journal_load's
 *                           callback from super.c)
 *   origin.c clone.c fs.c   clones by reference, clones, namespace ops
 *   file.c                  extent maps, refcounts, the cow read/write path
 *   journal.c               the metadata file: log, commit, checkpoint, load
 *   object.c                objects, fd cache, pins, origin open/check,
 *                           prefetch (object.h)
 *   inode.c                 the inode table, entries, xattrs, dirty list
 *   format.c store.c        the record codec; the store directory's
 *                           syscalls (store.h)
 *   log.c lock.c extmap.c refcount.c   leaves
 *
 * LOCK ORDER (acquire top to bottom; never the other way).  The levels are
 * enum lock_level below; take them with lock_take()/lock_drop() (and
 * lock_io_take()/lock_io_drop() for io_lock), which assert the order in
 * builds without NDEBUG:
 *
 *   LOCK_COMMIT fs->commit_lock  serialises commits and checkpoints
 *   LOCK_DATA   fs->data_lock    rwlock: data changes take it shared, a
 *                                clone takes it exclusive so that it sees no
 *                                write half-done.  Writers are preferred: a
 *                                waiting clone blocks new shared takers.
 *                                So never take it shared twice.
 *   LOCK_IO     io_lock          one data-changing operation per file at a
 *                                time: a stripe of lock_io_stripes, by a
 *                                hash of the inode number (two files: one
 *                                stripe once, or the lower stripe first;
 *                                lock_io_take2())
 *   LOCK_FS     fs->lock         everything in memory: inodes, dirents,
 *                                extent maps, refcounts, objects, the
 *                                journal buffer.  Held briefly; never across
 *                                file-data I/O, a fuse_reply_*() or any
 *                                syscall on a host file that may block
 *                                (open, fstat, ftruncate, fallocate...).
 *   LOCK_PF     fs->pf_lock      the prefetch queue; a leaf.
 *
 * Invariants:
 *  (1) A block in a file's write object is referenced by that file alone,
 *      at the same logical index: block i of the file at block i of the
 *      object.  Adding a reference to such a block retires the object.
 *  (2) A slot of a write object is filled at most once: when a block of
 *      the write object is unmapped, the object is retired, so a freed slot
 *      (punched only after the commit that freed it) is never written again.
 *  (3) Shared blocks (refcount >= 2) and origin blocks are never written.
 *  (4) After an unclean stop, every write object is retired: its unmapped
 *      slots may hold bytes that no committed record describes.
 */
#ifndef COWFS_FS_IMPL_H
#define COWFS_FS_IMPL_H

#include <assert.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/queue.h>
#include <sys/stat.h>
#include <sys/tree.h>
#include <time.h>

#include "cowfs/extmap.h"
#include "cowfs/format.h"
#include "cowfs/fs.h"
#include "cowfs/object.h"
#include "cowfs/refcount.h"
#include "cowfs/store.h"

struct xattr {
	struct xattr *next;
	char *name;	/* owned */
	void *value;	/* owned */
	uint32_t len;
};

/*
 * A directory entry: 24 bytes in its directory's array (struct dir).  The
 * array is in cookie order, so readdir resumes from a cookie by binary
 * search; a deleted entry stays as a tombstone (ino 0) until the array is
 * compacted, which keeps the cookies (stored, not positions).
 */
struct dent {
	uint64_t ino;		/* 0: deleted */
	uint64_t cookie;	/* readdir offset; stable while the entry lives */
	uint32_t off;		/* the name: NUL-terminated at names + off */
	uint32_t len;		/* strlen of the name */
};

/* A directory's names, back to back; shared by clones (refs). */
struct dnames {
	uint32_t refs;
	char b[];
};

/* A directory's table by name: index + 1 in v, 0 empty; shared too. */
struct dhash {
	uint32_t refs;
	uint32_t slot[];
};

/* What only a directory has (struct inode's dir, NULL for the others). */
struct dir {
	struct dent *v;		/* by cookie; tombstones among them */
	struct dnames *names;	/* the names' arena */
	struct dhash *hash;	/* linear probing; NULL while small */
	uint32_t n, cap;	/* v: used (tombstones too), allocated */
	uint32_t nlen, ncap;	/* names: used, allocated */
	uint32_t dead;		/* bytes of names of tombstones */
	uint32_t hcap;		/* slots of hash, a power of 2 */
	uint32_t nentries;	/* live entries */
	uint64_t next_cookie;
	uint64_t parent;
};

/*
 * Timestamps are kept as nanoseconds since the epoch in an int64_t, which
 * covers 1677-09-21 to 2262-04-11.  A time outside that range (or a
 * tv_nsec outside [0, 1e9) read back from a record) is kept exactly in a
 * side table in inode.c, and its bit is set in in->xtimes.  Read and set
 * them with inode_time()/inode_set_time() (or inode_mtime() etc.).
 */
enum inode_time {
	IT_ATIME,
	IT_MTIME,
	IT_CTIME,
	IT_BTIME,
	IT_N
};

/*
 * One inode (112 bytes): the table (fs->itab) holds pointers to it,
 * the dirty list holds its number, its io_lock is a stripe of a shared
 * table (lock.c), so nothing here links it to anything else.
 */
struct inode {
	uint64_t ino;
	uint64_t size;
	int64_t times[IT_N];	/* ns since the epoch, unless xtimes says */
	uint32_t mode, uid, gid, nlink, flags;
	uint32_t nopen;		/* open file handles */
	uint32_t nlookup;	/* kernel references; sticks at UINT32_MAX
				 * (inode_lookup_ref()) */
	bool dirty;		/* attributes not yet journaled; then its
				 * number is in fs->dirty */
	uint8_t xtimes;		/* bit per enum inode_time: in the side table */
	uint8_t vtags;		/* journal.c verify_graph()'s marks (load
				 * only; in what was padding) */
	uint8_t pt;		/* regular files: open in FUSE passthrough
				 * mode (file.c: struct pt_ent); in what
				 * was padding */
	bool has_xattrs;	/* its xattrs are in inode.c's side table
				 * (few inodes have any): inode_xattrs() */
	bool linkable;		/* made by O_TMPFILE and never linked:
				 * fs_link() may give it a first name
				 * (memory only; in what was padding) */
	/* One type's fields; all zero for the other types.  Test the type
	 * before touching any of them (inode_dir(), inode_target(), ...):
	 * a directory's dir shares its word with a file's map. */
	union {
		struct dir *dir;	/* directories (inode.c: dir_*); NULL
					 * until inode_make_dir() */
		struct {		/* regular files */
			struct extmap map;
			uint64_t wobj;	/* write object id, 0: none yet */
		};
		char *target;		/* symlinks (may be NULL) */
		uint64_t rdev;		/* character and block devices */
	};
};

/*
 * The inode table: a radix tree over the inode number, 64 slots a node,
 * as high as the largest number needs.  Numbers come from a counter, so a
 * store's inodes are dense and cost one pointer each (plus 1/64 of a node
 * header); a lookup or an insert is a few array steps, with no allocation
 * but one node per 64 inodes.  Iteration is in inode-number order.
 */
#define ITAB_SHIFT 6
#define ITAB_FAN (1u << ITAB_SHIFT)
struct itab_node {
	uint32_t count;			/* non-NULL slots */
	void *slot[ITAB_FAN];		/* nodes, or inodes at the bottom */
};
struct inode_table {
	struct itab_node *root;
	unsigned height;		/* levels; 0: empty */
	struct islab *slabs;		/* inode.c: slabs with a free slot */
	struct islab *spare;		/* inode.c: emptied slabs, their
					 * pages returned to the kernel */
	char *carve, *carve_end;	/* inode.c: unused part of the
					 * newest chunk of slabs */
	struct islab_chunk *chunks;	/* inode.c: every chunk, to unmap */
};

/*
 * A regular file in FUSE passthrough mode (file.c): the kernel reads and
 * writes its write object directly, through fd.  One entry per inode with
 * a passthrough open, in fs->pt; under fs->lock.
 */
struct pt_ent {
	uint64_t ino;
	uint64_t obj;		/* the write object the kernel writes */
	int fd;			/* ours, O_RDWR: fstat, SEEK_DATA, ftruncate */
	int backing;		/* the FUSE layer's backing id */
	uint32_t count;		/* passthrough opens, and one for a size
				 * SETATTR under way (trunc_pending) */
	bool trunc_pending;	/* a SETATTR set the size to trunc_size
				 * (pt_truncate); fs_pt_setattr_done
				 * commits it and cuts fd, or undoes it */
	bool settled;		/* seen_ctime a tick older than the last
				 * scan: an unchanged key means no write */
	uint64_t trunc_size;
	uint64_t trunc_from;	/* in->size before that SETATTR */
	struct timespec trunc_mtime, trunc_ctime;	/* and its times */
	uint64_t seen_size;	/* fd's size, mtime, ctime at the last scan */
	struct timespec seen_mtime, seen_ctime;
};

struct pending_free {
	uint64_t obj, pblk, len;
};

struct fs {
	struct store store;
	struct fs_options opt;
	unsigned block_shift;
	uint64_t block_size;
	FILE *log;

	pthread_mutex_t lock;
	pthread_rwlock_t data_lock;
	pthread_mutex_t commit_lock;

	/* protected by lock */
	struct inode_table itab;	/* inode.c */
	struct obj_table objects;	/* object.c: objects, fd LRU */
	unsigned nfds, max_fds;		/* object.c: open fds, their bound */
	struct refcount rc;
	uint64_t next_ino, next_obj;
	uint64_t *dirty;		/* numbers of inodes to journal, in
					 * the order they were dirtied; an
					 * entry whose inode is gone or clean
					 * is skipped */
	size_t ndirty, cap_dirty;
	bool dirty_lost;		/* the vector could not grow: the
					 * flush scans every inode */
	uint64_t ninodes;
	struct object *dirty_objs;	/* list via dirty_next */
	struct pending_free *frees;	/* blocks to punch after commit */
	size_t nfrees, cap_frees;
	struct object **unlinks;	/* doomed objects, after commit */
	size_t nunlinks, cap_unlinks;
	unsigned char *jbuf;		/* records not yet committed */
	size_t jlen, jcap;
	size_t jrecs;
	int ext_coalesce;		/* last record is an EXT_SET we may extend */
	size_t ext_last_off;
	int replaying;			/* applying records from disk */
	/* while the checkpoint loads: equal extent maps come to share one
	 * array (replay.c), each map when the next inode's extents start */
	struct extmap_pool *ext_pool;
	uint64_t ext_pool_last;		/* inode whose map is being loaded */
	struct dir_pool *dir_pool;	/* likewise names and tables */
	uint64_t dir_load_last;		/* directory whose entries are, too */
	/* REC_ORIGIN paths are stored as a prefix shared with the previous
	 * REC_ORIGIN of the same batch (or checkpoint) plus a suffix: the
	 * origin object of that previous record. */
	const struct object *opath_prev;	/* writer side, reset per batch */
	const struct object *opath_load;	/* loader side, reset per batch */
	int broken;			/* sticky: metadata write failed */
	struct pt_ent *pt;		/* file.c: files in passthrough mode */
	size_t npt, cap_pt;
	uint64_t pt_opens;		/* passthrough opens so far */

	/* protected by commit_lock */
	int metafd;
	uint64_t meta_end;		/* append offset of the journal */
	uint64_t ckpt_len;
	uint64_t generation;
	uint64_t commit_seq;
	int mounted;			/* the header's mount mark is set; the
					 * checkpoint of a clean close clears it */

	/* origin prefetch: paths whose data a listing suggests will be read
	 * soon; protected by pf_lock (a leaf lock: take nothing under it) */
	pthread_mutex_t pf_lock;
	pthread_cond_t pf_cond;
	struct pf_item *pf_queue;
	size_t pf_head, pf_tail, pf_cap;
	pthread_t pf_threads[2];
	int pf_nthreads;
	bool pf_stop;

	/* commit thread */
	pthread_t thread;
	bool thread_started, stopping;
	pthread_cond_t cond;		/* with lock */
};

/* inode.c: the inode table, entries, xattrs; all under fs->lock */
struct inode *inode_get(struct fs *fs, uint64_t ino);
/* A new inode in the table (caller fills it); NULL: out of memory. */
struct inode *inode_new(struct fs *fs, uint64_t ino);
/* Take in out of the table and free what inode.c owns of it (times,
 * xattrs, the struct); fs.c's inode_free() frees the rest first. */
void inode_delete(struct fs *fs, struct inode *in);
/* The inode with the lowest number above ino; NULL: none. */
struct inode *inode_after(struct fs *fs, uint64_t ino);
/* Free the table itself (the inodes are freed already). */
void inode_table_free(struct fs *fs);
/* Every inode in number order; the _SAFE form lets the body free in. */
#define INODE_FOREACH(in, fs)						\
	for ((in) = inode_after((fs), 0); (in);				\
	     (in) = inode_after((fs), (in)->ino))
#define INODE_FOREACH_SAFE(in, fs, t)					\
	for ((in) = inode_after((fs), 0);				\
	     (in) && ((t) = inode_after((fs), (in)->ino), 1); (in) = (t))
void inode_dirty(struct fs *fs, struct inode *in);
void inode_undirty(struct fs *fs, struct inode *in);
/* Hand each dirty inode to fn once, in the order they were dirtied, and
 * mark it clean. */
void inode_flush_dirty(struct fs *fs, void (*fn)(struct fs *, struct inode *));
struct timespec inode_time(const struct inode *in, enum inode_time t);
void inode_set_time(struct inode *in, enum inode_time t, struct timespec ts);
#define inode_atime(in) inode_time((in), IT_ATIME)
#define inode_mtime(in) inode_time((in), IT_MTIME)
#define inode_ctime(in) inode_time((in), IT_CTIME)
#define inode_btime(in) inode_time((in), IT_BTIME)
/* ts, or now when ts is NULL, to each time whose bit is in mask (1 <<
 * enum inode_time). */
void inode_touch(struct inode *in, unsigned mask, const struct timespec *ts);
#define IT_BIT(t) (1u << (t))
/*
 * The kernel's references.  The count saturates: an inode looked up
 * UINT32_MAX times without a forget stays in memory until unmount rather
 * than be freed while the kernel may still use it.
 */
static inline void inode_lookup_ref(struct inode *in)
{
	if (in->nlookup != UINT32_MAX)
		in->nlookup++;
}

static inline void inode_lookup_unref(struct inode *in, uint64_t n)
{
	if (in->nlookup != UINT32_MAX)
		in->nlookup = n >= in->nlookup ? 0 : in->nlookup - (uint32_t)n;
}

/* The per-type fields that share storage: 0 / NULL for other types. */
static inline uint64_t inode_rdev(const struct inode *in)
{
	return (in->mode & S_IFMT) == S_IFCHR || (in->mode & S_IFMT) == S_IFBLK ?
	       in->rdev : 0;
}
static inline const char *inode_target(const struct inode *in)
{
	return (in->mode & S_IFMT) == S_IFLNK ? in->target : NULL;
}
/* Set rdev (devices only: it shares storage with a symlink's target). */
static inline void inode_set_rdev(struct inode *in, uint64_t rdev)
{
	if ((in->mode & S_IFMT) == S_IFCHR || (in->mode & S_IFMT) == S_IFBLK)
		in->rdev = rdev;
}
void inode_stat(const struct fs *fs, const struct inode *in, struct stat *st);
void now_ts(struct timespec *ts);
/* A directory's part: in->dir made for a new directory inode; 0 or
 * -ENOMEM.  Freed by dir_free(). */
int inode_make_dir(struct inode *in, uint64_t parent);
void dir_free(struct inode *in);
/* Size the new, empty directory in for like's entries (a clone's copy
 * of like: no growing, no slack); it takes like's next_cookie. */
int dir_prealloc(struct inode *in, const struct inode *like);
/* Size the new, empty directory in for n entries of nlen bytes of names
 * (their NULs counted) and its table for them.  0 (also when in is not
 * new and empty) or -ENOMEM. */
int dir_presize(struct inode *in, size_t n, size_t nlen);
/* Give back the room for entries to come (after a load). */
void dir_trim(struct inode *in);
/* The new, empty directory in takes like's entries as they are (inos
 * too, for the caller to replace, same index for same entry), sharing
 * like's names and table.  1: like has tombstones, nothing done but
 * next_cookie (add the entries one by one); 0 or -ENOMEM. */
int dir_clone_shape(struct inode *in, const struct inode *like);
/* Equal directories of a checkpoint being loaded come to share their
 * names and tables: dir_pool_share() each directory once its entries are
 * in and it is cut to size (dir_trim()). */
struct dir_pool;
struct dir_pool *dir_pool_new(void);
void dir_pool_free(struct dir_pool *p);
void dir_pool_share(struct dir_pool *p, struct inode *in);
/*
 * Entries.  A struct dent pointer stays valid until the next dir_add() or
 * dir_reserve() on its directory (dir_del() moves nothing); so does a
 * dent_name() pointer.
 */
struct dent *dir_find(struct inode *dir, const char *name);
/* Room for one dir_add() of a name of len bytes: after it, that add
 * fails only for a bad name, cookie or a duplicate, never -ENOMEM. */
int dir_reserve(struct inode *dir, size_t len);
/* A bad name is -EINVAL or -ENAMETOOLONG; a name or a live cookie already
 * in dir is -EEXIST (a replayed record that does not fit). */
int dir_add(struct fs *fs, struct inode *dir, const char *name, uint64_t ino,
	    uint64_t cookie);
void dir_del(struct fs *fs, struct inode *dir, struct dent *d);
/* The first live entry at index *i or after (*i set to its index); NULL
 * at the end.  Walk: for (i = 0; (d = dir_next(dir, &i)); i++). */
struct dent *dir_next(const struct inode *dir, size_t *i);
/* The index of the first entry whose cookie is >= cookie. */
size_t dir_seek(const struct inode *dir, uint64_t cookie);

static inline const char *dent_name(const struct inode *dir,
				    const struct dent *d)
{
	return dir->dir->names->b + d->off;
}

/* in's directory part; NULL for the other types (their word of the
 * union is a map or a target) and for a directory not made yet. */
static inline struct dir *inode_dir(const struct inode *in)
{
	return (in->mode & S_IFMT) == S_IFDIR ? in->dir : NULL;
}

static inline uint64_t dir_nentries(const struct inode *in)
{
	const struct dir *d = inode_dir(in);
	return d ? d->nentries : 0;
}

static inline uint64_t dir_parent(const struct inode *in)
{
	const struct dir *d = inode_dir(in);
	return d ? d->parent : 0;
}

static inline uint64_t dir_next_cookie(const struct inode *in)
{
	const struct dir *d = inode_dir(in);
	return d ? d->next_cookie : 3;
}

/* in's xattrs (a list; NULL: none), kept in a side table by inode.c.
 * The list changes only by xattr_set()/xattr_del(). */
struct xattr *inode_xattrs(const struct inode *in);
/* The link to name's xattr in in's list, *link NULL when it has none;
 * read it only (a shared empty link when in has no xattrs at all). */
struct xattr **xattr_find(struct inode *in, const char *name);
int xattr_set(struct inode *in, const char *name, const void *v, uint32_t len);
int xattr_del(struct inode *in, const char *name);
void inode_to_rec(const struct inode *in, struct rec *r);

/* fs.c: the namespace operations */
/* Free an inode and everything it holds (drops its blocks' references). */
void inode_free(struct fs *fs, struct inode *in);
void inode_maybe_free(struct fs *fs, struct inode *in);
int inode_may(const struct fs_ctx *c, const struct inode *in, unsigned want);

/* replay.c */
/* Apply one record read from the metadata file; -EINVAL: it does not fit
 * the state (corruption). */
int apply_rec(struct fs *fs, const struct rec *r);
/* The checkpoint is in: end the sharing of equal maps (fs->ext_pool) and
 * recount live blocks (file_compute_nlive). */
void replay_checkpoint_loaded(struct fs *fs);

/* file.c */
void file_retire_wobj(struct fs *fs, struct inode *in);
void file_retire_wobj_quiet(struct fs *fs, struct inode *in);
int file_map_set(struct fs *fs, struct inode *in, uint64_t lblk, uint64_t len,
		 uint64_t obj, uint64_t pblk, unsigned flags);
int file_map_punch(struct fs *fs, struct inode *in, uint64_t lblk,
		   uint64_t len);
int file_truncate(struct fs *fs, struct inode *in, uint64_t size);
void file_unmap_past_eof(struct fs *fs, struct inode *in);
/* Passthrough (file.c): bring the map and size of in, in passthrough
 * mode, up to what the kernel wrote.  full: a SEEK_DATA scan whatever
 * the object's size and times say (they miss a write within one
 * timestamp tick).  io_lock (or data_lock exclusive)
 * held, fs->lock not.  all: every file in passthrough mode (data_lock
 * held exclusive). */
int file_pt_sync(struct fs *fs, struct inode *in, bool full);
void file_pt_sync_all(struct fs *fs);
/* After a clone made dst share src's blocks, src being in passthrough
 * mode: dst gets a copy of the bytes in an object of its own.  fs->lock
 * and data_lock exclusive held. */
int file_pt_unshare(struct fs *fs, struct inode *src, struct inode *dst);
/* The write path; data_lock (shared) and in->io_lock held, not fs->lock. */
ssize_t file_write_locked(struct fs *fs, struct inode *in, off_t off,
			  size_t len, fs_fill_fn fill, void *ctx);
void file_compute_nlive(struct fs *fs);

/* journal.c: all called with fs->lock held unless said otherwise */
int journal_log(struct fs *fs, const struct rec *r);
int journal_log_inode(struct fs *fs, struct inode *in);
void journal_flush_dirty(struct fs *fs);

/* clone.c */
int clone_apply(struct fs *fs, const struct rec *r);

/* origin.c */
int origin_apply(struct fs *fs, const struct rec *r);

/* journal.c, without fs->lock: commit everything logged so far; sync=1 for fsync. */
int journal_commit(struct fs *fs);
int journal_checkpoint(struct fs *fs);
/* What the loader calls back into (super.c passes replay.c's apply_rec
 * and file.c's file_compute_nlive), so that the journal module never calls
 * up into the modules that log to it. */
struct journal_load_ops {
	int (*apply)(struct fs *fs, const struct rec *r);
	void (*checkpoint_loaded)(struct fs *fs);
};
int journal_load(struct fs *fs, const struct journal_load_ops *ops,
		 char *err, size_t errlen);
/* commit_lock or no thread: set the header's mount mark, durably. */
int journal_mark_mounted(struct fs *fs);
int journal_encode_checkpoint(struct fs *fs, unsigned char **buf, size_t *len);
void journal_start_thread(struct fs *fs);
void journal_stop_thread(struct fs *fs);

/*
 * Taking and dropping the locks in LOCK ORDER (top of this file).  In a
 * build without NDEBUG, each thread keeps a bitmask of the levels it holds
 * (taken through these wrappers) and lock_take() asserts that it holds no
 * level at or below the one it takes; a second io_lock must be a higher
 * stripe than the first.  (Sites that still call pthread
 * directly are invisible to the check.)
 */
enum lock_level {
	LOCK_COMMIT,		/* fs->commit_lock */
	LOCK_DATA,		/* fs->data_lock */
	LOCK_IO,		/* an inode's io_lock stripe */
	LOCK_FS,		/* fs->lock */
	LOCK_PF,		/* fs->pf_lock */
};

#ifndef NDEBUG
/* lock.c */
/* key: for LOCK_IO, the stripe */
void lock_check_take(enum lock_level l, uint64_t key);
void lock_note_drop(enum lock_level l);
unsigned lock_suspend(enum lock_level l);
void lock_resume(enum lock_level l, unsigned token);
bool lock_held(enum lock_level l);
#else
static inline void lock_check_take(enum lock_level l, uint64_t key)
{
	(void)l;
	(void)key;
}
static inline void lock_note_drop(enum lock_level l)
{
	(void)l;
}
static inline unsigned lock_suspend(enum lock_level l)
{
	(void)l;
	return 0;
}
static inline void lock_resume(enum lock_level l, unsigned token)
{
	(void)l;
	(void)token;
}
static inline bool lock_held(enum lock_level l)
{
	(void)l;
	return false;
}
#endif

static inline pthread_mutex_t *lock_mutex(struct fs *fs, enum lock_level l)
{
	return l == LOCK_COMMIT ? &fs->commit_lock :
	       l == LOCK_PF ? &fs->pf_lock : &fs->lock;
}

/* Take a mutex level (COMMIT, FS, PF), or data_lock exclusive (DATA). */
static inline void lock_take(struct fs *fs, enum lock_level l)
{
	lock_check_take(l, 0);
	if (l == LOCK_DATA)
		pthread_rwlock_wrlock(&fs->data_lock);
	else
		pthread_mutex_lock(lock_mutex(fs, l));
}

/* data_lock shared. */
static inline void lock_take_shared(struct fs *fs)
{
	lock_check_take(LOCK_DATA, 0);
	pthread_rwlock_rdlock(&fs->data_lock);
}

static inline void lock_drop(struct fs *fs, enum lock_level l)
{
	lock_note_drop(l);
	if (l == LOCK_DATA)
		pthread_rwlock_unlock(&fs->data_lock);
	else
		pthread_mutex_unlock(lock_mutex(fs, l));
}

/*
 * io_lock is not in the inode: LOCK_IO_STRIPES mutexes (lock.c) serve all
 * inodes, an inode's by a hash of its number.  Two inodes may share one,
 * so a thread that needs two takes them with lock_io_take2(), which takes
 * a shared stripe once and two stripes in stripe order (never inode
 * order: stripes of another pair could be in the opposite order).
 */
#define LOCK_IO_STRIPES 256
extern pthread_mutex_t lock_io_stripes[LOCK_IO_STRIPES];

static inline unsigned lock_io_stripe(uint64_t ino)
{
	/* Fibonacci hashing: consecutive numbers land on different stripes */
	return (unsigned)((ino * 0x9e3779b97f4a7c15ull) >> 56);
}

static inline void lock_io_take(struct inode *in)
{
	unsigned s = lock_io_stripe(in->ino);

	lock_check_take(LOCK_IO, s);
	pthread_mutex_lock(&lock_io_stripes[s]);
}

static inline void lock_io_drop(struct inode *in)
{
	lock_note_drop(LOCK_IO);
	pthread_mutex_unlock(&lock_io_stripes[lock_io_stripe(in->ino)]);
}

/* Both files' io_locks (a may be b). */
static inline void lock_io_take2(struct inode *a, struct inode *b)
{
	unsigned sa = lock_io_stripe(a->ino), sb = lock_io_stripe(b->ino);

	if (sa == sb) {
		lock_io_take(a);
	} else if (sa < sb) {
		lock_io_take(a);
		lock_io_take(b);
	} else {
		lock_io_take(b);
		lock_io_take(a);
	}
}

static inline void lock_io_drop2(struct inode *a, struct inode *b)
{
	lock_io_drop(a);
	if (lock_io_stripe(a->ino) != lock_io_stripe(b->ino))
		lock_io_drop(b);
}

/*
 * For a function entered with fs->lock held (through the wrappers or not)
 * that must release it around a blocking syscall: the held-mask is saved
 * and restored, so callers that still lock with pthread stay consistent.
 */
static inline unsigned lock_fs_suspend(struct fs *fs)
{
	unsigned t = lock_suspend(LOCK_FS);
	pthread_mutex_unlock(&fs->lock);
	return t;
}

static inline void lock_fs_resume(struct fs *fs, unsigned token)
{
	lock_check_take(LOCK_FS, 0);
	pthread_mutex_lock(&fs->lock);
	lock_resume(LOCK_FS, token);
}

/* Assert that this thread does not hold fs->lock through the wrappers:
 * before a syscall on a host file that may block. */
#define LOCK_ASSERT_UNLOCKED_FS() assert(!lock_held(LOCK_FS))

#define FS_FLAG_NONE 0

#endif
