//! Target `collection_files`: a collection folder as the store finds it at start — manifest,
//! sealed segment files, delete lists and write-ahead log files — opened by
//! [`Collection::open`], which replays the log over the last checkpoint. The input's first byte
//! holds flags (bit 0: `wal_recover`), the rest is an [`archive`](crate::archive) of the
//! folder's files. A folder that opens must answer reads, take a write, checkpoint and open
//! again with that write in it.

use quiver_engine::backend::cpu::CpuBackend;
use quiver_engine::payload::filter::Filter;
use quiver_store::wal::PayloadEdit;
use quiver_store::{Collection, SearchKey, StoreConfig};

use crate::{archive, index_file::queries, scratch};

/// Largest dimension the target writes to (the service refuses more by default).
const MAX_DIM: usize = 4096;

/// The store settings of the target: small thresholds, so that replay crosses seals.
pub fn config(wal_recover: bool) -> StoreConfig {
    StoreConfig {
        checkpoint_wal_bytes: 1 << 20,
        seal_rows: 64,
        write_nice: 0,
        wal_recover,
        ..StoreConfig::default()
    }
}

/// Runs one input.
pub fn run(data: &[u8]) {
    let Some((&flags, files)) = data.split_first() else {
        return;
    };
    let dir = scratch().join("collection");
    let _ = std::fs::remove_dir_all(&dir);
    if archive::unpack(files, &dir).is_err() {
        return;
    }
    let cfg = config(flags & 1 != 0);
    let Ok(c) = Collection::open(&dir, CpuBackend, cfg.clone()) else {
        return;
    };
    let meta = c.meta();
    let live = c.count(None);
    let (page, _) = c.scroll(None, None, 16);
    assert!(page.len() <= live.min(16), "scroll gave more than count");
    let ids: Vec<u64> = page.iter().map(|(id, _)| *id).collect();
    let got = c.get_points(&ids);
    assert_eq!(got.len(), ids.len(), "scrolled points are missing from get");
    if let Ok(f) = Filter::parse_text(r#"{"must": [{"key": "n", "range": {"gte": 1}}]}"#) {
        let n = c.count(Some(&f));
        assert!(n <= live);
    }
    if meta.dim == 0 || meta.dim > MAX_DIM {
        c.close();
        return;
    }
    let key = SearchKey {
        k: 5,
        nprobe: 0,
        refine_factor: 0,
    };
    let q = queries(meta.dim);
    let _ = c.search(&q, 2, key);

    // A write, a checkpoint and a second open: the write is there.
    let fresh = u64::MAX - 7;
    let wrote = c.upsert(vec![fresh], q[..meta.dim].to_vec()).is_ok()
        && c.set_payload(vec![fresh], PayloadEdit::Merge(br#"{"n": 3}"#.to_vec()))
            .is_ok()
        && c.checkpoint().is_ok();
    c.close();
    drop(c);
    if wrote {
        let again = Collection::open(&dir, CpuBackend, cfg)
            .expect("a collection that opened and took a checkpointed write no longer opens");
        assert_eq!(
            again.get(&[fresh]).len(),
            1,
            "a checkpointed point is missing after reopening"
        );
        again.close();
    }
}
