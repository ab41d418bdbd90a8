//! The label-purchase experiment: pre-train on the labelled set, plan rounds within a compute
//! budget, buy from the pool by each strategy, retrain every strategy by the same recipe, and
//! evaluate on the test set.

mod plan;
mod scoring;
mod summary;

use std::sync::Arc;
use std::time::Instant;

use crate::active::metrics::Metrics;
use crate::active::select::Pool;
use crate::active::Strategy;
use crate::backend::{Aggregate, BackendHandle};
use crate::data::Dataset;
use crate::error::{Error, Result};
use crate::model::{Model, ModelConfig, Snapshot, TorchvisionWeights};
use crate::train::{self, EpochReport, Inference, Progress, TrainConfig};

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
    let all_test: Vec<usize> = (0..test.len()).collect();

    // Pre-train on the labelled set; its validation split stays fixed for every strategy.
    events(Event::Stage("pre-training on the labelled set"));
    let (train_idx, val_idx) = train::split_train_val(
        &(0..labelled.len()).collect::<Vec<_>>(),
        cfg.val_fraction,
        cfg.seed,
    );
    if val_idx.is_empty() && cfg.strategies.iter().any(|s| s.needs_label_f1()) {
        return Err(Error::StrategyInput {
            strategy: "balanced",
            what: "a validation split for per-label F1 (a validation fraction above 0)".into(),
        });
    }
    let mut model = cfg
        .model
        .initial_model(backend.clone(), config.clone(), cfg.seed)?;
    let fit_start = Instant::now();
    let pretrain = train::fit_until(
        &mut model,
        labelled,
        &train_idx,
        &val_idx,
        &cfg.pretrain,
        &mut |p| events(Event::Train(p)),
        &mut |_| false,
    )?;
    let fit_seconds = fit_start.elapsed().as_secs_f64();

    // Every strategy but random and committee scores the pool with the pre-trained model in
    // its first round; timing that and the baseline gives the inference throughput.
    let infer_start = Instant::now();
    let baseline = train::evaluate(&mut model, test, &all_test, cfg.infer_batch)?.metrics;
    let pretrained: Snapshot = model.snapshot()?;
    let (pool_images, _) = Oracle::new(pool)?;
    let all_pool: Vec<usize> = (0..pool.len()).collect();
    let first_inference = train::infer(&mut model, &pool_images, &all_pool, cfg.infer_batch)?;
    let inferred = (test.len() + pool.len()).max(1) as f64;
    let infer_spi = infer_start.elapsed().as_secs_f64() / inferred;
    let validated = (val_idx.len() * pretrain.epochs.len()) as f64;
    let trained = (train_idx.len() * pretrain.epochs.len()).max(1) as f64;
    let train_spi = ((fit_seconds - validated * infer_spi) / trained).max(infer_spi);

    // Plan rounds and retraining epochs within what pre-training left of the budget.
    let sizes = Sizes {
        train: train_idx.len(),
        val: val_idx.len(),
        labelled: labelled.len(),
        pool: pool.len(),
        test: test.len(),
        committee_size: cfg.committee_size,
        committee_epochs: cfg.committee_epochs,
    };
    let throughput = Throughput {
        train_seconds_per_image: train_spi,
        infer_seconds_per_image: infer_spi,
    };
    let spent_images = pretrain.images + (test.len() + pool.len()) as u64;
    let the_plan = plan::plan(
        &cfg.strategies,
        cfg.budget,
        cfg.rounds,
        cfg.retrain.epochs,
        &sizes,
        throughput,
        cfg.compute,
        spent_images,
        start.elapsed().as_secs_f64(),
    );
    events(Event::Plan(&the_plan));

    let pretrain_val_f1 = pretrain
        .epochs
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
        baseline: &baseline,
        config: &config,
        cfg,
        retrain: TrainConfig {
            epochs: the_plan.retrain_epochs,
            ..cfg.retrain.clone()
        },
        round_sizes: &the_plan.round_sizes,
    };
    let mut outcomes = Vec::new();
    for strategy_plan in &the_plan.strategies {
        events(Event::Stage(&format!(
            "strategy {}",
            strategy_plan.strategy
        )));
        outcomes.push(run_strategy(&shared, &mut model, strategy_plan, events)?);
    }

    Ok(ExperimentReport {
        seed: cfg.seed,
        labelled: labelled.len(),
        pool: pool.len(),
        test: test.len(),
        label_names: config.label_names.clone(),
        multilabel,
        pretrain: pretrain.epochs,
        baseline,
        plan: the_plan.clone(),
        evaluator: cfg.evaluator,
        outcomes,
        seconds: start.elapsed().as_secs_f64(),
    })
}

/// One strategy's rounds within its share of the budget, then its final evaluation.
fn run_strategy(
    sh: &Shared,
    model: &mut Model,
    plan: &StrategyPlan,
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

    for (r, &quota) in sh.round_sizes.iter().enumerate() {
        let round = r + 1;
        if let Some(reason) = meter.spent_with(0) {
            stopped = Some(reason);
            break;
        }
        let round_start = Instant::now();
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
                let labelled = train::infer(model, sh.labelled, &all_labelled, cfg.infer_batch)?;
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

        // Buy. The purchase is recorded before retraining, so an interrupted round keeps it.
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
        let mut record = RoundRecord {
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

        // Retrain from the pre-trained weights on labelled + bought, by the one recipe.
        model.restore(sh.pretrained)?;
        let data = with_purchases(sh.labelled, sh.pool_images, &bought, &bought_labels);
        let mut train_all = sh.train_idx.to_vec();
        train_all.extend(sh.labelled.len()..data.len());
        let fit = train::fit_until(
            model,
            &data,
            &train_all,
            sh.val_idx,
            &sh.retrain,
            &mut |p| events(Event::Train(p)),
            &mut |n| meter.spent_with(n).is_some(),
        )?;
        meter.add(fit.images);
        if !fit.stopped {
            if let Some(val) = fit.epochs.last().and_then(|e| e.val.as_ref()) {
                label_f1 = Some(val.metrics.per_label_f1.clone());
            }
            record.test =
                Some(train::evaluate(model, sh.test, &all_test, cfg.infer_batch)?.metrics);
            meter.add(sh.test.len() as u64);
        }
        record.seconds = round_start.elapsed().as_secs_f64();
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
                Evaluator::FineTune => {
                    model.restore(sh.pretrained)?;
                    &sh.retrain
                }
                Evaluator::Fixed => {
                    *model =
                        cfg.model
                            .initial_model(sh.backend.clone(), sh.config.clone(), cfg.seed)?;
                    &cfg.pretrain
                }
            };
            train::fit(model, &data, &train_all, sh.val_idx, recipe, &mut |p| {
                events(Event::Train(p))
            })?;
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
