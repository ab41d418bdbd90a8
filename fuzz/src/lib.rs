//! The fuzz targets' bodies: each hands arbitrary bytes to one loader of untrusted files and
//! checks what comes back. An error is a fine answer; a panic, a hang, a huge allocation or an
//! answer that breaks the checks below is a bug.
//!
//! The root crate's `tests/fuzz_regressions.rs` compiles this file too and runs every input
//! that once failed here, so `cargo test` keeps the bodies compiling and the fixes fixed.

use std::path::Path;
use std::sync::OnceLock;

use labelwise::data::{self, fashion_mnist, LoadOptions};
use labelwise::model::Model;
use labelwise::{backend, BackendHandle, DeviceChoice, Error};

/// The side images are decoded to; small, so a run spends its time in the decoders.
pub const IMAGE_SIDE: usize = 8;

/// `labels.csv`: a table that parses is consistent and writes back to the same table; an error
/// is a CSV error naming the file and a line.
pub fn labels_csv(bytes: &[u8]) {
    let path = Path::new("fuzz/labels.csv");
    let table = match data::parse_labels_csv(bytes, path) {
        Ok(table) => table,
        Err(e @ Error::Csv { .. }) => {
            assert!(e.to_string().starts_with("fuzz/labels.csv:"), "{e}");
            return;
        }
        Err(other) => panic!("not a CSV error: {other:?}"),
    };
    let n = table.num_labels();
    assert!(n >= 1 && !table.is_empty());
    assert_eq!(table.labels.len(), table.len() * n);
    assert_eq!(table.lines.len(), table.len());
    assert!(table.labels.iter().all(|&v| v <= 1));
    assert!(
        table.lines.windows(2).all(|w| w[0] < w[1]),
        "{:?}",
        table.lines
    );

    let written = data::format_labels_csv(&table.label_names, &table.files, &table.labels)
        .expect("a parsed table can be written");
    let again = data::parse_labels_csv(&written, path).expect("written labels.csv parses");
    assert_eq!(again.label_names, table.label_names);
    assert_eq!(again.files, table.files);
    assert_eq!(again.labels, table.labels);
}

/// IDX images and labels: a parse yields exactly the promised number of bytes; an error is a
/// format error naming the file.
pub fn idx(bytes: &[u8]) {
    let path = Path::new("fuzz.idx");
    match fashion_mnist::read_idx_images(bytes, path) {
        Ok((count, rows, cols, pixels)) => assert_eq!(count * rows * cols, pixels.len()),
        Err(e) => expect_format_error(&e, "fuzz.idx"),
    }
    if let Err(e) = fashion_mnist::read_idx_labels(bytes, path) {
        expect_format_error(&e, "fuzz.idx");
    }
}

/// PNG and JPEG decoding under the default limits: a decoded image has the requested size; an
/// error is an image error naming the file.
pub fn image(bytes: &[u8]) {
    let name = Path::new("fuzz.img");
    match data::decode_image(bytes, name, IMAGE_SIDE, &LoadOptions::default()) {
        Ok(rgb) => assert_eq!(rgb.len(), IMAGE_SIDE * IMAGE_SIDE * 3),
        Err(e @ Error::Image { .. }) => assert!(e.to_string().starts_with("fuzz.img: "), "{e}"),
        Err(other) => panic!("not an image error: {other:?}"),
    }
}

/// A model file: it loads, or fails with a format error naming the file.
pub fn model(bytes: &[u8]) {
    match Model::load_bytes(bytes, Path::new("fuzz.safetensors"), cpu().clone()) {
        Ok(model) => assert!(model.num_labels() >= 1),
        Err(e) => expect_format_error(&e, "fuzz.safetensors"),
    }
}

fn expect_format_error(e: &Error, name: &str) {
    match e {
        Error::Format { .. } => assert!(e.to_string().starts_with(&format!("{name}: ")), "{e}"),
        other => panic!("not a format error: {other:?}"),
    }
}

/// One CPU backend for every run.
fn cpu() -> &'static BackendHandle {
    static CPU: OnceLock<BackendHandle> = OnceLock::new();
    CPU.get_or_init(|| backend::open(DeviceChoice::Cpu).expect("the CPU backend always opens"))
}
