//! Result tables, machine-readable files and plots; every file is written atomically.

use std::path::Path;

use anyhow::Context;
use serde_json::json;

use labelwise::active::metrics::Metrics;
use labelwise::experiment::{ExperimentReport, Spread, Summary};
use labelwise::io::write_atomic;
use labelwise::plot::{self, EpochPoint, Point, Series};
use labelwise::train::EpochReport;

/// Serialises rows through the csv crate and writes them atomically.
fn write_csv(
    path: &Path,
    header: &[String],
    rows: impl Iterator<Item = Vec<String>>,
) -> anyhow::Result<()> {
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
pub fn write_matrix(
    path: &Path,
    files: &[String],
    names: &[String],
    values: &[f32],
) -> anyhow::Result<()> {
    let mut header = vec!["file".to_string()];
    header.extend(names.iter().cloned());
    let width = names.len();
    write_csv(
        path,
        &header,
        files.iter().enumerate().map(|(i, f)| {
            let mut row = vec![f.clone()];
            row.extend(
                values[i * width..(i + 1) * width]
                    .iter()
                    .map(|v| v.to_string()),
            );
            row
        }),
    )
}

/// The purchase list: rank, file, score.
pub fn write_purchase(path: &Path, chosen: &[(String, f32)]) -> anyhow::Result<()> {
    write_csv(
        path,
        &["rank".into(), "file".into(), "score".into()],
        chosen
            .iter()
            .enumerate()
            .map(|(i, (f, s))| vec![(i + 1).to_string(), f.clone(), s.to_string()]),
    )
}

/// The first column of a CSV with a header (file names to exclude).
pub fn read_first_column(path: &Path) -> anyhow::Result<Vec<String>> {
    let mut r = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .trim(csv::Trim::All)
        .from_path(path)
        .with_context(|| format!("reading {}", path.display()))?;
    let mut records = Vec::new();
    for (i, rec) in r.records().enumerate() {
        records.push(rec.with_context(|| format!("{}: line {}", path.display(), i + 1))?);
    }
    // A header is recognised by its names, never assumed: a purchase list (`rank,file,...`)
    // names files in its second column; a labels.csv or list with a `file` header in its
    // first; a bare list of names has no header at all.
    let first = records.first();
    let (column, skip) = match first.map(|h| (h.get(0), h.get(1))) {
        Some((Some("rank"), Some("file"))) => (1, 1),
        Some((Some("file"), _)) => (0, 1),
        _ => (0, 0),
    };
    Ok(records
        .iter()
        .skip(skip)
        .filter_map(|rec| rec.get(column).map(str::to_string))
        .collect())
}

/// Says which labels had no true and no predicted positive (their F1 counts as 0).
pub fn note_undefined_f1(m: &Metrics, names: &[String]) {
    if m.undefined_f1_labels.is_empty() {
        return;
    }
    let list: Vec<&str> = m
        .undefined_f1_labels
        .iter()
        .filter_map(|&i| names.get(i).map(String::as_str))
        .collect();
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
        "{:<26} {:>7} {:>9} {:>12} {:>9} {:>10} {:>10} {:>10}\n",
        "strategy", "bought", "macro F1", "exact match", "Hamming", "dF1", "dexact", "dHamming"
    );
    out += &format!(
        "{:<26} {:>7} {:>9.4} {:>12.4} {:>9.4} {:>10} {:>10} {:>10}\n",
        "(pre-trained only)",
        0,
        r.baseline.macro_f1,
        r.baseline.exact_match,
        r.baseline.hamming_loss,
        "",
        "",
        ""
    );
    for o in &r.outcomes {
        let Some(m) = o.test() else { continue };
        let (df1, dex, dham) = match r.gain_over_random(o) {
            Some(g) => (
                format!("{:+.4}", g.macro_f1),
                format!("{:+.4}", g.exact_match),
                format!("{:+.4}", g.hamming_loss),
            ),
            None => ("-".into(), "-".into(), "-".into()),
        };
        out += &format!(
            "{:<26} {:>7} {:>9.4} {:>12.4} {:>9.4} {:>10} {:>10} {:>10}\n",
            o.strategy.to_string(),
            o.bought(),
            m.macro_f1,
            m.exact_match,
            m.hamming_loss,
            df1,
            dex,
            dham
        );
    }
    out += "d* = strategy minus random at the same budget (higher F1 and exact match, lower Hamming loss are better)";
    out
}

fn epoch_points(epochs: &[EpochReport]) -> Vec<EpochPoint> {
    let four = |s: &labelwise::train::SplitReport| {
        [
            s.loss,
            s.metrics.macro_f1,
            s.metrics.exact_match,
            s.metrics.hamming_loss,
        ]
    };
    epochs
        .iter()
        .map(|e| EpochPoint {
            epoch: e.epoch,
            train: four(&e.train),
            val: e.val.as_ref().map(four),
        })
        .collect()
}

pub fn write_epochs(path: &Path, epochs: &[EpochReport]) -> anyhow::Result<()> {
    let header: Vec<String> = [
        "epoch",
        "train_loss",
        "train_macro_f1",
        "train_exact_match",
        "train_hamming_loss",
        "val_loss",
        "val_macro_f1",
        "val_exact_match",
        "val_hamming_loss",
        "elapsed_s",
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
                "images": o.images,
                "seconds": o.seconds,
                "evaluation_seconds": o.evaluation_seconds,
                "stopped": o.stopped.map(|s| s.to_string()),
                "rounds": o.rounds.iter().map(|rd| json!({
                    "round": rd.round,
                    "bought": rd.items.len(),
                    "bought_total": rd.bought_total,
                    "seconds": rd.seconds,
                    "images": rd.images,
                    "test": rd.test.as_ref().map(|m| metrics_json(m, names)),
                    "items": rd.items.iter().map(|(f, s)| json!({"file": f, "score": s})).collect::<Vec<_>>(),
                })).collect::<Vec<_>>(),
            })
        })
        .collect();
    let plan = &r.plan;
    let doc = json!({
        "seed": r.seed,
        "labelled": r.labelled, "pool": r.pool, "test": r.test,
        "evaluator": r.evaluator.name(),
        "plan": {
            "round_sizes": plan.round_sizes,
            "retrain_epochs": plan.retrain_epochs,
            "train_images_per_s": 1.0 / plan.throughput.train_seconds_per_image.max(1e-12),
            "infer_images_per_s": 1.0 / plan.throughput.infer_seconds_per_image.max(1e-12),
            "pretrain_images": plan.spent_images,
            "pretrain_seconds": plan.spent_seconds,
            "time_budget_s": plan.budget.seconds,
            "image_budget": plan.budget.images,
            "fits": plan.fits,
            "strategies": plan.strategies.iter().map(|p| json!({
                "strategy": p.strategy.to_string(), "images": p.images, "seconds": p.seconds,
                "share_images": p.share.images, "share_seconds": p.share.seconds,
            })).collect::<Vec<_>>(),
        },
        "label_names": names, "multilabel": r.multilabel,
        "baseline": metrics_json(&r.baseline, names),
        "strategies": outcomes,
        "seconds": r.seconds,
    });
    write_atomic(
        &dir.join("results.json"),
        serde_json::to_string_pretty(&doc)?.as_bytes(),
    )?;

    // results.csv: the table.
    let header: Vec<String> = [
        "strategy",
        "bought",
        "macro_f1",
        "exact_match",
        "hamming_loss",
        "gain_macro_f1",
        "gain_exact_match",
        "gain_hamming_loss",
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
        let mut points = vec![Point {
            x: 0.0,
            y: r.baseline.macro_f1,
            spread: None,
        }];
        rows.push(vec![
            o.strategy.to_string(),
            "0".into(),
            r.baseline.macro_f1.to_string(),
            r.baseline.exact_match.to_string(),
            r.baseline.hamming_loss.to_string(),
        ]);
        // A round the budget cut short has no test point; the final model stands for it.
        let mut last_x = 0;
        for rd in &o.rounds {
            let Some(m) = &rd.test else { continue };
            last_x = rd.bought_total;
            points.push(Point {
                x: rd.bought_total as f64,
                y: m.macro_f1,
                spread: None,
            });
            rows.push(vec![
                o.strategy.to_string(),
                rd.bought_total.to_string(),
                m.macro_f1.to_string(),
                m.exact_match.to_string(),
                m.hamming_loss.to_string(),
            ]);
        }
        if o.bought() > last_x {
            let m = &o.final_test;
            points.push(Point {
                x: o.bought() as f64,
                y: m.macro_f1,
                spread: None,
            });
            rows.push(vec![
                o.strategy.to_string(),
                o.bought().to_string(),
                m.macro_f1.to_string(),
                m.exact_match.to_string(),
                m.hamming_loss.to_string(),
            ]);
        }
        series.push(Series {
            name: o.strategy.to_string(),
            points,
        });
    }
    let header: Vec<String> = [
        "strategy",
        "labels_bought",
        "macro_f1",
        "exact_match",
        "hamming_loss",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    write_csv(&dir.join("learning_curve.csv"), &header, rows.into_iter())?;
    plot::line_chart(
        &dir.join("learning_curve.png"),
        "Test macro F1 against labels bought",
        "labels bought",
        "macro F1",
        &series,
    )?;

    write_epochs(&dir.join("pretrain_epochs.csv"), &r.pretrain)?;
    plot_epochs(
        &dir.join("pretrain_epochs.png"),
        "pre-training",
        &r.pretrain,
    )?;

    // One purchase list per strategy.
    let purchases = dir.join("purchases");
    std::fs::create_dir_all(&purchases)
        .with_context(|| format!("creating {}", purchases.display()))?;
    for o in &r.outcomes {
        let all: Vec<(String, f32)> = o
            .rounds
            .iter()
            .flat_map(|rd| rd.items.iter().cloned())
            .collect();
        write_purchase(&purchases.join(format!("{}.csv", o.strategy)), &all)?;
    }
    Ok(())
}

fn spread_json(s: &Spread) -> serde_json::Value {
    json!({"mean": s.mean, "std": s.std, "n": s.n})
}

/// The table over seeds: mean ± standard deviation per strategy, and the paired gain over
/// random with the number of seeds on which the strategy won.
pub fn summary_table(s: &Summary) -> String {
    let pm = |x: &Spread| format!("{:.4} ± {:.4}", x.mean, x.std);
    let mut out = format!(
        "over {} seed(s) {:?}: mean ± standard deviation\n{:<26} {:>7} {:>17} {:>17} {:>18} {:>6}\n",
        s.seeds.len(),
        s.seeds,
        "strategy",
        "bought",
        "macro F1",
        "exact match",
        "dF1 vs random",
        "wins"
    );
    out += &format!(
        "{:<26} {:>7} {:>17}\n",
        "(pre-trained only)",
        0,
        pm(&s.baseline_macro_f1)
    );
    for st in &s.strategies {
        let gain = st.gain_macro_f1.as_ref().map_or("-".to_string(), |g| {
            format!("{:+.4} ± {:.4}", g.mean, g.std)
        });
        out += &format!(
            "{:<26} {:>7.0} {:>17} {:>17} {:>18} {:>6}\n",
            st.strategy.to_string(),
            st.bought.mean,
            pm(&st.macro_f1),
            pm(&st.exact_match),
            gain,
            format!("{}/{}", st.wins, st.macro_f1.n)
        );
    }
    out +=
        "dF1 = strategy minus random in the same run (paired by seed); wins = seeds where dF1 > 0";
    out
}

/// summary.json, summary.csv and learning_curve_summary.csv/.png (mean macro F1 against labels
/// bought, one line per strategy with a ± standard deviation band).
pub fn write_summary(dir: &Path, s: &Summary) -> anyhow::Result<()> {
    let doc = json!({
        "seeds": s.seeds,
        "baseline_macro_f1": spread_json(&s.baseline_macro_f1),
        "seconds_per_run": spread_json(&s.seconds),
        "strategies": s.strategies.iter().map(|st| json!({
            "strategy": st.strategy.to_string(),
            "bought": spread_json(&st.bought),
            "macro_f1": spread_json(&st.macro_f1),
            "exact_match": spread_json(&st.exact_match),
            "hamming_loss": spread_json(&st.hamming_loss),
            "gain_over_random": {
                "macro_f1": st.gain_macro_f1.as_ref().map(spread_json),
                "exact_match": st.gain_exact_match.as_ref().map(spread_json),
                "wins": st.wins,
            },
            "curve": st.curve.iter().map(|p| json!({
                "labels_bought": p.bought, "macro_f1": spread_json(&p.macro_f1),
            })).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
    });
    write_atomic(
        &dir.join("summary.json"),
        serde_json::to_string_pretty(&doc)?.as_bytes(),
    )?;

    let header: Vec<String> = [
        "strategy",
        "seeds",
        "bought_mean",
        "macro_f1_mean",
        "macro_f1_std",
        "exact_match_mean",
        "exact_match_std",
        "hamming_loss_mean",
        "hamming_loss_std",
        "gain_macro_f1_mean",
        "gain_macro_f1_std",
        "wins",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    write_csv(
        &dir.join("summary.csv"),
        &header,
        s.strategies.iter().map(|st| {
            let g = st.gain_macro_f1.as_ref();
            vec![
                st.strategy.to_string(),
                st.macro_f1.n.to_string(),
                st.bought.mean.to_string(),
                st.macro_f1.mean.to_string(),
                st.macro_f1.std.to_string(),
                st.exact_match.mean.to_string(),
                st.exact_match.std.to_string(),
                st.hamming_loss.mean.to_string(),
                st.hamming_loss.std.to_string(),
                g.map_or(String::new(), |g| g.mean.to_string()),
                g.map_or(String::new(), |g| g.std.to_string()),
                st.wins.to_string(),
            ]
        }),
    )?;

    let header: Vec<String> = [
        "strategy",
        "labels_bought",
        "macro_f1_mean",
        "macro_f1_std",
        "seeds",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let rows = s.strategies.iter().flat_map(|st| {
        st.curve.iter().map(|p| {
            vec![
                st.strategy.to_string(),
                p.bought.to_string(),
                p.macro_f1.mean.to_string(),
                p.macro_f1.std.to_string(),
                p.macro_f1.n.to_string(),
            ]
        })
    });
    write_csv(&dir.join("learning_curve_summary.csv"), &header, rows)?;
    let series: Vec<Series> = s
        .strategies
        .iter()
        .map(|st| Series {
            name: st.strategy.to_string(),
            points: st
                .curve
                .iter()
                .map(|p| Point {
                    x: p.bought,
                    y: p.macro_f1.mean,
                    spread: Some(p.macro_f1.std),
                })
                .collect(),
        })
        .collect();
    let title = format!(
        "Test macro F1 against labels bought (mean ± std over {} seeds)",
        s.seeds.len()
    );
    plot::line_chart(
        &dir.join("learning_curve_summary.png"),
        &title,
        "labels bought",
        "macro F1",
        &series,
    )?;
    Ok(())
}

/// The per-op benchmark table.
pub fn ops_table(ops: &[labelwise::bench::OpTiming]) -> String {
    let mut out = format!(
        "{:<34} {:<22} {:>10} {:>10} {:>10} {:>9}\n",
        "op", "shape", "median ms", "min ms", "max ms", "GFLOP/s"
    );
    for o in ops {
        let g = o.gflops().map_or(String::new(), |g| format!("{g:.1}"));
        out += &format!(
            "{:<34} {:<22} {:>10.3} {:>10.3} {:>10.3} {:>9}\n",
            o.op, o.shape, o.timing.median_ms, o.timing.min_ms, o.timing.max_ms, g
        );
    }
    out
}

/// `labelwise bench --profile`: totals per op, then the twenty slowest (op, shape) rows, each
/// with wall time and the process's CPU time (the steadier figure on a busy machine).
pub fn profile_table(p: &labelwise::bench::StepProfile) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let pct = |ms: f64| 100.0 * ms / p.step_ms;
    let _ = writeln!(
        out,
        "training step, {}px, batch {}: {:.1} ms wall, {:.1} ms CPU, mean over {} steps ({:.1} images/s)",
        p.image_size,
        p.batch,
        p.step_ms,
        p.step_cpu_ms,
        p.steps,
        p.batch as f64 / (p.step_ms * 1e-3)
    );
    let _ = writeln!(
        out,
        "{:<24} {:>10} {:>7} {:>10}",
        "op", "ms/step", "share", "cpu ms"
    );
    for (op, ms, cpu) in p.by_op() {
        let _ = writeln!(out, "{op:<24} {ms:>10.2} {:>6.1}% {cpu:>10.2}", pct(ms));
    }
    let other = p.unaccounted_ms();
    let _ = writeln!(
        out,
        "{:<24} {other:>10.2} {:>6.1}%",
        "(outside primitives)",
        pct(other)
    );
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "{:<20} {:<40} {:>6} {:>10} {:>7} {:>10}",
        "op", "shape", "calls", "ms/step", "share", "cpu ms"
    );
    for r in p.rows.iter().take(20) {
        let _ = writeln!(
            out,
            "{:<20} {:<40} {:>6.0} {:>10.2} {:>6.1}% {:>10.2}",
            r.op,
            r.shape,
            r.calls_per_step,
            r.ms_per_step,
            pct(r.ms_per_step),
            r.cpu_ms_per_step
        );
    }
    out
}

pub fn profile_json(p: &labelwise::bench::StepProfile) -> serde_json::Value {
    serde_json::json!({
        "step_ms": p.step_ms,
        "step_cpu_ms": p.step_cpu_ms,
        "steps": p.steps,
        "unaccounted_ms": p.unaccounted_ms(),
        "rows": p.rows.iter().map(|r| serde_json::json!({
            "op": r.op, "shape": r.shape, "calls_per_step": r.calls_per_step,
            "ms_per_step": r.ms_per_step, "cpu_ms_per_step": r.cpu_ms_per_step,
        })).collect::<Vec<_>>(),
    })
}
