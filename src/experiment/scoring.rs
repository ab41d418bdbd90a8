//! What each strategy needs besides the pool's logits (a committee, coreset centres, per-label
//! validation F1), how those inputs are produced from a model, and the purchase rule itself.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rayon::prelude::*;

use crate::active::committee::{self, CommitteeParams};
use crate::active::select::{self, Pool};
use crate::active::{balance, diversity, Strategy};
use crate::backend::{Aggregate, BackendHandle, ScoreParams};
use crate::data::Dataset;
use crate::error::{Error, Result};
use crate::model::{Model, EMBEDDING_DIM};
use crate::train::{self, Inference, TrainConfig};

/// The hybrid short-lists this many times the round's quota by entropy before the diverse pick
/// (`Strategy::Hybrid`'s description says "4k"): wide enough that k-means++ seeding has room to
/// spread, narrow enough that every pick is still among the pool's most uncertain images.
pub const HYBRID_PRE_FACTOR: usize = 4;

/// Everything a strategy may rank by, for one pool. Only what the strategy needs must be there
/// ([`Strategy::needs_embeddings`], [`Strategy::needs_committee`], [`Strategy::needs_label_f1`]).
pub struct Scoring<'a> {
    /// The current model's pool outputs (embeddings and logits), indexed by pool position.
    /// May be `None` for random and committee strategies.
    pub pool: Option<&'a Inference>,
    /// Coreset centres besides bought pool items: embeddings `[n, 512]` of the labelled set.
    pub centres: Option<&'a [f32]>,
    /// Each committee member's pool probabilities `[pool, L]`.
    pub committee: Option<&'a [Vec<f32>]>,
    /// Per-label F1 of the current model on a validation set, for the balanced strategies.
    pub label_f1: Option<&'a [f64]>,
}

/// How scores are read, whatever the strategy.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ChooseParams {
    pub aggregate: Aggregate,
    pub multilabel: bool,
    pub num_labels: usize,
    /// Seeds random purchases and the hybrid's k-means++ draw.
    pub seed: u64,
}

fn missing(strategy: &Strategy, what: &str) -> Error {
    Error::StrategyInput {
        strategy: strategy.name(),
        what: what.to_string(),
    }
}

/// Picks up to `k` unbought pool items by `strategy`, with their scores (higher = bought
/// first; 0 for random; for coreset, the distance to the nearest labelled or bought image).
///
/// Uncertainty scores come from [`crate::backend::Backend::score_pool`], so they run on the
/// device that holds the model; committee, balanced and diversity scores run on the host over
/// rayon (pure functions of [`crate::active`]).
///
/// # Errors
/// [`Error::StrategyInput`] when `scoring` lacks what the strategy needs; shape errors from the
/// scoring functions.
pub fn choose(
    strategy: &Strategy,
    backend: &BackendHandle,
    scoring: &Scoring,
    pool: &Pool,
    k: usize,
    p: ChooseParams,
) -> Result<Vec<(usize, f32)>> {
    let pool_inference = || {
        scoring
            .pool
            .ok_or_else(|| missing(strategy, "the pool's logits"))
    };
    let device_scores = |inference: &Inference, s: Strategy| -> Result<Vec<f32>> {
        let n = inference.logits.len() / p.num_labels.max(1);
        let logits = backend.from_host(&inference.logits, &[n, p.num_labels])?;
        let params = s.score_params(p.multilabel, p.aggregate).ok_or_else(|| {
            Error::Unsupported(format!("strategy {s} has no per-image uncertainty"))
        })?;
        backend.to_host(&backend.score_pool(&logits, params)?)
    };
    let with_scores = |items: Vec<usize>, scores: &[f32]| -> Vec<(usize, f32)> {
        items.into_iter().map(|i| (i, scores[i])).collect()
    };

    match *strategy {
        Strategy::Random => {
            let items = select::choose_random(pool, k, p.seed);
            Ok(items.into_iter().map(|i| (i, 0.0)).collect())
        }
        Strategy::LeastConfidence | Strategy::Margin | Strategy::Entropy => {
            let scores = device_scores(pool_inference()?, *strategy)?;
            Ok(with_scores(select::choose(pool, &scores, k)?, &scores))
        }
        Strategy::Balanced { uncertainty } => {
            let inference = pool_inference()?;
            let f1 = scoring
                .label_f1
                .ok_or_else(|| missing(strategy, "per-label validation F1"))?;
            let weights = balance::label_weights(f1);
            let params = ScoreParams {
                uncertainty,
                aggregate: p.aggregate,
                multilabel: p.multilabel,
            };
            let scores =
                balance::weighted_score_rows(&inference.logits, p.num_labels, &weights, params)?;
            Ok(with_scores(select::choose(pool, &scores, k)?, &scores))
        }
        Strategy::Committee { measure } => {
            let members = scoring
                .committee
                .ok_or_else(|| missing(strategy, "a committee's probabilities"))?;
            let c = CommitteeParams {
                num_labels: p.num_labels,
                multilabel: p.multilabel,
                aggregate: p.aggregate,
            };
            let scores = committee::disagreement(members, measure, c)?;
            Ok(with_scores(select::choose(pool, &scores, k)?, &scores))
        }
        Strategy::Hybrid => {
            let inference = pool_inference()?;
            let scores = device_scores(inference, Strategy::Entropy)?;
            let items = diversity::uncertain_diverse(
                &scores,
                &inference.embeddings,
                EMBEDDING_DIM,
                &pool.available(),
                k,
                HYBRID_PRE_FACTOR,
                p.seed,
            )?;
            Ok(with_scores(items, &scores))
        }
        Strategy::Coreset => {
            let inference = pool_inference()?;
            let labelled = scoring
                .centres
                .ok_or_else(|| missing(strategy, "the labelled set's embeddings (centres)"))?;

            // One matrix: pool rows first (so a chosen row is a pool position), then the
            // labelled rows; every labelled row and every bought pool row is a centre.
            let n_pool = pool.len();
            let mut matrix = inference.embeddings.clone();
            matrix.extend_from_slice(labelled);
            let rows = matrix.len() / EMBEDDING_DIM;
            let mut centres = pool.bought();
            centres.extend(n_pool..rows);
            let items =
                diversity::coreset_greedy(&matrix, EMBEDDING_DIM, &pool.available(), &centres, k)?;
            let distances = nearest_distance(&matrix, &items, &centres);
            Ok(items.into_iter().zip(distances).collect())
        }
    }
}

/// Euclidean distance from each of `items` to its nearest row among `centres` (rows of
/// `matrix`, `[rows, 512]`); infinite when there are no centres.
fn nearest_distance(matrix: &[f32], items: &[usize], centres: &[usize]) -> Vec<f32> {
    let row = |i: usize| &matrix[i * EMBEDDING_DIM..(i + 1) * EMBEDDING_DIM];
    items
        .par_iter()
        .map(|&i| {
            let squared = centres
                .iter()
                .map(|&c| {
                    row(i)
                        .iter()
                        .zip(row(c))
                        .map(|(a, b)| (a - b) * (a - b))
                        .sum::<f32>()
                })
                .fold(f32::INFINITY, f32::min);
            squared.sqrt()
        })
        .collect()
}

/// How a committee is built.
#[derive(Debug, Clone, PartialEq)]
pub struct CommitteeRecipe {
    /// Number of members (at least 2 for disagreement to mean anything).
    pub size: usize,
    /// Training of each member: a copy of the current model fine-tuned on a bootstrap sample.
    pub train: TrainConfig,
    pub infer_batch: usize,
}

/// A committee's pool probabilities and what building it cost.
pub struct Committee {
    /// Each member's pool probabilities `[pool, L]` (fewer members when stopped).
    pub members: Vec<Vec<f32>>,
    /// Images processed building it (member training plus pool scoring).
    pub images: u64,
    /// Whether `stop` cut the building short; the committee is then not to be used.
    pub stopped: bool,
}

/// Builds a committee from `model`: each member is a copy fine-tuned for `recipe.train.epochs`
/// on its own bootstrap sample (drawn with replacement, as many as `train`) of `data[train]`,
/// with its own seed, then scores `pool_images`. Members differ by their sample and batch order,
/// which is what makes them disagree where the labelled data say little; fine-tuning the current
/// model (rather than training from scratch) keeps the cost at one short epoch per member.
/// `model` is left as it was. `stop(images so far)` is asked before every batch.
#[allow(clippy::too_many_arguments)]
pub fn build_committee(
    model: &mut Model,
    data: &Dataset,
    train: &[usize],
    pool_images: &Dataset,
    recipe: &CommitteeRecipe,
    seed: u64,
    stop: &mut dyn FnMut(u64) -> bool,
) -> Result<Committee> {
    if recipe.size < 2 {
        return Err(Error::InvalidArgument(format!(
            "a committee needs at least 2 members, got {}",
            recipe.size
        )));
    }
    if train.len() < 2 {
        return Err(Error::InvalidArgument(
            "a committee needs at least 2 labelled images to train on".into(),
        ));
    }
    let current = model.snapshot()?;
    let all_pool: Vec<usize> = (0..pool_images.len()).collect();
    let mut committee = Committee {
        members: Vec::with_capacity(recipe.size),
        images: 0,
        stopped: false,
    };

    for k in 0..recipe.size {
        let member_seed = seed.wrapping_mul(0x9e37_79b9).wrapping_add(k as u64 + 1);
        let mut rng = StdRng::seed_from_u64(member_seed);
        let sample: Vec<usize> = (0..train.len())
            .map(|_| train[rng.random_range(0..train.len())])
            .collect();
        let cfg = TrainConfig {
            seed: member_seed,
            ..recipe.train.clone()
        };

        model.restore(&current)?;
        let done = committee.images;
        let fit = train::fit_until(model, data, &sample, &[], &cfg, &mut |_| {}, &mut |n| {
            stop(done + n)
        })?;
        committee.images += fit.images;
        if fit.stopped || stop(committee.images) {
            committee.stopped = true;
            break;
        }
        let inference = train::infer(model, pool_images, &all_pool, recipe.infer_batch)?;
        committee.images += pool_images.len() as u64;
        committee.members.push(inference.probabilities);
    }
    model.restore(&current)?;
    Ok(committee)
}
