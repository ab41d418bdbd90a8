//! Checkpoints: the state of an unfinished `train` or `run`, saved atomically as it goes, so a
//! killed job continues where it was (`--resume`) and, on the CPU with the same seed and thread
//! count, ends bit-identical to a job that was never interrupted.
//!
//! # On disk
//!
//! A checkpoint is one safetensors file (`model.checkpoint.safetensors` beside a `train` model,
//! `checkpoint.safetensors` in a `run` output folder). Its tensors are `model.<name>` (every
//! weight and batch-norm running statistic, in our layout: convolutions `[Co, kh, kw, Ci]`)
//! and, while a training run is under way, `adam.m.<name>` and `adam.v.<name>` (the optimiser's
//! moments). Its metadata holds `format` = `labelwise-checkpoint`, `version` = `1`, and
//! `manifest`, a JSON document:
//!
//! - `kind`: `train` or `run`;
//! - `identity`: `[option, value]` pairs (data fingerprints, seed, image size, recipe, ...)
//!   that a resume must match;
//! - `crc32`: the CRC-32 of every tensor byte, in file order;
//! - `state`: where the job stands. For `train`: the train/validation split and the training
//!   state ([`FitState`](crate::train::FitState): epochs and batches done, optimiser steps, the epoch reports so far,
//!   and the epoch under way's running loss and predictions). For `run` also the stage
//!   (pre-training, or purchasing with the plan, the baseline, every finished strategy's
//!   outcome and the current strategy's rounds, purchases, per-label F1 and compute spent).
//!
//! Random generators are not stored: every one is seeded from the job's seed and the epoch,
//! round or member, and a resumed epoch replays the earlier epochs' shuffles. A `run` also
//! writes the pre-trained weights once to `checkpoint.pretrained.safetensors`; the manifest
//! records that file's CRC-32, so a stale one is refused.
//!
//! # Atomicity
//!
//! Each checkpoint goes to a temporary file in the same folder, is synced to disk, renamed over
//! the previous checkpoint and the folder synced: the rename is the commit point. A kill at any
//! moment leaves the previous complete checkpoint (and perhaps a temporary file, which is never
//! read and is deleted on resume). A checkpoint that is nonetheless damaged (truncated, a
//! changed byte, a manifest that does not parse) is refused with [`Error::Checkpoint`], never
//! used.
//!
//! # Lifecycle
//!
//! A job started without `resume` refuses to overwrite an existing checkpoint
//! ([`Error::CheckpointExists`]); with `resume` and no checkpoint it fails with
//! [`Error::NoCheckpoint`] (it does not silently start over), and with other options or data it
//! fails with [`Error::ResumeMismatch`] naming each difference. Once the job's outputs are
//! written, [`Checkpointing::finish`] deletes the checkpoint.

pub(crate) mod codec;
mod train_job;

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Instant;

use serde_json::{json, Value};

use crate::backend::BackendHandle;
use crate::data::Dataset;
use crate::error::{Error, OptionDifference, Result};
use crate::model::{Model, TensorKind};
use crate::optim::Adam;
use crate::tensor::Tensor;
use crate::tensor_file::{self, Entry};

pub(crate) use codec::{DecodeResult, Field};
pub use train_job::{train, Trained};

/// The `format` metadata value of a checkpoint file.
pub const FORMAT: &str = "labelwise-checkpoint";
/// The version of the layout described in the module documentation.
pub const VERSION: u32 = 1;

/// When a job saves a checkpoint.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Cadence {
    /// Never (and `resume` has nothing to continue from).
    Off,
    /// At every epoch end and every purchase round.
    Epoch,
    /// Every this many optimiser steps, and at every epoch end and purchase round.
    Steps(usize),
    /// At the first step, epoch end or round after this many seconds since the last save.
    Seconds(f64),
}

impl Default for Cadence {
    /// Every 60 seconds: at most a minute of work lost, and the cost of writing a ResNet18 with
    /// its optimiser state (134 MB, about 0.45 s with fsync on our disk) stays under 1%.
    fn default() -> Self {
        Cadence::Seconds(60.0)
    }
}

impl FromStr for Cadence {
    type Err = Error;

    /// `off`, `epoch`, a step count (`200`), or a time (`90s`, `5m`).
    fn from_str(s: &str) -> Result<Self> {
        let bad = || {
            Error::InvalidArgument(format!(
                "checkpoint cadence {s:?}: expected off, epoch, a number of steps (200) or a \
                 time (90s, 5m)"
            ))
        };
        let seconds = |text: &str, unit: f64| -> Result<Cadence> {
            let n: f64 = text.parse().map_err(|_| bad())?;
            match n.is_finite() && n >= 0.0 {
                true => Ok(Cadence::Seconds(n * unit)),
                false => Err(bad()),
            }
        };
        match s {
            "off" => Ok(Cadence::Off),
            "epoch" => Ok(Cadence::Epoch),
            _ if s.ends_with('s') => seconds(&s[..s.len() - 1], 1.0),
            _ if s.ends_with('m') => seconds(&s[..s.len() - 1], 60.0),
            _ => match s.parse::<usize>() {
                Ok(n) if n > 0 => Ok(Cadence::Steps(n)),
                _ => Err(bad()),
            },
        }
    }
}

impl fmt::Display for Cadence {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Cadence::Off => f.write_str("off"),
            Cadence::Epoch => f.write_str("every epoch and round"),
            Cadence::Steps(n) => write!(f, "every {n} steps, epoch and round"),
            Cadence::Seconds(s) => write!(f, "every {s}s"),
        }
    }
}

/// A point where a job may save.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Boundary {
    /// After an optimiser step (the step count so far).
    Step(u32),
    EpochEnd,
    /// Between purchase rounds or strategies.
    Round,
}

/// Where a job keeps its checkpoint, how often it saves, and whether it continues from it.
#[derive(Debug, Clone, PartialEq)]
pub struct Checkpointing {
    pub path: PathBuf,
    pub cadence: Cadence,
    pub resume: bool,
}

impl Checkpointing {
    /// No checkpoints.
    pub fn off() -> Self {
        Checkpointing {
            path: PathBuf::new(),
            cadence: Cadence::Off,
            resume: false,
        }
    }

    /// The file beside the checkpoint that holds a `run`'s pre-trained weights.
    pub fn pretrained_path(&self) -> PathBuf {
        self.path.with_extension("pretrained.safetensors")
    }

    /// Deletes the checkpoint, its pre-trained weights and any temporary file a killed write
    /// left: call it once the job's outputs are safely written.
    pub fn finish(&self) -> Result<()> {
        if self.path.as_os_str().is_empty() {
            return Ok(());
        }
        for path in [self.path.clone(), self.pretrained_path()] {
            remove_if_present(&path)?;
            for leftover in crate::io::temp_leftovers(&path) {
                remove_if_present(&leftover)?;
            }
        }
        Ok(())
    }
}

fn remove_if_present(path: &Path) -> Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(Error::io(path, e)),
        _ => Ok(()),
    }
}

/// What a job was started with: named options and data fingerprints. A resume must match.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Identity(Vec<(String, String)>);

impl Identity {
    pub fn new() -> Self {
        Identity::default()
    }

    /// Adds an option; `name` in the CLI's words ("seed", "image size").
    pub fn with(mut self, name: &str, value: impl fmt::Display) -> Self {
        self.0.push((name.to_string(), value.to_string()));
        self
    }

    /// Options whose values differ, or that only one side has.
    pub fn differences(&self, checkpoint: &Identity) -> Vec<OptionDifference> {
        let saved: HashMap<&str, &str> = checkpoint
            .0
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let now: HashMap<&str, &str> = self
            .0
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let mut out = Vec::new();
        for (k, v) in &self.0 {
            match saved.get(k.as_str()) {
                Some(s) if s == v => {}
                other => out.push(OptionDifference {
                    option: k.clone(),
                    checkpoint: other.map_or("(not recorded)".into(), |s| s.to_string()),
                    now: v.clone(),
                }),
            }
        }
        for (k, v) in &checkpoint.0 {
            if !now.contains_key(k.as_str()) {
                out.push(OptionDifference {
                    option: k.clone(),
                    checkpoint: v.clone(),
                    now: "(not given)".into(),
                });
            }
        }
        out
    }

    fn to_json(&self) -> Value {
        Value::Array(self.0.iter().map(|(k, v)| json!([k, v])).collect())
    }

    fn from_json(f: Field) -> DecodeResult<Identity> {
        let pairs = f.items()?;
        let mut out = Identity::new();
        for pair in &pairs {
            let kv = pair.field().items()?;
            match kv.as_slice() {
                [k, v] => out = out.with(k.field().str()?, v.field().str()?),
                _ => return Err("identity: expected [option, value] pairs".into()),
            }
        }
        Ok(out)
    }
}

/// A dataset's fingerprint for [`Identity`]: counts, size and a CRC-32 of its names, labels
/// and pixels, so a resume on other images or labels is caught.
pub fn fingerprint(data: &Dataset) -> String {
    let mut crc = flate2::Crc::new();
    crc.update(&(data.size as u64).to_le_bytes());
    for name in data.label_names.iter().chain(&data.files) {
        crc.update(name.as_bytes());
        crc.update(&[0]);
    }
    match &data.labels {
        Some(labels) => crc.update(labels),
        None => crc.update(b"unlabelled"),
    }
    crc.update(&data.pixels);
    format!(
        "{} images, {} labels, {}px, crc32 {:08x}",
        data.len(),
        data.num_labels(),
        data.size,
        crc.sum()
    )
}

/// A model's weights for [`Identity`]: a CRC-32 of every tensor. A job records its initial
/// weights, so a resume from another starting point (other `--init-weights`) is caught.
pub fn weights_fingerprint(model: &mut Model) -> Result<String> {
    let mut crc = flate2::Crc::new();
    let mut failure = None;
    model.visit(&mut |name, _, t| match t.to_vec() {
        Ok(v) => {
            crc.update(name.as_bytes());
            crc.update(bytemuck::cast_slice(&v));
        }
        Err(e) => failure = Some(e),
    });
    failure.map_or(Ok(format!("crc32 {:08x}", crc.sum())), Err)
}

/// The model settings and training recipe of a job, for its [`Identity`]; `prefix` tells apart
/// a second recipe of the same job ("retrain ").
pub(crate) fn recipe_identity(
    id: Identity,
    prefix: &str,
    cfg: &crate::train::TrainConfig,
) -> Identity {
    let a = &cfg.adam;
    id.with(&format!("{prefix}epochs"), cfg.epochs)
        .with(&format!("{prefix}batch size"), cfg.batch_size)
        .with(&format!("{prefix}lr"), a.lr)
        .with(&format!("{prefix}weight decay"), a.weight_decay)
        .with(
            &format!("{prefix}optimiser"),
            format!(
                "{} betas {} {} eps {}",
                if a.decoupled { "AdamW" } else { "Adam" },
                a.beta1,
                a.beta2,
                a.eps
            ),
        )
        .with(
            &format!("{prefix}lr schedule"),
            format!("{:?}", cfg.lr_schedule),
        )
        .with(&format!("{prefix}training seed"), cfg.seed)
}

/// A model configuration for [`Identity`].
pub(crate) fn model_identity(id: Identity, c: &crate::model::ModelConfig) -> Identity {
    id.with("image size", c.image_size)
        .with("labels", c.label_names.join(","))
        .with("loss", if c.multilabel { "sigmoid" } else { "softmax" })
        .with("margin", c.margin)
        .with("scale", c.scale)
        .with(
            "normalisation",
            format!("mean {:?} std {:?}", c.mean, c.std),
        )
}

/// A tensor to save, as host bytes.
struct HostTensor {
    name: String,
    shape: Vec<usize>,
    data: Vec<f32>,
}

/// The model's tensors, named `prefix` + torchvision name, copied to the host.
fn model_tensors(model: &mut Model, prefix: &str) -> Result<Vec<HostTensor>> {
    let mut out = Vec::new();
    let mut failure = None;
    model.visit(&mut |name, _, t| match t.to_vec() {
        Ok(data) => out.push(HostTensor {
            name: format!("{prefix}{name}"),
            shape: t.shape().to_vec(),
            data,
        }),
        Err(e) => failure = Some(e),
    });
    failure.map_or(Ok(out), Err)
}

/// The optimiser's moments, named `adam.m.<name>` and `adam.v.<name>`.
fn adam_tensors(model: &mut Model, adam: &Adam) -> Result<Vec<HostTensor>> {
    let mut names = Vec::new();
    model.visit(&mut |name, kind, _| {
        if kind != TensorKind::Buffer {
            names.push(name.to_string());
        }
    });
    let mut out = Vec::with_capacity(2 * names.len());
    for (name, (m, v)) in names.iter().zip(adam.moments()) {
        for (which, t) in [("m", m), ("v", v)] {
            out.push(HostTensor {
                name: format!("adam.{which}.{name}"),
                shape: t.shape().to_vec(),
                data: t.to_vec()?,
            });
        }
    }
    Ok(out)
}

/// Writes one checkpoint file atomically and syncs its folder; returns the data's CRC-32.
fn write_file(path: &Path, manifest: Value, tensors: &[HostTensor]) -> Result<u32> {
    let entries: Vec<Entry> = tensors
        .iter()
        .map(|t| Entry {
            name: &t.name,
            shape: &t.shape,
            bytes: bytemuck::cast_slice(&t.data),
        })
        .collect();
    let mut crc = flate2::Crc::new();
    for bytes in tensor_file::data_in_file_order(&entries) {
        crc.update(bytes);
    }
    let crc = crc.sum();
    let mut manifest = manifest;
    manifest["crc32"] = json!(crc);
    manifest["tensors"] = json!(tensors.len());
    let metadata = BTreeMap::from([
        ("format".to_string(), FORMAT.to_string()),
        ("version".to_string(), VERSION.to_string()),
        ("manifest".to_string(), manifest.to_string()),
    ]);
    crate::io::write_atomic_with(path, |w| {
        tensor_file::write(w, &entries, &metadata).map_err(|e| Error::io(path, e))
    })?;
    let folder = path.parent().unwrap_or(Path::new("."));
    crate::io::sync_folder(folder)?;
    Ok(crc)
}

/// A checkpoint file read back and checked: complete, of this format, its data intact.
pub(crate) struct CheckpointFile {
    path: PathBuf,
    bytes: Vec<u8>,
    /// Start of the tensor data.
    data_start: usize,
    tensors: HashMap<String, (Vec<usize>, std::ops::Range<usize>)>,
    manifest: Value,
    crc: u32,
}

impl CheckpointFile {
    /// Reads `path`; `None` when there is no such file.
    fn read(path: &Path) -> Result<Option<CheckpointFile>> {
        let bytes = match std::fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Error::io(path, e)),
        };
        let bad = |detail: String| Error::Checkpoint {
            path: path.into(),
            detail,
        };
        // Full validation of the layout: header, offsets and total length (a truncated file
        // fails here).
        safetensors::SafeTensors::deserialize(&bytes)
            .map_err(|e| bad(format!("not a complete safetensors file ({e})")))?;
        let (header_len, meta) = safetensors::SafeTensors::read_metadata(&bytes)
            .map_err(|e| bad(format!("not a complete safetensors file ({e})")))?;
        let info = meta.metadata().clone().unwrap_or_default();
        if info.get("format").map(String::as_str) != Some(FORMAT) {
            return Err(bad(format!("its format is not {FORMAT:?}")));
        }
        if info.get("version").map(String::as_str) != Some(&VERSION.to_string()) {
            return Err(bad(format!(
                "version {:?}; this labelwise reads version {VERSION}",
                info.get("version")
            )));
        }
        let manifest: Value = info
            .get("manifest")
            .ok_or_else(|| bad("it has no manifest".into()))
            .and_then(|text| {
                serde_json::from_str(text).map_err(|e| bad(format!("its manifest is torn ({e})")))
            })?;
        let data_start = 8 + header_len;
        let mut tensors = HashMap::new();
        for (name, t) in meta.tensors() {
            if t.dtype != safetensors::Dtype::F32 {
                return Err(bad(format!("tensor {name} is {:?}, not F32", t.dtype)));
            }
            let (a, b) = t.data_offsets;
            tensors.insert(name, (t.shape.clone(), data_start + a..data_start + b));
        }

        // The data's checksum: a changed byte anywhere in the tensors is caught.
        let mut crc = flate2::Crc::new();
        crc.update(&bytes[data_start..]);
        let crc = crc.sum();
        let field = Field::root(&manifest);
        let read = |key: &str| -> Result<u64> {
            field
                .get(key)
                .and_then(|f| f.field().u64())
                .map_err(|e| bad(e.to_string()))
        };
        if read("crc32")? != crc as u64 {
            return Err(bad("its tensor data does not match its checksum".into()));
        }
        if read("tensors")? != tensors.len() as u64 {
            return Err(bad("it lacks tensors its manifest lists".into()));
        }
        Ok(Some(CheckpointFile {
            path: path.into(),
            bytes,
            data_start,
            tensors,
            manifest,
            crc,
        }))
    }

    /// An error about this file's content.
    pub(crate) fn bad(&self, detail: impl Into<String>) -> Error {
        Error::Checkpoint {
            path: self.path.clone(),
            detail: detail.into(),
        }
    }

    /// The manifest's `state`.
    pub(crate) fn state(&self) -> Field<'_> {
        match &self.manifest {
            Value::Object(map) => Field::root(map.get("state").unwrap_or(&Value::Null)),
            other => Field::root(other),
        }
    }

    /// The CRC-32 of the tensor data.
    pub(crate) fn crc(&self) -> u32 {
        self.crc
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    fn has(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }

    /// The tensor `name` on `backend`, checked against `shape`.
    fn tensor(&self, name: &str, shape: &[usize], backend: &BackendHandle) -> Result<Tensor> {
        let (saved, range) = self
            .tensors
            .get(name)
            .ok_or_else(|| self.bad(format!("tensor {name} is missing")))?;
        if saved.as_slice() != shape {
            return Err(self.bad(format!("tensor {name} is {saved:?}, expected {shape:?}")));
        }
        debug_assert!(range.start >= self.data_start);
        let data: Vec<f32> = self.bytes[range.clone()]
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        backend.from_host(&data, shape)
    }

    /// Puts the saved `model.*` tensors into `model`.
    pub(crate) fn restore_model(&self, model: &mut Model) -> Result<()> {
        let backend = model.backend().clone();
        let mut failure = None;
        model.visit(&mut |name, _, t| {
            if failure.is_some() {
                return;
            }
            match self.tensor(&format!("model.{name}"), t.shape(), &backend) {
                Ok(saved) => *t = saved,
                Err(e) => failure = Some(e),
            }
        });
        failure.map_or(Ok(()), Err)
    }

    /// Whether the file holds a model (a run between strategies holds none).
    pub(crate) fn has_model(&self) -> bool {
        self.has("model.conv1.weight")
    }

    /// The saved optimiser moments for `model`'s trainable tensors, in slot order.
    pub(crate) fn moments(&self, model: &mut Model) -> Result<Vec<(Tensor, Tensor)>> {
        let backend = model.backend().clone();
        let mut wanted = Vec::new();
        model.visit(&mut |name, kind, t| {
            if kind != TensorKind::Buffer {
                wanted.push((name.to_string(), t.shape().to_vec()));
            }
        });
        wanted
            .iter()
            .map(|(name, shape)| {
                Ok((
                    self.tensor(&format!("adam.m.{name}"), shape, &backend)?,
                    self.tensor(&format!("adam.v.{name}"), shape, &backend)?,
                ))
            })
            .collect()
    }
}

/// Saves a job's checkpoints at its cadence.
pub(crate) struct Saver {
    path: PathBuf,
    cadence: Cadence,
    kind: &'static str,
    identity: Identity,
    last_save: Instant,
    /// The CRC-32 of the pre-trained weights file, once written or checked.
    pretrained_crc: Option<u32>,
}

impl Saver {
    /// Starts checkpointing a job of `kind`: with `resume`, reads and checks the checkpoint;
    /// without, makes sure there is none to overwrite. Temporary files of killed writes are
    /// deleted.
    pub(crate) fn begin(
        ck: &Checkpointing,
        kind: &'static str,
        identity: Identity,
    ) -> Result<(Saver, Option<CheckpointFile>)> {
        let saver = Saver {
            path: ck.path.clone(),
            cadence: ck.cadence,
            kind,
            identity,
            last_save: Instant::now(),
            pretrained_crc: None,
        };
        if !ck.resume {
            // Never overwrite an unfinished job's work, even with checkpoints off.
            if !ck.path.as_os_str().is_empty() && ck.path.exists() {
                return Err(Error::CheckpointExists {
                    path: ck.path.clone(),
                });
            }
            if ck.cadence == Cadence::Off {
                return Ok((saver, None));
            }
        }
        for leftover in [ck.path.clone(), ck.pretrained_path()]
            .iter()
            .flat_map(|p| crate::io::temp_leftovers(p))
        {
            log::info!("deleting {} (left by a killed write)", leftover.display());
            remove_if_present(&leftover)?;
        }
        if !ck.resume {
            // Fail now, not at the first checkpoint, on a folder that cannot be written.
            crate::io::check_writable(&ck.path)?;
            return Ok((saver, None));
        }
        let file = CheckpointFile::read(&ck.path)?.ok_or_else(|| Error::NoCheckpoint {
            path: ck.path.clone(),
        })?;
        let manifest = Field::root(&file.manifest);
        let text = |key: &str| -> Result<String> {
            manifest
                .get(key)
                .and_then(|f| f.field().str().map(str::to_string))
                .map_err(|e| file.bad(e))
        };
        let saved_kind = text("kind")?;
        if saved_kind != kind {
            return Err(file.bad(format!(
                "it is the checkpoint of `{saved_kind}`, not of `{kind}`"
            )));
        }
        let saved = manifest
            .get("identity")
            .and_then(|f| Identity::from_json(f.field()))
            .map_err(|e| file.bad(e))?;
        let differences = saver.identity.differences(&saved);
        if !differences.is_empty() {
            return Err(Error::ResumeMismatch {
                path: ck.path.clone(),
                differences,
            });
        }
        Ok((saver, Some(file)))
    }

    /// Whether a checkpoint is due at `boundary`.
    pub(crate) fn due(&self, boundary: Boundary) -> bool {
        match (self.cadence, boundary) {
            (Cadence::Off, _) => false,
            (Cadence::Seconds(s), _) => self.last_save.elapsed().as_secs_f64() >= s,
            (_, Boundary::EpochEnd | Boundary::Round) => true,
            (Cadence::Steps(n), Boundary::Step(step)) => step as usize % n.max(1) == 0,
            (Cadence::Epoch, Boundary::Step(_)) => false,
        }
    }

    pub(crate) fn enabled(&self) -> bool {
        self.cadence != Cadence::Off
    }

    /// Saves `state` with the model (when given) and the optimiser (when given).
    pub(crate) fn save(
        &mut self,
        state: Value,
        model: Option<&mut Model>,
        adam: Option<&Adam>,
    ) -> Result<()> {
        let mut tensors = Vec::new();
        if let Some(model) = model {
            tensors.extend(model_tensors(model, "model.")?);
            if let Some(adam) = adam {
                tensors.extend(adam_tensors(model, adam)?);
            }
        }
        let manifest = json!({
            "kind": self.kind,
            "labelwise": env!("CARGO_PKG_VERSION"),
            "identity": self.identity.to_json(),
            "state": state,
        });
        write_file(&self.path, manifest, &tensors)?;
        self.last_save = Instant::now();
        Ok(())
    }

    /// Writes the pre-trained weights beside the checkpoint once; returns their CRC-32, which
    /// the checkpoints that rely on them record.
    pub(crate) fn pretrained(&mut self, model: &mut Model) -> Result<u32> {
        if let Some(crc) = self.pretrained_crc {
            return Ok(crc);
        }
        let path = self.path.with_extension("pretrained.safetensors");
        let manifest = json!({
            "kind": "pretrained",
            "labelwise": env!("CARGO_PKG_VERSION"),
            "identity": self.identity.to_json(),
            "state": Value::Null,
        });
        let crc = write_file(&path, manifest, &model_tensors(model, "model.")?)?;
        self.pretrained_crc = Some(crc);
        Ok(crc)
    }

    /// Deletes the pre-trained weights file once no checkpoint needs it.
    pub(crate) fn forget_pretrained(&mut self) -> Result<()> {
        self.pretrained_crc = None;
        remove_if_present(&self.path.with_extension("pretrained.safetensors"))
    }

    /// Reads back the pre-trained weights written by [`Saver::pretrained`] into `model`; the
    /// file must have the CRC-32 `crc` the checkpoint recorded.
    pub(crate) fn load_pretrained(&mut self, model: &mut Model, crc: u32) -> Result<()> {
        let path = self.path.with_extension("pretrained.safetensors");
        let file = CheckpointFile::read(&path)?.ok_or_else(|| Error::Checkpoint {
            path: self.path.clone(),
            detail: format!("the pre-trained weights {} are missing", path.display()),
        })?;
        if file.crc() != crc {
            return Err(file.bad("these are not the pre-trained weights the checkpoint names"));
        }
        file.restore_model(model)?;
        self.pretrained_crc = Some(crc);
        Ok(())
    }
}

#[cfg(test)]
mod tests;
