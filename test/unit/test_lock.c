/*
 * test_lock.c - the debug check of the lock order (fs_impl.h, lock.c):
 * taking the locks in order works, taking any level at or above one held
 * aborts (each violation runs in a child process); two io_locks are taken
 * in stripe order, and two inodes on one stripe take it once.  Skipped
 * (77) in a build with NDEBUG, where the check is compiled out.
 */
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "cowfs/fs_impl.h"

static struct fs fs;
/* lo's io_lock stripe is below hi's; twin shares lo's stripe */
static struct inode lo, hi, twin;
static int failures;

#define CHECK(cond)                                                         \
	do {                                                                \
		if (!(cond)) {                                              \
			fprintf(stderr, "%s:%d: CHECK failed: %s\n",        \
				__FILE__, __LINE__, #cond);                 \
			failures++;                                         \
		}                                                           \
	} while (0)

/* Run fn in a child; true when it died of SIGABRT. */
static bool aborts(void (*fn)(void))
{
	int st;
	pid_t pid = fork();

	if (pid == 0) {
		int null = open("/dev/null", O_WRONLY);
		if (null >= 0)
			dup2(null, 2);
		fn();
		_exit(0);
	}
	if (pid < 0 || waitpid(pid, &st, 0) != pid)
		return false;
	return WIFSIGNALED(st) && WTERMSIG(st) == SIGABRT;
}

static void in_order(void)
{
	lock_take(&fs, LOCK_COMMIT);
	lock_take_shared(&fs);
	lock_io_take(&lo);
	lock_io_take(&hi);
	lock_take(&fs, LOCK_FS);
	lock_take(&fs, LOCK_PF);
	lock_drop(&fs, LOCK_PF);
	/* a function entered with fs->lock that releases it for a syscall,
	 * and calls something that takes it again */
	unsigned t = lock_fs_suspend(&fs);
	CHECK(!lock_held(LOCK_FS));
	lock_take(&fs, LOCK_FS);
	lock_drop(&fs, LOCK_FS);
	lock_fs_resume(&fs, t);
	CHECK(lock_held(LOCK_FS));
	lock_drop(&fs, LOCK_FS);
	lock_io_drop(&lo);
	lock_io_drop(&hi);
	lock_drop(&fs, LOCK_DATA);
	lock_drop(&fs, LOCK_COMMIT);
	/* exclusive data_lock, then everything after it */
	lock_take(&fs, LOCK_DATA);
	lock_take(&fs, LOCK_FS);
	lock_drop(&fs, LOCK_FS);
	lock_drop(&fs, LOCK_DATA);
	CHECK(!lock_held(LOCK_FS) && !lock_held(LOCK_DATA) &&
	      !lock_held(LOCK_IO));
}

static void fs_then_data(void)
{
	lock_take(&fs, LOCK_FS);
	lock_take_shared(&fs);
}

static void fs_twice(void)
{
	lock_take(&fs, LOCK_FS);
	lock_take(&fs, LOCK_FS);
}

static void data_shared_twice(void)
{
	/* with writers preferred, a waiting clone would deadlock this */
	lock_take_shared(&fs);
	lock_take_shared(&fs);
}

static void io_high_then_low(void)
{
	lock_io_take(&hi);
	lock_io_take(&lo);
}

/* Both pairs, either way round: no abort, and (the same stripe taken
 * once) no self-deadlock; a timeout in the parent would catch one. */
static void io_pairs(void)
{
	lock_take_shared(&fs);
	lock_io_take2(&lo, &twin);
	CHECK(lock_held(LOCK_IO));
	lock_take(&fs, LOCK_FS);
	lock_drop(&fs, LOCK_FS);
	lock_io_drop2(&lo, &twin);
	CHECK(!lock_held(LOCK_IO));
	lock_io_take2(&twin, &lo);
	lock_io_drop2(&twin, &lo);
	lock_io_take2(&hi, &lo);
	lock_io_drop2(&hi, &lo);
	lock_io_take2(&lo, &hi);
	lock_io_drop2(&lo, &hi);
	lock_io_take2(&lo, &lo);
	lock_io_drop2(&lo, &lo);
	CHECK(!lock_held(LOCK_IO));
	lock_drop(&fs, LOCK_DATA);
	/* every stripe is free again */
	for (unsigned i = 0; i < LOCK_IO_STRIPES; i++) {
		CHECK(pthread_mutex_trylock(&lock_io_stripes[i]) == 0);
		pthread_mutex_unlock(&lock_io_stripes[i]);
	}
}

/* The same stripe twice, not through lock_io_take2(): the checker catches
 * it (without it, the thread would wait for itself forever). */
static void io_twin_twice(void)
{
	lock_io_take(&lo);
	lock_io_take(&twin);
}

static void io_then_data(void)
{
	lock_io_take(&lo);
	lock_take(&fs, LOCK_DATA);
}

static void pf_then_fs(void)
{
	lock_take(&fs, LOCK_PF);
	lock_take(&fs, LOCK_FS);
}

static void fs_then_commit(void)
{
	lock_take(&fs, LOCK_FS);
	lock_take(&fs, LOCK_COMMIT);
}

int main(void)
{
#ifdef NDEBUG
	printf("lock order checks are compiled out (NDEBUG): skipped\n");
	return 77;
#endif
	pthread_mutex_init(&fs.lock, NULL);
	pthread_mutex_init(&fs.commit_lock, NULL);
	pthread_mutex_init(&fs.pf_lock, NULL);
	pthread_rwlock_init(&fs.data_lock, NULL);
	lo.ino = 5;
	for (hi.ino = 6; lock_io_stripe(hi.ino) <= lock_io_stripe(lo.ino);)
		hi.ino++;
	for (twin.ino = 6; lock_io_stripe(twin.ino) != lock_io_stripe(lo.ino);)
		twin.ino++;

	CHECK(!aborts(in_order));
	in_order();
	CHECK(aborts(fs_then_data));
	CHECK(aborts(fs_twice));
	CHECK(aborts(data_shared_twice));
	CHECK(aborts(io_high_then_low));
	CHECK(!aborts(io_pairs));
	io_pairs();
	CHECK(aborts(io_twin_twice));
	CHECK(aborts(io_then_data));
	CHECK(aborts(pf_then_fs));
	CHECK(aborts(fs_then_commit));
	if (failures)
		return 1;
	printf("lock order: ok\n");
	return 0;
}
