//! The public-mode token: one per cluster, kept in a 0600 file, compared in constant time.
//!
//! The token never appears in logs, metrics, error messages or `Debug` output: [`Token`] has a
//! redacting `Debug`, no `Display`, and every error here names the file, never its content.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

/// Random bytes in a generated token (256 bits).
pub const TOKEN_BYTES: usize = 32;
/// Length of a generated token: 32 bytes in base64url without padding.
pub const TOKEN_LEN: usize = 43;
/// Shortest token accepted from a file (an operator may supply their own): 128 bits of base64url.
pub const MIN_TOKEN_LEN: usize = 22;
/// Longest token accepted from a file; keeps headers and cookies small.
pub const MAX_TOKEN_LEN: usize = 512;
/// The token file is read whole; anything bigger is not a token file.
const MAX_FILE_BYTES: u64 = 4096;
/// Permission bits the token file must have none of: group and others get nothing.
const GROUP_OTHER_BITS: u32 = 0o077;
/// Mode of the token file.
const FILE_MODE: u32 = 0o600;
/// Mode of the token's directory when serve-guard creates it.
const DIR_MODE: u32 = 0o700;

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("token file {path}: cannot {op}: {source}")]
    Io {
        path: PathBuf,
        op: &'static str,
        #[source]
        source: io::Error,
    },
    #[error(
        "token file {path} has mode {mode:04o}: group and others must have no access; run `chmod 600 {path}`"
    )]
    InsecurePermissions { path: PathBuf, mode: u32 },
    #[error("token file {path} is not a regular file")]
    NotAFile { path: PathBuf },
    #[error("token file {path} is malformed: {reason}")]
    Malformed { path: PathBuf, reason: &'static str },
    #[error("token file {path} is missing")]
    Missing { path: PathBuf },
    #[error("cannot read the OS random source: {0}")]
    Random(getrandom::Error),
    #[error("no token file is configured")]
    NoFile,
}

/// A token. `Debug` is redacted; the only way to the text is [`Token::expose`].
#[derive(Clone)]
pub struct Token(Zeroizing<String>);

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

impl Token {
    /// A fresh token: [`TOKEN_BYTES`] bytes from the OS random source, base64url, no padding.
    pub fn generate() -> Result<Token, TokenError> {
        let mut bytes = Zeroizing::new([0u8; TOKEN_BYTES]);
        getrandom::fill(bytes.as_mut()).map_err(TokenError::Random)?;
        Ok(Token(Zeroizing::new(
            URL_SAFE_NO_PAD.encode(bytes.as_ref()),
        )))
    }

    /// Checks a token's text. The reason never contains the text.
    pub fn parse(text: &str) -> Result<Token, &'static str> {
        if text.len() < MIN_TOKEN_LEN {
            return Err("token is too short (at least 22 characters)");
        }
        if text.len() > MAX_TOKEN_LEN {
            return Err("token is too long (at most 512 characters)");
        }
        // base64url only: the same text must be valid in a header, a cookie and a query string.
        if !text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err("token has characters outside A-Z a-z 0-9 - _");
        }
        Ok(Token(Zeroizing::new(text.to_owned())))
    }

    /// The token's text, for the places that must show or send it (`token show`, `status`,
    /// the Set-Cookie of the docs link).
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Constant-time comparison with what a client presented. Only the length may leak, which
    /// is not secret (generated tokens are all [`TOKEN_LEN`] long).
    pub fn matches(&self, candidate: &[u8]) -> bool {
        self.0.as_bytes().ct_eq(candidate).into()
    }
}

/// The cluster's token, shared by the proxy and the control socket (which reloads it after
/// `serve-guard token rotate`).
///
/// `Default` gives a store with no token: every check fails (closed) and `reload` errors.
#[derive(Default)]
pub struct TokenStore {
    path: Option<PathBuf>,
    current: RwLock<Option<Arc<Token>>>,
}

impl std::fmt::Debug for TokenStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenStore")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl TokenStore {
    /// The agent's start: reads the token file, creating it with a fresh token when missing.
    pub fn load_or_create(path: &Path) -> Result<TokenStore, TokenError> {
        let token = match read_token_file(path) {
            Ok(token) => token,
            Err(TokenError::Missing { .. }) => {
                let token = Token::generate()?;
                write_token_file(path, &token)?;
                tracing::info!(path = %path.display(), "created a new token file");
                token
            }
            Err(e) => return Err(e),
        };
        Ok(TokenStore::with_token(Some(path.to_owned()), token))
    }

    /// Reads an existing token file; a missing file is an error.
    pub fn open(path: &Path) -> Result<TokenStore, TokenError> {
        let token = read_token_file(path)?;
        Ok(TokenStore::with_token(Some(path.to_owned()), token))
    }

    /// A store holding `token`, reloading from `path` if given.
    pub fn with_token(path: Option<PathBuf>, token: Token) -> TokenStore {
        TokenStore {
            path,
            current: RwLock::new(Some(Arc::new(token))),
        }
    }

    /// The token file this store reloads from.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// Re-reads the token file; from its return on, only the new token is accepted. On error
    /// the current token stays (the file on disk is broken, the agent keeps working).
    pub fn reload(&self) -> Result<(), TokenError> {
        let result = self.reread();
        crate::metrics::proxy::global().token_reload(result.is_ok());
        result
    }

    fn reread(&self) -> Result<(), TokenError> {
        let path = self.path.as_deref().ok_or(TokenError::NoFile)?;
        let token = read_token_file(path)?;
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Some(Arc::new(token));
        tracing::info!(path = %path.display(), "token reloaded");
        Ok(())
    }

    /// The current token, if any.
    pub fn current(&self) -> Option<Arc<Token>> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Whether `candidate` is the current token (constant time). No token: never.
    pub fn verify(&self, candidate: &[u8]) -> bool {
        self.current().is_some_and(|t| t.matches(candidate))
    }
}

/// Reads and checks a token file: a regular file, no access for group/others, one token line.
pub fn read_token_file(path: &Path) -> Result<Token, TokenError> {
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
    let meta = file.metadata().map_err(|e| io_err("stat", e))?;
    if !meta.is_file() {
        return Err(TokenError::NotAFile {
            path: path.to_owned(),
        });
    }
    // Fail closed rather than fix and warn: a token others could read may already be leaked.
    let mode = meta.permissions().mode() & 0o7777;
    if mode & GROUP_OTHER_BITS != 0 {
        return Err(TokenError::InsecurePermissions {
            path: path.to_owned(),
            mode,
        });
    }
    let mut text = Zeroizing::new(String::new());
    file.take(MAX_FILE_BYTES + 1)
        .read_to_string(&mut text)
        .map_err(|e| io_err("read", e))?;
    if text.len() as u64 > MAX_FILE_BYTES {
        return Err(TokenError::Malformed {
            path: path.to_owned(),
            reason: "file is larger than 4 KiB",
        });
    }
    Token::parse(text.trim()).map_err(|reason| TokenError::Malformed {
        path: path.to_owned(),
        reason,
    })
}

/// Writes `token` to `path` atomically: a 0600 temporary file in the same directory, written
/// and fsynced, renamed over `path`, then the directory fsynced. Readers see the old or the new
/// token, never a partial one. Creates the directory (0700) when missing.
pub fn write_token_file(path: &Path, token: &Token) -> Result<(), TokenError> {
    let io_err = |op, source| TokenError::Io {
        path: path.to_owned(),
        op,
        source,
    };
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
        _ => PathBuf::from("."),
    };
    if !dir.exists() {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(DIR_MODE)
            .create(&dir)
            .map_err(|e| io_err("create its directory", e))?;
    }
    let file_name = path
        .file_name()
        .ok_or_else(|| io_err("name", io::Error::other("the path has no file name")))?;
    let mut nonce = [0u8; 8];
    getrandom::fill(&mut nonce).map_err(TokenError::Random)?;
    let tmp = dir.join(format!(
        ".{}.tmp.{}.{}",
        file_name.to_string_lossy(),
        std::process::id(),
        u64::from_ne_bytes(nonce)
    ));
    let result = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(FILE_MODE)
            .open(&tmp)
            .map_err(|e| io_err("create a temporary file", e))?;
        // The umask may not widen 0600, but an inherited ACL or odd umask could narrow it oddly:
        // set it explicitly.
        file.set_permissions(fs::Permissions::from_mode(FILE_MODE))
            .map_err(|e| io_err("chmod the temporary file", e))?;
        let mut line = Zeroizing::new(String::with_capacity(token.expose().len() + 1));
        line.push_str(token.expose());
        line.push('\n');
        file.write_all(line.as_bytes())
            .map_err(|e| io_err("write", e))?;
        file.sync_all().map_err(|e| io_err("fsync", e))?;
        fs::rename(&tmp, path).map_err(|e| io_err("rename the temporary file over", e))?;
        File::open(&dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| io_err("fsync its directory", e))
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// `serve-guard token rotate`: a new token written atomically over `path`.
pub fn rotate_file(path: &Path) -> Result<Token, TokenError> {
    let token = Token::generate()?;
    write_token_file(path, &token)?;
    Ok(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmpdir() -> PathBuf {
        static COUNTER: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("sg-token-unit-{}-{n}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn generated_tokens_are_base64url_43_and_distinct() {
        let a = Token::generate().unwrap();
        let b = Token::generate().unwrap();
        assert_eq!(a.expose().len(), TOKEN_LEN);
        assert!(Token::parse(a.expose()).is_ok());
        assert_eq!(
            URL_SAFE_NO_PAD.decode(a.expose()).unwrap().len(),
            TOKEN_BYTES
        );
        assert_ne!(a.expose(), b.expose());
    }

    #[test]
    fn debug_is_redacted() {
        let t = Token::generate().unwrap();
        let store = TokenStore::with_token(None, t.clone());
        assert!(!format!("{t:?}").contains(t.expose()));
        assert!(!format!("{store:?}").contains(t.expose()));
        assert!(!format!("{:?}", store.current()).contains(t.expose()));
    }

    #[test]
    fn matches_only_the_exact_token() {
        let t = Token::parse("abcdefghijklmnopqrstuvwxyz012345").unwrap();
        assert!(t.matches(b"abcdefghijklmnopqrstuvwxyz012345"));
        assert!(!t.matches(b"abcdefghijklmnopqrstuvwxyz01234"));
        assert!(!t.matches(b"abcdefghijklmnopqrstuvwxyz0123456"));
        assert!(!t.matches(b"Abcdefghijklmnopqrstuvwxyz012345"));
        assert!(!t.matches(b""));
        assert!(!TokenStore::default().verify(b""));
    }

    #[test]
    fn parse_rejects_bad_tokens_without_echoing_them() {
        for bad in [
            "abc12",
            "has space in it 0123456789",
            "plus+plus+plus+plus+plus+",
            &"a".repeat(600),
        ] {
            let reason = Token::parse(bad).unwrap_err();
            assert!(!reason.contains(bad));
        }
    }

    #[test]
    fn create_writes_0600_and_reloads() {
        let dir = tmpdir();
        let path = dir.join("sub/token");
        let store = TokenStore::load_or_create(&path).unwrap();
        let meta = fs::metadata(&path).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        let first = store.current().unwrap();
        assert_eq!(read_token_file(&path).unwrap().expose(), first.expose());
        // A second start reuses the file.
        let again = TokenStore::load_or_create(&path).unwrap();
        assert_eq!(again.current().unwrap().expose(), first.expose());
        let new = rotate_file(&path).unwrap();
        assert!(store.verify(first.expose().as_bytes()));
        store.reload().unwrap();
        assert!(!store.verify(first.expose().as_bytes()));
        assert!(store.verify(new.expose().as_bytes()));
        // No temporary files are left behind.
        assert_eq!(fs::read_dir(path.parent().unwrap()).unwrap().count(), 1);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn refuses_group_or_world_readable_files_and_keeps_the_old_token() {
        let dir = tmpdir();
        let path = dir.join("token");
        let store = TokenStore::load_or_create(&path).unwrap();
        let old = store.current().unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o640)).unwrap();
        let err = store.reload().unwrap_err();
        assert!(
            matches!(err, TokenError::InsecurePermissions { mode: 0o640, .. }),
            "{err}"
        );
        assert!(err.to_string().contains("chmod 600"));
        assert!(!err.to_string().contains(old.expose()));
        assert!(store.verify(old.expose().as_bytes()));
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn malformed_file_errors_name_the_file_not_the_content() {
        let dir = tmpdir();
        let path = dir.join("token");
        let secret = "not a token but secret-ish text";
        fs::write(&path, secret).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
        let err = read_token_file(&path).unwrap_err().to_string();
        assert!(err.contains(&path.display().to_string()));
        assert!(!err.contains(secret));
        assert!(matches!(
            TokenStore::open(&dir.join("nope")),
            Err(TokenError::Missing { .. })
        ));
        fs::remove_dir_all(&dir).unwrap();
    }
}
