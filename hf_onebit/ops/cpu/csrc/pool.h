/* A small persistent thread pool (pthreads) for the kernels.
 *
 * Why not OpenMP: torch's libgomp is shared with us and spins while it waits; on a machine whose cores are also used
 * by other processes (or by torch's own threads between our calls) the spinning threads take the CPU from the thread
 * doing the work, and a 50 us call can take milliseconds. Workers here spin only briefly, then sleep. */
#ifndef HF_ONEBIT_POOL_H
#define HF_ONEBIT_POOL_H

typedef void (*onebit_task_fn)(void *arg, int tid, int nthreads);

/* Run fn(arg, t, used) for t = 0 .. used - 1 (t = 0 on the calling thread) and return `used` when all have returned.
 * used = nthreads unless a worker thread could not be started; fn must split its work by the count it is given.
 * Calls from several threads at once are serialised. */
int onebit_parallel(int nthreads, onebit_task_fn fn, void *arg);

#endif
