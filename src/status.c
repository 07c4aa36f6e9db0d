/*
 * status.c - 'cowfs status': the daemon's own facts (pid, uptime, where
 * it logs) and a store summary that df does not give: inodes, files that
 * share blocks, and the host bytes the store's objects really take
 * (st_blocks, which a sparse object or a punched hole makes smaller than
 * its length).  One daemon serves one store per process, so the daemon
 * facts are kept here in statics, set once before serving.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "cowfs/fs_impl.h"
#include "cowfs/status.h"

static char status_log[1024];
static struct timespec status_start;

void fs_status_daemon(const char *log_target)
{
	snprintf(status_log, sizeof(status_log), "%s", log_target);
	clock_gettime(CLOCK_MONOTONIC, &status_start);
}

/* Does a regular file reference a block another file references too, or
 * read from an origin?  With fs->lock held. */
static int file_shares(struct fs *fs, const struct inode *in)
{
	for (size_t i = 0; i < extmap_n(&in->map); i++) {
		const struct extent ev = extmap_at(&in->map, i), *e = &ev;
		struct object *o = obj_get(fs, e->obj);
		if (o && o->origin)
			return 1;
		if (e->obj == in->wobj)	/* invariant (1): private */
			continue;
		for (uint64_t b = 0; b < e->len; b++)
			if (refcount_get(&fs->rc, e->obj, e->pblk + b) >= 2)
				return 1;
	}
	return 0;
}

int fs_status(struct fs *fs, struct cowfs_ioc_status *out)
{
	struct fs_usage u;
	struct timespec now;
	struct inode *in;
	struct object *o;
	char *origin = NULL;
	struct stat st;
	int rc;

	memset(out, 0, sizeof(*out));
	rc = fs_df(fs, &u);
	if (rc)
		return rc;
	out->pid = (uint64_t)getpid();
	clock_gettime(CLOCK_MONOTONIC, &now);
	if (status_start.tv_sec)
		out->uptime_ns = (uint64_t)(now.tv_sec - status_start.tv_sec) *
				 1000000000ull + (uint64_t)now.tv_nsec -
				 (uint64_t)status_start.tv_nsec;
	out->block_size = fs->block_size;
	out->logical = u.logical;
	out->physical = u.exclusive;	/* df: every referenced block once */
	out->shared = u.shared;
	out->origin = u.origin;
	out->files = u.files;
	out->dirs = u.dirs;
	out->other = u.other;
	out->ro = fs->opt.ro ? 1 : 0;
	snprintf(out->store, sizeof(out->store), "%s", fs->store.path);
	snprintf(out->log, sizeof(out->log), "%s", status_log);
	if (fs_origin_root(fs, &origin) == 0) {
		snprintf(out->origin_dir, sizeof(out->origin_dir), "%s", origin);
		free(origin);
	}

	out->objects = u.objects;
	out->host_bytes = u.host;	/* statted by fs_df() outside the lock */
	lock_take(fs, LOCK_FS);
	INODE_FOREACH(in, fs) {
		out->inodes++;
		if (S_ISREG(in->mode) && file_shares(fs, in))
			out->shared_files++;
	}
	for (size_t it_ = 0; (o = obj_next(fs, &it_));)
		if (o->origin)
			out->origin_files++;
	out->pt_opens = fs->pt_opens;
	out->pt_files = fs->npt;
	lock_drop(fs, LOCK_FS);

	if (fstatat(fs->store.dirfd, STORE_META, &st, 0) == 0)
		out->meta_bytes = (uint64_t)st.st_size;
	return 0;
}
