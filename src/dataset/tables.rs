//! Reading the two CSV tables of the layout (`metadata.csv`, `cells.csv`).
//!
//! Both are plain comma-separated files with a header row; columns are found by
//! name so extra columns may sit anywhere. Fields are trimmed and a UTF-8 byte
//! order mark is tolerated because spreadsheet exports add both. Rows are kept
//! with their line number so every issue can say which line is wrong.
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// One data row of a table with the 1-based line it starts on.
#[derive(Debug, Clone)]
pub(crate) struct Row {
    pub line: u64,
    pub fields: Vec<String>,
}

impl Row {
    /// The trimmed field in column `col`, or `None` when this row is too short.
    pub fn get(&self, col: usize) -> Option<&str> {
        self.fields.get(col).map(String::as_str)
    }
}

/// A row that could not be read (e.g. invalid UTF-8), with its line and why.
#[derive(Debug, Clone)]
pub(crate) struct BadRow {
    pub line: u64,
    pub reason: String,
}

/// A parsed table: header names and the data rows in file order.
#[derive(Debug)]
pub(crate) struct Table {
    pub path: PathBuf,
    pub headers: Vec<String>,
    pub rows: Vec<std::result::Result<Row, BadRow>>,
}

impl Table {
    /// Reads `path`; fails when the file cannot be opened, has no header row or
    /// lacks one of the `required` columns (the message lists what it has).
    pub fn read(path: &Path, required: &[&str]) -> Result<Table> {
        let file = std::fs::File::open(path).map_err(|e| Error::io("cannot open", path, e))?;
        let mut reader = ::csv::ReaderBuilder::new()
            .has_headers(true)
            .trim(::csv::Trim::All)
            // Short or long rows are reported per row rather than failing the whole file.
            .flexible(true)
            .from_reader(std::io::BufReader::new(file));

        let headers: Vec<String> = reader
            .headers()
            .map_err(|e| dataset_error(path, format!("cannot read the header row: {e}")))?
            .iter()
            .map(str::to_owned)
            .collect();
        if headers.iter().all(String::is_empty) {
            return Err(dataset_error(
                path,
                format!(
                    "empty file: no header row; expected the column(s) {}",
                    quote_list(required)
                ),
            ));
        }
        let missing: Vec<&str> = required
            .iter()
            .copied()
            .filter(|name| !headers.iter().any(|h| h == name))
            .collect();
        if !missing.is_empty() {
            return Err(dataset_error(
                path,
                format!(
                    "missing required column(s) {}; the header has {}",
                    quote_list(&missing),
                    quote_list(&headers)
                ),
            ));
        }

        let mut rows = Vec::new();
        let mut record = ::csv::StringRecord::new();
        loop {
            match reader.read_record(&mut record) {
                Ok(false) => break,
                Ok(true) => {
                    let line = record.position().map_or(0, ::csv::Position::line);
                    // A row of empty fields (e.g. ",,") carries nothing; spreadsheets leave them.
                    if record.iter().all(str::is_empty) {
                        continue;
                    }
                    rows.push(Ok(Row {
                        line,
                        fields: record.iter().map(str::to_owned).collect(),
                    }));
                }
                Err(e) => {
                    let line = e.position().map_or(0, ::csv::Position::line);
                    match e.kind() {
                        // Invalid UTF-8 spoils one row only; the reader continues after it.
                        ::csv::ErrorKind::Utf8 { .. } => rows.push(Err(BadRow {
                            line,
                            reason: "row is not valid UTF-8".to_owned(),
                        })),
                        _ => {
                            return Err(dataset_error(
                                path,
                                format!("cannot read line {line}: {e}"),
                            ))
                        }
                    }
                }
            }
        }
        Ok(Table {
            path: path.to_owned(),
            headers,
            rows,
        })
    }

    /// Index of the column named `name`; the first wins if a name repeats.
    pub fn column(&self, name: &str) -> Option<usize> {
        self.headers.iter().position(|h| h == name)
    }
}

fn dataset_error(path: &Path, reason: impl Into<String>) -> Error {
    Error::Dataset {
        path: path.to_owned(),
        reason: reason.into(),
    }
}

/// `a`, `b`, `c` for messages.
pub(crate) fn quote_list<S: AsRef<str>>(items: &[S]) -> String {
    items
        .iter()
        .map(|s| format!("`{}`", s.as_ref()))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, bytes).unwrap();
        p
    }

    #[test]
    fn columns_by_name_bom_and_trimming() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(
            dir.path(),
            "m.csv",
            b"\xef\xbb\xbfage, bag_label ,patient_id\n 40 , NPM1 , P1 \n\n,,\n50,control,P2\n",
        );
        let t = Table::read(&p, &["patient_id", "bag_label"]).unwrap();
        let (pid, lab) = (
            t.column("patient_id").unwrap(),
            t.column("bag_label").unwrap(),
        );
        let rows: Vec<_> = t.rows.iter().map(|r| r.as_ref().unwrap()).collect();
        assert_eq!(rows.len(), 2);
        assert_eq!(
            (rows[0].get(pid), rows[0].get(lab)),
            (Some("P1"), Some("NPM1"))
        );
        assert_eq!(rows[0].line, 2);
        assert_eq!(rows[1].line, 5);
    }

    #[test]
    fn missing_columns_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(dir.path(), "m.csv", b"patient,label\nP1,NPM1\n");
        let e = Table::read(&p, &["patient_id", "bag_label"]).unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.contains("`patient_id`") && msg.contains("`bag_label`"),
            "{msg}"
        );
        assert!(msg.contains("`patient`") && msg.contains("m.csv"), "{msg}");

        let p = write(dir.path(), "empty.csv", b"");
        let msg = Table::read(&p, &["patient_id"]).unwrap_err().to_string();
        assert!(msg.contains("empty file"), "{msg}");
    }

    #[test]
    fn invalid_utf8_spoils_one_row() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(
            dir.path(),
            "m.csv",
            b"patient_id,bag_label\nP\xff1,NPM1\nP2,NPM1\n",
        );
        let t = Table::read(&p, &["patient_id", "bag_label"]).unwrap();
        assert_eq!(t.rows.len(), 2);
        let bad = t.rows[0].as_ref().unwrap_err();
        assert_eq!(bad.line, 2);
        assert_eq!(t.rows[1].as_ref().unwrap().get(0), Some("P2"));
    }
}
