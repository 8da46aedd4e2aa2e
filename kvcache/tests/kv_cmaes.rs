//! CMA-ES (the NAMM evolution): it finds the optima of the standard test functions from a
//! zero mean, adapts its covariance on an ill-conditioned problem, is deterministic for a
//! seed, resumes exactly from its serialised state, and carries its whole state across an
//! evolution's stage boundary (or restarts at the mean, by name).

use xarena_kvcache::cmaes::{Cmaes, CmaesSettings, Constants};
use xarena_kvcache::commands::evolve::{next_stage, StageStart};

/// Runs until `f(mean)` drops below `tol` (minimising: fitness is `-f`); returns the
/// generations used.
fn minimise(es: &mut Cmaes, f: impl Fn(&[f64]) -> f64, tol: f64, max_gens: u64) -> u64 {
    for g in 0..max_gens {
        if f(es.mean()) < tol {
            return g;
        }
        let pop = es.ask();
        let fitness: Vec<f64> = pop.iter().map(|x| -f(x)).collect();
        es.tell(&fitness).unwrap();
    }
    panic!(
        "no convergence in {max_gens} generations: f(mean) = {}, sigma = {}",
        f(es.mean()),
        es.sigma()
    );
}

fn settings(seed: u64) -> CmaesSettings {
    CmaesSettings {
        seed,
        ..CmaesSettings::default()
    }
}

fn sphere(x: &[f64]) -> f64 {
    x.iter()
        .enumerate()
        .map(|(i, v)| (v - (1.0 + i as f64 / 10.0)).powi(2))
        .sum()
}

fn rosenbrock(x: &[f64]) -> f64 {
    x.windows(2)
        .map(|w| 100.0 * (w[1] - w[0] * w[0]).powi(2) + (1.0 - w[0]).powi(2))
        .sum()
}

const SHIFT: [f64; 3] = [1.3, -2.2, 0.7];

fn rastrigin(x: &[f64]) -> f64 {
    x.iter()
        .zip(SHIFT)
        .map(|(v, s)| {
            let z = v - s;
            z * z - 10.0 * (2.0 * std::f64::consts::PI * z).cos() + 10.0
        })
        .sum()
}

fn ellipsoid(x: &[f64]) -> f64 {
    let n = x.len() as f64;
    x.iter()
        .enumerate()
        .map(|(i, v)| 10f64.powf(6.0 * i as f64 / (n - 1.0)) * (v - 0.5).powi(2))
        .sum()
}

#[test]
fn defaults_are_the_reference_settings() {
    let s = CmaesSettings::default();
    assert_eq!(
        (s.population, s.sigma0, s.elite_ratio, s.c_m),
        (32, 0.065, 0.5, 1.0)
    );
    let es = Cmaes::new(4172, s).unwrap();
    assert_eq!(es.mean(), vec![0.0; 4172].as_slice());
    let k = es.constants();
    assert_eq!(k.mu, 16);
    // Log-rank weights ln(16.5) - ln(i): the first 16 positive summing to one, best
    // heaviest; the other 16 negative.
    let raw: Vec<f64> = (1..=16).map(|i| 16.5f64.ln() - (i as f64).ln()).collect();
    let total: f64 = raw.iter().sum();
    for (w, r) in k.weights.iter().zip(&raw) {
        assert!((w - r / total).abs() < 1e-12);
    }
    assert!(k.weights[16..].iter().all(|&w| w < 0.0));
    assert!(k.weights.windows(2).all(|w| w[0] > w[1]));
    let mu_eff = total * total / raw.iter().map(|r| r * r).sum::<f64>();
    assert!((k.mu_eff - mu_eff).abs() < 1e-12);
    let n = 4172.0;
    assert!((k.c_sigma - (mu_eff + 2.0) / (n + mu_eff + 5.0)).abs() < 1e-15);
    assert!((k.c_1 - 2.0 / ((n + 1.3f64).powi(2) + mu_eff)).abs() < 1e-18);
    // The covariance moves slowly at this size: one eigendecomposition per several
    // hundred generations.
    assert!(k.eigen_every > 100, "eigen_every = {}", k.eigen_every);
    let small = Constants::new(10, &CmaesSettings::default());
    assert!((1..10).contains(&small.eigen_every));
}

#[test]
fn finds_the_sphere_optimum() {
    let mut es = Cmaes::new(10, settings(1)).unwrap();
    minimise(&mut es, sphere, 1e-12, 1000);
    for (i, m) in es.mean().iter().enumerate() {
        assert!((m - (1.0 + i as f64 / 10.0)).abs() < 1e-5);
    }
    let best = es.best().unwrap();
    assert!((best.fitness + sphere(&best.params)).abs() < 1e-12);
}

#[test]
fn finds_the_rosenbrock_optimum() {
    let mut es = Cmaes::new(10, settings(2)).unwrap();
    minimise(&mut es, rosenbrock, 1e-12, 4000);
    assert!(es.mean().iter().all(|m| (m - 1.0).abs() < 1e-4));
}

#[test]
fn finds_the_rastrigin_optimum_with_a_larger_population() {
    let s = CmaesSettings {
        population: 100,
        sigma0: 2.0,
        seed: 3,
        ..CmaesSettings::default()
    };
    let mut es = Cmaes::new(3, s).unwrap();
    minimise(&mut es, rastrigin, 1e-10, 1000);
    for (m, s) in es.mean().iter().zip(SHIFT) {
        assert!(
            (m - s).abs() < 1e-4,
            "global, not a local optimum: {m} vs {s}"
        );
    }
}

#[test]
fn adapts_the_covariance_to_an_ill_conditioned_problem() {
    let mut es = Cmaes::new(6, settings(4)).unwrap();
    minimise(&mut es, ellipsoid, 1e-10, 3000);
    // C's diagonal follows the inverse curvature: the flattest axis varies the most.
    let n = 6;
    let diag: Vec<f64> = (0..n).map(|i| es.covariance()[i * n + i]).collect();
    assert!(diag[0] / diag[n - 1] > 1e3, "diagonal {diag:?}");
}

#[test]
fn is_deterministic_for_a_seed() {
    let run = |seed: u64| {
        let mut es = Cmaes::new(8, settings(seed)).unwrap();
        for _ in 0..6 {
            let pop = es.ask();
            let f: Vec<f64> = pop.iter().map(|x| -rosenbrock(x)).collect();
            es.tell(&f).unwrap();
        }
        es
    };
    assert_eq!(run(9), run(9));
    assert_ne!(run(9).mean(), run(10).mean());
    // Asking twice within a generation gives the same members.
    let mut es = Cmaes::new(8, settings(9)).unwrap();
    assert_eq!(es.ask(), es.ask());
}

#[test]
fn serialised_state_resumes_exactly() {
    let step = |es: &mut Cmaes| {
        let pop = es.ask();
        let f: Vec<f64> = pop.iter().map(|x| -rosenbrock(x)).collect();
        es.tell(&f).unwrap();
    };
    let mut es = Cmaes::new(10, settings(5)).unwrap();
    for _ in 0..7 {
        step(&mut es);
    }
    let json = serde_json::to_string(&es).unwrap();
    let mut resumed: Cmaes = serde_json::from_str(&json).unwrap();
    assert_eq!(resumed, es);
    for _ in 0..10 {
        step(&mut es);
        step(&mut resumed);
    }
    assert_eq!(resumed, es);
    // Also between ask and tell.
    let pop = es.ask();
    let mut resumed: Cmaes = serde_json::from_str(&serde_json::to_string(&es).unwrap()).unwrap();
    assert_eq!(resumed.ask(), pop);
    let f: Vec<f64> = pop.iter().map(|x| -rosenbrock(x)).collect();
    es.tell(&f).unwrap();
    resumed.tell(&f).unwrap();
    assert_eq!(resumed, es);
}

#[test]
fn bad_input_is_refused() {
    let mut es = Cmaes::new(4, settings(6)).unwrap();
    let err = es.tell(&[0.0; 32]).unwrap_err().to_string();
    assert!(err.contains("tell without ask"), "{err}");
    es.ask();
    let err = es.tell(&[0.0; 31]).unwrap_err().to_string();
    assert!(
        err.contains("31 fitness values for a population of 32"),
        "{err}"
    );
    let mut f = vec![0.0; 32];
    f[3] = f64::NAN;
    let err = es.tell(&f).unwrap_err().to_string();
    assert!(err.contains("member 3"), "{err}");
    // The refused tells left the generation open.
    es.tell(&[1.0; 32]).unwrap();
    assert_eq!(es.generation(), 1);
    for (s, needle) in [
        (
            CmaesSettings {
                population: 1,
                ..Default::default()
            },
            "population",
        ),
        (
            CmaesSettings {
                sigma0: 0.0,
                ..Default::default()
            },
            "sigma0",
        ),
        (
            CmaesSettings {
                elite_ratio: 0.0,
                ..Default::default()
            },
            "elite_ratio",
        ),
    ] {
        let err = Cmaes::new(4, s).unwrap_err().to_string();
        assert!(err.contains(needle), "{err}");
    }
    assert!(Cmaes::new(0, CmaesSettings::default()).is_err());
    assert!(serde_json::from_str::<CmaesSettings>(r#"{"pop": 3}"#).is_err());
}

#[test]
fn a_stage_continues_the_state_or_restarts_at_the_mean() {
    let n = 6;
    let s = settings(11);
    let mut es = Cmaes::new(n, s.clone()).unwrap();
    for _ in 0..5 {
        let pop = es.ask();
        let fitness: Vec<f64> = pop.iter().map(|x| -ellipsoid(x)).collect();
        es.tell(&fitness).unwrap();
    }
    let v = serde_json::to_value(&es).unwrap();
    assert_ne!(es.sigma(), s.sigma0, "the step size moved");
    let identity: Vec<f64> = (0..n * n)
        .map(|i| if i % (n + 1) == 0 { 1.0 } else { 0.0 })
        .collect();
    assert_ne!(es.covariance(), identity.as_slice(), "the covariance moved");
    for path in ["p_sigma", "p_c"] {
        let p = v[path]
            .as_array()
            .unwrap_or_else(|| panic!("{path} in {v}"));
        assert!(p.iter().any(|x| x.as_f64().unwrap() != 0.0), "{path} moved");
    }

    // Continue (the default, the reference's): everything carried, C, σ, the paths, the
    // generation count (so the next samples are those the same run would draw).
    assert_eq!(StageStart::default(), StageStart::Continue);
    let mut cont = next_stage(es.clone(), StageStart::Continue, &s).unwrap();
    assert_eq!(cont, es);
    assert_eq!(cont.ask(), es.clone().ask());

    // Restart (xarena before): the same mean, σ₀, identity C, zero paths, generation 0.
    let re = next_stage(es.clone(), StageStart::Restart, &s).unwrap();
    assert_eq!(re.mean(), es.mean());
    assert_eq!(re.sigma(), s.sigma0);
    assert_eq!(re.covariance(), identity.as_slice());
    assert_eq!(re.generation(), 0);
    assert_eq!(re, Cmaes::with_mean(es.mean().to_vec(), s).unwrap());
}
