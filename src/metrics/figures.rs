//! The experiment's other figures: scatter panels of 2-D cell embeddings (the
//! paper's Figure 5) and grouped bars (mean attention per cell type, Figure 4).
//! Text, fonts and the `<name>.legend.json` sidecar work as in [`super::plot`].
use std::path::Path;

use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use serde_json::json;

use super::plot::{draw_err, encode_png, file_name, finish, font, font_available, hex};
use super::PlotOutput;
use crate::error::{Error, Result};
use crate::io::write_atomic;

/// One panel of [`plot_scatter_panels`].
pub struct ScatterPanel<'a> {
    pub title: &'a str,
    pub points: &'a [[f32; 2]],
}

/// Twenty distinguishable colours (Kelly's, minus white and black) for the cell types.
const CATEGORICAL: [RGBColor; 20] = [
    RGBColor(0xF3, 0xC3, 0x00),
    RGBColor(0x87, 0x56, 0x92),
    RGBColor(0xF3, 0x84, 0x00),
    RGBColor(0xA1, 0xCA, 0xF1),
    RGBColor(0xBE, 0x00, 0x32),
    RGBColor(0xC2, 0xB2, 0x80),
    RGBColor(0x84, 0x84, 0x82),
    RGBColor(0x00, 0x88, 0x56),
    RGBColor(0xE6, 0x8F, 0xAC),
    RGBColor(0x00, 0x67, 0xA5),
    RGBColor(0xF9, 0x93, 0x79),
    RGBColor(0x60, 0x4E, 0x97),
    RGBColor(0xF6, 0xA6, 0x00),
    RGBColor(0xB3, 0x44, 0x6C),
    RGBColor(0xDC, 0xD3, 0x00),
    RGBColor(0x88, 0x2D, 0x17),
    RGBColor(0x8D, 0xB6, 0x00),
    RGBColor(0x65, 0x45, 0x22),
    RGBColor(0xE2, 0x58, 0x22),
    RGBColor(0x2B, 0x3D, 0x26),
];

fn category(c: usize) -> RGBColor {
    CATEGORICAL[c % CATEGORICAL.len()]
}

/// One scatter panel per entry of `panels`, side by side (three a row), each
/// point coloured by `labels[i]` (an index into `label_names`), and a legend of
/// the labels below. Each panel is scaled to its own points' range.
pub fn plot_scatter_panels(
    path: &Path,
    panels: &[ScatterPanel],
    labels: &[usize],
    label_names: &[String],
    title: &str,
) -> Result<PlotOutput> {
    if panels.is_empty() {
        return Err(Error::invalid("panels", "is empty"));
    }
    for p in panels {
        if p.points.len() != labels.len() {
            return Err(Error::invalid(
                "panels",
                format!(
                    "`{}` has {} points for {} labels",
                    p.title,
                    p.points.len(),
                    labels.len()
                ),
            ));
        }
    }
    if let Some(bad) = labels.iter().find(|&&l| l >= label_names.len()) {
        return Err(Error::invalid("labels", format!("label {bad} has no name")));
    }
    let text = font_available()?;
    let side = 300i32;
    let cols = panels.len().min(3) as i32;
    let rows = (panels.len() as i32 + cols - 1) / cols;
    let legend_rows = (label_names.len() as i32 + 2) / 3;
    let (w, h) = (
        (cols * (side + 20) + 20) as u32,
        (50 + rows * (side + 40) + legend_rows * 20 + 20) as u32,
    );
    let mut buf = vec![255u8; (w * h * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut buf, (w, h)).into_drawing_area();
        let e = |e| draw_err(path, e);
        for (k, panel) in panels.iter().enumerate() {
            let (cx, cy) = (
                20 + (k as i32 % cols) * (side + 20),
                50 + (k as i32 / cols) * (side + 40),
            );
            root.draw(&Rectangle::new(
                [(cx, cy), (cx + side, cy + side)],
                BLACK.stroke_width(1),
            ))
            .map_err(e)?;
            let finite = panel
                .points
                .iter()
                .filter(|p| p[0].is_finite() && p[1].is_finite());
            let (mut lo, mut hi) = ([f32::INFINITY; 2], [f32::NEG_INFINITY; 2]);
            for p in finite {
                for d in 0..2 {
                    lo[d] = lo[d].min(p[d]);
                    hi[d] = hi[d].max(p[d]);
                }
            }
            let scale = |v: f32, d: usize| {
                let span = (hi[d] - lo[d]).max(1e-9);
                ((v - lo[d]) / span * (side - 16) as f32) as i32 + 8
            };
            for (p, &l) in panel.points.iter().zip(labels) {
                if !(p[0].is_finite() && p[1].is_finite()) {
                    continue;
                }
                let (x, y) = (cx + scale(p[0], 0), cy + side - scale(p[1], 1));
                root.draw(&Circle::new((x, y), 3, category(l).filled()))
                    .map_err(e)?;
            }
            if text {
                let style = font(15.0).pos(Pos::new(HPos::Center, VPos::Bottom));
                root.draw(&Text::new(
                    panel.title.to_owned(),
                    (cx + side / 2, cy - 4),
                    style,
                ))
                .map_err(e)?;
            }
        }
        let ly = 50 + rows * (side + 40);
        for (c, name) in label_names.iter().enumerate() {
            let (x, y) = (
                20 + (c as i32 % 3) * ((w as i32 - 40) / 3),
                ly + (c as i32 / 3) * 20,
            );
            root.draw(&Circle::new((x + 6, y + 8), 5, category(c).filled()))
                .map_err(e)?;
            if text {
                let style = font(13.0).pos(Pos::new(HPos::Left, VPos::Center));
                root.draw(&Text::new(name.clone(), (x + 16, y + 8), style))
                    .map_err(e)?;
            }
        }
        if text {
            let style = font(17.0).pos(Pos::new(HPos::Center, VPos::Center));
            root.draw(&Text::new(title.to_owned(), (w as i32 / 2, 20), style))
                .map_err(e)?;
        }
        root.present().map_err(e)?;
    }
    write_atomic(path, &encode_png(&buf, (w, h), path)?)?;
    let legend = json!({
        "image": file_name(path),
        "kind": title,
        "text_drawn": text,
        "panels": panels.iter().map(|p| p.title).collect::<Vec<_>>(),
        "layout": "panels left to right, three a row; each scaled to its own points",
        "colours": label_names.iter().enumerate()
            .map(|(c, n)| json!({"label": n, "color": hex(category(c))})).collect::<Vec<_>>(),
        "points": labels.len(),
    });
    finish(path, legend, text)
}

/// Grouped bars for [`plot_grouped_bars`]: `values[s][g]` is series `s` at group `g`.
pub struct Bars<'a> {
    pub groups: &'a [String],
    pub series: &'a [String],
    pub values: &'a [Vec<f64>],
    /// A dashed horizontal reference line (e.g. 1 = an average cell).
    pub reference: Option<f64>,
}

/// Vertical grouped bars: one group per `groups` entry (left to right), one
/// bar per series inside it, coloured by series; NaN values are left out.
pub fn plot_grouped_bars(
    path: &Path,
    bars: &Bars,
    title: &str,
    y_label: &str,
) -> Result<PlotOutput> {
    let Bars {
        groups,
        series,
        values,
        reference,
    } = *bars;
    if groups.is_empty() || series.is_empty() {
        return Err(Error::invalid(
            "groups",
            "needs at least one group and one series",
        ));
    }
    if values.len() != series.len() || values.iter().any(|v| v.len() != groups.len()) {
        return Err(Error::invalid(
            "values",
            format!("must be {} series × {} groups", series.len(), groups.len()),
        ));
    }
    let text = font_available()?;
    let top = values
        .iter()
        .flatten()
        .copied()
        .chain(reference)
        .filter(|v| v.is_finite())
        .fold(0.0f64, f64::max)
        .max(1e-9)
        * 1.1;
    let bar = 10i32;
    let group_w = bar * series.len() as i32 + 12;
    let (x0, y0, plot_h) = (70i32, 50i32, 320i32);
    let w = (x0 + group_w * groups.len() as i32 + 200) as u32;
    let h = (y0 + plot_h + 170) as u32;
    let mut buf = vec![255u8; (w * h * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut buf, (w, h)).into_drawing_area();
        let e = |e| draw_err(path, e);
        let y1 = y0 + plot_h;
        let py = |v: f64| y1 - (v / top * plot_h as f64).round() as i32;
        let x1 = x0 + group_w * groups.len() as i32;
        // Ticks at a round step: 1, 2 or 5 × 10^k, about four of them.
        let raw = top / 1.1 / 4.0;
        let mag = 10f64.powf(raw.log10().floor());
        let step = [1.0, 2.0, 5.0, 10.0]
            .iter()
            .map(|m| m * mag)
            .find(|s| *s >= raw)
            .unwrap_or(10.0 * mag);
        for k in 0..=((top / step).floor() as usize) {
            let v = step * k as f64;
            root.draw(&PathElement::new(
                vec![(x0, py(v)), (x1, py(v))],
                RGBColor(0xDD, 0xDD, 0xDD),
            ))
            .map_err(e)?;
            if text {
                let style = font(12.0).pos(Pos::new(HPos::Right, VPos::Center));
                let decimals = (-step.log10().floor()).max(0.0) as usize;
                root.draw(&Text::new(
                    format!("{v:.decimals$}"),
                    (x0 - 6, py(v)),
                    style,
                ))
                .map_err(e)?;
            }
        }
        if let Some(r) = reference {
            for k in (x0..x1).step_by(12) {
                root.draw(&PathElement::new(
                    vec![(k, py(r)), ((k + 6).min(x1), py(r))],
                    RGBColor(0x55, 0x55, 0x55),
                ))
                .map_err(e)?;
            }
        }
        for (s, row) in values.iter().enumerate() {
            for (g, &v) in row.iter().enumerate() {
                if !v.is_finite() {
                    continue;
                }
                let x = x0 + g as i32 * group_w + 6 + s as i32 * bar;
                root.draw(&Rectangle::new(
                    [(x, py(v)), (x + bar - 1, y1)],
                    category(s + 9).filled(),
                ))
                .map_err(e)?;
            }
        }
        root.draw(&PathElement::new(vec![(x0, y0), (x0, y1), (x1, y1)], BLACK))
            .map_err(e)?;
        if text {
            for (g, name) in groups.iter().enumerate() {
                let x = x0 + g as i32 * group_w + group_w / 2;
                let style = font(12.0)
                    .pos(Pos::new(HPos::Left, VPos::Center))
                    .transform(plotters::style::FontTransform::Rotate90);
                root.draw(&Text::new(name.clone(), (x, y1 + 6), style))
                    .map_err(e)?;
            }
            let style = font(16.0).pos(Pos::new(HPos::Center, VPos::Center));
            root.draw(&Text::new(
                title.to_owned(),
                ((x0 + x1) / 2, y0 / 2),
                style.clone(),
            ))
            .map_err(e)?;
            let vertical = style.transform(plotters::style::FontTransform::Rotate270);
            root.draw(&Text::new(
                y_label.to_owned(),
                (18, (y0 + y1) / 2),
                vertical,
            ))
            .map_err(e)?;
        }
        for (s, name) in series.iter().enumerate() {
            let y = y0 + 10 + 22 * s as i32;
            root.draw(&Rectangle::new(
                [(x1 + 20, y - 6), (x1 + 34, y + 6)],
                category(s + 9).filled(),
            ))
            .map_err(e)?;
            if text {
                let style = font(13.0).pos(Pos::new(HPos::Left, VPos::Center));
                root.draw(&Text::new(name.clone(), (x1 + 40, y), style))
                    .map_err(e)?;
            }
        }
        root.present().map_err(e)?;
    }
    write_atomic(path, &encode_png(&buf, (w, h), path)?)?;
    let legend = json!({
        "image": file_name(path),
        "kind": title,
        "text_drawn": text,
        "y_axis": y_label,
        "groups": groups,
        "series": series.iter().enumerate()
            .map(|(s, n)| json!({"name": n, "color": hex(category(s + 9)), "values": values[s]}))
            .collect::<Vec<_>>(),
        "reference_line": reference,
    });
    finish(path, legend, text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scatter_and_bars_write_png_and_legend_and_check_shapes() {
        let dir = tempfile::tempdir().unwrap();
        let pts = [[0.0f32, 0.0], [1.0, 2.0], [0.5, 1.0]];
        let panels = [
            ScatterPanel {
                title: "a",
                points: &pts,
            },
            ScatterPanel {
                title: "b",
                points: &pts,
            },
        ];
        let names = vec!["x".to_string(), "y".to_string()];
        let p = dir.path().join("s.png");
        let out = plot_scatter_panels(&p, &panels, &[0, 1, 1], &names, "t").unwrap();
        assert!(image::open(&p).is_ok() && out.legend.exists());
        let err = plot_scatter_panels(&p, &panels, &[0, 1], &names, "t").unwrap_err();
        assert!(err.to_string().contains("panels"), "{err}");
        let err = plot_scatter_panels(&p, &panels, &[0, 1, 2], &names, "t").unwrap_err();
        assert!(err.to_string().contains("labels"), "{err}");
        let p = dir.path().join("b.png");
        let values = vec![vec![1.0, f64::NAN], vec![0.5, 2.0]];
        let bars = Bars {
            groups: &names,
            series: &names,
            values: &values,
            reference: Some(1.0),
        };
        plot_grouped_bars(&p, &bars, "t", "y").unwrap();
        assert!(image::open(&p).is_ok());
        let bad = Bars {
            values: &values[..1],
            ..bars
        };
        assert!(plot_grouped_bars(&p, &bad, "t", "y")
            .unwrap_err()
            .to_string()
            .contains("values"));
    }
}
