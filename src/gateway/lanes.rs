//! The connections admission runs on. sqlx's pool sends a Sync and waits for the server's
//! answer every time a connection goes back to it (its test on release): for admission, one
//! statement per call, that doubles the round trips and the wake-ups of both processes. Lanes
//! are plain connections handed out one call at a time and put back as they are; one whose
//! statement did not run to its end (an I/O error, or its future dropped mid-way) is closed
//! instead, so no lane is ever reused in an unknown state.

use sqlx::postgres::{PgConnectOptions, PgConnection, PgDatabaseError, PgSeverity};
use sqlx::ConnectOptions;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tokio::sync::{Semaphore, SemaphorePermit};

/// Waiting for a free lane and connecting a new one share this budget.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(5);
/// A lane is replaced after this long (less up to 10 %, so that lanes opened in one burst are not
/// all replaced in one), as sqlx's pool does, so that settings changed with ALTER ROLE/DATABASE
/// ... SET and a re-created extension's functions reach every lane.
const MAX_LIFETIME: Duration = Duration::from_secs(30 * 60);
/// A lane idle this long is closed (sqlx's pool default).
const IDLE_TIMEOUT: Duration = Duration::from_secs(10 * 60);

struct Idle {
    connection: PgConnection,
    /// When it is to be replaced.
    expires: Instant,
    since: Instant,
}

impl Idle {
    fn usable(&self) -> bool {
        Instant::now() < self.expires && self.since.elapsed() < IDLE_TIMEOUT
    }
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

    /// An idle lane, or a new connection when none is idle (or `fresh` is asked for) and fewer
    /// than `size` exist; within ACQUIRE_TIMEOUT, waiting and connecting together.
    pub async fn acquire(&self, fresh: bool) -> Result<Lane<'_>, sqlx::Error> {
        tokio::time::timeout(ACQUIRE_TIMEOUT, self.acquire_untimed(fresh))
            .await
            .map_err(|_| sqlx::Error::PoolTimedOut)?
    }

    async fn acquire_untimed(&self, fresh: bool) -> Result<Lane<'_>, sqlx::Error> {
        let permit = self
            .permits
            .acquire()
            .await
            .map_err(|_| sqlx::Error::PoolClosed)?;
        if !fresh {
            let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
            // Too old ones are closed (dropped) on the way.
            while let Some(lane) = idle.pop() {
                if lane.usable() {
                    return Ok(Lane {
                        connection: Some((lane.connection, lane.expires)),
                        lanes: self,
                        _permit: permit,
                    });
                }
            }
        }
        let connection = self.options.connect().await?;
        let jitter = (uuid::Uuid::new_v4().as_u128() % 1000) as u32;
        let lifetime = MAX_LIFETIME - MAX_LIFETIME / 10_000 * jitter;
        Ok(Lane {
            connection: Some((connection, Instant::now() + lifetime)),
            lanes: self,
            _permit: permit,
        })
    }

    /// Closes the idle lanes past their lifetime or idle too long; run every second, so that the
    /// lanes a burst opened do not keep their server sessions until the next burst.
    pub fn prune(&self) {
        self.idle
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(Idle::usable);
    }
}

impl Lane<'_> {
    pub fn connection(&mut self) -> Option<&mut PgConnection> {
        self.connection.as_mut().map(|(connection, _)| connection)
    }

    /// Puts the lane back after a statement whose answer was read to its end: it succeeded, the
    /// server refused it with an ERROR (the connection reads the rest of that answer before its
    /// next statement), or its row did not decode. Any other outcome drops the lane, which
    /// closes its connection, and the idle lanes with it: what broke one (a restart of the
    /// server, whose FATAL 57P01 each session reads as the answer to its next statement) most
    /// likely broke them all, and each would otherwise fail a call of its own.
    pub fn finish<T>(mut self, outcome: &Result<T, sqlx::Error>) {
        let reusable = match outcome {
            Ok(_) => true,
            Err(err @ sqlx::Error::Database(_)) => !ended_by_server(err),
            Err(
                sqlx::Error::ColumnDecode { .. }
                | sqlx::Error::Decode(_)
                | sqlx::Error::RowNotFound,
            ) => true,
            Err(_) => false,
        };
        let mut idle = self.lanes.idle.lock().unwrap_or_else(|p| p.into_inner());
        if reusable {
            idle.extend(self.connection.take().map(|(connection, expires)| Idle {
                connection,
                expires,
                since: Instant::now(),
            }));
        } else {
            idle.clear();
        }
    }
}

/// The server ended the session with a FATAL, after which it closes the connection. A FATAL is
/// never sent after a commit (a PANIC can be, and does not count here): the statement it answers
/// did not run, or did not commit, so it may be sent again on another connection.
pub fn ended_by_server(err: &sqlx::Error) -> bool {
    match err {
        sqlx::Error::Database(db) => fatal(db.as_ref()),
        _ => false,
    }
}

/// A FATAL answer from the server (see `ended_by_server`).
pub fn fatal(db: &dyn sqlx::error::DatabaseError) -> bool {
    db.try_downcast_ref::<PgDatabaseError>()
        .is_some_and(|pg| matches!(pg.severity(), PgSeverity::Fatal))
}
