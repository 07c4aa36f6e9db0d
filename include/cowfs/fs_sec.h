/*
 * fs_sec.h - the core's security helpers, shared by fs.c, clone.c and
 * origin.c: permission checks as the kernel's default_permissions makes
 * them (mode bits, POSIX ACLs, supplementary groups), the search check
 * on a directory's chain of ancestors, the host filesystems a clone by
 * reference refuses, and journal marks that let a multi-record operation
 * take back what it logged when a later step fails.
 * Nothing outside the core includes this header.
 */
#ifndef COWFS_FS_SEC_H
#define COWFS_FS_SEC_H

#include "cowfs/fs_impl.h"

enum fs_may {
	MAY_X = 1,
	MAY_W = 2,
	MAY_R = 4,
};

/* fs.c, fs->lock held.  0 when the caller may reach directory dir by a
 * path from the root: search (x) permission on dir and every ancestor up
 * to the root, through the parent pointers.  -EACCES when not, -ENOENT
 * when the chain is broken (an unlinked directory), -EIO when it loops. */
int fs_may_reach(struct fs *fs, const struct fs_ctx *c, struct inode *dir);
/* fs.c, fs->lock held.  0 when the caller may make an entry name (NULL:
 * any) in dir: a live directory it can reach, with write and search
 * permission on it, and no entry of that name yet.  -ENOENT, -ENOTDIR,
 * -EACCES or -EEXIST, permissions before the name (no probing). */
int fs_may_create_in(struct fs *fs, const struct fs_ctx *c, struct inode *dir,
		     const char *name);

/*
 * Host filesystems a clone by reference refuses (origin.c): 0 when the
 * filesystem of fd may be an origin; -EXDEV for FUSE (another cowfs mount
 * included: clones share blocks only within one store) and -EOPNOTSUPP
 * for pseudo filesystems (procfs, sysfs, ...), whose "files" are views of
 * the kernel or of processes, not data.  *what names it for the log.
 */
int origin_fs_refused(int fd, const char **what);

/*
 * A journal mark: where the uncommitted batch ends.  fs->lock held from
 * jmark_save() to jmark_restore().  Restoring drops every record logged
 * since the mark, so an operation whose later step fails leaves no trace
 * in the journal (its in-memory changes are the caller's to undo).  An
 * EXT_SET logged after the mark never extends a record before it: the
 * operations that use marks log another record first.
 */
struct jmark {
	size_t jlen, jrecs;
	const struct object *opath_prev;
};

static inline void jmark_save(const struct fs *fs, struct jmark *m)
{
	m->jlen = fs->jlen;
	m->jrecs = fs->jrecs;
	m->opath_prev = fs->opath_prev;
}

static inline void jmark_restore(struct fs *fs, const struct jmark *m)
{
	if (fs->jlen < m->jlen)
		return;		/* a commit took the batch meanwhile: cannot be */
	fs->jlen = m->jlen;
	fs->jrecs = m->jrecs;
	fs->ext_coalesce = 0;
	fs->opath_prev = m->opath_prev;
}

#endif
