//! CMA-ES with an ask/tell interface, as NAMM is evolved: full covariance, active
//! (negative-weight) rank-mu update, cumulative step-size adaptation (Hansen 2016, "The
//! CMA Evolution Strategy: A Tutorial", arXiv 1604.00772, the defaults of its Table 1 and
//! appendix A; the reference NAMM code, SakanaAI/evo-memory `memory_evolution/cma_es.py`,
//! implements the same equations).
//!
//! Fitness is maximised (higher is better), as in the reference. The whole state is a
//! serde value: a checkpoint taken at any point, even between [`Cmaes::ask`] and
//! [`Cmaes::tell`], resumes exactly, because the normal samples of generation `g` come
//! from a ChaCha8 stream keyed by `(seed, g)` rather than from a running generator.
//!
//! The eigendecomposition behind sampling (`C = B D^2 B^T`) is refreshed lazily, every
//! `λ / (10 n (c_1 + c_μ))` generations (the tutorial's B.2), since C moves by at most
//! `c_1 + c_μ` per generation; the reference refreshes it every generation. A generation
//! costs `O(λ n^2)` otherwise. At NAMM's 4172 parameters C and B hold 17.4M float64 each
//! (about 280 MB as a binary checkpoint, more as JSON text).

use anyhow::{bail, ensure, Result};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

/// Settings; the defaults are NAMM's (SakanaAI/evo-memory `cfgs/run/namm_bam_i1.yaml`,
/// `cfgs/evolution/cma_es.yaml`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CmaesSettings {
    /// λ, members per generation (`pop_size: 32`).
    pub population: usize,
    /// Initial step size σ₀ (`init_sigma: 0.065`).
    pub sigma0: f64,
    /// Fraction of the population that moves the mean, μ = ⌊λ · ratio⌋ (`elite_ratio: 0.5`).
    pub elite_ratio: f64,
    /// Learning rate of the mean (`c_m: 1.0`).
    pub c_m: f64,
    /// Seed of the per-generation sample streams (`seed: 1337`).
    pub seed: u64,
    /// Generations between eigendecompositions; `None`: the tutorial's lazy interval.
    pub eigen_every: Option<u64>,
}

impl Default for CmaesSettings {
    fn default() -> Self {
        CmaesSettings {
            population: 32,
            sigma0: 0.065,
            elite_ratio: 0.5,
            c_m: 1.0,
            seed: 1337,
            eigen_every: None,
        }
    }
}

/// The best member evaluated so far.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Best {
    pub params: Vec<f64>,
    pub fitness: f64,
    pub generation: u64,
}

/// Learning rates and weights derived from (λ, μ, n) (the tutorial's Table 1).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Constants {
    pub mu: usize,
    /// λ recombination weights, best first: the first μ positive (sum 1), the rest
    /// negative (active update of C).
    pub weights: Vec<f64>,
    pub mu_eff: f64,
    pub c_sigma: f64,
    pub d_sigma: f64,
    pub c_c: f64,
    pub c_1: f64,
    pub c_mu: f64,
    /// E‖N(0, I)‖.
    pub chi_n: f64,
    pub eigen_every: u64,
}

impl Constants {
    pub fn new(n: usize, settings: &CmaesSettings) -> Constants {
        let lambda = settings.population;
        let mu = ((lambda as f64 * settings.elite_ratio).floor() as usize).clamp(1, lambda);
        let nf = n as f64;
        // w'_i = ln(μ + 1/2) - ln i: positive for i <= μ (ln((λ+1)/2) - ln i when μ = λ/2).
        let raw: Vec<f64> = (1..=lambda)
            .map(|i| (mu as f64 + 0.5).ln() - (i as f64).ln())
            .collect();
        let (pos, neg) = raw.split_at(mu);
        let mu_eff = pos.iter().sum::<f64>().powi(2) / pos.iter().map(|w| w * w).sum::<f64>();
        let alpha_cov = 2.0;
        let c_1 = alpha_cov / ((nf + 1.3).powi(2) + mu_eff);
        let c_mu = (1.0 - c_1).min(
            alpha_cov * (mu_eff - 2.0 + 1.0 / mu_eff)
                / ((nf + 2.0).powi(2) + alpha_cov * mu_eff / 2.0),
        );
        let c_sigma = (mu_eff + 2.0) / (nf + mu_eff + 5.0);
        let d_sigma = 1.0 + 2.0 * (((mu_eff - 1.0) / (nf + 1.0)).sqrt() - 1.0).max(0.0) + c_sigma;
        let c_c = (4.0 + mu_eff / nf) / (nf + 4.0 + 2.0 * mu_eff / nf);
        let pos_sum: f64 = pos.iter().sum();
        let mut weights: Vec<f64> = pos.iter().map(|w| w / pos_sum).collect();
        if !neg.is_empty() {
            let neg_abs: f64 = neg.iter().map(|w| w.abs()).sum();
            let mu_eff_neg =
                neg.iter().sum::<f64>().powi(2) / neg.iter().map(|w| w * w).sum::<f64>();
            // Bounds: decay of C about 0, the negative μ_eff, positive definiteness.
            let alpha = (1.0 + c_1 / c_mu)
                .min(1.0 + 2.0 * mu_eff_neg / (mu_eff + 2.0))
                .min((1.0 - c_1 - c_mu) / (nf * c_mu));
            weights.extend(neg.iter().map(|w| alpha * w / neg_abs));
        }
        let chi_n = nf.sqrt() * (1.0 - 1.0 / (4.0 * nf) + 1.0 / (21.0 * nf * nf));
        let lazy = (lambda as f64 / ((c_1 + c_mu) * nf * 10.0)).floor() as u64;
        Constants {
            mu,
            weights,
            mu_eff,
            c_sigma,
            d_sigma,
            c_c,
            c_1,
            c_mu,
            chi_n,
            eigen_every: settings.eigen_every.unwrap_or(lazy).max(1),
        }
    }
}

/// The optimiser's complete state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Cmaes {
    settings: CmaesSettings,
    constants: Constants,
    dim: usize,
    /// Completed generations (tells).
    generation: u64,
    mean: Vec<f64>,
    sigma: f64,
    p_sigma: Vec<f64>,
    p_c: Vec<f64>,
    /// C, `n x n` row-major.
    cov: Vec<f64>,
    /// B, `n x n` row-major, eigenvectors of C (as of `eigen_generation`) in columns.
    basis: Vec<f64>,
    /// D, the square roots of C's eigenvalues.
    scales: Vec<f64>,
    eigen_generation: u64,
    /// The current generation's steps `y_i` (`λ x n`, row-major), once asked.
    asked: Option<Vec<f64>>,
    best: Option<Best>,
}

impl Cmaes {
    /// Starts at the mean zero, the reference's start (zero NAMM parameters keep every
    /// token).
    pub fn new(dim: usize, settings: CmaesSettings) -> Result<Cmaes> {
        Self::with_mean(vec![0.0; dim], settings)
    }

    /// Starts at a given mean (a previous stage's result).
    pub fn with_mean(mean: Vec<f64>, settings: CmaesSettings) -> Result<Cmaes> {
        let dim = mean.len();
        ensure!(
            dim >= 1,
            "cma-es: the search space needs at least one dimension"
        );
        ensure!(
            settings.population >= 2,
            "cma-es: population must be at least 2, got {}",
            settings.population
        );
        ensure!(
            settings.sigma0.is_finite() && settings.sigma0 > 0.0,
            "cma-es: sigma0 must be positive, got {}",
            settings.sigma0
        );
        ensure!(
            settings.elite_ratio > 0.0 && settings.elite_ratio <= 1.0,
            "cma-es: elite_ratio must lie in (0, 1], got {}",
            settings.elite_ratio
        );
        ensure!(
            settings.c_m.is_finite() && settings.c_m > 0.0,
            "cma-es: c_m must be positive, got {}",
            settings.c_m
        );
        if let Some(i) = mean.iter().position(|m| !m.is_finite()) {
            bail!("cma-es: initial mean[{i}] is not finite ({})", mean[i]);
        }
        let mut identity = vec![0.0; dim * dim];
        for i in 0..dim {
            identity[i * dim + i] = 1.0;
        }
        Ok(Cmaes {
            constants: Constants::new(dim, &settings),
            sigma: settings.sigma0,
            settings,
            dim,
            generation: 0,
            mean,
            p_sigma: vec![0.0; dim],
            p_c: vec![0.0; dim],
            cov: identity.clone(),
            basis: identity,
            scales: vec![1.0; dim],
            eigen_generation: 0,
            asked: None,
            best: None,
        })
    }

    pub fn dim(&self) -> usize {
        self.dim
    }

    pub fn settings(&self) -> &CmaesSettings {
        &self.settings
    }

    pub fn constants(&self) -> &Constants {
        &self.constants
    }

    /// Completed generations.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// The distribution's mean: the recommended solution (the reference evaluates the
    /// mean, `prefer_mean_to_best: true`).
    pub fn mean(&self) -> &[f64] {
        &self.mean
    }

    pub fn sigma(&self) -> f64 {
        self.sigma
    }

    /// The covariance matrix, `n x n` row-major.
    pub fn covariance(&self) -> &[f64] {
        &self.cov
    }

    /// The best member told so far.
    pub fn best(&self) -> Option<&Best> {
        self.best.as_ref()
    }

    /// Moves C and B (`n x n` each, row-major) out of the state, leaving them empty: the
    /// rest serialises small (a checkpoint keeps the matrices in a binary file).
    /// [`Cmaes::put_matrices`] puts them back.
    pub fn take_matrices(&mut self) -> (Vec<f64>, Vec<f64>) {
        (
            std::mem::take(&mut self.cov),
            std::mem::take(&mut self.basis),
        )
    }

    /// Puts back the matrices [`Cmaes::take_matrices`] took (or a checkpoint's).
    pub fn put_matrices(&mut self, cov: Vec<f64>, basis: Vec<f64>) -> Result<()> {
        let n2 = self.dim * self.dim;
        ensure!(
            cov.len() == n2 && basis.len() == n2,
            "cma-es: matrices of {} and {} values for a {}-dimensional state (need {n2})",
            cov.len(),
            basis.len(),
            self.dim
        );
        self.cov = cov;
        self.basis = basis;
        Ok(())
    }

    /// The population of the current generation, `λ` members of `n` parameters. Asking
    /// again before [`Cmaes::tell`] gives the same members.
    pub fn ask(&mut self) -> Vec<Vec<f64>> {
        let (n, lambda) = (self.dim, self.settings.population);
        if self.asked.is_none() {
            let mut rng = ChaCha8Rng::seed_from_u64(self.settings.seed);
            rng.set_stream(self.generation);
            let mut steps = vec![0.0; lambda * n];
            let mut scaled = vec![0.0; n];
            for y in steps.chunks_mut(n) {
                for (s, d) in scaled.iter_mut().zip(&self.scales) {
                    *s = d * standard_normal(&mut rng);
                }
                // y = B (D z)
                for (r, out) in y.iter_mut().enumerate() {
                    *out = dot(&self.basis[r * n..(r + 1) * n], &scaled);
                }
            }
            self.asked = Some(steps);
        }
        let steps = self.asked.as_ref().unwrap();
        steps
            .chunks(n)
            .map(|y| {
                self.mean
                    .iter()
                    .zip(y)
                    .map(|(m, s)| m + self.sigma * s)
                    .collect()
            })
            .collect()
    }

    /// Reports the fitness (higher is better) of the members [`Cmaes::ask`] gave, in
    /// their order, and moves to the next generation.
    pub fn tell(&mut self, fitness: &[f64]) -> Result<()> {
        let (n, lambda) = (self.dim, self.settings.population);
        let Some(steps) = self.asked.take() else {
            bail!("cma-es: tell without ask (generation {})", self.generation);
        };
        if fitness.len() != lambda {
            self.asked = Some(steps);
            bail!(
                "cma-es: {} fitness values for a population of {lambda}",
                fitness.len()
            );
        }
        if let Some(i) = fitness.iter().position(|f| f.is_nan()) {
            self.asked = Some(steps);
            bail!("cma-es: fitness of member {i} is NaN");
        }
        let k = &self.constants;
        let mut order: Vec<usize> = (0..lambda).collect();
        order.sort_by(|&a, &b| fitness[b].total_cmp(&fitness[a]).then(a.cmp(&b)));
        let ys: Vec<&[f64]> = order.iter().map(|&i| &steps[i * n..(i + 1) * n]).collect();

        let top = order[0];
        if self.best.as_ref().is_none_or(|b| fitness[top] > b.fitness) {
            self.best = Some(Best {
                params: (0..n)
                    .map(|j| self.mean[j] + self.sigma * ys[0][j])
                    .collect(),
                fitness: fitness[top],
                generation: self.generation,
            });
        }

        // The weighted mean step y_w over the μ best.
        let mut y_w = vec![0.0; n];
        for (y, w) in ys.iter().zip(&k.weights).take(k.mu) {
            axpy(*w, y, &mut y_w);
        }
        axpy(self.settings.c_m * self.sigma, &y_w, &mut self.mean);

        // B^T y / D for every step: C^{-1/2} y = B (B^T y / D), so its norm is this one's.
        let whitened: Vec<Vec<f64>> = ys
            .iter()
            .map(|y| {
                let mut t = self.basis_t_times(y);
                for (v, d) in t.iter_mut().zip(&self.scales) {
                    *v /= d;
                }
                t
            })
            .collect();
        let mut c_half_y_w = vec![0.0; n];
        for (t, w) in whitened.iter().zip(&k.weights).take(k.mu) {
            axpy(*w, t, &mut c_half_y_w);
        }
        let c_half_y_w = self.basis_times(&c_half_y_w);

        let cs = k.c_sigma;
        let gain = (cs * (2.0 - cs) * k.mu_eff).sqrt();
        for (p, v) in self.p_sigma.iter_mut().zip(&c_half_y_w) {
            *p = (1.0 - cs) * *p + gain * v;
        }
        let ps_norm = norm(&self.p_sigma);
        let g1 = (self.generation + 1) as f64;
        let h_sigma = ps_norm / (1.0 - (1.0 - cs).powf(2.0 * g1)).sqrt()
            < (1.4 + 2.0 / (n as f64 + 1.0)) * k.chi_n;
        let h = if h_sigma { 1.0 } else { 0.0 };
        let cc = k.c_c;
        let gain_c = h * (cc * (2.0 - cc) * k.mu_eff).sqrt();
        for (p, v) in self.p_c.iter_mut().zip(&y_w) {
            *p = (1.0 - cc) * *p + gain_c * v;
        }

        // Negative weights are rescaled by n / ||C^{-1/2} y||^2 (bounded active update).
        let w_cov: Vec<f64> = k
            .weights
            .iter()
            .zip(&whitened)
            .map(|(&w, t)| {
                if w >= 0.0 {
                    w
                } else {
                    w * n as f64 / (t.iter().map(|v| v * v).sum::<f64>() + 1e-20)
                }
            })
            .collect();
        let delta_h = (1.0 - h) * cc * (2.0 - cc);
        let w_sum: f64 = k.weights.iter().sum();
        let keep = 1.0 + k.c_1 * delta_h - k.c_1 - k.c_mu * w_sum;
        for r in 0..n {
            let row = &mut self.cov[r * n..(r + 1) * n];
            for v in row.iter_mut() {
                *v *= keep;
            }
            axpy(k.c_1 * self.p_c[r], &self.p_c, row);
            for (y, w) in ys.iter().zip(&w_cov) {
                axpy(k.c_mu * w * y[r], y, row);
            }
        }

        self.sigma *= ((cs / k.d_sigma) * (ps_norm / k.chi_n - 1.0)).exp();
        self.generation += 1;
        if self.generation - self.eigen_generation >= self.constants.eigen_every {
            self.decompose();
        }
        Ok(())
    }

    /// Refreshes B and D from C.
    fn decompose(&mut self) {
        let n = self.dim as i64;
        let c = Tensor::from_slice(&self.cov).view([n, n]);
        // Symmetric up to rounding; made exactly so.
        let c = (&c + c.tr()) * 0.5;
        let (values, vectors) = c.linalg_eigh("L");
        // Eigenvalues at or below zero (rounding) become tiny, as in the reference.
        let values = values.clamp_min(1e-20).sqrt();
        self.scales = Vec::<f64>::try_from(&values.to_kind(Kind::Double)).unwrap();
        self.basis =
            Vec::<f64>::try_from(&vectors.to_kind(Kind::Double).contiguous().view([-1])).unwrap();
        self.eigen_generation = self.generation;
    }

    fn basis_times(&self, v: &[f64]) -> Vec<f64> {
        let n = self.dim;
        (0..n)
            .map(|r| dot(&self.basis[r * n..(r + 1) * n], v))
            .collect()
    }

    fn basis_t_times(&self, v: &[f64]) -> Vec<f64> {
        let n = self.dim;
        let mut out = vec![0.0; n];
        for (r, &x) in v.iter().enumerate() {
            axpy(x, &self.basis[r * n..(r + 1) * n], &mut out);
        }
        out
    }
}

/// A standard normal draw (Box-Muller; one of the pair, so each draw costs two uniforms
/// and the stream stays simple to reason about).
fn standard_normal(rng: &mut ChaCha8Rng) -> f64 {
    // 1 - U lies in (0, 1], so the logarithm is finite.
    let u1: f64 = 1.0 - rng.gen::<f64>();
    let u2: f64 = rng.gen();
    (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

fn norm(a: &[f64]) -> f64 {
    dot(a, a).sqrt()
}

/// `out += a * x`
fn axpy(a: f64, x: &[f64], out: &mut [f64]) {
    for (o, v) in out.iter_mut().zip(x) {
        *o += a * v;
    }
}
