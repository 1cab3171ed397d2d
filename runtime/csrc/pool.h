/* pool.h - internal side of crome_pool (pool.c): run one function on every thread of a pool, with a
 * barrier usable inside it. Not part of the public ABI. */
#ifndef CROME_POOL_H
#define CROME_POOL_H

#include "crome_core.h"

/* fn(ctx, thread, n_threads) on every thread of the pool (thread 0 is the caller); returns when all are
 * done. pool NULL runs fn(ctx, 0, 1) on the caller. */
typedef void (*crome_pool_fn)(void *ctx, int thread, int n_threads);
void crome_pool_run(crome_pool *pool, crome_pool_fn fn, void *ctx);

/* Every thread of the running job waits here until all have arrived (no-op for one thread). */
void crome_pool_barrier(crome_pool *pool);

/* [begin, end) of n items for `thread` of n_threads, in contiguous near-equal chunks of `grain` items. */
static inline void crome_split(int64_t n, int64_t grain, int thread, int n_threads, int64_t *begin, int64_t *end) {
    const int64_t units = (n + grain - 1) / grain;
    const int64_t u0 = units * thread / n_threads, u1 = units * (thread + 1) / n_threads;
    *begin = u0 * grain < n ? u0 * grain : n;
    *end = u1 * grain < n ? u1 * grain : n;
}

#endif /* CROME_POOL_H */
