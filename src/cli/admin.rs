//! Operator commands that work on the store directly (main thread): `chatd user add|list|passwd|
//! deactivate|activate|role` and `chatd backup`. The embedded store is opened exclusively (the
//! server must be stopped, except for `backup`, which asks a running server over its control
//! socket); chatd's MongoDB backend may be changed while servers run.

use std::io::{BufRead, IsTerminal};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use chatd::store::embedded::backup::{self, BackupReport};
use chatd::store::mongo::{MongoOpenError, MongoOptions, MongoStore};
use chatd::store::{Backend, EmbeddedStore, OpenError, Store, WriteOp, WriteOutput};
use clap::{Args, Subcommand};

/// Which store a command works on.
#[derive(Args)]
pub struct StoreArgs {
    /// Data directory of the embedded store (the server must be stopped).
    #[arg(long, required_unless_present = "mongo_url")]
    pub data_dir: Option<PathBuf>,
    /// chatd's MongoDB backend instead (servers may run).
    #[arg(long, env = "MONGO_URL")]
    pub mongo_url: Option<String>,
    /// Seconds to wait for MongoDB before giving up (exit code 3).
    #[arg(long, default_value_t = 10)]
    pub mongo_connect_timeout: u64,
}

/// How a command gets a password: never empty, never required on the command line.
#[derive(Args)]
pub struct PasswordArgs {
    /// The password itself. Visible to other local users in `ps`: prefer --password-file or
    /// standard input.
    #[arg(long, conflicts_with = "password_file")]
    pub password: Option<String>,
    /// Read the password from the first line of FILE.
    #[arg(long)]
    pub password_file: Option<PathBuf>,
}

#[derive(Subcommand)]
pub enum UserCommand {
    /// Create a user. The password comes from --password-file, or standard input (prompted
    /// without echo on a terminal).
    Add {
        #[command(flatten)]
        store: StoreArgs,
        #[arg(long)]
        username: String,
        #[command(flatten)]
        password: PasswordArgs,
        #[arg(long)]
        email: Option<String>,
        #[arg(long)]
        name: Option<String>,
    },
    /// List users: username, id, active, roles (tab-separated; --json for one JSON object per line).
    List {
        #[command(flatten)]
        store: StoreArgs,
        #[arg(long)]
        json: bool,
    },
    /// Set a user's password (read as for `add`) and end every login of that user unless
    /// --keep-logins.
    Passwd {
        #[command(flatten)]
        store: StoreArgs,
        #[arg(long)]
        username: String,
        #[command(flatten)]
        password: PasswordArgs,
        #[arg(long)]
        keep_logins: bool,
    },
    /// Deactivate a user: no new logins, every login token ends (Rocket.Chat's `active: false`).
    Deactivate {
        #[command(flatten)]
        store: StoreArgs,
        #[arg(long)]
        username: String,
    },
    /// Let a deactivated user log in again.
    Activate {
        #[command(flatten)]
        store: StoreArgs,
        #[arg(long)]
        username: String,
    },
    /// Add or remove global roles (e.g. admin, bot).
    Role {
        #[command(flatten)]
        store: StoreArgs,
        #[arg(long)]
        username: String,
        /// Role to give (repeatable).
        #[arg(long = "add")]
        add: Vec<String>,
        /// Role to take away (repeatable).
        #[arg(long = "remove")]
        remove: Vec<String>,
    },
}

#[derive(Args)]
pub struct BackupArgs {
    /// Data directory of the embedded store, served or not.
    #[arg(long)]
    pub data_dir: PathBuf,
    /// The backup file to write (replaced if it exists). Restore: copy it to
    /// DATA_DIR/chatd.redb of a stopped server.
    #[arg(long)]
    pub out: PathBuf,
}

/// Opens chatd's MongoDB backend for a command (no server needed).
pub fn open_mongo(url: &str, data_dir: PathBuf, timeout_secs: u64) -> Result<Arc<MongoStore>, MongoOpenError> {
    MongoStore::open(&MongoOptions {
        url: url.to_owned(),
        database: None,
        connect_timeout: std::time::Duration::from_secs(timeout_secs),
        data_dir,
        host: "chatd-cli".into(),
        readers: 1,
    })
}

fn open_store(args: &StoreArgs) -> anyhow::Result<Store> {
    let backend: Arc<dyn Backend> = match (&args.mongo_url, &args.data_dir) {
        (Some(url), dir) => open_mongo(
            url,
            dir.clone().unwrap_or_else(std::env::temp_dir),
            args.mongo_connect_timeout,
        )?,
        (None, Some(dir)) => EmbeddedStore::open(dir)?,
        (None, None) => anyhow::bail!("name a store: --data-dir DIR or --mongo-url URL"),
    };
    Ok(Store::new(backend, 1)?)
}

/// The password from the arguments, a file, or standard input; never empty.
fn read_password(args: &PasswordArgs) -> anyhow::Result<String> {
    let password = match (&args.password, &args.password_file) {
        (Some(p), _) => p.clone(),
        (None, Some(file)) => std::fs::read_to_string(file)
            .with_context(|| format!("reading the password from {}", file.display()))?
            .lines()
            .next()
            .unwrap_or_default()
            .to_owned(),
        (None, None) if std::io::stdin().is_terminal() => {
            rpassword::prompt_password("password: ").context("reading the password from the terminal")?
        }
        (None, None) => {
            let mut line = String::new();
            std::io::stdin()
                .lock()
                .read_line(&mut line)
                .context("reading the password from standard input")?;
            line.trim_end_matches(['\r', '\n']).to_owned()
        }
    };
    if password.is_empty() {
        return Err(chatd::config::ConfigError::Invalid {
            key: "password",
            problem: "must not be empty".into(),
        }
        .into());
    }
    Ok(password)
}

fn password_hash(password: &str) -> anyhow::Result<String> {
    chatd::auth::hash_password_digest(&chatd::auth::sha256_hex(password)).map_err(anyhow::Error::msg)
}

/// Runs one write and closes the store.
fn write(store: Store, op: WriteOp) -> anyhow::Result<WriteOutput> {
    let result = store.write_blocking(op);
    store.close();
    Ok(result?.output)
}

/// The user named `username`; closes the store when there is none.
fn existing(store: &Store, username: &str) -> anyhow::Result<chatd::store::User> {
    let found = store.backend().user_by_username(username);
    match found {
        Ok(Some(u)) => Ok(u),
        other => {
            store.close();
            Err(other
                .err()
                .map_or_else(|| anyhow::anyhow!("no user named {username}"), anyhow::Error::from))
        }
    }
}

pub fn user(cmd: UserCommand) -> anyhow::Result<()> {
    match cmd {
        UserCommand::Add {
            store,
            username,
            password,
            email,
            name,
        } => {
            let hash = password_hash(&read_password(&password)?)?;
            let op = WriteOp::CreateUser {
                name: name.unwrap_or_else(|| username.clone()),
                username: username.clone(),
                email,
                password_hash: hash,
            };
            match write(open_store(&store)?, op)? {
                WriteOutput::User(u) => println!("created user {} with id {}", u.username, u.id),
                _ => println!("created user {username}"),
            }
        }
        UserCommand::List { store, json } => {
            let s = open_store(&store)?;
            let users = s.backend().all_users();
            s.close();
            let users = users?;
            for u in users {
                if json {
                    let line = serde_json::json!({
                        "username": u.username, "id": u.id.as_str(), "name": u.name,
                        "email": u.email, "active": u.active, "roles": u.roles,
                    });
                    println!("{line}");
                } else {
                    let state = if u.active { "active" } else { "deactivated" };
                    println!("{}\t{}\t{state}\t{}", u.username, u.id, u.roles.join(","));
                }
            }
        }
        UserCommand::Passwd {
            store,
            username,
            password,
            keep_logins,
        } => {
            let hash = password_hash(&read_password(&password)?)?;
            let s = open_store(&store)?;
            let u = existing(&s, &username)?;
            admin_update(s, &u, Some(hash), None, None, !keep_logins)?;
            let ended = if keep_logins { "" } else { "; every login ended" };
            println!("password of {username} changed{ended}");
        }
        UserCommand::Deactivate { store, username } => {
            let s = open_store(&store)?;
            let u = existing(&s, &username)?;
            admin_update(s, &u, None, Some(false), None, true)?;
            println!("{username} deactivated; every login ended");
        }
        UserCommand::Activate { store, username } => {
            let s = open_store(&store)?;
            let u = existing(&s, &username)?;
            admin_update(s, &u, None, Some(true), None, false)?;
            println!("{username} may log in again");
        }
        UserCommand::Role {
            store,
            username,
            add,
            remove,
        } => {
            anyhow::ensure!(
                !add.is_empty() || !remove.is_empty(),
                "name a role: --add ROLE or --remove ROLE"
            );
            let s = open_store(&store)?;
            let u = existing(&s, &username)?;
            let mut roles: Vec<String> = u.roles.iter().filter(|r| !remove.contains(r)).cloned().collect();
            for r in add {
                if !roles.contains(&r) {
                    roles.push(r);
                }
            }
            let shown = roles.join(",");
            admin_update(s, &u, None, None, Some(roles), false)?;
            println!("roles of {username}: {shown}");
        }
    }
    Ok(())
}

fn admin_update(
    store: Store,
    u: &chatd::store::User,
    password_hash: Option<String>,
    active: Option<bool>,
    roles: Option<Vec<String>>,
    revoke_tokens: bool,
) -> anyhow::Result<()> {
    write(
        store,
        WriteOp::AdminUpdateUser {
            uid: u.id.clone(),
            password_hash,
            active,
            roles,
            revoke_tokens,
        },
    )?;
    Ok(())
}

/// `chatd backup`: from the running server over its control socket, else from the file itself.
pub fn backup(args: BackupArgs) -> anyhow::Result<()> {
    let out = std::path::absolute(&args.out).context("resolving --out")?;
    if out.parent().is_some_and(|p| !p.as_os_str().is_empty() && !p.is_dir()) {
        anyhow::bail!("the folder of {} does not exist", out.display());
    }
    if !has_store(&args.data_dir) {
        anyhow::bail!("no chatd store in {} (no chatd.redb there)", args.data_dir.display());
    }
    let report = match EmbeddedStore::open_db(&args.data_dir) {
        Ok(db) => {
            let started = std::time::Instant::now();
            let r = backup::backup(&db, &out)?;
            eprintln!(
                "server not running: copied the file itself in {:.1} s",
                started.elapsed().as_secs_f64()
            );
            r
        }
        Err(OpenError::InUse(_)) => backup::request_backup(&args.data_dir, &out).map_err(anyhow::Error::msg)?,
        Err(e) => return Err(e.into()),
    };
    print_report(&report);
    Ok(())
}

fn print_report(r: &BackupReport) {
    println!(
        "backup written to {} ({} bytes): {} users, {} rooms, {} messages, change log at {}",
        r.path, r.bytes, r.users, r.rooms, r.messages, r.change_seq
    );
}

/// Whether a path names the embedded store's data directory (has its file).
fn has_store(dir: &Path) -> bool {
    dir.join("chatd.redb").is_file()
}
