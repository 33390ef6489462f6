//! One HTTP/1.1 request on a connection the caller opened (TCP, TLS or a Unix socket) and its
//! answer read whole, up to a byte limit: the part the control socket's client and the cloud's
//! client share. Deadlines stay with the callers, over their whole request.

use bytes::Bytes;
use http_body_util::{BodyExt as _, Limited};
use hyper::body::Body;

#[derive(Debug, thiserror::Error)]
pub enum ExchangeError {
    #[error(transparent)]
    Http(#[from] hyper::Error),
    /// The body went past the limit; reading stopped there.
    #[error("the answer is larger than the limit")]
    TooLarge,
}

/// An answer: status and headers, and the whole body.
pub struct Answer {
    pub parts: http::response::Parts,
    pub body: Bytes,
}

/// Sends `request` on `io` and reads the answer, its body at most `max_body` bytes.
pub async fn exchange<T, B>(
    io: T,
    request: http::Request<B>,
    max_body: usize,
) -> Result<Answer, ExchangeError>
where
    T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io).await?;
    // Drives the connection; it ends with the exchange (taken down below either way).
    let driver = tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!("http client connection: {e}");
        }
    });
    let answered = async {
        let answer = sender.send_request(request).await?;
        let (parts, body) = answer.into_parts();
        let body = Limited::new(body, max_body)
            .collect()
            .await
            .map_err(|e| match e.downcast::<hyper::Error>() {
                Ok(e) => ExchangeError::Http(*e),
                Err(_) => ExchangeError::TooLarge,
            })?
            .to_bytes();
        Ok(Answer { parts, body })
    }
    .await;
    driver.abort();
    answered
}
