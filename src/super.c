/*
 * super.c - a store's life as a filesystem: creating one, opening and
 * loading it (with crash recovery), and closing it cleanly.
 */
#include <errno.h>
#include <fcntl.h>
#include <malloc.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

#include "cowfs/fs_impl.h"

int fs_init_store(const char *path, unsigned block_shift, char *err,
		  size_t errlen)
{
	struct fs fs;
	struct inode *root;
	unsigned char *img;
	size_t len;
	int rc;

	memset(&fs, 0, sizeof(fs));
	fs.block_shift = block_shift;
	fs.block_size = 1ull << block_shift;
	fs.next_ino = FS_ROOT_INO;
	fs.next_obj = 1;
	root = inode_new(&fs, FS_ROOT_INO);
	if (!root)
		return -ENOMEM;
	root->mode = S_IFDIR | 0755;
	root->nlink = 2;
	root->uid = getuid();
	root->gid = getgid();
	if (inode_make_dir(root, FS_ROOT_INO)) {
		inode_free(&fs, root);
		inode_table_free(&fs);
		return -ENOMEM;
	}
	inode_touch(root, IT_BIT(IT_N) - 1, NULL);
	rc = journal_encode_checkpoint(&fs, &img, &len);
	inode_free(&fs, root);
	inode_table_free(&fs);
	if (rc) {
		snprintf(err, errlen, "%s", strerror(-rc));
		return rc;
	}
	rc = store_create(path, img, len, err, errlen);
	free(img);
	return rc;
}

static void fs_free(struct fs *fs)
{
	struct inode *in, *t;

	INODE_FOREACH_SAFE(in, fs, t) {
		/* no journaling, no refcounts: just memory */
		if (S_ISREG(in->mode)) {
			extmap_release(&in->map);
			in->wobj = 0;
			in->mode = 0;
		}
		inode_free(fs, in);
	}
	inode_table_free(fs);
	obj_free_all(fs);
	refcount_release(&fs->rc);
	free(fs->jbuf);
	free(fs->frees);
	free(fs->unlinks);
	if (fs->metafd >= 0)
		close(fs->metafd);
	store_close(&fs->store);
	if (fs->log && fs->log != stderr)
		fclose(fs->log);
	pthread_mutex_destroy(&fs->lock);
	pthread_rwlock_destroy(&fs->data_lock);
	pthread_mutex_destroy(&fs->commit_lock);
	pthread_cond_destroy(&fs->cond);
	free(fs);
}

int fs_open(const char *path, const struct fs_options *opt, struct fs **out,
	    char *err, size_t errlen)
{
	struct fs *fs = calloc(1, sizeof(*fs));
	struct rlimit rl;
	int rc, unclean;

	if (!fs)
		return -ENOMEM;
	fs->opt = *opt;
	if (!fs->opt.commit_secs)
		fs->opt.commit_secs = 5;
	fs->metafd = -1;
	refcount_init(&fs->rc);
	pthread_mutex_init(&fs->lock, NULL);
	/* writers first: a clone is not starved by a stream of writes */
	pthread_rwlockattr_t ra;
	pthread_rwlockattr_init(&ra);
	pthread_rwlockattr_setkind_np(&ra,
				      PTHREAD_RWLOCK_PREFER_WRITER_NONRECURSIVE_NP);
	pthread_rwlock_init(&fs->data_lock, &ra);
	pthread_rwlockattr_destroy(&ra);
	pthread_mutex_init(&fs->commit_lock, NULL);
	pthread_cond_init(&fs->cond, NULL);
	pthread_mutex_init(&fs->pf_lock, NULL);
	pthread_cond_init(&fs->pf_cond, NULL);
	fs->next_ino = FS_ROOT_INO + 1;
	fs->next_obj = 1;
	if (opt->logfile) {
		fs->log = fopen(opt->logfile, "ae");
		if (!fs->log) {
			rc = -errno;
			snprintf(err, errlen, "'%s': %s", opt->logfile, strerror(errno));
			fs->store.dirfd = fs->store.objfd = fs->store.lockfd = -1;
			fs_free(fs);
			return rc;
		}
	}
	/* Cached object fds: as many as the process may have, with room. */
	if (getrlimit(RLIMIT_NOFILE, &rl) == 0) {
		rl.rlim_cur = rl.rlim_max;
		setrlimit(RLIMIT_NOFILE, &rl);
		getrlimit(RLIMIT_NOFILE, &rl);
	}
	fs->max_fds = rl.rlim_cur > 2048 ? (unsigned)((rl.rlim_cur - 256) / 2) :
		      rl.rlim_cur > 64 ? (unsigned)(rl.rlim_cur / 2) : 16;
	if (fs->max_fds > 65536)
		fs->max_fds = 65536;

	rc = store_open(&fs->store, path, opt->ro, err, errlen);
	if (rc) {
		fs_free(fs);
		return rc;
	}
	static const struct journal_load_ops load_ops = {
		.apply = apply_rec,
		.checkpoint_loaded = replay_checkpoint_loaded,
	};
	fs->ext_pool = extmap_pool_new();	/* NULL: no sharing */
	fs->dir_pool = dir_pool_new();
	unclean = journal_load(fs, &load_ops, err, errlen);
	extmap_pool_free(fs->ext_pool);	/* if the load stopped early */
	fs->ext_pool = NULL;
	dir_pool_free(fs->dir_pool);
	fs->dir_pool = NULL;
	/* The load's transient buffers and tables (the journal read buffer,
	 * the pools, the tables outgrown on the way) were freed between the
	 * long-lived inodes, maps and objects: give their pages back.  (The
	 * daemon also fixes malloc's mmap threshold: cli_mount.c.) */
	malloc_trim(0);
	if (unclean < 0) {
		fs_free(fs);
		return unclean;
	}
	if (!fs->opt.ro) {
		fs->metafd = store_meta_open(&fs->store);
		if (fs->metafd < 0) {
			rc = fs->metafd;
			snprintf(err, errlen, "'%s/%s': %s", path, STORE_META,
				 strerror(-rc));
			fs_free(fs);
			return rc;
		}
		/* Before anything can change: from here until the clean
		 * close's checkpoint, a stop is an unclean stop. */
		rc = journal_mark_mounted(fs);
		if (rc) {
			snprintf(err, errlen, "'%s/%s': setting the mount mark: %s",
				 path, STORE_META, strerror(-rc));
			fs_free(fs);
			return rc;
		}
	}
	/* Recovery: orphans (unlinked but open at the stop) go; write objects
	 * are retired (invariant 4); objects nothing uses are unlinked. */
	struct inode *in, *t;
	int orphans = 0;
	INODE_FOREACH_SAFE(in, fs, t) {
		if (in->nlink == 0 && in->ino != FS_ROOT_INO) {
			inode_maybe_free(fs, in);
			orphans++;
		} else if (unclean && S_ISREG(in->mode)) {
			if (in->wobj)
				file_retire_wobj(fs, in);
			/* a shrink in passthrough mode (file.c) */
			if (!fs->opt.ro)
				file_unmap_past_eof(fs, in);
		}
	}
	struct object *o;
	for (size_t it_ = 0; (o = obj_next(fs, &it_));)
		obj_maybe_doom(fs, o);
	if (unclean)
		fs_log(fs, "recovered after an unclean stop: journal replayed, "
		       "%d orphan inode(s) freed", orphans);
	if (!fs->opt.ro && (unclean || orphans)) {
		rc = journal_checkpoint(fs);
		if (rc) {
			snprintf(err, errlen, "'%s': writing a checkpoint after "
				 "recovery: %s", path, strerror(-rc));
			fs_free(fs);
			return rc;
		}
	}
	*out = fs;
	return 0;
}

int fs_start(struct fs *fs)
{
	store_set_pid(&fs->store);
	journal_start_thread(fs);
	origin_prefetch_start(fs);
	return 0;
}

/*
 * Returns 0 when everything is on disk (the final checkpoint, or at least a
 * final commit, succeeded), or -errno when changes made since the last
 * commit are lost: the final save failed, or the store was broken
 * (fs->broken: nothing may be committed).  The failure is logged.
 */
int fs_close(struct fs *fs)
{
	int rc = 0;

	journal_stop_thread(fs);
	origin_prefetch_stop(fs);
	if (!fs->opt.ro) {
		/* Files still open or looked up at unmount are forgotten now. */
		struct inode *in, *t;
		lock_take(fs, LOCK_FS);
		int broken = fs->broken;
		if (!broken) {
			INODE_FOREACH_SAFE(in, fs, t) {
				in->nlookup = 0;
				in->nopen = 0;
				inode_maybe_free(fs, in);
			}
		}
		lock_drop(fs, LOCK_FS);
		if (broken) {
			rc = -EIO;
			fs_log(fs, "error: the store was marked broken: changes since "
			       "the last commit are lost; the next mount recovers "
			       "from the journal");
		} else {
			/* the checkpoint of a clean close clears the mount mark */
			fs->mounted = 0;
			rc = journal_checkpoint(fs);
			if (rc) {
				fs->mounted = 1;
				fs_log(fs, "warning: final checkpoint failed (%s); "
				       "committing the journal instead",
				       strerror(-rc));
				rc = journal_commit(fs);
			}
			if (rc)
				fs_log(fs, "error: could not write metadata at "
				       "unmount: %s; changes since the last commit "
				       "are lost", strerror(-rc));
		}
	}
	fs_free(fs);
	return rc;
}
