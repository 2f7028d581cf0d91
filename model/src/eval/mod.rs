//! Measuring the models: VAE reconstruction, the attribute evaluator (a small 3D CNN trained
//! on world clips) and the generation metrics built on it.

pub mod classifier;
pub mod frechet;
pub mod generation;
pub mod loss;
pub mod motion;
pub mod vae;

pub use classifier::{Confusion, Evaluator, EvaluatorConfig, Reading};
pub use frechet::frechet_distance;
pub use generation::{GenerationEvalOptions, GenerationReport, Streams, cases_of, evaluate_generation, held_out_cases};
pub use loss::{LossEvalOptions, LossReport, evaluate_loss};
pub use motion::{camera_velocity, horizontal_shift};
pub use vae::{VaeReport, evaluate_vae, mse_u8, psnr};
