//! How well a VAE reconstructs held-out clips of the world: PSNR of the decoded RGB8 frames
//! (the posterior mean, decoded alone) against the rendered ones.

use crate::data::{video_frames, video_tensor};
use crate::eval::generation::{boundary_jump, mean};
use crate::eval::motion::{camera_of, camera_velocity, least_squares_shift, pan_along};
use crate::media::{Size, contact_sheet};
use crate::vae::Vae;
use crate::world::{Camera, ClipOptions, ClipSampler, Split, Weather};
use burn::tensor::backend::Backend;
use serde::Serialize;

/// Reconstruction quality over a set of held-out clips.
#[derive(Debug, Clone, Serialize)]
pub struct VaeReport {
    pub clips: usize,
    pub frames_per_clip: usize,
    pub width: usize,
    pub height: usize,
    /// Mean over clips of each clip's PSNR (dB, peak 255).
    pub psnr_mean: f64,
    /// The worst clip's PSNR.
    pub psnr_min: f64,
    /// PSNR of frame `i` over all clips (the first frame is encoded alone).
    pub psnr_per_frame: Vec<f64>,
    /// Per weather of a clip's first frame: the mean of those clips' PSNRs, and how many there
    /// were. Rain and snow are fields of small random particles, which an 8× latent cell cannot
    /// place; this says how much of the error they are.
    pub psnr_by_weather: Vec<(String, f64, usize)>,
    /// Share of clips whose reconstruction reads as the same camera (left, still, right) as the
    /// clip, from the pixels' motion: a VAE that blurs or freezes the pan fails here while its
    /// PSNR hardly moves.
    pub camera_agreement: f64,
    /// Mean |velocity of the reconstruction − velocity of the clip| (screen heights per second).
    pub camera_speed_error: f64,
    /// How much of the camera's pan the latent carries: over clips that pan throughout, the sum
    /// of the latent's shifts from one latent frame to the next along the pan's direction
    /// (least squares over its lower rows and every channel, times the spatial factor) ÷ the
    /// sum of the shifts the camera makes of the nearest land over the same frames. 1: all of it; 0: none; negative: the
    /// wrong way; NaN: no clip panned.
    pub pan_in_latent: f64,
    /// The same ratio for the clips' own luma, read the same way (about 1: the measure's check).
    pub pan_in_clips: f64,
    /// The same ratio for the reconstruction's luma (least squares too, which reads a blurred
    /// picture's drift). With [`VaeReport::pan_in_latent`] it says whether the encoder or the
    /// decoder loses the pan.
    pub pan_in_reconstruction: f64,
    /// The reconstructions' mean frame difference where one latent frame's frames end and the
    /// next's begin ÷ within a latent frame's, mean over clips (1: no seam; the clips' own
    /// ratio is [`VaeReport::latent_jump_real`]). A decoder that moves the picture at latent
    /// boundaries and holds it between them scores above the clips.
    pub latent_jump: f64,
    /// The same ratio of the clips themselves.
    pub latent_jump_real: f64,
}

/// PSNR in dB of an RGB8 mean squared error.
pub fn psnr(mse: f64) -> f64 {
    if mse <= 0.0 { f64::INFINITY } else { 10.0 * (255.0f64 * 255.0 / mse).log10() }
}

/// Mean squared error between two RGB8 buffers of one size.
pub fn mse_u8(a: &[u8], b: &[u8]) -> f64 {
    assert_eq!(a.len(), b.len(), "frames of one size");
    a.iter().zip(b).map(|(&x, &y)| (x as f64 - y as f64).powi(2)).sum::<f64>() / a.len() as f64
}

/// Reconstructs `clips` held-out clips (transitions included) of `options`' shape, `batch` at
/// a time. Also returns a contact sheet: the first clip's frames over their reconstructions.
pub fn evaluate_vae<B: Backend>(
    vae: &Vae<B>,
    options: &ClipOptions,
    clips: usize,
    batch: usize,
    seed: u64,
    device: &B::Device,
) -> (VaeReport, (Size, Vec<u8>)) {
    let mut sampler = ClipSampler::new(Split::HeldOut, seed);
    let (w, h, t) = (options.width, options.height, options.frames);
    let mut clip_psnr = Vec::with_capacity(clips);
    let mut clip_weather = Vec::with_capacity(clips);
    let mut frame_mse = vec![0.0; t];
    let (mut camera_agree, mut camera_error) = (0usize, 0.0);
    // Latent frame j ≥ 1 decodes to frames 4j − 3 ..= 4j: a new one begins at frames 1, 5, 9, …
    let latent_starts: Vec<usize> = (1..t).step_by(vae.temporal_factor).collect();
    let (mut jumps, mut jumps_real) = (Vec::new(), Vec::new());
    let (mut pan_expected, mut pan_real, mut pan_latent, mut pan_recon) = (0.0, 0.0, 0.0, 0.0);
    let mut sheet = None;
    let mut done = 0;
    while done < clips {
        let n = batch.min(clips - done);
        let sampled: Vec<_> = (0..n).map(|_| sampler.next_clip(options)).collect();
        clip_weather.extend(sampled.iter().map(|c| c.labels()[0].weather));
        let real: Vec<Vec<Vec<u8>>> = sampled.iter().map(|c| c.render(true)).collect();
        let (mean, _) = vae.encode(video_tensor::<B>(&real, w, h, device));
        let [_, c, lt, lh, lw] = mean.dims();
        let latents: Vec<f32> = mean.clone().into_data().convert::<f32>().into_vec().expect("f32 latents");
        let recon = video_frames(vae.decode(mean));
        for (i, clip) in sampled.iter().enumerate() {
            let camera = clip.labels()[0].camera;
            if camera == Camera::Still || clip.labels().iter().any(|l| l.camera != camera) || lt < 3 {
                continue;
            }
            // Latent frames k and k + 1 (k ≥ 1) stand for frames 4k − 3 ..= 4k and the next four:
            // their last frames are 4k and 4k + 4 apart by one latent step.
            let f = vae.temporal_factor;
            let frame = |k: usize| k * f;
            let plane = |k: usize| -> Vec<f32> {
                (0..c)
                    .flat_map(|ch| {
                        let at = ((i * c + ch) * lt + k) * lh * lw;
                        latents[at..at + lh * lw].iter().copied()
                    })
                    .collect()
            };
            let shape = (w, h, options.fps);
            let (moved, expected) = pan_along(&real[i], (1..lt - 1).map(frame), f, camera, shape);
            pan_expected += expected;
            pan_real += moved;
            pan_recon += pan_along(&recon[i], (1..lt - 1).map(frame), f, camera, shape).0;
            // The latent's grid, in pixels, counted the same way.
            let along = -camera.velocity().signum();
            for k in 1..lt - 1 {
                pan_latent += along * least_squares_shift(&plane(k), &plane(k + 1), c, lh, lw) * (w / lw) as f64;
            }
        }
        for (a, b) in real.iter().zip(&recon) {
            let per_frame: Vec<f64> = a.iter().zip(b).map(|(x, y)| mse_u8(x, y)).collect();
            for (acc, m) in frame_mse.iter_mut().zip(&per_frame) {
                *acc += m / clips as f64;
            }
            clip_psnr.push(psnr(per_frame.iter().sum::<f64>() / t as f64));
            let (va, vb) = (camera_velocity(a, w, h, options.fps), camera_velocity(b, w, h, options.fps));
            camera_agree += (camera_of(va) == camera_of(vb)) as usize;
            camera_error += (va - vb).abs() / clips as f64;
            jumps.extend(boundary_jump(b, &latent_starts));
            jumps_real.extend(boundary_jump(a, &latent_starts));
        }
        if sheet.is_none() {
            let frames: Vec<Vec<u8>> = real[0].iter().chain(&recon[0]).cloned().collect();
            sheet = Some(contact_sheet(&frames, Size::new(w, h), t, 2));
        }
        done += n;
    }
    let report = VaeReport {
        clips,
        frames_per_clip: t,
        width: w,
        height: h,
        psnr_mean: clip_psnr.iter().sum::<f64>() / clips as f64,
        psnr_min: clip_psnr.iter().copied().fold(f64::INFINITY, f64::min),
        psnr_per_frame: frame_mse.iter().map(|&m| psnr(m)).collect(),
        psnr_by_weather: (0..Weather::COUNT)
            .map(Weather::from_index)
            .filter_map(|weather| {
                let of: Vec<f64> =
                    clip_weather.iter().zip(&clip_psnr).filter(|(w, _)| **w == weather).map(|(_, p)| *p).collect();
                (!of.is_empty())
                    .then(|| (weather.label().to_string(), of.iter().sum::<f64>() / of.len() as f64, of.len()))
            })
            .collect(),
        camera_agreement: camera_agree as f64 / clips as f64,
        camera_speed_error: camera_error,
        pan_in_clips: pan_real / pan_expected,
        pan_in_latent: pan_latent / pan_expected,
        pan_in_reconstruction: pan_recon / pan_expected,
        latent_jump: mean(&jumps),
        latent_jump_real: mean(&jumps_real),
    };
    (report, sheet.expect("at least one clip"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vae::VaeConfig;
    use burn::backend::Flex;

    #[test]
    fn psnr_of_known_errors() {
        assert_eq!(mse_u8(&[10, 20, 30], &[10, 20, 30]), 0.0);
        assert!(psnr(0.0).is_infinite());
        // Every value off by 1: MSE 1, PSNR 20·log10(255).
        let mse = mse_u8(&[0, 100, 255], &[1, 101, 254]);
        assert_eq!(mse, 1.0);
        assert!((psnr(mse) - 48.1308).abs() < 1e-3);
    }

    /// The pan is read along each clip's own direction: left and right pans add up, and the
    /// clips themselves read as carrying most of it.
    #[test]
    fn the_clips_carry_their_pan_both_ways() {
        let device = Default::default();
        let vae = VaeConfig::cpu().init::<Flex>(&device);
        let o = ClipOptions { width: 64, height: 64, frames: 9, transition_probability: 0.0, ..ClipOptions::default() };
        // A set with as many pans to the left as to the right: signed sums would cancel.
        let clips = 6;
        let count = |seed: u64, camera: Camera| {
            let mut sampler = ClipSampler::new(Split::HeldOut, seed);
            (0..clips).filter(|_| sampler.next_clip(&o).labels()[0].camera == camera).count()
        };
        let seed = (0..)
            .find(|&s| count(s, Camera::PanLeft) > 0 && count(s, Camera::PanLeft) == count(s, Camera::PanRight))
            .expect("some seed balances the pans");
        let (report, _) = evaluate_vae(&vae, &o, clips, 4, seed, &device);
        assert!((0.6..1.2).contains(&report.pan_in_clips), "{report:?}");
        assert!(report.pan_in_latent.is_finite() && report.pan_in_reconstruction.is_finite(), "{report:?}");
    }

    #[test]
    fn an_untrained_vae_is_measured_on_every_frame() {
        let device = Default::default();
        let vae = VaeConfig::cpu().init::<Flex>(&device);
        let o = ClipOptions { width: 32, height: 32, frames: 5, ..ClipOptions::default() };
        let (report, (size, sheet)) = evaluate_vae(&vae, &o, 3, 2, 1, &device);
        assert_eq!((report.clips, report.psnr_per_frame.len()), (3, 5));
        assert!(report.psnr_mean.is_finite() && report.psnr_min <= report.psnr_mean);
        // Every clip counted under one weather; the weathers' means average back to the mean.
        assert_eq!(report.psnr_by_weather.iter().map(|(_, _, n)| n).sum::<usize>(), 3);
        let weighted: f64 = report.psnr_by_weather.iter().map(|(_, p, n)| p * *n as f64).sum::<f64>() / 3.0;
        assert!((weighted - report.psnr_mean).abs() < 1e-9);
        // Untrained, it is far from the 32 dB target.
        assert!(report.psnr_mean < 25.0, "{report:?}");
        // Clips of 5 frames: one latent boundary (frame 1) against three steps within. Untrained,
        // every residual branch starts at zero and the decoder gives still frames: no ratio.
        assert!(report.latent_jump_real.is_finite() && report.latent_jump.is_nan(), "{report:?}");
        assert_eq!(sheet.len(), size.rgb_bytes());
        assert_eq!(size, Size::new(5 * 34 + 2, 2 * 34 + 2));
    }
}
