//! DDIM sampling with classifier-free guidance, and the deterministic noise it draws.
//!
//! The network is a closure `(z_t, t, self_cond) -> v̂` that has already combined its
//! guided passes ([`Guidance::combine`]); the sampler only walks the time grid, so the same
//! code serves one session or a batch of many.

use super::schedule::{Coefficients, Schedule, eps_from_v, x_from_v};
use crate::world::noise_hash;
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};
use serde::{Deserialize, Serialize};

/// Standard normal numbers from a counter-based generator: element `i` of stream
/// (`seed`, `stream`) is the same whatever else is drawn, so a session's noise never depends
/// on which other sessions share its batch.
pub fn gaussian(seed: u64, stream: u64, n: usize) -> Vec<f32> {
    let uniform = |i: u64| {
        // 53 random bits in (0, 1].
        ((noise_hash(seed, stream as i64, i as i64) >> 11) as f64 + 1.0) / (1u64 << 53) as f64
    };
    (0..n.div_ceil(2) as u64)
        .flat_map(|k| {
            // Box–Muller.
            let (u1, u2) = (uniform(2 * k), uniform(2 * k + 1));
            let r = (-2.0 * u1.ln()).sqrt();
            let a = std::f64::consts::TAU * u2;
            [(r * a.cos()) as f32, (r * a.sin()) as f32]
        })
        .take(n)
        .collect()
}

/// A tensor of standard normal noise of `shape` from stream (`seed`, `stream`).
pub fn gaussian_tensor<B: Backend, const D: usize>(
    seed: u64,
    stream: u64,
    shape: [usize; D],
    device: &B::Device,
) -> Tensor<B, D> {
    let n = shape.iter().product();
    Tensor::from_data(TensorData::new(gaussian(seed, stream, n), shape), device)
}

/// Classifier-free guidance scales, one per condition, composed: first the past frames
/// over nothing, then the text over the past frames.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Guidance {
    /// Weight of the text condition (1: no guidance).
    pub text: f64,
    /// Weight of the past-frame condition (1: no guidance).
    pub context: f64,
}

impl Default for Guidance {
    fn default() -> Self {
        Guidance { text: 3.0, context: 1.5 }
    }
}

impl Guidance {
    /// No guidance: one conditional pass.
    pub const NONE: Guidance = Guidance { text: 1.0, context: 1.0 };

    /// v̂ = v(∅,∅) + w_ctx·(v(ctx,∅) − v(∅,∅)) + w_text·(v(ctx,text) − v(ctx,∅)).
    ///
    /// `null`: neither condition; `context_only`: past frames, no text; `full`: both.
    pub fn combine<B: Backend, const D: usize>(
        &self,
        null: Tensor<B, D>,
        context_only: Tensor<B, D>,
        full: Tensor<B, D>,
    ) -> Tensor<B, D> {
        let context_gain = context_only.clone() - null.clone();
        let text_gain = full - context_only;
        null + context_gain.mul_scalar(self.context) + text_gain.mul_scalar(self.text)
    }

    /// Whether one conditional pass is enough (both scales 1).
    pub fn is_unguided(&self) -> bool {
        self.text == 1.0 && self.context == 1.0
    }
}

/// The DDIM sampler.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Ddim {
    pub schedule: Schedule,
    /// Denoising steps.
    pub steps: usize,
    /// 0: deterministic DDIM; 1: as stochastic as ancestral sampling.
    pub eta: f64,
}

/// One step's times and coefficients.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Step {
    pub index: usize,
    pub t: f64,
    pub t_next: f64,
    pub now: Coefficients,
    pub next: Coefficients,
}

impl Ddim {
    /// The time grid, from 1 (pure noise) down to 0, evenly spaced.
    pub fn steps(&self) -> Vec<Step> {
        let n = self.steps.max(1);
        (0..n)
            .map(|i| {
                let t = 1.0 - i as f64 / n as f64;
                let t_next = 1.0 - (i + 1) as f64 / n as f64;
                Step { index: i, t, t_next, now: self.schedule.at(t), next: self.schedule.at(t_next) }
            })
            .collect()
    }

    /// One DDIM update from `z` at `step.t` to `step.t_next`, given the network's v̂. Returns
    /// (z_next, x̂). `noise` is needed only when η > 0 (fresh standard normal noise).
    pub fn update<B: Backend, const D: usize>(
        &self,
        z: Tensor<B, D>,
        v: Tensor<B, D>,
        step: &Step,
        noise: Option<Tensor<B, D>>,
    ) -> (Tensor<B, D>, Tensor<B, D>) {
        let x = x_from_v(z.clone(), v.clone(), step.now);
        let eps = eps_from_v(z, v, step.now);
        let (a_next, s_next, s_now, a_now) = (step.next.alpha, step.next.sigma, step.now.sigma, step.now.alpha);
        // σ of the fresh noise (Song et al. 2021, eq. 16), 0 for η = 0.
        let c = if self.eta > 0.0 && step.t_next > 0.0 {
            self.eta
                * ((s_next * s_next) / (s_now * s_now) * (1.0 - (a_now * a_now) / (a_next * a_next))).max(0.0).sqrt()
        } else {
            0.0
        };
        let direction = (s_next * s_next - c * c).max(0.0).sqrt();
        let mut z_next = x.clone().mul_scalar(a_next) + eps.mul_scalar(direction);
        if c > 0.0 {
            let noise = noise.expect("η > 0 needs fresh noise for every step");
            z_next = z_next + noise.mul_scalar(c);
        }
        (z_next, x)
    }

    /// Samples from `z` (pure noise at t = 1). `network(z_t, t, self_cond)` returns v̂, with
    /// `self_cond` the previous step's x̂ (None at the first step); `noise(step)` gives fresh
    /// noise when η > 0; `on_step` sees every step's x̂ (for streaming and progress).
    pub fn sample<B: Backend, const D: usize>(
        &self,
        z: Tensor<B, D>,
        network: impl FnMut(Tensor<B, D>, f64, Option<Tensor<B, D>>) -> Tensor<B, D>,
        noise: impl FnMut(usize) -> Tensor<B, D>,
        on_step: impl FnMut(&Step, &Tensor<B, D>),
    ) -> Tensor<B, D> {
        self.sample_from(0, z, network, noise, on_step)
    }

    /// [`Ddim::sample`] from step `first` of the grid on: `z` is at that step's time (SDEdit,
    /// Meng et al. 2022: data noised part of the way, then denoised the rest).
    pub fn sample_from<B: Backend, const D: usize>(
        &self,
        first: usize,
        mut z: Tensor<B, D>,
        mut network: impl FnMut(Tensor<B, D>, f64, Option<Tensor<B, D>>) -> Tensor<B, D>,
        mut noise: impl FnMut(usize) -> Tensor<B, D>,
        mut on_step: impl FnMut(&Step, &Tensor<B, D>),
    ) -> Tensor<B, D> {
        let mut x_prev: Option<Tensor<B, D>> = None;
        for step in self.steps().into_iter().skip(first) {
            let v = network(z.clone(), step.t, x_prev.clone());
            let fresh = (self.eta > 0.0 && step.t_next > 0.0).then(|| noise(step.index));
            let (z_next, x) = self.update(z, v, &step, fresh);
            on_step(&step, &x);
            z = z_next;
            x_prev = Some(x);
        }
        z
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::diffusion::schedule::v_target;
    use burn::backend::Flex;

    type B = Flex;

    fn values(t: Tensor<B, 1>) -> Vec<f32> {
        t.into_data().convert::<f32>().into_vec().unwrap()
    }

    #[test]
    fn noise_is_standard_normal_and_independent_of_the_batch() {
        let a = gaussian(7, 3, 200_000);
        let mean = a.iter().map(|&v| v as f64).sum::<f64>() / a.len() as f64;
        let var = a.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / a.len() as f64;
        assert!(mean.abs() < 0.01 && (var - 1.0).abs() < 0.02, "mean {mean}, var {var}");
        // A prefix is the same whatever the length drawn.
        assert_eq!(gaussian(7, 3, 10), a[..10].to_vec());
        assert_ne!(gaussian(7, 4, 10), a[..10].to_vec());
    }

    #[test]
    fn guidance_composes_the_conditions() {
        let d = Default::default();
        let t = |v: f32| Tensor::<B, 1>::from_data(TensorData::new(vec![v], [1]), &d);
        let g = Guidance { text: 3.0, context: 2.0 };
        // null 1, context 2, full 4: 1 + 2·(2−1) + 3·(4−2) = 9.
        assert_eq!(values(g.combine(t(1.0), t(2.0), t(4.0))), vec![9.0]);
        let none = Guidance { text: 1.0, context: 1.0 };
        assert!(none.is_unguided());
        assert_eq!(values(none.combine(t(1.0), t(2.0), t(4.0))), vec![4.0]);
    }

    /// With a network that knows the answer, deterministic DDIM lands on it from any noise
    /// in any number of steps.
    #[test]
    fn ddim_with_an_oracle_recovers_the_data() {
        let d = Default::default();
        let x = Tensor::<B, 1>::from_data(TensorData::new(vec![0.7f32, -0.2, 1.3, -1.1], [4]), &d);
        for steps in [1, 4, 32] {
            let ddim = Ddim { schedule: Schedule::default(), steps, eta: 0.0 };
            let z = gaussian_tensor::<B, 1>(1, 0, [4], &d);
            let oracle = |z: Tensor<B, 1>, t: f64, _| {
                let c = ddim.schedule.at(t);
                // ε implied by z and the true x.
                let eps = (z - x.clone().mul_scalar(c.alpha)).div_scalar(c.sigma);
                v_target(x.clone(), eps, c)
            };
            let mut seen = 0;
            let out = ddim.sample(z, oracle, |_| unreachable!("η = 0 draws no noise"), |_, _| seen += 1);
            assert_eq!(seen, steps);
            let err: f32 = values(out).iter().zip(values(x.clone())).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
            assert!(err < 1e-3, "{steps} steps: error {err}");
            // SDEdit: from the data noised to a later step, only the steps after it run.
            let first = steps / 2;
            let c = ddim.steps()[first].now;
            let z = x.clone().mul_scalar(c.alpha) + gaussian_tensor::<B, 1>(2, 0, [4], &d).mul_scalar(c.sigma);
            let mut times = Vec::new();
            let out = ddim.sample_from(first, z, oracle, |_| unreachable!(), |s, _| times.push(s.t));
            assert_eq!(times, ddim.steps()[first..].iter().map(|s| s.t).collect::<Vec<_>>());
            let err: f32 = values(out).iter().zip(values(x.clone())).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
            assert!(err < 1e-3, "{steps} steps from step {first}: error {err}");
        }
    }

    /// For Gaussian data x ~ N(μ, s²) the optimal v̂ is known in closed form; stochastic DDIM
    /// (η = 1) with it must produce samples with that mean and spread.
    #[test]
    fn ddim_samples_the_data_distribution() {
        let d = Default::default();
        let (mu, s) = (0.5f64, 0.3f64);
        let n = 4000;
        let ddim = Ddim { schedule: Schedule::default(), steps: 50, eta: 1.0 };
        let network = |z: Tensor<B, 1>, t: f64, _| {
            let c = ddim.schedule.at(t);
            // E[x | z] for Gaussian x: μ + α s² (z − α μ) / (α² s² + σ²).
            let var = c.alpha * c.alpha * s * s + c.sigma * c.sigma;
            let x_hat = (z.clone() - c.alpha * mu).mul_scalar(c.alpha * s * s / var).add_scalar(mu);
            // v̂ from x̂: v = (α z − x̂) / σ.
            (z.mul_scalar(c.alpha) - x_hat).div_scalar(c.sigma)
        };
        let out = ddim.sample(
            gaussian_tensor::<B, 1>(9, 0, [n], &d),
            network,
            |i| gaussian_tensor::<B, 1>(9, 1 + i as u64, [n], &d),
            |_, _| {},
        );
        let v = values(out);
        let mean = v.iter().map(|&x| x as f64).sum::<f64>() / n as f64;
        let sd = (v.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / n as f64).sqrt();
        assert!((mean - mu).abs() < 0.03 && (sd - s).abs() < 0.03, "mean {mean:.3}, sd {sd:.3}");
    }
}
