/*
 * lock.c - the debug check of the lock order (fs_impl.h): a per-thread
 * bitmask of the levels held through lock_take()/lock_io_take(), and an
 * assertion when a thread takes a level at or above one it holds
 * (compiled only without NDEBUG); and the io_lock stripes, which are
 * shared by every inode of every store in the process.
 */
#include "cowfs/fs_impl.h"

pthread_mutex_t lock_io_stripes[LOCK_IO_STRIPES] = {
	[0 ... LOCK_IO_STRIPES - 1] = PTHREAD_MUTEX_INITIALIZER
};

#ifndef NDEBUG
#include <stdio.h>
#include <stdlib.h>

static __thread unsigned held;		/* bit per enum lock_level */
static __thread unsigned io_depth;	/* io_locks held (at most 2) */
static __thread uint64_t io_last;	/* stripe of the last io_lock taken */

static const char *const names[] = {
	"commit_lock", "data_lock", "io_lock", "fs->lock", "pf_lock",
};

static void lock_order_violation(enum lock_level l, unsigned h)
{
	fprintf(stderr, "cowfs: lock order violation: taking %s while holding",
		names[l]);
	for (unsigned i = 0; i < sizeof(names) / sizeof(names[0]); i++)
		if (h & (1u << i))
			fprintf(stderr, " %s", names[i]);
	fprintf(stderr, "\n");
	abort();
}

void lock_check_take(enum lock_level l, uint64_t key)
{
	unsigned at_or_below = ~((1u << l) - 1);	/* l and later levels */

	if (l == LOCK_IO && (held & at_or_below) == (1u << LOCK_IO) &&
	    io_depth == 1 && key > io_last) {
		/* a second stripe: lower stripe first */
	} else if (held & at_or_below) {
		lock_order_violation(l, held);
	}
	held |= 1u << l;
	if (l == LOCK_IO) {
		io_depth++;
		io_last = key;
	}
}

void lock_note_drop(enum lock_level l)
{
	if (l == LOCK_IO && io_depth > 1) {
		io_depth--;
		return;
	}
	if (l == LOCK_IO)
		io_depth = 0;
	held &= ~(1u << l);
}

unsigned lock_suspend(enum lock_level l)
{
	unsigned was = (held >> l) & 1;
	held &= ~(1u << l);
	return was;
}

void lock_resume(enum lock_level l, unsigned token)
{
	if (token)
		held |= 1u << l;
	else
		held &= ~(1u << l);
}

bool lock_held(enum lock_level l)
{
	return (held >> l) & 1;
}
#endif
