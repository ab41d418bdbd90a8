//! Training, inference and evaluation loops over a [`Dataset`].

use std::time::Instant;

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::SeedableRng;

use crate::active::metrics::{self, Metrics};
use crate::autograd::Graph;
use crate::data::{Dataset, Normalize};
use crate::error::{Error, Result};
use crate::model::{Model, EMBEDDING_DIM};
use crate::optim::{Adam, AdamConfig};

/// How to train.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainConfig {
    pub epochs: usize,
    pub batch_size: usize,
    pub adam: AdamConfig,
    /// Seeds the batch order (and, through the caller, the validation split).
    pub seed: u64,
    pub lr_schedule: LrSchedule,
}

/// How the learning rate moves over a training run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LrSchedule {
    Constant,
    /// Half a cosine from the base rate down to zero at the last step: the final epochs take
    /// small steps, so the last epoch's model is not an arbitrary point of a noisy walk.
    #[default]
    Cosine,
}

impl LrSchedule {
    /// The factor on the base rate at `step` (from 0) of `total`.
    pub fn factor(self, step: usize, total: usize) -> f32 {
        match self {
            LrSchedule::Constant => 1.0,
            LrSchedule::Cosine => {
                let t = step as f64 / total.max(1) as f64;
                (0.5 * (1.0 + (std::f64::consts::PI * t).cos())) as f32
            }
        }
    }
}

impl Default for TrainConfig {
    /// The CLI's defaults: 8 epochs of batch 32 with Adam at 1e-3.
    fn default() -> Self {
        TrainConfig {
            epochs: 8,
            batch_size: 32,
            adam: AdamConfig::default(),
            seed: 0,
            lr_schedule: LrSchedule::Cosine,
        }
    }
}

/// Loss and metrics of one split.
#[derive(Debug, Clone, PartialEq)]
pub struct SplitReport {
    pub loss: f64,
    pub metrics: Metrics,
}

/// One epoch's line.
#[derive(Debug, Clone, PartialEq)]
pub struct EpochReport {
    pub epoch: usize,
    pub epochs: usize,
    pub train: SplitReport,
    pub val: Option<SplitReport>,
    /// Seconds since training started.
    pub elapsed_s: f64,
}

/// What a training loop tells its caller as it goes.
pub enum Progress<'a> {
    Batch {
        epoch: usize,
        batch: usize,
        batches: usize,
    },
    Epoch(&'a EpochReport),
}

/// Margin-free outputs for a set of images.
pub struct Inference {
    /// `[n, 512]`
    pub embeddings: Vec<f32>,
    /// `[n, L]`, margin-free (what predictions and uncertainty use).
    pub logits: Vec<f32>,
    /// `[n, L]`: row softmax, or per-label sigmoid for multi-label models.
    pub probabilities: Vec<f32>,
}

/// Splits `indices` into (train, validation) with a seeded shuffle.
pub fn split_train_val(
    indices: &[usize],
    val_fraction: f32,
    seed: u64,
) -> (Vec<usize>, Vec<usize>) {
    let mut shuffled = indices.to_vec();
    shuffled.shuffle(&mut StdRng::seed_from_u64(seed));
    let n_val = ((indices.len() as f32) * val_fraction.clamp(0.0, 1.0)).round() as usize;
    let n_val = n_val.min(indices.len().saturating_sub(2));
    let val = shuffled.split_off(shuffled.len() - n_val);
    (shuffled, val)
}

fn normalize_of(model: &Model) -> Normalize {
    Normalize {
        mean: model.config.mean,
        std: model.config.std,
    }
}

fn check_data(model: &Model, data: &Dataset, labelled: bool) -> Result<()> {
    if data.size != model.config.image_size {
        return Err(Error::InvalidArgument(format!(
            "images were loaded at {}px but the model takes {}px",
            data.size, model.config.image_size
        )));
    }
    if labelled {
        if data.labels.is_none() {
            return Err(Error::InvalidArgument(
                "training needs labelled data".into(),
            ));
        }
        if data.label_names != model.config.label_names {
            return Err(Error::InvalidArgument(format!(
                "the data's labels {:?} differ from the model's {:?}",
                data.label_names, model.config.label_names
            )));
        }
    }
    Ok(())
}

/// Trains `model` on `train` for `cfg.epochs`, evaluating on `val` after every epoch.
pub fn fit(
    model: &mut Model,
    data: &Dataset,
    train: &[usize],
    val: &[usize],
    cfg: &TrainConfig,
    progress: &mut dyn FnMut(Progress),
) -> Result<Vec<EpochReport>> {
    Ok(fit_until(model, data, train, val, cfg, progress, &mut |_| false)?.epochs)
}

/// What [`fit_until`] did.
#[derive(Debug, Clone, PartialEq)]
pub struct FitOutcome {
    /// Reports of the epochs that finished.
    pub epochs: Vec<EpochReport>,
    /// Images processed: one per training image per epoch, plus validation images scored.
    pub images: u64,
    /// Whether `stop` ended training before `cfg.epochs` epochs.
    pub stopped: bool,
}

/// [`fit`] that asks `stop(images processed so far)` before every batch and every validation
/// pass, and returns early (with the epochs finished so far) when it answers `true`. This is how
/// a compute budget interrupts training: the model keeps the updates made up to that point.
pub fn fit_until(
    model: &mut Model,
    data: &Dataset,
    train: &[usize],
    val: &[usize],
    cfg: &TrainConfig,
    progress: &mut dyn FnMut(Progress),
    stop: &mut dyn FnMut(u64) -> bool,
) -> Result<FitOutcome> {
    check_data(model, data, true)?;
    if train.len() < 2 {
        return Err(Error::InvalidArgument(format!(
            "training needs at least 2 labelled images, got {}",
            train.len()
        )));
    }
    let backend = model.backend().clone();
    let norm = normalize_of(model);
    let multilabel = model.config.multilabel;
    let num_labels = model.num_labels();
    let mut adam = Adam::new(model, cfg.adam)?;
    let mut rng = StdRng::seed_from_u64(cfg.seed);
    let start = Instant::now();
    let mut reports = Vec::with_capacity(cfg.epochs);
    let mut processed = 0u64;

    for epoch in 1..=cfg.epochs {
        let mut order = train.to_vec();
        order.shuffle(&mut rng);
        // Batch norm needs two samples per channel; a trailing batch of one is dropped.
        let batches: Vec<&[usize]> = order
            .chunks(cfg.batch_size.max(2))
            .filter(|b| b.len() >= 2)
            .collect();
        let (mut loss_sum, mut seen) = (0.0f64, 0usize);
        let (mut y_true, mut y_pred) = (Vec::new(), Vec::new());

        for (b, idx) in batches.iter().enumerate() {
            if stop(processed) {
                return Ok(FitOutcome {
                    epochs: reports,
                    images: processed,
                    stopped: true,
                });
            }
            progress(Progress::Batch {
                epoch,
                batch: b,
                batches: batches.len(),
            });

            // Forward with the margin, backward, update.
            let images = backend.from_host(
                &data.batch_pixels(idx, &norm),
                &image_shape(data, idx.len()),
            )?;
            let labels = data.label_rows(idx)?;
            let targets = backend.from_host(&labels, &[idx.len(), num_labels])?;
            let mut g = Graph::new(backend.clone(), true);
            let fwd = model.forward(&mut g, images, Some(&targets))?;
            let loss = g.cross_entropy(&fwd.logits, &targets, multilabel)?;
            let loss_value = loss.value.scalar()?;
            let step = (epoch - 1) * batches.len() + b + 1;
            if !loss_value.is_finite() {
                return Err(Error::NonFinite {
                    tensor: "loss".into(),
                    step,
                    detail: format!("loss is {loss_value} at epoch {epoch}, batch {}", b + 1),
                });
            }
            let grads = g.backward(&loss)?;
            adam.config.lr =
                cfg.adam.lr * cfg.lr_schedule.factor(step - 1, cfg.epochs * batches.len());
            adam.update(model, grads, fwd.slots)?;

            // Training metrics from the margin-free logits of the same forward pass.
            let plain =
                backend.cosface_fwd(&fwd.embeddings, &model.head, None, model.config.cosface())?;
            let probs = backend.to_host(&backend.probabilities(&plain, multilabel)?)?;
            y_pred.extend(metrics::predict(&probs, num_labels, multilabel)?);
            y_true.extend(labels.iter().map(|&v| v as u8));
            loss_sum += loss_value as f64 * idx.len() as f64;
            seen += idx.len();
            processed += idx.len() as u64;
        }
        if !val.is_empty() && stop(processed) {
            return Ok(FitOutcome {
                epochs: reports,
                images: processed,
                stopped: true,
            });
        }

        let train_report = SplitReport {
            loss: loss_sum / seen.max(1) as f64,
            metrics: metrics::evaluate(&y_true, &y_pred, num_labels)?,
        };
        let val_report = match val.is_empty() {
            true => None,
            false => Some(evaluate(model, data, val, cfg.batch_size)?),
        };
        processed += val.len() as u64;
        let report = EpochReport {
            epoch,
            epochs: cfg.epochs,
            train: train_report,
            val: val_report,
            elapsed_s: start.elapsed().as_secs_f64(),
        };
        progress(Progress::Epoch(&report));
        reports.push(report);
    }
    Ok(FitOutcome {
        epochs: reports,
        images: processed,
        stopped: false,
    })
}

fn image_shape(data: &Dataset, n: usize) -> [usize; 4] {
    [n, data.size, data.size, 3]
}

/// Runs the model in evaluation mode over `indices`, in batches.
pub fn infer(
    model: &mut Model,
    data: &Dataset,
    indices: &[usize],
    batch_size: usize,
) -> Result<Inference> {
    check_data(model, data, false)?;
    let backend = model.backend().clone();
    let norm = normalize_of(model);
    let l = model.num_labels();
    let mut out = Inference {
        embeddings: Vec::with_capacity(indices.len() * EMBEDDING_DIM),
        logits: Vec::with_capacity(indices.len() * l),
        probabilities: Vec::with_capacity(indices.len() * l),
    };
    for idx in indices.chunks(batch_size.max(1)) {
        let images = backend.from_host(
            &data.batch_pixels(idx, &norm),
            &image_shape(data, idx.len()),
        )?;
        let mut g = Graph::new(backend.clone(), false);
        let fwd = model.forward(&mut g, images, None)?;
        let probs = backend.probabilities(&fwd.logits.value, model.config.multilabel)?;
        out.embeddings.extend(backend.to_host(&fwd.embeddings)?);
        out.logits.extend(backend.to_host(&fwd.logits.value)?);
        out.probabilities.extend(backend.to_host(&probs)?);
    }
    Ok(out)
}

/// Loss (with the training margin, so it compares with the training loss) and metrics (from
/// margin-free predictions) over labelled `indices`.
pub fn evaluate(
    model: &mut Model,
    data: &Dataset,
    indices: &[usize],
    batch_size: usize,
) -> Result<SplitReport> {
    check_data(model, data, true)?;
    let backend = model.backend().clone();
    let norm = normalize_of(model);
    let (l, multilabel) = (model.num_labels(), model.config.multilabel);
    let (mut loss_sum, mut y_true, mut y_pred) = (0.0f64, Vec::new(), Vec::new());
    for idx in indices.chunks(batch_size.max(1)) {
        let images = backend.from_host(
            &data.batch_pixels(idx, &norm),
            &image_shape(data, idx.len()),
        )?;
        let labels = data.label_rows(idx)?;
        let targets = backend.from_host(&labels, &[idx.len(), l])?;
        let mut g = Graph::new(backend.clone(), false);
        let fwd = model.forward(&mut g, images, None)?;
        let margin_logits = backend.cosface_fwd(
            &fwd.embeddings,
            &model.head,
            Some(&targets),
            model.config.cosface(),
        )?;
        let loss = match multilabel {
            false => backend.softmax_xent_fwd(&margin_logits, &targets)?,
            true => backend.sigmoid_xent_fwd(&margin_logits, &targets)?,
        };
        loss_sum += loss.scalar()? as f64 * idx.len() as f64;
        let probs = backend.to_host(&backend.probabilities(&fwd.logits.value, multilabel)?)?;
        y_pred.extend(metrics::predict(&probs, l, multilabel)?);
        y_true.extend(labels.iter().map(|&v| v as u8));
    }
    Ok(SplitReport {
        loss: loss_sum / indices.len().max(1) as f64,
        metrics: metrics::evaluate(&y_true, &y_pred, l)?,
    })
}
