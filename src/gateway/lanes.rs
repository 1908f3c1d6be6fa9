//! The connections admission runs on. sqlx's pool sends a Sync and waits for the server's
//! answer every time a connection goes back to it (its test on release): for admission, one
//! statement per call, that doubles the round trips and the wake-ups of both processes. Lanes
//! are plain connections handed out one call at a time and put back as they are; one whose
//! statement did not run to its end (an I/O error, a timeout, or the caller's future dropped
//! mid-way) is closed instead, so no lane is ever reused in an unknown state.

use sqlx::postgres::{PgConnectOptions, PgConnection, PgDatabaseError, PgSeverity};
use sqlx::ConnectOptions;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tokio::sync::{Semaphore, SemaphorePermit};

/// Waiting for a free lane and connecting a new one share this budget.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(5);
/// One admission statement; past it the lane is closed and the call answered 503 (a server or
/// network that stopped answering must not hold calls, and their lanes, for minutes).
pub const STATEMENT_TIMEOUT: Duration = Duration::from_secs(10);
/// A lane is replaced after this long (as sqlx's pool does), so that settings changed with
/// ALTER ROLE/DATABASE ... SET and a re-created extension's functions reach every lane.
const MAX_LIFETIME: Duration = Duration::from_secs(30 * 60);
/// A lane idle this long is closed rather than reused (sqlx's pool default).
const IDLE_TIMEOUT: Duration = Duration::from_secs(10 * 60);

struct Idle {
    connection: PgConnection,
    opened: Instant,
    since: Instant,
}

pub struct Lanes {
    options: PgConnectOptions,
    idle: Mutex<Vec<Idle>>,
    /// At most this many lanes exist; more callers wait for one to come back.
    permits: Semaphore,
}

pub struct Lane<'a> {
    connection: Option<(PgConnection, Instant)>,
    lanes: &'a Lanes,
    _permit: SemaphorePermit<'a>,
}

impl Lanes {
    pub fn new(options: PgConnectOptions, size: usize) -> Lanes {
        Lanes {
            options,
            idle: Mutex::new(Vec::with_capacity(size)),
            permits: Semaphore::new(size),
        }
    }

    /// An idle lane, or a new connection when none is idle and fewer than `size` exist; within
    /// ACQUIRE_TIMEOUT, waiting and connecting together.
    pub async fn acquire(&self) -> Result<Lane<'_>, sqlx::Error> {
        tokio::time::timeout(ACQUIRE_TIMEOUT, self.acquire_untimed())
            .await
            .map_err(|_| sqlx::Error::PoolTimedOut)?
    }

    async fn acquire_untimed(&self) -> Result<Lane<'_>, sqlx::Error> {
        let permit = self
            .permits
            .acquire()
            .await
            .map_err(|_| sqlx::Error::PoolClosed)?;
        loop {
            let idle = self.idle.lock().unwrap_or_else(|p| p.into_inner()).pop();
            match idle {
                Some(idle)
                    if idle.opened.elapsed() < MAX_LIFETIME
                        && idle.since.elapsed() < IDLE_TIMEOUT =>
                {
                    return Ok(Lane {
                        connection: Some((idle.connection, idle.opened)),
                        lanes: self,
                        _permit: permit,
                    })
                }
                // Too old: closed (dropped) and the next one tried.
                Some(_) => continue,
                None => {
                    let connection = self.options.connect().await?;
                    return Ok(Lane {
                        connection: Some((connection, Instant::now())),
                        lanes: self,
                        _permit: permit,
                    });
                }
            }
        }
    }
}

impl Lane<'_> {
    pub fn connection(&mut self) -> Option<&mut PgConnection> {
        self.connection.as_mut().map(|(connection, _)| connection)
    }

    /// Puts the lane back after a statement that ran to its end: it succeeded, or the server
    /// refused it with an ERROR (the connection reads the rest of that answer before its next
    /// statement). Any other outcome drops the lane, which closes its connection, and the idle
    /// lanes with it: what broke one (a restart of the server, whose FATAL 57P01 each session
    /// reads as the answer to its next statement) most likely broke them all, and each would
    /// otherwise fail a call of its own before being replaced.
    pub fn finish<T>(mut self, outcome: &Result<T, sqlx::Error>) {
        let reusable = match outcome {
            Ok(_) => true,
            Err(err @ sqlx::Error::Database(_)) => !ended_by_server(err),
            Err(_) => false,
        };
        let mut idle = self.lanes.idle.lock().unwrap_or_else(|p| p.into_inner());
        if reusable {
            idle.extend(self.connection.take().map(|(connection, opened)| Idle {
                connection,
                opened,
                since: Instant::now(),
            }));
        } else {
            idle.clear();
        }
    }
}

/// The server ended the session: a FATAL (or PANIC) error, after which it closes the connection.
pub fn ended_by_server(err: &sqlx::Error) -> bool {
    match err {
        sqlx::Error::Database(db) => db
            .try_downcast_ref::<PgDatabaseError>()
            .is_some_and(|pg| matches!(pg.severity(), PgSeverity::Fatal | PgSeverity::Panic)),
        _ => false,
    }
}
