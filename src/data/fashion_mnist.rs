//! Fashion-MNIST: IDX parsing, import into the challenge layout, and the embedded subset.
//!
//! Fashion-MNIST (Zalando Research) has 70,000 grey 28x28 images of clothing in 10 classes:
//! 60,000 for training and 10,000 for testing, stored as IDX files (optionally gzipped). On
//! Debian the `dataset-fashion-mnist` package installs them under [`DEFAULT_SOURCE_DIR`].

use std::io::Read;
use std::path::{Path, PathBuf};

use rayon::prelude::*;

use super::{encode_png, write_labels_csv, Dataset};
use crate::error::{Error, Result};

/// The class names in label order (0..=9), from the dataset's documentation, made header
/// friendly: lower case, words joined by `_`.
pub const CLASS_NAMES: [&str; 10] = [
    "t_shirt_top",
    "trouser",
    "pullover",
    "dress",
    "coat",
    "sandal",
    "shirt",
    "sneaker",
    "bag",
    "ankle_boot",
];

/// Where Debian's `dataset-fashion-mnist` package puts the IDX files.
pub const DEFAULT_SOURCE_DIR: &str = "/usr/share/datasets/fashion-mnist";

/// Side of a Fashion-MNIST image.
pub const IMAGE_SIDE: usize = 28;

/// Source file names of the two splits (images, labels), as published.
const TRAIN_FILES: (&str, &str) = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte");
const TEST_FILES: (&str, &str) = ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte");

/// Threads writing image files during [`import`]: the work is bound by `fsync` latency.
const WRITE_THREADS: usize = 16;

const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];

/// Parses an IDX image file (magic `0x00000803`: unsigned bytes, 3 dimensions), gzipped or raw.
///
/// Returns `(count, rows, cols, pixels)` with `pixels` row-major `[count, rows, cols]`.
/// `path` only names the file in errors.
///
/// # Errors
/// [`Error::Format`] naming `path` for a wrong magic number, a truncated header, a corrupt
/// gzip stream, or a payload whose length differs from what the header promises.
pub fn read_idx_images(bytes: &[u8], path: &Path) -> Result<(usize, usize, usize, Vec<u8>)> {
    let (dims, payload) = read_idx(bytes, path, 3)?;
    Ok((dims[0], dims[1], dims[2], payload))
}

/// Parses an IDX label file (magic `0x00000801`: unsigned bytes, 1 dimension), gzipped or raw.
///
/// # Errors
/// As for [`read_idx_images`].
pub fn read_idx_labels(bytes: &[u8], path: &Path) -> Result<Vec<u8>> {
    read_idx(bytes, path, 1).map(|(_, payload)| payload)
}

/// Parses an IDX file of unsigned bytes with `rank` dimensions: the dimensions and payload.
fn read_idx(bytes: &[u8], path: &Path, rank: u8) -> Result<(Vec<usize>, Vec<u8>)> {
    let format_error = |detail: String| Error::Format {
        path: path.to_owned(),
        detail,
    };
    let gzipped = bytes.starts_with(&GZIP_MAGIC);
    let mut reader: Box<dyn Read + '_> = if gzipped {
        Box::new(flate2::read::MultiGzDecoder::new(bytes))
    } else {
        Box::new(bytes)
    };
    let read_failed = |e: std::io::Error| {
        if gzipped {
            format_error(format!("corrupt or truncated gzip stream: {e}"))
        } else {
            format_error(format!("cannot read: {e}"))
        }
    };

    // Header: two zero bytes, a type code (0x08 = unsigned byte), the rank, then the dimensions
    // as big-endian u32.
    let header_len = 4 + 4 * usize::from(rank);
    let mut header = Vec::with_capacity(header_len);
    (&mut reader)
        .take(header_len as u64)
        .read_to_end(&mut header)
        .map_err(read_failed)?;
    if header.len() < header_len {
        return Err(format_error(format!(
            "truncated IDX header: {} of {header_len} bytes",
            header.len()
        )));
    }
    let expected = [0, 0, 0x08, rank];
    if header[..4] != expected {
        return Err(format_error(format!(
            "not an IDX file of unsigned bytes with {rank} dimension(s): magic {:02x?}, \
             expected {expected:02x?}",
            &header[..4]
        )));
    }
    let dims: Vec<usize> = header[4..]
        .chunks_exact(4)
        .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize)
        .collect();
    let promised = dims.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d));
    let promised = promised.ok_or_else(|| format_error(format!("dimensions {dims:?} overflow")))?;

    // Read at most one byte past the promise: enough to detect a lie without trusting the
    // header (or a gzip bomb) with the allocation size. The first reservation is bounded by
    // what the file could hold (IDX gzips about 2:1; Vec growth covers the rest), so a lying
    // header costs no more memory than the data it comes with.
    let could_hold = match gzipped {
        true => bytes.len().saturating_mul(16),
        false => bytes.len(),
    };
    let mut payload = Vec::with_capacity(promised.min(could_hold).min(64 << 20));
    reader
        .take((promised as u64).saturating_add(1))
        .read_to_end(&mut payload)
        .map_err(read_failed)?;
    if payload.len() != promised {
        let found = if payload.len() > promised {
            "more".to_string()
        } else {
            payload.len().to_string()
        };
        return Err(format_error(format!(
            "header promises dimensions {dims:?} = {promised} bytes of data, but the file \
             holds {found}"
        )));
    }
    Ok((dims, payload))
}

/// One split (images and labels) read from IDX files.
struct Split {
    count: usize,
    rows: usize,
    cols: usize,
    pixels: Vec<u8>,
    labels: Vec<u8>,
}

impl Split {
    fn image(&self, index: usize) -> &[u8] {
        let n = self.rows * self.cols;
        &self.pixels[index * n..(index + 1) * n]
    }
}

/// Reads the image and label IDX files of one split from `dir`, preferring the `.gz` names.
fn read_split(dir: &Path, (images_name, labels_name): (&str, &str)) -> Result<Split> {
    let (images_path, images_bytes) = read_source(dir, images_name)?;
    let (labels_path, labels_bytes) = read_source(dir, labels_name)?;
    let (images, labels) = rayon::join(
        || read_idx_images(&images_bytes, &images_path),
        || read_idx_labels(&labels_bytes, &labels_path),
    );
    let (count, rows, cols, pixels) = images?;
    let labels = labels?;
    if labels.len() != count {
        return Err(Error::Format {
            path: labels_path,
            detail: format!(
                "{} labels for {count} images in {}",
                labels.len(),
                images_path.display()
            ),
        });
    }
    if let Some(position) = labels
        .iter()
        .position(|&l| usize::from(l) >= CLASS_NAMES.len())
    {
        return Err(Error::Format {
            path: labels_path,
            detail: format!(
                "label {} at item {position} is not a class 0..=9",
                labels[position]
            ),
        });
    }
    if count == 0 || rows == 0 || cols == 0 {
        return Err(Error::Format {
            path: images_path,
            detail: format!("no images to import ({count} of {rows}x{cols})"),
        });
    }
    Ok(Split {
        count,
        rows,
        cols,
        pixels,
        labels,
    })
}

/// The bytes of `dir/name.gz`, or of `dir/name` when only the uncompressed file exists.
fn read_source(dir: &Path, name: &str) -> Result<(PathBuf, Vec<u8>)> {
    let gz = dir.join(format!("{name}.gz"));
    let path = if gz.exists() { gz } else { dir.join(name) };
    let bytes = std::fs::read(&path).map_err(|e| Error::io(&path, e))?;
    Ok((path, bytes))
}

/// Options for [`import`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ImportOptions {
    /// Number of training items to write (all when `None`). Without mosaics these are the first
    /// items of the split; with mosaics, the number of mosaics.
    pub limit_train: Option<usize>,
    /// Number of test items to write (all when `None`), as for `limit_train`.
    pub limit_test: Option<usize>,
    /// Seed for drawing mosaic tiles; unused without mosaics.
    pub seed: u64,
    /// `Some(k)`: each item is a `k x k` mosaic of images drawn at random (with replacement)
    /// from the split, labelled with the set of classes present, which makes the task
    /// multi-label. `k` must be in `1..=16`.
    pub mosaic: Option<usize>,
}

/// What [`import`] wrote.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImportSummary {
    /// The training folder (`out/train`).
    pub train_dir: PathBuf,
    /// The test folder (`out/test`).
    pub test_dir: PathBuf,
    /// Items written to the training folder.
    pub train_items: usize,
    /// Items written to the test folder.
    pub test_items: usize,
}

/// Converts the Fashion-MNIST IDX files in `src_dir` into two challenge-layout folders,
/// `out_dir/train` and `out_dir/test`, each with `images/NNNNN.png` (grey) and `labels.csv`
/// (one 0/1 column per class of [`CLASS_NAMES`]).
///
/// Without mosaics, item `NNNNN` is source image `NNNNN` of its split. With
/// [`ImportOptions::mosaic`], `NNNNN` numbers the mosaics. PNG encoding and writing run in
/// parallel; each file is written atomically. Files left in the output folders by an earlier,
/// larger import are not removed (loading reports them as unlisted).
///
/// # Errors
/// [`Error::Io`] for missing or unwritable files, [`Error::Format`] naming the IDX file that is
/// truncated, corrupt or inconsistent, [`Error::InvalidArgument`] for a zero limit or a mosaic
/// size outside `1..=16`.
pub fn import(src_dir: &Path, out_dir: &Path, opts: &ImportOptions) -> Result<ImportSummary> {
    if opts.limit_train == Some(0) || opts.limit_test == Some(0) {
        return Err(Error::InvalidArgument(
            "import: a split limit of 0 writes nothing".into(),
        ));
    }
    if let Some(k) = opts.mosaic.filter(|k| !(1..=16).contains(k)) {
        return Err(Error::InvalidArgument(format!(
            "import: mosaic size {k} not in 1..=16"
        )));
    }
    let started = std::time::Instant::now();

    let train_dir = out_dir.join("train");
    let test_dir = out_dir.join("test");
    let train = read_split(src_dir, TRAIN_FILES)?;
    let train_items = write_split(&train, &train_dir, opts.limit_train, opts, 0)?;
    drop(train);
    let test = read_split(src_dir, TEST_FILES)?;
    let test_items = write_split(&test, &test_dir, opts.limit_test, opts, 1)?;

    log::info!(
        "imported Fashion-MNIST from {} into {}: {train_items} train, {test_items} test items \
         in {:.1} s",
        src_dir.display(),
        out_dir.display(),
        started.elapsed().as_secs_f64()
    );
    Ok(ImportSummary {
        train_dir,
        test_dir,
        train_items,
        test_items,
    })
}

/// Writes one split as a challenge-layout folder; returns the number of items.
fn write_split(
    split: &Split,
    dir: &Path,
    limit: Option<usize>,
    opts: &ImportOptions,
    split_salt: u64,
) -> Result<usize> {
    let images_dir = dir.join("images");
    std::fs::create_dir_all(&images_dir).map_err(|e| Error::io(&images_dir, e))?;
    let classes = CLASS_NAMES.len();

    // Each item is a list of source images laid out k x k (k = 1 without mosaics).
    let (k, sources): (usize, Vec<Vec<usize>>) = match opts.mosaic {
        None => (
            1,
            (0..limit.unwrap_or(split.count).min(split.count))
                .map(|i| vec![i])
                .collect(),
        ),
        Some(k) => {
            let mut rng =
                SplitMix64::new(opts.seed ^ split_salt.wrapping_mul(0x9E37_79B9_7F4A_7C15));
            let count = limit.unwrap_or(split.count);
            let draws = (0..count)
                .map(|_| (0..k * k).map(|_| rng.below(split.count)).collect())
                .collect();
            (k, draws)
        }
    };
    let names: Vec<String> = (0..sources.len())
        .map(|i| match opts.mosaic {
            None => format!("{:05}.png", sources[i][0]),
            Some(_) => format!("{i:05}.png"),
        })
        .collect();

    // Labels: the set of classes present in each item.
    let mut labels = vec![0u8; sources.len() * classes];
    for (row, item) in labels.chunks_exact_mut(classes).zip(&sources) {
        for &source in item {
            row[usize::from(split.labels[source])] = 1;
        }
    }

    // Each small file waits on its own fsync, so the time goes to waiting on the disk, not to
    // encoding: a pool wider than the core count keeps more writes in flight.
    let (width, height) = ((k * split.cols) as u32, (k * split.rows) as u32);
    let write_all = || {
        sources
            .par_iter()
            .zip(names.par_iter())
            .try_for_each(|(item, name)| {
                let path = images_dir.join(name);
                let pixels = tile(split, item, k);
                let png = encode_png(&path, &pixels, width, height, image::ExtendedColorType::L8)?;
                crate::io::write_atomic(&path, &png)
            })
    };
    match rayon::ThreadPoolBuilder::new()
        .num_threads(WRITE_THREADS)
        .build()
    {
        Ok(pool) => pool.install(write_all)?,
        Err(e) => {
            log::debug!("no dedicated writer pool ({e}); writing on the global pool");
            write_all()?;
        }
    }
    write_labels_csv(&dir.join("labels.csv"), &CLASS_NAMES, &names, &labels)?;
    Ok(sources.len())
}

/// Lays out `k * k` source images row by row into one grey image of `k*rows x k*cols`.
fn tile(split: &Split, item: &[usize], k: usize) -> Vec<u8> {
    if k == 1 {
        return split.image(item[0]).to_vec();
    }
    let (rows, cols) = (split.rows, split.cols);
    let width = k * cols;
    let mut out = vec![0u8; k * rows * width];
    for (position, &source) in item.iter().enumerate() {
        let (tile_row, tile_col) = (position / k, position % k);
        for (r, line) in split.image(source).chunks_exact(cols).enumerate() {
            let start = (tile_row * rows + r) * width + tile_col * cols;
            out[start..start + cols].copy_from_slice(line);
        }
    }
    out
}

/// A tiny, fixed pseudo-random generator (SplitMix64), so that seeded draws stay the same
/// across versions of the `rand` crate: the embedded subset must be reproducible forever.
struct SplitMix64(u64);

impl SplitMix64 {
    fn new(seed: u64) -> Self {
        SplitMix64(seed)
    }

    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A draw in `0..n` (multiply-shift; the bias is below 2^-40 for the sizes used here).
    fn below(&mut self, n: usize) -> usize {
        ((u128::from(self.next_u64()) * n as u128) >> 64) as usize
    }
}

// ---------------------------------------------------------------------------------------------
// The embedded subset.

/// Seed of the embedded subset's draw. Changing it changes the shipped data.
pub const EMBEDDED_SEED: u64 = 20_240_601;
/// Embedded training images per class (4,000 in all).
pub const EMBEDDED_TRAIN_PER_CLASS: usize = 400;
/// Embedded test images per class (1,000 in all).
pub const EMBEDDED_TEST_PER_CLASS: usize = 100;

/// Folder of the embedded files, relative to the crate root (for the generator).
const EMBEDDED_DIR: &str = "src/data/fashion_mnist_subset";

static EMBEDDED_TRAIN_IMAGES: &[u8] =
    include_bytes!("fashion_mnist_subset/train-images-idx3-ubyte.gz");
static EMBEDDED_TRAIN_LABELS: &[u8] =
    include_bytes!("fashion_mnist_subset/train-labels-idx1-ubyte.gz");
static EMBEDDED_TRAIN_INDICES: &str = include_str!("fashion_mnist_subset/train-indices.txt");
static EMBEDDED_TEST_IMAGES: &[u8] =
    include_bytes!("fashion_mnist_subset/t10k-images-idx3-ubyte.gz");
static EMBEDDED_TEST_LABELS: &[u8] =
    include_bytes!("fashion_mnist_subset/t10k-labels-idx1-ubyte.gz");
static EMBEDDED_TEST_INDICES: &str = include_str!("fashion_mnist_subset/t10k-indices.txt");

/// The two splits of the embedded subset.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EmbeddedSplits {
    /// 4,000 training images, 400 per class.
    pub train: Dataset,
    /// 1,000 test images, 100 per class.
    pub test: Dataset,
}

/// The default dataset shipped inside the crate: a seeded, class-balanced subset of
/// Fashion-MNIST at its native 28x28 (grey replicated to RGB), labelled one-hot with
/// [`CLASS_NAMES`]. Files are named after their source index, like `train-00042.png` and
/// `test-00042.png`. Resize with [`Dataset::resized`].
///
/// The subset was drawn by [`build_embedded_subset`]; `src/data/fashion_mnist_subset/` holds
/// the gzipped IDX files and the source indices of every image.
///
/// # Errors
/// [`Error::Format`] if the embedded files do not parse (a broken build).
pub fn embedded() -> Result<EmbeddedSplits> {
    let train = embedded_split(
        "train",
        EMBEDDED_TRAIN_IMAGES,
        EMBEDDED_TRAIN_LABELS,
        EMBEDDED_TRAIN_INDICES,
        TRAIN_FILES,
    )?;
    let test = embedded_split(
        "test",
        EMBEDDED_TEST_IMAGES,
        EMBEDDED_TEST_LABELS,
        EMBEDDED_TEST_INDICES,
        TEST_FILES,
    )?;
    Ok(EmbeddedSplits { train, test })
}

/// Builds one embedded split as a dataset.
fn embedded_split(
    prefix: &str,
    images: &[u8],
    labels: &[u8],
    indices: &str,
    (images_name, labels_name): (&str, &str),
) -> Result<Dataset> {
    let folder = Path::new(EMBEDDED_DIR);
    let images_path = folder.join(format!("{images_name}.gz"));
    let labels_path = folder.join(format!("{labels_name}.gz"));
    let (count, rows, cols, grey) = read_idx_images(images, &images_path)?;
    let labels = read_idx_labels(labels, &labels_path)?;
    let indices_path = folder.join(indices_file_name(images_name));
    let indices = parse_indices(indices, &indices_path)?;
    if labels.len() != count || indices.len() != count {
        return Err(Error::Format {
            path: folder.to_owned(),
            detail: format!(
                "{prefix}: {count} images, {} labels, {} indices",
                labels.len(),
                indices.len()
            ),
        });
    }
    if rows != IMAGE_SIDE || cols != IMAGE_SIDE {
        return Err(Error::Format {
            path: images_path,
            detail: format!("images are {rows}x{cols}, expected 28x28"),
        });
    }

    let mut one_hot = vec![0u8; count * CLASS_NAMES.len()];
    for (row, &label) in one_hot.chunks_exact_mut(CLASS_NAMES.len()).zip(&labels) {
        let slot = row
            .get_mut(usize::from(label))
            .ok_or_else(|| Error::Format {
                path: labels_path.clone(),
                detail: format!("label {label} is not a class 0..=9"),
            })?;
        *slot = 1;
    }
    Ok(Dataset {
        label_names: CLASS_NAMES.iter().map(|s| s.to_string()).collect(),
        files: indices
            .iter()
            .map(|i| format!("{prefix}-{i:05}.png"))
            .collect(),
        labels: Some(one_hot),
        size: IMAGE_SIDE,
        pixels: grey.iter().flat_map(|&v| [v, v, v]).collect(),
    })
}

/// `train-images-idx3-ubyte` -> `train-indices.txt`.
fn indices_file_name(images_name: &str) -> String {
    let split = images_name.split('-').next().unwrap_or(images_name);
    format!("{split}-indices.txt")
}

/// Source indices, one per line; `#` starts a comment line.
fn parse_indices(text: &str, path: &Path) -> Result<Vec<usize>> {
    text.lines()
        .enumerate()
        .map(|(i, line)| (i, line.trim()))
        .filter(|(_, line)| !line.is_empty() && !line.starts_with('#'))
        .map(|(i, line)| {
            line.parse().map_err(|_| Error::Format {
                path: path.to_owned(),
                detail: format!("line {}: '{line}' is not an index", i + 1),
            })
        })
        .collect()
}

/// Regenerates the embedded subset from the Fashion-MNIST IDX files in `src_dir` into `out_dir`
/// (the crate uses `src/data/fashion_mnist_subset/`).
///
/// For each split and class, the source indices of that class are shuffled with
/// a SplitMix64-based Fisher-Yates from [`EMBEDDED_SEED`] (salted per split), the first
/// [`EMBEDDED_TRAIN_PER_CLASS`] (or [`EMBEDDED_TEST_PER_CLASS`]) are kept, and the union is
/// sorted by source index. Writes gzipped IDX files (maximum compression, no time stamp, so
/// the output is deterministic) and `<split>-indices.txt` with the source indices.
///
/// Run it through the ignored test: `cargo test --lib regenerate_embedded_subset -- --ignored`.
pub fn build_embedded_subset(src_dir: &Path, out_dir: &Path) -> Result<()> {
    std::fs::create_dir_all(out_dir).map_err(|e| Error::io(out_dir, e))?;
    for (salt, files, per_class) in [
        (0u64, TRAIN_FILES, EMBEDDED_TRAIN_PER_CLASS),
        (1, TEST_FILES, EMBEDDED_TEST_PER_CLASS),
    ] {
        let split = read_split(src_dir, files)?;
        let chosen = balanced_draw(&split.labels, per_class, EMBEDDED_SEED.wrapping_add(salt))
            .ok_or_else(|| Error::Format {
                path: src_dir.join(files.1),
                detail: format!("a class has fewer than {per_class} images"),
            })?;

        let mut pixels = Vec::with_capacity(chosen.len() * split.rows * split.cols);
        for &i in &chosen {
            pixels.extend_from_slice(split.image(i));
        }
        let labels: Vec<u8> = chosen.iter().map(|&i| split.labels[i]).collect();
        let count = chosen.len() as u32;
        let images_header = idx_header(3, &[count, split.rows as u32, split.cols as u32]);
        let labels_header = idx_header(1, &[count]);
        write_gzip(
            &out_dir.join(format!("{}.gz", files.0)),
            &[&images_header, &pixels],
        )?;
        write_gzip(
            &out_dir.join(format!("{}.gz", files.1)),
            &[&labels_header, &labels],
        )?;

        let mut text = format!(
            "# Source indices (0-based) in Fashion-MNIST {}, in stored order: {per_class} per \
             class, seed {}.\n# Regenerate: cargo test --lib regenerate_embedded_subset -- \
             --ignored\n",
            files.0,
            EMBEDDED_SEED.wrapping_add(salt)
        );
        for i in &chosen {
            text.push_str(&format!("{i}\n"));
        }
        crate::io::write_atomic(&out_dir.join(indices_file_name(files.0)), text.as_bytes())?;
    }
    Ok(())
}

/// `per_class` indices of each class 0..=9 drawn without replacement, sorted; `None` if a class
/// is too small.
fn balanced_draw(labels: &[u8], per_class: usize, seed: u64) -> Option<Vec<usize>> {
    let mut rng = SplitMix64::new(seed);
    let mut chosen = Vec::with_capacity(per_class * CLASS_NAMES.len());
    for class in 0..CLASS_NAMES.len() {
        let mut members: Vec<usize> = (0..labels.len())
            .filter(|&i| usize::from(labels[i]) == class)
            .collect();
        if members.len() < per_class {
            return None;
        }
        // Partial Fisher-Yates: the first `per_class` slots end up a uniform sample.
        for slot in 0..per_class {
            let pick = slot + rng.below(members.len() - slot);
            members.swap(slot, pick);
        }
        chosen.extend_from_slice(&members[..per_class]);
    }
    chosen.sort_unstable();
    Some(chosen)
}

/// An IDX header for unsigned bytes with the given dimensions.
fn idx_header(rank: u8, dims: &[u32]) -> Vec<u8> {
    let mut header = vec![0, 0, 0x08, rank];
    for d in dims {
        header.extend_from_slice(&d.to_be_bytes());
    }
    header
}

/// Gzips the concatenated parts (best compression, no time stamp) and writes them atomically.
fn write_gzip(path: &Path, parts: &[&[u8]]) -> Result<()> {
    use std::io::Write;
    crate::io::write_atomic_with(path, |w| {
        let mut encoder = flate2::write::GzEncoder::new(w, flate2::Compression::best());
        for part in parts {
            encoder.write_all(part).map_err(|e| Error::io(path, e))?;
        }
        encoder.finish().map_err(|e| Error::io(path, e))?;
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source_dir() -> Option<PathBuf> {
        let dir = PathBuf::from(DEFAULT_SOURCE_DIR);
        if dir.join("train-images-idx3-ubyte.gz").exists() {
            Some(dir)
        } else {
            eprintln!("skipping: Fashion-MNIST not installed under {DEFAULT_SOURCE_DIR}");
            None
        }
    }

    fn idx_images(count: u32, rows: u32, cols: u32, payload: &[u8]) -> Vec<u8> {
        let mut bytes = idx_header(3, &[count, rows, cols]);
        bytes.extend_from_slice(payload);
        bytes
    }

    fn gzip(bytes: &[u8]) -> Vec<u8> {
        use std::io::Write;
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        encoder.write_all(bytes).unwrap();
        encoder.finish().unwrap()
    }

    fn format_error(result: Result<impl std::fmt::Debug>) -> String {
        match result {
            Err(e @ Error::Format { .. }) => e.to_string(),
            other => panic!("expected a format error, got {other:?}"),
        }
    }

    #[test]
    fn idx_raw_and_gzip_parse() {
        let payload: Vec<u8> = (0..2 * 3 * 4).map(|v| v as u8).collect();
        let raw = idx_images(2, 3, 4, &payload);
        let path = Path::new("x.idx");
        assert_eq!(
            read_idx_images(&raw, path).unwrap(),
            (2, 3, 4, payload.clone())
        );
        assert_eq!(
            read_idx_images(&gzip(&raw), path).unwrap(),
            (2, 3, 4, payload)
        );
        let mut labels = idx_header(1, &[3]);
        labels.extend_from_slice(&[7, 0, 9]);
        assert_eq!(read_idx_labels(&gzip(&labels), path).unwrap(), [7, 0, 9]);
    }

    #[test]
    fn idx_lies_and_truncation_are_format_errors() {
        let path = Path::new("bad.idx");
        let payload = vec![1u8; 2 * 3 * 4];
        let full = idx_images(2, 3, 4, &payload);

        let short = format_error(read_idx_images(&full[..full.len() - 1], path));
        assert!(
            short.starts_with("bad.idx: ") && short.contains("holds 23"),
            "{short}"
        );
        let long = format_error(read_idx_images(&idx_images(2, 3, 4, &[0; 25]), path));
        assert!(long.contains("holds more"), "{long}");
        let lying = format_error(read_idx_images(&idx_images(60_000, 28, 28, &payload), path));
        assert!(lying.contains("47040000 bytes"), "{lying}");
        let header = format_error(read_idx_images(&full[..10], path));
        assert!(header.contains("truncated IDX header"), "{header}");
        let magic = format_error(read_idx_labels(&full, path));
        assert!(magic.contains("magic"), "{magic}");
        assert!(format_error(read_idx_images(&[], path)).contains("truncated"));

        // A gzip stream cut short, and one with a corrupted body.
        let zipped = gzip(&full);
        let cut = format_error(read_idx_images(&zipped[..zipped.len() / 2], path));
        assert!(cut.starts_with("bad.idx: "), "{cut}");
        let mut corrupt = zipped.clone();
        for b in &mut corrupt[12..20] {
            *b ^= 0x5a;
        }
        assert!(format_error(read_idx_images(&corrupt, path)).starts_with("bad.idx: "));
    }

    #[test]
    fn empty_split_is_refused() {
        let dir = std::env::temp_dir().join(format!("labelwise-empty-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        for (images, labels) in [TRAIN_FILES, TEST_FILES] {
            std::fs::write(dir.join(images), idx_images(0, 28, 28, &[])).unwrap();
            std::fs::write(dir.join(labels), idx_header(1, &[0])).unwrap();
        }
        let opts = ImportOptions {
            mosaic: Some(2),
            ..Default::default()
        };
        let message = format_error(import(&dir, &dir.join("out"), &opts));
        assert!(message.contains("no images to import"), "{message}");
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn idx_overflowing_dimensions_do_not_allocate() {
        let bytes = idx_images(u32::MAX, u32::MAX, u32::MAX, &[0; 16]);
        let message = format_error(read_idx_images(&bytes, Path::new("huge.idx")));
        assert!(
            message.contains("overflow") || message.contains("promises"),
            "{message}"
        );
    }

    #[test]
    fn balanced_draw_is_deterministic_and_balanced() {
        let labels: Vec<u8> = (0..1000).map(|i| (i * 7 % 10) as u8).collect();
        let a = balanced_draw(&labels, 20, 5).unwrap();
        assert_eq!(a, balanced_draw(&labels, 20, 5).unwrap());
        assert_ne!(a, balanced_draw(&labels, 20, 6).unwrap());
        assert_eq!(a.len(), 200);
        assert!(a.windows(2).all(|w| w[0] < w[1]));
        for class in 0..10u8 {
            assert_eq!(a.iter().filter(|&&i| labels[i] == class).count(), 20);
        }
        assert!(balanced_draw(&labels, 101, 5).is_none());
    }

    #[test]
    fn mosaic_tiles_are_laid_out_row_by_row() {
        let split = Split {
            count: 4,
            rows: 2,
            cols: 3,
            pixels: (0..4).flat_map(|i| [i as u8 * 10; 6]).collect(),
            labels: vec![0, 1, 2, 3],
        };
        let out = tile(&split, &[0, 1, 2, 3], 2);
        assert_eq!(out.len(), 4 * 6);
        assert_eq!(&out[..6], &[0, 0, 0, 10, 10, 10]);
        assert_eq!(&out[18..], &[20, 20, 20, 30, 30, 30]);
    }

    #[test]
    fn embedded_subset_matches_its_source() {
        let splits = embedded().unwrap();
        for (dataset, count, per_class) in [
            (&splits.train, 4000, EMBEDDED_TRAIN_PER_CLASS),
            (&splits.test, 1000, EMBEDDED_TEST_PER_CLASS),
        ] {
            assert_eq!(dataset.len(), count);
            assert_eq!(dataset.size, 28);
            assert_eq!(dataset.label_names, CLASS_NAMES);
            assert!(!dataset.is_multilabel());
            let labels = dataset.labels.as_ref().unwrap();
            for class in 0..10 {
                let members = labels
                    .chunks_exact(10)
                    .filter(|row| row[class] == 1)
                    .count();
                assert_eq!(members, per_class, "class {class}");
            }
            assert_eq!(dataset.pixels.len(), count * 28 * 28 * 3);
        }
        assert_eq!(splits.train.files[0][..6], *"train-");
        assert_eq!(splits.test.files[0][..5], *"test-");

        // Provenance: every embedded image equals the source image at its recorded index.
        let Some(src) = source_dir() else { return };
        for (dataset, files, prefix) in [
            (&splits.train, TRAIN_FILES, "train-"),
            (&splits.test, TEST_FILES, "test-"),
        ] {
            let split = read_split(&src, files).unwrap();
            for (i, name) in dataset.files.iter().enumerate() {
                let index: usize = name
                    .strip_prefix(prefix)
                    .unwrap()
                    .strip_suffix(".png")
                    .unwrap()
                    .parse()
                    .unwrap();
                let grey: Vec<u8> = dataset.image(i).iter().step_by(3).copied().collect();
                assert_eq!(grey, split.image(index), "{name}");
                assert_eq!(
                    dataset.label_row(i).unwrap()[usize::from(split.labels[index])],
                    1
                );
            }
        }
    }

    #[test]
    fn embedded_subset_regenerates_identically() {
        let Some(src) = source_dir() else { return };
        let out = std::env::temp_dir().join(format!("labelwise-embed-{}", std::process::id()));
        build_embedded_subset(&src, &out).unwrap();
        let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join(EMBEDDED_DIR);
        for name in ["train-indices.txt", "t10k-indices.txt"] {
            let fresh = std::fs::read(out.join(name)).unwrap();
            assert_eq!(fresh, std::fs::read(shipped.join(name)).unwrap(), "{name}");
        }
        for name in [TRAIN_FILES.0, TRAIN_FILES.1, TEST_FILES.0, TEST_FILES.1] {
            let name = format!("{name}.gz");
            // Compare contents, not gzip bytes, which may differ between deflate backends.
            let fresh = read_idx(&std::fs::read(out.join(&name)).unwrap(), &out, 1)
                .or_else(|_| read_idx(&std::fs::read(out.join(&name)).unwrap(), &out, 3));
            let kept = read_idx(&std::fs::read(shipped.join(&name)).unwrap(), &shipped, 1)
                .or_else(|_| read_idx(&std::fs::read(shipped.join(&name)).unwrap(), &shipped, 3));
            assert_eq!(fresh.unwrap(), kept.unwrap(), "{name}");
        }
        std::fs::remove_dir_all(&out).ok();
    }

    /// Rewrites the shipped subset in `src/data/fashion_mnist_subset/` from the installed
    /// Fashion-MNIST. Run by hand: `cargo test --lib regenerate_embedded_subset -- --ignored`.
    #[test]
    #[ignore = "rewrites files in the source tree"]
    fn regenerate_embedded_subset() {
        let src = source_dir().expect("Fashion-MNIST must be installed to regenerate");
        let out = Path::new(env!("CARGO_MANIFEST_DIR")).join(EMBEDDED_DIR);
        build_embedded_subset(&src, &out).unwrap();
    }
}
