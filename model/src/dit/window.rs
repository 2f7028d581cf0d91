//! Non-overlapping 3D attention windows over the token grid of a latent video, and the
//! relative position index of the attention bias inside a window.
//!
//! Spatial windows cover one frame (or `s × s` tokens of it); spatio-temporal windows cover
//! `t_w × s × s` tokens. The spatial sizes must divide the token grid; the time axis is padded
//! up to a whole number of windows with tokens that [`Partition::key_padding_mask`] hides from
//! attention, so clips of any length work with any temporal window.

use burn::tensor::backend::Backend;
use burn::tensor::{Bool, Tensor, TensorData};

/// A box of tokens: frames × rows × columns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Extent {
    pub frames: usize,
    pub height: usize,
    pub width: usize,
}

impl Extent {
    pub fn new(frames: usize, height: usize, width: usize) -> Extent {
        Extent { frames, height, width }
    }

    /// Tokens in the box.
    pub fn volume(&self) -> usize {
        self.frames * self.height * self.width
    }

    /// Rows of a relative position bias table over this box: one per offset (dt, dy, dx).
    pub fn relative_offsets(&self) -> usize {
        (2 * self.frames - 1) * (2 * self.height - 1) * (2 * self.width - 1)
    }
}

/// How a token grid is cut into windows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Partition {
    /// The token grid of the clip.
    pub grid: Extent,
    /// One window, clamped to the grid.
    pub window: Extent,
    /// Windows along each axis; `counts.frames * window.frames` may exceed `grid.frames`.
    pub counts: Extent,
}

impl Partition {
    /// Windows of `window` tokens (`None` spatially: the whole frame) over `grid`. Each window
    /// side is clamped to the grid.
    ///
    /// # Panics
    /// If a spatial window side does not divide the grid.
    pub fn new(grid: Extent, window_frames: usize, window_side: Option<usize>) -> Partition {
        let side = |n: usize| window_side.map_or(n, |s| s.min(n));
        let window = Extent::new(window_frames.clamp(1, grid.frames), side(grid.height), side(grid.width));
        assert!(
            grid.height.is_multiple_of(window.height) && grid.width.is_multiple_of(window.width),
            "windows of {}×{} tokens do not tile a {}×{} token grid",
            window.height,
            window.width,
            grid.height,
            grid.width
        );
        let counts =
            Extent::new(grid.frames.div_ceil(window.frames), grid.height / window.height, grid.width / window.width);
        Partition { grid, window, counts }
    }

    /// Windows in one clip.
    pub fn num_windows(&self) -> usize {
        self.counts.volume()
    }

    /// Frames after padding the time axis to whole windows.
    fn padded_frames(&self) -> usize {
        self.counts.frames * self.window.frames
    }

    /// Cuts tokens into windows (padding frames are zeros).
    ///
    /// # Shapes
    /// - `x`: `[b, t*h*w, d]`, tokens in (frame, row, column) order
    /// - returns: `[b*nt*nh*nw, tw*wh*ww, d]`, windows in (clip, frame, row, column) order
    pub fn partition<B: Backend>(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let [b, n, d] = x.dims();
        let (g, w, c) = (self.grid, self.window, self.counts);
        assert_eq!(n, g.volume(), "{n} tokens do not fill a {g:?} grid");
        let x = x.reshape([b, g.frames, g.height * g.width, d]); // [b, t, h*w, d]
        let x = if self.padded_frames() > g.frames {
            let pad = Tensor::zeros([b, self.padded_frames() - g.frames, g.height * g.width, d], &x.device());
            Tensor::cat(vec![x, pad], 1) // [b, nt*tw, h*w, d]
        } else {
            x
        };
        let x = x.reshape([b, c.frames, w.frames, c.height, w.height, c.width, w.width, d]); // [b, nt, tw, nh, wh, nw, ww, d]
        let x = crate::cpu::permute_rows(x, [0, 1, 3, 5, 2, 4, 6, 7]); // [b, nt, nh, nw, tw, wh, ww, d]
        x.reshape([b * c.volume(), w.volume(), d])
    }

    /// Puts windows back into token order and drops the padding frames: the inverse of
    /// [`Partition::partition`].
    ///
    /// # Shapes
    /// - `x`: `[b*nt*nh*nw, tw*wh*ww, d]`
    /// - returns: `[b, t*h*w, d]`
    pub fn merge<B: Backend>(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let [bw, l, d] = x.dims();
        let (g, w, c) = (self.grid, self.window, self.counts);
        assert!(l == w.volume() && bw.is_multiple_of(c.volume()), "[{bw}, {l}, {d}] are not windows of {self:?}");
        let b = bw / c.volume();
        let x = x.reshape([b, c.frames, c.height, c.width, w.frames, w.height, w.width, d]); // [b, nt, nh, nw, tw, wh, ww, d]
        let x = crate::cpu::permute_rows(x, [0, 1, 4, 2, 5, 3, 6, 7]); // [b, nt, tw, nh, wh, nw, ww, d]
        let x = x.reshape([b, self.padded_frames(), g.height * g.width, d]); // [b, nt*tw, h*w, d]
        x.narrow(1, 0, g.frames).reshape([b, g.volume(), d])
    }

    /// Which keys of each window are padding frames; `None` when no window has any.
    ///
    /// # Shapes
    /// - returns: `[nt*nh*nw, tw*wh*ww]`, true at padding
    pub fn key_padding_mask<B: Backend>(&self, device: &B::Device) -> Option<Tensor<B, 2, Bool>> {
        if self.padded_frames() == self.grid.frames {
            return None;
        }
        let (w, c) = (self.window, self.counts);
        let per_frame = w.height * w.width;
        let spatial_windows = c.height * c.width;
        let mask: Vec<bool> = (0..c.volume())
            .flat_map(|k| {
                let first = (k / spatial_windows) * w.frames;
                (0..w.volume()).map(move |j| first + j / per_frame >= self.grid.frames)
            })
            .collect();
        Some(Tensor::from_data(TensorData::new(mask, [c.volume(), w.volume()]), device))
    }

    /// For every (query, key) pair of a window, the row of a relative position bias table over
    /// `table` (a box at least as large as the window) that holds their offset.
    ///
    /// Returns `window.volume()²` indices, query-major.
    ///
    /// # Panics
    /// If the window is larger than `table` along any axis.
    pub fn relative_index(&self, table: Extent) -> Vec<i64> {
        let w = self.window;
        assert!(
            w.frames <= table.frames && w.height <= table.height && w.width <= table.width,
            "a window of {w:?} does not fit a relative position table over {table:?}"
        );
        let coord = |i: usize| {
            let i = i as i64;
            let (hw, ww) = ((w.height * w.width) as i64, w.width as i64);
            (i / hw, (i / ww) % w.height as i64, i % ww)
        };
        let (tt, th, tw) = (table.frames as i64, table.height as i64, table.width as i64);
        let l = w.volume();
        let mut index = Vec::with_capacity(l * l);
        for q in 0..l {
            let (qt, qy, qx) = coord(q);
            for k in 0..l {
                let (kt, ky, kx) = coord(k);
                let (dt, dy, dx) = (qt - kt + tt - 1, qy - ky + th - 1, qx - kx + tw - 1);
                index.push((dt * (2 * th - 1) + dy) * (2 * tw - 1) + dx);
            }
        }
        index
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::Flex;
    use burn::tensor::{Distribution, Int};

    type B = Flex;

    #[test]
    fn partition_then_merge_is_exact() {
        let device = Default::default();
        for (grid, frames, side) in [
            (Extent::new(5, 8, 8), 2, Some(4)),
            (Extent::new(4, 8, 6), 4, None),
            (Extent::new(3, 4, 4), 1, Some(2)),
            (Extent::new(1, 16, 16), 1, None),
        ] {
            let p = Partition::new(grid, frames, side);
            let x = Tensor::<B, 3>::random([2, grid.volume(), 3], Distribution::Default, &device);
            let windows = p.partition(x.clone());
            assert_eq!(windows.dims(), [2 * p.num_windows(), p.window.volume(), 3]);
            p.merge(windows).into_data().assert_eq(&x.into_data(), true);
        }
    }

    #[test]
    fn windows_hold_neighbouring_tokens() {
        // Token value = its flat index; window 0 of a 2×4×4 grid cut 2×2×2 holds frames 0–1,
        // rows 0–1, columns 0–1.
        let device = Default::default();
        let grid = Extent::new(2, 4, 4);
        let p = Partition::new(grid, 2, Some(2));
        let x = Tensor::<B, 1, Int>::arange(0..32, &device).float().reshape([1, 32, 1]);
        let first: Vec<f32> = p.partition(x).narrow(0, 0, 1).into_data().to_vec().unwrap();
        assert_eq!(first, [0.0, 1.0, 4.0, 5.0, 16.0, 17.0, 20.0, 21.0]);
    }

    #[test]
    fn padding_frames_are_masked() {
        let p = Partition::new(Extent::new(3, 2, 2), 2, None);
        let mask: Vec<bool> = p.key_padding_mask::<B>(&Default::default()).unwrap().into_data().to_vec().unwrap();
        let expected: Vec<bool> = [[false; 8], [false, false, false, false, true, true, true, true]].concat();
        assert_eq!(mask, expected);
        assert!(Partition::new(Extent::new(4, 2, 2), 2, None).key_padding_mask::<B>(&Default::default()).is_none());
    }

    #[test]
    fn relative_index_depends_on_offset_only() {
        let table = Extent::new(2, 3, 3);
        let p = Partition::new(Extent::new(2, 2, 2), 2, None);
        let index = p.relative_index(table);
        let l = p.window.volume();
        // Same offset, same row; the zero offset is the table's centre.
        assert_eq!(index[0], index[l + 1]);
        let centre =
            ((table.frames - 1) * (2 * table.height - 1) + table.height - 1) * (2 * table.width - 1) + table.width - 1;
        assert!((0..l).all(|i| index[i * l + i] == centre as i64));
        assert!(index.iter().all(|&i| (0..table.relative_offsets() as i64).contains(&i)));
    }
}
