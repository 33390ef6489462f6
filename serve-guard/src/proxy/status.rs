//! What `serve-guard status` shows in public mode (being written): the user service URL, the
//! token and one API docs link per Serve route.

use serde::Serialize;

#[derive(Debug, Clone, Serialize)]
pub struct PublicStatus {}

/// Builds the public part of `serve-guard status`.
pub async fn public_status(_config: &crate::config::public::PublicConfig) -> anyhow::Result<PublicStatus> {
    anyhow::bail!("public status is not implemented yet")
}
