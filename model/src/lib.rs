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
