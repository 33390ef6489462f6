//! The channel between the agent and the proxy process: a Unix socketpair carrying
//! length-prefixed JSON messages. The agent sends the config, the token set and the TLS
//! material at start and every change after; the proxy process answers `Ready`, then sends its
//! metrics. The agent treats what comes back as untrusted: it reads `Ready`, metric snapshots
//! (numbers, bounded by the message limit) and end-of-file, nothing else.

#![forbid(unsafe_code)]

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::config::PublicConfig;
use crate::tls::TlsPem;
use crate::token::{Token, TokenSet};

/// Largest message accepted: a config, a few tokens and a certificate chain fit many times.
pub const MAX_MESSAGE_BYTES: usize = 4 << 20;

/// The tokens as text, only for the wire. `Debug` shows the count.
#[derive(Clone, Serialize, Deserialize)]
pub struct WireTokens(Vec<String>);

impl std::fmt::Debug for WireTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "WireTokens(<{} redacted>)", self.0.len())
    }
}

impl Drop for WireTokens {
    fn drop(&mut self) {
        for token in &mut self.0 {
            zeroize::Zeroize::zeroize(token);
        }
    }
}

impl From<&TokenSet> for WireTokens {
    fn from(set: &TokenSet) -> Self {
        WireTokens(set.tokens().iter().map(|t| t.expose().to_owned()).collect())
    }
}

impl WireTokens {
    /// The set again; a token that does not parse is left out (the agent only sends parsed
    /// ones, so none is), and an empty set allows nothing.
    pub fn to_set(&self) -> TokenSet {
        TokenSet::new(self.0.iter().filter_map(|t| Token::parse(t).ok()))
    }
}

/// Agent → proxy process.
#[derive(Debug, Serialize, Deserialize)]
pub enum ToWorker {
    /// The first message: everything the proxy process needs to serve.
    Start {
        config: Box<PublicConfig>,
        tokens: WireTokens,
        tls: Option<TlsPem>,
    },
    /// The token set changed (file edit, rotation, SIGHUP).
    Tokens(WireTokens),
    /// The certificate or key changed (SIGHUP).
    Tls(TlsPem),
}

/// Proxy process → agent.
#[derive(Debug, Serialize, Deserialize, PartialEq)]
pub enum FromWorker {
    /// Privileges dropped, listeners serving.
    Ready,
    /// The proxy's figures (every `metrics::proxy::SNAPSHOT_INTERVAL`): numbers only, which the
    /// agent shows as they are; a compromised process could only lie about its own traffic.
    /// Boxed: a snapshot is a few hundred bytes, `Ready` none.
    Metrics(Box<crate::metrics::Snapshot>),
}

#[derive(Debug, thiserror::Error)]
pub enum ChannelError {
    #[error("the channel closed")]
    Closed,
    #[error("channel I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error("a message of {0} bytes is over the {MAX_MESSAGE_BYTES}-byte limit")]
    TooLarge(usize),
    #[error("a message is not valid: {0}")]
    Malformed(#[from] serde_json::Error),
}

/// Writes one message: its length (u32, big-endian), then its JSON.
pub async fn send<W, M>(w: &mut W, message: &M) -> Result<(), ChannelError>
where
    W: AsyncWrite + Unpin,
    M: Serialize,
{
    let bytes = zeroize::Zeroizing::new(serde_json::to_vec(message)?);
    if bytes.len() > MAX_MESSAGE_BYTES {
        return Err(ChannelError::TooLarge(bytes.len()));
    }
    w.write_all(&(bytes.len() as u32).to_be_bytes()).await?;
    w.write_all(&bytes).await?;
    w.flush().await?;
    Ok(())
}

/// Reads one message; [`ChannelError::Closed`] at end-of-file between messages.
pub async fn recv<R, M>(r: &mut R) -> Result<M, ChannelError>
where
    R: AsyncRead + Unpin,
    M: for<'de> Deserialize<'de>,
{
    let mut len = [0u8; 4];
    match r.read_exact(&mut len).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
            return Err(ChannelError::Closed);
        }
        Err(e) => return Err(e.into()),
    }
    let len = u32::from_be_bytes(len) as usize;
    if len > MAX_MESSAGE_BYTES {
        return Err(ChannelError::TooLarge(len));
    }
    let mut bytes = zeroize::Zeroizing::new(vec![0u8; len]);
    r.read_exact(&mut bytes).await?;
    Ok(serde_json::from_slice(&bytes)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn messages_round_trip_and_debug_redacts() {
        let token = Token::generate().unwrap();
        let set = TokenSet::new([token.clone()]);
        let msg = ToWorker::Start {
            config: Box::default(),
            tokens: WireTokens::from(&set),
            tls: None,
        };
        assert!(!format!("{msg:?}").contains(token.expose()));
        let (mut a, mut b) = tokio::io::duplex(1 << 16);
        send(&mut a, &msg).await.unwrap();
        send(
            &mut a,
            &ToWorker::Tokens(WireTokens::from(&TokenSet::default())),
        )
        .await
        .unwrap();
        drop(a);
        match recv::<_, ToWorker>(&mut b).await.unwrap() {
            ToWorker::Start { tokens, .. } => {
                assert!(tokens.to_set().matches(token.expose().as_bytes()));
            }
            other => panic!("{other:?}"),
        }
        match recv::<_, ToWorker>(&mut b).await.unwrap() {
            ToWorker::Tokens(tokens) => assert!(tokens.to_set().is_empty()),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            recv::<_, ToWorker>(&mut b).await,
            Err(ChannelError::Closed)
        ));
    }

    #[tokio::test]
    async fn oversize_lengths_are_refused_unread() {
        let (mut a, mut b) = tokio::io::duplex(64);
        a.write_all(&u32::MAX.to_be_bytes()).await.unwrap();
        assert!(matches!(
            recv::<_, FromWorker>(&mut b).await,
            Err(ChannelError::TooLarge(_))
        ));
    }
}
