//! `--init-weights` end to end: a saved model (torchvision's names and layout) starts another
//! model's encoder; a file with a tensor missing, extra or mis-shaped is refused with an error
//! naming the tensor and the file, before any data is loaded.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use safetensors::tensor::TensorView;
use safetensors::SafeTensors;

/// A safetensors file's tensors: name, shape, little-endian float32 bytes.
type Tensors = Vec<(String, Vec<usize>, Vec<u8>)>;

/// A way to break a good file: what it is, the edit, and what the error must say.
type Breakage = (&'static str, fn(&mut Tensors), &'static str);

fn labelwise(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_labelwise"))
        .args(args)
        .args(["--device", "cpu", "--threads", "2"])
        .output()
        .expect("labelwise runs")
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("labelwise-init-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A labelled folder of `n` 12x12 images in two classes (bright top or bright bottom half).
fn write_task(dir: &Path, n: usize) {
    std::fs::create_dir_all(dir.join("images")).unwrap();
    let mut csv = String::from("file,top,bottom\n");
    for i in 0..n {
        let top = i % 2 == 0;
        let image = image::RgbImage::from_fn(12, 12, |x, y| {
            let bright = (y < 6) == top;
            let v = if bright { 200 } else { 30 } + ((x * 7 + y * 3 + i as u32) % 20) as u8;
            image::Rgb([v, v / 2, 255 - v])
        });
        let name = format!("img{i:02}.png");
        image.save(dir.join("images").join(&name)).unwrap();
        csv += &format!("{name},{},{}\n", u8::from(top), u8::from(!top));
    }
    std::fs::write(dir.join("labels.csv"), csv).unwrap();
}

/// The tensors of a safetensors file, as (name, shape, bytes), sorted by name.
fn tensors(path: &Path) -> Tensors {
    let bytes = std::fs::read(path).unwrap();
    let file = SafeTensors::deserialize(&bytes).unwrap();
    let mut out: Vec<_> = file
        .tensors()
        .into_iter()
        .map(|(n, v)| (n, v.shape().to_vec(), v.data().to_vec()))
        .collect();
    out.sort();
    out
}

fn write_tensors(path: &Path, tensors: &Tensors) {
    let views = tensors.iter().map(|(n, s, b)| {
        let view = TensorView::new(safetensors::Dtype::F32, s.clone(), b).unwrap();
        (n.clone(), view)
    });
    std::fs::write(path, safetensors::serialize(views, None).unwrap()).unwrap();
}

#[test]
fn train_starts_from_init_weights_and_refuses_bad_ones() {
    let dir = temp_dir("train");
    let data = dir.join("task");
    write_task(&data, 8);
    let s = |p: &Path| p.to_str().unwrap().to_string();
    let common = [
        "--data",
        &s(&data),
        "--image-size",
        "16",
        "--batch-size",
        "4",
        "--val-fraction",
        "0",
        "--curves",
        "false",
    ];

    // A first model, then a second started from it with no training: its encoder must be the
    // first one's, bit for bit, and its CosFace head (skipped, with a note) its own.
    let first = dir.join("first.safetensors");
    let out = labelwise(
        &[
            &["train", "--out", &s(&first), "--epochs", "1"][..],
            &common,
        ]
        .concat(),
    );
    assert!(out.status.success(), "{}", text(&out));
    let second = dir.join("second.safetensors");
    let args = [
        "train",
        "--out",
        &s(&second),
        "--epochs",
        "0",
        "--seed",
        "5",
    ];
    let out = labelwise(&[&args[..], &common, &["--init-weights", &s(&first)]].concat());
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("skipped 1 tensor(s) that are not part of the encoder: cosface.weight"),
        "{}",
        text(&out)
    );
    let (a, b) = (tensors(&first), tensors(&second));
    assert_eq!(a.len(), b.len());
    for (x, y) in a.iter().zip(&b) {
        assert_eq!(x.0, y.0);
        match x.0.as_str() {
            "cosface.weight" => assert_ne!(x.2, y.2, "the head is not loaded"),
            name => assert!(x.2 == y.2, "{name} differs from --init-weights"),
        }
    }

    // Broken files: each error names the file and the tensor.
    let broken = dir.join("broken.safetensors");
    let cases: [Breakage; 3] = [
        (
            "missing",
            |t| t.retain(|(n, _, _)| n != "layer3.0.bn2.running_var"),
            "missing tensor(s) \"layer3.0.bn2.running_var\"",
        ),
        (
            "unexpected",
            |t| t.push(("layer1.2.conv1.weight".into(), vec![1], vec![0; 4])),
            "unexpected tensor(s) \"layer1.2.conv1.weight\"",
        ),
        (
            "misshapen",
            |t| {
                let bn = t
                    .iter_mut()
                    .find(|(n, _, _)| n == "layer2.1.bn1.bias")
                    .unwrap();
                bn.1 = vec![64];
                bn.2.truncate(64 * 4);
            },
            "tensor \"layer2.1.bn1.bias\" has shape [64], expected [128]",
        ),
    ];
    for (what, edit, message) in cases {
        let mut t = tensors(&first);
        edit(&mut t);
        write_tensors(&broken, &t);
        let args = ["train", "--out", &s(&dir.join("never.safetensors"))];
        let out = labelwise(&[&args[..], &common, &["--init-weights", &s(&broken)]].concat());
        let said = text(&out);
        assert!(!out.status.success(), "{what}: accepted\n{said}");
        assert!(said.contains(message), "{what}: {said}");
        assert!(
            said.contains(&s(&broken)),
            "{what}: the file is not named: {said}"
        );
        assert!(!dir.join("never.safetensors").exists());
    }

    // `run` reads the file before anything else, and starts its models from a good one.
    let args = [
        "run",
        "--train",
        &s(&data),
        "--test",
        &s(&data),
        "--out",
        &s(&dir.join("run")),
        "--initial-labelled",
        "4",
        "--budget",
        "2",
        "--strategies",
        "random",
        "--epochs",
        "1",
        "--retrain-epochs",
        "1",
        "--image-size",
        "16",
        "--batch-size",
        "2",
        "--val-fraction",
        "0",
    ];
    let out = labelwise(&[&args[..], &["--init-weights", &s(&broken)]].concat());
    assert!(!out.status.success());
    assert!(text(&out).contains("layer2.1.bn1.bias"), "{}", text(&out));
    let out = labelwise(&[&args[..], &["--init-weights", &s(&first)]].concat());
    assert!(out.status.success(), "{}", text(&out));
    let said = text(&out);
    assert!(
        said.contains(&format!("encoder init       {}", s(&first))),
        "{said}"
    );
    assert!(said.contains("skipped 1 tensor(s)"), "{said}");
    std::fs::remove_dir_all(&dir).ok();
}
