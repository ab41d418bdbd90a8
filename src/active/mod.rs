//! Active learning: evaluation metrics, uncertainty scores, committee disagreement, diversity,
//! label balancing, and the purchase rules that spend a labelling budget on an unlabelled pool.
//!
//! Everything here is a pure function over host slices in row-major `[N, L]` layout, where `L`
//! is the number of labels (classes for softmax data). Scores follow one convention: higher
//! means "buy this first".
//!
//! One purchase round, on a pool of three images with two independent labels each:
//!
//! ```
//! use labelwise::active::{choose, score_rows, Pool};
//! use labelwise::backend::{Aggregate, ScoreParams, Uncertainty};
//!
//! let mut pool = Pool::new(vec!["a.png".into(), "b.png".into(), "c.png".into()])?;
//! let logits = [4.0, -3.0, 0.1, 0.2, -5.0, 6.0]; // [3 images, 2 labels]
//! let p = ScoreParams {
//!     uncertainty: Uncertainty::Entropy,
//!     aggregate: Aggregate::Mean,
//!     multilabel: true,
//! };
//! let scores = score_rows(&logits, 2, p)?;
//! let purchase = choose(&pool, &scores, 1)?;
//! assert_eq!(pool.file(purchase[0])?, "b.png"); // both its labels sit near p = 0.5
//! pool.mark_bought(&purchase)?;
//! assert_eq!(choose(&pool, &scores, 5)?.len(), 2); // never b.png again
//! # Ok::<(), labelwise::Error>(())
//! ```

pub mod balance;
pub mod committee;
pub mod diversity;
pub mod metrics;
pub mod select;
pub mod uncertainty;

use std::fmt;
use std::str::FromStr;

use crate::backend::{Aggregate, ScoreParams, Uncertainty};
use crate::error::{Error, Result};

pub use balance::{label_weights, weighted_score_rows};
pub use committee::{CommitteeParams, Disagreement};
pub use diversity::{coreset_greedy, uncertain_diverse};
pub use metrics::{evaluate, predict, Metrics};
pub use select::{choose, choose_random, top_k, Pool};
pub use uncertainty::{probabilities, score_rows};

/// How a purchase round chooses which labels to buy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Strategy {
    /// A uniform random sample: the baseline every other strategy is measured against.
    Random,
    LeastConfidence,
    Margin,
    Entropy,
    /// Disagreement among several models' probabilities.
    Committee {
        measure: Disagreement,
    },
    /// Greedy k-centre over embeddings, no scores.
    Coreset,
    /// Entropy short-list, then k-means++ seeding over embeddings.
    Hybrid,
    /// An uncertainty weighted per label by `1 - F1` on the validation set.
    Balanced {
        uncertainty: Uncertainty,
    },
}

impl Strategy {
    /// Every strategy, in the order `--help` lists them.
    pub const ALL: [Strategy; 12] = [
        Strategy::Random,
        Strategy::LeastConfidence,
        Strategy::Margin,
        Strategy::Entropy,
        Strategy::Committee {
            measure: Disagreement::Vote,
        },
        Strategy::Committee {
            measure: Disagreement::Consensus,
        },
        Strategy::Committee {
            measure: Disagreement::MeanKl,
        },
        Strategy::Coreset,
        Strategy::Hybrid,
        Strategy::Balanced {
            uncertainty: Uncertainty::LeastConfidence,
        },
        Strategy::Balanced {
            uncertainty: Uncertainty::Margin,
        },
        Strategy::Balanced {
            uncertainty: Uncertainty::Entropy,
        },
    ];

    /// The name used on the command line and in logs, e.g. `committee-kl`.
    pub fn name(self) -> &'static str {
        match self {
            Strategy::Random => "random",
            Strategy::LeastConfidence => "least-confidence",
            Strategy::Margin => "margin",
            Strategy::Entropy => "entropy",
            Strategy::Committee { measure } => match measure {
                Disagreement::Vote => "committee-vote",
                Disagreement::Consensus => "committee-consensus",
                Disagreement::MeanKl => "committee-kl",
            },
            Strategy::Coreset => "coreset",
            Strategy::Hybrid => "hybrid",
            Strategy::Balanced { uncertainty } => match uncertainty {
                Uncertainty::LeastConfidence => "balanced-least-confidence",
                Uncertainty::Margin => "balanced-margin",
                Uncertainty::Entropy => "balanced-entropy",
            },
        }
    }

    /// One line with the formula, for `--help` and the README. `p` is the softmax (or, per
    /// label, the sigmoid) probability; multi-label per-label scores are aggregated by
    /// mean, max or sum.
    pub fn describe(self) -> &'static str {
        match self {
            Strategy::Random => "uniform random sample of the unbought pool (the baseline)",
            Strategy::LeastConfidence => {
                "1 - max_c p_c; multi-label: min(p, 1 - p) per label, aggregated"
            }
            Strategy::Margin => {
                "1 - (p_top1 - p_top2); multi-label: 1 - |2p - 1| per label, aggregated"
            }
            Strategy::Entropy => {
                "-sum_c p_c ln p_c; multi-label: -p ln p - (1-p) ln(1-p) per label, aggregated"
            }
            Strategy::Committee { measure } => match measure {
                Disagreement::Vote => {
                    "-sum_c V_c ln V_c over the members' hard-vote shares V (per label if multi)"
                }
                Disagreement::Consensus => {
                    "H(q), the entropy of the members' mean probability q = mean_k p_k"
                }
                Disagreement::MeanKl => {
                    "mean_k KL(p_k || q), q = mean_k p_k: how far members stray from consensus"
                }
            },
            Strategy::Coreset => {
                "greedy k-centre: buy argmax_x min_s ||e_x - e_s||, s over labelled and bought"
            }
            Strategy::Hybrid => {
                "top 4k of the pool by entropy, then k of them by k-means++ seeding on embeddings"
            }
            Strategy::Balanced { uncertainty } => match uncertainty {
                Uncertainty::LeastConfidence => {
                    "least confidence weighted per label by w_l = max(1 - F1_l, 0.05)"
                }
                Uncertainty::Margin => "margin weighted per label by w_l = max(1 - F1_l, 0.05)",
                Uncertainty::Entropy => "entropy weighted per label by w_l = max(1 - F1_l, 0.05)",
            },
        }
    }

    /// The per-row uncertainty this strategy ranks by, if it ranks by one computed from a
    /// single model's logits (the hybrid short-lists by entropy).
    pub fn uncertainty(self) -> Option<Uncertainty> {
        match self {
            Strategy::LeastConfidence => Some(Uncertainty::LeastConfidence),
            Strategy::Margin => Some(Uncertainty::Margin),
            Strategy::Entropy | Strategy::Hybrid => Some(Uncertainty::Entropy),
            Strategy::Balanced { uncertainty } => Some(uncertainty),
            Strategy::Random | Strategy::Committee { .. } | Strategy::Coreset => None,
        }
    }

    /// The [`ScoreParams`] for [`score_rows`] or [`weighted_score_rows`], if this strategy
    /// scores logits.
    pub fn score_params(self, multilabel: bool, aggregate: Aggregate) -> Option<ScoreParams> {
        self.uncertainty().map(|uncertainty| ScoreParams {
            uncertainty,
            aggregate,
            multilabel,
        })
    }

    /// Whether the strategy needs image embeddings (coreset, hybrid).
    pub fn needs_embeddings(self) -> bool {
        matches!(self, Strategy::Coreset | Strategy::Hybrid)
    }

    /// Whether the strategy needs several models' probabilities.
    pub fn needs_committee(self) -> bool {
        matches!(self, Strategy::Committee { .. })
    }

    /// Whether the strategy needs per-label validation F1 scores.
    pub fn needs_label_f1(self) -> bool {
        matches!(self, Strategy::Balanced { .. })
    }
}

impl fmt::Display for Strategy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Strategy {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        Strategy::ALL
            .into_iter()
            .find(|k| k.name() == s)
            .ok_or_else(|| {
                let names: Vec<&str> = Strategy::ALL.iter().map(|k| k.name()).collect();
                Error::InvalidArgument(format!(
                    "unknown strategy {s:?} (expected one of: {})",
                    names.join(", ")
                ))
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_are_unique() {
        let mut names = std::collections::HashSet::new();
        for s in Strategy::ALL {
            assert_eq!(s.name().parse::<Strategy>().unwrap(), s);
            assert_eq!(s.to_string(), s.name());
            assert!(names.insert(s.name()), "duplicate name {}", s.name());
            assert!(
                !s.describe().is_empty() && s.describe().len() < 100,
                "{}",
                s.describe()
            );
        }
        let err = "entropyy".parse::<Strategy>().unwrap_err().to_string();
        assert!(err.contains("balanced-entropy"), "{err}");
    }

    #[test]
    fn requirements() {
        assert!(Strategy::Hybrid.needs_embeddings() && Strategy::Coreset.needs_embeddings());
        assert!(Strategy::Committee {
            measure: Disagreement::MeanKl
        }
        .needs_committee());
        let p = Strategy::Margin.score_params(true, Aggregate::Max).unwrap();
        assert_eq!(
            (p.uncertainty, p.aggregate, p.multilabel),
            (Uncertainty::Margin, Aggregate::Max, true)
        );
        assert!(Strategy::Random
            .score_params(false, Aggregate::Mean)
            .is_none());
        assert!("balanced-entropy"
            .parse::<Strategy>()
            .unwrap()
            .needs_label_f1());
    }
}
