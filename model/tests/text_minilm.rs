//! all-MiniLM-L6-v2 in burn against the Python reference (scripts/minilm_reference.py):
//! token ids against Hugging Face `tokenizers` on two thousand strings, sentence embeddings
//! and hidden states against sentence-transformers, batching, the cache, threads.
//!
//! The tests need the model files of scripts/fetch-minilm.sh. Without them they pass with a
//! message on stderr, unless ENDLESS_REQUIRE_MINILM is set (as scripts/test.sh does), in which
//! case they fail.

mod text {
    use burn::backend::Flex;
    use endless_model::text::{MAX_TOKENS, TextBatch, TextEncoder, Tokenizer, dir_for_tests};
    use serde::Deserialize;
    use std::sync::{Arc, OnceLock};

    type B = Flex;

    /// Largest difference allowed between burn and sentence-transformers, per value.
    const TOLERANCE: f32 = 1e-5;

    /// One encoder for every test (loading reads 90 MB); the tests run in parallel threads on it.
    fn encoder() -> Option<&'static TextEncoder<B>> {
        static ENCODER: OnceLock<Option<TextEncoder<B>>> = OnceLock::new();
        ENCODER
            .get_or_init(|| {
                let dir = dir_for_tests()?;
                Some(TextEncoder::load(&dir, &Default::default()).expect("the fetched model loads"))
            })
            .as_ref()
    }

    #[derive(Deserialize)]
    struct Reference {
        max_tokens: usize,
        prompts: Vec<ReferencePrompt>,
    }

    #[derive(Deserialize)]
    struct ReferencePrompt {
        prompt: String,
        ids: Vec<u32>,
        embedding: Vec<f32>,
        hidden_states: Option<Vec<Vec<f32>>>,
    }

    fn reference() -> Reference {
        serde_json::from_str(include_str!("fixtures/minilm_reference.json")).expect("the fixture is valid")
    }

    #[derive(Deserialize)]
    struct TokenCases {
        max_tokens: usize,
        cases: Vec<TokenCase>,
    }

    #[derive(Deserialize)]
    struct TokenCase {
        text: String,
        ids: Vec<u32>,
    }

    fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
        assert_eq!(a.len(), b.len(), "compared vectors differ in length");
        a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
    }

    fn values<const D: usize>(t: burn::tensor::Tensor<B, D>) -> Vec<f32> {
        t.into_data().convert::<f32>().into_vec().expect("f32 data after convert")
    }

    #[test]
    fn encoder_is_send_and_sync() {
        fn shared<T: Send + Sync>() {}
        shared::<TextEncoder<B>>();
    }

    #[test]
    fn tokenizer_matches_hugging_face_tokenizers() {
        let Some(dir) = dir_for_tests() else { return };
        let tokenizer = Tokenizer::from_vocab_file(&dir.join("vocab.txt")).expect("vocab.txt loads");
        let fixture: TokenCases =
            serde_json::from_str(include_str!("fixtures/minilm_tokens.json")).expect("the fixture is valid");
        assert_eq!(fixture.max_tokens, MAX_TOKENS);
        assert!(fixture.cases.len() >= 2000, "{} cases", fixture.cases.len());
        let wrong: Vec<&TokenCase> = fixture.cases.iter().filter(|c| tokenizer.encode(&c.text) != c.ids).collect();
        for case in wrong.iter().take(10) {
            eprintln!("{:?}\n  expected {:?}\n  got      {:?}", case.text, case.ids, tokenizer.encode(&case.text));
        }
        assert!(wrong.is_empty(), "{} of {} strings tokenised differently", wrong.len(), fixture.cases.len());
        // The fixture does exercise the edges.
        assert!(fixture.cases.iter().any(|c| c.ids.len() == MAX_TOKENS));
        assert!(fixture.cases.iter().filter(|c| c.ids.contains(&100)).count() > 100, "[UNK] cases");
    }

    #[test]
    fn embeddings_match_sentence_transformers() {
        let Some(encoder) = encoder() else { return };
        let reference = reference();
        assert_eq!(reference.max_tokens, MAX_TOKENS);
        assert!(reference.prompts.len() >= 5);
        let (mut worst_pooled, mut worst_hidden) = (0f32, 0f32);
        for r in &reference.prompts {
            let e = encoder.embed(&r.prompt);
            assert_eq!(e.ids(), r.ids, "token ids of {:?}", r.prompt);
            let diff = max_abs_diff(e.pooled(), &r.embedding);
            assert!(diff <= TOLERANCE, "embedding of {:?} differs by {diff}", r.prompt);
            worst_pooled = worst_pooled.max(diff);
            let norm = e.pooled().iter().map(|x| x * x).sum::<f32>().sqrt();
            assert!((norm - 1.0).abs() < 1e-5, "unit length, got {norm}");
            if let Some(hidden) = &r.hidden_states {
                assert_eq!(hidden.len(), e.num_tokens());
                for (i, row) in hidden.iter().enumerate() {
                    let diff = max_abs_diff(e.token(i), row);
                    assert!(diff <= TOLERANCE, "hidden state {i} of {:?} differs by {diff}", r.prompt);
                    worst_hidden = worst_hidden.max(diff);
                }
            }
        }
        eprintln!("largest difference to sentence-transformers: embeddings {worst_pooled:e}, hidden {worst_hidden:e}");
    }

    #[test]
    fn the_autodiff_backend_matches_too() {
        // Training runs on Autodiff<…>: the frozen encoder must give the same states there.
        let Some(dir) = dir_for_tests() else { return };
        let encoder = TextEncoder::<burn::backend::Autodiff<B>>::load(&dir, &Default::default()).expect("it loads");
        let mut worst = 0f32;
        for r in &reference().prompts {
            let diff = max_abs_diff(encoder.embed(&r.prompt).pooled(), &r.embedding);
            assert!(diff <= TOLERANCE, "embedding of {:?} on Autodiff<Flex> differs by {diff}", r.prompt);
            worst = worst.max(diff);
        }
        eprintln!("Autodiff<Flex>: largest difference to sentence-transformers {worst:e}");
    }

    #[test]
    fn a_batch_gives_each_prompt_what_it_gets_alone() {
        let Some(encoder) = encoder() else { return };
        let reference = reference();
        let prompts: Vec<&str> = reference.prompts.iter().map(|r| r.prompt.as_str()).collect();
        let batch = encoder.encode(&prompts);
        let n = batch.hidden.dims()[1];
        assert_eq!(n, MAX_TOKENS, "the long prompt sets the padded length");
        assert_eq!(batch.hidden.dims(), [prompts.len(), n, 384]);
        let pooled = values(batch.pooled);
        let hidden = values(batch.hidden);
        let padding: Vec<bool> = batch.padding_mask.into_data().into_vec().expect("bool data");
        let (mut worst_pooled, mut worst_hidden) = (0f32, 0f32);
        for (k, r) in reference.prompts.iter().enumerate() {
            let alone = encoder.encode(&[&r.prompt]);
            let len = r.ids.len();
            assert_eq!(padding[k * n..(k + 1) * n].iter().filter(|&&p| !p).count(), len, "mask of {:?}", r.prompt);
            let diff = max_abs_diff(&pooled[k * 384..(k + 1) * 384], &values(alone.pooled));
            worst_pooled = worst_pooled.max(diff);
            let own = &hidden[k * n * 384..(k * n + len) * 384];
            worst_hidden = worst_hidden.max(max_abs_diff(own, &values(alone.hidden)));
            let truth = max_abs_diff(&pooled[k * 384..(k + 1) * 384], &r.embedding);
            assert!(truth <= TOLERANCE, "batched embedding of {:?} differs from the reference by {truth}", r.prompt);
        }
        eprintln!("batched vs alone: embeddings {worst_pooled:e}, hidden {worst_hidden:e}");
        assert!(worst_pooled <= 1e-6 && worst_hidden <= 1e-5, "{worst_pooled} {worst_hidden}");
    }

    #[test]
    fn only_position_ids_and_the_pooler_are_unused() {
        let Some(encoder) = encoder() else { return };
        assert_eq!(encoder.unused_tensors(), ["embeddings.position_ids", "pooler.dense.bias", "pooler.dense.weight"]);
        assert_eq!(encoder.dim(), 384);
        assert_eq!(encoder.bert().layers.len(), 6);
    }

    #[test]
    fn a_seen_prompt_comes_from_the_cache() {
        let Some(encoder) = encoder() else { return };
        let before = encoder.cache_stats();
        let first = encoder.embed("a lighthouse on a cliff at dusk (cache test)");
        let second = encoder.embed("a lighthouse on a cliff at dusk (cache test)");
        assert!(Arc::ptr_eq(&first, &second), "the second call returns the cached embedding");
        let after = encoder.cache_stats();
        assert!(after.hits > before.hits && after.misses > before.misses);
        let other = encoder.embed("a lighthouse on a cliff at dawn (cache test)");
        assert!(!Arc::ptr_eq(&first, &other));
        // Cached embeddings batch into the same tensors as a fresh encode.
        let cached = TextBatch::<B>::from_embeddings(&[first, other], encoder.device());
        let fresh = encoder
            .encode(&["a lighthouse on a cliff at dusk (cache test)", "a lighthouse on a cliff at dawn (cache test)"]);
        assert!(max_abs_diff(&values(cached.pooled), &values(fresh.pooled)) <= 1e-6);
        let masks: [Vec<bool>; 2] =
            [cached.padding_mask, fresh.padding_mask].map(|m| m.into_data().into_vec().expect("bool data"));
        assert_eq!(masks[0], masks[1]);
    }

    #[test]
    fn many_prompts_at_once_get_what_each_gets_alone() {
        let Some(dir) = dir_for_tests() else { return };
        let alone = TextEncoder::<B>::load(&dir, &Default::default()).expect("it loads").with_cache_capacity(0);
        let many = TextEncoder::<B>::load(&dir, &Default::default()).expect("it loads");
        let seen = many.embed("a foggy dusk in the hills (many)");
        let prompts = [
            "a clear night over the dunes, panning right (many)",
            "a foggy dusk in the hills (many)",
            "snow (many)",
            "a clear night over the dunes, panning right (many)",
        ];
        let got = many.embed_many(&prompts);
        assert_eq!(got.len(), prompts.len());
        assert!(Arc::ptr_eq(&got[1], &seen), "a cached prompt comes from the cache");
        assert!(Arc::ptr_eq(&got[0], &got[3]), "a prompt asked twice is encoded once");
        let stats = many.cache_stats();
        assert_eq!((stats.hits, stats.misses), (1, 3), "one hit, and one pass for the two new prompts");
        for (p, e) in prompts.iter().zip(&got) {
            let own = alone.embed(p);
            assert_eq!(e.ids(), own.ids());
            assert_eq!(e.num_tokens(), own.num_tokens());
            assert!(max_abs_diff(e.pooled(), own.pooled()) <= 1e-6, "pooled embedding of {p:?}");
            for i in 0..e.num_tokens() {
                assert!(max_abs_diff(e.token(i), own.token(i)) <= 1e-5, "hidden state {i} of {p:?}");
            }
        }
        assert!(Arc::ptr_eq(&many.embed(prompts[2]), &got[2]), "what was encoded together is cached");
    }

    #[test]
    fn threads_share_one_encoder() {
        let Some(encoder) = encoder() else { return };
        let prompts = ["fog over pine trees (threads)", "rain on a city street at night (threads)", "dunes (threads)"];
        let expected: Vec<Vec<f32>> = prompts.iter().map(|p| values(encoder.encode(&[p]).pooled)).collect();
        std::thread::scope(|s| {
            for t in 0..4 {
                let expected = &expected;
                s.spawn(move || {
                    for k in 0..prompts.len() {
                        let k = (k + t) % prompts.len();
                        let e = encoder.embed(prompts[k]);
                        assert!(max_abs_diff(e.pooled(), &expected[k]) <= 1e-6, "thread {t}, {:?}", prompts[k]);
                    }
                });
            }
        });
    }

    #[test]
    fn a_pack_for_the_world_captions_computes_what_the_model_does() {
        use endless_model::text::pack_for_texts;
        use endless_model::world::{Attributes, Camera, Phrasing, Scenery, Split, TimeOfDay, Weather, caption_pieces};
        use std::collections::BTreeSet;
        let Some(encoder) = encoder() else { return };
        let dir = dir_for_tests().expect("the encoder loaded from it");
        let out = std::env::temp_dir().join(format!("endless-pack-text-{}", std::process::id()));
        let pieces = caption_pieces();
        let pieces: Vec<&str> = pieces.iter().map(String::as_str).collect();
        let packed = pack_for_texts(&dir, &out, &pieces).expect("the model packs");
        assert!((100..2_000).contains(&packed.tokens_kept), "{packed:?}");
        assert!(packed.bytes < 50_000_000, "{packed:?}");
        let small = TextEncoder::<B>::load(&out, &Default::default()).expect("the pack loads as the model does");
        let _ = std::fs::remove_dir_all(&out);

        // Every caption of either split, every attribute combination, is made of kept tokens.
        let tokenizer = encoder.tokenizer();
        let kept: BTreeSet<u32> = pieces.iter().flat_map(|p| tokenizer.encode(p)).collect();
        let mut captions = Vec::new();
        for (i, &time) in TimeOfDay::ALL.iter().enumerate() {
            for &weather in Weather::ALL {
                for &scenery in Scenery::ALL {
                    for &camera in Camera::ALL {
                        let a = Attributes { time, weather, scenery, camera };
                        for split in [Split::Train, Split::HeldOut] {
                            for seed in 0..4 {
                                captions.push(Phrasing::sample(split, seed * 977 + i as u64).caption(&a));
                            }
                        }
                    }
                }
            }
        }
        for caption in &captions {
            let missing: Vec<u32> = tokenizer.encode(caption).into_iter().filter(|id| !kept.contains(id)).collect();
            assert!(missing.is_empty(), "{caption:?}: tokens {missing:?} were not kept");
        }

        // On captions it computes what the model does, to f16 precision; off them it does not.
        for caption in captions.iter().step_by(97) {
            let (full, packed) = (encoder.embed(caption), small.embed(caption));
            assert!(full.similarity(&packed) > 0.9999, "{caption:?}: cosine {}", full.similarity(&packed));
            let rms = (full.hidden().iter().map(|v| v * v).sum::<f32>() / full.hidden().len() as f32).sqrt();
            let diff = max_abs_diff(full.hidden(), packed.hidden());
            assert!(diff < 0.02 * rms, "{caption:?}: token states differ by {diff} (RMS {rms})");
        }
        let other = "a zebra eating spaghetti in a submarine";
        let cosine = encoder.embed(other).similarity(&small.embed(other));
        assert!(cosine < 0.99, "{other:?} uses dropped tokens, yet cosine {cosine}");
    }

    #[test]
    fn own_words_land_near_the_training_captions() {
        let Some(encoder) = encoder() else { return };
        let sunset = encoder.embed("sunset over the ocean");
        let sundown = encoder.embed("sundown over the sea");
        let snow = encoder.embed("a snowy night over the mountains");
        let (near, far) = (sunset.similarity(&sundown), sunset.similarity(&snow));
        assert!(near > 0.65 && near > far + 0.2, "near {near}, far {far}");
    }
}
