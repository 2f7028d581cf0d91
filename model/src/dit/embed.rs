//! The denoiser's ends: patches in and out, the timestep embedding, and the final layer.

use super::block::{layer_norm, modulate};
use super::zero_linear;
use burn::module::Module;
use burn::nn::{Initializer, Linear, LinearConfig};
use burn::tensor::activation::silu;
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};

/// Cuts every frame into non-overlapping `p × p` patches (a ViT patchify applied per frame).
///
/// # Shapes
/// - `x`: `[b, c, t, h, w]`, `h` and `w` multiples of `p`
/// - returns: `[b, t*(h/p)*(w/p), c*p*p]`, tokens in (frame, row, column) order, features in
///   (channel, row, column) order
pub fn patchify<B: Backend>(x: Tensor<B, 5>, p: usize) -> Tensor<B, 3> {
    let [b, c, t, h, w] = x.dims();
    let (gh, gw) = (h / p, w / p);
    let x = x.reshape([b, c, t, gh, p, gw, p]); // [b, c, t, h/p, p, w/p, p]
    let x = x.permute([0, 2, 3, 5, 1, 4, 6]); // [b, t, h/p, w/p, c, p, p]
    x.reshape([b, t * gh * gw, c * p * p])
}

/// The inverse of [`patchify`].
///
/// # Shapes
/// - `x`: `[b, t*gh*gw, c*p*p]`
/// - returns: `[b, c, t, gh*p, gw*p]`
pub fn unpatchify<B: Backend>(x: Tensor<B, 3>, p: usize, [t, gh, gw]: [usize; 3]) -> Tensor<B, 5> {
    let [b, _, f] = x.dims();
    let c = f / (p * p);
    let x = x.reshape([b, t, gh, gw, c, p, p]); // [b, t, h/p, w/p, c, p, p]
    let x = x.permute([0, 4, 1, 2, 5, 3, 6]); // [b, c, t, h/p, p, w/p, p]
    x.reshape([b, c, t, gh * p, gw * p])
}

/// Sinusoidal features of the diffusion time, as DiT's `TimestepEmbedder` computes them for
/// `1000·t`: `[cos(1000·t·f_i), sin(1000·t·f_i)]` with `f_i = 10000^(−i/(dim/2))`.
///
/// # Shapes
/// - `t`: `[b]`, in `[0, 1]`
/// - returns: `[b, dim]`
pub fn timestep_features<B: Backend>(t: Tensor<B, 1>, dim: usize) -> Tensor<B, 2> {
    let half = dim / 2;
    let freqs: Vec<f32> = (0..half).map(|i| (-(10_000f64.ln()) * i as f64 / half as f64).exp() as f32).collect();
    let freqs = Tensor::<B, 2>::from_data(TensorData::new(freqs, [1, half]), &t.device());
    let args = t.mul_scalar(1000.0).unsqueeze_dim::<2>(1) * freqs; // [b, dim/2]
    Tensor::cat(vec![args.clone().cos(), args.sin()], 1)
}

/// The timestep embedding: sinusoidal features, then a two-layer MLP with SiLU.
#[derive(Module, Debug)]
pub struct TimestepEmbedding<B: Backend> {
    pub fc1: Linear<B>,
    pub fc2: Linear<B>,
    #[module(skip)]
    pub frequency_dim: usize,
}

impl<B: Backend> TimestepEmbedding<B> {
    /// DiT's initialisation: weights N(0, 0.02).
    pub fn new(frequency_dim: usize, hidden_size: usize, device: &B::Device) -> TimestepEmbedding<B> {
        let linear = |d_input, d_output| {
            LinearConfig::new(d_input, d_output)
                .with_initializer(Initializer::Normal { mean: 0.0, std: 0.02 })
                .init(device)
        };
        TimestepEmbedding {
            fc1: linear(frequency_dim, hidden_size),
            fc2: linear(hidden_size, hidden_size),
            frequency_dim,
        }
    }

    /// # Shapes
    /// - `t`: `[b]`, in `[0, 1]`
    /// - returns: `[b, hidden_size]`
    pub fn forward(&self, t: Tensor<B, 1>) -> Tensor<B, 2> {
        self.fc2.forward(silu(self.fc1.forward(timestep_features(t, self.frequency_dim))))
    }
}

/// adaLN modulation (shift, scale) and the projection to patches; both zero-initialised, so
/// the denoiser outputs zeros at init.
#[derive(Module, Debug)]
pub struct FinalLayer<B: Backend> {
    pub modulation: Linear<B>,
    pub projection: Linear<B>,
    #[module(skip)]
    pub norm_eps: f64,
}

impl<B: Backend> FinalLayer<B> {
    pub fn new(hidden_size: usize, out_features: usize, norm_eps: f64, device: &B::Device) -> FinalLayer<B> {
        FinalLayer {
            modulation: zero_linear(hidden_size, 2 * hidden_size, true, device),
            projection: zero_linear(hidden_size, out_features, true, device),
            norm_eps,
        }
    }

    /// # Shapes
    /// - `x`: `[b, n, d]`
    /// - `c`: `[b, d]`, the conditioning vector after SiLU
    /// - returns: `[b, n, out_features]`
    pub fn forward(&self, x: Tensor<B, 3>, c: Tensor<B, 2>) -> Tensor<B, 3> {
        let [shift, scale]: [Tensor<B, 2>; 2] =
            self.modulation.forward(c).chunk(2, 1).try_into().expect("the modulation has 2·d outputs"); // 2 × [b, d]
        self.projection.forward(modulate(layer_norm(x, self.norm_eps), shift, scale))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::Flex;
    use burn::tensor::Distribution;

    #[test]
    fn unpatchify_inverts_patchify() {
        let x = Tensor::<Flex, 5>::random([2, 3, 4, 8, 6], Distribution::Default, &Default::default());
        let tokens = patchify(x.clone(), 2);
        assert_eq!(tokens.dims(), [2, 4 * 4 * 3, 12]);
        unpatchify(tokens, 2, [4, 4, 3]).into_data().assert_eq(&x.into_data(), true);
    }
}
