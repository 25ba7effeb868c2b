//! PNG figures of the evaluation: one-vs-rest ROC curves and a confusion matrix.
//!
//! Text needs a font, and the library ships none. Plots are drawn with plotters'
//! pure-Rust `ab_glyph` text renderer when a TrueType/OpenType font is found at run
//! time — the file named by the environment variable [`FONT_ENV`]
//! (`AMLMIL_FONT`), else a few common system locations (DejaVu Sans, Liberation
//! Sans, …). Without a font the same figure is drawn with no text at all. Either
//! way a sidecar `<name>.legend.json` is written next to `<name>.png` that states
//! the axes, the class of every colour or cell and the numbers behind the picture,
//! so a text-less figure is still readable.
use super::RocCurve;
use crate::error::{Error, Result};
use crate::io::write_atomic;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use plotters::style::FontTransform;
use serde_json::json;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// Environment variable naming a `.ttf`/`.otf` file to draw plot text with.
pub const FONT_ENV: &str = "AMLMIL_FONT";

/// Where a plot went and whether it has text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlotOutput {
    /// The PNG file.
    pub png: PathBuf,
    /// The sidecar JSON describing axes, colours and values.
    pub legend: PathBuf,
    /// `false` when no font was found and the PNG has no labels.
    pub text_drawn: bool,
}

/// Family name under which the discovered font is registered with plotters.
pub(super) const FAMILY: &str = "amlmil-plot";

/// Checked in order when [`FONT_ENV`] is not set.
const FONT_CANDIDATES: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
    "/usr/share/fonts/liberation-sans/LiberationSans-Regular.ttf",
    "/Library/Fonts/Arial.ttf",
    "C:\\Windows\\Fonts\\arial.ttf",
];

/// Colour-blind-safe palette (Okabe & Ito), minus its yellow which vanishes on
/// white; it repeats after seven classes.
const PALETTE: [RGBColor; 7] = [
    RGBColor(0x00, 0x72, 0xB2),
    RGBColor(0xD5, 0x5E, 0x00),
    RGBColor(0x00, 0x9E, 0x73),
    RGBColor(0xCC, 0x79, 0xA7),
    RGBColor(0xE6, 0x9F, 0x00),
    RGBColor(0x56, 0xB4, 0xE9),
    RGBColor(0x00, 0x00, 0x00),
];

/// Draws the one-vs-rest ROC curve of every class into one PNG at `path`, with the
/// chance diagonal, a 0.2 grid and a legend `name (AUC x.xxx)`; `curves[c]`
/// belongs to `class_names[c]`.
pub fn plot_roc_curves<S: AsRef<str>>(
    path: &Path,
    curves: &[RocCurve],
    class_names: &[S],
) -> Result<PlotOutput> {
    plot_roc_curves_titled(path, curves, class_names, "One-vs-rest ROC curves")
}

/// [`plot_roc_curves`] with another title, e.g. for one macro-average curve per
/// encoder (then `class_names` are the series' names).
pub fn plot_roc_curves_titled<S: AsRef<str>>(
    path: &Path,
    curves: &[RocCurve],
    class_names: &[S],
    title: &str,
) -> Result<PlotOutput> {
    let names: Vec<&str> = class_names.iter().map(AsRef::as_ref).collect();
    check_roc_input(curves, &names)?;
    let text = font_available()?;
    let png = render_roc(curves, &names, text, path, title)?;
    write_atomic(path, &png)?;
    let series: Vec<_> = curves
        .iter()
        .zip(&names)
        .enumerate()
        .map(|(c, (curve, name))| {
            json!({"class": name, "color": hex(color(c)), "auc": curve.auc(),
                   "fpr": curve.fpr, "tpr": curve.tpr})
        })
        .collect();
    let legend = json!({
        "image": file_name(path),
        "kind": title,
        "text_drawn": text,
        "x_axis": "false positive rate, 0 (left) to 1 (right)",
        "y_axis": "true positive rate, 0 (bottom) to 1 (top)",
        "grid": "light grey lines every 0.2",
        "diagonal": "dashed grey line = chance (AUC 0.5)",
        "legend_box": "right of the plot: one line swatch per class, in class order, top to bottom",
        "series": series,
    });
    finish(path, legend, text)
}

/// Draws the confusion matrix `matrix[true][pred]` as a heat map at `path`: rows
/// are the true class (top to bottom in class order), columns the predicted class
/// (left to right); a cell's blue is its share of the row (recall), and with text
/// it shows the count and that share.
pub fn plot_confusion_matrix<S: AsRef<str>>(
    path: &Path,
    matrix: &[Vec<usize>],
    class_names: &[S],
) -> Result<PlotOutput> {
    let names: Vec<&str> = class_names.iter().map(AsRef::as_ref).collect();
    if names.is_empty() {
        return Err(Error::invalid("class_names", "is empty"));
    }
    if matrix.len() != names.len() || matrix.iter().any(|r| r.len() != names.len()) {
        return Err(Error::invalid(
            "matrix",
            format!("must be {0}×{0} to match class_names", names.len()),
        ));
    }
    let text = font_available()?;
    let png = render_confusion(matrix, &names, text, path)?;
    write_atomic(path, &png)?;
    let legend = json!({
        "image": file_name(path),
        "kind": "confusion matrix",
        "text_drawn": text,
        "rows": "true class, top to bottom in class order",
        "columns": "predicted class, left to right in class order",
        "colour": "white (0) to dark blue (1) = cell count / row total",
        "classes": names,
        "matrix": matrix,
    });
    finish(path, legend, text)
}

pub(super) fn finish(
    path: &Path,
    legend: serde_json::Value,
    text_drawn: bool,
) -> Result<PlotOutput> {
    let legend_path = path.with_extension("legend.json");
    let bytes = serde_json::to_vec_pretty(&legend)
        .map_err(|e| Error::io("serialise JSON for", &legend_path, std::io::Error::other(e)))?;
    write_atomic(&legend_path, &bytes)?;
    Ok(PlotOutput {
        png: path.to_path_buf(),
        legend: legend_path,
        text_drawn,
    })
}

fn check_roc_input(curves: &[RocCurve], names: &[&str]) -> Result<()> {
    if curves.is_empty() {
        return Err(Error::invalid("curves", "is empty"));
    }
    if curves.len() != names.len() {
        return Err(Error::invalid(
            "class_names",
            format!("has {} names for {} curves", names.len(), curves.len()),
        ));
    }
    for (c, curve) in curves.iter().enumerate() {
        let in_unit = |v: &f64| v.is_finite() && (0.0..=1.0).contains(v);
        if curve.fpr.len() != curve.tpr.len()
            || curve.fpr.len() < 2
            || !curve.fpr.iter().all(in_unit)
            || !curve.tpr.iter().all(in_unit)
        {
            return Err(Error::invalid(
                "curves",
                format!("curve {c}: fpr and tpr must have the same length ≥ 2 and lie in [0, 1]"),
            ));
        }
    }
    Ok(())
}

/// Registers a font with plotters once per process; `Ok(false)` when none exists.
/// An explicitly named but unusable [`FONT_ENV`] file is an error rather than a
/// silent text-less plot, since the caller asked for that font.
pub(super) fn font_available() -> Result<bool> {
    static FOUND: OnceLock<std::result::Result<bool, String>> = OnceLock::new();
    let found = FOUND.get_or_init(|| {
        if let Some(p) = std::env::var_os(FONT_ENV).filter(|p| !p.is_empty()) {
            return register(Path::new(&p))
                .map(|()| true)
                .map_err(|reason| format!("{}: {reason}", Path::new(&p).display()));
        }
        Ok(FONT_CANDIDATES
            .iter()
            .any(|p| register(Path::new(p)).is_ok()))
    });
    found
        .clone()
        .map_err(|reason| Error::invalid(FONT_ENV, reason))
}

fn register(path: &Path) -> std::result::Result<(), String> {
    let bytes = std::fs::read(path).map_err(|e| e.to_string())?;
    // plotters keeps fonts for the life of the process and wants `'static` bytes;
    // this runs at most once per process (see `font_available`), so the leak is bounded.
    let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
    plotters::style::register_font(FAMILY, FontStyle::Normal, bytes)
        .map_err(|_| "not a TrueType/OpenType font".to_string())
}

pub(super) fn color(c: usize) -> RGBColor {
    PALETTE[c % PALETTE.len()]
}

pub(super) fn hex(c: RGBColor) -> String {
    format!("#{:02X}{:02X}{:02X}", c.0, c.1, c.2)
}

pub(super) fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

pub(super) fn font(size: f64) -> TextStyle<'static> {
    TextStyle::from((FAMILY, size).into_font()).color(&BLACK)
}

pub(super) fn draw_err(path: &Path, e: impl std::fmt::Display) -> Error {
    Error::io("draw", path, std::io::Error::other(e.to_string()))
}

/// Encodes an RGB8 buffer as PNG bytes.
pub(super) fn encode_png(buf: &[u8], (w, h): (u32, u32), path: &Path) -> Result<Vec<u8>> {
    use image::ImageEncoder;
    let mut out = Vec::new();
    image::codecs::png::PngEncoder::new(&mut out)
        .write_image(buf, w, h, image::ExtendedColorType::Rgb8)
        .map_err(|e| Error::io("encode PNG", path, std::io::Error::other(e)))?;
    Ok(out)
}

/// Draws the ROC figure and returns PNG bytes; `path` is only used in errors.
fn render_roc(
    curves: &[RocCurve],
    names: &[&str],
    text: bool,
    path: &Path,
    title: &str,
) -> Result<Vec<u8>> {
    let (w, h) = (760u32, 540u32);
    // Plot square; legend to its right.
    let (x0, y0, side) = (80i32, 40i32, 420i32);
    let (x1, y1) = (x0 + side, y0 + side);
    let px = |x: f64| x0 + (x * side as f64).round() as i32;
    let py = |y: f64| y1 - (y * side as f64).round() as i32;
    let mut buf = vec![255u8; (w * h * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut buf, (w, h)).into_drawing_area();
        let e = |e| draw_err(path, e);
        let grey = RGBColor(0xDD, 0xDD, 0xDD);
        for k in 0..=5 {
            let v = k as f64 / 5.0;
            root.draw(&PathElement::new(vec![(px(v), y0), (px(v), y1)], grey))
                .map_err(e)?;
            root.draw(&PathElement::new(vec![(x0, py(v)), (x1, py(v))], grey))
                .map_err(e)?;
            if text {
                let label = format!("{v:.1}");
                let below = font(14.0).pos(Pos::new(HPos::Center, VPos::Top));
                root.draw(&Text::new(label.clone(), (px(v), y1 + 6), below))
                    .map_err(e)?;
                let left = font(14.0).pos(Pos::new(HPos::Right, VPos::Center));
                root.draw(&Text::new(label, (x0 - 6, py(v)), left))
                    .map_err(e)?;
            }
        }
        // Chance diagonal, dashed: 20 short segments.
        let chance = RGBColor(0x88, 0x88, 0x88);
        for k in (0..40).step_by(2) {
            let (a, b) = (k as f64 / 40.0, (k + 1) as f64 / 40.0);
            root.draw(&PathElement::new(
                vec![(px(a), py(a)), (px(b), py(b))],
                chance,
            ))
            .map_err(e)?;
        }
        root.draw(&Rectangle::new([(x0, y0), (x1, y1)], BLACK.stroke_width(1)))
            .map_err(e)?;
        for (c, curve) in curves.iter().enumerate() {
            let points: Vec<(i32, i32)> = curve
                .fpr
                .iter()
                .zip(&curve.tpr)
                .map(|(&x, &y)| (px(x), py(y)))
                .collect();
            root.draw(&PathElement::new(points, color(c).stroke_width(2)))
                .map_err(e)?;
        }
        // Legend: one swatch per class, top to bottom in class order.
        let lx = x1 + 24;
        for (c, (curve, name)) in curves.iter().zip(names).enumerate() {
            let y = y0 + 12 + 26 * c as i32;
            root.draw(&PathElement::new(
                vec![(lx, y), (lx + 28, y)],
                color(c).stroke_width(3),
            ))
            .map_err(e)?;
            if text {
                let style = font(14.0).pos(Pos::new(HPos::Left, VPos::Center));
                let label = format!("{name} (AUC {:.3})", curve.auc());
                root.draw(&Text::new(label, (lx + 36, y), style))
                    .map_err(e)?;
            }
        }
        if text {
            let centre = font(16.0).pos(Pos::new(HPos::Center, VPos::Center));
            root.draw(&Text::new(
                "False positive rate",
                ((x0 + x1) / 2, y1 + 40),
                centre.clone(),
            ))
            .map_err(e)?;
            let vertical = centre.clone().transform(FontTransform::Rotate270);
            root.draw(&Text::new(
                "True positive rate",
                (x0 - 55, (y0 + y1) / 2),
                vertical,
            ))
            .map_err(e)?;
            root.draw(&Text::new(
                title.to_owned(),
                ((x0 + x1) / 2, y0 / 2),
                centre,
            ))
            .map_err(e)?;
        }
        root.present().map_err(e)?;
    }
    encode_png(&buf, (w, h), path)
}

/// Draws the confusion-matrix figure and returns PNG bytes.
fn render_confusion(
    matrix: &[Vec<usize>],
    names: &[&str],
    text: bool,
    path: &Path,
) -> Result<Vec<u8>> {
    let n = names.len() as i32;
    let cell = 100i32;
    // Room for row names on the left and column names below.
    let (x0, y0) = (170i32, 60i32);
    let (w, h) = ((x0 + n * cell + 30) as u32, (y0 + n * cell + 100) as u32);
    let mut buf = vec![255u8; (w * h * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut buf, (w, h)).into_drawing_area();
        let e = |e| draw_err(path, e);
        for (t, row) in matrix.iter().enumerate() {
            let total: usize = row.iter().sum();
            for (p, &count) in row.iter().enumerate() {
                let share = if total == 0 {
                    0.0
                } else {
                    count as f64 / total as f64
                };
                // White → dark blue (8, 48, 107) in proportion to the row share.
                let mix =
                    |hi: u8, lo: u8| (hi as f64 + (lo as f64 - hi as f64) * share).round() as u8;
                let fill = RGBColor(mix(255, 8), mix(255, 48), mix(255, 107));
                let (cx, cy) = (x0 + p as i32 * cell, y0 + t as i32 * cell);
                root.draw(&Rectangle::new(
                    [(cx, cy), (cx + cell, cy + cell)],
                    fill.filled(),
                ))
                .map_err(e)?;
                root.draw(&Rectangle::new(
                    [(cx, cy), (cx + cell, cy + cell)],
                    RGBColor(0xBB, 0xBB, 0xBB).stroke_width(1),
                ))
                .map_err(e)?;
                if text {
                    let ink = if share > 0.5 { WHITE } else { BLACK };
                    let style = font(18.0)
                        .color(&ink)
                        .pos(Pos::new(HPos::Center, VPos::Center));
                    root.draw(&Text::new(
                        count.to_string(),
                        (cx + cell / 2, cy + cell / 2 - 10),
                        style.clone(),
                    ))
                    .map_err(e)?;
                    let small = font(13.0)
                        .color(&ink)
                        .pos(Pos::new(HPos::Center, VPos::Center));
                    root.draw(&Text::new(
                        format!("{:.0}%", share * 100.0),
                        (cx + cell / 2, cy + cell / 2 + 14),
                        small,
                    ))
                    .map_err(e)?;
                }
            }
        }
        if text {
            for (k, name) in names.iter().enumerate() {
                let mid = k as i32 * cell + cell / 2;
                let right = font(13.0).pos(Pos::new(HPos::Right, VPos::Center));
                root.draw(&Text::new(name.to_string(), (x0 - 8, y0 + mid), right))
                    .map_err(e)?;
                let below = font(13.0).pos(Pos::new(HPos::Center, VPos::Top));
                root.draw(&Text::new(
                    name.to_string(),
                    (x0 + mid, y0 + n * cell + 8),
                    below,
                ))
                .map_err(e)?;
            }
            let centre = font(16.0).pos(Pos::new(HPos::Center, VPos::Center));
            root.draw(&Text::new(
                "Predicted class",
                (x0 + n * cell / 2, y0 + n * cell + 50),
                centre.clone(),
            ))
            .map_err(e)?;
            root.draw(&Text::new(
                "Rows: true class  ·  colour: share of the row",
                (x0 + n * cell / 2, y0 / 2),
                centre,
            ))
            .map_err(e)?;
        }
        root.present().map_err(e)?;
    }
    encode_png(&buf, (w, h), path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn curves() -> Vec<RocCurve> {
        vec![
            RocCurve {
                fpr: vec![0.0, 0.0, 0.5, 1.0],
                tpr: vec![0.0, 0.5, 1.0, 1.0],
                thresholds: vec![f64::INFINITY, 0.9, 0.5, 0.1],
            },
            RocCurve {
                fpr: vec![0.0, 1.0],
                tpr: vec![0.0, 1.0],
                thresholds: vec![f64::INFINITY, 0.3],
            },
        ]
    }

    fn decode(bytes: &[u8]) -> image::RgbImage {
        image::load_from_memory(bytes).unwrap().to_rgb8()
    }

    #[test]
    fn text_less_rendering_draws_the_curves() {
        // The no-font path must work on any machine.
        let png = render_roc(&curves(), &["a", "b"], false, Path::new("x.png"), "t").unwrap();
        let img = decode(&png);
        assert_eq!(img.dimensions(), (760, 540));
        let first = PALETTE[0];
        assert!(img.pixels().any(|p| p.0 == [first.0, first.1, first.2]));
        let png = render_confusion(
            &[vec![3, 1], vec![0, 4]],
            &["a", "b"],
            false,
            Path::new("x.png"),
        )
        .unwrap();
        let img = decode(&png);
        // Cell (1,1) holds its whole row: the darkest blue.
        assert_eq!(img.get_pixel(170 + 150, 60 + 150).0, [8, 48, 107]);
        // Cell (1,0) is empty: white.
        assert_eq!(img.get_pixel(170 + 50, 60 + 150).0, [255, 255, 255]);
    }

    #[test]
    fn public_plots_write_png_and_legend() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("roc.png");
        let out = plot_roc_curves(&p, &curves(), &["PML_RARA", "NPM1"]).unwrap();
        assert_eq!(out.legend, dir.path().join("roc.legend.json"));
        assert_eq!(decode(&std::fs::read(&p).unwrap()).dimensions(), (760, 540));
        let legend: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&out.legend).unwrap()).unwrap();
        assert_eq!(legend["series"][1]["class"], "NPM1");
        assert_eq!(legend["series"][0]["auc"], 0.875);
        assert_eq!(legend["text_drawn"], out.text_drawn);
        let p = dir.path().join("cm.png");
        let out = plot_confusion_matrix(&p, &[vec![3, 1], vec![0, 4]], &["a", "b"]).unwrap();
        assert!(p.exists() && out.legend.exists());
        // Only the four outputs, no temporary files left behind.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 4);
    }

    #[test]
    fn bad_plot_input_names_the_argument() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.png");
        let err = plot_roc_curves(&p, &curves(), &["a"]).unwrap_err();
        assert!(err.to_string().contains("`class_names`"), "{err}");
        let mut bad = curves();
        bad[0].tpr[1] = f64::NAN;
        let err = plot_roc_curves(&p, &bad, &["a", "b"]).unwrap_err();
        assert!(err.to_string().contains("`curves`"), "{err}");
        let err = plot_confusion_matrix(&p, &[vec![1, 2]], &["a", "b"]).unwrap_err();
        assert!(err.to_string().contains("`matrix`"), "{err}");
        let err = plot_roc_curves(&dir.path().join("no/such/dir.png"), &curves(), &["a", "b"])
            .unwrap_err();
        assert!(err.to_string().contains("no/such"), "{err}");
    }
}
