//! Holds our ResNet18 encoder to torchvision's: forward in evaluation and training mode, the
//! running statistics after one training step, and the gradients of one backward pass, against
//! tests/fixtures/torch_golden.safetensors (written by scripts/torch_golden.py from PyTorch in
//! float64). The weights are not in the file: both sides compute them from the same formula
//! (`golden_tensor`, a hash of each tensor's name and element index), and the file carries
//! fingerprints of them so a drift between the two formulas fails loudly as such. The test
//! also checks that a model we save has exactly torchvision's tensor names, shapes and layout.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use labelwise::autograd::Graph;
use labelwise::backend::cpu::CpuBackend;
use labelwise::backend::BackendHandle;
use labelwise::experiment::ModelSettings;
use labelwise::model::{
    Model, ModelConfig, ParamSlots, ResNet18, TensorKind, TorchvisionWeights, IMAGENET_MEAN,
    IMAGENET_STD,
};
use rand::SeedableRng;
use safetensors::{Dtype, SafeTensors};

const GOLDEN: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/torch_golden.safetensors"
);

/// Largest error allowed, as max |ours - reference| / max |reference| over a tensor.
///
/// The reference is PyTorch in float64, so these bound our float32 error alone. PyTorch's own
/// float32 run lands 4.0e-7 (evaluation features), 6.6e-6 (training features), 1.3e-6
/// (running statistics) and up to 1.6e-5 (gradients) from it (metadata `torch_f32_error`);
/// ours, on the CPU backend with 1 or 2 threads alike: 6.6e-7, 1.1e-5, 2.3e-6 and 3.2e-5,
/// the same order (printed with --nocapture). Each bound leaves 6-15x over ours for other
/// accumulation orders. Real differences from torchvision land far outside: batch norm's eps
/// at 1e-4 instead of 1e-5 gave 5e-4 on the evaluation features and 6e-2 on gradients, and a
/// biased running variance 6e-2 on the running statistics.
const FORWARD_EVAL: f64 = 1e-5;
/// Training mode divides by batch standard deviations over as few as 6 values per channel
/// (layer4 sees 2x1 pixels of 3 images), which amplifies rounding.
const FORWARD_TRAIN: f64 = 1e-4;
const RUNNING_STATS: f64 = 2e-5;
const GRADIENTS: f64 = 2e-4;

// The golden formula; scripts/torch_golden.py's `uniform_signed` and `golden_tensor`.

fn fnv1a64(text: &str) -> u64 {
    text.bytes().fold(0xCBF29CE484222325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100000001B3)
    })
}

/// `n` values in [-1, 1): splitmix64 seeded by the name's FNV-1a hash, top 24 bits.
fn uniform_signed(name: &str, n: usize) -> Vec<f32> {
    let key = fnv1a64(name);
    (1..=n as u64)
        .map(|i| {
            let mut z = key.wrapping_add(i.wrapping_mul(0x9E3779B97F4A7C15));
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58476D1CE4E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D049BB133111EB);
            z ^= z >> 31;
            ((z >> 40) as f32) * (1.0 / (1u32 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

/// The formula's value of state-dict tensor `name` in PyTorch's layout.
fn golden_tensor(name: &str, shape: &[usize]) -> Vec<f32> {
    let s = uniform_signed(name, shape.iter().product());
    let map = |f: &dyn Fn(f32) -> f32| s.iter().map(|&v| f(v)).collect();
    if name.ends_with("running_mean") {
        map(&|v| 0.1 * v)
    } else if name.ends_with("running_var") {
        map(&|v| 1.0 + 0.5 * v)
    } else if shape.len() == 4 {
        let fan_in = shape[1] * shape[2] * shape[3];
        let bound = (6.0 / fan_in as f64).sqrt() as f32;
        map(&|v| v * bound)
    } else if name.ends_with("weight") {
        map(&|v| 1.0 + 0.25 * v)
    } else {
        map(&|v| 0.1 * v)
    }
}

/// Our shape of a tensor to torchvision's: convolution weights `[Co, kh, kw, Ci]` to
/// `[Co, Ci, kh, kw]`.
fn torch_shape(kind: TensorKind, shape: &[usize]) -> Vec<usize> {
    match kind {
        TensorKind::ConvWeight => vec![shape[0], shape[3], shape[1], shape[2]],
        _ => shape.to_vec(),
    }
}

/// A convolution weight or gradient from our layout to torchvision's.
fn to_oihw(data: &[f32], shape: &[usize]) -> Vec<f32> {
    let [co, kh, kw, ci] = [shape[0], shape[1], shape[2], shape[3]];
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
    out
}

/// The formula's state dict (encoder tensors, PyTorch layout) as safetensors bytes, with an
/// fc layer and the batch norm counters a real torchvision file carries.
fn golden_state_dict() -> Vec<u8> {
    let mut tensors: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = ResNet18::tensor_specs()
        .into_iter()
        .map(|(name, kind, shape)| {
            let shape = torch_shape(kind, &shape);
            let data = golden_tensor(&name, &shape);
            let bytes = bytemuck::cast_slice(&data).to_vec();
            (name, Dtype::F32, shape, bytes)
        })
        .collect();
    tensors.push((
        "fc.weight".into(),
        Dtype::F32,
        vec![10, 512],
        vec![0; 10 * 512 * 4],
    ));
    tensors.push(("fc.bias".into(), Dtype::F32, vec![10], vec![0; 40]));
    tensors.push((
        "bn1.num_batches_tracked".into(),
        Dtype::I64,
        vec![],
        vec![0; 8],
    ));
    let views = tensors.iter().map(|(n, d, s, b)| {
        let view = safetensors::tensor::TensorView::new(*d, s.clone(), b).unwrap();
        (n.clone(), view)
    });
    safetensors::serialize(views, None).unwrap()
}

struct Golden {
    bytes: Vec<u8>,
}

impl Golden {
    fn load() -> Golden {
        Golden {
            bytes: std::fs::read(GOLDEN).expect("tests/fixtures/torch_golden.safetensors"),
        }
    }

    fn file(&self) -> SafeTensors<'_> {
        SafeTensors::deserialize(&self.bytes).unwrap()
    }

    fn meta(&self, key: &str) -> String {
        let (_, meta) = SafeTensors::read_metadata(&self.bytes).unwrap();
        meta.metadata().as_ref().unwrap()[key].clone()
    }

    fn f32(&self, name: &str) -> (Vec<usize>, Vec<f32>) {
        let file = self.file();
        let view = file
            .tensor(name)
            .unwrap_or_else(|_| panic!("golden lacks {name}"));
        assert_eq!(view.dtype(), Dtype::F32, "{name}");
        let data = bytemuck::pod_collect_to_vec(view.data());
        (view.shape().to_vec(), data)
    }

    fn f64(&self, name: &str) -> Vec<f64> {
        let file = self.file();
        let view = file.tensor(name).unwrap();
        assert_eq!(view.dtype(), Dtype::F64, "{name}");
        bytemuck::pod_collect_to_vec(view.data())
    }
}

/// Whether error `e` beats the worst so far; a NaN beats everything and sticks, so a
/// non-finite output fails instead of being skipped.
fn worse(e: f64, worst: f64) -> bool {
    e > worst || (e.is_nan() && !worst.is_nan())
}

/// max |ours - reference| / max |reference|, with where the worst element is.
fn relative_error(ours: &[f32], reference: &[f32]) -> (f64, usize) {
    assert_eq!(ours.len(), reference.len());
    let scale = reference
        .iter()
        .fold(0f64, |m, &r| m.max(f64::from(r).abs()));
    let (worst, at) = ours
        .iter()
        .zip(reference)
        .map(|(&a, &r)| (f64::from(a) - f64::from(r)).abs())
        .enumerate()
        .fold(
            (0.0, 0),
            |(m, at), (i, d)| if d > m { (d, i) } else { (m, at) },
        );
    (worst / scale.max(f64::MIN_POSITIVE), at)
}

/// Checks one tensor and records its error for the summary.
fn check(
    errors: &mut Vec<String>,
    report: &mut Vec<String>,
    what: &str,
    ours: &[f32],
    reference: &[f32],
    tolerance: f64,
) {
    let (err, at) = relative_error(ours, reference);
    report.push(format!("{what:<44} {err:.2e}  (bound {tolerance:.0e})"));
    if err.is_nan() || err > tolerance {
        errors.push(format!(
            "{what}: relative error {err:.3e} over {tolerance:.0e}; worst element {at}: ours {} \
             torchvision {}",
            ours[at], reference[at]
        ));
    }
}

fn cpu() -> BackendHandle {
    Arc::new(CpuBackend)
}

fn golden_encoder(backend: &BackendHandle) -> ResNet18 {
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let mut net = ResNet18::new(backend, &mut rng).unwrap();
    let weights =
        TorchvisionWeights::from_bytes(&golden_state_dict(), Path::new("golden")).unwrap();
    net.load_torchvision(backend, &weights).unwrap();
    net
}

#[test]
fn formula_matches_the_python_one() {
    let golden = Golden::load();
    let names: Vec<String> = golden
        .meta("weight_names")
        .lines()
        .map(String::from)
        .collect();
    let specs = ResNet18::tensor_specs();
    assert_eq!(
        names,
        specs.iter().map(|(n, _, _)| n.clone()).collect::<Vec<_>>(),
        "torchvision's encoder tensors, in order"
    );
    let sums = golden.f64("weights.sums");
    let (_, first) = golden.f32("weights.first");
    for (i, (name, kind, shape)) in specs.iter().enumerate() {
        let w = golden_tensor(name, &torch_shape(*kind, shape));
        assert_eq!(w[..4], first[i * 4..i * 4 + 4], "first values of {name}");
        let sum: f64 = w.iter().map(|&v| f64::from(v)).sum();
        assert!(
            (sum - sums[i]).abs() <= 1e-9 * sums[i].abs().max(1.0),
            "sum of {name}: {sum} here, {} in Python",
            sums[i]
        );
    }
}

#[test]
fn encoder_matches_torchvision_forward_and_backward() {
    let golden = Golden::load();
    let backend = cpu();
    let mut net = golden_encoder(&backend);
    let (mut errors, mut report) = (Vec::new(), Vec::new());

    // Inputs: NCHW in the file, NHWC here.
    let (shape, nchw) = golden.f32("input");
    let [n, c, h, w] = [shape[0], shape[1], shape[2], shape[3]];
    let mut nhwc = vec![0.0; nchw.len()];
    for b in 0..n {
        for ch in 0..c {
            for y in 0..h {
                for x in 0..w {
                    nhwc[((b * h + y) * w + x) * c + ch] = nchw[((b * c + ch) * h + y) * w + x];
                }
            }
        }
    }
    let input = backend.from_host(&nhwc, &[n, h, w, c]).unwrap();

    // Evaluation mode: running statistics from the formula.
    let mut g = Graph::new(backend.clone(), false);
    let x = g.constant(input.clone());
    let mut slots = ParamSlots::new(net.num_slots);
    let features = net.forward(&mut g, &x, &mut slots).unwrap();
    let ours = features.value.to_vec().unwrap();
    let (_, reference) = golden.f32("eval.features");
    check(
        &mut errors,
        &mut report,
        "eval.features",
        &ours,
        &reference,
        FORWARD_EVAL,
    );

    // Training mode: batch statistics, running statistics updated, then the gradients of
    // sum(features * loss_weights).
    let mut g = Graph::new(backend.clone(), true);
    let x = g.constant(input);
    let mut slots = ParamSlots::new(net.num_slots);
    let features = net.forward(&mut g, &x, &mut slots).unwrap();
    let ours = features.value.to_vec().unwrap();
    let (_, reference) = golden.f32("train.features");
    check(
        &mut errors,
        &mut report,
        "train.features",
        &ours,
        &reference,
        FORWARD_TRAIN,
    );
    let (_, loss_weights) = golden.f32("loss_weights");
    let loss: f64 = ours
        .iter()
        .zip(&loss_weights)
        .map(|(&f, &r)| f64::from(f) * f64::from(r))
        .sum();
    let (_, reference) = golden.f32("train.loss");
    check(
        &mut errors,
        &mut report,
        "train.loss",
        &[loss as f32],
        &reference,
        FORWARD_TRAIN,
    );

    let mut running_worst = (0.0, String::new());
    net.visit(&mut |name, kind, t| {
        if kind != TensorKind::Buffer {
            return;
        }
        let ours = t.to_vec().unwrap();
        let (_, reference) = golden.f32(&format!("running.{name}"));
        let (err, _) = relative_error(&ours, &reference);
        if err > running_worst.0 {
            running_worst = (err, name.to_string());
        }
        check(
            &mut errors,
            &mut Vec::new(),
            name,
            &ours,
            &reference,
            RUNNING_STATS,
        );
    });
    report.push(format!(
        "{:<44} {:.2e}  (bound {RUNNING_STATS:.0e})",
        format!("running stats (worst: {})", running_worst.1),
        running_worst.0
    ));

    let seed = backend
        .from_host(&loss_weights, features.value.shape())
        .unwrap();
    let grads = g.backward_from(&features, seed).unwrap();
    let params: Vec<(String, TensorKind, Vec<usize>)> = ResNet18::tensor_specs()
        .into_iter()
        .filter(|(_, kind, _)| *kind != TensorKind::Buffer)
        .collect();
    let torch_params: Vec<String> = golden
        .meta("parameters")
        .lines()
        .map(String::from)
        .collect();
    assert_eq!(
        params.iter().map(|(n, _, _)| n.clone()).collect::<Vec<_>>(),
        torch_params,
        "slot order is named_parameters() order"
    );
    let mut grad = HashMap::new();
    let (mut norms, mut sums) = (Vec::new(), Vec::new());
    for ((name, kind, shape), var) in params.iter().zip(slots.vars()) {
        let g = grads.get(var.unwrap()).unwrap().to_vec().unwrap();
        let g = match kind {
            TensorKind::ConvWeight => to_oihw(&g, shape),
            _ => g,
        };
        norms.push(g.iter().map(|&v| f64::from(v).powi(2)).sum::<f64>().sqrt() as f32);
        sums.push(g.iter().map(|&v| f64::from(v)).sum::<f64>() as f32);
        grad.insert(name.clone(), g);
    }
    for name in [
        "conv1.weight",
        "bn1.weight",
        "layer1.0.conv1.weight",
        "layer2.0.downsample.0.weight",
        "layer4.1.bn2.bias",
    ] {
        let (_, reference) = golden.f32(&format!("grad.{name}"));
        check(
            &mut errors,
            &mut report,
            &format!("grad.{name}"),
            &grad[name],
            &reference,
            GRADIENTS,
        );
    }
    let (_, reference) = golden.f32("grad_norms");
    check(
        &mut errors,
        &mut report,
        "grad_norms (all 60 parameters)",
        &norms,
        &reference,
        GRADIENTS,
    );
    // A sum's rounding error grows with the sum of its terms' magnitudes, not with the sum
    // (which cancels), so each sum is held relative to its tensor's L1 norm.
    let (_, ref_sums) = golden.f32("grad_sums");
    let (_, ref_abs_sums) = golden.f32("grad_abs_sums");
    let (sum_err, worst) = sums
        .iter()
        .zip(&ref_sums)
        .zip(&ref_abs_sums)
        .map(|((&s, &r), &l1)| (f64::from(s) - f64::from(r)).abs() / f64::from(l1))
        .zip(&params)
        .fold((0.0, ""), |(m, at), (e, (name, _, _))| {
            if worse(e, m) {
                (e, name.as_str())
            } else {
                (m, at)
            }
        });
    report.push(format!(
        "{:<44} {sum_err:.2e}  (bound {GRADIENTS:.0e})",
        format!("grad_sums / L1 (worst: {worst})")
    ));
    if sum_err.is_nan() || sum_err > GRADIENTS {
        errors.push(format!(
            "grad_sums: relative error {sum_err:.3e} at {worst}"
        ));
    }

    println!("max |ours - torchvision| / max |torchvision| (float64 reference):");
    for line in &report {
        println!("  {line}");
    }
    assert!(errors.is_empty(), "{}", errors.join("\n"));
}

#[test]
fn saved_model_loads_back_into_torchvision() {
    let golden = Golden::load();
    let backend = cpu();
    let config = ModelConfig {
        label_names: vec!["a".into(), "b".into()],
        multilabel: false,
        image_size: 32,
        margin: 0.2,
        scale: 16.0,
        mean: IMAGENET_MEAN,
        std: IMAGENET_STD,
    };
    let mut model = Model::new(backend, config, 3).unwrap();
    let weights =
        TorchvisionWeights::from_bytes(&golden_state_dict(), Path::new("golden")).unwrap();
    model.load_encoder(&weights).unwrap();
    let dir = std::env::temp_dir().join(format!("labelwise-golden-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("model.safetensors");
    model.save(&path).unwrap();
    let bytes = std::fs::read(&path).unwrap();
    std::fs::remove_dir_all(&dir).ok();
    let saved = SafeTensors::deserialize(&bytes).unwrap();

    // torchvision's state dict, less what we do not have (the classifier, batch norm's step
    // counters), plus our head, is exactly what we save: `load_state_dict(strict=False)`
    // then reports fc.weight and fc.bias missing and cosface.weight unexpected, nothing else.
    let mut torchvision: Vec<(String, Vec<usize>)> = golden
        .meta("state_dict")
        .lines()
        .map(|line| {
            let mut parts = line.split(' ');
            let name = parts.next().unwrap().to_string();
            let shape = parts.next().unwrap_or("");
            let shape = shape
                .split('x')
                .filter(|s| !s.is_empty())
                .map(|d| d.parse().unwrap());
            (name, shape.collect())
        })
        .filter(|(name, _)| !name.starts_with("fc.") && !name.ends_with("num_batches_tracked"))
        .collect();
    torchvision.push(("cosface.weight".into(), vec![2, 512]));
    torchvision.sort();
    let mut ours: Vec<(String, Vec<usize>)> = saved
        .tensors()
        .into_iter()
        .map(|(name, view)| (name, view.shape().to_vec()))
        .collect();
    ours.sort();
    assert_eq!(ours, torchvision);

    // And in torchvision's layout, bit for bit what was loaded.
    for (name, kind, shape) in ResNet18::tensor_specs() {
        let expected = golden_tensor(&name, &torch_shape(kind, &shape));
        let view = saved.tensor(&name).unwrap();
        let data: Vec<f32> = bytemuck::pod_collect_to_vec(view.data());
        assert!(data == expected, "{name} differs after save");
    }
}

#[test]
fn initial_model_takes_the_encoder_and_seeds_the_head() {
    let weights =
        TorchvisionWeights::from_bytes(&golden_state_dict(), Path::new("golden")).unwrap();
    let settings = ModelSettings {
        init_encoder: Some(Arc::new(weights)),
        ..ModelSettings::default()
    };
    let config = ModelConfig {
        label_names: vec!["a".into(), "b".into(), "c".into()],
        multilabel: false,
        image_size: 32,
        margin: 0.2,
        scale: 16.0,
        mean: IMAGENET_MEAN,
        std: IMAGENET_STD,
    };
    let tensors = |seed| {
        let mut model = settings.initial_model(cpu(), config.clone(), seed).unwrap();
        let mut out = HashMap::new();
        model.visit(&mut |name, _, t| {
            out.insert(name.to_string(), t.to_vec().unwrap());
        });
        out
    };
    let (a, b) = (tensors(1), tensors(2));
    assert_ne!(
        a["cosface.weight"], b["cosface.weight"],
        "the head follows the seed"
    );
    for (name, kind, shape) in ResNet18::tensor_specs() {
        let expected = golden_tensor(&name, &torch_shape(kind, &shape));
        let ours = match kind {
            TensorKind::ConvWeight => to_oihw(&a[&name], &shape),
            _ => a[&name].clone(),
        };
        assert!(
            ours == expected && a[&name] == b[&name],
            "{name} is not the weights'"
        );
    }
}
