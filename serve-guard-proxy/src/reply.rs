//! The proxy's body type and the short plain responses it produces itself.

#![forbid(unsafe_code)]

use bytes::Bytes;
use http::header::{CACHE_CONTROL, CONTENT_TYPE, HeaderValue};
use http::{Response, StatusCode};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Empty, Full};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Every body the proxy sends or receives: upstream bodies are streamed through as they are.
pub type Body = UnsyncBoxBody<Bytes, BoxError>;

pub fn full(text: impl Into<Bytes>) -> Body {
    Full::new(text.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

pub fn empty() -> Body {
    Empty::new().map_err(|never| match never {}).boxed_unsync()
}

/// Wraps any body (e.g. hyper's `Incoming`) for streaming through.
pub fn stream<B>(body: B) -> Body
where
    B: hyper::body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    body.map_err(Into::into).boxed_unsync()
}

/// A short plain-text response that caches nowhere.
pub fn plain(status: StatusCode, text: &'static str) -> Response<Body> {
    let mut resp = Response::new(full(Bytes::from_static(text.as_bytes())));
    *resp.status_mut() = status;
    let headers = resp.headers_mut();
    headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}
