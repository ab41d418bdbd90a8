//! ResNet18 + CosFace training on the CUDA backend against the CPU reference, from the same
//! initial weights: two Adam steps must give the same losses and weights within tolerance.
//!
//! Without a GPU the CUDA backend runs on the PTX interpreter, so this runs in CI.

use std::sync::Arc;

use labelwise::autograd::Graph;
use labelwise::backend::cpu::CpuBackend;
use labelwise::backend::cuda::CudaBackend;
use labelwise::model::{Model, ModelConfig, TensorKind, IMAGENET_MEAN, IMAGENET_STD};
use labelwise::optim::{Adam, AdamConfig};
use labelwise::BackendHandle;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const LR: f32 = 1e-4;

/// Losses of `steps` Adam steps and the final weights (name, values).
fn train(
    backend: BackendHandle,
    multilabel: bool,
    steps: usize,
) -> (Vec<f32>, Vec<(String, Vec<f32>)>) {
    let (n, size, l) = (4, 16, 3);
    let config = ModelConfig {
        label_names: (0..l).map(|i| format!("l{i}")).collect(),
        multilabel,
        image_size: size,
        margin: 0.2,
        scale: 16.0,
        mean: IMAGENET_MEAN,
        std: IMAGENET_STD,
    };
    let mut model = Model::new(backend.clone(), config, 7).unwrap();
    let mut adam = Adam::new(
        &mut model,
        AdamConfig {
            lr: LR,
            ..AdamConfig::default()
        },
    )
    .unwrap();
    let mut rng = StdRng::seed_from_u64(11);
    let images: Vec<f32> = (0..n * size * size * 3)
        .map(|_| rng.random::<f32>() * 2.0 - 1.0)
        .collect();
    let mut targets = vec![0.0f32; n * l];
    for i in 0..n {
        targets[i * l + i % l] = 1.0;
        if multilabel && i % 2 == 0 {
            targets[i * l + (i + 1) % l] = 1.0;
        }
    }
    let t = backend.from_host(&targets, &[n, l]).unwrap();
    let mut losses = Vec::new();
    for _ in 0..steps {
        let x = backend.from_host(&images, &[n, size, size, 3]).unwrap();
        let mut g = Graph::new(backend.clone(), true);
        let fwd = model.forward(&mut g, x, Some(&t)).unwrap();
        let loss = g.cross_entropy(&fwd.logits, &t, multilabel).unwrap();
        losses.push(loss.value.scalar().unwrap());
        let grads = g.backward(&loss).unwrap();
        adam.update(&mut model, grads, fwd.slots).unwrap();
    }
    let mut weights = Vec::new();
    model.visit(&mut |name, kind, t| {
        if kind != TensorKind::Buffer
            || name.ends_with("running_mean")
            || name.ends_with("running_var")
        {
            weights.push((name.to_string(), t.to_vec().unwrap()));
        }
    });
    (losses, weights)
}

#[test]
fn two_training_steps_match_the_cpu() {
    // LABELWISE_TEST_DEVICE=gpu (the GPU check script) refuses the interpreter.
    let want_gpu = std::env::var("LABELWISE_TEST_DEVICE").is_ok_and(|v| v == "gpu");
    let opened = match CudaBackend::open(0) {
        Err(_) if !want_gpu => CudaBackend::emulated(),
        other => other,
    };
    let gpu: BackendHandle = match opened {
        Ok(b) => b,
        Err(e) => {
            eprintln!("SKIPPED two_training_steps_match_the_cpu: no CUDA backend ({e})");
            return;
        }
    };
    for multilabel in [false, true] {
        let (cpu_losses, cpu_weights) = train(Arc::new(CpuBackend), multilabel, 2);
        let (gpu_losses, gpu_weights) = train(gpu.clone(), multilabel, 2);

        for (step, (c, g)) in cpu_losses.iter().zip(&gpu_losses).enumerate() {
            assert!(
                (c - g).abs() <= 1e-3 * c.abs().max(1.0),
                "multilabel={multilabel} step {}: loss cpu {c} cuda {g}",
                step + 1
            );
        }

        // Adam's first steps move every weight by about ±lr whatever the gradient's size, so
        // a gradient near zero whose sign differs between backends moves a weight by up to
        // 2 lr more on one side. The bound is that; the mean difference must stay far below.
        let (mut worst, mut worst_name, mut sum, mut count) = (0f32, String::new(), 0f64, 0usize);
        for ((name, c), (_, g)) in cpu_weights.iter().zip(&gpu_weights) {
            for (a, b) in c.iter().zip(g) {
                let d = (a - b).abs();
                let tol = 2.0 * 2.0 * LR + 1e-3 * a.abs();
                if d / tol > worst {
                    worst = d / tol;
                    worst_name = format!("{name}: cpu {a} cuda {b}");
                }
                sum += d as f64;
                count += 1;
            }
        }
        assert!(
            worst <= 1.0,
            "multilabel={multilabel}: weight differs beyond tolerance: {worst_name}"
        );
        let mean = sum / count as f64;
        assert!(
            mean < (LR as f64) / 20.0,
            "multilabel={multilabel}: mean weight difference {mean}"
        );
    }
}
