//! The public-mode token (being written).

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("not implemented yet")]
    Unimplemented,
}

/// The cluster's token, shared by the proxy and the control socket (which reloads it after
/// `serve-guard token rotate`).
#[derive(Debug, Default)]
pub struct TokenStore {}

impl TokenStore {
    /// Re-reads the token file; from its return on, only the new token is accepted.
    pub fn reload(&self) -> Result<(), TokenError> {
        Err(TokenError::Unimplemented)
    }
}
