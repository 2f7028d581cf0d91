//! endless-model: the procedural world, the video models, samplers and training.
//!
//! The library and the training CLI build without GStreamer (the GPU machines have none);
//! MP4 writing is behind the `gst` feature.

pub mod checkpoint;
pub mod cpu;
pub mod data;
pub mod device;
pub mod diffusion;
pub mod dit;
pub mod eval;
pub mod media;
pub mod pipeline;
pub mod rolling;
pub mod text;
pub mod train;
pub mod vae;
#[cfg(feature = "gst")]
pub mod videos;
pub mod world;

/// A trainable parameter holding `value`, which may have been computed from other parameters
/// (growing a trained model: [`vae::Encoder::with_latent_channels`],
/// [`dit::Denoiser::with_latent_channels`]).
pub(crate) fn grown_param<B: burn::tensor::backend::Backend, const D: usize>(
    value: burn::tensor::Tensor<B, D>,
) -> burn::module::Param<burn::tensor::Tensor<B, D>> {
    burn::module::Param::from_tensor(value.detach())
}
