/*
 * main.c - the cowfs command: dispatch, help and usage errors, the helpers
 * every command shares (sizes, JSON, mount table, progress), and the
 * commands that work on an unmounted store (init, fsck).  mount and umount
 * live in cli_mount.c, the commands that talk to a daemon in cli_cmds.c.
 *
 * Habits (GNU): options anywhere among the operands, '--' ends them,
 * --help on every command, exit status 2 for every usage error, messages
 * "cowfs: CMD: 'PATH': reason" naming the path at fault.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <limits.h>
#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <time.h>
#include <unistd.h>

#include "cowfs/fs.h"
#include "cowfs/store.h"
#include "cli.h"

int usage_error(const char *cmd, const char *fmt, ...)
{
	va_list ap;
	const struct cmd *c = cmd ? cli_find_cmd(cmd) : NULL;

	fprintf(stderr, "cowfs: %s%s", cmd ? cmd : "", cmd ? ": " : "");
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
	if (c)
		fprintf(stderr, "usage: cowfs %s\nTry 'cowfs %s --help'.\n",
			c->synopsis, c->name);
	else
		fprintf(stderr, "Try 'cowfs --help'.\n");
	return 2;
}

int print_help(const char *cmd)
{
	const struct cmd *c = cli_find_cmd(cmd);

	printf("usage: cowfs %s\n\n%s", c->synopsis, c->help);
	return 0;
}

int bad_option(const char *cmd, int argc, char **argv, int c)
{
	const char *arg = optind > 0 && optind <= argc ? argv[optind - 1] : "?";

	if (c == ':')
		return usage_error(cmd, "option '%s' needs a value", arg);
	if (optopt && arg[0] == '-' && arg[1] != '-')
		return usage_error(cmd, "unknown option '-%c'", optopt);
	return usage_error(cmd, "unknown option '%s'", arg);
}

unsigned long long parse_size(const char *s)
{
	char *end;
	unsigned long long v;

	errno = 0;
	v = strtoull(s, &end, 10);
	if (errno || end == s || *s == '-')
		return 0;
	if (*end == 'k' || *end == 'K')
		v <<= 10, end++;
	else if (*end == 'm' || *end == 'M')
		v <<= 20, end++;
	if (*end == 'i' && end[1] == 'B')
		end += 2;
	else if (*end == 'B')
		end++;
	return *end ? 0 : v;
}

void fmt_size(char *buf, size_t len, uint64_t v, int exact)
{
	static const char *units[] = { "KiB", "MiB", "GiB", "TiB", "PiB", "EiB" };
	double d = (double)v;
	int u = -1;

	if (exact || v < 1024) {
		snprintf(buf, len, "%llu %s", (unsigned long long)v,
			 v == 1 ? "byte" : "bytes");
		return;
	}
	while (d >= 1024 && u < 5) {
		d /= 1024;
		u++;
	}
	if (d < 10)
		snprintf(buf, len, "%.1f %s", d, units[u]);
	else
		snprintf(buf, len, "%.0f %s", d, units[u]);
}

/* The length of the well-formed UTF-8 sequence at s (no overlong forms,
 * no surrogates, at most U+10FFFF), or 0. */
static size_t utf8_len(const unsigned char *s)
{
	size_t n, i;
	uint32_t cp;

	if (s[0] < 0x80)
		return 1;
	if (s[0] >= 0xc2 && s[0] <= 0xdf) {
		n = 2;
		cp = s[0] & 0x1f;
	} else if (s[0] >= 0xe0 && s[0] <= 0xef) {
		n = 3;
		cp = s[0] & 0x0f;
	} else if (s[0] >= 0xf0 && s[0] <= 0xf4) {
		n = 4;
		cp = s[0] & 0x07;
	} else {
		return 0;
	}
	for (i = 1; i < n; i++) {
		if ((s[i] & 0xc0) != 0x80)
			return 0;	/* the NUL ends here too */
		cp = cp << 6 | (s[i] & 0x3f);
	}
	if ((n == 3 && cp < 0x800) || (n == 4 && cp < 0x10000) ||
	    (cp >= 0xd800 && cp <= 0xdfff) || cp > 0x10ffff)
		return 0;
	return n;
}

/*
 * s as a JSON string.  Paths are bytes: a byte that is not part of
 * well-formed UTF-8 becomes the escape \udcXX (a lone low surrogate, as
 * Python's surrogateescape decodes it, so that os.fsencode() gives the
 * byte back), never a raw byte that makes the document invalid.
 */
void json_str(FILE *f, const char *s)
{
	const unsigned char *p = (const unsigned char *)s;

	fputc('"', f);
	while (*p) {
		size_t n = utf8_len(p);
		if (n == 0) {
			fprintf(f, "\\udc%02x", *p);
			p++;
		} else if (*p == '"' || *p == '\\') {
			fprintf(f, "\\%c", *p);
			p++;
		} else if (*p < 0x20 || *p == 0x7f) {
			fprintf(f, "\\u%04x", *p);
			p++;
		} else {
			fwrite(p, 1, n, f);
			p += n;
		}
	}
	fputc('"', f);
}

int on_fuse(int fd)
{
	struct statfs sf;
	return fstatfs(fd, &sf) == 0 && sf.f_type == FUSE_SUPER_MAGIC;
}

/* Unescape /proc/self/mountinfo octal escapes in place. */
static void unescape(char *s)
{
	char *d = s;
	while (*s) {
		if (s[0] == '\\' && s[1] >= '0' && s[1] <= '7' && s[2] && s[3]) {
			*d++ = (char)((s[1] - '0') * 64 + (s[2] - '0') * 8 + (s[3] - '0'));
			s += 4;
		} else {
			*d++ = *s++;
		}
	}
	*d = 0;
}

/* Walk the cowfs mounts: cb(mountpoint, source, ctx) until it returns
 * nonzero, which is returned. */
static int each_cowfs_mount(int (*cb)(const char *, const char *, void *),
			    void *ctx)
{
	FILE *f = fopen("/proc/self/mountinfo", "re");
	char line[8192];
	int rc = 0;

	if (!f)
		return 0;
	while (!rc && fgets(line, sizeof(line), f)) {
		/* id parent maj:min root mountpoint opts ... - fstype source super */
		char *fields[32], *save = NULL;
		int n = 0, dash = 6;
		for (char *t = strtok_r(line, " \n", &save); t && n < 32;
		     t = strtok_r(NULL, " \n", &save))
			fields[n++] = t;
		if (n < 10)
			continue;
		while (dash < n && strcmp(fields[dash], "-"))
			dash++;
		if (dash + 2 >= n || strcmp(fields[dash + 1], "fuse.cowfs"))
			continue;
		unescape(fields[4]);
		unescape(fields[dash + 2]);
		rc = cb(fields[4], fields[dash + 2], ctx);
	}
	fclose(f);
	return rc;
}

struct find_ctx {
	const char *key;
	char *found;
};

static int match_mnt(const char *mnt, const char *src, void *p)
{
	struct find_ctx *c = p;
	if (strcmp(mnt, c->key))
		return 0;
	free(c->found);	/* the last (top) mount wins */
	c->found = strdup(src);
	return 0;
}

char *mount_source(const char *mnt_abs)
{
	struct find_ctx c = { mnt_abs, NULL };
	each_cowfs_mount(match_mnt, &c);
	return c.found;
}

static int match_src(const char *mnt, const char *src, void *p)
{
	(void)mnt;
	return !strcmp(src, p);
}

int store_is_mounted(const char *store_abs)
{
	return each_cowfs_mount(match_src, (void *)store_abs);
}

/* --- progress -------------------------------------------------------- */

double now_secs(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

void progress_init(struct progress *p, const char *what, int quiet)
{
	memset(p, 0, sizeof(*p));
	p->what = what;
	p->on = !quiet && isatty(STDERR_FILENO);
	p->start = now_secs();
}

static void fmt_eta(char *buf, size_t len, double secs)
{
	if (secs < 0 || !isfinite(secs) || secs > 99 * 3600)
		snprintf(buf, len, "--:--");
	else if (secs >= 3600)
		snprintf(buf, len, "%d:%02d:%02d", (int)secs / 3600,
			 (int)secs / 60 % 60, (int)secs % 60);
	else
		snprintf(buf, len, "%d:%02d", (int)secs / 60, (int)secs % 60);
}

void progress_update(struct progress *p, int force)
{
	char b[32], tb[32], eta[32] = "", line[256];
	double t = now_secs(), el = t - p->start, frac = 0;

	if (!p->on || (!force && t - p->last < 0.1))
		return;
	p->last = t;
	fmt_size(b, sizeof(b), p->bytes, 0);
	fmt_size(tb, sizeof(tb), p->total_bytes, 0);
	if (p->total_bytes)
		frac = (double)p->bytes / (double)p->total_bytes;
	else if (p->total_files)
		frac = (double)p->files / (double)p->total_files;
	if (frac > 0 && frac < 1 && el > 0.2) {
		char e[16];
		fmt_eta(e, sizeof(e), el / frac - el);
		snprintf(eta, sizeof(eta), ", ETA %s", e);
	}
	snprintf(line, sizeof(line), "%s: %llu/%llu files, %s/%s (%d%%)%s",
		 p->what, (unsigned long long)p->files,
		 (unsigned long long)p->total_files, b, tb,
		 (int)(frac * 100 + 0.5 > 100 ? 100 : frac * 100), eta);
	fprintf(stderr, "\r%s\033[K", line);
	p->shown = 1;
}

void progress_clear(struct progress *p)
{
	if (p->on && p->shown)
		fprintf(stderr, "\r\033[K");
	p->shown = 0;
}

void progress_done(struct progress *p)
{
	if (!p->on)
		return;
	char el[16];
	progress_update(p, 1);
	fmt_eta(el, sizeof(el), now_secs() - p->start);
	fprintf(stderr, " in %s\n", el);
	p->shown = 0;
}

/* --- init ------------------------------------------------------------ */

static int cmd_init(int argc, char **argv)
{
	static const struct option lo[] = {
		{ "block-size", required_argument, NULL, 'b' },
		{ "help", no_argument, NULL, 'H' },
		{ 0 }
	};
	unsigned long long bs = 65536;
	char errbuf[512];
	int c, rc;

	opterr = 0;
	while ((c = getopt_long(argc, argv, ":b:h", lo, NULL)) != -1) {
		switch (c) {
		case 'b':
			bs = parse_size(optarg);
			if (bs < 4096 || bs > (1u << 20) || (bs & (bs - 1)))
				return usage_error("init", "invalid block size '%s' "
						   "(a power of two from 4K to 1M)",
						   optarg);
			break;
		case 'h':
		case 'H':
			return print_help("init");
		default:
			return bad_option("init", argc, argv, c);
		}
	}
	if (argc - optind != 1)
		return usage_error("init", argc - optind ? "too many arguments" :
				   "missing STORE");
	rc = fs_init_store(argv[optind], (unsigned)__builtin_ctzll(bs), errbuf,
			   sizeof(errbuf));
	if (rc) {
		fprintf(stderr, "cowfs: init: %s\n", errbuf);
		return 1;
	}
	return 0;
}

/* --- fsck ------------------------------------------------------------ */

/*
 * fsck runs in the core in one call, which reports no progress; on a
 * terminal a thread shows, after half a second, how long it has run
 * and the store's size (the metadata file, the object files and their
 * bytes: what the check's time grows with).  No ETA: the core would need
 * a progress callback for one.
 */
struct fsck_ticker {
	pthread_t t;
	pthread_mutex_t lock;
	pthread_cond_t cond;
	int stop;
	double start;
	const char *store;
	int shown;
	uint64_t meta_bytes, objects, object_bytes;	/* the totals */
	struct fsck_progress prog;	/* filled by the check */
	double check_start;	/* when the first unit was done */
};

/* The store's size as fsck will see it: the metadata file, and the
 * object files with their lengths (a readdir of objects/XX/, which the
 * check does too). */
static void fsck_totals(struct fsck_ticker *k)
{
	char p[PATH_MAX];
	struct stat st;

	snprintf(p, sizeof(p), "%s/%s", k->store, STORE_META);
	if (stat(p, &st) == 0)
		k->meta_bytes = (uint64_t)st.st_size;
	for (int x = 0; x < 256; x++) {
		snprintf(p, sizeof(p), "%s/%s/%02x", k->store, STORE_OBJDIR, x);
		DIR *d = opendir(p);
		struct dirent *e;
		if (!d)
			continue;
		while ((e = readdir(d))) {
			if (e->d_name[0] == '.')
				continue;
			if (fstatat(dirfd(d), e->d_name, &st, AT_SYMLINK_NOFOLLOW) == 0) {
				k->objects++;
				k->object_bytes += (uint64_t)st.st_blocks * 512;
			}
		}
		closedir(d);
	}
}

static void *fsck_tick(void *p)
{
	struct fsck_ticker *k = p;
	struct timespec ts;

	fsck_totals(k);
	pthread_mutex_lock(&k->lock);
	while (!k->stop) {
		clock_gettime(CLOCK_REALTIME, &ts);
		ts.tv_nsec += 250000000;
		if (ts.tv_nsec >= 1000000000) {
			ts.tv_sec++;
			ts.tv_nsec -= 1000000000;
		}
		pthread_cond_timedwait(&k->cond, &k->lock, &ts);
		if (k->stop)
			break;
		double el = now_secs() - k->start;
		if (el >= 0.5) {
			char m[32], o[32], eta[64] = "";
			uint64_t done = k->prog.done, total = k->prog.total;
			k->shown = 1;
			fmt_size(m, sizeof(m), k->meta_bytes, 0);
			fmt_size(o, sizeof(o), k->object_bytes, 0);
			if (!total) {
				snprintf(eta, sizeof(eta), ", loading metadata");
			} else if (done) {
				char e[32];
				double left;
				if (done > total)
					done = total;
				if (!k->check_start)
					k->check_start = el;
				left = (el - k->check_start) *
				       (double)(total - done) / (double)done;
				fmt_eta(e, sizeof(e), left);
				snprintf(eta, sizeof(eta), ", %d%%, ETA %s",
					 (int)(100 * done / total), e);
			}
			fprintf(stderr, "\rfsck: checking '%s' (metadata %s, %llu "
				"objects, %s): %d:%02d elapsed%s\033[K", k->store,
				m, (unsigned long long)k->objects, o, (int)el / 60,
				(int)el % 60, eta);
		}
	}
	pthread_mutex_unlock(&k->lock);
	return NULL;
}

static int cmd_fsck(int argc, char **argv)
{
	static const struct option lo[] = {
		{ "repair", no_argument, NULL, 'r' },
		{ "verbose", no_argument, NULL, 'v' },
		{ "quiet", no_argument, NULL, 'q' },
		{ "help", no_argument, NULL, 'H' },
		{ 0 }
	};
	struct fsck_ticker k = { .lock = PTHREAD_MUTEX_INITIALIZER,
				 .cond = PTHREAD_COND_INITIALIZER };
	int repair = 0, verbose = 0, quiet = 0, c, rc, ticking = 0;
	char errbuf[1024];

	opterr = 0;
	while ((c = getopt_long(argc, argv, ":rvqh", lo, NULL)) != -1) {
		switch (c) {
		case 'r':
			repair = 1;
			break;
		case 'v':
			verbose = 1;
			break;
		case 'q':
			quiet = 1;
			break;
		case 'h':
		case 'H':
			return print_help("fsck");
		default:
			return bad_option("fsck", argc, argv, c);
		}
	}
	if (argc - optind != 1)
		return usage_error("fsck", argc - optind ? "too many arguments" :
				   "missing STORE");
	if (!quiet && isatty(STDERR_FILENO)) {
		k.start = now_secs();
		k.store = argv[optind];
		ticking = pthread_create(&k.t, NULL, fsck_tick, &k) == 0;
	}
	rc = fs_fsck_ex(argv[optind], repair, verbose, stdout, &k.prog, errbuf,
			sizeof(errbuf));
	if (ticking) {
		pthread_mutex_lock(&k.lock);
		k.stop = 1;
		pthread_cond_signal(&k.cond);
		pthread_mutex_unlock(&k.lock);
		pthread_join(k.t, NULL);
		if (k.shown)
			fprintf(stderr, "\r\033[K");
	}
	if (rc < 0) {
		fprintf(stderr, "cowfs: fsck: %s\n", errbuf);
		return 3;
	}
	return rc;
}

/* --- dispatch -------------------------------------------------------- */

static int cmd_help(int argc, char **argv);

static const struct cmd cmds[] = {
	{ "init", cmd_init, "init [--block-size SIZE] STORE",
	  "Create a new, empty store in STORE (a missing or empty directory).\n\n"
	  "  -b, --block-size SIZE  unit of sharing and copy-on-write: a power\n"
	  "                         of two from 4K to 1M (default 64K)\n"
	  "  -h, --help             show this help\n" },
	{ "mount", cmd_mount,
	  "mount [-f] [-d] [-o OPT[,OPT...]] [--origin DIR] STORE MOUNTPOINT",
	  "Serve STORE at MOUNTPOINT.  Returns once the mount is live; the daemon\n"
	  "runs in the background until 'cowfs umount' (or umount(8)).  If the\n"
	  "store's previous daemon is unmounted but still saving, waits for it\n"
	  "(up to 2 minutes).\n\n"
	  "  --origin DIR  the mount's root is a writable zero-copy clone of the\n"
	  "                host directory DIR (made on the first mount; STORE is\n"
	  "                created if missing; later mounts reuse it)\n"
	  "  -f            stay in the foreground, log to standard error\n"
	  "  -d            debug output (implies -f)\n"
	  "  -o OPT,...    libfuse options (allow_other, ro, ...) and cowfs's own:\n"
	  "                commit=SECONDS  journal commit interval (default 5)\n"
	  "                logfile=PATH    append the daemon's log to PATH\n"
	  "                                (default: syslog, facility daemon)\n"
	  "                origin=DIR      as --origin DIR\n"
	  "                fstab and systemd options (nofail, _netdev, noauto,\n"
	  "                x-systemd.*, ...) are ignored\n"
	  "  -h, --help    show this help\n\n"
	  "'cowfs STORE MOUNTPOINT -o OPTS' (the form mount.fuse3 runs for\n"
	  "'mount -t fuse.cowfs') is the same as 'cowfs mount -o OPTS STORE\n"
	  "MOUNTPOINT'.\n" },
	{ "umount", cmd_umount, "umount MOUNTPOINT",
	  "Unmount a cowfs mount and wait until its daemon has written its\n"
	  "metadata and exited.  Exits 1 if the daemon could not save.\n" },
	{ "clone", cmd_clone, "clone [-q] SRC DST",
	  "Make DST an instant copy-on-write clone of SRC (a file, symlink or\n"
	  "directory tree), like 'cp -a' but sharing every block.  DST must not\n"
	  "exist; its parent must be in a cowfs mount.  When SRC is in the same\n"
	  "mount the clone costs metadata only; when SRC is a host path outside\n"
	  "it, the clone is made by reference: no data is copied, the host files\n"
	  "are read in place and never written (see 'cowfs detach').\n\n"
	  "  -q, --quiet  no progress on a terminal\n"
	  "  -h, --help   show this help\n" },
	{ "detach", cmd_detach, "detach [-q] PATH...",
	  "Copy every block that PATH (a file or tree in a mount) still reads\n"
	  "from a host origin into the store; afterwards it no longer depends on\n"
	  "the origin.\n\n"
	  "  -q, --quiet  no progress on a terminal\n"
	  "  -h, --help   show this help\n" },
	{ "du", cmd_du, "du [-h|-b] [--json] PATH...",
	  "For each PATH in a cowfs mount: logical bytes, bytes in blocks shared\n"
	  "with files outside PATH, and bytes in blocks PATH alone holds.\n\n"
	  "  -h, --human-readable  sizes like 1.5G (default on a terminal)\n"
	  "  -b, --bytes           exact byte counts (default otherwise)\n"
	  "      --json            JSON, in bytes\n"
	  "      --help            show this help\n" },
	{ "df", cmd_df, "df [-h|-b] [--json] MOUNTPOINT",
	  "The store's logical bytes, physical bytes, shared bytes, bytes read\n"
	  "from origins, sharing ratio and metadata size.\n\n"
	  "  -h, --human-readable  sizes like 1.5 GiB (default on a terminal)\n"
	  "  -b, --bytes           exact byte counts (default otherwise)\n"
	  "      --json            JSON, in bytes\n"
	  "      --help            show this help\n" },
	{ "status", cmd_status, "status [-h|-b] [--json] MOUNTPOINT",
	  "The daemon serving MOUNTPOINT: its store, block size, origin, pid,\n"
	  "log target and uptime; inodes, files sharing blocks, logical,\n"
	  "physical and shared bytes, the host bytes the store's objects really\n"
	  "use, and the metadata size.\n\n"
	  "  -h, --human-readable  sizes like 1.5 GiB (default on a terminal)\n"
	  "  -b, --bytes           exact byte counts (default otherwise)\n"
	  "      --json            JSON, in bytes and seconds\n"
	  "      --help            show this help\n" },
	{ "fsck", cmd_fsck, "fsck [--repair] [-v] [-q] STORE",
	  "Check an unmounted store: refcounts against extent maps, objects,\n"
	  "directory entries and link counts, leaked space.  Exit 0: clean\n"
	  "(leaks alone are harmless and reported), 1: problems found,\n"
	  "3: the store could not be opened.\n\n"
	  "  -r, --repair   return leaked space to the host\n"
	  "  -v, --verbose  every problem and every leaked object\n"
	  "  -q, --quiet    no elapsed time on a terminal\n"
	  "  -h, --help     show this help\n" },
	{ "help", cmd_help, "help [COMMAND]",
	  "Show the commands, or one command's usage.\n" },
};

const struct cmd *cli_find_cmd(const char *name)
{
	for (size_t i = 0; i < sizeof(cmds) / sizeof(cmds[0]); i++)
		if (!strcmp(cmds[i].name, name))
			return &cmds[i];
	return NULL;
}

static void general_usage(FILE *f)
{
	fprintf(f, "usage: cowfs COMMAND [ARGS...]\n"
		"       cowfs STORE MOUNTPOINT [-o OPT,...]   (as 'cowfs mount')\n\n"
		"cowfs is a copy-on-write FUSE filesystem: instant clones of files\n"
		"and trees that share blocks until one side writes.\n\nCommands:\n");
	for (size_t i = 0; i < sizeof(cmds) / sizeof(cmds[0]); i++)
		fprintf(f, "  cowfs %s\n", cmds[i].synopsis);
	fprintf(f, "\n'cowfs help COMMAND' or 'cowfs COMMAND --help' for details;\n"
		"'man cowfs' for everything.\n");
}

static int cmd_help(int argc, char **argv)
{
	int i = 1;

	if (argc > 1 && !strcmp(argv[1], "--"))
		i++;
	if (argc - i > 1)
		return usage_error("help", "too many arguments");
	if (argc - i == 1 && (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")))
		return print_help("help");
	if (argc - i == 1) {
		if (!cli_find_cmd(argv[i]))
			return usage_error("help", "unknown command '%s'", argv[i]);
		return print_help(argv[i]);
	}
	general_usage(stdout);
	return 0;
}

int main(int argc, char **argv)
{
	const char *me = strrchr(argv[0], '/');
	struct stat st;

	me = me ? me + 1 : argv[0];
	/* installed as /sbin/mount.fuse.cowfs: mount(8)'s helper */
	if (!strncmp(me, "mount.", 6))
		return cli_mount_helper(argc, argv, 1);
	if (argc < 2) {
		general_usage(stderr);
		return 2;
	}
	if (!strcmp(argv[1], "--version") || !strcmp(argv[1], "-V")) {
		/* what the libfuse it was built with allows (from 3.16) */
#ifdef COWFS_HAVE_PASSTHROUGH
		const char *yes = "yes";
#else
		const char *yes = "no (needs libfuse 3.16)";
#endif
		printf("cowfs %s\nlibfuse %s; FUSE passthrough: %s; "
		       "O_TMPFILE: %s\n", COWFS_VERSION, COWFS_FUSE_VERSION,
		       yes, yes);
		return 0;
	}
	if (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h")) {
		general_usage(stdout);
		return 0;
	}
	const struct cmd *c = cli_find_cmd(argv[1]);
	if (c) {
		optind = 1;
		return c->run(argc - 1, argv + 1);
	}
	/* 'cowfs STORE MNT -o OPTS', as mount.fuse3 runs it: a path */
	if (argv[1][0] != '-' && (strchr(argv[1], '/') ||
				  (stat(argv[1], &st) == 0 && S_ISDIR(st.st_mode))))
		return cli_mount_helper(argc, argv, 0);
	return usage_error(NULL, "unknown command '%s'", argv[1]);
}
