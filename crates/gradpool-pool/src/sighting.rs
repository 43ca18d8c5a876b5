//! Sightings: heartbeats that change nothing but when a provider was last
//! heard from and its telemetry. Most heartbeats are such; they are kept
//! in memory and written in one batch at the start of the next write
//! transaction (the reaper writes at least every second), so they take
//! neither the write lock nor a transaction of their own.
//!
//! `GET /v1/providers` lays the sightings not yet written over what it
//! reads ([`Sightings::get`]); the overview (`/metrics`, `pool status`)
//! reads the database alone, up to a reaper period behind. A write
//! transaction that fails or is rolled back after taking them puts them
//! back.

use sqlx::AnyConnection;
use std::collections::HashMap;

/// One provider's latest sighting.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Sighting {
    /// The pool's clock (ms).
    pub(crate) at: i64,
    /// The telemetry it reported (JSON).
    pub(crate) telemetry: String,
}

/// The sightings not yet written, the latest per provider.
#[derive(Debug, Default)]
pub(crate) struct Sightings {
    unwritten: std::sync::Mutex<HashMap<String, Sighting>>,
}

impl Sightings {
    /// Records that `provider` was heard from; a later sighting replaces
    /// an earlier one.
    pub(crate) fn record(&self, provider: &str, sighting: Sighting) {
        let mut unwritten = self.lock();
        match unwritten.get_mut(provider) {
            Some(old) if old.at > sighting.at => {}
            Some(old) => *old = sighting,
            None => {
                unwritten.insert(provider.to_owned(), sighting);
            }
        }
    }

    /// Whether no sighting waits to be written.
    pub(crate) fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }

    /// The unwritten sighting of `provider`, if any.
    pub(crate) fn get(&self, provider: &str) -> Option<Sighting> {
        self.lock().get(provider).cloned()
    }

    fn take(&self) -> HashMap<String, Sighting> {
        std::mem::take(&mut *self.lock())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Sighting>> {
        self.unwritten
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Writes every unwritten sighting in `conn`'s transaction. They are
    /// put back when the returned [`Taken`] drops unless the transaction
    /// committed ([`Taken::written`]): a write that fails or is rolled
    /// back loses none. A sighting never moves `last_seen` back (a
    /// heartbeat's own write may have recorded a later one).
    pub(crate) async fn write<'a>(
        &'a self,
        conn: &mut AnyConnection,
    ) -> Result<Taken<'a>, sqlx::Error> {
        let taken = Taken {
            from: self,
            sightings: self.take(),
        };
        let rows: Vec<(&String, &Sighting)> = taken.sightings.iter().collect();
        for batch in rows.chunks(BATCH) {
            let sql = batch_sql(batch.len());
            let mut update = sqlx::query(&sql);
            for (provider, s) in batch {
                update = update.bind(provider.as_str()).bind(s.at).bind(&s.telemetry);
            }
            update.execute(&mut *conn).await?;
        }
        Ok(taken)
    }
}

/// Sightings written by one statement: one round trip to the database
/// for each, not one per provider.
const BATCH: usize = 500;

/// The statement that writes `n` sightings, bound as `(provider, at,
/// telemetry)` triples (a `VALUES` list's columns are `column1`… in both
/// engines).
fn batch_sql(n: usize) -> String {
    let values: Vec<String> = (0..n)
        .map(|i| format!("(${}, ${}, ${})", 3 * i + 1, 3 * i + 2, 3 * i + 3))
        .collect();
    format!(
        "UPDATE providers SET last_seen = v.column2, telemetry = v.column3 \
         FROM (VALUES {}) AS v \
         WHERE providers.id = v.column1 AND providers.last_seen <= v.column2",
        values.join(", ")
    )
}

/// Sightings taken out to be written by one transaction: recorded again
/// when dropped, unless [`Taken::written`] says it committed.
pub(crate) struct Taken<'a> {
    from: &'a Sightings,
    sightings: HashMap<String, Sighting>,
}

impl Taken<'_> {
    /// The transaction that wrote them committed.
    pub(crate) fn written(mut self) {
        self.sightings.clear();
    }
}

impl Drop for Taken<'_> {
    fn drop(&mut self) {
        for (provider, s) in self.sightings.drain() {
            self.from.record(&provider, s);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(at: i64) -> Sighting {
        Sighting {
            at,
            telemetry: format!("{{\"t\":{at}}}"),
        }
    }

    /// More sightings than one statement writes are all written, and none
    /// moves a provider's `last_seen` back.
    #[tokio::test]
    async fn sightings_are_written_in_batches_and_never_move_back() {
        let dir = tempfile::tempdir().unwrap();
        let db = crate::db::open(&dir.path().join("pool.sqlite"), None)
            .await
            .unwrap();
        let n = 2 * BATCH + 7;
        for i in 0..n {
            sqlx::query(
                "INSERT INTO providers (id, public_key, name, hardware, device, memory_bytes, class, \
                 registered_at, last_seen) VALUES ($1, 'k', 'n', '{}', 'cpu', 0, 'c', 0, $2)",
            )
            .bind(format!("prov_{i}"))
            // The last provider was seen later than its sighting says.
            .bind(if i == n - 1 { 1_000_000 } else { 0 })
            .execute(&db)
            .await
            .unwrap();
        }
        let s = Sightings::default();
        for i in 0..n {
            s.record(&format!("prov_{i}"), at(500 + i as i64));
        }
        let mut tx = db.begin().await.unwrap();
        let taken = s.write(&mut tx).await.unwrap();
        tx.commit().await.unwrap();
        taken.written();
        assert!(s.is_empty());
        let rows: Vec<(String, i64, Option<String>)> =
            sqlx::query_as("SELECT id, last_seen, telemetry FROM providers")
                .fetch_all(&db)
                .await
                .unwrap();
        assert_eq!(rows.len(), n);
        for (id, last_seen, telemetry) in rows {
            let i: i64 = id["prov_".len()..].parse().unwrap();
            if i == n as i64 - 1 {
                assert_eq!((last_seen, telemetry), (1_000_000, None), "{id} moved back");
            } else {
                assert_eq!(last_seen, 500 + i, "{id}");
                assert_eq!(telemetry, Some(at(500 + i).telemetry), "{id}");
            }
        }
    }

    #[test]
    fn the_latest_sighting_wins_whatever_the_order() {
        let s = Sightings::default();
        s.record("a", at(5));
        s.record("a", at(3));
        assert_eq!(s.get("a"), Some(at(5)));
        s.record("a", at(8));
        assert_eq!(s.get("a").map(|s| s.at), Some(8));
        assert_eq!(s.get("b"), None);
        let taken = s.take();
        assert_eq!(taken.len(), 1);
        assert_eq!(s.get("a"), None);
    }
}
