/*
 * fuse_ops.h - the FUSE layer: serves a loaded struct fs at a mountpoint
 * through libfuse's low-level API.  The only module that speaks libfuse.
 */
#ifndef COWFS_FUSE_OPS_H
#define COWFS_FUSE_OPS_H

#include "cowfs/fs.h"

struct cowfs_mount {
	const char *mountpoint;
	int passthrough;	/* -o passthrough: FUSE passthrough if it can */
	const char *fuse_opts;	/* comma list passed to libfuse, or NULL */
	int foreground;
	int debug;
	int no_writeback;	/* -o nowriteback_cache: writes go through */
};

/* Would libfuse take every option of the comma list opts?  0, or
 * -EINVAL with the first it refuses copied to bad. */
int cowfs_fuse_check_opts(const char *opts, char *bad, size_t badlen);

/* Mount, daemonize unless foreground (the caller returns once the mount
 * is live), serve until unmounted.  Returns 0 or -errno; messages go to
 * stderr before daemonizing and to the fs log after. */
int cowfs_fuse_run(struct fs *fs, const struct cowfs_mount *m);

#endif
