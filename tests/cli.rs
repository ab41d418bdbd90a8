//! The command-line tool end to end on a tiny dataset: import, train, embed, purchase,
//! evaluate and run, checking the content of what each writes.

use std::collections::HashSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

fn labelwise(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_labelwise"))
        .args(args)
        .args(["--device", "cpu", "--threads", "2"])
        .output()
        .expect("labelwise runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "labelwise {args:?} failed:\n{text}");
    text
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("labelwise-cli-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn gz(path: &Path, bytes: &[u8]) {
    let file = std::fs::File::create(path).unwrap();
    let mut enc = flate2::write::GzEncoder::new(file, flate2::Compression::fast());
    enc.write_all(bytes).unwrap();
    enc.finish().unwrap();
}

/// Writes IDX files in Fashion-MNIST's naming: class k is a bright band at rows 2k..2k+3.
fn write_idx(dir: &Path, prefix: &str, n: usize) {
    let mut images = vec![0, 0, 8, 3];
    for d in [n as u32, 28, 28] {
        images.extend(d.to_be_bytes());
    }
    let mut labels = vec![0, 0, 8, 1];
    labels.extend((n as u32).to_be_bytes());
    for i in 0..n {
        let class = (i % 10) as u8;
        labels.push(class);
        for row in 0..28 {
            for col in 0..28 {
                let band = row / 2 == class as usize || row / 2 == class as usize + 1;
                let noise = ((i * 31 + row * 7 + col * 13) % 17) as u8;
                images.push(if band { 200 + noise } else { noise });
            }
        }
    }
    gz(&dir.join(format!("{prefix}-images-idx3-ubyte.gz")), &images);
    gz(&dir.join(format!("{prefix}-labels-idx1-ubyte.gz")), &labels);
}

fn read_csv(path: &Path) -> (Vec<String>, Vec<Vec<String>>) {
    let mut r = csv::Reader::from_path(path).unwrap();
    let header = r.headers().unwrap().iter().map(str::to_string).collect();
    let rows = r
        .records()
        .map(|r| r.unwrap().iter().map(str::to_string).collect())
        .collect();
    (header, rows)
}

#[test]
fn import_train_embed_purchase_evaluate_run() {
    let dir = temp_dir("e2e");
    let source = dir.join("idx");
    std::fs::create_dir_all(&source).unwrap();
    write_idx(&source, "train", 80);
    write_idx(&source, "t10k", 30);
    let data = dir.join("data");
    let s = |p: &Path| p.to_str().unwrap().to_string();

    // Import: the challenge layout with one 0/1 column per class.
    labelwise(&[
        "import",
        "fashion-mnist",
        "--source",
        &s(&source),
        "--out",
        &s(&data),
    ]);
    let (header, rows) = read_csv(&data.join("train/labels.csv"));
    assert_eq!(header.len(), 11, "{header:?}");
    assert_eq!(rows.len(), 80);
    for row in &rows {
        assert!(data.join("train/images").join(&row[0]).exists());
        assert_eq!(row[1..].iter().filter(|v| *v == "1").count(), 1);
    }

    // Train: a model file, one line per epoch, the per-epoch CSV.
    let model = dir.join("model.safetensors");
    let out = labelwise(&[
        "train",
        "--data",
        &s(&data.join("train")),
        "--out",
        &s(&model),
        "--epochs",
        "2",
        "--batch-size",
        "16",
        "--image-size",
        "32",
    ]);
    assert!(out.contains("epoch  2/2"), "{out}");
    assert!(model.exists());
    let (header, rows) = read_csv(&dir.join("model.epochs.csv"));
    assert_eq!(header[0], "epoch");
    assert_eq!(rows.len(), 2);

    // Embed: 512 embedding columns, probabilities summing to 1, 0/1 predictions.
    let embedded = dir.join("embed");
    labelwise(&[
        "embed",
        "--model",
        &s(&model),
        "--images",
        &s(&data.join("test")),
        "--out",
        &s(&embedded),
    ]);
    let (header, rows) = read_csv(&embedded.join("embeddings.csv"));
    assert_eq!(header.len(), 513);
    assert_eq!(rows.len(), 30);
    let (header, rows) = read_csv(&embedded.join("probabilities.csv"));
    assert_eq!(header.len(), 11);
    for row in &rows {
        let sum: f64 = row[1..].iter().map(|v| v.parse::<f64>().unwrap()).sum();
        assert!((sum - 1.0).abs() < 1e-4, "probabilities sum to {sum}");
    }

    // Evaluate: the printed exact match equals the fraction of rows predicted exactly.
    let predictions = embedded.join("predictions.csv");
    let out = labelwise(&[
        "evaluate",
        "--predictions",
        &s(&predictions),
        "--labels",
        &s(&data.join("test/labels.csv")),
        "--json",
        &s(&dir.join("metrics.json")),
    ]);
    let (_, pred_rows) = read_csv(&predictions);
    let (_, true_rows) = read_csv(&data.join("test/labels.csv"));
    let exact = pred_rows
        .iter()
        .filter(|p| true_rows.iter().any(|t| t[0] == p[0] && t[1..] == p[1..]))
        .count() as f64
        / pred_rows.len() as f64;
    assert!(
        out.contains(&format!("exact match   {exact:.4}")),
        "{out}\nexpected {exact:.4}"
    );
    assert!(std::fs::read_to_string(dir.join("metrics.json"))
        .unwrap()
        .contains("macro_f1"));

    // Purchase: at most the budget, no excluded file, no duplicates, scores descending.
    let exclude = dir.join("exclude.csv");
    std::fs::write(&exclude, "file\n00000.png\n00001.png\n").unwrap();
    let purchase = dir.join("purchase.csv");
    labelwise(&[
        "purchase",
        "--model",
        &s(&model),
        "--pool",
        &s(&data.join("test")),
        "--strategy",
        "entropy",
        "--budget",
        "7",
        "--exclude",
        &s(&exclude),
        "--out",
        &s(&purchase),
    ]);
    let (header, rows) = read_csv(&purchase);
    assert_eq!(header, ["rank", "file", "score"]);
    assert_eq!(rows.len(), 7);
    let files: HashSet<&str> = rows.iter().map(|r| r[1].as_str()).collect();
    assert_eq!(files.len(), 7);
    assert!(!files.contains("00000.png") && !files.contains("00001.png"));
    let scores: Vec<f64> = rows.iter().map(|r| r[2].parse().unwrap()).collect();
    assert!(scores.windows(2).all(|w| w[0] >= w[1]), "{scores:?}");

    // Run: the loop on the user's folders, results on disk, never over budget.
    let run_out = dir.join("run");
    let out = labelwise(&[
        "run",
        "--labelled",
        &s(&data.join("test")),
        "--pool",
        &s(&data.join("train")),
        "--test",
        &s(&data.join("test")),
        "--epochs",
        "1",
        "--retrain-epochs",
        "1",
        "--budget",
        "9",
        "--batch-size",
        "16",
        "--strategies",
        "random,entropy",
        "--out",
        &s(&run_out),
    ]);
    assert!(out.contains("entropy"), "{out}");
    let (header, rows) = read_csv(&run_out.join("results.csv"));
    assert_eq!(header[0], "strategy");
    assert_eq!(rows.len(), 2);
    for strategy in ["random", "entropy"] {
        let (_, bought) = read_csv(&run_out.join(format!("purchases/{strategy}.csv")));
        assert_eq!(bought.len(), 9);
        let unique: HashSet<&str> = bought.iter().map(|r| r[1].as_str()).collect();
        assert_eq!(unique.len(), 9);
    }
    let json = std::fs::read_to_string(run_out.join("results.json")).unwrap();
    assert!(json.contains("gain_over_random"));
    assert!(run_out.join("learning_curve.png").exists());
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn bench_profile_accounts_for_the_step() {
    let dir = temp_dir("bench_profile");
    let json = dir.join("profile.json");
    let out = labelwise(&[
        "--quiet",
        "bench",
        "--profile",
        "--image-size",
        "16",
        "--batch-size",
        "2",
        "--reps",
        "2",
        "--json",
        json.to_str().expect("utf-8 path"),
    ]);
    assert!(out.contains("training step, 16px, batch 2"), "{out}");
    assert!(out.contains("conv2d_fwd"), "{out}");
    let doc: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&json).expect("profile JSON written"))
            .expect("valid JSON");
    let p = &doc["profile"];
    let step = p["step_ms"].as_f64().expect("step_ms");
    let rows = p["rows"].as_array().expect("rows");
    // ResNet18 has 20 convolutions; each runs forward and filter gradient once per step, and
    // all but the stem (whose input is the image, which needs no gradient) a data gradient.
    let calls = |op: &str| -> f64 {
        rows.iter()
            .filter(|r| r["op"] == op)
            .map(|r| r["calls_per_step"].as_f64().expect("calls"))
            .sum()
    };
    assert_eq!(calls("conv2d_fwd"), 20.0);
    assert_eq!(calls("conv2d_bwd_data"), 19.0);
    assert_eq!(calls("conv2d_bwd_filter"), 20.0);
    let inside: f64 = rows
        .iter()
        .map(|r| r["ms_per_step"].as_f64().expect("ms"))
        .sum();
    assert!(
        inside > 0.0 && inside <= step * 1.01,
        "ops {inside} ms vs step {step} ms"
    );
}
