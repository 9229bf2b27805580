//! Roles and permissions: Rocket.Chat's default permission → roles table (the general chat
//! permissions; livechat, federation and marketplace ones are left out), the default roles,
//! and the checks the chat rules make with them. A permission holds when any of the user's
//! global roles (`admin`, `user`, `bot`, …) or of their roles in the room (`owner`,
//! `moderator`, `leader`) is listed for it. Pure data; any thread.

/// When this table last changed (`permissions.listAll?updatedSince` answers nothing newer than
/// what a client holds): 2026-12-04T00:00:00Z.
pub const PERMISSIONS_UPDATED_AT: i64 = 1_796_342_400_000;

/// A permission the rules check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Permission {
    CreateC,
    CreateP,
    CreateD,
    EditMessage,
    DeleteMessage,
    DeleteOwnMessage,
    PostReadonly,
    LeaveC,
    LeaveP,
    ViewStatistics,
    PinMessage,
    MentionAll,
    MentionHere,
    ViewDRoom,
    AddUserToJoinedRoom,
    AddUserToAnyCRoom,
    AddUserToAnyPRoom,
    RemoveUser,
    SetOwner,
    SetModerator,
    EditRoom,
    ArchiveRoom,
    UnarchiveRoom,
    SetReadonly,
}

impl Permission {
    pub fn id(self) -> &'static str {
        match self {
            Permission::CreateC => "create-c",
            Permission::CreateP => "create-p",
            Permission::CreateD => "create-d",
            Permission::EditMessage => "edit-message",
            Permission::DeleteMessage => "delete-message",
            Permission::DeleteOwnMessage => "delete-own-message",
            Permission::PostReadonly => "post-readonly",
            Permission::LeaveC => "leave-c",
            Permission::LeaveP => "leave-p",
            Permission::ViewStatistics => "view-statistics",
            Permission::PinMessage => "pin-message",
            Permission::MentionAll => "mention-all",
            Permission::MentionHere => "mention-here",
            Permission::ViewDRoom => "view-d-room",
            Permission::AddUserToJoinedRoom => "add-user-to-joined-room",
            Permission::AddUserToAnyCRoom => "add-user-to-any-c-room",
            Permission::AddUserToAnyPRoom => "add-user-to-any-p-room",
            Permission::RemoveUser => "remove-user",
            Permission::SetOwner => "set-owner",
            Permission::SetModerator => "set-moderator",
            Permission::EditRoom => "edit-room",
            Permission::ArchiveRoom => "archive-room",
            Permission::UnarchiveRoom => "unarchive-room",
            Permission::SetReadonly => "set-readonly",
        }
    }
}

/// Rocket.Chat's defaults (`app/authorization/server/constant/permissions.ts`), the general
/// chat part.
pub const PERMISSIONS: &[(&str, &[&str])] = &[
    ("access-permissions", &["admin"]),
    ("add-user-to-joined-room", &["admin", "owner", "moderator"]),
    ("add-user-to-any-c-room", &["admin"]),
    ("add-user-to-any-p-room", &[]),
    ("kick-user-from-any-c-room", &["admin"]),
    ("kick-user-from-any-p-room", &[]),
    ("api-bypass-rate-limit", &["admin", "bot", "app"]),
    ("archive-room", &["admin", "owner"]),
    ("assign-admin-role", &["admin"]),
    ("assign-roles", &["admin"]),
    ("ban-user", &["admin", "owner", "moderator"]),
    ("create-c", &["admin", "user", "bot", "app"]),
    ("create-d", &["admin", "user", "bot", "app"]),
    ("create-p", &["admin", "user", "bot", "app"]),
    ("create-personal-access-tokens", &["admin", "user"]),
    ("create-user", &["admin"]),
    ("clean-channel-history", &["admin"]),
    ("delete-c", &["admin", "owner"]),
    ("delete-d", &["admin"]),
    ("delete-message", &["admin", "owner", "moderator"]),
    ("delete-own-message", &["admin", "user"]),
    ("delete-p", &["admin", "owner"]),
    ("delete-user", &["admin"]),
    ("edit-message", &["admin", "owner", "moderator"]),
    ("edit-other-user-active-status", &["admin"]),
    ("edit-other-user-info", &["admin"]),
    ("edit-other-user-password", &["admin"]),
    ("edit-other-user-avatar", &["admin"]),
    ("edit-room", &["admin", "owner", "moderator"]),
    ("edit-room-avatar", &["admin", "owner", "moderator"]),
    ("force-delete-message", &["admin", "owner"]),
    ("join-without-join-code", &["admin", "bot", "app"]),
    ("leave-c", &["admin", "user", "bot", "anonymous", "app"]),
    ("leave-p", &["admin", "user", "bot", "anonymous", "app"]),
    ("logout-other-user", &["admin"]),
    ("manage-emoji", &["admin"]),
    ("manage-user-status", &["admin"]),
    ("mention-all", &["admin", "owner", "moderator", "user"]),
    ("mention-here", &["admin", "owner", "moderator", "user"]),
    ("mute-user", &["admin", "owner", "moderator"]),
    ("remove-user", &["admin", "owner", "moderator"]),
    ("run-import", &["admin"]),
    ("set-moderator", &["admin", "owner"]),
    ("set-owner", &["admin", "owner"]),
    ("send-many-messages", &["admin", "bot", "app"]),
    ("set-leader", &["admin", "owner"]),
    ("start-discussion", &["admin", "user", "guest", "app"]),
    ("start-discussion-other-user", &["admin", "user", "owner", "app"]),
    ("unarchive-room", &["admin"]),
    ("view-c-room", &["admin", "user", "bot", "app", "anonymous"]),
    ("view-d-room", &["admin", "user", "bot", "app", "guest"]),
    ("view-full-other-user-info", &["admin"]),
    ("view-joined-room", &["guest", "bot", "app", "anonymous"]),
    ("view-join-code", &["admin"]),
    ("view-logs", &["admin"]),
    ("view-other-user-channels", &["admin"]),
    ("view-p-room", &["admin", "user", "anonymous", "guest"]),
    ("view-privileged-setting", &["admin"]),
    ("view-room-administration", &["admin"]),
    ("view-statistics", &["admin"]),
    ("view-user-administration", &["admin"]),
    ("preview-c-room", &["admin", "user", "anonymous"]),
    ("view-outside-room", &["admin", "owner", "moderator", "user"]),
    ("view-broadcast-member-list", &["admin", "owner", "moderator"]),
    ("create-invite-links", &["admin", "owner", "moderator"]),
    ("toggle-room-e2e-encryption", &["owner", "admin"]),
    ("message-impersonate", &["bot", "app"]),
    ("create-team", &["admin", "user"]),
    ("delete-team", &["admin", "owner"]),
    ("edit-team", &["admin", "owner"]),
    ("add-team-member", &["admin", "owner", "moderator"]),
    ("edit-team-member", &["admin", "owner", "moderator"]),
    ("post-readonly", &["admin", "owner", "moderator"]),
    ("set-readonly", &["admin", "owner"]),
    ("set-react-when-readonly", &["admin", "owner"]),
    ("pin-message", &["owner", "moderator", "admin"]),
    ("mobile-upload-file", &["user", "admin"]),
    ("get-server-info", &["admin"]),
    ("bypass-time-limit-edit-and-delete", &["bot", "app"]),
];

/// Rocket.Chat's default roles: `(name, scope, description)`. `Users` roles are held by users,
/// `Subscriptions` roles within one room.
pub const ROLES: &[(&str, &str, &str)] = &[
    ("admin", "Users", "Admin"),
    ("moderator", "Subscriptions", "Moderator"),
    ("leader", "Subscriptions", "Leader"),
    ("owner", "Subscriptions", "Owner"),
    ("user", "Users", ""),
    ("bot", "Users", ""),
    ("app", "Users", ""),
    ("guest", "Users", ""),
    ("anonymous", "Users", ""),
];

/// The roles a permission is given to.
pub fn roles_of(permission: &str) -> &'static [&'static str] {
    PERMISSIONS
        .iter()
        .find(|(id, _)| *id == permission)
        .map_or(&[], |(_, roles)| roles)
}

/// Whether holding `roles` (global and room roles together) grants `p`.
pub fn allows<'r>(p: Permission, roles: impl IntoIterator<Item = &'r String>) -> bool {
    let granted = roles_of(p.id());
    roles.into_iter().any(|r| granted.contains(&r.as_str()))
}

/// Roles shown to everyone beside users' names (Rocket.Chat: `Users` scope with a description).
pub fn public_roles() -> impl Iterator<Item = &'static str> {
    ROLES
        .iter()
        .filter(|(_, scope, description)| *scope == "Users" && !description.is_empty())
        .map(|(name, _, _)| *name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_grant_as_rocket_chat_does() {
        let user = ["user".to_owned()];
        let owner = ["user".to_owned(), "owner".to_owned()];
        assert!(allows(Permission::CreateC, &user));
        assert!(!allows(Permission::EditMessage, &user));
        assert!(allows(Permission::EditMessage, &owner));
        assert!(allows(Permission::DeleteOwnMessage, &user));
        assert!(!allows(Permission::CreateD, &["guest".to_owned()]));
        assert!(allows(Permission::ViewStatistics, &["admin".to_owned()]));
        assert_eq!(public_roles().collect::<Vec<_>>(), ["admin"]);
        // Every permission the rules check is in the table.
        for p in [
            Permission::CreateC,
            Permission::CreateP,
            Permission::CreateD,
            Permission::EditMessage,
            Permission::DeleteMessage,
            Permission::DeleteOwnMessage,
            Permission::PostReadonly,
            Permission::LeaveC,
            Permission::LeaveP,
            Permission::ViewStatistics,
        ] {
            assert!(!roles_of(p.id()).is_empty(), "{}", p.id());
        }
    }
}
