//! The compute budget: a plan of round sizes and retraining epochs sized from measured
//! throughput, and the meter that stops a strategy when its share is spent.

use std::fmt;
use std::time::Instant;

use crate::active::Strategy;

/// A compute budget for one experiment (one seed): wall-clock seconds, images processed by
/// training and inference (one per image per training epoch, one per image scored), or both.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct ComputeBudget {
    pub seconds: Option<f64>,
    pub images: Option<u64>,
}

impl ComputeBudget {
    /// Whether any limit is set.
    pub fn is_limited(&self) -> bool {
        self.seconds.is_some() || self.images.is_some()
    }
}

/// Why a strategy stopped before its planned rounds were done.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    TimeBudget,
    ImageBudget,
}

impl fmt::Display for StopReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            StopReason::TimeBudget => "time budget spent",
            StopReason::ImageBudget => "image budget spent",
        })
    }
}

/// Counts what one strategy spends against its share of the budget. The loop asks it before
/// every training batch and every scoring pass, so a share is overrun by at most one batch or
/// one pass over the pool, the labelled set or the test set.
#[derive(Debug, Clone)]
pub struct Meter {
    start: Instant,
    /// Seconds spent before `start` (by the run a resumed one continues).
    earlier_seconds: f64,
    images: u64,
    limit: ComputeBudget,
}

impl Meter {
    pub fn new(limit: ComputeBudget) -> Self {
        Meter::resumed(limit, 0, 0.0)
    }

    /// A meter that has already counted `images` and `seconds` (a resumed strategy's).
    pub fn resumed(limit: ComputeBudget, images: u64, seconds: f64) -> Self {
        Meter {
            start: Instant::now(),
            earlier_seconds: seconds,
            images,
            limit,
        }
    }

    /// Adds images processed.
    pub fn add(&mut self, images: u64) {
        self.images += images;
    }

    pub fn images(&self) -> u64 {
        self.images
    }

    pub fn seconds(&self) -> f64 {
        self.earlier_seconds + self.start.elapsed().as_secs_f64()
    }

    /// Whether the share is spent once `in_flight` more images are counted.
    pub fn spent_with(&self, in_flight: u64) -> Option<StopReason> {
        if self
            .limit
            .images
            .is_some_and(|n| self.images + in_flight >= n)
        {
            return Some(StopReason::ImageBudget);
        }
        if self.limit.seconds.is_some_and(|s| self.seconds() >= s) {
            return Some(StopReason::TimeBudget);
        }
        None
    }
}

/// Measured cost of one image, from pre-training and the first pool scoring.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Throughput {
    pub train_seconds_per_image: f64,
    pub infer_seconds_per_image: f64,
}

/// The sizes the costs depend on.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sizes {
    /// Labelled images trained on (the labelled set less its validation split).
    pub train: usize,
    pub val: usize,
    /// The whole labelled set (coreset centres).
    pub labelled: usize,
    pub pool: usize,
    pub test: usize,
    pub committee_size: usize,
    pub committee_epochs: usize,
}

/// Images one strategy trains on and scores under a plan: (training, inference).
pub fn strategy_cost(
    strategy: Strategy,
    round_sizes: &[usize],
    retrain_epochs: usize,
    s: &Sizes,
) -> (u64, u64) {
    let (mut train, mut infer) = (0u64, 0u64);
    let mut bought = 0usize;
    for (r, &quota) in round_sizes.iter().enumerate() {
        // Scoring (round 1 reuses the pre-trained model's pool scores).
        match strategy {
            Strategy::Random => {}
            Strategy::Committee { .. } => {
                let members = s.committee_size as u64;
                train += members * (s.committee_epochs * (s.train + bought)) as u64;
                infer += members * s.pool as u64;
            }
            _ if r == 0 => {}
            _ => infer += s.pool as u64,
        }
        if strategy == Strategy::Coreset {
            infer += s.labelled as u64;
        }

        // Retraining on labelled + bought, validation each epoch, then the test set.
        bought += quota;
        train += (retrain_epochs * (s.train + bought)) as u64;
        infer += (retrain_epochs * s.val + s.test) as u64;
    }
    (train, infer)
}

/// One strategy's planned cost and its share of the budget.
#[derive(Debug, Clone, PartialEq)]
pub struct StrategyPlan {
    pub strategy: Strategy,
    pub images: u64,
    pub seconds: f64,
    /// Its share of what remains of the budget after pre-training; `None` when unlimited.
    pub share: ComputeBudget,
}

/// The experiment's plan, printed before the first purchase.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// Labels bought in each round.
    pub round_sizes: Vec<usize>,
    pub retrain_epochs: usize,
    pub throughput: Throughput,
    /// What pre-training, the baseline evaluation and the first pool scoring spent.
    pub spent_images: u64,
    pub spent_seconds: f64,
    pub budget: ComputeBudget,
    pub strategies: Vec<StrategyPlan>,
    /// Whether the estimate fits the budget; when not, strategies stop early at their shares.
    pub fits: bool,
}

/// Fraction of the time left that a plan may fill. Image counts are exact, but seconds are
/// estimated from one measurement on a machine whose load changes; on a shared 2-core machine
/// rounds ran up to 1.5x their estimate, and a plan with no headroom then stops its last
/// strategies' last rounds part way.
pub const TIME_HEADROOM: f64 = 0.7;

/// Splits `budget` labels as evenly as possible over `rounds` rounds (earlier rounds smaller).
pub fn round_sizes(budget: usize, rounds: usize) -> Vec<usize> {
    (1..=rounds)
        .map(|r| budget * r / rounds - budget * (r - 1) / rounds)
        .collect()
}

/// Plans rounds and retraining epochs so every strategy's estimated cost fits what remains of
/// the budget (of the time left, [`TIME_HEADROOM`] of it): with the configured `rounds` and `retrain_epochs` when they fit, otherwise with
/// fewer epochs first (down to 1), then fewer rounds (down to 1). Fewer epochs go first
/// because a round buys on fresher scores, which is what the strategies are compared on.
/// What remains is shared among strategies in proportion to their estimated costs, so an
/// expensive committee cannot starve the strategies after it.
#[allow(clippy::too_many_arguments)]
pub fn plan(
    strategies: &[Strategy],
    label_budget: usize,
    rounds: usize,
    retrain_epochs: usize,
    sizes: &Sizes,
    throughput: Throughput,
    budget: ComputeBudget,
    spent_images: u64,
    spent_seconds: f64,
) -> Plan {
    let estimate = |rounds: usize, epochs: usize| -> Vec<StrategyPlan> {
        let sizes_r = round_sizes(label_budget, rounds);
        strategies
            .iter()
            .map(|&strategy| {
                let (t, i) = strategy_cost(strategy, &sizes_r, epochs, sizes);
                StrategyPlan {
                    strategy,
                    images: t + i,
                    seconds: t as f64 * throughput.train_seconds_per_image
                        + i as f64 * throughput.infer_seconds_per_image,
                    share: ComputeBudget::default(),
                }
            })
            .collect()
    };
    let left_images = budget.images.map(|n| n.saturating_sub(spent_images));
    let left_seconds = budget.seconds.map(|s| (s - spent_seconds).max(0.0));
    let fits = |plans: &[StrategyPlan]| {
        let images: u64 = plans.iter().map(|p| p.images).sum();
        let seconds: f64 = plans.iter().map(|p| p.seconds).sum();
        left_images.is_none_or(|n| images <= n)
            && left_seconds.is_none_or(|s| seconds <= s * TIME_HEADROOM)
    };

    let (mut r, mut e) = (rounds.max(1), retrain_epochs.max(1));
    let mut plans = estimate(r, e);
    while !fits(&plans) && (e > 1 || r > 1) {
        if e > 1 {
            e -= 1;
        } else {
            r -= 1;
        }
        plans = estimate(r, e);
    }
    let fit = fits(&plans);

    let total_images: u64 = plans.iter().map(|p| p.images).sum::<u64>().max(1);
    let total_seconds: f64 = plans.iter().map(|p| p.seconds).sum::<f64>().max(1e-9);
    for p in &mut plans {
        p.share = ComputeBudget {
            images: left_images.map(|n| (n as f64 * p.images as f64 / total_images as f64) as u64),
            seconds: left_seconds.map(|s| s * p.seconds / total_seconds),
        };
    }
    Plan {
        round_sizes: round_sizes(label_budget, r),
        retrain_epochs: e,
        throughput,
        spent_images,
        spent_seconds,
        budget,
        strategies: plans,
        fits: fit,
    }
}

fn budget_text(b: &ComputeBudget) -> String {
    match (b.seconds, b.images) {
        (None, None) => "unlimited".into(),
        (Some(s), None) => format!("{s:.0}s"),
        (None, Some(n)) => format!("{n} images"),
        (Some(s), Some(n)) => format!("{s:.0}s or {n} images"),
    }
}

impl Plan {
    /// One line per strategy after the summary line, e.g.
    /// `plan: 3 rounds of [100, 100, 100] labels, 2 retrain epochs | ...`.
    pub fn lines(&self) -> Vec<String> {
        let t = &self.throughput;
        let mut out =
            vec![format!(
            "plan: {} round(s) of {:?} labels, {} retrain epoch(s) | measured {:.1} train img/s, \
             {:.1} infer img/s | pre-training spent {} images in {:.1}s | compute budget {}{}",
            self.round_sizes.len(),
            self.round_sizes,
            self.retrain_epochs,
            1.0 / t.train_seconds_per_image.max(1e-12),
            1.0 / t.infer_seconds_per_image.max(1e-12),
            self.spent_images,
            self.spent_seconds,
            budget_text(&self.budget),
            if self.fits { "" } else { " (does not fit: strategies stop at their shares)" },
        )];
        for p in &self.strategies {
            let share = match self.budget.is_limited() {
                true => format!(" | share {}", budget_text(&p.share)),
                false => String::new(),
            };
            out.push(format!(
                "plan: {:<26} ~{} images ~{:.0}s{share}",
                p.strategy.name(),
                p.images,
                p.seconds
            ));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sizes() -> Sizes {
        Sizes {
            train: 90,
            val: 10,
            labelled: 100,
            pool: 1000,
            test: 200,
            committee_size: 3,
            committee_epochs: 1,
        }
    }

    #[test]
    fn rounds_split_the_budget() {
        assert_eq!(round_sizes(10, 3), vec![3, 3, 4]);
        assert_eq!(round_sizes(2, 3), vec![0, 1, 1]);
        assert_eq!(round_sizes(10, 3).iter().sum::<usize>(), 10);
    }

    #[test]
    fn costs_count_every_image() {
        // Random, one round of 10, 2 epochs: train 2 * 100, infer 2 * 10 + 200.
        assert_eq!(
            strategy_cost(Strategy::Random, &[10], 2, &sizes()),
            (200, 220)
        );
        // Entropy, two rounds: the second round rescores the pool.
        let (t, i) = strategy_cost(Strategy::Entropy, &[5, 5], 1, &sizes());
        assert_eq!((t, i), (95 + 100, 2 * (10 + 200) + 1000));
    }

    #[test]
    fn plan_shrinks_epochs_then_rounds() {
        let tp = Throughput {
            train_seconds_per_image: 0.01,
            infer_seconds_per_image: 0.003,
        };
        let all = [Strategy::Random, Strategy::Entropy];
        let free = plan(
            &all,
            20,
            3,
            4,
            &sizes(),
            tp,
            ComputeBudget::default(),
            0,
            0.0,
        );
        assert_eq!(
            (free.round_sizes.len(), free.retrain_epochs, free.fits),
            (3, 4, true)
        );
        let tight = ComputeBudget {
            images: Some(3000),
            seconds: None,
        };
        let p = plan(&all, 20, 3, 4, &sizes(), tp, tight, 100, 1.0);
        assert!(p.fits && p.retrain_epochs < 4, "{p:?}");
        let used: u64 = p.strategies.iter().map(|s| s.images).sum();
        assert!(used <= 2900);
        let shares: u64 = p.strategies.iter().map(|s| s.share.images.unwrap()).sum();
        assert!((2890..=2900).contains(&shares), "{shares}");
        let hopeless = ComputeBudget {
            images: Some(10),
            seconds: None,
        };
        let p = plan(&all, 20, 3, 4, &sizes(), tp, hopeless, 100, 1.0);
        assert_eq!(
            (p.round_sizes.len(), p.retrain_epochs, p.fits),
            (1, 1, false)
        );
        assert!(
            p.lines()[0].starts_with("plan: 1 round(s) of [20] labels"),
            "{:?}",
            p.lines()
        );
    }

    #[test]
    fn meter_stops_at_its_share() {
        let mut m = Meter::new(ComputeBudget {
            images: Some(100),
            seconds: None,
        });
        assert_eq!(m.spent_with(99), None);
        m.add(60);
        assert_eq!(m.spent_with(40), Some(StopReason::ImageBudget));
        let m = Meter::new(ComputeBudget {
            images: None,
            seconds: Some(0.0),
        });
        assert_eq!(m.spent_with(0), Some(StopReason::TimeBudget));
    }
}
