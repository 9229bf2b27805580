//! Test helpers: a real chatd on port 0 with a temp data dir, and a small blocking DDP client
//! over a real WebSocket (tungstenite). Every wait is bounded by a read timeout.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::VecDeque;
use std::io::Write as _;
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

pub mod rcdump;

use chatd::{Config, Server};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use tungstenite::{Message, WebSocket};

/// Longest any single wait in a test may take.
pub const WAIT: Duration = Duration::from_secs(15);

pub struct TestServer {
    pub server: Option<Server>,
    pub dir: tempfile::TempDir,
    pub addr: SocketAddr,
}

pub fn test_config(dir: &std::path::Path) -> Config {
    Config {
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        shards: 2,
        pin_cores: false,
        data_dir: dir.to_path_buf(),
        // Tests other than the rate-limit ones send faster than Rocket.Chat's limits allow.
        rate_limits: chatd::config::RateLimits::off(),
        ..Config::default()
    }
}

impl TestServer {
    pub fn start() -> Self {
        Self::with(|_| {})
    }

    pub fn with(adjust: impl FnOnce(&mut Config)) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut config = test_config(dir.path());
        adjust(&mut config);
        let server = Server::start(config).expect("server starts");
        let addr = server.local_addr();
        Self {
            server: Some(server),
            dir,
            addr,
        }
    }

    /// Authenticated sessions per shard.
    pub fn sessions_per_shard(&self) -> Vec<u64> {
        self.server
            .as_ref()
            .map(|s| s.stats().iter().map(|s| s.sessions.load(Ordering::Relaxed)).collect())
            .unwrap_or_default()
    }

    pub fn stats(&self) -> Vec<chatd_shards::StatsSnapshot> {
        self.server
            .as_ref()
            .map(|s| s.stats().iter().map(|s| s.snapshot()).collect())
            .unwrap_or_default()
    }

    pub fn url(&self) -> String {
        format!("ws://{}/websocket", self.addr)
    }

    pub fn stop(&mut self) {
        if let Some(s) = self.server.take() {
            let _watch = Watchdog::arm("server stop", STOP_LIMIT);
            s.stop();
        }
    }
}

/// A stop drains for at most `drain_timeout_secs` (10 s by default); past this it is stuck.
const STOP_LIMIT: Duration = Duration::from_secs(90);

/// Aborts the whole test process, after printing what every thread of it is doing, when the
/// guarded step has not finished within its limit: a hang then fails the run within minutes
/// and names itself, instead of running into CI's time limit with nothing printed.
pub struct Watchdog {
    done: Option<std::sync::mpsc::Sender<()>>,
}

impl Watchdog {
    pub fn arm(what: &'static str, limit: Duration) -> Self {
        let (done, rx) = std::sync::mpsc::channel::<()>();
        let test = std::thread::current().name().unwrap_or("?").to_owned();
        std::thread::spawn(move || {
            if let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = rx.recv_timeout(limit) {
                // Straight to fd 2: the test harness would swallow `eprintln!` with the process.
                let _ = writeln!(
                    std::io::stderr(),
                    "\n*** WATCHDOG: {what} in test {test} took over {limit:?}; threads:\n{}",
                    thread_report()
                );
                std::process::abort();
            }
        });
        Self { done: Some(done) }
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        if let Some(done) = self.done.take() {
            let _ = done.send(());
        }
    }
}

/// One line per thread of this process: name, state, kernel wait channel and current system call.
pub fn thread_report() -> String {
    let read = |path: std::path::PathBuf| std::fs::read_to_string(path).unwrap_or_default().trim().to_owned();
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return "(no /proc)".into();
    };
    let mut lines: Vec<String> = tasks
        .flatten()
        .map(|t| {
            let dir = t.path();
            let stat = read(dir.join("stat"));
            let state = stat
                .rsplit(") ")
                .next()
                .and_then(|r| r.split(' ').next())
                .unwrap_or("?")
                .to_owned();
            format!(
                "  {:<24} state={state} wchan={} syscall={}",
                read(dir.join("comm")),
                read(dir.join("wchan")),
                read(dir.join("syscall")).split(' ').next().unwrap_or("?"),
            )
        })
        .collect();
    lines.sort();
    lines.join("\n")
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The params of a DDP `login` by username and password (sha-256 digest).
pub fn login_params(username: &str, password: &str) -> Value {
    json!([{"user": {"username": username}, "password": {"digest": sha256_hex(password), "algorithm": "sha-256"}}])
}

pub fn sha256_hex(s: &str) -> String {
    hex::encode(Sha256::digest(s.as_bytes()))
}

pub fn ws_connect(addr: SocketAddr) -> WebSocket<TcpStream> {
    ws_over(TcpStream::connect_timeout(&addr, WAIT).expect("tcp connect"), addr)
}

/// A connection whose socket receive buffer is tiny, so that a client that stops reading backs
/// up into the server's queue quickly instead of into kernel buffers.
pub fn ws_connect_small_rcvbuf(addr: SocketAddr) -> WebSocket<TcpStream> {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    socket.set_recv_buffer_size(4096).expect("SO_RCVBUF");
    socket.connect_timeout(&addr.into(), WAIT).expect("tcp connect");
    ws_over(socket.into(), addr)
}

fn ws_over(stream: TcpStream, addr: SocketAddr) -> WebSocket<TcpStream> {
    stream.set_read_timeout(Some(WAIT)).expect("timeout");
    stream.set_nodelay(true).expect("nodelay");
    let (ws, _) = tungstenite::client::client(format!("ws://{addr}/websocket"), stream).expect("ws handshake");
    ws
}

/// A blocking DDP client (over a plain TCP stream unless told otherwise, e.g. TLS).
pub struct Ddp<S = TcpStream> {
    pub ws: WebSocket<S>,
    next_id: u64,
    /// Frames that arrived while waiting for something else (stream events, nosub, errors).
    pub events: VecDeque<Value>,
    pub user_id: Option<String>,
    pub token: Option<String>,
    /// Server pings this client has answered.
    pub pings_answered: u64,
}

impl Ddp {
    /// Opens a WebSocket and completes the DDP handshake.
    pub fn open(addr: SocketAddr) -> Self {
        Self::open_on(ws_connect(addr))
    }
}

impl<S: std::io::Read + std::io::Write> Ddp<S> {
    /// Completes the DDP handshake on an open WebSocket.
    pub fn open_on(ws: WebSocket<S>) -> Self {
        let mut c = Self {
            ws,
            next_id: 0,
            events: VecDeque::new(),
            user_id: None,
            token: None,
            pings_answered: 0,
        };
        c.send(json!({"msg": "connect", "version": "1", "support": ["1"]}));
        c.wait_frame(|f| f["msg"] == "connected");
        c
    }

    pub fn send(&mut self, v: Value) {
        self.ws.send(Message::text(v.to_string())).expect("send");
    }

    pub fn send_text(&mut self, s: &str) {
        self.ws.send(Message::text(s.to_owned())).expect("send");
    }

    /// The next frame from the socket (answering server pings), or `None` if the server closed.
    pub fn read_frame(&mut self) -> Option<Value> {
        let deadline = Instant::now() + WAIT;
        loop {
            assert!(
                Instant::now() < deadline,
                "timed out waiting for a frame (only pings arrived)"
            );
            match self.ws.read() {
                Ok(Message::Text(t)) => {
                    let v: Value = serde_json::from_str(&t).expect("server sent invalid JSON");
                    if v["msg"] == "ping" {
                        self.pings_answered += 1;
                        let mut pong = json!({"msg": "pong"});
                        if let Some(id) = v.get("id") {
                            pong["id"] = id.clone();
                        }
                        self.send(pong);
                        continue;
                    }
                    return Some(v);
                }
                Ok(Message::Close(_)) => return None,
                Ok(_) => continue,
                Err(tungstenite::Error::ConnectionClosed) | Err(tungstenite::Error::AlreadyClosed) => return None,
                Err(tungstenite::Error::Io(e))
                    if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) =>
                {
                    panic!("timed out waiting for a frame from the server")
                }
                Err(tungstenite::Error::Io(_)) | Err(tungstenite::Error::Protocol(_)) => return None,
                Err(e) => panic!("websocket error: {e}"),
            }
        }
    }

    /// Answers server pings until `n` more have arrived; any other frame is kept in `events`.
    pub fn answer_pings(&mut self, n: u64) {
        let target = self.pings_answered + n;
        let deadline = Instant::now() + WAIT;
        while self.pings_answered < target {
            assert!(Instant::now() < deadline, "the server stopped pinging");
            match self.ws.read() {
                Ok(Message::Text(t)) => {
                    let v: Value = serde_json::from_str(&t).expect("server sent invalid JSON");
                    if v["msg"] == "ping" {
                        self.pings_answered += 1;
                        self.send(json!({"msg": "pong"}));
                    } else {
                        self.events.push_back(v);
                    }
                }
                Ok(Message::Close(f)) => panic!("closed while answering pings: {f:?}"),
                Ok(_) => {}
                Err(e) => panic!("connection failed while answering pings: {e}"),
            }
        }
    }

    /// Waits for a frame matching `pred`; other frames are kept in `events`.
    pub fn wait_frame(&mut self, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + WAIT;
        loop {
            assert!(Instant::now() < deadline, "timed out waiting for a matching frame");
            let f = self.read_frame().expect("connection closed while waiting for a frame");
            if pred(&f) {
                return f;
            }
            if f["msg"] != "updated" && f.get("server_id").is_none() {
                self.events.push_back(f);
            }
        }
    }

    /// Calls a method; `Ok(result)` (Null when absent) or `Err(error object)`.
    pub fn call(&mut self, method: &str, params: Value) -> Result<Value, Value> {
        self.next_id += 1;
        let id = format!("m{}", self.next_id);
        self.send(json!({"msg": "method", "method": method, "params": params, "id": id}));
        let f = self.wait_frame(|f| f["msg"] == "result" && f["id"] == id.as_str());
        match f.get("error") {
            Some(e) => Err(e.clone()),
            None => Ok(f.get("result").cloned().unwrap_or(Value::Null)),
        }
    }

    pub fn ok(&mut self, method: &str, params: Value) -> Value {
        match self.call(method, params.clone()) {
            Ok(v) => v,
            Err(e) => panic!("{method}({params}) failed: {e}"),
        }
    }

    /// Subscribes; `Ok(sub id)` on ready, `Err(error)` on nosub.
    pub fn sub(&mut self, name: &str, params: Value) -> Result<String, Value> {
        self.next_id += 1;
        let id = format!("s{}", self.next_id);
        self.send(json!({"msg": "sub", "id": id, "name": name, "params": params}));
        let f = self.wait_frame(|f| {
            (f["msg"] == "ready" && f["subs"][0] == id.as_str()) || (f["msg"] == "nosub" && f["id"] == id.as_str())
        });
        if f["msg"] == "ready" {
            Ok(id)
        } else {
            Err(f["error"].clone())
        }
    }

    /// The next stream event (`changed`) for `collection`, in arrival order.
    pub fn next_event(&mut self, collection: &str) -> Value {
        if let Some(pos) = self
            .events
            .iter()
            .position(|f| f["msg"] == "changed" && f["collection"] == collection)
        {
            return self.events.remove(pos).unwrap_or_default();
        }
        self.wait_frame(|f| f["msg"] == "changed" && f["collection"] == collection)
    }

    /// The next `stream-room-messages` event's message.
    pub fn next_message(&mut self) -> Value {
        self.next_event("stream-room-messages")["fields"]["args"][0].clone()
    }

    pub fn register(&mut self, username: &str, password: &str) -> String {
        let v = self.ok("registerUser", json!([{"username": username, "pass": password, "name": username, "email": format!("{username}@example.com")}]));
        v.as_str().expect("registerUser returns the id").to_owned()
    }

    pub fn login(&mut self, username: &str, password: &str) -> Value {
        let v = self.ok("login", login_params(username, password));
        self.user_id = v["id"].as_str().map(str::to_owned);
        self.token = v["token"].as_str().map(str::to_owned);
        v
    }

    pub fn resume(&mut self, token: &str) -> Value {
        let v = self.ok("login", json!([{"resume": token}]));
        self.user_id = v["id"].as_str().map(str::to_owned);
        self.token = Some(token.to_owned());
        v
    }

    pub fn uid(&self) -> String {
        self.user_id.clone().expect("logged in")
    }

    pub fn send_message(&mut self, rid: &str, text: &str) -> Value {
        self.ok("sendMessage", json!([{"rid": rid, "msg": text}]))
    }
}

/// Registers `username` (password = username + "-pw") and returns a logged-in client.
pub fn user(addr: SocketAddr, username: &str) -> Ddp {
    let mut c = Ddp::open(addr);
    c.register(username, &format!("{username}-pw"));
    c.login(username, &format!("{username}-pw"));
    c
}

/// A client placed on a known shard. `spare` holds the attempts that landed elsewhere: they stay
/// connected so that their disconnects cannot blur the per-shard counts of later placements.
pub struct Placed {
    pub client: Ddp,
    pub shard: usize,
    pub spare: Vec<Ddp>,
}

/// Logs `username` in on new connections until one lands on a shard other than `avoid`
/// (per-shard session stats tell where each session is). The test must not open or close other
/// sessions on this server meanwhile.
pub fn login_on_other_shard(server: &TestServer, username: &str, avoid: usize) -> Placed {
    let mut spare = Vec::new();
    for _ in 0..64 {
        let before = server.sessions_per_shard();
        let mut c = Ddp::open(server.addr);
        c.login(username, &format!("{username}-pw"));
        let after = server.sessions_per_shard();
        let gained: Vec<usize> = (0..after.len()).filter(|i| after[*i] > before[*i]).collect();
        assert_eq!(
            gained.len(),
            1,
            "exactly one shard gains the session: {before:?} -> {after:?}"
        );
        if gained[0] != avoid {
            return Placed {
                client: c,
                shard: gained[0],
                spare,
            };
        }
        spare.push(c);
    }
    panic!("could not get a connection onto another shard in 64 tries");
}

/// Logs in on a fresh connection and reports which shard took it.
pub fn login_and_locate(server: &TestServer, username: &str) -> Placed {
    login_on_other_shard(server, username, usize::MAX)
}

/// The Python interpreter of the test virtualenv with the published Rocket.Chat clients
/// (`tests/run.sh` sets `CHATD_TEST_PYTHON`). Without it the compatibility tests are skipped with a
/// loud message, unless `CHATD_REQUIRE_COMPAT=1` (set by `tests/run.sh`) makes that a failure.
pub fn compat_python() -> Option<std::path::PathBuf> {
    compat_path("CHATD_TEST_PYTHON", "compatibility test")
}

/// A path a compatibility test needs from `tests/run.sh` (`var`), or `None` (skipped loudly).
fn compat_path(var: &str, what: &str) -> Option<std::path::PathBuf> {
    match std::env::var_os(var) {
        Some(p) if !p.is_empty() => Some(p.into()),
        _ => {
            assert!(
                std::env::var("CHATD_REQUIRE_COMPAT").as_deref() != Ok("1"),
                "{var} is not set but compatibility tests are required"
            );
            eprintln!("SKIPPED: {what} ({var} not set; run `bash tests/run.sh`)");
            None
        }
    }
}

/// The `node_modules` folder holding the published Rocket.Chat bot SDKs 0.2 and 1.x (`tests/run.sh` installs
/// `tests/compat/sdk` there and sets `CHATD_TEST_NODE_MODULES`). Skipped loudly without it,
/// unless `CHATD_REQUIRE_COMPAT=1` makes that a failure.
pub fn compat_node_modules() -> Option<std::path::PathBuf> {
    compat_path("CHATD_TEST_NODE_MODULES", "bot SDK compatibility test")
}

/// Runs a script from `tests/compat/` with the test virtualenv's Python; panics with its output
/// unless it exits successfully within `limit`.
pub fn run_compat_script(python: &std::path::Path, script: &str, args: &[String], limit: Duration) -> String {
    use std::process::{Command, Stdio};
    use wait_timeout::ChildExt;
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/compat")
        .join(script);
    let mut child = Command::new(python)
        .arg(&path)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start python");
    let status = match child.wait_timeout(limit).expect("wait for python") {
        Some(status) => status,
        None => {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{script} did not finish within {limit:?}");
        }
    };
    let out = child.wait_with_output().expect("collect output");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(status.success(), "{script} failed ({status}):\n{stdout}\n{stderr}");
    stdout
}

/// A `chatd` binary started as its own process (for crash and command-line tests). Its log is
/// collected by a thread; dropping the handle kills the process.
pub struct ChatdProcess {
    pub child: std::process::Child,
    pub addr: SocketAddr,
    pub log: std::sync::Arc<std::sync::Mutex<String>>,
}

impl ChatdProcess {
    /// Runs `chatd serve --listen 127.0.0.1:0 --shards 2 --data-dir DIR` and waits until it
    /// logs the address it listens on.
    pub fn serve(data_dir: &std::path::Path) -> Self {
        Self::serve_with(data_dir, &["--listen", "127.0.0.1:0"]).expect("chatd starts")
    }

    /// Runs `chatd serve` with extra arguments; `Err(log)` if it exits before listening.
    pub fn serve_with(data_dir: &std::path::Path, extra: &[&str]) -> Result<Self, (Option<i32>, String)> {
        Self::serve_env(data_dir, extra, &[])
    }

    /// Runs `chatd serve` with extra arguments and environment variables.
    pub fn serve_env(
        data_dir: &std::path::Path,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Result<Self, (Option<i32>, String)> {
        Self::serve_via(&[], data_dir, extra, env)
    }

    /// Runs `chatd serve` through a wrapper command that ends by executing it (e.g. `ip netns
    /// exec NS`), so the child is still chatd itself.
    pub fn serve_via(
        wrapper: &[&str],
        data_dir: &std::path::Path,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Result<Self, (Option<i32>, String)> {
        use std::io::BufRead;
        use std::process::{Command, Stdio};
        let mut command = match wrapper.split_first() {
            Some((program, args)) => {
                let mut c = Command::new(program);
                c.args(args).arg(env!("CARGO_BIN_EXE_chatd"));
                c
            }
            None => Command::new(env!("CARGO_BIN_EXE_chatd")),
        };
        let mut child = command
            .arg("serve")
            .args(["--shards", "2", "--data-dir"])
            .arg(data_dir)
            .args(extra)
            .env_remove("PORT")
            // Tests other than the rate-limit ones send faster than Rocket.Chat's limits allow;
            // those set CHATD_RATE_LIMITS=on in `env`.
            .env("CHATD_RATE_LIMITS", "off")
            .envs(env.iter().copied())
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn chatd");
        let stderr = child.stderr.take().expect("stderr");
        let log = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let (addr_tx, addr_rx) = std::sync::mpsc::channel::<Option<SocketAddr>>();
        let sink = log.clone();
        std::thread::spawn(move || {
            let mut sent = false;
            for line in std::io::BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if !sent && line.contains("chatd listening") {
                    let addr = line
                        .split_whitespace()
                        .find_map(|w| w.strip_prefix("addr="))
                        .and_then(|a| a.parse().ok());
                    let _ = addr_tx.send(addr);
                    sent = true;
                }
                let mut log = sink.lock().unwrap();
                log.push_str(&line);
                log.push('\n');
            }
            if !sent {
                let _ = addr_tx.send(None);
            }
        });
        match addr_rx.recv_timeout(Duration::from_secs(30)) {
            Ok(Some(addr)) => Ok(Self { child, addr, log }),
            other => {
                let status = match other {
                    Err(_) => {
                        let _ = child.kill();
                        child.wait().ok()
                    }
                    Ok(_) => child.wait().ok(),
                };
                let text = log.lock().unwrap().clone();
                Err((status.and_then(|s| s.code()), text))
            }
        }
    }

    /// The value of `key=` on the first log line containing `marker`, if logged yet.
    pub fn logged_value(&self, marker: &str, key: &str) -> Option<String> {
        let log = self.log.lock().unwrap();
        let line = log.lines().find(|l| l.contains(marker))?;
        let prefix = format!("{key}=");
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(prefix.as_str()))
            .map(str::to_owned)
    }

    /// The process's resident memory, bytes (Linux).
    pub fn rss_bytes(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map_or(0, |kb| kb * 1024)
    }

    /// SIGKILL: no drain, no shutdown code runs.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for ChatdProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A metric's value from a process's `/metrics`, summed over its labels (whole units).
pub fn metric(p: &ChatdProcess, name: &str) -> u64 {
    let text = ureq::get(&format!("http://{}/metrics", p.addr))
        .call()
        .unwrap()
        .into_string()
        .unwrap();
    text.lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with([' ', '{']))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .map(|v| v as u64)
        .sum()
}

/// A small REST client over a real HTTP stack (ureq); returns (status, JSON body).
pub struct Http {
    pub base: String,
    pub agent: ureq::Agent,
    pub auth: Option<(String, String)>,
}

impl Http {
    pub fn new(addr: SocketAddr) -> Self {
        Self {
            base: format!("http://{addr}/api/v1/"),
            agent: ureq::AgentBuilder::new().timeout(WAIT).build(),
            auth: None,
        }
    }

    pub fn finish(res: Result<ureq::Response, ureq::Error>) -> (u16, Value) {
        let resp = match res {
            Ok(r) => r,
            Err(ureq::Error::Status(_, r)) => r,
            Err(e) => panic!("transport error: {e}"),
        };
        let status = resp.status();
        let text = resp.into_string().unwrap();
        let body = serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON ({status}): {text}"));
        (status, body)
    }

    pub fn req(&self, method: &str, path: &str) -> ureq::Request {
        let url = match path.strip_prefix('/') {
            Some(abs) => format!("{}{abs}", self.base.trim_end_matches("api/v1/")),
            None => format!("{}{path}", self.base),
        };
        let mut r = self.agent.request(method, &url);
        if let Some((uid, token)) = &self.auth {
            r = r.set("X-User-Id", uid).set("X-Auth-Token", token);
        }
        r
    }

    pub fn get(&self, path: &str) -> (u16, Value) {
        Self::finish(self.req("GET", path).call())
    }

    pub fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        self.post_raw(path, body.to_string().as_bytes())
    }

    pub fn post_raw(&self, path: &str, body: &[u8]) -> (u16, Value) {
        Self::finish(
            self.req("POST", path)
                .set("Content-Type", "application/json")
                .send_bytes(body),
        )
    }

    pub fn login(&mut self, username: &str, password: &str) -> Value {
        let (status, v) = self.post("login", &json!({"username": username, "password": password}));
        assert_eq!(status, 200, "{v}");
        assert_eq!(v["status"], "success");
        self.auth = Some((
            v["data"]["userId"].as_str().unwrap().to_owned(),
            v["data"]["authToken"].as_str().unwrap().to_owned(),
        ));
        v
    }
}

/// Waits (bounded by [`WAIT`]) until `cond` holds.
pub fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A MongoDB database through the driver (with the runtime it needs), for tests that reach
/// documents behind chatd's back.
pub fn mongo_db(url: &str, db: &str) -> (tokio::runtime::Runtime, mongodb::Database) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let client = rt.block_on(mongodb::Client::with_uri_str(url)).unwrap();
    let db = client.database(db);
    (rt, db)
}

/// An HTTP client logged in as the DDP client's user (the same token).
pub fn http_as(server: &TestServer, c: &Ddp) -> Http {
    let mut h = Http::new(server.addr);
    h.auth = Some((c.uid(), c.token.clone().expect("logged in")));
    h
}

/// A REST answer that must be a success: its body.
pub fn ok_body(res: (u16, Value)) -> Value {
    assert_eq!(res.0, 200, "{}", res.1);
    assert_eq!(res.1["success"], true, "{}", res.1);
    res.1
}

/// A REST answer that must be a failure: its status and `errorType`.
pub fn failure(res: (u16, Value)) -> (u16, String) {
    assert_eq!(res.1["success"], false, "{}", res.1);
    (res.0, res.1["errorType"].as_str().unwrap_or_default().to_owned())
}
