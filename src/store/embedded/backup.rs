//! Consistent backups of the embedded store, taken while it serves (or while it is stopped).
//!
//! A backup copies every table inside one MVCC read transaction — a snapshot of one commit,
//! whatever the writer does meanwhile — into a new redb file beside the target, commits it
//! durably, and renames it into place. Restoring is copying that file to `DATA_DIR/chatd.redb`
//! of a stopped server.
//!
//! While a server runs it holds the file exclusively, so `chatd backup` asks it over a Unix
//! socket in the data directory ([`ControlSocket`], thread `chatd-control`, owner-only
//! permissions); with no server running the command opens the file itself.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use redb::{Database, ReadTransaction, ReadableDatabase, TableDefinition, WriteTransaction};
use serde::{Deserialize, Serialize};

use super::schema::*;
use crate::store::{StoreError, StoreResult};

/// The control socket's file name in the data directory.
pub const CONTROL_SOCKET: &str = "control.sock";

/// What a backup holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BackupReport {
    pub path: String,
    pub bytes: u64,
    pub users: u64,
    pub rooms: u64,
    pub messages: u64,
    /// The change-log position the snapshot reflects.
    pub change_seq: u64,
}

/// Copies one table (absent in the source: nothing to copy).
fn copy<K: redb::Key + 'static, V: redb::Value + 'static>(
    from: &ReadTransaction,
    to: &WriteTransaction,
    def: TableDefinition<K, V>,
) -> StoreResult<u64> {
    let src = match from.open_table(def) {
        Ok(t) => t,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(0),
        Err(e) => return Err(sf(e)),
    };
    let mut dst = to.open_table(def).map_err(sf)?;
    let mut n = 0;
    for row in redb::ReadableTable::iter(&src).map_err(sf)? {
        let (k, v) = row.map_err(sf)?;
        dst.insert(k.value(), v.value()).map_err(sf)?;
        n += 1;
    }
    Ok(n)
}

/// Writes a consistent copy of `db` to `out` (replacing it), durably.
pub fn backup(db: &Database, out: &Path) -> StoreResult<BackupReport> {
    let partial = out.with_extension("partial");
    let _ = std::fs::remove_file(&partial);
    let snapshot = db.begin_read().map_err(sf)?;
    let copy_db = Database::create(&partial).map_err(sf)?;
    let txn = copy_db.begin_write().map_err(sf)?;
    let users = copy(&snapshot, &txn, USERS)?;
    copy(&snapshot, &txn, USERNAMES)?;
    copy(&snapshot, &txn, EMAILS)?;
    copy(&snapshot, &txn, TOKENS)?;
    let rooms = copy(&snapshot, &txn, ROOMS)?;
    copy(&snapshot, &txn, ROOM_TAILS)?;
    copy(&snapshot, &txn, ROOM_NAMES)?;
    copy(&snapshot, &txn, CHANNELS)?;
    copy(&snapshot, &txn, SUBS)?;
    copy(&snapshot, &txn, MEMBERS)?;
    let messages = copy(&snapshot, &txn, MESSAGES)?;
    copy(&snapshot, &txn, MESSAGE_IDS)?;
    copy(&snapshot, &txn, CHANGES)?;
    copy(&snapshot, &txn, META)?;
    copy(&snapshot, &txn, EDITS)?;
    copy(&snapshot, &txn, TRASH_MESSAGES)?;
    copy(&snapshot, &txn, TRASH_SUBS)?;
    copy(&snapshot, &txn, DOCS)?;
    let change_seq = match snapshot.open_table(META) {
        Ok(t) => redb::ReadableTable::get(&t, META_CHANGE_SEQ)
            .map_err(sf)?
            .map_or(0, |v| v.value()),
        Err(_) => 0,
    };
    // Every table of the store is copied: a new table must be added above.
    let copied = txn.list_tables().map_err(sf)?.count() + txn.list_multimap_tables().map_err(sf)?.count();
    let source = snapshot.list_tables().map_err(sf)?.count() + snapshot.list_multimap_tables().map_err(sf)?.count();
    if copied < source {
        return Err(StoreError::Failed(format!(
            "backup copied {copied} of {source} tables; this chatd does not know them all"
        )));
    }
    txn.commit().map_err(sf)?;
    drop(copy_db);
    std::fs::rename(&partial, out).map_err(sf)?;
    if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(sf)?;
    }
    let bytes = std::fs::metadata(out).map_err(sf)?.len();
    Ok(BackupReport {
        path: out.display().to_string(),
        bytes,
        users,
        rooms,
        messages,
        change_seq,
    })
}

/// One request on the control socket (one JSON line each way).
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "lowercase")]
pub enum ControlRequest {
    Backup { out: PathBuf },
}

/// The answer: the report, or why not.
#[derive(Debug, Serialize, Deserialize)]
pub struct ControlAnswer {
    pub report: Option<BackupReport>,
    pub error: Option<String>,
}

/// Largest request line accepted on the control socket.
const MAX_REQUEST: u64 = 64 * 1024;

/// The running server's end of `chatd backup`: a Unix socket in the data directory served by one
/// plain thread, one request at a time.
pub struct ControlSocket {
    path: PathBuf,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl ControlSocket {
    /// Binds `dir/control.sock` (replacing a stale one: the store's own lock proves no other
    /// server owns this directory) with owner-only permissions, and serves it.
    pub fn start(dir: &Path, db: Arc<Database>) -> std::io::Result<Self> {
        let path = dir.join(CONTROL_SOCKET);
        let _ = std::fs::remove_file(&path);
        let listener = UnixListener::bind(&path)?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
        let thread = std::thread::Builder::new()
            .name("chatd-control".into())
            .spawn(move || {
                for conn in listener.incoming() {
                    if stopping.load(Ordering::Acquire) {
                        break;
                    }
                    match conn {
                        Ok(conn) => serve(conn, &db),
                        Err(e) => tracing::warn!(error = %e, "control socket accept failed"),
                    }
                }
            })?;
        Ok(Self {
            path,
            stop,
            thread: Some(thread),
        })
    }

    /// Stops the thread (waking its accept) and removes the socket.
    pub fn stop(&mut self) {
        self.stop.store(true, Ordering::Release);
        let _ = UnixStream::connect(&self.path);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

impl Drop for ControlSocket {
    fn drop(&mut self) {
        self.stop();
    }
}

fn serve(conn: UnixStream, db: &Database) {
    let mut line = String::new();
    let mut reader = BufReader::new(std::io::Read::take(&conn, MAX_REQUEST));
    if reader.read_line(&mut line).is_err() || line.is_empty() {
        return;
    }
    let answer = match serde_json::from_str::<ControlRequest>(&line) {
        Ok(ControlRequest::Backup { out }) => {
            let started = std::time::Instant::now();
            match backup(db, &out) {
                Ok(report) => {
                    tracing::info!(
                        path = %report.path,
                        bytes = report.bytes,
                        messages = report.messages,
                        ms = started.elapsed().as_millis() as u64,
                        "backup written"
                    );
                    ControlAnswer {
                        report: Some(report),
                        error: None,
                    }
                }
                Err(e) => ControlAnswer {
                    report: None,
                    error: Some(e.to_string()),
                },
            }
        }
        Err(e) => ControlAnswer {
            report: None,
            error: Some(format!("bad request: {e}")),
        },
    };
    let mut conn = conn;
    if let Ok(text) = serde_json::to_string(&answer) {
        let _ = writeln!(conn, "{text}");
    }
}

/// Asks the server running on `dir` for a backup to `out` (absolute path).
pub fn request_backup(dir: &Path, out: &Path) -> Result<BackupReport, String> {
    let mut conn =
        UnixStream::connect(dir.join(CONTROL_SOCKET)).map_err(|e| format!("cannot reach the running server: {e}"))?;
    let req = serde_json::to_string(&ControlRequest::Backup { out: out.to_path_buf() }).map_err(|e| e.to_string())?;
    writeln!(conn, "{req}").map_err(|e| e.to_string())?;
    let mut line = String::new();
    BufReader::new(conn).read_line(&mut line).map_err(|e| e.to_string())?;
    let answer: ControlAnswer =
        serde_json::from_str(&line).map_err(|e| format!("unexpected answer from the server: {e}"))?;
    match (answer.report, answer.error) {
        (Some(r), _) => Ok(r),
        (None, e) => Err(e.unwrap_or_else(|| "the server gave no reason".into())),
    }
}
