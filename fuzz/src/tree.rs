//! Dataset folder trees generated from fuzz input: `metadata.csv` and `cells.csv`
//! as rows over a small vocabulary (the real column names, patient ids, bag
//! labels, image names) or as raw bytes, and `data/<label>/<patient>/` folders of
//! valid, truncated, oversized or garbage images. Names from the input are cut
//! down to one safe path component, so a tree never reaches outside its folder.
use std::io::Cursor;
use std::path::Path;

use amlmil::classes::BAG_LABELS;
use arbitrary::Arbitrary;

/// A cohort folder as the fuzzer describes it.
#[derive(Debug, Arbitrary)]
pub struct Tree {
    /// `None`: no `metadata.csv`.
    pub metadata: Option<Table>,
    pub cells: Option<Table>,
    /// Whether `data/` exists (the folders below are only written when it does).
    pub data_dir: bool,
    pub folders: Vec<Folder>,
    /// Open with image decoding on.
    pub check_images: bool,
}

#[derive(Debug, Arbitrary)]
pub enum Table {
    Raw(Vec<u8>),
    Rows(Vec<Column>, Vec<Vec<Field>>),
}

#[derive(Debug, Arbitrary)]
pub enum Column {
    PatientId,
    BagLabel,
    Image,
    CellType,
    Annotated,
    Other(String),
}

#[derive(Debug, Arbitrary)]
pub enum Field {
    Patient(u8),
    Label(u8),
    Image(u8),
    Flag(u8),
    Text(String),
    Empty,
}

#[derive(Debug, Arbitrary)]
pub struct Folder {
    pub label: Label,
    pub patient: Label,
    pub files: Vec<Entry>,
}

/// A known name (bag label or patient id) or any other component.
#[derive(Debug, Arbitrary)]
pub enum Label {
    Known(u8),
    Other(String),
}

#[derive(Debug, Arbitrary)]
pub struct Entry {
    pub name: EntryName,
    pub content: Content,
}

#[derive(Debug, Arbitrary)]
pub enum EntryName {
    /// `image_<k>.<ext>` with one of the accepted extensions (or `.npy`).
    Image {
        k: u8,
        ext: u8,
    },
    /// `._image_<k>.tif`, as macOS leaves them.
    Hidden(u8),
    Other(String),
}

#[derive(Debug, Arbitrary)]
pub enum Content {
    /// A valid image of up to 64 × 64 px in format `format % 3` (PNG, TIFF, JPEG).
    Image {
        w: u8,
        h: u8,
        format: u8,
    },
    /// A valid image cut after `keep` bytes.
    Truncated {
        format: u8,
        keep: u16,
    },
    /// A PNG header claiming `w` × `h` (× 1000) px.
    Bomb {
        w: u8,
        h: u8,
    },
    Raw(Vec<u8>),
    /// A folder where a file is expected.
    Folder,
}

const FORMATS: [image::ImageFormat; 3] = [
    image::ImageFormat::Png,
    image::ImageFormat::Tiff,
    image::ImageFormat::Jpeg,
];
const EXTENSIONS: [&str; 7] = ["tif", "tiff", "png", "jpg", "jpeg", "TIF", "npy"];

/// One path component built from fuzz text: `[A-Za-z0-9._-]`, at most 24
/// characters, never `.` or `..` or empty.
pub fn component(s: &str) -> String {
    let c: String = s
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        .take(24)
        .collect();
    if c.is_empty() || c == "." || c == ".." {
        "x".into()
    } else {
        c
    }
}

fn patient(n: u8) -> String {
    format!("P{}", n % 8)
}

fn label(n: u8) -> &'static str {
    BAG_LABELS.get(n as usize % 6).copied().unwrap_or("unknown")
}

fn label_name(l: &Label, patient_id: bool) -> String {
    match (l, patient_id) {
        (Label::Known(n), true) => patient(*n),
        (Label::Known(n), false) => label(*n).into(),
        (Label::Other(s), _) => component(s),
    }
}

fn field(f: &Field) -> String {
    match f {
        Field::Patient(n) => patient(*n),
        Field::Label(n) => label(*n).into(),
        Field::Image(k) => format!("image_{}.tif", k % 8),
        Field::Flag(n) => (n % 3).to_string(),
        Field::Text(s) => s.clone(),
        Field::Empty => String::new(),
    }
}

fn table(t: &Table) -> Vec<u8> {
    match t {
        Table::Raw(b) => b.clone(),
        Table::Rows(columns, rows) => {
            let header: Vec<String> = columns
                .iter()
                .map(|c| match c {
                    Column::PatientId => "patient_id".into(),
                    Column::BagLabel => "bag_label".into(),
                    Column::Image => "image".into(),
                    Column::CellType => "cell_type".into(),
                    Column::Annotated => "annotated".into(),
                    Column::Other(s) => s.clone(),
                })
                .collect();
            let mut out = header.join(",");
            for row in rows.iter().take(64) {
                out.push('\n');
                out.push_str(&row.iter().map(field).collect::<Vec<_>>().join(","));
            }
            out.into_bytes()
        }
    }
}

/// A small valid image (`w`, `h` taken modulo 64, plus 1) in `FORMATS[format % 3]`.
pub fn image_bytes(w: u8, h: u8, format: u8) -> Vec<u8> {
    let (w, h) = (u32::from(w % 64) + 1, u32::from(h % 64) + 1);
    let img = image::RgbImage::from_fn(w, h, |x, y| {
        image::Rgb([(x * 4) as u8, (y * 4) as u8, ((x + y) * 2) as u8])
    });
    let mut out = Cursor::new(Vec::new());
    image::DynamicImage::ImageRgb8(img)
        .write_to(&mut out, FORMATS[format as usize % FORMATS.len()])
        .expect("encoding a small RGB image");
    out.into_inner()
}

fn entry_name(n: &EntryName) -> String {
    match n {
        EntryName::Image { k, ext } => {
            format!(
                "image_{}.{}",
                k % 16,
                EXTENSIONS[*ext as usize % EXTENSIONS.len()]
            )
        }
        EntryName::Hidden(k) => format!("._image_{}.tif", k % 16),
        EntryName::Other(s) => component(s),
    }
}

fn write_entry(dir: &Path, e: &Entry) -> std::io::Result<()> {
    let path = dir.join(entry_name(&e.name));
    let bytes = match &e.content {
        Content::Image { w, h, format } => image_bytes(*w, *h, *format),
        Content::Truncated { format, keep } => {
            let mut b = image_bytes(7, 5, *format);
            b.truncate(*keep as usize % (b.len() + 1));
            b
        }
        Content::Bomb { w, h } => {
            crate::png_header::png_declaring(u32::from(*w) * 1000 + 1, u32::from(*h) * 1000 + 1)
        }
        Content::Raw(b) => b.clone(),
        Content::Folder => return std::fs::create_dir_all(&path),
    };
    std::fs::write(path, bytes)
}

impl Tree {
    /// Writes the tree under `root` (an empty folder). Caps the size so one input
    /// stays a few milliseconds: 8 folders of 8 entries.
    pub fn write(&self, root: &Path) -> std::io::Result<()> {
        if let Some(t) = &self.metadata {
            std::fs::write(root.join("metadata.csv"), table(t))?;
        }
        if let Some(t) = &self.cells {
            std::fs::write(root.join("cells.csv"), table(t))?;
        }
        if !self.data_dir {
            return Ok(());
        }
        let data = root.join("data");
        std::fs::create_dir_all(&data)?;
        for f in self.folders.iter().take(8) {
            let dir = data
                .join(label_name(&f.label, false))
                .join(label_name(&f.patient, true));
            // A name used before as a file: that folder is simply not written.
            if std::fs::create_dir_all(&dir).is_err() {
                continue;
            }
            for e in f.files.iter().take(8) {
                // Two entries of one name, one a folder: keep the first.
                let _ = write_entry(&dir, e);
            }
        }
        Ok(())
    }
}
