use burn::backend::{Autodiff, Flex};
use burn::optim::{AdamConfig, GradientsParams, Optimizer};
use burn::tensor::{Distribution, Tensor, TensorData};

use super::{ReconLoss, VaeConfig};
use crate::data::video_tensor;
use crate::world::{ClipOptions, ClipSampler, Split};

type B = Flex;

/// Narrow widths so that the tests run in seconds; the structure is the default one.
fn test_config() -> VaeConfig {
    VaeConfig::new().with_channels(vec![8, 8, 16, 16]).with_latent_channels(4).with_norm_groups(4)
}

fn random_video(b: usize, t: usize, h: usize, w: usize) -> Tensor<B, 5> {
    Tensor::random([b, 3, t, h, w], Distribution::Uniform(-1.0, 1.0), &Default::default())
}

/// Largest absolute difference of two tensors over the frames `range` of dimension 2.
fn max_diff(a: &Tensor<B, 5>, b: &Tensor<B, 5>, range: std::ops::Range<usize>) -> f32 {
    let (a, b) = (a.clone().slice_dim(2, range.clone()), b.clone().slice_dim(2, range));
    (a - b).abs().max().into_scalar()
}

#[test]
fn vae_shapes_of_videos_and_images() {
    let vae = test_config().init::<B>(&Default::default());
    let (mean, logvar) = vae.encode(random_video(2, 17, 64, 64));
    assert_eq!(mean.dims(), [2, 4, 5, 8, 8]);
    assert_eq!(logvar.dims(), [2, 4, 5, 8, 8]);
    assert_eq!(vae.decode(mean).dims(), [2, 3, 17, 64, 64]);

    let (mean, _) = vae.encode(random_video(1, 1, 64, 64));
    assert_eq!(mean.dims(), [1, 4, 1, 8, 8]);
    assert_eq!(vae.decode(mean).dims(), [1, 3, 1, 64, 64]);

    let out = vae.forward(random_video(1, 5, 32, 32));
    assert_eq!(out.reconstruction.dims(), [1, 3, 5, 32, 32]);
    assert_eq!(out.kl.dims(), [1]);
}

#[test]
fn vae_encoder_is_causal() {
    let vae = test_config().init::<B>(&Default::default());
    let a = random_video(1, 17, 32, 32);
    let later = random_video(1, 8, 32, 32);
    let b = Tensor::cat(vec![a.clone().slice_dim(2, 0..9), later], 2);
    let (mean_a, logvar_a) = vae.encode(a.clone());
    let (mean_b, logvar_b) = vae.encode(b);
    // Frames 9.. change: latent j sees frames ≤ 4j, so latents 0..=2 must not move.
    assert!(max_diff(&mean_a, &mean_b, 0..3) <= 1e-6);
    assert!(max_diff(&logvar_a, &logvar_b, 0..3) <= 1e-6);
    assert!(max_diff(&mean_a, &mean_b, 3..5) > 1e-4, "later latents do see the change");

    // The first frame is encoded alone: an image gives the video's first latent frame.
    let (mean_image, _) = vae.encode(a.slice_dim(2, 0..1));
    assert!(max_diff(&mean_image, &mean_a, 0..1) <= 1e-6);
}

#[test]
fn vae_decoder_is_causal() {
    let vae = test_config().init::<B>(&Default::default());
    let z = || Tensor::<B, 5>::random([1, 4, 5, 4, 4], Distribution::Normal(0.0, 1.0), &Default::default());
    let a = z();
    let b = Tensor::cat(vec![a.clone().slice_dim(2, 0..3), z().slice_dim(2, 3..5)], 2);
    let (video_a, video_b) = (vae.decode(a.clone()), vae.decode(b));
    // Latent j ≥ 1 becomes frames 4j − 3 ..= 4j: changing latents 3.. leaves frames 0..=8.
    assert!(max_diff(&video_a, &video_b, 0..9) <= 1e-6);
    assert!(max_diff(&video_a, &video_b, 9..17) > 1e-4, "later frames do see the change");

    let image = vae.decode(a.clone().slice_dim(2, 0..1));
    // Alone, the frame goes through differently blocked kernels: equal up to rounding.
    assert!(max_diff(&image, &video_a, 0..1) <= 1e-5);
}

/// Decoding a stream chunk by chunk with its state gives the frames of one decode of the whole
/// stream, whatever the chunking.
#[test]
fn vae_stream_decoding_equals_one_decode() {
    stream_decoding_equals_one_decode(test_config());
}

/// Without norms anywhere, and with a decoder of its own widths: no norm parameter is left,
/// and it still streams exactly.
#[test]
fn vae_without_norms_streams_exactly() {
    use burn::module::Module;
    let config = test_config().with_norm_groups(0).with_decoder_channels(Some(vec![4, 8, 12, 16]));
    let vae = config.init::<B>(&Default::default());
    assert!(vae.encoder.norm_out.is_none() && vae.decoder.norm_out.is_none());
    let mut norms = 0;
    for level in vae.encoder.levels.iter().map(|l| &l.blocks).chain(vae.decoder.levels.iter().map(|l| &l.blocks)) {
        norms += level.iter().filter(|b| b.norm1.is_some() || b.norm2.is_some()).count();
    }
    assert_eq!(norms, 0);
    // Fixup: every residual branch starts at zero, so every block starts as its skip path.
    // The coarsest level's block: 16 channels in and out, so its skip path is the identity.
    let x = Tensor::<B, 5>::random([1, 3, 16, 4, 4], Distribution::Normal(0.0, 1.0), &Default::default());
    let block = &vae.decoder.levels[0].blocks[0];
    assert!(block.skip.is_none());
    assert_eq!(block.forward(x.clone()).into_data(), x.into_data());
    assert!(vae.num_params() < test_config().init::<B>(&Default::default()).num_params());
    stream_decoding_equals_one_decode(config);
}

/// A test VAE with its decoder grown by `grow`, a latent, and the frames the decoder gave it
/// before; asserts that the grown decoder gives the same frames.
fn grow_decoder(
    grow: impl FnOnce(super::Decoder<B>) -> super::Decoder<B>,
) -> (super::Vae<B>, Tensor<B, 5>, Tensor<B, 5>) {
    let vae = test_config().init::<B>(&Default::default());
    let z = Tensor::<B, 5>::random([1, 4, 5, 4, 4], Distribution::Normal(0.0, 1.0), &Default::default());
    let before = vae.decode(z.clone());
    let grown = super::Vae { decoder: grow(vae.decoder.clone()), ..vae };
    let d = max_diff(&before, &grown.decode(z.clone()), 0..17);
    assert!(d <= 1e-5, "the grown decoder differs by {d} at the start");
    (grown, z, before)
}

/// Depth to time starts where the repeat is: a decoder grown to it decodes as before. Once its
/// weights move, the output moves with them, and a decoder of it still streams exactly.
#[test]
fn depth_to_time_grows_from_the_repeat_and_streams_exactly() {
    use burn::module::Param;
    let (mut grown, z, before) = grow_decoder(|decoder| decoder.with_depth_to_time(&Default::default()));
    let expands = grown.decoder.levels.iter().filter(|l| l.up.as_ref().is_some_and(|u| u.expand.is_some())).count();
    assert_eq!(expands, 2, "both temporal up-samplings, not the spatial-only one");
    for level in &mut grown.decoder.levels {
        if let Some(expand) = level.up.as_mut().and_then(|u| u.expand.as_mut()) {
            let noise = expand.weight.val().random_like(Distribution::Normal(0.0, 0.1));
            expand.weight = Param::from_tensor(expand.weight.val() + noise);
        }
    }
    let after = grown.decode(z);
    assert!(max_diff(&before, &after, 0..17) > 1e-3, "the frames follow the new weights");
    stream_decoding_equals_one_decode(test_config().with_depth_to_time(Some(true)));
}

/// More decoder blocks start where the decoder is: each new block is the identity until its
/// weights move, also in a decoder with norms, and a decoder of them still streams exactly.
#[test]
fn more_decoder_blocks_grow_from_the_decoder_and_stream_exactly() {
    use burn::module::Param;
    let config = test_config().with_decoder_blocks(Some(vec![2, 3, 1, 1]));
    let (mut grown, z, before) = grow_decoder(|decoder| decoder.with_blocks(&config, &Default::default()));
    // Coarsest level first: the two finest levels (full resolution first in the config) grew.
    let counts: Vec<usize> = grown.decoder.levels.iter().map(|l| l.blocks.len()).collect();
    assert_eq!(counts, [1, 1, 3, 2]);
    let finest = grown.decoder.levels.last_mut().and_then(|l| l.blocks.last_mut()).expect("a block");
    let last = finest.conv2.temporal.as_mut().expect("a temporal conv");
    last.weight = Param::from_tensor(last.weight.val().random_like(Distribution::Normal(0.0, 0.1)));
    let after = grown.decode(z);
    assert!(max_diff(&before, &after, 0..17) > 1e-3, "the frames follow the new block's weights");
    stream_decoding_equals_one_decode(config);
}

fn stream_decoding_equals_one_decode(config: VaeConfig) {
    let vae = config.init::<B>(&Default::default());
    let z = Tensor::<B, 5>::random([2, 4, 9, 4, 4], Distribution::Normal(0.0, 1.0), &Default::default());
    let whole = vae.decode(z.clone());
    assert_eq!(whole.dims()[2], 33);
    for chunks in [vec![1, 2, 2, 4], vec![3, 1, 5], vec![9]] {
        let mut state = super::StreamState::default();
        let (mut latent, mut frame) = (0, 0);
        for n in chunks {
            let video = vae.decode_stream(z.clone().slice_dim(2, latent..latent + n), &mut state);
            let t = video.dims()[2];
            assert_eq!(t, if latent == 0 { 1 + 4 * (n - 1) } else { 4 * n });
            let d = max_diff(&video, &whole.clone().slice_dim(2, frame..frame + t), 0..t);
            assert!(d <= 1e-5, "latents {latent}..{}: chunked decoding differs by {d}", latent + n);
            (latent, frame) = (latent + n, frame + t);
        }
        assert_eq!(frame, 33);
    }
}

#[test]
fn vae_cost_counts_params_and_flops() {
    for config in [VaeConfig::tiny(), VaeConfig::small()] {
        let vae = config.init::<B>(&Default::default());
        let cost = vae.cost(17, 128, 128);
        println!("{cost}");
        assert_eq!((cost.latent.t, cost.latent.h, cost.latent.w), (5, 16, 16));
        assert!(cost.encoder_params > 0 && cost.decoder_params > 0);
        assert!(cost.encode_gflops > 0.0 && cost.decode_gflops > 0.0);
    }
    // A single conv by hand: 2·c_in·c_out·k² per output position, then the temporal conv.
    let conv = super::CausalConvConfig::new([3, 8]).init::<B>(&Default::default());
    let (flops, out) = conv.flops(super::Extent { t: 5, h: 4, w: 4 });
    assert_eq!(out, super::Extent { t: 5, h: 4, w: 4 });
    assert_eq!(flops, (2 * 3 * 8 * 9 * 80 + 2 * 8 * 8 * 3 * 80) as f64);
}

#[test]
fn vae_overfits_one_clip() {
    type A = Autodiff<Flex>;
    let device = Default::default();
    let options = ClipOptions { width: 32, height: 32, frames: 5, ..ClipOptions::default() };
    // Beating the start 10× is easy (the mean colour alone does much of it): the reconstruction
    // must also be 10× better than the best constant video, on a clip with some contrast.
    let variance_of = |video: &Tensor<A, 5>| {
        let mean = video.clone().mean().reshape([1, 1, 1, 1, 1]);
        (video.clone() - mean).square().mean().into_scalar()
    };
    let mut sampler = ClipSampler::new(Split::Train, 7);
    let (video, variance) = (0..20)
        .map(|_| {
            let video = video_tensor::<A>(&[sampler.next_clip(&options).render(false)], 32, 32, &device);
            let variance = variance_of(&video);
            (video, variance)
        })
        .find(|(_, variance)| *variance > 0.05)
        .expect("one of 20 clips has contrast");
    let mut vae = test_config().with_recon_loss(ReconLoss::Mse).init::<A>(&device);
    let mut optim = AdamConfig::new().init();
    let first = vae.loss(video.clone()).recon.into_scalar();
    let target = first.min(variance) / 10.0;
    let mut last = first;
    for step in 0..200 {
        let loss = vae.loss(video.clone());
        last = loss.recon.clone().into_scalar();
        if last <= target {
            println!("reconstruction MSE {first} → {last} in {step} steps (clip variance {variance})");
            break;
        }
        let grads = GradientsParams::from_grads(loss.total.backward(), &vae);
        vae = optim.step(3e-3, vae, grads);
    }
    assert!(last <= target, "reconstruction MSE went from {first} to {last}, not below {target}");
}

#[test]
fn the_motion_term_tells_frozen_frames_from_a_colour_offset() {
    let device = Default::default();
    // A video that brightens by 0.1 a frame, and two reconstructions with the same L1 error of
    // 0.2: one off by a constant 0.2, one holding the first frame still (errors 0, 0.1 … 0.4).
    let (t, h, w) = (5, 4, 4);
    let ramp: Vec<f32> = (0..t).map(|i| 0.1 * i as f32).collect();
    let video =
        Tensor::<B, 1>::from_data(TensorData::new(ramp, [t]), &device).reshape([1, 1, t, 1, 1]).expand([1, 3, t, h, w]);
    let offset = video.clone().add_scalar(0.2);
    let frozen = video.clone().narrow(2, 0, 1).expand([1, 3, t, h, w]);
    let output = |reconstruction: Tensor<B, 5>| super::VaeOutput {
        reconstruction,
        mean: Tensor::zeros([1, 4, 2, 1, 1], &device),
        logvar: Tensor::zeros([1, 4, 2, 1, 1], &device),
        kl: Tensor::zeros([1], &device),
    };
    let losses = |motion: Option<f64>| {
        let vae = test_config().with_motion_weight(motion).init::<B>(&device);
        [offset.clone(), frozen.clone()].map(|r| {
            let loss = vae.loss_of(output(r), video.clone());
            (loss.recon.into_scalar(), loss.total.into_scalar())
        })
    };
    let close = |a: f32, b: f32| (a - b).abs() < 1e-5;
    // Without the term (as in checkpoints from before it) both score the same.
    let [(r0, t0), (r1, t1)] = losses(None);
    assert!(close(r0, 0.2) && close(r1, 0.2) && close(t0, t1), "{r0} {r1} {t0} {t1}");
    // With it, the frozen one pays for its frame-to-frame error of 0.1 (weight 2: 0.2 more).
    let [(r0, t0), (r1, t1)] = losses(Some(2.0));
    assert!(close(r0, 0.2) && close(r1, 0.2), "{r0} {r1}");
    assert!(close(t0, 0.2) && close(t1, 0.4), "offset {t0}, frozen {t1}");
}

/// A grown latent keeps the trained one: the old channels' moments bit for bit, the new
/// channels' log-variances at the start value and their means read from the features, and the
/// decoder's output unchanged, with and without the temporal half of the moments convolution.
#[test]
fn a_grown_latent_keeps_what_the_vae_reconstructs() {
    let device = Default::default();
    for temporal_kernel in [3, 1] {
        let config = test_config().with_temporal_kernel(temporal_kernel);
        let vae = config.init::<B>(&device);
        let video = random_video(1, 9, 32, 32);
        let (mean, logvar) = vae.encode(video.clone());
        let before = vae.decode(mean.clone());

        let grown = super::Vae {
            encoder: vae.encoder.clone().with_latent_channels(&config, 6, &device),
            decoder: vae.decoder.clone().with_latent_channels(6, &device),
            ..vae
        };
        let (grown_mean, grown_logvar) = grown.encode(video);
        assert_eq!(grown_mean.dims(), [1, 6, 3, 4, 4]);
        let old = |x: &Tensor<B, 5>| x.clone().narrow(1, 0, 4);
        let diff = |a: Tensor<B, 5>, b: Tensor<B, 5>| (a - b).abs().max().into_scalar();
        assert_eq!(diff(old(&grown_mean), mean), 0.0, "kernel {temporal_kernel}: the old means move");
        assert_eq!(diff(old(&grown_logvar), logvar), 0.0, "kernel {temporal_kernel}: the old log-variances move");
        let new_logvar = grown_logvar.narrow(1, 4, 2);
        assert!(diff(new_logvar, Tensor::full([1, 2, 3, 4, 4], super::codec::LOGVAR_INIT, &device)) < 1e-6);
        let new_mean = grown_mean.clone().narrow(1, 4, 2);
        assert!(new_mean.abs().max().into_scalar() > 1e-3, "kernel {temporal_kernel}: the new means read nothing");
        let after = grown.decode(grown_mean);
        assert!(max_diff(&after, &before, 0..9) < 1e-5, "kernel {temporal_kernel}: the decoder's output changes");
    }
}
