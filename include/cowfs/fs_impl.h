/*
 * fs_impl.h - the core's internal structures, shared by fs.c (namespace),
 * file.c (data path), journal.c (metadata file), clone.c and fsck.c.
 * Nothing outside the core includes this header.
 *
 * LOCK ORDER (acquire top to bottom; never the other way):
 *
 *   fs->commit_lock   serialises commits and checkpoints
 *   fs->data_lock     rwlock: data changes take it shared, a clone takes it
 *                     exclusive so that it sees no write half-done
 *   inode->io_lock    one data-changing operation per file at a time
 *                     (two files: lower inode number first)
 *   fs->lock          everything in memory: inodes, dirents, extent maps,
 *                     refcounts, objects, the journal buffer.  Held briefly;
 *                     never across file-data I/O or a fuse_reply_*().
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

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/queue.h>
#include <sys/tree.h>
#include <time.h>

#include "cowfs/extmap.h"
#include "cowfs/format.h"
#include "cowfs/fs.h"
#include "cowfs/refcount.h"
#include "cowfs/store.h"

struct xattr {
	struct xattr *next;
	char *name;	/* owned */
	void *value;	/* owned */
	uint32_t len;
};

struct dirent_node {
	RB_ENTRY(dirent_node) by_name;
	RB_ENTRY(dirent_node) by_cookie;
	uint64_t ino;
	uint64_t cookie;	/* readdir offset; stable while the entry lives */
	char name[];
};
RB_HEAD(dir_names, dirent_node);
RB_HEAD(dir_cookies, dirent_node);

struct inode {
	RB_ENTRY(inode) node;	/* in fs->inodes */
	uint64_t ino;
	uint32_t mode, uid, gid, nlink, flags;
	uint64_t rdev, size;
	struct timespec atime, mtime, ctime, btime;
	uint64_t nlookup;	/* kernel references */
	uint32_t nopen;		/* open file handles */
	bool dirty;		/* attributes not yet journaled */
	TAILQ_ENTRY(inode) dirty_link;	/* in fs->dirty while dirty */
	struct xattr *xattrs;
	/* directories */
	struct dir_names names;
	struct dir_cookies cookies;
	uint64_t next_cookie;
	uint64_t parent;
	uint64_t nentries;
	/* regular files */
	struct extmap map;
	uint64_t wobj;		/* write object id, 0: none yet */
	pthread_mutex_t io_lock;
	/* symlinks */
	char *target;
};
RB_HEAD(inode_tree, inode);
TAILQ_HEAD(inode_list, inode);
RB_PROTOTYPE(inode_tree, inode, node, ino_cmp)
RB_PROTOTYPE(dir_names, dirent_node, by_name, name_cmp)
RB_PROTOTYPE(dir_cookies, dirent_node, by_cookie, cookie_cmp)

struct object {
	RB_ENTRY(object) node;	/* in fs->objects */
	uint64_t id;
	uint64_t nlive;		/* blocks referenced by some extent map */
	uint64_t owner;		/* ino whose write object it is, 0: retired */
	int fd;			/* -1: closed */
	uint64_t len;		/* the object file is at least this long */
	uint32_t pins;		/* I/O in flight on fd outside fs->lock */
	bool dirty;		/* written since the last commit's sync */
	bool doomed;		/* queued for unlink */
	/* origin objects: a host file read in place, never written */
	char *opath;		/* host path (owned); NULL: a store object */
	uint64_t odev, oino, osize;
	int64_t omtime, octime;	/* ns */
	bool warned;		/* the change was logged once */
	struct object *dirty_next;
	TAILQ_ENTRY(object) lru;	/* open, unpinned fds */
};
RB_HEAD(object_tree, object);
RB_PROTOTYPE(object_tree, object, node, obj_cmp)
TAILQ_HEAD(object_lru, object);

struct pf_item {		/* an origin file to prefetch */
	char *path;		/* owned */
	uint64_t obj;		/* its object, to hand the open fd to */
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
	struct inode_tree inodes;
	struct object_tree objects;
	struct object_lru lru;
	unsigned nfds, max_fds;
	struct refcount rc;
	uint64_t next_ino, next_obj;
	struct inode_list dirty;	/* attributes to journal */
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
	/* REC_ORIGIN paths are stored as a prefix shared with the previous
	 * REC_ORIGIN of the same batch (or checkpoint) plus a suffix. */
	char *opath_prev;		/* writer side, reset per batch */
	char *opath_load;		/* loader side, reset per batch */
	int broken;			/* sticky: metadata write failed */

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

/* fs.c */
struct inode *inode_get(struct fs *fs, uint64_t ino);
struct inode *inode_new(struct fs *fs, uint64_t ino);
void inode_free(struct fs *fs, struct inode *in);
void inode_dirty(struct fs *fs, struct inode *in);
void inode_stat(const struct fs *fs, const struct inode *in, struct stat *st);
void now_ts(struct timespec *ts);
struct dirent_node *dir_find(struct inode *dir, const char *name);
int dir_add(struct fs *fs, struct inode *dir, const char *name, uint64_t ino,
	    uint64_t cookie);
void dir_del(struct fs *fs, struct inode *dir, struct dirent_node *d);
int xattr_set(struct inode *in, const char *name, const void *v, uint32_t len);
int xattr_del(struct inode *in, const char *name);
void inode_to_rec(const struct inode *in, struct rec *r);
int apply_rec(struct fs *fs, const struct rec *r);
void inode_maybe_free(struct fs *fs, struct inode *in);
int inode_may(const struct fs_ctx *c, const struct inode *in, unsigned want);

/* file.c */
struct object *obj_get(struct fs *fs, uint64_t id);
struct object *obj_new(struct fs *fs, uint64_t id, uint64_t owner);
int obj_pin(struct fs *fs, struct object *o);
void obj_unpin(struct fs *fs, struct object *o);
void obj_maybe_doom(struct fs *fs, struct object *o);
void file_retire_wobj(struct fs *fs, struct inode *in);
void file_retire_wobj_quiet(struct fs *fs, struct inode *in);
void file_drop_blocks(void *fsp, uint64_t obj, uint64_t pblk, uint64_t len);
int file_map_set(struct fs *fs, struct inode *in, uint64_t lblk, uint64_t len,
		 uint64_t obj, uint64_t pblk, unsigned flags);
int file_map_punch(struct fs *fs, struct inode *in, uint64_t lblk,
		   uint64_t len);
int file_truncate(struct fs *fs, struct inode *in, uint64_t size);
/* The write path; data_lock (shared) and in->io_lock held, not fs->lock. */
ssize_t file_write_locked(struct fs *fs, struct inode *in, off_t off,
			  size_t len, fs_fill_fn fill, void *ctx);
void file_compute_nlive(struct fs *fs);
void file_close_fds(struct fs *fs);

/* journal.c: all called with fs->lock held unless said otherwise */
int journal_log(struct fs *fs, const struct rec *r);
int journal_log_inode(struct fs *fs, struct inode *in);
void journal_flush_dirty(struct fs *fs);

/* clone.c */
int clone_apply(struct fs *fs, const struct rec *r);

/* origin.c */
int origin_open(struct fs *fs, struct object *o);
int origin_check(struct fs *fs, struct object *o, int fd);
int origin_apply(struct fs *fs, const struct rec *r);
void origin_to_rec(const struct object *o, struct rec *r, char **prev);
void origin_prefetch_start(struct fs *fs);
void origin_prefetch_stop(struct fs *fs);
/* Queue origin files (paths taken over: the queue frees them). */
void origin_prefetch(struct fs *fs, struct pf_item *items, size_t n);
/* Without fs->lock: commit everything logged so far; sync=1 for fsync. */
int journal_commit(struct fs *fs);
int journal_checkpoint(struct fs *fs);
int journal_load(struct fs *fs, char *err, size_t errlen);
/* commit_lock or no thread: set the header's mount mark, durably. */
int journal_mark_mounted(struct fs *fs);
int journal_encode_checkpoint(struct fs *fs, unsigned char **buf, size_t *len);
void journal_start_thread(struct fs *fs);
void journal_stop_thread(struct fs *fs);

#define FS_FLAG_NONE 0

#endif
