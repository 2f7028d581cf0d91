//! Camera motion read off pixels: the horizontal shift between consecutive frames of the
//! lower part of the picture (the nearest land layer, which pans at the camera's speed), by
//! phase correlation of the rows, to a tenth of a pixel.

use crate::world::Camera;
use std::f64::consts::TAU;

/// Luma rows `[from, to)` of an RGB8 frame, mean-removed and Hann-windowed.
fn rows(rgb: &[u8], width: usize, from: usize, to: usize) -> Vec<Vec<f64>> {
    (from..to)
        .map(|y| {
            let luma: Vec<f64> = (0..width)
                .map(|x| {
                    let p = &rgb[(y * width + x) * 3..];
                    0.299 * p[0] as f64 + 0.587 * p[1] as f64 + 0.114 * p[2] as f64
                })
                .collect();
            let mean = luma.iter().sum::<f64>() / width as f64;
            luma.iter()
                .enumerate()
                .map(|(x, v)| (v - mean) * (0.5 - 0.5 * (TAU * x as f64 / width as f64).cos()))
                .collect()
        })
        .collect()
}

/// DFT of a real row: (re, im) per frequency (the width is small; O(n²) is fine).
fn dft(row: &[f64], cos: &[f64], sin: &[f64]) -> Vec<(f64, f64)> {
    let n = row.len();
    (0..n)
        .map(|k| {
            row.iter().enumerate().fold((0.0, 0.0), |(re, im), (x, &v)| {
                let i = (k * x) % n;
                (re + v * cos[i], im - v * sin[i])
            })
        })
        .collect()
}

/// The shift `d` in pixels (positive: the picture moved right) that maps the lower 30 % of `a`
/// onto that of `b`, within ±width/4.
pub fn horizontal_shift(a: &[u8], b: &[u8], width: usize, height: usize) -> f64 {
    let (from, to) = (height * 7 / 10, height);
    let cos: Vec<f64> = (0..width).map(|i| (TAU * i as f64 / width as f64).cos()).collect();
    let sin: Vec<f64> = (0..width).map(|i| (TAU * i as f64 / width as f64).sin()).collect();
    // Cross-power spectrum conj(A)·B, normalised per frequency, summed over rows.
    let mut cross = vec![(0.0, 0.0); width];
    for (ra, rb) in rows(a, width, from, to).iter().zip(rows(b, width, from, to).iter()) {
        let (fa, fb) = (dft(ra, &cos, &sin), dft(rb, &cos, &sin));
        for k in 0..width {
            let (ar, ai) = fa[k];
            let (br, bi) = fb[k];
            let (re, im) = (ar * br + ai * bi, ar * bi - ai * br);
            let norm = (re * re + im * im).sqrt() + 1e-9;
            cross[k].0 += re / norm;
            cross[k].1 += im / norm;
        }
    }
    // Inverse DFT (real part) over the shifts of interest.
    let limit = (width / 4) as i64;
    let corr = |s: i64| -> f64 {
        let x = s.rem_euclid(width as i64) as usize;
        (0..width)
            .map(|k| {
                let i = (k * x) % width;
                cross[k].0 * cos[i] - cross[k].1 * sin[i]
            })
            .sum()
    };
    let values: Vec<(i64, f64)> = (-limit..=limit).map(|s| (s, corr(s))).collect();
    let (best, peak) = values.iter().copied().fold((0, f64::MIN), |b, v| if v.1 > b.1 { v } else { b });
    // Parabolic refinement around the peak.
    let (l, r) = (corr(best - 1), corr(best + 1));
    let denom = l - 2.0 * peak + r;
    let offset = if denom.abs() > 1e-12 { (0.5 * (l - r) / denom).clamp(-0.5, 0.5) } else { 0.0 };
    best as f64 + offset
}

/// The horizontal shift (in columns of the grid, positive: the picture moved right) that best
/// maps the lower 30 % of the rows of `a` onto those of `b` in the least-squares sense, over
/// every channel: both are `[channels][height][width]`, row-major; searched over ±width/8 in
/// steps of a twentieth of a column, with linear interpolation. Phase correlation
/// ([`horizontal_shift`]) weights every frequency alike; this weights them by their energy, so
/// it reads the drift of a smooth picture, a blurred reconstruction's, and works on a latent's
/// grid as well as on pixels. NaN when the grid is too narrow (under 4 columns).
pub fn least_squares_shift(a: &[f32], b: &[f32], channels: usize, height: usize, width: usize) -> f64 {
    assert_eq!(a.len(), channels * height * width, "a is [channels][height][width]");
    assert_eq!(a.len(), b.len(), "two grids of one shape");
    let reach = (width / 8).max(1);
    let steps = 20 * reach as i64;
    let (from, columns) = (height * 7 / 10, reach + 1..width.saturating_sub(reach + 1));
    if columns.is_empty() {
        return f64::NAN; // too narrow to shift at all
    }
    let error = |s: f64| -> f64 {
        let mut sum = 0.0;
        for c in 0..channels {
            for y in from..height {
                let row = (c * height + y) * width;
                for x in columns.clone() {
                    // b(x) ≈ a(x − s)
                    let p = x as f64 - s;
                    let (i, f) = (p.floor() as usize, p - p.floor());
                    let v = a[row + i] as f64 * (1.0 - f) + a[row + i + 1] as f64 * f;
                    sum += (b[row + x] as f64 - v).powi(2);
                }
            }
        }
        sum
    };
    (-steps..=steps)
        .map(|k| k as f64 / 20.0)
        .map(|s| (s, error(s)))
        .fold((0.0, f64::MAX), |b, v| if v.1 < b.1 { v } else { b })
        .0
}

/// How far `frames` move along `camera`'s pan, by [`least_squares_shift`] between frame `i`
/// and frame `i + step` for each `i` of `starts`: (the shifts, counted along the pan's
/// direction so that left and right pans add up, against the shifts the nearest land makes in
/// that time), both in pixels summed over the pairs. The ratio of the sums over a set of clips
/// is the share of the pan it carries; a still camera adds nothing to either.
pub fn pan_along(
    frames: &[Vec<u8>],
    starts: impl IntoIterator<Item = usize>,
    step: usize,
    camera: Camera,
    (width, height, fps): (usize, usize, f64),
) -> (f64, f64) {
    // The nearest land pans at the camera's speed; the picture moves against the camera.
    let expected = -camera.velocity() * height as f64 / fps * step as f64;
    if expected == 0.0 {
        return (0.0, 0.0);
    }
    let along = expected.signum();
    starts
        .into_iter()
        .filter(|&i| i + step < frames.len())
        .map(|i| {
            let moved = least_squares_shift(&luma(&frames[i]), &luma(&frames[i + step]), 1, height, width);
            (along * moved, expected.abs())
        })
        .fold((0.0, 0.0), |(m, e), (a, b)| (m + a, e + b))
}

/// The luma of an RGB8 frame, `[1][height][width]`, for [`least_squares_shift`].
pub fn luma(rgb: &[u8]) -> Vec<f32> {
    rgb.chunks_exact(3).map(|p| 0.299 * p[0] as f32 + 0.587 * p[1] as f32 + 0.114 * p[2] as f32).collect()
}

/// The camera velocity (screen heights per second, the world's convention: negative pans
/// left) that the median shift between consecutive frames implies.
pub fn camera_velocity(frames: &[Vec<u8>], width: usize, height: usize, fps: f64) -> f64 {
    let mut shifts: Vec<f64> = frames.windows(2).map(|w| horizontal_shift(&w[0], &w[1], width, height)).collect();
    if shifts.is_empty() {
        return 0.0;
    }
    shifts.sort_by(f64::total_cmp);
    let median = shifts[shifts.len() / 2];
    // A camera panning right moves the picture left.
    -median * fps / height as f64
}

/// The camera label of a measured velocity.
pub fn camera_of(velocity: f64) -> Camera {
    Camera::from_velocity(velocity)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::world::{Attributes, ClipOptions, ClipSampler, PAN_SPEED, Split};

    #[test]
    fn a_shifted_texture_gives_its_shift() {
        let (w, h) = (64, 20);
        let texture = |x: f64, y: usize| 128.0 + 60.0 * (x * 0.31 + y as f64).sin() + 40.0 * (x * 0.113).cos();
        let frame = |dx: f64| -> Vec<u8> {
            (0..h).flat_map(|y| (0..w).flat_map(move |x| [texture(x as f64 - dx, y) as u8; 3])).collect()
        };
        for d in [-3.0, 0.0, 2.0, 5.0] {
            let got = horizontal_shift(&frame(0.0), &frame(d), w, h);
            assert!((got - d).abs() < 0.35, "shift {d}: measured {got}");
        }
    }

    #[test]
    fn least_squares_reads_a_smooth_shift_under_a_still_pattern() {
        let (w, h) = (64, 20);
        // A smooth picture that moves by d, plus a faint pattern of an 8-pixel grid that stays.
        let frame = |d: f64| -> Vec<f32> {
            (0..h)
                .flat_map(|_| (0..w).map(move |x| x as f64))
                .map(|x| (60.0 * (0.15 * (x - d)).sin() + 3.0 * (x * std::f64::consts::FRAC_PI_4).cos()) as f32)
                .collect()
        };
        for d in [-4.0, -1.25, 0.0, 2.5, 6.0] {
            let got = least_squares_shift(&frame(0.0), &frame(d), 1, h, w);
            assert!((got - d).abs() <= 0.1, "shift {d}: measured {got}");
        }
        assert!(least_squares_shift(&[0.0; 6], &[0.0; 6], 1, 2, 3).is_nan());
        assert_eq!(luma(&[10, 10, 10, 0, 255, 0]), [10.0, 0.587 * 255.0]);
    }

    /// World clips carry most of their pan both ways, a frozen one none of it, and a still
    /// camera adds nothing to either sum.
    #[test]
    fn pan_along_reads_the_share_of_the_pan() {
        let o = ClipOptions { width: 96, height: 96, fps: 8.0, frames: 13, transition_probability: 0.0 };
        let mut sampler = ClipSampler::new(Split::Train, 11);
        let (mut moved, mut expected, mut directions) = (0.0, 0.0, [false; 2]);
        while !(directions[0] && directions[1]) {
            let clip = sampler.next_clip(&o);
            let camera = clip.labels()[0].camera;
            let frames = clip.render(true);
            let (m, e) = pan_along(&frames, (0..13).step_by(4), 4, camera, (96, 96, 8.0));
            if camera == Camera::Still {
                assert_eq!((m, e), (0.0, 0.0));
                continue;
            }
            directions[(camera == Camera::PanRight) as usize] = true;
            // Three pairs of frames 4 apart, each expected to move 0.15 · 96 / 8 · 4 = 7.2 px.
            assert!((e - 3.0 * 7.2).abs() < 1e-9, "{e}");
            (moved, expected) = (moved + m, expected + e);
            let frozen = vec![frames[0].clone(); 13];
            assert_eq!(pan_along(&frozen, (0..13).step_by(4), 4, camera, (96, 96, 8.0)), (0.0, e));
        }
        assert!((0.5..1.2).contains(&(moved / expected)), "{moved} of {expected}");
    }

    #[test]
    fn world_clips_read_their_camera() {
        let o = ClipOptions { width: 128, height: 128, fps: 8.0, frames: 12, transition_probability: 0.0 };
        let mut sampler = ClipSampler::new(Split::Train, 5);
        let mut right = 0;
        for _ in 0..9 {
            let clip = sampler.next_clip(&o);
            let want: Attributes = clip.labels()[0];
            let v = camera_velocity(&clip.render(true), 128, 128, 8.0);
            right += (camera_of(v) == want.camera) as usize;
            if want.camera != Camera::Still {
                assert!((v - want.camera.velocity()).abs() < PAN_SPEED * 0.5, "{want}: {v}");
            }
        }
        assert!(right >= 8, "{right} of 9");
    }
}
