/*
 * object.h - the object module (src/object.c): the host files that hold
 * blocks, and nothing above them.
 *
 * Owns:
 *  - every struct object: created by obj_new() or obj_new_origin(), found
 *    by obj_get(), freed by obj_drop() (after the commit that killed it,
 *    see journal.c), obj_forget() or obj_free_all() at unmount.  All live
 *    in fs->objects, a hash table by id, which also holds the host
 *    directories of origin files (struct odir).
 *  - the cache of open object fds: the LRU in fs->objects (open, unpinned
 *    fds, least recently used first), fs->nfds, fs->max_fds.  Only this module opens
 *    or closes an object's cached fd (journal.c's finish_batch still
 *    closes the fd of an object it frees; obj_forget() does the same).
 *  - pins: a pin keeps an object allocated and its fd open while a caller
 *    uses them outside fs->lock.  journal.c must not punch the blocks of,
 *    nor unlink, an object with pins > 0.
 *  - the queue of dead objects to unlink after the next commit
 *    (obj_maybe_doom) and the list of objects written since the last
 *    commit (obj_mark_dirty).
 *  - origin files: their open and identity check (origin_open,
 *    origin_check), and the prefetch threads (origin_prefetch_*).
 *
 * It calls down only into store.c and fs_log(); file.c, fs.c, clone.c,
 * origin.c and journal.c call into it.
 *
 * The daemon never blocks on a host file while it holds fs->lock: every
 * open, fstat, ftruncate and fallocate of an object happens with fs->lock
 * released and the object pinned.  An origin path is opened with O_PATH
 * first (no driver open, no FIFO wait), checked to be the regular file
 * that was cloned, and only then reopened for reading.
 */
#ifndef COWFS_OBJECT_H
#define COWFS_OBJECT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/queue.h>
#include <sys/tree.h>

struct fs;

/*
 * A host directory that origin files are in, with the device they are
 * on: a node of a tree of such directories, each holding only its last
 * path component, so that a path is stored once for all the files in it
 * and a component once for all the directories under it (a file on
 * another device than its directory's other files gets a chain of nodes
 * of its own).  Shared by reference count; in fs->objects' directory
 * hash by (parent, name, dev); fs->lock.  Carved from the chunks of
 * origins (object.c).
 */
struct odir {
	struct odir *next;	/* hash chain */
	struct odir *parent;	/* NULL: "/" itself, whose path is "" */
	uint64_t dev;
	uint32_t refs;		/* origin objects in it, nodes under it */
	uint16_t len;		/* strlen of its path (< PATH_MAX): a
				 * file's path is path/name */
	uint16_t nlen;		/* strlen(name) */
	char name[];		/* the last component of its path */
};

struct object {
	uint64_t id;		/* immutable */
	uint64_t nlive;		/* blocks some extent maps; fs->lock */
	union {
		uint64_t owner;		/* ino whose write object it is, 0:
					 * retired; fs->lock.  Read it with
					 * obj_owner(): an origin has none */
		uint64_t host_ino;	/* an origin's: its host file's inode
					 * number, part of its identity
					 * (immutable) */
	};
	uint64_t len;		/* the object file is at least this long;
				 * the owner's io_lock (only the owner writes).
				 * An origin's: its host file's size, part of
				 * its identity (immutable) */
	union {
		struct object *dirty_next;	/* fs->dirty_objs; fs->lock */
		struct odir *odir;	/* an origin's host directory (never
					 * dirty: it is never written); holds
					 * a reference; immutable */
	};
	int fd;			/* -1: closed.  Changed under fs->lock; stable
				 * while pinned once obj_ready() returned it.
				 * While open and unpinned, o is in the fd LRU
				 * (indexed by fd: no links in the object) */
	uint32_t pins;		/* users outside fs->lock; fs->lock */
	bool dirty;		/* written since the last commit's sync;
				 * fs->lock */
	bool doomed;		/* queued for unlink; fs->lock */
	bool origin;		/* a struct origin (immutable) */
	bool warned;		/* the change was logged once; atomic */
};

/*
 * An origin object: a host file read in place, never written.  Carved,
 * with its name, from a chunk of origins (object.c), not malloc'ed.  These
 * fields are set before the object is published and never change, so they
 * are read without fs->lock by a pin holder.  Its path is obj.odir's path
 * + "/" + name, built only to open it (origin_path()).
 */
struct origin {
	struct object obj;	/* its identity: obj.host_ino, obj.len and
				 * obj.odir's device, with: */
	int64_t mtime, ctime;	/* ns */
	char name[];
};

/* The ino whose write object o is; 0: none (always for an origin). */
static inline uint64_t obj_owner(const struct object *o)
{
	return o->origin ? 0 : o->owner;
}

static inline struct origin *obj_origin(const struct object *o)
{
	return o->origin ? (struct origin *)(uintptr_t)o : NULL;
}

/* One fd's place in the LRU of open, unpinned object fds. */
struct lru_slot {
	struct object *o;
	int prev, next;		/* fd + 1 of the neighbours, 0: none */
};

/* fs->objects: every object, by id, and the origin directories. */
struct obj_table {
	struct object **v;	/* open addressing, linear probing; slot
				 * id & mask: ids come from a counter, so
				 * slot order is nearly id order */
	size_t cap, n;		/* cap: 0 or a power of two */
	struct odir **dirs;	/* hash chains of struct odir */
	size_t dcap, dn;
	struct odir *dlast;	/* the node last asked for (no reference) */
	struct lru_slot *lru;	/* by fd */
	size_t lru_cap;
	int lru_head, lru_tail;	/* fd + 1, 0: empty; least recent first */
	struct ochunk *ochunk;	/* the chunk origins are carved from now */
	char *ocur;		/* its unused part starts here */
};

struct pf_item {		/* an origin file to prefetch */
	uint64_t obj;		/* its object, to hand the open fd to */
};

/* ---- with fs->lock held ---- */

struct object *obj_get(struct fs *fs, uint64_t id);
/* A new object in fs->objects (no fd, not on disk).  NULL: out of memory. */
struct object *obj_new(struct fs *fs, uint64_t id, uint64_t owner);
/*
 * A new origin object in fs->objects for the host file path (absolute,
 * shorter than PATH_MAX) with identity st's fields; replaces an object of
 * that id that nothing uses yet (replay).  NULL: out of memory, or an
 * object of that id is in use (errno EINVAL).
 */
struct object *obj_new_origin(struct fs *fs, uint64_t id, const char *path,
			      uint64_t dev, uint64_t ino, uint64_t size,
			      int64_t mtime, int64_t ctime);
/* Iterate over every object: for (size_t i = 0; (o = obj_next(fs, &i));)
 * in nearly id order.  Do not add or remove objects meanwhile. */
struct object *obj_next(struct fs *fs, size_t *i);
/*
 * Pin o: it stays allocated and, once open, its fd stays open until
 * obj_unpin().  Never blocks.  Returns true when the caller must call
 * obj_ready() (without fs->lock) before using o->fd: the fd is not open
 * yet, or o is an origin whose identity is checked before every use.
 */
bool obj_hold(struct fs *fs, struct object *o);
/*
 * obj_hold() and, if needed, obj_ready().  MAY DROP AND RE-TAKE fs->lock
 * (only when it opens or checks a host file): the caller must not keep
 * pointers it cannot re-validate, except to pinned objects and to inodes
 * it holds the io_lock of.  0, or -errno with o not pinned.
 */
int obj_pin(struct fs *fs, struct object *o);
void obj_unpin(struct fs *fs, struct object *o);
/* Queue o for unlinking after the next commit when nothing uses it. */
void obj_maybe_doom(struct fs *fs, struct object *o);
/* o was written: fdatasync it before the next commit. */
void obj_mark_dirty(struct fs *fs, struct object *o);
/*
 * Make room for one more fd: take least recently used idle fds out of the
 * cache into fds[] (at most max), to be closed with obj_close_fds() once
 * fs->lock is dropped.  Returns how many.
 */
size_t obj_evict(struct fs *fs, int *fds, size_t max);
/* Give an fd opened by the caller to o's cache entry, unless o already has
 * one: returns -1 when taken over, else fd (the caller closes it). */
int obj_adopt_fd(struct fs *fs, struct object *o, int fd);
/* Drop o from memory (and its fd) without touching its file: pins == 0. */
void obj_forget(struct fs *fs, struct object *o);
/* The same, but o's fd (or -1) is returned for the caller to close once
 * fs->lock is dropped. */
int obj_drop(struct fs *fs, struct object *o);

/* ---- without fs->lock ---- */

/*
 * o pinned (obj_hold() returned true).  Opens o's file if its fd is not
 * cached, and checks an origin's identity; takes fs->lock briefly to
 * install the fd.  Returns the fd, valid until obj_unpin(), or -errno
 * (-EIO for a missing object or a changed origin, logged).
 */
int obj_ready(struct fs *fs, struct object *o);
void obj_close_fds(const int *fds, size_t n);
/* At unmount: close every fd and free every object. */
void obj_free_all(struct fs *fs);

/*
 * Open an origin's host file for reading, checked to be the regular file
 * that was cloned (device, inode number, size, mtime, ctime).  Never
 * blocks on a FIFO or opens a device.  fs->lock NOT held (fsck: no lock).
 * Returns an fd (caller owns) or -EIO, logging the first failure per
 * object.
 */
int origin_open(struct fs *fs, struct object *o);
/* o's host path into buf (PATH_MAX bytes); returns its length. */
size_t origin_path(const struct object *o, char *buf);
/* An origin object's REC_ORIGIN record, its path prefix-coded against
 * that of *prev (the previous REC_ORIGIN of the batch or checkpoint; NULL
 * at its start); sets *prev to o.  r's path points into buf (PATH_MAX
 * bytes), which must live until r is encoded. */
void origin_to_rec(const struct object *o, struct rec *r,
		   const struct object **prev, char *buf);
/* 0 when fd is still the file that was cloned; -EIO (logged once).
 * fstat()s fd: fs->lock not held. */
int origin_check(struct fs *fs, struct object *o, int fd);

/* Prefetch threads: read ahead origin files a listing suggests will be
 * read soon, and hand their checked fds to the cache. */
void origin_prefetch_start(struct fs *fs);
void origin_prefetch_stop(struct fs *fs);
/* Queue origin files to prefetch.  Takes pf_lock: call without fs->lock. */
void origin_prefetch(struct fs *fs, struct pf_item *items, size_t n);

#endif
