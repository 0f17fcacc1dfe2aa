//! A simulated disk for power-cut tests. Installed as the process's
//! [`SyncObserver`], it watches every durability point of the files under one
//! root folder and keeps what a power cut would leave of them:
//!
//! - a file's data: what it held at its last fsync (`durable`);
//! - a folder's entries: the listing at its last fsync (`listing`).
//!
//! At a simulated crash it builds an image of the folder tree from that,
//! dropping or keeping the rest the way a real disk may after a power cut:
//! each folder holds either its last synced entries or its current ones (a
//! rename or create not yet synced is lost or kept as a whole, folder by
//! folder), and each file holds its last synced data, its current data, or its
//! synced data plus a random prefix of what was appended since (a torn append).
//! Files and folders are known by inode; every inode seen is kept open, so the
//! number cannot be reused for another file during a run.
//!
//! This is stricter than ext4 or XFS in one way (a file never fsynced has no
//! data at all) and models what LazyFS's "lose unsynced data" mode does.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::Mutex;
use quiver_engine::io::sync::SyncObserver;

use crate::common::Rng;

/// A folder tree as a crash left it.
#[derive(Debug, Clone)]
pub enum Node {
    Dir(BTreeMap<String, Node>),
    File(Vec<u8>),
}

impl Node {
    /// Writes the tree at `path` (which must not exist).
    pub fn write(&self, path: &Path) -> std::io::Result<()> {
        match self {
            Node::File(b) => std::fs::write(path, b),
            Node::Dir(entries) => {
                std::fs::create_dir(path)?;
                for (name, n) in entries {
                    n.write(&path.join(name))?;
                }
                Ok(())
            }
        }
    }
}

/// A crash image and the labels the test gave the moments its building began and ended (the
/// image holds what files held while it was built: a crash anywhere in between).
pub struct Image {
    pub label: u64,
    pub label_after: u64,
    pub event: usize,
    pub tree: Node,
}

#[derive(Debug, Clone, Copy, PartialEq)]
struct Entry {
    ino: u64,
    dir: bool,
}

#[derive(Default)]
struct State {
    /// An open handle on every inode seen (read-only), which also keeps its number in use.
    pinned: HashMap<u64, File>,
    durable: HashMap<u64, Arc<Vec<u8>>>,
    listing: HashMap<u64, BTreeMap<String, Entry>>,
    events: usize,
    rng: Option<Rng>,
    images: Vec<Image>,
}

/// The simulated disk over `root` (see the module doc).
pub struct SimDisk {
    root: PathBuf,
    root_ino: u64,
    state: Mutex<State>,
    /// Chance of a crash image at each durability point.
    crash_chance: f64,
    /// The label of the moment: the test's count of acknowledged operations.
    label: Box<dyn Fn() -> u64 + Send + Sync>,
}

fn proc_path(f: &File) -> PathBuf {
    PathBuf::from(format!("/proc/self/fd/{}", f.as_raw_fd()))
}

fn read_whole(f: &File) -> Vec<u8> {
    let len = f.metadata().map(|m| m.len()).unwrap_or(0) as usize;
    let mut buf = vec![0; len];
    let mut at = 0;
    while at < len {
        match f.read_at(&mut buf[at..], at as u64) {
            Ok(0) | Err(_) => break,
            Ok(n) => at += n,
        }
    }
    buf.truncate(at);
    buf
}

impl SimDisk {
    /// Watches `root` (an existing, empty folder, whose empty listing counts as durable).
    pub fn new(
        root: &Path,
        seed: u64,
        crash_chance: f64,
        label: impl Fn() -> u64 + Send + Sync + 'static,
    ) -> Arc<SimDisk> {
        let root = root.canonicalize().expect("root folder");
        let handle = File::open(&root).expect("root folder");
        let root_ino = handle.metadata().expect("root folder").ino();
        let mut state = State {
            rng: Some(Rng(seed)),
            ..State::default()
        };
        state.pinned.insert(root_ino, handle);
        state.listing.insert(root_ino, BTreeMap::new());
        Arc::new(SimDisk {
            root,
            root_ino,
            state: Mutex::new(state),
            crash_chance,
            label: Box::new(label),
        })
    }

    fn under_root(&self, path: &Path) -> bool {
        path.starts_with(&self.root)
    }

    /// The crash images taken so far.
    pub fn take_images(&self) -> Vec<Image> {
        std::mem::take(&mut self.state.lock().images)
    }

    /// The entries of `dir` now, each pinned. An entry's inode is read from the handle that
    /// pins it (not from a separate `stat`), so a rename over the name in between cannot pin
    /// another file under its number.
    fn current_listing(state: &mut State, dir: &Path) -> BTreeMap<String, Entry> {
        let mut out = BTreeMap::new();
        let Ok(rd) = std::fs::read_dir(dir) else {
            return out;
        };
        for e in rd.flatten() {
            let Ok(handle) = File::open(e.path()) else {
                continue;
            };
            let Ok(m) = handle.metadata() else {
                continue;
            };
            let entry = Entry {
                ino: m.ino(),
                dir: m.is_dir(),
            };
            state.pinned.entry(entry.ino).or_insert(handle);
            out.insert(e.file_name().to_string_lossy().into_owned(), entry);
        }
        out
    }

    /// After a durability point: count it, and maybe take a crash image.
    fn after_event(&self, state: &mut State) {
        state.events += 1;
        let mut rng = state.rng.take().expect("rng");
        if rng.chance(self.crash_chance) {
            let label = (self.label)();
            let tree = self.build(state, self.root_ino, &mut rng);
            let label_after = (self.label)();
            let event = state.events;
            state.images.push(Image {
                label,
                label_after,
                event,
                tree,
            });
        }
        state.rng = Some(rng);
    }

    fn build(&self, state: &mut State, dir_ino: u64, rng: &mut Rng) -> Node {
        let durable = state.listing.get(&dir_ino).cloned().unwrap_or_default();
        let current = match state.pinned.get(&dir_ino) {
            Some(h) => {
                let p = proc_path(h);
                Self::current_listing(state, &p)
            }
            None => BTreeMap::new(),
        };
        let listing = if rng.chance(0.5) { durable } else { current };
        let mut out = BTreeMap::new();
        for (name, e) in listing {
            let node = if e.dir {
                self.build(state, e.ino, rng)
            } else {
                let synced = state.durable.get(&e.ino).cloned().unwrap_or_default();
                let now = state.pinned.get(&e.ino).map(read_whole).unwrap_or_default();
                Node::File(match rng.below(3) {
                    0 => synced.to_vec(),
                    1 => now,
                    _ if now.len() > synced.len() && now.starts_with(&synced) => {
                        let extra = rng.below((now.len() - synced.len()) as u64 + 1) as usize;
                        now[..synced.len() + extra].to_vec()
                    }
                    _ => synced.to_vec(),
                })
            };
            out.insert(name, node);
        }
        Node::Dir(out)
    }
}

impl SyncObserver for SimDisk {
    fn file_synced(&self, file: &File) {
        let Ok(path) = std::fs::read_link(proc_path(file)) else {
            return;
        };
        if !self.under_root(&path) {
            return;
        }
        let Ok(m) = file.metadata() else { return };
        let mut state = self.state.lock();
        if let std::collections::hash_map::Entry::Vacant(v) = state.pinned.entry(m.ino()) {
            // A read-only handle of the same inode (the writer's may be write-only).
            if let Ok(f) = File::open(proc_path(file)) {
                v.insert(f);
            }
        }
        let data = state
            .pinned
            .get(&m.ino())
            .map(read_whole)
            .unwrap_or_default();
        state.durable.insert(m.ino(), Arc::new(data));
        self.after_event(&mut state);
    }

    fn dir_synced(&self, path: &Path) {
        let Ok(path) = path.canonicalize() else {
            return;
        };
        if !self.under_root(&path) {
            return;
        }
        let Ok(m) = path.metadata() else { return };
        let mut state = self.state.lock();
        if let Ok(h) = File::open(&path) {
            if h.metadata().is_ok_and(|hm| hm.ino() == m.ino()) {
                state.pinned.entry(m.ino()).or_insert(h);
            }
        }
        let listing = Self::current_listing(&mut state, &path);
        state.listing.insert(m.ino(), listing);
        self.after_event(&mut state);
    }
}
