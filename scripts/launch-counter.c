/* Counts CUDA kernel launches for the trainer's --profile: preloaded into the trainer
 * (LD_PRELOAD=liblaunchcount.so), it wraps the driver's cuLaunchKernel and cuLaunchKernelEx (every
 * launch candle and maskrate's own kernels make, through cudarc) and exports
 * maskrate_kernel_launches(), which the profiler reads at each step's boundaries. cuBLAS's
 * launches go through the runtime's own entry points and are not counted (a few per matrix
 * product). Build: cc -O2 -shared -fPIC -o liblaunchcount.so launch-counter.c -ldl */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdint.h>

typedef int CUresult;
typedef void *CUfunction;
typedef void *CUstream;

static uint64_t launches;

uint64_t maskrate_kernel_launches(void) { return __atomic_load_n(&launches, __ATOMIC_RELAXED); }

CUresult cuLaunchKernel(CUfunction f, unsigned gx, unsigned gy, unsigned gz, unsigned bx,
                        unsigned by, unsigned bz, unsigned shared, CUstream stream, void **params,
                        void **extra) {
    static CUresult (*real)(CUfunction, unsigned, unsigned, unsigned, unsigned, unsigned,
                            unsigned, unsigned, CUstream, void **, void **);
    if (!real) *(void **)&real = dlsym(RTLD_NEXT, "cuLaunchKernel");
    __atomic_add_fetch(&launches, 1, __ATOMIC_RELAXED);
    return real(f, gx, gy, gz, bx, by, bz, shared, stream, params, extra);
}

CUresult cuLaunchKernelEx(const void *config, CUfunction f, void **params, void **extra) {
    static CUresult (*real)(const void *, CUfunction, void **, void **);
    if (!real) *(void **)&real = dlsym(RTLD_NEXT, "cuLaunchKernelEx");
    __atomic_add_fetch(&launches, 1, __ATOMIC_RELAXED);
    return real(config, f, params, extra);
}
