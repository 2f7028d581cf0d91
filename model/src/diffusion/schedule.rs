//! The noise schedule and the v-prediction algebra, in f64.
//!
//! Variance-preserving diffusion in continuous time: z_t = α_t·x + σ_t·ε with α_t² + σ_t² = 1,
//! t ∈ [0, 1]. The schedule is the cosine one, written through its log signal-to-noise ratio
//! λ(t) = −2·ln tan(π·t/2), shifted for resolution as in *simple diffusion* (Hoogeboom et al.
//! 2023): a frame with more pixels keeps more signal at the same noise level, so its λ is
//! lowered by 2·ln(resolution / base resolution).

use burn::tensor::Tensor;
use burn::tensor::backend::Backend;
use serde::{Deserialize, Serialize};

/// α and σ at one time.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Coefficients {
    pub alpha: f64,
    pub sigma: f64,
}

/// A shifted cosine schedule.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Schedule {
    /// Added to λ(t): `2·ln(base / resolution)`; 0 at the base resolution.
    pub logsnr_shift: f64,
    /// λ is clipped to [logsnr_min, logsnr_max] so t = 0 and t = 1 stay finite.
    pub logsnr_min: f64,
    pub logsnr_max: f64,
}

impl Default for Schedule {
    fn default() -> Self {
        Schedule { logsnr_shift: 0.0, logsnr_min: -15.0, logsnr_max: 15.0 }
    }
}

fn sigmoid(x: f64) -> f64 {
    if x >= 0.0 { 1.0 / (1.0 + (-x).exp()) } else { x.exp() / (1.0 + x.exp()) }
}

impl Schedule {
    /// The schedule for latents `side` wide when `base_side` is the resolution the plain
    /// cosine schedule suits (simple diffusion uses 64 pixels; for latents 8× smaller, 8).
    pub fn for_resolution(side: usize, base_side: usize) -> Schedule {
        Schedule { logsnr_shift: 2.0 * (base_side as f64 / side as f64).ln(), ..Schedule::default() }
    }

    /// log SNR at time `t`.
    pub fn logsnr(&self, t: f64) -> f64 {
        let t = t.clamp(0.0, 1.0);
        let raw = -2.0 * (std::f64::consts::FRAC_PI_2 * t).tan().ln();
        (raw + self.logsnr_shift).clamp(self.logsnr_min, self.logsnr_max)
    }

    /// α_t and σ_t.
    pub fn at(&self, t: f64) -> Coefficients {
        Coefficients::at_logsnr(self.logsnr(t))
    }

    /// The time at which this schedule reaches log SNR `lambda` (the inverse of
    /// [`Schedule::logsnr`] inside its clipping).
    pub fn time_of(&self, lambda: f64) -> f64 {
        (2.0 / std::f64::consts::PI) * (-(lambda - self.logsnr_shift) / 2.0).exp().atan()
    }
}

impl Coefficients {
    /// α and σ of log SNR `lambda`: α² = sigmoid(λ), σ² = sigmoid(−λ).
    pub fn at_logsnr(lambda: f64) -> Coefficients {
        Coefficients { alpha: sigmoid(lambda).sqrt(), sigma: sigmoid(-lambda).sqrt() }
    }
}

/// z_t = α·x + σ·ε.
pub fn noised<B: Backend, const D: usize>(x: Tensor<B, D>, eps: Tensor<B, D>, c: Coefficients) -> Tensor<B, D> {
    x.mul_scalar(c.alpha) + eps.mul_scalar(c.sigma)
}

/// The v-prediction target: v = α·ε − σ·x.
pub fn v_target<B: Backend, const D: usize>(x: Tensor<B, D>, eps: Tensor<B, D>, c: Coefficients) -> Tensor<B, D> {
    eps.mul_scalar(c.alpha) - x.mul_scalar(c.sigma)
}

/// The clean estimate from a v-prediction: x̂ = α·z − σ·v.
pub fn x_from_v<B: Backend, const D: usize>(z: Tensor<B, D>, v: Tensor<B, D>, c: Coefficients) -> Tensor<B, D> {
    z.mul_scalar(c.alpha) - v.mul_scalar(c.sigma)
}

/// The noise estimate from a v-prediction: ε̂ = σ·z + α·v.
pub fn eps_from_v<B: Backend, const D: usize>(z: Tensor<B, D>, v: Tensor<B, D>, c: Coefficients) -> Tensor<B, D> {
    z.mul_scalar(c.sigma) + v.mul_scalar(c.alpha)
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::Flex;
    use burn::tensor::TensorData;

    #[test]
    fn time_of_inverts_the_shifted_schedule() {
        for shift in [0.0, -1.386, -2.77] {
            let schedule = Schedule { logsnr_shift: shift, ..Schedule::default() };
            for lambda in [-9.0, -6.0, -4.0, -2.0, 0.0, 2.0, 4.0, 7.0] {
                let t = schedule.time_of(lambda);
                assert!((0.0..=1.0).contains(&t));
                assert!((schedule.logsnr(t) - lambda).abs() < 1e-9, "shift {shift}, λ {lambda}: t {t}");
                let (c, s) = (Coefficients::at_logsnr(lambda), schedule.at(t));
                assert!((c.alpha - s.alpha).abs() < 1e-9 && (c.sigma - s.sigma).abs() < 1e-9);
            }
        }
    }

    #[test]
    fn the_schedule_runs_from_signal_to_noise() {
        let s = Schedule::default();
        let (start, end) = (s.at(0.0), s.at(1.0));
        assert!(start.alpha > 0.9997 && end.alpha < 1e-3, "{start:?} {end:?}");
        let mut prev = f64::INFINITY;
        for i in 0..=1000 {
            let t = i as f64 / 1000.0;
            let c = s.at(t);
            assert!((c.alpha * c.alpha + c.sigma * c.sigma - 1.0).abs() < 1e-12);
            let l = s.logsnr(t);
            assert!(l <= prev, "λ must not rise");
            prev = l;
        }
        // Unshifted cosine at t = 0.5: α = σ.
        let mid = s.at(0.5);
        assert!((mid.alpha - mid.sigma).abs() < 1e-12);
    }

    #[test]
    fn larger_frames_get_less_signal_at_the_same_time() {
        let base = Schedule::for_resolution(8, 8);
        let big = Schedule::for_resolution(32, 8);
        assert_eq!(base, Schedule::default());
        assert!((base.logsnr(0.5) - big.logsnr(0.5) - 2.0 * 4f64.ln()).abs() < 1e-12);
        assert!(big.at(0.5).alpha < base.at(0.5).alpha);
    }

    #[test]
    fn v_algebra_round_trips() {
        let device = Default::default();
        let x = Tensor::<Flex, 2>::from_data(TensorData::new(vec![0.5f32, -1.0, 0.25, 2.0], [2, 2]), &device);
        let eps = Tensor::<Flex, 2>::from_data(TensorData::new(vec![-0.3f32, 0.8, 1.5, -2.0], [2, 2]), &device);
        for t in [0.05, 0.3, 0.7, 0.99] {
            let c = Schedule::default().at(t);
            let z = noised(x.clone(), eps.clone(), c);
            let v = v_target(x.clone(), eps.clone(), c);
            let x_back = x_from_v(z.clone(), v.clone(), c);
            let eps_back = eps_from_v(z, v, c);
            x_back.into_data().assert_approx_eq::<f32>(&x.clone().into_data(), burn::tensor::Tolerance::absolute(1e-5));
            eps_back
                .into_data()
                .assert_approx_eq::<f32>(&eps.clone().into_data(), burn::tensor::Tolerance::absolute(1e-5));
        }
    }
}
