//! Model files that are truncated, lie about their sizes or hold the wrong tensors: each is a
//! format error naming the file (and the tensor, where one is at fault), found before any
//! allocation the file's own size does not justify.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use labelwise::backend::cpu::CpuBackend;
use labelwise::model::{Model, ModelConfig, EMBEDDING_DIM, IMAGENET_MEAN, IMAGENET_STD};
use labelwise::{BackendHandle, Error};

fn cpu() -> BackendHandle {
    Arc::new(CpuBackend)
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("labelwise-model-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Loads `bytes` as `name` and returns the format error's message, checking it names the file.
fn format_error(bytes: &[u8], name: &str) -> String {
    let started = Instant::now();
    let result = Model::load_bytes(bytes, Path::new(name), cpu());
    let seconds = started.elapsed().as_secs_f64();
    let err = match result {
        Ok(_) => panic!("{name} loaded"),
        Err(e) => e,
    };
    let message = err.to_string();
    assert!(matches!(err, Error::Format { .. }), "{message}");
    assert!(message.starts_with(&format!("{name}: ")), "{message}");
    assert!(seconds < 5.0, "{name} took {seconds:.1} s");
    message
}

fn json_string(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A safetensors file written by hand: the header lists what it is told, true or not.
fn safetensors(
    metadata: &[(&str, String)],
    tensors: &[(&str, &str, &[usize], [usize; 2])],
    data: &[u8],
) -> Vec<u8> {
    let mut fields = Vec::new();
    let meta: Vec<String> = metadata
        .iter()
        .map(|(k, v)| format!("{}:{}", json_string(k), json_string(v)))
        .collect();
    fields.push(format!("\"__metadata__\":{{{}}}", meta.join(",")));
    for (name, dtype, shape, [begin, end]) in tensors {
        let shape: Vec<String> = shape.iter().map(usize::to_string).collect();
        fields.push(format!(
            "{}:{{\"dtype\":\"{dtype}\",\"shape\":[{}],\"data_offsets\":[{begin},{end}]}}",
            json_string(name),
            shape.join(",")
        ));
    }
    let header = format!("{{{}}}", fields.join(","));
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(header.as_bytes());
    bytes.extend_from_slice(data);
    bytes
}

/// The metadata of a two-label model, with `changes` applied.
fn metadata(changes: &[(&str, &str)]) -> Vec<(&'static str, String)> {
    let mut meta = vec![
        ("format", "labelwise-resnet18-cosface".to_string()),
        ("label_names", "cat\ndog".to_string()),
        ("multilabel", "false".to_string()),
        ("image_size", "32".to_string()),
        ("margin", "0.2".to_string()),
        ("scale", "16".to_string()),
        ("mean", "0.485,0.456,0.406".to_string()),
        ("std", "0.229,0.224,0.225".to_string()),
    ];
    for (key, value) in changes {
        match meta.iter_mut().find(|(k, _)| k == key) {
            Some(entry) => entry.1 = value.to_string(),
            None => panic!("no metadata key {key}"),
        }
    }
    meta
}

const HEAD: [usize; 2] = [2, EMBEDDING_DIM];
const HEAD_BYTES: usize = 2 * EMBEDDING_DIM * 4;

#[test]
fn hand_made_lies_are_format_errors() {
    let zeros = vec![0u8; HEAD_BYTES];
    let head = [("cosface.weight", "F32", &HEAD[..], [0, HEAD_BYTES])];

    // Not safetensors at all; a header length past the end of the file, or absurd.
    assert!(format_error(b"", "empty.safetensors").contains("0 bytes, too short"));
    assert!(format_error(b"hello", "text.safetensors").contains("5 bytes, too short"));
    let mut long = 1000u64.to_le_bytes().to_vec();
    long.extend_from_slice(b"{\"a\":1}");
    let message = format_error(&long, "long.safetensors");
    assert!(
        message.contains("header length of 1000 bytes does not fit in the file's 15 bytes"),
        "{message}"
    );
    let mut absurd = u64::MAX.to_le_bytes().to_vec();
    absurd.extend_from_slice(b"{}");
    assert!(format_error(&absurd, "absurd.safetensors").contains("does not fit"));
    let mut not_json = 5u64.to_le_bytes().to_vec();
    not_json.extend_from_slice(b"{{{{{");
    assert!(format_error(&not_json, "json.safetensors").contains("header is not JSON"));

    // Data offsets past the data, and a byte length that disagrees with shape and dtype.
    let outside = safetensors(
        &metadata(&[]),
        &[("cosface.weight", "F32", &HEAD, [0, 2 * HEAD_BYTES])],
        &zeros,
    );
    assert!(format_error(&outside, "outside.safetensors").contains("disagrees with its shape"));
    let short = safetensors(
        &metadata(&[]),
        &[("cosface.weight", "F32", &HEAD, [0, HEAD_BYTES / 2])],
        &zeros[..HEAD_BYTES / 2],
    );
    assert!(format_error(&short, "short.safetensors").contains("disagrees with its shape"));
    // Offsets that match shape and dtype but point past the data: the file is too short.
    let past_end = safetensors(&metadata(&[]), &head, &zeros[..HEAD_BYTES - 4]);
    assert!(format_error(&past_end, "past.safetensors").contains("truncated or padded"));
    let gap = safetensors(
        &metadata(&[]),
        &[
            ("cosface.weight", "F32", &HEAD, [0, HEAD_BYTES]),
            ("extra", "F32", &[1], [HEAD_BYTES + 4, HEAD_BYTES + 8]),
        ],
        &[zeros.clone(), vec![0; 8]].concat(),
    );
    assert!(format_error(&gap, "gap.safetensors").contains("\"extra\"'s data offsets"));

    // A consistent tensor of the wrong dtype, and one of the wrong shape.
    let f16 = safetensors(
        &metadata(&[]),
        &[("cosface.weight", "F16", &[2, 1024], [0, HEAD_BYTES])],
        &zeros,
    );
    let message = format_error(&f16, "f16.safetensors");
    assert!(
        message.contains("\"cosface.weight\" is F16 [2, 1024], expected F32 [2, 512]"),
        "{message}"
    );

    // A label list far longer than the head: refused from the head's shape, before the model
    // (whose head would have 100,000 rows) is built.
    let many: Vec<String> = (0..100_000).map(|i| format!("l{i}")).collect();
    let lying = safetensors(
        &metadata(&[("label_names", &many.join("\n"))]),
        &head,
        &zeros,
    );
    let message = format_error(&lying, "labels.safetensors");
    assert!(
        message.contains("expected F32 [100000, 512] for the 100000 labels"),
        "{message}"
    );

    // Unusable metadata.
    for (key, value, needle) in [
        ("image_size", "0", "image size 0"),
        ("image_size", "-3", "not an integer"),
        ("scale", "NaN", "scale NaN"),
        ("scale", "0", "scale 0"),
        ("margin", "inf", "margin inf"),
        ("std", "0.2,0,0.2", "std positive"),
        ("mean", "1,2", "not three numbers"),
        ("label_names", "cat\ncat", "\"cat\" is empty or repeated"),
        ("label_names", "", "\"\" is empty or repeated"),
    ] {
        let bytes = safetensors(&metadata(&[(key, value)]), &head, &zeros);
        let message = format_error(&bytes, "meta.safetensors");
        assert!(message.contains(needle), "{key}={value:?}: {message}");
    }
    let no_meta = safetensors(&[], &head, &zeros);
    assert!(format_error(&no_meta, "bare.safetensors").contains("metadata lacks"));

    // Everything right but the encoder: the first missing tensor is named.
    let headless = safetensors(&metadata(&[]), &head, &zeros);
    let message = format_error(&headless, "encoder.safetensors");
    assert!(message.contains("\"conv1.weight\" is missing"), "{message}");
}

/// The file's header rewritten by `edit`, its data kept.
fn rewrite_header(bytes: &[u8], edit: impl Fn(&str) -> String) -> Vec<u8> {
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header = edit(std::str::from_utf8(&bytes[8..8 + n]).unwrap());
    let mut out = (header.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(&bytes[8 + n..]);
    out
}

#[test]
fn saved_model_damaged_in_each_way_is_refused() {
    let dir = scratch("damaged");
    let path = dir.join("model.safetensors");
    let config = ModelConfig {
        label_names: vec!["cat".into(), "dog".into()],
        multilabel: false,
        image_size: 32,
        margin: 0.2,
        scale: 16.0,
        mean: IMAGENET_MEAN,
        std: IMAGENET_STD,
    };
    Model::new(cpu(), config.clone(), 3)
        .unwrap()
        .save(&path)
        .unwrap();
    let good = std::fs::read(&path).unwrap();
    let loaded = Model::load(&path, cpu()).unwrap();
    assert_eq!(loaded.config, config);

    // Truncated: by one byte, to half, to the header alone, inside the length prefix.
    let n = u64::from_le_bytes(good[..8].try_into().unwrap()) as usize;
    for cut in [good.len() - 1, good.len() / 2, 8 + n, 5] {
        let message = format_error(&good[..cut], "cut.safetensors");
        assert!(
            message.contains("truncated") || message.contains("too short"),
            "{cut}: {message}"
        );
    }

    // conv1.weight retyped: I32 has F32's size (our dtype check names it), F16 does not
    // (the byte length no longer matches shape x dtype).
    let conv1 = "\"conv1.weight\":{\"dtype\":\"F32\"";
    assert!(std::str::from_utf8(&good[8..8 + n])
        .unwrap()
        .contains(conv1));
    let retyped = rewrite_header(&good, |h| {
        h.replace(conv1, "\"conv1.weight\":{\"dtype\":\"I32\"")
    });
    let message = format_error(&retyped, "i32.safetensors");
    assert!(
        message.contains("\"conv1.weight\" is I32 [64, 3, 7, 7], expected F32 [64, 3, 7, 7]"),
        "{message}"
    );
    let halved = rewrite_header(&good, |h| {
        h.replace(conv1, "\"conv1.weight\":{\"dtype\":\"F16\"")
    });
    assert!(format_error(&halved, "f16.safetensors").contains("disagrees with its shape"));

    // conv1.weight reshaped: the same element count in our layout instead of torchvision's is
    // a shape error naming it; one more column is a byte-length lie.
    let reshaped = rewrite_header(&good, |h| h.replace("[64,3,7,7]", "[64,7,7,3]"));
    let message = format_error(&reshaped, "nhwc.safetensors");
    assert!(
        message.contains("\"conv1.weight\" is F32 [64, 7, 7, 3]"),
        "{message}"
    );
    let wider = rewrite_header(&good, |h| h.replace("[64,3,7,7]", "[64,3,7,8]"));
    assert!(format_error(&wider, "wider.safetensors").contains("disagrees with its shape"));

    // The file path is named by load as well.
    std::fs::write(&path, &good[..100]).unwrap();
    let err = Model::load(&path, cpu()).err().unwrap();
    assert!(err.to_string().contains("model.safetensors"), "{err}");
    std::fs::remove_dir_all(&dir).ok();
}

/// A NaN in a weight would not fail later (ReLU and max pool drop it; every prediction becomes
/// 0.5), so loading refuses it, naming the tensor: our model files and torchvision's alike.
#[test]
fn non_finite_weights_are_refused_on_load() {
    let dir = scratch("nan");
    let path = dir.join("model.safetensors");
    let config = ModelConfig {
        label_names: vec!["a".into(), "b".into()],
        multilabel: true,
        image_size: 16,
        margin: 0.2,
        scale: 16.0,
        mean: IMAGENET_MEAN,
        std: IMAGENET_STD,
    };
    Model::new(cpu(), config, 1).unwrap().save(&path).unwrap();
    let mut bytes = std::fs::read(&path).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    let name = "layer4.1.bn2.weight";
    let start = header[name]["data_offsets"][0].as_u64().unwrap() as usize;
    let at = 8 + n + start + 4 * 7;
    bytes[at..at + 4].copy_from_slice(&f32::NAN.to_le_bytes());

    let message = format_error(&bytes, "nan.safetensors");
    assert!(
        message.contains(&format!("{name:?} has 1 of 512 elements NaN or infinite")),
        "{message}"
    );
    let Err(err) =
        labelwise::model::TorchvisionWeights::from_bytes(&bytes, Path::new("nan.safetensors"))
    else {
        panic!("the torchvision loader accepted a NaN");
    };
    assert!(err.to_string().contains(name), "{err}");
    std::fs::remove_dir_all(&dir).ok();
}
