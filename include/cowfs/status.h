/*
 * status.h - what 'cowfs status' reports: the daemon (pid, uptime, log
 * target) and its store (counts, bytes, host bytes really used).  Core
 * side of COWFS_IOC_STATUS; src/status.c.
 */
#ifndef COWFS_STATUS_H
#define COWFS_STATUS_H

#include "cowfs/fs.h"
#include "cowfs/ioctl.h"

/* Record, once in the daemon before it serves, where it logs ("syslog",
 * "stderr" or a path; copied) and the time it started. */
void fs_status_daemon(const char *log_target);

/* Fill *out (zeroed first).  Takes fs->lock briefly; stats the object
 * files without it.  0 or -errno. */
int fs_status(struct fs *fs, struct cowfs_ioc_status *out);

#endif
