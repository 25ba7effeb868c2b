//! One self-contained HTML page for the person who acts on a result — a
//! cytologist looks at cells, not JSON. Per bag (patient): the predicted
//! subtype with every class's probability as a bar; the top-k cells for the
//! predicted class and for each other class as image tiles with their
//! attention; the whole bag as a grid sorted by attention, with a toggle per
//! class (CSS only: each cell carries its rank for every class); the model's
//! provenance (checkpoint hashes and methods, precision, device, heads of an
//! ensemble) and the standing warning that this is research software. Cell
//! images are embedded as JPEG data URIs (each once per grid, once per tile),
//! so the file can be mailed or archived as it is.
use std::fmt::Write as _;

use base64::Engine as _;

use crate::bag::Bag;
use crate::cell_image::CellImage;
use crate::error::{Error, Result};
use crate::inference::{BagPrediction, Session};

/// Side in pixels of the embedded cell tiles (cells are scaled to it).
const TILE: u32 = 96;
/// JPEG quality of the tiles: ~3 KB a cell, a fifth of PNG's size.
const JPEG_QUALITY: u8 = 90;

/// One bag of the page: its name (the patient, the folder), its cells and
/// what the session said of them.
pub struct PageBag<'a> {
    pub name: String,
    pub bag: &'a Bag,
    pub prediction: &'a BagPrediction,
}

/// Text made safe inside HTML elements and attribute values.
pub(crate) fn escape(t: &str) -> String {
    t.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// A cell as a JPEG data URI, scaled to [`TILE`] pixels on its longer side.
fn data_uri(cell: &CellImage) -> Result<String> {
    let img = image::RgbImage::from_raw(cell.width(), cell.height(), cell.rgb().to_vec())
        .ok_or_else(|| Error::invalid("cell", "pixel buffer does not match its size"))?;
    let scale = TILE as f64 / cell.width().max(cell.height()) as f64;
    let (w, h) = (
        ((cell.width() as f64 * scale).round() as u32).max(1),
        ((cell.height() as f64 * scale).round() as u32).max(1),
    );
    let img = image::imageops::resize(&img, w, h, image::imageops::FilterType::Triangle);
    let mut jpeg = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut jpeg, JPEG_QUALITY)
        .encode_image(&img)
        .map_err(|e| Error::invalid("cell", format!("cannot encode JPEG: {e}")))?;
    Ok(format!(
        "data:image/jpeg;base64,{}",
        base64::engine::general_purpose::STANDARD.encode(jpeg)
    ))
}

const STYLE: &str = "body{font-family:sans-serif;max-width:1200px;margin:1.5em auto;padding:0 1em;color:#222}\
.warn{background:#fff3cd;border:1px solid #e0c36a;padding:.6em 1em;border-radius:4px}\
.prov{font-size:.85em;color:#444}.prov td{padding:1px 8px 1px 0;vertical-align:top}\
.prov code{word-break:break-all}\
section.bag{border-top:2px solid #ccc;margin-top:1.5em;padding-top:.5em}\
.probs{display:grid;grid-template-columns:14em 1fr 4em;gap:3px 8px;align-items:center;max-width:700px}\
.bar{background:#eee;height:14px;border-radius:3px}.bar span{display:block;height:100%;background:#7a9cc6;border-radius:3px}\
.pred .bar span{background:#c0504d}.pred{font-weight:bold}\
.tiles{display:flex;flex-wrap:wrap;gap:6px;margin:.3em 0 1em}\
figure{margin:0;text-align:center;font-size:11px;color:#333}figure img{display:block;width:96px;height:96px;object-fit:contain;border:1px solid #ddd;background:#fafafa}\
.grid{display:flex;flex-wrap:wrap;gap:4px}.grid figure .a{display:none}\
.toggle label{margin-right:1em;cursor:pointer}h2 small{font-weight:normal;color:#555}";

/// The page for `bags` classified by `session`, with `top_k` tiles per class.
pub fn page(session: &Session, bags: &[PageBag<'_>], top_k: usize) -> Result<String> {
    let mut s = String::new();
    let _ = write!(
        s,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <title>AML subtype classification ({} bag{})</title><style>{STYLE}",
        bags.len(),
        if bags.len() == 1 { "" } else { "s" }
    );
    // The grid's order and visible attention follow the checked class.
    let classes = session.classes();
    for b in 0..bags.len() {
        for c in 0..classes.len() {
            let _ = write!(
                s,
                "#b{b}c{c}:checked~.grid figure{{order:var(--o{c})}}#b{b}c{c}:checked~.grid .a{c}{{display:inline}}"
            );
        }
    }
    s.push_str(
        "</style></head><body>\n<h1>AML genetic subtype from single white-cell images</h1>\n",
    );
    s.push_str(
        "<p class=\"warn\"><b>Research software.</b> libamlmil is not a medical device and is \
         not validated for diagnosis. A qualified cytologist must review the cells and confirm \
         any subtype by the established genetic methods.</p>\n",
    );
    provenance(&mut s, session);
    for (b, page_bag) in bags.iter().enumerate() {
        bag_section(&mut s, b, page_bag, classes, top_k)?;
    }
    s.push_str("</body></html>\n");
    Ok(s)
}

fn provenance(s: &mut String, session: &Session) {
    let [enc_sha, mil_sha] = session.checksums();
    let enc = session.encoder_manifest();
    let mil = session.mil_manifest();
    let rows = [
        (
            "encoder",
            format!(
                "{} ({}, {} px) <code>{}</code>",
                enc.architecture.name(),
                escape(&enc.provenance.method),
                enc.input_size,
                enc_sha.unwrap_or("no checksum")
            ),
        ),
        (
            "attention-MIL",
            format!(
                "{}, {} head{} <code>{}</code>",
                escape(&mil.provenance.method),
                mil.head_count(),
                if mil.head_count() == 1 {
                    ""
                } else {
                    "s (ensemble: probabilities and attention are the heads' means)"
                },
                mil_sha.unwrap_or("no checksum")
            ),
        ),
        (
            "run on",
            format!(
                "{}, {}",
                crate::device::device_name(session.device()),
                session.precision().name()
            ),
        ),
        (
            "library",
            format!(
                "libamlmil {}, libtorch {}",
                crate::VERSION,
                crate::LIBTORCH_VERSION
            ),
        ),
    ];
    s.push_str("<table class=\"prov\">");
    for (k, v) in rows {
        let _ = write!(s, "<tr><td>{k}</td><td>{v}</td></tr>");
    }
    s.push_str("</table>\n");
}

/// The `k` cells with the most attention for class `c`.
fn ranked(p: &BagPrediction, c: usize, k: usize) -> Result<Vec<crate::inference::RankedCell>> {
    p.top_cells(c, k)
        .ok_or_else(|| Error::invalid("class", format!("{c} is not a class of the result")))
}

fn bag_section(
    s: &mut String,
    b: usize,
    page_bag: &PageBag<'_>,
    classes: &[String],
    top_k: usize,
) -> Result<()> {
    let p = page_bag.prediction;
    let n = p.num_cells();
    let index: std::collections::HashMap<u64, usize> = page_bag
        .bag
        .ids()
        .iter()
        .enumerate()
        .map(|(i, &id)| (id, i))
        .collect();
    let mut uris = Vec::with_capacity(n);
    for id in &p.cell_ids {
        let i = *index.get(id).ok_or_else(|| {
            Error::invalid(
                "bag",
                format!("cell {id} of the result is not in bag `{}`", page_bag.name),
            )
        })?;
        uris.push(data_uri(&page_bag.bag.cells()[i])?);
    }
    let name = |c: usize| escape(crate::classes::display_name(&classes[c]));
    let _ = write!(
        s,
        "<section class=\"bag\"><h2>{} <small>{n} cells</small> — {} <small>(p = {:.2})</small></h2>\n<div class=\"probs\">",
        escape(&page_bag.name),
        name(p.predicted),
        p.probabilities[p.predicted]
    );
    for (c, prob) in p.probabilities.iter().enumerate() {
        let pred = if c == p.predicted {
            " class=\"pred\""
        } else {
            ""
        };
        let _ = write!(
            s,
            "<div{pred}>{}</div><div{pred}><div class=\"bar\"><span style=\"width:{:.1}%\"></span></div></div><div{pred}>{prob:.3}</div>",
            name(c),
            100.0 * prob
        );
    }
    s.push_str("</div>\n");
    let mut order: Vec<usize> = vec![p.predicted];
    order.extend((0..classes.len()).filter(|&c| c != p.predicted));
    for c in order {
        let _ = write!(
            s,
            "<h3>Cells with the most attention for {}{}</h3><div class=\"tiles\">",
            name(c),
            if c == p.predicted {
                " (the predicted subtype)"
            } else {
                ""
            }
        );
        for t in ranked(p, c, top_k)? {
            let _ = write!(
                s,
                "<figure><img src=\"{}\" alt=\"cell {}\"><figcaption>cell {} · {:.3}</figcaption></figure>",
                uris[t.index], t.cell_id, t.cell_id, t.attention
            );
        }
        s.push_str("</div>\n");
    }
    // The whole bag: every cell once, its rank for every class as a CSS variable.
    let _ = write!(s, "<h3>The whole bag, sorted by attention for</h3>");
    let mut ranks = vec![vec![0usize; n]; classes.len()];
    for (c, r) in ranks.iter_mut().enumerate() {
        for (rank, t) in ranked(p, c, n)?.iter().enumerate() {
            r[t.index] = rank;
        }
    }
    for c in 0..classes.len() {
        let checked = if c == p.predicted { " checked" } else { "" };
        let _ = write!(
            s,
            "<input type=\"radio\" name=\"b{b}\" id=\"b{b}c{c}\"{checked}><label for=\"b{b}c{c}\">{}</label>",
            name(c)
        );
    }
    s.push_str("<div class=\"grid\">");
    for i in 0..n {
        let vars: String = (0..classes.len())
            .map(|c| format!("--o{c}:{};", ranks[c][i]))
            .collect();
        let atts: String = (0..classes.len())
            .map(|c| {
                format!(
                    "<span class=\"a a{c}\"> · {:.3}</span>",
                    p.attention[c * n + i]
                )
            })
            .collect();
        let _ = write!(
            s,
            "<figure style=\"{vars}\"><img src=\"{}\" alt=\"cell {}\"><figcaption>cell {}{atts}</figcaption></figure>",
            uris[i], p.cell_ids[i], p.cell_ids[i]
        );
    }
    s.push_str("</div></section>\n");
    Ok(())
}
