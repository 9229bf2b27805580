//! Where an import reads Rocket.Chat's collections from: a `mongodump` folder (`.bson` or
//! `.bson.gz` per collection, streamed: a collection is never loaded whole) or a live database
//! through the MongoDB driver's cursors. Both hand each document to the same code, one at a time;
//! a document that does not decode is handed over as an error so it is counted, not fatal.
//! Runs on the importer's thread (the live reader drives a current-thread tokio runtime there).

use std::fs::File;
use std::future::IntoFuture;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};

use bson::Document;
use futures::StreamExt;
use indicatif::{ProgressBar, ProgressStyle};

/// Largest document accepted from a dump (MongoDB's limit is 16 MiB; a little slack).
const MAX_DOC_BYTES: usize = 17 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("{0}")]
    Dump(String),
    #[error("MongoDB: {0}")]
    Mongo(String),
}

pub enum Source {
    Dump(PathBuf),
    Mongo {
        runtime: tokio::runtime::Runtime,
        db: mongodb::Database,
    },
}

fn bar(len: u64, collection: &str, unit: &str) -> ProgressBar {
    let pb = ProgressBar::new(len);
    let template = format!("{{prefix:>26}} [{{bar:30}}] {{{unit}}}/{{total_{unit}}} ({{eta}})");
    if let Ok(style) = ProgressStyle::with_template(&template) {
        pb.set_style(style.progress_chars("=> "));
    }
    pb.set_prefix(collection.to_owned());
    pb
}

impl Source {
    /// A `mongodump` output folder: `DIR` holds the `.bson` files, or DIR's one database folder does.
    pub fn dump(dir: &Path) -> Result<Self, SourceError> {
        let has_users = |d: &Path| d.join("users.bson").is_file() || d.join("users.bson.gz").is_file();
        if has_users(dir) {
            return Ok(Source::Dump(dir.to_owned()));
        }
        let entries = std::fs::read_dir(dir).map_err(|e| SourceError::Dump(format!("{}: {e}", dir.display())))?;
        let candidates: Vec<PathBuf> = entries
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.is_dir() && has_users(p))
            .collect();
        match candidates.as_slice() {
            [one] => Ok(Source::Dump(one.clone())),
            [] => Err(SourceError::Dump(format!(
                "{} holds no users.bson (nor does any database folder in it)",
                dir.display()
            ))),
            _ => Err(SourceError::Dump(format!(
                "{} holds several databases; name one of its folders",
                dir.display()
            ))),
        }
    }

    /// A live database; the URL names it (`mongodb://host/rocketchat?replicaSet=rs0`).
    pub fn mongo(url: &str) -> Result<Self, SourceError> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| SourceError::Mongo(e.to_string()))?;
        let db = runtime.block_on(async {
            let client = mongodb::Client::with_uri_str(url)
                .await
                .map_err(|e| SourceError::Mongo(e.to_string()))?;
            let db = client
                .default_database()
                .ok_or_else(|| SourceError::Mongo("the URL names no database (mongodb://host/DBNAME)".into()))?;
            // Fail now, clearly, rather than on the first collection.
            db.run_command(bson::doc! {"ping": 1})
                .await
                .map_err(|e| SourceError::Mongo(e.to_string()))?;
            Ok::<_, SourceError>(db)
        })?;
        Ok(Source::Mongo { runtime, db })
    }

    /// Hands every document of `collection` to `each`, in stored order. `Ok(false)`: the
    /// collection does not exist in this source.
    pub fn for_each(
        &self,
        collection: &str,
        each: &mut dyn FnMut(Result<Document, String>),
    ) -> Result<bool, SourceError> {
        match self {
            Source::Dump(dir) => read_dump(dir, collection, each),
            Source::Mongo { runtime, db } => read_live(runtime, db, collection, each),
        }
    }
}

fn read_dump(
    dir: &Path,
    collection: &str,
    each: &mut dyn FnMut(Result<Document, String>),
) -> Result<bool, SourceError> {
    let plain = dir.join(format!("{collection}.bson"));
    let gz = dir.join(format!("{collection}.bson.gz"));
    let (path, gzipped) = if plain.is_file() {
        (plain, false)
    } else if gz.is_file() {
        (gz, true)
    } else {
        return Ok(false);
    };
    let file = File::open(&path).map_err(|e| SourceError::Dump(format!("{}: {e}", path.display())))?;
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let pb = bar(len, collection, "bytes");
    let raw = BufReader::with_capacity(1 << 20, pb.wrap_read(file));
    let mut reader: Box<dyn Read> = if gzipped {
        Box::new(BufReader::with_capacity(1 << 20, flate2::read::GzDecoder::new(raw)))
    } else {
        Box::new(raw)
    };
    let mut buf = Vec::new();
    loop {
        let mut len_bytes = [0u8; 4];
        match read_full(&mut reader, &mut len_bytes) {
            Ok(0) => break,
            Ok(4) => {}
            Ok(_) => {
                each(Err("truncated document at the end of the file".into()));
                break;
            }
            Err(e) => {
                each(Err(format!("reading the dump failed: {e}")));
                break;
            }
        }
        let n = u32::from_le_bytes(len_bytes) as usize;
        if !(5..=MAX_DOC_BYTES).contains(&n) {
            // The framing is lost: nothing after this point can be found reliably.
            each(Err(format!(
                "invalid document length {n}; the rest of the file is unreadable"
            )));
            break;
        }
        buf.clear();
        buf.extend_from_slice(&len_bytes);
        // Grows with the bytes that actually arrive: a length that claims more than the file
        // holds costs no more than the file.
        match (&mut reader).take((n - 4) as u64).read_to_end(&mut buf) {
            Ok(got) if got == n - 4 => {}
            _ => {
                each(Err("truncated document at the end of the file".into()));
                break;
            }
        }
        each(Document::from_reader(buf.as_slice()).map_err(|e| e.to_string()));
    }
    pb.finish_and_clear();
    Ok(true)
}

/// Reads until `buf` is full or the stream ends; returns how many bytes were read.
fn read_full(r: &mut dyn Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match r.read(buf.get_mut(got..).unwrap_or_default()) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

/// Hands each item of `stream` to `each`, polling the stream on `runtime` one item at a time so
/// that `each` itself runs outside any runtime: a sink may block on its own runtime there
/// (blocking on a runtime from inside another one panics).
pub fn drain_outside<T, S>(
    runtime: &tokio::runtime::Runtime,
    mut stream: S,
    mut each: impl FnMut(T) -> std::ops::ControlFlow<()>,
) where
    S: futures::Stream<Item = T> + Unpin,
{
    while let Some(item) = runtime.block_on(stream.next()) {
        if each(item).is_break() {
            return;
        }
    }
}

fn read_live(
    runtime: &tokio::runtime::Runtime,
    db: &mongodb::Database,
    collection: &str,
    each: &mut dyn FnMut(Result<Document, String>),
) -> Result<bool, SourceError> {
    let names = runtime
        .block_on(db.list_collection_names().into_future())
        .map_err(|e| SourceError::Mongo(e.to_string()))?;
    if !names.iter().any(|n| n == collection) {
        return Ok(false);
    }
    let coll = db.collection::<bson::RawDocumentBuf>(collection);
    let total = runtime
        .block_on(coll.estimated_document_count().into_future())
        .unwrap_or(0);
    let pb = bar(total, collection, "pos");
    // The sink may take minutes over one batch while this cursor waits: without this the
    // server would close it after 10 idle minutes (CursorNotFound on the next getMore).
    let cursor = runtime
        .block_on(async { coll.find(bson::doc! {}).no_cursor_timeout(true).await })
        .map_err(|e| SourceError::Mongo(e.to_string()))?;
    let mut failure = None;
    drain_outside(runtime, cursor, |next| {
        pb.inc(1);
        match next {
            Ok(raw) => {
                each(raw.to_document().map_err(|e| e.to_string()));
                std::ops::ControlFlow::Continue(())
            }
            // A cursor error is the server's or the network's, not one record's: stop.
            Err(e) => {
                failure = Some(SourceError::Mongo(e.to_string()));
                std::ops::ControlFlow::Break(())
            }
        }
    });
    pb.finish_and_clear();
    match failure {
        Some(e) => Err(e),
        None => Ok(true),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// The live source's shape: items polled on a current-thread runtime, handed to a sink that
    /// blocks on another (multi-thread) runtime, as the MongoDB sink does at each batch.
    #[test]
    fn a_sink_may_block_on_its_own_runtime_inside_the_callback() {
        let source_rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let sink_rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let items = futures::stream::iter(0..25u32);
        let mut flushed = Vec::new();
        let mut batch = Vec::new();
        drain_outside(&source_rt, items, |i| {
            batch.push(i);
            if batch.len() == 10 {
                // What `MongoImport` does: `Handle::block_on` of the store's runtime.
                let sum = sink_rt.handle().block_on(async { batch.iter().sum::<u32>() });
                flushed.push(sum);
                batch.clear();
            }
            std::ops::ControlFlow::Continue(())
        });
        assert_eq!(flushed, [45, 145]);
        assert_eq!(batch.len(), 5);
        // A break stops the draining.
        let mut seen = 0;
        drain_outside(&source_rt, futures::stream::iter(0..100), |_| {
            seen += 1;
            if seen == 3 {
                std::ops::ControlFlow::Break(())
            } else {
                std::ops::ControlFlow::Continue(())
            }
        });
        assert_eq!(seen, 3);
    }
}
