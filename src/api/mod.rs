//! Rocket.Chat's API, one module per API group, each holding the REST endpoints and DDP methods
//! of its group side by side as thin adapters from the wire onto `app` operations; this file is
//! the routing table that finds them. The doors ([`rest`], [`ddp`]) read requests, authenticate,
//! and render answers and errors in each protocol's envelope. Everything here runs on the
//! caller's shard.

pub mod auth;
pub mod chat;
pub mod ddp;
pub mod message_actions;
pub mod misc;
pub mod permissions;
pub mod rest;
pub mod room_admin;
pub mod rooms;
pub mod settings;
pub mod streams;
pub mod subscriptions;
pub mod threads;
pub mod users;

use futures::future::LocalBoxFuture;
use hyper::Method;

use ddp::{Ddp, DdpResult};
use rest::{Access, Rest, RestResult};

/// A REST handler.
pub type RestHandler = for<'a> fn(&'a Rest<'a>) -> LocalBoxFuture<'a, RestResult>;
/// A DDP method handler.
pub type DdpHandler = for<'a, 'b> fn(&'a mut Ddp<'b>) -> LocalBoxFuture<'a, DdpResult>;

/// A handler function boxed for the table.
macro_rules! rest {
    ($f:path) => {{
        fn handler<'a>(c: &'a Rest<'a>) -> LocalBoxFuture<'a, RestResult> {
            Box::pin($f(c))
        }
        handler as RestHandler
    }};
}

macro_rules! ddp {
    ($f:path) => {{
        fn handler<'a, 'b>(c: &'a mut Ddp<'b>) -> LocalBoxFuture<'a, DdpResult> {
            Box::pin($f(c))
        }
        handler as DdpHandler
    }};
}

/// The REST routing table: `(method, endpoint under /api/v1/)` → the route as written (a
/// prefix for routes that take a path tail, like `method.call/<name>`), who may call it, and its
/// handler.
pub fn rest_route(method: &Method, endpoint: &str) -> Option<(&'static str, Access, RestHandler)> {
    use Access::{Public, User};
    // Routes with a tail: `method.call/<name>`, `method.callAnon/<name>`.
    if let Some((prefix, _)) = endpoint.split_once('/') {
        return match (method.as_str(), prefix) {
            ("POST", "method.call") => Some(("method.call", User, rest!(misc::method_call))),
            ("POST", "method.callAnon") => Some(("method.callAnon", Public, rest!(misc::method_call_anon))),
            _ => None,
        };
    }
    let (access, handler) = match (method.as_str(), endpoint) {
        // auth
        ("POST", "login") => (Public, rest!(auth::rest_login)),
        ("POST" | "GET", "logout") => (User, rest!(auth::rest_logout)),
        ("POST", "users.register") => (Public, rest!(auth::rest_register)),
        ("GET", "me") => (User, rest!(auth::me)),
        // settings and server
        ("GET", "settings.public") => (Public, rest!(settings::public)),
        ("GET", "settings.oauth") => (Public, rest!(settings::oauth)),
        // permissions and roles
        ("GET", "permissions.listAll") => (User, rest!(permissions::list_all)),
        ("GET", "roles.list") => (User, rest!(permissions::roles_list)),
        ("GET", "roles.getUsersInPublicRoles") => (User, rest!(permissions::users_in_public_roles)),
        // misc
        ("GET", "emoji-custom.list") => (User, rest!(misc::emoji_custom_list)),
        ("GET", "commands.list") => (User, rest!(misc::commands_list)),
        ("POST", "push.token") => (User, rest!(misc::push_token_set)),
        ("DELETE", "push.token") => (User, rest!(misc::push_token_delete)),
        // users
        ("GET", "users.info") => (User, rest!(users::info)),
        ("POST", "users.setStatus") => (User, rest!(users::rest_set_status)),
        ("GET", "users.getStatus") => (User, rest!(users::get_status)),
        ("GET", "users.getPresence") => (User, rest!(users::get_presence)),
        ("GET", "users.presence") => (User, rest!(users::presence)),
        ("GET", "users.list") => (User, rest!(users::list)),
        ("GET", "users.autocomplete") => (User, rest!(users::autocomplete)),
        // rooms
        ("GET", "rooms.get") => (User, rest!(rooms::rest_rooms_get)),
        ("POST", "channels.create") => (User, rest!(rooms::channels_create)),
        ("POST", "groups.create") => (User, rest!(rooms::groups_create)),
        ("POST", "im.create" | "dm.create") => (User, rest!(rooms::rest_create_direct)),
        ("GET", "channels.info") => (User, rest!(rooms::channels_info)),
        ("POST", "channels.join") => (User, rest!(rooms::channels_join)),
        ("POST", "channels.leave") => (User, rest!(rooms::channels_leave)),
        ("GET", "channels.list") => (User, rest!(rooms::channels_list)),
        ("GET", "channels.list.joined") => (User, rest!(rooms::channels_list_joined)),
        ("GET", "channels.members") => (User, rest!(rooms::channels_members)),
        ("GET", "groups.members") => (User, rest!(rooms::groups_members)),
        ("GET", "im.members" | "dm.members") => (User, rest!(rooms::im_members)),
        ("GET", "groups.info") => (User, rest!(rooms::groups_info)),
        ("POST", "groups.leave") => (User, rest!(rooms::groups_leave)),
        ("GET", "rooms.info") => (User, rest!(rooms::rooms_info)),
        ("POST", "rooms.leave") => (User, rest!(rooms::rooms_leave)),
        // room administration
        ("POST", "channels.invite" | "groups.invite") => (User, rest!(room_admin::rest_invite)),
        ("POST", "channels.kick" | "groups.kick") => (User, rest!(room_admin::rest_kick)),
        (
            "POST",
            "channels.addOwner"
            | "channels.removeOwner"
            | "channels.addModerator"
            | "channels.removeModerator"
            | "groups.addOwner"
            | "groups.removeOwner"
            | "groups.addModerator"
            | "groups.removeModerator",
        ) => (User, rest!(room_admin::rest_role)),
        (
            "POST",
            "channels.setTopic"
            | "channels.setAnnouncement"
            | "channels.setDescription"
            | "channels.rename"
            | "channels.setReadOnly"
            | "channels.archive"
            | "channels.unarchive"
            | "groups.setTopic"
            | "groups.setAnnouncement"
            | "groups.setDescription"
            | "groups.rename"
            | "groups.setReadOnly"
            | "groups.archive"
            | "groups.unarchive",
        ) => (User, rest!(room_admin::rest_setting)),
        ("POST", "rooms.saveRoomSettings") => (User, rest!(room_admin::rest_save_settings)),
        (
            "POST",
            "channels.open" | "channels.close" | "groups.open" | "groups.close" | "groups.hide" | "im.open"
            | "im.close" | "dm.open" | "dm.close" | "rooms.hide",
        ) => (User, rest!(room_admin::rest_open)),
        // subscriptions
        ("GET", "subscriptions.get") => (User, rest!(subscriptions::rest_get)),
        ("POST", "subscriptions.read") => (User, rest!(subscriptions::rest_read)),
        ("POST", "subscriptions.unread") => (User, rest!(subscriptions::rest_unread)),
        // chat
        ("POST", "chat.sendMessage") => (User, rest!(chat::rest_send)),
        ("POST", "chat.postMessage") => (User, rest!(chat::post_message)),
        ("POST", "chat.update") => (User, rest!(chat::rest_update)),
        ("POST", "chat.delete") => (User, rest!(chat::rest_delete)),
        ("GET", "chat.syncMessages") => (User, rest!(chat::sync_messages)),
        ("GET", "channels.messages") => (User, rest!(chat::channels_messages)),
        ("GET", "groups.messages") => (User, rest!(chat::groups_messages)),
        ("GET", "im.messages" | "dm.messages") => (User, rest!(chat::im_messages)),
        ("GET", "channels.history") => (User, rest!(chat::channels_history)),
        ("GET", "groups.history") => (User, rest!(chat::groups_history)),
        ("GET", "im.history" | "dm.history") => (User, rest!(chat::im_history)),
        // message actions
        ("POST", "chat.react") => (User, rest!(message_actions::rest_react)),
        ("POST", "chat.pinMessage") => (User, rest!(message_actions::rest_pin)),
        ("POST", "chat.unPinMessage") => (User, rest!(message_actions::rest_unpin)),
        ("POST", "chat.starMessage") => (User, rest!(message_actions::rest_star)),
        ("POST", "chat.unStarMessage") => (User, rest!(message_actions::rest_unstar)),
        ("GET", "chat.getMessage") => (User, rest!(message_actions::get_message)),
        ("GET", "chat.getPinnedMessages") => (User, rest!(message_actions::pinned)),
        ("GET", "chat.getStarredMessages") => (User, rest!(message_actions::starred)),
        ("GET", "chat.getMentionedMessages") => (User, rest!(message_actions::mentioned)),
        ("GET", "chat.search") => (User, rest!(message_actions::rest_search)),
        ("GET", "chat.getDeletedMessages") => (User, rest!(message_actions::deleted)),
        // threads
        ("GET", "chat.getThreadMessages") => (User, rest!(threads::rest_get_thread_messages)),
        ("GET", "chat.syncThreadMessages") => (User, rest!(threads::sync_thread_messages)),
        ("GET", "chat.getThreadsList") => (User, rest!(threads::rest_threads_list)),
        ("GET", "chat.syncThreadsList") => (User, rest!(threads::sync_threads_list)),
        ("POST", "chat.followMessage") => (User, rest!(threads::rest_follow)),
        ("POST", "chat.unfollowMessage") => (User, rest!(threads::rest_unfollow)),
        _ => return None,
    };
    Some(("", access, handler))
}

/// The DDP routing table: method name → handler. Methods that need a login check it themselves
/// (`Ddp::user`), so the error names the method as Rocket.Chat's does.
pub fn ddp_method(name: &str) -> Option<DdpHandler> {
    Some(match name {
        // auth
        "login" => ddp!(auth::ddp_login),
        "logout" => ddp!(auth::ddp_logout),
        "registerUser" => ddp!(auth::ddp_register),
        // permissions, roles, licences
        "getUserRoles" => ddp!(permissions::get_user_roles),
        "license:getModules" => ddp!(permissions::license_modules),
        "permissions/get" => ddp!(permissions::ddp_permissions_get),
        // users and presence
        "UserPresence:setDefaultStatus" => ddp!(users::set_default_status),
        "UserPresence:online" | "UserPresence:away" => ddp!(users::online_or_away),
        "setUserStatus" => ddp!(users::set_user_status),
        // rooms
        "createChannel" | "createPrivateGroup" => ddp!(rooms::ddp_create),
        "createDirectMessage" => ddp!(rooms::ddp_create_direct),
        "joinRoom" => ddp!(rooms::ddp_join),
        "leaveRoom" => ddp!(rooms::ddp_leave),
        "getRoomIdByNameOrId" => ddp!(rooms::room_id_by_name_or_id),
        "getRoomNameById" => ddp!(rooms::room_name_by_id),
        "rooms/get" => ddp!(rooms::ddp_rooms_get),
        "getUsersOfRoom" => ddp!(rooms::get_users_of_room),
        "addUserToRoom" | "addUsersToRoom" => ddp!(room_admin::ddp_add_users),
        "removeUserFromRoom" => ddp!(room_admin::ddp_remove_user),
        "addRoomOwner" | "removeRoomOwner" | "addRoomModerator" | "removeRoomModerator" => ddp!(room_admin::ddp_role),
        "saveRoomSettings" => ddp!(room_admin::ddp_save_settings),
        "archiveRoom" | "unarchiveRoom" => ddp!(room_admin::ddp_archive),
        "hideRoom" | "openRoom" => ddp!(room_admin::ddp_open),
        "spotlight" => ddp!(users::spotlight),
        // subscriptions
        "subscriptions/get" => ddp!(subscriptions::ddp_get),
        "readMessages" => ddp!(subscriptions::ddp_read),
        // chat
        "sendMessage" => ddp!(chat::ddp_send),
        "updateMessage" => ddp!(chat::ddp_update),
        "deleteMessage" => ddp!(chat::ddp_delete),
        "loadHistory" => ddp!(chat::load_history),
        "loadMissedMessages" => ddp!(chat::load_missed),
        // message actions
        "setReaction" => ddp!(message_actions::ddp_set_reaction),
        "pinMessage" => ddp!(message_actions::ddp_pin),
        "unpinMessage" => ddp!(message_actions::ddp_unpin),
        "starMessage" => ddp!(message_actions::ddp_star),
        "getSingleMessage" => ddp!(message_actions::ddp_get_single),
        "messageSearch" => ddp!(message_actions::ddp_search),
        // threads
        "getThreadMessages" => ddp!(threads::ddp_get_thread_messages),
        "getThreadsList" => ddp!(threads::ddp_threads_list),
        "followMessage" => ddp!(threads::ddp_follow),
        "unfollowMessage" => ddp!(threads::ddp_unfollow),
        "readThreads" => ddp!(threads::ddp_read_threads),
        // streams
        "stream-notify-room" => ddp!(streams::notify_room),
        _ => return None,
    })
}
