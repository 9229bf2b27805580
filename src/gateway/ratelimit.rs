//! Rate limits with Rocket.Chat's rules and defaults (`[rate_limits]`): DDP calls per IP, user,
//! connection, user × method and connection × method, plus the per-method rules of
//! `sendMessage`, `createDirectMessage` and `setUserStatus`; REST calls per endpoint and IP; and
//! failed logins per account and per IP (the account or address is then blocked for a while).
//!
//! Counters are fixed windows, like Meteor's rate limiter: the first call opens a window of the
//! rule's interval, and calls past the limit inside it are refused until it ends. Request
//! counters live on the shard that serves the request (no lock shared between shards; a client
//! spread over several shards gets each shard's allowance); login failures are counted for the
//! whole host under one lock, taken once per login attempt. Every map is swept of ended windows
//! as it grows, so memory follows the number of recent callers.

use std::cell::RefCell;
use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::config::{RateLimits, Rule};
use crate::ids::UserId;
use crate::protocol::ddp::MeteorError;

/// The answer of one counter: allowed or not, calls left, and when the window ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verdict {
    pub allowed: bool,
    pub limit: u32,
    pub remaining: u32,
    pub reset_in: Duration,
}

impl Verdict {
    /// Meteor's DDP error for a refused call.
    pub fn ddp_error(&self) -> MeteorError {
        let mut e = MeteorError::new(
            "too-many-requests",
            format!(
                "Error, too many requests. Please slow down. You must wait {} seconds before trying again.",
                seconds(self.reset_in)
            ),
        );
        e.details = Some(json!({ "timeToReset": self.reset_in.as_millis() as u64 }));
        e
    }
}

/// Whole seconds to wait, rounded up (as Rocket.Chat shows them).
pub fn seconds(d: Duration) -> u64 {
    d.as_millis().div_ceil(1000) as u64
}

#[derive(Debug, Clone, Copy)]
struct Window {
    ends: Instant,
    count: u32,
}

/// Fixed-window counters by key; swept of ended windows whenever it doubles in size, and never
/// holding more than `cap` keys (a new key past it is not counted).
pub struct Counters<K> {
    map: HashMap<K, Window>,
    sweep_at: usize,
    cap: usize,
}

impl<K> Default for Counters<K> {
    fn default() -> Self {
        Self::with_cap(MAX_KEYS)
    }
}

impl<K> Counters<K> {
    pub fn with_cap(cap: usize) -> Self {
        Self {
            map: HashMap::new(),
            sweep_at: MIN_SWEEP,
            cap,
        }
    }
}

const MIN_SWEEP: usize = 64;
/// Keys one shard-wide map holds at most.
const MAX_KEYS: usize = 1 << 20;
/// Method and subscription names one connection's map holds at most.
const MAX_CONNECTION_KEYS: usize = 1024;

impl<K: Hash + Eq> Counters<K> {
    /// Counts one call under `key`; `None` when the rule is off (`calls = 0`).
    pub fn hit(&mut self, key: K, rule: Rule, now: Instant) -> Option<Verdict> {
        if rule.calls == 0 {
            return None;
        }
        if self.map.len() >= self.sweep_at {
            self.map.retain(|_, w| w.ends > now);
            self.sweep_at = (self.map.len() * 2).max(MIN_SWEEP);
        }
        if self.map.len() >= self.cap && !self.map.contains_key(&key) {
            return None;
        }
        let w = self.map.entry(key).or_insert(Window {
            ends: now + rule.interval(),
            count: 0,
        });
        if w.ends <= now {
            *w = Window {
                ends: now + rule.interval(),
                count: 0,
            };
        }
        w.count = w.count.saturating_add(1);
        Some(Verdict {
            allowed: w.count <= rule.calls,
            limit: rule.calls,
            remaining: rule.calls.saturating_sub(w.count),
            reset_in: w.ends.saturating_duration_since(now),
        })
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

/// Keeps the most restrictive refusal of several counters (the one that ends last).
fn worst(acc: Option<Verdict>, v: Option<Verdict>) -> Option<Verdict> {
    match (acc, v) {
        (Some(a), Some(b)) if !b.allowed && (a.allowed || b.reset_in > a.reset_in) => Some(b),
        (None, Some(b)) if !b.allowed => Some(b),
        (a, _) => a,
    }
}

/// Longest part of a client-chosen name (method, subscription, login) kept as a counter key.
const MAX_KEY_CHARS: usize = 64;

fn name_key(name: &str) -> String {
    name.chars().take(MAX_KEY_CHARS).collect()
}

/// What a DDP call is: a method or a subscription, by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    Method,
    Sub,
}

/// One connection's own counters (kept by its session).
pub struct ConnectionCounters {
    all: Counters<()>,
    by_name: Counters<(Kind, String)>,
}

impl Default for ConnectionCounters {
    fn default() -> Self {
        Self {
            all: Counters::default(),
            by_name: Counters::with_cap(MAX_CONNECTION_KEYS),
        }
    }
}

/// Who a REST call is counted against: the logged-in user, or the address before login (so a
/// company behind one NAT address does not share one bucket).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum RestKey {
    User(UserId),
    Ip(IpAddr),
}

/// A shard's counters for DDP users and addresses and for REST endpoints.
#[derive(Default)]
pub struct ShardCounters {
    ddp_ip: RefCell<Counters<IpAddr>>,
    ddp_user: RefCell<Counters<UserId>>,
    ddp_user_name: RefCell<Counters<(UserId, Kind, String)>>,
    own_rules: RefCell<Counters<(UserId, &'static str)>>,
    rest: RefCell<Counters<(RestKey, String)>>,
}

/// Methods with a rule of their own (left out of the by-method rules), and whether users who
/// may send many messages (roles `admin`, `bot`) skip it.
fn own_rule(rules: &RateLimits, name: &str) -> Option<(&'static str, Rule, bool)> {
    match name {
        "sendMessage" => Some(("sendMessage", rules.send_message, true)),
        "createDirectMessage" => Some(("createDirectMessage", rules.create_direct_message, true)),
        "setUserStatus" => Some(("setUserStatus", rules.set_user_status, false)),
        _ => None,
    }
}

/// Roles that skip the message rules (Rocket.Chat's `send-many-messages` and
/// `api-bypass-rate-limit` permissions go to these roles by default).
pub fn privileged(roles: &[String]) -> bool {
    roles.iter().any(|r| r == "admin" || r == "bot")
}

/// The by-method rule for `name`: `stream-*` names get four times the calls over four times
/// the interval, as in Rocket.Chat.
fn by_name(rule: Rule, name: &str) -> Rule {
    if name.starts_with("stream-") {
        Rule {
            calls: rule.calls.saturating_mul(4),
            interval_ms: rule.interval_ms.saturating_mul(4),
        }
    } else {
        rule
    }
}

pub struct DdpCall<'a> {
    pub kind: Kind,
    pub name: &'a str,
    pub ip: IpAddr,
    /// The logged-in user and whether they hold a privileged role.
    pub user: Option<(&'a UserId, bool)>,
}

impl ShardCounters {
    /// Counts one DDP call against every rule that applies; `Err` with the longest wait when
    /// any refuses it.
    pub fn check_ddp(
        &self,
        rules: &RateLimits,
        conn: &mut ConnectionCounters,
        call: &DdpCall<'_>,
        now: Instant,
    ) -> Result<(), Verdict> {
        if !rules.enabled {
            return Ok(());
        }
        let own = match call.kind {
            Kind::Method => own_rule(rules, call.name),
            Kind::Sub => None,
        };
        // Past the connection's own limit nothing else is counted, so a flood of refused calls
        // adds no keys anywhere.
        if let Some(v) = conn.all.hit((), rules.ddp_connection, now) {
            if !v.allowed {
                return Err(v);
            }
        }
        // Names are counted by their first characters: a client picks them, and they are keys.
        let name = name_key(call.name);
        let mut refused = None;
        if own.is_none() {
            let rule = by_name(rules.ddp_connection_method, call.name);
            refused = worst(refused, conn.by_name.hit((call.kind, name.clone()), rule, now));
        }
        // Rocket.Chat leaves 127.0.0.1 out of the per-address rule.
        if call.ip != IpAddr::from([127, 0, 0, 1]) {
            refused = worst(refused, self.ddp_ip.borrow_mut().hit(call.ip, rules.ddp_ip, now));
        }
        if let Some((uid, privileged)) = call.user {
            refused = worst(
                refused,
                self.ddp_user.borrow_mut().hit(uid.clone(), rules.ddp_user, now),
            );
            match own {
                None => {
                    let rule = by_name(rules.ddp_user_method, call.name);
                    let key = (uid.clone(), call.kind, name);
                    refused = worst(refused, self.ddp_user_name.borrow_mut().hit(key, rule, now));
                }
                Some((name, rule, skip_if_privileged)) if !(skip_if_privileged && privileged) => {
                    refused = worst(refused, self.own_rules.borrow_mut().hit((uid.clone(), name), rule, now));
                }
                Some(_) => {}
            }
        }
        match refused {
            Some(v) => Err(v),
            None => Ok(()),
        }
    }

    /// Counts one REST call to `route` (method + endpoint) by `key`; `None` when REST limits
    /// are off, else the verdict (refused when `!allowed`).
    pub fn check_rest(&self, rules: &RateLimits, key: RestKey, route: &str, now: Instant) -> Option<Verdict> {
        if !rules.enabled {
            return None;
        }
        self.rest
            .borrow_mut()
            .hit((key, route.to_owned()), rules.rest_endpoint, now)
    }
}

/// The client address of a connection: its peer, or, behind `trusted` proxies, the address the
/// nearest untrusted hop gave in `X-Forwarded-For` (hops appended by the trusted proxies are
/// skipped from the right; anything malformed falls back to the peer).
pub fn client_ip(peer: IpAddr, forwarded_for: Option<&str>, trusted: usize) -> IpAddr {
    if trusted == 0 {
        return peer;
    }
    let Some(list) = forwarded_for else { return peer };
    let hops: Vec<&str> = list.split(',').map(str::trim).collect();
    hops.len()
        .checked_sub(trusted)
        .and_then(|i| hops.get(i))
        .and_then(|h| h.parse().ok())
        .unwrap_or(peer)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(calls: u32, interval_ms: u64) -> Rule {
        Rule { calls, interval_ms }
    }

    #[test]
    fn a_window_refuses_past_its_limit_and_reopens() {
        let mut c = Counters::default();
        let t0 = Instant::now();
        let r = rule(2, 1000);
        assert!(c.hit("k", r, t0).unwrap().allowed);
        let second = c.hit("k", r, t0 + Duration::from_millis(10)).unwrap();
        assert!(second.allowed && second.remaining == 0);
        let third = c.hit("k", r, t0 + Duration::from_millis(400)).unwrap();
        assert!(!third.allowed);
        assert_eq!(third.reset_in, Duration::from_millis(600));
        assert!(c.hit("other", r, t0 + Duration::from_millis(400)).unwrap().allowed);
        assert!(c.hit("k", r, t0 + Duration::from_millis(1000)).unwrap().allowed);
        assert!(c.hit("k", rule(0, 1000), t0).is_none(), "calls = 0 turns a rule off");
    }

    #[test]
    fn maps_are_swept_of_ended_windows() {
        let mut c = Counters::default();
        let t0 = Instant::now();
        for i in 0..10_000u32 {
            c.hit(i, rule(5, 10), t0 + Duration::from_millis(u64::from(i)));
        }
        assert!(c.len() < 200, "{} windows kept", c.len());
    }

    #[test]
    fn forwarded_for_is_read_only_behind_trusted_proxies() {
        let peer: IpAddr = "10.0.0.9".parse().unwrap();
        assert_eq!(client_ip(peer, Some("1.2.3.4"), 0), peer);
        assert_eq!(
            client_ip(peer, Some("1.2.3.4"), 1),
            "1.2.3.4".parse::<IpAddr>().unwrap()
        );
        assert_eq!(
            client_ip(peer, Some("6.6.6.6, 1.2.3.4, 10.0.0.1"), 2),
            "1.2.3.4".parse::<IpAddr>().unwrap()
        );
        assert_eq!(client_ip(peer, Some("junk"), 1), peer);
        assert_eq!(client_ip(peer, None, 1), peer);
        assert_eq!(client_ip(peer, Some("1.2.3.4"), 2), peer, "fewer hops than proxies");
    }

    #[test]
    fn ddp_rules_combine_connection_user_and_method_rules() {
        let rules = RateLimits {
            ddp_connection_method: rule(2, 60_000),
            ddp_user_method: rule(3, 60_000),
            send_message: rule(1, 60_000),
            ..RateLimits::default()
        };
        let shard = ShardCounters::default();
        let (mut c1, mut c2) = (ConnectionCounters::default(), ConnectionCounters::default());
        let uid = UserId::from("u1");
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let t = Instant::now();
        let call = |name, privileged| DdpCall {
            kind: Kind::Method,
            name,
            ip,
            user: Some((&uid, privileged)),
        };
        assert!(shard.check_ddp(&rules, &mut c1, &call("loadHistory", false), t).is_ok());
        assert!(shard.check_ddp(&rules, &mut c1, &call("loadHistory", false), t).is_ok());
        let refused = shard
            .check_ddp(&rules, &mut c1, &call("loadHistory", false), t)
            .unwrap_err();
        assert_eq!(refused.reset_in, Duration::from_secs(60));
        // A second connection of the same user: its own two, but the user's third is the limit
        // (the refused call counted too, as in Meteor).
        assert!(shard
            .check_ddp(&rules, &mut c2, &call("loadHistory", false), t)
            .is_err());
        // stream-* names: four times the calls.
        for _ in 0..8 {
            assert!(shard
                .check_ddp(&rules, &mut c2, &call("stream-notify-room", false), t)
                .is_ok());
        }
        assert!(shard
            .check_ddp(&rules, &mut c2, &call("stream-notify-room", false), t)
            .is_err());
        // sendMessage: its own rule only, which a privileged user skips.
        assert!(shard.check_ddp(&rules, &mut c1, &call("sendMessage", false), t).is_ok());
        assert!(shard
            .check_ddp(&rules, &mut c1, &call("sendMessage", false), t)
            .is_err());
        for _ in 0..5 {
            assert!(shard.check_ddp(&rules, &mut c1, &call("sendMessage", true), t).is_ok());
        }
        // Everything off.
        let off = RateLimits::off();
        for _ in 0..50 {
            assert!(shard.check_ddp(&off, &mut c1, &call("loadHistory", false), t).is_ok());
        }
    }

    #[test]
    fn refused_calls_and_long_names_add_no_keys() {
        let rules = RateLimits {
            ddp_connection: rule(10, 60_000),
            ..RateLimits::default()
        };
        let shard = ShardCounters::default();
        let mut conn = ConnectionCounters::default();
        let uid = UserId::from("u1");
        let t = Instant::now();
        let names: Vec<String> = (0..1000).map(|i| format!("{i}{}", "x".repeat(10_000))).collect();
        for name in &names {
            let call = DdpCall {
                kind: Kind::Method,
                name,
                ip: "192.0.2.1".parse().unwrap(),
                user: Some((&uid, false)),
            };
            let _ = shard.check_ddp(&rules, &mut conn, &call, t);
        }
        // Ten calls passed the connection's limit; each counted one short key.
        assert_eq!(conn.by_name.len(), 10);
        assert_eq!(shard.ddp_user_name.borrow().len(), 10);
        assert!(conn.by_name.map.keys().all(|(_, n)| n.chars().count() <= MAX_KEY_CHARS));
    }

    #[test]
    fn defaults_are_rocket_chats() {
        let d = RateLimits::default();
        assert!(d.enabled && d.login_blocking);
        assert_eq!(d.ddp_ip, rule(120_000, 60_000));
        assert_eq!(d.ddp_user, rule(1200, 60_000));
        assert_eq!(d.ddp_connection, rule(600, 60_000));
        assert_eq!(d.ddp_user_method, rule(20, 10_000));
        assert_eq!(d.ddp_connection_method, rule(10, 10_000));
        assert_eq!(d.send_message, rule(5, 1000));
        assert_eq!(d.create_direct_message, rule(10, 60_000));
        assert_eq!(d.set_user_status, rule(1, 1000));
        assert_eq!(d.rest_endpoint, rule(10, 60_000));
        assert_eq!(d.login_failures_per_user, rule(10, 300_000));
        assert_eq!(d.login_failures_per_ip, rule(50, 300_000));
    }
}
