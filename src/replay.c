/*
 * replay.c - the replay dispatch: applies one record read from the
 * metadata file (checkpoint or journal) to the in-memory state.
 *
 * It sits above the modules whose state it rebuilds (namespace in fs.c,
 * extent maps in file.c, objects in object.c, clones in clone.c, origins
 * in origin.c) and below super.c, which hands it to journal_load() as a
 * callback: the journal module decodes and checks the metadata file and
 * never calls up into the modules that log to it.
 *
 * Owns nothing: every record changes state owned by another module.  Runs
 * single-threaded while a store is opened (fs->replaying set), or under
 * fs->lock for a clone replayed by fs_clone's own code path.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "cowfs/fs_impl.h"
#include "cowfs/object.h"

static int apply_inode(struct fs *fs, const struct rec *r)
{
	struct inode *in = inode_get(fs, r->u.inode.ino);

	if (!in) {
		if (r->u.inode.ino == 0)
			return -EINVAL;
		in = inode_new(fs, r->u.inode.ino);
		if (!in)
			return -ENOMEM;
	} else if ((in->mode & S_IFMT) != (r->u.inode.mode & S_IFMT)) {
		return -EINVAL;
	}
	in->size = r->u.inode.size;
	if (S_ISDIR(r->u.inode.mode)) {
		if (inode_make_dir(in, r->u.inode.parent))
			return -ENOMEM;
		if (r->u.inode.next_cookie > in->dir->next_cookie)
			in->dir->next_cookie = r->u.inode.next_cookie;
	}
	in->mode = r->u.inode.mode;
	in->uid = r->u.inode.uid;
	in->gid = r->u.inode.gid;
	in->nlink = r->u.inode.nlink;
	in->flags = r->u.inode.flags;
	/* after the mode: rdev shares storage with a symlink's target */
	inode_set_rdev(in, r->u.inode.rdev);
	inode_set_time(in, IT_ATIME, (struct timespec){ r->u.inode.atime_sec,
							r->u.inode.atime_nsec });
	inode_set_time(in, IT_MTIME, (struct timespec){ r->u.inode.mtime_sec,
							r->u.inode.mtime_nsec });
	inode_set_time(in, IT_CTIME, (struct timespec){ r->u.inode.ctime_sec,
							r->u.inode.ctime_nsec });
	inode_set_time(in, IT_BTIME, (struct timespec){ r->u.inode.btime_sec,
							r->u.inode.btime_nsec });
	if (S_ISLNK(in->mode) && !in->target) {
		in->target = strndup(r->data ? r->data : "", r->data_len);
		if (!in->target)
			return -ENOMEM;
	}
	if (S_ISREG(in->mode) && r->u.inode.wobj != in->wobj) {
		file_retire_wobj(fs, in);
		if (r->u.inode.wobj) {
			struct object *o = obj_get(fs, r->u.inode.wobj);
			if (!o)
				o = obj_new(fs, r->u.inode.wobj, in->ino);
			if (!o)
				return -ENOMEM;
			if (o->origin)
				return -EINVAL;	/* an origin is never written */
			o->owner = in->ino;
			in->wobj = o->id;
		}
	}
	return 0;
}

/* Likewise a checkpoint gives each directory's entries together: when the
 * next directory's start, the last one is whole; its arrays are cut to
 * size (what is cut is reused by the next one's). */
static void dir_load_next(struct fs *fs, uint64_t next)
{
	struct inode *last = inode_get(fs, fs->dir_load_last);

	if (last) {
		dir_trim(last);
		dir_pool_share(fs->dir_pool, last);
	}
	fs->dir_load_last = next;
}

static int apply_dirent(struct fs *fs, const struct rec *r)
{
	struct inode *dir = inode_get(fs, r->u.dirent.parent);
	char name[COWFS_NAME_MAX + 1];
	int rc;

	if (!dir || !S_ISDIR(dir->mode))
		return -EINVAL;
	if ((rc = fs_name_check(r->name, r->name_len)))
		return rc == -ENAMETOOLONG ? -EINVAL : rc;
	memcpy(name, r->name, r->name_len);
	name[r->name_len] = 0;
	if (r->type == REC_DIRENT_ADD) {
		if (!inode_get(fs, r->u.dirent.ino))
			return -EINVAL;
		if (fs->ext_pool && dir->ino != fs->dir_load_last)
			dir_load_next(fs, dir->ino);
		return dir_add(fs, dir, name, r->u.dirent.ino, r->u.dirent.cookie);
	}
	struct dent *d = dir_find(dir, name);
	if (!d)
		return -EINVAL;
	dir_del(fs, dir, d);
	return 0;
}

static int apply_xattr(struct fs *fs, const struct rec *r)
{
	struct inode *in = inode_get(fs, r->u.xattr.ino);
	char *name;
	int rc;

	if (!in)
		return -EINVAL;
	name = strndup(r->name, r->name_len);
	if (!name)
		return -ENOMEM;
	if (r->type == REC_XATTR_SET)
		rc = xattr_set(in, name, r->data, r->data_len);
	else
		rc = xattr_del(in, name) ? -EINVAL : 0;
	free(name);
	return rc;
}

/*
 * A checkpoint gives each file's extents together, file after file: when
 * the next file's start, the last one's map is whole and may share an
 * equal one's array (clones' maps are equal).  Done then, not after the
 * load, so that the copy freed is reused by the next file's map.
 */
static void pool_last(struct fs *fs, uint64_t next)
{
	struct inode *last = inode_get(fs, fs->ext_pool_last);

	if (last && S_ISREG(last->mode))
		extmap_pool_share(fs->ext_pool, &last->map);
	fs->ext_pool_last = next;
}

void replay_checkpoint_loaded(struct fs *fs)
{
	if (fs->ext_pool) {
		pool_last(fs, 0);
		dir_load_next(fs, 0);
		extmap_pool_free(fs->ext_pool);
		fs->ext_pool = NULL;
		dir_pool_free(fs->dir_pool);
		fs->dir_pool = NULL;
	}
	file_compute_nlive(fs);
}

/* Apply one record read from the metadata file.  -EINVAL: it does not fit
 * the state (corruption). */
int apply_rec(struct fs *fs, const struct rec *r)
{
	struct inode *in;

	switch (r->type) {
	case REC_SUPER:
		fs->next_ino = r->u.super.next_ino;
		fs->next_obj = r->u.super.next_obj;
		return 0;
	case REC_COMMIT:
		fs->opath_load = NULL;	/* origin paths restart per batch */
		if (r->u.commit.next_ino > fs->next_ino)
			fs->next_ino = r->u.commit.next_ino;
		if (r->u.commit.next_obj > fs->next_obj)
			fs->next_obj = r->u.commit.next_obj;
		fs->commit_seq = r->u.commit.seq;
		return 0;
	case REC_INODE:
		return apply_inode(fs, r);
	case REC_INODE_DEL:
		in = inode_get(fs, r->u.del.ino);
		if (!in || in->ino == FS_ROOT_INO)
			return -EINVAL;
		inode_free(fs, in);
		return 0;
	case REC_DIRENT_ADD:
	case REC_DIRENT_DEL:
		return apply_dirent(fs, r);
	case REC_XATTR_SET:
	case REC_XATTR_DEL:
		return apply_xattr(fs, r);
	case REC_EXT_SET:
	case REC_EXT_PUNCH:
		in = inode_get(fs, r->u.ext.ino);
		if (!in || !S_ISREG(in->mode) || r->u.ext.len == 0 ||
		    r->u.ext.lblk + r->u.ext.len < r->u.ext.lblk)
			return -EINVAL;
		if (fs->ext_pool && in->ino != fs->ext_pool_last)
			pool_last(fs, in->ino);
		if (r->type == REC_EXT_PUNCH)
			return file_map_punch(fs, in, r->u.ext.lblk, r->u.ext.len);
		if (r->u.ext.obj == 0)
			return -EINVAL;
		return file_map_set(fs, in, r->u.ext.lblk, r->u.ext.len,
				    r->u.ext.obj, r->u.ext.pblk, r->flags);
	case REC_CLONE:
		return clone_apply(fs, r);
	case REC_ORIGIN:
		return origin_apply(fs, r);
	case REC_REFCNT:
		if (r->u.refcnt.count < 2 || r->u.refcnt.obj == 0)
			return -EINVAL;
		for (uint64_t i = 0; i < r->u.refcnt.len; i++)
			if (refcount_set(&fs->rc, r->u.refcnt.obj,
					 r->u.refcnt.pblk + i, r->u.refcnt.count))
				return -ENOMEM;
		return 0;
	default:
		return -EINVAL;
	}
}
