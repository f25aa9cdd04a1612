//! Reader for the IDX format of the original MNIST files.
//!
//! Layout (all header integers big-endian `u32`): images are magic 2051, count, rows, cols,
//! then `count·rows·cols` bytes (0–255, row-major); labels are magic 2049, count, then `count`
//! bytes. Every error names the file and what is wrong.

use std::path::Path;

use candle_swag::error::{Error, Result};

/// Magic number of an IDX image file (unsigned bytes, 3 dimensions).
pub const IMAGES_MAGIC: u32 = 2051;
/// Magic number of an IDX label file (unsigned bytes, 1 dimension).
pub const LABELS_MAGIC: u32 = 2049;

/// Greyscale images read from an IDX file, with their labels.
#[derive(Debug, Clone, PartialEq)]
pub struct IdxImages {
    /// Number of images.
    pub count: usize,
    /// Image height in pixels.
    pub rows: usize,
    /// Image width in pixels.
    pub cols: usize,
    /// `count·rows·cols` pixels 0–255, image-major then row-major.
    pub pixels: Vec<u8>,
    /// One label per image.
    pub labels: Vec<u8>,
}

fn header(bytes: &[u8], n: usize, path: &Path) -> Result<Vec<u32>> {
    if bytes.len() < 4 * n {
        return Err(Error::bad_file(
            path,
            format!(
                "truncated header: {} bytes, an IDX header here needs {}",
                bytes.len(),
                4 * n
            ),
        ));
    }
    Ok((0..n)
        .map(|i| {
            u32::from_be_bytes([
                bytes[4 * i],
                bytes[4 * i + 1],
                bytes[4 * i + 2],
                bytes[4 * i + 3],
            ])
        })
        .collect())
}

fn check_magic(got: u32, want: u32, what: &str, path: &Path) -> Result<()> {
    if got != want {
        return Err(Error::bad_file(
            path,
            format!("wrong magic number {got}: an IDX {what} file starts with {want}"),
        ));
    }
    Ok(())
}

fn body<'a>(bytes: &'a [u8], offset: usize, want: usize, path: &Path) -> Result<&'a [u8]> {
    let got = bytes.len() - offset;
    if got != want {
        let what = if got < want {
            "truncated body"
        } else {
            "trailing bytes after the body"
        };
        return Err(Error::bad_file(
            path,
            format!("{what}: the header promises {want} bytes, the file holds {got}"),
        ));
    }
    Ok(&bytes[offset..])
}

fn read(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| Error::io(path, e))
}

/// Parses the bytes of an IDX image file: `(count, rows, cols, pixels)`.
pub fn parse_images(bytes: &[u8], path: &Path) -> Result<(usize, usize, usize, Vec<u8>)> {
    let h = header(bytes, 4, path)?;
    check_magic(h[0], IMAGES_MAGIC, "image", path)?;
    let (count, rows, cols) = (h[1] as usize, h[2] as usize, h[3] as usize);
    let want = count
        .checked_mul(rows)
        .and_then(|v| v.checked_mul(cols))
        .ok_or_else(|| Error::bad_file(path, "header dimensions overflow"))?;
    Ok((count, rows, cols, body(bytes, 16, want, path)?.to_vec()))
}

/// Parses the bytes of an IDX label file.
pub fn parse_labels(bytes: &[u8], path: &Path) -> Result<Vec<u8>> {
    let h = header(bytes, 2, path)?;
    check_magic(h[0], LABELS_MAGIC, "label", path)?;
    Ok(body(bytes, 8, h[1] as usize, path)?.to_vec())
}

/// Reads an image file and its label file, checking both and that their counts agree.
pub fn read_idx(images: impl AsRef<Path>, labels: impl AsRef<Path>) -> Result<IdxImages> {
    let (images, labels) = (images.as_ref(), labels.as_ref());
    let (count, rows, cols, pixels) = parse_images(&read(images)?, images)?;
    let label_bytes = parse_labels(&read(labels)?, labels)?;
    if label_bytes.len() != count {
        return Err(Error::bad_file(
            labels,
            format!(
                "{} labels, but the image file {} holds {count} images",
                label_bytes.len(),
                images.display()
            ),
        ));
    }
    Ok(IdxImages {
        count,
        rows,
        cols,
        pixels,
        labels: label_bytes,
    })
}

/// Reads 28×28 images from a CSV with header `label,px0..px783` (pixels 0–255, labels 0–9), the
/// format of `mnist_cnn --test`, with the crate's CSV reader ([`candle_swag_report::io::CsvTable`]).
///
/// Errors name the file and the 1-based data row: a header other than `label,px0..px783` (wrong
/// column count or names), a pixel that is not an integer in 0–255, a label that is not an
/// integer in 0–9.
pub fn read_image_csv(path: impl AsRef<Path>) -> Result<IdxImages> {
    const SIDE: usize = 28;
    let path = path.as_ref();
    let table = candle_swag_report::io::CsvTable::read(path)?;
    let file = path.display().to_string();
    let bad = |row: usize, column: &str, reason: String| Error::BadData {
        file: file.clone(),
        row,
        column: column.to_string(),
        reason,
    };
    let want: Vec<String> = std::iter::once("label".to_string())
        .chain((0..SIDE * SIDE).map(|i| format!("px{i}")))
        .collect();
    let header = table.header();
    if header.len() != want.len() {
        return Err(bad(
            0,
            "-",
            format!(
                "{} columns, expected {} (label,px0..px783)",
                header.len(),
                want.len()
            ),
        ));
    }
    if let Some((got, exp)) = header.iter().zip(&want).find(|(g, e)| g != e) {
        return Err(bad(0, got, format!("header column should be `{exp}`")));
    }
    let mut pixels = Vec::with_capacity(table.num_rows() * SIDE * SIDE);
    let mut labels = Vec::with_capacity(table.num_rows());
    let cols: Vec<Vec<&str>> = want
        .iter()
        .map(|n| table.text_column(n))
        .collect::<Result<_>>()?;
    // `r` indexes every column of `cols` and names the row in errors.
    #[allow(clippy::needless_range_loop)]
    for r in 0..table.num_rows() {
        let cell = |c: usize, max: u8| -> Result<u8> {
            let text = cols[c][r].trim();
            match text.parse::<u16>() {
                Ok(v) if v <= max as u16 => Ok(v as u8),
                _ => Err(bad(
                    r + 1,
                    &want[c],
                    format!("`{text}` is not an integer in 0..={max}"),
                )),
            }
        };
        labels.push(cell(0, 9)?);
        for c in 1..want.len() {
            pixels.push(cell(c, 255)?);
        }
    }
    Ok(IdxImages {
        count: labels.len(),
        rows: SIDE,
        cols: SIDE,
        pixels,
        labels,
    })
}
