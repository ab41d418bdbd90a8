//! The experiment's checkpoint state: what a run saves between rounds and during training, and
//! reads back to continue (layout in [`crate::checkpoint`]'s documentation).

use serde_json::{json, Value};

use super::{ExperimentConfig, Plan, RoundRecord, StopReason, StrategyOutcome};
use crate::active::metrics::Metrics;
use crate::checkpoint::codec::{self, object, DecodeResult, Field};
use crate::checkpoint::{fingerprint, model_identity, recipe_identity, Identity};
use crate::data::Dataset;
use crate::model::ModelConfig;
use crate::train::{EpochReport, FitState};

/// What an experiment must be resumed with: its data, model settings and every option.
pub(super) fn identity(
    labelled: &Dataset,
    pool: &Dataset,
    test: &Dataset,
    cfg: &ExperimentConfig,
    config: &ModelConfig,
) -> Identity {
    let names: Vec<&str> = cfg.strategies.iter().map(|s| s.name()).collect();
    let id = Identity::new()
        .with("labelled data", fingerprint(labelled))
        .with("pool data", fingerprint(pool))
        .with("test data", fingerprint(test));
    let id = model_identity(id, config);
    let id = recipe_identity(id, "", &cfg.pretrain);
    let id = recipe_identity(id, "retrain ", &cfg.retrain);
    id.with("validation fraction", cfg.val_fraction)
        .with("budget", cfg.budget)
        .with("rounds", cfg.rounds)
        .with("strategies", names.join(","))
        .with("aggregate", format!("{:?}", cfg.aggregate))
        .with("seed", cfg.seed)
        .with("inference batch", cfg.infer_batch)
        .with("committee size", cfg.committee_size)
        .with("committee epochs", cfg.committee_epochs)
        .with("time budget", format!("{:?}", cfg.compute.seconds))
        .with("image budget", format!("{:?}", cfg.compute.images))
        .with("evaluator", cfg.evaluator.name())
}

/// What pre-training produced, fixed for the rest of the run.
pub(super) struct Head {
    pub pretrain: Vec<EpochReport>,
    pub baseline: Metrics,
    pub plan: Plan,
    /// The CRC-32 of the pre-trained weights file beside the checkpoint.
    pub pretrained_crc: u32,
}

pub(super) fn head(h: &Head) -> Value {
    object([
        ("pretrain", codec::epoch_reports(&h.pretrain)),
        ("baseline", codec::metrics(&h.baseline)),
        ("plan", codec::plan(&h.plan)),
        ("pretrained_crc32", json!(h.pretrained_crc)),
    ])
}

fn read_head(f: Field) -> DecodeResult<Head> {
    Ok(Head {
        pretrain: codec::read_epoch_reports(f.get("pretrain")?.field())?,
        baseline: codec::read_metrics(f.get("baseline")?.field())?,
        plan: codec::read_plan(f.get("plan")?.field())?,
        pretrained_crc: f.get("pretrained_crc32")?.field().u32()?,
    })
}

/// Where the current strategy stands.
pub(super) enum At {
    /// Round `n` (from 1) is next; the checkpoint's model is the one it scores with.
    Round(usize),
    /// A round's purchase is made (its items are in `bought`) and its retraining is under way.
    Retraining {
        record: RoundRecord,
        /// The meter's images and the round's seconds when the round began.
        images_before: u64,
        seconds_before: f64,
        fit: FitState,
    },
    /// The rounds are over and the final model's training is under way.
    Final(FitState),
}

/// One strategy's progress.
pub(super) struct Progress {
    pub strategy: String,
    pub rounds: Vec<RoundRecord>,
    pub bought: Vec<usize>,
    pub label_f1: Option<Vec<f64>>,
    /// The meter, not counting the training under way.
    pub meter_images: u64,
    pub meter_seconds: f64,
    pub stopped: Option<StopReason>,
    pub at: At,
}

/// A strategy's progress from borrowed parts, as the loop holds them.
#[allow(clippy::too_many_arguments)]
pub(super) fn progress(
    strategy: &str,
    rounds: &[RoundRecord],
    bought: &[usize],
    label_f1: Option<&[f64]>,
    meter_images: u64,
    meter_seconds: f64,
    stopped: Option<StopReason>,
    at: Value,
) -> Value {
    object([
        ("strategy", json!(strategy)),
        ("rounds", codec::round_records(rounds)),
        ("bought", json!(bought)),
        (
            "label_f1",
            label_f1.map_or(Value::Null, |f| {
                Value::Array(f.iter().map(|&x| codec::float(x)).collect())
            }),
        ),
        ("meter_images", json!(meter_images)),
        ("meter_seconds", codec::float(meter_seconds)),
        ("stopped", codec::stop(stopped)),
        ("at", at),
    ])
}

pub(super) fn at_round(n: usize) -> Value {
    json!({"stage": "round", "round": n})
}

pub(super) fn at_retraining(
    record: &RoundRecord,
    images_before: u64,
    seconds_before: f64,
    fit: &FitState,
) -> Value {
    object([
        ("stage", json!("retraining")),
        ("record", codec::round_record(record)),
        ("images_before", json!(images_before)),
        ("seconds_before", codec::float(seconds_before)),
        ("fit", codec::fit_state(fit)),
    ])
}

pub(super) fn at_final(fit: &FitState) -> Value {
    object([("stage", json!("final")), ("fit", codec::fit_state(fit))])
}

fn read_at(f: Field) -> DecodeResult<At> {
    match f.get("stage")?.field().str()? {
        "round" => Ok(At::Round(f.get("round")?.field().usize()?)),
        "retraining" => Ok(At::Retraining {
            record: codec::read_round_record(f.get("record")?.field())?,
            images_before: f.get("images_before")?.field().u64()?,
            seconds_before: f.get("seconds_before")?.field().f64()?,
            fit: codec::read_fit_state(f.get("fit")?.field())?,
        }),
        "final" => Ok(At::Final(codec::read_fit_state(f.get("fit")?.field())?)),
        other => Err(format!("unknown strategy stage {other:?}")),
    }
}

fn read_progress(f: Field) -> DecodeResult<Progress> {
    let label_f1 = f.get("label_f1")?;
    Ok(Progress {
        strategy: f.get("strategy")?.field().str()?.to_string(),
        rounds: codec::read_round_records(f.get("rounds")?.field())?,
        bought: f.get("bought")?.field().usizes()?,
        label_f1: match label_f1.field().is_null() {
            true => None,
            false => Some(label_f1.field().f64s()?),
        },
        meter_images: f.get("meter_images")?.field().u64()?,
        meter_seconds: f.get("meter_seconds")?.field().f64()?,
        stopped: codec::read_stop(f, "stopped")?,
        at: read_at(f.get("at")?.field())?,
    })
}

/// Where the run stands.
// One value per resumed run: its size does not matter.
#[allow(clippy::large_enum_variant)]
pub(super) enum Stage {
    /// Pre-training is under way (model and optimiser in the checkpoint).
    Pretrain(FitState),
    /// Pre-training is done; `outcomes` lists the finished strategies in plan order and
    /// `current` the progress of the next one, once begun.
    Purchasing {
        head: Head,
        outcomes: Vec<StrategyOutcome>,
        current: Option<Progress>,
    },
}

/// A run's checkpoint state.
pub(super) struct RunState {
    pub train_idx: Vec<usize>,
    pub val_idx: Vec<usize>,
    /// Seconds the run had taken when it was saved.
    pub seconds: f64,
    pub stage: Stage,
}

pub(super) fn split(train: &[usize], val: &[usize]) -> Value {
    json!({"train": train, "val": val})
}

/// A run state from its parts: the split (as [`split`] made it), the stage's fields.
pub(super) fn run_state(split: &Value, seconds: f64, stage: Value) -> Value {
    object([
        ("split", split.clone()),
        ("seconds", codec::float(seconds)),
        ("stage", stage),
    ])
}

pub(super) fn stage_pretrain(fit: &FitState) -> Value {
    object([("name", json!("pretrain")), ("fit", codec::fit_state(fit))])
}

pub(super) fn stage_purchasing(head: &Value, outcomes: &[Value], current: Option<Value>) -> Value {
    object([
        ("name", json!("purchasing")),
        ("head", head.clone()),
        ("outcomes", Value::Array(outcomes.to_vec())),
        ("current", current.unwrap_or(Value::Null)),
    ])
}

pub(super) fn outcome(o: &StrategyOutcome) -> Value {
    codec::outcome(o)
}

pub(super) fn read_run_state(f: Field) -> DecodeResult<RunState> {
    let split = f.get("split")?;
    let stage = f.get("stage")?;
    let s = stage.field();
    let stage = match s.get("name")?.field().str()? {
        "pretrain" => Stage::Pretrain(codec::read_fit_state(s.get("fit")?.field())?),
        "purchasing" => {
            let current = s.get("current")?;
            Stage::Purchasing {
                head: read_head(s.get("head")?.field())?,
                outcomes: s
                    .get("outcomes")?
                    .field()
                    .items()?
                    .iter()
                    .map(|o| codec::read_outcome(o.field()))
                    .collect::<DecodeResult<_>>()?,
                current: match current.field().is_null() {
                    true => None,
                    false => Some(read_progress(current.field())?),
                },
            }
        }
        other => return Err(format!("unknown run stage {other:?}")),
    };
    Ok(RunState {
        train_idx: split.field().get("train")?.field().usizes()?,
        val_idx: split.field().get("val")?.field().usizes()?,
        seconds: f.get("seconds")?.field().f64()?,
        stage,
    })
}
