//! The Fréchet distance between two sets of feature vectors, each fitted by a Gaussian:
//! d² = ‖μ₁ − μ₂‖² + tr Σ₁ + tr Σ₂ − 2 tr (Σ₁^½ Σ₂ Σ₁^½)^½ (as FID and FVD do). Symmetric
//! square roots come from a cyclic Jacobi eigendecomposition, in f64.

/// Mean and covariance (divided by n − 1) of `rows`, each of one width.
pub fn gaussian(rows: &[Vec<f32>]) -> (Vec<f64>, Vec<f64>) {
    let n = rows.len();
    assert!(n >= 2, "a covariance needs at least two samples");
    let d = rows[0].len();
    let mut mean = vec![0.0; d];
    for r in rows {
        assert_eq!(r.len(), d, "feature vectors of one width");
        for (m, &v) in mean.iter_mut().zip(r) {
            *m += v as f64 / n as f64;
        }
    }
    let mut cov = vec![0.0; d * d];
    for r in rows {
        let c: Vec<f64> = r.iter().zip(&mean).map(|(&v, m)| v as f64 - m).collect();
        for i in 0..d {
            for j in i..d {
                cov[i * d + j] += c[i] * c[j];
            }
        }
    }
    for i in 0..d {
        for j in i..d {
            let v = cov[i * d + j] / (n - 1) as f64;
            cov[i * d + j] = v;
            cov[j * d + i] = v;
        }
    }
    (mean, cov)
}

/// Eigenvalues and eigenvectors (columns of `v`, row-major) of a symmetric `d × d` matrix.
pub fn symmetric_eigen(a: &[f64], d: usize) -> (Vec<f64>, Vec<f64>) {
    let mut a = a.to_vec();
    let mut v = vec![0.0; d * d];
    for i in 0..d {
        v[i * d + i] = 1.0;
    }
    let scale: f64 = a.iter().map(|x| x * x).sum::<f64>().sqrt().max(f64::MIN_POSITIVE);
    for _sweep in 0..100 {
        let off: f64 = (0..d)
            .flat_map(|i| (0..d).filter(move |&j| j != i).map(move |j| (i, j)))
            .map(|(i, j)| a[i * d + j].powi(2))
            .sum();
        if off.sqrt() <= 1e-13 * scale {
            break;
        }
        for p in 0..d {
            for q in p + 1..d {
                let apq = a[p * d + q];
                if apq.abs() <= 1e-300 {
                    continue;
                }
                let theta = (a[q * d + q] - a[p * d + p]) / (2.0 * apq);
                let t = theta.signum() / (theta.abs() + (theta * theta + 1.0).sqrt());
                let t = if theta == 0.0 { 1.0 } else { t };
                let c = 1.0 / (t * t + 1.0).sqrt();
                let s = t * c;
                for k in 0..d {
                    let (akp, akq) = (a[k * d + p], a[k * d + q]);
                    a[k * d + p] = c * akp - s * akq;
                    a[k * d + q] = s * akp + c * akq;
                }
                for k in 0..d {
                    let (apk, aqk) = (a[p * d + k], a[q * d + k]);
                    a[p * d + k] = c * apk - s * aqk;
                    a[q * d + k] = s * apk + c * aqk;
                }
                for k in 0..d {
                    let (vkp, vkq) = (v[k * d + p], v[k * d + q]);
                    v[k * d + p] = c * vkp - s * vkq;
                    v[k * d + q] = s * vkp + c * vkq;
                }
            }
        }
    }
    ((0..d).map(|i| a[i * d + i]).collect(), v)
}

/// The square root of a symmetric positive semi-definite matrix (negative eigenvalues, from
/// rounding, count as 0).
fn sqrt_psd(a: &[f64], d: usize) -> Vec<f64> {
    let (values, v) = symmetric_eigen(a, d);
    let mut out = vec![0.0; d * d];
    for (k, &l) in values.iter().enumerate() {
        let s = l.max(0.0).sqrt();
        for i in 0..d {
            for j in 0..d {
                out[i * d + j] += s * v[i * d + k] * v[j * d + k];
            }
        }
    }
    out
}

fn matmul(a: &[f64], b: &[f64], d: usize) -> Vec<f64> {
    let mut out = vec![0.0; d * d];
    for i in 0..d {
        for k in 0..d {
            let aik = a[i * d + k];
            for j in 0..d {
                out[i * d + j] += aik * b[k * d + j];
            }
        }
    }
    out
}

/// The Fréchet distance (squared, as FID reports it) between Gaussians fitted to `a` and `b`.
pub fn frechet_distance(a: &[Vec<f32>], b: &[Vec<f32>]) -> f64 {
    let (m1, s1) = gaussian(a);
    let (m2, s2) = gaussian(b);
    let d = m1.len();
    assert_eq!(d, m2.len(), "features of one width");
    let root1 = sqrt_psd(&s1, d);
    let middle = matmul(&matmul(&root1, &s2, d), &root1, d);
    // Symmetrise against rounding before the eigendecomposition.
    let middle: Vec<f64> = (0..d * d).map(|k| 0.5 * (middle[k] + middle[(k % d) * d + k / d])).collect();
    let (values, _) = symmetric_eigen(&middle, d);
    let cross: f64 = values.iter().map(|l| l.max(0.0).sqrt()).sum();
    let mean: f64 = m1.iter().zip(&m2).map(|(x, y)| (x - y).powi(2)).sum();
    let trace = |s: &[f64]| (0..d).map(|i| s[i * d + i]).sum::<f64>();
    (mean + trace(&s1) + trace(&s2) - 2.0 * cross).max(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eigen_of_a_known_matrix() {
        // [[2, 1], [1, 2]]: eigenvalues 1 and 3.
        let (mut values, v) = symmetric_eigen(&[2.0, 1.0, 1.0, 2.0], 2);
        values.sort_by(f64::total_cmp);
        assert!((values[0] - 1.0).abs() < 1e-12 && (values[1] - 3.0).abs() < 1e-12);
        // Orthonormal eigenvectors.
        let dot = v[0] * v[1] + v[2] * v[3];
        assert!(dot.abs() < 1e-12);
        let root = sqrt_psd(&[4.0, 0.0, 0.0, 9.0], 2);
        assert!((root[0] - 2.0).abs() < 1e-12 && (root[3] - 3.0).abs() < 1e-12 && root[1].abs() < 1e-12);
    }

    /// Deterministic pseudo-normal samples (Box–Muller over a hash).
    fn samples(n: usize, d: usize, mean: f32, std: f32, seed: u64) -> Vec<Vec<f32>> {
        let u = |i: usize, j: usize| {
            ((crate::world::noise_hash(seed, i as i64, j as i64) >> 11) as f64 + 0.5) / (1u64 << 53) as f64
        };
        (0..n)
            .map(|i| {
                (0..d)
                    .map(|j| {
                        let z = (-2.0 * u(i, 2 * j).ln()).sqrt() * (std::f64::consts::TAU * u(i, 2 * j + 1)).cos();
                        mean + std * z as f32
                    })
                    .collect()
            })
            .collect()
    }

    #[test]
    fn distance_matches_the_closed_form_of_isotropic_gaussians() {
        let (n, d) = (4000, 4);
        let a = samples(n, d, 0.0, 1.0, 1);
        // Same distribution: near 0 (finite-sample noise only).
        assert!(frechet_distance(&a, &samples(n, d, 0.0, 1.0, 2)) < 0.02);
        // N(0, I) against N(1, 4I): d·1² + d·(1 − 2)² = 8.
        let far = frechet_distance(&a, &samples(n, d, 1.0, 2.0, 3));
        assert!((far - 8.0).abs() < 0.4, "{far}");
        // Symmetric.
        let b = samples(n, d, 0.5, 1.5, 4);
        assert!((frechet_distance(&a, &b) - frechet_distance(&b, &a)).abs() < 1e-6);
    }
}
