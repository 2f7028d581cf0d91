//! Diffusion apart from the network: the noise schedule, the v-prediction algebra (in f64),
//! DDIM sampling with classifier-free guidance, and deterministic per-session noise.

mod sampler;
mod schedule;

pub use sampler::{Ddim, Guidance, Step, gaussian, gaussian_tensor};
pub use schedule::{Coefficients, Schedule, eps_from_v, noised, v_target, x_from_v};
