//! Hostile or broken HTTP input through the layer: always a 4xx, never a
//! 5xx, never the handler.
#![allow(clippy::unwrap_used)]

mod support;

use apikey_cache_tower::ApiKeyLayer;
use axum::body::Body;
use axum::routing::get;
use axum::Router;
use http::{HeaderValue, Request, StatusCode};
use support::{send, Fixture};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn app(f: &Fixture) -> Router {
    Router::new()
        .route("/v1/orders", get(|| async { "[]" }))
        .route_layer(ApiKeyLayer::new(f.cache.clone()))
}

fn request(headers: &[(&str, &[u8])]) -> Request<Body> {
    let mut req = Request::get("/v1/orders").body(Body::empty()).unwrap();
    for (name, value) in headers {
        req.headers_mut().append(
            http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
            HeaderValue::from_bytes(value).unwrap(),
        );
    }
    req
}

async fn assert_invalid(f: &Fixture, headers: &[(&str, &[u8])]) {
    let answer = send(&app(f), request(headers)).await;
    assert_eq!(answer.status, StatusCode::UNAUTHORIZED, "{headers:?}");
    assert_eq!(answer.json()["error"], "invalid_api_key", "{headers:?}");
    assert_eq!(
        answer.header("www-authenticate"),
        Some(r#"Bearer error="invalid_token""#)
    );
}

#[tokio::test]
async fn ten_kilobyte_authorization() {
    let f = Fixture::new();
    let mut value = b"Bearer ".to_vec();
    value.extend(std::iter::repeat_n(b'a', 10 * 1024));
    assert_invalid(&f, &[("authorization", &value)]).await;
    assert_invalid(&f, &[("x-api-key", &value[7..])]).await;
    assert_eq!(
        f.cache.stats().store_queries,
        0,
        "refused before any lookup"
    );
}

#[tokio::test]
async fn bytes_outside_visible_ascii() {
    let f = Fixture::new();
    // obs-text (0x80-0xFF) is a legal header value byte, and not UTF-8 here.
    assert_invalid(&f, &[("authorization", b"Bearer ak_\xff\xfe\x80")]).await;
    assert_invalid(&f, &[("x-api-key", b"ak_caf\xc3\xa9")]).await;
    assert_invalid(&f, &[("x-api-key", b"ak\tx")]).await;
    assert_invalid(&f, &[("x-api-key", b"ak x")]).await;
    assert_eq!(f.cache.stats().store_queries, 0);
}

#[tokio::test]
async fn duplicated_key_headers() {
    let f = Fixture::new();
    let key = f.key(&[]).await;
    let bearer = format!("Bearer {}", key.plaintext);
    assert_invalid(
        &f,
        &[
            ("authorization", bearer.as_bytes()),
            ("authorization", bearer.as_bytes()),
        ],
    )
    .await;
    assert_invalid(
        &f,
        &[
            ("x-api-key", key.plaintext.as_bytes()),
            ("x-api-key", b"ak_other"),
        ],
    )
    .await;
}

#[tokio::test]
async fn other_schemes_and_empty_values() {
    let f = Fixture::new();
    assert_invalid(&f, &[("authorization", b"Basic dXNlcjpwYXNz")]).await;
    assert_invalid(&f, &[("authorization", b"Bearerak_x")]).await;
    assert_invalid(&f, &[("authorization", b"Bearer")]).await;
    assert_invalid(&f, &[("authorization", b"Bearer    ")]).await;
    assert_invalid(&f, &[("x-api-key", b"")]).await;

    // A Basic header does not hide a valid X-API-Key.
    let key = f.key(&[]).await;
    let answer = send(
        &app(&f),
        request(&[
            ("authorization", b"Basic dXNlcjpwYXNz"),
            ("x-api-key", key.plaintext.as_bytes()),
        ]),
    )
    .await;
    assert_eq!(answer.status, StatusCode::OK);
}

/// The same inputs as raw bytes through a real server (hyper's parser, then
/// the layer): whatever rejects them, it is a 4xx.
#[tokio::test]
async fn raw_requests_through_a_real_server() {
    let f = Fixture::new();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move { axum::serve(listener, app(&f)).await });

    let long = "a".repeat(10 * 1024);
    let cases: Vec<Vec<u8>> = vec![
        format!("Authorization: Bearer {long}\r\n").into_bytes(),
        b"Authorization: Bearer ak_\xff\xfe\x80\r\n".to_vec(),
        b"X-API-Key: ak_caf\xc3\xa9\r\n".to_vec(),
        b"Authorization: Bearer ak_a\r\nAuthorization: Bearer ak_b\r\n".to_vec(),
        b"Authorization: Basic dXNlcjpwYXNz\r\n".to_vec(),
        b"X-API-Key: ak_\x01ctl\r\n".to_vec(),
        b"".to_vec(),
    ];
    for headers in cases {
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let mut req = b"GET /v1/orders HTTP/1.1\r\nHost: x\r\nConnection: close\r\n".to_vec();
        req.extend_from_slice(&headers);
        req.extend_from_slice(b"\r\n");
        stream.write_all(&req).await.unwrap();
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await.unwrap();
        let status_line = response.split(|b| *b == b'\r').next().unwrap();
        let status_line = String::from_utf8_lossy(status_line);
        let status: u16 = status_line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("no status in {status_line:?}"));
        assert!(
            (400..500).contains(&status),
            "{status} for {:?}",
            String::from_utf8_lossy(&headers)
        );
    }
    server.abort();
}
