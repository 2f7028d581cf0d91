//! Growing a trained denoiser's latent: when its VAE gains latent channels
//! ([`crate::vae::Encoder::with_latent_channels`]), the denoiser learns the new ones starting
//! from what it knows of the old. Every new input is weighed by zero and every new output
//! starts at zero, so the old channels' predictions stay as they were and the new channels'
//! v starts at 0 until training moves them.

use burn::tensor::Tensor;
use burn::tensor::backend::Backend;

use super::Denoiser;
use crate::grown_param;

impl<B: Backend> Denoiser<B> {
    /// This denoiser taking and predicting latents of `latents` channels, the first as it
    /// took and predicted them.
    ///
    /// # Panics
    /// If `latents` is fewer than the denoiser's latent channels.
    pub fn with_latent_channels(mut self, latents: usize, device: &B::Device) -> Self {
        let (c, n, pp) = (self.latent_channels, latents, self.patch_size.pow(2));
        assert!(n >= c, "a latent grows: {n} channels < {c}");
        if n == c {
            return self;
        }
        // Inputs: `[z_t, self-conditioning, context]` of `c` channels each and the mask, each
        // channel `p²` rows of the patch embedding's weight `[in, d]`.
        let w = self.patch_embedding.weight.val();
        let d = w.dims()[1];
        let zeros = Tensor::<B, 2>::zeros([(n - c) * pp, d], device);
        let mut rows: Vec<Tensor<B, 2>> =
            (0..3).flat_map(|group| [w.clone().narrow(0, group * c * pp, c * pp), zeros.clone()]).collect();
        rows.push(w.narrow(0, 3 * c * pp, pp)); // the mask
        self.patch_embedding.weight = grown_param(Tensor::cat(rows, 0));
        // Outputs: `c` channels of `p²` columns of the final projection's weight `[d, out]`.
        let projection = &mut self.final_layer.projection;
        projection.weight = grown_param(Tensor::cat(
            vec![projection.weight.val(), Tensor::zeros([projection.weight.dims()[0], (n - c) * pp], device)],
            1,
        ));
        projection.bias = projection
            .bias
            .take()
            .map(|b| grown_param(Tensor::cat(vec![b.val(), Tensor::zeros([(n - c) * pp], device)], 0)));
        self.latent_channels = n;
        self
    }
}
