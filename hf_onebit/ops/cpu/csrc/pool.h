/* Fork-join for the kernels.
 *
 * With OpenMP (the normal build) this is an `omp parallel` region. Loaded into a torch process, the library resolves
 * libgomp.so.1 to the copy torch already loaded, so the kernels run on torch's own worker threads: one pool, whose
 * threads are still spinning from torch's previous op when our call arrives. A separate pool would compete with
 * torch's spinning threads for the cores (measured: half the decode time lost on 2 cores). libgomp cannot run a parallel
 * region in a forked child of a process that used it, so a forked child runs the kernels single-threaded.
 * Without OpenMP (e.g. Apple clang) a small pthread pool of our own is used: persistent workers that poll briefly
 * without PAUSE, then sleep on a condition variable; a pthread_atfork handler resets it in a forked child. */
#ifndef HF_ONEBIT_POOL_H
#define HF_ONEBIT_POOL_H

typedef void (*onebit_task_fn)(void *arg, int tid, int nthreads);

/* Run fn(arg, t, used) for t = 0 .. used - 1 (t = 0 on the calling thread) and return `used` when all have returned.
 * used can be smaller than nthreads (the runtime gave fewer threads, or a worker could not be started); fn must split
 * its work by the count it is given (the kernels hand out work through atomic counters, so any count works). */
int onebit_parallel(int nthreads, onebit_task_fn fn, void *arg);

#endif
