//! Data layer tests on fixtures written at test time: folders, images, Fashion-MNIST import.

use std::collections::{HashMap, HashSet};
use std::io::{Cursor, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use image::{DynamicImage, ImageBuffer, ImageEncoder, ImageFormat};
use labelwise::data::fashion_mnist::{self, ImportOptions, CLASS_NAMES};
use labelwise::data::{BadImagePolicy, Dataset, LoadOptions, Normalize};
use labelwise::Error;

/// A fresh, empty folder under the system temp folder, unique to this process and test.
fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("labelwise-data-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("images")).unwrap();
    dir
}

fn encode(image: &DynamicImage, format: ImageFormat) -> Vec<u8> {
    let mut bytes = Cursor::new(Vec::new());
    image.write_to(&mut bytes, format).unwrap();
    bytes.into_inner()
}

fn put(dir: &Path, name: &str, bytes: &[u8]) {
    std::fs::write(dir.join("images").join(name), bytes).unwrap();
}

fn put_csv(dir: &Path, text: &str) {
    std::fs::write(dir.join("labels.csv"), text).unwrap();
}

/// A PNG chunk: length, type, data, CRC of type and data.
fn png_chunk(kind: &[u8; 4], data: &[u8]) -> Vec<u8> {
    let mut crc = flate2::Crc::new();
    crc.update(kind);
    crc.update(data);
    let mut chunk = (data.len() as u32).to_be_bytes().to_vec();
    chunk.extend_from_slice(kind);
    chunk.extend_from_slice(data);
    chunk.extend_from_slice(&crc.sum().to_be_bytes());
    chunk
}

/// A PNG assembled by hand, for what the `image` encoder cannot write (palettes, lies).
fn raw_png(
    width: u32,
    height: u32,
    bit_depth: u8,
    colour: u8,
    extra: &[Vec<u8>],
    rows: &[u8],
) -> Vec<u8> {
    let mut ihdr = width.to_be_bytes().to_vec();
    ihdr.extend_from_slice(&height.to_be_bytes());
    ihdr.extend_from_slice(&[bit_depth, colour, 0, 0, 0]);
    let mut zlib = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::fast());
    zlib.write_all(rows).unwrap();
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    png.extend(png_chunk(b"IHDR", &ihdr));
    for chunk in extra {
        png.extend_from_slice(chunk);
    }
    png.extend(png_chunk(b"IDAT", &zlib.finish().unwrap()));
    png.extend(png_chunk(b"IEND", &[]));
    png
}

fn pixel(dataset: &Dataset, item: usize, x: usize, y: usize) -> [u8; 3] {
    let at = (y * dataset.size + x) * 3;
    let image = dataset.image(item);
    [image[at], image[at + 1], image[at + 2]]
}

fn close(a: [u8; 3], b: [u8; 3], tolerance: u8) -> bool {
    a.iter().zip(&b).all(|(x, y)| x.abs_diff(*y) <= tolerance)
}

#[test]
fn every_colour_type_and_bit_depth_loads() {
    let dir = scratch("colours");
    let side = 4u32;
    let flat = |f: &dyn Fn(u32, u32) -> DynamicImage| f(side, side);
    let grey = flat(&|w, h| ImageBuffer::from_pixel(w, h, image::Luma([77u8])).into());
    let grey_alpha = flat(&|w, h| ImageBuffer::from_pixel(w, h, image::LumaA([90u8, 0])).into());
    let rgb = flat(&|w, h| ImageBuffer::from_pixel(w, h, image::Rgb([10u8, 20, 30])).into());
    let rgba = flat(&|w, h| ImageBuffer::from_pixel(w, h, image::Rgba([40u8, 50, 60, 0])).into());
    let grey16 = flat(&|w, h| ImageBuffer::from_pixel(w, h, image::Luma([257u16 * 200])).into());
    let rgb16 =
        flat(&|w, h| ImageBuffer::from_pixel(w, h, image::Rgb([257u16, 257 * 128, 65535])).into());
    let rgba16 = flat(&|w, h| {
        ImageBuffer::from_pixel(w, h, image::Rgba([257u16 * 3, 257 * 4, 257 * 5, 257])).into()
    });
    // Palette: 2 entries, rows of 4 indices 0,1,0,1, each row led by filter byte 0.
    let palette_rows: Vec<u8> = (0..4).flat_map(|_| [0u8, 0, 1, 0, 1]).collect();
    let plte = png_chunk(b"PLTE", &[255, 0, 0, 0, 0, 255]);
    let palette = raw_png(4, 4, 8, 3, &[plte], &palette_rows);

    put(&dir, "grey.png", &encode(&grey, ImageFormat::Png));
    put(
        &dir,
        "grey_alpha.png",
        &encode(&grey_alpha, ImageFormat::Png),
    );
    put(&dir, "rgb.png", &encode(&rgb, ImageFormat::Png));
    put(&dir, "rgba.png", &encode(&rgba, ImageFormat::Png));
    put(&dir, "grey16.png", &encode(&grey16, ImageFormat::Png));
    put(&dir, "rgb16.png", &encode(&rgb16, ImageFormat::Png));
    put(&dir, "rgba16.png", &encode(&rgba16, ImageFormat::Png));
    put(&dir, "palette.png", &palette);
    put(&dir, "rgb.jpg", &encode(&rgb, ImageFormat::Jpeg));
    put(&dir, "grey.JPEG", &encode(&grey, ImageFormat::Jpeg));
    // The content decides the format, not the extension.
    put(&dir, "jpeg_named.png", &encode(&rgb, ImageFormat::Jpeg));
    put(&dir, "notes.txt", b"not listed: not an image extension");

    let dataset = Dataset::load_folder(&dir, 4, &LoadOptions::default()).unwrap();
    assert!(dataset.labels.is_none());
    assert_eq!(dataset.num_labels(), 0);
    assert!(!dataset.is_multilabel());
    let expected_order = [
        "grey.JPEG",
        "grey.png",
        "grey16.png",
        "grey_alpha.png",
        "jpeg_named.png",
        "palette.png",
        "rgb.jpg",
        "rgb.png",
        "rgb16.png",
        "rgba.png",
        "rgba16.png",
    ];
    assert_eq!(dataset.files, expected_order);
    let at = |name: &str| dataset.files.iter().position(|f| f == name).unwrap();

    assert_eq!(pixel(&dataset, at("grey.png"), 1, 1), [77, 77, 77]);
    assert_eq!(pixel(&dataset, at("grey_alpha.png"), 1, 1), [90, 90, 90]);
    assert_eq!(pixel(&dataset, at("rgb.png"), 3, 3), [10, 20, 30]);
    assert_eq!(pixel(&dataset, at("rgba.png"), 0, 0), [40, 50, 60]);
    assert_eq!(pixel(&dataset, at("grey16.png"), 2, 2), [200, 200, 200]);
    assert_eq!(pixel(&dataset, at("rgb16.png"), 2, 2), [1, 128, 255]);
    assert_eq!(pixel(&dataset, at("rgba16.png"), 2, 2), [3, 4, 5]);
    assert_eq!(pixel(&dataset, at("palette.png"), 0, 0), [255, 0, 0]);
    assert_eq!(pixel(&dataset, at("palette.png"), 1, 3), [0, 0, 255]);
    assert!(close(pixel(&dataset, at("rgb.jpg"), 1, 1), [10, 20, 30], 6));
    assert!(close(
        pixel(&dataset, at("jpeg_named.png"), 1, 1),
        [10, 20, 30],
        6
    ));
    assert!(close(
        pixel(&dataset, at("grey.JPEG"), 1, 1),
        [77, 77, 77],
        3
    ));
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn images_are_resized_and_stretched() {
    let dir = scratch("resize");
    // 8x4, left half red, right half blue: stretched to 2x2, the columns keep their colours.
    let wide = ImageBuffer::from_fn(8, 4, |x, _| {
        if x < 4 {
            image::Rgb([255u8, 0, 0])
        } else {
            image::Rgb([0, 0, 255])
        }
    });
    put(&dir, "wide.png", &encode(&wide.into(), ImageFormat::Png));
    let big = ImageBuffer::from_pixel(64, 48, image::Rgb([9u8, 99, 199]));
    put(&dir, "big.png", &encode(&big.into(), ImageFormat::Png));

    let dataset = Dataset::load_folder(&dir, 2, &LoadOptions::default()).unwrap();
    assert_eq!(dataset.files, ["big.png", "wide.png"]);
    assert_eq!(dataset.pixels.len(), 2 * 2 * 2 * 3);
    assert_eq!(pixel(&dataset, 0, 1, 1), [9, 99, 199]);
    assert!(
        close(pixel(&dataset, 1, 0, 0), [255, 0, 0], 40),
        "{:?}",
        pixel(&dataset, 1, 0, 0)
    );
    assert!(
        close(pixel(&dataset, 1, 1, 1), [0, 0, 255], 40),
        "{:?}",
        pixel(&dataset, 1, 1, 1)
    );

    // Upscaling, and Dataset::resized agrees on flat images.
    let up = Dataset::load_folder(&dir, 16, &LoadOptions::default()).unwrap();
    assert_eq!(pixel(&up, 0, 15, 15), [9, 99, 199]);
    let down = up.resized(3).unwrap();
    assert_eq!(down.size, 3);
    assert_eq!(pixel(&down, 0, 2, 2), [9, 99, 199]);
    assert!(matches!(up.resized(0), Err(Error::InvalidArgument(_))));
    assert!(Dataset::load_folder(&dir, 0, &LoadOptions::default()).is_err());
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn exif_orientation_is_applied() {
    let dir = scratch("exif");
    // 8x4: left half black, right half white. EXIF orientation 6 (rotate 90 degrees clockwise)
    // turns the left half into the top half.
    let wide: DynamicImage =
        ImageBuffer::from_fn(8, 4, |x, _| image::Luma([if x < 4 { 0u8 } else { 255 }])).into();
    let exif: Vec<u8> = [
        &b"MM\x00\x2a\x00\x00\x00\x08"[..], // TIFF header, big-endian, first IFD at 8
        &[0x00, 0x01],                      // one entry
        &[0x01, 0x12, 0x00, 0x03, 0, 0, 0, 1, 0x00, 0x06, 0, 0], // Orientation (SHORT) = 6
        &[0, 0, 0, 0],                      // no next IFD
    ]
    .concat();
    let mut jpeg = Vec::new();
    let mut encoder = image::codecs::jpeg::JpegEncoder::new_with_quality(&mut jpeg, 95);
    encoder.set_exif_metadata(exif).unwrap();
    encoder
        .write_image(wide.as_bytes(), 8, 4, image::ExtendedColorType::L8)
        .unwrap();
    put(&dir, "rotated.jpg", &jpeg);

    let dataset = Dataset::load_folder(&dir, 2, &LoadOptions::default()).unwrap();
    let (top, bottom) = (pixel(&dataset, 0, 0, 0)[0], pixel(&dataset, 0, 0, 1)[0]);
    assert!(top < 60 && bottom > 195, "top {top}, bottom {bottom}");
    std::fs::remove_dir_all(&dir).ok();
}

/// A labelled folder with two good images and the given bad ones.
fn folder_with_bad_images(name: &str) -> PathBuf {
    let dir = scratch(name);
    let good = encode(
        &ImageBuffer::from_pixel(3, 3, image::Rgb([1u8, 2, 3])).into(),
        ImageFormat::Png,
    );
    put(&dir, "good1.png", &good);
    put(&dir, "good2.png", &good);
    put(&dir, "empty.png", b"");
    put(&dir, "truncated.png", &good[..good.len() / 2]);
    let mut corrupt = good.clone();
    let idat = corrupt.windows(4).position(|w| w == b"IDAT").unwrap();
    for b in &mut corrupt[idat + 4..idat + 12] {
        *b ^= 0xa5;
    }
    put(&dir, "corrupt.png", &corrupt);
    put(&dir, "text.jpg", b"hello, I am not a picture");
    put_csv(
        &dir,
        "file,a,b\nempty.png,1,0\ngood1.png,1,0\ntruncated.png,0,1\ncorrupt.png,1,1\n\
         text.jpg,0,0\ngood2.png,0,1\n",
    );
    dir
}

#[test]
fn bad_images_fail_naming_the_file() {
    let dir = folder_with_bad_images("bad-fail");
    let err = Dataset::load_folder(&dir, 3, &LoadOptions::default()).unwrap_err();
    let message = err.to_string();
    assert!(matches!(err, Error::Image { .. }), "{message}");
    assert!(
        message.contains("empty.png") && message.contains("empty file"),
        "{message}"
    );

    // Each kind of bad file on its own.
    for (name, needle) in [
        ("truncated.png", "truncated.png"),
        ("corrupt.png", "corrupt.png"),
        ("text.jpg", "not a PNG or JPEG"),
    ] {
        put_csv(&dir, &format!("file,a\n{name},1\n"));
        let err = Dataset::load_folder(&dir, 3, &LoadOptions::default()).unwrap_err();
        let message = err.to_string();
        assert!(matches!(err, Error::Image { .. }), "{message}");
        assert!(
            message.contains(name) && message.contains(needle),
            "{message}"
        );
    }
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn bad_images_can_be_skipped_and_counted() {
    let dir = folder_with_bad_images("bad-skip");
    let opts = LoadOptions {
        on_bad_image: BadImagePolicy::Skip,
        ..LoadOptions::default()
    };
    let (dataset, report) = Dataset::load_folder_with_report(&dir, 3, &opts).unwrap();
    assert_eq!(dataset.files, ["good1.png", "good2.png"]);
    assert_eq!(dataset.labels.as_deref(), Some(&[1, 0, 0, 1][..]));
    assert_eq!(dataset.pixels, [1, 2, 3].repeat(18));
    let skipped: Vec<&str> = report.skipped.iter().map(|(f, _)| f.as_str()).collect();
    assert_eq!(
        skipped,
        ["empty.png", "truncated.png", "corrupt.png", "text.jpg"]
    );
    assert_eq!(report.unlisted, 0);
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn decompression_bomb_is_refused_from_the_header() {
    let dir = scratch("bomb");
    // Claims 100000 x 100000 RGB (30 GB decoded); holds one row of data.
    let bomb = raw_png(100_000, 100_000, 8, 2, &[], &[0u8; 301]);
    put(&dir, "bomb.png", &bomb);
    let started = Instant::now();
    let err = Dataset::load_folder(&dir, 8, &LoadOptions::default()).unwrap_err();
    let message = err.to_string();
    assert!(matches!(err, Error::Image { .. }), "{message}");
    assert!(
        message.contains("bomb.png") && message.contains("decompression-bomb"),
        "{message}"
    );
    assert!(
        started.elapsed().as_secs_f64() < 2.0,
        "took {:?}",
        started.elapsed()
    );

    // A small limit refuses an ordinary image the same way.
    let dir2 = scratch("bomb-small-limit");
    let image = encode(
        &ImageBuffer::from_pixel(20, 20, image::Luma([5u8])).into(),
        ImageFormat::Png,
    );
    put(&dir2, "twenty.png", &image);
    let opts = LoadOptions {
        max_pixels: 399,
        ..LoadOptions::default()
    };
    let message = Dataset::load_folder(&dir2, 8, &opts)
        .unwrap_err()
        .to_string();
    assert!(
        message.contains("twenty.png") && message.contains("400 pixels"),
        "{message}"
    );
    let opts = LoadOptions {
        max_pixels: 400,
        ..LoadOptions::default()
    };
    assert!(Dataset::load_folder(&dir2, 8, &opts).is_ok());
    std::fs::remove_dir_all(&dir).ok();
    std::fs::remove_dir_all(&dir2).ok();
}

#[test]
fn labels_csv_problems_name_the_file_and_line() {
    let dir = scratch("csv");
    let png = encode(
        &ImageBuffer::from_pixel(2, 2, image::Luma([1u8])).into(),
        ImageFormat::Png,
    );
    put(&dir, "a.png", &png);
    put(&dir, "b.png", &png);
    put(&dir, "extra1.png", &png);
    put(&dir, "extra2.jpg", &png);
    let csv = dir.join("labels.csv");
    let load = || Dataset::load_folder(&dir, 2, &LoadOptions::default());
    let expect = |line: u64, needle: &str| {
        let err = load().unwrap_err();
        let message = err.to_string();
        assert!(
            matches!(err, Error::Csv { line: l, .. } if l == line),
            "{message}"
        );
        assert!(
            message.starts_with(&format!("{}:{line}: ", csv.display())),
            "{message}"
        );
        assert!(message.contains(needle), "{message}");
    };

    put_csv(&dir, "file,x,y\na.png,1,0\n\nmissing.png,0,1\n");
    expect(4, "image 'missing.png' not found");
    put_csv(&dir, "file,x,y\na.png,1,0\nb.png,3,1\n");
    expect(3, "expected 0 or 1, found '3'");
    put_csv(&dir, "file,x\n");
    expect(1, "header only");
    put_csv(&dir, "");
    expect(1, "empty file");

    // Images without a row are only counted.
    put_csv(
        &dir,
        "\u{feff}file,x,y\r\n a.png , 1, 1\r\n\"b.png\",0,1\r\n",
    );
    let (dataset, report) =
        Dataset::load_folder_with_report(&dir, 2, &LoadOptions::default()).unwrap();
    assert_eq!(report.unlisted, 2);
    assert_eq!(dataset.files, ["a.png", "b.png"]);
    assert_eq!(dataset.label_names, ["x", "y"]);
    assert!(dataset.is_multilabel());

    // No images/ folder at all.
    std::fs::remove_dir_all(dir.join("images")).unwrap();
    let message = load().unwrap_err().to_string();
    assert!(message.contains("images"), "{message}");
    std::fs::remove_dir_all(&dir).ok();
}

/// A 3-item labelled dataset built in memory.
fn small_dataset() -> Dataset {
    Dataset {
        label_names: vec!["cat".into(), "dog".into()],
        files: vec!["a.jpg".into(), "sub/b.png".into(), "c".into()],
        labels: Some(vec![1, 0, 0, 1, 1, 1]),
        size: 2,
        pixels: (0..36).map(|v| (v * 7) as u8).collect(),
    }
}

#[test]
fn subsets_labels_and_batches() {
    let dataset = small_dataset();
    assert_eq!(dataset.len(), 3);
    assert!(dataset.is_multilabel());
    let single = dataset.subset(&[0, 1]);
    assert!(!single.is_multilabel());

    let picked = dataset.subset(&[2, 0, 2]);
    assert_eq!(picked.files, ["c", "a.jpg", "c"]);
    assert_eq!(picked.labels.as_deref(), Some(&[1, 1, 1, 0, 1, 1][..]));
    assert_eq!(picked.image(1), dataset.image(0));
    assert_eq!(picked.image(2), dataset.image(2));

    assert_eq!(dataset.label_rows(&[1, 0]).unwrap(), [0.0, 1.0, 1.0, 0.0]);
    assert!(matches!(
        dataset.label_rows(&[3]),
        Err(Error::InvalidArgument(_))
    ));
    let unlabelled = Dataset {
        labels: None,
        ..dataset.clone()
    };
    assert!(unlabelled.label_rows(&[0]).is_err());

    let batch = dataset.batch_pixels(&[1], &Normalize::IMAGENET);
    assert_eq!(batch.len(), 12);
    for (i, value) in batch.iter().enumerate() {
        let byte = dataset.image(1)[i];
        let c = i % 3;
        let expected =
            (f32::from(byte) / 255.0 - Normalize::IMAGENET.mean[c]) / Normalize::IMAGENET.std[c];
        assert!(
            (value - expected).abs() < 1e-6,
            "{i}: {value} vs {expected}"
        );
    }
    let identity = Normalize {
        mean: [0.0; 3],
        std: [1.0; 3],
    };
    assert_eq!(dataset.batch_pixels(&[0], &identity)[1], 7.0 / 255.0);
}

#[test]
fn save_then_load_round_trips() {
    let dir = scratch("save");
    std::fs::remove_dir_all(dir.join("images")).unwrap();
    let dataset = small_dataset();
    dataset.save_folder(&dir).unwrap();
    let csv = std::fs::read_to_string(dir.join("labels.csv")).unwrap();
    assert_eq!(csv, "file,cat,dog\na.png,1,0\nsub/b.png,0,1\nc.png,1,1\n");
    let loaded = Dataset::load_folder(&dir, 2, &LoadOptions::default()).unwrap();
    assert_eq!(loaded.pixels, dataset.pixels);
    assert_eq!(loaded.labels, dataset.labels);
    assert_eq!(loaded.files, ["a.png", "sub/b.png", "c.png"]);

    // Saving again replaces the files; no temporary files are left behind.
    let subset = dataset.subset(&[2]);
    subset.save_folder(&dir).unwrap();
    assert_eq!(
        std::fs::read_to_string(dir.join("labels.csv")).unwrap(),
        "file,cat,dog\nc.png,1,1\n"
    );
    let leftovers = std::fs::read_dir(dir.join("images"))
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .contains(".tmp-")
        })
        .count();
    assert_eq!(leftovers, 0);

    // Two names that collide as PNG, and an unlabelled save over a labelled folder.
    let clash = Dataset {
        files: vec!["x.jpg".into(), "x.png".into(), "y".into()],
        ..dataset.clone()
    };
    assert!(matches!(
        clash.save_folder(&dir),
        Err(Error::InvalidArgument(_))
    ));
    let unlabelled = Dataset {
        labels: None,
        ..dataset.clone()
    };
    assert!(matches!(
        unlabelled.save_folder(&dir),
        Err(Error::InvalidArgument(_))
    ));
    let elsewhere = scratch("save-unlabelled");
    unlabelled.save_folder(&elsewhere).unwrap();
    let reloaded = Dataset::load_folder(&elsewhere, 2, &LoadOptions::default()).unwrap();
    assert_eq!(
        reloaded.files,
        ["a.png", "c.png"],
        "top-level images only when listing"
    );
    std::fs::remove_dir_all(&dir).ok();
    std::fs::remove_dir_all(&elsewhere).ok();
}

fn fashion_source() -> Option<PathBuf> {
    let dir = PathBuf::from(fashion_mnist::DEFAULT_SOURCE_DIR);
    if dir.join("train-images-idx3-ubyte.gz").exists() {
        Some(dir)
    } else {
        eprintln!("skipping: Fashion-MNIST is not installed");
        None
    }
}

/// The source split as (images [n, 28*28], labels).
fn source_split(src: &Path, prefix: &str) -> (Vec<Vec<u8>>, Vec<u8>) {
    let images_path = src.join(format!("{prefix}-images-idx3-ubyte.gz"));
    let labels_path = src.join(format!("{prefix}-labels-idx1-ubyte.gz"));
    let (n, rows, cols, pixels) =
        fashion_mnist::read_idx_images(&std::fs::read(&images_path).unwrap(), &images_path)
            .unwrap();
    let labels =
        fashion_mnist::read_idx_labels(&std::fs::read(&labels_path).unwrap(), &labels_path)
            .unwrap();
    assert_eq!((rows, cols, labels.len()), (28, 28, n));
    (
        pixels
            .chunks_exact(rows * cols)
            .map(<[u8]>::to_vec)
            .collect(),
        labels,
    )
}

#[test]
fn import_writes_the_challenge_layout() {
    let Some(src) = fashion_source() else { return };
    let out = std::env::temp_dir().join(format!("labelwise-import-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    let opts = ImportOptions {
        limit_train: Some(64),
        limit_test: Some(32),
        ..Default::default()
    };
    let summary = fashion_mnist::import(&src, &out, &opts).unwrap();
    assert_eq!((summary.train_items, summary.test_items), (64, 32));

    for (dir, prefix, count) in [
        (&summary.train_dir, "train", 64),
        (&summary.test_dir, "t10k", 32),
    ] {
        let (images, labels) = source_split(&src, prefix);
        let csv = std::fs::read_to_string(dir.join("labels.csv")).unwrap();
        let mut lines = csv.lines();
        assert_eq!(
            lines.next().unwrap(),
            format!("file,{}", CLASS_NAMES.join(","))
        );
        for (i, line) in lines.enumerate() {
            let mut row = ["0"; 10];
            row[usize::from(labels[i])] = "1";
            assert_eq!(line, format!("{i:05}.png,{}", row.join(",")));
            let png = image::open(dir.join("images").join(format!("{i:05}.png"))).unwrap();
            assert_eq!(png.color(), image::ColorType::L8);
            assert_eq!(png.as_bytes(), images[i], "{prefix} {i}");
        }
        let loaded = Dataset::load_folder(dir, 28, &LoadOptions::default()).unwrap();
        assert_eq!(loaded.len(), count);
        assert!(!loaded.is_multilabel());
        assert_eq!(
            loaded
                .image(5)
                .iter()
                .step_by(3)
                .copied()
                .collect::<Vec<_>>(),
            images[5]
        );
    }
    std::fs::remove_dir_all(&out).ok();
}

#[test]
fn import_mosaics_are_labelled_with_the_classes_present() {
    let Some(src) = fashion_source() else { return };
    let out = std::env::temp_dir().join(format!("labelwise-mosaic-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    let opts = ImportOptions {
        limit_train: Some(24),
        limit_test: Some(8),
        seed: 7,
        mosaic: Some(2),
    };
    let summary = fashion_mnist::import(&src, &out, &opts).unwrap();
    let (images, labels) = source_split(&src, "train");
    let mut classes_of: HashMap<&[u8], HashSet<usize>> = HashMap::new();
    for (image, &label) in images.iter().zip(&labels) {
        classes_of
            .entry(image.as_slice())
            .or_default()
            .insert(usize::from(label));
    }

    let dataset = Dataset::load_folder(&summary.train_dir, 56, &LoadOptions::default()).unwrap();
    assert_eq!(dataset.len(), 24);
    assert!(dataset.is_multilabel());
    for item in 0..dataset.len() {
        let grey: Vec<u8> = dataset.image(item).iter().step_by(3).copied().collect();
        let mut possible: HashSet<usize> = HashSet::new();
        for tile in 0..4 {
            let (ty, tx) = (tile / 2, tile % 2);
            let pixels: Vec<u8> = (0..28)
                .flat_map(|r| grey[(ty * 28 + r) * 56 + tx * 28..][..28].to_vec())
                .collect();
            let classes = classes_of
                .get(pixels.as_slice())
                .expect("every tile is a source image");
            let row = dataset.label_row(item).unwrap();
            assert!(
                classes.iter().any(|&c| row[c] == 1),
                "item {item} tile {tile}"
            );
            possible.extend(classes);
        }
        for (class, &bit) in dataset.label_row(item).unwrap().iter().enumerate() {
            assert!(
                bit == 0 || possible.contains(&class),
                "item {item} class {class}"
            );
        }
    }

    // The same seed gives the same mosaics.
    let again = std::env::temp_dir().join(format!("labelwise-mosaic2-{}", std::process::id()));
    fashion_mnist::import(&src, &again, &opts).unwrap();
    for split in ["train", "test"] {
        let a = std::fs::read(out.join(split).join("labels.csv")).unwrap();
        assert_eq!(
            a,
            std::fs::read(again.join(split).join("labels.csv")).unwrap()
        );
    }
    std::fs::remove_dir_all(&out).ok();
    std::fs::remove_dir_all(&again).ok();
}

#[test]
fn import_refuses_truncated_or_lying_idx_files() {
    let Some(src) = fashion_source() else { return };
    let dir = scratch("idx-bad");
    for name in [
        "t10k-images-idx3-ubyte.gz",
        "t10k-labels-idx1-ubyte.gz",
        "train-labels-idx1-ubyte.gz",
    ] {
        std::fs::copy(src.join(name), dir.join(name)).unwrap();
    }
    let out = dir.join("out");
    let opts = ImportOptions {
        limit_train: Some(2),
        limit_test: Some(2),
        ..Default::default()
    };

    // Truncated gzip.
    let train = std::fs::read(src.join("train-images-idx3-ubyte.gz")).unwrap();
    let target = dir.join("train-images-idx3-ubyte.gz");
    std::fs::write(&target, &train[..100_000]).unwrap();
    let err = fashion_mnist::import(&dir, &out, &opts).unwrap_err();
    assert!(
        matches!(err, Error::Format { ref path, .. } if path == &target),
        "{err}"
    );

    // Raw IDX whose header promises 60000 images but holds 3; the raw name is used when no
    // .gz exists.
    std::fs::remove_file(&target).unwrap();
    let raw_target = dir.join("train-images-idx3-ubyte");
    let mut lying = vec![0, 0, 8, 3];
    for d in [60_000u32, 28, 28] {
        lying.extend_from_slice(&d.to_be_bytes());
    }
    lying.extend(vec![0u8; 3 * 784]);
    std::fs::write(&raw_target, &lying).unwrap();
    let err = fashion_mnist::import(&dir, &out, &opts).unwrap_err();
    let message = err.to_string();
    assert!(
        matches!(err, Error::Format { ref path, .. } if path == &raw_target),
        "{message}"
    );
    assert!(
        message.contains("47040000") && message.contains("2352"),
        "{message}"
    );

    // Consistent images but a label count that disagrees.
    lying[4..8].copy_from_slice(&3u32.to_be_bytes());
    std::fs::write(&raw_target, &lying).unwrap();
    let message = fashion_mnist::import(&dir, &out, &opts)
        .unwrap_err()
        .to_string();
    assert!(
        message.contains("train-labels") && message.contains("60000 labels for 3"),
        "{message}"
    );
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn embedded_dataset_resizes() {
    let splits = fashion_mnist::embedded().unwrap();
    assert_eq!((splits.train.len(), splits.test.len()), (4000, 1000));
    assert!(splits
        .train
        .files
        .iter()
        .all(|f| f.starts_with("train-") && f.ends_with(".png")));
    let small = splits.test.subset(&[0, 1, 2]).resized(32).unwrap();
    assert_eq!(small.pixels.len(), 3 * 32 * 32 * 3);
    assert_eq!(small.labels, splits.test.subset(&[0, 1, 2]).labels);
}

/// Times the import of all 70,000 images: `cargo test --test data import_full -- --ignored
/// --nocapture`. Writes under the system temp folder and removes the result.
#[test]
#[ignore = "slow: writes 70,000 files"]
fn import_full_set_timing() {
    let Some(src) = fashion_source() else { return };
    let out = std::env::temp_dir().join(format!("labelwise-import-full-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    let started = Instant::now();
    let summary = fashion_mnist::import(&src, &out, &ImportOptions::default()).unwrap();
    let seconds = started.elapsed().as_secs_f64();
    assert_eq!((summary.train_items, summary.test_items), (60_000, 10_000));
    eprintln!("imported 70,000 images in {seconds:.1} s");
    std::fs::remove_dir_all(&out).ok();
}

/// A baseline JPEG written by hand, because the `image` encoder cannot write CMYK: `width` x 8
/// pixels, one flat 8x8 block per entry of `blocks`, each entry the four stored component
/// values. With `adobe` set, an Adobe APP14 segment says the components are CMYK (transform 0),
/// which is how Photoshop writes them: inverted, 0 meaning full ink.
///
/// Every block is flat, so its only non-zero DCT coefficient is DC = 8 * (value - 128); the
/// quantisation table is all ones, and one Huffman table (the standard luminance DC table, and
/// an AC table holding only end-of-block) serves every component.
fn flat_four_component_jpeg(blocks: &[[u8; 4]], adobe: bool) -> Vec<u8> {
    fn segment(out: &mut Vec<u8>, marker: u8, body: &[u8]) {
        out.extend_from_slice(&[0xFF, marker]);
        out.extend_from_slice(&((body.len() + 2) as u16).to_be_bytes());
        out.extend_from_slice(body);
    }
    /// Appends bits MSB first, stuffing a 0 after every 0xFF byte as JPEG requires.
    struct Bits {
        out: Vec<u8>,
        acc: u32,
        len: u32,
    }
    impl Bits {
        fn put(&mut self, value: u32, len: u32) {
            for i in (0..len).rev() {
                self.acc = (self.acc << 1) | ((value >> i) & 1);
                self.len += 1;
                if self.len == 8 {
                    self.out.push(self.acc as u8);
                    if self.acc == 0xFF {
                        self.out.push(0);
                    }
                    (self.acc, self.len) = (0, 0);
                }
            }
        }
    }

    let dc_counts: [u8; 16] = [0, 1, 5, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0];
    // Canonical Huffman codes of the DC table: (code, length) per category 0..=11.
    let mut dc_codes = Vec::new();
    let mut code = 0u32;
    for (length, &count) in dc_counts.iter().enumerate() {
        for _ in 0..count {
            dc_codes.push((code, length as u32 + 1));
            code += 1;
        }
        code <<= 1;
    }

    let width = 8 * blocks.len() as u16;
    let mut jpeg = vec![0xFF, 0xD8];
    if adobe {
        // "Adobe", version 100, flags 0 and 0, transform 0 (no YCC transform: plain CMYK).
        segment(&mut jpeg, 0xEE, b"Adobe\x00\x64\x00\x00\x00\x00\x00");
    }
    let mut dqt = vec![0u8];
    dqt.extend_from_slice(&[1u8; 64]);
    segment(&mut jpeg, 0xDB, &dqt);
    let mut sof = vec![8];
    sof.extend_from_slice(&8u16.to_be_bytes());
    sof.extend_from_slice(&width.to_be_bytes());
    sof.push(4);
    for id in 1..=4u8 {
        sof.extend_from_slice(&[id, 0x11, 0]);
    }
    segment(&mut jpeg, 0xC0, &sof);
    let mut dht = vec![0x00];
    dht.extend_from_slice(&dc_counts);
    dht.extend(0u8..=11);
    dht.push(0x10); // AC table 0: one code of length 1, for end-of-block.
    dht.extend_from_slice(&[1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    dht.push(0x00);
    segment(&mut jpeg, 0xC4, &dht);
    segment(
        &mut jpeg,
        0xDA,
        &[4, 1, 0x00, 2, 0x00, 3, 0x00, 4, 0x00, 0, 63, 0],
    );

    // One MCU per block: the four components' blocks in order, DC coded as a difference.
    let mut bits = Bits {
        out: Vec::new(),
        acc: 0,
        len: 0,
    };
    let mut previous = [0i32; 4];
    for block in blocks {
        for (component, &value) in block.iter().enumerate() {
            let dc = 8 * (i32::from(value) - 128);
            let diff = dc - previous[component];
            previous[component] = dc;
            let category = 32 - diff.unsigned_abs().leading_zeros();
            let (code, length) = dc_codes[category as usize];
            bits.put(code, length);
            let magnitude = if diff < 0 { diff - 1 } else { diff };
            bits.put(magnitude as u32 & ((1 << category) - 1), category);
            bits.put(0, 1); // end of block
        }
    }
    if bits.len > 0 {
        bits.put(0x7F, 8 - bits.len); // pad the last byte with ones
    }
    jpeg.extend_from_slice(&bits.out);
    jpeg.extend_from_slice(&[0xFF, 0xD9]);
    jpeg
}

#[test]
fn cmyk_jpeg_is_converted_to_rgb() {
    let dir = scratch("cmyk");
    // Adobe's inverted CMYK: stored 255 is no ink. Left block: magenta + yellow ink (red),
    // right block: cyan ink only (cyan). K stored 255 is no black.
    let jpeg = flat_four_component_jpeg(&[[255, 0, 0, 255], [0, 255, 255, 255]], true);
    put(&dir, "cmyk.jpg", &jpeg);
    // Without the Adobe segment a four-component JPEG is taken as CMYK too.
    let plain = flat_four_component_jpeg(&[[255, 255, 0, 255], [128, 128, 128, 128]], false);
    put(&dir, "plain.jpg", &plain);

    let dataset = Dataset::load_folder(&dir, 16, &LoadOptions::default()).unwrap();
    assert_eq!(dataset.files, ["cmyk.jpg", "plain.jpg"]);
    let red = pixel(&dataset, 0, 2, 4);
    let cyan = pixel(&dataset, 0, 13, 4);
    assert!(close(red, [255, 0, 0], 3), "{red:?}");
    assert!(close(cyan, [0, 255, 255], 3), "{cyan:?}");
    // R = C * K / 255 per channel (stored values): yellow, then a dark grey of 128 * 128 / 255.
    assert!(close(pixel(&dataset, 1, 2, 4), [255, 255, 0], 3));
    assert!(close(pixel(&dataset, 1, 13, 4), [64, 64, 64], 3));

    // The same bytes cut short fail naming the file.
    put(&dir, "cmyk.jpg", &jpeg[..jpeg.len() / 2]);
    let message = Dataset::load_folder(&dir, 16, &LoadOptions::default())
        .unwrap_err()
        .to_string();
    assert!(message.contains("cmyk.jpg"), "{message}");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn huge_dimensions_in_png_and_jpeg_headers_are_refused_fast() {
    let dir = scratch("huge");
    // PNG: the format's largest side (2^31 - 1) in a one-pixel-high image, and the square
    // 100000 x 100000 of the bomb test with a 16-bit RGBA pixel format (80 GB decoded).
    put(
        &dir,
        "wide.png",
        &raw_png(i32::MAX as u32, 1, 8, 0, &[], &[0u8; 64]),
    );
    put(
        &dir,
        "deep.png",
        &raw_png(100_000, 100_000, 16, 6, &[], &[0u8; 64]),
    );
    // JPEG: a real 8x8 JPEG whose frame header is patched to claim 65535 x 65535 (JPEG's
    // largest), and one claiming 40000 x 1200 (48 Mpx, just over the default limit).
    let small = encode(
        &ImageBuffer::from_pixel(8, 8, image::Rgb([9u8, 9, 9])).into(),
        ImageFormat::Jpeg,
    );
    let patch = |height: u16, width: u16| {
        let mut jpeg = small.clone();
        let sof = jpeg
            .windows(2)
            .position(|w| w == [0xFF, 0xC0])
            .expect("a baseline frame header");
        jpeg[sof + 5..sof + 7].copy_from_slice(&height.to_be_bytes());
        jpeg[sof + 7..sof + 9].copy_from_slice(&width.to_be_bytes());
        jpeg
    };
    put(&dir, "square.jpg", &patch(65535, 65535));
    put(&dir, "over.jpg", &patch(1200, 40000));

    for name in ["wide.png", "deep.png", "square.jpg", "over.jpg"] {
        put_csv(&dir, &format!("file,a\n{name},1\n"));
        let started = Instant::now();
        let err = Dataset::load_folder(&dir, 8, &LoadOptions::default()).unwrap_err();
        let message = err.to_string();
        assert!(matches!(err, Error::Image { .. }), "{name}: {message}");
        assert!(
            message.contains(name) && message.contains("decompression-bomb guard"),
            "{message}"
        );
        assert!(
            started.elapsed().as_secs_f64() < 2.0,
            "{name} took {:?}",
            started.elapsed()
        );
    }
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn missing_image_fails_with_its_line_or_is_skipped() {
    let dir = scratch("missing-skip");
    let png = encode(
        &ImageBuffer::from_pixel(2, 2, image::Luma([7u8])).into(),
        ImageFormat::Png,
    );
    put(&dir, "a.png", &png);
    put(&dir, "c.png", &png);
    put(&dir, "unlisted.png", &png);
    put_csv(&dir, "file,x\na.png,1\ngone.png,0\nc.png,1\n");

    let err = Dataset::load_folder(&dir, 2, &LoadOptions::default()).unwrap_err();
    assert!(
        matches!(err, Error::Csv { line: 3, .. }) && err.to_string().contains("gone.png"),
        "{err}"
    );

    let skip = LoadOptions {
        on_bad_image: BadImagePolicy::Skip,
        ..LoadOptions::default()
    };
    let (dataset, report) = Dataset::load_folder_with_report(&dir, 2, &skip).unwrap();
    assert_eq!(dataset.files, ["a.png", "c.png"]);
    assert_eq!(dataset.labels.as_deref(), Some(&[1, 1][..]));
    assert_eq!(report.skipped.len(), 1);
    let (file, reason) = &report.skipped[0];
    assert_eq!(file, "gone.png");
    assert!(
        reason.contains("labels.csv:3") && reason.contains("not found"),
        "{reason}"
    );
    assert_eq!(report.unlisted, 1, "unlisted.png has no row");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn ignoring_labels_csv_lists_every_image() {
    use labelwise::data::LabelsCsv;
    let dir = scratch("ignore-labels");
    let png = encode(
        &ImageBuffer::from_pixel(2, 2, image::Luma([7u8])).into(),
        ImageFormat::Png,
    );
    for name in ["a.png", "b.png", "c.jpg"] {
        put(&dir, name, &png);
    }
    let ignore = LoadOptions {
        labels: LabelsCsv::Ignore,
        ..LoadOptions::default()
    };
    // A partial labels.csv (one row of three) and a broken one: neither limits nor fails.
    for csv in ["file,x\nb.png,1\n", "file,x\na.png,7\n\"never closed", ""] {
        put_csv(&dir, csv);
        let dataset = Dataset::load_folder(&dir, 2, &ignore).unwrap();
        assert_eq!(dataset.files, ["a.png", "b.png", "c.jpg"], "{csv:?}");
        assert!(dataset.labels.is_none() && dataset.label_names.is_empty());
    }
    // Read, the default, does fail on the broken file.
    assert!(Dataset::load_folder(&dir, 2, &LoadOptions::default()).is_err());
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn spaces_and_tabs_around_fields_are_trimmed_outside_quotes() {
    let dir = scratch("spaces");
    let png = encode(
        &ImageBuffer::from_pixel(2, 2, image::Luma([7u8])).into(),
        ImageFormat::Png,
    );
    put(&dir, "a b.png", &png);
    put(&dir, " lead.png", &png);
    put_csv(
        &dir,
        "file ,\tx , y\n  a b.png\t,\t1 , 0 \n\" lead.png\" , 0,1\n",
    );
    let dataset = Dataset::load_folder(&dir, 2, &LoadOptions::default()).unwrap();
    assert_eq!(dataset.label_names, ["x", "y"]);
    assert_eq!(dataset.files, ["a b.png", " lead.png"]);
    assert_eq!(dataset.labels.as_deref(), Some(&[1, 0, 0, 1][..]));
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn decoding_from_bytes_matches_loading_the_file() {
    let dir = scratch("bytes");
    let rgb = encode(
        &ImageBuffer::from_fn(5, 3, |x, y| image::Rgb([x as u8 * 40, y as u8 * 80, 7])).into(),
        ImageFormat::Png,
    );
    put(&dir, "x.png", &rgb);
    let dataset = Dataset::load_folder(&dir, 4, &LoadOptions::default()).unwrap();
    let decoded =
        labelwise::data::decode_image(&rgb, Path::new("x.png"), 4, &LoadOptions::default())
            .unwrap();
    assert_eq!(decoded, dataset.image(0));
    let err =
        labelwise::data::decode_image(b"GIF89a", Path::new("m.gif"), 4, &LoadOptions::default())
            .unwrap_err();
    assert!(err.to_string().starts_with("m.gif: "), "{err}");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn identical_images_are_found_across_datasets() {
    let a = small_dataset();
    let mut b = a.subset(&[2, 1]);
    b.files = vec!["copy-of-c".into(), "copy-of-b".into()];
    b.pixels[0] ^= 1; // the copy of c differs in one byte
    assert_eq!(labelwise::data::identical_images(&a, &b), [(1, 1)]);
    assert_eq!(
        labelwise::data::identical_images(&a, &a.subset(&[0, 0])),
        [(0, 0), (0, 1)]
    );
    let resized = a.resized(3).unwrap();
    assert!(labelwise::data::identical_images(&a, &resized).is_empty());
}
