//! Direct convolutions for the CPU backend at inference: the VAE's spatial convolutions (`k×k`,
//! stride 1, zero padding that keeps the size, no groups) and its causal temporal ones (a 1×1
//! convolution over the frames each output sees).
//!
//! burn's CPU backend (`flex`) runs a spatial convolution as im2col and a matrix product: it
//! copies the input to channels-last one element at a time, gathers every output position's
//! `k·k·c_in` inputs, multiplies by a weight matrix of `c_out` rows (8 to 64 in the cpu VAE,
//! too few for the product to run fast) and writes the result back transposed. The temporal
//! convolution first stacked copies of the frames along channels. And every SiLU and
//! up-sampling before a convolution was a pass of its own over memory. At the cpu VAE's widths
//! that was most of a decode (`endless-model decode-bench`; BENCHMARKS.md).
//!
//! Here every output row of a block of 8 output channels is made in registers: for each input
//! plane and tap, a run of input values along the row is loaded once and multiplied into the 8
//! channels' sums. Each frame is padded once, with the SiLU or the up-sampling before the
//! convolution done in the same pass ([`Input`]), so no position checks its bounds; the
//! temporal convolution reads the frames where they are. The products are fused multiply-adds
//! where the CPU has them (`pulp`'s x86-v3 level, AVX2 and FMA); elsewhere plain products and
//! sums. Autodiff backends, GPUs and other shapes keep burn's ops ([`applies`]).

use burn::nn::PaddingConfig2d;
use burn::nn::conv::Conv2d;
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};
use rayon::prelude::*;

use super::layers::Input;
use crate::cpu::{Map, on_cpu, silu_of, values};

/// Output channels made together, their sums in registers: 8, or 4 for a convolution of at
/// most 4 outputs (the decoder's last, to RGB), which would waste most of a block of 8.
const BLOCK: usize = 8;
const SMALL_BLOCK: usize = 4;

/// Whether [`conv2d`] computes `conv.forward` for `B`: the CPU backend without autodiff, and a
/// square odd kernel of stride 1 and dilation 1, padded by half its size, without groups.
pub fn applies<B: Backend>(conv: &Conv2d<B>) -> bool {
    let [k, kw] = conv.kernel_size;
    on_cpu::<B>()
        && k == kw
        && k % 2 == 1
        && conv.stride == [1, 1]
        && conv.dilation == [1, 1]
        && conv.groups == 1
        && conv.padding == PaddingConfig2d::Explicit(k / 2, k / 2, k / 2, k / 2)
}

/// Whether [`temporal`] can run `conv` for `B`: the CPU backend without autodiff, and a plain
/// 1×1 convolution.
pub fn applies_pointwise<B: Backend>(conv: &Conv2d<B>) -> bool {
    on_cpu::<B>() && conv.kernel_size == [1, 1] && conv.stride == [1, 1] && conv.groups == 1
}

/// The weight (`[c_out, c_in, k, k]`) and bias of `conv`.
fn parameters<B: Backend>(conv: &Conv2d<B>) -> (Vec<f32>, Option<Vec<f32>>) {
    (values(conv.weight.val()), conv.bias.as_ref().map(|b| values(b.val())))
}

/// `conv.forward(input.apply(x))` by the direct kernel, for a convolution that [`applies`].
///
/// # Shapes
/// - `x`: `[n, c_in, h, w]`
/// - returns: `[n, c_out, h, w]` (`[n, c_out, 2h, 2w]` when [`Input::Doubled`])
pub fn conv2d<B: Backend>(conv: &Conv2d<B>, x: Tensor<B, 4>, input: Input) -> Tensor<B, 4> {
    let device = x.device();
    let [n, c_in, h, w] = x.dims();
    let [c_out, _, k, _] = conv.weight.dims();
    let (weight, bias) = parameters(conv);
    let (h, w) = if input == Input::Doubled { (2 * h, 2 * w) } else { (h, w) };
    let p = k / 2;
    let padded = pad(&values(x), [n, c_in, h, w], p, input);
    let (hp, wp) = (h + 2 * p, w + 2 * p);
    let planes: Vec<&[f32]> = padded.chunks(hp * wp).collect();
    let frames: Vec<&[&[f32]]> = planes.chunks(c_in).collect();
    let geometry = Geometry { h, w, k, wp };
    let y = convolve(&frames, geometry, &weight, bias.as_deref(), c_out);
    Tensor::from_data(TensorData::new(y, [n, c_out, h, w]), &device)
}

/// A causal temporal convolution of stride 1 by the direct kernel, for a `conv` that
/// [`applies_pointwise`]: output frame `j` is `conv` of frames `j .. j + k` of `past` and `y`
/// together, stacked along channels (oldest first), without stacking them.
///
/// # Shapes
/// - `past`: `[b, k − 1, c, h, w]`
/// - `y`: `[b, t, c, h, w]`
/// - returns: `[b, t, c_out, h, w]`
pub fn temporal<B: Backend>(conv: &Conv2d<B>, past: Tensor<B, 5>, y: Tensor<B, 5>) -> Tensor<B, 5> {
    let device = y.device();
    let [b, t, c, h, w] = y.dims();
    let k = past.dims()[1] + 1;
    let [c_out, c_in, _, _] = conv.weight.dims();
    assert_eq!(c_in, k * c, "a temporal convolution over {k} frames of {c} channels");
    let (weight, bias) = parameters(conv);
    let (past, y) = (values(past), values(y));
    fn frame(v: &[f32], i: usize, size: usize, plane: usize) -> std::slice::Chunks<'_, f32> {
        v[i * size..][..size].chunks(plane)
    }
    let (size, plane) = (c * h * w, h * w);
    let frames: Vec<Vec<&[f32]>> = (0..b * t)
        .map(|i| {
            let (bi, j) = (i / t, i % t);
            (j..j + k)
                .flat_map(|f| {
                    if f < k - 1 {
                        frame(&past, bi * (k - 1) + f, size, plane)
                    } else {
                        frame(&y, bi * t + f - (k - 1), size, plane)
                    }
                })
                .collect()
        })
        .collect();
    let frames: Vec<&[&[f32]]> = frames.iter().map(Vec::as_slice).collect();
    let geometry = Geometry { h, w, k: 1, wp: w };
    let out = convolve(&frames, geometry, &weight, bias.as_deref(), c_out);
    Tensor::from_data(TensorData::new(out, [b, t, c_out, h, w]), &device)
}

/// Every frame of `x` (`[n, c, h, w]` after `input`: `[n, c, h / 2, w / 2]` given when
/// doubled) made as `input` says and zero-padded by `p` on every side: `[n, c, h + 2p, w + 2p]`.
fn pad(x: &[f32], [n, c, h, w]: [usize; 4], p: usize, input: Input) -> Vec<f32> {
    let (hp, wp) = (h + 2 * p, w + 2 * p);
    let mut padded = vec![0.0f32; n * c * hp * wp];
    let from_plane = if input == Input::Doubled { h * w / 4 } else { h * w };
    padded.par_chunks_mut(hp * wp).zip(x.par_chunks(from_plane)).for_each(|(to, from)| {
        let rows = to.chunks_mut(wp).skip(p);
        match input {
            Input::AsIs => rows.zip(from.chunks(w)).for_each(|(row, src)| row[p..p + w].copy_from_slice(src)),
            Input::Silu => {
                rows.zip(from.chunks(w)).for_each(|(row, src)| row[p..p + w].copy_from_slice(src));
                // The padding stays zero: SiLU(0) = 0.
                pulp::Arch::new().dispatch(Map(to, silu_of));
            }
            Input::Doubled => {
                for (i, row) in rows.take(h).enumerate() {
                    for (pair, &v) in row[p..p + w].chunks_exact_mut(2).zip(&from[(i / 2) * (w / 2)..][..w / 2]) {
                        pair.fill(v);
                    }
                }
            }
        }
    });
    padded
}

/// The sizes of one convolution: output `h × w`, a `k×k` kernel, input rows `wp` long.
#[derive(Clone, Copy)]
struct Geometry {
    h: usize,
    w: usize,
    k: usize,
    wp: usize,
}

/// The convolution of every frame's input planes (`frames[i]`: `c_in` planes, padded to rows
/// of `wp`) with `weight` (`[c_out, c_in, k, k]`) and `bias`: `[frames, c_out, h, w]`.
fn convolve(frames: &[&[&[f32]]], g: Geometry, weight: &[f32], bias: Option<&[f32]>, c_out: usize) -> Vec<f32> {
    if c_out <= SMALL_BLOCK {
        convolve_in_blocks::<SMALL_BLOCK>(frames, g, weight, bias, c_out)
    } else {
        convolve_in_blocks::<BLOCK>(frames, g, weight, bias, c_out)
    }
}

/// [`convolve`], `BLOCK` output channels at a time.
fn convolve_in_blocks<const BLOCK: usize>(
    frames: &[&[&[f32]]],
    g: Geometry,
    weight: &[f32],
    bias: Option<&[f32]>,
    c_out: usize,
) -> Vec<f32> {
    let Geometry { h, w, k, .. } = g;
    let c_in = frames.first().map_or(0, |f| f.len());
    assert_eq!(weight.len(), c_out * c_in * k * k, "weight of [{c_out}, {c_in}, {k}, {k}]");
    assert!(bias.is_none_or(|b| b.len() == c_out), "a bias per output channel");
    let plane = h * w;
    // Weights as [block][c_in][k][k][BLOCK], the missing channels of the last block zero.
    let blocks = c_out.div_ceil(BLOCK);
    let taps = c_in * k * k;
    let mut packed = vec![0.0f32; blocks * taps * BLOCK];
    for co in 0..c_out {
        for tap in 0..taps {
            packed[((co / BLOCK) * taps + tap) * BLOCK + co % BLOCK] = weight[co * taps + tap];
        }
    }
    let mut out = vec![0.0f32; frames.len() * blocks * BLOCK * plane];
    out.par_chunks_mut(BLOCK * plane).enumerate().for_each(|(i, out)| {
        let (frame, block) = (i / blocks, i % blocks);
        let mut first = [0.0f32; BLOCK];
        for (j, b) in first.iter_mut().enumerate() {
            *b = bias.and_then(|bias| bias.get(block * BLOCK + j)).copied().unwrap_or(0.0);
        }
        let weights = &packed[block * taps * BLOCK..][..taps * BLOCK];
        pulp::Arch::new().dispatch(Block { g, planes: frames[frame], weights, bias: first, out });
    });
    if c_out.is_multiple_of(BLOCK) {
        return out;
    }
    // Drop the last block's padding channels.
    let kept = c_out * plane;
    let mut compact = Vec::with_capacity(frames.len() * kept);
    for frame in out.chunks(blocks * BLOCK * plane) {
        compact.extend_from_slice(&frame[..kept]);
    }
    compact
}

/// `BLOCK` output planes (`out`, `[BLOCK, h, w]`) of one frame's input `planes` with `weights`
/// (`[c_in, k, k, BLOCK]`) and `bias`.
struct Block<'a, const BLOCK: usize> {
    g: Geometry,
    planes: &'a [&'a [f32]],
    weights: &'a [f32],
    bias: [f32; BLOCK],
    out: &'a mut [f32],
}

impl<const BLOCK: usize> pulp::WithSimd for Block<'_, BLOCK> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: pulp::Simd>(mut self, simd: S) {
        let lanes = S::F32_LANES;
        let w = self.g.w;
        for y in 0..self.g.h {
            let mut x0 = 0;
            while x0 + lanes <= w {
                self.run::<S, true>(simd, y, x0, lanes);
                x0 += lanes;
            }
            if x0 < w {
                self.run::<S, false>(simd, y, x0, w - x0);
            }
        }
    }
}

impl<const BLOCK: usize> Block<'_, BLOCK> {
    /// Output row `y`, columns `x0 .. x0 + len` (`len` a whole vector when `FULL`), of every
    /// channel of the block: the sums stay in registers over every input plane and tap.
    #[inline(always)]
    fn run<S: pulp::Simd, const FULL: bool>(&mut self, simd: S, y: usize, x0: usize, len: usize) {
        let Geometry { h, w, k, wp, .. } = self.g;
        let load = |from: &[f32]| {
            if FULL {
                pulp::bytemuck::pod_read_unaligned::<S::f32s>(pulp::bytemuck::cast_slice(&from[..S::F32_LANES]))
            } else {
                simd.partial_load_f32s(&from[..len])
            }
        };
        let mut sums = self.bias.map(|b| simd.splat_f32s(b));
        let mut taps = self.weights.chunks_exact(BLOCK);
        for plane in self.planes {
            for ky in 0..k {
                let row = &plane[(y + ky) * wp + x0..];
                for kx in 0..k {
                    let values = load(&row[kx..]);
                    let tap = taps.next().expect("a weight per tap");
                    for (sum, &weight) in sums.iter_mut().zip(tap) {
                        *sum = simd.mul_add_e_f32s(simd.splat_f32s(weight), values, *sum);
                    }
                }
            }
        }
        let plane = h * w;
        for (j, sum) in sums.into_iter().enumerate() {
            let to = &mut self.out[j * plane + y * w + x0..][..len];
            if FULL {
                to.copy_from_slice(pulp::bytemuck::cast_slice(std::slice::from_ref(&sum)));
            } else {
                simd.partial_store_f32s(to, sum);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::{Autodiff, Flex};
    use burn::nn::conv::Conv2dConfig;
    use burn::tensor::Distribution;

    fn max_difference<const D: usize>(a: Tensor<Flex, D>, b: Tensor<Flex, D>) -> f32 {
        assert_eq!(a.dims(), b.dims());
        (a - b).abs().max().into_scalar()
    }

    /// The direct kernel gives burn's convolution of the input made as `Input` says: widths
    /// that fill blocks and that do not, rows that fill vectors and that do not, kernels of 1, 3
    /// and 5, with and without bias.
    #[test]
    fn direct_conv_is_burns_conv() {
        let device = Default::default();
        for (c_in, c_out, k, h, w, bias) in [
            (8, 8, 3, 16, 16, true),
            (16, 8, 3, 10, 22, true),
            (3, 3, 3, 6, 8, false),
            (8, 4, 3, 8, 8, true),
            (8, 13, 5, 12, 8, true),
            (64, 32, 3, 4, 4, true),
            (5, 17, 1, 4, 12, true),
        ] {
            let conv = Conv2dConfig::new([c_in, c_out], [k, k])
                .with_padding(PaddingConfig2d::Explicit(k / 2, k / 2, k / 2, k / 2))
                .with_bias(bias)
                .init::<Flex>(&device);
            assert!(applies(&conv));
            let x = Tensor::<Flex, 4>::random([3, c_in, h, w], Distribution::Normal(0.0, 2.0), &device);
            for input in [Input::AsIs, Input::Silu, Input::Doubled] {
                let d = max_difference(conv2d(&conv, x.clone(), input), conv.forward(input.apply(x.clone())));
                assert!(d < 1e-4, "[{c_in} → {c_out}, {k}×{k}, {h}×{w}, {input:?}]: differs by {d}");
            }
        }
    }

    /// Output frame j of the direct temporal convolution is burn's 1×1 convolution of frames
    /// j .. j + k of the past and the chunk stacked along channels.
    #[test]
    fn direct_temporal_conv_is_a_conv_of_stacked_frames() {
        let device = Default::default();
        let (b, t, c, c_out, h, w, k) = (2, 5, 6, 11, 4, 9, 3);
        let conv = Conv2dConfig::new([k * c, c_out], [1, 1]).init::<Flex>(&device);
        assert!(applies_pointwise(&conv));
        let past = Tensor::<Flex, 5>::random([b, k - 1, c, h, w], Distribution::Normal(0.0, 1.0), &device);
        let y = Tensor::<Flex, 5>::random([b, t, c, h, w], Distribution::Normal(0.0, 1.0), &device);
        let ours = temporal(&conv, past.clone(), y.clone());
        let all = Tensor::cat(vec![past, y], 1);
        for j in 0..t {
            let stacked = all.clone().narrow(1, j, k).reshape([b, k * c, h, w]);
            let expected = conv.forward(stacked);
            let got = ours.clone().narrow(1, j, 1).reshape([b, c_out, h, w]);
            let d = max_difference(got, expected);
            assert!(d < 1e-4, "frame {j} differs by {d}");
        }
    }

    #[test]
    fn burns_ops_stay_where_the_kernels_do_not_apply() {
        let device = Default::default();
        let same = |k: usize| PaddingConfig2d::Explicit(k / 2, k / 2, k / 2, k / 2);
        let trained = Conv2dConfig::new([4, 4], [3, 3]).with_padding(same(3)).init::<Autodiff<Flex>>(&device);
        assert!(!applies(&trained), "autodiff needs burn's convolution for its gradients");
        let pointwise = Conv2dConfig::new([4, 4], [1, 1]).init::<Autodiff<Flex>>(&device);
        assert!(!applies_pointwise(&pointwise));
        let strided = Conv2dConfig::new([4, 4], [3, 3]).with_padding(same(3)).with_stride([2, 2]).init::<Flex>(&device);
        assert!(!applies(&strided));
        let unpadded = Conv2dConfig::new([4, 4], [3, 3]).init::<Flex>(&device);
        assert!(!applies(&unpadded));
        let even = Conv2dConfig::new([4, 4], [2, 2]).with_padding(same(2)).init::<Flex>(&device);
        assert!(!applies(&even));
    }
}
