//! Result tables, machine-readable files and plots; every file is written atomically.

use std::path::Path;

use anyhow::Context;
use serde_json::json;

use labelwise::active::metrics::Metrics;
use labelwise::experiment::ExperimentReport;
use labelwise::io::write_atomic;
use labelwise::plot::{self, EpochPoint, Point, Series};
use labelwise::train::EpochReport;

/// Serialises rows through the csv crate and writes them atomically.
fn write_csv(path: &Path, header: &[String], rows: impl Iterator<Item = Vec<String>>) -> anyhow::Result<()> {
    let mut w = csv::Writer::from_writer(Vec::new());
    w.write_record(header)?;
    for row in rows {
        w.write_record(&row)?;
    }
    let bytes = w.into_inner().map_err(|e| anyhow::anyhow!("{e}"))?;
    write_atomic(path, &bytes).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

/// `prefix0, prefix1, ...`
pub fn numbered(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}{i}")).collect()
}

/// A CSV with a `file` column then one column per name, from a row-major matrix.
pub fn write_matrix(path: &Path, files: &[String], names: &[String], values: &[f32]) -> anyhow::Result<()> {
    let mut header = vec!["file".to_string()];
    header.extend(names.iter().cloned());
    let width = names.len();
    write_csv(
        path,
        &header,
        files.iter().enumerate().map(|(i, f)| {
            let mut row = vec![f.clone()];
            row.extend(values[i * width..(i + 1) * width].iter().map(|v| v.to_string()));
            row
        }),
    )
}

/// The purchase list: rank, file, score.
pub fn write_purchase(path: &Path, chosen: &[(String, f32)]) -> anyhow::Result<()> {
    write_csv(
        path,
        &["rank".into(), "file".into(), "score".into()],
        chosen.iter().enumerate().map(|(i, (f, s))| vec![(i + 1).to_string(), f.clone(), s.to_string()]),
    )
}

/// The first column of a CSV with a header (file names to exclude).
pub fn read_first_column(path: &Path) -> anyhow::Result<Vec<String>> {
    let mut r = csv::ReaderBuilder::new()
        .flexible(true)
        .trim(csv::Trim::All)
        .from_path(path)
        .with_context(|| format!("reading {}", path.display()))?;
    let headers = r.headers().with_context(|| format!("reading {}", path.display()))?.clone();
    // A purchase list names files in its second column; anything else in its first.
    let column = if headers.get(0) == Some("rank") && headers.get(1) == Some("file") { 1 } else { 0 };
    let mut out = Vec::new();
    for (i, rec) in r.records().enumerate() {
        let rec = rec.with_context(|| format!("{}: line {}", path.display(), i + 2))?;
        if let Some(f) = rec.get(column) {
            out.push(f.to_string());
        }
    }
    Ok(out)
}

/// Says which labels had no true and no predicted positive (their F1 counts as 0).
pub fn note_undefined_f1(m: &Metrics, names: &[String]) {
    if m.undefined_f1_labels.is_empty() {
        return;
    }
    let list: Vec<&str> =
        m.undefined_f1_labels.iter().filter_map(|&i| names.get(i).map(String::as_str)).collect();
    println!(
        "note: F1 is undefined for {} (no true and no predicted positives) and counts as 0 in macro F1",
        list.join(", ")
    );
}

fn metrics_json(m: &Metrics, names: &[String]) -> serde_json::Value {
    json!({
        "macro_f1": m.macro_f1,
        "exact_match": m.exact_match,
        "hamming_loss": m.hamming_loss,
        "per_label_f1": names.iter().zip(&m.per_label_f1).map(|(n, f)| (n.clone(), json!(f))).collect::<serde_json::Map<_, _>>(),
        "undefined_f1_labels": m.undefined_f1_labels.iter().filter_map(|&i| names.get(i)).collect::<Vec<_>>(),
    })
}

pub fn write_metrics_json(path: &Path, m: &Metrics, names: &[String]) -> anyhow::Result<()> {
    let text = serde_json::to_string_pretty(&metrics_json(m, names))?;
    write_atomic(path, text.as_bytes()).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

/// The final table: one row per strategy, with the gain over random at the same budget.
pub fn results_table(r: &ExperimentReport) -> String {
    let mut out = format!(
        "{:<20} {:>7} {:>9} {:>12} {:>9} {:>10} {:>10} {:>10}\n",
        "strategy", "bought", "macro F1", "exact match", "Hamming", "dF1", "dexact", "dHamming"
    );
    out += &format!(
        "{:<20} {:>7} {:>9.4} {:>12.4} {:>9.4} {:>10} {:>10} {:>10}\n",
        "(pre-trained only)", 0, r.baseline.macro_f1, r.baseline.exact_match, r.baseline.hamming_loss, "", "", ""
    );
    for o in &r.outcomes {
        let Some(m) = o.test() else { continue };
        let (df1, dex, dham) = match r.gain_over_random(o) {
            Some(g) => (format!("{:+.4}", g.macro_f1), format!("{:+.4}", g.exact_match), format!("{:+.4}", g.hamming_loss)),
            None => ("-".into(), "-".into(), "-".into()),
        };
        out += &format!(
            "{:<20} {:>7} {:>9.4} {:>12.4} {:>9.4} {:>10} {:>10} {:>10}\n",
            o.strategy.to_string(), o.bought(), m.macro_f1, m.exact_match, m.hamming_loss, df1, dex, dham
        );
    }
    out += "d* = strategy minus random at the same budget (higher F1 and exact match, lower Hamming loss are better)";
    out
}

fn epoch_points(epochs: &[EpochReport]) -> Vec<EpochPoint> {
    let four = |s: &labelwise::train::SplitReport| {
        [s.loss, s.metrics.macro_f1, s.metrics.exact_match, s.metrics.hamming_loss]
    };
    epochs.iter().map(|e| EpochPoint { epoch: e.epoch, train: four(&e.train), val: e.val.as_ref().map(four) }).collect()
}

pub fn write_epochs(path: &Path, epochs: &[EpochReport]) -> anyhow::Result<()> {
    let header: Vec<String> = [
        "epoch", "train_loss", "train_macro_f1", "train_exact_match", "train_hamming_loss",
        "val_loss", "val_macro_f1", "val_exact_match", "val_hamming_loss", "elapsed_s",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    write_csv(
        path,
        &header,
        epoch_points(epochs).into_iter().zip(epochs).map(|(p, e)| {
            let mut row = vec![p.epoch.to_string()];
            row.extend(p.train.iter().map(|v| v.to_string()));
            match p.val {
                Some(v) => row.extend(v.iter().map(|v| v.to_string())),
                None => row.extend(std::iter::repeat_n(String::new(), 4)),
            }
            row.push(format!("{:.3}", e.elapsed_s));
            row
        }),
    )
}

pub fn plot_epochs(path: &Path, title: &str, epochs: &[EpochReport]) -> anyhow::Result<()> {
    plot::training_curves(path, title, &epoch_points(epochs))
}

/// results.json, results.csv, learning_curve.csv/.png, pretrain_epochs.csv/.png and one
/// purchase list per strategy.
pub fn write_run(dir: &Path, r: &ExperimentReport) -> anyhow::Result<()> {
    let names = &r.label_names;

    // results.json: everything, including per-round purchases.
    let outcomes: Vec<serde_json::Value> = r
        .outcomes
        .iter()
        .map(|o| {
            let gain = r.gain_over_random(o);
            json!({
                "strategy": o.strategy.to_string(),
                "bought": o.bought(),
                "test": o.test().map(|m| metrics_json(m, names)),
                "gain_over_random": gain.map(|g| json!({
                    "macro_f1": g.macro_f1, "exact_match": g.exact_match, "hamming_loss": g.hamming_loss,
                })),
                "rounds": o.rounds.iter().map(|rd| json!({
                    "round": rd.round,
                    "bought_total": rd.bought_total,
                    "seconds": rd.seconds,
                    "test": metrics_json(&rd.test, names),
                    "items": rd.items.iter().map(|(f, s)| json!({"file": f, "score": s})).collect::<Vec<_>>(),
                })).collect::<Vec<_>>(),
            })
        })
        .collect();
    let doc = json!({
        "labelled": r.labelled, "pool": r.pool, "test": r.test,
        "label_names": names, "multilabel": r.multilabel,
        "baseline": metrics_json(&r.baseline, names),
        "strategies": outcomes,
        "seconds": r.seconds,
    });
    write_atomic(&dir.join("results.json"), serde_json::to_string_pretty(&doc)?.as_bytes())?;

    // results.csv: the table.
    let header: Vec<String> = [
        "strategy", "bought", "macro_f1", "exact_match", "hamming_loss",
        "gain_macro_f1", "gain_exact_match", "gain_hamming_loss",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    write_csv(
        &dir.join("results.csv"),
        &header,
        r.outcomes.iter().filter_map(|o| {
            let m = o.test()?;
            let g = r.gain_over_random(o);
            let opt = |v: Option<f64>| v.map_or(String::new(), |v| v.to_string());
            Some(vec![
                o.strategy.to_string(),
                o.bought().to_string(),
                m.macro_f1.to_string(),
                m.exact_match.to_string(),
                m.hamming_loss.to_string(),
                opt(g.map(|g| g.macro_f1)),
                opt(g.map(|g| g.exact_match)),
                opt(g.map(|g| g.hamming_loss)),
            ])
        }),
    )?;

    // Learning curves: test macro F1 against labels bought, from the pre-trained point on.
    let mut rows = Vec::new();
    let mut series = Vec::new();
    for o in &r.outcomes {
        let mut points = vec![Point { x: 0.0, y: r.baseline.macro_f1, spread: None }];
        rows.push(vec![o.strategy.to_string(), "0".into(), r.baseline.macro_f1.to_string(), r.baseline.exact_match.to_string(), r.baseline.hamming_loss.to_string()]);
        for rd in &o.rounds {
            points.push(Point { x: rd.bought_total as f64, y: rd.test.macro_f1, spread: None });
            rows.push(vec![o.strategy.to_string(), rd.bought_total.to_string(), rd.test.macro_f1.to_string(), rd.test.exact_match.to_string(), rd.test.hamming_loss.to_string()]);
        }
        series.push(Series { name: o.strategy.to_string(), points });
    }
    let header: Vec<String> = ["strategy", "labels_bought", "macro_f1", "exact_match", "hamming_loss"].iter().map(|s| s.to_string()).collect();
    write_csv(&dir.join("learning_curve.csv"), &header, rows.into_iter())?;
    plot::line_chart(&dir.join("learning_curve.png"), "Test macro F1 against labels bought", "labels bought", "macro F1", &series)?;

    write_epochs(&dir.join("pretrain_epochs.csv"), &r.pretrain)?;
    plot_epochs(&dir.join("pretrain_epochs.png"), "pre-training", &r.pretrain)?;

    // One purchase list per strategy.
    let purchases = dir.join("purchases");
    std::fs::create_dir_all(&purchases).with_context(|| format!("creating {}", purchases.display()))?;
    for o in &r.outcomes {
        let all: Vec<(String, f32)> = o.rounds.iter().flat_map(|rd| rd.items.iter().cloned()).collect();
        write_purchase(&purchases.join(format!("{}.csv", o.strategy)), &all)?;
    }
    Ok(())
}

/// The per-op benchmark table.
pub fn ops_table(ops: &[labelwise::bench::OpTiming]) -> String {
    let mut out = format!("{:<34} {:<22} {:>10} {:>10} {:>10} {:>9}\n", "op", "shape", "median ms", "min ms", "max ms", "GFLOP/s");
    for o in ops {
        let g = o.gflops().map_or(String::new(), |g| format!("{g:.1}"));
        out += &format!(
            "{:<34} {:<22} {:>10.3} {:>10.3} {:>10.3} {:>9}\n",
            o.op, o.shape, o.timing.median_ms, o.timing.min_ms, o.timing.max_ms, g
        );
    }
    out
}
