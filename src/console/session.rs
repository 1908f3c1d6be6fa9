//! Console sessions: who is signed in, as which PostgreSQL login, with which CSRF token.
//!
//! A session lives in this process only: its id is 32 random bytes, its cookie carries the id and
//! an HMAC-SHA256 of it under a key made at start, and the login's password stays inside the
//! session's connection pool (never written anywhere, gone at sign-out, expiry or restart). A
//! cookie that is unsigned, tampered with, from another console process or for a session that
//! ended finds nothing.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub const COOKIE: &str = "bulkhead_console";
/// The sign-in form's own CSRF token, before any session exists.
pub const PRE_COOKIE: &str = "bulkhead_console_pre";

/// 32 bytes from the operating system's generator (two v4 UUIDs' random bits and more).
pub fn random_token() -> [u8; 32] {
    let mut out = [0u8; 32];
    out[..16].copy_from_slice(uuid::Uuid::new_v4().as_bytes());
    out[16..].copy_from_slice(uuid::Uuid::new_v4().as_bytes());
    // Each UUID fixes 6 version and variant bits; hash so every byte is uniform (244 random bits).
    use sha2::Digest;
    Sha256::digest(out).into()
}

/// Which of the console's roles the login is in (from the database at sign-in).
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct Roles {
    pub admin: bool,
    pub support: bool,
    pub finance: bool,
}

impl Roles {
    /// Money: spend, budgets, costs.
    pub fn sees_money(&self) -> bool {
        self.admin || self.finance
    }
}

pub struct Session {
    pub login: String,
    pub roles: Roles,
    /// Connects as the login, with its password: the only place the password is kept.
    pub pool: sqlx::PgPool,
    pub csrf: String,
    started: Instant,
    last_seen: Mutex<Instant>,
}

impl Session {
    pub fn csrf_matches(&self, offered: &str) -> bool {
        constant_time_eq(self.csrf.as_bytes(), offered.as_bytes())
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

pub struct Sessions {
    key: [u8; 32],
    idle: Duration,
    lifetime: Duration,
    live: Mutex<HashMap<[u8; 32], Arc<Session>>>,
}

impl Sessions {
    pub fn new(idle: Duration, lifetime: Duration) -> Self {
        Sessions {
            key: random_token(),
            idle,
            lifetime,
            live: Mutex::new(HashMap::new()),
        }
    }

    fn mac(&self, purpose: &str, id: &[u8]) -> Vec<u8> {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.key).expect("HMAC takes any key length");
        mac.update(purpose.as_bytes());
        mac.update(b"\0");
        mac.update(id);
        mac.finalize().into_bytes().to_vec()
    }

    /// `<id>.<mac>`, both base64url.
    pub fn sign(&self, purpose: &str, id: &[u8; 32]) -> String {
        format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(id),
            URL_SAFE_NO_PAD.encode(self.mac(purpose, id))
        )
    }

    /// The id a cookie value carries, if its MAC is this process's (checked in constant time).
    pub fn verify(&self, purpose: &str, value: &str) -> Option<[u8; 32]> {
        let (id, mac) = value.split_once('.')?;
        let id: [u8; 32] = URL_SAFE_NO_PAD.decode(id).ok()?.try_into().ok()?;
        let mac = URL_SAFE_NO_PAD.decode(mac).ok()?;
        let mut check =
            Hmac::<Sha256>::new_from_slice(&self.key).expect("HMAC takes any key length");
        check.update(purpose.as_bytes());
        check.update(b"\0");
        check.update(&id);
        check.verify_slice(&mac).ok()?;
        Some(id)
    }

    /// Starts a session; returns the cookie value.
    pub fn start(&self, login: String, roles: Roles, pool: sqlx::PgPool) -> String {
        let id = random_token();
        let session = Arc::new(Session {
            login,
            roles,
            pool,
            csrf: URL_SAFE_NO_PAD.encode(random_token()),
            started: Instant::now(),
            last_seen: Mutex::new(Instant::now()),
        });
        let mut live = self.live.lock().unwrap_or_else(|e| e.into_inner());
        live.retain(|_, s| !self.expired(s));
        live.insert(id, session);
        self.sign("session", &id)
    }

    fn expired(&self, session: &Session) -> bool {
        let last = *session.last_seen.lock().unwrap_or_else(|e| e.into_inner());
        session.started.elapsed() > self.lifetime || last.elapsed() > self.idle
    }

    /// The live session a cookie names, touched; an expired one is ended.
    pub fn find(&self, cookie_value: &str) -> Option<Arc<Session>> {
        let id = self.verify("session", cookie_value)?;
        let mut live = self.live.lock().unwrap_or_else(|e| e.into_inner());
        let session = live.get(&id)?.clone();
        if self.expired(&session) {
            live.remove(&id);
            let pool = session.pool.clone();
            tokio::spawn(async move { pool.close().await });
            return None;
        }
        *session.last_seen.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now();
        Some(session)
    }

    pub fn end(&self, cookie_value: &str) {
        let Some(id) = self.verify("session", cookie_value) else {
            return;
        };
        let removed = self
            .live
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&id);
        if let Some(session) = removed {
            let pool = session.pool.clone();
            tokio::spawn(async move { pool.close().await });
        }
    }

    pub fn lifetime(&self) -> Duration {
        self.lifetime
    }
}

/// Failed sign-ins per key (a login name, a client address) within a fixed window: past the
/// limit, sign-in is refused for that key until the window ends, password right or wrong.
pub struct FailureLimiter {
    limit: u32,
    window: Duration,
    failures: Mutex<HashMap<String, (Instant, u32)>>,
}

impl FailureLimiter {
    pub fn new(limit: u32, window: Duration) -> Self {
        FailureLimiter {
            limit,
            window,
            failures: Mutex::new(HashMap::new()),
        }
    }

    /// Seconds until the key may try again, if it is over its limit now.
    pub fn blocked_for(&self, key: &str) -> Option<u64> {
        let failures = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        let (start, count) = failures.get(key)?;
        let left = self.window.checked_sub(start.elapsed())?;
        (*count >= self.limit).then(|| left.as_secs().max(1))
    }

    pub fn failed(&self, key: &str) {
        let mut failures = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        // Bounded memory: forget windows that ended (and, past 100,000 keys, everything).
        if failures.len() > 100_000 {
            failures.retain(|_, (start, _)| start.elapsed() < self.window);
            if failures.len() > 100_000 {
                failures.clear();
            }
        }
        let entry = failures
            .entry(key.to_string())
            .or_insert((Instant::now(), 0));
        if entry.0.elapsed() >= self.window {
            *entry = (Instant::now(), 0);
        }
        entry.1 += 1;
    }
}

/// The rate-limit keys of a sign-in: the login, and the client's address (an IPv6 client by its
/// /64, which one host usually holds whole).
pub fn limiter_keys(login: &str, client: IpAddr) -> [String; 2] {
    let address = match client {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => {
            let s = v6.segments();
            format!("{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3])
        }
    };
    [
        format!("login:{}", login.to_lowercase()),
        format!("client:{address}"),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookies_verify_only_as_signed_by_this_process() {
        let sessions = Sessions::new(Duration::from_secs(60), Duration::from_secs(600));
        let id = random_token();
        let value = sessions.sign("session", &id);
        assert_eq!(sessions.verify("session", &value), Some(id));
        // Another purpose, another process, a flipped character: nothing.
        assert_eq!(sessions.verify("pre", &value), None);
        let other = Sessions::new(Duration::from_secs(60), Duration::from_secs(600));
        assert_eq!(other.verify("session", &value), None);
        let mut tampered = value.clone().into_bytes();
        tampered[3] = if tampered[3] == b'A' { b'B' } else { b'A' };
        assert_eq!(
            sessions.verify("session", std::str::from_utf8(&tampered).unwrap()),
            None
        );
        assert_eq!(sessions.verify("session", "no-dot"), None);
        assert_eq!(sessions.verify("session", ""), None);
    }

    #[test]
    fn the_limiter_blocks_after_the_limit() {
        let limiter = FailureLimiter::new(3, Duration::from_secs(60));
        for _ in 0..2 {
            limiter.failed("login:a");
        }
        assert_eq!(limiter.blocked_for("login:a"), None);
        limiter.failed("login:a");
        assert!(limiter.blocked_for("login:a").is_some());
        assert_eq!(limiter.blocked_for("login:b"), None);
    }

    #[test]
    fn tokens_differ() {
        assert_ne!(random_token(), random_token());
    }
}
