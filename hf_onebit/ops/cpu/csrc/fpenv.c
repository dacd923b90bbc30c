/* Denormal floats flushed to zero on every thread of the kernels' pool.
 *
 * torch.set_flush_denormal changes the control register of the calling thread only; the worker threads of torch's
 * OpenMP pool keep computing with denormals. Inside a torch process the kernels' pool is that same pool (pool.h), so
 * one fork-join here reaches every thread that torch's CPU ops and the kernels run on. Threads the runtime starts
 * later inherit the setting of the thread that starts them. (A build without OpenMP sets its own pthread pool's
 * threads and the calling thread; torch's pool is out of its reach.) */
#include <stdatomic.h>
#include <stdint.h>

#include "onebit.h"
#include "pool.h"

#if defined(__x86_64__) || defined(__i386__)
#include <xmmintrin.h>
#define MXCSR_FTZ_DAZ 0x8040u /* bit 15: results flush to zero; bit 6: denormal inputs read as zero */
static int set_this_thread(int on) {
    const unsigned csr = _mm_getcsr();
    _mm_setcsr(on ? (csr | MXCSR_FTZ_DAZ) : (csr & ~MXCSR_FTZ_DAZ));
    return 1;
}
#elif defined(__aarch64__)
#define FPCR_FZ (UINT64_C(1) << 24) /* flush denormal inputs and results of single and double precision to zero */
static int set_this_thread(int on) {
    uint64_t fpcr;
    __asm__ volatile("mrs %0, fpcr" : "=r"(fpcr));
    fpcr = on ? (fpcr | FPCR_FZ) : (fpcr & ~FPCR_FZ);
    __asm__ volatile("msr fpcr, %0" : : "r"(fpcr));
    return 1;
}
#else
static int set_this_thread(int on) {
    (void)on;
    return 0;
}
#endif

typedef struct {
    int on;
    atomic_int reached;
} fpenv_task;

static void fpenv_task_fn(void *arg, int tid, int nthreads) {
    (void)tid;
    (void)nthreads;
    fpenv_task *task = arg;
    if (set_this_thread(task->on)) atomic_fetch_add(&task->reached, 1);
}

int onebit_set_flush_denormal(int on, int nthreads) {
    fpenv_task task = {.on = on != 0};
    atomic_init(&task.reached, 0);
    onebit_parallel(nthreads, fpenv_task_fn, &task);
    return atomic_load(&task.reached);
}
