//! Repeated experiments (one per seed) summarised: mean and spread of each strategy's final
//! metrics, of its gain over random, and of its learning curve.

use crate::active::Strategy;
use crate::error::{Error, Result};
use crate::experiment::ExperimentReport;

/// Mean and sample standard deviation (`n - 1` in the denominator; 0 for one value).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Spread {
    pub mean: f64,
    pub std: f64,
    pub n: usize,
}

impl Spread {
    /// The spread of `values`; `None` when there are none.
    pub fn of(values: &[f64]) -> Option<Spread> {
        let n = values.len();
        if n == 0 {
            return None;
        }
        let mean = values.iter().sum::<f64>() / n as f64;
        let std = match n {
            1 => 0.0,
            _ => (values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1) as f64).sqrt(),
        };
        Some(Spread { mean, std, n })
    }
}

/// One point of a mean learning curve: the mean labels bought after a round, and test macro F1.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CurvePoint {
    pub bought: f64,
    pub macro_f1: Spread,
}

/// One strategy over every seed.
#[derive(Debug, Clone, PartialEq)]
pub struct StrategySummary {
    pub strategy: Strategy,
    pub bought: Spread,
    pub macro_f1: Spread,
    pub exact_match: Spread,
    pub hamming_loss: Spread,
    /// Paired per seed: this strategy's final macro F1 minus random's in the same run.
    pub gain_macro_f1: Option<Spread>,
    pub gain_exact_match: Option<Spread>,
    /// Seeds on which the strategy's macro F1 beat random's.
    pub wins: usize,
    /// The pre-trained point, then one point per purchase total at which a round finished on
    /// every seed.
    pub curve: Vec<CurvePoint>,
}

/// Every strategy over every seed.
#[derive(Debug, Clone, PartialEq)]
pub struct Summary {
    pub seeds: Vec<u64>,
    pub baseline_macro_f1: Spread,
    pub strategies: Vec<StrategySummary>,
    /// Wall-clock seconds of each run.
    pub seconds: Spread,
}

fn spread(values: &[f64]) -> Result<Spread> {
    Spread::of(values).ok_or_else(|| Error::InvalidArgument("summarize: no values".into()))
}

/// Summarises runs of the same experiment with different seeds. Gains over random are paired
/// by seed (each run's strategy against the same run's random), which removes the spread that
/// the seed's pre-trained model puts into both.
///
/// # Errors
/// [`Error::InvalidArgument`] when `reports` is empty or the runs compared other strategies.
pub fn summarize(reports: &[ExperimentReport]) -> Result<Summary> {
    let first = reports
        .first()
        .ok_or_else(|| Error::InvalidArgument("summarize: no runs".into()))?;
    let strategies: Vec<Strategy> = first.outcomes.iter().map(|o| o.strategy).collect();
    for r in reports {
        let these: Vec<Strategy> = r.outcomes.iter().map(|o| o.strategy).collect();
        if these != strategies {
            return Err(Error::InvalidArgument(format!(
                "summarize: seed {} ran {these:?}, seed {} ran {strategies:?}",
                r.seed, first.seed
            )));
        }
    }
    let baselines: Vec<f64> = reports.iter().map(|r| r.baseline.macro_f1).collect();

    let mut out = Vec::with_capacity(strategies.len());
    for (s, &strategy) in strategies.iter().enumerate() {
        let outcomes: Vec<_> = reports.iter().map(|r| &r.outcomes[s]).collect();
        let of = |f: &dyn Fn(&crate::active::Metrics) -> f64| -> Vec<f64> {
            outcomes.iter().map(|o| f(&o.final_test)).collect()
        };
        let gains: Vec<_> = reports
            .iter()
            .zip(&outcomes)
            .filter_map(|(r, o)| r.gain_over_random(o))
            .collect();
        let gain_f1: Vec<f64> = gains.iter().map(|g| g.macro_f1).collect();
        let gain_exact: Vec<f64> = gains.iter().map(|g| g.exact_match).collect();

        // A point for every purchase total that every seed reached with a finished round (the
        // same rounds when the plan is the same; a time budget can plan differently per seed).
        let per_seed: Vec<Vec<(usize, f64)>> = outcomes
            .iter()
            .map(|o| {
                o.rounds
                    .iter()
                    .filter_map(|rd| Some((rd.bought_total, rd.test.as_ref()?.macro_f1)))
                    .collect()
            })
            .collect();
        let mut curve = vec![CurvePoint {
            bought: 0.0,
            macro_f1: spread(&baselines)?,
        }];
        for &(bought, _) in per_seed.first().map_or(&[][..], Vec::as_slice) {
            let ys: Vec<f64> = per_seed
                .iter()
                .filter_map(|seed| seed.iter().find(|p| p.0 == bought).map(|p| p.1))
                .collect();
            if ys.len() == outcomes.len() {
                curve.push(CurvePoint {
                    bought: bought as f64,
                    macro_f1: spread(&ys)?,
                });
            }
        }

        out.push(StrategySummary {
            strategy,
            bought: spread(
                &outcomes
                    .iter()
                    .map(|o| o.bought() as f64)
                    .collect::<Vec<_>>(),
            )?,
            macro_f1: spread(&of(&|m| m.macro_f1))?,
            exact_match: spread(&of(&|m| m.exact_match))?,
            hamming_loss: spread(&of(&|m| m.hamming_loss))?,
            gain_macro_f1: Spread::of(&gain_f1),
            gain_exact_match: Spread::of(&gain_exact),
            wins: gain_f1.iter().filter(|&&g| g > 0.0).count(),
            curve,
        });
    }
    Ok(Summary {
        seeds: reports.iter().map(|r| r.seed).collect(),
        baseline_macro_f1: spread(&baselines)?,
        strategies: out,
        seconds: spread(&reports.iter().map(|r| r.seconds).collect::<Vec<_>>())?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spread_uses_the_sample_deviation() {
        let s = Spread::of(&[1.0, 2.0, 3.0]).unwrap();
        assert_eq!((s.mean, s.std, s.n), (2.0, 1.0, 3));
        assert_eq!(Spread::of(&[5.0]).unwrap().std, 0.0);
        assert!(Spread::of(&[]).is_none());
    }
}
