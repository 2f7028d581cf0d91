//! The evaluator: a small causal 3D CNN that reads every attribute of the world off each
//! frame of a clip. Its per-frame features (before the classification head) define the
//! Fréchet distance between sets of clips (FWD).
//!
//! Frames are average-pooled to `input_size`² (64), then causal convolutions (3×3 spatial,
//! stride 2; 3 frames in time; four by default), each followed by a per-frame group norm and
//! SiLU, then a spatial mean: a feature vector per frame that sees the last 9 frames. Beside
//! it, hand-made motion features: in each of [`EvaluatorConfig::motion_bands`] horizontal
//! bands of the frame, the horizontal motion by least squares (Lucas–Kanade with one velocity),
//! `v = −Σ I_t·I_x / Σ I_x²` over the luminance pooled to `motion_size`², in pixels per frame,
//! and each band's mean over the last [`MOTION_FRAMES`] frames (rain, snow and clouds make one
//! frame's estimate noisy). A linear head on all of them gives the logits of the four
//! attributes. The first [`EvaluatorConfig::warmup_frames`] of a clip lack the motion context
//! the camera needs; predictions and losses skip them.
//!
//! Why the motion features: trained without them (1,200 steps, 19,200 clips), the CNN read
//! time, weather and scenery at 90–100 % but the camera at chance (35.8 %). A pan moves the
//! nearest land about a pixel per frame at 64²: a global, low-contrast signal that per-frame
//! group norms and the final spatial mean wash out. Why bands: the sky barely moves with the
//! camera and the land below moves most (parallax), so one velocity for the whole frame mixes
//! them. With one velocity the camera read 80.5 % (90.5 % on clips without a transition); with
//! four bands, 88.0 % (97.9 %).
//!
//! Reading the clips at their full 128² (`input_size` 128, a fifth layer) did not help: after
//! 600 steps its training loss was no lower than the 64² CNN's and it read the held-out
//! combinations' scenery far worse (70 % against 90 % after 1,500 steps; docs/MODEL_CARD.md).
//!
//! The camera may have a head of its own ([`EvaluatorConfig::camera_motion_iterations`]). A
//! frame's camera label is the velocity at that instant, and a causal reading cannot see it: the
//! motion into frame `j` is the mean velocity over the frame before, and even exactly known it
//! calls 2.7 % of the held-out clips' frames wrong (5 % of those in clips with a transition),
//! since their camera ramps from one speed to another in 3–8 frames. The motion into the frame
//! and out of it (one frame ahead) is a central difference, right to 99.9 % when exact. So the
//! camera head reads, per band, both, each estimated by a few Lucas–Kanade iterations that warp
//! the earlier frame by the estimate so far ([`refined_motion`]: one step of least squares
//! underestimates a shift of a pixel or more). It reads one frame ahead of every other head;
//! the features, and so FWD, stay causal and the same as without it.

use crate::vae::layers::{CausalConv, CausalConvConfig, frame_norm};
use crate::world::{Attributes, Camera, Scenery, TimeOfDay, Weather};
use burn::config::Config;
use burn::module::Module;
use burn::nn::loss::CrossEntropyLossConfig;
use burn::nn::{GroupNorm, GroupNormConfig, Linear, LinearConfig};
use burn::tensor::activation::silu;
use burn::tensor::backend::Backend;
use burn::tensor::module::avg_pool2d;
use burn::tensor::{Int, Tensor, TensorData};
use serde::Serialize;

/// The four attributes in head order, with their number of values.
pub const HEADS: [(&str, usize); 4] =
    [("time", TimeOfDay::COUNT), ("weather", Weather::COUNT), ("scenery", Scenery::COUNT), ("camera", Camera::COUNT)];

/// Logits per frame: the sum of the heads' sizes.
pub const LOGITS: usize = TimeOfDay::COUNT + Weather::COUNT + Scenery::COUNT + Camera::COUNT;

/// The value index of each head for `a`.
pub fn label_indices(a: &Attributes) -> [usize; 4] {
    [a.time.index(), a.weather.index(), a.scenery.index(), a.camera.index()]
}

/// The value names of head `k` of [`HEADS`], in index order.
pub fn head_values(k: usize) -> Vec<&'static str> {
    match k {
        0 => TimeOfDay::ALL.iter().map(|v| v.label()).collect(),
        1 => Weather::ALL.iter().map(|v| v.label()).collect(),
        2 => Scenery::ALL.iter().map(|v| v.label()).collect(),
        3 => Camera::ALL.iter().map(|v| v.label()).collect(),
        _ => panic!("there are {} heads", HEADS.len()),
    }
}

/// Readings of one attribute by wanted value (rows) and value read (columns): frames, or clips
/// for a camera read off the pixels.
#[derive(Debug, Clone, Serialize)]
pub struct Confusion {
    pub attribute: String,
    /// The values, in row and column order.
    pub values: Vec<String>,
    pub counts: Vec<Vec<usize>>,
}

impl Confusion {
    /// An empty table for each of [`HEADS`], in order.
    pub fn of_heads() -> Vec<Confusion> {
        HEADS
            .iter()
            .enumerate()
            .map(|(k, &(name, size))| Confusion {
                attribute: name.to_string(),
                values: head_values(k).into_iter().map(String::from).collect(),
                counts: vec![vec![0; size]; size],
            })
            .collect()
    }

    /// Counts one reading of value `read` where `want` was wanted.
    pub fn record(&mut self, want: usize, read: usize) {
        self.counts[want][read] += 1;
    }

    /// The off-diagonal cells, largest first: `(wanted, read, count)`.
    pub fn mistakes(&self) -> Vec<(&str, &str, usize)> {
        let mut cells: Vec<_> = (0..self.values.len())
            .flat_map(|i| (0..self.values.len()).map(move |j| (i, j)))
            .filter(|&(i, j)| i != j && self.counts[i][j] > 0)
            .map(|(i, j)| (self.values[i].as_str(), self.values[j].as_str(), self.counts[i][j]))
            .collect();
        cells.sort_by_key(|c| std::cmp::Reverse(c.2));
        cells
    }
}

fn attributes_of(indices: [usize; 4]) -> Attributes {
    Attributes {
        time: TimeOfDay::from_index(indices[0]),
        weather: Weather::from_index(indices[1]),
        scenery: Scenery::from_index(indices[2]),
        camera: Camera::from_index(indices[3]),
    }
}

#[derive(Config, Debug)]
pub struct EvaluatorConfig {
    /// Widths of the stride-2 convolutions; the last is the CNN's feature width.
    #[config(default = "vec![16, 32, 64, 96]")]
    pub channels: Vec<usize>,
    /// Frames are average-pooled to this square size first (the clip's side must be a
    /// multiple of it).
    #[config(default = 64)]
    pub input_size: usize,
    /// The motion features read the luminance pooled to this size (at most `input_size`; a
    /// pan then moves the nearest land about a pixel per frame, where least squares is exact).
    #[config(default = 64)]
    pub motion_size: usize,
    /// Horizontal bands of the frame with a motion feature each.
    #[config(default = 4)]
    pub motion_bands: usize,
    #[config(default = 4)]
    pub norm_groups: usize,
    /// Frames per second it was trained at (motion is per frame).
    #[config(default = 8.0)]
    pub fps: f64,
    /// Leading frames of a clip without enough motion context; skipped.
    #[config(default = 4)]
    pub warmup_frames: usize,
    /// `Some(n)`: the camera has a head of its own, on each band's motion into the frame and
    /// out of it (one frame ahead), each estimated by `n` Lucas–Kanade iterations with warping
    /// ([`refined_motion`]); its logits replace the shared head's camera logits. `None` (the
    /// evaluators before v6): the shared head reads the camera too, causally.
    #[config(default = "None")]
    pub camera_motion_iterations: Option<usize>,
}

/// Frames the smoothed motion feature averages: the CNN's receptive field, less the first.
pub const MOTION_FRAMES: usize = 8;

/// Features per frame: the CNN's, then each band's horizontal motion and its recent mean.
impl EvaluatorConfig {
    pub fn feature_width(&self) -> usize {
        self.channels.last().copied().unwrap_or(3) + 2 * self.motion_bands
    }
}

impl EvaluatorConfig {
    pub fn init<B: Backend>(&self, device: &B::Device) -> Evaluator<B> {
        let mut c_in = 3;
        let mut convs = Vec::new();
        let mut norms = Vec::new();
        for &c in &self.channels {
            convs.push(CausalConvConfig::new([c_in, c]).with_stride(2).init(device));
            norms.push(GroupNormConfig::new(self.norm_groups, c).init(device));
            c_in = c;
        }
        let evaluator = Evaluator {
            convs,
            norms,
            head: LinearConfig::new(c_in + 2 * self.motion_bands, LOGITS).init(device),
            camera: None,
            input_size: self.input_size,
            motion_size: self.motion_size.min(self.input_size),
            motion_bands: self.motion_bands,
            warmup_frames: self.warmup_frames,
            camera_motion_iterations: 0,
        };
        match self.camera_motion_iterations {
            Some(iterations) => evaluator.with_camera_head(iterations, device),
            None => evaluator,
        }
    }
}

#[derive(Module, Debug)]
pub struct Evaluator<B: Backend> {
    pub convs: Vec<CausalConv<B>>,
    pub norms: Vec<GroupNorm<B>>,
    pub head: Linear<B>,
    /// The camera's own head ([`EvaluatorConfig::camera_motion_iterations`]).
    pub camera: Option<Linear<B>>,
    #[module(skip)]
    pub input_size: usize,
    #[module(skip)]
    pub motion_size: usize,
    #[module(skip)]
    pub motion_bands: usize,
    #[module(skip)]
    pub warmup_frames: usize,
    #[module(skip)]
    pub camera_motion_iterations: usize,
}

/// What the evaluator makes of a batch of clips.
pub struct EvaluatorOutput<B: Backend> {
    /// `[b, t, features]`
    pub features: Tensor<B, 3>,
    /// `[b, t, LOGITS]`
    pub logits: Tensor<B, 3>,
}

impl<B: Backend> Evaluator<B> {
    /// # Shapes
    /// - `video`: `[b, 3, t, h, w]` in [-1, 1], `h` and `w` multiples of `input_size`
    pub fn forward(&self, video: Tensor<B, 5>) -> EvaluatorOutput<B> {
        let [b, c, t, _, _] = video.dims();
        let (x, small) = self.pooled(video);
        let motion = banded_motion(small.clone(), self.motion_bands);
        let mut x = x.reshape([b, t, c, self.input_size, self.input_size]);
        for (conv, norm) in self.convs.iter().zip(&self.norms) {
            x = silu(frame_norm(norm, conv.forward(x)));
        }
        let [_, _, f, hh, ww] = x.dims();
        let cnn = x.reshape([b, t, f, hh * ww]).mean_dim(3).reshape([b, t, f]);
        let recent = recent_mean(motion.clone(), MOTION_FRAMES);
        let features = Tensor::cat(vec![cnn, motion, recent], 2);
        let mut logits = self.head.forward(features.clone());
        if let Some(camera) = self.camera.as_ref().map(|head| self.camera_logits(head, small)) {
            logits = Tensor::cat(vec![logits.narrow(2, 0, LOGITS - Camera::COUNT), camera], 2);
        }
        EvaluatorOutput { features, logits }
    }

    /// The clip's frames pooled to `input_size`² (`[b·t, c, s, s]`, what the CNN reads) and
    /// from there to `motion_size`² (`[b, t, c, m, m]`, what the motion is measured on).
    ///
    /// # Panics
    /// If the frames' size is not a multiple of `input_size`.
    fn pooled(&self, video: Tensor<B, 5>) -> (Tensor<B, 4>, Tensor<B, 5>) {
        let [b, c, t, h, w] = video.dims();
        let (fh, fw) = (h / self.input_size, w / self.input_size);
        assert!(
            fh >= 1 && fw >= 1 && h == fh * self.input_size && w == fw * self.input_size,
            "{h}×{w} is not a multiple of {}",
            self.input_size
        );
        let x = pool_square(video.swap_dims(1, 2).reshape([b * t, c, h, w]), self.input_size);
        let m = self.motion_size;
        let small = pool_square(x.clone(), m).reshape([b, t, c, m, m]);
        (x, small)
    }

    /// The camera head's logits, `[b, t, Camera::COUNT]`, from the frames pooled to
    /// `motion_size`² (`[b, t, 3, m, m]`): each band's refined motion into every frame and out
    /// of it (the last frame's own again, having no successor). Computed on the host: a few
    /// thousand pixels a frame.
    fn camera_logits(&self, head: &Linear<B>, small: Tensor<B, 5>) -> Tensor<B, 3> {
        let [b, t, _, m, _] = small.dims();
        let device = small.device();
        let luma: Vec<f32> = small.mean_dim(2).into_data().convert::<f32>().into_vec().expect("f32 frames");
        let bands = self.motion_bands;
        let d = refined_motion(&luma, b * t, t, m, bands, self.camera_motion_iterations);
        let d = Tensor::<B, 3>::from_data(TensorData::new(d, [b, t, bands]), &device);
        let ahead = if t > 1 {
            Tensor::cat(vec![d.clone().narrow(1, 1, t - 1), d.clone().narrow(1, t - 1, 1)], 1)
        } else {
            d.clone()
        };
        head.forward(Tensor::cat(vec![d, ahead], 2))
    }

    /// This evaluator with a new, untrained camera head of its own on `iterations` refined
    /// motion steps (replacing any it had); everything else is kept as it is.
    pub fn with_camera_head(mut self, iterations: usize, device: &B::Device) -> Self {
        self.camera = Some(LinearConfig::new(2 * self.motion_bands, Camera::COUNT).init(device));
        self.camera_motion_iterations = iterations;
        self
    }

    /// Mean cross-entropy of the camera head alone over every frame after the warm-up: what
    /// trains a camera head on a frozen evaluator. `None` without a camera head.
    pub fn camera_loss(&self, video: Tensor<B, 5>, labels: &[Vec<Attributes>]) -> Option<Tensor<B, 1>> {
        let head = self.camera.as_ref()?;
        let device = video.device();
        let t = video.dims()[2];
        let (_, small) = self.pooled(video);
        let skip = self.warmup_frames.min(t - 1);
        let logits = self.camera_logits(head, small).narrow(1, skip, t - skip);
        let targets: Vec<i64> =
            labels.iter().flat_map(|clip| clip[skip..].iter().map(|a| a.camera.index() as i64)).collect();
        let n = targets.len();
        let targets = Tensor::<B, 1, Int>::from_data(TensorData::new(targets, [n]), &device);
        Some(CrossEntropyLossConfig::new().init(&device).forward(logits.reshape([n, Camera::COUNT]), targets))
    }

    /// Mean cross-entropy of the four heads over every frame after the warm-up.
    ///
    /// # Shapes
    /// - `video`: `[b, 3, t, h, w]`; `labels[i][j]`: the attributes of frame `j` of clip `i`
    pub fn loss(&self, video: Tensor<B, 5>, labels: &[Vec<Attributes>]) -> Tensor<B, 1> {
        let device = video.device();
        let [b, _, t, _, _] = video.dims();
        let skip = self.warmup_frames.min(t - 1);
        let n = b * (t - skip);
        let logits = self.forward(video).logits.narrow(1, skip, t - skip).reshape([n, LOGITS]);
        let ce = CrossEntropyLossConfig::new().init(&device);
        let mut offset = 0;
        let mut total: Option<Tensor<B, 1>> = None;
        for (k, &(_, size)) in HEADS.iter().enumerate() {
            let targets: Vec<i64> =
                labels.iter().flat_map(|clip| clip[skip..].iter().map(move |a| label_indices(a)[k] as i64)).collect();
            let targets = Tensor::<B, 1, Int>::from_data(TensorData::new(targets, [n]), &device);
            let l = ce.forward(logits.clone().narrow(1, offset, size), targets);
            total = Some(match total {
                Some(t) => t + l,
                None => l,
            });
            offset += size;
        }
        total.expect("four heads").div_scalar(HEADS.len() as f32)
    }

    /// Per-frame readings of a batch: the attributes and the features of every frame after the
    /// warm-up (`[b][t - warmup]`).
    pub fn read(&self, video: Tensor<B, 5>) -> Vec<Vec<Reading>> {
        let [b, _, t, _, _] = video.dims();
        let skip = self.warmup_frames.min(t - 1);
        let out = self.forward(video);
        let f = out.features.dims()[2];
        let logits: Vec<f32> = out.logits.into_data().convert::<f32>().into_vec().expect("f32 logits");
        let features: Vec<f32> = out.features.into_data().convert::<f32>().into_vec().expect("f32 features");
        (0..b)
            .map(|i| {
                (skip..t)
                    .map(|j| {
                        let row = &logits[(i * t + j) * LOGITS..(i * t + j + 1) * LOGITS];
                        let mut indices = [0; 4];
                        let mut offset = 0;
                        for (k, &(_, size)) in HEADS.iter().enumerate() {
                            let head = &row[offset..offset + size];
                            indices[k] = (0..size).fold(0, |best, v| if head[v] > head[best] { v } else { best });
                            offset += size;
                        }
                        Reading {
                            attributes: attributes_of(indices),
                            features: features[(i * t + j) * f..(i * t + j + 1) * f].to_vec(),
                        }
                    })
                    .collect()
            })
            .collect()
    }
}

/// Average-pools `[n, c, h, w]` frames to `side`² (`h` and `w` multiples of it).
fn pool_square<B: Backend>(x: Tensor<B, 4>, side: usize) -> Tensor<B, 4> {
    let [_, _, h, w] = x.dims();
    let (fh, fw) = (h / side, w / side);
    if fh > 1 || fw > 1 { avg_pool2d(x, [fh, fw], [fh, fw], [0, 0], true, false) } else { x }
}

/// Horizontal motion of every frame against the one before in each of `bands` horizontal
/// bands (top first), in pixels per frame (positive: the picture moves right), by least squares
/// over the luminance: `v = −Σ I_t·I_x / (Σ I_x² + ε)`, `I_x` the central difference of the two
/// frames' mean. The first frame of a clip has no predecessor and gets 0.
///
/// # Shapes
/// - `frames`: `[b, t, 3, h, w]`, `h` a multiple of `bands`
/// - returns: `[b, t, bands]`
pub fn banded_motion<B: Backend>(frames: Tensor<B, 5>, bands: usize) -> Tensor<B, 3> {
    let [b, t, _, h, w] = frames.dims();
    assert!(bands >= 1 && h.is_multiple_of(bands), "{h} rows do not split into {bands} bands");
    let y = frames.mean_dim(2); // [b, t, 1, h, w]
    let prev =
        if t > 1 { Tensor::cat(vec![y.clone().narrow(1, 0, 1), y.clone().narrow(1, 0, t - 1)], 1) } else { y.clone() };
    let i_t = (y.clone() - prev.clone()).narrow(4, 1, w - 2);
    let mid = (y + prev).div_scalar(2.0);
    let i_x = (mid.clone().narrow(4, 2, w - 2) - mid.narrow(4, 0, w - 2)).div_scalar(2.0);
    let sum = |z: Tensor<B, 5>| z.reshape([b, t, bands, h / bands * (w - 2)]).sum_dim(3).reshape([b, t, bands]);
    let num = sum(i_t * i_x.clone());
    let den = sum(i_x.square()).add_scalar(1e-6);
    num.neg() / den
}

/// Horizontal motion of every frame against the one before, band by band, as
/// [`banded_motion`] measures it but refined: each of `iterations` Lucas–Kanade steps first
/// warps the earlier frame by the estimate so far (linear interpolation), then adds the least
/// squares shift of what is left. One step underestimates a shift of a pixel or more (the
/// linearisation holds below that), which is the nearest land's speed at 64²; three are within
/// a few hundredths of a pixel. Pixels within 4 of the left and right edges are left out, where
/// the warp reads past the frame.
///
/// `luma`: `frames` frames of `side`² luminance, clip after clip of `clip_frames` each; returns
/// `[frames, bands]`, pixels per frame (positive: the picture moves right), 0 for every clip's
/// first frame.
pub fn refined_motion(
    luma: &[f32],
    frames: usize,
    clip_frames: usize,
    side: usize,
    bands: usize,
    iterations: usize,
) -> Vec<f32> {
    assert_eq!(luma.len(), frames * side * side, "{frames} frames of {side}²");
    assert!(bands >= 1 && side.is_multiple_of(bands) && side > 10, "{side} rows into {bands} bands");
    let rows = side / bands;
    let mut out = vec![0.0f32; frames * bands];
    let mut warped = vec![0.0f32; side];
    for f in (0..frames).filter(|f| f % clip_frames != 0) {
        let (cur, prev) = (&luma[f * side * side..][..side * side], &luma[(f - 1) * side * side..][..side * side]);
        for band in 0..bands {
            let mut d = 0.0f64;
            for _ in 0..iterations {
                let (mut num, mut den) = (0.0f64, 0.0f64);
                for y in band * rows..(band + 1) * rows {
                    let (c, p) = (&cur[y * side..][..side], &prev[y * side..][..side]);
                    // The earlier frame moved by d: its value at x − d.
                    for (x, w) in warped.iter_mut().enumerate() {
                        let at = (x as f64 - d).clamp(0.0, (side - 1) as f64);
                        let (x0, frac) = (at.floor() as usize, (at - at.floor()) as f32);
                        *w = p[x0] * (1.0 - frac) + p[(x0 + 1).min(side - 1)] * frac;
                    }
                    // Windows of three pixels centred on x = 4 … side − 5.
                    for (cw, ww) in c.windows(3).zip(warped.windows(3)).skip(3).take(side - 8) {
                        let mid = |k: usize| 0.5 * (cw[k] + ww[k]);
                        let i_t = (cw[1] - ww[1]) as f64;
                        let i_x = (0.5 * (mid(2) - mid(0))) as f64;
                        num += i_t * i_x;
                        den += i_x * i_x;
                    }
                }
                d -= num / (den + 1e-6);
            }
            out[f * bands + band] = d as f32;
        }
    }
    out
}

/// The mean of each frame's motion and that of the `n − 1` frames before it, over the frames
/// that have a predecessor (the first frame's 0 is not counted), band by band.
///
/// # Shapes
/// - `motion`: `[b, t, bands]`, from [`banded_motion`]
/// - returns: `[b, t, bands]`
pub fn recent_mean<B: Backend>(motion: Tensor<B, 3>, n: usize) -> Tensor<B, 3> {
    let [b, t, k] = motion.dims();
    let device = motion.device();
    let mut sum = motion.clone();
    for shift in 1..n.min(t) {
        let shifted =
            Tensor::cat(vec![Tensor::zeros([b, shift, k], &device), motion.clone().narrow(1, 0, t - shift)], 1);
        sum = sum + shifted;
    }
    let counts: Vec<f32> = (0..t).map(|k| k.min(n).max(1) as f32).collect();
    sum / Tensor::<B, 1>::from_data(TensorData::new(counts, [t]), &device).reshape([1, t, 1])
}

/// The evaluator's reading of one frame.
#[derive(Debug, Clone, PartialEq)]
pub struct Reading {
    pub attributes: Attributes,
    pub features: Vec<f32>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::Flex;

    #[test]
    fn banded_motion_reads_the_shift_of_each_band() {
        let (t, h, w) = (4, 8, 32);
        // The top half of the pattern moves by `top` pixels per frame, the bottom by `bottom`.
        let clip = |top: f32, bottom: f32| {
            let values: Vec<f32> = (0..t)
                .flat_map(|k| {
                    (0..3 * h * w).map(move |i| {
                        let shift = if (i / w) % h < h / 2 { top } else { bottom };
                        let x = (i % w) as f32 - shift * k as f32;
                        (x * std::f32::consts::TAU / 16.0).sin() * 0.8
                    })
                })
                .collect();
            Tensor::<Flex, 5>::from_data(TensorData::new(values, [1, t, 3, h, w]), &Default::default())
        };
        for (top, bottom) in [(0.5f32, 0.5f32), (-0.5, 0.0), (0.0, 0.8)] {
            let v: Vec<f32> = banded_motion(clip(top, bottom), 2).into_data().into_vec().unwrap();
            assert_eq!(v[..2], [0.0, 0.0], "the first frame has no predecessor");
            for (i, &vk) in v.iter().enumerate().skip(2) {
                let shift = if i % 2 == 0 { top } else { bottom };
                assert!((vk - shift).abs() < 0.1 * shift.abs().max(0.1), "{top}/{bottom}: band {} read {vk}", i % 2);
            }
        }
    }

    /// One frame's luminance: a smooth texture, band `k` (of two) shifted by `shift[k] · frame`.
    fn shifted_texture(side: usize, frames: usize, shift: [f32; 2]) -> Vec<f32> {
        (0..frames)
            .flat_map(|f| {
                (0..side * side).map(move |i| {
                    let (y, x) = (i / side, i % side);
                    let u = x as f32 - shift[y * 2 / side] * f as f32;
                    (u * 0.45).sin() * 0.5 + (u * 0.21 + y as f32 * 0.3).cos() * 0.3
                })
            })
            .collect()
    }

    #[test]
    fn refined_motion_reads_the_shifts_one_step_underestimates() {
        let (side, frames) = (32, 3);
        let shift = [1.6f32, -2.2];
        let luma = shifted_texture(side, frames, shift);
        let one = refined_motion(&luma, frames, frames, side, 2, 1);
        let three = refined_motion(&luma, frames, frames, side, 2, 3);
        assert_eq!(three[..2], [0.0, 0.0], "the first frame has no predecessor");
        for f in 1..frames {
            for band in 0..2 {
                let (a, b) = (one[f * 2 + band], three[f * 2 + band]);
                assert!((b - shift[band]).abs() < 0.05, "band {band}: three steps read {b} for {}", shift[band]);
                assert!((a - shift[band]).abs() > 0.1, "band {band}: one step read {a} for {}", shift[band]);
            }
        }
        // Every clip starts afresh: two clips of 3 frames, the second one's first frame is 0.
        let two = refined_motion(&[luma.clone(), luma].concat(), 2 * frames, frames, side, 2, 3);
        assert_eq!(two[2 * frames..2 * frames + 2], [0.0, 0.0]);
        assert_eq!(two[..2 * frames], three[..]);
    }

    #[test]
    fn the_camera_head_reads_one_frame_ahead_and_leaves_the_features_as_they_were() {
        let device = Default::default();
        let config = EvaluatorConfig::new().with_input_size(16).with_camera_motion_iterations(Some(2));
        let with = config.init::<Flex>(&device);
        let video =
            Tensor::<Flex, 5>::random([2, 3, 7, 32, 32], burn::tensor::Distribution::Uniform(-1.0, 1.0), &device);
        // The forward initialises the (lazy) parameters, which the copy then shares.
        let a = with.forward(video.clone());
        let without = Evaluator { camera: None, ..with.clone() };
        let b = without.forward(video.clone());
        let same = |x: Tensor<Flex, 3>, y: Tensor<Flex, 3>| (x - y).abs().max().into_scalar() == 0.0;
        assert!(same(a.features.clone(), b.features), "FWD's features do not depend on the camera head");
        let others = LOGITS - Camera::COUNT;
        assert!(same(a.logits.clone().narrow(2, 0, others), b.logits.clone().narrow(2, 0, others)));
        assert!(!same(a.logits.clone().narrow(2, others, 3), b.logits.narrow(2, others, 3)));
        // A new last frame changes the camera's reading of the frame before it, nothing else there.
        let changed = Tensor::cat(vec![video.clone().narrow(2, 0, 6), video.narrow(2, 6, 1).neg()], 2);
        let c = with.forward(changed);
        assert!(same(a.features.narrow(1, 0, 6), c.features.narrow(1, 0, 6)));
        let at =
            |x: &Tensor<Flex, 3>, frame: usize, from: usize, n: usize| x.clone().narrow(1, frame, 1).narrow(2, from, n);
        assert!(same(at(&a.logits, 5, 0, others), at(&c.logits, 5, 0, others)));
        assert!(!same(at(&a.logits, 5, others, 3), at(&c.logits, 5, others, 3)));
        assert!(same(at(&a.logits, 4, 0, LOGITS), at(&c.logits, 4, 0, LOGITS)), "two frames back, nothing");
    }

    #[test]
    fn recent_mean_averages_the_frames_with_a_predecessor() {
        // Two bands: the second is the first times 10.
        let motion = Tensor::<Flex, 3>::from_data(
            TensorData::new(vec![0.0f32, 0.0, 1.0, 10.0, 2.0, 20.0, 3.0, 30.0, 4.0, 40.0], [1, 5, 2]),
            &Default::default(),
        );
        let mean: Vec<f32> = recent_mean(motion, 3).into_data().into_vec().unwrap();
        // frame 0: nothing counted; 1: (1)/1; 2: (1+2)/2; 3: (1+2+3)/3; 4: (2+3+4)/3
        assert_eq!(mean, vec![0.0, 0.0, 1.0, 10.0, 1.5, 15.0, 2.0, 20.0, 3.0, 30.0]);
    }

    #[test]
    fn head_values_match_the_heads() {
        for (k, &(_, size)) in HEADS.iter().enumerate() {
            assert_eq!(head_values(k).len(), size);
        }
        assert_eq!(
            head_values(2)[label_indices(&Attributes { scenery: Scenery::City, ..Attributes::default() })[2]],
            "city"
        );
    }

    #[test]
    fn labels_round_trip_through_indices() {
        for &time in TimeOfDay::ALL {
            for &camera in Camera::ALL {
                let a = Attributes { time, camera, ..Attributes::default() };
                assert_eq!(attributes_of(label_indices(&a)), a);
            }
        }
    }

    #[test]
    fn shapes_and_causality() {
        let device = Default::default();
        let config = EvaluatorConfig::new().with_input_size(16);
        let e = config.init::<Flex>(&device);
        assert_eq!(config.feature_width(), 104, "96 from the CNN, 4 bands' motion and recent mean");
        let video =
            Tensor::<Flex, 5>::random([2, 3, 7, 32, 32], burn::tensor::Distribution::Uniform(-1.0, 1.0), &device);
        let out = e.forward(video.clone());
        assert_eq!(out.features.dims(), [2, 7, 104]);
        assert_eq!(out.logits.dims(), [2, 7, LOGITS]);
        // Changing the last frame changes nothing before it.
        let changed = Tensor::cat(vec![video.clone().narrow(2, 0, 6), video.narrow(2, 6, 1).neg()], 2);
        let again = e.forward(changed).features;
        let before = (out.features.clone().narrow(1, 0, 6) - again.clone().narrow(1, 0, 6)).abs().max().into_scalar();
        let last = (out.features.narrow(1, 6, 1) - again.narrow(1, 6, 1)).abs().max().into_scalar();
        assert!(before < 1e-6 && last > 1e-4, "before {before}, last {last}");
        let readings = e.read(Tensor::zeros([1, 3, 7, 32, 32], &device));
        assert_eq!((readings.len(), readings[0].len(), readings[0][0].features.len()), (1, 3, 104));
    }
}
