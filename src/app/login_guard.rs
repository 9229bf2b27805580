//! Failed logins per account and per address, for the whole host (any shard's thread: the
//! state is behind one mutex, touched once per password login). Logins are refused with
//! `error-login-blocked-for-user` / `-ip` past the configured failures.

use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Instant;

use crate::config::{RateLimits, Rule};

/// Login names are counted by their first characters (a client picks them, and they are keys).
const MAX_KEY_CHARS: usize = 64;

fn name_key(name: &str) -> String {
    name.chars().take(MAX_KEY_CHARS).collect()
}

/// Why a login is refused before its password is even looked at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Blocked {
    User,
    Ip,
}

impl Blocked {
    pub fn code(self) -> &'static str {
        match self {
            Blocked::User => "error-login-blocked-for-user",
            Blocked::Ip => "error-login-blocked-for-ip",
        }
    }

    pub fn reason(self) -> &'static str {
        match self {
            Blocked::User => "Login has been temporarily blocked for this User",
            Blocked::Ip => "Login has been temporarily blocked for this IP",
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Failures {
    count: u32,
    last: Instant,
}

#[derive(Default)]
struct LoginState {
    users: HashMap<String, Failures>,
    ips: HashMap<IpAddr, Failures>,
}

/// Most accounts and addresses tracked at once; past it new ones are not tracked (and not
/// blocked) until old entries expire.
const MAX_TRACKED: usize = 100_000;

/// Failed logins per account and per address, for the whole host: after `calls` failures
/// (since the last success, each within `interval` of the one before), the account or address
/// is blocked until `interval` after the last failure.
pub struct LoginGuard {
    user_rule: Rule,
    ip_rule: Rule,
    enabled: bool,
    state: Mutex<LoginState>,
}

impl LoginGuard {
    pub fn new(rules: &RateLimits) -> Self {
        Self {
            user_rule: rules.login_failures_per_user,
            ip_rule: rules.login_failures_per_ip,
            enabled: rules.login_blocking,
            state: Mutex::new(LoginState::default()),
        }
    }

    /// The login name as counted: lowercased, its first characters only.
    fn key(name: &str) -> String {
        name_key(name).to_lowercase()
    }

    /// Whether logins as `name` or from `ip` are blocked now.
    pub fn blocked(&self, name: &str, ip: Option<IpAddr>, now: Instant) -> Option<Blocked> {
        if !self.enabled {
            return None;
        }
        let state = self.state.lock().ok()?;
        let over = |f: Option<&Failures>, rule: Rule| {
            rule.calls > 0 && f.is_some_and(|f| f.count >= rule.calls && now < f.last + rule.interval())
        };
        if over(state.users.get(&Self::key(name)), self.user_rule) {
            return Some(Blocked::User);
        }
        if over(ip.and_then(|ip| state.ips.get(&ip)), self.ip_rule) {
            return Some(Blocked::Ip);
        }
        None
    }

    /// Records a failed login as `name` from `ip`.
    pub fn failed(&self, name: &str, ip: Option<IpAddr>, now: Instant) {
        if !self.enabled {
            return;
        }
        let Ok(mut state) = self.state.lock() else { return };
        let state = &mut *state;
        fn bump<K: Hash + Eq>(map: &mut HashMap<K, Failures>, key: K, rule: Rule, now: Instant) {
            if rule.calls == 0 {
                return;
            }
            if map.len() >= MAX_TRACKED {
                map.retain(|_, f| now < f.last + rule.interval());
                if map.len() >= MAX_TRACKED && !map.contains_key(&key) {
                    return;
                }
            }
            let f = map.entry(key).or_insert(Failures { count: 0, last: now });
            if now >= f.last + rule.interval() {
                f.count = 0;
            }
            f.count = f.count.saturating_add(1);
            f.last = now;
        }
        bump(&mut state.users, Self::key(name), self.user_rule, now);
        if let Some(ip) = ip {
            bump(&mut state.ips, ip, self.ip_rule, now);
        }
    }

    /// A successful login as `name`: its account's failures are forgotten.
    pub fn succeeded(&self, name: &str) {
        if let Ok(mut state) = self.state.lock() {
            state.users.remove(&Self::key(name));
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::time::Duration;

    fn rule(calls: u32, interval_ms: u64) -> Rule {
        Rule { calls, interval_ms }
    }

    #[test]
    fn login_failures_block_the_account_and_the_address_then_expire() {
        let rules = RateLimits {
            login_failures_per_user: rule(3, 1000),
            login_failures_per_ip: rule(5, 1000),
            ..RateLimits::default()
        };
        let g = LoginGuard::new(&rules);
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let t0 = Instant::now();
        for i in 0..3 {
            assert_eq!(g.blocked("Alice", Some(ip), t0), None, "attempt {i}");
            g.failed("Alice", Some(ip), t0);
        }
        assert_eq!(g.blocked("alice", Some(ip), t0), Some(Blocked::User));
        assert_eq!(g.blocked("bob", Some(ip), t0), None);
        g.failed("bob", Some(ip), t0);
        g.failed("carol", Some(ip), t0);
        assert_eq!(g.blocked("dave", Some(ip), t0), Some(Blocked::Ip));
        assert_eq!(g.blocked("dave", None, t0), None);
        let later = t0 + Duration::from_millis(1000);
        assert_eq!(g.blocked("alice", Some(ip), later), None, "blocks end");
        g.failed("bob", None, t0);
        g.succeeded("BOB");
        assert_eq!(g.blocked("bob", None, t0), None);
    }
}
