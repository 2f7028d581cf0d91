//! What the models do differently on the CPU at inference: element-wise activations that
//! vectorise, and permutes that copy whole rows ([`permute_rows`]).
//!
//! burn's CPU backend (`flex`) computes GELU with the C library's `erff` and SiLU with its
//! `expf`, one value at a time: 11 % of a chunk's time in the denoiser's GELU alone (`perf` on
//! `endless-model sample`). Here both are branch-free polynomials (Cephes' `expf`, Eigen's
//! rational `erf`) that the compiler vectorises under `pulp`'s AVX2/FMA level, in place on the
//! tensor's values. Autodiff backends (training) and GPUs keep burn's ops ([`on_cpu`]).

use burn::tensor::activation::gelu as burn_gelu;
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};
use rayon::prelude::*;
use std::any::TypeId;

/// Whether `B` is the CPU backend without autodiff (training keeps burn's ops, whose gradients
/// it needs).
pub fn on_cpu<B: Backend>() -> bool {
    TypeId::of::<B>() == TypeId::of::<burn::backend::Flex>()
}

/// A tensor's values as f32 (without a copy when the tensor is contiguous and not shared).
pub(crate) fn values<B: Backend, const D: usize>(x: Tensor<B, D>) -> Vec<f32> {
    x.into_data().convert::<f32>().into_vec::<f32>().expect("f32 values")
}

/// `x.permute(perm)`, made contiguous, for a permutation that keeps the last axis: on the CPU
/// at inference by copying whole rows of the last axis. burn's CPU backend makes a permuted
/// tensor contiguous one element at a time through a strided iterator, which with the window
/// attention's permutes was 16 % of a `sample` on one core. Elsewhere burn's `permute`.
pub fn permute_rows<B: Backend, const D: usize>(x: Tensor<B, D>, perm: [usize; D]) -> Tensor<B, D> {
    let dims = x.dims();
    if !on_cpu::<B>() || perm[D - 1] != D - 1 || dims[D - 1] == 0 {
        return x.permute(perm);
    }
    let device = x.device();
    let from = values(x);
    let mut strides = [0; D];
    let mut stride = 1;
    for i in (0..D).rev() {
        strides[i] = stride;
        stride *= dims[i];
    }
    let (out_dims, steps) = (perm.map(|p| dims[p]), perm.map(|p| strides[p]));
    let row = dims[D - 1];
    let mut out = Vec::with_capacity(from.len());
    let mut index = [0; D];
    for _ in 0..from.len() / row {
        let at: usize = index.iter().zip(&steps).map(|(i, s)| i * s).sum();
        out.extend_from_slice(&from[at..at + row]);
        // The next row: the axes before the last, the later ones fastest.
        for axis in (0..D - 1).rev() {
            index[axis] += 1;
            if index[axis] < out_dims[axis] {
                break;
            }
            index[axis] = 0;
        }
    }
    Tensor::from_data(TensorData::new(out, out_dims), &device)
}

/// GELU, `x·Φ(x)` with the exact (erf) normal CDF: burn's [`burn_gelu`], by [`gelu_of`] on the
/// CPU at inference (within 1e-6 of it).
pub fn gelu<B: Backend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    if !on_cpu::<B>() {
        return burn_gelu(x);
    }
    let (device, shape) = (x.device(), x.shape());
    let mut v = values(x);
    v.par_chunks_mut(1 << 14).for_each(|chunk| pulp::Arch::new().dispatch(Map(chunk, gelu_of)));
    Tensor::from_data(TensorData::new(v, shape), &device)
}

/// `f` applied in place to every value, compiled for the SIMD level `pulp` finds: the loop
/// vectorises when `f` is branch-free and inlined.
pub(crate) struct Map<'a, F>(pub &'a mut [f32], pub F);

impl<F: Fn(f32) -> f32> pulp::WithSimd for Map<'_, F> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: pulp::Simd>(self, _simd: S) {
        for v in self.0.iter_mut() {
            *v = (self.1)(*v);
        }
    }
}

/// GELU of one value: `x·Φ(x)`, Φ through [`erf`].
#[inline(always)]
pub(crate) fn gelu_of(x: f32) -> f32 {
    let z = x * std::f32::consts::FRAC_1_SQRT_2;
    // Φ(x) < 1e-8 for x/√2 ≤ −4: zero there, or a large negative x times erf's last ulp of
    // error would stay far from GELU's 0.
    let phi = if z <= -4.0 { 0.0 } else { 0.5 + 0.5 * erf(z) };
    x * phi
}

/// SiLU of one value: `x·σ(x)`, σ through [`exp`].
#[inline(always)]
pub(crate) fn silu_of(x: f32) -> f32 {
    x / (1.0 + exp(-x))
}

/// `e^x` for f32 (Cephes' `expf`): `x = n·ln 2 + r`, a polynomial in `r`, times `2^n`; no
/// branches, so that a loop of it vectorises. Saturates below −87.3 and above 88.3.
#[inline(always)]
pub(crate) fn exp(x: f32) -> f32 {
    let x = x.clamp(-87.3, 88.3);
    let n = (x * std::f32::consts::LOG2_E + 0.5).floor();
    let r = x - n * 0.693_359_4 + n * 2.121_944_4e-4; // ln 2 in two parts, the first exact in f32
    let mut q = 1.987_569_1e-4f32;
    for c in [1.398_2e-3, 8.333_452e-3, 4.166_579_6e-2, 0.166_666_65, 0.5] {
        q = q * r + c;
    }
    let e = q * r * r + r + 1.0;
    e * f32::from_bits(((n as i32 + 127) << 23) as u32)
}

/// `erf(x)` for f32: Eigen's rational approximation on `[−4, 4]` (an odd polynomial of degree
/// 13 over an even one of degree 8), ±1 outside it, where erf is 1 to within f32's precision.
#[inline(always)]
pub(crate) fn erf(x: f32) -> f32 {
    let x = x.clamp(-4.0, 4.0);
    let x2 = x * x;
    let mut p = -2.726_142_3e-10f32;
    for a in [2.770_681_4e-8, -2.101_024e-6, -5.692_506_4e-5, -7.349_906_3e-4, -2.9546e-3, -1.609_603_3e-2] {
        p = p * x2 + a;
    }
    let mut q = -1.456_607_2e-5f32;
    for b in [-2.133_740_6e-4, -1.682_827e-3, -7.373_329_2e-3, -1.426_474e-2] {
        q = q * x2 + b;
    }
    x * p / q
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::Flex;

    /// Inputs over the range where the polynomials saturate, and the edges.
    fn inputs() -> Vec<f32> {
        let mut xs: Vec<f32> = (-2000..=2000).map(|i| i as f32 * 0.05).collect();
        xs.extend([-1e4, -90.0, -87.0, -4.0, 4.0, 88.0, 90.0, 1e4, 0.0, -0.0, 1e-8]);
        xs
    }

    fn assert_close(name: &str, xs: &[f32], ours: &[f32], burns: &[f32], tolerance: f32) {
        assert_eq!(ours.len(), burns.len());
        for ((x, a), b) in xs.iter().zip(ours).zip(burns) {
            assert!((a - b).abs() <= tolerance * b.abs().max(1.0), "{name}({x}): {a} against {b}");
        }
    }

    #[test]
    fn permute_rows_is_burns_permute() {
        use burn::tensor::Distribution;
        let device = Default::default();
        let x = Tensor::<Flex, 5>::random([2, 3, 4, 5, 6], Distribution::Normal(0.0, 1.0), &device);
        for perm in [[0, 1, 2, 3, 4], [2, 0, 3, 1, 4], [3, 2, 1, 0, 4], [1, 0, 2, 3, 4]] {
            let ours = permute_rows(x.clone(), perm);
            let burns = x.clone().permute(perm);
            assert_eq!(ours.dims(), burns.dims());
            assert_eq!(values(ours), values(burns), "{perm:?}");
        }
        // Another last axis: burn's permute.
        assert_eq!(permute_rows(x.clone(), [4, 1, 2, 3, 0]).dims(), [6, 3, 4, 5, 2]);
    }

    #[test]
    fn silu_is_burns() {
        let xs = inputs();
        let mut ours = xs.clone();
        pulp::Arch::new().dispatch(Map(&mut ours, silu_of));
        let burns =
            values(burn::tensor::activation::silu(Tensor::<Flex, 1>::from_floats(xs.as_slice(), &Default::default())));
        assert_close("SiLU", &xs, &ours, &burns, 1e-6);
    }

    #[test]
    fn gelu_is_burns() {
        let xs = inputs();
        let x = Tensor::<Flex, 1>::from_floats(xs.as_slice(), &Default::default());
        let ours = values(gelu(x.clone()));
        let burns = values(burn_gelu(x));
        assert_close("GELU", &xs, &ours, &burns, 1e-6);
    }

    #[test]
    fn erf_is_the_c_librarys() {
        for i in -1000..=1000 {
            let x = i as f32 * 0.003;
            let (ours, libm) = (erf(x), (x as f64).erf_approx());
            assert!((ours as f64 - libm).abs() < 3e-7, "erf({x}): {ours} against {libm}");
        }
    }

    /// erf in f64 by its Taylor series (no cancellation to speak of for |x| ≤ 3): the reference.
    trait ErfApprox {
        fn erf_approx(self) -> f64;
    }

    impl ErfApprox for f64 {
        fn erf_approx(self) -> f64 {
            // erf x = 2/√π · Σ (−1)^n x^(2n+1) / (n! (2n + 1))
            let (mut term, mut sum) = (self, self);
            for n in 1..200 {
                term *= -self * self / n as f64;
                sum += term / (2 * n + 1) as f64;
            }
            sum * 2.0 / std::f64::consts::PI.sqrt()
        }
    }
}
