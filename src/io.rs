//! Crash-safe file writing: every checkpoint, feature cache, report, figure and
//! CSV the library writes goes through [`write_atomic`], so a reader never sees
//! half a file and a crash (or SIGKILL) leaves the previous file intact.
use std::io::Write;
use std::path::Path;

use crate::error::{Error, Result};

/// Writes `data` to `path` through a temporary sibling (`.<name>.tmp-<pid>`),
/// flushed to disk, then renamed over `path`. On failure the temporary file is
/// removed and the error names `path`.
pub fn write_atomic(path: &Path, data: &[u8]) -> Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let file_name = path
        .file_name()
        .ok_or_else(|| Error::invalid("path", format!("{} has no file name", path.display())))?;
    let tmp = dir.join(format!(
        ".{}.tmp-{}",
        file_name.to_string_lossy(),
        std::process::id()
    ));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    result.map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        Error::io("cannot write", path, e)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_atomic_replaces_and_leaves_no_temp() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let p = dir.join("x.json");
        write_atomic(&p, b"one").unwrap();
        write_atomic(&p, b"two").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"two");
        let names: Vec<_> = std::fs::read_dir(dir).unwrap().collect();
        assert_eq!(names.len(), 1);
        let err = write_atomic(&dir.join("missing/x.json"), b"x").unwrap_err();
        assert!(err.to_string().contains("missing"), "{err}");
    }
}
