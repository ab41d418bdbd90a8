//! ResNet18 + CosFace on the CPU backend: shapes, parameter count, learning, save and load.

use std::sync::Arc;

use labelwise::autograd::Graph;
use labelwise::backend::cpu::CpuBackend;
use labelwise::model::{Model, ModelConfig, IMAGENET_MEAN, IMAGENET_STD};
use labelwise::optim::{Adam, AdamConfig};
use labelwise::{BackendHandle, Tensor};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

fn cpu() -> BackendHandle {
    Arc::new(CpuBackend)
}

fn config(labels: usize, multilabel: bool, size: usize) -> ModelConfig {
    ModelConfig {
        label_names: (0..labels).map(|i| format!("label{i}")).collect(),
        multilabel,
        image_size: size,
        margin: 0.2,
        scale: 16.0,
        mean: IMAGENET_MEAN,
        std: IMAGENET_STD,
    }
}

fn random_images(n: usize, size: usize, seed: u64) -> Vec<f32> {
    let mut rng = StdRng::seed_from_u64(seed);
    (0..n * size * size * 3)
        .map(|_| rng.random::<f32>() * 2.0 - 1.0)
        .collect()
}

#[test]
fn resnet18_has_torchvision_parameter_count() {
    let mut model = Model::new(cpu(), config(10, false, 32), 0).unwrap();
    // torchvision's resnet18 has 11,689,512 parameters; without fc (512 * 1000 + 1000) that
    // leaves 11,176,512.
    assert_eq!(model.encoder_parameters(), 11_176_512);
    let mut names = Vec::new();
    model.visit(&mut |name, _, _| names.push(name.to_string()));
    for expected in [
        "conv1.weight",
        "bn1.running_var",
        "layer1.0.conv1.weight",
        "layer2.0.downsample.0.weight",
        "layer4.1.bn2.bias",
        "cosface.weight",
    ] {
        assert!(names.iter().any(|n| n == expected), "missing {expected}");
    }
}

#[test]
fn forward_shapes_for_odd_sizes() {
    for (n, size) in [(1, 32), (3, 37), (2, 64)] {
        let backend = cpu();
        let mut model = Model::new(backend.clone(), config(5, false, size), 1).unwrap();
        let x = Tensor::from_vec(random_images(n, size, 2), &[n, size, size, 3]).unwrap();
        let mut g = Graph::new(backend, false);
        let out = model.forward(&mut g, x, None).unwrap();
        assert_eq!(out.embeddings.shape(), &[n, 512]);
        assert_eq!(out.logits.value.shape(), &[n, 5]);
        let logits = out.logits.value.to_vec().unwrap();
        // Margin-free logits are scale * cosine, so within [-scale, scale].
        assert!(logits
            .iter()
            .all(|v| v.is_finite() && v.abs() <= 16.0 + 1e-4));
    }
}

/// A few Adam steps on one fixed batch must lower its loss (softmax and multi-label).
#[test]
fn training_steps_lower_the_loss() {
    for multilabel in [false, true] {
        let backend = cpu();
        let (n, size, l) = (8, 32, 4);
        let mut model = Model::new(backend.clone(), config(l, multilabel, size), 3).unwrap();
        let mut adam = Adam::new(
            &mut model,
            AdamConfig {
                lr: 1e-3,
                ..AdamConfig::default()
            },
        )
        .unwrap();
        let images = random_images(n, size, 4);
        let mut targets = vec![0.0f32; n * l];
        for i in 0..n {
            targets[i * l + i % l] = 1.0;
            if multilabel && i % 3 == 0 {
                targets[i * l + (i + 1) % l] = 1.0;
            }
        }
        let t = backend.from_host(&targets, &[n, l]).unwrap();
        let mut losses = Vec::new();
        for _ in 0..6 {
            let x = backend.from_host(&images, &[n, size, size, 3]).unwrap();
            let mut g = Graph::new(backend.clone(), true);
            let fwd = model.forward(&mut g, x, Some(&t)).unwrap();
            let loss = g.cross_entropy(&fwd.logits, &t, multilabel).unwrap();
            losses.push(loss.value.scalar().unwrap());
            let grads = g.backward(&loss).unwrap();
            adam.update(&mut model, grads, fwd.slots).unwrap();
        }
        assert!(
            losses.last().unwrap() < &(losses[0] * 0.8),
            "multilabel={multilabel}: loss did not fall: {losses:?}"
        );
    }
}

#[test]
fn save_and_load_round_trip() {
    let backend = cpu();
    let mut model = Model::new(backend.clone(), config(3, true, 32), 5).unwrap();
    let dir = std::env::temp_dir().join(format!("labelwise-model-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("m.safetensors");
    model.save(&path).unwrap();

    let mut loaded = Model::load(&path, backend.clone()).unwrap();
    assert_eq!(loaded.config, model.config);
    let x = Tensor::from_vec(random_images(2, 32, 6), &[2, 32, 32, 3]).unwrap();
    let a = model
        .forward(&mut Graph::new(backend.clone(), false), x.clone(), None)
        .unwrap();
    let b = loaded
        .forward(&mut Graph::new(backend.clone(), false), x, None)
        .unwrap();
    assert_eq!(
        a.logits.value.to_vec().unwrap(),
        b.logits.value.to_vec().unwrap()
    );

    // Convolution weights are stored in torchvision's [Co, Ci, kh, kw] layout.
    let bytes = std::fs::read(&path).unwrap();
    let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    assert_eq!(file.tensor("conv1.weight").unwrap().shape(), &[64, 3, 7, 7]);
    assert_eq!(
        file.tensor("layer2.0.downsample.0.weight").unwrap().shape(),
        &[128, 64, 1, 1]
    );

    // A file missing a tensor is an error naming it.
    let mut views = Vec::new();
    for (name, view) in file.tensors() {
        if name != "layer3.1.bn1.weight" {
            views.push((name, view));
        }
    }
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let broken = safetensors::serialize(views, meta.metadata().clone()).unwrap();
    let broken_path = dir.join("broken.safetensors");
    std::fs::write(&broken_path, broken).unwrap();
    let err = Model::load(&broken_path, backend)
        .err()
        .expect("load must fail")
        .to_string();
    assert!(err.contains("layer3.1.bn1.weight"), "{err}");
    std::fs::remove_dir_all(&dir).ok();
}
