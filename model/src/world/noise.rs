//! Hash-based value noise. Every lattice value comes from a 64-bit hash of its integer
//! coordinates and the world seed, so the world never repeats however far the camera pans
//! (the lattice is indexed by `i64`), and the same seed always gives the same bits.

/// A 64-bit avalanche hash (the SplitMix64 finaliser) of a seed and two lattice coordinates.
#[inline]
pub fn hash(seed: u64, i: i64, j: i64) -> u64 {
    let mut z = seed ^ (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ (j as u64).wrapping_mul(0xC2B2_AE3D_27D4_EB4F);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The hash mapped to [0, 1) in f64, all 53 bits of the mantissa: a uniform draw.
#[inline]
pub fn hash_f64(seed: u64, i: i64, j: i64) -> f64 {
    (hash(seed, i, j) >> 11) as f64 / (1u64 << 53) as f64
}

/// The hash mapped to [0, 1).
#[inline]
pub fn hash01(seed: u64, i: i64, j: i64) -> f32 {
    (hash(seed, i, j) >> 40) as f32 / (1u64 << 24) as f32
}

/// Quintic fade: C2-continuous interpolation weight.
#[inline]
fn fade(t: f32) -> f32 {
    t * t * t * (t * (t * 6.0 - 15.0) + 10.0)
}

/// Splits a coordinate into its lattice cell and the position inside it. Done in f64 so that
/// a camera that has panned for a day still lands on the right sub-pixel.
#[inline]
fn split(x: f64) -> (i64, f32) {
    let f = x.floor();
    (f as i64, (x - f) as f32)
}

/// 1-D value noise in [0, 1].
#[inline]
pub fn value1(seed: u64, x: f64) -> f32 {
    let (i, f) = split(x);
    let a = hash01(seed, i, 0);
    let b = hash01(seed, i + 1, 0);
    a + (b - a) * fade(f)
}

/// 2-D value noise in [0, 1].
#[inline]
pub fn value2(seed: u64, x: f64, y: f64) -> f32 {
    let (i, fx) = split(x);
    let (j, fy) = split(y);
    let a = hash01(seed, i, j);
    let b = hash01(seed, i + 1, j);
    let c = hash01(seed, i, j + 1);
    let d = hash01(seed, i + 1, j + 1);
    let u = fade(fx);
    let v = fade(fy);
    let top = a + (b - a) * u;
    let bottom = c + (d - c) * u;
    top + (bottom - top) * v
}

/// Fractal sum of 1-D value noise, normalised to [0, 1].
pub fn fbm1(seed: u64, x: f64, octaves: u32) -> f32 {
    let (mut sum, mut norm, mut amp, mut freq) = (0.0f32, 0.0f32, 1.0f32, 1.0f64);
    for o in 0..octaves {
        sum += amp * value1(seed.wrapping_add(o as u64 * 0x51_7CC1), x * freq);
        norm += amp;
        amp *= 0.5;
        freq *= 2.03;
    }
    sum / norm
}

/// Ridged fractal noise for mountain crests: sharp peaks, rounded valleys, in [0, 1].
pub fn ridged1(seed: u64, x: f64, octaves: u32) -> f32 {
    let (mut sum, mut norm, mut amp, mut freq) = (0.0f32, 0.0f32, 1.0f32, 1.0f64);
    for o in 0..octaves {
        let n = value1(seed.wrapping_add(o as u64 * 0x2F_A3B7), x * freq);
        let r = 1.0 - (2.0 * n - 1.0).abs();
        sum += amp * r * r;
        norm += amp;
        amp *= 0.5;
        freq *= 2.1;
    }
    sum / norm
}

/// Fractal sum of 2-D value noise, normalised to [0, 1].
pub fn fbm2(seed: u64, x: f64, y: f64, octaves: u32) -> f32 {
    let (mut sum, mut norm, mut amp, mut freq) = (0.0f32, 0.0f32, 1.0f32, 1.0f64);
    for o in 0..octaves {
        sum += amp * value2(seed.wrapping_add(o as u64 * 0x3C_6EF3), x * freq, y * freq);
        norm += amp;
        amp *= 0.5;
        freq *= 2.07;
    }
    sum / norm
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn noise_is_bounded_and_continuous() {
        let mut prev = value1(7, 0.0);
        for k in 1..10_000 {
            let x = k as f64 * 0.001;
            let n = value1(7, x);
            assert!((0.0..=1.0).contains(&n));
            assert!((n - prev).abs() < 0.01, "jump at {x}");
            prev = n;
            let m = fbm2(7, x, x * 0.5, 4);
            assert!((0.0..=1.0).contains(&m));
        }
    }

    #[test]
    fn far_coordinates_do_not_repeat() {
        // A pan of a whole day at the fastest speed: the lattice must not wrap.
        let near: Vec<f32> = (0..64).map(|i| value1(1, i as f64 * 0.37)).collect();
        let far: Vec<f32> = (0..64).map(|i| value1(1, 1.0e5 + i as f64 * 0.37)).collect();
        assert_ne!(near, far);
    }
}
