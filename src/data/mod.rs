//! Image datasets in the challenge layout (`images/` + `labels.csv`): load, slice, batch, save.
//!
//! A task folder holds `images/` and, when labelled, `labels.csv`: the image file name
//! (relative to `images/`) then one 0/1 column per label, named in the header. The number and
//! names of labels come from that header. An unlabelled folder has no `labels.csv`; its items
//! are the PNG and JPEG files of `images/`, sorted by name.

mod decode;
pub mod fashion_mnist;
mod labels;

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use rayon::prelude::*;

use crate::error::{Error, Result};

pub use labels::{
    format_labels_csv, parse_labels_csv, read_labels_csv, write_labels_csv, LabelTable,
};

/// Images resized to one square size, with optional 0/1 labels.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Dataset {
    /// Label names, in column order; empty when unlabelled.
    pub label_names: Vec<String>,
    /// One per item: the image file name relative to `images/`.
    pub files: Vec<String>,
    /// `[len * num_labels]` row-major 0/1; `None` when unlabelled.
    pub labels: Option<Vec<u8>>,
    /// The side every image was resized to.
    pub size: usize,
    /// `[len, size, size, 3]` RGB; grey images are replicated to three channels.
    pub pixels: Vec<u8>,
}

/// Per-channel normalisation applied by [`Dataset::batch_pixels`]: `(u8 / 255 - mean) / std`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Normalize {
    /// Mean per RGB channel, on the 0..1 scale.
    pub mean: [f32; 3],
    /// Standard deviation per RGB channel, on the 0..1 scale.
    pub std: [f32; 3],
}

impl Normalize {
    /// The ImageNet statistics that pretrained ResNet weights expect.
    pub const IMAGENET: Normalize = Normalize {
        mean: [0.485, 0.456, 0.406],
        std: [0.229, 0.224, 0.225],
    };
}

/// What [`Dataset::load_folder`] does with an image it cannot use: a file that is empty,
/// truncated, corrupt, not a PNG or JPEG, over [`LoadOptions::max_pixels`], or listed in
/// `labels.csv` but absent from `images/`.
///
/// A malformed `labels.csv` is never skipped: a row it cannot parse has no trustworthy labels.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum BadImagePolicy {
    /// Fail the whole load with an error naming the first bad file ([`Error::Image`]), or the
    /// `labels.csv` line of a missing image ([`Error::Csv`]).
    #[default]
    Fail,
    /// Leave the item out (it is in no split, never scored and never bought), log one warning
    /// per file naming it and the reason, then one with the count, and list it in the
    /// [`LoadReport`].
    Skip,
}

/// Whether [`Dataset::load_folder`] reads the folder's `labels.csv`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LabelsCsv {
    /// Read `labels.csv` when present: the items are its rows, with their labels.
    #[default]
    Read,
    /// Ignore any `labels.csv`: the items are the image files of `images/`, unlabelled. For
    /// commands that only need pixels (embedding, scoring a pool), so that a partial or broken
    /// `labels.csv` neither fails them nor limits them to the listed files.
    Ignore,
}

/// Options for [`Dataset::load_folder`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LoadOptions {
    /// What to do with an image that cannot be decoded, or a row whose image is missing.
    pub on_bad_image: BadImagePolicy,
    /// Whether `labels.csv` decides the items and their labels.
    pub labels: LabelsCsv,
    /// Largest accepted image, in pixels (width times height). Larger images are refused from
    /// their header, before decoding, as a guard against decompression bombs.
    pub max_pixels: u64,
}

impl LoadOptions {
    /// The default pixel limit: 40 megapixels (a 16-bit RGBA image of that size is 320 MB).
    pub const DEFAULT_MAX_PIXELS: u64 = 40_000_000;
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            on_bad_image: BadImagePolicy::Fail,
            labels: LabelsCsv::Read,
            max_pixels: Self::DEFAULT_MAX_PIXELS,
        }
    }
}

/// What [`Dataset::load_folder_with_report`] left out or noticed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LoadReport {
    /// Files skipped under [`BadImagePolicy::Skip`], with the reason.
    pub skipped: Vec<(String, String)>,
    /// Image files in `images/` that `labels.csv` does not list (they are not loaded).
    pub unlisted: usize,
}

/// How many unlisted file names a warning shows before "and N more".
const NAMES_IN_WARNING: usize = 3;

/// `names` joined by ", ", at most [`NAMES_IN_WARNING`] of them, then "and N more".
fn some_names<'a>(names: impl ExactSizeIterator<Item = &'a str>) -> String {
    let total = names.len();
    let shown: Vec<&str> = names.take(NAMES_IN_WARNING).collect();
    match total - shown.len() {
        0 => shown.join(", "),
        more => format!("{} and {more} more", shown.join(", ")),
    }
}

impl Dataset {
    /// Loads a folder in the challenge layout, resizing every image to `size x size`.
    ///
    /// With `labels.csv` the items are its rows, in order; without it (or with
    /// [`LabelsCsv::Ignore`]) they are the PNG and JPEG files (by extension, any case) directly
    /// in `images/`, sorted by name, and `labels` is `None`. Images are decoded in parallel;
    /// [`LoadOptions::on_bad_image`] decides whether a bad or missing image fails the load or
    /// is skipped, and [`LoadOptions::max_pixels`] refuses oversized ones.
    /// Grey is replicated to RGB, 16-bit is scaled to 8-bit, alpha is dropped (not composited),
    /// the EXIF orientation is applied, and non-square images are stretched to the square.
    ///
    /// # Limitations
    /// CMYK JPEGs are converted to RGB by the JPEG decoder with the naive formula (Adobe's
    /// inverted storage, no colour management); YCCK goes through the decoder's YCCK to RGB
    /// conversion. Only the top level of `images/` is listed, both for unlabelled folders and
    /// for the unlisted-image count.
    ///
    /// # Errors
    /// [`Error::Csv`] for a malformed `labels.csv`, or a row whose image is missing under
    /// [`BadImagePolicy::Fail`] (naming the line); [`Error::Image`] for a bad image under
    /// [`BadImagePolicy::Fail`]; [`Error::Io`] when the folder cannot be read. Images in
    /// `images/` without a row are not loaded and only log a warning (with a few of their
    /// names) and the count in [`LoadReport::unlisted`]: a folder often holds images not yet
    /// labelled.
    pub fn load_folder(dir: &Path, size: usize, opts: &LoadOptions) -> Result<Dataset> {
        Self::load_folder_with_report(dir, size, opts).map(|(dataset, _)| dataset)
    }

    /// [`Dataset::load_folder`], also returning what was skipped or left unlisted.
    pub fn load_folder_with_report(
        dir: &Path,
        size: usize,
        opts: &LoadOptions,
    ) -> Result<(Dataset, LoadReport)> {
        let image_bytes = image_len(size)?;
        let images_dir = dir.join("images");
        if !images_dir.is_dir() {
            let e = std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "missing; a task folder holds images/ and, when labelled, labels.csv",
            );
            return Err(Error::io(&images_dir, e));
        }
        let csv_path = dir.join("labels.csv");
        let mut report = LoadReport::default();

        // Decide the items: the rows of labels.csv, or the image files of images/. A row whose
        // image is missing is marked here and goes through the bad-image policy below.
        let mut missing: Vec<Option<Error>> = Vec::new();
        let read_csv = opts.labels == LabelsCsv::Read && csv_path.exists();
        let (label_names, files, labels) = if read_csv {
            let table = read_labels_csv(&csv_path)?;
            for (file, &line) in table.files.iter().zip(&table.lines) {
                if images_dir.join(file).is_file() {
                    missing.push(None);
                    continue;
                }
                let error = Error::Csv {
                    path: csv_path.clone(),
                    line,
                    detail: format!("image '{file}' not found in {}", images_dir.display()),
                };
                if opts.on_bad_image == BadImagePolicy::Fail {
                    return Err(error);
                }
                missing.push(Some(error));
            }
            let listed: HashSet<&str> = table.files.iter().map(String::as_str).collect();
            let present = list_image_files(&images_dir)?;
            let unlisted: Vec<&str> = present
                .iter()
                .map(String::as_str)
                .filter(|f| !listed.contains(f))
                .collect();
            report.unlisted = unlisted.len();
            if report.unlisted > 0 {
                log::warn!(
                    "{}: {} image(s) in images/ have no row in labels.csv and are not loaded: {}",
                    dir.display(),
                    report.unlisted,
                    some_names(unlisted.into_iter())
                );
            }
            (table.label_names, table.files, Some(table.labels))
        } else {
            let files = list_image_files(&images_dir)?;
            if files.is_empty() {
                log::warn!("{}: no PNG/JPEG files in images/", dir.display());
            }
            (Vec::new(), files, None)
        };
        missing.resize_with(files.len(), || None);

        // Decode in parallel, each image straight into its slot of the pixel buffer.
        let mut pixels = vec![0u8; files.len() * image_bytes];
        let outcomes: Vec<Result<()>> = pixels
            .par_chunks_mut(image_bytes.max(1))
            .zip(files.par_iter())
            .zip(missing.par_iter_mut())
            .map(|((slot, file), missing)| match missing.take() {
                Some(e) => Err(e),
                None => decode::load_image(&images_dir.join(file), size, opts.max_pixels, slot),
            })
            .collect();

        // Bad images: fail on the first in item order, or drop them and compact.
        let mut keep = Vec::with_capacity(files.len());
        for (index, outcome) in outcomes.into_iter().enumerate() {
            match (outcome, opts.on_bad_image) {
                (Ok(()), _) => keep.push(index),
                (Err(e), BadImagePolicy::Fail) => return Err(e),
                (Err(e), BadImagePolicy::Skip) => {
                    log::warn!("skipping image: {e}");
                    report.skipped.push((files[index].clone(), e.to_string()));
                }
            }
        }
        if !report.skipped.is_empty() {
            log::warn!(
                "{}: skipped {} bad image(s) of {}",
                dir.display(),
                report.skipped.len(),
                files.len()
            );
        }

        let mut dataset = Dataset {
            label_names,
            files,
            labels,
            size,
            pixels,
        };
        if keep.len() < dataset.len() {
            dataset.retain_items(&keep);
        }
        log::info!(
            "loaded {} image(s) from {} at {size}x{size}, {} label(s)",
            dataset.len(),
            dir.display(),
            dataset.num_labels()
        );
        Ok((dataset, report))
    }

    /// Number of items.
    pub fn len(&self) -> usize {
        self.files.len()
    }

    /// True when there are no items.
    pub fn is_empty(&self) -> bool {
        self.files.is_empty()
    }

    /// Number of labels (columns of `labels.csv` after the file name); 0 when unlabelled.
    pub fn num_labels(&self) -> usize {
        self.label_names.len()
    }

    /// True if any labelled item does not have exactly one label set; false when unlabelled.
    pub fn is_multilabel(&self) -> bool {
        match (&self.labels, self.num_labels()) {
            (Some(labels), n) if n > 0 => labels
                .chunks_exact(n)
                .any(|row| row.iter().filter(|&&v| v == 1).count() != 1),
            _ => false,
        }
    }

    /// The `size * size * 3` RGB bytes of item `index`.
    ///
    /// # Panics
    /// If `index >= self.len()`.
    pub fn image(&self, index: usize) -> &[u8] {
        let n = self.size * self.size * 3;
        &self.pixels[index * n..(index + 1) * n]
    }

    /// The 0/1 labels of item `index`, or `None` when unlabelled.
    ///
    /// # Panics
    /// If `index >= self.len()`.
    pub fn label_row(&self, index: usize) -> Option<&[u8]> {
        let n = self.num_labels();
        self.labels
            .as_ref()
            .map(|labels| &labels[index * n..(index + 1) * n])
    }

    /// A new dataset holding the given items, in the given order (repeats allowed).
    ///
    /// # Panics
    /// If an index is out of range; indices come from the program, not from user data.
    pub fn subset(&self, indices: &[usize]) -> Dataset {
        let mut pixels = Vec::with_capacity(indices.len() * self.size * self.size * 3);
        for &i in indices {
            pixels.extend_from_slice(self.image(i));
        }
        let labels = self.labels.as_ref().map(|_| {
            indices
                .iter()
                .flat_map(|&i| self.label_row(i).unwrap_or(&[]).iter().copied())
                .collect()
        });
        Dataset {
            label_names: self.label_names.clone(),
            files: indices.iter().map(|&i| self.files[i].clone()).collect(),
            labels,
            size: self.size,
            pixels,
        }
    }

    /// The labels of the given items as `[indices.len() * num_labels]` floats, 0.0 or 1.0.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] if the dataset is unlabelled or an index is out of range.
    pub fn label_rows(&self, indices: &[usize]) -> Result<Vec<f32>> {
        let labels = self.labels.as_ref().ok_or_else(|| {
            Error::InvalidArgument("label_rows: the dataset has no labels".into())
        })?;
        let n = self.num_labels();
        let mut out = Vec::with_capacity(indices.len() * n);
        for &i in indices {
            let row = labels
                .get(i * n..(i + 1) * n)
                .filter(|_| i < self.len())
                .ok_or_else(|| {
                    let len = self.len();
                    Error::InvalidArgument(format!(
                        "label_rows: index {i} out of range (len {len})"
                    ))
                })?;
            out.extend(row.iter().map(|&v| f32::from(v)));
        }
        Ok(out)
    }

    /// The given items as `[indices.len(), size, size, 3]` floats, normalised per channel.
    ///
    /// # Panics
    /// If an index is out of range; indices come from the program, not from user data.
    pub fn batch_pixels(&self, indices: &[usize], norm: &Normalize) -> Vec<f32> {
        // 3 x 256 table: one multiply-add per byte would cost more than the lookup.
        let mut table = [[0f32; 256]; 3];
        for (channel, row) in table.iter_mut().enumerate() {
            for (value, entry) in row.iter_mut().enumerate() {
                *entry = (value as f32 / 255.0 - norm.mean[channel]) / norm.std[channel];
            }
        }
        let mut out = Vec::with_capacity(indices.len() * self.size * self.size * 3);
        for &i in indices {
            for pixel in self.image(i).chunks_exact(3) {
                out.extend([
                    table[0][usize::from(pixel[0])],
                    table[1][usize::from(pixel[1])],
                    table[2][usize::from(pixel[2])],
                ]);
            }
        }
        out
    }

    /// A copy with every image resized to `size x size` (triangle filter), in parallel.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] if `size` is 0 or too large.
    pub fn resized(&self, size: usize) -> Result<Dataset> {
        let image_bytes = image_len(size)?;
        if size == self.size {
            return Ok(self.clone());
        }
        self.check_pixels("resized")?;
        let (from, to) = (self.size as u32, size as u32);
        let mut pixels = vec![0u8; self.len() * image_bytes];
        pixels
            .par_chunks_mut(image_bytes)
            .enumerate()
            .for_each(|(i, slot)| {
                let source = image::ImageBuffer::<image::Rgb<u8>, &[u8]>::from_raw(
                    from,
                    from,
                    self.image(i),
                );
                // Always Some: check_pixels guaranteed the buffer length.
                if let Some(source) = source {
                    let filter = image::imageops::FilterType::Triangle;
                    slot.copy_from_slice(image::imageops::resize(&source, to, to, filter).as_raw());
                }
            });
        Ok(Dataset {
            pixels,
            size,
            ..self.clone_without_pixels()
        })
    }

    /// Writes the dataset as a challenge-layout folder: `images/<name>.png` (RGB, the stored
    /// size) and, when labelled, `labels.csv`. Every file is written atomically.
    ///
    /// File names keep their stem and folders with the extension changed to `.png`. PNG
    /// encoding runs in parallel.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] if two items map to the same PNG name, if the pixel buffer
    /// does not match the item count, or if the dataset is unlabelled and `dir` already holds
    /// a `labels.csv` (it would describe other items); [`Error::Io`] or [`Error::Image`] when
    /// writing fails.
    pub fn save_folder(&self, dir: &Path) -> Result<()> {
        self.check_pixels("save_folder")?;
        let csv_path = dir.join("labels.csv");
        if self.labels.is_none() && csv_path.exists() {
            return Err(Error::InvalidArgument(format!(
                "save_folder: {} exists but the dataset is unlabelled",
                csv_path.display()
            )));
        }

        // Output names: the stored name with a .png extension, each used once.
        let mut names = Vec::with_capacity(self.len());
        let mut seen = HashSet::new();
        for file in &self.files {
            labels::check_file_name(file).map_err(Error::InvalidArgument)?;
            let name = Path::new(file)
                .with_extension("png")
                .to_string_lossy()
                .into_owned();
            if !seen.insert(name.clone()) {
                return Err(Error::InvalidArgument(format!(
                    "save_folder: two items would be saved as images/{name}"
                )));
            }
            names.push(name);
        }

        let images_dir = dir.join("images");
        let mut folders: HashSet<PathBuf> = HashSet::new();
        folders.insert(images_dir.clone());
        for name in &names {
            if let Some(parent) = images_dir.join(name).parent() {
                folders.insert(parent.to_owned());
            }
        }
        for folder in &folders {
            std::fs::create_dir_all(folder).map_err(|e| Error::io(folder, e))?;
        }

        let side = self.size as u32;
        names.par_iter().enumerate().try_for_each(|(i, name)| {
            let path = images_dir.join(name);
            let png = encode_png(
                &path,
                self.image(i),
                side,
                side,
                image::ExtendedColorType::Rgb8,
            )?;
            crate::io::write_atomic(&path, &png)
        })?;
        if let Some(labels) = &self.labels {
            write_labels_csv(&csv_path, &self.label_names, &names, labels)?;
        }
        log::info!("saved {} image(s) to {}", self.len(), dir.display());
        Ok(())
    }

    /// Checks that the public fields agree: pixel and label buffers match the item count.
    fn check_pixels(&self, op: &str) -> Result<()> {
        let image_bytes = image_len(self.size)?;
        if self.pixels.len() != self.len() * image_bytes {
            return Err(Error::InvalidArgument(format!(
                "{op}: {} pixel bytes for {} images of {}x{}",
                self.pixels.len(),
                self.len(),
                self.size,
                self.size
            )));
        }
        match &self.labels {
            Some(labels) if labels.len() != self.len() * self.num_labels() => {
                Err(Error::InvalidArgument(format!(
                    "{op}: {} label values for {} items x {} labels",
                    labels.len(),
                    self.len(),
                    self.num_labels()
                )))
            }
            _ => Ok(()),
        }
    }

    /// Keeps only the items at the increasing positions `keep`, compacting in place.
    fn retain_items(&mut self, keep: &[usize]) {
        let image_bytes = self.size * self.size * 3;
        let num_labels = self.num_labels();
        for (slot, &index) in keep.iter().enumerate() {
            // slot <= index, so each move reads an item that has not been overwritten yet.
            if slot != index {
                let from = index * image_bytes..(index + 1) * image_bytes;
                self.pixels.copy_within(from, slot * image_bytes);
                self.files.swap(slot, index);
                if let Some(labels) = self.labels.as_mut() {
                    let from = index * num_labels..(index + 1) * num_labels;
                    labels.copy_within(from, slot * num_labels);
                }
            }
        }
        self.pixels.truncate(keep.len() * image_bytes);
        self.files.truncate(keep.len());
        if let Some(labels) = self.labels.as_mut() {
            labels.truncate(keep.len() * num_labels);
        }
    }

    /// Every field but the pixels, which are left empty.
    fn clone_without_pixels(&self) -> Dataset {
        Dataset {
            label_names: self.label_names.clone(),
            files: self.files.clone(),
            labels: self.labels.clone(),
            size: self.size,
            pixels: Vec::new(),
        }
    }
}

/// Decodes one PNG or JPEG held in memory exactly as [`Dataset::load_folder`] decodes a file:
/// `size * size * 3` RGB bytes. `name` only names the image in errors. Only
/// [`LoadOptions::max_pixels`] of `opts` applies.
///
/// # Errors
/// [`Error::Image`] naming `name` for an empty, truncated, corrupt or oversized image or one
/// that is not PNG or JPEG; [`Error::InvalidArgument`] for a `size` of 0 or over 65535.
pub fn decode_image(bytes: &[u8], name: &Path, size: usize, opts: &LoadOptions) -> Result<Vec<u8>> {
    let mut out = vec![0u8; image_len(size)?];
    decode::decode_image(bytes, name, size, opts.max_pixels, &mut out)?;
    Ok(out)
}

/// Pairs `(i, j)` of items whose pixels are identical: item `i` of `a` and item `j` of `b`.
/// Finds the same picture under two names or in two folders (a pool that overlaps the
/// labelled set). Datasets of different sizes, or whose pixel buffers do not match their item
/// counts, have no pairs.
pub fn identical_images(a: &Dataset, b: &Dataset) -> Vec<(usize, usize)> {
    let consistent = |d: &Dataset| d.check_pixels("identical_images").is_ok();
    if a.size != b.size || !consistent(a) || !consistent(b) {
        return Vec::new();
    }
    // Iterating backwards leaves each picture mapped to its first index in `a`.
    let first_of: std::collections::HashMap<&[u8], usize> =
        (0..a.len()).rev().map(|i| (a.image(i), i)).collect();
    (0..b.len())
        .filter_map(|j| first_of.get(b.image(j)).map(|&i| (i, j)))
        .collect()
}

/// Bytes of one `size x size` RGB image, refusing 0 and sizes whose buffers cannot exist.
fn image_len(size: usize) -> Result<usize> {
    let fits_u32 = u32::try_from(size).is_ok();
    match size.checked_mul(size).and_then(|n| n.checked_mul(3)) {
        Some(n) if size > 0 && fits_u32 => Ok(n),
        _ => Err(Error::InvalidArgument(format!(
            "image size {size} must be in 1..=65535"
        ))),
    }
}

/// Encodes raw pixels as PNG in memory; `path` names the file in errors.
pub(crate) fn encode_png(
    path: &Path,
    pixels: &[u8],
    width: u32,
    height: u32,
    color: image::ExtendedColorType,
) -> Result<Vec<u8>> {
    use image::ImageEncoder;
    let mut png = Vec::with_capacity(pixels.len() / 2 + 64);
    image::codecs::png::PngEncoder::new(&mut png)
        .write_image(pixels, width, height, color)
        .map_err(|e| Error::Image {
            path: path.to_owned(),
            detail: format!("cannot encode PNG: {e}"),
        })?;
    Ok(png)
}

/// The PNG and JPEG files directly inside `dir` (by extension, any case), sorted by name.
/// Names that are not valid UTF-8 are skipped with a warning.
fn list_image_files(dir: &Path) -> Result<Vec<String>> {
    let mut names = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        let entry = entry.map_err(|e| Error::io(dir, e))?;
        let path = entry.path();
        let is_image = path
            .extension()
            .and_then(|x| x.to_str())
            .is_some_and(|x| matches!(x.to_ascii_lowercase().as_str(), "png" | "jpg" | "jpeg"));
        if !is_image || !path.is_file() {
            continue;
        }
        match entry.file_name().into_string() {
            Ok(name) => names.push(name),
            Err(name) => log::warn!("{}: skipping non-UTF-8 file name {name:?}", dir.display()),
        }
    }
    names.sort();
    Ok(names)
}
