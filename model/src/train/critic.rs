//! The adversarial term of decoder fine-tuning: a patch discriminator (the critic) that judges
//! every frame of a clip together with its change from the frame before, so that a decoder
//! rendering the ground's grain flat, or rendering it still while the picture pans, is told
//! apart from the world. The L1 loss alone makes the decoder render what its 8-pixel latent cell
//! cannot place as its mean: flat ground, on which the camera's pan does not show
//! (`docs/MODEL_CARD.md`, "Where the pan is lost"). Stable Diffusion's and MAGVIT's autoencoders
//! add such a term for the same reason.
//!
//! - The critic: four 2-D convolutions (4×4, stride 2 three times, then 3×3 to one logit), no
//!   norms, leaky ReLU 0.2, on `[x_t, x_t − x_{t−1}]` (6 channels) of every frame after the
//!   first: a logit per 8×8 patch and frame pair. Hinge loss (Geometric GAN, as VQGAN's).
//! - The decoder's term: `−mean D(x̂)`, weighted per step so that its gradient on the
//!   reconstruction has `weight` times the norm of the L1 term's (VQGAN's adaptive weight,
//!   taken at the pixels rather than at the last layer): the term neither vanishes nor swamps
//!   the reconstruction as the critic sharpens. Its gradient enters through the surrogate
//!   `λ·Σ x̂ ⊙ g` with `g = ∇_x̂ (−mean D(x̂))` computed on a detached copy, so the critic runs
//!   once for it.

use burn::config::Config;
use burn::module::Module;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{LeakyRelu, LeakyReluConfig, PaddingConfig2d};
use burn::tensor::Tensor;
use burn::tensor::activation::relu;
use burn::tensor::backend::{AutodiffBackend, Backend};

/// The critic's shape.
#[derive(Config, Debug)]
pub struct CriticConfig {
    /// Widths of its three strided convolutions.
    #[config(default = "[32, 64, 128]")]
    pub channels: [usize; 3],
}

/// A patch discriminator on frames and their changes (module docs).
#[derive(Module, Debug)]
pub struct Critic<B: Backend> {
    convs: Vec<Conv2d<B>>,
    head: Conv2d<B>,
    act: LeakyRelu,
}

impl CriticConfig {
    pub fn init<B: Backend>(&self, device: &B::Device) -> Critic<B> {
        let mut c_in = 6;
        let convs = self
            .channels
            .iter()
            .map(|&c| {
                let conv = Conv2dConfig::new([c_in, c], [4, 4])
                    .with_stride([2, 2])
                    .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
                    .init(device);
                c_in = c;
                conv
            })
            .collect();
        let head = Conv2dConfig::new([c_in, 1], [3, 3]).with_padding(PaddingConfig2d::Same).init(device);
        Critic { convs, head, act: LeakyReluConfig::new().with_negative_slope(0.2).init() }
    }
}

impl<B: Backend> Critic<B> {
    /// Logits `[b·(t−1), 1, h/8, w/8]` of a video `[b, 3, t, h, w]` (t ≥ 2) in [−1, 1].
    pub fn forward(&self, video: Tensor<B, 5>) -> Tensor<B, 4> {
        let [b, c, t, h, w] = video.dims();
        assert!(t >= 2, "the critic judges frames with their change: clips of 2 frames or more");
        let now = video.clone().narrow(2, 1, t - 1);
        let change = now.clone() - video.narrow(2, 0, t - 1);
        // [b, 2c, t−1, h, w] → [b·(t−1), 2c, h, w]
        let x = Tensor::cat(vec![now, change], 1).swap_dims(1, 2).reshape([b * (t - 1), 2 * c, h, w]);
        let x = self.convs.iter().fold(x, |x, conv| self.act.forward(conv.forward(x)));
        self.head.forward(x)
    }
}

/// The critic's hinge loss: real logits pushed above 1, fake ones below −1. Returns the loss
/// and the two logits' means.
pub fn hinge<B: Backend>(real: Tensor<B, 4>, fake: Tensor<B, 4>) -> (Tensor<B, 1>, f64, f64) {
    use burn::prelude::ElementConversion;
    let (r, f) = (real.clone().mean().into_scalar().elem::<f64>(), fake.clone().mean().into_scalar().elem::<f64>());
    let loss = relu(real.neg().add_scalar(1.0)).mean() + relu(fake.add_scalar(1.0)).mean();
    (loss, r, f)
}

/// The gradient `g = ∇_x (−mean D(x))` of the decoder's adversarial term at the reconstruction
/// `x` (detached: only the critic runs), and the weight `λ` that gives `λ·g` `weight` times the
/// norm of the L1 term's gradient, `sign(x − y)/N` (norm `1/√N` for N elements).
pub fn adversarial_gradient<B: AutodiffBackend>(
    critic: &Critic<B>,
    reconstruction: Tensor<B::InnerBackend, 5>,
    weight: f64,
) -> (Tensor<B::InnerBackend, 5>, f64) {
    use burn::prelude::ElementConversion;
    let n = reconstruction.shape().num_elements() as f64;
    let x = Tensor::<B, 5>::from_inner(reconstruction).require_grad();
    let term = critic.forward(x.clone()).mean().neg();
    let grads = term.backward();
    let g = x.grad(&grads).expect("the reconstruction requires its gradient");
    let norm = g.clone().square().sum().sqrt().into_scalar().elem::<f64>();
    let lambda = if norm > 0.0 { (weight / n.sqrt() / norm).min(1e4) } else { 0.0 };
    (g, lambda)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::common::param_ids;
    use burn::backend::{Autodiff, Flex};
    use burn::module::AutodiffModule;
    use burn::optim::{AdamWConfig, GradientsParams, Optimizer};
    use burn::prelude::ElementConversion;
    use burn::tensor::{Distribution, TensorData};

    type A = Autodiff<Flex>;

    #[test]
    fn logits_per_patch_and_frame_pair() {
        let device = Default::default();
        let critic = CriticConfig::new().init::<Flex>(&device);
        let video = Tensor::<Flex, 5>::random([2, 3, 5, 32, 48], Distribution::Uniform(-1.0, 1.0), &device);
        assert_eq!(critic.forward(video).dims(), [8, 1, 4, 6]);
    }

    /// A moving stripe pattern against the same pattern standing still: the critic learns to
    /// tell them apart (it sees the frames' changes), and the decoder's gradient then points
    /// the still video towards motion.
    #[test]
    fn it_tells_a_pan_from_a_still_picture_and_says_which_way_to_go() {
        let device = Default::default();
        let video = |speed: f32| -> Tensor<A, 5> {
            let (t, h, w) = (4, 16, 16);
            let values: Vec<f32> = (0..3)
                .flat_map(|_| {
                    (0..t).flat_map(move |f| {
                        (0..h).flat_map(move |_| {
                            (0..w).map(move |x| (0.9 * ((x as f32 - speed * f as f32) * 1.3).sin()).clamp(-1.0, 1.0))
                        })
                    })
                })
                .collect();
            Tensor::from_data(TensorData::new(values, [1, 3, t, h, w]), &device)
        };
        let (panning, still) = (video(2.0), video(0.0));
        let mut critic: Critic<A> = CriticConfig::new().with_channels([8, 8, 8]).init(&device);
        param_ids(&critic);
        let mut optim = AdamWConfig::new().init::<A, Critic<A>>();
        for _ in 0..60 {
            let (loss, _, _) = hinge(critic.forward(panning.clone()), critic.forward(still.clone()));
            let grads = GradientsParams::from_grads(loss.backward(), &critic);
            critic = optim.step(1e-3, critic, grads);
        }
        let (loss, real, fake) = hinge(critic.forward(panning.clone()), critic.forward(still.clone()));
        assert!(real > fake + 1.0, "real {real}, fake {fake}");
        assert!(loss.into_scalar().elem::<f64>() < 1.0);

        // One step along −λ·g makes the still video look more real to the critic.
        let (g, lambda) = adversarial_gradient(&critic, still.clone().inner(), 0.5);
        assert!(lambda > 0.0 && lambda.is_finite());
        let moved = still.clone().inner() - g.mul_scalar(1e3 * lambda);
        let before = critic.valid().forward(still.inner()).mean().into_scalar().elem::<f64>();
        let after = critic.valid().forward(moved).mean().into_scalar().elem::<f64>();
        assert!(after > before, "the critic's logit went from {before} to {after}");
    }
}
