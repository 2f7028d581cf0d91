//! Loading a Hugging Face `BertModel` checkpoint (model.safetensors) into [`Bert`].
//!
//! Every tensor the encoder needs is looked up under its Hugging Face name, checked (F32, F16
//! or BF16, the shape of the parameter it replaces) and applied; an error names the key.
//! PyTorch stores a linear layer's weight as `[out, in]`, burn as `[in, out]`: weights are
//! transposed on load.
//! The names map as follows (N: layer):
//!
//! | Hugging Face                                     | here                         |
//! |--------------------------------------------------|------------------------------|
//! | `embeddings.word_embeddings`                     | `embeddings.word`            |
//! | `embeddings.position_embeddings`                 | `embeddings.position`        |
//! | `embeddings.token_type_embeddings`               | `embeddings.token_type`      |
//! | `embeddings.LayerNorm`                           | `embeddings.norm`            |
//! | `encoder.layer.N.attention.self.{query,key,value}` | `layers[N].attention.{query,key,value}` |
//! | `encoder.layer.N.attention.output.dense`         | `layers[N].attention.output` |
//! | `encoder.layer.N.attention.output.LayerNorm`     | `layers[N].attention.norm`   |
//! | `encoder.layer.N.intermediate.dense`             | `layers[N].intermediate`     |
//! | `encoder.layer.N.output.dense`                   | `layers[N].output`           |
//! | `encoder.layer.N.output.LayerNorm`               | `layers[N].norm`             |
//!
//! LayerNorm `weight`/`bias` become `gamma`/`beta`. Tensors left over (all-MiniLM-L6-v2 has
//! `embeddings.position_ids` and the unused `pooler.dense.*`) are reported, not applied.

use burn::module::Param;
use burn::nn::{Embedding, LayerNorm, Linear};
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData, bf16, f16};
use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};
use std::collections::BTreeSet;
use std::path::Path;

use super::TextError;
use super::bert::{Bert, BertAttention, BertEmbeddings, BertLayer};

/// Tensors that a Hugging Face BERT checkpoint has and the encoder does not use: not worth
/// a warning.
const KNOWN_UNUSED: [&str; 3] = ["embeddings.position_ids", "pooler.dense.weight", "pooler.dense.bias"];

/// Reads the safetensors file at `path` into `bert` (whose shapes it must match). Returns the
/// loaded encoder and the names of the tensors in the file that it did not use, sorted.
pub fn load_safetensors<B: Backend>(bert: Bert<B>, path: &Path) -> Result<(Bert<B>, Vec<String>), TextError> {
    let bytes = std::fs::read(path).map_err(|source| TextError::Io { path: path.into(), source })?;
    load_safetensors_bytes(bert, &bytes, path)
}

/// [`load_safetensors`] from the file's bytes; `path` only names the source in errors.
pub fn load_safetensors_bytes<B: Backend>(
    bert: Bert<B>,
    bytes: &[u8],
    path: &Path,
) -> Result<(Bert<B>, Vec<String>), TextError> {
    let file =
        SafeTensors::deserialize(bytes).map_err(|source| TextError::Safetensors { path: path.into(), source })?;
    let mut weights = Weights { file, path, used: BTreeSet::new() };
    let bert = weights.bert(bert)?;
    let mut unused: Vec<String> =
        weights.file.names().into_iter().filter(|name| !weights.used.contains(*name)).map(String::from).collect();
    unused.sort();
    let unexpected: Vec<&String> = unused.iter().filter(|name| !KNOWN_UNUSED.contains(&name.as_str())).collect();
    tracing::debug!(path = %path.display(), used = weights.used.len(), ?unused, "BERT weights loaded; tensors not used");
    if !unexpected.is_empty() {
        tracing::warn!(path = %path.display(), ?unexpected, "tensors in the BERT checkpoint that the encoder does not use");
    }
    Ok((bert, unused))
}

/// The values of a little-endian F32, F16 or BF16 tensor as f32; `None` for another dtype.
fn floats(dtype: Dtype, bytes: &[u8]) -> Option<Vec<f32>> {
    match dtype {
        Dtype::F32 => Some(bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect()),
        Dtype::F16 => Some(bytes.chunks_exact(2).map(|b| f16::from_le_bytes([b[0], b[1]]).to_f32()).collect()),
        Dtype::BF16 => Some(bytes.chunks_exact(2).map(|b| bf16::from_le_bytes([b[0], b[1]]).to_f32()).collect()),
        _ => None,
    }
}

/// A checkpoint of the encoder's tensors alone, in f16, with the rows of the word-embedding
/// table outside `keep` set to zero: a model that gives the original's outputs, to f16
/// precision, on every text whose token ids are all in `keep`, in a file that compresses to
/// half the original's size (a zero row costs nothing in a compressed archive). For carrying
/// the encoder where the original does not fit: the GPU machine's 64 MiB working tree takes
/// the whole text encoder this way, with the tokens of every world caption kept
/// (`endless-model pack-text`).
pub fn pack_f16(bytes: &[u8], keep: &BTreeSet<u32>, path: &Path) -> Result<Vec<u8>, TextError> {
    let file =
        SafeTensors::deserialize(bytes).map_err(|source| TextError::Safetensors { path: path.into(), source })?;
    let mut tensors: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
    for (name, view) in file.tensors() {
        if KNOWN_UNUSED.contains(&name.as_str()) {
            continue;
        }
        let mut values = floats(view.dtype(), view.data()).ok_or_else(|| TextError::TensorDtype {
            path: path.into(),
            key: name.clone(),
            dtype: format!("{:?}", view.dtype()),
        })?;
        if name == "embeddings.word_embeddings.weight" {
            let width = view.shape()[1];
            for (id, row) in values.chunks_exact_mut(width).enumerate() {
                if !keep.contains(&(id as u32)) {
                    row.fill(0.0);
                }
            }
        }
        let bytes = values.into_iter().flat_map(|v| f16::from_f32(v).to_le_bytes()).collect();
        tensors.push((name, view.shape().to_vec(), bytes));
    }
    tensors.sort_by(|a, b| a.0.cmp(&b.0));
    let views = tensors.iter().map(|(name, shape, bytes)| {
        (name.as_str(), TensorView::new(Dtype::F16, shape.clone(), bytes).expect("two bytes per value of the shape"))
    });
    safetensors::serialize(views, None).map_err(|source| TextError::Safetensors { path: path.into(), source })
}

/// The open checkpoint and the names of the tensors taken from it so far.
struct Weights<'a> {
    file: SafeTensors<'a>,
    path: &'a Path,
    used: BTreeSet<String>,
}

impl Weights<'_> {
    /// The values of tensor `key`, which must be F32 of shape `shape`.
    fn take(&mut self, key: &str, shape: &[usize]) -> Result<Vec<f32>, TextError> {
        let view = self
            .file
            .tensor(key)
            .map_err(|_| TextError::MissingTensor { path: self.path.into(), key: key.to_string() })?;
        if view.shape() != shape {
            return Err(TextError::TensorShape {
                path: self.path.into(),
                key: key.to_string(),
                expected: shape.to_vec(),
                found: view.shape().to_vec(),
            });
        }
        let values = floats(view.dtype(), view.data()).ok_or_else(|| TextError::TensorDtype {
            path: self.path.into(),
            key: key.to_string(),
            dtype: format!("{:?}", view.dtype()),
        })?;
        self.used.insert(key.to_string());
        Ok(values)
    }

    /// A tensor of `shape` from tensor `key`.
    fn tensor<B: Backend, const D: usize>(
        &mut self,
        key: &str,
        shape: [usize; D],
        device: &B::Device,
    ) -> Result<Tensor<B, D>, TextError> {
        let values = self.take(key, &shape)?;
        Ok(Tensor::from_data(TensorData::new(values, shape), device))
    }

    fn bert<B: Backend>(&mut self, bert: Bert<B>) -> Result<Bert<B>, TextError> {
        let embeddings = self.embeddings(bert.embeddings)?;
        let layers = bert
            .layers
            .into_iter()
            .enumerate()
            .map(|(n, layer)| self.layer(layer, &format!("encoder.layer.{n}")))
            .collect::<Result<_, _>>()?;
        Ok(Bert { embeddings, layers })
    }

    fn embeddings<B: Backend>(&mut self, e: BertEmbeddings<B>) -> Result<BertEmbeddings<B>, TextError> {
        Ok(BertEmbeddings {
            word: self.embedding(e.word, "embeddings.word_embeddings")?,
            position: self.embedding(e.position, "embeddings.position_embeddings")?,
            token_type: self.embedding(e.token_type, "embeddings.token_type_embeddings")?,
            norm: self.layer_norm(e.norm, "embeddings.LayerNorm")?,
        })
    }

    fn layer<B: Backend>(&mut self, layer: BertLayer<B>, prefix: &str) -> Result<BertLayer<B>, TextError> {
        Ok(BertLayer {
            attention: self.attention(layer.attention, prefix)?,
            intermediate: self.linear(layer.intermediate, &format!("{prefix}.intermediate.dense"))?,
            output: self.linear(layer.output, &format!("{prefix}.output.dense"))?,
            norm: self.layer_norm(layer.norm, &format!("{prefix}.output.LayerNorm"))?,
        })
    }

    fn attention<B: Backend>(&mut self, a: BertAttention<B>, prefix: &str) -> Result<BertAttention<B>, TextError> {
        Ok(BertAttention {
            query: self.linear(a.query, &format!("{prefix}.attention.self.query"))?,
            key: self.linear(a.key, &format!("{prefix}.attention.self.key"))?,
            value: self.linear(a.value, &format!("{prefix}.attention.self.value"))?,
            output: self.linear(a.output, &format!("{prefix}.attention.output.dense"))?,
            norm: self.layer_norm(a.norm, &format!("{prefix}.attention.output.LayerNorm"))?,
            num_heads: a.num_heads,
        })
    }

    /// `{prefix}.weight` (`[out, in]`, transposed to burn's `[in, out]`) and `{prefix}.bias`.
    fn linear<B: Backend>(&mut self, linear: Linear<B>, prefix: &str) -> Result<Linear<B>, TextError> {
        let device = linear.weight.lazy_device();
        let [d_in, d_out] = linear.weight.lazy_shape().dims();
        let key = format!("{prefix}.weight");
        let out_in = self.take(&key, &[d_out, d_in])?;
        let mut in_out = vec![0.0; out_in.len()];
        for (o, row) in out_in.chunks_exact(d_in).enumerate() {
            for (i, &w) in row.iter().enumerate() {
                in_out[i * d_out + o] = w;
            }
        }
        let weight = Tensor::from_data(TensorData::new(in_out, [d_in, d_out]), &device);
        let bias = match linear.bias {
            Some(_) => Some(Param::from_tensor(self.tensor(&format!("{prefix}.bias"), [d_out], &device)?)),
            None => None,
        };
        Ok(Linear { weight: Param::from_tensor(weight), bias })
    }

    /// `{prefix}.weight` (gamma) and `{prefix}.bias` (beta); the epsilon stays the module's.
    fn layer_norm<B: Backend>(&mut self, mut norm: LayerNorm<B>, prefix: &str) -> Result<LayerNorm<B>, TextError> {
        let device = norm.gamma.lazy_device();
        let [d] = norm.gamma.lazy_shape().dims();
        norm.gamma = Param::from_tensor(self.tensor(&format!("{prefix}.weight"), [d], &device)?);
        if norm.beta.is_some() {
            norm.beta = Some(Param::from_tensor(self.tensor(&format!("{prefix}.bias"), [d], &device)?));
        }
        Ok(norm)
    }

    /// `{prefix}.weight`, `[rows, d]` in both.
    fn embedding<B: Backend>(&mut self, embedding: Embedding<B>, prefix: &str) -> Result<Embedding<B>, TextError> {
        let device = embedding.weight.lazy_device();
        let shape: [usize; 2] = embedding.weight.lazy_shape().dims();
        let weight = self.tensor(&format!("{prefix}.weight"), shape, &device)?;
        Ok(Embedding { weight: Param::from_tensor(weight) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::text::bert::{BertConfig, mean_pool_normalized};
    use burn::backend::Flex;
    use burn::module::Module;
    use burn::tensor::{Bool, Int};
    use safetensors::tensor::TensorView;
    use std::collections::HashMap;

    type B = Flex;

    /// A BERT as small as can be: 2 layers of width 8, 2 heads.
    fn tiny() -> BertConfig {
        BertConfig::new()
            .with_vocab_size(12)
            .with_hidden_size(8)
            .with_num_layers(2)
            .with_num_heads(2)
            .with_intermediate_size(16)
            .with_max_position_embeddings(10)
    }

    /// Every tensor of a Hugging Face checkpoint of `config`, with deterministic values that are
    /// different for every tensor and element, plus the tensors the encoder does not use.
    fn checkpoint(config: &BertConfig) -> HashMap<String, (Dtype, Vec<usize>, Vec<u8>)> {
        let (d, f) = (config.hidden_size, config.intermediate_size);
        let mut shapes: Vec<(String, Vec<usize>)> = vec![
            ("embeddings.word_embeddings.weight".into(), vec![config.vocab_size, d]),
            ("embeddings.position_embeddings.weight".into(), vec![config.max_position_embeddings, d]),
            ("embeddings.token_type_embeddings.weight".into(), vec![config.type_vocab_size, d]),
            ("embeddings.LayerNorm.weight".into(), vec![d]),
            ("embeddings.LayerNorm.bias".into(), vec![d]),
            ("pooler.dense.weight".into(), vec![d, d]),
            ("pooler.dense.bias".into(), vec![d]),
        ];
        for n in 0..config.num_layers {
            let p = format!("encoder.layer.{n}");
            for (name, out, inp) in [
                ("attention.self.query", d, d),
                ("attention.self.key", d, d),
                ("attention.self.value", d, d),
                ("attention.output.dense", d, d),
                ("intermediate.dense", f, d),
                ("output.dense", d, f),
            ] {
                shapes.push((format!("{p}.{name}.weight"), vec![out, inp]));
                shapes.push((format!("{p}.{name}.bias"), vec![out]));
            }
            for name in ["attention.output.LayerNorm", "output.LayerNorm"] {
                shapes.push((format!("{p}.{name}.weight"), vec![d]));
                shapes.push((format!("{p}.{name}.bias"), vec![d]));
            }
        }
        let mut tensors: HashMap<String, (Dtype, Vec<usize>, Vec<u8>)> = shapes
            .into_iter()
            .enumerate()
            .map(|(k, (name, shape))| {
                let len: usize = shape.iter().product();
                let gamma = name.ends_with("LayerNorm.weight");
                let bytes = (0..len)
                    .map(|i| {
                        let u = uniform((k as u64) << 32 | i as u64) - 0.5;
                        if gamma { 1.0 + 0.2 * u } else { u }
                    })
                    .flat_map(f32::to_le_bytes)
                    .collect();
                (name, (Dtype::F32, shape, bytes))
            })
            .collect();
        let positions: Vec<u8> = (0..config.max_position_embeddings as i64).flat_map(i64::to_le_bytes).collect();
        tensors
            .insert("embeddings.position_ids".into(), (Dtype::I64, vec![1, config.max_position_embeddings], positions));
        tensors
    }

    /// A hash of `n` scaled into [0, 1) (splitmix64).
    fn uniform(n: u64) -> f32 {
        let mut z = n.wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        (z ^ (z >> 31)) as f32 / 2f32.powi(64)
    }

    fn serialize(tensors: &HashMap<String, (Dtype, Vec<usize>, Vec<u8>)>) -> Vec<u8> {
        let views: Vec<(String, TensorView)> = tensors
            .iter()
            .map(|(name, (dtype, shape, bytes))| {
                (name.clone(), TensorView::new(*dtype, shape.clone(), bytes).expect("the bytes match the shape"))
            })
            .collect();
        safetensors::serialize(views, None).expect("serialising in-memory tensors does not fail")
    }

    fn load(tensors: &HashMap<String, (Dtype, Vec<usize>, Vec<u8>)>) -> Result<(Bert<B>, Vec<String>), TextError> {
        let config = tiny();
        load_safetensors_bytes(
            config.init::<B>(&Default::default()),
            &serialize(tensors),
            Path::new("tiny.safetensors"),
        )
    }

    fn f32s(bytes: &[u8]) -> Vec<f32> {
        bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect()
    }

    fn values<const D: usize>(t: Tensor<B, D>) -> Vec<f32> {
        t.into_data().convert::<f32>().into_vec().expect("f32 data after convert")
    }

    #[test]
    fn every_tensor_is_applied_and_linear_weights_are_transposed() {
        let tensors = checkpoint(&tiny());
        let (bert, unused) = load(&tensors).expect("a complete checkpoint loads");
        assert_eq!(unused, ["embeddings.position_ids", "pooler.dense.bias", "pooler.dense.weight"]);

        // query of layer 1: the file has [out, in], the module [in, out].
        let file = f32s(&tensors["encoder.layer.1.attention.self.query.weight"].2);
        let module = values(bert.layers[1].attention.query.weight.val());
        for o in 0..8 {
            for i in 0..8 {
                assert_eq!(module[i * 8 + o], file[o * 8 + i], "query weight [{o}, {i}]");
            }
        }
        // intermediate: [16, 8] in the file, [8, 16] here.
        assert_eq!(bert.layers[0].intermediate.weight.dims(), [8, 16]);
        let file = f32s(&tensors["encoder.layer.0.intermediate.dense.weight"].2);
        let module = values(bert.layers[0].intermediate.weight.val());
        assert_eq!(module[3 * 16 + 11], file[11 * 8 + 3]);
        let checks: [(Vec<f32>, &str); 5] = [
            (values(bert.embeddings.word.weight.val()), "embeddings.word_embeddings.weight"),
            (values(bert.embeddings.norm.gamma.val()), "embeddings.LayerNorm.weight"),
            (
                values(bert.layers[1].norm.beta.clone().expect("BERT norms have a bias").val()),
                "encoder.layer.1.output.LayerNorm.bias",
            ),
            (
                values(bert.layers[0].attention.output.bias.clone().expect("BERT linears have a bias").val()),
                "encoder.layer.0.attention.output.dense.bias",
            ),
            (values(bert.layers[1].attention.norm.gamma.val()), "encoder.layer.1.attention.output.LayerNorm.weight"),
        ];
        for (module, key) in checks {
            assert_eq!(module, f32s(&tensors[key].2), "{key}");
        }
    }

    #[test]
    fn errors_name_the_tensor() {
        let mut missing = checkpoint(&tiny());
        missing.remove("encoder.layer.1.attention.self.value.bias");
        let err = load(&missing).unwrap_err();
        assert!(
            matches!(&err, TextError::MissingTensor { key, .. } if key == "encoder.layer.1.attention.self.value.bias")
        );
        assert!(err.to_string().contains("encoder.layer.1.attention.self.value.bias"), "{err}");

        let mut shape = checkpoint(&tiny());
        let entry = shape.get_mut("encoder.layer.0.intermediate.dense.weight").expect("the checkpoint has it");
        entry.1 = vec![8, 16]; // transposed: burn's layout instead of PyTorch's
        let err = load(&shape).unwrap_err();
        assert!(
            matches!(&err, TextError::TensorShape { key, expected, found, .. }
                if key == "encoder.layer.0.intermediate.dense.weight" && expected == &[16, 8] && found == &[8, 16]),
            "{err}"
        );

        let mut dtype = checkpoint(&tiny());
        let entry = dtype.get_mut("embeddings.LayerNorm.bias").expect("the checkpoint has it");
        *entry = (Dtype::I32, vec![8], entry.2.clone());
        let err = load(&dtype).unwrap_err();
        assert!(matches!(&err, TextError::TensorDtype { key, .. } if key == "embeddings.LayerNorm.bias"), "{err}");

        let err = load_safetensors_bytes(tiny().init::<B>(&Default::default()), b"not a checkpoint", Path::new("x"))
            .unwrap_err();
        assert!(matches!(err, TextError::Safetensors { .. }), "{err}");
    }

    /// Runs `bert` on `seqs`, padded to the longest with id 0; returns the hidden states of
    /// every sequence (its own tokens only) and the pooled embeddings.
    fn run(bert: &Bert<B>, seqs: &[Vec<i32>]) -> (Vec<Vec<f32>>, Vec<Vec<f32>>) {
        let device = Default::default();
        let (b, n) = (seqs.len(), seqs.iter().map(Vec::len).max().expect("at least one sequence"));
        let ids: Vec<i32> =
            seqs.iter().flat_map(|s| s.iter().copied().chain(std::iter::repeat_n(0, n - s.len()))).collect();
        let pad: Vec<bool> = seqs.iter().flat_map(|s| (0..n).map(move |i| i >= s.len())).collect();
        let ids = Tensor::<B, 2, Int>::from_data(TensorData::new(ids, [b, n]), &device);
        let pad = Tensor::<B, 2, Bool>::from_data(TensorData::new(pad, [b, n]), &device);
        let hidden = bert.forward(ids, pad.clone());
        let pooled = values(mean_pool_normalized(hidden.clone(), pad));
        let hidden = values(hidden);
        let d = pooled.len() / b;
        let per_seq = seqs.iter().enumerate().map(|(k, s)| hidden[k * n * d..(k * n + s.len()) * d].to_vec()).collect();
        (per_seq, pooled.chunks(d).map(<[f32]>::to_vec).collect())
    }

    #[test]
    fn a_packed_checkpoint_is_f16_and_keeps_the_kept_tokens() {
        let tensors = checkpoint(&tiny());
        let keep: BTreeSet<u32> = [0, 2, 3, 5, 7].into();
        let packed = pack_f16(&serialize(&tensors), &keep, Path::new("tiny")).expect("a complete checkpoint packs");
        let file = SafeTensors::deserialize(&packed).expect("the packed bytes are safetensors");
        let mut names = file.names();
        names.sort();
        assert!(file.tensors().iter().all(|(_, v)| v.dtype() == Dtype::F16));
        assert!(!names.iter().any(|n| KNOWN_UNUSED.contains(n)), "{names:?}");
        assert_eq!(names.len(), tensors.len() - KNOWN_UNUSED.len());

        // The word table: kept rows rounded to f16, the others zero.
        let original = f32s(&tensors["embeddings.word_embeddings.weight"].2);
        let word = file.tensor("embeddings.word_embeddings.weight").expect("packed");
        let word = floats(word.dtype(), word.data()).expect("f16");
        for (id, (row, orig)) in word.chunks(8).zip(original.chunks(8)).enumerate() {
            for (v, o) in row.iter().zip(orig) {
                let want = if keep.contains(&(id as u32)) { f16::from_f32(*o).to_f32() } else { 0.0 };
                assert_eq!(*v, want, "row {id}");
            }
        }

        // It loads (the loader takes f16) and computes what the original does on kept ids, to
        // f16 precision, and something else where a token was dropped.
        let (full, _) = load(&tensors).expect("a complete checkpoint loads");
        let (small, unused) =
            load_safetensors_bytes(tiny().init::<B>(&Default::default()), &packed, Path::new("packed"))
                .expect("the packed checkpoint loads");
        assert!(unused.is_empty(), "{unused:?}");
        let diff = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max);
        let kept = vec![vec![2, 5, 7, 3], vec![2, 7, 7, 5, 3]];
        let ((h_full, p_full), (h_small, p_small)) = (run(&full, &kept), run(&small, &kept));
        for k in 0..kept.len() {
            assert!(diff(&h_full[k], &h_small[k]) < 2e-2, "hidden states of {:?}", kept[k]);
            assert!(diff(&p_full[k], &p_small[k]) < 5e-3, "pooled embedding of {:?}", kept[k]);
        }
        let dropped = vec![vec![2, 5, 9, 3]];
        let (_, p_full) = run(&full, &dropped);
        let (_, p_small) = run(&small, &dropped);
        assert!(diff(&p_full[0], &p_small[0]) > 5e-2, "token 9 was dropped, so its sequence changes");
    }

    #[test]
    fn padding_does_not_change_a_sequence() {
        let (bert, _) = load(&checkpoint(&tiny())).expect("a complete checkpoint loads");
        let seqs = vec![vec![2, 5, 7, 3], vec![2, 9, 3], vec![2, 4, 4, 6, 8, 10, 11, 3]];
        let (hidden, pooled) = run(&bert, &seqs);
        for (k, seq) in seqs.iter().enumerate() {
            let (alone_hidden, alone_pooled) = run(&bert, std::slice::from_ref(seq));
            let diff = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max);
            assert!(diff(&hidden[k], &alone_hidden[0]) < 1e-5, "hidden states of sequence {k}");
            assert!(diff(&pooled[k], &alone_pooled[0]) < 1e-6, "pooled embedding of sequence {k}");
            let norm = pooled[k].iter().map(|x| x * x).sum::<f32>().sqrt();
            assert!((norm - 1.0).abs() < 1e-5, "unit length, got {norm}");
        }
        // Different sequences are told apart.
        assert!(pooled[0].iter().zip(&pooled[1]).any(|(a, b)| (a - b).abs() > 1e-3));
    }

    #[test]
    fn the_autodiff_backend_computes_the_same_states() {
        type A = burn::backend::Autodiff<Flex>;
        let tensors = checkpoint(&tiny());
        let (bert, _) = load(&tensors).expect("a complete checkpoint loads");
        let (tracked, _) =
            load_safetensors_bytes(tiny().init::<A>(&Default::default()), &serialize(&tensors), Path::new("tiny"))
                .expect("a complete checkpoint loads");
        let device = Default::default();
        let ids = TensorData::new(vec![2i64, 5, 7, 3], [1, 4]);
        let pad = TensorData::new(vec![false; 4], [1, 4]);
        let plain = bert.forward(
            Tensor::<B, 2, Int>::from_data(ids.clone(), &device),
            Tensor::<B, 2, Bool>::from_data(pad.clone(), &device),
        );
        let tracked = tracked
            .no_grad()
            .forward(Tensor::<A, 2, Int>::from_data(ids, &device), Tensor::<A, 2, Bool>::from_data(pad, &device));
        let (plain, tracked) =
            (values(plain), tracked.into_data().convert::<f32>().into_vec::<f32>().expect("f32 data"));
        // Not bit for bit: Autodiff<Flex> decomposes LayerNorm into mean, variance and division.
        let diff = plain.iter().zip(&tracked).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
        assert!(diff < 1e-5, "Flex and Autodiff<Flex> differ by {diff}");
    }
}
