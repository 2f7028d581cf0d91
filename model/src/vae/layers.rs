//! The building blocks of the VAE: the factorised causal convolution, the residual block and the
//! up-sampling step. Activations are frame-major, `[b, t, c, h, w]`, so that the per-frame work
//! (spatial convolutions, normalisation) is a reshape to `[b*t, c, h, w]` away.

use burn::config::Config;
use burn::module::{Module, Param};
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{GroupNorm, GroupNormConfig, PaddingConfig2d};
use burn::tensor::Tensor;
use burn::tensor::activation::silu;
use burn::tensor::backend::Backend;
use burn::tensor::ops::PadMode;

use super::direct;

/// The extent of a video inside the network, per batch element: frames and pixels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extent {
    pub t: usize,
    pub h: usize,
    pub w: usize,
}

impl Extent {
    fn positions(self) -> f64 {
        (self.t * self.h * self.w) as f64
    }
}

/// Multiply-adds ×2 of a convolution with the weight `[c_out, c_in, kh, kw]` at `positions`
/// output positions.
fn conv_flops<B: Backend>(conv: &Conv2d<B>, positions: f64) -> f64 {
    let [c_out, c_in, kh, kw] = conv.weight.dims();
    2.0 * (c_out * c_in * kh * kw) as f64 * positions
}

/// `conv.forward(x)` (`[n, c, h, w]`) of a 1×1 convolution, as a matrix product.
///
/// burn's `conv2d` backward on the CPU backend computes the weight gradient as a convolution of
/// batch-and-channel-swapped tensors, which it makes contiguous element by element; the
/// product's gradients are products. With the temporal and skip convolutions done this way (and
/// the temporal taps sliced, not gathered), a VAE training step takes 38 % fewer CPU cycles
/// (`perf`, 64², 9 frames, batch 4). The 3×3 convolutions stay burn's: as a product of 9
/// shifted slices they were slower, every slice's gradient being a zero-padded copy of the
/// whole input.
///
/// # Panics
/// If `conv` is not a plain 1×1 convolution.
pub fn conv1x1<B: Backend>(conv: &Conv2d<B>, x: Tensor<B, 4>) -> Tensor<B, 4> {
    let [n, c, h, w] = x.dims();
    let [c_out, c_in, kh, kw] = conv.weight.dims();
    assert!(c == c_in && kh == 1 && kw == 1, "a 1×1 convolution of {c_in} channels");
    assert!(conv.stride == [1, 1] && conv.groups == 1, "a plain 1×1 convolution");
    let y = conv.weight.val().reshape([1, c_out, c_in]).matmul(x.reshape([n, c, h * w])); // [n, c_out, hw]
    let y = match &conv.bias {
        // Repeated to [n, c_out, 1]: flex adds a per-row scalar with SIMD, but walks a
        // [1, c_out, 1] broadcast element by element (as in `frame_norm`).
        Some(bias) => y + bias.val().reshape([1, c_out, 1]).repeat_dim(0, n),
        None => y,
    };
    y.reshape([n, c_out, h, w])
}

/// The causal past a chunked (streaming) decode carries from one chunk to the next: for every
/// temporal convolution, in call order, the last `k_t − 1` frames it saw; and whether the stream
/// has begun (only its very first frame is decoded alone). With it, decoding a stream chunk by
/// chunk gives the frames of one decode of the whole stream: no overlap, no seam.
#[derive(Debug, Clone)]
pub struct StreamState<B: Backend> {
    past: Vec<Tensor<B, 5>>,
    cursor: usize,
    started: bool,
}

impl<B: Backend> Default for StreamState<B> {
    fn default() -> Self {
        StreamState { past: Vec::new(), cursor: 0, started: false }
    }
}

impl<B: Backend> StreamState<B> {
    /// Whether a chunk has been decoded.
    pub fn started(&self) -> bool {
        self.started
    }

    /// Bytes of activations kept (f32).
    pub fn bytes(&self) -> usize {
        self.past.iter().map(|t| t.shape().num_elements() * 4).sum()
    }

    pub(crate) fn begin_chunk(&mut self) {
        self.cursor = 0;
    }

    pub(crate) fn end_chunk(&mut self) {
        self.started = true;
    }

    /// The `k − 1` frames of past (`[b, k − 1, c, h, w]`) in front of `y` (`[b, t, c, h, w]`):
    /// the previous chunk's, or copies of the first frame at the start; remembers the last
    /// `k − 1` frames of the two together for the next chunk.
    fn past(&mut self, y: &Tensor<B, 5>, k: usize) -> Tensor<B, 5> {
        let past = if self.started { self.past[self.cursor].clone() } else { first_frame_copies(y, k) };
        let t = y.dims()[1];
        let keep = if t >= k - 1 {
            y.clone().narrow(1, t - (k - 1), k - 1)
        } else {
            Tensor::cat(vec![past.clone(), y.clone()], 1).narrow(1, t, k - 1)
        };
        if self.started {
            self.past[self.cursor] = keep;
        } else {
            self.past.push(keep);
        }
        self.cursor += 1;
        past
    }
}

/// `k − 1` copies of the first frame of `y` (`[b, t, c, h, w]`): the past of a clip's start.
fn first_frame_copies<B: Backend>(y: &Tensor<B, 5>, k: usize) -> Tensor<B, 5> {
    y.clone().narrow(1, 0, 1).repeat_dim(1, k - 1)
}

/// What a causal convolution makes of its input before the spatial convolution. The CPU's
/// direct kernel does it as it pads each frame ([`direct`]); elsewhere it is a tensor op.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Input {
    AsIs,
    /// SiLU.
    Silu,
    /// Nearest-neighbour up-sampling by 2 in height and width.
    Doubled,
}

impl Input {
    /// `x` (`[n, c, h, w]`) made so with tensor ops.
    pub(crate) fn apply<B: Backend>(self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        match self {
            Input::AsIs => x,
            Input::Silu => silu(x),
            Input::Doubled => {
                let [n, c, h, w] = x.dims();
                let x = x.reshape([n * c, h, 1, w, 1]).repeat_dim(2, 2).repeat_dim(4, 2); // [n*c, h, 2, w, 2]
                x.reshape([n, c, 2 * h, 2 * w])
            }
        }
    }
}

/// A (2+1)-D causal convolution: a `k×k` spatial convolution on every frame, then a temporal
/// convolution of `k_t` frames that sees only the present and the past (the first frame is
/// replicated `k_t − 1` times in front; nothing is padded after).
#[derive(Config, Debug)]
pub struct CausalConvConfig {
    /// Input and output channels.
    pub channels: [usize; 2],
    /// Spatial kernel size (odd; padded to keep the size at stride 1).
    #[config(default = 3)]
    pub kernel: usize,
    /// Temporal kernel size; 1 leaves out the temporal convolution.
    #[config(default = 3)]
    pub temporal_kernel: usize,
    /// Spatial stride: 2 halves the height and width (which must be even).
    #[config(default = 1)]
    pub stride: usize,
    /// Temporal stride: 2 takes `1 + 2m` frames to `1 + m`, the first frame alone.
    #[config(default = 1)]
    pub temporal_stride: usize,
}

impl CausalConvConfig {
    pub fn init<B: Backend>(&self, device: &B::Device) -> CausalConv<B> {
        let [c_in, c_out] = self.channels;
        let pad = self.kernel / 2;
        let spatial = Conv2dConfig::new([c_in, c_out], [self.kernel, self.kernel])
            .with_stride([self.stride, self.stride])
            .with_padding(PaddingConfig2d::Explicit(pad, pad, pad, pad))
            .init(device);
        let temporal = (self.temporal_kernel > 1 || self.temporal_stride > 1)
            .then(|| Conv2dConfig::new([self.temporal_kernel * c_out, c_out], [1, 1]).init(device));
        CausalConv { spatial, temporal, temporal_kernel: self.temporal_kernel, temporal_stride: self.temporal_stride }
    }
}

#[derive(Module, Debug)]
pub struct CausalConv<B: Backend> {
    /// Weight `[c_out, c_in, k, k]`, applied to every frame.
    pub spatial: Conv2d<B>,
    /// Weight `[c_out, k_t·c_out, 1, 1]`, a 1×1 conv over the `k_t` frames a temporal output
    /// sees stacked along channels (oldest first).
    pub temporal: Option<Conv2d<B>>,
    #[module(skip)]
    pub temporal_kernel: usize,
    #[module(skip)]
    pub temporal_stride: usize,
}

impl<B: Backend> CausalConv<B> {
    /// Output frame `i` depends only on input frames `≤ i·temporal_stride`.
    ///
    /// # Shapes
    /// - `x`: `[b, t, c_in, h, w]`
    /// - returns: `[b, t', c_out, h / stride, w / stride]`, `t' = (t − 1) / temporal_stride + 1`
    pub fn forward(&self, x: Tensor<B, 5>) -> Tensor<B, 5> {
        self.forward_stream(x, None)
    }

    /// [`CausalConv::forward`] of one chunk of a stream: the past comes from `state` (and
    /// goes back into it) instead of copies of the first frame.
    ///
    /// # Panics
    /// With a state, if the temporal stride is not 1.
    pub fn forward_stream(&self, x: Tensor<B, 5>, state: Option<&mut StreamState<B>>) -> Tensor<B, 5> {
        self.forward_input(x, Input::AsIs, state)
    }

    /// [`CausalConv::forward_stream`] of `x` made as `input` says (`[b, t, c, h, w]`, or
    /// `[b, t, c, h / 2, w / 2]` when [`Input::Doubled`]).
    pub fn forward_input(&self, x: Tensor<B, 5>, input: Input, state: Option<&mut StreamState<B>>) -> Tensor<B, 5> {
        let [b, t, c, h, w] = x.dims();
        let x = x.reshape([b * t, c, h, w]);
        let y = if direct::applies(&self.spatial) {
            direct::conv2d(&self.spatial, x, input)
        } else {
            self.spatial.forward(input.apply(x))
        }; // [b*t, c', h', w']
        let [_, c, h, w] = y.dims();
        let Some(temporal) = &self.temporal else {
            return y.reshape([b, t, c, h, w]);
        };
        let (k, s) = (self.temporal_kernel, self.temporal_stride);
        let t_out = (t - 1) / s + 1;
        let y = y.reshape([b, t, c, h, w]);
        // k - 1 frames of past (at the start, copies of the first).
        let past = (k > 1).then(|| match state {
            Some(state) => {
                assert_eq!(s, 1, "streaming needs a temporal stride of 1");
                state.past(&y, k)
            }
            None => first_frame_copies(&y, k),
        });
        let y = match past {
            Some(past) if s == 1 && direct::applies_pointwise(temporal) => return direct::temporal(temporal, past, y),
            Some(past) => Tensor::cat(vec![past, y], 1), // [b, t + k - 1, c', h', w']
            None => y,
        };
        // Output frame j sees padded frames j·s + i, i < k: each shift i is a slice (every s-th
        // frame of one, through a reshape), stacked along channels. Slices, not an index
        // `select`: the CPU backend's backward of `select` (a scalar scatter-add) took a quarter
        // of a VAE training step.
        let y = if s > 1 { y.pad([(0, s - 1), (0, 0), (0, 0), (0, 0)], PadMode::Constant(0.0)) } else { y };
        let shifts = (0..k)
            .map(|i| {
                let shift = y.clone().narrow(1, i, s * t_out); // frames i .. i + s·t'
                if s == 1 {
                    shift
                } else {
                    // The padding's frames are never among those taken: i + s·(t' − 1) < t + k − 1.
                    shift.reshape([b, t_out, s, c, h, w]).narrow(2, 0, 1).reshape([b, t_out, c, h, w])
                }
            })
            .collect();
        let y = Tensor::cat(shifts, 2).reshape([b * t_out, k * c, h, w]); // [b*t', k*c', h', w']
        conv1x1(temporal, y).reshape([b, t_out, c, h, w])
    }

    /// FLOPs (2 × multiply-adds) for one video of `input`, and the output's extent.
    pub fn flops(&self, input: Extent) -> (f64, Extent) {
        let stride = self.spatial.stride[0];
        let mid = Extent { t: input.t, h: input.h / stride, w: input.w / stride };
        let mut flops = conv_flops(&self.spatial, mid.positions());
        let mut out = mid;
        if let Some(temporal) = &self.temporal {
            out.t = (input.t - 1) / self.temporal_stride + 1;
            flops += conv_flops(temporal, out.positions());
        }
        (flops, out)
    }
}

/// Group normalisation of every frame on its own: statistics over time would let later frames
/// change earlier ones and break causality.
///
/// # Shapes
/// - `x`: `[b, t, c, h, w]`
/// - returns: `[b, t, c, h, w]`
///
/// burn's `GroupNorm` with its affine step done per row: `GroupNorm::forward` broadcasts γ
/// and β of shape `[1, c, 1, 1]` over all `b·t` frames, which the CPU backend (flex) can only
/// walk element by element (12 % of a 128² chunk's time in a profile). Repeated to
/// `[b·t, c, 1]` (a few hundred values), each row's scalar applies with flex's SIMD per-row
/// kernel; the values are those of `GroupNorm::forward`.
pub fn frame_norm<B: Backend>(norm: &GroupNorm<B>, x: Tensor<B, 5>) -> Tensor<B, 5> {
    let [b, t, c, h, w] = x.dims();
    let n = b * t;
    let g = norm.num_groups;
    let grouped = x.reshape([n, g, (c / g) * h * w]);
    let centred = grouped.clone() - grouped.mean_dim(2);
    let var = centred.clone().square().mean_dim(2);
    let normalised = (centred / var.add_scalar(norm.epsilon).sqrt()).reshape([n, c, h * w]);
    let y = match (&norm.gamma, &norm.beta) {
        (Some(gamma), Some(beta)) => {
            let per_row = |p: Tensor<B, 1>| p.reshape([1, c, 1]).repeat_dim(0, n);
            normalised * per_row(gamma.val()) + per_row(beta.val())
        }
        _ => normalised,
    };
    y.reshape([b, t, c, h, w])
}

/// [`frame_norm`] where there is a norm, else `x`.
pub fn maybe_norm<B: Backend>(norm: Option<&GroupNorm<B>>, x: Tensor<B, 5>) -> Tensor<B, 5> {
    match norm {
        Some(norm) => frame_norm(norm, x),
        None => x,
    }
}

/// A residual block: two (norm, SiLU, causal conv) steps, and a 1×1 projection on the skip path
/// when the width changes.
#[derive(Config, Debug)]
pub struct ResBlockConfig {
    /// Input and output channels; both divisible by `norm_groups`.
    pub channels: [usize; 2],
    /// Groups of the group normalisations; 0: no normalisation (SiLU, causal conv steps).
    pub norm_groups: usize,
    /// Temporal kernel of the causal convolutions.
    pub temporal_kernel: usize,
}

impl ResBlockConfig {
    pub fn init<B: Backend>(&self, device: &B::Device) -> ResBlock<B> {
        let [c_in, c_out] = self.channels;
        let conv = |c_in| CausalConvConfig::new([c_in, c_out]).with_temporal_kernel(self.temporal_kernel).init(device);
        let norm = |c| (self.norm_groups > 0).then(|| GroupNormConfig::new(self.norm_groups, c).init(device));
        let conv2 = conv(c_out); // before conv1, as ever: the seeded runs draw in this order
        let block = ResBlock {
            norm1: norm(c_in),
            conv1: conv(c_in),
            norm2: norm(c_out),
            conv2,
            skip: (c_in != c_out).then(|| Conv2dConfig::new([c_in, c_out], [1, 1]).init(device)),
        };
        // Without norms nothing rescales the residual branches: each starts at zero, so the
        // block starts as its skip path (Fixup, Zhang et al. 2019) and depth cannot blow the
        // signal up or wash it out before training has begun.
        if self.norm_groups == 0 { block.with_zero_branch() } else { block }
    }
}

#[derive(Module, Debug)]
pub struct ResBlock<B: Backend> {
    pub norm1: Option<GroupNorm<B>>,
    pub conv1: CausalConv<B>,
    pub norm2: Option<GroupNorm<B>>,
    pub conv2: CausalConv<B>,
    /// 1×1 projection, when the input and output widths differ.
    pub skip: Option<Conv2d<B>>,
}

impl<B: Backend> ResBlock<B> {
    /// This block with the last convolution of its residual branch at zero, weights and bias:
    /// it gives its skip path (the identity, at equal widths) until training moves it, and
    /// the gradient still reaches that convolution.
    pub fn with_zero_branch(mut self) -> Self {
        let last = self.conv2.temporal.as_mut().unwrap_or(&mut self.conv2.spatial);
        last.weight = Param::from_tensor(last.weight.val().zeros_like().detach());
        last.bias = last.bias.take().map(|b| Param::from_tensor(b.val().zeros_like().detach()));
        self
    }

    /// # Shapes
    /// - `x`: `[b, t, c_in, h, w]`
    /// - returns: `[b, t, c_out, h, w]`
    pub fn forward(&self, x: Tensor<B, 5>) -> Tensor<B, 5> {
        self.forward_stream(x, None)
    }

    /// [`ResBlock::forward`] of one chunk of a stream (see [`StreamState`]).
    pub fn forward_stream(&self, x: Tensor<B, 5>, mut state: Option<&mut StreamState<B>>) -> Tensor<B, 5> {
        let y = self.conv1.forward_input(maybe_norm(self.norm1.as_ref(), x.clone()), Input::Silu, state.as_deref_mut());
        let y = self.conv2.forward_input(maybe_norm(self.norm2.as_ref(), y), Input::Silu, state);
        let skip = match &self.skip {
            Some(skip) => {
                let [b, t, c, h, w] = x.dims();
                let x = conv1x1(skip, x.reshape([b * t, c, h, w])); // [b*t, c_out, h, w]
                let c_out = x.dims()[1];
                x.reshape([b, t, c_out, h, w])
            }
            None => x,
        };
        skip + y
    }

    /// FLOPs for one video of `input` (the extent is unchanged).
    pub fn flops(&self, input: Extent) -> f64 {
        let skip = self.skip.as_ref().map_or(0.0, |skip| conv_flops(skip, input.positions()));
        self.conv1.flops(input).0 + self.conv2.flops(input).0 + skip
    }
}

/// Up-sampling by 2 in space (nearest neighbour) and, optionally, causally in time (the first
/// frame stays one frame, every later frame becomes two: `1 + m` → `1 + 2m`), then a causal conv
/// to the next level's width (narrowing here rather than after saves work at the larger size).
///
/// Time is up-sampled in one of two ways:
/// - **repeat**: every frame twice, so the two frames differ only through what the causal
///   conv after sees behind them;
/// - **depth to time** (MAGVIT-v2): a 1×1 conv doubles the channels of every frame and the two
///   halves become two frames, the earlier then the later, so each has weights of its own. It
///   starts as the repeat (each half a copy of the input), so a trained decoder can switch to
///   it without changing its output ([`Upsample::with_depth_to_time`]).
#[derive(Config, Debug)]
pub struct UpsampleConfig {
    /// Input and output channels.
    pub channels: [usize; 2],
    /// Whether time is up-sampled too.
    pub temporal: bool,
    /// Temporal kernel of the convolution.
    pub temporal_kernel: usize,
    /// With `temporal`: depth to time rather than repeat.
    #[config(default = false)]
    pub depth_to_time: bool,
}

impl UpsampleConfig {
    pub fn init<B: Backend>(&self, device: &B::Device) -> Upsample<B> {
        let up = Upsample {
            conv: CausalConvConfig::new(self.channels).with_temporal_kernel(self.temporal_kernel).init(device),
            expand: None,
            temporal: self.temporal,
        };
        if self.depth_to_time { up.with_depth_to_time(device) } else { up }
    }
}

#[derive(Module, Debug)]
pub struct Upsample<B: Backend> {
    pub conv: CausalConv<B>,
    /// Depth to time: weight `[2·c_in, c_in, 1, 1]`, the earlier frame's channels first.
    pub expand: Option<Conv2d<B>>,
    #[module(skip)]
    pub temporal: bool,
}

impl<B: Backend> Upsample<B> {
    /// Output frame `i` depends only on input frames `≤ ⌈i / 2⌉` (temporal) or `≤ i`.
    ///
    /// # Shapes
    /// - `x`: `[b, t, c_in, h, w]`
    /// - returns: `[b, t', c_out, 2h, 2w]`, `t' = 2t − 1` when temporal, else `t`
    pub fn forward(&self, x: Tensor<B, 5>) -> Tensor<B, 5> {
        self.forward_stream(x, None)
    }

    /// [`Upsample::forward`] of one chunk of a stream (see [`StreamState`]): after the stream's
    /// first chunk every frame becomes two (`t` → `2t`).
    pub fn forward_stream(&self, x: Tensor<B, 5>, state: Option<&mut StreamState<B>>) -> Tensor<B, 5> {
        let [b, t, c, h, w] = x.dims();
        let x = if self.temporal {
            let x = match &self.expand {
                // [b*t, 2c, h, w] is [b, t, 2, c, h, w]: frame 2i from the first c channels.
                Some(expand) => conv1x1(expand, x.reshape([b * t, c, h, w])).reshape([b, 2 * t, c, h, w]),
                None => x.reshape([b, t, 1, c * h * w]).repeat_dim(2, 2).reshape([b, 2 * t, c, h, w]),
            };
            if state.as_ref().is_some_and(|s| s.started()) {
                x
            } else {
                // [x0, x0', x1, x1', …] without its first frame: the first frame stays one.
                x.narrow(1, 1, 2 * t - 1)
            }
        } else {
            x
        };
        self.conv.forward_input(x, Input::Doubled, state)
    }

    /// This layer with depth to time in place of the repeat, starting where the repeat is: each
    /// frame's two halves are copies of it, so the output does not change until training moves
    /// the weights. Leaves a layer that does not up-sample time, or already does so, as it is.
    pub fn with_depth_to_time(self, device: &B::Device) -> Self {
        if !self.temporal || self.expand.is_some() {
            return self;
        }
        let c = self.conv.spatial.weight.dims()[1];
        let mut expand = Conv2dConfig::new([c, 2 * c], [1, 1]).init(device);
        let eye = Tensor::<B, 2>::eye(c, device);
        expand.weight = Param::from_tensor(Tensor::cat(vec![eye.clone(), eye], 0).reshape([2 * c, c, 1, 1]));
        expand.bias = expand.bias.map(|bias| Param::from_tensor(bias.val().zeros_like()));
        Upsample { expand: Some(expand), ..self }
    }

    /// FLOPs for one video of `input`, and the output's extent.
    pub fn flops(&self, input: Extent) -> (f64, Extent) {
        let expand = self.expand.as_ref().map_or(0.0, |e| conv_flops(e, input.positions()));
        let t = if self.temporal { 2 * input.t - 1 } else { input.t };
        let (conv, extent) = self.conv.flops(Extent { t, h: 2 * input.h, w: 2 * input.w });
        (expand + conv, extent)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::Flex;
    use burn::tensor::Distribution;

    /// Output frame j of a strided causal convolution sees the spatial outputs of input frames
    /// j·s − (k − 1) + i, i < k, the ones before the first being copies of it.
    #[test]
    fn a_strided_causal_conv_sees_the_right_frames() {
        let device = Default::default();
        let (k, s, t) = (3, 2, 7);
        let conv = CausalConvConfig::new([2, 3]).with_temporal_kernel(k).with_temporal_stride(s).init::<Flex>(&device);
        let x = Tensor::<Flex, 5>::random([2, t, 2, 4, 4], Distribution::Normal(0.0, 1.0), &device);
        let out = conv.forward(x.clone());
        let spatial = conv.spatial.forward(x.reshape([2 * t, 2, 4, 4])).reshape([2, t, 3, 4, 4]);
        let temporal = conv.temporal.as_ref().unwrap();
        assert_eq!(out.dims(), [2, 4, 3, 4, 4]);
        for j in 0..4 {
            let frames: Vec<_> = (0..k)
                .map(|i| {
                    let f = (j * s + i).saturating_sub(k - 1);
                    spatial.clone().narrow(1, f, 1).reshape([2, 3, 4, 4])
                })
                .collect();
            let expected = temporal.forward(Tensor::cat(frames, 1));
            let got = out.clone().narrow(1, j, 1).reshape([2, 3, 4, 4]);
            let d = (got - expected).abs().max().into_scalar();
            assert!(d < 1e-5, "frame {j} differs by {d}");
        }
    }

    /// The matrix-product 1×1 convolution equals burn's, in value and in every gradient.
    #[test]
    fn conv1x1_is_conv2d() {
        use burn::backend::Autodiff;
        type A = Autodiff<Flex>;
        let device = Default::default();
        for (c_in, c_out, h, w) in [(6, 3, 4, 5), (24, 8, 1, 3)] {
            let conv = Conv2dConfig::new([c_in, c_out], [1, 1]).init::<A>(&device);
            let x = Tensor::<A, 4>::random([3, c_in, h, w], Distribution::Normal(0.0, 1.0), &device).require_grad();
            let probe = Tensor::<A, 4>::random([3, c_out, h, w], Distribution::Normal(0.0, 1.0), &device);
            let ours = conv1x1(&conv, x.clone());
            let burns = conv.forward(x.clone());
            let d = (ours.clone() - burns.clone()).abs().max().into_scalar();
            assert!(d < 1e-5, "outputs differ by {d}");
            let g1 = (ours * probe.clone()).sum().backward();
            let g2 = (burns * probe).sum().backward();
            let diff = |a: Tensor<Flex, 4>, b: Tensor<Flex, 4>| (a - b).abs().max().into_scalar();
            let dx = diff(x.grad(&g1).unwrap(), x.grad(&g2).unwrap());
            let dw = diff(conv.weight.grad(&g1).unwrap(), conv.weight.grad(&g2).unwrap());
            let bias = conv.bias.as_ref().unwrap();
            let db = (bias.grad(&g1).unwrap() - bias.grad(&g2).unwrap()).abs().max().into_scalar();
            assert!(dx < 1e-4 && dw < 1e-4 && db < 1e-4, "gradients differ by {dx}, {dw}, {db}");
        }
    }

    #[test]
    fn frame_norm_is_group_norm_of_every_frame() {
        let device = Default::default();
        let mut norm = GroupNormConfig::new(2, 8).init::<Flex>(&device);
        let random = |n| Tensor::<Flex, 1>::random([n], Distribution::Normal(0.5, 1.0), &device);
        norm.gamma = Some(burn::module::Param::from_tensor(random(8)));
        norm.beta = Some(burn::module::Param::from_tensor(random(8)));
        let x = Tensor::<Flex, 5>::random([2, 3, 8, 5, 4], Distribution::Normal(1.0, 2.0), &device);
        let ours = frame_norm(&norm, x.clone());
        let burns = norm.forward(x.reshape([6, 8, 5, 4])).reshape([2, 3, 8, 5, 4]);
        let d = (ours - burns).abs().max().into_scalar();
        assert!(d < 1e-5, "frame_norm differs from GroupNorm by {d}");
    }
}
