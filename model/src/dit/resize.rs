//! Moving a trained denoiser to another frame size (ViT's resolution transfer).
//!
//! A denoiser trained on `from` patches per frame side has learnt only the top-left `from`
//! rows and columns of its spatial position table, and only the relative offsets up to the
//! window it saw of its bias tables: run on a larger grid as it is, three quarters of a frame
//! would get positions it never trained. [`Denoiser::resized`] resamples what it learnt to the
//! new grid instead, bilinearly and by the frame's fraction: at twice the size, patch `(y, x)`
//! gets the position that `(y / 2, x / 2)` had, and an offset of `(dy, dx)` patches the bias
//! that `(dy / 2, dx / 2)` had, since the same scene covers twice the patches. The rest of the
//! network sees tokens, not their places, so it carries over as it is.

use burn::module::Param;
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};

use super::Denoiser;
use super::block::WindowAttention;

/// Where point `i` of a grid of `to` points falls on a grid of `from` points covering the same
/// span (pixel centres, as align-corners-false interpolation), clamped to the learnt points.
fn source_coordinate(i: usize, from: usize, to: usize) -> f64 {
    let x = (i as f64 + 0.5) * from as f64 / to as f64 - 0.5;
    x.clamp(0.0, (from - 1) as f64)
}

/// The two neighbours of coordinate `x` and the weight of the upper one.
fn neighbours(x: f64, len: usize) -> (usize, usize, f32) {
    let lo = x.floor() as usize;
    let hi = (lo + 1).min(len - 1);
    (lo, hi, (x - lo as f64) as f32)
}

/// Bilinear sample of `rows × cols` vectors of `width` values, laid out row-major in `at(r, c)`,
/// at fractional `(y, x)`, added into `out`.
fn bilinear(
    out: &mut [f32],
    at: impl Fn(usize, usize) -> usize,
    values: &[f32],
    (y, x): (f64, f64),
    [rows, cols]: [usize; 2],
) {
    let (y0, y1, wy) = neighbours(y, rows);
    let (x0, x1, wx) = neighbours(x, cols);
    let width = out.len();
    for (r, c, w) in
        [(y0, x0, (1.0 - wy) * (1.0 - wx)), (y0, x1, (1.0 - wy) * wx), (y1, x0, wy * (1.0 - wx)), (y1, x1, wy * wx)]
    {
        let start = at(r, c) * width;
        for (o, v) in out.iter_mut().zip(&values[start..start + width]) {
            *o += w * v;
        }
    }
}

/// `param` with its values replaced by `f` of them (same shape).
fn remap<B: Backend, const D: usize>(
    param: Param<Tensor<B, D>>,
    f: impl FnOnce(&[f32]) -> Vec<f32>,
) -> Param<Tensor<B, D>> {
    param.map(|tensor| {
        let shape = tensor.dims();
        let device = tensor.device();
        let values = tensor.into_data().convert::<f32>().to_vec::<f32>().expect("float parameters");
        Tensor::from_data(TensorData::new(f(&values), shape), &device)
    })
}

impl<B: Backend> Denoiser<B> {
    /// This denoiser, trained on frames of `from` patches (rows, columns), resampled to frames
    /// of `to` patches: its spatial position table and every block's relative position biases
    /// (see the module documentation). Rows and offsets outside `to` keep their values.
    ///
    /// # Panics
    /// If either grid is empty or larger than the position table.
    pub fn resized(self, from: [usize; 2], to: [usize; 2]) -> Denoiser<B> {
        let [rows, cols, d] = self.spatial_position.dims();
        for [h, w] in [from, to] {
            assert!(
                h > 0 && w > 0 && h <= rows && w <= cols,
                "a {h}×{w} grid is outside the {rows}×{cols} position table"
            );
        }
        let spatial_position = remap(self.spatial_position, |old| {
            let mut new = old.to_vec();
            for y in 0..to[0] {
                for x in 0..to[1] {
                    let point = (source_coordinate(y, from[0], to[0]), source_coordinate(x, from[1], to[1]));
                    let out = &mut new[(y * cols + x) * d..][..d];
                    out.fill(0.0);
                    bilinear(out, |r, c| r * cols + c, old, point, from);
                }
            }
            new
        });
        let blocks = self
            .blocks
            .into_iter()
            .map(|mut block| {
                block.attention = block.attention.resized(from, to);
                block
            })
            .collect();
        Denoiser { spatial_position, blocks, ..self }
    }
}

impl<B: Backend> WindowAttention<B> {
    /// The relative position biases of a block trained on frames of `from` patches, resampled
    /// for frames of `to` patches (offsets scaled by `to / from`).
    fn resized(self, from: [usize; 2], to: [usize; 2]) -> WindowAttention<B> {
        let table = self.table;
        let heads = self.num_heads;
        let (th, tw) = (table.height, table.width);
        let (side_h, side_w) = (2 * th - 1, 2 * tw - 1);
        // The largest offset along an axis in windows over a grid of `n` patches.
        let reach = |n: usize, side: usize| n.min(side) - 1;
        let (old_h, old_w) = (reach(from[0], th), reach(from[1], tw));
        let (new_h, new_w) = (reach(to[0], th), reach(to[1], tw));
        // Offset `o` of the new grid on the old one's offset axis `[-reach, reach]`, as an index
        // from `-reach` (so the learnt offsets are `0..=2·reach`).
        let source = |o: i64, reach: usize, from: usize, to: usize| {
            (o as f64 * from as f64 / to as f64 + reach as f64).clamp(0.0, 2.0 * reach as f64)
        };
        let relative_bias = remap(self.relative_bias, |old| {
            let mut new = old.to_vec();
            for dt in 0..2 * table.frames - 1 {
                let row = |dy: usize, dx: usize| (dt * side_h + dy) * side_w + dx;
                // The learnt offsets of this dt, as a (2·old_h + 1) × (2·old_w + 1) grid.
                let at = |r: usize, c: usize| row(r + th - 1 - old_h, c + tw - 1 - old_w);
                for dy in -(new_h as i64)..=new_h as i64 {
                    for dx in -(new_w as i64)..=new_w as i64 {
                        let point = (source(dy, old_h, from[0], to[0]), source(dx, old_w, from[1], to[1]));
                        let r = row((dy + th as i64 - 1) as usize, (dx + tw as i64 - 1) as usize);
                        let out = &mut new[r * heads..][..heads];
                        out.fill(0.0);
                        bilinear(out, at, old, point, [2 * old_h + 1, 2 * old_w + 1]);
                    }
                }
            }
            new
        });
        WindowAttention { relative_bias, ..self }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dit::DenoiserConfig;
    use burn::backend::Flex;

    type B = Flex;

    fn values<const D: usize>(p: &Param<Tensor<B, D>>) -> Vec<f32> {
        p.val().into_data().to_vec::<f32>().unwrap()
    }

    #[test]
    fn doubling_the_grid_stretches_positions_and_offsets() {
        let device = Default::default();
        // A 12 × 12 position table, of which the 8 × 8 grid uses a part.
        let config = DenoiserConfig::tiny().with_hidden_size(12).with_depth(2).with_max_latent_size(24);
        let model = config.init::<B>(&device);
        let before = (values(&model.spatial_position), values(&model.blocks[1].attention.relative_bias));
        let [_, cols, d] = model.spatial_position.dims();
        let table = model.blocks[1].attention.table;
        let heads = model.blocks[1].attention.num_heads;
        let resized = model.resized([4, 4], [8, 8]);
        let (pos, bias) = (values(&resized.spatial_position), values(&resized.blocks[1].attention.relative_bias));

        // A position in the middle of four learnt ones is their mean; the corners keep theirs.
        let p = |v: &[f32], y: usize, x: usize| v[(y * cols + x) * d..][..d].to_vec();
        let (y, x) = (3, 4); // centre (3.5, 4.5) on the new grid → (1.25, 1.75) on the old
        let expected: Vec<f32> = (0..d)
            .map(|k| {
                let q = |yy, xx| p(&before.0, yy, xx)[k];
                0.75 * (0.25 * q(1, 1) + 0.75 * q(1, 2)) + 0.25 * (0.25 * q(2, 1) + 0.75 * q(2, 2))
            })
            .collect();
        for (a, b) in p(&pos, y, x).iter().zip(&expected) {
            assert!((a - b).abs() < 1e-6, "{a} against {b}");
        }
        assert_eq!(p(&pos, 0, 0), p(&before.0, 0, 0));
        assert_eq!(p(&pos, 7, 7), p(&before.0, 3, 3));
        // Outside the new grid nothing moved.
        assert_eq!(p(&pos, 8, 9), p(&before.0, 8, 9));

        // Offset (dy, dx) = (4, -2) on the new grid is (2, -1) on the old; (1, 0) is halfway
        // between (0, 0) and (1, 0).
        let (sh, sw) = (2 * table.height - 1, 2 * table.width - 1);
        let b = |v: &[f32], dt: usize, dy: i64, dx: i64| {
            let r = (dt * sh + (dy + table.height as i64 - 1) as usize) * sw + (dx + table.width as i64 - 1) as usize;
            v[r * heads..][..heads].to_vec()
        };
        for dt in 0..2 * table.frames - 1 {
            assert_eq!(b(&bias, dt, 4, -2), b(&before.1, dt, 2, -1));
            assert_eq!(b(&bias, dt, 0, 0), b(&before.1, dt, 0, 0));
            let half: Vec<f32> =
                b(&before.1, dt, 0, 0).iter().zip(b(&before.1, dt, 1, 0)).map(|(a, c)| 0.5 * (a + c)).collect();
            for (a, e) in b(&bias, dt, 1, 0).iter().zip(&half) {
                assert!((a - e).abs() < 1e-6);
            }
            // The largest new offset comes from the largest learnt one (7 / 2 → clamped to 3).
            assert_eq!(b(&bias, dt, 7, 7), b(&before.1, dt, 3, 3));
        }
    }

    #[test]
    fn resizing_to_the_same_grid_changes_nothing() {
        let device = Default::default();
        let config = DenoiserConfig::tiny().with_hidden_size(12).with_depth(2).with_max_latent_size(16);
        let model = config.init::<B>(&device);
        let before = (values(&model.spatial_position), values(&model.blocks[0].attention.relative_bias));
        let resized = model.resized([4, 6], [4, 6]);
        assert_eq!(values(&resized.spatial_position), before.0);
        assert_eq!(values(&resized.blocks[0].attention.relative_bias), before.1);
    }
}
