//! Named parameters with deterministic initialisation (transformers' names of each architecture:
//! `BertForMaskedLM`, `ModernBertForMaskedLM`, the classifiers).
//!
//! candle's `Init::Randn` draws from an unseeded RNG; here every weight is drawn from a stream
//! keyed by (seed, parameter name), so the same seed gives the same model on any machine.

use candle_core::{DType, Device, Result, Tensor, Var};
use candle_nn::VarMap;
use rand_core::{Rng, SeedableRng};
use rand_xoshiro::Xoshiro256PlusPlus;
use shared::seed::seed_of;
use std::collections::HashMap;

/// How a parameter starts.
#[derive(Debug, Clone, Copy)]
pub enum Init {
    /// normal(0, std)
    Normal(f64),
    /// normal(0, std) truncated to ±cutoff·std (as `torch.nn.init.trunc_normal_`)
    TruncatedNormal {
        /// Standard deviation before truncation.
        std: f64,
        /// Bounds in standard deviations.
        cutoff: f64,
    },
    /// all zeros
    Zeros,
    /// all ones
    Ones,
}

/// Why a parameter was not loaded by [`ParamStore::load_by_name`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unmatched {
    /// The source has no tensor of that name.
    Missing,
    /// The source's tensor has another shape.
    Shape,
}

/// Creates (or returns existing) named variables in a `VarMap`: the f32 parameters (what the
/// optimizer updates, checkpoints hold and weights load into) and, when the compute dtype is not
/// f32, each one's copy in that dtype, which is what the models compute with.
pub struct ParamStore {
    /// The f32 variables, by HF name.
    pub varmap: VarMap,
    /// The compute-dtype copies by name (none under f32).
    copies: std::sync::Mutex<HashMap<String, Var>>,
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

/// `n` samples of normal(0, std) truncated to ±cutoff·std, from a seeded stream (rejection:
/// draws outside the bounds are skipped).
pub fn truncated_normal_samples(n: usize, std: f64, cutoff: f64, seed: u64) -> Vec<f32> {
    let bound = (cutoff * std) as f32;
    let mut out = Vec::with_capacity(n);
    let mut block = 0u64;
    while out.len() < n {
        let want = (n - out.len()).max(64) * 11 / 10;
        let draws = normal_samples(want, std, seed_of(&[seed, block]));
        out.extend(
            draws
                .into_iter()
                .filter(|v| v.abs() <= bound)
                .take(n - out.len()),
        );
        block += 1;
    }
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
            copies: Default::default(),
        }
    }

    /// Models built from this store compute in `dtype`: with `BF16`, every parameter the models
    /// read is a bf16 copy of its f32 variable ([`ParamStore::named_compute_vars`]), so the
    /// activations are bf16 end to end (every product, norm, activation, attention and the
    /// logits; the kernels accumulate in f32) and no product casts its inputs. The f32 variables
    /// ([`ParamStore::named_vars`]) stay the masters: the optimizer updates them from the
    /// copies' gradients (accumulated in f32) and refreshes the copies
    /// ([`ParamStore::refresh_copies`]); checkpoints and loads use them. `F32`: no copies.
    pub fn with_compute_dtype(mut self, dtype: DType) -> Self {
        self.compute_dtype = dtype;
        self
    }

    /// The dtype of activations and matrix products (see [`ParamStore::with_compute_dtype`]).
    pub fn compute_dtype(&self) -> DType {
        self.compute_dtype
    }

    /// The device the parameters live on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The parameter `name` as the models compute with it (its compute-dtype copy, or the f32
    /// variable itself under f32), created with `init` if absent.
    pub fn get(&self, name: &str, shape: &[usize], init: Init) -> Result<Tensor> {
        let master = self.master(name, shape, init)?;
        if self.compute_dtype == DType::F32 {
            return Ok(master);
        }
        let mut copies = self.copies.lock().expect("param lock");
        if let Some(c) = copies.get(name) {
            return Ok(c.as_tensor().clone());
        }
        let copy = Var::from_tensor(&master.to_dtype(self.compute_dtype)?)?;
        copies.insert(name.to_string(), copy.clone());
        Ok(copy.as_tensor().clone())
    }

    /// The f32 variable `name`, created with `init` if absent.
    fn master(&self, name: &str, shape: &[usize], init: Init) -> Result<Tensor> {
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
            Init::TruncatedNormal { std, cutoff } => Tensor::from_vec(
                truncated_normal_samples(n, std, cutoff, seed_of(&[self.seed, name_hash(name)])),
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

    /// Sets every parameter from the tensor of the same name in `tensors` (moved to this store's
    /// device), checking shapes. `may_stay_fresh(name, why)` names the parameters that may keep
    /// their initial values when `source` lacks them or has another shape (a new task head, a
    /// pooler absent from a pretraining checkpoint); those are returned. Any other missing or
    /// mis-shaped tensor is an error naming `source` and the parameter.
    pub fn load_by_name(
        &self,
        tensors: &HashMap<String, Tensor>,
        source: &str,
        may_stay_fresh: impl Fn(&str, Unmatched) -> bool,
    ) -> anyhow::Result<Vec<String>> {
        let mut fresh = Vec::new();
        for (name, var) in self.named_vars() {
            let why = match tensors.get(&name) {
                Some(t) if t.dims() == var.dims() => {
                    var.set(&t.to_device(var.device())?)
                        .map_err(|e| anyhow::anyhow!("{source}: loading {name}: {e}"))?;
                    continue;
                }
                Some(_) => Unmatched::Shape,
                None => Unmatched::Missing,
            };
            if !may_stay_fresh(&name, why) {
                match tensors.get(&name) {
                    Some(t) => anyhow::bail!(
                        "{source}: {name} has shape {:?}, the model expects {:?}",
                        t.dims(),
                        var.dims()
                    ),
                    None => anyhow::bail!("{source}: missing parameter {name}"),
                }
            }
            fresh.push(name);
        }
        self.refresh_copies()
            .map_err(|e| anyhow::anyhow!("{source}: {e}"))?;
        Ok(fresh)
    }

    /// Sets every compute-dtype copy from its f32 variable (after an update or a load).
    pub fn refresh_copies(&self) -> Result<()> {
        let copies = self.copies.lock().expect("param lock");
        if copies.is_empty() {
            return Ok(());
        }
        for (name, master) in self.named_vars() {
            if let Some(copy) = copies.get(&name) {
                copy.set(&master.as_tensor().to_dtype(copy.dtype())?)?;
            }
        }
        Ok(())
    }

    /// The variables the models compute with, sorted by name as [`ParamStore::named_vars`]:
    /// the compute-dtype copies (the f32 variables under f32). Their gradients are the
    /// parameters' gradients.
    pub fn named_compute_vars(&self) -> Vec<(String, Var)> {
        let copies = self.copies.lock().expect("param lock");
        self.named_vars()
            .into_iter()
            .map(|(name, master)| {
                let var = copies.get(&name).cloned().unwrap_or(master);
                (name, var)
            })
            .collect()
    }

    /// All f32 variables sorted by name.
    pub fn named_vars(&self) -> Vec<(String, Var)> {
        let data = self.varmap.data().lock().expect("param lock");
        let mut v: Vec<(String, Var)> = data.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Within the bounds, and with the truncated normal's standard deviation: for ±2σ,
    /// σ·sqrt(1 − 2·2·φ(2)/(2Φ(2) − 1)) = 0.8796σ.
    #[test]
    fn truncated_normal_has_the_truncated_moments() {
        let v = truncated_normal_samples(200_000, 0.02, 2.0, 9);
        assert_eq!(v.len(), 200_000);
        assert!(v.iter().all(|x| x.abs() <= 0.04));
        let mean = v.iter().map(|&x| x as f64).sum::<f64>() / v.len() as f64;
        let sd =
            (v.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / v.len() as f64).sqrt();
        assert!(mean.abs() < 2e-4, "mean {mean}");
        assert!((sd / 0.02 - 0.8796).abs() < 0.005, "sd {sd}");
    }

    fn store_with(names: &[(&str, usize)], seed: u64) -> ParamStore {
        let p = ParamStore::new(&Device::Cpu, seed);
        for (name, n) in names {
            p.get(name, &[*n], Init::Normal(1.0)).unwrap();
        }
        p
    }

    fn tensors_of(p: &ParamStore) -> HashMap<String, Tensor> {
        p.named_vars()
            .into_iter()
            .map(|(n, v)| (n, v.as_tensor().clone()))
            .collect()
    }

    #[test]
    fn load_by_name_copies_matching_tensors_and_reports_the_rest() {
        let source = tensors_of(&store_with(&[("a", 3), ("b", 2), ("head", 4)], 1));
        let target = store_with(&[("a", 3), ("b", 2), ("head", 5), ("pooler", 2)], 2);
        // Everything matching is copied; the others may stay fresh only where allowed.
        let fresh = target
            .load_by_name(&source, "src", |name, why| {
                (name == "head" && why == Unmatched::Shape)
                    || (name == "pooler" && why == Unmatched::Missing)
            })
            .unwrap();
        assert_eq!(fresh, ["head", "pooler"]);
        let loaded = tensors_of(&target);
        for name in ["a", "b"] {
            assert_eq!(
                loaded[name].to_vec1::<f32>().unwrap(),
                source[name].to_vec1::<f32>().unwrap()
            );
        }
        let err = target
            .load_by_name(&source, "src", |_, _| false)
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "src: head has shape [4], the model expects [5]"
        );
        let only_head = store_with(&[("pooler", 2)], 3);
        let err = only_head
            .load_by_name(&source, "src", |_, _| false)
            .unwrap_err();
        assert_eq!(err.to_string(), "src: missing parameter pooler");
    }

    /// Under bf16 the models get bf16 copies of the f32 parameters (drawn in f32, then rounded),
    /// in the same order; a load sets the f32 parameters and refreshes the copies.
    #[test]
    fn a_bf16_store_hands_out_copies_of_its_f32_parameters() {
        let p = ParamStore::new(&Device::Cpu, 5).with_compute_dtype(DType::BF16);
        let w = p.get("w", &[4, 3], Init::Normal(1.0)).unwrap();
        let b = p.get("b", &[3], Init::Zeros).unwrap();
        assert_eq!((w.dtype(), b.dtype()), (DType::BF16, DType::BF16));
        // The same copy again.
        assert_eq!(p.get("w", &[4, 3], Init::Normal(1.0)).unwrap().id(), w.id());
        let masters = p.named_vars();
        let copies = p.named_compute_vars();
        let names = |v: &[(String, Var)]| v.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>();
        assert_eq!(names(&masters), ["b", "w"]);
        assert_eq!(names(&copies), names(&masters));
        let f32_of = |t: &Tensor| {
            t.to_dtype(DType::F32)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()
        };
        // The master holds the f32 draw (not representable in bf16); the copy its rounding.
        let master_w = f32_of(masters[1].1.as_tensor());
        let round = |v: &[f32]| -> Vec<f32> {
            v.iter()
                .map(|&x| half::bf16::from_f32(x).to_f32())
                .collect()
        };
        assert_ne!(master_w, round(&master_w));
        assert_eq!(f32_of(copies[1].1.as_tensor()), round(&master_w));
        // A load sets the masters and refreshes the copies.
        let loaded: Vec<f32> = (0..12).map(|i| 1.0 + i as f32 / 3.0).collect();
        let tensors = HashMap::from([
            (
                "w".to_string(),
                Tensor::from_vec(loaded.clone(), (4, 3), &Device::Cpu).unwrap(),
            ),
            (
                "b".to_string(),
                Tensor::ones(3, DType::F32, &Device::Cpu).unwrap(),
            ),
        ]);
        p.load_by_name(&tensors, "src", |_, _| false).unwrap();
        assert_eq!(f32_of(p.named_vars()[1].1.as_tensor()), loaded);
        assert_eq!(f32_of(&w), round(&loaded));
        assert_eq!(f32_of(&b), [1.0, 1.0, 1.0]);
        // f32: the parameters themselves.
        let plain = ParamStore::new(&Device::Cpu, 5);
        let t = plain.get("w", &[2], Init::Ones).unwrap();
        assert_eq!(plain.named_compute_vars()[0].1.as_tensor().id(), t.id());
    }
}
