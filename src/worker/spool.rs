//! The spool: payloads that could not be delivered (endpoint down after every retry, or
//! still queued at shutdown), kept in a file under the data directory and delivered again,
//! oldest first, when the endpoint answers. Plain Rust file I/O, no PostgreSQL.
//!
//! The file holds one JSON payload per line (serde_json never writes a raw newline). New
//! payloads are appended; delivered ones are removed by rewriting the file (write a
//! temporary file, fsync, rename) once per delivery pass.

use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

pub struct Spool {
    path: PathBuf,
    entries: VecDeque<Vec<u8>>,
    max: usize,
    /// Opened on the first write: a server whose deliveries succeed (a standby, say)
    /// writes nothing.
    file: Option<File>,
    dirty: bool,
}

/// What `Spool::open` found in an existing file.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Loaded {
    pub events: usize,
    /// Lines that were not a JSON object (a torn write after a crash): skipped.
    pub corrupt: usize,
    /// Events beyond the size cap: dropped.
    pub over_cap: usize,
}

impl Spool {
    /// Loads the spool at `path` (if the file exists), holding at most `max` events.
    pub fn open(path: &Path, max: usize) -> io::Result<(Spool, Loaded)> {
        let mut loaded = Loaded::default();
        let mut entries = VecDeque::new();
        if let Ok(existing) = File::open(path) {
            for line in BufReader::new(existing).split(b'\n') {
                let line = line?;
                if line.is_empty() {
                    continue;
                }
                match serde_json::from_slice::<serde_json::Value>(&line) {
                    Ok(v) if v.is_object() && entries.len() < max => entries.push_back(line),
                    Ok(v) if v.is_object() => loaded.over_cap += 1,
                    _ => loaded.corrupt += 1,
                }
            }
        }
        loaded.events = entries.len();
        let mut spool = Spool {
            path: path.to_path_buf(),
            entries,
            max,
            file: None,
            dirty: false,
        };
        if loaded.corrupt + loaded.over_cap > 0 {
            spool.dirty = true;
            spool.compact()?;
        }
        Ok((spool, loaded))
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn set_max(&mut self, max: usize) {
        self.max = max;
    }

    /// Appends a payload. `Ok(false)` when the spool is full (the caller counts a drop).
    pub fn add(&mut self, payload: &[u8]) -> io::Result<bool> {
        if self.entries.len() >= self.max {
            return Ok(false);
        }
        let mut line = Vec::with_capacity(payload.len() + 1);
        line.extend_from_slice(payload);
        line.push(b'\n');
        self.append_handle()?.write_all(&line)?;
        line.pop();
        self.entries.push_back(line);
        Ok(true)
    }

    fn append_handle(&mut self) -> io::Result<&mut File> {
        if self.file.is_none() {
            if let Some(dir) = self.path.parent() {
                fs::create_dir_all(dir)?;
            }
            self.file = Some(
                OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&self.path)?,
            );
        }
        Ok(self.file.as_mut().expect("opened above"))
    }

    /// Copies of the oldest `n` payloads.
    pub fn oldest(&self, n: usize) -> Vec<Vec<u8>> {
        self.entries.iter().take(n).cloned().collect()
    }

    /// After a delivery pass over `oldest(k)`: keeps the ones marked true, drops the rest.
    /// Only the delivery pass removes entries, and only at the front, so the first
    /// `keep.len()` entries are still the ones it was given.
    pub fn retain_oldest(&mut self, keep: &[bool]) {
        let n = keep.len().min(self.entries.len());
        let kept: Vec<Vec<u8>> = self
            .entries
            .drain(..n)
            .zip(keep)
            .filter_map(|(entry, &k)| k.then_some(entry))
            .collect();
        self.dirty |= kept.len() < n;
        for entry in kept.into_iter().rev() {
            self.entries.push_front(entry);
        }
    }

    /// Rewrites the file from memory if entries were removed.
    pub fn compact(&mut self) -> io::Result<()> {
        if !self.dirty {
            return Ok(());
        }
        let tmp = self.path.with_extension("tmp");
        {
            let mut out = io::BufWriter::new(File::create(&tmp)?);
            for entry in &self.entries {
                out.write_all(entry)?;
                out.write_all(b"\n")?;
            }
            out.into_inner().map_err(|e| e.into_error())?.sync_all()?;
        }
        fs::rename(&tmp, &self.path)?;
        self.file = None;
        self.dirty = false;
        Ok(())
    }

    /// Makes appended payloads durable (at shutdown).
    pub fn sync(&mut self) -> io::Result<()> {
        self.compact()?;
        match &self.file {
            Some(file) => file.sync_all(),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_path(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("ln-spool-{}-{name}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        dir.join("spool.jsonl")
    }

    fn payload(n: u32) -> Vec<u8> {
        format!(r#"{{"eventId":"{n}","userName":"line\nbreak \"q\""}}"#).into_bytes()
    }

    #[test]
    fn survives_reopening_in_order() {
        let path = temp_path("reopen");
        let (mut spool, loaded) = Spool::open(&path, 10).unwrap();
        assert_eq!(loaded, Loaded::default());
        assert!(!path.exists(), "nothing is written before the first event");
        for n in 0..3 {
            assert!(spool.add(&payload(n)).unwrap());
        }
        drop(spool);
        let (spool, loaded) = Spool::open(&path, 10).unwrap();
        assert_eq!(loaded.events, 3);
        assert_eq!(spool.oldest(5), vec![payload(0), payload(1), payload(2)]);
    }

    #[test]
    fn delivered_entries_are_removed_from_the_file() {
        let path = temp_path("retain");
        let (mut spool, _) = Spool::open(&path, 10).unwrap();
        for n in 0..4 {
            spool.add(&payload(n)).unwrap();
        }
        let batch = spool.oldest(3);
        assert_eq!(batch.len(), 3);
        spool.add(&payload(9)).unwrap(); // arrives during the delivery pass
        spool.retain_oldest(&[false, true, false]);
        spool.compact().unwrap();
        drop(spool);
        let (spool, _) = Spool::open(&path, 10).unwrap();
        assert_eq!(spool.oldest(10), vec![payload(1), payload(3), payload(9)]);
    }

    #[test]
    fn the_cap_refuses_new_entries_and_trims_old_files() {
        let path = temp_path("cap");
        let (mut spool, _) = Spool::open(&path, 2).unwrap();
        assert!(spool.add(&payload(0)).unwrap());
        assert!(spool.add(&payload(1)).unwrap());
        assert!(!spool.add(&payload(2)).unwrap());
        spool.set_max(5);
        spool.add(&payload(2)).unwrap();
        drop(spool);
        let (spool, loaded) = Spool::open(&path, 1).unwrap();
        assert_eq!((loaded.events, loaded.over_cap), (1, 2));
        assert_eq!(spool.len(), 1);
    }

    #[test]
    fn torn_lines_are_skipped() {
        let path = temp_path("torn");
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        let mut text = payload(0);
        text.extend_from_slice(b"\n{\"eventId\": \"tr\n");
        fs::write(&path, text).unwrap();
        let (spool, loaded) = Spool::open(&path, 10).unwrap();
        assert_eq!((loaded.events, loaded.corrupt), (1, 1));
        assert_eq!(spool.oldest(10), vec![payload(0)]);
    }
}
