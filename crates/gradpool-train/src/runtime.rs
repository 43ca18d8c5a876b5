//! Process-wide settings that make CPU training fast on small machines.
//!
//! None of them changes a result: they only decide how long idle worker
//! threads spin and how the allocator keeps freed memory.

use std::sync::Once;

/// How many times an idle worker of candle's elementwise pool spins before
/// it parks, unless `CANDLE_BARRIER_POOL_SPIN_LIMIT` is set. candle's default
/// (25,000) keeps a worker busy for about a millisecond after every
/// elementwise op, which takes a core away from the matmul threads (a
/// separate pool) when there are no spare cores.
const SPIN_LIMIT: &str = "200";

/// Applies the settings once per process. Call it at the start of `main`,
/// before any other thread exists: it sets an environment variable, which
/// is not safe while other threads may read the environment. Without it
/// training gives the same results, only slower on busy machines.
pub fn configure_process() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        if std::env::var_os("CANDLE_BARRIER_POOL_SPIN_LIMIT").is_none() {
            std::env::set_var("CANDLE_BARRIER_POOL_SPIN_LIMIT", SPIN_LIMIT);
        }
        keep_freed_memory();
    });
}

/// A training step allocates and frees the same few hundred buffers, up to
/// a few MB each. glibc returns large freed blocks to the kernel (`munmap`,
/// heap trimming), so every step page-faults them in again and the kernel
/// zeroes every page. Keeping them in the heap avoids that.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn keep_freed_memory() {
    extern "C" {
        fn mallopt(param: i32, value: i32) -> i32;
    }
    const M_TRIM_THRESHOLD: i32 = -1;
    const M_TOP_PAD: i32 = -2;
    const M_MMAP_THRESHOLD: i32 = -3;
    // SAFETY: mallopt only changes allocator tuning parameters; these
    // values are within glibc's documented ranges.
    unsafe {
        mallopt(M_MMAP_THRESHOLD, 64 << 20);
        mallopt(M_TRIM_THRESHOLD, 512 << 20);
        mallopt(M_TOP_PAD, 16 << 20);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn keep_freed_memory() {}
