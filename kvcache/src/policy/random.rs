//! `random`: uniform random scores, kvpress's `RandomPress`, the floor every policy must
//! beat. Each eviction draws one score per cached row from a SplitMix64 stream (Steele
//! et al. 2014) seeded with `seed` (0 by default) at every reset, so a run is
//! reproducible; the rows with the `budget` highest scores stay. As in kvpress, no row
//! is protected: the newest token may go too.

use tch::Tensor;

use super::{check_budget, CachePolicy, Observation, PolicyInfo};
use xarena_variants::VariantError;

pub const INFO: PolicyInfo = PolicyInfo {
    name: "random",
    paper: "kvpress's RandomPress (NVIDIA, 2024): a uniformly random choice, the floor",
    keeps: "`budget` tokens drawn uniformly at random (seeded)",
    budgeted: true,
    build: Some(build),
};

fn build(budget: usize) -> Result<Box<dyn CachePolicy>, VariantError> {
    Ok(Box::new(Random::new(budget, 0)?))
}

/// SplitMix64's constants.
const GAMMA: u64 = 0x9e37_79b9_7f4a_7c15;

/// `budget` random rows per head, from a seeded stream.
#[derive(Debug, Clone)]
pub struct Random {
    budget: i64,
    seed: u64,
    state: u64,
}

impl Random {
    pub fn new(budget: usize, seed: u64) -> Result<Random, VariantError> {
        check_budget(INFO.name, budget, 1)?;
        Ok(Random {
            budget: budget as i64,
            seed,
            state: seed,
        })
    }

    /// The next uniform in `[0, 1)`: SplitMix64's output, its top 53 bits.
    fn next_uniform(&mut self) -> f64 {
        self.state = self.state.wrapping_add(GAMMA);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        (z >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }
}

impl CachePolicy for Random {
    fn describe(&self) -> String {
        format!("{}:budget={},seed={}", INFO.name, self.budget, self.seed)
    }

    fn reset(&mut self, _layers: usize, _kv_heads: usize) {
        self.state = self.seed;
    }

    fn update(&mut self, obs: &Observation) -> Vec<Option<Tensor>> {
        obs.positions
            .iter()
            .map(|p| {
                let len = p.size()[0];
                (len > self.budget).then(|| {
                    // Drawn on the host (the stream is the policy's own), in row order.
                    let scores: Vec<f64> = (0..len).map(|_| self.next_uniform()).collect();
                    let (_, idx) = Tensor::from_slice(&scores).to_device(p.device()).topk(
                        self.budget,
                        0,
                        true,
                        false,
                    );
                    idx.sort(0, false).0
                })
            })
            .collect()
    }
}
