//! The fuzz targets' bodies (fuzz/src/lib.rs, compiled here too) on their seed inputs and on
//! every input that once broke them, so `cargo test` keeps the bodies compiling and the fixes
//! fixed without cargo-fuzz. Run the fuzzers themselves with `.ci/fuzz.sh`.

#[path = "../fuzz/src/lib.rs"]
mod bodies;

use std::path::{Path, PathBuf};

fn seeds(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/seeds")
        .join(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no seeds in {}", dir.display());
    files
        .into_iter()
        .map(|p| {
            let bytes = std::fs::read(&p).unwrap();
            (p, bytes)
        })
        .collect()
}

#[test]
fn seeds_pass_every_body() {
    for (target, body) in [
        ("labels_csv", bodies::labels_csv as fn(&[u8])),
        ("idx", bodies::idx),
        ("image", bodies::image),
        ("model", bodies::model),
    ] {
        for (path, bytes) in seeds(target) {
            eprintln!("{}", path.display());
            body(&bytes);
        }
    }
}

/// Found by `labels_csv` in its first second: a quoted file name with a space at its end was
/// written back unquoted, so reading the written file trimmed the space and named another file.
/// The writer now quotes padded fields, and only spaces and tabs count as padding.
#[test]
fn labels_csv_quoted_padding_survives_a_round_trip() {
    bodies::labels_csv(b"\xef\xbb\xbffile , \"cat, big\" ,dog\r\n\r\n \"a \",0,0");
    bodies::labels_csv(b"file,\" x\"\n\"\tb\",1\n");
    bodies::labels_csv("file,x\n\u{a0}a\u{2003},1\n".as_bytes());
}

/// IDX dimensions whose product is exactly `u64::MAX` ((2^32 - 1) * 641 * 6700417): the reader
/// asked for one byte past the promise and overflowed. Found by reading the code while writing
/// the fuzz target, not by the fuzzer.
#[test]
fn idx_dimensions_multiplying_to_the_largest_size() {
    let mut bytes = vec![0, 0, 8, 3];
    for d in [u32::MAX, 641, 6_700_417] {
        bytes.extend_from_slice(&d.to_be_bytes());
    }
    bytes.extend_from_slice(&[1, 2, 3]);
    bodies::idx(&bytes);
}

/// Writes the seed inputs under fuzz/seeds/ (committed; rerun only to change them):
/// `cargo test --test fuzz_regressions write_fuzz_seeds -- --ignored`.
#[test]
#[ignore = "rewrites files in the source tree"]
fn write_fuzz_seeds() {
    use std::io::{Cursor, Write};

    use image::{DynamicImage, ImageBuffer, ImageFormat};

    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds");
    let write = |target: &str, name: &str, bytes: &[u8]| {
        let dir = root.join(target);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(name), bytes).unwrap();
    };

    write(
        "labels_csv",
        "plain.csv",
        b"file,cat,dog\na.png,1,0\nb.png,0,1\nc.png,1,1\n",
    );
    write(
        "labels_csv",
        "quirks.csv",
        "\u{feff}file , \"cat, big\" ,dog\r\n\r\n \"a \"\"b\"\".png\" , 1 ,0\r\n\"two\nlines.png\",0,1"
            .as_bytes(),
    );
    write("labels_csv", "bad-value.csv", b"file,x\na.png,2\n");

    let mut idx = vec![0, 0, 8, 3, 0, 0, 0, 2, 0, 0, 0, 3, 0, 0, 0, 4];
    idx.extend(0u8..24);
    write("idx", "images.idx", &idx);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&idx).unwrap();
    write("idx", "images.idx.gz", &gz.finish().unwrap());
    write("idx", "labels.idx", &[0, 0, 8, 1, 0, 0, 0, 3, 7, 0, 9]);

    let encode = |image: DynamicImage, format: ImageFormat| {
        let mut bytes = Cursor::new(Vec::new());
        image.write_to(&mut bytes, format).unwrap();
        bytes.into_inner()
    };
    let rgb: DynamicImage =
        ImageBuffer::from_fn(5, 3, |x, y| image::Rgb([x as u8 * 50, y as u8 * 80, 9])).into();
    write("image", "rgb.png", &encode(rgb.clone(), ImageFormat::Png));
    write("image", "rgb.jpg", &encode(rgb, ImageFormat::Jpeg));
    let grey: DynamicImage = ImageBuffer::from_pixel(4, 4, image::Luma([77u8])).into();
    write("image", "grey.png", &encode(grey.clone(), ImageFormat::Png));
    write("image", "grey.jpg", &encode(grey, ImageFormat::Jpeg));
    let rgba16: DynamicImage =
        ImageBuffer::from_pixel(3, 2, image::Rgba([1000u16, 2000, 3000, 65535])).into();
    write("image", "rgba16.png", &encode(rgba16, ImageFormat::Png));

    // A model file with the configuration and the head, but no encoder: small enough for the
    // fuzzer to mutate, and it reaches every check before the encoder's tensors.
    let meta = "{\"format\":\"labelwise-resnet18-cosface\",\"label_names\":\"cat\\ndog\",\
                \"multilabel\":\"false\",\"image_size\":\"32\",\"margin\":\"0.2\",\"scale\":\"16\",\
                \"mean\":\"0.485,0.456,0.406\",\"std\":\"0.229,0.224,0.225\"}";
    let header = format!(
        "{{\"__metadata__\":{meta},\"cosface.weight\":{{\"dtype\":\"F32\",\"shape\":[2,512],\
         \"data_offsets\":[0,4096]}}}}"
    );
    let mut model = (header.len() as u64).to_le_bytes().to_vec();
    model.extend_from_slice(header.as_bytes());
    model.extend((0..4096).map(|i| (i % 7) as u8));
    write("model", "head-only.safetensors", &model);
}

/// Found by `model` in its first run: 4 executions per second, because a file holding a valid
/// configuration and head built a whole ResNet18 (11 million weights) before finding that the
/// encoder's tensors were missing. Every tensor is now checked first; the encoder's layout is
/// computed once per process, so later failures cost a header parse.
#[test]
fn a_model_file_without_its_encoder_fails_before_building_one() {
    let (_, seed) = seeds("model").remove(0);
    bodies::model(&seed); // the first call computes the encoder's layout once
    let started = std::time::Instant::now();
    for _ in 0..200 {
        bodies::model(&seed);
    }
    let seconds = started.elapsed().as_secs_f64();
    // Building the model takes tens of milliseconds, so 200 builds could not fit.
    assert!(seconds < 2.0, "200 failed loads took {seconds:.2} s");
}
