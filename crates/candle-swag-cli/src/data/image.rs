//! Bilinear rotation of greyscale images, for test sets under distribution shift.
//!
//! Convention: pixel `(r, c)` (row down, column right) sits at its integer coordinates; the
//! centre of rotation is `((w−1)/2, (h−1)/2)` in (x = column, y = row). A positive angle turns
//! the picture counter-clockwise as displayed (rows growing downwards). Each output pixel is
//! sampled at its inverse-rotated position with bilinear interpolation; neighbours outside the
//! image count as 0, and the result is rounded and clipped to 0..=255.

/// Rotates one `h × w` row-major image by `degrees` (see the module docs).
pub fn rotate_bilinear(pixels: &[u8], h: usize, w: usize, degrees: f64) -> Vec<u8> {
    let (s, c) = degrees.to_radians().sin_cos();
    let (cx, cy) = ((w as f64 - 1.0) / 2.0, (h as f64 - 1.0) / 2.0);
    let at = |y: i64, x: i64| -> f64 {
        if y < 0 || x < 0 || y >= h as i64 || x >= w as i64 {
            0.0
        } else {
            pixels[y as usize * w + x as usize] as f64
        }
    };
    let mut out = Vec::with_capacity(h * w);
    for r in 0..h {
        for col in 0..w {
            // Output (dx, dy) relative to the centre; counter-clockwise on screen with y down
            // means the source is the output turned clockwise: x' = c·dx − s·dy, y' = s·dx + c·dy.
            let (dx, dy) = (col as f64 - cx, r as f64 - cy);
            let sx = c * dx - s * dy + cx;
            let sy = s * dx + c * dy + cy;
            let (x0, y0) = (sx.floor(), sy.floor());
            let (fx, fy) = (sx - x0, sy - y0);
            let (x0, y0) = (x0 as i64, y0 as i64);
            let v = (1.0 - fy) * ((1.0 - fx) * at(y0, x0) + fx * at(y0, x0 + 1))
                + fy * ((1.0 - fx) * at(y0 + 1, x0) + fx * at(y0 + 1, x0 + 1));
            out.push(v.round().clamp(0.0, 255.0) as u8);
        }
    }
    out
}

/// Rotates every image of a batch (`count` images of `h × w`, image-major).
pub fn rotate_all(pixels: &[u8], h: usize, w: usize, degrees: f64) -> Vec<u8> {
    pixels
        .chunks(h * w)
        .flat_map(|img| rotate_bilinear(img, h, w, degrees))
        .collect()
}
