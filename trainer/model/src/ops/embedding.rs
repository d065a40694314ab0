//! Embedding lookup (rows of a table at u32 ids) with its gradient as a scatter-add: one op whose
//! CUDA kernels (`kernels/embedding.cu`: a gather, and f32 atomic adds into a zeroed table
//! instead of candle's `index_add`, which walks the ids serially) have this file's CPU twin
//! (tokens added in order). Elsewhere candle's `index_select` serves.

use super::rows::{f32_rows, u32_values};
use super::{bf16_twin, supports_cuda};
use candle_core::{CpuStorage, CustomOp2, DType, Layout, Result, Shape, Tensor};

/// The rows of `table` `[V, H]` at `ids` (u32, any shape, flattened): `[N, H]`, differentiable in
/// the table.
pub fn embedding(table: &Tensor, ids: &Tensor) -> Result<Tensor> {
    let ids = ids.flatten_all()?;
    let (device, dtype) = (table.device(), table.dtype());
    if supports_cuda("embedding", device, dtype) {
        if let Some(y) = bf16_twin(&[table], |w| embedding(&w[0], &ids))? {
            return Ok(y);
        }
        return table.contiguous()?.apply_op2(&ids.contiguous()?, Embedding);
    }
    table.index_select(&ids, 0)
}

/// The lookup kernel on `table`'s device (no gradient): what `trainer device-check` compares.
pub fn embedding_kernel(table: &Tensor, ids: &Tensor) -> Result<Tensor> {
    table
        .contiguous()?
        .apply_op2_no_bwd(&ids.flatten_all()?.contiguous()?, &Embedding)
}

/// The gradient kernel: `dy` `[N, H]` rows added at `ids` into a zero `[rows, H]` table.
pub fn embedding_backward_kernel(ids: &Tensor, dy: &Tensor, rows: usize) -> Result<Tensor> {
    ids.flatten_all()?
        .contiguous()?
        .apply_op2_no_bwd(&dy.contiguous()?, &EmbeddingBackward { rows })
}

/// (table `[V, H]`, ids `[N]`) → `[N, H]`.
struct Embedding;

impl CustomOp2 for Embedding {
    fn name(&self) -> &'static str {
        "embedding"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (table, width) = f32_rows(s1, l1, "embedding")?;
        let ids = u32_values(s2, l2, "embedding ids")?;
        let rows = table.len() / width.max(1);
        let mut out = Vec::with_capacity(ids.len() * width);
        for &id in ids {
            if id as usize >= rows {
                candle_core::bail!("embedding: id {id} outside the table's {rows} rows");
            }
            let at = id as usize * width;
            out.extend_from_slice(&table[at..at + width]);
        }
        Ok((CpuStorage::F32(out), Shape::from((ids.len(), width))))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        super::cuda::embedding((s1, l1), (s2, l2))
    }

    fn bwd(
        &self,
        table: &Tensor,
        ids: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        // The scatter-add sums in f32 (a bf16 table's gradient is rounded once, at the end).
        let grad = grad.to_dtype(DType::F32)?;
        let d = embedding_backward_kernel(ids, &grad, table.dim(0)?)?.to_dtype(table.dtype())?;
        Ok((Some(d), None))
    }
}

/// (ids `[N]`, dy `[N, H]`) → d table `[rows, H]`.
struct EmbeddingBackward {
    rows: usize,
}

impl CustomOp2 for EmbeddingBackward {
    fn name(&self) -> &'static str {
        "embedding-bwd"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let ids = u32_values(s1, l1, "embedding ids")?;
        let (dy, width) = f32_rows(s2, l2, "embedding bwd")?;
        if dy.len() != ids.len() * width {
            candle_core::bail!("embedding bwd: {} values for {} ids", dy.len(), ids.len());
        }
        let mut out = vec![0f32; self.rows * width];
        for (&id, row) in ids.iter().zip(dy.chunks(width.max(1))) {
            if (id as usize) < self.rows {
                let at = id as usize * width;
                out[at..at + width]
                    .iter_mut()
                    .zip(row)
                    .for_each(|(o, &g)| *o += g);
            }
        }
        Ok((CpuStorage::F32(out), Shape::from((self.rows, width))))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        super::cuda::embedding_backward((s1, l1), (s2, l2), self.rows)
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{assert_kernels_are_the_op, var};
    use super::*;
    use candle_core::Device;

    fn ids() -> Tensor {
        // Repeats (row 3 four times) and unused rows (0, 6).
        Tensor::from_vec(vec![3u32, 1, 3, 5, 2, 3, 4, 3, 1], (3, 3), &Device::Cpu).unwrap()
    }

    /// The op equals candle's `index_select` forward and its gradient (candle's `index_add`) back,
    /// with repeated and unused rows; its exposed kernels are the op.
    #[test]
    fn the_op_matches_index_select_and_its_gradient() {
        let table = var(&[7, 5], 1.0, 31);
        let op = Embedding;
        let ours = table
            .as_tensor()
            .apply_op2(&ids().flatten_all().unwrap(), op)
            .unwrap();
        let reference = table
            .as_tensor()
            .index_select(&ids().flatten_all().unwrap(), 0)
            .unwrap();
        let flat = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(flat(&ours), flat(&reference));
        let probe = var(&[9, 5], 1.0, 32);
        let grad = |y: &Tensor| {
            let g = (y * probe.as_tensor()).unwrap().sum_all().unwrap();
            g.backward()
                .unwrap()
                .get(table.as_tensor())
                .unwrap()
                .clone()
        };
        assert_eq!(flat(&grad(&ours)), flat(&grad(&reference)));
        let rows_of = |x: &Tensor| {
            x.apply_op2(&ids().flatten_all().unwrap(), Embedding)
                .unwrap()
        };
        assert_kernels_are_the_op(
            rows_of,
            |x| embedding_kernel(x, &ids()).unwrap(),
            |x, dy| embedding_backward_kernel(&ids(), dy, x.dim(0).unwrap()).unwrap(),
            (&[7, 5], &[9, 5]),
        );
    }

    /// An id past the table is an error naming it.
    #[test]
    fn an_id_outside_the_table_is_refused() {
        let table = Tensor::zeros((4, 2), DType::F32, &Device::Cpu).unwrap();
        let ids = Tensor::from_vec(vec![1u32, 4], 2, &Device::Cpu).unwrap();
        let err = embedding_kernel(&table, &ids).unwrap_err();
        assert!(
            err.to_string().contains("id 4 outside the table's 4 rows"),
            "{err}"
        );
    }
}
