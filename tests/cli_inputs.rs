//! The command-line tool on folders it did not expect: bad images under each --bad-images
//! policy, a pool whose labels.csv is broken or partial, unusable output paths, bad CosFace
//! settings, and the warnings for suspicious but legal input.

use std::collections::HashSet;
use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::process::Command;

use image::{ImageBuffer, ImageFormat};

/// Runs labelwise on the CPU; returns (success, stdout + stderr).
fn labelwise(args: &[&str]) -> (bool, String) {
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
    (out.status.success(), text)
}

fn ok(args: &[&str]) -> String {
    let (success, text) = labelwise(args);
    assert!(success, "labelwise {args:?} failed:\n{text}");
    text
}

fn fails(args: &[&str]) -> String {
    let (success, text) = labelwise(args);
    assert!(!success, "labelwise {args:?} succeeded:\n{text}");
    text
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("labelwise-cli-in-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn s(p: &Path) -> String {
    p.to_str().unwrap().to_string()
}

/// A PNG of class `class` (0 or 1): a bright left or right half, with a little texture.
fn png(class: usize, i: usize) -> Vec<u8> {
    let image = ImageBuffer::from_fn(8, 8, |x, y| {
        let bright = (x < 4) == (class == 0);
        let noise = ((i * 31 + x as usize * 7 + y as usize * 13) % 23) as u8;
        image::Luma([if bright { 200 + noise } else { noise }])
    });
    let mut bytes = Cursor::new(Vec::new());
    image.write_to(&mut bytes, ImageFormat::Png).unwrap();
    bytes.into_inner()
}

/// A folder of `n` images named `{prefix}NN.png`, alternating classes, with labels.csv whose
/// third label `never` is 0 everywhere. Different prefixes give different pictures.
fn folder(dir: &Path, prefix: &str, n: usize) {
    std::fs::create_dir_all(dir.join("images")).unwrap();
    let salt: usize = prefix.bytes().map(|b| usize::from(b) * 100).sum();
    let mut csv = String::from("file,left,right,never\n");
    for i in 0..n {
        let name = format!("{prefix}{i:02}.png");
        std::fs::write(dir.join("images").join(&name), png(i % 2, salt + i)).unwrap();
        csv += &format!("{name},{},{},0\n", 1 - i % 2, i % 2);
    }
    std::fs::write(dir.join("labels.csv"), csv).unwrap();
}

fn csv_column(path: &Path, column: usize) -> Vec<String> {
    let mut reader = csv::Reader::from_path(path).unwrap();
    reader
        .records()
        .map(|r| r.unwrap()[column].to_string())
        .collect()
}

const TINY: [&str; 8] = [
    "--image-size",
    "8",
    "--batch-size",
    "4",
    "--epochs",
    "1",
    "--val-fraction",
    "0",
];

#[test]
fn bad_images_fail_or_are_skipped_everywhere() {
    let dir = temp_dir("policy");
    let labelled = dir.join("labelled");
    folder(&labelled, "l", 8);
    // One corrupt image in the labelled set.
    std::fs::write(labelled.join("images/l03.png"), b"\x89PNG\r\n\x1a\nbroken").unwrap();
    let model = dir.join("out/model.safetensors");

    // fail (the default): stops before training, naming the file.
    let (labelled_arg, model_arg) = (s(&labelled), s(&model));
    let mut train = vec!["train", "--data", &labelled_arg, "--out", &model_arg];
    train.extend(TINY);
    let text = fails(&train);
    assert!(
        text.contains("l03.png") && !text.contains("epoch"),
        "{text}"
    );

    // skip: one warning naming the file and the reason, a count, and 7 images trained on.
    let mut skip = train.clone();
    skip.extend(["--bad-images", "skip"]);
    let text = ok(&skip);
    assert!(
        text.contains("skipping image") && text.contains("l03.png"),
        "{text}"
    );
    assert!(text.contains("skipped 1 bad image(s) of 8"), "{text}");
    assert!(text.contains("(7 images, 3 labels)"), "{text}");
    // The all-zero label column is worth a warning.
    assert!(
        text.contains("no positive image for label(s) never"),
        "{text}"
    );
    assert!(model.exists(), "the --out folder is created");

    // A pool with a broken labels.csv, an unlisted image and a corrupt image: purchase and
    // embed ignore the labels.csv and list the images themselves.
    let pool = dir.join("pool");
    folder(&pool, "p", 6);
    std::fs::write(
        pool.join("labels.csv"),
        "file,left\np00.png,1\n\"never closed",
    )
    .unwrap();
    std::fs::write(
        pool.join("images/zz-corrupt.jpg"),
        b"\xff\xd8\xff not really",
    )
    .unwrap();
    let purchase = dir.join("purchase.csv");
    let buy = |policy: &str, budget: &str| {
        labelwise(&[
            "purchase",
            "--model",
            &s(&model),
            "--pool",
            &s(&pool),
            "--budget",
            budget,
            "--out",
            &s(&purchase),
            "--bad-images",
            policy,
        ])
    };
    let (success, text) = buy("fail", "3");
    assert!(!success && text.contains("zz-corrupt.jpg"), "{text}");
    let (success, text) = buy("skip", "100");
    assert!(success, "{text}");
    assert!(
        text.contains("zz-corrupt.jpg") && text.contains("skipped 1"),
        "{text}"
    );
    let bought: HashSet<String> = csv_column(&purchase, 1).into_iter().collect();
    let expected: HashSet<String> = (0..6).map(|i| format!("p{i:02}.png")).collect();
    assert_eq!(bought, expected, "every good image, never the corrupt one");

    let embedded = dir.join("embedded");
    let text = ok(&[
        "embed",
        "--model",
        &s(&model),
        "--images",
        &s(&pool),
        "--out",
        &s(&embedded),
        "--bad-images",
        "skip",
    ]);
    assert!(text.contains("of 6 images"), "{text}");
    assert_eq!(csv_column(&embedded.join("embeddings.csv"), 0), {
        let mut names: Vec<String> = expected.into_iter().collect();
        names.sort();
        names
    });
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn run_skips_bad_pool_images_and_warns_about_overlap() {
    let dir = temp_dir("run");
    let labelled = dir.join("labelled");
    let test = dir.join("test");
    folder(&labelled, "l", 8);
    folder(&test, "t", 6);
    // The pool: its own images, one corrupt, and two copies of labelled images.
    let pool = dir.join("pool");
    folder(&pool, "p", 6);
    std::fs::write(pool.join("images/p02.png"), b"").unwrap();
    for (copy, of) in [("p04.png", "l04.png"), ("p05.png", "l05.png")] {
        std::fs::copy(
            labelled.join("images").join(of),
            pool.join("images").join(copy),
        )
        .unwrap();
    }
    let out = dir.join("results");
    let mut args = vec![
        "run".to_string(),
        "--labelled".into(),
        s(&labelled),
        "--pool".into(),
        s(&pool),
        "--test".into(),
        s(&test),
        "--budget".into(),
        "100".into(),
        "--retrain-epochs".into(),
        "1".into(),
        "--strategies".into(),
        "entropy,random,entropy".into(),
        "--out".into(),
        s(&out),
        "--bad-images".into(),
        "skip".into(),
    ];
    args.extend(TINY.iter().map(|a| a.to_string()));
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let text = ok(&refs);
    assert!(
        text.contains("p02.png") && text.contains("empty file"),
        "{text}"
    );
    assert!(text.contains("8 labelled, 5 pool, 6 test"), "{text}");
    assert!(
        text.contains("--strategies names entropy more than once"),
        "{text}"
    );
    assert!(
        text.contains("2 of 5 pool images are identical to labelled images"),
        "{text}"
    );
    assert!(
        text.contains("the labelled set has no positive image for label(s) never"),
        "{text}"
    );
    for strategy in ["random", "entropy"] {
        let bought = csv_column(&out.join(format!("purchases/{strategy}.csv")), 1);
        assert_eq!(bought.len(), 5, "{strategy}: {bought:?}");
        assert!(!bought.iter().any(|f| f == "p02.png"), "{bought:?}");
    }

    // The same folder as labelled and pool.
    let same: Vec<&str> = refs
        .iter()
        .map(|a| {
            if *a == s(&pool) {
                labelled.to_str().unwrap()
            } else {
                a
            }
        })
        .collect();
    let text = ok(&same);
    assert!(
        text.contains("--labelled and --pool are the same folder"),
        "{text}"
    );
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn unusable_output_and_cosface_settings_fail_before_training() {
    let dir = temp_dir("early");
    let data = dir.join("data");
    folder(&data, "d", 4);
    let train = |extra: &[&str]| {
        let mut args = vec!["train".to_string(), "--data".into(), s(&data)];
        args.extend(TINY.iter().map(|a| a.to_string()));
        args.extend(extra.iter().map(|a| a.to_string()));
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        fails(&refs)
    };

    // --out is a folder; --out's folder is a file.
    let text = train(&["--out", &s(&data)]);
    assert!(
        text.contains("is a folder") && !text.contains("epoch"),
        "{text}"
    );
    let file = data.join("labels.csv");
    let text = train(&["--out", &s(&file.join("model.safetensors"))]);
    assert!(
        text.contains("cannot be written") && !text.contains("epoch"),
        "{text}"
    );

    let model = s(&dir.join("m.safetensors"));
    for (flag, needle) in [
        (
            "--margin=-0.5",
            "--margin must be a finite number of 0 or more",
        ),
        ("--margin=NaN", "--margin must be"),
        ("--scale=0", "--scale must be a finite number above 0"),
        ("--scale=inf", "--scale must be"),
        ("--scale=-16", "--scale must be"),
    ] {
        let text = train(&["--out", &model, flag]);
        assert!(text.contains(needle), "{flag}: {text}");
    }
    assert!(!dir.join("m.safetensors").exists());
    std::fs::remove_dir_all(&dir).ok();
}
