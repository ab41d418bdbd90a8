//! Decoding one PNG or JPEG file into a square RGB `u8` image, with a decompression-bomb guard.

use std::io::Cursor;
use std::path::Path;

use image::imageops::FilterType;
use image::metadata::Orientation;
use image::{DynamicImage, ImageDecoder, ImageError, ImageFormat, ImageReader, Limits, RgbImage};

use crate::error::{Error, Result};

/// Reads `path` and decodes it into `out` (`size * size * 3` RGB bytes).
pub(crate) fn load_image(path: &Path, size: usize, max_pixels: u64, out: &mut [u8]) -> Result<()> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    decode_image(&bytes, path, size, max_pixels, out)
}

/// Decodes PNG or JPEG `bytes` into `out` (`size * size * 3` RGB bytes); `path` names the file
/// in errors.
///
/// The format is taken from the content, not the file name. Grey is replicated to three
/// channels, 16-bit samples are scaled to 8 bits, palettes are expanded, alpha is dropped (the
/// colour channels are kept as stored, not composited), the EXIF orientation is applied, and
/// the result is resized to `size x size` with a triangle (bilinear) filter, stretching
/// non-square images rather than cropping them. Images over `max_pixels` are refused from the
/// header, before any pixel buffer is allocated.
pub(crate) fn decode_image(
    bytes: &[u8],
    path: &Path,
    size: usize,
    max_pixels: u64,
    out: &mut [u8],
) -> Result<()> {
    let image_error = |detail: String| Error::Image {
        path: path.to_owned(),
        detail,
    };
    if bytes.is_empty() {
        return Err(image_error("empty file (0 bytes)".to_string()));
    }
    let side = u32::try_from(size).map_err(|_| image_error(format!("size {size} too large")))?;

    let mut reader = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| image_error(format!("cannot read: {e}")))?;
    match reader.format() {
        Some(ImageFormat::Png | ImageFormat::Jpeg) => {}
        Some(other) => {
            let detail = format!("{other:?} images are not supported; use PNG or JPEG");
            return Err(image_error(detail));
        }
        None => return Err(image_error("not a PNG or JPEG image".to_string())),
    }
    reader.limits(limits_for(max_pixels));

    // The decoder reads only the header here, so a bomb is refused before any allocation.
    let mut decoder = reader
        .into_decoder()
        .map_err(|e| image_error(describe(&e)))?;
    let (width, height) = decoder.dimensions();
    let pixels = u64::from(width) * u64::from(height);
    if pixels == 0 {
        return Err(image_error(format!(
            "image has no pixels ({width}x{height})"
        )));
    }
    if pixels > max_pixels {
        return Err(image_error(format!(
            "image is {width}x{height} = {pixels} pixels, over the limit of {max_pixels} \
             (decompression-bomb guard, LoadOptions::max_pixels)"
        )));
    }
    // A broken EXIF block is not worth refusing an otherwise good image for.
    let orientation = decoder.orientation().unwrap_or_else(|e| {
        log::debug!(
            "{}: ignoring unreadable EXIF orientation: {e}",
            path.display()
        );
        Orientation::NoTransforms
    });
    let mut image = DynamicImage::from_decoder(decoder).map_err(|e| image_error(describe(&e)))?;
    image.apply_orientation(orientation);

    let rgb: RgbImage = image.into_rgb8();
    let rgb = if rgb.dimensions() == (side, side) {
        rgb
    } else {
        image::imageops::resize(&rgb, side, side, FilterType::Triangle)
    };
    out.copy_from_slice(rgb.as_raw());
    Ok(())
}

/// Decoder limits matching `max_pixels`: no side longer than the whole budget, and room for
/// the largest pixel format (16-bit RGBA, 8 bytes) plus decoder scratch.
pub(crate) fn limits_for(max_pixels: u64) -> Limits {
    let side = u32::try_from(max_pixels).unwrap_or(u32::MAX);
    let mut limits = Limits::default();
    limits.max_image_width = Some(side);
    limits.max_image_height = Some(side);
    limits.max_alloc = Some(max_pixels.saturating_mul(8).saturating_add(64 << 20));
    limits
}

/// A short description of a decoding failure.
fn describe(error: &ImageError) -> String {
    match error {
        ImageError::Limits(e) => format!("refused by the decompression-bomb guard: {e}"),
        ImageError::Unsupported(e) => format!("unsupported image: {e}"),
        ImageError::IoError(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
            "truncated image: unexpected end of file".to_string()
        }
        other => format!("corrupt or truncated image: {other}"),
    }
}
