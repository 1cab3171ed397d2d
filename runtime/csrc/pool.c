/* pool.c - crome_pool: a small pthread pool for the decode kernels (crome_qmatvec, crome_llm_step).
 *
 * A decode step is hundreds of short jobs and barriers (each well under 100 us), so waking sleeping threads
 * per job would cost more than the work: after a job, idle workers spin on the job counter for SPIN_NS,
 * then sleep on a condition variable; barriers spin (yielding the core now and then, since other processes
 * may share it). Not here: what the jobs compute.
 */
#define _POSIX_C_SOURCE 200809L
#include "pool.h"

#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <time.h>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define CPU_RELAX() _mm_pause()
#elif defined(__aarch64__)
#define CPU_RELAX() __asm__ __volatile__("yield")
#else
#define CPU_RELAX() ((void)0)
#endif

enum { MAX_THREADS = 256 };
static const int64_t SPIN_NS = 2000000; /* idle workers poll for 2 ms after a job, then sleep */

struct crome_pool {
    int n;
    pthread_t *threads;
    pthread_mutex_t run_lock; /* one job at a time */
    pthread_mutex_t lock;     /* guards sleeping and the condition variable */
    pthread_cond_t wake;
    int sleeping;
    _Atomic uint64_t job;     /* bumped per job (under lock, so a sleeper cannot miss it) */
    _Atomic int done;         /* workers (not the caller) finished with the current job */
    _Atomic int stop;
    _Atomic int arrived;      /* barrier */
    _Atomic uint64_t phase;
    crome_pool_fn fn;
    void *ctx;
    int started;              /* threads created so far (for cleanup after a failed init) */
};

typedef struct worker_arg {
    crome_pool *pool;
    int thread;
} worker_arg;

static int64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* Waits for the job counter to move past `seen`; returns the new value (or seen when stopping). */
static uint64_t wait_job(crome_pool *p, uint64_t seen) {
    int64_t start = 0;
    for (unsigned i = 0;; i++) {
        if (atomic_load_explicit(&p->stop, memory_order_acquire)) return seen;
        const uint64_t job = atomic_load_explicit(&p->job, memory_order_acquire);
        if (job != seen) return job;
        CPU_RELAX();
        if ((i & 255) == 255) {
            const int64_t t = now_ns();
            if (!start) start = t;
            else if (t - start > SPIN_NS) break;
        }
    }
    pthread_mutex_lock(&p->lock);
    uint64_t job;
    while ((job = atomic_load_explicit(&p->job, memory_order_acquire)) == seen &&
           !atomic_load_explicit(&p->stop, memory_order_acquire)) {
        p->sleeping++;
        pthread_cond_wait(&p->wake, &p->lock);
        p->sleeping--;
    }
    pthread_mutex_unlock(&p->lock);
    return job;
}

static void *worker(void *arg) {
    worker_arg *w = arg;
    crome_pool *p = w->pool;
    const int thread = w->thread;
    free(w);
    uint64_t seen = 0;
    for (;;) {
        const uint64_t job = wait_job(p, seen);
        if (job == seen) break; /* stopping */
        seen = job;
        p->fn(p->ctx, thread, p->n);
        atomic_fetch_add_explicit(&p->done, 1, memory_order_acq_rel);
    }
    return NULL;
}

void crome_pool_free(crome_pool *p) {
    if (!p) return;
    pthread_mutex_lock(&p->lock);
    atomic_store_explicit(&p->stop, 1, memory_order_release);
    pthread_cond_broadcast(&p->wake);
    pthread_mutex_unlock(&p->lock);
    for (int i = 0; i < p->started; i++) pthread_join(p->threads[i], NULL);
    pthread_cond_destroy(&p->wake);
    pthread_mutex_destroy(&p->lock);
    pthread_mutex_destroy(&p->run_lock);
    free(p->threads);
    free(p);
}

crome_status crome_pool_init(int32_t n_threads, crome_pool **out) {
    if (!out) return CROME_ERR_NULL;
    *out = NULL;
    if (n_threads < 1 || n_threads > MAX_THREADS) return CROME_ERR_PARAM;
    crome_pool *p = calloc(1, sizeof *p);
    if (!p) return CROME_ERR_NOMEM;
    p->n = n_threads;
    pthread_mutex_init(&p->run_lock, NULL);
    pthread_mutex_init(&p->lock, NULL);
    pthread_cond_init(&p->wake, NULL);
    p->threads = calloc((size_t)n_threads, sizeof *p->threads);
    if (!p->threads) {
        crome_pool_free(p);
        return CROME_ERR_NOMEM;
    }
    for (int i = 1; i < n_threads; i++) {
        worker_arg *w = malloc(sizeof *w);
        if (!w) {
            crome_pool_free(p);
            return CROME_ERR_NOMEM;
        }
        w->pool = p, w->thread = i;
        if (pthread_create(&p->threads[p->started], NULL, worker, w) != 0) {
            free(w);
            crome_pool_free(p);
            return CROME_ERR_NOMEM;
        }
        p->started++;
    }
    *out = p;
    return CROME_OK;
}

int32_t crome_pool_threads(const crome_pool *p) { return p ? p->n : 1; }

void crome_pool_run(crome_pool *p, crome_pool_fn fn, void *ctx) {
    if (!p || p->n == 1) {
        fn(ctx, 0, 1);
        return;
    }
    pthread_mutex_lock(&p->run_lock);
    p->fn = fn, p->ctx = ctx;
    atomic_store_explicit(&p->done, 0, memory_order_relaxed);
    atomic_store_explicit(&p->arrived, 0, memory_order_relaxed);
    pthread_mutex_lock(&p->lock);
    atomic_fetch_add_explicit(&p->job, 1, memory_order_acq_rel);
    if (p->sleeping) pthread_cond_broadcast(&p->wake);
    pthread_mutex_unlock(&p->lock);
    fn(ctx, 0, p->n);
    for (unsigned i = 0; atomic_load_explicit(&p->done, memory_order_acquire) != p->n - 1; i++) {
        CPU_RELAX();
        if ((i & 1023) == 1023) sched_yield();
    }
    pthread_mutex_unlock(&p->run_lock);
}

void crome_pool_barrier(crome_pool *p) {
    if (!p || p->n == 1) return;
    const uint64_t phase = atomic_load_explicit(&p->phase, memory_order_acquire);
    if (atomic_fetch_add_explicit(&p->arrived, 1, memory_order_acq_rel) == p->n - 1) {
        atomic_store_explicit(&p->arrived, 0, memory_order_relaxed);
        atomic_store_explicit(&p->phase, phase + 1, memory_order_release);
        return;
    }
    for (unsigned i = 0; atomic_load_explicit(&p->phase, memory_order_acquire) == phase; i++) {
        CPU_RELAX();
        if ((i & 1023) == 1023) sched_yield();
    }
}
