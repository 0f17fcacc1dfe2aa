//! Scroll and count hold memory that follows the page, not the collection: a page of 100
//! from a million points, and a filtered count, allocate well under what a list of every id
//! would take (8 MB). Measured with a counting allocator (this test binary's own).

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use quiver_engine::backend::cpu::CpuBackend;
use quiver_engine::payload::filter::Filter;
use quiver_store::{Collection, CollectionMeta, IndexConfig, StoreConfig};

/// The system allocator, counting the bytes allocated now and the most since a reset.
struct Counting;

static NOW: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            let now = NOW.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
            PEAK.fetch_max(now, Ordering::Relaxed);
        }
        p
    }
    unsafe fn dealloc(&self, p: *mut u8, layout: Layout) {
        unsafe { System.dealloc(p, layout) };
        NOW.fetch_sub(layout.size(), Ordering::Relaxed);
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// The most bytes `f` held at once beyond what was allocated before it ran.
fn peak_of<T>(f: impl FnOnce() -> T) -> (T, usize) {
    let base = NOW.load(Ordering::Relaxed);
    PEAK.store(base, Ordering::Relaxed);
    let out = f();
    (out, PEAK.load(Ordering::Relaxed).saturating_sub(base))
}

#[test]
fn a_scroll_over_a_million_points_pages_in_flat_memory() {
    const N: u64 = 1_000_000;
    let dir = tempfile::tempdir().unwrap();
    let meta = CollectionMeta {
        name: "s".into(),
        dim: 2,
        metric: "l2".into(),
        index: IndexConfig::default(),
        fields: Vec::new(),
        settings: serde_json::Value::Null,
    };
    let cfg = StoreConfig {
        seal_rows: 300_000,
        ..StoreConfig::default()
    };
    let c = Collection::create(&dir.path().join("s"), meta, CpuBackend, cfg).unwrap();
    for start in (0..N).step_by(100_000) {
        let ids: Vec<u64> = (start..start + 100_000).collect();
        let v: Vec<f32> = ids.iter().flat_map(|&i| [i as f32, 1.0]).collect();
        c.upsert(ids, v).unwrap();
    }
    assert_eq!(c.count(None), N as usize);
    let every_id = N as usize * 8;
    let mut offset = Some(N / 2);
    let mut worst = 0;
    for _ in 0..5 {
        let ((page, next), peak) = peak_of(|| c.scroll(None, offset, 100));
        assert_eq!(page.len(), 100);
        assert_eq!(page[0].0, offset.unwrap());
        assert_eq!(next, Some(page[99].0 + 1));
        worst = worst.max(peak);
        offset = next;
    }
    let filter = Filter::parse_text(r#"{"must_not":[{"has_id":[5, 77, 999999]}]}"#).unwrap();
    let (n, count_peak) = peak_of(|| c.count(Some(&filter)));
    assert_eq!(n, N as usize - 3);
    eprintln!("scroll page of 100: at most {worst} bytes; filtered count: {count_peak} bytes; every id: {every_id} bytes");
    assert!(worst < every_id / 8, "a page took {worst} bytes");
    assert!(count_peak < every_id / 8, "a count took {count_peak} bytes");
}
