//! HTTP/2 field rules (RFC 9113 §8.2.1): a field value that starts or ends with SP or HTAB makes
//! the request malformed, so it is refused before the token check (400 on the HTTP listener,
//! gRPC INTERNAL on the gRPC listener) and nothing reaches the upstream, even when the value
//! holds the token. NUL, CR and LF do not get past the HTTP/2 layer at all. Over HTTP/1.1 the
//! same whitespace is optional whitespace the parser drops (RFC 9112 §5), so the token is read
//! and the request forwarded.

use std::time::Duration;

use http::{Request, StatusCode};
use http_body_util::{BodyExt, Empty};

use crate::{exchange, h2raw, report, statuses, upstream_saw};
use serve_guard_proxy::test_util::*;

/// One request's extra fields, and whether they make it malformed.
struct Case {
    what: &'static str,
    fields: Vec<(&'static str, String)>,
    malformed: bool,
}

fn case(what: &'static str, fields: &[(&'static str, String)], malformed: bool) -> Case {
    Case {
        what,
        fields: fields.to_vec(),
        malformed,
    }
}

/// The attacks on `authorization` and the cookie, another field, and the controls that pass.
fn cases(token: &str) -> Vec<Case> {
    let bearer = |v: String| ("authorization", v);
    let cookie = |v: String| ("cookie", v);
    let good = bearer(format!("Bearer {token}"));
    vec![
        case(
            "authorization, leading space",
            &[bearer(format!(" Bearer {token}"))],
            true,
        ),
        case(
            "authorization, trailing space",
            &[bearer(format!("Bearer {token} "))],
            true,
        ),
        case(
            "authorization, trailing TAB",
            &[bearer(format!("Bearer {token}\t"))],
            true,
        ),
        case(
            "authorization, leading TAB",
            &[bearer(format!("\tBearer {token}"))],
            true,
        ),
        case(
            "cookie, trailing space",
            &[cookie(format!("SERVE_TOKEN={token} "))],
            true,
        ),
        case(
            "cookie, leading space",
            &[cookie(format!(" SERVE_TOKEN={token}"))],
            true,
        ),
        case(
            "cookie, trailing TAB",
            &[cookie(format!("SERVE_TOKEN={token}\t"))],
            true,
        ),
        case(
            "another field, with a good token",
            &[good.clone(), ("x-app", "value ".into())],
            true,
        ),
        case("control: bearer", std::slice::from_ref(&good), false),
        case(
            "control: TAB inside",
            &[bearer(format!("Bearer\t{token}"))],
            false,
        ),
        case(
            "control: space inside another field",
            &[good, ("x-app", "a b".into())],
            false,
        ),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_fields_with_outer_whitespace_are_refused_on_the_http_listener() {
    let up = start_upstream().await;
    let proxy = start_proxy(&up.url(), |_, _| {}).await;
    let token = proxy.token();
    let h2 = h2c(proxy.addr).await;
    let mut all = cases(&token);
    all.push(case(
        "control: cookie",
        &[("cookie", format!("a=1; SERVE_TOKEN={token}"))],
        false,
    ));
    for case in &all {
        let mut req = Request::get(proxy.url("/echo"));
        for (name, value) in &case.fields {
            req = req.header(*name, value);
        }
        let before = up.seen_count();
        let resp = tokio::time::timeout(
            WAIT,
            h2.clone()
                .send_request(req.body(Empty::new().boxed_unsync()).unwrap()),
        )
        .await
        .unwrap()
        .unwrap();
        let status = resp.status();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        if case.malformed {
            assert_eq!(status, StatusCode::BAD_REQUEST, "{}", case.what);
            assert!(
                String::from_utf8_lossy(&body).contains("whitespace"),
                "{}: refused by the field rule, not another check",
                case.what
            );
            assert_eq!(up.seen_count(), before, "{}: forwarded", case.what);
        } else {
            assert_eq!(status, StatusCode::OK, "{}", case.what);
            assert!(!upstream_saw(&up, &token), "{}", case.what);
        }
    }
    assert_not_logged(&token);
    report("HTTP/2 field rules, HTTP listener", all.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_fields_with_outer_whitespace_are_refused_on_the_grpc_listener() {
    let (_http_up, up, proxy) = start_grpc_proxy().await;
    let token = proxy.token();
    let all = cases(&token);
    for case in &all {
        let metadata: Vec<(&str, &str)> = case.fields.iter().map(|(k, v)| (*k, &v[..])).collect();
        let before = up.seen_count();
        let (parts, _, trailers) = grpc_unary(proxy.grpc_addr.unwrap(), &metadata).await;
        assert_eq!(parts.status, StatusCode::OK, "{}", case.what);
        if case.malformed {
            // Trailers-only, as the listener's other refusals: INTERNAL, gRPC's reading of 400.
            assert_eq!(parts.headers["grpc-status"], "13", "{}", case.what);
            assert!(trailers.is_none(), "{}", case.what);
            assert_eq!(up.seen_count(), before, "{}: forwarded", case.what);
        } else {
            assert!(parts.headers.get("grpc-status").is_none(), "{}", case.what);
            assert_eq!(trailers.expect(case.what)["grpc-status"], "0");
            assert!(!upstream_saw(&up, &token), "{}", case.what);
        }
    }
    // A well-formed cookie is no gRPC credential: UNAUTHENTICATED, not the field rule.
    let cookie = format!("SERVE_TOKEN={token}");
    let (parts, _, _) = grpc_unary(proxy.grpc_addr.unwrap(), &[("cookie", &cookie)]).await;
    assert_eq!(parts.headers["grpc-status"], "16");
    assert_not_logged(&token);
    report("HTTP/2 field rules, gRPC listener", all.len() + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_nul_cr_lf_in_a_field_never_reach_the_upstream() {
    let (up, grpc_up, proxy) = start_grpc_proxy().await;
    let token = proxy.token();
    let listeners = [proxy.addr, proxy.grpc_addr.unwrap()];
    let mut count = 0;
    for addr in listeners {
        for (name, value) in [
            ("authorization", format!("Bearer {token}\0")),
            ("authorization", format!("Bearer {token}\r")),
            ("authorization", format!("Bearer\n{token}")),
            ("cookie", format!("SERVE_TOKEN={token}\0")),
            ("cookie", format!("SERVE_TOKEN={token}\r\nx: y")),
        ] {
            let mut stream = h2raw::connect(addr).await;
            let headers = h2raw::request("/echo", &[(name, &value)]);
            let flags = h2raw::END_HEADERS | h2raw::END_STREAM;
            tokio::io::AsyncWriteExt::write_all(
                &mut stream,
                &h2raw::frame(h2raw::HEADERS, flags, 1, &headers),
            )
            .await
            .unwrap();
            // The stream is reset or the connection goes away; no answer comes back.
            let (frames, closed) =
                h2raw::read_frames(&mut stream, Duration::from_secs(5), |kind, id| {
                    kind == h2raw::GOAWAY || (kind == h2raw::RST_STREAM && id == 1)
                })
                .await;
            assert!(
                closed
                    || frames
                        .iter()
                        .any(|(k, _)| *k == h2raw::GOAWAY || *k == h2raw::RST_STREAM),
                "{name} {value:?}: neither reset nor closed: {frames:?}"
            );
            assert!(
                !frames
                    .iter()
                    .any(|(k, id)| *k == h2raw::HEADERS && *id == 1),
                "{name} {value:?}: answered"
            );
            count += 1;
        }
    }
    assert_eq!(up.seen_count() + grpc_up.seen_count(), 0, "forwarded");
    report("HTTP/2 NUL, CR, LF in fields", count);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http11_whitespace_around_a_field_value_is_not_part_of_it() {
    let up = start_upstream().await;
    let proxy = start_proxy(&up.url(), |_, _| {}).await;
    let token = proxy.token();
    let heads = [
        format!("Authorization: Bearer {token} "),
        format!("Authorization: Bearer {token}\t"),
        format!("Authorization:  \tBearer {token}"),
        format!("Cookie: SERVE_TOKEN={token} "),
        format!("Cookie:\tSERVE_TOKEN={token}\t"),
    ];
    for header in &heads {
        let resp = raw(
            proxy.addr,
            &format!("GET /echo HTTP/1.1\r\nHost: h\r\n{header}"),
        )
        .await;
        assert_eq!(resp.status, 200, "{header:?}");
    }
    assert!(!upstream_saw(&up, &token), "the token went upstream");
    // Control bytes inside a value are the parser's to refuse.
    let before = up.seen_count();
    let controls = [
        format!("Authorization: Bearer {token}\0"),
        format!("Authorization: Bearer {token}\rx"),
    ];
    for header in &controls {
        let head =
            format!("GET /echo HTTP/1.1\r\nHost: h\r\n{header}\r\nConnection: close\r\n\r\n");
        let got = statuses(&exchange(proxy.addr, head.as_bytes()).await);
        assert_eq!(got, vec![400], "{header:?}");
    }
    assert_eq!(up.seen_count(), before, "a control byte went upstream");
    assert_not_logged(&token);
    report("HTTP/1.1 optional whitespace", heads.len() + controls.len());
}
