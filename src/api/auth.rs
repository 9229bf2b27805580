//! Authentication: `login` (DDP: password or resume; REST `POST login`), `logout` (DDP and
//! REST, `GET logout` for the 0.2 SDK), `registerUser` / `users.register` and `me`. Runs on
//! the caller's shard.

use serde_json::{json, Value};

use super::ddp::{self, opt_str, Ddp, DdpResult};
use super::rest::{ok, Rest, RestError, RestResult};
use crate::app::error::{AppError, Code};
use crate::app::ops::{LoggedIn, LoginName};
use crate::auth;
use crate::protocol::ddp::MeteorError;
use crate::protocol::wire::{self, Dates};

/// DDP `login [{resume}]` or `login [{user, password}]`.
pub async fn ddp_login(c: &mut Ddp<'_>) -> DdpResult {
    let arg = c.obj_at(0, "login options")?;
    let logged_in = if let Some(resume) = arg.get("resume") {
        let token = resume
            .as_str()
            .ok_or_else(|| MeteorError::match_failed("resume must be a string"))?;
        c.ops().login_resume(token).await?
    } else {
        let name = match arg.get("user") {
            Some(Value::Object(sel)) => match (opt_str(sel, "username")?, opt_str(sel, "email")?) {
                (Some(name), _) => LoginName::Username(name),
                (None, Some(email)) => LoginName::Email(email),
                _ => return Err(MeteorError::match_failed("user must name a username or email")),
            },
            Some(Value::String(s)) if s.contains('@') => LoginName::Email(s),
            Some(Value::String(s)) => LoginName::Username(s),
            _ => return Err(MeteorError::new(400, "Unrecognized options for login request")),
        };
        let digest = match arg.get("password") {
            Some(Value::Object(p)) => match (opt_str(p, "digest")?, opt_str(p, "algorithm")?) {
                (Some(d), Some("sha-256")) if auth::is_sha256_hex(d) => d.to_lowercase(),
                _ => {
                    return Err(MeteorError::match_failed(
                        "password digest must be a sha-256 hex string",
                    ))
                }
            },
            Some(Value::String(plain)) => auth::sha256_hex(plain),
            _ => return Err(MeteorError::match_failed("password is required")),
        };
        c.ops().login_password(name, digest, Some(c.conn.ip)).await?
    };
    c.ctx
        .hub
        .attach_user(&c.conn.handle, &logged_in.user)
        .await
        .map_err(|e| e.with_method("login"))?;
    let LoggedIn {
        user,
        token,
        token_hash,
        expires,
        kind,
    } = logged_in;
    let id = user.id.clone();
    c.conn.user = Some(user);
    c.conn.token_hash = Some(token_hash);
    ddp::value(json!({"id": id, "token": token, "tokenExpires": {"$date": expires}, "type": kind}))
}

/// DDP `logout`: the token is revoked and the connection logged out (it stays open).
pub async fn ddp_logout(c: &mut Ddp<'_>) -> DdpResult {
    if let Some(hash) = c.conn.token_hash.take() {
        c.ops().logout(hash).await?;
    }
    c.conn.user = None;
    c.ctx.hub.detach_user(&c.conn.handle).await;
    ddp::none()
}

/// DDP `registerUser [{username, pass, email?, name?}]`: the new user's id.
pub async fn ddp_register(c: &mut Ddp<'_>) -> DdpResult {
    let form = c.obj_at(0, "registration form")?;
    let username = opt_str(form, "username")?.ok_or_else(|| MeteorError::match_failed("username is required"))?;
    let pass = opt_str(form, "pass")?.ok_or_else(|| MeteorError::match_failed("pass is required"))?;
    let user = c
        .ops()
        .register(
            "registerUser",
            username,
            pass,
            opt_str(form, "email")?,
            opt_str(form, "name")?,
        )
        .await?;
    ddp::value(json!(user.id))
}

fn login_failed() -> RestError {
    RestError {
        status: hyper::StatusCode::UNAUTHORIZED,
        body: json!({"success": false, "status": "error", "error": "Unauthorized", "message": "Unauthorized"}),
    }
}

/// REST `POST login`: `{user|username|email, password}` or `{resume}`.
pub async fn rest_login(c: &Rest<'_>) -> RestResult {
    let body = &c.body;
    let logged_in = if let Some(resume) = body.opt_str("resume")? {
        c.ops().login_resume(resume).await
    } else {
        let name = match (body.opt_str("user")?, body.opt_str("username")?, body.opt_str("email")?) {
            (Some(u), _, _) if u.contains('@') => LoginName::Email(u),
            (Some(u), _, _) | (None, Some(u), _) => LoginName::Username(u),
            (None, None, Some(e)) => LoginName::Email(e),
            _ => return Err(login_failed()),
        };
        let digest = match body.0.get("password") {
            Some(Value::String(plain)) => auth::sha256_hex(plain),
            Some(Value::Object(p)) => match (p.get("digest").and_then(Value::as_str), p.get("algorithm")) {
                (Some(d), Some(a)) if a == "sha-256" && auth::is_sha256_hex(d) => d.to_lowercase(),
                _ => return Err(RestError::invalid("password digest must be a sha-256 hex string")),
            },
            None | Some(Value::Null) => return Err(login_failed()),
            Some(_) => return Err(RestError::invalid("Param \"password\" must be a string")),
        };
        c.ops().login_password(name, digest, Some(c.ip)).await
    };
    let logged_in = match logged_in {
        Ok(l) => l,
        Err(AppError::Client {
            code: Code::Number(403),
            ..
        }) => return Err(login_failed()),
        Err(AppError::Client { code, .. }) if code.to_string() == "error-user-is-not-activated" => {
            return Err(login_failed())
        }
        Err(AppError::Client { code, reason, .. }) if code.to_string().starts_with("error-login-blocked") => {
            return Err(RestError {
                status: hyper::StatusCode::UNAUTHORIZED,
                body: json!({"success": false, "status": "error", "error": code.to_string(), "message": reason}),
            })
        }
        Err(e) => return Err(e.into()),
    };
    let me = wire::user(
        &logged_in.user,
        c.ops().presence(&logged_in.user).await?.0.as_str(),
        Dates::Iso,
        true,
    );
    Ok(ok(json!({
        "status": "success",
        "data": {"userId": logged_in.user.id, "authToken": logged_in.token, "me": me},
    })))
}

/// REST `POST logout` (and `GET logout`, as the 0.2 SDK sends it).
pub async fn rest_logout(c: &Rest<'_>) -> RestResult {
    if let Some(token) = &c.token {
        c.ops().logout(auth::token_hash(token)).await?;
    }
    Ok(ok(
        json!({"status": "success", "data": {"message": "You've been logged out!"}}),
    ))
}

/// REST `POST users.register {username, pass, email?, name?}`.
pub async fn rest_register(c: &Rest<'_>) -> RestResult {
    let b = &c.body;
    let user = c
        .ops()
        .register(
            "users.register",
            b.str("username")?,
            b.str("pass")?,
            b.opt_str("email")?,
            b.opt_str("name")?,
        )
        .await?;
    Ok(ok(json!({"user": wire::user(&user, "offline", Dates::Iso, false)})))
}

/// REST `GET me`.
pub async fn me(c: &Rest<'_>) -> RestResult {
    let user = c.user()?;
    let status = c.ops().presence(user).await?.0;
    Ok(ok(wire::user(user, status.as_str(), Dates::Iso, true)))
}
