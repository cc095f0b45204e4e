//! MariaDB/MySQL support pieces that the other modules share: the placeholder translation
//! behind `on_db!` and the server check at connect.
//!
//! The SQL of this crate is written once with PostgreSQL's numbered `$N` placeholders. MySQL
//! only knows positional `?`, so a statement that names a parameter twice or out of order
//! needs its values bound again, in the order they appear: [`MyQuery`] collects the values
//! as owned [`Param`]s and binds them per occurrence when the statement runs.

use chrono::{DateTime, NaiveDate, Utc};
use sqlx::mysql::{MySqlPool, MySqlQueryResult, MySqlRow};

/// A value bound to a MySQL statement, owned so it can be bound at every place the
/// statement names it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Param {
    /// BIGINT or NULL.
    Int(Option<i64>),
    /// Text or NULL.
    Text(Option<String>),
    /// BOOLEAN.
    Bool(bool),
    /// BLOB or NULL.
    Bytes(Option<Vec<u8>>),
    /// DATETIME (UTC) or NULL.
    Time(Option<DateTime<Utc>>),
    /// DATE or NULL.
    Date(Option<NaiveDate>),
}

/// Anything `on_db!` binds.
pub(crate) trait ToParam {
    /// The owned value.
    fn to_param(&self) -> Param;
}

impl<T: ToParam + ?Sized> ToParam for &T {
    fn to_param(&self) -> Param {
        (**self).to_param()
    }
}

macro_rules! to_param {
    ($($t:ty => |$v:ident| $e:expr),* $(,)?) => {
        $(impl ToParam for $t {
            fn to_param(&self) -> Param {
                let $v = self;
                $e
            }
        })*
    };
}

to_param! {
    i64 => |v| Param::Int(Some(*v)),
    Option<i64> => |v| Param::Int(*v),
    bool => |v| Param::Bool(*v),
    str => |v| Param::Text(Some(v.to_string())),
    String => |v| Param::Text(Some(v.clone())),
    Option<String> => |v| Param::Text(v.clone()),
    Option<&str> => |v| Param::Text(v.map(str::to_string)),
    [u8] => |v| Param::Bytes(Some(v.to_vec())),
    Vec<u8> => |v| Param::Bytes(Some(v.clone())),
    DateTime<Utc> => |v| Param::Time(Some(*v)),
    Option<DateTime<Utc>> => |v| Param::Time(*v),
    NaiveDate => |v| Param::Date(Some(*v)),
    Option<NaiveDate> => |v| Param::Date(*v),
}

/// `$N` → `?`, with the parameter index (0-based) of each `?` in order of appearance.
pub(crate) fn placeholders(sql: &str) -> (String, Vec<usize>) {
    let mut out = String::with_capacity(sql.len());
    let mut order = Vec::new();
    let mut chars = sql.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        if c == '$' {
            let digits: String = sql[i + 1..]
                .chars()
                .take_while(char::is_ascii_digit)
                .collect();
            if let Ok(n) = digits.parse::<usize>() {
                if n > 0 {
                    out.push('?');
                    order.push(n - 1);
                    for _ in 0..digits.len() {
                        chars.next();
                    }
                    continue;
                }
            }
        }
        out.push(c);
    }
    (out, order)
}

/// A statement for MySQL built from `$N` SQL: collects its values, binds them in placeholder
/// order when run. Offers the run methods `on_db!` calls.
pub(crate) struct MyQuery {
    /// The SQL with `?` placeholders.
    sql: String,
    /// Which bound value each `?` takes.
    order: Vec<usize>,
    /// The values, in `$N` numbering.
    values: Vec<Param>,
}

impl MyQuery {
    /// A statement from `$N` SQL.
    pub(crate) fn new(sql: &str) -> MyQuery {
        let (sql, order) = placeholders(sql);
        MyQuery {
            sql,
            order,
            values: Vec::new(),
        }
    }

    /// Binds the next `$N`.
    pub(crate) fn bind<T: ToParam>(mut self, value: T) -> MyQuery {
        self.values.push(value.to_param());
        self
    }

    fn query(
        &self,
    ) -> Result<sqlx::query::Query<'_, sqlx::MySql, sqlx::mysql::MySqlArguments>, sqlx::Error> {
        let mut q = sqlx::query(&self.sql);
        for &i in &self.order {
            let Some(v) = self.values.get(i) else {
                return Err(sqlx::Error::Protocol(format!(
                    "statement names ${} but {} values are bound: {}",
                    i + 1,
                    self.values.len(),
                    self.sql
                )));
            };
            q = bind_param(q, v);
        }
        Ok(q)
    }

    /// All rows.
    pub(crate) async fn fetch_all(self, pool: &MySqlPool) -> Result<Vec<MySqlRow>, sqlx::Error> {
        self.query()?.fetch_all(pool).await
    }

    /// At most one row.
    pub(crate) async fn fetch_optional(
        self,
        pool: &MySqlPool,
    ) -> Result<Option<MySqlRow>, sqlx::Error> {
        self.query()?.fetch_optional(pool).await
    }

    /// Exactly one row.
    pub(crate) async fn fetch_one(self, pool: &MySqlPool) -> Result<MySqlRow, sqlx::Error> {
        self.query()?.fetch_one(pool).await
    }

    /// Runs it.
    pub(crate) async fn execute(self, pool: &MySqlPool) -> Result<MySqlQueryResult, sqlx::Error> {
        self.query()?.execute(pool).await
    }

    /// Runs it on a connection or transaction.
    pub(crate) async fn execute_on(
        self,
        conn: &mut sqlx::MySqlConnection,
    ) -> Result<MySqlQueryResult, sqlx::Error> {
        self.query()?.execute(conn).await
    }
}

/// MySQL has no RETURNING for UPDATE (MariaDB has it for INSERT only, MySQL not at all): runs
/// an INSERT (`update_id` None) or an UPDATE of row `update_id` of `table` and reads the row's
/// version, on the caller's transaction — the write keeps the row locked until commit, so that
/// is the version this write made, not a later one. Returns (id, version), or `None` when the
/// UPDATE matched no row.
pub(crate) async fn write_one(
    conn: &mut sqlx::MySqlConnection,
    write: MyQuery,
    table: &str,
    update_id: Option<i64>,
) -> Result<Option<(i64, i64)>, sqlx::Error> {
    let done = write.execute_on(&mut *conn).await?;
    let id = match update_id {
        // An AUTO_INCREMENT BIGINT: always within i64.
        None => done.last_insert_id() as i64,
        Some(_) if done.rows_affected() == 0 => return Ok(None),
        Some(id) => id,
    };
    let version: i64 = sqlx::query_scalar(&format!("SELECT version FROM {table} WHERE id = ?"))
        .bind(id)
        .fetch_one(&mut *conn)
        .await?;
    Ok(Some((id, version)))
}

/// Binds one owned value.
pub(crate) fn bind_param<'q>(
    q: sqlx::query::Query<'q, sqlx::MySql, sqlx::mysql::MySqlArguments>,
    v: &Param,
) -> sqlx::query::Query<'q, sqlx::MySql, sqlx::mysql::MySqlArguments> {
    match v.clone() {
        Param::Int(x) => q.bind(x),
        Param::Text(x) => q.bind(x),
        Param::Bool(x) => q.bind(x),
        Param::Bytes(x) => q.bind(x),
        Param::Time(x) => q.bind(x),
        Param::Date(x) => q.bind(x),
    }
}

/// The server's version string, checked to be MariaDB 10.6+ or MySQL 8.0+ (the change reader
/// needs `FOR UPDATE SKIP LOCKED`, the schema expression defaults and CHECK constraints).
pub(crate) fn check_version(version: &str) -> Result<(), String> {
    // Old MariaDB servers announce themselves as "5.5.5-10.x…" to old clients.
    let numbers: Vec<u32> = version
        .strip_prefix("5.5.5-")
        .unwrap_or(version)
        .split(|c: char| !c.is_ascii_digit())
        .filter(|s| !s.is_empty())
        .take(2)
        .filter_map(|s| s.parse().ok())
        .collect();
    let (major, minor) = match numbers.as_slice() {
        [a, b, ..] => (*a, *b),
        [a] => (*a, 0),
        [] => return Err(format!("cannot read the server version {version:?}")),
    };
    let mariadb = version.to_ascii_lowercase().contains("mariadb");
    let ok = if mariadb {
        (major, minor) >= (10, 6)
    } else {
        major >= 8
    };
    if ok {
        Ok(())
    } else {
        Err(format!(
            "server version {version} is too old: mailsync needs MariaDB 10.6 or MySQL 8.0 or later"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_in_any_order_and_repeated() {
        let check = |sql: &str, want: &str, order: &[usize]| {
            let (got, got_order) = placeholders(sql);
            assert_eq!((got.as_str(), got_order.as_slice()), (want, order), "{sql}");
        };
        check("SELECT 1", "SELECT 1", &[]);
        check(
            "UPDATE t SET a = $2, b = $3 WHERE id = $1",
            "UPDATE t SET a = ?, b = ? WHERE id = ?",
            &[1, 2, 0],
        );
        check(
            "SET s = $2, e = $3, at = CASE WHEN $2 = 'sent' THEN now() END WHERE id = $1",
            "SET s = ?, e = ?, at = CASE WHEN ? = 'sent' THEN now() END WHERE id = ?",
            &[1, 2, 1, 0],
        );
        check("VALUES ($10, $1)", "VALUES (?, ?)", &[9, 0]);
        check("a $ b $x $0", "a $ b $x $0", &[]);
    }

    #[test]
    fn server_versions() {
        for ok in [
            "10.11.19-MariaDB-0+deb12u1",
            "10.6.0-MariaDB",
            "11.4.2-MariaDB",
            "8.0.36",
            "8.4.0-log",
            "9.1.0",
        ] {
            assert_eq!(check_version(ok), Ok(()), "{ok}");
        }
        for old in [
            "10.5.23-MariaDB",
            "10.3.39-MariaDB-0+deb10u1",
            "5.7.44-log",
            "5.5.5-10.4.0-MariaDB",
        ] {
            assert!(check_version(old).is_err(), "{old}");
        }
        assert!(check_version("").is_err());
    }
}
