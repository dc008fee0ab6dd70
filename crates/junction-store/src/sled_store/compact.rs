//! `SledStore::compact`: the live rows copied into a fresh database, swapped in.

use super::*;

/// `path` with `suffix` added to its file name (`store` → `store.compacted`).
pub(super) fn beside(path: &Path, suffix: &str) -> std::path::PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(suffix);
    path.with_file_name(name)
}

fn io(e: std::io::Error) -> StoreError {
    StoreError::Backend(e.to_string())
}

/// What [`SledStore::compact`] did: the directory's size before and after, in bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Compacted {
    /// Bytes on disk before.
    pub before: u64,
    /// Bytes on disk after.
    pub after: u64,
}

/// Bytes the files under `p` take (their lengths).
pub fn dir_size(p: &Path) -> u64 {
    let mut total = 0;
    if let Ok(rd) = std::fs::read_dir(p) {
        for e in rd.flatten() {
            match e.metadata() {
                Ok(m) if m.is_dir() => total += dir_size(&e.path()),
                Ok(m) => total += m.len(),
                Err(_) => {}
            }
        }
    }
    total
}

impl SledStore {
    /// Opens the store at `path` (not open anywhere) once and closes it: sled reads its log
    /// from its last snapshot on and writes a new snapshot at each open, and at no other
    /// time, so the next open reads only what is written after this. A gateway does this
    /// when it stops, which moves to the stop what the next start would read (after a
    /// crash the start reads it all, as before). Waits up to `wait` for the lock (sled's
    /// flusher thread holds it a moment after the last handle is dropped).
    pub fn checkpoint(path: impl AsRef<Path>, wait: std::time::Duration) -> Result<()> {
        let db = open_db(path.as_ref(), wait, &|| false)?;
        db.flush().map_err(be)?;
        Ok(())
    }

    /// Rewrites the store at `path` (not open anywhere: a stopped gateway) into a fresh
    /// database holding only its live rows, then puts it in place of the old one. sled's log
    /// keeps every page image and removed row until its segments are cleaned, which seldom
    /// happens; a copy of the rows alone takes about half the space and opens faster.
    ///
    /// The copy is written beside the store (`store.compacting`), renamed `store.compacted`
    /// once complete, then swapped in; a copy left complete by a crash is swapped in by the
    /// next open, an incomplete or stale one is removed by the next compaction. The rows are
    /// copied as they are stored, so a store compacted reads as before.
    pub fn compact(path: impl AsRef<Path>) -> Result<Compacted> {
        let path = path.as_ref();
        finish_swap(path)?;
        let before = dir_size(path);
        let copying = beside(path, ".compacting");
        let done = beside(path, ".compacted");
        let old = beside(path, ".old");
        for p in [&copying, &done, &old] {
            if p.exists() {
                std::fs::remove_dir_all(p).map_err(io)?;
            }
        }
        {
            let db = open_db(path, std::time::Duration::from_secs(2), &|| false)?;
            // The next id the old database would hand out, kept for the new one.
            let floor = db.generate_id().map_err(be)?.saturating_add(1);
            let previous = db
                .open_tree("meta")
                .map_err(be)?
                .get(ID_FLOOR)
                .map_err(be)?
                .and_then(|v| stamp(&v))
                .unwrap_or(0);
            let fresh = sled::open(&copying).map_err(be)?;
            // Row by row (sled's own `import` panics on an I/O error, e.g. a full disk), every
            // other row first and then the rest: sled splits a leaf in two halves when it
            // passes 16 rows, so rows inserted in key order leave every leaf half full, while
            // the second pass fills the gaps the first one left (at 100,000 rows of 76
            // bytes: 189 bytes per row on disk instead of 220).
            for name in db.tree_names() {
                let from = db.open_tree(&name).map_err(be)?;
                let to = fresh.open_tree(&name).map_err(be)?;
                for pass in 0..2 {
                    for r in from.iter().skip(pass).step_by(2) {
                        let (k, v) = r.map_err(be)?;
                        to.insert(k, v).map_err(be)?;
                    }
                }
            }
            fresh
                .open_tree("meta")
                .map_err(be)?
                .insert(ID_FLOOR, &previous.saturating_add(floor).to_be_bytes())
                .map_err(be)?;
            fresh.flush().map_err(be)?;
        }
        // sled reads its log from the last snapshot on, and writes one at each open: opened
        // once here, the copy's first start reads the snapshot instead of the whole log.
        drop(open_db(
            &copying,
            std::time::Duration::from_secs(5),
            &|| false,
        )?);
        std::fs::rename(&copying, &done).map_err(io)?;
        std::fs::rename(path, &old).map_err(io)?;
        std::fs::rename(&done, path).map_err(io)?;
        std::fs::remove_dir_all(&old).map_err(io)?;
        Ok(Compacted {
            before,
            after: dir_size(path),
        })
    }
}

/// Puts in place a compacted copy a crash left complete beside `path` after the old store
/// was moved away ([`SledStore::compact`]).
pub(super) fn finish_swap(path: &Path) -> Result<()> {
    let done = beside(path, ".compacted");
    if !path.exists() && done.exists() {
        std::fs::rename(&done, path).map_err(io)?;
    }
    let old = beside(path, ".old");
    if path.exists() && old.exists() {
        std::fs::remove_dir_all(&old).map_err(io)?;
    }
    Ok(())
}
