/*
 * journal.c - the metadata file at run time: logging records, committing
 * batches, writing checkpoints, and loading/replaying at mount.
 *
 * Crash-safety invariants (numbered as SQLite's pager.c does):
 *  (1) Data before metadata: every object written since the last commit is
 *      fdatasync()ed before the batch that may point at its blocks is
 *      written to the journal.
 *  (2) A batch is atomic: records are applied at load only up to the last
 *      COMMIT record that is whole and checksums; anything after it (a torn
 *      tail) is discarded and truncated.
 *  (3) Free after commit: blocks whose count reached 0 are punched, and dead
 *      objects unlinked, only after the batch that dropped them is durable
 *      (journal fdatasync()ed, or the checkpoint renamed and its directory
 *      fsync()ed).  A crash can leak space, never free a referenced block.
 *  (4) A checkpoint replaces the file atomically: temp file, fsync, rename,
 *      fsync of the store directory.  It holds the whole state, so the
 *      journal starts empty after it.
 *  (5) A failed metadata write (ENOSPC, EIO) truncates the file back to its
 *      last good end and keeps the batch in memory for the next attempt.
 *  (6) The mount mark (COWFS_HDR_MOUNTED in the header) is durable before a
 *      read-write mount changes anything (journal_mark_mounted, from
 *      fs_open), and only the checkpoint of a clean close clears it.  A
 *      mark found at load means an unclean stop, whatever the journal
 *      holds; then every write object is retired (fs_impl.h (4)).
 *  (7) Only an incomplete last batch is a torn tail.  A bad record with a
 *      valid later COMMIT is corruption: the mount is refused, and only
 *      `cowfs fsck --repair` truncates there (format_scan_journal).
 *  (8) A block is punched only when no read holds its object: a free whose
 *      object is pinned waits in fs->frees for a later commit.
 *  (9) Once fs->broken is set (memory and journal disagree), nothing is
 *      committed or checkpointed again; fs_close() reports -EIO.
 *
 * States of a batch: logged (jbuf, fs->lock) -> taken (take_batch) ->
 * synced (sync_batch: data, then records) -> finished (finish_batch: frees)
 * or restored (restore_batch: back into jbuf on failure).
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <linux/falloc.h>

#include "cowfs/fs_impl.h"

#define CKPT_MIN_JOURNAL (32u << 20)

static int jreserve(struct fs *fs, size_t n)
{
	if (fs->jlen + n <= fs->jcap)
		return 0;
	size_t cap = fs->jcap ? fs->jcap * 2 : 65536;
	while (cap < fs->jlen + n)
		cap *= 2;
	unsigned char *b = realloc(fs->jbuf, cap);
	if (!b)
		return -ENOMEM;
	fs->jbuf = b;
	fs->jcap = cap;
	return 0;
}

int journal_log(struct fs *fs, const struct rec *r)
{
	if (fs->replaying || fs->opt.ro)
		return 0;
	/* A sequential writer extends the previous EXT_SET in place. */
	if (r->type == REC_EXT_SET && fs->ext_coalesce) {
		struct rec p;
		long n = format_decode(fs->jbuf + fs->ext_last_off,
				       fs->jlen - fs->ext_last_off, &p);
		if (n > 0 && p.flags == r->flags && p.u.ext.ino == r->u.ext.ino &&
		    p.u.ext.obj == r->u.ext.obj &&
		    p.u.ext.lblk + p.u.ext.len == r->u.ext.lblk &&
		    p.u.ext.pblk + p.u.ext.len == r->u.ext.pblk) {
			p.u.ext.len += r->u.ext.len;
			format_encode(&p, fs->jbuf + fs->ext_last_off);
			return 0;
		}
	}
	if (jreserve(fs, COWFS_REC_MAX))
		return -ENOMEM;
	size_t off = fs->jlen;
	fs->jlen += format_encode(r, fs->jbuf + off);
	fs->jrecs++;
	fs->ext_coalesce = r->type == REC_EXT_SET;
	fs->ext_last_off = off;
	return 0;
}

int journal_log_inode(struct fs *fs, struct inode *in)
{
	struct rec r;
	inode_to_rec(in, &r);
	return journal_log(fs, &r);
}

/* An inode's changed attributes, logged at the commit.  Its dirty mark
 * is gone by now, so a record that cannot be logged (no memory for the
 * journal) would be lost while the records logged at once (its names)
 * commit: an entry could name an inode whose link count the store never
 * learns.  So the store is broken instead, and commits nothing more. */
static void log_dirty(struct fs *fs, struct inode *in)
{
	int rc = journal_log_inode(fs, in);

	if (rc) {
		if (!fs->broken)
			fs_log(fs, "error: inode %llu: cannot log its "
			       "attributes: %s; the store commits nothing "
			       "more until it is remounted",
			       (unsigned long long)in->ino, strerror(-rc));
		fs->broken = 1;
	}
}

void journal_flush_dirty(struct fs *fs)
{
	inode_flush_dirty(fs, log_dirty);
}

struct batch {
	unsigned char *buf;	/* records; NULL for a checkpoint */
	size_t len;
	struct object **objs;	/* pinned, to fdatasync */
	size_t nobjs;
	struct pending_free *frees;
	size_t nfrees;
	struct object **unlinks;
	size_t nunlinks;
};

/* fs->lock held: move everything logged so far into b. */
static int take_batch(struct fs *fs, struct batch *b, int with_records)
{
	size_t n = 0;

	memset(b, 0, sizeof(*b));
	for (struct object *o = fs->dirty_objs; o; o = o->dirty_next)
		n++;
	b->objs = calloc(n ? n : 1, sizeof(*b->objs));
	if (!b->objs)
		return -ENOMEM;
	/* Not pinned: a batch may name more objects than there are fds.
	 * They stay allocated until this batch's finish_batch(). */
	for (struct object *o = fs->dirty_objs; o; o = o->dirty_next) {
		b->objs[b->nobjs++] = o;
		o->dirty = false;
	}
	fs->dirty_objs = NULL;
	if (with_records) {
		b->buf = fs->jbuf;
		b->len = fs->jlen;
	} else {
		free(fs->jbuf);
	}
	fs->jbuf = NULL;
	fs->jlen = fs->jcap = 0;
	fs->jrecs = 0;
	fs->ext_coalesce = 0;
	fs->opath_prev = NULL;	/* a new batch codes origin paths afresh */
	b->frees = fs->frees;
	b->nfrees = fs->nfrees;
	fs->frees = NULL;
	fs->nfrees = fs->cap_frees = 0;
	b->unlinks = fs->unlinks;
	b->nunlinks = fs->nunlinks;
	fs->unlinks = NULL;
	fs->nunlinks = fs->cap_unlinks = 0;
	return 0;
}

/*
 * Without fs->lock: make the batch's data durable.  Many objects (a tree
 * copied in): one syncfs() of the host filesystem costs one journal
 * commit instead of one per file.  A few: fdatasync() each, one fd at a
 * time, so the fd cache bound holds.
 */
#define SYNCFS_OBJECTS 16

static int sync_data(struct fs *fs, struct batch *b)
{
	if (b->nobjs > SYNCFS_OBJECTS) {
		if (syncfs(fs->store.dirfd) < 0) {
			int e = errno;
			fs_log(fs, "error: syncfs of the store: %s", strerror(e));
			return -e;
		}
		return 0;
	}
	for (size_t i = 0; i < b->nobjs; i++) {
		struct object *o = b->objs[i];
		lock_take(fs, LOCK_FS);
		int rc = obj_pin(fs, o);
		lock_drop(fs, LOCK_FS);
		if (rc)
			return rc;	/* obj_pin() logged it */
		if (fdatasync(o->fd) < 0) {
			rc = -errno;
			fs_log(fs, "error: object %016llx: fdatasync: %s",
			       (unsigned long long)o->id, strerror(-rc));
		}
		lock_take(fs, LOCK_FS);
		obj_unpin(fs, o);
		lock_drop(fs, LOCK_FS);
		if (rc)
			return rc;
	}
	return 0;
}

/* fs->lock held: the batch failed to reach the disk; put it back in front
 * of whatever was logged since. */
static void restore_batch(struct fs *fs, struct batch *b)
{
	if (b->buf) {
		unsigned char *nb = malloc(b->len + fs->jlen + 1);
		if (nb) {
			memcpy(nb, b->buf, b->len);
			if (fs->jlen)
				memcpy(nb + b->len, fs->jbuf, fs->jlen);
			free(fs->jbuf);
			fs->jbuf = nb;
			fs->jlen = fs->jcap = b->len + fs->jlen;
			fs->ext_coalesce = 0;
		} else {
			fs->broken = 1;
		}
		free(b->buf);
		b->buf = NULL;
	}
	for (size_t i = 0; i < b->nobjs; i++) {
		struct object *o = b->objs[i];
		if (!o->dirty) {
			o->dirty = true;
			o->dirty_next = fs->dirty_objs;
			fs->dirty_objs = o;
		}
	}
	b->nobjs = 0;
	for (size_t i = 0; i < b->nfrees; i++) {
		struct pending_free *f = &b->frees[i];
		for (uint64_t k = 0; k < f->len; k++) {
			/* re-queue through the normal path */
			if (fs->nfrees == fs->cap_frees) {
				size_t cap = fs->cap_frees ? fs->cap_frees * 2 : 64;
				struct pending_free *n = realloc(fs->frees, cap * sizeof(*n));
				if (!n)
					break;
				fs->frees = n;
				fs->cap_frees = cap;
			}
			fs->frees[fs->nfrees++] = (struct pending_free){ f->obj, f->pblk + k, 1 };
		}
	}
	for (size_t i = 0; i < b->nunlinks; i++) {
		b->unlinks[i]->doomed = false;
		obj_maybe_doom(fs, b->unlinks[i]);
	}
	free(b->frees);
	free(b->unlinks);
	free(b->objs);
	memset(b, 0, sizeof(*b));
}

/* fs->lock held: keep a committed free for a later commit (invariant 8).
 * Without memory, the blocks leak until fsck --repair: never wrong. */
static void defer_free(struct fs *fs, const struct pending_free *f)
{
	if (fs->nfrees == fs->cap_frees) {
		size_t cap = fs->cap_frees ? fs->cap_frees * 2 : 64;
		struct pending_free *n = realloc(fs->frees, cap * sizeof(*n));
		if (!n)
			return;
		fs->frees = n;
		fs->cap_frees = cap;
	}
	fs->frees[fs->nfrees++] = *f;
}

/* Without fs->lock: the batch is durable; return freed space. */
static void finish_batch(struct fs *fs, struct batch *b)
{
	lock_take(fs, LOCK_FS);
	for (size_t i = 0; i < b->nfrees; i++) {
		struct pending_free *f = &b->frees[i];
		struct object *o = obj_get(fs, f->obj);
		if (!o || o->doomed)
			continue;
		if (o->pins) {
			/* a read may still be copying these blocks out */
			defer_free(fs, f);
			continue;
		}
		if (obj_pin(fs, o))
			continue;
		lock_drop(fs, LOCK_FS);
		if (fallocate(o->fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
			      (off_t)(f->pblk << fs->block_shift),
			      (off_t)(f->len << fs->block_shift)) < 0)
			fs_log(fs, "warning: object %016llx: punch: %s",
			       (unsigned long long)o->id, strerror(errno));
		lock_take(fs, LOCK_FS);
		obj_unpin(fs, o);
	}
	/* dead objects leave memory under the lock; their fds are closed
	 * and their files unlinked after it (no host syscall under it) */
	int *fds = b->nunlinks ? calloc(b->nunlinks, sizeof(*fds)) : NULL;
	uint64_t *ids = b->nunlinks ? calloc(b->nunlinks, sizeof(*ids)) : NULL;
	size_t nfds = 0, nids = 0;
	for (size_t i = 0; i < b->nunlinks; i++) {
		struct object *o = b->unlinks[i];
		if (o->nlive || obj_owner(o)) {	/* revived during replay */
			o->doomed = false;
			continue;
		}
		if (o->pins || !fds || !ids) {	/* a read still uses it, or
						 * no memory: try again later */
			o->doomed = false;
			obj_maybe_doom(fs, o);
			continue;
		}
		if (!o->origin)			/* an origin's host file is
						 * not ours */
			ids[nids++] = o->id;
		int fd = obj_drop(fs, o);
		if (fd >= 0)
			fds[nfds++] = fd;
	}
	lock_drop(fs, LOCK_FS);
	LOCK_ASSERT_UNLOCKED_FS();
	for (size_t i = 0; i < nfds; i++)
		close(fds[i]);
	for (size_t i = 0; i < nids; i++) {
		int rc = store_obj_unlink(&fs->store, ids[i]);
		if (rc)
			fs_log(fs, "warning: object %016llx: unlink: %s",
			       (unsigned long long)ids[i], strerror(-rc));
	}
	free(fds);
	free(ids);
	free(b->buf);
	free(b->objs);
	free(b->frees);
	free(b->unlinks);
	memset(b, 0, sizeof(*b));
}

static int pwrite_full(int fd, const void *buf, size_t len, off_t pos)
{
	const char *p = buf;
	while (len) {
		ssize_t n = pwrite(fd, p, len, pos);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			return -errno;
		p += n;
		len -= (size_t)n;
		pos += n;
	}
	return 0;
}

static int checkpoint_locked(struct fs *fs);
static int checkpoint_forked(struct fs *fs);

/* commit_lock held. */
static int commit_locked(struct fs *fs)
{
	struct batch b;
	int rc;

	lock_take(fs, LOCK_FS);
	if (fs->broken) {
		lock_drop(fs, LOCK_FS);
		return -EIO;
	}
	journal_flush_dirty(fs);
	if (fs->broken) {	/* log_dirty() failed */
		lock_drop(fs, LOCK_FS);
		return -EIO;
	}
	if (!fs->jlen && !fs->dirty_objs && !fs->nfrees && !fs->nunlinks) {
		lock_drop(fs, LOCK_FS);
		return 0;
	}
	if (fs->jlen) {
		struct rec r = { .type = REC_COMMIT };
		r.u.commit.seq = ++fs->commit_seq;
		r.u.commit.next_ino = fs->next_ino;
		r.u.commit.next_obj = fs->next_obj;
		if ((rc = journal_log(fs, &r))) {
			lock_drop(fs, LOCK_FS);
			return rc;
		}
	}
	rc = take_batch(fs, &b, 1);
	lock_drop(fs, LOCK_FS);
	if (rc)
		return rc;

	rc = sync_data(fs, &b);
	if (!rc && b.len) {
		rc = pwrite_full(fs->metafd, b.buf, b.len, (off_t)fs->meta_end);
		if (!rc && fdatasync(fs->metafd) < 0)
			rc = -errno;
		if (rc) {
			fs_log(fs, "error: metadata journal write: %s", strerror(-rc));
			if (ftruncate(fs->metafd, (off_t)fs->meta_end) < 0)
				fs_log(fs, "error: metadata truncate: %s", strerror(errno));
		}
	}
	if (rc) {
		lock_take(fs, LOCK_FS);
		restore_batch(fs, &b);
		lock_drop(fs, LOCK_FS);
		return rc;
	}
	fs->meta_end += b.len;
	finish_batch(fs, &b);

	uint64_t jbytes = fs->meta_end - COWFS_HDR_SIZE - fs->ckpt_len;
	if (jbytes > CKPT_MIN_JOURNAL && jbytes > 2 * fs->ckpt_len &&
	    checkpoint_forked(fs) == -EAGAIN)
		checkpoint_locked(fs);
	return 0;
}

int journal_commit(struct fs *fs)
{
	int rc;
	if (fs->opt.ro)
		return 0;
	lock_take(fs, LOCK_COMMIT);
	rc = commit_locked(fs);
	lock_drop(fs, LOCK_COMMIT);
	return rc;
}

/* ---- checkpoint image ---- */

struct img {
	unsigned char *buf;
	size_t len, cap;
	int err;
	int packing;		/* pw is filling a pack at buf + len */
	struct pack_writer pw;
};

/* Room for one more record of any size at im->len. */
static int img_reserve(struct img *im)
{
	if (im->len + COWFS_REC_MAX <= im->cap)
		return 0;
	size_t cap = im->cap ? im->cap * 2 : (1u << 20);
	while (cap < im->len + COWFS_REC_MAX)
		cap *= 2;
	unsigned char *b = realloc(im->buf, cap);
	if (!b)
		return im->err = -ENOMEM;
	im->buf = b;
	im->cap = cap;
	return 0;
}

/* Close the pack being filled. */
static void img_seal(struct img *im)
{
	if (im->packing)
		im->len += format_pack_finish(&im->pw);
	im->packing = 0;
}

/*
 * Records go into packs (REC_PACK, docs/format.md): a pack grows in place
 * at the end of the image, which has room for the largest record when
 * the pack starts.  A record that cannot be packed goes plain between
 * two packs.
 */
static void img_add(struct img *im, const struct rec *r)
{
	while (!im->err) {
		if (!im->packing) {
			if (img_reserve(im))
				return;
			format_pack_start(&im->pw, im->buf + im->len);
			im->packing = 1;
		}
		int rc = format_pack_add(&im->pw, r);
		if (rc > 0)
			return;
		img_seal(im);
		if (rc < 0) {
			if (!img_reserve(im))
				im->len += format_encode(r, im->buf + im->len);
			return;
		}
	}
}

/* fs->lock held.  Encodes the whole state, header first.  Caller owns
 * *buf. */
int journal_encode_checkpoint(struct fs *fs, unsigned char **buf, size_t *len)
{
	struct img im = { 0 };
	struct inode *in;
	struct rec r;
	struct disk_header h;
	unsigned char hdr[COWFS_HDR_SIZE];

	memset(hdr, 0, sizeof(hdr));
	im.buf = malloc(1u << 20);
	if (!im.buf)
		return -ENOMEM;
	im.cap = 1u << 20;
	im.len = COWFS_HDR_SIZE;	/* header goes in front at the end */

	r = (struct rec){ .type = REC_SUPER };
	r.u.super.next_ino = fs->next_ino;
	r.u.super.next_obj = fs->next_obj;
	r.u.super.root_ino = FS_ROOT_INO;
	img_add(&im, &r);
	struct object *o;
	const struct object *prev = NULL;
	char pbuf[PATH_MAX];
	for (size_t it_ = 0; (o = obj_next(fs, &it_));) {
		if (o->origin && o->nlive) {
			origin_to_rec(o, &r, &prev, pbuf);
			img_add(&im, &r);
		}
	}
	INODE_FOREACH(in, fs) {
		inode_to_rec(in, &r);
		img_add(&im, &r);
		for (struct xattr *x = inode_xattrs(in); x; x = x->next) {
			r = (struct rec){ .type = REC_XATTR_SET, .name = x->name,
					  .name_len = (uint32_t)strlen(x->name),
					  .data = x->value, .data_len = x->len };
			r.u.xattr.ino = in->ino;
			img_add(&im, &r);
		}
		for (size_t i = 0; S_ISREG(in->mode) && i < extmap_n(&in->map); i++) {
			struct extent e = extmap_at(&in->map, i);
			r = (struct rec){ .type = REC_EXT_SET, .flags = EXT_NOREF };
			r.u.ext.ino = in->ino;
			r.u.ext.lblk = e.lblk;
			r.u.ext.len = e.len;
			r.u.ext.obj = e.obj;
			r.u.ext.pblk = e.pblk;
			img_add(&im, &r);
		}
	}
	INODE_FOREACH(in, fs) {
		struct dent *d;
		for (size_t i = 0; (d = dir_next(in, &i)); i++) {
			r = (struct rec){ .type = REC_DIRENT_ADD,
					  .name = dent_name(in, d),
					  .name_len = d->len };
			r.u.dirent.parent = in->ino;
			r.u.dirent.ino = d->ino;
			r.u.dirent.cookie = d->cookie;
			img_add(&im, &r);
		}
	}
	size_t it = 0;
	uint64_t obj, pblk;
	uint32_t count;
	while (refcount_next(&fs->rc, &it, &obj, &pblk, &count)) {
		r = (struct rec){ .type = REC_REFCNT };
		r.u.refcnt.obj = obj;
		r.u.refcnt.pblk = pblk;
		r.u.refcnt.len = 1;
		r.u.refcnt.count = count;
		img_add(&im, &r);
	}
	img_seal(&im);
	if (im.err) {
		free(im.buf);
		return im.err;
	}
	format_header_init(&h, fs->block_shift);
	h.incompat |= COWFS_INCOMPAT_PACKED;
	h.generation = fs->generation + 1;
	h.flags = fs->mounted ? COWFS_HDR_MOUNTED : 0;
	format_header_encode(&h, im.buf + COWFS_HDR_SIZE, im.len - COWFS_HDR_SIZE,
			     hdr);
	memcpy(im.buf, hdr, COWFS_HDR_SIZE);
	*buf = im.buf;
	*len = im.len;
	return 0;
}

/* commit_lock held. */
/*
 * A checkpoint written while serving stalls this long, in ms, after
 * encoding (COWFS_TEST_CKPT_STALL_MS, debug builds only): the tests show
 * with it that requests are served meanwhile.
 */
static unsigned test_stall_ms(void)
{
#ifndef NDEBUG
	const char *v = getenv("COWFS_TEST_CKPT_STALL_MS");
	return v ? (unsigned)strtoul(v, NULL, 10) : 0;
#else
	return 0;
#endif
}

/*
 * In a child forked under fs->lock: the child's memory is a frozen,
 * copy-on-write image of the state at the fork, so it encodes and writes
 * the checkpoint while the daemon goes on serving.  Only the forking
 * thread exists in the child: it takes no lock, logs nothing, and leaves
 * with _exit().  Returns the exit status: 0, or an errno value.
 */
static int checkpoint_child(struct fs *fs)
{
	unsigned char *img;
	size_t len;
	int rc = journal_encode_checkpoint(fs, &img, &len), fd;
	unsigned ms = test_stall_ms();

	if (rc)
		return -rc;
	if (ms)
		usleep(ms * 1000u);
	fd = store_meta_write_tmp(&fs->store, img, len);
	if (fd < 0)
		return -fd;
	close(fd);
	return 0;
}

/* Install the new metadata file (the temporary holds len bytes). */
static int checkpoint_install(struct fs *fs, int fd, size_t len,
			      struct batch *b)
{
	close(fs->metafd);
	fs->metafd = fd;
	fs->meta_end = len;
	fs->ckpt_len = len - COWFS_HDR_SIZE;
	fs->generation++;
	finish_batch(fs, b);
	return 0;
}

/* A checkpoint written by a child process, for the commit path while
 * serving: fs->lock is held only to take the batch and fork.  -EAGAIN
 * when fork() failed, with nothing done.  commit_lock held. */
static int checkpoint_forked(struct fs *fs)
{
	struct batch b;
	struct stat st;
	int rc, status, fd;
	pid_t pid;

	lock_take(fs, LOCK_FS);
	if (fs->broken) {
		lock_drop(fs, LOCK_FS);
		return -EIO;
	}
	journal_flush_dirty(fs);
	if ((rc = take_batch(fs, &b, 1))) {
		lock_drop(fs, LOCK_FS);
		return rc;
	}
	pid = fork();
	if (pid == 0)
		_exit(checkpoint_child(fs));
	if (pid < 0) {
		restore_batch(fs, &b);
		lock_drop(fs, LOCK_FS);
		return -EAGAIN;
	}
	lock_drop(fs, LOCK_FS);

	rc = sync_data(fs, &b);		/* data before the metadata */
	while (waitpid(pid, &status, 0) < 0) {
		if (errno != EINTR) {
			status = EIO << 8;
			break;
		}
	}
	if (!rc && !(WIFEXITED(status) && WEXITSTATUS(status) == 0))
		rc = WIFEXITED(status) && WEXITSTATUS(status) ?
		     -WEXITSTATUS(status) : -EIO;
	if (!rc)
		rc = store_meta_install_tmp(&fs->store);
	fd = rc ? rc : store_meta_open(&fs->store);
	if (fd >= 0 && fstat(fd, &st) < 0) {
		close(fd);
		fd = -errno;
	}
	if (fd < 0) {
		fs_log(fs, "error: checkpoint: %s", strerror(-fd));
		store_meta_drop_tmp(&fs->store);
		lock_take(fs, LOCK_FS);
		restore_batch(fs, &b);
		lock_drop(fs, LOCK_FS);
		return fd;
	}
	return checkpoint_install(fs, fd, (size_t)st.st_size, &b);
}

static int checkpoint_locked(struct fs *fs)
{
	struct batch b;
	unsigned char *img;
	size_t len;
	int rc, fd;

	lock_take(fs, LOCK_FS);
	if (fs->broken) {
		lock_drop(fs, LOCK_FS);
		return -EIO;
	}
	journal_flush_dirty(fs);
	rc = journal_encode_checkpoint(fs, &img, &len);
	if (!rc && (rc = take_batch(fs, &b, 1)))
		free(img);
	lock_drop(fs, LOCK_FS);
	if (rc)
		return rc;
	rc = sync_data(fs, &b);
	fd = rc ? rc : store_meta_replace(&fs->store, img, len);
	free(img);
	if (fd < 0) {
		fs_log(fs, "error: checkpoint: %s", strerror(-fd));
		lock_take(fs, LOCK_FS);
		restore_batch(fs, &b);
		lock_drop(fs, LOCK_FS);
		return fd;
	}
	return checkpoint_install(fs, fd, len, &b);
}

int journal_checkpoint(struct fs *fs)
{
	int rc;
	if (fs->opt.ro)
		return 0;
	lock_take(fs, LOCK_COMMIT);
	rc = checkpoint_locked(fs);
	lock_drop(fs, LOCK_COMMIT);
	return rc;
}

/* ---- loading ---- */

int journal_mark_mounted(struct fs *fs)
{
	unsigned char hdr[COWFS_HDR_SIZE];
	ssize_t n;

	do
		n = pread(fs->metafd, hdr, sizeof(hdr), 0);
	while (n < 0 && errno == EINTR);
	if (n != (ssize_t)sizeof(hdr))
		return n < 0 ? -errno : -EIO;
	if (format_header_set_mounted(hdr, 1))
		return -EUCLEAN;
	/* 64 bytes inside the first sector: written whole or not at all */
	int rc = pwrite_full(fs->metafd, hdr, sizeof(hdr), 0);
	if (!rc && fdatasync(fs->metafd) < 0)
		rc = -errno;
	if (!rc)
		fs->mounted = 1;
	return rc;
}

/*
 * Limits no record may pass, whatever its checksum says: the loader trusts
 * no length.  *blocks is what is left of the REC_REFCNT budget: all the
 * runs of a checkpoint together cover at most as many blocks as the
 * checkpoint has bytes (the writer uses one record per block).
 */
static const char *check_rec(struct fs *fs, const struct rec *r,
			     uint64_t *blocks)
{
	switch (r->type) {
	case REC_PACK:		/* only at the checkpoint's top level */
		return "a packed record outside the checkpoint";
	case REC_SUPER:
		if (r->u.super.next_obj == 0)
			return "bad object counter";
		break;
	case REC_INODE:
		if (r->u.inode.ino == 0 || r->u.inode.ino == UINT64_MAX)
			return "bad inode number";
		if (r->u.inode.size > COWFS_MAX_FILE_SIZE)
			return "file size beyond the store's limit";
		break;
	case REC_EXT_SET:
		if (!format_extent_ok(r->u.ext.lblk, r->u.ext.len, r->u.ext.pblk,
				      fs->block_shift))
			return "extent beyond the store's limits";
		break;
	case REC_REFCNT:
		if (!format_extent_ok(r->u.refcnt.pblk, r->u.refcnt.len,
				      r->u.refcnt.pblk, fs->block_shift) ||
		    r->u.refcnt.len > *blocks)
			return "refcount run longer than the checkpoint";
		*blocks -= r->u.refcnt.len;
		break;
	}
	return NULL;
}

/* verify_graph()'s marks: bits of in->vtags, all clear between loads. */
enum { TAG_NAMED = 1, TAG_REACHES_ROOT = 2 };

static bool tag_get(const struct inode *in, unsigned tag)
{
	return in->vtags & tag;
}

static void tag_add(struct inode *in, unsigned tag)
{
	in->vtags |= (uint8_t)tag;
}

/*
 * After load: the namespace must be a tree hanging from the root.  Every
 * entry names an existing inode; the root is named nowhere; a directory is
 * named exactly once, by the directory its parent field gives; no entry
 * names an inode whose link count is 0 (it would be freed as an orphan,
 * leaving the entry dangling); every
 * directory's parent chain reaches the root (no cycle); an inode that is
 * still linked (nlink > 0) is named somewhere.  0, or -EUCLEAN with a
 * message.
 */
static int verify_graph(struct fs *fs, char *err, size_t errlen)
{
	struct inode *in;
	uint64_t ndirs = 0;
	int rc;

	INODE_FOREACH(in, fs) {
		struct dent *d;
		if (!S_ISDIR(in->mode))
			continue;
		ndirs++;
		for (size_t i = 0; (d = dir_next(in, &i)); i++) {
			struct inode *ch = inode_get(fs, d->ino);
			if (!ch) {
				snprintf(err, errlen, "directory %llu entry '%s' "
					 "names missing inode %llu",
					 (unsigned long long)in->ino,
					 dent_name(in, d), (unsigned long long)d->ino);
				goto bad;
			}
			if (ch->nlink == 0) {
				snprintf(err, errlen, "directory %llu entry '%s' "
					 "names inode %llu, whose link count is 0",
					 (unsigned long long)in->ino, dent_name(in, d),
					 (unsigned long long)d->ino);
				goto bad;
			}
			if (ch->ino == FS_ROOT_INO) {
				snprintf(err, errlen, "directory %llu names the "
					 "root directory", (unsigned long long)in->ino);
				goto bad;
			}
			if (S_ISDIR(ch->mode) && (tag_get(ch, TAG_NAMED) ||
						  dir_parent(ch) != in->ino)) {
				snprintf(err, errlen, "directory %llu has two "
					 "parents (%llu and %llu)",
					 (unsigned long long)ch->ino,
					 (unsigned long long)dir_parent(ch),
					 (unsigned long long)in->ino);
				goto bad;
			}
			tag_add(ch, TAG_NAMED);
		}
	}
	INODE_FOREACH(in, fs) {
		if (in->ino == FS_ROOT_INO || tag_get(in, TAG_NAMED))
			continue;
		if (in->nlink) {	/* nlink 0: an orphan, freed at open */
			snprintf(err, errlen, "%s %llu is in no directory",
				 S_ISDIR(in->mode) ? "directory" : "inode",
				 (unsigned long long)in->ino);
			goto bad;
		}
	}
	/* Walk each directory up; ndirs steps without the root is a cycle.
	 * Directories found to reach the root are tagged: linear overall. */
	INODE_FOREACH(in, fs) {
		if (!S_ISDIR(in->mode) || in->ino == FS_ROOT_INO ||
		    !tag_get(in, TAG_NAMED) ||
		    tag_get(in, TAG_REACHES_ROOT))
			continue;
		struct inode *p = in;
		uint64_t steps = 0;
		while (p->ino != FS_ROOT_INO &&
		       !tag_get(p, TAG_REACHES_ROOT)) {
			if (++steps > ndirs || !(p = inode_get(fs, dir_parent(p))) ||
			    !S_ISDIR(p->mode) || (p->ino != FS_ROOT_INO &&
						  !tag_get(p, TAG_NAMED))) {
				snprintf(err, errlen, "directory %llu does not "
					 "reach the root (a cycle or a lost parent)",
					 (unsigned long long)in->ino);
				goto bad;
			}
		}
		for (p = in; p->ino != FS_ROOT_INO &&
		     !tag_get(p, TAG_REACHES_ROOT);
		     p = inode_get(fs, dir_parent(p)))
			tag_add(p, TAG_REACHES_ROOT);
	}
	rc = 0;
	goto out;
bad:
	rc = -EUCLEAN;
out:
	INODE_FOREACH(in, fs)
		in->vtags = 0;
	return rc;
}

/*
 * Check and apply one checkpoint record, r (NULL: it did not decode), at
 * byte off of the file.  0, or -EUCLEAN with a message.
 */
static int load_ckpt_rec(struct fs *fs, const struct journal_load_ops *ops,
			 const struct rec *r, size_t off, uint64_t *blocks,
			 char *err, size_t errlen)
{
	const char *msg = NULL;

	if (!r || (r->type == REC_EXT_SET && !(r->flags & EXT_NOREF)) ||
	    r->type == REC_COMMIT || r->type == REC_CLONE ||
	    (msg = check_rec(fs, r, blocks))) {
		snprintf(err, errlen, "'%s/%s': corrupt checkpoint record at "
			 "offset %zu%s%s", fs->store.path, STORE_META, off,
			 msg ? ": " : "", msg ? msg : "");
		return -EUCLEAN;
	}
	if (ops->apply(fs, r)) {
		snprintf(err, errlen, "'%s/%s': inconsistent checkpoint record "
			 "at offset %zu (type %u)", fs->store.path,
			 STORE_META, off, r->type);
		return -EUCLEAN;
	}
	return 0;
}

/* The sub-records of a REC_PACK at byte off, one by one as if each were
 * a record of its own at its own offset. */
static int load_pack(struct fs *fs, const struct journal_load_ops *ops,
		     const struct rec *pack, const struct disk_header *h,
		     size_t off, uint64_t *blocks, char *err, size_t errlen)
{
	struct pack_reader rd;
	struct rec r;
	int rc;

	if (!(h->incompat & COWFS_INCOMPAT_PACKED)) {
		snprintf(err, errlen, "'%s/%s': corrupt checkpoint record at "
			 "offset %zu: a packed record, but the header does not "
			 "say the checkpoint is packed", fs->store.path,
			 STORE_META, off);
		return -EUCLEAN;
	}
	format_pack_open(&rd, pack);
	for (;;) {
		size_t at = off + COWFS_REC_HDR_SIZE + format_pack_offset(&rd);
		int k = format_pack_next(&rd, &r);
		if (k == 0)
			return 0;
		if (k < 0) {
			snprintf(err, errlen, "'%s/%s': corrupt checkpoint "
				 "record at offset %zu: a packed sub-record that "
				 "does not decode", fs->store.path, STORE_META, at);
			return -EUCLEAN;
		}
		if ((rc = load_ckpt_rec(fs, ops, &r, at, blocks, err, errlen)))
			return rc;
	}
}

/*
 * Load the checkpoint and replay the journal.  Returns 1 when the last
 * stop was unclean (the mount mark was set, or the journal held records),
 * 0 when clean, or -errno with a message in err.
 */
int journal_load(struct fs *fs, const struct journal_load_ops *ops,
		 char *err, size_t errlen)
{
	void *data = NULL;
	size_t len;
	struct disk_header h;
	const char *msg;
	struct rec r;
	struct jscan js;
	char why[200];
	int rc;
	const unsigned char *p;

	rc = store_meta_read(&fs->store, &data, &len);
	if (rc) {
		snprintf(err, errlen, "'%s/%s': %s", fs->store.path, STORE_META,
			 strerror(-rc));
		return rc;
	}
	p = data;
	rc = -EUCLEAN;
	if (len < COWFS_HDR_SIZE) {
		snprintf(err, errlen, "'%s/%s': not a cowfs metadata file (too short)",
			 fs->store.path, STORE_META);
		goto out;
	}
	if ((msg = format_header_decode(p, &h))) {
		snprintf(err, errlen, "'%s/%s': %s", fs->store.path, STORE_META, msg);
		if (h.version != COWFS_VERSION_FMT && !memcmp(p, COWFS_MAGIC, 8) &&
		    strstr(msg, "version"))
			snprintf(err, errlen, "'%s/%s': unsupported metadata format "
				 "version %u (this cowfs reads version %u)",
				 fs->store.path, STORE_META, h.version,
				 COWFS_VERSION_FMT);
		goto out;
	}
	if (h.ckpt_len > len - COWFS_HDR_SIZE) {
		snprintf(err, errlen, "'%s/%s': checkpoint is truncated (%llu of "
			 "%llu bytes)", fs->store.path, STORE_META,
			 (unsigned long long)(len - COWFS_HDR_SIZE),
			 (unsigned long long)h.ckpt_len);
		goto out;
	}
	if (format_csum(p + COWFS_HDR_SIZE, h.ckpt_len) != h.ckpt_csum) {
		snprintf(err, errlen, "'%s/%s': checkpoint checksum mismatch "
			 "(corrupt metadata)", fs->store.path, STORE_META);
		goto out;
	}
	fs->block_shift = h.block_shift;
	fs->block_size = 1ull << h.block_shift;
	fs->generation = h.generation;
	fs->ckpt_len = h.ckpt_len;

	fs->replaying = 1;
	fs->opath_load = NULL;
	size_t off = COWFS_HDR_SIZE, end = COWFS_HDR_SIZE + h.ckpt_len;
	uint64_t blocks = h.ckpt_len;
	while (off < end) {
		long n = format_decode(p + off, end - off, &r);
		if (n > 0 && r.type == REC_PACK)
			rc = load_pack(fs, ops, &r, &h, off, &blocks, err,
				       errlen);
		else
			rc = load_ckpt_rec(fs, ops, n > 0 ? &r : NULL, off,
					   &blocks, err, errlen);
		if (rc)
			goto out;
		off += (size_t)n;
	}
	struct inode *root = inode_get(fs, FS_ROOT_INO);
	if (!root || !S_ISDIR(root->mode)) {
		snprintf(err, errlen, "'%s/%s': checkpoint has no root directory",
			 fs->store.path, STORE_META);
		rc = -EUCLEAN;
		goto out;
	}
	ops->checkpoint_loaded(fs);

	/* Journal: find the end of the last whole batch, then apply. */
	switch (format_scan_journal(p, len, end, &js)) {
	case JSCAN_NONSENSE:
		snprintf(err, errlen, "'%s/%s': corrupt journal record at "
			 "offset %zu", fs->store.path, STORE_META, js.bad);
		rc = -EUCLEAN;
		goto out;
	case JSCAN_BAD_MIDDLE:
		snprintf(err, errlen, "'%s/%s': corrupt journal: the record at "
			 "offset %zu is bad but %llu committed batch(es) follow it "
			 "(up to seq %llu); 'cowfs fsck --repair' truncates the "
			 "journal there and drops them", fs->store.path,
			 STORE_META, js.bad, (unsigned long long)js.later_commits,
			 (unsigned long long)js.later_seq);
		rc = -EUCLEAN;
		goto out;
	case JSCAN_CLEAN:
	case JSCAN_TORN:
		break;
	}
	size_t good = js.good;
	fs->opath_load = NULL;	/* the journal's first batch */
	for (off = end; off < good;) {
		long n = format_decode(p + off, good - off, &r);
		msg = n > 0 ? check_rec(fs, &r, &blocks) : "bad record";
		if (msg) {
			snprintf(err, errlen, "'%s/%s': corrupt journal record at "
				 "offset %zu: %s", fs->store.path, STORE_META, off,
				 msg);
			rc = -EUCLEAN;
			goto out;
		}
		if ((rc = ops->apply(fs, &r))) {
			snprintf(err, errlen, "'%s/%s': journal record at offset %zu "
				 "(type %u) does not apply: %s", fs->store.path,
				 STORE_META, off, r.type, strerror(-rc));
			rc = -EUCLEAN;
			goto out;
		}
		off += (size_t)n;
	}
	if ((rc = verify_graph(fs, why, sizeof(why)))) {
		snprintf(err, errlen, "'%s/%s': corrupt namespace: %s",
			 fs->store.path, STORE_META, why);
		goto out;
	}
	if (len > good)
		fs_log(fs, "journal: discarded a torn tail of %zu bytes at offset "
		       "%zu", len - good, good);
	fs->meta_end = good;
	rc = (h.flags & COWFS_HDR_MOUNTED) || good > end || len > good;
out:
	fs->replaying = 0;
	free(data);
	return rc;
}

/* ---- background commits ---- */

static void *commit_thread(void *arg)
{
	struct fs *fs = arg;
	struct timespec ts;

	lock_take(fs, LOCK_FS);
	while (!fs->stopping) {
		clock_gettime(CLOCK_REALTIME, &ts);
		ts.tv_sec += fs->opt.commit_secs;
		pthread_cond_timedwait(&fs->cond, &fs->lock, &ts);
		if (fs->stopping)
			break;
		lock_drop(fs, LOCK_FS);
		journal_commit(fs);
		lock_take(fs, LOCK_FS);
	}
	lock_drop(fs, LOCK_FS);
	return NULL;
}

void journal_start_thread(struct fs *fs)
{
	if (fs->opt.ro || fs->thread_started)
		return;
	if (pthread_create(&fs->thread, NULL, commit_thread, fs) == 0)
		fs->thread_started = true;
}

void journal_stop_thread(struct fs *fs)
{
	if (!fs->thread_started)
		return;
	lock_take(fs, LOCK_FS);
	fs->stopping = true;
	pthread_cond_signal(&fs->cond);
	lock_drop(fs, LOCK_FS);
	pthread_join(fs->thread, NULL);
	fs->thread_started = false;
}
