//! A chatd process started by a scenario (soak, storm): spawned with a given command line, its
//! log read until it says where it listens, and stopped only by this handle (SIGKILL on drop).

use std::ffi::OsStr;
use std::io::BufRead;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use anyhow::{anyhow, bail, Context};

pub struct ChatdProcess {
    child: Child,
    /// Where it listens (`host:port`).
    pub addr: String,
}

impl ChatdProcess {
    /// Runs `chatd ARGS` with `env` (no inherited `MONGO_URL` / `PORT`) and waits up to 60 s for
    /// its "chatd listening" line; every log line is appended to `log` when given.
    pub fn start<A: AsRef<OsStr>>(
        chatd: &Path,
        args: &[A],
        env: &[(&str, String)],
        log: Option<&Path>,
    ) -> anyhow::Result<Self> {
        let mut child = Command::new(chatd)
            .args(args)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .env_remove("MONGO_URL")
            .env_remove("PORT")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {}", chatd.display()))?;
        let stderr = child.stderr.take().ok_or_else(|| anyhow!("no stderr"))?;
        let mut log = match log {
            Some(path) => Some(std::fs::OpenOptions::new().create(true).append(true).open(path)?),
            None => None,
        };
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            use std::io::Write;
            let mut sent = false;
            for line in std::io::BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if let Some(log) = &mut log {
                    let _ = writeln!(log, "{line}");
                }
                if !sent && line.contains("chatd listening") {
                    let addr = line
                        .split_whitespace()
                        .find_map(|w| w.strip_prefix("addr="))
                        .map(str::to_owned);
                    let _ = tx.send(addr);
                    sent = true;
                }
            }
        });
        match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(Some(addr)) => Ok(Self { child, addr }),
            _ => {
                let _ = child.kill();
                let status = child.wait().ok();
                bail!("chatd did not start listening (exit {status:?})")
            }
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL: no drain, no shutdown code runs.
    pub fn kill(mut self) -> anyhow::Result<()> {
        self.child.kill()?;
        self.child.wait()?;
        Ok(())
    }

    /// SIGTERM (the drain), then waits for the exit.
    pub fn terminate(mut self) -> anyhow::Result<ExitStatus> {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()?;
        if !status.success() {
            bail!("kill -TERM failed");
        }
        Ok(self.child.wait()?)
    }
}

impl Drop for ChatdProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
