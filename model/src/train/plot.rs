//! The loss log of a run: `loss.csv` and a line plot of it, `loss.png`, rasterised here (log-scale
//! y with tick marks at every decade and its multiples, x ticks at tenths; no text).

use anyhow::{Context, Result};
use std::path::Path;

/// One step's loss terms.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LossRow {
    pub step: usize,
    pub loss: f64,
    pub recon: f64,
    pub kl: f64,
}

/// Writes `step,loss,recon,kl` rows with a header.
pub fn write_loss_csv(rows: &[LossRow], path: &Path) -> Result<()> {
    let mut text = String::from("step,loss,recon,kl\n");
    for r in rows {
        text.push_str(&format!("{},{},{},{}\n", r.step, r.loss, r.recon, r.kl));
    }
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

/// Reads what [`write_loss_csv`] wrote.
pub fn read_loss_csv(path: &Path) -> Result<Vec<LossRow>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut rows = Vec::new();
    for (n, line) in text.lines().enumerate().skip(1) {
        let f: Vec<&str> = line.split(',').collect();
        let bad = || format!("{}:{}: expected step,loss,recon,kl", path.display(), n + 1);
        if f.len() != 4 {
            anyhow::bail!(bad());
        }
        rows.push(LossRow {
            step: f[0].parse().with_context(bad)?,
            loss: f[1].parse().with_context(bad)?,
            recon: f[2].parse().with_context(bad)?,
            kl: f[3].parse().with_context(bad)?,
        });
    }
    Ok(rows)
}

struct Canvas {
    width: usize,
    height: usize,
    rgb: Vec<u8>,
}

impl Canvas {
    fn new(width: usize, height: usize) -> Self {
        Canvas { width, height, rgb: vec![255; width * height * 3] }
    }

    fn put(&mut self, x: i64, y: i64, c: [u8; 3]) {
        if x >= 0 && y >= 0 && (x as usize) < self.width && (y as usize) < self.height {
            let i = (y as usize * self.width + x as usize) * 3;
            self.rgb[i..i + 3].copy_from_slice(&c);
        }
    }

    /// Bresenham.
    fn line(&mut self, (mut x0, mut y0): (i64, i64), (x1, y1): (i64, i64), c: [u8; 3]) {
        let (dx, dy) = ((x1 - x0).abs(), -(y1 - y0).abs());
        let (sx, sy) = (if x0 < x1 { 1 } else { -1 }, if y0 < y1 { 1 } else { -1 });
        let mut err = dx + dy;
        loop {
            self.put(x0, y0, c);
            if x0 == x1 && y0 == y1 {
                break;
            }
            let e2 = 2 * err;
            if e2 >= dy {
                err += dy;
                x0 += sx;
            }
            if e2 <= dx {
                err += dx;
                y0 += sy;
            }
        }
    }
}

/// Plots the total loss per step (light blue), its exponential moving average (dark blue) and the
/// reconstruction term's moving average (orange) on a log-scale y axis, as a `width × height` RGB
/// PNG. Rows with non-positive or non-finite values are left out.
pub fn write_loss_plot(rows: &[LossRow], path: &Path, width: usize, height: usize) -> Result<()> {
    let mut c = Canvas::new(width, height);
    let (left, right, top, bottom) = (30i64, 10i64, 10i64, 20i64);
    let (x0, x1, y0, y1) = (left, width as i64 - 1 - right, top, height as i64 - 1 - bottom);
    let rows: Vec<LossRow> =
        rows.iter().copied().filter(|r| r.loss > 0.0 && r.loss.is_finite() && r.recon > 0.0).collect();
    let black = [0, 0, 0];
    c.line((x0, y1), (x1, y1), black);
    c.line((x0, y0), (x0, y1), black);
    if !rows.is_empty() {
        let (s_min, s_max) = (rows[0].step as f64, rows[rows.len() - 1].step.max(rows[0].step + 1) as f64);
        let lo = rows.iter().map(|r| r.loss.min(r.recon)).fold(f64::INFINITY, f64::min).log10();
        let hi = rows.iter().map(|r| r.loss.max(r.recon)).fold(f64::NEG_INFINITY, f64::max).log10();
        let (lo, hi) = if hi - lo < 0.1 { ((lo + hi) / 2.0 - 0.05, (lo + hi) / 2.0 + 0.05) } else { (lo, hi) };
        let px = |s: f64| x0 + ((s - s_min) / (s_max - s_min) * (x1 - x0) as f64).round() as i64;
        let py = |v: f64| y1 - ((v.log10() - lo) / (hi - lo) * (y1 - y0) as f64).round() as i64;
        // y ticks: 1..9 × 10^k, long at the decades.
        for k in lo.floor() as i32..=hi.ceil() as i32 {
            for m in 1..10 {
                let v = m as f64 * 10f64.powi(k);
                if v.log10() < lo || v.log10() > hi {
                    continue;
                }
                let (y, len) = (py(v), if m == 1 { 8 } else { 4 });
                c.line((x0 - len, y), (x0, y), black);
                if m == 1 {
                    for x in (x0..=x1).step_by(4) {
                        c.put(x, y, [200, 200, 200]);
                    }
                }
            }
        }
        for k in 0..=10 {
            let x = x0 + (x1 - x0) * k / 10;
            c.line((x, y1), (x, y1 + if k % 5 == 0 { 8 } else { 4 }), black);
        }
        let series = |c: &mut Canvas, values: &[f64], color: [u8; 3]| {
            let mut prev = None;
            for (r, &v) in rows.iter().zip(values) {
                let p = (px(r.step as f64), py(v));
                if let Some(q) = prev {
                    c.line(q, p, color);
                } else {
                    c.put(p.0, p.1, color);
                }
                prev = Some(p);
            }
        };
        let smooth = |f: fn(&LossRow) -> f64| {
            let alpha = 2.0 / (1.0 + (rows.len() as f64 / 20.0).max(1.0));
            let mut m = f(&rows[0]).ln();
            rows.iter()
                .map(|r| {
                    m += alpha * (f(r).ln() - m);
                    m.exp()
                })
                .collect::<Vec<f64>>()
        };
        let raw: Vec<f64> = rows.iter().map(|r| r.loss).collect();
        series(&mut c, &raw, [170, 200, 240]);
        series(&mut c, &smooth(|r| r.recon), [240, 140, 30]);
        series(&mut c, &smooth(|r| r.loss), [20, 60, 160]);
    }
    crate::media::write_png(path, crate::media::Size { width, height }, &c.rgb)
        .with_context(|| format!("writing {}", path.display()))
}

/// A line of a plot: its colour and its `(x, y)` points.
pub type Series = ([u8; 3], Vec<(f64, f64)>);

/// Line plot of several `(x, y)` series on one linear y axis from 0 (or the lowest value, if
/// negative) to the highest, with 10 x ticks and 5 y grid lines; each series in its colour.
pub fn write_series_plot(series: &[Series], path: &Path, width: usize, height: usize) -> Result<()> {
    let mut c = Canvas::new(width, height);
    let (x0, x1, y0, y1) = (30i64, width as i64 - 11, 10i64, height as i64 - 21);
    let black = [0, 0, 0];
    c.line((x0, y1), (x1, y1), black);
    c.line((x0, y0), (x0, y1), black);
    let points = series.iter().flat_map(|(_, s)| s.iter()).filter(|(x, y)| x.is_finite() && y.is_finite());
    let (mut xl, mut xh, mut yl, mut yh) = (f64::INFINITY, f64::NEG_INFINITY, 0.0f64, f64::NEG_INFINITY);
    for &(x, y) in points {
        (xl, xh, yl, yh) = (xl.min(x), xh.max(x), yl.min(y), yh.max(y));
    }
    if xl.is_finite() {
        let (xh, yh) = (if xh > xl { xh } else { xl + 1.0 }, if yh > yl { yh } else { yl + 1.0 });
        let px = |x: f64| x0 + ((x - xl) / (xh - xl) * (x1 - x0) as f64).round() as i64;
        let py = |y: f64| y1 - ((y - yl) / (yh - yl) * (y1 - y0) as f64).round() as i64;
        for k in 0..=5 {
            let y = y1 - (y1 - y0) * k / 5;
            c.line((x0 - 4, y), (x0, y), black);
            for x in (x0..=x1).step_by(4) {
                c.put(x, y, [210, 210, 210]);
            }
        }
        for k in 0..=10 {
            let x = x0 + (x1 - x0) * k / 10;
            c.line((x, y1), (x, y1 + if k % 5 == 0 { 8 } else { 4 }), black);
        }
        for (color, s) in series {
            let mut prev = None;
            for &(x, y) in s.iter().filter(|(x, y)| x.is_finite() && y.is_finite()) {
                let p = (px(x), py(y));
                match prev {
                    Some(q) => c.line(q, p, *color),
                    None => c.put(p.0, p.1, *color),
                }
                prev = Some(p);
            }
        }
    }
    crate::media::write_png(path, crate::media::Size { width, height }, &c.rgb)
        .with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn train_plot_writes_a_png_of_the_size_and_csv_round_trips() {
        let dir = std::env::temp_dir().join(format!("endless-train-plot-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let rows: Vec<LossRow> = (0..300)
            .map(|s| {
                let loss = 0.5 * (-(s as f64) / 80.0).exp() + 0.02 + 0.01 * ((s * 7919 % 13) as f64 / 13.0);
                LossRow { step: s, loss, recon: loss * 0.99, kl: 3.0 }
            })
            .collect();
        let png_path = dir.join("loss.png");
        write_loss_plot(&rows, &png_path, 320, 200).unwrap();
        let decoder = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(&png_path).unwrap()));
        let mut reader = decoder.read_info().unwrap();
        assert_eq!((reader.info().width, reader.info().height), (320, 200));
        let mut buf = vec![0; reader.output_buffer_size().unwrap()];
        let frame = reader.next_frame(&mut buf).unwrap();
        let pixels = &buf[..frame.buffer_size()];
        assert!(pixels.chunks_exact(3).any(|p| p == [20, 60, 160]), "the smoothed loss is drawn");
        write_loss_plot(&[], &dir.join("empty.png"), 64, 48).unwrap();
        let csv = dir.join("loss.csv");
        write_loss_csv(&rows, &csv).unwrap();
        assert_eq!(read_loss_csv(&csv).unwrap(), rows);
        std::fs::remove_dir_all(&dir).ok();
    }
}
