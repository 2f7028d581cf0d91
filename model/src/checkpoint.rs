//! Checkpoints: a module's weights as safetensors, the config that built it beside them.
//!
//! [`save`] writes two files: `path` (safetensors, every float parameter under its module path,
//! such as `blocks.3.attn.qkv.weight`, in F32 or F16) and `path.with_extension("json")` (the
//! config, the kind of module, the precision, the parameter count and a free `meta` value such as
//! the step or the samples seen). To load, build the module from the saved config
//! ([`read_config`]), then [`load`] the weights into it: every parameter must find its key with
//! its shape, every key must find its parameter, and an error names the file and the key.
//!
//! Names come from burn's visitor hooks: the derived `Module::visit`/`map` of a struct call
//! `enter_module(field, "Struct:Type")` around each field, a `Vec` calls it with the index
//! (`"Vec"`), an enum with the variant; an `Option` adds nothing, so `bias: Option<Param<_>>` is
//! `…bias`. `visit_float`/`map_float` then receive the parameter; the path is the stack of names
//! entered so far. (burn 0.21's `visit_float_with_path` is never called by `Param`'s visit.)
//!
//! Lazy parameters: a module fresh from `init` holds its parameters uninitialized, and a clone of
//! it initializes its own random values independently. [`save`] reads every parameter with
//! `Param::val`, which initializes it in place, so the module passed in holds exactly the saved
//! values afterwards. [`load`] replaces parameters with `Param::transform_for_load`, which reads
//! the shape and device without initializing, and keeps the parameter's id and gradient setting.
//!
//! Only float parameters are stored; a module with int or bool parameters is refused.

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param};
use burn::tensor::backend::Backend;
use burn::tensor::{Bool, Int, Tensor, TensorData, f16};
use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// The version of the JSON beside the weights.
const FORMAT: u32 = 1;

/// How the weights are stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// Exact: training checkpoints, resume.
    F32,
    /// Half the size, about 3 significant digits: the weights the service ships.
    F16,
}

impl Precision {
    fn dtype(self) -> Dtype {
        match self {
            Precision::F32 => Dtype::F32,
            Precision::F16 => Dtype::F16,
        }
    }
}

/// The JSON beside a checkpoint's weights.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CheckpointInfo {
    /// Version of this layout.
    pub format: u32,
    /// The module's type, without generics (e.g. `endless_model::dit::Denoiser`).
    pub kind: String,
    /// How the weights are stored.
    pub precision: Precision,
    /// Number of scalar parameters.
    pub parameters: usize,
    /// Number of tensors in the safetensors file.
    pub tensors: usize,
    /// Free metadata from the caller (step, samples seen, …).
    pub meta: serde_json::Value,
    /// The config that built the module.
    pub config: serde_json::Value,
}

/// What can go wrong saving or loading a checkpoint.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("cannot write {path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },
    #[error("{path}: not a safetensors file: {source}")]
    Safetensors { path: PathBuf, source: safetensors::SafeTensorError },
    #[error("{path}: cannot write tensor {key:?}: {source}")]
    Serialize { path: PathBuf, key: String, source: safetensors::SafeTensorError },
    #[error("{path}: not a checkpoint config: {source}")]
    Json { path: PathBuf, source: serde_json::Error },
    #[error("{path}: the config does not serialize: {source}")]
    Config { path: PathBuf, source: serde_json::Error },
    #[error("{path}: parameter {key:?} cannot be stored: {reason}")]
    Unsupported { path: PathBuf, key: String, reason: String },
    #[error("{path}: two parameters are named {key:?}")]
    DuplicateKey { path: PathBuf, key: String },
    #[error("{path}: tensor {key:?} is missing")]
    MissingKey { path: PathBuf, key: String },
    #[error("{path}: tensor {key:?} has shape {found:?}, expected {expected:?}")]
    Shape { path: PathBuf, key: String, expected: Vec<usize>, found: Vec<usize> },
    #[error("{path}: tensor {key:?} is {dtype}, expected F32 or F16")]
    Dtype { path: PathBuf, key: String, dtype: String },
    #[error("{path}: tensors the module does not have: {keys:?}")]
    UnusedKeys { path: PathBuf, keys: Vec<String> },
}

/// The JSON path beside the weights at `path`.
pub fn config_path(path: &Path) -> PathBuf {
    path.with_extension("json")
}

/// Writes `module`'s float parameters to `path` (safetensors, in `precision`) and `config`,
/// `meta` and a description to [`config_path`]`(path)`. Each file is written to a temporary
/// name and renamed; the JSON comes last, so a checkpoint with its JSON is complete.
pub fn save<B: Backend, M: Module<B>>(
    module: &M,
    config: &impl Serialize,
    meta: &serde_json::Value,
    path: &Path,
    precision: Precision,
) -> Result<CheckpointInfo, CheckpointError> {
    let tensors = collect(module).map_err(|e| e.at(path))?;
    let mut names = BTreeSet::new();
    for t in &tensors {
        if !names.insert(t.name.as_str()) {
            return Err(CheckpointError::DuplicateKey { path: path.into(), key: t.name.clone() });
        }
    }
    let encoded: Vec<(String, Vec<usize>, Vec<u8>)> = tensors
        .iter()
        .map(|t| {
            let bytes = match precision {
                Precision::F32 => t.values.iter().flat_map(|v| v.to_le_bytes()).collect(),
                Precision::F16 => t.values.iter().flat_map(|v| f16::from_f32(*v).to_le_bytes()).collect(),
            };
            (t.name.clone(), t.shape.clone(), bytes)
        })
        .collect();
    let mut views = Vec::with_capacity(encoded.len());
    for (name, shape, bytes) in &encoded {
        let view = TensorView::new(precision.dtype(), shape.clone(), bytes)
            .map_err(|source| CheckpointError::Serialize { path: path.into(), key: name.clone(), source })?;
        views.push((name.as_str(), view));
    }
    let bytes = safetensors::serialize(views, None).map_err(|source| CheckpointError::Serialize {
        path: path.into(),
        key: String::new(),
        source,
    })?;
    let config =
        serde_json::to_value(config).map_err(|source| CheckpointError::Config { path: path.into(), source })?;
    let info = CheckpointInfo {
        format: FORMAT,
        kind: kind::<M>(),
        precision,
        parameters: tensors.iter().map(|t| t.values.len()).sum(),
        tensors: tensors.len(),
        meta: meta.clone(),
        config,
    };
    let json_path = config_path(path);
    let json = serde_json::to_vec_pretty(&info)
        .map_err(|source| CheckpointError::Config { path: json_path.clone(), source })?;
    write_atomic(path, &bytes)?;
    write_atomic(&json_path, &json)?;
    tracing::debug!(path = %path.display(), kind = %info.kind, ?precision, parameters = info.parameters, "checkpoint saved");
    Ok(info)
}

/// Reads the JSON beside the checkpoint at `path` (either file's path may be given).
pub fn read_info(path: &Path) -> Result<CheckpointInfo, CheckpointError> {
    let json_path = config_path(path);
    let bytes =
        std::fs::read(&json_path).map_err(|source| CheckpointError::Read { path: json_path.clone(), source })?;
    serde_json::from_slice(&bytes).map_err(|source| CheckpointError::Json { path: json_path, source })
}

/// The config saved beside the checkpoint at `path`: build the module from it, then [`load`].
pub fn read_config<C: DeserializeOwned>(path: &Path) -> Result<C, CheckpointError> {
    let info = read_info(path)?;
    serde_json::from_value(info.config).map_err(|source| CheckpointError::Json { path: config_path(path), source })
}

/// Loads the weights at `path` into `module`, which must have exactly the file's tensors with
/// their shapes. Tensors are read as F32 or F16 (widened to f32) and created on `device`; each
/// parameter then lands on its own device with its own id and gradient setting.
pub fn load<B: Backend, M: Module<B>>(module: M, path: &Path, device: &B::Device) -> Result<M, CheckpointError> {
    let bytes = std::fs::read(path).map_err(|source| CheckpointError::Read { path: path.into(), source })?;
    load_bytes(module, &bytes, path, device)
}

/// [`load`] from the safetensors file's bytes; `path` only names the source in errors.
pub fn load_bytes<B: Backend, M: Module<B>>(
    module: M,
    bytes: &[u8],
    path: &Path,
    device: &B::Device,
) -> Result<M, CheckpointError> {
    let file =
        SafeTensors::deserialize(bytes).map_err(|source| CheckpointError::Safetensors { path: path.into(), source })?;
    let mut loader = Loader { file: &file, path, device, names: Names::default(), used: BTreeSet::new(), error: None };
    let module = module.map(&mut loader);
    if let Some(error) = loader.error {
        return Err(error);
    }
    let mut unused: Vec<String> =
        file.names().into_iter().filter(|name| !loader.used.contains(*name)).map(String::from).collect();
    if !unused.is_empty() {
        unused.sort();
        return Err(CheckpointError::UnusedKeys { path: path.into(), keys: unused });
    }
    tracing::debug!(path = %path.display(), tensors = loader.used.len(), "checkpoint loaded");
    Ok(module)
}

/// The module's type name without generic arguments.
fn kind<M>() -> String {
    let name = std::any::type_name::<M>();
    name.split('<').next().unwrap_or(name).to_string()
}

fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), CheckpointError> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    std::fs::write(&tmp, bytes).map_err(|source| CheckpointError::Write { path: tmp.clone(), source })?;
    std::fs::rename(&tmp, path).map_err(|source| CheckpointError::Write { path: path.into(), source })
}

/// The stack of module names entered so far.
#[derive(Default)]
struct Names(Vec<String>);

impl Names {
    fn enter(&mut self, name: &str) {
        self.0.push(name.to_string());
    }

    fn exit(&mut self) {
        self.0.pop();
    }

    fn key(&self) -> String {
        self.0.join(".")
    }
}

/// One float parameter read from a module.
struct Stored {
    name: String,
    shape: Vec<usize>,
    values: Vec<f32>,
}

/// An error found while walking a module, before the file is known.
struct Unsupported {
    key: String,
    reason: String,
}

impl Unsupported {
    fn at(self, path: &Path) -> CheckpointError {
        CheckpointError::Unsupported { path: path.into(), key: self.key, reason: self.reason }
    }
}

/// Every float parameter of `module` with its name, in visiting order. Initializes lazy
/// parameters in place.
fn collect<B: Backend, M: Module<B>>(module: &M) -> Result<Vec<Stored>, Unsupported> {
    let mut collector = Collector { names: Names::default(), tensors: Vec::new(), error: None };
    module.visit(&mut collector);
    match collector.error {
        Some(error) => Err(error),
        None => Ok(collector.tensors),
    }
}

struct Collector {
    names: Names,
    tensors: Vec<Stored>,
    error: Option<Unsupported>,
}

impl Collector {
    fn refuse(&mut self, what: &str) {
        if self.error.is_none() {
            self.error =
                Some(Unsupported { key: self.names.key(), reason: format!("{what} parameters are not stored") });
        }
    }
}

impl<B: Backend> ModuleVisitor<B> for Collector {
    fn enter_module(&mut self, name: &str, _container_type: &str) {
        self.names.enter(name);
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.names.exit();
    }

    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        let data = param.val().into_data().convert::<f32>();
        let name = self.names.key();
        match data.to_vec::<f32>() {
            Ok(values) => self.tensors.push(Stored { name, shape: data.shape.to_vec(), values }),
            Err(e) => {
                if self.error.is_none() {
                    self.error = Some(Unsupported { key: name, reason: format!("{e:?}") });
                }
            }
        }
    }

    fn visit_int<const D: usize>(&mut self, _param: &Param<Tensor<B, D, Int>>) {
        self.refuse("int");
    }

    fn visit_bool<const D: usize>(&mut self, _param: &Param<Tensor<B, D, Bool>>) {
        self.refuse("bool");
    }
}

/// Replaces every float parameter by the file's tensor of the same name; keeps the first error.
struct Loader<'a, B: Backend> {
    file: &'a SafeTensors<'a>,
    path: &'a Path,
    device: &'a B::Device,
    names: Names,
    used: BTreeSet<String>,
    error: Option<CheckpointError>,
}

impl<B: Backend> Loader<'_, B> {
    /// The values of tensor `key`, which must have `shape`.
    fn read(&self, key: &str, shape: &[usize]) -> Result<Vec<f32>, CheckpointError> {
        let view = self
            .file
            .tensor(key)
            .map_err(|_| CheckpointError::MissingKey { path: self.path.into(), key: key.to_string() })?;
        if view.shape() != shape {
            return Err(CheckpointError::Shape {
                path: self.path.into(),
                key: key.to_string(),
                expected: shape.to_vec(),
                found: view.shape().to_vec(),
            });
        }
        match view.dtype() {
            Dtype::F32 => {
                Ok(view.data().chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect())
            }
            Dtype::F16 => Ok(view.data().chunks_exact(2).map(|b| f16::from_le_bytes([b[0], b[1]]).to_f32()).collect()),
            dtype => Err(CheckpointError::Dtype {
                path: self.path.into(),
                key: key.to_string(),
                dtype: format!("{dtype:?}"),
            }),
        }
    }
}

impl<B: Backend> ModuleMapper<B> for Loader<'_, B> {
    fn enter_module(&mut self, name: &str, _container_type: &str) {
        self.names.enter(name);
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.names.exit();
    }

    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        if self.error.is_some() {
            return param;
        }
        let key = self.names.key();
        let shape = param.lazy_shape().to_vec();
        if !self.used.insert(key.clone()) {
            self.error = Some(CheckpointError::DuplicateKey { path: self.path.into(), key });
            return param;
        }
        match self.read(&key, &shape) {
            Ok(values) => {
                let tensor = Tensor::<B, D>::from_data(TensorData::new(values, shape), self.device);
                let id = param.id;
                param.transform_for_load(tensor, id)
            }
            Err(error) => {
                self.error = Some(error);
                param
            }
        }
    }

    fn map_int<const D: usize>(&mut self, param: Param<Tensor<B, D, Int>>) -> Param<Tensor<B, D, Int>> {
        if self.error.is_none() {
            self.error = Some(CheckpointError::Unsupported {
                path: self.path.into(),
                key: self.names.key(),
                reason: "int parameters are not stored".into(),
            });
        }
        param
    }

    fn map_bool<const D: usize>(&mut self, param: Param<Tensor<B, D, Bool>>) -> Param<Tensor<B, D, Bool>> {
        if self.error.is_none() {
            self.error = Some(CheckpointError::Unsupported {
                path: self.path.into(),
                key: self.names.key(),
                reason: "bool parameters are not stored".into(),
            });
        }
        param
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::{Autodiff, Flex};
    use burn::nn::conv::{Conv2d, Conv2dConfig};
    use burn::nn::{LayerNorm, LayerNormConfig, Linear, LinearConfig};
    use burn::tensor::Distribution;
    use std::collections::BTreeMap;
    use std::time::Instant;

    type B = Flex;

    #[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
    struct NetConfig {
        width: usize,
        depth: usize,
        head: bool,
    }

    #[derive(Module, Debug)]
    struct Block<B: Backend> {
        up: Linear<B>,
        down: Linear<B>,
    }

    #[derive(Module, Debug)]
    struct Net<B: Backend> {
        conv: Conv2d<B>,
        input: Linear<B>,
        blocks: Vec<Block<B>>,
        norm: LayerNorm<B>,
        head: Option<Linear<B>>,
    }

    impl NetConfig {
        fn new(width: usize) -> Self {
            NetConfig { width, depth: 3, head: false }
        }

        fn init<B: Backend>(&self, device: &B::Device) -> Net<B> {
            let w = self.width;
            Net {
                conv: Conv2dConfig::new([3, 4], [3, 3]).init(device),
                input: LinearConfig::new(4, w).init(device),
                blocks: (0..self.depth)
                    .map(|_| Block {
                        up: LinearConfig::new(w, 2 * w).init(device),
                        down: LinearConfig::new(2 * w, w).init(device),
                    })
                    .collect(),
                norm: LayerNormConfig::new(w).init(device),
                head: self.head.then(|| LinearConfig::new(w, 3).init(device)),
            }
        }
    }

    impl<B: Backend> Net<B> {
        /// `x`: [batch, 3, h, w] → [batch, h', w', width].
        fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
            let x = self.conv.forward(x).swap_dims(1, 3);
            let mut x = self.input.forward(x);
            for block in &self.blocks {
                x = x.clone() + block.down.forward(block.up.forward(x).tanh());
            }
            let x = self.norm.forward(x);
            match &self.head {
                Some(head) => head.forward(x),
                None => x,
            }
        }
    }

    /// A fresh directory for one test's files.
    fn dir(test: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("endless-checkpoint-{}-{test}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn params<B: Backend, M: Module<B>>(module: &M) -> BTreeMap<String, (Vec<usize>, Vec<f32>)> {
        let tensors = collect(module).unwrap_or_else(|e| panic!("{}: {}", e.key, e.reason));
        tensors.into_iter().map(|t| (t.name, (t.shape, t.values))).collect()
    }

    fn assert_bit_exact(a: &BTreeMap<String, (Vec<usize>, Vec<f32>)>, b: &BTreeMap<String, (Vec<usize>, Vec<f32>)>) {
        assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>());
        for (key, (shape, values)) in a {
            let (shape_b, values_b) = &b[key];
            assert_eq!(shape, shape_b, "{key}");
            let bits: Vec<u32> = values.iter().map(|v| v.to_bits()).collect();
            let bits_b: Vec<u32> = values_b.iter().map(|v| v.to_bits()).collect();
            assert!(bits == bits_b, "{key} differs");
        }
    }

    fn input<Bk: Backend>(device: &Bk::Device) -> Tensor<Bk, 4> {
        Tensor::random([2, 3, 6, 5], Distribution::Normal(0.0, 1.0), device)
    }

    #[test]
    fn names_follow_the_module_path() {
        let device = Default::default();
        let config = NetConfig { head: true, ..NetConfig::new(8) };
        let names: Vec<String> = params(&config.init::<B>(&device)).into_keys().collect();
        for name in
            ["conv.weight", "conv.bias", "input.weight", "blocks.0.up.weight", "blocks.2.down.bias", "norm.gamma"]
        {
            assert!(names.contains(&name.to_string()), "{name} not in {names:?}");
        }
        assert!(names.contains(&"head.weight".to_string()), "{names:?}");
        assert_eq!(names.len(), 2 + 2 + 3 * 4 + 2 + 2, "{names:?}");
    }

    #[test]
    fn f32_round_trip_is_bit_exact() {
        let start = Instant::now();
        let device = Default::default();
        let dir = dir("f32");
        let path = dir.join("net.safetensors");
        let config = NetConfig::new(16);
        let net = config.init::<B>(&device);
        let x = input(&device);
        let out = net.forward(x.clone());
        let meta = serde_json::json!({ "step": 1200, "samples": 38400 });
        let info = save(&net, &config, &meta, &path, Precision::F32).unwrap();
        assert_eq!(info.parameters, net.num_params());

        let fresh = config.init::<B>(&device);
        assert!(params(&fresh) != params(&net), "two inits drew the same weights");
        let loaded = load(fresh, &path, &device).unwrap();
        assert_bit_exact(&params(&net), &params(&loaded));
        let out_loaded = loaded.forward(x);
        assert_eq!(out.into_data().to_vec::<f32>().unwrap(), out_loaded.into_data().to_vec::<f32>().unwrap());

        let read: NetConfig = read_config(&path).unwrap();
        assert_eq!(read, config);
        let info_read = read_info(&path).unwrap();
        assert_eq!(info_read, info);
        assert_eq!(info_read.meta["step"], 1200);
        assert_eq!(info_read.kind, "endless_model::checkpoint::tests::Net");
        assert_eq!(info_read.precision, Precision::F32);
        std::fs::remove_dir_all(&dir).unwrap();
        eprintln!("f32 round trip: {:?}", start.elapsed());
    }

    /// FEASIBILITY.md: a module that was never used must save the weights it then holds.
    #[test]
    fn never_used_module_round_trips() {
        let device = Default::default();
        let dir = dir("unused");
        let path = dir.join("net.safetensors");
        let config = NetConfig::new(16);
        let net = config.init::<B>(&device);
        save(&net, &config, &serde_json::Value::Null, &path, Precision::F32).unwrap();
        let loaded = load(config.init::<B>(&device), &path, &device).unwrap();
        assert_bit_exact(&params(&net), &params(&loaded));
        let x = input(&device);
        let out = net.forward(x.clone()).into_data().to_vec::<f32>().unwrap();
        let out_loaded = loaded.forward(x).into_data().to_vec::<f32>().unwrap();
        assert_eq!(out, out_loaded);

        // Saved twice without use in between: the same file.
        let again = dir.join("again.safetensors");
        let net2 = config.init::<B>(&device);
        save(&net2, &config, &serde_json::Value::Null, &again, Precision::F32).unwrap();
        let first = std::fs::read(&again).unwrap();
        save(&net2, &config, &serde_json::Value::Null, &again, Precision::F32).unwrap();
        assert!(first == std::fs::read(&again).unwrap(), "saving an unused module twice wrote different weights");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn f16_round_trip_is_within_half_precision_and_half_the_size() {
        let device = Default::default();
        let dir = dir("f16");
        let config = NetConfig::new(64);
        let net = config.init::<B>(&device);
        let path32 = dir.join("net32.safetensors");
        let path16 = dir.join("net16.safetensors");
        save(&net, &config, &serde_json::Value::Null, &path32, Precision::F32).unwrap();
        let info = save(&net, &config, &serde_json::Value::Null, &path16, Precision::F16).unwrap();
        assert_eq!(info.precision, Precision::F16);
        let loaded = load(config.init::<B>(&device), &path16, &device).unwrap();
        let (a, b) = (params(&net), params(&loaded));
        assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>());
        for (key, (_, values)) in &a {
            for (x, y) in values.iter().zip(&b[key].1) {
                let tolerance = x.abs() * 2f32.powi(-11) + 2f32.powi(-24);
                assert!((x - y).abs() <= tolerance, "{key}: {x} became {y}");
            }
        }
        let size32 = std::fs::metadata(&path32).unwrap().len() as f64;
        let size16 = std::fs::metadata(&path16).unwrap().len() as f64;
        let ratio = size16 / size32;
        assert!((0.5..0.55).contains(&ratio), "f16 file is {ratio} of the f32 file");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn wrong_shape_names_the_key() {
        let device = Default::default();
        let dir = dir("shape");
        let path = dir.join("net.safetensors");
        let config = NetConfig::new(16);
        save(&config.init::<B>(&device), &config, &serde_json::Value::Null, &path, Precision::F16).unwrap();
        let err = load(NetConfig::new(8).init::<B>(&device), &path, &device).unwrap_err();
        assert!(
            matches!(&err, CheckpointError::Shape { key, expected, found, .. }
                if key == "input.weight" && expected == &[4, 8] && found == &[4, 16]),
            "{err}"
        );
        let message = err.to_string();
        assert!(message.contains("\"input.weight\"") && message.contains("net.safetensors"), "{message}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn missing_and_unused_keys_are_errors() {
        let device = Default::default();
        let dir = dir("keys");
        let plain = dir.join("plain.safetensors");
        let headed = dir.join("headed.safetensors");
        let config = NetConfig::new(8);
        let with_head = NetConfig { head: true, ..config.clone() };
        save(&config.init::<B>(&device), &config, &serde_json::Value::Null, &plain, Precision::F32).unwrap();
        save(&with_head.init::<B>(&device), &with_head, &serde_json::Value::Null, &headed, Precision::F32).unwrap();

        let err = load(with_head.init::<B>(&device), &plain, &device).unwrap_err();
        assert!(matches!(&err, CheckpointError::MissingKey { key, .. } if key == "head.weight"), "{err}");
        assert!(err.to_string().contains("\"head.weight\" is missing"), "{err}");

        let err = load(config.init::<B>(&device), &headed, &device).unwrap_err();
        assert!(
            matches!(&err, CheckpointError::UnusedKeys { keys, .. } if keys == &["head.bias", "head.weight"]),
            "{err}"
        );

        let err = load(config.init::<B>(&device), &dir.join("absent.safetensors"), &device).unwrap_err();
        assert!(matches!(err, CheckpointError::Read { .. }), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn autodiff_module_loads_trainable() {
        type A = Autodiff<Flex>;
        let device = Default::default();
        let dir = dir("autodiff");
        let path = dir.join("net.safetensors");
        let config = NetConfig::new(8);
        let net = config.init::<A>(&device);
        save(&net, &config, &serde_json::Value::Null, &path, Precision::F32).unwrap();
        let loaded = load(config.init::<A>(&device), &path, &device).unwrap();
        assert_bit_exact(&params(&net), &params(&loaded));
        assert!(loaded.input.weight.val().is_require_grad());
        // Loads into the inference backend as well.
        let inner = load(config.init::<B>(&device), &path, &device).unwrap();
        assert_bit_exact(&params(&net), &params(&inner));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// The repo's own models: every parameter named, bit-exact back, the config read back.
    #[test]
    fn repo_models_round_trip() {
        let start = Instant::now();
        let device = Default::default();
        let dir = dir("repo");
        let dit_path = dir.join("dit.safetensors");
        let dit_config = crate::dit::DenoiserConfig::tiny();
        let dit = dit_config.init::<B>(&device);
        save(&dit, &dit_config, &serde_json::Value::Null, &dit_path, Precision::F32).unwrap();
        let read: crate::dit::DenoiserConfig = read_config(&dit_path).unwrap();
        assert_eq!(serde_json::to_value(&read).unwrap(), serde_json::to_value(&dit_config).unwrap());
        let loaded = load(read.init::<B>(&device), &dit_path, &device).unwrap();
        assert_bit_exact(&params(&dit), &params(&loaded));

        let vae_path = dir.join("vae.safetensors");
        let vae_config = crate::vae::VaeConfig::tiny();
        let vae = vae_config.init::<B>(&device);
        save(&vae, &vae_config, &serde_json::Value::Null, &vae_path, Precision::F16).unwrap();
        let read: crate::vae::VaeConfig = read_config(&vae_path).unwrap();
        assert_eq!(read, vae_config);
        let loaded = load(read.init::<B>(&device), &vae_path, &device).unwrap();
        assert_eq!(params(&vae).keys().collect::<Vec<_>>(), params(&loaded).keys().collect::<Vec<_>>());
        std::fs::remove_dir_all(&dir).unwrap();
        eprintln!("repo models: {:?}", start.elapsed());
    }
}
