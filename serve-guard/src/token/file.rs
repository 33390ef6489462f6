//! The token file: one token a line, `#` comments and blank lines ignored; the first token is the
//! primary. It is the source of truth: the agent follows it on disk, config management or a
//! Kubernetes Secret may own it, and the CLI edits it in place (keeping comments and order).
//!
//! Modes: the file is accepted when nobody but its owner (and its group, read-only) can read it:
//! 0600 and 0640 for a file serve-guard may edit, 0400 and 0440 for one managed elsewhere
//! (the CLI refuses to edit a file without the owner's write bit).

use std::fs::{self, File};
use std::io::{self, Read};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

use zeroize::Zeroizing;

use super::TokenError;
use crate::store::fsutil;
use serve_guard_proxy::token::{Token, TokenSet};

/// Modes a token file may have (see the module doc).
pub const ACCEPTED_MODES: [u32; 4] = [0o400, 0o440, 0o600, 0o640];
/// Mode of a token file serve-guard creates.
pub const NEW_FILE_MODE: u32 = 0o600;
/// The owner's write bit: without it the file is managed elsewhere.
const OWNER_WRITE: u32 = 0o200;
/// Mode of the token's directory when serve-guard creates it.
const DIR_MODE: u32 = 0o700;
/// The token file is read whole; anything bigger is not a token file.
const MAX_FILE_BYTES: u64 = 64 * 1024;
/// Starts a comment, on its own line or after a token (never part of a base64url token).
const COMMENT: char = '#';

/// Checks a token file's permission bits.
pub fn check_mode(path: &Path, mode: u32) -> Result<(), TokenError> {
    // Fail closed rather than fix and warn: a token others could read may already be leaked.
    if ACCEPTED_MODES.contains(&(mode & 0o7777)) {
        Ok(())
    } else {
        Err(TokenError::InsecurePermissions {
            path: path.to_owned(),
            mode: mode & 0o7777,
        })
    }
}

/// The token on a line, if the line holds one (comments and blanks do not).
fn token_text(line: &str) -> Option<&str> {
    let text = line.split(COMMENT).next().unwrap_or_default().trim();
    (!text.is_empty()).then_some(text)
}

/// Parses the text of a token file. Errors name the line, never its content.
pub fn parse(path: &Path, text: &str) -> Result<TokenSet, TokenError> {
    let mut tokens = Vec::new();
    for (index, line) in text.lines().enumerate() {
        let Some(candidate) = token_text(line) else {
            continue;
        };
        let token = Token::parse(candidate).map_err(|reason| TokenError::BadLine {
            path: path.to_owned(),
            line: index + 1,
            reason,
        })?;
        tokens.push(token);
    }
    if tokens.is_empty() {
        return Err(TokenError::Empty {
            path: path.to_owned(),
        });
    }
    Ok(TokenSet::new(tokens))
}

/// Reads a token file whole after checking it is a regular file with an accepted mode.
fn read_text(path: &Path) -> Result<Zeroizing<String>, TokenError> {
    let io_err = |op, source| TokenError::Io {
        path: path.to_owned(),
        op,
        source,
    };
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(TokenError::Missing {
                path: path.to_owned(),
            });
        }
        Err(e) => return Err(io_err("open", e)),
    };
    // The opened file's metadata: a symlink (a Kubernetes Secret's `..data` link) is followed.
    let meta = file.metadata().map_err(|e| io_err("stat", e))?;
    if !meta.is_file() {
        return Err(TokenError::NotAFile {
            path: path.to_owned(),
        });
    }
    check_mode(path, meta.permissions().mode())?;
    let mut text = Zeroizing::new(String::new());
    file.take(MAX_FILE_BYTES + 1)
        .read_to_string(&mut text)
        .map_err(|e| io_err("read", e))?;
    if text.len() as u64 > MAX_FILE_BYTES {
        return Err(TokenError::Malformed {
            path: path.to_owned(),
            reason: "file is larger than 64 KiB",
        });
    }
    Ok(text)
}

/// Reads and checks a token file: a regular file, an accepted mode, at least one valid token.
pub fn read_token_file(path: &Path) -> Result<TokenSet, TokenError> {
    parse(path, &read_text(path)?)
}

/// Creates the token file with a fresh token (0600; the directory 0700 when missing). The agent's
/// first start on a single node; a cluster distributes one file to every node instead.
pub fn create(path: &Path) -> Result<Token, TokenError> {
    let token = Token::generate()?;
    let dir = parent(path);
    if !dir.exists() {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(DIR_MODE)
            .create(&dir)
            .map_err(|source| TokenError::Io {
                path: path.to_owned(),
                op: "create its directory",
                source,
            })?;
    }
    write(path, &format!("{}\n", token.expose()))?;
    Ok(token)
}

/// `serve-guard token rotate`: a new token becomes the first line (the primary); the tokens
/// listed so far stay accepted until `token prune`. Creates the file when missing.
pub fn rotate_file(path: &Path) -> Result<Token, TokenError> {
    let text = match read_text(path) {
        Ok(text) => text,
        Err(TokenError::Missing { .. }) => return create(path),
        Err(e) => return Err(e),
    };
    parse(path, &text)?;
    refuse_if_managed_elsewhere(path)?;
    let token = Token::generate()?;
    let mut out = Zeroizing::new(String::with_capacity(text.len() + token.expose().len() + 1));
    let mut inserted = false;
    for line in text.lines() {
        if !inserted && token_text(line).is_some() {
            out.push_str(token.expose());
            out.push('\n');
            inserted = true;
        }
        out.push_str(line);
        out.push('\n');
    }
    write(path, &out)?;
    Ok(token)
}

/// `serve-guard token prune`: removes every token line but the first (the primary), keeping
/// comments and blank lines. Returns how many tokens were removed.
pub fn prune_file(path: &Path) -> Result<usize, TokenError> {
    let text = read_text(path)?;
    parse(path, &text)?;
    let mut out = Zeroizing::new(String::with_capacity(text.len()));
    let mut seen_primary = false;
    let mut removed = 0;
    for line in text.lines() {
        if token_text(line).is_some() {
            if seen_primary {
                removed += 1;
                continue;
            }
            seen_primary = true;
        }
        out.push_str(line);
        out.push('\n');
    }
    if removed > 0 {
        refuse_if_managed_elsewhere(path)?;
        write(path, &out)?;
    }
    Ok(removed)
}

/// A file without the owner's write bit (0400, 0440) belongs to config management or a Secret.
fn refuse_if_managed_elsewhere(path: &Path) -> Result<(), TokenError> {
    let mode = fs::metadata(path)
        .map_err(|source| TokenError::Io {
            path: path.to_owned(),
            op: "stat",
            source,
        })?
        .permissions()
        .mode();
    if mode & OWNER_WRITE == 0 {
        return Err(TokenError::ManagedElsewhere {
            path: path.to_owned(),
            why: "it is read-only",
        });
    }
    Ok(())
}

/// Replaces the file atomically (readers see the old or the new tokens, never a mix), through a
/// symlink to its target, keeping an existing file's mode.
fn write(path: &Path, text: &str) -> Result<(), TokenError> {
    fsutil::write_atomic_with_mode(path, text.as_bytes(), NEW_FILE_MODE).map_err(|source| {
        if source.raw_os_error() == Some(libc::EROFS) {
            TokenError::ManagedElsewhere {
                path: path.to_owned(),
                why: "it is on a read-only file system",
            }
        } else {
            TokenError::Io {
                path: path.to_owned(),
                op: "write",
                source,
            }
        }
    })
}

fn parent(path: &Path) -> PathBuf {
    match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
        _ => PathBuf::from("."),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::token::test_support::{A, B, tmpdir, write_mode};

    fn exposed(set: &TokenSet) -> Vec<&str> {
        set.tokens().iter().map(Token::expose).collect()
    }

    #[test]
    fn parses_tokens_comments_and_blank_lines() {
        let p = Path::new("/t");
        let set = parse(p, &format!("# cluster token\n\n{B}  # new\n  {A}\n# old\n")).unwrap();
        assert_eq!(exposed(&set), [B, A]);
        assert_eq!(set.primary().unwrap().expose(), B);
    }

    #[test]
    fn empty_malformed_and_short_files_are_refused_by_line_without_content() {
        let p = Path::new("/t");
        for text in ["", "\n\n", "# only a comment\n"] {
            assert!(
                matches!(parse(p, text), Err(TokenError::Empty { .. })),
                "{text:?}"
            );
        }
        let secret = "secret-ish but short";
        let err = parse(p, &format!("{A}\n{secret}\n")).unwrap_err();
        assert!(matches!(err, TokenError::BadLine { line: 2, .. }), "{err}");
        assert!(!err.to_string().contains(secret));
        let err = parse(p, &format!("{A}\nnot a token at all, it has spaces\n")).unwrap_err();
        assert!(matches!(err, TokenError::BadLine { line: 2, .. }), "{err}");
    }

    #[test]
    fn modes_owner_and_group_read_only_are_accepted_others_refused() {
        let dir = tmpdir();
        let path = dir.path().join("token");
        for mode in ACCEPTED_MODES {
            write_mode(&path, &format!("{A}\n"), mode);
            assert!(read_token_file(&path).is_ok(), "{mode:o}");
        }
        for mode in [
            0o644, 0o604, 0o660, 0o620, 0o700, 0o444, 0o4600, 0o000, 0o200,
        ] {
            write_mode(&path, &format!("{A}\n"), mode);
            let err = read_token_file(&path).unwrap_err();
            assert!(
                matches!(err, TokenError::InsecurePermissions { mode: m, .. } if m == mode),
                "{mode:o}: {err}"
            );
            let text = err.to_string();
            assert!(
                text.contains("chmod 600") && text.contains("defaultMode: 0440"),
                "{text}"
            );
            assert!(!text.contains(A));
        }
    }

    #[test]
    fn a_kubernetes_secret_symlink_is_followed() {
        let dir = tmpdir();
        let data = dir.path().join("..2026_11_28_00_00_00.1");
        fs::create_dir(&data).unwrap();
        write_mode(&data.join("token"), &format!("{A}\n"), 0o440);
        std::os::unix::fs::symlink(data.file_name().unwrap(), dir.path().join("..data")).unwrap();
        std::os::unix::fs::symlink("..data/token", dir.path().join("token")).unwrap();
        let set = read_token_file(&dir.path().join("token")).unwrap();
        assert_eq!(exposed(&set), [A]);
        // The CLI leaves a read-only Secret alone.
        let err = rotate_file(&dir.path().join("token")).unwrap_err();
        assert!(matches!(err, TokenError::ManagedElsewhere { .. }), "{err}");
        assert_eq!(
            fs::read_to_string(data.join("token")).unwrap(),
            format!("{A}\n")
        );
    }

    #[test]
    fn create_rotate_prune_keep_comments_order_and_mode() {
        let dir = tmpdir();
        let path = dir.path().join("sub/token");
        let first = create(&path).unwrap();
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(
            fs::metadata(path.parent().unwrap())
                .unwrap()
                .permissions()
                .mode()
                & 0o777,
            0o700
        );
        assert_eq!(
            fs::read_to_string(&path).unwrap(),
            format!("{}\n", first.expose())
        );

        // An operator's file: comments and a group-readable mode survive the edits.
        write_mode(
            &path,
            &format!("# cluster token\n{A} # since May\n\n# end\n"),
            0o640,
        );
        let new = rotate_file(&path).unwrap();
        assert_eq!(
            fs::read_to_string(&path).unwrap(),
            format!(
                "# cluster token\n{}\n{A} # since May\n\n# end\n",
                new.expose()
            )
        );
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o640
        );
        assert_eq!(exposed(&read_token_file(&path).unwrap()), [new.expose(), A]);

        assert_eq!(prune_file(&path).unwrap(), 1);
        assert_eq!(
            fs::read_to_string(&path).unwrap(),
            format!("# cluster token\n{}\n\n# end\n", new.expose())
        );
        assert_eq!(prune_file(&path).unwrap(), 0);
        // No temporary files are left behind.
        assert_eq!(fs::read_dir(path.parent().unwrap()).unwrap().count(), 1);
    }

    #[test]
    fn a_read_only_file_is_managed_elsewhere_and_left_alone() {
        let dir = tmpdir();
        let path = dir.path().join("token");
        let text = format!("{A}\n{B}\n");
        for mode in [0o400, 0o440] {
            write_mode(&path, &text, mode);
            for result in [rotate_file(&path).map(|_| 0), prune_file(&path)] {
                let err = result.unwrap_err();
                assert!(matches!(err, TokenError::ManagedElsewhere { .. }), "{err}");
                assert!(err.to_string().contains("managed elsewhere"));
            }
            assert_eq!(fs::read_to_string(&path).unwrap(), text);
        }
    }

    #[test]
    fn a_broken_file_is_not_edited() {
        let dir = tmpdir();
        let path = dir.path().join("token");
        write_mode(&path, "# nothing here\n", 0o600);
        assert!(matches!(rotate_file(&path), Err(TokenError::Empty { .. })));
        assert_eq!(fs::read_to_string(&path).unwrap(), "# nothing here\n");
    }
}
