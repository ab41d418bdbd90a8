//! torchvision ResNet18 state dicts, saved as safetensors, as a model's initial encoder.
//!
//! A state dict from `torchvision.models.resnet18().state_dict()` (for instance the ImageNet
//! weights, exported by `scripts/export_torchvision.py`) names its tensors as our encoder does
//! (`conv1.weight`, `bn1.running_var`, `layer2.0.downsample.0.weight`, ...) and stores
//! convolution weights as `[Co, Ci, kh, kw]`; we keep `[Co, kh, kw, Ci]`. The classifier
//! (`fc.*`), batch norm's step counters (`*.num_batches_tracked`) and our own CosFace head
//! (`cosface.weight`, in files saved by [`Model::save`]) are skipped on purpose; every other
//! difference is an [`Error::Weights`] naming the tensors and the file.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};

use crate::backend::BackendHandle;
use crate::error::{Error, Result, WeightsProblem};
use crate::model::{from_file_layout, to_file_layout, Model, ResNet18};

/// Checked encoder weights of a torchvision ResNet18, in our layout, ready to load into any
/// number of models (see [`Model::load_encoder`]).
///
/// ```no_run
/// use std::path::Path;
/// use labelwise::backend::{self, DeviceChoice};
/// use labelwise::experiment::ModelSettings;
/// use labelwise::model::{Model, TorchvisionWeights};
/// # fn main() -> labelwise::Result<()> {
/// # let data = labelwise::data::Dataset::load_folder(Path::new("data"), 32, &Default::default())?;
/// let weights = TorchvisionWeights::read(Path::new("resnet18-imagenet.safetensors"))?;
/// let backend = backend::open(DeviceChoice::Auto)?;
/// let mut model = Model::new(backend, ModelSettings::default().config_for(&data), 0)?;
/// model.load_encoder(&weights)?; // the CosFace head keeps its fresh initialisation
/// # Ok(()) }
/// ```
#[derive(Clone, PartialEq)]
pub struct TorchvisionWeights {
    path: PathBuf,
    /// One per entry of [`ResNet18::tensor_specs`], in that order, in our layout.
    tensors: Vec<Vec<f32>>,
    skipped: Vec<String>,
}

impl std::fmt::Debug for TorchvisionWeights {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TorchvisionWeights")
            .field("path", &self.path)
            .field("tensors", &self.tensors.len())
            .field("skipped", &self.skipped)
            .finish()
    }
}

/// Tensors of a ResNet18 state dict that are not part of our encoder and are skipped.
fn is_skipped(name: &str) -> bool {
    name.starts_with("fc.") || name.ends_with(".num_batches_tracked") || name == "cosface.weight"
}

impl TorchvisionWeights {
    /// Reads and checks a safetensors state dict.
    ///
    /// # Errors
    /// [`Error::Io`] if the file cannot be read, [`Error::Format`] if it is not safetensors,
    /// [`Error::Weights`] if its tensors differ from a ResNet18's by name, shape or type.
    pub fn read(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        Self::from_bytes(&bytes, path)
    }

    /// [`TorchvisionWeights::read`] from bytes already in memory; `path` names them in errors.
    pub fn from_bytes(bytes: &[u8], path: &Path) -> Result<Self> {
        let file = SafeTensors::deserialize(bytes).map_err(|e| Error::Format {
            path: path.into(),
            detail: format!(
                "not a safetensors file ({e}); PyTorch .pth files convert with \
                 scripts/export_torchvision.py"
            ),
        })?;
        let problem = |problem| Error::Weights {
            path: path.into(),
            problem,
        };
        let specs = ResNet18::tensor_specs();

        // Names first: a file of another network, or with a "module." prefix, shows as both
        // missing and unexpected names, which says more than the first shape that differs.
        let mut names: Vec<String> = file.names().into_iter().map(str::to_string).collect();
        names.sort();
        let wanted: HashSet<&str> = specs.iter().map(|(n, _, _)| n.as_str()).collect();
        let present: HashSet<&str> = names.iter().map(String::as_str).collect();
        let missing: Vec<String> = specs
            .iter()
            .map(|(n, _, _)| n.clone())
            .filter(|n| !present.contains(n.as_str()))
            .collect();
        let (skipped, unexpected): (Vec<String>, Vec<String>) = names
            .into_iter()
            .filter(|n| !wanted.contains(n.as_str()))
            .partition(|n| is_skipped(n));
        if !missing.is_empty() || !unexpected.is_empty() {
            return Err(problem(WeightsProblem::Names {
                missing,
                unexpected,
            }));
        }

        let mut tensors = Vec::with_capacity(specs.len());
        for (name, kind, shape) in &specs {
            let view = file.tensor(name).map_err(|e| Error::Format {
                path: path.into(),
                detail: format!("tensor {name:?}: {e}"),
            })?;
            let (file_shape, _) = to_file_layout(*kind, shape, Vec::new());
            if view.shape() != file_shape {
                return Err(problem(WeightsProblem::Shape {
                    tensor: name.clone(),
                    expected: file_shape,
                    found: view.shape().to_vec(),
                }));
            }
            let data = read_floats(&view).ok_or_else(|| {
                problem(WeightsProblem::Dtype {
                    tensor: name.clone(),
                    found: format!("{:?}", view.dtype()),
                })
            })?;
            super::check_finite(path, name, &data)?;
            tensors.push(from_file_layout(*kind, shape, data));
        }
        if !skipped.is_empty() {
            log::info!(
                "{}: skipped {} tensor(s) that are not part of the encoder: {}",
                path.display(),
                skipped.len(),
                describe_skipped(&skipped)
            );
        }
        Ok(TorchvisionWeights {
            path: path.into(),
            tensors,
            skipped,
        })
    }

    /// The file the weights came from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The file's tensors skipped on purpose: the classifier (`fc.*`), batch norm's
    /// `num_batches_tracked` counters and a labelwise CosFace head (`cosface.weight`).
    pub fn skipped(&self) -> &[String] {
        &self.skipped
    }
}

/// "fc.weight, fc.bias (classifier), 20 num_batches_tracked": the skipped tensors, grouped.
fn describe_skipped(skipped: &[String]) -> String {
    let counters = skipped
        .iter()
        .filter(|n| n.ends_with(".num_batches_tracked"))
        .count();
    let mut parts: Vec<String> = skipped
        .iter()
        .filter(|n| !n.ends_with(".num_batches_tracked"))
        .cloned()
        .collect();
    if counters > 0 {
        parts.push(format!(
            "{counters} batch norm num_batches_tracked counter(s)"
        ));
    }
    parts.join(", ")
}

/// The elements of a float tensor as f32 (little-endian, as safetensors stores them); `None`
/// for any other element type.
fn read_floats(view: &TensorView) -> Option<Vec<f32>> {
    let bytes = view.data();
    let out = match view.dtype() {
        Dtype::F32 => bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
        Dtype::F64 => bytes
            .chunks_exact(8)
            .map(|c| f64::from_le_bytes(c.try_into().unwrap_or([0; 8])) as f32)
            .collect(),
        Dtype::F16 => bytes
            .chunks_exact(2)
            .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        Dtype::BF16 => bytes
            .chunks_exact(2)
            .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        _ => return None,
    };
    Some(out)
}

impl ResNet18 {
    /// Replaces every tensor, running statistics included, by the weights' tensor of the same
    /// name.
    pub fn load_torchvision(
        &mut self,
        backend: &BackendHandle,
        weights: &TorchvisionWeights,
    ) -> Result<()> {
        let mut values = weights.tensors.iter();
        let mut failure = None;
        self.visit(&mut |name, _, t| {
            if failure.is_some() {
                return;
            }
            let result = match values.next() {
                Some(v) if v.len() == t.len() => backend.from_host(v, t.shape()),
                _ => Err(Error::shape(
                    "load_torchvision",
                    format!("the weights do not fit {name} {:?}", t.shape()),
                )),
            };
            match result {
                Ok(new) => *t = new,
                Err(e) => failure = Some(e),
            }
        });
        failure.map_or(Ok(()), Err)
    }
}

impl Model {
    /// Starts the encoder from torchvision weights (weights and running statistics); the
    /// CosFace head is left as it is.
    pub fn load_encoder(&mut self, weights: &TorchvisionWeights) -> Result<()> {
        let backend = self.backend().clone();
        self.encoder.load_torchvision(&backend, weights)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every tensor a torchvision ResNet18 state dict holds for the encoder, in its layout,
    /// each filled with its index so a transposition shows.
    fn state_dict() -> Vec<(String, Vec<usize>, Vec<f32>)> {
        ResNet18::tensor_specs()
            .into_iter()
            .enumerate()
            .map(|(i, (name, kind, shape))| {
                let (shape, _) = to_file_layout(kind, &shape, Vec::new());
                let n = shape.iter().product::<usize>();
                let data = (0..n).map(|j| (i * 1000 + j % 1000) as f32).collect();
                (name, shape, data)
            })
            .collect()
    }

    fn serialize(tensors: &[(String, Vec<usize>, Vec<f32>)], extra: &[(&str, Dtype)]) -> Vec<u8> {
        let bytes: Vec<(String, Vec<usize>, Vec<u8>, Dtype)> = tensors
            .iter()
            .map(|(n, s, d)| {
                (
                    n.clone(),
                    s.clone(),
                    bytemuck::cast_slice(d).to_vec(),
                    Dtype::F32,
                )
            })
            .chain(
                extra
                    .iter()
                    // Eight bytes: one int64 scalar, or two float32s.
                    .map(|(n, dtype)| {
                        let shape = if *dtype == Dtype::I64 {
                            vec![]
                        } else {
                            vec![2]
                        };
                        (n.to_string(), shape, vec![0u8; 8], *dtype)
                    }),
            )
            .collect();
        let views = bytes
            .iter()
            .map(|(n, s, b, dtype)| (n.clone(), TensorView::new(*dtype, s.clone(), b).unwrap()));
        safetensors::serialize(views, None).unwrap()
    }

    fn problem(bytes: &[u8]) -> WeightsProblem {
        match TorchvisionWeights::from_bytes(bytes, Path::new("w.safetensors")) {
            Err(Error::Weights { problem, path }) => {
                assert_eq!(path, Path::new("w.safetensors"));
                problem
            }
            other => panic!("expected a weights error, got {other:?}"),
        }
    }

    #[test]
    fn specs_match_the_built_network() {
        let backend: BackendHandle = std::sync::Arc::new(crate::backend::cpu::CpuBackend);
        let mut rng = rand::SeedableRng::seed_from_u64(0);
        let mut net = ResNet18::new(&backend, &mut rng).unwrap();
        let mut seen = Vec::new();
        net.visit(&mut |name, kind, t| seen.push((name.to_string(), kind, t.shape().to_vec())));
        assert_eq!(seen, ResNet18::tensor_specs());
        assert_eq!(seen.len(), 100);
    }

    #[test]
    fn skips_classifier_and_counters_and_converts_layout() {
        let tensors = state_dict();
        let extra = [
            ("fc.weight", Dtype::F32),
            ("fc.bias", Dtype::F32),
            ("bn1.num_batches_tracked", Dtype::I64),
        ];
        let w =
            TorchvisionWeights::from_bytes(&serialize(&tensors, &extra), Path::new("w")).unwrap();
        assert_eq!(
            w.skipped(),
            ["bn1.num_batches_tracked", "fc.bias", "fc.weight"]
        );
        assert_eq!(
            describe_skipped(w.skipped()),
            "fc.bias, fc.weight, 1 batch norm num_batches_tracked counter(s)"
        );
        // conv1.weight [64, 3, 7, 7] in the file: element (o=1, i=2, y=3, x=4) is ours at
        // [1, 3, 4, 2].
        let file_index = ((3 + 2) * 7 + 3) * 7 + 4;
        let ours_index = ((7 + 3) * 7 + 4) * 3 + 2;
        assert_eq!(w.tensors[0][ours_index], tensors[0].2[file_index]);
        assert_eq!(w.tensors[1], tensors[1].2); // bn1.weight unchanged
    }

    #[test]
    fn names_every_missing_and_unexpected_tensor() {
        let mut tensors = state_dict();
        tensors.retain(|(n, _, _)| n != "layer3.1.bn2.running_var");
        tensors[0].0 = "module.conv1.weight".into();
        let expected = WeightsProblem::Names {
            missing: vec!["conv1.weight".into(), "layer3.1.bn2.running_var".into()],
            unexpected: vec!["module.conv1.weight".into()],
        };
        assert_eq!(problem(&serialize(&tensors, &[])), expected);
        let text = Error::Weights {
            path: "w.safetensors".into(),
            problem: expected,
        }
        .to_string();
        assert!(
            text.starts_with("w.safetensors: missing tensor(s) \"conv1.weight\""),
            "{text}"
        );
        assert!(
            text.contains("unexpected tensor(s) \"module.conv1.weight\""),
            "{text}"
        );
    }

    #[test]
    fn names_a_misshapen_or_integer_tensor() {
        let mut tensors = state_dict();
        let i = tensors
            .iter()
            .position(|(n, _, _)| n == "layer1.0.conv1.weight")
            .unwrap();
        tensors[i].1 = vec![64, 64, 1, 9]; // right size, wrong shape
        assert_eq!(
            problem(&serialize(&tensors, &[])),
            WeightsProblem::Shape {
                tensor: "layer1.0.conv1.weight".into(),
                expected: vec![64, 64, 3, 3],
                found: vec![64, 64, 1, 9],
            }
        );

        let mut tensors = state_dict();
        tensors.retain(|(n, _, _)| n != "bn1.running_mean");
        let bytes_of = |dtype| {
            let mut all = serialize(&tensors, &[]);
            let file = SafeTensors::deserialize(&all).unwrap();
            let mut items: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = file
                .tensors()
                .into_iter()
                .map(|(n, v)| (n, v.dtype(), v.shape().to_vec(), v.data().to_vec()))
                .collect();
            items.push(("bn1.running_mean".into(), dtype, vec![64], vec![0; 64 * 8]));
            let views = items
                .iter()
                .map(|(n, d, s, b)| (n.clone(), TensorView::new(*d, s.clone(), b).unwrap()));
            all = safetensors::serialize(views, None).unwrap();
            all
        };
        assert_eq!(
            problem(&bytes_of(Dtype::I64)),
            WeightsProblem::Dtype {
                tensor: "bn1.running_mean".into(),
                found: "I64".into()
            }
        );
        // Float64 is read (and rounded to f32).
        TorchvisionWeights::from_bytes(&bytes_of(Dtype::F64), Path::new("w")).unwrap();
    }

    #[test]
    fn refuses_a_file_that_is_not_safetensors() {
        let err = TorchvisionWeights::from_bytes(b"PK\x03\x04 a .pth zip", Path::new("r.pth"));
        assert!(matches!(err, Err(Error::Format { .. })), "{err:?}");
    }
}
