//! Never lose work: `train` and `run` are killed (SIGKILL) at several moments, resumed, and
//! must end bit-identical to uninterrupted runs; a NaN stops training naming the tensor and
//! keeps the last good checkpoint; a full disk, a read-only folder or a file in the way gives a
//! clear error and leaves earlier outputs intact.
//!
//! Images are 16 px and few, so each run takes seconds. Each checkpoint of a ResNet18 with its
//! optimiser is 134 MB whatever the image size, so the scratch folders live on a RAM disk when
//! there is one (`/dev/shm`).

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use labelwise::backend::cpu::CpuBackend;
use labelwise::data::Dataset;
use labelwise::model::{Model, ModelConfig, TensorKind, IMAGENET_MEAN, IMAGENET_STD};
use labelwise::train::{self, FitHooks, FitPoint, TrainConfig};
use labelwise::{BackendHandle, Error};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const SIZE: usize = 16;
const LABELS: usize = 4;

/// `n` single-label images whose brightness in the quadrant of their label is raised.
fn dataset(n: usize, seed: u64) -> Dataset {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut labels = Vec::with_capacity(n * LABELS);
    let mut pixels = Vec::with_capacity(n * SIZE * SIZE * 3);
    for _ in 0..n {
        let mut row = [0u8; LABELS];
        row[rng.random_range(0..LABELS)] = 1;
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
        files: (0..n).map(|i| format!("{i:04}.png")).collect(),
        labels: Some(labels),
        size: SIZE,
        pixels,
    }
}

/// A fresh empty folder, on a RAM disk when there is one.
fn scratch(name: &str) -> PathBuf {
    let shm = Path::new("/dev/shm");
    let base = match shm.is_dir() && tempfile_probe(shm) {
        true => shm.to_path_buf(),
        false => std::env::temp_dir(),
    };
    let dir = base.join(format!("labelwise-resume-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn tempfile_probe(dir: &Path) -> bool {
    let probe = dir.join(format!(".labelwise-probe-{}", std::process::id()));
    let ok = std::fs::write(&probe, b"").is_ok();
    let _ = std::fs::remove_file(&probe);
    ok
}

fn s(p: &Path) -> String {
    p.to_str().unwrap().to_string()
}

/// The binary with `args`, on the CPU with two threads (the same for every run compared).
fn command(args: &[String]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_labelwise"));
    c.args(["--device", "cpu", "--threads", "2"]).args(args);
    c
}

fn run(args: &[String]) -> (bool, String) {
    text(command(args).output().unwrap())
}

fn text(out: Output) -> (bool, String) {
    let t = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), t)
}

fn args(list: &[&str]) -> Vec<String> {
    list.iter().map(|a| a.to_string()).collect()
}

/// Counts the saves of a checkpoint file: every atomic write gives the path a new inode.
struct Saves {
    path: PathBuf,
    last: Option<u64>,
    count: usize,
}

impl Saves {
    fn new(path: &Path) -> Self {
        Saves {
            path: path.into(),
            last: None,
            count: 0,
        }
    }

    fn poll(&mut self) -> usize {
        use std::os::unix::fs::MetadataExt;
        if let Ok(m) = std::fs::metadata(&self.path) {
            if self.last != Some(m.ino()) {
                self.last = Some(m.ino());
                self.count += 1;
            }
        }
        self.count
    }
}

/// A temporary file of an atomic write of `path` exists (a checkpoint is being written).
fn writing(path: &Path) -> bool {
    let name = format!(".{}.tmp-", path.file_name().unwrap().to_string_lossy());
    std::fs::read_dir(path.parent().unwrap())
        .map(|entries| {
            entries
                .filter_map(|e| e.ok())
                .any(|e| e.file_name().to_string_lossy().starts_with(&name))
        })
        .unwrap_or(false)
}

/// Starts `args`, then SIGKILLs the process the moment `moment()` says so. Returns whether it
/// was killed (false: it finished first, successfully).
fn kill_when(args: &[String], log: &Path, mut moment: impl FnMut() -> bool) -> bool {
    let file = std::fs::File::create(log).unwrap();
    let mut child: Child = command(args)
        .stdout(Stdio::from(file.try_clone().unwrap()))
        .stderr(Stdio::from(file))
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let log_text = std::fs::read_to_string(log).unwrap_or_default();
            assert!(status.success(), "{args:?} failed:\n{log_text}");
            return false;
        }
        if moment() {
            child.kill().unwrap(); // SIGKILL on Unix
            child.wait().unwrap();
            return true;
        }
        assert!(Instant::now() < deadline, "{args:?}: the moment never came");
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Every file under `dir` (relative path, bytes), sorted.
fn files(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                let rel = p.strip_prefix(dir).unwrap().to_string_lossy().into_owned();
                out.push((rel, std::fs::read(&p).unwrap()));
            }
        }
    }
    out.sort();
    out
}

/// A CSV without the columns whose header names a time.
fn csv_without_times(path: &Path) -> Vec<Vec<String>> {
    let mut r = csv::Reader::from_path(path).unwrap();
    let header: Vec<String> = r.headers().unwrap().iter().map(str::to_string).collect();
    let keep: Vec<usize> = (0..header.len())
        .filter(|&i| !header[i].contains("elapsed") && !header[i].contains("second"))
        .collect();
    let mut rows = vec![keep.iter().map(|&i| header[i].clone()).collect()];
    for rec in r.records() {
        let rec = rec.unwrap();
        rows.push(keep.iter().map(|&i| rec[i].to_string()).collect());
    }
    rows
}

/// A JSON document without the members that measure time.
fn json_without_times(path: &Path) -> serde_json::Value {
    fn strip(v: &mut serde_json::Value) {
        match v {
            serde_json::Value::Object(map) => {
                map.retain(|k, _| {
                    !(k.contains("seconds") || k.contains("elapsed") || k.ends_with("_per_s"))
                });
                map.values_mut().for_each(strip);
            }
            serde_json::Value::Array(items) => items.iter_mut().for_each(strip),
            _ => {}
        }
    }
    let mut v = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    strip(&mut v);
    v
}

fn no_leftovers(dir: &Path) {
    for (name, _) in files(dir) {
        assert!(
            !name.contains(".tmp-") && !name.contains("checkpoint"),
            "{name} left in {}",
            dir.display()
        );
    }
}

#[test]
fn train_killed_at_several_moments_resumes_bit_identical() {
    let dir = scratch("train");
    let data = dir.join("data");
    dataset(40, 1).save_folder(&data).unwrap();
    let base = |out: &Path, every: &str| {
        let mut a = args(&["train", "--data", &s(&data), "--out", &s(out)]);
        a.extend(args(&[
            "--epochs",
            "3",
            "--batch-size",
            "8",
            "--image-size",
            "16",
            "--seed",
            "3",
            "--checkpoint-every",
            every,
        ]));
        a
    };

    // Uninterrupted, without checkpoints.
    let reference = dir.join("ref/model.safetensors");
    std::fs::create_dir_all(reference.parent().unwrap()).unwrap();
    let (ok, out) = run(&base(&reference, "off"));
    assert!(ok, "{out}");

    // Killed right after its first checkpoint, while writing a later one, and mid-epoch.
    let model = dir.join("killed/model.safetensors");
    std::fs::create_dir_all(model.parent().unwrap()).unwrap();
    let ckpt = dir.join("killed/model.checkpoint.safetensors");
    let fresh = base(&model, "3");
    let mut resume = base(&model, "3");
    resume.push("--resume".into());
    let log = dir.join("log.txt");

    let mut saves = Saves::new(&ckpt);
    assert!(kill_when(&fresh, &log, || saves.poll() >= 1));
    assert!(ckpt.is_file(), "the first checkpoint survives the kill");
    let mut finished = !kill_when(&resume, &log, || writing(&ckpt));
    if !finished {
        let mut saves = Saves::new(&ckpt);
        let mut since = None;
        finished = !kill_when(&resume, &log, || {
            if saves.poll() >= 2 && since.is_none() {
                since = Some(Instant::now());
            }
            since.is_some_and(|t| t.elapsed() > Duration::from_millis(150))
        });
    }
    if !finished {
        let (ok, out) = run(&resume);
        assert!(ok, "{out}");
        assert!(out.contains("resumed from the checkpoint"), "{out}");
    }

    // The same model file, byte for byte, and the same per-epoch metrics.
    assert!(
        std::fs::read(&reference).unwrap() == std::fs::read(&model).unwrap(),
        "the resumed model differs from the uninterrupted one"
    );
    let epochs = |p: &Path| csv_without_times(&p.with_extension("epochs.csv"));
    assert_eq!(epochs(&reference), epochs(&model));
    assert_eq!(epochs(&model).len(), 1 + 3);
    no_leftovers(model.parent().unwrap());
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn run_killed_at_several_moments_buys_the_same() {
    let dir = scratch("run");
    let (train_dir, test_dir) = (dir.join("train"), dir.join("test"));
    dataset(36, 4).save_folder(&train_dir).unwrap();
    dataset(8, 5).save_folder(&test_dir).unwrap();
    let budget = 6;
    let base = |out: &Path, every: &str| {
        let mut a = args(&["run", "--train", &s(&train_dir), "--test", &s(&test_dir)]);
        a.extend(args(&[
            "--initial-labelled",
            "16",
            "--budget",
            &budget.to_string(),
            "--rounds",
            "2",
            "--epochs",
            "1",
            "--retrain-epochs",
            "2",
            "--batch-size",
            "8",
            "--image-size",
            "16",
            "--strategies",
            "random,entropy",
            "--evaluator",
            "fixed",
            "--out",
            &s(out),
            "--checkpoint-every",
            every,
        ]));
        a
    };
    let reference = dir.join("ref");
    let (ok, out) = run(&base(&reference, "off"));
    assert!(ok, "{out}");

    // Killed during pre-training, between strategies' rounds, while writing a checkpoint, and
    // during the final training; each time resumed.
    let killed = dir.join("killed");
    let ckpt = killed.join("checkpoint.safetensors");
    let pretrained = killed.join("checkpoint.pretrained.safetensors");
    let mut resume = base(&killed, "epoch");
    resume.push("--resume".into());
    let log = dir.join("log.txt");

    let mut saves = Saves::new(&ckpt);
    assert!(kill_when(&base(&killed, "epoch"), &log, || saves.poll() >= 1));
    let mut finished = false;
    let mut kills = 1;
    let moments: [Box<dyn Fn(usize) -> bool + '_>; 3] = [
        Box::new(|n| pretrained.exists() && n >= 2),
        Box::new(|_| writing(&ckpt)),
        Box::new(|n| n >= 4),
    ];
    for moment in moments {
        let mut saves = Saves::new(&ckpt);
        finished = !kill_when(&resume, &log, || moment(saves.poll()));
        if finished {
            break;
        }
        kills += 1;
    }
    if !finished {
        let (ok, out) = run(&resume);
        assert!(ok, "{out}");
        assert!(out.contains("== resuming"), "{out}");
    }
    println!("killed and resumed {kills} times");
    assert!(kills >= 2, "the run should have been killed at least twice");

    // The same results (timings aside) and byte-identical tables and purchase lists.
    assert_eq!(
        json_without_times(&reference.join("results.json")),
        json_without_times(&killed.join("results.json"))
    );
    for name in [
        "results.csv",
        "learning_curve.csv",
        "summary.csv",
        "purchases/random.csv",
        "purchases/entropy.csv",
    ] {
        assert!(
            std::fs::read(reference.join(name)).unwrap()
                == std::fs::read(killed.join(name)).unwrap(),
            "{name} differs"
        );
    }
    assert_eq!(
        csv_without_times(&reference.join("pretrain_epochs.csv")),
        csv_without_times(&killed.join("pretrain_epochs.csv"))
    );

    // Every purchase is a distinct pool file, within the budget.
    let pool: HashSet<String> = std::fs::read_dir(train_dir.join("images"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    for strategy in ["random", "entropy"] {
        let mut r =
            csv::Reader::from_path(killed.join(format!("purchases/{strategy}.csv"))).unwrap();
        let bought: Vec<String> = r.records().map(|r| r.unwrap()[1].to_string()).collect();
        let unique: HashSet<&String> = bought.iter().collect();
        assert_eq!(
            unique.len(),
            bought.len(),
            "{strategy} bought twice: {bought:?}"
        );
        assert!(bought.len() <= budget, "{strategy}: {bought:?}");
        assert!(
            bought.iter().all(|f| pool.contains(f)),
            "{strategy}: {bought:?}"
        );
    }
    no_leftovers(&killed);
    std::fs::remove_dir_all(&dir).ok();
}

/// The tensors of a checkpoint file and its manifest's training state.
fn read_checkpoint(path: &Path) -> (Vec<(String, Vec<f32>)>, serde_json::Value) {
    let bytes = std::fs::read(path).unwrap();
    let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let manifest = meta.metadata().as_ref().unwrap()["manifest"].clone();
    let tensors = file
        .tensors()
        .into_iter()
        .map(|(name, view)| {
            let values = view
                .data()
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect();
            (name, values)
        })
        .collect();
    (tensors, serde_json::from_str(&manifest).unwrap())
}

#[test]
fn nan_gradient_stops_training_and_keeps_the_last_good_checkpoint() {
    let dir = scratch("nan");
    let data = dir.join("data");
    dataset(40, 1).save_folder(&data).unwrap();
    let model = dir.join("model.safetensors");
    let ckpt = dir.join("model.checkpoint.safetensors");
    // Adam moves every weight by about the learning rate: at 1e30 the second step's
    // activations overflow and the backward pass meets inf - inf.
    let mut a = args(&["train", "--data", &s(&data), "--out", &s(&model)]);
    a.extend(args(&[
        "--epochs",
        "2",
        "--batch-size",
        "8",
        "--image-size",
        "16",
        "--lr",
        "1e30",
        "--checkpoint-every",
        "1",
    ]));
    let (ok, out) = run(&a);
    assert!(!ok, "{out}");
    let line = out
        .lines()
        .find(|l| l.starts_with("error:"))
        .unwrap_or_else(|| panic!("no error line in:\n{out}"));

    // "non-finite gradient in <tensor> at epoch <e> step <n>: ..."
    let rest = line
        .strip_prefix("error: non-finite gradient in ")
        .unwrap_or_else(|| panic!("{line}"));
    let (tensor, rest) = rest.split_once(" at epoch 1 step ").unwrap();
    let step: u64 = rest.split(':').next().unwrap().parse().unwrap();
    assert!(
        tensor.ends_with(".weight") || tensor.ends_with(".bias"),
        "{line}"
    );
    assert!(line.contains("NaN or infinite"), "{line}");
    assert!(!model.exists(), "no model is saved from a failed run");

    // The last checkpoint is the good state just before the bad step, intact and finite.
    let before = std::fs::read(&ckpt).unwrap();
    let (tensors, manifest) = read_checkpoint(&ckpt);
    assert_eq!(manifest["state"]["fit"]["steps"], step - 1);
    assert!(tensors.iter().any(|(n, _)| n == &format!("model.{tensor}")));
    for (name, values) in &tensors {
        assert!(values.iter().all(|v| v.is_finite()), "{name} is not finite");
    }

    // Resuming it meets the same bad step again (it is deterministic) and leaves it as it was.
    a.push("--resume".into());
    let (ok, again) = run(&a);
    assert!(!ok);
    assert!(again.contains(line), "{again}\nexpected {line}");
    assert!(
        std::fs::read(&ckpt).unwrap() == before,
        "the good checkpoint was changed"
    );
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn resume_refuses_other_options_missing_checkpoints_and_overwrites() {
    let dir = scratch("refuse");
    let data = dir.join("data");
    dataset(40, 1).save_folder(&data).unwrap();
    let other_data = dir.join("other");
    dataset(40, 2).save_folder(&other_data).unwrap();
    let model = dir.join("model.safetensors");
    // (data, seed, batch size, image size, --resume)
    let train = |data: &Path, seed: &str, batch: &str, size: &str, resume: bool| {
        let mut a = args(&["train", "--data", &s(data), "--out", &s(&model)]);
        a.extend(args(&[
            "--epochs",
            "2",
            "--seed",
            seed,
            "--batch-size",
            batch,
        ]));
        a.extend(args(&[
            "--image-size",
            size,
            "--lr",
            "1e30",
            "--checkpoint-every",
            "1",
        ]));
        if resume {
            a.push("--resume".into());
        }
        run(&a)
    };

    // Nothing to resume yet: a clear error, not a silent fresh start.
    let (ok, out) = train(&data, "0", "8", "16", true);
    assert!(!ok && out.contains("no checkpoint to resume from"), "{out}");

    // A run that stops (at a NaN) leaves a checkpoint, which a fresh run will not overwrite.
    let (ok, out) = train(&data, "0", "8", "16", false);
    assert!(!ok && out.contains("non-finite"), "{out}");
    let (ok, out) = train(&data, "0", "8", "16", false);
    assert!(!ok, "{out}");
    assert!(
        out.contains("unfinished run") && out.contains("--resume"),
        "{out}"
    );
    for ((seed, batch, size), expect) in [
        (("1", "8", "16"), "training seed was 0, now 1"),
        (("0", "4", "16"), "batch size was 8, now 4"),
        (("0", "8", "24"), "image size was 16, now 24"),
    ] {
        let (ok, out) = train(&data, seed, batch, size, true);
        assert!(!ok && out.contains(expect), "{seed} {batch} {size}: {out}");
        assert!(out.contains("cannot resume"), "{out}");
    }
    let (ok, out) = train(&other_data, "0", "8", "16", true);
    assert!(!ok && out.contains("data was"), "{out}");

    // The same for `run`: another strategy set is named.
    let (train_dir, test_dir) = (dir.join("train"), dir.join("test"));
    dataset(36, 4).save_folder(&train_dir).unwrap();
    dataset(8, 5).save_folder(&test_dir).unwrap();
    let out_dir = dir.join("run");
    let experiment = |strategies: &str, extra: &[&str]| {
        let mut a = args(&["run", "--train", &s(&train_dir), "--test", &s(&test_dir)]);
        a.extend(args(&[
            "--initial-labelled",
            "16",
            "--budget",
            "4",
            "--epochs",
            "2",
        ]));
        a.extend(args(&[
            "--batch-size",
            "8",
            "--image-size",
            "16",
            "--lr",
            "1e30",
        ]));
        a.extend(args(&["--strategies", strategies, "--out", &s(&out_dir)]));
        a.extend(args(&["--checkpoint-every", "1"]));
        a.extend(args(extra));
        run(&a)
    };
    let (ok, out) = experiment("entropy", &["--resume"]);
    assert!(!ok && out.contains("no checkpoint to resume from"), "{out}");
    let (ok, out) = experiment("entropy", &[]);
    assert!(!ok && out.contains("non-finite"), "{out}");
    let (ok, out) = experiment("margin", &["--resume"]);
    assert!(!ok, "{out}");
    assert!(
        out.contains("strategies was random,entropy, now random,margin"),
        "{out}"
    );
    std::fs::remove_dir_all(&dir).ok();
}

/// `args` run under a file size limit of `kib` KiB with SIGXFSZ ignored, so a write past it
/// fails with EFBIG as a write to a full disk fails with ENOSPC.
fn run_with_file_limit(kib: u64, args: &[String]) -> (bool, String) {
    let script = format!("ulimit -f {kib} && trap '' XFSZ && exec \"$0\" \"$@\"");
    let out = Command::new("sh")
        .arg("-c")
        .arg(script)
        .arg(env!("CARGO_BIN_EXE_labelwise"))
        .args(["--device", "cpu", "--threads", "2"])
        .args(args)
        .output()
        .unwrap();
    text(out)
}

#[test]
fn full_disk_and_unwritable_folders_keep_earlier_outputs() {
    let dir = scratch("disk");
    let data = dir.join("data");
    dataset(24, 1).save_folder(&data).unwrap();
    let out_dir = dir.join("out");
    std::fs::create_dir_all(&out_dir).unwrap();
    let model = out_dir.join("model.safetensors");
    let train = |out: &Path, every: &str| {
        let mut a = args(&["train", "--data", &s(&data), "--out", &s(out)]);
        a.extend(args(&[
            "--epochs",
            "1",
            "--batch-size",
            "8",
            "--image-size",
            "16",
        ]));
        a.extend(args(&["--checkpoint-every", every]));
        a
    };
    let (ok, out) = run(&train(&model, "off"));
    assert!(ok, "{out}");
    let earlier = files(&out_dir);
    assert_eq!(earlier.len(), 3, "model, epochs CSV and plot");

    // The disk fills while the new model is written (the final write): a clear error naming
    // the file, and the earlier model, curves and folder as they were.
    let (ok, out) = run_with_file_limit(2048, &train(&model, "off"));
    assert!(!ok, "{out}");
    assert!(
        out.contains("model.safetensors") && out.contains("too large"),
        "{out}"
    );
    assert!(files(&out_dir) == earlier, "earlier outputs changed");

    // The disk fills at the first checkpoint: the same, and no checkpoint or temporary file.
    let (ok, out) = run_with_file_limit(2048, &train(&model, "1"));
    assert!(!ok, "{out}");
    assert!(out.contains("model.checkpoint.safetensors"), "{out}");
    assert!(files(&out_dir) == earlier, "earlier outputs changed");

    // `run`'s results: the first file past the limit fails the run; nothing earlier changes.
    let (train_dir, test_dir) = (dir.join("train"), dir.join("test"));
    dataset(36, 4).save_folder(&train_dir).unwrap();
    dataset(8, 5).save_folder(&test_dir).unwrap();
    let results = dir.join("results");
    let mut experiment = args(&["run", "--train", &s(&train_dir), "--test", &s(&test_dir)]);
    experiment.extend(args(&[
        "--initial-labelled",
        "16",
        "--budget",
        "4",
        "--epochs",
        "1",
    ]));
    experiment.extend(args(&["--retrain-epochs", "1", "--batch-size", "8"]));
    experiment.extend(args(&["--image-size", "16", "--strategies", "random"]));
    experiment.extend(args(&["--checkpoint-every", "off", "--out", &s(&results)]));
    let (ok, out) = run(&experiment);
    assert!(ok, "{out}");
    let earlier_results = files(&results);
    let (ok, out) = run_with_file_limit(1, &experiment);
    assert!(!ok, "{out}");
    assert!(out.contains("too large"), "{out}");
    assert!(
        files(&results) == earlier_results,
        "earlier results changed"
    );

    // An output folder that is a file: refused before any training, the file untouched.
    let blocker = dir.join("blocker");
    std::fs::write(&blocker, b"not a folder").unwrap();
    let started = Instant::now();
    let (ok, out) = run(&train(&blocker.join("model.safetensors"), "off"));
    assert!(!ok && out.contains("blocker"), "{out}");
    assert!(
        !out.contains("epoch  1/1"),
        "refused before training: {out}"
    );
    assert_eq!(std::fs::read(&blocker).unwrap(), b"not a folder");
    println!("refused in {:.1}s", started.elapsed().as_secs_f64());
    let mut bad_run = experiment.clone();
    let last = bad_run.len() - 1;
    bad_run[last] = s(&blocker.join("results"));
    let (ok, out) = run(&bad_run);
    assert!(!ok && out.contains("blocker"), "{out}");

    // A read-only folder. Root writes through permissions, so this part needs another user.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&out_dir, std::fs::Permissions::from_mode(0o555)).unwrap();
        if tempfile_probe(&out_dir) {
            println!("SKIPPED read-only folder: this user (root?) writes through permissions");
        } else {
            let (ok, out) = run(&train(&model, "off"));
            assert!(!ok && out.contains("model.safetensors"), "{out}");
            assert!(files(&out_dir) == earlier, "earlier outputs changed");
        }
        std::fs::set_permissions(&out_dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    std::fs::remove_dir_all(&dir).ok();
}

fn tiny_model(backend: &BackendHandle) -> Model {
    let config = ModelConfig {
        label_names: (0..LABELS).map(|l| format!("label{l}")).collect(),
        multilabel: false,
        image_size: SIZE,
        margin: 0.2,
        scale: 16.0,
        mean: IMAGENET_MEAN,
        std: IMAGENET_STD,
    };
    Model::new(backend.clone(), config, 0).unwrap()
}

#[test]
fn injected_nan_gradient_names_its_tensor_and_no_checkpoint_sees_it() {
    let backend: BackendHandle = Arc::new(CpuBackend);
    let data = dataset(24, 1);
    let mut model = tiny_model(&backend);
    let mut trainable = Vec::new();
    model.visit(&mut |name, kind, _| {
        if kind != TensorKind::Buffer {
            trainable.push(name.to_string());
        }
    });
    let target = "layer3.1.conv2.weight";
    let slot = trainable.iter().position(|n| n == target).unwrap();
    let cfg = TrainConfig {
        epochs: 2,
        batch_size: 8,
        ..TrainConfig::default()
    };
    let all: Vec<usize> = (0..data.len()).collect();

    // Step 4 (epoch 2's first: 3 batches an epoch) gets one NaN in layer3.1.conv2.weight.
    let mut saved_steps = Vec::new();
    let mut checkpoint = |p: FitPoint| {
        saved_steps.push(p.state.steps);
        Ok(())
    };
    let mut poison = |step: usize, grads: &mut [Option<labelwise::Tensor>]| {
        if step == 4 {
            let g = grads[slot].as_ref().unwrap();
            let mut values = g.to_vec().unwrap();
            values[17] = f32::NAN;
            grads[slot] = Some(backend.from_host(&values, g.shape()).unwrap());
        }
    };
    let hooks = FitHooks {
        checkpoint: Some(&mut checkpoint),
        gradients: Some(&mut poison),
        ..FitHooks::default()
    };
    let err = train::fit_with(&mut model, &data, &all, &[], &cfg, hooks).unwrap_err();
    let text = err.to_string();
    assert!(
        text.starts_with("non-finite gradient in layer3.1.conv2.weight at epoch 2 step 4:"),
        "{text}"
    );
    assert!(text.contains("1 of 589824 elements"), "{text}");
    assert!(matches!(
        err,
        Error::NonFinite {
            kind: "gradient",
            step: 4,
            epoch: 2,
            ..
        }
    ));
    assert_eq!(saved_steps, [1, 2, 3], "no checkpoint after the bad step");

    // A NaN weight makes the loss itself NaN: named as the loss, at the first step.
    let mut model = tiny_model(&backend);
    model.visit(&mut |name, _, t| {
        if name == "fc.weight" || name == "cosface.weight" {
            let mut v = t.to_vec().unwrap();
            v[0] = f32::NAN;
            *t = backend.from_host(&v, t.shape()).unwrap();
        }
    });
    let err = train::fit_with(&mut model, &data, &all, &[], &cfg, FitHooks::default())
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with("non-finite loss in softmax cross-entropy at epoch 1 step 1"),
        "{err}"
    );
}
