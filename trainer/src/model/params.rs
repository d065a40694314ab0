//! Named parameters with deterministic initialisation (HF BertForMaskedLM names).
//!
//! candle's `Init::Randn` draws from an unseeded RNG; here every weight is drawn from a stream
//! keyed by (seed, parameter name), so the same seed gives the same model on any machine.

use candle_core::{DType, Device, Result, Tensor, Var};
use candle_nn::VarMap;
use rand_core::{Rng, SeedableRng};
use rand_xoshiro::Xoshiro256PlusPlus;
use shared::seed::seed_of;

/// How a parameter starts.
#[derive(Debug, Clone, Copy)]
pub enum Init {
    /// normal(0, std)
    Normal(f64),
    /// all zeros
    Zeros,
    /// all ones
    Ones,
}

/// Creates (or returns existing) named variables in a `VarMap`.
pub struct ParamStore {
    /// The variables, by HF name.
    pub varmap: VarMap,
    device: Device,
    seed: u64,
    compute_dtype: DType,
}

fn name_hash(name: &str) -> u64 {
    name.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
    })
}

/// `n` normal(0, std) samples from a seeded stream (Box-Muller).
pub fn normal_samples(n: usize, std: f64, seed: u64) -> Vec<f32> {
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed);
    let unit = |rng: &mut Xoshiro256PlusPlus| {
        ((rng.next_u64() >> 11) as f64 + 0.5) * (1.0 / (1u64 << 53) as f64)
    };
    let mut out = Vec::with_capacity(n + 1);
    while out.len() < n {
        let (u1, u2) = (unit(&mut rng), unit(&mut rng));
        let r = (-2.0 * u1.ln()).sqrt() * std;
        let t = 2.0 * std::f64::consts::PI * u2;
        out.push((r * t.cos()) as f32);
        out.push((r * t.sin()) as f32);
    }
    out.truncate(n);
    out
}

impl ParamStore {
    /// An empty store on `device`.
    pub fn new(device: &Device, seed: u64) -> Self {
        ParamStore {
            varmap: VarMap::new(),
            device: device.clone(),
            seed,
            compute_dtype: DType::F32,
        }
    }

    /// Models built from this store run their matrix products in `dtype` (autocast: parameters
    /// stay f32, products are cast in and their results back to f32; `F32` = no casting).
    pub fn with_compute_dtype(mut self, dtype: DType) -> Self {
        self.compute_dtype = dtype;
        self
    }

    /// The dtype of matrix products (see [`ParamStore::with_compute_dtype`]).
    pub fn compute_dtype(&self) -> DType {
        self.compute_dtype
    }

    /// The parameter `name`, created with `init` if absent.
    pub fn get(&self, name: &str, shape: &[usize], init: Init) -> Result<Tensor> {
        let mut data = self.varmap.data().lock().expect("param lock");
        if let Some(v) = data.get(name) {
            if v.dims() != shape {
                candle_core::bail!("parameter {name}: shape {:?}, expected {shape:?}", v.dims());
            }
            return Ok(v.as_tensor().clone());
        }
        let n: usize = shape.iter().product();
        let t = match init {
            Init::Normal(std) => Tensor::from_vec(
                normal_samples(n, std, seed_of(&[self.seed, name_hash(name)])),
                shape,
                &self.device,
            )?,
            Init::Zeros => Tensor::zeros(shape, DType::F32, &self.device)?,
            Init::Ones => Tensor::ones(shape, DType::F32, &self.device)?,
        };
        let var = Var::from_tensor(&t)?;
        let out = var.as_tensor().clone();
        data.insert(name.to_string(), var);
        Ok(out)
    }

    /// All variables sorted by name.
    pub fn named_vars(&self) -> Vec<(String, Var)> {
        let data = self.varmap.data().lock().expect("param lock");
        let mut v: Vec<(String, Var)> = data.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }
}
