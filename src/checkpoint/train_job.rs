//! `labelwise train` with checkpoints: a training run that saves itself as it goes and
//! continues from its last checkpoint.

use serde_json::json;

use super::codec;
use super::Saver;
use super::{fingerprint, model_identity, recipe_identity, weights_fingerprint};
use super::{Boundary, Checkpointing, Identity};
use crate::data::Dataset;
use crate::error::Result;
use crate::model::Model;
use crate::train::{self, EpochReport, FitHooks, FitPoint, FitResume, Progress, TrainConfig};

/// What [`train()`] returns.
pub struct Trained {
    pub model: Model,
    /// Every epoch's report, with those before a resume.
    pub epochs: Vec<EpochReport>,
    /// `(epochs done, optimiser steps)` of the checkpoint it resumed from, if any.
    pub resumed: Option<(usize, u32)>,
}

/// Trains `model`, freshly initialised, on `data` (a `val_fraction` split out for
/// validation), saving checkpoints per `ck` and, with `ck.resume`, continuing from the last one
/// (whose weights then replace the initial ones, which must be the same as when it started).
///
/// The checkpoint holds the split, the model, the optimiser and the training state (see the
/// [module documentation](super)); on the CPU with the same thread count the resumed run's
/// model is bit-identical to an uninterrupted run's. Call [`Checkpointing::finish`] once the
/// model is saved.
///
/// # Errors
/// [`crate::Error::NoCheckpoint`], [`crate::Error::Checkpoint`] (a damaged file),
/// [`crate::Error::ResumeMismatch`] (other data or options), [`crate::Error::CheckpointExists`]
/// (a fresh run over an unfinished one), and every error of [`train::fit_with`].
pub fn train(
    mut model: Model,
    data: &Dataset,
    cfg: &TrainConfig,
    val_fraction: f32,
    ck: &Checkpointing,
    progress: &mut dyn FnMut(Progress),
) -> Result<Trained> {
    let identity = Identity::new()
        .with("data", fingerprint(data))
        .with("initial weights", weights_fingerprint(&mut model)?);
    let identity = model_identity(identity, &model.config);
    let identity = recipe_identity(identity, "", cfg).with("validation fraction", val_fraction);
    let (mut saver, file) = Saver::begin(ck, "train", identity)?;
    let all: Vec<usize> = (0..data.len()).collect();
    let (mut train_idx, mut val_idx) = train::split_train_val(&all, val_fraction, cfg.seed);

    let mut resume = None;
    let mut resumed = None;
    if let Some(file) = &file {
        let state = file.state();
        let decoded = (|| -> codec::DecodeResult<_> {
            let split = state.get("split")?;
            let split = split.field();
            let train_part = split.get("train")?.field().usizes()?;
            let val_part = split.get("val")?.field().usizes()?;
            let fit = codec::read_fit_state(state.get("fit")?.field())?;
            Ok((train_part, val_part, fit))
        })();
        let (train_part, val_part, fit) = decoded.map_err(|e| file.bad(e))?;
        if train_part.iter().chain(&val_part).any(|&i| i >= data.len()) {
            return Err(file.bad("its train/validation split indexes past the data"));
        }
        (train_idx, val_idx) = (train_part, val_part);
        file.restore_model(&mut model)?;
        let moments = file.moments(&mut model)?;
        log::info!(
            "resuming {} after {} epoch(s) and {} step(s)",
            file.path().display(),
            fit.epochs_done,
            fit.steps
        );
        resumed = Some((fit.epochs_done, fit.steps));
        resume = Some(FitResume {
            state: fit,
            moments,
        });
    }
    drop(file);

    let split = json!({"train": train_idx, "val": val_idx});
    let mut checkpoint = |p: FitPoint| -> Result<()> {
        let boundary = match p.epoch_end {
            true => Boundary::EpochEnd,
            false => Boundary::Step(p.state.steps),
        };
        if !saver.due(boundary) {
            return Ok(());
        }
        let state = json!({"split": split, "fit": codec::fit_state(p.state)});
        saver.save(state, Some(p.model), Some(p.adam))
    };
    let hooks = FitHooks {
        progress: Some(progress),
        checkpoint: Some(&mut checkpoint),
        resume,
        ..FitHooks::default()
    };
    let outcome = train::fit_with(&mut model, data, &train_idx, &val_idx, cfg, hooks)?;
    Ok(Trained {
        model,
        epochs: outcome.epochs,
        resumed,
    })
}
