//! The purchase loop end to end on tiny 32x32 datasets: every strategy buys within the label
//! budget and never twice, a compute budget stops a run with its purchases kept, and repeated
//! runs report a mean and spread.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use labelwise::active::Strategy;
use labelwise::backend::cpu::CpuBackend;
use labelwise::backend::Aggregate;
use labelwise::data::Dataset;
use labelwise::experiment::{self, ComputeBudget, Evaluator, ExperimentConfig, ModelSettings};
use labelwise::model::{IMAGENET_MEAN, IMAGENET_STD};
use labelwise::optim::AdamConfig;
use labelwise::train::TrainConfig;
use labelwise::BackendHandle;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const SIZE: usize = 32;
const LABELS: usize = 4;

/// `n` images whose brightness in one quadrant per positive label is raised, plus noise, so a
/// model can learn something in one epoch. Multi-label rows have one to three labels.
fn dataset(n: usize, multilabel: bool, seed: u64, prefix: &str) -> Dataset {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut labels = Vec::with_capacity(n * LABELS);
    let mut pixels = Vec::with_capacity(n * SIZE * SIZE * 3);
    for _ in 0..n {
        let mut row = [0u8; LABELS];
        if multilabel {
            for _ in 0..rng.random_range(1..=3) {
                row[rng.random_range(0..LABELS)] = 1;
            }
        } else {
            row[rng.random_range(0..LABELS)] = 1;
        }
        for y in 0..SIZE {
            for x in 0..SIZE {
                let quadrant = (y / (SIZE / 2)) * 2 + x / (SIZE / 2);
                let base = if row[quadrant] == 1 { 180 } else { 40 };
                let v = (base + rng.random_range(0..60)) as u8;
                pixels.extend([v, v, v]);
            }
        }
        labels.extend(row);
    }
    Dataset {
        label_names: (0..LABELS).map(|l| format!("label{l}")).collect(),
        files: (0..n).map(|i| format!("{prefix}{i:04}.png")).collect(),
        labels: Some(labels),
        size: SIZE,
        pixels,
    }
}

fn config(strategies: Vec<Strategy>, multilabel: bool) -> ExperimentConfig {
    let train = TrainConfig {
        epochs: 1,
        batch_size: 8,
        adam: AdamConfig::default(),
        seed: 3,
        lr_schedule: Default::default(),
    };
    ExperimentConfig {
        model: ModelSettings {
            image_size: SIZE,
            margin: 0.2,
            scale: 16.0,
            multilabel: Some(multilabel),
            mean: IMAGENET_MEAN,
            std: IMAGENET_STD,
            init_encoder: None,
        },
        pretrain: train.clone(),
        retrain: train,
        val_fraction: 0.25,
        budget: 7,
        rounds: 2,
        strategies,
        aggregate: Aggregate::Max,
        seed: 3,
        infer_batch: 32,
        committee_size: 2,
        committee_epochs: 1,
        compute: ComputeBudget::default(),
        evaluator: Evaluator::FineTune,
    }
}

/// Every strategy through two rounds: exactly the label budget bought, split 3 + 4, every item
/// from the pool and none twice, scores finite, metrics after each round.
fn every_strategy_buys_within_budget(multilabel: bool) {
    let backend: BackendHandle = Arc::new(CpuBackend);
    let labelled = dataset(16, multilabel, 1, "l");
    let pool = dataset(20, multilabel, 2, "p");
    let test = dataset(8, multilabel, 3, "t");
    let cfg = config(Strategy::ALL.to_vec(), multilabel);
    let mut plans = 0;
    let report = experiment::run(backend, &labelled, &pool, &test, &cfg, &mut |e| {
        if let experiment::Event::Plan(_) = e {
            plans += 1;
        }
    })
    .unwrap();
    assert_eq!(plans, 1);
    assert_eq!(report.multilabel, multilabel);
    assert_eq!(report.outcomes.len(), Strategy::ALL.len());

    let pool_files: HashSet<&str> = pool.files.iter().map(String::as_str).collect();
    for o in &report.outcomes {
        let name = o.strategy.name();
        assert_eq!(o.rounds.len(), 2, "{name}");
        assert_eq!(o.rounds[0].items.len(), 3, "{name}");
        assert_eq!(o.rounds[1].items.len(), 4, "{name}");
        assert_eq!(o.bought(), 7, "{name}");
        assert!(o.stopped.is_none(), "{name}");
        let mut seen = HashSet::new();
        for rd in &o.rounds {
            assert!(
                rd.test.is_some(),
                "{name}: round {} has no metrics",
                rd.round
            );
            for (file, score) in &rd.items {
                assert!(pool_files.contains(file.as_str()), "{name} bought {file}");
                assert!(seen.insert(file.clone()), "{name} bought {file} twice");
                assert!(score.is_finite(), "{name}: score {score} for {file}");
            }
        }
        // The fine-tune evaluator's final model is the last round's.
        assert_eq!(Some(&o.final_test), o.rounds[1].test.as_ref(), "{name}");
    }
}

#[test]
fn every_strategy_single_label() {
    every_strategy_buys_within_budget(false);
}

#[test]
fn every_strategy_multi_label() {
    every_strategy_buys_within_budget(true);
}

#[test]
fn missing_strategy_inputs_are_typed_errors() {
    let backend: BackendHandle = Arc::new(CpuBackend);
    let pool = labelwise::active::Pool::new(vec!["a".into(), "b".into()]).unwrap();
    let scoring = experiment::Scoring {
        pool: None,
        centres: None,
        committee: None,
        label_f1: None,
    };
    let params = experiment::ChooseParams {
        aggregate: Aggregate::Mean,
        multilabel: false,
        num_labels: 2,
        seed: 0,
    };
    for s in Strategy::ALL.into_iter().filter(|&s| s != Strategy::Random) {
        let err = experiment::choose(&s, &backend, &scoring, &pool, 1, params).unwrap_err();
        assert!(
            matches!(err, labelwise::Error::StrategyInput { strategy, .. } if strategy == s.name()),
            "{s}: {err}"
        );
    }
}

/// A fresh empty folder under the system temp folder.
fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("labelwise-rounds-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn labelwise(args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_labelwise"))
        .args(["--device", "cpu", "--threads", "2"])
        .args(args)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

fn json(path: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// Tiny train and test folders on disk; returns their paths as strings.
fn folders(dir: &Path, multilabel: bool) -> (String, String) {
    let (train, test) = (dir.join("train"), dir.join("test"));
    dataset(36, multilabel, 4, "").save_folder(&train).unwrap();
    dataset(8, multilabel, 5, "").save_folder(&test).unwrap();
    (
        train.to_str().unwrap().into(),
        test.to_str().unwrap().into(),
    )
}

const RUN: [&str; 12] = [
    "--initial-labelled",
    "16",
    "--epochs",
    "1",
    "--batch-size",
    "8",
    "--image-size",
    "32",
    "--committee-size",
    "2",
    "--budget",
    "12",
];

#[test]
fn image_budget_stops_the_run_and_keeps_purchases() {
    let dir = temp_dir("images");
    let (train, test) = folders(&dir, false);
    let out = dir.join("out");
    // Pre-training spends about 16 + 8 + 20 = 44 images; 40 more cannot pay for the planned
    // retraining, so every strategy stops part way with what it bought.
    let mut args = vec!["run", "--train", &train, "--test", &test, "--rounds", "3"];
    args.extend(RUN);
    args.extend([
        "--retrain-epochs",
        "2",
        "--strategies",
        "random,entropy,committee-kl",
    ]);
    args.extend(["--image-budget", "84", "--out", out.to_str().unwrap()]);
    let (ok, text) = labelwise(&args);
    assert!(ok, "{text}");
    assert!(
        text.contains("plan: 1 round(s) of [12] labels, 1 retrain epoch(s)"),
        "{text}"
    );
    assert!(
        text.contains("stopped early (image budget spent)"),
        "{text}"
    );

    let doc = json(&out.join("results.json"));
    let mut any_bought = false;
    for (s, plan) in doc["strategies"]
        .as_array()
        .unwrap()
        .iter()
        .zip(doc["plan"]["strategies"].as_array().unwrap())
    {
        let name = s["strategy"].as_str().unwrap();
        assert_eq!(s["stopped"], "image budget spent", "{name}");
        let share = plan["share_images"].as_u64().unwrap();
        // The meter checks before every training batch and every scoring pass, so a share is
        // overrun by at most one batch (8) or one pass over the pool (20 images).
        assert!(s["images"].as_u64().unwrap() <= share + 20, "{name}: {s}");
        let rounds = s["rounds"].as_array().unwrap();
        let bought: Vec<&str> = rounds
            .iter()
            .flat_map(|r| {
                r["items"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|i| i["file"].as_str().unwrap())
            })
            .collect();
        assert_eq!(bought.len() as u64, s["bought"].as_u64().unwrap(), "{name}");
        any_bought |= !bought.is_empty();
        if let Some(last) = rounds.last() {
            assert!(
                last["test"].is_null(),
                "{name}: the cut round has no metrics"
            );
        }
        // The purchase list on disk holds exactly what results.json says was bought.
        let mut csv = csv::Reader::from_path(out.join(format!("purchases/{name}.csv"))).unwrap();
        let listed: Vec<String> = csv.records().map(|r| r.unwrap()[1].to_string()).collect();
        assert_eq!(listed, bought, "{name}");
        assert!(
            s["test"]["macro_f1"].is_number(),
            "{name}: a final model is still scored"
        );
    }
    assert!(any_bought, "the budget should leave room for a purchase");

    // A time budget that pre-training alone exceeds: a clean stop with nothing bought.
    let out = dir.join("out-time");
    let mut args = vec!["run", "--train", &train, "--test", &test];
    args.extend(RUN);
    args.extend(["--time-budget", "0.001", "--out", out.to_str().unwrap()]);
    let (ok, text) = labelwise(&args);
    assert!(ok, "{text}");
    assert!(text.contains("stopped early (time budget spent)"), "{text}");
    let doc = json(&out.join("results.json"));
    for s in doc["strategies"].as_array().unwrap() {
        assert_eq!(s["bought"], 0);
        assert_eq!(s["stopped"], "time budget spent");
    }
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn repeat_reports_mean_and_spread_multi_label() {
    let dir = temp_dir("repeat");
    let (train, test) = folders(&dir, true);
    let out = dir.join("out");
    let mut args = vec!["run", "--train", &train, "--test", &test, "--rounds", "1"];
    args.extend(RUN);
    args.extend([
        "--retrain-epochs",
        "1",
        "--strategies",
        "margin,coreset",
        "--repeat",
        "2",
    ]);
    args.extend(["--evaluator", "fixed", "--out", out.to_str().unwrap()]);
    let (ok, text) = labelwise(&args);
    assert!(ok, "{text}");
    assert!(text.contains("over 2 seed(s) [0, 1]"), "{text}");
    for seed in ["seed-0", "seed-1"] {
        assert!(out.join(seed).join("results.json").exists(), "{seed}");
    }
    let doc = json(&out.join("summary.json"));
    assert_eq!(doc["seeds"], serde_json::json!([0, 1]));
    let strategies = doc["strategies"].as_array().unwrap();
    let names: Vec<&str> = strategies
        .iter()
        .map(|s| s["strategy"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["random", "margin", "coreset"]);
    for s in strategies {
        assert_eq!(s["macro_f1"]["n"], 2);
        assert!(s["macro_f1"]["std"].as_f64().unwrap() >= 0.0);
        assert!(s["gain_over_random"]["macro_f1"]["mean"].is_number());
        assert_eq!(
            s["curve"].as_array().unwrap().len(),
            2,
            "pre-trained point and one round"
        );
    }
    // Random against itself gains exactly nothing on every seed.
    assert_eq!(strategies[0]["gain_over_random"]["macro_f1"]["std"], 0.0);
    let curve = std::fs::read_to_string(out.join("learning_curve_summary.csv")).unwrap();
    assert!(curve.starts_with("strategy,labels_bought,macro_f1_mean,macro_f1_std,seeds"));
    assert_eq!(curve.lines().count(), 1 + 3 * 2);
    assert!(out.join("learning_curve_summary.png").exists());
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn purchase_gets_or_refuses_extra_inputs() {
    let dir = temp_dir("purchase");
    let (train, test) = folders(&dir, false);
    let model = dir.join("model.safetensors");
    let model_s = model.to_str().unwrap();
    let (ok, text) = labelwise(&[
        "train",
        "--data",
        &test,
        "--out",
        model_s,
        "--epochs",
        "1",
        "--batch-size",
        "4",
        "--image-size",
        "32",
        "--curves",
        "false",
    ]);
    assert!(ok, "{text}");
    let list = dir.join("buy.csv");
    let list_s = list.to_str().unwrap();
    let base = [
        "purchase", "--model", model_s, "--pool", &train, "--budget", "5", "--out", list_s,
    ];

    // Without --labelled a committee cannot be trained: a clear error naming the flag.
    let mut args = base.to_vec();
    args.extend(["--strategy", "committee-vote"]);
    let (ok, text) = labelwise(&args);
    assert!(!ok);
    assert!(
        text.contains("--labelled") && text.contains("committee-vote"),
        "{text}"
    );

    // With it, committee and coreset buy five distinct files.
    for strategy in ["committee-vote", "coreset", "balanced-entropy"] {
        let mut args = base.to_vec();
        args.extend([
            "--strategy",
            strategy,
            "--labelled",
            &test,
            "--committee-size",
            "2",
        ]);
        let (ok, text) = labelwise(&args);
        assert!(ok, "{strategy}: {text}");
        let mut csv = csv::Reader::from_path(&list).unwrap();
        let files: HashSet<String> = csv.records().map(|r| r.unwrap()[1].to_string()).collect();
        assert_eq!(files.len(), 5, "{strategy}");
    }
    std::fs::remove_dir_all(&dir).ok();
}
