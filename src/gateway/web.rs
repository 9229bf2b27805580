//! The built-in web client: `GET /` and `/assets/<name>` (every shard serves them).
//!
//! The page's files (`web/` in the repository, vendored libraries in `web/vendor/`) are compiled
//! into the binary. Once per process, before the shards start ([`prepare`]), each file gets a
//! content-hashed name (`app.3f2a9c1d07.js`): ES module import specifiers are rewritten to the
//! hashed names of what they import (dependencies first, so a change anywhere renames every
//! module that reaches it), the page's `{{file}}` placeholders become `/assets/<hashed name>`,
//! and a gzip copy is kept when it is smaller. Assets are then immutable: a year's cache
//! lifetime; the page itself is revalidated (`no-cache`) by its ETag. The table is read-only
//! after it is built, so shards share it without locks.

use std::collections::HashMap;
use std::io::Write;
use std::sync::OnceLock;

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::{Response, StatusCode};
use sha2::{Digest, Sha256};

/// The page's files: path under `web/` and contents.
const SOURCES: &[(&str, &[u8])] = &[
    ("index.html", include_bytes!("../../web/index.html")),
    ("app.js", include_bytes!("../../web/app.js")),
    ("client.js", include_bytes!("../../web/client.js")),
    ("ddp.js", include_bytes!("../../web/ddp.js")),
    ("markdown.js", include_bytes!("../../web/markdown.js")),
    ("views.js", include_bytes!("../../web/views.js")),
    ("style.css", include_bytes!("../../web/style.css")),
    ("icon.svg", include_bytes!("../../web/icon.svg")),
    ("vendor/preact.mjs", include_bytes!("../../web/vendor/preact.mjs")),
    ("vendor/hooks.mjs", include_bytes!("../../web/vendor/hooks.mjs")),
    ("vendor/htm.mjs", include_bytes!("../../web/vendor/htm.mjs")),
    ("vendor/marked.mjs", include_bytes!("../../web/vendor/marked.mjs")),
    ("vendor/purify.mjs", include_bytes!("../../web/vendor/purify.mjs")),
];

/// Bare import specifiers used inside vendored modules, and the file each names.
const BARE_IMPORTS: &[(&str, &str)] = &[("preact", "vendor/preact.mjs")];

/// The page (not an asset: it is served at `/`).
const PAGE: &str = "index.html";

/// Hex digits of the content hash in asset names.
const NAME_HASH_HEX: usize = 10;

/// Assets live this long in caches (their names change with their content).
const IMMUTABLE: &str = "public, max-age=31536000, immutable";

/// One servable file.
pub struct Asset {
    /// Its content-hashed name (for the page: `index.html`).
    pub name: String,
    content_type: &'static str,
    body: Bytes,
    gzip: Option<Bytes>,
    /// The content hash, quoted as an ETag (the gzip copy's ETag adds `-gz`).
    etag: String,
}

/// Every asset of the web client, by hashed name, and the page.
pub struct Assets {
    page: Asset,
    by_name: HashMap<String, Asset>,
}

impl Assets {
    /// The asset served as `/assets/<name>`.
    pub fn get(&self, name: &str) -> Option<&Asset> {
        self.by_name.get(name)
    }

    /// The page served at `/`.
    pub fn page(&self) -> &Asset {
        &self.page
    }

    /// Every asset (not the page).
    pub fn iter(&self) -> impl Iterator<Item = &Asset> {
        self.by_name.values()
    }
}

impl Asset {
    /// Its bytes as stored (uncompressed).
    pub fn body(&self) -> &[u8] {
        &self.body
    }

    /// The gzip copy's size, if it has one.
    pub fn gzip_len(&self) -> Option<usize> {
        self.gzip.as_ref().map(Bytes::len)
    }
}

static ASSETS: OnceLock<Result<Assets, String>> = OnceLock::new();

/// Builds the asset table (once per process; later calls return the same table).
pub fn prepare() -> Result<&'static Assets, &'static str> {
    ASSETS.get_or_init(build).as_ref().map_err(String::as_str)
}

fn content_type(path: &str) -> &'static str {
    match path.rsplit('.').next() {
        Some("html") => "text/html; charset=utf-8",
        Some("js" | "mjs") => "text/javascript; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("svg") => "image/svg+xml",
        _ => "application/octet-stream",
    }
}

/// Byte ranges of the specifiers in `from "x"` / `from 'x'` clauses of an ES module.
fn import_specifiers(src: &str) -> Vec<(usize, usize)> {
    let bytes = src.as_bytes();
    let mut found = Vec::new();
    for (at, _) in src.match_indices("from") {
        let before_ok = at == 0
            || bytes
                .get(at - 1)
                .is_some_and(|b| !(b.is_ascii_alphanumeric() || *b == b'_' || *b == b'$' || *b == b'.'));
        if !before_ok {
            continue;
        }
        let mut i = at + 4;
        while bytes.get(i).is_some_and(u8::is_ascii_whitespace) {
            i += 1;
        }
        let Some(&quote) = bytes.get(i).filter(|b| **b == b'"' || **b == b'\'') else {
            continue;
        };
        let start = i + 1;
        if let Some(len) = bytes
            .get(start..)
            .and_then(|rest| rest.iter().position(|b| *b == quote))
        {
            found.push((start, start + len));
        }
    }
    found
}

/// The source path an import specifier in `importer` names, if it is one of ours.
fn resolve(importer: &str, spec: &str) -> Option<&'static str> {
    if let Some(&(_, path)) = BARE_IMPORTS.iter().find(|(bare, _)| *bare == spec) {
        return Some(path);
    }
    let rel = spec.strip_prefix("./")?;
    let dir = importer.rsplit_once('/').map(|(d, _)| d);
    let wanted = match dir {
        Some(d) => format!("{d}/{rel}"),
        None => rel.to_owned(),
    };
    SOURCES.iter().find(|(p, _)| *p == wanted).map(|(p, _)| *p)
}

fn hashed_name(path: &str, digest: &[u8]) -> String {
    let file = path.rsplit('/').next().unwrap_or(path);
    let (stem, ext) = file.split_once('.').unwrap_or((file, ""));
    let hash = hex::encode(digest);
    format!("{stem}.{}.{ext}", hash.get(..NAME_HASH_HEX).unwrap_or(&hash))
}

fn gzip(body: &[u8]) -> Option<Bytes> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    enc.write_all(body).ok()?;
    let out = enc.finish().ok()?;
    (out.len() < body.len()).then(|| Bytes::from(out))
}

fn asset(path: &str, name: String, body: Vec<u8>) -> Asset {
    let digest = Sha256::digest(&body);
    let hash = hex::encode(digest);
    Asset {
        name,
        content_type: content_type(path),
        gzip: gzip(&body),
        body: Bytes::from(body),
        etag: format!("\"{}\"", hash.get(..32).unwrap_or(&hash)),
    }
}

fn build() -> Result<Assets, String> {
    let text = |path: &str, bytes: &[u8]| {
        std::str::from_utf8(bytes)
            .map(str::to_owned)
            .map_err(|_| format!("web/{path} is not UTF-8"))
    };
    // Source path → hashed name, filled dependencies first.
    let mut names: HashMap<&'static str, String> = HashMap::new();
    let mut by_name = HashMap::new();
    let mut pending: Vec<(&'static str, &'static [u8])> = SOURCES.iter().copied().filter(|(p, _)| *p != PAGE).collect();
    while !pending.is_empty() {
        let before = pending.len();
        let mut waiting = Vec::new();
        for (path, bytes) in pending {
            let is_module = path.ends_with(".js") || path.ends_with(".mjs");
            let body = if is_module {
                let src = text(path, bytes)?;
                let mut deps = Vec::new();
                for (s, e) in import_specifiers(&src) {
                    let spec = src.get(s..e).unwrap_or_default();
                    match resolve(path, spec) {
                        Some(dep) => deps.push((s, e, dep)),
                        None if spec.starts_with('.') || spec.starts_with('/') => {
                            return Err(format!("web/{path} imports {spec:?}, which is not in the page's files"));
                        }
                        None => {}
                    }
                }
                if deps.iter().any(|(_, _, dep)| !names.contains_key(dep)) {
                    waiting.push((path, bytes));
                    continue;
                }
                let mut out = String::with_capacity(src.len());
                let mut at = 0;
                for (s, e, dep) in deps {
                    out.push_str(src.get(at..s).unwrap_or_default());
                    out.push_str("./");
                    out.push_str(names.get(dep).map(String::as_str).unwrap_or_default());
                    at = e;
                }
                out.push_str(src.get(at..).unwrap_or_default());
                out.into_bytes()
            } else {
                bytes.to_vec()
            };
            let name = hashed_name(path, &Sha256::digest(&body));
            names.insert(path, name.clone());
            if by_name.insert(name.clone(), asset(path, name, body)).is_some() {
                return Err(format!("two web files share the served name of web/{path}"));
            }
        }
        if waiting.len() == before {
            let stuck: Vec<&str> = waiting.iter().map(|(p, _)| *p).collect();
            return Err(format!("web modules import each other in a cycle: {stuck:?}"));
        }
        pending = waiting;
    }
    let page_src = SOURCES
        .iter()
        .find(|(p, _)| *p == PAGE)
        .map(|(_, b)| *b)
        .ok_or("web/index.html is missing")?;
    let mut page = text(PAGE, page_src)?;
    while let Some(open) = page.find("{{") {
        let close = page
            .get(open..)
            .and_then(|rest| rest.find("}}"))
            .ok_or("web/index.html has an unclosed {{")?
            + open;
        let path = page.get(open + 2..close).unwrap_or_default().trim();
        let name = names
            .get(path)
            .ok_or_else(|| format!("web/index.html names {path:?}, which is not an asset"))?;
        page.replace_range(open..close + 2, &format!("/assets/{name}"));
    }
    Ok(Assets {
        page: asset(PAGE, PAGE.to_owned(), page.into_bytes()),
        by_name,
    })
}

/// Whether the request's `Accept-Encoding` accepts gzip (with a non-zero quality).
fn accepts_gzip(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|item| {
            let mut parts = item.split(';').map(str::trim);
            let coding = parts.next().unwrap_or_default();
            let q_zero = parts.any(|p| {
                p.strip_prefix("q=")
                    .and_then(|q| q.trim().parse::<f32>().ok())
                    .is_some_and(|q| q <= 0.0)
            });
            (coding.eq_ignore_ascii_case("gzip") || coding == "*") && !q_zero
        })
}

/// Whether `If-None-Match` names `etag` (or is `*`).
fn not_modified(headers: &HeaderMap, etag: &str) -> bool {
    headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().trim_start_matches("W/"))
        .any(|t| t == etag || t == "*")
}

/// The page's Content-Security-Policy: scripts, styles and connections from this origin only
/// (no inline script or style, no other host), framing as configured.
pub fn content_security_policy(frame_ancestors: &str) -> String {
    format!(
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; \
         media-src 'self' blob:; connect-src 'self'; font-src 'self'; manifest-src 'self'; \
         base-uri 'none'; form-action 'none'; frame-ancestors {}",
        frame_ancestors.trim()
    )
}

/// The response for one asset (or the page), honouring `If-None-Match` and `Accept-Encoding`.
pub fn respond(asset: &Asset, request: &HeaderMap, cache_control: &'static str) -> Response<Full<Bytes>> {
    let gz = asset.gzip.as_ref().filter(|_| accepts_gzip(request));
    let etag = match gz {
        Some(_) => format!("{}-gz\"", asset.etag.trim_end_matches('"')),
        None => asset.etag.clone(),
    };
    let mut resp = if not_modified(request, &etag) {
        let mut r = Response::new(Full::new(Bytes::new()));
        *r.status_mut() = StatusCode::NOT_MODIFIED;
        r
    } else {
        let mut r = Response::new(Full::new(gz.unwrap_or(&asset.body).clone()));
        r.headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static(asset.content_type));
        if gz.is_some() {
            r.headers_mut()
                .insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
        }
        r
    };
    let h = resp.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&etag) {
        h.insert(header::ETAG, v);
    }
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache_control));
    if asset.gzip.is_some() {
        h.insert(header::VARY, HeaderValue::from_static("Accept-Encoding"));
    }
    resp
}

/// `GET /` (and `/index.html`): the page, with the security headers.
pub fn page(request: &HeaderMap, frame_ancestors: &str) -> Response<Full<Bytes>> {
    let assets = match prepare() {
        Ok(a) => a,
        Err(e) => return unavailable(e),
    };
    let mut resp = respond(assets.page(), request, "no-cache");
    let h = resp.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&content_security_policy(frame_ancestors)) {
        h.insert(header::CONTENT_SECURITY_POLICY, v);
    }
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    resp
}

/// `GET /assets/<name>`.
pub fn asset_response(name: &str, request: &HeaderMap) -> Response<Full<Bytes>> {
    match prepare().map(|assets| assets.get(name)) {
        Err(e) => unavailable(e),
        Ok(Some(a)) => respond(a, request, IMMUTABLE),
        Ok(None) => {
            let mut r = Response::new(Full::new(Bytes::from_static(b"Not found\n")));
            *r.status_mut() = StatusCode::NOT_FOUND;
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; charset=utf-8"),
            );
            r
        }
    }
}

fn unavailable(problem: &str) -> Response<Full<Bytes>> {
    tracing::error!(problem, "the web client's assets could not be prepared");
    let mut r = Response::new(Full::new(Bytes::from_static(b"The web client is unavailable\n")));
    *r.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_import_resolves_to_a_hashed_asset() {
        let assets = prepare().unwrap();
        let page = std::str::from_utf8(assets.page().body()).unwrap_or_default();
        assert!(page.contains("/assets/app."), "{page}");
        assert!(!page.contains("{{"));
        let mut modules = 0;
        for a in assets.iter() {
            assert!(
                a.name.split('.').nth(1).is_some_and(|h| h.len() == NAME_HASH_HEX),
                "{}",
                a.name
            );
            if !a.name.ends_with("js") {
                continue;
            }
            modules += 1;
            let src = std::str::from_utf8(a.body()).unwrap_or_default();
            for (s, e) in import_specifiers(src) {
                let spec = &src[s..e];
                let target = spec.strip_prefix("./").unwrap_or(spec);
                assert!(assets.get(target).is_some(), "{} imports {spec}", a.name);
            }
        }
        assert!(modules >= 8);
        // The page's references are served.
        for part in page.split("/assets/").skip(1) {
            let name: String = part.chars().take_while(|c| !matches!(c, '"' | '\'')).collect();
            assert!(assets.get(&name).is_some(), "{name}");
        }
    }

    #[test]
    fn a_dependency_change_renames_its_importers() {
        let a = hashed_name("app.js", &Sha256::digest(b"import {x} from './preact.1111111111.mjs'"));
        let b = hashed_name("app.js", &Sha256::digest(b"import {x} from './preact.2222222222.mjs'"));
        assert_ne!(a, b);
        assert!(a.starts_with("app.") && a.ends_with(".js"));
        assert_eq!(hashed_name("vendor/purify.mjs", &[0xab; 32]), "purify.ababababab.mjs");
    }

    #[test]
    fn specifiers_are_found_in_minified_and_spaced_forms() {
        let src = r#"import{options as n}from"preact";import { h } from './x.js'; const fromage = 1; a.from("y")"#;
        let specs: Vec<&str> = import_specifiers(src).into_iter().map(|(s, e)| &src[s..e]).collect();
        assert_eq!(specs, vec!["preact", "./x.js"]);
    }

    #[test]
    fn encoding_negotiation_and_revalidation() {
        let mut h = HeaderMap::new();
        assert!(!accepts_gzip(&h));
        h.insert(header::ACCEPT_ENCODING, HeaderValue::from_static("gzip, deflate, br"));
        assert!(accepts_gzip(&h));
        h.insert(header::ACCEPT_ENCODING, HeaderValue::from_static("br;q=1, gzip;q=0"));
        assert!(!accepts_gzip(&h));
        h.insert(header::IF_NONE_MATCH, HeaderValue::from_static("\"abc\", W/\"def\""));
        assert!(not_modified(&h, "\"def\""));
        assert!(!not_modified(&h, "\"xyz\""));
    }

    #[test]
    fn vendored_files_match_their_recorded_hashes() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("web/vendor");
        let sums = std::fs::read_to_string(dir.join("SHA256SUMS")).unwrap_or_default();
        let mut checked = 0;
        for line in sums.lines().filter(|l| !l.trim().is_empty()) {
            let (hash, file) = line.split_once("  ").unwrap_or(("", ""));
            let bytes = std::fs::read(dir.join(file)).unwrap_or_default();
            assert_eq!(hex::encode(Sha256::digest(&bytes)), hash, "web/vendor/{file}");
            checked += 1;
        }
        assert!(checked >= 5);
        // Every vendored module compiled in is one the lock file records.
        for (path, bytes) in SOURCES.iter().filter(|(p, _)| p.starts_with("vendor/")) {
            let file = path.trim_start_matches("vendor/");
            assert!(
                sums.contains(&format!("{}  {file}", hex::encode(Sha256::digest(bytes)))),
                "{path}"
            );
        }
    }

    #[test]
    fn the_policy_forbids_inline_script_and_other_origins() {
        let csp = content_security_policy("'self' https://intranet.example");
        assert!(csp.contains("script-src 'self';"));
        assert!(!csp.contains("unsafe-inline") && !csp.contains("unsafe-eval"));
        assert!(csp.contains("default-src 'none'"));
        assert!(csp.ends_with("frame-ancestors 'self' https://intranet.example"));
    }
}
