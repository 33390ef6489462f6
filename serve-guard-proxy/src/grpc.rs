//! gRPC: the same token check on the `authorization` metadata, answered the gRPC way
//! (trailers-only responses with a grpc-status) and forwarded over h2c to Serve's gRPC port.

#![forbid(unsafe_code)]

use http::header::{CONTENT_TYPE, HeaderValue};
use http::{Response, StatusCode};

use super::reply::{self, Body};

/// gRPC status codes used here (grpc/doc/statuscodes.md).
pub const STATUS_DEADLINE_EXCEEDED: u32 = 4;
/// What gRPC makes of an HTTP 400 (grpc/doc/http-grpc-status-mapping.md): the answer to a
/// malformed request.
pub const STATUS_INTERNAL: u32 = 13;
pub const STATUS_UNAVAILABLE: u32 = 14;
pub const STATUS_UNAUTHENTICATED: u32 = 16;

const GRPC_STATUS: &str = "grpc-status";
const GRPC_MESSAGE: &str = "grpc-message";
const GRPC_CONTENT_TYPE: &str = "application/grpc";

/// A trailers-only response: HTTP 200 whose single HEADERS frame carries the status and ends
/// the stream. `message` must be plain ASCII (grpc-message is percent-encoded otherwise).
pub fn status(code: u32, message: &'static str) -> Response<Body> {
    let mut resp = Response::new(reply::empty());
    *resp.status_mut() = StatusCode::OK;
    let headers = resp.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(GRPC_CONTENT_TYPE));
    headers.insert(GRPC_STATUS, HeaderValue::from(code));
    headers.insert(GRPC_MESSAGE, HeaderValue::from_static(message));
    resp
}

pub fn unauthenticated(invalid: bool) -> Response<Body> {
    if invalid {
        status(STATUS_UNAUTHENTICATED, "invalid token")
    } else {
        status(
            STATUS_UNAUTHENTICATED,
            "missing token: send authorization: Bearer <token> metadata",
        )
    }
}

/// A malformed request (RFC 9113 §8.2.1), refused before the token check.
pub fn malformed() -> Response<Body> {
    status(
        STATUS_INTERNAL,
        "malformed request: a header field value starts or ends with whitespace",
    )
}
