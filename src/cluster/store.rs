//! The cluster's rows in the PostgreSQL state store: instances with their heartbeats, and one
//! lease per mailbox (and one for the change feed). Times are the database's (`now()`), so
//! the instances' clocks need not agree.

use sqlx::PgPool;

use crate::db::{q, DbError};

/// One instance as the state store knows it.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct InstanceRow {
    /// Unique per process start (name, `#` and a random part).
    pub id: String,
    /// As configured or defaulted (host name and pid).
    pub name: String,
    /// Its admin API as peers reach it.
    pub admin_url: String,
    /// Seconds since its last heartbeat.
    pub heartbeat_age_seconds: f64,
    /// When it started (RFC 3339).
    pub started: String,
    /// It is stopping gracefully (handing its mailboxes over).
    pub stopping: bool,
}

/// One lease.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct LeaseRow {
    /// The mailbox (or `@crm-feed`).
    pub key: String,
    /// The holder's instance id; empty when released.
    pub owner: String,
    /// Counts acquisitions; grows by one at each.
    pub epoch: i64,
    /// Seconds until it expires (negative: expired).
    pub expires_in_seconds: f64,
}

/// The cluster's tables.
#[derive(Clone)]
pub struct Store {
    pool: PgPool,
    /// The lease duration in seconds, as the database's interval arithmetic takes it.
    lease_seconds: f64,
}

impl Store {
    /// Over the state store's pool, with leases of `lease`.
    pub fn new(pool: PgPool, lease: std::time::Duration) -> Self {
        Store {
            pool,
            lease_seconds: lease.as_secs_f64(),
        }
    }

    /// Refreshes this instance's heartbeat, registering it when its row is missing (the first
    /// tick, or a row forgotten after an hour's pause) unless `leaving` is set: a heartbeat
    /// that lands after a graceful stop's [`Store::leave`] must not bring the row back, or
    /// the stopped instance would pass for live (and able to take leases) until it expired.
    pub async fn heartbeat(
        &self,
        id: &str,
        name: &str,
        admin_url: &str,
        leaving: &std::sync::atomic::AtomicBool,
    ) -> Result<(), DbError> {
        let updated =
            sqlx::query("UPDATE ms_instance SET heartbeat = now(), admin_url = $2 WHERE id = $1")
                .bind(id)
                .bind(admin_url)
                .execute(&self.pool)
                .await
                .map_err(q("sending the cluster heartbeat"))?
                .rows_affected();
        if updated > 0 || leaving.load(std::sync::atomic::Ordering::SeqCst) {
            return Ok(());
        }
        sqlx::query(
            "INSERT INTO ms_instance (id, name, admin_url) VALUES ($1, $2, $3) \
             ON CONFLICT (id) DO UPDATE SET heartbeat = now(), admin_url = EXCLUDED.admin_url",
        )
        .bind(id)
        .bind(name)
        .bind(admin_url)
        .execute(&self.pool)
        .await
        .map_err(q("registering this instance in the cluster"))?;
        Ok(())
    }

    /// Ids of the instances whose heartbeat is within a lease and that are not stopping.
    pub async fn live(&self) -> Result<Vec<String>, DbError> {
        sqlx::query_scalar(
            "SELECT id FROM ms_instance WHERE NOT stopping \
             AND heartbeat > now() - make_interval(secs => $1) ORDER BY id",
        )
        .bind(self.lease_seconds)
        .fetch_all(&self.pool)
        .await
        .map_err(q("reading the live cluster instances"))
    }

    /// Extends every lease `me` holds, in one statement; returns them with their epochs.
    /// A lease missing from the answer was taken over.
    pub async fn renew(&self, me: &str) -> Result<Vec<(String, i64)>, DbError> {
        sqlx::query_as(
            "UPDATE ms_lease SET expires_at = now() + make_interval(secs => $2) \
             WHERE owner = $1 RETURNING mailbox, epoch",
        )
        .bind(me)
        .bind(self.lease_seconds)
        .fetch_all(&self.pool)
        .await
        .map_err(q("renewing the leases"))
    }

    /// Takes the leases of `keys` that are free (never held, released, or expired) for `me`,
    /// or held by `me` already (a lease kept while what it covers does not run here: after a
    /// failed start, or a stop for want of renewals that the next renewal outlived; taking it
    /// again gives it a new epoch, so it runs again instead of staying held by nobody's work);
    /// returns those taken with their new epochs. Nothing is taken once `me` is stopping or
    /// gone, so a tick still in flight during a graceful stop cannot take a lease after
    /// `leave` released them. Taking one over waits for the writes in
    /// flight that locked it (the fence), so none of the old holder's lands after.
    pub async fn acquire(&self, me: &str, keys: &[String]) -> Result<Vec<(String, i64)>, DbError> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        sqlx::query_as(
            "INSERT INTO ms_lease (mailbox, owner, epoch, expires_at) \
             SELECT k, $1, 1, now() + make_interval(secs => $3) FROM unnest($2::text[]) AS k \
             WHERE EXISTS (SELECT 1 FROM ms_instance WHERE id = $1 AND NOT stopping) \
             ON CONFLICT (mailbox) DO UPDATE SET owner = EXCLUDED.owner, \
               epoch = ms_lease.epoch + 1, expires_at = EXCLUDED.expires_at \
             WHERE ms_lease.owner = '' OR ms_lease.expires_at < now() OR ms_lease.owner = $1 \
             RETURNING mailbox, epoch",
        )
        .bind(me)
        .bind(keys)
        .bind(self.lease_seconds)
        .fetch_all(&self.pool)
        .await
        .map_err(q("acquiring leases"))
    }

    /// Gives up the leases of `keys` that `me` holds; the next instance may take them at once.
    pub async fn release(&self, me: &str, keys: &[String]) -> Result<(), DbError> {
        sqlx::query(
            "UPDATE ms_lease SET owner = '', expires_at = now() \
             WHERE owner = $1 AND mailbox = ANY($2)",
        )
        .bind(me)
        .bind(keys)
        .execute(&self.pool)
        .await
        .map_err(q("releasing leases"))?;
        Ok(())
    }

    /// Marks `me` as stopping: peers stop counting it as live at their next look.
    pub async fn mark_stopping(&self, me: &str) -> Result<(), DbError> {
        sqlx::query("UPDATE ms_instance SET stopping = TRUE WHERE id = $1")
            .bind(me)
            .execute(&self.pool)
            .await
            .map_err(q("marking this instance as stopping"))?;
        Ok(())
    }

    /// Releases every lease of `me` and removes its row (the end of a graceful stop).
    pub async fn leave(&self, me: &str) -> Result<(), DbError> {
        sqlx::query("UPDATE ms_lease SET owner = '', expires_at = now() WHERE owner = $1")
            .bind(me)
            .execute(&self.pool)
            .await
            .map_err(q("releasing every lease"))?;
        sqlx::query("DELETE FROM ms_instance WHERE id = $1")
            .bind(me)
            .execute(&self.pool)
            .await
            .map_err(q("leaving the cluster"))?;
        Ok(())
    }

    /// Tidies up: leases of keys no longer configured that nobody holds, and instances
    /// silent for an hour.
    pub async fn forget(&self, configured: &[String]) -> Result<(), DbError> {
        sqlx::query(
            "DELETE FROM ms_lease WHERE NOT (mailbox = ANY($1)) \
             AND (owner = '' OR expires_at < now())",
        )
        .bind(configured)
        .execute(&self.pool)
        .await
        .map_err(q("forgetting leases of removed mailboxes"))?;
        sqlx::query("DELETE FROM ms_instance WHERE heartbeat < now() - interval '1 hour'")
            .execute(&self.pool)
            .await
            .map_err(q("forgetting silent instances"))?;
        Ok(())
    }

    /// Every instance row, oldest first.
    pub async fn instances(&self) -> Result<Vec<InstanceRow>, DbError> {
        let rows: Vec<(String, String, String, f64, String, bool)> = sqlx::query_as(
            "SELECT id, name, admin_url, EXTRACT(EPOCH FROM now() - heartbeat)::float8, \
             to_char(started AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"'), stopping \
             FROM ms_instance ORDER BY started, id",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(q("reading the cluster instances"))?;
        Ok(rows
            .into_iter()
            .map(|r| InstanceRow {
                id: r.0,
                name: r.1,
                admin_url: r.2,
                heartbeat_age_seconds: r.3,
                started: r.4,
                stopping: r.5,
            })
            .collect())
    }

    /// Every lease, by key.
    pub async fn leases(&self) -> Result<Vec<LeaseRow>, DbError> {
        let rows: Vec<(String, String, i64, f64)> = sqlx::query_as(
            "SELECT mailbox, owner, epoch, EXTRACT(EPOCH FROM expires_at - now())::float8 \
             FROM ms_lease ORDER BY mailbox",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(q("reading the leases"))?;
        Ok(rows
            .into_iter()
            .map(|r| LeaseRow {
                key: r.0,
                owner: r.1,
                epoch: r.2,
                expires_in_seconds: r.3,
            })
            .collect())
    }

    /// The lease of one key that is held and not expired: (owner id, epoch).
    pub async fn holder(&self, key: &str) -> Result<Option<(String, i64)>, DbError> {
        sqlx::query_as(
            "SELECT owner, epoch FROM ms_lease WHERE mailbox = $1 AND owner <> '' \
             AND expires_at > now()",
        )
        .bind(key)
        .fetch_optional(&self.pool)
        .await
        .map_err(q("reading a lease"))
    }

    /// Other instances registered under `name` whose heartbeat is within a lease and that
    /// are not stopping: (id, admin url, heartbeat as seconds since the epoch).
    pub async fn namesakes(
        &self,
        name: &str,
        me: &str,
    ) -> Result<Vec<(String, String, f64)>, DbError> {
        sqlx::query_as(
            "SELECT id, admin_url, EXTRACT(EPOCH FROM heartbeat)::float8 FROM ms_instance \
             WHERE name = $1 AND id <> $2 AND NOT stopping \
             AND heartbeat > now() - make_interval(secs => $3) ORDER BY id",
        )
        .bind(name)
        .bind(me)
        .bind(self.lease_seconds)
        .fetch_all(&self.pool)
        .await
        .map_err(q("reading the instances of the same name"))
    }

    /// The pool, for the feed's notifications.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }
}
