/* check.h - what the C tests share: CHECK (prints a failed check with its line and counts it in `failures`)
 * and deterministic xorshift32 test data (rnd, rndf). A test may #define TEST_SEED before including this. */
#ifndef CROME_TESTS_CHECK_H
#define CROME_TESTS_CHECK_H

#include <stdint.h>
#include <stdio.h>

#ifndef TEST_SEED
#define TEST_SEED 12345u
#endif

static int failures = 0;

#define CHECK(cond)                                                                                    \
    do {                                                                                               \
        if (!(cond)) {                                                                                 \
            fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond);                   \
            failures++;                                                                                \
        }                                                                                              \
    } while (0)

static uint32_t rng_state = TEST_SEED;
static inline uint32_t rnd(void) { /* xorshift32 */
    rng_state ^= rng_state << 13, rng_state ^= rng_state >> 17, rng_state ^= rng_state << 5;
    return rng_state;
}
static inline float rndf(void) { return (float)(rnd() % 2000001) / 1e6f - 1.0f; } /* [-1, 1] */

#endif
