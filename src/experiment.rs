//! The label-purchase experiment: pre-train on the labelled set, buy from the pool by each
//! strategy, retrain every strategy by the same recipe, and evaluate on the test set.

use std::time::Instant;

use crate::active::metrics::Metrics;
use crate::active::select::{self, Pool};
use crate::active::Strategy;
use crate::backend::{Aggregate, BackendHandle, ScoreParams};
use crate::data::Dataset;
use crate::error::{Error, Result};
use crate::model::{Model, ModelConfig, Snapshot};
use crate::train::{self, EpochReport, Inference, Progress, TrainConfig};

/// The pool's labels, handed out only for bought items.
pub struct Oracle {
    labels: Vec<u8>,
    num_labels: usize,
    revealed: Vec<bool>,
}

impl Oracle {
    /// Splits a labelled pool into its images without labels and the oracle that holds them.
    pub fn new(pool: &Dataset) -> Result<(Dataset, Oracle)> {
        let labels = pool.labels.clone().ok_or_else(|| {
            Error::InvalidArgument("the pool needs a labels.csv to act as the label oracle".into())
        })?;
        let mut images = pool.subset(&(0..pool.len()).collect::<Vec<_>>());
        images.labels = None;
        let oracle = Oracle { labels, num_labels: pool.num_labels(), revealed: vec![false; pool.len()] };
        Ok((images, oracle))
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
}

/// Everything an experiment needs besides the data.
#[derive(Debug, Clone)]
pub struct ExperimentConfig {
    pub model: ModelSettings,
    pub pretrain: TrainConfig,
    /// The one recipe every strategy's model is retrained with after each purchase, starting
    /// from the pre-trained weights.
    pub retrain: TrainConfig,
    pub val_fraction: f32,
    /// Labels to buy in total, per strategy.
    pub budget: usize,
    /// Purchases are split evenly over this many rounds.
    pub rounds: usize,
    pub strategies: Vec<Strategy>,
    pub aggregate: Aggregate,
    pub seed: u64,
    pub infer_batch: usize,
}

/// What the experiment tells its caller as it goes.
pub enum Event<'a> {
    /// A stage starts (pre-training, a strategy).
    Stage(&'a str),
    /// Training progress of the stage.
    Train(Progress<'a>),
    /// A round ended.
    Round(&'a str, &'a RoundRecord),
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
    /// Test metrics after retraining.
    pub test: Metrics,
}

/// One strategy's purchases and result.
#[derive(Debug, Clone)]
pub struct StrategyOutcome {
    pub strategy: Strategy,
    pub rounds: Vec<RoundRecord>,
}

impl StrategyOutcome {
    pub fn bought(&self) -> usize {
        self.rounds.last().map_or(0, |r| r.bought_total)
    }

    /// Test metrics after the last round.
    pub fn test(&self) -> Option<&Metrics> {
        self.rounds.last().map(|r| &r.test)
    }
}

/// The whole experiment's results.
#[derive(Debug, Clone)]
pub struct ExperimentReport {
    pub labelled: usize,
    pub pool: usize,
    pub test: usize,
    pub label_names: Vec<String>,
    pub multilabel: bool,
    pub pretrain: Vec<EpochReport>,
    /// Test metrics of the pre-trained model, before any purchase.
    pub baseline: Metrics,
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
        let random = self.outcomes.iter().find(|o| o.strategy == Strategy::Random)?;
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
        return Err(Error::InvalidArgument(format!("the {what} set has another image size")));
    }
    Ok(())
}

/// Runs the whole experiment. The pool's labels are read only for bought items.
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
    let config = cfg.model.config_for(labelled);
    let multilabel = config.multilabel;
    let all_test: Vec<usize> = (0..test.len()).collect();

    // Pre-train on the labelled set; its validation split stays fixed for every strategy.
    events(Event::Stage("pre-training on the labelled set"));
    let (train_idx, val_idx) =
        train::split_train_val(&(0..labelled.len()).collect::<Vec<_>>(), cfg.val_fraction, cfg.seed);
    let mut model = Model::new(backend.clone(), config.clone(), cfg.seed)?;
    let pretrain = train::fit(&mut model, labelled, &train_idx, &val_idx, &cfg.pretrain, &mut |p| {
        events(Event::Train(p))
    })?;
    let baseline = train::evaluate(&mut model, test, &all_test, cfg.infer_batch)?.metrics;
    let pretrained: Snapshot = model.snapshot()?;

    // Every strategy scores the pool with the pre-trained model in its first round.
    let (pool_images, _) = Oracle::new(pool)?;
    let all_pool: Vec<usize> = (0..pool.len()).collect();
    let first_inference = train::infer(&mut model, &pool_images, &all_pool, cfg.infer_batch)?;

    let mut outcomes = Vec::new();
    for strategy in &cfg.strategies {
        events(Event::Stage(&format!("strategy {strategy}")));
        let (_, mut oracle) = Oracle::new(pool)?;
        let mut pool_state = Pool::new(pool.files.clone())?;
        let mut bought: Vec<usize> = Vec::new();
        let mut bought_labels: Vec<u8> = Vec::new();
        let mut rounds = Vec::new();
        model.restore(&pretrained)?;

        for round in 1..=cfg.rounds {
            let round_start = Instant::now();
            let quota = cfg.budget * round / cfg.rounds - cfg.budget * (round - 1) / cfg.rounds;

            // Score and buy.
            let inference;
            let scores_from = match round {
                1 => &first_inference,
                _ => {
                    inference = train::infer(&mut model, &pool_images, &all_pool, cfg.infer_batch)?;
                    &inference
                }
            };
            let chosen = choose(
                strategy,
                &backend,
                scores_from,
                &pool_state,
                quota,
                cfg.aggregate,
                multilabel,
                config.label_names.len(),
                cfg.seed.wrapping_add(round as u64),
            )?;
            let items: Vec<usize> = chosen.iter().map(|&(i, _)| i).collect();
            pool_state.mark_bought(&items)?;
            bought_labels.extend(oracle.reveal(&items)?);
            bought.extend(&items);

            // Retrain from the pre-trained weights on labelled + bought, by the one recipe.
            model.restore(&pretrained)?;
            let data = with_purchases(labelled, &pool_images, &bought, &bought_labels);
            let mut train_all = train_idx.clone();
            train_all.extend(labelled.len()..data.len());
            train::fit(&mut model, &data, &train_all, &val_idx, &cfg.retrain, &mut |p| {
                events(Event::Train(p))
            })?;
            let test_metrics = train::evaluate(&mut model, test, &all_test, cfg.infer_batch)?.metrics;

            let record = RoundRecord {
                round,
                items: chosen.iter().map(|&(i, s)| (pool.files[i].clone(), s)).collect(),
                bought_total: oracle.revealed(),
                seconds: round_start.elapsed().as_secs_f64(),
                test: test_metrics,
            };
            events(Event::Round(&strategy.to_string(), &record));
            rounds.push(record);
        }
        outcomes.push(StrategyOutcome { strategy: strategy.clone(), rounds });
    }

    Ok(ExperimentReport {
        labelled: labelled.len(),
        pool: pool.len(),
        test: test.len(),
        label_names: config.label_names,
        multilabel,
        pretrain,
        baseline,
        outcomes,
        seconds: start.elapsed().as_secs_f64(),
    })
}

/// Picks up to `k` unbought pool items by `strategy`, with their scores.
#[allow(clippy::too_many_arguments)]
pub fn choose(
    strategy: &Strategy,
    backend: &BackendHandle,
    inference: &Inference,
    pool: &Pool,
    k: usize,
    aggregate: Aggregate,
    multilabel: bool,
    num_labels: usize,
    seed: u64,
) -> Result<Vec<(usize, f32)>> {
    let uncertainty = match strategy.uncertainty() {
        Some(u) => u,
        None if *strategy == Strategy::Random => {
            return Ok(select::choose_random(pool, k, seed).into_iter().map(|i| (i, 0.0)).collect())
        }
        None => {
            return Err(Error::Unsupported(format!(
                "strategy {strategy} is not available in this experiment loop yet"
            )))
        }
    };
    let n = inference.logits.len() / num_labels.max(1);
    let logits = backend.from_host(&inference.logits, &[n, num_labels])?;
    let params = ScoreParams { uncertainty, aggregate, multilabel };
    let scores = backend.to_host(&backend.score_pool(&logits, params)?)?;
    let chosen = select::choose(pool, &scores, k)?;
    Ok(chosen.into_iter().map(|i| (i, scores[i])).collect())
}
