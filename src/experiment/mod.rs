//! The label-purchase experiment: pre-train on the labelled set, plan rounds within a compute
//! budget, buy from the pool by each strategy, retrain every strategy by the same recipe, and
//! evaluate on the test set.

mod plan;
mod resume;
mod scoring;
mod summary;

use std::sync::Arc;
use std::time::Instant;

use serde_json::Value;

use crate::active::metrics::Metrics;
use crate::active::select::Pool;
use crate::active::Strategy;
use crate::backend::{Aggregate, BackendHandle};
use crate::checkpoint::{weights_fingerprint, Boundary, CheckpointFile, Checkpointing, Saver};
use crate::data::Dataset;
use crate::error::{Error, Result};
use crate::model::{Model, ModelConfig, Snapshot, TorchvisionWeights};
use crate::optim::Adam;
use crate::train::{
    self, EpochReport, FitHooks, FitPoint, FitResume, FitState, Inference, Progress, TrainConfig,
};
use resume::{At, Head, Stage};

pub use plan::{
    plan, round_sizes, strategy_cost, ComputeBudget, Meter, Plan, Sizes, StopReason, StrategyPlan,
    Throughput,
};
pub use scoring::{
    build_committee, choose, ChooseParams, Committee, CommitteeRecipe, Scoring, HYBRID_PRE_FACTOR,
};
pub use summary::{summarize, CurvePoint, Spread, StrategySummary, Summary};

/// The pool's labels, handed out only for bought items.
pub struct Oracle {
    labels: Vec<u8>,
    num_labels: usize,
    revealed: Vec<bool>,
}

impl Oracle {
    /// Splits a labelled pool into its images without labels and the oracle that holds them.
    pub fn new(pool: &Dataset) -> Result<(Dataset, Oracle)> {
        let oracle = Oracle::for_pool(pool)?;
        let mut images = pool.subset(&(0..pool.len()).collect::<Vec<_>>());
        images.labels = None;
        Ok((images, oracle))
    }

    /// A fresh oracle over `pool`'s labels, with nothing revealed (no copy of the images).
    pub fn for_pool(pool: &Dataset) -> Result<Oracle> {
        let labels = pool.labels.clone().ok_or_else(|| {
            Error::InvalidArgument("the pool needs a labels.csv to act as the label oracle".into())
        })?;
        Ok(Oracle {
            labels,
            num_labels: pool.num_labels(),
            revealed: vec![false; pool.len()],
        })
    }

    /// The labels of `items` (row-major), which count as bought from now on.
    pub fn reveal(&mut self, items: &[usize]) -> Result<Vec<u8>> {
        let l = self.num_labels;
        let mut out = Vec::with_capacity(items.len() * l);
        for &i in items {
            if i >= self.revealed.len() {
                return Err(Error::InvalidArgument(format!("oracle: no pool item {i}")));
            }
            self.revealed[i] = true;
            out.extend_from_slice(&self.labels[i * l..(i + 1) * l]);
        }
        Ok(out)
    }

    /// How many labels have been revealed.
    pub fn revealed(&self) -> usize {
        self.revealed.iter().filter(|&&r| r).count()
    }
}

/// Model settings that do not come from the data.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelSettings {
    pub image_size: usize,
    pub margin: f32,
    pub scale: f32,
    /// Force multi-label (sigmoid) or single-label (softmax) loss; `None` decides from the
    /// data (multi-label when any row has other than exactly one positive label).
    pub multilabel: Option<bool>,
    pub mean: [f32; 3],
    pub std: [f32; 3],
    /// Start the encoder from these weights (for instance ImageNet's) instead of a seeded
    /// initialisation; the CosFace head is always initialised from the seed.
    pub init_encoder: Option<Arc<TorchvisionWeights>>,
}

impl Default for ModelSettings {
    /// 32px images, CosFace margin 0.2 and scale 16, loss chosen from the data, ImageNet
    /// normalisation.
    fn default() -> Self {
        ModelSettings {
            image_size: 32,
            margin: 0.2,
            scale: 16.0,
            multilabel: None,
            mean: crate::model::IMAGENET_MEAN,
            std: crate::model::IMAGENET_STD,
            init_encoder: None,
        }
    }
}

impl ModelSettings {
    /// The model configuration for `data`'s labels.
    pub fn config_for(&self, data: &Dataset) -> ModelConfig {
        ModelConfig {
            label_names: data.label_names.clone(),
            multilabel: self.multilabel.unwrap_or_else(|| data.is_multilabel()),
            image_size: self.image_size,
            margin: self.margin,
            scale: self.scale,
            mean: self.mean,
            std: self.std,
        }
    }

    /// A fresh model for `config` (from [`ModelSettings::config_for`]): seeded, with the
    /// encoder then replaced by [`ModelSettings::init_encoder`] when set.
    pub fn initial_model(
        &self,
        backend: BackendHandle,
        config: ModelConfig,
        seed: u64,
    ) -> Result<Model> {
        let mut model = Model::new(backend, config, seed)?;
        if let Some(weights) = &self.init_encoder {
            model.load_encoder(weights)?;
        }
        Ok(model)
    }
}

/// Which model is scored at the end of a strategy's purchases (the "final model", trained by
/// one recipe for every strategy, so strategies differ only in what they bought).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Evaluator {
    /// The pre-trained model fine-tuned on labelled + bought by the retraining recipe, as every
    /// round does; the last round's model when it finished.
    FineTune,
    /// A fresh model from the experiment's seed (and [`ModelSettings::init_encoder`], if set)
    /// trained on labelled + bought by the pre-training recipe, so no strategy profits from
    /// the pre-trained weights' history.
    Fixed,
}

impl Evaluator {
    pub fn name(self) -> &'static str {
        match self {
            Evaluator::FineTune => "fine-tune",
            Evaluator::Fixed => "fixed",
        }
    }
}

/// Everything an experiment needs besides the data.
#[derive(Debug, Clone)]
pub struct ExperimentConfig {
    pub model: ModelSettings,
    pub pretrain: TrainConfig,
    /// The one recipe every strategy's model is retrained with after each purchase, starting
    /// from the pre-trained weights. The plan may lower its epochs to fit the compute budget.
    pub retrain: TrainConfig,
    pub val_fraction: f32,
    /// Labels to buy in total, per strategy.
    pub budget: usize,
    /// Purchases are split evenly over at most this many rounds.
    pub rounds: usize,
    pub strategies: Vec<Strategy>,
    pub aggregate: Aggregate,
    pub seed: u64,
    pub infer_batch: usize,
    /// Members of a committee (committee strategies only).
    pub committee_size: usize,
    /// Epochs each committee member is fine-tuned on its bootstrap sample.
    pub committee_epochs: usize,
    /// Limit on purchasing work (pre-training, scoring and retraining), per experiment.
    pub compute: ComputeBudget,
    pub evaluator: Evaluator,
}

/// What the experiment tells its caller as it goes.
pub enum Event<'a> {
    /// A stage starts (pre-training, a strategy).
    Stage(&'a str),
    /// Training progress of the stage.
    Train(Progress<'a>),
    /// The plan, once throughput is measured, before the first purchase.
    Plan(&'a Plan),
    /// A round ended (its retraining possibly cut short by the budget).
    Round(&'a str, &'a RoundRecord),
    /// A strategy stopped early because its share of the compute budget was spent.
    Stopped(&'a str, StopReason),
    /// The run continues from a checkpoint; says from where.
    Resumed(&'a str),
}

/// One purchase round of one strategy.
#[derive(Debug, Clone)]
pub struct RoundRecord {
    pub round: usize,
    /// File names bought this round with their scores (0 for random).
    pub items: Vec<(String, f32)>,
    /// Labels bought so far by this strategy.
    pub bought_total: usize,
    pub seconds: f64,
    /// Images processed this round (scoring, committee, retraining, test).
    pub images: u64,
    /// Test metrics after retraining; `None` when the compute budget cut retraining short
    /// (the purchase is kept all the same).
    pub test: Option<Metrics>,
}

/// One strategy's purchases and result.
#[derive(Debug, Clone)]
pub struct StrategyOutcome {
    pub strategy: Strategy,
    pub rounds: Vec<RoundRecord>,
    /// Test metrics of the final model ([`Evaluator`]) trained on labelled + everything bought.
    pub final_test: Metrics,
    /// Images processed and seconds spent purchasing (the final evaluation not included).
    pub images: u64,
    pub seconds: f64,
    /// Seconds the final evaluation took (0 when the last round's model was reused).
    pub evaluation_seconds: f64,
    /// Set when the compute budget ended the strategy before its planned rounds.
    pub stopped: Option<StopReason>,
}

impl StrategyOutcome {
    pub fn bought(&self) -> usize {
        self.rounds.last().map_or(0, |r| r.bought_total)
    }

    /// Test metrics of the final model.
    pub fn test(&self) -> Option<&Metrics> {
        Some(&self.final_test)
    }
}

/// The whole experiment's results.
#[derive(Debug, Clone)]
pub struct ExperimentReport {
    pub seed: u64,
    pub labelled: usize,
    pub pool: usize,
    pub test: usize,
    pub label_names: Vec<String>,
    pub multilabel: bool,
    pub pretrain: Vec<EpochReport>,
    /// Test metrics of the pre-trained model, before any purchase.
    pub baseline: Metrics,
    pub plan: Plan,
    pub evaluator: Evaluator,
    pub outcomes: Vec<StrategyOutcome>,
    pub seconds: f64,
}

/// Differences from random at the same budget: (macro F1, exact match, Hamming loss).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Gain {
    pub macro_f1: f64,
    pub exact_match: f64,
    pub hamming_loss: f64,
}

impl ExperimentReport {
    /// `outcome`'s final metrics minus those of the random strategy, when random was run.
    pub fn gain_over_random(&self, outcome: &StrategyOutcome) -> Option<Gain> {
        let random = self
            .outcomes
            .iter()
            .find(|o| o.strategy == Strategy::Random)?;
        let (a, r) = (outcome.test()?, random.test()?);
        Some(Gain {
            macro_f1: a.macro_f1 - r.macro_f1,
            exact_match: a.exact_match - r.exact_match,
            hamming_loss: a.hamming_loss - r.hamming_loss,
        })
    }
}

/// `labelled` plus the bought pool items with their revealed labels.
fn with_purchases(labelled: &Dataset, pool: &Dataset, bought: &[usize], labels: &[u8]) -> Dataset {
    let mut out = labelled.subset(&(0..labelled.len()).collect::<Vec<_>>());
    let extra = pool.subset(bought);
    out.files.extend(extra.files);
    out.pixels.extend(extra.pixels);
    if let Some(l) = &mut out.labels {
        l.extend_from_slice(labels);
    }
    out
}

fn check_compatible(labelled: &Dataset, other: &Dataset, what: &str) -> Result<()> {
    if other.label_names != labelled.label_names {
        return Err(Error::InvalidArgument(format!(
            "the {what} set's labels {:?} differ from the labelled set's {:?}",
            other.label_names, labelled.label_names
        )));
    }
    if other.size != labelled.size {
        return Err(Error::InvalidArgument(format!(
            "the {what} set has another image size"
        )));
    }
    Ok(())
}

/// What every strategy shares: the data, the pre-trained state and the plan.
struct Shared<'a> {
    backend: &'a BackendHandle,
    labelled: &'a Dataset,
    pool: &'a Dataset,
    pool_images: &'a Dataset,
    test: &'a Dataset,
    train_idx: &'a [usize],
    val_idx: &'a [usize],
    pretrained: &'a Snapshot,
    first_inference: &'a Inference,
    pretrain_val_f1: Option<&'a [f64]>,
    baseline: &'a Metrics,
    config: &'a ModelConfig,
    cfg: &'a ExperimentConfig,
    retrain: TrainConfig,
    round_sizes: &'a [usize],
}

/// A run's checkpoints: the saver, and the parts of the state that are fixed so far.
struct RunCheckpoints {
    saver: Saver,
    /// The train/validation split, as saved.
    split: Value,
    /// Seconds the run took before this process started (a resumed run's).
    seconds_before: f64,
    start: Instant,
    /// What pre-training produced (`null` until then).
    head: Value,
    /// The finished strategies' outcomes.
    outcomes: Vec<Value>,
}

impl RunCheckpoints {
    /// Seconds the run has taken, with those before a resume.
    fn seconds(&self) -> f64 {
        self.seconds_before + self.start.elapsed().as_secs_f64()
    }

    fn save_pretrain(&mut self, fit: &FitState, model: &mut Model, adam: &Adam) -> Result<()> {
        let state = resume::run_state(&self.split, self.seconds(), resume::stage_pretrain(fit));
        self.saver.save(state, Some(model), Some(adam))
    }

    fn save_purchasing(
        &mut self,
        current: Option<Value>,
        model: Option<&mut Model>,
        adam: Option<&Adam>,
    ) -> Result<()> {
        let stage = resume::stage_purchasing(&self.head, &self.outcomes, current);
        let state = resume::run_state(&self.split, self.seconds(), stage);
        self.saver.save(state, model, adam)
    }
}

/// The boundary a training checkpoint hook is at.
fn boundary_of(p: &FitPoint) -> Boundary {
    match p.epoch_end {
        true => Boundary::EpochEnd,
        false => Boundary::Step(p.state.steps),
    }
}

/// Runs the whole experiment. The pool's labels are read only for bought items.
///
/// Pre-training is measured to plan the rounds ([`plan`]); the plan goes out as
/// [`Event::Plan`] before the first purchase. Each strategy then buys round by round within its
/// share of the compute budget; a purchase is recorded before its retraining starts, so a round
/// the budget interrupts keeps its items. The final evaluation of each strategy (its final
/// model, see [`Evaluator`]) is the referee's work and is not charged to the budget.
pub fn run(
    backend: BackendHandle,
    labelled: &Dataset,
    pool: &Dataset,
    test: &Dataset,
    cfg: &ExperimentConfig,
    events: &mut dyn FnMut(Event),
) -> Result<ExperimentReport> {
    run_resumable(
        backend,
        labelled,
        pool,
        test,
        cfg,
        &Checkpointing::off(),
        events,
    )
}

/// [`run`] with checkpoints per `checkpointing`, continuing from the last one when it says
/// `resume`.
///
/// A checkpoint is due (by its cadence) during pre-training, between rounds, during every
/// retraining and final training, and between strategies; the pre-trained weights are written
/// once beside it. When the run ends, a last checkpoint holds the whole report (no tensors), so
/// a process that dies while writing the outputs loses nothing: call
/// [`Checkpointing::finish`] once they are written. On the CPU with the same thread count a
/// resumed run ends with the same report (timings aside) and the same purchases as an
/// uninterrupted one; a resumed strategy re-derives its pool from the purchases saved, so it
/// never buys an item twice or past the budget (a checkpoint that says otherwise is refused).
///
/// # Errors
/// Those of [`run`], and [`Error::NoCheckpoint`], [`Error::Checkpoint`] (a damaged file),
/// [`Error::ResumeMismatch`] (other data or options) and [`Error::CheckpointExists`] (a fresh
/// run over an unfinished one).
pub fn run_resumable(
    backend: BackendHandle,
    labelled: &Dataset,
    pool: &Dataset,
    test: &Dataset,
    cfg: &ExperimentConfig,
    checkpointing: &Checkpointing,
    events: &mut dyn FnMut(Event),
) -> Result<ExperimentReport> {
    let start = Instant::now();
    check_compatible(labelled, pool, "pool")?;
    check_compatible(labelled, test, "test")?;
    if cfg.rounds == 0 {
        return Err(Error::InvalidArgument("rounds must be at least 1".into()));
    }
    if cfg.strategies.iter().any(|s| s.needs_committee()) && cfg.committee_size < 2 {
        return Err(Error::InvalidArgument(format!(
            "a committee needs at least 2 members, got {}",
            cfg.committee_size
        )));
    }
    let config = cfg.model.config_for(labelled);
    let multilabel = config.multilabel;

    // A checkpoint to continue from must come from the same data, options and initial weights.
    let mut model = cfg
        .model
        .initial_model(backend.clone(), config.clone(), cfg.seed)?;
    let identity = resume::identity(labelled, pool, test, cfg, &config)
        .with("initial weights", weights_fingerprint(&mut model)?);
    let (saver, mut file) = Saver::begin(checkpointing, "run", identity)?;
    let resumed = match &file {
        Some(f) => Some(resume::read_run_state(f.state()).map_err(|e| f.bad(e))?),
        None => None,
    };
    let damaged = |detail: &str| Error::Checkpoint {
        path: checkpointing.path.clone(),
        detail: detail.into(),
    };

    // The validation split of the labelled set stays fixed for every strategy.
    let (train_idx, val_idx) = match &resumed {
        Some(r) => {
            if r.train_idx
                .iter()
                .chain(&r.val_idx)
                .any(|&i| i >= labelled.len())
            {
                return Err(damaged(
                    "its train/validation split indexes past the labelled set",
                ));
            }
            (r.train_idx.clone(), r.val_idx.clone())
        }
        None => train::split_train_val(
            &(0..labelled.len()).collect::<Vec<_>>(),
            cfg.val_fraction,
            cfg.seed,
        ),
    };
    if val_idx.is_empty() && cfg.strategies.iter().any(|s| s.needs_label_f1()) {
        return Err(Error::StrategyInput {
            strategy: "balanced",
            what: "a validation split for per-label F1 (a validation fraction above 0)".into(),
        });
    }
    let mut ck = RunCheckpoints {
        saver,
        split: resume::split(&train_idx, &val_idx),
        seconds_before: resumed.as_ref().map_or(0.0, |r| r.seconds),
        start,
        head: Value::Null,
        outcomes: Vec::new(),
    };
    let (pool_images, _) = Oracle::new(pool)?;
    let all_pool: Vec<usize> = (0..pool.len()).collect();

    // Pre-training, unless the checkpoint is past it.
    let (head, mut outcomes, current, fresh) = match resumed.map(|r| r.stage) {
        Some(Stage::Purchasing {
            head,
            outcomes,
            current,
        }) => {
            events(Event::Resumed(&format!(
                "resuming after pre-training: {} of {} strategies done{}",
                outcomes.len(),
                head.plan.strategies.len(),
                current.as_ref().map_or(String::new(), |c| format!(
                    ", {} at round {}",
                    c.strategy,
                    c.rounds.len() + 1
                ))
            )));
            events(Event::Plan(&head.plan));
            ck.head = resume::head(&head);
            ck.outcomes = outcomes.iter().map(resume::outcome).collect();
            (head, outcomes, current, None)
        }
        stage => {
            let mut fit_resume = None;
            if let (Some(Stage::Pretrain(state)), Some(f)) = (stage, file.take()) {
                f.restore_model(&mut model)?;
                let moments = f.moments(&mut model)?;
                events(Event::Resumed(&format!(
                    "resuming pre-training after {} epoch(s), {} step(s)",
                    state.epochs_done, state.steps
                )));
                fit_resume = Some(FitResume { state, moments });
            }
            let (head, pretrained, first_inference) = pretrain(
                &mut model,
                labelled,
                &pool_images,
                test,
                (&train_idx, &val_idx),
                cfg,
                fit_resume,
                &mut ck,
                events,
            )?;
            (head, Vec::new(), None, Some((pretrained, first_inference)))
        }
    };
    if outcomes.len() > head.plan.strategies.len() {
        return Err(damaged(
            "it lists more finished strategies than the plan has",
        ));
    }

    // Every strategy not finished yet, from the pre-trained weights.
    if outcomes.len() < head.plan.strategies.len() {
        let (pretrained, first_inference) = match fresh {
            Some(done) => done,
            None => {
                ck.saver.load_pretrained(&mut model, head.pretrained_crc)?;
                let snapshot = model.snapshot()?;
                let inference = train::infer(&mut model, &pool_images, &all_pool, cfg.infer_batch)?;
                (snapshot, inference)
            }
        };
        let pretrain_val_f1 = head
            .pretrain
            .last()
            .and_then(|e| e.val.as_ref())
            .map(|v| v.metrics.per_label_f1.clone());
        let shared = Shared {
            backend: &backend,
            labelled,
            pool,
            pool_images: &pool_images,
            test,
            train_idx: &train_idx,
            val_idx: &val_idx,
            pretrained: &pretrained,
            first_inference: &first_inference,
            pretrain_val_f1: pretrain_val_f1.as_deref(),
            baseline: &head.baseline,
            config: &config,
            cfg,
            retrain: TrainConfig {
                epochs: head.plan.retrain_epochs,
                ..cfg.retrain.clone()
            },
            round_sizes: &head.plan.round_sizes,
        };
        let mut current = current;
        let total = head.plan.strategies.len();
        for strategy_plan in &head.plan.strategies[outcomes.len()..] {
            events(Event::Stage(&format!(
                "strategy {}",
                strategy_plan.strategy
            )));
            let resume = match (current.take(), file.take()) {
                (Some(progress), Some(f)) => Some((progress, f)),
                _ => None,
            };
            let outcome =
                run_strategy(&shared, &mut model, strategy_plan, resume, &mut ck, events)?;
            ck.outcomes.push(resume::outcome(&outcome));
            outcomes.push(outcome);
            if outcomes.len() < total && ck.saver.due(Boundary::Round) {
                ck.save_purchasing(None, None, None)?;
            }
        }
    }

    // Done: a last checkpoint with the whole report and no tensors, so writing the outputs (or
    // the next seed) can fail or be killed without losing any of this; the pre-trained weights
    // have served.
    if ck.saver.enabled() {
        ck.save_purchasing(None, None, None)?;
        ck.saver.forget_pretrained()?;
    }
    Ok(ExperimentReport {
        seed: cfg.seed,
        labelled: labelled.len(),
        pool: pool.len(),
        test: test.len(),
        label_names: config.label_names.clone(),
        multilabel,
        pretrain: head.pretrain,
        baseline: head.baseline,
        plan: head.plan,
        evaluator: cfg.evaluator,
        outcomes,
        seconds: ck.seconds(),
    })
}

/// Pre-trains on the labelled set (continuing `fit_resume` if given), evaluates the baseline,
/// scores the pool with the pre-trained model, plans the rounds from the measured throughput,
/// and writes the pre-trained weights beside the checkpoint.
#[allow(clippy::too_many_arguments)]
fn pretrain(
    model: &mut Model,
    labelled: &Dataset,
    pool_images: &Dataset,
    test: &Dataset,
    (train_idx, val_idx): (&[usize], &[usize]),
    cfg: &ExperimentConfig,
    fit_resume: Option<FitResume>,
    ck: &mut RunCheckpoints,
    events: &mut dyn FnMut(Event),
) -> Result<(Head, Snapshot, Inference)> {
    events(Event::Stage("pre-training on the labelled set"));
    let pretrain = {
        let mut checkpoint = |p: FitPoint| -> Result<()> {
            match ck.saver.due(boundary_of(&p)) {
                true => ck.save_pretrain(p.state, p.model, p.adam),
                false => Ok(()),
            }
        };
        let hooks = FitHooks {
            progress: Some(&mut |p| events(Event::Train(p))),
            checkpoint: Some(&mut checkpoint),
            resume: fit_resume,
            ..FitHooks::default()
        };
        train::fit_with(model, labelled, train_idx, val_idx, &cfg.pretrain, hooks)?
    };
    let fit_seconds = pretrain.seconds;

    // Every strategy but random and committee scores the pool with the pre-trained model in
    // its first round; timing that and the baseline gives the inference throughput.
    let infer_start = Instant::now();
    let all_test: Vec<usize> = (0..test.len()).collect();
    let baseline = train::evaluate(model, test, &all_test, cfg.infer_batch)?.metrics;
    let pretrained: Snapshot = model.snapshot()?;
    let all_pool: Vec<usize> = (0..pool_images.len()).collect();
    let first_inference = train::infer(model, pool_images, &all_pool, cfg.infer_batch)?;
    let inferred = (test.len() + pool_images.len()).max(1) as f64;
    let infer_spi = infer_start.elapsed().as_secs_f64() / inferred;
    let validated = (val_idx.len() * pretrain.epochs.len()) as f64;
    let trained = (train_idx.len() * pretrain.epochs.len()).max(1) as f64;
    let train_spi = ((fit_seconds - validated * infer_spi) / trained).max(infer_spi);

    // Plan rounds and retraining epochs within what pre-training left of the budget.
    let sizes = Sizes {
        train: train_idx.len(),
        val: val_idx.len(),
        labelled: labelled.len(),
        pool: pool_images.len(),
        test: test.len(),
        committee_size: cfg.committee_size,
        committee_epochs: cfg.committee_epochs,
    };
    let throughput = Throughput {
        train_seconds_per_image: train_spi,
        infer_seconds_per_image: infer_spi,
    };
    let spent_images = pretrain.images + (test.len() + pool_images.len()) as u64;
    let the_plan = plan::plan(
        &cfg.strategies,
        cfg.budget,
        cfg.rounds,
        cfg.retrain.epochs,
        &sizes,
        throughput,
        cfg.compute,
        spent_images,
        ck.seconds(),
    );
    events(Event::Plan(&the_plan));

    // The pre-trained weights every strategy starts from, once, beside the checkpoint.
    let pretrained_crc = match ck.saver.enabled() {
        true => ck.saver.pretrained(model)?,
        false => 0,
    };
    let head = Head {
        pretrain: pretrain.epochs,
        baseline,
        plan: the_plan,
        pretrained_crc,
    };
    ck.head = resume::head(&head);
    if ck.saver.due(Boundary::Round) {
        ck.save_purchasing(None, None, None)?;
    }
    Ok((head, pretrained, first_inference))
}

/// A resumed strategy's progress, checked against the pool and the plan: every purchase a
/// distinct pool item, named as the rounds say, within the label budget.
fn check_progress(
    sh: &Shared,
    name: &str,
    p: &resume::Progress,
    file: &CheckpointFile,
) -> Result<()> {
    if p.strategy != name {
        return Err(file.bad(format!(
            "it continues strategy {}, but the plan's next is {name}",
            p.strategy
        )));
    }
    let pending: &[(String, f32)] = match &p.at {
        At::Retraining { record, .. } => &record.items,
        _ => &[],
    };
    let named: Vec<&str> = p
        .rounds
        .iter()
        .flat_map(|r| r.items.iter())
        .chain(pending)
        .map(|(f, _)| f.as_str())
        .collect();
    let by_index: Vec<Option<&str>> = p
        .bought
        .iter()
        .map(|&i| sh.pool.files.get(i).map(String::as_str))
        .collect();
    if by_index
        .iter()
        .map(|f| f.unwrap_or(""))
        .ne(named.iter().copied())
    {
        return Err(file.bad(format!(
            "{name}: its purchases ({} pool items) do not match its rounds' items ({})",
            p.bought.len(),
            named.len()
        )));
    }
    if p.bought.len() > sh.cfg.budget {
        return Err(file.bad(format!(
            "{name}: {} labels bought, over the budget of {}",
            p.bought.len(),
            sh.cfg.budget
        )));
    }
    let (done, next) = match &p.at {
        At::Round(n) => (p.rounds.len(), n.checked_sub(1)),
        At::Retraining { record, .. } => (p.rounds.len(), record.round.checked_sub(1)),
        At::Final(_) => (p.rounds.len(), Some(p.rounds.len())),
    };
    if next != Some(done) || done > sh.round_sizes.len() {
        return Err(file.bad(format!("{name}: {done} rounds done does not fit its stage")));
    }
    Ok(())
}

/// One strategy's rounds within its share of the budget, then its final evaluation; with
/// `resume`, continues the progress a checkpoint saved.
fn run_strategy(
    sh: &Shared,
    model: &mut Model,
    plan: &StrategyPlan,
    resume: Option<(resume::Progress, CheckpointFile)>,
    ck: &mut RunCheckpoints,
    events: &mut dyn FnMut(Event),
) -> Result<StrategyOutcome> {
    let strategy = plan.strategy;
    let name = strategy.to_string();
    let cfg = sh.cfg;
    let mut meter = Meter::new(plan.share);
    let mut oracle = Oracle::for_pool(sh.pool)?;
    let mut pool_state = Pool::new(sh.pool.files.clone())?;
    let all_pool: Vec<usize> = (0..sh.pool.len()).collect();
    let all_labelled: Vec<usize> = (0..sh.labelled.len()).collect();
    let all_test: Vec<usize> = (0..sh.test.len()).collect();
    let mut bought: Vec<usize> = Vec::new();
    let mut bought_labels: Vec<u8> = Vec::new();
    let mut rounds: Vec<RoundRecord> = Vec::new();
    let mut label_f1: Option<Vec<f64>> = sh.pretrain_val_f1.map(<[f64]>::to_vec);
    let mut stopped = None;
    let params = ChooseParams {
        aggregate: cfg.aggregate,
        multilabel: sh.config.multilabel,
        num_labels: sh.config.label_names.len(),
        seed: cfg.seed,
    };
    model.restore(sh.pretrained)?;

    // Continue a saved progress: the pool and the oracle are re-derived from the purchases.
    let mut first_round = 0;
    let mut resumed_round = false;
    let mut pending = None;
    let mut final_fit = None;
    if let Some((p, file)) = resume {
        check_progress(sh, &name, &p, &file)?;
        pool_state
            .mark_bought(&p.bought)
            .map_err(|e| file.bad(format!("{name}: {e}")))?;
        bought_labels = oracle.reveal(&p.bought)?;
        bought = p.bought;
        rounds = p.rounds;
        label_f1 = p.label_f1;
        stopped = p.stopped;
        meter = Meter::resumed(plan.share, p.meter_images, p.meter_seconds);
        if file.has_model() {
            file.restore_model(model)?;
        }
        match p.at {
            At::Round(n) => {
                first_round = n - 1;
                resumed_round = true;
            }
            At::Retraining {
                record,
                images_before,
                seconds_before,
                fit,
            } => {
                first_round = record.round - 1;
                let moments = file.moments(model)?;
                let fit = FitResume {
                    state: fit,
                    moments,
                };
                pending = Some((record, images_before, seconds_before, fit));
            }
            At::Final(fit) => {
                first_round = sh.round_sizes.len();
                let moments = file.moments(model)?;
                final_fit = Some(FitResume {
                    state: fit,
                    moments,
                });
            }
        }
        events(Event::Resumed(&format!(
            "resuming {name} with {} label(s) bought, at round {}",
            bought.len(),
            first_round + 1
        )));
    }

    for (r, &quota) in sh.round_sizes.iter().enumerate().skip(first_round) {
        let round = r + 1;
        let round_start = Instant::now();
        let (mut record, images_before, seconds_before, fit_resume) = match pending.take() {
            // The round's purchase was made before the checkpoint: go straight to retraining.
            Some(p) => (p.0, p.1, p.2, Some(p.3)),
            None => {
                if round > 1 && !resumed_round && ck.saver.due(Boundary::Round) {
                    let state = resume::progress(
                        &name,
                        &rounds,
                        &bought,
                        label_f1.as_deref(),
                        meter.images(),
                        meter.seconds(),
                        stopped,
                        resume::at_round(round),
                    );
                    ck.save_purchasing(Some(state), Some(model), None)?;
                }
                resumed_round = false;
                if let Some(reason) = meter.spent_with(0) {
                    stopped = Some(reason);
                    break;
                }
                let images_before = meter.images();
                let current = with_purchases(sh.labelled, sh.pool_images, &bought, &bought_labels);
                let mut current_train = sh.train_idx.to_vec();
                current_train.extend(sh.labelled.len()..current.len());

                // Score with the current model (round 1: the pre-trained pool scores).
                let fresh;
                let pool_inference = match strategy {
                    Strategy::Random | Strategy::Committee { .. } => None,
                    _ if round == 1 => Some(sh.first_inference),
                    _ => {
                        fresh = train::infer(model, sh.pool_images, &all_pool, cfg.infer_batch)?;
                        meter.add(sh.pool.len() as u64);
                        Some(&fresh)
                    }
                };
                let centres = match strategy {
                    Strategy::Coreset => {
                        let labelled =
                            train::infer(model, sh.labelled, &all_labelled, cfg.infer_batch)?;
                        meter.add(sh.labelled.len() as u64);
                        Some(labelled.embeddings)
                    }
                    _ => None,
                };
                let committee = match strategy.needs_committee() {
                    false => None,
                    true => {
                        let recipe = CommitteeRecipe {
                            size: cfg.committee_size,
                            train: TrainConfig {
                                epochs: cfg.committee_epochs,
                                ..sh.retrain.clone()
                            },
                            infer_batch: cfg.infer_batch,
                        };
                        let seed = cfg.seed.wrapping_add(round as u64);
                        let built = build_committee(
                            model,
                            &current,
                            &current_train,
                            sh.pool_images,
                            &recipe,
                            seed,
                            &mut |n| meter.spent_with(n).is_some(),
                        )?;
                        meter.add(built.images);
                        if built.stopped {
                            stopped = meter.spent_with(0).or(Some(StopReason::ImageBudget));
                            break;
                        }
                        Some(built.members)
                    }
                };

                // Buy. The purchase is recorded before retraining, so an interrupted round
                // keeps it.
                let scoring = Scoring {
                    pool: pool_inference,
                    centres: centres.as_deref(),
                    committee: committee.as_deref(),
                    label_f1: label_f1.as_deref(),
                };
                let round_params = ChooseParams {
                    seed: cfg.seed.wrapping_add(round as u64),
                    ..params
                };
                let chosen = choose(
                    &strategy,
                    sh.backend,
                    &scoring,
                    &pool_state,
                    quota,
                    round_params,
                )?;
                let items: Vec<usize> = chosen.iter().map(|&(i, _)| i).collect();
                pool_state.mark_bought(&items)?;
                bought_labels.extend(oracle.reveal(&items)?);
                bought.extend(&items);
                let record = RoundRecord {
                    round,
                    items: chosen
                        .iter()
                        .map(|&(i, s)| (sh.pool.files[i].clone(), s))
                        .collect(),
                    bought_total: oracle.revealed(),
                    seconds: 0.0,
                    images: 0,
                    test: None,
                };
                model.restore(sh.pretrained)?;
                (record, images_before, 0.0, None)
            }
        };

        // Retrain from the pre-trained weights on labelled + bought, by the one recipe.
        let data = with_purchases(sh.labelled, sh.pool_images, &bought, &bought_labels);
        let mut train_all = sh.train_idx.to_vec();
        train_all.extend(sh.labelled.len()..data.len());
        let fit = {
            let mut checkpoint = |p: FitPoint| -> Result<()> {
                if !ck.saver.due(boundary_of(&p)) {
                    return Ok(());
                }
                let at = resume::at_retraining(
                    &record,
                    images_before,
                    seconds_before + round_start.elapsed().as_secs_f64(),
                    p.state,
                );
                let state = resume::progress(
                    &name,
                    &rounds,
                    &bought,
                    label_f1.as_deref(),
                    meter.images(),
                    meter.seconds(),
                    None,
                    at,
                );
                ck.save_purchasing(Some(state), Some(p.model), Some(p.adam))
            };
            let hooks = FitHooks {
                progress: Some(&mut |p| events(Event::Train(p))),
                stop: Some(&mut |n| meter.spent_with(n).is_some()),
                checkpoint: Some(&mut checkpoint),
                resume: fit_resume,
                ..FitHooks::default()
            };
            train::fit_with(model, &data, &train_all, sh.val_idx, &sh.retrain, hooks)?
        };
        meter.add(fit.images);
        if !fit.stopped {
            if let Some(val) = fit.epochs.last().and_then(|e| e.val.as_ref()) {
                label_f1 = Some(val.metrics.per_label_f1.clone());
            }
            record.test =
                Some(train::evaluate(model, sh.test, &all_test, cfg.infer_batch)?.metrics);
            meter.add(sh.test.len() as u64);
        }
        record.seconds = seconds_before + round_start.elapsed().as_secs_f64();
        record.images = meter.images() - images_before;
        events(Event::Round(&name, &record));
        rounds.push(record);
        if fit.stopped {
            stopped = meter.spent_with(0).or(Some(StopReason::ImageBudget));
            break;
        }
    }
    if let Some(reason) = stopped {
        log::info!(
            "{name}: stopped after {} labels: {reason}",
            oracle.revealed()
        );
        events(Event::Stopped(&name, reason));
    }
    let (images, seconds) = (meter.images(), meter.seconds());

    // The final model, by the one recipe every strategy shares.
    let evaluation_start = Instant::now();
    let last_round_done = rounds.last().and_then(|r| r.test.clone());
    let final_test = match (cfg.evaluator, last_round_done) {
        (Evaluator::FineTune, Some(metrics)) => metrics,
        (Evaluator::FineTune, None) if bought.is_empty() => sh.baseline.clone(),
        (evaluator, _) => {
            events(Event::Stage(&format!(
                "{name}: final model ({} evaluator)",
                evaluator.name()
            )));
            let data = with_purchases(sh.labelled, sh.pool_images, &bought, &bought_labels);
            let mut train_all = sh.train_idx.to_vec();
            train_all.extend(sh.labelled.len()..data.len());
            let recipe = match evaluator {
                Evaluator::FineTune => &sh.retrain,
                Evaluator::Fixed => &cfg.pretrain,
            };
            // A resumed final training has its model from the checkpoint.
            if final_fit.is_none() {
                match evaluator {
                    Evaluator::FineTune => model.restore(sh.pretrained)?,
                    Evaluator::Fixed => {
                        *model = cfg.model.initial_model(
                            sh.backend.clone(),
                            sh.config.clone(),
                            cfg.seed,
                        )?
                    }
                }
            }
            let mut checkpoint = |p: FitPoint| -> Result<()> {
                if !ck.saver.due(boundary_of(&p)) {
                    return Ok(());
                }
                let state = resume::progress(
                    &name,
                    &rounds,
                    &bought,
                    label_f1.as_deref(),
                    images,
                    seconds,
                    stopped,
                    resume::at_final(p.state),
                );
                ck.save_purchasing(Some(state), Some(p.model), Some(p.adam))
            };
            let hooks = FitHooks {
                progress: Some(&mut |p| events(Event::Train(p))),
                checkpoint: Some(&mut checkpoint),
                resume: final_fit,
                ..FitHooks::default()
            };
            train::fit_with(model, &data, &train_all, sh.val_idx, recipe, hooks)?;
            train::evaluate(model, sh.test, &all_test, cfg.infer_batch)?.metrics
        }
    };

    Ok(StrategyOutcome {
        strategy,
        rounds,
        final_test,
        images,
        seconds,
        evaluation_seconds: evaluation_start.elapsed().as_secs_f64(),
        stopped,
    })
}
