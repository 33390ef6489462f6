//! What `serve-guard status` shows in public mode, as Anyscale's SDK does: the user service
//! URL, the token and one API docs link per Serve route (from the upstream's `GET /-/routes`).
//!
//! This output shows the token on purpose (it is for the operator's terminal). Its `Debug` is
//! redacted so the status can never leak into logs by accident.

use std::convert::Infallible;
use std::fmt;

use serde::{Deserialize, Serialize};

use serve_guard_proxy::config::PublicConfig;
use serve_guard_proxy::docs_link::QUERY_PARAM;
use serve_guard_proxy::token::TokenSet;

use super::serve_routes;
use crate::token::read_token_file;

#[derive(Clone, Serialize, Deserialize)]
pub struct DocsLink {
    /// Serve route prefix, e.g. `/echo`.
    pub route: String,
    /// Serve application name.
    pub app: String,
    /// `<external_url><route>/docs?token=<token>`.
    pub url: String,
}

#[derive(Clone, Serialize, Deserialize)]
pub struct PublicStatus {
    /// The URL users are given (`external_url`).
    pub user_service_url: String,
    pub token_file: String,
    /// The primary token (the first in the file), when the token file could be read.
    pub token: Option<String>,
    /// How many tokens the file lists (all are accepted; rotation keeps the previous ones).
    #[serde(default)]
    pub tokens_accepted: usize,
    /// Why the token is missing, if it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_error: Option<String>,
    pub docs_links: Vec<DocsLink>,
    /// Why there are no docs links, if the route table could not be read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub routes_error: Option<String>,
}

impl fmt::Debug for PublicStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PublicStatus")
            .field("user_service_url", &self.user_service_url)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field(
                "routes",
                &self.docs_links.iter().map(|l| &l.route).collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

impl fmt::Display for PublicStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "user service URL: {}", self.user_service_url)?;
        match (&self.token, &self.token_error) {
            (Some(token), _) if self.tokens_accepted > 1 => writeln!(
                f,
                "token:            {token} (primary; {} tokens accepted, `serve-guard token prune` keeps only this one)",
                self.tokens_accepted
            )?,
            (Some(token), _) => writeln!(f, "token:            {token}")?,
            (None, Some(e)) => writeln!(f, "token:            unavailable ({e})")?,
            (None, None) => writeln!(f, "token:            unavailable")?,
        }
        if let Some(e) = &self.routes_error {
            writeln!(f, "API docs links:   unavailable ({e})")?;
        } else if self.docs_links.is_empty() {
            writeln!(f, "API docs links:   none (no Serve routes)")?;
        } else {
            writeln!(f, "API docs links:")?;
            let width = self
                .docs_links
                .iter()
                .map(|l| l.route.len())
                .max()
                .unwrap_or(0);
            for link in &self.docs_links {
                writeln!(f, "  {:<width$}  {}", link.route, link.url)?;
            }
        }
        Ok(())
    }
}

/// `<external_url><route>/docs?token=<token>`; the root route gives `<external_url>/docs`.
pub fn docs_url(external_url: &str, route: &str, token: &str) -> String {
    let route = route.trim_end_matches('/');
    format!("{external_url}{route}/docs?{QUERY_PARAM}={token}")
}

/// Builds the public part of `serve-guard status`, in the agent (which reaches Serve from its
/// own network namespace). Never fails: what cannot be read is reported in the status (an agent
/// whose Serve is down still has a URL and a token).
pub async fn public_status(config: &PublicConfig) -> Result<PublicStatus, Infallible> {
    let table = serve_routes::fetch(&config.upstream, &config.limits)
        .await
        .map_err(NoRoutes::Fetch);
    Ok(build(config, table))
}

/// The public part of `status` without an agent: URL and token, no docs links (only the agent
/// asks Serve for its routes, so that the answer does not depend on where the CLI runs).
pub fn public_status_offline(config: &PublicConfig) -> PublicStatus {
    build(config, Err(NoRoutes::NoAgent))
}

/// Why `status` has no docs links.
#[derive(Debug, thiserror::Error)]
enum NoRoutes {
    #[error(transparent)]
    Fetch(serve_routes::RoutesError),
    #[error("no agent is running (the agent asks Serve for its routes)")]
    NoAgent,
}

fn build(
    config: &PublicConfig,
    table: Result<std::collections::BTreeMap<String, String>, NoRoutes>,
) -> PublicStatus {
    let user_service_url = config.external_url().as_str().to_owned();
    let (tokens, token_error) = match read_token_file(&config.token_file) {
        Ok(set) => (set, None),
        Err(e) => (TokenSet::default(), Some(e.to_string())),
    };
    let token = tokens.primary();
    let (docs_links, routes_error) = match table {
        Ok(table) => {
            let links = match token {
                Some(token) => table
                    .into_iter()
                    .map(|(route, app)| DocsLink {
                        url: docs_url(&user_service_url, &route, token.expose()),
                        route,
                        app,
                    })
                    .collect(),
                None => Vec::new(),
            };
            (links, None)
        }
        Err(e) => (Vec::new(), Some(e.to_string())),
    };
    PublicStatus {
        user_service_url,
        token_file: config.token_file.display().to_string(),
        token: token.map(|t| t.expose().to_owned()),
        tokens_accepted: tokens.len(),
        token_error,
        docs_links,
        routes_error,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docs_urls() {
        assert_eq!(
            docs_url("https://h", "/echo", "T"),
            "https://h/echo/docs?token=T"
        );
        assert_eq!(docs_url("https://h", "/", "T"), "https://h/docs?token=T");
        assert_eq!(
            docs_url("http://h:8443", "/a/b/", "T"),
            "http://h:8443/a/b/docs?token=T"
        );
    }
}
