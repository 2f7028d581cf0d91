use super::*;
use burn::backend::{Autodiff, Flex};
use burn::module::AutodiffModule;
use burn::optim::{AdamConfig, GradientsParams, Optimizer};
use burn::tensor::{Distribution, ElementConversion};

type B = Flex;
type AB = Autodiff<Flex>;

fn normal<Bk: Backend, const D: usize>(shape: [usize; D], std: f64, device: &Bk::Device) -> Tensor<Bk, D> {
    Tensor::random(shape, Distribution::Normal(0.0, std), device)
}

/// Small random values in place of a zero-initialised layer, so that gradients and outputs
/// are not trivially zero.
fn randomized<Bk: Backend>(mut linear: Linear<Bk>) -> Linear<Bk> {
    fn noise<Bk: Backend, const D: usize>(t: Tensor<Bk, D>) -> Tensor<Bk, D> {
        Tensor::random(t.shape(), Distribution::Normal(0.0, 0.1), &t.device())
    }
    linear.weight = linear.weight.map(noise);
    linear.bias = linear.bias.map(|b| b.map(noise));
    linear
}

fn perturbed_block<Bk: Backend>(mut block: DitBlock<Bk>) -> DitBlock<Bk> {
    block.modulation = match block.modulation {
        Modulation::Full(linear) => Modulation::Full(randomized(linear)),
        Modulation::LowRank(LowRank { down, up }) => Modulation::LowRank(LowRank { down, up: randomized(up) }),
    };
    block
}

fn perturbed<Bk: Backend>(mut model: Denoiser<Bk>) -> Denoiser<Bk> {
    model.blocks = model.blocks.into_iter().map(perturbed_block).collect();
    model.shared_modulation = model.shared_modulation.map(randomized);
    model.final_layer.modulation = randomized(model.final_layer.modulation);
    model.final_layer.projection = randomized(model.final_layer.projection);
    model
}

fn text<Bk: Backend>(b: usize, n: usize, dim: usize, device: &Bk::Device) -> TextCondition<Bk> {
    TextCondition {
        tokens: normal([b, n, dim], 1.0, device),
        padding_mask: Tensor::<Bk, 2, Int>::zeros([b, n], device).bool(),
        pooled: normal([b, dim], 0.05, device),
    }
}

fn input<Bk: Backend>(shape: [usize; 5], condition: Condition<Bk>, device: &Bk::Device) -> DenoiserInput<Bk> {
    let [b, _, t, _, _] = shape;
    let given: Vec<bool> = (0..b * t).map(|i| i % t == 0).collect();
    DenoiserInput {
        z_t: normal(shape, 1.0, device),
        t: Tensor::random([b], Distribution::Uniform(0.0, 1.0), device),
        self_cond: Some(normal(shape, 1.0, device)),
        context: Some(FrameContext {
            latents: normal(shape, 1.0, device),
            frame_mask: Tensor::from_data(TensorData::new(given, [b, t]), device),
        }),
        condition,
        positions: None,
    }
}

fn max_abs<Bk: Backend, const D: usize>(x: Tensor<Bk, D>) -> f32 {
    x.abs().max().into_scalar().elem()
}

/// A config small enough for gradient and overfitting tests.
fn micro() -> DenoiserConfig {
    DenoiserConfig::new()
        .with_hidden_size(32)
        .with_depth(2)
        .with_num_heads(2)
        .with_max_frames(3)
        .with_max_latent_size(8)
        .with_temporal_window(2)
        .with_text_dim(8)
}

#[test]
fn tiny_keeps_the_shape() {
    let device = Default::default();
    let model = DenoiserConfig::tiny().init::<B>(&device);
    let shape = [2, 4, 5, 16, 16];
    let out = model.forward(input(shape, Condition::Text(text(2, 7, 384, &device)), &device));
    assert_eq!(out.dims(), shape);
}

#[test]
fn zero_init_gives_zero_output_and_identity_blocks() {
    let device = Default::default();
    for config in [micro(), micro().with_ada_ln_lora_rank(Some(2)), micro().with_num_classes(Some(10))] {
        let model = config.init::<B>(&device);
        let zero = |linear: &Linear<B>| {
            max_abs(linear.weight.val()) == 0.0 && linear.bias.as_ref().is_none_or(|b| max_abs(b.val()) == 0.0)
        };
        for block in &model.blocks {
            assert!(match &block.modulation {
                Modulation::Full(linear) => zero(linear),
                Modulation::LowRank(lora) => zero(&lora.up),
            });
        }
        assert!(model.shared_modulation.as_ref().is_none_or(zero));
        assert!(zero(&model.final_layer.modulation) && zero(&model.final_layer.projection));

        let text_condition = || match config.num_classes {
            None => Condition::Text(text(2, 3, 8, &device)),
            Some(k) => Condition::Class(Tensor::from_data(TensorData::new(vec![1i64, k as i64], [2]), &device)),
        };
        let out = model.forward(input([2, 4, 3, 8, 8], text_condition(), &device));
        assert_eq!(max_abs(out), 0.0);

        let grid = Extent::new(3, 4, 4);
        let c = normal([2, 32], 1.0, &device);
        let shared = model.shared_modulation.as_ref().map(|m| m.forward(c.clone()));
        let text = match text_condition() {
            Condition::Text(text) => Some(text),
            Condition::Class(_) => None,
        };
        for block in &model.blocks {
            let x = normal([2, grid.volume(), 32], 1.0, &device);
            let y = block.forward(x.clone(), grid, c.clone(), shared.clone(), text.as_ref());
            y.into_data().assert_eq(&x.into_data(), true);
        }
    }
}

#[test]
fn padded_text_tokens_do_not_matter() {
    let device = Default::default();
    let model = perturbed(micro().init::<B>(&device));
    let prompt = text::<B>(1, 3, 8, &device);
    let padded = TextCondition {
        tokens: Tensor::cat(vec![prompt.tokens.clone(), normal([1, 2, 8], 10.0, &device)], 1),
        padding_mask: Tensor::from_data(TensorData::new(vec![false, false, false, true, true], [1, 5]), &device),
        pooled: prompt.pooled.clone(),
    };
    let base = input([1, 4, 3, 8, 8], Condition::Text(prompt), &device);
    let with_padding = DenoiserInput { condition: Condition::Text(padded), ..base.clone() };
    let (a, b) = (model.forward(base), model.forward(with_padding));
    assert!(max_abs(a.clone()) > 1e-3, "the perturbed model should not output zeros");
    assert!(max_abs(a - b) < 1e-5);
}

#[test]
fn dropped_prompts_equal_the_null_prompt() {
    let device = Default::default();
    let model = perturbed(micro().init::<B>(&device));
    let drop = Tensor::<B, 1, Int>::from_data(TensorData::new(vec![1i64, 0], [2]), &device).bool();
    let prompts = text::<B>(2, 4, 8, &device);
    let dropped = input([2, 4, 2, 8, 8], Condition::Text(prompts.clone().drop_where(drop)), &device);
    let both = model.forward(dropped.clone());
    let null = DenoiserInput { condition: Condition::Text(TextCondition::null(2, 8, &device)), ..dropped.clone() };
    let real = DenoiserInput { condition: Condition::Text(prompts), ..dropped };
    let (null, real) = (model.forward(null), model.forward(real));
    assert!(max_abs(both.clone().narrow(0, 0, 1) - null.narrow(0, 0, 1)) < 1e-5);
    assert!(max_abs(both.narrow(0, 1, 1) - real.narrow(0, 1, 1)) < 1e-5);
}

/// A batch split in parts (each clip with its own text, context, self-conditioning and
/// positions) gives, part by part, what the whole batch gives.
#[test]
fn a_split_batch_gives_the_batch_s_values() {
    let device = Default::default();
    let model = perturbed(micro().init::<B>(&device));
    let mut whole = input([4, 4, 3, 8, 8], Condition::Text(text(4, 3, 8, &device)), &device);
    let anchor = FramePosition::Anchor { distance: 5 };
    let positions = vec![FramePosition::window(&[], 3), vec![anchor, FramePosition::Frame(0), FramePosition::Frame(1)]];
    whole.positions = Some([positions.clone(), positions].concat());
    let parts = whole.clone().split(2);
    assert_eq!(parts.len(), 2);
    assert_eq!(parts[1].positions.as_ref().unwrap()[1][0], anchor);
    let v = model.forward(whole);
    for (i, part) in parts.into_iter().enumerate() {
        assert_eq!(part.z_t.dims()[0], 2);
        assert!(max_abs(v.clone().narrow(0, 2 * i, 2) - model.forward(part)) < 1e-6, "part {i}");
    }
}

#[test]
fn frames_outside_the_context_mask_are_ignored() {
    let device = Default::default();
    let model = perturbed(micro().init::<B>(&device));
    let a = input([2, 4, 3, 8, 8], Condition::Text(text(2, 3, 8, &device)), &device);
    let mut b = a.clone();
    let context = b.context.as_mut().expect("the test input has context");
    // Only frame 0 is given: change frames 1 and 2.
    let noise = normal([2, 4, 2, 8, 8], 1.0, &device);
    context.latents = Tensor::cat(vec![context.latents.clone().narrow(2, 0, 1), noise], 2);
    assert!(max_abs(model.forward(a) - model.forward(b)) < 1e-5);
}

/// A block with padded temporal windows (3 frames, windows of 2), spatial windows of 2 × 2 and
/// text cross-attention, its gates perturbed from zero; and its grid.
fn windowed_block(device: &burn::tensor::Device<AB>) -> (DitBlock<AB>, Extent) {
    let config = DitBlockConfig::new(16, 2, 2, [3, 4, 4]).with_window_side(Some(2)).with_text_dim(Some(8));
    (perturbed_block(config.init::<AB>(device)), Extent::new(3, 4, 4))
}

/// `text` on the autodiff backend.
fn on_autodiff(text: &TextCondition<B>) -> TextCondition<AB> {
    TextCondition {
        tokens: Tensor::from_inner(text.tokens.clone()),
        padding_mask: Tensor::from_data(text.padding_mask.to_data(), &text.padding_mask.device()),
        pooled: Tensor::from_inner(text.pooled.clone()),
    }
}

#[test]
fn block_gradient_matches_finite_differences() {
    let device = Default::default();
    // Padded temporal windows (3 frames, windows of 2), spatial windows of 2 × 2, and a masked
    // text token.
    let (block, grid) = windowed_block(&device);
    let shape = [1, grid.volume(), 16];
    let c = normal::<B, 2>([1, 16], 1.0, &device);
    let text = TextCondition::<B> {
        tokens: normal([1, 3, 8], 1.0, &device),
        padding_mask: Tensor::from_data(TensorData::new(vec![false, false, true], [1, 3]), &device),
        pooled: Tensor::zeros([1, 8], &device),
    };
    let weights = normal::<B, 3>(shape, 1.0, &device);
    let x: Vec<f32> = normal::<B, 3>(shape, 1.0, &device).into_data().to_vec().unwrap();

    let inner = block.valid();
    let loss = |x: &[f32]| -> f64 {
        let x = Tensor::<B, 3>::from_data(TensorData::new(x.to_vec(), shape), &device);
        let y = inner.forward(x, grid, c.clone(), None, Some(&text));
        (y * weights.clone()).sum().into_scalar().elem()
    };

    let x_ad = Tensor::<AB, 3>::from_data(TensorData::new(x.clone(), shape), &device).require_grad();
    let text_ad = on_autodiff(&text);
    let y = block.forward(x_ad.clone(), grid, Tensor::from_inner(c.clone()), None, Some(&text_ad));
    let grads = (y * Tensor::from_inner(weights.clone())).sum().backward();
    let grad: Vec<f32> = x_ad.grad(&grads).expect("x requires grad").into_data().to_vec().unwrap();

    let eps = 1e-2;
    for i in [0, 17, 100, 255, 383, 767] {
        let (mut plus, mut minus) = (x.clone(), x.clone());
        plus[i] += eps;
        minus[i] -= eps;
        let numeric = (loss(&plus) - loss(&minus)) / (2.0 * eps as f64);
        let analytic = grad[i] as f64;
        assert!(
            (numeric - analytic).abs() <= 1e-2 * analytic.abs().max(0.1),
            "element {i}: finite differences {numeric}, autodiff {analytic}"
        );
    }
}

/// On the CPU at inference a block takes `crate::cpu`'s paths (row-copy permutes around the
/// attention, GELU by a polynomial); with autodiff it takes burn's ops. They agree.
#[test]
fn the_cpu_paths_give_burns_values() {
    let device = Default::default();
    let (block, grid) = windowed_block(&device);
    let x = normal::<B, 3>([2, grid.volume(), 16], 1.0, &device);
    let c = normal::<B, 2>([2, 16], 1.0, &device);
    let mask = TensorData::new(vec![false, false, true, false, true, true], [2, 3]);
    let text = TextCondition::<B> {
        tokens: normal([2, 3, 8], 1.0, &device),
        padding_mask: Tensor::from_data(mask, &device),
        pooled: Tensor::zeros([2, 8], &device),
    };
    let text_ad = on_autodiff(&text);
    let cpu = block.valid().forward(x.clone(), grid, c.clone(), None, Some(&text));
    let burns = block.forward(Tensor::from_inner(x), grid, Tensor::from_inner(c), None, Some(&text_ad)).inner();
    let d = max_abs(cpu.clone() - burns);
    assert!(d < 1e-5 * max_abs(cpu).max(1.0), "the CPU paths differ from burn's by {d}");
}

#[test]
fn overfits_one_batch() {
    let device = Default::default();
    let mut model = micro().init::<AB>(&device);
    let batch = input::<AB>([1, 4, 2, 8, 8], Condition::Text(text(1, 3, 8, &device)), &device);
    let target = normal::<AB, 5>([1, 4, 2, 8, 8], 1.0, &device);
    let mut optim = AdamConfig::new().init::<AB, Denoiser<AB>>();
    let mut first = None;
    let mut last = f64::INFINITY;
    for _ in 0..300 {
        let loss = (model.forward(batch.clone()) - target.clone()).square().mean();
        last = loss.clone().into_scalar().elem();
        let initial = *first.get_or_insert(last);
        if last <= initial / 10.0 {
            break;
        }
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        model = optim.step(1e-2, model, grads);
    }
    let first = first.expect("at least one step ran");
    assert!(last <= first / 10.0, "the loss fell from {first} to {last} only");
}

#[test]
fn analytic_parameter_counts_match_the_modules() {
    let device = Default::default();
    for config in [
        DenoiserConfig::tiny(),
        DenoiserConfig::tiny().with_ada_ln_lora_rank(Some(4)).with_spatial_window(Some(4)),
        micro().with_num_classes(Some(10)),
    ] {
        assert_eq!(config.init::<B>(&device).num_params(), config.num_params(), "{config:?}");
    }
}

#[test]
fn dit_s2_has_the_papers_parameter_count() {
    let config = DenoiserConfig::dit_s2();
    let params = config.init::<B>(&Default::default()).num_params();
    assert_eq!(params, config.num_params());
    let paper = 33.0e6;
    assert!((params as f64 - paper).abs() <= 0.05 * paper, "DiT-S/2: {params} parameters");
    // DiT reports 6.06 GFLOPs (multiply-adds) for DiT-S/2 at 256² (32 × 32 latents).
    let gmacs = config.gflops(1, 32, 32, 0) / 2.0;
    assert!((gmacs - 6.06).abs() <= 0.1 * 6.06, "DiT-S/2: {gmacs} GMACs");
}

#[test]
fn presets_grow() {
    let sizes: Vec<(usize, f64)> = [DenoiserConfig::tiny(), DenoiserConfig::small(), DenoiserConfig::base()]
        .iter()
        .map(|c| (c.num_params(), c.gflops(5, 32, 32, 16)))
        .collect();
    for (name, (params, gflops)) in ["tiny", "small", "base"].iter().zip(&sizes) {
        println!("{name}: {:.2}M parameters, {gflops:.2} GFLOPs for 5 × 32 × 32 latents", *params as f64 / 1e6);
    }
    println!("tiny at 5 × 16 × 16: {:.3} GFLOPs", DenoiserConfig::tiny().gflops(5, 16, 16, 16));
    assert!(sizes.windows(2).all(|w| w[0].0 < w[1].0 && w[0].1 < w[1].1));
}

#[test]
fn anchor_positions_use_their_own_table_by_log_distance() {
    assert_eq!(
        [1, 2, 3, 4, 7, 8, 200, 100_000].map(|d| anchor_bucket(d, 8)),
        [0, 1, 1, 2, 2, 3, 7, 7],
        "⌊log₂ d⌋, the last row for everything further"
    );
    let device = Default::default();
    let model = perturbed(micro().init::<B>(&device));
    let base = input([2, 4, 3, 8, 8], Condition::Text(text(2, 3, 8, &device)), &device);
    let run = |positions: Option<Vec<Vec<FramePosition>>>| {
        model.forward(DenoiserInput { positions, ..base.clone() }).into_data()
    };
    // Explicit contiguous positions are the default.
    let contiguous = vec![FramePosition::window(&[], 3); 2];
    run(None).assert_eq(&run(Some(contiguous)), true);
    // An anchor in the first slot changes the output, by its distance bucket only.
    let anchored = |d| Some(vec![FramePosition::window(&[d], 2); 2]);
    let near = run(anchored(1));
    let far: Vec<f32> = run(anchored(40)).into_vec().unwrap();
    let same_bucket: Vec<f32> = run(anchored(63)).into_vec().unwrap();
    let default: Vec<f32> = run(None).into_vec().unwrap();
    let differs = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0f32, f32::max);
    let near: Vec<f32> = near.into_vec().unwrap();
    assert!(differs(&near, &default) > 1e-4 && differs(&near, &far) > 1e-4);
    assert_eq!(far, same_bucket);
}

/// A denoiser grown to a wider latent predicts the old channels as before from the same old
/// inputs, whatever the new ones hold, and v = 0 for the new channels.
#[test]
fn a_grown_denoiser_predicts_the_old_channels_as_before() {
    let device = Default::default();
    let model = perturbed(micro().with_latent_channels(4).init::<B>(&device));
    let old = input([2, 4, 3, 8, 8], Condition::Text(text(2, 3, 8, &device)), &device);
    let widen = |x: Tensor<B, 5>| Tensor::cat(vec![x, normal([2, 2, 3, 8, 8], 1.0, &device)], 1);
    let grown_input = DenoiserInput {
        z_t: widen(old.z_t.clone()),
        t: old.t.clone(),
        self_cond: old.self_cond.clone().map(widen),
        context: old.context.clone().map(|c| FrameContext { latents: widen(c.latents), ..c }),
        condition: old.condition.clone(),
        positions: None,
    };
    let before = model.forward(old);
    let grown = model.with_latent_channels(6, &device);
    let after = grown.forward(grown_input);
    assert_eq!(after.dims(), [2, 6, 3, 8, 8]);
    let moved = max_abs(after.clone().narrow(1, 0, 4) - before.clone());
    assert!(moved < 1e-5 && max_abs(before) > 1e-3, "the old channels' predictions move by {moved}");
    assert_eq!(max_abs(after.narrow(1, 4, 2)), 0.0, "the new channels start at v = 0");
}
