//! The cpu tier the repository ships (`models/cpu`) loads and still does what its card says:
//! its VAE reconstructs held-out world clips, and its generator follows the time of day of a
//! prompt (the attribute it gets right most often, `docs/MODEL_CARD.md`).
//!
//! Needs all-MiniLM-L6-v2 (scripts/fetch-minilm.sh); skipped with a message without it unless
//! ENDLESS_REQUIRE_MINILM is set.

use burn::backend::Flex;
use endless_model::eval::evaluate_vae;
use endless_model::pipeline::{ChunkRequest, Pipeline, SamplerSettings};
use endless_model::text::{TextEncoder, dir_for_tests};
use endless_model::world::ClipOptions;
use std::path::PathBuf;

/// `models/cpu` of the checkout under test. Read at run time from `CARGO_MANIFEST_DIR`, which
/// cargo sets for the tests it runs: the path compiled in is where the binary was built, and a
/// shared target directory can hold a build of another checkout that cargo still counts as
/// fresh (this test once looked for a checkout that no longer existed).
fn shipped() -> PathBuf {
    let manifest =
        std::env::var_os("CARGO_MANIFEST_DIR").map_or_else(|| env!("CARGO_MANIFEST_DIR").into(), PathBuf::from);
    manifest.join("../models/cpu")
}

#[test]
fn the_shipped_cpu_tier_reconstructs_and_follows_the_time_of_day() {
    let Some(text_dir) = dir_for_tests() else { return };
    let device = Default::default();
    let pipeline = Pipeline::<Flex>::load(&shipped(), true, &device).unwrap();
    let spec = &pipeline.spec;
    assert_eq!((spec.width, spec.height, spec.fps), (128, 128, 8.0), "the cpu tier's size and rate");

    // Held-out clips through its VAE, as `eval-vae --size 128x128 --frames 9` measures them
    // (the card: 25.85 dB on 8 clips in f32; shipped in f16).
    let o = ClipOptions { width: 128, height: 128, fps: 8.0, frames: 9, transition_probability: 0.5 };
    let (report, _) = evaluate_vae(&pipeline.vae, &o, 4, 2, 1000, &device);
    assert!(report.psnr_mean > 24.0, "shipped VAE: {:.2} dB", report.psnr_mean);

    // A night is darker than a day, whatever the seed.
    let text = TextEncoder::<Flex>::load(&text_dir, &device).unwrap();
    let settings = SamplerSettings { steps: 8, ..SamplerSettings::default() };
    let brightness = |prompt: &str, seed: u64| -> f32 {
        let request = ChunkRequest { seed, chunk: 0, context: None, anchors: None, text: text.embed(prompt) };
        let latents = pipeline.generate(&[request], &settings).remove(0);
        pipeline.decode(latents.unsqueeze_dim(0)).mean().into_scalar()
    };
    for seed in [1, 2] {
        let night = brightness("a clear night over rolling hills", seed);
        let day = brightness("a clear day over rolling hills", seed);
        assert!(day > night + 0.2, "seed {seed}: day {day:.3} against night {night:.3} (frames in [-1, 1])");
    }
}
