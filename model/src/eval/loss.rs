//! The denoiser's loss on world clips it never trained on, level by level of noise.
//!
//! A training run's loss is a mean over the whole noise schedule of its own batches, so a run
//! whose loss falls can still get worse where it matters: the high-noise levels decide a
//! frame's layout (where the horizon is, what is sky), the low ones its texture, and the
//! low-noise part of the loss is the larger. Here the v-prediction MSE is measured at fixed
//! log-SNR levels on the same clips with the same noise for every pipeline, so that two
//! checkpoints, or two runs with different noise schedules, compare level by level:
//! - `text`: the window from noise with its prompt, as a stream's first chunk is made;
//! - `self-conditioned`: the same with `text`'s estimate of the clean latents fed back as the
//!   self-conditioning input, as training feeds it (the sampler feeds the previous step's);
//! - `no text`: the same with the prompt dropped, the unconditional half of text guidance;
//! - `continued`: the first [`CONTINUED_GIVEN`] latent frames given clean, as every later
//!   chunk is made; the MSE over the other frames.
//!
//! Self-conditioning is off but in `self-conditioned`; no anchors.

use super::generation::{Case, cases_of, real_clip};
use crate::data::video_tensor;
use crate::diffusion::{Coefficients, gaussian_tensor, v_target};
use crate::dit::{Condition, DenoiserInput, FrameContext, TextCondition};
use crate::pipeline::Pipeline;
use crate::text::{TextBatch, TextEncoder};
use crate::world::{Split, noise_hash, render_all};
use burn::tensor::backend::Backend;
use burn::tensor::{Bool, ElementConversion, Tensor, TensorData};
use serde::Serialize;

/// Latent frames given clean in the `continued` condition (the service's default context).
pub const CONTINUED_GIVEN: usize = 2;

/// The default log-SNR levels: from where the latents are all noise to where they are nearly
/// clean.
pub const DEFAULT_LEVELS: [f64; 8] = [-9.0, -6.0, -4.0, -2.0, 0.0, 2.0, 4.0, 7.0];

#[derive(Debug, Clone)]
pub struct LossEvalOptions {
    /// World clips, one per test prompt ([`cases_of`]).
    pub cases: usize,
    /// Whose combinations of attributes.
    pub split: Split,
    /// Whose words.
    pub phrasing: Split,
    /// log SNR of each level.
    pub levels: Vec<f64>,
    /// Clips per forward pass.
    pub batch: usize,
    /// Draws the prompts and the noise.
    pub seed: u64,
}

/// The MSE of the v-prediction at each level, per condition.
#[derive(Debug, Clone, Serialize)]
pub struct LossReport {
    pub clips: usize,
    pub latent_frames: usize,
    pub logsnr: Vec<f64>,
    /// The diffusion time the pipeline's schedule gives each level.
    pub time: Vec<f64>,
    pub text: Vec<f64>,
    pub self_conditioned: Vec<f64>,
    pub no_text: Vec<f64>,
    pub continued: Vec<f64>,
}

/// Measures `pipeline`'s denoiser as the module says. The clips, prompts and noise depend on
/// `o` (but not its batch) and the pipeline's frame size and window only, so pipelines of one
/// size get the same.
pub fn evaluate_loss<B: Backend>(
    pipeline: &Pipeline<B>,
    text: &TextEncoder<B>,
    o: &LossEvalOptions,
    device: &B::Device,
) -> LossReport {
    let spec = &pipeline.spec;
    let window = spec.window;
    assert!(window > CONTINUED_GIVEN, "a window of {window} latent frames leaves none to continue");
    let frames = 1 + pipeline.temporal_factor() * (window - 1);
    let cases = cases_of(o.split, o.phrasing, o.cases, o.seed);
    let levels = o.levels.len();
    let [mut text_sum, mut self_conditioned_sum, mut no_text_sum, mut continued_sum] =
        [0; 4].map(|_| vec![0.0; levels]);
    let per_batch = o.batch.max(1);
    for (batch_index, batch) in cases.chunks(per_batch).enumerate() {
        let (b, first) = (batch.len(), batch_index * per_batch);
        let clips: Vec<_> = batch
            .iter()
            .map(|c: &Case| real_clip(c.attributes, c.seed, spec.width, spec.height, spec.fps, frames))
            .collect();
        let x = pipeline.encode(video_tensor::<B>(&render_all(&clips), spec.width, spec.height, device));
        let shape @ [_, _, t, h, w] = x.dims();
        let prompts: Vec<&str> = batch.iter().map(|c| c.prompt.as_str()).collect();
        let prompted = TextCondition::from(TextBatch::<B>::from_embeddings(&text.embed_many(&prompts), device));
        let dropped = prompted.clone().drop_where(Tensor::from_data(TensorData::new(vec![true; b], [b]), device));
        let given: Vec<bool> = (0..b).flat_map(|_| (0..t).map(|i| i < CONTINUED_GIVEN)).collect();
        let context = FrameContext {
            latents: x.clone(),
            frame_mask: Tensor::<B, 2, Bool>::from_data(TensorData::new(given, [b, t]), device),
        };
        for (k, &lambda) in o.levels.iter().enumerate() {
            let c = Coefficients::at_logsnr(lambda);
            // Each clip's noise of its own, so that batching changes nothing.
            let eps = Tensor::cat(
                (0..b)
                    .map(|i| {
                        let seed = noise_hash(o.seed, (first + i) as i64, 31);
                        gaussian_tensor::<B, 5>(seed, k as u64, [1, shape[1], t, h, w], device)
                    })
                    .collect(),
                0,
            );
            let z_t = x.clone().mul_scalar(c.alpha) + eps.clone().mul_scalar(c.sigma);
            let target = v_target(x.clone(), eps, c);
            let time = spec.schedule.time_of(lambda) as f32;
            let predict = |condition: TextCondition<B>, context: Option<FrameContext<B>>, self_cond| {
                pipeline.denoiser.forward(DenoiserInput {
                    z_t: z_t.clone(),
                    t: Tensor::from_data(TensorData::new(vec![time; b], [b]), device),
                    self_cond,
                    context,
                    condition: Condition::Text(condition),
                    positions: None,
                })
            };
            let mse = |v: Tensor<B, 5>, from: usize| {
                let error = (v - target.clone()).slice([0..b, 0..shape[1], from..t, 0..h, 0..w]);
                error.square().mean().into_scalar().elem::<f64>() * b as f64
            };
            let plain = predict(prompted.clone(), None, None);
            // x̂ = α·z − σ·v̂, fed back as training feeds it.
            let estimate = z_t.clone().mul_scalar(c.alpha) - plain.clone().mul_scalar(c.sigma);
            text_sum[k] += mse(plain, 0);
            self_conditioned_sum[k] += mse(predict(prompted.clone(), None, Some(estimate)), 0);
            no_text_sum[k] += mse(predict(dropped.clone(), None, None), 0);
            continued_sum[k] += mse(predict(prompted.clone(), Some(context.clone()), None), CONTINUED_GIVEN);
        }
    }
    let n = cases.len().max(1) as f64;
    let mean = |v: Vec<f64>| v.into_iter().map(|s| s / n).collect();
    LossReport {
        clips: cases.len(),
        latent_frames: window,
        time: o.levels.iter().map(|&l| spec.schedule.time_of(l)).collect(),
        logsnr: o.levels.clone(),
        text: mean(text_sum),
        self_conditioned: mean(self_conditioned_sum),
        no_text: mean(no_text_sum),
        continued: mean(continued_sum),
    }
}
