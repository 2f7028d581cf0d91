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
