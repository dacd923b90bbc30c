/* The kernels' fork-join (see pool.h): OpenMP where the compiler has it, else persistent pthreads. */
#include "pool.h"

#ifdef _OPENMP
#include <omp.h>
#include <pthread.h>

/* GNU libgomp cannot start a parallel region in a child forked from a process that used its threads (the child hangs).
 * torch's own CPU ops have the same limit; a forked child (DataLoader workers, multiprocessing) runs the kernels on
 * its one thread instead. */
static volatile int forked_child;
static void mark_child(void) { forked_child = 1; }
__attribute__((constructor)) static void install_fork_handler(void) { pthread_atfork(NULL, NULL, mark_child); }

int onebit_parallel(int nthreads, onebit_task_fn fn, void *arg) {
    if (nthreads <= 1 || forked_child) {
        fn(arg, 0, 1);
        return 1;
    }
    int used = 1;
#pragma omp parallel num_threads(nthreads)
    {
        const int n = omp_get_num_threads();
#pragma omp single
        used = n;
        fn(arg, omp_get_thread_num(), n);
    }
    return used;
}

#else /* no OpenMP: a small pool of our own */

#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <time.h>

#define MAX_WORKERS 255
/* How long a waiting thread polls before it sleeps. Consecutive kernel calls of a model's forward (decode) are a few
 * tens of microseconds apart; a sleeping thread takes ~50-100 us to wake in a VM. The polling loop does not use
 * PAUSE: under KVM a PAUSE loop exits to the hypervisor (pause-loop exiting), which is exactly the latency we avoid. */
#define SPIN_NS 200000

static inline uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* Poll `value` until it differs from `unwanted` or SPIN_NS pass; returns the last value read. */
static unsigned poll_uint(atomic_uint *value, unsigned unwanted) {
    const uint64_t deadline = now_ns() + SPIN_NS;
    for (;;) {
        for (int i = 0; i < 256; ++i) {
            const unsigned v = atomic_load_explicit(value, memory_order_acquire);
            if (v != unwanted) return v;
        }
        if (now_ns() > deadline) return unwanted;
    }
}

static int poll_int_zero(atomic_int *value) {
    const uint64_t deadline = now_ns() + SPIN_NS;
    for (;;) {
        for (int i = 0; i < 256; ++i)
            if (atomic_load_explicit(value, memory_order_acquire) <= 0) return 1;
        if (now_ns() > deadline) return 0;
    }
}

static struct {
    pthread_mutex_t dispatch; /* one parallel call at a time */
    pthread_mutex_t mu;
    pthread_cond_t start, done;
    atomic_uint generation;
    atomic_int pending;
    unsigned start_gen; /* generation before the dispatch that starts a worker: its first one to run */
    int workers;        /* started so far */
    int active;  /* threads taking part in the current generation (tid < active) */
    onebit_task_fn fn;
    void *arg;
} pool = {.dispatch = PTHREAD_MUTEX_INITIALIZER,
        .mu = PTHREAD_MUTEX_INITIALIZER,
        .start = PTHREAD_COND_INITIALIZER,
        .done = PTHREAD_COND_INITIALIZER};

static pthread_once_t fork_handler_once = PTHREAD_ONCE_INIT;

/* A forked child has only the forking thread: forget the workers (they do not exist there) and reset the locks. */
static void reset_in_child(void) {
    pthread_mutex_init(&pool.dispatch, NULL);
    pthread_mutex_init(&pool.mu, NULL);
    pthread_cond_init(&pool.start, NULL);
    pthread_cond_init(&pool.done, NULL);
    pool.workers = 0;
    atomic_store(&pool.pending, 0);
}

static void install_fork_handler(void) { pthread_atfork(NULL, NULL, reset_in_child); }

static void *worker_main(void *p) {
    const int tid = (int)(intptr_t)p;
    /* set before this thread was created, by the dispatch that is waiting for it (so it cannot change yet) */
    unsigned seen = pool.start_gen;
    for (;;) {
        unsigned gen = poll_uint(&pool.generation, seen);
        if (gen == seen) {
            pthread_mutex_lock(&pool.mu);
            while ((gen = atomic_load_explicit(&pool.generation, memory_order_acquire)) == seen)
                pthread_cond_wait(&pool.start, &pool.mu);
            pthread_mutex_unlock(&pool.mu);
        }
        seen = gen;
        if (tid < pool.active) pool.fn(pool.arg, tid, pool.active);
        if (atomic_fetch_sub_explicit(&pool.pending, 1, memory_order_acq_rel) == 1) {
            pthread_mutex_lock(&pool.mu);
            pthread_cond_signal(&pool.done);
            pthread_mutex_unlock(&pool.mu);
        }
    }
    return NULL;
}

int onebit_parallel(int nthreads, onebit_task_fn fn, void *arg) {
    if (nthreads > MAX_WORKERS + 1) nthreads = MAX_WORKERS + 1;
    if (nthreads <= 1) {
        fn(arg, 0, 1);
        return 1;
    }
    pthread_once(&fork_handler_once, install_fork_handler);
    pthread_mutex_lock(&pool.dispatch);
    pool.start_gen = atomic_load_explicit(&pool.generation, memory_order_relaxed);
    while (pool.workers < nthreads - 1) {
        pthread_t thread;
        pthread_attr_t attr;
        pthread_attr_init(&attr);
        pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
        const int ok = pthread_create(&thread, &attr, worker_main, (void *)(intptr_t)(pool.workers + 1)) == 0;
        pthread_attr_destroy(&attr);
        if (!ok) break;
        ++pool.workers;
    }
    const int used = pool.workers + 1 < nthreads ? pool.workers + 1 : nthreads;
    pool.fn = fn;
    pool.arg = arg;
    pool.active = used;
    atomic_store_explicit(&pool.pending, pool.workers, memory_order_relaxed);
    pthread_mutex_lock(&pool.mu);
    atomic_fetch_add_explicit(&pool.generation, 1, memory_order_release);
    pthread_cond_broadcast(&pool.start);
    pthread_mutex_unlock(&pool.mu);

    fn(arg, 0, used);

    if (!poll_int_zero(&pool.pending)) {
        pthread_mutex_lock(&pool.mu);
        while (atomic_load_explicit(&pool.pending, memory_order_acquire) > 0) pthread_cond_wait(&pool.done, &pool.mu);
        pthread_mutex_unlock(&pool.mu);
    }
    pthread_mutex_unlock(&pool.dispatch);
    return used;
}

#endif
