//! The trainer's allocator: mimalloc, told never to return freed pages to the OS.
//!
//! candle allocates a new buffer for nearly every op; with glibc, large buffers are mmapped and
//! unmapped each time, and the page faults cost a sixth of a CPU training step.

/// Call once at the start of a binary that trains (before the first large allocation).
pub fn keep_freed_pages() {
    // `mi_option_purge_delay` in mimalloc.h (between eager_commit_delay = 14 and
    // use_numa_nodes = 16, which libmimalloc-sys does export); -1 = never purge.
    const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;
    // SAFETY: sets a process-wide mimalloc option; no memory is touched.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1) };
}
