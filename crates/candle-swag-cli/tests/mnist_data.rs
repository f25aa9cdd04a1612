//! MNIST-5k data pieces of the conv-net example: the IDX reader's errors, the `--test` CSV
//! reader, and the bilinear rotation against hand values.

use anyhow::Result;
use candle_swag_cli::data::idx::{read_idx, read_image_csv, IMAGES_MAGIC, LABELS_MAGIC};
use candle_swag_cli::data::image::{rotate_all, rotate_bilinear};

fn idx_images(count: u32, body: &[u8]) -> Vec<u8> {
    let mut b = Vec::new();
    for v in [IMAGES_MAGIC, count, 28, 28] {
        b.extend(v.to_be_bytes());
    }
    b.extend(body);
    b
}

fn idx_labels(labels: &[u8]) -> Vec<u8> {
    let mut b = Vec::new();
    for v in [LABELS_MAGIC, labels.len() as u32] {
        b.extend(v.to_be_bytes());
    }
    b.extend(labels);
    b
}

#[test]
fn bundled_mnist_reads_with_its_documented_counts() -> Result<()> {
    let train = read_idx(
        concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../data/mnist5k-train-images-idx3-ubyte"
        ),
        concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../data/mnist5k-train-labels-idx1-ubyte"
        ),
    )?;
    assert_eq!((train.count, train.rows, train.cols), (4000, 28, 28));
    assert_eq!(train.pixels.len(), 4000 * 784);
    assert!(train.labels.iter().all(|&l| l < 10));
    let test = read_idx(
        concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../data/mnist5k-test-images-idx3-ubyte"
        ),
        concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../data/mnist5k-test-labels-idx1-ubyte"
        ),
    )?;
    assert_eq!(test.count, 1000);
    Ok(())
}

#[test]
fn bad_idx_files_are_named_with_the_reason() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let p = |n: &str| dir.path().join(n);
    let pixels = vec![7u8; 2 * 784];
    std::fs::write(p("ok-images"), idx_images(2, &pixels))?;
    std::fs::write(p("ok-labels"), idx_labels(&[3, 4]))?;
    let ok = read_idx(p("ok-images"), p("ok-labels"))?;
    assert_eq!(ok.labels, vec![3, 4]);
    assert_eq!(ok.pixels, pixels);

    // Wrong magic number.
    let mut wrong = idx_images(2, &pixels);
    wrong[..4].copy_from_slice(&LABELS_MAGIC.to_be_bytes());
    std::fs::write(p("wrong-magic"), wrong)?;
    let err = read_idx(p("wrong-magic"), p("ok-labels"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("wrong-magic") && err.contains("2051"), "{err}");
    // A file too short for its header.
    let err = read_idx(p("ok-labels"), p("ok-labels"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("ok-labels") && err.contains("header"), "{err}");
    // Truncated body.
    std::fs::write(p("short"), idx_images(2, &pixels[..1000]))?;
    let err = read_idx(p("short"), p("ok-labels"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("short"), "{err}");
    assert!(!err.contains('\n'), "one line: {err}");
    // Counts that differ.
    std::fs::write(p("three-labels"), idx_labels(&[1, 2, 3]))?;
    let err = read_idx(p("ok-images"), p("three-labels"))
        .unwrap_err()
        .to_string();
    assert!(err.contains('2') && err.contains('3'), "{err}");
    Ok(())
}

fn csv(rows: &[Vec<String>]) -> String {
    let mut s = String::from("label");
    for i in 0..784 {
        s.push_str(&format!(",px{i}"));
    }
    s.push('\n');
    for r in rows {
        s.push_str(&r.join(","));
        s.push('\n');
    }
    s
}

#[test]
fn test_csv_is_read_and_bad_rows_are_named() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let row = |label: &str, px: &str| -> Vec<String> {
        std::iter::once(label.to_string())
            .chain(std::iter::repeat_n(px.to_string(), 784))
            .collect()
    };
    let good = dir.path().join("good.csv");
    std::fs::write(&good, csv(&[row("5", "0"), row("9", "255")]))?;
    let t = read_image_csv(&good)?;
    assert_eq!(t.labels, vec![5, 9]);
    assert_eq!(t.pixels[784..], vec![255u8; 784][..]);

    let bad_pixel = dir.path().join("pixel.csv");
    std::fs::write(&bad_pixel, csv(&[row("5", "0"), row("1", "256")]))?;
    let err = read_image_csv(&bad_pixel).unwrap_err().to_string();
    assert!(err.contains("pixel.csv") && err.contains("256"), "{err}");

    let mut short = row("5", "0");
    short.pop();
    let ragged = dir.path().join("ragged.csv");
    std::fs::write(&ragged, csv(&[short]))?;
    let err = read_image_csv(&ragged).unwrap_err().to_string();
    assert!(err.contains("ragged.csv"), "{err}");
    Ok(())
}

#[test]
fn rotation_by_hand() -> Result<()> {
    // A 3×3 asymmetric image.
    let img: Vec<u8> = vec![1, 2, 3, 4, 5, 6, 7, 8, 9];
    assert_eq!(rotate_bilinear(&img, 3, 3, 0.0), img);
    // 90° counter-clockwise on screen (numpy's rot90): out[r][c] = in[c][w−1−r].
    assert_eq!(
        rotate_bilinear(&img, 3, 3, 90.0),
        vec![3, 6, 9, 2, 5, 8, 1, 4, 7]
    );
    assert_eq!(
        rotate_bilinear(&img, 3, 3, 180.0),
        vec![9, 8, 7, 6, 5, 4, 3, 2, 1]
    );
    // The centre pixel of an odd image never moves.
    assert_eq!(rotate_bilinear(&img, 3, 3, 33.0)[4], 5);
    // 45° of a constant 4×4 image: the centre keeps the value; corners fall outside.
    let flat = vec![100u8; 16];
    let r = rotate_bilinear(&flat, 4, 4, 45.0);
    assert_eq!((r[5], r[6], r[9], r[10]), (100, 100, 100, 100));
    assert!(r[0] < 100);
    // A half-pixel shift by hand: 2×2 image rotated 90° about (0.5, 0.5) is exact too.
    assert_eq!(
        rotate_bilinear(&[10, 20, 30, 40], 2, 2, 90.0),
        vec![20, 40, 10, 30]
    );
    // rotate_all is image by image.
    let two: Vec<u8> = img.iter().chain(img.iter()).copied().collect();
    assert_eq!(
        rotate_all(&two, 3, 3, 90.0)[9..],
        rotate_bilinear(&img, 3, 3, 90.0)[..]
    );
    Ok(())
}
