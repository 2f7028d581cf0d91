//! Measuring the models: VAE reconstruction, the attribute evaluator (a small 3D CNN trained
//! on world clips) and the generation metrics built on it.

pub mod vae;

pub use vae::{VaeReport, evaluate_vae, mse_u8, psnr};
