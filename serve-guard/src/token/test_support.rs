//! What the token modules' tests share: two valid tokens and token files with a given mode.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

pub const A: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
pub const B: &str = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";

/// A fresh folder, removed when dropped.
pub fn tmpdir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("sg-token-test-")
        .tempdir()
        .unwrap()
}

/// Writes `text` to `path` with permissions `mode`.
pub fn write_mode(path: &Path, text: &str, mode: u32) {
    fs::write(path, text).unwrap();
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}
