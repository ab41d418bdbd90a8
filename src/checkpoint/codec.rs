//! The checkpoint manifest's JSON: the training state, reports, plans and purchase records
//! written out and read back exactly.
//!
//! Floats are JSON numbers written by serde_json's shortest round-trip form and parsed with its
//! `float_roundtrip` feature, so every f64 comes back bit for bit; f32 purchase scores travel
//! as the f64 of the same value. A non-finite float (never expected) is written as a string
//! ("NaN", "inf", "-inf") rather than JSON's lossy `null`. Reading never panics: a missing or
//! mistyped field is an error naming its place in the manifest.

use serde_json::{json, Map, Value};

use crate::active::metrics::Metrics;
use crate::active::Strategy;
use crate::experiment::{
    ComputeBudget, Plan, RoundRecord, StopReason, StrategyOutcome, StrategyPlan, Throughput,
};
use crate::train::{EpochReport, FitState, SplitReport};

/// A manifest decoding error: where, and what was wrong.
pub type DecodeResult<T> = std::result::Result<T, String>;

/// A float as JSON, exact for finite values.
pub fn float(x: f64) -> Value {
    match x {
        x if x.is_finite() => json!(x),
        x if x.is_nan() => json!("NaN"),
        x if x > 0.0 => json!("inf"),
        _ => json!("-inf"),
    }
}

fn floats(xs: &[f64]) -> Value {
    Value::Array(xs.iter().map(|&x| float(x)).collect())
}

/// 0/1 rows as a string of digits: a compact, readable form for the epoch's predictions.
fn bits(xs: &[u8]) -> Value {
    Value::String(xs.iter().map(|&b| if b == 0 { '0' } else { '1' }).collect())
}

/// A read position in the manifest: a value and the path that led to it, for errors.
#[derive(Clone, Copy)]
pub struct Field<'a> {
    value: &'a Value,
    at: &'a str,
}

impl<'a> Field<'a> {
    pub fn root(value: &'a Value) -> Self {
        Field { value, at: "" }
    }

    fn fail<T>(&self, what: &str) -> DecodeResult<T> {
        let at = if self.at.is_empty() {
            "manifest"
        } else {
            self.at
        };
        Err(format!(
            "{at}: expected {what}, found {}",
            short(self.value)
        ))
    }

    /// The named member of an object, `null` when absent.
    pub fn get(&self, key: &str) -> DecodeResult<Owned<'a>> {
        match self.value {
            Value::Object(map) => Ok(Owned {
                value: map.get(key).unwrap_or(&Value::Null),
                at: format!("{}.{key}", self.at),
            }),
            _ => self.fail("an object"),
        }
    }

    pub fn is_null(&self) -> bool {
        self.value.is_null()
    }

    pub fn f64(&self) -> DecodeResult<f64> {
        match self.value {
            Value::Number(n) => n.as_f64().map_or_else(|| self.fail("a number"), Ok),
            Value::String(s) if s == "NaN" => Ok(f64::NAN),
            Value::String(s) if s == "inf" => Ok(f64::INFINITY),
            Value::String(s) if s == "-inf" => Ok(f64::NEG_INFINITY),
            _ => self.fail("a number"),
        }
    }

    pub fn u64(&self) -> DecodeResult<u64> {
        self.value
            .as_u64()
            .map_or_else(|| self.fail("a whole number"), Ok)
    }

    pub fn usize(&self) -> DecodeResult<usize> {
        let n = self.u64()?;
        usize::try_from(n).or_else(|_| self.fail("a smaller whole number"))
    }

    pub fn u32(&self) -> DecodeResult<u32> {
        let n = self.u64()?;
        u32::try_from(n).or_else(|_| self.fail("a 32-bit whole number"))
    }

    pub fn bool(&self) -> DecodeResult<bool> {
        self.value
            .as_bool()
            .map_or_else(|| self.fail("true or false"), Ok)
    }

    pub fn str(&self) -> DecodeResult<&'a str> {
        self.value
            .as_str()
            .map_or_else(|| self.fail("a string"), Ok)
    }

    /// The elements of an array, each with its place.
    pub fn items(&self) -> DecodeResult<Vec<Owned<'a>>> {
        match self.value {
            Value::Array(items) => Ok(items
                .iter()
                .enumerate()
                .map(|(i, value)| Owned {
                    value,
                    at: format!("{}[{i}]", self.at),
                })
                .collect()),
            _ => self.fail("an array"),
        }
    }

    pub fn usizes(&self) -> DecodeResult<Vec<usize>> {
        self.items()?.iter().map(|f| f.field().usize()).collect()
    }

    pub fn f64s(&self) -> DecodeResult<Vec<f64>> {
        self.items()?.iter().map(|f| f.field().f64()).collect()
    }

    fn bits(&self) -> DecodeResult<Vec<u8>> {
        self.str()?
            .chars()
            .map(|c| match c {
                '0' => Ok(0),
                '1' => Ok(1),
                _ => self.fail("a string of 0 and 1"),
            })
            .collect()
    }
}

/// A [`Field`] that owns its path.
pub struct Owned<'a> {
    value: &'a Value,
    at: String,
}

impl Owned<'_> {
    pub fn field(&self) -> Field<'_> {
        Field {
            value: self.value,
            at: &self.at,
        }
    }
}

/// A value's first characters, for an error message.
fn short(v: &Value) -> String {
    let text = v.to_string();
    match text.char_indices().nth(40) {
        Some((i, _)) => format!("{}...", &text[..i]),
        None => text,
    }
}

/// `f` applied to a member that may be `null`.
fn optional<'a, T>(
    owner: &Field<'a>,
    key: &str,
    f: impl FnOnce(Field) -> DecodeResult<T>,
) -> DecodeResult<Option<T>> {
    let member = owner.get(key)?;
    match member.field().is_null() {
        true => Ok(None),
        false => f(member.field()).map(Some),
    }
}

pub fn metrics(m: &Metrics) -> Value {
    json!({
        "macro_f1": float(m.macro_f1),
        "exact_match": float(m.exact_match),
        "hamming_loss": float(m.hamming_loss),
        "per_label_f1": floats(&m.per_label_f1),
        "undefined_f1_labels": m.undefined_f1_labels,
    })
}

pub fn read_metrics(f: Field) -> DecodeResult<Metrics> {
    Ok(Metrics {
        macro_f1: f.get("macro_f1")?.field().f64()?,
        exact_match: f.get("exact_match")?.field().f64()?,
        hamming_loss: f.get("hamming_loss")?.field().f64()?,
        per_label_f1: f.get("per_label_f1")?.field().f64s()?,
        undefined_f1_labels: f.get("undefined_f1_labels")?.field().usizes()?,
    })
}

fn split_report(s: &SplitReport) -> Value {
    json!({"loss": float(s.loss), "metrics": metrics(&s.metrics)})
}

fn read_split_report(f: Field) -> DecodeResult<SplitReport> {
    Ok(SplitReport {
        loss: f.get("loss")?.field().f64()?,
        metrics: read_metrics(f.get("metrics")?.field())?,
    })
}

pub fn epoch_report(e: &EpochReport) -> Value {
    json!({
        "epoch": e.epoch,
        "epochs": e.epochs,
        "train": split_report(&e.train),
        "val": e.val.as_ref().map(split_report),
        "elapsed_s": float(e.elapsed_s),
    })
}

pub fn read_epoch_report(f: Field) -> DecodeResult<EpochReport> {
    Ok(EpochReport {
        epoch: f.get("epoch")?.field().usize()?,
        epochs: f.get("epochs")?.field().usize()?,
        train: read_split_report(f.get("train")?.field())?,
        val: optional(&f, "val", read_split_report)?,
        elapsed_s: f.get("elapsed_s")?.field().f64()?,
    })
}

pub fn epoch_reports(reports: &[EpochReport]) -> Value {
    Value::Array(reports.iter().map(epoch_report).collect())
}

pub fn read_epoch_reports(f: Field) -> DecodeResult<Vec<EpochReport>> {
    f.items()?
        .iter()
        .map(|item| read_epoch_report(item.field()))
        .collect()
}

pub fn fit_state(s: &FitState) -> Value {
    json!({
        "epochs_done": s.epochs_done,
        "batches_done": s.batches_done,
        "steps": s.steps,
        "images": s.images,
        "reports": epoch_reports(&s.reports),
        "loss_sum": float(s.loss_sum),
        "seen": s.seen,
        "y_true": bits(&s.y_true),
        "y_pred": bits(&s.y_pred),
        "seconds": float(s.seconds),
    })
}

pub fn read_fit_state(f: Field) -> DecodeResult<FitState> {
    Ok(FitState {
        epochs_done: f.get("epochs_done")?.field().usize()?,
        batches_done: f.get("batches_done")?.field().usize()?,
        steps: f.get("steps")?.field().u32()?,
        images: f.get("images")?.field().u64()?,
        reports: read_epoch_reports(f.get("reports")?.field())?,
        loss_sum: f.get("loss_sum")?.field().f64()?,
        seen: f.get("seen")?.field().usize()?,
        y_true: f.get("y_true")?.field().bits()?,
        y_pred: f.get("y_pred")?.field().bits()?,
        seconds: f.get("seconds")?.field().f64()?,
    })
}

fn strategy(s: &Strategy) -> Value {
    json!(s.name())
}

fn read_strategy(f: Field) -> DecodeResult<Strategy> {
    f.str()?.parse().map_err(|e: crate::Error| e.to_string())
}

fn stop_reason(r: &StopReason) -> Value {
    json!(match r {
        StopReason::TimeBudget => "time-budget",
        StopReason::ImageBudget => "image-budget",
    })
}

fn read_stop_reason(f: Field) -> DecodeResult<StopReason> {
    match f.str()? {
        "time-budget" => Ok(StopReason::TimeBudget),
        "image-budget" => Ok(StopReason::ImageBudget),
        _ => f.fail("\"time-budget\" or \"image-budget\""),
    }
}

pub fn round_record(r: &RoundRecord) -> Value {
    json!({
        "round": r.round,
        "items": r.items.iter().map(|(file, score)| json!([file, float(*score as f64)]))
            .collect::<Vec<_>>(),
        "bought_total": r.bought_total,
        "seconds": float(r.seconds),
        "images": r.images,
        "test": r.test.as_ref().map(metrics),
    })
}

pub fn read_round_record(f: Field) -> DecodeResult<RoundRecord> {
    let items = f
        .get("items")?
        .field()
        .items()?
        .iter()
        .map(|item| {
            let pair = item.field().items()?;
            let [file, score] = pair.as_slice() else {
                return item.field().fail("a [file, score] pair");
            };
            // The score was an f32 written as the f64 of the same value: the cast is exact.
            Ok((file.field().str()?.to_string(), score.field().f64()? as f32))
        })
        .collect::<DecodeResult<Vec<_>>>()?;
    Ok(RoundRecord {
        round: f.get("round")?.field().usize()?,
        items,
        bought_total: f.get("bought_total")?.field().usize()?,
        seconds: f.get("seconds")?.field().f64()?,
        images: f.get("images")?.field().u64()?,
        test: optional(&f, "test", read_metrics)?,
    })
}

pub fn round_records(rounds: &[RoundRecord]) -> Value {
    Value::Array(rounds.iter().map(round_record).collect())
}

pub fn read_round_records(f: Field) -> DecodeResult<Vec<RoundRecord>> {
    f.items()?
        .iter()
        .map(|item| read_round_record(item.field()))
        .collect()
}

pub fn outcome(o: &StrategyOutcome) -> Value {
    json!({
        "strategy": strategy(&o.strategy),
        "rounds": round_records(&o.rounds),
        "final_test": metrics(&o.final_test),
        "images": o.images,
        "seconds": float(o.seconds),
        "evaluation_seconds": float(o.evaluation_seconds),
        "stopped": o.stopped.as_ref().map(stop_reason),
    })
}

pub fn read_outcome(f: Field) -> DecodeResult<StrategyOutcome> {
    Ok(StrategyOutcome {
        strategy: read_strategy(f.get("strategy")?.field())?,
        rounds: read_round_records(f.get("rounds")?.field())?,
        final_test: read_metrics(f.get("final_test")?.field())?,
        images: f.get("images")?.field().u64()?,
        seconds: f.get("seconds")?.field().f64()?,
        evaluation_seconds: f.get("evaluation_seconds")?.field().f64()?,
        stopped: optional(&f, "stopped", read_stop_reason)?,
    })
}

pub fn stop(r: Option<StopReason>) -> Value {
    r.as_ref().map_or(Value::Null, stop_reason)
}

pub fn read_stop(f: Field, key: &str) -> DecodeResult<Option<StopReason>> {
    optional(&f, key, read_stop_reason)
}

fn budget(b: &ComputeBudget) -> Value {
    json!({"seconds": b.seconds.map(float), "images": b.images})
}

fn read_budget(f: Field) -> DecodeResult<ComputeBudget> {
    Ok(ComputeBudget {
        seconds: optional(&f, "seconds", |f| f.f64())?,
        images: optional(&f, "images", |f| f.u64())?,
    })
}

pub fn plan(p: &Plan) -> Value {
    json!({
        "round_sizes": p.round_sizes,
        "retrain_epochs": p.retrain_epochs,
        "throughput": {
            "train_seconds_per_image": float(p.throughput.train_seconds_per_image),
            "infer_seconds_per_image": float(p.throughput.infer_seconds_per_image),
        },
        "spent_images": p.spent_images,
        "spent_seconds": float(p.spent_seconds),
        "budget": budget(&p.budget),
        "strategies": p.strategies.iter().map(|s| json!({
            "strategy": strategy(&s.strategy),
            "images": s.images,
            "seconds": float(s.seconds),
            "share": budget(&s.share),
        })).collect::<Vec<_>>(),
        "fits": p.fits,
    })
}

pub fn read_plan(f: Field) -> DecodeResult<Plan> {
    let throughput = f.get("throughput")?;
    let t = throughput.field();
    let strategies = f
        .get("strategies")?
        .field()
        .items()?
        .iter()
        .map(|item| {
            let s = item.field();
            Ok(StrategyPlan {
                strategy: read_strategy(s.get("strategy")?.field())?,
                images: s.get("images")?.field().u64()?,
                seconds: s.get("seconds")?.field().f64()?,
                share: read_budget(s.get("share")?.field())?,
            })
        })
        .collect::<DecodeResult<Vec<_>>>()?;
    Ok(Plan {
        round_sizes: f.get("round_sizes")?.field().usizes()?,
        retrain_epochs: f.get("retrain_epochs")?.field().usize()?,
        throughput: Throughput {
            train_seconds_per_image: t.get("train_seconds_per_image")?.field().f64()?,
            infer_seconds_per_image: t.get("infer_seconds_per_image")?.field().f64()?,
        },
        spent_images: f.get("spent_images")?.field().u64()?,
        spent_seconds: f.get("spent_seconds")?.field().f64()?,
        budget: read_budget(f.get("budget")?.field())?,
        strategies,
        fits: f.get("fits")?.field().bool()?,
    })
}

/// An object from `(key, value)` pairs, in order.
pub fn object(pairs: impl IntoIterator<Item = (&'static str, Value)>) -> Value {
    Value::Object(
        pairs
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect::<Map<_, _>>(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    fn through_text(v: &Value) -> Value {
        serde_json::from_str(&serde_json::to_string(v).unwrap()).unwrap()
    }

    #[test]
    fn every_f64_comes_back_bit_for_bit() {
        let mut rng = StdRng::seed_from_u64(7);
        let mut xs: Vec<f64> = vec![
            0.1 + 0.2,
            1.0 / 3.0,
            f64::MIN_POSITIVE,
            5e-324,
            f64::MAX,
            -0.0,
            2.0f64.powi(60) + 1.0,
            f64::NAN,
            f64::INFINITY,
            f64::NEG_INFINITY,
        ];
        xs.extend((0..2000).map(|_| f64::from_bits(rng.random::<u64>())));
        xs.extend((0..2000).map(|_| rng.random::<f64>() * 1e-3));
        let back = through_text(&floats(&xs));
        let read = Field::root(&back).f64s().unwrap();
        for (a, b) in xs.iter().zip(&read) {
            assert!(
                a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan()),
                "{a:e} came back as {b:e}"
            );
        }
    }

    #[test]
    fn f32_scores_come_back_exactly() {
        let mut rng = StdRng::seed_from_u64(8);
        let items: Vec<(String, f32)> = (0..2000)
            .map(|i| (format!("{i}.png"), f32::from_bits(rng.random::<u32>() >> 1)))
            .filter(|(_, s)| s.is_finite())
            .collect();
        let r = RoundRecord {
            round: 2,
            items,
            bought_total: 9,
            seconds: 1.25,
            images: 40,
            test: None,
        };
        let back = through_text(&round_record(&r));
        let read = read_round_record(Field::root(&back)).unwrap();
        for ((_, a), (_, b)) in r.items.iter().zip(&read.items) {
            assert_eq!(a.to_bits(), b.to_bits());
        }
        assert_eq!(read.round, 2);
        assert!(read.test.is_none());
    }

    #[test]
    fn fit_state_round_trips_and_errors_name_the_field() {
        let m = Metrics {
            macro_f1: 0.123456789,
            exact_match: 0.5,
            hamming_loss: 0.0625,
            per_label_f1: vec![0.1, 0.7],
            undefined_f1_labels: vec![1],
        };
        let report = EpochReport {
            epoch: 1,
            epochs: 3,
            train: SplitReport {
                loss: 1.0 / 7.0,
                metrics: m.clone(),
            },
            val: None,
            elapsed_s: 0.3,
        };
        let s = FitState {
            epochs_done: 1,
            batches_done: 2,
            steps: 7,
            images: 90,
            reports: vec![report],
            loss_sum: 12.345,
            seen: 2,
            y_true: vec![0, 1, 1, 0],
            y_pred: vec![1, 1, 0, 0],
            seconds: 4.5,
        };
        let back = through_text(&fit_state(&s));
        assert_eq!(read_fit_state(Field::root(&back)).unwrap(), s);

        let mut broken = back.clone();
        broken["reports"][0]["train"]["metrics"]["macro_f1"] = json!("high");
        let err = read_fit_state(Field::root(&broken)).unwrap_err();
        assert!(err.contains(".reports[0].train.metrics.macro_f1"), "{err}");
        broken["y_pred"] = json!("01x0");
        assert!(read_fit_state(Field::root(&broken)).is_err());
    }
}
