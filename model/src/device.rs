//! Which device the models run on: chosen at run time from config or a flag.
//!
//! `auto` takes the GPU when this build has the `cuda` feature and a CUDA device answers,
//! else the CPU (burn's `flex` backend), and says so in a log line.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// A device as configured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeviceKind {
    /// The GPU if there is one, else the CPU.
    #[default]
    Auto,
    /// The CPU, burn's `flex` backend.
    Cpu,
    /// NVIDIA GPU 0 through burn's `cuda` backend (needs the `cuda` feature).
    Cuda,
}

impl FromStr for DeviceKind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(DeviceKind::Auto),
            "cpu" => Ok(DeviceKind::Cpu),
            "cuda" => Ok(DeviceKind::Cuda),
            other => Err(format!("unknown device {other:?}: auto, cpu or cuda")),
        }
    }
}

impl fmt::Display for DeviceKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DeviceKind::Auto => "auto",
            DeviceKind::Cpu => "cpu",
            DeviceKind::Cuda => "cuda",
        })
    }
}

/// The device that will actually be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resolved {
    Cpu,
    Cuda,
}

/// Whether a CUDA device answers (always false without the `cuda` feature).
pub fn cuda_available() -> bool {
    #[cfg(feature = "cuda")]
    {
        use burn::backend::Cuda;
        use burn::tensor::Tensor;
        // burn's CUDA runtime panics when no driver or device is found.
        std::panic::catch_unwind(|| {
            let device = burn::backend::cuda::CudaDevice::default();
            let t = Tensor::<Cuda, 1>::ones([4], &device);
            t.sum().into_scalar() == 4.0
        })
        .unwrap_or(false)
    }
    #[cfg(not(feature = "cuda"))]
    {
        false
    }
}

/// Resolves `kind` for this build and machine.
///
/// # Errors
/// When `cuda` is asked for and this build or machine has none.
pub fn resolve(kind: DeviceKind) -> Result<Resolved, String> {
    match kind {
        DeviceKind::Cpu => Ok(Resolved::Cpu),
        DeviceKind::Cuda if cfg!(feature = "cuda") && cuda_available() => Ok(Resolved::Cuda),
        DeviceKind::Cuda if cfg!(feature = "cuda") => Err("device \"cuda\": no CUDA device answered".into()),
        DeviceKind::Cuda => Err("device \"cuda\": this build has no CUDA support (build with --features cuda)".into()),
        DeviceKind::Auto if cfg!(feature = "cuda") && cuda_available() => {
            tracing::info!("device auto: using the CUDA GPU");
            Ok(Resolved::Cuda)
        }
        DeviceKind::Auto => {
            let why = if cfg!(feature = "cuda") { "no CUDA device answered" } else { "this build has no CUDA support" };
            tracing::info!("device auto: {why}; using the CPU (flex backend)");
            Ok(Resolved::Cpu)
        }
    }
}

/// The device's measured peak: GFLOP/s of `reps` products of two `n × n` f32 matrices (after
/// one unmeasured warm-up), the denominator of model FLOP utilisation.
pub fn peak_matmul_gflops<B: burn::tensor::backend::Backend>(device: &B::Device, n: usize, reps: usize) -> f64 {
    use burn::tensor::{Distribution, Tensor};
    let a = Tensor::<B, 2>::random([n, n], Distribution::Uniform(-1.0, 1.0), device);
    let b = Tensor::<B, 2>::random([n, n], Distribution::Uniform(-1.0, 1.0), device);
    let _ = a.clone().matmul(b.clone()).sum().into_scalar();
    let _ = B::sync(device);
    let started = std::time::Instant::now();
    let mut acc = Tensor::<B, 2>::zeros([n, n], device);
    for _ in 0..reps.max(1) {
        acc = acc + a.clone().matmul(b.clone());
    }
    let _ = acc.sum().into_scalar();
    let _ = B::sync(device);
    2.0 * (n as f64).powi(3) * reps.max(1) as f64 / started.elapsed().as_secs_f64() / 1e9
}

/// [`peak_matmul_gflops`] on a resolved device (4096², 16 products on a GPU; 1024², 4 on the CPU).
pub fn peak_gflops(device: Resolved) -> f64 {
    match device {
        Resolved::Cpu => peak_matmul_gflops::<burn::backend::Flex>(&Default::default(), 1024, 4),
        #[cfg(feature = "cuda")]
        Resolved::Cuda => peak_matmul_gflops::<burn::backend::Cuda>(&Default::default(), 4096, 16),
        #[cfg(not(feature = "cuda"))]
        Resolved::Cuda => unreachable!("without the cuda feature nothing resolves to cuda"),
    }
}
