//! The connections admission runs on. sqlx's pool sends a Sync and waits for the server's
//! answer every time a connection goes back to it (its test on release): for admission, one
//! statement per call, that doubles the round trips and the wake-ups of both processes. Lanes
//! are plain connections handed out one call at a time and put back as they are; one whose
//! statement did not run to its end (an I/O error, or the caller's future dropped mid-way) is
//! closed instead, so no lane is ever reused in an unknown state.

use sqlx::postgres::{PgConnectOptions, PgConnection, PgDatabaseError, PgSeverity};
use sqlx::ConnectOptions;
use std::sync::Mutex;
use std::time::Duration;
use tokio::sync::{Semaphore, SemaphorePermit};

pub struct Lanes {
    options: PgConnectOptions,
    idle: Mutex<Vec<PgConnection>>,
    /// At most this many lanes exist; more callers wait for one to come back.
    permits: Semaphore,
    acquire_timeout: Duration,
}

pub struct Lane<'a> {
    connection: Option<PgConnection>,
    lanes: &'a Lanes,
    _permit: SemaphorePermit<'a>,
}

impl Lanes {
    pub fn new(options: PgConnectOptions, size: usize, acquire_timeout: Duration) -> Lanes {
        Lanes {
            options,
            idle: Mutex::new(Vec::with_capacity(size)),
            permits: Semaphore::new(size),
            acquire_timeout,
        }
    }

    /// An idle lane, or a new connection when none is idle and fewer than `size` exist.
    pub async fn acquire(&self) -> Result<Lane<'_>, sqlx::Error> {
        let permit = tokio::time::timeout(self.acquire_timeout, self.permits.acquire())
            .await
            .map_err(|_| sqlx::Error::PoolTimedOut)?
            .map_err(|_| sqlx::Error::PoolClosed)?;
        let idle = self.idle.lock().unwrap_or_else(|p| p.into_inner()).pop();
        let connection = match idle {
            Some(connection) => connection,
            None => self.options.connect().await?,
        };
        Ok(Lane {
            connection: Some(connection),
            lanes: self,
            _permit: permit,
        })
    }
}

impl Lane<'_> {
    pub fn connection(&mut self) -> &mut PgConnection {
        // Some until the lane is dropped.
        self.connection
            .as_mut()
            .unwrap_or_else(|| unreachable!("a lane holds its connection until dropped"))
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
            idle.extend(self.connection.take());
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
