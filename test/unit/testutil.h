/*
 * testutil.h - what the C unit tests share: CHECK macros, a seeded PRNG
 * (splitmix64) that reproduces a run from its printed seed, and the seed's
 * setup.  Each test defines fail_exit() to say where it failed.
 */
#ifndef COWFS_TESTUTIL_H
#define COWFS_TESTUTIL_H

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static uint64_t seed;
static uint64_t rng_state;

/* Defined by each test: report the failure's context and exit(1). */
static void fail_exit(void);

#define CHECK(cond)                                                         \
	do {                                                                \
		if (!(cond)) {                                              \
			fprintf(stderr, "%s:%d: CHECK failed: %s\n",        \
				__FILE__, __LINE__, #cond);                 \
			fail_exit();                                        \
		}                                                           \
	} while (0)

#define CHECKF(cond, ...)                                                   \
	do {                                                                \
		if (!(cond)) {                                              \
			fprintf(stderr, "%s:%d: CHECK failed: %s: ",        \
				__FILE__, __LINE__, #cond);                 \
			fprintf(stderr, __VA_ARGS__);                       \
			fputc('\n', stderr);                                \
			fail_exit();                                        \
		}                                                           \
	} while (0)

static inline uint64_t rnd(void)
{
	uint64_t z = (rng_state += 0x9E3779B97F4A7C15ull);
	z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
	z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
	return z ^ (z >> 31);
}

/* Uniform in [0, n); n > 0. */
static inline uint64_t rndn(uint64_t n)
{
	return rnd() % n;
}

static inline void rnd_bytes(void *p, size_t n)
{
	unsigned char *b = p;
	size_t i = 0;
	for (; i + 8 <= n; i += 8) {
		uint64_t v = rnd();
		memcpy(b + i, &v, 8);
	}
	for (; i < n; i++)
		b[i] = (unsigned char)rnd();
}

/* The seed: $TEST_SEED, else the time and pid; printed for a rerun. */
static inline void init_seed(const char *name)
{
	const char *s = getenv("TEST_SEED");
	if (s && *s)
		seed = strtoull(s, NULL, 0);
	else
		seed = (uint64_t)time(NULL) ^ ((uint64_t)getpid() << 32);
	rng_state = seed;
	printf("%s: seed %" PRIu64 "\n", name, seed);
	fflush(stdout);
}

#endif
