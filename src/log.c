/*
 * log.c - the daemon's log: one line per event, with time and pid, to
 * fs->log (a file, standard error, or syslog through the CLI's stream).
 * At the bottom of the core: every module may log.
 */
#include <stdarg.h>
#include <stdio.h>
#include <time.h>
#include <unistd.h>

#include "cowfs/fs_impl.h"

void fs_log(struct fs *fs, const char *fmt, ...)
{
	va_list ap;
	struct timespec ts;
	char tbuf[32];
	struct tm tm;
	FILE *f = fs->log ? fs->log : stderr;

	clock_gettime(CLOCK_REALTIME, &ts);
	localtime_r(&ts.tv_sec, &tm);
	strftime(tbuf, sizeof(tbuf), "%Y-%m-%d %H:%M:%S", &tm);
	flockfile(f);
	fprintf(f, "%s cowfs[%d]: ", tbuf, (int)getpid());
	va_start(ap, fmt);
	if (fmt)	/* gcc 12 with -fsanitize warns of a null format */
		vfprintf(f, fmt, ap);
	va_end(ap);
	fputc('\n', f);
	fflush(f);
	funlockfile(f);
}
