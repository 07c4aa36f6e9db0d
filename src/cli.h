/*
 * cli.h - what the cowfs command's files share: main.c (dispatch, help,
 * init, fsck, helpers), cli_mount.c (mount, umount, the mount.fuse form,
 * the daemon's log) and cli_cmds.c (clone, detach, du, df, status).
 * Nothing here is used by the core or the FUSE layer.
 */
#ifndef COWFS_CLI_H
#define COWFS_CLI_H

#include <getopt.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#define FUSE_SUPER_MAGIC 0x65735546

struct cmd {
	const char *name;
	int (*run)(int argc, char **argv);
	const char *synopsis;
	const char *help;
};

const struct cmd *cli_find_cmd(const char *name);

/* Print "cowfs: CMD: message" and the command's usage line to stderr;
 * returns 2, the exit status of every usage error. */
int usage_error(const char *cmd, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));
/* The command's help on stdout; returns 0. */
int print_help(const char *cmd);
/* After getopt_long returned '?' or ':': the usage error for the option
 * at fault (argv[optind - 1]). */
int bad_option(const char *cmd, int argc, char **argv, int c);

/* "64K", "4096", "1M", "1MiB" into bytes; 0 on error. */
unsigned long long parse_size(const char *s);
/* v bytes as "123456789 bytes" (exact) or "118 MiB" (human). */
void fmt_size(char *buf, size_t len, uint64_t v, int exact);
void json_str(FILE *f, const char *s);

/* Is fd on a FUSE filesystem (where cowfs's ioctls may answer)? */
int on_fuse(int fd);
/* The store behind the cowfs mount at mnt_abs (an absolute path), from
 * /proc/self/mountinfo; NULL when there is none.  Caller frees. */
char *mount_source(const char *mnt_abs);
/* Is some cowfs mount of this namespace served from store_abs? */
int store_is_mounted(const char *store_abs);

/* Progress on standard error, only when it is a terminal and not quiet:
 * "WHAT: done/total files, bytes/total, ETA".  Redrawn at most 10 times
 * a second. */
struct progress {
	const char *what;
	int on;
	double start, last;
	uint64_t files, total_files, bytes, total_bytes;
	int shown;
};
void progress_init(struct progress *p, const char *what, int quiet);
void progress_update(struct progress *p, int force);
/* Clear the line (before an error message) and say nothing more. */
void progress_clear(struct progress *p);
void progress_done(struct progress *p);
double now_secs(void);

int cmd_mount(int argc, char **argv);
int cmd_umount(int argc, char **argv);
int cli_mount_helper(int argc, char **argv, int helper_mode);
int cmd_clone(int argc, char **argv);
int cmd_detach(int argc, char **argv);
int cmd_du(int argc, char **argv);
int cmd_df(int argc, char **argv);
int cmd_status(int argc, char **argv);

#endif
