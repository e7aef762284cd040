//! One SQL surface over both backends: the embedded SQLite and a shared PostgreSQL.
//!
//! Every reader and writer of the store gets a [`Conn`] and writes its SQL once, in the
//! common subset of the two dialects (`ON CONFLICT` upserts, `CAST(SUM(..) AS BIGINT)`, no
//! `rowid`). PostgreSQL's side (`pg.rs`) rewrites `?N` placeholders to `$N` and `LIKE` to
//! `ILIKE` (SQLite's `LIKE` ignores ASCII case). Values cross as [`Value`]: PostgreSQL's
//! parameter types are inferred from the statement, and a `Value` is encoded as whatever type
//! the column has, so callers bind `i64`, `&str`, `f64` or bytes as they always did.

use super::pg::PgConn;
use std::fmt;

/// A value bound to or read from a statement.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    Int(i64),
    Real(f64),
    Text(String),
    Blob(Vec<u8>),
}

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("{0}")]
    Lite(#[from] rusqlite::Error),
    #[error("postgres: {}", pg_detail(.0))]
    Pg(#[from] tokio_postgres::Error),
    /// A statement that had to return a row returned none.
    #[error("query returned no rows")]
    NoRows,
    #[error("column {0}: {1}")]
    Type(usize, String),
    /// PostgreSQL could not be reached, or did not answer in time.
    #[error("postgres unavailable: {0}")]
    Unavailable(String),
}

impl DbError {
    /// The store is out of reach for now (the server answers 4xx and keeps nothing half-done).
    pub fn is_unavailable(&self) -> bool {
        match self {
            DbError::Unavailable(_) => true,
            DbError::Pg(e) => e.is_closed() || e.as_db_error().is_none(),
            _ => false,
        }
    }
}

pub type Result<T> = std::result::Result<T, DbError>;

/// tokio-postgres says only "db error": name the server's message and code too.
fn pg_detail(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(d) => format!("{} ({}): {}", d.message(), d.code().code(), e),
        None => e.to_string(),
    }
}

/// Turns a `NoRows` error into `None`, like rusqlite's `OptionalExtension`.
pub trait Optional<T> {
    fn optional(self) -> Result<Option<T>>;
}

impl<T> Optional<T> for Result<T> {
    fn optional(self) -> Result<Option<T>> {
        match self {
            Ok(v) => Ok(Some(v)),
            Err(DbError::NoRows) => Ok(None),
            Err(e) => Err(e),
        }
    }
}

pub trait ToValue {
    fn to_value(&self) -> Value;
}

macro_rules! int_value {
    ($($t:ty),*) => {$(
        impl ToValue for $t {
            fn to_value(&self) -> Value {
                Value::Int(*self as i64)
            }
        }
    )*};
}
int_value!(i64, i32, u32, u16, u8, usize, u64);

impl ToValue for bool {
    fn to_value(&self) -> Value {
        Value::Int(*self as i64)
    }
}
impl ToValue for f64 {
    fn to_value(&self) -> Value {
        Value::Real(*self)
    }
}
impl ToValue for str {
    fn to_value(&self) -> Value {
        Value::Text(self.to_string())
    }
}
impl ToValue for String {
    fn to_value(&self) -> Value {
        Value::Text(self.clone())
    }
}
impl ToValue for [u8] {
    fn to_value(&self) -> Value {
        Value::Blob(self.to_vec())
    }
}
impl ToValue for Vec<u8> {
    fn to_value(&self) -> Value {
        Value::Blob(self.clone())
    }
}
impl ToValue for Value {
    fn to_value(&self) -> Value {
        self.clone()
    }
}
impl<T: ToValue> ToValue for Option<T> {
    fn to_value(&self) -> Value {
        self.as_ref().map_or(Value::Null, T::to_value)
    }
}
impl<T: ToValue + ?Sized> ToValue for &T {
    fn to_value(&self) -> Value {
        (**self).to_value()
    }
}

/// What a statement is bound with: `params![..]`, an array of one type, `()` or a `Vec<Value>`.
pub trait Params {
    fn values(&self) -> Vec<Value>;
}

impl Params for &[&dyn ToValue] {
    fn values(&self) -> Vec<Value> {
        self.iter().map(|v| v.to_value()).collect()
    }
}
impl<T: ToValue, const N: usize> Params for [T; N] {
    fn values(&self) -> Vec<Value> {
        self.iter().map(ToValue::to_value).collect()
    }
}
impl Params for () {
    fn values(&self) -> Vec<Value> {
        Vec::new()
    }
}
impl Params for Vec<Value> {
    fn values(&self) -> Vec<Value> {
        self.clone()
    }
}

/// Bind a list of values of different types: `params![id, n, Some(reply)]`.
#[macro_export]
macro_rules! params {
    () => { &[] as &[&dyn $crate::store::ToValue] };
    ($($p:expr),+ $(,)?) => { &[$(&$p as &dyn $crate::store::ToValue),+] as &[&dyn $crate::store::ToValue] };
}

pub trait FromValue: Sized {
    fn from_value(v: Value) -> std::result::Result<Self, String>;
}

impl FromValue for Value {
    fn from_value(v: Value) -> std::result::Result<Self, String> {
        Ok(v)
    }
}
impl FromValue for i64 {
    fn from_value(v: Value) -> std::result::Result<Self, String> {
        match v {
            Value::Int(i) => Ok(i),
            v => Err(format!("not an integer: {v:?}")),
        }
    }
}
macro_rules! int_from_value {
    ($($t:ty),*) => {$(
        impl FromValue for $t {
            fn from_value(v: Value) -> std::result::Result<Self, String> {
                let i = i64::from_value(v)?;
                <$t>::try_from(i).map_err(|_| format!("{i} out of range"))
            }
        }
    )*};
}
int_from_value!(i32, u32, u16, u8, usize, u64);
impl FromValue for bool {
    fn from_value(v: Value) -> std::result::Result<Self, String> {
        Ok(i64::from_value(v)? != 0)
    }
}
impl FromValue for f64 {
    fn from_value(v: Value) -> std::result::Result<Self, String> {
        match v {
            Value::Real(f) => Ok(f),
            Value::Int(i) => Ok(i as f64),
            v => Err(format!("not a number: {v:?}")),
        }
    }
}
impl FromValue for String {
    fn from_value(v: Value) -> std::result::Result<Self, String> {
        match v {
            Value::Text(s) => Ok(s),
            Value::Blob(b) => String::from_utf8(b).map_err(|e| e.to_string()),
            v => Err(format!("not text: {v:?}")),
        }
    }
}
impl FromValue for Vec<u8> {
    fn from_value(v: Value) -> std::result::Result<Self, String> {
        match v {
            Value::Blob(b) => Ok(b),
            Value::Text(s) => Ok(s.into_bytes()),
            v => Err(format!("not bytes: {v:?}")),
        }
    }
}
impl<T: FromValue> FromValue for Option<T> {
    fn from_value(v: Value) -> std::result::Result<Self, String> {
        match v {
            Value::Null => Ok(None),
            v => T::from_value(v).map(Some),
        }
    }
}

/// One row of a result.
pub struct Row<'a>(RowInner<'a>);

enum RowInner<'a> {
    Lite(&'a rusqlite::Row<'a>),
    Pg(&'a tokio_postgres::Row),
}

impl Row<'_> {
    pub fn get<T: FromValue>(&self, idx: usize) -> Result<T> {
        let v = match &self.0 {
            RowInner::Lite(r) => lite_value(r.get_ref(idx)?),
            RowInner::Pg(r) => r.try_get::<_, Value>(idx)?,
        };
        T::from_value(v).map_err(|e| DbError::Type(idx, e))
    }
}

fn lite_value(v: rusqlite::types::ValueRef<'_>) -> Value {
    use rusqlite::types::ValueRef;
    match v {
        ValueRef::Null => Value::Null,
        ValueRef::Integer(i) => Value::Int(i),
        ValueRef::Real(f) => Value::Real(f),
        ValueRef::Text(t) => Value::Text(String::from_utf8_lossy(t).into_owned()),
        ValueRef::Blob(b) => Value::Blob(b.to_vec()),
    }
}

impl rusqlite::ToSql for Value {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        use rusqlite::types::{ToSqlOutput, ValueRef};
        Ok(ToSqlOutput::Borrowed(match self {
            Value::Null => ValueRef::Null,
            Value::Int(i) => ValueRef::Integer(*i),
            Value::Real(f) => ValueRef::Real(*f),
            Value::Text(s) => ValueRef::Text(s.as_bytes()),
            Value::Blob(b) => ValueRef::Blob(b),
        }))
    }
}

/// A connection to whichever backend the store runs on.
#[derive(Clone, Copy)]
pub struct Conn<'a>(ConnInner<'a>);

#[derive(Clone, Copy)]
enum ConnInner<'a> {
    Lite(&'a rusqlite::Connection),
    Pg(&'a PgConn),
}

impl fmt::Debug for Conn<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.is_pg() {
            "Conn(pg)"
        } else {
            "Conn(sqlite)"
        })
    }
}

impl<'a> Conn<'a> {
    pub(crate) fn lite(c: &'a rusqlite::Connection) -> Conn<'a> {
        Conn(ConnInner::Lite(c))
    }

    pub(crate) fn pg(c: &'a PgConn) -> Conn<'a> {
        Conn(ConnInner::Pg(c))
    }

    /// True on PostgreSQL, where a few statements need `FOR UPDATE SKIP LOCKED` and the like.
    pub fn is_pg(&self) -> bool {
        matches!(self.0, ConnInner::Pg(_))
    }

    /// Run a statement; returns the number of rows it changed.
    pub fn execute(&self, sql: &str, p: impl Params) -> Result<usize> {
        let values = p.values();
        match self.0 {
            ConnInner::Lite(c) => Ok(c
                .prepare_cached(sql)?
                .execute(rusqlite::params_from_iter(values.iter()))?),
            ConnInner::Pg(c) => c.execute(sql, values).map(|n| n as usize),
        }
    }

    /// Run statements without parameters (DDL, savepoints).
    pub fn execute_batch(&self, sql: &str) -> Result<()> {
        match self.0 {
            ConnInner::Lite(c) => Ok(c.execute_batch(sql)?),
            ConnInner::Pg(c) => c.batch(sql),
        }
    }

    /// The first row through `f`; [`DbError::NoRows`] when there is none.
    pub fn query_row<T>(
        &self,
        sql: &str,
        p: impl Params,
        f: impl FnOnce(&Row<'_>) -> Result<T>,
    ) -> Result<T> {
        let values = p.values();
        match self.0 {
            ConnInner::Lite(c) => {
                let mut st = c.prepare_cached(sql)?;
                let mut rows = st.query(rusqlite::params_from_iter(values.iter()))?;
                match rows.next()? {
                    Some(r) => f(&Row(RowInner::Lite(r))),
                    None => Err(DbError::NoRows),
                }
            }
            ConnInner::Pg(c) => match c.query(sql, values)?.first() {
                Some(r) => f(&Row(RowInner::Pg(r))),
                None => Err(DbError::NoRows),
            },
        }
    }

    /// Every row through `f`.
    pub fn query_map<T>(
        &self,
        sql: &str,
        p: impl Params,
        mut f: impl FnMut(&Row<'_>) -> Result<T>,
    ) -> Result<Vec<T>> {
        let values = p.values();
        match self.0 {
            ConnInner::Lite(c) => {
                let mut st = c.prepare_cached(sql)?;
                let mut rows = st.query(rusqlite::params_from_iter(values.iter()))?;
                let mut out = Vec::new();
                while let Some(r) = rows.next()? {
                    out.push(f(&Row(RowInner::Lite(r)))?);
                }
                Ok(out)
            }
            ConnInner::Pg(c) => c
                .query(sql, values)?
                .iter()
                .map(|r| f(&Row(RowInner::Pg(r))))
                .collect(),
        }
    }

    /// True if the query returns a row.
    pub fn exists(&self, sql: &str, p: impl Params) -> Result<bool> {
        self.query_row(sql, p, |_| Ok(()))
            .optional()
            .map(|r| r.is_some())
    }

    pub(crate) fn begin(&self) -> Result<()> {
        match self.0 {
            ConnInner::Lite(c) => Ok(c.execute_batch("BEGIN IMMEDIATE")?),
            ConnInner::Pg(c) => c.begin(),
        }
    }

    pub(crate) fn commit(&self) -> Result<()> {
        match self.0 {
            ConnInner::Lite(c) => Ok(c.execute_batch("COMMIT")?),
            ConnInner::Pg(c) => c.end("COMMIT"),
        }
    }

    pub(crate) fn rollback(&self) -> Result<()> {
        match self.0 {
            ConnInner::Lite(c) => Ok(c.execute_batch("ROLLBACK")?),
            ConnInner::Pg(c) => c.end("ROLLBACK"),
        }
    }
}
