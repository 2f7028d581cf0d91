//! Progressive distillation (Salimans & Ho 2022, used by Imagen Video): a student learns to
//! take in one DDIM step what its teacher takes in two, so that each round halves the steps a
//! chunk needs (32 → 16 → 8 → 4).
//!
//! The student starts as a copy of the teacher. For a clean batch `x` and a time `t` on the
//! student's grid of `M = N/2` steps, the teacher walks `t → t − 1/2M → t − 1/M` with
//! deterministic DDIM, from `z_t = α_t·x + σ_t·ε`; the clean latents that would take `z_t` to
//! the teacher's `z_{t''}` in one DDIM step,
//!
//! x̃ = (z_{t''} − (σ_{t''}/σ_t)·z_t) / (α_{t''} − (σ_{t''}/σ_t)·α_t),
//!
//! are the student's target, as a v-prediction `ṽ = (α_t·z_t − x̃)/σ_t`: the MSE in v is the
//! MSE in x weighted by 1 + SNR, the paper's "SNR+1" weighting.
//!
//! **Guidance is built in.** The first round's teacher runs with classifier-free guidance
//! (its guided passes combined, as a stream samples it); the student learns that guided output
//! from one conditional pass. So a distilled chunk costs `M` passes where its teacher's cost
//! `2N` (or `3N` with guided past frames). Later rounds distil the student unguided.
//!
//! Everything else is the stream's layout: frame prediction and anchors give some clips clean
//! past latents, which the teacher's second step sees re-noised (as a chunk's given frames are
//! before every step, [`crate::pipeline`]), and whose target is their true v — so that the
//! student's x̂ of them stays meaningful for reconstruction guidance. Self-conditioning feeds
//! the student its own detached x̂ (as in training) and the teacher's first step the same,
//! its second step the x̂ of its first.
//!
//! **Guidance alone** (`guidance_only`, the first stage of Meng et al. 2023, *On Distillation
//! of Guided Diffusion Models*): the student keeps its undistilled teacher's `N` steps and learns
//! the teacher's guided x̂ at each of them, `ṽ = (α_t·z_t − x̂_guided)/σ_t`, from one pass; no
//! step is halved. A chunk then costs `N` passes instead of `2N`, at the teacher's grid.

use super::denoiser::{Conditions, TrainDenoiserOptions, coefficients, conditions};
use crate::diffusion::{Guidance, gaussian};
use crate::dit::{Condition, Denoiser, DenoiserInput};
use crate::pipeline::{Distilled, ExtendMode, Pipeline, PipelineSpec, SamplerSettings};
use crate::text::TextEmbedding;
use crate::world::noise_hash;
use anyhow::{Result, bail};
use burn::prelude::ElementConversion;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Tensor, TensorData};
use std::path::PathBuf;
use std::sync::Arc;

/// A distillation run's teacher.
#[derive(Clone, Debug)]
pub struct DistillFrom {
    /// The teacher's pipeline folder (its EMA weights when it has them).
    pub teacher: PathBuf,
    /// The teacher's DDIM steps, when it is not distilled itself (a distilled teacher samples
    /// in the steps its spec gives).
    pub teacher_steps: usize,
    /// The classifier-free guidance to build into the student, when the teacher is not
    /// distilled itself (a distilled one has its guidance built in already).
    pub guidance: Guidance,
    /// Distil the guidance alone: the student keeps the teacher's steps (an undistilled teacher
    /// only) and learns its guided output at each of them in one pass.
    pub guidance_only: bool,
}

/// A loaded teacher: the pipeline, how it samples, and what its student will be.
pub(crate) struct Teacher<B: Backend> {
    pub pipeline: Pipeline<B>,
    pub settings: SamplerSettings,
    pub student: Distilled,
}

impl DistillFrom {
    pub(crate) fn load<B: Backend>(&self, device: &B::Device) -> Result<Teacher<B>> {
        let pipeline = Pipeline::<B>::load(&self.teacher, true, device)?;
        let (steps, guidance, student) = match pipeline.spec.distilled {
            Some(_) if self.guidance_only => {
                bail!("{} is distilled: its guidance is built in already", self.teacher.display())
            }
            Some(d) => (d.steps, Guidance::NONE, Distilled { steps: d.steps / 2, ..d }),
            None => {
                let to = if self.guidance_only { self.teacher_steps } else { self.teacher_steps / 2 };
                (
                    self.teacher_steps,
                    self.guidance,
                    Distilled { steps: to, from_steps: self.teacher_steps, guidance: self.guidance },
                )
            }
        };
        if self.guidance_only && steps == 0 {
            bail!("a teacher of 0 steps has no guidance to distil");
        }
        if !self.guidance_only && (steps < 2 || !steps.is_multiple_of(2)) {
            bail!("a teacher of {steps} steps cannot be halved: distil from an even number of steps");
        }
        let settings = SamplerSettings { steps, guidance, mode: ExtendMode::Conditioned, ..SamplerSettings::default() };
        Ok(Teacher { pipeline, settings, student })
    }
}

impl<B: Backend> Teacher<B> {
    /// The student's pipeline spec: the teacher's, distilled one round further.
    pub fn student_spec(&self) -> PipelineSpec {
        PipelineSpec { distilled: Some(self.student), ..self.pipeline.spec.clone() }
    }

    /// Whether the student keeps the teacher's steps and learns only its guidance.
    fn guidance_only(&self) -> bool {
        self.student.steps == self.settings.steps
    }
}

/// A 5-d tensor on the inner backend of `B`.
type Inner5<B> = Tensor<<B as AutodiffBackend>::InnerBackend, 5>;

/// The distillation loss of one batch of normalised latents `x` (`[b, c, t, h, w]`) at `step`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn distill_loss<B: AutodiffBackend>(
    o: &TrainDenoiserOptions,
    student: &Denoiser<B>,
    teacher: &Teacher<B::InnerBackend>,
    x: Tensor<B, 5>,
    embeddings: &[Arc<TextEmbedding>],
    anchors: Option<&[usize]>,
    step: usize,
) -> Tensor<B, 1> {
    let [b, c, t, h, w] = x.dims();
    let device = x.device();
    let schedule = &teacher.pipeline.spec.schedule;
    let step = step as i64;
    let m = teacher.student.steps as f64;
    // The student's grid points, stratified over the batch: t = 1 − k/M, k in 0..M.
    let times: Vec<f64> = (0..b)
        .map(|i| 1.0 - ((((i as f64 + o.uniform(step, i, 3)) / b as f64) * m).floor().min(m - 1.0)) / m)
        .collect();
    let x_in = x.clone().inner();
    let noise = |k: i64| {
        let values = gaussian(noise_hash(o.seed, step, k), 0, b * c * t * h * w);
        Tensor::<B::InnerBackend, 5>::from_data(TensorData::new(values, [b, c, t, h, w]), &device)
    };
    let (a, s) = coefficients::<B::InnerBackend>(schedule, &times, &device);
    let z = x_in.clone() * a.clone() + noise(12) * s.clone();

    // The conditions, the same draws on both backends; the student's prompt is never dropped.
    let cond = conditions(o, &x, embeddings, anchors, step, 0.0, 0.0);
    let Conditions { given, context: teacher_context, positions, text: teacher_text } =
        conditions(o, &x_in, embeddings, anchors, step, 0.0, 0.0);
    let given = Tensor::<B::InnerBackend, 1, burn::tensor::Bool>::from_data(TensorData::new(given, [b * t]), &device)
        .reshape([b, 1, t, 1, 1])
        .expand([b, c, t, h, w]);

    let student_input = |self_cond| DenoiserInput {
        z_t: Tensor::from_inner(z.clone()),
        t: Tensor::from_data(TensorData::new(times.iter().map(|&t| t as f32).collect(), [b]), &device),
        self_cond,
        context: cond.context.clone(),
        condition: Condition::Text(cond.text.clone()),
        positions: cond.positions.clone(),
    };
    let self_cond = (o.uniform(step, 0, 7) < o.self_condition).then(|| {
        let v = student.forward(student_input(None)).inner();
        z.clone() * a.clone() - v * s.clone()
    });

    // The teacher's guided x̂ of `z` at `at` (α, σ), and its v̂.
    let guided = |z: Inner5<B>, at: &[f64], sc, (a, s): (Inner5<B>, Inner5<B>)| {
        let v = teacher
            .pipeline
            .guided_v(&teacher.settings, z.clone(), at, sc, &teacher_context, &positions, &teacher_text, &device)
            .0;
        (z * a - v.clone() * s, v)
    };
    let x_target = if teacher.guidance_only() {
        guided(z.clone(), &times, self_cond.clone(), (a.clone(), s.clone())).0
    } else {
        let mid: Vec<f64> = times.iter().map(|t| t - 0.5 / m).collect();
        let next: Vec<f64> = times.iter().map(|t| (t - 1.0 / m).max(0.0)).collect();
        let (a_mid, s_mid) = coefficients::<B::InnerBackend>(schedule, &mid, &device);
        let (a_next, s_next) = coefficients::<B::InnerBackend>(schedule, &next, &device);
        // A deterministic DDIM step of the teacher from `at` (α, σ) to (α_to, σ_to): (z, x̂).
        let ddim = |z: Inner5<B>, at: &[f64], sc, (a, s): (Inner5<B>, Inner5<B>), (a_to, s_to): (Inner5<B>, _)| {
            let (x_hat, v) = guided(z.clone(), at, sc, (a.clone(), s.clone()));
            let eps_hat = z * s + v * a;
            (x_hat.clone() * a_to + eps_hat * s_to, x_hat)
        };
        let (z_mid, x_mid) =
            ddim(z.clone(), &times, self_cond.clone(), (a.clone(), s.clone()), (a_mid.clone(), s_mid.clone()));
        // The given frames re-noised at the middle time, as a chunk's are before every step.
        let z_mid = z_mid.mask_where(given.clone(), x_in.clone() * a_mid.clone() + noise(13) * s_mid.clone());
        let (z_next, _) = ddim(z_mid, &mid, Some(x_mid), (a_mid, s_mid), (a_next.clone(), s_next.clone()));
        // The one-step target.
        let ratio = s_next / s.clone();
        (z_next - z.clone() * ratio.clone()) / (a_next - a.clone() * ratio)
    };
    // The given frames keep their true clean latents.
    let x_target = x_target.mask_where(given, x_in);
    let v_target = (z.clone() * a - x_target) / s;

    let v = student.forward(student_input(self_cond.map(Tensor::from_inner)));
    (v - Tensor::from_inner(v_target)).square().mean()
}

/// How closely a distilled student follows its first teacher on the same prompts, seeds and
/// context, against the plain ways to save passes: the teacher with as few steps as the student,
/// and with as few passes (a guided step runs two or three).
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Agreement {
    /// The student's DDIM steps and the teacher's.
    pub student_steps: usize,
    pub teacher_steps: usize,
    /// Mean squared difference of the normalised latents from the teacher's at its steps: the
    /// student's, and the teacher's at the student's steps.
    pub student_mse: f64,
    pub teacher_few_steps_mse: f64,
    /// The teacher's steps in the student's passes, and its difference so.
    pub same_passes_steps: usize,
    pub teacher_same_passes_mse: f64,
}

/// [`Agreement`] of `student` (a distilled pipeline) with `teacher` sampled as `teacher_settings`
/// say, over one stream per prompt: its first chunk from the text alone, and a second chunk
/// conditioned on the last latent frame of the teacher's first (the same context for all three).
pub fn agreement<B: Backend>(
    student: &Pipeline<B>,
    teacher: &Pipeline<B>,
    teacher_settings: &SamplerSettings,
    prompts: &[Arc<TextEmbedding>],
    seed: u64,
) -> Agreement {
    let student_settings = student.spec.sampler(*teacher_settings);
    let few = SamplerSettings { steps: student_settings.steps, ..*teacher_settings };
    let passes = student.passes_per_step(&student_settings) * student_settings.steps;
    let same = SamplerSettings { steps: (passes / teacher.passes_per_step(teacher_settings)).max(1), ..few };
    let requests = |chunk: u64, context: Option<&[Tensor<B, 4>]>| -> Vec<crate::pipeline::ChunkRequest<B>> {
        prompts
            .iter()
            .enumerate()
            .map(|(i, text)| crate::pipeline::ChunkRequest {
                seed: noise_hash(seed, i as i64, 3),
                chunk,
                context: context.map(|c| {
                    let k = c[i].dims()[1];
                    c[i].clone().narrow(1, k - 1, 1)
                }),
                anchors: None,
                text: text.clone(),
            })
            .collect()
    };
    let mse = |a: &[Tensor<B, 4>], b: &[Tensor<B, 4>]| {
        let n = a.len() as f64;
        a.iter().zip(b).map(|(a, b)| (a.clone() - b.clone()).square().mean().into_scalar().elem::<f64>()).sum::<f64>()
            / n
    };
    let (mut student_mse, mut few_mse, mut same_mse) = (0.0, 0.0, 0.0);
    let mut context = None;
    for chunk in 0..2 {
        let chunk_requests = requests(chunk, context.as_deref());
        let reference = teacher.generate(&chunk_requests, teacher_settings);
        student_mse += mse(&student.generate(&chunk_requests, &student_settings), &reference) / 2.0;
        // As many steps as the teacher's (guidance alone) is the reference itself: 0.
        if few.steps != teacher_settings.steps {
            few_mse += mse(&teacher.generate(&chunk_requests, &few), &reference) / 2.0;
        }
        same_mse += mse(&teacher.generate(&chunk_requests, &same), &reference) / 2.0;
        context = Some(reference);
    }
    Agreement {
        student_steps: student_settings.steps,
        teacher_steps: teacher_settings.steps,
        student_mse,
        teacher_few_steps_mse: few_mse,
        same_passes_steps: same.steps,
        teacher_same_passes_mse: same_mse,
    }
}
