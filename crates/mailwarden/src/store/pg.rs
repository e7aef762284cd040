//! PostgreSQL, the shared store of a cluster, behind the same synchronous [`Conn`] surface as
//! SQLite (`sql.rs`).
//!
//! Callers run on async workers, the writer thread and the CLI alike, so the client's futures
//! run on a small runtime of their own and callers wait on a channel: that never nests a
//! runtime and never needs one on the caller's thread.
//!
//! A lost connection is opened again on the next statement, except inside a transaction: a
//! group commit whose connection died fails as a whole (its callers answer 4xx), and never
//! continues on a fresh connection where its statements would commit one by one.
//!
//! Every statement has a time limit, so a PostgreSQL that stopped answering costs a session a
//! `451`, not a hang.
//!
//! Security: the URL may carry a password; it is never logged (errors name the host only).

use super::sql::{DbError, Result, Value};
use bytes::BytesMut;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;
use tokio_postgres::types::{FromSql, IsNull, ToSql, Type, to_sql_checked};
use tokio_postgres::{Client, NoTls, Statement};

/// Longest a statement (or a connection attempt) may take before the store counts as
/// unreachable.
const TIMEOUT: Duration = Duration::from_secs(10);

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("pg-client")
            .enable_all()
            .build()
            .expect("the PostgreSQL client runtime starts")
    })
}

/// Run `fut` on the client runtime and wait for it, with the statement time limit.
fn block<T: Send + 'static>(
    fut: impl std::future::Future<Output = std::result::Result<T, tokio_postgres::Error>>
    + Send
    + 'static,
) -> Result<T> {
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    runtime().spawn(async move {
        let r = match tokio::time::timeout(TIMEOUT, fut).await {
            Ok(r) => r.map_err(DbError::from),
            Err(_) => Err(DbError::Unavailable("no answer in time".into())),
        };
        let _ = tx.send(r);
    });
    rx.recv()
        .map_err(|_| DbError::Unavailable("client runtime stopped".into()))?
}

struct Live {
    client: Arc<Client>,
    stmts: HashMap<String, Statement>,
}

/// One connection, opened on first use and again after it was lost.
pub struct PgConn {
    url: Arc<str>,
    live: Mutex<Option<Live>>,
    in_tx: std::sync::atomic::AtomicBool,
    /// Run on every new connection (a session setting).
    init: Option<&'static str>,
}

impl PgConn {
    pub fn new(url: &str) -> PgConn {
        PgConn {
            url: url.into(),
            live: Mutex::new(None),
            in_tx: false.into(),
            init: None,
        }
    }

    /// A connection that runs `init` whenever it (re)connects.
    pub fn with_init(url: &str, init: &'static str) -> PgConn {
        PgConn {
            init: Some(init),
            ..PgConn::new(url)
        }
    }

    /// Connect now, so a bad URL or an unreachable server shows at start.
    pub fn connect(&self) -> Result<()> {
        self.client().map(|_| ())
    }

    fn client(&self) -> Result<Arc<Client>> {
        let mut live = self.live.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(l) = live.as_ref()
            && !l.client.is_closed()
        {
            return Ok(l.client.clone());
        }
        // Never carry a transaction on over a new connection.
        if self.in_tx.load(std::sync::atomic::Ordering::Relaxed) {
            return Err(DbError::Unavailable(
                "connection lost in a transaction".into(),
            ));
        }
        let (url, init) = (self.url.clone(), self.init);
        let client = block(async move {
            let (client, conn) = tokio_postgres::connect(&url, NoTls).await?;
            tokio::spawn(async move {
                if let Err(e) = conn.await {
                    tracing::warn!(event = "store_connection_lost", error = %e);
                }
            });
            if let Some(init) = init {
                client.batch_execute(init).await?;
            }
            Ok(client)
        })?;
        let client = Arc::new(client);
        *live = Some(Live {
            client: client.clone(),
            stmts: HashMap::new(),
        });
        Ok(client)
    }

    fn statement(&self, sql: &str) -> Result<(Arc<Client>, Statement)> {
        let client = self.client()?;
        let pg_sql = translate(sql);
        if let Some(st) = self
            .live
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .and_then(|l| l.stmts.get(&pg_sql).cloned())
        {
            return Ok((client, st));
        }
        let (c, text) = (client.clone(), pg_sql.clone());
        let st = self.call(&client, async move { c.prepare(&text).await })?;
        if let Some(l) = self.live.lock().unwrap_or_else(|e| e.into_inner()).as_mut() {
            l.stmts.insert(pg_sql, st.clone());
        }
        Ok((client, st))
    }

    /// Run `fut` within the time limit. A statement that did not answer in time is cancelled
    /// on the server and its connection given up, so nothing of it can still commit there;
    /// inside a transaction, the rest of the transaction then fails (see [`PgConn::client`]).
    fn call<T: Send + 'static>(
        &self,
        client: &Client,
        fut: impl std::future::Future<Output = std::result::Result<T, tokio_postgres::Error>>
        + Send
        + 'static,
    ) -> Result<T> {
        let token = client.cancel_token();
        let r = block(fut);
        if let Err(DbError::Unavailable(_)) = &r {
            runtime().spawn(async move {
                let _ = token.cancel_query(NoTls).await;
            });
            *self.live.lock().unwrap_or_else(|e| e.into_inner()) = None;
        }
        r
    }

    pub fn execute(&self, sql: &str, values: Vec<Value>) -> Result<u64> {
        let (client, st) = self.statement(sql)?;
        self.call(&client.clone(), async move {
            client.execute(&st, &refs(&values)).await
        })
    }

    pub fn query(&self, sql: &str, values: Vec<Value>) -> Result<Vec<tokio_postgres::Row>> {
        let (client, st) = self.statement(sql)?;
        self.call(&client.clone(), async move {
            client.query(&st, &refs(&values)).await
        })
    }

    pub fn batch(&self, sql: &str) -> Result<()> {
        let client = self.client()?;
        let sql = sql.to_string();
        self.call(
            &client.clone(),
            async move { client.batch_execute(&sql).await },
        )
    }

    pub fn begin(&self) -> Result<()> {
        self.batch("BEGIN")?;
        self.in_tx.store(true, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }

    pub fn end(&self, how: &str) -> Result<()> {
        let r = self.batch(how);
        self.in_tx
            .store(false, std::sync::atomic::Ordering::Relaxed);
        r
    }
}

fn refs(values: &[Value]) -> Vec<&(dyn ToSql + Sync)> {
    values.iter().map(|v| v as &(dyn ToSql + Sync)).collect()
}

/// Make an empty database on the server `url` names and return its URL: each test, and each
/// benchmark run, gets a store of its own. `name` is letters, digits and `_`.
pub fn create_database(url: &str, name: &str) -> Result<String> {
    if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
        return Err(DbError::Type(0, format!("bad database name {name:?}")));
    }
    PgConn::new(url).batch(&format!("CREATE DATABASE {name}"))?;
    let (base, _) = url.rsplit_once('/').unwrap_or((url, ""));
    Ok(format!("{base}/{name}"))
}

/// SQLite's spelling to PostgreSQL's: `?N` and `?` placeholders to `$N`, `LIKE` to `ILIKE`.
/// Quoted text is left alone.
pub fn translate(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len() + 8);
    // A bare `?` takes the number after the largest used so far, as in SQLite.
    let mut largest = 0u32;
    let mut quoted = false;
    let mut chars = sql.char_indices().peekable();
    while let Some((i, ch)) = chars.next() {
        if ch == '\'' {
            quoted = !quoted;
            out.push(ch);
        } else if ch == '?' && !quoted {
            let mut digits = String::new();
            while let Some((_, d)) = chars.peek().filter(|(_, d)| d.is_ascii_digit()) {
                digits.push(*d);
                chars.next();
            }
            if digits.is_empty() {
                digits = (largest + 1).to_string();
            }
            largest = largest.max(digits.parse().unwrap_or(0));
            out.push('$');
            out.push_str(&digits);
        } else if !quoted
            && (ch == 'L' || ch == 'l')
            && sql
                .get(i..i + 4)
                .is_some_and(|w| w.eq_ignore_ascii_case("LIKE"))
            && !sql[..i].ends_with(|c: char| c.is_ascii_alphanumeric() || c == '_')
            && !sql[i + 4..].starts_with(|c: char| c.is_ascii_alphanumeric() || c == '_')
        {
            out.push_str("ILIKE");
            chars.nth(2);
        } else {
            out.push(ch);
        }
    }
    out
}

/// A SQLite migration in PostgreSQL's types: 64-bit integers, doubles and `BYTEA`.
pub fn schema(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len() + 64);
    let is_word = |c: char| c.is_ascii_alphanumeric() || c == '_';
    for word in sql.split_inclusive(|c: char| !is_word(c)) {
        let (w, sep) = word.split_at(word.trim_end_matches(|c: char| !is_word(c)).len());
        out.push_str(match w {
            "INTEGER" => "BIGINT",
            "REAL" => "DOUBLE PRECISION",
            "BLOB" => "BYTEA",
            w => w,
        });
        out.push_str(sep);
    }
    out.replace(" WITHOUT ROWID", "")
}

impl ToSql for Value {
    fn to_sql(
        &self,
        ty: &Type,
        out: &mut BytesMut,
    ) -> std::result::Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        match (self, ty) {
            (Value::Null, _) => Ok(IsNull::Yes),
            (Value::Int(i), &Type::INT8) => i.to_sql(ty, out),
            (Value::Int(i), &Type::INT4) => i32::try_from(*i)?.to_sql(ty, out),
            (Value::Int(i), &Type::INT2) => i16::try_from(*i)?.to_sql(ty, out),
            (Value::Int(i), &Type::FLOAT8) => (*i as f64).to_sql(ty, out),
            (Value::Int(i), &Type::BOOL) => (*i != 0).to_sql(ty, out),
            (Value::Int(i), &Type::TEXT | &Type::VARCHAR) => i.to_string().as_str().to_sql(ty, out),
            (Value::Real(f), &Type::FLOAT4) => (*f as f32).to_sql(ty, out),
            (Value::Real(f), &Type::FLOAT8) => f.to_sql(ty, out),
            (Value::Text(s), &Type::BYTEA) => s.as_bytes().to_sql(ty, out),
            (Value::Text(s), &Type::INT8) => s.parse::<i64>()?.to_sql(ty, out),
            (
                Value::Text(s),
                &Type::TEXT | &Type::VARCHAR | &Type::BPCHAR | &Type::NAME | &Type::UNKNOWN,
            ) => s.as_str().to_sql(ty, out),
            (Value::Blob(b), &Type::BYTEA) => b.as_slice().to_sql(ty, out),
            (Value::Blob(b), &Type::TEXT | &Type::VARCHAR) => {
                std::str::from_utf8(b)?.to_sql(ty, out)
            }
            // Anything else is a statement bound with the wrong kind of value: say so, never
            // send bytes the server would read as something else.
            (v, ty) => Err(format!("cannot bind {v:?} as {ty}").into()),
        }
    }

    fn accepts(_: &Type) -> bool {
        true
    }

    to_sql_checked!();
}

impl<'a> FromSql<'a> for Value {
    fn from_sql(
        ty: &Type,
        raw: &'a [u8],
    ) -> std::result::Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        Ok(match *ty {
            Type::INT8 => Value::Int(i64::from_sql(ty, raw)?),
            Type::INT4 => Value::Int(i32::from_sql(ty, raw)? as i64),
            Type::INT2 => Value::Int(i16::from_sql(ty, raw)? as i64),
            Type::FLOAT8 => Value::Real(f64::from_sql(ty, raw)?),
            Type::FLOAT4 => Value::Real(f32::from_sql(ty, raw)? as f64),
            Type::BOOL => Value::Int(bool::from_sql(ty, raw)? as i64),
            Type::BYTEA => Value::Blob(raw.to_vec()),
            Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME | Type::UNKNOWN => {
                Value::Text(<&str>::from_sql(ty, raw)?.to_string())
            }
            _ => return Err(format!("unexpected column type {ty} (cast it)").into()),
        })
    }

    fn from_sql_null(
        _: &Type,
    ) -> std::result::Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        Ok(Value::Null)
    }

    fn accepts(_: &Type) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_and_like_become_postgres() {
        assert_eq!(
            translate("SELECT a FROM t WHERE b = ?1 AND c LIKE ? ESCAPE '\\' AND d = '?'"),
            "SELECT a FROM t WHERE b = $1 AND c ILIKE $2 ESCAPE '\\' AND d = '?'"
        );
        assert_eq!(translate("x = ? AND y = ?"), "x = $1 AND y = $2");
        assert_eq!(
            translate("SELECT likes, unlike FROM t"),
            "SELECT likes, unlike FROM t"
        );
    }

    #[test]
    fn schemas_take_postgres_types() {
        assert_eq!(
            schema("CREATE TABLE t(a INTEGER NOT NULL, b REAL, c BLOB, d TEXT) WITHOUT ROWID;"),
            "CREATE TABLE t(a BIGINT NOT NULL, b DOUBLE PRECISION, c BYTEA, d TEXT);"
        );
    }
}
