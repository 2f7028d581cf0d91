//! Training loops: the VAE on the procedural world ([`vae`]), and the loss plot ([`plot`]).

pub mod plot;
pub mod vae;

pub use plot::{LossRow, read_loss_csv, write_loss_csv, write_loss_plot};
pub use vae::{LrSchedule, TrainSummary, TrainVaeOptions, train_vae};
