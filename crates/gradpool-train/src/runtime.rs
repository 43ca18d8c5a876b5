//! Process-wide settings: what makes CPU training fast on small machines,
//! and, in a CUDA build, what keeps GPU training bit-exact.
//!
//! The CPU settings change no result: they only decide how long idle
//! worker threads spin and how the allocator keeps freed memory.
//!
//! GPU determinism (see ARCHITECTURE.md, "Determinism on a GPU"): every
//! candle CUDA kernel a GPT or MLP step uses reduces in a fixed order —
//! sums and max/min go through `fast_sum`-style block reductions (one block
//! per output, a fixed tree), softmax and the norms likewise, and the
//! backward of an embedding lookup (`index_add`) gives each output element
//! to one thread that adds the rows in index order; none uses atomics.
//! (candle's other, atomic `sum_*` kernels are not on these paths.) The
//! matrix products go to cuBLAS, which is bit-reproducible run to run on
//! one GPU model and library version when nothing lets it trade precision:
//! [`configure_process`] pins f32 products to f32 accumulation (no TF32;
//! candle's default, pinned so that nothing turns it on) and gives cuBLAS a
//! fixed workspace configuration.

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
        #[cfg(feature = "cuda")]
        pin_gpu_arithmetic();
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

/// f32 (and f16, bf16) matrix products accumulate at full precision on
/// cuBLAS, never in TF32 or reduced precision; cuBLAS's workspace is a
/// fixed configuration (its documented setting for reproducible results
/// when work shares a stream), unless the owner set one.
#[cfg(feature = "cuda")]
fn pin_gpu_arithmetic() {
    use candle_core::cuda_backend as cuda;
    cuda::set_gemm_reduced_precision_f32(false);
    cuda::set_gemm_reduced_precision_f16(false);
    cuda::set_gemm_reduced_precision_bf16(false);
    if std::env::var_os("CUBLAS_WORKSPACE_CONFIG").is_none() {
        std::env::set_var("CUBLAS_WORKSPACE_CONFIG", ":4096:8");
    }
}
