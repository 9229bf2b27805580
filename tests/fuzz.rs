//! Property-based fuzzing (proptest, stable Rust) of everything that decodes untrusted input:
//! DDP frames, EJSON dates and values, REST query strings and bodies, and the import's BSON
//! dumps and documents. Every target must return (an error is fine) without panicking, and
//! allocate no more than a bound proportional to its input; a counting allocator checks the
//! second. The number of cases is fixed (override with `PROPTEST_CASES`), so the run is bounded.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::io::Write as _;

use bson::{Bson, Document};
use proptest::prelude::*;
use serde_json::{Map, Value};

/// Counts this thread's live heap bytes and their peak (each test runs on its own thread).
struct Counting;

thread_local! {
    static LIVE: Cell<usize> = const { Cell::new(0) };
    static PEAK: Cell<usize> = const { Cell::new(0) };
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        shrank(layout.size());
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            shrank(layout.size());
            grew(new_size);
        }
        p
    }
}

fn grew(n: usize) {
    let _ = LIVE.try_with(|l| {
        let now = l.get().saturating_add(n);
        l.set(now);
        let _ = PEAK.try_with(|p| p.set(p.get().max(now)));
    });
}

fn shrank(n: usize) {
    let _ = LIVE.try_with(|l| l.set(l.get().saturating_sub(n)));
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// Runs `f` and returns the most heap it held at once beyond what was live before.
fn peak_during<T>(f: impl FnOnce() -> T) -> (T, usize) {
    let base = LIVE.with(Cell::get);
    PEAK.with(|p| p.set(base));
    let out = f();
    let peak = PEAK.with(Cell::get).saturating_sub(base);
    (out, peak)
}

fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases: std::env::var("PROPTEST_CASES")
            .ok()
            .and_then(|c| c.parse().ok())
            .unwrap_or(cases),
        // Failures are reported with their input; nothing is written next to the sources.
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// One of `names` (the keys and values the decoders look for) or free text matching `free`.
fn one_of(names: &'static [&'static str], free: &'static str) -> BoxedStrategy<String> {
    prop_oneof![prop::sample::select(names).prop_map(str::to_owned), free].boxed()
}

/// Arbitrary JSON, a few levels deep, with the keys and shapes DDP and REST look for.
fn json() -> impl Strategy<Value = Value> {
    let key = one_of(
        &["msg", "id", "method", "params", "name", "version", "support", "$date"],
        "[a-z$_]{0,8}",
    );
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        one_of(&["method", "connect", "sub", "ping", "1"], ".{0,12}").prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 48, 6, move |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec((key.clone(), inner), 0..6)
                .prop_map(|kv| Value::Object(kv.into_iter().collect::<Map<String, Value>>())),
        ]
    })
}

/// Field names of Rocket.Chat's documents, and of EJSON.
const BSON_KEYS: &[&str] = &[
    "_id",
    "username",
    "name",
    "msg",
    "rid",
    "ts",
    "u",
    "t",
    "emails",
    "services",
    "active",
    "roles",
    "usernames",
    "_updatedAt",
    "$date",
    "$numberLong",
];

/// Arbitrary BSON, with the types Rocket.Chat's documents hold.
fn bson() -> impl Strategy<Value = Bson> {
    let leaf = prop_oneof![
        Just(Bson::Null),
        any::<bool>().prop_map(Bson::Boolean),
        any::<i32>().prop_map(Bson::Int32),
        any::<i64>().prop_map(Bson::Int64),
        any::<f64>().prop_map(Bson::Double),
        ".{0,12}".prop_map(Bson::String),
        any::<i64>().prop_map(|ms| Bson::DateTime(bson::DateTime::from_millis(ms))),
    ];
    let key = one_of(BSON_KEYS, "[a-z]{0,6}");
    leaf.prop_recursive(4, 48, 6, move |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Bson::Array),
            prop::collection::vec((key.clone(), inner), 0..8)
                .prop_map(|kv| Bson::Document(kv.into_iter().collect::<Document>())),
        ]
    })
}

fn document() -> impl Strategy<Value = Document> {
    prop::collection::vec((one_of(BSON_KEYS, "[a-z]{1,6}"), bson()), 0..12).prop_map(|kv| kv.into_iter().collect())
}

/// Input bytes allowed per byte of input, plus a fixed allowance.
fn bounded(peak: usize, input: usize, factor: usize, fixed: usize) -> bool {
    peak <= input.saturating_mul(factor).saturating_add(fixed)
}

proptest! {
    #![proptest_config(config(512))]

    #[test]
    fn ddp_frames_from_arbitrary_text(text in ".{0,300}") {
        let (_, peak) = peak_during(|| chatd::protocol::ddp::parse_frame(&text));
        prop_assert!(bounded(peak, text.len(), 16, 16 << 10), "{peak} bytes for {} input bytes", text.len());
    }

    #[test]
    fn ddp_frames_from_arbitrary_json(v in json()) {
        let text = v.to_string();
        let (parsed, peak) = peak_during(|| chatd::protocol::ddp::parse_frame(&text));
        prop_assert!(bounded(peak, text.len(), 16, 16 << 10), "{peak} bytes for {} input bytes", text.len());
        if let Ok(chatd::protocol::ddp::ClientFrame::Method { id, method, .. }) = parsed {
            prop_assert!(text.contains(&id) && text.contains(&method));
        }
    }

    #[test]
    fn ddp_frames_from_mangled_valid_frames(cut in 0usize..200, flip in any::<u8>(), at in 0usize..200) {
        let frame = r#"{"msg":"method","id":"7","method":"sendMessage","params":[{"rid":"GENERAL","msg":"hi","ts":{"$date":1}}]}"#;
        let mut bytes = frame.as_bytes()[..cut.min(frame.len())].to_vec();
        if let Some(b) = bytes.get_mut(at) {
            *b ^= flip;
        }
        let text = String::from_utf8_lossy(&bytes);
        let _ = chatd::protocol::ddp::parse_frame(&text);
    }

    #[test]
    fn ejson_dates_and_values(v in json(), b in bson()) {
        let _ = chatd::protocol::wire::parse_date(&v);
        let _ = chatd::import::convert::date_of(Some(&b));
        let _ = chatd::import::convert::bson_to_json(&b);
        let (back, peak) = peak_during(|| chatd::store::mongo::convert::json_to_bson(&v));
        let size = v.to_string().len();
        prop_assert!(bounded(peak, size, 64, 16 << 10), "{peak} bytes for {size} input bytes");
        if let Ok(back) = back {
            let _ = chatd::store::mongo::convert::bson_to_json(&back);
        }
    }

    #[test]
    fn rest_query_strings_and_bodies(
        query in prop::collection::vec(
            (prop::sample::select(chatd::api::rest::QUERY_KEYS.to_vec()), ".{0,24}"),
            0..8,
        ),
        raw_query in ".{0,120}",
        body in json(),
        raw_body in prop::collection::vec(any::<u8>(), 0..200),
    ) {
        let q: String = query.iter().map(|(k, v)| format!("{k}={v}&")).collect();
        let body_text = body.to_string();
        let (_, peak) = peak_during(|| chatd::api::rest::fuzz_parameters(&q, body_text.as_bytes()));
        let size = q.len() + body_text.len();
        prop_assert!(bounded(peak, size, 32, 64 << 10), "{peak} bytes for {size} input bytes");
        let _ = chatd::api::rest::fuzz_parameters(&raw_query, &raw_body);
    }

    #[test]
    fn import_documents_of_any_shape(d in document()) {
        use chatd::import::convert;
        let _ = convert::user(&d, 0, 1);
        let _ = convert::room(&d, 0);
        let _ = convert::subscription(&d, 0);
        let _ = convert::message(&d);
    }
}

proptest! {
    #![proptest_config(config(96))]

    /// Whole dump files: valid documents, garbage, lying lengths and truncation, plain or gzip.
    #[test]
    fn import_dump_files(
        docs in prop::collection::vec(document(), 0..4),
        junk in prop::collection::vec(any::<u8>(), 0..64),
        claimed in prop_oneof![Just(None), (0u32..u32::MAX).prop_map(Some)],
        truncate in 0usize..64,
        gzip in any::<bool>(),
    ) {
        let mut bytes = Vec::new();
        for d in &docs {
            d.to_writer(&mut bytes).unwrap();
        }
        if let Some(n) = claimed {
            bytes.extend_from_slice(&n.to_le_bytes());
        }
        bytes.extend_from_slice(&junk);
        bytes.truncate(bytes.len().saturating_sub(truncate));
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(if gzip { "users.bson.gz" } else { "users.bson" });
        let mut file = std::fs::File::create(&path).unwrap();
        if gzip {
            let mut enc = flate2::write::GzEncoder::new(file, flate2::Compression::fast());
            enc.write_all(&bytes).unwrap();
            enc.finish().unwrap();
        } else {
            file.write_all(&bytes).unwrap();
        }
        let source = chatd::import::Source::dump(dir.path()).unwrap();
        let (result, peak) = peak_during(|| {
            let mut seen = 0usize;
            let found = source.for_each("users", &mut |doc| {
                if let Ok(d) = doc {
                    let _ = chatd::import::convert::user(&d, 0, 1);
                }
                seen += 1;
            });
            (found, seen)
        });
        let (found, seen) = result;
        prop_assert!(found.unwrap());
        prop_assert!(seen >= docs.len().min(1) || bytes.len() < 5);
        // Two 1 MiB read buffers, the decoder's state, and the file's own bytes a few times over
        // (never the length a document merely claims).
        prop_assert!(bounded(peak, bytes.len(), 8, 3 << 20), "{peak} bytes for a {}-byte dump", bytes.len());
    }
}
