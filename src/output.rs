//! Writing search results (ids as .ivecs/.npy int32, distances as .fvecs/.npy) and reading
//! query and ground-truth files, shared by the sub-commands.

use std::path::Path;

use anyhow::{bail, Context};
use quiver_engine::backend::Neighbors;
use quiver_engine::io::{ElementType, VectorFile, VectorWriter};

/// Streams result batches to an ids file and, optionally, a distances file.
pub struct ResultWriter {
    ids: VectorWriter,
    distances: Option<VectorWriter>,
}

impl ResultWriter {
    pub fn create(ids: &Path, distances: Option<&Path>, k: usize) -> anyhow::Result<Self> {
        let ids = VectorWriter::create(ids, k, ElementType::I32)?;
        let distances = match distances {
            Some(p) => Some(VectorWriter::create(p, k, ElementType::F32)?),
            None => None,
        };
        Ok(ResultWriter { ids, distances })
    }

    pub fn write(&mut self, n: &Neighbors) -> anyhow::Result<()> {
        let mut ids = Vec::with_capacity(n.ids.len());
        for &id in &n.ids {
            let v = i32::try_from(id).with_context(|| {
                format!("id {id} does not fit the 32-bit ids of the output file")
            })?;
            ids.push(v);
        }
        self.ids.write_i32(&ids)?;
        if let Some(d) = &mut self.distances {
            d.write_f32(&n.distances)?;
        }
        Ok(())
    }

    pub fn finish(self) -> anyhow::Result<()> {
        self.ids.finish()?;
        if let Some(d) = self.distances {
            d.finish()?;
        }
        Ok(())
    }
}

/// Reads a whole integer file (ground truth, candidates) as rows of i32.
pub fn read_int_rows(path: &Path) -> anyhow::Result<(usize, Vec<i32>)> {
    let f = VectorFile::open(path)?;
    if f.element_type() != ElementType::I32 {
        bail!(
            "{}: expected an integer file (.ivecs or int32 .npy), found {} elements",
            path.display(),
            f.element_type()
        );
    }
    let mut out = Vec::with_capacity(f.len() * f.dim());
    f.read_i32(0, f.len(), &mut out)?;
    Ok((f.dim(), out))
}
