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
use crate::optim::{self, Adam, AdamConfig};
use crate::tensor::Tensor;

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
    /// Reports of the epochs that finished (with those before a resume).
    pub epochs: Vec<EpochReport>,
    /// Images processed: one per training image per epoch, plus validation images scored.
    pub images: u64,
    /// Whether `stop` ended training before `cfg.epochs` epochs.
    pub stopped: bool,
    /// Seconds the training took, with those before a resume.
    pub seconds: f64,
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
    let hooks = FitHooks {
        progress: Some(progress),
        stop: Some(stop),
        ..FitHooks::default()
    };
    fit_with(model, data, train, val, cfg, hooks)
}

/// Where a training run stands between two optimiser steps.
///
/// With the model's tensors (weights and running statistics) and the optimiser's moments it is
/// all a run needs to continue exactly as if it had not stopped: each epoch's batch order is
/// re-derived from [`TrainConfig::seed`] by replaying the epochs' shuffles, and the learning
/// rate from the step.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct FitState {
    /// Epochs finished.
    pub epochs_done: usize,
    /// Batches finished in the epoch under way (0 between epochs).
    pub batches_done: usize,
    /// Optimiser steps taken.
    pub steps: u32,
    /// Images processed so far (see [`FitOutcome::images`]).
    pub images: u64,
    /// Reports of the finished epochs.
    pub reports: Vec<EpochReport>,
    /// The epoch under way: its batch losses summed (each times its batch size) ...
    pub loss_sum: f64,
    /// ... over this many images, whose 0/1 targets and predictions (`[seen, L]`) give the
    /// epoch's training metrics.
    pub seen: usize,
    pub y_true: Vec<u8>,
    pub y_pred: Vec<u8>,
    /// Seconds of training up to this point; the run's clock continues from here.
    pub seconds: f64,
}

/// A training run to continue: its state and the optimiser's moments (first, second) per
/// trainable tensor in slot order, on the model's backend.
pub struct FitResume {
    pub state: FitState,
    pub moments: Vec<(Tensor, Tensor)>,
}

/// What a checkpoint hook of [`fit_with`] sees.
pub struct FitPoint<'a> {
    pub model: &'a mut Model,
    pub adam: &'a Adam,
    pub state: &'a FitState,
    /// Whether an epoch just ended (else a step within an epoch did).
    pub epoch_end: bool,
}

/// A checkpoint writer called by [`fit_with`] (see [`FitHooks::checkpoint`]).
pub type CheckpointHook<'a> = dyn FnMut(FitPoint) -> Result<()> + 'a;

/// A gradient inspector called by [`fit_with`] (see [`FitHooks::gradients`]).
pub type GradientHook<'a> = dyn FnMut(usize, &mut [Option<Tensor>]) + 'a;

/// The optional parts of [`fit_with`].
#[derive(Default)]
pub struct FitHooks<'a> {
    /// Batch and epoch progress.
    pub progress: Option<&'a mut dyn FnMut(Progress)>,
    /// Asked before every batch and validation pass with the images processed so far; `true`
    /// ends training early ([`FitOutcome::stopped`]).
    pub stop: Option<&'a mut dyn FnMut(u64) -> bool>,
    /// Called after every optimiser step but an epoch's last, and at every epoch end, with the
    /// model and state as they are then; a checkpoint writer decides there whether to save.
    /// Its error ends training.
    pub checkpoint: Option<&'a mut CheckpointHook<'a>>,
    /// Sees, and may change, each step's gradients (slot order) before they are checked and
    /// applied: for diagnostics and fault-injection tests. Gets the step (from 1).
    pub gradients: Option<&'a mut GradientHook<'a>>,
    /// Continue a run from this state instead of starting it.
    pub resume: Option<FitResume>,
}

/// Whether a resumed state can belong to this run (`batches` per epoch, `l` labels).
fn check_resume(state: &FitState, cfg: &TrainConfig, batches: usize, l: usize) -> Result<()> {
    let bad = |what: String| {
        Err(Error::InvalidArgument(format!(
            "the training state to resume does not fit this run: {what}"
        )))
    };
    if state.epochs_done > cfg.epochs {
        return bad(format!(
            "{} of {} epochs done",
            state.epochs_done, cfg.epochs
        ));
    }
    if state.batches_done >= batches.max(1) {
        return bad(format!("{} of {batches} batches done", state.batches_done));
    }
    let steps = state.epochs_done * batches + state.batches_done;
    if state.steps as usize != steps {
        return bad(format!("{} steps taken, {steps} expected", state.steps));
    }
    if state.reports.len() != state.epochs_done {
        return bad(format!(
            "{} epoch reports for {} epochs",
            state.reports.len(),
            state.epochs_done
        ));
    }
    if state.y_true.len() != state.seen * l || state.y_pred.len() != state.seen * l {
        return bad("the epoch's predictions do not match its image count".into());
    }
    Ok(())
}

/// [`fit_until`] with every hook: checkpoints, a gradient hook, and a state to resume from.
///
/// A NaN or infinite loss or gradient ends training with [`Error::NonFinite`] naming the epoch,
/// the step and the tensor (the loss function or the parameter), before the update is applied,
/// so no checkpoint ever holds the bad step. The gradient check costs one reduction per tensor
/// and one read-back per step (see [`optim::find_non_finite`]).
pub fn fit_with(
    model: &mut Model,
    data: &Dataset,
    train: &[usize],
    val: &[usize],
    cfg: &TrainConfig,
    mut hooks: FitHooks,
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
    let loss_name = match multilabel {
        true => "sigmoid cross-entropy",
        false => "softmax cross-entropy",
    };
    // Batch norm needs two samples per channel; a trailing batch of one is dropped.
    let batch_size = cfg.batch_size.max(2);
    let batches_per_epoch = train.len() / batch_size + usize::from(train.len() % batch_size >= 2);
    let mut adam = Adam::new(model, cfg.adam)?;
    let mut st = FitState::default();
    if let Some(resume) = hooks.resume.take() {
        check_resume(&resume.state, cfg, batches_per_epoch, num_labels)?;
        adam.restore(resume.state.steps, resume.moments)?;
        st = resume.state;
    }
    let mut progress = |p: Progress| {
        if let Some(f) = hooks.progress.as_mut() {
            f(p)
        }
    };
    let mut stop = |n: u64| hooks.stop.as_mut().is_some_and(|f| f(n));
    let mut checkpoint = |point: FitPoint| match hooks.checkpoint.as_mut() {
        Some(f) => f(point),
        None => Ok(()),
    };
    let mut rng = StdRng::seed_from_u64(cfg.seed);
    let start = Instant::now();
    let seconds_before = st.seconds;
    let elapsed = || seconds_before + start.elapsed().as_secs_f64();
    let stopped = |st: FitState| FitOutcome {
        epochs: st.reports,
        images: st.images,
        stopped: true,
        seconds: elapsed(),
    };

    for epoch in 1..=cfg.epochs {
        // Every epoch shuffles, also one finished before a resume: that keeps the generator
        // where an uninterrupted run has it.
        let mut order = train.to_vec();
        order.shuffle(&mut rng);
        if epoch <= st.epochs_done {
            continue;
        }
        let batches: Vec<&[usize]> = order.chunks(batch_size).filter(|b| b.len() >= 2).collect();

        for (b, idx) in batches.iter().enumerate().skip(st.batches_done) {
            if stop(st.images) {
                return Ok(stopped(st));
            }
            progress(Progress::Batch {
                epoch,
                batch: b,
                batches: batches.len(),
            });

            // Forward with the margin, backward, check, update.
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
            let at = format!("batch {} of {}", b + 1, batches.len());
            if !loss_value.is_finite() {
                return Err(Error::NonFinite {
                    kind: "loss",
                    tensor: loss_name.into(),
                    epoch,
                    step,
                    detail: format!("the loss is {loss_value} ({at})"),
                });
            }
            let mut grads = optim::gradients_by_slot(g.backward(&loss)?, fwd.slots);
            if let Some(inspect) = hooks.gradients.as_mut() {
                inspect(step, &mut grads);
            }
            if let Some(bad) = optim::find_non_finite(model, &grads)? {
                return Err(Error::NonFinite {
                    kind: "gradient",
                    tensor: bad.tensor,
                    epoch,
                    step,
                    detail: format!(
                        "{} of {} elements are NaN or infinite ({at})",
                        bad.count, bad.len
                    ),
                });
            }
            adam.config.lr =
                cfg.adam.lr * cfg.lr_schedule.factor(step - 1, cfg.epochs * batches.len());
            adam.apply(model, &grads)?;
            drop(grads);

            // Training metrics from the margin-free logits of the same forward pass.
            let plain =
                backend.cosface_fwd(&fwd.embeddings, &model.head, None, model.config.cosface())?;
            let probs = backend.to_host(&backend.probabilities(&plain, multilabel)?)?;
            st.y_pred
                .extend(metrics::predict(&probs, num_labels, multilabel)?);
            st.y_true.extend(labels.iter().map(|&v| v as u8));
            st.loss_sum += loss_value as f64 * idx.len() as f64;
            st.seen += idx.len();
            st.images += idx.len() as u64;
            st.batches_done = b + 1;
            st.steps = adam.step;
            if b + 1 < batches.len() {
                st.seconds = elapsed();
                checkpoint(FitPoint {
                    model,
                    adam: &adam,
                    state: &st,
                    epoch_end: false,
                })?;
            }
        }
        if !val.is_empty() && stop(st.images) {
            return Ok(stopped(st));
        }

        let train_report = SplitReport {
            loss: st.loss_sum / st.seen.max(1) as f64,
            metrics: metrics::evaluate(&st.y_true, &st.y_pred, num_labels)?,
        };
        let val_report = match val.is_empty() {
            true => None,
            false => Some(evaluate(model, data, val, cfg.batch_size)?),
        };
        st.images += val.len() as u64;
        let report = EpochReport {
            epoch,
            epochs: cfg.epochs,
            train: train_report,
            val: val_report,
            elapsed_s: elapsed(),
        };
        progress(Progress::Epoch(&report));
        st.reports.push(report);
        st.epochs_done = epoch;
        st.batches_done = 0;
        st.loss_sum = 0.0;
        st.seen = 0;
        st.y_true.clear();
        st.y_pred.clear();
        st.seconds = elapsed();
        checkpoint(FitPoint {
            model,
            adam: &adam,
            state: &st,
            epoch_end: true,
        })?;
    }
    Ok(FitOutcome {
        seconds: elapsed(),
        epochs: st.reports,
        images: st.images,
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
