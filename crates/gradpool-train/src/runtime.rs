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
/// cuBLAS, never in TF32 or reduced precision, whatever the environment
/// says (`NVIDIA_TF32_OVERRIDE=0` also overrides a library that would turn
/// TF32 on); cuBLAS's workspace is a fixed configuration (its documented
/// setting for reproducible results when work shares a stream), unless the
/// owner set one. CUDA numbers the GPUs in PCI bus order, as NVML does, so
/// `--gpu N` is the same GPU to the agent (NVML) and to its segments (CUDA).
#[cfg(feature = "cuda")]
fn pin_gpu_arithmetic() {
    use candle_core::cuda_backend as cuda;
    cuda::set_gemm_reduced_precision_f32(false);
    cuda::set_gemm_reduced_precision_f16(false);
    cuda::set_gemm_reduced_precision_bf16(false);
    std::env::set_var("NVIDIA_TF32_OVERRIDE", "0");
    std::env::set_var("CUDA_DEVICE_ORDER", "PCI_BUS_ID");
    if std::env::var_os("CUBLAS_WORKSPACE_CONFIG").is_none() {
        std::env::set_var("CUBLAS_WORKSPACE_CONFIG", ":4096:8");
    }
}

/// The SM count of GPU `ordinal` (in PCI bus order, as NVML's index; see
/// [`configure_process`]) and the cuBLAS version this build loaded: the
/// part of a GPU's reproducibility class NVML cannot tell. Creates no CUDA
/// context, so it takes no GPU memory.
#[cfg(feature = "cuda")]
pub fn cuda_runtime(
    ordinal: usize,
) -> Result<gradpool_core::hardware::CudaRuntime, crate::TrainError> {
    use candle_core::cuda_backend::cudarc::cublas::sys as cublas;
    use candle_core::cuda_backend::cudarc::driver::{result, sys};
    let failed = |what: &str, e: String| crate::TrainError::Cuda(format!("{what}: {e}"));
    result::init().map_err(|e| failed("init", e.to_string()))?;
    let ordinal =
        i32::try_from(ordinal).map_err(|_| failed("device", format!("no GPU {ordinal}")))?;
    let device = result::device::get(ordinal).map_err(|e| failed("device", e.to_string()))?;
    // SAFETY: `device` is a valid handle from cuDeviceGet after cuInit.
    let sm_count = unsafe {
        result::device::get_attribute(
            device,
            sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT,
        )
    }
    .map_err(|e| failed("attribute", e.to_string()))?;
    let mut parts = [0i32; 3];
    for (part, kind) in parts.iter_mut().zip([
        cublas::libraryPropertyType::MAJOR_VERSION,
        cublas::libraryPropertyType::MINOR_VERSION,
        cublas::libraryPropertyType::PATCH_LEVEL,
    ]) {
        // SAFETY: cublasGetProperty writes one int through a valid pointer
        // and needs no handle.
        let status = unsafe { cublas::cublasGetProperty(kind, part) };
        if status != cublas::cublasStatus_t::CUBLAS_STATUS_SUCCESS {
            return Err(failed("cuBLAS version", format!("{status:?}")));
        }
    }
    Ok(gradpool_core::hardware::CudaRuntime {
        sm_count: u32::try_from(sm_count).unwrap_or(0),
        cublas_version: format!("{}.{}.{}", parts[0], parts[1], parts[2]),
    })
}
