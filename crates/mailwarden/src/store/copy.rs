//! `mailwarden store copy`: a single node's state moved into another store (its SQLite into a
//! cluster's PostgreSQL), table by table, with what the embedded store keeps beside it in
//! `data_dir`: queue bodies spooled to files (the shared store holds every body inline), DKIM
//! key files, and the learning key.
//!
//! Both stores are migrated to this build's schema first. Rows go in batches, each one commit,
//! with `ON CONFLICT DO NOTHING`: a copy interrupted and run again adds only what is missing,
//! and never overwrites what the destination already has. Run it with the source node
//! stopped, so its queue does not change underneath.

use super::{Conn, DbResult, Store, StoreError, Value};
use std::path::{Path, PathBuf};

/// Rows, or bytes of values, per commit.
const BATCH_ROWS: usize = 500;
const BATCH_BYTES: usize = 16 << 20;

/// What a copy did to one table.
#[derive(Debug, Default, PartialEq)]
pub struct Copied {
    pub table: String,
    /// Rows the destination did not have.
    pub added: usize,
    /// Rows it had already (same key).
    pub present: usize,
}

/// The SQLite file a `sqlite:PATH` names: the database itself, or the data directory it is in.
pub fn sqlite_path(spec: &str) -> PathBuf {
    let p = Path::new(spec.strip_prefix("sqlite:").unwrap_or(spec));
    if p.is_dir() {
        p.join("mailwarden.db")
    } else {
        p.to_path_buf()
    }
}

/// Copy everything from the SQLite store at `from` into `to`.
pub fn copy(from: &Path, to: &Store) -> Result<Vec<Copied>, StoreError> {
    if !from.is_file() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!("no store at {}", from.display()),
        )
        .into());
    }
    let data_dir = from.parent().unwrap_or(Path::new(".")).to_path_buf();
    let source = Store::open_sqlite(from)?;
    let tables: Vec<String> = source.read(|c| {
        c.query_map(
            "SELECT name FROM sqlite_master WHERE type = 'table' \
             AND name NOT LIKE 'sqlite_%' ORDER BY name",
            (),
            |r| r.get(0),
        )
    })?;
    let mut report = Vec::new();
    for table in tables {
        report.push(copy_table(&source, to, &table, &data_dir)?);
    }
    report.push(copy_dkim_files(&data_dir, to)?);
    report.push(copy_learn_key(&data_dir, to)?);
    source.close();
    Ok(report)
}

fn columns(source: &Store, table: &str) -> Result<Vec<String>, StoreError> {
    source.read(|c| {
        c.query_map(
            &format!("SELECT name FROM pragma_table_info('{table}') ORDER BY cid"),
            (),
            |r| r.get(0),
        )
    })
}

fn copy_table(
    source: &Store,
    to: &Store,
    table: &str,
    data_dir: &Path,
) -> Result<Copied, StoreError> {
    let cols = columns(source, table)?;
    let mut out = Copied {
        table: table.to_string(),
        ..Copied::default()
    };
    let list = cols.join(", ");
    let marks: Vec<String> = (1..=cols.len()).map(|i| format!("?{i}")).collect();
    let insert = format!(
        "INSERT INTO {table}({list}) VALUES ({}) ON CONFLICT DO NOTHING",
        marks.join(", ")
    );
    // Walk the table in rowid order a batch at a time, so memory holds one batch.
    // A WITHOUT ROWID table is walked by offset in its key's order instead.
    let rowid = !source
        .read(|c| {
            c.query_row(
                "SELECT sql FROM sqlite_master WHERE type = 'table' AND name = ?1",
                [table],
                |r| r.get::<String>(0),
            )
        })?
        .contains("WITHOUT ROWID");
    let (mut after, mut offset) = (i64::MIN, 0usize);
    loop {
        let sql = if rowid {
            format!(
                "SELECT _rowid_, {list} FROM {table} WHERE _rowid_ > ?1 \
                 ORDER BY _rowid_ LIMIT {BATCH_ROWS}"
            )
        } else {
            format!(
                "SELECT 0, {list} FROM {table} WHERE ?1 = ?1 ORDER BY 2, 3 \
                 LIMIT {BATCH_ROWS} OFFSET {offset}"
            )
        };
        let rows: Vec<(i64, Vec<Value>)> = source.read(|c| {
            c.query_map(&sql, [after], |r| {
                let mut v = Vec::with_capacity(cols.len());
                for i in 0..cols.len() {
                    v.push(r.get::<Value>(i + 1)?);
                }
                Ok((r.get(0)?, v))
            })
        })?;
        let Some((last, _)) = rows.last() else {
            break;
        };
        after = *last;
        offset += rows.len();
        let mut batch: Vec<Vec<Value>> = Vec::new();
        let mut bytes = 0;
        for (_, mut row) in rows {
            if table == "queue" {
                inline_spooled(&cols, &mut row, data_dir)?;
            }
            if table == "queue_rcpt" {
                // The old node's claims mean nothing in the cluster.
                for (c, v) in cols.iter().zip(row.iter_mut()) {
                    match c.as_str() {
                        "lease_node" => *v = Value::Null,
                        "lease_until" => *v = Value::Int(0),
                        _ => {}
                    }
                }
            }
            bytes += row.iter().map(size).sum::<usize>();
            batch.push(row);
            if bytes >= BATCH_BYTES {
                write_batch(to, &insert, std::mem::take(&mut batch), &mut out)?;
                bytes = 0;
            }
        }
        write_batch(to, &insert, batch, &mut out)?;
    }
    Ok(out)
}

fn size(v: &Value) -> usize {
    match v {
        Value::Text(s) => s.len(),
        Value::Blob(b) => b.len(),
        _ => 8,
    }
}

/// A queue row whose body is a spool file gets the body inline: no node of a cluster reads
/// another's spool directory.
fn inline_spooled(cols: &[String], row: &mut [Value], data_dir: &Path) -> std::io::Result<()> {
    let at = |name: &str| cols.iter().position(|c| c == name);
    let (Some(id), Some(body), Some(spooled)) = (at("id"), at("body"), at("spooled")) else {
        return Ok(());
    };
    if row[spooled] != Value::Int(1) {
        return Ok(());
    }
    let Value::Text(qid) = &row[id] else {
        return Ok(());
    };
    let path = data_dir.join("queue").join(qid);
    row[body] = Value::Blob(std::fs::read(&path).map_err(|e| {
        std::io::Error::new(e.kind(), format!("spool file {}: {e}", path.display()))
    })?);
    row[spooled] = Value::Int(0);
    Ok(())
}

fn write_batch(
    to: &Store,
    insert: &str,
    batch: Vec<Vec<Value>>,
    out: &mut Copied,
) -> Result<(), StoreError> {
    if batch.is_empty() {
        return Ok(());
    }
    let n = batch.len();
    let insert = insert.to_string();
    let added = to.write_blocking(move |c: &Conn<'_>| {
        let mut added = 0;
        for row in batch {
            added += c.execute(&insert, row)?;
        }
        DbResult::Ok(added)
    })?;
    out.added += added;
    out.present += n - added;
    Ok(())
}

/// `data_dir/dkim/<domain>/<selector>.pem` into the shared store's `dkim_keys`.
fn copy_dkim_files(data_dir: &Path, to: &Store) -> Result<Copied, StoreError> {
    let mut out = Copied {
        table: "dkim_keys (files)".into(),
        ..Copied::default()
    };
    let Ok(domains) = std::fs::read_dir(data_dir.join("dkim")) else {
        return Ok(out);
    };
    let mut rows = Vec::new();
    for d in domains.flatten() {
        let domain = d.file_name().to_string_lossy().into_owned();
        for k in std::fs::read_dir(d.path())?.flatten() {
            let name = k.file_name().to_string_lossy().into_owned();
            let Some(selector) = name.strip_suffix(".pem") else {
                continue;
            };
            let pem = std::fs::read_to_string(k.path())?;
            let created = k
                .metadata()?
                .modified()
                .ok()
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map_or(0, |d| d.as_secs() as i64);
            rows.push(vec![
                Value::Text(domain.clone()),
                Value::Text(selector.to_string()),
                Value::Text(pem),
                Value::Int(created),
            ]);
        }
    }
    write_batch(to, crate::dkim::keys::INSERT_KEY, rows, &mut out)?;
    Ok(out)
}

/// `data_dir/learn.key` as the cluster's `learn_key`, so the `X-Mailwarden-Id` of mail this
/// node delivered still verifies when its users move it.
fn copy_learn_key(data_dir: &Path, to: &Store) -> Result<Copied, StoreError> {
    let mut out = Copied {
        table: "learn_key (file)".into(),
        ..Copied::default()
    };
    let Ok(bytes) = std::fs::read(data_dir.join("learn.key")) else {
        return Ok(out);
    };
    let hex = crate::learning::key_hex(&bytes);
    write_batch(
        to,
        "INSERT INTO meta(key, value) VALUES ('learn_key', ?1) ON CONFLICT DO NOTHING",
        vec![vec![Value::Text(hex.clone())]],
        &mut out,
    )?;
    let kept: String = to.read(|c| {
        c.query_row("SELECT value FROM meta WHERE key = 'learn_key'", (), |r| {
            r.get(0)
        })
    })?;
    if kept != hex {
        // The cluster's own key stays: mail it marked must still verify.
        out.table = "learn_key (file): the cluster has another; not replaced".into();
    }
    Ok(out)
}
