/*
 * file.c - file data: extent map changes with their reference counts, the
 * copy-on-write read/write path, truncate, fallocate, SEEK_DATA/SEEK_HOLE
 * and block-sharing copy_file_range.  Objects, their fds and origin files
 * are object.c's (object.h); this file pins objects and does data I/O on
 * their fds with no lock but data_lock/io_lock held.
 * The invariants it keeps are listed in fs_impl.h.
 *
 * Owns: the extent maps' contents and the refcount table (changed only
 * here, by clone.c and by replay), write objects (ensure_wobj, retire),
 * the queue of blocks to punch after the next commit (queue_free).
 */
#include <errno.h>
#include <fcntl.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>
#include <linux/falloc.h>

#include "cowfs/fs_impl.h"

void file_retire_wobj(struct fs *fs, struct inode *in)
{
	file_retire_wobj_quiet(fs, in);
	inode_dirty(fs, in);
}

/* Retire without journaling the inode: for a clone, whose own record
 * retires the same objects when it is replayed. */
void file_retire_wobj_quiet(struct fs *fs, struct inode *in)
{
	struct object *o;

	if (!in->wobj)
		return;
	o = obj_get(fs, in->wobj);
	in->wobj = 0;
	if (o) {
		o->owner = 0;
		obj_maybe_doom(fs, o);
	}
}

static void queue_free(struct fs *fs, uint64_t obj, uint64_t pblk)
{
	struct pending_free *l = fs->nfrees ? &fs->frees[fs->nfrees - 1] : NULL;

	if (l && l->obj == obj && l->pblk + l->len == pblk) {
		l->len++;
		return;
	}
	if (fs->nfrees == fs->cap_frees) {
		size_t cap = fs->cap_frees ? fs->cap_frees * 2 : 64;
		struct pending_free *n = realloc(fs->frees, cap * sizeof(*n));
		if (!n)
			return;	/* space leaks until fsck --repair */
		fs->frees = n;
		fs->cap_frees = cap;
	}
	fs->frees[fs->nfrees++] = (struct pending_free){ obj, pblk, 1 };
}

struct drop_ctx {
	struct fs *fs;
	struct inode *in;
	int noref;
	int retire;
};

static void drop_blocks(void *p, uint64_t obj, uint64_t pblk, uint64_t len)
{
	struct drop_ctx *c = p;
	struct fs *fs = c->fs;
	struct object *o = obj_get(fs, obj);

	if (c->noref)
		return;
	if (obj == c->in->wobj)
		c->retire = 1;
	for (uint64_t i = 0; i < len; i++) {
		if (refcount_dec(&fs->rc, obj, pblk + i))
			continue;
		if (o && o->nlive)
			o->nlive--;
		if (!o || !o->origin)	/* an origin is never written */
			queue_free(fs, obj, pblk + i);
	}
	if (o)
		obj_maybe_doom(fs, o);
}

int file_map_set(struct fs *fs, struct inode *in, uint64_t lblk, uint64_t len,
		 uint64_t obj, uint64_t pblk, unsigned flags)
{
	struct drop_ctx c = { fs, in, !!(flags & EXT_NOREF), 0 };
	struct object *o = obj_get(fs, obj);
	int rc;

	if (!o && !(o = obj_new(fs, obj, 0)))
		return -ENOMEM;
	if (flags & EXT_SHARE) {
		for (uint64_t i = 0; i < len; i++)
			if (refcount_inc(&fs->rc, obj, pblk + i))
				return -ENOMEM;
	}
	/* A NEW run lands in the file's own write object: never retire it. */
	uint64_t keep = in->wobj;
	rc = extmap_set(&in->map, lblk, len, obj, pblk, drop_blocks, &c);
	if (rc)
		return rc;
	if (flags & EXT_NEW)
		o->nlive += len;
	if (c.retire && !((flags & EXT_NEW) && obj == keep))
		file_retire_wobj(fs, in);
	return 0;
}

int file_map_punch(struct fs *fs, struct inode *in, uint64_t lblk, uint64_t len)
{
	struct drop_ctx c = { fs, in, 0, 0 };
	int rc = extmap_punch(&in->map, lblk, len, drop_blocks, &c);
	if (!rc && c.retire)
		file_retire_wobj(fs, in);
	return rc;
}

/* Blocks that hold a file of size bytes: the last one partly. */
static uint64_t size_blocks(const struct fs *fs, uint64_t size)
{
	return (size + fs->block_size - 1) >> fs->block_shift;
}

/* Whether m maps any block at lblk or after it. */
static bool maps_from(const struct extmap *m, uint64_t lblk)
{
	struct extent e;

	return extmap_n(m) != 0 &&
	       (extmap_lookup(m, lblk, &e) || e.len != UINT64_MAX);
}

/*
 * Recovery after an unclean stop: unmap the blocks past the file's last
 * one.  A shrink in passthrough mode keeps them mapped until the last
 * close and commits the size meanwhile (pt_truncate), so a crash can
 * leave them in the journal.  No record: the recovery's checkpoint
 * follows.  fs->lock held (or the store not yet shared).
 */
void file_unmap_past_eof(struct fs *fs, struct inode *in)
{
	uint64_t nblk = size_blocks(fs, in->size);

	if (!maps_from(&in->map, nblk))
		return;		/* nothing past the end: the usual case */
	if (file_map_punch(fs, in, nblk, UINT64_MAX - nblk))
		fs_log(fs, "warning: inode %llu: cannot unmap its blocks past "
		       "the end", (unsigned long long)in->ino);
	inode_dirty(fs, in);
}

/* Recount every object's live blocks from the extent maps (after load). */
void file_compute_nlive(struct fs *fs)
{
	struct object *o;
	struct inode *in;
	size_t i = 0;
	uint64_t obj, pblk;
	uint32_t count;

	for (size_t it_ = 0; (o = obj_next(fs, &it_));)
		o->nlive = 0;
	INODE_FOREACH(in, fs) {
		if (!S_ISREG(in->mode))
			continue;
		for (size_t k = 0; k < extmap_n(&in->map); k++) {
			const struct extent ev = extmap_at(&in->map, k), *e = &ev;
			o = obj_get(fs, e->obj);
			if (!o)
				continue;
			for (uint64_t b = 0; b < e->len; b++)
				if (refcount_get(&fs->rc, e->obj, e->pblk + b) == 1)
					o->nlive++;
		}
	}
	while (refcount_next(&fs->rc, &i, &obj, &pblk, &count))
		if ((o = obj_get(fs, obj)))
			o->nlive++;
}

/* ---- logging extent changes ---- */

/*
 * A record could not be logged after its change was made in memory (the
 * journal buffer cannot grow): memory now says more than the journal, and
 * a later write that finds its block in place would log nothing either.
 * The store turns broken (sticky): data changes fail with EIO from now on.
 * fs->lock held.
 */
static int log_failed(struct fs *fs, struct inode *in, int rc)
{
	if (!fs->broken)
		fs_log(fs, "error: inode %llu: cannot log an extent change: %s; "
		       "the store refuses data changes until it is remounted",
		       (unsigned long long)in->ino, strerror(-rc));
	fs->broken = 1;
	return rc;
}

static int map_and_log(struct fs *fs, struct inode *in, uint64_t lblk,
		       uint64_t len, uint64_t obj, uint64_t pblk, unsigned flags)
{
	int rc = file_map_set(fs, in, lblk, len, obj, pblk, flags);
	if (rc)
		return rc;
	struct rec r = { .type = REC_EXT_SET, .flags = (uint16_t)flags };
	r.u.ext.ino = in->ino;
	r.u.ext.lblk = lblk;
	r.u.ext.len = len;
	r.u.ext.obj = obj;
	r.u.ext.pblk = pblk;
	rc = journal_log(fs, &r);
	return rc ? log_failed(fs, in, rc) : 0;
}

static int punch_and_log(struct fs *fs, struct inode *in, uint64_t lblk,
			 uint64_t len)
{
	if (len == 0 || extmap_n(&in->map) == 0)
		return 0;
	int rc = file_map_punch(fs, in, lblk, len);
	if (rc)
		return rc;
	struct rec r = { .type = REC_EXT_PUNCH };
	r.u.ext.ino = in->ino;
	r.u.ext.lblk = lblk;
	r.u.ext.len = len;
	rc = journal_log(fs, &r);
	return rc ? log_failed(fs, in, rc) : 0;
}

/*
 * The file's write object, created on first need, in *wp (not pinned).  fs->lock held; it is dropped around the
 * creation of the object file (openat O_CREAT), which is published only
 * once the file exists.  The caller holds in->io_lock, so no other thread
 * gives the file a write object meanwhile.
 */
static int ensure_wobj(struct fs *fs, struct inode *in, struct object **wp)
{
	int evicted[8];
	struct object *o;
	int fd, rc = 0;

	if (in->wobj && (o = obj_get(fs, in->wobj))) {
		*wp = o;
		return 0;
	}
	uint64_t id = fs->next_obj++;
	size_t nev = obj_evict(fs, evicted, 8);
	unsigned t = lock_fs_suspend(fs);
	obj_close_fds(evicted, nev);	/* asserts fs->lock is not held */
	fd = store_obj_open(&fs->store, id, 1);
	lock_fs_resume(fs, t);
	if (fd < 0)
		return fd;
	o = obj_new(fs, id, in->ino);
	if (!o) {
		rc = -ENOMEM;
		goto out_unlink;
	}
	obj_adopt_fd(fs, o, fd);
	in->wobj = id;
	inode_dirty(fs, in);
	*wp = o;
	return 0;
out_unlink:
	t = lock_fs_suspend(fs);
	close(fd);
	store_obj_unlink(&fs->store, id);
	lock_fs_resume(fs, t);
	return rc;
}

/* Keep the object file at least up to end, so that a read of a mapped
 * block never meets the object's end.  o pinned, fs->lock NOT held; the
 * owner's io_lock held (it guards o->len). */
static int obj_cover(struct object *o, int fd, uint64_t end)
{
	struct stat st;

	LOCK_ASSERT_UNLOCKED_FS();
	if (o->len >= end)
		return 0;
	if (fstat(fd, &st) < 0)
		return -errno;
	o->len = (uint64_t)st.st_size;
	if (o->len >= end)
		return 0;
	if (ftruncate(fd, (off_t)end) < 0)
		return -errno;
	o->len = end;
	return 0;
}

/* Map every block of [first, last] that is not already (wobj, i) to its
 * wobj slot.  fs->lock held. */
static int map_to_wobj(struct fs *fs, struct inode *in, uint64_t first,
		       uint64_t last)
{
	uint64_t w = in->wobj;
	struct extent e;

	for (uint64_t b = first; b <= last;) {
		int mapped = extmap_lookup(&in->map, b, &e);
		uint64_t n = e.len;
		if (n > last - b + 1)
			n = last - b + 1;
		if (mapped && e.obj == w && e.pblk == b) {
			b += n;
			continue;
		}
		/* run of blocks not in place */
		uint64_t end = b + n;
		while (end <= last) {
			mapped = extmap_lookup(&in->map, end, &e);
			if (mapped && e.obj == w && e.pblk == end)
				break;
			uint64_t k = e.len < last - end + 1 ? e.len : last - end + 1;
			end += k;
		}
		int rc = map_and_log(fs, in, b, end - b, w, b, EXT_NEW);
		if (rc)
			return rc;
		if (in->wobj != w)	/* cannot happen: NEW keeps wobj */
			return -EIO;
		b = end;
	}
	return 0;
}

/* Read up to len bytes; fewer only at the end of the file.  Returns the
 * count read or -errno. */
static ssize_t pread_all(int fd, void *buf, size_t len, off_t pos)
{
	char *p = buf;
	size_t done = 0;

	while (done < len) {
		ssize_t n = pread(fd, p + done, len - done, pos + (off_t)done);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			return -errno;
		if (n == 0)
			break;
		done += (size_t)n;
	}
	return (ssize_t)done;
}

static int pwrite_all(int fd, const void *buf, size_t len, off_t pos)
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

/*
 * Copy len bytes from src position to dst position.  Past the source's
 * end the bytes are zeros: written when the destination may hold older
 * bytes there, left alone when it is a fresh hole (to_hole), which reads
 * zeros and so costs no host space.
 */
static int copy_bytes(int sfd, off_t spos, int dfd, off_t dpos, size_t len,
		      bool to_hole)
{
	char buf[65536];
	while (len) {
		size_t n = len < sizeof(buf) ? len : sizeof(buf);
		ssize_t got = pread_all(sfd, buf, n, spos);
		int rc;
		if (got < 0)
			return (int)got;
		if ((size_t)got < n && to_hole)
			n = (size_t)got;
		else if ((size_t)got < n)
			memset(buf + got, 0, n - (size_t)got);
		if (n == 0)
			return 0;
		if ((rc = pwrite_all(dfd, buf, n, dpos)))
			return rc;
		len -= n;
		spos += (off_t)n;
		dpos += (off_t)n;
	}
	return 0;
}

static int zero_gap(struct fs *fs, struct inode *in, uint64_t from,
		    uint64_t to);

struct cow_plan {
	uint64_t lblk;
	struct object *src;	/* pinned */
	int sfd;		/* src's fd once ready */
	bool ready;		/* obj_hold() said no obj_ready() is needed */
	uint64_t spblk;
	uint32_t keep_lo_end;	/* copy [0, keep_lo_end) */
	uint32_t keep_hi_start;	/* copy [keep_hi_start, keep_hi_end) */
	uint32_t keep_hi_end;
};

/*
 * Plan a partial-block copy-on-write of lblk where [lo, hi) (block-relative)
 * will be overwritten; the source object is pinned (obj_hold).  Only bytes
 * below size (the file's size before the write) are kept: the rest of the
 * fresh slot stays a hole, which reads zeros and takes no host space, so
 * the last block of a file costs its bytes, not B.  fs->lock held.
 * Returns 1 if planned, 0 if nothing to copy, -1 (*rc) on error.
 */
static int plan_cow(struct fs *fs, struct inode *in, uint64_t lblk,
		    uint32_t lo, uint32_t hi, uint64_t size, struct cow_plan *p,
		    int *rc)
{
	uint64_t base = lblk << fs->block_shift;
	uint32_t avail;
	struct extent e;

	if (!extmap_lookup(&in->map, lblk, &e))
		return 0;	/* hole: the fresh slot reads zeros */
	if (e.obj == in->wobj && e.pblk == lblk)
		return 0;	/* in place */
	if (lo == 0 && hi == fs->block_size)
		return 0;	/* fully overwritten */
	avail = size <= base ? 0 : size - base >= fs->block_size ?
		(uint32_t)fs->block_size : (uint32_t)(size - base);
	if (lo > avail)
		lo = avail;	/* [avail, lo) is past EOF: zeros */
	if (hi > avail)
		hi = avail;
	if (lo == 0 && hi == avail)
		return 0;	/* nothing below EOF is kept */
	p->src = obj_get(fs, e.obj);
	if (!p->src) {
		*rc = -EIO;
		return -1;
	}
	p->ready = !obj_hold(fs, p->src);
	p->sfd = p->src->fd;
	p->lblk = lblk;
	p->spblk = e.pblk;
	p->keep_lo_end = lo;
	p->keep_hi_start = hi;
	p->keep_hi_end = avail;
	return 1;
}

/* Without fs->lock.  The destination slot is a fresh hole (invariant 2):
 * what is not copied reads zeros. */
static int run_cow(struct fs *fs, struct cow_plan *p, int dfd)
{
	off_t s = (off_t)(p->spblk << fs->block_shift);
	off_t d = (off_t)(p->lblk << fs->block_shift);
	int rc = 0;

	if (!p->ready && (p->sfd = obj_ready(fs, p->src)) < 0)
		return p->sfd;
	if (p->keep_lo_end)
		rc = copy_bytes(p->sfd, s, dfd, d, p->keep_lo_end, true);
	if (!rc && p->keep_hi_start < p->keep_hi_end)
		rc = copy_bytes(p->sfd, s + p->keep_hi_start, dfd,
				d + p->keep_hi_start,
				p->keep_hi_end - p->keep_hi_start, true);
	return rc;
}

/*
 * The write path.  Caller holds data_lock (shared) and in->io_lock, not
 * fs->lock.  Bytes land in the write object at the file offset itself
 * (block i at slot i), so one fill() call carries the whole write.
 * fs->lock is taken twice: to plan (and pin the objects involved) and to
 * map the written blocks.  Every syscall on an object file (creating the
 * write object, opening or checking a source, the copy, the fill, the
 * ftruncate that covers the last block) runs between the two, unlocked.
 */
ssize_t file_write_locked(struct fs *fs, struct inode *in, off_t off,
			  size_t len, fs_fill_fn fill, void *ctx)
{
	struct cow_plan plan[2];
	int nplan = 0, rc = 0, wfd;
	struct object *w = NULL;
	uint64_t B = fs->block_size, first, last, size0;
	ssize_t n = 0;
	bool wready;

	if (len == 0)
		return 0;
	if ((uint64_t)off + len > ((uint64_t)1 << 62))
		return -EFBIG;
	first = (uint64_t)off >> fs->block_shift;
	last = ((uint64_t)off + len - 1) >> fs->block_shift;

	lock_take(fs, LOCK_FS);
	if (fs->broken) {
		rc = -EIO;
		goto out_unlock;
	}
	if ((uint64_t)off > in->size && (rc = zero_gap(fs, in, in->size, (uint64_t)off)))
		goto out_unlock;
	if ((rc = ensure_wobj(fs, in, &w)))
		goto out_unlock;
	uint32_t lo = (uint32_t)((uint64_t)off & (B - 1));
	uint32_t hi = first == last ? lo + (uint32_t)len : (uint32_t)B;
	int r = plan_cow(fs, in, first, lo, hi, in->size, &plan[nplan], &rc);
	if (r < 0)
		goto out_unlock;
	nplan += r;
	if (last != first) {
		hi = (uint32_t)(((uint64_t)off + len - 1) & (B - 1)) + 1;
		r = plan_cow(fs, in, last, 0, hi, in->size, &plan[nplan], &rc);
		if (r < 0)
			goto out_unpin_plans;
		nplan += r;
	}
	wready = !obj_hold(fs, w);
	wfd = w->fd;
	size0 = in->size;	/* stable: io_lock held */
	lock_drop(fs, LOCK_FS);

	if (!wready && (wfd = obj_ready(fs, w)) < 0)
		rc = wfd;
	for (int i = 0; i < nplan && !rc; i++)
		rc = run_cow(fs, &plan[i], wfd);
	n = rc ? rc : fill(ctx, wfd, off, len);
	if (n > 0) {
		uint64_t wend = (uint64_t)off + (uint64_t)n;
		last = (wend - 1) >> fs->block_shift;
		if (wend > w->len)
			w->len = wend;	/* a lower bound of the object's length */
		if (wend < size0) {
			/* the file goes on past the write inside its last block */
			uint64_t need = (last + 1) << fs->block_shift;
			rc = obj_cover(w, wfd, need < size0 ? need : size0);
		}
	}

	lock_take(fs, LOCK_FS);
	if (n <= 0 || rc) {
		if (!rc)
			rc = n < 0 ? (int)n : -EIO;
		/* Slots may now hold bytes nothing maps: keep invariant (2). */
		if (in->wobj == w->id)
			file_retire_wobj(fs, in);
		goto out_unpin;
	}
	if ((rc = map_to_wobj(fs, in, first, last)))
		goto out_unpin;
	if ((uint64_t)off + (uint64_t)n > in->size)
		in->size = (uint64_t)off + (uint64_t)n;
	inode_touch(in, IT_BIT(IT_MTIME) | IT_BIT(IT_CTIME), NULL);
	inode_dirty(fs, in);
	obj_mark_dirty(fs, w);
out_unpin:
	obj_unpin(fs, w);
out_unpin_plans:
	for (int i = 0; i < nplan; i++)
		obj_unpin(fs, plan[i].src);
out_unlock:
	lock_drop(fs, LOCK_FS);
	return rc ? rc : n;
}

static struct inode *get_reg(struct fs *fs, uint64_t ino, int *rc)
{
	lock_take(fs, LOCK_FS);
	struct inode *in = inode_get(fs, ino);
	if (!in)
		*rc = -ENOENT;
	else if (!S_ISREG(in->mode)) {
		*rc = S_ISDIR(in->mode) ? -EISDIR : -EINVAL;
		in = NULL;
	}
	lock_drop(fs, LOCK_FS);
	return in;
}

/*
 * Host space kept for metadata.  A write of file data that would leave
 * less than this free on the store's filesystem (as an unprivileged user
 * sees it, f_bavail) fails with ENOSPC, so that the journal commits and
 * the checkpoint that give space back (a freed block is punched only
 * after the commit that frees it, journal.c (3)) still find room.  With
 * the kernel's writeback cache, writeback fills a disk to its last block
 * before any writer hears of it, and a store whose unlink of the big file
 * cannot be committed cannot free anything.  fstatvfs() is called again
 * once a quarter of the room seen last time (at most 64 MiB) has been
 * written, so every write when the disk is nearly full, rarely otherwise.
 */
#define META_RESERVE ((uint64_t)8 << 20)
static _Atomic uint64_t space_credit;	/* bytes to write before a check */
static _Atomic uint64_t space_inflight;	/* bytes of writes under way */

/* 0, and len counted in flight (give it back with data_space_done()),
 * or -ENOSPC. */
static int data_space_take(struct fs *fs, size_t len)
{
	struct statvfs sv;
	uint64_t c = atomic_load(&space_credit), avail, f;

	f = atomic_fetch_add(&space_inflight, len) + len;
	/* concurrent writers may both spend the same credit: it is a
	 * quarter of the room, so they cannot overrun the reserve */
	if (c >= len) {
		atomic_store(&space_credit, c - len);
		return 0;
	}
	if (fstatvfs(fs->store.objfd, &sv) < 0)
		return 0;	/* no figure: the write decides */
	/* writes under way have passed the check but may not show in
	 * f_bavail yet: they count against the room too */
	avail = (uint64_t)sv.f_bavail * sv.f_frsize;
	if (avail < META_RESERVE + f) {
		atomic_fetch_sub(&space_inflight, len);
		return -ENOSPC;
	}
	c = (avail - META_RESERVE - f) / 4;
	atomic_store(&space_credit, c < ((uint64_t)64 << 20) ? c : (uint64_t)64 << 20);
	return 0;
}

static void data_space_done(size_t len)
{
	atomic_fetch_sub(&space_inflight, len);
}

ssize_t fs_write(struct fs *fs, uint64_t ino, off_t off, size_t len,
		 fs_fill_fn fill, void *ctx)
{
	int rc = 0;
	ssize_t n;
	struct inode *in;

	if (fs->opt.ro)
		return -EROFS;
	if ((rc = data_space_take(fs, len)))
		return rc;
	lock_take_shared(fs);
	in = get_reg(fs, ino, &rc);
	if (!in) {
		lock_drop(fs, LOCK_DATA);
		data_space_done(len);
		return rc;
	}
	lock_io_take(in);
	n = file_write_locked(fs, in, off, len, fill, ctx);
	lock_io_drop(in);
	lock_drop(fs, LOCK_DATA);
	data_space_done(len);
	return n;
}

/* ---- reads ---- */

/*
 * Map [off, off+size) to segments.  Under fs->lock, each mapped run's
 * object is pinned (obj_hold); the lock is then dropped to open or check
 * the objects that need it (obj_ready), so a changed origin, a FIFO in its
 * place or a slow host filesystem delays this read only.  The pins last
 * until fs_read_done(), after the reply: a block is never punched, nor an
 * object unlinked, under a read in flight.
 */
int fs_read_map(struct fs *fs, uint64_t ino, off_t off, size_t size,
		struct fs_seg **segsp, int *nsegp)
{
	struct fs_seg *segs = NULL;
	struct object **objs = NULL;
	int nseg = 0, cap = 0, rc = 0;
	struct extent e;
	uint64_t pos, end;
	bool need_ready = false;

	lock_take(fs, LOCK_FS);
	struct inode *in = inode_get(fs, ino);
	if (!in) {
		rc = -ENOENT;
		goto out_unlock;
	}
	if (!S_ISREG(in->mode)) {
		rc = S_ISDIR(in->mode) ? -EISDIR : -EINVAL;
		goto out_unlock;
	}
	pos = (uint64_t)off;
	end = pos + size;
	if (end > in->size)
		end = in->size;
	while (pos < end) {
		uint64_t lblk = pos >> fs->block_shift;
		uint64_t inblk = pos & (fs->block_size - 1);
		int mapped = extmap_lookup(&in->map, lblk, &e);
		uint64_t run = e.len == UINT64_MAX ? UINT64_MAX :
			       (e.len << fs->block_shift) - inblk;
		uint64_t n = run < end - pos ? run : end - pos;
		struct object *o = NULL;

		if (mapped) {
			o = obj_get(fs, e.obj);
			if (!o) {
				fs_log(fs, "error: inode %llu maps missing object %016llx",
				       (unsigned long long)in->ino,
				       (unsigned long long)e.obj);
				rc = -EIO;
				goto out_unlock;
			}
		}
		if (nseg == cap) {
			cap = cap ? cap * 2 : 8;
			struct fs_seg *ns = realloc(segs, (size_t)cap * sizeof(*ns));
			if (!ns) {
				rc = -ENOMEM;
				goto out_unlock;
			}
			segs = ns;
			struct object **no = realloc(objs, (size_t)cap * sizeof(*no));
			if (!no) {
				rc = -ENOMEM;
				goto out_unlock;
			}
			objs = no;
		}
		/* fd -2: obj_ready() gives it once the lock is dropped */
		segs[nseg] = (struct fs_seg){
			.fd = !o ? -1 : obj_hold(fs, o) ? -2 : o->fd,
			.obj = o ? o->id : 0,
			.pos = o ? (off_t)((e.pblk << fs->block_shift) + inblk) : 0,
			.len = (size_t)n,
		};
		objs[nseg] = o;
		need_ready |= segs[nseg].fd == -2;
		nseg++;
		pos += n;
	}
out_unlock:
	lock_drop(fs, LOCK_FS);
	for (int i = 0; !rc && need_ready && i < nseg; i++) {
		if (segs[i].fd != -2)
			continue;
		if (i > 0 && objs[i - 1] == objs[i])
			segs[i].fd = segs[i - 1].fd;
		else if ((segs[i].fd = obj_ready(fs, objs[i])) < 0)
			rc = segs[i].fd;
	}
	if (rc) {
		lock_take(fs, LOCK_FS);
		for (int i = 0; i < nseg; i++)
			if (objs[i])
				obj_unpin(fs, objs[i]);
		lock_drop(fs, LOCK_FS);
		free(segs);
		segs = NULL;
		nseg = 0;
	}
	free(objs);
	*segsp = segs;
	*nsegp = nseg;
	return rc;
}

void fs_read_done(struct fs *fs, struct fs_seg *segs, int nseg)
{
	lock_take(fs, LOCK_FS);
	for (int i = 0; i < nseg; i++) {
		if (segs[i].obj) {
			struct object *o = obj_get(fs, segs[i].obj);
			if (o)
				obj_unpin(fs, o);
		}
	}
	lock_drop(fs, LOCK_FS);
	free(segs);
}

/* ---- truncate, zeroing, fallocate ---- */

/*
 * Make [pos, pos+len) of an object read zeros: punch what the object
 * holds there (the host frees the whole pages) and extend the object to
 * cover the range, which past its end reads zeros and takes no space.
 * Zeros are written only where the host cannot punch.
 */
static ssize_t fill_zero(void *ctx, int fd, off_t pos, size_t len)
{
	static const char zeros[65536];
	off_t end = pos + (off_t)len;
	struct stat st;
	(void)ctx;

	if (fstat(fd, &st) < 0)
		return -errno;
	if (pos < st.st_size) {
		off_t n = (end < st.st_size ? end : st.st_size) - pos;
		if (fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
			      pos, n) < 0) {
			if (errno != EOPNOTSUPP)
				return -errno;
			for (off_t done = 0; done < n;) {
				size_t k = n - done < (off_t)sizeof(zeros) ?
					   (size_t)(n - done) : sizeof(zeros);
				int rc = pwrite_all(fd, zeros, k, pos + done);
				if (rc)
					return rc;
				done += (off_t)k;
			}
		}
	}
	if (end > st.st_size && ftruncate(fd, end) < 0)
		return -errno;
	return (ssize_t)len;
}

/*
 * Make bytes [from, to) of block lblk read as zeros without changing the
 * size.  A hole stays a hole.  Called with fs->lock held (and io_lock);
 * drops and retakes fs->lock around the data I/O.
 */
static int zero_partial(struct fs *fs, struct inode *in, uint64_t lblk,
			uint32_t from, uint32_t to)
{
	struct extent e;
	ssize_t n;

	if (from >= to || !extmap_lookup(&in->map, lblk, &e))
		return 0;
	uint64_t size = in->size;
	unsigned t = lock_fs_suspend(fs);
	n = file_write_locked(fs, in, (off_t)((lblk << fs->block_shift) + from),
			 to - from, fill_zero, NULL);
	lock_fs_resume(fs, t);
	in->size = size;	/* zeroing never grows the file */
	return n < 0 ? (int)n : 0;
}

/*
 * The size is about to grow from 'from' to at least 'to': bytes past EOF
 * in the last block are never trusted (an uncommitted or failed write may
 * have left bytes in the slot), so make [from, to) of that block zeros.
 * fs->lock and io_lock held.
 */
static int zero_gap(struct fs *fs, struct inode *in, uint64_t from, uint64_t to)
{
	uint64_t B = fs->block_size, b = from >> fs->block_shift;
	uint64_t end = (b + 1) << fs->block_shift;

	if (!(from & (B - 1)) || to <= from)
		return 0;
	if (to < end)
		end = to;
	return zero_partial(fs, in, b, (uint32_t)(from & (B - 1)),
			    (uint32_t)(end - (b << fs->block_shift)));
}

static int pt_truncate(struct fs *fs, struct inode *in, uint64_t size);

/* fs->lock and io_lock held. */
int file_truncate(struct fs *fs, struct inode *in, uint64_t size)
{
	int rc = 0;

	if (size > ((uint64_t)1 << 62))
		return -EFBIG;
	if (fs->broken)
		return -EIO;
	if (in->pt)
		return pt_truncate(fs, in, size);
	if (size < in->size) {
		uint64_t B = fs->block_size;
		uint64_t keep = size_blocks(fs, size);
		uint64_t base = size & ~(B - 1);
		/* zeros up to the old EOF only: past it nothing is read, and
		 * zero_gap() zeros it again whenever the file grows */
		uint64_t to = in->size - base < B ? in->size - base : B;
		if (size & (B - 1))
			rc = zero_partial(fs, in, size >> fs->block_shift,
					  (uint32_t)(size & (B - 1)), (uint32_t)to);
		if (!rc)
			rc = punch_and_log(fs, in, keep, UINT64_MAX - keep);
	}
	if (size > in->size)
		rc = zero_gap(fs, in, in->size, size);
	if (!rc) {
		in->size = size;
		inode_dirty(fs, in);
	}
	return rc;
}

struct alloc_run {
	uint64_t b, n;
};

/*
 * fallocate mode 0 (or KEEP_SIZE): give every unmapped block of
 * [first, last] its write-object slot.  fs->lock held; dropped around the
 * host fallocate()s, which may take long.  io_lock held, so the map does
 * not change meanwhile.
 */
static int alloc_range(struct fs *fs, struct inode *in, uint64_t first,
		       uint64_t last)
{
	struct alloc_run *runs = NULL;
	size_t nruns = 0, cap = 0, done = 0;
	struct object *w = NULL;
	struct extent e;
	int rc, wfd;

	if ((rc = ensure_wobj(fs, in, &w)))
		return rc;
	for (uint64_t b = first; b <= last;) {
		int mapped = extmap_lookup(&in->map, b, &e);
		uint64_t n = e.len < last - b + 1 ? e.len : last - b + 1;
		if (!mapped) {
			if (nruns == cap) {
				cap = cap ? cap * 2 : 8;
				struct alloc_run *nr = realloc(runs, cap * sizeof(*nr));
				if (!nr) {
					rc = -ENOMEM;
					goto out_free;
				}
				runs = nr;
			}
			runs[nruns++] = (struct alloc_run){ b, n };
		}
		b += n;
	}
	if (!nruns)
		goto out_free;
	bool ready = !obj_hold(fs, w);
	wfd = w->fd;
	unsigned t = lock_fs_suspend(fs);
	LOCK_ASSERT_UNLOCKED_FS();
	if (!ready && (wfd = obj_ready(fs, w)) < 0)
		rc = wfd;
	for (; !rc && done < nruns; done++) {
		struct alloc_run *r = &runs[done];
		if (fallocate(wfd, 0, (off_t)(r->b << fs->block_shift),
			      (off_t)(r->n << fs->block_shift)) < 0)
			rc = -errno;
		else
			rc = obj_cover(w, wfd, (r->b + r->n) << fs->block_shift);
		if (rc)
			break;
	}
	lock_fs_resume(fs, t);
	/* map what was allocated, even when a later run failed */
	for (size_t i = 0; i < done; i++) {
		int mrc = map_and_log(fs, in, runs[i].b, runs[i].n, w->id,
				      runs[i].b, EXT_NEW);
		if (mrc && !rc)
			rc = mrc;
		if (mrc)
			break;
	}
	if (done)
		obj_mark_dirty(fs, w);
	obj_unpin(fs, w);
out_free:
	free(runs);
	return rc;
}

static int pt_fallocate(struct fs *fs, struct inode *in, int mode,
			uint64_t start, uint64_t end);
static int pt_sync(struct fs *fs, struct inode *in, bool full,
		   uint64_t *blocks);

int fs_fallocate(struct fs *fs, uint64_t ino, int mode, off_t off, off_t len)
{
	int rc = 0;
	struct inode *in;
	uint64_t B = fs->block_size;

	if (fs->opt.ro)
		return -EROFS;
	if (mode & ~(FALLOC_FL_KEEP_SIZE | FALLOC_FL_PUNCH_HOLE | FALLOC_FL_ZERO_RANGE))
		return -EOPNOTSUPP;
	if (off < 0 || len <= 0)
		return -EINVAL;
	lock_take_shared(fs);
	in = get_reg(fs, ino, &rc);
	if (!in) {
		lock_drop(fs, LOCK_DATA);
		return rc;
	}
	lock_io_take(in);
	/* passthrough: the size the kernel made first; a stale one would
	 * cut the file at a grow, or skip a punch past it */
	if ((rc = pt_sync(fs, in, false, NULL))) {
		lock_io_drop(in);
		lock_drop(fs, LOCK_DATA);
		return rc;
	}
	lock_take(fs, LOCK_FS);
	uint64_t start = (uint64_t)off, end = (uint64_t)off + (uint64_t)len;
	if (in->pt) {
		rc = pt_fallocate(fs, in, mode, start, end);
		goto out;
	}
	uint64_t first = start >> fs->block_shift, last = (end - 1) >> fs->block_shift;

	if (fs->broken) {
		rc = -EIO;
	} else if (mode & (FALLOC_FL_PUNCH_HOLE | FALLOC_FL_ZERO_RANGE)) {
		uint32_t lo = (uint32_t)(start & (B - 1));
		uint32_t hi = (uint32_t)((end - 1) & (B - 1)) + 1;
		uint64_t full_first = lo ? first + 1 : first;
		uint64_t full_last1 = hi == B ? last + 1 : last; /* exclusive */
		if (first == last && (lo || hi != B)) {
			rc = zero_partial(fs, in, first, lo, hi);
		} else {
			if (lo)
				rc = zero_partial(fs, in, first, lo, (uint32_t)B);
			if (!rc && hi != B)
				rc = zero_partial(fs, in, last, 0, hi);
			if (!rc && full_last1 > full_first)
				rc = punch_and_log(fs, in, full_first,
						   full_last1 - full_first);
		}
	} else {
		rc = alloc_range(fs, in, first, last);
	}
	if (!rc && !(mode & FALLOC_FL_KEEP_SIZE) && end > in->size) {
		rc = zero_gap(fs, in, in->size, end);
		if (!rc)
			in->size = end;
	}
	if (!rc) {
		unsigned t = IT_BIT(IT_CTIME);
		if (mode & (FALLOC_FL_PUNCH_HOLE | FALLOC_FL_ZERO_RANGE))
			t |= IT_BIT(IT_MTIME);
		inode_touch(in, t, NULL);
		inode_dirty(fs, in);
	}
out:
	lock_drop(fs, LOCK_FS);
	lock_io_drop(in);
	lock_drop(fs, LOCK_DATA);
	return rc;
}

static off_t pt_lseek(struct fs *fs, struct inode *in, off_t off, int whence);

off_t fs_lseek(struct fs *fs, uint64_t ino, off_t off, int whence)
{
	off_t rc;
	struct extent e;

	lock_take(fs, LOCK_FS);
	struct inode *in = inode_get(fs, ino);
	if (!in) {
		rc = -ENOENT;
		goto out;
	}
	if (S_ISREG(in->mode) && in->pt)
		return pt_lseek(fs, in, off, whence);	/* drops fs->lock */
	if (!S_ISREG(in->mode) || off < 0 || (uint64_t)off >= in->size) {
		rc = -ENXIO;
		goto out;
	}
	uint64_t b = (uint64_t)off >> fs->block_shift;
	if (whence == SEEK_DATA) {
		if (extmap_lookup(&in->map, b, &e)) {
			rc = off;
		} else if (e.len == UINT64_MAX ||
			   ((b + e.len) << fs->block_shift) >= in->size) {
			rc = -ENXIO;
		} else {
			rc = (off_t)((b + e.len) << fs->block_shift);
		}
	} else if (whence == SEEK_HOLE) {
		uint64_t pos = b;
		while (extmap_lookup(&in->map, pos, &e))
			pos += e.len;
		uint64_t h = pos << fs->block_shift;
		if (pos == b)
			rc = off;
		else
			rc = (off_t)(h < in->size ? h : in->size);
	} else {
		rc = -EINVAL;
	}
out:
	lock_drop(fs, LOCK_FS);
	return rc;
}

/* ---- copy_file_range: share whole blocks, copy partial ones ---- */

struct seg_fill {
	struct fs_seg *segs;
	int nseg;
};

static ssize_t fill_from_segs(void *ctx, int fd, off_t pos, size_t len)
{
	struct seg_fill *f = ctx;
	size_t done = 0;
	for (int i = 0; i < f->nseg && done < len; i++) {
		struct fs_seg *s = &f->segs[i];
		int rc;
		if (s->fd < 0)
			rc = (int)fill_zero(NULL, fd, pos + (off_t)done, s->len);
		else
			rc = copy_bytes(s->fd, s->pos, fd, pos + (off_t)done,
					s->len, false);
		if (rc < 0)
			return rc;
		done += s->len;
	}
	return (ssize_t)done;
}

/* Copy bytes through the read map and the write path (io_locks held). */
static ssize_t copy_plain(struct fs *fs, struct inode *src, off_t soff,
			  struct inode *dst, off_t doff, size_t len)
{
	struct seg_fill f;
	int rc = fs_read_map(fs, src->ino, soff, len, &f.segs, &f.nseg);
	if (rc)
		return rc;
	size_t got = 0;
	for (int i = 0; i < f.nseg; i++)
		got += f.segs[i].len;
	ssize_t n = got ? file_write_locked(fs, dst, doff, got, fill_from_segs, &f) : 0;
	fs_read_done(fs, f.segs, f.nseg);
	return n;
}

/* Share blocks [sb, sb+n) of src as [db, db+n) of dst.  fs->lock held. */
static int share_blocks(struct fs *fs, struct inode *src, uint64_t sb,
			struct inode *dst, uint64_t db, uint64_t n)
{
	struct extent e;
	int rc = 0;

	for (uint64_t i = 0; i < n && !rc;) {
		int mapped = extmap_lookup(&src->map, sb + i, &e);
		uint64_t k = e.len < n - i ? e.len : n - i;
		if (!mapped) {
			rc = punch_and_log(fs, dst, db + i, k);
		} else {
			if (e.obj == src->wobj)
				file_retire_wobj(fs, src);	/* invariant (1) */
			rc = map_and_log(fs, dst, db + i, k, e.obj, e.pblk, EXT_SHARE);
		}
		i += k;
	}
	return rc;
}

ssize_t fs_copy_range(struct fs *fs, uint64_t ino_in, off_t off_in,
		      uint64_t ino_out, off_t off_out, size_t len)
{
	int rc = 0;
	struct inode *src, *dst;
	uint64_t B = fs->block_size;
	ssize_t total = 0, n;

	if (fs->opt.ro)
		return -EROFS;
	lock_take_shared(fs);
	src = get_reg(fs, ino_in, &rc);
	dst = src ? get_reg(fs, ino_out, &rc) : NULL;
	if (!dst) {
		lock_drop(fs, LOCK_DATA);
		return rc;
	}
	lock_io_take2(src, dst);
	/* A file in passthrough mode: its map first brought up to date, and
	 * bytes copied, never blocks shared (the kernel writes them). */
	if ((rc = file_pt_sync(fs, src, true)) ||
	    (dst != src && (rc = file_pt_sync(fs, dst, true)))) {
		total = rc;
		goto out;
	}
	lock_take(fs, LOCK_FS);
	bool pt = src->pt || dst->pt;
	if ((uint64_t)off_in >= src->size)
		len = 0;
	else if ((uint64_t)off_in + len > src->size)
		len = (size_t)(src->size - (uint64_t)off_in);
	lock_drop(fs, LOCK_FS);

	uint64_t si = (uint64_t)off_in, di = (uint64_t)off_out;
	if ((si & (B - 1)) != (di & (B - 1)) || len < B || src == dst || pt) {
		total = len ? copy_plain(fs, src, off_in, dst, off_out, len) : 0;
		goto out;
	}
	/* head: up to the first block boundary */
	size_t head = (size_t)((B - (si & (B - 1))) & (B - 1));
	if (head) {
		n = copy_plain(fs, src, (off_t)si, dst, (off_t)di, head);
		if (n < 0) {
			total = n;
			goto out;
		}
		total += n;
	}
	uint64_t nblk = (len - head) >> fs->block_shift;
	if (nblk) {
		lock_take(fs, LOCK_FS);
		rc = fs->broken ? -EIO : zero_gap(fs, dst, dst->size, di + head);
		if (!rc)
			rc = share_blocks(fs, src, (si + head) >> fs->block_shift,
					  dst, (di + head) >> fs->block_shift, nblk);
		uint64_t end = di + head + (nblk << fs->block_shift);
		if (!rc) {
			if (end > dst->size)
				dst->size = end;
			inode_touch(dst, IT_BIT(IT_MTIME) | IT_BIT(IT_CTIME),
				    NULL);
			inode_dirty(fs, dst);
		}
		lock_drop(fs, LOCK_FS);
		if (rc) {
			total = total ? total : rc;
			goto out;
		}
		total += (ssize_t)(nblk << fs->block_shift);
	}
	size_t tail = len - head - (size_t)(nblk << fs->block_shift);
	if (tail) {
		n = copy_plain(fs, src, (off_t)(si + (uint64_t)total),
			       dst, (off_t)(di + (uint64_t)total), tail);
		if (n > 0)
			total += n;
	}
out:
	lock_io_drop2(src, dst);
	lock_drop(fs, LOCK_DATA);
	return total;
}

/* ---- FUSE passthrough ---- */

/*
 * A file in passthrough mode has its bytes in its write object at
 * identity offsets (block i at slot i), and the kernel reads and writes
 * that object directly.  The daemon's size and map lag behind what the
 * kernel wrote until file_pt_sync() looks at the object (fstat and
 * SEEK_DATA).  While a file is in this mode nothing daemon-side unmaps a
 * block of it, retires its write object or shares its blocks: truncate
 * keeps the blocks mapped and cuts the object instead, fallocate is
 * refused, copy_file_range and clones copy bytes.
 */

static struct pt_ent *pt_find(struct fs *fs, uint64_t ino)
{
	for (size_t i = 0; i < fs->npt; i++)
		if (fs->pt[i].ino == ino)
			return &fs->pt[i];
	return NULL;
}

static bool ts_eq(struct timespec a, struct timespec b)
{
	return a.tv_sec == b.tv_sec && a.tv_nsec == b.tv_nsec;
}

/*
 * Eligible for passthrough: no plain open, every block in the file's own
 * write object at its own index (so referenced by this file alone,
 * invariant 1), none past the last block (fallocate KEEP_SIZE), or no
 * block at all.  And no setuid, nor setgid with group exec: with
 * HANDLE_KILLPRIV_V2 the kernel leaves clearing them on write to the
 * daemon, and passthrough writes never reach it, so such a file is
 * opened plain.  (One given them while in the mode stays in it: the
 * kernel's empty SETATTR before each write clears them, op_setattr.)
 * fs->lock held.
 */
static bool pt_eligible(struct fs *fs, struct inode *in)
{
	uint64_t nblk = size_blocks(fs, in->size);

	if (in->nopen || mode_kills_sxid(in->mode))
		return false;
	for (size_t k = 0; k < extmap_n(&in->map); k++) {
		const struct extent e = extmap_at(&in->map, k);
		if (e.obj != in->wobj || e.pblk != e.lblk ||
		    e.lblk + e.len > nblk)
			return false;
	}
	return true;
}

/* A read-only open of a smaller file stays plain: the set-up and the
 * release of a passthrough open cost more than its reads save (cat of
 * 3000 small files: 0.09 s plain, 0.31 s in passthrough, page cache warm). */
#define PT_MIN_READ (1u << 20)

int fs_pt_open(struct fs *fs, uint64_t ino, int flags, fs_backing_fn reg,
	       void *ctx, int *backing)
{
	struct object *w;
	struct stat st;
	struct inode *in;
	int rc = 0, fd = -1, b = 0;

	lock_take_shared(fs);
	if (!(in = get_reg(fs, ino, &rc))) {
		lock_drop(fs, LOCK_DATA);
		/* not a regular file: a plain open, as without passthrough */
		return rc == -EINVAL || rc == -EISDIR ? 0 : rc;
	}
	lock_io_take(in);
	lock_take(fs, LOCK_FS);
	if (in->pt) {
		struct pt_ent *pe = pt_find(fs, ino);
		pe->count++;
		in->nopen++;
		fs->pt_opens++;
		*backing = pe->backing;
		rc = 1;
		goto out;
	}
	if (fs->opt.ro || fs->broken ||
	    ((flags & O_ACCMODE) == O_RDONLY && in->size < PT_MIN_READ) ||
	    !pt_eligible(fs, in) || ensure_wobj(fs, in, &w)) {
		in->nopen++;
		goto out;
	}
	uint64_t id = w->id, size = in->size;
	lock_drop(fs, LOCK_FS);
	/* Our own fd: the kernel's backing file and ours stay valid
	 * whatever the fd cache closes.  The object is cut to the size:
	 * the kernel reads up to the object's end, and the bytes past EOF
	 * in the last slot are not to be trusted (zero_gap). */
	fd = store_obj_open(&fs->store, id, 0);
	if (fd < 0 || fstat(fd, &st) < 0 ||
	    ((uint64_t)st.st_size != size && ftruncate(fd, (off_t)size) < 0) ||
	    fstat(fd, &st) < 0)
		b = fd < 0 ? fd : -errno;
	else
		b = reg(ctx, fd);
	lock_take(fs, LOCK_FS);
	in->nopen++;
	if (b <= 0) {
		*backing = b < 0 ? b : -EIO;
		goto out;
	}
	if (fs->npt == fs->cap_pt) {
		size_t cap = fs->cap_pt ? fs->cap_pt * 2 : 16;
		struct pt_ent *n = realloc(fs->pt, cap * sizeof(*n));
		if (!n) {
			*backing = b;	/* the caller closes it: a plain open */
			goto out;
		}
		fs->pt = n;
		fs->cap_pt = cap;
	}
	fs->pt[fs->npt++] = (struct pt_ent){
		.ino = ino, .obj = id, .fd = fd, .backing = b, .count = 1,
		.seen_size = (uint64_t)st.st_size, .seen_mtime = st.st_mtim,
		.seen_ctime = st.st_ctim,
	};
	fd = -1;
	in->pt = 1;
	fs->pt_opens++;
	*backing = b;
	rc = 1;
out:
	lock_drop(fs, LOCK_FS);
	lock_io_drop(in);
	lock_drop(fs, LOCK_DATA);
	if (fd >= 0)
		close(fd);
	return rc;
}

struct pt_run {
	uint64_t first, last;
};

/* The slots of fd that hold data below size, as block runs. */
static int pt_scan(struct fs *fs, int fd, uint64_t size, struct pt_run **out,
		   size_t *nout)
{
	struct pt_run *runs = NULL;
	size_t n = 0, cap = 0;
	uint64_t pos = 0;

	while (pos < size) {
		off_t d = lseek(fd, (off_t)pos, SEEK_DATA);
		if (d < 0 && errno == ENXIO)
			break;
		off_t h = d < 0 ? -1 : lseek(fd, d, SEEK_HOLE);
		if (d < 0 || h < 0) {
			free(runs);
			return -errno;
		}
		if ((uint64_t)d >= size)
			break;
		if ((uint64_t)h > size)
			h = (off_t)size;
		uint64_t first = (uint64_t)d >> fs->block_shift;
		uint64_t last = ((uint64_t)h - 1) >> fs->block_shift;
		if (n && runs[n - 1].last + 1 >= first) {
			runs[n - 1].last = last;
		} else {
			if (n == cap) {
				cap = cap ? cap * 2 : 8;
				struct pt_run *r = realloc(runs, cap * sizeof(*r));
				if (!r) {
					free(runs);
					return -ENOMEM;
				}
				runs = r;
			}
			runs[n++] = (struct pt_run){ first, last };
		}
		pos = (uint64_t)h;
	}
	*out = runs;
	*nout = n;
	return 0;
}

int file_pt_sync(struct fs *fs, struct inode *in, bool full)
{
	return pt_sync(fs, in, full, NULL);
}

/*
 * The coarsest timestamp tick we allow for on the store's filesystem (1 s:
 * ext2 and ext3 with 128-byte inodes), plus the lag of the kernel's coarse
 * clock behind CLOCK_REALTIME.  A write in the same tick as a scan can
 * leave size, mtime and ctime as that scan saw them; so the key is
 * trusted only once the ctime it saw is older than the scan by this much.
 */
#define PT_TICK_NS 2000000000LL

static int64_t ts_ns(struct timespec t)
{
	return (int64_t)t.tv_sec * 1000000000LL + t.tv_nsec;
}

/*
 * Map what the kernel wrote and take the size and times from the object.
 * full: always scan (fsync, the last release, clone, copy_file_range, du,
 * df); else only when the object's size, mtime or ctime moved since the
 * last scan or that scan was too recent to trust them (GETATTR, SETATTR).
 * A pending cut (fs_pt_setattr_done) caps the size: the kernel's size is
 * the shrunk one; the object is cut only after the commit.
 * blocks: the object's st_blocks, if in is in passthrough mode.  io_lock
 * held.
 */
static int pt_sync(struct fs *fs, struct inode *in, bool full,
		   uint64_t *blocks)
{
	struct pt_run *runs = NULL;
	size_t nruns = 0;
	struct timespec now;
	struct stat st;
	struct pt_ent *pe;
	int fd, rc = 0;

	lock_take(fs, LOCK_FS);
	if (!in->pt || !(pe = pt_find(fs, in->ino))) {
		lock_drop(fs, LOCK_FS);
		return 0;
	}
	fd = pe->fd;
	lock_drop(fs, LOCK_FS);

	/* before the fstat: a write after it has a ctime past now - tick */
	clock_gettime(CLOCK_REALTIME, &now);
	if (fstat(fd, &st) < 0)
		return -errno;
	if (blocks)
		*blocks = (uint64_t)st.st_blocks;
	lock_take(fs, LOCK_FS);
	pe = pt_find(fs, in->ino);
	uint64_t size = (uint64_t)st.st_size;
	if (pe->trunc_pending && pe->trunc_size < size)
		size = pe->trunc_size;
	bool moved = (uint64_t)st.st_size != pe->seen_size ||
		     !ts_eq(st.st_mtim, pe->seen_mtime) ||
		     !ts_eq(st.st_ctim, pe->seen_ctime);
	bool scan = full || moved || !pe->settled;
	lock_drop(fs, LOCK_FS);
	if (!scan)
		return 0;
	if ((rc = pt_scan(fs, fd, size, &runs, &nruns)))
		return rc;

	lock_take(fs, LOCK_FS);
	pe = pt_find(fs, in->ino);
	struct object *w = obj_get(fs, pe->obj);
	if (in->wobj != pe->obj || !w) {
		fs_log(fs, "error: inode %llu: passthrough object %016llx is "
		       "not its write object", (unsigned long long)in->ino,
		       (unsigned long long)pe->obj);
		rc = -EIO;
	}
	for (size_t i = 0; i < nruns && !rc; i++)
		rc = map_to_wobj(fs, in, runs[i].first, runs[i].last);
	if (!rc && (moved || in->size != size)) {
		in->size = size;
		if (w->len < in->size)
			w->len = in->size;
		inode_set_time(in, IT_MTIME, st.st_mtim);
		inode_set_time(in, IT_CTIME, st.st_ctim);
		inode_dirty(fs, in);
	}
	if (!rc) {
		pe->seen_size = (uint64_t)st.st_size;
		pe->seen_mtime = st.st_mtim;
		pe->seen_ctime = st.st_ctim;
		pe->settled = ts_ns(st.st_ctim) + PT_TICK_NS < ts_ns(now);
		obj_mark_dirty(fs, w);	/* its data synced at the commit */
	}
	lock_drop(fs, LOCK_FS);
	free(runs);
	return rc;
}

/* fsync: a full scan (pt_sync) */
int fs_pt_sync(struct fs *fs, uint64_t ino, int fsync, uint64_t *blocks)
{
	struct inode *in;
	int rc = 0;

	/* Every GETATTR of a passthrough connection comes here: no lock
	 * while no file is in the mode (one entering it has not had its
	 * open answered yet, so the kernel wrote nothing to it). */
	if (!__atomic_load_n(&fs->npt, __ATOMIC_RELAXED))
		return 0;

	lock_take_shared(fs);
	if (!(in = get_reg(fs, ino, &rc))) {
		lock_drop(fs, LOCK_DATA);
		return 0;	/* the operation itself answers */
	}
	lock_io_take(in);
	rc = pt_sync(fs, in, fsync != 0, blocks);
	lock_io_drop(in);
	lock_drop(fs, LOCK_DATA);
	return rc;
}

/*
 * Truncate in passthrough mode.  fs->lock and io_lock held.  No block is
 * unmapped (a freed slot would be punched after the commit, and the
 * kernel may write it again meanwhile): a shrink keeps the blocks past
 * the new end mapped (as fallocate KEEP_SIZE does) and the object is cut
 * once the new size is committed (fs_pt_setattr_done); a grow extends
 * the object, whose new bytes read zeros.  Either way the size, times
 * and count are noted in pe for fs_pt_setattr_done, which op_setattr
 * always calls after: it finishes the SETATTR, or undoes this step if
 * the SETATTR failed.  The SETATTR holds one of pe->count meanwhile, so
 * that a last release in between does not leave the mode with a size
 * that may yet be undone.  (The kernel holds the inode lock for a size
 * SETATTR until its reply: one at a time per file.)
 */
static int pt_truncate(struct fs *fs, struct inode *in, uint64_t size)
{
	struct pt_ent *pe = pt_find(fs, in->ino);
	int rc = 0;

	if (!pe || pe->trunc_pending)
		return -EIO;
	pe->trunc_pending = true;
	pe->trunc_from = in->size;
	pe->trunc_size = size;
	pe->trunc_mtime = inode_mtime(in);
	pe->trunc_ctime = inode_ctime(in);
	pe->count++;
	if (size > in->size) {
		int fd = pe->fd;
		unsigned t = lock_fs_suspend(fs);
		if (ftruncate(fd, (off_t)size) < 0)
			rc = -errno;
		lock_fs_resume(fs, t);
	}
	if (!rc) {
		in->size = size;
		inode_dirty(fs, in);
	}
	return rc;
}

/*
 * fallocate in passthrough mode, on the object itself, with no map
 * change: a punched or zeroed range stays mapped and reads zeros (the
 * hole is in the object), an allocated one is reserved in the object
 * and mapped when data lands there (file_pt_sync).  fs->lock and io_lock
 * held.
 */
static int pt_fallocate(struct fs *fs, struct inode *in, int mode,
			uint64_t start, uint64_t end)
{
	struct pt_ent *pe = pt_find(fs, in->ino);
	uint64_t size = in->size, to = end < size ? end : size;
	bool grow = !(mode & FALLOC_FL_KEEP_SIZE) && end > size;
	int rc = 0, fd;

	if (!pe || fs->broken)
		return -EIO;
	fd = pe->fd;
	unsigned t = lock_fs_suspend(fs);
	if (mode & (FALLOC_FL_PUNCH_HOLE | FALLOC_FL_ZERO_RANGE)) {
		if (start < to &&
		    fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
			      (off_t)start, (off_t)(to - start)) < 0)
			rc = -errno;
	} else if (fallocate(fd, FALLOC_FL_KEEP_SIZE, (off_t)start,
			     (off_t)(end - start)) < 0) {
		rc = -errno;
	}
	if (!rc && grow && ftruncate(fd, (off_t)end) < 0)
		rc = -errno;
	lock_fs_resume(fs, t);
	if (rc)
		return rc;
	if (grow)
		in->size = end;
	unsigned tm = IT_BIT(IT_CTIME);
	if (mode & (FALLOC_FL_PUNCH_HOLE | FALLOC_FL_ZERO_RANGE))
		tm |= IT_BIT(IT_MTIME);
	inode_touch(in, tm, NULL);
	inode_dirty(fs, in);
	return 0;
}

/* SEEK_DATA/SEEK_HOLE in passthrough mode: the object's own, exact
 * (the kernel writes it; a punched range is a hole there while it stays
 * mapped).  Called with fs->lock held; drops it. */
static off_t pt_lseek(struct fs *fs, struct inode *in, off_t off, int whence)
{
	struct pt_ent *pe = pt_find(fs, in->ino);
	int fd = pe ? dup(pe->fd) : -1;	/* pt_leave may close pe->fd */
	off_t rc;

	lock_drop(fs, LOCK_FS);
	if (fd < 0)
		return -EIO;
	if (whence != SEEK_DATA && whence != SEEK_HOLE)
		rc = -EINVAL;
	else if ((rc = lseek(fd, off, whence)) < 0)	/* not SEEK_CUR: the */
		rc = -errno;		/* offset is shared with pt_scan's */
	close(fd);
	return rc;
}

static int pt_leave(struct fs *fs, struct inode *in);

/*
 * Undo pt_truncate: the SETATTR failed, and the kernel keeps the size it
 * had.  The old size and times back; a grown object cut back (the kernel
 * wrote nothing past its own size meanwhile: it holds the inode lock)
 * and its key taken again, so that the cut is not taken for a write.  A
 * shrink's object was not cut yet.  fs->lock and io_lock held; fs->lock
 * dropped around the syscalls.
 */
static int pt_undo(struct fs *fs, struct inode *in, struct pt_ent *pe)
{
	uint64_t from = pe->trunc_from;
	int fd = pe->fd, rc = 0;
	struct stat st;

	in->size = from;
	inode_set_time(in, IT_MTIME, pe->trunc_mtime);
	inode_set_time(in, IT_CTIME, pe->trunc_ctime);
	inode_dirty(fs, in);
	if (pe->trunc_size <= from)
		return 0;
	unsigned t = lock_fs_suspend(fs);
	if (fstat(fd, &st) < 0 ||
	    ((uint64_t)st.st_size > from && (ftruncate(fd, (off_t)from) < 0 ||
					     fstat(fd, &st) < 0)))
		rc = -errno;
	lock_fs_resume(fs, t);
	pe = pt_find(fs, in->ino);
	if (!rc) {
		pe->seen_size = (uint64_t)st.st_size;
		pe->seen_mtime = st.st_mtim;
		pe->seen_ctime = st.st_ctim;
		pe->settled = false;
	}
	return rc;
}

/*
 * After a SETATTR that changed the size of a file in passthrough mode
 * (pt_truncate), before its reply: the kernel holds the inode lock, so it
 * writes nothing meanwhile.  rc: the SETATTR's result so far.  A shrink
 * that succeeded is committed, then the object is cut: only here, as a
 * cut before the commit would leave, after a crash, a committed map past
 * the object's end with the old size.  If anything failed (rc, the
 * commit, the cut), nothing is left changed (pt_undo): the SETATTR fails
 * and the kernel keeps the old size, and so does the daemon.  Then the
 * SETATTR's count is dropped: if the last release came meanwhile, the
 * file leaves the mode now, with the size settled, and *backing is to be
 * closed (returned through it as for fs_pt_release, else left alone).
 */
int fs_pt_setattr_done(struct fs *fs, uint64_t ino, int rc, int *backing)
{
	struct pt_ent *pe;
	struct inode *in;
	int e = 0;

	lock_take(fs, LOCK_FS);
	in = inode_get(fs, ino);
	pe = in && in->pt ? pt_find(fs, ino) : NULL;
	bool pending = pe && pe->trunc_pending;
	bool shrink = pending && pe->trunc_size < pe->trunc_from;
	lock_drop(fs, LOCK_FS);
	if (!pending)
		return rc;	/* not in the mode, or failed before pt_truncate */
	if (!rc && shrink)
		rc = journal_commit(fs);	/* no lock of ours held */

	lock_take_shared(fs);
	if (!(in = get_reg(fs, ino, &e))) {	/* cannot be: the kernel */
		lock_drop(fs, LOCK_DATA);	/* holds the inode */
		return rc ? rc : e;
	}
	lock_io_take(in);
	lock_take(fs, LOCK_FS);
	pe = in->pt ? pt_find(fs, ino) : NULL;	/* our count kept it in */
	if (!pe) {					/* the mode: cannot be */
		lock_drop(fs, LOCK_FS);
		lock_io_drop(in);
		lock_drop(fs, LOCK_DATA);
		return rc ? rc : -EIO;
	}
	if (!rc && shrink) {
		int fd = pe->fd;
		uint64_t size = pe->trunc_size;
		lock_drop(fs, LOCK_FS);
		if (ftruncate(fd, (off_t)size) < 0) {
			rc = -errno;
			fs_log(fs, "error: inode %llu: passthrough cut: %s",
			       (unsigned long long)ino, strerror(-rc));
		}
		lock_take(fs, LOCK_FS);
		pe = pt_find(fs, ino);
	}
	if (rc && (e = pt_undo(fs, in, pe)))
		fs_log(fs, "error: inode %llu: passthrough size undo: %s",
		       (unsigned long long)ino, strerror(-e));
	pe = pt_find(fs, ino);
	pe->trunc_pending = false;
	bool last = --pe->count == 0;
	if (last)
		*backing = pe->backing;
	lock_drop(fs, LOCK_FS);
	if (last && (e = pt_leave(fs, in)))
		fs_log(fs, "error: inode %llu: leaving passthrough: %s",
		       (unsigned long long)ino, strerror(-e));
	if (!rc && !last)
		(void)pt_sync(fs, in, false, NULL);	/* the new key; a
							 * failure only
							 * rescans later */
	lock_io_drop(in);
	lock_drop(fs, LOCK_DATA);
	return rc;
}

/* The kernel no longer has the file open for passthrough: back to a
 * plain file.  Blocks past the end that a shrink kept are unmapped now,
 * the normal way (the write object retires).  io_lock held; takes
 * fs->lock. */
static int pt_leave(struct fs *fs, struct inode *in)
{
	struct pt_run *runs = NULL;
	size_t nruns = 0;
	int rc = file_pt_sync(fs, in, true);

	lock_take(fs, LOCK_FS);
	struct pt_ent *pe = pt_find(fs, in->ino);
	int fd = pe->fd;
	uint64_t size = in->size;
	lock_drop(fs, LOCK_FS);
	if (!rc)
		rc = pt_scan(fs, fd, size, &runs, &nruns);
	lock_take(fs, LOCK_FS);
	pe = pt_find(fs, in->ino);
	/* mapped blocks that are holes in the object (punched) or past the
	 * end (a shrink): unmapped now */
	uint64_t from = 0;
	for (size_t i = 0; !rc && i <= nruns; i++) {
		uint64_t to = i < nruns ? runs[i].first : UINT64_MAX;
		struct extent e;
		for (uint64_t b = from; !rc && b < to;) {
			int mapped = extmap_lookup(&in->map, b, &e);
			uint64_t n = e.len < to - b ? e.len : to - b;
			if (mapped)
				rc = punch_and_log(fs, in, b, n);
			if (e.len == UINT64_MAX)
				break;
			b += n;
		}
		if (i < nruns)
			from = runs[i].last + 1;
	}
	free(runs);
	/* What the kernel wrote may be unmapped, or mapped blocks left
	 * past the end: the object must not be written in place again. */
	if (rc)
		file_retire_wobj(fs, in);
	in->pt = 0;
	*pe = fs->pt[--fs->npt];
	lock_drop(fs, LOCK_FS);
	close(fd);
	return rc;
}

int fs_pt_release(struct fs *fs, uint64_t ino, int pt, int *backing)
{
	struct inode *in;
	int rc = 0;

	if (!pt)
		return 0;
	lock_take_shared(fs);
	if (!(in = get_reg(fs, ino, &rc))) {
		lock_drop(fs, LOCK_DATA);
		return 0;
	}
	lock_io_take(in);
	lock_take(fs, LOCK_FS);
	struct pt_ent *pe = in->pt ? pt_find(fs, ino) : NULL;
	if (pe && --pe->count == 0) {
		*backing = pe->backing;
		rc = 1;
	}
	lock_drop(fs, LOCK_FS);
	if (rc == 1) {
		int e = pt_leave(fs, in);
		if (e)
			fs_log(fs, "error: inode %llu: leaving passthrough: %s",
			       (unsigned long long)ino, strerror(-e));
	}
	lock_io_drop(in);
	lock_drop(fs, LOCK_DATA);
	return rc;
}

void file_pt_sync_all(struct fs *fs)
{
	uint64_t *inos = NULL;
	size_t n = 0;

	lock_take(fs, LOCK_FS);
	if (fs->npt && (inos = malloc(fs->npt * sizeof(*inos))))
		for (n = 0; n < fs->npt; n++)
			inos[n] = fs->pt[n].ino;
	lock_drop(fs, LOCK_FS);
	for (size_t i = 0; i < n; i++) {
		lock_take(fs, LOCK_FS);
		struct inode *in = inode_get(fs, inos[i]);
		lock_drop(fs, LOCK_FS);
		int rc = in ? file_pt_sync(fs, in, true) : 0;
		if (rc)
			fs_log(fs, "error: inode %llu: passthrough sync: %s",
			       (unsigned long long)inos[i], strerror(-rc));
	}
	free(inos);
}

void fs_pt_release_all(struct fs *fs)
{
	lock_take(fs, LOCK_DATA);
	for (;;) {
		lock_take(fs, LOCK_FS);
		struct inode *in = fs->npt ? inode_get(fs, fs->pt[0].ino) : NULL;
		if (in && in->nopen >= fs->pt[0].count)
			in->nopen -= fs->pt[0].count;
		lock_drop(fs, LOCK_FS);
		if (!in)
			break;
		pt_leave(fs, in);
	}
	lock_take(fs, LOCK_FS);
	free(fs->pt);
	fs->pt = NULL;
	fs->npt = fs->cap_pt = 0;
	lock_drop(fs, LOCK_FS);
	lock_drop(fs, LOCK_DATA);
}

/*
 * dst was just cloned from src, which is in passthrough mode, and shares
 * its blocks: give dst an object of its own with a copy of the bytes and
 * map it there.  The kernel may write src's blocks at any time, so they
 * are never shared.  fs->lock and data_lock exclusive held; the object
 * file is created and filled without dropping fs->lock, so that no
 * commit falls between the clone's record and these (a clone of a file
 * in passthrough mode is rare; it costs the copy).
 */
int file_pt_unshare(struct fs *fs, struct inode *src, struct inode *dst)
{
	struct pt_ent *pe = pt_find(fs, src->ino);
	struct extent *ev;
	struct object *w;
	size_t n;
	uint64_t size = dst->size, id, nblk = size_blocks(fs, size);
	int rc = 0, dfd;

	if (!pe || dst->wobj)
		return -EIO;
	/* Nothing past the last block: a shrink keeps src's blocks mapped
	 * there until its last release; the copy has no bytes for them
	 * (its object ends at the size) and must not share them. */
	if (maps_from(&dst->map, nblk) &&
	    (rc = punch_and_log(fs, dst, nblk, UINT64_MAX - nblk)))
		return rc;
	if ((n = extmap_n(&dst->map)) == 0)
		return 0;
	/* a copy of the map: dst's own is rewritten below */
	if (!(ev = malloc(n * sizeof(*ev))))
		return -ENOMEM;
	for (size_t i = 0; i < n; i++)
		ev[i] = extmap_at(&dst->map, i);
	id = fs->next_obj++;
	if ((dfd = store_obj_open(&fs->store, id, 1)) < 0) {
		free(ev);
		return dfd;
	}
	for (size_t i = 0; i < n && !rc; i++) {
		uint64_t from = ev[i].lblk << fs->block_shift;
		uint64_t end = (ev[i].lblk + ev[i].len) << fs->block_shift;
		if (end > size)
			end = size;
		if (from < end)
			rc = copy_bytes(pe->fd, (off_t)(ev[i].pblk << fs->block_shift),
					dfd, (off_t)from, end - from, true);
	}
	close(dfd);
	if (!rc && !(w = obj_new(fs, id, dst->ino)))
		rc = -ENOMEM;
	if (rc) {
		store_obj_unlink(&fs->store, id);
		free(ev);
		return rc;
	}
	dst->wobj = id;
	inode_dirty(fs, dst);
	for (size_t i = 0; i < n && !rc; i++)
		rc = map_and_log(fs, dst, ev[i].lblk, ev[i].len, id,
				 ev[i].lblk, EXT_NEW);
	obj_mark_dirty(fs, w);
	free(ev);
	return rc;
}
