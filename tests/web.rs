//! The built-in web client: what chatd serves at `/` and `/assets/` (headers, caching,
//! compression, configuration), and the page itself in headless Chromium
//! (`tests/web/browser_test.py`, Debian's `chromium` + `chromium-driver` driven by Selenium).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::io::Read;
use std::time::Duration;

use common::*;

/// A GET of a path on the server (any status), with optional request headers.
fn get(addr: std::net::SocketAddr, path: &str, headers: &[(&str, &str)]) -> ureq::Response {
    let agent = ureq::AgentBuilder::new().timeout(WAIT).build();
    let mut req = agent.get(&format!("http://{addr}{path}"));
    for (k, v) in headers {
        req = req.set(k, v);
    }
    match req.call() {
        Ok(r) => r,
        Err(ureq::Error::Status(_, r)) => r,
        Err(e) => panic!("transport error: {e}"),
    }
}

fn body(resp: ureq::Response) -> Vec<u8> {
    let mut out = Vec::new();
    resp.into_reader().read_to_end(&mut out).unwrap();
    out
}

fn gunzip(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(bytes).read_to_end(&mut out).unwrap();
    out
}

/// Every `/assets/...` path the page names.
fn asset_paths(page: &str) -> Vec<String> {
    page.split("\"/assets/")
        .skip(1)
        .map(|rest| format!("/assets/{}", rest.split('"').next().unwrap()))
        .collect()
}

#[test]
fn the_page_is_served_with_its_security_headers_and_revalidated_by_etag() {
    let server = TestServer::start();
    let resp = get(server.addr, "/", &[("Accept-Encoding", "gzip, deflate, br")]);
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.header("content-type"), Some("text/html; charset=utf-8"));
    assert_eq!(resp.header("content-encoding"), Some("gzip"));
    assert_eq!(resp.header("x-content-type-options"), Some("nosniff"));
    assert_eq!(resp.header("cache-control"), Some("no-cache"));
    assert_eq!(resp.header("vary"), Some("Accept-Encoding"));
    let csp = resp.header("content-security-policy").unwrap().to_owned();
    assert!(csp.contains("default-src 'none'"), "{csp}");
    assert!(csp.contains("script-src 'self';"), "{csp}");
    assert!(csp.contains("connect-src 'self';"), "{csp}");
    assert!(!csp.contains("unsafe-inline") && !csp.contains("unsafe-eval"), "{csp}");
    assert!(csp.ends_with("frame-ancestors 'none'"), "{csp}");
    let etag = resp.header("etag").unwrap().to_owned();
    let page = String::from_utf8(gunzip(&body(resp))).unwrap();
    assert!(page.contains("<div id=\"app\">"), "{page}");
    // No inline script or style: everything the page runs is a file from this origin.
    assert!(!page.contains("<script>") && !page.contains("style="), "{page}");
    assert!(
        !page.contains("http://") && !page.contains("https://"),
        "no other hosts: {page}"
    );

    let again = get(
        server.addr,
        "/",
        &[("Accept-Encoding", "gzip"), ("If-None-Match", etag.as_str())],
    );
    assert_eq!(again.status(), 304);
    assert_eq!(again.header("etag"), Some(etag.as_str()));
    // The uncompressed form is another representation, with its own tag.
    let plain = get(server.addr, "/", &[("If-None-Match", etag.as_str())]);
    assert_eq!(plain.status(), 200);
    assert_eq!(plain.header("content-encoding"), None);
    assert_ne!(plain.header("etag"), Some(etag.as_str()));
    assert!(String::from_utf8(body(plain)).unwrap().contains("<div id=\"app\">"));

    // The API answers carry nosniff too.
    let api = get(server.addr, "/api/info", &[]);
    assert_eq!(api.header("x-content-type-options"), Some("nosniff"));
}

#[test]
fn assets_have_hashed_names_long_lifetimes_and_compressed_forms() {
    let server = TestServer::start();
    let page_gz = body(get(server.addr, "/", &[("Accept-Encoding", "gzip")]));
    let page = String::from_utf8(gunzip(&page_gz)).unwrap();
    let paths = asset_paths(&page);
    assert!(paths.len() >= 10, "{paths:?}");
    let (mut plain_total, mut gzip_total) = (page.len(), page_gz.len());
    for path in &paths {
        let name = path.trim_start_matches("/assets/");
        let hash = name.split('.').nth(1).unwrap();
        assert!(
            hash.len() == 10 && hash.chars().all(|c| c.is_ascii_hexdigit()),
            "{name}"
        );
        let resp = get(server.addr, path, &[("Accept-Encoding", "gzip")]);
        assert_eq!(resp.status(), 200, "{path}");
        assert_eq!(
            resp.header("cache-control"),
            Some("public, max-age=31536000, immutable"),
            "{path}"
        );
        assert_eq!(resp.header("x-content-type-options"), Some("nosniff"));
        let kind = resp.header("content-type").unwrap().to_owned();
        let etag = resp.header("etag").unwrap().to_owned();
        let compressed = resp.header("content-encoding") == Some("gzip");
        let bytes = body(resp);
        gzip_total += bytes.len();
        let bytes = if compressed { gunzip(&bytes) } else { bytes };
        plain_total += bytes.len();
        if name.ends_with(".js") || name.ends_with(".mjs") {
            assert_eq!(kind, "text/javascript; charset=utf-8", "{path}");
            assert!(compressed, "{path} is not compressed");
        }
        let not_modified = get(
            server.addr,
            path,
            &[("Accept-Encoding", "gzip"), ("If-None-Match", etag.as_str())],
        );
        assert_eq!(not_modified.status(), 304, "{path}");
    }
    // Not a speed claim: the page stays small enough to be the issue's size budget.
    assert!(
        gzip_total < 150 * 1024,
        "{gzip_total} bytes compressed ({plain_total} plain)"
    );
    eprintln!("web client: {plain_total} bytes, {gzip_total} bytes as transferred gzipped");

    let missing = get(server.addr, "/assets/app.0000000000.js", &[]);
    assert_eq!(missing.status(), 404);
    // HEAD answers with the headers and no body.
    let agent = ureq::AgentBuilder::new().timeout(WAIT).build();
    let head = agent.head(&format!("http://{}/", server.addr)).call().unwrap();
    assert_eq!(head.status(), 200);
    assert!(head.header("etag").is_some());
}

#[test]
fn framing_is_configurable_and_the_page_can_be_turned_off() {
    let server = TestServer::with(|c| c.web.frame_ancestors = "'self' https://intranet.example".into());
    let resp = get(server.addr, "/", &[]);
    let csp = resp.header("content-security-policy").unwrap();
    assert!(
        csp.ends_with("frame-ancestors 'self' https://intranet.example"),
        "{csp}"
    );

    let off = TestServer::with(|c| c.web.enabled = false);
    assert_eq!(get(off.addr, "/", &[]).status(), 404);
    let page = String::from_utf8(body(get(server.addr, "/", &[]))).unwrap();
    assert_eq!(get(off.addr, &asset_paths(&page)[0], &[]).status(), 404);

    // A policy that would break the header (or smuggle in another directive) is refused.
    let mut config = chatd::Config::default();
    config.web.frame_ancestors = "'none'; script-src *".into();
    let err = config.validate().unwrap_err().to_string();
    assert!(err.contains("web.frame_ancestors"), "{err}");
}

/// Debian's Chromium and its WebDriver, if installed. Without them the browser test is skipped
/// loudly, unless `CHATD_REQUIRE_BROWSER=1` (set by `tests/run.sh`) makes that a failure.
fn chromium() -> bool {
    let found = ["/usr/bin/chromium", "/usr/bin/chromedriver"]
        .iter()
        .all(|p| std::path::Path::new(p).exists());
    if !found {
        assert!(
            std::env::var("CHATD_REQUIRE_BROWSER").as_deref() != Ok("1"),
            "the browser tests are required but /usr/bin/chromium or /usr/bin/chromedriver is missing \
             (apt-get install chromium chromium-driver)"
        );
        eprintln!("SKIPPED: web client browser test (install Debian's chromium and chromium-driver)");
    }
    found
}

#[test]
fn the_web_client_in_headless_chromium() {
    let Some(python) = compat_python() else { return };
    if !chromium() {
        return;
    }
    let shots = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("web-screenshots");
    let out = run_compat_script(
        &python,
        "../web/browser_test.py",
        &[env!("CARGO_BIN_EXE_chatd").into(), shots.display().to_string()],
        Duration::from_secs(240),
    );
    assert!(out.lines().any(|l| l == "ok"), "{out}");
    for shot in [
        "login.png",
        "room.png",
        "room-dark.png",
        "phone-rooms.png",
        "phone-room.png",
    ] {
        assert!(shots.join(shot).exists(), "{shot} was not saved");
    }
    eprintln!("web client screenshots: {}", shots.display());
}
