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
const MAX_PER_LOGIN: usize = 5;
const MAX_SESSIONS: usize = 1000;
/// Keys (logins, client addresses) the sign-in limiter tracks at most.
const MAX_KEYS: usize = 100_000;
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
        let mut ended: Vec<Arc<Session>> = Vec::new();
        live.retain(|_, s| {
            let keep = !self.expired(s);
            if !keep {
                ended.push(s.clone());
            }
            keep
        });
        // A login keeps at most MAX_PER_LOGIN sessions (its oldest ends), the console at most
        // MAX_SESSIONS: sign-ins cannot pile up database connections.
        let mut theirs: Vec<([u8; 32], Instant)> = live
            .iter()
            .filter(|(_, s)| s.login == session.login)
            .map(|(k, s)| (*k, s.started))
            .collect();
        theirs.sort_by_key(|(_, started)| *started);
        while theirs.len() >= MAX_PER_LOGIN {
            let (oldest, _) = theirs.remove(0);
            ended.extend(live.remove(&oldest));
        }
        if live.len() >= MAX_SESSIONS {
            if let Some(oldest) = live.iter().min_by_key(|(_, s)| s.started).map(|(k, _)| *k) {
                ended.extend(live.remove(&oldest));
            }
        }
        live.insert(id, session);
        drop(live);
        for gone in ended {
            let pool = gone.pool.clone();
            tokio::spawn(async move { pool.close().await });
        }
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

    /// Counts an attempt against the key before it runs (so that attempts in parallel cannot
    /// all slip under the limit); `forgive` takes it back when the attempt succeeds.
    pub fn begin(&self, key: &str) -> Result<(), u64> {
        let mut failures = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        // Bounded memory: windows that ended go first; if the table is still full, a key it does
        // not know is let through untracked (flooding the table with names must neither reset
        // anyone's count nor lock everyone else out; the other key still counts).
        if failures.len() >= MAX_KEYS && !failures.contains_key(key) {
            failures.retain(|_, (start, _)| start.elapsed() < self.window);
            if failures.len() >= MAX_KEYS {
                return Ok(());
            }
        }
        let entry = failures
            .entry(key.to_string())
            .or_insert((Instant::now(), 0));
        if entry.0.elapsed() >= self.window {
            *entry = (Instant::now(), 0);
        }
        if entry.1 >= self.limit {
            let left = self.window.saturating_sub(entry.0.elapsed());
            return Err(left.as_secs().max(1));
        }
        entry.1 += 1;
        Ok(())
    }

    pub fn forgive(&self, key: &str) {
        let mut failures = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(entry) = failures.get_mut(key) {
            entry.1 = entry.1.saturating_sub(1);
        }
    }
}

/// The rate-limit keys of a sign-in: the login (as PostgreSQL names it: case matters), and the
/// client's address (an IPv4 client as itself, also on an IPv6 socket; an IPv6 client by its
/// /64, which one host usually holds whole).
pub fn limiter_keys(login: &str, client: IpAddr) -> [String; 2] {
    let client = match client {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(client),
        v4 => v4,
    };
    let address = match client {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => {
            let s = v6.segments();
            format!("{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3])
        }
    };
    [format!("login:{login}"), format!("client:{address}")]
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
    fn the_limiter_counts_attempts_before_they_run() {
        let limiter = FailureLimiter::new(3, Duration::from_secs(60));
        // Three attempts in flight at once use up the limit; the fourth waits.
        for _ in 0..3 {
            assert!(limiter.begin("login:a").is_ok());
        }
        assert!(limiter.begin("login:a").is_err());
        assert!(
            limiter.begin("login:b").is_ok(),
            "another key has its own count"
        );
        // A success gives its attempt back.
        limiter.forgive("login:a");
        assert!(limiter.begin("login:a").is_ok());
        assert!(limiter.begin("login:a").is_err());
    }

    #[test]
    fn ipv4_clients_on_an_ipv6_socket_count_as_themselves() {
        let mapped: IpAddr = "::ffff:10.1.2.3".parse().unwrap();
        let other: IpAddr = "::ffff:10.9.9.9".parse().unwrap();
        assert_eq!(limiter_keys("a", mapped)[1], "client:10.1.2.3");
        assert_ne!(limiter_keys("a", mapped)[1], limiter_keys("a", other)[1]);
        assert_eq!(
            limiter_keys("Admin", mapped)[0],
            "login:Admin",
            "PostgreSQL's names are case-sensitive"
        );
    }

    #[test]
    fn tokens_differ() {
        assert_ne!(random_token(), random_token());
    }
}
