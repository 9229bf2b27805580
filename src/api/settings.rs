//! The server check and public settings: `GET /api/info` (the Rocket.Chat version chatd answers
//! as, and the supported-versions data the apps check it against), `settings.public` (the
//! settings the apps read, with Rocket.Chat's ids, JSON types and defaults) and
//! `settings.oauth`. Runs on the caller's shard.

use serde_json::{json, Map, Value};

use super::rest::{ok, Answer, Rest, RestError, RestResult};
use crate::app::permissions::{self, Permission};
use crate::config::Config;
use crate::ctx::ShardCtx;
use crate::ids::{now_ms, random_id};
use crate::protocol::wire::iso;

/// Where small stored documents of the workspace's settings live.
pub const SETTINGS: &str = "settings";
/// The workspace's stable id (made once, on first need; imported from Rocket.Chat).
pub const UNIQUE_ID: &str = "uniqueID";
/// A supported-versions token signed by Rocket.Chat (imported from Rocket.Chat).
pub const SUPPORTED_VERSIONS_TOKEN: &str = "Cloud_Workspace_Supported_Versions_Token";

/// `GET /api/info`: `{version, minimumClientVersions, supportedVersions, success}`. Callers
/// holding `view-statistics` (`X-User-Id` / `X-Auth-Token`) see the whole version; others its
/// `major.minor`, as Rocket.Chat answers.
pub async fn info(ctx: &ShardCtx, uid: Option<&str>, token: Option<&str>) -> Value {
    let w = &ctx.config.workspace;
    let full = match (uid, token) {
        (Some(uid), Some(token)) => match ctx.ops().login_resume(token).await {
            Ok(l) => l.user.id.as_str() == uid && permissions::allows(Permission::ViewStatistics, &l.user.roles),
            Err(_) => false,
        },
        _ => false,
    };
    let version = if full {
        w.rocketchat_version.clone()
    } else {
        w.rocketchat_version.split('.').take(2).collect::<Vec<_>>().join(".")
    };
    let mut supported = unsigned_supported_versions(&ctx.config, ctx.started_at.elapsed());
    if let Some(token) = supported_versions_token(ctx).await {
        supported.insert("signed".into(), Value::String(token));
    }
    let mut body = json!({
        "version": version,
        "minimumClientVersions": {},
        "supportedVersions": supported,
        "success": true,
    });
    if let (Some(url), Some(o)) = (&ctx.config.root_url, body.as_object_mut()) {
        o.insert("rootUrl".into(), Value::String(url.clone()));
    }
    body
}

/// The signed token: the configured one, else one carried over from Rocket.Chat.
async fn supported_versions_token(ctx: &ShardCtx) -> Option<String> {
    if let Some(t) = &ctx.config.workspace.supported_versions_token {
        return Some(t.clone());
    }
    match ctx.ops().doc(SETTINGS, SUPPORTED_VERSIONS_TOKEN).await {
        Ok(Some(Value::String(t))) if !t.is_empty() => Some(t),
        Ok(_) => None,
        Err(e) => {
            tracing::debug!(error = %e, "supported-versions token unreadable; answering without it");
            None
        }
    }
}

/// The supported-versions data in its unsigned form (what the apps use when they cannot verify
/// a signed token and cannot reach Rocket.Chat's cloud): this version, supported until
/// `supported_for_days` after start-up.
fn unsigned_supported_versions(config: &Config, up_for: std::time::Duration) -> Map<String, Value> {
    let w = &config.workspace;
    let now = now_ms();
    let started = now.saturating_sub(i64::try_from(up_for.as_millis()).unwrap_or(0));
    let days = i64::try_from(w.supported_for_days).unwrap_or(0);
    let expiration = started.saturating_add(days.saturating_mul(86_400_000));
    let mut m = Map::new();
    m.insert("timestamp".into(), json!(iso(started)));
    m.insert("enforcementStartDate".into(), json!(iso(started)));
    m.insert("messages".into(), json!([]));
    m.insert(
        "versions".into(),
        json!([{"version": w.rocketchat_version, "expiration": iso(expiration)}]),
    );
    m
}

/// The workspace's unique id: stored once, made on first need.
pub async fn unique_id(c: &Rest<'_>) -> Result<String, RestError> {
    let ops = c.ops();
    if let Some(Value::String(id)) = ops.doc(SETTINGS, UNIQUE_ID).await? {
        return Ok(id);
    }
    let stored = ops
        .put_doc(
            "settings.public",
            SETTINGS,
            UNIQUE_ID.into(),
            json!(random_id()),
            true,
            None,
        )
        .await?;
    Ok(stored.as_str().unwrap_or_default().to_owned())
}

/// Every public setting the apps read: `(id, value)` with Rocket.Chat's JSON types. Values say
/// what chatd does (features it lacks are off), else Rocket.Chat's defaults.
/// `Cloud_Workspace_AirGapped_Restrictions_Remaining_Days` is never sent: 0 there makes every
/// room read-only in the mobile app.
fn public_settings(config: &Config, unique_id: &str) -> Vec<(&'static str, Value)> {
    let registration = if config.accounts.registration_open {
        "Public"
    } else {
        "Disabled"
    };
    let site_url = config.root_url.clone().unwrap_or_default();
    vec![
        ("Accounts_AllowEmailChange", json!(false)),
        ("Accounts_AllowPasswordChange", json!(false)),
        ("Accounts_AllowRealNameChange", json!(false)),
        ("Accounts_AllowUserAvatarChange", json!(false)),
        ("Accounts_AllowUserProfileChange", json!(false)),
        ("Accounts_AllowUserStatusMessageChange", json!(true)),
        ("Accounts_AllowUsernameChange", json!(false)),
        ("Accounts_AllowDeleteOwnAccount", json!(false)),
        ("Accounts_AllowInvisibleStatusOption", json!(true)),
        ("Accounts_AvatarBlockUnauthenticatedAccess", json!(false)),
        ("Accounts_AvatarExternalProviderUrl", json!("")),
        ("Accounts_RoomAvatarExternalProviderUrl", json!("")),
        ("Accounts_ConfirmPasswordPlaceholder", json!("")),
        ("Accounts_CustomFields", json!("")),
        ("Accounts_Directory_DefaultView", json!("channels")),
        ("Accounts_EmailOrUsernamePlaceholder", json!("")),
        ("Accounts_EmailVerification", json!(false)),
        ("Accounts_Iframe_api_method", json!("POST")),
        ("Accounts_Iframe_api_url", json!("")),
        ("Accounts_iframe_enabled", json!(false)),
        ("Accounts_ManuallyApproveNewUsers", json!(false)),
        ("Accounts_NamePlaceholder", json!("")),
        ("Accounts_PasswordPlaceholder", json!("")),
        ("Accounts_PasswordReset", json!(false)),
        ("Accounts_Password_Policy_AtLeastOneLowercase", json!(true)),
        ("Accounts_Password_Policy_AtLeastOneNumber", json!(true)),
        ("Accounts_Password_Policy_AtLeastOneSpecialCharacter", json!(true)),
        ("Accounts_Password_Policy_AtLeastOneUppercase", json!(true)),
        ("Accounts_Password_Policy_Enabled", json!(false)),
        ("Accounts_Password_Policy_ForbidRepeatingCharacters", json!(true)),
        ("Accounts_Password_Policy_ForbidRepeatingCharactersCount", json!(3)),
        ("Accounts_Password_Policy_MaxLength", json!(-1)),
        ("Accounts_Password_Policy_MinLength", json!(7)),
        ("Accounts_RegistrationForm", json!(registration)),
        (
            "Accounts_RegistrationForm_LinkReplacementText",
            json!("New user registration is currently disabled"),
        ),
        ("Accounts_RequirePasswordConfirmation", json!(true)),
        ("Accounts_ShowFormLogin", json!(true)),
        ("Allow_Save_Media_to_Gallery", json!(true)),
        ("API_Embed", json!(false)),
        ("API_Gitlab_URL", json!("")),
        ("API_Use_REST_For_DDP_Calls", json!(false)),
        ("AutoTranslate_Enabled", json!(false)),
        ("Canned_Responses_Enable", json!(false)),
        ("CAS_enabled", json!(false)),
        ("CAS_login_url", json!("")),
        ("CDN_PREFIX", json!("")),
        ("CROWD_Enable", json!(false)),
        ("DirectMesssage_maxUsers", json!(crate::app::rules::MAX_DIRECT_MEMBERS)),
        ("E2E_Enable", json!(false)),
        ("E2E_Enable_Encrypt_Files", json!(false)),
        ("E2E_Enabled_Default_PrivateRooms", json!(false)),
        ("E2E_Enabled_Mentions", json!(false)),
        ("FEDERATION_Enabled", json!(false)),
        ("FileUpload_MaxFileSize", json!(104_857_600)),
        ("FileUpload_MediaTypeWhiteList", json!("")),
        ("FileUpload_ProtectFiles", json!(true)),
        ("Force_Screen_Lock", json!(false)),
        ("Force_Screen_Lock_After", json!(1800)),
        ("Hide_System_Messages", json!([])),
        ("LDAP_Enable", json!(false)),
        ("Livechat_allow_manual_on_hold", json!(false)),
        ("Livechat_request_comment_when_closing_conversation", json!(false)),
        ("Message_AllowDeleting", json!(true)),
        ("Message_AllowDeleting_BlockDeleteInMinutes", json!(0)),
        ("Message_AllowEditing", json!(true)),
        ("Message_AllowEditing_BlockEditInMinutes", json!(0)),
        ("Message_AllowPinning", json!(true)),
        ("Message_AllowStarring", json!(true)),
        ("Message_AudioRecorderEnabled", json!(false)),
        ("Message_GroupingPeriod", json!(300)),
        ("Message_Read_Receipt_Enabled", json!(false)),
        ("Message_Read_Receipt_Store_Users", json!(false)),
        ("Message_TimeAndDateFormat", json!("LLL")),
        ("Message_TimeFormat", json!("LT")),
        ("Number_of_users_autocomplete_suggestions", json!(5)),
        ("Presence_broadcast_disabled", json!(false)),
        ("Site_Name", json!(config.workspace.site_name)),
        ("Site_Url", json!(site_url)),
        ("Store_Last_Message", json!(true)),
        ("Threads_enabled", json!(true)),
        ("UI_Allow_room_names_with_special_chars", json!(false)),
        ("UI_Use_Real_Name", json!(false)),
        ("UTF8_User_Names_Validation", json!("[0-9a-zA-Z-_.]+")),
        ("VideoConf_Enable_Channels", json!(false)),
        ("VideoConf_Enable_DMs", json!(false)),
        ("VideoConf_Enable_Groups", json!(false)),
        ("VideoConf_Enable_Teams", json!(false)),
        ("uniqueID", json!(unique_id)),
    ]
}

/// The ids a `settings.public` request names: `?_id=a,b` (7.0+) and `?query={"_id": …}` (before
/// 7.0: a string or `{"$in": [...]}`), merged; `None` when it names none (every setting).
fn requested_ids(c: &Rest<'_>) -> Result<Option<Vec<String>>, RestError> {
    let mut ids: Vec<String> = Vec::new();
    let mut named = false;
    for list in c.query.0.get("_id").into_iter().flatten() {
        named = true;
        ids.extend(
            list.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_owned),
        );
    }
    if let Some(q) = c.query.get("query").filter(|q| !q.trim().is_empty()) {
        let parsed: Value =
            serde_json::from_str(q).map_err(|_| RestError::invalid("Param \"query\" must be a JSON object"))?;
        match parsed.get("_id") {
            None => {}
            Some(Value::String(id)) => {
                named = true;
                ids.push(id.clone());
            }
            Some(Value::Object(o)) => match o.get("$in") {
                Some(Value::Array(a)) => {
                    named = true;
                    ids.extend(a.iter().filter_map(Value::as_str).map(str::to_owned));
                }
                _ => {
                    return Err(RestError::invalid(
                        "Param \"query._id\" must be a string or {\"$in\": [...]}",
                    ))
                }
            },
            Some(_) => {
                return Err(RestError::invalid(
                    "Param \"query._id\" must be a string or {\"$in\": [...]}",
                ))
            }
        }
    }
    Ok(named.then_some(ids))
}

/// `GET settings.public[?_id=a,b | ?query={…}][&offset&count]`: `{settings: [{_id, value}],
/// count, offset, total}`. Without `count`, every matching setting comes in one page (the app's
/// own paging loop never moves its offset).
pub async fn public(c: &Rest<'_>) -> RestResult {
    let wanted = requested_ids(c)?;
    let unique = unique_id(c).await?;
    let all = public_settings(&c.ctx.config, &unique);
    let matching: Vec<(&str, Value)> = match &wanted {
        None => all,
        Some(ids) => all.into_iter().filter(|(id, _)| ids.iter().any(|w| w == id)).collect(),
    };
    let offset = c.query.number("offset")?.unwrap_or(0);
    let count = c.query.number("count")?.filter(|n| *n > 0).unwrap_or(matching.len());
    let total = matching.len();
    let page: Vec<Value> = matching
        .into_iter()
        .skip(offset)
        .take(count)
        .map(|(id, value)| json!({"_id": id, "value": value}))
        .collect();
    Ok(ok(json!({
        "settings": page,
        "count": page.len(),
        "offset": offset,
        "total": total,
    })))
}

/// `GET settings.oauth`: the OAuth login services (chatd has none).
pub async fn oauth(_c: &Rest<'_>) -> RestResult {
    Ok(Answer::Json(json!({"services": [], "success": true})))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn public_settings_have_the_types_the_apps_copy_them_into() {
        let config = Config::default();
        let all = public_settings(&config, "u1");
        let get = |id: &str| all.iter().find(|(k, _)| *k == id).map(|(_, v)| v.clone());
        assert_eq!(get("Accounts_ShowFormLogin"), Some(json!(true)));
        assert!(get("Hide_System_Messages").is_some_and(|v| v.is_array()));
        assert!(get("FileUpload_MaxFileSize").is_some_and(|v| v.is_number()));
        assert_eq!(get("uniqueID"), Some(json!("u1")));
        assert_eq!(get("API_Use_REST_For_DDP_Calls"), Some(json!(false)));
        assert!(get("Cloud_Workspace_AirGapped_Restrictions_Remaining_Days").is_none());
        let mut ids: Vec<&str> = all.iter().map(|(k, _)| *k).collect();
        ids.sort_unstable();
        let n = ids.len();
        ids.dedup();
        assert_eq!(ids.len(), n, "no setting twice");
    }

    #[test]
    fn the_unsigned_answer_supports_the_configured_version_for_its_days() {
        let config = Config::default();
        let m = unsigned_supported_versions(&config, std::time::Duration::ZERO);
        assert_eq!(m["versions"][0]["version"], config.workspace.rocketchat_version);
        let expiration = crate::protocol::wire::parse_date(&m["versions"][0]["expiration"]).unwrap_or(0);
        let days = (expiration - now_ms()) / 86_400_000;
        assert!((179..=180).contains(&days), "{days}");
        // Newer than the apps' built-in list (2023-10-11), so the apps use it.
        assert!(m["timestamp"].as_str().is_some_and(|t| t > "2023-10-11"));
    }
}
