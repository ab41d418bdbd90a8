//! The model: a ResNet18 encoder and a CosFace head, with safetensors save and load under
//! torchvision's tensor names.

pub mod resnet;
pub mod torchvision;

use std::collections::HashMap;
use std::path::Path;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::autograd::{Graph, Var};
use crate::backend::{BackendHandle, CosFaceParams};
use crate::error::{Error, Result};
use crate::tensor::Tensor;
pub use resnet::{ResNet18, EMBEDDING_DIM};
pub use torchvision::TorchvisionWeights;

/// The ImageNet channel means and standard deviations torchvision's weights expect.
pub const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
pub const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];

/// What a tensor is, for the optimiser and for the file layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TensorKind {
    /// A trainable convolution weight; stored `[Co, kh, kw, Ci]`, saved as torchvision's
    /// `[Co, Ci, kh, kw]`.
    ConvWeight,
    /// Any other trainable tensor.
    Param,
    /// A running statistic: saved, never trained.
    Buffer,
}

/// Everything about a model that is not a weight.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelConfig {
    pub label_names: Vec<String>,
    /// Per-label sigmoid (true) or one softmax over the labels (false).
    pub multilabel: bool,
    pub image_size: usize,
    pub margin: f32,
    pub scale: f32,
    pub mean: [f32; 3],
    pub std: [f32; 3],
}

impl ModelConfig {
    pub fn cosface(&self) -> CosFaceParams {
        CosFaceParams {
            margin: self.margin,
            scale: self.scale,
            multilabel: self.multilabel,
        }
    }
}

/// The trainable tensors' graph variables of one forward pass, by slot.
pub struct ParamSlots(Vec<Option<Var>>);

impl ParamSlots {
    /// `n` empty slots, one per trainable tensor of the network a forward pass will fill
    /// (`encoder.num_slots` for [`ResNet18::forward`] alone).
    pub fn new(n: usize) -> Self {
        ParamSlots(vec![None; n])
    }

    pub(crate) fn set<const K: usize>(&mut self, first: usize, vars: [Var; K]) {
        for (i, v) in vars.into_iter().enumerate() {
            self.0[first + i] = Some(v);
        }
    }

    /// The variables in slot order (the order of [`Model::visit`]'s trainable tensors).
    pub fn vars(&self) -> impl Iterator<Item = Option<&Var>> {
        self.0.iter().map(Option::as_ref)
    }
}

/// The outputs of one forward pass.
pub struct Forward {
    /// Logits with the margin applied when targets were given (the training loss's input).
    pub logits: Var,
    /// `[N, 512]` encoder outputs.
    pub embeddings: Tensor,
    pub slots: ParamSlots,
}

/// A ResNet18 encoder with a CosFace head.
pub struct Model {
    pub config: ModelConfig,
    pub encoder: ResNet18,
    /// `[L, 512]` class weights of the normalised-linear head.
    pub head: Tensor,
    backend: BackendHandle,
}

/// A standard normal sample (Box-Muller), so initialisation needs no extra crate.
pub(crate) fn normal(rng: &mut StdRng) -> f32 {
    let u1: f32 = rng.random::<f32>().max(f32::MIN_POSITIVE);
    let u2: f32 = rng.random();
    (-2.0 * u1.ln()).sqrt() * (std::f32::consts::TAU * u2).cos()
}

impl Model {
    /// A freshly initialised model; the same seed gives the same weights on every backend.
    pub fn new(backend: BackendHandle, config: ModelConfig, seed: u64) -> Result<Self> {
        if config.label_names.is_empty() {
            return Err(Error::InvalidArgument(
                "a model needs at least one label".into(),
            ));
        }
        let mut rng = StdRng::seed_from_u64(seed);
        let encoder = ResNet18::new(&backend, &mut rng)?;
        let l = config.label_names.len();
        let std = (2.0 / (EMBEDDING_DIM + l) as f32).sqrt();
        let w: Vec<f32> = (0..l * EMBEDDING_DIM)
            .map(|_| std * normal(&mut rng))
            .collect();
        let head = backend.from_host(&w, &[l, EMBEDDING_DIM])?;
        Ok(Model {
            config,
            encoder,
            head,
            backend,
        })
    }

    pub fn backend(&self) -> &BackendHandle {
        &self.backend
    }

    pub fn num_labels(&self) -> usize {
        self.config.label_names.len()
    }

    /// Runs images `[N, H, W, 3]` (already normalised) through encoder and head. With targets
    /// the logits carry the margin; the graph records for training if it was made so.
    pub fn forward(
        &mut self,
        g: &mut Graph,
        images: Tensor,
        targets: Option<&Tensor>,
    ) -> Result<Forward> {
        let mut slots = ParamSlots::new(self.encoder.num_slots + 1);
        let x = g.constant(images);
        let emb = self.encoder.forward(g, &x, &mut slots)?;
        let w = g.param(&self.head);
        let logits = g.cosface(&emb, &w, targets, self.config.cosface())?;
        slots.set(self.encoder.num_slots, [w]);
        Ok(Forward {
            logits,
            embeddings: emb.value,
            slots,
        })
    }

    /// Visits every tensor with its name; trainable ones come in slot order.
    pub fn visit(&mut self, f: &mut dyn FnMut(&str, TensorKind, &mut Tensor)) {
        self.encoder.visit(f);
        f("cosface.weight", TensorKind::Param, &mut self.head);
    }

    /// Trainable parameters of the encoder alone (11,176,512 for ResNet18 without `fc`).
    pub fn encoder_parameters(&mut self) -> usize {
        let mut n = 0;
        self.encoder.visit(&mut |_, kind, t| {
            if kind != TensorKind::Buffer {
                n += t.len();
            }
        });
        n
    }

    /// Saves the weights as safetensors under torchvision's names, with the configuration in
    /// the file's metadata. The file is written atomically. It loads into torchvision's
    /// `resnet18().load_state_dict(..., strict=False)` with `fc.weight` and `fc.bias` missing
    /// and `cosface.weight` (the head, `[labels, 512]`) unexpected, and nothing else.
    pub fn save(&mut self, path: &Path) -> Result<()> {
        let mut tensors: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
        let mut failure = None;
        self.visit(&mut |name, kind, t| {
            let result = t.to_vec().map(|v| to_file_layout(kind, t.shape(), v));
            match result {
                Ok((shape, data)) => tensors.push((
                    name.to_string(),
                    shape,
                    bytemuck::cast_slice(&data).to_vec(),
                )),
                Err(e) => failure = Some(e),
            }
        });
        if let Some(e) = failure {
            return Err(e);
        }
        // A deterministic header (sorted metadata), so equal models give equal files.
        let entries: Vec<crate::tensor_file::Entry> = tensors
            .iter()
            .map(|(name, shape, bytes)| crate::tensor_file::Entry { name, shape, bytes })
            .collect();
        let metadata = self.config_metadata().into_iter().collect();
        let bytes =
            crate::tensor_file::to_bytes(&entries, &metadata).map_err(|e| Error::Format {
                path: path.into(),
                detail: e.to_string(),
            })?;
        crate::io::write_atomic(path, &bytes)
    }

    fn config_metadata(&self) -> HashMap<String, String> {
        let c = &self.config;
        let join = |v: &[f32]| {
            v.iter()
                .map(|x| x.to_string())
                .collect::<Vec<_>>()
                .join(",")
        };
        HashMap::from([
            (
                "format".to_string(),
                "labelwise-resnet18-cosface".to_string(),
            ),
            ("label_names".to_string(), c.label_names.join("\n")),
            ("multilabel".to_string(), c.multilabel.to_string()),
            ("image_size".to_string(), c.image_size.to_string()),
            ("margin".to_string(), c.margin.to_string()),
            ("scale".to_string(), c.scale.to_string()),
            ("mean".to_string(), join(&c.mean)),
            ("std".to_string(), join(&c.std)),
        ])
    }

    /// Loads a model saved by [`Model::save`] onto `backend`.
    ///
    /// # Errors
    /// [`Error::Io`] when the file cannot be read; otherwise as [`Model::load_bytes`].
    pub fn load(path: &Path, backend: BackendHandle) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        Self::load_bytes(&bytes, path, backend)
    }

    /// Loads a model from the bytes of a safetensors file saved by [`Model::save`]; `path` only
    /// names the file in errors.
    ///
    /// The configuration in the metadata and every tensor's name, dtype and shape are checked
    /// before the model is built, so a broken file costs little more than reading it, and one
    /// that lies about its label count cannot make us allocate a head larger than the file.
    ///
    /// # Errors
    /// [`Error::Format`] naming `path` for a file that is not safetensors (truncated, a header
    /// length or data offsets past the end, a tensor whose byte length disagrees with its shape
    /// and dtype), lacks or has unusable configuration metadata, or whose tensors are missing,
    /// not F32 or mis-shaped (naming the tensor).
    pub fn load_bytes(bytes: &[u8], path: &Path, backend: BackendHandle) -> Result<Self> {
        let format = |detail: String| Error::Format {
            path: path.into(),
            detail,
        };
        let (_, meta) = safetensors::SafeTensors::read_metadata(bytes)
            .map_err(|e| format(describe_safetensors_error(&e, bytes)))?;
        let info = meta.metadata().clone().unwrap_or_default();
        let get = |key: &str| {
            info.get(key)
                .cloned()
                .ok_or_else(|| format(format!("metadata lacks {key:?}")))
        };
        let parse_f32 = |key: &str| -> Result<f32> {
            get(key)?
                .parse()
                .map_err(|_| format(format!("metadata {key:?} is not a number")))
        };
        let triple = |key: &str| -> Result<[f32; 3]> {
            let v: Vec<f32> = get(key)?
                .split(',')
                .filter_map(|s| s.parse().ok())
                .collect();
            v.try_into()
                .map_err(|_| format(format!("metadata {key:?} is not three numbers")))
        };
        let config = ModelConfig {
            label_names: get("label_names")?
                .split('\n')
                .map(str::to_string)
                .collect(),
            multilabel: get("multilabel")? == "true",
            image_size: get("image_size")?
                .parse()
                .map_err(|_| format("metadata \"image_size\" is not an integer".into()))?,
            margin: parse_f32("margin")?,
            scale: parse_f32("scale")?,
            mean: triple("mean")?,
            std: triple("std")?,
        };
        check_config(&config).map_err(format)?;
        let file = safetensors::SafeTensors::deserialize(bytes)
            .map_err(|e| format(describe_safetensors_error(&e, bytes)))?;
        let head_shape = [config.label_names.len(), EMBEDDING_DIM];
        match file.tensor("cosface.weight") {
            Ok(view) if view.dtype() == safetensors::Dtype::F32 && view.shape() == head_shape => {}
            Ok(view) => {
                return Err(format(format!(
                    "tensor \"cosface.weight\" is {:?} {:?}, expected F32 {head_shape:?} for the \
                     {} labels in the metadata",
                    view.dtype(),
                    view.shape(),
                    head_shape[0]
                )))
            }
            Err(_) => return Err(format("tensor \"cosface.weight\" is missing".into())),
        }
        // Every encoder tensor is checked before a model is built: building one costs more
        // than reading a broken file should.
        for (name, want_shape) in encoder_file_layout()? {
            let view = file
                .tensor(name)
                .map_err(|_| format(format!("tensor {name:?} is missing")))?;
            if view.dtype() != safetensors::Dtype::F32 || view.shape() != want_shape.as_slice() {
                return Err(format(format!(
                    "tensor {name:?} is {:?} {:?}, expected F32 {want_shape:?}",
                    view.dtype(),
                    view.shape()
                )));
            }
        }
        let mut model = Model::new(backend.clone(), config, 0)?;
        model.load_tensors(&file, path)?;
        Ok(model)
    }

    /// Replaces every tensor by the file's tensor of the same name; a missing or mis-shaped
    /// tensor is an error naming it.
    fn load_tensors(&mut self, file: &safetensors::SafeTensors, path: &Path) -> Result<()> {
        let backend = self.backend.clone();
        let mut failure = None;
        self.visit(&mut |name, kind, t| {
            if failure.is_some() {
                return;
            }
            let result = (|| {
                let view = file.tensor(name).map_err(|_| Error::Format {
                    path: path.into(),
                    detail: format!("tensor {name:?} is missing"),
                })?;
                let (want_shape, _) = to_file_layout(kind, t.shape(), Vec::new());
                if view.dtype() != safetensors::Dtype::F32 || view.shape() != want_shape {
                    return Err(Error::Format {
                        path: path.into(),
                        detail: format!(
                            "tensor {name:?} is {:?} {:?}, expected F32 {want_shape:?}",
                            view.dtype(),
                            view.shape()
                        ),
                    });
                }
                let data: Vec<f32> = view
                    .data()
                    .chunks_exact(4)
                    .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                    .collect();
                check_finite(path, name, &data)?;
                let data = from_file_layout(kind, t.shape(), data);
                *t = backend.from_host(&data, t.shape())?;
                Ok(())
            })();
            if let Err(e) = result {
                failure = Some(e);
            }
        });
        failure.map_or(Ok(()), Err)
    }
}

/// The encoder's tensors as a saved file holds them: names and file-layout shapes, in
/// [`Model::visit`] order. They do not depend on the configuration, so they are taken once from
/// an encoder built on the CPU.
fn encoder_file_layout() -> Result<&'static [(String, Vec<usize>)]> {
    static LAYOUT: std::sync::OnceLock<Vec<(String, Vec<usize>)>> = std::sync::OnceLock::new();
    if let Some(layout) = LAYOUT.get() {
        return Ok(layout);
    }
    let backend: BackendHandle = std::sync::Arc::new(crate::backend::cpu::CpuBackend);
    let mut encoder = ResNet18::new(&backend, &mut StdRng::seed_from_u64(0))?;
    let mut layout = Vec::new();
    encoder.visit(&mut |name, kind, t| {
        let (shape, _) = to_file_layout(kind, t.shape(), Vec::new());
        layout.push((name.to_string(), shape));
    });
    Ok(LAYOUT.get_or_init(|| layout))
}

/// What is wrong with a file the safetensors reader refused, in terms of the file.
fn describe_safetensors_error(error: &safetensors::SafeTensorError, bytes: &[u8]) -> String {
    use safetensors::SafeTensorError as E;
    let header_len = bytes
        .get(..8)
        .map(|b| u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]));
    let size = bytes.len();
    match (error, header_len) {
        (E::HeaderTooSmall, _) => {
            format!("not a safetensors file: {size} bytes, too short for the 8-byte header length")
        }
        (E::HeaderTooLarge | E::InvalidHeaderLength, Some(n)) => format!(
            "not a safetensors file, or truncated: its header length of {n} bytes does not fit \
             in the file's {size} bytes (safetensors allows at most 100 MB)"
        ),
        (E::InvalidHeader(_) | E::InvalidHeaderDeserialization(_), _) => {
            format!("not a safetensors file: its header is not JSON: {error}")
        }
        (E::TensorInvalidInfo | E::ValidationOverflow | E::MisalignedSlice, _) => format!(
            "invalid safetensors header: a tensor's byte length disagrees with its shape and \
             dtype ({error})"
        ),
        (E::InvalidOffset(name), _) => format!(
            "invalid safetensors header: tensor {name:?}'s data offsets do not follow the \
             previous tensor's"
        ),
        (E::MetadataIncompleteBuffer, _) => format!(
            "truncated or padded: the header's tensors do not cover the file's {size} bytes \
             exactly"
        ),
        _ => format!("invalid safetensors file: {error}"),
    }
}

/// What a loaded configuration must satisfy to be usable: labels with distinct non-empty names,
/// an image size the data loader accepts, finite CosFace parameters with a positive scale, and
/// a finite normalisation with positive deviations.
fn check_config(c: &ModelConfig) -> std::result::Result<(), String> {
    let mut seen = std::collections::HashSet::new();
    if let Some(bad) = c
        .label_names
        .iter()
        .find(|n| n.is_empty() || !seen.insert(n.as_str()))
    {
        return Err(format!("metadata label name {bad:?} is empty or repeated"));
    }
    if !(1..=u16::MAX as usize).contains(&c.image_size) {
        return Err(format!(
            "metadata image size {} is not in 1..=65535",
            c.image_size
        ));
    }
    if !(c.margin.is_finite() && c.scale.is_finite() && c.scale > 0.0) {
        return Err(format!(
            "metadata CosFace margin {} and scale {} must be finite, the scale positive",
            c.margin, c.scale
        ));
    }
    let finite = |v: &[f32; 3]| v.iter().all(|x| x.is_finite());
    if !(finite(&c.mean) && finite(&c.std) && c.std.iter().all(|&x| x > 0.0)) {
        return Err(format!(
            "metadata normalisation mean {:?} std {:?} must be finite, std positive",
            c.mean, c.std
        ));
    }
    Ok(())
}

/// Refuses a stored tensor holding NaN or infinity, naming it: such a weight would not fail
/// later (ReLU and max pool drop the NaN, and every prediction quietly becomes 0.5).
pub(crate) fn check_finite(path: &Path, name: &str, data: &[f32]) -> Result<()> {
    let bad = data.iter().filter(|v| !v.is_finite()).count();
    if bad == 0 {
        return Ok(());
    }
    Err(Error::Format {
        path: path.into(),
        detail: format!(
            "tensor {name:?} has {bad} of {} elements NaN or infinite",
            data.len()
        ),
    })
}

/// Our layout to the file's: convolution weights `[Co, kh, kw, Ci]` -> `[Co, Ci, kh, kw]`.
fn to_file_layout(kind: TensorKind, shape: &[usize], data: Vec<f32>) -> (Vec<usize>, Vec<f32>) {
    if kind != TensorKind::ConvWeight {
        return (shape.to_vec(), data);
    }
    let [co, kh, kw, ci] = [shape[0], shape[1], shape[2], shape[3]];
    if data.is_empty() {
        return (vec![co, ci, kh, kw], data);
    }
    let mut out = vec![0.0; data.len()];
    for o in 0..co {
        for y in 0..kh {
            for x in 0..kw {
                for i in 0..ci {
                    out[((o * ci + i) * kh + y) * kw + x] = data[((o * kh + y) * kw + x) * ci + i];
                }
            }
        }
    }
    (vec![co, ci, kh, kw], out)
}

/// The file's layout to ours; `shape` is ours.
fn from_file_layout(kind: TensorKind, shape: &[usize], data: Vec<f32>) -> Vec<f32> {
    if kind != TensorKind::ConvWeight {
        return data;
    }
    let [co, kh, kw, ci] = [shape[0], shape[1], shape[2], shape[3]];
    let mut out = vec![0.0; data.len()];
    for o in 0..co {
        for y in 0..kh {
            for x in 0..kw {
                for i in 0..ci {
                    out[((o * kh + y) * kw + x) * ci + i] = data[((o * ci + i) * kh + y) * kw + x];
                }
            }
        }
    }
    out
}

/// A host copy of every tensor of a model, to restore later (a fine-tuning starting point).
#[derive(Clone)]
pub struct Snapshot(Vec<(Vec<usize>, Vec<f32>)>);

impl Model {
    /// Copies every tensor (weights and running statistics) to the host.
    pub fn snapshot(&mut self) -> Result<Snapshot> {
        let mut out = Vec::new();
        let mut failure = None;
        self.visit(&mut |_, _, t| match t.to_vec() {
            Ok(v) => out.push((t.shape().to_vec(), v)),
            Err(e) => failure = Some(e),
        });
        failure.map_or(Ok(Snapshot(out)), Err)
    }

    /// Puts back every tensor of a snapshot taken from a model of the same shape.
    pub fn restore(&mut self, snapshot: &Snapshot) -> Result<()> {
        let backend = self.backend.clone();
        let mut items = snapshot.0.iter();
        let mut failure = None;
        self.visit(&mut |name, _, t| {
            if failure.is_some() {
                return;
            }
            match items.next() {
                Some((shape, data)) if shape.as_slice() == t.shape() => {
                    match backend.from_host(data, shape) {
                        Ok(new) => *t = new,
                        Err(e) => failure = Some(e),
                    }
                }
                _ => {
                    failure = Some(Error::shape(
                        "restore",
                        format!("snapshot does not fit {name}"),
                    ))
                }
            }
        });
        failure.map_or(Ok(()), Err)
    }
}
