//! Training loops: the VAE ([`vae`]) and the denoiser ([`denoiser`]) on the procedural world,
//! the denoiser's progressive distillation ([`distill`]), the evaluator ([`evaluator`]), what
//! they share ([`common`]), and the loss plot ([`plot`]).

pub mod common;
pub mod critic;
pub mod denoiser;
pub mod distill;
pub mod evaluator;
pub mod plot;
pub mod vae;

pub use common::{LrSchedule, Optimisation};
pub use denoiser::{TrainDenoiserOptions, micro_options, micro_pipeline, micro_vae, train_denoiser};
pub use distill::{Agreement, DistillFrom, agreement};
pub use evaluator::{AccuracyReport, TrainEvaluatorOptions, accuracy, load_evaluator, train_evaluator};
pub use plot::{LossRow, Series, read_loss_csv, write_loss_csv, write_loss_plot, write_series_plot};
pub use vae::{Adversarial, DenoisedLatents, RenderedBatch, TrainSummary, TrainVaeOptions, train_vae};
